r"""Randomized QR: sketch-preconditioned CholeskyQR and randomized column pivoting.

* :func:`cholqr_sketch` - thin QR of a tall matrix with BLAS-3 operations only: the QR
  of a small sketch :math:`SA` preconditions :math:`A` so that CholeskyQR, otherwise
  unstable beyond :math:`\kappa(A) \approx u^{-1/2}`, delivers orthogonality at the
  level of the unit roundoff for :math:`\kappa(A)` up to about :math:`u^{-1}`.
* :func:`qrcp` - column-pivoted QR whose pivots are chosen block by block from a small
  Gaussian sketch of the trailing matrix (HQRRP), so that the bulk of the work is
  blocked Householder QR instead of LAPACK ``geqp3``'s half-BLAS-2 updates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from scipy.linalg import get_blas_funcs, get_lapack_funcs

from rnla import _lapack
from rnla import sketch as _sketch
from rnla._validation import as_float_array, check_int, check_rng

__all__ = ["QRCPResult", "QRResult", "cholqr_sketch", "qrcp"]


class QRResult(NamedTuple):
    r"""Thin QR factorisation :math:`A = QR`.

    Attributes
    ----------
    Q : ndarray, shape (m, n)
        Orthonormal columns.
    R : ndarray, shape (n, n)
        Upper triangular.
    orthogonality : float
        A-posteriori estimate of :math:`\|Q^TQ - I\|_2`: :math:`n\,u\,\kappa(R_1)^2`
        with :math:`R_1` the Cholesky factor of the last step (the first-order
        rounding analysis of CholeskyQR, Yamamoto et al. 2015, up to a modest
        constant); an estimate, not a bound.
    """

    Q: np.ndarray
    R: np.ndarray
    orthogonality: float


class QRCPResult(NamedTuple):
    r"""Column-pivoted QR :math:`A[:, \mathrm{pivots}] = QR` (truncated to ``rank``).

    Attributes
    ----------
    Q : ndarray, shape (m, k)
        Orthonormal columns, ``k = rank`` (or ``min(m, n)``).
    R : ndarray, shape (k, n)
        Upper trapezoidal: ``R[:, :k]`` triangular, ``R[:, k:]`` the coupling block
        :math:`R_{12}`.
    pivots : ndarray of int64, shape (n,)
        Column permutation; the first ``k`` are the selected columns.
    growth : float
        Rank-revealing quality :math:`\max_{ij}|(R_{11}^{-1}R_{12})_{ij}|` of the leading
        ``k x k`` block (``f`` of strong RRQR; Gu-Eisenstat guarantee ``f <= 2`` for
        their algorithm, random pivots typically give a small value). NaN when
        ``k = n`` (no trailing block), inf when :math:`R_{11}` is exactly singular
        (``k`` above the rank of ``A``).
    """

    Q: np.ndarray
    R: np.ndarray
    pivots: np.ndarray
    growth: float


# ---------------------------------------------------------------------------------------
# sketch-preconditioned CholeskyQR
# ---------------------------------------------------------------------------------------


def _cholqr_step(Q: np.ndarray, trsm, syrk):
    """Run one in-place CholeskyQR step on C-ordered Q (m, n); return (R, orth. estimate)."""
    # Q is C-ordered, so Q.T is a Fortran (n, m) array: BLAS sees it without a copy.
    G = syrk(1.0, Q.T, trans=0, lower=0)  # upper triangle of Q^T Q
    G = np.triu(G) + np.triu(G, 1).T
    R = sla.cholesky(G, lower=False, check_finite=False)
    # Q <- Q R^{-1}  <=>  Q^T <- R^{-T} Q^T (left solve on the Fortran view, in place)
    trsm(1.0, R, Q.T, side=0, lower=0, trans_a=1, overwrite_b=1)
    n = G.shape[0]
    kappa = float(np.linalg.cond(R.astype(np.float64)))
    return R, n * float(np.finfo(Q.dtype).eps) * kappa**2


def cholqr_sketch(A, /, *, sketch_size=None, n_steps=1, rng=None) -> QRResult:
    r"""Thin QR of a tall matrix by sketch-preconditioned CholeskyQR.

    Parameters
    ----------
    A : array_like, shape (m, n)
        Tall dense matrix, ``m >= n``, of full column rank (``kappa(A) <~ 1/u``).
    sketch_size : int, optional
        Rows of the sparse sign sketch, ``n <= sketch_size <= m``; default
        ``min(m, 4n)`` (distortion about 1/2).
    n_steps : int, default=1
        CholeskyQR steps after the preconditioning (1 = ``rand_cholQR``; 2 adds one
        re-orthogonalisation, for float32 or :math:`\kappa` near :math:`1/u`).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Randomness of the sketch.

    Returns
    -------
    QRResult
        ``Q`` (m, n) C-ordered, ``R`` (n, n) in the dtype of ``A``, and the
        ``orthogonality`` estimate.

    Raises
    ------
    TypeError
        Sparse, operator or complex input.
    ValueError
        ``A`` wide, empty or non-finite; numerically rank-deficient ``A`` (the
        preconditioned Gram matrix is not positive definite).

    Notes
    -----
    **Algorithm** (Fan, Guo and Lin; Balabanov; Higgins, Szyld, Boman and Yamazaki
    [1]_). Sketch :math:`SA` with a sparse sign sketch and take its Householder QR,
    :math:`SA = Q_sR_s`; :math:`Q_1 = AR_s^{-1}` (TRSM); if :math:`S` embeds
    :math:`\operatorname{range}(A)` with distortion :math:`\varepsilon`,
    :math:`\kappa(Q_1) \le (1+\varepsilon)/(1-\varepsilon)` (in exact arithmetic;
    rounding in the TRSM adds :math:`O(u\,\kappa(A))`, harmless while
    :math:`\kappa(A) \ll 1/u`). Then CholeskyQR of the well-conditioned :math:`Q_1`:
    :math:`G = Q_1^TQ_1` (SYRK), :math:`G = R_1^TR_1`, :math:`Q = Q_1R_1^{-1}`; its
    loss of orthogonality is :math:`O(u\,\kappa(Q_1)^2)`, i.e. :math:`O(u)`.
    :math:`R = R_1R_s`.

    **Cost.** Sketch :math:`8mn` additions; QR of the sketch :math:`O(kn^2)`; TRSM
    :math:`mn^2`; per CholeskyQR step SYRK :math:`mn^2` + TRSM :math:`mn^2`: about
    :math:`3mn^2` flops for ``n_steps=1``, all BLAS-3, against :math:`4mn^2` for
    Householder QR with an explicit ``Q``, whose panel factorisations are BLAS-2.
    Memory: ``Q`` (a copy of ``A``) and :math:`O(kn)`.

    References
    ----------
    .. [1] A. J. Higgins, D. B. Szyld, E. G. Boman and I. Yamazaki, "Analysis of
       randomized Householder-Cholesky QR factorization with multisketching",
       arXiv:2309.05868 (2023); O. Balabanov, "Randomized Cholesky QR factorizations",
       arXiv:2210.09953 (2022).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.qr import cholqr_sketch
    >>> A = np.random.default_rng(0).standard_normal((1000, 20))
    >>> Q, R, orth = cholqr_sketch(A, rng=0)
    >>> bool(np.allclose(Q @ R, A)), bool(np.linalg.norm(Q.T @ Q - np.eye(20)) < 1e-13)
    (True, True)
    """
    A = as_float_array(A, name="A", ndim=2)
    m, n = A.shape
    if m < n:
        raise ValueError(f"A must be tall (m >= n) for cholqr_sketch, got shape {A.shape}")
    k = min(m, 4 * n) if sketch_size is None else None
    if k is None:
        k = check_int(sketch_size, "sketch_size", minimum=n, maximum=m)
    n_steps = check_int(n_steps, "n_steps", minimum=1, maximum=3)
    rng = check_rng(rng)
    S = _sketch.sparse_sign(k, m, nnz_per_col=min(8, k), rng=rng)
    R_s = np.linalg.qr(np.asarray(S @ A, dtype=np.float64), mode="r")
    d = np.abs(np.diag(R_s))
    if d.min() <= n * np.finfo(A.dtype).eps * d.max():
        raise ValueError(
            "A is numerically rank deficient: the sketch's R has |R_ii| ratio "
            f"{d.min() / d.max():.3g}; cholqr_sketch needs full column rank"
        )
    trsm, syrk = get_blas_funcs(("trsm", "syrk"), (A,))
    R_s = R_s.astype(A.dtype)
    Q = np.array(A, order="C", copy=True)
    trsm(1.0, R_s, Q.T, side=0, lower=0, trans_a=1, overwrite_b=1)  # Q = A R_s^{-1}
    R = R_s
    orth = math.inf
    for _ in range(n_steps):
        try:
            R_i, orth = _cholqr_step(Q, trsm, syrk)
        except np.linalg.LinAlgError:
            raise ValueError(
                "A is numerically rank deficient or too ill conditioned for CholeskyQR "
                "(the preconditioned Gram matrix is not positive definite)"
            ) from None
        R = R_i @ R
    return QRResult(Q, np.triu(R).astype(A.dtype), orth)


# ---------------------------------------------------------------------------------------
# randomized column pivoting (HQRRP)
# ---------------------------------------------------------------------------------------


def _move_pivots(sel, j, n, W, Y, perm):
    """Bring the columns ``sel`` (absolute indices) to positions ``j, j+1, ...``.

    Only the columns that change place are copied (at most twice the block): the
    displaced columns of the block take the vacated positions.
    """
    bb = sel.shape[0]
    src = np.arange(j, n)
    chosen = np.zeros(n - j, dtype=bool)
    chosen[sel - j] = True
    vacated = sel[sel >= j + bb]
    displaced = np.flatnonzero(~chosen[:bb]) + j
    src[vacated - j] = displaced
    src[:bb] = sel
    changed = np.flatnonzero(src != np.arange(j, n)) + j
    if changed.size:
        from_ = src[changed - j]
        W[:, changed] = W[:, from_]
        Y[:, changed] = Y[:, from_]
        perm[changed] = perm[from_]


_SELECTIONS = ("lu", "qrcp")


def qrcp(A, /, *, rank=None, block_size=128, oversample=8, selection="lu", rng=None) -> QRCPResult:
    r"""Column-pivoted QR with pivots chosen from sketches (HQRRP).

    Parameters
    ----------
    A : array_like, shape (m, n)
        Dense matrix.
    rank : int, optional
        Stop after ``rank`` pivots (a truncated, rank-revealing factorisation); default
        ``min(m, n)``.
    block_size : int, default=128
        Pivots selected per block :math:`b` (the rank of each trailing update).
    oversample : int, default=8
        Extra sketch rows :math:`p`; the sketch has :math:`b + p` rows.
    selection : {"lu", "qrcp"}, default="lu"
        How each block's pivots are chosen from the sketch of the trailing columns:
        ``"lu"`` - LU with partial pivoting of the transposed sketch (``getrf``,
        level-3 BLAS; Dong and Martinsson [3]_); ``"qrcp"`` - greedy column-pivoted QR
        of the sketch (``geqp3``, as in HQRRP [1]_; closer to ``geqp3`` on ``A``,
        but its half-BLAS-2 sweeps over the ``(b+p) x n`` sketch cost about a quarter
        of the factorisation at ``n = 4000``).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Randomness of the Gaussian sketch.

    Returns
    -------
    QRCPResult
        ``Q`` (m, k), ``R`` (k, n), ``pivots`` (n,), ``growth``; ``A[:, pivots] = QR``
        up to rounding (exactly for the first ``k`` columns' span, and
        ``A[:, pivots[k:]] - Q R[:, k:]`` is the residual of the truncation).

    Raises
    ------
    TypeError
        Sparse, operator or complex input.
    ValueError
        Empty or non-finite ``A``; ``rank`` outside ``[1, min(m, n)]``.

    Notes
    -----
    **Algorithm** (Martinsson, Quintana-Ortí, Heavner and van de Geijn [1]_; Duersch
    and Gu [2]_). Draw a Gaussian :math:`G` ((b+p) x m) and sketch :math:`Y = GA`. For
    each block: the small sketch of the trailing columns chooses :math:`b` pivots
    (columns whose sketches are far from each other's span are far in :math:`A` too,
    by the embedding property; ``selection``); the columns are permuted; the
    :math:`b`-column panel is factored by recursive Householder QR (``geqrt3``, which
    also gives the compact WY factor ``T``) and the trailing matrix updated in place by
    the blocked reflectors (``larfb``: GEMMs of rank :math:`b`). The sketch is
    downdated instead of recomputed: with :math:`GQ = [G_1', G_2']`,
    :math:`G_2'A_{22} = Y_2 - G_1'R_{12}`, and :math:`G_2'` sketches the next
    trailing matrix.

    **Quality.** Pivots are chosen on the sketch, not on :math:`A`; the diagonal of
    ``R`` tracks the singular values like ``geqp3``'s, with no worst-case guarantee (as
    for ``geqp3`` itself, the Kahan matrix defeats both). Measured worst ratio
    :math:`\max_i \max(r_i, 1/r_i)`, :math:`r_i = |R_{ii}|/|R^{\mathrm{geqp3}}_{ii}|`,
    on 1000 x 1000 test matrices (graded spectrum, devil's stairs, rank 300, scaled
    columns, Gaussian; Kahan): ``"lu"`` 1.5-2.5 (Kahan 4.3), ``"qrcp"`` 1.3-1.7 (Kahan
    2.1); the median ratio is 1.00 for both. ``growth`` reports
    :math:`\max|R_{11}^{-1}R_{12}|` at the truncation rank.

    **Cost.** Householder QR (:math:`2mn^2 - 2n^3/3`) plus sketch
    :math:`2(b+p)mn` plus per block the pivot selection on :math:`(b+p) \times n`
    (:math:`O((b+p)^2 n)`) and the sketch downdate (:math:`4(b+p)mb`); all updates
    are level-3 BLAS on views of one Fortran array; ``Q`` is accumulated from the
    stored block reflectors (``larfb``), :math:`2mk^2 - 2k^3/3` flops for
    ``k = rank`` columns. Measured on 4000 x 4000 (``benchmarks/qr.py``, 2 cores,
    OpenBLAS 0.3.30): as fast as SciPy's unpivoted ``qr`` (geqrf + orgqr), 0.34-0.45x
    the time of ``qr(pivoting=True)`` (geqp3). The pivoting costs nearly nothing, so
    the speed-up over geqp3 is bounded by geqp3's own overhead over geqrf, which was
    1.67x (quiet) to 2.9x (loaded machine) there.

    References
    ----------
    .. [1] P.-G. Martinsson, G. Quintana-Ortí, N. Heavner and R. van de Geijn,
       "Householder QR factorization with randomization for column pivoting (HQRRP)",
       SIAM J. Sci. Comput. 39 (2017).
    .. [2] J. A. Duersch and M. Gu, "Randomized QR with column pivoting", SIAM J. Sci.
       Comput. 39 (2017).
    .. [3] Y. Dong and P.-G. Martinsson, "Simpler is better: a comparative study of
       randomized pivoting algorithms for CUR and interpolative decompositions",
       Adv. Comput. Math. 49 (2023).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.qr import qrcp
    >>> A = np.random.default_rng(0).standard_normal((300, 200))
    >>> Q, R, piv, growth = qrcp(A, rng=0)
    >>> bool(np.allclose(Q @ R, A[:, piv]))
    True
    """
    A = as_float_array(A, name="A", ndim=2)
    m, n = A.shape
    kmax = min(m, n)
    rank = kmax if rank is None else check_int(rank, "rank", minimum=1, maximum=kmax)
    b = check_int(block_size, "block_size", minimum=1)
    p = check_int(oversample, "oversample", minimum=0)
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}")
    rng = check_rng(rng)
    dtype = A.dtype
    geqp3, getrf = get_lapack_funcs(("geqp3", "getrf"), (A,))

    W = np.array(A, order="F", copy=True)
    perm = np.arange(n)
    ell = min(b + p, m)
    # G holds Omega Q_1 ... Q_t (ell x m); its trailing columns sketch the trailing rows
    G = np.asfortranarray(rng.standard_normal((ell, m)).astype(dtype))
    Y = np.asfortranarray(G @ W)
    blocks = []
    j = 0
    while j < rank:
        bb = min(b, rank - j)
        # pivots from the sketch of the trailing columns
        if selection == "qrcp":
            _, jpvt, _, _, _ = geqp3(Y[:, j:])
            sel = jpvt[:bb] - 1
        else:
            _, ipiv, _ = getrf(Y[:, j:].T)
            order = np.arange(n - j)
            for i, q in enumerate(ipiv[: min(bb, ipiv.shape[0])]):
                order[i], order[q] = order[q], order[i]
            sel = order[:bb]
        _move_pivots(j + sel, j, n, W, Y, perm)
        # panel QR in place, then the trailing update by the blocked reflectors (larfb:
        # GEMMs on the strided view of W, no copy of the trailing matrix)
        panel = W[j:, j : j + bb]
        T = _lapack.geqrt3(panel)
        blocks.append((j, bb, T))
        if j + bb < n:
            _lapack.larfb("L", "T", panel, T, W[j:, j + bb :])
            # sketch downdate: [G_1', G_2'] = G_old Q_t; G_2' A22 = Y_2 - G_1' R12
            _lapack.larfb("R", "N", panel, T, G[:, j:])
            _lapack.gemm(-1.0, G[:, j : j + bb], W[j : j + bb, j + bb :], 1.0, Y[:, j + bb :])
        j += bb

    # R: the upper trapezoid of W[:rank], copied block column by block column (Fortran
    # to Fortran; np.triu on the whole array costs as much as a tenth of the QR)
    R = np.zeros((rank, n), dtype=dtype, order="F")
    for j, bb, _ in blocks:
        R[: j + bb, j : j + bb] = W[: j + bb, j : j + bb]
        R[j : j + bb, j : j + bb] = np.triu(R[j : j + bb, j : j + bb])
    R[:, rank:] = W[:rank, rank:]
    # Q = H_1 ... H_rank applied to the first rank columns of the identity, block by
    # block from the last (each block touches only its trailing rows and columns)
    Q = np.zeros((m, rank), dtype=dtype, order="F")
    Q[np.arange(rank), np.arange(rank)] = 1.0
    for j, bb, T in reversed(blocks):
        _lapack.larfb("L", "N", W[j:, j : j + bb], T, Q[j:, j:])
    growth = math.nan
    if rank < n:
        try:
            T = sla.solve_triangular(R[:, :rank], R[:, rank:], lower=False, check_finite=False)
            growth = float(np.max(np.abs(T))) if T.size else math.nan
        except np.linalg.LinAlgError:  # exactly singular R11 (rank above the matrix rank)
            growth = math.inf
    return QRCPResult(Q, R, perm.astype(np.int64), growth)
