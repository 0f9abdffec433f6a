r"""A-priori error bounds for the randomized range finder, rSVD and single-pass SVD.

Each function implements one theorem, checks its assumptions and raises
:class:`ValueError` outside them. Singular values ``s`` are the full list of the
:math:`\min(m, n)` singular values of ``A`` (any order; they are sorted here). Notation:
target rank ``k``, oversampling ``p``, :math:`\ell = k + p`, power iterations ``q``,
:math:`\tau_k^2 = \sum_{j > k}\sigma_j^2`, :math:`P_Y` the orthogonal projector onto
``range(Y)``.

The constants were checked against the papers: Halko-Martinsson-Tropp (2011),
arXiv:0909.4061v2, Thm 9.1 (p. 51), Thm 9.2 (p. 54), Thm 10.5 (p. 56), Thm 10.6 and
Cor. 10.10 (§10.2-10.4); Tropp-Yurtsever-Udell-Cevher (2017), Thm 4.3 and §5.

References
----------
* [HMT11] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
  SIAM Review 53(2), 2011. arXiv:0909.4061.
* [TYUC17] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Practical sketching
  algorithms for low-rank matrix approximation", SIAM J. Matrix Anal. Appl. 38(4),
  2017. arXiv:1609.00048.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rnla._validation import as_float_array, check_int

__all__ = [
    "SinglePassBound",
    "hmt_frobenius_bound",
    "hmt_power_bound",
    "hmt_spectral_bound",
    "hmt_structural_bound",
    "single_pass_bound",
]


def _spectrum(s) -> np.ndarray:
    s = as_float_array(s, name="s", ndim=1, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError("singular values s must be non-negative")
    return np.sort(s)[::-1]


def _check_kp(s: np.ndarray, rank, oversample) -> tuple[int, int]:
    k = check_int(rank, "rank")
    p = check_int(oversample, "oversample")
    if k < 2 or p < 2:
        raise ValueError(
            f"the HMT Gaussian bounds assume rank >= 2 and oversample >= 2, got rank={k}, "
            f"oversample={p}"
        )
    if k + p > s.size:
        raise ValueError(
            f"the HMT Gaussian bounds assume rank + oversample <= min(m, n)=len(s)={s.size}, "
            f"got {k} + {p} = {k + p}"
        )
    return k, p


def hmt_frobenius_bound(s, rank, oversample) -> float:
    r"""Bound on the expected **squared** Frobenius error of the Gaussian range finder.

    Parameters
    ----------
    s : array_like, shape (min(m, n),)
        All singular values of ``A``.
    rank : int
        Target rank ``k >= 2``.
    oversample : int
        Oversampling ``p >= 2``, with ``k + p <= min(m, n)``.

    Returns
    -------
    float
        :math:`(1 + k/(p - 1))\,\tau_k^2`, an upper bound of
        :math:`\mathbb E\|(I - P_Y)A\|_F^2` for :math:`Y = A\Omega`, :math:`\Omega`
        standard Gaussian (n, k + p).

    Raises
    ------
    ValueError
        ``k < 2``, ``p < 2``, ``k + p > len(s)``, negative or non-finite ``s``.

    Notes
    -----
    HMT (2011), Thm 10.5 states :math:`\mathbb E\|(I - P_Y)A\|_F \le (1 + k/(p -
    1))^{1/2}\tau_k`. Its proof bounds the second moment: by Thm 9.1,
    :math:`\|(I - P_Y)A\|_F^2 \le \tau_k^2 + \|\Sigma_2\Omega_2\Omega_1^\dagger\|_F^2`,
    and :math:`\mathbb E\|\Sigma_2\Omega_2\Omega_1^\dagger\|_F^2 = \tau_k^2\,
    \mathbb E\|\Omega_1^\dagger\|_F^2 = \tau_k^2\, k/(p - 1)` (Props 10.1-10.2), which
    is the squared form returned here (preferred for Monte Carlo: the sample mean of the
    squared error is unbiased).

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, Thm 10.5,
       arXiv:0909.4061.

    Examples
    --------
    >>> hmt_frobenius_bound([3.0, 2.0, 1.0, 0.5, 0.25], 2, 2)
    3.9375
    """
    s = _spectrum(s)
    k, p = _check_kp(s, rank, oversample)
    return float((1 + k / (p - 1)) * np.sum(s[k:] ** 2))


def hmt_spectral_bound(s, rank, oversample) -> float:
    r"""Bound on the expected spectral error of the Gaussian range finder (HMT Thm 10.6).

    Parameters
    ----------
    s : array_like, shape (min(m, n),)
        All singular values of ``A``.
    rank : int
        Target rank ``k >= 2``.
    oversample : int
        Oversampling ``p >= 2``, with ``k + p <= min(m, n)``.

    Returns
    -------
    float
        :math:`(1 + \sqrt{k/(p - 1)})\,\sigma_{k+1} + \frac{e\sqrt{k + p}}{p}\,\tau_k`,
        an upper bound of :math:`\mathbb E\|(I - P_Y)A\|_2`.

    Raises
    ------
    ValueError
        ``k < 2``, ``p < 2``, ``k + p > len(s)``, negative or non-finite ``s``.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, Thm 10.6,
       arXiv:0909.4061.

    Examples
    --------
    >>> round(hmt_spectral_bound([3.0, 2.0, 1.0, 0.5, 0.25], 2, 2), 4)
    5.5284
    """
    s = _spectrum(s)
    k, p = _check_kp(s, rank, oversample)
    tail = math.sqrt(float(np.sum(s[k:] ** 2)))
    return float((1 + math.sqrt(k / (p - 1))) * s[k] + math.e * math.sqrt(k + p) / p * tail)


def hmt_power_bound(s, rank, oversample, n_iter) -> float:
    r"""Bound on the expected spectral error with ``q`` power iterations (HMT Cor. 10.10).

    Parameters
    ----------
    s : array_like, shape (min(m, n),)
        All singular values of ``A``.
    rank : int
        Target rank ``k >= 2``.
    oversample : int
        Oversampling ``p >= 2``, with ``k + p <= min(m, n)``.
    n_iter : int
        Number ``q >= 0`` of power iterations, :math:`Z = (AA^\top)^q A\Omega`.

    Returns
    -------
    float
        :math:`\big[(1 + \sqrt{k/(p-1)})\,\sigma_{k+1}^{2q+1} + \frac{e\sqrt{k+p}}{p}
        (\sum_{j>k}\sigma_j^{2(2q+1)})^{1/2}\big]^{1/(2q+1)}`, an upper bound of
        :math:`\mathbb E\|(I - P_Z)A\|_2`. For ``q = 0`` it equals
        :func:`hmt_spectral_bound`.

    Raises
    ------
    ValueError
        ``k < 2``, ``p < 2``, ``k + p > len(s)``, ``q < 0``, negative or non-finite ``s``.

    Notes
    -----
    HMT Thm 10.6 applied to :math:`B = (AA^\top)^q A` (singular values
    :math:`\sigma_j^{2q+1}`), combined with the per-draw Thm 9.2 :math:`\|(I - P_Z)A\|
    \le \|(I - P_Z)B\|^{1/(2q+1)}` and Hölder's inequality.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, Cor. 10.10,
       arXiv:0909.4061.

    Examples
    --------
    >>> s = [3.0, 2.0, 1.0, 0.5, 0.25]
    >>> round(hmt_power_bound(s, 2, 2, 0), 4), round(hmt_power_bound(s, 2, 2, 1), 4)
    (5.5284, 1.7274)
    """
    s = _spectrum(s)
    k, p = _check_kp(s, rank, oversample)
    q = check_int(n_iter, "n_iter", minimum=0)
    e = 2 * q + 1
    # Work relative to sigma_{k+1} so that high powers neither overflow nor underflow.
    scale = s[k]
    if scale == 0:
        return 0.0
    r = s[k:] / scale
    inner = (1 + math.sqrt(k / (p - 1))) + math.e * math.sqrt(k + p) / p * math.sqrt(
        float(np.sum(r ** (2 * e)))
    )
    return float(scale * inner ** (1.0 / e))


def hmt_structural_bound(svd, Omega, rank, *, norm="fro") -> float:
    r"""Per-draw bound on the squared range-finder error (HMT Thm 9.1).

    Parameters
    ----------
    svd : tuple (U, s, Vt)
        A full thin SVD of ``A`` (m, n): ``U`` (m, d), ``s`` (d,), ``Vt`` (d, n),
        :math:`d = \min(m, n)` (e.g. ``numpy.linalg.svd(A, full_matrices=False)``).
        Only ``s`` and ``Vt`` are used.
    Omega : array_like, shape (n, l)
        The test matrix, in HMT's orientation :math:`Y = A\Omega` (for a
        :class:`~rnla.sketch.SketchOperator` ``S`` of shape (l, n), pass
        ``S.todense().T``).
    rank : int
        Split index ``k``, ``1 <= k <= min(l, d)``.
    norm : {"fro", 2}, default="fro"
        Norm.

    Returns
    -------
    float
        :math:`\|\Sigma_2\|^2 + \|\Sigma_2\Omega_2\Omega_1^\dagger\|^2` with
        :math:`\Omega_1 = V_1^\top\Omega` (k, l), :math:`\Omega_2 = V_2^\top\Omega`: an
        upper bound of :math:`\|(I - P_Y)A\|^2` for this very :math:`\Omega`.

    Raises
    ------
    ValueError
        Inconsistent shapes; ``k`` out of range; :math:`\Omega_1` without full row rank
        (the theorem's assumption); unknown ``norm``.

    Notes
    -----
    Deterministic: it holds for every :math:`\Omega` with :math:`\Omega_1` of full row
    rank (almost surely for a Gaussian :math:`\Omega` with ``l >= k``), in the spectral
    and in the Frobenius norm.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, Thm 9.1,
       arXiv:0909.4061.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.diag([3.0, 2.0, 1.0])
    >>> svd = np.linalg.svd(A)
    >>> hmt_structural_bound(svd, np.eye(3)[:, :2], 2)
    1.0
    """
    try:
        U, s, Vt = svd
    except (TypeError, ValueError) as exc:
        raise ValueError("svd must be a tuple (U, s, Vt)") from exc
    s = as_float_array(s, name="s", ndim=1, dtype=np.float64)
    Vt = as_float_array(Vt, name="Vt", ndim=2, dtype=np.float64)
    U = np.asarray(U)
    Omega = as_float_array(Omega, name="Omega", ndim=2, dtype=np.float64)
    if not (isinstance(norm, str) and norm == "fro") and not (
        isinstance(norm, int | np.integer) and not isinstance(norm, bool) and norm == 2
    ):
        raise ValueError(f"norm={norm!r} is not one of 'fro', 2")
    d, n = Vt.shape
    if s.shape != (d,) or (U.ndim == 2 and U.shape[1] != d):
        raise ValueError(
            f"svd shapes disagree: U {U.shape}, s {s.shape}, Vt {Vt.shape} "
            "(expected U (m, d), s (d,), Vt (d, n))"
        )
    if U.ndim == 2 and d < min(U.shape[0], n):
        raise ValueError(
            f"svd must be a full thin SVD with d = min(m, n) = {min(U.shape[0], n)} "
            f"components, got d={d}"
        )
    if Omega.shape[0] != n:
        raise ValueError(f"Omega must have n={n} rows (Y = A @ Omega), got {Omega.shape}")
    k = check_int(rank, "rank", minimum=1, maximum=min(Omega.shape[1], d))
    if np.any(np.diff(s) > 0):
        raise ValueError("s must be sorted in descending order (as returned by an SVD)")
    Om1 = Vt[:k] @ Omega
    Om2 = Vt[k:] @ Omega
    sv1 = np.linalg.svd(Om1, compute_uv=False)
    if sv1[-1] <= np.finfo(np.float64).eps * max(Om1.shape) * sv1[0]:
        raise ValueError(
            "Omega_1 = V_1^T Omega must have full row rank (HMT Thm 9.1 assumption); its "
            f"smallest singular value is {sv1[-1]:.3g}"
        )
    S2 = s[k:]
    # Sigma_2 Omega_2 Omega_1^+ = (Sigma_2 Omega_2) Omega_1^T (Omega_1 Omega_1^T)^{-1}
    T = np.linalg.lstsq(Om1.T, (S2[:, None] * Om2).T, rcond=None)[0].T
    if norm == "fro":
        return float(np.sum(S2**2) + np.sum(T**2))
    first = float(S2[0] ** 2) if S2.size else 0.0
    second = float(np.linalg.norm(T, 2) ** 2) if T.size else 0.0
    return first + second


class SinglePassBound(NamedTuple):
    r"""Expected-error bounds for :func:`rnla.lowrank.single_pass_svd`.

    Attributes
    ----------
    frobenius_sq : float
        Bound on :math:`\mathbb E\|A - \hat A\|_F^2` for the rank-``k`` sketch
        approximation :math:`\hat A = QX` (TYUC17 Thm 4.3).
    fixed_rank : float
        Bound on :math:`\mathbb E\|A - [\![\hat A]\!]_r\|_F` for the rank-``r`` output.
    """

    frobenius_sq: float
    fixed_rank: float


def single_pass_bound(s, rank, range_size, corange_size) -> SinglePassBound:
    r"""Expected-error bounds of the single-pass (sketch) SVD (Tropp-Yurtsever-Udell-Cevher).

    Parameters
    ----------
    s : array_like, shape (min(m, n),)
        All singular values of ``A``.
    rank : int
        Output rank ``r``, ``1 <= r <= k``.
    range_size : int
        ``k``, columns of :math:`Y = A\Omega`, ``2 <= k <= min(m, n)``.
    corange_size : int
        ``l``, rows of :math:`W = \Psi A`, ``l >= k + 2``.

    Returns
    -------
    SinglePassBound
        ``frobenius_sq`` :math:`= (1 + f(k, l))\min_{0 \le \varrho \le k - 2}(1 +
        f(\varrho, k))\,\tau_{\varrho}^2` and ``fixed_rank`` :math:`= \tau_r +
        2\sqrt{\text{frobenius\_sq}}`, with :math:`f(s, t) = s/(t - s - 1)` and
        :math:`\tau_\varrho^2 = \sum_{j > \varrho}\sigma_j^2`.

    Raises
    ------
    ValueError
        ``k < 2``, ``l < k + 2``, ``r > k``, ``k > len(s)``, negative or non-finite ``s``.

    Notes
    -----
    TYUC17, Thm 4.3 (real field, :math:`\alpha = 1`; Gaussian :math:`\Omega` (n, k) and
    :math:`\Psi` (l, m)): :math:`\mathbb E\|A - \hat A\|_F^2 \le (1 + f(k, l))
    \min_{\varrho < k - 1}(1 + f(\varrho, k))\,\tau_{\varrho+1}^2(A)`, where their
    :math:`\tau_{\varrho+1}^2(A)` is the squared error of the best rank-:math:`\varrho`
    approximation (our :math:`\tau_\varrho^2`). For the truncation, the triangle
    inequality gives per draw :math:`\|A - [\![\hat A]\!]_r\|_F \le \|A - \hat A\|_F +
    \|\hat A - A_r\|_F \le \tau_r + 2\|A - \hat A\|_F` (TYUC17 §5), and Jensen's
    inequality :math:`\mathbb E\|\cdot\|_F \le (\mathbb E\|\cdot\|_F^2)^{1/2}` turns it
    into ``fixed_rank``.

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, SIAM J. Matrix Anal. Appl.
       38(4), 2017, Thm 4.3, arXiv:1609.00048.

    Examples
    --------
    >>> b = single_pass_bound([3.0, 2.0, 1.0, 0.5, 0.25, 0.1], 1, 3, 5)
    >>> b.frobenius_sq > 0 and b.fixed_rank > 0
    True
    """
    s = _spectrum(s)
    k = check_int(range_size, "range_size")
    ell = check_int(corange_size, "corange_size")
    r = check_int(rank, "rank", minimum=1)
    if k < 2:
        raise ValueError(f"TYUC17 Thm 4.3 needs range_size >= 2, got {k}")
    if ell < k + 2:
        raise ValueError(
            f"TYUC17 Thm 4.3 needs corange_size >= range_size + 2 = {k + 2}, got {ell}"
        )
    if r > k:
        raise ValueError(f"rank={r} must satisfy rank <= range_size={k}")
    if k > s.size:
        raise ValueError(f"range_size={k} must be <= min(m, n)=len(s)={s.size}")
    tails = np.cumsum((s**2)[::-1])[::-1]  # tails[j] = sum_{i >= j} s_i^2 (0-based)
    tails = np.append(tails, 0.0)
    rho = np.arange(0, k - 1)
    factors = 1 + rho / (k - rho - 1)
    best = float(np.min(factors * tails[rho]))
    sq = (1 + k / (ell - k - 1)) * best
    return SinglePassBound(float(sq), float(math.sqrt(tails[r]) + 2 * math.sqrt(sq)))
