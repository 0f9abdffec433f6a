"""Bound verification for the randomized range finder, rSVD, randQB and single-pass SVD.

Follows BOUNDS.md: per-draw inequalities on every draw (HMT Thm 9.1, Thm 9.2, the QB
Frobenius identity); expectation bounds by Monte Carlo over R = 200 draws on the squared
(or, for spectral bounds, the plain) error with a one-sided 3-standard-error margin and a
tightness window; a negative control for each family. The matrices are fixed (seed 0);
the random test matrices come from the ``seed`` fixture, so every seed 0..99 must pass.

Spectra (60 x 40 unless noted): exponential ``exp(-j/4)``, polynomial ``1/(j+1)``,
slow ``(j+1)^(-1/2)``, S-shaped ``1/(1 + exp((j-10)/2)) + 1e-3``, low rank + noise
(rank-5 Gaussian product, unit norm, plus 0.02 Gaussian noise), and a real matrix: the
Gaussian kernel matrix (median-distance bandwidth) of the first 120 images of
scikit-learn's bundled digits data.
"""

import functools
import itertools

import numpy as np
import pytest
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from rnla._bounds_lowrank import (
    hmt_frobenius_bound,
    hmt_power_bound,
    hmt_spectral_bound,
    hmt_structural_bound,
    single_pass_bound,
)
from rnla.lowrank import randqb, range_finder, single_pass_svd
from rnla.sketch import gaussian


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices gain nothing from BLAS threads, and on a loaded machine OpenBLAS's
    spinning threads slow a 120 x 120 SVD down 100-fold."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


R = 200  # Monte Carlo draws
Z = 3.0  # one-sided margin in standard errors


def with_spectrum(rng, m, n, s):
    d = len(s)
    U = np.linalg.qr(rng.standard_normal((m, d)))[0]
    V = np.linalg.qr(rng.standard_normal((n, d)))[0]
    return (U * s) @ V.T


@functools.cache
def matrices():
    """name -> (A, thin SVD of A); fixed, independent of the test seed."""
    rng = np.random.default_rng(0)
    m, n = 60, 40
    j = np.arange(n)
    mats = {
        "exponential": with_spectrum(rng, m, n, np.exp(-j / 4)),
        "polynomial": with_spectrum(rng, m, n, 1 / (j + 1.0)),
        "slow": with_spectrum(rng, m, n, (j + 1.0) ** -0.5),
        "s_shaped": with_spectrum(rng, m, n, 1 / (1 + np.exp((j - 10) / 2)) + 1e-3),
    }
    L = rng.standard_normal((m, 5)) @ rng.standard_normal((5, n))
    mats["lowrank_noise"] = L / np.linalg.norm(L, 2) + 0.02 * rng.standard_normal((m, n)) / 8
    X = load_digits().data[:120] / 16.0
    D = np.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
    mats["digits_kernel"] = np.exp(-D / (2 * np.median(D)))
    return {name: (A, np.linalg.svd(A, full_matrices=False)) for name, A in mats.items()}


SPECTRA = list(matrices())


def proj_error(A, Q):
    return A - Q @ (Q.T @ A)


def mean_and_se(x):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(), x.std(ddof=1) / np.sqrt(x.size)


# ---------------------------------------------------------------------------------------
# HMT Thm 9.1: structural bound, every draw
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPECTRA)
def test_structural_bound_every_draw(name, seed):
    """||(I - QQ^T) A||^2 <= ||S2||^2 + ||S2 O2 O1^+||^2 (Frobenius and spectral) for
    the basis that ``range_finder`` computes from a Gaussian SketchOperator.

    Observed ratio error/bound over seeds: at most 0.75 (Frobenius and spectral).
    """
    A, svd = matrices()[name]
    rng = np.random.default_rng(seed)
    k, p = 5, 5
    scale = np.sum(svd[1] ** 2)
    for _ in range(10):
        S = gaussian(k + p, A.shape[1], rng=rng)
        E = proj_error(A, range_finder(A, k + p, sketch=S))
        Omega = S.todense().T
        for ord_, err in (("fro", np.sum(E**2)), (2, np.linalg.norm(E, 2) ** 2)):
            bound = hmt_structural_bound(svd, Omega, k, norm=ord_)
            assert err <= bound * (1 + 1e-10) + 1e-12 * scale


