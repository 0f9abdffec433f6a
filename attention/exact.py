"""Exact softmax attention: a blocked online-softmax Numba kernel and a NumPy oracle.

:func:`softmax_attention` is the exact reference every approximation is measured and
timed against: it never forms the ``n x m`` score matrix. :func:`reference_attention`
forms it (plain NumPy, float64 internally) and serves as the test oracle.
:func:`merge_partials` combines attention results over disjoint key sets through their
log-normalisers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numba
import numpy as np

from attention._core import (
    Problem,
    finish,
    finish_lse,
    method_result,
    prepare,
    problem_cost_exact,
)
from attention._kernels.exact import _PAD, _SMALL_ROWS, _attend_kernel, _split_kernel
from attention._registry import register
from rnla._validation import as_float_array, result_dtype

__all__ = ["merge_partials", "reference_attention", "softmax_attention"]

# Prefill: query rows per block (the unit of parallel work) and keys per block (the GEMM
# width). Chosen on a 2-core AVX-512 machine (benchmarks/attention_exact.py): the score
# block (BQ x BK) stays in L2; 252 = 42 register tiles of 6 rows (no single-row tiles).
_BQ = 252
_BK = 512


def _has_avx512() -> bool:
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - other llvmlite versions: use BLAS
        return False


# Prefill GEMMs on 512-bit register tiles (attention._kernels.exact._gemm_tiles) when the
# CPU has AVX-512 and the value width is a multiple of the vector length (16 float32, 8
# float64); otherwise BLAS for both products (with 256-bit registers the 24 accumulator
# vectors of a tile would spill). Both paths are tested.
_USE_TILES = _has_avx512()
# Decode: a key/value slice whose stacked query rows (query heads of the group x query
# rows) number at most this is handled by the split-key kernel.
_SPLIT_ROWS = 64
# Split-key chunk: at least this many keys, at most this many chunks per key/value slice
# (then larger chunks, up to _CHUNK_MAX keys). Depends on the problem size only.
_CHUNK_MIN = 512
_CHUNK_MAX = 2048
_MAX_CHUNKS = 64
# Below this many multiply-adds a call runs on one thread.
_SERIAL_WORK = 2**20

try:  # optional: keeps BLAS single-threaded inside the Numba threads (no oversubscription)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - depends on the environment
    ThreadpoolController = None
_CONTROLLER = []


def _single_threaded_blas():
    """Context that keeps BLAS on one thread while the kernel runs.

    Each Numba thread calls GEMM on its own blocks: a multithreaded BLAS would start
    ``T x T`` threads on ``T`` cores (OpenBLAS also serialises concurrent threaded
    calls), and OpenBLAS's float32 GEMM rounds differently with one and with several
    threads, which would make the result depend on the thread count. Uses
    :mod:`threadpoolctl` when installed, otherwise does nothing.
    """
    if ThreadpoolController is None:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


_DUMMY_VIEWS = {}


def _mask_views(problem: Problem, mask_mode: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the kernel's ``(mask_b, mask_f)`` pair of 4-D views (one is a dummy)."""
    key = np.dtype(problem.dtype).str
    if key not in _DUMMY_VIEWS:  # built once per dtype (np.broadcast_to costs microseconds)
        _DUMMY_VIEWS[key] = (
            np.broadcast_to(np.ones((1, 1, 1, 1), dtype=np.bool_), (2, 1, 1, 1)),
            np.broadcast_to(np.zeros((1, 1, 1, 1), dtype=problem.dtype), (2, 1, 1, 1)),
        )
    dummy_b, dummy_f = _DUMMY_VIEWS[key]
    if mask_mode == 0:
        return dummy_b, dummy_f
    # A zero-stride leading axis of length 2 makes the view non-contiguous whatever the
    # mask's own layout, so Numba compiles one specialisation per dtype only.
    view = np.broadcast_to(problem.mask[None], (2, *problem.mask.shape))
    return (view, dummy_f) if mask_mode == 1 else (dummy_b, view)


