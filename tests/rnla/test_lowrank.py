"""Tests of rnla.lowrank: range finder, rSVD (subspace / Krylov), randQB, single pass,
reigh and generalized Nystrom, against dense LAPACK references."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator
from threadpoolctl import threadpool_limits

from rnla._validation import AccuracyWarning, ConvergenceWarning
from rnla.lowrank import (
    _as_op,
    _cholqr,
    _krylov_basis,
    _store_krylov_products,
    generalized_nystrom,
    randqb,
    range_finder,
    reigh,
    rsvd,
    single_pass_svd,
)
from rnla.sketch import gaussian, srht
from tests.conftest import tol


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices gain nothing from BLAS threads, and on a loaded machine OpenBLAS's
    spinning threads slow a 120 x 120 SVD down 100-fold."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


SKETCHES = ["gaussian", "rademacher", "orthogonal_gaussian", "srht", "countsketch", "sparse_sign"]


def with_spectrum(rng, m, n, s):
    """A = U diag(s) V^T with Haar-random orthonormal U (m, len(s)), V (n, len(s))."""
    d = len(s)
    U = np.linalg.qr(rng.standard_normal((m, d)))[0]
    V = np.linalg.qr(rng.standard_normal((n, d)))[0]
    return (U * s) @ V.T


def exp_decay(d, rate=8.0):
    return np.exp(-np.arange(d) / rate)


def low_rank(rng, m, n, r):
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))


def reconstruct(res):
    return (res.U * res.s) @ res.Vt


def spectral_err(A, res):
    return np.linalg.norm(A - reconstruct(res), 2)


def as_kind(A, kind):
    if kind == "dense":
        return A
    if kind == "sparse":
        return sp.csr_matrix(A)
    return aslinearoperator(A)


def assert_orthonormal_columns(Q, dtype):
    eye = np.eye(Q.shape[1])
    np.testing.assert_allclose(Q.T.astype(np.float64) @ Q, eye, atol=tol(dtype, 200))


# ---------------------------------------------------------------------------------------
# rsvd
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_rsvd_matches_lapack_on_fast_decay(method, dtype, rng):
    m, n, k = 90, 60, 6
    s = exp_decay(n, 4.0)
    A = with_spectrum(rng, m, n, s).astype(dtype)
    res = rsvd(A, k, method=method, n_iter=2, rng=rng)
    assert res.U.dtype == res.s.dtype == res.Vt.dtype == dtype
    assert res.U.shape == (m, k) and res.s.shape == (k,) and res.Vt.shape == (k, n)
    assert np.all(np.diff(res.s) <= 0)
    assert_orthonormal_columns(res.U, dtype)
    assert_orthonormal_columns(res.Vt.T, dtype)
    # Leading singular values: convergence factor (s_17 / s_6)^10 ~ 1e-12, or rounding.
    rtol = max(1e-9, tol(dtype, 1e3))
    np.testing.assert_allclose(res.s, s[:k], rtol=rtol, atol=tol(dtype, 100))
    # Rank-k error within a few percent of the optimum sigma_{k+1}.
    assert spectral_err(A.astype(np.float64), res) <= 1.05 * s[k] + tol(dtype, 100)


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_rsvd_exact_low_rank_recovery(method, dtype, rng):
    m, n, r = 70, 50, 5
    A = low_rank(rng, m, n, r).astype(dtype)
    res = rsvd(A, r, oversample=3, n_iter=1, method=method, rng=rng)
    scale = np.linalg.norm(A.astype(np.float64))
    assert np.linalg.norm(A - reconstruct(res)) <= tol(dtype, 100) * scale
    # Asking for more than the rank: extra singular values are rounding-level.
    res = rsvd(A, r + 3, method=method, n_iter=1, rng=rng)
    assert np.all(res.s[r:] <= tol(dtype, 100) * res.s[0])
    assert_orthonormal_columns(res.U, dtype)


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_rsvd_input_kinds_agree(method, rng):
    """Dense, CSR and LinearOperator input give the same factorisation for one seed."""
    A = with_spectrum(rng, 80, 50, exp_decay(50, 6.0))
    outs = [rsvd(as_kind(A, kind), 5, method=method, n_iter=1, rng=7) for kind in KINDS]
    ref = reconstruct(outs[0])
    for out in outs[1:]:
        np.testing.assert_allclose(reconstruct(out), ref, atol=1e-12)
        np.testing.assert_allclose(out.s, outs[0].s, rtol=1e-12)


KINDS = ["dense", "sparse", "operator"]


@pytest.mark.parametrize("shape", [(3000, 300), (300, 3000)])
def test_rsvd_krylov_sparse_pass_route_matches_stored_route(shape, dtype, rng):
    """Very sparse A: Rayleigh-Ritz by two extra passes instead of the stored A^T Q.

    The LinearOperator of the same matrix takes the stored-products route; both give the
    same factorisation to rounding, and the pass route makes ``2q + 4`` products.
    """
    A = sp.random(*shape, density=3e-3, format="csr", rng=rng, dtype=dtype)
    op = _as_op(A.T if shape[0] > shape[1] else A)
    assert not _store_krylov_products(op, 15, 3)  # 8 nnz < n d: the pass route
    res = rsvd(A, 10, oversample=5, n_iter=3, rng=3)
    ref = rsvd(aslinearoperator(A), 10, oversample=5, n_iter=3, rng=3)
    assert res.n_passes == 2 * 3 + 4 and ref.n_passes == 2 * 3 + 2
    assert res.U.dtype == res.s.dtype == res.Vt.dtype == dtype
    np.testing.assert_allclose(res.s, ref.s, rtol=tol(dtype, 1e3))
    scale = res.s[0]
    np.testing.assert_allclose(
        reconstruct(res).astype(np.float64),
        reconstruct(ref).astype(np.float64),
        atol=tol(dtype, 1e4) * scale,
    )
    assert_orthonormal_columns(res.U, dtype)
    assert_orthonormal_columns(res.Vt.T, dtype)
    # Signs: the largest-magnitude entry of every column of U is positive.
    idx = np.argmax(np.abs(res.U), axis=0)
    assert np.all(res.U[idx, np.arange(res.U.shape[1])] > 0)
    # Against the plain-NumPy SVD of the dense matrix: leading singular values.
    s_ref = np.linalg.svd(A.toarray().astype(np.float64), compute_uv=False)
    assert np.all(res.s <= s_ref[:10] * (1 + tol(dtype, 100)))
    assert res.s[0] >= 0.99 * s_ref[0]  # flat spectrum: converged to 1%, not to rounding


def test_rsvd_krylov_sparse_pass_route_zero_matrix(dtype):
    A = sp.csr_matrix((4000, 400), dtype=dtype)
    res = rsvd(A, 5, rng=0)
    assert np.all(res.s == 0) and np.all(np.isfinite(res.U)) and np.all(np.isfinite(res.Vt))
    assert_orthonormal_columns(res.U, dtype)


@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("kind", KINDS)
def test_rsvd_wide_and_tall(kind, method, rng):
    for m, n in ((40, 90), (90, 40)):
        A = with_spectrum(rng, m, n, exp_decay(40, 5.0))
        res = rsvd(as_kind(A, kind), 4, n_iter=2, method=method, rng=rng)
        assert res.U.shape == (m, 4) and res.Vt.shape == (4, n)
        ref = np.linalg.svd(A, compute_uv=False)[:4]
        np.testing.assert_allclose(res.s, ref, rtol=1e-8)
        np.testing.assert_allclose(res.U.T @ res.U, np.eye(4), atol=1e-13)
        np.testing.assert_allclose(res.Vt @ res.Vt.T, np.eye(4), atol=1e-13)


def test_rsvd_float32_close_to_float64(rng):
    A = with_spectrum(rng, 80, 60, exp_decay(60, 5.0))
    r64 = rsvd(A, 5, n_iter=2, rng=3)
    r32 = rsvd(A.astype(np.float32), 5, n_iter=2, rng=3)
    np.testing.assert_allclose(r32.s, r64.s, rtol=tol(np.float32, 100))


def test_rsvd_int_promotes_to_float64(rng):
    A = rng.integers(-5, 5, size=(30, 20))
    assert rsvd(A, 3, rng=rng).U.dtype == np.float64


def test_rsvd_default_is_krylov_with_documented_auto_iterations(rng):
    """Default method and n_iter='auto' (Krylov q = 3 for k < 0.1 min(m, n), else 2)."""
    A = rng.standard_normal((120, 100))
    for k, q in ((5, 3), (20, 2)):
        np.testing.assert_allclose(
            reconstruct(rsvd(A, k, rng=1)),
            reconstruct(rsvd(A, k, method="krylov", n_iter=q, rng=1)),
            atol=1e-12,
        )
    for k, q in ((5, 7), (20, 4)):
        np.testing.assert_allclose(
            reconstruct(rsvd(A, k, method="subspace", rng=1)),
            reconstruct(rsvd(A, k, method="subspace", n_iter=q, rng=1)),
            atol=1e-12,
        )


def test_rsvd_sketch_operator_shapes(rng):
    """A SketchOperator multiplies max(m, n) for Krylov and min(m, n) for subspace."""
    A = with_spectrum(rng, 70, 40, exp_decay(40, 4.0))
    ref = np.linalg.svd(A, compute_uv=False)[:4]
    res = rsvd(A, 4, oversample=6, method="krylov", sketch=srht(10, 70, rng=1))
    np.testing.assert_allclose(res.s, ref, rtol=1e-6)
    res = rsvd(A, 4, oversample=6, method="subspace", n_iter=3, sketch=srht(10, 40, rng=1))
    np.testing.assert_allclose(res.s, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="must have shape"):
        rsvd(A, 4, oversample=6, method="krylov", sketch=srht(10, 40, rng=1))


def test_rsvd_reproducible(rng):
    A = rng.standard_normal((40, 30))
    a, b = rsvd(A, 4, rng=11), rsvd(A, 4, rng=11)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = rsvd(A, 4, n_iter=0, rng=12)
    assert not np.array_equal(c.U, rsvd(A, 4, n_iter=0, rng=11).U)


def test_krylov_beats_subspace_at_equal_matvecs(seed):
    """Slow decay sigma_j = j^(-1/2): at q = 2 (6 passes each), summed over 4 draws, the
    Krylov excess error ||A - U S V^T||_2 / sigma_{k+1} - 1 is at most half the
    subspace-iteration excess.

    Per draw (seeds 0..99) the ratio Krylov/subspace excess has median 0.003; it reaches
    1 only on rare draws where both are optimal to 1e-4, hence the sum over draws.
    """
    rng = np.random.default_rng(seed)
    m, n, k = 200, 150, 10
    s = (np.arange(n) + 1.0) ** -0.5
    A = with_spectrum(rng, m, n, s)
    sub = kry = 0.0
    for draw in rng.integers(0, 2**32, size=4):
        sub += spectral_err(A, rsvd(A, k, n_iter=2, method="subspace", rng=draw)) / s[k] - 1
        kry += spectral_err(A, rsvd(A, k, n_iter=2, method="krylov", rng=draw)) / s[k] - 1
    assert kry <= 0.5 * sub


@pytest.mark.parametrize("q", [0, 1, 3])
def test_krylov_basis_gram_from_recurrence(q, dtype, rng):
    """The Gram matrix assembled from the Krylov recurrence equals B B^T = Bt^T Bt, the
    basis is orthonormal and Bt = A^T Q (plain NumPy reference)."""
    A = with_spectrum(rng, 50, 80, exp_decay(50, 5.0)).astype(dtype)
    Q, blocks, G = _krylov_basis(_as_op(A), 6, q, "gaussian", "cholqr", rng)
    Bt = np.empty((80, Q.shape[1]), dtype=dtype)
    for cols, W in blocks:
        Bt[:, cols] = W
    assert Q.shape == (50, 6 * (q + 1)) and len(blocks) == q + 1
    assert_orthonormal_columns(Q, dtype)
    np.testing.assert_allclose(Bt, A.T @ Q, atol=tol(dtype, 100))
    Bt64 = Bt.astype(np.float64)
    np.testing.assert_allclose(G, Bt64.T @ Bt64, atol=tol(dtype, 1e3) * np.sum(Bt64**2))


def test_krylov_space_dimension_capped(rng):
    """(q + 1) l > min(m, n): the Krylov basis stops at min(m, n) columns, still exact."""
    A = rng.standard_normal((30, 20))
    res = rsvd(A, 8, oversample=4, n_iter=5, method="krylov", rng=rng)
    np.testing.assert_allclose(res.s, np.linalg.svd(A, compute_uv=False)[:8], rtol=1e-10)


@pytest.mark.parametrize("normalizer", ["auto", "cholqr", "qr", "lu", "none"])
def test_rsvd_normalizers_agree(normalizer, rng):
    A = with_spectrum(rng, 80, 60, exp_decay(60, 10.0))
    ref = rsvd(A, 5, n_iter=2, normalizer="qr", rng=5)
    res = rsvd(A, 5, n_iter=2, normalizer=normalizer, rng=5)
    np.testing.assert_allclose(res.s, ref.s, rtol=1e-10)


def test_rsvd_rank_equal_min_dim_is_exact(rng):
    A = rng.standard_normal((25, 10))
    res = rsvd(A, 10, rng=rng)
    np.testing.assert_allclose(reconstruct(res), A, atol=1e-12)


# ---------------------------------------------------------------------------------------
# range_finder
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sketch", SKETCHES)
def test_range_finder_sketches(sketch, dtype, rng):
    """Every sketch gives an orthonormal basis whose error is near the HMT scale."""
    m, n, size = 70, 64, 16
    s = exp_decay(n, 4.0)
    A = with_spectrum(rng, m, n, s).astype(dtype)
    Q = range_finder(A, size, n_iter=1, sketch=sketch, rng=rng)
    assert Q.shape == (m, size) and Q.dtype == dtype
    assert_orthonormal_columns(Q, dtype)
    A64 = A.astype(np.float64)
    err = np.linalg.norm(A64 - Q @ (Q.T @ A64))
    # With one power iteration, 16 columns and rank-8 tail tau_8: generous factor 10.
    assert err <= 10 * np.sqrt(np.sum(s[8:] ** 2)) + tol(dtype, 100)


@pytest.mark.parametrize("kind", KINDS)
def test_range_finder_sketch_operator_input_kinds(kind, rng):
    A = with_spectrum(rng, 60, 32, exp_decay(32, 4.0))
    S = srht(12, 32, rng=1)
    Q = range_finder(as_kind(A, kind), 12, sketch=S)
    ref = range_finder(A, 12, sketch=S)
    np.testing.assert_allclose(Q @ Q.T, ref @ ref.T, atol=1e-10)


def test_range_finder_gaussian_operator_matches_direct(rng):
    """A Gaussian SketchOperator spans the same range as the direct Gaussian draw."""
    A = with_spectrum(rng, 50, 40, exp_decay(40, 5.0))
    S = gaussian(10, 40, rng=2)
    Q = range_finder(A, 10, sketch=S)
    Y = A @ S.todense().T
    P = np.linalg.qr(Y)[0]
    np.testing.assert_allclose(Q @ Q.T, P @ P.T, atol=1e-10)


def test_range_finder_power_iteration_improves(rng):
    A = with_spectrum(rng, 120, 100, (np.arange(100) + 1.0) ** -0.5)
    err = []
    for q in (0, 2):
        Q = range_finder(A, 10, n_iter=q, rng=4)
        err.append(np.linalg.norm(A - Q @ (Q.T @ A), 2))
    assert err[1] < err[0]


# ---------------------------------------------------------------------------------------
# Cholesky-QR with fallbacks (private, but the numerical core of the normalizer)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cond", [1e2, 1e6, 1e12, np.inf])
def test_cholqr_orthonormal_for_any_conditioning(cond, dtype, rng):
    m, cols = 200, 12
    if np.isinf(cond):
        sv = np.r_[np.ones(6), np.zeros(6)]  # rank deficient
    else:
        sv = np.logspace(0, -np.log10(cond), cols)
    Y = with_spectrum(rng, m, cols, sv).astype(dtype)
    Q = _cholqr(Y, final=True)
    assert Q.dtype == dtype and Q.shape == (m, cols)
    assert_orthonormal_columns(Q, dtype)
    # Q spans range(Y): the projection of Y onto Q recovers Y.
    Y64 = Y.astype(np.float64)
    resid = np.linalg.norm(Y64 - Q @ (Q.T @ Y64))
    assert resid <= tol(dtype, 1e3) * np.linalg.norm(Y64)


def test_cholqr_reference_householder(rng):
    """Same projector as LAPACK's Householder QR on a well-conditioned block."""
    Y = rng.standard_normal((100, 8))
    Q = _cholqr(Y, final=True)
    P = np.linalg.qr(Y)[0]
    np.testing.assert_allclose(Q @ Q.T, P @ P.T, atol=1e-13)


