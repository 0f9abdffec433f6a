"""Tests of rnla.skeleton: interpolative decomposition, CUR and adaptive cross approximation."""

import warnings

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import interpolative as sli
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from rnla._validation import ConvergenceWarning
from rnla.estimate import norm_estimate
from rnla.operators import DenseEntries, EntryMatrixBase, KernelMatrix
from rnla.skeleton import _as_mat, _column_id, _deim, aca, cur, interpolative

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def low_rank(m, n, r, rng, dtype=np.float64):
    """A generic rank-r matrix (Gaussian factors), computed in float64 then cast."""
    return (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(dtype)


def with_spectrum(m, n, s, rng):
    """``U diag(s) V^T`` with Haar-random orthonormal ``U``, ``V``."""
    U, _ = np.linalg.qr(rng.standard_normal((m, s.size)))
    V, _ = np.linalg.qr(rng.standard_normal((n, s.size)))
    return (U * s) @ V.T


def spectra(n, k):
    j = np.arange(n)
    return {
        "exponential": np.exp(-j / 2.0),
        "polynomial": 1.0 / (1.0 + j) ** 2,
        "s_shaped": 1.0 / (1.0 + np.exp((j - k) / 2.0)),
        "low_rank_noise": np.where(j < k, 1.0, 1e-3),
    }


def rel_fro(E, A):
    return float(np.linalg.norm(E) / np.linalg.norm(A))


def id_reconstruct(A, res, axis):
    if axis == 1:
        return A[:, res.indices] @ res.X
    return res.X @ A[res.indices, :]


def eps_tol(dtype, factor=1e3):
    return factor * np.finfo(dtype).eps


# ---------------------------------------------------------------------------------------
# interpolative
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["qb", "one_pass"])
@pytest.mark.parametrize("axis", [1, 0], ids=["cols", "rows"])
def test_id_exact_on_low_rank(method, axis, dtype, rng):
    A = low_rank(120, 90, 7, rng, dtype)
    res = interpolative(A, 7, axis=axis, method=method, rng=rng)
    assert res.X.dtype == dtype
    assert res.indices.dtype == np.int64
    assert res.X.shape == ((7, 90) if axis == 1 else (120, 7))
    assert rel_fro(A - id_reconstruct(A, res, axis), A) <= eps_tol(dtype)


@pytest.mark.parametrize("axis", [1, 0], ids=["cols", "rows"])
def test_id_identity_on_pivots(axis, rng):
    A = low_rank(80, 60, 10, rng)
    res = interpolative(A, 10, axis=axis, rng=rng)
    sub = res.X[:, res.indices] if axis == 1 else res.X[res.indices, :]
    np.testing.assert_array_equal(sub, np.eye(10))
    assert np.unique(res.indices).size == 10


def test_id_coefficients_moderate(rng):
    # Well-conditioned problem (Gaussian factors): QRCP gives |X_ij| of order 1. Plain
    # QRCP has no constant bound in general (Kahan, tests/bounds), hence the margin.
    A = low_rank(150, 120, 12, rng) + 1e-6 * rng.standard_normal((150, 120))
    res = interpolative(A, 12, rng=rng)
    assert np.abs(res.X).max() <= 3.0


def _scipy_qrcp_id(A, k):
    """Plain reference: deterministic ID from LAPACK QRCP of A."""
    R, P = sla.qr(A, mode="r", pivoting=True)
    T = sla.solve_triangular(R[:k, :k], R[:k, k:])
    X = np.zeros((k, A.shape[1]))
    X[:, P[:k]] = np.eye(k)
    X[:, P[k:]] = T
    return P[:k], X


def test_id_without_sketch_equals_reference_qrcp(rng):
    # rank + oversample >= m: no sketch is drawn, the ID is the QRCP ID of A itself.
    A = rng.standard_normal((20, 50))
    res = interpolative(A, 12, oversample=10, rng=rng)
    idx, X = _scipy_qrcp_id(A, 12)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.X, X, rtol=1e-12, atol=1e-12)


