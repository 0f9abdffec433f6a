r"""Closed-form a-priori bounds: sketch sizes and exact variances.

Every function implements one theorem (or one short derivation given in its Notes),
states its assumptions, and raises :class:`ValueError` outside them instead of
returning a number the theorem does not support.

Sketch-size functions return a :class:`SketchSize`. Its ``distortion`` field is
always the *subspace-embedding* distortion

.. math::

    \varepsilon \ge \|U^\top S^\top S U - I_d\|_2
    \iff \sigma_i(SU)^2 \in [1 - \varepsilon, 1 + \varepsilon] \text{ for all } i,

for every fixed ``n x d`` matrix ``U`` with orthonormal columns (for
:func:`jl_dimension` it is the same two-sided bound on the squared lengths of the
pairwise differences of the point set). The scale-free counterpart measured by
:func:`rnla.estimate.effective_distortion` is bounded by
:func:`distortion_to_effective`.

``kind`` is ``"proven"`` when every constant is explicit and the stated failure
probability is a theorem, ``"heuristic"`` for practitioner rules without a guarantee
(their ``distortion`` and ``delta`` are NaN).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from rnla._validation import as_float_array, as_sparse, check_int, check_option, check_real

__all__ = [
    "CURBound",
    "SinglePassBound",
    "SketchSize",
    "cg_error_bound",
    "countsketch_embedding_size",
    "countsketch_inner_product_variance",
    "cur_bound",
    "datafit_error_bound",
    "distortion_to_effective",
    "effective_dimension",
    "gaussian_embedding_size",
    "hmt_frobenius_bound",
    "hmt_power_bound",
    "hmt_spectral_bound",
    "hmt_structural_bound",
    "hutchinson_variance",
    "id_bound",
    "iteration_bound",
    "jl_dimension",
    "lanczos_quadrature_bound",
    "nystrom_expected_trace_bound",
    "nystrom_pcg_condition_bound",
    "nystrom_pcg_rank",
    "nystrom_structural_bound",
    "orthogonal_gaussian_embedding_size",
    "preconditioned_condition_bound",
    "rademacher_embedding_size",
    "randomized_tt_bound",
    "randomized_tucker_bound",
    "rpcholesky_rank_bound",
    "rrqr_growth",
    "single_pass_bound",
    "sparse_sign_embedding_size",
    "sparse_sign_practical_size",
    "srht_embedding_size",
    "strong_rrqr_bound",
    "tensor_sketch_inner_product_variance",
    "tensor_sketch_variance_bound",
    "tt_svd_bound",
    "tt_unfolding_tails",
    "tucker_unfolding_tails",
]


class SketchSize(NamedTuple):
    r"""A sketch size with the guarantee that comes with it.

    Attributes
    ----------
    sketch_size : int
        Number of rows of the sketch.
    distortion : float
        Guaranteed bound ``eps`` on :math:`\|U^\top S^\top S U - I\|_2` (NaN for a
        heuristic).
    delta : float
        Probability, over the draw of ``S``, that the bound fails (NaN for a heuristic).
    kind : {"proven", "heuristic"}
        Whether the guarantee is a theorem with explicit constants.
    reference : str
        Source of the bound (paper and theorem number).
    """

    sketch_size: int
    distortion: float
    delta: float
    kind: str
    reference: str


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _representable_size(func):
    """Turn float overflow in a sketch-size formula into a ValueError that says why.

    The formulas divide by ``eps**2`` and take ``log(1/delta)``; for ``eps`` or ``delta``
    near the bottom of the float range the required size is not representable (it is
    beyond any array that could be allocated), which is reported rather than leaking
    ``ZeroDivisionError``/``OverflowError`` from the arithmetic.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with np.errstate(all="ignore"):
                return func(*args, **kwargs)
        except (ZeroDivisionError, OverflowError) as exc:
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ValueError(
                f"{func.__name__}: the required sketch size is not representable in floating "
                f"point for {given} (eps or delta too small)"
            ) from exc

    return wrapper


def _check_open_unit(value, name: str) -> float:
    """Return ``value`` as a float strictly inside (0, 1), or raise with the range."""
    return check_real(value, name, lower=0, upper=1)


def _check_dims(d, n=None) -> tuple[int, int | None]:
    d = check_int(d, "d", minimum=1)
    if n is not None:
        n = check_int(n, "n", minimum=1)
        if d > n:
            raise ValueError(f"d={d} must satisfy d <= n={n} (a d-dimensional subspace of R^n)")
    return d, n


def _jl_exponent(eps: float) -> float:
    """``eps^2/2 - eps^3/3``: the per-tail Chernoff exponent of JL (times ``2/k``)."""
    return eps * eps / 2.0 - eps**3 / 3.0


def _vector_pair(x, y):
    # Validate under the dtype contract first (rejects complex), then compute in float64.
    x = as_float_array(x, name="x", ndim=1).astype(np.float64, copy=False)
    y = as_float_array(y, name="y", ndim=1).astype(np.float64, copy=False)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _moments(x, y):
    """``c = <x, y>``, ``D = sum x_i^2 y_i^2`` and ``N = |x|^2 |y|^2``."""
    c = float(x @ y)
    D = float(np.sum((x * y) ** 2))
    N = float(x @ x) * float(y @ y)
    return c, D, N


# ----------------------------------------------------------------------------------------
# distortion conversion
# ----------------------------------------------------------------------------------------


