r"""Cost of the kernel-family attention methods against exact attention, side by side.

Times ``performer``, ``scatterbrain``, ``taylor``, ``polysketch``, ``tensorsketch``,
``levattention`` and ``hyperattention`` (default parameters, LevAttention's default
``"norms"`` bound included; HyperAttention's bound off, as in the ``--profile`` run of
:mod:`benchmarks.attention_methods`) against
:func:`attention.softmax_attention` in the same process, interleaved (exact, method,
exact, method, ...), and reports the median ratio of the two (also of their process CPU
times), the flops achieved (``cost.flops`` / time / the process's measured float32 GEMM
rate) and the relative Frobenius error against exact. Datasets: real SmolLM2-135M causal
heads at ``n = 4096`` (layers 0/10/20/29, 9 query / 3 kv heads each) and synthetic causal
SmolLM2-shaped heads at ``n = 16384``. ``--single-kv`` adds (or, with ``--no-real
--sizes``, gives alone) the stack of :mod:`benchmarks.attention_long`: 11 real causal
heads at ``n = 4096``, one query head per layer (layers 0, 3, ..., 27 and 29, head
``layer % 9`` with the key/value head it reads), timed as one call as that benchmark
does (no key side shared between query heads).

Any registered method can be listed with ``--methods``: methods without a causal form run
non-causally against non-causal exact attention (column ``causal``); the bound passes that
cost an exact ``O(nm)`` pass are off as in the ``--profile`` run
(:data:`benchmarks.attention_methods.PROFILE_NO_EXACT_PASS`); Loki gets calibration keys
from other text (the shipped CC0 legal code, 512 tokens, same layers) on real heads and
from an independent synthetic draw otherwise.

Run ``python -m benchmarks.attention_kernel_costs [--repeats R] [--methods ...]
[--no-real] [--single-kv] [--sizes N ...] [--merge] [--out NAME]``; wrap it in ``flock
/tmp/bench.lock`` on a shared machine. Writes ``benchmarks/results/NAME.{md,json}``
(default ``attention_kernel_costs``) unless ``--no-write``; ``--merge`` replaces only the
measured (dataset, method) rows of an existing table (runs split into chunks of a few
minutes), keeping the load of every chunk.
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

from benchmarks.attention_methods import (
    PROFILE_LAYERS,
    PROFILE_NO_EXACT_PASS,
    _synthetic_gqa,
    gemm_rate,
)

METHODS = (
    "performer",
    "scatterbrain",
    "taylor",
    "polysketch",
    "tensorsketch",
    "levattention",
    "hyperattention",
)
PARAMS = dict(PROFILE_NO_EXACT_PASS)
# LevAttention's default bound ("norms") has no exact pass: measured as it is.
PARAMS.pop("levattention", None)
SINGLE_KV_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29)  # benchmarks.attention_long
OUT = Path(__file__).parent / "results"


def _datasets(with_real: bool, sizes, single_kv: bool = False):
    """``(name, parts, scale, calibration keys per part)``."""
    if single_kv:
        from attention.data import load_smollm2_heads

        heads = [(layer, layer % 9) for layer in SINGLE_KV_LAYERS]
        s = load_smollm2_heads(4096, layers=SINGLE_KV_LAYERS).sample(heads)
        cal = load_smollm2_heads(512, layers=SINGLE_KV_LAYERS, text="cc0-1.0").sample(heads)
        yield "smollm2-4096-1kv", [(s.Q, s.K, s.V)], s.scale, [cal.K]
    if with_real:
        from attention.data import load_smollm2_heads

        h = load_smollm2_heads(4096, layers=PROFILE_LAYERS)
        cal = load_smollm2_heads(512, layers=PROFILE_LAYERS, text="cc0-1.0")
        parts = [(h.Q[i], h.K[i], h.V[i]) for i in range(len(PROFILE_LAYERS))]
        yield "smollm2-4096", parts, h.scale, [cal.K[i] for i in range(len(PROFILE_LAYERS))]
    for n in sizes:
        yield f"synthetic-{n}", _synthetic_gqa(n), 0.125, [_synthetic_gqa(512, seed=1)[0][1]]


def run(methods, with_real=True, sizes=(16384,), repeats=3, single_kv=False):
    from attention._core import relative_error
    from attention._registry import approximate
    from attention._registry import methods as registered
    from attention.exact import softmax_attention

    causal_ok = {m.name: m.causal for m in registered()}
    rate = gemm_rate()
    rows = []
    for dname, parts, scale, calib in _datasets(with_real, sizes, single_kv):
        refs = {}
        for name in methods:
            causal = causal_ok[name]
            if causal not in refs:
                refs[causal] = [
                    softmax_attention(q, k, v, causal=causal, scale=scale) for q, k, v in parts
                ]
            kw = {"causal": causal, "scale": scale, "rng": 0, **PARAMS.get(name, {})}
            extra = [{} for _ in parts]
            if name == "loki":
                extra = [{"calibration": calib[i % len(calib)]} for i in range(len(parts))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q, k, v = parts[0]
                approximate(q[:, :256], k[:, :256], v[:, :256], name, **kw, **extra[0])
                te, tm, ce, cm = [], [], [], []
                for _ in range(repeats):
                    a = b = ca = cb = 0.0
                    flops, outs = 0.0, []
                    for (q, k, v), ex in zip(parts, extra, strict=True):
                        t0, c0 = time.perf_counter(), time.process_time()
                        softmax_attention(q, k, v, causal=causal, scale=scale)
                        a += time.perf_counter() - t0
                        ca += time.process_time() - c0
                        t0, c0 = time.perf_counter(), time.process_time()
                        res = approximate(q, k, v, name, **kw, **ex)
                        b += time.perf_counter() - t0
                        cb += time.process_time() - c0
                        flops += float(res.cost.flops)
                        outs.append(res.output)
                    te.append(a)
                    tm.append(b)
                    ce.append(ca)
                    cm.append(cb)
                # Errors after the timed calls: their float64 temporaries (~150 MB at
                # n = 16384) freed between two timed calls made the next call fault its
                # fresh buffers in again (kernel time up to 40% of a method's CPU time).
                num = den = 0.0
                for Yo, Y in zip(outs, refs[causal], strict=True):
                    y2 = float(np.sum(Y.astype(np.float64) ** 2))
                    num += relative_error(Yo, Y) ** 2 * y2
                    den += y2
            ratio = statistics.median(x / y for x, y in zip(te, tm, strict=True))
            cpu_ratio = statistics.median(x / y for x, y in zip(ce, cm, strict=True))
            t = statistics.median(tm)
            row = {
                "dataset": dname,
                "method": name,
                "causal": causal,
                "time_s": t,
                "exact_s": statistics.median(te),
                "speedup": ratio,
                "cpu_speedup": cpu_ratio,
                "flops": flops,
                "achieved": flops / t / rate,
                "rel_fro": (num / den) ** 0.5,
            }
            rows.append(row)
            print(
                f"{dname:14s} {name:13s} {1e3 * t:8.1f} ms  exact {1e3 * row['exact_s']:8.1f} ms"
                f"  speed-up {ratio:5.2f}x (CPU {cpu_ratio:5.2f}x)  "
                f"achieved {row['achieved']:.3f}  "
                f"error {row['rel_fro']:.3g}",
                flush=True,
            )
    return rows, rate


def markdown(rows, chunks) -> str:
    loads = "; ".join(
        f"`{c['uptime']}` (GEMM rate {c['gemm_rate'] / 1e9:.0f} GFLOP/s)" for c in chunks
    )
    L = [
        "# Attention methods: cost against exact attention, side by side",
        "",
        f"Load and float32 GEMM rate of each run: {loads}. "
        "Speed-up: median over repeats of (exact time / method time), both timed "
        "interleaved in one process (causal methods against causal exact, the others "
        "against non-causal exact; errors computed after the timed calls); "
        "`achieved` = `cost.flops` / time / the GEMM rate of "
        "the row's run (1/achieved: how far a method is from the time its own flop count "
        "allows). `CPU speed-up`: the same ratio of process CPU times (all threads; on a "
        "loaded machine it shows the work of each side when neither gets both cores). "
        "Default parameters; bound passes that cost an exact O(nm) pass are off "
        f"({PARAMS}).",
        "",
        "| dataset | method | causal | time [ms] | exact [ms] | speed-up | CPU speed-up | "
        "achieved | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    commits = sorted({c["commit"] for c in chunks if c.get("commit")})
    tail = [
        "",
        "Measured"
        + (f" at commit {', '.join(commits)}" if commits else "")
        + f" in {len(chunks)} run(s) under `flock /tmp/bench.lock`. Datasets: "
        "`smollm2-4096-1kv` the 11 single-key/value real heads of "
        "`benchmarks.attention_long` (one query head per layer, layers 0, 3, ..., 27, "
        "29; one call), `smollm2-4096` real heads of layers 0/10/20/29 (9 query / 3 "
        "key-value heads each, one call per layer), `synthetic-16384` synthetic "
        "SmolLM2-shaped heads (9 query / 3 key-value). One command gives all three "
        "(about 2 minutes):",
        "",
        "    flock /tmp/bench.lock python -m benchmarks.attention_kernel_costs --single-kv",
        "",
        "or in shorter holds: `--no-real --sizes --single-kv`, `--sizes --merge` (real "
        "grouped heads), then `--no-real --sizes 16384 --merge`.",
        "",
        "`attention_kernel_costs_before.md` is the reference run at the start of the "
        "kernel-family work. On a shared 2-core machine a process often gets one core: "
        "both sides then run on it (`CPU speed-up` close to `speed-up`), and the exact "
        "times move by up to 2x between runs.",
    ]
    for r in rows:
        cpu = f"{r['cpu_speedup']:.2f}" if "cpu_speedup" in r else "-"
        L.append(
            f"| {r['dataset']} | {r['method']} | {r.get('causal', True)} | "
            f"{1e3 * r['time_s']:.1f} | {1e3 * r['exact_s']:.1f} | {r['speedup']:.2f} | "
            f"{cpu} | {r['achieved']:.3f} | {r['rel_fro']:.3g} |"
        )
    return "\n".join(L + tail) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--sizes", nargs="*", type=int, default=[16384])
    p.add_argument("--no-real", action="store_true")
    p.add_argument(
        "--single-kv",
        action="store_true",
        help="also the 11 single-KV real heads of attention_long at n = 4096 (one call)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--merge", action="store_true", help="replace only the measured rows")
    p.add_argument("--out", default="attention_kernel_costs", help="result file stem")
    a = p.parse_args(argv)
    load0 = os.popen("uptime").read().strip()
    rows, rate = run(a.methods, not a.no_real, tuple(a.sizes), a.repeats, a.single_kv)
    load = load0 + " / " + os.popen("uptime").read().strip()
    print(load)
    commit = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip()
    chunk = {"uptime": load, "gemm_rate": rate, "methods": list(a.methods), "commit": commit}
    for r in rows:
        r["gemm_rate"] = rate
    if not a.no_write:
        OUT.mkdir(exist_ok=True)
        path = OUT / f"{a.out}.json"
        chunks = [chunk]
        if a.merge and path.exists():
            old = json.loads(path.read_text())
            done = {(r["dataset"], r["method"]) for r in rows}
            kept = [r for r in old["rows"] if (r["dataset"], r["method"]) not in done]
            rows = kept + rows
            chunks = old.get("chunks", []) + chunks
        path.write_text(json.dumps({"chunks": chunks, "rows": rows}, indent=1))
        (OUT / f"{a.out}.md").write_text(markdown(rows, chunks))


if __name__ == "__main__":
    main()
