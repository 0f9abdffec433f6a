"""Bound verification for tensor decompositions (TT-SVD, randomized TT, TT rounding, Tucker).

Kinds of check (BOUNDS.md): per-draw deterministic inequalities (Oseledets Thm 2.2 for
TT-SVD and rounding, every seed), expectation bounds by Monte Carlo on the squared
Frobenius error with a one-sided 3-standard-error margin (randomized TT-SVD and
randomized STHOSVD, tightness printed), and negative controls showing each test can fail.
"""

import numpy as np
import pytest
import tensorly as tl

from rnla._bounds_tensor import (
    randomized_tt_bound,
    randomized_tucker_bound,
    tt_svd_bound,
    tt_unfolding_tails,
    tucker_unfolding_tails,
)
from rnla.tensor import randomized_tt_svd, randomized_tucker, tt_round, tt_svd

N_DRAWS = 240


def smooth_plus_noise(shape, rng, noise):
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    S = 1.0 / (1.0 + sum(grids))
    G = rng.standard_normal(shape)
    return S / np.linalg.norm(S) + noise * G / np.linalg.norm(G)


def gapped_matrix_tensor(rng, m=40, n=16, k=3, gap=1e3):
    """Order-3 tensor whose first unfolding (m x n) has k large singular values and a flat
    tail: the only randomized step is the first one, where HMT Thm 10.5 is nearly tight."""
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.r_[np.full(k, gap), np.ones(n - k)]
    return ((U * s) @ V.T).reshape(m, 4, n // 4)


def mc_mean_se(values):
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


# ---------------------------------------------------------------------------------------
# per-draw: TT-SVD (Oseledets 2011, Thm 2.2)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 1e-3, 0.3], ids=["smooth", "noisy", "very-noisy"])
def test_tt_svd_error_below_oseledets_bound(seed, dtype, noise):
    rng = np.random.default_rng(seed)
    X = smooth_plus_noise((5, 6, 7, 4), rng, noise).astype(dtype)
    ranks = [int(r) for r in rng.integers(1, 5, size=3)]
    res = tt_svd(X, rank=ranks)
    err = np.linalg.norm(X.astype(np.float64) - tl.tt_to_tensor(res.tt))
    bound = tt_svd_bound(tt_unfolding_tails(X, ranks))
    slack = 100 * np.finfo(dtype).eps * np.linalg.norm(X)
    assert err <= bound * (1 + 1e-6) + slack
    # The reported bound uses the projected unfoldings: never above the a-priori one.
    assert res.error_bound <= bound * (1 + 1e-6) + slack
    print(f"TT-SVD tightness err/bound = {err / max(bound, 1e-300):.3f}")


def test_tt_svd_bound_negative_control(rng):
    """Dropping all but the largest tail (a 'bound' too small) fails on a noisy tensor."""
    X = smooth_plus_noise((5, 6, 7, 4), rng, 0.3)
    tails = tt_unfolding_tails(X, 2)
    err = np.linalg.norm(X - tl.tt_to_tensor(tt_svd(X, rank=2).tt))
    assert err > tails.max()


@pytest.mark.parametrize("eps", [0.3, 1e-2, 1e-5])
def test_tt_svd_tolerance_guarantee(seed, eps):
    rng = np.random.default_rng(seed)
    X = smooth_plus_noise((6, 5, 7, 6), rng, 1e-3)
    res = tt_svd(X, tol=eps)
    err = np.linalg.norm(X - tl.tt_to_tensor(res.tt))
    assert err <= eps * np.linalg.norm(X) * (1 + 1e-6)


def test_tt_svd_tolerance_negative_control(rng):
    """Too small a rank misses the tolerance the same tensor meets with tol mode."""
    X = smooth_plus_noise((6, 5, 7, 6), rng, 1e-3)
    eps = 1e-2
    needed = max(tt_svd(X, tol=eps).ranks)
    assert needed >= 2
    err = np.linalg.norm(X - tl.tt_to_tensor(tt_svd(X, rank=needed - 1).tt))
    assert err > eps * np.linalg.norm(X)


# ---------------------------------------------------------------------------------------
# per-draw: TT rounding
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.3, 1e-2, 1e-5])
def test_tt_round_guarantee(seed, eps):
    rng = np.random.default_rng(seed)
    d, n, r = 5, 4, 6
    ranks = [1, *([r] * (d - 1)), 1]
    cores = [rng.standard_normal((ranks[k], n, ranks[k + 1])) for k in range(d)]
    # Decaying bond weights give a non-trivial rounding.
    for k in range(d - 1):
        cores[k] = cores[k] * np.geomspace(1, 1e-3, r)[None, None, : ranks[k + 1]]
    full = tl.tt_to_tensor(cores)
    res = tt_round(cores, tol=eps)
    err = np.linalg.norm(full - tl.tt_to_tensor(res.tt))
    assert err <= eps * np.linalg.norm(full) * (1 + 1e-8)
    assert err <= res.error_bound * (1 + 1e-6) + 1e-12 * np.linalg.norm(full)


