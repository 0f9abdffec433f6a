"""Numba kernel of exact attention on gathered key blocks (window, BigBird, Reformer, Routing).

:func:`_gather_attend` computes, for blocks of query rows that share a list of keys,
exact softmax attention of each row over the visible keys of its block's list and
merges the result into running accumulators through the log-sum-exp (as
:func:`attention.exact.merge_partials`). Per block:

* the block's keys are gathered once, transposed into a ``(d, W)`` tile, so that each
  row's scores ``s_j = q_i . k_j`` are a vectorised loop over the ``W`` keys;
* visibility is a position test ``lo_i <= kpos_j <= hi_i`` (and ``kpos_j != excl_i``),
  so no ``(B, W)`` mask array is needed; optional log-weights are added to the scores;
* the row maximum, the exponentials (:func:`rnla._kernels.fastexp` through the exact
  kernel's ``_exp_sum``) and ``P V`` over the visible keys, then the merge.

It replaces batched NumPy GEMMs over gathered copies of the keys and values, whose
temporaries (scores, masks, gathered keys and values: about ``4 B W`` entries per block)
dominated those methods' time at long context. Every row is computed by one call in a
fixed order, so the result does not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from attention._kernels.exact import _exp_sum, _gemm_tiles
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
            z = _exp_sum(s, mx)
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
        for j in range(W):
            kj = k[J[b, j]]
            for t in range(d):
                kt[t * Wp + j] = kj[t]
            vj = v[J[b, j]]
            for c in range(dv):
                vb[j * dv + c] = vj[c]
        _gemm_tiles(qb, kt, s, 0, 0, 0, nr, d, Wp, d, Wp, Wp, False)
        for rr in range(nr):
            r = slot[rr]
            i = rows[b, r]
            srow = s[rr * Wp : (rr + 1) * Wp]
            mx = _mask_scores(
                srow, W, scale, kpos, b, r, lo[i], hi[i], excl[i], logw, i, obq, obk, ork, olo
            )
            mxs[rr] = mx
            if mx == -np.inf:
                # Nothing visible: zero weights (P V gives 0), the row is skipped below.
                srow[:] = 0
                zs[rr] = 0.0
            else:
                zs[rr] = _exp_sum(srow, mx)
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
