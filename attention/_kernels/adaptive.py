"""Numba kernels of tolerance-driven certified attention (method ``"adaptive"``).

Both kernels keep the scores of a set of query rows *key-major*: ``ST[j, i] = s_ij``
for key ``j`` and stacked query row ``i``. A run of consecutive keys is then a
C-contiguous slice ``ST[j0:j1]`` whose transpose is a BLAS operand, so the product with
``V`` over any run of kept key blocks is one GEMM without copying, and every per-key
pass (maximum, exponential, block statistics) is a vectorised loop over the query rows.

The prefill kernel lives in :mod:`attention._kernels.adaptive_prefill` (row-major
scores on the exact kernel's register tiles); the helpers below (block statistics,
selection, products over kept runs) serve the decode kernel.

**Decode** (:data:`_decode_kernel`, flash-decoding layout): the query rows of all heads
that share a key/value slice are stacked (``R`` rows) and the keys are cut into chunks
processed in parallel: (1) scores, chunk maxima, weights relative to the chunk maximum
and block statistics; (2) per key/value slice, the global maxima, normalisers and the
selection over all blocks; (3) per chunk, the products with ``V`` over kept runs only;
(4) per key/value slice, the merge, the centroid terms and the check. ``K`` is read once
per group; ``V`` only over kept blocks.

Determinism: every quantity is computed by one task with a fixed operation order and a
chunking that depends on the problem size only.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from attention._kernels.exact import (
    _fetch_add,
    _gemm_tiles,
    _max_nonan,
    _merge_split,
    _nonfinite_probe,
    _qk_small,
    _softmax_tile,
    _wide_vectors,
)
from attention._kernels.rounding import _row_allowance
from rnla._kernels.fastexp import _ZERO_F, _add_reassoc, _exp_f32, _exp_f64

_NEG = -np.inf
_SMALL_ROWS = 8  # decode: stacked rows up to which the products are plain loops
_RUN_BLOCKS = 8  # key blocks (of 64) per P V product at most: 512-term chains


@njit(cache=True, nogil=True, parallel=True)
def _value_summaries(v, bk, spectral, vc, vdev, vsig, gram):
    """Per key block: value centroid, per-key deviations and a norm of the centred block.

    Writes ``vc (Gk, nkb, dv)``; ``vdev (Gk, m)`` = ``||v_j - vc_b||`` (padded by a
    relative ``1e-9``); ``vsig (Gk, nkb)`` >= ``||U_b||_2`` of the centred block
    ``U_b``: its Frobenius norm, or with ``spectral`` the smaller of that and
    ``(tr G^4)^(1/8) = ||G^2||_F^(1/4)``, ``G = U_b^T U_b`` (at most ``64^(1/8) = 1.68``
    times ``||U_b||_2``); with ``spectral`` the Gram matrices go to ``gram (Gk, nkb, dv,
    dv)`` (float64).
    """
    Gk, m, dv = v.shape
    nkb = (m + bk - 1) // bk
    for t in prange(Gk * nkb):
        g = t // nkb
        b = t - g * nkb
        j0 = b * bk
        j1 = min(m, j0 + bk)
        w = j1 - j0
        U = np.empty((w, dv))
        cen = np.zeros(dv)
        for j in range(j0, j1):
            for c in range(dv):
                x = np.float64(v[g, j, c])
                U[j - j0, c] = x
                cen[c] += x
        for c in range(dv):
            cen[c] /= w
            vc[g, b, c] = cen[c]
        fro2 = 0.0
        for jj in range(w):
            a = 0.0
            for c in range(dv):
                x = U[jj, c] - cen[c]
                U[jj, c] = x
                a += x * x
            vdev[g, j0 + jj] = np.sqrt(a) * (1.0 + 1e-9)
            fro2 += a
        fro = np.sqrt(fro2) * (1.0 + 1e-9)
        vsig[g, b] = fro
        if spectral:
            G = np.dot(U.T, U)
            gram[g, b] = G
            G2 = np.dot(G, G)
            f2 = 0.0
            for c in range(dv):
                for e in range(dv):
                    f2 += G2[c, e] * G2[c, e]
            # relative allowance for the rounding of G and G^2
            est = np.sqrt(np.sqrt(np.sqrt(f2))) * (1.0 + 1e-6) + 1e-7 * fro
            vsig[g, b] = min(fro, est)


_NORM_ROWS = 2048  # rows per task of :func:`_sq_norms3`


@njit(cache=True, nogil=True, fastmath={"contract"})
def _sq_rows(x, r, i0, i1):
    """``r[i] = sum_e x[i, e]^2`` in float64 for ``i0 <= i < i1`` (vectorised sum)."""
    _wide_vectors()
    for i in range(i0, i1):
        xi = x[i]
        acc = 0.0
        for e in range(xi.shape[0]):
            y = np.float64(xi[e])
            acc = _add_reassoc(acc, y * y)
        r[i] = acc


@njit(cache=True, nogil=True, parallel=True)
def _sq_norms3(a, b, c, ra, rb, rc):
    """Squared row norms of three 2-D arrays in one parallel region (float64).

    ``ra[i] = sum_e a[i, e]^2`` (likewise ``b``, ``c``): squares and sums in float64
    (exact squares for float32 inputs; relative rounding of the sum at most ``cols u``),
    so NaN or inf in a row gives a non-finite norm: one pass serves as the finiteness
    check and gives the norms of the rounding allowance. Tasks of 2048 rows of any of
    the three arrays (equal cost: one parallel region, no per-array barrier).
    """
    ta = (a.shape[0] + _NORM_ROWS - 1) // _NORM_ROWS
    tb = (b.shape[0] + _NORM_ROWS - 1) // _NORM_ROWS
    tc = (c.shape[0] + _NORM_ROWS - 1) // _NORM_ROWS
    for t in prange(ta + tb + tc):
        if t < ta:
            x, r, i0 = a, ra, t * _NORM_ROWS
        elif t < ta + tb:
            x, r, i0 = b, rb, (t - ta) * _NORM_ROWS
        else:
            x, r, i0 = c, rc, (t - ta - tb) * _NORM_ROWS
        _sq_rows(x, r, i0, min(x.shape[0], i0 + _NORM_ROWS))


# ------------------------------------------------------------ per-key row passes


@njit(cache=True, nogil=True)
def _mask_and_max(ST, j0, j1, lims, lim_lo, mx):
    """Hide ``ST[j, i]`` for ``j > lims[i]`` and update the row maxima ``mx`` (dtype)."""
    _wide_vectors()
    nb = mx.shape[0]
    for j in range(max(j0, lim_lo + 1), j1):
        row = ST[j]
        for i in range(nb):
            if j > lims[i]:
                row[i] = _NEG
    j = j0
    while j + 4 <= j1:
        r0 = ST[j]
        r1 = ST[j + 1]
        r2 = ST[j + 2]
        r3 = ST[j + 3]
        for i in range(nb):
            a = _max_nonan(r0[i], r1[i])
            b = _max_nonan(r2[i], r3[i])
            mx[i] = _max_nonan(mx[i], _max_nonan(a, b))
        j += 4
    while j < j1:
        row = ST[j]
        for i in range(nb):
            mx[i] = _max_nonan(mx[i], row[i])
        j += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_stats_f32(ST, j0, j1, mx, vd, s1, s2, s3):
    """``ST[j, i] <- exp(ST[j, i] - mx[i])`` for ``j0 <= j < j1``; block sums.

    ``s1[i] = sum_j w_ij``, ``s2[i] = sum_j w_ij^2``, ``s3[i] = sum_j w_ij vd[j]`` (in
    the input dtype; vectorised over the rows ``i``). ``mx`` must be finite (rows that
    see no key use 0: their entries are ``-inf`` and become 0). The exponential is the
    polynomial of :func:`attention._kernels.exact._exp_sum_f32`.
    """
    _wide_vectors()
    nb = mx.shape[0]
    for i in range(nb):
        s1[i] = _ZERO_F
        s2[i] = _ZERO_F
        s3[i] = _ZERO_F
    for j in range(j0, j1):
        row = ST[j]
        dj = np.float32(vd[j])
        for i in range(nb):
            p = _exp_f32(row[i] - mx[i])
            row[i] = p
            s1[i] += p
            s2[i] += p * p
            s3[i] += p * dj


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_stats_f64(ST, j0, j1, mx, vd, s1, s2, s3):
    """Float64 twin of :func:`_exp_stats_f32` (the degree-13 polynomial of the exact kernel)."""
    _wide_vectors()
    nb = mx.shape[0]
    for i in range(nb):
        s1[i] = 0.0
        s2[i] = 0.0
        s3[i] = 0.0
    for j in range(j0, j1):
        row = ST[j]
        dj = vd[j]
        for i in range(nb):
            p = _exp_f64(row[i] - mx[i])
            row[i] = p
            s1[i] += p
            s2[i] += p * p
            s3[i] += p * dj


def _exp_stats(ST, j0, j1, mx, vd, s1, s2, s3):  # pragma: no cover - Numba overload
    raise NotImplementedError


@overload(_exp_stats)
def _exp_stats_overload(ST, j0, j1, mx, vd, s1, s2, s3):
    if ST.dtype.bitwidth == 32:
        return lambda ST, j0, j1, mx, vd, s1, s2, s3: _exp_stats_f32(
            ST, j0, j1, mx, vd, s1, s2, s3
        )
    return lambda ST, j0, j1, mx, vd, s1, s2, s3: _exp_stats_f64(ST, j0, j1, mx, vd, s1, s2, s3)


@njit(cache=True, nogil=True)
def _weights_and_stats(ST, vis, bk, mxs, vd, vsg, upad, s1b, dev2b, costb, sv1, sv2, sv3):
    """Exponentials and per-block statistics of the visible keys ``0 .. vis - 1``.

    Writes ``s1b / dev2b / costb (nkb, R)`` (float64): block mass, ``||w_b - mean||^2``
    (padded by ``upad * sum w^2`` against the rounding of the dtype sums) and the block
    cost ``min(sigma_b ||w_b - mean||, sum_j w_j ||v_j - vc_b||)`` (times ``1 + upad``).
    Returns nothing; the normaliser is ``s1b.sum(0)``.
    """
    R = mxs.shape[0]
    nkb = (vis + bk - 1) // bk
    for b in range(nkb):
        j0 = b * bk
        j1 = min(vis, j0 + bk)
        wb = j1 - j0
        _exp_stats(ST, j0, j1, mxs, vd, sv1, sv2, sv3)
        sg = vsg[b]
        for i in range(R):
            a1 = np.float64(sv1[i])
            a2 = np.float64(sv2[i])
            d2 = max(a2 - a1 * a1 / wb, 0.0) + upad * a2
            s1b[b, i] = a1
            dev2b[b, i] = d2
            costb[b, i] = min(sg * np.sqrt(d2), np.float64(sv3[i]) * (1.0 + upad))


@njit(cache=True, nogil=True)
def _select(s1b, dev2b, costb, D, ncand, vc_g, sg_all, tau, acc_fixed, drop, e):
    """Choose the dropped blocks among ``1 .. ncand`` (greedy, cheapest first).

    Row bound ``e_i = min(sum_b c_ib, sigma_all sqrt(sum_b dev2_ib)) / D_i`` over the
    dropped blocks (triangle inequality, or one Cauchy-Schwarz over all of them). A
    block is dropped while ``||e||_2 <= 0.9 tau ||y_plan||_F``, ``y_plan`` the output
    with the blocks that are never dropped exact (``acc_fixed``, unnormalised) and every
    candidate block replaced by its centroid: a proxy known before the other products
    with ``V``. Writes ``drop`` and ``e``; returns ``(n dropped, squared quadrature sum)``.
    """
    R = s1b.shape[1]
    dv = vc_g.shape[1]
    for i in range(R):
        e[i] = 0.0
    if ncand <= 0:
        return 0, 0.0
    inv = np.zeros(R)
    for i in range(R):
        if D[i] > 0.0:
            inv[i] = 1.0 / D[i]
    # planning target: fixed blocks exact, candidates by their centroids
    yc = np.dot(s1b[1 : ncand + 1].T, vc_g[1 : ncand + 1]) + acc_fixed
    yn2 = 0.0
    for i in range(R):
        for c in range(dv):
            yn2 += (yc[i, c] * inv[i]) ** 2
    tot = np.zeros(ncand)
    for p in range(ncand):
        a = 0.0
        for i in range(R):
            a += costb[p + 1, i] * inv[i]
        tot[p] = a
    order = np.argsort(tot)
    target2 = (0.9 * tau) ** 2 * yn2
    ea = np.zeros(R)
    eq = np.zeros(R)
    ndrop = 0
    quad = 0.0
    for r in range(ncand):
        b = order[r] + 1
        s2 = 0.0
        for i in range(R):
            x = min(ea[i] + costb[b, i], sg_all * np.sqrt(eq[i] + dev2b[b, i])) * inv[i]
            s2 += x * x
        if s2 > target2:
            break
        for i in range(R):
            x = costb[b, i] * inv[i]
            ea[i] += costb[b, i]
            eq[i] += dev2b[b, i]
            e[i] = min(ea[i], sg_all * np.sqrt(eq[i])) * inv[i]
            quad += x * x
        drop[b] = True
        ndrop += 1
    return ndrop, quad


@njit(cache=True, nogil=True)
def _kept_products(ST, v_g, j_lo, j_hi, bk, drop, acc, pv, fac):
    """``acc[i] += fac[i] * sum over kept keys in [j_lo, j_hi) of ST[j, i] v_j``.

    Runs of consecutive kept blocks are one GEMM each (``ST[run]^T V[run]``); returns the
    number of kept keys.
    """
    R = acc.shape[0]
    dv = acc.shape[1]
    kept = 0
    b = j_lo // bk
    bend = (j_hi + bk - 1) // bk
    while b < bend:
        if drop[b]:
            b += 1
            continue
        b1 = b
        # At most _RUN_BLOCKS blocks per product: float32 chains of at most 512 terms
        # (the rounding allowance's chain), the runs added in float64.
        while b1 < bend and b1 - b < _RUN_BLOCKS and not drop[b1]:
            b1 += 1
        j0 = b * bk
        j1 = min(j_hi, b1 * bk)
        kept += j1 - j0
        if R <= _SMALL_ROWS:
            pv[:] = 0
            for j in range(j0, j1):
                vj = v_g[j]
                sj = ST[j]
                for i in range(R):
                    p = sj[i]
                    if p != 0:
                        a = pv[i]
                        for c in range(dv):
                            a[c] += p * vj[c]
        else:
            np.dot(ST[j0:j1].T, v_g[j0:j1], pv)
        for i in range(R):
            f = fac[i]
            for c in range(dv):
                acc[i, c] += f * pv[i, c]
        b = b1
    return kept


@njit(cache=True, nogil=True)
def _centroid_terms(s1b, vc_g, drop, acc, sign):
    """``acc += sign * sum_{b dropped} B_b vc_b^T`` (one small GEMM)."""
    nkb, R = s1b.shape
    bd = np.zeros((nkb, R))
    for b in range(nkb):
        if drop[b]:
            for i in range(R):
                bd[b, i] = sign * s1b[b, i]
    acc += np.dot(bd.T, vc_g[:nkb])


# ------------------------------------------------------------------------- decode


@njit(cache=True, nogil=True, fastmath={"contract"})
def _qk_small_t(kc, qbT, ST):
    """``ST = kc @ qbT`` for a few columns (stacked rows): every key row read once."""
    _wide_vectors()
    d, R = qbT.shape
    for j in range(kc.shape[0]):
        kj = kc[j]
        sj = ST[j]
        for i in range(R):
            sj[i] = 0
        for c in range(d):
            x = kj[c]
            qc = qbT[c]
            for i in range(R):
                sj[i] += x * qc[i]


def _decode_loop(
    q,
    k,
    v,
    members,
    n_rows,
    vc,
    vdev,
    vsig,
    vsig_all,
    scale,
    causal,
    offset,
    chunk,
    bk,
    n_local,
    tau,
    upad,
    ST_all,
    cmax,
    s1b,
    dev2b,
    costb,
    part,
    out,
    lse,
    stats,
):
    """Decode with stacked query heads and split keys (see the module docstring).

    ``members (Gk, gs)``: query slices of each key/value slice; stacked row ``a * n + i``
    is row ``i`` of slice ``members[gk, a]``. Work arrays: ``ST_all (Gk, vis, R)``,
    ``cmax (Gk, C, R)``, ``s1b / dev2b / costb (Gk, nkb, R)``, ``part (Gk, C, R, dv)``.
    ``stats[gk]`` as in :func:`_prefill_loop`.
    """
    n = n_rows
    m = k.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    Gk, gs = members.shape
    R = gs * n
    C = cmax.shape[1]
    vis = ST_all.shape[1]
    nkb = (vis + bk - 1) // bk
    lims = np.empty(R, dtype=np.int64)
    for a in range(gs):
        for i in range(n):
            lims[a * n + i] = min(i + offset, m - 1) if causal else m - 1
    lim_lo = lims.min()
    # (1) scores, chunk maxima, weights relative to them, block statistics
    for t in prange(Gk * C):
        gk = t // C
        c = t - gk * C
        j0 = c * chunk
        j1 = min(vis, j0 + chunk)
        qbT = np.empty((d, R), dtype=q.dtype)
        for a in range(gs):
            g = members[gk, a]
            for i in range(n):
                for e in range(d):
                    qbT[e, a * n + i] = q[g, i, e] * scale
        ST = ST_all[gk]
        if R <= _SMALL_ROWS:
            _qk_small_t(k[gk, j0:j1], qbT, ST[j0:j1])
        else:
            np.dot(k[gk, j0:j1], qbT, ST[j0:j1])
        mxd = np.full(R, _NEG, dtype=q.dtype)
        _mask_and_max(ST, j0, j1, lims, lim_lo, mxd)
        for i in range(R):
            cmax[gk, c, i] = mxd[i]
            if mxd[i] == _NEG:
                mxd[i] = 0
        sv1 = np.empty(R, dtype=q.dtype)
        sv2 = np.empty(R, dtype=q.dtype)
        sv3 = np.empty(R, dtype=q.dtype)
        b0 = j0 // bk
        b1 = (j1 + bk - 1) // bk
        # block statistics of this chunk's blocks, written in place
        _weights_and_stats(
            ST[j0:j1],
            j1 - j0,
            bk,
            mxd,
            vdev[gk, j0:j1],
            vsig[gk, b0:b1],
            upad,
            s1b[gk, b0:b1],
            dev2b[gk, b0:b1],
            costb[gk, b0:b1],
            sv1,
            sv2,
            sv3,
        )
    # (2) per key/value slice: global maxima, rescaling, normalisers, selection
    fac_all = np.zeros((Gk, C, R))
    drop_all = np.zeros((Gk, nkb), dtype=np.bool_)
    e_all = np.zeros((Gk, R))
    D_all = np.zeros((Gk, R))
    mx_all = np.full((Gk, R), _NEG)
    acc_fix = np.zeros((Gk, R, dv))
    kept_fix = np.zeros(Gk)
    nfull = (lim_lo + 1) // bk if lim_lo >= 0 else 0
    ncand = max(nfull - n_local, 1) - 1
    for gk in prange(Gk):
        for i in range(R):
            top = _NEG
            for c in range(C):
                top = max(top, cmax[gk, c, i])
            mx_all[gk, i] = top
            for c in range(C):
                if cmax[gk, c, i] > _NEG:
                    fac_all[gk, c, i] = np.exp(cmax[gk, c, i] - top)
        for b in range(nkb):
            c = (b * bk) // chunk
            for i in range(R):
                f = fac_all[gk, c, i]
                s1b[gk, b, i] *= f
                dev2b[gk, b, i] *= f * f
                costb[gk, b, i] *= f
                D_all[gk, i] += s1b[gk, b, i]
        # the never-dropped blocks exact first (planning proxy), then the selection
        skip = np.zeros(nkb, dtype=np.bool_)
        skip[1 : ncand + 1] = True
        pv = np.empty((R, dv), dtype=q.dtype)
        for c in range(C):
            j0 = c * chunk
            kept_fix[gk] += _kept_products(
                ST_all[gk],
                v[gk],
                j0,
                min(vis, j0 + chunk),
                bk,
                skip,
                acc_fix[gk],
                pv,
                fac_all[gk, c],
            )
        nd, qd = _select(
            s1b[gk],
            dev2b[gk],
            costb[gk],
            D_all[gk],
            ncand,
            vc[gk],
            vsig_all[gk],
            tau,
            acc_fix[gk],
            drop_all[gk],
            e_all[gk],
        )
        stats[gk, 4] = nd
        stats[gk, 5] = qd
        for b in range(nkb):
            drop_all[gk, b] = drop_all[gk, b] or not (1 <= b <= ncand)
    # (3) products with V over the kept candidate blocks, per chunk (drop_all now marks
    # every block not to multiply here)
    kept_c = np.zeros((Gk, C))
    for t in prange(Gk * C):
        gk = t // C
        c = t - gk * C
        j0 = c * chunk
        j1 = min(vis, j0 + chunk)
        accp = np.zeros((R, dv))
        pv = np.empty((R, dv), dtype=q.dtype)
        kept_c[gk, c] = _kept_products(
            ST_all[gk], v[gk], j0, j1, bk, drop_all[gk], accp, pv, fac_all[gk, c]
        )
        for i in range(R):
            for e in range(dv):
                part[gk, c, i, e] = accp[i, e]
    # (4) merge, centroid terms, check (dropped blocks exact if it fails)
    for gk in prange(Gk):
        acc = acc_fix[gk].copy()
        for c in range(C):
            for i in range(R):
                for e in range(dv):
                    acc[i, e] += part[gk, c, i, e]
        D = D_all[gk]
        kept = kept_fix[gk]
        for c in range(C):
            kept += kept_c[gk, c]
        bound2 = 0.0
        if stats[gk, 4] > 0:
            dropped = np.zeros(nkb, dtype=np.bool_)
            for b in range(nkb):
                dropped[b] = drop_all[gk, b] and 1 <= b <= ncand
            _centroid_terms(s1b[gk], vc[gk], dropped, acc, 1.0)
            yn2 = 0.0
            for i in range(R):
                bound2 += e_all[gk, i] ** 2
                if D[i] > 0.0:
                    for e in range(dv):
                        yn2 += (acc[i, e] / D[i]) ** 2
            if bound2 > tau * tau * yn2:
                # missed the target: swap the centroid terms for the exact products
                _centroid_terms(s1b[gk], vc[gk], dropped, acc, -1.0)
                pv = np.empty((R, dv), dtype=q.dtype)
                for b in range(nkb):
                    dropped[b] = not dropped[b]
                for c in range(C):
                    j0 = c * chunk
                    j1 = min(vis, j0 + chunk)
                    kept += _kept_products(
                        ST_all[gk], v[gk], j0, j1, bk, dropped, acc, pv, fac_all[gk, c]
                    )
                bound2 = 0.0
                stats[gk, 4] = 0
                stats[gk, 5] = 0.0
        for a in range(gs):
            g = members[gk, a]
            for i in range(n):
                r = a * n + i
                if D[r] > 0.0:
                    inv = 1.0 / D[r]
                    for e in range(dv):
                        out[g, i, e] = acc[r, e] * inv
                    lse[g, i] = mx_all[gk, r] + np.log(D[r])
                else:
                    for e in range(dv):
                        out[g, i, e] = 0.0
                    lse[g, i] = _NEG
        stats[gk, 0] = kept
        stats[gk, 1] = vis
        stats[gk, 2] = bound2
        stats[gk, 3] = R


_decode_kernel = njit(cache=True, nogil=True, parallel=True)(_decode_loop)


# ------------------------------------------------------- exact decode with key norms


@njit(cache=True, nogil=True)
def _colmax(x, cm):
    """``cm[c] = max(cm[c], max_j |x[j, c]|)`` (vertical, vectorised; four rows a step)."""
    _wide_vectors()
    w, dc = x.shape
    j = 0
    while j + 4 <= w:
        r0 = x[j]
        r1 = x[j + 1]
        r2 = x[j + 2]
        r3 = x[j + 3]
        for c in range(dc):
            a = _max_nonan(np.abs(r0[c]), np.abs(r1[c]))
            b = _max_nonan(np.abs(r2[c]), np.abs(r3[c]))
            cm[c] = _max_nonan(cm[c], _max_nonan(a, b))
        j += 4
    while j < w:
        r0 = x[j]
        for c in range(dc):
            cm[c] = _max_nonan(cm[c], np.abs(r0[c]))
        j += 1


@njit(cache=True, nogil=True)
def _exact_decode_task(
    q,
    k,
    v,
    members,
    n,
    t,
    scale,
    causal,
    offset,
    chunk,
    part_acc,
    part_m,
    part_l,
    probe,
    cmk,
    cmv,
    tiles,
):
    """Task ``t = gk * C + c``: exact attention of key chunk ``c`` of slice ``gk``.

    The split-key task of :func:`attention._kernels.exact._split_task` without masks,
    plus ``cmk[t, e] = max_j |k_je|`` and ``cmv[t, e] = max_j |v_je|`` over the chunk,
    taken first (the passes then bring the chunk into the core's cache for the products;
    measured, 2 threads, 9q/3kv, m = 32768: the task costs 1.23-1.26x the exact one, and
    1.6x with the maxima fused into the score loop, which reads K and V as two streams).
    """
    d = q.shape[2]
    m = k.shape[1]
    dv = v.shape[2]
    gs = members.shape[1]
    R = gs * n
    C = part_m.shape[1]
    gk = t // C
    c = t - gk * C
    j0 = c * chunk
    w = min(chunk, m - j0)
    kc = k[gk, j0 : j0 + w]
    vc = v[gk, j0 : j0 + w]
    qb = np.empty((R, d), dtype=q.dtype)
    for a in range(gs):
        g = members[gk, a]
        for i in range(n):
            for e in range(d):
                qb[a * n + i, e] = q[g, i, e] * scale
    s = np.empty((R, w), dtype=q.dtype)
    cmk_t = cmk[t]
    cmv_t = cmv[t]
    cmk_t[:] = 0
    cmv_t[:] = 0
    _colmax(kc, cmk_t)
    _colmax(vc, cmv_t)
    if R <= _SMALL_ROWS:
        _qk_small(qb, kc, s)
    else:
        np.dot(qb, kc.T, s)
    bad = _nonfinite_probe(s)
    if causal:
        for r in range(R):
            srow = s[r]
            for jj in range(max(r % n + offset + 1 - j0, 0), w):
                srow[jj] = _NEG
    mrow = np.full(R, _NEG)
    lrow = np.zeros(R)
    alpha = np.ones(R)
    _softmax_tile(s, mrow, lrow, alpha)
    pv = np.empty((R, dv), dtype=q.dtype)
    if tiles and dv % (64 // q.itemsize) == 0:
        # register tiles of the exact kernel: each value row read once for all rows
        _gemm_tiles(
            s.reshape(-1), v[gk].reshape(-1), pv.reshape(-1), 0, j0 * dv, 0, R, w, dv, w, dv,
            dv, False,
        )  # fmt: skip
    else:
        np.dot(s, vc, pv)
    # NaN / inf in K shows in the scores, in V in P V (or in the value maxima)
    bad += _nonfinite_probe(pv) + _nonfinite_probe(cmv_t.reshape((1, dv)))
    probe[t] = bad
    for i in range(R):
        part_m[gk, c, i] = mrow[i]
        part_l[gk, c, i] = lrow[i]
        for e in range(dv):
            part_acc[gk, c, i, e] = pv[i, e]


@njit(cache=True, nogil=True)
def _decode_allowance(q, out, members, cmk, cmv, scale, u, chunk, allow):
    """Compute the rounding allowance of a decode call from the column maxima (float64).

    Per output row ``i`` (query slice ``g``, key/value slice ``gk``, chunks ``c``):
    ``qk_i = max_c sum_e |q_ie| cmk[gk C + c, e] >= max_j |q_i|^T |k_j|`` (the quantity
    of Higham's dot-product bound (3.5)), ``R = max_c ||cmv[gk C + c]|| >= max_j
    ||v_j||`` and the proven worst-case row allowance
    :func:`attention._kernels.rounding._row_allowance` with ``sigma_i = scale qk_i``
    (``u`` the unit roundoff of the dtype; sums of at most ``chunk`` terms in it, the
    split-key chunks, merged in float64). Writes ``allow[0]`` (Frobenius norm of the
    row allowances) and ``allow[1] = ||out||_F``; squares and sums in float64, rounded
    up by ``1 + 1e-12``.
    """
    n, d = q.shape[1], q.shape[2]
    dv = out.shape[2]
    Gk, gs = members.shape
    C = cmk.shape[0] // Gk
    m = C * chunk
    steps = 2.0 * ((m + 63) // 64) + 4.0
    pad2 = 0.0
    y2 = 0.0
    for gk in range(Gk):
        vm2 = 0.0
        for c in range(C):
            a = 0.0
            for e in range(dv):
                x = np.float64(cmv[gk * C + c, e])
                a += x * x
            vm2 = max(vm2, a)
        R = np.sqrt(vm2) * (1.0 + 1e-12)
        for a_ in range(gs):
            g = members[gk, a_]
            for i in range(n):
                qk = 0.0
                for c in range(C):
                    t = 0.0
                    for e in range(d):
                        t += abs(np.float64(q[g, i, e])) * np.float64(cmk[gk * C + c, e])
                    qk = max(qk, t)
                yi2 = 0.0
                for e in range(dv):
                    x = np.float64(out[g, i, e])
                    yi2 += x * x
                y2 += yi2
                yn = np.sqrt(yi2) * (1.0 + 1e-12)
                sig = scale * qk * (1.0 + 1e-12)
                p = _row_allowance(
                    u, u, float(d), float(min(chunk, m)), steps, sig, R, yn, float(m), float(dv)
                )
                pad2 += p * p
    allow[0] = np.sqrt(pad2) * (1.0 + 1e-12)
    allow[1] = np.sqrt(y2)


def _exact_decode_loop(
    q,
    k,
    v,
    members,
    n,
    scale,
    causal,
    offset,
    chunk,
    out,
    lse,
    part_acc,
    part_m,
    part_l,
    probe,
    cmk,
    cmv,
    u,
    allow,
    tiles,
    counter,
    n_workers,
):
    """Exact split-key decode that also returns the column maxima of ``|K|`` and ``|V|``.

    The flash-decoding kernel of :func:`attention._kernels.exact._split_blocks` without
    masks: every task (key chunk ``c`` of key/value slice ``gk``, ``t = gk * C + c``,
    taken from an atomic counter by ``n_workers`` threads) runs
    :func:`_exact_decode_task`, which also writes ``cmk[t, e] = max_j |k_je|`` and
    ``cmv[t, e] = max_j |v_je|`` over its chunk (the rounding allowance of the certified
    bound needs ``max_j ||k_j||`` and ``max_j ||v_j||``; a separate pass over the whole
    cache cost as much as the kernel); the partials are merged in chunk order as there.
    ``probe``
    as in the exact kernel (0 if the chunk is finite). Finally :func:`_decode_allowance`
    writes the rounding allowance (unit roundoff ``u``, the dtype's ``eps / 2``) and
    ``||out||_F`` to ``allow``.
    """
    Gk = members.shape[0]
    C = part_m.shape[1]
    for _ in prange(n_workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * C:
                break
            _exact_decode_task(
                q,
                k,
                v,
                members,
                n,
                t,
                scale,
                causal,
                offset,
                chunk,
                part_acc,
                part_m,
                part_l,
                probe,
                cmk,
                cmv,
                tiles,
            )
    _merge_split(part_acc, part_m, part_l, members, n, out, lse)
    _decode_allowance(q, out, members, cmk, cmv, scale, u, chunk, allow)


_exact_decode_kernel = njit(cache=True, nogil=True, parallel=True, error_model="numpy")(
    _exact_decode_loop
)