def distortion_to_effective(eps) -> float:
    r"""Effective distortion implied by a subspace-embedding distortion ``eps``.

    Parameters
    ----------
    eps : float
        Bound on :math:`\|U^\top S^\top S U - I\|_2`, ``eps >= 0``.

    Returns
    -------
    float
        :math:`(1 - \sqrt{1 - \varepsilon^2})/\varepsilon` for ``0 < eps < 1`` (0 at
        ``eps = 0``, 1 for ``eps >= 1``), a value in ``[0, 1]``.

    Raises
    ------
    TypeError
        If ``eps`` is not a real number.
    ValueError
        If ``eps`` is negative or not finite.

    Notes
    -----
    If every :math:`\sigma_i(SU)^2 \in [1-\varepsilon, 1+\varepsilon]` then
    :math:`\kappa(SU) \le \sqrt{(1+\varepsilon)/(1-\varepsilon)}` and the effective
    distortion :math:`(\kappa - 1)/(\kappa + 1)` of
    :func:`rnla.estimate.effective_distortion` is at most

    .. math::

        \frac{\sqrt{1+\varepsilon} - \sqrt{1-\varepsilon}}
        {\sqrt{1+\varepsilon} + \sqrt{1-\varepsilon}}
        = \frac{1 - \sqrt{1 - \varepsilon^2}}{\varepsilon}
        = \frac{\varepsilon}{1 + \sqrt{1 - \varepsilon^2}}
        \approx \frac{\varepsilon}{2}.

    The last form is evaluated (no cancellation for small ``eps``). For
    ``eps >= 1`` the lower singular value bound is void and the trivial bound 1 is
    returned.

    Examples
    --------
    >>> from rnla.bounds import distortion_to_effective
    >>> 0.0 < distortion_to_effective(0.5) < 0.5
    True
    """
    eps = check_real(eps, "eps", lower=0, open_left=False)
    if eps >= 1.0:
        return 1.0
    return eps / (1.0 + math.sqrt(1.0 - eps * eps))


# ----------------------------------------------------------------------------------------
# dense sketches
# ----------------------------------------------------------------------------------------


@_representable_size
def jl_dimension(n_points, /, *, eps=0.1, delta=None) -> SketchSize:
    r"""Johnson–Lindenstrauss target dimension for ``n_points`` points.

    Parameters
    ----------
    n_points : int
        Number of points ``N >= 2``.
    eps : float, default=0.1
        Allowed relative distortion of squared pairwise distances, in (0, 1).
    delta : float, optional
        Failure probability in (0, 1). ``None`` gives the Dasgupta–Gupta dimension
        (the one of :func:`sklearn.random_projection.johnson_lindenstrauss_min_dim`,
        rounded up instead of down), whose failure probability is only
        ``1 - 1/N``.

    Returns
    -------
    SketchSize
        ``k`` such that a Gaussian (``N(0, 1/k)`` entries) or Rademacher
        (``±1/sqrt(k)``) sketch satisfies, for all pairs ``u, v`` of the points,
        :math:`(1-\varepsilon)\|u-v\|^2 \le \|S(u-v)\|^2 \le
        (1+\varepsilon)\|u-v\|^2` except with probability ``delta``.

    Raises
    ------
    TypeError
        If ``n_points`` is not an integer.
    ValueError
        If ``n_points < 2`` or ``eps``/``delta`` lie outside (0, 1).

    Notes
    -----
    For a fixed unit vector both tails of :math:`\|Sx\|^2` are at most
    :math:`\exp(-\tfrac{k}{2}(\varepsilon^2/2 - \varepsilon^3/3))`: for Gaussian
    entries by the chi-square Chernoff bound (Dasgupta–Gupta 2003, Lemma 2.2), for
    Rademacher entries by Achlioptas (2003, proof of Theorem 1.1). A union bound over
    the :math:`N(N-1)/2` pairs gives failure at most
    :math:`N^2 \exp(-\tfrac{k}{2}(\varepsilon^2/2 - \varepsilon^3/3))`, so

    * ``delta=None``: :math:`k = \lceil 4\ln N/(\varepsilon^2/2-\varepsilon^3/3)
      \rceil` (Dasgupta–Gupta 2003, Theorem 1.1) fails with probability at most
      :math:`1 - 1/N` (the theorem is an existence statement);
    * ``delta`` given: :math:`k = \lceil (4\ln N + 2\ln(1/\delta))/
      (\varepsilon^2/2-\varepsilon^3/3)\rceil` (Achlioptas 2003, Theorem 1.1 with
      :math:`N^{-\beta} = \delta`).

    References
    ----------
    .. [1] S. Dasgupta and A. Gupta, "An elementary proof of a theorem of Johnson and
       Lindenstrauss", Random Struct. Algorithms 22 (2003), Thm 1.1, Lemma 2.2.
    .. [2] D. Achlioptas, "Database-friendly random projections:
       Johnson-Lindenstrauss with binary coins", J. Comput. Syst. Sci. 66 (2003),
       Thm 1.1.

    Examples
    --------
    >>> from rnla.bounds import jl_dimension
    >>> jl_dimension(10**6, eps=0.5).sketch_size
    664
    """
    n_points = check_int(n_points, "n_points", minimum=2)
    eps = _check_open_unit(eps, "eps")
    denom = _jl_exponent(eps)
    if delta is None:
        k = math.ceil(4.0 * math.log(n_points) / denom)
        fail = 1.0 - 1.0 / n_points
        ref = "Dasgupta & Gupta (2003), Theorem 1.1"
    else:
        delta = _check_open_unit(delta, "delta")
        k = math.ceil((4.0 * math.log(n_points) + 2.0 * math.log(1.0 / delta)) / denom)
        fail = delta
        ref = "Achlioptas (2003), Theorem 1.1; Dasgupta & Gupta (2003), Lemma 2.2"
    return SketchSize(int(k), eps, fail, "proven", ref)


