"""Numba kernel of tolerance-driven certified attention (method ``"adaptive"``).

One *task* is a set of at most ``bmax`` query rows that read the same key/value slice
(64 consecutive rows of one query head in prefill; the rows of all query heads of a
grouped-query group in decode). For each task the kernel

1. forms every visible score ``s_ij`` (one GEMM per 512 keys), the exact row maximum
   ``M_i`` and the exact normaliser ``D_i = sum_j exp(s_ij - M_i)``; per key block
   ``b`` (64 keys) and row it keeps the block mass ``B_ib``, the block ``l2`` norm of the
   weights and ``sum_j w_ij ||v_j - vc_b||`` (``vc_b`` the block's value centroid);
2. bounds what replacing block ``b``'s values by ``vc_b`` costs row ``i``:
   ``c_ib = min(sigma_b ||w_i,b||_2, sum_j w_ij ||v_j - vc_b||) / D_i`` with ``sigma_b``
   the spectral norm of the block's centred values (both are exact inequalities);
3. drops the blocks of smallest total cost while the Frobenius norm of the row bounds
   ``e_i = sum_{b dropped} c_ib`` stays within the task's target, never dropping the
   sink block or the local blocks (partially visible or adjacent to the diagonal);
4. computes ``acc_i = sum_{j kept} w_ij v_j + sum_{b dropped} B_ib vc_b`` (the product
   with ``V`` only over kept keys) and ``y_i = acc_i / D_i``; if the final bound misses
   the target relative to the computed output, the dropped blocks are computed exactly.

Memory per task: the ``bmax x m`` weights (the scores are kept to avoid a second GEMM).
"""

import numpy as np
from numba import njit, prange

from attention._kernels.exact import _exp_sum, _row_max

_CH = 512  # keys per score GEMM
_NEG = -np.inf


@njit(cache=True, nogil=True)
def _value_summaries(v, bk, vc, vdev):
    """Per key block the value centroid ``vc (Gk, nkb, dv)``; per key ``||v_j - vc_b||``.

    ``vdev (Gk, m)`` float64, padded by a relative ``1e-9`` against rounding.
    """
    Gk, m, dv = v.shape
    nkb = (m + bk - 1) // bk
    for g in range(Gk):
        for b in range(nkb):
            j0 = b * bk
            j1 = min(m, j0 + bk)
            for c in range(dv):
                s = 0.0
                for j in range(j0, j1):
                    s += np.float64(v[g, j, c])
                vc[g, b, c] = s / (j1 - j0)
            for j in range(j0, j1):
                a = 0.0
                for c in range(dv):
                    x = np.float64(v[g, j, c]) - vc[g, b, c]
                    a += x * x
                vdev[g, j] = np.sqrt(a) * (1.0 + 1e-9)


