"""LLVM-level helpers shared by the Numba kernels of ``rnla`` and ``attention``.

* :func:`_wide_vectors` asks LLVM to vectorise the calling function with 512-bit vectors
  where legal (LLVM's default on AVX-512 CPUs is 256 bits).
* :func:`_fetch_add` is the atomic counter from which the parallel kernels take their
  tasks: Numba's ``prange`` hands each thread one contiguous, equal-count range of
  iterations (with the OpenMP layer even under ``parallel_chunksize``), which leaves a
  thread idle when tasks differ in cost or when a core is busy with another process.
  Each task writes its own outputs, so results do not depend on which thread runs it.
"""

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def _wide_vectors(typingctx):
    """Set ``"prefer-vector-width"="512"`` on the calling function.

    llvmlite lists only enum attributes, so the string attribute is added to the
    underlying set directly; on CPUs without 512-bit vectors it has no effect.
    """

    def codegen(context, builder, sig, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:  # pragma: no cover - other llvmlite versions: no hint
            pass
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _fetch_add(typingctx, counter):
    """Atomically add 1 to ``counter[0]`` (int64 array) and return the old value."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", ary.data, one, "monotonic")

    return types.int64(counter), codegen
