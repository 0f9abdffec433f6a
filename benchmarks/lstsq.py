r"""Sketch-and-precondition least squares (``rnla.lstsq``) against LAPACK and plain LSQR.

Tasks (``--quick``: sizes divided by 20):

* dense ``200000 x 500``, well conditioned (:math:`\kappa = 10`) and ill conditioned
  (:math:`\kappa = 10^{10}`, singular values log-spaced, random singular vectors),
  ``b = A x + r`` with a residual :math:`r \perp \operatorname{range}(A)` of relative
  size ``1e-10``, so that :math:`x_\star = x` exactly and forward errors can be measured;
  ``rnla.lstsq`` (sparse sign sketch of ``8n + 16`` rows, SVD preconditioner, iterative
  sketching with momentum, ``tol=1e-12``) against ``scipy.linalg.lstsq`` with the
  ``gelsd`` driver (SVD, the accuracy reference and the fastest driver on the 2-core
  reference machine: the baseline) and ``gelsy`` (QR with column pivoting).
  Accuracy: relative forward error :math:`\|x - x_\star\|/\|x_\star\|`; the
  relative difference to ``gelsd`` and the iteration counts are stored in the task
  parameters.
* sparse ``10^6 x 10^3`` (density ``1e-3`` plus a diagonal so the matrix has full rank,
  columns scaled to :math:`\kappa \approx 10^6`): ``rnla.lstsq`` (sparse sign sketch)
  against unpreconditioned ``scipy.sparse.linalg.lsqr`` with the same ``atol = btol``,
  capped at 5000 iterations (a lower bound on its count when it does not converge).
  Accuracy: relative gradient :math:`\|A^Tr\|/(\|A\|_F\|r\|)`.

Run ``python -m benchmarks.lstsq [--quick] [--repeats R]``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from benchmarks.harness import Task, main
from rnla import lstsq

NAME = "lstsq"


def conditioned(rng, m, n, kappa):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.logspace(0, -np.log10(kappa), n)
    A = (U * s) @ V.T
    x = rng.standard_normal(n)
    g = rng.standard_normal(m)
    r = g - U @ (U.T @ g)
    b = A @ x
    b += 1e-10 * np.linalg.norm(b) * r / np.linalg.norm(r)
    del U
    return A, b, x


def dense_task(rng, m, n, kappa) -> Task:
    A, b, x_star = conditioned(rng, m, n, kappa)
    ref = sla.lstsq(A, b, lapack_driver="gelsd")[0]
    seeds = iter(range(10**6))
    impls = {
        "scipy lstsq gelsy": lambda: sla.lstsq(A, b, lapack_driver="gelsy")[0],
        "scipy lstsq gelsd": lambda: sla.lstsq(A, b, lapack_driver="gelsd")[0],
        "rnla lstsq": lambda: lstsq(A, b, tol=1e-12, rng=next(seeds)),
    }
    extra = {}

    def accuracy(name, out):
        x = out.x if hasattr(out, "x") else out
        err = float(np.linalg.norm(x - x_star) / np.linalg.norm(x_star))
        extra[name] = {
            "forward_error": err,
            "rel_diff_to_gelsd": float(np.linalg.norm(x - ref) / np.linalg.norm(ref)),
        }
        if hasattr(out, "x"):
            extra[name].update(
                iterations=int(out.iterations),
                error_estimate=float(out.error_estimate),
                tol_reached=float(out.tol),
            )
        return err

    return Task(
        name=f"dense {m}x{n}, kappa={kappa:.0e}",
        impls=impls,
        baseline="scipy lstsq gelsd",
        accuracy=accuracy,
        accuracy_label="forward error",
        goal=3.0,
        goal_text=">= 3x (<= 0.33x time)",
        goal_for=["rnla lstsq"],
        params={
            "m": m,
            "n": n,
            "kappa": kappa,
            "unit_roundoff_times_kappa": kappa * 1.1e-16,
            "details": extra,
        },
    )


def sparse_problem(rng, m, n, density, kappa):
    A = sp.random(m, n, density=density, format="csr", random_state=rng)
    A = A + sp.eye(m, n, format="csr")
    A = (A @ sp.diags(np.logspace(0, -np.log10(kappa), n))).tocsr()
    b = rng.standard_normal(m)
    return A, b


def sparse_task(rng, m, n, density, kappa) -> Task:
    A, b = sparse_problem(rng, m, n, density, kappa)
    fro = float(sp.linalg.norm(A))
    seeds = iter(range(10**6))
    extra = {}
    tol = 1e-10

    def plain():
        return lsqr(A, b, atol=tol, btol=tol, conlim=1e16, iter_lim=5000)

    impls = {
        "scipy lsqr (no preconditioner)": plain,
        "rnla lstsq (sparse sign)": lambda: lstsq(A, b, tol=tol, solver="lsqr", rng=next(seeds)),
        "rnla lstsq momentum": lambda: lstsq(A, b, tol=tol, rng=next(seeds)),
    }

    def accuracy(name, out):
        ours = hasattr(out, "iterations")  # LstsqResult (a NamedTuple) or lsqr's tuple
        x = out.x if ours else out[0]
        r = b - A @ x
        grad = float(np.linalg.norm(A.T @ r) / (fro * np.linalg.norm(r)))
        its = int(out.iterations) if ours else int(out[2])
        extra[name] = {"iterations": its, "relative_gradient": grad}
        return grad

    return Task(
        name=f"sparse {m}x{n}, density {density:g}, kappa~{kappa:.0e}",
        impls=impls,
        baseline="scipy lsqr (no preconditioner)",
        accuracy=accuracy,
        accuracy_label="||A^T r||/(||A||_F ||r||)",
        goal=1.0,
        goal_text="faster (>= 1x), >= 10x fewer iterations",
        goal_for=["rnla lstsq (sparse sign)"],
        params={"m": m, "n": n, "density": density, "kappa": kappa, "tol": tol, "details": extra},
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20260101)
    f = 20 if quick else 1
    return [
        dense_task(rng, 200_000 // f, 500 // f if quick else 500, 1e1),
        dense_task(rng, 200_000 // f, 500 // f if quick else 500, 1e10),
        sparse_task(rng, 1_000_000 // f, 1000 // f if quick else 1000, 1e-3, 1e6),
    ]


def summarize(result: dict) -> str:
    lines = [""]
    for task in result["tasks"]:
        lines.append(task["name"])
        for impl, d in task["params"]["details"].items():
            lines.append(f"  {impl:34s} {d}")
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    print(summarize(out))
