r"""Tensor decompositions: TT-SVD, randomized TT, TT rounding and arithmetic, TT-cross, Tucker.

Tensor-train (TT) results are :class:`tensorly.tt_tensor.TTTensor` objects and Tucker
results are :class:`tensorly.tucker_tensor.TuckerTensor` objects, so they plug into the
rest of the tensorly ecosystem (``tl.tt_to_tensor``, ``tl.tucker_to_tensor``, ...). CP
decompositions are left to tensorly (:func:`tensorly.decomposition.parafac`), which
already does that job.

A TT of a tensor :math:`X \in \mathbb R^{n_1 \times \dots \times n_d}` is a list of cores
:math:`G_k` of shape :math:`(r_{k-1}, n_k, r_k)` with :math:`r_0 = r_d = 1` and

.. math::

    X[i_1, \dots, i_d] \approx G_1[:, i_1, :]\, G_2[:, i_2, :] \cdots G_d[:, i_d, :].

The unfolding :math:`X_{\langle k\rangle}` is ``X.reshape(n_1 ... n_k, -1)``; its rank
bounds :math:`r_k`. Ranks are given either as one ``int`` (a cap applied to every bond,
clamped to what the unfoldings allow) or as a list of the ``d - 1`` inner ranks
:math:`(r_1, \dots, r_{d-1})` (each must satisfy
:math:`1 \le r_k \le \min(n_1 \cdots n_k, n_{k+1} \cdots n_d)`). Reported ranks are
always the ``d + 1`` ranks including the boundary ones, as tensorly stores them.

=============================  ===========================================================
function                       algorithm
=============================  ===========================================================
:func:`tt_svd`                 TT-SVD (Oseledets 2011, Alg. 1), fixed rank or accuracy
:func:`randomized_tt_svd`      range finder on every unfolding (Huber-Schneider-Wolf 2017)
:func:`tt_round`               QR orthogonalisation + truncated SVDs (Oseledets 2011, Alg. 2)
:func:`tt_add`                 block-diagonal cores (ranks add)
:func:`tt_inner`               left-to-right contraction
:func:`tt_norm`                orthogonalisation (no cancellation)
:func:`tt_cross`               two-site (DMRG) TT-cross with maxvol (Savostyanov-Oseledets)
:func:`maxvol`                 dominant submatrix (Goreinov-Tyrtyshnikov et al. 2010)
:func:`randomized_tucker`      randomized sequentially truncated HOSVD (Minster et al.)
=============================  ===========================================================

Orthogonal projections make the error accounting exact: every step of the sequential
algorithms projects the current unfolding onto an orthonormal basis nested in the
previous one, so the squared errors of the steps add (Pythagoras) and the total error is
computed, not estimated, from quantities the algorithm has at hand.

References
----------
- [Ose11] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5),
  2295-2317, 2011. doi:10.1137/090752286.
- [HSW17] B. Huber, R. Schneider, S. Wolf, "A randomized tensor train singular value
  decomposition", in Compressed Sensing and its Applications, 2017. arXiv:1710.08513.
- [CW24] M. Che, Y. Wei, H. Yan, "Randomized algorithms for computing the tensor train
  approximation and their applications", 2024. arXiv:2405.07147.
- [OT10] I. Oseledets, E. Tyrtyshnikov, "TT-cross approximation for multidimensional
  arrays", Linear Algebra Appl. 432(1), 70-88, 2010.
- [SO11] D. Savostyanov, I. Oseledets, "Fast adaptive interpolation of multi-dimensional
  arrays in tensor train format", 7th Int. Workshop on Multidimensional Systems, 2011.
- [GOSTZ10] S. A. Goreinov, I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov,
  N. L. Zamarashkin, "How to find a good submatrix", in Matrix Methods: Theory,
  Algorithms and Applications, 2010.
- [MSK20] R. Minster, A. K. Saibaba, M. E. Kilmer, "Randomized algorithms for low-rank
  tensor decompositions in the Tucker format", SIAM J. Math. Data Sci. 2(1), 2020.
  arXiv:1905.07311.
- [HMT11] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
  SIAM Review 53(2), 2011. arXiv:0909.4061.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

from rnla._validation import (
    AccuracyWarning,
    ConvergenceWarning,
    as_float_array,
    check_int,
    check_real,
    check_rng,
    float_dtype,
    result_dtype,
)
from rnla.lowrank import _single_threaded_blas, range_finder

__all__ = [
    "CrossTTResult",
    "MaxvolResult",
    "TTResult",
    "TuckerResult",
    "maxvol",
    "randomized_tt_svd",
    "randomized_tucker",
    "tt_add",
    "tt_cross",
    "tt_inner",
    "tt_norm",
    "tt_round",
    "tt_svd",
]

_U64 = np.finfo(np.float64).eps
# Gram/eigh replaces gesdd only on clearly wide unfoldings large enough to matter.
_GRAM_ASPECT = 4
_GRAM_MIN_SIZE = 1 << 15
# The eigenvalues of a float64 Gram matrix carry an absolute error of about
# m * u * ||C||_F^2; a discarded tail is trusted only when it exceeds that by this factor.
_GRAM_SAFETY = 1e3


# ---------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------


class TTResult(NamedTuple):
    r"""A tensor-train approximation and its error.

    Attributes
    ----------
    tt : tensorly.tt_tensor.TTTensor
        Cores ``tt[k]`` of shape ``(ranks[k], n_k, ranks[k + 1])``, dtype of the input.
    error_bound : float
        :math:`\big(\sum_k \varepsilon_k^2\big)^{1/2}`, the Frobenius norms
        :math:`\varepsilon_k` of what every step discarded. For the sequential algorithms
        the steps are nested orthogonal projections, so this *equals*
        :math:`\|X - \mathrm{TT}\|_F` in exact arithmetic (Oseledets 2011, proof of
        Thm 2.2) and bounds it up to rounding of order :math:`u\|X\|_F` (see each
        function's Notes for the precision floor).
    ranks : tuple of int
        The ``d + 1`` TT ranks :math:`(1, r_1, \dots, r_{d-1}, 1)`.
    """

    tt: TTTensor
    error_bound: float
    ranks: tuple[int, ...]


class CrossTTResult(NamedTuple):
    r"""A TT-cross interpolant and how it was obtained.

    Attributes
    ----------
    tt : tensorly.tt_tensor.TTTensor
        The interpolating TT, float64 (float32 if ``f`` returns float32).
    n_evals : int
        Number of entries evaluated (calls of ``f`` summed over their rows, repeats
        included).
    converged : bool
        Whether the relative change between successive half-sweeps fell below ``tol``.
    n_sweeps : int
        Number of half-sweeps (left-to-right or right-to-left) performed.
    rel_change : float
        :math:`\|T_{\text{last}} - T_{\text{previous}}\|_F / \|T_{\text{last}}\|_F`, the
        a-posteriori error indicator of the last half-sweep (not a bound).
    ranks : tuple of int
        The ``d + 1`` TT ranks.
    """

    tt: TTTensor
    n_evals: int
    converged: bool
    n_sweeps: int
    rel_change: float
    ranks: tuple[int, ...]


class TuckerResult(NamedTuple):
    r"""A Tucker approximation :math:`X \approx G \times_1 U_1 \cdots \times_d U_d`.

    Attributes
    ----------
    tucker : tensorly.tucker_tensor.TuckerTensor
        ``(core, factors)``: core of shape ``ranks``, factors ``U_n`` of shape
        ``(n_n, ranks[n])`` with orthonormal columns.
    error_bound : float
        :math:`\|X - \hat X\|_F` computed from the discarded parts (exact in exact
        arithmetic; precision floor about :math:`\sqrt{u}\|X\|_F`).
    ranks : tuple of int
        Multilinear ranks, one per mode.
    """

    tucker: TuckerTensor
    error_bound: float
    ranks: tuple[int, ...]


class MaxvolResult(NamedTuple):
    r"""Rows of a dominant submatrix and the interpolation coefficients.

    Attributes
    ----------
    indices : ndarray of int64, shape (r,)
        Row indices ``I`` such that ``A[I]`` is a dominant ``r x r`` submatrix.
    coefficients : ndarray, shape (n, r)
        :math:`B = A A[I]^{-1}`: ``B[I]`` is the identity and every entry satisfies
        :math:`|B_{ij}| \le` ``tol`` on return.
    """

    indices: np.ndarray
    coefficients: np.ndarray


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------


def _as_tensor(X, name: str = "X") -> np.ndarray:
    X = as_float_array(X, name=name)
    if X.ndim < 2:
        raise ValueError(f"{name} must have order d >= 2, got shape {X.shape} (order {X.ndim})")
    return X


def _check_tol(tol, name: str = "tol") -> float:
    return check_real(tol, name, lower=0, open_left=False)


def _unfolding_limits(shape: Sequence[int]) -> list[int]:
    """``min(n_1...n_k, n_{k+1}...n_d)`` for k = 1..d-1 (Python ints: no overflow)."""
    d = len(shape)
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(d - 1)]


def _tt_rank_caps(rank, shape: Sequence[int], name: str = "rank") -> list[int]:
    """Per-bond rank caps (d - 1 of them) from any accepted TT rank form.

    The forms: an int (one cap for every bond, clamped to the unfolding sizes); the
    ``d - 1`` inner ranks; or tensorly's ``d + 1`` ranks with 1 at both ends (so a
    result's ``ranks`` or a ``TTTensor``'s ``rank`` can be passed back).
    """
    d = len(shape)
    limits = _unfolding_limits(shape)
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        r = check_int(rank, name, minimum=1)
        return [min(r, lim) for lim in limits]
    if isinstance(rank, str) or not isinstance(rank, Sequence | np.ndarray):
        raise TypeError(
            f"{name} must be an int, the d - 1 = {d - 1} inner TT ranks or the d + 1 = "
            f"{d + 1} TT ranks with 1 at both ends, got {rank!r}"
        )
    ranks = (
        list(np.asarray(rank, dtype=object).ravel())
        if isinstance(rank, np.ndarray)
        else list(rank)
    )
    if len(ranks) == d + 1:
        if any(isinstance(r, bool) or r != 1 for r in (ranks[0], ranks[-1])):
            raise ValueError(
                f"{name}: the d + 1 = {d + 1} TT ranks (tensorly's form) must start and end "
                f"with 1, got {tuple(ranks)}"
            )
        ranks = ranks[1:-1]
    elif len(ranks) != d - 1:
        raise ValueError(
            f"{name} must list the d - 1 = {d - 1} inner TT ranks or the d + 1 = {d + 1} "
            f"TT ranks with 1 at both ends for a tensor of shape {tuple(shape)}, "
            f"got {len(ranks)} ranks"
        )
    out = []
    for k, (r, lim) in enumerate(zip(ranks, limits, strict=True)):
        out.append(check_int(r, f"{name}[{k}]", minimum=1, maximum=lim))
    return out


def _as_tt(tt, name: str = "tt") -> list[np.ndarray]:
    """Return validated float cores (common dtype) of a TTTensor or a list of cores."""
    if isinstance(tt, np.ndarray) or not isinstance(tt, TTTensor | Sequence):
        raise TypeError(
            f"{name} must be a tensorly TTTensor or a sequence of 3-D cores, "
            f"got {type(tt).__name__}"
        )
    cores = [as_float_array(c, name=f"{name}[{k}]", ndim=3) for k, c in enumerate(tt)]
    if len(cores) < 2:
        raise ValueError(f"{name} must have at least 2 cores (order d >= 2), got {len(cores)}")
    if cores[0].shape[0] != 1 or cores[-1].shape[2] != 1:
        raise ValueError(
            f"{name}: boundary ranks must be 1, got {cores[0].shape[0]} and {cores[-1].shape[2]}"
        )
    for k in range(1, len(cores)):
        if cores[k - 1].shape[2] != cores[k].shape[0]:
            raise ValueError(
                f"{name}: rank mismatch between cores {k - 1} and {k}: "
                f"{cores[k - 1].shape} and {cores[k].shape}"
            )
    dtype = result_dtype(*(c.dtype for c in cores))
    return [c.astype(dtype, copy=False) for c in cores]


def _ranks_of(cores: Sequence[np.ndarray]) -> tuple[int, ...]:
    return (*(int(c.shape[0]) for c in cores), 1)


# ---------------------------------------------------------------------------------------
# truncated SVD of one unfolding
# ---------------------------------------------------------------------------------------


def _choose_rank(sq: np.ndarray, cap: int | None, delta2: float | None) -> int:
    """Smallest rank whose discarded tail sum(sq[r:]) <= delta2, capped by ``cap``."""
    n = sq.size
    if delta2 is None:
        return max(1, min(cap, n))
    # tails[r] = sum_{j >= r} sq[j], accumulated from the small end (no cancellation).
    tails = np.append(np.cumsum(sq[::-1])[::-1], 0.0)
    r = int(np.argmax(tails <= delta2))
    r = max(1, r)
    return r if cap is None else max(1, min(r, cap))


def _truncate(C: np.ndarray, cap: int | None, delta2: float | None):
    """Truncate ``C`` (m, M) by SVD: return ``U`` (m, r), ``R = U^T C`` (r, M), tail^2.

    Wide and large unfoldings use the Gram matrix ``C C^T`` (float64) and ``eigh``: one
    SYRK of ``m^2 M`` flops instead of a gesdd (LQ + bidiagonalisation), 10-20x faster
    for ``m << M``. Its eigenvalues carry an absolute error of about ``m u ||C||_F^2``,
    so the result is accepted only when the discarded tail exceeds that by a factor
    ``_GRAM_SAFETY`` (tails then have relative accuracy ~1e-3); otherwise a wide ``C``
    is factorised through a TSQR of ``C^T`` and the ``m x m`` SVD of ``R^T`` (as
    accurate as gesdd, 5-20x faster), and every other shape by LAPACK gesdd.
    """
    m, M = C.shape
    if delta2 is None and cap >= m:
        # Nothing to truncate: the identity is an orthonormal basis of the row space.
        return np.eye(m, dtype=C.dtype), C, 0.0
    if delta2 is None and cap >= M:
        Q, R = sla.qr(C, mode="economic", check_finite=False)
        return Q, R, 0.0
    if _GRAM_ASPECT * m <= M and m * M >= _GRAM_MIN_SIZE:
        C64 = C if C.dtype == np.float64 else C.astype(np.float64)
        G = C64 @ C64.T
        with _single_threaded_blas():  # m x m: threads only slow it down
            lam, W = sla.eigh(G, check_finite=False, driver="evd")
        lam, W = np.maximum(lam[::-1], 0.0), W[:, ::-1]
        total = float(np.trace(G))
        floor = _GRAM_SAFETY * m * _U64 * total
        # In tolerance mode aim 1% below delta^2: the eigenvalue tails may be 1e-3 off.
        r = _choose_rank(lam, cap, None if delta2 is None else 0.99 * delta2)
        tail2 = float(np.sum(lam[r:]))
        if tail2 >= floor or total == 0.0:
            U = np.ascontiguousarray(W[:, :r]).astype(C.dtype, copy=False)
            return U, U.T @ C, tail2
    if _GRAM_ASPECT * m <= M:
        # Wide: Householder TSQR of the tall C^T = Q R (no Q formed), then the small SVD
        # R^T = U S W^T: C = U S (Q W)^T, so U and S are those of C with the backward
        # error of a Householder QR (as accurate as gesdd, which also starts with an LQ
        # factorisation, but then forms the M x m factor and transforms it back).
        # U^T C = S (Q W)^T is one GEMM.
        with _single_threaded_blas():
            U, s = _svd(_tsqr_r(C.T).T)[:2]
        sq = s.astype(np.float64) ** 2
        r = _choose_rank(sq, cap, delta2)
        U = np.ascontiguousarray(U[:, :r])
        return U, U.T @ C, float(np.sum(sq[r:]))
    U, s, Vt = _svd(C)
    sq = s.astype(np.float64) ** 2
    r = _choose_rank(sq, cap, delta2)
    return np.ascontiguousarray(U[:, :r]), s[:r, None] * Vt[:r], float(np.sum(sq[r:]))


# TSQR leaves of about 1 MiB (float64): each Householder QR runs in cache.
_TSQR_LEAF = 1 << 17


def _householder_r(P: np.ndarray) -> np.ndarray:
    """``R`` (min(p, m), m) of a Householder QR of the Fortran-ordered ``P`` (overwritten)."""
    qr = sla.qr(P, mode="raw", overwrite_a=True, check_finite=False)[0][0]
    return np.triu(qr[: min(P.shape)])


def _tsqr_r(T: np.ndarray) -> np.ndarray:
    """``R`` (m, m) of a QR of the tall ``T`` (M, m) by TSQR (Demmel et al. 2012).

    Row blocks of about ``_TSQR_LEAF`` entries are factorised by Householder QR, their
    ``R`` factors stacked and factorised again (a flat tree, repeated while the stack
    is tall): every QR then works in cache, where LAPACK's geqrf on the whole ``T``
    streams its level-2 panel from memory (4-6x slower here for ``m`` = 14-112).
    Backward stable like Householder QR: ``T + E = Q R`` with ``||E|| = O(u ||T||)``.
    ``T`` is not modified.
    """
    M, m = T.shape
    block = max(2 * m, _TSQR_LEAF // max(m, 1))
    if block >= M:
        R = _householder_r(np.array(T, order="F"))
        return R if R.shape[0] == m else np.vstack([R, np.zeros((m - R.shape[0], m), R.dtype)])
    starts = range(0, M, block)
    stack = np.zeros((len(starts) * m, m), dtype=T.dtype, order="F")
    for i, start in enumerate(starts):
        R = _householder_r(np.array(T[start : start + block], order="F"))
        stack[i * m : i * m + R.shape[0]] = R
    return _tsqr_r(stack)


def _svd(C: np.ndarray):
    """Thin SVD by LAPACK gesdd, gesvd if gesdd does not converge."""
    try:
        return sla.svd(C, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:  # pragma: no cover - gesdd convergence failure is rare
        return sla.svd(C, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def _randomized_step(C: np.ndarray, rank: int, p: int, q: int, sketch, rng):
    """``C ~ U R`` at rank ``min(rank, *C.shape)``: ``(U, R, ||C - U R||_F^2)``.

    ``U`` has orthonormal columns. A range finder with ``rank + p`` columns and ``q``
    power iterations, then the truncated SVD of ``Q^T C``; an exact truncation when it
    is cheaper (:func:`_exact_step_cheaper`). The squared error is
    ``||C||_F^2 - ||Q^T C||_F^2`` (what the range misses, Pythagoras) plus the tail
    truncated from ``Q^T C``.
    """
    m, M = C.shape
    r = min(rank, m, M)
    ell = min(r + p, m, M)
    if _exact_step_cheaper(m, M, ell, q):
        return _truncate(C, r, None)
    Q = range_finder(C, ell, n_iter=q, sketch=sketch, rng=rng)
    B = Q.T @ C
    W, R, tail2 = _truncate(B, r, None)
    C64, B64 = C.astype(np.float64, copy=False), B.astype(np.float64, copy=False)
    missed2 = max(float(np.vdot(C64, C64)) - float(np.vdot(B64, B64)), 0.0)
    return Q @ W, R, missed2 + tail2


def _exact_step_cheaper(m: int, M: int, ell: int, q: int) -> bool:
    """Whether an exact step beats a range finder with ``ell`` columns in flops.

    The range finder costs about ``2 (2q + 2) ell m M`` flops, the Gram/eigh SVD of a
    wide unfolding ``m^2 M``; the exact step is taken when it is no more expensive (and
    always when the sketch would span the whole row or column space).
    """
    if ell >= min(m, M):
        return True
    gram = _GRAM_ASPECT * m <= M and m * M >= _GRAM_MIN_SIZE
    return gram and m <= 4 * (q + 1) * ell


def _warn_tol_floor(tol: float, dtype) -> None:
    eps = float(np.finfo(dtype).eps)
    if 0 < tol < 10 * eps:
        warnings.warn(
            f"tol={tol:.3g} is below the {np.dtype(dtype).name} rounding level "
            f"(10 * eps = {10 * eps:.3g}); rounding errors may exceed it",
            AccuracyWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------
# TT-SVD
# ---------------------------------------------------------------------------------------


def tt_svd(X, /, rank=None, *, tol=None) -> TTResult:
    r"""Tensor-train decomposition by sequential truncated SVDs (TT-SVD).

    Parameters
    ----------
    X : array_like, shape (n_1, ..., n_d)
        Real tensor of order ``d >= 2``.
    rank : int or sequence of int, optional
        Maximal TT rank (an ``int``, clamped to the unfolding sizes), the ``d - 1``
        inner ranks, or tensorly's ``d + 1`` ranks with 1 at both ends (a result's
        ``ranks`` can be passed back).
        With ``tol`` as well, ranks are chosen by ``tol`` and capped here. Positional
        or keyword (``tt_svd(X, 3)`` is ``tt_svd(X, rank=3)``).
    tol : float, optional
        Relative accuracy :math:`\varepsilon \ge 0`: every unfolding is truncated at
        :math:`\delta = \varepsilon\|X\|_F/\sqrt{d - 1}`, which guarantees
        :math:`\|X - \mathrm{TT}\|_F \le \varepsilon\|X\|_F` when no rank cap binds.

    Returns
    -------
    TTResult
        ``tt`` (:class:`tensorly.tt_tensor.TTTensor`, cores ``(r_{k-1}, n_k, r_k)``,
        dtype of ``X``), ``error_bound`` :math:`(\sum_k \varepsilon_k^2)^{1/2}` with
        :math:`\varepsilon_k` the Frobenius norm of the singular values discarded at step
        ``k``, and ``ranks`` (``d + 1`` ints).

    Raises
    ------
    TypeError
        Complex or non-numeric ``X``; non-integer ranks; non-real ``tol``.
    ValueError
        Order below 2, empty or non-finite ``X``; neither ``rank`` nor ``tol``; ranks of
        the wrong length or outside :math:`[1, \min(n_1\cdots n_k, n_{k+1}\cdots n_d)]`;
        negative ``tol``.

    Warns
    -----
    AccuracyWarning
        When a rank cap prevents reaching ``tol``, or ``tol`` is below the rounding level.

    Notes
    -----
    Oseledets (2011), Alg. 1: with :math:`C_1 = X_{\langle 1\rangle}`, for
    :math:`k = 1, \dots, d - 1` take the truncated SVD :math:`C_k \approx U_k S_k V_k^T`,
    set the core :math:`G_k = U_k` reshaped to :math:`(r_{k-1}, n_k, r_k)` and continue
    with :math:`C_{k+1} = U_k^T C_k` reshaped to :math:`(r_k n_{k+1}, \cdot)`; the last
    core is :math:`C_d`. The cores :math:`G_1, \dots, G_{d-1}` are left-orthonormal.

    Bound (Oseledets 2011, Thm 2.2): :math:`\|X - \mathrm{TT}\|_F^2 \le \sum_k
    \varepsilon_k^2`, with :math:`\varepsilon_k` the tail of the best rank-:math:`r_k`
    approximation of the unfolding :math:`X_{\langle k\rangle}`
    (:func:`rnla.bounds.tt_svd_bound`); hence the TT-SVD is within :math:`\sqrt{d - 1}`
    of the best TT of the same ranks. The reported ``error_bound`` uses the tails of the
    projected unfoldings :math:`C_k`, which are no larger (Cauchy interlacing) and make
    the inequality an equality in exact arithmetic.

    SVD backend: wide unfoldings (:math:`4m \le M`, :math:`mM \ge 2^{15}`) use the
    Gram matrix :math:`C_kC_k^T` (float64) and ``eigh``, 10-20x faster than a gesdd;
    it is used only when the discarded tail exceeds the Gram rounding level
    :math:`10^3 m u\|C_k\|_F^2` by a wide margin. Otherwise (high accuracy, exactly
    low-rank input) a wide unfolding is factorised by a tall-skinny QR (TSQR, row
    blocks of about 1 MiB factorised in cache) of :math:`C_k^\top = QR` followed by the
    small SVD of :math:`R^\top` (:math:`C_k = U\Sigma(QW)^\top`; backward stable like
    Householder QR, so as accurate as gesdd, without forming :math:`Q`); square or tall
    unfoldings use SciPy's LAPACK ``gesdd``. Cost: :math:`\sum_k (r_{k-1}n_k)^2 M_k`
    flops on the Gram path, twice that on the TSQR path,
    :math:`O(\sum_k (r_{k-1}n_k)^2 M_k)` with a larger constant on the gesdd path,
    :math:`M_k = n_{k+1}\cdots n_d`.

    References
    ----------
    .. [1] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5),
       2295-2317, 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_svd
    >>> X = np.random.default_rng(0).standard_normal((4, 5, 6))
    >>> res = tt_svd(X, rank=3)
    >>> res.ranks, [core.shape for core in res.tt]
    ((1, 3, 3, 1), [(1, 4, 3), (3, 5, 3), (3, 6, 1)])
    """
    X = _as_tensor(X)
    if rank is None and tol is None:
        raise ValueError("give rank=, tol= or both (got neither)")
    shape, d = X.shape, X.ndim
    caps = _tt_rank_caps(rank, shape) if rank is not None else [None] * (d - 1)
    delta2 = None
    if tol is not None:
        tol = _check_tol(tol)
        _warn_tol_floor(tol, X.dtype)
        norm2 = float(np.vdot(X.astype(np.float64, copy=False), X.astype(np.float64, copy=False)))
        delta2 = tol**2 * norm2 / (d - 1)
    cores, tails2 = [], []
    C, r_prev = X, 1
    for k in range(d - 1):
        C = C.reshape(r_prev * shape[k], -1)
        cap = caps[k]
        if cap is not None:
            cap = min(cap, *C.shape)
        U, C, tail2 = _truncate(C, cap, delta2)
        r = U.shape[1]
        cores.append(U.reshape(r_prev, shape[k], r))
        tails2.append(tail2)
        r_prev = r
    cores.append(np.ascontiguousarray(C).reshape(r_prev, shape[-1], 1))
    norm = math.sqrt(norm2) if tol is not None else None
    return _truncated_tt(cores, tails2, rank, tol, norm)


# ---------------------------------------------------------------------------------------
# randomized TT-SVD
# ---------------------------------------------------------------------------------------


def randomized_tt_svd(
    X, /, rank, *, oversample=10, n_iter=1, sketch="gaussian", rng=None
) -> TTResult:
    r"""Randomized TT-SVD: a randomized range finder on every unfolding.

    Parameters
    ----------
    X : array_like, shape (n_1, ..., n_d)
        Real tensor of order ``d >= 2``.
    rank : int or sequence of int
        Maximal TT rank (``int``, clamped to the unfolding sizes), the ``d - 1`` inner
        ranks, or tensorly's ``d + 1`` ranks with 1 at both ends (a result's ``ranks``
        can be passed back).
    oversample : int, default=10
        Oversampling :math:`p \ge 0`: the range finder of step ``k`` draws
        :math:`\ell_k = r_k + p` columns (fewer if the unfolding is smaller).
    n_iter : int, default=1
        Power (subspace) iterations :math:`q` of each range finder.
    sketch : str or SketchOperator, default="gaussian"
        Test matrix kind, passed to :func:`rnla.range_finder` (``"gaussian"``,
        ``"rademacher"``, ``"orthogonal_gaussian"``, ``"srht"``, ``"countsketch"``,
        ``"sparse_sign"``).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the test matrices.

    Returns
    -------
    TTResult
        ``tt`` (:class:`tensorly.tt_tensor.TTTensor`, dtype of ``X``, left-orthonormal
        cores), ``error_bound`` the a-posteriori error :math:`\|X - \mathrm{TT}\|_F`
        computed exactly from the discarded parts (see Notes) and ``ranks``.

    Raises
    ------
    TypeError
        Complex or non-numeric ``X``; non-integer ranks, ``oversample`` or ``n_iter``;
        bad ``sketch`` or ``rng`` type.
    ValueError
        Order below 2, empty or non-finite ``X``; ranks of the wrong length or out of
        range; negative ``oversample`` or ``n_iter``; unknown ``sketch``.

    Notes
    -----
    Step ``k`` works on the projected unfolding :math:`C_k` (shape
    :math:`(r_{k-1}n_k, M_k)`) exactly as :func:`tt_svd` does, but replaces its SVD by a
    randomized SVD (Halko-Martinsson-Tropp 2011, Alg. 4.4 + 5.1): :math:`Q_k =`
    ``range_finder`` :math:`(C_k, \ell_k)`, :math:`B_k = Q_k^TC_k`, and
    :math:`U_k = Q_kW_k` with :math:`W_k` the top :math:`r_k` left singular vectors of
    the small :math:`B_k`; the next unfolding is :math:`W_k^TB_k`. This is the
    randomized TT-SVD of Huber-Schneider-Wolf (2017) with truncation to the target rank.
    A step is done exactly (as in :func:`tt_svd`) when that is no more expensive: when
    the unfolding has at most :math:`\ell_k` rows or columns, or when it is wide enough
    for the Gram/eigh SVD and :math:`r_{k-1}n_k \le 4(q + 1)\ell_k` (flop count of the
    Gram matrix against the :math:`2q + 2` products of the range finder).

    A-posteriori error (exact, not estimated): the approximation is a product of nested
    orthogonal projections, so :math:`\|X - \mathrm{TT}\|_F^2 = \sum_k
    \|(I - U_kU_k^T)C_k\|_F^2 = \sum_k \big[(\|C_k\|_F^2 - \|B_k\|_F^2) +
    \sum_{j > r_k}\sigma_j(B_k)^2\big]` (equivalently :math:`\|X\|_F^2 -
    \|\mathrm{TT}\|_F^2`). The first term is a difference of squares, so the reported
    value has an absolute precision floor of about :math:`\sqrt{u}\,\|X\|_F` (about
    1e-8 relative in float64, 3e-4 in float32); above it, it is the actual error.

    Expected error (Gaussian test matrices, ``n_iter=0``, :math:`p \ge 2`):
    :math:`\mathbb E\|X - \mathrm{TT}\|_F^2 \le \sum_k (1 + r_k/(p - 1))\,
    \tau_k^2`, with :math:`\tau_k` the rank-:math:`r_k` tail of the unfolding
    :math:`X_{\langle k\rangle}` (:func:`rnla.bounds.randomized_tt_bound`; derivation
    there, after HMT Thm 10.5 and Huber-Schneider-Wolf 2017).

    Cost: :math:`(2q + 2)` products of :math:`C_k` with :math:`\ell_k` columns per step,
    :math:`\approx 2(2q + 2)\ell_k\,r_{k-1}n_kM_k` flops, against
    :math:`(r_{k-1}n_k)^2M_k` for the Gram path of :func:`tt_svd`: the randomized
    version pays off when :math:`r_{k-1}n_k \gg 4(q + 1)\ell_k`, and against a gesdd
    TT-SVD (tensorly) always.

    References
    ----------
    .. [1] B. Huber, R. Schneider, S. Wolf, "A randomized tensor train singular value
       decomposition", 2017. arXiv:1710.08513.
    .. [2] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
       SIAM Review 53(2), 2011. arXiv:0909.4061.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import randomized_tt_svd
    >>> X = np.random.default_rng(0).standard_normal((8, 8, 8, 8))
    >>> res = randomized_tt_svd(X, 4, rng=0)
    >>> res.ranks
    (1, 4, 4, 4, 1)
    """
    X = _as_tensor(X)
    shape, d = X.shape, X.ndim
    caps = _tt_rank_caps(rank, shape)
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(n_iter, "n_iter", minimum=0)
    rng = check_rng(rng)
    cores, err2 = [], 0.0
    C, r_prev = X, 1
    for k in range(d - 1):
        C = C.reshape(r_prev * shape[k], -1)
        U, C, step_err2 = _randomized_step(C, caps[k], p, q, sketch, rng)
        err2 += step_err2
        r = U.shape[1]
        cores.append(np.ascontiguousarray(U).reshape(r_prev, shape[k], r))
        r_prev = r
    cores.append(np.ascontiguousarray(C).reshape(r_prev, shape[-1], 1))
    return TTResult(TTTensor(cores), math.sqrt(err2), _ranks_of(cores))


# ---------------------------------------------------------------------------------------
# TT arithmetic and rounding
# ---------------------------------------------------------------------------------------


def _right_orthogonalize(cores: list[np.ndarray]) -> list[np.ndarray]:
    """Right-to-left QR sweep: cores 1..d-1 right-orthonormal, the norm moves to core 0."""
    cores = [c.copy() for c in cores]
    for k in range(len(cores) - 1, 0, -1):
        r0, n, r1 = cores[k].shape
        # G_k reshaped (r0, n r1) = R^T Q^T with Q^T row-orthonormal (QR of the transpose).
        Q, R = sla.qr(cores[k].reshape(r0, n * r1).T, mode="economic", check_finite=False)
        cores[k] = np.ascontiguousarray(Q.T).reshape(-1, n, r1)
        cores[k - 1] = np.tensordot(cores[k - 1], R.T, axes=(2, 0))
    return cores


def tt_norm(tt, /) -> float:
    r"""Frobenius norm of a tensor in TT format, without forming it.

    Parameters
    ----------
    tt : tensorly.tt_tensor.TTTensor or sequence of ndarray
        Cores of shape ``(r_{k-1}, n_k, r_k)``, boundary ranks 1.

    Returns
    -------
    float
        :math:`\|T\|_F`.

    Raises
    ------
    TypeError
        Not a TT / complex cores.
    ValueError
        Mismatched ranks, non-3-D or non-finite cores, fewer than 2 cores.

    Notes
    -----
    Right-to-left QR orthogonalisation makes cores ``2..d`` right-orthonormal; the norm
    is then the Frobenius norm of the first core. Unlike
    :math:`\sqrt{\langle T, T\rangle}` this has no cancellation, so it resolves
    differences of nearly equal TTs down to rounding. Cost :math:`O(\sum_k n_k r^3)`.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_norm, tt_svd
    >>> X = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> bool(np.isclose(tt_norm(tt_svd(X, rank=20).tt), np.linalg.norm(X)))
    True
    """
    # float64 throughout: the norm is a Python float, and squaring float32 entries near
    # 1e19 and above would overflow inside the sweep.
    cores = [c.astype(np.float64) for c in _as_tt(tt)]
    return float(np.linalg.norm(_right_orthogonalize(cores)[0]))


def tt_inner(a, b, /) -> float:
    r"""Inner product :math:`\langle A, B\rangle = \sum_{i} A[i] B[i]` of two TTs.

    Parameters
    ----------
    a, b : tensorly.tt_tensor.TTTensor or sequence of ndarray
        TTs of the same shape (ranks may differ).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        Not a TT / complex cores.
    ValueError
        Invalid TTs or different shapes.

    Notes
    -----
    Left-to-right contraction :math:`v \leftarrow \sum_{a, b, i} v_{ab}
    A_k[a, i, c]\, B_k[b, i, e]`, cost :math:`O(\sum_k n_k r_a r_b (r_a + r_b))`.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_inner, tt_svd
    >>> X = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> t = tt_svd(X, rank=20).tt
    >>> bool(np.isclose(tt_inner(t, t), np.sum(X * X)))
    True
    """
    ca, cb = _as_tt(a, "a"), _as_tt(b, "b")
    _check_same_shape(ca, cb)
    v = np.ones((1, 1))
    for A, B in zip(ca, cb, strict=True):
        v = np.einsum("ab,aic,bie->ce", v, A.astype(np.float64), B.astype(np.float64))
    return float(v[0, 0])


def _check_same_shape(ca, cb) -> None:
    sa = tuple(c.shape[1] for c in ca)
    sb = tuple(c.shape[1] for c in cb)
    if sa != sb:
        raise ValueError(f"TT shapes differ: {sa} and {sb}")


def tt_add(a, b, /, *, alpha=1.0, beta=1.0) -> TTTensor:
    r"""Linear combination :math:`\alpha A + \beta B` of two TTs (ranks add).

    Parameters
    ----------
    a, b : tensorly.tt_tensor.TTTensor or sequence of ndarray
        TTs of the same shape.
    alpha, beta : float, default=1.0
        Coefficients.

    Returns
    -------
    tensorly.tt_tensor.TTTensor
        Cores with ranks :math:`r_k^A + r_k^B` (inner bonds); round it with
        :func:`tt_round` to recompress.

    Raises
    ------
    TypeError
        Not a TT, complex cores or non-real coefficients.
    ValueError
        Invalid TTs or different shapes.

    Notes
    -----
    Oseledets (2011), §4.1: inner cores are block diagonal
    :math:`\mathrm{diag}(A_k[:, i, :], B_k[:, i, :])`, the first core is the row
    :math:`[\alpha A_1, \beta B_1]` and the last the column :math:`[A_d; B_d]`.
    tensorly has no TT addition, hence this function.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_add, tt_svd
    >>> X = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> t = tt_svd(X, rank=2).tt
    >>> tt_add(t, t, beta=-1.0).rank
    (1, 4, 4, 1)
    """
    ca, cb = _as_tt(a, "a"), _as_tt(b, "b")
    _check_same_shape(ca, cb)
    for name, c in (("alpha", alpha), ("beta", beta)):
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
            raise TypeError(f"{name} must be a finite real number, got {c!r}")
    dtype = result_dtype(ca[0].dtype, cb[0].dtype)
    d, out = len(ca), []
    for k, (A, B) in enumerate(zip(ca, cb, strict=True)):
        (ra0, n, ra1), (rb0, _, rb1) = A.shape, B.shape
        if k == 0:
            out.append(np.concatenate([alpha * A, beta * B], axis=2).astype(dtype))
        elif k == d - 1:
            out.append(np.concatenate([A, B], axis=0).astype(dtype))
        else:
            G = np.zeros((ra0 + rb0, n, ra1 + rb1), dtype=dtype)
            G[:ra0, :, :ra1] = A
            G[ra0:, :, ra1:] = B
            out.append(G)
    return TTTensor(out)


def tt_round(tt, /, rank=None, *, tol=None) -> TTResult:
    r"""Recompress a TT to lower ranks (TT rounding).

    Parameters
    ----------
    tt : tensorly.tt_tensor.TTTensor or sequence of ndarray
        Cores of shape ``(r_{k-1}, n_k, r_k)``.
    rank : int or sequence of int, optional
        Maximal rank (``int``), the ``d - 1`` inner ranks (each at most the unfolding
        size), or tensorly's ``d + 1`` ranks with 1 at both ends (a result's ``ranks``
        can be passed back).
    tol : float, optional
        Relative accuracy: each bond is truncated at
        :math:`\delta = \varepsilon\|T\|_F/\sqrt{d - 1}`.

    Returns
    -------
    TTResult
        The rounded TT, ``error_bound`` :math:`(\sum_k\varepsilon_k^2)^{1/2}` (the
        discarded singular values; equal to :math:`\|T - \tilde T\|_F` up to rounding)
        and ``ranks``.

    Raises
    ------
    TypeError
        Not a TT, complex cores, non-integer ranks, non-real ``tol``.
    ValueError
        Invalid TT, neither ``rank`` nor ``tol``, ranks of the wrong length or range.

    Warns
    -----
    AccuracyWarning
        When a rank cap prevents reaching ``tol``.

    Notes
    -----
    Oseledets (2011), Alg. 2: a right-to-left QR sweep makes cores ``2..d``
    right-orthonormal, so every unfolding :math:`T_{\langle k\rangle}` seen in the
    following left-to-right sweep of truncated SVDs of the cores
    :math:`(r_{k-1}n_k) \times r_k` has the singular values of the true unfolding of the
    current tensor. As for TT-SVD the discarded parts are orthogonal, so
    :math:`\|T - \tilde T\|_F^2 = \sum_k \varepsilon_k^2 \le \varepsilon^2\|T\|_F^2`
    (Oseledets 2011, Thm 2.2 applied to :math:`T`) whenever no rank cap binds. Cost
    :math:`O(d\,n r^3)`, never forming :math:`T`.

    References
    ----------
    .. [1] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5),
       2295-2317, 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_add, tt_round, tt_svd
    >>> X = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> t = tt_svd(X, rank=2).tt
    >>> tt_round(tt_add(t, t), tol=1e-10).ranks
    (1, 2, 2, 1)
    """
    cores = _as_tt(tt)
    if rank is None and tol is None:
        raise ValueError("give rank=, tol= or both (got neither)")
    d = len(cores)
    shape = tuple(c.shape[1] for c in cores)
    caps = _tt_rank_caps(rank, shape) if rank is not None else [None] * (d - 1)
    cores = _right_orthogonalize(cores)
    norm = float(np.linalg.norm(cores[0]))
    delta2 = None
    if tol is not None:
        tol = _check_tol(tol)
        _warn_tol_floor(tol, cores[0].dtype)
        delta2 = tol**2 * norm**2 / (d - 1)
    tails2 = []
    for k in range(d - 1):
        r0, n, r1 = cores[k].shape
        C = cores[k].reshape(r0 * n, r1)
        cap = caps[k] if caps[k] is None else min(caps[k], *C.shape)
        U, R, tail2 = _truncate(C, cap, delta2)
        r = U.shape[1]
        cores[k] = U.reshape(r0, n, r)
        cores[k + 1] = np.tensordot(R, cores[k + 1], axes=(1, 0))
        tails2.append(tail2)
    return _truncated_tt(cores, tails2, rank, tol, norm)


def _truncated_tt(cores, tails2, rank, tol, norm) -> TTResult:
    """TTResult with the error bound sqrt(sum of discarded tails^2) (Oseledets Thm 2.2).

    Warns when a rank cap kept the relative bound above ``tol`` (``norm`` = ||X||_F).
    """
    error = math.sqrt(sum(tails2))
    if tol is not None and error > tol * norm * (1 + 1e-6):
        warnings.warn(
            f"the rank cap {rank!r} prevents reaching tol={tol:.3g}: achieved relative "
            f"error bound {error / norm:.3g}",
            AccuracyWarning,
            stacklevel=3,
        )
    return TTResult(TTTensor(cores), error, _ranks_of(cores))


# ---------------------------------------------------------------------------------------
# maxvol and TT-cross
# ---------------------------------------------------------------------------------------


def maxvol(A, /, *, tol=1.05, max_iter=None) -> MaxvolResult:
    r"""Rows of a dominant (quasi-maximal volume) square submatrix of a tall matrix.

    Parameters
    ----------
    A : array_like, shape (n, r)
        Tall matrix, ``n >= r``, of full column rank.
    tol : float, default=1.05
        Stop when every coefficient satisfies :math:`|B_{ij}| \le` ``tol`` (``>= 1``).
    max_iter : int, optional
        Maximal number of row swaps; default ``10 * r + 100``.

    Returns
    -------
    MaxvolResult
        ``indices`` (shape (r,)) and ``coefficients`` :math:`B = A A[I]^{-1}`
        (shape (n, r)).

    Raises
    ------
    TypeError
        Complex or non-numeric ``A``.
    ValueError
        ``A`` not 2-D, wider than tall, non-finite, rank deficient; ``tol < 1``.

    Warns
    -----
    ConvergenceWarning
        When ``max_iter`` swaps did not reach ``tol``.

    Notes
    -----
    Goreinov-Oseledets-Savostyanov-Tyrtyshnikov-Zamarashkin (2010): start from the
    pivots of a column-pivoted QR of :math:`A^T`, form :math:`B = AA[I]^{-1}`,
    and while :math:`|B_{ij}| = \max|B| >` ``tol`` swap row :math:`I_j` for row
    :math:`i`, which multiplies :math:`|\det A[I]|` by :math:`|B_{ij}| > 1`, and update
    :math:`B` by a rank-one correction (:math:`O(nr)` per swap). On return
    :math:`|\det A[I]|` is within a factor :math:`\mathrm{tol}^r` of a local maximum, and
    the cross interpolation built on the rows obeys the Goreinov-Tyrtyshnikov
    quasi-optimality bounds. The loop is NumPy (one ``argmax`` and one rank-one update
    per swap); a Numba kernel did not pay at the sizes of TT-cross (``n <= 10^4``).

    References
    ----------
    .. [1] S. A. Goreinov, I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov,
       N. L. Zamarashkin, "How to find a good submatrix", in Matrix Methods: Theory,
       Algorithms and Applications, World Scientific, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import maxvol
    >>> A = np.random.default_rng(0).standard_normal((20, 3))
    >>> res = maxvol(A)
    >>> res.indices.shape, res.coefficients.shape
    ((3,), (20, 3))
    """
    A = as_float_array(A, ndim=2)
    n, r = A.shape
    if n < r:
        raise ValueError(f"A must be tall (n >= r), got shape {A.shape}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 1:
        raise ValueError(f"tol={tol!r} must be a real number >= 1")
    max_iter = 10 * r + 100 if max_iter is None else check_int(max_iter, "max_iter", minimum=0)
    return _maxvol(A, float(tol), max_iter)


def _maxvol(A: np.ndarray, tol: float, max_iter: int) -> MaxvolResult:
    r = A.shape[1]
    # Rank-revealing (column-pivoted) QR of A^T: its first r pivots are a well
    # conditioned starting submatrix, which keeps the rank-one updates below accurate.
    _, _, perm = sla.qr(A.T, mode="economic", pivoting=True, check_finite=False)
    piv = np.asarray(perm[:r], dtype=np.int64)
    try:
        B = np.linalg.solve(A[piv].T, A.T).T
    except np.linalg.LinAlgError as exc:
        raise ValueError("A must have full column rank for maxvol") from exc
    if not np.all(np.isfinite(B)):
        raise ValueError("A must have full column rank for maxvol")
    B[piv] = np.eye(r, dtype=B.dtype)  # exact by definition; remove solver rounding
    for it in range(max_iter + 1):
        flat = int(np.argmax(np.abs(B)))
        i, j = divmod(flat, r)
        if abs(B[i, j]) <= tol:
            break
        if it == max_iter:
            warnings.warn(
                f"maxvol stopped after max_iter={max_iter} swaps with max |B| = "
                f"{abs(B[i, j]):.3g} > tol={tol}",
                ConvergenceWarning,
                stacklevel=3,
            )
            break
        # Swap row piv[j] for row i: B <- B - B[:, j] (B[i, :] - e_j) / B[i, j].
        row = B[i].copy()
        row[j] -= 1.0
        B -= np.outer(B[:, j] / B[i, j], row)
        piv[j] = i
    if it:
        # Recompute B from the final rows: no rounding accumulated over the updates.
        B = np.linalg.solve(A[piv].T, A.T).T
        B[piv] = np.eye(r, dtype=B.dtype)
    return MaxvolResult(piv, B)


def _supercore_indices(left: np.ndarray, n1: int, n2: int, right: np.ndarray) -> np.ndarray:
    """Multi-indices (r0 * n1 * n2 * r1, d) of the supercore, in C order (a, i, j, b)."""
    r0, r1 = left.shape[0], right.shape[0]
    kl, kr = left.shape[1], right.shape[1]
    idx = np.empty((r0, n1, n2, r1, kl + 2 + kr), dtype=np.int64)
    idx[..., :kl] = left[:, None, None, None, :]
    idx[..., kl] = np.arange(n1)[None, :, None, None]
    idx[..., kl + 1] = np.arange(n2)[None, None, :, None]
    idx[..., kl + 2 :] = right[None, None, None, :, :]
    return idx.reshape(-1, kl + 2 + kr)


class _Evaluator:
    """Calls ``f`` on index batches, checks what it returns and counts evaluations."""

    def __init__(self, f: Callable, d: int) -> None:
        self.f = f
        self.d = d
        self.count = 0
        self.dtype: np.dtype | None = None

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        vals = np.asarray(self.f(idx))
        self.count += idx.shape[0]
        if vals.shape != (idx.shape[0],):
            raise ValueError(
                f"f must return one value per multi-index: expected shape ({idx.shape[0]},), "
                f"got {vals.shape}"
            )
        dtype = float_dtype(vals.dtype)
        self.dtype = dtype if self.dtype is None else np.promote_types(self.dtype, dtype)
        vals = vals.astype(np.float64, copy=False)
        if not np.all(np.isfinite(vals)):
            bad = int(np.argmax(~np.isfinite(vals)))
            raise ValueError(f"f returned a non-finite value at multi-index {idx[bad].tolist()}")
        return vals


def _local_svd(A: np.ndarray, cap: int, delta_rel: float):
    """Truncate a supercore by SVD: rank by relative tail ``delta_rel`` and ``cap``."""
    U, s, Vt = sla.svd(A, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    sq = s**2
    total = float(np.sum(sq))
    r = _choose_rank(sq, cap, delta_rel**2 * total) if total > 0 else 1
    return U[:, :r], s[:r], Vt[:r]


def _random_index_set(shape: Sequence[int], r: int, rng) -> np.ndarray:
    """``r`` distinct random multi-indices into ``shape`` (all of them if fewer)."""
    size = math.prod(shape)
    if size <= 4 * r:
        flat = rng.permutation(size)[:r]
    else:
        flat = np.unique(rng.integers(0, size, size=4 * r))
        flat = rng.permutation(flat)[:r]
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


def tt_cross(f, shape, /, rank, *, tol=1e-8, n_sweeps=10, rng=None) -> CrossTTResult:
    r"""TT approximation of a tensor given by an entry function (TT-cross, maxvol).

    The full tensor is never formed: only ``O(d n^2 r^2)`` entries per half-sweep are
    evaluated.

    Parameters
    ----------
    f : callable
        ``f(idx) -> values``: ``idx`` is an ``(N, d)`` int64 array of multi-indices,
        the result a length-``N`` real array (vectorised over rows).
    shape : sequence of int
        Tensor shape :math:`(n_1, \dots, n_d)`, ``d >= 2``.
    rank : int or sequence of int
        Maximal TT rank (``int``), the ``d - 1`` maximal inner ranks, or tensorly's
        ``d + 1`` ranks with 1 at both ends. Ranks adapt below it.
    tol : float, default=1e-8
        Relative accuracy: supercores are truncated at :math:`\mathrm{tol}/\sqrt{d - 1}`
        of their norm, and the iteration stops when the relative change between two
        successive half-sweeps is at most ``tol``.
    n_sweeps : int, default=10
        Maximal number of full sweeps (each is a left-to-right and a right-to-left
        half-sweep).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the random initial index sets.

    Returns
    -------
    CrossTTResult
        ``tt``, ``n_evals``, ``converged``, ``n_sweeps`` (half-sweeps done),
        ``rel_change`` and ``ranks``.

    Raises
    ------
    TypeError
        ``f`` not callable; non-integer shape or ranks; complex values from ``f``.
    ValueError
        ``d < 2`` or non-positive sizes; ranks of the wrong length or range; ``f``
        returning the wrong shape or non-finite values; negative ``tol``.

    Warns
    -----
    ConvergenceWarning
        When ``n_sweeps`` sweeps did not reach ``tol``.

    Notes
    -----
    Two-site (DMRG) TT-cross of Savostyanov-Oseledets (2011), built on the TT-cross of
    Oseledets-Tyrtyshnikov (2010). Left index sets :math:`I_{k}` (multi-indices of
    modes :math:`1..k`) and right index sets :math:`J_{k}` (modes :math:`k+1..d`)
    define, at bond :math:`k`, the supercore :math:`A_k = X[I_{k-1}, i_k, i_{k+1},
    J_{k+1}]` reshaped to :math:`(r_{k-1}n_k) \times (n_{k+1}r_{k+1})` (these entries
    are evaluated). Its truncated SVD :math:`U S V^T` gives the new rank :math:`r_k`
    (rank adaptivity) and :func:`maxvol` on :math:`U` (left-to-right) or :math:`V`
    (right-to-left) picks the :math:`r_k` rows or columns that define the next index
    set; the core is the interpolation matrix :math:`U U[I]^{-1}` (every entry bounded by
    ``1.05`` in modulus), and the last supercore of a half-sweep closes the TT. If
    :math:`X` has TT ranks at most ``rank`` the interpolation is exact once the index
    sets are non-degenerate (Oseledets-Tyrtyshnikov 2010, Thm 4.1). The stopping rule
    compares successive interpolants (:func:`tt_norm` of their difference); it is an
    error indicator, not a bound. Validate the result on random entries if it matters.

    Cost: per half-sweep :math:`\sum_k r_{k-1}n_kn_{k+1}r_{k+1}` evaluations of ``f``
    and as many SVDs of :math:`(rn) \times (nr)` matrices.

    References
    ----------
    .. [1] I. Oseledets, E. Tyrtyshnikov, "TT-cross approximation for multidimensional
       arrays", Linear Algebra Appl. 432(1), 70-88, 2010.
    .. [2] D. Savostyanov, I. Oseledets, "Fast adaptive interpolation of
       multi-dimensional arrays in tensor train format", nDS 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import tt_cross
    >>> f = lambda idx: 1.0 / (1.0 + idx.sum(axis=1))
    >>> res = tt_cross(f, (10, 10, 10, 10), 8, tol=1e-6, rng=0)
    >>> res.tt.shape
    (10, 10, 10, 10)
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence | np.ndarray):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    shape = tuple(check_int(n, f"shape[{k}]", minimum=1) for k, n in enumerate(shape))
    d = len(shape)
    if d < 2:
        raise ValueError(f"shape must have d >= 2 entries, got {shape}")
    caps = _tt_rank_caps(rank, shape)
    tol = _check_tol(tol)
    n_sweeps = check_int(n_sweeps, "n_sweeps", minimum=1)
    rng = check_rng(rng)
    evaluate = _Evaluator(f, d)
    delta_rel = tol / math.sqrt(d - 1)

    # Bond k (0..d-2) sits between modes k and k+1. left[k]: (r_k, k+1) indices of modes
    # 0..k; right[k]: (r_k, d-k-1) indices of modes k+1..d-1. Sentinels for the ends.
    left: list[np.ndarray] = [np.empty((0, k + 1), np.int64) for k in range(d - 1)]
    right: list[np.ndarray] = [
        _random_index_set(shape[k + 1 :], min(2, caps[k]), rng) for k in range(d - 1)
    ]
    empty = np.empty((1, 0), dtype=np.int64)
    cores: list[np.ndarray | None] = [None] * d
    previous: list[np.ndarray] | None = None
    rel_change, converged, half = math.inf, False, 0

    def supercore(k):
        lk = left[k - 1] if k > 0 else empty
        rk = right[k + 1] if k < d - 2 else empty
        vals = evaluate(_supercore_indices(lk, shape[k], shape[k + 1], rk))
        return vals.reshape(lk.shape[0] * shape[k], shape[k + 1] * rk.shape[0]), lk, rk

    for half in range(1, 2 * n_sweeps + 1):
        if half % 2 == 1:  # left to right
            for k in range(d - 1):
                A, lk, rk = supercore(k)
                U, s, Vt = _local_svd(A, caps[k], delta_rel)
                piv = _maxvol(U, 1.05, 10 * U.shape[1] + 100)
                r = U.shape[1]
                a, i = np.divmod(piv.indices, shape[k])
                left[k] = np.concatenate([lk[a], i[:, None]], axis=1)
                cores[k] = piv.coefficients.reshape(lk.shape[0], shape[k], r)
                if k == d - 2:
                    last = (U[piv.indices] * s) @ Vt
                    cores[d - 1] = last.reshape(r, shape[d - 1], 1)
        else:  # right to left
            for k in range(d - 2, -1, -1):
                A, lk, rk = supercore(k)
                U, s, Vt = _local_svd(A, caps[k], delta_rel)
                piv = _maxvol(np.ascontiguousarray(Vt.T), 1.05, 10 * Vt.shape[0] + 100)
                r = Vt.shape[0]
                j, b = np.divmod(piv.indices, rk.shape[0])
                right[k] = np.concatenate([j[:, None], rk[b]], axis=1)
                cores[k + 1] = np.ascontiguousarray(piv.coefficients.T).reshape(
                    r, shape[k + 1], rk.shape[0]
                )
                if k == 0:
                    first = (U * s) @ Vt[:, piv.indices]
                    cores[0] = first.reshape(1, shape[0], r)
        current = [np.asarray(c) for c in cores]
        if previous is not None:
            norm = tt_norm(current)
            diff = tt_norm(tt_add(current, previous, beta=-1.0))
            rel_change = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
            if rel_change <= tol:
                converged = True
                break
        previous = current
    if not converged:
        warnings.warn(
            f"tt_cross did not converge in n_sweeps={n_sweeps}: relative change "
            f"{rel_change:.3g} > tol={tol:.3g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    dtype = evaluate.dtype if evaluate.dtype is not None else np.dtype(np.float64)
    out = [np.ascontiguousarray(c, dtype=dtype) for c in current]
    return CrossTTResult(
        TTTensor(out), int(evaluate.count), converged, half, float(rel_change), _ranks_of(out)
    )


# ---------------------------------------------------------------------------------------
# randomized Tucker (randomized STHOSVD)
# ---------------------------------------------------------------------------------------


def randomized_tucker(X, rank, /, *, oversample=10, n_iter=1, rng=None) -> TuckerResult:
    r"""Randomized sequentially truncated HOSVD (Tucker decomposition).

    Parameters
    ----------
    X : array_like, shape (n_1, ..., n_d)
        Real tensor of order ``d >= 2``.
    rank : int or sequence of int
        Multilinear rank: one ``int`` for every mode (clamped to :math:`n_i`) or ``d``
        ints with :math:`1 \le r_i \le n_i`.
    oversample : int, default=10
        Oversampling :math:`p` of each range finder.
    n_iter : int, default=1
        Power iterations of each range finder.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the test matrices.

    Returns
    -------
    TuckerResult
        ``tucker`` (:class:`tensorly.tucker_tensor.TuckerTensor`; core of shape
        ``ranks``, factors with orthonormal columns, dtype of ``X``), ``error_bound``
        (:math:`\|X - \hat X\|_F`, computed exactly from the discarded parts; precision
        floor :math:`\sqrt{u}\|X\|_F`) and ``ranks``.

    Raises
    ------
    TypeError
        Complex or non-numeric ``X``; non-integer ranks, ``oversample``, ``n_iter``.
    ValueError
        Order below 2, empty or non-finite ``X``; ranks of the wrong length or range.

    Notes
    -----
    Minster-Saibaba-Kilmer (2020), randomized STHOSVD: modes are processed in order;
    for mode :math:`n` the mode-:math:`n` unfolding :math:`G_{(n)}` of the current core
    gets a randomized range finder :math:`Q` with :math:`\ell = r_n + p` columns (an
    exact SVD when that is no more expensive, as in :func:`randomized_tt_svd`),
    :math:`B = Q^TG_{(n)}` is truncated to rank :math:`r_n` by its SVD,
    :math:`U_n = QW`, and the core shrinks to :math:`W^TB`. The steps are nested
    orthogonal projections, so
    :math:`\|X - \hat X\|_F^2 = \sum_n [(\|G_{(n)}\|_F^2 - \|B\|_F^2) +
    \sum_{j > r_n}\sigma_j(B)^2]` exactly. In expectation (Gaussian, ``n_iter=0``,
    :math:`p \ge 2`), :math:`\mathbb E\|X - \hat X\|_F^2 \le \sum_n (1 + r_n/(p - 1))
    \tau_n^2` with :math:`\tau_n` the rank-:math:`r_n` tail of the mode-:math:`n`
    unfolding of :math:`X` (:func:`rnla.bounds.randomized_tucker_bound`).

    Cost: about :math:`2(2q + 2)\ell_n\,|G|` flops for mode :math:`n`, :math:`|G|` the
    current core size, which shrinks from mode to mode.

    References
    ----------
    .. [1] R. Minster, A. K. Saibaba, M. E. Kilmer, "Randomized algorithms for low-rank
       tensor decompositions in the Tucker format", SIAM J. Math. Data Sci. 2(1), 2020.
       arXiv:1905.07311.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.tensor import randomized_tucker
    >>> X = np.random.default_rng(0).standard_normal((20, 30, 40))
    >>> res = randomized_tucker(X, [3, 4, 5], rng=0)
    >>> res.tucker.core.shape, [U.shape for U in res.tucker.factors]
    ((3, 4, 5), [(20, 3), (30, 4), (40, 5)])
    """
    X = _as_tensor(X)
    shape, d = X.shape, X.ndim
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        r = check_int(rank, "rank", minimum=1)
        ranks = [min(r, n) for n in shape]
    elif isinstance(rank, str) or not isinstance(rank, Sequence | np.ndarray):
        raise TypeError(f"rank must be an int or a sequence of d = {d} ints, got {rank!r}")
    else:
        if len(rank) != d:
            raise ValueError(
                f"rank must list d = {d} multilinear ranks for a tensor of shape {shape}, "
                f"got {len(rank)}"
            )
        ranks = [
            check_int(r, f"rank[{k}]", minimum=1, maximum=n)
            for k, (r, n) in enumerate(zip(rank, shape, strict=True))
        ]
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(n_iter, "n_iter", minimum=0)
    rng = check_rng(rng)
    G, factors, err2 = X, [], 0.0
    for mode in range(d):
        core_shape = list(G.shape)
        C = np.moveaxis(G, mode, 0).reshape(core_shape[mode], -1)
        U, R, step_err2 = _randomized_step(C, ranks[mode], p, q, "gaussian", rng)
        err2 += step_err2
        factors.append(np.ascontiguousarray(U))
        core_shape[mode] = U.shape[1]
        rest = core_shape[:mode] + core_shape[mode + 1 :]
        G = np.moveaxis(R.reshape([U.shape[1], *rest]), 0, mode)
    G = np.ascontiguousarray(G)
    return TuckerResult(
        TuckerTensor((G, factors)), math.sqrt(err2), tuple(int(U.shape[1]) for U in factors)
    )
