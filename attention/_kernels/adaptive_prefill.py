"""Numba kernel of certified adaptive prefill on the exact kernel's register tiles.

One task per (query slice, block of ``bq`` query rows, row-major). Per task:

1. ``S = (scale Q_b) K^T`` over the keys the block sees, on the register-tile GEMM of
   :mod:`attention._kernels.exact` (``K^T`` packed once per call in 64-key panels);
   without tiles (no AVX-512, or ``dv`` not a multiple of the vector length) one BLAS
   GEMM;
2. per row: causal masking, the exact maximum ``M_i``, and one pass per key block of 64
   that overwrites ``S`` by ``w_ij = exp(s_ij - M_i)`` and forms the block sums
   ``B_ib = sum w``, ``sum w^2`` and ``sum_j w_ij ||v_j - vc_b||`` (vectorised over the
   block's keys);
3. the selection (:func:`_select_units`): the unit of skipping is a *group* of 6 query
   rows (one register tile) x one key block; the task drops the units of smallest cost
   while the Frobenius norm of its row bounds stays within the target;
4. ``P V`` for the kept units only, one register-tile GEMM per run of consecutive kept
   blocks of a group, plus the centroid terms ``B_ib vc_b`` of the dropped units; if the
   bound misses the target relative to the computed output, the dropped units are
   computed exactly instead.

Determinism: each output row is written by one task with a fixed operation order;
which thread runs it does not matter.
"""

import numpy as np
from numba import get_thread_id, njit, prange, types
from numba.extending import overload

from attention._kernels.exact import _fetch_add, _gemm_tiles, _max_nonan, _pack_kt, _wide_vectors
from rnla._kernels.fastexp import _ZERO_F, _add_reassoc, _exp_f32, _exp_f64

_GROUP = 6  # query rows per skipping unit (one register tile)
_RUN_BLOCKS = 8  # key blocks (of 64) per P V product at most: 512-term chains
_NEG = -np.inf


@njit(cache=True, nogil=True, fastmath={"contract"})
def _row_stats_f32(row, mx, vd, nfull, tail, s1, s2, s3):
    """``row[j] <- exp(row[j] - mx)`` over ``nfull`` blocks of 64 keys and ``tail`` more.

    Writes per block ``b``: ``s1[b] = sum w``, ``s2[b] = sum w^2``, ``s3[b] = sum_j w_j
    vd[j]`` (float32 sums; ``vd`` float32). The fixed 64-key inner loop vectorises the
    three sums (one call per block of 64 measured 0.62 against 0.27 ns per entry).
    """
    _wide_vectors()
    mxf = np.float32(mx)
    for b in range(nfull + (1 if tail > 0 else 0)):
        a1 = _ZERO_F
        a2 = _ZERO_F
        a3 = _ZERO_F
        base = b * 64
        if b < nfull:
            for jj in range(64):
                j = base + jj
                p = _exp_f32(row[j] - mxf)
                row[j] = p
                a1 = _add_reassoc(a1, p)
                a2 = _add_reassoc(a2, p * p)
                a3 = _add_reassoc(a3, p * vd[j])
        else:
            for jj in range(tail):
                j = base + jj
                p = _exp_f32(row[j] - mxf)
                row[j] = p
                a1 = _add_reassoc(a1, p)
                a2 = _add_reassoc(a2, p * p)
                a3 = _add_reassoc(a3, p * vd[j])
        s1[b] = a1
        s2[b] = a2
        s3[b] = a3


@njit(cache=True, nogil=True, fastmath={"contract"})
def _row_stats_f64(row, mx, vd, nfull, tail, s1, s2, s3):
    """Float64 twin of :func:`_row_stats_f32`."""
    _wide_vectors()
    for b in range(nfull + (1 if tail > 0 else 0)):
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        base = b * 64
        if b < nfull:
            for jj in range(64):
                j = base + jj
                p = _exp_f64(row[j] - mx)
                row[j] = p
                a1 = _add_reassoc(a1, p)
                a2 = _add_reassoc(a2, p * p)
                a3 = _add_reassoc(a3, p * vd[j])
        else:
            for jj in range(tail):
                j = base + jj
                p = _exp_f64(row[j] - mx)
                row[j] = p
                a1 = _add_reassoc(a1, p)
                a2 = _add_reassoc(a2, p * p)
                a3 = _add_reassoc(a3, p * vd[j])
        s1[b] = a1
        s2[b] = a2
        s3[b] = a3


