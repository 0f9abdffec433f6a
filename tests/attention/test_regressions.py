"""Regression tests: reproducers of defects found by fuzzing and by new users.

Each test failed before its fix: an uncaught arithmetic error, a NaN or a violated
deterministic bound at large logits, a default that fails on small inputs, a huge
parameter that hangs or exhausts memory.
"""

import json
import warnings

import numpy as np
import pytest

from attention import approximate, certify, methods, reference_attention
from attention.tensor import collaborative_heads


def _err(res, Y, norm="fro"):
    E = res.output.astype(np.float64) - Y
    if norm == "fro":
        return float(np.linalg.norm(E.ravel()))
    return float(np.sqrt(np.max(np.sum(E * E, axis=-1))))


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return approximate(*args, **kwargs)


# --- the PSD lift (Skyformer, WildCat) at large logits ---------------------------------


@pytest.mark.parametrize("low", [-2.5, 2.62])
def test_wildcat_query_far_from_the_keys(low):
    # The reproducer (low=-2.5) and a query whose Gaussian kernel row underflows
    # (low=2.62): the output was 0 where exact attention gives 1e-3.
    Q = np.array([[-282.0]])
    K = np.linspace(low, low + (3.6 if low < 0 else 0.02), 17)[:, None]
    V = np.full((17, 1), 1e-3)
    Y = reference_attention(Q, K, V, scale=1.0)
    for seed in range(5):
        res = _quiet(Q, K, V, "wildcat", rank=12, scale=1.0, rng=seed)
        assert np.isfinite(res.output).all()
        assert _err(res, Y) <= res.bound.value
        np.testing.assert_allclose(res.output, Y, rtol=1e-6)


@pytest.mark.parametrize("method", ["wildcat", "skyformer"])
@pytest.mark.parametrize("factor", [30.0, 300.0, 1000.0])
def test_lift_methods_at_large_logits(method, factor):
    """No OverflowError, no NaN; the deterministic bound holds (it may be trivial)."""
    for seed in (2, 4, 5):
        r = np.random.default_rng(seed)
        Q, K, V = (r.standard_normal((16, 4)) for _ in range(3))
        kw = {"rank": 3} if method == "wildcat" else {}
        res = _quiet(factor * Q, K, V, method, rng=seed, **kw)
        Y = reference_attention(factor * Q, K, V)
        assert np.isfinite(res.output).all()
        assert np.isfinite(res.bound.value) and res.bound.kind == "deterministic"
        assert _err(res, Y) <= res.bound.value * (1 + 1e-9)


def test_skyformer_inaccurate_lift_gives_a_result():
    # Tiny queries, large keys and a huge scale: the Gaussian kernel of the lift is
    # computed with a relative error of order eps * scale * ||k||^2.
    Q = np.full((3, 2), 2.5e-15)
    K = np.array([[3.3, -1.0], [0.5, 2.0]])
    V = np.ones((2, 3))
    res = _quiet(Q, K, V, "skyformer", scale=9.7e13, rng=3)
    Y = reference_attention(Q, K, V, scale=9.7e13)
    assert np.isfinite(res.output).all()
    assert _err(res, Y) <= res.bound.value * (1 + 1e-9)


# --- random features and polynomial methods at large logits ----------------------------


@pytest.mark.parametrize("method", ["performer", "scatterbrain"])
def test_random_features_large_logits_no_overflow_error(method):
    for seed in range(3):
        r = np.random.default_rng(seed)
        Q, K, V = (r.standard_normal((64, 16)) for _ in range(3))
        res = _quiet(30 * Q, K, V, method, rng=seed)
        assert np.isfinite(res.output).all()
        assert res.bound is not None and not np.isnan(res.bound.value)


@pytest.mark.parametrize("method", ["taylor", "polysketch", "tensorsketch"])
def test_polynomial_methods_at_huge_scale(method, rng):
    Q, K, V = (rng.standard_normal((8, 4)) for _ in range(3))
    try:
        res = _quiet(Q, K, V, method, scale=1e300, rng=0)
    except ValueError as exc:
        assert "scale" in str(exc)
        return
    assert np.isfinite(res.output).all()
    if res.bound is not None:
        assert not np.isnan(res.bound.value)
        if res.bound.kind == "deterministic":
            assert _err(res, reference_attention(Q, K, V, scale=1e300)) <= res.bound.value


def test_taylor_extreme_norms_float32():
    # ||q||^2 overflowed float32 and 0 * inf gave a NaN "B".
    Q = np.array([[1.2573022e29]], np.float32)
    K = np.array([[-1.3210486e-31]], np.float32)
    V = np.array([[0.64]], np.float32)
    res = _quiet(Q, K, V, "taylor")
    np.testing.assert_allclose(res.output, V, rtol=1e-6)


