"""Bound verification for rnla.augmented (see BOUNDS.md).

* per draw: Gauss <= y^T (lam I + A)^{-1} y <= block Gauss-Radau on a lambda grid;
  interlacing lower bound on log det; the CG-rate bound on the Gauss error;
* expectation: E[Radau-probe estimate] <= log det <= E[Gauss-probe estimate];
* probability: coverage of the 99% Student-t log-det interval (binomial test);
* negative controls for each.
"""

import numpy as np
import pytest
from scipy.stats import binom

from rnla._bounds_augmented import datafit_error_bound
from rnla.augmented import (
    AugmentedKrylov,
    fir_kernel,
    fir_likelihood_qr,
    fir_operator,
    fir_regressor,
    lanczos_datafit,
)

LAM = np.geomspace(1e-4, 1e2, 15)
RTOL = 1e-9  # rounding slack of the per-draw inequalities (float64)


def slack(ak, lam):
    """Relative rounding slack: eps times the condition number (lam + ||A||) / lam."""
    return RTOL + 100 * np.finfo(np.float64).eps * ak.ritz_values.max() / lam


def fir(rng, N=300, n=30):
    u = rng.standard_normal(N)
    Phi = fir_regressor(u, n)
    K = fir_kernel(n, kind="tc", alpha=0.85)
    i = np.arange(1, n + 1)
    y0 = Phi @ (0.8**i * np.sin(0.3 * i))
    y = y0 + 0.3 * np.std(y0) * rng.standard_normal(N)
    return u, Phi, K, y


