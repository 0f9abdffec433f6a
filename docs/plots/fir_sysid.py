"""Figures of the FIR system identification page (docs/user_guide/system_identification.rst).

Writes ``docs/_static/fir_objective.png`` (likelihood vs lambda: exact, augmented Krylov
with its bounds, and the plain-Lanczos + SLQ baseline with the same number of products;
impulse responses) and ``docs/_static/fir_convergence.png`` (error vs products).
Run from the repository root::

    .venv/bin/python docs/plots/fir_sysid.py
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

import fir_sysid as ex  # noqa: E402

from rnla.augmented import (  # noqa: E402
    AugmentedKrylov,
    fir_likelihood_qr,
    fir_operator,
    lanczos_datafit,
    slq_logdet,
)

STATIC = ROOT / "docs" / "_static"


def objective_figure(u, Phi, g0, y, sigma, rows):
    lams = ex.LAMBDAS * np.var(y)
    best = min(rows, key=lambda r: r["nll_aug"])
    K = best["K"]
    A = fir_operator(u, K)
    exact = fir_likelihood_qr(Phi, K, y, lams)
    ak = AugmentedKrylov(A, y, k=ex.K_STEPS, n_probes=ex.N_PROBES, rng=0)
    nll = ak.neg_log_likelihood(lams)
    b = ak.bounds(lams)
    # baseline with the same products: k steps of Lanczos on y + SLQ, n_probes x k steps
    plain = lanczos_datafit(A, y, lams, k=ex.K_STEPS, rule="radau", rng=0).value
    slq = slq_logdet(A, lams, k=ex.K_STEPS, n_probes=ex.N_PROBES, rng=0).value
    base = ex.N * np.log(plain) + slq
    ref = exact.neg_log_likelihood.min()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    x = lams / sigma**2
    ax.fill_between(
        x, b.nll_lower - ref, b.nll_upper - ref, color="C0", alpha=0.2, label="augmented bounds"
    )
    ax.plot(x, exact.neg_log_likelihood - ref, "k-", lw=2, label="exact (Chen-Ljung QR)")
    ax.plot(x, nll - ref, "C0--", lw=2, label=f"augmented Krylov ({ak.n_matvecs} products)")
    ax.plot(x, base - ref, "C3:", lw=2, label="Lanczos on y (Radau) + SLQ (same products)")
    x_star = x[np.argmin(exact.neg_log_likelihood)]
    ax.axvline(x_star, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(x_star / 300, x_star * 300)
    ax.set_ylim(-20, 400)
    ax.set_xlabel(r"$\lambda / \sigma^2$")
    ax.set_ylabel(r"$\ell(\lambda) - \min \ell$")
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    ax.set_title(f"profiled likelihood, {best['kernel']} kernel ({params})")
    ax.legend(fontsize=8)

    ax = axes[1]
    t = np.arange(1, ex.N_TAPS + 1)
    ax.plot(t, g0, "k-", lw=2.5, label="true")
    for i, name in enumerate(ex.GRID):
        r = min((r for r in rows if r["kernel"] == name), key=lambda r: r["nll_aug"])
        g_hat = ex.estimate(Phi, r["K"], y, r["lam_aug"])
        ax.plot(t, g_hat, f"C{i}--", lw=1.5, label=f"{name}: fit {ex.fit_percent(g_hat, g0):.1f}%")
    ax.set_xlabel("lag")
    ax.set_title("impulse response (hyperparameters by augmented Krylov)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(STATIC / "fir_objective.png", dpi=120)
    plt.close(fig)
    return best


def convergence_figure(u, Phi, y, best, sigma):
    K = best["K"]
    A = fir_operator(u, K)
    lam = np.array([sigma**2])
    exact = fir_likelihood_qr(Phi, K, y, lam)
    p = 1 + ex.N_PROBES
    rows = []
    for k in range(1, 15):
        if k * p > ex.N:
            break
        ak = AugmentedKrylov(A, y, k=k, n_probes=ex.N_PROBES, rng=1)
        mv = k * p
        plain_same_k = lanczos_datafit(A, y, lam, k=k, rng=1).value[0]
        plain_same_mv = lanczos_datafit(A, y, lam, k=mv, rng=1).value[0]
        slq = slq_logdet(A, lam, k=k, n_probes=ex.N_PROBES, rng=1).value[0]
        rows.append(
            (
                mv,
                1 - ak.datafit(lam)[0] / exact.datafit[0],
                1 - plain_same_k / exact.datafit[0],
                1 - plain_same_mv / exact.datafit[0],
                abs(ak.logdet(lam)[0] - exact.logdet[0]),
                abs(slq - exact.logdet[0]),
            )
        )
    r = np.array(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.semilogy(r[:, 0], np.maximum(r[:, 1], 1e-16), "C0o-", label="augmented, k block steps")
    ax.semilogy(
        r[:, 0], np.maximum(r[:, 2], 1e-16), "C3s:", label="Lanczos on y, k steps (k products)"
    )
    ax.semilogy(r[:, 0], np.maximum(r[:, 3], 1e-16), "C2^--", label="Lanczos on y, same products")
    ax.set_xlabel(f"products with A (block size 1 + n_probes = {p})")
    ax.set_ylabel("relative error of the data fit (Gauss)")
    ax.set_title(r"data fit at $\lambda = \sigma^2$")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.semilogy(r[:, 0], np.maximum(r[:, 4], 1e-12), "C0o-", label="augmented (deflated, Radau)")
    ax.semilogy(r[:, 0], np.maximum(r[:, 5], 1e-12), "C3s:", label="SLQ (Gauss), same products")
    ax.set_xlabel("products with A")
    ax.set_ylabel("absolute error of log det")
    ax.set_title(r"log-determinant at $\lambda = \sigma^2$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(STATIC / "fir_convergence.png", dpi=120)
    plt.close(fig)
    return r


def main():
    u, Phi, g0, y, sigma = ex.simulate(0)
    rows = ex.select(u, Phi, y)
    best = objective_figure(u, Phi, g0, y, sigma, rows)
    r = convergence_figure(u, Phi, y, best, sigma)
    np.set_printoptions(precision=3)
    print("products, datafit err aug / plain same k / plain same products, logdet err aug / SLQ")
    print(r)


if __name__ == "__main__":
    main()