@_representable_size
def gaussian_embedding_size(d, /, *, eps, delta) -> SketchSize:
    r"""Gaussian sketch size for an ``eps``-subspace embedding of dimension ``d``.

    Parameters
    ----------
    d : int
        Subspace dimension, ``d >= 1``.
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).

    Returns
    -------
    SketchSize
        ``k`` for ``S = G/sqrt(k)`` with i.i.d. standard normal ``G`` (k x n).

    Raises
    ------
    TypeError
        If ``d`` is not an integer.
    ValueError
        If ``d < 1`` or ``eps``/``delta`` lie outside (0, 1).

    Notes
    -----
    ``GU`` is a ``k x d`` standard Gaussian matrix, so by Davidson–Szarek (Vershynin
    2012, Corollary 5.35), with probability at least :math:`1 - 2e^{-t^2/2}`,
    :math:`\sqrt k - \sqrt d - t \le \sigma_i(GU) \le \sqrt k + \sqrt d + t`.
    With :math:`a = (\sqrt d + t)/\sqrt k` this is
    :math:`\sigma_i(SU) \in [1-a, 1+a]`, and :math:`\sigma_i(SU)^2 \in
    [1-\varepsilon, 1+\varepsilon]` as soon as :math:`a \le \sqrt{1+\varepsilon}-1`
    (the upper side binds since :math:`\sqrt{1+\varepsilon}-1 \le
    1-\sqrt{1-\varepsilon}`). Hence
    :math:`t = \sqrt{2\ln(2/\delta)}` and
    :math:`k = \lceil(\sqrt d + t)^2/(\sqrt{1+\varepsilon}-1)^2\rceil`.
    The effective distortion is then at most ``a`` itself.

    References
    ----------
    .. [1] R. Vershynin, "Introduction to the non-asymptotic analysis of random
       matrices", in Compressed Sensing, CUP 2012, Corollary 5.35.
    .. [2] K. R. Davidson and S. J. Szarek, "Local operator theory, random matrices
       and Banach spaces", Handbook of the Geometry of Banach Spaces (2001), Thm 2.13.

    Examples
    --------
    >>> from rnla.bounds import gaussian_embedding_size
    >>> gaussian_embedding_size(10, eps=0.5, delta=0.01).kind
    'proven'
    """
    d, _ = _check_dims(d)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    t = math.sqrt(2.0 * math.log(2.0 / delta))
    a = math.sqrt(1.0 + eps) - 1.0
    k = math.ceil(((math.sqrt(d) + t) / a) ** 2)
    return SketchSize(int(k), eps, delta, "proven", "Vershynin (2012), Corollary 5.35")


@_representable_size
def rademacher_embedding_size(d, /, *, eps, delta) -> SketchSize:
    r"""Rademacher sketch size for an ``eps``-subspace embedding (net argument).

    Parameters
    ----------
    d : int
        Subspace dimension, ``d >= 1``.
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).

    Returns
    -------
    SketchSize
        ``k`` for ``S`` with i.i.d. ``±1/sqrt(k)`` entries. Pessimistic (the net
        argument loses a constant factor), but every constant is explicit.

    Raises
    ------
    TypeError
        If ``d`` is not an integer.
    ValueError
        If ``d < 1`` or ``eps``/``delta`` lie outside (0, 1).

    Notes
    -----
    *Per vector.* For a unit ``x`` both tails of :math:`\|Sx\|^2 - 1` beyond
    :math:`\varepsilon'` are at most :math:`\exp(-\tfrac k2 h(\varepsilon'))`,
    :math:`h(e) = e^2/2 - e^3/3` (Achlioptas 2003, proof of Thm 1.1: the upper tail by
    domination of the even moments of a Rademacher sum by the Gaussian ones, the lower
    tail from :math:`e^{-s} \le 1 - s + s^2/2` and
    :math:`\mathbb E(\sum_i r_i x_i)^4 \le 3`).

    *Net.* Let :math:`B = U^\top S^\top S U - I` and :math:`\mathcal N` a
    :math:`\gamma`-net of the unit sphere of :math:`\mathbb R^d`,
    :math:`|\mathcal N| \le (1+2/\gamma)^d` (Vershynin 2012, Lemma 5.2). Then
    :math:`\|B\| \le (1-2\gamma)^{-1}\max_{x\in\mathcal N}|x^\top B x|`
    (Lemma 5.4), and :math:`x^\top B x = \|SUx\|^2 - 1`. Taking
    :math:`\varepsilon' = (1-2\gamma)\varepsilon` and a union bound,

    .. math::

        k \ge \frac{2\,[\,d\ln(1 + 2/\gamma) + \ln(2/\delta)\,]}
        {h((1-2\gamma)\varepsilon)}

    suffices; ``k`` is minimised over a fixed grid of :math:`\gamma \in (0, 1/2)`
    (the choice depends on ``d, eps, delta`` only, so the bound holds).

    References
    ----------
    .. [1] D. Achlioptas, "Database-friendly random projections", J. Comput. Syst.
       Sci. 66 (2003), Thm 1.1.
    .. [2] R. Vershynin, "Introduction to the non-asymptotic analysis of random
       matrices", CUP 2012, Lemmas 5.2 and 5.4.

    Examples
    --------
    >>> from rnla.bounds import rademacher_embedding_size
    >>> rademacher_embedding_size(4, eps=0.5, delta=0.1).sketch_size > 4
    True
    """
    d, _ = _check_dims(d)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    gammas = np.linspace(0.005, 0.495, 99)
    eps_net = (1.0 - 2.0 * gammas) * eps
    h = eps_net**2 / 2.0 - eps_net**3 / 3.0
    ks = 2.0 * (d * np.log1p(2.0 / gammas) + math.log(2.0 / delta)) / h
    k = math.ceil(float(ks.min()))
    return SketchSize(
        int(k),
        eps,
        delta,
        "proven",
        "Achlioptas (2003), Theorem 1.1 + Vershynin (2012), Lemmas 5.2 and 5.4",
    )


