r"""Error bounds for softmax attention: the normaliser-aware row lemma and certificates.

Every approximation of :math:`Y = Z^{-1}AV` replaces the rows :math:`a_i` of
:math:`A = \exp(s\,QK^T)` by some :math:`\tilde a_i` and outputs
:math:`\tilde y_i = \tilde a_iV/\tilde z_i` with :math:`\tilde z_i = \tilde a_i\mathbf 1`.
:func:`row_lemma` turns an error in :math:`A` into an error in :math:`Y` (deterministic),
:func:`dropped_mass_bound` does so for methods that keep exact scores on a subset of keys
(top-k, windows, block-sparse patterns), and :func:`certify` gives a sampled-row
a-posteriori certificate for the output of *any* method.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from attention._core import AttentionApprox, Cost, ErrorBound, prepare
from rnla._validation import as_float_array, check_int, check_probability, check_rng

__all__ = [
    "Certificate",
    "RowBound",
    "certify",
    "dropped_mass_bound",
    "kl_confidence_bound",
    "row_lemma",
    "value_radius",
]


class RowBound(NamedTuple):
    r"""Per-row and aggregated deterministic bounds on :math:`\|\tilde Y - Y\|`.

    Attributes
    ----------
    rows : ndarray of float64, shape (..., n)
        Bounds on the row errors :math:`\|\tilde y_i - y_i\|_2`.
    fro : ErrorBound
        :math:`\sqrt{\sum_i \mathrm{rows}_i^2}`, norm ``"fro"``, kind ``"deterministic"``.
    row_max : ErrorBound
        :math:`\max_i \mathrm{rows}_i`, norm ``"row_max"``, kind ``"deterministic"``.
    """

    rows: np.ndarray
    fro: ErrorBound
    row_max: ErrorBound


class Certificate(NamedTuple):
    r"""Sampled-row a-posteriori certificate of an attention output (see :func:`certify`).

    All three bounds hold *simultaneously* except with probability at most ``delta`` over
    the rows drawn by :func:`certify` (not over the method's randomness: the output is
    fixed when it is certified).

    Attributes
    ----------
    fro : float
        Upper confidence bound on the absolute error :math:`\|\tilde Y - Y\|_F` (all
        slices).
    relative_fro : float
        Upper confidence bound on :math:`\|\tilde Y - Y\|_F/\|Y\|_F` (``inf`` when the
        lower confidence bound on :math:`\|Y\|_F` is 0).
    mean_row : float
        Upper confidence bound on the mean row error
        :math:`\frac1N\sum_i\|\tilde y_i - y_i\|_2` over all :math:`N` rows.
    fro_estimate : float
        Point estimate :math:`\sqrt{N\,\overline{e^2}}` of :math:`\|\tilde Y - Y\|_F`
        (its square is unbiased); no guarantee.
    delta : float
        Failure probability :math:`\delta` of the three bounds together (0.0 when every
        row was computed exactly).
    n_rows : int
        Rows sampled (without replacement).
    exact_rows_cost : Cost
        Work spent on the exact rows.
    slices : ndarray of int64, shape (n_rows,)
        Slice index (into the flattened leading dimensions) of each sampled row, in draw
        order.
    rows : ndarray of int64, shape (n_rows,)
        Query index of each sampled row.
    row_errors : ndarray of float64, shape (n_rows,)
        The exact sampled errors :math:`\|\tilde y_i - y_i\|_2`.
    row_range : float
        The a-priori bound :math:`b` with :math:`\|\tilde y_i - y_i\|_2 \le b` for every
        row, used for concentration.
    assumptions : str
        Theorem and reference.
    """

    fro: float
    relative_fro: float
    mean_row: float
    fro_estimate: float
    delta: float
    n_rows: int
    exact_rows_cost: Cost
    slices: np.ndarray
    rows: np.ndarray
    row_errors: np.ndarray
    row_range: float
    assumptions: str

    def as_error_bound(self) -> ErrorBound:
        """Return :attr:`fro` as an :class:`~attention.ErrorBound` (kind "probabilistic")."""
        return ErrorBound(
            value=self.fro,
            norm="fro",
            kind="probabilistic" if self.delta > 0 else "deterministic",
            delta=self.delta,
            assumptions=self.assumptions,
        )


# ---------------------------------------------------------------------------------------
# Deterministic row bounds
# ---------------------------------------------------------------------------------------


def value_radius(V) -> tuple[np.ndarray, np.ndarray]:
    r"""Centroid and radius of the value rows of each slice.

    Parameters
    ----------
    V : array_like, shape (..., m, dv)
        Values.

    Returns
    -------
    center : ndarray of float64, shape (..., dv)
        :math:`c = \frac1m\sum_j v_j`.
    radius : ndarray of float64, shape (...)
        :math:`R = \max_j\|v_j - c\|_2` (plus a rounding allowance). Every convex
        combination :math:`y` of the rows satisfies :math:`\|y - c\| \le R`, hence
        :math:`\max_j\|v_j - y\| \le 2R`.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.bounds import value_radius
    >>> c, R = value_radius(np.array([[0.0, 0.0], [2.0, 0.0]]))
    >>> c.tolist(), round(float(R), 6)
    ([1.0, 0.0], 1.0)
    """
    V = as_float_array(V, name="V").astype(np.float64)
    if V.ndim < 2:
        raise ValueError(f"V must have shape (..., m, dv), got {V.shape}")
    c = V.mean(axis=-2)
    D = V - c[..., None, :]
    R = np.sqrt(np.max(np.einsum("...ij,...ij->...i", D, D), axis=-1))
    # Allowance for the rounding of c and of the norms (relative 1e-12 of the data scale).
    scale = np.sqrt(np.max(np.einsum("...ij,...ij->...i", V, V), axis=-1))
    return c, R + 64 * np.finfo(np.float64).eps * (scale + R)


def _aggregate(rows: np.ndarray, assumptions: str) -> RowBound:
    with np.errstate(over="ignore"):
        fro = float(np.sqrt(np.sum(np.square(rows))))
    return RowBound(
        rows=rows,
        fro=ErrorBound(fro, "fro", "deterministic", 0.0, assumptions),
        row_max=ErrorBound(float(np.max(rows)), "row_max", "deterministic", 0.0, assumptions),
    )


def _lead_and_rows(x, name: str, V: np.ndarray) -> np.ndarray:
    x = as_float_array(x, name=name, allow_nonfinite=True).astype(np.float64)
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape (..., n), got a scalar")
    try:
        np.broadcast_shapes(x.shape[:-1], V.shape[:-2])
    except ValueError:
        raise ValueError(
            f"leading dimensions of {name} {x.shape} and V {V.shape} do not broadcast"
        ) from None
    return x


def row_lemma(row_l1_error, z_tilde, V, *, Y=None) -> RowBound:
    r"""Bound the output error from the row errors of :math:`A` (normaliser-aware lemma).

    Parameters
    ----------
    row_l1_error : array_like, shape (..., n)
        :math:`\|a_i - \tilde a_i\|_1`, or an upper bound on it, per query row.
    z_tilde : array_like, shape (..., n)
        The approximate normalisers :math:`\tilde z_i = \tilde a_i\mathbf 1` the method
        divided by (same row scaling as ``row_l1_error``).
    V : array_like, shape (..., m, dv)
        Values; leading dimensions broadcast with those of ``row_l1_error`` (expand
        grouped-query heads first).
    Y : array_like, shape (..., n, dv), optional
        Exact outputs, when known: the bound then uses :math:`\max_j\|v_j - y_i\|`
        (:math:`O(nm\,d_v)` flops) instead of the a-priori :math:`2R`.

    Returns
    -------
    RowBound
        Per-row bounds and the ``"fro"`` and ``"row_max"`` :class:`ErrorBound`.

    Raises
    ------
    ValueError
        Negative ``row_l1_error``, shapes that do not broadcast, NaN inputs.

    Notes
    -----
    **Lemma** (the normaliser-aware row lemma). If :math:`\tilde y_i = \tilde a_iV/\tilde z_i` with
    :math:`\tilde z_i = \tilde a_i\mathbf 1 \ne 0`, then, since
    :math:`a_i(V - \mathbf 1y_i^T) = a_iV - z_iy_i = 0`,

    .. math::

        \tilde y_i - y_i = \frac{(\tilde a_i - a_i)(V - \mathbf 1y_i^T)}{\tilde z_i},
        \qquad
        \|\tilde y_i - y_i\|_2 \le \frac{\|a_i - \tilde a_i\|_1}{|\tilde z_i|}
        \max_j\|v_j - y_i\|_2 .

    :math:`\tilde a_i` may have negative entries. When :math:`y_i` is unknown, it is a
    convex combination of the rows of :math:`V`, so :math:`\max_j\|v_j - y_i\| \le 2R` with
    :math:`R` from :func:`value_radius`. The bound is invariant under scaling row
    :math:`i` of both :math:`A` and :math:`\tilde A` by the same factor, so it may be
    applied in the stabilised form :math:`\bar A` of
    :class:`~attention.softmax_matrix.SoftmaxMatrix`. Rows with :math:`\tilde z_i = 0`
    get an infinite bound (0 if also :math:`\|a_i - \tilde a_i\|_1 = 0`). It is
    attained (up to the :math:`2R` step) when :math:`\tilde a_i - a_i` is concentrated on
    the key farthest from :math:`y_i`. Cost :math:`O(m\,d_v)` per slice without ``Y``.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.bounds import row_lemma
    >>> V = np.random.default_rng(0).standard_normal((5, 3))
    >>> b = row_lemma(np.full(4, 0.1), np.full(4, 2.0), V)
    >>> b.rows.shape, b.fro.norm, b.row_max.kind
    ((4,), 'fro', 'deterministic')
    """
    V = as_float_array(V, name="V").astype(np.float64)
    if V.ndim < 2:
        raise ValueError(f"V must have shape (..., m, dv), got {V.shape}")
    err = _lead_and_rows(row_l1_error, "row_l1_error", V)
    z = _lead_and_rows(z_tilde, "z_tilde", V)
    if np.isnan(err).any() or np.isnan(z).any():
        raise ValueError("row_l1_error and z_tilde must not contain NaN")
    if (err < 0).any():
        raise ValueError("row_l1_error must be >= 0 (it bounds an l1 norm)")
    err, z = np.broadcast_arrays(err, z)
    if Y is None:
        _, R = value_radius(V)
        radius = 2.0 * R[..., None]
        how = "max_j ||v_j - y_i|| <= 2 max_j ||v_j - c|| (c = centroid of V)"
    else:
        Y = as_float_array(Y, name="Y").astype(np.float64)
        if Y.ndim < 2 or Y.shape[-2] != err.shape[-1] or Y.shape[-1] != V.shape[-1]:
            raise ValueError(
                f"Y must have shape (..., n, dv) = (..., {err.shape[-1]}, {V.shape[-1]}), "
                f"got {Y.shape}"
            )
        # ||v - y||^2 = ||v||^2 + ||y||^2 - 2 v.y, with an allowance for cancellation.
        vsq = np.einsum("...ij,...ij->...i", V, V)
        ysq = np.einsum("...ij,...ij->...i", Y, Y)
        d2 = vsq[..., None, :] + ysq[..., :, None] - 2.0 * np.einsum("...ik,...jk->...ij", Y, V)
        slack = 64 * np.finfo(np.float64).eps * (vsq[..., None, :] + ysq[..., :, None])
        radius = np.sqrt(np.max(np.maximum(d2, 0.0) + slack, axis=-1))
        how = "max_j ||v_j - y_i|| computed from the exact Y"
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rows = err * radius / np.abs(z)
    rows = np.where(err == 0, 0.0, rows)
    rows = np.where(np.isnan(rows), np.inf, rows)
    assumptions = (
        "normaliser-aware row lemma (attention.bounds.row_lemma): ||y_i - ~y_i|| <= "
        "||a_i - ~a_i||_1 max_j ||v_j - y_i|| / |~z_i|, assuming ~y_i = ~a_i V / ~z_i with "
        f"~z_i = ~a_i 1 and the given l1 row errors; {how}"
    )
    return _aggregate(rows, assumptions)


def dropped_mass_bound(dropped_mass, V, *, Y_tilde=None) -> RowBound:
    r"""Bound the output error of a method that drops part of each row's softmax mass.

    Parameters
    ----------
    dropped_mass : array_like, shape (..., n)
        :math:`\varepsilon_i = \sum_{j \notin S_i} p_{ij} \in [0, 1]`, the exact softmax
        probability of the keys row :math:`i` leaves out (or an upper bound on it).
    V : array_like, shape (..., m, dv)
        Values; leading dimensions broadcast with those of ``dropped_mass``.
    Y_tilde : array_like, shape (..., n, dv), optional
        The approximate output. Sharpens :math:`2R` to :math:`R + \|\tilde y_i - c\|`.

    Returns
    -------
    RowBound
        Per-row bounds :math:`\varepsilon_i\,(R + \|\tilde y_i - c\|)` (or
        :math:`2\varepsilon_iR`) and the aggregated :class:`ErrorBound`.

    Raises
    ------
    ValueError
        ``dropped_mass`` outside [0, 1] or NaN; shapes that do not broadcast.

    Notes
    -----
    Assumes the method keeps the exact scores on a key set :math:`S_i` and renormalises:
    :math:`\tilde a_{ij} = a_{ij}` for :math:`j \in S_i`, 0 otherwise. Then
    :math:`y_i = (1 - \varepsilon_i)\tilde y_i + \varepsilon_iw_i` with :math:`w_i` the
    normalised mean of the dropped values, so

    .. math::

        \|y_i - \tilde y_i\| = \varepsilon_i\|w_i - \tilde y_i\|
        \le \varepsilon_i(\|w_i - c\| + \|\tilde y_i - c\|) \le 2\varepsilon_iR .

    The constant 2 is attained: values :math:`\pm v` with all kept keys at :math:`+v`
    and all dropped keys at :math:`-v` (:math:`c = 0`, :math:`R = \|v\|`). The general
    :func:`row_lemma` would give the weaker :math:`2\varepsilon_iR/(1 - \varepsilon_i)`.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.bounds import dropped_mass_bound
    >>> V = np.array([[1.0], [-1.0]])
    >>> dropped_mass_bound(np.array([0.1]), V).rows.round(6).tolist()
    [0.2]
    """
    V = as_float_array(V, name="V").astype(np.float64)
    if V.ndim < 2:
        raise ValueError(f"V must have shape (..., m, dv), got {V.shape}")
    eps = _lead_and_rows(dropped_mass, "dropped_mass", V)
    if np.isnan(eps).any() or (eps < 0).any() or (eps > 1).any():
        raise ValueError("dropped_mass must lie in [0, 1] (a fraction of the softmax mass)")
    c, R = value_radius(V)
    if Y_tilde is None:
        radius = 2.0 * R[..., None]
        how = "||w_i - ~y_i|| <= 2R"
    else:
        Yt = as_float_array(Y_tilde, name="Y_tilde").astype(np.float64)
        if Yt.shape[-1] != V.shape[-1] or Yt.shape[-2] != eps.shape[-1]:
            raise ValueError(
                f"Y_tilde {Yt.shape} must have shape (..., n, dv) = (..., "
                f"{eps.shape[-1]}, {V.shape[-1]})"
            )
        dist = np.linalg.norm(Yt - c[..., None, :], axis=-1)
        radius = R[..., None] + dist
        how = "||w_i - ~y_i|| <= R + ||~y_i - c||"
    rows = eps * radius
    assumptions = (
        "dropped-mass bound: ||y_i - ~y_i|| = eps_i ||w_i - ~y_i|| (exact scores kept on a "
        f"key subset, renormalised), eps_i = dropped softmax probability; {how}, "
        "R = max_j ||v_j - c|| around the centroid c"
    )
    return _aggregate(np.array(rows, dtype=np.float64), assumptions)


# ---------------------------------------------------------------------------------------
# Concentration: Hoeffding's relative-entropy (Chernoff) bound
# ---------------------------------------------------------------------------------------


def _kl(p: float, q: float) -> float:
    """Bernoulli relative entropy kl(p || q) for p, q in [0, 1]."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q) if q > 0 else math.inf
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q)) if q < 1 else math.inf
    return out


