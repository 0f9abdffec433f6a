"""rnla: randomized numerical linear algebra, Numba-compiled.

Submodules
----------
sketch
    Sketching operators (Gaussian, Rademacher, orthogonal, SRHT, CountSketch, sparse
    sign, TensorSketch) and samplers (leverage scores, row norms, uniform).
operators
    ``LinearOperator`` helpers, the ``EntryMatrix`` protocol, ``DenseEntries``,
    ``KernelMatrix`` and the adjoint ``dot_test``.
estimate
    A-posteriori norm estimators with stated failure probabilities.
lowrank
    Range finder, randomized SVD (subspace iteration and block Krylov), adaptive QB,
    single-pass SVD, randomized symmetric eigendecomposition, generalized Nyström.
psd
    Stabilised Nyström for PSD operators and randomly pivoted Cholesky
    (:func:`rnla.nystrom`, :func:`rnla.rpcholesky`).
skeleton
    Interpolative decomposition, CUR and adaptive cross approximation
    (:func:`rnla.interpolative`, :func:`rnla.cur`, :func:`rnla.aca`).
krylov
    Lanczos and block Lanczos, f(A)b, Gauss and Gauss-Radau quadrature bounds.
trace
    Hutchinson, Hutch++, XTrace, XNysTrace, stochastic Lanczos quadrature, logdet.
augmented
    Augmented Krylov: y^T (lam I + A)^{-1} y and logdet(lam I + A) for many shifts lam
    from one block Krylov subspace, with bounds; kernel-based FIR identification helpers.
tensor
    TT-SVD, randomized TT, TT rounding and arithmetic, TT-cross, randomized Tucker
    (results are tensorly's ``TTTensor`` / ``TuckerTensor``).
qr
    Sketch-preconditioned CholeskyQR (``cholqr_sketch``) and randomized column-pivoted
    QR (``qrcp``).
solve
    Least squares by sketch-and-solve and sketch-and-precondition (``lstsq``) and
    Nyström-preconditioned CG for regularised PSD systems (``nystrom_pcg``).
cluster
    Locality-sensitive hashing (angular, hyperplane, E2LSH), bucketing and k-means.
bounds
    Closed-form a-priori bounds, one function per theorem.
"""

# ``sketch`` is imported first: it re-exports ``rnla._sampling``, which imports from it.
from rnla import sketch  # isort: skip
from rnla import (
    augmented,
    bounds,
    cluster,
    estimate,
    krylov,
    lowrank,
    operators,
    psd,
    qr,
    skeleton,
    solve,
    tensor,
    trace,
)
from rnla._results import (
    CholeskyResult,
    CrossResult,
    CURResult,
    EighResult,
    IDResult,
    QBResult,
    SVDResult,
)
from rnla._validation import AccuracyWarning, ConvergenceWarning, RNLAWarning
from rnla.estimate import NormEstimate, effective_distortion, lowrank_error_estimate, norm_estimate
from rnla.lowrank import generalized_nystrom, randqb, range_finder, reigh, rsvd, single_pass_svd
from rnla.operators import (
    DenseEntries,
    EntryMatrix,
    KernelMatrix,
    as_linear_operator,
    dot_test,
)
from rnla.psd import nystrom, rpcholesky
from rnla.qr import QRCPResult, QRResult, cholqr_sketch, qrcp
from rnla.skeleton import aca, cur, interpolative
from rnla.solve import LstsqResult, PCGResult, lstsq, nystrom_pcg

__version__ = "0.1.0.dev0"

__all__ = [
    "AccuracyWarning",
    "CURResult",
    "CholeskyResult",
    "ConvergenceWarning",
    "CrossResult",
    "DenseEntries",
    "EighResult",
    "EntryMatrix",
    "IDResult",
    "KernelMatrix",
    "LstsqResult",
    "NormEstimate",
    "PCGResult",
    "QBResult",
    "QRCPResult",
    "QRResult",
    "RNLAWarning",
    "SVDResult",
    "__version__",
    "aca",
    "as_linear_operator",
    "augmented",
    "bounds",
    "cholqr_sketch",
    "cluster",
    "cur",
    "dot_test",
    "effective_distortion",
    "estimate",
    "generalized_nystrom",
    "interpolative",
    "krylov",
    "lowrank",
    "lowrank_error_estimate",
    "lstsq",
    "norm_estimate",
    "nystrom",
    "nystrom_pcg",
    "operators",
    "psd",
    "qr",
    "qrcp",
    "randqb",
    "range_finder",
    "reigh",
    "rpcholesky",
    "rsvd",
    "single_pass_svd",
    "skeleton",
    "sketch",
    "solve",
    "tensor",
    "trace",
]
