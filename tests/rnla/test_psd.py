"""Tests of rnla.psd: stabilised Nyström and randomly pivoted Cholesky."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from rnla._kernels.nystrom import _block_pivoted_cholesky, _downdate_diagonal
from rnla._validation import AccuracyWarning
from rnla.operators import DenseEntries, KernelMatrix
from rnla.psd import nystrom, rpcholesky


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """Run BLAS single-threaded: these tests make thousands of tiny BLAS calls, which a
    multi-threaded OpenBLAS on a loaded machine slows down 10-50x (spin-waiting)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


METHODS = ["accelerated", "blocked", "simple", "greedy", "uniform"]
RANDOM_METHODS = ["accelerated", "blocked", "simple", "uniform"]


def psd_matrix(rng, n, eigenvalues, dtype=np.float64):
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q`` (exactly symmetric)."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.asarray(eigenvalues, dtype=np.float64)) @ Q.T
    return (0.5 * (A + A.T)).astype(dtype), Q


def kernel_matrix(rng, n, d=3, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    K = KernelMatrix(X)
    return K, K.rows(np.arange(n))


def eps(dtype):
    return float(np.finfo(dtype).eps)


class _Recording:
    """Mixin for an EntryMatrix: logs the rows requested and counts the other calls."""

    def __init__(self, A):
        super().__init__(A)
        self.row_requests = []
        self.n_entries = 0
        self.n_diag = 0
        self.n_cols = 0

    def _rows(self, idx):
        self.row_requests.append(idx.copy())
        return super()._rows(idx)

    def _entries(self, i, j):
        self.n_entries += i.size
        return super()._entries(i, j)

    def _diag(self):
        self.n_diag += 1
        return super()._diag()

    def _cols(self, idx):
        self.n_cols += 1
        return super()._cols(idx)


class Recorder(_Recording, DenseEntries):
    """DenseEntries that logs which rows, entries and diagonals were requested."""


# ---------------------------------------------------------------------------------------
# nystrom
# ---------------------------------------------------------------------------------------


def nystrom_matrix(res):
    V, lam = res.eigenvectors.astype(np.float64), res.eigenvalues.astype(np.float64)
    return (V * lam) @ V.T


def test_nystrom_shapes_dtype_order(dtype, rng):
    A, _ = psd_matrix(rng, 60, 0.8 ** np.arange(60), dtype)
    res = nystrom(A, 8, rng=rng)
    assert res.eigenvalues.shape == (8,) and res.eigenvectors.shape == (60, 8)
    assert res.eigenvalues.dtype == dtype and res.eigenvectors.dtype == dtype
    assert np.all(np.diff(res.eigenvalues) <= 0) and res.eigenvalues.min() >= 0
    V = res.eigenvectors.astype(np.float64)
    np.testing.assert_allclose(V.T @ V, np.eye(8), atol=100 * eps(dtype))


def test_nystrom_recovers_low_rank_exactly(dtype, rng):
    n, r = 80, 6
    lam = np.r_[np.linspace(10, 1, r), np.zeros(n - r)]
    A, _ = psd_matrix(rng, n, lam, dtype)
    res = nystrom(A, r, oversample=4, rng=rng)
    # The stabilising shift nu0 = sqrt(n) eps ||A Omega|| biases the Nyström
    # approximation of A + nu0 I by O(n nu0): negligible in float64, ~1e-4 in float32.
    tol = 10 * n * np.sqrt(n) * eps(dtype) * lam[0]
    np.testing.assert_allclose(res.eigenvalues, lam[:r], rtol=0, atol=tol)
    err = np.linalg.norm(nystrom_matrix(res) - A.astype(np.float64), 2)
    assert err <= tol


def test_nystrom_against_exact_eigendecomposition(rng):
    # Fast decay: the leading eigenpairs are captured to high relative accuracy, and
    # per draw 0 <= lambda_hat_i <= lambda_i (A_hat <= A in the Loewner order, Weyl).
    n = 120
    lam = 0.2 ** np.arange(n)
    A, Q = psd_matrix(rng, n, lam)
    res = nystrom(A, 10, oversample=10, rng=rng)
    assert np.all(res.eigenvalues <= lam[:10] + 1e-13)
    np.testing.assert_allclose(res.eigenvalues[:6], lam[:6], rtol=1e-6)
    # Leading eigenvectors up to sign.
    overlap = np.abs(np.sum(res.eigenvectors[:, :6] * Q[:, :6], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


@pytest.mark.parametrize("shift", [0.0, "auto"])
def test_nystrom_identity(shift, rng):
    # A - A<Omega> = A^{1/2} (I - P) A^{1/2}, P the projector onto range(A^{1/2} Omega).
    # With rank = ell (no truncation), range(eigenvectors) = range(A Omega), hence
    # range(A^{1/2} Omega) = A^{-1/2} range(eigenvectors): checked without knowing Omega.
    n, ell = 70, 12
    lam = 1.0 / (1.0 + np.arange(n)) ** 1.5
    A, Q = psd_matrix(rng, n, lam)
    res = nystrom(A, ell, oversample=0, shift=shift, rng=rng)
    half = (Q * np.sqrt(lam)) @ Q.T
    inv_half = (Q / np.sqrt(lam)) @ Q.T
    W, _ = np.linalg.qr(inv_half @ res.eigenvectors)
    identity_rhs = half @ (np.eye(n) - W @ W.T) @ half
    lhs = A - nystrom_matrix(res)
    tol = 1e-12 if shift == 0.0 else 1e3 * np.sqrt(n) * eps(np.float64)
    np.testing.assert_allclose(lhs, identity_rhs, rtol=0, atol=tol)
    # The error is PSD, so the trace error is the squared Frobenius norm of (I-P)A^{1/2}.
    assert np.linalg.eigvalsh(lhs)[0] >= -tol
    np.testing.assert_allclose(
        np.trace(lhs), np.linalg.norm((np.eye(n) - W @ W.T) @ half) ** 2, rtol=1e-8
    )


def test_nystrom_operator_types_agree(rng):
    n = 50
    A, _ = psd_matrix(rng, n, 0.7 ** np.arange(n))
    ref = nystrom(A, 5, rng=3)
    for B in (sp.csr_array(A), sp.csc_matrix(A), aslinearoperator(A), DenseEntries(A)):
        res = nystrom(B, 5, rng=3)
        np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(nystrom_matrix(res), nystrom_matrix(ref), atol=1e-12)


def test_nystrom_kernel_matrix_operator(rng):
    K, A = kernel_matrix(rng, 90)
    ref = nystrom(A, 10, rng=1)
    res = nystrom(K, 10, rng=1)
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-10)


def test_nystrom_reproducible(rng):
    A, _ = psd_matrix(rng, 40, 0.9 ** np.arange(40))
    a = nystrom(A, 5, rng=7)
    b = nystrom(A, 5, rng=np.random.default_rng(7))
    c = nystrom(A, 5, rng=8)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    assert not np.array_equal(a.eigenvalues, c.eigenvalues)


def test_nystrom_full_sketch_is_exact(dtype, rng):
    n = 30
    lam = np.linspace(5, 0.1, n)
    A, _ = psd_matrix(rng, n, lam, dtype)
    res = nystrom(A, n, rng=rng)  # ell = min(n, n + 10) = n: Omega is orthogonal
    np.testing.assert_allclose(res.eigenvalues, lam, rtol=1e3 * eps(dtype))


def test_nystrom_zero_matrix(dtype):
    res = nystrom(np.zeros((10, 10), dtype=dtype), 3, rng=0)
    np.testing.assert_array_equal(res.eigenvalues, np.zeros(3))
    assert res.eigenvalues.dtype == dtype
    np.testing.assert_allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(3), atol=1e-6)


def test_nystrom_rank_deficient_core_is_handled(rng):
    # rank(A) = 3 < ell: Omega^T A Omega is singular; the shift keeps Cholesky alive.
    B = rng.standard_normal((40, 3))
    A = B @ B.T
    res = nystrom(A, 8, oversample=5, rng=rng)
    assert np.all(np.isfinite(res.eigenvalues))
    np.testing.assert_allclose(nystrom_matrix(res), A, atol=1e-10 * np.abs(A).max())
    np.testing.assert_allclose(res.eigenvalues[3:], 0.0, atol=1e-10 * np.abs(A).max())


def test_nystrom_detects_indefinite_matrix(rng):
    lam = np.linspace(-1.0, 1.0, 60)
    A, _ = psd_matrix(rng, 60, lam)
    before = A.copy()
    with pytest.raises(ValueError, match=r"not positive semidefinite.*Rayleigh quotient"):
        nystrom(A, 5, rng=rng)
    np.testing.assert_array_equal(A, before)


def test_nystrom_slightly_indefinite_matrix_warns_and_is_treated_as_psd(rng):
    # A PSD rank-5 matrix minus 1e-10 I: indefinite far beyond the rounding of the
    # products (~1e-14) but at a level a user would call rounding (e.g. a float32
    # kernel matrix cast to float64). Warned about, then handled as PSD.
    n = 50
    lam = np.r_[np.linspace(10, 2, 5), np.zeros(n - 5)]
    A, _ = psd_matrix(rng, n, lam)
    A -= 1e-10 * np.eye(n)
    with pytest.warns(AccuracyWarning, match="slightly indefinite"):
        res = nystrom(A, 5, rng=rng)
    np.testing.assert_allclose(res.eigenvalues, lam[:5], rtol=1e-8)


def test_nystrom_negative_definite_detected_even_with_tiny_sketch(rng):
    A, _ = psd_matrix(rng, 50, -np.linspace(1.0, 2.0, 50))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        nystrom(A, 1, oversample=0, rng=rng)


def test_nystrom_detects_asymmetric_matrix(rng):
    A, _ = psd_matrix(rng, 30, np.ones(30))
    A[0, 1] += 1.0
    with pytest.raises(ValueError, match="must be symmetric"):
        nystrom(A, 5, oversample=25, rng=rng)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"rank": 0}, ValueError, r"rank=0 must satisfy 1 <= rank <= 20"),
        ({"rank": 21}, ValueError, r"rank=21 must satisfy 1 <= rank <= 20"),
        ({"rank": 2.0}, TypeError, "rank must be an integer"),
        ({"rank": 2, "oversample": -1}, ValueError, "oversample=-1 must be >= 0"),
        ({"rank": 2, "shift": -1.0}, ValueError, "shift=-1.0 must be 'auto' or"),
        ({"rank": 2, "shift": "big"}, ValueError, "shift='big' must be 'auto'"),
        ({"rank": 2, "shift": None}, TypeError, "shift must be 'auto' or a real"),
    ],
)
def test_nystrom_bad_parameters(kwargs, exc, match, rng):
    A, _ = psd_matrix(rng, 20, np.ones(20))
    kwargs = dict(kwargs)
    rank = kwargs.pop("rank")
    with pytest.raises(exc, match=match):
        nystrom(A, rank, **kwargs)


