"""Tests of rnla.operators: LinearOperator helpers, EntryMatrix, DenseEntries, KernelMatrix."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from scipy.spatial.distance import cdist

from rnla._kernels.kernel_matrix import GAUSSIAN, _gram_transform
from rnla.operators import (
    DenseEntries,
    DotTestResult,
    EntryMatrix,
    EntryMatrixBase,
    KernelMatrix,
    KernelOverflowError,
    as_linear_operator,
    check_indices,
    dot_test,
)

KERNELS = ["gaussian", "exp", "polynomial", "laplacian"]


def tol(dtype, factor=100.0):
    return factor * np.finfo(dtype).eps


# ---------------------------------------------------------------------------------------
# Plain-NumPy references (float64, forming the matrix)
# ---------------------------------------------------------------------------------------


def reference_kernel(X, Y, kernel, *, bandwidth=None, degree=2, coef0=1.0, scale=1.0):
    X = np.asarray(X, dtype=np.float64)
    Y = X if Y is None else np.asarray(Y, dtype=np.float64)
    d = X.shape[1]
    if kernel == "gaussian":
        h = np.sqrt(d) if bandwidth is None else bandwidth
        return np.exp(-cdist(X, Y, "sqeuclidean") / (2 * h**2))
    if kernel == "laplacian":
        h = d if bandwidth is None else bandwidth
        return np.exp(-cdist(X, Y, "cityblock") / h)
    if kernel == "exp":
        return np.exp(scale * (X @ Y.T))
    if kernel == "polynomial":
        return (coef0 + scale * (X @ Y.T)) ** degree
    raise AssertionError(kernel)


def gaussian_callable(Xa, Yb):
    return np.exp(-cdist(Xa, Yb, "sqeuclidean") / 2.0)


def full_matrix(M):
    return M.rows(np.arange(M.shape[0]))


def points(rng, m, n, d, dtype, symmetric):
    X = rng.standard_normal((m, d)).astype(dtype)
    Y = None if symmetric else rng.standard_normal((n, d)).astype(dtype)
    return X, Y


def assert_close(got, ref, dtype, factor=200.0):
    r = tol(dtype, factor)
    np.testing.assert_allclose(got, ref, rtol=r, atol=r * np.abs(ref).max())


# ---------------------------------------------------------------------------------------
# KernelMatrix vs reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "rectangular"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_blocks_match_reference(kernel, symmetric, dtype, rng):
    X, Y = points(rng, 9, 6, 3, dtype, symmetric)
    K = KernelMatrix(X, Y, kernel=kernel, scale=0.5, coef0=0.7, degree=3)
    ref = reference_kernel(X, Y, kernel, scale=0.5, coef0=0.7, degree=3)
    m, n = ref.shape
    assert K.shape == (m, n) and K.dtype == dtype

    rows = K.rows(np.arange(m))
    assert rows.dtype == dtype and rows.flags.c_contiguous
    assert_close(rows, ref, dtype)

    cols = K.cols(np.arange(n)[::-1])
    assert cols.dtype == dtype and cols.shape == (m, n)
    assert_close(cols, ref[:, ::-1], dtype)

    i = rng.integers(0, m, size=20)
    j = rng.integers(0, n, size=20)
    ent = K.entries(i, j)
    assert ent.dtype == dtype and ent.shape == (20,)
    assert_close(ent, ref[i, j], dtype)

    diag = K.diag()
    assert diag.dtype == dtype and diag.shape == (min(m, n),)
    assert_close(diag, np.diagonal(ref), dtype)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_n_equals_one(kernel, dtype, rng):
    X = rng.standard_normal((1, 4)).astype(dtype)
    Y = rng.standard_normal((3, 4)).astype(dtype)
    K = KernelMatrix(X, kernel=kernel, scale=0.5)
    assert_close(full_matrix(K), reference_kernel(X, None, kernel, scale=0.5), dtype)
    assert K.diag().shape == (1,)
    R = KernelMatrix(X, Y, kernel=kernel, scale=0.5)
    assert_close(full_matrix(R), reference_kernel(X, Y, kernel, scale=0.5), dtype)
    assert_close(R.cols([2]), reference_kernel(X, Y[2:], kernel, scale=0.5), dtype)
    assert R.diag().shape == (1,)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_zero_points(kernel, dtype):
    X = np.zeros((4, 2), dtype=dtype)
    K = KernelMatrix(X, kernel=kernel, coef0=1.5, degree=3)
    expected = 1.5**3 if kernel == "polynomial" else 1.0
    np.testing.assert_array_equal(full_matrix(K), np.full((4, 4), expected, dtype=dtype))
    np.testing.assert_array_equal(K.diag(), np.full(4, expected, dtype=dtype))


def test_gram_transform_clamps_negative_distance(dtype):
    # ||x||^2 + ||y||^2 - 2<x, y> = -1e-3 after rounding must give distance 0, entry 1.
    G = np.array([[1.0005]], dtype=dtype)
    ok = _gram_transform(G, np.array([1.0]), np.array([1.0]), GAUSSIAN, 0.5, 1.0, 1.0, 2)
    assert ok and G[0, 0] == 1.0


def test_kernel_symmetric_gaussian_diag_is_one(dtype, rng):
    X = rng.standard_normal((6, 3)).astype(dtype)
    K = KernelMatrix(X)
    np.testing.assert_array_equal(K.diag(), np.ones(6, dtype=dtype))
    np.testing.assert_allclose(np.diagonal(full_matrix(K)), 1.0, rtol=tol(dtype, 50))


def test_gaussian_float32_far_from_origin_is_accurate(rng):
    # Without centring, ||x||^2 ~ 3e6 would make float32 distances meaningless.
    X = (1000.0 + rng.standard_normal((20, 3))).astype(np.float32)
    Y = (1000.0 + rng.standard_normal((7, 3))).astype(np.float32)
    K = KernelMatrix(X, Y)
    assert_close(full_matrix(K), reference_kernel(X, Y, "gaussian"), np.float32, factor=100)


def test_default_and_explicit_bandwidth(rng):
    X = rng.standard_normal((5, 4))
    assert KernelMatrix(X).bandwidth == pytest.approx(2.0)
    assert KernelMatrix(X, kernel="laplacian").bandwidth == pytest.approx(4.0)
    assert KernelMatrix(X, kernel="exp").bandwidth is None
    K = KernelMatrix(X, kernel="gaussian", bandwidth=0.7)
    assert_close(full_matrix(K), reference_kernel(X, None, "gaussian", bandwidth=0.7), np.float64)
    L = KernelMatrix(X, kernel="laplacian", bandwidth=0.7)
    assert_close(full_matrix(L), reference_kernel(X, None, "laplacian", bandwidth=0.7), np.float64)


def test_dtype_promotion(rng):
    X32 = rng.standard_normal((4, 2)).astype(np.float32)
    assert KernelMatrix(X32, X32.astype(np.float64)).dtype == np.float64
    assert KernelMatrix(X32, X32).dtype == np.float32
    assert KernelMatrix(np.arange(6).reshape(3, 2)).dtype == np.float64


def test_callable_kernel_matches_reference(dtype, rng):
    X, Y = points(rng, 70, 80, 2, dtype, symmetric=False)
    K = KernelMatrix(X, Y, kernel=gaussian_callable)
    ref = reference_kernel(X, Y, "gaussian", bandwidth=1.0)
    assert_close(full_matrix(K), ref, dtype)
    assert_close(K.cols([3, 0]), ref[:, [3, 0]], dtype)
    # 150 pairs cross the internal chunk boundary of 64 pairs.
    i = rng.integers(0, 70, size=150)
    j = rng.integers(0, 80, size=150)
    ent = K.entries(i, j)
    assert ent.dtype == dtype
    assert_close(ent, ref[i, j], dtype)
    assert_close(K.diag(), np.diagonal(ref), dtype)
    assert K.kernel is gaussian_callable and K.bandwidth is None


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (lambda a, b: np.ones((a.shape[0], b.shape[0] + 1)), ValueError, "must return a block"),
        (lambda a, b: np.ones((a.shape[0], b.shape[0])) * 1j, TypeError, "complex"),
        (lambda a, b: np.full((a.shape[0], b.shape[0]), np.nan), ValueError, "non-finite"),
    ],
    ids=["shape", "complex", "nan"],
)
def test_callable_kernel_bad_output(bad, exc, match, rng):
    K = KernelMatrix(rng.standard_normal((3, 2)), kernel=bad)
    with pytest.raises(exc, match=match):
        K.rows([0])
    assert K.n_evaluations == 0


def test_repr_mentions_kernel(rng):
    X = rng.standard_normal((3, 2))
    assert "gaussian" in repr(KernelMatrix(X))
    assert "callable" in repr(KernelMatrix(X, kernel=gaussian_callable))
    assert "DenseEntries" in repr(DenseEntries(X))


# ---------------------------------------------------------------------------------------
# Overflow of unbounded kernels
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "params"),
    [("exp", {"scale": 1.0}), ("polynomial", {"coef0": 1e10, "degree": 5})],
)
def test_overflow_raises_in_float32_only(kernel, params):
    X = np.full((3, 1), 10.0)
    K32 = KernelMatrix(X.astype(np.float32), kernel=kernel, **params)
    for call in (
        lambda: K32.rows([0]),
        lambda: K32.cols([1]),
        lambda: K32.entries([0], [1]),
        K32.diag,
        lambda: K32.as_linear_operator() @ np.ones(3),
    ):
        # The project's ValueError, still an OverflowError for older callers.
        with pytest.raises(ValueError, match="overflow float32") as info:
            call()
        assert isinstance(info.value, KernelOverflowError | OverflowError)
    assert K32.n_evaluations == 0
    # Negative control: the same entries are finite in float64.
    K64 = KernelMatrix(X, kernel=kernel, **params)
    assert np.isfinite(full_matrix(K64)).all()


def test_polynomial_overflow_is_value_error_and_input_kept(dtype):
    # Fuzz finding: entries of 1e29 overflowed the polynomial kernel in float32 with an
    # OverflowError only; the refusal is now the project's ValueError with the remedy.
    X = np.array([[1.2573022e29], [1.0]], dtype=dtype)
    X0 = X.copy()
    K = KernelMatrix(X, kernel="polynomial")
    if dtype == np.float32:
        with pytest.raises(ValueError, match=r"'polynomial' kernel entries overflow float32"):
            K.diag()
    else:  # negative control: 2.5e116 is finite in float64, against NumPy
        d = K.diag()
        assert d.dtype == np.float64 and np.isfinite(d).all()
        np.testing.assert_allclose(d, (X[:, 0] ** 2 + 1.0) ** 2, rtol=1e-14)
    np.testing.assert_array_equal(X, X0)


# ---------------------------------------------------------------------------------------
# Entry counting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", gaussian_callable], ids=str)
def test_entry_counter_is_exact(kernel, rng):
    X = rng.standard_normal((7, 2))
    Y = rng.standard_normal((5, 2))
    K = KernelMatrix(X, Y, kernel=kernel)
    assert K.n_evaluations == 0
    K.rows([1, 1, 4])
    assert K.n_evaluations == 3 * 5
    K.cols([0, 2])
    assert K.n_evaluations == 15 + 2 * 7
    K.entries([0, 6, 6, 1], [4, 4, 4, 0])
    assert K.n_evaluations == 29 + 4
    K.diag()
    assert K.n_evaluations == 33 + 5
    K.rows([])
    assert K.n_evaluations == 38
    with pytest.raises(ValueError, match="out of range"):
        K.rows([7])
    assert K.n_evaluations == 38
    K.reset_count()
    assert K.n_evaluations == 0
    op = K.as_linear_operator(block_size=2)
    op @ np.ones(5)
    op.rmatvec(np.ones(7))
    op.matmat(np.ones((5, 3)))
    assert K.n_evaluations == 3 * 7 * 5


def test_dense_entries_counter_is_exact(rng):
    M = DenseEntries(rng.standard_normal((4, 6)))
    M.rows([0, 3])
    M.cols([5])
    M.entries([1, 2], [0, 0])
    M.diag()
    assert M.n_evaluations == 12 + 4 + 2 + 4
    M.reset_count()
    assert M.n_evaluations == 0


# ---------------------------------------------------------------------------------------
# Streaming LinearOperator of a KernelMatrix
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, None], ids=["b1", "b3", "auto"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "rectangular"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_operator_products(kernel, symmetric, block_size, dtype, rng):
    X, Y = points(rng, 8, 5, 3, dtype, symmetric)
    K = KernelMatrix(X, Y, kernel=kernel, scale=0.5)
    ref = reference_kernel(X, Y, kernel, scale=0.5)
    op = K.as_linear_operator(block_size=block_size)
    assert isinstance(op, LinearOperator) and op.shape == ref.shape and op.dtype == dtype
    m, n = ref.shape
    V = rng.standard_normal((n, 2)).astype(dtype)
    U = rng.standard_normal((m, 2)).astype(dtype)
    r = tol(dtype, 200)
    KV = op @ V
    assert KV.dtype == dtype
    np.testing.assert_allclose(KV, ref @ V, rtol=r, atol=r * np.abs(ref).sum(axis=1).max() * 3)
    np.testing.assert_allclose(
        op.rmatmat(U), ref.T @ U, rtol=r, atol=r * np.abs(ref).sum(axis=0).max() * 3
    )
    np.testing.assert_allclose(op @ V[:, 0], KV[:, 0], rtol=r, atol=r * np.abs(KV).max())
    assert (op @ V[:, 0].astype(np.float64)).dtype == np.float64
    assert dot_test(op, rng=rng).passed


def test_kernel_operator_streams_blocks(rng, monkeypatch):
    # (the low-dimensional Gaussian kernel takes the fused path, which stores no block)
    K = KernelMatrix(rng.standard_normal((10, 2)), rng.standard_normal((4, 2)), kernel="exp")
    seen = []
    block = K._block

    def spy(rsel, csel):
        out = block(rsel, csel)
        seen.append(out.shape)
        return out

    monkeypatch.setattr(K, "_block", spy)
    K.as_linear_operator(block_size=3) @ np.ones(4)
    assert seen == [(3, 4), (3, 4), (3, 4), (1, 4)]


@pytest.mark.parametrize(("block_size", "exc"), [(0, ValueError), (2.5, TypeError)])
def test_kernel_operator_bad_block_size(block_size, exc, rng):
    K = KernelMatrix(rng.standard_normal((3, 2)))
    with pytest.raises(exc, match="block_size"):
        K.as_linear_operator(block_size=block_size)


# ---------------------------------------------------------------------------------------
# dot_test and as_linear_operator
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda A: A,
        lambda A: sp.csr_array(A),
        lambda A: aslinearoperator(A),
        lambda A: DenseEntries(A),
        lambda A: DenseEntries(A).as_linear_operator(),
        lambda A: as_linear_operator(A),
    ],
    ids=["ndarray", "sparse", "linop", "dense-entries", "dense-entries-op", "wrapped"],
)
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (1, 5), (1, 1)], ids=str)
def test_dot_test_passes_for_correct_adjoints(make, shape, dtype, rng):
    A = rng.standard_normal(shape).astype(dtype)
    res = dot_test(make(A), rng=rng)
    assert isinstance(res, DotTestResult)
    assert res.passed
    assert res.max_relative_gap <= np.sqrt(np.finfo(dtype).eps)


def _operator_with_adjoint(A, At):
    return LinearOperator(
        A.shape,
        matvec=lambda x: A @ x,
        rmatvec=lambda y: At @ y,
        matmat=lambda X: A @ X,
        rmatmat=lambda Y: At @ Y,
        dtype=A.dtype,
    )


def test_dot_test_fails_on_wrong_adjoint(rng):
    # Negative controls: a non-symmetric matrix whose "adjoint" omits the transpose, and
    # an adjoint off by a relative perturbation 1e-4, far above sqrt(eps) = 1.5e-8.
    A = rng.standard_normal((5, 5))
    res = dot_test(_operator_with_adjoint(A, A), rng=rng)
    assert not res.passed and res.max_relative_gap > 1e-2
    E = 1e-4 * rng.standard_normal((5, 5))
    res = dot_test(_operator_with_adjoint(A, A.T + E), rng=rng)
    assert not res.passed and res.max_relative_gap > np.sqrt(np.finfo(np.float64).eps)


def test_dot_test_fails_when_only_block_adjoint_is_wrong(rng):
    A = rng.standard_normal((4, 3))
    op = LinearOperator(
        A.shape,
        matvec=lambda x: A @ x,
        rmatvec=lambda y: A.T @ y,
        matmat=lambda X: A @ X,
        rmatmat=lambda Y: 2.0 * (A.T @ Y),
        dtype=A.dtype,
    )
    assert not dot_test(op, rng=rng).passed


def test_dot_test_default_rtol_follows_dtype(rng):
    # A relative adjoint error of ~1e-6 is float32 rounding but a float64 bug.
    A = rng.standard_normal((6, 6))
    wrong = A.T * (1.0 + 1e-6)
    op32 = _operator_with_adjoint(A.astype(np.float32), wrong.astype(np.float32))
    assert dot_test(op32, rng=rng).passed
    assert not dot_test(_operator_with_adjoint(A, wrong), rng=rng).passed
    assert not dot_test(op32, rtol=1e-8, rng=rng).passed


def test_dot_test_nonfinite_output_fails(rng):
    A = rng.standard_normal((3, 3))
    op = _operator_with_adjoint(A, np.full((3, 3), np.nan))
    res = dot_test(op, rng=rng)
    assert not res.passed and res.max_relative_gap == np.inf


def test_dot_test_zero_operator_passes(rng):
    res = dot_test(np.zeros((3, 2)), rng=rng)
    assert res.passed and res.max_relative_gap == 0.0


def test_dot_test_is_reproducible(seed):
    A = np.random.default_rng(seed).standard_normal((5, 3))
    assert dot_test(A, rng=seed) == dot_test(A, rng=seed)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_trials": 0}, ValueError, "n_trials=0"),
        ({"n_trials": 1.5}, TypeError, "n_trials must be an integer"),
        ({"rtol": -1.0}, ValueError, "rtol"),
        ({"rtol": "a"}, TypeError, "rtol"),
    ],
)
def test_dot_test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dot_test(np.eye(2), **kwargs)


def test_as_linear_operator_accepts_supported_types(rng):
    A = rng.standard_normal((3, 2))
    op = aslinearoperator(A)
    assert as_linear_operator(op) is op
    for obj in (A, sp.csc_array(A), DenseEntries(A), KernelMatrix(A)):
        out = as_linear_operator(obj)
        assert isinstance(out, LinearOperator) and out.shape == obj.shape


@pytest.mark.parametrize(
    ("A", "exc", "match"),
    [
        (np.array([[1.0, np.nan]]), ValueError, "finite"),
        (np.ones((2, 2), dtype=complex), TypeError, "complex"),
        (np.ones(3), ValueError, "2-dimensional"),
        (np.array([["a"]]), TypeError, "dtype"),
        (sp.csr_array(np.ones((2, 2), dtype=complex)), TypeError, "complex"),
    ],
    ids=["nan", "complex", "1d", "str", "sparse-complex"],
)
def test_as_linear_operator_rejects_bad_input(A, exc, match):
    with pytest.raises(exc, match=match):
        as_linear_operator(A)


# ---------------------------------------------------------------------------------------
# Index validation
# ---------------------------------------------------------------------------------------


def test_check_indices_accepts_valid_indices():
    assert check_indices([2, 0, 2], 3).tolist() == [2, 0, 2]
    assert check_indices(np.array([1], dtype=np.uint8), 3).dtype == np.intp
    assert check_indices(1, 3).tolist() == [1]
    assert check_indices([], 3).shape == (0,)


@pytest.mark.parametrize(
    ("idx", "exc", "match"),
    [
        ([0, -1], ValueError, r"idx\[1\]=-1 is negative.*0 <= idx < 3"),
        ([3], ValueError, r"idx\[0\]=3 is out of range.*0 <= idx < 3"),
        ([True, False, True], TypeError, "boolean"),
        ([0.0, 1.0], TypeError, "integers"),
        ([[0, 1]], ValueError, "1-dimensional"),
        (None, TypeError, "integers"),
    ],
    ids=["negative", "too-large", "bool", "float", "2d", "none"],
)
def test_check_indices_rejects(idx, exc, match):
    with pytest.raises(exc, match=match):
        check_indices(idx, 3)


@pytest.mark.parametrize(
    "M",
    [
        lambda rng: DenseEntries(rng.standard_normal((4, 3))),
        lambda rng: KernelMatrix(rng.standard_normal((4, 2)), rng.standard_normal((3, 2))),
    ],
    ids=["dense", "kernel"],
)
def test_entry_methods_reject_bad_indices(M, rng):
    M = M(rng)
    with pytest.raises(ValueError, match=r"0 <= idx < 4"):
        M.rows([4])
    with pytest.raises(ValueError, match=r"0 <= idx < 3"):
        M.cols([0, 3])
    with pytest.raises(ValueError, match="negative"):
        M.cols([-1])
    with pytest.raises(ValueError, match=r"0 <= j < 3"):
        M.entries([0], [3])
    with pytest.raises(ValueError, match=r"len\(i\)=2 and len\(j\)=1"):
        M.entries([0, 1], [0])
    with pytest.raises(TypeError, match="boolean"):
        M.rows(np.ones(4, dtype=bool))
    assert M.n_evaluations == 0


# ---------------------------------------------------------------------------------------
# KernelMatrix bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((np.array([[0.0, np.nan]]),), {}, ValueError, "X must contain only finite"),
        ((np.ones((2, 2)), np.array([[np.inf, 0.0]])), {}, ValueError, "Y must contain only"),
        ((np.ones((2, 3)), np.ones((4, 2))), {}, ValueError, r"X.shape=\(2, 3\).*\(4, 2\)"),
        ((np.ones((2, 2)),), {"kernel": "rbf"}, ValueError, "'gaussian', 'exp', 'polynomial'"),
        ((np.ones((2, 2)),), {"kernel": 3}, TypeError, "kernel must be"),
        ((np.ones((2, 2), dtype=complex),), {}, TypeError, "complex"),
        ((np.ones((2, 2)), np.ones((2, 2), dtype=complex)), {}, TypeError, "complex"),
        ((np.ones(3),), {}, ValueError, "X must be 2-dimensional"),
        ((np.ones((0, 2)),), {}, ValueError, "non-empty"),
        ((np.ones((2, 2)),), {"bandwidth": 0.0}, ValueError, "bandwidth=0.0 must be a positive"),
        ((np.ones((2, 2)),), {"kernel": "exp", "bandwidth": 1.0}, ValueError, "applies only"),
        ((np.ones((2, 2)),), {"degree": 0}, ValueError, "degree=0"),
        ((np.ones((2, 2)),), {"degree": 2.0}, TypeError, "degree must be an integer"),
        ((np.ones((2, 2)),), {"scale": np.nan}, ValueError, "scale=nan must be finite"),
        ((np.ones((2, 2)),), {"coef0": "1"}, TypeError, "coef0 must be a real number"),
    ],
    ids=[
        "nan-X",
        "inf-Y",
        "feature-mismatch",
        "unknown-kernel",
        "kernel-type",
        "complex-X",
        "complex-Y",
        "1d",
        "empty",
        "bandwidth-zero",
        "bandwidth-not-applicable",
        "degree-zero",
        "degree-float",
        "scale-nan",
        "coef0-str",
    ],
)
def test_kernel_matrix_rejects_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        KernelMatrix(*args, **kwargs)


@pytest.mark.parametrize(
    ("A", "exc", "match"),
    [
        (np.array([[1.0, np.nan]]), ValueError, "finite"),
        (np.ones(3), ValueError, "2-dimensional"),
        (sp.csr_array(np.eye(2)), TypeError, "dense array"),
        (np.ones((2, 2), dtype=complex), TypeError, "complex"),
    ],
    ids=["nan", "1d", "sparse", "complex"],
)
def test_dense_entries_rejects_bad_input(A, exc, match):
    with pytest.raises(exc, match=match):
        DenseEntries(A)


# ---------------------------------------------------------------------------------------
# DenseEntries
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (1, 1)], ids=str)
def test_dense_entries_matches_array(shape, dtype, rng):
    A = rng.standard_normal(shape).astype(dtype)
    M = DenseEntries(A)
    assert M.shape == shape and M.dtype == dtype
    m, n = shape
    idx = rng.integers(0, m, size=4)
    np.testing.assert_array_equal(M.rows(idx), A[idx])
    jdx = rng.integers(0, n, size=3)
    np.testing.assert_array_equal(M.cols(jdx), A[:, jdx])
    np.testing.assert_array_equal(M.entries(idx, np.resize(jdx, 4)), A[idx, np.resize(jdx, 4)])
    np.testing.assert_array_equal(M.diag(), np.diagonal(A))
    assert M.rows(idx).dtype == dtype and M.diag().dtype == dtype


def test_dense_entries_integer_input_promotes():
    assert DenseEntries(np.arange(4).reshape(2, 2)).dtype == np.float64


# ---------------------------------------------------------------------------------------
# Immutability: inputs not mutated, later mutation of inputs has no effect
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matrix_copies_and_does_not_mutate_inputs(kernel, dtype, rng):
    X, Y = points(rng, 5, 4, 2, dtype, symmetric=False)
    X0, Y0 = X.copy(), Y.copy()
    K = KernelMatrix(X, Y, kernel=kernel, scale=0.5)
    before = full_matrix(K)
    K.cols([1])
    K.entries([0], [0])
    K.diag()
    K.as_linear_operator() @ np.ones(4)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)
    X[:] = 7.0
    Y[:] = -7.0
    block = full_matrix(K)
    np.testing.assert_array_equal(block, before)
    block[:] = 0.0  # returned blocks are fresh
    np.testing.assert_array_equal(full_matrix(K), before)
    with pytest.raises(ValueError, match="read-only"):
        K.X[0, 0] = 1.0


def test_dense_entries_copies_input(rng):
    A = rng.standard_normal((3, 3))
    M = DenseEntries(A)
    A[:] = 0.0
    assert np.abs(full_matrix(M)).sum() > 0
    rows = M.rows([0])
    rows[:] = 5.0
    assert not np.any(M.rows([0]) == 5.0)
    with pytest.raises(ValueError, match="read-only"):
        M.array[0, 0] = 1.0


# ---------------------------------------------------------------------------------------
# Protocol
# ---------------------------------------------------------------------------------------


class _DuckEntries:
    shape = (2, 2)
    dtype = np.dtype(np.float64)
    n_evaluations = 0

    def diag(self):
        return np.ones(2)

    def rows(self, idx):
        return np.ones((len(idx), 2))

    def cols(self, idx):
        return np.ones((2, len(idx)))

    def entries(self, i, j):
        return np.ones(len(i))

    def reset_count(self):
        self.n_evaluations = 0


class _NoEntries:
    shape = (2, 2)
    dtype = np.dtype(np.float64)
    n_evaluations = 0

    def rows(self, idx):
        return np.ones((len(idx), 2))


def test_entry_matrix_isinstance(rng):
    X = rng.standard_normal((3, 2))
    assert isinstance(DenseEntries(X), EntryMatrix)
    assert isinstance(KernelMatrix(X), EntryMatrix)
    assert isinstance(_DuckEntries(), EntryMatrix)
    assert not isinstance(X, EntryMatrix)
    assert not isinstance(_NoEntries(), EntryMatrix)


def test_entry_matrix_base_validates_shape_and_dtype():
    with pytest.raises(ValueError, match="shape must have both dimensions >= 1"):
        EntryMatrixBase((0, 3), np.float64)
    with pytest.raises(TypeError, match="float32 or float64"):
        EntryMatrixBase((2, 3), np.int64)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "rectangular"])
@pytest.mark.parametrize("shape", [(70, 1500, 3), (33, 5, 1), (1, 1, 32)], ids=str)
def test_gaussian_fused_product_reference(shape, symmetric, dtype, rng):
    """The fused Gaussian product (no stored block) against plain NumPy."""
    m, n, d = shape
    X, Y = points(rng, m, n, d, dtype, symmetric)
    X = 3 * X  # distances up to exp(-hundreds): the vectorised exp's range
    Y = X if symmetric else 3 * Y
    K = KernelMatrix(X, None if symmetric else Y, bandwidth=0.7)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    ref = np.exp(-((X64[:, None, :] - Y64[None, :, :]) ** 2).sum(-1) / (2 * 0.7**2))
    op = K.as_linear_operator()
    V = rng.standard_normal((ref.shape[1], 3)).astype(dtype)
    U = rng.standard_normal((ref.shape[0], 2)).astype(dtype)
    before = K.n_evaluations
    KV = op @ V
    assert K.n_evaluations - before == ref.size
    assert KV.dtype == dtype and np.isfinite(KV).all()
    r = tol(dtype, 500)  # centring rounds the points: ~u |x| |x - y| gamma per entry
    scale_v = np.abs(ref) @ np.abs(V.astype(np.float64))
    tiny = np.finfo(dtype).tiny  # float32 results may underflow
    assert np.all(np.abs(KV - ref @ V.astype(np.float64)) <= r * scale_v + tiny)
    KtU = op.rmatmat(U)
    scale_u = np.abs(ref.T) @ np.abs(U.astype(np.float64))
    assert np.all(np.abs(KtU - ref.T @ U.astype(np.float64)) <= r * scale_u + tiny)
    X0 = X.copy()
    op @ V[:, 0]
    np.testing.assert_array_equal(X, X0)


def test_gaussian_fused_kernel_exp_reference(rng):
    """The kernel's vectorised exp against np.exp, ulp level, down to the underflow."""
    from rnla._kernels.kernel_matrix import _exp_nonpositive

    x = -np.concatenate([rng.uniform(0, 1, 5000), rng.uniform(0, 750, 5000), [0.0, 708.5]])
    s = x.copy()
    _exp_nonpositive(s, s.shape[0])
    ref = np.exp(x)
    ok = x >= -708.0
    assert np.all(np.abs(s[ok] - ref[ok]) <= 2 * np.spacing(ref[ok]))
    assert np.all(s[~ok] == 0.0)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_matmat_kernels_reference(fmt, dtype, rng):
    """The parallel sparse-times-dense kernels against SciPy's product."""
    import scipy.sparse as sps

    from rnla._kernels.sparse import sparse_matmat

    A = sps.random(3000, 2000, density=0.05, format=fmt, rng=rng, dtype=dtype)
    X = rng.standard_normal((2000, 12)).astype(dtype)
    X0 = X.copy()
    out = sparse_matmat(A, X)
    assert out is not None and out.dtype == dtype and out.shape == (3000, 12)
    ref = A.astype(np.float64) @ X.astype(np.float64)
    r = tol(dtype, 100)
    scale = abs(A).astype(np.float64) @ np.abs(X.astype(np.float64))
    assert np.all(np.abs(out - ref) <= r * scale)
    np.testing.assert_array_equal(X, X0)
    # small products, one column, mixed dtypes: left to SciPy
    assert sparse_matmat(A, X[:, :1]) is None
    assert sparse_matmat(A[:10], X) is None
    assert sparse_matmat(A, X.astype(np.float16)) is None