def test_id_error_close_to_scipy_at_equal_rank(rng):
    # SciPy's interp_decomp (rand=True) is, in SciPy 1.15-1.17, a deterministic QRCP of
    # the whole matrix: the accuracy reference for the randomized ID.
    s = 1.0 / (1.0 + np.arange(80)) ** 2
    A = with_spectrum(200, 150, s, rng)
    k = 15
    res = interpolative(A, k, rng=rng)
    idx, proj = sli.interp_decomp(A, k, rand=True, rng=np.random.default_rng(0))
    ref = sli.reconstruct_matrix_from_id(A[:, idx[:k]], idx, proj)
    ours = np.linalg.norm(A - A[:, res.indices] @ res.X)
    theirs = np.linalg.norm(A - ref)
    best = np.sqrt(np.sum(s[k:] ** 2))
    assert best <= ours <= 2.0 * theirs


@pytest.mark.parametrize("kind", ["dense", "sparse", "operator"])
def test_id_default_matches_scipy_error_on_slow_decay(kind, rng):
    """Slow decay 1/(1 + j): the default ("qb", least-squares coefficients) is within 5%
    of SciPy's deterministic QRCP ID. Negative control: the coefficients read off the
    sketch (R11^-1 R12 of B, what "qb" returned before) leave > 20% more error."""
    s = 1.0 / (1.0 + np.arange(300))
    A = with_spectrum(500, 300, s, rng)
    k = 30
    A_in = {"dense": A, "sparse": sp.csr_matrix(A), "operator": aslinearoperator(A)}[kind]
    res = interpolative(A_in, k, rng=1)
    idx, proj = sli.interp_decomp(A, k, rand=True, rng=np.random.default_rng(0))
    theirs = np.linalg.norm(A - sli.reconstruct_matrix_from_id(A[:, idx[:k]], idx, proj))
    ours = np.linalg.norm(A - A[:, res.indices] @ res.X)
    assert ours <= 1.05 * theirs
    # The coefficients are those of plain NumPy least squares on the selected columns.
    X_ref = np.linalg.lstsq(A[:, res.indices], A, rcond=None)[0]
    np.testing.assert_allclose(res.X, X_ref, atol=1e-10 * np.abs(X_ref).max())
    np.testing.assert_array_equal(res.X[:, res.indices], np.eye(k))
    sketched = interpolative(A, k, method="one_pass", oversample=10, rng=1)
    assert np.linalg.norm(A - A[:, sketched.indices] @ sketched.X) > 1.2 * theirs
    J, X_sketch, _ = _column_id(
        _as_mat(A), k, None, "qb", 10, 0, "gaussian", np.random.default_rng(1)
    )
    assert np.linalg.norm(A - A[:, J] @ X_sketch) > 1.2 * theirs


def test_id_least_squares_coefficients_float32(rng):
    s = 1.0 / (1.0 + np.arange(120))
    A = with_spectrum(200, 120, s, rng).astype(np.float32)
    res = interpolative(A, 12, rng=0)
    assert res.X.dtype == np.float32 and np.isfinite(res.X).all()
    A64 = A.astype(np.float64)
    X_ref = np.linalg.lstsq(A64[:, res.indices], A64, rcond=None)[0]
    np.testing.assert_allclose(res.X, X_ref, atol=1e-4 * np.abs(X_ref).max())


def test_id_one_pass_less_accurate_than_qb(rng):
    # Negative control of the method choice: QRCP on the raw sketch S A picks worse
    # columns than QRCP on Q^T A (measured 2-4x on exponential spectra).
    s = np.exp(-np.arange(150) / 3.0)
    A = with_spectrum(300, 150, s, rng)
    k = 20
    errs = {}
    for method in ("qb", "one_pass"):
        res = interpolative(A, k, method=method, oversample=5, rng=rng)
        errs[method] = np.linalg.norm(A - A[:, res.indices] @ res.X)
    assert errs["one_pass"] > errs["qb"]


