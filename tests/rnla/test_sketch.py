"""Tests of rnla.sketch: kernels vs plain-NumPy references, adjoints, dtypes, bad input."""

import numba
import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from rnla import sketch as sk
from rnla._kernels import sketch as K
from rnla.operators import dot_test
from tests.conftest import tol

# --------------------------------------------------------------------------------------
# plain-NumPy references (independent of the operators' own todense)
# --------------------------------------------------------------------------------------


def ref_hash_matrix(k, idx, val):
    """Dense S with S[idx[j, t], j] += val[j, t], built by explicit loops."""
    n, z = idx.shape
    M = np.zeros((k, n))
    for j in range(n):
        for t in range(z):
            M[idx[j, t], j] += val[j, t]
    return M


def ref_hadamard(N):
    """Unnormalised Walsh–Hadamard matrix by Sylvester's construction (SciPy)."""
    return sla.hadamard(N).astype(float)


def ref_srht_matrix(S):
    k, n = S.shape
    return ref_hadamard(S.N)[S.rows][:, :n] * S.signs[None, :] / np.sqrt(k)


def ref_tensor_sketch_matrix(ts):
    """CountSketch of R^(n^p) with H = sum_t h_t mod k and sign prod_t s_t."""
    k, n, p = ts.shape[0], ts.n_features, ts.degree
    M = np.zeros((k, n**p))
    for flat, multi in enumerate(np.ndindex(*(n,) * p)):
        h = sum(ts.hashes[t][multi[t]] for t in range(p)) % k
        s = np.prod([-1.0 if ts.negative[t][multi[t]] else 1.0 for t in range(p)])
        M[h, flat] += s
    return M


def ref_floyd(U, k):
    n, z = U.shape
    out = np.empty((n, z), dtype=np.int64)
    for j in range(n):
        chosen = []
        for m, s in enumerate(range(k - z, k)):
            t = min(int(U[j, m] * (s + 1)), s)
            chosen.append(s if t in chosen else t)
        out[j] = chosen
    return out


def reference_matrix(S):
    if isinstance(S, sk.SRHT):
        return ref_srht_matrix(S)
    if isinstance(S, sk.TensorSketch):
        return ref_tensor_sketch_matrix(S)
    if isinstance(S, sk.HashSketch):
        return ref_hash_matrix(S.shape[0], S.idx, S.val)
    return S.todense()  # dense sketches store their matrix: it is its own reference


BUILDERS = {
    "gaussian": lambda k, n, rng: sk.gaussian(k, n, rng=rng),
    "rademacher": lambda k, n, rng: sk.rademacher(k, n, rng=rng),
    "orthogonal": lambda k, n, rng: sk.orthogonal_gaussian(k, n, rng=rng),
    "srht": lambda k, n, rng: sk.srht(k, n, rng=rng),
    "countsketch": lambda k, n, rng: sk.countsketch(k, n, rng=rng),
    "sparse_sign": lambda k, n, rng: sk.sparse_sign(k, n, nnz_per_col=min(k, 4), rng=rng),
    "tensor2": lambda k, n, rng: sk.tensor_sketch(k, round(np.sqrt(n)), 2, rng=rng),
}


@pytest.fixture(params=list(BUILDERS), ids=list(BUILDERS))
def builder(request):
    return request.param, BUILDERS[request.param]


