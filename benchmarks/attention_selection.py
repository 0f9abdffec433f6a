r"""Cost of the selection methods (``topk``, ``loki``) against exact attention on real heads.

Data: one real SmolLM2-135M layer at ``n = 4096`` tokens (:func:`attention.data.
load_smollm2_heads`, default text, causal, RoPE applied): its 9 query heads over 3
key/value heads (grouped-query), and its first query head alone (single key/value head);
Loki gets calibration keys of the same layer from other text (the shipped CC0 legal
code, 512 tokens), as in :mod:`benchmarks.attention_long`.

For each thread count (1 and 2, ``numba.set_num_threads``) and each shape, exact
attention (:func:`attention.softmax_attention`, our Numba kernel) and each method run
interleaved (exact, method, exact, method, ...); reported: median times, speed
(exact time / method time), flops achieved (``cost.flops`` / time / the float32 GEMM rate
of the threads used, a ``2048^3`` ``sgemm`` measured at the start), the relative
Frobenius error against exact and the returned bound over the actual error (and over
``||Y||_F``). The load average is recorded before and after.

Run ``flock /tmp/bench.lock python -m benchmarks.attention_selection [--n N]
[--layer L] [--repeats R]``; writes ``benchmarks/results/attention_selection.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [
    ("topk", {}),
    ("topk", {"top_k": 128}),
    ("loki", {}),
    ("loki", {"rank": 32, "top_k": 256}),
]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _gemm_rate(threads: int) -> float:
    """Float32 GEMM rate [flop/s] on ``threads`` BLAS threads (median of 5)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(ts)


def _label(name, params):
    return name + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")


def run(n=4096, layer=6, repeats=3):
    import numba

    from attention import approximate, softmax_attention
    from attention.data import load_smollm2_heads

    h = load_smollm2_heads(n, [layer])
    calib = load_smollm2_heads(512, [layer], text="cc0-1.0").K[0]
    shapes = {
        "9 heads / 3 kv": (h.Q[0], h.K[0], h.V[0], calib),
        "1 head / 1 kv": (h.Q[0, :1], h.K[0, :1], h.V[0, :1], calib[:1]),
    }
    kw = {"scale": h.scale, "causal": True}

    def call(name, params, q, k, v, cal):
        p = {**params, "calibration": cal} if name == "loki" else params
        return approximate(q, k, v, name, rng=0, **kw, **p)

    q, k, v, cal = shapes["1 head / 1 kv"]
    softmax_attention(q[:, :256], k[:, :256], v[:, :256], **kw)  # compile
    for name, params in SETTINGS:
        call(name, params, q[:, :256], k[:, :256], v[:, :256], cal)
    rows = []
    load = [_uptime()]
    rates = {t: _gemm_rate(t) for t in (1, 2)}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        for shape, (q, k, v, cal) in shapes.items():
            Y = softmax_attention(q, k, v, **kw).astype(np.float64)
            ynorm = float(np.linalg.norm(Y))
            for name, params in SETTINGS:
                te, tm = [], []
                res = None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    softmax_attention(q, k, v, **kw)
                    te.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    res = call(name, params, q, k, v, cal)
                    tm.append(time.perf_counter() - t0)
                te_, tm_ = statistics.median(te), statistics.median(tm)
                err = float(np.linalg.norm(res.output.astype(np.float64) - Y))
                rows.append(
                    {
                        "threads": threads,
                        "shape": shape,
                        "method": _label(name, params),
                        "exact_ms": 1e3 * te_,
                        "time_ms": 1e3 * tm_,
                        "speed": te_ / tm_,
                        "achieved": float(res.cost.flops) / tm_ / rates[threads],
                        "rel_error": err / ynorm,
                        "bound_over_actual": float(res.bound.value) / err if err else None,
                        "bound_over_norm": float(res.bound.value) / ynorm,
                    }
                )
    load.append(_uptime())
    return {"n": n, "layer": layer, "gemm_rate": rates, "load": load, "rows": rows}


def to_markdown(res) -> str:
    lines = [
        "# Selection methods (topk, loki) against exact attention, real SmolLM2 heads",
        "",
        f"n = {res['n']}, layer {res['layer']}, causal; float32 GEMM rate "
        f"{res['gemm_rate'][1] / 1e9:.0f} GFLOP/s (1 thread), "
        f"{res['gemm_rate'][2] / 1e9:.0f} (2 threads). Load: `{res['load'][0]}` / "
        f"`{res['load'][1]}`. Speed: median exact time / median method time, "
        "interleaved in one process; achieved: cost.flops / time / GEMM rate.",
        "",
        "| threads | shape | method | exact [ms] | time [ms] | speed | achieved | rel. error "
        "| bound/actual | bound/‖Y‖ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['threads']} | {r['shape']} | {r['method']} | {r['exact_ms']:.1f} | "
            f"{r['time_ms']:.1f} | {r['speed']:.2f} | {r['achieved']:.3f} | "
            f"{r['rel_error']:.4f} | {r['bound_over_actual']:.2f} | "
            f"{r['bound_over_norm']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    res = run(a.n, a.layer, a.repeats)
    md = to_markdown(res)
    print(md)
    if not a.no_write:
        (RESULTS / "attention_selection.json").write_text(json.dumps(res, indent=1))
        (RESULTS / "attention_selection.md").write_text(md)


if __name__ == "__main__":
    main()