def _row_stats(row, mx, vd, nfull, tail, s1, s2, s3):  # pragma: no cover - Numba overload
    raise NotImplementedError


@overload(_row_stats)
def _row_stats_overload(row, mx, vd, nfull, tail, s1, s2, s3):
    if row.dtype == types.float32:
        return lambda row, mx, vd, nfull, tail, s1, s2, s3: _row_stats_f32(
            row, mx, vd, nfull, tail, s1, s2, s3
        )
    return lambda row, mx, vd, nfull, tail, s1, s2, s3: _row_stats_f64(
        row, mx, vd, nfull, tail, s1, s2, s3
    )


@njit(cache=True, nogil=True)
def _row_max_masked(s):
    """Maximum of a row that may hold ``-inf`` (no NaN), vectorised."""
    _wide_vectors()
    best = s[0]
    for j in range(s.shape[0]):
        best = _max_nonan(best, s[j])
    return best


_PATIENCE = 1 << 30  # selection: consecutive units that do not fit before it stops
_BUCKETS = 256  # quarter-octave cost buckets of the selection (64 octaves)


@njit(cache=True, nogil=True)
def _bucket_order(cost, top):
    """Return the indices of ``cost`` in increasing quarter-octave buckets (stable).

    A counting sort (``O(len)``; ``np.argsort`` took 39 us for 480 units, a tenth of a
    task): the greedy selection only needs an approximate order, the bound it builds
    holds for any order. Costs above ``top`` (never droppable) are left out; costs
    below ``top / 2^64`` share the first bucket.
    """
    nu = cost.shape[0]
    if not top > 0.0:
        return np.empty(0, dtype=np.int64)
    lt = np.log2(top)
    key = np.empty(nu, dtype=np.int64)
    count = np.zeros(_BUCKETS + 1, dtype=np.int64)
    for u in range(nu):
        c = cost[u]
        if c > top:
            key[u] = _BUCKETS
        elif c > 0.0:
            key[u] = min(max(int((np.log2(c) - lt + 64.0) * 4.0), 0), _BUCKETS - 1)
        else:
            key[u] = 0
        count[key[u]] += 1
    start = np.zeros(_BUCKETS + 1, dtype=np.int64)
    for b in range(1, _BUCKETS + 1):
        start[b] = start[b - 1] + count[b - 1]
    order = np.empty(start[_BUCKETS], dtype=np.int64)
    for u in range(nu):
        kb = key[u]
        if kb < _BUCKETS:
            order[start[kb]] = u
            start[kb] += 1
    return order


@njit(cache=True, nogil=True)
def _select_units(s1b, dev2b, costb, D, ncand, yplan, sg_all, tau, drop, e):
    """Choose the dropped units (group ``gr``, block ``b``), ``1 <= b <= ncand[gr]``.

    Row bound ``e_i = min(sum_b c_ib, sigma_all sqrt(sum_b dev2_ib)) / D_i`` over the
    dropped blocks of row ``i``'s group (triangle inequality, or one Cauchy-Schwarz over
    all of them). Units are dropped cheapest first (cost ``sum_{i in gr} c_ib / D_i``)
    while ``||e||_2 <= 0.9 tau ||y_plan||_F`` over the task (``yplan`` the squared
    Frobenius norm of the output with every block replaced by its centroid, a proxy known
    before the products with ``V``). Writes ``drop (ngr, nkb)`` and ``e (nb,)``; returns
    ``(units dropped, squared quadrature sum)`` (the latter is not a bound).
    """
    nb = s1b.shape[1]
    ngr = drop.shape[0]
    for i in range(nb):
        e[i] = 0.0
    inv = np.zeros(nb)
    for i in range(nb):
        if D[i] > 0.0:
            inv[i] = 1.0 / D[i]
    total = 0
    for gr in range(ngr):
        total += max(ncand[gr], 0)
    if total == 0:
        return 0, 0.0
    unit_g = np.empty(total, dtype=np.int64)
    unit_b = np.empty(total, dtype=np.int64)
    cost = np.empty(total)
    u = 0
    for gr in range(ngr):
        r0 = gr * _GROUP
        r1 = min(nb, r0 + _GROUP)
        for b in range(1, ncand[gr] + 1):
            a = 0.0
            for i in range(r0, r1):
                a += costb[b, i] * inv[i]
            unit_g[u] = gr
            unit_b[u] = b
            cost[u] = a
            u += 1
    target2 = (0.9 * tau) ** 2 * yplan
    order = _bucket_order(cost, np.sqrt(target2))
    ea = np.zeros(nb)
    eq = np.zeros(nb)
    s2 = 0.0
    ndrop = 0
    quad = 0.0
    misses = 0
    for r in range(order.shape[0]):
        uu = order[r]
        gr = unit_g[uu]
        b = unit_b[uu]
        r0 = gr * _GROUP
        r1 = min(nb, r0 + _GROUP)
        delta = 0.0
        for i in range(r0, r1):
            x = (ea[i] + costb[b, i]) * inv[i]  # triangle form while planning (no sqrt)
            delta += x * x - e[i] * e[i]
        if s2 + delta > target2:
            # a costlier unit of another group may still fit; after _PATIENCE misses in
            # a row (sorted costs: the budget is used up) the search stops
            misses += 1
            if misses >= _PATIENCE:
                break
            continue
        misses = 0
        s2 += delta
        for i in range(r0, r1):
            x = costb[b, i] * inv[i]
            ea[i] += costb[b, i]
            eq[i] += dev2b[b, i]
            e[i] = ea[i] * inv[i]
            quad += x * x
        drop[gr, b] = True
        ndrop += 1
    for i in range(nb):
        e[i] = min(ea[i], sg_all * np.sqrt(eq[i])) * inv[i]
    return ndrop, quad


