"""Numba kernels of :class:`attention.kvcache.KVCache` (certified decode over a cache).

Four kernels, one per phase of a decode step, plus the append-time summaries:

* :func:`_summarize` (append): per block of ``B`` keys of one key/value head, the int8
  key codes ``c`` (stored transposed, ``(d, B)``), the per-channel scales ``s`` and
  residual maxima ``h_e = max_j |k_je - s_e c_je|`` (rounded up), the residual norm
  maximum ``rho = max_j ||k_j - s * c_j||``, the value centroid and the per-key norms
  ``||v_j - vc||`` (rounded up), and the Gram matrix of the centred values (its top
  eigenvalue, taken by the caller, bounds the block's spectral norm).
* :func:`_pilot_kernel` (parallel): for every stacked query row ``i`` and summarised
  block ``b`` the pilot scores ``s^_ij = sum_e (scale q_ie s_be) c_je`` (float32), and
  from them the block maximum ``m_ib``, the block mass ``W_ib = sum_j exp(s^_ij -
  m_ib)``, ``S2_ib = sum_j exp(2 (s^_ij - m_ib))``, ``T_ib = sum_j exp(s^_ij - m_ib)
  ||v_j - vc_b||`` and the score radius ``eps_ib`` with ``|s_ij - s^_ij| <= eps_ib`` for
  every key ``j`` of the block (see :func:`_pilot_radius`).
* :func:`_select` (serial, per key/value head): the blocks whose values are read, the
  centroid term of the others, and the list of key segments to read.
* :func:`_segments_kernel` (parallel): exact attention over the kept key segments, one
  partial ``(max, normaliser, unnormalised output)`` per segment, merged together with
  the centroid partial by :func:`attention._kernels.exact._merge_split`.
* :func:`_row_bounds`: the certified error of every row once the output is known.

The per-segment arithmetic is the exact split-key kernel's (its score loop
:func:`attention._kernels.exact._qk_small`, online softmax
:func:`attention._kernels.exact._softmax_tile` and value tiles
:func:`attention._kernels.exact._gemm_tiles`, imported): a segment is a run of
consecutive kept blocks instead of a fixed chunk.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from attention._kernels.exact import (
    _SMALL_ROWS,
    _gemm_tiles,
    _merge_split,
    _nonfinite_probe,
    _qk_small,
    _row_max,
    _softmax_tile,
)
from attention._kernels.rounding import _row_allowance
from rnla._kernels.fastexp import _add_reassoc, _exp_f32
from rnla._kernels.intrinsics import _fetch_add, _wide_vectors

_U64 = float(np.finfo(np.float64).eps)
_U32 = float(np.finfo(np.float32).eps) / 2.0  # unit roundoff of float32


@njit(cache=True, nogil=True, fastmath={"contract"})
def _mm(a, b):
    """Return ``a @ b`` (float64, small) by a loop: no BLAS call in the step kernels.

    Keeps the step free of BLAS (and of the thread-pool limit around it) when the
    stacked rows are few; rows of ``b`` are streamed (vectorised), any summation order
    is covered by the error terms of the callers.
    """
    _wide_vectors()
    n, k = a.shape
    m = b.shape[1]
    out = np.zeros((n, m))
    for i in range(n):
        oi = out[i]
        for e in range(k):
            x = a[i, e]
            be = b[e]
            for j in range(m):
                oi[j] += x * be[j]
    return out


# ------------------------------------------------------------------ append: summaries


@njit(cache=True, nogil=True)
def _summarize(k, v, b0, b1, B, codes, qscale, qres, rho, vc, udev, vrms2, gram):
    """Summaries of blocks ``b0 <= b < b1`` of every head (keys ``b B .. b B + B - 1``).

    ``k (h, cap, d)``, ``v (h, cap, dv)``: the cache buffers. Writes ``codes (h, nb, d,
    B)`` int8, ``qscale / qres (h, nb, d)`` float32, ``rho (h, nb)``, ``vc (h, nb, dv)``,
    ``udev (h, cap)`` float32, ``vrms2 (h, nb)`` (mean squared value norm) and ``gram (h,
    b1 - b0, dv, dv)`` (float64).

    Quantisation: ``s_e = max_j |k_je| / 127`` (float32), ``c_je = round(k_je / s_e)``
    clipped to ``[-127, 127]``; the residual ``r_je = k_je - s_e c_je`` is formed in
    float64 (exact for float32 keys: both terms have at most 32 significant bits within
    a few binades), and ``qres_e`` is its maximum modulus plus ``2 u_64 max_j |k_je|``
    (covers float64 keys), rounded up to float32.
    """
    h, _, d = k.shape
    dv = v.shape[2]
    up = 1.0 + 1e-6  # float32 storage of an upper bound: round up
    for g in range(h):
        for b in range(b0, b1):
            j0 = b * B
            res2 = np.zeros(B)
            for e in range(d):
                amax = 0.0
                for j in range(B):
                    amax = max(amax, abs(np.float64(k[g, j0 + j, e])))
                s = np.float32(amax / 127.0)
                rmax = 0.0
                for j in range(B):
                    x = np.float64(k[g, j0 + j, e])
                    c = 0.0
                    if s > 0:
                        c = min(127.0, max(-127.0, np.round(x / np.float64(s))))
                    codes[g, b, e, j] = np.int8(c)
                    r = x - np.float64(s) * c
                    res2[j] += r * r
                    rmax = max(rmax, abs(r))
                qscale[g, b, e] = s
                qres[g, b, e] = np.float32((rmax + 2.0 * _U64 * amax) * up)
            top = 0.0
            for j in range(B):
                top = max(top, res2[j])
            rho[g, b] = np.sqrt(top) * (1.0 + 1e-12) + 2.0 * _U64 * d
            # Value centroid, per-key deviations, Gram matrix of the centred block.
            c_ = np.zeros(dv)
            for j in range(B):
                for e in range(dv):
                    c_[e] += np.float64(v[g, j0 + j, e])
            for e in range(dv):
                c_[e] /= B
                vc[g, b, e] = c_[e]
            u = np.empty((B, dv))
            sq = 0.0
            for j in range(B):
                for e in range(dv):
                    x = np.float64(v[g, j0 + j, e])
                    sq += x * x
            vrms2[g, b] = sq / B
            for j in range(B):
                t = 0.0
                for e in range(dv):
                    x = np.float64(v[g, j0 + j, e]) - c_[e]
                    u[j, e] = x
                    t += x * x
                udev[g, j0 + j] = np.float32(np.sqrt(t) * up)
            gram[g, b - b0] = u.T @ u


# ------------------------------------------------------------------ decode: pilot


@njit(cache=True, nogil=True, fastmath={"contract"})
def _codes_to_float(cb, f):
    """``f[e, j] = c_je`` (float32, exact) for one block of codes ``(d, B)`` (vectorised)."""
    _wide_vectors()
    d, B = cb.shape
    for e in range(d):
        for j in range(B):
            f[e, j] = np.float32(cb[e, j])


def _make_code_tile(n_rows, n_vecs):
    """Build ``tile(a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo)`` for int8 ``b``.

    ``out[ooff + r ldo + c] = sum_{e < kdim} a[aoff + r lda + e] * float32(b[boff + e
    ldb + c])`` for ``r < n_rows`` and the ``16 n_vecs`` columns ``c`` of the tile:
    ``a``, ``out`` float32, ``b`` int8 (flat, C-contiguous). The ``n_rows x n_vecs``
    accumulators stay in registers over the ``e`` loop; per step, ``n_vecs`` loads of 16
    codes converted to float32 in registers (exact: ``|c| <= 127``), ``n_rows``
    broadcasts of ``a`` and ``n_rows n_vecs`` fused multiply-adds (``llvm.fma``) in the
    order ``e = 0, 1, ...``: the same result as converting the codes first and running
    :func:`attention._kernels.exact._gemm_tiles` on them, without writing and reading
    the converted block. Portable LLVM IR (16-lane vectors are split on CPUs without
    512-bit registers); the callers use it only with the exact kernel's register tiles
    (``attention.exact._USE_TILES``) and keep a loop as the portable path.
    """
    vl = 16

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        fty = ir.FloatType()
        vty = ir.VectorType(fty, vl)
        cty = ir.VectorType(ir.IntType(8), vl)
        data = [context.make_array(sig.args[x])(context, builder, args[x]).data for x in range(3)]
        aoffv, boffv, ooffv, kv, ldav, ldbv, ldov = args[3:10]
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * vl)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, vl), [0] * vl)
        fma = builder.module.declare_intrinsic(
            "llvm.fma.v16f32", fnty=ir.FunctionType(vty, [vty, vty, vty])
        )
        arow = [
            builder.gep(data[0], [builder.add(aoffv, builder.mul(ldav, ir.Constant(i64, r)))])
            for r in range(n_rows)
        ]
        orow = [
            builder.gep(data[2], [builder.add(ooffv, builder.mul(ldov, ir.Constant(i64, r)))])
            for r in range(n_rows)
        ]
        bbase = builder.gep(data[1], [boffv])
        entry = builder.block
        loop = builder.append_basic_block("code_tile_loop")
        done = builder.append_basic_block("code_tile_done")
        builder.cbranch(builder.icmp_signed(">", kv, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        e = builder.phi(i64)
        e.add_incoming(ir.Constant(i64, 0), entry)
        acc = [[builder.phi(vty) for _ in range(n_vecs)] for _ in range(n_rows)]
        for r in range(n_rows):
            for c in range(n_vecs):
                acc[r][c].add_incoming(zero, entry)
        brow = builder.gep(bbase, [builder.mul(e, ldbv)])
        bvec = []
        for c in range(n_vecs):
            ptr = builder.bitcast(builder.gep(brow, [ir.Constant(i64, c * vl)]), cty.as_pointer())
            bvec.append(builder.sitofp(builder.load(ptr, align=1), vty))
        new = []
        for r in range(n_rows):
            x = builder.load(builder.gep(arow[r], [e]))
            x = builder.insert_element(undef, x, ir.Constant(i32, 0))
            x = builder.shuffle_vector(x, undef, splat)
            new.append([builder.call(fma, [x, bvec[c], acc[r][c]]) for c in range(n_vecs)])
        e1 = builder.add(e, ir.Constant(i64, 1))
        end = builder.block
        e.add_incoming(e1, end)
        for r in range(n_rows):
            for c in range(n_vecs):
                acc[r][c].add_incoming(new[r][c], end)
        builder.cbranch(builder.icmp_signed("<", e1, kv), loop, done)
        builder.position_at_end(done)
        res = []
        for r in range(n_rows):
            for c in range(n_vecs):
                x = builder.phi(vty)
                x.add_incoming(zero, entry)
                x.add_incoming(new[r][c], end)
                res.append(x)
        for r in range(n_rows):
            for c in range(n_vecs):
                ptr = builder.gep(orow[r], [ir.Constant(i64, c * vl)])
                builder.store(res[r * n_vecs + c], builder.bitcast(ptr, vty.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo):
        if not all(isinstance(x, types.Array) for x in (a, b, out)):
            return None
        if not (a.dtype == out.dtype == types.float32 and b.dtype == types.int8):
            return None
        return types.none(a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo), codegen

    return tile


_code_tile_3x4 = _make_code_tile(3, 4)
_code_tile_2x4 = _make_code_tile(2, 4)
_code_tile_1x4 = _make_code_tile(1, 4)
_code_tile_3x1 = _make_code_tile(3, 1)
_code_tile_2x1 = _make_code_tile(2, 1)
_code_tile_1x1 = _make_code_tile(1, 1)


@njit(cache=True, nogil=True)
def _code_scores(q32, cb, acc):
    """``acc[i, j] = sum_e q32[i, e] float32(cb[e, j])`` on the int8 register tiles.

    ``q32 (R, d)`` float32, codes ``cb (d, B)`` int8 (``B`` a multiple of 16), ``acc (R,
    B)`` float32, all C-contiguous. Column groups of 64 (then 16), row tiles of 3, 2 or 1
    (a decode group of 3 stacked rows reads each code row once per column group).
    """
    R, d = q32.shape
    B = cb.shape[1]
    a = q32.reshape(-1)
    b = cb.reshape(-1)
    out = acc.reshape(-1)
    c0 = 0
    while c0 < B:
        wide = c0 + 64 <= B
        r0 = 0
        while r0 < R:
            rows = 3 if R - r0 >= 3 else R - r0
            ao = r0 * d
            oo = r0 * B + c0
            if wide:
                if rows == 3:
                    _code_tile_3x4(a, b, out, ao, c0, oo, d, d, B, B)
                elif rows == 2:
                    _code_tile_2x4(a, b, out, ao, c0, oo, d, d, B, B)
                else:
                    _code_tile_1x4(a, b, out, ao, c0, oo, d, d, B, B)
            elif rows == 3:
                _code_tile_3x1(a, b, out, ao, c0, oo, d, d, B, B)
            elif rows == 2:
                _code_tile_2x1(a, b, out, ao, c0, oo, d, d, B, B)
            else:
                _code_tile_1x1(a, b, out, ao, c0, oo, d, d, B, B)
            r0 += rows
        c0 += 64 if wide else 16


@njit(cache=True, nogil=True, fastmath={"contract"})
def _pilot_scores(cb, q32, acc, f, tiles):
    """``acc[i, j] = sum_e qp_ie c_je`` for one block (float32, codes ``(d, B)``).

    ``q32 = qp``: the query rows times the block's channel scales, ``fl32(qs_e s_e)``
    (cheaper than scaling the ``d x B`` codes for at most 16 stacked rows). With
    ``tiles`` the product runs on int8 register tiles (:func:`_code_scores`: codes
    converted in registers); portably, the codes are converted once into ``f (d, B)``
    and a loop over channels updates a row of ``B`` accumulators per stacked row (no
    horizontal sums). Every entry is one chain of fused multiply-adds over ``e = 0, 1,
    ...`` on both paths (bit-identical results).
    """
    _wide_vectors()
    if tiles:
        _code_scores(q32, cb, acc)
        return
    _codes_to_float(cb, f)
    R, d = q32.shape
    B = cb.shape[1]
    for i in range(R):
        for j in range(B):
            acc[i, j] = 0.0
        for e in range(d):
            a = q32[i, e]
            for j in range(B):
                acc[i, j] += a * f[e, j]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _block_sums(srow, dev):
    """``(max, sum exp(s - max), sum exp(2 (s - max)), sum exp(s - max) dev)`` of a row."""
    _wide_vectors()
    mx = _row_max(srow)
    w = np.float32(0.0)
    w2 = np.float32(0.0)
    t = np.float32(0.0)
    for j in range(srow.shape[0]):
        p = _exp_f32(srow[j] - mx)
        w = _add_reassoc(w, p)
        w2 = _add_reassoc(w2, p * p)
        t = _add_reassoc(t, p * dev[j])
    return np.float64(mx), np.float64(w), np.float64(w2), np.float64(t)


@njit(cache=True, nogil=True)
def _pilot_radius(qa, qn, qscale, qres, rho, gk, b0, b1, d, beps, bex):
    """Radius ``eps`` of the pilot scores of blocks ``b0..b1``: ``|s_ij - s^_ij| <= eps``.

    ``qa (R, d)``: ``|scale q_i|`` (float64), ``qn (R,)``: ``||scale q_i||`` rounded up.
    ``s_ij - s^_ij = sum_e qs_e r_je + (exact - float32 pilot)`` with ``qs = scale q``:

    * quantisation: ``|sum_e qs_e r_je| <= min(sum_e |qs_e| h_e, ||qs|| rho)``
      (componentwise residual maxima ``h``, or Cauchy-Schwarz with the residual norm);
    * pilot arithmetic: ``fl32(qs_e s_e)`` (one rounding of the float64 product) and a
      float32 dot product of length ``d`` with the exact codes (fused multiply-adds): at
      most ``gamma_{d+2} 127 sum_e |qs_e| s_e``, ``gamma_k = k u / (1 - k u)`` [1]_
      (float32 ``u``, ``|c_je| <= 127``);
    * the exponentials and block sums in float32 (relative error ``<= 0.9`` ulp per
      exponential, ``<= B u`` for the sum, ``<= 90 u`` for ``s^ - max`` down to the
      float32 underflow at ``-87``): covered by adding ``256 u`` to ``eps``, which is
      then a bound in the log domain for ``W``, ``S2 = sum w^2`` (with ``2 eps``) and
      ``T``.

    The two sums over ``e`` (``qa . h_b`` and ``qa . s_b``) are float64 dot products of
    non-negative terms in any order (vectorised): relative error ``<= d u_64``, covered
    by ``1 + 4 d u_64``.

    References
    ----------
    .. [1] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
       SIAM 2002, Lemma 3.1 and eq. (3.5) (inner products, with or without FMA).
    """
    _wide_vectors()
    R = qa.shape[0]
    k = d + 2
    gam = k * _U32 / (1.0 - k * _U32)
    for b in range(b0, b1):
        hb = qres[gk, b]
        sb = qscale[gk, b]
        rb = rho[gk, b]
        for i in range(R):
            qi = qa[i]
            quant = 0.0
            l1s = 0.0
            for e in range(d):
                quant = _add_reassoc(quant, qi[e] * np.float64(hb[e]))
                l1s = _add_reassoc(l1s, qi[e] * np.float64(sb[e]))
            qt = min(quant, qn[i] * rb) * (1.0 + 4.0 * d * _U64)
            ep = qt + gam * 127.0 * l1s * (1.0 + 1e-6) + 256.0 * _U32
            beps[gk, b, i] = ep
            bex[gk, b, i] = np.exp(ep)


@njit(cache=True, nogil=True)
def _pilot_task(
    qs, codes, qscale, qres, rho, udev, gk, b0, b1, B, tiles, bm, bw, bs2, bt, beps, bex
):
    """Pilot of blocks ``b0 <= b < b1`` of key/value head ``gk`` for its stacked rows.

    Writes, per (block, row), ``bm`` the block maximum of the pilot scores, ``bw`` the
    block mass ``W``, ``bs2 = sum w^2``, ``bt = sum w ||v_j - vc||`` (relative to
    ``bm``), ``beps`` the score radius (:func:`_pilot_radius`) and ``bex = exp(beps)``.
    """
    R, d = qs.shape[1], qs.shape[2]
    q32 = np.empty((R, d), dtype=np.float32)
    qa = np.empty((R, d))
    qn = np.empty(R)
    for i in range(R):
        t = 0.0
        for e in range(d):
            x = qs[gk, i, e]
            q32[i, e] = np.float32(x)
            qa[i, e] = abs(x)
            t += x * x
        qn[i] = np.sqrt(t) * (1.0 + 2.0 * d * _U64)
    acc = np.empty((R, B), dtype=np.float32)
    f = np.empty((d, B), dtype=np.float32)
    for b in range(b0, b1):
        sb = qscale[gk, b]
        for i in range(R):
            for e in range(d):
                q32[i, e] = np.float32(qs[gk, i, e] * np.float64(sb[e]))
        _pilot_scores(codes[gk, b], q32, acc, f, tiles)
        dev = udev[gk, b * B : (b + 1) * B]
        for i in range(R):
            mx, w, w2, t = _block_sums(acc[i], dev)
            bm[gk, b, i] = mx
            bw[gk, b, i] = w
            bs2[gk, b, i] = w2
            bt[gk, b, i] = t
    _pilot_radius(qa, qn, qscale, qres, rho, gk, b0, b1, d, beps, bex)


def _pilot_blocks(
    qs,
    codes,
    qscale,
    qres,
    rho,
    udev,
    nbc,
    B,
    per_task,
    tiles,
    bm,
    bw,
    bs2,
    bt,
    beps,
    bex,
    counter,
    workers,
):
    """Pilot of the first ``nbc`` blocks of every head, in tasks of ``per_task`` blocks.

    ``qs (Gk, R, d)`` float64: the stacked query rows of every key/value head times
    ``scale``. Outputs ``(Gk, nbc, R)`` float64 (see :func:`_pilot_task`).
    """
    Gk = qs.shape[0]
    nt = -(-nbc // per_task)
    for _ in prange(workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * nt:
                break
            gk = t // nt
            c = t - gk * nt
            b0 = c * per_task
            b1 = min(nbc, b0 + per_task)
            _pilot_task(
                qs,
                codes,
                qscale,
                qres,
                rho,
                udev,
                gk,
                b0,
                b1,
                B,
                tiles,
                bm,
                bw,
                bs2,
                bt,
                beps,
                bex,
            )


_pilot_kernel = njit(cache=True, nogil=True, parallel=True)(_pilot_blocks)


# ------------------------------------------------------------------ decode: selection


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _dist(vcg, y):
    """Upper bounds of ``||vc_b - y_i||``, shape ``(nbc, R)``.

    ``||vc_b||^2 - 2 vc_b . y_i + ||y_i||^2`` (float64 dot products in any order,
    ``vcg (nbc, dv)``, ``y (R, dv)``) plus ``4 (dv + 2) u_64 (||vc_b||^2 + ||y_i||^2)``,
    which covers the rounding of the three terms (Higham 2002, Lemma 3.1).
    """
    _wide_vectors()
    nb, dv = vcg.shape
    R = y.shape[0]
    yn = np.empty(R)
    for i in range(R):
        t = 0.0
        for e in range(dv):
            t = _add_reassoc(t, y[i, e] * y[i, e])
        yn[i] = t
    pad = 4.0 * (dv + 2) * _U64
    out = np.empty((nb, R))
    for b in range(nb):
        vb = vcg[b]
        vn = 0.0
        for e in range(dv):
            vn = _add_reassoc(vn, vb[e] * vb[e])
        for i in range(R):
            yi = y[i]
            g = 0.0
            for e in range(dv):
                g = _add_reassoc(g, vb[e] * yi[e])
            x = vn - 2.0 * g + yn[i] + pad * (vn + yn[i])
            out[b, i] = np.sqrt(max(x, 0.0))
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _costs(bw, bs2, bt, bex, sig, vrms2, B, gk, keep, use_keep, dist, dlo, cost):
    """``cost[b, i] = c_ib`` of every block (0 for kept ones if ``use_keep``).

    ``c_ib = (W~ sinh(eps) ||vc_b - y_i|| + C_ib) / dlo_i`` with ``C_ib`` the least of
    three upper bounds of ``||w_ib^T U_b||`` (``w`` the true weights of the block's keys,
    within ``w^ exp(+-eps)`` of the pilot's ``w^``; ``U_b`` the values centred by the
    stored centroid; ``W~ = sum w^``, ``S2~ = sum w^2``, ``T~ = sum w^_j ||u_j||``):

    * ``exp(eps) sig_b sqrt(S2~)`` (spectral norm of ``U_b``);
    * ``exp(eps) T~`` (triangle inequality over the keys);
    * ``sig_b (||w^ - c 1|| + (exp(eps) - 1) ||w^||) + c ||1^T U_b||`` with ``c = W~ /
      B``: ``w^T U = (w - c 1)^T U + c 1^T U`` for any ``c``, ``||w^ - c 1||^2 = S2 -
      W^2 / B``, ``|w_j - w^_j| <= w^_j (exp(eps) - 1)``. The float32 sums ``W~``, ``S2~``
      are within a relative ``eta = 1e-4`` of the exact sums of the pilot weights (at
      most ``B <= 512`` float32 additions: ``<= 3.1e-5``), and ``||1^T U_b|| =
      ||sum_j v_j - B vc_b|| <= (B + 1) u_64 ||(sum_j |v_je|)_e|| <= (B + 1) u_64 B
      sqrt(vrms2_b)`` (the rounding of the float64 centroid; taken twice). Nearly uniform
      weights within a block make the first term small: the spectral bound then only
      pays for the spread of the weights, not their size.
    """
    nb, R = cost.shape
    eta = 1e-4
    for b in range(nb):
        if use_keep and keep[gk, b] == 1:
            for i in range(R):
                cost[b, i] = 0.0
            continue
        sg = sig[gk, b]
        defect = 2.0 * (B + 1) * _U64 * B * np.sqrt(vrms2[gk, b]) * (1.0 + 1e-6)
        for i in range(R):
            ex = bex[gk, b, i]
            sh = 0.5 * (ex - 1.0 / ex)
            w = bw[gk, b, i]
            s2 = bs2[gk, b, i]
            cen = ex * min(sg * np.sqrt(s2), bt[gk, b, i])
            var = s2 * (1.0 + eta) - w * w * (1.0 - 2.0 * eta) / B
            spread = np.sqrt(max(var, 0.0)) + (ex - 1.0) * np.sqrt(s2 * (1.0 + eta))
            cen = min(cen, sg * spread * (1.0 + 1e-12) + (w / B) * defect)
            cost[b, i] = (w * sh * dist[b, i] + cen) / dlo[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _actual_dlo(bw, bex, keep, cpart, members, nq, gk, lse, seps):
    """Lower bounds of the normalisers ``D_i`` (units ``exp(M_i)``) once ``lse`` is known.

    ``(D~ exp(-2 seps_i) - sum_{b dropped} W~_b sinh(eps_b)) (1 - 1e-3)``: the kept mass
    in ``D~ = exp(lse - M)`` comes from weights whose logarithms are rounded by at most
    ``seps_i`` (scores, subtraction and exponential of the worst-case allowance,
    :func:`attention._kernels.rounding._exponent_error` plus ``8 u``), and
    ``1 - 1e-3`` covers the rounding of the sums (float32 tile sums of at most 2048
    exponentials, relative error below ``2e-4``; float64 merge).
    """
    nbc, R = bw.shape[1], bw.shape[2]
    dlo = np.empty(R)
    for i in range(R):
        a = i // nq
        g = members[gk, a]
        slack = 0.0
        for b in range(nbc):
            if keep[gk, b] == 0:
                ex = bex[gk, b, i]
                slack += bw[gk, b, i] * 0.5 * (ex - 1.0 / ex)
        dt = np.exp(lse[g, i - a * nq] - cpart[gk, i, 0] - 2.0 * seps[gk, i])
        dlo[i] = (dt - slack) * (1.0 - 1e-3)
    return dlo


@njit(cache=True, nogil=True)
def _rows(out, members, nq, gk):
    """Return the stacked output rows ``(R, dv)`` (float64) of key/value head ``gk``."""
    gs = members.shape[1]
    dv = out.shape[2]
    y = np.empty((gs * nq, dv))
    for a in range(gs):
        g = members[gk, a]
        for i in range(nq):
            for e in range(dv):
                y[a * nq + i, e] = out[g, i, e]
    return y


@njit(cache=True, nogil=True)
def _build_segments(mask, gk, nbc, t_len, B, chunk, tail, seg, nseg):
    """Append the key segments of the blocks with ``mask[gk, b] == 1`` to ``seg[gk]``.

    Runs of consecutive blocks (and, with ``tail``, the keys from ``nbc * B`` to
    ``t_len``) cut into pieces of at most ``chunk`` keys.
    """
    ns = nseg[gk]
    b = 0
    while b <= nbc:
        inrun = b < nbc and mask[gk, b] == 1
        if not inrun and not (b == nbc and tail):
            b += 1
            continue
        e0 = b
        while b < nbc and mask[gk, b] == 1:
            b += 1
        j = e0 * B
        stop = b * B if b < nbc else (t_len if tail else nbc * B)
        while j < stop:
            seg[gk, ns, 0] = j
            seg[gk, ns, 1] = min(stop, j + chunk)
            j = seg[gk, ns, 1]
            ns += 1
        b += 1
    nseg[gk] = ns


@njit(cache=True, nogil=True)
def _centroid_part(bw, bex, vc, keep, cpart):
    """Centroid partial ``cpart (Gk, R, 2 + dv)`` of the dropped blocks (midpoint masses).

    ``cpart[gk, i, 0]`` holds the shift ``M_i`` (set by :func:`_select`); entry 1 the
    dropped mass ``sum_b W~_ib cosh(eps_ib)``, entries ``2:`` that mass times centroids.
    """
    Gk, nbc, R = bw.shape
    dv = vc.shape[2]
    for gk in range(Gk):
        x = np.zeros((R, nbc))
        for b in range(nbc):
            if keep[gk, b] == 0:
                for i in range(R):
                    ex = bex[gk, b, i]
                    x[i, b] = bw[gk, b, i] * 0.5 * (ex + 1.0 / ex)
        acc = _mm(x, vc[gk, :nbc])
        for i in range(R):
            t = 0.0
            for b in range(nbc):
                t += x[i, b]
            cpart[gk, i, 1] = t
            for e in range(dv):
                cpart[gk, i, 2 + e] = acc[i, e]


@njit(cache=True, nogil=True, error_model="numpy")
def _select(
    bm, bw, bs2, bt, bex, vc, sig, vrms2, tau, mix, nbc, t_len, B, chunk, keep, seg, nseg, cpart
):
    """Choose the dropped blocks of every key/value head and build the segment lists.

    Row shift ``M_i = max_b m_ib``; in units of ``exp(M_i)`` block ``b`` has pilot mass
    ``W~_ib = W_ib exp(m_ib - M_i)`` and true mass in ``W~_ib exp(+-eps_ib)``; the
    normaliser is at least ``D_i >= sum_b W~_ib exp(-eps_ib)`` (the blocks after
    ``nbc`` only add to it). Dropping block ``b`` (values replaced by the centroid
    ``vc_b``, mass by the midpoint ``W~_ib cosh eps_ib``) costs row ``i`` at most

        c_ib = (W~_ib sinh(eps_ib) ||vc_b - y_i|| + exp(eps_ib) min(sig_b sqrt(S2~_ib),
               T~_ib)) / D_i

    (:func:`_row_bounds`), with the proxy ``y0_i`` (every block by its centroid) for
    ``y_i``. Blocks are dropped in increasing order of ``sum_i c_ib`` while the rows'
    summed costs ``E_i`` satisfy ``||E||_2 <= tau Y0``, ``Y0^2 = sum_i sum_b p_ib
    vrms2_b`` (mean squared value norm of the blocks under the pilot's weights ``p``:
    an optimistic proxy of ``||Y||_F^2``; :func:`_refine` reads more blocks if the
    actual bound is too large).

    ``bw``, ``bs2``, ``bt`` are rescaled in place to units of ``exp(M_i)``. Writes
    ``keep (Gk, nbc)`` (1 = read), the centroid partial ``cpart (Gk, R, 2 + dv)``
    (:func:`_centroid_part`) and the segments ``seg (Gk, S, 2)``, ``nseg (Gk,)``.
    """
    Gk, _, R = bm.shape
    for gk in range(Gk):
        M = np.full(R, -np.inf)
        for b in range(nbc):
            for i in range(R):
                M[i] = max(M[i], bm[gk, b, i])
        dlo = np.zeros(R)
        z0 = np.zeros(R)
        rms = np.zeros(R)
        x = np.empty((R, nbc))
        for b in range(nbc):
            for i in range(R):
                # In units of exp(M_i) from here on (in place).
                sc = np.exp(bm[gk, b, i] - M[i])
                w = bw[gk, b, i] * sc
                bw[gk, b, i] = w
                bs2[gk, b, i] *= sc * sc
                bt[gk, b, i] *= sc
                dlo[i] += w / bex[gk, b, i]
                z0[i] += w
                rms[i] += w * vrms2[gk, b]
                x[i, b] = w
        vcg = vc[gk, :nbc]
        y0 = _mm(x, vcg)
        rms2 = 0.0
        cen2 = 0.0
        for i in range(R):
            rms2 += rms[i] / z0[i]
            for e in range(y0.shape[1]):
                y0[i, e] /= z0[i]
                cen2 += y0[i, e] * y0[i, e]
        ynorm2 = rms2**mix * cen2 ** (1.0 - mix)
        cost = np.empty((nbc, R))
        _costs(bw, bs2, bt, bex, sig, vrms2, B, gk, keep, False, _dist(vcg, y0), dlo, cost)
        key = np.empty(nbc)
        for b in range(nbc):
            t = 0.0
            for i in range(R):
                t += cost[b, i]
            key[b] = t
        order = np.argsort(key)
        budget2 = tau * tau * ynorm2
        err = np.zeros(R)
        for b in range(nbc):
            keep[gk, b] = 1
        for idx in range(nbc):
            b = order[idx]
            s2 = 0.0
            for i in range(R):
                v = err[i] + cost[b, i]
                s2 += v * v
            if s2 > budget2:
                break
            for i in range(R):
                err[i] += cost[b, i]
            keep[gk, b] = 0
        for i in range(R):
            cpart[gk, i, 0] = M[i]
        nseg[gk] = 0
        _build_segments(keep, gk, nbc, t_len, B, chunk, True, seg, nseg)
    _centroid_part(bw, bex, vc, keep, cpart)


@njit(cache=True, nogil=True, error_model="numpy")
def _refine(
    bw, bs2, bt, bex, vc, sig, vrms2, B, keep, cpart, members, nq, out, lse, target, add, seps
):
    """Blocks to read next when the certified bound of a step exceeds its target.

    With the actual output ``y~`` and normaliser lower bound (as :func:`_row_bounds`),
    un-drops, per key/value head, the blocks of largest ``sum_i c_ib`` until
    ``||E_gk||_2 <= target[gk]``. Writes ``add (Gk, nbc)`` (1 = newly read); returns the
    number of blocks added.
    """
    Gk, nbc, R = bw.shape
    total = 0
    for gk in range(Gk):
        dlo = _actual_dlo(bw, bex, keep, cpart, members, nq, gk, lse, seps)
        y = _rows(out, members, nq, gk)
        cost = np.empty((nbc, R))
        _costs(bw, bs2, bt, bex, sig, vrms2, B, gk, keep, True, _dist(vc[gk, :nbc], y), dlo, cost)
        key = np.zeros(nbc)
        err = np.zeros(R)
        for b in range(nbc):
            add[gk, b] = 0
            for i in range(R):
                c = cost[b, i] if dlo[i] > 0 else np.inf
                key[b] += c
                err[i] += c
        order = np.argsort(-key)
        for idx in range(nbc):
            s2 = 0.0
            for i in range(R):
                s2 += err[i] * err[i]
            if s2 <= target[gk] * target[gk]:
                break
            b = order[idx]
            if keep[gk, b] == 1:
                break
            add[gk, b] = 1
            total += 1
            for i in range(R):
                err[i] -= cost[b, i]
    return total


# ------------------------------------------------------------------ decode: kept segments


@njit(cache=True, nogil=True)
def _segment_task(q, k, v, members, nq, t, S, scale, causal, offset, seg, tiles, pacc, pm, pl, pr):
    """Exact partial attention of segment ``t = gk * S + s`` (``seg[gk, s]`` keys).

    The arithmetic of the exact split-key task (:func:`attention._kernels.exact.
    _split_task`) on keys ``j0 <= j < j1``: scores, causal limit (bottom-right),
    online softmax of one tile, ``P V`` on the register tiles (or BLAS).
    """
    d = q.shape[2]
    dv = v.shape[2]
    gs = members.shape[1]
    R = gs * nq
    gk = t // S
    c = t - gk * S
    j0 = seg[gk, c, 0]
    j1 = seg[gk, c, 1]
    w = j1 - j0
    kc = k[gk, j0:j1]
    qb = np.empty((R, d), dtype=q.dtype)
    for a in range(gs):
        g = members[gk, a]
        for i in range(nq):
            for e in range(d):
                qb[a * nq + i, e] = q[g, i, e] * scale
    s = np.empty((R, w), dtype=q.dtype)
    if R <= _SMALL_ROWS:
        _qk_small(qb, kc, s)
    else:
        np.dot(qb, kc.T, s)
    if causal:
        for a in range(gs):
            for i in range(nq):
                srow = s[a * nq + i]
                for jj in range(max(i + offset + 1 - j0, 0), w):
                    srow[jj] = -np.inf
    mrow = np.full(R, -np.inf)
    lrow = np.zeros(R)
    alpha = np.ones(R)
    _softmax_tile(s, mrow, lrow, alpha)
    pv = np.empty((R, dv), dtype=q.dtype)
    if tiles and dv % (64 // q.itemsize) == 0:
        _gemm_tiles(
            s.reshape(-1),
            v[gk].reshape(-1),
            pv.reshape(-1),
            0,
            j0 * dv,
            0,
            R,
            w,
            dv,
            w,
            dv,
            dv,
            False,
        )
    else:
        np.dot(s, v[gk, j0:j1], pv)
    pr[t] = _nonfinite_probe(pv)
    for i in range(R):
        pm[gk, c, i] = mrow[i]
        pl[gk, c, i] = lrow[i]
        for e in range(dv):
            pacc[gk, c, i, e] = pv[i, e]


def _segments_blocks(
    q,
    k,
    v,
    members,
    nq,
    scale,
    causal,
    offset,
    seg,
    nseg,
    tiles,
    pacc,
    pm,
    pl,
    pr,
    counter,
    workers,
):
    """Exact partials of every segment (parallel tasks ``gk * S + s``).

    ``pacc (Gk, S, R, dv)``, ``pm / pl (Gk, S, R)`` (float64): slot ``s < nseg[gk]``
    holds segment ``s`` of head ``gk``; the other slots are set empty (``-inf``, 0).
    ``pr (Gk * S,)``: NaN where a partial is not finite (0 otherwise).
    """
    Gk = seg.shape[0]
    S = seg.shape[1]
    R = pm.shape[2]
    for _ in prange(workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * S:
                break
            gk = t // S
            if t - gk * S >= nseg[gk]:
                for i in range(R):
                    pm[gk, t - gk * S, i] = -np.inf
                    pl[gk, t - gk * S, i] = 0.0
                continue
            _segment_task(
                q, k, v, members, nq, t, S, scale, causal, offset, seg, tiles, pacc, pm, pl, pr
            )


_segments_kernel = njit(cache=True, nogil=True, parallel=True)(_segments_blocks)


@njit(cache=True, nogil=True, error_model="numpy")
def _merge(parts, cpart, members, nq, out, lse):
    """Merge lists of segment partials and the centroid partial into ``out``, ``lse``.

    ``parts``: a tuple of ``(pacc, pm, pl)`` triples (:func:`_segments_blocks`); they
    are stacked with the centroid partial (empty if its mass is 0) and merged by
    :func:`attention._kernels.exact._merge_split` (log-sum-exp, fixed order).
    """
    Gk = cpart.shape[0]
    R = cpart.shape[1]
    dv = cpart.shape[2] - 2
    S = 1
    for p in parts:
        S += p[1].shape[1]
    acc = np.empty((Gk, S, R, dv))
    pm = np.empty((Gk, S, R))
    pl = np.empty((Gk, S, R))
    s0 = 0
    for p in parts:
        n = p[1].shape[1]
        for gk in range(Gk):
            for s in range(n):
                for i in range(R):
                    pm[gk, s0 + s, i] = p[1][gk, s, i]
                    pl[gk, s0 + s, i] = p[2][gk, s, i]
                    if p[2][gk, s, i] > 0:
                        for e in range(dv):
                            acc[gk, s0 + s, i, e] = p[0][gk, s, i, e]
        s0 += n
    for gk in range(Gk):
        for i in range(R):
            mass = cpart[gk, i, 1]
            pm[gk, S - 1, i] = cpart[gk, i, 0] if mass > 0 else -np.inf
            pl[gk, S - 1, i] = mass
            for e in range(dv):
                acc[gk, S - 1, i, e] = cpart[gk, i, 2 + e]
    _merge_split(acc, pm, pl, members, nq, out, lse)


# ------------------------------------------------------------------ decode: bound


@njit(cache=True, nogil=True, error_model="numpy")
def _row_bounds(
    bw, bs2, bt, bex, vc, sig, vrms2, B, keep, cpart, members, nq, out, lse, e_row, seps
):
    """Certified error of every stacked row: ``e_row (Gk, R)``.

    With ``y~ = (N_K + sum_{b dropped} W^_b vc_b) / D~`` (``W^_b = W~_b cosh eps_b``,
    ``D~ = D_K + sum W^_b``, ``D_K`` the exact kept mass) and the true
    ``y = (N_K + sum_b (W_b vc_b + w_b^T U_b)) / D`` (``U_b`` the centred values):

        y - y~ = [sum_b (W_b - W^_b)(vc_b - y~) + sum_b w_b^T U_b] / D,

    ``|W_b - W^_b| <= W~_b sinh eps_b``, ``||w_b^T U_b|| <= exp(eps_b)
    min(sig_b sqrt(S2~_b), T~_b)`` and ``D >= D~ - sum_b W~_b sinh eps_b``
    (:func:`_actual_dlo`).
    """
    Gk, nbc, R = bw.shape
    for gk in range(Gk):
        dlo = _actual_dlo(bw, bex, keep, cpart, members, nq, gk, lse, seps)
        y = _rows(out, members, nq, gk)
        cost = np.empty((nbc, R))
        dist = _dist(vc[gk, :nbc], y)
        _costs(bw, bs2, bt, bex, sig, vrms2, B, gk, keep, True, dist, np.ones(R), cost)
        for i in range(R):
            num = 0.0
            for b in range(nbc):
                num += cost[b, i]
            if num == 0.0:
                e_row[gk, i] = 0.0
            else:
                e_row[gk, i] = num / dlo[i] if dlo[i] > 0 else np.inf


# ------------------------------------------------------------------ fused step kernels
# Each Numba call costs ~1 us per array argument to dispatch and each parallel region a
# barrier: a decode step runs as two calls (pilot + selection; segments + merge +
# bounds), the refinement rounds (rare) through the separate kernels above.


def _pilot_select_impl(
    qs,
    codes,
    qscale,
    qres,
    rho,
    udev,
    nbc,
    B,
    per_task,
    tiles,
    bm,
    bw,
    bs2,
    bt,
    beps,
    bex,
    vc,
    sig,
    vrms2,
    tau,
    mix,
    t_len,
    chunk,
    keep,
    seg,
    nseg,
    cpart,
    counter,
    workers,
):
    """:func:`_pilot_blocks` (parallel) then :func:`_select` (serial), one call."""
    Gk = qs.shape[0]
    nt = -(-nbc // per_task)
    for _ in prange(workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * nt:
                break
            gk = t // nt
            c = t - gk * nt
            b0 = c * per_task
            b1 = min(nbc, b0 + per_task)
            _pilot_task(
                qs,
                codes,
                qscale,
                qres,
                rho,
                udev,
                gk,
                b0,
                b1,
                B,
                tiles,
                bm,
                bw,
                bs2,
                bt,
                beps,
                bex,
            )
    _select(
        bm,
        bw,
        bs2,
        bt,
        bex,
        vc,
        sig,
        vrms2,
        tau,
        mix,
        nbc,
        t_len,
        B,
        chunk,
        keep,
        seg,
        nseg,
        cpart,
    )


_pilot_select = njit(cache=True, nogil=True, parallel=True, error_model="numpy")(
    _pilot_select_impl
)


def _attend_bound_impl(
    q,
    k,
    v,
    members,
    nq,
    scale,
    causal,
    offset,
    seg,
    nseg,
    tiles,
    pacc,
    pm,
    pl,
    pr,
    counter,
    workers,
    cpart,
    out,
    lse,
    nbc,
    bw,
    bs2,
    bt,
    bex,
    vc,
    sig,
    vrms2,
    B,
    keep,
    e_row,
    kmax,
    vmax,
    u,
    sums,
    seps,
):
    """Segments (parallel), merge, row bounds (if ``nbc``) and the rounding allowance.

    ``sums`` receives ``(sum e_row^2, sum pad_i^2, ||out||_F^2)`` with the per-row
    rounding allowance of :func:`_pad_sums` (``u``: the machine epsilon of the cache's
    dtype; sums of at most the longest segment in it), ``kmax``/``vmax`` the largest
    key and value norms of each head; ``seps (Gk, R)`` the bound on the rounding of
    each stacked row's log-weights (for the normaliser bound of :func:`_actual_dlo`).
    """
    Gk = seg.shape[0]
    S = seg.shape[1]
    R = pm.shape[2]
    for _ in prange(workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * S:
                break
            gk = t // S
            if t - gk * S >= nseg[gk]:
                for i in range(R):
                    pm[gk, t - gk * S, i] = -np.inf
                    pl[gk, t - gk * S, i] = 0.0
                continue
            _segment_task(
                q, k, v, members, nq, t, S, scale, causal, offset, seg, tiles, pacc, pm, pl, pr
            )
    _merge(((pacc, pm, pl),), cpart, members, nq, out, lse)
    e2 = 0.0
    if nbc > 0:
        _row_bounds(
            bw, bs2, bt, bex, vc, sig, vrms2, B, keep, cpart, members, nq, out, lse, e_row, seps
        )
        for gk in range(Gk):
            for i in range(R):
                e2 += e_row[gk, i] * e_row[gk, i]
    chain = 1
    for gk in range(Gk):
        for si in range(nseg[gk]):
            chain = max(chain, seg[gk, si, 1] - seg[gk, si, 0])
    # m: the capacity (>= the cached keys) bounds the keys and float64 steps
    _pad_sums(q, out, members.shape[1], kmax, vmax, scale, u, k.shape[1], chain, sums)
    sums[0] = e2


@njit(cache=True, nogil=True, error_model="numpy")
def _pad_sums(q, out, gs, kmax, vmax, scale, eps, m, chain, sums):
    """``sums[1:3] = (sum_i pad_i^2, ||out||_F^2)``: the rounding allowance of every row.

    ``pad_i``: the proven worst-case row allowance
    :func:`attention._kernels.rounding._row_allowance` (as
    :func:`attention.adaptive._rounding_pad`) with ``sigma_i = scale ||q_i|| max_j
    ||k_j||``, ``u = eps / 2`` the unit roundoff of the cache's dtype, ``m`` keys and
    sums of at most ``chain`` terms in that dtype (the key segments / chunks, merged in
    float64); ``kmax`` / ``vmax`` the largest key and value norms of each key/value
    head, ``gs`` query heads per key/value head.
    """
    G, _, dv = out.shape
    nq = q.shape[1]
    d = q.shape[2]
    u = 0.5 * eps
    steps = 2.0 * ((m + 63) // 64) + 4.0
    p2 = 0.0
    y2 = 0.0
    for g in range(G):
        gk = g // gs
        for i in range(nq):
            qn = 0.0
            for e in range(d):
                x = np.float64(q[g, i, e])
                qn += x * x
            yn = 0.0
            for e in range(dv):
                x = np.float64(out[g, i, e])
                yn += x * x
            y2 += yn
            yn = np.sqrt(yn * (1.0 + 2.0 * dv * _U64))
            sig = scale * np.sqrt(qn * (1.0 + 2.0 * d * _U64)) * kmax[gk] * (1.0 + 4.0 * _U64)
            pad = _row_allowance(
                u, u, float(d), float(chain), steps, sig, vmax[gk], yn, float(m), float(dv)
            )
            p2 += pad * pad
    sums[1] = p2
    sums[2] = y2


_attend_bound = njit(cache=True, nogil=True, parallel=True, error_model="numpy")(
    _attend_bound_impl
)
