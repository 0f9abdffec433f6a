r"""Dense ``200000 x 500`` least squares: ``rnla.lstsq`` against ``scipy.linalg.lstsq`` (gelsd).

Side by side in one process, interleaved repeats (ours, gelsd, ours, gelsd, ...), for
:math:`\kappa = 10` and :math:`\kappa = 10^{10}` (the problems of
:mod:`benchmarks.lstsq`). Per repeat it reports the time of each phase of
``rnla.lstsq`` (validation, sketch, preconditioner, iterations, diagnostics) and the
measured read rate of one pass over ``A`` (``A @ v``), from which the bandwidth floor
``passes x (one pass)`` is computed. ``--quick`` divides ``m`` by 20. Writes
``benchmarks/results/lstsq_dense.json`` and prints a summary.

Run ``python -m benchmarks.lstsq_dense [--quick] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg as sla

import rnla.solve as solve
from benchmarks.lstsq import conditioned

PHASES = (
    "_product_operator",
    "_apply_sketch",
    "_sketch_preconditioner",
    "_momentum",
    "_lstsq_diagnostics",
)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:  # pragma: no cover - no uptime binary
        return "unknown"


def _timed_phases(phases: dict):
    """Wrap the phase functions of :mod:`rnla.solve` so that their times add to ``phases``."""
    originals = {}
    for name in PHASES:
        fn = getattr(solve, name)
        originals[name] = fn

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            t = time.perf_counter()
            out = _fn(*args, **kwargs)
            phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - t
            return out

        setattr(solve, name, functools.wraps(fn)(wrapper))
    return originals


def run_case(rng, m, n, kappa, repeats):
    A, b, x_star = conditioned(rng, m, n, kappa)
    warnings.simplefilter("ignore")  # AccuracyWarning at the rounding floor (kappa 1e10)
    solve.lstsq(A[: 20 * n], b[: 20 * n], rng=0)  # compile
    v = np.ones(n)
    phases: dict = {}
    originals = _timed_phases(phases)
    rows = []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            A @ v
            read = time.perf_counter() - t
            phases.clear()
            t = time.perf_counter()
            res = solve.lstsq(A, b, tol=1e-12, rng=1)
            ours = time.perf_counter() - t
            split = dict(phases)
            t = time.perf_counter()
            ref = sla.lstsq(A, b, lapack_driver="gelsd")[0]
            theirs = time.perf_counter() - t
            rows.append({"ours": ours, "gelsd": theirs, "read": read, "phases": split})
    finally:
        for name, fn in originals.items():
            setattr(solve, name, fn)
    ours = np.median([r["ours"] for r in rows])
    theirs = np.median([r["gelsd"] for r in rows])
    read = np.median([r["read"] for r in rows])
    return {
        "m": m,
        "n": n,
        "kappa": kappa,
        "iterations": int(res.iterations),
        "n_passes": int(res.n_passes),
        "forward_error": float(np.linalg.norm(res.x - x_star) / np.linalg.norm(x_star)),
        "gelsd_forward_error": float(np.linalg.norm(ref - x_star) / np.linalg.norm(x_star)),
        "rel_diff_to_gelsd": float(np.linalg.norm(res.x - ref) / np.linalg.norm(ref)),
        "error_estimate": float(res.error_estimate),
        "median_ours_s": float(ours),
        "median_gelsd_s": float(theirs),
        "median_ratio": float(np.median([r["ours"] / r["gelsd"] for r in rows])),
        "one_pass_s": float(read),
        "read_rate_GBs": float(A.nbytes / read / 1e9),
        "pass_floor_s": float(res.n_passes * read),
        "pass_floor_ratio": float(res.n_passes * read / theirs),
        "repeats": rows,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="m / 20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    m = 200_000 // (20 if args.quick else 1)
    rng = np.random.default_rng(20260101)
    out = {"uptime_before": _uptime(), "cases": []}
    for kappa in (1e1, 1e10):
        case = run_case(rng, m, 500, kappa, args.repeats)
        out["cases"].append(case)
        print(
            f"kappa={kappa:.0e}: ours {case['median_ours_s']:.3f} s, gelsd "
            f"{case['median_gelsd_s']:.3f} s, ratio {case['median_ratio']:.3f}; "
            f"{case['iterations']} iterations, {case['n_passes']} passes; one pass "
            f"{case['one_pass_s'] * 1e3:.1f} ms ({case['read_rate_GBs']:.1f} GB/s), floor "
            f"{case['pass_floor_ratio']:.3f}x gelsd; forward error "
            f"{case['forward_error']:.2e} (gelsd {case['gelsd_forward_error']:.2e}), "
            f"vs gelsd {case['rel_diff_to_gelsd']:.2e}",
            flush=True,
        )
        for r in case["repeats"]:
            print("   ", {k: round(t, 3) for k, t in r["phases"].items()})
    out["uptime_after"] = _uptime()
    print("load:", out["uptime_before"], "->", out["uptime_after"])
    name = "lstsq_dense_quick.json" if args.quick else "lstsq_dense.json"
    Path(args.out, name).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
