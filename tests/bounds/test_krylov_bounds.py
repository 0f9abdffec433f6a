"""Bound verification for rnla.krylov: Gauss/Radau brackets, CG rate, quadrature error.

Per-draw inequalities (BOUNDS.md kind 1): each must hold for every seed, with a rounding
slack of a few hundred eps; each has a negative control that violates an assumption.
"""

import itertools

import numpy as np
import pytest

from rnla._bounds_krylov import cg_error_bound, lanczos_quadrature_bound
from rnla.krylov import (
    _NAMED,
    _lanczos_core,
    _radau,
    funm_lanczos,
    lanczos,
    quadform_bounds,
)
from rnla.operators import as_linear_operator

LAMBDAS = np.logspace(-3, 2, 11)


def spectrum_matrix(rng, lam):
    n = lam.size
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (U * lam) @ U.T
    return (A + A.T) / 2, U


def forms(U, lam, b, g):
    c = (U.T @ b) ** 2
    return np.array([np.sum(c * g(lam + s)) for s in LAMBDAS])


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("f", ["inv", "log"])
def test_gauss_radau_bracket_psd_on_lambda_grid(f, k, rng):
    """PSD A with a null space; Radau node at lmin = 0 is valid for every lambda > 0."""
    n, r = 100, 40
    lam = np.concatenate([np.zeros(n - r), np.logspace(-2, 1, r)])
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    g = {"inv": lambda x: 1 / x, "log": np.log}[f]
    exact = forms(U, lam, b, g)
    for s, ex in zip(LAMBDAS, exact, strict=True):
        qb = quadform_bounds(A, b, f, k, spectrum=(0.0, 10.0), shift=s, rng=rng)
        slack = 1e-11 * (abs(ex) + np.sum(b**2) * abs(g(s)))
        assert qb.lower - slack <= ex <= qb.upper + slack, (s, qb, ex)
        if f == "inv":
            assert qb.lower == qb.gauss
        else:
            assert qb.upper == qb.gauss


def test_bracket_width_shrinks_with_k(rng):
    n = 200
    lam = np.logspace(-2, 1, n)
    A, _ = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    widths = []
    for k in (2, 4, 8, 16, 32):
        qb = quadform_bounds(A, b, "inv", k, spectrum=(1e-2, 10.0), shift=0.1, rng=rng)
        widths.append((qb.upper - qb.lower) / qb.upper)
    assert all(w1 > w2 for w1, w2 in itertools.pairwise(widths))
    assert widths[-1] < 1e-5


def _wrong_side(A, b, k, f, node, s):
    st = _lanczos_core(as_linear_operator(A), b, k, True, np.dtype(np.float64))
    fun, lo, _, _ = _NAMED[f]
    return _radau(st.alpha, st.beta[:-1], st.beta[-1], st.beta0, node, fun, f, lo, s)


def test_negative_control_radau_node_on_wrong_side(rng):
    """Radau at lmax is on the Gauss side for 1/x: the bracket must fail somewhere."""
    n = 150
    lam = np.logspace(-2, 1, n)
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    exact = forms(U, lam, b, lambda x: 1 / x)
    violations = 0
    for k in (2, 4):
        for s, ex in zip(LAMBDAS[:6], exact[:6], strict=True):
            radau_wrong = _wrong_side(A, b, k, "inv", 10.0, s)
            # Both rules are now lower bounds: the "upper" one sits clearly below the truth.
            violations += radau_wrong < ex * (1 - 1e-6)
    assert violations == 12


@pytest.mark.parametrize("kappa", [10.0, 1e3])
def test_cg_rate_bound(kappa, rng):
    """||x - x_k||_A <= 2 rho^k ||x||_A and 0 <= b^T A^-1 b - G_k <= 4 rho^2k b^T A^-1 b."""
    n = 200
    lam = np.geomspace(1.0, kappa, n)
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    x = U @ ((U.T @ b) / lam)
    xAx = float(x @ A @ x)
    for k in range(1, 40, 6):
        xk = funm_lanczos(A, b, "inv", k, rng=rng)
        e = x - xk
        err = np.sqrt(max(float(e @ A @ e), 0.0) / xAx)
        bound = cg_error_bound(kappa, k)
        assert err <= bound * (1 + 1e-8) + 1e-12
        qb = quadform_bounds(A, b, "inv", k, spectrum=(1.0, kappa), rng=rng)
        gap = (float(b @ x) - qb.gauss) / float(b @ x)
        assert -1e-12 <= gap <= bound**2 * (1 + 1e-8) + 1e-12


