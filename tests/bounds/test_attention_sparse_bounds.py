"""Deterministic dropped-mass bounds of topk, window and bigbird (attention.sparse).

Each bound must hold for every draw (synthetic and real heads), and each has a negative
control: on a constructed equality case the bound is attained, so half of it fails.
"""

import numpy as np
import pytest

import attention.sparse  # noqa: F401  (registers the methods)
from attention._registry import approximate
from attention.data import load_sample
from attention.exact import reference_attention

# Relative slack for comparing the bound with an error computed in floating point.
_SLACK = 1e-9


def _actual(r, Q, K, V, **kw):
    Y = reference_attention(*(np.asarray(x, dtype=np.float64) for x in (Q, K, V)), **kw)
    return float(np.linalg.norm(r.output.astype(np.float64) - Y))


@pytest.mark.parametrize("k", [1, 4, 16, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_topk_bound_holds_synthetic(rng, dtype, k, causal):
    Q = (2 * rng.standard_normal((3, 50, 8))).astype(dtype)
    K = (2 * rng.standard_normal((3, 60, 8))).astype(dtype)
    V = rng.standard_normal((3, 60, 4)).astype(dtype)
    r = approximate(Q, K, V, "topk", top_k=k, causal=causal)
    assert r.bound.kind == "deterministic" and r.bound.norm == "fro"
    assert _actual(r, Q, K, V, causal=causal) <= r.bound.value * (1 + _SLACK)


@pytest.mark.parametrize("method", ["window", "bigbird"])
@pytest.mark.parametrize("causal", [False, True])
def test_window_bigbird_bound_holds_synthetic(rng, dtype, method, causal):
    Q = (2 * rng.standard_normal((2, 70, 8))).astype(dtype)
    K = (2 * rng.standard_normal((2, 70, 8))).astype(dtype)
    V = rng.standard_normal((2, 70, 4)).astype(dtype)
    params = {"window": 5} if method == "window" else {"block_size": 8}
    r = approximate(Q, K, V, method, rng=rng, causal=causal, error_bound="exact", **params)
    assert r.bound.kind == "deterministic"
    assert _actual(r, Q, K, V, causal=causal) <= r.bound.value * (1 + _SLACK)
    assert approximate(Q, K, V, method, rng=rng, causal=causal, **params).bound is None


@pytest.fixture(scope="module", params=["minilm", "smollm2"])
def real_heads(request):
    s = load_sample(request.param)
    return s.Q[:2, :256], s.K[:2, :256], s.V[:2, :256], s.scale, s.causal


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("topk", {"top_k": 16}),
        ("topk", {"top_k": 64}),
        ("window", {"window": 32, "error_bound": "exact"}),
        ("bigbird", {"error_bound": "exact"}),
    ],
)
def test_bounds_hold_on_real_heads(real_heads, seed, method, params):
    Q, K, V, scale, causal = real_heads
    r = approximate(Q, K, V, method, rng=seed, scale=scale, causal=causal, **params)
    actual = _actual(r, Q, K, V, scale=scale, causal=causal)
    assert actual <= r.bound.value * (1 + _SLACK)


def _equality_case(m=16, kept=8, dv=3):
    """One query whose kept keys all carry +v and dropped keys -v (centroid 0)."""
    v = np.linspace(1.0, 2.0, dv)
    scores = np.concatenate([np.linspace(0.0, -1.0, m - kept), np.linspace(1.0, 0.5, kept)])
    Q = np.array([[1.0, 0.0]])
    K = np.stack([scores, np.zeros(m)], axis=1)
    V = np.vstack([np.tile(-v, (m - kept, 1)), np.tile(v, (kept, 1))])
    return Q, K, V