def test_csalr_output_stays_finite_at_large_logits():
    # A tiny approximate normaliser made the float64 ratio exceed the float32 range.
    Q = np.array([[0.12573022], [-0.13210486], [0.64042264]], np.float32)
    K = np.array([[0.1049], [-0.53567], [0.361595], [1.304], [0.947081], [-0.703735]], np.float32)
    V = np.array([[-1.26542], [-0.623274], [0.041326], [-2.32503], [-0.218792], [-1.24591]])
    res = _quiet(Q, K, V.astype(np.float32), "csalr", scale=11974.454107288986, rng=0)
    assert np.isfinite(res.output).all()
    assert np.all(res.output >= V.min() - 1e-6) and np.all(res.output <= V.max() + 1e-6)


@pytest.mark.parametrize("method", ["window", "bigbird", "topk"])
def test_sparse_float32_scores_out_of_float32_range(method):
    # The scale cast to float32 overflowed: NaN (window) or a zero row (bigbird).
    Q = np.array([[1.2573022e-31], [3e-31]], np.float32)
    K = np.array([[-1.3210486e-31], [2e-31]], np.float32)
    V = np.array([[0.64042264], [-1.0]], np.float32)
    scale = 6.020624242810385e61
    res = _quiet(Q, K, V, method, scale=scale, rng=0)
    Y = reference_attention(*(x.astype(np.float64) for x in (Q, K, V)), scale=scale)
    np.testing.assert_allclose(res.output, Y, rtol=1e-5)


# --- defaults on small inputs ----------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 8])
def test_prescoring_small_key_sets(m, rng):
    Q = rng.standard_normal((4, 4))
    K, V = rng.standard_normal((m, 4)), rng.standard_normal((m, 4))
    res = _quiet(Q, K, V, "prescoring", rng=0)
    assert np.isfinite(res.output).all()
    if m == 1:
        np.testing.assert_allclose(res.output, np.repeat(V, 4, axis=0))


@pytest.mark.parametrize("method", ["routing", "loki"])
def test_small_inputs_with_defaults(method, rng):
    Q, K, V = (rng.standard_normal((2, 3)) for _ in range(3))
    res = _quiet(Q, K[:1], V[:1], method, rng=0)
    np.testing.assert_allclose(res.output, np.repeat(V[:1], 2, axis=0))


def test_reformer_single_key_is_seen_by_every_query():
    # 40 queries, one key: chunks holding only queries left rows with zero output.
    r = np.random.default_rng(3)
    Q, K, V = r.standard_normal((40, 4)), r.standard_normal((1, 4)), r.standard_normal((1, 4))
    for seed in (3, 0, 1):
        res = _quiet(Q, K, V, "reformer", rng=seed)
        np.testing.assert_allclose(res.output, np.repeat(V, 40, axis=0))


def test_certify_one_row_is_finite(rng):
    Q, K, V = (rng.standard_normal((4, 4)) for _ in range(3))
    res = _quiet(Q, K, V, "performer", rng=0)
    cert = certify(res, Q, K, V, n_rows=1, rng=0)
    assert np.isfinite(cert.relative_fro)
    Y = reference_attention(Q, K, V)
    rel = np.linalg.norm(res.output - Y) / np.linalg.norm(Y)
    assert rel <= cert.relative_fro


# --- huge parameters: clamped or refused before allocating -----------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("bigbird", {"n_window": 10**9}),
        ("levattention", {"window": 10**6}),
        ("reformer", {"n_buckets": 10**9}),
    ],
)
def test_huge_budgets_are_clamped(method, params, rng):
    Q, K, V = (rng.standard_normal((16, 4)) for _ in range(3))
    res = _quiet(Q, K, V, method, rng=0, **params)
    assert np.isfinite(res.output).all()


def test_huge_taylor_degree_is_refused(rng):
    Q, K, V = (rng.standard_normal((8, 4)) for _ in range(3))
    with pytest.raises(ValueError, match="degree"):
        approximate(Q, K, V, "taylor", degree=10**6)


# --- attention.tensor -------------------------------------------------------------------


def test_collaborative_heads_zero_weights():
    W = np.zeros((3, 8, 4))
    res = collaborative_heads(W, W, 2, rng=0)
    assert res.W_Q.shape == (8, 2) and res.relative_error == 0.0
    assert np.isfinite(res.mixing).all()


def test_collaborative_heads_rank_deficient_weights():
    # A rank-one head stack with R > 1: ALS met a singular normal matrix.
    u = np.arange(1.0, 9.0)[None, :, None]
    W = np.broadcast_to(u, (3, 8, 4)).copy()
    res = collaborative_heads(W, W, 3, rng=0)
    assert np.isfinite(res.W_Q).all() and res.relative_error < 1e-6


# --- the verify command -----------------------------------------------------------------


def test_verify_skips_methods_that_cannot_run(tmp_path, capsys):
    from attention.__main__ import main

    status = main(
        [
            "verify",
            "--data",
            "smollm2",
            "--methods",
            "loki",
            "window",
            "--draws",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    checks = json.loads((tmp_path / "verify.json").read_text())
    skipped = [c for c in checks if c["method"] == "loki"]
    assert skipped and all(c.get("skipped") and c["ok"] for c in skipped)
    assert "calibration" in skipped[0]["skipped"]
    assert "skip" in capsys.readouterr().out


def test_methods_are_enumerable():
    # The fuzz module enumerates methods(): make sure the registry is not empty.
    assert len(methods()) >= 20
