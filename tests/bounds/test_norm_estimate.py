"""Probability bounds of rnla.estimate.norm_estimate (BOUNDS.md kinds 1, 3 and 5).

Failures are counted over R independent draws and compared with the stated failure
probability by a one-sided binomial test at level 1e-3. The failure probability is set
to 0.2 so that the test has power; the inputs are the worst cases of the proofs
(rank-one for the Frobenius bound, a two-level spectrum for the spectral bound), where
the bounds are nearly attained. Negative controls: bounds that are too optimistic are
rejected by the same test.

Tightness measured at seed 42 (and stable across seeds):

* spectral, worst-case spectrum, one probe: failure rate ~0.18 for a stated 0.2 (the
  Beta-tail bound is exact for this spectrum and a single probe);
* Frobenius, rank-one A, N = 10 probes: exact failure rate 0.035 for a stated 0.2
  (Chernoff loses a factor ~3-6 per tail);
* typical decaying spectrum (sigma_i = 0.9^i, 200 x 100) with the defaults
  (10 probes, 4 iterations, delta = 1e-3): upper/||A||_2 ~ 1.2; Frobenius with
  10 probes: upper/||A||_F ~ 3.3, lower/||A||_F ~ 0.5.
"""

import math

import numpy as np
import pytest
from scipy import stats

from rnla import estimate
from rnla.estimate import norm_estimate

R = 300
DELTA = 0.2
LEVEL = 1e-3