# ---------------------------------------------------------------------------------------
# randqb
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_iter", [0, 1])
def test_randqb_meets_tol_and_reports_true_error(kind, n_iter, dtype, rng):
    m, n = 90, 70
    A = with_spectrum(rng, m, n, exp_decay(n, 6.0)).astype(dtype)
    tol_ = 1e-2 if dtype == np.float32 else 1e-6
    Q, B, err = randqb(as_kind(A, kind), tol=tol_, block_size=5, n_iter=n_iter, rng=rng)
    assert Q.dtype == B.dtype == dtype and Q.shape[1] == B.shape[0]
    assert_orthonormal_columns(Q, dtype)
    A64 = A.astype(np.float64)
    direct = np.linalg.norm(A64 - Q.astype(np.float64) @ B) / np.linalg.norm(A64)
    assert err <= tol_
    # The bookkeeping error is the true error up to the sqrt(eps) floor: in the squared
    # domain they differ by O(u) (measured at most 11 u over seeds 0..99 in float64).
    assert abs(err**2 - direct**2) <= 100 * np.finfo(dtype).eps
    np.testing.assert_allclose(B, Q.T @ A, atol=tol(dtype, 100) * np.abs(A).max())
    # Minimal rank: one column fewer misses the tolerance (up to the same O(u) slack).
    r = Q.shape[1]
    fewer = np.linalg.norm(A64 - Q[:, : r - 1] @ B[: r - 1]) / np.linalg.norm(A64)
    assert fewer**2 > tol_**2 - 100 * np.finfo(dtype).eps


