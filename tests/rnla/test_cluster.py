"""Tests of rnla.cluster: LSH families, bucket helpers, k-means and its Numba kernels."""

import itertools

import numpy as np
import pytest

from rnla._kernels.cluster import _assign_from_gram, _center_sums
from rnla.cluster import (
    KMeansResult,
    _kmeans_seeds,
    angular_lsh,
    balanced_buckets,
    e2lsh,
    hyperplane_lsh,
    kmeans,
    sort_by_bucket,
)

# --------------------------------------------------------------------------- kernels


def _assign_ref(X, C):
    D = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)
    return np.argmin(D, axis=1), D.min(axis=1)


def _sums_ref(X, labels, w, k):
    sums = np.zeros((k, X.shape[1]))
    counts = np.zeros(k)
    np.add.at(sums, labels, w[:, None] * X)
    np.add.at(counts, labels, w)
    return sums, counts


@pytest.mark.parametrize(("N", "k", "d"), [(1, 1, 1), (7, 3, 2), (50, 5, 4)], ids=str)
def test_assign_kernel_matches_reference(rng, dtype, N, k, d):
    X = rng.standard_normal((N, d)).astype(dtype)
    C = rng.standard_normal((k, d)).astype(dtype)
    labels, dist = np.empty(N, np.int64), np.empty(N)
    Xd, Cd = X.astype(np.float64), C.astype(np.float64)
    _assign_from_gram((Xd * Xd).sum(1), Xd @ Cd.T, (Cd * Cd).sum(1), labels, dist)
    ref_l, ref_d = _assign_ref(Xd, Cd)
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-10, atol=1e-10)


def test_assign_kernel_zeros_and_ties():
    X = np.zeros((4, 3))
    C = np.zeros((2, 3))
    labels, dist = np.empty(4, np.int64), np.empty(4)
    _assign_from_gram(np.zeros(4), X @ C.T, np.zeros(2), labels, dist)
    assert labels.tolist() == [0, 0, 0, 0]  # first centre wins ties
    assert dist.tolist() == [0.0] * 4


