"""Numba kernels of the sketching operators (no validation; see :mod:`rnla.sketch`).

Hash sketches (CountSketch, sparse sign, TensorSketch as an operator) are described by
an ``(n, z)`` table of packed codes ``(row << 1) | sign_bit`` (the output row that input
row ``j`` is sent to by its ``t``-th nonzero, and the sign there) or, for the
counter-based sketches, by their key: the sparse kernels draw the codes they need on
the fly (:func:`_draw_rows`). The SRHT kernels use the
unnormalised Walsh–Hadamard matrix ``H[a, b] = (-1)**popcount(a & b)``.

Every parallel loop owns a disjoint set of output entries, and each output entry is
accumulated in a fixed order, so results do not depend on the number of threads.
"""

import numpy as np
from numba import njit, prange

from rnla._kernels.intrinsics import _fetch_add, _wide_vectors

# ----------------------------------------------------------------------------------------
# hash sketches: out = S @ A / scale with S[code[j, t] >> 1, j] = scale * (+1 or -1)
# ----------------------------------------------------------------------------------------
# A nonzero of S is packed into one integer, code = (row << 1) | (sign < 0): the z codes of
# a column fill half a cache line (int32, z = 8), which is what random access costs here.
# Callers multiply by the common magnitude `scale` once, at the end.

_COL_BLOCK = 64  # columns per parallel task: 512 B of float64 per row, one SIMD stream


@njit(cache=True, nogil=True, parallel=True)
def _hash_apply_dense(codes, A, out):
    # A is C-contiguous (n, p); each task owns a block of output columns.
    n, p = A.shape
    z = codes.shape[1]
    n_blocks = (p + _COL_BLOCK - 1) // _COL_BLOCK
    for b in prange(n_blocks):
        c0 = b * _COL_BLOCK
        c1 = min(p, c0 + _COL_BLOCK)
        for j in range(n):
            for t in range(z):
                code = codes[j, t]
                r = code >> 1
                if code & 1:
                    for c in range(c0, c1):
                        out[r, c] -= A[j, c]
                else:
                    for c in range(c0, c1):
                        out[r, c] += A[j, c]


@njit(cache=True, nogil=True, parallel=True)
def _hash_apply_dense_t(codes, At, out_t):
    # At is C-contiguous (p, n), i.e. A in Fortran order; out_t is (p, k) = (S @ A).T.
    p, n = At.shape
    z = codes.shape[1]
    for c in prange(p):
        o = out_t[c]
        a_row = At[c]
        for j in range(n):
            a = a_row[j]
            for t in range(z):
                code = codes[j, t]
                # branchless sign: random signs would defeat the branch predictor
                o[code >> 1] += a - 2 * a * (code & 1)


@njit(cache=True, nogil=True, parallel=True)
def _hash_adjoint_dense(codes, Y, out):
    # out = S.T @ Y: row j gathers the rows code >> 1 of Y.
    n, z = codes.shape
    p = Y.shape[1]
    for j in prange(n):
        o = out[j]
        for t in range(z):
            code = codes[j, t]
            y = Y[code >> 1]
            if code & 1:
                for c in range(p):
                    o[c] -= y[c]
            else:
                for c in range(p):
                    o[c] += y[c]


@njit(cache=True, nogil=True)
def _floyd_sample(U, k, out):
    # Floyd's algorithm: for each row, out[j] gets z distinct integers in [0, k) from the
    # pre-drawn uniforms U[j] (randomness stays in NumPy's Generator).
    n, z = U.shape
    for j in range(n):
        m = 0
        for s in range(k - z, k):
            t = int(U[j, m] * (s + 1))
            if t > s:  # guards U == 1.0 - ulp rounding up
                t = s
            dup = False
            for q in range(m):
                if out[j, q] == t:
                    dup = True
                    break
            out[j, m] = s if dup else t
            m += 1


@njit(cache=True, nogil=True)
def _floyd_codes(U, negative, k, codes):
    # Floyd's sampling as above, writing packed codes (row << 1) | sign_bit directly, so
    # that building a large sparse sign sketch needs no extra passes over (n, z) arrays.
    n, z = U.shape
    for j in range(n):
        for m in range(z):
            s = k - z + m
            t = int(U[j, m] * (s + 1))
            if t > s:
                t = s
            for q in range(m):
                if (codes[j, q] >> 1) == t:
                    t = s
                    break
            codes[j, m] = (t << 1) | negative[j, m]


@njit(cache=True, nogil=True, inline="always")
def _splitmix64(x):
    # SplitMix64 output function (Steele, Lea and Flood 2014): a bijective mix of the
    # 64-bit counter; SplitMix64 (this mix of key + gamma * counter) passes BigCrush.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True, parallel=True)