def _task_loop(
    q,
    k,
    v,
    task_kv,
    task_g,
    task_row,
    task_len,
    vc,
    vdev,
    vsig,
    vsig_all,
    scale,
    causal,
    offset,
    bk,
    n_local,
    tau,
    out,
    lse,
    stats,
):
    """Run every task (see the module docstring); writes ``out``, ``lse`` and ``stats``.

    ``stats[t] = (kept keys, visible keys, squared bound, rows, dropped blocks,
    squared quadrature sum sum_i sum_b c_ib^2)`` (the last one is *not* a bound: a
    diagnostic for the benchmarks' negative control).
    ``tau``: a task accepts dropped blocks only if ``||e||_2 <= tau ||y~_task||_F``.
    """
    T = task_kv.shape[0]
    m = k.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    bmax = task_g.shape[1]
    for t in prange(T):
        nb = task_len[t]
        gk = task_kv[t]
        qb = np.empty((bmax, d), dtype=q.dtype)
        lims = np.empty(bmax, dtype=np.int64)
        lim_lo = m
        lim_hi = -1
        for i in range(nb):
            g = task_g[t, i]
            row = task_row[t, i]
            for c in range(d):
                qb[i, c] = q[g, row, c] * scale
            lims[i] = min(row + offset, m - 1) if causal else m - 1
            lim_lo = min(lim_lo, lims[i])
            lim_hi = max(lim_hi, lims[i])
        vis = lim_hi + 1
        acc = np.zeros((nb, dv))
        dsum = np.zeros(nb)
        mrow = np.full(nb, _NEG)
        kept = 0
        ndrop = 0
        bound2 = 0.0
        quad = 0.0
        if vis > 0:
            nch = (vis + _CH - 1) // _CH
            nkb = (vis + bk - 1) // bk
            S = np.empty((nch, nb, _CH), dtype=q.dtype)
            # -- one pass: scores (kept for the products with V), running row maxima,
            # normalisers and per-block statistics relative to the running maxima --
            bm = np.zeros((nb, nkb))
            cost = np.zeros((nb, nkb))
            dev2 = np.zeros((nb, nkb))
            mch = np.full((nch, nb), _NEG)
            vsg = vsig[gk]
            vdg = vdev[gk]
            for ch in range(nch):
                j0 = ch * _CH
                w = min(_CH, vis - j0)
                if w == _CH:
                    np.dot(qb[:nb], k[gk, j0 : j0 + w].T, S[ch])
                else:
                    sc = np.empty((nb, w), dtype=q.dtype)
                    np.dot(qb[:nb], k[gk, j0 : j0 + w].T, sc)
                    for i in range(nb):
                        S[ch, i, :w] = sc[i]
                masked = j0 + w - 1 > lim_lo
                for i in range(nb):
                    srow = S[ch, i, :w]
                    if masked:
                        for jj in range(max(lims[i] + 1 - j0, 0), w):
                            srow[jj] = _NEG
                    mnew = max(mrow[i], np.float64(_row_max(srow)))
                    if mnew == _NEG:
                        srow[:] = 0
                        continue
                    if mnew > mrow[i] and mrow[i] > _NEG:
                        # rescale what was accumulated relative to the old maximum
                        f = np.exp(mrow[i] - mnew)
                        dsum[i] *= f
                        for b in range(j0 // bk):
                            bm[i, b] *= f
                            cost[i, b] *= f
                            dev2[i, b] *= f * f
                    mrow[i] = mnew
                    mch[ch, i] = mnew
                    dsum[i] += _exp_sum(srow, mnew)
                    for b0 in range(0, w, bk):
                        b = (j0 + b0) // bk
                        wb = min(bk, w - b0)
                        s1, s2, s3 = _block_stats(srow[b0 : b0 + wb], vdg[j0 + b0 : j0 + b0 + wb])
                        bm[i, b] = s1
                        # U_b^T 1 = 0: subtracting the block mean from the weights
                        # changes nothing, so ||w_b - mean||_2 replaces ||w_b||_2.
                        dv2 = max(s2 - s1 * s1 / wb, 0.0) + 1e-12 * s2
                        dev2[i, b] = dv2
                        cost[i, b] = min(vsg[b] * np.sqrt(dv2), s3)
            # -- choose the dropped blocks --
            # Sink block 0, the last fully visible block and every partly visible block
            # are always exact.
            nfull = (lim_lo + 1) // bk if lim_lo >= 0 else 0
            first_local = max(nfull - n_local, 1)
            drop = np.zeros(nkb, dtype=np.bool_)
            ncand = max(first_local - 1, 0)
            e = np.zeros(nb)
            ea = np.zeros(nb)  # triangle sum over dropped blocks
            eq = np.zeros(nb)  # sum of ||w_b - mean||^2 over dropped blocks
            sg_all = vsig_all[gk]
            # Planning target: the all-centroid output (cheap) as a proxy of ||y||.
            yn2 = 0.0
            ycent = bm @ np.ascontiguousarray(vc[gk, :nkb])  # (nb, dv): one GEMM
            for i in range(nb):
                if dsum[i] > 0.0:
                    inv = 1.0 / dsum[i]
                    for c in range(dv):
                        yn2 += (ycent[i, c] * inv) ** 2
            if ncand > 0:
                tot = np.zeros(ncand)
                for p in range(ncand):
                    b = p + 1
                    a = 0.0
                    for i in range(nb):
                        if dsum[i] > 0.0:
                            a += cost[i, b] / dsum[i]
                    tot[p] = a
                order = np.argsort(tot)
                target2 = (0.9 * tau) ** 2 * yn2
                for r in range(ncand):
                    b = order[r] + 1
                    s2 = 0.0
                    for i in range(nb):
                        if dsum[i] > 0.0:
                            x = min(
                                ea[i] + cost[i, b] / dsum[i],
                                sg_all * np.sqrt(eq[i] + dev2[i, b]) / dsum[i],
                            )
                            s2 += x * x
                    if s2 > target2:
                        break
                    for i in range(nb):
                        if dsum[i] > 0.0:
                            x = cost[i, b] / dsum[i]
                            ea[i] += x
                            eq[i] += dev2[i, b]
                            e[i] = min(ea[i], sg_all * np.sqrt(eq[i]) / dsum[i])
                            quad += x * x
                    drop[b] = True
                    ndrop += 1
            # -- pass 3: products with V over kept keys, centroids for dropped blocks --
            _accumulate(S, nb, v, gk, vis, bk, drop, vc, bm, acc, True, mch, mrow)
            for b in range(nkb):
                if not drop[b]:
                    kept += min(bk, vis - b * bk)
            if ndrop > 0:
                yn2 = 0.0
                bound2 = 0.0
                for i in range(nb):
                    bound2 += e[i] * e[i]
                    if dsum[i] > 0.0:
                        for c in range(dv):
                            yn2 += (acc[i, c] / dsum[i]) ** 2
                if bound2 > tau * tau * yn2:
                    # Missed the target: replace the centroids by the exact products.
                    _accumulate(S, nb, v, gk, vis, bk, drop, vc, bm, acc, False, mch, mrow)
                    kept = vis
                    ndrop = 0
                    bound2 = 0.0
                    quad = 0.0
        for i in range(nb):
            g = task_g[t, i]
            row = task_row[t, i]
            if dsum[i] > 0.0:
                inv = 1.0 / dsum[i]
                for c in range(dv):
                    out[g, row, c] = acc[i, c] * inv
                lse[g, row] = mrow[i] + np.log(dsum[i])
            else:
                for c in range(dv):
                    out[g, row, c] = 0.0
                lse[g, row] = _NEG
        stats[t, 0] = kept
        stats[t, 1] = max(vis, 0)
        stats[t, 2] = bound2
        stats[t, 3] = nb
        stats[t, 4] = ndrop
        stats[t, 5] = quad


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _block_stats(p, vd):
    """Return ``(sum p, sum p^2, sum p vd)`` of a block's weights (float64 sums)."""
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for j in range(p.shape[0]):
        x = np.float64(p[j])
        s1 += x
        s2 += x * x
        s3 += x * vd[j]
    return s1, s2, s3


@njit(cache=True, nogil=True)
def _accumulate(S, nb, v, gk, vis, bk, drop, vc, bm, acc, first, mch, mrow):
    """Add the products with ``V`` to ``acc``.

    ``first=True``: ``acc += P_kept V_kept + B_dropped vc_dropped``; ``first=False``:
    swap every dropped block's centroid term for its exact product.
    """
    dv = v.shape[2]
    nch = S.shape[0]
    pflat = np.empty(nb * _CH, dtype=S.dtype)
    vbuf = np.empty((_CH, dv), dtype=S.dtype)
    pv = np.empty((nb, dv), dtype=S.dtype)
    for ch in range(nch):
        j0 = ch * _CH
        w = min(_CH, vis - j0)
        # the kept (first) or dropped (not first) key blocks of the chunk
        cnt = 0
        for b0 in range(0, w, bk):
            if drop[(j0 + b0) // bk] != first:
                cnt += min(bk, w - b0)
        if cnt == 0:
            continue
        if cnt == _CH and first:
            # a full chunk with nothing dropped: multiply in place
            np.dot(S[ch], v[gk, j0 : j0 + _CH], pv)
        else:
            pbuf = pflat[: nb * cnt].reshape((nb, cnt))
            c0 = 0
            for b0 in range(0, w, bk):
                if drop[(j0 + b0) // bk] != first:
                    wb = min(bk, w - b0)
                    for i in range(nb):
                        pbuf[i, c0 : c0 + wb] = S[ch, i, b0 : b0 + wb]
                    vbuf[c0 : c0 + wb] = v[gk, j0 + b0 : j0 + b0 + wb]
                    c0 += wb
            np.dot(pbuf, vbuf[:cnt], pv)
        for i in range(nb):
            # weights of this chunk are relative to the running maximum mch[ch, i]
            f = np.exp(mch[ch, i] - mrow[i]) if mch[ch, i] > _NEG else 0.0
            for c in range(dv):
                acc[i, c] += f * pv[i, c]
    nkb = (vis + bk - 1) // bk
    sign = 1.0 if first else -1.0
    bmd = np.zeros((nb, nkb))
    for b in range(nkb):
        if drop[b]:
            for i in range(nb):
                bmd[i, b] = sign * bm[i, b]
    acc += bmd @ np.ascontiguousarray(vc[gk, :nkb])


_task_kernel = njit(cache=True, nogil=True, parallel=True)(_task_loop)
