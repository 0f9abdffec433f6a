r"""Every attention method on real long-context SmolLM2 heads (n = 2048, 4096, 8192).

Data: :func:`attention.data.load_smollm2_heads` on the shipped ``"licenses"`` text (GPL-2,
Apache-2.0, LGPL-2.1; 12119 tokens), all 30 layers, one query head per layer (query head
``layer % 9``, with the kv head it reads), float32, causal, RoPE applied: a stack of 30
real heads per length.

Per (method, parameters, n), in a forked child with a wall-clock budget (methods that do
not finish are reported as too slow with the budget):

* the method runs on the 30-head stack in one :func:`attention.approximate` call,
  ``causal=True``; exact attention (:func:`attention.softmax_attention`, our Numba
  kernel) runs on the same stack in the same child, interleaved with the method
  (exact, method, exact, method, ...; medians), so the speed-up is a same-process
  ratio;
* relative Frobenius error over the stack, the per-row max error (largest row error
  ``max_i ||y_i - y~_i||`` over the largest row norm ``max_i ||y_i||``), the returned
  bound divided by the actual error in the bound's norm (>= 1 when the bound holds),
  the method's time and speed-up over exact, and its flop rate (``cost.flops`` / time)
  as a fraction of the machine's float32 GEMM rate (a 2048^3 ``sgemm``, measured in a
  child before the runs).

Configurations that did not approximate (the method reports, by ``cost.key_fraction``
= 1, that every visible pair was attended exactly: HyperAttention's causal split reduced
to one exact leaf, the adaptive method's exact route) are labelled ``[exact: ...]``:
their zero error is not an accurate approximation. Methods that cannot run causally are
listed as such. With ``--perplexity``, the best
setting of each family (lowest error among the settings faster than exact at that n, else
lowest error) is also run end to end: :func:`attention.end_to_end.perplexity` on the same
text, every layer approximated, against the exact model.

Run one length at a time under the machine lock, e.g.
``flock /tmp/bench.lock python -m benchmarks.attention_long --n 4096 --perplexity``
(``--methods A B --merge`` measures a subset and keeps the other rows of that n);
results accumulate (by n) in ``benchmarks/results/attention_long.{json,md}`` and the Pareto
plot ``attention_long.png``; ``--render`` rewrites them from the JSON. Times are
wall-clock on a shared 2-core machine: the load average is recorded per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.attention_methods import in_subprocess

NAME = "attention_long"
RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = {2048: 60.0, 4096: 60.0, 8192: 90.0}
SETUP_S = 60.0
# non-default settings (a small sweep so that each family has a Pareto front)
SWEEP = [
    ("window", {"window": 256}),
    ("window", {"window": 1024}),
    ("topk", {"top_k": 128}),
    ("bigbird", {"block_size": 64, "n_window": 5, "n_random": 4}),
    ("hyperattention", {"sample_size": 512}),
    # the bounds: the sampled-row certificate, and the Markov bound (an extra exact pass)
    ("hyperattention", {"error_bound": True}),
    ("hyperattention", {"error_bound": "exact"}),
    ("levattention", {"n_keys": 256}),
    ("performer", {"n_features": 64}),
    ("loki", {"rank": 32, "top_k": 256}),
]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(os.getloadavg())


def _gemm_rate() -> float:
    """Float32 GEMM rate [flop/s] of this machine (median of 5 ``2048^3`` products)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    a @ b
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / float(np.median(ts))


def _layers(step: int) -> list[int]:
    """Layers 0, step, 2 step, ... and always 29 (step 1: all 30 layers)."""
    return sorted({*range(0, 30, step), 29})


def _stack_path(n, step, cache_dir) -> Path:
    from attention.data import cache_directory

    return cache_directory(cache_dir) / "benchmark" / f"smollm2_licenses_n{n}_step{step}.npz"


