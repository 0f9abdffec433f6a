"""Numba kernels behind :mod:`attention.kernel` (§5: kernelised / linear attention).

(Causal linear attention itself runs as chunked BLAS GEMMs in
:func:`attention.kernel._causal_linear`, or on register tiles: ``_chunk_products``,
``_chunk_sums``, and the scan ``_scan_key_states`` / ``_scan_segment`` that keeps only
the states at the segment starts.)

``_prefix_topk`` keeps, for every causal prefix, the best-scored keys, and
``_block_unions`` gathers the kept keys of blocks of rows (LevAttention).

``_bucket_weights`` and ``_scatter_rows`` are Scatterbrain's sparse part: exact scores
minus the low-rank estimate on blocks of causal per-bucket key windows (the products are
BLAS GEMMs; the kernels fuse the masking, logarithms, row shifts and exponentials).
``_bucket_tiles`` does the whole sparse part block by block on the register tiles of
:func:`attention._kernels.exact._gemm_tiles` (AVX-512 CPUs; the BLAS kernels are the
portable path), with the windows' key features at one shift per window
(``_window_features``).

``_online_leverage`` computes ridge online leverage scores
``tau_j = k_j^T (lam I + sum_{l <= j} k_l k_l^T)^{-1} k_j`` by Sherman–Morrison updates
of the inverse, ``O(m d^2)``; score ``j`` depends on keys ``0..j`` only (causal).

``_exp_rows`` and ``_chunk_features`` build the random features of the linear
methods in one pass each (row or chunk maximum, shift and exponential), with the
vectorisable exponential of :mod:`rnla._kernels.fastexp` (plain NumPy: a maximum pass, a
subtraction pass and ``np.exp``, each over the whole ``n x M`` array).

All kernels are serial and deterministic (no Numba threads; the GEMMs go to BLAS, whose
result does not depend on the partition of the output), take float64, int64 and bool
arrays and scalars only (``_bucket_weights``, ``_prefix_states``, ``_exp_rows`` and
``_chunk_features`` also float32) and do not validate.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from attention._kernels.exact import _gemm_tiles, _max_nonan
from rnla._kernels.fastexp import _add_reassoc, _exp_f32, _exp_f64
from rnla._kernels.intrinsics import _wide_vectors


def _expo(x):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_expo, inline="always")
def _expo_overload(x):
    """``exp(x)`` for ``x <= 0`` in the dtype of ``x`` (vectorisable, inlined)."""
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: _exp_f64(x)


@njit(cache=True, nogil=True)
def _max_row(row):
    """Maximum of a non-empty row (``-inf`` entries allowed, no NaN; vectorised)."""
    _wide_vectors()
    best = row[0]
    for j in range(row.shape[0]):
        best = _max_nonan(best, row[j])
    return best


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_rows(u, off, cq):
    """Row-shifted exponentials in place: ``u[i] = exp(u[i] - max_j u[i, j])``.

    ``cq[i] = max_j u[i, j] + off[i]`` (float64), so that ``exp(u[i] + off[i]) =
    exp(cq[i]) * (new u[i])``. ``u`` float32 or float64 (n, M) with ``M >= 1``, finite
    or ``-inf`` (a row of ``-inf`` gets the shift 0 and zero features).
    """
    _wide_vectors()
    n, M = u.shape
    zero = np.zeros(1, dtype=u.dtype)
    for i in range(n):
        mx = _max_row(u[i])
        sh = mx if np.isfinite(mx) else zero[0]
        for j in range(M):
            u[i, j] = _expo(u[i, j] - sh)
        cq[i] = np.float64(sh) + off[i]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _key_features(lk, off, mult, use_mult, j, sc, one, buf):
    """``buf[a] = exp(min(lk[j, a] - (sc - off[j]), 0))`` (times ``mult[j, a]``), one key.

    The shift ``sc - off[j]`` is rounded to the dtype of ``lk`` once (through ``one[0]``;
    ``one[1]`` is 0 in that dtype); shared by :func:`_chunk_features` and
    :func:`_scan_chunk` so both give the same features bit for bit.
    """
    one[0] = sc - off[j]
    sh = one[0]
    z = one[1]
    for a in range(lk.shape[1]):
        buf[a] = _expo(min(lk[j, a] - sh, z))
    if use_mult:
        for a in range(lk.shape[1]):
            buf[a] *= mult[j, a]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _chunk_features(lk, off, mult, use_mult, p, C, s_pre, Ft, s):
    """Key features of the causal chunks, transposed: ``Ft[c, :, t]`` for key ``p + c C + t``.

    With ``l_j = lk[j] + off[j]`` (the log-features of key ``j``), chunk ``c`` gets the
    shift ``s[c] = max(s_pre, max of l over the keys p .. p + (c + 1) C - 1)`` (a running
    maximum, float64) and ``Ft[c, a, t] = exp(lk[j, a] - (s[c] - off[j]))`` (times
    ``mult[j, a]`` when ``use_mult``), 0 past the last key. ``Ft`` is (nc, M, C) in the
    dtype of ``lk``; ``s`` (nc,) float64. The shift ``s[c] - off[j]`` is rounded to the
    dtype of ``lk`` once per key. A shift that is not finite (every key ``-inf``) is
    taken as 0 for the exponentials.
    """
    _wide_vectors()
    m, M = lk.shape
    nc = Ft.shape[0]
    buf = np.empty(M, dtype=lk.dtype)
    one = np.zeros(2, dtype=lk.dtype)  # one[0]: a shift in the dtype of lk; one[1] = 0
    run = s_pre
    for c in range(nc):
        j0 = p + c * C
        j1 = min(m, j0 + C)
        for j in range(j0, j1):
            v = np.float64(_max_row(lk[j])) + off[j]
            if v > run:
                run = v
        s[c] = run
        sc = run if np.isfinite(run) else 0.0
        for t in range(C):
            j = j0 + t
            if j < j1:
                _key_features(lk, off, mult, use_mult, j, sc, one, buf)
                for a in range(M):
                    Ft[c, a, t] = buf[a]
            else:
                for a in range(M):
                    Ft[c, a, t] = 0.0


@njit(cache=True, nogil=True, fastmath={"contract"})
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

    Notes
    -----
    Sherman–Morrison updates of the symmetric inverse ``P``, ``4 d^2`` flops a key.
    ``u = P k_j`` is accumulated column by column (``u += P[:, b] k_j[b]``, ``P``
    symmetric) and the update ``P -= u u^T / (1 + k_j . u)`` runs along rows: both
    inner loops are unit-stride vector operations without a reduction.
    """
    _wide_vectors()
    m, d = k.shape
    P = np.zeros((d, d))
    for a in range(d):
        P[a, a] = 1.0 / lam
    u = np.empty(d)
    for j in range(m):
        # u = P_{j-1} k_j; tau = k^T P_{j-1} k / (1 + k^T P_{j-1} k) (Sherman–Morrison).
        for a in range(d):
            u[a] = 0.0
        for b in range(d):
            kb = k[j, b]
            for a in range(d):
                u[a] += P[b, a] * kb
        g = 0.0
        for a in range(d):
            g += k[j, a] * u[a]
        out[j] = g / (1.0 + g)
        inv = 1.0 / (1.0 + g)
        for a in range(d):
            ua = inv * u[a]
            for b in range(d):
                P[a, b] -= ua * u[b]


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


