"""Tests of attention.kernel (§5): kernels vs references, methods vs exact, causality."""

import heapq
import warnings

import numpy as np
import pytest

import attention.kernel as K
from attention import approximate, methods
from attention._core import prepare, rounding_allowance
from attention._kernels.features import (
    _block_unions,
    _bucket_weights,
    _cumsum_rows,
    _online_leverage,
    _prefix_states,
    _prefix_topk,
    _scatter_rows,
)
from attention.clustering import _bucket_blocks, _bucket_sets
from attention.exact import reference_attention
from rnla._validation import AccuracyWarning

KERNEL_METHODS = (
    "performer",
    "scatterbrain",
    "taylor",
    "polysketch",
    "tensorsketch",
    "levattention",
)


def _data(rng, n=48, m=None, d=8, dv=5, G=2, amp=0.4, dtype=np.float64):
    m = n if m is None else m
    Q = (rng.standard_normal((G, n, d)) * amp).astype(dtype)
    Kk = (rng.standard_normal((G, m, d)) * amp).astype(dtype)
    V = rng.standard_normal((G, m, dv)).astype(dtype)
    return Q, Kk, V


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b))


def _run(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        return approximate(*args, **kw)


# ---------------------------------------------------------------------------------------
# Numba kernels == plain NumPy references
# ---------------------------------------------------------------------------------------


def _causal_reference(phq, lk, sk, v, offset):
    """Masked dense reference: true sums (no shift)."""
    n, m = phq.shape[0], lk.shape[0]
    W = phq @ (np.exp(lk) * sk).T
    keep = np.arange(m)[None, :] <= np.arange(n)[:, None] + offset
    W = np.where(keep, W, 0.0)
    return W @ v, W.sum(axis=1)


@pytest.mark.parametrize(
    ("n", "m", "chunk"),
    [(1, 1, 1), (7, 7, 3), (10, 4, 4), (4, 10, 2), (33, 33, 64), (20, 25, 1), (5, 3, 2)],
    ids=lambda x: str(x),
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["log", "plain"])
def test_causal_chunks_match_reference(rng, n, m, chunk, dtype, form):
    M, dv = 6, 3
    phq = rng.random((n, M)).astype(dtype)
    lk = (rng.standard_normal((m, M)) * 3.0).astype(dtype)  # running shift must rescale
    sk = rng.standard_normal((m, M)).astype(dtype)
    v = rng.standard_normal((m, dv)).astype(dtype)
    vaug = np.hstack([v, np.ones((m, 1), dtype)])
    if form == "plain":
        lk_in, lk_ref = None, np.zeros((m, M))
    else:
        lk_in, lk_ref = lk, lk.astype(np.float64)
    out, shift = K._causal_linear(phq, lk_in, sk, vaug, m - n, chunk)
    assert out.dtype == dtype
    rnum, rden = _causal_reference(
        phq.astype(float), lk_ref, sk.astype(float), v.astype(float), m - n
    )
    seen = np.arange(n) + m - n >= 0
    with np.errstate(over="ignore"):
        sc = np.where(seen, np.exp(np.where(seen, shift, 0.0)), 0.0)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    scale = np.abs(rnum).max() + np.abs(rden).max()
    np.testing.assert_allclose(sc[:, None] * out[:, :dv], rnum, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(sc * out[:, dv], rden, rtol=tol, atol=tol * scale)
    assert np.all(shift[~seen] == -np.inf)
    assert np.all(out[~seen] == 0)


def test_causal_chunks_zeros():
    n, M, dv = 5, 4, 2
    out, shift = K._causal_linear(
        np.zeros((n, M)), np.zeros((n, M)), np.zeros((n, M)), np.zeros((n, dv + 1)), 0, 2
    )
    assert np.all(out == 0) and np.all(shift == 0)


def test_online_leverage_matches_reference(rng):
    m, d, lam = 30, 4, 1e-3
    k = rng.standard_normal((m, d))
    k[10] = k[3]  # repeated key
    out = np.empty(m)
    _online_leverage(k, lam, out)
    ref = [
        k[j] @ np.linalg.solve(lam * np.eye(d) + k[: j + 1].T @ k[: j + 1], k[j]) for j in range(m)
    ]
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    assert np.all((out >= 0) & (out < 1))


# ---------------------------------------------------------------------------------------
# Registry, parameters, dtypes, determinism
# ---------------------------------------------------------------------------------------


def test_registered():
    info = {m.name: m for m in methods()}
    for name in KERNEL_METHODS:
        assert info[name].family == "kernel"
        assert info[name].causal


@pytest.mark.parametrize("method", KERNEL_METHODS)
def test_dtype_and_shapes(rng, dtype, method):
    Q, Kk, V = _data(rng, n=24, dtype=dtype)
    r = _run(Q, Kk, V, method, rng=0)
    assert r.output.dtype == dtype
    assert r.output.shape == (2, 24, 5)
    r64 = _run(Q.astype(np.float64), Kk.astype(np.float64), V.astype(np.float64), method, rng=0)
    np.testing.assert_allclose(r.output, r64.output, rtol=0, atol=1e3 * np.finfo(dtype).eps)


@pytest.mark.parametrize("method", KERNEL_METHODS)
def test_deterministic_given_rng(rng, method):
    Q, Kk, V = _data(rng, n=24)
    a = _run(Q, Kk, V, method, rng=3, causal=True)
    b = _run(Q, Kk, V, method, rng=np.random.default_rng(3), causal=True)
    np.testing.assert_array_equal(a.output, b.output)


@pytest.mark.parametrize("method", ("performer", "scatterbrain", "polysketch", "tensorsketch"))
def test_redraw_changes_output(rng, method):
    Q, Kk, V = _data(rng, n=24)
    a = _run(Q, Kk, V, method, rng=1)
    b = _run(Q, Kk, V, method, rng=2)
    assert not np.array_equal(a.output, b.output)


def test_inputs_not_mutated(rng):
    Q, Kk, V = _data(rng, n=16)
    copies = [x.copy() for x in (Q, Kk, V)]
    for method in KERNEL_METHODS:
        _run(Q, Kk, V, method, rng=0, causal=True)
    for x, c in zip((Q, Kk, V), copies, strict=True):
        np.testing.assert_array_equal(x, c)


@pytest.mark.parametrize(
    ("method", "params", "exc", "match"),
    [
        ("performer", {"n_features": 0}, ValueError, "n_features"),
        ("performer", {"features": "relu"}, ValueError, "features"),
        ("performer", {"orthogonal": "yes"}, TypeError, "orthogonal"),
        ("performer", {"delta": 1.5}, ValueError, "delta"),
        ("performer", {"error_bound": "tight"}, ValueError, "error_bound"),
        ("performer", {"nb_features": 4}, ValueError, "unknown parameter"),
        ("scatterbrain", {"n_buckets": 3}, ValueError, "even"),
        ("scatterbrain", {"features": "trig"}, ValueError, "features"),
        ("taylor", {"degree": 0}, ValueError, "degree"),
        ("taylor", {"sketch_size": 2.5}, TypeError, "sketch_size"),
        ("polysketch", {"degree": 3}, ValueError, "even"),
        ("tensorsketch", {"sketch_size": 0}, ValueError, "sketch_size"),
        ("levattention", {"threshold": 1.5}, ValueError, "threshold"),
        ("levattention", {"window": -1}, ValueError, "window"),
        ("levattention", {"n_keys": 0}, ValueError, "n_keys"),
    ],
    ids=lambda x: str(x),
)
def test_bad_parameters(rng, method, params, exc, match):
    Q, Kk, V = _data(rng, n=8)
    with pytest.raises(exc, match=match):
        approximate(Q, Kk, V, method, rng=0, **params)


def test_public_helpers_reject_bad_input():
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="even"):
        K.polynomial_attention(X, X, X, 3)
    with pytest.raises(ValueError, match="same dimension"):
        K.random_feature_mse(X, np.ones((2, 2)))
    with pytest.raises(ValueError, match="features"):
        K.random_feature_mse(X, X, features="relu")
    with pytest.raises(ValueError, match="B must be"):
        K.taylor_remainder_bound(-1.0, 2)
    with pytest.raises(ValueError, match="features"):
        K.polynomial_sketch_error(X, X, X, 2, features="gaussian")


# ---------------------------------------------------------------------------------------
# Accuracy against exact attention (synthetic)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    ("method", "params", "tol"),
    [
        ("performer", {"n_features": 512}, 0.15),
        ("performer", {"n_features": 512, "features": "hyperbolic"}, 0.15),
        ("performer", {"n_features": 512, "features": "trig"}, 0.15),
        ("scatterbrain", {"n_features": 512}, 0.15),
        ("taylor", {"degree": 4, "feature_budget": 8192}, 1e-3),
        ("taylor", {"degree": 3, "feature_budget": 50, "sketch_size": 4096}, 0.05),
        ("levattention", {"threshold": 0.0}, 1e-10),
        ("levattention", {"threshold": 0.99, "window": 48}, 1e-10),
    ],
    ids=lambda x: str(x),
)
def test_accuracy_vs_exact(rng, causal, method, params, tol):
    Q, Kk, V = _data(rng, amp=0.3)
    Y = reference_attention(Q, Kk, V, causal=causal)
    r = _run(Q, Kk, V, method, rng=rng, causal=causal, **params)
    assert _rel(r.output, Y) < tol
    if r.lse is not None:
        _, lse = reference_attention(Q, Kk, V, causal=causal, return_lse=True)
        scale = 0.25 if method in ("performer", "scatterbrain") else 1e-2
        np.testing.assert_allclose(r.lse, lse, atol=scale)


