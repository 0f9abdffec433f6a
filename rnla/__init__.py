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
bounds
    Closed-form a-priori bounds, one function per theorem.
"""

# ``sketch`` is imported first: it re-exports ``rnla._sampling``, which imports from it.
from rnla import sketch  # isort: skip
from rnla import bounds, estimate, operators
from rnla._validation import AccuracyWarning, ConvergenceWarning, RNLAWarning
from rnla.estimate import NormEstimate, effective_distortion, norm_estimate
from rnla.operators import (
    DenseEntries,
    EntryMatrix,
    KernelMatrix,
    as_linear_operator,
    dot_test,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AccuracyWarning",
    "ConvergenceWarning",
    "DenseEntries",
    "EntryMatrix",
    "KernelMatrix",
    "NormEstimate",
    "RNLAWarning",
    "__version__",
    "as_linear_operator",
    "bounds",
    "dot_test",
    "effective_distortion",
    "estimate",
    "norm_estimate",
    "operators",
    "sketch",
]