def _hash_codes_counter(key, start, k, codes):
    # Codes of columns start, start+1, ... of a hash sketch with z = codes.shape[1]
    # nonzeros per column. Nonzero m of column j comes from the counter-based draw
    # u = splitmix64(key + gamma * (j z + m + 1)): a pure function of (key, j, m), so any
    # column range is produced on its own, in parallel, with no stored draws. The top 32
    # bits of u give the uniform of Floyd's sampling step m, bit 0 the sign.
    n, z = codes.shape
    gamma = np.uint64(0x9E3779B97F4A7C15)
    base = np.uint64(key)
    for jj in prange(n):
        counter = np.uint64(start + jj) * np.uint64(z)
        for m in range(z):
            u = _splitmix64(base + gamma * (counter + np.uint64(m + 1)))
            s = k - z + m
            # t = floor(U (s + 1)) with U the top 32 bits of u over 2^32 (integer
            # multiply-high; the bias, at most (s + 1) / 2^32, is negligible)
            t = np.int64(((u >> np.uint64(32)) * np.uint64(s + 1)) >> np.uint64(32))
            for q in range(m):
                if (codes[jj, q] >> 1) == t:
                    t = s
                    break
            codes[jj, m] = (t << 1) | np.int64(u & np.uint64(1))


# ----------------------------------------------------------------------------------------
# sparse input: column-blocked accumulation, hash codes drawn on the fly
# ----------------------------------------------------------------------------------------
# S @ A for CSR A in three steps: the nonzeros are bucketed by column block of A (a
# stable counting sort into a few buckets, so each write stream is sequential), then each
# block is one task that adds every nonzero into the k x cb slab out[:, c0:c1] of the
# output (in L2 cache), then scales the slab. The codes of a nonzero's row are computed
# on the fly from the counter-based hash (no (n, z) table is written or read at random),
# in batches laid out so that the SplitMix64 arithmetic vectorises. Every output entry
# receives its terms in the order of the rows of A (then of the z nonzeros of S), as the
# column kernel does, whatever the block size, the chunks or the number of threads.

_HASH_BATCH = 256  # nonzeros whose codes are drawn together (z x 256 int64 in L1)


