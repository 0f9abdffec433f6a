"""Numba kernel of exact attention on gathered key blocks (window, BigBird, Reformer, Routing).

:func:`_gather_attend` computes, for blocks of query rows that share a list of keys,
exact softmax attention of each row over the visible keys of its block's list and
merges the result into running accumulators through the log-sum-exp (as
:func:`attention.exact.merge_partials`). Per block:

* the block's keys are gathered once, transposed into a ``(d, W)`` tile, so that each
  row's scores ``s_j = q_i . k_j`` are a vectorised loop over the ``W`` keys;
* visibility is a position test ``lo_i <= kpos_j <= hi_i`` (and ``kpos_j != excl_i``),
  so no ``(B, W)`` mask array is needed; optional log-weights are added to the scores;
* the row maximum, the exponentials and their sum (explicit 512-bit vectors,
  :data:`rnla._kernels.fastexp._exp_sum_vec`) and ``P V`` over the visible keys, then
  the merge.

It replaces batched NumPy GEMMs over gathered copies of the keys and values, whose
temporaries (scores, masks, gathered keys and values: about ``4 B W`` entries per block)
dominated those methods' time at long context. Every row is computed by one call in a
fixed order, so the result does not depend on the number of threads. The softmax sum
is a fixed-order vector reduction: a loop summed with the ``reassoc`` flag (the exact
kernel's ``_exp_sum``) lets LLVM choose the order per compilation context, and the
kernel compiled afresh and the one loaded from Numba's cache differed by an ulp.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from attention._kernels.exact import _gemm_tiles, _max_nonan, _row_max
from rnla._kernels.fastexp import _exp_sum_vec
from rnla._kernels.intrinsics import _wide_vectors


@njit(cache=True, nogil=True, fastmath={"contract"})
def _gather_attend(
    q, k, v, scale, rows, J, kpos, lo, hi, excl, logw, obq, obk, ork, olo, acc, L
):  # pragma: no cover - compiled; checked against the NumPy reference in the tests
    """Exact attention of query blocks over their gathered keys, merged into ``acc``/``L``.

    ``q (n, d)``, ``k (m, d)``, ``v (m, dv)`` of one float dtype and ``scale`` a scalar
    of that dtype (the scores are formed in it, as a GEMM would); ``rows (nb, B)`` query
    rows of each block (``-1``: padding); ``J (nb, W)`` key indices in ``[0, m)``;
    ``kpos (nb, W)`` the position tested for visibility (any integer: out-of-range
    values are never visible when ``lo``/``hi`` are in range); row ``i`` sees key slot
    ``j`` iff ``lo[i] <= kpos[b, j] <= hi[i]`` and ``kpos[b, j] != excl[i]``;
    ``logw (nb, B, W)`` log-weights added to the scaled scores, or shape ``(0, 0, 0)``;
    ``obq (U, n)``, ``obk``, ``ork (U, nb, W)``, ``olo (U, n)`` (``U`` may be 0): the
    bucket-round duplicate correction of the causal Reformer, ``-log(1 + N)`` added to
    the score of a visible key, with ``N`` the rounds ``u`` whose set of row ``i`` holds
    the key (``obk[u, b, j] == obq[u, i]`` and ``ork[u, b, j] >= olo[u, i]``);
    ``acc (n, dv)`` and ``L (n,)`` (float64) the running output and log-normaliser,
    ``L = -inf`` for rows with nothing merged yet (``acc`` is then overwritten). A
    row that sees no key of its block leaves ``acc``/``L`` unchanged.
    """
    _wide_vectors()
    nb, B = rows.shape
    W = J.shape[1]
    d = q.shape[1]
    dv = v.shape[1]
    kt = np.empty((d, W), dtype=q.dtype)
    s = np.empty(W, dtype=q.dtype)
    o = np.empty(dv, dtype=q.dtype)
    has_w = logw.shape[0] > 0
    U = obq.shape[0]
    for b in range(nb):
        # Keys of the block, transposed: the score loop runs over keys (vector lanes).
        for j in range(W):
            kj = k[J[b, j]]
            for t in range(d):
                kt[t, j] = kj[t]
        for r in range(B):
            i = rows[b, r]
            if i < 0:
                continue
            for j in range(W):
                s[j] = 0
            for t in range(d):
                a = q[i, t]
                for j in range(W):
                    s[j] += a * kt[t, j]
            mx = -np.inf
            lo_i, hi_i, ex_i = lo[i], hi[i], excl[i]
            for j in range(W):
                kp = kpos[b, j]
                if kp < lo_i or kp > hi_i or kp == ex_i:
                    s[j] = -np.inf
                else:
                    x = s[j] * scale
                    if has_w:
                        x += logw[b, r, j]
                    if U > 0:
                        cnt = 1
                        for u in range(U):
                            if obk[u, b, j] == obq[u, i] and ork[u, b, j] >= olo[u, i]:
                                cnt += 1
                        if cnt > 1:
                            x -= np.log(np.float64(cnt))
                    s[j] = x
                    if x > mx:
                        mx = x
            if mx == -np.inf:
                continue
            z = np.float64(_exp_sum_vec(s, 0, W, mx))
            for c in range(dv):
                o[c] = 0
            # P V over the span of nonzero weights (masked keys inside it add zeros;
            # a branch per key would stop the vectorisation over the value columns).
            j0 = 0
            while s[j0] == 0:
                j0 += 1
            j1 = W
            while s[j1 - 1] == 0:
                j1 -= 1
            for j in range(j0, j1):
                p = s[j]
                vj = v[J[b, j]]
                for c in range(dv):
                    o[c] += p * vj[c]
            ls = mx + np.log(z)
            La = L[i]
            if La == -np.inf:
                for c in range(dv):
                    acc[i, c] = o[c] / z
                L[i] = ls
            else:
                # log-sum-exp merge, as attention.sparse._merge_into
                top = max(La, ls)
                new = top + np.log(np.exp(La - top) + np.exp(ls - top))
                wa = np.exp(La - new)
                wb = np.exp(ls - new) / z
                for c in range(dv):
                    acc[i, c] = wa * acc[i, c] + wb * o[c]
                L[i] = new


@njit(cache=True, nogil=True, fastmath={"contract"})
def _mask_scores(s, W, scale, kpos, b, r, lo_i, hi_i, ex_i, logw, i, obq, obk, ork, olo):
    """Scaled, weighted and masked scores of one row in place; returns their maximum.

    ``s`` holds the row's raw scores ``q_i . k_j`` in its first ``W`` entries (the rest
    is padding, set to ``-inf``); the visibility rule, log-weights and round counts are
    those of :func:`_gather_attend`.
    """
    has_w = logw.shape[0] > 0
    U = obq.shape[0]
    if not has_w and U == 0:
        return _mask_scores_plain(s, W, scale, kpos, b, lo_i, hi_i, ex_i)
    mx = -np.inf
    for j in range(W):
        kp = kpos[b, j]
        if kp < lo_i or kp > hi_i or kp == ex_i:
            s[j] = -np.inf
        else:
            x = s[j] * scale
            if has_w:
                x += logw[b, r, j]
            if U > 0:
                cnt = 1
                for u in range(U):
                    if obk[u, b, j] == obq[u, i] and ork[u, b, j] >= olo[u, i]:
                        cnt += 1
                if cnt > 1:
                    x -= np.log(np.float64(cnt))
            s[j] = x
            if x > mx:
                mx = x
    for j in range(W, s.shape[0]):
        s[j] = -np.inf
    return mx


@njit(cache=True, nogil=True)
def _mask_scores_rounds(s, W, scale, kpos, b, lo_i, hi_i, ex_i, i, obq, obk, ork, olo, logs, cnt):
    """:func:`_mask_scores` with round counts and no log-weights (vectorised passes).

    ``cnt (>= W,)`` int64 scratch; ``logs[c] = log(1 + c)`` (``logs[0] = 0``). The same
    values as the scalar loop: ``x = s_j scale`` in float64 minus ``log(1 + N_ij)``.
    """
    _wide_vectors()
    U = obq.shape[0]
    for j in range(W):
        cnt[j] = 0
    for u in range(U):
        oq = obq[u, i]
        ol = olo[u, i]
        for j in range(W):
            cnt[j] += (obk[u, b, j] == oq) & (ork[u, b, j] >= ol)
    mx = -np.inf
    for j in range(W):
        kp = kpos[b, j]
        vis = (kp >= lo_i) & (kp <= hi_i) & (kp != ex_i)
        x = np.float64(s[j] * scale) - logs[cnt[j]]
        x = x if vis else -np.inf
        s[j] = x
        mx = _max_nonan(mx, x)
    for j in range(W, s.shape[0]):
        s[j] = -np.inf
    return mx


@njit(cache=True, nogil=True)
def _mask_scores_plain(s, W, scale, kpos, b, lo_i, hi_i, ex_i):
    """:func:`_mask_scores` without log-weights and round counts (branch-free, vectorised)."""
    _wide_vectors()
    ninf = s.dtype.type(-np.inf)
    for j in range(W):
        kp = kpos[b, j]
        vis = (kp >= lo_i) & (kp <= hi_i) & (kp != ex_i)
        s[j] = s[j] * scale if vis else ninf
    for j in range(W, s.shape[0]):
        s[j] = ninf
    return np.float64(_row_max(s))


@njit(cache=True, nogil=True, fastmath={"contract"})
def _gather_attend_tiles(
    q, k, v, scale, rows, J, kpos, lo, hi, excl, logw, obq, obk, ork, olo, acc, L
):  # pragma: no cover - compiled; checked against the NumPy reference in the tests
    """:func:`_gather_attend` with both products on the exact kernel's register tiles.

    Same arguments and results (each score and output entry is a chain of fused
    multiply-adds in the same order as in :func:`_gather_attend`: equal up to where the
    compiler contracts that loop; bit-identical on the Reformer and Routing blocks
    checked); the value width
    ``dv`` must be a multiple of the vector length (16 float32, 8 float64). Per block,
    the rows' queries, the keys (transposed, ``(d, Wp)``, ``Wp`` the key count padded to
    one register tile) and the values are gathered into contiguous buffers; ``S = Q_b
    K_b^T`` and ``P V_b`` are register-tile GEMMs
    (:func:`attention._kernels.exact._gemm_tiles`, 512-bit vectors: AVX-512 only, the
    caller checks), the softmax between them runs row by row.
    """
    nb, B = rows.shape
    W = J.shape[1]
    d = q.shape[1]
    dv = v.shape[1]
    wide = 4 * (64 // q.itemsize)
    Wp = -(-W // wide) * wide
    qb = np.zeros(B * d, dtype=q.dtype)
    kt = np.zeros(d * Wp, dtype=q.dtype)  # padding columns stay 0
    vb = np.zeros(Wp * dv, dtype=q.dtype)  # padding rows stay 0
    s = np.empty(B * Wp, dtype=q.dtype)
    o = np.empty(B * dv, dtype=q.dtype)
    slot = np.empty(B, dtype=np.int64)
    zs = np.empty(B)
    mxs = np.empty(B)
    last = -1
    # Round counts without log-weights: the vectorised mask with a table of log(1 + c).
    rounds_fast = obq.shape[0] > 0 and logw.shape[0] == 0
    cnt = np.zeros(W, dtype=np.int64)
    logs = np.zeros(obq.shape[0] + 1)
    for c in range(1, obq.shape[0] + 1):
        logs[c] = np.log(np.float64(c + 1))
    for b in range(nb):
        nr = 0
        for r in range(B):
            if rows[b, r] >= 0:
                i = rows[b, r]
                slot[nr] = r
                for t in range(d):
                    qb[nr * d + t] = q[i, t]
                nr += 1
        if nr == 0:
            continue
        # Keys and values are gathered again only when the block's key list differs
        # from that of the last gathered block (consecutive query blocks sharing keys).
        same = last >= 0
        if same:
            for j in range(W):
                if J[b, j] != J[last, j]:
                    same = False
                    break
        if not same:
            # K^T by rows of the tile (contiguous stores), then the value rows.
            for t in range(d):
                for j in range(W):
                    kt[t * Wp + j] = k[J[b, j], t]
            for j in range(W):
                vj = v[J[b, j]]
                for c in range(dv):
                    vb[j * dv + c] = vj[c]
        last = b
        _gemm_tiles(qb, kt, s, 0, 0, 0, nr, d, Wp, d, Wp, Wp, False)
        for rr in range(nr):
            r = slot[rr]
            i = rows[b, r]
            srow = s[rr * Wp : (rr + 1) * Wp]
            if rounds_fast:
                mx = _mask_scores_rounds(
                    srow,
                    W,
                    scale,
                    kpos,
                    b,
                    lo[i],
                    hi[i],
                    excl[i],
                    i,
                    obq,
                    obk,
                    ork,
                    olo,
                    logs,
                    cnt,
                )
            else:
                mx = _mask_scores(
                    srow, W, scale, kpos, b, r, lo[i], hi[i], excl[i], logw, i, obq, obk, ork, olo
                )
            mxs[rr] = mx
            if mx == -np.inf:
                # Nothing visible: zero weights (P V gives 0), the row is skipped below.
                srow[:] = 0
                zs[rr] = 0.0
            else:
                zs[rr] = np.float64(_exp_sum_vec(s, rr * Wp, Wp, mx))
        _gemm_tiles(s, vb, o, 0, 0, 0, nr, Wp, dv, Wp, dv, dv, False)
        for rr in range(nr):
            mx = mxs[rr]
            if mx == -np.inf:
                continue
            i = rows[b, slot[rr]]
            _merge_row(acc, L, i, o[rr * dv : (rr + 1) * dv], mx, zs[rr])


@njit(cache=True, nogil=True)
def _merge_row(acc, L, i, o, mx, z):
    """Merge the partial row ``o / z`` with log-normaliser ``mx + log z`` into row ``i``."""
    dv = o.shape[0]
    ls = mx + np.log(z)
    La = L[i]
    if La == -np.inf:
        for c in range(dv):
            acc[i, c] = o[c] / z
        L[i] = ls
    else:
        # log-sum-exp merge, as attention.sparse._merge_into
        top = max(La, ls)
        new = top + np.log(np.exp(La - top) + np.exp(ls - top))
        wa = np.exp(La - new)
        wb = np.exp(ls - new) / z
        for c in range(dv):
            acc[i, c] = wa * acc[i, c] + wb * o[c]
        L[i] = new


# ------------------------------------------------------------- causal bucket planning


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _angular_codes(x, Rt, out, col0):  # pragma: no cover - compiled; NumPy reference in tests
    """Angular-LSH codes ``out[r, col0 + i] = argmax([x_i R_r, -x_i R_r])``.

    ``x (N, d)`` any float dtype (read as float64), ``Rt (n_rounds, h, d)`` float64 (the
    transposed rotations), ``out (n_rounds, >= col0 + N)`` int64. The first maximum wins
    (as :func:`numpy.argmax` on the concatenation). The code does not depend on the
    row's norm, so rows are not normalised.
    """
    N, d = x.shape
    nr, h, _ = Rt.shape
    xi = np.empty(d)
    u = np.empty(h)
    for i in range(N):
        for t in range(d):
            xi[t] = x[i, t]
        for r in range(nr):
            for j in range(h):
                acc = 0.0
                for t in range(d):
                    acc += xi[t] * Rt[r, j, t]
                u[j] = acc
            best = u[0]
            arg = 0
            for j in range(1, h):
                if u[j] > best:
                    best = u[j]
                    arg = j
            for j in range(h):
                if -u[j] > best:
                    best = -u[j]
                    arg = h + j
            out[r, col0 + i] = arg


@njit(cache=True, nogil=True)
def _bucket_sets(bq, bk, qpos, cs, n_buckets):  # pragma: no cover - compiled
    """Per-bucket chunk windows of the visible keys (causal), in one pass.

    Keys (positions ``0..m-1``) sorted by (bucket, position) give ``order``; ``start``
    the first index of each bucket; ``rank`` each key's rank in its bucket; ``r[i]`` the
    keys of bucket ``bq[i]`` at positions ``<= qpos[i]`` (0 when ``qpos[i] < 0``) and
    ``lo[i] = cs * max(0, (r[i] - 1) // cs - 1)``: the same as the NumPy reference
    ``attention.clustering._bucket_sets``.
    """
    m = bk.shape[0]
    n = bq.shape[0]
    counts = np.zeros(n_buckets + 1, dtype=np.int64)
    for j in range(m):
        counts[bk[j] + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    order = np.empty(m, dtype=np.int64)
    rank = np.empty(m, dtype=np.int64)
    for j in range(m):
        b = bk[j]
        order[fill[b]] = j
        rank[j] = fill[b] - start[b]
        fill[b] += 1
    # r_i by one sweep over positions: seen[b] = keys of bucket b at positions <= p.
    r = np.zeros(n, dtype=np.int64)
    lo = np.zeros(n, dtype=np.int64)
    seen = np.zeros(n_buckets, dtype=np.int64)
    p = -1
    for i in range(n):  # qpos is increasing
        qp = qpos[i]
        if qp < 0:
            continue
        top = min(qp, m - 1)
        while p < top:
            p += 1
            seen[bk[p]] += 1
        r[i] = seen[bq[i]]
        lo[i] = cs * max(0, (r[i] - 1) // cs - 1)
    return order, start, rank, r, lo


@njit(cache=True, nogil=True)
def _bucket_blocks(bq, order, start, r, lo, qpos, cs, n_buckets):  # pragma: no cover
    """Blocks of fixed shape ``(cs, 2 cs)`` of one round's per-bucket chunk windows.

    Queries with ``r > 0`` grouped by (bucket, window start ``lo``), in increasing
    index inside a group, cut into blocks of ``cs`` rows. Returns ``rows (nblk, cs)``
    (``-1`` padding), ``J (nblk, 2 cs)`` key indices (clipped into range) and ``kp
    (nblk, 2 cs)`` their positions (``m`` outside the bucket: never visible), as the
    NumPy reference ``attention.clustering._bucket_blocks``.
    """
    n = bq.shape[0]
    m = order.shape[0]
    nw = m // cs + 2  # window starts per bucket (lo // cs)
    nkey = n_buckets * nw
    cnt = np.zeros(nkey + 1, dtype=np.int64)
    for i in range(n):
        if r[i] > 0 and qpos[i] >= 0:
            cnt[bq[i] * nw + lo[i] // cs + 1] += 1
    # blocks per group
    nblk = 0
    for g in range(nkey):
        nblk += -(-cnt[g + 1] // cs)
    bstart = np.empty(nkey, dtype=np.int64)  # first block of each group
    acc = 0
    for g in range(nkey):
        bstart[g] = acc
        acc += -(-cnt[g + 1] // cs)
    fill = np.zeros(nkey, dtype=np.int64)
    rows = np.full((nblk, cs), -1, dtype=np.int64)
    J = np.empty((nblk, 2 * cs), dtype=np.int64)
    kp = np.empty((nblk, 2 * cs), dtype=np.int64)
    for i in range(n):
        if r[i] > 0 and qpos[i] >= 0:
            g = bq[i] * nw + lo[i] // cs
            w = fill[g]
            fill[g] += 1
            blk = bstart[g] + w // cs
            rows[blk, w % cs] = i
            if w % cs == 0:
                b = bq[i]
                s0 = start[b] + lo[i]
                for t in range(2 * cs):
                    sp = s0 + t
                    J[blk, t] = order[min(sp, m - 1)]
                    kp[blk, t] = order[sp] if sp < start[b + 1] else m
    return rows, J, kp


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _online_labels(q, k, offset, init, period):  # pragma: no cover - compiled
    """Causal routing labels: sequential spherical k-means over position periods.

    The unit queries and keys (float64) of positions ``[p0, p0 + period)`` are routed
    (first maximum of the cosine) with the centroids of the positions before ``p0``,
    keys first, then added to their centroids' sums, in that order. Same rule as the
    NumPy reference ``attention.clustering._online_labels`` (dot products and norms
    summed in another order: equal up to rounding).
    """
    _wide_vectors()
    n, d = q.shape
    m = k.shape[0]
    C = init.shape[0]
    S = np.empty((C, d))
    for c in range(C):
        nrm = 0.0
        for t in range(d):
            nrm += init[c, t] * init[c, t]
        nrm = np.sqrt(nrm)
        for t in range(d):
            S[c, t] = init[c, t] / nrm
    cent = np.empty((C, d))
    lq = np.zeros(n, dtype=np.int64)
    lk = np.zeros(m, dtype=np.int64)
    X = np.empty((2 * period, d))  # unit rows of one period (keys, then queries)
    lab = np.empty(2 * period, dtype=np.int64)
    top = max(m, n + offset)
    for p0 in range(0, top, period):
        p1 = p0 + period
        for c in range(C):
            nrm = 0.0
            for t in range(d):
                nrm += S[c, t] * S[c, t]
            nrm = np.sqrt(nrm)
            if nrm == 0:
                nrm = 1.0
            for t in range(d):
                cent[c, t] = S[c, t] / nrm
        k0, k1 = min(p0, m), min(p1, m)
        q0, q1 = min(max(p0 - offset, 0), n), min(max(p1 - offset, 0), n)
        nk = k1 - k0
        cnt = nk + q1 - q0
        for a in range(cnt):
            _unit_row(k[k0 + a] if a < nk else q[q0 + a - nk], X[a])
        # labels of the whole period first (centroids fixed), then the sums
        for a in range(cnt):
            best = -np.inf
            arg = 0
            for c in range(C):
                s = 0.0
                for t in range(d):
                    s += X[a, t] * cent[c, t]
                if s > best:
                    best = s
                    arg = c
            lab[a] = arg
        for a in range(cnt):
            for t in range(d):
                S[lab[a], t] += X[a, t]
        for a in range(nk):
            lk[k0 + a] = lab[a]
        for a in range(nk, cnt):
            lq[q0 + a - nk] = lab[a]
    return lq, lk


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _unit_row(row, x):
    """``x = row / ||row||`` in float64 (``row`` itself when its norm is 0)."""
    d = x.shape[0]
    nrm = 0.0
    for t in range(d):
        x[t] = row[t]
        nrm += x[t] * x[t]
    nrm = np.sqrt(nrm)
    if nrm > 0:
        for t in range(d):
            x[t] = x[t] / nrm


# ------------------------------------------------------------------------ multipole


@njit(cache=True, nogil=True)
def _multipole_split(est, sizes, budget, vbar, near, acc, L):  # pragma: no cover - compiled
    """Near clusters and the far-field term of every query row (multipole attention).

    ``est (n, C)`` the log estimated cluster masses ``q_i . mu_c s + log N_c``; per row,
    the clusters in decreasing ``est`` (ties: lower index first, as a stable argsort)
    are near while their cumulative size stays within ``budget`` (the first always),
    empty clusters never. ``near (n, C)`` is written; the far clusters give ``acc[i] =
    sum_c p_c vbar_c`` and ``L[i] = log sum_c exp(est[i, c])`` over the far ``c``
    (``p`` their softmax; ``acc = 0``, ``L = -inf`` if there is none), as the NumPy
    reference ``attention.sparse._partial(q, mu, vbar, s, keep=far, logw=log N)``.
    """
    n, C = est.shape
    dv = vbar.shape[1]
    order = np.empty(C, dtype=np.int64)
    w = np.empty(C)
    for i in range(n):
        # insertion sort of the clusters by decreasing est (stable)
        for c in range(C):
            x = est[i, c]
            t = c
            while t > 0 and est[i, order[t - 1]] < x:
                order[t] = order[t - 1]
                t -= 1
            order[t] = c
        csum = 0.0
        for t in range(C):
            c = order[t]
            csum += sizes[c]
            near[i, c] = (t == 0 or csum <= budget) and sizes[c] > 0
        mx = -np.inf
        for c in range(C):
            if not near[i, c] and sizes[c] > 0 and est[i, c] > mx:
                mx = est[i, c]
        for d in range(dv):
            acc[i, d] = 0.0
        if mx == -np.inf:
            L[i] = -np.inf
            continue
        z = 0.0
        for c in range(C):
            w[c] = np.exp(est[i, c] - mx) if (not near[i, c] and sizes[c] > 0) else 0.0
            z += w[c]
        for c in range(C):
            if w[c] != 0.0:
                p = w[c] / z
                for d in range(dv):
                    acc[i, d] += p * vbar[c, d]
        L[i] = mx + np.log(z)