def test_randqb_exact_low_rank(rng):
    A = low_rank(rng, 60, 50, 7)
    Q, B, err = randqb(A, tol=1e-6, block_size=3, rng=rng)
    assert Q.shape[1] == 7
    assert err <= 1e-6
    np.testing.assert_allclose(Q @ B, A, atol=1e-10 * np.abs(A).max())


def test_randqb_max_rank_warns(rng):
    A = with_spectrum(rng, 60, 50, (np.arange(50) + 1.0) ** -0.5)
    with pytest.warns(ConvergenceWarning, match="max_rank=8 reached"):
        Q, B, err = randqb(A, tol=1e-3, block_size=3, max_rank=8, rng=rng)
    assert Q.shape == (60, 8)
    direct = np.linalg.norm(A - Q @ B) / np.linalg.norm(A)
    np.testing.assert_allclose(err, direct, rtol=1e-8)


def test_randqb_tol_below_floor_warns(rng):
    A = low_rank(rng, 40, 30, 4).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        randqb(A, tol=1e-6, block_size=2, rng=rng)
    kinds = {type(w.message) for w in caught}
    assert AccuracyWarning in kinds


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randqb_zero_matrix_is_rank_zero(dtype):
    Q, B, err = randqb(np.zeros((5, 4), dtype=dtype), tol=0.1, rng=0)
    assert Q.shape == (5, 0) and B.shape == (0, 4)
    assert Q.dtype == dtype and B.dtype == dtype
    assert err == 0.0


