"""The work behind ``python -m attention report | verify | spectra``.

Kept apart from :mod:`attention.__main__` (argument parsing only) so that it can be
imported and tested. Plots and progress bars need the ``report`` extra (matplotlib,
tqdm); without them the tables are still written.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from attention._core import _norm, relative_error
from attention._registry import approximate, get_method, methods

__all__ = ["Dataset", "load_dataset", "run_report", "run_spectra", "run_verify"]


@dataclass(frozen=True)
class Dataset:
    """Stacked heads to run methods on: ``Q (h, n, d)``, ``K (h, m, d)``, ``V (h, m, dv)``."""

    name: str
    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    causal: bool
    scale: float
    description: str
    labels: tuple = ()

    def label(self, h: int) -> str:
        """Name of head ``h`` (model layer and head when known)."""
        return self.labels[h] if h < len(self.labels) else f"head {h}"


#: Layers of the long-context SmolLM2 heads of ``report --n`` (one query head each).
LONG_LAYERS = (0, 5, 10, 15, 20, 25, 29)


def long_dataset(n: int, layers=None, *, cache_dir=None) -> Dataset:
    """Real SmolLM2 heads at ``n`` tokens: query head ``layer % 9`` of each layer."""
    from attention import data as shipped

    layers = LONG_LAYERS if layers is None else tuple(int(i) for i in layers)
    heads = shipped.load_smollm2_heads(n, layers, cache_dir=cache_dir)
    s = heads.sample([(layer, layer % 9) for layer in heads.layers])
    return Dataset(
        f"smollm2_n{n}", s.Q, s.K, s.V, True, float(s.scale), s.description, _labels(s.heads)
    )


def load_dataset(
    data: str | None = None,
    *,
    input: str | None = None,
    synthetic_n=None,
    long_n=None,
    layers=None,
    seed=0,
):
    """Datasets selected on the command line (--data, --input, --synthetic, --n)."""
    from attention import data as shipped

    if long_n is not None:
        return [long_dataset(int(long_n), layers)]

    if input is not None:
        s = shipped.load_npz(input)
        return [
            Dataset(
                Path(input).stem,
                s.Q,
                s.K,
                s.V,
                bool(s.causal),
                float(s.scale),
                s.description,
                _labels(s.heads),
            )
        ]
    if synthetic_n is not None:
        return [synthetic_dataset(int(synthetic_n), seed=seed)]
    names = shipped.available_samples() if data in (None, "all") else [data]
    out = []
    for name in names:
        s = shipped.load_sample(name)
        out.append(
            Dataset(
                name,
                s.Q,
                s.K,
                s.V,
                bool(s.causal),
                float(s.scale),
                s.description,
                _labels(s.heads),
            )
        )
    return out


def _labels(heads) -> tuple:
    return tuple(
        f"layer {int(layer)}, head {int(h)}" for layer, h in np.asarray(heads).reshape(-1, 2)
    )


def synthetic_dataset(n: int, *, heads: int = 4, d: int = 64, seed=0) -> Dataset:
    """Synthetic heads with clustered keys (a sharp and a diffuse regime), not i.i.d. noise.

    Keys are drawn around ``n // 32`` centres; queries are noisy copies of keys, and the
    temperature grows with the head index, so the heads range from diffuse to sharp.
    """
    rng = np.random.default_rng(seed)
    Q = np.empty((heads, n, d))
    K = np.empty((heads, n, d))
    for h in range(heads):
        centres = rng.standard_normal((max(2, n // 32), d))
        K[h] = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d))
        Q[h] = K[h][rng.permutation(n)] + 0.5 * rng.standard_normal((n, d))
        Q[h] *= 0.5 + h / max(1, heads - 1)
    V = rng.standard_normal((heads, n, d))
    desc = f"synthetic clustered heads (n={n}, d={d}, {heads} heads, seed={seed})"
    return Dataset(f"synthetic{n}", Q, K, V, False, 1 / math.sqrt(d), desc)


def _timed(fn: Callable, repeats: int, budget: float = 2.0):
    """Warm up once (Numba compilation), then return (output, median seconds).

    Runs ``repeats`` timed calls, but stops after the first once ``budget`` seconds have
    been spent: slow methods are timed once instead of holding up the whole report.
    """
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget:
            break
    return out, float(np.median(times))


def _abs_error(Y_approx, Y, norm: str) -> float:
    return _norm(np.asarray(Y_approx, dtype=np.float64) - Y, norm)


def _selected(names: Sequence[str] | None):
    if not names:
        return list(methods())
    return [get_method(n) for n in names]


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - optional dependency
        return items
    return tqdm(items, desc=desc, leave=False)


# Tolerance-driven methods (a required ``tol`` instead of a budget) run at this tolerance
# in the report and in verify; the value appears in the table's parameters column.
REPORT_TOL = 0.05


def _data_kwargs(ds: Dataset) -> dict:
    return {"causal": ds.causal, "scale": ds.scale}


def _method_kwargs(ds: Dataset, info) -> dict:
    kw = _data_kwargs(ds)
    if "tol" in info.defaults and info.defaults["tol"] is None:
        kw["tol"] = REPORT_TOL
    return kw


def evaluate(
    ds: Dataset, info, *, seed: int, repeats: int, n_rows: int, t_exact: float, Y: np.ndarray
) -> dict:
    """Run one method on one dataset and measure everything the report shows."""
    from attention.bounds import certify

    row = {"dataset": ds.name, "method": info.name, "section": info.section, "family": info.family}
    if ds.causal and not info.causal:
        row["skipped"] = "not causal (would leak future keys)"
        return row
    kw = _method_kwargs(ds, info)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            approx, seconds = _timed(
                lambda: approximate(ds.Q, ds.K, ds.V, info.name, rng=seed, **kw), repeats
            )
    except ValueError as exc:  # the method cannot run on these data with its defaults
        row["skipped"] = str(exc).split(";")[0]
        return row
    # Warnings (inaccurate regime, no convergence) go into the table, once each.
    row["warnings"] = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    row["params"] = {k: _jsonable(v) for k, v in approx.params.items()}
    row["time_ms"] = 1e3 * seconds
    row["speedup"] = t_exact / seconds if seconds > 0 else math.inf
    row["flops"] = float(approx.cost.flops)
    row["kernel_evals"] = int(approx.cost.kernel_evals)
    for norm in ("fro", "2", "row_max"):
        row[f"rel_{norm}"] = relative_error(approx.output, Y, norm=norm)
    b = approx.bound
    if b is not None:
        actual = _abs_error(approx.output, Y, b.norm)
        scale = _abs_error(np.zeros_like(Y), Y, b.norm)
        row.update(
            bound_kind=b.kind,
            bound_norm=b.norm,
            bound_delta=b.delta,
            bound_rel=b.value / scale if scale else math.inf,
            bound_held=bool(actual <= b.value * (1 + 1e-9) + 1e-12 * scale),
            tightness=b.value / actual if actual > 0 else math.inf,
            bound_assumptions=b.assumptions,
        )
    cert = certify(approx, ds.Q, ds.K, ds.V, n_rows=n_rows, rng=seed + 1, **_data_kwargs(ds))
    row["cert_rel_fro"] = float(cert.relative_fro)
    row["cert_delta"] = float(cert.delta)
    row["cert_held"] = bool(row["rel_fro"] <= cert.relative_fro)
    return row


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return f"array{v.shape}"
    return v if isinstance(v, str | int | float | bool | type(None)) else repr(v)


def run_report(
    datasets,
    *,
    method_names=None,
    out_dir: Path,
    seed=0,
    repeats=3,
    n_rows=64,
    progress=True,
    plot=True,
) -> list[dict]:
    """Run every selected method on every dataset; write report.md/.json and Pareto plots."""
    from attention.exact import softmax_attention

    out_dir.mkdir(parents=True, exist_ok=True)
    infos = [m for m in _selected(method_names) if m.name != "exact"]
    rows = []
    for ds in datasets:
        Y, t_exact = _timed(
            lambda ds=ds: softmax_attention(ds.Q, ds.K, ds.V, scale=ds.scale, causal=ds.causal),
            repeats,
        )
        Y = np.asarray(Y, dtype=np.float64)
        rows.append(
            {
                "dataset": ds.name,
                "method": "exact",
                "section": "§2.1",
                "family": "exact",
                "time_ms": 1e3 * t_exact,
                "speedup": 1.0,
                "rel_fro": 0.0,
                "rel_2": 0.0,
                "rel_row_max": 0.0,
                "params": {},
            }
        )
        for info in _progress(infos, progress, ds.name):
            rows.append(
                evaluate(ds, info, seed=seed, repeats=repeats, n_rows=n_rows, t_exact=t_exact, Y=Y)
            )
    meta = {
        "datasets": [
            {
                "name": d.name,
                "shape": list(d.Q.shape),
                "causal": d.causal,
                "description": d.description,
            }
            for d in datasets
        ],
        "seed": seed,
        "repeats": repeats,
        "certificate_rows": n_rows,
    }
    (out_dir / "report.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1, default=_jsonable)
    )
    (out_dir / "report.md").write_text(to_markdown(rows, meta))
    if plot:
        pareto_plot(rows, out_dir)
    return rows


def _fmt(x, spec=".2e"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def to_markdown(rows: list[dict], meta: dict) -> str:
    """Markdown tables, one per dataset."""
    lines = ["# Attention approximations against exact attention", ""]
    for d in meta["datasets"]:
        lines += [
            f"## {d['name']}: {d['description']}",
            "",
            f"Shape (heads, n, d) = {tuple(d['shape'])}, causal = {d['causal']}.",
            "",
            "| method | § | parameters | rel. error (fro) | bound (rel.) | held | "
            "bound/actual | certificate (rel. fro) | time [ms] | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["dataset"] != d["name"]:
                continue
            if "skipped" in r:
                lines.append(
                    f"| {r['method']} | {r['section']} | – | skipped: {r['skipped']} | | | | | | |"
                )
                continue
            params = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items())
            bound = "none"
            if "bound_rel" in r:
                bound = f"{_fmt(r['bound_rel'])} ({r['bound_kind']}, {r['bound_norm']})"
            held = {True: "yes", False: "**NO**"}.get(r.get("bound_held"), "–")
            lines.append(
                f"| {r['method']} | {r['section']} | {params or '–'} | {_fmt(r['rel_fro'])} | "
                f"{bound} | {held} | {_fmt(r.get('tightness'), '.3g')} | "
                f"{_fmt(r.get('cert_rel_fro'))} | {_fmt(r['time_ms'], '.2f')} | "
                f"{_fmt(r['speedup'], '.2f')} |"
            )
        notes = [
            (r["method"], w)
            for r in rows
            if r["dataset"] == d["name"]
            for w in r.get("warnings", [])
        ]
        if notes:
            lines += ["", "Warnings raised by the methods on these data:", ""]
            lines += [f"* {name}: {w}" for name, w in notes]
        lines.append("")
    lines += [
        "Bounds bound the absolute output error in the stated norm; shown divided by "
        "the exact output's norm. Certificates: sampled-row upper confidence bound on "
        f"the relative Frobenius error ({meta['certificate_rows']} rows, delta "
        "0.01). Times: median of "
        f"{meta['repeats']} runs after a warm-up (one run when they exceed 2 s); speed-up = "
        "exact time / method time.",
        "",
    ]
    return "\n".join(lines)


def pareto_plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """Error vs time scatter per dataset (PNG); returns the written paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional dependency
        return []
    paths = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == name and "skipped" not in r]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        exact = next(r for r in sub if r["method"] == "exact")
        ax.axvline(exact["time_ms"], color="0.6", ls="--", lw=1, label="exact")
        for r in sub:
            if r["method"] == "exact":
                continue
            err = max(r["rel_fro"], 1e-16)
            ax.scatter(r["time_ms"], err, s=25)
            ax.annotate(
                r["method"],
                (r["time_ms"], err),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="time [ms]",
            ylabel="relative Frobenius error",
            title=f"{name}: error vs time",
        )
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"pareto_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _skipped_check(ds, info, reason: str) -> dict:
    nan = math.nan
    return {
        "dataset": ds.name,
        "method": info.name,
        "what": "bound",
        "kind": "skipped",
        "skipped": reason,
        "delta": nan,
        "draws": 0,
        "failures": 0,
        "p_value": nan,
        "ok": True,
        "worst_actual_over_bound": nan,
    }