@pytest.mark.parametrize("name", SPECTRA)
def test_structural_negative_control_without_random_term(name, seed):
    """Negative control: with p = 0 the range finder is worse than the best rank-k
    approximation on every draw, so dropping the term ||S2 O2 O1^+||^2 (claiming
    error^2 <= ||S2||^2) fails; the check above would catch such a wrong bound."""
    A, svd = matrices()[name]
    k = 5
    rng = np.random.default_rng(seed)
    for _ in range(5):
        E = proj_error(A, range_finder(A, k, rng=rng))
        assert np.linalg.norm(E, 2) ** 2 > svd[1][k] ** 2 * (1 + 1e-6)


def test_structural_bound_exact_when_omega_spans_top_space():
    """Omega = V_1 gives Omega_2 = 0: the bound equals the optimal error exactly."""
    A, svd = matrices()["polynomial"]
    k = 4
    Omega = svd[2][:k].T
    E = proj_error(A, range_finder(A, k, sketch=gaussian(k, A.shape[1], rng=0)))
    bound = hmt_structural_bound(svd, Omega, k)
    np.testing.assert_allclose(bound, np.sum(svd[1][k:] ** 2), rtol=1e-12)
    assert np.sum(E**2) >= bound * (1 - 1e-10)


# ---------------------------------------------------------------------------------------
# HMT Thm 10.5 (squared form): expected Frobenius error, Monte Carlo
# ---------------------------------------------------------------------------------------

# Tightness mean / bound measured for k = p = 5 (R = 200; seeds vary it by about +-5%).
FRO_TIGHTNESS = {
    "exponential": 0.21,
    "polynomial": 0.52,
    "slow": 0.49,
    "s_shaped": 0.19,
    "lowrank_noise": 0.78,
    "digits_kernel": 0.34,
}


@pytest.mark.parametrize("name", SPECTRA)
def test_expected_squared_frobenius_bound(name, seed):
    """E||(I - QQ^T) A||_F^2 <= (1 + k/(p-1)) tau_k^2 (HMT Thm 10.5, squared form), with
    Q from ``range_finder`` (Gaussian, q = 0); tightness within +-25% of the table."""
    A, svd = matrices()[name]
    k, p = 5, 5
    rng = np.random.default_rng(seed)
    err2 = [np.sum(proj_error(A, range_finder(A, k + p, rng=rng)) ** 2) for _ in range(R)]
    mean, se = mean_and_se(err2)
    bound = hmt_frobenius_bound(svd[1], k, p)
    assert mean <= bound + Z * se
    ratio = mean / bound
    assert 0.75 * FRO_TIGHTNESS[name] <= ratio <= 1.25 * FRO_TIGHTNESS[name]


@pytest.mark.parametrize("name", ["polynomial", "slow", "digits_kernel"])
def test_expected_frobenius_negative_control_factor_one(name, seed):
    """Negative control: the 'bound' with factor 1, E err^2 <= tau_k^2, fails by many
    standard errors on slowly decaying spectra with p = 2 (measured mean / tau_k^2:
    1.3-1.8, 28-88 SE)."""
    A, svd = matrices()[name]
    k, p = 5, 2
    rng = np.random.default_rng(seed)
    err2 = [np.sum(proj_error(A, range_finder(A, k + p, rng=rng)) ** 2) for _ in range(R)]
    mean, se = mean_and_se(err2)
    assert mean > np.sum(svd[1][k:] ** 2) + Z * se
    assert mean <= hmt_frobenius_bound(svd[1], k, p) + Z * se  # the true bound holds