# ---------------------------------------------------------------------------------------
# single-pass SVD
# ---------------------------------------------------------------------------------------


def row_blocks(A, sizes):
    start = 0
    for size in sizes:
        yield A[start : start + size]
        start += size


@pytest.mark.parametrize("sizes", [[60], [1] * 60, [7, 20, 0, 33], [59, 1]], ids=str)
def test_single_pass_streamed_equals_dense(sizes, dtype, rng):
    A = with_spectrum(rng, 60, 40, exp_decay(40, 5.0)).astype(dtype)
    dense = single_pass_svd(A, 4, rng=9)
    streamed = single_pass_svd(row_blocks(A, sizes), 4, shape=A.shape, rng=9)
    assert streamed.U.dtype == dtype
    np.testing.assert_allclose(
        reconstruct(streamed), reconstruct(dense), atol=tol(dtype, 1e3) * np.abs(A).max()
    )


def test_single_pass_sparse_blocks_and_operator(rng):
    A = with_spectrum(rng, 50, 30, exp_decay(30, 5.0))
    ref = reconstruct(single_pass_svd(A, 3, rng=1))
    blocks = [sp.csr_matrix(A[:20]), A[20:]]
    np.testing.assert_allclose(
        reconstruct(single_pass_svd(blocks, 3, shape=(50, 30), rng=1)), ref, atol=1e-12
    )
    for kind in ("sparse", "operator"):
        out = single_pass_svd(as_kind(A, kind), 3, rng=1)
        np.testing.assert_allclose(reconstruct(out), ref, atol=1e-12)


