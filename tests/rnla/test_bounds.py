"""Unit tests of rnla.bounds: closed forms against references, monotonicity, bad input."""

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla import bounds
from rnla.estimate import effective_distortion

EMBEDDING_D = [
    ("gaussian", lambda d, **kw: bounds.gaussian_embedding_size(d, **kw)),
    ("rademacher", lambda d, **kw: bounds.rademacher_embedding_size(d, **kw)),
    ("countsketch", lambda d, **kw: bounds.countsketch_embedding_size(d, **kw)),
    ("sparse_sign", lambda d, **kw: bounds.sparse_sign_embedding_size(d, **kw)),
    ("orthogonal", lambda d, **kw: bounds.orthogonal_gaussian_embedding_size(d, 2**20, **kw)),
    ("srht", lambda d, **kw: bounds.srht_embedding_size(d, 2**20, **kw)),
]
IDS = [name for name, _ in EMBEDDING_D]


def _rel(dtype):
    return 100 * float(np.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------
# distortion_to_effective
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-3, 0.1, 0.5, 0.9, 0.999])
def test_distortion_to_effective_closed_form(eps):
    expected = (1 - math.sqrt(1 - eps**2)) / eps
    assert bounds.distortion_to_effective(eps) == pytest.approx(expected, rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("eps", [0.1, 0.5, 0.9])
def test_distortion_to_effective_is_attained(eps):
    # Singular values at both ends of [sqrt(1-eps), sqrt(1+eps)] attain the bound.
    M = np.diag([math.sqrt(1 + eps), math.sqrt(1 - eps)])
    assert effective_distortion(M) == pytest.approx(bounds.distortion_to_effective(eps), 1e-12)


def test_distortion_to_effective_edges_and_monotone():
    assert bounds.distortion_to_effective(0) == 0.0
    assert bounds.distortion_to_effective(1.0) == 1.0
    assert bounds.distortion_to_effective(3.0) == 1.0
    grid = np.linspace(0, 1, 101)
    vals = [bounds.distortion_to_effective(e) for e in grid]
    assert np.all(np.diff(vals) > 0)
    # ~eps/2 for small eps
    assert bounds.distortion_to_effective(1e-4) == pytest.approx(5e-5, rel=1e-6)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_distortion_to_effective_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        bounds.distortion_to_effective(bad)


def test_distortion_to_effective_rejects_non_numbers():
    with pytest.raises(TypeError, match="eps must be a real number"):
        bounds.distortion_to_effective("0.5")


# ----------------------------------------------------------------------------------------
# jl_dimension
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_points", [2, 10, 1000, 10**6])
@pytest.mark.parametrize("eps", [0.01, 0.1, 0.5, 0.9])
def test_jl_dimension_matches_sklearn(n_points, eps):
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    ref = int(johnson_lindenstrauss_min_dim(n_points, eps=eps))
    res = bounds.jl_dimension(n_points, eps=eps)
    # sklearn truncates 4 ln N / (eps^2/2 - eps^3/3); we round up (the theorem's k).
    assert res.sketch_size in (ref, ref + 1)
    assert res.sketch_size >= 4 * math.log(n_points) / (eps**2 / 2 - eps**3 / 3)
    assert res.delta == pytest.approx(1 - 1 / n_points)
    assert res.kind == "proven" and res.distortion == eps


def test_jl_dimension_with_delta_is_achlioptas():
    N, eps, delta = 1000, 0.3, 1e-3
    beta = math.log(1 / delta) / math.log(N)
    expected = math.ceil((4 + 2 * beta) / (eps**2 / 2 - eps**3 / 3) * math.log(N))
    res = bounds.jl_dimension(N, eps=eps, delta=delta)
    assert res.sketch_size == expected
    assert res.delta == delta


def test_jl_dimension_monotone():
    ks_eps = [bounds.jl_dimension(100, eps=e).sketch_size for e in (0.1, 0.2, 0.4, 0.8)]
    ks_delta = [
        bounds.jl_dimension(100, eps=0.2, delta=d).sketch_size for d in (1e-6, 1e-3, 0.1, 0.5)
    ]
    ks_n = [bounds.jl_dimension(n, eps=0.2).sketch_size for n in (2, 10, 100, 1000)]
    assert ks_eps == sorted(ks_eps, reverse=True)
    assert ks_delta == sorted(ks_delta, reverse=True)
    assert ks_n == sorted(ks_n)


def test_jl_dimension_bad_input():
    with pytest.raises(ValueError, match=r"eps=1.5 must lie in the open interval \(0, 1\)"):
        bounds.jl_dimension(10, eps=1.5)
    with pytest.raises(ValueError, match=r"delta=0.0 must lie in the open interval"):
        bounds.jl_dimension(10, eps=0.5, delta=0.0)
    with pytest.raises(ValueError, match="n_points=1 must be >= 2"):
        bounds.jl_dimension(1)
    with pytest.raises(TypeError, match="n_points must be an integer"):
        bounds.jl_dimension(1e6)


# ----------------------------------------------------------------------------------------
# subspace-embedding sizes
# ----------------------------------------------------------------------------------------


def test_gaussian_embedding_size_closed_form():
    d, eps, delta = 10, 0.5, 0.01
    res = bounds.gaussian_embedding_size(d, eps=eps, delta=delta)
    t = math.sqrt(2 * math.log(2 / delta))
    a = lambda k: (math.sqrt(d) + t) / math.sqrt(k)  # noqa: E731
    # k is the smallest size with (1 + a)^2 <= 1 + eps (and then (1 - a)^2 >= 1 - eps).
    assert (1 + a(res.sketch_size)) ** 2 <= 1 + eps
    assert (1 - a(res.sketch_size)) ** 2 >= 1 - eps
    assert (1 + a(res.sketch_size - 1)) ** 2 > 1 + eps
    assert res == (res.sketch_size, eps, delta, "proven", res.reference)
    assert "5.35" in res.reference


def test_rademacher_embedding_size_is_a_valid_net_bound():
    d, eps, delta = 8, 0.5, 0.1
    res = bounds.rademacher_embedding_size(d, eps=eps, delta=delta)

    def k_net(gamma):
        e = (1 - 2 * gamma) * eps
        h = e**2 / 2 - e**3 / 3
        return 2 * (d * math.log(1 + 2 / gamma) + math.log(2 / delta)) / h

    # Optimised over gamma: never worse than the textbook gamma = 1/4, and some gamma
    # of the grid certifies it.
    assert res.sketch_size <= math.ceil(k_net(0.25))
    grid = np.linspace(0.005, 0.495, 99)
    assert min(k_net(g) for g in grid) <= res.sketch_size < min(k_net(g) for g in grid) + 1
    assert res.kind == "proven"


def test_countsketch_and_sparse_sign_sizes():
    d, eps, delta = 8, 0.5, 0.1
    k = math.ceil((d * d + d) / (eps**2 * delta))
    assert bounds.countsketch_embedding_size(d, eps=eps, delta=delta).sketch_size == k
    assert (
        bounds.sparse_sign_embedding_size(d, eps=eps, delta=delta, nnz_per_col=4).sketch_size == k
    )
    # the floor k >= nnz_per_col keeps the rows of a column distinct
    small = bounds.sparse_sign_embedding_size(1, eps=0.99, delta=0.99, nnz_per_col=8)
    assert small.sketch_size == 8


def test_sparse_sign_practical_size_is_heuristic():
    res = bounds.sparse_sign_practical_size(10)
    assert res.sketch_size == 20 and res.kind == "heuristic"
    assert math.isnan(res.distortion) and math.isnan(res.delta)
    assert bounds.sparse_sign_practical_size(2).sketch_size == 8


def _srht_reference(d, n, eps, delta):
    """Plain re-implementation of the SRHT bound (scan over k, grid of splits)."""
    N = 1 << (n - 1).bit_length()
    best = math.inf
    for th in np.linspace(0.02, 0.98, 49):
        d1, d2 = th * delta, (1 - th) * delta
        M = min(N, (math.sqrt(d) + math.sqrt(8 * math.log(N / d1))) ** 2)
        f_lo = math.exp(-eps) / (1 - eps) ** (1 - eps)
        f_hi = math.exp(eps) / (1 + eps) ** (1 + eps)
        k = 1
        while d * (f_lo ** (k / M) + f_hi ** (k / M)) > d2:
            k += 1
        best = min(best, k)
    return best


@pytest.mark.parametrize(("d", "n", "eps", "delta"), [(4, 2**14, 0.8, 0.2), (8, 4096, 0.7, 0.1)])
def test_srht_embedding_size_against_reference(d, n, eps, delta):
    res = bounds.srht_embedding_size(d, n, eps=eps, delta=delta)
    assert res.sketch_size == _srht_reference(d, n, eps, delta)
    assert res.sketch_size <= n and res.kind == "proven"


def test_orthogonal_gaussian_size_is_at_least_gaussian():
    # The orthogonal bound pays for the chi row norms and the Haar normalisation.
    for d in (1, 4, 16):
        g = bounds.gaussian_embedding_size(d, eps=0.5, delta=0.1).sketch_size
        o = bounds.orthogonal_gaussian_embedding_size(d, 2**22, eps=0.5, delta=0.1).sketch_size
        assert g <= o <= 4 * g


@pytest.mark.parametrize(("name", "size"), EMBEDDING_D, ids=IDS)
def test_embedding_sizes_monotone(name, size):
    k_eps = [size(4, eps=e, delta=0.1).sketch_size for e in (0.3, 0.5, 0.7, 0.9)]
    k_delta = [size(4, eps=0.5, delta=dl).sketch_size for dl in (0.01, 0.05, 0.2, 0.5)]
    k_d = [size(d, eps=0.5, delta=0.1).sketch_size for d in (1, 2, 4, 8)]
    assert k_eps == sorted(k_eps, reverse=True)
    assert k_delta == sorted(k_delta, reverse=True)
    assert k_d == sorted(k_d)
    assert all(k >= d for k, d in zip(k_d, (1, 2, 4, 8), strict=True))


@pytest.mark.parametrize(("name", "size"), EMBEDDING_D, ids=IDS)
@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        (
            {"eps": 0.0, "delta": 0.1},
            ValueError,
            r"eps=0.0 must lie in the open interval \(0, 1\)",
        ),
        ({"eps": 1.0, "delta": 0.1}, ValueError, r"eps=1.0 must lie in the open interval"),
        ({"eps": 0.5, "delta": 1.0}, ValueError, r"delta=1.0 must lie in the open interval"),
        ({"eps": 0.5, "delta": -0.1}, ValueError, r"delta=-0.1 must lie in the open interval"),
        ({"eps": "a", "delta": 0.1}, TypeError, "eps must be a real number"),
    ],
)
def test_embedding_sizes_reject_bad_parameters(name, size, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        size(4, **kwargs)


@pytest.mark.parametrize(("name", "size"), EMBEDDING_D, ids=IDS)
def test_embedding_sizes_reject_bad_d(name, size):
    with pytest.raises(TypeError, match="d must be an integer"):
        size(4.0, eps=0.5, delta=0.1)
    with pytest.raises(ValueError, match="d=0 must be >= 1"):
        size(0, eps=0.5, delta=0.1)


@pytest.mark.parametrize(
    "fn", [bounds.orthogonal_gaussian_embedding_size, bounds.srht_embedding_size]
)
def test_ambient_dimension_checks(fn):
    with pytest.raises(ValueError, match=r"d=9 must satisfy d <= n=8"):
        fn(9, 8, eps=0.5, delta=0.1)
    # proven sizes beyond n are refused, never silently capped
    with pytest.raises(ValueError, match="n=64"):
        fn(8, 64, eps=0.5, delta=0.1)


def test_sparse_sign_size_rejects_bad_nnz():
    with pytest.raises(ValueError, match="nnz_per_col=0 must be >= 1"):
        bounds.sparse_sign_embedding_size(4, eps=0.5, delta=0.1, nnz_per_col=0)


# ----------------------------------------------------------------------------------------
# exact variances
# ----------------------------------------------------------------------------------------


def _cs_variance_reference(x, y, k):
    """The survey's formula with explicit double sums."""
    n = len(x)
    s1 = sum(x[i] ** 2 * y[j] ** 2 for i in range(n) for j in range(n) if i != j)
    s2 = sum(x[i] * y[i] * x[j] * y[j] for i in range(n) for j in range(n) if i != j)
    return (s1 + s2) / k


def test_countsketch_variance_matches_double_sum(rng, dtype):
    x = rng.standard_normal(7).astype(dtype)
    y = rng.standard_normal(7).astype(dtype)
    x0, y0 = x.copy(), y.copy()
    ref = _cs_variance_reference(x.astype(np.float64), y.astype(np.float64), 5)
    assert bounds.countsketch_inner_product_variance(x, y, 5) == pytest.approx(ref, rel=1e-10)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert bounds.countsketch_inner_product_variance(x, y, 5) <= 2 / 5 * (x @ x) * (y @ y) * (
        1 + _rel(dtype)
    )


@pytest.mark.parametrize("k", [1, 2, 3, 8, 9])
def test_tensor_sketch_variance_reduces_to_countsketch_at_degree_one(rng, k):
    x, y = rng.standard_normal(6), rng.standard_normal(6)
    cs = bounds.countsketch_inner_product_variance(x, y, k)
    ts = bounds.tensor_sketch_inner_product_variance(x, y, k, 1)
    assert ts == pytest.approx(cs, rel=1e-12)


def _ts_exhaustive_variance(x, y, k, p):
    """Exact variance by enumerating every hash and sign function (tiny cases)."""
    n = len(x)
    idx = np.array(list(itertools.product(range(n), repeat=p)))  # multi-indices
    xa, ya = np.prod(x[idx], axis=1), np.prod(y[idx], axis=1)
    hashes = np.array(list(itertools.product(range(k), repeat=n)))
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
    vals = []
    for H in itertools.product(hashes, repeat=p):
        bucket = sum(H[t][idx[:, t]] for t in range(p)) % k
        for Sg in itertools.product(signs, repeat=p):
            s = np.prod([Sg[t][idx[:, t]] for t in range(p)], axis=0)
            sx = np.bincount(bucket, weights=s * xa, minlength=k)
            sy = np.bincount(bucket, weights=s * ya, minlength=k)
            vals.append(sx @ sy)
    vals = np.array(vals)
    return vals.mean(), vals.var()


@pytest.mark.parametrize(("n", "k", "p"), [(2, 3, 2), (2, 4, 2), (3, 2, 2), (2, 2, 3)])
def test_tensor_sketch_variance_exact_by_enumeration(rng, n, k, p):
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    mean, var = _ts_exhaustive_variance(x, y, k, p)
    assert mean == pytest.approx((x @ y) ** p, rel=1e-10, abs=1e-12)
    assert bounds.tensor_sketch_inner_product_variance(x, y, k, p) == pytest.approx(
        var, rel=1e-10, abs=1e-12
    )


def test_tensor_sketch_variance_below_survey_bound(rng):
    # Survey item 6 / Pham-Pagh: Var <= (3^p - 1)/k |x|^2p |y|^2p. Checked on random and
    # nearly parallel pairs; the largest ratio seen is reported in the message.
    worst = 0.0
    for _ in range(300):
        n = int(rng.integers(1, 12))
        x = rng.standard_normal(n)
        y = x + 0.05 * rng.standard_normal(n) if rng.random() < 0.5 else rng.standard_normal(n)
        k, p = int(rng.integers(1, 64)), int(rng.integers(1, 6))
        exact = bounds.tensor_sketch_inner_product_variance(x, y, k, p)
        bound = bounds.tensor_sketch_variance_bound(x, y, k, p)
        assert exact <= bound * (1 + 1e-12), (n, k, p, exact / bound)
        worst = max(worst, exact / bound)
    assert worst > 0.3, f"the bound was never approached (max ratio {worst:.3f})"


def test_tensor_sketch_bound_asymptotic_ratio():
    # x = y spread over many coordinates, k large: ratio -> (2^{p+1} - 2)/(3^p - 1).
    x = np.ones(10_000) / 100.0
    for p in (2, 3):
        ratio = bounds.tensor_sketch_inner_product_variance(
            x, x, 10**6, p
        ) / bounds.tensor_sketch_variance_bound(x, x, 10**6, p)
        assert ratio == pytest.approx((2 ** (p + 1) - 2) / (3**p - 1), rel=1e-3)


def test_variance_functions_dtype_consistency(rng):
    x, y = rng.standard_normal(9), rng.standard_normal(9)
    for fn in (
        lambda a, b: bounds.countsketch_inner_product_variance(a, b, 4),
        lambda a, b: bounds.tensor_sketch_inner_product_variance(a, b, 4, 3),
        lambda a, b: bounds.tensor_sketch_variance_bound(a, b, 4, 3),
    ):
        v64 = fn(x, y)
        v32 = fn(x.astype(np.float32), y.astype(np.float32))
        assert isinstance(v32, float)
        assert v32 == pytest.approx(v64, rel=1e-4)


@pytest.mark.parametrize(
    "fn",
    [
        bounds.countsketch_inner_product_variance,
        bounds.tensor_sketch_inner_product_variance,
        bounds.tensor_sketch_variance_bound,
    ],
)
def test_variance_functions_bad_input(fn):
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        fn(np.ones(3), np.ones(2), 4)
    with pytest.raises(ValueError, match="sketch_size=0 must be >= 1"):
        fn(np.ones(3), np.ones(3), 0)
    with pytest.raises(TypeError, match="sketch_size must be an integer"):
        fn(np.ones(3), np.ones(3), 4.0)
    with pytest.raises(ValueError, match="x must be 1-dimensional"):
        fn(np.ones((3, 1)), np.ones(3), 4)
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([1.0, np.nan]), np.ones(2), 4)


