"""Tests of rnla.tensor: TT-SVD, randomized TT, TT arithmetic and rounding, TT-cross, Tucker."""

import warnings

import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import tensor_train
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

import rnla.tensor as rt
from rnla._validation import AccuracyWarning, ConvergenceWarning
from rnla.tensor import (
    maxvol,
    randomized_tt_svd,
    randomized_tucker,
    tt_add,
    tt_cross,
    tt_inner,
    tt_norm,
    tt_round,
    tt_svd,
)
from tests.conftest import tol


def _tol(dtype, factor=100.0):
    return float(tol(dtype, factor))


def random_tt(shape, rank, rng, dtype=np.float64):
    """Random TT cores with inner ranks ``rank`` (exact TT rank of the result, a.s.)."""
    d = len(shape)
    ranks = [1, *([rank] * (d - 1)), 1]
    return [
        rng.standard_normal((ranks[k], n, ranks[k + 1])).astype(dtype) for k, n in enumerate(shape)
    ]


def smooth_tensor(shape, dtype=np.float64):
    """Samples of 1 / (1 + x_1 + ... + x_d) on a uniform grid of [0, 1]^d."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (1.0 / (1.0 + sum(grids))).astype(dtype)


def noisy_smooth(shape, rng, noise=1e-2, dtype=np.float64):
    S = smooth_tensor(shape)
    G = rng.standard_normal(shape)
    return (S / np.linalg.norm(S) + noise * G / np.linalg.norm(G)).astype(dtype)


def tt_entries(cores, idx):
    """Entries of a TT at the rows of ``idx`` (N, d)."""
    v = np.ones((idx.shape[0], 1))
    for k, G in enumerate(cores):
        v = np.einsum("na,anb->nb", v, np.asarray(G, dtype=np.float64)[:, idx[:, k], :])
    return v[:, 0]


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------
# tt_svd
# ---------------------------------------------------------------------------------------


def test_tt_svd_shapes_dtype_and_interop(rng, dtype):
    X = rng.standard_normal((4, 5, 6, 3)).astype(dtype)
    res = tt_svd(X, rank=3)
    assert isinstance(res.tt, TTTensor)
    assert res.ranks == (1, 3, 3, 3, 1) == res.tt.rank
    assert [c.shape for c in res.tt] == [(1, 4, 3), (3, 5, 3), (3, 6, 3), (3, 3, 1)]
    assert all(c.dtype == dtype for c in res.tt)
    full = tl.tt_to_tensor(res.tt)
    assert full.shape == X.shape and full.dtype == dtype


def test_tt_svd_error_bound_equals_error(rng, dtype):
    X = noisy_smooth((6, 7, 8, 5), rng, dtype=dtype)
    res = tt_svd(X, rank=[3, 4, 3])
    err = np.linalg.norm(X.astype(np.float64) - tl.tt_to_tensor(res.tt))
    # Nested orthogonal projections: the error equals sqrt(sum eps_k^2) up to rounding.
    assert err == pytest.approx(res.error_bound, rel=1e-3, abs=_tol(dtype, 100))


def test_tt_svd_exact_low_rank(rng, dtype):
    cores = random_tt((5, 6, 7, 4), 2, rng)
    X = tl.tt_to_tensor(cores).astype(dtype)
    res = tt_svd(X, rank=2)
    assert rel(tl.tt_to_tensor(res.tt), X.astype(np.float64)) < _tol(dtype, 100)
    res_tol = tt_svd(X, tol=1e3 * np.finfo(dtype).eps)
    assert res_tol.ranks == (1, 2, 2, 2, 1)


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6, 1e-10])
def test_tt_svd_tolerance_mode_meets_accuracy(eps):
    X = smooth_tensor((8, 9, 10, 11, 6)) + 1e-12 * np.arange(8 * 9 * 10 * 11 * 6).reshape(
        8, 9, 10, 11, 6
    ) / (8 * 9 * 10 * 11 * 6)
    res = tt_svd(X, tol=eps)
    err = np.linalg.norm(X - tl.tt_to_tensor(res.tt)) / np.linalg.norm(X)
    assert err <= eps * (1 + 1e-6) + 1e-14
    assert res.error_bound <= eps * np.linalg.norm(X) * (1 + 1e-6)


def test_tt_svd_tolerance_float32():
    X = smooth_tensor((8, 9, 10, 6), np.float32)
    res = tt_svd(X, tol=1e-4)
    assert res.tt[0].dtype == np.float32
    assert rel(tl.tt_to_tensor(res.tt), X.astype(np.float64)) <= 1e-4 + _tol(np.float32, 100)


def test_tt_svd_too_small_rank_misses_tol_and_warns():
    X = smooth_tensor((8, 9, 10, 6))
    with pytest.warns(AccuracyWarning, match="prevents reaching tol"):
        res = tt_svd(X, rank=1, tol=1e-8)
    assert rel(tl.tt_to_tensor(res.tt), X) > 1e-8
    assert res.ranks == (1, 1, 1, 1, 1)


def test_tt_svd_gram_path_agrees_with_gesdd(rng, monkeypatch):
    X = noisy_smooth((6, 8, 10, 12, 5), rng, noise=1e-3)
    fast = tt_svd(X, rank=4)
    # No Gram path: TSQR + small SVD on wide unfoldings, gesdd on the others.
    monkeypatch.setattr(rt, "_GRAM_MIN_SIZE", 1 << 62)
    slow = tt_svd(X, rank=4)
    assert fast.ranks == slow.ranks
    assert fast.error_bound == pytest.approx(slow.error_bound, rel=1e-6)
    assert rel(tl.tt_to_tensor(fast.tt), tl.tt_to_tensor(slow.tt)) < 1e-8


@pytest.mark.parametrize("leaf", [1 << 17, 64])
def test_tsqr_r_matches_numpy_qr(rng, dtype, leaf, monkeypatch):
    """TSQR's R equals Householder's up to row signs; a small leaf forces a 3-level tree."""
    monkeypatch.setattr(rt, "_TSQR_LEAF", leaf)
    T = (rng.standard_normal((2000, 7)) * np.logspace(0, -6, 7)).astype(dtype)
    T_before = T.copy()
    R = rt._tsqr_r(T)
    R_ref = np.linalg.qr(T.astype(np.float64), mode="r")
    assert R.shape == (7, 7) and R.dtype == dtype
    assert np.array_equal(T, T_before)
    assert np.all(np.tril(R, -1) == 0)
    np.testing.assert_allclose(
        np.abs(R), np.abs(R_ref), rtol=0, atol=tol(dtype, 1e3) * abs(R_ref[0, 0])
    )
    # Fewer rows than columns in the last leaf, and a matrix shorter than one leaf.
    short = T[:5]  # fewer rows than columns: R is padded with zero rows
    np.testing.assert_allclose(
        np.abs(rt._tsqr_r(short)),
        np.abs(_padded_r(short)),
        rtol=0,
        atol=tol(dtype, 1e3) * abs(R_ref[0, 0]),
    )


def _padded_r(T):
    R = np.linalg.qr(T.astype(np.float64), mode="r")
    return np.vstack([R, np.zeros((T.shape[1] - R.shape[0], T.shape[1]))])


def _numpy_tt_svd_error(X, rank):
    """Plain NumPy TT-SVD (gesdd per unfolding): relative Frobenius error."""
    C, r_prev, cores = X, 1, []
    for k in range(X.ndim - 1):
        C = C.reshape(r_prev * X.shape[k], -1)
        U, s, Vt = np.linalg.svd(C, full_matrices=False)
        r = min(rank, s.size)
        cores.append(U[:, :r].reshape(r_prev, X.shape[k], r))
        C, r_prev = s[:r, None] * Vt[:r], r
    cores.append(C.reshape(r_prev, X.shape[-1], 1))
    return np.linalg.norm(tl.tt_to_tensor(cores) - X) / np.linalg.norm(X)


def test_tt_svd_smooth_tensor_tsqr_path_matches_svd_error():
    """A smooth tensor: tails below the Gram rounding level, so every wide unfolding
    takes the TSQR path; the error equals the gesdd TT-SVD's (the Gram path would not)."""
    x = np.linspace(0.0, 1.0, 9)
    grids = np.meshgrid(*([x] * 6), indexing="ij")
    X = 1.0 / (1.0 + sum(g**2 for g in grids))
    res = tt_svd(X, rank=4)
    err = rel(tl.tt_to_tensor(res.tt), X)
    ref = _numpy_tt_svd_error(X, 4)
    assert 1e-12 < ref < 1e-5  # the regime where the Gram tails are rejected
    assert err == pytest.approx(ref, rel=1e-3)
    assert res.error_bound == pytest.approx(err * np.linalg.norm(X), rel=1e-3)


