"""Numba kernels of the LSH-block + sampled-column estimator (KDEformer, HyperAttention).

:data:`_block_sample_kernel`: for a batch of ``B`` equal pieces (query rows x key
columns of one slice each, sorted by LSH code), every (piece, diagonal block) pair is
one parallel task:

* gather the block's query rows (pre-scaled), keys and values into contiguous tiles;
* block tile ``S = (s Q_b) K_b^T`` (BLAS), online-softmax update (the exact kernel's
  :func:`attention._kernels.exact._softmax_tile`), ``acc = P V_b``;
* sample tile ``S = (s Q_b) K_S^T + log w`` over the piece's ``s`` sampled keys with
  their log-weights ``-log(s p_j)``, sampled keys of the same block masked (they are
  counted exactly), the same online update, ``acc = alpha acc + P V_S``;
* the row result ``(acc / l, mx + log l)`` is merged into the running output and
  log-normaliser of the row (the log-sum-exp merge of
  :func:`attention.exact.merge_partials`).

Merging the two tiles through one running maximum and normaliser is the ratio
estimator over the augmented ``[V 1]``.

:data:`_block_sample_tiles` computes the same on the exact kernel's 512-bit register
tiles (:func:`attention._kernels.exact._gemm_tiles`; AVX-512 CPUs, value width a
multiple of the vector length) instead of BLAS: per task one score tile ``(s Q_b)
[K_b; K_S]^T`` over the block keys and the piece's samples side by side (each padded to
a register-tile width with masked columns; the samples' ``K^T`` panels packed once per
piece), one softmax pass with the vectorised exponential, one ``P [V_b; V_S]`` product;
the threads take tasks from a shared counter and keep their buffers (the samples'
values are copied once per piece a thread visits). BLAS repacks both thin operands on
every call: the BLAS kernel ran at about a third of the tiles' rate on these 64 x 192
tiles. :data:`_merge_kernel` merges exact partial
results into the same accumulators. Pieces of one call have disjoint rows and every
row is written by one task in a fixed order: the result does not depend on the number
of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attention._kernels.exact import (
    _TILE_VECS,
    _fetch_add,
    _gemm_tiles,
    _max_nonan,
    _softmax_tile,
)
from rnla._kernels.fastexp import _exp_sum_vec
from rnla._kernels.intrinsics import _wide_vectors


@njit(cache=True, nogil=True)
def _merge_row(out, lse, g, row, y, ly):
    """Merge the partial ``(y, ly)`` into ``out[g, row]``, ``lse[g, row]``."""
    lo = lse[g, row]
    if ly == -np.inf:
        return
    if lo == -np.inf:
        for c in range(y.shape[0]):
            out[g, row, c] = y[c]
        lse[g, row] = ly
        return
    mx = max(lo, ly)
    wo = np.exp(lo - mx)
    wy = np.exp(ly - mx)
    z = wo + wy
    for c in range(y.shape[0]):
        out[g, row, c] = (wo * out[g, row, c] + wy * y[c]) / z
    lse[g, row] = mx + np.log(z)


@njit(cache=True, nogil=True, parallel=True)
def _block_sample_kernel(
    q, k, v, kvi, pg, qord, kord, qstart, kstart, ks, vs, sblk, logw, scale, out, lse
):  # pragma: no cover - compiled; checked against the NumPy path of _sampled_batch
    """Block + sample estimator of ``B`` pieces, merged into ``out``/``lse`` (no checks).

    ``q (G, n, d)``, ``k (Gk, m, d)``, ``v (Gk, m, dv)`` of one float dtype, ``kvi (G,)``
    the key/value slice of each query slice; piece ``b`` belongs to slice ``pg[b]``;
    ``qord (B, nr)``, ``kord (B, mk)`` its query rows and keys (slice indices) in LSH
    order; ``qstart``, ``kstart (nb + 1,)`` the block boundaries in sorted position;
    ``ks (B, s, d)``, ``vs (B, s, dv)`` the sampled keys and values, ``sblk (B, s)``
    their blocks, ``logw (B, s)`` their log-weights (dtype of ``q``). Merges into
    ``out (G, n, dv)`` (dtype of ``q``) and ``lse (G, n)`` (float64).
    """
    B = qord.shape[0]
    d = q.shape[2]
    dv = v.shape[2]
    nb = qstart.shape[0] - 1
    ns = ks.shape[1]
    for u in prange(B * nb):
        b = u // nb
        t = u - b * nb
        g = pg[b]
        gk = kvi[g]
        r0 = qstart[t]
        rq = qstart[t + 1] - r0
        k0 = kstart[t]
        rk = kstart[t + 1] - k0
        qb = np.empty((rq, d), dtype=q.dtype)
        for i in range(rq):
            row = qord[b, r0 + i]
            for c in range(d):
                qb[i, c] = q[g, row, c] * scale
        kb = np.empty((rk, d), dtype=q.dtype)
        vb = np.empty((rk, dv), dtype=q.dtype)
        for j in range(rk):
            col = kord[b, k0 + j]
            for c in range(d):
                kb[j, c] = k[gk, col, c]
            for c in range(dv):
                vb[j, c] = v[gk, col, c]
        mrow = np.full(rq, -np.inf)
        lrow = np.zeros(rq)
        alpha = np.ones(rq)
        acc = np.empty((rq, dv), dtype=q.dtype)
        s = np.empty((rq, rk), dtype=q.dtype)
        np.dot(qb, kb.T, s)
        _softmax_tile(s, mrow, lrow, alpha)
        np.dot(s, vb, acc)
        s2 = np.empty((rq, ns), dtype=q.dtype)
        np.dot(qb, ks[b].T, s2)
        for i in range(rq):
            for j in range(ns):
                if sblk[b, j] == t:
                    s2[i, j] = -np.inf
                else:
                    s2[i, j] += logw[b, j]
        _softmax_tile(s2, mrow, lrow, alpha)
        pv = np.empty((rq, dv), dtype=q.dtype)
        np.dot(s2, vs[b], pv)
        y = np.empty(dv)
        for i in range(rq):
            if lrow[i] > 0.0:
                a = alpha[i]
                inv = 1.0 / lrow[i]
                for c in range(dv):
                    y[c] = (a * acc[i, c] + pv[i, c]) * inv
                _merge_row(out, lse, g, qord[b, r0 + i], y, mrow[i] + np.log(lrow[i]))


@njit(cache=True, nogil=True, parallel=True)
def _merge_kernel(out, lse, pg, pr0, y, ly):  # pragma: no cover - compiled
    """Merge partial results ``y (B, r, dv)``, ``ly (B, r)`` into ``out``/``lse``.

    Row ``i`` of piece ``b`` is row ``pr0[b] + i`` of slice ``pg[b]`` of ``out (G, n,
    dv)`` and ``lse (G, n)``; the pieces have disjoint rows.
    """
    B, r = ly.shape
    for u in prange(B):
        g = pg[u]
        for i in range(r):
            _merge_row(out, lse, g, pr0[u] + i, y[u, i], ly[u, i])


@njit(cache=True, nogil=True)
def _bias_max(s, off, bias, w):
    """``s[off + j] += bias[j]`` for ``j < w``; return the maximum (no NaN; vectorised)."""
    _wide_vectors()
    sr = s[off : off + w]  # a slice: unsigned indices, so LLVM vectorises the loop
    best = sr[0] + bias[0]
    for j in range(w):
        x = sr[j] + bias[j]
        sr[j] = x
        best = _max_nonan(best, x)
    return best


@njit(cache=True, nogil=True)
def _merge_scaled(orow, lse, g, row, acc, inv, ly):
    """Merge ``y = acc * inv`` with log-normaliser ``ly`` into ``orow = out[g, row]``.

    The log-sum-exp merge of :func:`_merge_row` with one exponential and one
    ``log1p`` (the larger of the two log-normalisers is the reference).
    """
    _wide_vectors()
    lo = lse[g, row]
    if lo == -np.inf:
        for c in range(orow.shape[0]):
            orow[c] = acc[c] * inv
        lse[g, row] = ly
        return
    if lo >= ly:
        w = np.exp(ly - lo)
        a = 1.0 / (1.0 + w)
        bb = w * inv * a
        lse[g, row] = lo + np.log1p(w)
    else:
        w = np.exp(lo - ly)
        a = w / (1.0 + w)
        bb = inv / (1.0 + w)
        lse[g, row] = ly + np.log1p(w)
    for c in range(orow.shape[0]):
        orow[c] = a * orow[c] + bb * acc[c]


@njit(cache=True, nogil=True, parallel=True)
def _block_sample_tiles(
    q,
    k,
    v,
    kvi,
    pg,
    qord,
    kord,
    qstart,
    kstart,
    kst,
    vsp,
    sblk,
    logw,
    scale,
    out,
    lse,
    counter,
    n_workers,
):  # pragma: no cover - compiled; checked against the NumPy path of _sampled_batch
    """:data:`_block_sample_kernel` on register tiles (same arguments, except the samples).

    ``kst (B, Ws * d)``: each piece's sampled keys as ``K^T`` panels of one register
    tile (``wide`` = 64 float32 / 32 float64 keys; panel ``c`` holds sampled keys ``c
    wide ..`` as ``kst[b, c d wide + e wide + jj]``), zero past the ``s`` samples;
    ``vsp (B, Ws, dv)`` their values, zero rows past ``s``; ``Ws`` a multiple of
    ``wide``; ``dv`` a multiple of the vector length. ``counter`` int64 (1,) zero;
    ``n_workers`` threads take the (piece, block) tasks from it.
    """
    B = qord.shape[0]
    d = q.shape[2]
    dv = v.shape[2]
    nb = qstart.shape[0] - 1
    ns = sblk.shape[1]
    Ws = vsp.shape[1]
    wide = _TILE_VECS * (64 // q.itemsize)
    rqmax = 1
    rkmax = 1
    for t in range(nb):
        rqmax = max(rqmax, qstart[t + 1] - qstart[t])
        rkmax = max(rkmax, kstart[t + 1] - kstart[t])
    Wb = -(-rkmax // wide) * wide
    ld = Wb + Ws
    n_tasks = B * nb
    kflat = kst.reshape(-1)
    neg = -np.inf
    for _ in prange(n_workers):
        qb = np.empty((rqmax, d), dtype=q.dtype)
        kb = np.zeros((Wb, d), dtype=q.dtype)
        kbt = np.zeros(Wb * d, dtype=q.dtype)
        vcat = np.zeros((ld, dv), dtype=q.dtype)
        s = np.empty(rqmax * ld, dtype=q.dtype)
        acc = np.empty((rqmax, dv), dtype=q.dtype)
        bias = np.empty(ld, dtype=q.dtype)
        mrow = np.empty(rqmax)
        lrow = np.empty(rqmax)
        cur = -1
        while True:
            u = _fetch_add(counter)
            if u >= n_tasks:
                break
            b = u // nb
            t = u - b * nb
            g = pg[b]
            gk = kvi[g]
            if b != cur:
                vcat[Wb:] = vsp[b]  # the piece's sampled values below the block's
                cur = b
            r0 = qstart[t]
            rq = qstart[t + 1] - r0
            k0 = kstart[t]
            rk = kstart[t + 1] - k0
            qo = qord[b, r0 : r0 + rq]
            ko = kord[b, k0 : k0 + rk]
            qg, kg, vg = q[g], k[gk], v[gk]
            for i in range(rq):
                src, dst = qg[qo[i]], qb[i]
                for c in range(d):
                    dst[c] = src[c] * scale
            # Block keys and values (zero rows past rk: their columns are masked, P = 0
            # there), then K^T panels from the cache-resident copy.
            for j in range(rk):
                kb[j] = kg[ko[j]]
                vcat[j] = vg[ko[j]]
            kb[rk:] = 0.0
            vcat[rk:Wb] = 0.0
            for p in range(Wb // wide):
                pan = kbt[p * d * wide : (p + 1) * d * wide]
                for c in range(d):
                    for jj in range(wide):
                        pan[c * wide + jj] = kb[p * wide + jj, c]
            qf = qb.reshape(-1)
            _gemm_tiles(qf, kbt, s, 0, 0, 0, rq, d, Wb, d, wide, ld, True)
            _gemm_tiles(qf, kflat, s, 0, b * Ws * d, Wb, rq, d, Ws, d, wide, ld, True)
            # Column terms: 0 on the block's keys, the samples' log-weights, -inf on
            # padding and on samples of this block (counted exactly).
            bias[:rk] = 0.0
            bias[rk:Wb] = neg
            for j in range(Ws):
                bias[Wb + j] = neg if (j >= ns or sblk[b, j] == t) else logw[b, j]
            for i in range(rq):
                mx = _bias_max(s, i * ld, bias, ld)  # finite: every block has a key
                mrow[i] = mx
                lrow[i] = np.float64(_exp_sum_vec(s, i * ld, ld, mx))
            _gemm_tiles(
                s, vcat.reshape(-1), acc.reshape(-1), 0, 0, 0, rq, ld, dv, ld, dv, dv, False
            )
            og = out[g]
            for i in range(rq):
                if lrow[i] > 0.0:
                    row = qo[i]
                    ly = mrow[i] + np.log(lrow[i])
                    _merge_scaled(og[row], lse, g, row, acc[i], 1.0 / lrow[i], ly)