def test_single_pass_exact_low_rank_and_accuracy(rng):
    A = low_rank(rng, 80, 60, 4)
    out = single_pass_svd(A, 4, rng=rng)
    np.testing.assert_allclose(reconstruct(out), A, atol=1e-9 * np.abs(A).max())
    s = exp_decay(60, 3.0)
    B = with_spectrum(rng, 80, 60, s)
    out = single_pass_svd(B, 5, rng=rng)
    # One pass, no power iteration: measured relative error at most 0.08 (seeds 0..99).
    np.testing.assert_allclose(out.s[:3], s[:3], rtol=0.15)


def test_single_pass_default_sizes_are_clipped(rng):
    A = rng.standard_normal((12, 9))
    out = single_pass_svd(A, 6, rng=rng)  # 2r + 1 = 13 > 9: clipped to k = 9, l = 12
    np.testing.assert_allclose(reconstruct(out), reconstruct(rsvd(A, 6, rng=1)), atol=1e-9)


def test_single_pass_bad_streams():
    A = np.ones((10, 4))
    with pytest.raises(ValueError, match="shape=\\(m, n\\) is required"):
        single_pass_svd(iter([A]), 2)
    with pytest.raises(ValueError, match="expected m=12"):
        single_pass_svd(iter([A]), 2, shape=(12, 4))
    with pytest.raises(ValueError, match="more than m=8"):
        single_pass_svd(iter([A]), 2, shape=(8, 4))
    with pytest.raises(ValueError, match="n=4 columns"):
        single_pass_svd(iter([A, np.ones((2, 5))]), 2, shape=(12, 4))
    with pytest.raises(ValueError, match="does not match"):
        single_pass_svd(A, 2, shape=(3, 3))
    with pytest.raises(ValueError, match="finite"):
        single_pass_svd(iter([np.full((10, 4), np.nan)]), 2, shape=(10, 4))
    with pytest.raises(ValueError, match="corange_size"):
        single_pass_svd(A, 2, range_size=4, corange_size=3)
    with pytest.raises(TypeError, match="iterable of row"):
        single_pass_svd(3.0, 2)