def test_tt_svd_agrees_with_tensorly(rng):
    X = noisy_smooth((5, 6, 7, 8), rng)
    ours = tt_svd(X, rank=3)
    theirs = tensor_train(X, 3)
    err_ours = np.linalg.norm(X - tl.tt_to_tensor(ours.tt))
    err_theirs = np.linalg.norm(X - tl.tt_to_tensor(theirs))
    assert ours.ranks == tuple(theirs.rank)
    assert err_ours == pytest.approx(err_theirs, rel=1e-6)
    # tensorly's cores are accepted by our TT arithmetic (and give the same tensor).
    assert tt_norm(tt_add(ours.tt, theirs, beta=-1.0)) < 1e-6 * np.linalg.norm(X)


def test_tt_svd_order_two_is_truncated_svd(rng):
    A = rng.standard_normal((20, 15))
    res = tt_svd(A, rank=4)
    s = np.linalg.svd(A, compute_uv=False)
    assert res.error_bound == pytest.approx(np.sqrt(np.sum(s[4:] ** 2)), rel=1e-10)


def test_tt_svd_int_input_promotes_and_does_not_mutate(rng):
    X = rng.integers(-5, 5, size=(3, 4, 5))
    X0 = X.copy()
    res = tt_svd(X, rank=2)
    assert res.tt[0].dtype == np.float64
    np.testing.assert_array_equal(X, X0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": [2, 2]}, ValueError, r"d - 1 = 3 inner TT ranks or the d \+ 1 = 5"),
        ({"rank": [2, 2, 2, 2]}, ValueError, r"d - 1 = 3 inner TT ranks or the d \+ 1 = 5"),
        ({"rank": [2, 30, 2]}, ValueError, r"rank\[1\]=30 must satisfy 1 <= rank\[1\] <= 20"),
        ({"rank": [0, 2, 2]}, ValueError, r"rank\[0\]=0"),
        ({"rank": 0}, ValueError, "rank=0 must be >= 1"),
        ({"rank": 2.0}, TypeError, "rank must be an int"),
        ({"rank": "2"}, TypeError, "rank must be an int"),
        ({}, ValueError, "give rank=, tol= or both"),
        ({"tol": -1e-3}, ValueError, "tol=-0.001 must be"),
        ({"tol": "big"}, TypeError, "tol must be a real number"),
    ],
    ids=[
        "short",
        "long",
        "too-big",
        "zero-in-list",
        "zero",
        "float",
        "str",
        "none",
        "neg-tol",
        "str-tol",
    ],
)
def test_tt_svd_bad_arguments(kwargs, exc, match):
    X = np.ones((4, 5, 4, 5))
    with pytest.raises(exc, match=match):
        tt_svd(X, **kwargs)


