"""Phase-transition figure of the CSBM page (docs/user_guide/csbm.rst).

Writes ``docs/_static/csbm_phase.png``: for the semi-supervised spectral estimator of
``examples/csbm_spectral.py``, the probability that every test node is classified
correctly and the mean fraction of misclassified test nodes, against the exponent
I(a, b, c) = (sqrt a - sqrt b)^2 / 2 + c / 2, for several graph sizes. Run from the
repository root::

    .venv/bin/python docs/plots/csbm_phase.py
"""

from __future__ import annotations

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import csbm_spectral as ex  # noqa: E402

OUT = ROOT / "docs" / "_static" / "csbm_phase.png"
SIZES = (1000, 4000, 16000)
SIGNALS = np.round(np.arange(0.2, 1.61, 0.1), 2)
SEEDS = 12


def run() -> dict:
    """Mean test error and exact-recovery rate per (n, I): {n: array (len(SIGNALS), 2)}."""
    results = {}
    for n in SIZES:
        rows = []
        for signal in SIGNALS:
            out = [ex.trial(n, float(signal), 1000 * n + seed) for seed in range(SEEDS)]
            rows.append((np.mean([o[0] for o in out]), np.mean([o[1] for o in out])))
        results[n] = np.array(rows)
        print(n, results[n].round(6).tolist(), flush=True)
    return results


def plot(results: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, n in enumerate(SIZES):
        r = results[n]
        axes[0].plot(SIGNALS, r[:, 1], f"C{i}o-", label=f"n = {n}")
        axes[1].semilogy(SIGNALS, np.maximum(r[:, 0], 1e-7), f"C{i}o-", label=f"n = {n}")
        axes[1].semilogy(SIGNALS, float(n) ** (-SIGNALS), f"C{i}:", lw=1)
    for ax in axes:
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel(r"$I(a,b,c) = (\sqrt{a} - \sqrt{b})^2/2 + c/2$")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("P(all test nodes correct)")
    axes[0].set_title(f"exact recovery, {SEEDS} graphs per point")
    axes[1].set_ylabel("misclassified fraction of test nodes")
    axes[1].set_ylim(1e-6, 1e-1)
    axes[1].set_title(r"mean error (dotted: $n^{-I}$)")
    fig.suptitle(
        f"CSBM, b = {ex.B_GRAPH}, d = {ex.D_FEATURES}, {ex.RHO:.0%} labels revealed; "
        "signal split evenly between graph and features",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    plot(run())
