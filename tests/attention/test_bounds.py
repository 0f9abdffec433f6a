"""Tests for attention.bounds: row lemma, dropped-mass bound, KL bound, certify basics."""

import math

import numpy as np
import pytest

from attention import approximate
from attention.bounds import (
    Certificate,
    certify,
    dropped_mass_bound,
    kl_confidence_bound,
    row_lemma,
    value_radius,
)
from attention.exact import reference_attention


def _softmax_rows(Q, K, scale=None):
    s = 1 / np.sqrt(Q.shape[-1]) if scale is None else scale
    S = Q @ np.swapaxes(K, -1, -2) * s
    A = np.exp(S - S.max(axis=-1, keepdims=True))  # stabilised rows, same lemma
    return A


def _synthetic(rng, G=3, n=40, m=30, d=8, dv=5, spread=1.5):
    Q = spread * rng.standard_normal((G, n, d))
    K = rng.standard_normal((G, m, d))
    V = rng.standard_normal((G, m, dv)) + 2.0  # off-centre values
    return Q, K, V


def _real_or_skip():
    from tests.attention.test_softmax_matrix import _load_real_head

    return _load_real_head()


# --------------------------------------------------------------------------- row lemma


@pytest.mark.parametrize("perturbation", ["noise", "lowrank", "sparse"])
@pytest.mark.parametrize("use_y", [False, True], ids=["radius", "exactY"])
def test_row_lemma_holds_per_row(rng, perturbation, use_y):
    Q, K, V = _synthetic(rng)
    A = _softmax_rows(Q, K)
    if perturbation == "noise":
        At = A * (1 + 0.2 * rng.uniform(-1, 1, A.shape))
    elif perturbation == "lowrank":
        U, s, Vt = np.linalg.svd(A)
        At = (U[..., :4] * s[..., None, :4]) @ Vt[..., :4, :]  # may have negative entries
    else:
        At = np.where(rng.random(A.shape) < 0.7, A, 0.0)
        At[..., 0] = A[..., 0]  # keep z~ > 0
    z = A.sum(-1)
    zt = At.sum(-1)
    Y = A @ V / z[..., None]
    Yt = At @ V / zt[..., None]
    err_l1 = np.abs(A - At).sum(-1)
    b = row_lemma(err_l1, zt, V, Y=Y if use_y else None)
    actual = np.linalg.norm(Yt - Y, axis=-1)
    assert b.rows.shape == actual.shape
    assert (actual <= b.rows * (1 + 1e-12) + 1e-13).all()
    assert np.linalg.norm(Yt - Y) <= b.fro.value * (1 + 1e-12)
    assert actual.max() <= b.row_max.value * (1 + 1e-12)
    assert b.fro.kind == "deterministic" and b.fro.delta == 0.0 and b.row_max.norm == "row_max"
    if use_y:
        no_y = row_lemma(err_l1, zt, V)
        assert (b.rows <= no_y.rows * (1 + 1e-12)).all()


def test_row_lemma_is_attained_negative_control():
    """Equality case: a half-size bound (a wrong constant) fails."""
    V = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    a = np.array([[1.0, 1.0, 1.0]])  # y = 0
    at = a.copy()
    at[0, 0] += 0.5  # all the error on the key farthest from y
    y = a @ V / a.sum()
    yt = at @ V / at.sum()
    actual = float(np.linalg.norm(yt - y))
    b = row_lemma(np.abs(a - at).sum(-1), at.sum(-1), V, Y=y)
    assert actual == pytest.approx(b.rows[0], rel=1e-12)  # tight
    assert actual > 0.5 * b.rows[0]  # a halved bound would be violated


def test_row_lemma_stabilised_scale_invariance(rng):
    Q, K, V = _synthetic(rng, G=1)
    A = _softmax_rows(Q, K)[0]
    At = A * (1 + 0.1 * rng.standard_normal(A.shape))
    c = np.exp(rng.uniform(-5, 5, A.shape[0]))[:, None]
    b1 = row_lemma(np.abs(A - At).sum(-1), At.sum(-1), V[0])
    b2 = row_lemma(np.abs(c * A - c * At).sum(-1), (c * At).sum(-1), V[0])
    np.testing.assert_allclose(b1.rows, b2.rows, rtol=1e-12)


def test_row_lemma_real_head():
    Q, K, V, scale = _real_or_skip()
    rng = np.random.default_rng(0)
    A = _softmax_rows(Q, K, scale)
    At = A * (1 + 0.3 * rng.uniform(-1, 1, A.shape))
    Y = A @ V / A.sum(-1, keepdims=True)
    Yt = At @ V / At.sum(-1, keepdims=True)
    b = row_lemma(np.abs(A - At).sum(-1), At.sum(-1), V, Y=Y)
    assert (np.linalg.norm(Yt - Y, axis=-1) <= b.rows * (1 + 1e-12)).all()