@pytest.mark.parametrize(
    "fn", [tt_svd, randomized_tt_svd, randomized_tucker], ids=lambda f: f.__name__
)
def test_bad_tensors(fn):
    kw = {"rank": 2} if fn is tt_svd else {}
    args = () if fn is tt_svd else (2,)
    with pytest.raises(ValueError, match="order d >= 2"):
        fn(np.ones(5), *args, **kw)
    X = np.ones((3, 4, 5))
    X[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fn(X, *args, **kw)
    with pytest.raises(TypeError, match="complex"):
        fn(np.ones((3, 4, 5), dtype=complex), *args, **kw)


# ---------------------------------------------------------------------------------------
# randomized_tt_svd
# ---------------------------------------------------------------------------------------


def test_randomized_tt_svd_shapes_dtype(rng, dtype):
    X = noisy_smooth((10, 12, 14, 8), rng, dtype=dtype)
    res = randomized_tt_svd(X, 3, rng=rng)
    assert isinstance(res.tt, TTTensor)
    assert res.ranks == (1, 3, 3, 3, 1)
    assert all(c.dtype == dtype for c in res.tt)


def test_randomized_tt_svd_error_is_exact(rng, dtype):
    X = noisy_smooth((12, 14, 16, 6), rng, noise=0.05, dtype=dtype)
    res = randomized_tt_svd(X, [3, 5, 4], oversample=5, n_iter=0, rng=rng)
    err = np.linalg.norm(X.astype(np.float64) - tl.tt_to_tensor(res.tt))
    # Exact up to the sqrt(u) floor of the difference of squares ||C||^2 - ||B||^2.
    floor = 10 * np.sqrt(np.finfo(dtype).eps) * np.linalg.norm(X)
    assert abs(err - res.error_bound) <= 1e-3 * err + floor


def test_randomized_tt_svd_reproducible_and_seeded(rng):
    X = noisy_smooth((10, 12, 14, 8), rng)
    a = randomized_tt_svd(X, 3, rng=7)
    b = randomized_tt_svd(X, 3, rng=np.random.default_rng(7))
    for ca, cb in zip(a.tt, b.tt, strict=True):
        np.testing.assert_array_equal(ca, cb)


@pytest.mark.parametrize("sketch", ["gaussian", "rademacher", "sparse_sign", "srht"])
def test_randomized_tt_svd_exact_low_rank_any_sketch(rng, sketch):
    cores = random_tt((12, 10, 16, 9), 3, rng)
    X = tl.tt_to_tensor(cores)
    res = randomized_tt_svd(X, 3, oversample=5, sketch=sketch, rng=rng)
    assert rel(tl.tt_to_tensor(res.tt), X) < 1e-10


def test_randomized_tt_svd_close_to_tt_svd(rng):
    X = noisy_smooth((10, 12, 14, 8), rng, noise=1e-3)
    det = tt_svd(X, rank=4).error_bound
    rand = randomized_tt_svd(X, 4, oversample=10, n_iter=1, rng=rng).error_bound
    # Not ordered in general (the steps see different projected unfoldings), but close.
    assert rand <= 1.5 * det
    assert det <= 1.5 * rand


def test_randomized_tt_svd_bad_arguments():
    X = np.ones((4, 5, 6))
    with pytest.raises(ValueError, match=r"d - 1 = 2 inner TT ranks or the d \+ 1 = 4"):
        randomized_tt_svd(X, [2])
    with pytest.raises(ValueError, match="oversample=-1 must be >= 0"):
        randomized_tt_svd(X, 2, oversample=-1)
    with pytest.raises(TypeError, match="n_iter must be an integer"):
        randomized_tt_svd(X, 2, n_iter=0.5)
    with pytest.raises(ValueError, match="sketch='nope' is not one of"):
        randomized_tt_svd(np.ones((30, 30, 30)), 2, oversample=2, sketch="nope")


# ---------------------------------------------------------------------------------------
# TT arithmetic and rounding
# ---------------------------------------------------------------------------------------


def test_tt_arithmetic_matches_dense(rng, dtype):
    a = random_tt((3, 4, 5, 2), 2, rng, dtype)
    b = random_tt((3, 4, 5, 2), 3, rng, dtype)
    A, B = tl.tt_to_tensor(a).astype(np.float64), tl.tt_to_tensor(b).astype(np.float64)
    s = tt_add(a, b, alpha=2.0, beta=-0.5)
    assert s.rank == (1, 5, 5, 5, 1)
    assert s[0].dtype == dtype
    assert rel(tl.tt_to_tensor(s), 2 * A - 0.5 * B) < _tol(dtype, 100)
    assert tt_inner(a, b) == pytest.approx(np.sum(A * B), rel=_tol(dtype, 1000))
    assert tt_norm(a) == pytest.approx(np.linalg.norm(A), rel=_tol(dtype, 100))


def test_tt_norm_resolves_small_differences(rng):
    a = random_tt((4, 5, 6), 3, rng)
    b = [c.copy() for c in a]
    b[1] = b[1] * (1 + 1e-10)
    diff = tt_norm(tt_add(a, b, beta=-1.0))
    truth = np.linalg.norm(tl.tt_to_tensor(a) - tl.tt_to_tensor(b))
    assert diff == pytest.approx(truth, rel=1e-4)


def test_tt_arithmetic_bad_input(rng):
    a = random_tt((3, 4, 5), 2, rng)
    with pytest.raises(ValueError, match="TT shapes differ"):
        tt_inner(a, random_tt((3, 4, 6), 2, rng))
    with pytest.raises(ValueError, match="rank mismatch"):
        tt_norm([a[0], a[1][:1], a[2]])
    with pytest.raises(ValueError, match="boundary ranks must be 1"):
        tt_norm([np.ones((2, 3, 2)), np.ones((2, 3, 1))])
    with pytest.raises(TypeError, match="TTTensor or a sequence"):
        tt_norm(np.ones((3, 4)))
    with pytest.raises(TypeError, match="complex"):
        tt_norm([c.astype(complex) for c in a])
    with pytest.raises(TypeError, match="beta must be a finite real"):
        tt_add(a, a, beta=np.nan)


def test_tt_round_recovers_rank_of_sum(rng, dtype):
    t = random_tt((4, 5, 6, 3), 2, rng, dtype)
    res = tt_round(tt_add(t, t), tol=_tol(dtype, 100))
    assert res.ranks == (1, 2, 2, 2, 1)
    assert rel(tl.tt_to_tensor(res.tt), 2 * tl.tt_to_tensor(t).astype(np.float64)) < tol(
        dtype, 1000
    )


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-4])
def test_tt_round_guarantee(rng, eps):
    X = noisy_smooth((6, 7, 8, 5), rng, noise=1e-2)
    T = tt_svd(X, rank=[6, 20, 5]).tt
    res = tt_round(T, tol=eps)
    full = tl.tt_to_tensor(T)
    err = np.linalg.norm(full - tl.tt_to_tensor(res.tt))
    assert err <= eps * np.linalg.norm(full) * (1 + 1e-8)
    assert err == pytest.approx(res.error_bound, rel=1e-6, abs=1e-12)
    assert all(r1 <= r0 for r1, r0 in zip(res.ranks, T.rank, strict=True))