@pytest.mark.parametrize(("N", "k"), [(1, 1), (9, 4), (40, 6)], ids=str)
def test_center_sums_kernel_matches_reference(rng, dtype, N, k):
    X = rng.standard_normal((N, 3)).astype(dtype)
    labels = rng.integers(k, size=N)
    w = rng.random(N)
    sums, counts = np.full((k, 3), 7.0), np.full(k, 7.0)  # kernel must zero them
    _center_sums(X, labels, w, sums, counts)
    rs, rc = _sums_ref(X.astype(np.float64), labels, w, k)
    np.testing.assert_allclose(sums, rs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(counts, rc, rtol=1e-12)


# --------------------------------------------------------------------------- hashing


def test_angular_lsh_matches_reference_and_is_deterministic(rng, dtype):
    X = rng.standard_normal((60, 5)).astype(dtype)
    codes = angular_lsh(X, 6, n_rounds=3, rng=1)
    assert codes.shape == (3, 60) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 6
    R = np.random.default_rng(1).standard_normal((3, 5, 3)).astype(dtype)
    for r in range(3):
        U = X @ R[r]
        np.testing.assert_array_equal(codes[r], np.argmax(np.hstack([U, -U]), axis=1))
    np.testing.assert_array_equal(codes, angular_lsh(X, 6, n_rounds=3, rng=1))
    # Invariant to positive scaling (a hash of directions); antipodes never collide.
    np.testing.assert_array_equal(codes, angular_lsh(3 * X, 6, n_rounds=3, rng=1))
    assert not np.any(angular_lsh(-X, 6, n_rounds=3, rng=1) == codes)


def test_angular_lsh_collision_rate_decreases_with_angle(rng):
    # Nearby directions collide far more often than random pairs (LSH property).
    x = rng.standard_normal((400, 16))
    near = x + 0.1 * rng.standard_normal((400, 16))
    far = rng.standard_normal((400, 16))
    c = angular_lsh(np.vstack([x, near, far]), 8, rng=rng)[0]
    p_near = np.mean(c[:400] == c[400:800])
    p_far = np.mean(c[:400] == c[800:])
    assert p_near > 0.7 and p_far < 0.35


def test_hyperplane_lsh_reference_and_gray(rng, dtype):
    X = rng.standard_normal((80, 6)).astype(dtype)
    codes = hyperplane_lsh(X, 4, n_rounds=2, rng=3)
    R = np.random.default_rng(3).standard_normal((2, 6, 4)).astype(dtype)
    for r in range(2):
        bits = (X @ R[r] > 0).astype(np.int64)
        np.testing.assert_array_equal(codes[r], bits @ (1 << np.arange(4)))
    g = hyperplane_lsh(X, 4, n_rounds=2, gray=True, rng=3)
    assert g.min() >= 0 and g.max() < 16
    # Gray rank is a bijection of [0, 16); consecutive ranks differ in one pattern bit.
    gray_of_rank = np.arange(16) ^ (np.arange(16) >> 1)
    np.testing.assert_array_equal(gray_of_rank[g], codes)
    hamming = [bin(a ^ b).count("1") for a, b in itertools.pairwise(gray_of_rank)]
    assert hamming == [1] * 15


def test_e2lsh_reference(rng, dtype):
    X = rng.standard_normal((30, 4)).astype(dtype)
    codes = e2lsh(X, 0.5, n_rounds=2, rng=5)
    g = np.random.default_rng(5)
    W = g.standard_normal((2, 4))
    b = g.uniform(0, 0.5, size=2)
    ref = np.floor((W @ X.astype(np.float64).T + b[:, None]) / 0.5)
    np.testing.assert_array_equal(codes, ref.astype(np.int64))


def test_sort_and_balanced_buckets(rng):
    codes = rng.integers(4, size=(2, 50))
    order = sort_by_bucket(codes)
    for r in range(2):
        np.testing.assert_array_equal(order[r], np.argsort(codes[r], kind="stable"))
    assert sort_by_bucket(codes[0]).shape == (50,)
    vals = rng.standard_normal(53)
    b = balanced_buckets(vals, 5)
    sizes = np.bincount(b, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 53
    # Buckets are runs of the sorted order.
    assert np.all(np.diff(b[np.argsort(vals, kind="stable")]) >= 0)
    assert balanced_buckets([1.0], 1).tolist() == [0]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda X: angular_lsh(X, 3), ValueError, "even"),
        (lambda X: angular_lsh(X, 0), ValueError, "n_buckets"),
        (lambda X: angular_lsh(X, 4, n_rounds=0), ValueError, "n_rounds"),
        (lambda X: angular_lsh(X, 4.0), TypeError, "n_buckets"),
        (lambda X: hyperplane_lsh(X, 63), ValueError, "n_bits"),
        (lambda X: hyperplane_lsh(X, 3, gray=1), TypeError, "gray"),
        (lambda X: e2lsh(X, 0.0), ValueError, "width"),
        (lambda X: e2lsh(X, "1"), TypeError, "width"),
        (lambda X: angular_lsh(X[0], 4), ValueError, "dim"),
        (lambda X: sort_by_bucket(X), TypeError, "integers"),
        (lambda X: balanced_buckets(X[:, 0], 11), ValueError, "n_buckets"),
        (lambda X: kmeans(X, 11), ValueError, "n_clusters=11"),
        (lambda X: kmeans(X, 2, init="foo"), ValueError, "init"),
        (lambda X: kmeans(X, 2, init=np.zeros((3, 2))), ValueError, "shape"),
        (lambda X: kmeans(X, 2, tol=-1.0), ValueError, "tol"),
        (lambda X: kmeans(X, 2, batch_size=0), ValueError, "batch_size"),
        (lambda X: kmeans(X, 2, spherical="yes"), TypeError, "spherical"),
    ],
)
def test_bad_parameters_rejected(call, exc, match):
    X = np.random.default_rng(0).standard_normal((10, 2))
    X0 = X.copy()
    with pytest.raises(exc, match=match):
        call(X)
    np.testing.assert_array_equal(X, X0)


def test_nonfinite_rejected():
    X = np.ones((5, 2))
    X[1, 1] = np.nan
    with pytest.raises(ValueError):
        angular_lsh(X, 2)
    with pytest.raises(ValueError):
        kmeans(X, 2)
    with pytest.raises(TypeError):
        kmeans(np.ones((3, 2), dtype=complex), 2)


# --------------------------------------------------------------------------- k-means


def _blobs(rng, n_per=60, k=4, d=3, spread=0.3):
    centers = 5 * rng.standard_normal((k, d))
    X = np.vstack([c + spread * rng.standard_normal((n_per, d)) for c in centers])
    return X, centers


def _inertia(X, C):
    return float(((X[:, None, :] - C[None]) ** 2).sum(-1).min(1).sum())


