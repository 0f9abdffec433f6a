"""Bound verification for attention.tensor: truncation bounds carried to logits and outputs.

Chain tested: a truncation bound on the weights or activations (Eckart-Young, TT-SVD
Thm 2.2 of Oseledets 2011, ST-HOSVD) -> perturbation radii of q_i, k_j ->
``logit_error_bound`` (delta_i >= max_j |s~_ij - s_ij|) -> ``logit_output_bound``
(||y~_i - y_i|| <= (e^delta_i - 1) max_j ||v_j - y_i||, and ||p~_i - p_i||_1 <= e^{2 delta_i} - 1).
All of these are deterministic, so they are asserted on every draw; each has a negative
control that shrinks the radius and must fail.
"""

import numpy as np
import pytest

from attention.data import load_sample
from attention.tensor import (
    collaborative_heads,
    compress_stacked_weights,
    logit_error_bound,
    logit_output_bound,
    tpa_attention,
)
from rnla.bounds import tt_svd_bound, tt_unfolding_tails, tucker_unfolding_tails

_SLACK = 1 + 1e-9


def _softmax(S):
    E = np.exp(S - S.max(-1, keepdims=True))
    return E / E.sum(-1, keepdims=True)


def _decaying(rng, D, decay=0.85):
    U, _ = np.linalg.qr(rng.standard_normal((D, D)))
    V, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return (U * decay ** np.arange(D)) @ V.T


def _problem(rng, n=40, D=24, heads=3, dh=8, dv=6):
    X = rng.standard_normal((n, D))
    W_Q, W_K = _decaying(rng, D), _decaying(rng, D)
    V = rng.standard_normal((heads, n, dv))
    return X, W_Q, W_K, V, heads, dh


def _heads(Y, heads, dh):
    """(n, heads * dh) -> (heads, n, dh)."""
    return Y.reshape(Y.shape[0], heads, dh).transpose(1, 0, 2)


def _chain(X, W_Q, W_K, Wt_Q, Wt_K, radius_Q, radius_K, V, heads, dh):
    """Exact/approximate logits and outputs plus the bound chain for spectral radii."""
    scale = dh**-0.5
    Q, K = _heads(X @ W_Q[:, : heads * dh], heads, dh), _heads(X @ W_K[:, : heads * dh], heads, dh)
    Qt = _heads(X @ Wt_Q[:, : heads * dh], heads, dh)
    Kt = _heads(X @ Wt_K[:, : heads * dh], heads, dh)
    nx = np.linalg.norm(X, axis=1)
    # ||q_i^h - q~_i^h|| <= ||x_i|| ||E_Q[:, head]||_2 <= ||x_i|| ||E_Q||_2
    q_err = np.broadcast_to(radius_Q * nx, (heads, X.shape[0]))
    k_err = np.broadcast_to(radius_K * nx, (heads, X.shape[0]))
    delta = logit_error_bound(Qt, Kt, q_err, k_err, scale=scale)
    S, St = scale * Q @ K.transpose(0, 2, 1), scale * Qt @ Kt.transpose(0, 2, 1)
    actual_delta = np.abs(St - S).max(-1)
    P, Pt = _softmax(S), _softmax(St)
    Y, Yt = P @ V, Pt @ V
    row_err = np.linalg.norm(Yt - Y, axis=-1)
    bound = logit_output_bound(delta, V, Y=Y)
    l1 = np.abs(Pt - P).sum(-1)
    return delta, actual_delta, bound, row_err, l1, Y