def test_id_tol_mode(rng):
    # sigma_j = 0.9^j: the numerical rank at 1e-6 is 132 > 32, so the sketch doubles.
    s = 0.9 ** np.arange(200)
    A = with_spectrum(300, 240, s, rng)
    tol = 1e-6
    res = interpolative(A, tol=tol, rng=rng)
    k = res.indices.size
    k_star = int(np.sum(s > tol))
    err = sla.svdvals(A - A[:, res.indices] @ res.X)[0]
    assert k_star <= k <= k_star + 30
    assert err <= 10 * tol * s[0]


def test_id_tol_with_rank_cap(rng):
    s = 0.9 ** np.arange(100)
    A = with_spectrum(150, 120, s, rng)
    res = interpolative(A, 20, tol=1e-8, rng=rng)
    assert res.indices.size == 20
    res = interpolative(A, 100, tol=1e-2, rng=rng)
    assert res.indices.size < 60


def test_id_dense_sparse_operator_agree(rng):
    A = sp.random(150, 100, density=0.05, format="csr", rng=rng) @ sp.random(
        100, 120, density=0.05, format="csr", rng=rng
    )
    A = sp.csr_array(A)
    k = 10
    seed = int(rng.integers(2**31))
    dense = interpolative(A.toarray(), k, sketch="gaussian", rng=seed)
    sparse = interpolative(A, k, sketch="gaussian", rng=seed)
    op = interpolative(aslinearoperator(A), k, sketch="gaussian", rng=seed)
    np.testing.assert_array_equal(dense.indices, sparse.indices)
    np.testing.assert_array_equal(dense.indices, op.indices)
    np.testing.assert_allclose(sparse.X, dense.X, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(op.X, dense.X, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sketch", ["sparse_sign", "srht", "countsketch", "rademacher"])
@pytest.mark.parametrize("method", ["qb", "one_pass"])
def test_id_sketch_kinds_exact_on_sparse_low_rank(sketch, method, rng):
    L = sp.random(200, 6, density=0.5, format="csr", rng=rng)
    R = sp.random(6, 150, density=0.5, format="csr", rng=rng)
    A = sp.csr_array(L @ R)
    r = np.linalg.matrix_rank(A.toarray())
    res = interpolative(A, r, method=method, sketch=sketch, rng=rng)
    D = A.toarray()
    assert rel_fro(D - D[:, res.indices] @ res.X, D) <= eps_tol(np.float64, 1e4)


def test_id_full_rank_and_zero_matrix(rng):
    A = rng.standard_normal((30, 20))
    res = interpolative(A, 20, rng=rng)
    assert sorted(res.indices.tolist()) == list(range(20))
    np.testing.assert_allclose(A[:, res.indices] @ res.X, A, atol=1e-12)
    Z = np.zeros((30, 20))
    res = interpolative(Z, 3, rng=rng)
    np.testing.assert_array_equal(Z[:, res.indices] @ res.X, Z)
    assert np.all(np.isfinite(res.X))
    assert interpolative(Z, tol=0.1, rng=rng).indices.size == 1


def test_id_rank_above_numerical_rank_stays_bounded(rng):
    # Requested rank 10 on a rank-4 matrix: R11 is singular to working precision; the
    # minimum-norm coefficients keep X bounded and the reconstruction exact.
    A = low_rank(60, 50, 4, rng)
    res = interpolative(A, 10, rng=rng)
    assert np.abs(res.X).max() < 1e3
    assert rel_fro(A - A[:, res.indices] @ res.X, A) <= 1e-12


def test_id_reproducible(rng):
    A = rng.standard_normal((100, 80))
    a = interpolative(A, 10, rng=123)
    b = interpolative(A, 10, rng=np.random.default_rng(123))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.X, b.X)


def test_id_float32_accuracy(rng):
    s = np.exp(-np.arange(60) / 4.0)
    A = with_spectrum(120, 90, s, rng)
    k = 20
    r64 = interpolative(A, k, rng=1)
    r32 = interpolative(A.astype(np.float32), k, rng=1)
    e64 = np.linalg.norm(A - A[:, r64.indices] @ r64.X)
    e32 = np.linalg.norm(A - A[:, r32.indices] @ r32.X.astype(np.float64))
    assert r32.X.dtype == np.float32
    assert e32 <= 3 * e64 + 1e3 * np.finfo(np.float32).eps * np.linalg.norm(A)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": 0}, ValueError, r"rank=0 must satisfy 1 <= rank <= 30"),
        ({"rank": 31}, ValueError, r"rank=31 must satisfy 1 <= rank <= 30"),
        ({"rank": 2.0}, TypeError, "rank must be an integer"),
        ({}, ValueError, "give rank=, tol= or both"),
        ({"tol": 0.0}, ValueError, r"tol=0.0 must lie in \(0, 1\)"),
        ({"tol": 1.0}, ValueError, r"tol=1.0 must lie in \(0, 1\)"),
        ({"rank": 3, "axis": 2}, ValueError, "axis=2 must be 0"),
        ({"rank": 3, "method": "svd"}, ValueError, "'qb', 'one_pass'"),
        ({"rank": 3, "sketch": "fourier"}, ValueError, "'gaussian'.*'sparse_sign'"),
        ({"rank": 3, "oversample": -1}, ValueError, "oversample=-1 must be >= 0"),
        ({"rank": 3, "method": "one_pass", "n_iter": 1}, ValueError, "needs method='qb'"),
    ],
)
def test_id_bad_arguments(kwargs, exc, match, rng):
    A = rng.standard_normal((40, 30))
    before = A.copy()
    kwargs = dict(kwargs)  # the parametrize dict is shared by every seed
    rank = kwargs.pop("rank", None)
    with pytest.raises(exc, match=match):
        interpolative(A, rank, **kwargs)
    np.testing.assert_array_equal(A, before)