def test_tt_round_rank_mode_and_warning(rng):
    X = noisy_smooth((6, 7, 8, 5), rng, noise=1e-2)
    T = tt_svd(X, rank=10).tt
    assert tt_round(T, rank=2).ranks == (1, 2, 2, 2, 1)
    with pytest.warns(AccuracyWarning, match="prevents reaching tol"):
        tt_round(T, rank=1, tol=1e-6)
    with pytest.raises(ValueError, match="give rank=, tol= or both"):
        tt_round(T)


# ---------------------------------------------------------------------------------------
# maxvol
# ---------------------------------------------------------------------------------------


def maxvol_reference(A, tol_=1.05):
    """Plain greedy reference: swap rows while some |B_ij| > tol (recomputing B)."""
    r = A.shape[1]
    best = None
    piv = list(range(r))
    for _ in range(1000):
        B = A @ np.linalg.inv(A[piv])
        i, j = np.unravel_index(np.argmax(np.abs(B)), B.shape)
        best = B
        if abs(B[i, j]) <= tol_:
            break
        piv[j] = i
    return best


@pytest.mark.parametrize(("n", "r"), [(1, 1), (5, 5), (30, 4), (200, 12)])
def test_maxvol_properties(rng, dtype, n, r):
    A = rng.standard_normal((n, r)).astype(dtype)
    res = maxvol(A)
    assert res.indices.shape == (r,) and len(set(res.indices.tolist())) == r
    B = res.coefficients
    assert np.max(np.abs(B)) <= 1.05 + _tol(dtype, 100)
    np.testing.assert_allclose(B[res.indices], np.eye(r), atol=_tol(dtype, 100))
    ref = np.asarray(A, np.float64) @ np.linalg.inv(np.asarray(A[res.indices], np.float64))
    cond = np.linalg.cond(np.asarray(A[res.indices], np.float64))
    np.testing.assert_allclose(B, ref, atol=_tol(dtype, 100) * cond)
    # Dominance reached by the plain reference loop too: |B| <= tol everywhere.
    assert np.max(np.abs(maxvol_reference(np.asarray(A, np.float64)))) <= 1.05 + 1e-12


