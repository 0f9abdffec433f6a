"""Unit tests of rnla.estimate: norm_estimate and effective_distortion."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla import estimate
from rnla.estimate import NormEstimate, effective_distortion, norm_estimate
from tests.conftest import CountingOperator


def _rel(dtype, factor=100.0):
    return factor * float(np.finfo(dtype).eps)


def _test_matrix(rng, m=60, n=40, decay=0.8, dtype=np.float64):
    U = np.linalg.qr(rng.standard_normal((m, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s = decay ** np.arange(n)
    return ((U * s) @ V.T).astype(dtype), s


# ----------------------------------------------------------------------------------------
# spectral norm
# ----------------------------------------------------------------------------------------


def test_spectral_lower_bound_is_deterministic(rng, dtype):
    # Per-draw inequality: value is a Ritz value, never above ||A||_2 (up to rounding).
    for _ in range(20):
        A, s = _test_matrix(rng, decay=float(rng.uniform(0.5, 1.0)), dtype=dtype)
        est = norm_estimate(A, n_probes=3, n_iter=1, rng=rng)
        assert est.lower == est.value
        assert est.value <= s[0] * (1 + _rel(dtype))
        assert est.upper >= est.value


def test_spectral_result_types_and_counts(rng, dtype):
    A, _ = _test_matrix(rng, dtype=dtype)
    op = CountingOperator(A)
    est = norm_estimate(op, n_probes=5, n_iter=3, rng=rng)
    assert isinstance(est, NormEstimate)
    assert all(isinstance(v, float) for v in (est.value, est.upper, est.lower))
    assert est.n_matvecs == 5 * (2 * 3 + 1) == op.count
    assert est.delta == 1e-3


def test_frobenius_counts_matvecs(rng):
    A, _ = _test_matrix(rng)
    op = CountingOperator(A)
    est = norm_estimate(op, "fro", n_probes=7, rng=rng)
    assert est.n_matvecs == 7 == op.count


def test_spectral_exact_when_probes_span_the_space(rng):
    A, s = _test_matrix(rng, m=30, n=6)
    est = norm_estimate(A, n_probes=8, n_iter=0, rng=rng)
    assert est.value == pytest.approx(s[0], rel=1e-12)
    assert est.upper == est.value
    assert est.n_matvecs == 6  # the block is truncated to min(m, n) columns


def test_spectral_wide_matrix_uses_smaller_side(rng):
    tall, _ = _test_matrix(rng, m=60, n=40)
    op = CountingOperator(np.ascontiguousarray(tall.T))  # 40 x 60
    est = norm_estimate(op, n_probes=4, n_iter=2, rng=0)
    # the wide operator is handled through its adjoint: same probes, same result
    ref = norm_estimate(tall, n_probes=4, n_iter=2, rng=0)
    assert est.value == pytest.approx(ref.value, rel=1e-12)
    assert est.upper == pytest.approx(ref.upper, rel=1e-12)
    assert op.count == est.n_matvecs == 4 * 5


def test_spectral_converges_with_iterations(rng):
    A, s = _test_matrix(rng, decay=0.7)
    est = norm_estimate(A, n_probes=4, n_iter=30, rng=rng)
    assert est.value == pytest.approx(s[0], rel=1e-10)
    assert s[0] <= est.upper <= 1.2 * s[0]


def test_zero_matrix():
    for ord_ in (2, "fro"):
        est = norm_estimate(np.zeros((7, 5)), ord_, rng=0)
        assert est.value == est.upper == est.lower == 0.0


def test_power_tail_helper_is_monotone():
    # eps(delta, q, D, b): larger for smaller delta and larger D, smaller for more
    # iterations or probes.
    base = estimate._power_eps(1e-3, 4, 1000, 10)
    assert 0 < base < 1
    assert estimate._power_eps(1e-6, 4, 1000, 10) > base
    assert estimate._power_eps(1e-3, 4, 10**5, 10) > base
    assert estimate._power_eps(1e-3, 8, 1000, 10) < base
    assert estimate._power_eps(1e-3, 4, 1000, 20) < base
    # the root solves p(eps)^b = delta
    p = estimate._power_failure(base, 4, 1000)
    assert p**10 == pytest.approx(1e-3, rel=1e-6)
    # a 1-dimensional operator is always exact
    assert estimate._power_failure(0.1, 0, 1) == 0.0


# ----------------------------------------------------------------------------------------
# Frobenius norm
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1e-3, 0.1, 1.0, 10.0, 700.0])
def test_chernoff_roots_solve_the_equation(c):
    t_lo, t_hi = estimate._chi2_chernoff_roots(c)
    assert 0 < t_lo < 1 < t_hi
    for t in (t_lo, t_hi):
        assert t - 1 - math.log(t) == pytest.approx(c, rel=1e-9)


def test_frobenius_bounds_bracket_the_value(rng, dtype):
    A, _ = _test_matrix(rng, dtype=dtype)
    est = norm_estimate(A, "fro", n_probes=20, delta=0.01, rng=rng)
    assert est.lower < est.value < est.upper
    # t_- and t_+ from the Chernoff equation with c = 2 ln(2/delta)/N
    t_lo, t_hi = estimate._chi2_chernoff_roots(2 * math.log(200) / 20)
    assert est.upper == pytest.approx(est.value / math.sqrt(t_lo), rel=1e-12)
    assert est.lower == pytest.approx(est.value / math.sqrt(t_hi), rel=1e-12)


def test_frobenius_square_is_unbiased(rng):
    # E value^2 = ||A||_F^2; 300 independent estimates, 4 standard errors.
    A, s = _test_matrix(rng, decay=0.9)
    fro2 = float(np.sum(s**2))
    vals = np.array([norm_estimate(A, "fro", n_probes=2, rng=rng).value ** 2 for _ in range(300)])
    se = vals.std(ddof=1) / math.sqrt(len(vals))
    assert abs(vals.mean() - fro2) <= 4 * se


def test_frobenius_with_many_probes_is_accurate(rng):
    A, s = _test_matrix(rng)
    est = norm_estimate(A, "fro", n_probes=4000, rng=rng)
    assert est.value == pytest.approx(math.sqrt(np.sum(s**2)), rel=0.05)
    assert est.lower <= math.sqrt(np.sum(s**2)) <= est.upper


# ----------------------------------------------------------------------------------------
# input types, dtypes, determinism
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ord_", [2, "fro"])
def test_dense_sparse_operator_agree(rng, ord_):
    A = sp.random(50, 30, density=0.2, random_state=int(rng.integers(2**31)), format="csr")
    dense = A.toarray()
    results = [
        norm_estimate(X, ord_, n_probes=4, rng=7)
        for X in (dense, A, A.tocsc(), aslinearoperator(dense), aslinearoperator(A))
    ]
    for r in results[1:]:
        assert r.value == pytest.approx(results[0].value, rel=1e-12)
        assert r.upper == pytest.approx(results[0].upper, rel=1e-12)
        assert r.n_matvecs == results[0].n_matvecs


@pytest.mark.parametrize("ord_", [2, "fro"])
def test_float32_matches_float64(rng, ord_):
    A, _ = _test_matrix(rng)
    A32 = A.astype(np.float32)
    A32_copy = A32.copy()
    e64 = norm_estimate(A, ord_, rng=3)
    e32 = norm_estimate(A32, ord_, rng=3)
    assert e32.value == pytest.approx(e64.value, rel=_rel(np.float32, 1000))
    assert e32.upper == pytest.approx(e64.upper, rel=_rel(np.float32, 1000))
    np.testing.assert_array_equal(A32, A32_copy)


def test_integer_input_promotes(rng):
    A = rng.integers(-3, 4, size=(10, 8))
    assert norm_estimate(A, rng=0).value == pytest.approx(
        norm_estimate(A.astype(np.float64), rng=0).value, rel=1e-12
    )


@pytest.mark.parametrize("ord_", [2, "fro"])
def test_same_seed_same_result(rng, ord_):
    A, _ = _test_matrix(rng)
    assert norm_estimate(A, ord_, rng=11) == norm_estimate(A, ord_, rng=11)
    # a Generator is consumed, not reseeded
    gen = np.random.default_rng(11)
    state = gen.bit_generator.state["state"]["state"]
    norm_estimate(A, ord_, rng=gen)
    assert gen.bit_generator.state["state"]["state"] != state


def test_input_not_mutated(rng):
    A, _ = _test_matrix(rng)
    A0 = A.copy()
    norm_estimate(A, rng=0)
    norm_estimate(A, "fro", rng=0)
    np.testing.assert_array_equal(A, A0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"norm": 1}, ValueError, r"norm=1 is not one of 2, 'fro'"),
        ({"norm": "nuc"}, ValueError, r"norm='nuc' is not one of 2, 'fro'"),
        ({"norm": True}, ValueError, "is not one of"),
        ({"n_probes": 0}, ValueError, "n_probes=0 must be >= 1"),
        ({"n_probes": 2.0}, TypeError, "n_probes must be an integer"),
        ({"n_iter": -1}, ValueError, "n_iter=-1 must be >= 0"),
        ({"norm": "fro", "n_iter": 2}, ValueError, "n_iter=2 applies to norm=2 only"),
        ({"delta": 0.0}, ValueError, r"must lie in the open interval \(0, 1\)"),
        ({"delta": 1.0}, ValueError, r"delta=1.0 must lie"),
        ({"delta": "x"}, TypeError, "must be a real number"),
        ({"rng": np.random.RandomState(0)}, TypeError, "RandomState"),
    ],
)
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        norm_estimate(np.eye(3), **kwargs)


def test_bad_inputs():
    with pytest.raises(TypeError, match="complex"):
        norm_estimate(np.eye(3) * 1j)
    with pytest.raises(ValueError, match="finite"):
        norm_estimate(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-dimensional"):
        norm_estimate(np.ones(3))
    with pytest.raises(ValueError, match="non-empty"):
        norm_estimate(np.ones((0, 3)))


# ----------------------------------------------------------------------------------------
# effective distortion
# ----------------------------------------------------------------------------------------


def test_effective_distortion_reference(rng, dtype):
    M = rng.standard_normal((20, 5)).astype(dtype)
    s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    kappa = s[0] / s[-1]
    assert effective_distortion(M) == pytest.approx((kappa - 1) / (kappa + 1), rel=_rel(dtype))


def test_effective_distortion_scale_free(rng):
    Q = np.linalg.qr(rng.standard_normal((30, 4)))[0]
    assert effective_distortion(Q) == pytest.approx(0.0, abs=1e-14)
    assert effective_distortion(7.5 * Q) == pytest.approx(0.0, abs=1e-14)
    assert effective_distortion(np.diag([2.0, 1.0])) == pytest.approx(1 / 3)


def test_effective_distortion_rank_deficient():
    assert effective_distortion(np.ones((4, 2))) == pytest.approx(1.0)
    assert effective_distortion(np.zeros((4, 2))) == 1.0
    assert effective_distortion(np.ones((2, 4))) == 1.0  # k < d


def test_effective_distortion_bad_input():
    with pytest.raises(ValueError, match="2-dimensional"):
        effective_distortion(np.ones(3))
    with pytest.raises(TypeError, match="dense array"):
        effective_distortion(sp.eye(3, format="csr"))
    with pytest.raises(ValueError, match="finite"):
        effective_distortion(np.array([[np.inf]]))