@_representable_size
def orthogonal_gaussian_embedding_size(d, n, /, *, eps, delta) -> SketchSize:
    r"""Orthogonal Gaussian sketch size (one orthogonal block, ``k <= n``).

    Parameters
    ----------
    d : int
        Subspace dimension, ``1 <= d <= n``.
    n : int
        Ambient dimension (columns of the sketch).
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).

    Returns
    -------
    SketchSize
        ``k <= n`` for :func:`rnla.sketch.orthogonal_gaussian`, i.e.
        :math:`S = D_\chi Q^\top/\sqrt k` with ``Q`` (n x k) Haar-orthonormal and
        ``D_chi`` independent chi(n) row norms.

    Raises
    ------
    TypeError
        If ``d`` or ``n`` is not an integer.
    ValueError
        If ``d > n``, ``eps``/``delta`` lie outside (0, 1), or the required ``k``
        exceeds ``n`` (then no single orthogonal block is covered by this bound: use
        :func:`gaussian_embedding_size`).

    Notes
    -----
    Derivation (all constants explicit). *Rotation.* For fixed ``U`` and Haar ``Q``,
    :math:`Q^\top U` has the law of the first ``k`` rows of a Haar ``n x d``
    orthonormal matrix :math:`Z(Z^\top Z)^{-1/2}`, ``Z`` an ``n x d`` standard
    Gaussian with first ``k`` rows ``X``. Hence the squared singular values of
    :math:`\sqrt{n/k}\,Q^\top U` are those of
    :math:`(n/k)(Z^\top Z)^{-1/2}X^\top X(Z^\top Z)^{-1/2}` and lie in
    :math:`[\tfrac nk\sigma_{\min}(X)^2/\sigma_{\max}(Z)^2,
    \tfrac nk\sigma_{\max}(X)^2/\sigma_{\min}(Z)^2]`.
    *Gaussian extremes.* Four one-sided Davidson–Szarek events (Vershynin 2012,
    Corollary 5.35, each of probability at most :math:`e^{-t^2/2}`) give
    :math:`\sigma(\sqrt{n/k}Q^\top U) \in [(1-a)/(1+b), (1+a)/(1-b)]` with
    :math:`a = (\sqrt d+t)/\sqrt k`, :math:`b = (\sqrt d+t)/\sqrt n`.
    *Row norms.* :math:`SU = n^{-1/2} D_\chi \cdot \sqrt{n/k}Q^\top U`, and by the
    Laurent–Massart inequalities (2000, Lemma 1) for each of the ``k <= n``
    :math:`\chi^2_n` variables, except with probability :math:`2ne^{-x}`,
    :math:`D_\chi^2/n \in [c_-, c_+] = [1-2\sqrt{x/n}, 1+2\sqrt{x/n}+2x/n]`.
    With :math:`4e^{-t^2/2} = 2ne^{-x} = \delta/2` the embedding holds when
    :math:`c_+((1+a)/(1-b))^2 \le 1+\varepsilon` and
    :math:`c_-((1-a)/(1+b))^2 \ge 1-\varepsilon`, i.e. for the smallest ``k`` with
    ``a`` below the resulting threshold. The bound is slightly worse than
    :func:`gaussian_embedding_size` (the row norms are bounded by their extremes),
    although orthogonal sketches are better in practice.

    References
    ----------
    .. [1] R. Vershynin, "Introduction to the non-asymptotic analysis of random
       matrices", CUP 2012, Corollary 5.35.
    .. [2] B. Laurent and P. Massart, "Adaptive estimation of a quadratic functional
       by model selection", Ann. Statist. 28 (2000), Lemma 1.
    .. [3] F. X. Yu et al., "Orthogonal random features", NeurIPS 2016.

    Examples
    --------
    >>> from rnla.bounds import orthogonal_gaussian_embedding_size
    >>> orthogonal_gaussian_embedding_size(2, 4096, eps=0.7, delta=0.5).sketch_size <= 4096
    True
    """
    d, n = _check_dims(d, n)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    t = math.sqrt(2.0 * math.log(8.0 / delta))
    x = math.log(4.0 * n / delta)
    c_lo = 1.0 - 2.0 * math.sqrt(x / n)
    c_hi = 1.0 + 2.0 * math.sqrt(x / n) + 2.0 * x / n
    b = (math.sqrt(d) + t) / math.sqrt(n)
    a_max = -1.0
    if c_lo > 0.0 and b < 1.0:
        a_max = min(
            (1.0 - b) * math.sqrt((1.0 + eps) / c_hi) - 1.0,
            1.0 - (1.0 + b) * math.sqrt((1.0 - eps) / c_lo),
        )
    if a_max <= 0.0:
        raise ValueError(
            f"n={n} is too small for an orthogonal Gaussian embedding with eps={eps}, "
            f"delta={delta}, d={d}: the row-norm and Gaussian deviations alone exceed eps; "
            "increase eps or delta, or use gaussian_embedding_size"
        )
    k = math.ceil(((math.sqrt(d) + t) / a_max) ** 2)
    if k > n:
        raise ValueError(
            f"the proven size k={k} exceeds n={n} (one orthogonal block holds at most n rows); "
            "increase eps or delta, or use gaussian_embedding_size"
        )
    return SketchSize(
        int(k),
        eps,
        delta,
        "proven",
        "derived from Vershynin (2012), Corollary 5.35 and Laurent & Massart (2000), Lemma 1",
    )


# ----------------------------------------------------------------------------------------
# SRHT
# ----------------------------------------------------------------------------------------


def _srht_rows_needed(d: int, N: int, eps: float, delta: float, theta: float) -> int:
    """Smallest ``l`` of the SRHT bound for the split ``theta`` of ``delta``."""
    d1, d2 = float(theta * delta), float((1.0 - theta) * delta)
    if d1 == 0.0 or d2 == 0.0:
        raise ZeroDivisionError("delta split underflows")
    M = min(float(N), (math.sqrt(d) + math.sqrt(8.0 * math.log(N / d1))) ** 2)
    # exponents of Tropp's matrix Chernoff factors: f_-^{l/M} = exp(-l h_lo / M), etc.
    h_lo = eps + (1.0 - eps) * math.log1p(-eps)
    h_hi = (1.0 + eps) * math.log1p(eps) - eps

    def fails(rows):
        return d * (math.exp(-rows * h_lo / M) + math.exp(-rows * h_hi / M)) > d2

    hi = math.ceil(M * math.log(2.0 * d / d2) / h_hi)  # 2 d f_+^{l/M} <= d2 suffices
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


