"""Vectorisable exponential for Numba loops (shared by the attention and kernel kernels).

Numba's ``np.exp`` compiles to a scalar libm call that LLVM cannot vectorise. The
functions here compute ``exp(x)`` for ``x <= 0`` with a Cody-Waite range reduction
``x = k ln 2 + r`` (``|r| <= ln(2)/2``), a Taylor polynomial in ``r`` and ``2^k``
obtained by shifting the bit pattern of the rounded ``x log2(e) + bias``; they are
inlined into the calling loop (``inline="always"``), which LLVM then vectorises.

Accuracy, measured on grids of 2e6 points of ``[-745, 0]`` (float64) and ``[-87, 0]``
(float32): relative error <= 2.0 ulp (float64, degree 13) and 0.9 ulp (float32,
degree 7); results below ``exp(-708)`` (float64) / ``exp(-87)`` (float32), ``-inf``
included, are exactly 0.

The exact-attention prefill uses an explicit 512-bit variant (:data:`_exp_sum_vec`,
:func:`_emit_exp_vec`): Chebyshev polynomials of degree 6 / 11 in place of the Taylor
polynomials, ``2^k`` and the underflow cut by one zero-masked ``vscalef`` on AVX-512
CPUs (portable LLVM IR elsewhere, tested). Measured against ``np.exp`` in extended
precision on 2.1e6 points (a grid of ``[-100, 0]`` / ``[-800, 0]``, uniform random
points, ``[-1e-3, 0]`` and the cut's neighbours): at most 0.98 ulp (float32) and 0.92
ulp (float64) of the result; every float32 input of ``[-87, 0]`` (1.1e9 values) is
checked by ``benchmarks/attention_exact.py --exp-exhaustive``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Cody-Waite split of ln 2 (the high part has trailing zero bits, so k * LN2_HI is exact).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634
# Adding 1.5 * 2^52 + 1023 rounds x log2(e) (|x| < 2^51) to an integer k held in the
# low mantissa bits as k + 1023: shifting the bit pattern left by 52 gives 2^k.
_MAGIC = 6755399441055744.0 + 1023.0
_EXP_MIN = -708.0  # exp(-708) ~ 3e-308 is still normal; below, the result is set to 0

_LN2_HI_F = np.float32(0.693145751953125)
_LN2_LO_F = np.float32(1.428606765330187045e-06)
_LOG2E_F = np.float32(1.4426950408889634)
_MAGIC_F = np.float32(12582912.0 + 127.0)  # 1.5 * 2^23 + 127, shift by 23
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


@intrinsic
def _pow2_bits(typingctx, t):
    """``2^k`` from ``t = k + bias + 1.5 * 2^p`` (float32: p = 23, float64: p = 52)."""
    if t == types.float32:
        ity, shift, fty = ir.IntType(32), 23, ir.FloatType()
    else:
        ity, shift, fty = ir.IntType(64), 52, ir.DoubleType()

    def codegen(context, builder, sig, args):
        i = builder.bitcast(args[0], ity)
        i = builder.shl(i, ir.Constant(ity, shift))
        return builder.bitcast(i, fty)

    return t(t), codegen


@intrinsic
def _add_reassoc(typingctx, a, b):
    """Add with the ``reassoc`` flag, which lets LLVM vectorise a running sum."""

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc", "nsz"))

    return a(a, b), codegen


@njit(inline="always", fastmath={"contract"})
def _exp_f64(x):
    """``exp(x)`` for float64 ``x <= 0`` (0 below ``-708``): degree-13 Taylor by Estrin.

    The tail ``1/2 + r/6 + ... + r^11/13!`` is evaluated by Estrin's scheme, then
    ``1 + (r + r^2 tail)`` so that the only large rounding is the final addition
    (truncation < 2e-16 on ``|r| <= ln(2)/2``).
    """
    xc = max(x, _EXP_MIN)
    t = xc * _LOG2E + _MAGIC
    fk = t - _MAGIC
    r = (xc - fk * _LN2_HI) - fk * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    a1 = 0.5 + r * (1.0 / 6.0)
    a2 = 1.0 / 24.0 + r * (1.0 / 120.0)
    a3 = 1.0 / 720.0 + r * (1.0 / 5040.0)
    a4 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
    a5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0)
    a6 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0)
    tail = (a1 + r2 * a2) + r4 * ((a3 + r2 * a4) + r4 * (a5 + r2 * a6))
    p = (1.0 + (r + r2 * tail)) * _pow2_bits(t)
    return p if x >= _EXP_MIN else 0.0


@njit(inline="always", fastmath={"contract"})
def _exp_f32(x):
    """``exp(x)`` for float32 ``x <= 0`` (0 below ``-87``): degree-7 Taylor by Horner."""
    c1, c2, c3, c4, c5, c6, c7 = _C_F
    xc = max(x, _EXP_MIN_F)
    t = xc * _LOG2E_F + _MAGIC_F
    fk = t - _MAGIC_F
    r = (xc - fk * _LN2_HI_F) - fk * _LN2_LO_F
    tail = c7 * r + c6
    tail = tail * r + c5
    tail = tail * r + c4
    tail = tail * r + c3
    tail = tail * r + c2
    p = (c1 + (r + (r * r) * tail)) * _pow2_bits(t)
    return p if x >= _EXP_MIN_F else _ZERO_F


# ------------------------------------------------------- 512-bit row kernel (AVX-512)

# Polynomials of the AVX-512 row kernel: exp(r) ~ 1 + r + r^2 h(r) on |r| <= ln(2)/2,
# h the Chebyshev fit (mpmath.chebyfit, 40 digits) of (exp(r) - 1 - r) / r^2, rounded to
# the working precision, highest degree first. Relative error of the polynomial with
# the rounded coefficients (evaluated in 40 digits on 4001 points): 1.1e-8 = 0.09 eps
# (float32, degree 6) and 1.6e-17 = 0.07 eps (float64, degree 11); the Taylor
# polynomials above need degree 7 and 13 for the same accuracy.
_H_F32 = (
    0.0013926184037700295,
    0.008363178931176662,
    0.041666556149721146,
    0.16666576266288757,
    0.5,
)
_H_F64 = (
    2.510038549551032e-08,
    2.7620088445409746e-07,
    2.7557268459997064e-06,
    2.4801521295954376e-05,
    0.00019841269863053618,
    0.0013888888917213717,
    0.008333333333330062,
    0.04166666666662413,
    0.16666666666666669,
    0.5000000000000001,
)


def _has_avx512() -> bool:
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - other llvmlite versions: portable code
        return False


_HAS_AVX512 = _has_avx512()


def _make_exp_sum(scalef):
    """Build the intrinsic ``exp_sum(s, off, w, mx)`` (see :data:`_exp_sum_vec`).

    ``scalef``: form ``p 2^k`` with the AVX-512 instruction ``vscalefps``/``vscalefpd``
    (zero-masked); otherwise with portable LLVM IR (the exponent bits from the rounding
    trick, a multiply and a select), which LLVM splits into the host's vector width.
    """

    @intrinsic
    def exp_sum(typingctx, s, off, w, mx):
        if not (isinstance(s, types.Array) and s.dtype in (types.float32, types.float64)):
            return None
        return s.dtype(s, off, w, mx), _exp_sum_codegen(s.dtype == types.float32, scalef)

    return exp_sum


def _emit_exp_vec(builder, f32, use_scalef, x, lanes=None):
    """Emit ``exp(x)`` for a 512-bit vector ``x <= 0`` (LLVM IR); see :data:`_exp_sum_vec`.

    ``lanes``: optional ``<vl x i1>`` mask of the lanes to compute (the others are 0,
    like the lanes with ``x`` below ``-87`` / ``-708`` or NaN).
    """
    i32 = ir.IntType(32)
    fty = ir.FloatType() if f32 else ir.DoubleType()
    vl = 16 if f32 else 8
    bits = 32 if f32 else 64
    vty = ir.VectorType(fty, vl)
    ivty = ir.VectorType(ir.IntType(bits), vl)
    fma = builder.module.declare_intrinsic(
        f"llvm.fma.v{vl}f{bits}", fnty=ir.FunctionType(vty, [vty, vty, vty])
    )
    if f32:
        log2e, magic, hi, lo, lim, hs, bias, mant = (
            1.4426950408889634,
            12582912.0,
            -0.693145751953125,
            -1.428606765330187045e-06,
            -87.0,
            _H_F32,
            127,
            23,
        )
    else:
        log2e, magic, hi, lo, lim, hs, bias, mant = (
            1.4426950408889634,
            6755399441055744.0,
            -6.93147180369123816490e-01,
            -1.90821492927058770002e-10,
            -708.0,
            _H_F64,
            1023,
            52,
        )

    def splat(c):
        return ir.Constant(vty, [ir.Constant(fty, c)] * vl)

    zero = splat(0.0)
    one = splat(1.0)
    keep = builder.fcmp_ordered(">=", x, splat(lim))
    if lanes is not None:
        keep = builder.and_(keep, lanes)
    t = builder.call(fma, [x, splat(log2e), splat(magic)])
    fk = builder.fsub(t, splat(magic))
    r = builder.call(fma, [fk, splat(hi), x])
    r = builder.call(fma, [fk, splat(lo), r])
    q = splat(hs[0])
    for c in hs[1:]:
        q = builder.call(fma, [q, r, splat(c)])
    q = builder.call(fma, [q, r, one])
    p = builder.call(fma, [q, r, one])
    if use_scalef:
        sfx = "ps" if f32 else "pd"
        mty = ir.IntType(vl)
        scalef = builder.module.declare_intrinsic(
            f"llvm.x86.avx512.mask.scalef.{sfx}.512",
            fnty=ir.FunctionType(vty, [vty, vty, vty, mty, i32]),
        )
        return builder.call(scalef, [p, fk, zero, builder.bitcast(keep, mty), ir.Constant(i32, 4)])
    # 2^k: the low bits of t hold k (two's complement); add the exponent bias and shift
    # into the exponent field (k + bias is in [1, bias] where kept).
    e = builder.add(builder.bitcast(t, ivty), ir.Constant(ivty, [bias] * vl))
    e = builder.shl(e, ir.Constant(ivty, [mant] * vl))
    return builder.select(keep, builder.fmul(p, builder.bitcast(e, vty)), zero)


def _exp_sum_codegen(f32, use_scalef):
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        fty = ir.FloatType() if f32 else ir.DoubleType()
        vl = 16 if f32 else 8
        bits = 32 if f32 else 64
        vty = ir.VectorType(fty, vl)
        bvty = ir.VectorType(ir.IntType(1), vl)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        offv, wv, mxv = args[1], args[2], args[3]
        if sig.args[3] != sig.args[0].dtype:
            mxv = context.cast(builder, mxv, sig.args[3], sig.args[0].dtype)

        def splat(c):
            return ir.Constant(vty, [ir.Constant(fty, c)] * vl)

        def bcast(x):
            undef = ir.Constant(vty, ir.Undefined)
            x = builder.insert_element(undef, x, ir.Constant(i32, 0))
            return builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(i32, vl), [0] * vl))

        mload = builder.module.declare_intrinsic(
            f"llvm.masked.load.v{vl}f{bits}.p0",
            fnty=ir.FunctionType(vty, [vty.as_pointer(), i32, bvty, vty]),
        )
        mstore = builder.module.declare_intrinsic(
            f"llvm.masked.store.v{vl}f{bits}.p0",
            fnty=ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, bvty]),
        )
        mvec = bcast(mxv)
        zero = splat(0.0)

        def exp_vec(sv, lanes):
            return _emit_exp_vec(builder, f32, use_scalef, builder.fsub(sv, mvec), lanes)

        base = builder.gep(data, [offv])
        nfull = builder.sdiv(wv, ir.Constant(i64, vl))
        entry = builder.block
        loop = builder.append_basic_block("exprow_loop")
        tail = builder.append_basic_block("exprow_tail")
        builder.cbranch(builder.icmp_signed(">", nfull, ir.Constant(i64, 0)), loop, tail)
        builder.position_at_end(loop)
        i = builder.phi(i64)
        i.add_incoming(ir.Constant(i64, 0), entry)
        acc = builder.phi(vty)
        acc.add_incoming(zero, entry)
        ptr = builder.bitcast(
            builder.gep(base, [builder.mul(i, ir.Constant(i64, vl))]), vty.as_pointer()
        )
        res = exp_vec(builder.load(ptr, align=4), None)
        builder.store(res, ptr, align=4)
        acc1 = builder.fadd(acc, res)
        i1 = builder.add(i, ir.Constant(i64, 1))
        lend = builder.block
        i.add_incoming(i1, lend)
        acc.add_incoming(acc1, lend)
        builder.cbranch(builder.icmp_signed("<", i1, nfull), loop, tail)
        builder.position_at_end(tail)
        accf = builder.phi(vty)
        accf.add_incoming(zero, entry)
        accf.add_incoming(acc1, lend)
        rem = builder.sub(wv, builder.mul(nfull, ir.Constant(i64, vl)))
        remv = builder.trunc(rem, i32)
        idx = ir.Constant(ir.VectorType(i32, vl), list(range(vl)))
        undef_i = ir.Constant(ir.VectorType(i32, vl), ir.Undefined)
        remb = builder.insert_element(undef_i, remv, ir.Constant(i32, 0))
        remb = builder.shuffle_vector(remb, undef_i, ir.Constant(ir.VectorType(i32, vl), [0] * vl))
        lanes = builder.icmp_signed("<", idx, remb)
        tptr = builder.bitcast(
            builder.gep(base, [builder.mul(nfull, ir.Constant(i64, vl))]), vty.as_pointer()
        )
        sv = builder.call(mload, [tptr, ir.Constant(i32, 4), lanes, zero])
        res = exp_vec(sv, lanes)
        builder.call(mstore, [res, tptr, ir.Constant(i32, 4), lanes])
        accf = builder.fadd(accf, res)
        # Horizontal sum in a fixed order (halving the vector).
        width = vl
        while width > 1:
            half = width // 2
            lo_v = builder.shuffle_vector(
                accf, accf, ir.Constant(ir.VectorType(i32, half), list(range(half)))
            )
            hi_v = builder.shuffle_vector(
                accf, accf, ir.Constant(ir.VectorType(i32, half), list(range(half, width)))
            )
            accf = builder.fadd(lo_v, hi_v)
            width = half
        return builder.extract_element(accf, ir.Constant(i32, 0))

    return codegen


_exp_sum_vec = _make_exp_sum(_HAS_AVX512)
_exp_sum_vec.__doc__ = """Set ``s[off + j] = exp(s[off + j] - mx)`` for ``j < w``; return the sum.

