"""Numba kernels of exact attention: the FlashAttention online-softmax recurrence on CPU.

For one query slice ``g`` and one block of (at most ``bq``) query rows, the kernel walks
over the keys in blocks of ``bk`` and keeps, per row, the running maximum ``mx``, the
running normaliser ``l`` and the running unnormalised output ``acc`` [1]_:

* ``S = (scale * Q_b) K_j^T`` (one BLAS GEMM), masked entries set to ``-inf``;
* ``mx' = max(mx, rowmax(S))``, ``P = exp(S - mx')``, ``alpha = exp(mx - mx')``;
* ``l' = alpha * l + rowsum(P)``, ``acc' = alpha * acc + P V_j`` (second GEMM);

and finally ``out = acc / l``, ``lse = mx + log(l)``. Rows that see no key end with
``mx = -inf`` and ``l = 0``: their output is 0 and their lse is ``-inf``.

Memory: per (slice, query block) iteration the buffers hold ``bq * (d + bk + 2 dv)``
numbers, never ``n x m``. The ``prange`` loop runs over (slice, query block) pairs;
each output block is written by exactly one iteration with a fixed operation order, so
the result does not depend on the number of threads.

The exponential is hand-written (Cody-Waite range reduction, a Taylor polynomial
evaluated by Estrin's scheme, and ``2^k`` built from its bit pattern) because Numba's
``np.exp`` compiles to a scalar libm call that cannot be vectorised; the polynomial
version vectorises with AVX2. Measured on a grid of 2e6 points of ``[-745, 0]``
(float64) and ``[-90, 0]`` (float32): relative error <= 2.0 ulp (float64) and 1.4 ulp
(float32); results below ``exp(-708)`` (float64) / ``exp(-87)`` (float32) are 0.

References
----------
.. [1] T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré, "FlashAttention: fast and
   memory-efficient exact attention with IO-awareness", NeurIPS 2022, arXiv:2205.14135.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# Cody-Waite split of ln 2 (the high part has trailing zero bits, so k * LN2_HI is exact).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634
# Adding 1.5 * 2^52 rounds a float64 of magnitude < 2^51 to an integer held in the
# low mantissa bits: (x + M) - M == round(x), and bits(k + 1023 + M) << 52 == bits(2^k).
_MAGIC = 6755399441055744.0
_EXP_MIN = -708.0  # exp(-708) ~ 3e-308 is still normal; below, the result is set to 0

_LN2_HI_F = np.float32(0.693145751953125)
_LN2_LO_F = np.float32(1.428606765330187045e-06)
_LOG2E_F = np.float32(1.4426950408889634)
_MAGIC_F = np.float32(12582912.0)  # 1.5 * 2^23
_BIAS_F = np.float32(127.0 + 12582912.0)
_EXP_MIN_F = np.float32(-87.0)
_ZERO_F = np.float32(0.0)
_C_F = (
    np.float32(1.0),
    np.float32(1.0 / 2.0),
    np.float32(1.0 / 6.0),
    np.float32(1.0 / 24.0),
    np.float32(1.0 / 120.0),
    np.float32(1.0 / 720.0),
    np.float32(1.0 / 5040.0),
)


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_row_f64(s, mx, tb):
    """Overwrite ``s[j]`` with the mantissa part of ``exp(s[j] - mx)`` and ``tb[j]`` with ``2^k``.

    ``exp(s - mx) = s * tb`` afterwards (:func:`_scale_sum` forms it); entries below
    ``exp(-708)``, ``-inf`` included, get ``tb = 0`` and so become exactly 0. No
    ``reassoc`` fast-math flag here: it would cancel the ``(x + M) - M`` rounding trick.
    """
    w = s.shape[0]
    for j in range(w):
        x = s[j] - mx
        xc = max(x, _EXP_MIN)
        fk = (xc * _LOG2E + _MAGIC) - _MAGIC
        r = (xc - fk * _LN2_HI) - fk * _LN2_LO
        # Taylor polynomial of degree 13 on |r| <= ln(2)/2 (truncation < 2e-16), Estrin.
        r2 = r * r
        r4 = r2 * r2
        r8 = r4 * r4
        a0 = 1.0 + r
        a1 = 0.5 + r * (1.0 / 6.0)
        a2 = 1.0 / 24.0 + r * (1.0 / 120.0)
        a3 = 1.0 / 720.0 + r * (1.0 / 5040.0)
        a4 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
        a5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0)
        a6 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0)
        b0 = a0 + r2 * a1
        b1 = a2 + r2 * a3
        b2 = a4 + r2 * a5
        s[j] = (b0 + r4 * b1) + r8 * (b2 + r4 * a6)
        tb[j] = fk + (1023.0 + _MAGIC) if x >= _EXP_MIN else _MAGIC
    bits = tb.view(np.int64)
    for j in range(w):
        bits[j] = bits[j] << 52


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_row_f32(s, mx, tb):
    """Float32 twin of :func:`_exp_row_f64` (degree-7 polynomial, ``2^k`` from 8 bits)."""
    w = s.shape[0]
    c1, c2, c3, c4, c5, c6, c7 = _C_F
    mxf = np.float32(mx)
    for j in range(w):
        x = s[j] - mxf
        xc = max(x, _EXP_MIN_F)
        fk = (xc * _LOG2E_F + _MAGIC_F) - _MAGIC_F
        r = (xc - fk * _LN2_HI_F) - fk * _LN2_LO_F
        r2 = r * r
        r4 = r2 * r2
        a0 = c1 + r
        a1 = c2 + r * c3
        a2 = c4 + r * c5
        a3 = c6 + r * c7
        s[j] = (a0 + r2 * a1) + r4 * (a2 + r2 * a3)
        tb[j] = fk + _BIAS_F if x >= _EXP_MIN_F else _MAGIC_F
    bits = tb.view(np.int32)
    for j in range(w):
        bits[j] = bits[j] << 23


def _exp_row(s, mx, tb):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_exp_row)
def _exp_row_overload(s, mx, tb):
    if s.dtype == types.float32:
        return lambda s, mx, tb: _exp_row_f32(s, mx, tb)
    return lambda s, mx, tb: _exp_row_f64(s, mx, tb)


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _scale_sum(s, tb):
    """Finish ``s[j] *= tb[j]`` and return ``sum(s)`` accumulated in float64."""
    acc = 0.0
    for j in range(s.shape[0]):
        p = s[j] * tb[j]
        s[j] = p
        acc += np.float64(p)
    return acc


@njit(cache=True, nogil=True)
def _row_max(s):
    """Maximum of a non-empty row without NaN (8 independent lanes: ~2x a serial loop)."""
    w = s.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = s[0]
    j = 0
    while j + 8 <= w:
        x0, x1, x2, x3 = s[j], s[j + 1], s[j + 2], s[j + 3]
        x4, x5, x6, x7 = s[j + 4], s[j + 5], s[j + 6], s[j + 7]
        a0 = x0 if x0 > a0 else a0
        a1 = x1 if x1 > a1 else a1
        a2 = x2 if x2 > a2 else a2
        a3 = x3 if x3 > a3 else a3
        a4 = x4 if x4 > a4 else a4
        a5 = x5 if x5 > a5 else a5
        a6 = x6 if x6 > a6 else a6
        a7 = x7 if x7 > a7 else a7
        j += 8
    best = max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))
    while j < w:
        best = max(best, s[j])
        j += 1
    return best


def _attend_blocks(
    q,
    k,
    v,
    kv_index,
    rows,
    mask_b,
    mask_f,
    mask_index,
    mask_mode,
    scale,
    causal,
    offset,
    bq,
    bk,
    out,
    lse,
):
    """Online-softmax attention of the query rows ``rows`` of every slice.

    Parameters (no validation): ``q (G, n, d)``, ``k (Gk, m, d)``, ``v (Gk, m, dv)``
    C-contiguous of one float dtype; ``kv_index (G,)``; ``rows (r,)`` int64 query rows;
    ``mask_b`` (boolean, True = keep, read if ``mask_mode == 1``) and ``mask_f``
    (additive, dtype of ``q``, read if ``mask_mode == 2``) of shape ``(2, Gm, n, m)``
    with any strides, of which only ``[0]`` is read (the unused one is a dummy, and the
    zero-stride leading axis makes every mask non-contiguous, so that one compilation
    per dtype serves all masks); ``mask_index (G,)``; ``scale``;
    ``causal`` with ``offset = m - n`` (key ``j`` visible from row ``i`` iff
    ``j <= i + offset``); block sizes ``bq``, ``bk``. Writes ``out (G, r, dv)`` (dtype of
    ``q``) and ``lse (G, r)`` (float64).
    """
    G = q.shape[0]
    d = q.shape[2]
    m = k.shape[1]
    dv = v.shape[2]
    r = rows.shape[0]
    nqb = (r + bq - 1) // bq
    neg_inf = -np.inf
    for t in prange(G * nqb):
        g = t // nqb
        i0 = (t - g * nqb) * bq
        nb = min(bq, r - i0)
        gk = kv_index[g]
        gm = mask_index[g]
        # Pre-scaled query block (a contiguous GEMM operand) and the causal key limits.
        qb = np.empty((nb, d), dtype=q.dtype)
        lim_lo = m
        lim_hi = -1
        for i in range(nb):
            row = rows[i0 + i]
            for c in range(d):
                qb[i, c] = q[g, row, c] * scale
            lim = row + offset
            lim_lo = min(lim_lo, lim)
            lim_hi = max(lim_hi, lim)
        jend = m
        if causal:
            # Key blocks entirely above the diagonal of every row are skipped.
            jend = min(m, lim_hi + 1)
        sbuf = np.empty(nb * bk, dtype=q.dtype)
        tb = np.empty(bk, dtype=q.dtype)
        pv = np.empty((nb, dv), dtype=q.dtype)
        acc = np.zeros((nb, dv))
        mrow = np.full(nb, neg_inf)
        lrow = np.zeros(nb)
        alpha = np.ones(nb)
        for j0 in range(0, max(jend, 0), bk):
            w = min(bk, jend - j0)
            s = sbuf[: nb * w].reshape((nb, w))
            np.dot(qb, k[gk, j0 : j0 + w].T, s)
            if mask_mode == 1:
                for i in range(nb):
                    row = rows[i0 + i]
                    for jj in range(w):
                        if not mask_b[0, gm, row, j0 + jj]:
                            s[i, jj] = neg_inf
            elif mask_mode == 2:
                for i in range(nb):
                    row = rows[i0 + i]
                    for jj in range(w):
                        s[i, jj] += mask_f[0, gm, row, j0 + jj]
            if causal and j0 + w - 1 > lim_lo:
                for i in range(nb):
                    first = max(rows[i0 + i] + offset + 1 - j0, 0)
                    for jj in range(first, w):
                        s[i, jj] = neg_inf
            for i in range(nb):
                srow = s[i]
                mnew = max(mrow[i], np.float64(_row_max(srow)))
                if mnew == neg_inf:
                    # Nothing visible so far: zero weights, nothing to rescale.
                    srow[:] = 0
                    alpha[i] = 1.0
                    continue
                # exp(-inf) = 0 when this block holds the row's first visible key.
                alpha[i] = np.exp(mrow[i] - mnew)
                mrow[i] = mnew
                _exp_row(srow, mnew, tb)
                lrow[i] = alpha[i] * lrow[i] + _scale_sum(srow, tb[:w])
            np.dot(s, v[gk, j0 : j0 + w], pv)
            for i in range(nb):
                a = alpha[i]
                for c in range(dv):
                    acc[i, c] = a * acc[i, c] + pv[i, c]
        for i in range(nb):
            if lrow[i] > 0.0:
                inv = 1.0 / lrow[i]
                for c in range(dv):
                    out[g, i0 + i, c] = acc[i, c] * inv
                lse[g, i0 + i] = mrow[i] + np.log(lrow[i])
            else:
                for c in range(dv):
                    out[g, i0 + i, c] = 0.0
                lse[g, i0 + i] = neg_inf


_attend_kernel = njit(cache=True, nogil=True, parallel=True)(_attend_blocks)
