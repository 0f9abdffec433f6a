"""Regression tests for defects found by fuzzing the rnla core (each failed before its fix)."""

import itertools
import warnings

import numpy as np
import pytest

import rnla
import rnla.bounds as B
from rnla import tensor, trace
from rnla.estimate import norm_estimate


@pytest.mark.parametrize("method", ["krylov", "subspace"])
def test_rsvd_zero_float32(method):
    A = np.zeros((12, 9), np.float32)
    U, s, Vt = rnla.rsvd(A, 2, method=method, rng=0)
    assert U.dtype == np.float32 and np.all(s == 0)
    np.testing.assert_allclose(U.T @ U, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(2), atol=1e-6)


@pytest.mark.parametrize("scale", [1e30, 1e19, 1e-19, 1e-30])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("method", ["krylov", "subspace"])
def test_rsvd_float32_extreme_magnitude(scale, rank, method):
    # A A^T overflows float32 for entries of 1e19 and more: the Krylov products used to.
    A64 = np.random.default_rng(0).standard_normal((30, 20)) * scale
    A = A64.astype(np.float32)
    U, s, Vt = rnla.rsvd(A, rank, method=method, rng=0)
    exact = np.linalg.svd(A.astype(np.float64), compute_uv=False)[:rank]
    assert np.isfinite(U).all() and np.isfinite(Vt).all()
    np.testing.assert_allclose(s, exact, rtol=5e-5)


def test_norm_estimate_float32_huge_entries():
    A = (np.random.default_rng(0).standard_normal((12, 9)) * 1e30).astype(np.float32)
    est = norm_estimate(A, rng=0)
    exact = np.linalg.norm(A.astype(np.float64), 2)
    assert np.isfinite(est.upper)
    assert est.lower <= exact * (1 + 1e-5) and est.upper >= exact * (1 - 1e-5)


@pytest.mark.parametrize("method", ["deim", "leverage", "qrcp"])
def test_cur_zero_float32(method):
    A = np.zeros((12, 9), np.float32)
    U = rnla.cur(A, 2, method=method, rng=0).U
    assert np.all(np.isfinite(U)) and U.dtype == np.float32


def test_rsvd_sparse_sign_on_small_matrix():
    # The default 8 nonzeros per column exceeded the sketch size when min(m, n) < 8.
    A = np.random.default_rng(0).standard_normal((6, 5))
    s = rnla.rsvd(A, 2, sketch="sparse_sign", rng=0).s
    np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False)[:2], rtol=1e-10)


def test_logdet_hutchpp_tiny():
    est = trace.logdet(np.array([[2.0]]), method="hutchpp", rng=0)
    assert est.value == pytest.approx(np.log(2.0)) and est.stderr == 0.0
    est = trace.logdet(np.diag([1.0, 2.0, 3.0]), method="hutchpp", rng=0)
    assert est.value == pytest.approx(np.log(6.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xnystrace_zero_matrix(dtype):
    est = trace.xnystrace(np.zeros((5, 5), dtype), 4, rng=0)
    assert abs(est.value) < 1e-250 and np.isfinite(est.stderr)


def test_xtrace_exact_when_probes_span_the_space():
    est = trace.xtrace(np.array([[2.0]]), 4, rng=0)
    assert est.value == pytest.approx(2.0) and est.stderr == 0.0
    est = trace.xtrace(np.diag([1.0, 2.0, 3.0]), 6, rng=0)
    assert est.value == pytest.approx(6.0) and est.stderr == 0.0


_SIZES = [
    ("jl_dimension", lambda eps, delta: B.jl_dimension(100, eps=eps, delta=delta)),
    ("gaussian", lambda eps, delta: B.gaussian_embedding_size(10, eps=eps, delta=delta)),
    ("rademacher", lambda eps, delta: B.rademacher_embedding_size(10, eps=eps, delta=delta)),
    (
        "orthogonal",
        lambda eps, delta: B.orthogonal_gaussian_embedding_size(10, 2**20, eps=eps, delta=delta),
    ),
    ("srht", lambda eps, delta: B.srht_embedding_size(10, 2**20, eps=eps, delta=delta)),
    ("countsketch", lambda eps, delta: B.countsketch_embedding_size(10, eps=eps, delta=delta)),
    ("sparse_sign", lambda eps, delta: B.sparse_sign_embedding_size(10, eps=eps, delta=delta)),
]


@pytest.mark.parametrize(("name", "size"), _SIZES, ids=[n for n, _ in _SIZES])
def test_embedding_sizes_extreme_parameters(name, size):
    # Tiny eps or delta used to leak ZeroDivisionError / OverflowError / RuntimeWarning.
    for eps, delta in itertools.product([1e-308, 1e-200, 1e-20, 0.5], [5e-324, 1e-308, 0.5]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                out = size(eps, delta)
            except ValueError as exc:
                assert "eps" in str(exc) or "delta" in str(exc)
            else:
                assert out.sketch_size >= 1
    assert size(0.5, 0.1).sketch_size >= 1


def test_tensor_sketch_variance_bound_large_degree():
    x = np.ones(4)
    assert B.tensor_sketch_variance_bound(x, x, 10, 2) == pytest.approx(204.8)
    assert B.tensor_sketch_variance_bound(x, x, 10, 700) == np.inf
    assert B.tensor_sketch_variance_bound(np.zeros(4), x, 10, 3) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda s: B.hmt_frobenius_bound(s, 2, 2),
        lambda s: B.hmt_spectral_bound(s, 2, 2),
        lambda s: B.nystrom_expected_trace_bound(s, 2, 2),
        lambda s: B.tt_svd_bound(s),
        lambda s: B.single_pass_bound(s, 2, 3, 5),
    ],
    ids=["hmt_fro", "hmt_spec", "nystrom", "tt_svd", "single_pass"],
)
def test_bounds_reject_complex(call):
    s = np.array([3 + 1j, 2, 1, 0.5, 0.2, 0.1, 0.05])
    with pytest.raises(TypeError, match="complex"):
        call(s)


def test_datafit_error_bound_tiny_shift():
    for lam, lo, hi in itertools.product([5e-324, 1e-308, 1e-10], [0.0, 1e-308], [1.0, 1e300]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = B.datafit_error_bound(lam, 5, mu_min=lo, mu_max=hi)
        assert 0.0 <= out <= 1.0


def test_tt_norm_float32_huge_entries():
    X = (np.random.default_rng(0).standard_normal((4, 5, 6)) * 1e30).astype(np.float32)
    tt = tensor.tt_svd(X, rank=[1, 4, 6, 1]).tt  # full ranks: exact
    assert tensor.tt_norm(tt) == pytest.approx(np.linalg.norm(X.astype(np.float64)), rel=1e-5)