@pytest.mark.parametrize("rank", [4, 10, 18])
def test_svd_eckart_young_to_logits_and_output(rng, rank):
    X, W_Q, W_K, V, heads, dh = _problem(rng)
    res = compress_stacked_weights(np.stack([W_Q, W_K]), "svd", rank)
    s = [np.linalg.svd(W, compute_uv=False) for W in (W_Q, W_K)]
    # Eckart-Young: spectral error sigma_{r+1}, Frobenius error = tail (deterministic)
    np.testing.assert_allclose(res.spectral_errors, [s[0][rank], s[1][rank]], rtol=1e-8)
    tail = np.sqrt(sum(np.sum(si[rank:] ** 2) for si in s))
    np.testing.assert_allclose(res.error_bound, tail, rtol=1e-10)
    np.testing.assert_allclose(res.relative_error * np.linalg.norm([W_Q, W_K]), tail, rtol=1e-8)
    delta, actual, bound, row_err, l1, _ = _chain(
        X, W_Q, W_K, *res.weights, s[0][rank], s[1][rank], V, heads, dh
    )
    assert np.all(actual <= delta * _SLACK)
    assert np.all(row_err <= bound.rows * _SLACK + 1e-14)
    assert np.all(l1 <= np.expm1(2 * delta) * _SLACK + 1e-14)
    # tightness is reported, not asserted beyond sanity: the bound is within 1e4x
    assert np.median(delta / np.maximum(actual, 1e-300)) < 1e4


def test_svd_chain_negative_control(rng):
    """Radii 20x too small (or delta 20x too small) must violate the chain."""
    X, W_Q, W_K, V, heads, dh = _problem(rng)
    rank = 6
    res = compress_stacked_weights(np.stack([W_Q, W_K]), "svd", rank)
    s_Q, s_K = res.spectral_errors
    delta, actual, *_ = _chain(X, W_Q, W_K, *res.weights, s_Q / 20, s_K / 20, V, heads, dh)
    assert np.any(actual > delta)
    # the lemma applied with the *actual* logit error holds
    _, actual, _, row_err, _, Y = _chain(X, W_Q, W_K, *res.weights, s_Q, s_K, V, heads, dh)
    assert np.all(row_err <= logit_output_bound(actual, V, Y=Y).rows * _SLACK)


@pytest.mark.parametrize("delta", [1e-3, 0.1, 1.0])
def test_logit_lemma_tight_instance_and_negative_control(delta):
    """Two keys v = +-1, equal logits, perturbed by +-delta: error tanh(delta).

    The lemma gives e^delta - 1 (ratio -> 1 as delta -> 0, so it is first-order tight);
    the same lemma fed delta / 2 must fail.
    """
    V = np.array([[1.0], [-1.0]])
    Y = np.zeros((1, 1))
    err = np.tanh(delta)
    b = logit_output_bound(np.array([delta]), V, Y=Y).rows[0]
    assert err <= b * _SLACK
    assert b / err < 1 + 2 * delta
    assert err > logit_output_bound(np.array([delta / 2]), V, Y=Y).rows[0]


@pytest.mark.parametrize("ranks", [(2, 6), (3, 12)])
def test_tt_bound_to_logits(rng, ranks):
    L, D = 4, 12
    X, _, _, V, heads, dh = _problem(rng, D=D, heads=2, dh=6)
    Ws = np.stack([_decaying(rng, D, 0.7) for _ in range(L)])
    Ws += 0.3 * Ws[:1]  # correlated across layers
    res = compress_stacked_weights(Ws, "tt", ranks)
    tails = tt_unfolding_tails(Ws, list(ranks))
    B = tt_svd_bound(tails)
    err = np.linalg.norm(Ws - res.weights)
    # Oseledets Thm 2.2 (deterministic): ||X - TT||_F <= sqrt(sum tau_k^2)
    assert err <= B * _SLACK
    assert res.error_bound <= B * _SLACK
    # per matrix: ||E_i||_2 <= ||E||_F <= B, carried to the logits of layers 0 (Q) and 1 (K)
    assert np.all(res.spectral_errors <= B * _SLACK)
    delta, actual, bound, row_err, l1, _ = _chain(
        X, Ws[0], Ws[1], res.weights[0], res.weights[1], B, B, V, heads, dh
    )
    assert np.all(actual <= delta * _SLACK)
    assert np.all(row_err <= bound.rows * _SLACK + 1e-14)
    assert np.all(l1 <= np.expm1(2 * delta) * _SLACK + 1e-14)


