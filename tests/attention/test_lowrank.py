"""Tests of the §4 low-rank attention methods (attention/lowrank.py)."""

import numpy as np
import pytest
from scipy.special import logsumexp

import attention.lowrank as lr
from attention import approximate, methods, relative_error
from attention.exact import reference_attention
from rnla import sketch as rsketch
from rnla._validation import ConvergenceWarning
from tests.conftest import tol

NAMES = ("loki", "skyformer", "wildcat", "rsvd_oracle", "linformer", "nystromformer", "csalr")
RANDOMIZED = ("skyformer", "wildcat", "rsvd_oracle", "linformer")


def _qkv(rng, n=48, m=48, d=16, dv=8, heads=2, q_scale=1.0):
    Q = q_scale * rng.standard_normal((heads, n, d))
    K = rng.standard_normal((heads, m, d))
    V = rng.standard_normal((heads, m, dv))
    return Q, K, V


def _exact(Q, K, V, **kw):
    return reference_attention(*(np.asarray(x, dtype=np.float64) for x in (Q, K, V)), **kw)


def test_registry_entries():
    info = {m.name: m for m in methods()}
    for name in NAMES:
        assert info[name].family == "low-rank"
    assert info["loki"].causal
    for name in NAMES[1:]:
        assert not info[name].causal
    assert info["loki"].bound == "deterministic"
    assert info["wildcat"].bound == "deterministic"
    assert info["skyformer"].bound == "deterministic"
    assert info["rsvd_oracle"].bound == "probabilistic"
    assert info["linformer"].bound is None


# Parameter choices under which each method is exact (up to rounding).
EXACT_CASES = [
    ("loki", {"rank": 16, "top_k": 48}),
    ("skyformer", {"n_landmarks": 96, "gamma": 0.0}),
    ("wildcat", {"rank": 48}),
    ("wildcat", {"rank": 96, "pivots": "lift"}),
    ("rsvd_oracle", {"rank": 48}),
    ("nystromformer", {"n_landmarks": 48, "pinv": "exact"}),
]


@pytest.mark.parametrize(("name", "params"), EXACT_CASES, ids=lambda x: str(x))
def test_exact_at_full_rank(name, params, rng, dtype):
    Q, K, V = (x.astype(dtype) for x in _qkv(rng, q_scale=0.5))
    res = approximate(Q, K, V, name, rng=rng, **params)
    assert res.output.dtype == dtype
    err = relative_error(res.output, _exact(Q, K, V))
    # Nyström through the lift is exact in exact arithmetic; the Gaussian core block
    # has condition number up to ~1e6 here, which float64 rounding amplifies.
    assert err < (1e-4 if dtype == np.float32 else 1e-7)


# (method, parameter, small value, large value)
MONOTONE = [
    ("loki", "top_k", 4, 40),
    ("skyformer", "n_landmarks", 8, 90),
    ("wildcat", "rank", 4, 44),
    ("rsvd_oracle", "rank", 2, 40),
    ("nystromformer", "n_landmarks", 4, 48),
]


@pytest.mark.parametrize(("name", "param", "small", "large"), MONOTONE, ids=lambda x: str(x))
def test_error_decreases_with_rank(name, param, small, large, rng):
    errs = {small: [], large: []}
    for _ in range(3):
        Q, K, V = _qkv(rng, q_scale=0.5)
        Y = _exact(Q, K, V)
        for value in (small, large):
            extra = {"pinv": "exact"} if name == "nystromformer" else {}
            res = approximate(Q, K, V, name, rng=rng, **{param: value}, **extra)
            errs[value].append(relative_error(res.output, Y))
    assert np.mean(errs[large]) < 0.5 * np.mean(errs[small])


@pytest.mark.filterwarnings("ignore::rnla._validation.ConvergenceWarning")
@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_shape(name, rng, dtype):
    Q, K, V = (x.astype(dtype) for x in _qkv(rng))
    res = approximate(Q[None], K[None], V[None], name, rng=0, **_small(name))
    assert res.output.shape == (1, 2, 48, 8)
    assert res.output.dtype == dtype
    assert np.isfinite(res.output).all()
    assert res.cost.flops > 0 and res.cost.kernel_evals > 0
    if res.lse is not None:
        assert res.lse.shape == (1, 2, 48)


