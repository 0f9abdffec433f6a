"""Unit tests of rnla.krylov: Lanczos, block Lanczos, f(A)b and quadrature bounds."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from rnla.krylov import (
    BlockLanczosResult,
    LanczosResult,
    QuadratureBounds,
    _lanczos_batch,
    block_lanczos,
    funm_lanczos,
    lanczos,
    quadform_bounds,
)
from rnla.operators import _wrap
from tests.conftest import tol


def spd(n, rng, eigenvalues=None, dtype=np.float64):
    """Symmetric matrix with the given spectrum (default log-spaced in [1e-2, 10])."""
    if eigenvalues is None:
        eigenvalues = np.logspace(-2, 1, n)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (U * eigenvalues) @ U.T
    return ((A + A.T) / 2).astype(dtype), U, np.asarray(eigenvalues, dtype=np.float64)


def tridiag(res):
    return np.diag(res.alpha) + np.diag(res.beta, 1) + np.diag(res.beta, -1)


# --------------------------------------------------------------------------------------
# lanczos
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "sparse", "operator"])
def test_lanczos_relations(kind, dtype, rng):
    n, k = 60, 12
    A, _, _ = spd(n, rng, dtype=dtype)
    Ain = {"dense": A, "sparse": sp.csr_array(A), "operator": aslinearoperator(A)}[kind]
    v = rng.standard_normal(n).astype(dtype)
    res = lanczos(Ain, v, k, rng=rng)
    assert isinstance(res, LanczosResult)
    assert res.Q.shape == (n, k) and res.alpha.shape == (k,) and res.beta.shape == (k - 1,)
    assert res.Q.dtype == dtype and res.alpha.dtype == dtype
    eps = tol(dtype, 50)
    np.testing.assert_allclose(res.Q.T @ res.Q, np.eye(k), atol=eps)
    np.testing.assert_allclose(res.Q.T @ A @ res.Q, tridiag(res), atol=eps * 10)
    np.testing.assert_allclose(res.Q[:, 0] * res.beta0, v, rtol=eps, atol=eps)
    assert res.n_matvecs == k + 2 and not res.breakdown


def test_lanczos_breakdown_low_rank_exact(rng):
    n, r = 80, 5
    B = rng.standard_normal((n, r))
    A = B @ B.T
    v = rng.standard_normal(n)
    res = lanczos(A, v, 20, rng=rng)
    # K(A, v) = span(v) + range(A) has dimension r + 1.
    assert res.breakdown and res.Q.shape == (n, r + 1)
    assert np.all(np.isfinite(res.Q)) and np.all(np.isfinite(res.alpha))
    theta = np.linalg.eigvalsh(tridiag(res))
    lam = np.linalg.eigvalsh(A)
    np.testing.assert_allclose(theta[1:], lam[-r:], rtol=1e-10)
    assert abs(theta[0]) < 1e-9 * lam[-1]


def test_lanczos_eigenvector_start_breaks_down_at_once(rng):
    A, U, _ = spd(30, rng)
    res = lanczos(A, U[:, 3], 5, rng=rng)
    assert res.breakdown and res.Q.shape == (30, 1) and res.beta.shape == (0,)


def test_lanczos_no_reorth_three_term(rng):
    A, _, _ = spd(50, rng)
    res = lanczos(A, rng.standard_normal(50), 8, reorth="none", rng=rng)
    np.testing.assert_allclose(res.Q.T @ A @ res.Q, tridiag(res), atol=1e-8)


def test_lanczos_deterministic_and_not_mutated(rng):
    A, _, _ = spd(40, rng)
    v = rng.standard_normal(40)
    A0, v0 = A.copy(), v.copy()
    r1 = lanczos(A, v, 6, rng=3)
    r2 = lanczos(A, v, 6, rng=3)
    np.testing.assert_array_equal(r1.Q, r2.Q)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(v, v0)


def test_lanczos_int_input_promotes():
    A = np.diag(np.arange(1, 9))
    res = lanczos(A, np.ones(8, dtype=int), 3, rng=0)
    assert res.Q.dtype == np.float64


@pytest.mark.parametrize("func", [lanczos, block_lanczos])
def test_nonsymmetric_rejected(func, rng):
    A = rng.standard_normal((30, 30))
    v = rng.standard_normal(30) if func is lanczos else rng.standard_normal((30, 2))
    with pytest.raises(ValueError, match="A must be symmetric"):
        func(A, v, 3, rng=rng)


def test_slightly_nonsymmetric_operator_rejected(rng):
    A, _, _ = spd(40, rng)
    A[0, 1] += 1e-3 * np.abs(A).max()
    A[1, 0] -= 1e-3 * np.abs(A).max()
    with pytest.raises(ValueError, match="symmetric"):
        lanczos(A, rng.standard_normal(40), 3, rng=rng)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((np.eye(5), np.ones(5), 6), ValueError, r"k=6 must satisfy 1 <= k <= 5"),
        ((np.eye(5), np.ones(5), 0), ValueError, "k=0"),
        ((np.eye(5), np.ones(5), 2.0), TypeError, "k must be an integer"),
        ((np.eye(5), np.ones(4), 2), ValueError, "must have 5 rows"),
        ((np.eye(5), np.zeros(5), 2), ValueError, "nonzero"),
        ((np.ones((5, 4)), np.ones(5), 2), ValueError, "square"),
        ((np.eye(5) + 0j, np.ones(5), 2), TypeError, "complex"),
        ((np.eye(5), np.full(5, np.nan), 2), ValueError, "finite"),
    ],
    ids=["k>n", "k=0", "k-float", "v-length", "v-zero", "non-square", "complex", "nan"],
)
def test_lanczos_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        lanczos(*args, rng=0)


def test_bad_reorth():
    with pytest.raises(ValueError, match="reorth='partial' is not one of"):
        lanczos(np.eye(4), np.ones(4), 2, reorth="partial")


# --------------------------------------------------------------------------------------
# block_lanczos
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "sparse", "operator"])
def test_block_lanczos_relations(kind, dtype, rng):
    n, p, k = 70, 3, 5
    A, _, _ = spd(n, rng, dtype=dtype)
    Ain = {"dense": A, "sparse": sp.csr_array(A), "operator": aslinearoperator(A)}[kind]
    V = rng.standard_normal((n, p)).astype(dtype)
    res = block_lanczos(Ain, V, k, rng=rng)
    assert isinstance(res, BlockLanczosResult)
    J = p * k
    assert res.Q.shape == (n, J) and res.T.shape == (J, J) and res.R0.shape == (p, p)
    assert res.Q.dtype == dtype and res.T.dtype == dtype
    eps = tol(dtype, 50)
    np.testing.assert_allclose(res.Q.T @ res.Q, np.eye(J), atol=eps)
    np.testing.assert_allclose(res.Q.T @ A @ res.Q, res.T, atol=eps * 10)
    np.testing.assert_array_equal(res.T, res.T.T)
    # Block tridiagonal: zero beyond the first block off-diagonal.
    i, j = np.indices(res.T.shape)
    assert np.all(res.T[np.abs(i // p - j // p) > 1] == 0)
    np.testing.assert_allclose(res.Q[:, :p] @ res.R0, V, atol=eps * np.abs(V).max())
    assert res.n_matvecs == J + 2 and not res.breakdown


def test_block_lanczos_p1_matches_lanczos(rng):
    A, _, _ = spd(50, rng)
    v = rng.standard_normal(50)
    a = lanczos(A, v, 7, rng=0)
    b = block_lanczos(A, v[:, None], 7, rng=0)
    np.testing.assert_allclose(np.abs(b.T), np.abs(tridiag(a)), atol=1e-12)
    np.testing.assert_allclose(np.abs(b.Q), np.abs(a.Q), atol=1e-12)


def test_block_lanczos_rank_deficient_start_deflated(rng):
    n = 60
    A, _, _ = spd(n, rng)
    V = rng.standard_normal((n, 4))
    V[:, 2] = V[:, 0] - 2 * V[:, 1]
    res = block_lanczos(A, V, 3, rng=rng)
    assert res.Q.shape[1] == 9
    assert res.R0.shape == (4, 4) and np.all(res.R0[3] == 0)
    np.testing.assert_allclose(res.Q[:, :4] @ res.R0, V, atol=1e-12)
    np.testing.assert_allclose(res.Q.T @ res.Q, np.eye(9), atol=1e-12)
    np.testing.assert_allclose(res.Q.T @ A @ res.Q, res.T, atol=1e-12)


def test_block_lanczos_breakdown_exact(rng):
    n, r, p = 90, 6, 3
    B = rng.standard_normal((n, r))
    A = B @ B.T
    V = rng.standard_normal((n, p))
    res = block_lanczos(A, V, 10, rng=rng)
    # span(V) + range(A): dimension p + r.
    assert res.breakdown and res.Q.shape[1] == p + r
    assert np.all(np.isfinite(res.T))
    theta = np.linalg.eigvalsh(res.T)
    lam = np.linalg.eigvalsh(A)
    np.testing.assert_allclose(theta[-r:], lam[-r:], rtol=1e-10)
    assert np.all(np.abs(theta[:p]) < 1e-9 * lam[-1])


def test_block_lanczos_fills_whole_space(rng):
    n = 12
    A, _, lam = spd(n, rng)
    res = block_lanczos(A, rng.standard_normal((n, 5)), 3, rng=rng)
    assert res.Q.shape == (n, n)
    np.testing.assert_allclose(np.linalg.eigvalsh(res.T), np.sort(lam), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("V", "k", "exc", "match"),
    [
        (np.ones((10, 3)), 5, ValueError, r"1 <= k <= 4"),
        (np.ones((9, 3)), 2, ValueError, "must have 10 rows"),
        (np.zeros((10, 2)), 2, ValueError, "nonzero"),
        (np.ones(10), 2, ValueError, "2-dimensional"),
        (np.ones((10, 11)), 1, ValueError, "at most n=10 columns"),
    ],
    ids=["k-too-big", "rows", "zero", "1-D", "too-many-columns"],
)
def test_block_lanczos_bad_input(V, k, exc, match):
    with pytest.raises(exc, match=match):
        block_lanczos(np.eye(10), V, k, rng=0)


def test_projected_logdet_monotone_and_exact(rng):
    """Interlacing: sum log(lam + theta) + (n - J) log(lam) <= logdet(lam I + A), monotone."""
    n, r, p, lam = 100, 12, 4, 0.05
    B = rng.standard_normal((n, r)) / np.sqrt(n)
    A = B @ B.T
    V = rng.standard_normal((n, p))
    exact = np.linalg.slogdet(lam * np.eye(n) + A)[1]
    prev = -np.inf
    for k in range(1, 6):
        res = block_lanczos(A, V, k, rng=0)
        J = res.T.shape[0]
        theta = np.linalg.eigvalsh(res.T)
        est = np.sum(np.log(lam + theta)) + (n - J) * np.log(lam)
        assert est <= exact + 1e-10 * abs(exact)
        assert est >= prev - 1e-10 * abs(exact)
        prev = est
        if res.breakdown:
            break
    assert res.breakdown
    np.testing.assert_allclose(prev, exact, rtol=1e-10)


# --------------------------------------------------------------------------------------
# funm_lanczos
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", ["exp", "log", "inv", "sqrt", "callable"])
def test_funm_lanczos_matches_eigh(f, dtype, rng):
    n = 80
    A, U, lam = spd(n, rng, eigenvalues=np.linspace(0.5, 3.0, 80), dtype=dtype)
    b = rng.standard_normal(n).astype(dtype)
    fun = {"exp": np.exp, "log": np.log, "inv": lambda x: 1 / x, "sqrt": np.sqrt}
    g = np.cos if f == "callable" else fun[f]
    exact = U @ (g(lam) * (U.T @ b.astype(np.float64)))
    out = funm_lanczos(A, b, g if f == "callable" else f, 40, rng=rng)
    assert out.shape == (n,) and out.dtype == dtype
    err = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    assert err < (1e-4 if dtype == np.float32 else 1e-9)


def test_funm_lanczos_exact_polynomial_degree(rng):
    A, _, _ = spd(40, rng)
    b = rng.standard_normal(40)
    # k steps are exact for polynomials of degree < k.
    out = funm_lanczos(A, b, lambda x: 1 + 2 * x - x**2, 3, rng=0)
    np.testing.assert_allclose(out, b + 2 * A @ b - A @ (A @ b), rtol=1e-10, atol=1e-10)


def test_funm_lanczos_log_needs_positive_definite(rng):
    A = np.diag(np.linspace(-1.0, 1.0, 10))
    with pytest.raises(ValueError, match="positive definite"):
        funm_lanczos(A, np.ones(10), "log", 10, rng=0)


@pytest.mark.parametrize(
    ("f", "exc", "match"),
    [("cosh", ValueError, "f='cosh' is not one of"), (3, TypeError, "f must be a callable")],
)
def test_funm_lanczos_bad_f(f, exc, match):
    with pytest.raises(exc, match=match):
        funm_lanczos(np.eye(4), np.ones(4), f, 2)


# --------------------------------------------------------------------------------------
# quadform_bounds
# --------------------------------------------------------------------------------------


def exact_form(U, lam, b, g):
    c = U.T @ b
    return float(np.sum(c**2 * g(lam)))


@pytest.mark.parametrize(
    ("f", "g"),
    [
        ("inv", lambda x: 1 / x),
        ("log", np.log),
        ("sqrt", np.sqrt),
        ("exp", np.exp),
    ],
)
def test_quadform_bounds_bracket(f, g, rng):
    n = 120
    A, U, lam = spd(n, rng)
    b = rng.standard_normal(n)
    for k in (1, 3, 6):
        for shift in (0.0, 0.5):
            qb = quadform_bounds(A, b, f, k, spectrum=(1e-2, 10.0), shift=shift, rng=rng)
            assert isinstance(qb, QuadratureBounds) and qb.k == k
            exact = exact_form(U, lam + shift, b, g)
            slack = 1e-12 * abs(exact)
            assert qb.lower - slack <= exact <= qb.upper + slack, (k, shift, qb, exact)


def test_quadform_bounds_sides():
    """Gauss is the lower bound for 1/x and exp, the upper bound for log and sqrt."""
    A = np.diag(np.linspace(1.0, 5.0, 30))
    b = np.ones(30)
    for f, gauss_is_lower in (("inv", True), ("exp", True), ("log", False), ("sqrt", False)):
        qb = quadform_bounds(A, b, f, 2, spectrum=(1.0, 5.0), rng=0)
        assert (qb.lower == qb.gauss) is gauss_is_lower
        assert (qb.upper == qb.radau) is gauss_is_lower


def test_quadform_bounds_breakdown_exact(rng):
    A = np.diag(np.repeat([1.0, 2.0, 4.0], 10))
    b = rng.standard_normal(30)
    qb = quadform_bounds(A, b, "inv", 10, spectrum=(1.0, 4.0), rng=0)
    exact = float(np.sum(b**2 / np.diag(A)))
    assert qb.k == 3
    np.testing.assert_allclose([qb.gauss, qb.radau], exact, rtol=1e-12)


def test_quadform_bounds_callable_needs_signs():
    A = np.diag(np.linspace(1.0, 2.0, 10))
    with pytest.raises(ValueError, match="derivative_signs"):
        quadform_bounds(A, np.ones(10), np.log, 2, spectrum=(1.0, 2.0))
    qb = quadform_bounds(
        A, np.ones(10), lambda x: 1 / x, 2, spectrum=(1.0, 2.0), derivative_signs=(1, -1), rng=0
    )
    assert qb.lower <= np.sum(1 / np.diag(A)) <= qb.upper


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"f": "inv", "spectrum": (0.0, 2.0)}, ValueError, "must be > 0"),
        ({"f": "log", "spectrum": (1.0, 2.0), "shift": -1.5}, ValueError, "must be > 0"),
        ({"f": "inv", "spectrum": (1.5, 2.0)}, ValueError, "must enclose"),
        ({"f": "inv", "spectrum": (2.0, 1.0)}, ValueError, "lmin <= lmax"),
        ({"f": "inv", "spectrum": 3.0}, TypeError, "pair"),
        ({"f": np.log, "spectrum": (1.0, 2.0), "derivative_signs": (0, 1)}, ValueError, r"\+1/-1"),
    ],
    ids=["lambda<=0", "shift", "not-enclosing", "order", "not-pair", "signs"],
)
def test_quadform_bounds_bad_input(kwargs, exc, match):
    A = np.diag(np.linspace(1.0, 2.0, 10))
    f = kwargs.pop("f")
    with pytest.raises(exc, match=match):
        quadform_bounds(A, np.ones(10), f, 3, rng=0, **kwargs)


def test_quadform_bounds_float32(rng):
    A, U, lam = spd(60, rng, eigenvalues=np.linspace(1.0, 4.0, 60), dtype=np.float32)
    b = rng.standard_normal(60).astype(np.float32)
    qb = quadform_bounds(A, b, "inv", 4, spectrum=(1.0, 4.0), rng=0)
    exact = exact_form(U, lam, b.astype(np.float64), lambda x: 1 / x)
    slack = 1e-4 * exact
    assert qb.lower - slack <= exact <= qb.upper + slack
    assert isinstance(qb.gauss, float)


def test_lanczos_batch_dense_rows_product_matches_operator(dtype, rng):
    """Dense A takes the short-and-wide product Q A; an operator takes (A Q^T)^T. Same
    recurrence to rounding, against a plain-NumPy Lanczos reference as well, and one
    pass per step on both."""
    n, m, k = 120, 5, 8
    G = rng.standard_normal((n, n))
    A = (G @ G.T / n + np.eye(n)).astype(dtype)
    Z = rng.choice([-1.0, 1.0], size=(n, m)).astype(dtype)
    dense, oper = _wrap(A, square=True), _wrap(aslinearoperator(A), square=True)
    a1, b1, s1, _, n1 = _lanczos_batch(dense, Z, k, True, dtype)
    a2, b2, s2, _, n2 = _lanczos_batch(oper, Z, k, True, dtype)
    assert n1 == n2 == m * k and dense.n_passes == oper.n_passes == k
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(a1, a2, rtol=tol(dtype, 1e3), atol=tol(dtype, 1e3))
    np.testing.assert_allclose(b1, b2, rtol=tol(dtype, 1e3), atol=tol(dtype, 1e3))
    # Plain NumPy Lanczos with full reorthogonalisation on the first probe.
    A64, q = A.astype(np.float64), Z[:, 0].astype(np.float64) / np.sqrt(n)
    Q, alpha, beta = [q], [], []
    for _ in range(k):
        w = A64 @ Q[-1]
        alpha.append(Q[-1] @ w)
        B = np.array(Q).T
        w -= B @ (B.T @ w)
        w -= B @ (B.T @ w)
        beta.append(np.linalg.norm(w))
        Q.append(w / beta[-1])
    np.testing.assert_allclose(a1[0], alpha, rtol=tol(dtype, 1e4), atol=tol(dtype, 1e4))
    np.testing.assert_allclose(b1[0, : k - 1], beta[: k - 1], rtol=tol(dtype, 1e4))


@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_float32_huge_entries_scale_invariant(scale, rng):
    """float32 operators with entries past sqrt(float32 max) ~ 1.8e19: the squared norms
    overflowed (inf residual norm, a spurious breakdown after one step). Norms are now
    accumulated in float64, so the recurrence is the unscaled one times ``scale``, with
    no warning."""
    n = 20
    A1 = np.diag(np.arange(1.0, n + 1)).astype(np.float32)
    As = (np.diag(np.arange(1.0, n + 1)) * scale).astype(np.float32)
    V = rng.standard_normal((n, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l1, ls = lanczos(A1, V[:, 0], 5, rng=0), lanczos(As, V[:, 0], 5, rng=0)
        b1, bs = block_lanczos(A1, V, 2, rng=0), block_lanczos(As, V, 2, rng=0)
        _, beta_s, steps_s, _, _ = _lanczos_batch(_wrap(As, square=True), V, 4, True, np.float32)
    assert not ls.breakdown and ls.alpha.size == 5 and not bs.breakdown
    np.testing.assert_allclose(ls.alpha / scale, l1.alpha, rtol=1e-4)
    np.testing.assert_allclose(ls.beta / scale, l1.beta, rtol=1e-4)
    np.testing.assert_allclose(bs.T / scale, b1.T, rtol=1e-4, atol=1e-4)
    assert np.all(steps_s == 4) and np.all(np.isfinite(beta_s))