def test_kmeans_basic(rng, dtype):
    X, _ = _blobs(rng)
    X = X.astype(dtype)
    res = kmeans(X, 4, rng=0)
    assert isinstance(res, KMeansResult)
    assert res.centers.shape == (4, 3) and res.centers.dtype == dtype
    assert res.labels.shape == (240,) and res.labels.dtype == np.int64
    assert res.converged and 1 <= res.n_iter <= 50
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(res.inertia, _inertia(Xd, res.centers.astype(np.float64)), 1e-4)
    # Labels are nearest centres; centres are the means of their members (fixed point).
    np.testing.assert_array_equal(res.labels, _assign_ref(Xd, res.centers.astype(float))[0])
    for c in range(4):
        np.testing.assert_allclose(
            res.centers[c], Xd[res.labels == c].mean(0), rtol=10 * np.finfo(dtype).eps, atol=1e-5
        )
    again = kmeans(X, 4, rng=0)
    np.testing.assert_array_equal(again.centers, res.centers)
    np.testing.assert_array_equal(again.labels, res.labels)


def test_kmeans_seeds_are_the_seeds_kmeans_draws(rng, dtype):
    # Seeds drawn in order from one generator, then Lloyd from them (as the attention
    # methods do on several threads): the same result as kmeans drawing them itself.
    Xs = [_blobs(rng)[0].astype(dtype) for _ in range(3)]
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    seeds = [_kmeans_seeds(X, 4, g1) for X in Xs]
    for X, init in zip(Xs, seeds, strict=True):
        assert init.dtype == np.float64 and init.shape == (4, 3)
        a = kmeans(X, 4, n_iter=7, rng=g2)
        b = kmeans(X, 4, n_iter=7, init=init)
        np.testing.assert_array_equal(a.centers, b.centers)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.inertia == b.inertia and a.n_iter == b.n_iter
    # Both generators are in the same state afterwards.
    assert g1.random() == g2.random()
    with pytest.raises(ValueError, match="n_clusters"):
        _kmeans_seeds(Xs[0], 10**6, 0)


def test_kmeans_edge_cases(rng):
    X = rng.standard_normal((5, 2))
    one = kmeans(X, 1, rng=0)
    np.testing.assert_allclose(one.centers[0], X.mean(0))
    full = kmeans(X, 5, rng=0)
    assert full.inertia == pytest.approx(0.0, abs=1e-12)
    dup = kmeans(np.ones((6, 2)), 3, rng=0)  # all points equal: no NaN, zero inertia
    assert dup.inertia == 0.0 and np.all(np.isfinite(dup.centers))
    rnd = kmeans(X, 2, init="random", rng=0)
    assert rnd.centers.shape == (2, 2)


def test_kmeans_matches_sklearn_inertia(rng):
    sklearn = pytest.importorskip("sklearn.cluster")
    X, _ = _blobs(rng, n_per=50, k=6, d=5, spread=1.5)
    # Same initial centres -> Lloyd reaches the same fixed point.
    init = X[rng.choice(len(X), 6, replace=False)]
    ours = kmeans(X, 6, init=init, n_iter=300, tol=0.0)
    sk = sklearn.KMeans(6, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(X)
    assert ours.inertia == pytest.approx(sk.inertia_, rel=1e-6)
    # k-means++ restarts: the best of 8 is within a few percent of scikit-learn's best of
    # 8 (a single restart misses the best optimum with probability ~0.3 for both
    # implementations, so all 8 miss with probability < 1e-4).
    o = [kmeans(X, 6, rng=s).inertia for s in range(8)]
    s = [sklearn.KMeans(6, n_init=1, random_state=s).fit(X).inertia_ for s in range(8)]
    assert min(o) <= 1.05 * min(s)


def test_kmeans_minibatch_and_spherical(rng):
    X, _ = _blobs(rng, n_per=100, k=3, d=4, spread=0.3)
    full = kmeans(X, 3, rng=0)
    mb = kmeans(X, 3, batch_size=64, n_iter=100, rng=0)
    assert mb.inertia <= 1.1 * full.inertia
    np.testing.assert_array_equal(
        kmeans(X, 3, batch_size=64, n_iter=100, rng=0).centers, mb.centers
    )
    # Spherical: unit centres, invariant to rescaling the points.
    scale = rng.uniform(0.5, 3.0, size=(len(X), 1))
    sp = kmeans(X, 3, spherical=True, rng=1)
    np.testing.assert_allclose(np.linalg.norm(sp.centers, axis=1), 1.0, rtol=1e-12)
    sp2 = kmeans(X * scale, 3, spherical=True, rng=1)
    np.testing.assert_allclose(sp2.centers, sp.centers, atol=1e-10)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = (U @ sp.centers.T)[np.arange(len(X)), sp.labels]
    np.testing.assert_allclose(sp.inertia, 2 * np.sum(1 - cos), rtol=1e-8)


def test_kmeans_lloyd_inertia_monotone(rng):
    X = rng.standard_normal((150, 3))
    prev = np.inf
    for it in (1, 2, 4, 8):
        cur = kmeans(X, 5, n_iter=it, tol=0.0, rng=7).inertia
        assert cur <= prev * (1 + 1e-12)
        prev = cur