@njit(cache=True, nogil=True, fastmath={"contract"})
def _bucket_weights(sc, lp, keep, rows, J, cq, ck, ref, rb):
    """Scatterbrain's sparse-part weights on blocks of per-bucket key windows, in place.

    For block ``b``, row ``i`` (query ``rows[b, i]``, ``-1`` for padding) and key column
    ``j`` (key ``J[b, j]``) with ``keep[b, i, j]``: the exact score ``s = sc[b, i, j]``
    and the low-rank estimate ``l = log(lp[b, i, j]) + cq[row] + ck[J[b, j]]`` (the dtype
    of ``sc``); the row shift ``rb = max(ref[row], max_j s, max_j l)`` (0 if not finite,
    rounded to the dtype of ``sc``); then ``sc[b, i, j] = exp(s - rb) - exp(l - rb)`` on
    kept entries and 0 elsewhere (padding rows: 0). ``rb[b, i]`` receives the shift.
    The exponentials (of arguments ``<= 0``) are the vectorisable ones of
    :mod:`rnla._kernels.fastexp`.

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
    lb = np.empty(2 * L, dtype=sc.dtype)
    for b in range(nb):
        for i in range(cs):
            row = rows[b, i]
            if row < 0:
                for j in range(L):
                    sc[b, i, j] = 0.0
                rb[b, i] = 0.0
            else:
                rb[b, i] = _bucket_row(
                    sc[b, i], lp[b, i], keep[b, i], J[b], cq[row], ck, ref[row], lb, one
                )


@njit(cache=True, nogil=True, fastmath={"contract"})
def _bucket_row(s, lp, keep, J, cqr, ck, refr, lb, one):
    """One row of :func:`_bucket_weights`; returns its shift ``rb``.

    ``lb`` (2 L) is scratch: the shifted scores and log low-rank estimates side by side,
    exponentiated in one vectorised loop.
    """
    L = s.shape[0]
    mx = refr
    for j in range(L):
        if keep[j]:
            x = np.log(lp[j])
            x += cqr
            x += ck[J[j]]
            lb[L + j] = x
            mx = max(mx, s[j], x)
        else:
            lb[L + j] = -np.inf
    if not np.isfinite(mx):
        mx = 0.0
    one[0] = mx
    rbs = one[0]
    z = rbs - rbs  # 0 in the dtype of s
    for j in range(L):
        lb[j] = s[j]
    for j in range(2 * L):
        lb[j] = _expo(min(lb[j] - rbs, z))
    for j in range(L):  # dropped entries -> 0
        s[j] = lb[j] - lb[L + j] if keep[j] else z
    return rbs


@njit(cache=True, nogil=True)
def _window_features(fk, ck, Jw, out, cmax):
    """Key features of the bucket windows, transposed and brought to one shift per window.

    ``cmax[w] = max_t ck[Jw[w, t]]`` and ``out[w, :, t] = fk[Jw[w, t]] * exp(ck[Jw[w, t]]
    - cmax[w])`` (the factor rounded to the dtype of ``fk``; 0 below the underflow cut),
    so that ``exp(ck_j) fk_j = exp(cmax[w]) out[w, :, t]``: the low-rank estimates of a
    window need one logarithm and one exponential per query row, not one per entry.
    ``fk`` (m, M) float32 or float64, ``ck`` (m,) float64 (finite), ``Jw`` int64
    (nwin, L), ``out`` (nwin, M, L) in the dtype of ``fk``, ``cmax`` float64 (nwin,).
    """
    _wide_vectors()
    nw, L = Jw.shape
    M = fk.shape[1]
    buf = np.empty((L, M), dtype=fk.dtype)
    e = np.empty(L, dtype=fk.dtype)
    for w in range(nw):
        jw = Jw[w]
        mx = ck[jw[0]]
        for t in range(L):
            mx = max(mx, ck[jw[t]])
        cmax[w] = mx
        for t in range(L):
            e[t] = _expo(ck[jw[t]] - mx)
        for t in range(L):
            src = fk[jw[t]]
            dst = buf[t]
            et = e[t]
            for a in range(M):
                dst[a] = src[a] * et
        ow = out[w]
        for a in range(M):
            orow = ow[a]
            for t in range(L):
                orow[t] = buf[t, a]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _bucket_row_tiles(s, lp, keep, cqw, refr, w, one):
    """One row of :func:`_bucket_tiles`: weights in place of ``s``; returns ``(rb, den)``.

    ``cqw = cq[row] + cmax[w]`` (float64): the low-rank estimate of entry ``j`` is
    ``exp(cqw) lp[j]``. ``w`` (L,) float64 scratch; ``one`` (1,) in the dtype of ``s``.
    """
    _wide_vectors()
    L = s.shape[0]
    neg = -np.inf
    smax = neg
    lmax = 0.0
    for j in range(L):
        x = np.float64(s[j]) if keep[j] else neg
        smax = _max_nonan(smax, x)
        y = np.float64(lp[j]) if keep[j] else 0.0
        lmax = _max_nonan(lmax, y)
    mx = max(refr, smax)
    if lmax > 0.0:
        mx = max(mx, np.log(lmax) + cqw)
    if not np.isfinite(mx):
        mx = 0.0
    one[0] = mx
    rbs = one[0]  # the shift in the dtype of s (as the scores)
    z = rbs - rbs
    rb = np.float64(rbs)
    # exp(cqw - rb) lp[j] <= 1 on kept entries (l_j <= rb); others are dropped below.
    E = np.exp(cqw - rb) if lmax > 0.0 else 0.0
    for j in range(L):
        w[j] = np.float64(lp[j]) * E
    den = 0.0
    for j in range(L):
        p = _expo(min(s[j] - rbs, z))
        x = np.float64(p) - w[j] if keep[j] else 0.0
        s[j] = x
        den = _add_reassoc(den, np.float64(s[j]))  # the rounded weights, as W V
    return rb, den


@njit(cache=True, nogil=True)
def _bucket_tiles(qs, phq, kwt, fwe, vw, rows, wid, keep, cq, cmax, ref, corr):
    """Scatterbrain's sparse part on register tiles, block by block, into ``corr``/``ref``.

    For block ``b`` (query rows ``rows[b]``, ``-1`` padding at the end; key window
    ``w = wid[b]``): scores ``S = qs[rows] kwt[w]`` and low-rank products ``P =
    phq[rows] fwe[w]`` (:func:`attention._kernels.exact._gemm_tiles`), the weights of
    :func:`_bucket_weights` from them (the low-rank estimate ``exp(cq[row] + cmax[w])
    P[i, j]``, see :func:`_window_features`; one logarithm and one exponential per row),
    then ``corr[row, :dv] = W vw[w][:, :dv]`` (tiles), ``corr[row, dv] = sum_j W[i, j]``
    and ``ref[row] = rb`` (the row shift). Everything of a block stays in cache.

    Parameters
    ----------
    qs : (n, d) float32 or float64
        Scaled queries (the score dtype).
    phq : (n, M)
        Query features (their own dtype).
    kwt : (nwin, d, L), dtype of ``qs``
        Keys of each window, transposed.
    fwe : (nwin, M, L), dtype of ``phq``
        Key features of each window (:func:`_window_features`).
    vw : (nwin, L, dv + 1), dtype of ``qs``
        Values (and ones) of each window.
    rows, wid, keep : int64 (nbk, cs), int64 (nbk,), bool (nbk, cs, L)
        Blocks.
    cq, cmax : float64 (n,), (nwin,)
        Log shifts of the query features and of the windows' key features.
    ref : float64 (n,)
        Shift of each row's low-rank part; overwritten with ``rb`` on block rows.
    corr : float64 (n, dv + 1)
        Output rows of the blocks (overwritten there).

    Notes
    -----
    ``L`` and ``dv`` must be multiples of the vector length of the dtypes (16 float32,
    8 float64).
    """
    nbk, cs = rows.shape
    d, L = kwt.shape[1], kwt.shape[2]
    M = fwe.shape[1]
    dv = vw.shape[2] - 1
    qb = np.empty((cs, d), dtype=qs.dtype)
    pb = np.empty((cs, M), dtype=phq.dtype)
    sc = np.empty((cs, L), dtype=qs.dtype)
    lp = np.empty((cs, L), dtype=phq.dtype)
    ob = np.empty((cs, dv), dtype=qs.dtype)
    wbuf = np.empty(L)
    one = np.empty(1, dtype=qs.dtype)
    kf, ff, vf = kwt.reshape(-1), fwe.reshape(-1), vw.reshape(-1)
    qf, pf, sf, lf, of = (
        qb.reshape(-1),
        pb.reshape(-1),
        sc.reshape(-1),
        lp.reshape(-1),
        ob.reshape(-1),
    )
    for b in range(nbk):
        w = wid[b]
        nr = 0
        while nr < cs and rows[b, nr] >= 0:
            # Element loops: 2x faster than row-slice copies at these widths.
            row = rows[b, nr]
            for c in range(d):
                qb[nr, c] = qs[row, c]
            for c in range(M):
                pb[nr, c] = phq[row, c]
            nr += 1
        if nr == 0:
            continue
        _gemm_tiles(qf, kf, sf, 0, w * d * L, 0, nr, d, L, d, L, L, False)
        _gemm_tiles(pf, ff, lf, 0, w * M * L, 0, nr, M, L, M, L, L, False)
        cw = cmax[w]
        for i in range(nr):
            row = rows[b, i]
            rb, den = _bucket_row_tiles(
                sc[i], lp[i], keep[b, i], cq[row] + cw, ref[row], wbuf, one
            )
            ref[row] = rb
            corr[row, dv] = den
        _gemm_tiles(sf, vf, of, 0, w * L * (dv + 1), 0, nr, L, dv, L, dv + 1, dv, False)
        for i in range(nr):
            row = rows[b, i]
            for c in range(dv):
                corr[row, c] = ob[i, c]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _dot(x, y, n):
    """``sum_{a < n} x[a] y[a]`` of two contiguous rows, reassociated (vectorised).

    The normaliser column of the chunk products: a chain of fused multiply-adds in
    order (one per 4-cycle latency) took twice as long as the chunk's register-tile
    GEMMs; the reassociated sum runs in vector lanes (rounding of the same order).
    """
    acc = x[0] * y[0] - x[0] * y[0]  # zero in the dtype of the operands
    for a in range(n):
        acc += x[a] * y[a]
    return acc


@njit(cache=True, nogil=True)
def _chunk_products(P, S, Ft, Vc, out):
    """Causal linear attention's chunk products on register tiles, chunk by chunk.

    ``out[c] = P[c] S[c] + ((P[c] Ft[c]) * L) Vc[c]`` with ``L`` lower triangular
    (diagonal included): the earlier keys' state and the in-chunk keys, as the batched
    GEMMs of :func:`attention.kernel._apply_state` (same formula, one call per chunk
    without BLAS's per-call packing of these 32-row operands). ``P (nc, C, M)``, ``S
    (nc, M, w)``, ``Ft (nc, M, C)``, ``Vc (nc, C, w)``, ``out (nc, C, w)``, C-contiguous,
    one float dtype; ``C`` and ``w - 1`` multiples of the vector length (16 float32, 8
    float64). The last column (the normaliser) is a dot product per row
    (:func:`_dot`, the state's and the values' last columns copied contiguous).
    """
    _wide_vectors()
    nc, C, M = P.shape
    w = S.shape[2]
    dv = w - 1
    A = np.empty((C, C), dtype=P.dtype)
    T = np.empty((C, dv), dtype=P.dtype)
    scol = np.empty(M, dtype=P.dtype)
    vcol = np.empty(C, dtype=P.dtype)
    Pf, Sf, Ff, Vf, Of = (
        P.reshape(-1),
        S.reshape(-1),
        Ft.reshape(-1),
        Vc.reshape(-1),
        out.reshape(-1),
    )
    Af, Tf = A.reshape(-1), T.reshape(-1)
    for c in range(nc):
        _gemm_tiles(Pf, Sf, Of, c * C * M, c * M * w, c * C * w, C, M, dv, M, w, w, False)
        _gemm_tiles(Pf, Ff, Af, c * C * M, c * M * C, 0, C, M, C, M, C, C, False)
        for i in range(C):
            for j in range(i + 1, C):
                A[i, j] = 0.0
        _gemm_tiles(Af, Vf, Tf, 0, c * C * w, 0, C, C, dv, C, w, dv, False)
        Pc, Sc, Vcc, oc = P[c], S[c], Vc[c], out[c]
        for a in range(M):
            scol[a] = Sc[a, dv]
        for j in range(C):
            vcol[j] = Vcc[j, dv]
        for i in range(C):
            acc = _dot(Pc[i], scol, M)
            inc = _dot(A[i], vcol, i + 1)
            oi = oc[i]
            for e in range(dv):
                oi[e] += T[i, e]
            oi[dv] = acc + inc


@njit(cache=True, nogil=True)
def _chunk_sums(Ft, Vc, S):
    """Own sums of the causal chunks on register tiles: ``S[c + 1] = Ft[c] Vc[c]``.

    For ``c < nc - 1`` (``S[0]`` is not written): the batched GEMM
    ``F_c^T V_c`` of :func:`attention.kernel._key_state`, one call per chunk. ``Ft (nc,
    M, C)``, ``Vc (nc, C, w)``, ``S (nc, M, w)``, C-contiguous, one float dtype; ``w - 1``
    a multiple of the vector length (the last column is a dot product per row,
    :func:`_dot`).
    """
    _wide_vectors()
    nc, M, C = Ft.shape
    w = Vc.shape[2]
    dv = w - 1
    Ff, Vf, Sf = Ft.reshape(-1), Vc.reshape(-1), S.reshape(-1)
    vcol = np.empty(C, dtype=Ft.dtype)
    for c in range(nc - 1):
        _gemm_tiles(Ff, Vf, Sf, c * M * C, c * C * w, (c + 1) * M * w, M, C, dv, C, w, w, False)
        Fc, Vcc, Sc = Ft[c], Vc[c], S[c + 1]
        for j in range(C):
            vcol[j] = Vcc[j, dv]
        for a in range(M):
            Sc[a, dv] = _dot(Fc[a], vcol, C)


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
def _prefix_states(S, fac, rescale):
    """Causal linear-attention states in place: ``S[c] = (S[c-1] + S[c]) * fac[c]``, ``c >= 1``.

    On entry ``S[0]`` is the first state and ``S[c]`` (``c >= 1``) the own sum ``Z[c-1]``
    of chunk ``c - 1``; on exit ``S[c] = (S[c-1] + Z[c-1]) * fac[c]`` (the factor only
    where ``rescale[c]``, otherwise ``S[c] = S[c-1] + Z[c-1]``). Same operations, order
    and dtype as the NumPy loop ``np.add(S[c-1], Z[c-1], out=S[c]); S[c] *= fac[c]``.

    Parameters
    ----------
    S : float32 or float64 (nc, M, w), C-contiguous
        States (``S[0]`` read; ``S[1:]`` read as the chunk sums and overwritten).
    fac : (nc,) in the dtype of ``S``
        Rescaling factors.
    rescale : bool (nc,)
        Where to rescale.
    """
    _wide_vectors()
    nc = S.shape[0]
    L = S.shape[1] * S.shape[2]
    Sf = S.reshape(nc, L)
    for c in range(1, nc):
        f = fac[c]
        if rescale[c]:
            for a in range(L):
                Sf[c, a] = (Sf[c - 1, a] + Sf[c, a]) * f
        else:
            for a in range(L):
                Sf[c, a] = Sf[c - 1, a] + Sf[c, a]


@njit(cache=True, nogil=True)
def _gather_rows(src, idx, out):
    """``out[t] = src[idx[t]]`` for 2-D ``src`` and ``out`` (``x[idx]`` without the GIL)."""
    w = src.shape[1]
    for t in range(idx.shape[0]):
        j = idx[t]
        for c in range(w):
            out[t, c] = src[j, c]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _finish_rows(num, den, q, r, kbar, c, y, stats):
    """Output rows and the row sums of the norm-based bounds in one pass.

    ``y[i] = num[i] / den[i]`` (the division in the dtype of ``num``, 0 where
    ``den[i] == 0``; stored in the dtype of ``y``) and, in float64 from the divided
    values, ``stats[i] = (||y_i||^2, ||y_i - c||^2, ||r q_i||^2, (r q_i) . kbar_i)``
    (``kbar`` of shape (0, 0): the last column is 0).

    Parameters
    ----------
    num : float32 or float64 (n, >= dv)
        Numerators (the first ``dv`` columns are read).
    den : (n,) in the dtype of ``num``
        Normalisers.
    q : float32 or float64 (n, d)
        Queries (unscaled).
    r : float
        Query factor (``sqrt(scale)``).
    kbar : float64 (n, d) or (0, 0)
        Mean of the keys each row sees.
    c : float64 (dv,)
        Value centre.
    y : (n, dv)
        Output rows (overwritten).
    stats : float64 (n, 4)
        Row sums (overwritten).
    """
    n, dv = y.shape
    d = q.shape[1]
    use_k = kbar.shape[0] == n and kbar.shape[1] == d
    for i in range(n):
        z = den[i]
        a = 0.0
        b = 0.0
        if z == 0:
            for j in range(dv):
                y[i, j] = 0.0
                b += c[j] * c[j]
        else:
            for j in range(dv):
                t = num[i, j] / z
                y[i, j] = t
                f = np.float64(t)
                a += f * f
                e = f - c[j]
                b += e * e
        s2 = 0.0
        sk = 0.0
        for j in range(d):
            f = np.float64(q[i, j]) * r
            s2 += f * f
            if use_k:
                sk += f * kbar[i, j]
        stats[i, 0] = a
        stats[i, 1] = b
        stats[i, 2] = s2
        stats[i, 3] = sk


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _merge_rows(num, logscale, corr, ref, q, r, kbar, c, y, den_out, stats):
    """Scatterbrain's rows: low-rank sums rescaled to the sparse part's shift, plus it.

    With ``f_i = exp(logscale[i] - ref[i])`` (0 where ``logscale[i]`` is not finite):
    ``den_out[i] = f_i num[i, dv] + corr[i, dv]`` (0 unless positive) and ``y[i, j] =
    (f_i num[i, j] + corr[i, j]) / den_out[i]`` (float64, 0 where ``den_out[i] == 0``;
    stored in the dtype of ``y``); ``stats`` as in :func:`_finish_rows` (from the
    float64 rows).

    Parameters
    ----------
    num : float32 or float64 (n, dv + 1)
        Low-rank numerators and normaliser (last column), in the shift ``logscale``.
    logscale : float64 (n,)
        Shift of the low-rank sums.
    corr : float64 (n, dv + 1)
        Sparse correction in the shift ``ref``.
    ref : float64 (n,)
        Shift of each row.
    q, r, kbar, c, stats
        As in :func:`_finish_rows`.
    y : (n, dv)
        Output rows (overwritten).
    den_out : float64 (n,)
        Normalisers (overwritten).
    """
    n, dv = y.shape
    d = q.shape[1]
    use_k = kbar.shape[0] == n and kbar.shape[1] == d
    for i in range(n):
        ls = logscale[i]
        f = np.exp(ls - ref[i]) if np.isfinite(ls) else 0.0
        z = f * np.float64(num[i, dv]) + corr[i, dv]
        if not z > 0:
            z = 0.0
        den_out[i] = z
        a = 0.0
        b = 0.0
        for j in range(dv):
            t = f * np.float64(num[i, j]) + corr[i, j]
            t = t / z if z != 0 else 0.0
            y[i, j] = t
            a += t * t
            e = t - c[j]
            b += e * e
        s2 = 0.0
        sk = 0.0
        for j in range(d):
            x = np.float64(q[i, j]) * r
            s2 += x * x
            if use_k:
                sk += x * kbar[i, j]
        stats[i, 0] = a
        stats[i, 1] = b
        stats[i, 2] = s2
        stats[i, 3] = sk


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _merge_rows_keys(num, logscale, corr, ref, q, r, k, c, y, den_out, stats):
    """:func:`_merge_rows` with the causal key means as running sums (``n == m``).

    The mean of the keys ``0 .. i`` is ``(r k_0 + ... + r k_i) / (i + 1)`` with the sums
    and products of :func:`_key_means` (``k`` (m, d) the unscaled keys), so no ``n x d``
    array of means is read; the rest as :func:`_merge_rows`.
    """
    n, dv = y.shape
    d = q.shape[1]
    acc = np.zeros(d)
    for i in range(n):
        ls = logscale[i]
        f = np.exp(ls - ref[i]) if np.isfinite(ls) else 0.0
        z = f * np.float64(num[i, dv]) + corr[i, dv]
        if not z > 0:
            z = 0.0
        den_out[i] = z
        a = 0.0
        b = 0.0
        for j in range(dv):
            t = f * np.float64(num[i, j]) + corr[i, j]
            t = t / z if z != 0 else 0.0
            y[i, j] = t
            a += t * t
            e = t - c[j]
            b += e * e
        inv = 1.0 / (i + 1)
        s2 = 0.0
        sk = 0.0
        for j in range(d):
            acc[j] = acc[j] + np.float64(k[i, j]) * r
            x = np.float64(q[i, j]) * r
            s2 += x * x
            sk += x * (acc[j] * inv)
        stats[i, 0] = a
        stats[i, 1] = b
        stats[i, 2] = s2
        stats[i, 3] = sk


@njit(cache=True, nogil=True)
def _gather_rows_t(src, idx, out):
    """``out[w, :, t] = src[idx[w, t]]``: gathered rows, transposed per window.

    ``src`` (m, K), ``idx`` int64 (W, L), ``out`` (W, K, L) (the transpose of
    ``src[idx]`` in its last two axes, written directly).
    """
    nw, L = idx.shape
    K = src.shape[1]
    buf = np.empty((L, K), dtype=src.dtype)
    for w in range(nw):
        # Row copies into a cache-resident tile, then its transpose with contiguous
        # writes (strided reads of the tile only).
        for t in range(L):
            j = idx[w, t]
            for a in range(K):
                buf[t, a] = src[j, a]
        for a in range(K):
            for t in range(L):
                out[w, a, t] = buf[t, a]


@njit(cache=True, nogil=True)
def _key_means(k, r, kbar, nk):
    """Causal key means and squared norms of ``r k`` (float64, rows added in order).

    ``kbar[j] = (r k_0 + ... + r k_j) / (j + 1)`` (the running sum in the order of
    ``np.cumsum``) and ``nk[j] = ||r k_j||^2``; ``k`` float32 or float64 (m, d).
    """
    m, d = k.shape
    acc = np.zeros(d)
    for j in range(m):
        s = 0.0
        inv = 1.0 / (j + 1)
        for a in range(d):
            x = np.float64(k[j, a]) * r
            acc[a] += x
            s += x * x
            kbar[j, a] = acc[a] * inv
        nk[j] = s


@njit(cache=True, nogil=True)
def _key_sums(k, r, R, nk, ksum):
    """Squared norms of ``r k`` and the running sums of :func:`_key_means` every ``R`` rows.

    ``nk[j] = ||r k_j||^2`` and ``ksum[t] = r k_0 + ... + r k_{tR - 1}`` (float64, rows
    added in order, the sums of :func:`_key_means` before row ``t R``; ``ksum`` (ceil(m
    / R), d)): :func:`_finish_rows_keys` continues them row by row, so the ``m x d``
    array of means is never stored.
    """
    m, d = k.shape
    acc = np.zeros(d)
    for j in range(m):
        if j % R == 0:
            for a in range(d):
                ksum[j // R, a] = acc[a]
        s = 0.0
        for a in range(d):
            x = np.float64(k[j, a]) * r
            acc[a] += x
            s += x * x
        nk[j] = s


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _finish_rows_keys(num, den, q, r, k, i0, ksum0, c, y, stats):
    """:func:`_finish_rows` with the causal key means continued from a running sum.

    Rows ``i0 + i`` of a causal problem with ``n == m``: the mean of the keys ``0 ..
    i0 + i`` is ``(ksum0 + r k_{i0} + ... + r k_{i0 + i}) / (i0 + i + 1)`` (the sums and
    products of :func:`_key_means`, ``ksum0`` from :func:`_key_sums`), so no ``n x d``
    array of means is read. ``k`` (m, d) the unscaled keys; the rest as
    :func:`_finish_rows`.
    """
    n, dv = y.shape
    d = q.shape[1]
    acc = ksum0.copy()
    for i in range(n):
        z = den[i]
        a = 0.0
        b = 0.0
        if z == 0:
            for j in range(dv):
                y[i, j] = 0.0
                b += c[j] * c[j]
        else:
            for j in range(dv):
                t = num[i, j] / z
                y[i, j] = t
                f = np.float64(t)
                a += f * f
                e = f - c[j]
                b += e * e
        row = i0 + i
        inv = 1.0 / (row + 1)
        s2 = 0.0
        sk = 0.0
        for j in range(d):
            acc[j] = acc[j] + np.float64(k[row, j]) * r
            f = np.float64(q[i, j]) * r
            s2 += f * f
            sk += f * (acc[j] * inv)
        stats[i, 0] = a
        stats[i, 1] = b
        stats[i, 2] = s2
        stats[i, 3] = sk


@njit(cache=True, nogil=True)
def _value_ball(v, c):
    """Centroid of the value rows and the two largest squared norms (float64).

    ``c`` (dv,) is overwritten by the centroid; returns ``(max_j ||v_j - c||^2, max_j
    ||v_j||^2)``. ``v`` float32 or float64 (m, dv) with ``m >= 1``.
    """
    m, dv = v.shape
    for a in range(dv):
        c[a] = 0.0
    for j in range(m):
        for a in range(dv):
            c[a] += np.float64(v[j, a])
    for a in range(dv):
        c[a] /= m
    R2 = 0.0
    vm = 0.0
    for j in range(m):
        s = 0.0
        t = 0.0
        for a in range(dv):
            x = np.float64(v[j, a])
            e = x - c[a]
            s += e * e
            t += x * x
        R2 = max(R2, s)
        vm = max(vm, t)
    return R2, vm


@njit(cache=True, nogil=True, fastmath={"contract"})
def _scan_chunk(lk, off, mult, use_log, use_mult, V, j0, C, sh, Ft, Vb, vcol, buf):
    """Features and values of the causal chunk of keys ``j0 .. j0 + C - 1`` (one scan step).

    ``Ft[a, t]`` (M, C) gets the features of key ``j0 + t``: ``exp(lk[j, a] - (sh -
    off[j]))`` (times ``mult[j, a]`` when ``use_mult``) with ``use_log``, else
    ``lk[j, a]`` (plain features); ``Vb`` (C, w) the value rows, ``vcol`` (C,) their last
    column; zeros past the last key. The same arithmetic as :func:`_chunk_features` (the
    shift ``sh - off[j]`` rounded to the dtype of ``lk`` once per key; a shift that is
    not finite is taken as 0); ``buf`` (M,) holds a key's exponentials (a contiguous,
    vectorised pass) before their strided copy into ``Ft``.
    """
    m, M = lk.shape
    w = V.shape[1]
    one = np.zeros(2, dtype=lk.dtype)
    sc = sh if np.isfinite(sh) else 0.0
    for t in range(C):
        j = j0 + t
        if j < m:
            if use_log:
                _key_features(lk, off, mult, use_mult, j, sc, one, buf)
                for a in range(M):
                    Ft[a, t] = buf[a]
            else:
                for a in range(M):
                    Ft[a, t] = lk[j, a]
            for e in range(w):
                Vb[t, e] = V[j, e]
        else:
            for a in range(M):
                Ft[a, t] = 0.0
            for e in range(w):
                Vb[t, e] = 0.0
        vcol[t] = Vb[t, w - 1]


@njit(cache=True, nogil=True)
def _scan_sum(Ft, Vb, vcol, Z):
    """``Z = Ft Vb`` (M, w): one chunk's own sum on register tiles (last column: :func:`_dot`)."""
    M, C = Ft.shape
    w = Vb.shape[1]
    dv = w - 1
    _gemm_tiles(Ft.reshape(-1), Vb.reshape(-1), Z.reshape(-1), 0, 0, 0, M, C, dv, C, w, w, False)
    for a in range(M):
        Z[a, dv] = _dot(Ft[a], vcol, C)


