"""Bound verification for skeleton decompositions (BOUNDS.md, kind 1: per-draw).

* HMT Lemma 5.1 (ID on an accurate subspace), in the form used by ``rnla.interpolative``
  and in HMT's original row-extraction form, on every draw;
* Gu-Eisenstat Theorem 3.2 (strong RRQR), with the growth ``rho`` measured on the
  computed factorisation, on every draw - and Kahan's matrix as the documented limit of
  plain QRCP (the bound with ``f = 2`` fails);
* the deterministic CUR inequality for all three selection methods, on every draw.

Test matrices: exponential, polynomial, S-shaped and low-rank-plus-noise spectra with
Haar singular vectors, and the Gaussian kernel matrix of scikit-learn's digits.
Negative controls: the ID error exceeds ``eps`` (the factor ``1 + ||X||`` is needed), the
CUR error exceeds each single term (both terms are needed), a cross-approximation core
breaks the CUR bound (its assumption is necessary), 90% of the Gu-Eisenstat constant
fails (it is sharp), and Kahan's matrix breaks the ``f = 2`` constants for QRCP.
"""

import numpy as np
import pytest
import scipy.linalg as sla

from rnla._bounds_cur import CURBound, cur_bound, id_bound, rrqr_growth, strong_rrqr_bound
from rnla.lowrank import range_finder
from rnla.operators import KernelMatrix
from rnla.skeleton import cur, interpolative

SLACK = 1 + 1e-9  # rounding in the computed norms (float64 throughout)
SPECTRA = ["exponential", "polynomial", "s_shaped", "low_rank_noise", "digits"]
M, N, K = 120, 90, 8


def _spectrum(name, n, k):
    j = np.arange(n)
    return {
        "exponential": np.exp(-j / 2.0),
        "polynomial": 1.0 / (1.0 + j) ** 2,
        "s_shaped": 1.0 / (1.0 + np.exp((j - k) / 2.0)),
        "low_rank_noise": np.where(j < k, 1.0, 1e-3),
    }[name]


_DIGITS = {}


def _digits_kernel():
    """Gaussian kernel (bandwidth 2) of the first 300 scikit-learn digits, scaled to [0, 1]."""
    if "K" not in _DIGITS:
        from sklearn.datasets import load_digits

        X = load_digits().data[:300] / 16.0
        km = KernelMatrix(X, bandwidth=2.0)
        _DIGITS["K"] = km.rows(np.arange(X.shape[0]))
    return _DIGITS["K"]