def test_tucker_sthosvd_bound(rng):
    L, D = 4, 12
    Ws = np.stack([_decaying(rng, D, 0.7) for _ in range(L)])
    ranks = (2, 5, 5)
    res = compress_stacked_weights(Ws, "tucker", ranks, rng=rng)
    tails = tucker_unfolding_tails(Ws, list(ranks))
    err = np.linalg.norm(Ws - res.weights)
    # ST-HOSVD with exact steps: ||X - X^||_F^2 <= sum_n tau_n^2 (deterministic)
    assert err <= np.sqrt(np.sum(tails**2)) * _SLACK
    np.testing.assert_allclose(res.error_bound, err, rtol=1e-6)
    # negative control: the largest single tail alone is not a bound here
    assert err > tails.max() or np.count_nonzero(tails > 1e-12) <= 1


def test_collaborative_a_posteriori_logit_bound(rng):
    h, D, dh = 3, 10, 3
    W_Q, W_K = rng.standard_normal((h, D, dh)), rng.standard_normal((h, D, dh))
    X = rng.standard_normal((15, D))
    res = collaborative_heads(W_Q, W_K, 4, rng=rng)
    T = np.einsum("hia,hja->hij", W_Q, W_K)
    That = np.einsum("hr,ir,jr->hij", res.mixing, res.W_Q, res.W_K)
    E2 = np.linalg.norm(T - That, ord=2, axis=(1, 2))
    nx = np.linalg.norm(X, axis=1)
    S = np.einsum("ni,hij,mj->hnm", X, T, X)
    St = np.einsum("ni,hij,mj->hnm", X, That, X)
    # |x_i^T (T_h - T~_h) x_j| <= ||x_i|| ||x_j|| ||T_h - T~_h||_2
    bound = E2[:, None, None] * nx[None, :, None] * nx[None, None, :]
    assert np.all(np.abs(S - St) <= bound * _SLACK)
    assert np.any(np.abs(S - St) > bound / 50)  # negative control: 50x smaller fails


def test_tpa_output_bound_synthetic(rng, dtype):
    h, n, d = 6, 48, 8
    Q, K, V = (rng.standard_normal((h, n, d)).astype(dtype) for _ in range(3))
    Y = _softmax(d**-0.5 * Q.astype(np.float64) @ K.astype(np.float64).transpose(0, 2, 1))
    Y = Y @ V.astype(np.float64)
    for r in (1, 3, 5):
        res = tpa_attention(Q, K, V, r, r)
        err = np.linalg.norm(res.output.astype(np.float64) - Y, axis=-1)
        slack = 1e-4 if dtype == np.float32 else 1e-12
        assert np.all(err <= res.bound.rows * (1 + slack) + slack)


def test_tpa_output_bound_real_minilm():
    s = load_sample("minilm")
    Q, K, V = (x.astype(np.float64) for x in (s.Q, s.K, s.V))
    Y = _softmax(s.scale * Q @ K.transpose(0, 2, 1)) @ V
    ratios = []
    for r in (1, 2, 4):
        res = tpa_attention(Q, K, V, r, r, scale=s.scale)
        err = np.linalg.norm(res.output - Y, axis=-1)
        assert np.all(err <= res.bound.rows * _SLACK + 1e-12)
        ratios.append(res.bound.fro.value / np.linalg.norm(res.output - Y))
    assert all(np.isfinite(ratios))


def test_tpa_bound_negative_control():
    """Dropping the value term (v_err) or shrinking delta breaks the bound on real data."""
    s = load_sample("minilm")
    Q, K, V = (x.astype(np.float64) for x in (s.Q, s.K, s.V))
    Y = _softmax(s.scale * Q @ K.transpose(0, 2, 1)) @ V
    res = tpa_attention(Q, K, V, 2, 2, scale=s.scale)
    err = np.linalg.norm(res.output - Y, axis=-1)
    delta_small = np.full(Q.shape[:2], 1e-3)
    assert np.any(err > logit_output_bound(delta_small, V).rows)


def test_bound_functions_bad_input():
    Q = np.ones((3, 4))
    with pytest.raises(ValueError, match="q_err"):
        logit_error_bound(Q, Q, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        logit_error_bound(Q, Q, -np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="share d"):
        logit_error_bound(Q, Q[:, :2], np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="delta"):
        logit_output_bound(-np.ones(3), Q)
    with pytest.raises(ValueError, match="v_err"):
        logit_output_bound(np.ones(3), Q, v_err=-np.ones(3))
