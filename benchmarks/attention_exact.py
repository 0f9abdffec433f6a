r"""Exact attention: ``attention.exact.softmax_attention`` against NumPy and PyTorch (CPU).

Implementations, on the same inputs ``Q, K, V`` of shape ``(heads, n, 64)``:

* ``rnla softmax_attention`` - the blocked online-softmax Numba kernel (never forms
  ``n x n``);
* ``NumPy exact`` - ``softmax(Q K^T * scale) V`` forming the score matrix head by head
  (skipped, and said so, where the two ``n x n`` temporaries would exceed 8 GB);
* ``PyTorch SDPA`` - ``torch.nn.functional.scaled_dot_product_attention`` on CPU (the
  baseline when torch is installed; the column is marked unavailable otherwise).

Sizes ``n`` in {1024, 4096, 16384} with one head, and {1024, 4096} with 4 heads, in
float32 and float64 (``--quick``: ``n`` in {256, 1024}). Accuracy is the max-abs error
relative to ``max |Y|`` on 256 sampled rows, against a float64 NumPy computation of those
rows. Goal: ``softmax_attention`` within 1.5x of PyTorch's time (speed-up >= 0.67).

The run also measures the machine's GEMM rate (``A @ B`` with ``A, B`` 2048 x 2048, all
threads) to put the achieved GFLOP/s (``4 n^2 d`` per head) in context, and the peak
extra memory of ``softmax_attention`` at ``n = 65536``, float32 (``--quick``: 8192),
in a fresh subprocess: peak resident size after the call minus the resident size
before it. The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` after import
and compilation, so that their peak does not hide the call's (``ru_maxrss`` delta
where that is unavailable).

Run ``python -m benchmarks.attention_exact [--quick] [--repeats 5]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from attention.exact import softmax_attention
from benchmarks.harness import RESULTS_DIR, Task, main

try:
    import torch
except ImportError:  # the benchmark runs without torch; its column is then absent
    torch = None

NAME = "attention_exact"
D = 64
NUMPY_LIMIT_BYTES = 8e9
ACCURACY_ROWS = 256
GOAL = 1 / 1.5


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


def accuracy_metric(Q, K, V, scale, rng):
    """Max-abs error on sampled rows, relative to max |Y|, vs a float64 NumPy computation."""
    rows = np.sort(rng.choice(Q.shape[1], size=min(ACCURACY_ROWS, Q.shape[1]), replace=False))
    Q64, K64, V64 = (x.astype(np.float64) for x in (Q, K, V))
    S = np.einsum("hrd,hmd->hrm", Q64[:, rows], K64) * scale
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    ref = (P @ V64) / P.sum(axis=-1, keepdims=True)

    def metric(_name, out):
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)
        return float(np.max(np.abs(out[:, rows] - ref)) / np.max(np.abs(ref)))

    return metric


def attention_task(n, heads, dtype, rng) -> Task:
    Q, K, V = (rng.standard_normal((heads, n, D)).astype(dtype) for _ in range(3))
    scale = 1.0 / np.sqrt(D)
    impls = {"rnla softmax_attention": lambda: softmax_attention(Q, K, V)}
    numpy_bytes = 2 * n * n * np.dtype(dtype).itemsize
    skipped = []
    if numpy_bytes <= NUMPY_LIMIT_BYTES:
        impls["NumPy exact (forms n x n)"] = lambda: numpy_exact(Q, K, V, scale)
    else:
        skipped.append(f"NumPy exact: needs {numpy_bytes / 1e9:.1f} GB > 8 GB")
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (Q, K, V))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        impls["PyTorch SDPA"] = lambda: sdpa(tq, tk, tv)
    else:
        skipped.append("PyTorch SDPA: torch not installed")
    baseline = "PyTorch SDPA" if torch is not None else "rnla softmax_attention"
    return Task(
        name=f"n={n}, heads={heads}, d={D}, {np.dtype(dtype).name}",
        impls=impls,
        baseline=baseline,
        accuracy=accuracy_metric(Q, K, V, scale, rng),
        accuracy_label="max rel. error (256 rows)",
        goal=GOAL if torch is not None else None,
        goal_text="within 1.5x of PyTorch (>= 0.67x)",
        goal_for=["rnla softmax_attention"] if torch is not None else [],
        params={
            "n": n,
            "heads": heads,
            "d": D,
            "dtype": np.dtype(dtype).name,
            "flops": 4.0 * heads * n * n * D,
            "skipped": skipped,
        },
    )


def gemm_rate(dtype, size=2048, repeats=5) -> float:
    """GFLOP/s of a square ``size`` GEMM through NumPy (all BLAS threads)."""
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    A @ B
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        A @ B
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best / 1e9


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
softmax_attention(Q[:256], K[:256], V[:256])  # compile / load the kernel, start threads
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
    import numba

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
            Q, K, V = (rng.standard_normal((1, n, D)).astype(dtype) for _ in range(3))
            impls = {
                "rnla softmax_attention": lambda Q=Q, K=K, V=V: softmax_attention(Q, K, V),
                "NumPy exact (forms n x n)": lambda Q=Q, K=K, V=V: numpy_exact(
                    Q, K, V, 1 / np.sqrt(D)
                ),
            }
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x) for x in (Q, K, V))
                impls["PyTorch SDPA"] = lambda tq=tq, tk=tk, tv=tv: (
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
                )
            A, B = (rng.standard_normal((1024, 1024)).astype(dtype) for _ in range(2))
            impls["GEMM 1024^3"] = lambda A=A, B=B: A @ B
            for name, fn in impls.items():
                fn()
                best = np.inf
                for _ in range(repeats):
                    t = time.thread_time()
                    fn()
                    best = min(best, time.thread_time() - t)
                res[f"{name}, {dtype}"] = best
    finally:
        numba.set_num_threads(numba_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if limiter is not None:
            limiter.restore_original_limits()
    return res


EXTRA = {}


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20250601)
    size = 1024 if quick else 2048
    EXTRA["gemm_gflops"] = {dt: gemm_rate(dt, size) for dt in ("float32", "float64")}
    EXTRA["gemm_size"] = size
    EXTRA["torch"] = None if torch is None else torch.__version__
    if torch is not None:
        EXTRA["torch_threads"] = torch.get_num_threads()
    sizes = [(256, 1), (1024, 1), (256, 4)] if quick else [(1024, 1), (4096, 1), (16384, 1)]
    if not quick:
        sizes += [(1024, 4), (4096, 4)]
    tasks = [
        attention_task(n, heads, dtype, rng)
        for dtype in (np.float32, np.float64)
        for n, heads in sizes
    ]
    return tasks


def summarize(result: dict, quick: bool) -> str:
    gemm = EXTRA["gemm_gflops"]
    lines = [
        "",
        f"GEMM rate ({EXTRA['gemm_size']}^3, NumPy): float32 {gemm['float32']:.1f} GFLOP/s, "
        f"float64 {gemm['float64']:.1f} GFLOP/s; torch: {EXTRA['torch'] or 'not installed'}",
        "Achieved GFLOP/s (4 n^2 d per head) and fraction of the GEMM rate:",
    ]
    params = {t["name"]: t["params"] for t in result["tasks"]}
    for row in result["rows"]:
        p = params[row["task"]]
        rate = p["flops"] / row["median_s"] / 1e9
        frac = rate / gemm[p["dtype"]]
        lines.append(
            f"  {row['task']:34s} {row['implementation']:26s} {rate:7.1f} GFLOP/s "
            f"({frac:4.0%} of GEMM), err {row['accuracy']:.1e}"
        )
    for t in result["tasks"]:
        for s in t["params"]["skipped"]:
            lines.append(f"  skipped in '{t['name']}': {s}")
    n_cpu = 1024 if quick else 4096
    cpu = single_thread_cpu_times(n_cpu)
    EXTRA["single_thread_cpu_s"] = {"n": n_cpu, **cpu}
    lines.append(f"Single-thread CPU time (load-independent), n={n_cpu}, one head, d=64:")
    flops = 4.0 * n_cpu * n_cpu * D
    for key, sec in cpu.items():
        name, dtype = key.rsplit(", ", 1)
        if name.startswith("GEMM"):
            continue
        gemm1 = 2.0 * 1024**3 / cpu[f"GEMM 1024^3, {dtype}"] / 1e9
        rate = flops / sec / 1e9
        ref = cpu.get(f"PyTorch SDPA, {dtype}")
        vs = f", {ref / sec:.2f}x PyTorch's speed" if ref else ""
        lines.append(
            f"  {key:36s} {sec * 1e3:8.1f} ms  {rate:6.1f} GFLOP/s "
            f"({rate / gemm1:4.0%} of the 1-thread GEMM rate {gemm1:.1f}){vs}"
        )
    n_mem = 8192 if quick else 65536
    mem = peak_memory(n_mem)
    EXTRA["peak_memory"] = mem
    lines.append(
        f"Peak extra memory of softmax_attention, n={n_mem}, d=64, float32: "
        f"{mem['extra_mb']:.1f} MB (output {mem['output_mb']:.1f} MB; the score matrix "
        f"would be {mem['score_matrix_mb']:.0f} MB), call took {mem['seconds']:.2f} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    text = summarize(out, quick)
    print(text)
    stem = f"{NAME}_quick" if quick else NAME
    out_dir = RESULTS_DIR
    if "--out-dir" in sys.argv:
        out_dir = Path(sys.argv[sys.argv.index("--out-dir") + 1])
    (out_dir / f"{stem}_extra.json").write_text(json.dumps(EXTRA, indent=2, default=float))
    (out_dir / f"{stem}_summary.txt").write_text(text + "\n")