def kl_confidence_bound(mean: float, n: int, delta: float, *, upper: bool = True) -> float:
    r"""One-sided confidence bound on the mean of [0, 1] variables (Hoeffding's KL bound).

    Parameters
    ----------
    mean : float
        Sample mean :math:`\bar x \in [0, 1]`.
    n : int
        Sample size, ``>= 1``.
    delta : float
        Failure probability in (0, 1).
    upper : bool, default=True
        Upper (True) or lower (False) bound.

    Returns
    -------
    float
        :math:`\sup\{\mu \ge \bar x: n\,\mathrm{kl}(\bar x\|\mu) \le \log(1/\delta)\}`
        (upper) or the corresponding infimum below :math:`\bar x` (lower), computed by
        bisection and rounded outwards.

    Raises
    ------
    ValueError
        ``mean`` outside [0, 1], ``n < 1``, ``delta`` outside (0, 1).

    Notes
    -----
    Hoeffding [1]_, Thm. 1: for independent :math:`X_i \in [0, 1]` with mean
    :math:`\mu`, :math:`P(\bar X \le \mu - t) \le e^{-n\,\mathrm{kl}(\mu - t\|\mu)}`, so
    the upper bound fails with probability at most :math:`\delta`. By Hoeffding's
    Thm. 4 (the sample sum without replacement is dominated in convex order by the sum
    with replacement) the same holds for a sample drawn *without replacement* from a
    finite population, with :math:`\mu` the population mean. The bound is never worse
    than Hoeffding's :math:`\bar x + \sqrt{\log(1/\delta)/(2n)}` and, at
    :math:`\bar x = 0`, equals :math:`1 - \delta^{1/n} \approx \log(1/\delta)/n`, the
    Clopper-Pearson limit (rare large errors are the hard case for sampling).

    References
    ----------
    .. [1] W. Hoeffding, "Probability inequalities for sums of bounded random
       variables", J. Amer. Statist. Assoc. 58 (1963) 13-30.
       https://doi.org/10.1080/01621459.1963.10500830

    Examples
    --------
    >>> from attention.bounds import kl_confidence_bound
    >>> round(kl_confidence_bound(0.0, 100, 0.01), 4)
    0.045
    """
    mean = float(mean)
    if not 0.0 <= mean <= 1.0:
        raise ValueError(f"mean={mean} must lie in [0, 1]")
    n = check_int(n, "n", minimum=1)
    delta = check_probability(delta, "delta")
    level = math.log(1.0 / delta) / n
    lo, hi = (mean, 1.0) if upper else (0.0, mean)
    if upper and _kl(mean, 1.0) <= level:
        return 1.0
    if not upper and _kl(mean, 0.0) <= level:
        return 0.0
    # kl(mean || mu) is monotone on each side of mean: bisection to machine precision.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        inside = _kl(mean, mid) <= level
        if upper:
            lo, hi = (mid, hi) if inside else (lo, mid)
        else:
            lo, hi = (lo, mid) if inside else (mid, hi)
        if hi - lo <= 4 * np.finfo(np.float64).eps * max(hi, 1e-300):
            break
    return min(1.0, hi) if upper else max(0.0, lo)


