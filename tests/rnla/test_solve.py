"""Tests of rnla.solve: sketch-and-precondition least squares and Nyström PCG."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla import AccuracyWarning, ConvergenceWarning, RNLAWarning, lstsq, nystrom_pcg
from rnla.operators import KernelMatrix
from rnla.sketch import gaussian


def _tall(rng, m, n, kappa, dtype=np.float64):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return ((U * np.logspace(0, -np.log10(kappa), n)) @ V.T).astype(dtype)


def _problem(rng, m, n, kappa, noise=1e-3):
    """A with condition kappa, b = A x_true + r with r orthogonal to range(A)."""
    A = _tall(rng, m, n, kappa)
    x_true = rng.standard_normal(n)
    g = rng.standard_normal(m)
    Q, _ = np.linalg.qr(A)
    r = g - Q @ (Q.T @ g)
    return A, A @ x_true + noise * r / np.linalg.norm(r), x_true


# ---------------------------------------------------------------------------------------
# lstsq
# ---------------------------------------------------------------------------------------


def test_lstsq_matches_numpy(dtype, rng):
    A, b, _ = _problem(rng, 3000, 40, 1e3)
    A, b = A.astype(dtype), b.astype(dtype)
    res = lstsq(A, b, rng=rng)
    ref = np.linalg.lstsq(A.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    assert res.x.dtype == dtype and res.x.shape == (40,)
    rtol = 1e-10 if dtype == np.float64 else 1e-2
    np.testing.assert_allclose(res.x, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    assert np.isfinite(res.x).all()
    assert res.rank == 40 and res.sketch_size == 8 * 40 + 16
    assert res.error_estimate <= (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("kind", ["dense", "sparse", "operator"])
def test_lstsq_input_kinds(kind, rng):
    A = sp.random(4000, 30, density=0.05, format="csr", random_state=rng) + sp.eye(4000, 30)
    A = A.tocsr()
    b = rng.standard_normal(4000)
    ref = np.linalg.lstsq(A.toarray(), b, rcond=None)[0]
    data = {"dense": A.toarray(), "sparse": A, "operator": aslinearoperator(A)}[kind]
    res = lstsq(data, b, rng=rng)
    np.testing.assert_allclose(res.x, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sketch", ["srht", "sparse_sign", "gaussian", "countsketch"])
def test_lstsq_sketch_kinds(sketch, rng):
    A, b, x_true = _problem(rng, 2048, 10, 1e4)
    res = lstsq(A, b, sketch=sketch, rng=rng)
    assert np.linalg.norm(res.x - x_true) <= 1e-8 * np.linalg.norm(x_true)


def test_lstsq_iterations_independent_of_kappa(rng):
    its = []
    for kappa in (1e1, 1e5, 1e10):
        A, b, _ = _problem(rng, 4000, 50, kappa, noise=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AccuracyWarning)  # rounding floor at 1e10
            its.append(lstsq(A, b, tol=1e-12, rng=rng).iterations)
    assert max(its) <= 40 and max(its) - min(its) <= 15


@pytest.mark.parametrize("kappa", [1e1, 1e5, 1e10])
def test_lstsq_forward_error_is_kappa_u(kappa, rng):
    # small residual: the forward error is then governed by kappa * u
    A, b, x_true = _problem(rng, 4000, 50, kappa, noise=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        res = lstsq(A, b, tol=1e-12, rng=rng)
    err = np.linalg.norm(res.x - x_true) / np.linalg.norm(x_true)
    assert err <= max(1e-12, 100 * kappa * np.finfo(float).eps)


def test_lstsq_error_estimate_tracks_error(rng):
    A, b, x_true = _problem(rng, 4000, 30, 1e10, noise=1.0)
    for maxiter in (3, 8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = lstsq(A, b, maxiter=maxiter, rng=rng)
        err = np.linalg.norm(res.x - x_true) / np.linalg.norm(res.x)
        assert err / 3 <= res.error_estimate <= 3 * err


def test_lstsq_multiple_rhs(rng):
    A, b, _ = _problem(rng, 2000, 20, 1e2)
    B = np.column_stack([b, 2 * b, rng.standard_normal(2000)])
    res = lstsq(A, B, rng=0)
    assert res.x.shape == (20, 3) and res.iterations.shape == (3,)
    assert res.residual_norm.shape == (3,) and res.tol.shape == (3,)
    for j in range(3):
        single = lstsq(A, B[:, j], rng=0)
        np.testing.assert_allclose(res.x[:, j], single.x, rtol=1e-10, atol=1e-12)


def test_lstsq_rank_deficient_gives_minimum_norm(rng):
    A = rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 25))
    b = rng.standard_normal(3000)
    res = lstsq(A, b, rng=rng)
    ref = np.linalg.pinv(A) @ b
    assert res.rank == 8
    np.testing.assert_allclose(res.x, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())


def test_lstsq_qr_lsmr_variant(rng):
    A, b, x_true = _problem(rng, 3000, 30, 1e6)
    res = lstsq(A, b, preconditioner="qr", solver="lsmr", rng=rng)
    assert np.linalg.norm(res.x - x_true) <= 1e-8 * np.linalg.norm(x_true)
    assert res.iterations <= 40


def test_sketch_and_solve_residual_guarantee(rng):
    """Per draw: ||A x - b|| <= (1 + eps)/(1 - eps) min ||A x - b|| with eps measured."""
    m, n = 3000, 15
    A = rng.standard_normal((m, n))
    b = A @ rng.standard_normal(n) + rng.standard_normal(m)
    opt = np.linalg.norm(b - A @ np.linalg.lstsq(A, b, rcond=None)[0])
    for k in (4 * n, 20 * n):
        S = gaussian(k, m, rng=rng)
        Q, _ = np.linalg.qr(np.column_stack([A, b]))
        sv = np.linalg.svd(S @ Q, compute_uv=False)
        eps = max(sv[0] - 1, 1 - sv[-1])
        res = lstsq(A, b, method="solve", sketch=S)
        assert res.iterations == 0
        assert res.residual_norm <= (1 + eps) / (1 - eps) * opt * (1 + 1e-12)


def test_sketch_and_solve_negative_control(rng):
    """A sketch with k = n rows does not embed: the residual is far from optimal."""
    m, n = 3000, 30
    A = rng.standard_normal((m, n))
    b = A @ rng.standard_normal(n) + rng.standard_normal(m)
    opt = np.linalg.norm(b - A @ np.linalg.lstsq(A, b, rcond=None)[0])
    small = lstsq(A, b, method="solve", sketch="gaussian", sketch_size=n, rng=rng)
    large = lstsq(A, b, method="solve", sketch="gaussian", sketch_size=40 * n, rng=rng)
    assert large.residual_norm <= 1.1 * opt
    assert small.residual_norm >= 2 * opt


def test_lstsq_zero_rhs(rng):
    A = rng.standard_normal((500, 5))
    res = lstsq(A, np.zeros(500), rng=rng)
    assert np.all(res.x == 0) and res.residual_norm == 0.0 and res.tol == 0.0


def test_lstsq_bad_input(rng):
    A = rng.standard_normal((100, 5))
    b = rng.standard_normal(100)
    A0, b0 = A.copy(), b.copy()
    with pytest.raises(ValueError, match="tall"):
        lstsq(A.T, b[:5])
    with pytest.raises(ValueError, match="rows"):
        lstsq(A, b[:50])
    with pytest.raises(ValueError, match="method"):
        lstsq(A, b, method="qr")
    with pytest.raises(ValueError, match="sketch"):
        lstsq(A, b, sketch="fourier")
    with pytest.raises(ValueError, match="sketch_size"):
        lstsq(A, b, sketch_size=3)
    with pytest.raises(ValueError, match="tol"):
        lstsq(A, b, tol=2.0)
    bad = A.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        lstsq(bad, b)
    with pytest.raises(TypeError, match="complex"):
        lstsq(A + 1j, b)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(b, b0)


def test_lstsq_sketch_that_does_not_embed_fails_as_predicted(rng):
    """Negative control: k = n rows do not embed range(A); the iteration cannot converge."""
    A, b, _ = _problem(rng, 2000, 40, 1e8, noise=1.0)
    with pytest.warns(RNLAWarning):
        res = lstsq(A, b, sketch="gaussian", sketch_size=40, maxiter=30, rng=rng)
    assert res.error_estimate > 1e-6
    good = lstsq(A, b, sketch="gaussian", rng=rng)
    assert good.iterations < 40


# ---------------------------------------------------------------------------------------
# nystrom_pcg
# ---------------------------------------------------------------------------------------


def _psd(rng, n, decay=0.5):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.arange(1, n + 1) ** (-1.0 / decay)) @ Q.T


@pytest.mark.parametrize("preconditioner", ["nystrom", "rpcholesky", "none"])
def test_nystrom_pcg_matches_solve(preconditioner, dtype, rng):
    A = _psd(rng, 300).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    mu = 1e-3
    res = nystrom_pcg(A, b, mu=mu, preconditioner=preconditioner, rng=rng)
    ref = np.linalg.solve(A.astype(np.float64) + mu * np.eye(300), b.astype(np.float64))
    assert res.x.dtype == dtype and np.isfinite(res.x).all()
    tol = 1e-8 if dtype == np.float64 else 1e-4
    assert res.tol <= tol
    # certified: the reported residual is the true one
    true = np.linalg.norm(b - (A.astype(np.float64) + mu * np.eye(300)) @ res.x)
    assert res.residual_norm == pytest.approx(true, rel=1e-3, abs=10 * tol)
    rtol = 1e-5 if dtype == np.float64 else 2e-1
    np.testing.assert_allclose(res.x, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def test_nystrom_pcg_kernel_matrix_fewer_iterations(rng):
    X = rng.standard_normal((600, 2))
    K = KernelMatrix(X, kernel="gaussian", bandwidth=1.0)
    b = rng.standard_normal(600)
    pcg = nystrom_pcg(K, b, mu=1e-3, rng=rng)
    rpc = nystrom_pcg(K, b, mu=1e-3, preconditioner="rpcholesky", rng=rng)
    plain = nystrom_pcg(K, b, mu=1e-3, preconditioner="none", maxiter=3000, rng=rng)
    assert pcg.tol <= 1e-8 and rpc.tol <= 1e-8 and plain.tol <= 1e-8
    assert 10 * pcg.iterations <= plain.iterations
    assert 10 * rpc.iterations <= plain.iterations
    assert pcg.condition_estimate <= 30 and plain.condition_estimate > 1e3
    np.testing.assert_allclose(pcg.x, rpc.x, rtol=1e-6, atol=1e-8 * np.abs(pcg.x).max())


def test_nystrom_pcg_operator_and_fixed_rank(rng):
    A = _psd(rng, 200)
    b = rng.standard_normal(200)
    res = nystrom_pcg(aslinearoperator(A), b, mu=1e-2, rank=20, rng=rng)
    assert res.rank == 20 and res.tol <= 1e-8
    assert res.n_matvecs == 20 + res.iterations + 1 + (res.iterations > 0)


def test_nystrom_pcg_bad_input(rng):
    A = _psd(rng, 50)
    b = rng.standard_normal(50)
    A0 = A.copy()
    with pytest.raises(ValueError, match="mu"):
        nystrom_pcg(A, b, mu=0.0)
    with pytest.raises(TypeError, match="mu"):
        nystrom_pcg(A, b, mu="1")
    with pytest.raises(ValueError, match="square"):
        nystrom_pcg(A[:, :40], b, mu=1.0)
    with pytest.raises(ValueError, match="length"):
        nystrom_pcg(A, b[:10], mu=1.0)
    with pytest.raises(ValueError, match="preconditioner"):
        nystrom_pcg(A, b, mu=1.0, preconditioner="jacobi")
    with pytest.raises(TypeError, match="entry access"):
        nystrom_pcg(aslinearoperator(A), b, mu=1.0, preconditioner="rpcholesky")
    with pytest.raises(ValueError, match="rank"):
        nystrom_pcg(A, b, mu=1.0, rank=51)
    np.testing.assert_array_equal(A, A0)


def test_nystrom_pcg_warns_on_maxiter(rng):
    A = _psd(rng, 100)
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        nystrom_pcg(A, rng.standard_normal(100), mu=1e-8, preconditioner="none", maxiter=3)


@pytest.mark.parametrize("shape", [(7, 3, 1), (103, 17, 1), (1001, 40, 3), (5, 9, 2)])
def test_normal_residual_kernel_matches_numpy(dtype, shape, rng):
    from rnla._kernels.solve import normal_residual

    m, n, p = shape
    A = rng.standard_normal((m, n)).astype(dtype)
    B = rng.standard_normal((m, p))
    X = rng.standard_normal((n, p))
    A0, B0, X0 = A.copy(), B.copy(), X.copy()
    G, rr = normal_residual(A, B, X)
    R = B - A.astype(np.float64) @ X
    ref = A.astype(np.float64).T @ R
    assert G.shape == (n, p) and rr.shape == (p,) and G.dtype == np.float64
    np.testing.assert_allclose(G, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(rr, (R**2).sum(axis=0), rtol=1e-12)
    assert np.array_equal(A, A0) and np.array_equal(B, B0) and np.array_equal(X, X0)


@pytest.mark.filterwarnings("ignore::rnla.AccuracyWarning")  # kappa 1e6: floor reached
def test_lstsq_one_pass_per_iteration_and_reproducible(rng):
    A, b, _ = _problem(rng, 4000, 30, 1e6, noise=1e-6)
    first = lstsq(A, b, rng=5)
    again = lstsq(A, b, rng=5)
    assert np.array_equal(first.x, again.x) and first.iterations == again.iterations
    # S A, one pass per iteration (A^T (b - A x) fused), one for the diagnostics
    assert first.n_passes == 2 + first.iterations
    # the same problem through two BLAS products per step (F-ordered A) agrees
    other = lstsq(np.asfortranarray(A), b, rng=5)
    assert other.n_passes == 3 + 2 * other.iterations
    np.testing.assert_allclose(other.x, first.x, rtol=1e-8)
