"""Unit tests of rnla.trace: Hutchinson, Hutch++, XTrace, XNysTrace, SLQ, logdet."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla.trace import (
    TraceEstimate,
    _probes,
    hutchinson,
    hutchpp,
    logdet,
    slq,
    xnystrace,
    xtrace,
)


def psd(n, rng, eigenvalues, dtype=np.float64):
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (U * eigenvalues) @ U.T
    return ((A + A.T) / 2).astype(dtype)


ESTIMATORS = {
    "hutchinson": lambda A, m, **kw: hutchinson(A, m, **kw),
    "hutchpp": lambda A, m, **kw: hutchpp(A, m, **kw),
    "xtrace": lambda A, m, **kw: xtrace(A, m, **kw),
    "xnystrace": lambda A, m, **kw: xnystrace(A, m, **kw),
}


# --------------------------------------------------------------------------------------
# Plain-NumPy references of the leave-one-out estimators
# --------------------------------------------------------------------------------------


def naive_xtrace(A, Om):
    ests = []
    for i in range(Om.shape[1]):
        Q, _ = np.linalg.qr(A @ np.delete(Om, i, axis=1))
        u = Om[:, i] - Q @ (Q.T @ Om[:, i])
        ests.append(np.trace(Q.T @ A @ Q) + u @ A @ u)
    return np.array(ests)


def naive_xnystrace(A, Om):
    ests = []
    for i in range(Om.shape[1]):
        Om_i = np.delete(Om, i, axis=1)
        Y = A @ Om_i
        Ah = Y @ np.linalg.pinv(Om_i.T @ Y) @ Y.T
        w = Om[:, i]
        ests.append(np.trace(Ah) + w @ (A - Ah) @ w)
    return np.array(ests)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "general"])
def test_xtrace_matches_reference(symmetric, rng, seed):
    n, m = 40, 12
    B = rng.standard_normal((n, n))
    A = B @ B.T if symmetric else B
    est = xtrace(A, m, rng=seed)
    Om = _probes(np.random.default_rng(seed), n, m // 2, "gaussian", np.float64)
    ref = naive_xtrace(A, Om)
    np.testing.assert_allclose(est.value, ref.mean(), rtol=1e-9)
    np.testing.assert_allclose(est.stderr, ref.std(ddof=1) / np.sqrt(len(ref)), rtol=1e-7)
    assert est.n_matvecs == m


def test_xnystrace_matches_reference(rng, seed):
    n, m = 40, 7
    A = psd(n, rng, np.logspace(0, -3, n))
    est = xnystrace(A, m, rng=seed)
    r = np.random.default_rng(seed)
    r.standard_normal((n, 2))  # the symmetry probe comes first
    Om = _probes(r, n, m, "gaussian", np.float64)
    ref = naive_xnystrace(A, Om)
    np.testing.assert_allclose(est.value, ref.mean(), rtol=1e-8)
    assert est.n_matvecs == m + 2


# --------------------------------------------------------------------------------------
# Shapes, dtypes, operator kinds, exactness
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("kind", ["dense", "sparse", "operator"])
def test_estimators_types(name, kind, dtype, rng):
    n = 50
    A = psd(n, rng, np.linspace(1.0, 2.0, n), dtype=dtype)
    Ain = {"dense": A, "sparse": sp.csr_array(A), "operator": aslinearoperator(A)}[kind]
    est = ESTIMATORS[name](Ain, 12, rng=rng)
    assert isinstance(est, TraceEstimate)
    assert isinstance(est.value, float) and isinstance(est.n_matvecs, int)
    truth = float(np.trace(A.astype(np.float64)))
    assert abs(est.value - truth) < 0.3 * truth


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_deterministic_not_mutated(name, rng):
    A = psd(30, rng, np.linspace(1.0, 3.0, 30))
    A0 = A.copy()
    e1 = ESTIMATORS[name](A, 9, rng=5)
    e2 = ESTIMATORS[name](A, 9, rng=5)
    assert e1 == e2
    np.testing.assert_array_equal(A, A0)


def test_hutchinson_rademacher_exact_on_diagonal(rng):
    d = rng.uniform(-1, 3, 25)
    est = hutchinson(np.diag(d), 4, rng=rng)
    np.testing.assert_allclose(est.value, d.sum(), rtol=1e-12)
    assert est.stderr == 0.0 and est.n_matvecs == 4


def test_hutchinson_single_probe_stderr_inf(rng):
    est = hutchinson(np.eye(5), 1, rng=rng)
    assert est.stderr == np.inf


@pytest.mark.parametrize("name", ["hutchpp", "xtrace", "xnystrace"])
def test_low_rank_exact(name, rng):
    """rank(A) < number of sketch columns: the trace is recovered exactly."""
    n, r = 80, 4
    B = rng.standard_normal((n, r))
    A = B @ B.T
    est = ESTIMATORS[name](A, 18, rng=rng)
    np.testing.assert_allclose(est.value, np.trace(A), rtol=1e-8)


def test_xtrace_rank_deficient_reports_zero_stderr(rng):
    B = rng.standard_normal((50, 3))
    est = xtrace(B @ B.T, 20, rng=rng)
    assert est.stderr == 0.0


# --------------------------------------------------------------------------------------
# SLQ and logdet
# --------------------------------------------------------------------------------------


def test_slq_exact_quadrature_equals_hutchinson_of_fA(seed):
    """With k >= number of distinct eigenvalues each probe's quadrature is exact."""
    n, m = 30, 5
    lam = np.repeat([0.5, 1.0, 3.0], 10)
    A = np.diag(lam)
    est = slq(A, "log", n_probes=m, k=5, rng=seed)
    r = np.random.default_rng(seed)
    r.standard_normal((n, 2))
    Z = _probes(r, n, m, "rademacher", np.float64)
    ref = np.einsum("ij,i,ij->j", Z, np.log(lam), Z)
    np.testing.assert_allclose(est.value, ref.mean(), rtol=1e-12)
    # Breakdown after 3 steps: 3 matvecs per probe + 2 symmetry probes.
    assert est.n_matvecs == 3 * m + 2