@pytest.mark.parametrize(
    ("method", "params"),
    [("topk", {"top_k": 8}), ("window", {"window": 7, "error_bound": "exact"})],
)
def test_negative_control_bound_is_attained(method, params):
    # Kept keys (the 8 largest scores = the 8 last positions) all have value +v, the
    # dropped ones -v: ||y - ~y|| = 2 eps ||v|| = eps (R + ||~y - c||), the bound.
    Q, K, V = _equality_case()
    r = approximate(Q, K, V, method, scale=1.0, **params)
    actual = _actual(r, Q, K, V, scale=1.0)
    assert actual > 0.05
    assert actual <= r.bound.value * (1 + _SLACK)
    assert actual > 0.5 * r.bound.value  # the halved constant fails
    assert r.bound.value / actual < 1 + 1e-9


def _topk_exact_parts(Q, K, V, scale, k, causal):
    """Exact (float64) quantities of topk's moment bound for one head."""
    from attention.sparse import _value_geometry

    q, kk, v = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    S = q @ kk.T * scale
    if causal:
        S[np.triu_indices(S.shape[0], 1 + S.shape[1] - S.shape[0])] = -np.inf
    P = np.exp(S - S.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    keep = np.zeros(S.shape, dtype=bool)
    for i in range(S.shape[0]):
        keep[i, np.argsort(-S[i], kind="stable")[: min(k, int(np.isfinite(S[i]).sum()))]] = True
    eps = np.maximum(1 - np.where(keep, P, 0).sum(1), 0.0)
    Yt = np.where(keep, P, 0) @ v / (1 - eps)[:, None]
    c, u, aux, _ = _value_geometry(v, np.float64)
    T = np.where(keep, 0, P) @ aux.T
    return np.linalg.norm(P @ v - Yt, axis=1), eps, T, Yt, c, u


@pytest.mark.parametrize("k", [2, 8, 32])
def test_topk_moment_rows_hold_with_negative_controls(rng, k):
    from attention.sparse import _moment_rows

    s = load_sample("smollm2")
    cases = [(s.Q[3, :200], s.K[3, :200], s.V[3, :200], s.scale, True)]
    cases.append(
        (
            2 * rng.standard_normal((60, 8)),
            2 * rng.standard_normal((80, 8)),
            rng.standard_normal((80, 5)) + 3.0,
            1.0,
            False,
        )
    )
    fails_t1 = fails_a = 0
    for Q, K, V, scale, causal in cases:
        act, eps, T, Yt, c, u = _topk_exact_parts(Q, K, V, scale, k, causal)
        rows = _moment_rows(eps, eps, T, 1.0, Yt, c, u)
        assert np.all(act <= rows * (1 + _SLACK) + 1e-12)
        # negative controls: without the Jensen term (T1), or without the u part (A)
        no_t1 = _moment_rows(eps, eps, T * [0.0, 1.0, 1.0], 1.0, Yt, c, u)
        dy = c - Yt
        h = np.linalg.norm(dy - (dy @ u)[:, None] * u, axis=1)
        no_a = np.sqrt(eps * T[:, 0]) + eps * h
        fails_t1 += int(np.sum(act > no_t1 * (1 + 1e-6) + 1e-12))
        fails_a += int(np.sum(act > no_a * (1 + 1e-6) + 1e-12))
    assert fails_t1 > 0 and fails_a > 0


def test_topk_moment_bound_tighter_on_real_heads(real_heads):
    Q, K, V, scale, causal = real_heads
    r = approximate(Q, K, V, "topk", top_k=16, scale=scale, causal=causal)
    actual = _actual(r, Q, K, V, scale=scale, causal=causal)
    # the dropped-mass bound eps (R + ||~y - c||), exact eps, the same value ball
    from attention._core import value_ball

    old = 0.0
    for g in range(Q.shape[0]):
        _, eps, _, Yt, _, _ = _topk_exact_parts(Q[g], K[g], V[g], scale, 16, causal)
        c, R, _ = value_ball(np.asarray(V[g], dtype=np.float64))
        old += np.sum((eps * (R + np.linalg.norm(Yt - c, axis=1))) ** 2)
    assert actual <= r.bound.value * (1 + _SLACK)
    assert r.bound.value < 0.9 * np.sqrt(old)
