"""Probability bounds of rnla.estimate.lowrank_error_estimate (BOUNDS.md kinds 3 and 5).

For fixed factors, the certificate ``lower <= ||A - approximation|| <= upper`` must fail
with probability at most the stated ``delta`` over the probes. Failures are counted over
R independent draws and compared with ``delta`` by a one-sided binomial test at level
1e-3; ``delta = 0.2`` is deliberately high so that the test has power (it rejects a true
failure rate of about 0.28 or more). Inputs include the worst case of the Frobenius
proof (a rank-one residual), a near-worst spectrum for the spectral bound, a CUR of a
polynomially decaying matrix, and RPCholesky on a real kernel matrix (Gaussian kernel of
scikit-learn's digits).

Negative controls: (1) the uncertified point estimate used as an upper bound fails
about half of the time and is rejected; (2) probes that are not independent of the
factors (the sketch that built them) violate the assumption of the guarantee and make
every certificate fail.

Tightness measured at seed 42 (stable across seeds), failure rate for a stated 0.2:

* Frobenius, rank-one residual, 10 probes: ~0.01-0.03 (the chi-square Chernoff bound
  loses a factor ~3-6 per tail; this is the worst case, other residuals fail less);
* Frobenius, CUR residual / RPCholesky residual of the digits kernel: 0.00 (many
  comparable singular values: the estimate concentrates);
* spectral, one probe, one power iteration, worst-case residual spectrum: ~0.18;
* relative, Frobenius and spectral (two estimates, each at delta/2): 0.00-0.01.
"""

import numpy as np
import pytest
from scipy import stats

from rnla import estimate
from rnla._results import CholeskyResult, CURResult, QBResult, SVDResult
from rnla.estimate import lowrank_error_estimate

R = 300
DELTA = 0.2
LEVEL = 1e-3


def _pvalue(failures, p=DELTA):
    """p-value of 'the failure rate exceeds p' (one-sided binomial test)."""
    return stats.binomtest(int(failures), R, p, alternative="greater").pvalue


def _orth(rng, m, r):
    return np.linalg.qr(rng.standard_normal((m, r)))[0]


def _rank_one_residual(rng, m=40, n=30, r=5):
    """A = (exact rank-r part) + rank-one residual; the factors are the rank-r part."""
    U, V = _orth(rng, m, r + 1), _orth(rng, n, r + 1)
    s = np.array([10.0, 8.0, 6.0, 4.0, 2.0, 1.0])
    A = (U * s) @ V.T
    return A, SVDResult(U[:, :r], s[:r], V[:, :r].T), A - (U[:, :r] * s[:r]) @ V[:, :r].T


def _polynomial_cur(rng, m=60, n=40, k=6):
    """CUR (top-k columns and rows by norm, optimal core) of a sigma_i = i^-1.5 matrix."""
    s = np.arange(1, n + 1) ** -1.5
    A = (_orth(rng, m, n) * s) @ _orth(rng, n, n).T
    J = np.argsort(-np.linalg.norm(A, axis=0))[:k]
    II = np.argsort(-np.linalg.norm(A, axis=1))[:k]
    C, Rw = A[:, J], A[II]
    U = np.linalg.pinv(C) @ A @ np.linalg.pinv(Rw)
    return A, CURResult(J.astype(np.int64), U, II.astype(np.int64)), A - C @ U @ Rw


def _digits_rpcholesky(rng, n=200, k=12):
    """Column Nyström (RPCholesky pivots) of a Gaussian kernel matrix of real data."""
    from sklearn.datasets import load_digits

    from rnla.psd import rpcholesky

    X = load_digits().data
    X = X[rng.choice(len(X), n, replace=False)]
    X = (X - X.mean(0)) / (X.std(0) + 1e-12)
    sq = np.sum(X * X, 1)
    K = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0) / (2 * 64.0))
    res = rpcholesky(K, k, method="simple", rng=rng)
    return K, CholeskyResult(res.F, res.pivots), K - res.F @ res.F.T


CASES = {
    "rank_one_residual": _rank_one_residual,
    "cur_polynomial": _polynomial_cur,
    "rpcholesky_digits": _digits_rpcholesky,
}


def _draws(rng, A, factors, **kw):
    return [lowrank_error_estimate(A, factors, delta=DELTA, rng=rng, **kw) for _ in range(R)]