@pytest.mark.parametrize(
    "A, exc, match",
    [
        (np.ones((3, 4)), ValueError, r"must be square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), ValueError, "finite"),
        (np.zeros((0, 0)), ValueError, "non-empty"),
        (np.eye(3) * (1 + 1j), TypeError, "complex"),
        ("abc", TypeError, "real numeric dtype"),
    ],
)
def test_nystrom_bad_matrices(A, exc, match):
    with pytest.raises(exc, match=match):
        nystrom(A, 1, rng=0)


def test_nystrom_nonfinite_operator():
    bad = LinearOperator((5, 5), matvec=lambda x: np.full(5, np.nan), dtype=np.float64)
    with pytest.raises(ValueError, match="finite"):
        nystrom(bad, 2, rng=0)


# ---------------------------------------------------------------------------------------
# rpcholesky: invariants
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_is_column_nystrom(method, dtype, rng):
    # F F^T = A(:, S) A(S, S)^+ A(S, :) for the returned pivots S.
    n, k = 80, 15
    A, _ = psd_matrix(rng, n, 1.0 / (1.0 + np.arange(n)), dtype)
    F, piv = rpcholesky(A, k, method=method, rng=rng)
    assert F.shape == (n, k) and F.dtype == dtype
    assert piv.shape == (k,) and piv.dtype == np.int64 and len(set(piv)) == k
    A64 = A.astype(np.float64)
    C = A64[:, piv]
    ref = C @ np.linalg.solve(A64[np.ix_(piv, piv)], C.T)
    FFt = F.astype(np.float64) @ F.T.astype(np.float64)
    np.testing.assert_allclose(FFt, ref, rtol=0, atol=1e4 * eps(dtype) * np.abs(A64).max())
    # Cholesky structure: F[piv] is lower triangular in pivot order.
    np.testing.assert_allclose(np.triu(F[piv].astype(np.float64), 1), 0.0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_residual_psd_and_diagonal_nonincreasing(method, dtype, rng):
    n, k = 60, 20
    K, A = kernel_matrix(rng, n, dtype=dtype)
    F, _ = rpcholesky(K, k, method=method, rng=rng)
    A64, F64 = A.astype(np.float64), F.astype(np.float64)
    tol = 1e3 * eps(dtype)
    diags = [np.diag(A64) - np.sum(F64[:, :j] ** 2, axis=1) for j in range(k + 1)]
    assert np.all(np.diff(np.array(diags), axis=0) <= tol)
    assert np.min(diags[-1]) >= -tol
    assert np.linalg.eigvalsh(A64 - F64 @ F64.T)[0] >= -tol * n


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_exact_recovery_of_low_rank(method, dtype, rng):
    n, r = 100, 7
    B = rng.standard_normal((n, r))
    A = (B @ B.T).astype(dtype)
    F, piv = rpcholesky(A, 30, method=method, rng=rng)
    assert F.shape == (n, r) and piv.shape == (r,)
    err = np.abs(A.astype(np.float64) - F.astype(np.float64) @ F.T.astype(np.float64)).max()
    assert err <= 1e3 * eps(dtype) * np.abs(A).max()


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_touches_only_diagonal_and_pivot_rows(method, rng):
    n, k = 120, 25
    _, A = kernel_matrix(rng, n)
    M = Recorder(A)
    _, piv = rpcholesky(M, k, method=method, rng=rng)
    requested = np.concatenate(M.row_requests)
    assert M.n_diag == 1 and M.n_cols == 0
    if method in ("simple", "greedy", "accelerated"):
        # Exactly the pivot rows, each once: (k + 1) n row/diagonal evaluations.
        np.testing.assert_array_equal(requested, piv)
        assert M.n_evaluations == (k + 1) * n + M.n_entries
    else:
        # Blocked/uniform evaluate the rows of every proposal, pivots included.
        assert set(piv) <= set(requested)
        assert M.n_evaluations == (1 + requested.size) * n
    if method != "accelerated":
        assert M.n_entries == 0
    else:
        # Proposal blocks cost b(b-1)/2 entries each: a small fraction of k n.
        assert 0 < M.n_entries < k * n


@pytest.mark.parametrize("method", ["simple", "greedy"])
def test_rpcholesky_evaluation_count_is_exact(method, rng):
    n, k = 150, 30
    K, _ = kernel_matrix(rng, n)
    K.reset_count()
    rpcholesky(K, k, method=method, rng=rng)
    assert K.n_evaluations == (k + 1) * n


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_dense_and_entry_matrix_agree(method, dtype, rng):
    _, A = kernel_matrix(rng, 70, dtype=dtype)
    F1, p1 = rpcholesky(A, 12, method=method, rng=5)
    F2, p2 = rpcholesky(DenseEntries(A), 12, method=method, rng=5)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(F1, F2)


@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_rpcholesky_reproducible(method, rng):
    _, A = kernel_matrix(rng, 70)
    F1, p1 = rpcholesky(A, 12, method=method, rng=11)
    F2, p2 = rpcholesky(A, 12, method=method, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(F1, F2)
    pivots = {tuple(rpcholesky(A, 12, method=method, rng=s).pivots) for s in range(5)}
    assert len(pivots) > 1


def test_rpcholesky_greedy_picks_largest_residual(rng):
    n = 40
    A, _ = psd_matrix(rng, n, np.linspace(3, 0.5, n))
    F, piv = rpcholesky(A, 5, method="greedy")
    d = np.diag(A).copy()
    for j, p in enumerate(piv):
        assert p == np.argmax(d)
        d = np.diag(A) - np.sum(F[:, : j + 1] ** 2, axis=1)


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_tolerance(method, rng):
    K, A = kernel_matrix(rng, 200)
    tr = np.trace(A)
    F, _ = rpcholesky(K, tol=1e-3, method=method, rng=rng)
    err = (tr - np.sum(F**2)) / tr
    assert err <= 1e-3
    if method in ("simple", "greedy"):
        # Checked after every pivot: one pivot fewer would not have met tol.
        assert (tr - np.sum(F[:, :-1] ** 2)) / tr > 1e-3


def test_rpcholesky_rank_and_tol_warns_when_tol_not_met(rng):
    _, A = kernel_matrix(rng, 100)
    with pytest.warns(AccuracyWarning, match="tol=1e-08 not reached with rank=3"):
        F, _ = rpcholesky(A, 3, tol=1e-8, rng=rng)
    assert F.shape == (100, 3)


def test_rpcholesky_zero_matrix(dtype):
    F, piv = rpcholesky(np.zeros((6, 6), dtype=dtype), 3, rng=0)
    assert F.shape == (6, 0) and F.dtype == dtype and piv.shape == (0,)


def test_rpcholesky_one_by_one(dtype):
    F, piv = rpcholesky(np.array([[4.0]], dtype=dtype), 1, rng=0)
    np.testing.assert_allclose(F, [[2.0]])
    np.testing.assert_array_equal(piv, [0])


def test_rpcholesky_block_sizes_accelerated(rng):
    K, _ = kernel_matrix(rng, 150)
    for b in (1, 3, 50, 400):
        F, piv = rpcholesky(K, 20, block_size=b, rng=rng)
        assert F.shape == (150, 20) and len(set(piv)) == 20


# ---------------------------------------------------------------------------------------
# rpcholesky: bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((), {}, ValueError, "give rank=, tol= or both"),
        ((0,), {}, ValueError, r"rank=0 must satisfy 1 <= rank <= 10"),
        ((11,), {}, ValueError, r"rank=11 must satisfy 1 <= rank <= 10"),
        ((2.5,), {}, TypeError, "rank must be an integer"),
        ((), {"tol": 0.0}, ValueError, r"tol=0.0 must lie in \(0, 1\)"),
        ((), {"tol": 1.5}, ValueError, r"tol=1.5 must lie in \(0, 1\)"),
        ((3,), {"method": "random"}, ValueError, "method='random' is not one of"),
        ((3,), {"block_size": 0}, ValueError, "block_size=0 must be >= 1"),
    ],
)
def test_rpcholesky_bad_parameters(args, kwargs, exc, match, rng):
    A, _ = psd_matrix(rng, 10, np.ones(10))
    before = A.copy()
    with pytest.raises(exc, match=match):
        rpcholesky(A, *args, **kwargs)
    np.testing.assert_array_equal(A, before)


@pytest.mark.parametrize(
    "A, exc, match",
    [
        (sp.eye(4, format="csr"), TypeError, "needs entry access.*rnla.nystrom"),
        (aslinearoperator(np.eye(4)), TypeError, "needs entry access"),
        (np.ones((3, 4)), ValueError, "must be square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), ValueError, "finite"),
        (np.zeros((0, 0)), ValueError, "non-empty"),
        (np.eye(3) * 1j, TypeError, "complex"),
        (np.diag([1.0, -2.0, 3.0]), ValueError, r"not positive semidefinite.*diagonal entry"),
    ],
)
def test_rpcholesky_bad_matrices(A, exc, match):
    with pytest.raises(exc, match=match):
        rpcholesky(A, 1, rng=0)


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_detects_indefinite_matrix(method, rng):
    # Positive diagonal, but indefinite (the 2 x 2 block [[1, 2], [2, 1]] has the
    # eigenvalue -1), hidden in a random permutation of a PSD matrix: a Schur complement
    # turns negative once either index of the block is a pivot.
    B, _ = psd_matrix(rng, 28, np.linspace(3.0, 0.5, 28))
    A = np.zeros((30, 30))
    A[:2, :2] = [[1.0, 2.0], [2.0, 1.0]]
    A[2:, 2:] = B
    perm = rng.permutation(30)
    A = A[np.ix_(perm, perm)]
    assert np.linalg.eigvalsh(A)[0] < -0.9 and np.diag(A).min() > 0
    before = A.copy()
    with pytest.raises(ValueError, match=r"not positive semidefinite.*residual diagonal"):
        rpcholesky(A, 30, method=method, rng=rng)
    np.testing.assert_array_equal(A, before)


@pytest.mark.parametrize("method", METHODS)
def test_rpcholesky_detects_asymmetric_matrix(method, rng):
    # The check sees the pivot block A[S, S]: with all 20 pivots it sees everything.
    A, _ = psd_matrix(rng, 20, np.ones(20))
    A[3, 5] += 0.5
    with pytest.raises(ValueError, match="must be symmetric"):
        rpcholesky(A, 20, method=method, block_size=20, rng=rng)


def test_rpcholesky_entry_matrix_with_nan_rows():
    class Bad(DenseEntries):
        def _rows(self, idx):
            out = super()._rows(idx)
            return np.full_like(out, np.nan)

    with pytest.raises(ValueError, match="finite"):
        rpcholesky(Bad(np.eye(5)), 2, method="simple", rng=0)


# ---------------------------------------------------------------------------------------
# kernels against plain NumPy references
# ---------------------------------------------------------------------------------------


def ref_block_pivoted_cholesky(H, u, dprop, floor, negtol, ids, max_accept, pivoting):
    """Reference: explicit Schur complements; L from numpy.linalg.cholesky."""
    H0 = H.copy()
    R = H.copy()
    b = R.shape[0]
    acc, done = [], []
    for step in range(b):
        if len(acc) >= max_accept:
            break
        todo = [q for q in range(b) if q not in done]
        j = todo[int(np.argmax([R[q, q] for q in todo]))] if pivoting else step
        done.append(j)
        h = R[j, j]
        if h < -negtol[j]:
            return -(j + 1), None, None
        if ids[j] in [ids[a] for a in acc] or h <= floor[j] or not u[j] * dprop[j] < h:
            continue
        acc.append(j)
        col = R[:, j] / np.sqrt(h)
        R = R - np.outer(col, col)
    if not acc:
        return 0, [], np.zeros((0, 0))
    return len(acc), acc, np.linalg.cholesky(H0[np.ix_(acc, acc)])


@pytest.mark.parametrize("b", [1, 2, 6, 15])
@pytest.mark.parametrize("mode", ["rejection", "deterministic", "pivoting"])
def test_block_pivoted_cholesky_kernel_matches_reference(b, mode, rng):
    n_idx = max(2, b // 2)
    ids = rng.integers(0, n_idx, size=b)  # repeated proposals
    X = rng.standard_normal((n_idx, 4))
    G = np.exp(-0.5 * np.sum((X[:, None] - X[None]) ** 2, axis=-1))
    H = np.ascontiguousarray(G[np.ix_(ids, ids)]) * rng.uniform(0.5, 2.0)
    dprop = np.diag(H).copy()
    u = rng.random(b) if mode == "rejection" else np.zeros(b)
    floor = np.full(b, 1e-12)
    negtol = np.full(b, 1e-12)
    pivoting = mode == "pivoting"
    for max_accept in (1, b):
        accepted = np.empty(b, dtype=np.int64)
        L = np.empty((b, b))
        count = _block_pivoted_cholesky(
            H.copy(),
            u,
            dprop,
            floor,
            negtol,
            ids.astype(np.int64),
            max_accept,
            pivoting,
            accepted,
            L,
        )
        ref_count, ref_acc, ref_L = ref_block_pivoted_cholesky(
            H, u, dprop, floor, negtol, ids, max_accept, pivoting
        )
        assert count == ref_count
        np.testing.assert_array_equal(accepted[:count], ref_acc)
        np.testing.assert_allclose(L[:count, :count], ref_L, atol=1e-12)
        assert len(set(ids[accepted[:count]])) == count


def test_block_pivoted_cholesky_kernel_edge_cases():
    one = np.ones(1)
    ids = np.zeros(1, dtype=np.int64)

    def run(H, u, dprop, negtol):
        acc = np.empty(1, dtype=np.int64)
        L = np.empty((1, 1))
        count = _block_pivoted_cholesky(
            np.array([[H]]),
            np.array([u]),
            np.array([dprop]),
            1e-15 * one,
            np.array([negtol]),
            ids,
            1,
            False,
            acc,
            L,
        )
        return count, L[0, 0]

    assert run(0.0, 0.0, 0.0, 1.0)[0] == 0  # zero block: nothing accepted
    assert run(-1.0, 0.0, 0.0, 1e-3)[0] == -1  # negative beyond tolerance: not PSD
    assert run(1.0, 0.9, 2.0, 1.0)[0] == 0  # u * dprop >= h: rejected
    assert run(4.0, 0.4, 2.0, 1.0) == (1, 2.0)  # u * dprop < h: accepted, L = sqrt(h)


def ref_downdate(d, Fb, d0, floor_factor, neg_factor, neg_abs):
    new = d - np.sum(Fb.astype(np.float64) ** 2, axis=0)
    low = new <= floor_factor * d0
    neg = low & (new < -(neg_factor * d0 + neg_abs))
    bad = int(np.argmax(neg)) if neg.any() else -1
    return np.where(low, 0.0, new), bad


@pytest.mark.parametrize("n, rows", [(1, 1), (7, 1), (50, 4)])
def test_downdate_diagonal_kernel_matches_reference(n, rows, dtype, rng):
    d0 = rng.random(n) + 0.5
    Fb = (rng.standard_normal((rows, n)) * 0.3).astype(dtype)
    Fb[:, 0] = np.sqrt(d0[0] / rows)  # entry 0 lands exactly at (or near) zero
    for neg_abs in (10.0, 0.0):  # generous tolerance, then none
        d = d0.copy()
        bad = _downdate_diagonal(d, np.ascontiguousarray(Fb), d0, 1e-6, 1e-8, neg_abs)
        ref_d, ref_bad = ref_downdate(d0, Fb, d0, 1e-6, 1e-8, neg_abs)
        np.testing.assert_allclose(d, ref_d, rtol=1e-12, atol=1e-15)
        assert bad == ref_bad
        assert d.min() >= 0.0


def test_downdate_diagonal_kernel_zeros():
    d = np.zeros(3)
    assert _downdate_diagonal(d, np.zeros((2, 3)), np.zeros(3), 1e-6, 1e-8, 0.0) == -1
    np.testing.assert_array_equal(d, 0.0)


# ---------------------------------------------------------------------------------------
# a kernel matrix of 50,000 points, never formed
# ---------------------------------------------------------------------------------------


class CountingKernel(_Recording, KernelMatrix):
    """KernelMatrix that records the rows and entries it delivers."""


def test_rpcholesky_factors_50000_point_kernel_matrix_without_forming_it(rng):
    n, k = 50_000, 100
    K = CountingKernel(rng.standard_normal((n, 3)))
    tracemalloc.start()
    F, piv = rpcholesky(K, k, rng=rng)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert F.shape == (n, k) and len(set(piv)) == k
    # Only the diagonal and the pivot rows (plus the tiny proposal blocks) were read.
    np.testing.assert_array_equal(np.concatenate(K.row_requests), piv)
    assert K.n_evaluations == n * (k + 1) + K.n_entries
    assert K.n_entries < n
    # O(n k) memory: a dense K would need n^2 * 8 bytes = 20 GB.
    assert peak < 8 * n * k * 8
    # Accuracy: relative trace error (diag = 1), and sampled entries obey the PSD
    # certificate |E_ij| <= sqrt(E_ii E_jj) of the residual E = K - F F^T.
    resid_diag = 1.0 - np.sum(F**2, axis=1)
    assert resid_diag.sum() / n < 5e-3
    i = rng.integers(0, n, 4000)
    j = rng.integers(0, n, 4000)
    err = np.abs(K.entries(i, j) - np.sum(F[i] * F[j], axis=1))
    assert np.all(
        err <= np.sqrt(np.maximum(resid_diag[i], 0) * np.maximum(resid_diag[j], 0)) + 1e-10
    )
    assert err.mean() < 1e-3