Explicit 512-bit vectors: per vector of 16 float32 / 8 float64 entries, ``x = s - mx``,
``k = rint(x log2 e)`` (the ``1.5 * 2^p`` rounding trick), ``r = (x - k ln2_hi) - k
ln2_lo`` (fused), ``p = 1 + r + r^2 h(r)`` by Horner in fused multiply-adds (degree 6 /
11, see ``_H_F32`` / ``_H_F64``) and ``p 2^k``; entries with ``x`` below ``-87`` /
``-708`` (``-inf`` and NaN from masked keys included) become exactly 0. On AVX-512
CPUs ``p 2^k`` is one zero-masked ``vscalefps``/``vscalefpd``: 14 (float32) and 19
(float64) vector operations per vector, against 20 and 26 for the loop over
:func:`_exp_f32` / :func:`_exp_f64` vectorised by LLVM (clamp, Estrin or a longer
Horner polynomial, shift, multiply, select); measured on one thread with the row in
L1, 0.136 against 0.215 ns per entry (float32) and 0.37 against 0.54 (float64).
Elsewhere the same polynomial with portable IR (:func:`_make_exp_sum`). The last partial
vector is read and written with masked loads and stores. The sum runs in one vector
accumulator in a fixed order (deterministic) and is returned in the dtype of ``s``.
"""
