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

Decode is also timed in separate phases (:func:`decode_phases`: ours, then PyTorch, then
the read roofline, each repeated alone after a 0.5 s pause), so that no library runs
next to another one's spinning worker threads; both measurements are reported.

Run ``python -m benchmarks.attention_exact [--quick] [--repeats 5]``; ``--exp-exhaustive``
instead checks the prefill's two exponentials (the row kernel and the score tiles'
epilogue) on every float32 input of ``[-87, 0]`` and on 2e7 float64 inputs of
``[-708, 0]`` (about a minute; result in ``attention_exact_exp_exhaustive.json``).
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


DECODE_PHASE_ROWS = [(1, 2048), (1, 8192), (1, 32768), (1, 131072), (16, 32768)]


def torch_sdpa(tq, tk, tv, causal):
    """PyTorch's SDPA with grouped-query heads."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return sdpa(tq, tk, tv, is_causal=causal, enable_gqa=True)


def decode_phases(repeats: int, quick: bool, pause: float = 0.5) -> list[dict]:
    """Decode timed in separate phases: ours, then PyTorch, then the read roofline.

    In the interleaved rounds of the table each call runs right after the others, and
    worker threads left spinning by the previous library (PyTorch's OpenMP pool,
    OpenBLAS) compete with it for the two cores. Here each implementation is timed
    ``repeats`` times in a row (after a warm-up call) and ``pause`` seconds of sleep
    separate the phases, so that every pool has gone to sleep; the fraction is against
    the best read rate of the read phases (measured in the same way). Rows: 9 query / 3
    key-value heads, ``d = 64``, float32, ``(new tokens, m)``; causal when there are
    several new tokens.
    """
    rng = np.random.default_rng(11)
    read_fn, read_bytes = read_call(64 if quick else 1024)
    cases = [(1, 2048), (1, 8192)] if quick else DECODE_PHASE_ROWS
    rows = []

    def phase(fn):
        time.sleep(pause)
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    for n, m in cases:
        causal = n > 1
        Q = rng.standard_normal((9, n, 64)).astype(np.float32)
        K, V = (rng.standard_normal((3, m, 64)).astype(np.float32) for _ in range(2))
        ours = phase(lambda Q=Q, K=K, V=V, c=causal: softmax_attention(Q, K, V, causal=c))
        torch_s = None
        if torch is not None:
            args = tuple(torch.from_numpy(x) for x in (Q, K, V))
            torch_s = phase(lambda a=args, c=causal: torch_sdpa(*a, c))
        read_s = phase(read_fn)
        kv = float(K.nbytes + V.nbytes)
        rows.append(
            {
                "n": n,
                "m": m,
                "causal": causal,
                "ours_ms": 1e3 * ours,
                "torch_ms": None if torch_s is None else 1e3 * torch_s,
                "ours_over_torch": None if torch_s is None else ours / torch_s,
                "rate": kv / ours / 1e9,
                "read_rate_phase": read_bytes / read_s / 1e9,
            }
        )
    # The machine's read rate does not depend on the row: the best of the read phases
    # (one phase can be slowed by another process's memory traffic, which would
    # inflate that row's fraction).
    best = max(r["read_rate_phase"] for r in rows)
    for r in rows:
        r["read_rate"] = best
        r["fraction"] = r["rate"] / best
    return rows


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


def roofline_rst(rows: list[dict], machine_line: str, phases=None) -> str:
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
            "\nDecode timed in separate phases (each implementation repeated alone after a "
            "0.5 s pause, so that no other library's worker threads are still spinning; "
            "9 query / 3 key-value heads, ``d = 64``, float32):\n\n"
        )
        head = ["case", "ours [ms]", "ours [GB/s of K/V]", "read roofline [GB/s]"]
        head += ["fraction of roofline", "PyTorch [ms]", "ours / PyTorch time"]
        tab = [".. list-table::", "   :header-rows: 1", ""]
        tab.append("   * - " + "\n     - ".join(head))
        for r in phases:
            cells = [
                f"n={r['n']}, m={r['m']}" + (", causal" if r["causal"] else ""),
                f"{r['ours_ms']:.3g}",
                f"{r['rate']:.1f}",
                f"{r['read_rate']:.1f}",
                f"{r['fraction']:.0%}",
                "n/a" if r["torch_ms"] is None else f"{r['torch_ms']:.3g}",
                "n/a" if r["ours_over_torch"] is None else f"{r['ours_over_torch']:.2f}",
            ]
            tab.append("   * - " + "\n     - ".join(cells))
        text += "\n".join(tab) + "\n"
    return text


def summarize(result: dict, quick: bool) -> tuple[str, list[dict]]:
    rows = roofline_rows(result)
    EXTRA["roofline"] = rows
    lines = [
        "",
        f"Rooflines timed in the same interleaved rounds: GEMM {EXTRA['gemm_size']}^3 "
        "and the same-shape GEMM pair of one head (NumPy, all BLAS threads), vectorised "
        f"parallel read of {EXTRA['read_mb']} MB (Numba); "
        f"torch: {EXTRA['torch'] or 'not installed'} ({EXTRA.get('torch_threads')} threads)",
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
    phases = decode_phases(max(REPEATS[0], 10), quick)
    EXTRA["decode_phases"] = phases
    lines.append(
        "Decode timed in separate phases (ours, then PyTorch, then the read roofline; "
        "0.5 s sleep between phases, no other library's threads spinning; fraction of the "
        "best read phase), 9q/3kv heads, d=64, float32:"
    )
    for r in phases:
        vs = (
            "" if r["ours_over_torch"] is None else f", ours/torch time {r['ours_over_torch']:.2f}"
        )
        goal = ""
        if r["m"] >= 8192 and r["n"] == 1:
            met = "met" if r["fraction"] >= DECODE_GOAL else "NOT met"
            goal = f" [goal {DECODE_GOAL:.0%}: {met}]"
        torch_ms = "n/a" if r["torch_ms"] is None else f"{r['torch_ms']:.3g}"
        lines.append(
            f"  decode n={r['n']}, m={r['m']}{', causal' if r['causal'] else ''}: "
            f"{r['ours_ms']:.3g} ms = {r['rate']:.1f} GB/s of K/V of {r['read_rate']:.1f} = "
            f"{r['fraction']:4.0%}{goal}; PyTorch {torch_ms} ms{vs}"
        )
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


if __name__ == "__main__":
    from benchmarks.harness import machine_summary

    if "--exp-exhaustive" in sys.argv:
        res = exp_exhaustive()
        for key, val in res.items():
            print(f"prefill exponential, {key}: {val}")
        (RESULTS_DIR / f"{NAME}_exp_exhaustive.json").write_text(json.dumps(res, indent=2))
        sys.exit(0)

    quick = "--quick" in sys.argv
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
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