# ---------------------------------------------------------------------------------------
# expectation: randomized TT-SVD
# ---------------------------------------------------------------------------------------


def test_randomized_tt_expected_error_tight_case(seed):
    """Gapped spectrum, p = 5: E err^2 <= (1 + k/(p-1)) tau^2, within 3 SE."""
    rng = np.random.default_rng(seed)
    X = gapped_matrix_tensor(rng)
    ranks, p = [3, 4], 5
    tails = tt_unfolding_tails(X, ranks)
    bound2 = randomized_tt_bound(tails, ranks, p) ** 2
    errs = [
        randomized_tt_svd(X, ranks, oversample=p, n_iter=0, rng=rng).error_bound ** 2
        for _ in range(N_DRAWS)
    ]
    mean, se = mc_mean_se(errs)
    print(
        f"randomized TT (gapped): mean err^2 / bound^2 = {mean / bound2:.3f} +- {se / bound2:.3f}"
    )
    assert mean - 3 * se <= bound2
    # Negative control: the optimal constant 1 (deterministic TT-SVD) is exceeded.
    assert mean - 3 * se > tt_svd_bound(tails) ** 2


def test_randomized_tt_expected_error_smooth_tensor(seed):
    rng = np.random.default_rng(seed)
    X = smooth_plus_noise((6, 6, 6, 6), rng, 0.05)
    r, p = 2, 3
    tails = tt_unfolding_tails(X, r)
    bound2 = randomized_tt_bound(tails, [r] * 3, p) ** 2
    errs = [
        randomized_tt_svd(X, r, oversample=p, n_iter=0, rng=rng).error_bound ** 2
        for _ in range(N_DRAWS // 2)
    ]
    mean, se = mc_mean_se(errs)
    print(f"randomized TT (smooth+noise): mean err^2 / bound^2 = {mean / bound2:.3f}")
    assert mean - 3 * se <= bound2


def test_randomized_tt_power_iteration_not_worse(seed):
    rng = np.random.default_rng(seed)
    X = gapped_matrix_tensor(rng, gap=10.0)
    e0 = [
        randomized_tt_svd(X, [3, 4], oversample=2, n_iter=0, rng=rng).error_bound
        for _ in range(60)
    ]
    e1 = [
        randomized_tt_svd(X, [3, 4], oversample=2, n_iter=1, rng=rng).error_bound
        for _ in range(60)
    ]
    assert np.mean(e1) <= np.mean(e0)


# ---------------------------------------------------------------------------------------
# expectation: randomized Tucker
# ---------------------------------------------------------------------------------------


def test_randomized_tucker_expected_error(seed):
    rng = np.random.default_rng(seed)
    # Mode-1 unfolding gapped, other modes kept at full rank (exact steps).
    X = gapped_matrix_tensor(rng)
    ranks, p = [3, 4, 4], 5
    tails = tucker_unfolding_tails(X, ranks)
    bound2 = randomized_tucker_bound(tails, ranks, p) ** 2
    errs = [
        randomized_tucker(X, ranks, oversample=p, n_iter=0, rng=rng).error_bound ** 2
        for _ in range(N_DRAWS)
    ]
    mean, se = mc_mean_se(errs)
    print(f"randomized Tucker: mean err^2 / bound^2 = {mean / bound2:.3f} +- {se / bound2:.3f}")
    assert mean - 3 * se <= bound2
    assert mean - 3 * se > np.sum(tails**2)  # negative control: constant 1 fails


# ---------------------------------------------------------------------------------------
# the bound functions themselves
# ---------------------------------------------------------------------------------------


def test_bound_functions_values_and_validation():
    assert tt_svd_bound([3.0, 4.0]) == 5.0
    assert randomized_tt_bound([1.0, 2.0], [2, 4], 3) == pytest.approx(np.sqrt(2 + 4 * 3))
    assert randomized_tucker_bound([1.0], [1], 2) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError, match="oversample >= 2"):
        randomized_tt_bound([1.0], [2], 1)
    with pytest.raises(ValueError, match="oversample >= 2"):
        randomized_tucker_bound([1.0], [2], 1)
    with pytest.raises(ValueError, match="one entry per tail"):
        randomized_tt_bound([1.0, 1.0], [2], 3)
    with pytest.raises(ValueError, match="non-negative"):
        tt_svd_bound([-1.0])
    with pytest.raises(TypeError, match="ranks must be a sequence"):
        randomized_tt_bound([1.0], 2, 3)
    with pytest.raises(ValueError, match="order d >= 2"):
        tt_unfolding_tails(np.ones(3), 1)
    np.testing.assert_allclose(tt_unfolding_tails(np.ones((2, 3, 4)), 1), 0, atol=1e-12)
    np.testing.assert_allclose(
        tucker_unfolding_tails(np.ones((2, 3, 4)), [1, 1, 1]), 0, atol=1e-12
    )
