r"""Cost of the kernel-family attention methods against exact attention, side by side.

Times ``performer``, ``scatterbrain``, ``taylor``, ``polysketch``, ``tensorsketch`` and
``levattention`` (default parameters; LevAttention's exact-pass bound off, as in the
``--profile`` run of :mod:`benchmarks.attention_methods`) against
:func:`attention.softmax_attention` in the same process, interleaved (exact, method,
exact, method, ...), and reports the median ratio of the two, the flops achieved
(``cost.flops`` / time / the process's measured float32 GEMM rate) and the relative
Frobenius error against exact. Datasets: real SmolLM2-135M causal heads at ``n = 4096``
(layers 0/10/20/29, 9 query / 3 kv heads each) and synthetic causal SmolLM2-shaped heads
at ``n = 16384``.

Run ``python -m benchmarks.attention_kernel_costs [--repeats R] [--methods ...]
[--no-real] [--sizes N ...]``; wrap it in ``flock /tmp/bench.lock`` on a shared machine.
Writes ``benchmarks/results/attention_kernel_costs.{md,json}`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.attention_methods import PROFILE_LAYERS, _synthetic_gqa, gemm_rate

METHODS = ("performer", "scatterbrain", "taylor", "polysketch", "tensorsketch", "levattention")
PARAMS = {"levattention": {"error_bound": None}}
OUT = Path(__file__).parent / "results"


def _datasets(with_real: bool, sizes):
    if with_real:
        from attention.data import load_smollm2_heads

        h = load_smollm2_heads(4096, layers=PROFILE_LAYERS)
        parts = [(h.Q[i], h.K[i], h.V[i]) for i in range(len(PROFILE_LAYERS))]
        yield "smollm2-4096", parts, h.scale
    for n in sizes:
        yield f"synthetic-{n}", _synthetic_gqa(n), 0.125


def run(methods, with_real=True, sizes=(16384,), repeats=3):
    from attention._core import relative_error
    from attention._registry import approximate
    from attention.exact import softmax_attention

    rate = gemm_rate()
    rows = []
    for dname, parts, scale in _datasets(with_real, sizes):
        refs = [softmax_attention(q, k, v, causal=True, scale=scale) for q, k, v in parts]
        for name in methods:
            kw = {"causal": True, "scale": scale, "rng": 0, **PARAMS.get(name, {})}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q, k, v = parts[0]
                approximate(q[:, :256], k[:, :256], v[:, :256], name, **kw)  # warm up
                te, tm = [], []
                for _ in range(repeats):
                    a = b = 0.0
                    flops, num, den = 0.0, 0.0, 0.0
                    for (q, k, v), Y in zip(parts, refs, strict=True):
                        t0 = time.perf_counter()
                        softmax_attention(q, k, v, causal=True, scale=scale)
                        a += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        res = approximate(q, k, v, name, **kw)
                        b += time.perf_counter() - t0
                        flops += float(res.cost.flops)
                        y2 = float(np.sum(Y.astype(np.float64) ** 2))
                        num += relative_error(res.output, Y) ** 2 * y2
                        den += y2
                    te.append(a)
                    tm.append(b)
            ratio = statistics.median(x / y for x, y in zip(te, tm, strict=True))
            t = statistics.median(tm)
            row = {
                "dataset": dname,
                "method": name,
                "time_s": t,
                "exact_s": statistics.median(te),
                "speedup": ratio,
                "flops": flops,
                "achieved": flops / t / rate,
                "rel_fro": (num / den) ** 0.5,
            }
            rows.append(row)
            print(
                f"{dname:14s} {name:13s} {1e3 * t:8.1f} ms  exact {1e3 * row['exact_s']:8.1f} ms"
                f"  speed-up {ratio:5.2f}x  achieved {row['achieved']:.3f}  "
                f"error {row['rel_fro']:.3g}",
                flush=True,
            )
    return rows, rate


def markdown(rows, rate, load) -> str:
    L = [
        "# Kernel-family attention methods: cost against exact attention",
        "",
        f"Load: `{load}`; float32 GEMM rate of the process {rate / 1e9:.0f} GFLOP/s. "
        "Speed-up: median over repeats of (exact time / method time), both timed "
        "interleaved in one process; `achieved` = `cost.flops` / time / GEMM rate. "
        "Causal, default parameters (LevAttention without its exact-pass bound).",
        "",
        "| dataset | method | time [ms] | exact [ms] | speed-up | achieved | rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['dataset']} | {r['method']} | {1e3 * r['time_s']:.1f} | "
            f"{1e3 * r['exact_s']:.1f} | {r['speedup']:.2f} | {r['achieved']:.3f} | "
            f"{r['rel_fro']:.3g} |"
        )
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--sizes", nargs="*", type=int, default=[16384])
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    rows, rate = run(a.methods, not a.no_real, tuple(a.sizes), a.repeats)
    load = os.popen("uptime").read().strip()
    print(load)
    if not a.no_write:
        OUT.mkdir(exist_ok=True)
        (OUT / "attention_kernel_costs.json").write_text(
            json.dumps({"gemm_rate": rate, "uptime": load, "rows": rows}, indent=1)
        )
        (OUT / "attention_kernel_costs.md").write_text(markdown(rows, rate, load))


if __name__ == "__main__":
    main()
