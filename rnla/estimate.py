"""A-posteriori estimators with a stated failure probability.

:func:`norm_estimate` estimates the spectral or Frobenius norm of any operator from
products with random Gaussian probes and returns two-sided bounds together with the
probability that they fail; :func:`lowrank_error_estimate` applies it to the residual
``A - approximation`` of any low-rank result of :mod:`rnla` (a certified a-posteriori
error); :func:`effective_distortion` measures how far a sketched orthonormal basis
``S U`` is from having orthonormal columns, up to scale.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.optimize import brentq
from scipy.sparse.linalg import LinearOperator
from scipy.special import betainc, lambertw

from rnla._results import (
    CholeskyResult,
    CrossResult,
    CURResult,
    EighResult,
    IDResult,
    QBResult,
    SVDResult,
)
from rnla._validation import (
    as_float_array,
    as_operator,
    as_sparse,
    check_int,
    check_real,
    check_rng,
    result_dtype,
)
from rnla.lowrank import _pow2_scale
from rnla.operators import _Operator, _wrap, check_indices

__all__ = ["NormEstimate", "effective_distortion", "lowrank_error_estimate", "norm_estimate"]

_DEFAULT_FAILURE_PROBABILITY = 1e-3
_DEFAULT_N_ITER = 4


class NormEstimate(NamedTuple):
    """A norm estimate with probabilistic bounds.

    Attributes
    ----------
    value : float
        Point estimate of the norm.
    lower : float
        Lower bound on the norm (deterministic for the spectral norm).
    upper : float
        Upper bound on the norm, valid except with the stated probability.
    delta : float
        Failure probability: the probability, over the random probes, that
        ``lower <= norm <= upper`` fails.
    n_matvecs : int
        Number of products of ``A`` or ``A^T`` with a vector (a block of ``b``
        columns counts ``b``).
    """

    value: float
    lower: float
    upper: float
    delta: float
    n_matvecs: int


# ----------------------------------------------------------------------------------------
# tail functions
# ----------------------------------------------------------------------------------------


def _chi2_chernoff_roots(c: float) -> tuple[float, float]:
    """Roots ``t_- < 1 < t_+`` of ``t - 1 - ln t = c`` (``c > 0``).

    ``t e^{-t} = e^{-(1 + c)}``, so ``t = -W(-e^{-(1+c)})`` on the two real branches of
    the Lambert function.
    """
    z = -math.exp(-(1.0 + c))
    t_lo = float(-lambertw(z, 0).real)
    t_hi = float(-lambertw(z, -1).real)
    return t_lo, t_hi


def _power_failure(eps: float, q: int, dim: int) -> float:
    """``P(R < (1 - eps) lambda_1)`` bound for one probe after ``q`` power steps.

    ``R`` is the Rayleigh quotient of ``M = B^T B`` at ``M^q g``; see the Notes of
    :func:`norm_estimate`.
    """
    if dim <= 1:
        return 0.0
    # c = max_{mu in [0, 1 - eps]} mu^{2q} (1 - eps - mu), attained at mu = 2q(1-eps)/(2q+1)
    j2 = 2 * q
    log_c = (j2 + 1) * math.log1p(-eps) - (j2 + 1) * math.log(j2 + 1)
    if j2 > 0:
        log_c += j2 * math.log(j2)
    s = math.exp(log_c - math.log(eps))
    return float(betainc(0.5, 0.5 * (dim - 1), s / (1.0 + s)))


def _power_eps(delta: float, q: int, dim: int, r: int) -> float:
    """Smallest ``eps`` with ``_power_failure(eps)**r <= delta`` (0 if exact)."""
    target = delta ** (1.0 / r)
    if _power_failure(1e-15, q, dim) <= target:
        return 0.0

    def f(eps):
        return math.log(max(_power_failure(eps, q, dim), 1e-300)) - math.log(target)

    hi = 1.0 - 1e-15
    if f(hi) > 0.0:
        return 1.0
    root = float(brentq(f, 1e-15, hi, xtol=1e-14, rtol=1e-12))
    # p is decreasing in eps: step past the bracketing tolerance so p(eps)^r <= delta.
    return min(hi, root + 1e-13 + 1e-11 * root)


# ----------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------


def _check_delta(value) -> float:
    if value is None:
        return _DEFAULT_FAILURE_PROBABILITY
    return check_real(value, "delta", lower=0, upper=1)


def _orth(X: np.ndarray) -> np.ndarray:
    # Householder QR: the span of Q contains the span of X even when X is rank deficient,
    # which is all the bound needs.
    return sla.qr(X, mode="economic", overwrite_a=True, check_finite=False)[0]


def norm_estimate(
    A,
    norm=2,
    *,
    n_probes: int = 10,
    n_iter: int | None = None,
    delta: float | None = None,
    rng=None,
) -> NormEstimate:
    r"""Estimate ``||A||_2`` or ``||A||_F`` with bounds that hold with stated probability.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array of shape (m, n)
        Operator; only products with ``A`` and ``A^T`` are used.
    norm : {2, "fro"}, default=2
        Spectral or Frobenius norm.
    n_probes : int, default=10
        Number ``b`` of Gaussian probe vectors (the block size for ``norm=2``).
    n_iter : int, optional
        Power (subspace) iterations on :math:`A^\top A` for ``norm=2``; default 4.
        Must be ``None`` for ``"fro"``.
    delta : float, optional
        Probability ``delta`` in (0, 1) that the bounds may fail; default ``1e-3``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the probes.

    Returns
    -------
    NormEstimate
        ``value``, ``lower``, ``upper`` (Python floats), ``delta`` and
        ``n_matvecs``: ``b (2 q + 1)`` for ``norm=2`` with ``q = n_iter`` (fewer if
        ``b > min(m, n)``), ``b`` for ``"fro"``.

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-integer ``n_probes``/``n_iter``.
    ValueError
        Empty or non-finite ``A``; unknown ``norm``; ``n_probes < 1``; ``n_iter < 0``
        or ``n_iter`` given with ``"fro"``; ``delta`` outside (0, 1).

    Notes
    -----
    Products are computed in the dtype of ``A`` (float32 stays float32); the bounds
    account for the randomness of the probes, not for rounding errors, which are of
    relative order ``sqrt(n)`` times the unit roundoff.

    **Frobenius norm.** With ``N = n_probes`` Gaussian probes :math:`w_j`,
    :math:`\hat f^2 = N^{-1}\sum_j\|Aw_j\|^2` is unbiased for :math:`\|A\|_F^2`
    and ``value`` :math:`=\hat f`. In the SVD basis
    :math:`Q := \hat f^2/\|A\|_F^2 = \sum_{i,j} a_{ij} g_{ij}^2` with
    :math:`a_{ij} = \sigma_i^2/(N\|A\|_F^2)`, so :math:`\sum a_{ij} = 1` and every
    :math:`a_{ij} \le 1/N`. Chernoff: :math:`P(Q \le t) \le e^{\lambda t}
    \prod(1 + 2\lambda a_{ij})^{-1/2}`. The function :math:`a \mapsto \sum
    \log(1 + 2\lambda a_{ij})` is concave, so its minimum over the polytope
    :math:`\{\sum a = 1, 0 \le a \le 1/N\}` sits at a vertex, i.e. ``N`` weights
    equal to :math:`1/N` (rank-one ``A``, the worst case). Hence
    :math:`\mathbb E e^{-\lambda Q} \le (1 + 2\lambda/N)^{-N/2}` and, optimising
    :math:`\lambda`,

    .. math::

        P(Q \le t) \le \exp\big(-\tfrac N2(t - 1 - \ln t)\big),\ t < 1, \qquad
        P(Q \ge t) \le \exp\big(-\tfrac N2(t - 1 - \ln t)\big),\ t > 1,

    the second by the same argument with the convex :math:`-\sum\log(1 - 2\lambda
    a_{ij})`. With :math:`t_- < 1 < t_+` the roots of :math:`t - 1 - \ln t =
    2\ln(2/\delta)/N` (Lambert W), ``upper`` :math:`= \hat f/\sqrt{t_-}` and
    ``lower`` :math:`= \hat f/\sqrt{t_+}`, each failing with probability at most
    :math:`\delta/2`. The bound is finite for every ``N`` and sharper than the one from
    the Laurent–Massart lower tail (2000, Lemma 1), :math:`P(Q \le 1 -
    2\sqrt{x/N}) \le e^{-x}` (which needs :math:`N > 4\ln(2/\delta)`).

    **Spectral norm.** Randomised subspace iteration: :math:`X_0 = \mathrm{orth}(
    \Omega)`, :math:`X_{i+1} = \mathrm{orth}(B^\top B X_i)` with ``B`` the one of
    ``A``, ``A^T`` with fewer columns (dimension :math:`D = \min(m, n)`), and
    ``value`` :math:`= \sigma_{\max}(B X_q)`, the largest Ritz value on
    :math:`\mathrm{span}(X_q) \supseteq \mathrm{span}((B^\top B)^q\Omega)`. It is
    a Rayleigh quotient, so ``lower = value`` :math:`\le \|A\|_2` deterministically.
    For the upper bound let :math:`M = B^\top B`, :math:`\lambda_1 = \|A\|_2^2 = 1`
    (scaling) and :math:`R_i` the Rayleigh quotient of :math:`M` at
    :math:`M^q\omega_i`; then :math:`\text{value}^2 \ge \max_i R_i`. In the
    eigenbasis, :math:`R_i < (1-\varepsilon)` iff :math:`\varepsilon g_1^2 <
    \sum_{l\ge2}\mu_l^{2q}(1-\varepsilon-\mu_l)g_l^2 \le c\,\chi^2_{D-1}` with
    :math:`c = \max_{\mu\in[0,1-\varepsilon]}\mu^{2q}(1-\varepsilon-\mu) =
    (1-\varepsilon)^{2q+1}(2q)^{2q}/(2q+1)^{2q+1}`. Since
    :math:`g_1^2/(g_1^2+\chi^2_{D-1}) \sim \mathrm{Beta}(1/2, (D-1)/2)`,

    .. math::

        P\big(R_i < (1-\varepsilon)\lambda_1\big) \le
        I_{c/(c+\varepsilon)}\big(\tfrac12, \tfrac{D-1}2\big) =: p(\varepsilon),

    and the ``b`` probes are independent, so :math:`P(\text{value}^2 < (1-\varepsilon)
    \|A\|_2^2) \le p(\varepsilon)^b`. ``upper`` :math:`= \text{value}/
    \sqrt{1-\varepsilon}` with :math:`p(\varepsilon)^b = \delta` (root found
    numerically). This is the argument of Kuczyński & Woźniakowski (1992) for the power
    method, with the exact Beta tail instead of their :math:`0.824\sqrt{n}
    (1-\varepsilon)^{k}`-type bound; it is much tighter than the probe-only bound
    :math:`\|A\| \le \alpha\sqrt{2/\pi}\max_i\|A\omega_i\|` (Halko, Martinsson
    & Tropp 2011, Lemma 4.1), which ignores the iterations.

    Cost: ``b (2q + 1)`` products and ``q + 1`` QR factorisations of a
    ``D x b`` block for ``norm=2``; ``b`` products for ``"fro"``.

    References
    ----------
    .. [1] J. Kuczyński and H. Woźniakowski, "Estimating the largest eigenvalue by the
       power and Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl.
       13 (1992).
    .. [2] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
       randomness", SIAM Rev. 53 (2011), Lemma 4.1.
    .. [3] B. Laurent and P. Massart, "Adaptive estimation of a quadratic functional by
       model selection", Ann. Statist. 28 (2000), Lemma 1.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.estimate import norm_estimate
    >>> est = norm_estimate(np.eye(5), rng=0)
    >>> est.lower <= 1.0 + 1e-12 and est.upper >= est.value
    True
    """
    op = _wrap(A)
    if isinstance(norm, str):
        if norm != "fro":
            raise ValueError(f"norm={norm!r} is not one of 2, 'fro'")
        spectral = False
    elif isinstance(norm, numbers.Integral) and not isinstance(norm, bool) and norm == 2:
        spectral = True
    else:
        raise ValueError(f"norm={norm!r} is not one of 2, 'fro'")
    b = check_int(n_probes, "n_probes", minimum=1)
    delta = _check_delta(delta)
    if spectral:
        q = _DEFAULT_N_ITER if n_iter is None else check_int(n_iter, "n_iter", minimum=0)
    elif n_iter is not None:
        raise ValueError(f"n_iter={n_iter!r} applies to norm=2 only; pass None for norm='fro'")
    rng = check_rng(rng)
    dtype = np.float32 if np.dtype(op.dtype) == np.float32 else np.float64
    m, n = op.shape

    if not spectral:
        W = rng.standard_normal((n, b)).astype(dtype, copy=False)
        Y = np.asarray(op.matmat(W), dtype=np.float64)
        value = math.sqrt(float(np.sum(Y * Y)) / b)
        t_lo, t_hi = _chi2_chernoff_roots(2.0 * math.log(2.0 / delta) / b)
        return NormEstimate(value, value / math.sqrt(t_hi), value / math.sqrt(t_lo), delta, b)

    # Work on the side of smaller dimension: the bound depends on D = min(m, n).
    if n <= m:
        dim, fwd, adj = n, op.matmat, op.rmatmat
    else:
        dim, fwd, adj = m, op.rmatmat, op.matmat
    X = _orth(rng.standard_normal((dim, b)).astype(dtype, copy=False))
    cols = X.shape[1]
    for _ in range(q):
        Y = np.asarray(fwd(X), dtype=dtype)
        # A^T A X scales like ||A||^2 (float32 overflows near 1e19): exact power-of-two
        # rescaling between the products keeps it in range without changing the span.
        X = _orth(np.asarray(adj(Y / _pow2_scale(Y)), dtype=dtype))
    Y = np.asarray(fwd(X), dtype=dtype)
    value = float(sla.svdvals(Y.astype(np.float64), check_finite=False)[0])
    eps = _power_eps(delta, q, dim, cols) if cols < dim else 0.0
    upper = math.inf if eps >= 1.0 else value / math.sqrt(1.0 - eps)
    return NormEstimate(value, value, upper, delta, cols * (2 * q + 1))


def effective_distortion(SU) -> float:
    r"""Scale-free embedding quality :math:`(\kappa - 1)/(\kappa + 1)` of ``S @ U``.

    Parameters
    ----------
    SU : array_like of shape (k, d)
        A sketched basis, typically ``S @ U`` with ``U`` (n, d) orthonormal.

    Returns
    -------
    float
        :math:`(\sigma_{\max} - \sigma_{\min})/(\sigma_{\max} + \sigma_{\min})
        \in [0, 1]`, with :math:`\kappa = \sigma_{\max}/\sigma_{\min}` the
        condition number of ``SU``; 1.0 when ``SU`` is rank deficient (including
        ``k < d`` and the zero matrix).

    Raises
    ------
    TypeError
        Sparse, operator, complex or non-numeric input.
    ValueError
        Not 2-D, empty, or non-finite entries.

    Notes
    -----
    The effective distortion is the smallest :math:`\eta` such that
    :math:`c(1-\eta) \le \|SUx\| \le c(1+\eta)` for all unit ``x`` and some scale
    :math:`c > 0`, so it ignores the normalisation of ``S`` (useful for unscaled
    sketches). An ``eps``-subspace embedding (all :math:`\sigma_i^2 \in
    [1-\varepsilon, 1+\varepsilon]`) has effective distortion at most
    :func:`rnla.bounds.distortion_to_effective` ``(eps)``. Cost: one SVD of the
    ``k x d`` matrix, :math:`O(k d^2)` flops.

    References
    ----------
    .. [1] R. Murray et al., "Randomized numerical linear algebra: a perspective on the
       field with an eye to software", arXiv:2302.11474 (2023).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.estimate import effective_distortion
    >>> effective_distortion(2.0 * np.eye(3))
    0.0
    """
    M = as_float_array(SU, name="SU", ndim=2)
    k, d = M.shape
    if k < d:
        return 1.0
    s = sla.svdvals(M.astype(np.float64, copy=False), check_finite=False)
    smax, smin = float(s[0]), float(s[-1])
    if smax == 0.0:
        return 1.0
    return (smax - smin) / (smax + smin)


# ----------------------------------------------------------------------------------------
# a-posteriori error of low-rank approximations
# ----------------------------------------------------------------------------------------

_ACCEPTED_FACTORS = (
    "SVDResult(U, s, Vt), QBResult(Q, B, error), EighResult(eigenvalues, eigenvectors), "
    "CholeskyResult(F, pivots), IDResult(indices, X), CURResult(cols, U, rows), "
    "CrossResult(U, V, rows, cols), or a plain tuple (L, R) meaning L @ R"
)


class _ResidualOperator(LinearOperator):
    """``E = A - L R`` applied as ``A X - L (R X)``: the approximation is never formed."""

    def __init__(self, A_op: LinearOperator, L, R, dtype) -> None:
        super().__init__(dtype=np.dtype(dtype), shape=A_op.shape)
        self._A = A_op
        self._L = L
        self._R = R

    def _matmat(self, X):
        X = np.asarray(X, dtype=self.dtype)
        AX = np.asarray(self._A.matmat(X), dtype=self.dtype)
        return AX - np.asarray(self._L @ (self._R @ X), dtype=self.dtype)

    def _rmatmat(self, Y):
        Y = np.asarray(Y, dtype=self.dtype)
        ATY = np.asarray(self._A.rmatmat(Y), dtype=self.dtype)
        return ATY - np.asarray(self._R.T @ (self._L.T @ Y), dtype=self.dtype)

    def _matvec(self, x):
        return self._matmat(np.reshape(x, (-1, 1))).reshape(-1)

    def _rmatvec(self, y):
        return self._rmatmat(np.reshape(y, (-1, 1))).reshape(-1)


def _as(X, dtype) -> np.ndarray:
    return np.ascontiguousarray(X, dtype=dtype)


def _factor(x, name: str, ndim: int) -> np.ndarray:
    return as_float_array(x, name=name, ndim=ndim, allow_empty=True)


def _product_factor(x, name: str):
    """Validate an ``(L, R)`` tuple entry: dense array, sparse matrix or LinearOperator."""
    if isinstance(x, LinearOperator):
        return as_operator(x, name=name)
    if sp.issparse(x):
        return as_sparse(x, name=name)
    return _factor(x, name, 2)


def _check_shape(name: str, got, want: tuple, A_shape) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(
            f"{name} has shape {tuple(got)}, expected {tuple(want)} to match A of shape "
            f"{tuple(A_shape)}"
        )


def _check_square(kind: str, formula: str, A_shape) -> None:
    if A_shape[0] != A_shape[1]:
        raise ValueError(
            f"an {kind} approximates a square matrix {formula}, but A has shape {A_shape}"
        )


def _check_axis_id(axis) -> int:
    if axis is None:
        return 1
    if isinstance(axis, bool) or axis not in (0, 1):
        raise ValueError(f"axis={axis!r} must be 1 (column ID) or 0 (row ID)")
    return int(axis)


def _low_rank_factors(src: _Operator, factors, axis):
    """Return ``(L, R, dtype)`` with ``L @ R`` the approximation of ``A`` (not formed)."""
    if isinstance(factors, IDResult):
        return _id_factors(src, factors, _check_axis_id(axis))
    if axis is not None:
        raise ValueError(
            f"axis={axis!r} applies to an IDResult only, got factors of type "
            f"{type(factors).__name__}"
        )
    for kind, split in _FACTOR_FORMS:
        if isinstance(factors, kind):
            return split(src, factors)
    if isinstance(factors, tuple | list) and not hasattr(factors, "_fields"):
        return _pair_factors(src, factors)
    raise TypeError(
        f"factors of type {type(factors).__name__} are not supported; accepted: "
        f"{_ACCEPTED_FACTORS}"
    )


# One function per result type: validate its fields against A, return (L, R, dtype).


def _svd_factors(src: _Operator, factors: SVDResult):
    m, n = src.shape
    U = _factor(factors.U, "factors.U", 2)
    s = _factor(factors.s, "factors.s", 1)
    Vt = _factor(factors.Vt, "factors.Vt", 2)
    r = s.size
    _check_shape("factors.U", U.shape, (m, r), src.shape)
    _check_shape("factors.Vt", Vt.shape, (r, n), src.shape)
    dtype = result_dtype(src.dtype, U.dtype, s.dtype, Vt.dtype)
    return (U * s).astype(dtype, copy=False), Vt.astype(dtype, copy=False), dtype


def _thin_pair(src: _Operator, factors, left: str, right: str, *, transposed: bool):
    """``factors.<left>`` (m, r) and ``factors.<right>`` (r, n), or (n, r) if ``transposed``."""
    m, n = src.shape
    L = _factor(getattr(factors, left), f"factors.{left}", 2)
    R = _factor(getattr(factors, right), f"factors.{right}", 2)
    r = L.shape[1]
    _check_shape(f"factors.{left}", L.shape, (m, r), src.shape)
    _check_shape(f"factors.{right}", R.shape, (n, r) if transposed else (r, n), src.shape)
    dtype = result_dtype(src.dtype, L.dtype, R.dtype)
    R = R.T if transposed else R
    return L.astype(dtype, copy=False), R.astype(dtype, copy=False), dtype


def _qb_factors(src: _Operator, factors: QBResult):
    return _thin_pair(src, factors, "Q", "B", transposed=False)


def _eigh_factors(src: _Operator, factors: EighResult):
    _check_square("EighResult", "V diag(eigenvalues) V^T", src.shape)
    w = _factor(factors.eigenvalues, "factors.eigenvalues", 1)
    V = _factor(factors.eigenvectors, "factors.eigenvectors", 2)
    _check_shape("factors.eigenvectors", V.shape, (src.shape[1], w.size), src.shape)
    dtype = result_dtype(src.dtype, w.dtype, V.dtype)
    V = V.astype(dtype, copy=False)
    return (V * w).astype(dtype, copy=False), V.T, dtype


def _cholesky_factors(src: _Operator, factors: CholeskyResult):
    _check_square("CholeskyResult", "F F^T", src.shape)
    F = _factor(factors.F, "factors.F", 2)
    _check_shape("factors.F", F.shape, (src.shape[1], F.shape[1]), src.shape)
    dtype = result_dtype(src.dtype, F.dtype)
    F = F.astype(dtype, copy=False)
    return F, F.T, dtype


def _id_factors(src: _Operator, factors: IDResult, axis: int):
    m, n = shape = src.shape
    X = _factor(factors.X, "factors.X", 2)
    dtype = result_dtype(src.dtype, X.dtype)
    # Shapes first: a wrong axis usually shows in X before the indices go out of range.
    k = np.size(factors.indices)
    want = (k, n) if axis == 1 else (m, k)
    if X.shape != want:
        other = (m, k) if axis == 1 else (k, n)
        hint = f" (pass axis={1 - axis}: X has the shape of a {'row' if axis else 'column'} ID)"
        raise ValueError(
            f"factors.X has shape {X.shape}, expected {want} for a "
            f"{'column' if axis else 'row'} ID (axis={axis}) of A of shape {shape}"
            + (hint if X.shape == other else "")
        )
    idx = check_indices(factors.indices, shape[axis], name="factors.indices")
    X = X.astype(dtype, copy=False)
    if axis == 1:
        return _as(src.columns(idx), dtype), X, dtype
    return X, _as(src.rows(idx), dtype), dtype


def _cur_factors(src: _Operator, factors: CURResult):
    m, n = src.shape
    U = _factor(factors.U, "factors.U", 2)
    cols = check_indices(factors.cols, n, name="factors.cols")
    rows = check_indices(factors.rows, m, name="factors.rows")
    _check_shape("factors.U", U.shape, (cols.size, rows.size), src.shape)
    dtype = result_dtype(src.dtype, U.dtype)
    # C U is (m, r): one small product instead of two per application.
    CU = _as(src.columns(cols), dtype) @ U.astype(dtype, copy=False)
    return CU, _as(src.rows(rows), dtype), dtype


def _cross_factors(src: _Operator, factors: CrossResult):
    return _thin_pair(src, factors, "U", "V", transposed=True)


def _pair_factors(src: _Operator, factors):
    """Split a plain ``(L, R)`` pair of arrays, sparse matrices or LinearOperators."""
    m, n = shape = src.shape
    if len(factors) != 2:
        raise TypeError(
            f"factors is a {type(factors).__name__} of length {len(factors)}; a plain "
            f"tuple must be (L, R) with A ~ L @ R. Accepted: {_ACCEPTED_FACTORS}"
        )
    L = _product_factor(factors[0], "factors[0] (L)")
    R = _product_factor(factors[1], "factors[1] (R)")
    if L.shape[0] != m or R.shape[1] != n or L.shape[1] != R.shape[0]:
        raise ValueError(
            f"L @ R must have the shape of A {shape} with inner dimensions equal: "
            f"expected L (m, r) = ({m}, r) and R (r, n) = (r, {n}), got L {L.shape} "
            f"and R {R.shape}"
        )
    dtype = result_dtype(src.dtype, L.dtype, R.dtype)
    return L, R, dtype


_FACTOR_FORMS = (
    (SVDResult, _svd_factors),
    (QBResult, _qb_factors),
    (EighResult, _eigh_factors),
    (CholeskyResult, _cholesky_factors),
    (CURResult, _cur_factors),
    (CrossResult, _cross_factors),
)


def _residual_operator(A, factors, axis=None) -> tuple[_ResidualOperator, _Operator]:
    """Return the residual ``A - approximation`` as an operator, and the wrapped ``A``."""
    src = _wrap(A)
    L, R, dtype = _low_rank_factors(src, factors, axis)
    return _ResidualOperator(src.linear_operator(), L, R, dtype), src


def lowrank_error_estimate(
    A,
    factors,
    /,
    *,
    norm="fro",
    relative: bool = False,
    axis: int | None = None,
    n_probes: int = 10,
    n_iter: int | None = None,
    delta: float | None = None,
    rng=None,
) -> NormEstimate:
    r"""Certified a-posteriori error :math:`\|A - \hat A\|` of any low-rank approximation.

    The residual :math:`E = A - \hat A` is wrapped as a
    :class:`~scipy.sparse.linalg.LinearOperator` (:math:`Ex = Ax - L(Rx)`, the
    approximation :math:`\hat A = LR` is never formed) and its norm is estimated by
    :func:`norm_estimate`, with bounds that fail with a stated probability.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator, EntryMatrix or dask array, shape (m, n)
        The matrix that was approximated. Only products with ``A`` and ``A^T`` are used,
        plus, for an :class:`~rnla._results.IDResult` or
        :class:`~rnla._results.CURResult`, the selected columns and rows: indexed for
        dense and sparse input, read with ``cols``/``rows`` for an EntryMatrix
        (:class:`~rnla.operators.KernelMatrix`, ...), and extracted by products with
        unit vectors for a LinearOperator.
    factors : result of a low-rank routine, or tuple (L, R)
        One of (``r`` is the rank):

        - ``SVDResult(U, s, Vt)``: :math:`\hat A = U\operatorname{diag}(s)V^T`;
        - ``QBResult(Q, B, error)``: :math:`\hat A = QB` (``error`` is ignored);
        - ``EighResult(eigenvalues, eigenvectors)``: :math:`\hat A =
          V\operatorname{diag}(\lambda)V^T` (``A`` square);
        - ``CholeskyResult(F, pivots)``: :math:`\hat A = FF^T` (``A`` square);
        - ``IDResult(indices, X)``: :math:`\hat A = A[:, J]X` (``axis=1``) or
          :math:`XA[J, :]` (``axis=0``);
        - ``CURResult(cols, U, rows)``: :math:`\hat A = A[:, J]\,U\,A[I, :]`;
        - ``CrossResult(U, V, rows, cols)``: :math:`\hat A = UV^T`;
        - a plain tuple ``(L, R)`` of dense arrays, sparse matrices or LinearOperators
          of shapes (m, r) and (r, n): :math:`\hat A = LR`.
    norm : {"fro", 2}, default="fro"
        Frobenius or spectral norm.
    relative : bool, default=False
        Estimate :math:`\|A - \hat A\| / \|A\|` instead, with :math:`\|A\|` estimated
        by :func:`norm_estimate` as well (see Notes for the failure probability).
    axis : {1, 0}, optional
        For an ``IDResult`` only: 1 (default) for a column ID, 0 for a row ID. Must be
        ``None`` for the other factor types.
    n_probes : int, default=10
        Gaussian probes per norm estimate (block size for ``norm=2``).
    n_iter : int, optional
        Power iterations for ``norm=2`` (default 4); must be ``None`` for ``"fro"``.
    delta : float, optional
        Probability ``delta`` in (0, 1) that ``lower <= error <= upper`` fails;
        default ``1e-3``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the probes. Use a stream independent of the one that produced
        ``factors`` (a different seed, or the same Generator continued): the guarantee
        is conditional on the factors, and probes equal to the sketch that built them
        would see a residual of nearly zero.

    Returns
    -------
    NormEstimate
        ``value``, ``lower``, ``upper`` of :math:`\|A - \hat A\|` (or of the relative
        error), ``delta`` (the requested failure probability, covering both bounds
        and, with ``relative=True``, both estimates) and ``n_matvecs``: products of
        ``A`` or ``A^T`` with a vector, i.e. those of the residual (one each), plus the
        unit-vector products that extract columns/rows of a LinearOperator, plus those of
        the estimate of :math:`\|A\|` when ``relative=True``.

    Raises
    ------
    TypeError
        ``factors`` of an unsupported type (the message lists the accepted ones), a
        plain tuple that is not a pair, complex or non-numeric arrays, non-integer
        indices, ``relative`` not a bool.
    ValueError
        Factor shapes inconsistent with ``A`` (the message gives the expected shape;
        for an ``IDResult`` it says when ``axis`` looks wrong), indices out of range, an
        ``EighResult``/``CholeskyResult`` for a non-square ``A``, ``axis`` not in
        {0, 1} or given for another factor type, empty or non-finite ``A`` or factors,
        invalid ``norm``/``n_probes``/``n_iter``/``delta``, and
        ``relative=True`` with an estimated :math:`\|A\| = 0`.

    Notes
    -----
    **Guarantee.** Conditional on the factors, the probes are fresh Gaussian vectors, so
    the bounds of :func:`norm_estimate` apply to :math:`E = A - \hat A` verbatim:
    for ``"fro"``, :math:`P(\|E\|_F \notin [\text{lower}, \text{upper}]) \le \delta`
    (chi-square Chernoff bound, worst case rank-one :math:`E`); for ``norm=2``,
    ``lower = value`` :math:`\le \|E\|_2` always and :math:`P(\|E\|_2 >
    \text{upper}) \le \delta` (Kuczyński-Woźniakowski-type Beta tail for subspace
    iteration). This is the a-posteriori error estimation of Halko, Martinsson and Tropp
    [1]_, §4.3 (Lemma 4.1 there gives the cruder probe-only bound), with sharper tails.

    **Relative error** (union bound). :math:`\|E\|` and :math:`\|A\|` are estimated
    from independent probes, each with failure probability :math:`\delta/2`; then
    :math:`\text{lower}_E/\text{upper}_A \le \|E\|/\|A\| \le
    \text{upper}_E/\text{lower}_A` unless one of the two estimates fails, which has
    probability at most :math:`\delta/2 + \delta/2 = \delta`. (For ``norm=2`` the lower
    bounds are deterministic, so each side of the interval fails with probability at
    most :math:`\delta/2`.)

    **Cost.** Each product with :math:`E` costs one product with ``A`` (or ``A^T``)
    plus :math:`2(m + n)r` flops per vector for :math:`L(Rx)`; ``"fro"`` needs
    ``n_probes`` of them, ``norm=2`` ``n_probes (2 n_iter + 1)``; twice that with
    ``relative=True``. Extra memory :math:`O((m + n)r)`: a scaled copy of ``U`` (SVD)
    or of the eigenvectors, the selected columns and rows (ID, CUR: ``A[:, J] U`` is
    precomputed, (m, r)).

    **Rounding.** Products are computed in the common dtype of ``A`` and the factors
    (float32 only if all are float32). The residual is a difference, so errors below
    about :math:`\sqrt{n}\,\epsilon\,(\|A\| + \|L\|\|R\|)` (:math:`\epsilon` the unit
    roundoff: :math:`\approx 6\cdot 10^{-8}` in float32) are rounding noise, not
    certified: certify small errors of float32 factorisations against a float64 ``A``.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
       randomness: Probabilistic algorithms for constructing approximate matrix
       decompositions", SIAM Rev. 53 (2011), §4.3. https://arxiv.org/abs/0909.4061
    .. [2] J. Kuczyński and H. Woźniakowski, "Estimating the largest eigenvalue by the
       power and Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl.
       13 (1992).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.estimate import lowrank_error_estimate
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((40, 30))
    >>> U, s, Vt = np.linalg.svd(A, full_matrices=False)
    >>> L, R = U[:, :5] * s[:5], Vt[:5]
    >>> est = lowrank_error_estimate(A, (L, R), rng=1)
    >>> bool(est.lower <= np.linalg.norm(A - L @ R) <= est.upper)
    True
    >>> est.delta, est.n_matvecs
    (0.001, 10)
    """
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {relative!r}")
    delta = _check_delta(delta)
    E, src = _residual_operator(A, factors, axis)
    rng = check_rng(rng)
    options = {"n_probes": n_probes, "n_iter": n_iter, "rng": rng}
    if not relative:
        est = norm_estimate(E, norm, delta=delta, **options)
        return est._replace(n_matvecs=est.n_matvecs + src.n_unit_products)

    est_E = norm_estimate(E, norm, delta=delta / 2, **options)
    est_A = norm_estimate(src.linear_operator(), norm, delta=delta / 2, **options)
    if est_A.value == 0.0:
        raise ValueError(
            "relative=True: the norm estimate of A is 0 (A is the zero matrix with "
            "probability 1), so the relative error is undefined"
        )
    upper = est_E.upper / est_A.lower if est_A.lower > 0.0 else math.inf
    lower = est_E.lower / est_A.upper if math.isfinite(est_A.upper) else 0.0
    return NormEstimate(
        est_E.value / est_A.value,
        lower,
        upper,
        delta,
        est_E.n_matvecs + est_A.n_matvecs + src.n_unit_products,
    )
