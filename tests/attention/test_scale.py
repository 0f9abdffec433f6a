"""The one ``scale`` rule: exact attention accepts any finite scale, approximations need > 0."""

import numpy as np
import pytest

from attention import SoftmaxMatrix, approximate, certify, methods
from attention.exact import reference_attention, softmax_attention
from attention.tensor import tpa_attention


def _qkv(rng, dtype, n=9, m=13, d=4, dv=3, lead=(2,)):
    Q = rng.standard_normal((*lead, n, d)).astype(dtype)
    K = rng.standard_normal((*lead, m, d)).astype(dtype)
    V = rng.standard_normal((*lead, m, dv)).astype(dtype)
    return Q, K, V


def _numpy_attention(Q, K, V, scale, keep):
    """Plain-NumPy oracle: softmax over the visible keys, float64."""
    S = np.einsum("...nd,...md->...nm", Q, K).astype(np.float64) * scale
    S = np.where(keep, S, -np.inf)
    W = np.exp(S - S.max(axis=-1, keepdims=True))
    W = W / W.sum(axis=-1, keepdims=True)
    return W @ V.astype(np.float64)


def _tol(dtype):
    return 50 * np.finfo(dtype).eps


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_scale_zero_gives_uniform_weights(rng, dtype, causal):
    Q, K, V = _qkv(rng, dtype)
    n, m = Q.shape[-2], K.shape[-2]
    keep = np.ones((n, m), bool)
    if causal:
        keep = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
    # Uniform weights: each output row is the mean of the values its query sees.
    expected = np.stack([(keep @ V[h].astype(np.float64)) / keep.sum(1)[:, None] for h in (0, 1)])
    Q0, K0, V0 = Q.copy(), K.copy(), V.copy()
    Y, lse = softmax_attention(Q, K, V, scale=0.0, causal=causal, return_lse=True)
    R = reference_attention(Q, K, V, scale=0.0, causal=causal)
    assert Y.dtype == dtype and np.all(np.isfinite(Y))
    np.testing.assert_allclose(Y, expected, rtol=_tol(dtype), atol=_tol(dtype))
    np.testing.assert_allclose(R, expected, rtol=_tol(dtype), atol=_tol(dtype))
    # lse = log(number of visible keys) when every score is 0.
    np.testing.assert_allclose(lse, np.broadcast_to(np.log(keep.sum(1)), lse.shape), rtol=1e-5)
    assert np.array_equal(Q, Q0) and np.array_equal(K, K0) and np.array_equal(V, V0)


@pytest.mark.parametrize("scale", [-0.7, -3.0, 1e-300, 0.0])
def test_any_finite_scale_matches_numpy(rng, dtype, scale):
    Q, K, V = _qkv(rng, dtype)
    mask = rng.random((Q.shape[-2], K.shape[-2])) < 0.7
    mask[:, 0] = True
    expected = _numpy_attention(Q, K, V, scale, mask)
    Y = softmax_attention(Q, K, V, scale=scale, mask=mask)
    np.testing.assert_allclose(Y, expected, rtol=_tol(dtype), atol=_tol(dtype))
    np.testing.assert_allclose(
        reference_attention(Q, K, V, scale=scale, mask=mask),
        expected,
        rtol=_tol(dtype),
        atol=_tol(dtype),
    )
    # Negative control: the sign of the scale matters (the oracle is not trivially met).
    if scale < 0:
        flipped = _numpy_attention(Q, K, V, -scale, mask)
        assert not np.allclose(Y, flipped, rtol=_tol(dtype), atol=_tol(dtype))


def test_exact_method_and_certify_accept_scale_zero(rng):
    Q, K, V = _qkv(rng, np.float64)
    res = approximate(Q, K, V, "exact", scale=0.0)
    np.testing.assert_allclose(res.output, V.mean(axis=-2, keepdims=True).repeat(9, -2))
    # Every row certified exactly: the certificate is the exact error (0 up to rounding).
    cert = certify(res, Q, K, V, scale=0.0, n_rows=18, rng=0)
    assert cert.delta == 0.0 and cert.fro < 1e-12


def test_tensorised_attention_accepts_any_finite_scale(rng):
    Q, K, V = _qkv(rng, np.float64, n=10, m=10, d=8, dv=8, lead=(4,))
    out = tpa_attention(Q, K, V, 4, 4, scale=-0.5).output
    assert np.all(np.isfinite(out))


APPROXIMATE = sorted(m.name for m in methods() if m.name != "exact")


@pytest.mark.parametrize("scale", [0.0, -1.0])
@pytest.mark.parametrize("method", APPROXIMATE)
def test_approximations_reject_nonpositive_scale(rng, method, scale):
    Q, K, V = _qkv(rng, np.float64, n=16, m=16)
    with pytest.raises(ValueError, match=r"must be > 0 for approximate attention"):
        approximate(Q, K, V, method, scale=scale, rng=0)


def test_softmax_matrix_needs_positive_scale(rng):
    Q, K, _ = _qkv(rng, np.float64, lead=())
    with pytest.raises(ValueError, match=r"scale=0\.0 must be > 0"):
        SoftmaxMatrix(Q, K, scale=0.0)


@pytest.mark.parametrize(
    ("scale", "exc", "match"),
    [
        (np.nan, ValueError, "must be finite"),
        (np.inf, ValueError, "must be finite"),
        ("big", TypeError, "scale must be a real number"),
        (True, TypeError, "scale must be a real number"),
    ],
    ids=["nan", "inf", "str", "bool"],
)
def test_bad_scale_rejected_by_exact_attention(rng, scale, exc, match):
    Q, K, V = _qkv(rng, np.float64)
    with pytest.raises(exc, match=match):
        softmax_attention(Q, K, V, scale=scale)
    with pytest.raises(exc, match=match):
        reference_attention(Q, K, V, scale=scale)
