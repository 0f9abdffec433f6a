"""Command line: ``python -m attention report | verify | spectra``.

``report``
    Run every registered method on the shipped real sample (or ``--input FILE.npz``, or
    ``--synthetic --n N``): relative error, bound and whether it held, sampled-row
    certificate, time and speed-up over exact attention; writes ``report.md``,
    ``report.json`` and Pareto plots of error vs time to ``--out``.
``verify``
    Check every returned bound and certificate on the data over several draws; exits
    with status 1 if one fails (deterministic: any failure; probabilistic: a failure
    count significant at ``--level`` under its stated ``delta``).
``spectra``
    The survey's Figures 5, 7 and 8 on the data: sparsity pattern of ``Z^{-1} A`` and
    singular values of ``Q``, ``K``, ``V``, ``Q K^T``, ``A``, ``Z^{-1} A`` (PNG).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_data_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        default="all",
        help="shipped sample name (see attention.data.available_samples()) or 'all' (default)",
    )
    src.add_argument("--input", metavar="FILE.npz", help="Q/K/V file (attention.data format)")
    src.add_argument("--synthetic", action="store_true", help="synthetic clustered heads")
    p.add_argument("--n", type=int, default=1024, help="sequence length for --synthetic")
    p.add_argument("--seed", type=int, default=0, help="seed of every randomized method")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("attention_report"),
        help="output directory (default: ./attention_report)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="error/bound/time table of every method")
    _add_data_args(rep)
    rep.add_argument("--methods", nargs="+", metavar="NAME", help="subset of methods")
    rep.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    rep.add_argument("--n-rows", type=int, default=64, help="certificate sample rows")
    rep.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    ver = sub.add_parser("verify", help="check every returned bound on the data")
    _add_data_args(ver)
    ver.add_argument("--methods", nargs="+", metavar="NAME", help="subset of methods")
    ver.add_argument("--draws", type=int, default=5, help="independent draws per method")
    ver.add_argument(
        "--level",
        type=float,
        default=1e-3,
        help="significance level of the binomial test for probabilistic bounds",
    )
    spe = sub.add_parser("spectra", help="survey Figures 5, 7, 8 as PNG")
    _add_data_args(spe)
    spe.add_argument("--block", type=int, default=128, help="size of the sparsity block")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    from attention import _report

    datasets = _report.load_dataset(
        None if args.input or args.synthetic else args.data,
        input=args.input,
        synthetic_n=args.n if args.synthetic else None,
        seed=args.seed,
    )
    progress = not args.no_progress
    if args.command == "report":
        _report.run_report(
            datasets,
            method_names=args.methods,
            out_dir=args.out,
            seed=args.seed,
            repeats=args.repeats,
            n_rows=args.n_rows,
            progress=progress,
            plot=not args.no_plot,
        )
        print((args.out / "report.md").read_text())
        print(f"written: {args.out / 'report.md'}, {args.out / 'report.json'}")
        return 0
    if args.command == "verify":
        ok, checks = _report.run_verify(
            datasets,
            method_names=args.methods,
            draws=args.draws,
            seed=args.seed,
            level=args.level,
            progress=progress,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "verify.json").write_text(json.dumps(checks, indent=1))
        for c in checks:
            status = "ok  " if c["ok"] else "FAIL"
            print(
                f"{status} {c['dataset']:>12} {c['method']:>16} {c['what']:>11} "
                f"{c['kind']:>13} failures {c['failures']}/{c['draws']} "
                f"(worst actual/bound {c['worst_actual_over_bound']:.3g})"
            )
        print("all bounds hold" if ok else "SOME BOUNDS FAILED")
        return 0 if ok else 1
    try:
        paths = _report.run_spectra(datasets, out_dir=args.out, block=args.block)
    except ImportError:
        print("spectra needs matplotlib: pip install -e '.[report]'", file=sys.stderr)
        return 2
    for p in paths:
        print(f"written: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