def test_row_lemma_edge_and_bad_input():
    V = np.ones((3, 2))
    b = row_lemma(np.array([0.0, 1.0]), np.array([0.0, 0.0]), V)
    assert b.rows[0] == 0.0 and math.isinf(b.rows[1])
    err = np.array([0.1, 0.2])
    err0 = err.copy()
    with pytest.raises(ValueError, match=">= 0"):
        row_lemma(-err, np.ones(2), V)
    with pytest.raises(ValueError, match="NaN"):
        row_lemma(np.array([np.nan, 0.0]), np.ones(2), V)
    with pytest.raises(ValueError, match="do not broadcast"):
        row_lemma(np.ones((4, 2)), np.ones((4, 2)), np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match="Y must have shape"):
        row_lemma(err, np.ones(2), V, Y=np.ones((3, 2)))
    with pytest.raises(TypeError, match="complex"):
        row_lemma(err, np.ones(2), V + 1j)
    np.testing.assert_array_equal(err, err0)


def test_value_radius_contains_convex_combinations(rng):
    V = rng.standard_normal((2, 20, 4)) * 3 + 1
    c, R = value_radius(V)
    W = rng.dirichlet(np.full(20, 0.3), size=(2, 50))
    Y = W @ V
    assert (np.linalg.norm(Y - c[:, None, :], axis=-1) <= R[:, None]).all()
    assert c.shape == (2, 4) and R.shape == (2,)


# ----------------------------------------------------------------------- dropped mass


@pytest.mark.parametrize("use_yt", [False, True], ids=["2R", "R+dist"])
def test_dropped_mass_topk_holds(rng, use_yt):
    Q, K, V = _synthetic(rng, spread=2.5)
    A = _softmax_rows(Q, K)
    P = A / A.sum(-1, keepdims=True)
    k = 6
    kth = np.sort(A, axis=-1)[..., -k][..., None]
    At = np.where(A >= kth, A, 0.0)
    eps = 1 - At.sum(-1) / A.sum(-1)
    Y = P @ V
    Yt = At @ V / At.sum(-1, keepdims=True)
    b = dropped_mass_bound(eps, V, Y_tilde=Yt if use_yt else None)
    actual = np.linalg.norm(Yt - Y, axis=-1)
    assert (actual <= b.rows * (1 + 1e-12) + 1e-14).all()
    # Never weaker than the general lemma with ||a - ~a||_1 / ~z = eps / (1 - eps).
    lemma = row_lemma(np.abs(A - At).sum(-1), At.sum(-1), V)
    assert (b.rows <= lemma.rows * (1 + 1e-12)).all()


def test_dropped_mass_constant_two_is_needed():
    """Kept keys at +v, dropped at -v: the error equals 2 eps R; constant 1 fails."""
    V = np.array([[1.0], [1.0], [-1.0], [-1.0]])
    a = np.array([[3.0, 3.0, 0.5, 0.5]])
    at = np.array([[3.0, 3.0, 0.0, 0.0]])
    eps = 1 - at.sum() / a.sum()
    y = a @ V / a.sum()
    yt = at @ V / at.sum()
    actual = float(np.linalg.norm(y - yt))
    b = dropped_mass_bound(np.array([eps]), V)
    assert actual == pytest.approx(b.rows[0], rel=1e-9)
    _, R = value_radius(V)
    assert actual > eps * R[()] * 1.5  # "eps * R" (constant 1) is violated


def test_dropped_mass_real_head():
    Q, K, V, scale = _real_or_skip()
    A = _softmax_rows(Q, K, scale)
    kth = np.sort(A, axis=-1)[..., -8][..., None]
    At = np.where(A >= kth, A, 0.0)
    eps = 1 - At.sum(-1) / A.sum(-1)
    Y = A @ V / A.sum(-1, keepdims=True)
    Yt = At @ V / At.sum(-1, keepdims=True)
    b = dropped_mass_bound(eps, V, Y_tilde=Yt)
    assert (np.linalg.norm(Yt - Y, axis=-1) <= b.rows * (1 + 1e-12)).all()