@_representable_size
def srht_embedding_size(d, n, /, *, eps, delta) -> SketchSize:
    r"""SRHT sketch size for an ``eps``-subspace embedding, explicit constants.

    Parameters
    ----------
    d : int
        Subspace dimension, ``1 <= d <= n``.
    n : int
        Ambient dimension; the transform works in :math:`N = 2^{\lceil\log_2 n\rceil}`.
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).

    Returns
    -------
    SketchSize
        ``k <= n`` for :func:`rnla.sketch.srht`
        (:math:`S = \sqrt{N/k}\,R\,(H/\sqrt N)\,D`, rows sampled without
        replacement).

    Raises
    ------
    TypeError
        If ``d`` or ``n`` is not an integer.
    ValueError
        If ``d > n``, ``eps``/``delta`` lie outside (0, 1), or the required ``k``
        exceeds ``n``.

    Notes
    -----
    Tropp's two-step proof of his Theorem 3.1, with the probabilities kept explicit
    instead of the ``1 - O(1/d)`` of the theorem:

    1. *Row norms* (Tropp 2011, Lemma 3.3, from Ledoux's concentration inequality for
       convex Lipschitz functions of Rademacher vectors, constant 8): every row of
       :math:`(H/\sqrt N) D U` has squared norm at most :math:`M/N` with
       :math:`M = (\sqrt d + \sqrt{8\ln(N/\delta_1)})^2`, except with probability
       :math:`\delta_1`.
    2. *Sampling* (Tropp 2011, Theorem 2.2, matrix Chernoff without replacement,
       applied to the population :math:`N w_j w_j^\top` whose mean is :math:`I_d`):
       :math:`P(\lambda_{\min}((SU)^\top SU) \le 1-\varepsilon) \le d\,
       [e^{-\varepsilon}(1-\varepsilon)^{-(1-\varepsilon)}]^{k/M}` and
       :math:`P(\lambda_{\max} \ge 1+\varepsilon) \le d\,
       [e^{\varepsilon}(1+\varepsilon)^{-(1+\varepsilon)}]^{k/M}`.

    ``k`` is the smallest integer with the sum of the two tails at most
    :math:`\delta_2`, minimised over a fixed grid of splits
    :math:`\delta_1 + \delta_2 = \delta`. The ``8 ln(N/delta)`` term dominates for
    small ``d``: the bound is honest but pessimistic (Tropp's own Theorem 3.1 gives only
    the constant distortion :math:`\sigma \in [0.40, 1.48]` with probability
    ``1 - O(1/d)``; Boutsidis–Gittens 2013, Lemma 4.1 is of the same form).

    References
    ----------
    .. [1] J. A. Tropp, "Improved analysis of the subsampled randomized Hadamard
       transform", Adv. Adapt. Data Anal. 3 (2011), Thm 2.2, Lemma 3.3, Thm 3.1.
    .. [2] C. Boutsidis and A. Gittens, "Improved matrix algorithms via the subsampled
       randomized Hadamard transform", SIAM J. Matrix Anal. Appl. 34 (2013).

    Examples
    --------
    >>> from rnla.bounds import srht_embedding_size
    >>> srht_embedding_size(4, 2**14, eps=0.8, delta=0.2).sketch_size <= 2**14
    True
    """
    d, n = _check_dims(d, n)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    N = 1 << max(0, (n - 1).bit_length())
    k = min(_srht_rows_needed(d, N, eps, delta, th) for th in np.linspace(0.02, 0.98, 49))
    if k > n:
        raise ValueError(
            f"the proven SRHT size k={k} exceeds n={n}; increase eps or delta "
            "(the sqrt(8 ln(N/delta)) row-norm term dominates for small n)"
        )
    return SketchSize(
        int(k),
        eps,
        delta,
        "proven",
        "Tropp (2011), Theorem 2.2 + Lemma 3.3 (proof of Theorem 3.1)",
    )


# ----------------------------------------------------------------------------------------
# hash sketches
# ----------------------------------------------------------------------------------------


@_representable_size
def countsketch_embedding_size(d, /, *, eps, delta) -> SketchSize:
    r"""CountSketch size for an ``eps``-subspace embedding (second-moment bound).

    Parameters
    ----------
    d : int
        Subspace dimension, ``d >= 1``.
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).

    Returns
    -------
    SketchSize
        :math:`k = \lceil (d^2 + d)/(\varepsilon^2\delta) \rceil`.

    Raises
    ------
    TypeError
        If ``d`` is not an integer.
    ValueError
        If ``d < 1`` or ``eps``/``delta`` lie outside (0, 1).

    Notes
    -----
    For an orthonormal ``U`` with rows :math:`u_j^\top` and
    :math:`E = U^\top S^\top S U - I = \sum_{j \ne l} X_{jl}\, u_j u_l^\top`,
    where :math:`X_{jl} = (S^\top S)_{jl}` (the diagonal of :math:`S^\top S` is exactly
    1), the only nonzero cross moments are
    :math:`\mathbb E X_{jl}^2 = \mathbb E X_{jl}X_{lj} = 1/k`:

    * CountSketch: :math:`X_{jl} = s_j s_l [h_j = h_l]`;
    * sparse sign with ``z`` distinct rows :math:`R_j` per column and values
      :math:`\pm 1/\sqrt z`: :math:`X_{jl} = z^{-1}\sum_{r \in R_j\cap R_l}
      s_{rj}s_{rl}`, so :math:`\mathbb E X_{jl}^2 = z^{-2}\,\mathbb E|R_j\cap R_l|
      = z^{-2}\,k(z/k)^2 = 1/k`,

    and moments pairing different index pairs vanish by the independent signs. Hence

    .. math::

        \mathbb E\|E\|_F^2 = \frac1k\sum_{j\ne l}\big(\|u_j\|^2\|u_l\|^2
        + \langle u_j, u_l\rangle^2\big)
        = \frac{d^2 + d - 2\sum_j\|u_j\|^4}{k} \le \frac{d^2 + d}{k},

    and Markov's inequality on :math:`\|E\|_2^2 \le \|E\|_F^2` gives
    :math:`P(\|E\|_2 > \varepsilon) \le (d^2+d)/(k\varepsilon^2)`, so
    :math:`k = \lceil (d^2+d)/(\varepsilon^2\delta)\rceil` (the second-moment
    argument of Nelson & Nguyen 2013 and Meng & Mahoney 2013; Woodruff 2014, §2.1).
    It needs no coherence assumption, is independent of ``z`` and is pessimistic for
    ``z > 1`` (Cohen 2016 proves ``k = O(d log d / eps^2)`` for ``z = O(log d/eps)``,
    with unspecified constants).

    References
    ----------
    .. [1] J. Nelson and H. L. Nguyen, "OSNAP: faster numerical linear algebra
       algorithms via sparser subspace embeddings", FOCS 2013.
    .. [2] X. Meng and M. W. Mahoney, "Low-distortion subspace embeddings in
       input-sparsity time and applications to robust linear regression", STOC 2013.
    .. [3] D. P. Woodruff, "Sketching as a tool for numerical linear algebra", Found.
       Trends Theor. Comput. Sci. 10 (2014), §2.1.

    Examples
    --------
    >>> from rnla.bounds import countsketch_embedding_size
    >>> countsketch_embedding_size(2, eps=0.5, delta=0.5).sketch_size
    48
    """
    d, _ = _check_dims(d)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    k = math.ceil((d * d + d) / (eps * eps * delta))
    return SketchSize(
        int(k), eps, delta, "proven", "second-moment bound, Nelson & Nguyen (2013); derived"
    )


