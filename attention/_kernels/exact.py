"""Numba kernels of exact attention: the FlashAttention online-softmax recurrence on CPU.

Two kernels share the same per-tile arithmetic.

**Prefill** (:data:`_attend_kernel`). For one query slice ``g`` and one block of (at
most ``bq``) query rows, the kernel walks over the keys in blocks of ``bk`` and keeps,
per row, the running maximum ``mx``, the running normaliser ``l`` and the running
unnormalised output ``acc`` [1]_:

* ``S = (scale * Q_b) K_j^T`` (one BLAS GEMM), masked entries set to ``-inf``;
* ``mx' = max(mx, rowmax(S))``, ``P = exp(S - mx')``, ``alpha = exp(mx - mx')``;
* ``l' = alpha * l + rowsum(P)``, ``acc' = alpha * acc + P V_j`` (second GEMM);

and finally ``out = acc / l``, ``lse = mx + log(l)``. Rows that see no key end with
``mx = -inf`` and ``l = 0``: their output is 0 and their lse is ``-inf``. With
``causal``, key blocks above the diagonal of every row of the block are skipped and
only blocks that cross the diagonal are masked entry by entry.

**Decode / split keys** (:data:`_split_kernel`, flash-decoding [2]_). When a key/value
slice has few query rows (``R`` = query heads of a grouped-query group x query rows),
the query rows of all heads that share the slice are stacked into one ``R x d`` block,
the keys are cut into fixed chunks, and every (key/value slice, chunk) pair is one
parallel task that reads its ``K``/``V`` chunk once for all ``R`` rows and writes a
partial ``(mx, l, acc)``; a serial loop then merges the partials of each row in
chunk order (the log-sum-exp merge of :func:`attention.exact.merge_partials`). With at
most 8 stacked rows ``S`` is formed by groups of 16 (float32) / 8 (float64) keys
(:func:`_qk_rows`: one vector accumulator per key, then a transposing reduction tree
that leaves key ``i``'s score in lane ``i``; one thread, 3 rows x 1024 keys, ``d =
64``: 6.9 against 12.5 ns per key in float32 for a loop that reduces each dot product
to a scalar, 12.8 against 20.8 in float64; BLAS packs its operands on every call: 2.2x
slower than that loop at 3 rows x 512 keys). The whole decode call (9 query / 3
key-value heads, float32, median of 40 calls at load 2.6-3.1) went from 0.525 to 0.436
ms at ``m = 8192``, 1.705 to 1.248 ms at 32768 and 12.1 to 8.5 ms at 131072; ``P V``
runs on the register tiles of the prefill kernel (3-, 2- and 1-row tiles read each
value row once for all stacked rows; BLAS first packs the whole chunk: one thread, 9
query / 3 key-value heads, CPU time 8-15% less at ``m`` = 8192-131072), or on BLAS
without AVX-512. Each task also reports whether its chunk held a NaN or inf (from its
scores and ``P V``, which a non-finite key or value entry always makes non-finite), so
decoding reads ``K`` and ``V`` once: a separate validation pass read them a second time
and took as long as the kernel.

Decode profile (9 query / 3 key-value heads, 3 stacked rows, ``d = 64``, float32, AMD
EPYC Zen 4, thread CPU time of one thread): per key of a 1024-key chunk held in L2,
``Q K^T`` 5.3-6.9 ns, ``P V`` 3.4 ns, the softmax 0.65 ns, the rest (probes, partials)
about 1.3 ns: 12.2 ns, i.e. 42 GB/s of ``K``/``V`` per thread. ``Q K^T`` is bound by
its arithmetic, not its loads: a variant that loads each key vector once for all three
rows (3 rows x 5 keys per reduction tree) took the same time (5.27 against 5.25 ns).
From DRAM one thread streams the chunks at 22.5 ns per key (22.7 GB/s, more than a
plain one-thread read of the same session, 8.9-15.5 GB/s), but two threads reach only
60-65% of a two-thread read of the same bytes (``m = 32768``, ``K``/``V`` evicted from
the last-level cache before each call, other processes below 0.02 cores: 21.6-24.6
against 37.8-46.5 GB/s): the arithmetic and the memory reads of a core overlap
poorly. Tried, in the same cold rounds at ``m`` = 32768 and 131072, and not kept:
software prefetch (``llvm.prefetch``) of ``K`` 64 keys ahead into L1, 0.90-1.0x the
speed; of the chunk's ``V`` rows into L2 while ``Q K^T`` runs, 0.85-0.94x; both,
0.74-0.85x; ``K`` and ``V`` consumed together in 256-key sub-blocks (online softmax
inside the chunk) with the next sub-block prefetched, 0.71-0.74x, without the prefetch
0.93-0.99x (1.1-1.2x from the last-level cache at ``m = 8192``); chunks of 1024, 2048
or 4096 keys within the run-to-run spread (6%). With 16 new tokens (48 stacked rows)
the call is compute-bound (24 flops per byte of ``K``/``V``): per 1024-key chunk on
one thread ``Q K^T`` on BLAS 91 us, ``P V`` on the register tiles 56 us, the softmax
11 us; packing the chunk's ``K^T`` for the register tiles would take 26 + 58 us (7%
less, not done).

Masks: a key block (chunk) that the mask hides from every row of the query block is
skipped before its GEMM. A mask broadcast along the query axis (key padding of shorter
sequences in a batch, left or right) is scanned once per call and mask slice for the
key span it shows (:func:`_mask_limits`); key blocks outside the span are then never
visited, and when the mask is exactly that span (boolean, or additive with 0 inside)
it is applied from the span's ends like the causal limit, without reading the mask per
entry. Measured (one thread, 4 sequences of 4096/3072/2048/1024 tokens padded to
4096, 4 heads, ``d = 64``, float32): a key-padding mask costs 1.32-1.44x the four
unpadded calls, which is the work of the padded query rows it does not hide (1.33x;
causal 1.51-1.70x against 1.67x), no padding work; a query-and-key padding mask of
shape ``(B, 1, n, n)`` 1.23-1.33x (causal 1.31-1.56x), from the per-entry mask reads
of the blocks its rows share.

Per-tile arithmetic. The two products run on register tiles written for this kernel
(:func:`_gemm_tiles`, an LLVM-level microkernel: 6 rows x 4 vectors of 512 bits, i.e.
24 accumulators held in registers across the inner loop) instead of BLAS. Measured on
one thread (CPU time, AVX-512, ``d = 64``, ``n = m = 4096``, 256 query rows x 512 keys
per tile, float32): ``Q K^T`` from packed ``K^T`` panels 0.76 ns per score entry
(169 GFLOP/s), ``P V`` 0.72-0.83 ns (154-177 GFLOP/s), i.e. both at the rate of a
square 2048^3 BLAS GEMM on the same core (164-192 GFLOP/s in the same runs), against
135 GFLOP/s for BLAS on the same tile shapes (it repacks both thin operands on every
call, and its 16-wide kernel fills few rows of a ``d = 64`` update). ``K^T`` is packed
once per call into ``d x 64``-key panels (:func:`_pack_kt`): rows of a plain ``d x m``
transpose lie ``4 m`` bytes apart, fall into the same cache sets, and the same product
ran at 125 GFLOP/s. ``P V`` reads ``V`` in place. What is left is the softmax.

**Softmax in the score tiles' epilogue.** Once every row of a strip has seen a key (all
key blocks but the first), the exponentials are taken while the 6 x 4 score vectors of a
tile are still in registers (:func:`_qk_exp_tiles`, :func:`_make_tile` with
``exp_epilogue``): ``P = exp(S - m)`` against the row's running maximum ``m`` of the
*previous* blocks, with the row sums accumulated per tile, so ``P`` is written once and
the separate passes over the score block (row maximum, exponential) go away. The weights
may then exceed 1; a row is kept if its weights sum to at most the block width ``w``
(every weight is then at most ``w``, the bound of an unfused block whose weights are <=
1, so ``P V`` cannot overflow where the unfused block would not; scores never go below
the old reference by more than the underflow cut allows, and the normaliser and ``P V``
share the reference, so the result is the same to rounding). Otherwise (a score above
the running maximum by more than ``log w``, or an overflow) the row's scores are formed
again and it goes through the unfused pass (:func:`_fused_row_done`; never on the
benchmark's inputs: 0 of 7000 row blocks). The acceptance test runs inline in the task:
a call of :func:`_fused_row_done` per row (nine array arguments, each with its reference
count taken and dropped) cost ~90 ns, 22 us per 252 x 512 block, 7-9% of the whole
prefill on one thread (``n = 4096``, float32 and float64, bit-identical). Causal
diagonal strips are fused too, each row with its own key limit (zeros beyond it).
Measured with the score block in L2 (one thread, 252 x 512 tiles, load 3-6): softmax
share 0.28 -> 0.17 ns per entry (float32) and 0.69 -> 0.45 (float64); the whole prefill
1-7% (float32) and 4-10% (float64) faster in interleaved A/B runs (Intel Xeon). In
float64 the epilogue's exponential uses a 16-entry table of ``2^(j/16)`` held in
registers (:func:`_emit_exp_table_f64`: the reduced range shrinks to ``ln(2) / 32``
and the polynomial from degree 11 to 6): on an AMD EPYC (Zen 4, 512-bit operations on
256-bit units), one thread, 252 x 512 tiles, thread CPU time, min of 30 interleaved
repeats, 0.08-0.17 ns per entry less than the degree-11 polynomial in each of 7 runs
(0.45-0.65 against 0.55-0.86), and 0.77 against 0.94 ulp. The current split there, per
score entry: float32 ``Q K^T`` 1.14-1.20 ns, exponential 0.17-0.24, ``P V`` 1.11-1.15
(the exponential is 7-10% of the tile work); float64 2.28-2.51, 0.45-0.65 and 2.23-2.41
(9-12%). The unfused pass (first block, masks) is two vectorisable loops over a score
row:

* the row maximum is a ``select(a > b)`` reduction carrying the ``nnan`` flag, which
  LLVM vectorises (a plain ``max`` loop stays scalar);
* the exponential is hand-written (:mod:`rnla._kernels.fastexp`: Cody-Waite range
  reduction, a polynomial, ``2^k`` from the rounded ``x log2(e)``), fused with the row
  sum into one pass; the sum is in the input dtype inside one tile, then added to the
  float64 running normaliser. Numba's ``np.exp`` compiles to a scalar libm call that
  cannot be vectorised. The register-tile path uses the explicit 512-bit row kernel
  :data:`rnla._kernels.fastexp._exp_sum_vec` (Chebyshev polynomials of degree 6 / 11
  instead of Taylor 7 / 13, ``vscalef`` for ``2^k`` and the underflow cut on AVX-512:
  14 / 19 vector operations per vector against 20 / 26; one thread, row in L1: 0.136
  against 0.215 ns per entry in float32, 0.37 against 0.54 in float64; the whole
  prefill 5% faster in both, n = 4096, interleaved A/B at load 2.8); the BLAS path
  keeps the Taylor kernel shared with the adaptive and kernel-matrix kernels.

Both passes ask LLVM for 512-bit vectors (the function attribute
``prefer-vector-width=512``; without it LLVM uses 256-bit vectors on AVX-512 CPUs); on
CPUs without AVX-512 the attribute has no effect, and the products go to BLAS (the
caller decides; 24 accumulators of 512 bits would spill from 16 AVX2 registers).
Measured error (``python -m benchmarks.attention_exact --exp-exhaustive``): 0.98 ulp on
every float32 input of ``[-87, 0]`` (row kernel and epilogue), on 2e7 float64 inputs of
``[-708, 0]`` 0.94 ulp (row kernel) and 0.77 (epilogue); the Taylor kernel of the BLAS
path <= 2.0 ulp (float64) and 0.9 ulp (float32) on 2e6 points; results below
``exp(-708)`` (float64) / ``exp(-87)`` (float32) are 0.

Blocking (prefill): 252 query rows (42 register tiles) x 512 keys; 128-512 query rows
measured the same within 3%. Key blocks that cross the causal diagonal are processed
in strips of 48 query rows, each with the keys its rows see (the work above the
diagonal drops from ``bq^2 / 2`` to ``bq * 48 / 2`` entries per query block; causal
went from 87% to 95% of the non-causal rate on one thread).

Scheduling: the tasks (a query block of one slice; a key chunk of one key/value slice)
are taken by the threads from a shared atomic counter (:func:`_fetch_add`), in the order
given (longest causal blocks first). Numba's ``prange`` gives each thread one
contiguous, equal-count range of iterations with the OpenMP layer, even under
``parallel_chunksize``: with the causal longest-first order at 4 heads and ``n = 4096``
one thread got 400 and the other 144 units of work, and causal prefill took 79% of the
non-causal time for 50% of its flops.

Determinism: every output row is computed by exactly one task (prefill) or merged by
exactly one task in a fixed chunk order (split keys), with a fixed operation order;
which thread runs a task does not matter, and the chunk size depends on the problem
size only. The result therefore does not depend on the number of threads.

References
----------
.. [1] T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré, "FlashAttention: fast and
   memory-efficient exact attention with IO-awareness", NeurIPS 2022, arXiv:2205.14135.
.. [2] T. Dao, D. Haziza, F. Massa, G. Sizov, "Flash-Decoding for long-context
   inference", 2023 (split the keys, merge partial results by their log-sum-exp).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from rnla._kernels.fastexp import (  # noqa: F401 - re-exported to the other kernels
    _C_F,
    _EXP_MIN,
    _EXP_MIN_F,
    _HAS_AVX512,
    _LN2_HI,
    _LN2_HI_F,
    _LN2_LO,
    _LN2_LO_F,
    _LOG2E,
    _LOG2E_F,
    _MAGIC,
    _MAGIC_F,
    _ZERO_F,
    _add_reassoc,
    _emit_exp_vec,
    _exp_f32,
    _exp_f64,
    _exp_sum_vec,
    _pow2_bits,
)
from rnla._kernels.intrinsics import _fetch_add, _wide_vectors

# --------------------------------------------------------------------- LLVM helpers


@intrinsic
def _max_nonan(typingctx, a, b):
    """Return ``a if a > b else b`` flagged ``nnan`` (LLVM vectorises the reduction)."""

    def codegen(context, builder, sig, args):
        c = builder.fcmp_ordered(">", args[0], args[1], flags=("nnan", "nsz"))
        return builder.select(c, args[0], args[1], flags=("nnan", "nsz"))

    return a(a, b), codegen


# ------------------------------------------------------------------ row operations


@njit(cache=True, nogil=True)
def _row_max(s):
    """Maximum of a non-empty row without NaN (vectorised reduction)."""
    _wide_vectors()
    best = s[0]
    for j in range(s.shape[0]):
        best = _max_nonan(best, s[j])
    return best


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_sum_f64(s, mx):
    """Overwrite ``s[j]`` with ``exp(s[j] - mx)`` and return the sum (one pass).

    Entries below ``exp(-708)``, ``-inf`` included, become exactly 0. Only the sum
    carries ``reassoc`` (a ``reassoc`` flag on the rest would cancel the rounding by
    ``(x + M) - M``).
    """
    _wide_vectors()
    acc = 0.0
    for j in range(s.shape[0]):
        p = _exp_f64(s[j] - mx)
        s[j] = p
        acc = _add_reassoc(acc, p)
    return acc


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_sum_f32(s, mx):
    """Float32 twin of :func:`_exp_sum_f64` (degree-7 Horner polynomial, float32 sum)."""
    _wide_vectors()
    mxf = np.float32(mx)
    acc = _ZERO_F
    for j in range(s.shape[0]):
        p = _exp_f32(s[j] - mxf)
        s[j] = p
        acc = _add_reassoc(acc, p)
    return np.float64(acc)


def _exp_sum(s, mx):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_exp_sum)
def _exp_sum_overload(s, mx):
    if s.dtype == types.float32:
        return lambda s, mx: _exp_sum_f32(s, mx)
    return lambda s, mx: _exp_sum_f64(s, mx)


@njit(cache=True, nogil=True)
def _softmax_tile(s, mrow, lrow, alpha):
    """Online-softmax update of a score tile ``s (nb, w)`` in place (``s`` becomes ``P``).

    Updates the running maxima ``mrow`` and normalisers ``lrow`` (float64) and writes
    the accumulator rescaling factors ``alpha``.
    """
    _softmax_cols(s, s.shape[1], mrow, lrow, alpha)


@njit(cache=True, nogil=True)
def _softmax_cols(s, w, mrow, lrow, alpha):
    """:func:`_softmax_tile` on the first ``w`` columns of ``s`` (the rest is padding)."""
    for i in range(s.shape[0]):
        srow = s[i, :w]
        mnew = max(mrow[i], np.float64(_row_max(srow)))
        if mnew == -np.inf:
            # Nothing visible so far: zero weights, nothing to rescale.
            srow[:] = 0
            alpha[i] = 1.0
            continue
        # exp(-inf) = 0 when this tile holds the row's first visible key.
        a = 1.0 if mnew == mrow[i] else np.exp(mrow[i] - mnew)
        alpha[i] = a
        mrow[i] = mnew
        lrow[i] = a * lrow[i] + _exp_sum(srow, mnew)


@njit(cache=True, nogil=True)
def _softmax_rows_vec(sbuf, ld, nr, w, mrow, lrow, alpha):
    """:func:`_softmax_cols` on rows ``i < nr`` of a flat score buffer (stride ``ld``).

    The exponential-and-sum is :data:`rnla._kernels.fastexp._exp_sum_vec` (explicit
    512-bit vectors; ``vscalef`` on AVX-512 CPUs, portable IR elsewhere).
    """
    for i in range(nr):
        off = i * ld
        srow = sbuf[off : off + w]
        mnew = max(mrow[i], np.float64(_row_max(srow)))
        if mnew == -np.inf:
            srow[:] = 0
            alpha[i] = 1.0
            continue
        a = 1.0 if mnew == mrow[i] else np.exp(mrow[i] - mnew)
        alpha[i] = a
        mrow[i] = mnew
        lrow[i] = a * lrow[i] + np.float64(_exp_sum_vec(sbuf, off, w, mnew))


# Stacked rows up to which the split-key kernel forms ``S = Q K^T`` with the loop below
# instead of BLAS (measured, one thread, 512 keys in L2, d = 64: 3 rows 7.1 us against
# 15.4 us for sgemm, 8 rows 15.3 against 17.7; BLAS packs both operands on every call).
# ``P V`` goes to the register tiles (or BLAS; 3 rows: 3.5 us, against 5.5 us for a
# plain loop that streams the value rows, which keeps the accumulators in memory).
_SMALL_ROWS = 8


@njit(cache=True, nogil=True, fastmath={"contract"})
def _qk_small(qb, kc, s):
    """``s = qb @ kc.T`` for a few rows: one pass over ``kc``, every key row read once.

    Each dot product is one vectorised reduction over the full ``d`` (a reduction that
    starts at ``e = 1`` leaves a 15-element scalar remainder at ``d = 64``: 1.6x slower).
    """
    _wide_vectors()
    R, d = qb.shape
    zero = np.zeros(1, dtype=s.dtype)[0]
    for j in range(kc.shape[0]):
        kj = kc[j]
        for r in range(R):
            q = qb[r]
            acc = zero
            for e in range(d):
                acc = _add_reassoc(acc, q[e] * kj[e])
            s[r, j] = acc


@intrinsic
def _dot_keys(typingctx, q, qoff, k, koff, d, out, ooff):
    """``out[ooff + i] = sum_e q[qoff + e] k[koff + i d + e]`` for the ``vl`` keys ``i < vl``.

    One query row against ``vl`` consecutive key rows (16 float32 / 8 float64, ``d`` a
    multiple of ``vl``; flat C-contiguous arrays of one dtype): ``vl`` vector
    accumulators of fused multiply-adds over ``d``, then one transposing reduction tree
    (at each level adjacent lanes of two vectors are added, even plus odd lanes of
    their concatenation), which leaves key ``i``'s dot product in lane ``i``: about 7
    vector operations per key and row, against about 15 for a dot product reduced to a
    scalar per key (:func:`_qk_small`). Fixed order (deterministic).
    """
    if not (isinstance(q, types.Array) and q.dtype in (types.float32, types.float64)):
        return None
    if not (k.dtype == q.dtype and out.dtype == q.dtype):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        f32 = sig.args[0].dtype == types.float32
        fty = ir.FloatType() if f32 else ir.DoubleType()
        vl = 16 if f32 else 8
        vty = ir.VectorType(fty, vl)
        qd = context.make_array(sig.args[0])(context, builder, args[0]).data
        kd = context.make_array(sig.args[2])(context, builder, args[2]).data
        od = context.make_array(sig.args[5])(context, builder, args[5]).data
        qoffv, koffv, dv, ooffv = args[1], args[3], args[4], args[6]
        fma = builder.module.declare_intrinsic(
            f"llvm.fma.v{vl}f{32 if f32 else 64}", fnty=ir.FunctionType(vty, [vty, vty, vty])
        )
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * vl)
        qbase = builder.gep(qd, [qoffv])
        kbase = [
            builder.gep(kd, [builder.add(koffv, builder.mul(dv, ir.Constant(i64, i)))])
            for i in range(vl)
        ]
        nsteps = builder.sdiv(dv, ir.Constant(i64, vl))
        entry = builder.block
        loop = builder.append_basic_block("dot_loop")
        done = builder.append_basic_block("dot_done")
        builder.cbranch(builder.icmp_signed(">", nsteps, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        c = builder.phi(i64)
        c.add_incoming(ir.Constant(i64, 0), entry)
        acc = [builder.phi(vty) for _ in range(vl)]
        for a in acc:
            a.add_incoming(zero, entry)
        e0 = builder.mul(c, ir.Constant(i64, vl))
        qv = builder.load(builder.bitcast(builder.gep(qbase, [e0]), vty.as_pointer()), align=4)
        new = []
        for i in range(vl):
            kv = builder.load(
                builder.bitcast(builder.gep(kbase[i], [e0]), vty.as_pointer()), align=4
            )
            new.append(builder.call(fma, [qv, kv, acc[i]]))
        c1 = builder.add(c, ir.Constant(i64, 1))
        end = builder.block
        c.add_incoming(c1, end)
        for a, n in zip(acc, new, strict=True):
            a.add_incoming(n, end)
        builder.cbranch(builder.icmp_signed("<", c1, nsteps), loop, done)
        builder.position_at_end(done)
        vecs = []
        for i in range(vl):
            x = builder.phi(vty)
            x.add_incoming(zero, entry)
            x.add_incoming(new[i], end)
            vecs.append(x)
        even = ir.Constant(ir.VectorType(i32, vl), list(range(0, 2 * vl, 2)))
        odd = ir.Constant(ir.VectorType(i32, vl), list(range(1, 2 * vl, 2)))
        while len(vecs) > 1:
            nxt = []
            for a, b in zip(vecs[0::2], vecs[1::2], strict=True):
                nxt.append(
                    builder.fadd(
                        builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd)
                    )
                )
            vecs = nxt
        optr = builder.bitcast(builder.gep(od, [ooffv]), vty.as_pointer())
        builder.store(vecs[0], optr, align=4)
        return context.get_dummy_value()

    return types.none(q, qoff, k, koff, d, out, ooff), codegen


@njit(cache=True, nogil=True)
def _qk_rows(qb, k2, j0, w, s):
    """``s[r, j] = qb[r] . k2[j0 + j]`` for ``j < w`` (``s`` C-contiguous ``R x w``).

    :func:`_dot_keys` on groups of ``vl`` keys (each group of key rows stays in L1 while
    every query row passes), the last partial group by :func:`_qk_small`.
    """
    R, d = qb.shape
    vl = 64 // qb.itemsize
    qf = qb.reshape(-1)
    kf = k2.reshape(-1)
    sf = s.reshape(-1)
    wf = w - w % vl
    for j in range(0, wf, vl):
        for r in range(R):
            _dot_keys(qf, r * d, kf, (j0 + j) * d, d, sf, r * w + j)
    if wf < w:
        _qk_small(qb, k2[j0 + wf : j0 + w], s[:, wf:w])


@njit(cache=True, nogil=True)
def _nonfinite_probe(x):
    """Return 0.0 if every entry of the 2-D array ``x`` is finite, NaN otherwise."""
    _wide_vectors()
    big = np.finfo(x.dtype).max
    ok = True
    for i in range(x.shape[0]):
        xi = x[i]
        for j in range(xi.shape[0]):
            ok &= np.abs(xi[j]) <= big
    return 0.0 if ok else np.nan


@njit(cache=True, nogil=True)
def _probe_share(x, t, n_parts):
    """:func:`_nonfinite_probe` of rows ``[t R / n_parts, (t + 1) R / n_parts)`` of ``x``."""
    R = x.shape[0]
    return _nonfinite_probe(x[t * R // n_parts : (t + 1) * R // n_parts])


@njit(cache=True, nogil=True)
def _mask_hides_block(mask_b, mask_f, mask_mode, gm, rows, i0, nb, j0, w):
    """Return True if the mask hides keys ``j0 .. j0 + w - 1`` from rows ``rows[i0:i0 + nb]``.

    Stops at the first visible entry (the first one unless the block is padding), so
    the check costs nothing on unmasked blocks; fully hidden blocks (key padding of a
    shorter sequence in a batch, block-sparse masks) are then skipped without a GEMM.
    """
    if mask_mode == 1:
        for i in range(nb):
            mr = mask_b[0, gm, rows[i0 + i], j0 : j0 + w]
            if mr[0]:
                return False
            seen = False
            for jj in range(w):
                seen |= mr[jj]
            if seen:
                return False
        return True
    if mask_mode == 2:
        for i in range(nb):
            mr = mask_f[0, gm, rows[i0 + i], j0 : j0 + w]
            if mr[0] > -np.inf:
                return False
            top = mr[0]
            for jj in range(w):
                top = _max_nonan(top, mr[jj])
            if top > -np.inf:
                return False
        return True
    return False


@njit(cache=True, nogil=True)
def _apply_mask_row(srow, mask_b, mask_f, mask_mode, gm, row, j0):
    """Hide (boolean mask) or add (additive mask) the mask row to a score row."""
    w = srow.shape[0]
    if mask_mode == 1:
        mr = mask_b[0, gm, row, j0 : j0 + w]
        for jj in range(w):
            srow[jj] = srow[jj] if mr[jj] else -np.inf
    elif mask_mode == 2:
        mr = mask_f[0, gm, row, j0 : j0 + w]
        for jj in range(w):
            srow[jj] += mr[jj]


# ------------------------------------------------------------- register-tile GEMM

# Output width of one register tile: 4 vectors of 512 bits (64 float32 / 32 float64
# columns); packed K^T is padded to a multiple of _PAD columns.
_TILE_VECS = 4
_TILE_ROWS = 6
_PAD = 64
# Query rows per strip of a key block that crosses the causal diagonal (a multiple of
# the register tile's 6 rows).
_DIAG_ROWS = 48


def _make_tile(n_rows, n_vecs, exp_epilogue=False, exp_table=True):
    """Build an intrinsic ``tile(a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo)``.

    Computes, for ``r < n_rows`` and the ``n_vecs`` 512-bit vectors ``c`` of the tile,

        out[ooff + r * ldo + c] = sum_{e < kdim} a[aoff + r * lda + e] * b[boff + e * ldb + c]

    on flat (C-contiguous) float arrays of one dtype, keeping the ``n_rows x n_vecs``
    accumulator vectors in registers over the whole ``e`` loop: per step, ``n_vecs``
    vector loads of ``b``, ``n_rows`` broadcasts of ``a`` and ``n_rows * n_vecs``
    fused multiply-adds (``llvm.fma``, one rounding each, in the order ``e = 0, 1,
    ...``: the result does not depend on anything but the operands). The output is
    overwritten. No bounds checks (the callers size the buffers).

    With ``exp_epilogue`` the intrinsic takes five more arguments, ``mref, moff, sums,
    wlim, c0``, and writes ``exp(out - mref[i])`` (``i = moff + r``) instead of ``out``
    (the exponential of :func:`rnla._kernels.fastexp._emit_exp_vec`, on the
    accumulators while they are still in registers; 0 in the columns at or beyond
    ``wlim[i] - c0`` of the tile and below the underflow cut), and adds the row's
    ``n_vecs`` result vectors, in order, to the vector ``sums[i * vl : (i + 1) * vl]``
    (``vl`` lanes). ``mref`` and ``sums`` have the dtype of ``out``, ``wlim`` is int64.
    ``exp_table``: in float64 on AVX-512, the table exponential of
    :func:`_emit_exp_table_f64` (``False``: the degree-11 polynomial of
    :func:`rnla._kernels.fastexp._emit_exp_vec`, kept for the tests and benchmarks).
    """
    codegen = _tile_codegen(n_rows, n_vecs, exp_epilogue, exp_table)

    def typed(a, b, out):
        if not all(isinstance(x, types.Array) for x in (a, b, out)):
            return False
        return a.dtype == b.dtype == out.dtype and a.dtype in (types.float32, types.float64)

    if exp_epilogue:

        @intrinsic
        def tile_exp(
            typingctx, a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo, mref, moff, sums, wlim, c0
        ):
            if not (typed(a, b, out) and mref.dtype == sums.dtype == a.dtype):
                return None
            sig = types.none(
                a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo, mref, moff, sums, wlim, c0
            )
            return sig, codegen

        return tile_exp

    @intrinsic
    def tile(typingctx, a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo):
        if not typed(a, b, out):
            return None
        return types.none(a, b, out, aoff, boff, ooff, kdim, lda, ldb, ldo), codegen

    return tile


# Float64 exponential of the score tiles' epilogue on AVX-512 (see _emit_exp_table_f64):
# 2^(j/16) for j < 16 (correctly rounded: Decimal, 50 digits) and the Chebyshev
# interpolant h of (exp(r) - 1 - r) / r^2 at 5 nodes of |r| <= 1.0005 ln(2) / 32 (Decimal
# Vandermonde solve), lowest degree first; relative error of 1 + r + r^2 h(r) with these
# rounded coefficients, evaluated in 50 digits on 4001 points: 3.0e-17 (0.27 ulp of 1).
_EXP2_16THS = (
    1.0,
    1.0442737824274138,
    1.0905077326652577,
    1.1387886347566916,
    1.189207115002721,
    1.241857812073484,
    1.2968395546510096,
    1.3542555469368927,
    1.4142135623730951,
    1.4768261459394993,
    1.5422108254079407,
    1.6104903319492543,
    1.681792830507429,
    1.7562521603732995,
    1.8340080864093424,
    1.9152065613971474,
)
# 2^(j/16) - _EXP2_16THS[j], rounded (Decimal, 50 digits): the table's rounding error,
# added back before the last rounding.
_EXP2_16THS_LO = (
    0.0,
    8.551889705537965e-17,
    -3.046782079812471e-17,
    8.912812676025408e-17,
    3.982015231465646e-17,
    4.658027591836937e-17,
    2.5382502794888315e-17,
    7.70094837980299e-17,
    -9.667293313452913e-17,
    -3.483994556892796e-17,
    7.949834809697621e-17,
    2.4707192569797888e-17,
    8.199010020581497e-17,
    2.960140695448873e-17,
    3.283107224245627e-17,
    -1.0619946056195963e-16,
)
_H_TABLE_F64 = (
    0.500000000000014,
    0.1666666666529896,
    0.04166666654577477,
    0.008333449817651228,
    0.0013891064589563425,
)


def _emit_exp_table_f64(builder, x, lanes):
    """Emit ``exp(x)`` for ``<8 x double> x <= 0`` with a 16-entry table (AVX-512, LLVM IR).

    ``x = n ln(2) / 16 + r`` with ``n = 16 k + j = round(16 x / ln 2)`` (the rounding
    trick: ``n``'s low bits are the low mantissa bits of ``16 x log2(e) + 1.5 * 2^52``)
    and ``|r| <= ln(2) / 32`` (Cody-Waite, two fused multiply-adds); then ``exp(x) = 2^k
    2^(j / 16) exp(r)``. ``2^(j / 16) = T + T_lo`` comes from tables held in registers
    (``vpermi2pd``, no gather: the low 4 bits of ``n`` pick the entry), ``exp(r) = 1 + q``
    with ``q = r + r^2 h(r)``, ``h`` of degree 4 (without the table: degree 11 on ``|r|
    <= ln(2) / 2``), ``T (1 + q) = T + (T q + T_lo)``, and ``2^k`` is ``vscalefpd`` by
    ``n / 16`` (it scales by ``2^floor(n / 16)``), zero-masked below ``-708`` (NaN and
    ``-inf`` included) and outside ``lanes``. 12 multiplies, fused multiply-adds and
    scalings per 8 entries against 15 for the degree-11 polynomial (plus two additions
    and two table lookups, which run on other units). Error: the last rounding (0.5
    ulp), the polynomial (0.27 ulp of 1), ``T_lo``'s rounding and ``|q| <= 0.022`` times
    the error of ``q``; measured 0.77 ulp on 2e7 points of ``[-708, 0]`` (0.94 for the
    polynomial), see ``benchmarks.attention_exact --exp-exhaustive`` and the tests.
    """
    i32 = ir.IntType(32)
    fty = ir.DoubleType()
    vty = ir.VectorType(fty, 8)
    ivty = ir.VectorType(ir.IntType(64), 8)
    fma = builder.module.declare_intrinsic(
        "llvm.fma.v8f64", fnty=ir.FunctionType(vty, [vty, vty, vty])
    )
    perm = builder.module.declare_intrinsic(
        "llvm.x86.avx512.vpermi2var.pd.512", fnty=ir.FunctionType(vty, [vty, ivty, vty])
    )
    scalef = builder.module.declare_intrinsic(
        "llvm.x86.avx512.mask.scalef.pd.512",
        fnty=ir.FunctionType(vty, [vty, vty, vty, ir.IntType(8), i32]),
    )

    def splat(c):
        return ir.Constant(vty, [ir.Constant(fty, c)] * 8)

    def table(values):
        return ir.Constant(vty, [ir.Constant(fty, c) for c in values])

    keep = builder.fcmp_ordered(">=", x, splat(_EXP_MIN))
    if lanes is not None:
        keep = builder.and_(keep, lanes)
    magic = 6755399441055744.0  # 1.5 * 2^52
    t = builder.call(fma, [x, splat(16.0 * _LOG2E), splat(magic)])
    fn = builder.fsub(t, splat(magic))
    r = builder.call(fma, [fn, splat(-_LN2_HI / 16.0), x])
    r = builder.call(fma, [fn, splat(-_LN2_LO / 16.0), r])
    # vpermi2pd: bits 0-2 of each index lane pick the entry, bit 3 the register.
    idx = builder.bitcast(t, ivty)
    tab = builder.call(perm, [table(_EXP2_16THS[:8]), idx, table(_EXP2_16THS[8:])])
    h = splat(_H_TABLE_F64[-1])
    for c in _H_TABLE_F64[-2::-1]:
        h = builder.call(fma, [h, r, splat(c)])
    q = builder.call(fma, [builder.fmul(r, r), h, r])
    # 2^(j/16) (1 + q) = T + (T q + T_lo): the table's rounding error T_lo goes in before
    # the last rounding (a second lookup and an addition, off the multiply-add units).
    tlo = builder.call(perm, [table(_EXP2_16THS_LO[:8]), idx, table(_EXP2_16THS_LO[8:])])
    p = builder.fadd(tab, builder.call(fma, [tab, q, tlo]))
    k = builder.fmul(fn, splat(1.0 / 16.0))
    mask = builder.bitcast(keep, ir.IntType(8))
    return builder.call(scalef, [p, k, splat(0.0), mask, ir.Constant(i32, 4)])


def _tile_codegen(n_rows, n_vecs, exp_epilogue, exp_table=True):
    """LLVM code of the intrinsics of :func:`_make_tile`."""

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        fty = ir.FloatType() if sig.args[0].dtype == types.float32 else ir.DoubleType()
        vl = 16 if sig.args[0].dtype == types.float32 else 8
        vty = ir.VectorType(fty, vl)
        data = [context.make_array(sig.args[x])(context, builder, args[x]).data for x in range(3)]
        aoffv, boffv, ooffv, kv, ldav, ldbv, ldov = args[3:10]
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * vl)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, vl), [0] * vl)
        fma = builder.module.declare_intrinsic(
            f"llvm.fma.v{vl}f{32 if vl == 16 else 64}",
            fnty=ir.FunctionType(vty, [vty, vty, vty]),
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
        optr = [
            [
                builder.bitcast(builder.gep(orow[r], [ir.Constant(i64, c * vl)]), vty.as_pointer())
                for c in range(n_vecs)
            ]
            for r in range(n_rows)
        ]
        init = [[zero] * n_vecs for _ in range(n_rows)]
        entry = builder.block
        loop = builder.append_basic_block("tile_loop")
        done = builder.append_basic_block("tile_done")
        builder.cbranch(builder.icmp_signed(">", kv, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        e = builder.phi(i64)
        e.add_incoming(ir.Constant(i64, 0), entry)
        acc = [[builder.phi(vty) for _ in range(n_vecs)] for _ in range(n_rows)]
        for r in range(n_rows):
            for c in range(n_vecs):
                acc[r][c].add_incoming(init[r][c], entry)
        brow = builder.gep(bbase, [builder.mul(e, ldbv)])
        bvec = []
        for c in range(n_vecs):
            ptr = builder.gep(brow, [ir.Constant(i64, c * vl)])
            bvec.append(builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4))
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
                x.add_incoming(init[r][c], entry)
                x.add_incoming(new[r][c], end)
                res.append(x)
        if not exp_epilogue:
            for r in range(n_rows):
                for c in range(n_vecs):
                    builder.store(res[r * n_vecs + c], optr[r][c], align=4)
            return context.get_dummy_value()
        mdata = context.make_array(sig.args[10])(context, builder, args[10]).data
        sdata = context.make_array(sig.args[12])(context, builder, args[12]).data
        ldata = context.make_array(sig.args[13])(context, builder, args[13]).data
        moffv, c0v = args[11], args[14]
        idx = ir.Constant(ir.VectorType(i64, vl), list(range(vl)))
        for r in range(n_rows):
            rr = builder.add(moffv, ir.Constant(i64, r))
            mv = builder.load(builder.gep(mdata, [rr]))
            mv = builder.insert_element(undef, mv, ir.Constant(i32, 0))
            mv = builder.shuffle_vector(mv, undef, splat)
            # Lanes of vector c that hold a visible key: c * vl + lane < wlim[i] - c0 (one
            # broadcast per row, one compare per vector, in lanes as wide as the data).
            lty = ir.IntType(32 if vl == 16 else 64)
            room = builder.sub(builder.load(builder.gep(ldata, [rr])), c0v)
            room = builder.trunc(room, lty) if vl == 16 else room
            lvty = ir.VectorType(lty, vl)
            room = builder.insert_element(
                ir.Constant(lvty, ir.Undefined), room, ir.Constant(i32, 0)
            )
            room = builder.shuffle_vector(room, ir.Constant(lvty, ir.Undefined), splat)
            rs = zero
            for c in range(n_vecs):
                idx = ir.Constant(lvty, [c * vl + lane for lane in range(vl)])
                lanes = builder.icmp_signed("<", idx, room)
                x = builder.fsub(res[r * n_vecs + c], mv)
                if vl == 8 and _HAS_AVX512 and exp_table:
                    p = _emit_exp_table_f64(builder, x, lanes)
                else:
                    p = _emit_exp_vec(builder, vl == 16, _HAS_AVX512, x, lanes)
                builder.store(p, optr[r][c], align=4)
                rs = builder.fadd(rs, p)
            sptr = builder.bitcast(
                builder.gep(sdata, [builder.mul(rr, ir.Constant(i64, vl))]), vty.as_pointer()
            )
            builder.store(builder.fadd(builder.load(sptr, align=4), rs), sptr, align=4)
        return context.get_dummy_value()

    return codegen


_tile_6x4 = _make_tile(_TILE_ROWS, _TILE_VECS)
_tile_3x4 = _make_tile(3, _TILE_VECS)
_tile_2x4 = _make_tile(2, _TILE_VECS)
_tile_1x4 = _make_tile(1, _TILE_VECS)
_tile_6x1 = _make_tile(_TILE_ROWS, 1)
_tile_3x1 = _make_tile(3, 1)
_tile_2x1 = _make_tile(2, 1)
_tile_1x1 = _make_tile(1, 1)
_tile_6x4_exp = _make_tile(_TILE_ROWS, _TILE_VECS, True)
_tile_3x4_exp = _make_tile(3, _TILE_VECS, True)
_tile_2x4_exp = _make_tile(2, _TILE_VECS, True)
_tile_1x4_exp = _make_tile(1, _TILE_VECS, True)


@njit(cache=True, nogil=True)
def _gemm_tiles(a, b, out, aoff, boff, ooff, n_rows, kdim, n_cols, lda, ldb, ldo, panels):
    """``out[r, c] = sum_e a[r, e] b[e, c]`` for ``r < n_rows``, ``c < n_cols`` (flat arrays).

    ``n_cols`` must be a multiple of the vector length (16 float32, 8 float64); the
    offsets and leading dimensions are in elements (see :func:`_make_tile`); with
    ``panels``, ``b`` is packed as consecutive ``kdim x wide`` slabs (``ldb = wide``,
    one register tile wide, see :func:`_pack_kt`). Tiles of 6 rows x 4 vectors, column
    slabs outermost (a slab of ``b`` stays in cache while the row tiles pass over it),
    then tiles of 3, 2 or 1 rows and single vectors for the remainders (so that a
    decode block of 3 stacked rows reads each value row once). Every output entry is one
    chain of fused multiply-adds in the order ``e = 0, 1, ...``, whatever tile computes
    it.
    """
    vl = 64 // out.itemsize
    wide = _TILE_VECS * vl
    c0 = 0
    while c0 < n_cols:
        step = wide if c0 + wide <= n_cols else vl
        # Panels: b holds consecutive kdim x wide slabs (row stride wide).
        bo = boff + c0 * kdim if panels else boff + c0
        r0 = 0
        while r0 < n_rows:
            left = n_rows - r0
            rows = _TILE_ROWS if left >= _TILE_ROWS else (3 if left >= 3 else left)
            ao = aoff + r0 * lda
            oo = ooff + r0 * ldo + c0
            if step == wide:
                if rows == _TILE_ROWS:
                    _tile_6x4(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
                elif rows == 3:
                    _tile_3x4(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
                elif rows == 2:
                    _tile_2x4(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
                else:
                    _tile_1x4(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
            elif rows == _TILE_ROWS:
                _tile_6x1(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
            elif rows == 3:
                _tile_3x1(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
            elif rows == 2:
                _tile_2x1(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
            else:
                _tile_1x1(a, b, out, ao, bo, oo, kdim, lda, ldb, ldo)
            r0 += rows
        c0 += step


@njit(cache=True, nogil=True)
def _qk_exp_tiles(a, b, out, aoff, boff, n_rows, kdim, n_cols, lda, ldo, mref, sums, wlim):
    """Scores and their exponentials in one pass: ``out[r, c] = exp(S[r, c] - mref[r])``.

    ``S = a b`` with ``b`` packed in panels (:func:`_gemm_tiles` with ``panels``; ``n_cols``
    a multiple of one register tile, 64 float32 / 32 float64 columns); every tile
    applies the exponential to its accumulators before storing them
    (:func:`_make_tile` with ``exp_epilogue``), writes 0 in the columns ``>= wlim[r]``
    of row ``r`` (keys it does not see), and adds its rows' results to the per-row
    vectors ``sums (n_rows * vl,)`` (dtype of ``out``, in a fixed order). ``mref
    (n_rows,)``: the reference (running maximum) of each row, in the dtype of ``out``.
    """
    vl = 64 // out.itemsize
    wide = _TILE_VECS * vl
    for c0 in range(0, n_cols, wide):
        bo = boff + c0 * kdim
        r0 = 0
        while r0 < n_rows:
            left = n_rows - r0
            rows = _TILE_ROWS if left >= _TILE_ROWS else (3 if left >= 3 else left)
            ao = aoff + r0 * lda
            oo = r0 * ldo + c0
            if rows == _TILE_ROWS:
                _tile_6x4_exp(
                    a, b, out, ao, bo, oo, kdim, lda, wide, ldo, mref, r0, sums, wlim, c0
                )
            elif rows == 3:
                _tile_3x4_exp(
                    a, b, out, ao, bo, oo, kdim, lda, wide, ldo, mref, r0, sums, wlim, c0
                )
            elif rows == 2:
                _tile_2x4_exp(
                    a, b, out, ao, bo, oo, kdim, lda, wide, ldo, mref, r0, sums, wlim, c0
                )
            else:
                _tile_1x4_exp(
                    a, b, out, ao, bo, oo, kdim, lda, wide, ldo, mref, r0, sums, wlim, c0
                )
            r0 += rows


@njit(cache=True, nogil=True)
def _pack_kt(k, kt, g0, g1):
    """Pack ``K^T`` of slices ``g0 <= g < g1`` into panels, zero in the padding columns.

    ``kt (Gk, mp * d)``: the keys ``c * wide .. (c + 1) * wide - 1`` (``wide`` = one
    register tile, 64 float32 / 32 float64 keys) form the contiguous ``d x wide`` panel
    ``kt[g, c * d * wide + e * wide + jj] = k[g, c * wide + jj, e]``, so that a tile
    streams it with unit stride (rows of a plain ``d x m`` transpose, ``4 m`` bytes
    apart, fall into the same cache sets: 125 against 163 GFLOP/s for ``Q K^T``).
    """
    m, d = k.shape[1], k.shape[2]
    wide = _TILE_VECS * (64 // k.itemsize)
    n_chunks = kt.shape[1] // (d * wide)
    for g in range(g0, g1):
        for c in range(n_chunks):
            base = c * d * wide
            for e in range(d):
                for jj in range(wide):
                    j = c * wide + jj
                    kt[g, base + e * wide + jj] = k[g, j, e] if j < m else 0.0


@njit(cache=True, nogil=True)
def _pack_kt_panels(k, kt, p0, p1):
    """:func:`_pack_kt` of the panels ``p0 <= g * n_panels + c < p1`` (flat index)."""
    m, d = k.shape[1], k.shape[2]
    wide = _TILE_VECS * (64 // k.itemsize)
    n_chunks = kt.shape[1] // max(d * wide, 1)
    for p in range(p0, p1):
        g = p // n_chunks
        c = p - g * n_chunks
        base = c * d * wide
        for e in range(d):
            for jj in range(wide):
                j = c * wide + jj
                kt[g, base + e * wide + jj] = k[g, j, e] if j < m else 0.0


def _visible(x):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_visible)
def _visible_overload(x):
    if isinstance(x, types.Boolean):
        return lambda x: x
    return lambda x: x > -np.inf


@njit(cache=True, nogil=True)
def _row_span(mr):
    """``(lo, hi, interval)`` of one mask row (see :func:`_mask_row_limits`).

    Scans inwards from both ends, then checks the inside.
    """
    m = mr.shape[0]
    lo = 0
    while lo < m and not _visible(mr[lo]):
        lo += 1
    if lo == m:
        return m, 0, 1
    hi = m
    while not _visible(mr[hi - 1]):
        hi -= 1
    for j in range(lo, hi):
        if not _visible(mr[j]):
            return lo, hi, 0
    return lo, hi, 1


@njit(cache=True, nogil=True)
def _mask_row_limits(mask_b, mask_f, mask_mode, gm, row):
    """Return ``(lo, hi, interval)`` for row ``row`` of mask slice ``gm``.

    The mask hides every key outside ``lo <= j < hi`` (``(m, 0)`` if it hides them
    all); ``interval`` is 1 if it shows every key inside (and, for an additive mask,
    adds 0 to each), so that it can be applied from ``lo`` and ``hi`` alone, as key
    padding and fully masked rows are.
    """
    if mask_mode == 1:
        return _row_span(mask_b[0, gm, row])
    mr = mask_f[0, gm, row]
    lo, hi, interval = _row_span(mr)
    if interval == 1:
        for j in range(lo, hi):
            if mr[j] != 0.0:
                return lo, hi, 0
    return lo, hi, interval


@njit(cache=True, nogil=True)
def _mask_limits(mask_b, mask_f, mask_mode, rows, lims, t0, t1):
    """Fill ``lims[gm, i] = (lo, hi, interval)`` of query row ``rows[i]``.

    For the flat indices ``t0 <= gm * r + i < t1`` (see :func:`_mask_row_limits`). Only
    a mask broadcast along the query axis (a key-padding mask, zero row stride) is
    scanned, once per slice: its rows are all equal. A mask with its own rows gets the
    neutral ``(0, m, 0)``: scanning it (about 2 GB/s) took 28-43 ms for a 4 x 4096 x
    4096 query-and-key padding mask, more than it saved; its fully hidden blocks are
    still skipped by the per-block check of :func:`_mask_hides_block`.
    """
    r = rows.shape[0]
    if mask_mode == 1:
        bcast = mask_b.strides[2] == 0
        m = mask_b.shape[3]
    else:
        bcast = mask_f.strides[2] == 0
        m = mask_f.shape[3]
    for t in range(t0, t1):
        gm = t // r
        i = t - gm * r
        if not bcast:
            lims[gm, i, 0] = 0
            lims[gm, i, 1] = m
            lims[gm, i, 2] = 0
            continue
        if i > 0 and t > t0:
            for c in range(3):
                lims[gm, i, c] = lims[gm, i - 1, c]
            continue
        lo, hi, interval = _mask_row_limits(mask_b, mask_f, mask_mode, gm, rows[i])
        lims[gm, i, 0] = lo
        lims[gm, i, 1] = hi
        lims[gm, i, 2] = interval


@njit(cache=True, nogil=True)
def _fused_row_done(qf, ktg, sbuf, sums, wlim, mrow, lrow, alpha, i, r0, j0, d, ws, wr):
    """Finish row ``i`` of a strip after :func:`_qk_exp_tiles` (weights against ``mrow``).

    Accepts the row if the sum of its weights is at most ``wr`` (every weight is then at
    most ``wr``, the bound of an unfused block, whose weights are <= 1: ``P V`` cannot
    overflow where the unfused block would not); its normaliser grows by the sum and
    ``alpha = 1``. Otherwise (a score above the running maximum by more than ``log
    wr``, or an overflow) the row's scores are formed again and it goes through the
    unfused :func:`_softmax_rows_vec` (new maximum, rescaling factor), with 0 for the
    keys it does not see.
    """
    vl = 64 // sbuf.itemsize
    tot = sums[i * vl]
    for ll in range(1, vl):
        tot += sums[i * vl + ll]
    ii = r0 + i
    if np.float64(tot) <= wr:
        lrow[ii] += np.float64(tot)
        alpha[ii] = 1.0
        return
    wide = _TILE_VECS * vl
    _gemm_tiles(qf, ktg, sbuf, ii * d, j0 * d, i * ws, 1, d, ws, d, wide, ws, True)
    wi = max(wlim[i], 0)
    _softmax_rows_vec(
        sbuf[i * ws :], ws, 1, wi, mrow[ii : ii + 1], lrow[ii : ii + 1], alpha[ii : ii + 1]
    )
    sbuf[i * ws + wi : i * ws + wr] = 0.0


# ------------------------------------------------------------------------- prefill


@njit(cache=True, nogil=True)
def _prefill_task(
    q,
    k,
    kt,
    v,
    kv_index,
    rows,
    t,
    mask_b,
    mask_f,
    mask_index,
    mask_mode,
    lims,
    scale,
    causal,
    offset,
    bq,
    bk,
    out,
    lse,
    sbuf,
    accbuf,
):
    """Task ``t`` of :func:`_attend_blocks`: query block ``t % nqb`` of slice ``t // nqb``.

    ``sbuf``: the calling thread's score buffer (at least ``bq * (bk + _PAD)`` entries)
    and ``accbuf`` its float64 accumulator (at least ``bq * dv``), allocated once per
    thread (a fresh 0.6-1.2 MB buffer per task costs page faults).
    """
    d = q.shape[2]
    m = k.shape[1]
    dv = v.shape[2]
    r = rows.shape[0]
    nqb = (r + bq - 1) // bq
    neg_inf = -np.inf
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
    jbeg = 0
    interval = False
    if mask_mode != 0:
        # Key blocks outside the span the mask shows to any row of the block (padding of
        # a shorter sequence in a batch, fully masked rows) are skipped without reading
        # the mask: they contribute exactly nothing.
        span_lo = m
        span_hi = 0
        interval = True
        for i in range(nb):
            span_lo = min(span_lo, lims[gm, i0 + i, 0])
            span_hi = max(span_hi, lims[gm, i0 + i, 1])
            interval &= lims[gm, i0 + i, 2] == 1
        jend = min(jend, span_hi)
        jbeg = (span_lo // bk) * bk
        if interval:
            # Every row's mask is its key span: applied from (lo, hi) below, like the
            # causal limit, without reading the mask.
            mask_mode = 0
    # Register-tile GEMMs (see _gemm_tiles) when the caller packed K^T (it does when
    # dv is a multiple of the vector length).
    tiles = kt.shape[1] > 0
    mp = kt.shape[1] // max(d, 1)
    wide = _TILE_VECS * (64 // q.itemsize)
    pv = np.empty((nb, dv), dtype=q.dtype)
    vl = 64 // q.itemsize
    mref = np.empty(nb, dtype=q.dtype)
    sums = np.empty(nb * vl, dtype=q.dtype)
    wlim = np.empty(nb, dtype=np.int64)
    acc = accbuf[: nb * dv].reshape((nb, dv))
    acc[:] = 0.0
    mrow = np.full(nb, neg_inf)
    lrow = np.zeros(nb)
    alpha = np.ones(nb)
    for j0 in range(jbeg, max(jend, 0), bk):
        w = min(bk, jend - j0)
        if mask_mode != 0 and _mask_hides_block(
            mask_b, mask_f, mask_mode, gm, rows, i0, nb, j0, w
        ):
            continue  # contributes exactly nothing: same result as computing it
        # Blocks that cross the causal diagonal are cut into strips of _DIAG_ROWS rows,
        # each with the keys its rows see: the work above the diagonal shrinks from
        # nb^2 / 2 to nb * _DIAG_ROWS / 2 score entries per query block.
        cross = causal and j0 + w - 1 > lim_lo
        step = _DIAG_ROWS if cross else nb
        for r0 in range(0, nb, step):
            nr = min(step, nb - r0)
            wr = w
            if cross:
                hi = -1
                for i in range(r0, r0 + nr):
                    hi = max(hi, rows[i0 + i] + offset)
                wr = min(w, hi + 1 - j0)
                if wr <= 0:
                    continue  # no row of the strip sees a key of this block
            # Fused (see the module docstring): the exponentials are taken in the score
            # tiles' epilogue against each row's running maximum, on blocks with
            # nothing to mask, once every row of the strip has seen a key.
            fused = tiles and mask_mode == 0 and not interval
            if fused:
                for i in range(nr):
                    fused &= abs(mrow[r0 + i]) < np.inf
                    # Keys of the block that row i sees (causal: up to its diagonal).
                    wlim[i] = min(wr, rows[i0 + r0 + i] + offset + 1 - j0) if cross else wr
            if tiles:
                # Scores of the padded width (a multiple of _PAD; the padding columns of
                # the packed K^T are 0 and are never read back).
                ws = min(-(-wr // _PAD) * _PAD, mp - j0)
                qf = qb.reshape(-1)
                if fused:
                    for i in range(nr):
                        mref[i] = mrow[r0 + i]
                    sums[: nr * vl] = 0.0
                    _qk_exp_tiles(
                        qf, kt[gk], sbuf, r0 * d, j0 * d, nr, d, ws, d, ws, mref, sums, wlim
                    )
                    for i in range(nr):
                        # The accepted case inline: a call with nine array arguments
                        # costs ~90 ns (reference counts), 20 us per 252 x 512 block.
                        tot = sums[i * vl]
                        for ll in range(1, vl):
                            tot += sums[i * vl + ll]
                        if np.float64(tot) <= wr:
                            lrow[r0 + i] += np.float64(tot)
                            alpha[r0 + i] = 1.0
                        else:
                            ktg = kt[gk]
                            _fused_row_done(
                                qf, ktg, sbuf, sums, wlim, mrow, lrow, alpha, i, r0, j0, d, ws, wr
                            )
                else:
                    _gemm_tiles(qf, kt[gk], sbuf, r0 * d, j0 * d, 0, nr, d, ws, d, wide, ws, True)
            else:
                ws = wr
                np.dot(qb[r0 : r0 + nr], k[gk, j0 : j0 + wr].T, sbuf[: nr * wr].reshape((nr, wr)))
            s = sbuf[: nr * ws].reshape((nr, ws))
            if mask_mode != 0:
                for i in range(nr):
                    row = rows[i0 + r0 + i]
                    _apply_mask_row(s[i, :wr], mask_b, mask_f, mask_mode, gm, row, j0)
            if cross and not fused:
                for i in range(nr):
                    first = max(rows[i0 + r0 + i] + offset + 1 - j0, 0)
                    for jj in range(first, wr):
                        s[i, jj] = neg_inf
            if interval:
                for i in range(nr):
                    lo = lims[gm, i0 + r0 + i, 0] - j0
                    hi = lims[gm, i0 + r0 + i, 1] - j0
                    for jj in range(0, min(max(lo, 0), wr)):
                        s[i, jj] = neg_inf
                    for jj in range(max(hi, 0), wr):
                        s[i, jj] = neg_inf
            ma = mrow[r0 : r0 + nr]
            if tiles:
                if not fused:
                    _softmax_rows_vec(
                        sbuf, ws, nr, wr, ma, lrow[r0 : r0 + nr], alpha[r0 : r0 + nr]
                    )
                vf = v[gk].reshape(-1)
                _gemm_tiles(sbuf, vf, pv.reshape(-1), 0, j0 * dv, 0, nr, wr, dv, ws, dv, dv, False)
            else:
                _softmax_cols(s, wr, ma, lrow[r0 : r0 + nr], alpha[r0 : r0 + nr])
                np.dot(s, v[gk, j0 : j0 + wr], pv[:nr])
            for i in range(nr):
                a = alpha[r0 + i]
                ai = acc[r0 + i]
                if a == 1.0:
                    for c in range(dv):
                        ai[c] += pv[i, c]
                else:
                    for c in range(dv):
                        ai[c] = a * ai[c] + pv[i, c]
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


def _attend_blocks(
    q,
    k,
    kt,
    v,
    kv_index,
    rows,
    order,
    mask_b,
    mask_f,
    mask_index,
    mask_mode,
    lims,
    scale,
    causal,
    offset,
    bq,
    bk,
    out,
    lse,
    counter,
    n_workers,
    probe,
):
    """Online-softmax attention of the query rows ``rows`` of every slice.

    Parameters (no validation): ``q (G, n, d)``, ``k (Gk, m, d)``, ``v (Gk, m, dv)``
    C-contiguous of one float dtype; ``kv_index (G,)``; ``rows (r,)`` int64 query rows;
    ``order (G * ceil(r / bq),)`` the (slice, query block) tasks in the order they are
    handed out (longest first under ``causal``; any permutation gives the same result);
    ``mask_b`` (boolean, True = keep, read if ``mask_mode == 1``) and ``mask_f``
    (additive, dtype of ``q``, read if ``mask_mode == 2``) of shape ``(2, Gm, n, m)``
    with any strides, of which only ``[0]`` is read (the unused one is a dummy, and the
    zero-stride leading axis makes every mask non-contiguous, so that one compilation
    per dtype serves all masks); ``mask_index (G,)``; ``lims (Gm, r, 3)`` int64 scratch
    for the key span the mask shows each selected row (filled here; read if
    ``mask_mode != 0``); ``scale``;
    ``causal`` with ``offset = m - n`` (key ``j`` visible from row ``i`` iff
    ``j <= i + offset``); block sizes ``bq``, ``bk``. Writes ``out (G, r, dv)`` (dtype of
    ``q``) and ``lse (G, r)`` (float64). ``probe``: ``(n_workers,)`` to have every entry
    of ``q``, ``k`` and ``v`` checked for NaN and inf (by all threads, in the region that
    packs ``K^T``), or empty to skip the check; returns the sum of ``probe`` (finite iff
    every entry is finite; 0.0 without the check).
    """
    # Pack K^T once per call (O(m d) per key/value slice, against O(n m d) work), split
    # by panels so that one key/value slice is packed by every thread; the finiteness
    # check of the inputs shares the region (a serial NumPy pass over Q, K and V took
    # 2% of a causal call at n = 4096).
    n_pan = 0
    if kt.shape[1] > 0:
        n_pan = k.shape[0] * (kt.shape[1] // (k.shape[2] * _TILE_VECS * (64 // k.itemsize)))
    if n_pan > 0 or probe.shape[0] > 0:
        for t in prange(n_workers):
            if n_pan > 0:
                _pack_kt_panels(k, kt, t * n_pan // n_workers, (t + 1) * n_pan // n_workers)
            if probe.shape[0] > 0:
                probe[t] = (
                    _probe_share(q.reshape((-1, q.shape[2])), t, n_workers)
                    + _probe_share(k.reshape((-1, k.shape[2])), t, n_workers)
                    + _probe_share(v.reshape((-1, v.shape[2])), t, n_workers)
                )
    if mask_mode != 0:
        n_lims = lims.shape[0] * lims.shape[1]
        for t in prange(n_workers):
            t0 = t * n_lims // n_workers
            _mask_limits(mask_b, mask_f, mask_mode, rows, lims, t0, (t + 1) * n_lims // n_workers)
    for _ in prange(n_workers):
        sbuf = np.empty(bq * (bk + _PAD), dtype=q.dtype)
        accbuf = np.empty(bq * v.shape[2])
        while True:
            tt = _fetch_add(counter)
            if tt >= order.shape[0]:
                break
            _prefill_task(
                q,
                k,
                kt,
                v,
                kv_index,
                rows,
                order[tt],
                mask_b,
                mask_f,
                mask_index,
                mask_mode,
                lims,
                scale,
                causal,
                offset,
                bq,
                bk,
                out,
                lse,
                sbuf,
                accbuf,
            )
    bad = 0.0
    for t in range(probe.shape[0]):
        bad += probe[t]
    return bad


_attend_kernel = njit(cache=True, nogil=True, parallel=True)(_attend_blocks)


# ------------------------------------------------------------- decode / split keys


@njit(cache=True, nogil=True)
def _split_task(
    q,
    k,
    v,
    members,
    rows,
    t,
    mask_b,
    mask_f,
    mask_index,
    mask_mode,
    scale,
    causal,
    offset,
    chunk,
    tiles,
    part_acc,
    part_m,
    part_l,
    probe,
):
    """Task ``t = gk * C + c`` of :func:`_split_blocks`: key chunk ``c`` of slice ``gk``."""
    d = q.shape[2]
    m = k.shape[1]
    dv = v.shape[2]
    r = rows.shape[0]
    gs = members.shape[1]
    R = gs * r
    C = part_m.shape[1]
    neg_inf = -np.inf
    gk = t // C
    c = t - gk * C
    j0 = c * chunk
    w = min(chunk, m - j0)
    kc = k[gk, j0 : j0 + w]
    vc = v[gk, j0 : j0 + w]
    if mask_mode != 0:
        hidden = True
        for a in range(gs):
            gm = mask_index[members[gk, a]]
            if not _mask_hides_block(mask_b, mask_f, mask_mode, gm, rows, 0, r, j0, w):
                hidden = False
                break
        if hidden:
            for i in range(R):
                part_m[gk, c, i] = neg_inf
                part_l[gk, c, i] = 0.0
                for e in range(dv):
                    part_acc[gk, c, i, e] = 0.0
            # Not read otherwise: the finiteness probe reads the chunk here.
            probe[t] = _nonfinite_probe(kc) + _nonfinite_probe(vc)
            return
    qb = np.empty((R, d), dtype=q.dtype)
    for a in range(gs):
        g = members[gk, a]
        for i in range(r):
            for e in range(d):
                qb[a * r + i, e] = q[g, rows[i], e] * scale
    s = np.empty((R, w), dtype=q.dtype)
    if R <= _SMALL_ROWS and tiles and d % (64 // q.itemsize) == 0:
        _qk_rows(qb, k[gk], j0, w, s)
    elif R <= _SMALL_ROWS:
        _qk_small(qb, kc, s)
    else:
        np.dot(qb, kc.T, s)
    # A NaN or inf in a key row makes its score non-finite for every (finite) query row;
    # probed before masking, so hidden keys are covered too.
    bad = _nonfinite_probe(s)
    if mask_mode != 0 or causal:
        for a in range(gs):
            gm = mask_index[members[gk, a]]
            for i in range(r):
                row = rows[i]
                srow = s[a * r + i]
                _apply_mask_row(srow, mask_b, mask_f, mask_mode, gm, row, j0)
                if causal:
                    for jj in range(max(row + offset + 1 - j0, 0), w):
                        srow[jj] = neg_inf
    mrow = np.full(R, neg_inf)
    lrow = np.zeros(R)
    alpha = np.ones(R)
    if tiles:
        _softmax_rows_vec(s.reshape(-1), w, R, w, mrow, lrow, alpha)
    else:
        _softmax_tile(s, mrow, lrow, alpha)
    pv = np.empty((R, dv), dtype=q.dtype)
    if tiles and dv % (64 // q.itemsize) == 0:
        # One pass over the value rows for all R rows (BLAS packs the chunk first).
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
        np.dot(s, vc, pv)
    # A NaN or inf in a value row gives NaN or inf in P V (its weight is finite, 0 for
    # hidden keys: 0 * inf = NaN).
    bad += _nonfinite_probe(pv)
    probe[t] = bad
    for i in range(R):
        part_m[gk, c, i] = mrow[i]
        part_l[gk, c, i] = lrow[i]
        for e in range(dv):
            part_acc[gk, c, i, e] = pv[i, e]


def _split_blocks(
    q,
    k,
    v,
    members,
    rows,
    mask_b,
    mask_f,
    mask_index,
    mask_mode,
    scale,
    causal,
    offset,
    chunk,
    tiles,
    out,
    lse,
    part_acc,
    part_m,
    part_l,
    probe,
    counter,
    n_workers,
):
    """Split-key attention with the query heads of a key/value slice stacked as rows.

    ``members (Gk, gs)``: the query slices that use key/value slice ``gk`` (each
    key/value slice has the same number ``gs`` of them); the stacked block of slice
    ``gk`` has ``R = gs * r`` rows, row ``a * r + i`` being query row ``rows[i]`` of
    slice ``members[gk, a]``. The keys are cut into chunks of ``chunk``; task ``(gk,
    c)`` writes the partial maximum, normaliser and unnormalised output of every stacked
    row over chunk ``c`` into ``part_m / part_l (Gk, C, R)`` and ``part_acc (Gk, C, R,
    dv)`` (float64); then each (slice, stacked row) merges its ``C`` partials in chunk
    order (serially). ``probe (Gk * C,)`` receives, per task, 0 if every key and value entry of the
    chunk is finite and NaN (or inf) otherwise (or if a score or ``P V`` overflowed), so
    that the inputs need no separate validation pass; returns the sum of ``probe``
    (finite iff every entry is 0). The tasks are taken from the shared ``counter`` by
    ``n_workers`` threads. Other parameters as :func:`_attend_blocks`.
    """
    r = rows.shape[0]
    Gk = members.shape[0]
    C = part_m.shape[1]
    for _ in prange(n_workers):
        while True:
            t = _fetch_add(counter)
            if t >= Gk * C:
                break
            _split_task(
                q,
                k,
                v,
                members,
                rows,
                t,
                mask_b,
                mask_f,
                mask_index,
                mask_mode,
                scale,
                causal,
                offset,
                chunk,
                tiles,
                part_acc,
                part_m,
                part_l,
                probe,
            )
    # The merge is O(Gk R C dv), tiny next to the chunks: one thread, so that the call has
    # a single parallel region (each region ends in a barrier, which costs milliseconds
    # when another process holds a core).
    _merge_split(part_acc, part_m, part_l, members, r, out, lse)
    # Sum of the probes: non-finite iff some chunk held a NaN or inf (saves the caller a
    # pass over ``probe``).
    bad = 0.0
    for t in range(probe.shape[0]):
        bad += probe[t]
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _merge_split(part_acc, part_m, part_l, members, r, out, lse):
    """Merge the per-chunk partials of the split-key kernels by their log-sum-exp.

    Row ``a * r + ii`` of key/value slice ``gk`` is row ``ii`` of query slice
    ``members[gk, a]``; chunks are merged in their fixed order (deterministic). A row no
    chunk sees gets output 0 and ``lse = -inf``.
    """
    Gk, C, R, dv = part_acc.shape
    neg_inf = -np.inf
    for t in range(Gk * R):
        gk = t // R
        i = t - gk * R
        a = i // r
        g = members[gk, a]
        ii = i - a * r
        top = neg_inf
        for c in range(C):
            top = max(top, part_m[gk, c, i])
        if top == neg_inf:
            for e in range(dv):
                out[g, ii, e] = 0.0
            lse[g, ii] = neg_inf
            continue
        acc = np.zeros(dv)
        z = 0.0
        for c in range(C):
            if part_l[gk, c, i] > 0.0:
                wgt = np.exp(part_m[gk, c, i] - top)
                z += wgt * part_l[gk, c, i]
                for e in range(dv):
                    acc[e] += wgt * part_acc[gk, c, i, e]
        inv = 1.0 / z
        for e in range(dv):
            out[g, ii, e] = acc[e] * inv
        lse[g, ii] = top + np.log(z)


# error_model="numpy": a row whose partials hold NaN / inf (non-finite K or V, reported
# through ``probe``) divides by zero in the merge instead of raising ZeroDivisionError.
_split_kernel = njit(cache=True, nogil=True, parallel=True, error_model="numpy")(_split_blocks)