@pytest.mark.parametrize(
    ("A", "exc", "match"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, "finite"),
        (np.zeros((0, 3)), ValueError, "non-empty"),
        (np.ones(5), ValueError, "2-dimensional"),
        (np.ones((3, 3), dtype=complex), TypeError, "complex"),
    ],
    ids=["nan", "empty", "1d", "complex"],
)
def test_id_bad_input(A, exc, match):
    with pytest.raises(exc, match=match):
        interpolative(A, 1)


def test_id_does_not_mutate_input(rng):
    A = rng.standard_normal((50, 40))
    before = A.copy()
    interpolative(A, 5, rng=rng)
    interpolative(A, 5, axis=0, method="one_pass", rng=rng)
    interpolative(A, 35, rng=rng)  # exact (unsketched) path
    np.testing.assert_array_equal(A, before)


# ---------------------------------------------------------------------------------------
# CUR
# ---------------------------------------------------------------------------------------


def cur_error(A, res):
    return A - A[:, res.cols] @ res.U @ A[res.rows, :]


@pytest.mark.parametrize("method", ["qrcp", "leverage", "deim"])
def test_cur_exact_on_low_rank(method, dtype, rng):
    A = low_rank(100, 80, 6, rng, dtype)
    res = cur(A, 6, method=method, rng=rng)
    assert res.U.dtype == dtype
    assert res.cols.dtype == np.int64 and res.rows.dtype == np.int64
    assert res.U.shape == (6, 6) and res.cols.shape == (6,) and res.rows.shape == (6,)
    # Exact up to rounding, which the product C U R amplifies by ||C|| ||U|| ||R|| / ||A||
    # (large when randomly sampled columns are nearly dependent, e.g. leverage in float32).
    C, R = A[:, res.cols].astype(np.float64), A[res.rows, :].astype(np.float64)
    growth = np.linalg.norm(C) * np.linalg.norm(res.U.astype(np.float64)) * np.linalg.norm(R)
    assert rel_fro(cur_error(A, res), A) <= eps_tol(dtype, 1e2) * growth / np.linalg.norm(A)


