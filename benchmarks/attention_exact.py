r"""Exact attention: ``attention.softmax_attention`` against PyTorch and the machine's roofline.

Implementations, on the same inputs (``d = 64`` unless stated):

* ``rnla softmax_attention`` - the blocked online-softmax Numba kernel (prefill) and the
  split-key kernel with grouped-query heads stacked (decode);
* ``PyTorch SDPA`` - ``torch.nn.functional.scaled_dot_product_attention`` on CPU, with
  ``is_causal`` / ``enable_gqa`` as the row needs (the baseline when torch is installed);
* ``NumPy exact`` - ``softmax(Q K^T * scale) V`` forming the score matrix head by head
  (non-causal multi-head rows up to ``n = 4096``);
* **roofline** calls timed in the same interleaved rounds: for prefill rows a square
  ``2048 x 2048`` GEMM through NumPy (all BLAS threads, the row's dtype; ``--quick``:
  1024) and the **same-shape GEMM pair** of one head, ``S = Q K^T`` (``n x d`` times
  ``d x m``) then ``S V`` (``n x m`` times ``m x dv``), through the same BLAS: the rate
  any design that forms attention's two products with these GEMM shapes is bounded by
  (with ``d = 64`` the inner dimension of the first product and the output width of
  the second are small, and the square GEMM rate is out of reach); for decode rows a
  vectorised parallel sum over a 1 GB array (``--quick``: 64 MB), larger than the
  caches. The fractions below are ratios of medians measured side by side, so that
  machine load hits both alike.

Rows (full run): prefill with 8 heads at ``n = 1024``, 4 heads at ``n = 4096``
(causal and not, ``d`` = 64 and 128, float32 and float64), grouped-query 9 query / 3
key-value heads at ``n = 4096`` causal, 1 head at ``n = 8192`` (causal and not,
float32 and float64); decode (one new token per query head, 9 query / 3 key-value
heads, ``d = 64``) with ``m`` in {2048, 8192, 32768, 131072}, plus 16 new tokens at
``m = 32768``. Flops count the visible score entries: ``2 (d + dv)`` per entry, about
half of ``n m`` under ``causal``. Decode bytes are the ``K`` and ``V`` bytes read.

Accuracy is the max-abs error relative to ``max |Y|`` on (up to) 256 sampled rows
against a float64 NumPy computation of those rows. Goals: prefill >= 80% of the GEMM
rate at ``n >= 4096``; decode >= 70% of the read bandwidth at ``m >= 8192``; every row at
most PyTorch's time (speed-up >= 1).

Also: the single-thread CPU time of one head at ``n = 4096`` (non-causal and causal)
against a one-thread square GEMM and same-shape GEMM pair (load-independent), and the
peak extra memory of ``softmax_attention`` at ``n = 65536``, float32 (``--quick``:
8192), in a fresh subprocess (``VmHWM`` reset through
``/proc/self/clear_refs`` after import and compilation; ``ru_maxrss`` delta where that
is unavailable).

Interference between interleaved calls: after a multithreaded OpenBLAS call, its worker
threads spin for about 2^28 cycles (~0.1 s) before sleeping, so a Numba-parallel call
timed right after a BLAS roofline ran on fewer than two cores (decode at ``m = 8192``
measured 0.6 ms alone, 2-9 ms right after a 2-thread GEMM). The script therefore sets
``OPENBLAS_THREAD_TIMEOUT=4`` (spin 2^4 cycles) unless the environment sets it; the
value in effect is recorded in ``attention_exact_extra.json``.

Decode is also timed in separate phases (:func:`decode_phases`), the reported decode
numbers: *cold* calls (a 64 MB buffer read before each, so that ``K`` and ``V`` come from
DRAM, as in a model whose layers each read their own cache) in rounds alternating with
the 1 GB read roofline (the host's read rate swings by up to 2x within minutes: 22-55
GB/s measured for the same read in one session), *warm* calls repeated back to back
(``K``/``V`` left in the 32 MB last-level cache when they fit), and PyTorch alone after a
pause (its OpenMP threads spin after each call). The multi-token causal row does 24
flops per byte of ``K``/``V``: it is compute-bound and is judged against a GEMM timed in
the same rounds. Every phase records the cores that other processes used meanwhile
(``/proc/stat``), and each decode row starts once they use less than 0.2 cores (at
most 60 s of waiting): a 2-thread call of 0.2-10 ms waits for a core held by another
process (its parallel region ends when the late thread has run), which is what the
noisiest rows of earlier runs measured. :func:`decode_interference` times our call
right after each thing that precedes it in the interleaved rounds (the 1 GB read, a
PyTorch call, a sleep, itself), which explains the interleaved decode rows.

Run ``python -m benchmarks.attention_exact [--quick] [--repeats 5]``; ``--decode-only
[--repeats 10]`` re-runs only the decode phases into the committed results
(:func:`decode_only`); ``--exp-exhaustive`` instead checks the prefill's two
exponentials (the row kernel and the score tiles' epilogue) on every float32 input of
``[-87, 0]`` and on 2e7 float64 inputs of ``[-708, 0]`` (about a minute; result in
``attention_exact_exp_exhaustive.json``).
"""

from __future__ import annotations

import os

# Before NumPy loads OpenBLAS (see the module docstring).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numba
import numpy as np

from attention._kernels.exact import _TILE_VECS, _qk_exp_tiles
from attention.exact import softmax_attention
from benchmarks.harness import RESULTS_DIR, Task, main
from rnla._kernels.fastexp import _exp_sum_vec

try:
    import torch
except ImportError:  # the benchmark runs without torch; its column is then absent
    torch = None

NAME = "attention_exact"
ACCURACY_ROWS = 256
PREFILL_GOAL = 0.80
DECODE_GOAL = 0.70
OURS = "rnla softmax_attention"
TORCH = "PyTorch SDPA"
NUMPY = "NumPy exact (forms n x n)"
GEMM = "roofline: GEMM"
PAIR = "roofline: same-shape GEMM pair"
READ = "roofline: memory read"
ROOFLINES = (GEMM, PAIR, READ)


