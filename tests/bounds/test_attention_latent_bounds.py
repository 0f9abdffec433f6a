"""Bound verification for latent-attention conversions (survey §6).

Chain: rank-r truncation of the key/value weights (exact SVD: ``||W - W~||_2 =
sigma_{r+1}``; rSVD: measured) -> key error ``||k_j - k~_j|| <= ||x_j|| ||W_K - W~_K||_2``
-> logit error ``||QK^T - QK~^T||_2 <= ||Q||_2 ||K - K~||_2`` and entrywise
``|s~_ij - s_ij| <= delta_i = scale ||q_i|| max_j ||k~_j - k_j||`` -> output error through
the normaliser-aware row lemma (``||p~_i - p_i||_1 <= e^{2 delta_i} - 1``), implemented by
``attention.latent.latent_output_bound``. Tightness (bound / actual) is printed with -s.
"""

import numpy as np
import pytest

from attention.data import load_sample
from attention.exact import reference_attention
from attention.latent import latent_output_bound, mha_to_mla, mla_attention
from rnla.lowrank import rsvd

METHODS = ["weight_svd", "activation_pca", "whitened_svd"]
H, DH, D, N = 4, 8, 40, 64


def _decaying(rng, d, cols, decay):
    U, _ = np.linalg.qr(rng.standard_normal((d, min(d, cols))))
    V, _ = np.linalg.qr(rng.standard_normal((cols, min(d, cols))))
    return (U * decay ** np.arange(min(d, cols))) @ V.T


def _layer(rng, decay=0.8):
    X = rng.standard_normal((N, D)) * np.geomspace(3.0, 0.3, D)
    WQ = rng.standard_normal((D, H * DH)) / np.sqrt(D)
    WK, WV = _decaying(rng, D, H * DH, decay), _decaying(rng, D, H * DH, decay)
    return X, WQ, 2 * WK, WV


def _heads(A):
    return A.reshape(A.shape[0], H, -1).transpose(1, 0, 2)


def _reconstruction(conv):
    w = conv.weights
    WK = np.einsum("dc,hce->hde", w.W_DKV, w.W_UK)
    WV = np.einsum("dc,hce->hde", w.W_DKV, w.W_UV)
    return WK, WV


@pytest.mark.parametrize("solver", ["dense", "randomized"])
@pytest.mark.parametrize("rank", [4, 12])
def test_logit_bound_chain(rng, solver, rank):
    X, WQ, WK, WV = _layer(rng)
    conv = mha_to_mla(WK, WV, rank, W_Q=WQ, n_heads=H, solver=solver, rng=rng)
    WKt, _ = _reconstruction(conv)
    W = np.hstack([WK, WV])
    sigma = np.linalg.svd(W, compute_uv=False)[rank]
    EW = np.linalg.norm(WK - WKt.transpose(1, 0, 2).reshape(D, -1), 2)
    joint = np.linalg.norm(W - np.hstack([WKt.transpose(1, 0, 2).reshape(D, -1), WV * 0]), 2)
    assert joint >= EW * (1 - 1e-12)  # the K block of the joint error is smaller
    if solver == "dense":  # Eckart-Young: the joint spectral error is sigma_{r+1}
        WVt = _reconstruction(conv)[1].transpose(1, 0, 2).reshape(D, -1)
        Wt = np.hstack([WKt.transpose(1, 0, 2).reshape(D, -1), WVt])
        np.testing.assert_allclose(np.linalg.norm(W - Wt, 2), sigma, rtol=1e-9)
        assert EW <= sigma * (1 + 1e-9)
    ratios = []
    for h in range(H):
        Q, K, Kt = X @ WQ[:, h * DH : (h + 1) * DH], X @ WK[:, h * DH : (h + 1) * DH], X @ WKt[h]
        actual = np.linalg.norm(Q @ K.T - Q @ Kt.T, 2)
        mid = np.linalg.norm(Q, 2) * np.linalg.norm(K - Kt, 2)
        apriori = np.linalg.norm(Q, 2) * np.linalg.norm(X, 2) * EW
        assert actual <= mid * (1 + 1e-9) <= apriori * (1 + 1e-9) ** 2
        # per-key a-priori bound ||k_j - k~_j|| <= ||x_j|| ||W_K - W~_K||_2
        assert np.all(
            np.linalg.norm(K - Kt, axis=1) <= np.linalg.norm(X, axis=1) * EW * (1 + 1e-9)
        )
        ratios.append(apriori / actual)
    print(f"logit bound tightness (a-priori / actual) {solver} r={rank}: {np.round(ratios, 2)}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", METHODS)