def test_maxvol_bad_input():
    with pytest.raises(ValueError, match="tall"):
        maxvol(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"tol=0\.5 must be"):
        maxvol(np.eye(3), tol=0.5)
    with pytest.raises(ValueError, match="full column rank"):
        maxvol(np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------
# tt_cross
# ---------------------------------------------------------------------------------------


def test_tt_cross_exact_on_low_tt_rank(rng):
    shape = (6, 7, 5, 8, 6)
    cores = random_tt(shape, 3, rng)

    def f(idx):
        return tt_entries(cores, idx)

    res = tt_cross(f, shape, 3, tol=1e-10, rng=rng)
    full = tl.tt_to_tensor(cores)
    assert res.converged
    assert rel(tl.tt_to_tensor(res.tt), full) < 1e-9
    assert res.n_evals < full.size  # never needs the whole tensor
    assert max(res.ranks) == 3


def test_tt_cross_smooth_function_high_accuracy(rng):
    shape = (10,) * 6
    x = np.linspace(0, 1, 10)

    def f(idx):
        return 1.0 / np.sqrt(1.0 + np.sum(x[idx] ** 2, axis=1))

    res = tt_cross(f, shape, 20, tol=1e-9, rng=rng)
    full = f(np.indices(shape).reshape(6, -1).T).reshape(shape)
    assert res.converged and res.tt[0].dtype == np.float64
    assert rel(tl.tt_to_tensor(res.tt), full) < 1e-8
    assert res.n_evals < 0.2 * full.size


def test_tt_cross_float32_function():
    def f(idx):
        return (1.0 / (1.0 + idx.sum(axis=1))).astype(np.float32)

    res = tt_cross(f, (5, 6, 7), 5, tol=1e-5, rng=0)
    assert res.tt[0].dtype == np.float32


def test_tt_cross_reproducible():
    def f(idx):
        return np.cos(idx.sum(axis=1) / 7.0)

    a = tt_cross(f, (8, 8, 8, 8), 4, rng=3)
    b = tt_cross(f, (8, 8, 8, 8), 4, rng=3)
    assert a.n_evals == b.n_evals
    for ca, cb in zip(a.tt, b.tt, strict=True):
        np.testing.assert_array_equal(ca, cb)


def test_tt_cross_warns_without_convergence():
    x = np.linspace(0, 1, 10)

    def f(idx):
        return np.exp(-np.sqrt(np.sum(x[idx] ** 2, axis=1)))

    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = tt_cross(f, (10,) * 5, 2, tol=1e-12, n_sweeps=1, rng=0)
    assert not res.converged and res.n_sweeps == 2


def test_tt_cross_bad_input():
    def f(idx):
        return np.ones(idx.shape[0])

    with pytest.raises(TypeError, match="f must be callable"):
        tt_cross(3, (3, 3), 2)
    with pytest.raises(ValueError, match="d >= 2"):
        tt_cross(f, (3,), 2)
    with pytest.raises(TypeError, match="shape must be a sequence"):
        tt_cross(f, 3, 2)
    with pytest.raises(ValueError, match=r"d - 1 = 2 inner TT ranks or the d \+ 1 = 4"):
        tt_cross(f, (3, 4, 5), [2])
    with pytest.raises(ValueError, match="expected shape"):
        tt_cross(lambda idx: np.ones((idx.shape[0], 2)), (3, 4), 2)
    with pytest.raises(ValueError, match="non-finite value at multi-index"):
        tt_cross(lambda idx: np.full(idx.shape[0], np.nan), (3, 4), 2)
    with pytest.raises(TypeError, match="complex"):
        tt_cross(lambda idx: np.ones(idx.shape[0], dtype=complex), (3, 4), 2)


def test_tt_cross_zero_function():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = tt_cross(lambda idx: np.zeros(idx.shape[0]), (4, 5, 6), 3, rng=0)
    assert np.all(tl.tt_to_tensor(res.tt) == 0)


# ---------------------------------------------------------------------------------------
# randomized_tucker
# ---------------------------------------------------------------------------------------


def test_randomized_tucker_shapes_dtype_interop(rng, dtype):
    X = noisy_smooth((20, 25, 30), rng, dtype=dtype)
    res = randomized_tucker(X, [3, 4, 5], rng=rng)
    assert isinstance(res.tucker, TuckerTensor)
    assert res.ranks == (3, 4, 5) and res.tucker.core.shape == (3, 4, 5)
    assert all(U.dtype == dtype for U in res.tucker.factors) and res.tucker.core.dtype == dtype
    for U in res.tucker.factors:
        np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=_tol(dtype, 100))
    err = np.linalg.norm(X.astype(np.float64) - tl.tucker_to_tensor(res.tucker))
    floor = 10 * np.sqrt(np.finfo(dtype).eps) * np.linalg.norm(X)
    assert abs(err - res.error_bound) <= 1e-3 * err + floor


