r"""Lanczos and block Lanczos, matrix functions and Gauss-type quadrature bounds.

All routines need only products with a **symmetric** operator :math:`A` (ndarray,
``scipy.sparse`` matrix, :class:`~scipy.sparse.linalg.LinearOperator` or an object with
``as_linear_operator()``). Symmetry is checked at the boundary with one pair of random
probes, :math:`|\langle Ax, y\rangle - \langle x, Ay\rangle|`, at the cost of two extra
matvecs (counted in ``n_matvecs``).

* :func:`lanczos` / :func:`block_lanczos` - orthonormal Krylov bases
  :math:`Q` with the (block) tridiagonal projection :math:`T = Q^T A Q`.
* :func:`funm_lanczos` - :math:`f(A)b \approx \|b\|\,Q f(T) e_1`.
* :func:`quadform_bounds` - Gauss and Gauss-Radau estimates of :math:`b^T f(A) b`
  that bracket the exact value when the derivatives of :math:`f` have constant sign
  (Golub-Meurant).

Dense work (QR, eigendecompositions of the small :math:`T`) is done by LAPACK through
NumPy/SciPy; the recurrences are BLAS-2/BLAS-3 products, so no Numba kernel is used:
a compiled loop would only re-implement the same GEMV/GEMM calls.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from rnla._validation import (
    as_float_array,
    check_int,
    check_option,
    check_rng,
    result_dtype,
)
from rnla.operators import _Operator, _wrap

__all__ = [
    "BlockLanczosResult",
    "LanczosResult",
    "QuadratureBounds",
    "block_lanczos",
    "funm_lanczos",
    "lanczos",
    "quadform_bounds",
]

_REORTH = ("full", "none")
# A residual below sqrt(eps) * ||A||_est ends the recurrence. Rounding errors outside an
# invariant Krylov space are amplified by the Lanczos polynomial (often to ~1e-12 ||A|| in
# float64), so an eps-level threshold misses true breakdowns; stopping at beta <= sqrt(eps)
# ||A|| perturbs quadratic forms b^T f(A) b only at second order, O(beta^2) = O(eps).
# Start blocks are deflated at _RANK_TOL * sqrt(n) * eps * ||V||_2 (rank of the data).
_RANK_TOL = 10.0
# Symmetry probe tolerance, in units of sqrt(n) * eps * (||Ax|| ||y|| + ||x|| ||Ay||).
_SYMMETRY = 100.0


class LanczosResult(NamedTuple):
    r"""Output of :func:`lanczos` (``j`` = number of steps taken, ``j <= k``).

    Attributes
    ----------
    Q : ndarray of shape (n, j)
        Orthonormal basis of the Krylov space :math:`\mathcal K_j(A, v)`;
        ``Q[:, 0] = v / ||v||``.
    alpha : ndarray of shape (j,)
        Diagonal of :math:`T = Q^T A Q`.
    beta : ndarray of shape (j - 1,)
        Off-diagonal of :math:`T` (``T = diag(beta, -1) + diag(alpha) + diag(beta, 1)``).
    beta0 : float
        :math:`\|v\|_2`.
    breakdown : bool
        True when the space became invariant (``j`` may then be smaller than ``k``);
        quantities computed from ``T`` are then exact up to rounding.
    n_matvecs : int
        Products with ``A`` spent, including the two symmetry probes.
    """

    Q: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    beta0: float
    breakdown: bool
    n_matvecs: int


class BlockLanczosResult(NamedTuple):
    r"""Output of :func:`block_lanczos` (``J`` = number of basis columns).

    Attributes
    ----------
    Q : ndarray of shape (n, J)
        Orthonormal basis of the block Krylov space :math:`\mathcal K_k(A, V)`;
        ``J <= p k``, fewer after deflation of rank-deficient blocks or breakdown.
    T : ndarray of shape (J, J)
        Symmetric block tridiagonal projection :math:`Q^T A Q`.
    R0 : ndarray of shape (min(p, J), p)
        Triangular factor of the start block (up to column pivoting):
        ``V = Q[:, :p] @ R0``. Rows beyond the numerical rank of ``V`` are zero.
    breakdown : bool
        True when the space became invariant before ``k`` block steps.
    n_matvecs : int
        Products with ``A`` (columns), including the two symmetry probes.
    """

    Q: np.ndarray
    T: np.ndarray
    R0: np.ndarray
    breakdown: bool
    n_matvecs: int


class QuadratureBounds(NamedTuple):
    r"""Output of :func:`quadform_bounds`: estimates of :math:`b^T f(A) b`.

    Attributes
    ----------
    gauss : float
        ``k``-point Gauss quadrature :math:`\|b\|^2 e_1^T f(T_k) e_1`.
    radau : float
        ``(k+1)``-point Gauss-Radau quadrature with the prescribed node at one end of
        ``spectrum``.
    lower : float
        The lower bound among ``gauss`` and ``radau`` (the side follows from the signs
        of the derivatives of ``f``, not from comparing the two numbers).
    upper : float
        The upper bound.
    k : int
        Lanczos steps taken (smaller than requested after breakdown, in which case
        ``gauss == radau`` is exact).
    """

    gauss: float
    radau: float
    lower: float
    upper: float
    k: int


# ---------------------------------------------------------------------------------------
# Validation helpers (shared with rnla.trace)
# ---------------------------------------------------------------------------------------


def _check_symmetric(op: _Operator, rng: np.random.Generator, dtype) -> int:
    """Raise ValueError unless ``<Ax, y> = <x, Ay>`` for one random pair; return matvecs."""
    n = op.shape[0]
    X = rng.standard_normal((n, 2)).astype(dtype)
    AX = op.matmat(X, dtype).astype(np.float64)
    X = X.astype(np.float64)
    gap = abs(X[:, 1] @ AX[:, 0] - X[:, 0] @ AX[:, 1])
    scale = float(_norm(AX[:, 0]) * _norm(X[:, 1]) + _norm(X[:, 0]) * _norm(AX[:, 1]))
    limit = _SYMMETRY * math.sqrt(n) * np.finfo(dtype).eps * scale
    if not np.isfinite(gap) or gap > limit:
        raise ValueError(
            "A must be symmetric: a random probe gave |<Ax, y> - <x, Ay>| = "
            f"{gap:.3g}, expected <= {limit:.3g} (relative {gap / max(scale, 1e-300):.3g})"
        )
    return 2


def _norm(x: np.ndarray, axis=None):
    """Euclidean norm(s) accumulated in float64.

    ``np.linalg.norm`` sums squares in the input dtype, so a float32 vector with entries
    above ~1.8e19 gives ``inf`` (and a spurious breakdown); LAPACK's scaled ``nrm2`` would
    avoid that too, but a float64 copy of one block costs less than the product that made it.
    """
    return np.linalg.norm(np.asarray(x, dtype=np.float64), axis=axis)


def _breakdown_tol(dtype) -> float:
    return math.sqrt(float(np.finfo(dtype).eps))


def _rank_tol(n: int, dtype) -> float:
    return _RANK_TOL * math.sqrt(n) * float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------------------
# Recurrences (no validation)
# ---------------------------------------------------------------------------------------


class _LanczosState(NamedTuple):
    Q: np.ndarray  # (n, j)
    alpha: np.ndarray  # (j,)
    beta: np.ndarray  # (j,) beta[j-1] is the residual norm beta_j (0 after breakdown)
    beta0: float
    breakdown: bool
    n_matvecs: int


def _lanczos_core(op, v, k, full, dtype) -> _LanczosState:
    """Lanczos with optional full reorthogonalisation ("twice is enough")."""
    op = _wrap(op)  # no-op for a wrapped operator
    n = v.shape[0]
    tol = _breakdown_tol(dtype)
    Q = np.empty((n, k), dtype=dtype)
    alpha = np.zeros(k, dtype=dtype)
    beta = np.zeros(k, dtype=dtype)
    beta0 = float(_norm(v))
    Q[:, 0] = v / beta0
    anorm = 0.0
    breakdown = False
    j = 0
    for j in range(k):
        w = op.matmat(Q[:, j : j + 1], dtype)[:, 0]
        anorm = max(anorm, float(_norm(w)))
        a = Q[:, j] @ w
        w = w - a * Q[:, j]
        if j > 0:
            w -= beta[j - 1] * Q[:, j - 1]
        if full:
            Qj = Q[:, : j + 1]
            for _ in range(2):
                w -= Qj @ (Qj.T @ w)
        alpha[j] = a
        b = float(_norm(w))
        if b <= tol * anorm:
            breakdown = True
            break
        beta[j] = b
        if j + 1 < k:
            Q[:, j + 1] = w / b
    m = j + 1
    return _LanczosState(Q[:, :m], alpha[:m], beta[:m], beta0, breakdown, m)


def _deflated_qr(W: np.ndarray, abs_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Rank-revealing QR ``W ~ Q B`` keeping the columns with ``|R_ii| > abs_tol``."""
    Qf, R, perm = sla.qr(W, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    r = int(np.count_nonzero(d > abs_tol))
    B = np.zeros((r, W.shape[1]), dtype=W.dtype)
    B[:, perm] = R[:r]
    return np.ascontiguousarray(Qf[:, :r]), B


class _BlockState(NamedTuple):
    Q: np.ndarray
    T: np.ndarray
    R0: np.ndarray  # (r0, p) with V = Q[:, :r0] @ R0
    breakdown: bool
    n_matvecs: int


def _block_lanczos_core(op, V, k, full, dtype) -> _BlockState:
    op = _wrap(op)  # no-op for a wrapped operator
    n, p = V.shape
    tol = _breakdown_tol(dtype)
    Q1, R0 = _deflated_qr(V, _rank_tol(n, dtype) * float(np.linalg.norm(V, 2)))
    if Q1.shape[1] == 0:
        raise ValueError("V must have at least one nonzero column")
    Q = np.empty((n, min(n, p * k)), dtype=dtype)
    sizes = [Q1.shape[1]]
    Q[:, : sizes[0]] = Q1
    diag_blocks: list[np.ndarray] = []
    off_blocks: list[np.ndarray] = []
    anorm = 0.0
    n_matvecs = 0
    breakdown = False
    start = 0
    for j in range(k):
        pj = sizes[-1]
        Qj = Q[:, start : start + pj]
        W = op.matmat(Qj, dtype)
        n_matvecs += pj
        anorm = max(anorm, float(np.max(_norm(W, axis=0))))
        Aj = Qj.T @ W
        Aj = (Aj + Aj.T) / 2
        W -= Qj @ Aj
        if j > 0:
            W -= Q[:, start - sizes[-2] : start] @ off_blocks[-1].T
        if full:
            Qall = Q[:, : start + pj]
            for _ in range(2):
                W -= Qall @ (Qall.T @ W)
        diag_blocks.append(Aj)
        room = Q.shape[1] - (start + pj)
        Qn, B = _deflated_qr(W, tol * anorm)
        if Qn.shape[1] == 0 or room == 0:
            breakdown = Qn.shape[1] == 0
            break
        if j == k - 1:
            break
        # The dimension cannot exceed n: keep the dominant directions of W.
        Qn, B = Qn[:, :room], B[:room]
        off_blocks.append(B)
        start += pj
        sizes.append(Qn.shape[1])
        Q[:, start : start + sizes[-1]] = Qn
    J = sum(sizes[: len(diag_blocks)])
    T = np.zeros((J, J), dtype=dtype)
    o = 0
    for j, Aj in enumerate(diag_blocks):
        pj = sizes[j]
        T[o : o + pj, o : o + pj] = Aj
        if j + 1 < len(diag_blocks):
            B = off_blocks[j]
            T[o + pj : o + pj + B.shape[0], o : o + pj] = B
            T[o : o + pj, o + pj : o + pj + B.shape[0]] = B.T
        o += pj
    return _BlockState(Q[:, :J], T, R0, breakdown, n_matvecs)


# ---------------------------------------------------------------------------------------
# Public Lanczos
# ---------------------------------------------------------------------------------------


def _prepare(A, X, k, reorth, rng, *, block: bool):
    op = _wrap(A, square=True)
    n = op.shape[0]
    X = as_float_array(X, name="V" if block else "v", ndim=2 if block else 1)
    if X.shape[0] != n:
        raise ValueError(
            f"{'V' if block else 'v'} must have {n} rows to match A of shape {op.shape}, "
            f"got shape {X.shape}"
        )
    if block and X.shape[1] > n:
        raise ValueError(f"V must have at most n={n} columns, got shape {X.shape}")
    full = check_option(reorth, _REORTH, "reorth") == "full"
    dtype = result_dtype(op.dtype, X.dtype)
    X = X.astype(dtype, copy=False)
    if not np.any(X):
        raise ValueError(f"{'V' if block else 'v'} must be nonzero")
    kmax = -(-n // X.shape[1]) if block else n
    k = check_int(k, "k", minimum=1, maximum=kmax)
    extra = _check_symmetric(op, check_rng(rng), dtype)
    return op, X, k, full, dtype, extra


def lanczos(A, v, k, /, *, reorth="full", rng=None) -> LanczosResult:
    r"""Run ``k`` steps of the symmetric Lanczos process.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric operator.
    v : array_like of shape (n,)
        Nonzero start vector.
    k : int
        Number of steps, ``1 <= k <= n``.
    reorth : {"full", "none"}, default="full"
        ``"full"`` reorthogonalises every new vector twice against the whole basis
        (:math:`O(nk^2)` extra flops, basis orthonormal to rounding); ``"none"`` runs the
        plain three-term recurrence (orthogonality is lost as Ritz values converge).
    rng : None, int or Generator, optional
        Randomness of the symmetry probe.

    Returns
    -------
    LanczosResult
        ``Q`` (n, j), ``alpha`` (j,), ``beta`` (j-1,), ``beta0``, ``breakdown``,
        ``n_matvecs`` with ``j <= k`` steps (``j < k`` only after breakdown).

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Non-square or non-symmetric ``A``, ``v`` of the wrong length or zero,
        ``k`` out of range, unknown ``reorth``.

    Notes
    -----
    Builds :math:`AQ_j = Q_jT_j + \beta_j q_{j+1}e_j^T` with :math:`T_j` tridiagonal
    [1]_. When :math:`\beta_j` falls below :math:`\sqrt{\epsilon}\,\|A\|_{est}` the
    space :math:`\mathcal K_j(A, v)` is invariant, the recurrence stops and
    ``breakdown=True``: Ritz values are then eigenvalues of ``A`` and quadrature is exact.
    Cost: ``k`` matvecs (+2 for the symmetry probe) and :math:`O(nk^2)` flops with full
    reorthogonalisation.

    References
    ----------
    .. [1] G. H. Golub and C. F. Van Loan, *Matrix Computations*, 4th ed., §10.1,
       Johns Hopkins, 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.krylov import lanczos
    >>> A = np.diag(np.arange(1.0, 11.0))
    >>> res = lanczos(A, np.ones(10), 4, rng=0)
    >>> res.Q.shape, res.alpha.shape, res.beta.shape
    ((10, 4), (4,), (3,))
    """
    op, v, k, full, dtype, extra = _prepare(A, v, k, reorth, rng, block=False)
    st = _lanczos_core(op, v, k, full, dtype)
    return LanczosResult(
        st.Q, st.alpha, st.beta[:-1].copy(), st.beta0, st.breakdown, st.n_matvecs + extra
    )


def block_lanczos(A, V, k, /, *, reorth="full", rng=None) -> BlockLanczosResult:
    r"""Run ``k`` block steps of the symmetric block Lanczos process.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric operator.
    V : array_like of shape (n, p)
        Start block (need not be orthonormal or of full rank).
    k : int
        Number of block steps, ``1 <= k <= ceil(n / p)``.
    reorth : {"full", "none"}, default="full"
        ``"full"``: every new block is reorthogonalised twice against the whole basis;
        ``"none"``: only against the two previous blocks.
    rng : None, int or Generator, optional
        Randomness of the symmetry probe.

    Returns
    -------
    BlockLanczosResult
        ``Q`` (n, J), ``T`` (J, J), ``R0`` (min(p, J), p), ``breakdown``, ``n_matvecs``.

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Non-square or non-symmetric ``A``, ``V`` of the wrong shape or zero, ``k`` out
        of range, unknown ``reorth``.

    Notes
    -----
    Block recurrence :math:`AQ_j = Q_{j-1}B_{j-1}^T + Q_jA_j + Q_{j+1}B_j` [1]_ with
    :math:`Q_{j+1}B_j` a column-pivoted QR of the residual block. Columns with
    :math:`|R_{ii}| \le \sqrt{\epsilon}\,\|A\|_{est}` are dropped (deflation), so
    blocks may shrink and ``J`` can be smaller than ``p k``; an empty block means the
    space is invariant (``breakdown=True``) and the Ritz values are eigenvalues of
    ``A``. ``T`` is assembled from the recurrence coefficients, hence exactly block
    tridiagonal. Cost: at most ``p k`` matvecs (as ``k`` products with blocks) and
    :math:`O(n p^2 k^2)` flops for the reorthogonalisation.

    References
    ----------
    .. [1] G. H. Golub and R. Underwood, "The block Lanczos method for computing
       eigenvalues", in *Mathematical Software III*, Academic Press, 1977, pp. 361-377.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.krylov import block_lanczos
    >>> A = np.diag(np.arange(1.0, 21.0))
    >>> V = np.random.default_rng(0).standard_normal((20, 3))
    >>> res = block_lanczos(A, V, 2, rng=0)
    >>> res.Q.shape, res.T.shape, res.R0.shape
    ((20, 6), (6, 6), (3, 3))
    """
    op, V, k, full, dtype, extra = _prepare(A, V, k, reorth, rng, block=True)
    st = _block_lanczos_core(op, V, k, full, dtype)
    p = V.shape[1]
    J = st.Q.shape[1]
    R0 = np.zeros((min(p, J), p), dtype=dtype)
    R0[: st.R0.shape[0]] = st.R0
    return BlockLanczosResult(st.Q, st.T, R0, st.breakdown, st.n_matvecs + extra)


# ---------------------------------------------------------------------------------------
# Matrix functions and quadrature
# ---------------------------------------------------------------------------------------


def _inv(x):
    return 1.0 / x


# name -> (function, open/closed lower end of the domain, sign f^(2k), sign f^(2k+1))
_NAMED: dict[str, tuple[Callable, float | None, int, int]] = {
    "exp": (np.exp, None, 1, 1),
    "log": (np.log, 0.0, -1, 1),
    "inv": (_inv, 0.0, 1, -1),
    "sqrt": (np.sqrt, 0.0, -1, 1),
}


def _resolve_f(f):
    if isinstance(f, str):
        fun, lo, se, so = check_option(f, _NAMED, "f")
        return fun, f, lo, (se, so)
    if callable(f):
        return f, getattr(f, "__name__", "f"), None, None
    raise TypeError(f"f must be a callable or one of {sorted(_NAMED)}, got {type(f).__name__}")


def _apply_f(fun, name, domain_lo, theta):
    """Evaluate ``f`` at Ritz values, checking the named functions' domains."""
    if domain_lo is not None and np.min(theta) <= domain_lo:
        raise ValueError(
            f"f={name!r} needs a positive definite operator: the Lanczos Ritz values "
            f"include {np.min(theta):.6g} <= 0"
        )
    vals = np.asarray(fun(theta), dtype=np.float64)
    if vals.shape != theta.shape:
        raise ValueError(
            f"f must map an array of shape {theta.shape} to the same shape, got {vals.shape}"
        )
    return vals


def _eig_tridiag(alpha, beta):
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return sla.eigh_tridiagonal(alpha, beta)


def _gauss(alpha, beta, beta0, fun, name, domain_lo, shift=0.0) -> float:
    theta, S = _eig_tridiag(alpha, beta)
    return float(beta0**2 * np.sum(S[0] ** 2 * _apply_f(fun, name, domain_lo, theta + shift)))


def _radau(alpha, beta, beta_k, beta0, node, fun, name, domain_lo, shift=0.0) -> float:
    r"""Gauss-Radau rule with a prescribed node: extend ``T_k`` by one row/column.

    Solves :math:`(T_k - aI)\delta = \beta_k^2 e_k` and sets
    :math:`\tilde\alpha = a + \delta_k` (Golub & Meurant 2010, §6.2).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    k = alpha.size
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    rhs = np.zeros(k)
    rhs[-1] = float(beta_k) ** 2
    delta = np.linalg.solve(T - node * np.eye(k), rhs)
    alpha_ext = np.append(alpha, node + delta[-1])
    beta_ext = np.append(beta, float(beta_k))
    return _gauss(alpha_ext, beta_ext, beta0, fun, name, domain_lo, shift)


def funm_lanczos(A, b, f, k, /, *, reorth="full", rng=None) -> np.ndarray:
    r"""Approximate :math:`f(A)b` from ``k`` Lanczos steps.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric operator.
    b : array_like of shape (n,)
        Nonzero vector.
    f : callable or {"exp", "log", "inv", "sqrt"}
        Scalar function applied elementwise to an array of eigenvalues. ``"log"``,
        ``"inv"`` and ``"sqrt"`` require ``A`` positive definite.
    k : int
        Lanczos steps, ``1 <= k <= n``.
    reorth : {"full", "none"}, default="full"
        Reorthogonalisation, see :func:`lanczos`.
    rng : None, int or Generator, optional
        Randomness of the symmetry probe.

    Returns
    -------
    ndarray of shape (n,)
        :math:`\|b\|\,Q_k f(T_k) e_1`, in the dtype of ``A`` and ``b``.

    Raises
    ------
    TypeError
        ``f`` neither callable nor a string; complex input.
    ValueError
        As :func:`lanczos`; unknown name; a Ritz value outside the domain of the named
        ``f``.

    Notes
    -----
    The Lanczos approximation is exact for polynomials of degree ``< k`` and satisfies
    :math:`\|f(A)b - \|b\|Q_kf(T_k)e_1\| \le 2\|b\|\min_{\deg p<k}
    \max_{\lambda\in[\lambda_{\min},\lambda_{\max}]}|f(\lambda) - p(\lambda)|` [1]_.
    Cost: ``k`` matvecs plus :math:`O(nk^2)` flops.

    References
    ----------
    .. [1] Y. Saad, "Analysis of some Krylov subspace approximations to the matrix
       exponential operator", SIAM J. Numer. Anal. 29 (1992), 209-228.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.krylov import funm_lanczos
    >>> A = np.diag(np.arange(1.0, 11.0))
    >>> funm_lanczos(A, np.ones(10), "exp", 5, rng=0).shape
    (10,)
    """
    fun, name, lo, _ = _resolve_f(f)
    op, b, k, full, dtype, _ = _prepare(A, b, k, reorth, rng, block=False)
    st = _lanczos_core(op, b, k, full, dtype)
    theta, S = _eig_tridiag(st.alpha, st.beta[:-1])
    coef = S @ (_apply_f(fun, name, lo, theta) * S[0])
    return (st.beta0 * (st.Q.astype(np.float64) @ coef)).astype(dtype)


def _check_spectrum(spectrum, shift, lo):
    try:
        lmin, lmax = (float(s) for s in spectrum)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"spectrum must be a pair (lmin, lmax), got {spectrum!r}") from exc
    if not (math.isfinite(lmin) and math.isfinite(lmax) and lmin <= lmax):
        raise ValueError(f"spectrum=({lmin}, {lmax}) must be finite with lmin <= lmax")
    if lo is not None and lmin + shift <= lo:
        raise ValueError(
            f"lmin + shift = {lmin + shift:.6g} must be > 0 for this f "
            "(the operator must be positive definite)"
        )
    return lmin, lmax


def quadform_bounds(
    A,
    b,
    f,
    k,
    /,
    *,
    spectrum,
    shift=0.0,
    derivative_signs=None,
    reorth="full",
    rng=None,
) -> QuadratureBounds:
    r"""Gauss and Gauss-Radau bounds on the quadratic form :math:`b^T f(A + sI) b`.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric operator.
    b : array_like of shape (n,)
        Nonzero vector.
    f : callable or {"inv", "log", "sqrt", "exp"}
        The function. Named functions know the signs of their derivatives; a callable
        needs ``derivative_signs``.
    k : int
        Lanczos steps (Gauss nodes), ``1 <= k <= n``.
    spectrum : tuple of float
        ``(lmin, lmax)`` with ``lmin <= lambda_min(A)`` and ``lambda_max(A) <= lmax``.
        The Radau node is placed at one of them.
    shift : float, default=0.0
        ``s``: the form of :math:`f(A + sI)` is computed from the same Lanczos run
        (Krylov spaces are shift invariant). ``"inv"``, ``"log"``, ``"sqrt"`` require
        ``lmin + s > 0``.
    derivative_signs : tuple of int, optional
        ``(sign f^(2k), sign f^(2k+1))`` on ``[lmin + s, lmax + s]``, each ``+1`` or
        ``-1``; required for a callable ``f``, ignored for names.
    reorth : {"full", "none"}, default="full"
        Reorthogonalisation, see :func:`lanczos`.
    rng : None, int or Generator, optional
        Randomness of the symmetry probe.

    Returns
    -------
    QuadratureBounds
        ``gauss``, ``radau``, ``lower``, ``upper`` (floats) and ``k`` (steps taken).

    Raises
    ------
    TypeError
        ``f`` not callable/str, ``spectrum`` not a pair.
    ValueError
        As :func:`lanczos`; ``lmin + shift <= 0`` for ``inv``/``log``/``sqrt``;
        ``spectrum`` that does not enclose the Ritz values; missing
        ``derivative_signs`` for a callable.

    Notes
    -----
    With :math:`T_k` from ``k`` Lanczos steps on ``b``, Gauss quadrature is
    :math:`G_k = \|b\|^2 e_1^T f(T_k) e_1` and [1]_ (Thm 6.2, 6.4)

    .. math::

        I - G_k = \frac{f^{(2k)}(\eta)}{(2k)!}\int\prod_{j=1}^k(\lambda-\theta_j)^2
        \,d\alpha(\lambda), \qquad
        I - R_{k+1} = \frac{f^{(2k+1)}(\xi)}{(2k+1)!}\int(\lambda - a)
        \prod_{j=1}^k(\lambda-\theta_j)^2\,d\alpha(\lambda)

    for the Radau rule :math:`R_{k+1}` with the extra node :math:`a`. So Gauss is a
    **lower** bound when :math:`f^{(2k)} > 0` and an **upper** bound when
    :math:`f^{(2k)} < 0`; Radau with :math:`a = l_{\min}` errs with the sign of
    :math:`f^{(2k+1)}` and with :math:`a = l_{\max}` with the opposite sign. The node
    is chosen so that Radau lies on the other side of Gauss:

    * ``"inv"`` :math:`1/(s+\lambda)`: Gauss lower, Radau at ``lmin`` upper;
    * ``"log"`` and ``"sqrt"``: Gauss upper, Radau at ``lmin`` lower;
    * ``"exp"``: Gauss lower, Radau at ``lmax`` upper.

    After breakdown both rules are exact. Cost: ``k`` matvecs plus :math:`O(nk^2)`.
    For ``"inv"`` the Gauss error equals the squared :math:`(A+sI)`-norm CG error, so
    it decays like :func:`rnla.bounds.cg_error_bound` squared.

    References
    ----------
    .. [1] G. H. Golub and G. Meurant, *Matrices, Moments and Quadrature with
       Applications*, Princeton University Press, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.krylov import quadform_bounds
    >>> A = np.diag(np.linspace(1.0, 10.0, 50))
    >>> qb = quadform_bounds(A, np.ones(50), "inv", 3, spectrum=(1.0, 10.0), rng=0)
    >>> bool(qb.lower <= np.sum(1 / np.diag(A)) <= qb.upper)
    True
    """
    fun, name, lo, signs = _resolve_f(f)
    if signs is None:
        if derivative_signs is None:
            raise ValueError(
                "derivative_signs=(sign f^(2k), sign f^(2k+1)) is required for a callable f"
            )
        try:
            signs = tuple(int(s) for s in derivative_signs)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"derivative_signs must be a pair of +1/-1, got {derivative_signs!r}"
            ) from exc
        if len(signs) != 2 or any(s not in (-1, 1) for s in signs):
            raise ValueError(f"derivative_signs must be a pair of +1/-1, got {signs!r}")
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real):
        raise TypeError(f"shift must be a real number, got {shift!r}")
    shift = float(shift)
    lmin, lmax = _check_spectrum(spectrum, shift, lo)
    op, b, k, full, dtype, _ = _prepare(A, b, k, reorth, rng, block=False)
    st = _lanczos_core(op, b, k, full, dtype)
    s_even, s_odd = signs
    node = lmin if s_odd == -s_even else lmax
    return _bounds_from_state(st, fun, name, lo, shift, node, s_even, (lmin, lmax))


def _bounds_from_state(st, fun, name, lo, shift, node, s_even, spectrum) -> QuadratureBounds:
    alpha, beta = st.alpha, st.beta[:-1]
    theta = _eig_tridiag(alpha, beta)[0]
    lmin, lmax = spectrum
    slack = 1e2 * math.sqrt(len(st.Q)) * np.finfo(st.Q.dtype).eps * max(abs(lmin), abs(lmax))
    if theta[0] < lmin - slack or theta[-1] > lmax + slack:
        raise ValueError(
            f"spectrum=({lmin:.6g}, {lmax:.6g}) must enclose the spectrum of A, but the "
            f"Ritz values span [{theta[0]:.6g}, {theta[-1]:.6g}]"
        )
    g = _gauss(alpha, beta, st.beta0, fun, name, lo, shift)
    if st.breakdown:
        r = g
    else:
        r = _radau(alpha, beta, st.beta[-1], st.beta0, node, fun, name, lo, shift)
    lower, upper = (g, r) if s_even > 0 else (r, g)
    return QuadratureBounds(g, r, lower, upper, len(alpha))


def _rows_times(op, Qt: np.ndarray, dtype) -> np.ndarray:
    """``Qt A`` (c, n) for a symmetric ``A``: the rows of ``(A Qt^T)^T``, one pass.

    A dense ``A`` is multiplied from the left, ``Qt @ A``: OpenBLAS runs this short-and-
    wide GEMM near the read bandwidth of ``A``, 1.5-1.7x faster than the tall-and-skinny
    ``A @ Qt^T`` for c = 10-24 probes (n = 6000), and no transposed copies are made.
    Equal to ``(A Qt^T)^T`` to rounding because ``A`` is symmetric (the callers check).
    """
    if op.kind == "dense":
        op._passes.add()
        out = np.matmul(Qt, op.A)
        return out if out.dtype == dtype else out.astype(dtype)
    return op.matmat(np.ascontiguousarray(Qt.T), dtype).T.copy()


def _lanczos_batch(op, Z, k, full, dtype):
    """Independent Lanczos runs on the columns of ``Z`` in lockstep (one matmat per step).

    Used by stochastic Lanczos quadrature: BLAS-3 products with all probes at once are
    several times faster than ``m`` separate matvec loops. Columns that break down are
    frozen and dropped from later products.

    Returns
    -------
    alpha, beta : ndarray of shape (m, k), float64
        Recurrence coefficients; only the first ``steps[c]`` entries of ``alpha[c]`` and
        ``steps[c] - 1`` of ``beta[c]`` are meaningful.
    steps : ndarray of int, shape (m,)
    norms : ndarray of shape (m,)
        ``||z_c||``.
    n_matvecs : int
    """
    op = _wrap(op)  # no-op for a wrapped operator
    n, m = Z.shape
    tol = _breakdown_tol(dtype)
    norms = np.linalg.norm(Z.astype(np.float64), axis=0)
    alpha = np.zeros((m, k))
    beta = np.zeros((m, k))
    steps = np.zeros(m, dtype=np.int64)
    # Basis stored probe-major, (m, k, n), so reorthogonalisation is a batched matmul.
    Qs = np.zeros((m, k, n), dtype=dtype)
    Qs[:, 0] = (Z / norms).T
    active = np.flatnonzero(norms > 0)
    anorm = np.zeros(m)
    n_matvecs = 0
    for j in range(k):
        if active.size == 0:
            break
        # While every probe is active, views (no fancy-index copies of the basis).
        sel = slice(None) if active.size == m else active
        qj = Qs[sel, j]
        Wt = _rows_times(op, qj, dtype)
        n_matvecs += active.size
        anorm[active] = np.maximum(anorm[active], _norm(Wt, axis=1))
        a = np.einsum("cn,cn->c", qj, Wt)
        Wt -= a[:, None] * qj
        if j > 0:
            Wt -= beta[active, j - 1, None].astype(dtype) * Qs[sel, j - 1]
        if full:
            Qa = Qs[sel, : j + 1]
            for _ in range(2):
                coef = np.matmul(Qa, Wt[:, :, None])  # (c, j + 1, 1)
                Wt -= np.matmul(coef.transpose(0, 2, 1), Qa)[:, 0, :]
        alpha[active, j] = a
        steps[active] = j + 1
        b = np.linalg.norm(Wt.astype(np.float64), axis=1)
        keep = b > tol * anorm[active]
        beta[active[keep], j] = b[keep]
        if j + 1 < k:
            Qs[active[keep], j + 1] = Wt[keep] / b[keep, None].astype(dtype)
        active = active[keep]
    return alpha, beta, steps, norms, n_matvecs