def test_output_bound_holds(rng, method, causal):
    X, WQ, WK, WV = _layer(rng)
    Q, K, V = _heads(X @ WQ), _heads(X @ WK), _heads(X @ WV)
    Y = reference_attention(Q, K, V, causal=causal)
    for rank in (6, 16, 30):
        conv = mha_to_mla(WK, WV, rank, method=method, calibration=X, W_Q=WQ, n_heads=H, rng=rng)
        Yt = _heads(mla_attention(X, conv.weights._replace(W_O=None), causal=causal).output)
        WKt, WVt = _reconstruction(conv)
        Kt, Vt = np.einsum("nd,hde->hne", X, WKt), np.einsum("nd,hde->hne", X, WVt)
        actual = np.linalg.norm(Yt - Y, axis=-1)
        for logits in ("cauchy_schwarz", "exact"):
            bound = latent_output_bound(Q, K, V, Kt, Vt, logits=logits)
            assert np.all(actual <= bound.rows * (1 + 1e-9) + 1e-12)
            assert np.linalg.norm(Yt - Y) <= bound.fro.value * (1 + 1e-9) + 1e-12
            ratio = bound.fro.value / np.linalg.norm(Yt - Y)
            print(f"{method} causal={causal} r={rank} {logits}: fro bound/actual = {ratio:.3g}")


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_output_bound_real_qkv(name, rng):
    """Real Q/K/V (shipped samples): K and V replaced by their rank-r rSVD truncations."""
    s = load_sample(name)
    Q, K, V = (a[:2, :256].astype(np.float64) for a in (s.Q, s.K, s.V))
    Y = reference_attention(Q, K, V, scale=s.scale, causal=s.causal)
    for rank in (8, 24):
        Kt = np.stack([_trunc(k, rank, rng) for k in K])
        Vt = np.stack([_trunc(v, rank, rng) for v in V])
        Yt = reference_attention(Q, Kt, Vt, scale=s.scale, causal=s.causal)
        actual = np.linalg.norm(Yt - Y, axis=-1)
        for logits in ("cauchy_schwarz", "exact"):
            bound = latent_output_bound(Q, K, V, Kt, Vt, scale=s.scale, logits=logits)
            assert np.all(actual <= bound.rows * (1 + 1e-9) + 1e-12)
            ratio = bound.fro.value / np.linalg.norm(Yt - Y)
            print(f"{name} r={rank} {logits}: fro bound/actual = {ratio:.3g}")


def _trunc(A, rank, rng):
    U, s, Vt = rsvd(A, rank, rng=rng)
    return (U * s) @ Vt


def test_softmax_perturbation_lemma(rng):
    """Per draw: |~s_j - s_j| <= delta => ||~p - p||_1 <= 2 tanh(delta/2) <= e^{2 delta} - 1."""
    for _ in range(200):
        m = int(rng.integers(2, 30))
        s = rng.standard_normal(m) * rng.uniform(0.1, 5)
        delta = rng.uniform(0.0, 3.0)
        st = s + rng.uniform(-delta, delta, m) * (rng.random(m) < 0.7)
        p, pt = np.exp(s - s.max()), np.exp(st - st.max())
        p, pt = p / p.sum(), pt / pt.sum()
        dl = np.abs(st - s).max()
        assert np.abs(pt - p).sum() <= 2 * np.tanh(dl / 2) * (1 + 1e-12) + 1e-15
        assert 2 * np.tanh(dl / 2) <= np.expm1(2 * dl) + 1e-15


def test_negative_control_output_bound_attained():
    """Two keys, values +-1, mass a = 1/(1 + e^delta) on the key whose logit rises by
    delta (the other falls by delta): with the reference point 0 (the centroid) the bound
    is attained, so any bound 1% smaller fails; the a-priori radius 2R costs a factor 2."""
    for delta in (1e-3, 1e-1, 1.0):
        Q = np.array([[1.0]])
        a = 1 / (1 + np.exp(delta))
        K = np.array([[np.log(a)], [np.log1p(-a)]])  # p = (a, 1 - a)
        Kt = K + np.array([[delta], [-delta]])
        V = np.array([[1.0], [-1.0]])
        y = reference_attention(Q, K, V, scale=1.0)
        yt = reference_attention(Q, Kt, V, scale=1.0)
        actual = float(np.abs(yt - y).max())
        np.testing.assert_allclose(actual, 2 * np.tanh(delta / 2), rtol=1e-9)
        kw = {"scale": 1.0, "logits": "exact"}
        sharp = latent_output_bound(Q, K, V, Kt, Y=np.zeros((1, 1)), **kw).rows[0]
        apriori = latent_output_bound(Q, K, V, Kt, **kw).rows[0]
        assert actual <= sharp * (1 + 1e-9)
        assert actual > 0.99 * sharp  # the control: a 1% smaller bound is violated
        np.testing.assert_allclose(apriori / sharp, 2.0, rtol=1e-9)


def test_negative_control_weight_bound_needs_svd(rng):
    """||W - W~||_2 = sigma_{r+1} holds for the SVD only: activation-aware factorisations
    (whitened SVD with anisotropic inputs) exceed it, so the weight-space bound fails."""
    X, _, WK, WV = _layer(rng, decay=0.9)
    X = X * np.geomspace(30.0, 0.03, D)
    W = np.hstack([WK, WV])
    r = 8
    sigma = np.linalg.svd(W, compute_uv=False)[r]
    conv = mha_to_mla(WK, WV, r, method="whitened_svd", calibration=X, rng=rng)
    err = np.linalg.norm(W - _full(conv), 2)
    assert err > 1.05 * sigma
    svd = mha_to_mla(WK, WV, r, method="weight_svd", solver="dense")
    np.testing.assert_allclose(np.linalg.norm(W - _full(svd), 2), sigma, rtol=1e-9)


def _full(conv):
    WKt, WVt = (a.transpose(1, 0, 2).reshape(a.shape[1], -1) for a in _reconstruction(conv))
    return np.hstack([WKt, WVt])
