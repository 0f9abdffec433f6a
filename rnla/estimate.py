"""A-posteriori estimators with a stated failure probability.

:func:`norm_estimate` estimates the spectral or Frobenius norm of any operator from
products with random Gaussian probes and returns two-sided bounds together with the
probability that they fail; :func:`effective_distortion` measures how far a sketched
orthonormal basis ``S U`` is from having orthonormal columns, up to scale.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from scipy.optimize import brentq
from scipy.special import betainc, lambertw

from rnla._validation import as_float_array, as_operator, check_int, check_rng

__all__ = ["NormEstimate", "effective_distortion", "norm_estimate"]

_DEFAULT_FAILURE_PROBABILITY = 1e-3
_DEFAULT_N_ITER = 4


class NormEstimate(NamedTuple):
    """A norm estimate with probabilistic bounds.

    Attributes
    ----------
    value : float
        Point estimate of the norm.
    upper : float
        Upper bound on the norm, valid except with the stated probability.
    lower : float
        Lower bound on the norm (deterministic for the spectral norm).
    failure_probability : float
        Probability, over the random probes, that ``lower <= norm <= upper`` fails.
    n_matvecs : int
        Number of products of ``A`` or ``A^T`` with a vector (a block of ``b``
        columns counts ``b``).
    """

    value: float
    upper: float
    lower: float
    failure_probability: float
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


def _check_failure_probability(value) -> float:
    if value is None:
        return _DEFAULT_FAILURE_PROBABILITY
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"failure_probability must be a real number, got {value!r}")
    value = float(value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"failure_probability={value} must lie in the open interval (0, 1)")
    return value


def _orth(X: np.ndarray) -> np.ndarray:
    # Householder QR: the span of Q contains the span of X even when X is rank deficient,
    # which is all the bound needs.
    return sla.qr(X, mode="economic", overwrite_a=True, check_finite=False)[0]


def norm_estimate(
    A,
    ord=2,
    *,
    n_probes: int = 10,
    n_iter: int | None = None,
    failure_probability: float | None = None,
    rng=None,
) -> NormEstimate:
    r"""Estimate ``||A||_2`` or ``||A||_F`` with bounds that hold with stated probability.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix or LinearOperator of shape (m, n)
        Operator; only products with ``A`` and ``A^T`` are used.
    ord : {2, "fro"}, default=2
        Spectral or Frobenius norm.
    n_probes : int, default=10
        Number ``b`` of Gaussian probe vectors (the block size for ``ord=2``).
    n_iter : int, optional
        Power (subspace) iterations on :math:`A^\top A` for ``ord=2``; default 4.
        Must be ``None`` for ``"fro"``.
    failure_probability : float, optional
        Probability ``delta`` in (0, 1) that the bounds may fail; default ``1e-3``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the probes.

    Returns
    -------
    NormEstimate
        ``value``, ``upper``, ``lower`` (Python floats), ``failure_probability`` and
        ``n_matvecs``: ``b (2 q + 1)`` for ``ord=2`` with ``q = n_iter`` (fewer if
        ``b > min(m, n)``), ``b`` for ``"fro"``.

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-integer ``n_probes``/``n_iter``.
    ValueError
        Empty or non-finite ``A``; unknown ``ord``; ``n_probes < 1``; ``n_iter < 0``
        or ``n_iter`` given with ``"fro"``; ``failure_probability`` outside (0, 1).

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
    ``D x b`` block for ``ord=2``; ``b`` products for ``"fro"``.

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
    op = as_operator(A)
    if isinstance(ord, str):
        if ord != "fro":
            raise ValueError(f"ord={ord!r} is not one of 2, 'fro'")
        spectral = False
    elif isinstance(ord, numbers.Integral) and not isinstance(ord, bool) and ord == 2:
        spectral = True
    else:
        raise ValueError(f"ord={ord!r} is not one of 2, 'fro'")
    b = check_int(n_probes, "n_probes", minimum=1)
    delta = _check_failure_probability(failure_probability)
    if spectral:
        q = _DEFAULT_N_ITER if n_iter is None else check_int(n_iter, "n_iter", minimum=0)
    elif n_iter is not None:
        raise ValueError(f"n_iter={n_iter!r} applies to ord=2 only; pass None for ord='fro'")
    rng = check_rng(rng)
    dtype = np.float32 if np.dtype(op.dtype) == np.float32 else np.float64
    m, n = op.shape

    if not spectral:
        W = rng.standard_normal((n, b)).astype(dtype, copy=False)
        Y = np.asarray(op.matmat(W), dtype=np.float64)
        value = math.sqrt(float(np.sum(Y * Y)) / b)
        t_lo, t_hi = _chi2_chernoff_roots(2.0 * math.log(2.0 / delta) / b)
        return NormEstimate(value, value / math.sqrt(t_lo), value / math.sqrt(t_hi), delta, b)

    # Work on the side of smaller dimension: the bound depends on D = min(m, n).
    if n <= m:
        dim, fwd, adj = n, op.matmat, op.rmatmat
    else:
        dim, fwd, adj = m, op.rmatmat, op.matmat
    X = _orth(rng.standard_normal((dim, b)).astype(dtype, copy=False))
    cols = X.shape[1]
    for _ in range(q):
        X = _orth(np.asarray(adj(np.asarray(fwd(X), dtype=dtype)), dtype=dtype))
    Y = np.asarray(fwd(X), dtype=dtype)
    value = float(sla.svdvals(Y.astype(np.float64), check_finite=False)[0])
    eps = _power_eps(delta, q, dim, cols) if cols < dim else 0.0
    upper = math.inf if eps >= 1.0 else value / math.sqrt(1.0 - eps)
    return NormEstimate(value, upper, value, delta, cols * (2 * q + 1))


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