def test_randomized_tucker_exact_low_multilinear_rank(rng):
    core = rng.standard_normal((2, 3, 4))
    factors = [rng.standard_normal((n, r)) for n, r in zip((20, 25, 30), (2, 3, 4), strict=True)]
    X = tl.tucker_to_tensor((core, factors))
    res = randomized_tucker(X, [2, 3, 4], oversample=3, rng=rng)
    assert rel(tl.tucker_to_tensor(res.tucker), X) < 1e-10


def test_randomized_tucker_bad_rank():
    X = np.ones((4, 5, 6))
    with pytest.raises(ValueError, match="d = 3 multilinear ranks"):
        randomized_tucker(X, [2, 2])
    with pytest.raises(ValueError, match=r"rank\[0\]=5 must satisfy 1 <= rank\[0\] <= 4"):
        randomized_tucker(X, [5, 2, 2])
    with pytest.raises(TypeError, match="rank must be an int"):
        randomized_tucker(X, "2")


def test_tt_round_does_not_mutate_input(rng):
    t = random_tt((4, 5, 6), 3, rng)
    before = [c.copy() for c in t]
    tt_round(t, rank=2)
    tt_norm(t)
    for c, c0 in zip(t, before, strict=True):
        np.testing.assert_array_equal(c, c0)