def numpy_exact(Q, K, V, scale):
    """Plain NumPy attention, one head at a time (forms the ``n x n`` scores)."""
    out = np.empty((*Q.shape[:-1], V.shape[-1]), dtype=Q.dtype)
    for h in range(Q.shape[0]):
        S = Q[h] @ K[h].T
        S *= scale
        S -= S.max(axis=1, keepdims=True)
        np.exp(S, out=S)
        out[h] = (S @ V[h]) / S.sum(axis=1, keepdims=True)
    return out


def accuracy_metric(Q, K, V, scale, causal, rng):
    """Max-abs error on sampled rows, relative to max |Y|, vs a float64 NumPy computation."""
    n, m = Q.shape[1], K.shape[1]
    group = Q.shape[0] // K.shape[0]
    rows = np.sort(rng.choice(n, size=min(ACCURACY_ROWS, n), replace=False))
    Q64 = Q[:, rows].astype(np.float64)
    K64 = np.repeat(K.astype(np.float64), group, axis=0)
    V64 = np.repeat(V.astype(np.float64), group, axis=0)
    S = np.einsum("hrd,hmd->hrm", Q64, K64) * scale
    if causal:
        S = np.where(np.arange(m)[None, :] <= rows[:, None] + m - n, S, -np.inf)
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    ref = (P @ V64) / P.sum(axis=-1, keepdims=True)

    def metric(name, out):
        if name in ROOFLINES:
            return float("nan")
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)
        return float(np.max(np.abs(out[:, rows] - ref)) / np.max(np.abs(ref)))

    return metric


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _read_all(x):
    """Sum of a 2-D array, rows over the threads (a memory-read roofline).

    ``fastmath`` lets the row sums vectorise: a sequential float32 sum is bound by the
    latency of the addition (10.9 GB/s on two threads, a third of the read rate).
    """
    total = 0.0
    for i in numba.prange(x.shape[0]):
        s = np.float32(0.0)
        row = x[i]
        for j in range(row.shape[0]):
            s += row[j]
        total += s
    return total


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _read_pair(a, b):
    """:func:`_read_all` of two 2-D float32 arrays in one parallel region (K and V)."""
    total = 0.0
    n = a.shape[0]
    for i in numba.prange(n + b.shape[0]):
        row = a[i] if i < n else b[i - n]
        s = np.float32(0.0)
        for j in range(row.shape[0]):
            s += row[j]
        total += s
    return total


def _as_rows(x):
    """Return a float array's bytes as 1 KB float32 rows (for the read rooflines)."""
    flat = np.ascontiguousarray(x).reshape(-1).view(np.float32)
    return flat.reshape(-1, 256)


def gemm_call(dtype, size):
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    return (lambda: A @ B), 2.0 * size**3


_PAIR_BUFFERS = {}


def pair_call(Q, K, V):
    """Return the two GEMMs of one head at attention's shapes (tile-GEMM roofline)."""
    q, k, v = Q[0], K[0], V[0]
    key = (q.shape[0], k.shape[0], q.dtype.str)
    if key not in _PAIR_BUFFERS:
        _PAIR_BUFFERS[key] = np.empty((q.shape[0], k.shape[0]), dtype=q.dtype)
    S = _PAIR_BUFFERS[key]
    out = np.empty((q.shape[0], v.shape[1]), dtype=q.dtype)

    def run():
        np.dot(q, k.T, S)
        np.dot(S, v, out)

    return run, 2.0 * q.shape[0] * k.shape[0] * (q.shape[1] + v.shape[1])


def read_call(megabytes):
    x = np.ones((megabytes * 1024, 256), dtype=np.float32)  # 1 KB rows
    return (lambda: _read_all(x)), float(x.nbytes)


def attention_task(kind, hq, hk, n, m, d, dtype, causal, rng, roofline) -> Task:
    Q = rng.standard_normal((hq, n, d)).astype(dtype)
    K, V = (rng.standard_normal((hk, m, d)).astype(dtype) for _ in range(2))
    scale = 1.0 / np.sqrt(d)
    impls = {OURS: lambda: softmax_attention(Q, K, V, causal=causal)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (Q, K, V))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        gqa = hq != hk
        impls[TORCH] = lambda: sdpa(tq, tk, tv, is_causal=causal, enable_gqa=gqa)
    if kind == "prefill" and not causal and hq == hk and n <= 4096:
        impls[NUMPY] = lambda: numpy_exact(Q, K, V, scale)
    roof_name, (roof_fn, roof_amount) = roofline
    impls[roof_name] = roof_fn
    pair_amount = None
    if kind == "prefill":
        impls[PAIR], pair_amount = pair_call(Q, K, V)
    # Visible score entries (bottom-right causal: row i sees min(m, i + m - n + 1) keys).
    visible = n * m
    if causal:
        visible = int(np.clip(np.arange(n) + m - n + 1, 0, m).sum())
    label = f"{hq}q/{hk}kv heads" if hq != hk else f"{hq} heads"
    shape = f"n={n}" if kind == "prefill" else f"n={n}, m={m}"
    name = f"{kind} {shape}, {label}, d={d}, {np.dtype(dtype).name}"
    name += ", causal" if causal else ""
    baseline = TORCH if torch is not None else OURS
    return Task(
        name=name,
        impls=impls,
        baseline=baseline,
        accuracy=accuracy_metric(Q, K, V, scale, causal, rng),
        accuracy_label="max rel. error (256 rows)",
        goal=1.0 if torch is not None else None,
        goal_text="at most PyTorch's time (>= 1x)",
        goal_for=[OURS] if torch is not None else [],
        params={
            "kind": kind,
            "n": n,
            "m": m,
            "heads_q": hq,
            "heads_kv": hk,
            "d": d,
            "dtype": np.dtype(dtype).name,
            "causal": causal,
            "flops": 4.0 * hq * visible * d,
            "kv_bytes": float(K.nbytes + V.nbytes),
            "roofline": roof_name,
            "roofline_amount": roof_amount,
            "pair_amount": pair_amount,
        },
    )