@njit(cache=True, nogil=True)
def _scan_step(S, Z, s_prev, s_cur):
    """``S = (S + Z) * exp(s_prev - s_cur)`` in the dtype of ``S``.

    No factor unless the shift grew; the operations of :func:`_prefix_states`.
    """
    Sf, Zf = S.reshape(-1), Z.reshape(-1)
    if s_cur > s_prev:
        f = np.zeros(1, dtype=S.dtype)
        f[0] = np.exp(s_prev - s_cur)
        fa = f[0]
        for a in range(Sf.shape[0]):
            Sf[a] = (Sf[a] + Zf[a]) * fa
    else:
        for a in range(Sf.shape[0]):
            Sf[a] = Sf[a] + Zf[a]


@njit(cache=True, nogil=True)
def _scan_key_states(lk, off, mult, use_log, use_mult, V, C, seg, s, Sseg):
    """Causal linear attention's key side as one scan: chunk shifts and segment states.

    The keys (``n == m``, no prefix) in chunks of ``C``: chunk ``c`` gets the shift
    ``s[c]``, the running maximum of ``lk[j] + off[j]`` over the keys up to the chunk's
    end (``use_log``; 0 otherwise), and the state of every earlier key ``S_c =
    (S_{c-1} + F_{c-1}^T V_{c-1}) e^{s_{c-1} - s_c}``, ``S_0 = 0`` (the factor only
    where the shift grew), as :func:`attention.kernel._key_state` with
    :func:`_chunk_features`, :func:`_chunk_sums` and :func:`_prefix_states` (the same
    operations in the same order, so the same rounding). Only the states at the start
    of every segment of ``seg`` chunks are stored: ``Sseg[t] = S_{t seg}`` (``(nseg, M,
    w)``, ``nseg = ceil(nc / seg)``), about ``1/seg`` of the memory of all chunk states;
    :func:`_scan_segment` continues the scan from there. ``s`` (nc,) float64 is written.
    Tiles as in :func:`_chunk_sums` (``w - 1`` and ``C`` multiples of the vector length).
    """
    _wide_vectors()
    m, M = lk.shape
    w = V.shape[1]
    nc = s.shape[0]
    dt = lk.dtype
    S = np.zeros((M, w), dtype=dt)
    Z = np.zeros((M, w), dtype=dt)
    Ft = np.empty((M, C), dtype=dt)
    Vb = np.empty((C, w), dtype=dt)
    vcol = np.empty(C, dtype=dt)
    buf = np.empty(M, dtype=dt)
    run = -np.inf
    for c in range(nc):
        j0 = c * C
        j1 = min(m, j0 + C)
        if use_log:
            for j in range(j0, j1):
                v = np.float64(_max_row(lk[j])) + off[j]
                if v > run:
                    run = v
            s[c] = run
        else:
            s[c] = 0.0
        if c > 0:
            _scan_step(S, Z, s[c - 1], s[c])
        if c % seg == 0:
            Sseg[c // seg] = S
        if c < nc - 1:
            _scan_chunk(lk, off, mult, use_log, use_mult, V, j0, C, s[c], Ft, Vb, vcol, buf)
            _scan_sum(Ft, Vb, vcol, Z)


@njit(cache=True, nogil=True)
def _ball_rows(y, c, out):
    """``out[i] = (||y_i||^2, ||y_i - c||^2)`` in float64 (``y`` float32 or float64)."""
    n, dv = y.shape
    for i in range(n):
        a = 0.0
        b = 0.0
        for j in range(dv):
            f = np.float64(y[i, j])
            a += f * f
            e = f - c[j]
            b += e * e
        out[i, 0] = a
        out[i, 1] = b


@njit(cache=True, nogil=True)
def _angular_codes(x, r, R, out):
    """Angular-LSH buckets of the rows of ``r x``: ``out[i] = argmax([x_i R, -x_i R])``.

    The hash of :func:`rnla.cluster.angular_lsh` (one round, projections ``R`` (d, h),
    float64) without its float64 copy of ``x``, projection array and concatenation:
    each row's ``h`` projections in float64 (``x`` float32 or float64, times ``r > 0``),
    the first maximum of ``[u, -u]`` (ties as ``np.argmax``).
    """
    _wide_vectors()
    n, d = x.shape
    h = R.shape[1]
    B = 64  # rows per block: the projections of a block accumulate in vector lanes
    xt = np.empty((d, B))
    u = np.empty((h, B))
    for i0 in range(0, n, B):
        b = min(B, n - i0)
        for t in range(b):
            for a in range(d):
                xt[a, t] = np.float64(x[i0 + t, a]) * r
        u[:, :] = 0.0
        for a in range(d):
            for c in range(h):
                rc = R[a, c]
                for t in range(b):
                    u[c, t] += xt[a, t] * rc
        for t in range(b):
            best = u[0, t]
            arg = 0
            for c in range(1, h):
                if u[c, t] > best:
                    best = u[c, t]
                    arg = c
            for c in range(h):
                if -u[c, t] > best:
                    best = -u[c, t]
                    arg = h + c
            out[i0 + t] = arg


@njit(cache=True, nogil=True)
def _scan_shifts(lk, off, use_log, C, s):
    """Chunk shifts of :func:`_scan_key_states` only: ``s[c]`` (float64, (nc,)).

    The running maximum of ``lk[j] + off[j]`` over the keys up to the end of chunk
    ``c`` (``use_log``; 0 otherwise), by the same operations as
    :func:`_scan_key_states` (the same values), without the chunk sums and states.
    """
    _wide_vectors()
    m = lk.shape[0]
    nc = s.shape[0]
    run = -np.inf
    for c in range(nc):
        if use_log:
            for j in range(c * C, min(m, c * C + C)):
                v = np.float64(_max_row(lk[j])) + off[j]
                if v > run:
                    run = v
            s[c] = run
        else:
            s[c] = 0.0


@njit(cache=True, nogil=True)
def _scan_segment(P, lk, off, mult, use_log, use_mult, V, C, c0, s, S, out, advance=False):
    """Causal linear attention of the chunks ``c0 .. c0 + R / C - 1`` for ``G`` query heads.

    ``P (G, R, M)``: the query features of the segment's rows (``R`` a multiple of
    ``C``; rows past the last key are ignored); ``S (M, w)``: the state at chunk ``c0``
    (:func:`_scan_key_states`), advanced in place; ``out (G, R, w)``: per chunk ``c``
    and head ``h``, ``out = P_hc S_c + ((P_hc F_c^T) * L) V_c`` (``L`` lower triangular
    with its diagonal) as :func:`_chunk_products`, then ``S_{c+1}`` from ``S_c`` as in
    :func:`_scan_key_states`. The chunk's rows of the ``G`` heads are stacked (one
    ``G C``-row GEMM each: full register tiles, the state read once) and the chunk's
    features, values and state stay in cache (the materialised chunk states of a long
    sequence stream from memory: 34 MB per group at ``n = 16384``, ``M = 256``).
    With ``advance``, ``S`` leaves as the state at the next segment's first chunk
    (``S_{c0 + R / C}``, by the operations of :func:`_scan_key_states`), so one
    thread can run a group's segments in order from ``S_0 = 0`` without the key scan.
    """
    _wide_vectors()
    G, R, M = P.shape
    m = lk.shape[0]
    w = V.shape[1]
    dv = w - 1
    dt = P.dtype
    nc = s.shape[0]
    k = R // C
    GC = G * C
    Z = np.zeros((M, w), dtype=dt)
    Ft = np.empty((M, C), dtype=dt)
    Vb = np.empty((C, w), dtype=dt)
    vcol = np.empty(C, dtype=dt)
    scol = np.empty(M, dtype=dt)
    buf = np.empty(M, dtype=dt)
    Pb = np.empty((GC, M), dtype=dt)
    A = np.empty((GC, C), dtype=dt)
    T = np.empty((GC, dv), dtype=dt)
    Ob = np.empty((GC, dv), dtype=dt)
    Pf, Sf, Of = Pb.reshape(-1), S.reshape(-1), Ob.reshape(-1)
    Ff, Vf, Af, Tf = Ft.reshape(-1), Vb.reshape(-1), A.reshape(-1), T.reshape(-1)
    for t in range(k):
        c = c0 + t
        if c >= nc or c * C >= m:
            break
        if t > 0:
            _scan_step(S, Z, s[c - 1], s[c])
        _scan_chunk(lk, off, mult, use_log, use_mult, V, c * C, C, s[c], Ft, Vb, vcol, buf)
        for a in range(M):
            scol[a] = S[a, dv]
        for h in range(G):
            for i in range(C):
                src = P[h, t * C + i]
                dst = Pb[h * C + i]
                for a in range(M):
                    dst[a] = src[a]
        _gemm_tiles(Pf, Sf, Of, 0, 0, 0, GC, M, dv, M, w, dv, False)
        _gemm_tiles(Pf, Ff, Af, 0, 0, 0, GC, M, C, M, C, C, False)
        for h in range(G):
            for i in range(C):
                for j in range(i + 1, C):
                    A[h * C + i, j] = 0.0
        _gemm_tiles(Af, Vf, Tf, 0, 0, 0, GC, C, dv, C, w, dv, False)
        for h in range(G):
            oh = out[h]
            for i in range(C):
                r = h * C + i
                acc = _dot(Pb[r], scol, M)
                inc = _dot(A[r], vcol, i + 1)
                orow = oh[t * C + i]
                for e in range(dv):
                    orow[e] = Ob[r, e] + T[r, e]
                orow[dv] = acc + inc
        if t < k - 1:
            _scan_sum(Ft, Vb, vcol, Z)
        elif advance and c + 1 < nc:
            _scan_sum(Ft, Vb, vcol, Z)
            _scan_step(S, Z, s[c], s[c + 1])


@njit(cache=True, nogil=True, fastmath={"contract"})
def _block_attend_tiles(q, k, v, U, keep, out, lse):
    """LevAttention's blocks on register tiles: exact softmax of each row over its keys.

    Block ``b`` holds the query rows ``b B .. b B + B - 1`` (the last block may be
    short) and the key union ``U[b]`` (``L`` slots, :func:`_block_unions`); row ``i``
    attends the slots with ``keep[b, i]``. Per block: the union's keys (transposed) and
    values gathered once into zero-padded buffers, the scores ``q_i . k_j`` on the
    tiles of :func:`attention._kernels.exact._gemm_tiles`, the row maximum, the
    exponentials and their sum in the dtype of ``q``, the weights times the values on
    the tiles and the division: ``out[i] = sum_j e^{s_ij - mx_i} v_j / z_i`` and
    ``lse[i] = mx_i + log z_i`` (float64); rows without a key get 0 and ``-inf``. The
    formulas of :func:`attention.sparse._block_partials` (its batched GEMMs gather
    ``(nb, L, d)`` copies of the keys and values and write ``(nb, B, L)`` scores,
    which stream from memory at long lengths). ``q (n, d)``, ``k (m, d)``, ``v (m,
    dv)`` one float dtype, ``dv`` a multiple of the vector length (16 float32, 8
    float64); ``out (n, dv)`` in that dtype, ``lse (n,)`` float64.
    """
    _wide_vectors()
    nb, B, L = keep.shape
    n, d = q.shape
    dv = v.shape[1]
    vl = 64 // q.itemsize
    Lp = ((L + vl - 1) // vl) * vl
    kt = np.zeros((d, Lp), dtype=q.dtype)
    vb = np.zeros((Lp, dv), dtype=q.dtype)
    sc = np.empty((B, Lp), dtype=q.dtype)
    ob = np.empty((B, dv), dtype=q.dtype)
    zb = np.empty(B, dtype=q.dtype)
    zero = np.zeros(2, dtype=q.dtype)
    qf, kf, sf, vf, of = (
        q.reshape(-1),
        kt.reshape(-1),
        sc.reshape(-1),
        vb.reshape(-1),
        ob.reshape(-1),
    )
    for b in range(nb):
        i0 = b * B
        nr = min(B, n - i0)
        if nr <= 0:
            break
        for t in range(L):
            j = U[b, t]
            for c in range(d):
                kt[c, t] = k[j, c]
            for e in range(dv):
                vb[t, e] = v[j, e]
        _gemm_tiles(qf, kf, sf, i0 * d, 0, 0, nr, d, Lp, d, Lp, Lp, False)
        for i in range(nr):
            kb = keep[b, i]
            mx = -np.inf
            for t in range(L):
                if kb[t] and sc[i, t] > mx:
                    mx = sc[i, t]
            row = sc[i]
            if not np.isfinite(mx):
                for t in range(Lp):
                    row[t] = 0.0
                zb[i] = 0.0
                lse[i0 + i] = -np.inf
                continue
            zero[0] = mx
            sh = zero[0]
            z = zero[1]
            for t in range(L):
                p = _expo(min(row[t] - sh, zero[1])) if kb[t] else zero[1]
                row[t] = p
                z += p
            for t in range(L, Lp):
                row[t] = 0.0
            zb[i] = z
            lse[i0 + i] = np.float64(sh) + np.log(np.float64(z))
        _gemm_tiles(sf, vf, of, 0, 0, 0, nr, Lp, dv, Lp, dv, dv, False)
        for i in range(nr):
            z = zb[i]
            orow = out[i0 + i]
            if z > 0:
                for e in range(dv):
                    orow[e] = ob[i, e] / z
            else:
                for e in range(dv):
                    orow[e] = 0.0