@njit(cache=True, nogil=True)
def _bucket_count(indptr, indices, shift, counts):
    # counts[b, blk] = nonzeros of row chunk b in column block blk = column >> shift.
    # Serial: one streaming read of the indices (about 1 ns per nonzero) costs less than
    # a parallel region when another process holds a core.
    n = indptr.shape[0] - 1
    n_chunks = counts.shape[0]
    for b in range(n_chunks):
        c = counts[b]
        for q in range(indptr[(b * n) // n_chunks], indptr[((b + 1) * n) // n_chunks]):
            c[indices[q] >> shift] += 1


@njit(cache=True, nogil=True, parallel=True)
def _bucket_fill(indptr, indices, data, shift, offsets, rows, cols, vals, ends, n_workers):
    # Stable scatter of the nonzeros into their column block's bucket: row chunk b writes
    # its nonzeros of block blk from offsets[b, blk] on, in row order. The chunks are
    # tasks taken from a shared counter; ``ends`` (nnz + n_chunks) is scratch.
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        while True:
            b = _fetch_add(counter)
            if b >= offsets.shape[0]:
                break
            _fill_chunk(indptr, indices, data, shift, offsets, rows, cols, vals, ends, b)


@njit(cache=True, nogil=True)
def _fill_chunk(indptr, indices, data, shift, offsets, rows, cols, vals, ends, b):
    # The row of each nonzero without a data-dependent branch (rows with 0, 1, 2...
    # nonzeros in random order defeat the predictor): e[x] counts the rows of the chunk
    # whose nonzeros end at position x, and the row of nonzero q is j0 + sum_{x <= q} e[x].
    # Chunk b keeps its counts in ends[Q0 + b : Q1 + b + 1], apart from the other chunks.
    n = indptr.shape[0] - 1
    n_chunks = offsets.shape[0]
    mask = (1 << shift) - 1
    j0 = (b * n) // n_chunks
    j1 = ((b + 1) * n) // n_chunks
    q0 = indptr[j0]
    q1 = indptr[j1]
    e = ends[q0 + b : q1 + b + 1]
    e[:] = 0
    for j in range(j0, j1):
        e[indptr[j + 1] - q0] += 1
    j = j0 + e[0]  # the empty rows that come before the chunk's first nonzero
    pos = offsets[b].copy()
    for q in range(q0, q1):
        c = indices[q]
        blk = c >> shift
        w = pos[blk]
        rows[w] = j
        cols[w] = c & mask
        vals[w] = data[q]
        pos[blk] = w + 1
        j += e[q - q0 + 1]


@njit(cache=True, nogil=True)
def _draw_rows(base, start, rows, w0, nw, k, z, T, U):
    # T[m, i], U[m, i]: output row and sign bit of nonzero m of the sketch column
    # start + rows[w0 + i]; the same draw as _hash_codes_counter (Floyd's step m from
    # splitmix64(key + gamma ((start + j) z + m + 1))), written as straight-line loops
    # over the batch so that they vectorise, with Floyd's duplicate test as a select
    # (the earlier rows of a column are distinct and all below s, so at most one
    # matches and s itself never does).
    _wide_vectors()
    gamma = np.uint64(0x9E3779B97F4A7C15)
    g = gamma * np.uint64(z)
    for m in range(z):
        s = np.uint64(k - z + m)
        s1 = s + np.uint64(1)
        cm = base + g * np.uint64(start) + gamma * np.uint64(m + 1)
        Tm = T[m]
        Um = U[m]
        for i in range(nw):
            x = cm + g * np.uint64(rows[w0 + i])
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            u = x ^ (x >> np.uint64(31))
            Tm[i] = ((u >> np.uint64(32)) * s1) >> np.uint64(32)
            Um[i] = u & np.uint64(1)
        for q in range(m):
            Tq = T[q]
            for i in range(nw):
                Tm[i] = s if Tq[i] == Tm[i] else Tm[i]


@njit(cache=True, nogil=True, parallel=True)
def _bucket_apply_hashed(key, start, k, z, starts, cb, rows, cols, vals, scale, out, n_workers):
    # out[:, blk*cb : (blk+1)*cb] = scale * (the sum of block blk's nonzeros sketched),
    # codes drawn on the fly; every entry of out is written. Blocks are tasks taken from
    # a shared counter.
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        while True:
            blk = _fetch_add(counter)
            if blk >= starts.shape[0] - 1:
                break
            _apply_block_hashed(key, start, k, z, starts, cb, rows, cols, vals, scale, out, blk)


@njit(cache=True, nogil=True)
def _apply_block_hashed(key, start, k, z, starts, cb, rows, cols, vals, scale, out, blk):
    base = np.uint64(key)
    sign = np.ones(2, dtype=out.dtype)
    sign[1] = -1.0  # a * sign[bit]: exact, and no branch on a random bit
    T = np.empty((z, _HASH_BATCH), dtype=np.uint64)
    U = np.empty((z, _HASH_BATCH), dtype=np.uint64)
    # contiguous k x cb accumulator: the rows of the slab out[:, c0:c1] are p apart,
    # one page each, and random rows would miss the TLB
    acc = np.zeros((k, cb), dtype=out.dtype)
    for w0 in range(starts[blk], starts[blk + 1], _HASH_BATCH):
        nw = min(_HASH_BATCH, starts[blk + 1] - w0)
        _draw_rows(base, start, rows, w0, nw, k, z, T, U)
        for i in range(nw):
            a = vals[w0 + i]
            c = cols[w0 + i]
            for m in range(z):
                acc[T[m, i], c] += a * sign[U[m, i]]
    _store_slab(acc, scale, out, blk * cb)


@njit(cache=True, nogil=True, parallel=True)
def _bucket_apply_codes(codes, starts, cb, rows, cols, vals, scale, out, n_workers):
    # As _bucket_apply_hashed, for a sketch given by its (n, z) code table.
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        while True:
            blk = _fetch_add(counter)
            if blk >= starts.shape[0] - 1:
                break
            _apply_block_codes(codes, starts, cb, rows, cols, vals, scale, out, blk)


@njit(cache=True, nogil=True)
def _apply_block_codes(codes, starts, cb, rows, cols, vals, scale, out, blk):
    k = out.shape[0]
    z = codes.shape[1]
    sign = np.ones(2, dtype=out.dtype)
    sign[1] = -1.0
    acc = np.zeros((k, cb), dtype=out.dtype)
    for w in range(starts[blk], starts[blk + 1]):
        a = vals[w]
        c = cols[w]
        cj = codes[rows[w]]
        for m in range(z):
            code = cj[m]
            acc[code >> 1, c] += a * sign[code & 1]
    _store_slab(acc, scale, out, blk * cb)


@njit(cache=True, nogil=True)
def _store_slab(acc, scale, out, c0):
    # out[:, c0:c0+cb] = scale * acc (columns beyond p dropped)
    k, cb = acc.shape
    c1 = min(out.shape[1], c0 + cb)
    for r in range(k):
        for c in range(c0, c1):
            out[r, c] = acc[r, c - c0] * scale


# ----------------------------------------------------------------------------------------
# Walsh–Hadamard transforms along axis 0, on column panels [c0, c1) of a C-ordered array
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _parity(x):
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    x ^= x >> 4
    x ^= x >> 2
    x ^= x >> 1
    return x & 1


@njit(cache=True, nogil=True)
def _fwht_rows(Z, start, stride, length, c0, c1):
    # In-place unnormalised FWHT of the `length` rows start, start+stride, ... restricted
    # to columns [c0, c1). Radix-4 butterflies (two levels per sweep, half the memory
    # traffic of radix-2) over contiguous row segments, which LLVM vectorises.
    h = 1
    while 2 * h < length:
        for i in range(0, length, 4 * h):
            for m in range(i, i + h):
                x0 = Z[start + m * stride]
                x1 = Z[start + (m + h) * stride]
                x2 = Z[start + (m + 2 * h) * stride]
                x3 = Z[start + (m + 3 * h) * stride]
                for c in range(c0, c1):
                    a0 = x0[c]
                    a1 = x1[c]
                    a2 = x2[c]
                    a3 = x3[c]
                    s0 = a0 + a1
                    d0 = a0 - a1
                    s1 = a2 + a3
                    d1 = a2 - a3
                    x0[c] = s0 + s1
                    x1[c] = d0 + d1
                    x2[c] = s0 - s1
                    x3[c] = d0 - d1
        h *= 4
    if h < length:  # odd number of levels: one radix-2 sweep
        for i in range(0, length, 2 * h):
            for m in range(i, i + h):
                x = Z[start + m * stride]
                y = Z[start + (m + h) * stride]
                for c in range(c0, c1):
                    a = x[c]
                    b = y[c]
                    x[c] = a + b
                    y[c] = a - b


@njit(cache=True, nogil=True, parallel=True)
def _srht_stage1(A, signs, c0, c1, n2, Z):
    # Z[:, :] = blockwise FWHT (blocks of n2 rows) of the sign-flipped, zero-padded panel
    # A[:, c0:c1]. Blocks are independent tasks that fit in cache.
    n = A.shape[0]
    N = Z.shape[0]
    w = c1 - c0
    n1 = N // n2
    for b in prange(n1):
        for m in range(n2):
            j = b * n2 + m
            if j < n:
                s = signs[j]
                for c in range(w):
                    Z[j, c] = s * A[j, c0 + c]
            else:
                for c in range(w):
                    Z[j, c] = 0.0
        _fwht_rows(Z, b * n2, 1, n2, 0, w)


@njit(cache=True, nogil=True, parallel=True)
def _srht_stage2_direct(Z, sel, n2, scale, out, c0):
    # out[i, c0:c0+w] = scale * sum_j1 H_n1[i1, j1] Z[j1*n2 + i2, :] for each selected row
    # sel[i] = i1*n2 + i2: only the k requested outputs of the second level are formed.
    N, w = Z.shape
    n1 = N // n2
    k = sel.shape[0]
    for i in prange(k):
        i1 = sel[i] // n2
        i2 = sel[i] % n2
        for c in range(w):
            out[i, c0 + c] = 0.0
        for j1 in range(n1):
            r = j1 * n2 + i2
            if _parity(i1 & j1):
                for c in range(w):
                    out[i, c0 + c] -= Z[r, c]
            else:
                for c in range(w):
                    out[i, c0 + c] += Z[r, c]
        for c in range(w):
            out[i, c0 + c] *= scale


@njit(cache=True, nogil=True, parallel=True)
def _fwht_stage2(Z, n2):
    # Second level of the two-level transform: FWHT across blocks for every offset i2.
    N, w = Z.shape
    n1 = N // n2
    for i2 in prange(n2):
        _fwht_rows(Z, i2, n2, n1, 0, w)


@njit(cache=True, nogil=True, parallel=True)
def _gather_rows_scaled(Z, sel, scale, out, c0):
    k = sel.shape[0]
    w = Z.shape[1]
    for i in prange(k):
        for c in range(w):
            out[i, c0 + c] = scale * Z[sel[i], c]


@njit(cache=True, nogil=True, parallel=True)
def _srht_adjoint_fill(Y, sel, c0, c1, Z):
    # Z = R^T Y[:, c0:c1] (rows sel of Z get the rows of Y, the others are zero).
    N = Z.shape[0]
    w = c1 - c0
    for r in prange(N):
        for c in range(w):
            Z[r, c] = 0.0
    for i in range(sel.shape[0]):
        for c in range(w):
            Z[sel[i], c] = Y[i, c0 + c]


@njit(cache=True, nogil=True, parallel=True)
def _fwht_blocks(Z, n2):
    N, w = Z.shape
    n1 = N // n2
    for b in prange(n1):
        _fwht_rows(Z, b * n2, 1, n2, 0, w)


@njit(cache=True, nogil=True, parallel=True)
def _srht_adjoint_finish(Z, signs, scale, out, c0):
    n = out.shape[0]
    w = Z.shape[1]
    for j in prange(n):
        s = scale * signs[j]
        for c in range(w):
            out[j, c0 + c] = s * Z[j, c]