@pytest.mark.parametrize("f", ["log", "inv", "sqrt", "exp", "callable"])
def test_slq_close_to_truth(f, dtype, rng):
    n = 60
    lam = np.linspace(1.0, 3.0, n)
    A = psd(n, rng, lam, dtype=dtype)
    g = {"log": np.log, "inv": lambda x: 1 / x, "sqrt": np.sqrt, "exp": np.exp}
    fun = np.cos if f == "callable" else g[f]
    est = slq(A, fun if f == "callable" else f, n_probes=30, k=12, rng=rng)
    truth = float(np.sum(fun(lam)))
    assert abs(est.value - truth) <= 5 * est.stderr + 1e-3 * abs(truth)


@pytest.mark.parametrize("method", ["slq", "hutchpp"])
def test_logdet_stochastic(method, dtype, rng):
    n = 120
    lam = np.concatenate([np.logspace(2, 0, 10), np.full(n - 10, 0.5)])
    A = psd(n, rng, lam, dtype=dtype)
    truth = float(np.sum(np.log(lam)))
    est = logdet(A, method=method, n_probes=20, k=15, rng=rng)
    assert abs(est.value - truth) <= 5 * est.stderr + 1e-3 * abs(truth)
    assert est.n_matvecs > 0


def test_logdet_hutchpp_deflation_reduces_error(seed):
    """Deflating the dominant eigenvalues removes most of the SLQ variance."""
    rng = np.random.default_rng(seed)
    n = 150
    lam = np.concatenate([np.logspace(4, 1, 8), np.full(n - 8, 1.0)])
    A = psd(n, rng, lam)
    truth = float(np.sum(np.log(lam)))
    err_slq = [logdet(A, method="slq", n_probes=8, k=12, rng=s).value - truth for s in range(8)]
    err_pp = [
        logdet(A, method="hutchpp", n_probes=8, k=12, rank=8, rng=s).value - truth
        for s in range(8)
    ]
    assert np.sqrt(np.mean(np.square(err_pp))) < 0.3 * np.sqrt(np.mean(np.square(err_slq)))


def test_logdet_exact_matches_slogdet(dtype, rng):
    A = psd(40, rng, np.logspace(-1, 2, 40), dtype=dtype)
    est = logdet(A)
    ref = np.linalg.slogdet(A.astype(np.float64))[1]
    np.testing.assert_allclose(est.value, ref, rtol=1e-4 if dtype == np.float32 else 1e-10)
    assert est.stderr == 0.0 and est.n_matvecs == 0