def full_rank(rng, n=200, floor=1e-3):
    """PSD matrix with known eigendecomposition (mu, Q): exact values need no eigh."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    mu = 0.9 ** np.arange(n) + floor
    return (Q * mu) @ Q.T, mu, Q


def exact_datafit(mu, Q, y, lam):
    return ((Q.T @ y) ** 2 / (lam[:, None] + mu[None, :])).sum(axis=1)


def exact_logdet(mu, lam):
    return np.log(lam[:, None] + mu[None, :]).sum(axis=1)


def problems(rng):
    """(name, A, y, spectrum_lower, exact datafit on LAM, exact logdet on LAM)."""
    _, Phi, K, y = fir(rng)
    ex = fir_likelihood_qr(Phi, K, y, LAM)
    A_full, mu, Q = full_rank(rng)
    y1, y2 = rng.standard_normal((2, A_full.shape[0]))
    ld = exact_logdet(mu, LAM)
    return [
        ("fir", Phi @ K @ Phi.T, y, 0.0, ex.datafit, ex.logdet),
        ("full rank, a=0", A_full, y1, 0.0, exact_datafit(mu, Q, y1, LAM), ld),
        ("full rank, a=mu_min", A_full, y2, mu.min(), exact_datafit(mu, Q, y2, LAM), ld),
    ]


@pytest.mark.parametrize("k", [2, 4, 6])
def test_gauss_radau_bracket_every_draw(rng, k):
    for name, A, y, a, ex, _ in problems(rng):
        ak = AugmentedKrylov(A, y, k=k, n_probes=5, spectrum_lower=a, rng=rng)
        b = ak.bounds(LAM)
        tol = slack(ak, LAM)
        assert np.all(b.datafit_lower <= ex * (1 + tol)), name
        assert np.all(b.datafit_upper >= ex * (1 - tol)), name
        # single-vector rules bracket too
        pl = lanczos_datafit(A, y, LAM, k=k, spectrum_lower=a, rng=rng)
        assert np.all(pl.lower <= ex * (1 + tol)) and np.all(pl.upper >= ex * (1 - tol))


def test_radau_with_exact_mu_min_is_tighter(rng):
    A, mu, Q = full_rank(rng)
    y = rng.standard_normal(A.shape[0])
    ex = exact_datafit(mu, Q, y, LAM)
    up0 = AugmentedKrylov(A, y, k=4, n_probes=5, rng=1).bounds(LAM).datafit_upper
    up1 = AugmentedKrylov(A, y, k=4, n_probes=5, spectrum_lower=mu.min(), rng=1)
    up1 = up1.bounds(LAM).datafit_upper
    assert np.all(up1 <= up0 * (1 + RTOL)) and np.all(up1 >= ex * (1 - RTOL))


def test_radau_negative_control_invalid_node(rng):
    """A node above lambda_min(A) (but below the Ritz values) breaks the upper bound."""
    A, mu, Q = full_rank(rng, floor=1e-3)
    y = rng.standard_normal(A.shape[0])
    ex = exact_datafit(mu, Q, y, LAM)
    ak = AugmentedKrylov(A, y, k=2, n_probes=3, rng=1)
    a_bad = 0.9 * ak.ritz_values.min()
    assert a_bad > 2 * mu.min()
    bad = AugmentedKrylov(A, y, k=2, n_probes=3, spectrum_lower=a_bad, rng=1)
    assert np.any(bad.bounds(LAM).datafit_upper < ex * (1 - 1e-3))


@pytest.mark.parametrize("k", [2, 5])
def test_interlacing_logdet_lower_bound_every_draw(rng, k):
    for name, A, y, _, _, ex in problems(rng):
        b = AugmentedKrylov(A, y, k=k, n_probes=1, rng=rng).bounds(LAM)
        assert np.all(b.logdet_lower <= ex + RTOL * np.abs(ex) + 1e-8), name


def test_interlacing_negative_control_gauss_slq_overestimates(rng):
    """The Gauss-rule probe estimate is no lower bound: it overshoots on a low-rank A."""
    _, Phi, K, y = fir(rng)
    A = Phi @ K @ Phi.T
    ex = fir_likelihood_qr(Phi, K, y, LAM).logdet
    est = AugmentedKrylov(A, y, k=2, n_probes=4, rng=rng).logdet(LAM, rule="gauss")
    assert np.any(est > ex + 1.0)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_cg_rate_bound_every_draw(rng, k):
    A, mu, Q = full_rank(rng, floor=1e-2)
    y = rng.standard_normal(A.shape[0])
    ex = exact_datafit(mu, Q, y, LAM)
    bound = datafit_error_bound(LAM, k, mu_min=mu.min(), mu_max=mu.max())
    for est in (
        AugmentedKrylov(A, y, k=k, n_probes=4, rng=rng).datafit(LAM),
        lanczos_datafit(A, y, LAM, k=k, rng=rng).value,
    ):
        rel = (ex - est) / ex
        assert np.all(rel >= -RTOL) and np.all(rel <= bound + RTOL)


def test_cg_rate_bound_negative_control(rng):
    """The bound with a too-small condition number (kappa from mu_10 instead of mu_1)
    fails for plain Lanczos: the rate is not vacuous."""
    A, mu, Q = full_rank(rng, floor=1e-2)
    y = rng.standard_normal(A.shape[0])
    lam = np.geomspace(1e-3, 1e-1, 5)
    ex = exact_datafit(mu, Q, y, lam)
    k = 6
    rel = (ex - lanczos_datafit(A, y, lam, k=k, rng=rng).value) / ex
    wrong = datafit_error_bound(lam, k, mu_min=mu.min(), mu_max=np.sort(mu)[-10])
    assert np.any(rel > wrong)


def _fir_draws(R, k, s):
    rng = np.random.default_rng(123)
    u, Phi, K, y = fir(rng)
    A = fir_operator(u, K)
    lams = np.array([1e-2, 1e-1, 1.0]) * np.var(y)
    ex = fir_likelihood_qr(Phi, K, y, lams).logdet
    out = {"radau": [], "gauss": [], "se": [], "lo": [], "hi": []}
    for seed in range(R):
        ak = AugmentedKrylov(A, y, k=k, n_probes=s, rng=seed)
        b = ak.bounds(lams)
        out["radau"].append(ak.logdet(lams, rule="radau"))
        out["gauss"].append(ak.logdet(lams, rule="gauss"))
        out["se"].append(b.logdet_stderr)
        out["lo"].append(b.logdet_lower)
        out["hi"].append(b.logdet_upper)
    return ex, {key: np.array(v) for key, v in out.items()}


def test_logdet_expectation_sandwich():
    """E[Radau estimate] <= log det <= E[Gauss estimate] (per-probe quadrature bounds,
    Hutchinson unbiased): sample means within 4 standard errors."""
    R = 150
    ex, d = _fir_draws(R, k=4, s=6)
    for rule, sign in (("radau", 1), ("gauss", -1)):
        mean = d[rule].mean(axis=0)
        se = d[rule].std(axis=0, ddof=1) / np.sqrt(R)
        assert np.all(sign * (ex - mean) >= -4 * se), rule
    # negative control: the deterministic interlacing (projected) value is biased low
    proj_mean = d["lo"].mean(axis=0)
    assert np.any(proj_mean < ex)


def test_logdet_interval_coverage_binomial():
    """The nominal 99% interval misses (any of 3 shifts) at rate <= 5% (binomial, 1e-3);
    negative control: a 0.5-standard-error interval misses far more often."""
    R = 150
    ex, d = _fir_draws(R, k=4, s=8)
    miss = np.any((d["lo"] > ex) | (d["hi"] < ex), axis=1)
    limit = binom.ppf(1 - 1e-3, R, 0.05)
    assert miss.sum() <= limit
    narrow = np.any((d["radau"] - 0.5 * d["se"] > ex) | (d["radau"] + 0.5 * d["se"] < ex), axis=1)
    assert narrow.sum() > limit
