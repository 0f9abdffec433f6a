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
``perplexity``
    End to end: SmolLM2-135M's NumPy forward pass on the first ``--n`` tokens of
    ``--text`` with every layer's attention computed by ``--method``; next-token
    perplexity and top-1 accuracy against exact attention, per-layer output error and
    attention time (``--json OUT`` writes them). Needs the model packages.

``report --n N`` (without ``--synthetic``) runs on real long-context SmolLM2 heads at
``N`` tokens (one query head of each of ``--layers``), extracted once and cached by
:func:`attention.data.load_smollm2_heads`.
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
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="sequence length: of the synthetic heads with --synthetic (default 1024), "
        "else of long-context SmolLM2 heads (needs the model packages; default: the "
        "shipped 512-token samples)",
    )
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="with --n: SmolLM2 layers, one query head each (default 0 5 10 15 20 25 29)",
    )
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
    ppl = sub.add_parser(
        "perplexity", help="end-to-end SmolLM2 perplexity with a method's attention"
    )
    ppl.add_argument(
        "--text", default=None, help="shipped text name or UTF-8 file (default: licenses)"
    )
    ppl.add_argument("--n", type=int, default=1024, help="tokens scored (<= 8192)")
    ppl.add_argument("--method", default="exact", help="registered attention method")
    ppl.add_argument("--tol", type=float, default=None, help="passed as tol= to the method")
    ppl.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter (repeatable), e.g. --param window=256",
    )
    ppl.add_argument(
        "--layers", type=int, nargs="+", default=None, help="approximated layers (default all)"
    )
    ppl.add_argument("--seed", type=int, default=0, help="seed of a randomized method")
    ppl.add_argument("--json", type=Path, default=None, metavar="OUT", help="write JSON here")
    ppl.add_argument("--cache-dir", default=None, help="cache of the exact reference pass")
    ppl.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_param(text: str) -> tuple[str, object]:
    """Parse ``KEY=VALUE``: VALUE as a Python literal (int, float, bool, None) or a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"--param {text!r} must be written KEY=VALUE, e.g. window=256")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _perplexity(args) -> int:
    from attention.end_to_end import perplexity

    try:
        params = dict(parse_param(p) for p in args.param)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = None
    if not args.no_progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=30, desc=f"{args.method} n={args.n}", unit="layer", leave=False)
        except ImportError:  # pragma: no cover - optional dependency
            bar = None
    try:
        res = perplexity(
            args.method,
            n_tokens=args.n,
            text=args.text,
            tol=args.tol,
            layers=args.layers,
            rng=args.seed,
            cache_dir=args.cache_dir,
            callback=None if bar is None else (lambda layer: bar.update(1)),
            **params,
        )
    except (ValueError, ModuleNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    out = res.to_json()
    t = res.timings
    print(f"SmolLM2-135M, {res.text}, n = {res.n} tokens, method {res.method} {res.params}")
    print(
        f"perplexity  exact {res.perplexity_exact:.4f}  method {res.perplexity:.4f}  "
        f"(ratio {out['perplexity_ratio']:.4f})"
    )
    print(
        f"top-1       exact {res.top1_exact:.4f}  method {res.top1:.4f}  "
        f"agreement {res.top1_agreement:.4f}"
    )
    print(
        f"attention   exact {res.attention_seconds_exact:.3f} s  method "
        f"{res.attention_seconds:.3f} s over layers {list(res.layers)}"
    )
    print("pass split  " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    print("layer  rel. error  method [ms]  exact [ms]")
    for layer in res.layers:
        print(
            f"{layer:5d}  {res.layer_error[layer]:10.3e}  {1e3 * res.layer_seconds[layer]:11.1f}"
            f"  {1e3 * res.layer_seconds_exact[layer]:10.1f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"written: {args.json}")
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "perplexity":
        return _perplexity(args)
    from attention import _report

    datasets = _report.load_dataset(
        None if args.input or args.synthetic else args.data,
        input=args.input,
        synthetic_n=(args.n or 1024) if args.synthetic else None,
        long_n=None if args.synthetic or args.input else args.n,
        layers=args.layers,
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
            if "skipped" in c:
                print(f"skip {c['dataset']:>12} {c['method']:>16} {c['skipped']}")
                continue
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
