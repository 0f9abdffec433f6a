"""Tests of the row samplers: leverage scores, importance sampling, SamplingSketch."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st
from scipy.sparse.linalg import aslinearoperator

from rnla._validation import AccuracyWarning
from rnla.bounds import gaussian_embedding_size, sparse_sign_embedding_size, srht_embedding_size
from rnla.operators import dot_test
from rnla.sketch import (
    SampleResult,
    SamplingSketch,
    leverage_score_sampling,
    leverage_scores,
    row_norm_sampling,
    sampling_sketch,
    uniform_sampling,
)
from tests.conftest import tol

# ----------------------------------------------------------------------------------------
# references and test matrices
# ----------------------------------------------------------------------------------------


def ref_leverage(A, rank=None):
    """Squared row norms of the left singular vectors (numerical rank by default)."""
    U, sv, _ = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    if rank is None:
        rank = int(np.sum(sv > max(A.shape) * np.finfo(np.float64).eps * sv[0]))
    return np.sum(U[:, :rank] ** 2, axis=1)


def incoherent(rng, n, d):
    return rng.standard_normal((n, d))


def coherent(rng, n, d):
    """Gaussian rows plus ``d`` rows of leverage close to 1 and heavy-tailed row scales."""
    A = rng.standard_normal((n, d)) * rng.standard_t(2, size=(n, 1))
    A[:d] = 1e3 * np.eye(d)
    return A


def gram_samples(X, draw, R):
    """``(SX)^T SX`` for ``R`` draws, as an array (R, d, d)."""
    out = np.empty((R, X.shape[1], X.shape[1]))
    for r in range(R):
        idx, w = draw()
        SX = X[idx] * w[:, None]
        out[r] = SX.T @ SX
    return out


def z_scores(samples, target):
    """Entrywise (mean - target) / standard error over the first axis."""
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    scale = np.abs(target).max()
    return np.abs(mean - target) / np.maximum(se, 1e-12 * scale)


def amm_expected_sq_error(X, p, s):
    """Exact E||X^T X - (SX)^T SX||_F^2 for s iid draws with probabilities p."""
    row4 = np.sum(X**2, axis=1) ** 2
    keep = row4 > 0
    return (np.sum(row4[keep] / p[keep]) - np.linalg.norm(X.T @ X) ** 2) / s


# ----------------------------------------------------------------------------------------
# exact leverage scores
# ----------------------------------------------------------------------------------------


def test_exact_matches_svd_reference(dtype, rng):
    A = (incoherent(rng, 300, 6) * rng.uniform(0.1, 3.0, size=(300, 1))).astype(dtype)
    lev = leverage_scores(A)
    assert lev.dtype == dtype and lev.shape == (300,)
    atol = 1e3 * np.finfo(dtype).eps
    np.testing.assert_allclose(lev, ref_leverage(A), rtol=0, atol=atol)
    assert abs(lev.sum() - 6) < 6 * atol


def test_exact_rank_deficient_sums_to_rank(rng):
    A = rng.standard_normal((120, 3)) @ rng.standard_normal((3, 7))
    A[5] = 0.0
    lev = leverage_scores(A)
    assert lev.sum() == pytest.approx(3.0, abs=1e-10)
    assert lev[5] == 0.0
    np.testing.assert_allclose(lev, ref_leverage(A), atol=1e-10)


def test_exact_wide_full_row_rank_is_all_ones(rng):
    np.testing.assert_allclose(leverage_scores(rng.standard_normal((4, 9))), 1.0, atol=1e-12)


def test_exact_zero_matrix_has_zero_scores():
    np.testing.assert_array_equal(leverage_scores(np.zeros((5, 3))), 0.0)


def test_exact_rank_k_uses_top_singular_vectors(rng):
    U, _ = np.linalg.qr(rng.standard_normal((80, 5)))
    V, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    A = U @ np.diag([10.0, 5.0, 2.0, 1.0, 0.5]) @ V.T
    np.testing.assert_allclose(
        leverage_scores(A, rank=2), np.sum(U[:, :2] ** 2, axis=1), atol=1e-12
    )


def test_exact_rank_beyond_numerical_rank_warns(rng):
    A = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 5))
    with pytest.warns(AccuracyWarning, match="exceeds the numerical rank"):
        leverage_scores(A, rank=4)


def test_tol_sets_the_numerical_rank(rng):
    Q, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    A = Q @ np.diag([1.0, 1e-9])
    assert leverage_scores(A).sum() == pytest.approx(2.0)
    assert leverage_scores(A, tol=1e-6).sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------
# sketched leverage scores (DMMW)
# ----------------------------------------------------------------------------------------

# n per sketch: the smallest round n for which the proven first-stage size is < n.
N_SK = {"gaussian": 4000, "sparse_sign": 4000, "srht": 20_000}
D_SK = 5


def _proven_k1(sketch, eps, delta):
    """The first-stage size of the documented guarantee (JL stage skipped for d = 5)."""
    eps1 = eps / (1 + eps)
    if sketch == "gaussian":
        return gaussian_embedding_size(D_SK, eps=eps1, delta=delta).sketch_size
    if sketch == "sparse_sign":
        return sparse_sign_embedding_size(D_SK, eps=eps1, delta=delta).sketch_size
    return srht_embedding_size(D_SK, N_SK["srht"], eps=eps1, delta=delta).sketch_size


@pytest.mark.parametrize("make", [incoherent, coherent], ids=["incoherent", "coherent"])
@pytest.mark.parametrize("sketch", ["gaussian", "sparse_sign", "srht"])
def test_sketched_within_eps_at_documented_sizes(sketch, make, seed):
    eps, n = 0.5, N_SK[sketch]
    # The documented sizes are genuinely sketching (k1 < n), not the exact fallback.
    assert _proven_k1(sketch, eps, 0.1) < n
    for trial in range(3):
        rng = np.random.default_rng([seed, trial])
        A = make(rng, n, D_SK)
        exact = leverage_scores(A)
        approx = leverage_scores(A, method="sketched", sketch=sketch, eps=eps, rng=rng)
        rel = np.abs(approx / exact - 1.0)
        assert rel.max() <= eps, f"trial {trial}: max relative error {rel.max():.3f}"
        assert rel.max() > 0.0  # a sketch, not the exact scores


def test_sketched_too_small_sketch_is_visibly_worse(seed):
    """Negative control: k1 = d + 1 rows violate the embedding assumption."""
    rng = np.random.default_rng(seed)
    A = coherent(rng, 4000, D_SK)
    exact = leverage_scores(A)
    approx = leverage_scores(
        A, method="sketched", sketch="gaussian", sketch_size=D_SK + 1, rng=rng
    )
    assert np.abs(approx / exact - 1.0).max() > 0.5


def test_sketched_jl_stage_scales_correctly(seed):
    """With the same seed, Pi_1 is shared; the JL ratios are chi2_r2 / r2 row by row."""
    rng = np.random.default_rng(seed)
    A = incoherent(rng, 3000, 30)
    kw = dict(method="sketched", sketch="sparse_sign", sketch_size=600)
    stage1 = leverage_scores(A, **kw, rng=seed + 1000)
    full = leverage_scores(A, **kw, jl_dim=10, rng=seed + 1000)
    ratio = full / stage1
    # mean over rows is tr(Pi2 Pi2^T C) ~ chi2_300/300 (sd 0.08): 0.4 is ~5 sd
    assert abs(ratio.mean() - 1.0) < 0.4
    assert ratio.std() > 0.2  # chi2_10/10 has sd 0.45: the JL stage really ran
    # negative control: without the 1/sqrt(r2) scaling the mean would be r2 = 10.
    assert abs(10 * ratio.mean() - 1.0) > 0.4


def test_sketched_rank_deficient(seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((4000, 3)) @ rng.standard_normal((3, 6))
    approx = leverage_scores(A, method="sketched", sketch="gaussian", rng=rng)
    exact = leverage_scores(A)
    assert exact.sum() == pytest.approx(3.0)
    np.testing.assert_allclose(approx, exact, rtol=0.5)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sketched_sparse_matches_dense(fmt, dtype, seed):
    rng = np.random.default_rng(seed)
    A = sp.random(3000, 6, density=0.3, format=fmt, random_state=rng, dtype=dtype)
    kw = dict(method="sketched", sketch="sparse_sign", sketch_size=200)
    lev_sparse = leverage_scores(A, **kw, rng=seed)
    lev_dense = leverage_scores(A.toarray(), **kw, rng=seed)
    assert lev_sparse.dtype == dtype
    np.testing.assert_allclose(lev_sparse, lev_dense, rtol=1e3 * np.finfo(dtype).eps, atol=1e-6)


def test_sketched_small_n_falls_back_to_exact(rng):
    A = rng.standard_normal((300, 5))
    np.testing.assert_allclose(
        leverage_scores(A, method="sketched", rng=rng), leverage_scores(A), atol=1e-12
    )


def test_sketched_float32(seed):
    A = incoherent(np.random.default_rng(seed), 2000, 4).astype(np.float32)
    lev = leverage_scores(A, method="sketched", sketch="gaussian", sketch_size=200, rng=seed)
    assert lev.dtype == np.float32
    np.testing.assert_allclose(lev, ref_leverage(A), rtol=0.8)


# ----------------------------------------------------------------------------------------
# samplers: unbiasedness, AMM error, embedding
# ----------------------------------------------------------------------------------------

R_MC = 2000


def _mc_matrix(rng, n=40, d=3):
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, size=(n, 1))
    X[:2] *= 8.0  # a few heavy rows, so that replace=False has certainty units
    return X


def _draw_fn(name, X, s, replace, gen):
    n = X.shape[0]
    if name == "uniform":
        return lambda: uniform_sampling(n, s, replace=replace, rng=gen)
    if name == "row_norm":
        return lambda: row_norm_sampling(X, s, replace=replace, rng=gen)
    return lambda: leverage_score_sampling(X, s, replace=replace, rng=gen)


@pytest.mark.parametrize("replace", [True, False], ids=["replace", "no-replace"])
@pytest.mark.parametrize("name", ["uniform", "row_norm", "leverage"])
def test_gram_estimate_is_unbiased(name, replace, seed):
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng)
    G = gram_samples(X, _draw_fn(name, X, 8, replace, rng), R_MC)
    assert z_scores(G, X.T @ X).max() < 4.5


@pytest.mark.parametrize("name", ["row_norm", "leverage"])
def test_unweighted_gram_estimate_is_biased(name, seed):
    """Negative control: dropping the weights gives a visibly biased estimate."""
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng)
    draw = _draw_fn(name, X, 8, True, rng)

    def unweighted():
        idx, w = draw()
        return idx, np.ones_like(w)

    G = gram_samples(X, unweighted, R_MC)
    assert z_scores(G, X.T @ X).max() > 10


def test_no_replace_needs_inclusion_weights(seed):
    """Negative control: with-replacement weights on a without-replacement sample are biased."""
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng)
    X[0] *= 30.0 / np.linalg.norm(X[0])  # certainty unit, s p_0 >> 1: weightings differ
    s = 8
    p = np.sum(X**2, axis=1) / np.sum(X**2)
    assert s * p[0] > 2.0

    def wrong():
        idx, _ = row_norm_sampling(X, s, replace=False, rng=rng)
        return idx, 1.0 / np.sqrt(s * p[idx])

    G = gram_samples(X, wrong, R_MC)
    assert z_scores(G, X.T @ X).max() > 10


def _probabilities(name, X):
    if name == "uniform":
        return np.full(X.shape[0], 1.0 / X.shape[0])
    if name == "row_norm":
        return np.sum(X**2, axis=1) / np.sum(X**2)
    lev = ref_leverage(X)
    return lev / lev.sum()


@pytest.mark.parametrize("name", ["uniform", "row_norm", "leverage"])
def test_amm_error_matches_exact_expectation(name, seed):
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng, n=60, d=4)
    s = 10
    G = gram_samples(X, _draw_fn(name, X, s, True, rng), R_MC)
    err2 = np.sum((G - X.T @ X) ** 2, axis=(1, 2))
    expected = amm_expected_sq_error(X, _probabilities(name, X), s)
    se = err2.std(ddof=1) / math.sqrt(R_MC)
    assert abs(err2.mean() - expected) < 4 * se
    if name == "row_norm":
        bound = np.sum(X**2) ** 2 / s
        # the DKM bound ||X||_F^4 / s: exact formula below it, MC mean too (3 SE margin)
        assert expected <= bound
        assert err2.mean() <= bound + 3 * se


def test_amm_expectation_test_can_fail(seed):
    """Negative control: uniform sampling's error does not match the row-norm formula,
    and neither does the weaker expression (||X||_F^4 - sum ||x_i||^4)/s."""
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng, n=60, d=4)
    X += 2.0  # correlated rows: ||X^T X||_F^2 >> sum ||x_i||^4
    s = 10
    p_rn = _probabilities("row_norm", X)
    G = gram_samples(X, _draw_fn("uniform", X, s, True, rng), R_MC)
    err2 = np.sum((G - X.T @ X) ** 2, axis=(1, 2))
    se = err2.std(ddof=1) / math.sqrt(R_MC)
    assert abs(err2.mean() - amm_expected_sq_error(X, p_rn, s)) > 4 * se

    G = gram_samples(X, _draw_fn("row_norm", X, s, True, rng), R_MC)
    err2 = np.sum((G - X.T @ X) ** 2, axis=(1, 2))
    se = err2.std(ddof=1) / math.sqrt(R_MC)
    weak = (np.sum(X**2) ** 2 - np.sum(np.sum(X**2, axis=1) ** 2)) / s
    assert abs(err2.mean() - weak) > 4 * se


def _embedding_distortion(U, idx, w):
    SU = U[idx] * w[:, None]
    return np.abs(np.linalg.eigvalsh(SU.T @ SU - np.eye(U.shape[1]))).max()


def test_leverage_sampling_embedding_bound(seed):
    """Matrix Bernstein size s >= 2(r-1)(1+eps/3) ln(2r/delta)/eps^2: a binomial test of
    the failure rate against delta, and uniform sampling as the negative control."""
    rng = np.random.default_rng(seed)
    n, r, eps, delta, R = 2000, 4, 0.5, 0.1, 100
    A = 0.1 * rng.standard_normal((n, r))
    A[:r] += 10.0 * np.eye(r)  # coherent: leverage ~0.83 on the first rows
    U, _ = np.linalg.qr(A)
    s = math.ceil(2 * (r - 1) * (1 + eps / 3) * math.log(2 * r / delta) / eps**2)
    critical = st.binom.ppf(1 - 1e-3, R, delta)
    fails = sum(
        _embedding_distortion(U, *leverage_score_sampling(A, s, rng=rng)) >= eps for _ in range(R)
    )
    assert fails <= critical
    fails_uniform = sum(
        _embedding_distortion(U, *uniform_sampling(n, s, rng=rng)) >= eps for _ in range(R)
    )
    assert fails_uniform > critical


# ----------------------------------------------------------------------------------------
# samplers: structure of the results
# ----------------------------------------------------------------------------------------


def ref_inclusion_probabilities(p, s):
    """pi_i = min(1, c p_i) with sum(pi) = s, c found by bisection (independent of the
    sorting algorithm of the implementation)."""
    lo, hi = 0.0, s / p[p > 0].min()
    for _ in range(200):
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if np.minimum(1.0, c * p).sum() < s else (lo, c)
    return np.minimum(1.0, hi * p)


def test_without_replacement_inclusion_frequencies(seed):
    """Systematic sampling includes row i with probability min(1, c p_i), sum = s."""
    rng = np.random.default_rng(seed)
    X = _mc_matrix(rng)
    s, R = 8, 2000
    p = np.sum(X**2, axis=1) / np.sum(X**2)
    pi = ref_inclusion_probabilities(p, s)
    assert np.any(pi == 1.0)  # the heavy rows are certainty units
    counts = np.zeros(X.shape[0])
    for _ in range(R):
        idx, w = row_norm_sampling(X, s, replace=False, rng=rng)
        assert idx.size == s and np.all(np.diff(idx) > 0)
        np.testing.assert_allclose(w, 1.0 / np.sqrt(pi[idx]), rtol=1e-9)
        counts[idx] += 1
    se = np.sqrt(pi * (1 - pi) / R)
    assert np.all(np.abs(counts / R - pi) <= 4.5 * se + 1e-12)


def test_zero_rows_are_never_sampled(rng):
    X = rng.standard_normal((30, 2))
    X[::2] = 0.0
    for replace in (True, False):
        idx, w = row_norm_sampling(X, 10, replace=replace, rng=rng)
        assert np.all(idx % 2 == 1) and np.all(np.isfinite(w))


def test_sample_result_types_and_shapes(dtype, rng):
    X = rng.standard_normal((50, 3)).astype(dtype)
    X_before = X.copy()
    for res in (
        row_norm_sampling(X, 7, rng=rng),
        leverage_score_sampling(X, 7, rng=rng),
        leverage_score_sampling(X, 7, method="sketched", rng=rng),
        uniform_sampling(50, 7, rng=rng),
    ):
        assert isinstance(res, SampleResult)
        assert res.indices.dtype == np.int64 and res.indices.shape == (7,)
        assert res.weights.dtype in (np.float64, np.dtype(dtype)) and res.weights.shape == (7,)
        assert np.all((res.indices >= 0) & (res.indices < 50))
    np.testing.assert_array_equal(X, X_before)


def test_uniform_weights(rng):
    for replace in (True, False):
        idx, w = uniform_sampling(20, 5, replace=replace, rng=rng)
        np.testing.assert_allclose(w, 2.0)
    idx, _ = uniform_sampling(20, 20, replace=False, rng=rng)
    np.testing.assert_array_equal(idx, np.arange(20))


def test_row_norms_do_not_overflow(rng):
    X = 1e200 * rng.standard_normal((20, 3))
    _, w = row_norm_sampling(X, 5, rng=rng)
    assert np.all(np.isfinite(w))


def test_sparse_row_norm_sampling_matches_dense(rng):
    X = sp.random(200, 5, density=0.2, format="csc", random_state=rng)
    a = row_norm_sampling(X, 20, rng=7)
    b = row_norm_sampling(X.toarray(), 20, rng=7)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)


@pytest.mark.parametrize("replace", [True, False])
def test_reproducible_with_same_seed(replace, rng):
    X = rng.standard_normal((100, 4))
    calls = [
        lambda r: row_norm_sampling(X, 10, replace=replace, rng=r),
        lambda r: leverage_score_sampling(X, 10, replace=replace, rng=r),
        lambda r: uniform_sampling(100, 10, replace=replace, rng=r),
    ]
    for call in calls:
        a, b, c = call(3), call(3), call(4)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert not np.array_equal(a.indices, c.indices)
    A = rng.standard_normal((3000, 4))
    kw = dict(method="sketched", sketch_size=100, jl_dim=2)
    np.testing.assert_array_equal(leverage_scores(A, **kw, rng=5), leverage_scores(A, **kw, rng=5))


# ----------------------------------------------------------------------------------------
# SamplingSketch
# ----------------------------------------------------------------------------------------


def _sketch_with_duplicates(rng, n=30):
    idx = np.array([3, 0, 3, 29, 7, 3])
    return SamplingSketch(idx, rng.uniform(0.5, 2.0, size=idx.size), n)


def test_sampling_sketch_dot_test(rng):
    S = _sketch_with_duplicates(rng)
    assert dot_test(S, rng=rng).passed
    assert dot_test(aslinearoperator(S.todense()), rng=rng).passed


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_sampling_sketch_apply_matches_dense(fmt, dtype, rng):
    S = _sketch_with_duplicates(rng)
    A = rng.standard_normal((30, 4)).astype(dtype)
    A[rng.random((30, 4)) < 0.5] = 0.0
    A_in = A if fmt == "dense" else sp.csr_matrix(A).asformat(fmt)
    out = S @ A_in
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (6, 4)
    ref = S.todense() @ A.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=10 * np.finfo(dtype).eps)
    np.testing.assert_allclose(S @ A[:, 0], ref[:, 0], rtol=10 * np.finfo(dtype).eps)


def test_sampling_sketch_adjoint_accumulates_duplicates(dtype, rng):
    S = _sketch_with_duplicates(rng)
    Y = rng.standard_normal((6, 3)).astype(dtype)
    out = S.T @ Y
    assert out.dtype == dtype
    # Duplicates add up with cancellation: the error scale is |S|^T |Y|, not |S^T Y|.
    St = S.todense().T
    atol = 10 * np.finfo(dtype).eps * (np.abs(St) @ np.abs(Y.astype(np.float64)))
    assert np.all(np.abs(out - St @ Y.astype(np.float64)) <= atol)
    assert np.count_nonzero(np.any(out != 0, axis=1)) == 4  # rows 0, 3, 7, 29


def test_sampling_sketch_from_result(rng):
    X = rng.standard_normal((100, 3))
    res = row_norm_sampling(X, 12, rng=rng)
    S = sampling_sketch(res, 100)
    assert S.shape == (12, 100)
    np.testing.assert_allclose(S @ X, X[res.indices] * res.weights[:, None])
    assert "distinct=" in repr(S)


def test_sampling_sketch_is_immutable(rng):
    idx, w = np.array([1, 2]), np.array([1.0, 2.0])
    S = SamplingSketch(idx, w, 5)
    idx[0], w[0] = 4, 9.0  # the caller's arrays may change; the operator does not
    np.testing.assert_array_equal(S.indices, [1, 2])
    with pytest.raises(ValueError):
        S.weights[0] = 3.0


@pytest.mark.parametrize(
    ("indices", "weights", "n", "exc", "match"),
    [
        ([0, 5], [1.0, 1.0], 5, ValueError, r"indices\[1\]=5 is out of range"),
        ([-1], [1.0], 5, ValueError, "out of range"),
        ([0, 1], [1.0], 5, ValueError, "same length"),
        ([], [], 5, ValueError, "non-empty"),
        ([0.0], [1.0], 5, TypeError, "integers"),
        ([0], [np.nan], 5, ValueError, "finite"),
        ([0], [1.0], 0, ValueError, "n=0"),
    ],
)
def test_sampling_sketch_bad_input(indices, weights, n, exc, match):
    with pytest.raises(exc, match=match):
        SamplingSketch(indices, weights, n)


def test_sampling_sketch_wrong_rows(rng):
    S = _sketch_with_duplicates(rng)
    with pytest.raises(ValueError, match="n=30 rows"):
        S @ np.ones((29, 2))
    with pytest.raises(TypeError, match="SampleResult"):
        sampling_sketch(5, 10)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------

_X = np.arange(12.0).reshape(6, 2)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: row_norm_sampling(_X, 0), ValueError, "s=0 must be >= 1"),
        (lambda: row_norm_sampling(_X, 2.0), TypeError, "s must be an integer"),
        (lambda: leverage_score_sampling(_X, -1), ValueError, "s=-1 must be >= 1"),
        (lambda: uniform_sampling(5, 0), ValueError, "s=0 must be >= 1"),
        (lambda: uniform_sampling(0, 1), ValueError, "n=0 must be >= 1"),
        (lambda: uniform_sampling(5, 6, replace=False), ValueError, "s=6 must be <= n=5"),
        (lambda: row_norm_sampling(_X, 7, replace=False), ValueError, "s=7 must be <= 6"),
        (lambda: row_norm_sampling(_X, 2, replace=1), TypeError, "replace must be a bool"),
        (lambda: row_norm_sampling(np.zeros((4, 2)), 2), ValueError, "X is zero"),
        (lambda: leverage_score_sampling(np.zeros((4, 2)), 2), ValueError, "A is zero"),
        (lambda: row_norm_sampling(np.ones(5), 2), ValueError, "2-dimensional"),
        (lambda: leverage_scores(np.ones(5)), ValueError, "2-dimensional"),
        (lambda: row_norm_sampling(np.full((3, 2), np.nan), 2), ValueError, "finite"),
        (lambda: leverage_scores(np.array([[1.0, np.inf]])), ValueError, "finite"),
        (lambda: leverage_scores(_X + 1j), TypeError, "complex"),
        (lambda: row_norm_sampling(_X + 1j, 2), TypeError, "complex"),
        (lambda: leverage_scores(_X, method="svd"), ValueError, "'exact', 'sketched'"),
        (
            lambda: leverage_score_sampling(_X, 2, method="qr"),
            ValueError,
            "'exact', 'sketched'",
        ),
        (
            lambda: leverage_scores(_X, method="sketched", sketch="fjlt"),
            ValueError,
            "'sparse_sign', 'gaussian', 'srht'",
        ),
        (lambda: leverage_scores(_X, rank=3), ValueError, "rank=3 must satisfy"),
        (lambda: leverage_scores(_X, method="sketched", rank=1), ValueError, "method='exact'"),
        (lambda: leverage_scores(_X, method="sketched", eps=1.5), ValueError, "eps=1.5"),
        (lambda: leverage_scores(_X, method="sketched", sketch_size=0), ValueError, "sketch_size"),
        (lambda: leverage_scores(_X, tol=2.0), ValueError, "tol=2.0"),
        (lambda: leverage_scores(sp.csr_matrix(_X)), TypeError, "method='sketched'"),
        (lambda: leverage_scores(aslinearoperator(_X)), TypeError, "LinearOperator"),
        (lambda: row_norm_sampling(_X, 2, rng="seed"), TypeError, "rng"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_not_mutated(rng):
    A = rng.standard_normal((400, 3))
    A.setflags(write=False)  # any in-place write would raise
    A_sp = sp.csr_matrix(A)
    data_before = A_sp.data.copy()
    leverage_scores(A)
    leverage_scores(A, rank=2)
    leverage_scores(A, method="sketched", sketch_size=30, rng=rng)
    leverage_scores(A_sp, method="sketched", sketch_size=30, rng=rng)
    leverage_score_sampling(A, 5, replace=False, rng=rng)
    row_norm_sampling(A, 5, rng=rng)
    row_norm_sampling(A_sp, 5, rng=rng)
    SamplingSketch([0, 1], [1.0, 1.0], 400) @ A
    np.testing.assert_array_equal(A_sp.data, data_before)


@pytest.mark.parametrize("method", ["exact", "sketched"])
@pytest.mark.parametrize("replace", [True, False])
def test_leverage_score_sampling_weights_follow_dtype(dtype, rng, method, replace):
    # Fuzz finding: float32 A gave float64 weights. They are now float32 for float32 A,
    # equal to the float64 computation rounded once (same indices, same draws).
    A = rng.standard_normal((60, 4)).astype(dtype)
    A[::7] *= 1e-30  # tiny rows: tiny scores, the largest weights
    A0 = A.copy()
    res = leverage_score_sampling(A, 9, method=method, replace=replace, rng=5)
    assert res.weights.dtype == np.dtype(dtype)
    assert np.isfinite(res.weights).all() and (res.weights > 0).all()
    np.testing.assert_array_equal(A, A0)
    # Reference: the same probabilities in plain NumPy (float64), exact scores only.
    if method == "exact":
        scores = leverage_scores(A.astype(np.float64))
        p = scores / scores.sum()
        if replace:
            ref = 1.0 / np.sqrt(9 * p[res.indices])
            np.testing.assert_allclose(res.weights, ref, rtol=tol(dtype, 1e4))
    # Negative control: row_norm_sampling keeps float64 weights (they can exceed the
    # float32 range for rows of very different norms).
    assert row_norm_sampling(A, 3, rng=0).weights.dtype == np.float64