# --------------------------------------------------------------------------------------
# kernels against references
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (7, 2), (30, 17), (64, 64), (49, 130)])
def test_every_sketch_matches_reference(builder, shape, seed, dtype):
    name, build = builder
    k, n = shape
    if name == "srht" and k > n:
        k = n
    if name == "tensor2":
        n = round(np.sqrt(n)) ** 2
    rng = np.random.default_rng(seed)
    S = build(k, n, rng)
    n = S.shape[1]
    M = reference_matrix(S)
    A = rng.standard_normal((n, 5)).astype(dtype)
    Y = rng.standard_normal((k, 3)).astype(dtype)
    rtol = 50 * np.finfo(dtype).eps * max(1.0, np.log2(n))
    scale = np.abs(M).sum(axis=1).max() * np.abs(A).max() + 1e-30
    np.testing.assert_allclose(S @ A, M @ A, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(S.T @ Y, M.T @ Y, rtol=0, atol=rtol * np.abs(M).sum() * 3)
    np.testing.assert_allclose(S.todense(), M, rtol=0, atol=1e-14)
    assert (S @ A).dtype == dtype
    assert (S.T @ Y).dtype == dtype


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "F", "vector"])
def test_input_layouts_agree(builder, fmt, rng):
    _, build = builder
    S = build(13, 64, rng)
    n = S.shape[1]
    A = sp.random(n, 9, density=0.3, random_state=np.random.default_rng(1)).toarray()
    M = reference_matrix(S)
    if fmt == "F":
        got, want = S @ np.asfortranarray(A), M @ A
    elif fmt == "vector":
        got, want = S @ A[:, 0], M @ A[:, 0]
    else:
        got, want = S @ sp.csr_matrix(A).asformat(fmt), M @ A
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_sparse_arrays_and_float32_sparse(rng):
    S = sk.sparse_sign(16, 200, rng=rng)
    A = sp.random_array((200, 7), density=0.1, random_state=np.random.default_rng(2))
    got = S @ A.astype(np.float32).tocsr()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, S.todense() @ A.toarray(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024])
def test_fwht_kernel_matches_sylvester(length, rng, dtype):
    X = rng.standard_normal((length, 5)).astype(dtype)
    Z = X.copy()
    K._fwht_rows(Z, 0, 1, length, 0, 5)
    np.testing.assert_allclose(
        Z,
        ref_hadamard(length) @ X,
        rtol=1e-5 if dtype == np.float32 else 1e-12,
        atol=1e-4 if dtype == np.float32 else 1e-12,
    )


def test_fwht_kernel_strided_and_column_window(rng):
    # rows 1, 4, 7, 10 (stride 3), columns [1, 3): everything else untouched
    X = rng.standard_normal((12, 4))
    Z = X.copy()
    K._fwht_rows(Z, 1, 3, 4, 1, 3)
    want = X.copy()
    want[1::3, 1:3] = ref_hadamard(4) @ X[1::3, 1:3]
    np.testing.assert_allclose(Z, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("n", "k", "p"), [(4096, 100, 256), (4096, 2000, 256), (65536, 64, 40)])
def test_srht_both_stage2_paths_and_panels(n, k, p, rng):
    """Direct stage 2, full second-level transform, and several column panels."""
    S = sk.srht(k, n, rng=rng)
    A = rng.standard_normal((n, p))
    w = S._panel_width(p, 8)
    _, direct = S._plan(w, 8)
    # the sampled rows of H, formed only where needed (H_N itself may be large)
    bits = np.bitwise_and.outer(S.rows, np.arange(n))
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    M = (1.0 - 2.0 * parity) * S.signs / np.sqrt(k)
    np.testing.assert_allclose(S @ A, M @ A, rtol=1e-10, atol=1e-10)
    Y = rng.standard_normal((k, 3))
    np.testing.assert_allclose(S.T @ Y, M.T @ Y, rtol=1e-10, atol=1e-10)
    # the cases cover the direct stage 2, the full one, and more than one panel
    assert direct == (k != 2000)
    assert (w < p) == (n == 65536)


@pytest.mark.parametrize(("k", "z"), [(1, 1), (5, 5), (10, 3), (1000, 8)])
def test_floyd_kernel_matches_reference(k, z, rng):
    U = rng.random((200, z))
    out = np.empty((200, z), dtype=np.int64)
    K._floyd_sample(U, k, out)
    np.testing.assert_array_equal(out, ref_floyd(U, k))
    assert all(len(set(row)) == z for row in out)
    assert out.min() >= 0 and out.max() < k


@pytest.mark.parametrize(("k", "z"), [(1, 1), (5, 5), (10, 3), (1000, 8)])
def test_floyd_codes_kernel_matches_reference(k, z, rng):
    U = rng.random((200, z))
    negative = rng.integers(0, 2, size=(200, z)).astype(np.uint8)
    codes = np.empty((200, z), dtype=np.int32)
    K._floyd_codes(U, negative, k, codes)
    np.testing.assert_array_equal(codes >> 1, ref_floyd(U, k))
    np.testing.assert_array_equal(codes & 1, negative)