@_representable_size
def sparse_sign_embedding_size(d, /, *, eps, delta, nnz_per_col=8) -> SketchSize:
    r"""Sparse sign sketch size for an ``eps``-subspace embedding (second moment).

    Parameters
    ----------
    d : int
        Subspace dimension, ``d >= 1``.
    eps : float
        Distortion in (0, 1).
    delta : float
        Failure probability in (0, 1).
    nnz_per_col : int, default=8
        Nonzeros ``z`` per column (distinct rows, values ``±1/sqrt(z)``), as in
        :func:`rnla.sketch.sparse_sign`.

    Returns
    -------
    SketchSize
        :math:`k = \max(z, \lceil (d^2 + d)/(\varepsilon^2\delta) \rceil)`: the
        same second moment as CountSketch for every ``z``.

    Raises
    ------
    TypeError
        If ``d`` or ``nnz_per_col`` is not an integer.
    ValueError
        If ``d < 1``, ``nnz_per_col < 1`` or ``eps``/``delta`` lie outside (0, 1).

    Notes
    -----
    The second-moment derivation in the Notes of :func:`countsketch_embedding_size`
    covers the sparse sign sketch: with ``z`` distinct rows :math:`R_j` per column and
    values :math:`\pm 1/\sqrt z`, :math:`X_{jl} = z^{-1}\sum_{r\in R_j\cap R_l}
    s_{rj}s_{rl}` has :math:`\mathbb E X_{jl}^2 = 1/k` exactly as for CountSketch, so
    :math:`\mathbb E\|U^\top S^\top SU - I\|_F^2 = (d^2 + d - 2\sum_j\|u_j\|^4)/k`
    for every ``z``. The floor ``k >= z`` only keeps the rows of a column distinct.

    References
    ----------
    .. [1] J. Nelson and H. L. Nguyen, "OSNAP: faster numerical linear algebra
       algorithms via sparser subspace embeddings", FOCS 2013.
    .. [2] M. B. Cohen, "Nearly tight oblivious subspace embeddings by trace
       inequalities", SODA 2016.

    Examples
    --------
    >>> from rnla.bounds import sparse_sign_embedding_size
    >>> sparse_sign_embedding_size(2, eps=0.5, delta=0.5).sketch_size
    48
    """
    d, _ = _check_dims(d)
    z = check_int(nnz_per_col, "nnz_per_col", minimum=1)
    eps = _check_open_unit(eps, "eps")
    delta = _check_open_unit(delta, "delta")
    k = max(z, math.ceil((d * d + d) / (eps * eps * delta)))
    return SketchSize(
        int(k), eps, delta, "proven", "second-moment bound, Nelson & Nguyen (2013); derived"
    )


def sparse_sign_practical_size(d, /) -> SketchSize:
    r"""Practitioner's sparse sign size: ``k = 2d`` (at least 8), ``nnz_per_col = 8``.

    Parameters
    ----------
    d : int
        Subspace dimension, ``d >= 1``.

    Returns
    -------
    SketchSize
        ``k = max(2 d, 8)`` with ``kind="heuristic"`` and NaN ``distortion`` and
        ``delta``: no theorem backs this size. Use it with
        ``nnz_per_col=8``.

    Raises
    ------
    TypeError
        If ``d`` is not an integer.
    ValueError
        If ``d < 1``.

    Notes
    -----
    Martinsson & Tropp (2020, §9.2) recommend ``k = 2d`` rows and ``z = 8`` nonzeros
    per column, observing Gaussian-like behaviour (effective distortion near
    :math:`\sqrt{d/k} \approx 0.7`); the floor 8 keeps ``nnz_per_col <= k``. For a
    guarantee use :func:`sparse_sign_embedding_size`.

    References
    ----------
    .. [1] P.-G. Martinsson and J. A. Tropp, "Randomized numerical linear algebra:
       foundations and algorithms", Acta Numerica 29 (2020), §9.2.

    Examples
    --------
    >>> from rnla.bounds import sparse_sign_practical_size
    >>> sparse_sign_practical_size(10).sketch_size
    20
    """
    d, _ = _check_dims(d)
    return SketchSize(
        max(2 * d, 8), math.nan, math.nan, "heuristic", "Martinsson & Tropp (2020), §9.2"
    )


# ----------------------------------------------------------------------------------------
# exact variances
# ----------------------------------------------------------------------------------------


def countsketch_inner_product_variance(x, y, sketch_size, /) -> float:
    r"""Exact variance of :math:`\langle Sx, Sy\rangle` for a CountSketch ``S``.

    Parameters
    ----------
    x, y : array_like of shape (n,)
        Vectors.
    sketch_size : int
        Sketch size ``k``, ``k >= 1``.

    Returns
    -------
    float
        :math:`\frac1k\big(\sum_{i\ne j} x_i^2 y_j^2 + \sum_{i\ne j}
        x_iy_ix_jy_j\big)`, computed in float64.

    Raises
    ------
    TypeError
        If ``sketch_size`` is not an integer or the vectors are not numeric.
    ValueError
        If the vectors are not 1-D of equal length, hold NaN/inf, or ``sketch_size < 1``.

    Notes
    -----
    With :math:`c = \langle x,y\rangle`, :math:`D = \sum_i x_i^2y_i^2` and
    :math:`N = \|x\|^2\|y\|^2` the value is :math:`(N - D + c^2 - D)/k
    \le 2\|x\|^2\|y\|^2/k`. It holds for fully random hashing and is *also* the
    exact variance for the sparse sign sketch with any number of distinct nonzeros per
    column (the derivation in :func:`sparse_sign_embedding_size` applies verbatim to
    :math:`X_{12}` with ``U`` replaced by ``[x, y]``). It is
    :func:`tensor_sketch_inner_product_variance` at degree 1.

    References
    ----------
    .. [1] M. Charikar, K. Chen and M. Farach-Colton, "Finding frequent items in data
       streams", ICALP 2002.

    Examples
    --------
    >>> from rnla.bounds import countsketch_inner_product_variance
    >>> countsketch_inner_product_variance([1.0, 0.0], [0.0, 1.0], 4)
    0.25
    """
    x, y = _vector_pair(x, y)
    k = check_int(sketch_size, "sketch_size", minimum=1)
    c, D, N = _moments(x, y)
    return max(0.0, (N - D + c * c - D) / k)