def test_logdet_auto_uses_slq_for_operators(rng):
    A = psd(30, rng, np.linspace(1.0, 2.0, 30))
    est = logdet(aslinearoperator(A), n_probes=4, k=5, rng=rng)
    assert est.n_matvecs > 0


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda A: hutchinson(A, 0), ValueError, "n_probes=0 must be >= 1"),
        (lambda A: hutchinson(A, 2.5), TypeError, "n_probes must be an integer"),
        (lambda A: hutchinson(A, 3, distribution="sphere"), ValueError, "distribution="),
        (lambda A: hutchinson(np.ones((4, 5)), 3), ValueError, "square"),
        (lambda A: hutchinson(A + 0j, 3), TypeError, "complex"),
        (lambda A: hutchpp(A, 2), ValueError, "n_matvecs=2 must be >= 3"),
        (lambda A: xtrace(A, 3), ValueError, "n_matvecs=3 must be >= 4"),
        (lambda A: xnystrace(A, 1), ValueError, r"n_matvecs=1 must be >= 2"),
        (lambda A: slq(A, "log", k=11), ValueError, r"1 <= k <= 10"),
        (lambda A: slq(A, "cosh"), ValueError, "f='cosh' is not one of"),
        (lambda A: logdet(A, method="lu"), ValueError, "method='lu' is not one of"),
        (lambda A: logdet(sp.csr_array(A), method="exact"), TypeError, "dense array"),
    ],
    ids=[
        "probes-0",
        "probes-float",
        "distribution",
        "non-square",
        "complex",
        "hutchpp-budget",
        "xtrace-budget",
        "xnystrace-budget",
        "k>n",
        "f-name",
        "method",
        "exact-sparse",
    ],
)
def test_bad_input(call, exc, match):
    A = np.diag(np.linspace(1.0, 2.0, 10))
    with pytest.raises(exc, match=match):
        call(A)


@pytest.mark.parametrize(
    "call",
    [
        lambda A: slq(A, "log", rng=0),
        lambda A: logdet(A, rng=0),
        lambda A: logdet(A, method="slq", rng=0),
        lambda A: xnystrace(A, 4, rng=0),
    ],
    ids=["slq", "logdet-exact", "logdet-slq", "xnystrace"],
)
def test_nonsymmetric_rejected(call, rng):
    A = rng.standard_normal((20, 20)) + 20 * np.eye(20)
    with pytest.raises(ValueError, match="A must be symmetric"):
        call(A)


def test_logdet_not_spd_rejected():
    A = np.diag(np.linspace(-1.0, 2.0, 20))
    with pytest.raises(ValueError, match="positive definite"):
        logdet(A, rng=0)
    with pytest.raises(ValueError, match="positive definite"):
        logdet(A, method="slq", k=20, rng=0)


def test_xnystrace_not_psd_rejected():
    A = -np.diag(np.linspace(1.0, 2.0, 20))
    with pytest.raises(ValueError, match="positive semidefinite"):
        xnystrace(A, 5, rng=0)


@pytest.mark.parametrize("n", [1, 5, 19])
def test_logdet_default_steps_clamped_to_size(rng, n):
    # Diagonal A and Rademacher probes: z^T log(A) z = logdet(A) for every probe, so the
    # estimate is exact exactly when the quadrature is, i.e. with min(20, n) = n steps.
    A = np.diag(np.linspace(1.0, 3.0, n))
    est = logdet(A, method="slq", n_probes=2, rng=rng)
    exact = np.linalg.slogdet(A)[1]
    assert est.value == pytest.approx(exact, rel=1e-8, abs=1e-8)
    assert slq(A, "log", n_probes=2, rng=rng).value == pytest.approx(exact, rel=1e-8, abs=1e-8)
    if n < 20:
        # Only the default is clamped: an explicit k beyond n is still an error.
        with pytest.raises(ValueError, match=f"k=20 must satisfy 1 <= k <= {n}"):
            logdet(A, method="slq", k=20, rng=rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_xnystrace_budget_covering_the_space_is_exact(n, dtype):
    A = np.diag(np.linspace(1.0, 2.0, n)).astype(dtype)
    est = xnystrace(A, max(n, 2), rng=0)
    np.testing.assert_allclose(est.value, np.trace(A.astype(np.float64)), rtol=1e-6)
    assert est.stderr == 0.0 and est.n_matvecs >= n
    with pytest.raises(ValueError, match="positive semidefinite"):
        xnystrace(-A, max(n, 2), rng=0)