def _split_plan(problem: Problem, r: int, m_eff: int):
    """Return ``(members, chunk)`` for the split-key kernel, or None to use prefill.

    ``members[gk]`` lists the query slices attending to key/value slice ``gk`` (they
    are stacked as rows of one block); the split is taken when every key/value slice
    has the same number of them, their stacked rows are at most ``_SPLIT_ROWS`` and
    there are at least two chunks of keys.
    """
    Gk = problem.k.shape[0]
    counts = np.bincount(problem.kv_index, minlength=Gk)
    gs = int(counts[0])
    if gs == 0 or np.any(counts != gs) or gs * r > _SPLIT_ROWS or m_eff < 2 * _CHUNK_MIN:
        return None
    members = np.argsort(problem.kv_index, kind="stable").astype(np.int64).reshape(Gk, gs)
    chunk = -(-m_eff // _MAX_CHUNKS)
    # Chunks of 2 _CHUNK_MIN keys once there are 4 of them: fewer tasks, partials and
    # merges (9 query / 3 key-value heads, float32, 2 threads, load 1.9-2.5, 10th
    # percentile of 60 interleaved calls: m = 8192 0.453 against 0.474 ms with 512-key
    # chunks, m = 32768 1.255 against 1.331 ms).
    floor = 2 * _CHUNK_MIN if m_eff >= 4 * _CHUNK_MIN else _CHUNK_MIN
    chunk = min(max(floor, -(-chunk // 64) * 64), _CHUNK_MAX)
    return members, chunk


# Split plans by problem layout (a decode call repeats the same shapes step after step;
# forming the plan took ~5 us of a ~0.35 ms call at m = 8192). Bounded; cleared when full.
_PLAN_CACHE: dict = {}


def _cached_split_plan(problem: Problem, r: int, m_eff: int):
    """:func:`_split_plan` memoised on everything it depends on (the arrays read-only)."""
    key = (
        problem.kv_index.tobytes(),
        problem.k.shape[0],
        r,
        m_eff,
        _SPLIT_ROWS,
        _CHUNK_MIN,
        _CHUNK_MAX,
        _MAX_CHUNKS,
    )
    plan = _PLAN_CACHE.get(key, False)
    if plan is False:
        plan = _split_plan(problem, r, m_eff)
        if plan is not None:
            plan[0].flags.writeable = False
        if len(_PLAN_CACHE) >= 64:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = plan
    return plan


def _raise_nonfinite(inputs) -> None:
    """Raise the validation error for the first of ``Q, K, V`` holding NaN or inf.

    Returns quietly if all three are finite (then a score or product overflowed).
    """
    for name, X in zip(("Q", "K", "V"), inputs, strict=True):
        as_float_array(X, name=name)


def _all_finite(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all())


def _attend(
    problem: Problem, rows=None, inputs=None, out=None, lse=None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact attention of a prepared problem (private kernel entry).

    Parameters
    ----------
    problem : Problem
        Validated inputs from :func:`attention._core.prepare`.
    rows : array_like of int, optional
        Query rows (indices into ``0..n-1``, not validated) to compute; all rows by
        default. Costs ``O(len(rows) * m * (d + dv))`` per slice (used by certificates).
    inputs : tuple, optional
        The caller's ``(Q, K, V)`` when ``problem`` was prepared with
        ``check_finite=False``: NaN and inf are then detected by the kernel (prefill:
        a pass over ``Q``, ``K`` and ``V`` by all threads in the region that packs
        ``K^T``; decode: from the scores and ``P V`` while it reads ``K`` and ``V``) and
        reported, after the call, with the message of :func:`attention._core.prepare`.
    out, lse : ndarray, optional
        C-contiguous buffers of shapes ``(G, s, dv)`` (problem dtype) and ``(G, s)``
        (float64), ``s >= r``, given together: the result of selected row ``t`` is
        written to position ``t`` (the first ``r`` positions; saves an allocation and a
        copy when the rows are a prefix of the caller's output).

    Returns
    -------
    out : ndarray, shape (G, r, dv)
        Attention output of the selected rows (``r = len(rows)`` or ``n``), in the
        problem dtype (the given buffer, ``(G, s, dv)``, if any).
    lse : ndarray, shape (G, r)
        ``log`` of the softmax normaliser of each row (``-inf`` for rows that see no
        key), float64 (the given buffer, ``(G, s)``, if any).
    """
    rows = np.arange(problem.n, dtype=np.int64) if rows is None else np.asarray(rows)
    rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    G, r, dv, m = problem.n_slices, rows.shape[0], problem.dv, problem.m
    if out is None or lse is None:
        out = np.empty((G, r, dv), dtype=problem.dtype)
        lse = np.empty((G, r), dtype=np.float64)
    elif not (
        out.dtype == problem.dtype
        and lse.dtype == np.float64
        and out.flags.c_contiguous
        and lse.flags.c_contiguous
        and out.shape[0] == G
        and out.shape[1] >= r
        and out.shape[2] == dv
        and lse.shape == out.shape[:2]
    ):
        raise ValueError(
            f"out/lse buffers must be C-contiguous (G, >= r, dv) {problem.dtype} and "
            f"(G, >= r) float64 with G={G}, r={r}, dv={dv}; "
            f"received {out.shape} {out.dtype} and {lse.shape} {lse.dtype}"
        )
    if r == 0:
        return out, lse
    if problem.mask is None:
        mask_mode, mask_index = 0, np.zeros(G, dtype=np.int64)
    else:
        mask_mode = 1 if problem.mask.dtype == np.bool_ else 2
        mask_index = np.ascontiguousarray(problem.mask_index, dtype=np.int64)
    mask_b, mask_f = _mask_views(problem, mask_mode)
    verify = inputs is not None
    # Keys any selected row can see (causal: the rest is never read).
    m_eff = min(m, int(rows.max()) + problem.offset + 1) if problem.causal else m
    plan = _cached_split_plan(problem, r, m_eff) if m_eff > 0 else None
    nqb = -(-r // _BQ)
    n_tasks = G * nqb if plan is None else plan[0].shape[0] * -(-m_eff // plan[1])
    small = n_tasks < 2 or G * r * problem.m * (problem.d + dv) < _SERIAL_WORK
    threads = numba.get_num_threads()
    # The register-tile paths call no BLAS (prefill with K^T packed; decode with at most
    # _SMALL_ROWS stacked rows): no thread-pool limit needed (it costs ~11 us a call).
    vl = 64 // problem.q.itemsize
    tiles = _USE_TILES and dv % vl == 0 and problem.d > 0
    blas_free = tiles and (plan is None or plan[0].shape[1] * r <= _SMALL_ROWS)
    try:
        if small:
            # Waking the thread pool costs more than the work (milliseconds on a loaded
            # machine); the thread count is thread-local and does not change the result.
            numba.set_num_threads(1)
        with contextlib.nullcontext() if blas_free else _single_threaded_blas():
            if plan is None:
                # K^T packed for the register-tile GEMMs (columns padded to _PAD).
                if tiles:
                    mp = -(-m // _PAD) * _PAD
                    kt = np.empty((problem.k.shape[0], mp * problem.d), dtype=problem.dtype)
                else:
                    kt = np.empty((1, 0), dtype=problem.dtype)
                # Key span the mask shows each selected row (filled by the kernel).
                gm_count = problem.mask.shape[0] if mask_mode else 1
                lims = np.zeros((gm_count, r if mask_mode else 1, 3), dtype=np.int64)
                # Q, K and V are checked for NaN / inf by the kernel (all threads).
                probe = np.zeros(numba.get_num_threads() if verify else 0)
                order = np.arange(G * nqb, dtype=np.int64)
                if problem.causal and nqb > 1:
                    # Longest tasks (last query blocks) first: the threads take tasks
                    # from a shared counter, so they then finish together.
                    order = (order.reshape(G, nqb)[:, ::-1]).T.reshape(-1).copy()
                bad = _attend_kernel(
                    problem.q,
                    problem.k,
                    kt,
                    problem.v,
                    np.ascontiguousarray(problem.kv_index, dtype=np.int64),
                    rows,
                    order,
                    mask_b,
                    mask_f,
                    mask_index,
                    mask_mode,
                    lims,
                    float(problem.scale),
                    bool(problem.causal),
                    int(problem.offset),
                    _BQ,
                    _BK,
                    out,
                    lse,
                    np.zeros(1, dtype=np.int64),
                    numba.get_num_threads(),
                    probe,
                )
                if verify and not math.isfinite(bad):
                    _raise_nonfinite(inputs)
            else:
                if verify and not _all_finite(problem.q):
                    _raise_nonfinite(inputs)
                members, chunk = plan
                Gk, gs = members.shape
                C = -(-m_eff // chunk)
                if verify and m_eff < m:  # keys no selected row sees: not read below
                    tail = (problem.k[:, m_eff:], problem.v[:, m_eff:])
                    if not (_all_finite(tail[0]) and _all_finite(tail[1])):
                        _raise_nonfinite(inputs)
                probe = np.zeros(Gk * C)
                bad = _split_kernel(
                    problem.q,
                    problem.k,
                    problem.v,
                    members,
                    rows,
                    mask_b,
                    mask_f,
                    mask_index,
                    mask_mode,
                    float(problem.scale),
                    bool(problem.causal),
                    int(problem.offset),
                    chunk,
                    bool(_USE_TILES),
                    out,
                    lse,
                    np.empty((Gk, C, gs * r, dv)),
                    np.empty((Gk, C, gs * r)),
                    np.empty((Gk, C, gs * r)),
                    probe,
                    np.zeros(1, dtype=np.int64),
                    numba.get_num_threads(),
                )
                if verify and not math.isfinite(bad):
                    _raise_nonfinite(inputs)
    finally:
        if small:
            numba.set_num_threads(threads)
    return out, lse


def softmax_attention(Q, K, V, *, scale=None, causal=False, mask=None, return_lse=False):
    r"""Exact softmax attention by a blocked online-softmax kernel.

    Computes ``Y = softmax(Q K^T * scale + mask) V`` row by row without forming the
    ``n x m`` score matrix.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys.
    V : array_like, shape (..., m, dv)
        Values. Leading dimensions of ``Q`` and ``K``/``V`` broadcast; if the head axis
        (third from last) of ``K``/``V`` has ``hk`` heads and that of ``Q`` has
        ``hq = g * hk``, query head ``h`` uses key/value head ``h // g`` (grouped-query
        attention, PyTorch's ``enable_gqa`` convention).
    scale : float, optional
        Score scale; ``1 / sqrt(d)`` by default. Any finite real is accepted, as in
        PyTorch: ``scale=0`` gives uniform weights over the visible keys (the mean of
        their values), a negative scale favours the least aligned keys. (Approximation
        methods of :func:`attention.approximate` require ``scale > 0``.)
    causal : bool, default=False
        Causal masking aligned to the bottom-right corner: query ``i`` sees key ``j``
        iff ``j <= i + m - n`` (the flash-attn >= 2.1 convention). For ``n == m`` this
        is the usual lower-triangular pattern; for ``n != m`` it differs from PyTorch's
        ``is_causal=True``, which is aligned to the top-left corner (``j <= i``).
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., n, m)``. Boolean: True means *attend* (PyTorch
        convention). Floating: added to the scaled scores (``-inf`` hides a key).
        Combined with ``causal`` if both are given.
    return_lse : bool, default=False
        Also return the log-normaliser of each row.

    Returns
    -------
    Y : ndarray, shape (..., n, dv)
        Attention output, dtype of the inputs (float32 stays float32). Rows that see no
        key (fully masked) are 0.
    lse : ndarray, shape (..., n)
        Only if ``return_lse``: ``lse_i = log sum_j exp(s_ij)`` over the visible keys,
        ``-inf`` for fully masked rows. Lets results over disjoint key sets be combined
        with :func:`merge_partials`.

    Raises
    ------
    TypeError
        Complex or non-numeric inputs, non-boolean ``causal``, a mask that is neither
        boolean nor floating.
    ValueError
        Mismatched ``d`` or ``m``, leading shapes that do not broadcast, query heads not
        a multiple of key/value heads, NaN or inf inputs or ``scale``, a mask that does
        not broadcast to ``(..., n, m)`` or holds NaN / ``+inf``.

    See Also
    --------
    reference_attention : The plain NumPy oracle (forms the score matrix).
    merge_partials : Combine results over disjoint key sets.

    Notes
    -----
    The FlashAttention recurrence [1]_ [2]_: for each block of 252 query rows, loop over
    blocks of 512 keys, form the score block with one GEMM, update the running row
    maximum ``mx``, normaliser ``l`` and unnormalised output ``acc`` by

    .. math::

        mx' = \max(mx, \max_j s_{ij}), \quad
        l' = e^{mx - mx'} l + \sum_j e^{s_{ij} - mx'}, \quad
        acc' = e^{mx - mx'} acc + P V_j,

    and return ``acc / l`` with ``lse = mx + log l``. Every exponent is ``<= 0``, so no
    score magnitude overflows; rows with no visible key keep ``mx = -inf`` and give 0.
    The running statistics ``mx``, ``l`` and ``acc`` are float64 for both input dtypes
    (the sum of one block's weights is formed in the input dtype); the exponential is a
    vectorised polynomial with error <= 2 ulp (<= 1 ulp on the AVX-512 path: 0.98 ulp
    on every float32 input, 0.94 / 0.77 ulp on 2e7 float64 inputs).

    Blocking and microkernel (profiled per phase on one thread, AVX-512, ``d = 64``):
    both products run on register tiles of 6 rows x 4 vectors of 512 bits (24
    accumulators held in registers over the inner dimension), ``K^T`` packed once per
    call into panels of 64 keys, ``V`` read in place. On a 252 x 512 tile ``Q K^T`` and
    ``P V`` each run at the rate of a square BLAS GEMM on the same core (float32
    154-177 against 164-192 GFLOP/s in the same runs), where BLAS on these thin shapes
    reaches 135 (it repacks both operands on every call). The softmax is taken in the
    score tiles' epilogue while the scores are in registers (against each row's running
    maximum of the previous key blocks; a row whose weights then sum above the block
    width is formed again the usual way), with a 512-bit exponential (<= 1 ulp; in
    float64 a 16-entry table of ``2^(j/16)`` held in registers cuts the polynomial from
    degree 11 to 6). Measured split of the tile work per score entry (one thread,
    252 x 512 tiles, AMD EPYC Zen 4): float32 ``Q K^T`` 1.14-1.20 ns, exponential
    0.17-0.24, ``P V`` 1.11-1.15, i.e. the exponential is 7-10% of it; float64
    2.28-2.51, 0.45-0.65 and 2.23-2.41, 9-12% (0.55-0.86 ns, 11-15%, with the degree-11
    polynomial). Without
    AVX-512 (or with a value width that is not a multiple of 16 float32 / 8 float64
    entries) both products go to BLAS. Causal: key blocks above the diagonal are
    skipped, blocks crossing it are cut into strips of 48 query rows that each read
    only the keys they see, and the threads take the longest query blocks first from
    a shared counter, so that they finish together.

    Decode (split keys, flash-decoding [3]_): when the query rows of all heads sharing
    a key/value head number at most 64 (e.g. a few new tokens with grouped-query
    attention), they are stacked into one block that reads each ``K``/``V`` chunk once,
    the keys are cut into chunks of 512-2048 (a function of ``m`` only) processed in
    parallel, and the partial results are merged in chunk order by their
    log-normalisers (as :func:`merge_partials`). ``K`` and ``V`` are read once: NaN and
    inf are detected by the kernel from its scores and products (a non-finite key or
    value entry always makes them non-finite), not by a separate validation pass.

    Cost: ``2 n m (d + dv)`` flops per slice (``4 n m d`` for ``dv = d``) and ``n m``
    exponentials; with ``causal=True`` key blocks entirely above the diagonal are
    skipped, about half of that for ``n = m``. Extra memory: ``O(T * 252 * (d + 576 +
    dv))`` for ``T`` threads, the output and a packed copy of ``K`` (``m d`` entries
    per key/value head), never ``O(n m)`` (decode: ``O(m / 512 * R * dv)`` for the
    partials of ``R`` stacked rows).

    Every output row is computed by one task with a fixed operation order (decode: its
    partials are merged in a fixed order, and the chunk size depends on ``m`` only), so
    the result does not depend on the number of Numba threads. BLAS is kept on one
    thread during the call (through ``threadpoolctl``, when installed): the GEMMs run
    inside the Numba threads, and OpenBLAS's float32 GEMM rounds differently with one
    and with several threads.

    References
    ----------
    .. [1] T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré, "FlashAttention: fast and
       memory-efficient exact attention with IO-awareness", NeurIPS 2022,
       arXiv:2205.14135.
    .. [2] M. N. Rabe, C. Staats, "Self-attention does not need O(n^2) memory",
       arXiv:2112.05682, 2021.
    .. [3] T. Dao, D. Haziza, F. Massa, G. Sizov, "Flash-Decoding for long-context
       inference", 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.exact import softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.standard_normal((2, 4, 16, 8)) for _ in range(3))
    >>> softmax_attention(Q, K, V, causal=True).shape
    (2, 4, 16, 8)
    >>> Y, lse = softmax_attention(Q, K, V, return_lse=True)
    >>> lse.shape
    (2, 4, 16)
    """
    problem = prepare(
        Q, K, V, scale=scale, causal=causal, mask=mask, positive_scale=False, check_finite=False
    )
    out3, lse3 = _attend(problem, inputs=(Q, K, V))
    Y = finish(problem, out3)
    if return_lse:
        return Y, finish_lse(problem, lse3)
    return Y


def reference_attention(Q, K, V, *, scale=None, causal=False, mask=None, return_lse=False):
    """Exact softmax attention in plain NumPy, forming the score matrix (the oracle).

    Same parameters, semantics and validation as :func:`softmax_attention`; computes in
    float64 and returns the input dtype.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys.
    V : array_like, shape (..., m, dv)
        Values (grouped-query heads and broadcasting as in :func:`softmax_attention`).
    scale : float, optional
        Score scale; ``1 / sqrt(d)`` by default; any finite real (``0`` gives uniform
        weights over the visible keys).
    causal : bool, default=False
        Bottom-right aligned causal mask (query ``i`` sees key ``j`` iff
        ``j <= i + m - n``).
    mask : array_like of bool or float, optional
        Boolean (True = attend) or additive mask broadcastable to ``(..., n, m)``.
    return_lse : bool, default=False
        Also return the log-normaliser of each row.

    Returns
    -------
    Y : ndarray, shape (..., n, dv)
        Attention output; fully masked rows are 0.
    lse : ndarray, shape (..., n)
        Only if ``return_lse``; ``-inf`` for fully masked rows.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax_attention`.

    Notes
    -----
    Per slice: ``S = Q K^T * scale + bias`` with hidden entries set to ``-inf``, then
    ``P = exp(S - rowmax(S))``, ``Y = P V / rowsum(P)``. Cost ``2 n m (d + dv)`` flops
    per slice (no causal saving) and ``O(n m)`` memory: use it for tests and small
    problems only.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.exact import reference_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)), np.ones((7, 2))
    >>> reference_attention(Q, K, V).shape
    (5, 2)
    """
    problem = prepare(Q, K, V, scale=scale, causal=causal, mask=mask, positive_scale=False)
    G, n = problem.n_slices, problem.n
    out3 = np.zeros((G, n, problem.dv))
    lse3 = np.full((G, n), -np.inf)
    for g in range(G):
        q, k, v = (x.astype(np.float64) for x in problem.slice(g))
        S = (q @ k.T) * problem.scale
        bias = problem.bias(g)
        keep = problem.keep(g)
        with np.errstate(invalid="ignore", over="ignore"):
            if bias is not None:
                S = S + bias
            if keep is not None:
                S = np.where(keep, S, -np.inf)
        mx = S.max(axis=1)
        seen = mx > -np.inf
        if not seen.any():
            continue
        P = np.exp(S[seen] - mx[seen, None])
        z = P.sum(axis=1)
        out3[g, seen] = (P @ v) / z[:, None]
        lse3[g, seen] = mx[seen] + np.log(z)
    Y = finish(problem, out3)
    if return_lse:
        return Y, finish_lse(problem, lse3)
    return Y


def merge_partials(outputs: Sequence, lses: Sequence) -> tuple[np.ndarray, np.ndarray]:
    r"""Merge attention results computed over disjoint key sets.

    If ``(Y_i, lse_i)`` is the attention output and log-normaliser of the same queries
    over the key set ``K_i`` (e.g. from :func:`softmax_attention` with
    ``return_lse=True``), and the ``K_i`` partition the keys, the result over all keys is

    .. math::

        lse = \log \sum_i e^{lse_i}, \qquad Y = \sum_i e^{lse_i - lse} Y_i .

    Parameters
    ----------
    outputs : sequence of array_like, each of shape (..., n, dv)
        Partial outputs (all the same shape).
    lses : sequence of array_like, each of shape (..., n)
        Their log-normalisers (``-inf`` for rows that saw no key in that part).

    Returns
    -------
    Y : ndarray, shape (..., n, dv)
        Merged output; rows with ``lse_i = -inf`` in every part are 0.
    lse : ndarray, shape (..., n)
        Merged log-normaliser (``-inf`` for such rows).

    Raises
    ------
    TypeError
        Non-numeric or complex input, ``outputs``/``lses`` not sequences.
    ValueError
        No parts, different numbers of outputs and lses, mismatched shapes, NaN or inf in
        an output, NaN or ``+inf`` in an lse.

    Notes
    -----
    The merge is the final step of FlashAttention's split-KV ("flash-decoding") and of
    HyperAttention's combination of a sparse and a sampled part. Computed stably with the
    maximum ``lse_i`` subtracted; cost ``O(p n dv)`` for ``p`` parts.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.exact import merge_partials, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.standard_normal((6, 4)) for _ in range(3))
    >>> Y1, l1 = softmax_attention(Q, K[:3], V[:3], return_lse=True)
    >>> Y2, l2 = softmax_attention(Q, K[3:], V[3:], return_lse=True)
    >>> Y, lse = merge_partials([Y1, Y2], [l1, l2])
    >>> Y.shape, lse.shape
    ((6, 4), (6,))
    """
    if isinstance(outputs, np.ndarray) or isinstance(lses, np.ndarray):
        raise TypeError("outputs and lses must be sequences (lists or tuples) of arrays")
    outputs, lses = list(outputs), list(lses)
    if not outputs:
        raise ValueError("merge_partials needs at least one part, got 0")
    if len(outputs) != len(lses):
        raise ValueError(f"got {len(outputs)} outputs but {len(lses)} lses")
    Ys = [as_float_array(Y, name=f"outputs[{i}]") for i, Y in enumerate(outputs)]
    Ls = [as_float_array(L, name=f"lses[{i}]", allow_nonfinite=True) for i, L in enumerate(lses)]
    shape = Ys[0].shape
    if len(shape) < 2:
        raise ValueError(f"outputs must have shape (..., n, dv), got {shape}")
    for i, (Y, L) in enumerate(zip(Ys, Ls, strict=True)):
        if Y.shape != shape:
            raise ValueError(f"outputs[{i}] has shape {Y.shape}, outputs[0] has {shape}")
        if L.shape != shape[:-1]:
            raise ValueError(
                f"lses[{i}] has shape {L.shape}, expected {shape[:-1]} (outputs without "
                "the last axis)"
            )
        if np.isnan(L).any() or np.isposinf(L).any():
            raise ValueError(f"lses[{i}] contains NaN or +inf; only -inf is allowed")
    dtype = result_dtype(*(Y.dtype for Y in Ys), *(L.dtype for L in Ls))
    L = np.stack([x.astype(np.float64) for x in Ls])
    top = L.max(axis=0)
    seen = top > -np.inf
    safe_top = np.where(seen, top, 0.0)
    W = np.exp(L - safe_top)  # exp(-inf) = 0 for parts that saw no key
    z = W.sum(axis=0)
    safe_z = np.where(seen, z, 1.0)
    Y = sum(W[i][..., None] * Ys[i].astype(np.float64) for i in range(len(Ys)))
    Y = np.where(seen[..., None], Y / safe_z[..., None], 0.0)
    lse = np.where(seen, safe_top + np.log(safe_z), -np.inf)
    return Y.astype(dtype), lse.astype(dtype)


@register(
    "exact",
    section="§2.1",
    family="exact",
    causal=True,
    masks=True,
    bound=None,
    summary="Exact blocked online-softmax attention (the reference; no approximation).",
)
def _exact(problem, *, rng):
    out, lse = _attend(problem)
    return method_result(problem, out, lse, None, problem_cost_exact(problem))