def ref_splitmix64(x):
    """SplitMix64 output function on uint64 arrays (plain NumPy, wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@pytest.mark.parametrize(("k", "z", "start"), [(1, 1, 0), (5, 5, 7), (1000, 8, 123456)])
def test_counter_codes_kernel_matches_reference(k, z, start):
    """Counter-based hash codes against plain NumPy: SplitMix64 draws + Floyd's sampling."""
    key = 2**62 + 12345
    n = 300
    codes = np.empty((n, z), dtype=np.int32)
    K._hash_codes_counter(key, start, k, codes)
    counter = (np.arange(start, start + n, dtype=np.uint64)[:, None] * np.uint64(z)) + (
        np.arange(1, z + 1, dtype=np.uint64)
    )
    with np.errstate(over="ignore"):
        u = ref_splitmix64(np.uint64(key) + np.uint64(0x9E3779B97F4A7C15) * counter)
    rows = np.empty((n, z), dtype=np.int64)
    for j in range(n):
        for m in range(z):
            s = k - z + m
            t = int((int(u[j, m]) >> 32) * (s + 1) >> 32)
            rows[j, m] = s if t in rows[j, :m] else t
    np.testing.assert_array_equal(codes >> 1, rows)
    np.testing.assert_array_equal(codes & 1, (u & np.uint64(1)).astype(np.int64))
    assert all(len(set(row)) == z for row in rows)
    # any column range is drawn on its own
    part = np.empty((100, z), dtype=np.int32)
    K._hash_codes_counter(key, start + 50, k, part)
    np.testing.assert_array_equal(part, codes[50:150])


def test_counter_codes_rows_and_signs_are_uniform():
    """Rows hit with probability z/k, signs fair (chi-square / binomial, level 1e-3)."""
    from scipy.stats import binomtest, chisquare

    k, z, n = 12, 3, 6000
    codes = np.empty((n, z), dtype=np.int32)
    K._hash_codes_counter(987654321, 0, k, codes)
    assert chisquare(np.bincount((codes >> 1).ravel(), minlength=k)).pvalue > 1e-3
    assert binomtest(int((codes & 1).sum()), codes.size).pvalue > 1e-3


def test_floyd_rows_are_uniform(rng):
    """Each row index is chosen with probability z/k (chi-square, level 1e-3)."""
    from scipy.stats import chisquare

    k, z, n = 12, 3, 6000
    out = np.empty((n, z), dtype=np.int64)
    K._floyd_sample(rng.random((n, z)), k, out)
    counts = np.bincount(out.ravel(), minlength=k)
    assert chisquare(counts).pvalue > 1e-3


def test_tensor_sketch_transform_is_operator_on_tensor_power(rng, dtype):
    for p in (1, 2, 3):
        ts = sk.tensor_sketch(16, 5, p, rng=rng)
        X = rng.standard_normal((4, 5)).astype(dtype)
        feats = ts.transform(X)
        assert feats.shape == (4, 16) and feats.dtype == dtype
        M = ref_tensor_sketch_matrix(ts)
        for i in range(4):
            power = X[i].astype(np.float64)
            for _ in range(p - 1):
                power = np.kron(power, X[i].astype(np.float64))
            tol = 1e-4 if dtype == np.float32 else 1e-11
            np.testing.assert_allclose(
                feats[i], M @ power, rtol=tol, atol=tol * np.abs(power).sum()
            )
        np.testing.assert_allclose(ts.transform(X[0]), feats[0])


# --------------------------------------------------------------------------------------
# operator protocol
# --------------------------------------------------------------------------------------


def test_dot_test_every_operator(builder, rng):
    _, build = builder
    S = build(20, 100, rng)
    assert dot_test(S, rng=rng).passed
    assert dot_test(S.T, rng=rng).passed
    assert S.T.shape == (S.shape[1], S.shape[0])
    assert S.T.T is S


def test_composition_with_linear_operator(rng):
    A = rng.standard_normal((50, 6))
    S = sk.countsketch(10, 50, rng=rng)
    SA = S @ aslinearoperator(A)
    assert isinstance(SA, LinearOperator) and SA.shape == (10, 6)
    x = rng.standard_normal(6)
    np.testing.assert_allclose(SA @ x, S.todense() @ (A @ x), rtol=1e-12)
    # right multiplication by an ndarray goes through the adjoint
    B = rng.standard_normal((3, 10))
    np.testing.assert_allclose(B @ S, B @ S.todense(), rtol=1e-12)


