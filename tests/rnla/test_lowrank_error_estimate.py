"""Unit tests of rnla.estimate.lowrank_error_estimate (and its residual operator).

Every factor type is checked against the residual ``A - approximation`` formed densely
with NumPy: the residual operator entry by entry (both products), the spectral estimate
with a full probe block (then exact), the Frobenius interval with a negligible failure
probability. Coverage at a stated failure probability is tested in
tests/bounds/test_lowrank_error_estimate.py.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla._results import (
    CholeskyResult,
    CrossResult,
    CURResult,
    EighResult,
    IDResult,
    QBResult,
    SVDResult,
)
from rnla.estimate import NormEstimate, _residual_operator, lowrank_error_estimate
from rnla.operators import DenseEntries, KernelMatrix
from tests.conftest import CountingOperator

M, N, RANK = 30, 20, 4
KINDS = ["svd", "qb", "eigh", "cholesky", "id_cols", "id_rows", "cur", "cross", "pair"]
TINY = 1e-12  # failure probability of tests that must pass on every seed


def _tol(dtype, factor=200.0):
    return factor * float(np.finfo(dtype).eps)


def _orth(rng, m, r):
    return np.linalg.qr(rng.standard_normal((m, r)))[0]


def _case(kind, rng, dtype=np.float64):
    """``(A, factors, kwargs, approx)``: a matrix, factors of a rank-4 approximation of it
    (deliberately not the best one, so the residual is generic), the keyword arguments
    the factor type needs, and the approximation formed densely in float64."""
    square = kind in ("eigh", "cholesky")
    m, n = (N, N) if square else (M, N)
    A = rng.standard_normal((m, n))
    if square:
        A = A @ A.T / n
    A = A.astype(dtype)
    Ad = A.astype(np.float64)
    kw = {}
    if kind == "svd":
        U, s, Vt = _orth(rng, m, RANK), rng.uniform(1, 2, RANK), _orth(rng, n, RANK).T
        f = SVDResult(U, s, Vt)
    elif kind == "qb":
        Q = _orth(rng, m, RANK)
        B = Q.T @ Ad + 0.1 * rng.standard_normal((RANK, n))
        f = QBResult(Q, B, 0.5)
    elif kind == "eigh":
        V, w = _orth(rng, n, RANK), np.array([2.0, 1.0, -0.5, 0.1])
        f = EighResult(w, V)
    elif kind == "cholesky":
        F = rng.standard_normal((n, RANK))
        f = CholeskyResult(F, np.arange(RANK, dtype=np.int64))
    elif kind == "id_cols":
        J = rng.choice(n, RANK, replace=False)
        X = rng.standard_normal((RANK, n))
        f = IDResult(J, X)
    elif kind == "id_rows":
        II = rng.choice(m, RANK, replace=False)
        X = rng.standard_normal((m, RANK))
        f, kw = IDResult(II, X), {"axis": 0}
    elif kind == "cur":
        J, II = rng.choice(n, RANK + 1, replace=False), rng.choice(m, RANK, replace=False)
        U = rng.standard_normal((RANK + 1, RANK)) / 4
        f = CURResult(J, U, II)
    elif kind == "cross":
        U, V = rng.standard_normal((m, RANK)), rng.standard_normal((n, RANK))
        piv = np.arange(RANK, dtype=np.int64)
        f = CrossResult(U, V, piv, piv)
    else:
        L, R = rng.standard_normal((m, RANK)), rng.standard_normal((RANK, n))
        f = (L, R)
    f = _cast(f, dtype)
    return A, f, kw, _approx_from(kind, Ad, f)


def _cast(f, dtype):
    """The factors in the dtype of A (a float32 factorisation of float32 data)."""
    parts = [
        x.astype(dtype) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x for x in f
    ]
    return tuple(parts) if type(f) is tuple else type(f)(*parts)


def _approx_from(kind, Ad, f):
    """Reference approximation in float64 from the (possibly float32) factors."""
    g = [np.asarray(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else x for x in f]
    if kind == "svd":
        return (g[0] * g[1]) @ g[2]
    if kind == "qb":
        return g[0] @ g[1]
    if kind == "eigh":
        return (g[1] * g[0]) @ g[1].T
    if kind == "cholesky":
        return g[0] @ g[0].T
    if kind == "id_cols":
        return Ad[:, g[0]] @ g[1]
    if kind == "id_rows":
        return g[1] @ Ad[g[0]]
    if kind == "cur":
        return Ad[:, g[0]] @ g[1] @ Ad[g[2]]
    if kind == "cross":
        return g[0] @ g[1].T
    return g[0] @ g[1]


# ----------------------------------------------------------------------------------------
# the residual operator against the dense residual
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_residual_operator_matches_dense_residual(rng, dtype, kind):
    A, f, kw, approx = _case(kind, rng, dtype)
    E, _ = _residual_operator(A, f, kw.get("axis"))
    ref = A.astype(np.float64) - approx
    atol = _tol(dtype) * (np.abs(A).max() + np.abs(approx).max())
    m, n = A.shape
    assert E.shape == A.shape
    assert E.dtype == dtype
    np.testing.assert_allclose(E.matmat(np.eye(n, dtype=dtype)), ref, atol=atol, rtol=0)
    np.testing.assert_allclose(E.rmatmat(np.eye(m, dtype=dtype)), ref.T, atol=atol, rtol=0)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(m).astype(dtype)
    np.testing.assert_allclose(E.matvec(x), ref @ x, atol=atol * np.abs(x).sum(), rtol=0)
    np.testing.assert_allclose(E.rmatvec(y), ref.T @ y, atol=atol * np.abs(y).sum(), rtol=0)


def test_residual_dtype_promotes_when_mixed(rng):
    A = rng.standard_normal((M, N)).astype(np.float32)
    L, R = rng.standard_normal((M, 2)), rng.standard_normal((2, N)).astype(np.float32)
    E, _ = _residual_operator(A, (L, R))
    assert E.dtype == np.float64
    E32, _ = _residual_operator(A, (L.astype(np.float32), R))
    assert E32.dtype == np.float32


def test_pair_accepts_sparse_and_operator_factors(rng):
    A = rng.standard_normal((M, N))
    L = sp.random(M, 3, density=0.5, random_state=rng, format="csr")
    R = rng.standard_normal((3, N))
    E, _ = _residual_operator(A, (L, aslinearoperator(R)))
    np.testing.assert_allclose(E.matmat(np.eye(N)), A - L.toarray() @ R, atol=1e-12)


# ----------------------------------------------------------------------------------------
# the estimate against the exact residual norm
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_spectral_with_full_block_is_exact(rng, dtype, kind):
    # With n_probes >= min(m, n) the subspace iteration spans everything: value = ||E||_2.
    A, f, kw, approx = _case(kind, rng, dtype)
    exact = np.linalg.norm(A.astype(np.float64) - approx, 2)
    est = lowrank_error_estimate(A, f, norm=2, n_probes=min(A.shape), rng=rng, **kw)
    scale = np.linalg.norm(A.astype(np.float64), 2) + np.linalg.norm(approx, 2)
    assert est.value == pytest.approx(exact, abs=_tol(dtype) * scale)
    assert est.lower == est.value
    assert est.upper == est.value  # no missing directions: nothing to bound


@pytest.mark.parametrize("kind", KINDS)
def test_frobenius_interval_contains_exact(rng, dtype, kind):
    A, f, kw, approx = _case(kind, rng, dtype)
    exact = np.linalg.norm(A.astype(np.float64) - approx)
    est = lowrank_error_estimate(A, f, delta=TINY, rng=rng, **kw)
    slack = 1 + _tol(dtype)
    assert est.lower / slack <= exact <= est.upper * slack
    assert est.delta == TINY
    assert est.n_matvecs == 10


@pytest.mark.parametrize("kind", KINDS)
def test_spectral_interval_contains_exact(rng, kind):
    A, f, kw, approx = _case(kind, rng)
    exact = np.linalg.norm(A - approx, 2)
    est = lowrank_error_estimate(A, f, norm=2, n_probes=3, n_iter=2, rng=rng, **kw)
    assert est.lower <= exact * (1 + _tol(np.float64))
    # The upper bound holds with probability 1 - 1e-3 per call; certify it by a second,
    # independent call at a negligible failure probability instead of asserting it here.
    sure = lowrank_error_estimate(A, f, norm=2, n_probes=3, n_iter=2, delta=TINY, rng=rng, **kw)
    assert exact <= sure.upper
    assert sure.upper >= est.upper  # smaller delta, wider interval (same kind of draw)
    assert est.n_matvecs == 3 * (2 * 2 + 1)


@pytest.mark.parametrize("ord", ["fro", 2])
@pytest.mark.parametrize("kind", ["svd", "cur", "cholesky"])
def test_relative_error(rng, kind, ord):
    A, f, kw, approx = _case(kind, rng)
    exact = np.linalg.norm(A - approx, ord) / np.linalg.norm(A, ord)
    est = lowrank_error_estimate(A, f, norm=ord, relative=True, delta=TINY, rng=rng, **kw)
    assert est.lower <= exact * (1 + 1e-12)
    assert exact <= est.upper * (1 + 1e-12)
    assert est.delta == TINY
    per_estimate = 10 if ord == "fro" else 10 * 9
    assert est.n_matvecs == 2 * per_estimate


def test_relative_value_is_ratio_of_the_two_estimates(rng):
    # Same Generator state: the residual estimate is drawn first, then the one of A.
    A, f, _, _ = _case("svd", rng)
    seed = int(rng.integers(2**31))
    rel = lowrank_error_estimate(A, f, relative=True, delta=0.02, rng=seed)
    g = np.random.default_rng(seed)
    from rnla.estimate import norm_estimate

    E, _ = _residual_operator(A, f)
    e = norm_estimate(E, "fro", delta=0.01, rng=g)
    a = norm_estimate(A, "fro", delta=0.01, rng=g)
    assert rel.value == pytest.approx(e.value / a.value, rel=1e-12)
    assert rel.upper == pytest.approx(e.upper / a.lower, rel=1e-12)
    assert rel.lower == pytest.approx(e.lower / a.upper, rel=1e-12)


def test_exact_factorisation_has_zero_error(rng, dtype):
    A = (rng.standard_normal((M, 3)) @ rng.standard_normal((3, N))).astype(dtype)
    U, s, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    f = SVDResult(U[:, :3].astype(dtype), s[:3].astype(dtype), Vt[:3].astype(dtype))
    est = lowrank_error_estimate(A, f, norm=2, rng=rng)
    assert est.upper <= _tol(dtype, 1000) * s[0]


# ----------------------------------------------------------------------------------------
# kinds of A
# ----------------------------------------------------------------------------------------

A_KINDS = ["dense", "csr", "csc", "operator", "entries"]


def _wrap(A, how):
    return {
        "dense": lambda: A,
        "csr": lambda: sp.csr_array(A),
        "csc": lambda: sp.csc_matrix(A),
        "operator": lambda: CountingOperator(A),
        "entries": lambda: DenseEntries(A),
    }[how]()


@pytest.mark.parametrize("how", A_KINDS)
@pytest.mark.parametrize("kind", ["id_cols", "id_rows", "cur", "cholesky"])
def test_every_kind_of_A(rng, kind, how):
    A, f, kw, approx = _case(kind, rng)
    exact = np.linalg.norm(A - approx, 2)
    Aw = _wrap(A, how)
    est = lowrank_error_estimate(Aw, f, norm=2, n_probes=min(A.shape), rng=rng, **kw)
    assert est.value == pytest.approx(exact, rel=1e-10)
    extracted = {"id_cols": RANK, "id_rows": RANK, "cur": 2 * RANK + 1, "cholesky": 0}[kind]
    products = min(A.shape) * 9
    if how == "operator":
        # columns/rows of an operator come from products with unit vectors: counted
        assert est.n_matvecs == products + extracted == Aw.count
    else:
        assert est.n_matvecs == products


def test_kernel_matrix_is_not_formed_by_the_estimate(rng):
    X = rng.standard_normal((50, 3))
    K = KernelMatrix(X, bandwidth=2.0)
    Kd = K.rows(np.arange(50))
    J = np.sort(rng.choice(50, 6, replace=False))
    F = Kd[:, J] @ np.linalg.cholesky(np.linalg.inv(Kd[np.ix_(J, J)])).astype(np.float64)
    f = CholeskyResult(F, J.astype(np.int64))
    exact = np.linalg.norm(Kd - F @ F.T)
    est = lowrank_error_estimate(K, f, delta=TINY, rng=rng)
    assert est.lower <= exact <= est.upper


# ----------------------------------------------------------------------------------------
# the outputs of the low-rank routines are accepted as they are
# ----------------------------------------------------------------------------------------


def _routine_results(A, P, seed):
    from rnla.lowrank import generalized_nystrom, randqb, reigh, rsvd, single_pass_svd
    from rnla.psd import nystrom, rpcholesky
    from rnla.skeleton import aca, cur, interpolative

    return [
        ("rsvd", A, rsvd(A, 5, rng=seed), {}),
        ("rsvd-krylov", A, rsvd(A, 5, method="krylov", rng=seed), {}),
        ("randqb", A, randqb(A, tol=0.5, rng=seed), {}),
        ("single_pass_svd", A, single_pass_svd(A, 5, rng=seed), {}),
        ("generalized_nystrom", A, generalized_nystrom(A, 5, rng=seed), {}),
        ("reigh", P, reigh(P, 5, rng=seed), {}),
        ("nystrom", P, nystrom(P, 5, rng=seed), {}),
        ("rpcholesky", P, rpcholesky(P, 5, rng=seed), {}),
        ("interpolative", A, interpolative(A, 5, rng=seed), {}),
        ("interpolative-rows", A, interpolative(A, 5, axis=0, rng=seed), {"axis": 0}),
        ("cur", A, cur(A, 5, rng=seed), {}),
        ("aca", A, aca(A, tol=0.1, rng=seed), {}),
    ]


def _dense(res, A, axis):
    if isinstance(res, SVDResult):
        return (res.U * res.s) @ res.Vt
    if isinstance(res, QBResult):
        return res.Q @ res.B
    if isinstance(res, EighResult):
        return (res.eigenvectors * res.eigenvalues) @ res.eigenvectors.T
    if isinstance(res, CholeskyResult):
        return res.F @ res.F.T
    if isinstance(res, IDResult):
        return A[:, res.indices] @ res.X if axis == 1 else res.X @ A[res.indices]
    if isinstance(res, CURResult):
        return A[:, res.cols] @ res.U @ A[res.rows]
    return res.U @ res.V.T


def test_outputs_of_the_low_rank_routines(rng):
    A = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 25))
    A += 0.05 * rng.standard_normal(A.shape)
    P = A.T @ A
    seed = int(rng.integers(2**31))
    for name, B, res, kw in _routine_results(A, P, seed):
        exact = np.linalg.norm(B - _dense(res, B, kw.get("axis", 1)), 2)
        est = lowrank_error_estimate(B, res, norm=2, n_probes=min(B.shape), rng=seed + 1, **kw)
        assert est.value == pytest.approx(exact, rel=1e-8, abs=1e-12 * np.abs(B).max()), name


# ----------------------------------------------------------------------------------------
# conventions: result type, reproducibility, no mutation
# ----------------------------------------------------------------------------------------


def test_result_type_and_reproducibility(rng):
    A, f, _, _ = _case("cur", rng)
    a = lowrank_error_estimate(A, f, rng=7)
    b = lowrank_error_estimate(A, f, rng=np.random.default_rng(7))
    assert isinstance(a, NormEstimate)
    assert all(isinstance(v, float) for v in (a.value, a.upper, a.lower))
    assert a == b
    assert lowrank_error_estimate(A, f, rng=8) != a


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_not_mutated(rng, kind):
    A, f, kw, _ = _case(kind, rng)
    A0 = A.copy()
    f0 = [np.copy(x) for x in f]
    lowrank_error_estimate(A, f, relative=True, rng=rng, **kw)
    np.testing.assert_array_equal(A, A0)
    for x, x0 in zip(f, f0, strict=True):
        np.testing.assert_array_equal(x, x0)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_unknown_factor_type_lists_accepted_types(rng):
    A = rng.standard_normal((M, N))
    accepted = r"SVDResult.*QBResult.*EighResult.*CholeskyResult.*IDResult.*CURResult"
    with pytest.raises(TypeError, match=accepted):
        lowrank_error_estimate(A, {"U": A}, rng=0)
    with pytest.raises(TypeError, match="NormEstimate.*" + accepted):
        lowrank_error_estimate(A, NormEstimate(1.0, 1.0, 1.0, 0.1, 1), rng=0)
    with pytest.raises(TypeError, match=r"tuple of length 3.*\(L, R\).*SVDResult"):
        lowrank_error_estimate(A, tuple(np.linalg.svd(A, full_matrices=False)), rng=0)


@pytest.mark.parametrize(
    ("kind", "mutate", "match"),
    [
        (
            "svd",
            lambda f: f._replace(U=f.U[:-1]),
            r"factors.U has shape \(29, 4\), expected \(30, 4\)",
        ),
        (
            "svd",
            lambda f: f._replace(s=f.s[:-1]),
            r"factors.U has shape \(30, 4\), expected \(30, 3\)",
        ),
        (
            "qb",
            lambda f: f._replace(B=f.B[:, :-1]),
            r"factors.B has shape \(4, 19\), expected \(4, 20\)",
        ),
        (
            "eigh",
            lambda f: f._replace(eigenvalues=f.eigenvalues[:3]),
            r"factors.eigenvectors .*expected \(20, 3\)",
        ),
        (
            "cholesky",
            lambda f: f._replace(F=f.F[:-1]),
            r"factors.F has shape \(19, 4\), expected \(20, 4\)",
        ),
        (
            "id_cols",
            lambda f: f._replace(X=f.X[:, :-1]),
            r"factors.X has shape \(4, 19\), expected \(4, 20\)",
        ),
        (
            "id_cols",
            lambda f: f._replace(indices=f.indices + 100),
            r"factors.indices\[0\]=.* out of range",
        ),
        ("cur", lambda f: f._replace(U=f.U.T), r"factors.U has shape \(4, 5\), expected \(5, 4\)"),
        (
            "cross",
            lambda f: f._replace(V=f.V[:-1]),
            r"factors.V has shape \(19, 4\), expected \(20, 4\)",
        ),
        ("pair", lambda f: (f[0], f[1][:-1]), r"expected L \(m, r\) = \(30, r\) and R \(r, n\)"),
    ],
    ids=lambda x: x if isinstance(x, str) and len(x) < 12 else "",
)
def test_shape_mismatch(rng, kind, mutate, match):
    A, f, kw, _ = _case(kind, rng)
    with pytest.raises(ValueError, match=match):
        lowrank_error_estimate(A, mutate(f), rng=0, **kw)


def test_id_axis_hint_and_checks(rng):
    A, f, _, _ = _case("id_rows", rng)
    with pytest.raises(ValueError, match=r"column ID \(axis=1\).*pass axis=0"):
        lowrank_error_estimate(A, f, rng=0)
    with pytest.raises(ValueError, match=r"axis=2 must be 1 \(column ID\) or 0 \(row ID\)"):
        lowrank_error_estimate(A, f, axis=2, rng=0)
    B, g, _, _ = _case("svd", rng)
    with pytest.raises(ValueError, match=r"axis=0 applies to an IDResult only, got .*SVDResult"):
        lowrank_error_estimate(B, g, axis=0, rng=0)


def test_bad_indices(rng):
    A, f, _, _ = _case("cur", rng)
    with pytest.raises(TypeError, match=r"factors\.rows must contain integers, got dtype float64"):
        lowrank_error_estimate(A, f._replace(rows=f.rows.astype(float)), rng=0)
    with pytest.raises(ValueError, match=r"factors.cols\[0\]=-1 is negative"):
        lowrank_error_estimate(A, f._replace(cols=-1 - f.cols * 0), rng=0)


def test_square_factor_types_need_square_A(rng):
    A = rng.standard_normal((M, N))
    V = _orth(rng, N, 2)
    with pytest.raises(ValueError, match=r"square matrix V diag\(eigenvalues\).*\(30, 20\)"):
        lowrank_error_estimate(A, EighResult(np.ones(2), V), rng=0)
    with pytest.raises(ValueError, match=r"square matrix F F\^T.*\(30, 20\)"):
        lowrank_error_estimate(A, CholeskyResult(V, np.arange(2)), rng=0)


def test_bad_values(rng):
    A, f, _, _ = _case("svd", rng)
    with pytest.raises(ValueError, match=r"factors\.U must contain only finite values"):
        lowrank_error_estimate(A, f._replace(U=np.full_like(f.U, np.nan)), rng=0)
    bad = A.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="A must contain only finite values"):
        lowrank_error_estimate(bad, f, rng=0)
    with pytest.raises(ValueError, match="non-empty"):
        lowrank_error_estimate(np.zeros((0, N)), f, rng=0)
    with pytest.raises(TypeError, match="complex"):
        lowrank_error_estimate(A.astype(complex), f, rng=0)
    with pytest.raises(ValueError, match="norm=1 is not one of 2, 'fro'"):
        lowrank_error_estimate(A, f, norm=1, rng=0)
    with pytest.raises(ValueError, match="n_iter=2 applies to norm=2 only"):
        lowrank_error_estimate(A, f, n_iter=2, rng=0)
    with pytest.raises(ValueError, match="n_probes=0 must be >= 1"):
        lowrank_error_estimate(A, f, n_probes=0, rng=0)
    with pytest.raises(ValueError, match=r"delta=1.0 must lie in the open"):
        lowrank_error_estimate(A, f, delta=1.0, rng=0)
    with pytest.raises(TypeError, match="relative must be a bool"):
        lowrank_error_estimate(A, f, relative=1, rng=0)


def test_relative_error_of_zero_matrix_is_undefined():
    A = np.zeros((M, N))
    f = (np.ones((M, 1)), np.ones((1, N)))
    with pytest.raises(ValueError, match="relative=True: the norm estimate of A is 0"):
        lowrank_error_estimate(A, f, relative=True, rng=0)
    # the absolute error is fine: ||0 - 1 1^T||_F = sqrt(M N)
    est = lowrank_error_estimate(A, f, delta=TINY, rng=0)
    assert est.lower <= np.sqrt(M * N) <= est.upper
