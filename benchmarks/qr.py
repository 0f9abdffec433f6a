r"""Randomized QR (``rnla.qr``) against LAPACK through NumPy and SciPy.

* ``cholqr_sketch`` on a ``10^6 x 100`` matrix with :math:`\kappa(A) = 10^{12}`
  (log-spaced singular values, random singular vectors) against ``numpy.linalg.qr``
  (Householder ``geqrf`` + ``orgqr``, reduced mode: both return ``Q`` and ``R``).
  Accuracy: orthogonality :math:`\|Q^TQ - I\|_2`; the residual
  :math:`\|QR - A\|_F/\|A\|_F` is stored in the parameters.
* ``qrcp`` on a ``4000 x 4000`` matrix with a graded spectrum (singular values
  log-spaced over 10 decades) against ``scipy.linalg.qr(pivoting=True,
  mode="economic")`` (LAPACK ``geqp3`` + ``orgqr``). Accuracy: the worst ratio
  :math:`\max_i \max(r_i, 1/r_i)` with :math:`r_i = |R_{ii}|/|R^{\mathrm{geqp3}}_{ii}|`
  (rank-revealing quality relative to LAPACK's greedy pivoting); the median ratio
  and the factorisation residual are stored in the parameters. Unpivoted
  ``scipy.linalg.qr`` (``geqrf`` + ``orgqr``) is timed alongside: the price of
  pivoting in LAPACK on this machine.

``--quick`` divides the sizes by 10 (rows) / 10 (square).
Run ``python -m benchmarks.qr [--quick] [--repeats R]``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from benchmarks.harness import Task, main
from rnla.qr import cholqr_sketch, qrcp

NAME = "qr"


def graded(rng, m, n, decades):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * np.logspace(0, -decades, n)) @ V.T


def cholqr_task(rng, m, n) -> Task:
    A = graded(rng, m, n, 12)
    seeds = iter(range(10**6))
    extra = {}

    def accuracy(name, out):
        Q, R = out[0], out[1]
        orth = float(np.linalg.norm(Q.T @ Q - np.eye(n), 2))
        extra[name] = {
            "orthogonality": orth,
            "residual": float(np.linalg.norm(Q @ R - A) / np.linalg.norm(A)),
        }
        return orth

    return Task(
        name=f"thin QR {m}x{n}, kappa=1e12",
        impls={
            "numpy.linalg.qr": lambda: np.linalg.qr(A),
            "rnla cholqr_sketch": lambda: cholqr_sketch(A, rng=next(seeds)),
        },
        baseline="numpy.linalg.qr",
        accuracy=accuracy,
        accuracy_label="||Q^T Q - I||_2",
        goal=2.0,
        goal_text=">= 2x (<= 0.5x time)",
        goal_for=["rnla cholqr_sketch"],
        params={"m": m, "n": n, "kappa": 1e12, "details": extra},
    )


def qrcp_task(rng, n) -> Task:
    A = graded(rng, n, n, 10)
    R_ref = sla.qr(A, pivoting=True, mode="r")[0]
    d_ref = np.abs(np.diag(R_ref))
    seeds = iter(range(10**6))
    extra = {}

    def unpivoted():
        Q, R = sla.qr(A, mode="economic")
        return Q, R, np.arange(n)

    def accuracy(name, out):
        if isinstance(out, tuple) and len(out) == 3:  # scipy: Q, R, P
            Q, R, piv = out
        else:
            Q, R, piv = out.Q, out.R, out.pivots
        ratio = np.abs(np.diag(R)) / d_ref
        worst = float(np.max(np.maximum(ratio, 1 / ratio)))
        extra[name] = {
            "worst_diag_ratio": worst,
            "median_diag_ratio": float(np.median(ratio)),
            "residual": float(np.linalg.norm(Q @ R - A[:, piv]) / np.linalg.norm(A)),
        }
        return worst

    return Task(
        name=f"QRCP {n}x{n}, singular values 1..1e-10",
        impls={
            "scipy qr(pivoting=True)": lambda: sla.qr(A, pivoting=True, mode="economic"),
            "scipy qr (no pivoting; geqrf+orgqr)": lambda: unpivoted(),
            "rnla qrcp": lambda: qrcp(A, rng=next(seeds)),
            "rnla qrcp selection='qrcp'": lambda: qrcp(A, selection="qrcp", rng=next(seeds)),
        },
        baseline="scipy qr(pivoting=True)",
        accuracy=accuracy,
        accuracy_label="max |R_ii| ratio to geqp3",
        goal=3.0,
        goal_text=">= 3x (<= 0.33x time)",
        goal_for=["rnla qrcp", "rnla qrcp selection='qrcp'"],
        params={"n": n, "details": extra},
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20260102)
    if quick:
        return [cholqr_task(rng, 100_000, 100), qrcp_task(rng, 400)]
    return [cholqr_task(rng, 1_000_000, 100), qrcp_task(rng, 4000)]


def summarize(result: dict) -> str:
    lines = [""]
    for task in result["tasks"]:
        lines.append(task["name"])
        for impl, d in task["params"]["details"].items():
            lines.append(f"  {impl:28s} {d}")
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    print(summarize(out))
