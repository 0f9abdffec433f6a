"""Bounds of sketch-and-precondition least squares and Nyström PCG, with negative controls."""

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.sparse.linalg import LinearOperator, lsqr

from rnla.bounds import (
    effective_dimension,
    gaussian_embedding_size,
    iteration_bound,
    nystrom_pcg_condition_bound,
    nystrom_pcg_rank,
    preconditioned_condition_bound,
)
from rnla.sketch import gaussian, sparse_sign


def _tall(rng, m, n, kappa):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * np.logspace(0, -np.log10(kappa), n)) @ V.T, U


def _preconditioner(S, A):
    _, s, Vt = np.linalg.svd(S @ A, full_matrices=False)
    return Vt.T / s


def _squared_distortion(S, U):
    sv = np.linalg.svd(S @ U, compute_uv=False)
    return max(sv[0] ** 2 - 1, 1 - sv[-1] ** 2)


@pytest.mark.parametrize("make", [gaussian, sparse_sign], ids=["gaussian", "sparse_sign"])
def test_preconditioned_condition_per_draw(make, rng):
    """Deterministic given the embedding: kappa(AN) <= sqrt((1+eps)/(1-eps)) every draw."""
    A, U = _tall(rng, 3000, 20, 1e8)
    for k in (60, 120, 400):
        S = make(k, 3000, rng=rng)
        eps = _squared_distortion(S, U)
        if eps >= 1:
            continue
        kappa = np.linalg.cond(A @ _preconditioner(S, A))
        assert kappa <= preconditioned_condition_bound(eps) * (1 + 1e-6)
        # norm form is the weaker statement
        eps_norm = max(np.linalg.svd(S @ U, compute_uv=False)[0] - 1, 0)
        eps_norm = max(eps_norm, 1 - np.linalg.svd(S @ U, compute_uv=False)[-1])
        assert kappa <= preconditioned_condition_bound(eps_norm, definition="norm") * (1 + 1e-6)


def test_preconditioned_condition_probability_and_negative_control(rng):
    """With the Gaussian embedding size for (eps, delta) the bound fails rarely; a sketch
    of n + 2 rows (too small to embed with that eps) breaks it almost always."""
    n, m, eps, delta = 8, 2000, 0.5, 0.1
    size = gaussian_embedding_size(n, eps=eps, delta=delta)
    k = size.sketch_size
    bound = preconditioned_condition_bound(size.distortion)
    fails, fails_small = 0, 0
    R = 40
    for _ in range(R):
        A, _ = _tall(rng, m, n, 1e6)
        S = gaussian(k, m, rng=rng)
        fails += np.linalg.cond(A @ _preconditioner(S, A)) > bound
        S = gaussian(n + 2, m, rng=rng)
        fails_small += np.linalg.cond(A @ _preconditioner(S, A)) > bound
    # one-sided binomial test at level 1e-3: P(Bin(40, 0.1) >= 12) < 1e-3
    assert fails < 12
    assert fails_small >= 30


def test_iteration_bound_holds_for_lsqr(rng):
    """||AN(y_j - y*)|| <= 2 rho^j ||AN(y_0 - y*)|| with rho from the measured kappa(AN)."""
    A, _ = _tall(rng, 3000, 25, 1e10)
    b = rng.standard_normal(3000)
    S = sparse_sign(100, 3000, rng=rng)
    N = _preconditioner(S, A)
    M = A @ N
    kappa = np.linalg.cond(M)
    y_star = np.linalg.lstsq(M, b, rcond=None)[0]
    op = LinearOperator(M.shape, matvec=lambda y: M @ y, rmatvec=lambda u: M.T @ u)
    e0 = np.linalg.norm(M @ y_star)
    for tol in (1e-2, 1e-5, 1e-8):
        j = iteration_bound(kappa, tol)
        y = lsqr(op, b, atol=0, btol=0, conlim=0, iter_lim=j)[0]
        assert np.linalg.norm(M @ (y - y_star)) <= tol * e0 * (1 + 1e-6)
    # negative control: the same iteration budget without the preconditioner leaves
    # an error far above the predicted one (kappa(A) = 1e10)
    j = iteration_bound(kappa, 1e-8)
    x = lsqr(A, b, atol=0, btol=0, conlim=0, iter_lim=j)[0]
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    assert np.linalg.norm(A @ (x - x_star)) > 1e3 * 1e-8 * np.linalg.norm(A @ x_star)


