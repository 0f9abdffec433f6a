"""Numba kernels behind :mod:`attention.kernel` (§5: kernelised / linear attention).

(Causal linear attention itself runs as chunked BLAS GEMMs in
:func:`attention.kernel._causal_linear`.)

``_prefix_topk`` keeps, for every causal prefix, the best-scored keys, and
``_block_unions`` gathers the kept keys of blocks of rows (LevAttention).

``_bucket_weights`` and ``_scatter_rows`` are Scatterbrain's sparse part: exact scores
minus the low-rank estimate on blocks of causal per-bucket key windows (the products are
BLAS GEMMs; the kernels fuse the masking, logarithms, row shifts and exponentials).

``_online_leverage`` computes ridge online leverage scores
``tau_j = k_j^T (lam I + sum_{l <= j} k_l k_l^T)^{-1} k_j`` by Sherman–Morrison updates
of the inverse, ``O(m d^2)``; score ``j`` depends on keys ``0..j`` only (causal).

All kernels are serial and deterministic (no Numba threads; the GEMMs go to BLAS, whose
result does not depend on the partition of the output), take float64, int64 and bool
arrays and scalars only (``_bucket_weights`` also float32) and do not validate.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _online_leverage(k, lam, out):
    """Ridge online leverage scores ``out[j] = k_j^T (lam I + K_{<=j}^T K_{<=j})^{-1} k_j``.

    Parameters
    ----------
    k : float64 (m, d)
        Keys in sequence order.
    lam : float
        Ridge ``> 0``.
    out : float64 (m,)
        Scores in ``[0, 1)`` (overwritten).
    """
    m, d = k.shape
    P = np.zeros((d, d))
    for a in range(d):
        P[a, a] = 1.0 / lam
    u = np.empty(d)
    for j in range(m):
        # u = P_{j-1} k_j; tau = k^T P_{j-1} k / (1 + k^T P_{j-1} k) (Sherman–Morrison).
        g = 0.0
        for a in range(d):
            s = 0.0
            for b in range(d):
                s += P[a, b] * k[j, b]
            u[a] = s
            g += k[j, a] * s
        out[j] = g / (1.0 + g)
        inv = 1.0 / (1.0 + g)
        for a in range(d):
            for b in range(d):
                P[a, b] -= inv * u[a] * u[b]


@njit(cache=True, nogil=True)
def _prefix_topk(scores, n_keys, ends, idx, valid):
    """Per row ``i``: the ``n_keys`` best-scored keys among ``j < ends[i]`` (ends sorted).

    Parameters
    ----------
    scores : float64 (m,)
        Key scores.
    n_keys : int
        Keys kept per row.
    ends : int64 (n,)
        Non-decreasing visible-key counts.
    idx : int64 (n, n_keys)
        Kept keys of each row in increasing order (overwritten; 0 where not valid).
    valid : bool (n, n_keys)
        Which entries of ``idx`` are set (overwritten).

    Notes
    -----
    A new key replaces the worst kept one only if its score is strictly larger (ties
    keep the earlier key); the worst is the smallest score, the latest key among equal
    scores. Row ``i`` depends on ``scores[:ends[i]]`` only (causal).
    """
    n = ends.shape[0]
    cur = np.empty(n_keys, dtype=np.int64)
    srt = np.empty(n_keys, dtype=np.int64)
    cnt = 0
    j = 0
    for i in range(n):
        changed = False
        while j < ends[i]:
            s = scores[j]
            if cnt < n_keys:
                cur[cnt] = j
                cnt += 1
                changed = True
            else:
                w = 0
                for t in range(1, cnt):
                    st, sw = scores[cur[t]], scores[cur[w]]
                    if st < sw or (st == sw and cur[t] > cur[w]):
                        w = t
                if s > scores[cur[w]]:
                    cur[w] = j
                    changed = True
            j += 1
        if changed:
            srt[:cnt] = np.sort(cur[:cnt])
        for t in range(n_keys):
            if t < cnt:
                idx[i, t] = srt[t]
                valid[i, t] = True
            else:
                idx[i, t] = 0
                valid[i, t] = False


@njit(cache=True, nogil=True)
def _block_unions(idx, valid, block):
    """Union of the kept keys of each block of ``block`` rows, and each row's mask on it.

    Parameters
    ----------
    idx : int64 (n, s)
        Kept keys of each row.
    valid : bool (n, s)
        Which entries of ``idx`` are kept.
    block : int
        Rows per block ``B``.

    Returns
    -------
    U : int64 (nb, L)
        Sorted union of each block (``L`` the largest union; padded with 0).
    keep : bool (nb, B, L)
        ``keep[b, r, u]``: row ``b B + r`` keeps key ``U[b, u]`` (False on padding).
    """
    n, s = idx.shape
    nb = (n + block - 1) // block
    m = 1
    for i in range(n):
        for t in range(s):
            if valid[i, t] and idx[i, t] >= m:
                m = idx[i, t] + 1
    # stamp[j] = 1 + the last block that listed key j; pos[j] = its column there.
    stamp = np.zeros(m, dtype=np.int64)
    pos = np.zeros(m, dtype=np.int64)
    tmp = np.empty(block * s, dtype=np.int64)
    start = np.zeros(nb + 1, dtype=np.int64)
    allkeys = np.empty(nb * min(block * s, m), dtype=np.int64)
    for b in range(nb):
        c = 0
        for i in range(b * block, min(n, (b + 1) * block)):
            for t in range(s):
                j = idx[i, t]
                if valid[i, t] and stamp[j] != b + 1:
                    stamp[j] = b + 1
                    tmp[c] = j
                    c += 1
        u = np.sort(tmp[:c])
        allkeys[start[b] : start[b] + c] = u
        start[b + 1] = start[b] + c
    L = 1
    for b in range(nb):
        L = max(L, start[b + 1] - start[b])
    U = np.zeros((nb, L), dtype=np.int64)
    keep = np.zeros((nb, block, L), dtype=np.bool_)
    for b in range(nb):
        c = start[b + 1] - start[b]
        for u in range(c):
            j = allkeys[start[b] + u]
            U[b, u] = j
            pos[j] = u
        for i in range(b * block, min(n, (b + 1) * block)):
            for t in range(s):
                if valid[i, t]:
                    keep[b, i - b * block, pos[idx[i, t]]] = True
    return U, keep


@njit(cache=True, nogil=True)
def _bucket_weights(sc, lp, keep, rows, J, cq, ck, ref, rb):
    """Scatterbrain's sparse-part weights on blocks of per-bucket key windows, in place.

    For block ``b``, row ``i`` (query ``rows[b, i]``, ``-1`` for padding) and key column
    ``j`` (key ``J[b, j]``) with ``keep[b, i, j]``: the exact score ``s = sc[b, i, j]``
    and the low-rank estimate ``l = log(lp[b, i, j]) + cq[row] + ck[J[b, j]]`` (the dtype
    of ``sc``); the row shift ``rb = max(ref[row], max_j s, max_j l)`` (0 if not finite,
    rounded to the dtype of ``sc``); then ``sc[b, i, j] = exp(s - rb) - exp(l - rb)`` on
    kept entries and 0 elsewhere (padding rows: 0). ``rb[b, i]`` receives the shift.

    Parameters
    ----------
    sc : float32 or float64 (nb, cs, L)
        Exact scores; overwritten by the weights.
    lp : (nb, cs, L)
        Low-rank products ``phq . fk`` (any float dtype); overwritten.
    keep : bool (nb, cs, L)
        Visible pairs of the same bucket.
    rows, J : int64 (nb, cs), (nb, L)
        Query rows and key columns of each block.
    cq, ck : (n,), (m,) in the dtype of ``sc``
        Log shifts of the query and key features.
    ref : float64 (n,)
        Shift of the low-rank part of each row.
    rb : float64 (nb, cs)
        Output shifts (0 on padding rows).
    """
    nb, cs, L = sc.shape
    one = np.empty(1, dtype=sc.dtype)
    lb = np.empty(L, dtype=sc.dtype)
    for b in range(nb):
        for i in range(cs):
            row = rows[b, i]
            if row < 0:
                for j in range(L):
                    sc[b, i, j] = 0.0
                rb[b, i] = 0.0
                continue
            mx = ref[row]
            for j in range(L):
                if keep[b, i, j]:
                    lb[j] = np.log(lp[b, i, j])
                    lb[j] += cq[row]
                    lb[j] += ck[J[b, j]]
                    mx = max(mx, sc[b, i, j], lb[j])
            if not np.isfinite(mx):
                mx = 0.0
            one[0] = mx
            rbs = one[0]
            for j in range(L):
                if keep[b, i, j]:
                    sc[b, i, j] = np.exp(sc[b, i, j] - rbs) - np.exp(lb[j] - rbs)
                else:
                    sc[b, i, j] = 0.0
            rb[b, i] = rbs


@njit(cache=True, nogil=True)
def _scatter_rows(rows, blk, rb, corr, ref):
    """``corr[rows[b, i]] = blk[b, i]`` and ``ref[rows[b, i]] = rb[b, i]`` (rows ``>= 0``)."""
    nb, cs = rows.shape
    w = blk.shape[2]
    for b in range(nb):
        for i in range(cs):
            row = rows[b, i]
            if row >= 0:
                for c in range(w):
                    corr[row, c] = blk[b, i, c]
                ref[row] = rb[b, i]


@njit(cache=True, nogil=True)
def _cumsum_rows(x, out):
    """``out[j] = x[0] + ... + x[j]`` (float64, rows added in order; ``np.cumsum(x, 0)``)."""
    m, d = x.shape
    if m == 0:
        return
    for c in range(d):
        out[0, c] = x[0, c]
    for j in range(1, m):
        for c in range(d):
            out[j, c] = out[j - 1, c] + x[j, c]


@njit(cache=True, nogil=True)
def _prefix_states(Z, fac, rescale, S):
    """Causal linear-attention states ``S[c] = (S[c-1] + Z[c-1]) * fac[c]`` for ``c >= 1``.

    The factor is applied only where ``rescale[c]`` (otherwise ``S[c] = S[c-1] +
    Z[c-1]``); ``S[0]`` is given. Same operations, order and dtype as the NumPy loop
    ``np.add(S[c-1], Z[c-1], out=S[c]); S[c] *= fac[c]``.

    Parameters
    ----------
    Z : float32 or float64 (nc, M, w)
        Each chunk's own sum.
    fac : (nc,) in the dtype of ``Z``
        Rescaling factors.
    rescale : bool (nc,)
        Where to rescale.
    S : (nc, M, w) in the dtype of ``Z``
        States (``S[0]`` read, ``S[1:]`` overwritten).
    """
    nc, M, w = Z.shape
    for c in range(1, nc):
        f = fac[c]
        r = rescale[c]
        for a in range(M):
            for b in range(w):
                x = S[c - 1, a, b] + Z[c - 1, a, b]
                if r:
                    x = x * f
                S[c, a, b] = x


@njit(cache=True, nogil=True)
def _gather_rows(src, idx, out):
    """``out[t] = src[idx[t]]`` for 2-D ``src`` and ``out`` (``x[idx]`` without the GIL)."""
    w = src.shape[1]
    for t in range(idx.shape[0]):
        j = idx[t]
        for c in range(w):
            out[t, c] = src[j, c]
