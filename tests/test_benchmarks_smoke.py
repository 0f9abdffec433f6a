"""Smoke tests of the benchmark harness: outputs and arithmetic, never timings."""

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.sketch_apply import srft_numpy  # noqa: E402


def tiny_task(**kwargs):
    small = np.arange(10.0)
    big = np.arange(2000.0)
    return harness.Task(
        name="sum",
        impls={"slow": lambda: float(np.sum(big)), "fast": lambda: float(np.sum(small))},
        baseline="slow",
        **kwargs,
    )


@pytest.fixture
def result():
    task = tiny_task(
        accuracy=lambda name, out: out,
        accuracy_label="sum",
        goal=1.0,
        goal_for=["fast"],
        params={"n": 10},
    )
    return harness.run_tasks([task], repeats=3, progress=False)


def test_rows_and_ratio(result):
    rows = {row["implementation"]: row for row in result["rows"]}
    assert list(rows) == ["slow", "fast"]
    for row in rows.values():
        assert len(row["times_s"]) == 3
        assert row["median_s"] == pytest.approx(np.median(row["times_s"]))
        q25, q75 = np.percentile(row["times_s"], [25, 75])
        assert row["iqr_s"] == pytest.approx(q75 - q25)
    base = np.median(rows["slow"]["times_s"])
    assert rows["fast"]["speedup"] == pytest.approx(base / np.median(rows["fast"]["times_s"]))
    assert rows["slow"]["speedup"] == pytest.approx(1.0)
    assert rows["slow"]["is_baseline"] and not rows["fast"]["is_baseline"]


def test_goal_and_accuracy(result):
    rows = {row["implementation"]: row for row in result["rows"]}
    assert rows["slow"]["goal"] is None and rows["slow"]["meets_goal"] is None
    assert rows["fast"]["goal"] == 1.0
    assert rows["fast"]["meets_goal"] == (rows["fast"]["speedup"] >= 1.0)
    assert rows["slow"]["accuracy"] == pytest.approx(np.arange(2000.0).sum())
    assert rows["fast"]["accuracy"] == pytest.approx(45.0)


def test_written_files(result, tmp_path):
    paths = harness.write_results(result, "tiny", tmp_path)
    assert {p.name for p in paths.values()} == {"tiny.json", "tiny.md", "tiny.csv", "tiny.rst"}

    data = json.loads((tmp_path / "tiny.json").read_text())
    assert set(data) == {"machine", "repeats", "tasks", "rows"}
    assert data["repeats"] == 3
    assert data["tasks"] == [{"name": "sum", "baseline": "slow", "params": {"n": 10}}]
    for key in ("cpu_count", "numpy", "scipy", "numba", "load_average", "blas"):
        assert key in data["machine"]
    for key in ("median_s", "iqr_s", "speedup", "goal", "meets_goal", "accuracy", "times_s"):
        assert key in data["rows"][0]

    md = (tmp_path / "tiny.md").read_text().splitlines()
    assert md[0].startswith("| task | implementation | median [ms]")
    assert md[1].startswith("|---|")
    fast_line = md[3].split(" | ")
    fast = data["rows"][1]
    assert fast_line[1] == "fast"
    assert fast_line[4] == f"{fast['speedup']:.2f}x"
    assert "1.00 (baseline)" in md[2]

    table = list(csv.reader(io.StringIO((tmp_path / "tiny.csv").read_text())))
    assert table[0][:2] == ["task", "implementation"]
    assert [r[1] for r in table[1:]] == ["slow", "fast"]

    rst = (tmp_path / "tiny.rst").read_text()
    assert rst.startswith(".. list-table::")
    assert rst.count("   * - ") == 3  # header + 2 rows


def test_main_quick_writes_quick_stem(tmp_path):
    def build(quick):
        assert quick
        return [tiny_task()]

    harness.main(
        "tiny", build, ["--quick", "--repeats", "3", "--out-dir", str(tmp_path), "--no-progress"]
    )
    assert (tmp_path / "tiny_quick.json").exists()
    assert json.loads((tmp_path / "tiny_quick.json").read_text())["quick"] is True


def test_rst_escape():
    assert harness._rst_escape("|SA|*x*_") == r"\|SA\|\*x\*\_"
    assert harness._rst_escape("- a") == r"\- a"


def test_bad_task():
    with pytest.raises(ValueError, match="baseline 'nope'"):
        harness.Task("t", {"a": lambda: 0}, baseline="nope")
    with pytest.raises(ValueError, match="unknown implementations"):
        harness.Task("t", {"a": lambda: 0}, baseline="a", goal=2.0, goal_for=["b"])
    with pytest.raises(ValueError, match="repeats=0"):
        harness.run_task(tiny_task(), 0, progress=False)


@pytest.mark.parametrize("n, k", [(64, 16), (64, 64), (32, 1)])
def test_srft_baseline_is_a_scaled_orthogonal_subsample(n, k):
    # The NumPy peer must be a correct SRFT: S = sqrt(n/k) R Q D with Q orthogonal,
    # hence S S^T = (n/k) I_k, and E[S^T S] = I over the row sample.
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=n)
    rows = np.sort(rng.choice(n, size=k, replace=False))
    S = srft_numpy(np.eye(n), signs, rows)
    assert S.shape == (k, n)
    np.testing.assert_allclose(S @ S.T, (n / k) * np.eye(k), atol=1e-12)
    all_rows = srft_numpy(np.eye(n), signs, np.arange(n))
    np.testing.assert_allclose(all_rows.T @ all_rows, (n / n) * np.eye(n), atol=1e-12)


def test_attention_long_marks_configurations_that_did_not_approximate():
    from benchmarks.attention_long import _label

    row = {"method": "hyperattention", "config": "hyperattention (sample_size=512)"}
    assert _label({**row, "rel_fro": 0.0, "key_fraction": 1.0}).endswith(
        "[exact: exact leaves only]"
    )
    assert _label({**row, "rel_fro": 0.4, "key_fraction": 0.5}).endswith(
        "[exact leaves: 50% of pairs]"
    )
    assert _label({**row, "rel_fro": 0.0}).endswith("[exact: exact leaves only]")  # old rows
    ada = {"method": "adaptive", "config": "adaptive (tol=0.05)"}
    assert _label({**ada, "rel_fro": 0.0, "key_fraction": 1.0}).endswith(
        "[exact: every pair exact]"
    )
    assert _label({**ada, "rel_fro": 0.01, "key_fraction": 0.3}) == "adaptive (tol=0.05)"
    assert _label({"method": "window", "config": "window", "rel_fro": 0.8}) == "window"


def test_attention_long_merged_rows_in_run_order():
    from benchmarks.attention_long import SWEEP, _canonical_order, _key

    sweep = _key(*SWEEP[0])
    rows = [
        {"method": SWEEP[0][0], "config": sweep},
        {"method": "window", "config": "window"},
        {"method": "adaptive", "config": "adaptive (tol=0.05)"},
    ]
    got = [r["config"] for r in _canonical_order(rows)]
    assert got == ["adaptive (tol=0.05)", "window", sweep]
