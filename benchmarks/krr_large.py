r"""Kernel ridge regression at 50,000 points with the kernel matrix never formed.

:math:`(K + \mu I)\alpha = y` for the Gaussian :class:`rnla.operators.KernelMatrix` on
``n = 50000`` points uniform in the unit cube of R^3 (bandwidth 0.2, :math:`\mu = 10^{-3}`,
``y = sin(4 x_1) + noise``, tolerance ``1e-8`` on the true relative residual; the setting
of :mod:`benchmarks.krr`). ``K`` has 2.5e9 entries (20 GB in float64): every product
recomputes them (the fused Gaussian product of ``KernelMatrix.as_linear_operator``).

* ``rnla nystrom_pcg`` with the RPCholesky preconditioner (reads ``l`` rows of ``K``);
* plain CG (``preconditioner="none"``, same code path and stopping rule), capped at
  ``--cg-iters`` iterations (default 60): when it stops unconverged, its iteration count
  is a lower bound and its time a lower bound on the time to converge.

One timed call each (after compiling the kernels on a small problem): a plain CG
iteration costs about one product with ``K``. Also timed: one product with the fused
kernel and with the blocked Gram-BLAS path on a 10,000-point sub-problem (entries per
second, the cost model of both).

Run ``python -m benchmarks.krr_large [--n N] [--cg-iters I]``; writes
``results/krr_large.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

from benchmarks.harness import RESULTS_DIR, machine_info
from rnla import ConvergenceWarning, nystrom_pcg
from rnla.operators import KernelMatrix

MU = 1e-3
TOL = 1e-8


def points(rng, n):
    X = rng.uniform(size=(n, 3))
    y = np.sin(4 * X[:, 0]) + 0.1 * rng.standard_normal(n)
    return X, y


def product_rates(rng, n=10_000):
    """Seconds per entry of one K v with the fused kernel and with the blocked path."""
    X, _ = points(rng, n)
    K = KernelMatrix(X, kernel="gaussian", bandwidth=0.2)
    op = K.as_linear_operator()
    v = rng.standard_normal(n)
    op @ v
    t0 = time.perf_counter()
    fused = op @ v
    t_fused = time.perf_counter() - t0
    blocked_op = K.as_linear_operator()
    blocked_op._fused = lambda V, transpose: None  # force the blocked Gram-BLAS path
    t0 = time.perf_counter()
    blocked = blocked_op @ v
    t_blocked = time.perf_counter() - t0
    diff = float(np.linalg.norm(fused - blocked) / np.linalg.norm(blocked))
    return {
        "n": n,
        "fused_ns_per_entry": 1e9 * t_fused / n**2,
        "blocked_ns_per_entry": 1e9 * t_blocked / n**2,
        "fused_vs_blocked_rel_diff": diff,
    }


def run(n: int, cg_iters: int) -> dict:
    rng = np.random.default_rng(20260103)
    load_before = os.getloadavg()
    rates = product_rates(rng)
    Xs, ys = points(rng, 500)  # compile everything on a small problem
    nystrom_pcg(KernelMatrix(Xs, bandwidth=0.2), ys, mu=MU, tol=TOL, preconditioner="rpcholesky")
    X, y = points(rng, n)
    rows = {}
    for label, pc, maxiter in (
        ("RPCholesky PCG", "rpcholesky", None),
        (f"plain CG ({cg_iters} its max)", "none", cg_iters),
    ):
        K = KernelMatrix(X, kernel="gaussian", bandwidth=0.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            out = nystrom_pcg(K, y, mu=MU, tol=TOL, preconditioner=pc, maxiter=maxiter, rng=0)
            seconds = time.perf_counter() - t0
        rows[label] = {
            "seconds": seconds,
            "iterations": int(out.iterations),
            "rank": int(out.rank),
            "n_matvecs": int(out.n_matvecs),
            "relative_residual": float(out.tol),
            "converged": bool(out.tol <= TOL),
            "kernel_entries_evaluated": int(K.n_evaluations),
        }
    return {
        "name": "krr_large",
        "n": n,
        "mu": MU,
        "tol": TOL,
        "product_rates": rates,
        "rows": rows,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "machine": machine_info(),
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"KRR, Gaussian KernelMatrix never formed, n={res['n']}, mu={res['mu']:g}, "
        f"tol={res['tol']:g}",
        "",
        "| method | time [s] | iterations | preconditioner rank | relative residual | converged |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in res["rows"].items():
        lines.append(
            f"| {label} | {r['seconds']:.1f} | {r['iterations']} | {r['rank']} | "
            f"{r['relative_residual']:.3g} | {r['converged']} |"
        )
    pr = res["product_rates"]
    lb, la = res["load_before"], res["load_after"]
    lines += [
        "",
        f"One product K v at n={pr['n']}: fused kernel {pr['fused_ns_per_entry']:.2f} ns "
        f"per entry, blocked Gram-BLAS path {pr['blocked_ns_per_entry']:.2f} ns per entry "
        f"(relative difference {pr['fused_vs_blocked_rel_diff']:.2g}).",
        f"Load average {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} after; one timed call each.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--cg-iters", type=int, default=60)
    args = parser.parse_args()
    res = run(args.n, args.cg_iters)
    md = to_markdown(res)
    if args.n == 50_000:
        (RESULTS_DIR / "krr_large.json").write_text(json.dumps(res, indent=1, default=str))
        (RESULTS_DIR / "krr_large.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