def test_matvec_and_rmatvec(builder, rng):
    _, build = builder
    S = build(8, 49, rng)
    M = reference_matrix(S)
    x = rng.standard_normal(S.shape[1])
    y = rng.standard_normal(8)
    np.testing.assert_allclose(S.matvec(x), M @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S.rmatvec(y), M.T @ y, rtol=1e-12, atol=1e-12)


def test_repr_mentions_kind():
    assert "sparse_sign" in repr(sk.sparse_sign(8, 20, rng=0))
    assert "N=32" in repr(sk.srht(8, 20, rng=0))


# --------------------------------------------------------------------------------------
# randomness: reproducibility, thread independence, distribution
# --------------------------------------------------------------------------------------


def test_same_seed_same_sketch(builder, seed):
    _, build = builder
    a = build(12, 81, seed).todense()
    b = build(12, 81, np.random.default_rng(seed)).todense()
    c = build(12, 81, seed + 1).todense()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_results_independent_of_thread_count(rng):
    A = rng.standard_normal((3000, 70))
    As = sp.random(3000, 70, density=0.05, format="csr", random_state=np.random.default_rng(3))
    ops = [
        sk.srht(256, 3000, rng=1),
        sk.countsketch(256, 3000, rng=1),
        sk.sparse_sign(256, 3000, rng=1),
    ]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = [S @ X for S in ops for X in (A, As, As.tocsc())] + [S.T @ A[:256] for S in ops]
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = [S @ X for S in ops for X in (A, As, As.tocsc())] + [S.T @ A[:256] for S in ops]
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_isotropic_in_expectation(name, seed):
    """E||Sx||^2 = ||x||^2: Monte Carlo mean within 4 standard errors.

    Negative control: the same statistic for 1.1 S is rejected.
    """
    rng = np.random.default_rng(seed)
    n = 64
    x = rng.standard_normal(n)
    x /= np.linalg.norm(x)
    R = 400
    vals = np.empty(R)
    for r in range(R):
        S = BUILDERS[name](8, n, rng)  # tensor2: x is read as an 8 x 8 tensor
        vals[r] = np.sum((S @ x) ** 2)
    se = vals.std(ddof=1) / np.sqrt(R)
    assert abs(vals.mean() - 1.0) <= 4 * se + 1e-12
    assert abs(1.21 * vals.mean() - 1.0) > 4 * 1.21 * se


def test_orthogonal_gaussian_structure(rng):
    S = sk.orthogonal_gaussian(10, 4, rng=rng).todense()  # 3 blocks: 4, 4, 2 rows
    for lo, hi in [(0, 4), (4, 8), (8, 10)]:
        G = S[lo:hi] @ S[lo:hi].T
        np.testing.assert_allclose(G - np.diag(np.diag(G)), 0, atol=1e-12)


def test_orthogonal_gaussian_is_haar(seed):
    """Row directions are uniform: E[u_0] = 0 for the first entry of the first row.

    Negative control: LAPACK's Q without the sign fix is biased (Householder QR makes
    R[0, 0] = -sign(G[0, 0]) ||g||, so Q[0, 0] is never positive).
    """
    rng = np.random.default_rng(seed)
    n, R = 6, 600
    first = np.empty(R)
    raw = np.empty(R)
    for r in range(R):
        row = sk.orthogonal_gaussian(3, n, rng=rng).todense()[0]
        first[r] = row[0] / np.linalg.norm(row)
        Q, _ = sla.qr(rng.standard_normal((n, 3)), mode="economic")
        raw[r] = Q[0, 0]
    se = np.sqrt(1.0 / n / R)  # Var(u_0) = 1/n for a uniform unit vector
    assert abs(first.mean()) < 4 * se
    assert abs(raw.mean()) > 4 * se


def test_orthogonal_gaussian_row_norms_are_chi(seed):
    """k * ||row||^2 ~ chi^2_n: mean n, variance 2n (within 4 SE)."""
    rng = np.random.default_rng(seed)
    n, k = 20, 20
    sq = np.concatenate(
        [
            k * np.sum(sk.orthogonal_gaussian(k, n, rng=rng).todense() ** 2, axis=1)
            for _ in range(50)
        ]
    )
    assert abs(sq.mean() - n) < 4 * np.sqrt(2 * n / sq.size)