# ---------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------


def _betting_capital(x: np.ndarray, N: int, m: float, lam: np.ndarray, c: float) -> float:
    """Largest capital max_t K_t(m) of the without-replacement betting test of mean m."""
    s = x.size
    prev = np.concatenate(([0.0], np.cumsum(x)[:-1]))
    # Conditional mean of the t-th draw under H0: population mean m (WoR).
    mu = (N * m - prev) / (N - np.arange(s))
    if (mu < 0).any() or (mu > 1).any():
        return math.inf  # m is incompatible with the observed draws
    with np.errstate(divide="ignore"):
        cap = np.where(mu > 0, c / mu, np.inf)
    factors = 1.0 + np.minimum(lam, cap) * (x - mu)
    log_k = np.cumsum(np.log(np.maximum(factors, 1e-300)))
    return float(np.exp(min(log_k.max(), 700.0)))


def _betting_lower_bound(x: np.ndarray, N: int, delta: float, *, c: float = 0.5) -> float:
    r"""Lower confidence bound on a [0, 1] population mean from a WoR sample, by betting.

    Waudby-Smith and Ramdas (JRSS-B 2024), §6: under :math:`H_0: \mu = m` the capital
    :math:`K_t(m) = \prod_{i \le t}(1 + \lambda_i(m)(x_i - \mu_i(m)))`, with
    :math:`\mu_i(m) = (Nm - \sum_{j<i}x_j)/(N - i + 1)` the conditional mean of draw
    :math:`i` and predictable :math:`0 \le \lambda_i(m) \le c/\mu_i(m)`, is a nonnegative
    martingale, so by Ville's inequality :math:`P(\max_t K_t(\mu) \ge 1/\delta) \le \delta`.
    :math:`K_t(m)` decreases in :math:`m`, so the rejected means form an interval
    :math:`[0, m^*)` found by bisection; returns :math:`m^*` rounded down. ``x`` must be in
    draw order.
    """
    s = x.size
    level = 1.0 / delta
    # Predictable plug-in bets (WSR eq. 26 with the fixed horizon s): from the past only.
    csum = np.concatenate(([0.0], np.cumsum(x)[:-1]))
    t = np.arange(s)
    mean_prev = (0.5 + csum) / (t + 1)
    sq = np.concatenate(([0.0], np.cumsum((x - np.concatenate(([0.5], mean_prev[1:]))) ** 2)[:-1]))
    var_prev = (0.25 + sq) / (t + 1)
    lam = np.sqrt(2.0 * math.log(level) / (s * var_prev))
    lo, hi = 0.0, float(x.mean())
    if _betting_capital(x, N, hi, lam, c) >= level:
        return 0.0  # cannot happen for a sensible sample; be safe
    if _betting_capital(x, N, lo, lam, c) < level:
        return 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _betting_capital(x, N, mid, lam, c) >= level:
            lo = mid
        else:
            hi = mid
    return lo