def tensor_sketch_inner_product_variance(x, y, sketch_size, degree=2, /) -> float:
    r"""Exact variance of the TensorSketch estimate of :math:`\langle x, y\rangle^p`.

    Parameters
    ----------
    x, y : array_like of shape (n,)
        Vectors.
    sketch_size : int
        Sketch size ``k``, ``k >= 1``.
    degree : int, default=2
        Tensor order ``p >= 1``.

    Returns
    -------
    float
        :math:`\operatorname{Var}\langle TS(x^{\otimes p}), TS(y^{\otimes p})
        \rangle` for fully random hashes (float64).

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``degree`` is not an integer.
    ValueError
        If the vectors are not 1-D of equal length, hold NaN/inf, or ``sketch_size``/``degree``
        is < 1.

    Notes
    -----
    TensorSketch (Pham & Pagh 2013) uses ``p`` independent CountSketches
    :math:`(h_t, s_t)` and hashes a multi-index ``a`` to
    :math:`H(a) = \sum_t h_t(a_t) \bmod k` with sign :math:`\prod_t s_t(a_t)`, as
    :func:`rnla.sketch.tensor_sketch` does. With :math:`c = \langle x,y\rangle`,
    :math:`D = \sum_i x_i^2 y_i^2`, :math:`N = \|x\|^2\|y\|^2`,
    :math:`\alpha = c^2`, :math:`\beta = c^2 - D`, :math:`\gamma = N - D` and
    :math:`m = 2` for even ``k`` (1 for odd ``k``),

    .. math::

        \operatorname{Var} = \frac1{k^2}\Big[m\big((\alpha+\beta+\gamma)^p -
        \alpha^p\big) + (k-m)\big((\alpha+\beta)^p + (\alpha+\gamma)^p -
        2\alpha^p\big)\Big].

    *Derivation.* Write :math:`[H(a)=H(b)] = k^{-1}\sum_{w\in\mathbb Z_k}
    \omega^{w(H(a)-H(b))}`, :math:`\omega = e^{2\pi i/k}`; characters factorise
    over ``t`` because ``H`` is a sum mod ``k``. So
    :math:`\mathbb E Z^2 = k^{-2}\sum_{w,w'}\prod_t F(w,w')` with the single-factor
    moment :math:`F = \sum x_{a}y_{b}x_{a'}y_{b'}\,\mathbb E[s_as_bs_{a'}s_{b'}]\,
    \mathbb E\,\omega^{w(h_a-h_b)+w'(h_{a'}-h_{b'})}`. The sign expectation pairs
    the indices: :math:`a=b, a'=b'` contributes :math:`\alpha`; :math:`a=a' \ne
    b=b'` contributes :math:`\gamma[w+w'\equiv0]`; :math:`a=b' \ne b=a'`
    contributes :math:`\beta[w\equiv w']` (uniform independent hashes give
    :math:`\mathbb E\,\omega^{u(h_i-h_j)} = [u\equiv 0]` for :math:`i\ne j`). So
    :math:`F = \alpha + \beta[w=w'] + \gamma[w+w'=0]`; counting the pairs
    ``(w, w')`` in each case (``m`` solutions of :math:`2w\equiv0`) and subtracting
    :math:`(\mathbb E Z)^2 = \alpha^p` gives the formula. At ``p = 1`` it reduces
    to :func:`countsketch_inner_product_variance`.

    *Comparison with* :func:`tensor_sketch_variance_bound`. With :math:`u = c^2 \in
    [0, N]` and :math:`0 \le D \le N`: :math:`-N \le \alpha+\beta+\gamma \le 2u + N`,
    :math:`-N \le \alpha+\beta \le 2u` and :math:`u \le \alpha+\gamma \le u + N`.
    Since :math:`(2u+N)^p - u^p` and :math:`(2u)^p + (u+N)^p - 2u^p` increase with
    ``u``, the first bracket is at most :math:`(3^p-1)N^p` and the second at most
    :math:`(2^{p+1}-2)N^p` (for ``p >= 2`` also when :math:`\alpha+\beta < 0`, as
    :math:`1 + 2^p \le 2^{p+1} - 2`). As :math:`2^{p+1}-2 \le 3^p-1`,
    :math:`\operatorname{Var} \le (3^p-1)N^p/k`: the bound of Pham & Pagh holds for
    every ``k`` and ``p``.

    References
    ----------
    .. [1] N. Pham and R. Pagh, "Fast and scalable polynomial kernels via explicit
       feature maps", KDD 2013.

    Examples
    --------
    >>> from rnla.bounds import tensor_sketch_inner_product_variance
    >>> tensor_sketch_inner_product_variance([1.0, 2.0], [3.0, 1.0], 16, 2) > 0
    True
    """
    x, y = _vector_pair(x, y)
    k = check_int(sketch_size, "sketch_size", minimum=1)
    p = check_int(degree, "degree", minimum=1)
    c, D, N = _moments(x, y)
    alpha, beta, gamma = c * c, c * c - D, N - D
    m = 2 if k % 2 == 0 else 1
    total = m * ((alpha + beta + gamma) ** p - alpha**p) + (k - m) * (
        (alpha + beta) ** p + (alpha + gamma) ** p - 2.0 * alpha**p
    )
    return max(0.0, total / (k * k))