# ---------------------------------------------------------------------------------------
# TT rank forms: int, d - 1 inner ranks, tensorly's d + 1 ranks; results passed back
# ---------------------------------------------------------------------------------------


def _low_tt_rank_tensor(rng, dtype, shape=(4, 5, 6, 3), ranks=(1, 2, 3, 2, 1)):
    cores = [rng.standard_normal((ranks[k], n, ranks[k + 1])) for k, n in enumerate(shape)]
    return tl.tt_to_tensor(TTTensor(cores)).astype(dtype)


RANK_FORMS = {
    "int": 3,
    "inner": [2, 3, 2],
    "tensorly": [1, 2, 3, 2, 1],
    "tuple": (1, 2, 3, 2, 1),
    "array": np.array([1, 2, 3, 2, 1]),
}


@pytest.mark.parametrize("form", RANK_FORMS, ids=str)
def test_rank_forms_agree(rng, dtype, form):
    X = _low_tt_rank_tensor(rng, dtype)
    rank = RANK_FORMS[form]
    res = tt_svd(X, rank=rank)
    expected = (1, 3, 3, 3, 1) if form == "int" else (1, 2, 3, 2, 1)
    assert res.ranks == expected and res.tt[0].dtype == dtype
    X_hat = tl.tt_to_tensor(res.tt)
    assert np.linalg.norm(X_hat - X) <= _tol(dtype, 1000) * np.linalg.norm(X)
    assert tt_svd(X, rank).ranks == res.ranks  # positional, like randomized_tt_svd
    r = randomized_tt_svd(X, rank, rng=0)
    assert r.ranks == expected and r.tt[0].dtype == dtype
    assert randomized_tt_svd(X, rank=rank, rng=0).ranks == expected
    rounded = tt_round(res.tt, rank=rank)
    assert rounded.ranks == expected
    assert tt_round(res.tt, rank).ranks == expected


