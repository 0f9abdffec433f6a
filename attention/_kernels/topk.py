"""Numba kernels of the selection methods (``topk``, ``loki``) on blocks of formed scores.

For each score row (the visible prefix ``S[i, :lim_i]`` of a block formed by one GEMM,
in the work dtype), :func:`_select_block`:

* **selection** of the ``k`` largest finite scores without sorting: one vectorised
  pass for the row's maximum, minimum, mean and deviation; counting passes (three trial
  thresholds per vectorised pass, the first ones normal quantiles of the row, then a
  log-count interpolation) narrow a bracket ``[lo, hi)`` with
  ``count(>= lo) >= k > count(>= hi)`` until ``count(>= lo) <= k + max(16, k/4)``
  (one or two passes on real heads); the maxima of 16 strided groups locate the
  entries ``>= lo`` (one vectorised pass, only groups reaching ``lo`` are scanned);
  the same search on those candidates gives exactly ``k`` of them (ties at the
  threshold: the first positions, by a quickselect and a sort of the tied positions);
* **normaliser** ``lse_full = mx + log sum_j exp(S_ij - mx)`` (topk) by the exact
  kernel's vectorised exponential (:func:`attention._kernels.exact._exp_sum`) on
  chunks of 512 scores, the chunk sums added in float64.

The kept part (:func:`_gather_kept`, :func:`_dense_weights`) attends each row's kept
keys: gathered rows four keys at a time in float64 arithmetic, or scattered weights
for one GEMM over the union of a block's kept keys (:func:`attention.sparse._kept_block`
chooses). :func:`_loki_drop` is Loki's dropped-mass pass (one vectorised float64
log-sum-exp over each row's dropped keys).

Every row is handled in a fixed order by one call: the result does not depend on the
number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import intrinsic

from attention._kernels.exact import (
    _add_reassoc,
    _exp_f64,
    _exp_sum,
    _max_nonan,
    _wide_vectors,
)

_CHUNK = 512
_GROUP = 16


@intrinsic
def _min_nonan(typingctx, a, b):
    """Return ``a if a < b else b`` flagged ``nnan`` (LLVM vectorises the reduction)."""

    def codegen(context, builder, sig, args):
        c = builder.fcmp_ordered("<", args[0], args[1], flags=("nnan", "nsz"))
        return builder.select(c, args[0], args[1], flags=("nnan", "nsz"))

    return a(a, b), codegen


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


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _row_stats(row, lim, masked):
    """``(max, min, count, mean, std)`` of the finite entries of ``row[:lim]``."""
    _wide_vectors()
    mx = row[0]
    for j in range(lim):
        mx = _max_nonan(mx, row[j])
    mn = mx
    seen = 0
    # sums in the row's dtype (they only place the first trial thresholds)
    s1 = mx - mx
    s2 = s1
    if not masked:
        seen = lim
        for j in range(lim):
            x = row[j]
            mn = _min_nonan(mn, x)
            s1 = _add_reassoc(s1, x)
            s2 = _add_reassoc(s2, x * x)
    else:
        zero = s1
        for j in range(lim):
            x = row[j]
            fin = x > -np.inf
            seen += 1 if fin else 0
            mn = _min_nonan(mn, x if fin else mx)
            xf = x if fin else zero
            s1 = _add_reassoc(s1, xf)
            s2 = _add_reassoc(s2, xf * xf)
    mean = np.float64(s1) / max(seen, 1)
    var = np.float64(s2) / max(seen, 1) - mean * mean
    return mx, mn, seen, mean, np.sqrt(max(var, 0.0))


@njit(cache=True, nogil=True)
def _normal_tail(p):
    """``z`` with ``P(N(0, 1) > z) = p`` for ``0 < p <= 1/2`` (Abramowitz-Stegun 26.2.23)."""
    t = np.sqrt(-2.0 * np.log(p))
    return t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (
        1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t
    )


@njit(cache=True, nogil=True)
def _count3(row, lim, tb):
    """Count the entries of ``row[:lim]`` at least ``tb[0]``, ``tb[1]``, ``tb[2]``."""
    _wide_vectors()
    t1, t2, t3 = tb[0], tb[1], tb[2]
    c1 = np.int32(0)
    c2 = np.int32(0)
    c3 = np.int32(0)
    for j in range(lim):
        x = row[j]
        c1 += np.int32(1) if x >= t1 else np.int32(0)
        c2 += np.int32(1) if x >= t2 else np.int32(0)
        c3 += np.int32(1) if x >= t3 else np.int32(0)
    return c1, c2, c3


@njit(cache=True, nogil=True)
def _select_row(row, lim, kk, masked, bv, bi, tmp, tb, gmax):
    """Keep the ``kk`` largest finite entries of ``row[:lim]``: ``(c, seen, row max)``.

    Writes the kept scores to ``bv[:c]`` and their positions to ``bi[:c]`` (ties at
    the ``kk``-th largest value broken by position: the first ones are kept).
    Threshold search: counting passes with three trial thresholds each (vectorised),
    keeping a bracket ``[lo, hi)`` with ``count(>= lo) >= kk > count(>= hi)``, until
    ``kk <= count(>= lo) <= kk + slack`` or the bracket cannot be split (ties). The
    first trials are normal quantiles of the row's mean and deviation, the later ones
    an interpolation of the log-count and the two midpoints (only the number of
    passes depends on these guesses, not the result). Then one pass over chunks of 16
    (skipped when their maximum is below ``lo``) collects the entries ``>= lo`` and a
    quickselect keeps the ``kk`` largest.
    """
    mx, mn, seen, mean, sd = _row_stats(row, lim, masked)
    if seen == 0:
        return 0, 0, mx
    c = 0
    if seen <= kk:
        for j in range(lim):
            x = row[j]
            if x > -np.inf:
                bv[c] = x
                bi[c] = j
                c += 1
        return c, seen, mx
    slack = max(16, kk // 4)
    lo, hi, n_lo, _ = _bracket(row, lim, kk, slack, mn, mx, seen, 0, tb, mean, sd)
    tb[0] = lo
    t = tb[0]
    if 32 * n_lo >= lim:
        # many candidates: one branch-free pass (bv, bi have room for lim + 1)
        for j in range(lim):
            x = row[j]
            bv[c] = x
            bi[c] = j
            c += 1 if x >= t else 0
    else:
        # Strided groups {w, w + G, ..., w + 15 G}: their maxima are one vectorised
        # pass; only groups whose maximum reaches t are scanned, branch-free (the
        # candidates come out of position order).
        G = lim // _GROUP
        _group_max(row, G, gmax)
        for w in range(G):
            if gmax[w] >= t:
                for r in range(_GROUP):
                    j = r * G + w
                    x = row[j]
                    bv[c] = x
                    bi[c] = j
                    c += 1 if x >= t else 0
        for j in range(_GROUP * G, lim):
            x = row[j]
            bv[c] = x
            bi[c] = j
            c += 1 if x >= t else 0
    if c > kk:
        # the same search on the candidates, down to exactly kk (ties: quickselect)
        lo, _, n_lo, _ = _bracket(bv, c, kk, 0, lo, hi, c, 0, tb, np.nan, 0.0)
        if n_lo == kk:
            tb[0] = lo
            t = tb[0]
            w = 0
            for e in range(c):
                x = bv[e]
                if x >= t:
                    bv[w] = x
                    bi[w] = bi[e]
                    w += 1
            c = w
        else:
            c = _keep_largest(bv, bi, c, kk, tmp)
    return c, seen, mx


@njit(cache=True, nogil=True)
def _bracket(row, lim, kk, slack, lo, hi, n_lo, n_hi, tb, mean, sd):
    """Narrow ``[lo, hi)`` (``count(>= lo) = n_lo >= kk > count(>= hi) = n_hi``).

    Counting passes over ``row[:lim]`` with three trial thresholds each until
    ``n_lo <= kk + slack`` or the bracket cannot be split (ties). First trials: normal
    quantiles from ``mean`` and ``sd`` (unless ``mean`` is NaN); then an interpolation
    of the log-count and the midpoints on either side. Returns ``(lo, hi, n_lo, n_hi)``
    (float64 values of thresholds in the dtype of ``row``).
    """
    lo, hi = np.float64(lo), np.float64(hi)
    target = kk + slack // 2
    first = not np.isnan(mean)
    while n_lo > kk + slack:
        w = hi - lo
        if first:
            first = False
            p = target / n_lo
            for e in range(3):
                pe = min(p * (2.0, 1.0, 0.5)[e], 0.5)
                tb[e] = min(max(mean + sd * _normal_tail(pe), lo + w / 64), hi - w / 64)
        else:
            # log-count linear between (lo, n_lo) and (hi, max(n_hi, 1/2))
            f = np.log(n_lo / (target + 0.5)) / np.log(n_lo / max(n_hi, 0.5))
            ts = lo + w * min(max(f, 1.0 / 16), 15.0 / 16)
            tb[0] = 0.5 * (lo + ts)
            tb[1] = ts
            tb[2] = 0.5 * (ts + hi)
        c1, c2, c3 = _count3(row, lim, tb)
        nlo, nhi = lo, hi
        n_new, nh_new = n_lo, n_hi
        for e in range(3):
            tv = np.float64(tb[e])
            cnt = (c1, c2, c3)[e]
            if tv <= lo or tv >= hi:
                continue
            if cnt >= kk:
                if tv > nlo:
                    nlo, n_new = tv, cnt
            elif tv < nhi:
                nhi, nh_new = tv, cnt
        if nlo == lo and nhi == hi:
            break  # the bracket cannot be split (ties)
        lo, hi, n_lo, n_hi = nlo, nhi, n_new, nh_new
    return lo, hi, n_lo, n_hi


@njit(cache=True, nogil=True)
def _group_max(row, G, gmax):
    """``gmax[w] = max_r row[r G + w]`` for ``w < G``, ``r < 16`` (vectorised)."""
    _wide_vectors()
    for w in range(G):
        gmax[w] = row[w]
    for r in range(1, _GROUP):
        part = row[r * G : r * G + G]
        for w in range(G):
            gmax[w] = _max_nonan(gmax[w], part[w])


@njit(cache=True, nogil=True)
def _keep_largest(bv, bi, c, kk, tmp):
    """Keep the ``kk`` largest of ``bv[:c]`` (with ``bi``); among ties the smallest ``bi``."""
    thr = _kth_largest(bv, c, kk, tmp)
    above = 0
    equal = 0
    for t in range(c):
        above += 1 if bv[t] > thr else 0
        equal += 1 if bv[t] == thr else 0
    ties = kk - above
    cut = np.iinfo(np.int64).max
    if ties < equal:  # keep the first ``ties`` positions among the equal scores
        pos = np.empty(equal, dtype=np.int64)
        e = 0
        for t in range(c):
            if bv[t] == thr:
                pos[e] = bi[t]
                e += 1
        pos.sort()
        cut = pos[ties - 1]
    w = 0
    for t in range(c):
        x = bv[t]
        if x > thr or (x == thr and bi[t] <= cut):
            bv[w] = x
            bi[w] = bi[t]
            w += 1
    return w


@njit(cache=True, nogil=True)
def _select_block(
    S, lims, kk, masked, full, sel, sv, n_kept, n_seen, lse_full, aux, mom
):  # pragma: no cover - compiled; checked against _topk_rows_numpy
    """Top-``kk`` selection on the score rows ``S (b, s)``, no validation.

    Row ``i`` sees ``S[i, :lims[i]]`` (masked entries ``-inf`` when ``masked``).
    Writes the kept positions ``sel (b, kk)`` (``-1`` padded) and their scores
    ``sv (b, kk)`` (float64), ``n_kept``, ``n_seen`` (keys with a finite score) and,
    when ``full``, ``lse_full[i] = mx + log sum_j exp(S_ij - mx)`` (``-inf`` for rows
    without a finite score; the exponentials overwrite ``S``, summed in chunks of 512
    by the vectorised exponential of the row's dtype, chunk sums in float64) and, when
    ``aux`` (``(3, m >= s)`` in the row's dtype) is not empty, the dropped keys'
    moments ``mom[i, r] = sum_{j dropped} exp(S_ij - mx) aux[r, j] / z`` (``z`` the
    computed exponential sum; kept entries zeroed after the normaliser, one
    vectorised pass, chunk sums in float64).
    """
    b, s = S.shape
    bv = np.empty(s + 1, dtype=S.dtype)
    tmp = np.empty(s + 1, dtype=S.dtype)
    tb = np.empty(3, dtype=S.dtype)
    gmax = np.empty(s // _GROUP + 1, dtype=S.dtype)
    bi = np.empty(s + 1, dtype=np.int64)
    for i in range(b):
        row = S[i]
        lim = lims[i]
        c, seen, mx = _select_row(row, lim, kk, masked, bv, bi, tmp, tb, gmax)
        n_kept[i] = c
        n_seen[i] = seen
        for t in range(kk):
            sel[i, t] = bi[t] if t < c else -1
            sv[i, t] = np.float64(bv[t]) if t < c else -np.inf
        if not full:
            continue
        if c == 0:
            lse_full[i] = -np.inf
            continue
        z = 0.0
        mx64 = np.float64(mx)
        for j0 in range(0, lim, _CHUNK):
            z += _exp_sum(row[j0 : min(lim, j0 + _CHUNK)], mx64)
        lse_full[i] = mx64 + np.log(z)
        if aux.shape[1] > 0:
            for t in range(c):
                row[bi[t]] = 0
            m0 = 0.0
            m1 = 0.0
            m2 = 0.0
            x0, x1, x2 = aux[0], aux[1], aux[2]
            for j0 in range(0, lim, _CHUNK):
                j1 = min(lim, j0 + _CHUNK)
                a0, a1, a2 = _moments(row[j0:j1], x0[j0:j1], x1[j0:j1], x2[j0:j1])
                m0 += a0
                m1 += a1
                m2 += a2
            mom[i, 0] = m0 / z
            mom[i, 1] = m1 / z
            mom[i, 2] = m2 / z


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _moments(row, x0, x1, x2):
    """``sum_j row[j] x_r[j]`` for ``r < 3`` (vectorised).

    In float64: float32 products of tiny weights would be subnormal (slow, inexact).
    """
    _wide_vectors()
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    for j in range(row.shape[0]):
        x = np.float64(row[j])
        a0 = _add_reassoc(a0, x * np.float64(x0[j]))
        a1 = _add_reassoc(a1, x * np.float64(x1[j]))
        a2 = _add_reassoc(a2, x * np.float64(x2[j]))
    return a0, a1, a2


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dot4(qi, k, j0, j1, j2, j3):
    """Four dot products ``q_i.k_j`` in the dtype of the rows (vectorised)."""
    _wide_vectors()
    a0 = qi[0] - qi[0]
    a1 = a0
    a2 = a0
    a3 = a0
    for e in range(qi.shape[0]):
        x = qi[e]
        a0 = _add_reassoc(a0, x * k[j0, e])
        a1 = _add_reassoc(a1, x * k[j1, e])
        a2 = _add_reassoc(a2, x * k[j2, e])
        a3 = _add_reassoc(a3, x * k[j3, e])
    return a0, a1, a2, a3


@njit(cache=True, nogil=True, fastmath={"contract"})
def _axpy4(y, v, j0, j1, j2, j3, w0, w1, w2, w3):
    """``y += w0 v_j0 + w1 v_j1 + w2 v_j2 + w3 v_j3`` (the dtype of ``y``, vectorised)."""
    _wide_vectors()
    for e in range(y.shape[0]):
        y[e] += (w0 * v[j0, e] + w1 * v[j1, e]) + (w2 * v[j2, e] + w3 * v[j3, e])


@njit(cache=True, nogil=True)
def _gather_kept(
    sel, sv, n_kept, q, k, v, scale, rescore, out, lse_kept
):  # pragma: no cover - compiled; checked against a NumPy reference in the tests
    """Softmax attention of each row over its kept keys, gathered four keys at a time.

    Row ``i`` attends the keys ``sel[i, :n_kept[i]]`` with the scores ``sv[i]`` or,
    when ``rescore``, the exact scores ``q_i.k_j scale`` (dot products in the dtype of
    the rows; written back to ``sv``). Weights ``exp(s - max)`` by the float64
    vectorised exponential, normaliser summed in float64; ``out_i = sum w v / sum w``
    accumulated in the dtype of ``v`` (padding keys get weight 0),
    ``lse_kept_i = max + log sum w`` (``-inf`` and zero output for empty rows).
    """
    b, kk = sel.shape
    dv = v.shape[1]
    w = np.zeros(kk + 4)
    wv = np.zeros(kk + 4, dtype=v.dtype)
    ix = np.zeros(kk + 4, dtype=np.int64)
    y = np.empty(dv, dtype=v.dtype)
    for i in range(b):
        c = n_kept[i]
        if c == 0:
            out[i, :] = 0.0
            lse_kept[i] = -np.inf
            continue
        for t in range(c):
            ix[t] = sel[i, t]
        for t in range(c, c + 4):
            ix[t] = ix[0]
        if rescore:
            for t in range(0, c, 4):
                a0, a1, a2, a3 = _dot4(q[i], k, ix[t], ix[t + 1], ix[t + 2], ix[t + 3])
                w[t], w[t + 1] = np.float64(a0) * scale, np.float64(a1) * scale
                w[t + 2], w[t + 3] = np.float64(a2) * scale, np.float64(a3) * scale
            for t in range(c):
                sv[i, t] = w[t]
        else:
            for t in range(c):
                w[t] = sv[i, t]
        smax = -np.inf
        for t in range(c):
            smax = max(smax, w[t])
        _exp_sum(w[:c], smax)
        zk = 0.0
        for t in range(c):
            wv[t] = w[t]
            zk += np.float64(wv[t])
        for t in range(c, c + 4):
            wv[t] = 0.0
        y[:] = 0.0
        for t in range(0, c, 4):
            _axpy4(
                y,
                v,
                ix[t],
                ix[t + 1],
                ix[t + 2],
                ix[t + 3],
                wv[t],
                wv[t + 1],
                wv[t + 2],
                wv[t + 3],
            )
        for cc in range(dv):
            out[i, cc] = np.float64(y[cc]) / zk
        lse_kept[i] = smax + np.log(zk)


@njit(cache=True, nogil=True)
def _dense_weights(
    W, sel, sv, n_kept, colmap, SU, use_su, lse_kept, zk
):  # pragma: no cover - compiled; checked against a NumPy reference in the tests
    """Scatter the kept softmax weights of each row into ``W (b, u)`` (zeroed here).

    ``colmap[j]``: column of key ``j`` in the union of the kept keys. Scores: ``sv[i]``
    or, when ``use_su``, ``SU[i, colmap[j]]`` (written back to ``sv``). Row ``i``:
    ``W[i, colmap[j]] = exp(s_ij - max)`` (float64 exponential, stored in ``W``'s
    dtype), ``zk[i] = sum`` of the stored weights in float64, ``lse_kept = max + log
    zk``.
    """
    b = sel.shape[0]
    w = np.empty(sel.shape[1])
    for i in range(b):
        W[i, :] = 0
        c = n_kept[i]
        if c == 0:
            lse_kept[i] = -np.inf
            zk[i] = 1.0
            continue
        smax = -np.inf
        for t in range(c):
            if use_su:
                sv[i, t] = np.float64(SU[i, colmap[sel[i, t]]])
            w[t] = sv[i, t]
            smax = max(smax, w[t])
        _exp_sum(w[:c], smax)
        z = 0.0
        for t in range(c):
            W[i, colmap[sel[i, t]]] = w[t]
            z += np.float64(W[i, colmap[sel[i, t]]])
        zk[i] = z
        lse_kept[i] = smax + np.log(z)


@njit(cache=True, nogil=True)
def _loki_drop(
    S, lims, sel, n_kept, a, bk, c_row, kn, lse_kept, log_drop
):  # pragma: no cover - compiled; checked against a NumPy reference in the tests
    """Log of Loki's dropped-mass bound relative to the kept normaliser, per row.

    ``log_drop[i] = log sum_{j < lims[i], j not kept} exp(S_ij + a_i bk_j + c_row_i
    kn_j - lse_kept_i)`` (``-inf`` when nothing is dropped), one vectorised float64
    pass per row, shifted by an upper bound of the terms (the row maximum plus
    ``a_i max bk + c_row_i max kn``), so no maximum pass; the kept entries of ``S``
    are set to ``-inf``. ``a``, ``bk``, ``c_row``, ``kn`` are nonnegative.
    """
    b = S.shape[0]
    bmax = 0.0
    for j in range(bk.shape[0]):
        bmax = max(bmax, bk[j])
    kmax = 0.0
    for j in range(kn.shape[0]):
        kmax = max(kmax, kn[j])
    for i in range(b):
        row = S[i]
        lim = lims[i]
        c = n_kept[i]
        if c == 0 or c >= lim:
            log_drop[i] = -np.inf
            continue
        mx = np.float64(_row_max_lim(row, lim))
        for t in range(c):
            row[sel[i, t]] = -np.inf
        top = mx + a[i] * bmax + c_row[i] * kmax
        acc = _log_sum_bound(row, lim, a[i], bk, c_row[i], kn, top)
        # terms flushed to 0 below exp(-708) add at most lim exp(-708) to the sum
        log_drop[i] = top - lse_kept[i] + np.log(acc + lim * 3.4e-308)


@njit(cache=True, nogil=True)
def _row_max_lim(row, lim):
    """Maximum of ``row[:lim]`` (non-empty; vectorised)."""
    _wide_vectors()
    mx = row[0]
    for j in range(lim):
        mx = _max_nonan(mx, row[j])
    return mx


@njit(cache=True, nogil=True, fastmath={"contract"})
def _log_sum_bound(row, lim, ai, bk, ci, kn, top):
    """``sum_j exp(row[j] + ai bk[j] + ci kn[j] - top)`` over ``j < lim`` (float64).

    ``top`` bounds every exponent from above (up to rounding: arguments are clamped at
    0, an error below ``1e-15`` relative), so the float64 exponential never overflows.
    """
    _wide_vectors()
    acc = 0.0
    for j in range(lim):
        t = np.float64(row[j]) + ai * bk[j] + ci * kn[j] - top
        acc = _add_reassoc(acc, _exp_f64(t if t < 0.0 else 0.0))
    return acc