def tensor_sketch_variance_bound(x, y, sketch_size, degree=2, /) -> float:
    r"""Upper bound :math:`(3^p - 1)\|x\|^{2p}\|y\|^{2p}/k` on the TensorSketch variance.

    Parameters
    ----------
    x, y : array_like of shape (n,)
        Vectors.
    sketch_size : int
        Sketch size ``k``, ``k >= 1``.
    degree : int, default=2
        Tensor order ``p >= 1``.

    Returns
    -------
    float
        The bound (float64).

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``degree`` is not an integer.
    ValueError
        If the vectors are not 1-D of equal length, hold NaN/inf, or ``sketch_size``/``degree``
        is < 1.

    Notes
    -----
    The bound stated by Pham & Pagh (2013) and quoted by the survey (item 6 of its
    §2). It holds for every ``k`` (proof in the Notes of
    :func:`tensor_sketch_inner_product_variance`), with equality at ``p = 1`` only
    in the limit :math:`x \parallel y` spread over many coordinates; for such vectors
    the ratio exact/bound tends to :math:`(2^{p+1}-2)/(3^p-1)` (0.75 at ``p = 2``,
    0.54 at ``p = 3``) as ``k`` grows.

    References
    ----------
    .. [1] N. Pham and R. Pagh, "Fast and scalable polynomial kernels via explicit
       feature maps", KDD 2013.
    .. [2] H. Avron, H. Nguyen and D. Woodruff, "Subspace embeddings for the
       polynomial kernel", NeurIPS 2014.

    Examples
    --------
    >>> from rnla.bounds import tensor_sketch_variance_bound
    >>> tensor_sketch_variance_bound([1.0, 0.0], [1.0, 0.0], 8, 2)
    1.0
    """
    x, y = _vector_pair(x, y)
    k = check_int(sketch_size, "sketch_size", minimum=1)
    p = check_int(degree, "degree", minimum=1)
    _, _, N = _moments(x, y)
    N = float(N)
    if N == 0.0:
        return 0.0
    # Python floats raise OverflowError where 3**p or N**p leave the float range: the
    # bound is then beyond it too and is returned as inf (still a true upper bound).
    try:
        return (3.0**p - 1.0) / k * N**p
    except OverflowError:
        return math.inf


_HUTCHINSON = ("gaussian", "rademacher")


def hutchinson_variance(A, /, *, distribution="gaussian") -> float:
    r"""Exact single-probe variance of Hutchinson's estimator :math:`z^\top A z`.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix of shape (n, n)
        Square matrix (need not be symmetric).
    distribution : {"gaussian", "rademacher"}, default="gaussian"
        Law of the i.i.d. entries of the probe ``z``.

    Returns
    -------
    float
        :math:`2\|A_s\|_F^2` (Gaussian) or :math:`2(\|A_s\|_F^2 - \sum_i
        A_{ii}^2)` (Rademacher) with :math:`A_s = (A + A^\top)/2`, in float64.

    Raises
    ------
    TypeError
        If ``A`` is a LinearOperator, complex or not numeric.
    ValueError
        If ``A`` is not square, holds NaN/inf, or ``distribution`` is unknown.

    Notes
    -----
    :math:`z^\top A z = z^\top A_s z`. For symmetric :math:`A_s` and i.i.d.
    zero-mean unit-variance entries, :math:`\operatorname{Var}(z^\top A_s z) =
    2\|A_s\|_F^2 + (\mathbb E z^4 - 3)\sum_i (A_s)_{ii}^2`, with
    :math:`\mathbb E z^4 = 3` (Gaussian) or 1 (Rademacher). The variance of the
    mean of ``N`` probes is this value over ``N`` (Hutchinson 1989; Avron & Toledo
    2011, §2).

    References
    ----------
    .. [1] M. F. Hutchinson, "A stochastic estimator of the trace of the influence
       matrix for Laplacian smoothing splines", Commun. Stat. Simul. Comput. 18 (1989).
    .. [2] H. Avron and S. Toledo, "Randomized algorithms for estimating the trace of
       an implicit symmetric positive semi-definite matrix", J. ACM 58 (2011).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.bounds import hutchinson_variance
    >>> hutchinson_variance(np.eye(3), distribution="rademacher")
    0.0
    """
    dist = check_option(distribution, _HUTCHINSON, "distribution")
    if sp.issparse(A):
        A = as_sparse(A, name="A")
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {A.shape}")
        A = A.astype(np.float64)
        As = (A + A.T) * 0.5
        fro2 = float(As.multiply(As).sum())
        diag = np.asarray(A.diagonal(), dtype=np.float64)
    else:
        A = as_float_array(A, name="A", ndim=2).astype(np.float64, copy=False)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {A.shape}")
        As = (A + A.T) * 0.5
        fro2 = float(np.sum(As * As))
        diag = np.diag(A)
    if dist == "gaussian":
        return 2.0 * fro2
    return max(0.0, 2.0 * (fro2 - float(diag @ diag)))


# Bounds of the low-rank algorithms live next to nothing else but their theorem; they are
# re-exported here so that ``rnla.bounds`` is the one place to look for a bound.
from rnla._bounds_augmented import datafit_error_bound  # noqa: E402
from rnla._bounds_cur import CURBound, cur_bound, id_bound, rrqr_growth, strong_rrqr_bound  # noqa: E402
from rnla._bounds_krylov import cg_error_bound, lanczos_quadrature_bound  # noqa: E402
from rnla._bounds_lowrank import (  # noqa: E402
    SinglePassBound,
    hmt_frobenius_bound,
    hmt_power_bound,
    hmt_spectral_bound,
    hmt_structural_bound,
    single_pass_bound,
)
from rnla._bounds_nystrom import (  # noqa: E402
    nystrom_expected_trace_bound,
    nystrom_structural_bound,
    rpcholesky_rank_bound,
)
from rnla._bounds_solve import (  # noqa: E402
    effective_dimension,
    iteration_bound,
    nystrom_pcg_condition_bound,
    nystrom_pcg_rank,
    preconditioned_condition_bound,
)
from rnla._bounds_tensor import (  # noqa: E402
    randomized_tt_bound,
    randomized_tucker_bound,
    tt_svd_bound,
    tt_unfolding_tails,
    tucker_unfolding_tails,
)
