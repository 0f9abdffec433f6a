"""Bound verification for the §4 low-rank attention methods (attention/lowrank.py).

Every deterministic :class:`ErrorBound` returned by ``loki``, ``skyformer`` and
``wildcat`` must hold on every draw, on synthetic and real heads; the probabilistic bound
of ``rsvd_oracle`` may fail with probability at most ``delta``. Negative
controls drop one ingredient of a bound (the ``D_Q, D_K`` scaling of the PSD lift, the
PCA residual of Loki) and show that the weakened "bound" then fails.
"""

import numpy as np
import pytest
import scipy.linalg as sla
from scipy import stats

import attention.lowrank  # noqa: F401  (registers the methods)
from attention import approximate
from attention.bounds import dropped_mass_bound, row_lemma
from attention.exact import reference_attention
from attention.softmax_matrix import SoftmaxMatrix


def _qkv(rng, kind, n=64, m=64, d=16, dv=8, heads=2):
    Q = rng.standard_normal((heads, n, d))
    K = rng.standard_normal((heads, m, d))
    V = rng.standard_normal((heads, m, dv))
    if kind == "sharp":
        Q = 2.0 * Q
    elif kind == "lowrank":
        W = rng.standard_normal((heads, 3, d))
        K = rng.standard_normal((heads, m, 3)) @ W + 0.05 * K
    elif kind == "mild":
        Q = 0.5 * Q
    return Q, K, V


def _actual(res, Q, K, V, **kw):
    Y = reference_attention(*(np.asarray(x, dtype=np.float64) for x in (Q, K, V)), **kw)
    return float(np.linalg.norm(res.output.astype(np.float64) - Y))


DETERMINISTIC = [
    ("loki", {"rank": 4, "top_k": 8}),
    ("loki", {"rank": 8, "top_k": 32}),
    ("loki", {"rank": 16, "top_k": 4}),
    ("skyformer", {"n_landmarks": 16}),
    ("skyformer", {"n_landmarks": 100, "gamma": 0.0}),
    ("skyformer", {"n_landmarks": 32, "gamma": 1e-2}),
    ("wildcat", {"rank": 8}),
    ("wildcat", {"rank": 48}),
    ("wildcat", {"rank": 16, "tau": 1.0}),
    ("wildcat", {"rank": 32, "pivots": "lift"}),
]


@pytest.mark.parametrize("kind", ["mild", "gauss", "sharp", "lowrank"])
@pytest.mark.parametrize(("name", "params"), DETERMINISTIC, ids=lambda x: str(x))
def test_deterministic_bound_holds_synthetic(name, params, kind, seed, dtype):
    rng = np.random.default_rng(seed)
    Q, K, V = (x.astype(dtype) for x in _qkv(rng, kind))
    res = approximate(Q, K, V, name, rng=rng, **params)
    b = res.bound
    assert b.kind == "deterministic" and b.norm == "fro" and b.delta == 0.0
    assert "lemma" in b.assumptions or "Dropped-mass" in b.assumptions
    assert b.value >= _actual(res, Q, K, V)


def test_loki_causal_bound_holds(seed, dtype):
    rng = np.random.default_rng(seed)
    Q, K, V = (x.astype(dtype) for x in _qkv(rng, "sharp", n=40, m=56))
    calib = rng.standard_normal((80, 16))
    res = approximate(Q, K, V, "loki", rng=rng, causal=True, rank=6, top_k=8, calibration=calib)
    assert res.bound.value >= _actual(res, Q, K, V, causal=True)


def test_rsvd_oracle_probabilistic_bound(seed):
    # Failure probability 1e-3 per call; over 20 calls P(>= 2 failures) < 2e-4, so a
    # binomial test at level 1e-3 accepts at most 1 failure.
    rng = np.random.default_rng(seed)
    delta, R = 1e-3, 20
    assert stats.binom.sf(1, R, delta) < 1e-3
    failures = 0
    for t in range(R):
        Q, K, V = _qkv(rng, ("mild", "gauss", "lowrank")[t % 3], n=48, m=40, heads=1)
        res = approximate(Q, K, V, "rsvd_oracle", rng=rng, rank=6, delta=delta)
        assert res.bound.kind == "probabilistic"
        assert res.bound.delta == pytest.approx(delta)
        failures += res.bound.value < _actual(res, Q, K, V)
    assert failures <= 1


# ---------------------------------------------------------------------------------------
# real heads
# ---------------------------------------------------------------------------------------