def _rotate(rng, s, m):
    """A matrix (m x len(s)) with singular values s and random singular vectors."""
    n = len(s)
    U = np.linalg.qr(rng.standard_normal((m, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return (U * s) @ V.T


def _too_many(failures, p):
    """p-value of 'the failure rate exceeds p' (one-sided binomial test)."""
    return stats.binomtest(int(failures), R, p, alternative="greater").pvalue


# ----------------------------------------------------------------------------------------
# Frobenius norm
# ----------------------------------------------------------------------------------------


def _fro_draws(rng, A, n_probes):
    true = float(np.linalg.norm(A))
    ests = [norm_estimate(A, "fro", n_probes=n_probes, delta=DELTA, rng=rng) for _ in range(R)]
    return true, ests


@pytest.mark.parametrize("spectrum", ["rank_one", "flat", "decaying"])
def test_frobenius_interval_holds(rng, spectrum):
    s = {"rank_one": [3.0], "flat": np.ones(20), "decaying": 0.7 ** np.arange(20)}[spectrum]
    A = _rotate(rng, np.asarray(s, dtype=float), 40)
    true, ests = _fro_draws(rng, A, n_probes=10)
    fail_hi = sum(e.upper < true for e in ests)
    fail_lo = sum(e.lower > true for e in ests)
    assert _too_many(fail_hi + fail_lo, DELTA) > LEVEL
    # each side is given half of the failure probability
    assert _too_many(fail_hi, DELTA / 2) > LEVEL
    assert _too_many(fail_lo, DELTA / 2) > LEVEL


def test_frobenius_rank_one_failure_rate_matches_chi_square(rng):
    # For rank-one A, value^2/||A||_F^2 ~ chi2_N/N exactly, so the failure rate of the
    # interval is known: P(chi2_N <= N t_-) + P(chi2_N >= N t_+) (~0.035 for N=10).
    N = 10
    A = _rotate(rng, np.array([2.0]), 30)
    true, ests = _fro_draws(rng, A, n_probes=N)
    t_lo, t_hi = estimate._chi2_chernoff_roots(2 * math.log(2 / DELTA) / N)
    exact = stats.chi2.cdf(N * t_lo, N) + stats.chi2.sf(N * t_hi, N)
    assert exact < DELTA  # the Chernoff bound is conservative ...
    assert exact > DELTA / 10  # ... but not absurdly so
    fails = sum(not (e.lower <= true <= e.upper) for e in ests)
    assert stats.binomtest(fails, R, exact).pvalue > LEVEL


def test_frobenius_negative_control(rng):
    # The point estimate used as an upper bound fails with probability
    # P(chi2_10 < 10) ~ 0.56 on a rank-one matrix: the binomial test must reject it.
    A = _rotate(rng, np.array([1.0]), 30)
    true, ests = _fro_draws(rng, A, n_probes=10)
    fails = sum(e.value < true for e in ests)
    assert _too_many(fails, DELTA) < LEVEL


# ----------------------------------------------------------------------------------------
# spectral norm
# ----------------------------------------------------------------------------------------


def _worst_case(D, q, n_probes, rng):
    """Spectrum attaining the bound: sigma_1 = 1, all others sqrt(mu*) (see Notes)."""
    eps = estimate._power_eps(DELTA, q, D, n_probes)
    mu = 2 * q * (1 - eps) / (2 * q + 1)
    s = np.r_[1.0, np.full(D - 1, math.sqrt(mu))]
    return _rotate(rng, s, D + 10)


def test_spectral_lower_bound_every_draw(rng, dtype):
    # Kind 1: the Ritz value never exceeds ||A||_2 (rounding aside).
    A = _rotate(rng, 0.95 ** np.arange(30), 50).astype(dtype)
    true = float(np.linalg.norm(A.astype(np.float64), 2))
    tol = 100 * float(np.finfo(dtype).eps)
    for _ in range(50):
        est = norm_estimate(A, n_probes=2, n_iter=1, rng=rng)
        assert est.lower <= true * (1 + tol)


def test_spectral_upper_bound_is_attained_for_one_probe(rng):
    # With one probe and the two-level spectrum the failure probability equals delta
    # exactly, so a two-sided test checks the derivation, not just its direction.
    D, q = 50, 2
    A = _worst_case(D, q, 1, rng)
    ests = [norm_estimate(A, n_probes=1, n_iter=q, delta=DELTA, rng=rng) for _ in range(R)]
    fails = sum(e.upper < 1.0 for e in ests)
    assert stats.binomtest(fails, R, DELTA).pvalue > LEVEL


@pytest.mark.parametrize(("n_probes", "q"), [(2, 2), (4, 1), (3, 0)])
def test_spectral_upper_bound_holds(rng, n_probes, q):
    D = 40
    A = _worst_case(D, q, n_probes, rng)
    ests = [norm_estimate(A, n_probes=n_probes, n_iter=q, delta=DELTA, rng=rng) for _ in range(R)]
    fails = sum(e.upper < 1.0 for e in ests)
    assert _too_many(fails, DELTA) > LEVEL


def test_spectral_upper_bound_holds_on_slow_decay(rng):
    A = _rotate(rng, 1.0 / (1.0 + 0.02 * np.arange(60)), 80)
    true = float(np.linalg.norm(A, 2))
    ests = [norm_estimate(A, n_probes=2, n_iter=1, delta=DELTA, rng=rng) for _ in range(R)]
    ratios = np.array([e.upper / true for e in ests])
    assert _too_many(np.sum(ratios < 1.0), DELTA) > LEVEL
    assert np.median(ratios) < 2.0  # tightness: ~1.3 here


def test_spectral_negative_control(rng):
    # A bound that forgets the dimension (uses D = 2 instead of 50) is too optimistic on
    # the worst-case spectrum: it fails with rate ~0.7 and must be rejected.
    D, q = 50, 2
    A = _worst_case(D, q, 1, rng)
    eps_bad = estimate._power_eps(DELTA, q, 2, 1)
    ests = [norm_estimate(A, n_probes=1, n_iter=q, delta=DELTA, rng=rng) for _ in range(R)]
    fails = sum(e.value / math.sqrt(1 - eps_bad) < 1.0 for e in ests)
    assert _too_many(fails, DELTA) < LEVEL


def test_default_settings_tightness(rng):
    A = _rotate(rng, 0.9 ** np.arange(100), 200)
    est = norm_estimate(A, rng=rng)
    assert 1.0 - 1e-12 <= est.upper <= 1.5  # ||A||_2 = 1; measured ~1.2
    assert est.value >= 0.9