def _small(name):
    if name in ("nystromformer", "csalr"):
        return {"n_landmarks": 8}
    if name == "linformer":
        return {"sketch_size": 8}
    if name == "skyformer":
        return {"n_landmarks": 16}
    if name in ("wildcat", "rsvd_oracle"):
        return {"rank": 8}
    return {}


@pytest.mark.filterwarnings("ignore::rnla._validation.ConvergenceWarning")
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_rng(name, seed):
    Q, K, V = _qkv(np.random.default_rng(seed))
    before = [x.copy() for x in (Q, K, V)]
    a = approximate(Q, K, V, name, rng=seed, **_small(name))
    b = approximate(Q, K, V, name, rng=seed, **_small(name))
    np.testing.assert_array_equal(a.output, b.output)
    for x, y in zip((Q, K, V), before, strict=True):
        np.testing.assert_array_equal(x, y)
    if name in RANDOMIZED:
        c = approximate(Q, K, V, name, rng=seed + 1000, **_small(name))
        assert not np.array_equal(a.output, c.output)


def test_gqa_matches_repeated_heads(rng):
    Q = rng.standard_normal((4, 32, 8))
    K, V = rng.standard_normal((2, 32, 8)), rng.standard_normal((2, 32, 4))
    a = approximate(Q, K, V, "wildcat", rng=1, rank=8).output
    b = approximate(Q, np.repeat(K, 2, 0), np.repeat(V, 2, 0), "wildcat", rng=1, rank=8)
    # Same slices, same order of random draws: identical results.
    np.testing.assert_allclose(a, b.output, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Loki specifics: calibration and causality
# ---------------------------------------------------------------------------------------


def test_loki_calibration_and_causal_no_leak(rng, dtype):
    n, d = 40, 16
    Q, K, V = (x.astype(dtype) for x in _qkv(rng, n=n, m=n, d=d, heads=1))
    calib = rng.standard_normal((100, d))
    kw = {"causal": True, "rank": 4, "top_k": 6, "calibration": calib}
    a = approximate(Q, K, V, "loki", rng=3, **kw)
    cut = 25
    K2, V2 = K.copy(), V.copy()
    K2[:, cut:] = rng.standard_normal(K2[:, cut:].shape)
    V2[:, cut:] = 10.0
    b = approximate(Q, K2, V2, "loki", rng=3, **kw)
    np.testing.assert_array_equal(a.output[:, :cut], b.output[:, :cut])
    assert not np.allclose(a.output[:, cut:], b.output[:, cut:])
    # With top_k >= number of visible keys the causal output is exact.
    full = approximate(Q, K, V, "loki", rng=3, causal=True, rank=4, top_k=n, calibration=calib)
    assert relative_error(full.output, _exact(Q, K, V, causal=True)) < tol(dtype, 1e3)


def test_loki_causal_without_calibration_rejected(rng):
    Q, K, V = _qkv(rng)
    with pytest.raises(ValueError, match="needs calibration keys"):
        approximate(Q, K, V, "loki", causal=True)


def test_loki_lse_is_exact_over_selection(rng):
    Q, K, V = _qkv(rng, heads=1)
    res = approximate(Q, K, V, "loki", rank=16, top_k=48)
    _, lse = reference_attention(Q, K, V, return_lse=True)
    np.testing.assert_allclose(res.lse, lse, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Formulas of the §4.2 methods against plain NumPy references
# ---------------------------------------------------------------------------------------


def _softmax(S):
    S = S - S.max(axis=1, keepdims=True)
    P = np.exp(S)
    return P / P.sum(axis=1, keepdims=True)


def _segment_means(X, c):
    return np.stack([s.mean(axis=0) for s in np.array_split(X, c)])


def test_softmax_rows_and_segment_means_helpers(rng):
    # In-place row softmax: rows of -inf give 0 and lse -inf; others match the reference.
    S = rng.standard_normal((5, 7)) * 30
    S[2] = -np.inf
    S[4, :3] = -np.inf
    ref = S.copy()
    P, lse = lr._softmax_rows(S)
    assert P is S  # overwritten, no temporaries
    ok = [0, 1, 3, 4]
    np.testing.assert_allclose(P[ok], _softmax(ref[ok]), rtol=1e-14, atol=1e-300)
    assert np.all(P[2] == 0) and lse[2] == -np.inf
    mx = ref[ok].max(axis=1)
    np.testing.assert_allclose(lse[ok], mx + np.log(np.exp(ref[ok] - mx[:, None]).sum(1)))
    X = rng.standard_normal((50, 3))
    for c in (1, 7, 50):
        np.testing.assert_allclose(lr._segment_means(X, c), _segment_means(X, c), rtol=1e-13)


@pytest.mark.parametrize("sk", ["gaussian", "rademacher", "srht", "sparse_sign"])
def test_linformer_formula(sk, seed):
    rng = np.random.default_rng(seed)
    Q, K, V = _qkv(rng, heads=1)
    res = approximate(Q, K, V, "linformer", rng=seed, sketch_size=12, sketch=sk)
    S = getattr(rsketch, sk)(12, 48, rng=np.random.default_rng(seed))
    s = 1 / np.sqrt(16)
    ref = _softmax(s * Q[0] @ (S @ K[0]).T) @ (S @ V[0])
    np.testing.assert_allclose(res.output[0], ref, rtol=1e-10, atol=1e-12)
    assert res.bound is None


def test_nystromformer_formula_and_unequal_segments(rng):
    Q, K, V = _qkv(rng, n=50, m=45, heads=1)
    c, s = 7, 1 / np.sqrt(16)
    res = approximate(Q, K, V, "nystromformer", n_landmarks=c, pinv="exact")
    qt, kt = _segment_means(Q[0], c), _segment_means(K[0], c)
    F = _softmax(s * Q[0] @ kt.T)
    C = _softmax(s * qt @ kt.T)
    B = _softmax(s * qt @ K[0].T)
    ref = F @ np.linalg.pinv(C) @ B @ V[0]
    np.testing.assert_allclose(res.output[0], ref, rtol=1e-8, atol=1e-10)


def test_nystromformer_iteration_converges_on_well_conditioned(rng):
    # Small scores: C is close to uniform plus a well-conditioned part.
    A = np.eye(6) + 0.1 * rng.random((6, 6))
    Z, res = lr._pinv(A, "iterative", 12, 1e-2)
    np.testing.assert_allclose(Z, np.linalg.inv(A), rtol=1e-10, atol=1e-12)
    assert res < 1e-10
    # The residual contracts cubically: R_{j+1} = 3/4 R^3 + 1/4 R^4 (cubic convergence).
    _, r1 = lr._pinv(A, "iterative", 1, 1e-2)
    _, r2 = lr._pinv(A, "iterative", 2, 1e-2)
    assert r2 <= r1**3 * (1 + 1e-6)


def test_nystromformer_warns_when_not_converged(rng):
    Q, K, V = _qkv(rng, q_scale=4.0, heads=1)
    with pytest.warns(ConvergenceWarning, match=r"\|\|I - A_S Z\|\|_2"):
        approximate(Q, K, V, "nystromformer", n_landmarks=24, n_iter=1)


def test_csalr_formula(rng):
    Q, K, V = _qkv(rng, heads=1)
    c, s = 6, 1 / np.sqrt(16)
    qt, kt = _segment_means(Q[0], c), _segment_means(K[0], c)
    F = _softmax(s * Q[0] @ kt.T)
    C = _softmax(s * qt @ kt.T)
    B = _softmax(s * qt @ K[0].T)
    for augment, Cp in (("diagonal", C + np.eye(c)), ("ones", C + np.ones((c, c)))):
        At = F @ np.linalg.solve(Cp, B)
        ref = (At @ V[0]) / At.sum(axis=1, keepdims=True)
        res = approximate(Q, K, V, "csalr", n_landmarks=c, augment=augment)
        np.testing.assert_allclose(res.output[0], ref, rtol=1e-9, atol=1e-12)


def test_wildcat_balanced_tau(rng):
    q, k = rng.standard_normal((10, 4)), 3.0 * rng.standard_normal((12, 4))
    t = lr._balanced_tau(q, k)
    rq, rk = np.linalg.norm(q, axis=1).max(), np.linalg.norm(k, axis=1).max()
    np.testing.assert_allclose(t * rq, rk / t)
    # tau minimises tau^2 R_Q^2 + R_K^2 / tau^2.
    f = lambda x: x**2 * rq**2 + rk**2 / x**2  # noqa: E731
    assert f(t) <= min(f(0.9 * t), f(1.1 * t))


# ---------------------------------------------------------------------------------------
# bad parameters
# ---------------------------------------------------------------------------------------

BAD = [
    ("loki", {"rank": 0}, ValueError, "rank"),
    ("loki", {"rank": 99}, ValueError, "rank"),
    ("loki", {"top_k": 0}, ValueError, "top_k"),
    ("loki", {"rank": 2.0}, TypeError, "rank"),
    ("loki", {"calibration": np.ones((5, 3))}, ValueError, "calibration"),
    ("skyformer", {"n_landmarks": 0}, ValueError, "n_landmarks"),
    ("skyformer", {"gamma": -1.0}, ValueError, "gamma"),
    ("wildcat", {"rank": 49}, ValueError, "rank"),
    ("wildcat", {"tau": -2.0}, ValueError, "tau"),
    ("wildcat", {"tau": "auto"}, ValueError, "tau"),
    ("wildcat", {"pivots": "queries"}, ValueError, "pivots"),
    ("rsvd_oracle", {"delta": 1.5}, ValueError, "delta"),
    ("rsvd_oracle", {"rank": 0}, ValueError, "rank"),
    ("linformer", {"sketch": "fourier"}, ValueError, "sketch"),
    ("linformer", {"sketch_size": 49}, ValueError, "sketch_size"),
    ("nystromformer", {"pinv": "lu"}, ValueError, "pinv"),
    ("nystromformer", {"n_landmarks": 49}, ValueError, "n_landmarks"),
    ("nystromformer", {"rcond": 0.0}, ValueError, "rcond"),
    ("nystromformer", {"n_iter": -1}, ValueError, "n_iter"),
    ("csalr", {"augment": "zeros"}, ValueError, "augment"),
]


@pytest.mark.parametrize(("name", "params", "exc", "match"), BAD, ids=lambda x: str(x))
def test_bad_parameters(name, params, exc, match, rng):
    Q, K, V = _qkv(rng)
    with pytest.raises(exc, match=match):
        approximate(Q, K, V, name, **params)


@pytest.mark.parametrize("name", NAMES[1:])
def test_causal_rejected(name, rng):
    Q, K, V = _qkv(rng)
    with pytest.raises(ValueError, match="does not support causal"):
        approximate(Q, K, V, name, causal=True)


# ---------------------------------------------------------------------------------------
# real heads
# ---------------------------------------------------------------------------------------


def _sample(name):
    data = pytest.importorskip("attention.data")
    try:
        return data.load_sample(name)
    except (FileNotFoundError, OSError, ValueError) as exc:  # pragma: no cover
        pytest.skip(f"sample {name!r} not available: {exc}")


# Head 0 of the MiniLM sample is sharp (row entropy 0.22 nats), head 1 diffuse (6.07 of
# at most 6.24): top-k selection wins on the first, low-rank methods on the second.
REAL_LIMITS = {
    "loki": (0, 0.05),
    "skyformer": (1, 0.5),
    "wildcat": (1, 0.5),
    "rsvd_oracle": (1, 0.1),
    "nystromformer": (1, 0.5),
    "csalr": (1, 0.6),
    "linformer": (1, np.inf),  # training-free Linformer is not an approximation
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::rnla._validation.ConvergenceWarning")
@pytest.mark.parametrize("name", NAMES)
def test_real_minilm_heads(name):
    s = _sample("minilm")
    h, limit = REAL_LIMITS[name]
    Q, K, V = s.Q[h : h + 1], s.K[h : h + 1], s.V[h : h + 1]
    res = approximate(Q, K, V, name, rng=0, scale=s.scale)
    assert res.output.dtype == np.float32
    assert np.isfinite(res.output).all()
    assert relative_error(res.output, _exact(Q, K, V, scale=s.scale)) < limit


@pytest.mark.slow
@pytest.mark.parametrize(("name", "small", "large"), [("wildcat", 4, 128), ("rsvd_oracle", 4, 48)])
def test_real_error_decreases_with_rank(name, small, large):
    s = _sample("minilm")
    Q, K, V = s.Q[1:2], s.K[1:2], s.V[1:2]
    Y = _exact(Q, K, V, scale=s.scale)
    errs = [
        relative_error(approximate(Q, K, V, name, rng=0, scale=s.scale, rank=r).output, Y)
        for r in (small, large)
    ]
    assert errs[1] < 0.5 * errs[0]


def test_real_smollm2_loki_causal():
    s = _sample("smollm2")
    Q, K, V = s.Q[:2], s.K[:2], s.V[:2]
    calib = s.K[2]  # keys of another head: plays the calibration set
    res = approximate(
        Q, K, V, "loki", causal=True, scale=s.scale, calibration=calib, rank=16, top_k=128
    )
    Y = _exact(Q, K, V, scale=s.scale, causal=True)
    assert relative_error(res.output, Y) < 0.5


@pytest.mark.parametrize("N", [0, 1, 50])
def test_trsm_right_matches_solve_triangular(rng, N):
    import scipy.linalg as sla

    from attention.lowrank import _trsm_right_lt

    L = np.tril(rng.standard_normal((6, 6))) + 6 * np.eye(6)
    R = rng.standard_normal((6, N))
    ref = sla.solve_triangular(L, R, lower=True).T
    np.testing.assert_allclose(_trsm_right_lt(L, R.copy()), ref, rtol=1e-13, atol=1e-14)
    Rf = np.asfortranarray(R)  # not C-ordered: the copying fallback
    np.testing.assert_allclose(_trsm_right_lt(L, Rf), ref, rtol=1e-13, atol=1e-14)


def test_gaussian_rows_kernel_matches_numpy(rng):
    from attention._kernels.lowrank import _gaussian_rows

    X = rng.standard_normal((40, 6)) * 2.0
    X[7] = X[3]  # a repeated point: distance rounds to 0, clamped
    S = np.array([0, 3, 7, 39])
    xsq = np.einsum("ij,ij->i", X, X)
    G = X[S] @ X.T
    ref = np.exp(-0.3 * np.maximum(xsq[S][:, None] + xsq[None, :] - 2.0 * G, 0.0))
    _gaussian_rows(G, xsq[S], xsq, 0.3)
    np.testing.assert_allclose(G, ref, rtol=4e-16, atol=0)
    assert G[1, 7] == 1.0 and np.all((G > 0) & (G <= 1))


def test_lift_rows_kernel_matches_numpy(rng):
    # Output, lse and row bound of the lift in one pass, against the plain-NumPy form
    # (ratio with bad rows zeroed, row lemma l1 * 2R / z_low, rounding terms).
    from attention._kernels.lowrank import _lift_rows

    n, m, r, dv = 30, 20, 5, 4
    F = rng.standard_normal((n + m, r))
    W = rng.random((m, r))
    V = rng.standard_normal((m, dv))
    num = F[:n] @ (W.T @ np.column_stack([V, np.ones(m)]))
    num[3, -1] = 0.0  # z = 0: output 0, lost
    num[4, :-1], num[4, -1] = 1e10, 1e-300  # ratio overflows: output 0, lost
    num[5, -1] = -1.0  # negative z: lost
    babs = np.abs(W).T @ np.column_stack([np.linalg.norm(V, axis=1), np.ones(m)])
    log_dq, half = rng.standard_normal(n), -rng.random(n)
    half[6] = -np.inf  # l1 = 0: lemma 0
    gam, tiny, b, s_half, radius = 1e-14, 1e-300, 0.5, -0.2, 3.0
    y, lse, rows = np.empty((n, dv)), np.empty(n), np.empty(n)
    lost = np.zeros(n, dtype=bool)
    _lift_rows(num, F, babs, gam, tiny, log_dq, b, half, s_half, radius, y, lse, rows, lost)
    z = num[:, -1].copy()
    with np.errstate(all="ignore"):
        yr = num[:, :-1] / z[:, None]
    bad = (z == 0) | ~np.isfinite(yr).all(axis=1)
    yr[bad], z[bad] = 0.0, 0.0
    with np.errstate(divide="ignore"):
        lr = np.where(z > 0, np.log(np.where(z > 0, z, 1.0)), -np.inf) + log_dq + b
    ez = gam * (np.abs(F[:n]) @ babs[:, 1]) + tiny
    ev = gam * (np.abs(F[:n]) @ babs[:, 0]) + dv * tiny
    l1 = np.exp(half + s_half)
    z_low = z - ez
    with np.errstate(all="ignore"):
        lemma = np.where(l1 == 0, 0.0, l1 * radius / z_low)
        ref = np.where(z_low > 0, lemma + (ev + np.linalg.norm(yr, axis=1) * ez) / z_low, np.inf)
    np.testing.assert_allclose(y, yr, rtol=1e-15, atol=0)
    np.testing.assert_allclose(lse, lr, rtol=1e-15, atol=0)
    np.testing.assert_allclose(rows, ref, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(lost, ~(z_low > 0))
    assert lost[[3, 4, 5]].all() and rows[6] > 0 and np.all(y[[3, 4]] == 0)


def test_exp_shifted_kernel_matches_numpy(rng):
    from attention._kernels.lowrank import _exp_shifted

    G = rng.standard_normal((7, 33)) * 30.0
    ref = np.exp(np.minimum(G - 4.0, 0.0))
    _exp_shifted(G, 4.0)
    np.testing.assert_allclose(G, ref, rtol=4e-16, atol=0)
    assert np.all((G >= 0) & (G <= 1))


def test_wildcat_same_result_on_any_thread_count(rng):
    # One generator per slice (seeds drawn in slice order): the slices run on the
    # workers, and one worker gives the same result.
    import numba

    Q, K, V = _qkv(rng, n=80, m=90, heads=3)
    a = approximate(Q, K, V, "wildcat", rng=5)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        b = approximate(Q, K, V, "wildcat", rng=5)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a.output, b.output)
    assert a.bound.value == b.bound.value and a.cost == b.cost


def test_lift_lost_rows_exact_across_grouped_heads(rng, dtype):
    # Queries far from every landmark (huge norms) make their Gaussian lift rows
    # underflow: they are computed exactly, stacked over the query heads of a key/value
    # head (GQA: 4 query heads on 2 kv heads), and must land in the right rows.
    Q = rng.standard_normal((4, 40, 8))
    Q[:, ::3] *= 300.0
    K = rng.standard_normal((2, 40, 8))
    V = rng.standard_normal((2, 40, 4))
    Q, K, V = (x.astype(dtype) for x in (Q, K, V))
    ref = _exact(Q, np.repeat(K, 2, axis=0), np.repeat(V, 2, axis=0))
    for name in ("skyformer", "wildcat"):
        res = approximate(Q, K, V, name, rng=0)
        far = np.zeros(40, dtype=bool)
        far[::3] = True
        # float32 rows (the exact kernel in the input dtype) at logits of order 1e3.
        t = 1e-12 if dtype == np.float64 else 1e-4
        if name == "skyformer":  # uniform landmarks: the far rows are lost, exact
            np.testing.assert_allclose(res.output[:, far], ref[:, far], rtol=t, atol=t)
        err = np.linalg.norm(res.output.astype(np.float64) - ref)
        assert res.bound.value >= err and np.all(np.isfinite(res.output))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_loki_drop_kernel_matches_numpy_reference(rng, dt):
    from attention._kernels.topk import _loki_drop, _select_block

    b, s, kk = 20, 200, 12
    S = (rng.standard_normal((b, s)) * 2).astype(dt)
    lims = np.full(b, s, dtype=np.int64)
    lims[:4] = [1, 5, 12, 13]  # nothing or one key dropped
    sel, sv = np.empty((b, kk), dtype=np.int64), np.empty((b, kk))
    nk, ns, lf = np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64), np.zeros(b)
    _select_block(
        S.copy(),
        lims,
        kk,
        False,
        False,
        sel,
        sv,
        nk,
        ns,
        lf,
        np.zeros((3, 0), S.dtype),
        np.zeros((1, 3)),
    )
    a, c = rng.random(b), rng.random(b) * 1e-3
    bk, kn = rng.random(s), rng.random(s) + 1
    lk = rng.standard_normal(b)
    out = np.full(b, np.nan)
    S0 = S.copy()
    _loki_drop(S, lims, sel, nk, a, bk, c, kn, lk, out)
    for i in range(b):
        drop = np.setdiff1d(np.arange(lims[i]), sel[i, : nk[i]])
        if drop.size == 0:
            assert out[i] == -np.inf
            continue
        x = S0[i, drop].astype(float) + a[i] * bk[drop] + c[i] * kn[drop] - lk[i]
        np.testing.assert_allclose(out[i], logsumexp(x), rtol=1e-13, atol=1e-13)
