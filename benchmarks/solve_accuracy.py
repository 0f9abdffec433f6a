"""Accuracy and iteration counts of rnla.solve / rnla.qr at the full benchmark sizes.

No timings (so it can run while the machine is busy): forward errors of ``rnla.lstsq``
and LAPACK ``gelsd`` on the dense ``200000 x 500`` problems of ``benchmarks.lstsq``,
iteration counts against unpreconditioned LSQR on the sparse ``10^6 x 10^3`` problem,
orthogonality of ``cholqr_sketch`` on ``10^6 x 100`` at kappa 1e12, and the ``|R_ii|``
ratios of ``qrcp`` to ``geqp3`` on ``4000 x 4000``. Writes
``benchmarks/results/solve_accuracy.json``.

Run ``python -m benchmarks.solve_accuracy``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import scipy.linalg as sla
from scipy.sparse.linalg import lsqr

from benchmarks.harness import RESULTS_DIR, machine_info
from benchmarks.lstsq import conditioned, sparse_problem
from benchmarks.qr import graded
from rnla import cholqr_sketch, lstsq, qrcp

OUT = RESULTS_DIR / "solve_accuracy.json"


def main() -> dict:
    out: dict = {"machine": machine_info()}

    def save():
        OUT.write_text(json.dumps(out, indent=1))

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(20260101)
    for kappa in (1e1, 1e10):
        A, b, xs = conditioned(rng, 200_000, 500, kappa)
        r = lstsq(A, b, tol=1e-12, rng=0)
        xg = sla.lstsq(A, b, lapack_driver="gelsd")[0]

        def err(x, xs=xs):
            return float(np.linalg.norm(x - xs) / np.linalg.norm(xs))

        out[f"dense 200000x500 kappa={kappa:g}"] = {
            "iterations": int(r.iterations),
            "forward_error": err(r.x),
            "error_estimate": float(r.error_estimate),
            "gelsd_forward_error": err(xg),
            "rel_diff_to_gelsd": float(np.linalg.norm(r.x - xg) / np.linalg.norm(xg)),
        }
        save()
        del A
    A, b = sparse_problem(rng, 1_000_000, 1000, 1e-3, 1e6)
    r = lstsq(A, b, tol=1e-10, solver="lsqr", rng=0)
    r2 = lstsq(A, b, tol=1e-10, rng=0)
    o = lsqr(A, b, atol=1e-10, btol=1e-10, conlim=1e16, iter_lim=5000)
    fro = float(np.sqrt((A.data**2).sum()))

    def grad(x):
        res = b - A @ x
        return float(np.linalg.norm(A.T @ res) / (fro * np.linalg.norm(res)))

    out["sparse 1e6x1e3 kappa~1e6"] = {
        "rnla_lsqr_iterations": int(r.iterations),
        "rnla_momentum_iterations": int(r2.iterations),
        "plain_lsqr_iterations": int(o[2]),
        "plain_lsqr_istop": int(o[1]),
        "relative_gradient_rnla_lsqr": grad(r.x),
        "relative_gradient_rnla_momentum": grad(r2.x),
        "relative_gradient_plain": grad(o[0]),
    }
    save()
    del A
    A = graded(np.random.default_rng(20260102), 1_000_000, 100, 12)
    Q, R, _ = cholqr_sketch(A, rng=0)
    out["cholqr_sketch 1e6x100 kappa=1e12"] = {
        "orthogonality": float(np.linalg.norm(Q.T @ Q - np.eye(100), 2)),
        "residual": float(np.linalg.norm(Q @ R - A) / np.linalg.norm(A)),
    }
    save()
    del A, Q
    A = graded(np.random.default_rng(20260103), 4000, 4000, 10)
    res = qrcp(A, rng=0)
    R_ref = sla.qr(A, pivoting=True, mode="r")[0]
    ratio = np.abs(np.diag(res.R)) / np.abs(np.diag(R_ref))
    out["qrcp 4000x4000"] = {
        "worst_diag_ratio": float(np.max(np.maximum(ratio, 1 / ratio))),
        "median_diag_ratio": float(np.median(ratio)),
        "residual": float(np.linalg.norm(res.Q @ res.R - A[:, res.pivots]) / np.linalg.norm(A)),
    }
    save()
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
