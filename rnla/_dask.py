r"""Dask back end of the product-based algorithms (private; dask is imported lazily).

Nothing here is imported by ``import rnla``; the operator wrapper
(:func:`rnla.operators._wrap`) calls in only when its input already is a
``dask.array.Array``, so ``dask`` is never imported for other inputs.

**Passes.** A *pass* is one ``dask.compute`` (or ``persist``) of a graph that reads every
chunk of ``A`` once. The tall algorithms below fuse the two products of a power step into
one pass: each row block :math:`A_i` is read once and gives :math:`A_i X` and then
:math:`A_i^\top (A_i X)`, so :math:`A^\top A X` and the Gram matrix
:math:`X^\top A^\top A X` cost one pass. Small results (``n x l``) come back to the client
as NumPy; long results (``m x l``) either stay in the cluster (``persist``, single-pass
SVD) or are returned as the lazy product ``A @ M`` with a small ``M`` (one more pass when
computed).

**Randomness.** Long test matrices are never shipped: each task draws the rows of its
chunk with :mod:`rnla._random` (counter-based, keyed by the canonical row block), so the
matrices are those of the in-memory path for the same ``rng``, whatever the chunking.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np

from rnla import _random

__all__ = ["is_dask_array"]

_TREE = 8  # fan-in of the reductions over row blocks


def is_dask_array(A) -> bool:
    """Return ``True`` if ``A`` is a ``dask.array.Array`` (never imports dask)."""
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(A, mod.Array)


def validate(A, name: str = "A"):
    """Check a dask array (2-D, non-empty, real) and cast integers lazily; no compute.

    Finiteness cannot be checked without a pass over the data: it is checked on the
    small results of the first pass instead (:func:`check_finite`).
    """
    from rnla._validation import float_dtype

    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional, got shape {A.shape} ({A.ndim}-D)")
    if any(math.isnan(s) for s in A.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {A.shape}); call "
            f"{name}.compute_chunk_sizes() first"
        )
    if 0 in A.shape:
        raise ValueError(f"{name} must be non-empty, got shape {A.shape}")
    if A.dtype == object:
        raise TypeError(f"{name} must be numeric, got a dask array of dtype object")
    dtype = float_dtype(A.dtype)
    if A.dtype != dtype:
        A = A.astype(dtype)
    return A, dtype


def check_finite(*arrays, name: str = "A") -> None:
    """Raise if a result of a pass holds NaN/inf (the input was not finite)."""
    for a in arrays:
        if not np.isfinite(a).all():
            raise ValueError(
                f"{name} must contain only finite values: a product with {name} over the "
                "dask chunks returned NaN or inf"
            )


# ---------------------------------------------------------------------------------------
# passes over row blocks
# ---------------------------------------------------------------------------------------


def row_blocks(A):
    """Return ``A`` with one column chunk, its delayed row blocks and their row offsets."""
    if len(A.chunks[1]) > 1:
        A = A.rechunk({1: -1})  # merges column chunks; every chunk is still read once
    offsets = np.concatenate([[0], np.cumsum(A.chunks[0])]).astype(np.int64)
    blocks = A.to_delayed().ravel().tolist()
    return A, blocks, [(int(a), int(b)) for a, b in itertools.pairwise(offsets)]


def _add(*parts):
    first = parts[0]
    if first is None:
        return None
    return tuple(sum(p[i] for p in parts) for i in range(len(first)))


def _tree_sum(items):
    from dask import delayed

    while len(items) > 1:
        items = [
            delayed(_add, pure=True)(*items[i : i + _TREE]) for i in range(0, len(items), _TREE)
        ]
    return items[0]


def _first(pair):
    return pair[0]


def _second(pair):
    return pair[1]


def run_pass(A, func, *args, long_width=None, long_dtype=None, counter=None):
    """One pass over the row blocks of ``A``: ``func(block, start, stop, *args)``.

    ``func`` returns ``(long_block, sums)``: ``long_block`` (rows of a long output,
    or ``None``) and ``sums`` a tuple of arrays summed over all blocks. Returns
    ``(long, sums)`` where ``long`` is a persisted dask array of shape
    ``(m, long_width)`` (``None`` if ``long_width`` is None) and ``sums`` NumPy.
    """
    import dask
    import dask.array as da
    from dask import delayed

    A, blocks, spans = row_blocks(A)
    args = [delayed(a, pure=True) if isinstance(a, np.ndarray) else a for a in args]
    fn = delayed(func, pure=True)
    outs = [fn(b, start, stop, *args) for b, (start, stop) in zip(blocks, spans, strict=True)]
    total = _tree_sum([delayed(_second, pure=True)(o) for o in outs])
    if counter is not None:
        counter.add()
    if long_width is None:
        (sums,) = dask.compute(total)
        return None, sums
    longs = [delayed(_first, pure=True)(o) for o in outs]
    *longs, total = dask.persist(*longs, total)
    pieces = [
        da.from_delayed(piece, shape=(stop - start, long_width), dtype=long_dtype)
        for piece, (start, stop) in zip(longs, spans, strict=True)
    ]
    (sums,) = dask.compute(total)
    return da.concatenate(pieces, axis=0), sums


# ---------------------------------------------------------------------------------------
# block functions (run on the workers)
# ---------------------------------------------------------------------------------------


def _mul(block, X):
    """``block @ X`` for a row block and a narrow ``X``, as ``(X^T block^T)^T``.

    OpenBLAS runs the short-and-wide shape ``(l x n) @ (n x rows)`` about 1.5x faster
    than the tall-and-narrow ``(rows x n) @ (n x l)`` it is the transpose of (measured
    on 10000 x 2000 blocks, ``l = 60``, one thread: 0.042 s against 0.068 s). The
    result is F-ordered; a block stored F-ordered is multiplied as it is.
    """
    if not isinstance(block, np.ndarray) or (
        block.flags.f_contiguous and not block.flags.c_contiguous
    ):
        return block @ X  # F-ordered, or another chunk type (e.g. scipy.sparse)
    return (X.T @ block.T).T


def _tmul(block, Y):
    """``block^T @ Y`` as ``(Y^T block)^T`` (the fast shape, see :func:`_mul`)."""
    if not isinstance(block, np.ndarray) or (
        block.flags.f_contiguous and not block.flags.c_contiguous
    ):
        return block.T @ Y
    return (Y.T @ block).T


def _normal_block(block, start, stop, X):
    """``A_i^T A_i X`` and ``(A_i X)^T (A_i X)`` (float64 accumulation)."""
    Y = _mul(block, X.astype(block.dtype, copy=False))
    Y64 = Y.astype(np.float64, copy=False)
    return None, (np.asarray(_tmul(block, Y), dtype=np.float64), Y64.T @ Y64)


def _normal_long_block(block, start, stop, X):
    """As :func:`_normal_block`, keeping ``A_i X`` as a long output."""
    Y = _mul(block, X.astype(block.dtype, copy=False))
    Y64 = Y.astype(np.float64, copy=False)
    return Y, (np.asarray(_tmul(block, Y), dtype=np.float64), Y64.T @ Y64)


def _normal_long_only_block(block, start, stop, X):
    """``A_i X`` (long output) and ``A_i^T A_i X``, without the Gram matrix."""
    Y = _mul(block, X.astype(block.dtype, copy=False))
    return Y, (np.asarray(_tmul(block, Y), dtype=np.float64),)


def _long_gram_block(block, start, stop, X):
    """``A_i X`` (long output) and ``(A_i X)^T (A_i X)``: one product."""
    Y = _mul(block, X.astype(block.dtype, copy=False))
    Y64 = Y.astype(np.float64, copy=False)
    return Y, (Y64.T @ Y64,)


def _gram_block(block, start, stop, X):
    """``(A_i X)^T (A_i X)`` only."""
    Y = np.asarray(_mul(block, X.astype(block.dtype, copy=False)), dtype=np.float64)
    return None, (Y.T @ Y,)


def _left_normal_block(block, start, stop, key, width):
    """``A_i^T Psi_i`` with ``Psi`` the counter-based Gaussian (m, width)."""
    Psi = _random.normal_rows(key, start, stop, width, dtype=block.dtype)
    return None, (np.asarray(_tmul(block, Psi), dtype=np.float64),)


def _single_pass_block(block, start, stop, Omega, key, ell):
    """Single-pass sketches of one row block: ``Y_i``; ``Psi_i^T A_i``, Gram, ``Psi_i^T Y_i``."""
    Y = _mul(block, Omega.astype(block.dtype, copy=False))
    Psi = _random.normal_rows(key, start, stop, ell, dtype=np.float64)
    Y64 = np.asarray(Y, dtype=np.float64)
    W = np.asarray(Psi.astype(block.dtype, copy=False).T @ block, dtype=np.float64)
    return Y, (W, Y64.T @ Y64, Psi.T @ Y64)


def _sum_squares_block(block, start, stop):
    b = np.asarray(block, dtype=np.float64)
    return None, (np.array(float(np.einsum("ij,ij->", b, b))),)


# ---------------------------------------------------------------------------------------
# small dense helpers (client side)
# ---------------------------------------------------------------------------------------


def gram_whitener(G: np.ndarray) -> np.ndarray:
    """``T`` with ``T^T G T = I`` on the numerically positive part of the PSD ``G``.

    ``Y T`` then has orthonormal columns when ``G = Y^T Y`` (Gram-based orthonormalisation;
    directions with eigenvalues below ``l u lambda_max`` are rounding noise and dropped).
    """
    G = (G + G.T) / 2
    lam, V = np.linalg.eigh(G)
    order = np.argsort(-lam, kind="stable")
    lam, V = lam[order], V[:, order]
    top = max(float(lam[0]), 0.0) if lam.size else 0.0
    keep = lam > G.shape[0] * np.finfo(np.float64).eps * top
    if not keep.any():
        return np.zeros((G.shape[0], 0))
    return V[:, keep] / np.sqrt(lam[keep])


class Tall:
    """Tall orientation of a dask array: passes through its row blocks, fused products."""

    def __init__(self, A, dtype, counter):
        self.A = A
        self.dtype = np.dtype(dtype)
        self.counter = counter
        self.shape = tuple(int(s) for s in A.shape)

    def normal(self, X: np.ndarray):
        """``(A^T A X, X^T A^T A X)`` in float64: one pass."""
        _, (P, G) = run_pass(self.A, _normal_block, np.asarray(X), counter=self.counter)
        check_finite(P, G)
        return P, (G + G.T) / 2

    def gram(self, X: np.ndarray) -> np.ndarray:
        """``X^T A^T A X`` in float64: one pass."""
        _, (G,) = run_pass(self.A, _gram_block, np.asarray(X), counter=self.counter)
        check_finite(G)
        return (G + G.T) / 2

    def left_gaussian(self, key: int, width: int) -> np.ndarray:
        """``A^T Psi`` (n, width) for the counter-based Gaussian ``Psi`` (m, width)."""
        _, (P,) = run_pass(self.A, _left_normal_block, key, width, counter=self.counter)
        check_finite(P)
        return P

    def normal_long(self, X: np.ndarray, gram: bool = True):
        """Return ``(A X, A^T A X, X^T A^T A X)``: one pass; ``A X`` stays in the cluster.

        ``gram=False`` skips the Gram matrix (returned as ``None``).
        """
        X = np.asarray(X)
        Y, sums = run_pass(
            self.A,
            _normal_long_block if gram else _normal_long_only_block,
            X,
            long_width=X.shape[1],
            long_dtype=self.dtype,
            counter=self.counter,
        )
        check_finite(*sums)
        if not gram:
            return Y, sums[0], None
        P, G = sums
        return Y, P, (G + G.T) / 2

    def long_gram(self, X: np.ndarray):
        """Return ``(A X, X^T A^T A X)``: one pass, one product; ``A X`` stays in the cluster."""
        X = np.asarray(X)
        Y, (G,) = run_pass(
            self.A,
            _long_gram_block,
            X,
            long_width=X.shape[1],
            long_dtype=self.dtype,
            counter=self.counter,
        )
        check_finite(G)
        return Y, (G + G.T) / 2

    def sum_squares(self) -> float:
        """``||A||_F^2`` (float64 accumulation): one pass."""
        _, (s,) = run_pass(self.A, _sum_squares_block, counter=self.counter)
        check_finite(s)
        return float(s)


# ---------------------------------------------------------------------------------------
# long (persisted) factors
# ---------------------------------------------------------------------------------------


def long_orth(Y, G: np.ndarray | None = None, keep: bool = False):
    """``T`` such that ``Y T`` has orthonormal columns, ``Y`` a persisted long dask array.

    Gram whitening (from ``G = Y^T Y`` if the caller has it), then one Cholesky-QR step
    on the Gram matrix of the whitened block, re-read from the persisted ``Y`` (no pass
    over ``A``): orthonormal to working precision like Cholesky-QR2. ``keep=True`` (``Y``
    lazy, ``G`` given) persists ``Y`` in the same graph that computes that Gram matrix
    and returns ``(Y persisted, T)``.
    """
    import dask

    if G is None:
        (G,) = dask.compute(Y.T @ Y)
        G = np.asarray(G, dtype=np.float64)
    T = gram_whitener(G)
    if T.shape[1] == 0:
        if keep:
            (Y,) = dask.persist(Y)
            return Y, T
        return T
    Z = Y @ T.astype(Y.dtype, copy=False)
    if keep:
        Y, G2 = dask.persist(Y, Z.T @ Z)
        (G2,) = dask.compute(G2)
    else:
        (G2,) = dask.compute(Z.T @ Z)
    G2 = (np.asarray(G2, dtype=np.float64) + np.asarray(G2, dtype=np.float64).T) / 2
    try:
        R = np.linalg.cholesky(G2).T
    except np.linalg.LinAlgError:
        return (Y, T) if keep else T
    T = T @ np.linalg.inv(R)
    return (Y, T) if keep else T


def long_times(Y, M: np.ndarray):
    """Lazy ``Y @ M`` for a long dask ``Y`` and a small NumPy ``M`` (in ``Y``'s dtype)."""
    import dask.array as da

    M = np.ascontiguousarray(M, dtype=Y.dtype)
    return Y @ da.from_array(M, chunks=M.shape)


def sign_fix_long(U, Vt: np.ndarray):
    """Apply the in-memory sign rule (largest-magnitude entry of each column of ``U`` positive).

    Reads the persisted ``U`` once (column maxima and minima).
    """
    import dask

    if U.shape[1] == 0:
        return U, Vt
    # U is a small product of a kept sketch: keep it too, so that neither the column
    # extremes below nor the caller's U.compute() recompute the product.
    U, hi, lo = dask.persist(U, U.max(axis=0), U.min(axis=0))
    hi, lo = dask.compute(hi, lo)
    signs = np.where(np.asarray(hi) >= -np.asarray(lo), 1.0, -1.0)
    return U * signs.astype(U.dtype), Vt * signs[:, None].astype(Vt.dtype)


def _pad(U, s: np.ndarray, Vt: np.ndarray, rank: int, n_cols: int):
    """Pad a numerically rank-deficient result with zero triplets up to ``rank``."""
    import dask.array as da

    r = s.shape[0]
    if r >= rank:
        return U[:, :rank], s[:rank], Vt[:rank]
    extra = rank - r
    U = da.concatenate(
        [U, da.zeros((U.shape[0], extra), dtype=U.dtype, chunks=(U.chunks[0], extra))], axis=1
    )
    s = np.concatenate([s, np.zeros(extra, dtype=s.dtype)])
    Vt = np.vstack([Vt, np.zeros((extra, n_cols), dtype=Vt.dtype)])
    return U, s, Vt


# ---------------------------------------------------------------------------------------
# algorithms on the tall orientation
# ---------------------------------------------------------------------------------------


def subspace_qb(T: Tall, X: np.ndarray, n_iter: int, normalize):
    """HMT Alg. 4.4 with fused passes: ``(Y, W, Bt)`` with ``Q = Y W`` orthonormal, ``Bt = A^T Q``.

    ``n_iter + 1`` passes: pass ``j`` reads each row block once for ``A X_j`` and
    ``A^T (A X_j)``; the last keeps ``Y = A X_q`` in the cluster.
    """
    for _ in range(n_iter):
        P, G = T.normal(X)
        W = gram_whitener(G)  # A X W is orthonormal, A^T (A X W) = P W
        X = normalize((P @ W).astype(T.dtype, copy=False))
    Y, P, G = T.normal_long(X)
    W = long_orth(Y, G)
    return Y, W, (P @ W).astype(T.dtype, copy=False)


def svd_from_qb(Y, W: np.ndarray, Bt: np.ndarray, rank: int):
    """Rank-``rank`` SVD of ``Q B`` with ``Q = Y W`` (long, lazy) and ``Bt = B^T``."""
    from rnla.lowrank import _wide_svd

    Ur, s, Vt = _wide_svd(np.ascontiguousarray(Bt))
    r = min(rank, s.shape[0])
    U = long_times(Y, W @ Ur[:, :r])
    U, Vt = sign_fix_long(U, Vt[:r])
    return _pad(U, s[:r], Vt, rank, Bt.shape[0])


def krylov_svd(T: Tall, rank: int, block: int, n_iter: int, Q0, normalizer: str, dtype):
    """Block Krylov SVD (Musco-Musco) of the tall ``A``, basis on the short side.

    ``Q0`` is the first orthonormal block ``orth(A^T Psi)`` (one pass by the caller).
    Then ``n_iter`` fused passes give ``A Q_j`` (kept) and ``A^T A Q_j``, and a last
    pass gives ``A Q_q`` (kept) and its Gram matrix (one product: the other blocks of
    column ``q`` of ``Q^T A^T A Q`` are ``(A^T A Q_j)^T Q_q``), hence the whole Gram
    matrix without another pass. Returns ``(U, s, Vt)`` for ``A`` with ``U`` long (lazy
    on the kept blocks).
    """
    import dask.array as da
    import scipy.linalg as sla

    from rnla.lowrank import _orth_against

    n = T.shape[1]
    cap = min(n, block * (n_iter + 1))
    basis = np.empty((n, cap), dtype=dtype, order="F")
    basis[:, : Q0.shape[1]] = Q0
    dim, last = Q0.shape[1], slice(0, Q0.shape[1])
    gens = []  # (cols, A Q_cols persisted, A^T A Q_cols)
    for _ in range(n_iter):
        if dim >= cap:
            break
        Y, Z, _ = T.normal_long(basis[:, last], gram=False)
        gens.append((last, Y, Z))
        take = min(Z.shape[1], cap - dim)
        Zc = Z[:, :take].astype(dtype, copy=False)
        basis[:, dim : dim + take] = _orth_against(Zc, basis[:, :dim], normalizer)
        last, dim = slice(dim, dim + take), dim + take
    basis = basis[:, :dim]
    Y, G_last = T.long_gram(basis[:, last])
    b64 = basis.astype(np.float64)
    G = np.empty((dim, dim))
    for cols, _, Z in gens:
        G[:, cols] = b64.T @ Z
        G[cols, last] = G[last, cols].T
    G[last, last] = G_last
    gens.append((last, Y, None))
    G = (G + G.T) / 2
    lam, Wg = sla.eigh(G, check_finite=False)
    order = np.argsort(-lam, kind="stable")[:rank]
    floor = np.finfo(np.float64).eps * max(float(lam[order[0]]), np.finfo(np.float64).tiny)
    scale = 1.0 / np.sqrt(np.maximum(lam[order], floor))
    Wk = Wg[:, order] * scale
    # X = B^T W_k = A Q W_k, from the kept blocks A Q_cols.
    X = da.concatenate([Yc for _, Yc, _ in gens], axis=1)
    # X^T X = W_k^T G W_k (= I up to rounding): no read of X for the first whitening.
    # X (m x k) is kept in the graph of the Cholesky-QR step, so the kept blocks
    # (m x (q + 1) l) are read once, not once for that step and once more for U.
    X, Tx = long_orth(long_times(X, Wk), Wk.T @ G @ Wk, keep=True)  # X Tx orthonormal
    if Tx.shape[1] < Wk.shape[1]:
        Tx = np.hstack([Tx, np.zeros((Tx.shape[0], Wk.shape[1] - Tx.shape[1]))])
    R = np.linalg.pinv(Tx) / scale  # W_k^T B = D R^T Vq^T with D = diag(1 / scale)
    Zr, s, Vrt = sla.svd(R.T, check_finite=False)
    Vshort = b64 @ (Wg[:, order] @ Zr)  # right singular vectors of A (n, k)
    U = long_times(X, Tx @ Vrt.T)  # left singular vectors of A (m, k), lazy on kept blocks
    U, Vt = sign_fix_long(U, np.ascontiguousarray(Vshort.T))
    return U, s.astype(dtype), Vt.astype(dtype)


def single_pass(T: Tall, rank: int, Omega: np.ndarray, psi_key: int, ell: int, dtype):
    """TYUC17 single-pass SVD: one pass gives ``Y = A Omega`` (kept) and ``W = Psi A``."""
    import scipy.linalg as sla

    from rnla.lowrank import _solve_upper, _wide_svd

    Y, (W, G, PsiY) = run_pass(
        T.A,
        _single_pass_block,
        np.asarray(Omega),
        psi_key,
        ell,
        long_width=Omega.shape[1],
        long_dtype=dtype,
        counter=T.counter,
    )
    check_finite(W, G, PsiY)
    Tq = long_orth(Y, (G + G.T) / 2)  # Q = Y Tq
    PsiQ = PsiY @ Tq
    U_, Tr = sla.qr(PsiQ.astype(dtype, copy=False), mode="economic", check_finite=False)
    X = _solve_upper(Tr, U_.T @ W.astype(dtype, copy=False))
    Ux, s, Vt = _wide_svd(np.ascontiguousarray(X.T))
    r = min(rank, s.shape[0])
    U = long_times(Y, Tq @ Ux[:, :r])
    U, Vt = sign_fix_long(U, Vt[:r])
    return _pad(U, s[:r], Vt, rank, T.shape[1])


# ---------------------------------------------------------------------------------------
# sketches S @ A with S generated per chunk
# ---------------------------------------------------------------------------------------


def _sketch_chunk(block, spec, whole, block_info=None):
    from rnla.sketch import _column_block

    start, stop = block_info[0]["array-location"][0]
    S = whole if spec is None else _column_block(spec, start, stop)
    return np.asarray(S @ block)


def sketch_rows(S, A):
    """Lazy ``S @ A`` for a SketchOperator ``S`` (k, n) and a dask ``A`` (n, p).

    Blockwise-by-construction sketches (Gaussian, Rademacher, CountSketch, sparse sign)
    carry a recipe ``S._spec``: each task draws the columns of ``S`` that meet its row
    chunk of ``A`` (counter-based, :mod:`rnla._random`), so ``S`` is never shipped, and
    ``S @ A`` equals the in-memory product for every chunking. Sketches that mix all
    rows (SRHT, orthogonal Gaussian, tensor and sampling sketches) are applied whole,
    which needs ``A`` in a single row chunk.
    """
    import dask.array as da

    k, n = S.shape
    if A.shape[0] != n:
        raise ValueError(
            f"A must have n={n} rows to be sketched by an operator of shape {S.shape}, "
            f"got {A.shape[0]} rows"
        )
    spec = getattr(S, "_spec", None)
    n_row_chunks = len(A.chunks[0])
    if spec is None and n_row_chunks > 1:
        raise ValueError(
            f"a {type(S).__name__} sketch mixes all n={n} rows, so it cannot be applied "
            f"chunk by chunk to a dask array with {n_row_chunks} row chunks; use a "
            "blockwise sketch (gaussian, rademacher, countsketch, sparse_sign) or "
            "rechunk A to one row chunk (A.rechunk({0: -1}))"
        )
    dtype = np.result_type(A.dtype, np.float32)
    parts = A.map_blocks(
        _sketch_chunk,
        spec,
        None if spec is not None else S,
        dtype=dtype,
        chunks=((k,) * n_row_chunks, A.chunks[1]),
    )
    if n_row_chunks == 1:
        return parts
    pieces = [parts[i * k : (i + 1) * k] for i in range(n_row_chunks)]
    return da.stack(pieces).sum(axis=0, split_every=_TREE).astype(dtype)
