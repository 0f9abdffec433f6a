r"""A-priori error bounds for tensor-train and Tucker approximations.

Notation: :math:`X` of shape :math:`(n_1, \dots, n_d)`; :math:`X_{\langle k\rangle}` its
``k``-th TT unfolding ``X.reshape(n_1 ... n_k, -1)``; :math:`X_{(n)}` its mode-``n``
unfolding; a *tail* :math:`\tau_k = (\sum_{j > r_k}\sigma_j^2)^{1/2}` is the Frobenius
error of the best rank-:math:`r_k` approximation of an unfolding.

References
----------
* [Ose11] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5),
  2295-2317, 2011 (Thm 2.2 and its proof).
* [HMT11] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
  SIAM Review 53(2), 2011. arXiv:0909.4061 (Thm 9.1, Thm 10.5 and its proof).
* [HSW17] B. Huber, R. Schneider, S. Wolf, "A randomized tensor train singular value
  decomposition", 2017. arXiv:1710.08513.
* [MSK20] R. Minster, A. K. Saibaba, M. E. Kilmer, "Randomized algorithms for low-rank
  tensor decompositions in the Tucker format", SIAM J. Math. Data Sci. 2(1), 2020.
  arXiv:1905.07311.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rnla._validation import as_float_array, check_int

__all__ = [
    "randomized_tt_bound",
    "randomized_tucker_bound",
    "tt_svd_bound",
    "tt_unfolding_tails",
    "tucker_unfolding_tails",
]


def _tails(tails) -> np.ndarray:
    t = as_float_array(tails, name="tails", ndim=1, dtype=np.float64)
    if np.any(t < 0):
        raise ValueError(f"tails must be non-negative Frobenius norms, got {t.tolist()}")
    return t


def _ranks(ranks, count: int) -> list[int]:
    if isinstance(ranks, str) or not isinstance(ranks, Sequence | np.ndarray):
        raise TypeError(f"ranks must be a sequence of {count} ints, got {ranks!r}")
    ranks = list(ranks)
    if len(ranks) != count:
        raise ValueError(f"ranks must have one entry per tail ({count}), got {len(ranks)}")
    return [check_int(r, f"ranks[{k}]", minimum=1) for k, r in enumerate(ranks)]


def _tail_of(M: np.ndarray, r: int) -> float:
    s = np.linalg.svd(M, compute_uv=False)
    return float(np.sqrt(np.sum(s[r:].astype(np.float64) ** 2)))


def _tensor_and_ranks(X, rank, *, tt: bool) -> tuple[np.ndarray, list[int]]:
    """``X`` (order >= 2) in float64 and one rank per TT (d - 1) or mode (d) unfolding."""
    X = as_float_array(X, name="X")
    if X.ndim < 2:
        raise ValueError(f"X must have order d >= 2, got shape {X.shape}")
    count = X.ndim - 1 if tt else X.ndim
    ranks = [rank] * count if isinstance(rank, int | np.integer) else rank
    return X.astype(np.float64, copy=False), _ranks(ranks, count)


def _randomized_bound(tails, ranks, oversample, kind: str) -> float:
    """``(sum_k (1 + r_k / (p - 1)) tau_k^2)^(1/2)`` (HMT Thm 10.5 per unfolding)."""
    t = _tails(tails)
    r = _ranks(ranks, t.size)
    p = check_int(oversample, "oversample")
    if p < 2:
        raise ValueError(f"the randomized {kind} bound assumes oversample >= 2, got {p}")
    factors = 1.0 + np.asarray(r, dtype=np.float64) / (p - 1)
    return float(np.sqrt(np.sum(factors * t**2)))


def tt_unfolding_tails(X, rank) -> np.ndarray:
    r"""Tails :math:`\tau_k` of the TT unfoldings :math:`X_{\langle k\rangle}` at ranks ``rank``.

    Parameters
    ----------
    X : array_like, shape (n_1, ..., n_d)
        Real tensor, ``d >= 2`` (small: one full SVD per unfolding).
    rank : int or sequence of int
        One rank for every bond or the ``d - 1`` inner ranks.

    Returns
    -------
    ndarray, shape (d - 1,)
        :math:`\tau_k = \min_{\operatorname{rank} B \le r_k}\|X_{\langle k\rangle} - B\|_F`.

    Raises
    ------
    TypeError, ValueError
        Invalid tensor or ranks.

    Examples
    --------
    >>> import numpy as np
    >>> tt_unfolding_tails(np.ones((2, 3, 4)), 1).shape
    (2,)
    """
    X64, ranks = _tensor_and_ranks(X, rank, tt=True)
    shape = X64.shape
    return np.array(
        [_tail_of(X64.reshape(math.prod(shape[: k + 1]), -1), r) for k, r in enumerate(ranks)]
    )


def tucker_unfolding_tails(X, rank) -> np.ndarray:
    r"""Tails :math:`\tau_n` of the mode-``n`` unfoldings :math:`X_{(n)}` at ranks ``rank``.

    Parameters
    ----------
    X : array_like, shape (n_1, ..., n_d)
        Real tensor, ``d >= 2``.
    rank : int or sequence of int
        One rank for every mode or ``d`` ranks.

    Returns
    -------
    ndarray, shape (d,)

    Raises
    ------
    TypeError, ValueError
        Invalid tensor or ranks.

    Examples
    --------
    >>> import numpy as np
    >>> tucker_unfolding_tails(np.ones((2, 3, 4)), 1).shape
    (3,)
    """
    X64, ranks = _tensor_and_ranks(X, rank, tt=False)
    return np.array(
        [
            _tail_of(np.moveaxis(X64, n, 0).reshape(X64.shape[n], -1), r)
            for n, r in enumerate(ranks)
        ]
    )


def tt_svd_bound(tails) -> float:
    r"""TT-SVD error bound :math:`\|X - \mathrm{TT}\|_F \le (\sum_k \tau_k^2)^{1/2}`.

    Parameters
    ----------
    tails : array_like, shape (d - 1,)
        Frobenius tails :math:`\tau_k \ge 0` of the unfoldings at the TT ranks
        (:func:`tt_unfolding_tails`), or the tails :math:`\varepsilon_k` discarded by
        the algorithm.

    Returns
    -------
    float
        :math:`(\sum_k \tau_k^2)^{1/2}`.

    Raises
    ------
    ValueError
        Negative or non-finite tails.

    Notes
    -----
    Oseledets (2011), Thm 2.2: TT-SVD with ranks :math:`r_k` returns a TT with
    :math:`\|X - \mathrm{TT}\|_F^2 \le \sum_{k=1}^{d-1}\tau_k^2`, :math:`\tau_k` the
    tail of :math:`X_{\langle k\rangle}`. Deterministic (holds for every input). Since
    every tail is at most the error of the best TT of the same ranks,
    :math:`\|X - \mathrm{TT}\|_F \le \sqrt{d - 1}\min\|X - Y\|_F` (Oseledets 2011,
    Cor. 2.4). With :math:`\tau_k \le \varepsilon\|X\|_F/\sqrt{d-1}` for every ``k``
    (the truncation rule of ``tol`` mode) the bound is :math:`\varepsilon\|X\|_F`.

    References
    ----------
    .. [1] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5),
       2295-2317, 2011.

    Examples
    --------
    >>> tt_svd_bound([3.0, 4.0])
    5.0
    """
    t = _tails(tails)
    return float(np.sqrt(np.sum(t**2)))


def randomized_tt_bound(tails, ranks, oversample) -> float:
    r"""Expected-error bound of the randomized TT-SVD (Gaussian, no power iteration).

    Parameters
    ----------
    tails : array_like, shape (d - 1,)
        Tails :math:`\tau_k` of the unfoldings :math:`X_{\langle k\rangle}` at the
        target ranks (:func:`tt_unfolding_tails`).
    ranks : sequence of int, shape (d - 1,)
        Target ranks :math:`r_k \ge 1`.
    oversample : int
        Oversampling :math:`p \ge 2`.

    Returns
    -------
    float
        :math:`\big(\sum_k (1 + r_k/(p - 1))\,\tau_k^2\big)^{1/2}`, a bound on the
        root-mean-square error :math:`(\mathbb E\|X - \mathrm{TT}\|_F^2)^{1/2}` (and so,
        by Jensen, on :math:`\mathbb E\|X - \mathrm{TT}\|_F`).

    Raises
    ------
    TypeError
        Non-integer ranks or oversampling.
    ValueError
        ``oversample < 2`` (outside the theorem), lengths that do not match, negative
        tails.

    Notes
    -----
    Assumptions: :func:`rnla.tensor.randomized_tt_svd` with ``sketch="gaussian"`` and
    ``n_iter=0``; with power iterations the errors are smaller in practice but this
    bound is not claimed. Derivation (after Huber-Schneider-Wolf 2017, who analyse the
    same algorithm, and Halko-Martinsson-Tropp 2011):

    1. Step ``k`` projects the current unfolding :math:`C_k` onto
       :math:`U_k = Q_kW_k`, the best rank-:math:`r_k` approximation of :math:`C_k`
       within :math:`\operatorname{range}(Q_k)`. The steps are nested orthogonal
       projections, so :math:`\|X - \mathrm{TT}\|_F^2 = \sum_k
       \|(I - U_kU_k^T)C_k\|_F^2` (Pythagoras).
    2. HMT Thm 9.1 (Frobenius) bounds :math:`\|(I - P_Z)C_k\|_F^2` for
       :math:`Z = C_k\Omega\Omega_1^\dagger`, a rank-:math:`r_k` matrix inside
       :math:`\operatorname{range}(Q_k)`; the truncated :math:`U_k` does at least as well.
       Conditioning on the previous steps (:math:`\Omega_k` is independent of them),
       HMT's proof of Thm 10.5 gives :math:`\mathbb E\|(I - U_kU_k^T)C_k\|_F^2 \le
       (1 + r_k/(p - 1))\,\tau_{r_k}(C_k)^2`.
    3. :math:`C_k = (L_{k-1}^T \otimes I)X_{\langle k\rangle}` with :math:`L_{k-1}`
       orthonormal, so by Cauchy interlacing :math:`\tau_{r_k}(C_k) \le \tau_k`.

    Steps whose unfolding is no larger than :math:`r_k + p` are exact SVDs, for which
    the bound holds with constant 1.

    References
    ----------
    .. [1] B. Huber, R. Schneider, S. Wolf, "A randomized tensor train singular value
       decomposition", 2017. arXiv:1710.08513.
    .. [2] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011. arXiv:0909.4061.

    Examples
    --------
    >>> round(randomized_tt_bound([1.0, 1.0], [2, 2], 3), 6)
    2.0
    """
    return _randomized_bound(tails, ranks, oversample, "TT")


def randomized_tucker_bound(tails, ranks, oversample) -> float:
    r"""Expected-error bound of the randomized STHOSVD (Gaussian, no power iteration).

    Parameters
    ----------
    tails : array_like, shape (d,)
        Tails :math:`\tau_n` of the mode unfoldings :math:`X_{(n)}`
        (:func:`tucker_unfolding_tails`).
    ranks : sequence of int, shape (d,)
        Multilinear ranks :math:`r_n \ge 1`.
    oversample : int
        Oversampling :math:`p \ge 2`.

    Returns
    -------
    float
        :math:`\big(\sum_n (1 + r_n/(p - 1))\,\tau_n^2\big)^{1/2}`, a bound on
        :math:`(\mathbb E\|X - \hat X\|_F^2)^{1/2}`.

    Raises
    ------
    TypeError
        Non-integer ranks or oversampling.
    ValueError
        ``oversample < 2``, mismatched lengths, negative tails.

    Notes
    -----
    Assumptions: :func:`rnla.tensor.randomized_tucker` with ``n_iter=0``. The proof is
    the one of :func:`randomized_tt_bound` with mode unfoldings: the sequential steps
    are nested orthogonal projections (the squared errors add), HMT Thm 10.5 bounds each
    step given the previous ones, and the processed unfolding of the partially
    compressed core is a projection of :math:`X_{(n)}`, whose tails are no larger. This
    is the form of the bound of Minster-Saibaba-Kilmer (2020) for the randomized
    STHOSVD.

    References
    ----------
    .. [1] R. Minster, A. K. Saibaba, M. E. Kilmer, SIAM J. Math. Data Sci. 2(1), 2020.
       arXiv:1905.07311.

    Examples
    --------
    >>> round(randomized_tucker_bound([1.0, 1.0, 1.0], [2, 2, 2], 3), 6)
    2.44949
    """
    return _randomized_bound(tails, ranks, oversample, "Tucker")