@pytest.mark.parametrize("spectrum", ["exponential", "polynomial", "s_shaped", "low_rank_noise"])
@pytest.mark.parametrize("method", ["qrcp", "leverage", "deim"])
def test_cur_close_to_best_rank_k(method, spectrum, rng):
    m, n, k = 200, 150, 10
    s = spectra(n, k)[spectrum]
    A = with_spectrum(m, n, s, rng)
    best = np.sqrt(np.sum(s[k:] ** 2))
    if method == "leverage":
        # Sampling theory needs O(k log k) samples; 2k keep the error near the best
        # rank-k error (measured max ratio 1.9 over seeds 0..99).
        res = cur(A, k, method=method, n_samples=2 * k, rng=rng)
        bound = 3.0
    else:
        # Measured max ratio 2.6 over seeds 0..99 and the four spectra.
        res = cur(A, k, method=method, rng=rng)
        bound = 4.0
    assert np.linalg.norm(cur_error(A, res)) <= bound * best


def test_cur_leverage_with_k_samples_is_weaker(rng):
    # Negative control of the sample size: k leverage samples miss directions on
    # low-rank + noise matrices far more often than DEIM does.
    m, n, k = 200, 150, 10
    s = spectra(n, k)["low_rank_noise"]
    A = with_spectrum(m, n, s, rng)
    lev = np.linalg.norm(cur_error(A, cur(A, k, method="leverage", rng=rng)))
    deim = np.linalg.norm(cur_error(A, cur(A, k, method="deim", rng=rng)))
    assert lev > deim


def test_cur_core_matches_pinv_reference(rng):
    A = (
        rng.standard_normal((60, 40))
        @ np.diag(0.7 ** np.arange(40))
        @ rng.standard_normal((40, 50))
    )
    res = cur(A, 8, rng=rng)
    C = A[:, res.cols]
    R = A[res.rows, :]
    U_ref = np.linalg.pinv(C) @ A @ np.linalg.pinv(R)
    np.testing.assert_allclose(res.U, U_ref, rtol=1e-8, atol=1e-8 * np.abs(U_ref).max())


def test_cur_core_handles_duplicate_columns(rng):
    # Two identical columns make C rank deficient; the pseudo-inverse core still gives
    # the optimal (here exact) approximation.
    B = low_rank(40, 30, 5, rng)
    A = np.hstack([B, B[:, :3]])
    from rnla.skeleton import _as_mat, _cur_core

    cols = np.array([0, 30, 1, 2, 3, 4], dtype=np.int64)  # 30 duplicates column 0
    rows = np.arange(6, dtype=np.int64)
    U = _cur_core(_as_mat(A), cols, rows)
    assert np.all(np.isfinite(U))
    assert rel_fro(A - A[:, cols] @ U @ A[rows, :], A) <= 1e-10


def test_cur_sparse_and_operator(rng):
    L = sp.random(150, 5, density=0.6, format="csr", rng=rng)
    A = sp.csr_array(L @ sp.random(5, 100, density=0.6, format="csr", rng=rng))
    D = A.toarray()
    r = np.linalg.matrix_rank(D)
    for M in (A, aslinearoperator(A)):
        for method in ("qrcp", "deim"):
            res = cur(M, r, method=method, rng=rng)
            assert rel_fro(cur_error(D, res), D) <= 1e-10


def test_cur_distinct_indices(rng):
    A = with_spectrum(120, 100, np.exp(-np.arange(100) / 5.0), rng)
    for method in ("qrcp", "leverage", "deim"):
        res = cur(A, 12, method=method, rng=rng)
        assert np.unique(res.cols).size == 12
        assert np.unique(res.rows).size == 12


def _deim_reference(V):
    """Plain transcription of Sorensen-Embree (2016), Algorithm 1."""
    k = V.shape[1]
    p = [int(np.argmax(np.abs(V[:, 0])))]
    for j in range(1, k):
        P = np.array(p)
        c = np.linalg.solve(V[P, :j], V[P, j])
        r = V[:, j] - V[:, :j] @ c
        p.append(int(np.argmax(np.abs(r))))
    return np.array(p)


