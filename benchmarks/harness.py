"""Side-by-side timing of several implementations of one task, in one process.

Each :class:`Task` holds zero-argument callables (one per implementation, inputs
prepared beforehand) and names one of them the baseline. :func:`run_tasks`

1. calls every implementation once to warm up (Numba compilation, BLAS thread pools,
   page faults) and evaluates the optional accuracy metric on that output;
2. times ``repeats`` interleaved rounds (A, B, C, A, B, C, ...) so that drift in the
   machine load hits every implementation alike;
3. reports median and interquartile range (IQR) per implementation and the speed-up
   ``median(baseline) / median(implementation)`` (> 1: faster than the baseline).

:func:`write_results` writes ``<name>.json`` (everything, raw times and machine info
included), ``<name>.md`` (markdown table), ``<name>.csv`` and ``<name>.rst`` (for the
Sphinx docs) and, if matplotlib is installed and asked for, ``<name>.png``.
:func:`main` wraps it all in a command line (``--quick``, ``--plot``, ``--repeats``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # optional: progress bar
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - depends on the environment
    tqdm = None

RESULTS_DIR = Path(__file__).resolve().parent / "results"

COLUMNS = [
    ("task", "task"),
    ("implementation", "implementation"),
    ("median_ms", "median [ms]"),
    ("iqr_ms", "IQR [ms]"),
    ("speedup", "speed-up vs baseline"),
    ("goal", "goal"),
    ("accuracy", "accuracy"),
]


@dataclass
class Task:
    """One task timed across implementations.

    Parameters
    ----------
    name : str
        Row label, e.g. ``"SRHT apply, A 65536x256 float64, k=1024"``.
    impls : dict of str to callable
        Zero-argument callables, timed in insertion order; the return value is passed to
        ``accuracy`` after the warm-up call and otherwise discarded.
    baseline : str
        Key of ``impls`` that speed-ups are relative to.
    accuracy : callable, optional
        ``accuracy(impl_name, output) -> float``, evaluated once on the warm-up output.
    accuracy_label : str
        What ``accuracy`` measures (shown in the tables).
    goal : float, optional
        Speed-up over the baseline the implementations named in ``goal_for`` must reach.
    goal_text : str
        How the goal is shown in the tables; default ``">= {goal}x"``.
    goal_for : sequence of str
        Implementations the goal applies to.
    params : dict
        Sizes and settings, recorded in the JSON output.
    """

    name: str
    impls: dict[str, Callable[[], Any]]
    baseline: str
    accuracy: Callable[[str, Any], float] | None = None
    accuracy_label: str = ""
    goal: float | None = None
    goal_text: str = ""
    goal_for: Sequence[str] = ()
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.baseline not in self.impls:
            raise ValueError(f"baseline {self.baseline!r} is not one of {list(self.impls)}")
        unknown = set(self.goal_for) - set(self.impls)
        if unknown:
            raise ValueError(f"goal_for names unknown implementations {sorted(unknown)}")


def machine_info() -> dict:
    """CPU, load, library versions and thread counts of the running process."""
    import scipy

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        info["load_average"] = None
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run yet
            info["numba_threading_layer"] = None
    except ImportError:  # pragma: no cover
        info["numba"] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {
                "library": Path(pool.get("filepath", "?")).parent.name.removesuffix(".libs"),
                **{k: pool.get(k) for k in ("internal_api", "num_threads", "version")},
            }
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
    except ImportError:  # pragma: no cover
        info["blas"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_task(task: Task, repeats: int, *, progress: bool = True) -> list[dict]:
    """Warm up, time ``repeats`` interleaved rounds, return one result row per impl."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    accuracy = {}
    for name, fn in task.impls.items():
        out = fn()  # warm-up; its output is the one checked
        accuracy[name] = float(task.accuracy(name, out)) if task.accuracy else None
        del out
    times: dict[str, list[float]] = {name: [] for name in task.impls}
    rounds = range(repeats)
    if progress and tqdm is not None:
        rounds = tqdm(rounds, desc=task.name[:40], leave=False)
    for _ in rounds:
        for name, fn in task.impls.items():
            times[name].append(_time_call(fn))

    base = float(np.median(times[task.baseline]))
    rows = []
    for name, t in times.items():
        t = np.asarray(t)
        q25, med, q75 = (float(v) for v in np.percentile(t, [25, 50, 75]))
        speedup = base / med if med > 0 else float("inf")
        applies = name in task.goal_for and task.goal is not None
        rows.append(
            {
                "task": task.name,
                "implementation": name,
                "is_baseline": name == task.baseline,
                "median_s": med,
                "q25_s": q25,
                "q75_s": q75,
                "iqr_s": q75 - q25,
                "speedup": speedup,
                "goal": task.goal if applies else None,
                "goal_text": (task.goal_text or f">= {task.goal:g}x") if applies else "",
                "meets_goal": bool(speedup >= task.goal) if applies else None,
                "accuracy": accuracy[name],
                "accuracy_label": task.accuracy_label,
                "times_s": t.tolist(),
            }
        )
    return rows


