r"""Randomized low-rank approximation: range finder, randomized SVD family, QB, single pass.

Every routine touches ``A`` only through products :math:`AX` and :math:`A^\top Y` (or,
for :func:`single_pass_svd`, through one linear sketch of each row block), so ``A`` may
be a dense array, a ``scipy.sparse`` matrix, a
:class:`scipy.sparse.linalg.LinearOperator` or a ``dask.array.Array``.

=============================  ============================================  ======================
function                       algorithm                                     passes over ``A``
=============================  ============================================  ======================
:func:`range_finder`           randomized subspace iteration (HMT 2011)      ``2q + 1``
:func:`rsvd`                   block Krylov (Musco), or HMT Alg. 4.4 + 5.1   ``2q + 2``
:func:`randqb`                 blocked adaptive QB (Yu-Gu-Li 2018, Alg. 2)   ``(2q + 2)`` per block
:func:`single_pass_svd`        Tropp-Yurtsever-Udell-Cevher 2017             1 (streamable)
:func:`reigh`                  range finder + Rayleigh-Ritz (HMT Alg. 5.3)   ``2q + 2``
:func:`generalized_nystrom`    Nakatsukasa 2020, stabilised                  1
=============================  ============================================  ======================

Here ``q`` is ``n_iter``. Every result carries ``n_passes``, the passes it made.

**dask input** stays lazy: :func:`range_finder`, :func:`rsvd` and :func:`single_pass_svd`
run on the row blocks of ``A`` with *fused* passes (each block read once gives
:math:`A_iX` and :math:`A_i^\top A_iX`), so subspace iteration takes ``q + 1`` passes,
block Krylov ``q + 2`` and the single-pass SVD exactly 1; the long factor (``U`` of a
tall matrix) is returned as a dask array kept in the cluster, the small ones as NumPy.
The Gaussian test matrices are drawn per chunk from a counter-based scheme
(``rnla._random``), so the same ``rng`` gives the same result, to rounding, for an
in-memory array and for any chunking. :func:`randqb`, :func:`reigh` and
:func:`generalized_nystrom` take one pass per product (``n x b`` results on the client).

Orthonormalisation between products ("normalizer") defaults to
Cholesky-QR, which runs at BLAS-3 speed; it falls back to shifted Cholesky-QR3 (Fukaya et
al. 2020) and finally to Householder QR when the block is too ill-conditioned, so that the
result is orthonormal to working precision in every case (exactly low-rank input included). For
float32 input the Gram matrices are formed in float64 (mixed-precision Cholesky-QR), so
that float32 stays as accurate as a Householder QR in float32.

References
----------
- [HMT11] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness:
  probabilistic algorithms for constructing approximate matrix decompositions",
  SIAM Review 53(2), 2011. arXiv:0909.4061.
- [MM15] C. Musco, C. Musco, "Randomized block Krylov methods for stronger and faster
  approximate singular value decomposition", NeurIPS 2015. arXiv:1504.05477.
- [YGL18] W. Yu, Y. Gu, Y. Li, "Efficient randomized algorithms for the fixed-precision
  low-rank matrix approximation", SIAM J. Matrix Anal. Appl. 39(3), 2018.
  arXiv:1606.09402.
- [TYUC17] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Practical sketching
  algorithms for low-rank matrix approximation", SIAM J. Matrix Anal. Appl. 38(4),
  2017. arXiv:1609.00048.
- [Nak20] Y. Nakatsukasa, "Fast and stable randomized low-rank matrix approximation",
  arXiv:2009.11392, 2020.
- [FKNYY20] T. Fukaya, R. Kannan, Y. Nakatsukasa, Y. Yamamoto, Y. Yanagisawa, "Shifted
  Cholesky QR for computing the QR factorization of ill-conditioned matrices",
  SIAM J. Sci. Comput. 42(1), 2020.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator
from threadpoolctl import ThreadpoolController

from rnla import _random
from rnla import sketch as _sketch
from rnla._dask import is_dask_array
from rnla._results import EighResult, QBResult, SVDResult, _with_passes
from rnla._validation import (
    AccuracyWarning,
    ConvergenceWarning,
    as_float_array,
    as_sparse,
    check_int,
    check_option,
    check_rank,
    check_rng,
    float_dtype,
)
from rnla.operators import _Operator, _wrap

__all__ = [
    "EighResult",
    "QBResult",
    "SVDResult",
    "generalized_nystrom",
    "randqb",
    "range_finder",
    "reigh",
    "rsvd",
    "single_pass_svd",
]

_SKETCHES = {
    "gaussian": None,  # drawn directly as an (n, size) array: one GEMM, no operator
    "rademacher": _sketch.rademacher,
    "orthogonal_gaussian": _sketch.orthogonal_gaussian,
    "srht": _sketch.srht,
    "countsketch": _sketch.countsketch,
    # The default 8 nonzeros per column cannot exceed the sketch size: clamp it for the
    # small problems (min(m, n) < 8) a user did not size the sketch for.
    "sparse_sign": lambda size, n, *, rng: _sketch.sparse_sign(
        size, n, nnz_per_col=min(8, size), rng=rng
    ),
}
_NORMALIZERS = ("auto", "cholqr", "qr", "lu", "none")
_METHODS = ("subspace", "krylov")


_CONTROLLER: list = []


def _single_threaded_blas():
    """Context keeping BLAS on one thread (through :mod:`threadpoolctl`).

    For the small ``l x l`` LAPACK calls (Cholesky, triangular inverse, eigh, SVD):
    OpenBLAS's threaded versions of them are slower than one thread, and 10-100x slower
    when the machine is busy (measured: a 60 x 60 triangular solve 3.7 ms at load 1).
    """
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _as_op(A, name: str = "A") -> _Operator:
    """Validate ``A`` (finite, real, 2-D, non-empty) and wrap it without copying."""
    return _wrap(A, name=name)


# ---------------------------------------------------------------------------------------
# orthonormalisation
# ---------------------------------------------------------------------------------------


def _householder(Y: np.ndarray, *, with_r: bool = False):
    """Orthonormal basis by Householder QR; orthonormal even for rank-deficient ``Y``."""
    Q, R = sla.qr(Y, mode="economic", check_finite=False)
    return (Q, R) if with_r else Q


def _cholqr_pass(Y64: np.ndarray, shift: bool, G: np.ndarray | None = None):
    """One Cholesky-QR pass in float64; returns ``(Q, R)`` or ``None`` on breakdown.

    ``G`` is the Gram matrix ``Y^T Y`` if the caller already has it. ``R^{-1}`` is
    formed explicitly (``l x l``, negligible) and applied by GEMM: BLAS-3 throughput,
    and none of the LAPACK panel factorisations whose threaded versions stall on busy
    machines. The backward error of the product is that of a triangular solve up to a
    factor ``kappa(R)``, which the next pass removes.
    """
    G = Y64.T @ Y64 if G is None else G.copy()
    if shift:
        # [FKNYY20], eq. (3.1): s = 11 (m l + l (l + 1)) u ||Y||_2^2, with the Frobenius
        # norm (trace of G) as an upper bound of ||Y||_2^2.
        m, c = Y64.shape
        s = 11.0 * (m * c + c * (c + 1)) * np.finfo(np.float64).eps * np.trace(G)
        G[np.diag_indices_from(G)] += s
    with _single_threaded_blas():
        try:
            R = sla.cholesky(G, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(R).all() or np.min(np.abs(np.diag(R))) == 0:
            return None
        Rinv = sla.solve_triangular(R, np.eye(R.shape[0]), lower=False, check_finite=False)
    Q = Y64 @ Rinv
    return (Q, R) if np.isfinite(Q).all() else None


def _cholqr(Y: np.ndarray, *, final: bool, with_r: bool = False, info: bool = False):
    """Cholesky-QR with a shifted-CholeskyQR3 fallback and a Householder last resort.

    Intermediate normalisations (``final=False``) only need a well-conditioned basis of
    ``range(Y)``: one pass, two if the first needed the shift. A final basis must be
    orthonormal to working precision: passes repeat until the Gram matrix of the input of
    a pass is within 0.1 of the identity, after which that pass gives ``O(u)``
    orthogonality (CholeskyQR2 analysis, [FKNYY20] §2); the Gram matrix of the test is
    the one the pass factors, so the check is free. The Gram matrices are formed in
    float64 even for float32 data (mixed precision), which squares ``u64``, not ``u32``.
    With ``with_r`` the triangular factor ``R`` (``Y = Q R``) is returned as well; with
    ``info`` a flag telling whether the Householder fallback was used is appended.
    """
    dtype = Y.dtype

    def finish(Q, R, fell_back):
        Q = Q.astype(dtype, copy=False)
        out = (Q, R.astype(dtype, copy=False)) if with_r else (Q,)
        out = (*out, fell_back) if info else out
        return out if len(out) > 1 else out[0]

    def fallback():
        Q, R = _householder(Y, with_r=True)
        return finish(Q, R, True)

    Q = np.asarray(Y, dtype=np.float64)
    with np.errstate(all="ignore"):
        G = Q.T @ Q
        if final and np.abs(G - np.eye(G.shape[0])).max() <= 0.1:
            # Already nearly orthonormal: one pass gives O(u) orthogonality.
            out = _cholqr_pass(Q, shift=False, G=G)
            return fallback() if out is None else finish(*out, False)
        out = _cholqr_pass(Q, shift=False, G=G)
        shifted = out is None
        if shifted:
            out = _cholqr_pass(Q, shift=True)
        if out is None:
            return fallback()
        Q, R = out
        if not final and not shifted:
            return finish(Q, R, False)
        eye = np.eye(Q.shape[1])
        for _ in range(3):
            G = Q.T @ Q
            converged = np.abs(G - eye).max() <= 0.1
            out = _cholqr_pass(Q, shift=False, G=G)
            if out is None:
                return fallback()
            Q, R = out[0], out[1] @ R
            if converged or not final:
                return finish(Q, R, False)
    return fallback()


def _lu_normalize(Y: np.ndarray) -> np.ndarray:
    """``P L`` of a partially pivoted LU: a well-conditioned basis, not orthonormal."""
    return sla.lu(Y, permute_l=True, check_finite=False)[0]


def _normalize(Y: np.ndarray, normalizer: str, *, final: bool) -> np.ndarray:
    """Basis of ``range(Y)``; orthonormal when ``final``, merely well scaled otherwise."""
    if final:
        return _cholqr(Y, final=True) if normalizer == "cholqr" else _householder(Y)
    if normalizer == "cholqr":
        return _cholqr(Y, final=False)
    if normalizer == "qr":
        return _householder(Y)
    if normalizer == "lu":
        return _lu_normalize(Y)
    return Y  # "none"


def _project_out(Z: np.ndarray, Q: np.ndarray | None) -> np.ndarray:
    """Block classical Gram-Schmidt, twice ("twice is enough"), against ``Q``."""
    if Q is None or Q.shape[1] == 0:
        return Z
    for _ in range(2):
        Z = Z - Q @ (Q.T @ Z)
    return Z


def _orth_against(Z: np.ndarray, Q: np.ndarray | None, normalizer: str) -> np.ndarray:
    """Orthonormal block spanning ``(I - Q Q^T) Z`` and orthogonal to ``Q``.

    Block CGS2 ("twice is enough"), the final orthonormalisation, then a check
    (one GEMM) of the orthogonality to ``Q``. Normalising the projected block multiplies
    its residual components along ``Q`` by up to its condition number, which is large
    when the Krylov space is nearly exhausted (deflation); then the components are
    projected out once more and the block re-orthonormalised. A rank-deficient block
    is completed by the Householder fallback with rounding-noise directions, which are
    harmless: they are orthonormal, and every later product uses the basis itself.
    """
    if Q is None or Q.shape[1] == 0:
        return _normalize(Z, normalizer, final=True)
    Z = _project_out(Z, Q)
    if normalizer == "cholqr":
        Zq, fell_back = _cholqr(Z, final=True, info=True)
    else:
        Zq, fell_back = _householder(Z), False
    for _ in range(3):
        C = Q.T @ Zq
        if not fell_back and np.abs(C).max() <= 100 * np.finfo(Z.dtype).eps:
            break
        fell_back = False
        Zq = _normalize(Zq - Q @ C, normalizer, final=True)
    return Zq


# ---------------------------------------------------------------------------------------
# parameter checks
# ---------------------------------------------------------------------------------------


def _check_n_iter(n_iter, *, auto: int | None) -> int:
    if isinstance(n_iter, str):
        if n_iter != "auto" or auto is None:
            allowed = "'auto' or an integer >= 0" if auto is not None else "an integer >= 0"
            raise ValueError(f"n_iter={n_iter!r} must be {allowed}")
        return auto
    return check_int(n_iter, "n_iter", minimum=0)


def _auto_n_iter(rank: int, shape, method: str) -> int:
    """Default power/Krylov iterations (see :func:`rsvd`, Notes)."""
    small = rank < 0.1 * min(shape)
    if method == "krylov":
        return 3 if small else 2
    return 7 if small else 4


def _normalizer(normalizer) -> str:
    normalizer = check_option(normalizer, _NORMALIZERS, "normalizer")
    return "cholqr" if normalizer == "auto" else normalizer


def _draw_test(n: int, size: int, sketch, rng):
    """Draw the test matrix: a key of the counter-based Gaussian (int) or a SketchOperator.

    The Gaussian test matrix is ``rnla._random.normal_rows(key, 0, n, size)``, drawn in
    canonical row blocks so that a dask task can draw the rows of its own chunk.
    """
    if isinstance(sketch, _sketch.SketchOperator):
        if sketch.shape != (size, n):
            raise ValueError(
                f"sketch operator must have shape (size, n)={(size, n)}, got {sketch.shape}"
            )
        return sketch
    if not isinstance(sketch, str):
        raise TypeError(f"sketch must be a name or a SketchOperator, got {type(sketch).__name__}")
    make = check_option(sketch, _SKETCHES, "sketch")
    if make is None:
        return _random.draw_key(rng)
    if sketch == "srht" and size > n:
        raise ValueError(f"sketch='srht' needs size <= n={n}, got size={size}")
    return make(size, n, rng=rng)


def _test_columns(test, n: int, size: int, dtype) -> np.ndarray:
    """Return the test matrix as a dense (n, size) array (the transpose of a sketch)."""
    if isinstance(test, int):
        # Drawn in float64 and cast: float32 and float64 runs share the same Omega.
        return _random.normal_rows(test, 0, n, size, dtype=dtype)
    return np.ascontiguousarray(test.todense().T, dtype=dtype)


def _sketch_columns(op: _Operator, size: int, sketch, rng) -> np.ndarray:
    """Return ``Y = A Omega^T`` with ``Omega`` a (size, n) sketch of the chosen kind."""
    n = op.shape[1]
    test = _draw_test(n, size, sketch, rng)
    if isinstance(test, int):
        return op.matmat(_test_columns(test, n, size, op.dtype))
    # A Omega^T = (Omega A^T)^T: the sketch applies to A^T from the left, which is how
    # SketchOperator is implemented for dense arrays and for CSR/CSC matrices.
    return np.ascontiguousarray(op.T.sketch_rows(test).T)


def _subspace_range(op: _Operator, size: int, n_iter: int, sketch, normalizer: str, rng):
    """HMT Alg. 4.4 (randomized subspace iteration); orthonormal Q of shape (m, size)."""
    Y = _sketch_columns(op, size, sketch, rng)
    for _ in range(n_iter):
        Q = _normalize(Y, normalizer, final=False)
        Z = _normalize(op.rmatmat(Q), normalizer, final=False)
        Y = op.matmat(Z)
    return _normalize(Y, normalizer, final=True)


def _signs(Ut: np.ndarray) -> np.ndarray:
    """Signs making the largest-magnitude entry of every row of ``Ut`` positive.

    ``Ut`` holds the columns of ``U`` as rows: the search runs along contiguous rows
    (an ``argmax`` down the columns of a C-ordered ``U`` is several times slower). Ties
    go to the first index, as ``argmax`` over the columns of ``U`` would.
    """
    mag = np.ascontiguousarray(np.abs(Ut))
    idx = np.argmax(mag, axis=1)
    signs = np.sign(Ut[np.arange(Ut.shape[0]), idx])
    signs[signs == 0] = 1
    return signs


def _sign_fix(U: np.ndarray, Vt: np.ndarray):
    """Deterministic signs: the largest-magnitude entry of every column of U is positive."""
    if U.shape[1] == 0:
        return U, Vt
    signs = _signs(U.T)
    return U * signs, Vt * signs[:, None]


def _svd_of_qb(Q: np.ndarray, Bt: np.ndarray, rank: int, *, signs: bool = True) -> SVDResult:
    """SVD of ``Q B`` truncated at ``rank`` from ``Bt = B^T`` (n, d), Q orthonormal.

    HMT Alg. 5.1 with the SVD of the wide ``B`` taken through a QR of ``B^T``:
    ``B^T = Q_B R`` (Cholesky-QR, GEMM-based, Householder fallback), ``R^T = U_R S W^T``
    (``d x d``), hence ``B = U_R S (Q_B W)^T``. Singular values carry the same
    ``O(u ||B||)`` absolute error as a direct SVD; the LAPACK work shrinks from
    ``O(n d^2)`` to ``O(d^3)``. ``signs=False`` leaves the signs to the caller (a result
    about to be transposed is sign-fixed once, on its final orientation).
    """
    Ur, s, Vt = _wide_svd(Bt)
    U, Vt = Q @ Ur[:, :rank], Vt[:rank]
    U, Vt = _sign_fix(U, Vt) if signs else (U, Vt)
    return SVDResult(U, s[:rank], Vt)


def _rayleigh_ritz_gram(
    Q: np.ndarray, blocks, rank: int, G: np.ndarray, *, op=None, signs: bool = True
) -> SVDResult:
    """Rank-``rank`` SVD of ``Q B``, Q (s, d) orthonormal, ``B^T`` (l, d) given by blocks.

    ``blocks`` lists ``(cols, W)`` with ``B^T[:, cols] = W``; ``G = B B^T`` (float64).
    With ``blocks=None``, ``B^T = A^T Q`` is not stored and products with it are
    products with ``op`` (``A``), one pass: the route for sparse ``A``, whose pass costs
    less than a dense product with the stored ``B^T``.
    A tall ``B^T`` would cost ``O(l d^2)`` twice over through Cholesky-QR2; here the
    eigendecomposition ``G = W Lambda W^T`` gives the leading left singular subspace
    ``W_k`` of ``B``, and the exact SVD of the projected ``W_k^T B`` (``l x k``:
    ``X = B^T W_k`` accumulated block by block, Cholesky-QR2 of ``X``, a ``k x k``
    SVD) gives orthonormal factors to working precision: ``Q B ~ (Q W_k Z) S V'^T``.
    Rounding in ``G`` perturbs ``W_k`` by ``O(u sigma_1^2 / gap)``, which changes the
    captured energy ``||W_k^T B||_F^2`` only to second order (the top-``k`` subspace
    maximises it); the returned factors are an exact SVD of the resulting rank-``k``
    approximation. ``signs=False`` leaves the signs to the caller.
    """
    with _single_threaded_blas():
        lam, Wg = sla.eigh(G, check_finite=False)
    order = np.argsort(-lam, kind="stable")[:rank]
    if not lam[order[0]] > np.finfo(np.float64).tiny / np.finfo(np.float64).eps:
        # B = 0 (or below the normalisation's range): the Gram shortcut has nothing to
        # normalise by; the direct SVD of the assembled B^T is exact and cheap here.
        if blocks is None:
            Bt = op.rmatmat(Q)
        else:
            Bt = np.empty((blocks[-1][1].shape[0], G.shape[0]), dtype=Q.dtype)
            for cols, W in blocks:
                Bt[:, cols] = W
        return _svd_of_qb(Q, Bt, rank, signs=signs)
    # Columns of X = B^T W_k have norms sqrt(lambda_k): dividing by them makes X nearly
    # orthonormal, so that Cholesky-QR needs one pass instead of two.
    floor = np.finfo(np.float64).eps * max(float(lam[order[0]]), np.finfo(np.float64).tiny)
    scale = 1.0 / np.sqrt(np.maximum(lam[order], floor))
    Wk = (Wg[:, order] * scale).astype(Q.dtype, copy=False)
    if blocks is None:
        X = op.rmatmat(Q @ Wk)  # B^T W_k = A^T (Q W_k)
    else:
        (cols0, W0), rest = blocks[0], blocks[1:]
        X = W0 @ Wk[cols0]
        part = np.empty_like(X)
        for cols, W in rest:
            X += np.matmul(W, Wk[cols], out=part)
    Vq, R = _cholqr(X, final=True, with_r=True)
    # X = B^T W_k D^{-1} = Vq R, so W_k^T B = D R^T Vq^T with D = diag(1 / scale).
    R = R.astype(np.float64) / scale
    with _single_threaded_blas():
        Z, s, Vrt = sla.svd(R.T, check_finite=False)  # R^T = Z S Vr^T
    U = Q @ ((Wg[:, order] @ Z).astype(Q.dtype, copy=False))
    Vt = (Vrt.astype(Q.dtype, copy=False) @ Vq.T).astype(Q.dtype, copy=False)
    U, Vt = _sign_fix(U, Vt) if signs else (U, Vt)
    return SVDResult(U, s.astype(Q.dtype, copy=False), Vt)


def _wide_svd(Bt: np.ndarray):
    """Thin SVD ``(U, s, Vt)`` of the wide ``B = Bt^T`` via Cholesky-QR of ``Bt``."""
    Qb, R = _cholqr(Bt, final=True, with_r=True)
    with _single_threaded_blas():
        Ur, s, Wt = sla.svd(R.T, check_finite=False, lapack_driver="gesdd")
    return Ur, s.astype(Bt.dtype, copy=False), Wt @ Qb.T


def _transpose_svd(res: SVDResult) -> SVDResult:
    """SVD of ``A^T`` from that of ``A``: swapped factors, contiguous, signs fixed."""
    if res.s.shape[0] == 0:
        return SVDResult(np.ascontiguousarray(res.Vt.T), res.s, np.ascontiguousarray(res.U.T))
    signs = _signs(res.Vt)  # the rows of Vt are the columns of the new U
    U = np.array(res.Vt.T, order="C")
    U *= signs
    Vt = np.array(res.U.T, order="C")
    Vt *= signs[:, None]
    return SVDResult(U, res.s, Vt)


# ---------------------------------------------------------------------------------------
# range finder
# ---------------------------------------------------------------------------------------


def range_finder(A, size, /, *, n_iter=0, sketch="gaussian", normalizer="auto", rng=None):
    r"""Orthonormal basis of an approximate range of ``A`` (randomized subspace iteration).

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Matrix; only the products :math:`AX` and :math:`A^\top Y` are used.
    size : int
        Number of columns ``l`` of the basis, ``1 <= size <= min(m, n)``.
    n_iter : int, default=0
        Number ``q`` of power (subspace) iterations.
    sketch : str or SketchOperator, default="gaussian"
        Test matrix :math:`\Omega` of shape (size, n): ``"gaussian"`` (drawn directly as
        an ``n x size`` array), ``"rademacher"``, ``"orthogonal_gaussian"``, ``"srht"``,
        ``"countsketch"``, ``"sparse_sign"`` (built by :mod:`rnla.sketch` from ``rng``),
        or a ready :class:`~rnla.sketch.SketchOperator` of shape (size, n).
    normalizer : {"auto", "cholqr", "qr", "lu", "none"}, default="auto"
        Basis normalisation between products. ``"cholqr"`` (the ``"auto"`` choice):
        Cholesky-QR with shifted-CholeskyQR3 and Householder fallbacks; ``"qr"``:
        Householder QR; ``"lu"``: pivoted LU (as in scikit-learn); ``"none"``: plain power
        iteration, which loses the small singular directions to rounding (and can
        overflow in float32) when ``n_iter > 0``. The final basis is always orthonormal.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the test matrix.

    Returns
    -------
    Q : ndarray, shape (m, size)
        Orthonormal columns (:math:`Q^\top Q = I` to working precision), dtype float32
        for float32 input, float64 otherwise.

    Raises
    ------
    TypeError
        Unsupported or complex ``A``, non-integer ``size``/``n_iter``, bad ``sketch`` type.
    ValueError
        Empty or non-finite ``A``; ``size`` outside ``[1, min(m, n)]``; ``n_iter < 0``;
        unknown ``sketch`` or ``normalizer``; a sketch operator of the wrong shape.

    Notes
    -----
    Halko-Martinsson-Tropp (2011), Alg. 4.4: :math:`Y_0 = A\Omega^\top`, then ``q``
    times :math:`Q \leftarrow \mathrm{norm}(Y)`, :math:`\hat Q \leftarrow
    \mathrm{norm}(A^\top Q)`, :math:`Y \leftarrow A \hat Q`; finally
    :math:`Q = \mathrm{orth}(Y)`. The basis spans the range of
    :math:`(AA^\top)^q A\Omega^\top` in exact arithmetic.

    Cost: ``2q + 1`` products with ``size`` columns (dense ``A``:
    :math:`(2q + 1)\cdot 2mn\,l` flops) plus :math:`O((m + n) l^2)` per normalisation.

    Bounds (Gaussian :math:`\Omega`, :math:`l = k + p`, :math:`k, p \ge 2`): per draw,
    HMT Thm 9.1 :math:`\|(I - QQ^\top)A\|^2 \le \|\Sigma_2\|^2 + \|\Sigma_2\Omega_2
    \Omega_1^\dagger\|^2` (:func:`rnla.bounds.hmt_structural_bound`); in expectation
    HMT Thm 10.5 :math:`\mathbb E\|(I - QQ^\top)A\|_F^2 \le (1 + k/(p - 1))
    \sum_{j > k}\sigma_j^2` (:func:`rnla.bounds.hmt_frobenius_bound`) and, with power
    iterations, HMT Cor. 10.10 (:func:`rnla.bounds.hmt_power_bound`).

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011,
       arXiv:0909.4061.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import range_finder
    >>> A = np.random.default_rng(0).standard_normal((50, 30))
    >>> range_finder(A, 5, n_iter=1, rng=0).shape
    (50, 5)
    """
    op = _as_op(A)
    size = check_int(size, "size", minimum=1, maximum=min(op.shape))
    n_iter = _check_n_iter(n_iter, auto=None)
    normalizer = _normalizer(normalizer)
    rng = check_rng(rng)
    if op.is_dask:
        return _range_finder_dask(op, size, n_iter, sketch, normalizer, rng)
    return _subspace_range(op, size, n_iter, sketch, normalizer, rng)


def _range_finder_dask(op: _Operator, size, n_iter, sketch, normalizer, rng):
    """Fused-pass subspace iteration on a dask array (``n_iter + 1`` passes)."""
    from rnla import _dask

    T = _dask.Tall(op.A, op.dtype, op._passes)
    X0 = _test_columns(_draw_test(op.shape[1], size, sketch, rng), op.shape[1], size, op.dtype)
    Y, W, _ = _dask.subspace_qb(T, X0, n_iter, lambda Z: _normalize(Z, normalizer, final=False))
    if W.shape[1] < size:  # numerically rank-deficient: pad (zero columns)
        W = np.hstack([W, np.zeros((W.shape[0], size - W.shape[1]))])
    Q = _dask.long_times(Y, W)
    # Q is as long as A's rows: a dask array when they are the long side.
    return Q if op.shape[0] >= op.shape[1] else Q.compute()


# ---------------------------------------------------------------------------------------
# randomized SVD
# ---------------------------------------------------------------------------------------


def _pow2_scale(X: np.ndarray) -> float:
    """Power of two near ``max |X|`` (1.0 for a zero or non-finite X): exact rescaling."""
    # max |X| = max(max X, -min X) without an |X| temporary; NaN gives NaN (then 1.0).
    top = max(float(np.max(X)), -float(np.min(X))) if X.size else 0.0
    if not (0.0 < top < np.inf):
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1])


def _krylov_basis(
    op: _Operator, block: int, n_iter: int, sketch, normalizer: str, rng, *, store=True
):
    """Block Krylov basis ``Q``, ``B^T = A^T Q`` (column blocks) and ``B B^T`` (float64).

    ``K = [A W_0, (AA^T) A W_0, ..., (AA^T)^q A W_0]`` is built block by block with full
    reorthogonalisation (block Lanczos without the three-term shortcut). The products
    ``A^T Q_j`` that generate the next block are exactly the columns of ``B^T``, so the
    Rayleigh-Ritz step needs one extra product only (for the last block): ``2q + 2``
    passes in total, as many as ``q`` subspace iterations. The Gram matrix
    ``B B^T = Q^T A A^T Q`` comes almost free as well: its columns for block ``j < q``
    are ``Q^T Z_j`` with ``Z_j = A A^T Q_j`` the product that generated block ``j + 1``
    (``O(m d l)`` on the side of ``Q``); only the last block's columns are formed from
    ``B^T`` itself (``O(n d l)``), instead of ``O(n d^2)`` for the whole Gram matrix.

    ``store=False`` (sparse ``A``, whose passes are cheaper than dense products with
    the long ``B^T``): ``B^T`` is not kept (``None`` is returned for the blocks) and the
    last block's Gram columns are ``Q^T (A A^T Q_q)``, one more pass.
    """
    m, n = op.shape
    dim_max = min(m, n)
    Q0 = _normalize(_sketch_columns(op, block, sketch, rng), normalizer, final=True)
    # Preallocated basis: blocks are written in place, no copies as the space grows.
    basis = np.empty((m, min(dim_max, block * (n_iter + 1))), dtype=op.dtype, order="F")
    basis[:, : Q0.shape[1]] = Q0
    dim, last, rows, gens = Q0.shape[1], slice(0, Q0.shape[1]), [], []
    for _ in range(n_iter):
        if dim >= basis.shape[1]:
            break
        W = op.rmatmat(basis[:, last])
        rows.append(W if store else None)
        # Z = A A^T Q_j scales like ||A||^2, which overflows float32 for entries near
        # 1e19 (and float64 near 1e154): multiply A by W / c instead, with c a power of two
        # (exact scaling), and carry c into the Gram matrix below.
        c = _pow2_scale(W)
        Z = op.matmat(W / c if c != 1.0 else W)
        del W
        gens.append((last, Z, c))
        take = min(Z.shape[1], basis.shape[1] - dim)
        basis[:, dim : dim + take] = _orth_against(Z[:, :take], basis[:, :dim], normalizer)
        last, dim = slice(dim, dim + take), dim + take
    basis = basis[:, :dim]
    W_last = op.rmatmat(basis[:, last])
    basis64 = np.asarray(basis, dtype=np.float64)
    G = np.empty((dim, dim))
    for cols, Z, c in gens:
        G[:, cols] = (basis64.T @ np.asarray(Z, dtype=np.float64)) * c
    if not store:
        c = _pow2_scale(W_last)
        Z = op.matmat(W_last / c if c != 1.0 else W_last)
        G[:, last] = (basis64.T @ np.asarray(Z, dtype=np.float64)) * c
        return basis, None, (G + G.T) / 2
    rows.append(W_last)
    # B^T stays a list of column blocks: concatenating them would copy the largest
    # array of the method for nothing (the Rayleigh-Ritz step works block-wise).
    blocks = [(cols, W) for (cols, _, _), W in zip(gens, rows, strict=False)]
    blocks.append((last, rows[-1]))
    W_last = np.asarray(rows[-1], dtype=np.float64)
    for cols, W in blocks:
        G[cols, last] = np.asarray(W, dtype=np.float64).T @ W_last
    return basis, blocks, (G + G.T) / 2


def _store_krylov_products(op: _Operator, block: int, n_iter: int) -> bool:
    """Whether Rayleigh-Ritz should reuse the stored ``B^T`` blocks (else: two passes).

    Reusing them costs dense products with the long ``B^T`` (``n x d``, ``d = (q + 1)
    l``) for the last Gram block (``l`` columns) and for the projection onto the leading
    ``k <= l`` directions; two extra sparse passes (``l`` columns, then ``k``) cost
    ``O(nnz (l + k))`` plus ``O(m d (l + k))`` on the short side. A sparse product runs
    far below GEMM speed per flop (about 8x here): passes win when ``8 nnz < n d``.
    """
    if op.kind != "sparse":
        return True
    dim = min(min(op.shape), block * (n_iter + 1))
    return 8 * op.A.nnz >= max(op.shape) * dim


def rsvd(
    A,
    rank,
    /,
    *,
    oversample=10,
    n_iter="auto",
    method="krylov",
    sketch="gaussian",
    normalizer="auto",
    rng=None,
) -> SVDResult:
    r"""Randomized truncated SVD: subspace iteration (HMT) or block Krylov (Musco-Musco).

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Matrix; only products with ``A`` and ``A^T`` are used.
    rank : int
        Target rank ``k``, ``1 <= rank <= min(m, n)``.
    oversample : int, default=10
        Oversampling ``p >= 0``; the test matrix has ``l = min(k + p, min(m, n))``
        columns (the Krylov block size for ``method="krylov"``).
    n_iter : int or "auto", default="auto"
        Power iterations (``"subspace"``) or extra Krylov blocks (``"krylov"``), ``q``.
        ``"auto"``: see Notes.
    method : {"krylov", "subspace"}, default="krylov"
        ``"krylov"``: randomized block Krylov (Musco-Musco 2015, Alg. 2) with
        Rayleigh-Ritz on the whole Krylov space of dimension up to ``(q + 1) l``.
        ``"subspace"``: HMT Alg. 4.4 + Alg. 5.1 (randomized subspace iteration). Krylov
        is the default because at its default ``q`` it matched or beat subspace
        iteration's error at about half the passes in every case we measured (Notes).
    sketch : str or SketchOperator, default="gaussian"
        Test matrix, as in :func:`range_finder`. It multiplies the longer dimension for
        ``"krylov"`` and the shorter one for ``"subspace"`` (see Notes), so a
        SketchOperator must have shape ``(l, max(m, n))`` or ``(l, min(m, n))``.
    normalizer : {"auto", "cholqr", "qr", "lu", "none"}, default="auto"
        As in :func:`range_finder`; for ``"krylov"`` every block is orthonormalised
        (``"lu"`` and ``"none"`` then mean Householder QR).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the test matrix.

    Returns
    -------
    SVDResult
        ``U`` (m, k) orthonormal columns, ``s`` (k,) descending, ``Vt`` (k, n)
        orthonormal rows, with :math:`A \approx U \operatorname{diag}(s) V^\top`. Signs
        are fixed (the largest-magnitude entry of each column of ``U`` is positive).

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-integer ``rank``, ``oversample`` or ``n_iter``.
    ValueError
        Empty or non-finite ``A``; ``rank`` outside ``[1, min(m, n)]``; negative
        ``oversample`` or ``n_iter``; unknown ``method``, ``sketch`` or ``normalizer``.

    Notes
    -----
    **Krylov** (Musco-Musco 2015, Alg. 2): ``2q + 2`` passes build an orthonormal basis
    of the block Krylov space :math:`[A^\top\Omega, (A^\top A)A^\top\Omega, \dots,
    (A^\top A)^q A^\top\Omega]` (or its mirror image), placed on the **shorter** side
    of ``A`` so that the full reorthogonalisation (block CGS2 + Cholesky-QR2) costs
    :math:`O(\min(m, n)\,(ql)^2)`. The products with ``A`` that generate the next block
    are reused as :math:`B^\top` (long side, :math:`\max(m, n) \times (q + 1)l`), so
    the Rayleigh-Ritz step needs no extra pass; it goes through the small Gram matrix
    :math:`BB^\top` (float64) and a Cholesky-QR2 of the ``k`` projected columns, which
    return exactly orthonormal factors. Memory: :math:`(q + 1)\,l\,(m + n)` numbers.
    For a very sparse ``A`` (``8 nnz(A) < max(m, n) (q + 1) l``) the long products are
    not kept: two more passes (``2q + 4`` in all) replace the dense products with
    :math:`B^\top` (same result to rounding, memory :math:`(q + 1)\,l \min(m, n)`).
    At equal passes the Krylov space contains the subspace-iteration space, so its
    projection error obeys every bound below; its gap-free guarantee needs
    :math:`q = O(\log n/\sqrt\varepsilon)` instead of :math:`O(\log n/\varepsilon)` for
    :math:`\|A - UU^\top A\|_2 \le (1 + \varepsilon)\sigma_{k+1}` (MM15, Thm 1).

    **Subspace** (HMT Alg. 4.4 then 5.1) on the tall orientation (wide matrices are
    factorised through :math:`A^\top`): :math:`Q` from :func:`range_finder` with ``l``
    columns and ``q`` iterations, :math:`B = Q^\top A`, :math:`B = \tilde U\Sigma V^\top`
    (through a Cholesky-QR of :math:`B^\top`), :math:`U = Q\tilde U`, truncated to ``k``.
    Cost: ``2q + 2`` passes, :math:`(2q + 2)\, 2mnl` flops for dense ``A`` plus
    :math:`O((m + n) l^2 q)`.

    ``n_iter="auto"``: Krylov ``q = 3`` if ``k < 0.1 min(m, n)`` else ``2`` (8 or 6
    passes); subspace ``q = 7`` if ``k < 0.1 min(m, n)`` else ``4`` (16 or 10 passes,
    the scikit-learn rule). On 2000 x 1200 test matrices with spectra
    :math:`j^{-1/2}`, :math:`j^{-1}`, :math:`e^{-j/10}` and S-shaped, ``k`` = 20, 50,
    150, the Krylov default gave :math:`\|A - U\Sigma V^\top\|_2/\sigma_{k+1}` of
    1.0000-1.0001 against 1.0000-1.056 for the subspace default (``benchmarks/rsvd.py``
    has the timings).

    Bounds (Gaussian test matrix, ``k, p >= 2``): the projection error obeys HMT
    Thm 10.5 / 10.6 / Cor. 10.10 (:mod:`rnla.bounds`); truncation to rank ``k`` adds at
    most :math:`\sigma_{k+1}` in the spectral norm (:math:`\|A - [\![QB]\!]_k\|_2 \le
    \|A - QB\|_2 + \sigma_{k+1}`, HMT §9.4).

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011,
       arXiv:0909.4061.
    .. [2] C. Musco, C. Musco, NeurIPS 2015, arXiv:1504.05477.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import rsvd
    >>> A = np.random.default_rng(0).standard_normal((60, 40))
    >>> U, s, Vt = rsvd(A, 5, rng=0)
    >>> U.shape, s.shape, Vt.shape
    ((60, 5), (5,), (5, 40))
    >>> rsvd(A, 5, method="subspace", n_iter=2, rng=0).U.shape
    (60, 5)
    """
    op = _as_op(A)
    rank = check_rank(rank, op.shape)
    oversample = check_int(oversample, "oversample", minimum=0)
    method = check_option(method, _METHODS, "method")
    n_iter = _check_n_iter(n_iter, auto=_auto_n_iter(rank, op.shape, method))
    normalizer = _normalizer(normalizer)
    rng = check_rng(rng)

    size = min(rank + oversample, min(op.shape))
    if op.is_dask:
        return _rsvd_dask(op, rank, size, n_iter, method, sketch, normalizer, rng)
    if method == "krylov":
        # Krylov basis on the short side (cheap full reorthogonalisation), B^T on the
        # long side, Rayleigh-Ritz through the small Gram matrix.
        transpose = op.shape[0] > op.shape[1]
        work = op.T if transpose else op
        block_norm = normalizer if normalizer in ("cholqr", "qr") else "qr"
        store = _store_krylov_products(work, size, n_iter)
        Q, blocks, G = _krylov_basis(work, size, n_iter, sketch, block_norm, rng, store=store)
        res = _rayleigh_ritz_gram(Q, blocks, rank, G, op=work, signs=not transpose)
    else:
        # Subspace iteration on the tall orientation: the test matrix and the SVD of B
        # live on the short side.
        transpose = op.shape[0] < op.shape[1]
        work = op.T if transpose else op
        Q = _subspace_range(work, size, n_iter, sketch, normalizer, rng)
        res = _svd_of_qb(Q, work.rmatmat(Q), rank, signs=not transpose)
    res = _transpose_svd(res) if transpose else res
    return _with_passes(res, op.n_passes)


def _rsvd_dask(op: _Operator, rank, size, n_iter, method, sketch, normalizer, rng):
    """Rsvd of a dask array: the in-memory algorithms with fused passes (rnla._dask).

    The orientation and the test matrices are those of the in-memory path, so the same
    ``rng`` gives the same result to rounding. Subspace: ``n_iter + 1`` passes; Krylov:
    ``n_iter + 2``. The long factor stays a dask array (kept in the cluster).
    """
    from rnla import _dask

    m, n = op.shape
    flip = m <= n if method == "krylov" else m < n
    A = op.A.T if flip else op.A
    T = _dask.Tall(A, op.dtype, op._passes)
    rows, cols = T.shape
    if method == "krylov":
        block_norm = normalizer if normalizer in ("cholqr", "qr") else "qr"
        test = _draw_test(rows, size, sketch, rng)
        if isinstance(test, int):
            Y0 = T.left_gaussian(test, size)
        else:
            op._passes.add()
            Y0 = np.asarray(_dask.sketch_rows(test, A).compute()).T
            _dask.check_finite(Y0)
        Q0 = _normalize(Y0.astype(op.dtype), block_norm, final=True)
        U, s, Vt = _dask.krylov_svd(T, rank, size, n_iter, Q0, block_norm, op.dtype)
    else:
        X0 = _test_columns(_draw_test(cols, size, sketch, rng), cols, size, op.dtype)
        normalize = lambda Z: _normalize(Z, normalizer, final=False)  # noqa: E731
        Y, W, Bt = _dask.subspace_qb(T, X0, n_iter, normalize)
        U, s, Vt = _dask.svd_from_qb(Y, W, Bt, rank)
    s = np.asarray(s, dtype=op.dtype)
    Vt = np.asarray(Vt, dtype=op.dtype)
    if flip:
        U, Vt = _sign_fix(np.ascontiguousarray(Vt.T), U.T)
    return _with_passes(SVDResult(U, s, Vt), op.n_passes)


# ---------------------------------------------------------------------------------------
# adaptive QB
# ---------------------------------------------------------------------------------------


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number, got {tol!r}")
    tol = float(tol)
    if not (0 < tol < 1):
        raise ValueError(f"tol={tol} must satisfy 0 < tol < 1 (relative Frobenius error)")
    return tol


def randqb(A, /, *, tol, block_size=10, max_rank=None, n_iter=0, rng=None) -> QBResult:
    r"""Adaptive randomized QB factorisation to a relative Frobenius tolerance.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Matrix. ``||A||_F`` is computed exactly once (free for dense and sparse input,
        ``min(m, n)`` products for a LinearOperator).
    tol : float
        Target relative error: stop as soon as :math:`\|A - QB\|_F \le
        \mathrm{tol}\,\|A\|_F`, ``0 < tol < 1``.
    block_size : int, default=10
        Columns added per step, ``b >= 1``.
    max_rank : int, optional
        Largest rank allowed, ``1 <= max_rank <= min(m, n)``; default ``min(m, n)``.
    n_iter : int, default=0
        Power iterations per block (Yu-Gu-Li's ``P``).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the Gaussian test blocks.

    Returns
    -------
    QBResult
        ``Q`` (m, r) orthonormal columns, ``B`` (r, n) with :math:`B = Q^\top A`, and
        ``error`` (float) :math:`= \|A - QB\|_F / \|A\|_F` from the exact identity below.
        ``r`` is the smallest rank (within the last block) that meets ``tol``; the
        zero matrix gives ``r = 0`` and ``error = 0``.

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-numeric ``tol``; non-integer sizes.
    ValueError
        Empty or non-finite ``A``; ``tol`` outside (0, 1); ``block_size < 1``;
        ``max_rank`` outside ``[1, min(m, n)]``; ``n_iter < 0``.

    Warns
    -----
    AccuracyWarning
        If ``tol`` is below the accuracy floor :math:`\sqrt{u}` (``u`` the unit roundoff
        of the working dtype): the error indicator cannot resolve it.
    ConvergenceWarning
        If ``max_rank`` is reached (or no further progress is possible) before ``tol``.

    Notes
    -----
    Yu-Gu-Li (2018), Alg. 2 (randQB_EI), blocked: for each block,
    :math:`\Omega_i` Gaussian (n, b); :math:`Q_i = \mathrm{orth}(A\Omega_i - Q(B
    \Omega_i))`; ``n_iter`` power steps :math:`\hat Q_i = \mathrm{orth}(A^\top Q_i -
    B^\top(Q^\top Q_i))`, :math:`Q_i = \mathrm{orth}(A\hat Q_i - Q(B\hat Q_i))`;
    reorthogonalisation :math:`Q_i = \mathrm{orth}(Q_i - Q(Q^\top Q_i))`;
    :math:`B_i = Q_i^\top A`. The error is tracked exactly by

    .. math::

        \|A - QB\|_F^2 = \|A\|_F^2 - \|B\|_F^2 \quad (Q^\top Q = I,\ B = Q^\top A),

    updated per row of :math:`B`, so the last block can be trimmed to the smallest rank
    that meets ``tol``. Accuracy floor: the subtraction cancels when the error is small;
    with rounding errors of order :math:`u\|A\|_F^2` in both terms, the relative error is
    resolvable only down to about :math:`\sqrt u` (1.5e-8 in float64, 3.5e-4 in float32),
    as Yu-Gu-Li note (§3). Below it, compute ``||A - QB||_F`` directly.

    Cost per block: ``2 + 2 n_iter`` passes with ``b`` columns; dense ``A``:
    :math:`(2 + 2 P) 2mnb` flops, plus :math:`O((m + n) r b)` for the projections.

    References
    ----------
    .. [1] W. Yu, Y. Gu, Y. Li, SIAM J. Matrix Anal. Appl. 39(3), 2018,
       arXiv:1606.09402.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import randqb
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((80, 8)) @ rng.standard_normal((8, 50))
    >>> Q, B, err = randqb(A, tol=1e-6, block_size=4, rng=0)
    >>> Q.shape, B.shape
    ((80, 8), (8, 50))
    """
    op = _as_op(A)
    tol = _check_tol(tol)
    m, n = op.shape
    block_size = check_int(block_size, "block_size", minimum=1)
    max_rank = min(m, n) if max_rank is None else check_rank(max_rank, (m, n), name="max_rank")
    n_iter = _check_n_iter(n_iter, auto=None)
    rng = check_rng(rng)

    floor = math.sqrt(np.finfo(op.dtype).eps)
    if tol < floor:
        warnings.warn(
            f"tol={tol:g} is below the accuracy floor sqrt(eps)={floor:.2g} of the "
            f"Frobenius bookkeeping in {op.dtype}; the reported error is not reliable "
            "at this level",
            AccuracyWarning,
            stacklevel=2,
        )
    norm_sq = op.fro_norm_sq()
    Q = np.zeros((m, 0), dtype=op.dtype)
    B = np.zeros((0, n), dtype=op.dtype)
    if norm_sq == 0:
        # The zero matrix is represented exactly at rank 0 (every tol is met).
        return _with_passes(QBResult(op.as_long(Q), B, 0.0), op.n_passes)
    target = tol * tol * norm_sq
    remaining = norm_sq
    stalled = False
    while remaining > target and Q.shape[1] < max_rank:
        b = min(block_size, max_rank - Q.shape[1])
        Omega = rng.standard_normal((n, b)).astype(op.dtype, copy=False)
        Qi = _cholqr(op.matmat(Omega) - Q @ (B @ Omega), final=False)
        for _ in range(n_iter):
            Qh = _cholqr(op.rmatmat(Qi) - B.T @ (Q.T @ Qi), final=False)
            Qi = _cholqr(op.matmat(Qh) - Q @ (B @ Qh), final=False)
        # Reorthogonalisation (YGL18 Alg. 2, line 9): exact bookkeeping needs Q^T Q = I.
        Qi = _orth_against(Qi, Q, "cholqr")
        Bi = op.rmatmat(Qi).T
        row_sq = np.einsum("ij,ij->i", Bi, Bi, dtype=np.float64)
        # Exact bookkeeping per row: trim the block at the first row meeting tol.
        after = remaining - np.cumsum(row_sq)
        hit = np.flatnonzero(after <= target)
        keep = int(hit[0]) + 1 if hit.size else b
        Q = np.hstack([Q, Qi[:, :keep]])
        B = np.vstack([B, Bi[:keep]])
        gained = float(np.sum(row_sq[:keep]))
        remaining -= gained
        if gained <= 4 * np.finfo(op.dtype).eps * norm_sq and remaining > target:
            stalled = True  # A is captured to working precision: nothing left to find
            break
    error = math.sqrt(max(remaining, 0.0) / norm_sq)
    if remaining > target:
        why = "no further progress is possible" if stalled else f"max_rank={max_rank} reached"
        warnings.warn(
            f"randqb stopped at rank {Q.shape[1]} ({why}) with relative error "
            f"{error:.3g} > tol={tol:g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    return _with_passes(QBResult(op.as_long(Q), B, error), op.n_passes)


# ---------------------------------------------------------------------------------------
# single-pass SVD
# ---------------------------------------------------------------------------------------


def _as_block(block, n: int, dtype, index: int):
    """Validate one row block (empty blocks are allowed and contribute nothing)."""
    if sp.issparse(block):
        if block.ndim == 2 and block.shape[0] == 0:
            block = np.zeros(block.shape, dtype=dtype)
        else:
            block = as_sparse(block, name=f"block {index}")
            if block.dtype != dtype:
                block = block.astype(dtype)
    if not sp.issparse(block):
        block = as_float_array(block, name=f"block {index}", ndim=2, dtype=dtype, allow_empty=True)
    if block.shape[1] != n:
        raise ValueError(
            f"block {index} must have n={n} columns like the others, got shape {block.shape}"
        )
    return block


def _iter_blocks(A, shape):
    """Yield ``(block, dtype)`` row blocks of the input, validated, each exactly once."""
    if sp.issparse(A) or isinstance(A, np.ndarray | LinearOperator) or is_dask_array(A):
        if shape is not None and tuple(shape) != tuple(A.shape):
            raise ValueError(f"shape={tuple(shape)} does not match A.shape={tuple(A.shape)}")
        op = _as_op(A)
        return op, None
    if not isinstance(A, Iterable) or isinstance(A, str | bytes):
        raise TypeError(
            "A must be an array, a sparse matrix, a LinearOperator or an iterable of row "
            f"blocks, got {type(A).__name__}"
        )
    if shape is None:
        raise ValueError("shape=(m, n) is required when A is an iterable of row blocks")
    if len(shape) != 2:
        raise ValueError(f"shape must be (m, n), got {shape!r}")
    m = check_int(shape[0], "shape[0]", minimum=1)
    n = check_int(shape[1], "shape[1]", minimum=1)
    return None, (iter(A), (m, n))


def _spsvd_sizes(rank, shape, range_size, corange_size):
    m, n = shape
    rank = check_rank(rank, shape)
    if range_size is None:
        k = min(2 * rank + 1, min(m, n))
    else:
        k = check_int(range_size, "range_size", minimum=rank, maximum=min(m, n))
    if corange_size is None:
        ell = min(2 * k + 1, m)
    else:
        ell = check_int(corange_size, "corange_size", minimum=k, maximum=m)
    return rank, k, ell


def single_pass_svd(
    A, rank, /, *, range_size=None, corange_size=None, shape=None, rng=None
) -> SVDResult:
    r"""Fixed-rank SVD from one pass over ``A`` (Tropp-Yurtsever-Udell-Cevher 2017).

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator, dask array or iterable of row blocks
        The matrix (m, n), or an iterable that yields its row blocks :math:`A_1, A_2,
        \dots` (dense or sparse arrays of shape :math:`(m_i, n)`, top to bottom,
        :math:`\sum m_i = m`), each read once and then dropped.
    rank : int
        Target rank ``r``, ``1 <= r <= min(m, n)``.
    range_size : int, optional
        ``k``, columns of the range sketch :math:`Y = A\Omega`; ``r <= k <= min(m, n)``.
        Default ``min(2r + 1, min(m, n))``.
    corange_size : int, optional
        ``l``, rows of the co-range sketch :math:`W = \Psi A`; ``k <= l <= m``.
        Default ``min(2k + 1, m)``.
    shape : tuple of int, optional
        ``(m, n)``; required when ``A`` is an iterable of blocks.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of :math:`\Omega` and :math:`\Psi`. For a given seed the result does not
        depend on how the rows are split into blocks.

    Returns
    -------
    SVDResult
        ``U`` (m, r), ``s`` (r,) descending, ``Vt`` (r, n): the best rank-``r``
        approximation of the sketch-based approximation :math:`\hat A = QX`.

    Raises
    ------
    TypeError
        Unsupported ``A`` or block type, complex data, non-integer sizes.
    ValueError
        Non-finite or empty data; a block with the wrong number of columns; block rows
        not summing to ``m``; sizes outside the ranges above; missing ``shape`` for an
        iterable.

    Notes
    -----
    **Data access model.** Two linear sketches are collected in a single pass:
    :math:`Y = A\Omega` (m, k) and :math:`W = \Psi A` (l, n) with Gaussian
    :math:`\Omega` (n, k), :math:`\Psi` (l, m). A row block :math:`A_i` contributes
    :math:`Y_i = A_i\Omega` (its rows of ``Y``) and :math:`W \mathrel{+}= \Psi_{:, i}
    A_i`; the columns of :math:`\Psi` that belong to a block are drawn when the block
    arrives (from a generator seeded once, in row order, hence independent of the
    blocking) and regenerated afterwards, so for a stream :math:`\Psi` is never stored.
    Memory: :math:`O(mk + ln)` plus one block (an array, sparse matrix or operator
    input is sketched in one product each, with :math:`\Psi` held as an
    :math:`m \times l` array). Linear updates :math:`A \leftarrow A + H` can be
    folded in the same way (sketch ``H`` and add).

    **Reconstruction** (TYUC17 Alg. 4, the QR-stabilised form of their Alg. 3, then
    the fixed-rank truncation of their §5): :math:`Q = \mathrm{orth}(Y)`;
    :math:`\Psi Q = UT` (QR); :math:`X = T^{-1} U^\top W = (\Psi Q)^\dagger W`;
    :math:`\hat A = QX`; return the rank-``r`` truncated SVD of :math:`\hat A` through
    the SVD of ``X`` (k, n).

    Cost: one pass, :math:`2mn(k + l)` flops for dense ``A``; reconstruction
    :math:`O(lmk + lnk + nk^2)`.

    Bound: with :math:`f(s, t) = s/(t - s - 1)`, for ``l >= k + 2``, TYUC17 Thm 4.3:
    :math:`\mathbb E\|A - \hat A\|_F^2 \le (1 + f(k, l))\min_{\varrho < k - 1}(1 +
    f(\varrho, k))\,\tau_{\varrho+1}^2(A)` with :math:`\tau_{j}^2 = \sum_{i \ge j}
    \sigma_i^2`; and :math:`\|A - [\![\hat A]\!]_r\|_F \le \tau_{r+1}(A) + 2\|A -
    \hat A\|_F` (:func:`rnla.bounds.single_pass_bound`). The defaults ``k = 2r + 1``,
    ``l = 2k + 1`` make both factors 2 at :math:`\varrho = r` (constant 4 on
    :math:`\tau_{r+1}^2`); ``l = 2k + 1`` is TYUC17's rule for moderately decaying
    spectra (their eq. (4.9) with ``T = k + l``).

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, SIAM J. Matrix Anal. Appl.
       38(4), 2017, arXiv:1609.00048.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import single_pass_svd
    >>> A = np.random.default_rng(0).standard_normal((40, 30))
    >>> single_pass_svd(A, 3, rng=0).U.shape
    (40, 3)
    >>> blocks = (A[i : i + 16] for i in range(0, 40, 16))
    >>> single_pass_svd(blocks, 3, shape=(40, 30), rng=0).Vt.shape
    (3, 30)
    """
    op, stream = _iter_blocks(A, shape)
    full_shape = op.shape if op is not None else stream[1]
    m, n = full_shape
    rank, k, ell = _spsvd_sizes(rank, full_shape, range_size, corange_size)
    rng = check_rng(rng)
    Omega64 = _random.normal_rows(_random.draw_key(rng), 0, n, k)
    # Psi^T is counter-based (rnla._random): any rows of it are drawn on their own, so
    # every blocking of A (and every dask chunking) sees the same Psi, and it is
    # regenerated later instead of stored.
    psi_key = _random.draw_key(rng)

    if op is not None and op.is_dask:
        from rnla import _dask

        T = _dask.Tall(op.A, op.dtype, op._passes)
        Omega = Omega64.astype(op.dtype, copy=False)
        U, s, Vt = _dask.single_pass(T, rank, Omega, psi_key, ell, op.dtype)
        s = np.asarray(s, dtype=op.dtype)
        return _with_passes(SVDResult(U, s, np.asarray(Vt, dtype=op.dtype)), 1)
    if op is not None:
        dtype = op.dtype
        Omega = Omega64.astype(dtype, copy=False)
        Psi_T = _random.normal_rows(psi_key, 0, m, ell, dtype=dtype)
        Y = op.matmat(Omega)
        W = op.rmatmat(Psi_T).T
    else:
        blocks, _ = stream
        Y = W = None
        dtype = None
        row = 0
        for index, block in enumerate(blocks):
            if dtype is None:
                if sp.issparse(block):
                    dtype = float_dtype(block.dtype)
                else:
                    dtype = float_dtype(np.asarray(block).dtype)
                Omega = Omega64.astype(dtype, copy=False)
                Y = np.empty((m, k), dtype=dtype)
                W = np.zeros((ell, n), dtype=dtype)
            block = _as_block(block, n, dtype, index)
            mi = block.shape[0]
            if row + mi > m:
                raise ValueError(f"the row blocks have more than m={m} rows (shape={shape})")
            Psi_i = _random.normal_rows(psi_key, row, row + mi, ell, dtype=dtype)
            Y[row : row + mi] = np.asarray(block @ Omega)
            W += np.asarray(block.T @ Psi_i).T
            row += mi
        if row != m:
            raise ValueError(f"the row blocks have {row} rows in total, expected m={m}")
    # Regenerate Psi to form Psi Q (l, k) without having stored Psi.
    Q = _cholqr(Y, final=True)
    PsiQ = np.zeros((ell, k), dtype=np.float64)
    chunk = max(1, (1 << 22) // max(1, ell))
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        PsiQ += _random.normal_rows(psi_key, start, stop, ell).T @ Q[start:stop]
    U_, T = sla.qr(PsiQ.astype(dtype, copy=False), mode="economic", check_finite=False)
    X = _solve_upper(T, U_.T @ W)
    Ux, s, Vt = _wide_svd(np.ascontiguousarray(X.T))
    U, Vt = _sign_fix(Q @ Ux[:, :rank], Vt[:rank])
    # One pass by construction (two linear sketches of each block; an in-memory array
    # is read by the two GEMMs, a stream or a dask array once).
    return _with_passes(SVDResult(U, s[:rank], Vt), 1)


def _solve_upper(T: np.ndarray, RHS: np.ndarray) -> np.ndarray:
    """``T^{-1} RHS``; least squares (SVD) if ``T`` is numerically singular."""
    d = np.abs(np.diag(T))
    if d.size and d.min() > np.finfo(T.dtype).eps * d.max() * T.shape[0]:
        return sla.solve_triangular(T, RHS, lower=False, check_finite=False)
    return sla.lstsq(T, RHS, check_finite=False)[0].astype(T.dtype, copy=False)


# ---------------------------------------------------------------------------------------
# symmetric eigendecomposition
# ---------------------------------------------------------------------------------------


def _check_symmetric(op: _Operator, rng) -> None:
    m, n = op.shape
    if m != n:
        raise ValueError(f"A must be square (symmetric), got shape {op.shape}")
    tol = math.sqrt(np.finfo(op.dtype).eps)
    if op.kind == "dense":
        A = op.A
        gap, size = np.linalg.norm(A - A.T), np.linalg.norm(A)
    elif op.kind == "sparse":
        D = op.A - op.A.T
        gap = float(np.sqrt(np.sum(np.asarray(D.data, dtype=np.float64) ** 2)))
        size = float(np.sqrt(op.fro_norm_sq()))
    else:
        # One randomized probe: x^T A y - y^T A x vanishes for symmetric A; for a
        # non-symmetric A it is a non-degenerate Gaussian chaos, nonzero almost surely.
        X = rng.standard_normal((n, 2)).astype(op.dtype)
        AX = op.matmat(X)
        gap = abs(float(X[:, 0] @ AX[:, 1] - X[:, 1] @ AX[:, 0]))
        size = float(np.linalg.norm(AX[:, 1]) * np.linalg.norm(X[:, 0]))
        size += float(np.linalg.norm(AX[:, 0]) * np.linalg.norm(X[:, 1]))
    if gap > tol * size:
        raise ValueError(
            f"A must be symmetric: ||A - A^T|| / ||A|| = {gap / max(size, 1e-300):.3g} "
            f"exceeds sqrt(eps)={tol:.2g}"
        )


def reigh(A, rank, /, *, oversample=10, n_iter="auto", rng=None) -> EighResult:
    r"""Randomized eigendecomposition of a symmetric (possibly indefinite) matrix.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array, shape (n, n)
        Symmetric matrix (checked to relative accuracy :math:`\sqrt u`: exactly for
        dense and sparse input, by one random bilinear probe for a LinearOperator).
    rank : int
        Number ``k`` of eigenpairs, ``1 <= k <= n``.
    oversample : int, default=10
        Oversampling ``p >= 0``; the basis has ``l = min(k + p, n)`` columns.
    n_iter : int or "auto", default="auto"
        Power iterations ``q`` (each two products with ``A``, i.e. with
        :math:`A^2 = AA^\top`); ``"auto"`` as for ``rsvd(method="subspace")``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the Gaussian test matrix (and of the symmetry probe).

    Returns
    -------
    EighResult
        ``eigenvalues`` (k,) sorted by **magnitude**, descending (signed values, so
        indefinite spectra keep their signs) and ``eigenvectors`` (n, k) orthonormal.

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-integer ``rank``, ``oversample``, ``n_iter``.
    ValueError
        Non-square or non-symmetric ``A``; empty or non-finite ``A``; ``rank`` out of
        range; negative ``oversample`` or ``n_iter``.

    Notes
    -----
    HMT Alg. 5.3 (direct eigenvalue decomposition) on a subspace-iteration basis: ``Q``
    spans the range of :math:`A^{2q+1}\Omega` (normalised after every product); then
    :math:`T = Q^\top A Q` (symmetrised), :math:`T = W\Lambda W^\top`, eigenvectors
    :math:`QW`, the ``k`` of largest :math:`|\lambda|`. Singular values of a symmetric
    matrix are :math:`|\lambda_j|`, so the HMT bounds of :func:`rsvd` hold for
    :math:`\|A - QQ^\top A\|` with :math:`\sigma_j = |\lambda_j|`.

    Cost: ``2q + 2`` products with ``l`` columns (:math:`(2q + 2) 2n^2 l` flops dense),
    plus :math:`O(n l^2)`.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, §5.3,
       arXiv:0909.4061.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import reigh
    >>> G = np.random.default_rng(0).standard_normal((50, 50))
    >>> w, V = reigh(G + G.T, 4, rng=0)
    >>> w.shape, V.shape
    ((4,), (50, 4))
    """
    op = _as_op(A)
    rng = check_rng(rng)
    rank = check_rank(rank, op.shape)
    oversample = check_int(oversample, "oversample", minimum=0)
    n_iter = _check_n_iter(n_iter, auto=_auto_n_iter(rank, op.shape, "subspace"))
    _check_symmetric(op, rng)
    n = op.shape[0]
    size = min(rank + oversample, n)
    Y = op.matmat(rng.standard_normal((n, size)).astype(op.dtype, copy=False))
    for _ in range(2 * n_iter):
        Y = op.matmat(_cholqr(Y, final=False))
    Q = _cholqr(Y, final=True)
    T = Q.T @ op.matmat(Q)
    T = (T + T.T) / 2
    w, Wv = sla.eigh(T, check_finite=False)
    order = np.argsort(-np.abs(w), kind="stable")[:rank]
    V = Q @ Wv[:, order]
    V, _ = _sign_fix(V, V.T)
    res = EighResult(w[order].astype(op.dtype, copy=False), op.as_long(V))
    return _with_passes(res, op.n_passes)


# ---------------------------------------------------------------------------------------
# generalized Nystrom
# ---------------------------------------------------------------------------------------


def generalized_nystrom(A, rank, /, *, oversample=None, rng=None) -> SVDResult:
    r"""Generalized Nyström approximation :math:`A X (Y^\top A X)^\dagger Y^\top A`.

    Parameters
    ----------
    A : array_like, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Any (not necessarily symmetric) matrix.
    rank : int
        Rank ``r`` of the approximation, ``1 <= r <= min(m, n)``.
    oversample : int, optional
        Extra columns ``l >= 0`` of the left sketch ``Y`` (m, r + l); default
        :math:`\lceil r/2 \rceil` (Nakatsukasa's recommendation ``l = 0.5 r``), clipped to
        ``m - r``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of the Gaussian sketches ``X`` (n, r) and ``Y`` (m, r + l).

    Returns
    -------
    SVDResult
        ``U`` (m, r), ``s`` (r,) descending, ``Vt`` (r, n) of the approximation (trailing
        singular values are zero when ``A`` has rank below ``r``).

    Raises
    ------
    TypeError
        Unsupported or complex ``A``; non-integer ``rank`` or ``oversample``.
    ValueError
        Empty or non-finite ``A``; ``rank`` out of range; negative ``oversample``.

    Notes
    -----
    Nakatsukasa (2020), Alg. 2.1 with the stabilisation of §4: both sketches
    :math:`AX` and :math:`Y^\top A` are linear in ``A`` and can be collected in one
    pass. With :math:`Y^\top AX = Q_M R_M` (QR) and the :math:`\epsilon`-truncated
    pseudo-inverse of :math:`R_M` (singular values below :math:`u\,\max(r + l, r)\,
    \|R_M\|_2` dropped),

    .. math::

        \hat A = (AX)\, R_{M,\epsilon}^\dagger\, (Q_M^\top Y^\top A),

    then the SVD of :math:`\hat A` from QRs of its two factors. Cost: one pass,
    :math:`2mn(2r + l)` flops for dense ``A``, plus :math:`O((m + n) r^2)`.

    Accuracy: :math:`A - \hat A = (I - P_{AX, Y})(I - P_{AX})A` with the oblique
    projector :math:`P_{AX,Y} = AX(Y^\top AX)^\dagger Y^\top`, so the error is the HMT
    range-finder error (no power iteration, HMT Thm 10.5/10.6) times at most
    :math:`\|I - P_{AX,Y}\|_2`, which is modest when ``l`` is a fraction of ``r``
    (Nakatsukasa 2020, §3).

    References
    ----------
    .. [1] Y. Nakatsukasa, "Fast and stable randomized low-rank matrix approximation",
       arXiv:2009.11392, 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.lowrank import generalized_nystrom
    >>> A = np.random.default_rng(0).standard_normal((60, 40))
    >>> U, s, Vt = generalized_nystrom(A, 6, rng=0)
    >>> U.shape, s.shape, Vt.shape
    ((60, 6), (6,), (6, 40))
    """
    op = _as_op(A)
    m, n = op.shape
    rank = check_rank(rank, op.shape)
    if oversample is None:
        oversample = min(math.ceil(rank / 2), m - rank)
    else:
        oversample = min(check_int(oversample, "oversample", minimum=0), m - rank)
    rng = check_rng(rng)
    X = rng.standard_normal((n, rank)).astype(op.dtype, copy=False)
    Y = rng.standard_normal((m, rank + oversample)).astype(op.dtype, copy=False)
    AX = op.matmat(X)  # (m, r)
    YtA = op.rmatmat(Y).T  # (r + l, n)
    M = Y.T @ AX  # (r + l, r)
    Qm, Rm = sla.qr(M, mode="economic", check_finite=False)
    Ur, sr, Vrt = sla.svd(Rm, check_finite=False)
    cut = np.finfo(op.dtype).eps * max(M.shape) * (sr[0] if sr.size else 0.0)
    inv = np.zeros_like(sr)
    inv[sr > cut] = 1.0 / sr[sr > cut]
    # A_hat = (AX Vr diag(inv)) (Ur^T Qm^T YtA) = F G.
    F = AX @ (Vrt.T * inv)
    G = (Qm @ Ur).T @ YtA
    Qf, Rf = _cholqr(F, final=True, with_r=True)
    Qg, Rg = _cholqr(np.ascontiguousarray(G.T), final=True, with_r=True)
    Uc, s, Vct = sla.svd(Rf @ Rg.T, check_finite=False)
    U, Vt = _sign_fix(Qf @ Uc, Vct @ Qg.T)
    if op.is_dask:  # the long side stays a dask array
        U = op.as_long(U) if m >= n else U
        Vt = op.T.as_long(Vt.T).T if n > m else Vt
    return _with_passes(SVDResult(U, s.astype(op.dtype, copy=False), Vt), op.n_passes)