def test_result_ranks_accepted_back(rng):
    X = _low_tt_rank_tensor(rng, np.float64)
    first = tt_svd(X, tol=1e-10)
    assert first.ranks == (1, 2, 3, 2, 1)
    # A result's ranks and a TTTensor's tensorly rank go straight back in as rank=.
    for rank in (first.ranks, first.tt.rank, list(first.ranks)):
        assert tt_svd(X, rank=rank).ranks == first.ranks
        assert randomized_tt_svd(X, rank, rng=1).ranks == first.ranks
        assert tt_round(first.tt, rank=rank).ranks == first.ranks
    f = _entry_function(X)
    cross = tt_cross(f, X.shape, first.ranks, tol=1e-10, rng=0)
    assert max(cross.ranks) <= 3 and cross.ranks[0] == cross.ranks[-1] == 1
    assert tt_cross(f, X.shape, rank=cross.ranks, tol=1e-10, rng=0).ranks == cross.ranks


def _entry_function(X):
    return lambda idx: X[tuple(idx.T)]


@pytest.mark.parametrize(
    ("rank", "match"),
    [
        ([2, 2, 3, 2, 1], r"must start and end with 1, got \(2, 2, 3, 2, 1\)"),
        ((1, 2, 3, 2, 3), r"must start and end with 1"),
        ([2, 3], r"d - 1 = 3 inner TT ranks or the d \+ 1 = 5 TT ranks .* got 2 ranks"),
        ([1, 2, 3, 2], r"got 4 ranks"),
        ([1, 2, 3, 2, 1, 1], r"got 6 ranks"),
    ],
    ids=["start-not-1", "end-not-1", "too-short", "d-ranks", "too-long"],
)
def test_bad_rank_forms_rejected(rng, rank, match):
    X = _low_tt_rank_tensor(rng, np.float64)
    X0 = X.copy()
    f = _entry_function(X)
    for call in (
        lambda: tt_svd(X, rank=rank),
        lambda: randomized_tt_svd(X, rank, rng=0),
        lambda: tt_round(tt_svd(X, rank=2).tt, rank=rank),
        lambda: tt_cross(f, X.shape, rank, rng=0),
    ):
        with pytest.raises(ValueError, match=match):
            call()
    np.testing.assert_array_equal(X, X0)


def test_tensorly_rank_form_inner_values_still_checked(rng):
    X = _low_tt_rank_tensor(rng, np.float64)
    with pytest.raises(ValueError, match=r"rank\[1\]=99 must satisfy"):
        tt_svd(X, rank=[1, 2, 99, 2, 1])
    with pytest.raises(TypeError, match=r"rank must be an int, the d - 1 = 3 inner"):
        tt_svd(X, rank="1,2,3,2,1")
