r"""Kernel ridge regression :math:`(K + \mu I)\alpha = y` by Nyström-preconditioned CG.

Gaussian kernel on ``n`` points uniform in the unit cube of R^3 (bandwidth 0.2,
:math:`\mu = 10^{-3}`, so :math:`\kappa(K + \mu I) \approx 10^6`), right-hand side
``y = sin(4 x_1) + noise``; tolerance ``1e-8`` on the true relative residual.

* ``K`` formed as an ndarray (``n = 4000``; ``--quick``: 1500): ``rnla.nystrom_pcg``
  with the adaptive Nyström and the RPCholesky preconditioners against plain CG
  (``preconditioner="none"``, same code path, same stopping rule);
* ``K`` implicit (:class:`rnla.operators.KernelMatrix`, never formed): the RPCholesky
  preconditioner (which reads ``l`` rows) against plain CG, capped at 300 iterations.

Accuracy: the certified relative residual; iterations, ranks and condition estimates
are stored in the task parameters.

Run ``python -m benchmarks.krr [--quick] [--repeats R]``.
"""

from __future__ import annotations

import warnings

import numpy as np

from benchmarks.harness import Task, main
from rnla import ConvergenceWarning, nystrom_pcg
from rnla.operators import KernelMatrix

NAME = "krr"
MU = 1e-3
TOL = 1e-8


def points(rng, n):
    X = rng.uniform(size=(n, 3))
    y = np.sin(4 * X[:, 0]) + 0.1 * rng.standard_normal(n)
    return X, y


def _task(name, K, y, impls_spec, baseline, maxiter=None) -> Task:
    extra = {}
    seeds = iter(range(10**6))

    def run(pc):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return nystrom_pcg(
                K, y, mu=MU, tol=TOL, preconditioner=pc, maxiter=maxiter, rng=next(seeds)
            )

    impls = {label: (lambda pc=pc: run(pc)) for label, pc in impls_spec.items()}

    def accuracy(label, out):
        extra[label] = {
            "iterations": int(out.iterations),
            "rank": int(out.rank),
            "condition_estimate": float(out.condition_estimate),
            "n_matvecs": int(out.n_matvecs),
            "relative_residual": float(out.tol),
        }
        return float(out.tol)

    return Task(
        name=name,
        impls=impls,
        baseline=baseline,
        accuracy=accuracy,
        accuracy_label="true relative residual",
        goal=1.0,
        goal_text="faster (>= 1x), >= 10x fewer iterations",
        goal_for=[label for label in impls if label != baseline],
        params={"n": K.shape[0], "mu": MU, "tol": TOL, "details": extra},
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20260103)
    n = 1500 if quick else 4000
    X, y = points(rng, n)
    Km = KernelMatrix(X, kernel="gaussian", bandwidth=0.2)
    K = Km.rows(np.arange(n))
    dense = _task(
        f"dense K, n={n}",
        K,
        y,
        {"plain CG": "none", "Nyström PCG": "nystrom", "RPCholesky PCG": "rpcholesky"},
        "plain CG",
        maxiter=20 * n,
    )
    implicit = _task(
        f"KernelMatrix (never formed), n={n}",
        Km,
        y,
        {"plain CG (300 its max)": "none", "RPCholesky PCG": "rpcholesky"},
        "plain CG (300 its max)",
        maxiter=300,
    )
    return [dense, implicit]


def summarize(result: dict) -> str:
    lines = [""]
    for task in result["tasks"]:
        lines.append(task["name"])
        for impl, d in task["params"]["details"].items():
            lines.append(f"  {impl:24s} {d}")
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    print(summarize(out))