def _prepare(n, step, cache_dir):
    """Extract (or read) the heads and save the benchmark's head stack; GEMM rate."""
    from attention.data import load_smollm2_heads, save_npz

    h = load_smollm2_heads(n, _layers(step), cache_dir=cache_dir)
    stack = h.sample([(int(layer), int(layer) % 9) for layer in h.layers])
    path = _stack_path(n, step, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, stack)
    calib = load_smollm2_heads(512, _layers(step), text="cc0-1.0", cache_dir=cache_dir)
    keys = calib.sample([(int(layer), int(layer) % 9) for layer in calib.layers]).K
    np.save(path.with_suffix(".calibration.npy"), keys)
    return {
        "shape": list(stack.Q.shape),
        "perplexity": h.perplexity,
        "accuracy": h.accuracy,
        "gemm": _gemm_rate(),
    }


def _job(n, step, name, params, budget, seed, cache_dir):
    """One (method, params) on the head stack at n, exact side by side."""
    from attention import approximate, softmax_attention
    from attention._core import _norm
    from attention.data import load_npz

    path = _stack_path(n, step, cache_dir)
    s = load_npz(path)
    Q, K, V = s.Q, s.K, s.V
    kw = {"scale": s.scale, "causal": True}
    if name == "loki" and params.get("calibration") is None:
        # Loki's causal form projects on principal directions of keys from other text
        # (the CC0 legal code, 512 tokens, same heads): a PCA of the keys themselves
        # would let future keys steer past rows.
        params = {**params, "calibration": np.load(path.with_suffix(".calibration.npy"))}
    # warm-up (Numba compilation) on a short prefix
    softmax_attention(Q[:1, :256], K[:1, :256], V[:1, :256], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = {k: (v[:1] if k == "calibration" else v) for k, v in params.items()}
        approximate(Q[:1, :256], K[:1, :256], V[:1, :256], name, rng=seed, **kw, **small)
    t_exact, t_method = [], []
    t_start = time.perf_counter()
    Y = approx = None
    while len(t_method) < 3:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            approx = approximate(Q, K, V, name, rng=seed, **kw, **params)
        t_method.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Y = softmax_attention(Q, K, V, **kw)
        t_exact.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget / 3:
            break
    Y64 = Y.astype(np.float64)
    D = approx.output.astype(np.float64) - Y64
    # as relative_error(norm="row_max"): largest row error over the largest row norm
    row_err = np.linalg.norm(D, axis=-1).max() / np.linalg.norm(Y64, axis=-1).max()
    per_head = np.linalg.norm(D, axis=(1, 2)) / np.linalg.norm(Y64, axis=(1, 2))
    te, tm = float(np.median(t_exact)), float(np.median(t_method))
    out = {
        "rel_fro": float(np.linalg.norm(D) / np.linalg.norm(Y64)),
        "rel_row_max": float(row_err),
        "per_head_rel_fro": per_head.tolist(),
        "time_s": tm,
        "exact_s": te,
        "speedup": te / tm,
        "repeats": len(t_method),
        "flops": float(approx.cost.flops),
        "kernel_evals": int(approx.cost.kernel_evals),
        "params": {
            k: ("cc0-1.0 keys" if k == "calibration" else _jsonable(v))
            for k, v in approx.params.items()
        },
    }
    if approx.cost.key_fraction is not None:
        # share of the visible keys (hyperattention: of the pairs in exact pieces)
        # attended exactly; 1.0: the method fell back to exact attention
        out["key_fraction"] = float(np.mean(approx.cost.key_fraction))
    b = approx.bound
    if b is not None:
        actual = _norm(D, b.norm)
        out.update(
            bound_kind=b.kind,
            bound_norm=b.norm,
            bound_over_actual=float(b.value / actual) if actual > 0 else math.inf,
        )
    return out


def _exact_flops(n: int, heads: int = 30) -> float:
    return 2.0 * heads * (n * (n + 1) // 2) * 128


def _ppl_job(n, name, params, seed, cache_dir):
    from attention.data import load_smollm2_heads
    from attention.end_to_end import perplexity

    per_layer = None
    if name == "loki":  # calibration keys of every layer from other text
        h = load_smollm2_heads(512, text="cc0-1.0", cache_dir=cache_dir)
        per_layer = {int(layer): {"calibration": h.K[i]} for i, layer in enumerate(h.layers)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = perplexity(
            name, n_tokens=n, rng=seed, cache_dir=cache_dir, layer_params=per_layer, **params
        )
    out = r.to_json()
    for key in ("layer_seconds", "layer_seconds_exact"):
        out.pop(key)
    return out


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, str | int | float | bool | type(None)) else repr(v)


def _label(row) -> str:
    """Return the row's configuration, marked where the method did not approximate.

    ``[exact: ...]`` when the method reports that every visible pair was attended exactly
    (``cost.key_fraction`` 1: HyperAttention's causal split is one exact leaf, the
    adaptive method's exact route), or, for rows measured before the key fraction was
    recorded, when the error is exactly 0; HyperAttention rows with exact leaves give
    their share of the pairs.
    """
    frac = row.get("key_fraction")
    exact_leaves = row["method"] in ("hyperattention", "prescoring")
    if frac is None and row.get("rel_fro") == 0.0:
        frac = 1.0
    if frac is None:
        return row["config"]
    if frac >= 1.0:
        what = "exact leaves only" if exact_leaves else "every pair exact"
        return f"{row['config']} [exact: {what}]"
    if exact_leaves and frac > 0:
        return f"{row['config']} [exact leaves: {100 * frac:.0f}% of pairs]"
    return row["config"]


def _key(name, params):
    if not params:
        return name
    return name + " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


def run(
    n: int,
    *,
    methods=None,
    perplexity=False,
    budget=None,
    seed=0,
    cache_dir=None,
    sweep=True,
    step=1,
):
    """Measure every configuration at ``n``; returns the result dict for this n."""
    from attention import methods as registry

    budget = budget or BUDGET.get(n, 60.0)
    infos = [m for m in registry() if m.name != "exact" and (not methods or m.name in methods)]
    before = _uptime()
    t0 = time.perf_counter()
    # the heads (extracted once and cached) and the machine's GEMM rate, in children
    prep = in_subprocess(_prepare, (n, step, cache_dir), timeout=900)
    if "skipped" in prep:
        raise RuntimeError(f"could not prepare the heads at n={n}: {prep['skipped']}")
    # Tolerance-driven methods (a required ``tol``) run at the report's tolerance.
    from attention._report import REPORT_TOL

    configs = [
        (m.name, {"tol": REPORT_TOL} if m.defaults.get("tol", 0) is None else {}) for m in infos
    ]
    if sweep:
        configs += [(m, p) for m, p in SWEEP if any(i.name == m for i in infos)]
    info_of = {m.name: m for m in infos}
    rows = []
    try:
        from tqdm.auto import tqdm

        it = tqdm(configs, desc=f"n={n}", leave=False)
    except ImportError:  # pragma: no cover
        it = configs
    for name, params in it:
        info = info_of[name]
        row = {
            "method": name,
            "config": _key(name, params),
            "family": info.family,
            "section": info.section,
        }
        if not info.causal:
            row["skipped"] = "not causal"
        else:
            # budget: for the timed runs; SETUP_S more for loading and compiling
            res = in_subprocess(
                _job, (n, step, name, params, budget, seed, cache_dir), budget + SETUP_S
            )
            if "skipped" in res and res["skipped"].startswith("timeout"):
                res["skipped"] = f"too slow: no result within {budget:.0f} s"
            row.update(res)
            if "flops" in row:
                row["flops_rate"] = row["flops"] / row["time_s"]
                row["gemm_fraction"] = row["flops_rate"] / prep["gemm"]
                row["gemm_rate"] = prep["gemm"]  # this run's (a merged table mixes runs)
        rows.append(row)
    result = {
        "n": n,
        "heads": prep["shape"],
        "gemm_flops_per_s": prep["gemm"],
        "layers": _layers(step),
        "validation_perplexity": prep["perplexity"],
        "validation_accuracy": prep["accuracy"],
        "exact_flops": _exact_flops(n, prep["shape"][0]),
        "rows": rows,
        "uptime_before": before,
    }
    if perplexity:
        result["perplexity"] = _perplexity_runs(n, rows, seed, cache_dir)
    result["uptime_after"] = _uptime()
    result["wall_s"] = time.perf_counter() - t0
    return result


def _canonical_order(rows):
    """Sort rows as a full run lists them (registry order, then the sweep)."""
    from attention import methods as registry

    names = [m.name for m in registry() if m.name != "exact"]
    order = {name: i for i, name in enumerate(names)}
    sweep = {_key(m, p): len(names) + i for i, (m, p) in enumerate(SWEEP)}

    def rank(r):
        return sweep.get(r["config"], order.get(r["method"], len(names) + len(SWEEP)))

    return sorted(rows, key=rank)


def best_per_family(rows):
    """Best configuration of each family: lowest error among those faster than exact."""
    best = {}
    for fam in dict.fromkeys(r["family"] for r in rows):
        ok = [r for r in rows if r["family"] == fam and "rel_fro" in r]
        if not ok:
            continue
        fast = [r for r in ok if r["speedup"] >= 1]
        best[fam] = min(fast or ok, key=lambda r: r["rel_fro"])
    return best


PPL_BUDGET_S = 300.0


def _perplexity_runs(n, rows, seed, cache_dir):
    out = [in_subprocess(_ppl_job, (n, "exact", {}, seed, cache_dir), 900)]
    out[0]["family"] = "exact"
    for fam, r in best_per_family(rows).items():
        params = _explicit_params(r)
        res = in_subprocess(_ppl_job, (n, r["method"], params, seed, cache_dir), PPL_BUDGET_S)
        if "skipped" in res and res["skipped"].startswith("timeout"):
            res["skipped"] = f"too slow: no result within {PPL_BUDGET_S:.0f} s"
        res.update(family=fam, config=r["config"])
        out.append(res)
    return out


def _explicit_params(row):
    """Return the non-default parameters of a configuration (from its SWEEP entry)."""
    for m, p in SWEEP:
        if _key(m, p) == row["config"]:
            return p
    from attention import methods as registry
    from attention._report import REPORT_TOL

    info = {m.name: m for m in registry()}.get(row["method"])
    if info is not None and info.defaults.get("tol", 0) is None:
        return {"tol": REPORT_TOL}  # a tolerance-driven method at the report's tolerance
    return {}


# End-to-end runs: the best setting of each family by the tables (lowest error among the
# settings faster than exact at n = 4096 and 8192; Loki, the only causal low-rank method,
# is quadratic by construction) and the certified adaptive method. ``--accuracy N``: all
# of them single-threaded without times (no lock needed); ``--e2e N --families F ...``:
# one run per family in a child on all cores with the attention times measured side by
# side in the same pass (hold the machine lock; a run takes 1-4 minutes).
ACCURACY_RUNS = [
    ("sparse", "bigbird", {}),
    ("clustering", "reformer", {}),
    ("sampling", "hyperattention", {}),
    ("low-rank", "loki", {}),
    ("kernel", "polysketch", {}),
    ("adaptive", "adaptive", {"tol": 0.05}),
]
E2E_BUDGET_S = 600.0


def _e2e_run(n, fam, name, params, cache_dir, timed):
    """One end-to-end run: perplexity, agreement, layer errors (and attention times)."""
    from attention.data import load_smollm2_heads
    from attention.end_to_end import perplexity

    loki = None
    if name == "loki":  # calibration keys of every layer from other text
        calib = load_smollm2_heads(512, text="cc0-1.0", cache_dir=cache_dir)
        loki = {int(layer): {"calibration": calib.K[i]} for i, layer in enumerate(calib.layers)}
    load0 = _uptime()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = perplexity(name, n_tokens=n, cache_dir=cache_dir, layer_params=loki, **params)
    d = r.to_json()
    keep = ("n", "method", "params", "perplexity_exact", "perplexity")
    keep += ("perplexity_ratio", "top1_exact", "top1", "top1_agreement")
    if timed:
        keep += ("attention_seconds", "attention_seconds_exact")
    out = {k: d[k] for k in keep}
    out["family"] = fam
    out["median_layer_error"] = float(np.nanmedian(r.layer_error))
    out["max_layer_error"] = float(np.nanmax(r.layer_error))
    if timed:
        out["speedup"] = out["attention_seconds_exact"] / out["attention_seconds"]
        out["load"] = _load(load0) + " / " + _load(_uptime())
    return out


def accuracy_runs(n: int, cache_dir=None) -> list[dict]:
    """Perplexity, top-1 agreement and per-layer errors of each family's best setting."""
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for fam, name, params in ACCURACY_RUNS:
            try:
                out.append(_e2e_run(n, fam, name, params, cache_dir, False))
            except Exception as exc:  # reported, the runs go on
                out.append({"family": fam, "method": name, "error": str(exc)[:200]})
    return out


def e2e_runs(n: int, families, cache_dir=None) -> list[dict]:
    """Run the timed end-to-end runs of the chosen families (each in a child, all cores)."""
    out = []
    for fam, name, params in ACCURACY_RUNS:
        if families and fam not in families:
            continue
        res = in_subprocess(_e2e_run, (n, fam, name, params, cache_dir, True), E2E_BUDGET_S)
        if "skipped" in res:
            res = {"family": fam, "method": name, "error": res["skipped"]}
        out.append(res)
    return out


def accuracy_rst(acc: dict) -> str:
    """Return the accuracy runs (keyed by n) as a reStructuredText table."""
    lines = [
        ".. csv-table::",
        "   :header: n, family, method (parameters), perplexity (exact), ratio, "
        "top-1 agreement, median layer error, max layer error, attention [s] (exact), "
        "speed-up",
        "   :widths: 6, 10, 30, 16, 8, 10, 10, 10, 14, 8",
        "",
    ]
    fam_order = {fam: i for i, (fam, _, _) in enumerate(ACCURACY_RUNS)}
    for key in sorted(acc, key=int):
        for d in sorted(acc[key], key=lambda d: fam_order.get(d["family"], 99)):
            if "perplexity" not in d:
                why = str(d.get("error", "error")).replace('"', "'")[:60]
                lines.append(f'   {key}, {d["family"]}, {d["method"]}, "{why}", , , , , , ')
                continue
            params = ", ".join(
                f"{k}={v}" for k, v in d["params"].items() if v is not None and k != "delta"
            )
            if d["method"] == "loki":
                params = (params + ", " if params else "") + "calibration: CC0 text keys"
            lines.append(
                f'   {d["n"]}, {d["family"]}, "{d["method"]} ({params or "defaults"})", '
                f'"{d["perplexity"]:.4g} ({d["perplexity_exact"]:.2f})", '
                f"{d['perplexity_ratio']:.3g}, {d['top1_agreement']:.3f}, "
                f"{d['median_layer_error']:.3f}, {d['max_layer_error']:.3f}, "
                + (
                    f'"{d["attention_seconds"]:.1f} ({d["attention_seconds_exact"]:.1f})", '
                    f"{d['speedup']:.2f}"
                    if "speedup" in d
                    else "–, –"
                )
            )
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ output


def _f(x, spec=".2e"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _exact_summary(res):
    """Median exact time of the rows, its GEMM fraction, and the runs' GEMM rates (text).

    Rows measured in different runs (``--merge``) carry their own run's GEMM rate
    (``gemm_rate``; older rows: their flop rate over their GEMM fraction, else the
    table's ``gemm_flops_per_s``).
    """
    rows = [r for r in res["rows"] if "exact_s" in r]
    if not rows:
        return math.nan, math.nan, f"{res['gemm_flops_per_s'] / 1e9:.0f}"
    n, heads = res["n"], res["heads"][0]
    rate = [
        r.get("gemm_rate")
        or (r["flops_rate"] / r["gemm_fraction"] if r.get("gemm_fraction") else None)
        or res["gemm_flops_per_s"]
        for r in rows
    ]
    frac = float(
        np.median(
            [_exact_flops(n, heads) / r["exact_s"] / g for r, g in zip(rows, rate, strict=True)]
        )
    )
    lo, hi = min(rate) / 1e9, max(rate) / 1e9
    text = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"
    return float(np.median([r["exact_s"] for r in rows])), frac, text


def to_markdown(results: dict) -> str:
    """Markdown tables from the accumulated results (keyed by n)."""
    lines = [
        "# Attention methods on real long-context SmolLM2 heads",
        "",
        "SmolLM2-135M-Instruct, shipped text `licenses` (GPL-2, Apache-2.0, LGPL-2.1), "
        "causal, RoPE, float32; one query head per layer (head `layer % 9`), all 30 layers "
        "unless the section says otherwise. "
        "Error: relative Frobenius over the 30-head stack; row max: largest row "
        "error over the largest row norm; bound/actual: returned bound over the actual "
        "error in its norm (>= 1: held); speed-up: median exact time / median method "
        "time, interleaved in one process; GEMM fraction: the method's `cost.flops` per "
        "second over the machine's float32 GEMM rate. "
        "`[exact: ...]` marks configurations that did not approximate: every visible "
        "pair was attended exactly (HyperAttention's causal split is a single exact leaf "
        "below 4 (block_size + sample_size) keys per half; the adaptive method's exact "
        "route), so the error is rounding and the time that of exact work; "
        "`[exact leaves: x%]` is the share of the pairs HyperAttention attended in exact "
        "leaves. "
        "Generated by `python -m benchmarks.attention_long`.",
        "",
    ]
    for key in sorted(results, key=int):
        res = results[key]
        n = res["n"]
        rows = res["rows"]
        exact_s, frac, rates = _exact_summary(res)
        lines += [
            f"## n = {n}",
            "",
            f"Heads {tuple(res['heads'])} (layers {res.get('layers', 'all')}); exact "
            f"attention (our kernel) {1e3 * exact_s:.0f} ms for the stack (median over the "
            f"rows) = {frac:.2f} of the GEMM rate ({rates} Gflop/s; each row's GEMM "
            "fraction uses the rate measured in its own run). Load: "
            f"`{res['uptime_before']}` / `{res['uptime_after']}`; wall {res['wall_s']:.0f} s.",
            "",
            "| method | family | rel. error | row max | bound/actual | time [ms] | speed-up |"
            " GEMM fraction |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "rel_fro" not in r:
                lines.append(
                    f"| {r['config']} | {r['family']} | {r.get('skipped', '?')} | | | | | |"
                )
                continue
            ba = "none"
            if "bound_over_actual" in r:
                kind = r["bound_kind"][:4]
                ba = f"{_f(r['bound_over_actual'], '.3g')} ({kind}., {r['bound_norm']})"
            lines.append(
                f"| {_label(r)} | {r['family']} | {_f(r['rel_fro'], '.3f')} | "
                f"{_f(r['rel_row_max'], '.3f')} | {ba} | {1e3 * r['time_s']:.0f} | "
                f"{_f(r['speedup'], '.2f')} | {_f(r.get('gemm_fraction'), '.3f')} |"
            )
        if res.get("perplexity"):
            lines += [
                "",
                f"End to end at n = {n} (every layer approximated; best setting per family "
                "by the table above):",
                "",
                "| family | setting | perplexity | increase | top-1 | top-1 agreement |"
                " attention [s] | exact attention [s] | speed-up |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for p in res["perplexity"]:
                if "perplexity" not in p:
                    lines.append(
                        f"| {p.get('family')} | {p.get('config', '')} | "
                        f"{p.get('skipped', '?')} | | | | | | |"
                    )
                    continue
                sp = p["attention_seconds_exact"] / p["attention_seconds"]
                lines.append(
                    f"| {p['family']} | {p.get('config', 'exact')} | {p['perplexity']:.3f} | "
                    f"{100 * (p['perplexity'] / p['perplexity_exact'] - 1):+.1f}% | "
                    f"{p['top1']:.3f} | {p['top1_agreement']:.3f} | "
                    f"{p['attention_seconds']:.2f} | {p['attention_seconds_exact']:.2f} | "
                    f"{sp:.2f} |"
                )
            ex = res["perplexity"][0]
            if "timings" in ex:
                t = ex["timings"]
                lines += [
                    "",
                    "Forward-pass time split of the exact pass: "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
                    + ".",
                ]
        lines.append("")
    return "\n".join(lines)


def to_rst(results: dict) -> str:
    """Return the tables of :func:`to_markdown` as reStructuredText (for the docs)."""
    keys = sorted(results, key=int)
    out = [
        ".. rubric:: Validation of the forward pass",
        "",
        "Next-token perplexity and top-1 accuracy of the exact model on the first n tokens.",
        "",
        ".. csv-table::",
        "   :header: n, perplexity, top-1 accuracy",
        "",
    ]
    for key in keys:
        r = results[key]
        if "validation_perplexity" in r:
            out.append(
                f"   {r['n']}, {r['validation_perplexity']:.3f}, {r['validation_accuracy']:.3f}"
            )
    out.append("")
    split = [
        (results[k]["n"], results[k]["perplexity"][0])
        for k in keys
        if results[k].get("perplexity")
    ]
    split = [(n, p["timings"]) for n, p in split if "timings" in p]
    if split:
        out += [
            ".. rubric:: Forward-pass time split",
            "",
            "Seconds of one exact forward pass (30 layers, output head and log-likelihoods; "
            "dequantisation of the weights excluded):",
            "",
            ".. csv-table::",
            "   :header: n, GEMM, attention, other element-wise, total, GEMM + attention share",
            "",
        ]
        for n, t in split:
            total = t["total"] - t.get("weights", 0.0)
            share = (t["gemm"] + t["attention"]) / total
            out.append(
                f"   {n}, {t['gemm']:.2f}, {t['attention']:.2f}, {t['other']:.2f}, "
                f"{total:.2f}, {100 * share:.0f}%"
            )
        out.append("")
    for key in keys:
        res = results[key]
        n = res["n"]
        rows = res["rows"]
        exact_s, frac, rates = _exact_summary(res)
        out += [
            f".. rubric:: n = {n}",
            "",
            f"Exact attention (our kernel) {1e3 * exact_s:.0f} ms for the "
            f"{res['heads'][0]} heads, "
            f"{frac:.2f} of the measured "
            f"float32 GEMM rate ({rates} Gflop/s). Load average "
            f"before/after: {_load(res['uptime_before'])} / {_load(res['uptime_after'])}.",
            "",
            ".. csv-table::",
            "   :header: method, family, rel. error, row max, bound/actual, time [ms], "
            "speed-up, GEMM fraction",
            "   :widths: 30, 10, 9, 9, 16, 9, 9, 9",
            "",
        ]
        for r in rows:
            if r.get("skipped") == "not causal":
                continue
            if "rel_fro" not in r:
                reason = r.get("skipped", "?").replace('"', "'")[:90]
                out.append(f'   "{r["config"]}", {r["family"]}, "{reason}", , , , , ')
                continue
            ba = "none"
            if "bound_over_actual" in r:
                ba = f"{_f(r['bound_over_actual'], '.3g')} ({r['bound_kind'][:4]}.)"
            out.append(
                f'   "{_label(r)}", {r["family"]}, {_f(r["rel_fro"], ".3f")}, '
                f'{_f(r["rel_row_max"], ".3f")}, "{ba}", {1e3 * r["time_s"]:.0f}, '
                f"{_f(r['speedup'], '.2f')}, {_f(r.get('gemm_fraction'), '.3f')}"
            )
        out.append("")
        if res.get("perplexity"):
            out += [
                f"End to end at n = {n}, every layer approximated:",
                "",
                ".. csv-table::",
                "   :header: family, setting, perplexity, increase, top-1 agreement, "
                "attention [s], exact attention [s], speed-up",
                "",
            ]
            for p in res["perplexity"]:
                if "perplexity" not in p:
                    out.append(
                        f'   {p.get("family")}, "{p.get("config", "")}", '
                        f'"{p.get("skipped", "?")}", , , , , '
                    )
                    continue
                sp = p["attention_seconds_exact"] / p["attention_seconds"]
                out.append(
                    f'   {p["family"]}, "{p.get("config", "exact")}", {p["perplexity"]:.3f}, '
                    f"{100 * (p['perplexity'] / p['perplexity_exact'] - 1):+.1f}%, "
                    f"{p['top1_agreement']:.3f}, {p['attention_seconds']:.2f}, "
                    f"{p['attention_seconds_exact']:.2f}, {sp:.2f}"
                )
            out.append("")
    return "\n".join(out)


def _load(uptime: str) -> str:
    return uptime.split("load average:")[-1].strip() if "load average" in uptime else uptime


def plot(results: dict, path: Path):
    """Pareto plot: relative error against speed-up over exact, one panel per n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(results, key=int)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4), squeeze=False)
    fams = sorted({r["family"] for k in keys for r in results[k]["rows"]})
    colours = {f: f"C{i}" for i, f in enumerate(fams)}
    for ax, k in zip(axes[0], keys, strict=True):
        for r in results[k]["rows"]:
            if "rel_fro" not in r:
                continue
            if r["rel_fro"] <= 0:
                continue  # exact (no approximation): no point on a log error axis
            ax.scatter(r["speedup"], r["rel_fro"], color=colours[r["family"]], s=22)
            ax.annotate(
                r["config"],
                (r["speedup"], r["rel_fro"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.axvline(1.0, color="0.6", ls="--", lw=1)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="speed-up over exact attention",
            ylabel="relative Frobenius error",
            title=f"SmolLM2, {results[k]['heads'][0]} heads, n = {k}",
        )
    for f, c in colours.items():
        axes[0][0].scatter([], [], color=c, label=f)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[2048], help="lengths (<= 8192)")
    p.add_argument("--methods", nargs="*", help="restrict to these methods")
    p.add_argument("--perplexity", action="store_true", help="end-to-end runs per family")
    p.add_argument("--budget", type=float, default=None, help="seconds per configuration")
    p.add_argument("--no-sweep", action="store_true", help="default parameters only")
    p.add_argument(
        "--layer-step",
        type=int,
        default=1,
        help="one head of every STEP-th layer (and of layer 29); default 1: all 30",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="head cache (default: user cache)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite .md/.png from .json")
    p.add_argument(
        "--merge",
        action="store_true",
        help="with --methods: keep the other configurations already measured at this n",
    )
    p.add_argument(
        "--e2e",
        type=int,
        metavar="N",
        help="timed end-to-end runs at length N (with --families; merged into the e2e table)",
    )
    p.add_argument("--families", nargs="*", help="families of the --e2e runs (default: all)")
    p.add_argument(
        "--accuracy",
        type=int,
        nargs="+",
        metavar="N",
        help="only the end-to-end accuracy runs at these lengths (no timings)",
    )
    a = p.parse_args(argv)
    acc_path = a.out_dir / f"{NAME}_e2e.json"
    if a.accuracy:
        acc = json.loads(acc_path.read_text()) if acc_path.exists() else {}
        for n in a.accuracy:
            acc[str(n)] = accuracy_runs(n, a.cache_dir)
            acc_path.write_text(json.dumps(acc, indent=1))
    if a.e2e:
        acc = json.loads(acc_path.read_text()) if acc_path.exists() else {}
        new = e2e_runs(a.e2e, a.families, a.cache_dir)
        done = {d["family"] for d in new}
        acc[str(a.e2e)] = [d for d in acc.get(str(a.e2e), []) if d["family"] not in done] + new
        acc_path.write_text(json.dumps(acc, indent=1))
    if acc_path.exists():
        (a.out_dir / f"{NAME}_e2e.rst").write_text(accuracy_rst(json.loads(acc_path.read_text())))
    if a.accuracy or a.e2e:
        print((a.out_dir / f"{NAME}_e2e.rst").read_text())
        return
    path = a.out_dir / f"{NAME}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not a.render:
        for n in a.n:
            old = results.get(str(n))
            results[str(n)] = run(
                n,
                methods=a.methods,
                perplexity=a.perplexity,
                budget=a.budget,
                seed=a.seed,
                cache_dir=a.cache_dir,
                sweep=not a.no_sweep,
                step=a.layer_step,
            )
            if a.merge and old is not None:
                # A run restricted to --methods replaces only its own configurations.
                new = results[str(n)]
                done = {r["config"] for r in new["rows"]}
                kept = [r for r in old["rows"] if r["config"] not in done]
                new["rows"] = _canonical_order(kept + new["rows"])
                new["uptime_before"] = old.get("uptime_before", "") + " | " + new["uptime_before"]
                new["wall_s"] = old.get("wall_s", 0.0) + new["wall_s"]
            a.out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
    (a.out_dir / f"{NAME}.md").write_text(to_markdown(results))
    (a.out_dir / f"{NAME}.rst").write_text(to_rst(results))
    try:
        plot(results, a.out_dir / f"{NAME}.png")
    except ImportError:  # pragma: no cover
        pass
    print((a.out_dir / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
