r"""Nyström approximation of PSD matrices: stabilised sketching and RPCholesky.

Two ways to approximate a positive-semidefinite (PSD) matrix :math:`A` by a low-rank PSD
matrix, depending on how :math:`A` can be accessed:

* :func:`nystrom` - **products**. Sketches :math:`Y = A\Omega` with a Gaussian test
  matrix and returns the (shifted, numerically stable) Nyström approximation
  :math:`A\langle\Omega\rangle = Y(\Omega^T Y)^{\dagger} Y^T` as a truncated
  eigendecomposition. ``A`` may be an ndarray, a ``scipy.sparse`` matrix, a
  :class:`~scipy.sparse.linalg.LinearOperator` or an object with
  ``as_linear_operator()`` (:class:`~rnla.operators.KernelMatrix`).
* :func:`rpcholesky` - **entries**. Randomly pivoted partial Cholesky: picks columns
  :math:`S` at random with probability proportional to the residual diagonal and
  returns the *column* Nyström approximation
  :math:`A(:, S) A(S, S)^{\dagger} A(S, :) = F F^T`. It reads only the diagonal and
  the pivot rows of an :class:`~rnla.operators.EntryMatrix`, so a kernel matrix of
  :math:`10^5` points is factored without ever being formed.

The error theory (Nyström identity, expected-trace bounds, the RPCholesky rank bound)
is implemented in :mod:`rnla.bounds`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from rnla._kernels.nystrom import _block_pivoted_cholesky, _downdate_diagonal
from rnla._results import CholeskyResult, EighResult, _with_passes
from rnla._validation import (
    AccuracyWarning,
    check_int,
    check_option,
    check_probability,
    check_rank,
    check_rng,
    float_dtype,
)
from rnla.operators import DenseEntries, EntryMatrix, _wrap

__all__ = ["nystrom", "rpcholesky"]

# Omega^T A Omega with an eigenvalue below -_NEG_FACTOR * sqrt(n) * eps * ||A Omega||_2
# (_NEG_FACTOR times the stabilising shift of Tropp et al. 2017) is beyond the rounding
# of the products: an AccuracyWarning is issued (the input itself is slightly
# indefinite); below -sqrt(eps) * ||A Omega||_2 A is declared not PSD.
_NEG_FACTOR = 10.0
# Omega^T A Omega must be symmetric up to _SYM_FACTOR times the same rounding scale.
_SYM_FACTOR = 100.0


# ---------------------------------------------------------------------------------------
# Nyström approximation from a Gaussian sketch
# ---------------------------------------------------------------------------------------


def _check_shift(shift) -> float | None:
    if isinstance(shift, str):
        if shift != "auto":
            raise ValueError(f"shift={shift!r} must be 'auto' or a finite number >= 0")
        return None
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real):
        raise TypeError(f"shift must be 'auto' or a real number, got {shift!r}")
    shift = float(shift)
    if not (math.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift={shift} must be 'auto' or a finite number >= 0")
    return shift


def _nystrom_factor(Omega: np.ndarray, Y_nu: np.ndarray) -> np.ndarray:
    r"""``B`` (n, r) with :math:`BB^T = Y_\nu(\Omega^T Y_\nu)^{\dagger}Y_\nu^T`, in float64.

    Cholesky :math:`C^TC = \Omega^TY_\nu` (symmetrised) and :math:`B = Y_\nu C^{-1}`
    (Tropp, Yurtsever, Udell and Cevher 2017, Alg. 3). If the core is not numerically
    positive definite, :math:`B = Y_\nu V\operatorname{diag}(\mu)^{-1/2}` on the
    numerically positive part of its eigendecomposition (``r = 0`` columns if none).
    """
    core = Omega.T @ Y_nu
    core = 0.5 * (core + core.T)
    try:
        C = sla.cholesky(core, lower=False, check_finite=False)
        return sla.solve_triangular(C, Y_nu.T, trans="T", lower=False, check_finite=False).T
    except np.linalg.LinAlgError:
        mu, V = np.linalg.eigh(core)
        keep = mu > max(mu[-1], 0.0) * core.shape[0] * np.finfo(np.float64).eps
        return Y_nu @ (V[:, keep] / np.sqrt(mu[keep]))


def nystrom(A, rank, /, *, oversample=10, shift="auto", rng=None) -> EighResult:
    r"""Randomized Nyström approximation of a PSD matrix, numerically stabilised.

    Returns a rank-``rank`` eigendecomposition :math:`\hat A = V \Lambda V^T` of the
    Nyström approximation :math:`A\langle\Omega\rangle = (A\Omega)(\Omega^T A\Omega)^{\dagger}
    (A\Omega)^T` computed from :math:`\ell = \min(n, \text{rank} + \text{oversample})`
    products with :math:`A`.

    Parameters
    ----------
    A : ndarray, scipy.sparse matrix, LinearOperator, EntryMatrix or dask array, shape (n, n)
        Symmetric positive-semidefinite matrix. Only products :math:`A X` are used
        (an EntryMatrix is converted with its ``as_linear_operator()``).
    rank : int
        Rank of the returned approximation, ``1 <= rank <= n``.
    oversample : int, default=10
        Extra sketch columns :math:`p \ge 0`; the sketch has :math:`\ell =
        \min(n, \text{rank} + p)` columns.
    shift : "auto" or float, default="auto"
        Stabilising shift :math:`\nu \ge 0`. ``"auto"`` uses
        :math:`\nu = \sqrt{n}\,\epsilon\,\|A\Omega\|_2` (:math:`\epsilon` the machine
        epsilon of the working dtype), enlarged when rounding leaves
        :math:`\Omega^T A\Omega` slightly indefinite (see Notes); ``0`` gives the
        unshifted formula (exact arithmetic only).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the Gaussian test matrix.

    Returns
    -------
    EighResult
        ``eigenvalues`` (rank,), non-negative, descending, and ``eigenvectors``
        (n, rank) with orthonormal columns, both in the dtype of ``A`` (float32 or
        float64), such that :math:`\hat A = V \operatorname{diag}(\lambda) V^T`.

    Raises
    ------
    TypeError
        Unsupported type, complex dtype, non-integer ``rank``/``oversample``.
    ValueError
        Non-square, empty or non-finite ``A``; ``rank`` outside ``[1, n]``; negative
        ``oversample`` or ``shift``; ``A`` detected as **not symmetric** or **not PSD**
        (see Notes).

    Warns
    -----
    AccuracyWarning
        ``A`` is slightly indefinite on the sketch space (beyond the rounding of the
        products, see Notes); the result is that of the nearest PSD behaviour.

    Notes
    -----
    **Algorithm** (Tropp, Yurtsever, Udell and Cevher [1]_, Alg. 3; Frangella, Tropp
    and Udell [2]_, Alg. 2.1). Draw a Gaussian :math:`n \times \ell` matrix with
    ``rng.standard_normal((n, ell))`` and orthonormalise it (:math:`\Omega`, thin QR);
    :math:`Y = A\Omega`; shift :math:`Y_\nu = Y + \nu\Omega`; Cholesky
    :math:`C^T C = \Omega^T Y_\nu`; :math:`B = Y_\nu C^{-1}`; thin SVD
    :math:`B = U \Sigma W^T`; :math:`\lambda = \max(0, \sigma^2 - \nu)`; keep the
    ``rank`` largest. In exact arithmetic this is the Nyström approximation of
    :math:`A + \nu I` minus :math:`\nu I` on its range, which differs from
    :math:`A\langle\Omega\rangle` by :math:`O(\nu)`; the shift keeps the Cholesky
    factorisation of the (often numerically singular) core matrix stable. The price is
    a bias of order :math:`n\nu` in the eigenvalues (the shifted matrix has full rank):
    negligible in float64, a relative :math:`\approx n^{3/2}\epsilon` in float32.

    **Cost.** :math:`\ell` products with :math:`A` (one pass), plus
    :math:`O(n\ell^2)` flops (QR of :math:`\Omega`, :math:`\Omega^T Y`, the triangular
    solve and the thin SVD of :math:`B`), done in float64 for float32 input too (only
    the products with :math:`A` run in float32). Memory :math:`O(n\ell)`.

    **Error.** :math:`A - A\langle\Omega\rangle = A^{1/2}(I - P_{A^{1/2}\Omega})A^{1/2}
    \succeq 0`, so :math:`\operatorname{tr}(A - A\langle\Omega\rangle) =
    \|(I - P_{A^{1/2}\Omega})A^{1/2}\|_F^2`, and the Halko-Martinsson-Tropp bound
    applied to :math:`A^{1/2}` gives, for :math:`\ell = k + p` columns with
    :math:`p \ge 2`, :math:`\mathbb{E}\operatorname{tr}(A - A\langle\Omega\rangle) \le
    (1 + k/(p-1))\sum_{j>k}\lambda_j(A)`; see
    :func:`rnla.bounds.nystrom_expected_trace_bound` and
    :func:`rnla.bounds.nystrom_structural_bound`.

    **Symmetry and PSD checks, and their limits.** The function sees :math:`A` only
    through :math:`Y = A\Omega`. With :math:`\nu_0 = \sqrt{n}\,\epsilon\,\|Y\|_2`
    (the automatic shift) and :math:`\mu_{\min}` the smallest eigenvalue of
    :math:`\Omega^T A\Omega` (the most negative Rayleigh quotient of :math:`A` on
    :math:`\operatorname{range}(\Omega)`), it raises :class:`ValueError` when
    :math:`\Omega^T A\Omega` is asymmetric beyond :math:`100\,\nu_0` or when
    :math:`\mu_{\min} < -\sqrt{\epsilon}\,\|Y\|_2` (not PSD). A negative
    :math:`\mu_{\min}` above that threshold is treated as rounding (of the products, or
    of :math:`A` itself, e.g. a float32 kernel matrix cast to float64): the automatic
    shift becomes :math:`\nu = \nu_0 + 2|\mu_{\min}|` so that the Cholesky factor stays
    well conditioned, and an :class:`~rnla.AccuracyWarning` is issued when
    :math:`|\mu_{\min}| > 10\,\nu_0`. An indefinite or asymmetric :math:`A` whose
    offending part is (nearly) orthogonal to the sketch passes undetected: with
    :math:`\ell \ll n` a single small negative eigenvalue is usually missed. Check
    PSD-ness independently when it matters.

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell and V. Cevher, "Fixed-rank approximation
       of a positive-semidefinite matrix from streaming data", NeurIPS 2017.
       https://arxiv.org/abs/1706.05736
    .. [2] Z. Frangella, J. A. Tropp and M. Udell, "Randomized Nyström
       preconditioning", SIAM J. Matrix Anal. Appl. 44(2), 2023.
       https://doi.org/10.1137/21M1466244
    .. [3] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011. https://doi.org/10.1137/090771806

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((50, 5))
    >>> res = nystrom(X @ X.T, 5, rng=0)
    >>> res.eigenvalues.shape, res.eigenvectors.shape
    ((5,), (50, 5))
    """
    op = _wrap(A)
    m, n = op.shape
    if m != n:
        raise ValueError(f"A must be square (symmetric PSD), got shape {op.shape}")
    dtype = op.dtype
    rank = check_rank(rank, (n,))
    oversample = check_int(oversample, "oversample", minimum=0)
    user_shift = _check_shift(shift)
    rng = check_rng(rng)
    ell = min(n, rank + oversample)
    eps = float(np.finfo(dtype).eps)

    Omega, _ = np.linalg.qr(rng.standard_normal((n, ell)))
    Omega = np.ascontiguousarray(Omega, dtype=dtype)
    Y = np.asarray(op.matmat(Omega))
    if Y.shape != (n, ell):
        raise ValueError(f"A @ Omega must have shape {(n, ell)}, got {Y.shape}")
    Y = np.asarray(Y, dtype=dtype)
    if not np.isfinite(Y).all():
        raise ValueError("A must be finite: the sketch A @ Omega contains NaN or inf")

    gram = Y.T.astype(np.float64) @ Y.astype(np.float64)
    norm_y = math.sqrt(max(float(np.linalg.eigvalsh(gram)[-1]), 0.0))
    if norm_y == 0.0:
        # A Omega = 0: A vanishes on range(Omega) and its Nyström approximation is 0.
        res = EighResult(np.zeros(rank, dtype=dtype), op.as_long(Omega[:, :rank].copy()))
        return _with_passes(res, op.n_passes)
    nu0 = math.sqrt(n) * eps * norm_y
    # The O(n ell^2) post-processing runs in float64 for every input dtype: the core
    # matrix has condition number up to ||A|| / nu ~ 1 / (sqrt(n) eps), which a float32
    # triangular solve would turn into O(1e-4) relative errors.
    Om64 = Omega.astype(np.float64)
    Y64 = Y.astype(np.float64)
    M0 = Om64.T @ Y64
    asym = float(np.max(np.abs(M0 - M0.T)))
    if asym > _SYM_FACTOR * nu0:
        raise ValueError(
            "A must be symmetric: Omega^T A Omega is asymmetric by "
            f"{asym:.3g} (max entry), above the rounding threshold {_SYM_FACTOR * nu0:.3g}"
        )
    mu_min = float(np.linalg.eigvalsh(0.5 * (M0 + M0.T))[0])
    significant = math.sqrt(eps) * norm_y
    if mu_min < -significant:
        raise ValueError(
            "A is not positive semidefinite: Omega^T A Omega has the eigenvalue "
            f"{mu_min:.6g} (the most negative Rayleigh quotient of A seen on the sketch "
            f"space), below -sqrt(eps) * ||A Omega||_2 = {-significant:.3g}"
        )
    if user_shift is None:
        # Rounding (of the products, or of A itself) can leave Omega^T A Omega slightly
        # indefinite; the shift then also covers that, so that the shifted core keeps
        # eigenvalues >= nu0 and its Cholesky factor stays well conditioned.
        nu = nu0 + 2.0 * max(-mu_min, 0.0)
        if -mu_min > _NEG_FACTOR * nu0:
            warnings.warn(
                "A is slightly indefinite: Omega^T A Omega has the eigenvalue "
                f"{mu_min:.3g}, beyond the rounding level {_NEG_FACTOR * nu0:.3g} of the "
                "products but above -sqrt(eps) * ||A Omega||_2; treated as rounding "
                "(the shift was enlarged accordingly)",
                AccuracyWarning,
                stacklevel=2,
            )
    else:
        nu = user_shift
    Y_nu = Y64 + nu * Om64 if nu > 0 else Y64
    # The eigendecomposition fallback is reached only with a user-chosen shift.
    B = _nystrom_factor(Om64, Y_nu)
    U, s, _ = np.linalg.svd(B, full_matrices=False)
    lam = np.maximum(s.astype(np.float64) ** 2 - nu, 0.0)
    r = min(rank, lam.size)
    eigenvalues = np.zeros(rank, dtype=dtype)
    eigenvalues[:r] = lam[:r]
    eigenvectors = np.ascontiguousarray(U[:, :r], dtype=dtype)
    if r < rank:  # only after dropping a numerically null part of the core matrix
        extra = Omega - eigenvectors @ (eigenvectors.T @ Omega)
        Q, _ = np.linalg.qr(extra.astype(np.float64))
        eigenvectors = np.hstack([eigenvectors, Q[:, : rank - r].astype(dtype)])
    return _with_passes(EighResult(eigenvalues, op.as_long(eigenvectors)), op.n_passes)


# ---------------------------------------------------------------------------------------
# Randomly pivoted Cholesky
# ---------------------------------------------------------------------------------------

_METHODS = ("accelerated", "blocked", "simple", "greedy", "uniform")
# Rounding floor of the residual diagonal: entries below _FLOOR * (i + 1) * eps * A_jj
# after i pivots are rounding noise (backward error of an i-step Cholesky update) and
# are set to exactly 0, so that an exactly low-rank matrix stops at its rank.
_FLOOR = 4.0
# The factorisation stops when the residual trace is below
# _TRACE_FLOOR * sqrt(i + 1) * eps * tr(A): measured rounding noise of the residual
# trace after recovering an exactly low-rank matrix is 1-40 eps * tr(A).
_TRACE_FLOOR = 50.0


def _as_entry_matrix(A):
    """Return ``A`` as an EntryMatrix; ndarray (or array_like) input is wrapped."""
    if isinstance(A, EntryMatrix) and not isinstance(A, np.ndarray):
        return A
    if sp.issparse(A) or isinstance(A, LinearOperator):
        raise TypeError(
            "rpcholesky needs entry access: pass an ndarray or an EntryMatrix (e.g. "
            f"rnla.operators.KernelMatrix), got {type(A).__name__}; for a matrix "
            "available only through products use rnla.nystrom"
        )
    return DenseEntries(A)


def _sample(rng, d, size):
    """``size`` i.i.d. indices with probability ``d / d.sum()`` (``d >= 0``)."""
    cdf = np.cumsum(d)
    # side="right": indices with zero weight are never returned.
    idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return np.minimum(idx, d.size - 1).astype(np.int64)


def _evaluate_rows(M, S, dtype):
    # rows() returns fresh arrays (EntryMatrix protocol): no copy unless a cast is needed.
    G = np.ascontiguousarray(M.rows(S), dtype=dtype)
    if G.shape != (S.size, M.shape[1]):
        raise ValueError(f"A.rows() must return shape {(S.size, M.shape[1])}, got {G.shape}")
    if not np.isfinite(G).all():
        raise ValueError("A must be finite: rows() returned NaN or inf")
    return G


def _subtract_factor(G, Ft, S, i):
    """In place ``G -= F[S, :i] F[:, :i]^T`` for the C-ordered rows ``G`` (len(S), n)."""
    if i == 0:
        return G
    # One GEMM accumulating into G (as the Fortran-ordered G^T): no n x len(S) temporary.
    gemm = sla.get_blas_funcs("gemm", dtype=G.dtype)
    out = gemm(-1.0, Ft[:i].T, Ft[:i, S], beta=1.0, c=G.T, overwrite_c=True)
    if not np.shares_memory(out, G):  # pragma: no cover - BLAS wrapper copied
        G[...] = out.T
    return G


def _check_block_symmetric(R, eps):
    if R.shape[0] > 1:
        asym = float(np.max(np.abs(R - R.T)))
        scale = float(np.max(np.abs(R)))
        if asym > math.sqrt(eps) * scale:
            raise ValueError(
                "A must be symmetric: the pivot block A[S, S] is asymmetric by "
                f"{asym:.3g} (max entry; largest entry {scale:.3g})"
            )


def _not_psd(where: str, value: float, index: int) -> ValueError:
    return ValueError(
        f"A is not positive semidefinite: the {where} of index {index} is {value:.6g} < 0 "
        "(a Schur complement of a PSD matrix has a nonnegative diagonal)"
    )


def _default_block_size(method: str, kmax: int, rank) -> int:
    if method in ("simple", "greedy"):
        return 1
    if method == "uniform":
        return rank if rank is not None else 64
    if method == "accelerated":
        # Rejection sampling keeps the exact RPCholesky law for any block size; large
        # blocks mean few, large BLAS calls (k/2 proposals: about 3-5 blocks in all),
        # at b^2/2 extra entry evaluations per block.
        return int(min(max(16, math.ceil(kmax / 2)), 512)) if rank is not None else 128
    # blocked: pivots inside a block are not conditioned on each other, so smaller
    # blocks (about k/10) keep it close to RPCholesky.
    return int(min(max(16, math.ceil(kmax / 10)), 1024)) if rank is not None else 64


def rpcholesky(
    A, rank=None, /, *, tol=None, block_size=None, method="accelerated", rng=None
) -> CholeskyResult:
    r"""Randomly pivoted partial Cholesky: a column Nyström approximation :math:`A \approx FF^T`.

    Parameters
    ----------
    A : ndarray or EntryMatrix, shape (n, n)
        Symmetric positive-semidefinite matrix. An ndarray is wrapped in
        :class:`~rnla.operators.DenseEntries` (a copy). Only ``A.diag()`` (once) and
        ``A.rows(idx)`` (the pivot rows) are called, plus ``A.entries(i, j)`` for the
        small proposal blocks of ``method="accelerated"``; the matrix is never formed.
    rank : int, optional
        Number of pivots (maximum rank), ``1 <= rank <= n``. At least one of ``rank``
        and ``tol`` is required.
    tol : float, optional
        Relative trace tolerance in ``(0, 1)``: stop as soon as
        :math:`\operatorname{tr}(A - FF^T) / \operatorname{tr}(A) \le` ``tol``. The
        residual trace is tracked exactly (it is the sum of the residual diagonal),
        checked after every pivot (``simple``, ``greedy``) or every block (the
        others, which may therefore overshoot by less than one block).
    block_size : int, optional
        Proposals per block (``>= 1``). Defaults: ``accelerated``
        :math:`\min(\max(16, \lceil k/2\rceil), 512)` (128 when only ``tol`` is
        given), ``blocked`` :math:`\min(\max(16, \lceil k/10\rceil), 1024)` (64),
        ``simple``/``greedy`` 1, ``uniform`` ``rank`` (64). ``simple`` ignores it.
    method : {"accelerated", "blocked", "simple", "greedy", "uniform"}, default="accelerated"
        Pivoting rule, see Notes.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the random pivots (``greedy`` is deterministic).

    Returns
    -------
    CholeskyResult
        ``F`` of shape (n, r), dtype of ``A``, with :math:`\hat A = FF^T =
        A(:, S)A(S, S)^{\dagger}A(S, :)`, and ``pivots`` :math:`S` (r,) int64 in
        selection order. ``r <= rank`` (or :math:`\le n`): fewer pivots are returned
        when the tolerance is met, when the residual diagonal vanishes (the matrix
        has numerical rank r, e.g. an exactly low-rank matrix, which is then recovered
        to rounding error) or, for ``uniform``, when some of the drawn columns are
        numerically dependent. The achieved relative trace error is
        :math:`1 - \|F\|_F^2 / \operatorname{tr}(A)`.

    Raises
    ------
    TypeError
        Sparse matrices and LinearOperators (use :func:`nystrom`), complex input,
        non-integer ``rank``/``block_size``.
    ValueError
        Non-square, empty or non-finite ``A``; neither ``rank`` nor ``tol``; ``rank``
        outside ``[1, n]``; ``tol`` outside ``(0, 1)``; unknown ``method``; ``A``
        detected as not symmetric (asymmetric pivot block) or **not PSD**: a negative
        diagonal entry, or a residual (Schur complement) diagonal entry below
        :math:`-(\sqrt{\epsilon} A_{ii}/\rho + 10\epsilon\max_j A_{jj})`, where
        :math:`\rho \le 1` is the smallest ratio (pivot residual)/(pivot diagonal
        entry) so far (rounding errors grow like :math:`1/\rho`).

    Warns
    -----
    AccuracyWarning
        Both ``rank`` and ``tol`` were given and ``tol`` was not reached with
        ``rank`` pivots.

    Notes
    -----
    **Simple RPCholesky** (Chen, Epperly, Tropp and Webber [1]_, Alg. 2.1). Keep the
    residual diagonal :math:`d = \operatorname{diag}(A - FF^T)`. Repeat: sample a pivot
    :math:`s` with probability :math:`d_s / \sum_j d_j`; evaluate row :math:`s`;
    :math:`g = A(s, :)^T - F F(s, :)^T`; append the column :math:`g/\sqrt{g_s}` to
    :math:`F`; :math:`d \leftarrow d - |g|^2/g_s`. Cost: :math:`(k+1)n` entry
    evaluations (the diagonal and :math:`k` rows) and :math:`O(k^2 n)` flops (one
    matrix-vector product per step), memory :math:`O(kn)`.

    **Blocked** ([1]_, block variant): draw ``block_size`` i.i.d. proposals from
    :math:`d`, drop repeats, evaluate all their rows at once and factor the
    :math:`b \times b` residual block by Cholesky (BLAS-3). Faster per pivot, but the
    pivots within a block are not conditioned on one another, so it may pick
    redundant pivots (those are dropped when their residual falls below the rounding
    floor, after their rows were evaluated).

    **Accelerated** (Epperly, Tropp and Webber [2]_): draw ``block_size`` i.i.d.
    proposals :math:`s_1, \dots, s_b` from :math:`d`, evaluate the :math:`b \times b`
    residual block :math:`H` from ``entries`` (:math:`b(b-1)/2` evaluations of
    :math:`A` per block of distinct proposals), and run a partial Cholesky
    factorisation of :math:`H` in proposal order, accepting :math:`s_j` with
    probability :math:`H^{(j)}_{jj}/d_{s_j}` (its residual after the pivots already
    accepted, over the proposal weight: rejection sampling). Then evaluate only the
    accepted rows. The accepted pivots have exactly the distribution of simple
    RPCholesky, at BLAS-3 speed.

    **Greedy** ([1]_, pivoted partial Cholesky): the pivot with the largest residual
    diagonal (ties: smallest index); with ``block_size = b > 1`` the ``b`` largest per
    block. Deterministic; can be fooled by outliers. **Uniform**: ``rank`` columns
    drawn uniformly at random without replacement - the classical column Nyström method
    (Williams and Seeger), one block by default; columns that are numerically dependent
    on the others are dropped, so fewer than ``rank`` pivots may be returned. With
    ``tol`` only, blocks of uniform columns are drawn until the tolerance is met.

    **Evaluations.** ``A.n_evaluations`` increases by exactly :math:`n` (diagonal) plus
    :math:`n` per evaluated row; for ``simple`` and ``greedy`` this is
    :math:`(r+1)n` unless a sampled pivot turns out to be at the rounding floor (its
    row is then evaluated and dropped). ``accelerated`` adds the proposal blocks.

    **Numerics.** Residual-diagonal entries below the rounding floor
    :math:`4(i+b)\epsilon A_{jj}` (after :math:`i` pivots, block size :math:`b`) are
    set to 0 (they are the backward error of the Cholesky updates), and the
    factorisation stops when the residual trace falls below
    :math:`50\sqrt{i+1}\,\epsilon\operatorname{tr}A` (the measured rounding level
    of the residual trace of an exactly low-rank matrix): this is what stops an
    exactly low-rank matrix at its rank. Inside a block, a proposal whose residual
    fell below :math:`\sqrt{\epsilon}` times its value at the start of the block is
    not accepted (it is numerically dependent on the pivots accepted before it; for
    ``accelerated`` this changes acceptance probabilities by at most
    :math:`\sqrt{\epsilon}`). The residual diagonal is accumulated in float64 for
    every input dtype.

    **Bounds.** One step of RPCholesky contracts the expected trace exactly:
    :math:`\mathbb{E}[\operatorname{tr}A^{(i+1)} \mid A^{(i)}] = \operatorname{tr}
    A^{(i)} - \|A^{(i)}\|_F^2/\operatorname{tr}A^{(i)}`. [1]_, Thm. 2.3: with
    :math:`\eta = \operatorname{tr}(A - [\![A]\!]_r)/\operatorname{tr}A`,
    :math:`\mathbb{E}\operatorname{tr}(A - \hat A) \le (1+\varepsilon)
    \operatorname{tr}(A - [\![A]\!]_r)` once :math:`k \ge r/\varepsilon +
    r\log_+(1/(\varepsilon\eta))`; see :func:`rnla.bounds.rpcholesky_rank_bound`.
    These hold for ``simple`` and ``accelerated`` (same distribution), not for
    ``blocked``, ``greedy`` or ``uniform``.

    References
    ----------
    .. [1] Y. Chen, E. N. Epperly, J. A. Tropp and R. J. Webber, "Randomly pivoted
       Cholesky: Practical approximation of a kernel matrix with few entry
       evaluations", Comm. Pure Appl. Math. 78(5), 2025.
       https://arxiv.org/abs/2207.06503
    .. [2] E. N. Epperly, J. A. Tropp and R. J. Webber, "Embrace rejection: Kernel
       matrix approximation by accelerated randomly pivoted Cholesky", 2024.
       https://arxiv.org/abs/2410.03969

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.operators import KernelMatrix
    >>> K = KernelMatrix(np.random.default_rng(0).standard_normal((200, 3)))
    >>> F, pivots = rpcholesky(K, 20, rng=0)
    >>> F.shape, pivots.shape
    ((200, 20), (20,))
    """
    M = _as_entry_matrix(A)
    n, dtype = _check_square(M)
    method = check_option(method, _METHODS, "method")
    if rank is None and tol is None:
        raise ValueError("give rank=, tol= or both: got rank=None and tol=None")
    if rank is not None:
        rank = check_rank(rank, (n,))
    if tol is not None:
        tol = check_probability(tol, "tol")
    if block_size is not None:
        block_size = check_int(block_size, "block_size", minimum=1)
    rng = check_rng(rng)
    d0 = _checked_diagonal(M, n)

    kmax = rank if rank is not None else n
    b = block_size if block_size is not None else _default_block_size(method, kmax, rank)
    if method == "simple":
        b = 1
    # With a rank, F has its final size from the start; with tol only it grows.
    cap = kmax if rank is not None else min(n, max(64, b))
    fac = _PartialCholesky(M, d0, dtype, cap, rank, uniform=method == "uniform")
    propose = _PROPOSALS[method]
    while fac.i < kmax and not fac.converged(tol):
        want = kmax - fac.i
        floor_factor = _FLOOR * (fac.i + min(b, want)) * fac.eps
        block = propose(fac, rng, b, want)
        if block is None:
            break
        acc, L = fac.factor_block(block, floor_factor)
        if acc.size:
            fac.append(block, acc, L, floor_factor)

    if rank is not None and tol is not None and fac.i == rank:
        _warn_tol_not_reached(fac, rank, tol)
    return fac.result()


def _check_square(M) -> tuple[int, np.dtype]:
    shape = tuple(M.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"A must be square (symmetric PSD), got shape {shape}")
    return shape[0], float_dtype(M.dtype)


def _checked_diagonal(M, n: int) -> np.ndarray:
    """``diag(A)`` in float64, checked for shape, finiteness and sign."""
    d0 = np.array(M.diag(), dtype=np.float64)
    if d0.shape != (n,):
        raise ValueError(f"A.diag() must have shape {(n,)}, got {d0.shape}")
    if not np.isfinite(d0).all():
        raise ValueError("A must be finite: its diagonal contains NaN or inf")
    if d0.min() < 0:
        j = int(np.argmin(d0))
        raise _not_psd("diagonal entry", float(d0[j]), j)
    return d0


def _warn_tol_not_reached(fac, rank: int, tol: float) -> None:
    achieved = float(fac.d.sum()) / fac.tr0 if fac.tr0 > 0 else 0.0
    if achieved > tol:
        warnings.warn(
            f"tol={tol:g} not reached with rank={rank} pivots: relative trace "
            f"error {achieved:.3g}",
            AccuracyWarning,
            stacklevel=3,
        )


class _Block(NamedTuple):
    """One block of pivot proposals and its residual block ``H = (A - FF^T)[S, S]``."""

    S: np.ndarray  # proposals (matrix indices)
    H: np.ndarray  # float64 (len(S), len(S)), overwritten by the block Cholesky
    u: np.ndarray  # uniforms of the rejection test (zeros: accept every proposal)
    dprop: np.ndarray  # proposal weights d[S] (zeros without rejection)
    G: np.ndarray | None  # residual rows of S, or None: evaluated once accepted
    want: int  # most proposals to accept
    pivoting: bool  # complete pivoting inside the block (deterministic rules only)


class _PartialCholesky:
    """The running factorisation ``F`` (stored as ``F^T``), residual diagonal and pivots."""

    def __init__(self, M, d0, dtype, cap: int, rank, *, uniform: bool) -> None:
        n = d0.size
        self.M = M
        self.dtype = dtype
        self.rank = rank
        self.d0 = d0
        self.d = d0.copy()
        self.eps = float(np.finfo(dtype).eps)
        self.neg_factor = math.sqrt(self.eps)
        self.rel_floor = math.sqrt(self.eps)
        self.min_ratio = 1.0  # smallest pivot residual relative to its diagonal entry
        self.neg_abs = 10.0 * self.eps * float(d0.max())
        self.tr0 = float(d0.sum())
        self.Ft = np.empty((cap, n), dtype=dtype)  # F^T: one row per pivot, C order
        self.pivots: list[int] = []
        self.tried = np.zeros(n, dtype=bool) if uniform else None
        self.i = 0

    def converged(self, tol) -> bool:
        total = float(self.d.sum())
        # Numerical rank reached: the residual trace is rounding noise.
        if total <= _TRACE_FLOOR * math.sqrt(self.i + 1) * self.eps * self.tr0:
            return True
        return tol is not None and total <= tol * self.tr0

    def residual_rows(self, S) -> np.ndarray:
        """Rows ``(A - FF^T)[S, :]`` in the working dtype (symmetry of ``A[S, S]`` checked)."""
        G = _evaluate_rows(self.M, S, self.dtype)
        _check_block_symmetric(G[:, S].astype(np.float64), self.eps)
        return _subtract_factor(G, self.Ft, S, self.i)

    def factor_block(self, block: _Block, floor_factor: float):
        """Block Cholesky of ``H`` with acceptance: (accepted positions, its factor L)."""
        S, H = block.S, block.H
        raw = np.diag(H).copy()
        floor = floor_factor * self.d0[S]
        # A proposal whose residual fell below sqrt(eps) times its value at the start
        # of the block is (numerically) in the span of the pivots accepted before it in
        # the block: accepting it would only amplify rounding errors.
        accept_floor = np.maximum(floor, self.rel_floor * raw)
        negtol = self.neg_factor * self.d0[S] / self.min_ratio + self.neg_abs
        accepted = np.empty(S.size, dtype=np.int64)
        L = np.empty((S.size, S.size))
        count = _block_pivoted_cholesky(
            H,
            block.u,
            block.dprop,
            accept_floor,
            negtol,
            S,
            block.want,
            block.pivoting,
            accepted,
            L,
        )
        if count < 0:
            j = -count - 1
            raise _not_psd("residual diagonal", float(H[j, j]), int(S[j]))
        # Proposals whose own residual is at the rounding floor are converged.
        self.d[S[raw <= floor]] = 0.0
        return accepted[:count], L

    def append(self, block: _Block, acc, L, floor_factor: float) -> None:
        """Append the accepted pivots ``T = S[acc]`` to ``F`` and downdate the diagonal."""
        T = block.S[acc]
        G_T = self.residual_rows(T) if block.G is None else block.G[acc]
        if self.pivots:
            self._check_symmetric_rows(T, G_T)
        count = acc.size
        i = self.i
        self._reserve(i + count)
        # F_new^T = L^{-1} G_T, as the right-sided solve G_T^T L^{-T} on the
        # Fortran-ordered view G_T.T (no copy of the n x count block).
        trsm = sla.get_blas_funcs("trsm", dtype=self.dtype)
        G_T = np.ascontiguousarray(G_T)
        L_T = L[:count, :count]
        out = trsm(
            1.0, L_T.astype(self.dtype), G_T.T, side=1, lower=1, trans_a=1, overwrite_b=True
        )
        self.Ft[i : i + count] = out.T
        # Exact Cholesky structure: F[S] is lower triangular in pivot order (these
        # entries are residuals at earlier pivots, i.e. rounding noise).
        if self.pivots:
            self.Ft[i : i + count, self.pivots] = 0.0
        for a in range(1, count):
            self.Ft[i + a, T[:a]] = 0.0
        # Errors of the residual diagonal grow like 1 / (smallest relative pivot).
        pivot_ratio = np.diag(L_T) ** 2 / np.maximum(self.d0[T], np.finfo(float).tiny)
        self.min_ratio = min(self.min_ratio, float(pivot_ratio.min()))
        self._downdate(i, count, floor_factor)
        self.d[T] = 0.0
        self.pivots.extend(int(t) for t in T)
        self.i += count

    def _check_symmetric_rows(self, T, G_T) -> None:
        # Residual rows vanish at earlier pivots iff A(T, S) = A(S, T)^T: a free
        # symmetry check against every pivot row evaluated before.
        prev = np.asarray(self.pivots)
        gap = np.abs(G_T[:, prev].astype(np.float64))
        scale = np.sqrt(np.outer(self.d0[T], self.d0[prev]))
        allowed = self.rel_floor / self.min_ratio * scale
        if np.any(gap > allowed + self.neg_abs):
            a, c = np.unravel_index(np.argmax(gap - allowed), gap.shape)
            raise ValueError(
                f"A must be symmetric: A[{T[a]}, {prev[c]}] differs from "
                f"A[{prev[c]}, {T[a]}] by about {gap[a, c]:.3g}"
            )

    def _reserve(self, size: int) -> None:
        """Grow ``F^T`` (tol-only factorisations) to hold ``size`` pivots."""
        cap = self.Ft.shape[0]
        if size > cap:
            kmax = self.rank if self.rank is not None else self.d0.size
            cap = min(kmax, max(2 * cap, size))
            new = np.empty((cap - self.i, self.d0.size), dtype=self.dtype)
            self.Ft = np.concatenate([self.Ft[: self.i], new])

    def _downdate(self, i: int, count: int, floor_factor: float) -> None:
        bad = _downdate_diagonal(
            self.d,
            self.Ft[i : i + count],
            self.d0,
            floor_factor,
            self.neg_factor / self.min_ratio,
            self.neg_abs,
        )
        if bad >= 0:
            value = float(self.d0[bad] - np.sum(self.Ft[: i + count, bad] ** 2))
            raise _not_psd("residual diagonal", value, bad)

    def result(self) -> CholeskyResult:
        F = self.Ft[: self.i].T
        if self.i < self.Ft.shape[0]:
            F = np.asfortranarray(F)  # drop the unused capacity
        return CholeskyResult(F, np.asarray(self.pivots, dtype=np.int64))


def _proposal_block(M, uniq, d0, dtype):
    """Symmetric block ``A[uniq, uniq]`` from ``entries`` (strict upper triangle only)."""
    k = uniq.size
    H = np.diag(d0[uniq])
    if k > 1:
        iu, ju = np.triu_indices(k, 1)
        vals = np.asarray(M.entries(uniq[iu], uniq[ju]), dtype=np.float64)
        if not np.isfinite(vals).all():
            raise ValueError("A must be finite: entries() returned NaN or inf")
        # Round through the working dtype so H matches the rows() seen later.
        vals = vals.astype(dtype).astype(np.float64)
        H[iu, ju] = vals
        H[ju, iu] = vals
    return H


# One proposal step per method: (factorisation, rng, block size, most pivots wanted)
# -> _Block, or None when there is nothing left to propose.


def _accelerated_block(fac: _PartialCholesky, rng, size: int, want: int) -> _Block:
    """i.i.d. proposals from ``d``; ``H`` from ``entries``, rows evaluated once accepted."""
    S = _sample(rng, fac.d, size)
    uniq, inv = np.unique(S, return_inverse=True)
    Hu = _proposal_block(fac.M, uniq, fac.d0, fac.dtype)
    if fac.i:
        Fu = fac.Ft[: fac.i, uniq].astype(np.float64)
        Hu -= Fu.T @ Fu
    H = np.ascontiguousarray(Hu[np.ix_(inv, inv)])
    u = rng.random(size)
    return _Block(S, H, u, fac.d[S], None, want, pivoting=False)


def _evaluated_block(fac: _PartialCholesky, S, want: int) -> _Block | None:
    """Accept-all block: the residual rows of the distinct proposals ``S``, evaluated now."""
    if S.size == 0:
        return None
    G = fac.residual_rows(S)
    H = G[:, S].astype(np.float64)
    H = 0.5 * (H + H.T)
    zeros = np.zeros(S.size)
    return _Block(S, H, zeros, np.zeros(S.size), G, want, pivoting=True)


def _sampled_block(fac: _PartialCholesky, rng, size: int, want: int) -> _Block | None:
    """Propose distinct i.i.d. draws from ``d`` (``simple``: one, ``blocked``: a block)."""
    size = min(size, want)
    S = np.unique(_sample(rng, fac.d, size)) if size > 1 else _sample(rng, fac.d, 1)
    return _evaluated_block(fac, S, want)


def _greedy_block(fac: _PartialCholesky, rng, size: int, want: int) -> _Block | None:
    """Propose the ``size`` largest residual diagonal entries (ties by index)."""
    d = fac.d
    size = min(size, want, int(np.count_nonzero(d > 0)))
    if size == 1:
        S = np.array([int(np.argmax(d))], dtype=np.int64)
    else:
        top = np.argpartition(-d, size - 1)[:size]
        # Largest first; ties by index, so the order is deterministic.
        S = top[np.lexsort((top, -d[top]))].astype(np.int64)
    return _evaluated_block(fac, S, want)


def _uniform_block(fac: _PartialCholesky, rng, size: int, want: int) -> _Block | None:
    """Columns drawn uniformly without replacement among those never drawn."""
    tried = fac.tried
    if fac.rank is not None:
        # Plain column Nyström: at most ``rank`` columns are ever drawn.
        want = min(want, fac.rank - int(tried.sum()))
        if want <= 0:
            return None
    candidates = np.flatnonzero(~tried)
    if candidates.size == 0:
        return None
    size = min(size, want, candidates.size)
    S = np.sort(rng.choice(candidates, size=size, replace=False))
    tried[S] = True
    return _evaluated_block(fac, S.astype(np.int64), want)


_PROPOSALS = {
    "accelerated": _accelerated_block,
    "blocked": _sampled_block,
    "simple": _sampled_block,
    "greedy": _greedy_block,
    "uniform": _uniform_block,
}
