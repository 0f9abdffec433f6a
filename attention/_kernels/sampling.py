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
estimator over the augmented ``[V 1]``. :data:`_merge_kernel` merges exact partial
results into the same accumulators. Pieces of one call have disjoint rows and every
row is written by one task in a fixed order: the result does not depend on the number
of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attention._kernels.exact import _softmax_tile


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