# ---------------------------------------------------------------------------------------
# HMT Thm 10.6 and Cor. 10.10: expected spectral error, Monte Carlo
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exponential", "slow", "s_shaped", "digits_kernel"])
@pytest.mark.parametrize("q", [0, 1])
def test_expected_spectral_and_power_bounds(name, q, seed):
    """E||(I - P_Z) A||_2 <= HMT Cor. 10.10 (Thm 10.6 for q = 0). Measured tightness
    mean / bound: 0.16-0.33 for q = 0, 0.22-0.52 for q = 1; asserted in [0.1, 0.75]."""
    A, svd = matrices()[name]
    k, p = 5, 5
    rng = np.random.default_rng(seed)
    errs = [
        np.linalg.norm(proj_error(A, range_finder(A, k + p, n_iter=q, rng=rng)), 2)
        for _ in range(R // 2)
    ]
    mean, se = mean_and_se(errs)
    bound = hmt_power_bound(svd[1], k, p, q)
    if q == 0:
        assert bound == pytest.approx(hmt_spectral_bound(svd[1], k, p), rel=1e-12)
    assert mean <= bound + Z * se
    assert 0.1 <= mean / bound <= 0.75


def test_power_bound_negative_control_needs_iterations(seed):
    """Negative control: on the slowly decaying spectrum the q = 0 range finder
    violates the q = 3 power bound, so the Monte Carlo check can fail."""
    A, svd = matrices()["slow"]
    k, p = 5, 5
    rng = np.random.default_rng(seed)
    errs = [np.linalg.norm(proj_error(A, range_finder(A, k + p, rng=rng)), 2) for _ in range(50)]
    mean, se = mean_and_se(errs)
    assert mean > hmt_power_bound(svd[1], k, p, 3) + Z * se


# ---------------------------------------------------------------------------------------
# HMT Thm 9.2: power scheme, every draw
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exponential", "polynomial", "slow", "digits_kernel"])
@pytest.mark.parametrize("q", [1, 2])
def test_power_scheme_inequality_every_draw(name, q, seed):
    """||(I - P_Z) A|| <= ||(I - P_Z) B||^(1/(2q+1)), B = (AA^T)^q A, Z = B Omega, with
    Q from ``range_finder(n_iter=q)``. Observed ratio lhs/rhs up to 0.97 (tight)."""
    A, svd = matrices()[name]
    A = A / svd[1][0]  # sigma_1 = 1: powers of A stay O(1)
    B = np.linalg.matrix_power(A @ A.T, q) @ A
    rng = np.random.default_rng(seed)
    for _ in range(5):
        Q = range_finder(A, 10, n_iter=q, sketch=gaussian(10, A.shape[1], rng=rng))
        lhs = np.linalg.norm(proj_error(A, Q), 2)
        rhs = np.linalg.norm(proj_error(B, Q), 2) ** (1 / (2 * q + 1))
        assert lhs <= rhs * (1 + 1e-8) + 1e-12


@pytest.mark.parametrize("name", ["exponential", "polynomial", "slow"])
def test_power_scheme_negative_control_stronger_exponent(name, seed):
    """Negative control: the stronger claim with exponent 1/(2q) fails on most draws
    (measured 99-100% of draws, q = 1)."""
    A, svd = matrices()[name]
    A = A / svd[1][0]
    B = A @ A.T @ A
    rng = np.random.default_rng(seed)
    fails = 0
    for _ in range(10):
        Q = range_finder(A, 10, n_iter=1, sketch=gaussian(10, A.shape[1], rng=rng))
        lhs = np.linalg.norm(proj_error(A, Q), 2)
        fails += lhs > np.linalg.norm(proj_error(B, Q), 2) ** (1 / 2)
    assert fails >= 6


# ---------------------------------------------------------------------------------------
# QB identity ||A - QQ^T A||_F^2 = ||A||_F^2 - ||Q^T A||_F^2 (randqb's bookkeeping)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPECTRA)
def test_qb_identity_exact(name, seed):
    """The identity holds to rounding for randqb's Q and B on every draw, and the error
    randqb reports is the directly computed one (difference below the sqrt(eps) floor
    squared, i.e. O(eps) on the squared relative error)."""
    A, _ = matrices()[name]
    Q, B, err = randqb(A, tol=0.05, block_size=4, rng=seed)
    norm2 = np.sum(A**2)
    direct2 = np.sum((A - Q @ B) ** 2)
    identity2 = norm2 - np.sum((Q.T @ A) ** 2)
    eps = np.finfo(np.float64).eps
    assert abs(direct2 - identity2) <= 100 * eps * norm2
    assert abs(err**2 - direct2 / norm2) <= 100 * eps
    assert err <= 0.05


def test_qb_identity_negative_control_non_orthonormal_basis(seed):
    """Negative control: with a non-orthonormal basis of the same range (LU's P L) the
    identity with Q^T A fails by far more than rounding."""
    import scipy.linalg as sla

    A, _ = matrices()["polynomial"]
    rng = np.random.default_rng(seed)
    Y = A @ rng.standard_normal((A.shape[1], 10))
    PL = sla.lu(Y, permute_l=True)[0]
    proj = PL @ np.linalg.lstsq(PL, A, rcond=None)[0]  # the true projection of A
    direct2 = np.sum((A - proj) ** 2)
    naive2 = np.sum(A**2) - np.sum((PL.T @ A) ** 2)
    assert abs(direct2 - naive2) > 1e-3 * np.sum(A**2)


# ---------------------------------------------------------------------------------------
# Single-pass SVD (TYUC17 Thm 4.3 and the fixed-rank corollary)
# ---------------------------------------------------------------------------------------

SP_CASES = [("exponential", 3, 7, 15), ("polynomial", 3, 7, 15), ("slow", 5, 11, 23)]


@pytest.mark.parametrize(("name", "r", "k", "ell"), SP_CASES)
def test_single_pass_expected_bounds(name, r, k, ell, seed):
    """E||A - QX||_F^2 <= TYUC17 Thm 4.3 (measured tightness 0.3-0.7) and
    E||A - [QX]_r||_F <= tau_r + 2 sqrt(Thm 4.3) (tightness about 0.3)."""
    A, svd = matrices()[name]
    rng = np.random.default_rng(seed)
    full, fixed = [], []
    for _ in range(R // 2):
        sd = rng.integers(2**32)
        out = single_pass_svd(A, k, range_size=k, corange_size=ell, rng=sd)
        full.append(np.sum((A - (out.U * out.s) @ out.Vt) ** 2))
        out = single_pass_svd(A, r, range_size=k, corange_size=ell, rng=sd)
        fixed.append(np.linalg.norm(A - (out.U * out.s) @ out.Vt))
    bound = single_pass_bound(svd[1], r, k, ell)
    mean, se = mean_and_se(full)
    assert mean <= bound.frobenius_sq + Z * se
    assert 0.15 <= mean / bound.frobenius_sq <= 0.9
    mean, se = mean_and_se(fixed)
    assert mean <= bound.fixed_rank + Z * se
    assert 0.15 <= mean / bound.fixed_rank <= 0.6
    # Negative control: the optimal rank-r error tau_r is beaten by no draw on average
    # (measured mean / tau_r = 1.2-1.5), so a bound equal to tau_r would fail.
    assert mean > np.sqrt(np.sum(svd[1][r:] ** 2)) + Z * se


# ---------------------------------------------------------------------------------------
# Assumptions are enforced
# ---------------------------------------------------------------------------------------


def test_bound_assumptions_raise():
    s = np.linspace(1, 0.1, 20)
    for fn in (hmt_frobenius_bound, hmt_spectral_bound):
        with pytest.raises(ValueError, match="oversample >= 2"):
            fn(s, 5, 1)
        with pytest.raises(ValueError, match="rank >= 2"):
            fn(s, 1, 5)
        with pytest.raises(ValueError, match="rank \\+ oversample <= min\\(m, n\\)"):
            fn(s, 15, 6)
        with pytest.raises(ValueError, match="non-negative"):
            fn(-s, 5, 5)
        with pytest.raises(ValueError, match="finite"):
            fn(np.r_[s, np.nan], 5, 5)
    with pytest.raises(ValueError, match="n_iter=-1 must be >= 0"):
        hmt_power_bound(s, 5, 5, -1)
    with pytest.raises(ValueError, match="corange_size >= range_size \\+ 2"):
        single_pass_bound(s, 2, 5, 6)
    with pytest.raises(ValueError, match="range_size >= 2"):
        single_pass_bound(s, 1, 1, 5)
    with pytest.raises(ValueError, match="rank=6 must satisfy rank <= range_size=5"):
        single_pass_bound(s, 6, 5, 9)


def test_structural_bound_assumptions_raise():
    A, svd = matrices()["exponential"]
    n = A.shape[1]
    with pytest.raises(ValueError, match="full row rank"):
        hmt_structural_bound(svd, np.zeros((n, 6)), 3)
    with pytest.raises(ValueError, match="rows"):
        hmt_structural_bound(svd, np.ones((n + 1, 6)), 3)
    with pytest.raises(ValueError, match="rank=7 must satisfy 1 <= rank <= 6"):
        hmt_structural_bound(svd, np.ones((n, 6)), 7)
    U, s, Vt = svd
    with pytest.raises(ValueError, match="full thin SVD"):
        hmt_structural_bound((U[:, :5], s[:5], Vt[:5]), np.ones((n, 6)), 3)
    with pytest.raises(ValueError, match="descending"):
        hmt_structural_bound((U, s[::-1], Vt), np.ones((n, 6)), 3)
    with pytest.raises(ValueError, match="norm=1"):
        hmt_structural_bound(svd, np.ones((n, 6)), 3, norm=1)


def test_power_bound_decreases_with_iterations():
    s = (np.arange(40) + 1.0) ** -0.5
    values = [hmt_power_bound(s, 5, 5, q) for q in range(5)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] >= s[5]  # never below the optimum sigma_{k+1}