@njit(cache=True, nogil=True)
def _unit_products(S, v_g, r0, nr, j_lo, j_hi, bk, drop_g, want, acc, pv, tiles):
    """Add ``S[r0:r0+nr, run] V[run]`` to ``acc[r0:r0+nr]`` for runs of blocks.

    The runs are the consecutive blocks with ``drop_g[b] == want`` inside keys
    ``[j_lo, j_hi)`` (one register-tile GEMM each); returns the keys multiplied.
    """
    dv = acc.shape[1]
    ld = S.shape[1]
    done = 0
    b = j_lo // bk
    bend = (j_hi + bk - 1) // bk
    Sf = S.reshape(-1)
    vf = v_g.reshape(-1)
    pvf = pv.reshape(-1)
    while b < bend:
        if drop_g[b] != want:
            b += 1
            continue
        b1 = b
        # Runs of at most _RUN_BLOCKS blocks: each P V entry is then a float32 chain of at
        # most 512 terms (the rounding allowance's chain, as in the exact kernel), the
        # runs being added in float64.
        while b1 < bend and b1 - b < _RUN_BLOCKS and drop_g[b1] == want:
            b1 += 1
        j0 = b * bk
        j1 = min(j_hi, b1 * bk)
        done += j1 - j0
        if tiles:
            _gemm_tiles(Sf, vf, pvf, r0 * ld + j0, j0 * dv, 0, nr, j1 - j0, dv, ld, dv, dv, False)
        else:
            np.dot(np.ascontiguousarray(S[r0 : r0 + nr, j0:j1]), v_g[j0:j1], pv[:nr])
        for i in range(nr):
            for c in range(dv):
                acc[r0 + i, c] += pv[i, c]
        b = b1
    return done