def run_tasks(tasks: Sequence[Task], repeats: int, *, progress: bool = True) -> dict:
    """Run every task; return ``{"machine": ..., "repeats": ..., "tasks": ..., "rows": ...}``."""
    machine = machine_info()  # load average before the run ...
    rows = []
    for task in tasks:
        rows.extend(run_task(task, repeats, progress=progress))
    machine["load_average_after"] = machine_info()["load_average"]  # ... and after it
    return {
        "machine": machine,
        "repeats": repeats,
        "tasks": [{"name": t.name, "baseline": t.baseline, "params": t.params} for t in tasks],
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------
# formatting and output
# ----------------------------------------------------------------------------------------


def _fmt_ms(seconds: float) -> str:
    """Milliseconds with 3 significant digits, without exponent notation."""
    ms = 1e3 * seconds
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.3g}" if ms >= 0.001 or ms == 0 else f"{ms:.1e}"


def _cells(row: dict) -> dict[str, str]:
    """Human-readable strings for the table columns of one result row."""
    if row["is_baseline"]:
        speed = "1.00 (baseline)"
    else:
        speed = f"{row['speedup']:.2f}x"
    goal = ""
    if row["goal"] is not None:
        goal = f"{row['goal_text']}: {'met' if row['meets_goal'] else 'NOT met'}"
    acc = ""
    if row["accuracy"] is not None:
        acc = f"{row['accuracy_label']} = {row['accuracy']:.3g}".strip(" =")
    return {
        "task": row["task"],
        "implementation": row["implementation"],
        "median_ms": _fmt_ms(row["median_s"]),
        "iqr_ms": _fmt_ms(row["iqr_s"]),
        "speedup": speed,
        "goal": goal,
        "accuracy": acc,
    }


def machine_summary(machine: dict, repeats: int) -> str:
    """One line describing the machine, for table captions."""
    blas = machine.get("blas") or []
    blas_txt = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('library', '?')}) "
        f"{b.get('num_threads')} threads"
        for b in blas
    )

    def fmt(load):
        return "/".join(str(x) for x in load) if load else "n/a"

    load = fmt(machine.get("load_average"))
    if machine.get("load_average_after"):
        load += f" before, {fmt(machine['load_average_after'])} after the run"
    return (
        f"{machine['processor']} ({machine['cpu_count']} CPUs), load average (1/5/15 min) "
        f"{load}; Python {machine['python']}, "
        f"NumPy {machine['numpy']}, SciPy {machine['scipy']}, Numba {machine.get('numba')} "
        f"({machine.get('numba_threads')} threads), BLAS: {blas_txt or 'n/a'}; "
        f"median of {repeats} interleaved repeats after one warm-up call; {machine['date']}."
    )