# ---------------------------------------------------------------------------------------
# reigh
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_reigh_indefinite_matches_eigh(kind, dtype, rng):
    n, k = 80, 6
    lam = exp_decay(n, 4.0) * np.where(np.arange(n) % 3 == 1, -1.0, 1.0)
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    A = ((V * lam) @ V.T).astype(dtype)
    A = (A + A.T) / 2
    w, X = reigh(as_kind(A, kind), k, n_iter=2, rng=rng)
    assert w.dtype == X.dtype == dtype and X.shape == (n, k)
    rtol = max(1e-9, tol(dtype, 1e3))  # convergence (|l_17 / l_6|^10 ~ 1e-12) or rounding
    np.testing.assert_allclose(w, lam[:k], rtol=rtol, atol=tol(dtype, 100))
    assert np.all(np.diff(np.abs(w)) <= 0) and np.any(w < 0)
    assert_orthonormal_columns(X, dtype)
    A64 = A.astype(np.float64)
    # Eigenvector residuals converge like |l_17 / l_6|^5 ~ 1e-6 (square root of the values').
    np.testing.assert_allclose(A64 @ X, X * w, atol=max(1e-5, tol(dtype, 1e4)))


@pytest.mark.parametrize("kind", KINDS)
def test_reigh_rejects_nonsymmetric(kind, rng):
    A = rng.standard_normal((20, 20))
    with pytest.raises(ValueError, match="must be symmetric"):
        reigh(as_kind(A, kind), 3, rng=rng)
    with pytest.raises(ValueError, match="must be square"):
        reigh(rng.standard_normal((5, 4)), 2)


