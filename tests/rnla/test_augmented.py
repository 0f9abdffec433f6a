"""Tests of rnla.augmented: shift reuse, exactness, baselines, FIR helpers, bad input."""

import numpy as np
import pytest

from rnla.augmented import (
    AugmentedBounds,
    AugmentedKrylov,
    exact_likelihood,
    fir_kernel,
    fir_likelihood_qr,
    fir_operator,
    fir_regressor,
    lanczos_datafit,
    slq_logdet,
)
from rnla.krylov import quadform_bounds
from tests.conftest import tol

LAM = np.geomspace(1e-3, 1e2, 12)


def fir_problem(rng, N=300, n=30, alpha=0.85, noise=0.3):
    """A small FIR identification problem: A = Phi K Phi^T (rank n), y = Phi g0 + e."""
    u = rng.standard_normal(N)
    Phi = fir_regressor(u, n)
    K = fir_kernel(n, kind="tc", alpha=alpha)
    i = np.arange(1, n + 1)
    g0 = 0.8**i * np.sin(0.3 * i)
    y0 = Phi @ g0
    y = y0 + noise * np.std(y0) * rng.standard_normal(N)
    return u, Phi, K, y


def psd_matrix(rng, n=200, decay=0.8, floor=0.0):
    """Dense PSD matrix with geometric spectrum decay**i (+ floor), random eigenvectors."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    mu = decay ** np.arange(n) + floor
    return (Q * mu) @ Q.T, mu


# ---------------------------------------------------------------------------------------
# shift invariance: many shifts == one fresh computation per shift
# ---------------------------------------------------------------------------------------


def test_datafit_matches_per_shift_solve(rng):
    _, Phi, K, y = fir_problem(rng)
    A = Phi @ K @ Phi.T
    ak = AugmentedKrylov(A, y, k=4, n_probes=5, rng=rng)
    Q = ak._Q
    T = Q.T @ A @ Q
    c = Q.T @ y
    fresh = np.array([c @ np.linalg.solve(lam * np.eye(ak.dim) + T, c) for lam in LAM])
    np.testing.assert_allclose(ak.datafit(LAM), fresh, rtol=1e-9)
    # scalar calls agree with the vectorised call
    np.testing.assert_allclose([ak.datafit(lam) for lam in LAM], ak.datafit(LAM), rtol=1e-12)


def test_interlacing_logdet_matches_per_shift_slogdet(rng):
    """With one probe the log-det lower bound is the projected log-det, exactly."""
    _, Phi, K, y = fir_problem(rng)
    A = Phi @ K @ Phi.T
    ak = AugmentedKrylov(A, y, k=5, n_probes=1, rng=rng)
    Q = ak._Q
    T = Q.T @ A @ Q
    fresh = [
        np.linalg.slogdet(lam * np.eye(ak.dim) + T)[1] + (ak.n - ak.dim) * np.log(lam)
        for lam in LAM
    ]
    b = ak.bounds(LAM)
    np.testing.assert_allclose(b.logdet_lower, fresh, rtol=1e-10)
    assert np.all(np.isinf(b.logdet_upper)) and np.all(np.isinf(b.logdet_stderr))


def test_solve_is_galerkin_solution(rng):
    _, Phi, K, y = fir_problem(rng)
    ak = AugmentedKrylov(Phi @ K @ Phi.T, y, k=4, n_probes=4, rng=rng)
    x = ak.solve(0.1)
    assert x.shape == y.shape
    np.testing.assert_allclose(y @ x, ak.datafit(0.1), rtol=1e-10)


def test_plain_lanczos_rules_match_krylov_quadform_bounds(rng):
    """Single-vector rules equal the independent implementation in rnla.krylov."""
    _, Phi, K, y = fir_problem(rng)
    A = Phi @ K @ Phi.T
    lams = LAM[::3]
    est = lanczos_datafit(A, y, lams, k=6, rng=1)
    hi = np.linalg.eigvalsh(A)[-1] * 1.01
    for i, lam in enumerate(lams):
        ref = quadform_bounds(A, y, "inv", 6, spectrum=(0.0, hi), shift=lam, rng=1)
        np.testing.assert_allclose(est.lower[i], ref.gauss, rtol=1e-8)
        np.testing.assert_allclose(est.upper[i], ref.radau, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# exactness on an invariant subspace
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_exact_for_low_rank(rng, probes):
    n, r = 120, 10
    X = rng.standard_normal((n, r))
    A = X @ X.T
    y = rng.standard_normal(n)
    ak = AugmentedKrylov(A, y, k=6, n_probes=4, probes=probes, rng=rng)
    assert ak.n_converged == ak.dim
    ex = exact_likelihood(A, y, LAM, method="eigh")
    for rule in ("gauss", "radau"):
        np.testing.assert_allclose(ak.datafit(LAM, rule=rule), ex.datafit, rtol=1e-8)
        np.testing.assert_allclose(ak.logdet(LAM, rule=rule), ex.logdet, rtol=1e-10)
    np.testing.assert_allclose(ak.neg_log_likelihood(LAM), ex.neg_log_likelihood, rtol=1e-9)
    b = ak.bounds(LAM)
    np.testing.assert_allclose(b.logdet_stderr, 0.0, atol=1e-8)


# ---------------------------------------------------------------------------------------
# accuracy against the baselines
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 6])
def test_augmented_datafit_beats_plain_lanczos_per_step(rng, k):
    """At equal block steps the augmented Gauss value has <= 1/2 the plain error."""
    u, Phi, K, y = fir_problem(rng, N=400, n=40)
    A = fir_operator(u, K)
    lams = np.geomspace(3e-2, 1.0, 5) * np.var(y)
    ex = fir_likelihood_qr(Phi, K, y, lams).datafit
    aug = AugmentedKrylov(A, y, k=k, n_probes=8, rng=rng).datafit(lams)
    plain = lanczos_datafit(A, y, lams, k=k, rng=rng).value
    err_aug = 1 - aug / ex
    err_plain = 1 - plain / ex
    assert np.all(err_aug >= -1e-12) and np.all(err_plain >= -1e-12)
    assert np.all(err_aug <= 0.5 * err_plain)


def test_logdet_beats_slq_at_equal_budget():
    """RMSE over independent draws: augmented <= SLQ (Gauss) at the same matvec count."""
    rng = np.random.default_rng(7)
    u, Phi, K, y = fir_problem(rng)
    A = fir_operator(u, K)
    lams = np.array([1e-2, 1e-1, 1.0]) * np.var(y)
    ex = fir_likelihood_qr(Phi, K, y, lams).logdet
    k, s = 4, 6
    err_aug, err_slq = [], []
    for seed in range(20):
        ak = AugmentedKrylov(A, y, k=k, n_probes=s, rng=seed)
        # SLQ with the same number of products: s probes of (k + 1) steps each
        sl = slq_logdet(A, lams, k=k + 1, n_probes=s, rng=seed)
        err_aug.append(ak.logdet(lams) - ex)
        err_slq.append(sl.value - ex)
    rmse_aug = np.sqrt(np.mean(np.square(err_aug), axis=0))
    rmse_slq = np.sqrt(np.mean(np.square(err_slq), axis=0))
    assert np.all(rmse_aug < rmse_slq)


def test_objective_minimiser_matches_exact(rng):
    u, Phi, K, y = fir_problem(rng, N=400, n=40)
    lams = np.geomspace(1e-3, 10, 60) * np.var(y)
    ex = fir_likelihood_qr(Phi, K, y, lams).neg_log_likelihood
    ak = AugmentedKrylov(fir_operator(u, K), y, k=6, n_probes=8, rng=rng)
    est = ak.neg_log_likelihood(lams)
    # the low-rank problem (rank 40 < dim 54) is captured exactly
    np.testing.assert_allclose(est, ex, rtol=1e-8)
    assert np.argmin(est) == np.argmin(ex)


# ---------------------------------------------------------------------------------------
# dtype contract, input handling
# ---------------------------------------------------------------------------------------


def test_dtype_contract(rng, dtype):
    A, _ = psd_matrix(rng, n=150)
    y = rng.standard_normal(150)
    ak = AugmentedKrylov(A.astype(dtype), y.astype(dtype), k=4, n_probes=4, rng=0)
    ref = AugmentedKrylov(A, y, k=4, n_probes=4, rng=0)
    assert ak.dtype == dtype
    lams = np.geomspace(1e-2, 1.0, 4)
    for out in (ak.datafit(lams), ak.logdet(lams), ak.neg_log_likelihood(lams)):
        assert out.dtype == dtype and out.shape == (4,)
    b = ak.bounds(lams)
    assert isinstance(b, AugmentedBounds) and all(f.dtype == dtype for f in b)
    assert np.ndim(ak.datafit(0.1)) == 0
    rtol = 1e-10 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(ak.datafit(lams), ref.datafit(lams), rtol=rtol)
    np.testing.assert_allclose(ak.logdet(lams), ref.logdet(lams), rtol=rtol)


def test_integer_input_promotes(rng):
    A = np.diag(np.arange(1, 41))
    ak = AugmentedKrylov(A, np.ones(40, dtype=int), k=2, n_probes=3, rng=0)
    assert ak.dtype == np.float64


def test_same_seed_same_result(rng):
    A, _ = psd_matrix(rng, n=100)
    y = rng.standard_normal(100)
    a = AugmentedKrylov(A, y, k=3, n_probes=3, rng=5).logdet(LAM)
    b = AugmentedKrylov(A, y, k=3, n_probes=3, rng=5).logdet(LAM)
    np.testing.assert_array_equal(a, b)


def test_inputs_not_mutated(rng):
    A, _ = psd_matrix(rng, n=80)
    y = rng.standard_normal(80)
    lam = LAM.copy()
    A0, y0 = A.copy(), y.copy()
    ak = AugmentedKrylov(A, y, k=3, n_probes=3, rng=0)
    ak.bounds(lam)
    exact_likelihood(A, y, lam)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(lam, LAM)


@pytest.mark.parametrize(
    ("lam", "err", "match"),
    [
        (0.0, ValueError, "lam must be finite and > 0"),
        (-1.0, ValueError, "lam must be finite and > 0"),
        ([1.0, np.nan], ValueError, "lam must be finite and > 0"),
        (np.ones((2, 2)), ValueError, "scalar or 1-D"),
        ([], ValueError, "at least one shift"),
        (1.0 + 1j, TypeError, "real"),
        ("a", TypeError, "positive number"),
    ],
)
def test_bad_lam(rng, lam, err, match):
    A, _ = psd_matrix(rng, n=40)
    ak = AugmentedKrylov(A, np.ones(40), k=2, n_probes=2, rng=0)
    for method in (ak.datafit, ak.logdet, ak.neg_log_likelihood, ak.bounds):
        with pytest.raises(err, match=match):
            method(lam)


def test_bad_constructor_input(rng):
    A, _ = psd_matrix(rng, n=40)
    y = np.ones(40)
    with pytest.raises(ValueError, match=r"k \* \(1 \+ n_probes\) = 9 \* 5 = 45 must be <= n=40"):
        AugmentedKrylov(A, y, k=9, n_probes=4)
    with pytest.raises(ValueError, match="n_probes=0 must satisfy"):
        AugmentedKrylov(A, y, k=2, n_probes=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        AugmentedKrylov(A, y, k=2.0, n_probes=2)
    with pytest.raises(ValueError, match="y must be nonzero"):
        AugmentedKrylov(A, np.zeros(40), k=2, n_probes=2)
    with pytest.raises(ValueError, match="y must have 40 entries"):
        AugmentedKrylov(A, np.ones(39), k=2, n_probes=2)
    with pytest.raises(ValueError, match="must be square"):
        AugmentedKrylov(A[:, :30], y, k=2, n_probes=2)
    with pytest.raises(ValueError, match="must be symmetric"):
        AugmentedKrylov(np.triu(A + 1.0), y, k=2, n_probes=2, rng=0)
    with pytest.raises(ValueError, match="positive semidefinite"):
        AugmentedKrylov(-A, y, k=2, n_probes=2, rng=0)
    with pytest.raises(ValueError, match="probes='normal' is not one of"):
        AugmentedKrylov(A, y, k=2, n_probes=2, probes="normal")
    with pytest.raises(ValueError, match=r"spectrum_lower=-1\.0"):
        AugmentedKrylov(A, y, k=2, n_probes=2, spectrum_lower=-1.0)
    with pytest.raises(ValueError, match="not a lower bound"):
        AugmentedKrylov(A, y, k=2, n_probes=2, spectrum_lower=10.0, rng=0)
    with pytest.raises(TypeError, match="complex"):
        AugmentedKrylov(A.astype(complex), y, k=2, n_probes=2)
    ak = AugmentedKrylov(A, y, k=2, n_probes=2, rng=0)
    with pytest.raises(ValueError, match="rule='midpoint' is not one of"):
        ak.datafit(1.0, rule="midpoint")
    with pytest.raises(ValueError, match="one shift"):
        ak.solve([1.0, 2.0])


def test_sparse_and_operator_input(rng):
    import scipy.sparse as sp

    u, Phi, K, y = fir_problem(rng, N=200, n=20)
    A = Phi @ K @ Phi.T
    lams = LAM[::4]
    dense = AugmentedKrylov(A, y, k=3, n_probes=3, rng=1).datafit(lams)
    sparse = AugmentedKrylov(sp.csr_array(A), y, k=3, n_probes=3, rng=1).datafit(lams)
    op = AugmentedKrylov(fir_operator(u, K), y, k=3, n_probes=3, rng=1).datafit(lams)
    np.testing.assert_allclose(sparse, dense, rtol=1e-10)
    np.testing.assert_allclose(op, dense, rtol=1e-8)


# ---------------------------------------------------------------------------------------
# baselines and exact references
# ---------------------------------------------------------------------------------------


def test_baseline_shapes_and_budget(rng):
    A, _ = psd_matrix(rng, n=60)
    y = rng.standard_normal(60)
    est = lanczos_datafit(A, y, LAM, k=5, rule="radau", rng=0)
    assert est.value.shape == LAM.shape and est.n_matvecs == 5 + 3
    np.testing.assert_array_equal(est.value, est.upper)
    sl = slq_logdet(A, LAM, k=5, n_probes=3, rng=0)
    assert sl.value.shape == sl.stderr.shape == LAM.shape and sl.n_matvecs == 3 * (5 + 3)
    assert np.ndim(slq_logdet(A, 0.5, k=3, n_probes=2, rng=0).value) == 0
    with pytest.raises(ValueError, match="lam must be finite and > 0"):
        slq_logdet(A, 0.0, k=3, n_probes=2)
    with pytest.raises(ValueError, match="k=61 must satisfy"):
        lanczos_datafit(A, y, 1.0, k=61)


def test_exact_methods_agree(rng):
    _, Phi, K, y = fir_problem(rng, N=150, n=15)
    A = Phi @ K @ Phi.T
    chol = exact_likelihood(A, y, LAM)
    eig = exact_likelihood(A, y, LAM, method="eigh")
    qr = fir_likelihood_qr(Phi, K, y, LAM)
    for ref in (eig, qr):
        np.testing.assert_allclose(ref.datafit, chol.datafit, rtol=1e-7)
        np.testing.assert_allclose(ref.logdet, chol.logdet, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(
        chol.neg_log_likelihood, 150 * np.log(chol.datafit) + chol.logdet, rtol=1e-12
    )
    with pytest.raises(ValueError, match="positive semidefinite"):
        exact_likelihood(A - 10 * np.eye(150), y, 1.0)
    with pytest.raises(ValueError, match="must be symmetric"):
        exact_likelihood(np.triu(A + 1), y, 1.0)


def test_fir_operator_matches_dense(rng):
    u = rng.standard_normal(64)
    K = fir_kernel(12, kind="dc", alpha=0.8, rho=0.5)
    Phi = fir_regressor(u, 12)
    op = fir_operator(u, K)
    X = rng.standard_normal((64, 3))
    np.testing.assert_allclose(op @ X, Phi @ K @ Phi.T @ X, atol=1e-12)
    np.testing.assert_allclose(op.matvec(X[:, 0]), Phi @ K @ Phi.T @ X[:, 0], atol=1e-12)
    # dot test (symmetric operator)
    x, z = rng.standard_normal(64), rng.standard_normal(64)
    assert abs(z @ (op @ x) - x @ (op @ z)) <= 1e-10 * np.linalg.norm(x) * np.linalg.norm(z)


@pytest.mark.parametrize("kind", ["tc", "dc", "ss", "di"])
def test_fir_kernels_psd(kind):
    K = fir_kernel(30, kind=kind, alpha=0.9, rho=0.3, scale=2.0)
    assert K.shape == (30, 30)
    np.testing.assert_array_equal(K, K.T)
    assert np.linalg.eigvalsh(K).min() >= -tol(np.float64, 100) * np.abs(K).max()


def test_fir_dc_reduces_to_tc():
    np.testing.assert_allclose(
        fir_kernel(10, kind="dc", alpha=0.7, rho=np.sqrt(0.7)), fir_kernel(10, alpha=0.7)
    )


def test_fir_bad_input():
    with pytest.raises(ValueError, match=r"alpha=1\.5 must satisfy 0 < alpha < 1"):
        fir_kernel(5, alpha=1.5)
    with pytest.raises(ValueError, match="needs rho"):
        fir_kernel(5, kind="dc")
    with pytest.raises(ValueError, match="kind='xx' is not one of"):
        fir_kernel(5, kind="xx")
    with pytest.raises(ValueError, match="n=11 must satisfy"):
        fir_regressor(np.ones(10), 11)
    with pytest.raises(ValueError, match="K must have shape"):
        fir_likelihood_qr(np.ones((10, 3)), np.eye(2), np.ones(10), 1.0)


# ---------------------------------------------------------------------------------------
# defaults: the Lanczos steps and probes of rnla.trace.logdet, clamped to small problems
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 12, 40, 300])
def test_defaults_fit_any_size(rng, n):
    A, _ = psd_matrix(rng, n=n, decay=0.7, floor=0.01)
    y = rng.standard_normal(n)
    ak = AugmentedKrylov(A, y, rng=0)
    s = min(10, n - 1)
    assert ak.n_probes == s and ak.k == max(1, min(20, n // (1 + s)))
    exact = exact_likelihood(A, y, LAM)
    # Gauss/Radau bracket the exact data fit whatever the default budget.
    b = ak.bounds(LAM)
    assert np.all(b.datafit_lower <= exact.datafit * (1 + 1e-9))
    assert np.all(exact.datafit <= b.datafit_upper * (1 + 1e-9))
    est = slq_logdet(A, LAM, rng=0)
    assert est.n_matvecs > 0 and np.all(np.isfinite(est.value))
    assert lanczos_datafit(A, y, LAM).value.shape == LAM.shape


def test_defaults_match_logdet_budget(rng):
    from rnla.trace import logdet

    A, _ = psd_matrix(rng, n=300, decay=0.9, floor=0.1)
    lam = np.array([1.0])
    ours = slq_logdet(A, lam, rng=3)
    # Same probes, same steps: 10 probes x (20 steps + 3 extra products).
    assert ours.n_matvecs == 10 * (20 + 3)
    ref = logdet(A + np.eye(300), method="slq", rng=3)
    assert abs(ours.value[0] - ref.value) < 5 * (ours.stderr[0] + ref.stderr)


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
def test_exact_likelihood_psd_to_rounding(method):
    # A rank-1 PSD matrix whose null space is indefinite in floating point: a tiny shift
    # must still be evaluated (the Cholesky path falls back to the clipped spectrum).
    x = np.array([1.0, 1.0 / 3.0, 2.0 / 7.0])
    A = np.outer(x, x)
    y = np.array([1.0, -2.0, 0.5])
    got = exact_likelihood(A, y, [1e-14, 1.0], method=method)
    mu, U = np.linalg.eigh(A)
    mu = np.maximum(mu, 0.0)
    ref_fit = ((U.T @ y) ** 2 / (np.array([1e-14, 1.0])[:, None] + mu)).sum(axis=1)
    # at lam = 1e-14 the null-space eigenvalues (rounding, ~1e-17) shift the value by ~1e-3
    np.testing.assert_allclose(got.datafit[0], ref_fit[0], rtol=1e-2)
    np.testing.assert_allclose(got.datafit[1], ref_fit[1], rtol=1e-10)
    assert np.all(np.isfinite(got.logdet))


@pytest.mark.parametrize("a", [0.0, 0.5, 1e15])
def test_one_by_one_defaults_are_clamped_and_exact(dtype, a):
    # N = 1 leaves no room for a probe next to y: the defaults clamp to n_probes = 0 and
    # the space spanned by y is R^1, so every result is exact.
    A = np.array([[a]], dtype=dtype)
    y = np.array([2.0], dtype=dtype)
    A0, y0 = A.copy(), y.copy()
    lam = np.array([1e-8, 1e-2, 1.0, 1e4])
    aug = AugmentedKrylov(A, y, rng=0)
    assert (aug.n_probes, aug.k, aug.dim, aug.breakdown) == (0, 1, 1, True)
    a64 = np.float64(np.dtype(dtype).type(a))
    ref_fit, ref_ld = 4.0 / (lam + a64), np.log(lam + a64)
    rt = tol(dtype)
    np.testing.assert_allclose(aug.datafit(lam), ref_fit, rtol=rt)
    np.testing.assert_allclose(aug.datafit(lam, rule="radau"), ref_fit, rtol=rt)
    np.testing.assert_allclose(aug.logdet(lam), ref_ld, rtol=rt, atol=rt)
    np.testing.assert_allclose(
        aug.neg_log_likelihood(lam), np.log(ref_fit) + ref_ld, rtol=rt, atol=rt
    )
    b = aug.bounds(lam)
    for field in b:
        assert field.dtype == np.dtype(dtype) and np.isfinite(field).all()
    np.testing.assert_array_equal(b.logdet_stderr, 0.0)
    np.testing.assert_allclose(aug.solve(1.0), [2.0 / (1.0 + a64)], rtol=rt)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(y, y0)


def test_one_by_one_explicit_bad_sizes_still_refused():
    A, y = np.array([[1.0]]), np.array([1.0])
    with pytest.raises(ValueError, match=r"k \* \(1 \+ n_probes\) = 1 \* 2 = 2 must be <= n=1"):
        AugmentedKrylov(A, y, n_probes=1)
    with pytest.raises(ValueError, match=r"= 2 \* 1 = 2 must be <= n=1"):
        AugmentedKrylov(A, y, k=2)
    # Negative control: N = 2 keeps one probe by default.
    assert AugmentedKrylov(np.eye(2), np.ones(2), rng=0).n_probes == 1