def test_iteration_bound_values():
    assert iteration_bound(1.0, 1e-6) == 0
    assert iteration_bound(3.0, 1e-12) == 41
    assert iteration_bound(1e4, 1e-6) > 1000 * iteration_bound(3.0, 1e-6) / 100
    with pytest.raises(ValueError, match="condition"):
        iteration_bound(0.5, 1e-3)
    with pytest.raises(ValueError, match="tol"):
        iteration_bound(2.0, 1.5)
    with pytest.raises(ValueError, match="distortion"):
        preconditioned_condition_bound(1.0)
    with pytest.raises(TypeError):
        preconditioned_condition_bound("0.1")


def _kernel_spectrum(rng, n=400):
    X = rng.uniform(-1, 1, size=(n, 2))
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * 0.3**2))


def _nystrom_precond_kappa(A, mu, ell, rng):
    n = A.shape[0]
    Omega, _ = np.linalg.qr(rng.standard_normal((n, ell)))
    Y = A @ Omega
    core = Omega.T @ Y
    w, V = np.linalg.eigh(0.5 * (core + core.T))
    keep = w > 1e-14 * w[-1]
    B = Y @ (V[:, keep] / np.sqrt(w[keep]))
    Uh, s, _ = np.linalg.svd(B, full_matrices=False)
    lam = s**2
    P_isqrt_scale = np.sqrt((lam[-1] + mu) / (lam + mu))
    # P^{-1/2} = U diag(sqrt((lam_l + mu)/(lam + mu))) U^T + (I - U U^T)
    Pis = np.eye(n) + Uh @ np.diag(P_isqrt_scale - 1) @ Uh.T
    H = Pis @ (A + mu * np.eye(n)) @ Pis
    ev = np.linalg.eigvalsh(0.5 * (H + H.T))
    err = np.linalg.norm(A - Uh @ np.diag(lam) @ Uh.T, 2)
    return ev[-1] / ev[0], lam[-1], err


def test_nystrom_pcg_condition_bound_per_draw(rng):
    A = _kernel_spectrum(rng)
    for mu, ell in ((1e-2, 20), (1e-4, 60), (1e-4, 10)):
        kappa, lam_l, err = _nystrom_precond_kappa(A, mu, ell, rng)
        assert kappa <= nystrom_pcg_condition_bound(lam_l, mu, err) * (1 + 1e-6)


def test_nystrom_pcg_expected_condition_28_empirical(rng):
    """Rank 2 ceil(1.5 d_eff) + 1 gives mean kappa < 28 (constant checked empirically);
    negative control: a quarter of that rank gives a far larger condition number."""
    A = _kernel_spectrum(rng)
    lam = np.linalg.eigvalsh(A)
    mu = 1e-3
    ell = nystrom_pcg_rank(effective_dimension(lam, mu))
    kappas = [_nystrom_precond_kappa(A, mu, ell, rng)[0] for _ in range(20)]
    assert np.mean(kappas) < 28
    small = [_nystrom_precond_kappa(A, mu, max(2, ell // 4), rng)[0] for _ in range(5)]
    assert np.mean(small) > 28


def test_effective_dimension_reference():
    lam = np.array([4.0, 1.0, 0.25, 0.0])
    assert effective_dimension(lam, 1.0) == pytest.approx(0.8 + 0.5 + 0.2)
    A = np.diag(lam)
    ref = np.trace(A @ sla.inv(A + np.eye(4)))
    assert effective_dimension(lam, 1.0) == pytest.approx(ref)
    with pytest.raises(ValueError, match="PSD"):
        effective_dimension([1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match="mu"):
        effective_dimension([1.0], 0.0)