def make_matrix(name, rng):
    """(A, k) for a named spectrum (Haar singular vectors drawn from ``rng``)."""
    if name == "digits":
        return _digits_kernel(), 20
    s = _spectrum(name, N, K)
    U, _ = np.linalg.qr(rng.standard_normal((M, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    return (U * s) @ V.T, K


def norm(E, ord):
    return float(np.linalg.norm(E)) if ord == "fro" else float(sla.svdvals(E)[0])


def kahan(n, theta=1.2, pert=25.0):
    """Kahan's matrix with the usual diagonal perturbation so that QRCP does not pivot."""
    s, c = np.sin(theta), np.cos(theta)
    R = np.eye(n) + np.triu(-c * np.ones((n, n)), 1)
    R = np.diag(s ** np.arange(n)) @ R
    return R + pert * np.finfo(float).eps * np.diag(np.arange(n, 0, -1.0))


# ---------------------------------------------------------------------------------------
# ID: HMT Lemma 5.1
# ---------------------------------------------------------------------------------------


def _id_quantities(A, res, axis, ord):
    """(err, eps, ||X||_2, max |T|) of an ID, in the column orientation."""
    if axis == 0:
        A, X = A.T, res.X.T
    else:
        X = res.X
    k, n = X.shape
    err = norm(A - A[:, res.indices] @ X, ord)
    Q = sla.orth(X.T)  # orthonormal basis of the row space of X
    eps = norm(A - (A @ Q) @ Q.T, ord)
    free = np.setdiff1d(np.arange(n), res.indices)
    growth = float(np.abs(X[:, free]).max()) if free.size else 0.0
    return err, eps, float(sla.svdvals(X)[0]), growth, k, n


@pytest.mark.parametrize("ord", ["fro", 2])
@pytest.mark.parametrize("axis", [1, 0], ids=["cols", "rows"])
@pytest.mark.parametrize("name", SPECTRA)
def test_id_bound_per_draw(name, axis, ord, rng):
    A, k = make_matrix(name, rng)
    res = interpolative(A, k, axis=axis, rng=rng)
    err, eps, norm_x, growth, k, n = _id_quantities(A, res, axis, ord)
    # eps <= ||A - A_J X|| <= (1 + ||X||) eps <= [1 + sqrt(1 + f^2 k (n - k))] eps.
    assert eps <= err * SLACK
    assert err <= (1 + norm_x) * eps * SLACK
    assert err <= id_bound(eps, k, n, growth=growth) * SLACK
    # Tightness: the structural bound is within a small factor of the error.
    assert err >= 0.1 * (1 + norm_x) * eps


@pytest.mark.parametrize("name", SPECTRA)
def test_id_bound_negative_control(name, rng):
    # Without the factor (1 + ||X||) the "bound" eps fails on every draw: the error of
    # the ID is strictly larger than the distance to the row space of X (measured
    # ratio >= 1.08 over seeds 0..99 in the Frobenius norm).
    A, k = make_matrix(name, rng)
    res = interpolative(A, k, rng=rng)
    err, eps, *_ = _id_quantities(A, res, 1, "fro")
    assert err > 1.02 * eps


@pytest.mark.parametrize("name", SPECTRA)
def test_hmt_lemma_5_1_row_extraction(name, rng):
    # HMT's own setting: Q (m x k) from the range finder, exact row ID Q = X Q[J, :],
    # then ||A - X A[J, :]|| <= [1 + sqrt(1 + f^2 k (m - k))] ||A - Q Q^T A||.
    A, k = make_matrix(name, rng)
    m = A.shape[0]
    Q = range_finder(A, k, rng=rng)
    res = interpolative(Q, k, axis=0, rng=rng)  # rank k of an m x k matrix: exact QRCP
    np.testing.assert_allclose(res.X @ Q[res.indices], Q, atol=1e-10)
    for ord in ("fro", 2):
        eps = norm(A - Q @ (Q.T @ A), ord)
        err = norm(A - res.X @ A[res.indices], ord)
        free = np.setdiff1d(np.arange(m), res.indices)
        growth = float(np.abs(res.X[free]).max())
        assert err <= id_bound(eps, k, m, growth=growth) * SLACK
        assert err <= id_bound(eps, k, m, growth=max(2.0, growth)) * SLACK


# ---------------------------------------------------------------------------------------
# strong RRQR: Gu-Eisenstat Theorem 3.2
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pivoting", [True, False], ids=["qrcp", "random-order"])
@pytest.mark.parametrize("name", SPECTRA)
def test_strong_rrqr_bound_with_measured_growth(name, pivoting, rng):
    # The theorem holds for ANY column order once f >= rho(R, k) is measured; random
    # column orders (no pivoting) give large rho and must still satisfy it.
    A, k = make_matrix(name, rng)
    n = A.shape[1]
    if pivoting:
        R = sla.qr(A, mode="r", pivoting=True)[0]
    else:
        R = sla.qr(A[:, rng.permutation(n)], mode="r")[0]
    R = R[: min(A.shape)]
    sigma = sla.svdvals(A)
    f = max(1.0, rrqr_growth(R, k))
    s22 = sla.svdvals(R[k:, k:])
    s11 = sla.svdvals(R[:k, :k])
    factor = strong_rrqr_bound(1.0, k, n, f=f)
    assert s22[0] <= strong_rrqr_bound(sigma[k], k, n, f=f) * SLACK
    assert np.all(s22 <= sigma[k : k + s22.size] * factor * SLACK + 1e-300)
    assert np.all(s11 * factor * SLACK >= sigma[:k])


def test_strong_rrqr_constant_is_sharp():
    # Negative control for the constant: R = [[1, a], [0, b]] with b -> 0 has
    # rho = sqrt(a^2 + b^2) and |b| / sigma_2 = sigma_1 -> sqrt(1 + rho^2), so 90% of
    # the Gu-Eisenstat constant already fails: the test above can fail.
    R = np.array([[1.0, 10.0], [0.0, 1e-3]])
    rho = rrqr_growth(R, 1)
    sigma = sla.svdvals(R)
    assert abs(R[1, 1]) <= strong_rrqr_bound(sigma[1], 1, 2, f=rho) * SLACK
    assert abs(R[1, 1]) > 0.9 * strong_rrqr_bound(sigma[1], 1, 2, f=rho)


def test_kahan_documents_qrcp_limit():
    # Plain QRCP does not pivot on Kahan's matrix, its coefficients grow exponentially,
    # and the strong-RRQR (f = 2) and HMT (f = 2) constants both fail for it.
    n = 30
    A = kahan(n)
    k = n - 1
    R, P = sla.qr(A, mode="r", pivoting=True)
    np.testing.assert_array_equal(P, np.arange(n))
    rho = rrqr_growth(R, k)
    sigma = sla.svdvals(A)
    err = abs(R[k, k])  # ||A - A_J X||_2 of the QRCP column ID
    assert rho > 100
    assert err > strong_rrqr_bound(sigma[k], k, n, f=2.0)
    assert err <= strong_rrqr_bound(sigma[k], k, n, f=rho) * SLACK

    res = interpolative(A, k, rng=0)  # k + oversample >= n: deterministic QRCP
    err_id, eps, _, growth, _, _ = _id_quantities(A, res, 1, 2)
    assert growth > 100
    assert err_id > id_bound(eps, k, n, growth=2.0)
    assert err_id <= id_bound(eps, k, n, growth=growth) * SLACK


# ---------------------------------------------------------------------------------------
# CUR: ||A - CUR|| <= ||(I - CC^+)A|| + ||A(I - R^+R)||
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["qrcp", "leverage", "deim"])
@pytest.mark.parametrize("name", SPECTRA)
def test_cur_bound_per_draw(name, method, rng):
    A, k = make_matrix(name, rng)
    res = cur(A, k, method=method, rng=rng)
    C, R = A[:, res.cols], A[res.rows, :]
    E = A - C @ res.U @ R
    for ord in ("fro", 2):
        b = cur_bound(A, C, R, norm=ord)
        err = norm(E, ord)
        assert err <= b.value * SLACK
        # Each term alone is a lower bound (orthogonal decompositions of the residual).
        assert max(b.column_term, b.row_term) <= err * SLACK
        assert err >= 0.5 * b.value  # tightness: max(a, b) >= (a + b) / 2
    # Frobenius refinement: err^2 = col^2 + ||CC^+ A (I - R^+R)||_F^2 <= col^2 + row^2.
    b = cur_bound(A, C, R, norm="fro")
    err = np.linalg.norm(E)
    assert err <= np.hypot(b.column_term, b.row_term) * SLACK
    # Negative control: dropping either term breaks the bound on every draw.
    assert err > b.column_term * (1 + 1e-6)
    assert err > b.row_term * (1 + 1e-6)


def test_cur_bound_fails_for_other_cores():
    # The bound assumes U = C^+ A R^+. The cross-approximation core A[I, J]^{-1} on a
    # nearly singular intersection violates it: the assumption is necessary.
    eps = 1e-3
    A = np.array([[eps, 1.0], [1.0, 0.0]])
    C, R = A[:, [0]], A[[0], :]
    cross = np.linalg.norm(A - C @ np.linalg.solve(A[:1, :1], R))  # = 1 / eps
    assert cross > 100 * cur_bound(A, C, R).value


# ---------------------------------------------------------------------------------------
# bound functions: values, references and assumptions
# ---------------------------------------------------------------------------------------


def test_cur_bound_matches_pinv_reference(rng):
    A = (
        rng.standard_normal((30, 25))
        @ np.diag(0.6 ** np.arange(25))
        @ rng.standard_normal((25, 20))
    )
    C, R = A[:, :5], A[:4, :]
    b = cur_bound(A, C, R, norm="fro")
    col = np.linalg.norm(A - C @ np.linalg.pinv(C) @ A)
    row = np.linalg.norm(A - A @ np.linalg.pinv(R) @ R)
    assert isinstance(b, CURBound) and b.norm == "fro"
    np.testing.assert_allclose([b.column_term, b.row_term, b.value], [col, row, col + row])
    b2 = cur_bound(A, C, R, norm=2)
    np.testing.assert_allclose(b2.column_term, np.linalg.norm(A - C @ np.linalg.pinv(C) @ A, 2))


def test_cur_bound_float32_input(rng):
    # Inputs follow the dtype contract; the norms are computed in float64.
    A = rng.standard_normal((20, 15)).astype(np.float32)
    b32 = cur_bound(A, A[:, :4], A[:3, :])
    b64 = cur_bound(A.astype(np.float64), A[:, :4].astype(np.float64), A[:3, :].astype(np.float64))
    assert isinstance(b32.value, float)
    np.testing.assert_allclose(b32.value, b64.value, rtol=1e-12)


def test_id_bound_and_rrqr_values():
    assert id_bound(0.5, 3, 3) == 1.0  # k = n: 2 eps
    assert id_bound(1.0, 2, 10, growth=0.0) == 2.0
    np.testing.assert_allclose(id_bound(1.0, 2, 10), 1 + np.sqrt(65))
    np.testing.assert_allclose(strong_rrqr_bound(2.0, 2, 10, f=1.0), 2 * np.sqrt(17))
    # rho of a hand-computable 2 x 2 factor: T = 1/2, gamma = 1/2, 1/omega = 1/2.
    np.testing.assert_allclose(rrqr_growth(np.array([[2.0, 1.0], [0.0, 0.5]]), 1), np.sqrt(0.3125))
    assert rrqr_growth(np.triu(np.ones((3, 3))), 3) == 0.0
    assert rrqr_growth(np.array([[0.0, 1.0], [0.0, 1.0]]), 1) == np.inf


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: id_bound(-1.0, 1, 5), ValueError, "eps=-1.0 must be a finite number >= 0"),
        (lambda: id_bound(np.nan, 1, 5), ValueError, "eps=nan"),
        (lambda: id_bound(1.0, 6, 5), ValueError, "rank=6 must satisfy 1 <= rank <= 5"),
        (lambda: id_bound(1.0, 0, 5), ValueError, "rank=0"),
        (lambda: id_bound(1.0, 1, 5, growth=-2), ValueError, "growth=-2.0"),
        (lambda: id_bound("a", 1, 5), TypeError, "eps must be a real number"),
        (lambda: strong_rrqr_bound(1.0, 1, 5, f=0.5), ValueError, "f=0.5 must be >= 1"),
        (lambda: strong_rrqr_bound(-1.0, 1, 5), ValueError, "sigma_next=-1.0"),
        (lambda: rrqr_growth(np.ones((3, 3)), 1), ValueError, "upper trapezoidal"),
        (lambda: rrqr_growth(np.eye(3), 4), ValueError, "rank=4 must satisfy"),
        (
            lambda: cur_bound(np.ones((4, 3)), np.ones((5, 1)), np.ones((1, 3))),
            ValueError,
            r"C must have m=4 rows",
        ),
        (
            lambda: cur_bound(np.ones((4, 3)), np.ones((4, 1)), np.ones((1, 2))),
            ValueError,
            r"R must have n=3 columns",
        ),
        (
            lambda: cur_bound(np.ones((4, 3)), np.ones((4, 1)), np.ones((1, 3)), norm=1),
            ValueError,
            "norm=1 is not one of 'fro', 2",
        ),
        (
            lambda: cur_bound(np.full((2, 2), np.nan), np.ones((2, 1)), np.ones((1, 2))),
            ValueError,
            "finite",
        ),
    ],
)
def test_bound_assumptions_enforced(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