def run_verify(
    datasets, *, method_names=None, draws=5, seed=0, n_rows=64, level=1e-3, progress=True
) -> tuple[bool, list[dict]]:
    """Check every returned bound (and every certificate) on the data.

    Deterministic bounds must hold on every draw. Probabilistic bounds and certificates
    fail with probability at most their ``delta``: they fail verification when the
    number of failures over ``draws`` draws is significant at ``level`` (one-sided
    binomial test), so a correct bound fails verification with probability < ``level``.
    A method that cannot run on a dataset with its defaults (a ``ValueError``, e.g.
    ``loki`` with ``causal=True`` and no calibration keys) is skipped with the reason,
    as :func:`run_report` does.
    """
    from attention.bounds import certify
    from attention.exact import softmax_attention

    checks = []
    for ds in datasets:
        Y = np.asarray(
            softmax_attention(ds.Q, ds.K, ds.V, scale=ds.scale, causal=ds.causal), dtype=np.float64
        )
        for info in _progress(
            [m for m in _selected(method_names) if m.name != "exact"], progress, ds.name
        ):
            if ds.causal and not info.causal:
                continue
            kw = _method_kwargs(ds, info)
            fails = {"bound": 0, "certificate": 0}
            kinds = {}
            worst = {"bound": 0.0, "certificate": 0.0}
            for r in range(draws):
                try:
                    approx = approximate(ds.Q, ds.K, ds.V, info.name, rng=seed + r, **kw)
                except ValueError as exc:  # cannot run on these data (as report skips)
                    checks.append(_skipped_check(ds, info, str(exc).split(";")[0]))
                    break
                if approx.bound is not None:
                    b = approx.bound
                    actual = _abs_error(approx.output, Y, b.norm)
                    kinds["bound"] = (b.kind, b.delta)
                    fails["bound"] += actual > b.value * (1 + 1e-9)
                    worst["bound"] = max(worst["bound"], actual / b.value if b.value else 0)
                cert = certify(
                    approx,
                    ds.Q,
                    ds.K,
                    ds.V,
                    n_rows=n_rows,
                    rng=seed + 1000 + r,
                    **_data_kwargs(ds),
                )
                kinds["certificate"] = ("probabilistic", cert.delta)
                rel = relative_error(approx.output, Y)
                fails["certificate"] += rel > cert.relative_fro
                worst["certificate"] = max(
                    worst["certificate"], rel / cert.relative_fro if cert.relative_fro else 0
                )
            for what, (kind, delta) in kinds.items():
                f = int(fails[what])
                if kind == "deterministic":
                    ok, p = f == 0, float(f == 0)
                elif kind == "probabilistic":
                    p = float(stats.binom.sf(f - 1, draws, delta)) if f else 1.0
                    ok = p >= level
                else:  # estimates carry no guarantee: reported, never failed
                    ok, p = True, math.nan
                checks.append(
                    {
                        "dataset": ds.name,
                        "method": info.name,
                        "what": what,
                        "kind": kind,
                        "delta": delta,
                        "draws": draws,
                        "failures": f,
                        "p_value": p,
                        "ok": bool(ok),
                        "worst_actual_over_bound": worst[what],
                    }
                )
    return all(c["ok"] for c in checks), checks