def test_sparse_sign_columns(rng):
    S = sk.sparse_sign(40, 300, nnz_per_col=8, rng=rng)
    M = S.todense()
    assert np.all((M != 0).sum(axis=0) == 8)
    np.testing.assert_allclose(np.abs(M[M != 0]), 1 / np.sqrt(8))
    assert S.nnz_per_col == 8


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sk.gaussian(0, 5), ValueError, r"sketch_size=0 must be >= 1"),
        (lambda: sk.gaussian(3, 0), ValueError, r"n=0 must be >= 1"),
        (lambda: sk.rademacher(2.0, 5), TypeError, r"sketch_size must be an integer"),
        (lambda: sk.srht(9, 8), ValueError, r"sketch_size=9 must satisfy 1 <= sketch_size <= n=8"),
        (
            lambda: sk.sparse_sign(4, 10, nnz_per_col=5),
            ValueError,
            r"nnz_per_col=5 must be <= sketch_size=4",
        ),
        (lambda: sk.tensor_sketch(4, 3, 0), ValueError, r"degree=0 must be >= 1"),
        (lambda: sk.countsketch(4, 10, rng="seed"), TypeError, r"rng must be"),
        (lambda: sk.countsketch(4, 10, rng=np.random.RandomState(0)), TypeError, r"RandomState"),
    ],
    ids=["k0", "n0", "float_k", "srht_k_gt_n", "nnz_gt_k", "degree0", "rng_str", "randomstate"],
)
def test_bad_parameters(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    ("A", "exc", "match"),
    [
        (np.full((10, 2), np.nan), ValueError, r"finite"),
        (np.ones((11, 2)), ValueError, r"must have n=10 rows"),
        (np.ones((10, 2, 2)), ValueError, r"1 or 2-dimensional"),
        (np.ones((10, 2), dtype=complex), TypeError, r"complex"),
        (np.array([["a"]] * 10), TypeError, r"dtype"),
        (sp.csr_matrix(np.full((10, 2), np.inf)), ValueError, r"finite"),
        (sp.csr_matrix(np.ones((9, 2))), ValueError, r"must have n=10 rows"),
        (sp.csr_matrix(np.ones((10, 2), dtype=complex)), TypeError, r"complex"),
    ],
    ids=["nan", "rows", "3d", "complex", "str", "sparse_inf", "sparse_rows", "sparse_complex"],
)
@pytest.mark.parametrize("name", [b for b in BUILDERS if b != "tensor2"])
def test_bad_input_rejected(name, A, exc, match):
    S = BUILDERS[name](4, 10, 0)
    with pytest.raises(exc, match=match):
        S @ A


def test_tensor_sketch_bad_input_rejected():
    S = sk.tensor_sketch(4, 3, 2, rng=0)  # shape (4, 9)
    with pytest.raises(ValueError, match=r"must have n=9 rows"):
        S @ np.ones(10)
    with pytest.raises(ValueError, match=r"finite"):
        S @ np.full(9, np.nan)
    with pytest.raises(ValueError, match=r"finite"):
        S.transform(np.full((2, 3), np.inf))


def test_input_not_mutated(builder, rng):
    _, build = builder
    S = build(5, 49, rng)
    A = rng.standard_normal((49, 4))
    A_f = np.asfortranarray(A.copy())
    As = sp.csr_matrix(A)
    A0, As0 = A.copy(), As.copy()
    S @ A
    S @ A_f
    S @ As
    S.T @ A[:5]
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(A_f, A0)
    np.testing.assert_array_equal(As.toarray(), As0.toarray())


def test_integer_input_promotes_to_float64(rng):
    S = sk.countsketch(4, 10, rng=rng)
    out = S @ np.arange(20).reshape(10, 2)
    assert out.dtype == np.float64


def test_transform_rejects_wrong_width():
    ts = sk.tensor_sketch(8, 4, 2, rng=0)
    with pytest.raises(ValueError, match=r"X must have n=4 columns"):
        ts.transform(np.ones((3, 5)))