@njit(cache=True, nogil=True)
def _group_products(S, v_g, lims, nb, bk, skip, acc, pv, tiles):
    """Add ``P V`` of every group over its blocks with ``skip[gr, b]`` False to ``acc``.

    Returns the kept (row, key) pairs (keys after a row's causal limit not counted).
    """
    ngr = skip.shape[0]
    kept = 0.0
    for gr in range(ngr):
        r0 = gr * _GROUP
        nr = min(nb, r0 + _GROUP) - r0
        vis_gr = lims[r0 + nr - 1] + 1
        if vis_gr <= 0:
            continue
        kk = _unit_products(S, v_g, r0, nr, 0, vis_gr, bk, skip[gr], False, acc, pv, tiles)
        # keys after a row's limit are multiplied by 0; at most one block per group
        last = vis_gr - 1
        for i in range(r0, r0 + nr):
            kept += kk - min(last - lims[i], kk) if not skip[gr, last // bk] else kk
    return kept


@njit(cache=True, nogil=True)
def _tiled_task(
    q,
    k,
    kt,
    v,
    kv_index,
    t,
    vc,
    vdev,
    vsig,
    vsig_all,
    scale,
    causal,
    offset,
    bq,
    bk,
    tau,
    upad,
    S_all,
    out,
    lse,
    stats,
    tiles,
    drops,
):
    """Task ``t`` of :func:`_tiled_loop` (query block ``t % nqb`` of slice ``t // nqb``)."""
    n = q.shape[1]
    m = k.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    nqb = (n + bq - 1) // bq
    g = t // nqb
    i0 = (t - g * nqb) * bq
    nb = min(bq, n - i0)
    gk = kv_index[g]
    ngr = (nb + _GROUP - 1) // _GROUP
    nbp = ngr * _GROUP
    lims = np.empty(nbp, dtype=np.int64)
    for i in range(nbp):
        ii = min(i, nb - 1)
        lims[i] = min(i0 + ii + offset, m - 1) if causal else m - 1
    vis = lims[nb - 1] + 1
    acc = np.zeros((nb, dv))
    D = np.zeros(nb)
    mx = np.full(nb, _NEG)
    kept = 0.0
    visible = 0.0
    ndrop = 0
    bound2 = 0.0
    quad = 0.0
    if vis > 0:
        nkb = (vis + bk - 1) // bk
        wpad = nkb * bk
        # rows one cache line longer than the keys: rows 2^k floats apart would share
        # the same cache sets
        ld = wpad + 64 // q.itemsize
        S = S_all[get_thread_id(), : nbp * ld].reshape((nbp, ld))
        qb = np.zeros((nbp, d), dtype=q.dtype)
        for i in range(nb):
            for c in range(d):
                qb[i, c] = q[g, i0 + i, c] * scale
        if tiles:
            _gemm_tiles(
                qb.reshape(-1),
                kt[gk],
                S.reshape(-1),
                0,
                0,
                0,
                nbp,
                d,
                wpad,
                d,
                64 * 4 // q.itemsize,
                ld,
                True,
            )
        else:
            S[:, :vis] = np.dot(qb, np.ascontiguousarray(k[gk, :vis].T))
        vdg = vdev[gk]
        vsg = vsig[gk]
        s1b = np.zeros((nkb, nb))
        dev2b = np.zeros((nkb, nb))
        costb = np.zeros((nkb, nb))
        sv1 = np.empty(nkb, dtype=q.dtype)
        sv2 = np.empty(nkb, dtype=q.dtype)
        sv3 = np.empty(nkb, dtype=q.dtype)
        for i in range(nb):
            lim = lims[i]
            row = S[i]
            # keys after the row's limit: weight 0 (a group's products run to the limit
            # of its last row)
            for j in range(max(lim + 1, 0), wpad):
                row[j] = 0.0
            if lim < 0:
                continue
            M = np.float64(_row_max_masked(row[: lim + 1]))
            mx[i] = M
            w = lim + 1
            nfull = w // 64
            tail = w - nfull * 64
            _row_stats(row, M, vdg, nfull, tail, sv1, sv2, sv3)
            for b in range(nfull + (1 if tail > 0 else 0)):
                wb = 64 if b < nfull else tail
                a1 = np.float64(sv1[b])
                a2 = np.float64(sv2[b])
                d2 = max(a2 - a1 * a1 / wb, 0.0) + upad * a2
                s1b[b, i] = a1
                dev2b[b, i] = d2
                costb[b, i] = min(vsg[b] * np.sqrt(d2), np.float64(sv3[b]) * (1.0 + upad))
                D[i] += a1
            visible += lim + 1
        # candidates per group: blocks 1 .. ncand (the sink block, the last block fully
        # visible to every row of the group and the blocks crossing the diagonal are kept)
        ncand = np.zeros(ngr, dtype=np.int64)
        for gr in range(ngr):
            lo = lims[gr * _GROUP]
            nfull = (lo + 1) // bk if lo >= 0 else 0
            ncand[gr] = max(max(nfull - 1, 1) - 1, 0)
        pv = np.empty((_GROUP, dv), dtype=q.dtype)
        vg = v[gk]
        kept_rows = 0.0
        # products of the blocks that are never dropped first (skip[gr, b]: candidate)
        skip = np.zeros((ngr, nkb), dtype=np.bool_)
        for gr in range(ngr):
            for b in range(1, ncand[gr] + 1):
                skip[gr, b] = True
        kept_rows += _group_products(S, vg, lims, nb, bk, skip, acc, pv, tiles)
        # planning target: those blocks exact, every candidate block by its centroid
        sel = np.zeros((nb, nkb))
        for i in range(nb):
            for b in range(1, ncand[i // _GROUP] + 1):
                sel[i, b] = s1b[b, i]
        yc = acc + np.dot(sel, vc[gk, :nkb])
        yplan = 0.0
        for i in range(nb):
            if D[i] > 0.0:
                for c in range(dv):
                    yplan += (yc[i, c] / D[i]) ** 2
        drop = np.zeros((ngr, nkb), dtype=np.bool_)
        e = np.zeros(nb)
        ndrop, quad = _select_units(s1b, dev2b, costb, D, ncand, yplan, vsig_all[gk], tau, drop, e)
        # then the kept candidates
        for gr in range(ngr):
            for b in range(nkb):
                skip[gr, b] = not (1 <= b <= ncand[gr]) or drop[gr, b]
        kept_rows += _group_products(S, vg, lims, nb, bk, skip, acc, pv, tiles)
        if ndrop > 0:
            for i in range(nb):
                for b in range(nkb):
                    sel[i, b] = s1b[b, i] if drop[i // _GROUP, b] else 0.0
            cterm = np.dot(sel, vc[gk, :nkb])
            acc += cterm
            yn2 = 0.0
            for i in range(nb):
                bound2 += e[i] * e[i]
                if D[i] > 0.0:
                    for c in range(dv):
                        yn2 += (acc[i, c] / D[i]) ** 2
            if bound2 > tau * tau * yn2:
                # missed the target: the dropped units exactly instead
                acc -= cterm
                for gr in range(ngr):
                    r0 = gr * _GROUP
                    r1 = min(nb, r0 + _GROUP)
                    nr = r1 - r0
                    vis_gr = lims[r0 + nr - 1] + 1
                    kept_rows += nr * _unit_products(
                        S, vg, r0, nr, 0, vis_gr, bk, drop[gr], True, acc, pv, tiles
                    )
                ndrop = 0
                bound2 = 0.0
                quad = 0.0
                drop[:] = False
        if drops.shape[0] > t:  # recorded for the tests
            drops[t, :ngr, :nkb] = drop
        kept = kept_rows / nb
        visible = visible / nb
    for i in range(nb):
        if D[i] > 0.0:
            inv = 1.0 / D[i]
            for c in range(dv):
                out[g, i0 + i, c] = acc[i, c] * inv
            lse[g, i0 + i] = mx[i] + np.log(D[i])
        else:
            for c in range(dv):
                out[g, i0 + i, c] = 0.0
            lse[g, i0 + i] = _NEG
    stats[t, 0] = kept
    stats[t, 1] = visible
    stats[t, 2] = bound2
    stats[t, 3] = nb
    stats[t, 4] = ndrop
    stats[t, 5] = quad


def _tiled_loop(
    q,
    k,
    kt,
    v,
    kv_index,
    order,
    vc,
    vdev,
    vsig,
    vsig_all,
    scale,
    causal,
    offset,
    bq,
    bk,
    tau,
    upad,
    S_all,
    out,
    lse,
    stats,
    tiles,
    pack,
    drops,
    counter,
    n_workers,
):
    """Run the prefill tasks ``order`` (ids ``g * nqb + block``), see the module docstring.

    ``kt (Gk, mp * d)``: ``K^T`` in register-tile panels (:func:`_pack_kt`; packed here
    if ``pack``), used if ``tiles``; ``S_all (threads, bq_pad * mp)``: per-thread score
    buffers. ``stats[t] = (kept keys, visible keys (means over the rows), squared bound,
    rows, dropped units, squared quadrature sum)``. ``drops (T, ngr, nkb)``: if it has a
    row for task ``t``, the dropped units of ``t`` are written there (for the tests;
    ``(0, 1, 1)`` otherwise).
    """
    if tiles and pack:
        Gk = k.shape[0]
        for w in prange(n_workers):
            _pack_kt(k, kt, w * Gk // n_workers, (w + 1) * Gk // n_workers)
    for _ in prange(n_workers):
        while True:
            tt = _fetch_add(counter)
            if tt >= order.shape[0]:
                break
            _tiled_task(
                q,
                k,
                kt,
                v,
                kv_index,
                order[tt],
                vc,
                vdev,
                vsig,
                vsig_all,
                scale,
                causal,
                offset,
                bq,
                bk,
                tau,
                upad,
                S_all,
                out,
                lse,
                stats,
                tiles,
                drops,
            )


_tiled_kernel = njit(cache=True, nogil=True, parallel=True)(_tiled_loop)