def test_negative_control_cg_rate_with_underestimated_kappa(rng):
    """Using sqrt(kappa) in place of kappa breaks the bound at some k."""
    n, kappa = 200, 1e3
    lam = np.geomspace(1.0, kappa, n)
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    x = U @ ((U.T @ b) / lam)
    xAx = float(x @ A @ x)
    fails = 0
    for k in range(1, 40, 6):
        e = x - funm_lanczos(A, b, "inv", k, rng=rng)
        fails += np.sqrt(float(e @ A @ e) / xAx) > cg_error_bound(np.sqrt(kappa), k)
    assert fails > 0


@pytest.mark.parametrize("f", ["log", "inv", "sqrt", "exp"])
def test_lanczos_quadrature_bound_holds(f, rng):
    n = 200
    a, bmax = 0.5, 20.0
    lam = np.geomspace(a, bmax, n)
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    g = {"log": np.log, "inv": lambda x: 1 / x, "sqrt": np.sqrt, "exp": np.exp}[f]
    exact = float(np.sum((U.T @ b) ** 2 * g(lam)))
    scale = 1e-11 * abs(exact)
    for k in range(1, 16):
        gauss = quadform_bounds(A, b, f, k, spectrum=(a, bmax), rng=rng).gauss
        bound = lanczos_quadrature_bound(k, (a, bmax), f=f) * float(b @ b)
        assert abs(exact - gauss) <= bound + scale, (k, abs(exact - gauss), bound)


def test_negative_control_quadrature_bound_wrong_interval(rng):
    """Claiming a spectrum 10x narrower than the truth makes the bound fail."""
    n = 200
    lam = np.geomspace(0.5, 20.0, n)
    A, U = spectrum_matrix(rng, lam)
    b = rng.standard_normal(n)
    exact = float(np.sum((U.T @ b) ** 2 * np.log(lam)))
    fails = 0
    for k in range(2, 16):
        st = lanczos(A, b, k, rng=rng)
        T = np.diag(st.alpha) + np.diag(st.beta, 1) + np.diag(st.beta, -1)
        th, S = np.linalg.eigh(T)
        gauss = st.beta0**2 * np.sum(S[0] ** 2 * np.log(th))
        fails += abs(exact - gauss) > lanczos_quadrature_bound(k, (5.0, 20.0)) * float(b @ b)
    assert fails > 0


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: cg_error_bound(0.5, 3), ValueError, "kappa=0.5 must be >= 1"),
        (lambda: cg_error_bound(4.0, -1), ValueError, "k=-1 must be >= 0"),
        (lambda: cg_error_bound("4", 1), TypeError, "kappa must be a real number"),
        (lambda: lanczos_quadrature_bound(0, (1, 2)), ValueError, "k=0"),
        (lambda: lanczos_quadrature_bound(3, (0.0, 2.0)), ValueError, "must be > 0"),
        (lambda: lanczos_quadrature_bound(3, (3.0, 2.0)), ValueError, "a <= b"),
        (lambda: lanczos_quadrature_bound(3, (1, 2), f="tan"), ValueError, "f='tan'"),
    ],
    ids=["kappa<1", "k<0", "kappa-type", "k=0", "a<=0", "order", "f"],
)
def test_bound_functions_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bound_values():
    assert cg_error_bound(1.0, 5) == 0.0
    np.testing.assert_allclose(cg_error_bound(9.0, 2), 2 * 0.5**2)
    assert lanczos_quadrature_bound(5, (2.0, 2.0)) == 0.0
    b = [lanczos_quadrature_bound(k, (1.0, 100.0), f="inv") for k in (5, 10, 20)]
    assert b[0] > b[1] > b[2]