def test_scatterbrain_more_exact_with_one_bucket_pair(rng):
    # n_buckets=2 with all keys/queries in buckets: the sparse part covers many pairs.
    Q, Kk, V = _data(rng, amp=0.3)
    Y = reference_attention(Q, Kk, V)
    errs_sb = [
        _rel(_run(Q, Kk, V, "scatterbrain", rng=s, n_buckets=2).output, Y) for s in range(6)
    ]
    errs_pf = [
        _rel(_run(Q, Kk, V, "performer", rng=s, n_features=128).output, Y) for s in range(6)
    ]
    assert np.mean(errs_sb) < np.mean(errs_pf)


@pytest.mark.parametrize("p", [2, 4])
def test_polysketch_vs_polynomial_attention(rng, p):
    Q, Kk, V = _data(rng, d=4)
    P = K.polynomial_attention(Q, Kk, V, p)
    if p == 2:
        # Degree 1 is not sketched: the self-tensored features are exact.
        r = approximate(Q, Kk, V, "polysketch", rng=0, degree=2)
        np.testing.assert_allclose(r.output, P, rtol=1e-10, atol=1e-10)
    # Larger sketches are more accurate (averaged over draws; variance ~ 1/r).
    errs = {
        r: np.mean(
            [
                _rel(approximate(Q, Kk, V, kind, rng=s, degree=p, sketch_size=r).output, P)
                for s in range(4)
            ]
        )
        for kind in ("tensorsketch",)
        for r in (4, 64)
    }
    assert errs[64] < 0.5 * errs[4]
    assert errs[64] < 0.5


def test_polynomial_attention_reference(rng):
    Q, Kk, V = _data(rng, n=6, d=3)
    P = K.polynomial_attention(Q, Kk, V, 2, causal=True)
    s = Q[0] @ Kk[0].T / np.sqrt(3)
    w = np.tril(s**2)
    np.testing.assert_allclose(P[0], w @ V[0] / w.sum(1, keepdims=True), rtol=1e-12)


def test_polynomial_sketch_error_report(rng):
    Q, Kk, V = _data(rng, n=20, d=4)
    e = K.polynomial_sketch_error(Q, Kk, V, 4, features="tensorsketch", rng=5)
    r = approximate(Q, Kk, V, "tensorsketch", rng=5, degree=4)
    P = K.polynomial_attention(Q, Kk, V, 4)
    assert e.error_vs_polynomial == pytest.approx(_rel(r.output, P), rel=1e-9)
    assert e.epsilon == pytest.approx(e.amm_error / e.amm_scale)
    assert np.isnan(e.epsilon_bound)  # self-tensored: no explicit constant
    assert e.error_vs_softmax > 0


# ---------------------------------------------------------------------------------------
# Causality
# ---------------------------------------------------------------------------------------

CAUSAL_CASES = [
    ("performer", {}),
    ("performer", {"features": "trig"}),
    ("scatterbrain", {"n_buckets": 2}),
    ("taylor", {}),
    ("taylor", {"degree": 3, "feature_budget": 20}),
    ("polysketch", {}),
    ("tensorsketch", {}),
    ("levattention", {"n_keys": 4, "window": 3}),
]


@pytest.mark.parametrize(("method", "params"), CAUSAL_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize(("n", "m"), [(40, 40), (30, 40), (40, 30)], ids=lambda x: str(x))
def test_no_future_leakage(rng, method, params, n, m):
    Q, Kk, V = _data(rng, n=n, m=m)
    t = 17  # keys > t are changed: rows i with i + m - n <= t must not move
    K2, V2 = Kk.copy(), V.copy()
    K2[:, t + 1 :] = rng.standard_normal(K2[:, t + 1 :].shape) * 3.0
    V2[:, t + 1 :] = rng.standard_normal(V2[:, t + 1 :].shape) * 3.0
    a = _run(Q, Kk, V, method, rng=7, causal=True, **params)
    b = _run(Q, K2, V2, method, rng=7, causal=True, **params)
    rows = np.arange(n) + m - n <= t
    np.testing.assert_allclose(a.output[:, rows], b.output[:, rows], rtol=1e-9, atol=1e-12)
    assert not np.allclose(a.output[:, ~rows], b.output[:, ~rows])


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("performer", {}),
        ("performer", {"features": "hyperbolic"}),
        ("taylor", {}),
        ("polysketch", {}),
    ],
    ids=lambda x: str(x),
)
def test_causal_equals_prefix_reference(rng, method, params):
    # Row i of the causal result == non-causal result on the visible prefix (same draw).
    n, m = 20, 26
    Q, Kk, V = _data(rng, n=n, m=m)
    a = _run(Q, Kk, V, method, rng=11, causal=True, **params)
    for i in (0, 5, n - 1):
        e = i + m - n + 1
        b = _run(Q[:, i : i + 1], Kk[:, :e], V[:, :e], method, rng=11, **params)
        np.testing.assert_allclose(a.output[:, i], b.output[:, 0], rtol=1e-9, atol=1e-12)
        if a.lse is not None:
            np.testing.assert_allclose(a.lse[:, i], b.lse[:, 0], rtol=1e-9, atol=1e-12)


def test_causal_rows_without_keys(rng):
    Q, Kk, V = _data(rng, n=10, m=4)
    for method in KERNEL_METHODS:
        r = _run(Q, Kk, V, method, rng=0, causal=True)
        assert np.all(r.output[:, :6] == 0)
        if r.lse is not None:
            assert np.all(r.lse[:, :6] == -np.inf)