EXTRA = {}
REPEATS = [5]  # the run's --repeats, also used for the decode phases


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20250601)
    size = 1024 if quick else 2048
    gemm = {dt: (GEMM, gemm_call(dt, size)) for dt in (np.float32, np.float64)}
    read = (READ, read_call(64 if quick else 1024))
    EXTRA.update(gemm_size=size, read_mb=64 if quick else 1024)
    EXTRA["torch"] = None if torch is None else torch.__version__
    EXTRA["OPENBLAS_THREAD_TIMEOUT"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if torch is not None:
        EXTRA["torch_threads"] = torch.get_num_threads()
    f32, f64 = np.float32, np.float64
    if quick:
        prefill = [(4, 4, 512, 64, f32, False), (6, 2, 512, 64, f32, True)]
        prefill += [(4, 4, 512, 64, f64, True)]
        decode = [(9, 3, 1, m, 64, f32, False) for m in (2048, 8192)]
    else:
        prefill = [(8, 8, 1024, 64, f32, False)]
        for dt in (f32, f64):
            prefill += [(4, 4, 4096, 64, dt, False), (4, 4, 4096, 64, dt, True)]
        prefill += [(4, 4, 4096, 128, f32, False), (4, 4, 4096, 128, f32, True)]
        prefill += [(9, 3, 4096, 64, f32, True)]
        for dt in (f32, f64):
            prefill += [(1, 1, 8192, 64, dt, False), (1, 1, 8192, 64, dt, True)]
        decode = [(9, 3, 1, m, 64, f32, False) for m in (2048, 8192, 32768, 131072)]
        decode += [(9, 3, 16, 32768, 64, f32, True), (9, 3, 1, 32768, 64, f64, False)]
    tasks = [
        attention_task("prefill", hq, hk, n, n, d, dt, causal, rng, gemm[dt])
        for hq, hk, n, d, dt, causal in prefill
    ]
    tasks += [
        attention_task("decode", hq, hk, n, m, d, dt, causal, rng, read)
        for hq, hk, n, m, d, dt, causal in decode
    ]
    return tasks


_MEMORY_SCRIPT = """
import json, resource, sys, time
import numpy as np
from attention.exact import softmax_attention

def reset_peak():
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM, ru_maxrss), so
    # that the import/compilation peak does not hide the call's own peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)

n, dtype = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
Q, K, V = (rng.standard_normal((n, 64)).astype(dtype) for _ in range(3))
softmax_attention(Q[:1024], K[:1024], V[:1024])  # compile / load the kernel, start threads
reset = reset_peak()
before = status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
Y = softmax_attention(Q, K, V)
seconds = time.perf_counter() - t
# ru_maxrss is not reset by clear_refs on every kernel; VmHWM is.
after = status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = {"before_kb": before, "after_kb": after, "seconds": seconds,
       "output_mb": Y.nbytes / 1e6, "peak_reset": reset}
print(json.dumps(res))
"""


def peak_memory(n, dtype="float32") -> dict:
    """Peak extra resident memory of one ``softmax_attention`` call, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_SCRIPT), str(n), dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["n"] = n
    res["extra_mb"] = (res["after_kb"] - res["before_kb"]) / 1024
    res["score_matrix_mb"] = n * n * np.dtype(dtype).itemsize / 1e6
    return res


def single_thread_cpu_times(n, repeats=3) -> dict:
    """Best thread CPU time of each implementation on one thread (robust to machine load).

    Wall-clock times on a shared machine include waiting for a core; the CPU time of a
    single-threaded call does not. Numba, BLAS (through threadpoolctl, when installed)
    and torch are all set to one thread for this measurement and restored afterwards.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        threadpool_limits = None
    rng = np.random.default_rng(7)
    res = {}
    numba_threads = numba.get_num_threads()
    torch_threads = None if torch is None else torch.get_num_threads()
    limiter = threadpool_limits(1) if threadpool_limits else None
    try:
        numba.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        for dtype in ("float32", "float64"):
            Q, K, V = (rng.standard_normal((1, n, 64)).astype(dtype) for _ in range(3))
            impls = {OURS: lambda Q=Q, K=K, V=V: softmax_attention(Q, K, V)}
            impls[f"{OURS} (causal)"] = lambda Q=Q, K=K, V=V: softmax_attention(
                Q, K, V, causal=True
            )
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x) for x in (Q, K, V))
                impls[TORCH] = lambda tq=tq, tk=tk, tv=tv: (
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
                )
            A, B = (rng.standard_normal((2048, 2048)).astype(dtype) for _ in range(2))
            impls["GEMM 2048^3"] = lambda A=A, B=B: A @ B
            impls["GEMM pair"] = pair_call(Q, K, V)[0]
            for fn in impls.values():
                fn()
            best = dict.fromkeys(impls, np.inf)
            for _ in range(repeats):  # interleaved
                for name, fn in impls.items():
                    t = time.thread_time()
                    fn()
                    best[name] = min(best[name], time.thread_time() - t)
            for name, sec in best.items():
                res[f"{name}, {dtype}"] = sec
    finally:
        numba.set_num_threads(numba_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if limiter is not None:
            limiter.restore_original_limits()
    return res


DECODE_PHASE_ROWS = [
    (1, 2048, "float32"),
    (1, 8192, "float32"),
    (1, 32768, "float32"),
    (1, 131072, "float32"),
    (16, 32768, "float32"),
    (1, 32768, "float64"),
]
# Read before each cold call (untimed): twice the 32 MB last-level cache of the machine.
FLUSH_MB = 64
# Longest wait for other processes to leave the cores before each decode row (seconds).
QUIET_WAIT = 60.0


def torch_sdpa(tq, tk, tv, causal):
    """PyTorch's SDPA with grouped-query heads."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return sdpa(tq, tk, tv, is_causal=causal, enable_gqa=True)


def _busy_jiffies() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, CPU ticks of this process), from /proc."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    with open(f"/proc/{os.getpid()}/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return sum(v) - v[3] - v[4], int(own[11]) + int(own[12])


class OtherLoad:
    """Cores used by other processes while the block runs (``/proc/stat``; None elsewhere).

    A decode call of 0.2-10 ms on both cores waits for a core whenever another process
    holds one (the parallel region ends when its last thread has run), so every decode
    number below is reported with this figure.
    """

    def __enter__(self):
        try:
            self.start = _busy_jiffies()
        except OSError:  # pragma: no cover - not Linux
            self.start = None
        self.t0 = time.perf_counter()
        self.cores = None
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            busy, own = _busy_jiffies()
            ticks = (busy - self.start[0]) - (own - self.start[1])
            wall = time.perf_counter() - self.t0
            self.cores = max(ticks, 0) / os.sysconf("SC_CLK_TCK") / wall
        return False


def wait_for_quiet(limit: float = 0.2, max_wait: float = 60.0, window: float = 1.0) -> float:
    """Sleep until other processes use fewer than ``limit`` cores over ``window`` seconds.

    Gives up after ``max_wait`` seconds; returns the seconds waited. The decode rows
    start from here, so that a short call is not timed while another process holds a
    core (the load measured during the phase is reported either way).
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        with OtherLoad() as load:
            time.sleep(window)
        if load.cores is None or load.cores < limit:
            break
    return time.perf_counter() - t0


def decode_phases(repeats: int, quick: bool, pause: float = 0.5) -> list[dict]:
    """Decode rows timed in phases: cold (against the read roofline), warm, PyTorch.

    Rows: 9 query / 3 key-value heads, ``d = 64``, ``(new tokens, m, dtype)``; causal
    when there are several new tokens. Per row, after ``pause`` seconds of sleep each:

    * **cold** - ``repeats`` rounds of: read a 64 MB buffer (untimed, so that ``K`` and
      ``V`` are not in the 32 MB last-level cache, as in a model whose layers each read
      their own cache), time our call, time the read roofline (parallel sum over 1 GB),
      and for the multi-token row a 2048^3 GEMM of the row's dtype; also, after another
      flush, a parallel read of the same ``K`` and ``V`` bytes (the read rate of exactly
      the memory the call reads, which the 1 GB read need not have). The fraction is the
      ratio of the medians of the same rounds (both rates swing by up to 2x within
      minutes on this shared host: 22-55 GB/s for the same read);
    * **warm** - our call repeated back to back (``K``/``V`` stay in the last-level
      cache when they fit: ``m <= 8192`` in float32);
    * **PyTorch** - SDPA repeated back to back (its OpenMP threads spin between calls
      and would slow a call of ours timed right after it); the time ratio is warm
      against warm.

    Each row starts once other processes use less than 0.2 cores (at most
    ``QUIET_WAIT`` seconds of waiting, ``waited_s``), and each phase records the cores
    that other processes used meanwhile, its pause included (``others``; ``/proc/stat``
    counts 10 ms ticks).
    """
    rng = np.random.default_rng(11)
    read_fn, read_bytes = read_call(64 if quick else 1024)
    flush = np.ones((FLUSH_MB * 1024, 256), dtype=np.float32)
    cases = [(1, 2048, "float32"), (1, 8192, "float32")] if quick else DECODE_PHASE_ROWS
    rows = []

    def phase(fn):
        # The load is taken over the pause too: /proc/stat counts 10 ms ticks, too coarse
        # for a phase of a few milliseconds alone.
        with OtherLoad() as load:
            time.sleep(pause)
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return float(np.median(times)), load.cores

    for n, m, dtype in cases:
        causal = n > 1
        Q = rng.standard_normal((9, n, 64)).astype(dtype)
        K, V = (rng.standard_normal((3, m, 64)).astype(dtype) for _ in range(2))
        kv = float(K.nbytes + V.nbytes)
        visible = n * m - (n * (n - 1) // 2 if causal else 0)
        flops = 4.0 * 9 * visible * 64

        def ours(Q=Q, K=K, V=V, c=causal):
            return softmax_attention(Q, K, V, causal=c)

        gemm_fn, gemm_flops = gemm_call(dtype, 1024 if quick else 2048)
        waited = wait_for_quiet(max_wait=0.0 if quick else QUIET_WAIT)
        for fn in (ours, read_fn, gemm_fn):
            fn()
        kr, vr = _as_rows(K), _as_rows(V)
        _read_pair(kr, vr)
        cold, same, read, gemm = [], [], [], []
        with OtherLoad() as cold_load:
            time.sleep(pause)
            for _ in range(repeats):
                _read_all(flush)
                t = time.perf_counter()
                ours()
                cold.append(time.perf_counter() - t)
                _read_all(flush)
                t = time.perf_counter()
                _read_pair(kr, vr)
                same.append(time.perf_counter() - t)
                t = time.perf_counter()
                read_fn()
                read.append(time.perf_counter() - t)
                if causal:
                    t = time.perf_counter()
                    gemm_fn()
                    gemm.append(time.perf_counter() - t)
        cold_s, read_s = float(np.median(cold)), float(np.median(read))
        same_rate = kv / float(np.median(same)) / 1e9
        warm_s, warm_load = phase(ours)
        torch_s = None
        if torch is not None:
            args = tuple(torch.from_numpy(x) for x in (Q, K, V))
            torch_s, _ = phase(lambda a=args, c=causal: torch_sdpa(*a, c))
        read_rate = read_bytes / read_s / 1e9
        row = {
            "n": n,
            "m": m,
            "dtype": dtype,
            "causal": causal,
            "kv_bytes": kv,
            "flops": flops,
            "cold_ms": 1e3 * cold_s,
            "warm_ms": 1e3 * warm_s,
            "torch_ms": None if torch_s is None else 1e3 * torch_s,
            "ours_over_torch": None if torch_s is None else warm_s / torch_s,
            "cold_rate": kv / cold_s / 1e9,
            "warm_rate": kv / warm_s / 1e9,
            "read_rate": read_rate,
            "fraction": kv / cold_s / 1e9 / read_rate,
            "warm_fraction": kv / warm_s / 1e9 / read_rate,
            "same_bytes_read_rate": same_rate,
            "same_bytes_fraction": kv / cold_s / 1e9 / same_rate,
            "others_cold": cold_load.cores,
            "waited_s": waited,
            "others_warm": warm_load,
        }
        if causal:
            gemm_rate = gemm_flops / float(np.median(gemm)) / 1e9
            row.update(
                gflops_cold=flops / cold_s / 1e9,
                gflops_warm=flops / warm_s / 1e9,
                gemm_rate=gemm_rate,
                gemm_fraction=flops / cold_s / 1e9 / gemm_rate,
                gemm_fraction_warm=flops / warm_s / 1e9 / gemm_rate,
            )
        rows.append(row)
    return rows


def decode_interference(repeats: int, m: int = 32768, pause: float = 0.5) -> dict:
    """Why the interleaved decode rows are slower: our call timed in five situations.

    9 query / 3 key-value heads, ``d = 64``, float32, ``m`` keys (50 MB of ``K``/``V``
    at 32768, more than the last-level cache). Rounds of: our call back to back (its
    threads spinning, ``K``/``V`` partly cached), after the 64 MB flush, right after a
    PyTorch SDPA call on the same inputs, right after the 1 GB read roofline, and after
    ``pause`` seconds of sleep (the thread pool asleep). Medians in ms, with the cores
    other processes used.
    """
    rng = np.random.default_rng(12)
    Q = rng.standard_normal((9, 1, 64)).astype(np.float32)
    K, V = (rng.standard_normal((3, m, 64)).astype(np.float32) for _ in range(2))
    read_fn, _ = read_call(1024)
    flush = np.ones((FLUSH_MB * 1024, 256), dtype=np.float32)
    args = None if torch is None else tuple(torch.from_numpy(x) for x in (Q, K, V))

    def ours():
        softmax_attention(Q, K, V)

    before = {
        "back to back": ours,
        "after the 64 MB flush": lambda: _read_all(flush),
        "after the 1 GB read roofline": read_fn,
        f"after {pause} s of sleep": lambda: time.sleep(pause),
    }
    if args is not None:
        before["after a PyTorch SDPA call"] = lambda: torch_sdpa(*args, False)
    ours()
    wait_for_quiet(max_wait=QUIET_WAIT)
    times = {k: [] for k in before}
    with OtherLoad() as load:
        for _ in range(repeats):
            for name, prep in before.items():
                prep()
                t = time.perf_counter()
                ours()
                times[name].append(time.perf_counter() - t)
    res = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
    return {"m": m, "kv_bytes": float(K.nbytes + V.nbytes), "median_ms": res, "others": load.cores}


def roofline_rows(result: dict) -> list[dict]:
    """Per task: our rate, the roofline's rate measured alongside, and the time ratios."""
    params = {t["name"]: t["params"] for t in result["tasks"]}
    by_task = {}
    for row in result["rows"]:
        by_task.setdefault(row["task"], {})[row["implementation"]] = row["median_s"]
    out = []
    for task, times in by_task.items():
        p = params[task]
        ours = times[OURS]
        roof = times[p["roofline"]]
        pair_rate = None
        if p["kind"] == "prefill":
            rate, unit = p["flops"] / ours / 1e9, "GFLOP/s"
            roof_rate = p["roofline_amount"] / roof / 1e9
            pair_rate = p["pair_amount"] / times[PAIR] / 1e9
            goal = PREFILL_GOAL if p["n"] >= 4096 else None
        else:
            rate, unit = p["kv_bytes"] / ours / 1e9, "GB/s of K/V"
            roof_rate = p["roofline_amount"] / roof / 1e9
            goal = DECODE_GOAL if p["m"] >= 8192 else None
        torch_s = times.get(TORCH)
        out.append(
            {
                "task": task,
                "ours_ms": 1e3 * ours,
                "torch_ms": None if torch_s is None else 1e3 * torch_s,
                "ours_over_torch": None if torch_s is None else ours / torch_s,
                "rate": rate,
                "unit": unit,
                "roofline_rate": roof_rate,
                "fraction": rate / roof_rate,
                "pair_rate": pair_rate,
                "pair_fraction": None if pair_rate is None else rate / pair_rate,
                "goal": goal,
            }
        )
    return out


def _load_text(cores) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


def phase_lines(phases: list[dict]) -> list[str]:
    """One summary line per decode phase row."""
    out = []
    for r in phases:
        case = f"decode n={r['n']}, m={r['m']}, {r['dtype']}" + (", causal" if r["causal"] else "")
        vs = (
            "" if r["ours_over_torch"] is None else f", ours/torch time {r['ours_over_torch']:.2f}"
        )
        torch_ms = "n/a" if r["torch_ms"] is None else f"{r['torch_ms']:.3g} ms"
        if r["causal"]:
            head = (
                f"{case}: cold {r['cold_ms']:.3g} ms = {r['gflops_cold']:.0f} GFLOP/s of "
                f"GEMM {r['gemm_rate']:.0f} = {r['gemm_fraction']:4.0%} (compute-bound: "
                f"{r['flops'] / r['kv_bytes']:.0f} flop per K/V byte); warm "
                f"{r['warm_ms']:.3g} ms = {r['gemm_fraction_warm']:4.0%}"
            )
        else:
            goal = ""
            if r["m"] >= 8192:
                met = "met" if r["fraction"] >= DECODE_GOAL else "NOT met"
                goal = f" [goal {DECODE_GOAL:.0%}: {met}]"
            head = (
                f"{case}: cold {r['cold_ms']:.3g} ms = {r['cold_rate']:.1f} GB/s of K/V of "
                f"{r['read_rate']:.1f} = {r['fraction']:4.0%}{goal} (of a cold read of the "
                f"same bytes, {r['same_bytes_read_rate']:.1f} GB/s: "
                f"{r['same_bytes_fraction']:4.0%}); warm {r['warm_ms']:.3g} ms "
                f"= {r['warm_rate']:.1f} GB/s = {r['warm_fraction']:4.0%}"
            )
        out.append(
            f"{head}; PyTorch {torch_ms}{vs}; others {_load_text(r['others_cold'])}/"
            f"{_load_text(r['others_warm'])} cores"
        )
    return out


def roofline_rst(rows: list[dict], machine_line: str, phases=None, phase_note: str = "") -> str:
    """Return the roofline table as an RST list-table (included by the docs)."""
    header = ["case", "ours [ms]", "PyTorch [ms]", "ours / PyTorch time", "ours", "roofline"]
    header += ["fraction of roofline", "same-shape GEMM pair", "fraction of the pair"]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines.append("   * - " + "\n     - ".join(header))
    for r in rows:
        goal = "" if r["goal"] is None else f" (goal {r['goal']:.0%})"
        cells = [
            r["task"],
            f"{r['ours_ms']:.3g}",
            "n/a" if r["torch_ms"] is None else f"{r['torch_ms']:.3g}",
            "n/a" if r["ours_over_torch"] is None else f"{r['ours_over_torch']:.2f}",
            f"{r['rate']:.1f} {r['unit']}",
            f"{r['roofline_rate']:.1f}",
            f"{r['fraction']:.0%}{goal}",
            "" if r["pair_rate"] is None else f"{r['pair_rate']:.1f}",
            "" if r["pair_fraction"] is None else f"{r['pair_fraction']:.0%}",
        ]
        lines.append("   * - " + "\n     - ".join(cells))
    text = "\n".join(lines) + "\n\n" + machine_line + "\n"
    if phases:
        text += (
            "\nDecode in separate phases (9 query / 3 key-value heads, ``d = 64``). *Cold*: "
            "a 64 MB buffer is read before each call, so that ``K`` and ``V`` come from DRAM "
            "as in a model whose layers each read their own cache, and the rounds alternate "
            "with the 1 GB read roofline (fraction = ratio of the medians of the same rounds; "
            "the multi-token row, compute-bound, against a 2048^3 GEMM timed in the same "
            "rounds). *Warm*: repeated back to back (``K``/``V`` stay in the 32 MB "
            "last-level cache when they fit). PyTorch repeated alone after a pause; the time "
            "ratio is warm against warm. *Others*: cores used by other processes during the "
            "cold / warm phase." + (f" {phase_note}" if phase_note else "") + "\n\n"
        )
        head = ["case", "cold [ms]", "cold rate", "roofline", "fraction (cold)"]
        head += ["of a cold read of the same bytes"]
        head += ["warm [ms]", "fraction (warm)", "PyTorch [ms]", "ours / PyTorch time"]
        head += ["others [cores]"]
        tab = [".. list-table::", "   :header-rows: 1", ""]
        tab.append("   * - " + "\n     - ".join(head))
        for r in phases:
            case = f"n={r['n']}, m={r['m']}, {r['dtype']}" + (", causal" if r["causal"] else "")
            if r["causal"]:
                cold = f"{r['gflops_cold']:.0f} GFLOP/s"
                roof = f"GEMM {r['gemm_rate']:.0f} GFLOP/s"
                frac, wfrac = r["gemm_fraction"], r["gemm_fraction_warm"]
            else:
                cold = f"{r['cold_rate']:.1f} GB/s"
                roof = f"read {r['read_rate']:.1f} GB/s"
                frac, wfrac = r["fraction"], r["warm_fraction"]
            cells = [
                case,
                f"{r['cold_ms']:.3g}",
                cold,
                roof,
                f"{frac:.0%}",
                "" if r["causal"] else f"{r['same_bytes_fraction']:.0%}",
                f"{r['warm_ms']:.3g}",
                f"{wfrac:.0%}",
                "n/a" if r["torch_ms"] is None else f"{r['torch_ms']:.3g}",
                "n/a" if r["ours_over_torch"] is None else f"{r['ours_over_torch']:.2f}",
                f"{_load_text(r['others_cold'])} / {_load_text(r['others_warm'])}",
            ]
            tab.append("   * - " + "\n     - ".join(cells))
        text += "\n".join(tab) + "\n"
    return text


INTERLEAVED = (
    "  (interleaved decode rows: each call of ours follows the previous round's read "
    "roofline, which evicts K/V from the L3, and a PyTorch call, whose threads are "
    "still spinning; the phase rows below are the decode numbers)"
)


def decode_section(repeats: int, quick: bool) -> list[str]:
    """Run the decode phases (and, in a full run, the interference rounds); summary lines."""
    lines = []
    phases = decode_phases(repeats, quick)
    EXTRA["decode_phases"] = phases
    lines.append(
        "Decode in separate phases, 9q/3kv heads, d=64 (cold: K/V read from DRAM, a 64 MB "
        "buffer read before each call, rounds alternating with the 1 GB read roofline; "
        "warm: repeated back to back, K/V left in the 32 MB L3 when they fit; PyTorch "
        "warm; 'others' = cores used by other processes meanwhile):"
    )
    lines += [f"  {line}" for line in phase_lines(phases)]
    if not quick:
        diag = decode_interference(repeats)
        EXTRA["decode_interference"] = diag
        others = "n/a" if diag["others"] is None else f"{diag['others']:.2f}"
        lines.append(
            f"Decode n=1, m={diag['m']}, float32, our call timed in rounds after each of "
            f"(others {others} cores):"
        )
        for name, ms in diag["median_ms"].items():
            rate = diag["kv_bytes"] / ms / 1e6
            lines.append(f"  {name:32s} {ms:7.3f} ms = {rate:5.1f} GB/s of K/V")
    return lines


def summarize(result: dict, quick: bool) -> tuple[str, list[dict]]:
    rows = roofline_rows(result)
    EXTRA["roofline"] = rows
    lines = [
        "",
        f"Rooflines timed in the same interleaved rounds: GEMM {EXTRA['gemm_size']}^3 "
        "and the same-shape GEMM pair of one head (NumPy, all BLAS threads), vectorised "
        f"parallel read of {EXTRA['read_mb']} MB (Numba); "
        f"torch: {EXTRA['torch'] or 'not installed'} ({EXTRA.get('torch_threads')} threads); "
        f"other processes used {_load_text(EXTRA.get('others_table'))} cores on average "
        "during these rounds",
    ]
    for r in rows:
        ratio = r["ours_over_torch"]
        vs = "" if ratio is None else f", ours/torch time {ratio:.2f}"
        goal = ""
        if r["goal"] is not None:
            goal = f" [goal {r['goal']:.0%}: {'met' if r['fraction'] >= r['goal'] else 'NOT met'}]"
        pair = ""
        if r["pair_rate"] is not None:
            pair = f"; same-shape pair {r['pair_rate']:.1f} = {r['pair_fraction']:4.0%}"
        lines.append(
            f"  {r['task']:52s} {r['rate']:7.1f} {r['unit']:11s} of {r['roofline_rate']:6.1f}"
            f" = {r['fraction']:4.0%}{goal}{pair}{vs}"
        )
    lines.append(INTERLEAVED)
    lines += decode_section(max(REPEATS[0], 10), quick)
    n_cpu = 1024 if quick else 4096
    cpu = single_thread_cpu_times(n_cpu)
    EXTRA["single_thread_cpu_s"] = {"n": n_cpu, **cpu}
    lines.append(f"Single-thread CPU time (load-independent), n={n_cpu}, one head, d=64:")
    flops = 4.0 * n_cpu * n_cpu * 64
    for key, sec in cpu.items():
        name, dtype = key.rsplit(", ", 1)
        if name.startswith("GEMM"):
            continue
        gemm1 = 2.0 * 2048**3 / cpu[f"GEMM 2048^3, {dtype}"] / 1e9
        pair1 = flops / cpu[f"GEMM pair, {dtype}"] / 1e9
        causal = name.endswith("(causal)")
        rate = (flops * (n_cpu + 1) / (2 * n_cpu) if causal else flops) / sec / 1e9
        ref = None if causal else cpu.get(f"{TORCH}, {dtype}")
        vs = f", {ref / sec:.2f}x PyTorch's speed" if ref else ""
        lines.append(
            f"  {key:36s} {sec * 1e3:8.1f} ms  {rate:6.1f} GFLOP/s "
            f"({rate / gemm1:4.0%} of the 1-thread GEMM rate {gemm1:.1f}, {rate / pair1:4.0%} "
            f"of the same-shape pair {pair1:.1f}){vs}"
        )
    n_mem = 8192 if quick else 65536
    mem = peak_memory(n_mem)
    EXTRA["peak_memory"] = mem
    lines.append(
        f"Peak extra memory of softmax_attention, n={n_mem}, d=64, float32: "
        f"{mem['extra_mb']:.1f} MB (output {mem['output_mb']:.1f} MB; the score matrix "
        f"would be {mem['score_matrix_mb']:.0f} MB), call took {mem['seconds']:.2f} s"
    )
    return "\n".join(lines), rows


def exp_exhaustive() -> dict:
    """Error of the prefill's exponentials: every float32 input, sampled float64 inputs.

    Float32: the row kernel :data:`rnla._kernels.fastexp._exp_sum_vec` (first key block,
    masked blocks) and the score tiles' epilogue (:func:`_qk_exp_tiles`, every other
    block) on all 1.1e9 float32 values from ``-0`` down to ``-87``, against ``exp`` of
    the input in float64, in units of the float32 ulp of the correctly rounded result.
    Float64: the same two kernels (the epilogue's 16-entry table exponential on
    AVX-512) on 2e7 points of ``[-708, 0]`` (an even grid, uniform draws and ``|x| <=
    ln(2) / 32``), against ``exp`` in long double (64-bit mantissa), in float64 ulps.
    Also checks that inputs below the cuts (``-87``, ``-708``) give 0.
    """
    res = {}
    for name, epilogue in (("float32 row kernel", False), ("float32 epilogue", True)):
        worst, at = _exp_exhaustive_kernel(epilogue)
        res[name] = {"max_ulp": float(worst), "at": float(at), "n_inputs": _EXP_LAST_BITS + 1}
    rng = np.random.default_rng(5)
    for name, epilogue in (("float64 row kernel", False), ("float64 epilogue", True)):
        worst, at, count, zeros = 0.0, 0.0, 0, True
        for part in range(20):
            x = np.concatenate(
                [
                    np.linspace(-708.0 * part / 20, -708.0 * (part + 1) / 20, 500_000),
                    -708.0 * rng.random(400_000),
                    -np.log(2) / 32 * rng.random(100_000),
                ]
            )
            y = _epilogue_exp(x) if epilogue else _row_exp(x)
            ref = np.exp(x.astype(np.longdouble))
            ulp = np.abs(y - ref) / np.spacing(ref.astype(np.float64))
            k = int(np.argmax(ulp))
            if ulp[k] > worst:
                worst, at = float(ulp[k]), float(x[k])
            count += x.shape[0]
        below = np.array([np.nextafter(-708.0, -np.inf), -709.0, -745.0, -1e300, -np.inf])
        y = _epilogue_exp(below) if epilogue else _row_exp(below)
        zeros = bool(np.all(y == 0))
        res[name] = {"max_ulp": worst, "at": at, "n_inputs": count, "zero_below_cut": zeros}
    return res


@numba.njit(cache=False)
def _row_exp(x):
    """``exp(x)`` through the prefill's row kernel."""
    y = x.copy()
    _exp_sum_vec(y, 0, y.shape[0], 0.0)
    return y


def _epilogue_exp(x):
    """``exp(x)`` through the score tiles' epilogue (``S = 1 * x`` with ``d = 1``, ``m = 0``)."""
    vl = 64 // x.itemsize
    wide = _TILE_VECS * vl
    n = -(-x.shape[0] // wide) * wide
    b = np.zeros(n, dtype=x.dtype)
    b[: x.shape[0]] = x
    out = np.empty(n, dtype=x.dtype)
    wlim = np.array([n], dtype=np.int64)
    sums = np.zeros(vl, dtype=x.dtype)
    _qk_exp_tiles(np.ones(1, x.dtype), b, out, 0, 0, 1, 1, n, 1, n, sums[:1] * 0, sums, wlim)
    return out[: x.shape[0]]


_EXP_LAST_BITS = int(np.array(-87.0, dtype=np.float32).view(np.uint32)) - 0x80000000


@numba.njit(parallel=True, cache=False)
def _exp_exhaustive_kernel(epilogue):
    chunk = 1 << 16
    n = _EXP_LAST_BITS + 1
    n_chunks = (n + chunk - 1) // chunk
    worst = np.zeros(n_chunks)
    where = np.zeros(n_chunks)
    one = np.ones(1, dtype=np.float32)
    for c in numba.prange(n_chunks):
        b0 = c * chunk
        w = min(chunk, n - b0)
        bits = np.arange(b0, b0 + w).astype(np.uint32) | np.uint32(0x80000000)
        x = bits.view(np.float32)
        if epilogue:
            # Width padded to the register tile (64 float32 keys); padding entries are 0.
            wp = -(-w // 64) * 64
            b = np.zeros(wp, dtype=np.float32)
            b[:w] = x
            y = np.empty(wp, dtype=np.float32)
            sums = np.zeros(16, dtype=np.float32)
            lim = np.full(1, wp, dtype=np.int64)
            _qk_exp_tiles(one, b, y, 0, 0, 1, 1, wp, 1, wp, np.zeros(1, np.float32), sums, lim)
        else:
            y = x.copy()
            _exp_sum_vec(y, 0, w, 0.0)
        for j in range(w):
            ref = np.exp(np.float64(x[j]))
            ulp = np.float64(np.spacing(np.float32(ref)))
            err = abs(np.float64(y[j]) - ref) / ulp
            if err > worst[c]:
                worst[c] = err
                where[c] = x[j]
    k = np.argmax(worst)
    return worst[k], where[k]


def decode_only() -> int:
    """``--decode-only``: re-run the decode phases into the committed full-run results.

    Replaces the decode-phase section of ``attention_exact_summary.txt``, the phase table
    of ``attention_exact_roofline.rst`` and the ``decode_phases`` / ``decode_interference``
    entries of ``attention_exact_extra.json``; the interleaved table, the single-thread
    times and the peak memory stay those of the last full run (its date and load are
    kept in the files, the re-run's are added).
    """
    from benchmarks.harness import machine_summary

    repeats = 10
    if "--repeats" in sys.argv:
        repeats = max(int(sys.argv[sys.argv.index("--repeats") + 1]), 1)
    out_dir = RESULTS_DIR
    if "--out-dir" in sys.argv:
        out_dir = Path(sys.argv[sys.argv.index("--out-dir") + 1])
    full = json.loads((RESULTS_DIR / f"{NAME}.json").read_text())
    extra = json.loads((RESULTS_DIR / f"{NAME}_extra.json").read_text())
    summary = (RESULTS_DIR / f"{NAME}_summary.txt").read_text().splitlines()
    load0 = os.getloadavg()
    start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    lines = decode_section(repeats, False)
    load1 = os.getloadavg()
    note = (
        f"Decode rows re-run on {start} (load average {load0[0]:.2f} before, "
        f"{load1[0]:.2f} after; {repeats} rounds), after the full run above."
    )
    print("\n".join([note, *lines]))
    first = next(i for i, line in enumerate(summary) if line.startswith("Decode "))
    last = next(i for i, line in enumerate(summary) if line.startswith("Single-thread CPU"))
    interleaved = [] if any("(interleaved decode rows" in x for x in summary) else [INTERLEAVED]
    summary = [*summary[:first], *interleaved, note, *lines, *summary[last:]]
    (out_dir / f"{NAME}_summary.txt").write_text("\n".join(summary) + "\n")
    extra.update(
        decode_phases=EXTRA["decode_phases"],
        decode_interference=EXTRA["decode_interference"],
        decode_rerun={"date": start, "load_before": load0, "load_after": load1},
    )
    (out_dir / f"{NAME}_extra.json").write_text(json.dumps(extra, indent=2, default=float))
    rows = roofline_rows(full)
    machine_line = machine_summary(full["machine"], full["repeats"])
    rst = roofline_rst(rows, machine_line, EXTRA["decode_phases"], phase_note=note)
    (out_dir / f"{NAME}_roofline.rst").write_text(rst)
    return 0


if __name__ == "__main__":
    from benchmarks.harness import machine_summary

    if "--exp-exhaustive" in sys.argv:
        res = exp_exhaustive()
        for key, val in res.items():
            print(f"prefill exponential, {key}: {val}")
        (RESULTS_DIR / f"{NAME}_exp_exhaustive.json").write_text(json.dumps(res, indent=2))
        sys.exit(0)

    if "--decode-only" in sys.argv:
        sys.exit(decode_only())

    quick = "--quick" in sys.argv
    with OtherLoad() as table_load:
        out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    EXTRA["others_table"] = table_load.cores
    REPEATS[0] = out["repeats"]
    text, rows = summarize(out, quick)
    print(text)
    stem = f"{NAME}_quick" if quick else NAME
    out_dir = RESULTS_DIR
    if "--out-dir" in sys.argv:
        out_dir = Path(sys.argv[sys.argv.index("--out-dir") + 1])
    (out_dir / f"{stem}_extra.json").write_text(json.dumps(EXTRA, indent=2, default=float))
    (out_dir / f"{stem}_summary.txt").write_text(text + "\n")
    machine_line = machine_summary(out["machine"], out["repeats"])
    phases = EXTRA.get("decode_phases")
    (out_dir / f"{stem}_roofline.rst").write_text(roofline_rst(rows, machine_line, phases))