# ---------------------------------------------------------------------------------------
# generalized Nystrom
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generalized_nystrom_accuracy(kind, dtype, rng):
    m, n, k = 90, 70, 8
    s = exp_decay(n, 5.0)
    A = with_spectrum(rng, m, n, s).astype(dtype)
    res = generalized_nystrom(as_kind(A, kind), k, rng=rng)
    assert res.U.dtype == dtype and res.U.shape == (m, k) and res.Vt.shape == (k, n)
    assert_orthonormal_columns(res.U, dtype)
    err = np.linalg.norm(A.astype(np.float64) - reconstruct(res))
    # Single-view, no power iteration: compare with the optimum tau_k, generous factor.
    assert err <= 20 * np.sqrt(np.sum(s[k:] ** 2)) + tol(dtype, 1e3)


def test_generalized_nystrom_exact_low_rank_pads_with_zeros(rng):
    A = low_rank(rng, 50, 40, 4)
    res = generalized_nystrom(A, 7, rng=rng)
    np.testing.assert_allclose(reconstruct(res), A, atol=1e-9 * np.abs(A).max())
    assert res.s.shape == (7,) and np.all(res.s[4:] <= 1e-8 * res.s[0])


# ---------------------------------------------------------------------------------------
# bad input (messages checked, inputs not mutated)
# ---------------------------------------------------------------------------------------

ALL = {
    "rsvd": lambda A, **kw: rsvd(A, 2, **kw),
    "range_finder": lambda A, **kw: range_finder(A, 2, **kw),
    "randqb": lambda A, **kw: randqb(A, tol=0.1, **kw),
    "single_pass_svd": lambda A, **kw: single_pass_svd(A, 2, **kw),
    "reigh": lambda A, **kw: reigh(A, 2, **kw),
    "generalized_nystrom": lambda A, **kw: generalized_nystrom(A, 2, **kw),
}


@pytest.mark.parametrize("name", list(ALL))
def test_bad_input_common(name):
    fn = ALL[name]
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-empty"):
        fn(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="complex"):
        fn(np.ones((4, 4), dtype=complex))
    with pytest.raises(ValueError, match="2-dimensional"):
        fn(np.ones(4))


@pytest.mark.parametrize("name", list(ALL))
def test_input_not_mutated(name, rng):
    G = rng.standard_normal((12, 12))
    A = G + G.T
    copy = A.copy()
    ALL[name](A, rng=rng)
    np.testing.assert_array_equal(A, copy)


@pytest.mark.parametrize("fn", [rsvd, reigh, generalized_nystrom, single_pass_svd])
def test_rank_out_of_range(fn):
    A = np.eye(6)
    with pytest.raises(ValueError, match=r"rank=7 must satisfy 1 <= rank <= 6"):
        fn(A, 7)
    with pytest.raises(ValueError, match=r"rank=0 must satisfy"):
        fn(A, 0)
    with pytest.raises(TypeError, match="rank must be an integer"):
        fn(A, 2.0)


def test_bad_options():
    A = np.eye(6)
    with pytest.raises(ValueError, match="method='lanczos' is not one of"):
        rsvd(A, 2, method="lanczos")
    with pytest.raises(ValueError, match="normalizer='svd' is not one of"):
        rsvd(A, 2, normalizer="svd")
    with pytest.raises(ValueError, match="sketch='fjlt' is not one of"):
        range_finder(A, 2, sketch="fjlt")
    with pytest.raises(ValueError, match="n_iter='many'"):
        rsvd(A, 2, n_iter="many")
    with pytest.raises(ValueError, match="n_iter=-1 must be >= 0"):
        rsvd(A, 2, n_iter=-1)
    with pytest.raises(ValueError, match="oversample=-1 must be >= 0"):
        rsvd(A, 2, oversample=-1)
    with pytest.raises(ValueError, match=r"size=7 must satisfy 1 <= size <= 6"):
        range_finder(A, 7)
    with pytest.raises(ValueError, match="must have shape \\(size, n\\)"):
        range_finder(A, 2, sketch=gaussian(3, 6, rng=0))
    with pytest.raises(TypeError, match="sketch must be a name"):
        range_finder(A, 2, sketch=3)
    with pytest.raises(ValueError, match=r"tol=1\.5 must satisfy 0 < tol < 1"):
        randqb(A, tol=1.5)
    with pytest.raises(TypeError, match="tol must be a real number"):
        randqb(A, tol="small")
    with pytest.raises(ValueError, match="block_size=0 must be >= 1"):
        randqb(A, tol=0.1, block_size=0)
    with pytest.raises(TypeError, match="RandomState"):
        rsvd(A, 2, rng=np.random.RandomState(0))