def to_markdown(result: dict) -> str:
    """Markdown table of the rows plus the machine summary."""
    header = [label for _, label in COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in result["rows"]:
        cells = _cells(row)
        lines.append(
            "| " + " | ".join(cells[key].replace("|", "\\|") for key, _ in COLUMNS) + " |"
        )
    lines += ["", machine_summary(result["machine"], result["repeats"]), ""]
    return "\n".join(lines)


def to_csv(result: dict) -> str:
    """CSV of the table (header row first), as included in the Sphinx docs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([label for _, label in COLUMNS])
    for row in result["rows"]:
        cells = _cells(row)
        writer.writerow([cells[key] for key, _ in COLUMNS])
    return buf.getvalue()


def _rst_escape(text: str) -> str:
    """Backslash-escape the characters that start inline markup in reStructuredText."""
    for char in "\\`*|_":
        text = text.replace(char, "\\" + char)
    # A cell starting with "- " or "+ " would become a bullet list.
    return "\\" + text if text[:2] in ("- ", "+ ") else text


def to_rst(result: dict) -> str:
    """Return an RST fragment (list-table and machine summary) for ``.. include::``."""
    out = [".. list-table::", "   :header-rows: 1", ""]
    table = [[label for _, label in COLUMNS]]
    table += [[_cells(row)[key] for key, _ in COLUMNS] for row in result["rows"]]
    for cells in table:
        for j, text in enumerate(cells):
            out.append(f"   {'* -' if j == 0 else '  -'} {_rst_escape(text)}".rstrip())
    out += ["", _rst_escape(machine_summary(result["machine"], result["repeats"])), ""]
    return "\n".join(out)


def plot(result: dict, path: Path) -> bool:
    """Save a bar chart of medians with IQR whiskers; return False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = list(dict.fromkeys(row["task"] for row in result["rows"]))
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(8, 1.0 + 0.45 * len(result["rows"]) + 0.4 * len(tasks))
    )
    axes = np.atleast_1d(axes)
    for ax, task in zip(axes, tasks, strict=True):
        rows = [r for r in result["rows"] if r["task"] == task]
        med = np.array([1e3 * r["median_s"] for r in rows])
        err = np.array(
            [
                [1e3 * (r["median_s"] - r["q25_s"]) for r in rows],
                [1e3 * (r["q75_s"] - r["median_s"]) for r in rows],
            ]
        )
        colors = ["0.6" if r["is_baseline"] else "C0" for r in rows]
        y = np.arange(len(rows))
        ax.barh(y, med, xerr=err, color=colors)
        ax.set_yticks(y, [r["implementation"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("median time [ms] (grey: baseline)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(result: dict, name: str, out_dir: Path, *, make_plot: bool = False) -> dict:
    """Write ``<name>.{json,md,csv,rst}`` (and ``.png``) into ``out_dir``; return paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("json", "md", "csv", "rst")}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(to_markdown(result))
    paths["csv"].write_text(to_csv(result))
    paths["rst"].write_text(to_rst(result))
    if make_plot:
        png = out_dir / f"{name}.png"
        if plot(result, png):
            paths["png"] = png
    return paths


def main(
    name: str,
    build_tasks: Callable[[bool], Sequence[Task]],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
) -> dict:
    """Command line shared by the benchmarks: ``[--quick] [--plot] [--repeats R]``.

    ``build_tasks(quick)`` returns the tasks. ``--quick`` (small sizes, CI smoke run)
    writes ``<name>_quick.*`` so that the committed full results are not overwritten.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--plot", action="store_true", help="also write a PNG (matplotlib)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per task")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    tasks = build_tasks(args.quick)
    result = run_tasks(tasks, repeats, progress=not args.no_progress)
    result["benchmark"] = name
    result["quick"] = args.quick
    stem = f"{name}_quick" if args.quick else name
    paths = write_results(result, stem, args.out_dir, make_plot=args.plot)
    print(to_markdown(result))
    print("written:", ", ".join(str(p) for p in paths.values()))
    return result