def test_operator_arrays_are_read_only():
    S = sk.srht(4, 10, rng=0)
    with pytest.raises(ValueError):
        S.rows[0] = 1
    G = sk.gaussian(3, 5, rng=0)
    M = G.todense()
    M[0, 0] = 99.0  # a copy: the operator is unaffected
    assert G.todense()[0, 0] != 99.0


# --------------------------------------------------------------------------------------
# former fuzz findings
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7, 8, 9])
def test_sparse_sign_default_nnz_per_col_is_clamped(k, dtype, rng):
    # Default z = min(8, k): the old default 8 was refused for k < 8.
    n = 50
    S = sk.sparse_sign(k, n, rng=3)
    z = min(8, k)
    assert S.nnz_per_col == z
    M = S.todense()
    assert np.all((M != 0).sum(axis=0) == z)
    np.testing.assert_allclose(np.abs(M[M != 0]), 1 / np.sqrt(z))
    # Same sketch as with the explicit value, against the dense reference.
    np.testing.assert_array_equal(M, sk.sparse_sign(k, n, nnz_per_col=z, rng=3).todense())
    A = rng.standard_normal((n, 4)).astype(dtype)
    A0 = A.copy()
    out = S @ A
    assert out.dtype == dtype and np.isfinite(out).all()
    np.testing.assert_allclose(out, M @ A.astype(np.float64), rtol=tol(dtype), atol=tol(dtype))
    np.testing.assert_array_equal(A, A0)


def test_sparse_sign_explicit_nnz_per_col_above_k_still_refused():
    with pytest.raises(ValueError, match=r"nnz_per_col=8 must be <= sketch_size=7"):
        sk.sparse_sign(7, 10, nnz_per_col=8)


def test_tensor_sketch_overflow_refused_not_nan(dtype):
    # Fuzz finding: entries of 1e30 gave NaN/inf features in float32 (x (x) x ~ 1e60).
    ts = sk.tensor_sketch(16, 3, 2, rng=0)
    big = 1e30 if dtype == np.float32 else 1e160
    X = np.array([[big, -big, 1.0], [1.0, 2.0, 3.0]], dtype=dtype)
    X0 = X.copy()
    with pytest.raises(ValueError, match=f"overflow {np.dtype(dtype).name}"):
        ts.transform(X)
    np.testing.assert_array_equal(X, X0)
    # Negative control: the well-scaled row alone is fine.
    assert np.isfinite(ts.transform(X[1])).all()


def test_tensor_sketch_recovers_intermediate_overflow(dtype, rng):
    # Features that fit the dtype although the FFT intermediates of the direct path
    # overflow: the power-of-two rescaled path returns them, against the dense reference.
    n, k, p = 40, 256, 2
    ts = sk.tensor_sketch(k, n, p, rng=rng)
    mag = 2.0**60 if dtype == np.float32 else 2.0**508
    X = (rng.standard_normal((3, n)) * mag).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        direct = ts._transform_rows(X)
    assert not np.isfinite(direct).all()  # the case the fallback exists for
    feats = ts.transform(X)
    assert feats.dtype == dtype and np.isfinite(feats).all()
    M = ref_tensor_sketch_matrix(ts)
    for i in range(3):
        x = X[i].astype(np.float64) / mag
        ref = (M @ np.kron(x, x)) * mag**2
        t = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(feats[i], ref, rtol=t, atol=t * np.abs(ref).max())