def _exact_rows(problem, slices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact outputs of the selected (slice, row) pairs, float64, and kernel evaluations."""
    out = np.zeros((slices.size, problem.dv))
    evals = 0
    for g in np.unique(slices):
        sel = np.flatnonzero(slices == g)
        i = rows[sel]
        q, k, v = problem.slice(int(g))
        S = (q[i].astype(np.float64) @ k.T.astype(np.float64)) * problem.scale
        mask = problem.mask_for(int(g))
        keep = np.ones(S.shape, dtype=bool)
        if mask is not None:
            mrows = mask[i]
            if mrows.dtype == np.bool_:
                keep &= mrows
            else:
                S = S + mrows.astype(np.float64)
                keep &= np.isfinite(mrows)
        ck = problem.causal_keep(i)
        if ck is not None:
            keep &= ck
        S = np.where(keep, S, -np.inf)
        evals += int(keep.sum())
        top = S.max(axis=1)
        seen = np.isfinite(top)
        P = np.exp(S - np.where(seen, top, 0.0)[:, None])
        z = P.sum(axis=1)
        P /= np.where(seen, z, 1.0)[:, None]
        out[sel] = P @ v.astype(np.float64)
    return out, evals


def certify(
    approx,
    Q,
    K,
    V,
    *,
    n_rows: int = 64,
    delta: float = 0.01,
    causal: bool = False,
    mask=None,
    scale=None,
    rng=None,
) -> Certificate:
    r"""Certify the error of any attention output from a few exactly computed rows.

    Parameters
    ----------
    approx : AttentionApprox or array_like, shape (..., n, dv)
        The output to certify (``approx.output`` is used for an
        :class:`~attention.AttentionApprox`).
    Q, K, V : array_like
        The attention inputs, as for :func:`attention.approximate` (leading dimensions,
        grouped-query heads).
    n_rows : int, default=64
        Query rows sampled uniformly without replacement over all slices and rows. If
        ``n_rows`` is at least the total number of rows, every row is computed and the
        result is exact (``delta`` 0).
    delta : float, default=0.01
        Failure probability: the three bounds hold simultaneously with probability at
        least ``1 - delta`` over the sampling.
    causal, mask, scale
        As for :func:`attention.approximate`.
    rng : None, int, SeedSequence or Generator, optional
        Source of the sampled rows.

    Returns
    -------
    Certificate
        ``fro``, ``relative_fro``, ``mean_row`` (upper confidence bounds), the sampled
        rows, their exact errors and the cost.

    Raises
    ------
    TypeError
        Non-integer ``n_rows``, bad input types.
    ValueError
        Output shape different from ``lead + (n, dv)``, ``delta`` outside (0, 1),
        invalid attention inputs (see :func:`attention.approximate`).

    Notes
    -----
    **Ranges.** Each exact row :math:`y_i` is a convex combination of the value rows (or 0
    for a row that sees no key), so with :math:`c` the centroid and :math:`R` the radius
    of :func:`value_radius`, every row error satisfies
    :math:`\|\tilde y_i - y_i\| \le b_i = \|\tilde y_i - c\| + R` (and
    :math:`\max(b_i, \|\tilde y_i\|)` when rows may see no key), known for every row at
    cost :math:`O(N d_v)` without exact attention; :math:`\|y_i\|^2 \le \max_j\|v_j\|^2`.

    **Concentration.** With :math:`b = \max_i b_i` and :math:`\delta` split in three by
    a union bound, Hoeffding's relative-entropy bound (:func:`kl_confidence_bound`,
    Hoeffding 1963 Thms. 1 and 4 [1]_, valid without replacement) gives upper confidence
    bounds on the population means of :math:`e_i^2/b^2` and :math:`e_i/b`, and the
    without-replacement betting confidence bound of Waudby-Smith and Ramdas [2]_ (§6,
    predictable plug-in bets, Ville's inequality) a lower one on the mean of
    :math:`\|y_i\|^2/\max_j\|v_j\|^2` (betting adapts to the small variance of
    :math:`\|y_i\|^2`, where a range-based lower bound is nearly 0); then
    :math:`\|\tilde Y - Y\|_F \le \sqrt{N\,\overline{e^2}^{+}}` and the relative bound
    divides by the largest of :math:`\sqrt{N\,\overline{\|y\|^2}^{-}}`,
    :math:`\|\tilde Y\|_F - \mathrm{fro}` (triangle inequality, on the same event)
    and the norm of the exactly computed rows (a part of :math:`Y`), which keeps the
    relative bound finite for any ``n_rows``.
    The KL bound adapts to small errors (its width is about
    :math:`\sqrt{2\bar x\,\log(1/\delta)/n} + \log(1/\delta)/n` in units of the
    range) and is optimal at :math:`\bar x = 0`, but no sampling certificate can be
    tighter than about :math:`b^2\log(1/\delta)/n_{rows}` for the mean squared error:
    an error of size :math:`b` hidden in a fraction :math:`\log(1/\delta)/n_{rows}` of
    the rows is missed by the sample with probability :math:`\delta`.
    Certificates are therefore informative for errors spread over many rows, and
    need ``n_rows`` of order :math:`\log(1/\delta)\,b^2/\mathrm{MSE}` in the worst
    case, for a target mean squared row error :math:`\mathrm{MSE}`.

    **Cost.** :math:`n_{rows}\,m\,(2d + 2d_v)` flops and :math:`n_{rows}m` exponentials for
    the exact rows (float64), plus :math:`O(N d_v + G_k m d_v)` for the ranges.

    References
    ----------
    .. [1] W. Hoeffding, "Probability inequalities for sums of bounded random
       variables", J. Amer. Statist. Assoc. 58 (1963) 13-30.
       https://doi.org/10.1080/01621459.1963.10500830
    .. [2] I. Waudby-Smith and A. Ramdas, "Estimating means of bounded random variables by
       betting", J. R. Stat. Soc. B 86 (2024) 1-27. arXiv:2010.09686

    Examples
    --------
    >>> import numpy as np
    >>> from attention.bounds import certify
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.standard_normal((2, 50, 8)) for _ in range(3))
    >>> cert = certify(np.zeros((2, 50, 8)), Q, K, V, n_rows=20, rng=0)
    >>> cert.n_rows, cert.row_errors.shape, cert.delta
    (20, (20,), 0.01)
    """
    Y = approx.output if isinstance(approx, AttentionApprox) else approx
    problem = prepare(Q, K, V, scale=scale, causal=causal, mask=mask, positive_scale=False)
    n_rows = check_int(n_rows, "n_rows", minimum=1)
    delta = check_probability(delta, "delta")
    rng = check_rng(rng)
    Yt = as_float_array(Y, name="approx output").astype(np.float64)
    want = (*problem.lead, problem.n, problem.dv)
    if Yt.shape != want:
        raise ValueError(
            f"the output to certify must have shape lead + (n, dv) = {want}, got {Yt.shape}"
        )
    G, n = problem.n_slices, problem.n
    Yt = Yt.reshape(G, n, problem.dv)
    N = G * n

    # A-priori per-row ranges from V and the output only (no exact attention needed).
    centers, radii = value_radius(problem.v)
    kv = problem.kv_index
    b_rows = np.linalg.norm(Yt - centers[kv][:, None, :], axis=-1) + radii[kv][:, None]
    may_be_empty = problem.mask is not None or (problem.causal and problem.n > problem.m)
    if may_be_empty:
        b_rows = np.maximum(b_rows, np.linalg.norm(Yt, axis=-1))
    b = float(b_rows.max())
    vmax2 = float(np.max(np.einsum("gij,gij->gi", problem.v, problem.v, dtype=np.float64)))

    s = min(n_rows, N)
    # Draw order is kept: the betting bound below is sequential.
    flat = rng.choice(N, size=s, replace=False) if s < N else np.arange(N)
    slices, rows = flat // n, flat % n
    Y_exact, evals = _exact_rows(problem, slices, rows)
    err = np.linalg.norm(Yt[slices, rows] - Y_exact, axis=-1)
    ysq = np.einsum("ij,ij->i", Y_exact, Y_exact)
    cost = Cost(flops=float(2 * s * problem.m * (problem.d + problem.dv)), kernel_evals=evals)

    if s == N:
        fro = float(np.sqrt(np.sum(err**2)))
        ynorm = float(np.sqrt(np.sum(ysq)))
        mean_row = float(err.mean())
        achieved_delta = 0.0
    else:
        delta3 = delta / 3.0
        if b > 0:
            m2 = kl_confidence_bound(min(1.0, float(np.mean((err / b) ** 2))), s, delta3)
            m1 = kl_confidence_bound(min(1.0, float(np.mean(err / b))), s, delta3)
        else:
            m2 = m1 = 0.0
        fro = b * math.sqrt(N * m2)
        mean_row = b * m1
        ylow = _betting_lower_bound(np.minimum(ysq / vmax2, 1.0), N, delta3) if vmax2 > 0 else 0.0
        # Three lower bounds on ||Y||_F, all valid on the same events: the sampled one,
        # ||~Y||_F - ||~Y - Y||_F >= ||~Y||_F - fro (triangle inequality), and the exact
        # rows computed (a subset of Y: deterministic; what keeps n_rows=1 finite).
        ynorm = max(
            math.sqrt(N * vmax2 * ylow),
            float(np.linalg.norm(Yt.ravel())) - fro,
            float(np.sqrt(np.sum(ysq))),
        )
        achieved_delta = delta
    relative = fro / ynorm if ynorm > 0 else (0.0 if fro == 0 else math.inf)
    assumptions = (
        f"sampled-row certificate: {s} of {N} rows drawn uniformly without replacement; "
        "row errors bounded by ||~y_i - c|| + R (exact rows are convex combinations of V); "
        "Hoeffding's relative-entropy bound (Hoeffding 1963, Thms 1 and 4), delta split in "
        "three (union bound); probability over the certificate's sampling"
        if s < N
        else f"all {N} rows computed exactly: the values are the exact errors"
    )
    return Certificate(
        fro=float(fro),
        relative_fro=float(relative),
        mean_row=float(mean_row),
        fro_estimate=float(math.sqrt(N * float(np.mean(err**2)))),
        delta=achieved_delta,
        n_rows=int(s),
        exact_rows_cost=cost,
        slices=slices.astype(np.int64),
        rows=rows.astype(np.int64),
        row_errors=err,
        row_range=b,
        assumptions=assumptions,
    )
