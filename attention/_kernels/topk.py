"""Numba kernel of top-k attention: per-row selection over a block of formed scores.

For each score row (the visible prefix ``S[i, :lim_i]`` of a block formed by one GEMM):

* **selection**: the maxima of groups of 16 consecutive scores (fewer when ``k`` is
  large: at least ``8 k`` groups; a vectorised pass);
  the ``k``-th largest group maximum ``t`` (``np.partition``) is a lower bound of the
  ``k``-th largest score (the ``k`` groups with the largest maxima hold ``k`` scores
  ``>= t``; quickselect), so only the groups with maximum ``>= t`` are scanned for scores ``>= t``
  and the ``k`` largest of those candidates are kept (ties broken by position): the
  exact top ``k``;
* **normaliser** ``lse_full = mx + log sum_j exp(S_ij - mx)`` with ``mx`` the largest
  kept score, by the exact kernel's vectorised exponential
  (:func:`attention._kernels.exact._exp_sum`) on chunks of 512 scores, the chunk sums
  added in float64;
* **kept part** in float64: the kept scores are recomputed from the float64 query and
  key rows (plus the additive mask), ``w_j = exp(s_ij - max)``,
  ``out_i = sum w_j v_j / sum w_j``, ``lse_kept = max + log sum w_j``.

Every row is handled by one call in a fixed order: the result does not depend on the
number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from attention._kernels.exact import _exp_sum, _max_nonan, _wide_vectors

_CHUNK = 512
_GROUP = 16


@njit(cache=True, nogil=True)
def _kth_largest(a, n, kk, tmp):
    """Return the ``kk``-th largest of ``a[:n]`` (``1 <= kk <= n``; ``tmp``: scratch).

    Quickselect (Hoare partition, median-of-three pivot) on a copy in ``tmp``.
    """
    for t in range(n):
        tmp[t] = a[t]
    lo, hi = 0, n - 1
    want = kk - 1  # index in descending order
    while lo < hi:
        mid = (lo + hi) >> 1
        x, y, z = tmp[lo], tmp[mid], tmp[hi]
        piv = max(min(x, y), min(max(x, y), z))
        i, j = lo, hi
        while i <= j:
            while tmp[i] > piv:
                i += 1
            while tmp[j] < piv:
                j -= 1
            if i <= j:
                tmp[i], tmp[j] = tmp[j], tmp[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            return tmp[want]
    return tmp[want]


@njit(cache=True, nogil=True)
def _compact(bv, bi, c, kk, tmp):
    """Keep the ``kk`` largest of ``bv[:c]`` (first by position among ties); threshold."""
    thr = _kth_largest(bv, c, kk, tmp)
    above = 0
    for t in range(c):
        if bv[t] > thr:
            above += 1
    ties = kk - above
    w = 0
    for t in range(c):
        x = bv[t]
        if x > thr or (x == thr and ties > 0):
            if x == thr:
                ties -= 1
            bv[w] = x
            bi[w] = bi[t]
            w += 1
    return w, thr


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dot(a, b):
    """Dot product of two float64 rows (vectorised: the summation order is free)."""
    acc = 0.0
    for e in range(a.shape[0]):
        acc += a[e] * b[e]
    return acc


@njit(cache=True, nogil=True, fastmath={"contract"})
def _axpy(a, x, y):
    """``y += a x`` for float64 rows."""
    for e in range(y.shape[0]):
        y[e] += a * x[e]


@njit(cache=True, nogil=True)
def _group_max(row, j0, j1):
    """Maximum of ``row[j0:j1]`` (non-empty, no NaN; vectorised)."""
    _wide_vectors()
    best = row[j0]
    for j in range(j0, j1):
        best = _max_nonan(best, row[j])
    return best


@njit(cache=True, nogil=True)
def _topk_kernel(
    S,
    lims,
    kk,
    q,
    k,
    v,
    scale,
    bias,
    has_bias,
    masked,
    full,
    out,
    lse_kept,
    lse_full,
    n_kept,
    n_seen,
    sel,
):  # pragma: no cover - compiled; checked against _topk_rows_numpy
    """Top-``kk`` softmax of the rows of ``S (b, s)`` (overwritten), no validation.

    ``lims (b,)``: row ``i`` sees ``S[i, :lims[i]]`` (masked entries ``-inf``);
    ``q (b, d)``, ``k (s, d)``, ``v (s, dv)`` float64, ``scale``, ``bias (b, s)``
    float64 (read if ``has_bias``); ``masked``: rows may hold ``-inf`` scores; ``full``:
    compute ``lse_full`` (else ``S`` is left unchanged and ``lse_full`` unset). Writes
    ``out (b, dv)``, ``lse_kept``, ``lse_full`` (float64; ``-inf`` for rows without a
    finite score), ``n_kept (b,)`` and ``n_seen (b,)`` (kept keys and keys with a
    finite score) and ``sel (b, kk)``, the kept keys (``-1`` padded).
    """
    b = S.shape[0]
    dv = v.shape[1]
    gmax = np.empty(max(S.shape[1], 1), dtype=S.dtype)
    bv = np.empty(max(S.shape[1], 1), dtype=S.dtype)
    bi = np.empty(max(S.shape[1], 1), dtype=np.int64)
    sk = np.empty(kk)
    yacc = np.empty(dv)
    tmp = np.empty(max(S.shape[1], 1), dtype=S.dtype)
    for i in range(b):
        row = S[i]
        lim = lims[i]
        # Groups of up to 16 scores, at least 8 kk groups (large kk: smaller groups).
        gs = max(1, min(_GROUP, lim // (8 * kk)))
        ng = (lim + gs - 1) // gs
        full = lim // gs
        for g in range(full):
            gmax[g] = _group_max(row, g * gs, g * gs + gs)
        if ng > full:
            gmax[full] = _group_max(row, full * gs, lim)
        # The kk-th largest group maximum is a lower bound of the kk-th largest score:
        # the kk groups with the largest maxima hold kk scores at least that large.
        thr = -np.inf
        if ng > kk:
            thr = _kth_largest(gmax, ng, kk, tmp)
        c = 0
        for g in range(ng):
            if gmax[g] >= thr and gmax[g] > -np.inf:
                for j in range(g * gs, min(lim, (g + 1) * gs)):
                    x = row[j]
                    if x >= thr and x > -np.inf:
                        bv[c] = x
                        bi[c] = j
                        c += 1
        if c > kk:
            c, _ = _compact(bv, bi, c, kk, tmp)
        seen = lim
        if masked:
            seen = 0
            for j in range(lim):
                if row[j] > -np.inf:
                    seen += 1
        n_kept[i] = c
        n_seen[i] = seen
        for t in range(kk):
            sel[i, t] = bi[t] if t < c else -1
        for cc in range(dv):
            out[i, cc] = 0.0
        if c == 0:
            lse_kept[i] = -np.inf
            lse_full[i] = -np.inf
            continue
        mx = np.float64(bv[0])
        for t in range(1, c):
            mx = max(mx, np.float64(bv[t]))
        if full:
            z = 0.0
            for j0 in range(0, lim, _CHUNK):
                z += _exp_sum(row[j0 : min(lim, j0 + _CHUNK)], mx)
            lse_full[i] = mx + np.log(z)
        # Kept part in float64 from the float64 rows.
        smax = -np.inf
        for t in range(c):
            j = bi[t]
            acc = _dot(q[i], k[j]) * scale
            if has_bias:
                acc += bias[i, j]
            sk[t] = acc
            smax = max(smax, acc)
        # Weights by the vectorised exponential (float64, <= 2 ulp), then the sum.
        zk = _exp_sum(sk[:c], smax)
        yacc[:] = 0.0
        for t in range(c):
            _axpy(sk[t], v[bi[t]], yacc)
        for cc in range(dv):
            out[i, cc] = yacc[cc] / zk
        lse_kept[i] = smax + np.log(zk)