# --------------------------------------------------------------------------------------
# sparse input: column-blocked kernels with codes drawn on the fly
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 2, 6])
def test_bucket_kernels_match_numpy(rng, shift):
    """Bucketing = stable sort of the CSR nonzeros by column block (plain NumPy)."""
    A = sp.random(500, 70, density=0.05, format="csr", rng=rng)
    n_blocks = -(-70 // (1 << shift))
    starts, rows, cols, vals = sk._bucket_csr(A, shift, n_blocks)
    row_of = np.repeat(np.arange(500), np.diff(A.indptr))
    block = A.indices >> shift
    order = np.argsort(block, kind="stable")
    np.testing.assert_array_equal(rows, row_of[order])
    np.testing.assert_array_equal(cols, (A.indices & ((1 << shift) - 1))[order])
    np.testing.assert_array_equal(vals, A.data[order])
    np.testing.assert_array_equal(starts, np.searchsorted(block[order], np.arange(n_blocks + 1)))


@pytest.mark.parametrize(("k", "z", "start"), [(1, 1, 0), (5, 5, 7), (1000, 8, 123456)])
def test_draw_rows_matches_counter_codes(rng, k, z, start):
    """The batched on-the-fly draw equals the (reference-tested) code table."""
    key = 2**62 + 12345
    n = 700
    table = np.empty((n, z), dtype=np.int64)
    K._hash_codes_counter(key, start, k, table)
    rows = rng.integers(0, n, 300).astype(np.int32)
    T = np.empty((z, K._HASH_BATCH), dtype=np.uint64)
    U = np.empty((z, K._HASH_BATCH), dtype=np.uint64)
    for w0 in (0, 256):
        nw = min(K._HASH_BATCH, rows.size - w0)
        K._draw_rows(np.uint64(key), start, rows, w0, nw, k, z, T, U)
        sel = table[rows[w0 : w0 + nw]]
        np.testing.assert_array_equal(T[:, :nw].T, sel >> 1)
        np.testing.assert_array_equal(U[:, :nw].T, sel & 1)


@pytest.mark.parametrize("make", ["sparse_sign", "countsketch", "sparse_sign_z3"])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_apply_lazy_and_table_paths_identical(rng, dtype, make, fmt):
    """Codes drawn on the fly == codes from the table, bitwise; dense reference."""
    n, p, k = 900, 45, 64
    build = {
        "sparse_sign": lambda: sk.sparse_sign(k, n, rng=4),
        "countsketch": lambda: sk.countsketch(k, n, rng=4),
        "sparse_sign_z3": lambda: sk.sparse_sign(k, n, nnz_per_col=3, rng=4),
    }[make]
    A = sp.random(n, p, density=0.04, format=fmt, rng=rng, dtype=dtype)
    A0 = A.copy()
    S = build()
    assert S._table is None  # construction draws nothing
    lazy = S @ A
    assert S._table is None  # nor does a sparse product
    M = S.todense()  # draws the table
    assert S._table is not None
    table = S @ A
    assert lazy.dtype == dtype and table.dtype == dtype
    np.testing.assert_array_equal(lazy, table)
    ref = M @ A.toarray().astype(np.float64)
    np.testing.assert_allclose(lazy, ref, rtol=tol(dtype), atol=tol(dtype) * np.abs(ref).max())
    # the other format, one thread: the same bits
    other = A.tocsc() if fmt == "csr" else A.tocsr()
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = build() @ other
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(one, lazy)
    assert (A != A0).nnz == 0


def test_sparse_apply_non_canonical_csr(rng):
    """Unsorted indices and duplicate entries: the sum of the entries is sketched."""
    n, p, k = 200, 30, 16
    A = sp.random(n, p, density=0.1, format="csr", rng=rng)
    # every row twice, in reversed column order: duplicates and unsorted indices
    counts = np.diff(A.indptr)
    indptr = np.r_[0, np.cumsum(2 * counts)]
    spans = list(zip(A.indptr[:-1], A.indptr[1:], strict=True))
    indices = np.concatenate([np.r_[A.indices[a:b][::-1], A.indices[a:b]] for a, b in spans])
    data = np.concatenate([np.r_[A.data[a:b][::-1], A.data[a:b]] for a, b in spans])
    B = sp.csr_matrix((data, indices, indptr), shape=(n, p))
    assert not B.has_sorted_indices and B.nnz == 2 * A.nnz
    S = sk.sparse_sign(k, n, rng=0)
    ref = S.todense() @ (2 * A.toarray())
    np.testing.assert_allclose(S @ B, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_sparse_apply_large_sketch_and_wide_matrix(rng):
    """k so large that one column per task fills the slab; p not a multiple of it."""
    n, p, k = 300, 7, 40000
    A = sp.random(n, p, density=0.2, format="csr", rng=rng)
    S = sk.sparse_sign(k, n, nnz_per_col=2, rng=1)
    ref = S.todense() @ A.toarray()
    np.testing.assert_allclose(S @ A, ref, rtol=1e-12, atol=1e-12)
    empty = sp.csr_matrix((n, p))
    out = S @ empty
    assert out.shape == (k, p) and not out.any()