def _sample(name):
    data = pytest.importorskip("attention.data")
    try:
        return data.load_sample(name)
    except (FileNotFoundError, OSError, ValueError) as exc:  # pragma: no cover
        pytest.skip(f"sample {name!r} not available: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("loki", {}),
        ("loki", {"rank": 16, "top_k": 128}),
        ("skyformer", {}),
        ("wildcat", {}),
        ("wildcat", {"rank": 256}),
        ("rsvd_oracle", {}),
    ],
    ids=lambda x: str(x),
)
def test_bound_holds_real_minilm(name, params, seed):
    s = _sample("minilm")
    Q, K, V = s.Q[::4], s.K[::4], s.V[::4]  # 3 heads spread over the sample
    res = approximate(Q, K, V, name, rng=seed, scale=s.scale, **params)
    assert res.bound.value >= _actual(res, Q, K, V, scale=s.scale)


@pytest.mark.slow
def test_loki_bound_holds_real_smollm2(seed):
    s = _sample("smollm2")
    Q, K, V = s.Q[:2], s.K[:2], s.V[:2]
    res = approximate(
        Q, K, V, "loki", rng=seed, causal=True, scale=s.scale, calibration=s.K[-1], rank=16
    )
    assert res.bound.value >= _actual(res, Q, K, V, scale=s.scale, causal=True)


# ---------------------------------------------------------------------------------------
# negative controls
# ---------------------------------------------------------------------------------------


def _uniform_lift_factor(sm, rng, r):
    lift = sm.psd_lift()
    n_all = lift.matrix.shape[0]
    S = np.sort(rng.choice(n_all, r, replace=False))
    R = lift.matrix.rows(S)
    L = sla.cholesky(R[:, S] + 1e-10 * np.eye(r), lower=True)
    return sla.solve_triangular(L, R, lower=True).T


def test_negative_control_lift_without_diagonal_scaling(seed):
    """Dropping D_Q, D_K from |E_ij| <= sqrt(E_ii E_jj) gives a 'bound' that fails."""
    rng = np.random.default_rng(seed)
    fails = 0
    for _ in range(4):
        Q, K, V = _qkv(rng, "sharp", heads=1)
        q, k, v = Q[0], K[0], V[0]
        sm = SoftmaxMatrix(q, k, stabilized=False)
        F = _uniform_lift_factor(sm, rng, 24)
        fac = sm.lift_to_attention(F)
        num = fac.U @ (fac.W.T @ np.column_stack([v, np.ones(len(v))]))
        z = num[:, -1]
        y = num[:, :-1] / z[:, None]
        actual = np.linalg.norm(y - reference_attention(q, k, v), axis=1)
        good = row_lemma(fac.row_l1_bounds, z, v).rows
        assert np.all(good >= actual)
        e = fac.residual_diag
        naive_l1 = np.sqrt(e[:64]) * np.sum(np.sqrt(e[64:]))  # G's residual, no D_Q, D_K
        naive = row_lemma(naive_l1, z, v).rows
        fails += np.any(naive < actual)
    assert fails >= 1


def test_negative_control_loki_without_pca_residual(seed):
    """Using the approximate scores for the dropped mass (no PCA residual) fails."""
    rng = np.random.default_rng(seed)
    d, r, top_k, fails = 16, 2, 4, 0
    for _ in range(4):
        Q, K, V = _qkv(rng, "sharp", heads=1)
        q, k, v = Q[0], K[0], V[0]
        P0 = np.linalg.qr(rng.standard_normal((d, r)))[0]
        calib = rng.standard_normal((50, d)) @ P0 @ P0.T  # rank r: PCA recovers span(P0)
        res = approximate(Q, K, V, "loki", rng=rng, rank=r, top_k=top_k, calibration=calib)
        y = res.output[0]
        Y = reference_attention(q, k, v)
        actual = np.linalg.norm(y - Y, axis=1)
        s = 0.25 * q @ k.T
        s_apx = 0.25 * (q @ P0) @ (k @ P0).T
        idx = np.argpartition(-s_apx, top_k - 1, axis=1)[:, :top_k]
        z_sel = np.take_along_axis(np.exp(s), idx, axis=1).sum(1)
        dropped_apx = np.exp(s_apx)
        np.put_along_axis(dropped_apx, idx, 0.0, axis=1)
        D = dropped_apx.sum(1)
        naive = dropped_mass_bound(D / (z_sel + D), v, Y_tilde=y).rows
        assert np.linalg.norm(actual) <= res.bound.value
        fails += np.any(naive < actual)
    assert fails >= 1