def test_deim_matches_reference_and_interpolates(rng):
    V, _ = np.linalg.qr(rng.standard_normal((70, 9)))
    p = _deim(V)
    np.testing.assert_array_equal(p, _deim_reference(V))
    # The DEIM projector V (P^T V)^{-1} P^T reproduces every column of V.
    proj = V @ np.linalg.solve(V[p, :], np.eye(9))
    np.testing.assert_allclose(proj[p, :], np.eye(9), atol=1e-10)
    np.testing.assert_allclose(proj @ V[p, :], V, atol=1e-10)
    assert _deim(V[:, :1])[0] == int(np.argmax(np.abs(V[:, 0])))


def test_cur_reproducible(rng):
    A = rng.standard_normal((80, 60))
    for method in ("qrcp", "leverage", "deim"):
        a = cur(A, 7, method=method, rng=5)
        b = cur(A, 7, method=method, rng=5)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.U, b.U)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((0,), {}, ValueError, r"rank=0 must satisfy 1 <= rank <= 30"),
        ((31,), {}, ValueError, r"rank=31 must satisfy"),
        ((3,), {"method": "random"}, ValueError, "'qrcp', 'leverage', 'deim'"),
        ((3,), {"n_samples": 5}, ValueError, "n_samples applies to method='leverage'"),
        ((3,), {"method": "leverage", "n_samples": 0}, ValueError, "n_samples=0"),
        ((3,), {"n_iter": -1}, ValueError, "n_iter=-1 must be >= 0"),
    ],
)
def test_cur_bad_arguments(args, kwargs, exc, match, rng):
    A = rng.standard_normal((40, 30))
    before = A.copy()
    with pytest.raises(exc, match=match):
        cur(A, *args, **kwargs)
    np.testing.assert_array_equal(A, before)


