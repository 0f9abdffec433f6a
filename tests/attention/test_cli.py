"""The command line: report, verify and spectra write what they promise."""

import json

import numpy as np
import pytest

from attention import _report
from attention.__main__ import main
from attention.data import load_sample, save_npz

pytest.importorskip("matplotlib")


def test_report_on_synthetic_data(tmp_path, capsys):
    status = main(
        [
            "report",
            "--synthetic",
            "--n",
            "96",
            "--methods",
            "performer",
            "levattention",
            "--repeats",
            "1",
            "--n-rows",
            "16",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert status == 0
    data = json.loads((tmp_path / "report.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"exact", "performer", "levattention"}
    lev = rows["levattention"]
    assert lev["bound_kind"] == "deterministic" and lev["bound_held"]
    assert lev["tightness"] >= 1 and 0 <= lev["rel_fro"] <= lev["bound_rel"]
    assert lev["cert_rel_fro"] >= lev["rel_fro"] or not lev["cert_held"]
    assert (tmp_path / "pareto_synthetic96.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "| levattention | §5.1 |" in md
    assert "report.md" in capsys.readouterr().out


def test_report_skips_non_causal_methods_on_causal_data(tmp_path):
    s = load_sample("smollm2")
    path = tmp_path / "small.npz"
    save_npz(
        path,
        s._replace(
            Q=s.Q[:1, :64], K=s.K[:1, :64], V=s.V[:1, :64], heads=s.heads[:1], tokens=s.tokens[:64]
        ),
    )
    status = main(
        [
            "report",
            "--input",
            str(path),
            "--methods",
            "skyformer",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-plot",
        ]
    )
    assert status == 0
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert rows[1]["method"] == "skyformer" and "not causal" in rows[1]["skipped"]


def test_verify_passes_on_real_bounds_and_fails_on_a_false_one(tmp_path, monkeypatch, capsys):
    args = [
        "verify",
        "--synthetic",
        "--n",
        "64",
        "--methods",
        "levattention",
        "--draws",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(args) == 0
    checks = json.loads((tmp_path / "verify.json").read_text())
    assert {c["what"] for c in checks} == {"bound", "certificate"}
    # Negative control: a bound shrunk 1e6-fold must be reported as failing.
    from attention import _registry

    info = _registry.get_method("levattention")

    def shrunk(problem, *, rng, **params):
        res = info.func(problem, rng=rng, **params)
        return res._replace(bound=res.bound._replace(value=res.bound.value / 1e6))

    monkeypatch.setitem(_registry._REGISTRY, "levattention", info._replace(func=shrunk))
    assert main(args) == 1
    assert "SOME BOUNDS FAILED" in capsys.readouterr().out


def test_spectra_writes_figures(tmp_path):
    ds = _report.load_dataset("minilm")[0]
    small = _report.Dataset(
        "tiny", ds.Q[:2, :64], ds.K[:2, :64], ds.V[:2, :64], False, ds.scale, ""
    )
    paths = _report.run_spectra([small], out_dir=tmp_path, block=32)
    assert [p.name for p in paths] == ["sparsity_tiny.png", "singular_values_tiny.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_synthetic_dataset_spans_sharp_and_diffuse_heads():
    from attention.data import attention_entropy

    ds = _report.synthetic_dataset(256, heads=3, d=16, seed=1)
    H = attention_entropy(ds.Q, ds.K, scale=ds.scale, causal=False)
    assert H[0] > H[-1] + 1.0 and np.all(H > 0)


def test_report_and_verify_run_tolerance_driven_methods(tmp_path):
    # 'adaptive' has a required tol and no budget: report and verify used to crash on it.
    common = ["--synthetic", "--n", "96", "--methods", "adaptive", "--no-progress"]
    out = tmp_path / "r"
    assert main(["report", *common, "--repeats", "1", "--n-rows", "16", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["adaptive"]["params"]["tol"] == _report.REPORT_TOL
    assert rows["adaptive"]["bound_held"]
    assert main(["verify", *common, "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "verify.json").is_file()