def test_tensor_variance_rejects_bad_degree():
    with pytest.raises(ValueError, match="degree=0 must be >= 1"):
        bounds.tensor_sketch_inner_product_variance(np.ones(3), np.ones(3), 4, 0)


# ----------------------------------------------------------------------------------------
# Hutchinson
# ----------------------------------------------------------------------------------------


def _rademacher_variance_by_enumeration(A):
    n = A.shape[0]
    vals = [np.array(z) @ A @ np.array(z) for z in itertools.product((-1.0, 1.0), repeat=n)]
    return np.var(vals)


def test_hutchinson_variance_rademacher_exact(rng, dtype):
    A = rng.standard_normal((5, 5)).astype(dtype)
    A0 = A.copy()
    ref = _rademacher_variance_by_enumeration(A.astype(np.float64))
    got = bounds.hutchinson_variance(A, distribution="rademacher")
    assert got == pytest.approx(ref, rel=_rel(dtype))
    np.testing.assert_array_equal(A, A0)


def test_hutchinson_variance_gaussian_formula(rng, dtype):
    A = rng.standard_normal((6, 6)).astype(dtype)
    As = (A.astype(np.float64) + A.T) / 2
    # Var(z^T A z) = 2 tr(A_s^2) for Gaussian z (Isserlis)
    ref = 2 * np.trace(As @ As)
    assert bounds.hutchinson_variance(A) == pytest.approx(ref, rel=_rel(dtype))


def test_hutchinson_variance_sparse_matches_dense(rng):
    A = sp.random(30, 30, density=0.2, random_state=int(rng.integers(2**31)), format="csr")
    for dist in ("gaussian", "rademacher"):
        assert bounds.hutchinson_variance(A, distribution=dist) == pytest.approx(
            bounds.hutchinson_variance(A.toarray(), distribution=dist), rel=1e-12
        )


def test_hutchinson_variance_bad_input():
    with pytest.raises(ValueError, match=r"A must be square, got shape \(2, 3\)"):
        bounds.hutchinson_variance(np.ones((2, 3)))
    with pytest.raises(ValueError, match="distribution='normal' is not one of"):
        bounds.hutchinson_variance(np.eye(2), distribution="normal")
    with pytest.raises(TypeError, match="dense array"):
        bounds.hutchinson_variance(aslinearoperator(np.eye(2)))
    with pytest.raises(TypeError, match="complex"):
        bounds.hutchinson_variance(np.eye(2) * 1j)