def run_spectra(datasets, *, out_dir: Path, block: int = 128, max_heads: int = 4) -> list[Path]:
    """Draw the survey's Figures 5, 7 and 8 on real data (PNG files in ``out_dir``).

    Figure 5: sparsity pattern of the top-left ``block x block`` block of ``Z^{-1} A``;
    Figures 7-8: singular values of ``Q``, ``K``, ``V``, ``Q K^T``, ``A`` and ``Z^{-1} A``
    per head (``A`` is stabilised by its largest entry, which only rescales it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        heads = range(min(max_heads, ds.Q.shape[0]))
        P_blocks, svals = [], []
        for h in heads:
            q, k, v = (np.asarray(X[h], dtype=np.float64) for X in (ds.Q, ds.K, ds.V))
            S = q @ k.T * ds.scale
            if ds.causal:
                S = np.where(np.tri(*S.shape, S.shape[1] - S.shape[0], dtype=bool), S, -np.inf)
            A = np.exp(S - S.max())
            P = np.exp(S - S.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            P_blocks.append(P[:block, :block])
            svals.append(
                {
                    name: np.linalg.svd(M, compute_uv=False)
                    for name, M in (
                        ("Q", q),
                        ("K", k),
                        ("V", v),
                        ("QKᵀ", q @ k.T),
                        ("A", A),
                        ("Z⁻¹A", P),
                    )
                }
            )
        fig, axes = plt.subplots(
            1, len(P_blocks), figsize=(3.2 * len(P_blocks), 3.2), squeeze=False
        )
        for ax, P, h in zip(axes[0], P_blocks, heads, strict=True):
            ax.imshow(np.log10(np.maximum(P, 1e-12)), cmap="magma", vmin=-6, vmax=0)
            ax.set_title(f"{ds.label(h)}: log10 Z⁻¹A", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(
            f"{ds.name}: top-left {block}×{block} block of Z⁻¹A (survey Fig. 5)", fontsize=9
        )
        path = out_dir / f"sparsity_{ds.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
        fig, axes = plt.subplots(1, len(svals), figsize=(3.4 * len(svals), 3.2), squeeze=False)
        for ax, sv, h in zip(axes[0], svals, heads, strict=True):
            for name, s in sv.items():
                ax.semilogy(s / s[0], label=name, lw=1)
            ax.set(title=ds.label(h), xlabel="index", ylim=(1e-12, 2))
            ax.legend(fontsize=6)
        fig.suptitle(f"{ds.name}: normalised singular values (survey Figs. 7-8)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"singular_values_{ds.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