def test_cur_bad_input():
    with pytest.raises(ValueError, match="finite"):
        cur(np.array([[1.0, np.inf], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="non-empty"):
        cur(np.zeros((3, 0)), 1)


# ---------------------------------------------------------------------------------------
# ACA
# ---------------------------------------------------------------------------------------


def aca_error(A, res):
    return A - res.U @ res.V.T


def test_aca_exact_on_low_rank_entry_matrix(dtype, rng):
    m, n, r = 90, 70, 6
    A = low_rank(m, n, r, rng, dtype)
    E = DenseEntries(A)
    res = aca(E, tol=1e-6 if dtype == np.float32 else 1e-10, n_check_rows=0, rng=rng)
    k = res.U.shape[1]
    assert res.U.dtype == dtype and res.V.dtype == dtype
    assert res.U.shape == (m, k) and res.V.shape == (n, k)
    assert r <= k <= r + 1
    assert rel_fro(aca_error(A, res), A) <= eps_tol(dtype, 1e4)
    assert np.unique(res.rows).size == k and np.unique(res.cols).size == k
    # Only pivot rows/columns are read: r columns and at most r + 1 + 8 (zero) rows.
    assert E.n_evaluations <= k * (m + n) + (1 + 8) * n
    # With the default confirmation, at most 8 more rows per check.
    E.reset_count()
    res = aca(E, tol=1e-6 if dtype == np.float32 else 1e-10, rng=rng)
    assert rel_fro(aca_error(A, res), A) <= eps_tol(dtype, 1e4)
    assert E.n_evaluations <= res.U.shape[1] * (m + n) + (1 + 8 + 8) * n


def test_aca_interpolates_pivot_crosses(rng):
    A = (
        rng.standard_normal((40, 30))
        @ np.diag(0.5 ** np.arange(30))
        @ rng.standard_normal((30, 35))
    )
    res = aca(A, tol=1e-4, rng=rng)
    R = A - res.U @ res.V.T
    # The residual vanishes on every pivot row and column (cross interpolation).
    assert np.abs(R[res.rows, :]).max() <= 1e-12 * np.abs(A).max()
    assert np.abs(R[:, res.cols]).max() <= 1e-12 * np.abs(A).max()


def test_aca_ndarray_input_equals_dense_entries(rng):
    A = low_rank(50, 40, 5, rng)
    a = aca(A, rng=3)
    b = aca(DenseEntries(A), rng=3)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.U, b.U)


def _residual_operator(K, res):
    Kop = K.as_linear_operator()
    U, V = res.U.astype(np.float64), res.V.astype(np.float64)
    return LinearOperator(
        shape=K.shape,
        dtype=np.float64,
        matvec=lambda x: Kop.matvec(x) - U @ (V.T @ x),
        rmatvec=lambda y: Kop.rmatvec(y) - V @ (U.T @ y),
        matmat=lambda X: Kop.matmat(X) - U @ (V.T @ X),
        rmatmat=lambda Y: Kop.rmatmat(Y) - V @ (U.T @ Y),
    )


def test_aca_kernel_matrix_accuracy_a_posteriori(rng):
    # ACA's stopping rule is an estimate, not a bound. The a-posteriori norm estimate
    # of the residual (a LinearOperator) certifies the result with failure probability
    # 1e-6; measured error / tol about 1 with the random-row confirmation.
    X = rng.standard_normal((1500, 3))
    K = KernelMatrix(X, bandwidth=2.0)
    tol = 1e-6
    res = aca(K, tol=tol, rng=rng)
    assert K.n_evaluations <= 2 * res.U.shape[1] * sum(K.shape) + 9 * K.shape[1]
    est = norm_estimate(_residual_operator(K, res), "fro", n_probes=30, delta=1e-6, rng=rng)
    norm_k = np.linalg.norm(K.rows(np.arange(1500)))
    assert est.upper <= 10 * tol * norm_k
    exact = np.linalg.norm(K.rows(np.arange(1500)) - res.U @ res.V.T)
    assert est.lower <= exact <= est.upper


def test_aca_kernel_float32(rng):
    X = rng.standard_normal((800, 3)).astype(np.float32)
    K = KernelMatrix(X, bandwidth=2.0)
    res = aca(K, tol=1e-3, rng=rng)
    assert res.U.dtype == np.float32 and res.V.dtype == np.float32
    D = K.rows(np.arange(800)).astype(np.float64)
    assert rel_fro(D - res.U.astype(np.float64) @ res.V.T.astype(np.float64), D) <= 0.1


def _kernel_50k(dtype, tol, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((50_000, 3)).astype(dtype)
    K = KernelMatrix(X, bandwidth=2.0)
    res = aca(K, tol=tol, rng=rng)
    r = res.U.shape[1]
    m, n = K.shape
    # Never formed: the entries read are the pivot crosses, r (m + n), plus the random
    # confirmation rows (measured at most 0.73 r (m + n)) and zero rows.
    assert r * (m + n) <= K.n_evaluations <= 2 * r * (m + n) + 9 * n
    assert K.n_evaluations < 0.01 * m * n
    assert res.U.shape == (m, r) and res.V.shape == (n, r) and res.U.dtype == dtype
    # A-posteriori check on 200 uniformly sampled rows (unbiased for ||K - UV^T||_F^2).
    idx = rng.choice(m, 200, replace=False)
    rows = K.rows(idx).astype(np.float64)
    approx = res.U[idx].astype(np.float64) @ res.V.T.astype(np.float64)
    return np.linalg.norm(rows - approx) / np.linalg.norm(rows), r


def test_aca_kernel_matrix_50k_points(seed):
    # Measured sampled error / tol: median 1.17, max 1.37 (seeds 0..5).
    err, r = _kernel_50k(np.float64, 1e-3, seed)
    assert r < 200
    assert err <= 5 * 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("dtype_", [np.float64, np.float32], ids=["float64", "float32"])
def test_aca_kernel_matrix_50k_points_tight(dtype_, seed):
    err, _ = _kernel_50k(dtype_, 1e-4, seed)
    assert err <= 5 * 1e-4


def test_aca_confirmation_only_adds_terms(rng):
    # Same seed: both runs follow the same path until the classical criterion first
    # holds; the classical rule (n_check_rows=0) stops there, the confirmed one can only
    # go further.
    X = rng.standard_normal((2000, 3))
    seed = int(rng.integers(2**31))
    plain = aca(KernelMatrix(X, bandwidth=2.0), tol=1e-3, n_check_rows=0, rng=seed)
    checked = aca(KernelMatrix(X, bandwidth=2.0), tol=1e-3, rng=seed)
    r = plain.U.shape[1]
    assert checked.U.shape[1] >= r
    np.testing.assert_array_equal(checked.rows[:r], plain.rows)
    np.testing.assert_array_equal(checked.U[:, :r], plain.U)


def test_aca_max_rank_warns(rng):
    A = rng.standard_normal((60, 50))
    with pytest.warns(ConvergenceWarning, match="max_rank=5"):
        res = aca(A, tol=1e-8, max_rank=5, rng=rng)
    assert res.U.shape == (60, 5)


def test_aca_full_rank_is_exact(rng):
    A = rng.standard_normal((12, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = aca(A, tol=1e-14, rng=rng)
    assert res.U.shape[1] == 9
    assert rel_fro(aca_error(A, res), A) <= 1e-10


def test_aca_zero_matrix(rng):
    res = aca(np.zeros((20, 10)), rng=rng)
    assert res.U.shape == (20, 0) and res.V.shape == (10, 0)
    assert res.rows.shape == (0,) and res.cols.shape == (0,)


def test_aca_reproducible(rng):
    A = (
        rng.standard_normal((50, 40))
        @ np.diag(0.8 ** np.arange(40))
        @ rng.standard_normal((40, 45))
    )
    a = aca(A, tol=1e-5, rng=11)
    b = aca(A, tol=1e-5, rng=11)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.cols, b.cols)
    np.testing.assert_array_equal(a.U, b.U)


class _NaNEntries(EntryMatrixBase):
    def __init__(self):
        super().__init__((5, 4), np.float64)

    def _rows(self, idx):
        out = np.ones((idx.size, 4))
        out[:, 1] = np.nan
        return out

    def _cols(self, idx):
        return np.ones((5, idx.size))

    def _entries(self, i, j):
        return np.ones(i.size)

    def _diag(self):
        return np.ones(4)


@pytest.mark.parametrize(
    ("A", "kwargs", "exc", "match"),
    [
        (sp.eye(5, format="csr"), {}, TypeError, "EntryMatrix"),
        (aslinearoperator(np.eye(5)), {}, TypeError, "EntryMatrix"),
        (np.array([[1.0, np.nan]]), {}, ValueError, "finite"),
        (np.zeros((0, 2)), {}, ValueError, "non-empty"),
        (np.eye(5), {"tol": 0.0}, ValueError, r"tol=0.0 must lie in \(0, 1\)"),
        (np.eye(5), {"tol": 2.0}, ValueError, r"tol=2.0 must lie in \(0, 1\)"),
        (np.eye(5), {"max_rank": 0}, ValueError, r"max_rank=0 must satisfy 1 <= max_rank <= 5"),
        (np.eye(5), {"max_rank": 6}, ValueError, "max_rank=6"),
        (np.eye(5), {"n_check_rows": -1}, ValueError, "n_check_rows=-1 must be >= 0"),
        (_NaNEntries(), {}, ValueError, "A.rows returned non-finite"),
    ],
    ids=[
        "sparse",
        "operator",
        "nan",
        "empty",
        "tol0",
        "tol2",
        "rank0",
        "rank6",
        "checks",
        "nan-entries",
    ],
)
def test_aca_bad_input(A, kwargs, exc, match):
    before = A.copy() if isinstance(A, np.ndarray) else None
    with pytest.raises(exc, match=match):
        aca(A, **kwargs)
    if before is not None:
        np.testing.assert_array_equal(A, before)