def test_dropped_mass_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropped_mass_bound(np.array([1.5]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="Y_tilde"):
        dropped_mass_bound(np.array([0.5]), np.ones((2, 1)), Y_tilde=np.ones((2, 2)))


# -------------------------------------------------------------------------- KL bound


def test_kl_bound_closed_forms_and_order():
    n, delta = 50, 0.05
    assert kl_confidence_bound(0.0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-9)
    assert kl_confidence_bound(1.0, n, delta, upper=False) == pytest.approx(
        delta ** (1 / n), rel=1e-9
    )
    assert kl_confidence_bound(1.0, n, delta) == 1.0
    assert kl_confidence_bound(0.0, n, delta, upper=False) == 0.0
    for x in (0.01, 0.2, 0.5, 0.9):
        up = kl_confidence_bound(x, n, delta)
        lo = kl_confidence_bound(x, n, delta, upper=False)
        # Pinsker: kl >= 2 t^2, so the KL bound is inside Hoeffding's.
        hoeff = math.sqrt(math.log(1 / delta) / (2 * n))
        assert lo <= x <= up
        assert up <= min(1.0, x + hoeff) + 1e-12 and lo >= max(0.0, x - hoeff) - 1e-12
    assert kl_confidence_bound(0.1, 4 * n, delta) < kl_confidence_bound(0.1, n, delta)


def test_kl_bound_bad_input():
    with pytest.raises(ValueError, match="mean"):
        kl_confidence_bound(1.5, 10, 0.1)
    with pytest.raises(ValueError, match="delta"):
        kl_confidence_bound(0.5, 10, 1.0)
    with pytest.raises(TypeError, match="n must be an integer"):
        kl_confidence_bound(0.5, 10.0, 0.1)


# ---------------------------------------------------------------------------- certify


@pytest.mark.parametrize(
    ("causal", "masked", "gqa"),
    [(False, False, False), (True, False, False), (False, True, False), (True, False, True)],
    ids=["full", "causal", "mask", "causal-gqa"],
)
def test_certify_exact_when_all_rows(rng, dtype, causal, masked, gqa):
    hq, hk = (4, 2) if gqa else (2, 2)
    n, m, d, dv = 12, 15, 4, 3
    Q = rng.standard_normal((hq, n, d)).astype(dtype)
    K = rng.standard_normal((hk, m, d)).astype(dtype)
    V = rng.standard_normal((hk, m, dv)).astype(dtype)
    mask = rng.random((n, m)) < 0.7 if masked else None
    if masked:
        mask[3] = False  # a fully masked row: zero output
    Y = reference_attention(Q, K, V, causal=causal, mask=mask)
    Yt = Y + 0.01 * rng.standard_normal(Y.shape).astype(dtype)
    cert = certify(Yt, Q, K, V, n_rows=10_000, causal=causal, mask=mask, rng=rng)
    true = np.linalg.norm((Yt - Y).astype(np.float64))
    assert isinstance(cert, Certificate)
    assert cert.delta == 0.0 and cert.n_rows == hq * n
    rt = 1e-4 if dtype == np.float32 else 1e-10
    assert cert.fro == pytest.approx(true, rel=rt)
    assert cert.relative_fro == pytest.approx(true / np.linalg.norm(Y.astype(np.float64)), rel=rt)
    assert (cert.row_errors <= cert.row_range * (1 + 1e-12)).all()
    assert cert.as_error_bound().kind == "deterministic"


def test_certify_sampled_fields(rng):
    Q, K, V = _synthetic(rng, G=2, n=64, m=64)
    Y = reference_attention(Q, K, V)
    Yt = Y + 0.05 * rng.standard_normal(Y.shape)
    cert = certify(Yt, Q, K, V, n_rows=32, delta=0.05, rng=rng)
    assert cert.n_rows == 32 and cert.delta == 0.05
    assert cert.slices.shape == cert.rows.shape == cert.row_errors.shape == (32,)
    assert len(set(zip(cert.slices.tolist(), cert.rows.tolist(), strict=True))) == 32
    np.testing.assert_allclose(
        cert.row_errors, np.linalg.norm(Yt - Y, axis=-1)[cert.slices, cert.rows], rtol=1e-10
    )
    assert cert.exact_rows_cost.kernel_evals == 32 * 64
    assert cert.fro >= cert.fro_estimate
    eb = cert.as_error_bound()
    assert eb.kind == "probabilistic" and eb.delta == 0.05 and eb.norm == "fro"
    again = certify(Yt, Q, K, V, n_rows=32, delta=0.05, rng=7)
    same = certify(Yt, Q, K, V, n_rows=32, delta=0.05, rng=7)
    np.testing.assert_array_equal(again.rows, same.rows)
    assert again.fro == same.fro


def test_certify_accepts_attention_approx(rng):
    Q, K, V = _synthetic(rng, G=1, n=30, m=30)
    methods = __import__("attention").methods()
    if not methods:
        pytest.skip("no registered methods yet")
    name = methods[0].name
    approx = approximate(Q, K, V, name, rng=0)
    cert = certify(approx, Q, K, V, n_rows=8, rng=0)
    assert np.isfinite(cert.fro)


def test_certify_bad_input(rng):
    Q, K, V = _synthetic(rng, G=1, n=10, m=10)
    Y = reference_attention(Q, K, V)
    Y0 = Y.copy()
    with pytest.raises(ValueError, match="must have shape"):
        certify(Y[:, :5], Q, K, V)
    with pytest.raises(ValueError, match="delta"):
        certify(Y, Q, K, V, delta=1.0)
    with pytest.raises(TypeError, match="n_rows"):
        certify(Y, Q, K, V, n_rows=2.5)
    with pytest.raises(ValueError, match="n_rows"):
        certify(Y, Q, K, V, n_rows=0)
    with pytest.raises(ValueError, match="same last dimension"):
        certify(Y, Q, K[..., :3], V)
    np.testing.assert_array_equal(Y, Y0)