def _failures(ests, exact, slack=1e-12):
    return sum(e.lower > exact * (1 + slack) or e.upper < exact * (1 - slack) for e in ests)


@pytest.mark.parametrize("case", list(CASES))
def test_frobenius_certificate_holds(rng, case):
    A, factors, E = CASES[case](rng)
    exact = np.linalg.norm(E)
    ests = _draws(rng, A, factors)
    assert _pvalue(_failures(ests, exact)) > LEVEL
    # each side is given half of the failure probability
    assert _pvalue(sum(e.upper < exact for e in ests), DELTA / 2) > LEVEL
    assert _pvalue(sum(e.lower > exact for e in ests), DELTA / 2) > LEVEL


def test_spectral_certificate_holds(rng):
    # Worst case of the Beta-tail bound (one probe, q = 1 iteration): residual singular
    # values 1 and, in every other direction, sqrt(mu*) with mu* = 2q(1 - eps)/(2q + 1)
    # the maximiser in the proof (eps from the stated delta). Failure rate ~0.18 for 0.2.
    m, n, r = 40, 30, 4
    eps = estimate._power_eps(DELTA, 1, n, 1)
    level = np.sqrt(2 * (1 - eps) / 3)
    U, V = _orth(rng, m, n), _orth(rng, n, n)
    s = np.concatenate([[20.0, 15.0, 10.0, 5.0, 1.0], np.full(n - r - 1, level)])
    A = (U * s) @ V.T
    factors = QBResult(U[:, :r], U[:, :r].T @ A, 0.0)
    exact = 1.0
    ests = _draws(rng, A, factors, norm=2, n_probes=1, n_iter=1)
    assert all(e.lower <= exact * (1 + 1e-12) for e in ests)  # per draw: a Ritz value
    assert _pvalue(_failures(ests, exact)) > LEVEL


@pytest.mark.parametrize("ord", ["fro", 2])
def test_relative_certificate_holds(rng, ord):
    # Union bound: two estimates, each at delta / 2, together fail at most delta.
    A, factors, E = _rank_one_residual(rng)
    exact = np.linalg.norm(E, ord) / np.linalg.norm(A, ord)
    kw = {"n_probes": 2, "n_iter": 1} if ord == 2 else {}
    ests = _draws(rng, A, factors, norm=ord, relative=True, **kw)
    assert _pvalue(_failures(ests, exact, slack=1e-10)) > LEVEL


# ----------------------------------------------------------------------------------------
# negative controls
# ----------------------------------------------------------------------------------------


def test_negative_control_point_estimate_is_not_a_bound(rng):
    # The point estimate, used as an upper bound, fails about half of the time
    # (P(chi2_10 / 10 < 1) = 0.56 for a rank-one residual): the test rejects it.
    A, factors, E = _rank_one_residual(rng)
    exact = np.linalg.norm(E)
    ests = _draws(rng, A, factors)
    assert _pvalue(sum(e.value < exact for e in ests)) < LEVEL
    # ... while the certified upper bound of the same draws passes
    assert _pvalue(sum(e.upper < exact for e in ests)) > LEVEL


def test_negative_control_probes_must_be_independent_of_the_factors(rng):
    # Q spans A Omega. If the probes are Omega itself (same seed, same draw: norm_estimate
    # draws its N(0, 1) probes first, as an (n, n_probes) array), the residual
    # (I - Q Q^T) A Omega vanishes and every certificate fails. A fresh stream passes.
    A, _, _ = _rank_one_residual(rng)
    A = A + 0.1 * rng.standard_normal(A.shape)
    n_probes = 10
    bad_fails = good_fails = 0
    for _ in range(R):
        seed = int(rng.integers(2**32))
        Omega = np.random.default_rng(seed).standard_normal((A.shape[1], n_probes))
        Q = np.linalg.qr(A @ Omega)[0]
        factors = QBResult(Q, Q.T @ A, 0.0)
        exact = np.linalg.norm(A - Q @ (Q.T @ A))
        kw = {"n_probes": n_probes, "delta": DELTA}
        bad = lowrank_error_estimate(A, factors, rng=seed, **kw)
        good = lowrank_error_estimate(A, factors, rng=seed + 1, **kw)
        bad_fails += not bad.lower <= exact <= bad.upper
        good_fails += not good.lower <= exact <= good.upper
    assert _pvalue(bad_fails) < LEVEL
    assert _pvalue(good_fails) > LEVEL