def test_grouped_query(rng):
    Q = rng.standard_normal((4, 16, 8)) * 0.3
    Kk, V = rng.standard_normal((2, 16, 8)) * 0.3, rng.standard_normal((2, 16, 3))
    for method in KERNEL_METHODS:
        r = _run(Q, Kk, V, method, rng=0)
        rr = _run(Q, np.repeat(Kk, 2, axis=0), np.repeat(V, 2, axis=0), method, rng=0)
        np.testing.assert_allclose(r.output, rr.output, rtol=1e-12, atol=1e-12)


def test_performer_warns_on_large_norms(rng):
    Q, Kk, V = _data(rng, amp=3.0)
    with pytest.warns(AccuracyWarning, match="random features are unreliable"):
        approximate(Q, Kk, V, "performer", rng=0)
    with pytest.warns(AccuracyWarning, match="remainder"):
        approximate(Q, Kk, V, "taylor", rng=0)


@pytest.mark.parametrize("method", ["performer", "polysketch", "taylor"])
def test_result_independent_of_thread_count(rng, method):
    import numba

    Q, Kk, V = _data(rng, n=300, G=3, dtype=np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run(Q, Kk, V, method, rng=0, causal=True).output
        numba.set_num_threads(before)
        many = _run(Q, Kk, V, method, rng=0, causal=True).output
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("method", ["performer", "taylor", "tensorsketch"])
@pytest.mark.parametrize("G", [1, 3], ids=["segments", "whole-and-segments"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_groups_whole_or_by_segments_identical(rng, method, G, dtype, monkeypatch):
    # The scan route (dv a multiple of the vector length): on one thread every group
    # runs whole (state carried from segment to segment, no key scan); on two threads
    # G = 3 runs two groups whole and one by segments from the key scan's states, G = 1
    # by segments only. The same operations: bit-identical outputs and bounds.
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    calls = []
    scan = K._scan_segment
    monkeypatch.setattr(K, "_scan_segment", lambda *a: calls.append(a[-1]) or scan(*a))
    monkeypatch.setattr(K, "_SEGMENT_ROWS", 64)  # several segments, a ragged last one
    Q, Kk, V = _data(rng, n=300, d=8, dv=16, G=G, dtype=dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run(Q, Kk, V, method, rng=0, causal=True)
        assert calls and all(calls)  # whole groups only
        calls.clear()
        numba.set_num_threads(2)
        two = _run(Q, Kk, V, method, rng=0, causal=True)
    finally:
        numba.set_num_threads(before)
    assert not all(calls) and (G == 1) == (not any(calls))
    np.testing.assert_array_equal(one.output, two.output)
    if one.bound is not None:
        assert one.bound.value == two.bound.value


def test_levattention_float32_without_bound(rng):
    Q, Kk, V = _data(rng, n=70, dtype=np.float32)
    r = _run(Q, Kk, V, "levattention", n_keys=8, window=4, error_bound=None, causal=True)
    assert r.output.dtype == np.float32 and r.bound is None
    ref = _run(
        Q.astype(float),
        Kk.astype(float),
        V.astype(float),
        "levattention",
        n_keys=8,
        window=4,
        error_bound=None,
        causal=True,
    )
    np.testing.assert_allclose(r.output, ref.output, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("k", "degree"), [(16, 2), (15, 2), (8, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tensorsketch_gemm_matches_transform(rng, k, degree, dtype):
    from rnla import sketch

    ts = sketch.tensor_sketch(k, 5, degree, rng=3)
    x = rng.standard_normal((40, 5))
    ref = ts.transform(x)
    got = K._TensorSketchGemm(ts, dtype).transform(x.astype(dtype))
    assert got.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize(("k", "degree"), [(16, 2), (15, 2), (8, 3), (6, 1)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tensorsketch_frequency_features_keep_inner_products(rng, k, degree, dtype):
    # Parseval: the frequency-domain features have the inner products of the sketch.
    from rnla import sketch

    ts = sketch.tensor_sketch(k, 5, degree, rng=3)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((20, 5))
    ref = ts.transform(x) @ ts.transform(y).T * 0.25
    g = K._TensorSketchGemm(ts, dtype, factor=0.5)
    fx, fy = g.features(x.astype(dtype)), g.features(y.astype(dtype))
    assert fx.dtype == dtype and fx.shape == (30, 2 * (k // 2 + 1))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    scale = np.abs(ref).max()
    np.testing.assert_allclose(fx @ fy.T, ref, rtol=tol, atol=tol * scale)
    kept = fx[:, g.keep] @ fy[:, g.keep].T
    assert g.keep.size == k
    np.testing.assert_allclose(kept, ref, rtol=tol, atol=tol * scale)


def _prefix_topk_reference(scores: np.ndarray, n_keys: int, ends: np.ndarray):
    """Per row ``i``: the ``n_keys`` best-scored keys among ``j < ends[i]`` (ends sorted).

    Returns ``idx (n, n_keys)`` int64 and ``valid (n, n_keys)`` bool. Ties keep the
    earlier key. Row ``i`` depends on ``scores[:ends[i]]`` only (causal).
    """
    n = ends.shape[0]
    idx = np.zeros((n, n_keys), dtype=np.int64)
    valid = np.zeros((n, n_keys), dtype=bool)
    heap: list = []
    j = 0
    members: list = []
    for i in range(n):
        changed = False
        while j < ends[i]:
            item = (float(scores[j]), -j)
            if len(heap) < n_keys:
                heapq.heappush(heap, item)
                changed = True
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
                changed = True
            j += 1
        if changed:  # the set changes rarely: sort only then
            members = sorted(-t[1] for t in heap)
        idx[i, : len(members)] = members
        valid[i, : len(members)] = True
    return idx, valid


@pytest.mark.parametrize(("m", "n_keys"), [(1, 1), (10, 3), (50, 8), (40, 64)], ids=str)
def test_prefix_topk_matches_reference(rng, m, n_keys):
    scores = rng.random(m)
    scores[m // 2 :: 3] = scores[0]  # ties keep the earlier key
    n = m + 3
    ends = np.clip(np.arange(n) - 2, 0, m).astype(np.int64)
    idx = np.empty((n, n_keys), dtype=np.int64)
    valid = np.empty((n, n_keys), dtype=bool)
    _prefix_topk(scores, n_keys, ends, idx, valid)
    ridx, rvalid = _prefix_topk_reference(scores, n_keys, ends)
    np.testing.assert_array_equal(valid, rvalid)
    np.testing.assert_array_equal(np.where(valid, idx, 0), ridx)


@pytest.mark.parametrize(("n", "s", "block"), [(1, 1, 4), (10, 3, 4), (33, 5, 8)], ids=str)
def test_block_unions_matches_reference(rng, n, s, block):
    idx = rng.integers(0, 20, (n, s)).astype(np.int64)
    valid = rng.random((n, s)) < 0.7
    U, keep = _block_unions(idx, valid, block)
    nb = -(-n // block)
    assert U.shape[0] == nb and keep.shape[:2] == (nb, block)
    for b in range(nb):
        rows = range(b * block, min(n, (b + 1) * block))
        ref = np.unique(np.concatenate([idx[i][valid[i]] for i in rows]))
        L = ref.size
        np.testing.assert_array_equal(U[b, :L], ref)
        assert not keep[b, :, L:].any()
        for r, i in enumerate(rows):
            assert set(U[b][keep[b, r]]) == set(idx[i][valid[i]])
        assert not keep[b, len(rows) :].any()


def _bucket_weights_reference(sc, lp, keep, rows, J, cq, ck, ref):
    """Plain-NumPy Scatterbrain block weights (the array form the kernel replaces)."""
    sdt = sc.dtype
    rr = np.maximum(rows, 0)
    with np.errstate(divide="ignore"):
        lphi = np.log(lp).astype(sdt)
    lphi += cq.astype(sdt)[rr][:, :, None]
    lphi += ck.astype(sdt)[J][:, None, :]
    sc, lphi = sc.copy(), lphi.copy()
    sc[~keep] = -np.inf
    lphi[~keep] = -np.inf
    rb = np.maximum(ref[rr], np.maximum(sc.max(axis=2), lphi.max(axis=2)))
    rb = np.where(np.isfinite(rb), rb, 0.0).astype(sdt)
    w = np.exp(sc - rb[..., None]) - np.exp(lphi - rb[..., None])
    w[rows < 0] = 0.0
    rb = np.where(rows < 0, 0.0, rb.astype(np.float64))
    return w, rb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "nb", "cs"), [(2, 2, 1), (40, 4, 4), (130, 8, 8)], ids=str)
def test_bucket_weights_match_reference(rng, dtype, n, nb, cs):
    hq = rng.integers(0, nb, n)
    hk = rng.integers(0, nb, n)
    hq[0] = hk[0] = 0  # the first query sees a key
    pos = np.arange(n)
    sets = _bucket_sets(hq, hk, pos, pos, cs)
    rows, J, keep, _, _ = _bucket_blocks(hq, sets, pos, pos, cs)
    sc = rng.standard_normal(keep.shape).astype(dtype) * 3
    lp = rng.random(keep.shape).astype(dtype)
    lp[..., 0] = 0.0  # log(0) = -inf: a zero low-rank estimate
    cq, ck = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    ref = rng.standard_normal(n)
    ref[::5] = -np.inf
    w_ref, rb_ref = _bucket_weights_reference(sc, lp, keep, rows, J, cq, ck, ref)
    rb = np.full(rows.shape, np.nan)
    sc_in, lp_in = sc.copy(), lp.copy()
    _bucket_weights(sc_in, lp_in, keep, rows, J, cq, ck, ref, rb)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(sc_in, w_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(rb, rb_ref, rtol=tol, atol=tol)  # logs may differ by an ulp
    assert np.all(np.isfinite(sc_in))
    # Scatter: each query row receives its block row, padding rows are skipped.
    blk = rng.standard_normal((*rows.shape, 3))
    corr, refo = np.zeros((n, 3)), np.full(n, -1.0)
    _scatter_rows(rows, blk, rb, corr, refo)
    ok = rows >= 0
    np.testing.assert_array_equal(corr[rows[ok]], blk[ok])
    np.testing.assert_array_equal(refo[rows[ok]], rb[ok])


@pytest.mark.parametrize(("m", "nb", "cs"), [(1, 2, 1), (37, 4, 4), (200, 8, 16)], ids=str)
def test_bucket_windows_are_the_block_windows(rng, m, nb, cs):
    hq, hk = rng.integers(0, nb, m), rng.integers(0, nb, m)
    hk[: m // 2] = 0  # one large bucket, some empty ones
    pos = np.arange(m)
    sets = _bucket_sets(hq, hk, pos, pos, cs)
    blocks = _bucket_blocks(hq, sets, pos, pos, cs)
    wstart, Jw = K._bucket_windows(hk, nb, cs)
    if blocks is None:
        return
    rows, J = blocks[0], blocks[1]
    wid = wstart[hq[rows[:, 0]]] + sets[4][rows[:, 0]] // cs
    np.testing.assert_array_equal(Jw[wid], J)


@pytest.mark.parametrize("m", [0, 1, 7, 300])
def test_cumsum_rows_matches_numpy(rng, m):
    x = rng.standard_normal((m, 5))
    out = np.full((m, 5), np.nan)
    _cumsum_rows(x, out)
    np.testing.assert_array_equal(out, np.cumsum(x, axis=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slack_is_the_rounding_allowance(rng, dtype):
    Q, Kk, V = _data(rng, n=20, m=30, dtype=dtype)
    problem = prepare(Q, Kk, V, causal=True)
    v = problem.slice(1)[2]
    kvd = K._kv_bound_data(problem, Kk[1].astype(float), v.astype(float))
    y = rng.standard_normal((20, V.shape[2]))
    np.testing.assert_allclose(K._slack(problem, y, kvd), rounding_allowance(problem, y, v))
    from attention.bounds import value_radius

    c, R = value_radius(v.astype(float))
    # The same formulas, one Numba pass (the centroid's sum in another order).
    assert kvd["R"] == pytest.approx(float(R), rel=1e-13)
    np.testing.assert_allclose(kvd["c"], c, rtol=1e-13, atol=1e-15)
    assert np.all(np.linalg.norm(v.astype(float) - kvd["c"], axis=1) <= kvd["R"])
    np.testing.assert_allclose(
        kvd["kbar"] * np.arange(11, 31)[:, None], np.cumsum(Kk[1].astype(float), 0)[10:]
    )


def test_grouped_map_computes_each_key_side_once(rng):
    Q = rng.standard_normal((6, 9, 4))
    Kk, V = rng.standard_normal((2, 12, 4)), rng.standard_normal((2, 12, 3))
    problem = prepare(Q, Kk, V)
    calls = []

    def key_side(g):
        calls.append(g)
        return int(problem.kv_index[g])

    out = K._grouped_map(problem, key_side, lambda g, key: (g, key))
    assert out == [(g, int(problem.kv_index[g])) for g in range(6)]
    assert sorted(calls) == [0, 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nc", [1, 2, 40])
def test_prefix_states_match_numpy_loop(rng, dtype, nc):
    import math

    Z = rng.standard_normal((nc, 6, 5)).astype(dtype)
    s = np.maximum.accumulate(rng.standard_normal(nc))
    ref = np.zeros_like(Z)
    ref[0] = rng.standard_normal((6, 5))
    out = np.full_like(Z, np.nan)
    out[0] = ref[0]
    out[1:] = Z[:-1]  # the kernel reads chunk c - 1's sum from S[c]
    for c in range(1, nc):
        np.add(ref[c - 1], Z[c - 1], out=ref[c])
        if s[c] > s[c - 1]:
            ref[c] *= np.dtype(dtype).type(math.exp(s[c - 1] - s[c]))
    rescale = np.zeros(nc, dtype=bool)
    rescale[1:] = s[1:] > s[:-1]
    fac = np.ones(nc, dtype=dtype)
    for c in np.flatnonzero(rescale):
        fac[c] = math.exp(s[c - 1] - s[c])
    _prefix_states(out, fac, rescale)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_take_matches_fancy_indexing(rng, dtype):
    src = rng.standard_normal((7, 3, 2)).astype(dtype)
    for idx in (np.array([[0, 6], [2, 2]]), np.array([], dtype=np.int64), np.array([5])):
        np.testing.assert_array_equal(K._take(src, idx), src[idx])
    x = rng.standard_normal(20)
    x[3] = -np.inf
    from scipy.special import logsumexp

    assert K._logsumexp(x) == pytest.approx(float(logsumexp(x)), rel=1e-14)
    assert K._logsumexp(np.full(3, -np.inf)) == -np.inf
    assert K._logsumexp(np.zeros(0)) == -np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_rows_matches_numpy(rng, dtype):
    from attention._kernels.features import _exp_rows

    u = (rng.standard_normal((9, 37)) * 5).astype(dtype)
    u[3] = -np.inf  # a row without finite entries: shift 0, zero features
    u[4, :5] = -np.inf
    off = rng.standard_normal(9)
    ref = u.astype(np.float64)
    mx = ref.max(axis=1)
    sh = np.where(np.isfinite(mx), mx, 0.0)
    ref = np.exp(ref - sh[:, None])
    cq = np.full(9, np.nan)
    out = u.copy()
    _exp_rows(out, off, cq)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out, ref, rtol=tol, atol=0)
    np.testing.assert_allclose(cq, sh + off, rtol=1e-15)
    assert np.all(out[3] == 0) and np.all(out[4, :5] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "p", "C"), [(10, 0, 3), (12, 4, 4), (5, 2, 8), (1, 0, 1)])
@pytest.mark.parametrize("with_mult", [False, True])
def test_chunk_features_match_numpy(rng, dtype, m, p, C, with_mult):
    from attention._kernels.features import _chunk_features

    M = 7
    lk = (rng.standard_normal((m, M)) * 3).astype(dtype)
    off = rng.standard_normal(m)
    mult = rng.standard_normal((m, M)).astype(dtype)
    na = m - p
    nc = -(-na // C)
    s_pre = float(np.max(lk[:p].astype(float).max(axis=1) + off[:p])) if p else -np.inf
    # Reference: running maximum of the chunk maxima of lk + off, then the shifted exps.
    l64 = lk.astype(np.float64) + off[:, None]
    s_ref = np.empty(nc)
    run = s_pre
    F_ref = np.zeros((nc, M, C))
    for c in range(nc):
        j0, j1 = p + c * C, min(m, p + (c + 1) * C)
        run = max(run, float(l64[j0:j1].max()))
        s_ref[c] = run
        blk = np.exp(l64[j0:j1] - run)
        if with_mult:
            blk = blk * mult[j0:j1]
        F_ref[c, :, : j1 - j0] = blk.T
    Ft = np.full((nc, M, C), np.nan, dtype=dtype)
    s = np.empty(nc)
    _chunk_features(lk, off, mult if with_mult else mult[:1, :1], with_mult, p, C, s_pre, Ft, s)
    np.testing.assert_array_equal(s, s_ref)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(Ft, F_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_kbar", [False, True])
def test_finish_and_merge_rows_match_numpy(rng, dtype, with_kbar):
    from attention._kernels.features import _finish_rows, _merge_rows

    n, d, dv = 11, 6, 4
    num = rng.standard_normal((n, dv + 1)).astype(dtype)
    num[:, dv] = np.abs(num[:, dv])
    num[2, dv] = 0.0  # a row without keys
    q = rng.standard_normal((n, d)).astype(dtype)
    kbar = rng.standard_normal((n, d)) if with_kbar else np.zeros((0, 0))
    c = rng.standard_normal(dv)
    r = 0.7
    q64 = q.astype(np.float64) * r

    def stats_ref(y):
        y = y.astype(np.float64)
        qk = np.einsum("ij,ij->i", q64, kbar) if with_kbar else np.zeros(n)
        return np.stack(
            [np.sum(y * y, 1), np.sum((y - c) ** 2, 1), np.sum(q64 * q64, 1), qk], axis=1
        )

    y = np.full((n, dv), np.nan, dtype=dtype)
    st = np.full((n, 4), np.nan)
    _finish_rows(num[:, :dv], num[:, dv], q, r, kbar, c, y, st)
    ref = K._ratio(num[:, :dv], num[:, dv])
    np.testing.assert_array_equal(y, ref)  # the same division in the same dtype
    np.testing.assert_allclose(st, stats_ref(ref), rtol=1e-12, atol=1e-12)

    logscale = rng.standard_normal(n)
    logscale[5] = -np.inf
    ref_shift = logscale + np.abs(rng.standard_normal(n))
    ref_shift[5] = 0.3
    corr = rng.standard_normal((n, dv + 1))
    corr[:, dv] = np.abs(corr[:, dv])
    corr[7, dv] = -5.0  # a non-positive normaliser -> 0
    y = np.full((n, dv), np.nan)
    den = np.full(n, np.nan)
    _merge_rows(num, logscale, corr, ref_shift, q, r, kbar, c, y, den, st)
    with np.errstate(invalid="ignore"):
        fac = np.where(np.isfinite(logscale), np.exp(logscale - ref_shift), 0.0)
    num_t = fac[:, None] * num[:, :dv].astype(float) + corr[:, :dv]
    den_t = fac * num[:, dv].astype(float) + corr[:, dv]
    den_t = np.where(den_t > 0, den_t, 0.0)
    yref = K._ratio(num_t, den_t)
    np.testing.assert_allclose(den, den_t, rtol=1e-14)
    np.testing.assert_allclose(y, yref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(st, stats_ref(yref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("performer", {}),
        ("scatterbrain", {}),
        ("taylor", {}),
        ("taylor", {"feature_budget": 8, "sketch_size": 16}),
        ("tensorsketch", {}),
        ("polysketch", {"nonnegative": False}),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_segments_do_not_change_results(rng, method, params, dtype, monkeypatch):
    # Long inputs run the feature GEMMs and chunk products segment by segment: force many
    # (and ragged) segments on a short input and compare with one segment.
    Q, Kk, V = _data(rng, n=150, G=2, dtype=dtype)
    one = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    monkeypatch.setattr(K, "_SEGMENT_ROWS", 40)  # 40 rows: 1 chunk of 32 per segment
    monkeypatch.setattr(K, "_SPARSE_BLOCKS", 1)
    many = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    np.testing.assert_allclose(many.output, one.output, rtol=2e-6, atol=1e-7)
    monkeypatch.setattr(K, "_SEGMENT_ROWS", 70)
    monkeypatch.setattr(K, "_SPARSE_BLOCKS", 3)
    many = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    np.testing.assert_allclose(many.output, one.output, rtol=2e-6, atol=1e-7)
    # Against the per-slice route (taken when n != m): the same results and bound.
    monkeypatch.setattr(K, "_segmented", lambda problem: False)
    ref = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    np.testing.assert_allclose(ref.output, one.output, rtol=2e-6, atol=1e-7)
    if one.bound is not None:
        assert one.bound.value == pytest.approx(ref.bound.value, rel=1e-6)
    assert one.cost == ref.cost


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_take_t_matches_fancy_indexing(rng, dtype):
    src = rng.standard_normal((7, 5)).astype(dtype)
    idx = rng.integers(0, 7, (4, 3))
    np.testing.assert_array_equal(K._take_t(src, idx), src[idx].transpose(0, 2, 1))
    assert K._take_t(src, np.zeros((0, 3), dtype=np.int64)).shape == (0, 5, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_means_and_value_ball_match_numpy(rng, dtype):
    from attention._kernels.features import _key_means, _value_ball

    k = rng.standard_normal((13, 5)).astype(dtype)
    kbar, nk = np.full((13, 5), np.nan), np.full(13, np.nan)
    _key_means(k, 0.5, kbar, nk)
    k64 = k.astype(np.float64) * 0.5
    np.testing.assert_allclose(kbar, np.cumsum(k64, 0) / np.arange(1, 14)[:, None], rtol=1e-14)
    np.testing.assert_allclose(nk, np.sum(k64 * k64, 1), rtol=1e-14)
    v = rng.standard_normal((9, 4)).astype(dtype)
    c = np.full(4, np.nan)
    R2, vm2 = _value_ball(v, c)
    v64 = v.astype(np.float64)
    np.testing.assert_allclose(c, v64.mean(0), rtol=1e-14, atol=1e-16)
    assert R2 == pytest.approx(float(np.max(np.sum((v64 - c) ** 2, 1))), rel=1e-14)
    assert vm2 == pytest.approx(float(np.max(np.sum(v64**2, 1))), rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_window_features_match_numpy(rng, dtype):
    from attention._kernels.features import _window_features

    fk = rng.random((30, 6)).astype(dtype)
    ck = rng.standard_normal(30) * 20  # factors far below 1 (and below the cut)
    Jw = rng.integers(0, 30, (5, 16))
    out = np.full((5, 6, 16), np.nan, dtype=dtype)
    cmax = np.full(5, np.nan)
    _window_features(fk, ck, Jw, out, cmax)
    np.testing.assert_array_equal(cmax, ck[Jw].max(axis=1))
    e = np.exp(ck[Jw] - cmax[:, None]).astype(dtype)
    e[ck[Jw] - cmax[:, None] < (-87 if dtype == np.float32 else -708)] = 0.0
    ref = fk[Jw].transpose(0, 2, 1) * e[:, None, :]
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(out, ref, rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "nb", "cs"), [(40, 4, 8), (130, 8, 8), (200, 2, 16)], ids=str)
def test_bucket_tiles_match_reference(rng, dtype, n, nb, cs):
    # The register-tile sparse part (scores, low-rank products, weights, W [V 1]) against
    # the plain-NumPy block weights times the window values.
    from attention._kernels.features import _bucket_tiles, _window_features

    d, M, dv = 8, 8, 16
    hq = rng.integers(0, nb, n)
    hk = rng.integers(0, nb, n)
    hq[0] = hk[0] = 0
    pos = np.arange(n)
    sets = _bucket_sets(hq, hk, pos, pos, cs)
    rows, J, keep, _, _ = _bucket_blocks(hq, sets, pos, pos, cs)
    wstart, Jw = K._bucket_windows(hk, nb, cs)
    wid = wstart[hq[rows[:, 0]]] + sets[4][rows[:, 0]] // cs
    np.testing.assert_array_equal(Jw[wid], J)  # each block reads its window
    qs = rng.standard_normal((n, d)).astype(dtype)
    ks = rng.standard_normal((n, d)).astype(dtype)
    phq = rng.random((n, M)).astype(dtype)
    fk = rng.random((n, M)).astype(dtype)
    phq[3] = 0.0  # a zero low-rank estimate: log(0) = -inf in the reference
    cq, ck = rng.standard_normal(n) * 3, rng.standard_normal(n) * 3
    vv = np.hstack([rng.standard_normal((n, dv)), np.ones((n, 1))]).astype(dtype)
    ref = rng.standard_normal(n) * 3
    ref[::5] = -np.inf
    fwe = np.empty((Jw.shape[0], M, Jw.shape[1]), dtype=dtype)
    cmax = np.empty(Jw.shape[0])
    _window_features(fk, ck, Jw, fwe, cmax)
    kwt, vw = ks[Jw].transpose(0, 2, 1).copy(), vv[Jw].copy()
    corr, ref_out = np.full((n, dv + 1), 7.0), ref.copy()
    _bucket_tiles(qs, phq, kwt, fwe, vw, rows, wid, keep, cq, cmax, ref_out, corr)
    # Reference: the same blocks in NumPy (float64 products).
    rr = np.maximum(rows, 0)
    sc = np.einsum("bid,bjd->bij", qs[rr].astype(float), ks[J].astype(float)).astype(dtype)
    lp = np.einsum("bia,bja->bij", phq[rr].astype(float), fk[J].astype(float))
    w, rb = _bucket_weights_reference(sc, lp, keep, rows, J, cq, ck, ref)
    blk = np.einsum("bij,bjc->bic", w.astype(float), vv[J].astype(float))
    ok = rows >= 0
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ref_out[rows[ok]], rb[ok], rtol=tol, atol=tol)
    # Both terms of a weight are <= 1 (shift rb): rounding is relative to sum_j |v_j|.
    size = np.einsum("bij,bjc->bic", keep.astype(float), np.abs(vv[J].astype(float)))
    assert np.all(np.abs(corr[rows[ok]] - blk[ok]) <= tol * size[ok])
    untouched = np.setdiff1d(np.arange(n), rows[ok])
    assert np.all(corr[untouched] == 7.0) and np.array_equal(ref_out[untouched], ref[untouched])
    assert np.all(np.isfinite(corr))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatterbrain_tiles_match_blas_path(rng, dtype, monkeypatch):
    # The sparse part on register tiles and on batched BLAS GEMMs: same outputs to
    # rounding, same kept pairs; the tiles skip the padding rows of the blocks.
    import attention.exact as exact_module

    Q, Kk, V = _data(rng, n=300, d=16, dv=16, G=2, amp=0.6, dtype=dtype)
    kw = dict(rng=4, causal=True, chunk_size=8, n_features=32)
    monkeypatch.setattr(exact_module, "_USE_TILES", True)
    a = _run(Q, Kk, V, "scatterbrain", **kw)
    monkeypatch.setattr(exact_module, "_USE_TILES", False)
    b = _run(Q, Kk, V, "scatterbrain", **kw)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(a.output, b.output, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.lse, b.lse, rtol=tol, atol=tol)
    assert a.bound.value == pytest.approx(b.bound.value, rel=tol)
    assert a.cost.kernel_evals == b.cost.kernel_evals
    # Both paths count the entries of the blocks' real rows (not the BLAS padding).
    assert a.cost.flops == b.cost.flops


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_products_match_numpy(rng, dtype):
    # Register-tile chunk products == the batched NumPy GEMMs of _apply_state.
    from attention._kernels.features import _chunk_products

    nc, C, M, dv = 3, 16, 24, 16
    P = rng.random((nc, C, M)).astype(dtype)
    S = rng.standard_normal((nc, M, dv + 1)).astype(dtype)
    Ft = rng.random((nc, M, C)).astype(dtype)
    Vc = rng.standard_normal((nc, C, dv + 1)).astype(dtype)
    out = np.full((nc, C, dv + 1), np.nan, dtype=dtype)
    _chunk_products(P, S, Ft, Vc, out)
    f = [x.astype(np.float64) for x in (P, S, Ft, Vc)]
    ref = f[0] @ f[1] + ((f[0] @ f[2]) * np.tri(C)) @ f[3]
    size = np.abs(f[0]) @ np.abs(f[1]) + ((np.abs(f[0]) @ f[2]) * np.tri(C)) @ np.abs(f[3])
    assert np.all(np.abs(out - ref) <= 4 * (M + C) * np.finfo(dtype).eps * size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_apply_state_tiles_match_blas(rng, dtype, monkeypatch):
    # _apply_state with the chunk products on register tiles and on batched BLAS GEMMs,
    # with a query offset (padding) and a ragged last chunk.
    import attention.exact as exact_module

    m, n, M, dv = 150, 120, 32, 16
    lk = rng.standard_normal((m, M)).astype(dtype)
    vaug = np.hstack([rng.standard_normal((m, dv)), np.ones((m, 1))]).astype(dtype)
    st = K._key_state(lk, None, vaug, n, m - n, True)
    phq = rng.random((n, M)).astype(dtype)
    monkeypatch.setattr(exact_module, "_USE_TILES", True)
    a, sa = K._apply_state(phq, st)
    monkeypatch.setattr(exact_module, "_USE_TILES", False)
    b, sb = K._apply_state(phq, st)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
    np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_sums_match_numpy(rng, dtype):
    from attention._kernels.features import _chunk_sums

    nc, C, M, dv = 4, 16, 24, 16
    Ft = rng.random((nc, M, C)).astype(dtype)
    Vc = rng.standard_normal((nc, C, dv + 1)).astype(dtype)
    S = np.full((nc, M, dv + 1), np.nan, dtype=dtype)
    _chunk_sums(Ft, Vc, S)
    assert np.all(np.isnan(S[0]))  # not written
    f, v = Ft.astype(np.float64), Vc.astype(np.float64)
    ref = f[:-1] @ v[:-1]
    size = f[:-1] @ np.abs(v[:-1])
    assert np.all(np.abs(S[1:] - ref) <= 4 * C * np.finfo(dtype).eps * size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_state_tiles_match_blas(rng, dtype, monkeypatch):
    import attention.exact as exact_module

    m, M, dv = 150, 32, 16
    lk = rng.standard_normal((m, M)).astype(dtype) * 3
    vaug = np.hstack([rng.standard_normal((m, dv)), np.ones((m, 1))]).astype(dtype)
    monkeypatch.setattr(exact_module, "_USE_TILES", True)
    a = K._key_state(lk, None, vaug, 120, m - 120, True)
    monkeypatch.setattr(exact_module, "_USE_TILES", False)
    b = K._key_state(lk, None, vaug, 120, m - 120, True)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(a.S, b.S, rtol=tol, atol=tol * np.abs(b.S).max())
    np.testing.assert_array_equal(a.s, b.s)


def _scan_reference(P, L, off, mult, form, V, C):
    """Plain NumPy causal linear attention by chunks: shifts and ``out[h, i]`` (float64).

    Row ``i`` (chunk ``c``) sees the keys ``j <= i`` with the features at the chunk's
    shift ``s[c]`` (running maximum of the keys' log-features up to the chunk's end).
    """
    m = L.shape[0]
    nc = -(-m // C)
    L64, V64, P64 = (x.astype(np.float64) for x in (L, V, P))
    if form == "plain":
        s = np.zeros(nc)
        feats = [L64] * nc
    else:
        top = L64.max(axis=1) + off
        s = np.maximum.accumulate([top[c * C : (c + 1) * C].max() for c in range(nc)])
        mul = mult.astype(np.float64) if form == "log_mult" else 1.0
        feats = [np.exp(L64 + off[:, None] - s[c]) * mul for c in range(nc)]
    out = np.zeros((P.shape[0], m, V.shape[1]))
    size = np.zeros_like(out)
    for i in range(m):
        f = feats[i // C][: i + 1]
        out[:, i] = (P64[:, i] @ f.T) @ V64[: i + 1]
        size[:, i] = (np.abs(P64[:, i]) @ np.abs(f).T) @ np.abs(V64[: i + 1])
    return s, out, size


@pytest.mark.parametrize("m", [64, 150], ids=["whole-chunks", "ragged"])
@pytest.mark.parametrize("form", ["log", "log_mult", "plain"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_kernels_match_reference(rng, dtype, form, m):
    # _scan_key_states (shifts, states at the segment starts) and _scan_segment (chunk
    # products of G heads continuing the scan) == the dense causal formula per chunk.
    from attention._kernels.features import _scan_key_states, _scan_segment

    C, seg, M, dv, G = 32, 2, 24, 16, 2
    w = dv + 1
    L = (rng.standard_normal((m, M)) * (2.0 if form != "plain" else 0.3)).astype(dtype)
    off = rng.standard_normal(m)
    mult = rng.standard_normal((m, M)).astype(dtype)
    V = np.hstack([rng.standard_normal((m, dv)), np.ones((m, 1))]).astype(dtype)
    P = rng.random((G, m, M)).astype(dtype)
    L0, V0 = L.copy(), V.copy()
    use_log, use_mult = form != "plain", form == "log_mult"
    nc = -(-m // C)
    nseg = -(-nc // seg)
    s = np.full(nc, np.nan)
    Sseg = np.full((nseg, M, w), np.nan, dtype=dtype)
    _scan_key_states(L, off, mult, use_log, use_mult, V, C, seg, s, Sseg)
    s_ref, ref, size = _scan_reference(P, L, off, mult, form, V, C)
    np.testing.assert_allclose(s, s_ref, rtol=1e-15, atol=0)
    assert np.all(Sseg[0] == 0)  # no key before the first chunk
    got = np.full((G, m, w), np.nan)
    for t in range(nseg):
        i0 = t * seg * C
        rows = min(m, i0 + seg * C) - i0
        Pseg = np.zeros((G, seg * C, M), dtype=dtype)
        Pseg[:, :rows] = P[:, i0 : i0 + rows]
        S = Sseg[t].copy()
        out = np.full((G, seg * C, w), np.nan, dtype=dtype)
        _scan_segment(Pseg, L, off, mult, use_log, use_mult, V, C, t * seg, s, S, out)
        got[:, i0 : i0 + rows] = out[:, :rows]
    assert np.all(np.abs(got - ref) <= 8 * (M + m) * np.finfo(dtype).eps * size)
    np.testing.assert_array_equal(L, L0)
    np.testing.assert_array_equal(V, V0)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("performer", {}),
        ("taylor", {}),
        ("polysketch", {}),
        ("tensorsketch", {}),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_route_matches_chunk_states(rng, method, params, dtype, monkeypatch):
    # The grouped row segments with the key side as a scan (segment states only) and
    # with all chunk states materialised: same outputs to rounding, same bound and cost.
    calls = []
    scan = K._scan_segment

    def counted(*args):
        calls.append(1)
        return scan(*args)

    Q, Kk, V = _data(rng, n=150, d=8, dv=16, G=3, dtype=dtype)
    monkeypatch.setattr(K, "_SEGMENT_ROWS", 64)  # several segments, a ragged last one
    monkeypatch.setattr(K, "_scan_segment", counted)
    a = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    assert calls  # the scan route was taken
    monkeypatch.setattr(
        K,
        "_scan_key_state",
        lambda lk, sk, vaug, n, off, causal, lk_off=None: K._key_state(
            lk, sk, vaug, n, off, causal, lk_off=lk_off
        ),
    )
    b = _run(Q, Kk, V, method, rng=0, causal=True, **params)
    # (Signed features, whose normalisers can cancel, are checked on the kernels:
    # test_scan_kernels_match_reference, form "plain".)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a.output, b.output, rtol=tol, atol=tol)
    if a.bound is not None:
        assert a.bound.value == pytest.approx(b.bound.value, rel=tol)
    assert a.cost == b.cost


@pytest.mark.parametrize("n", [64, 100], ids=["whole-blocks", "short-last-block"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_attend_tiles_match_reference(rng, dtype, n):
    # LevAttention's register-tile blocks == softmax of each row over its kept keys
    # (dense NumPy, float64), including rows that keep no key.
    from attention._kernels.features import _block_attend_tiles

    m, d, dv, B = 90, 8, 16, 32
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((m, d)).astype(dtype)
    v = rng.standard_normal((m, dv)).astype(dtype)
    nb = -(-n // B)
    L = 20
    U = np.stack([np.sort(rng.choice(m, L, replace=False)) for _ in range(nb)])
    keep = rng.random((nb, B, L)) < 0.4
    keep[0, 3] = False  # a row without keys
    out = np.full((n, dv), np.nan, dtype=dtype)
    lse = np.full(n, np.nan)
    _block_attend_tiles(q, k, v, U, keep, out, lse)
    for i in range(n):
        b, r = divmod(i, B)
        J = U[b][keep[b, r]]
        if J.size == 0:
            assert np.all(out[i] == 0) and lse[i] == -np.inf
            continue
        s = q[i].astype(float) @ k[J].astype(float).T
        w = np.exp(s - s.max())
        y = w @ v[J].astype(float) / w.sum()
        tol = 16 * (d + J.size) * np.finfo(dtype).eps
        size = np.abs(w) @ np.abs(v[J].astype(float)) / w.sum() + np.abs(y)
        assert np.all(np.abs(out[i] - y) <= tol * (size + np.abs(s).max() * size))
        assert lse[i] == pytest.approx(s.max() + np.log(w.sum()), abs=tol * (1 + np.abs(s).max()))


@pytest.mark.parametrize("error_bound", [None, "norms", "exact"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_levattention_tiles_match_blas_path(rng, dtype, error_bound, monkeypatch):
    import attention.exact as exact_module

    Q, Kk, V = _data(rng, n=150, d=8, dv=16, G=3, dtype=dtype)
    kw = dict(rng=0, causal=True, n_keys=12, error_bound=error_bound)
    monkeypatch.setattr(exact_module, "_USE_TILES", True)
    a = _run(Q, Kk, V, "levattention", **kw)
    monkeypatch.setattr(exact_module, "_USE_TILES", False)
    b = _run(Q, Kk, V, "levattention", **kw)
    tol = 1e-5 if dtype == np.float32 and error_bound != "exact" else 1e-12
    np.testing.assert_allclose(a.output, b.output, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.stack(a.lse), np.stack(b.lse), rtol=tol, atol=tol)
    if error_bound is not None:
        assert a.bound.value == pytest.approx(b.bound.value, rel=max(tol, 1e-9))
    assert a.cost == b.cost


@pytest.mark.parametrize("window", [0, 4], ids=["keys", "keys+window"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_levattention_norms_bound(rng, dtype, causal, window, monkeypatch):
    # The default bound: the dropped mass bounded from norms, without the exact pass.
    # It holds, is not below the bound from the exact dropped mass (it bounds the same
    # eps_i from above), and (negative control) the same bound with nothing dropped
    # (eps_i = 0: the rounding allowance alone) is below the actual error.
    import attention.exact as exact_module

    Q, Kk, V = _data(rng, n=96, d=8, dv=16, G=2, amp=0.6, dtype=dtype)
    V[:, ::3] += 3.0  # kept and dropped keys carry different values
    kw = dict(rng=0, causal=causal, n_keys=6, window=window)
    exact_ref = exact_module._attend
    monkeypatch.setattr(exact_module, "_attend", lambda *a, **k: pytest.fail("exact pass"))
    r = _run(Q, Kk, V, "levattention", **kw)
    monkeypatch.setattr(exact_module, "_attend", exact_ref)
    assert r.bound.kind == "deterministic" and "Cauchy-Schwarz" in r.bound.assumptions
    assert r.output.dtype == dtype
    Y = reference_attention(*(x.astype(np.float64) for x in (Q, Kk, V)), causal=causal)
    err = np.linalg.norm(r.output.astype(np.float64) - Y)
    assert err <= r.bound.value
    assert r.bound.value < 50 * err  # loose, not trivial on these inputs
    x = _run(Q, Kk, V, "levattention", error_bound="exact", **kw)
    assert r.bound.value >= x.bound.value * (1 - 1e-3)
    assert r.cost.flops < x.cost.flops
    problem = prepare(Q, Kk, V, causal=causal)
    visible = K._visible_counts(problem)
    nothing = K._levattention_norms_bound(
        problem, list(r.output), r.lse, [visible] * 2, r.output.dtype
    )
    assert nothing.value < err


def test_levattention_norms_bound_rows_without_dropped_keys(rng):
    # Rows that keep every visible key (the first n_keys causal rows) get eps_i = 0:
    # their bound is the rounding allowance only.
    Q, Kk, V = _data(rng, n=40, d=8, dv=16, G=1)
    r = _run(Q, Kk, V, "levattention", rng=0, causal=True, n_keys=40)
    Y = reference_attention(Q, Kk, V, causal=True)
    assert np.linalg.norm(r.output - Y) <= r.bound.value < 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angular_codes_match_angular_lsh(rng, dtype):
    # Scatterbrain's hash kernel == rnla.cluster.angular_lsh of sqrt(scale) x (float64),
    # ties included (rows repeated with a sign flip, zero rows); x is not modified.
    from attention._kernels.features import _angular_codes
    from rnla.cluster import angular_lsh

    x = rng.standard_normal((300, 16)).astype(dtype)
    x[10:20] = 0.0
    x[20:30] = -x[30:40]
    x0 = x.copy()
    r = 0.37
    for nb in (2, 8, 16):
        R = np.random.default_rng(5).standard_normal((1, 16, nb // 2))[0]
        got = np.empty(300, dtype=np.int64)
        _angular_codes(x, r, np.ascontiguousarray(R), got)
        want = angular_lsh(x.astype(np.float64) * r, nb, rng=5)[0]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finish_rows_keys_matches_key_means(rng, dtype):
    # Performer's segment rows continue the causal key sums (_key_sums at the segment
    # starts) instead of reading the n x d means of _key_means: same norms, same row
    # sums to rounding, segment by segment (a ragged last segment).
    from attention._kernels.features import (
        _finish_rows,
        _finish_rows_keys,
        _key_means,
        _key_sums,
    )

    n, d, dv, R, r = 150, 8, 5, 64, 0.4
    k = rng.standard_normal((n, d)).astype(dtype)
    q = rng.standard_normal((n, d)).astype(dtype)
    num = rng.standard_normal((n, dv + 1)).astype(dtype)
    den = np.abs(num[:, dv]) + 1
    den[3] = 0
    c = rng.standard_normal(dv)
    kbar, nk = np.empty((n, d)), np.empty(n)
    _key_means(k, r, kbar, nk)
    nk2, ksum = np.empty(n), np.empty((-(-n // R), d))
    _key_sums(k, r, R, nk2, ksum)
    np.testing.assert_array_equal(nk, nk2)
    y1, s1 = np.empty((n, dv), dtype=dtype), np.empty((n, 4))
    _finish_rows(num, den, q, r, kbar, c, y1, s1)
    y2, s2 = np.full((n, dv), np.nan, dtype=dtype), np.full((n, 4), np.nan)
    for i0 in range(0, n, R):
        i1 = min(n, i0 + R)
        _finish_rows_keys(
            num[i0:i1], den[i0:i1], q[i0:i1], r, k, i0, ksum[i0 // R], c, y2[i0:i1], s2[i0:i1]
        )
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(s2, s1, rtol=1e-13, atol=1e-13)
    # Negative control: the sums of another segment start are detected.
    bad = np.empty((n - R, 4))
    _finish_rows_keys(num[R:], den[R:], q[R:], r, k, R, ksum[0], c, y2[R:], bad)
    assert not np.allclose(bad[:, 3], s1[R:, 3], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_rows_keys_matches_key_means(rng, dtype):
    # Scatterbrain's merge with the causal key means as running sums == with the n x d
    # means of _key_means (rows and row sums; a row without low-rank part).
    from attention._kernels.features import _key_means, _merge_rows, _merge_rows_keys

    n, d, dv, r = 70, 8, 5, 0.4
    k = rng.standard_normal((n, d)).astype(dtype)
    q = rng.standard_normal((n, d)).astype(dtype)
    num = np.abs(rng.standard_normal((n, dv + 1))).astype(dtype)
    logscale = rng.standard_normal(n)
    logscale[2] = -np.inf
    corr = np.abs(rng.standard_normal((n, dv + 1)))
    ref = logscale + 0.5
    ref[2] = 0.0
    c = rng.standard_normal(dv)
    kbar, nk = np.empty((n, d)), np.empty(n)
    _key_means(k, r, kbar, nk)
    outs = []
    for fn, keys in ((_merge_rows, kbar), (_merge_rows_keys, k)):
        y, den, stats = np.empty((n, dv), dtype=dtype), np.empty(n), np.empty((n, 4))
        fn(num, logscale, corr, ref, q, r, keys, c, y, den, stats)
        outs.append((y, den, stats))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[1][2], outs[0][2], rtol=1e-13, atol=1e-13)
