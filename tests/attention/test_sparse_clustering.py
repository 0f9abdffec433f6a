"""Tests of attention.sparse (topk, window, bigbird) and attention.clustering (LSH, k-means)."""

import numpy as np
import pytest

import attention.sparse as sp
from attention._core import relative_error
from attention._registry import approximate, get_method
from attention.data import load_sample
from attention.exact import reference_attention
from tests.conftest import tol

ALL = ("topk", "window", "bigbird", "reformer", "routing", "smyrf", "multipole")
CAUSAL = ("topk", "window", "bigbird", "reformer", "routing")
# Causal methods whose key sets can cover every visible key (exact limit).
CAUSAL_EXACT = ("topk", "window", "bigbird", "routing")

# Parameters under which each method's key sets cover every key: the result is exact.
EXACT_PARAMS = {
    "topk": {"top_k": 1000},
    "window": {"window": 1000},
    "bigbird": {"block_size": 8, "n_window": 100},
    "reformer": {"chunk_size": 1000, "n_rounds": 3},  # duplicate correction is exercised
    "routing": {"n_clusters": 1, "cluster_size": 1000},
    "smyrf": {"bucket_size": 1000, "n_rounds": 1},
    "multipole": {"n_keys": 1000, "n_clusters": 4},
}


def _qkv(rng, dtype, n=40, m=40, d=8, dv=5, lead=(2,)):
    Q = rng.standard_normal((*lead, n, d)).astype(dtype)
    K = rng.standard_normal((*lead, m, d)).astype(dtype)
    V = rng.standard_normal((*lead, m, dv)).astype(dtype)
    return Q, K, V


def test_registered():
    for name in ALL:
        info = get_method(name)
        assert info.causal == (name in CAUSAL)
        assert info.family in ("sparse", "clustering")


@pytest.mark.parametrize("method", ALL)
def test_exact_limit_and_dtype(rng, dtype, method):
    Q, K, V = _qkv(rng, dtype, n=30, m=37)
    r = approximate(Q, K, V, method, rng=rng, **EXACT_PARAMS[method])
    Y, lse = reference_attention(Q, K, V, return_lse=True)
    assert r.output.dtype == dtype and r.output.shape == Y.shape
    np.testing.assert_allclose(r.output, Y, rtol=tol(dtype, 500), atol=tol(dtype, 500))
    if method != "smyrf":
        np.testing.assert_allclose(r.lse, lse, rtol=tol(dtype, 500), atol=tol(dtype, 500))


@pytest.mark.parametrize("method", ALL)
def test_grouped_query_heads(rng, method):
    # 4 query heads share 2 key/value heads (and a broadcast batch axis).
    Q = rng.standard_normal((2, 4, 24, 6))
    K = rng.standard_normal((1, 2, 24, 6))
    V = rng.standard_normal((1, 2, 24, 3))
    r = approximate(Q, K, V, method, rng=rng, **EXACT_PARAMS[method])
    Y = reference_attention(Q, np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1))
    np.testing.assert_allclose(r.output, Y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", CAUSAL_EXACT)
@pytest.mark.parametrize(("n", "m"), [(30, 30), (20, 33)], ids=str)
def test_causal_exact_limit(rng, method, n, m):
    Q, K, V = _qkv(rng, np.float64, n=n, m=m)
    r = approximate(Q, K, V, method, rng=rng, causal=True, **EXACT_PARAMS[method])
    Y = reference_attention(Q, K, V, causal=True)
    np.testing.assert_allclose(r.output, Y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", CAUSAL)
def test_causal_no_future_leakage(rng, method):
    n, m, t = 48, 64, 40
    Q, K, V = _qkv(rng, np.float64, n=n, m=m)
    params = {
        "topk": {"top_k": 5},
        "window": {"window": 6},
        "bigbird": {"block_size": 4},
        "reformer": {"n_buckets": 4, "chunk_size": 4, "n_rounds": 3},
        "routing": {"n_clusters": 3, "cluster_size": 6},
    }[method]
    a = approximate(Q, K, V, method, rng=3, causal=True, **params)
    K2, V2, Q2 = K.copy(), V.copy(), Q.copy()
    K2[..., t:, :] = 10 * rng.standard_normal(K2[..., t:, :].shape)
    V2[..., t:, :] = rng.standard_normal(V2[..., t:, :].shape)
    # Query i sees key positions <= i + m - n: rows i < t - (m - n) see no changed key.
    rows = t - (m - n)
    Q2[..., rows:, :] = 10 * rng.standard_normal(Q2[..., rows:, :].shape)
    b = approximate(Q2, K2, V2, method, rng=3, causal=True, **params)
    np.testing.assert_array_equal(a.output[..., :rows, :], b.output[..., :rows, :])
    assert not np.allclose(a.output[..., rows:, :], b.output[..., rows:, :])


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("method", ["reformer", "routing"])
def test_causal_no_future_leakage_dv16(rng, monkeypatch, dtype, method, tiles):
    # dv = 16: the register-tile gather kernel (and its portable twin) with the Numba
    # hashing/planning; future queries, keys and values never change a past output.
    import attention.exact as ex

    monkeypatch.setattr(ex, "_USE_TILES", tiles)
    n, m, t = 70, 90, 60
    Q, K, V = _qkv(rng, dtype, n=n, m=m, dv=16)
    params = {
        "reformer": {"n_buckets": 4, "chunk_size": 4, "n_rounds": 3},
        "routing": {"n_clusters": 3, "cluster_size": 6},
    }[method]
    a = approximate(Q, K, V, method, rng=3, causal=True, **params)
    K2, V2, Q2 = K.copy(), V.copy(), Q.copy()
    K2[..., t:, :] = 10 * rng.standard_normal(K2[..., t:, :].shape)
    V2[..., t:, :] = rng.standard_normal(V2[..., t:, :].shape)
    rows = t - (m - n)
    Q2[..., rows:, :] = 10 * rng.standard_normal(Q2[..., rows:, :].shape)
    b = approximate(Q2, K2, V2, method, rng=3, causal=True, **params)
    np.testing.assert_array_equal(a.output[..., :rows, :], b.output[..., :rows, :])
    assert not np.allclose(a.output[..., rows:, :], b.output[..., rows:, :])


@pytest.mark.parametrize("method", ALL)
def test_deterministic_given_rng(rng, method):
    Q, K, V = _qkv(rng, np.float32, n=64, m=64, d=16)
    a = approximate(Q, K, V, method, rng=7)
    b = approximate(Q, K, V, method, rng=7)
    np.testing.assert_array_equal(a.output, b.output)
    assert a.cost == b.cost and a.cost.kernel_evals > 0
    assert np.all(np.isfinite(a.output))


def test_topk_mask_and_gqa(rng):
    Q = rng.standard_normal((1, 4, 20, 6))
    K = rng.standard_normal((1, 2, 25, 6))
    V = rng.standard_normal((1, 2, 25, 3))
    mask = rng.random((20, 25)) < 0.7
    mask[3] = False  # a fully masked row: zero output, lse = -inf
    r = approximate(Q, K, V, "topk", top_k=100, mask=mask)
    Kr, Vr = np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1)
    Y = reference_attention(Q, Kr, Vr, mask=mask)
    np.testing.assert_allclose(r.output, Y, atol=1e-12)
    assert np.all(r.output[..., 3, :] == 0) and np.all(np.isneginf(r.lse[..., 3]))
    additive = np.where(mask, 0.5, -np.inf)
    r2 = approximate(Q, K, V, "topk", top_k=100, mask=additive)
    np.testing.assert_allclose(
        r2.output, reference_attention(Q, Kr, Vr, mask=additive), atol=1e-12
    )


@pytest.mark.parametrize(
    ("method", "params", "exc", "match"),
    [
        ("topk", {"top_k": 0}, ValueError, "top_k=0"),
        ("topk", {"top_k": 2.5}, TypeError, "top_k"),
        ("window", {"window": -1}, ValueError, "window"),
        ("window", {"error_bound": "yes"}, ValueError, "error_bound"),
        ("bigbird", {"block_size": 0}, ValueError, "block_size"),
        ("bigbird", {"n_random": -1}, ValueError, "n_random"),
        ("reformer", {"n_buckets": 5}, ValueError, "even"),
        ("reformer", {"chunk_size": 0}, ValueError, "chunk_size"),
        ("routing", {"n_clusters": 0}, ValueError, "n_clusters"),
        ("routing", {"cluster_size": 0}, ValueError, "cluster_size"),
        ("smyrf", {"n_rounds": 0}, ValueError, "n_rounds"),
        ("multipole", {"n_keys": 0}, ValueError, "n_keys"),
        ("multipole", {"foo": 1}, ValueError, "unknown parameter"),
    ],
)
def test_bad_parameters_rejected(method, params, exc, match):
    Q = np.random.default_rng(0).standard_normal((16, 4))
    Q0 = Q.copy()
    with pytest.raises(exc, match=match):
        approximate(Q, Q, Q, method, **params)
    np.testing.assert_array_equal(Q, Q0)


@pytest.mark.parametrize("method", ["smyrf", "multipole"])
def test_noncausal_methods_reject_causal(method):
    Q = np.ones((8, 4))
    with pytest.raises(ValueError, match="causal"):
        approximate(Q, Q, Q, method, causal=True)


# Budget parameter per method: (small, large); errors must decrease on average.
BUDGETS = {
    "topk": ("top_k", 8, 64),
    "window": ("window", 8, 96),
    "bigbird": ("n_random", 1, 6),
    "reformer": ("n_rounds", 1, 6),
    "routing": ("n_clusters", 16, 2),  # fewer clusters = more keys per query
    "smyrf": ("bucket_size", 16, 128),
    "multipole": ("n_keys", 32, 256),
}


@pytest.fixture(scope="module")
def minilm_heads():
    s = load_sample("minilm")
    Q, K, V = (x[:2, :256].astype(np.float64) for x in (s.Q, s.K, s.V))
    return Q, K, V, s.scale, reference_attention(Q, K, V, scale=s.scale)


@pytest.mark.parametrize("method", ALL)
def test_error_decreases_with_budget_real(minilm_heads, seed, method):
    Q, K, V, scale, Y = minilm_heads
    name, small, large = BUDGETS[method]
    errs = {}
    for val in (small, large):
        errs[val] = np.mean(
            [
                relative_error(
                    approximate(Q, K, V, method, rng=seed + t, scale=scale, **{name: val}).output,
                    Y,
                )
                for t in range(3)
            ]
        )
    assert errs[large] < errs[small]
    assert errs[large] < 1.0


@pytest.mark.parametrize("method", ["topk", "reformer", "routing", "smyrf", "multipole"])
def test_error_synthetic_clustered(rng, method):
    # Keys in a few tight clusters, queries aligned with them and values constant per
    # cluster up to noise: a method that finds each query's cluster beats the trivial
    # estimate (the mean value) by a wide margin.
    centers = 3 * rng.standard_normal((4, 16))
    lab = rng.integers(4, size=128)
    K = centers[lab] + 0.1 * rng.standard_normal((128, 16))
    Q = centers[rng.integers(4, size=128)] + 0.1 * rng.standard_normal((128, 16))
    V = rng.standard_normal((4, 8))[lab] + 0.1 * rng.standard_normal((128, 8))
    Y = reference_attention(Q, K, V)
    # SMYRF's buckets are slabs of one projection: 4 rounds make a miss unlikely.
    params = {"n_rounds": 4} if method == "smyrf" else {}
    err = relative_error(approximate(Q, K, V, method, rng=rng, **params).output, Y)
    trivial = relative_error(np.broadcast_to(V.mean(0), Y.shape), Y)
    assert err < 0.5 * trivial


# ---------------------------------------------------------------------------------------
# Causal Reformer / Routing: the bucketed kernel against a plain-NumPy reference
# ---------------------------------------------------------------------------------------


def _bucket_reference(q, k, v, scale, offset, bq, bk, cs, exclude_self):
    """Dense reference of the causal per-bucket chunk windows (union over rounds)."""
    n, m = q.shape[0], k.shape[0]
    keep = np.zeros((n, m), dtype=bool)
    for r in range(bq.shape[0]):
        for i in range(n):
            p = i + offset
            mine = [j for j in range(m) if j <= p and bk[r, j] == bq[r, i]]
            if not mine:
                continue
            lo = cs * max(0, (len(mine) - 1) // cs - 1)
            keep[i, mine[lo:]] = True
    if exclude_self:
        for i in range(n):
            if 0 <= i + offset < m:
                keep[i, i + offset] = False
    out = np.zeros((n, v.shape[1]))
    for i in range(n):
        if keep[i].any():
            s = q[i] @ k[keep[i]].T * scale
            w = np.exp(s - s.max())
            out[i] = w @ v[keep[i]] / w.sum()
        elif 0 <= i + offset < m:
            out[i] = v[i + offset]  # the own position is the only option
    return out


@pytest.mark.parametrize(("n", "m"), [(37, 37), (25, 40), (40, 25)], ids=str)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("cs", [1, 3, 8])
def test_causal_bucket_kernel_matches_reference(rng, dtype, n, m, exclude_self, cs):
    from attention.clustering import _causal_bucket_attend

    q = rng.standard_normal((n, 6)).astype(dtype)
    k = rng.standard_normal((m, 6)).astype(dtype)
    v = rng.standard_normal((m, 4)).astype(dtype)
    R = 3
    bq = rng.integers(0, 4, (R, n))
    bk = rng.integers(0, 4, (R, m))
    out, lse, pairs = _causal_bucket_attend(q, k, v, 0.4, m - n, bq, bk, cs, exclude_self)
    assert out.dtype == dtype and pairs > 0
    ref = _bucket_reference(
        q.astype(float), k.astype(float), v.astype(float), 0.4, m - n, bq, bk, cs, exclude_self
    )
    np.testing.assert_allclose(out, ref, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    seen = np.arange(n) + m - n >= 0
    assert np.all(np.isfinite(lse[seen])) and np.all(np.isneginf(lse[~seen]))


@pytest.mark.parametrize("method", ["reformer", "routing"])
def test_causal_lsh_cluster_methods_float32_gqa(rng, method):
    Q = rng.standard_normal((1, 4, 50, 8)).astype(np.float32)
    K = rng.standard_normal((1, 2, 50, 8)).astype(np.float32)
    V = rng.standard_normal((1, 2, 50, 3)).astype(np.float32)
    r = approximate(Q, K, V, method, rng=0, causal=True)
    assert r.output.dtype == np.float32 and r.output.shape == (1, 4, 50, 3)
    assert np.all(np.isfinite(r.output)) and r.cost.kernel_evals > 0
    # Position 0 sees only key 0: exact there.
    np.testing.assert_allclose(r.output[..., 0, :], np.repeat(V[..., 0, :], 2, axis=1), rtol=1e-6)


@pytest.mark.parametrize(("s", "kk"), [(1000, 5), (997, 3), (100, 40), (40, 1)], ids=str)
def test_topk_group_preselection_matches_full_sort(rng, s, kk):
    from attention.sparse import _topk_rows_numpy as _topk_rows

    S = rng.standard_normal((30, s)) * 3
    S[0, :] = 1.0  # ties everywhere
    S[1, 5:] = -np.inf  # few visible keys
    v = rng.standard_normal((s, 4))
    out, lse_kept, lse_full = _topk_rows(S.copy(), v, kk)
    for i in range(30):
        order = np.argsort(-S[i], kind="stable")[: min(kk, int(np.isfinite(S[i]).sum()))]
        w = np.exp(S[i, order] - S[i, order].max())
        np.testing.assert_allclose(out[i], w @ v[order] / w.sum(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lse_full[i], np.logaddexp.reduce(S[i]), rtol=1e-12)
        np.testing.assert_allclose(
            lse_kept[i], np.logaddexp.reduce(np.sort(S[i])[::-1][:kk]), rtol=1e-12
        )


def _selection_case(rng, s, b=30, d=6, dv=4):
    q, k, v = (
        rng.standard_normal((b, d)),
        rng.standard_normal((s, d)),
        rng.standard_normal((s, dv)),
    )
    S = q @ k.T * 0.7
    S[0] = 1.0  # ties everywhere
    S[1, 5:] = -np.inf  # few visible keys
    S[3, ::3] = np.round(S[3, ::3])  # many ties inside the row
    lims = np.full(b, s, dtype=np.int64)
    lims[2] = 17  # a short (causal) row
    return S, lims, v


def _stable_top(row, kk):
    """The kk largest finite entries of a row, ties broken by position (first kept)."""
    fin = np.flatnonzero(np.isfinite(row))
    order = fin[np.argsort(-row[fin], kind="stable")]
    return order[: min(kk, fin.size)]


@pytest.mark.parametrize(
    ("s", "kk"), [(1000, 5), (997, 3), (100, 40), (40, 1), (300, 300), (4000, 512)], ids=str
)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_topk_selection_kernel_matches_numpy_reference(rng, s, kk, dt):
    from attention._kernels.topk import _select_block
    from attention.sparse import _topk_rows_numpy

    S, lims, v = _selection_case(rng, s)
    S = S.astype(dt)
    b = S.shape[0]
    sel, sv = np.empty((b, kk), dtype=np.int64), np.empty((b, kk))
    nk, ns, lf = np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64), np.zeros(b)
    _select_block(
        S.copy(),
        lims,
        kk,
        True,
        True,
        sel,
        sv,
        nk,
        ns,
        lf,
        np.zeros((3, 0), S.dtype),
        np.zeros((1, 3)),
    )
    for i in range(b):
        row = S[i, : lims[i]].astype(np.float64)
        want = _stable_top(row, kk)
        got = sel[i, : nk[i]]
        # the same key set (ties at the threshold: the first positions)
        assert sorted(got.tolist()) == sorted(want.tolist()), i
        assert np.all(sel[i, nk[i] :] == -1)
        np.testing.assert_array_equal(sv[i, : nk[i]], row[got])
        _, _, lfi = _topk_rows_numpy(row[None].copy(), v[: lims[i]], kk)
        tol = 1e-12 if dt == np.float64 else 2e-6
        np.testing.assert_allclose(lf[i], lfi[0], rtol=tol, atol=tol)
        assert ns[i] == np.isfinite(row).sum()
    # with the dropped keys' moments (one fused pass): same normaliser, moments as NumPy
    aux = np.abs(rng.standard_normal((3, s))).astype(dt)
    mom, lf2 = np.zeros((b, 3)), np.zeros(b)
    sel2, sv2 = np.empty((b, kk), dtype=np.int64), np.empty((b, kk))
    _select_block(S.copy(), lims, kk, True, True, sel2, sv2, nk, ns, lf2, aux, mom)
    np.testing.assert_array_equal(sel2, sel)
    tol = 1e-12 if dt == np.float64 else 2e-6
    np.testing.assert_allclose(lf2, lf, rtol=tol, atol=tol)
    for i in range(b):
        row = S[i, : lims[i]].astype(np.float64)
        if not np.isfinite(row).any():
            continue
        p = np.exp(row - lf[i])
        p[sel[i, : nk[i]]] = 0.0
        want = p @ aux[:, : lims[i]].astype(np.float64).T
        np.testing.assert_allclose(mom[i], want, rtol=10 * tol, atol=1e-300)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("rescore", [False, True])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_kept_block_matches_numpy_reference(rng, monkeypatch, dense, rescore, dt):
    import attention.sparse as sp
    from attention._kernels.topk import _select_block

    monkeypatch.setattr(sp, "_DENSE_UNION", 10**9 if dense else 0)
    s, kk, b, d = 300, 20, 30, 6
    S, lims, v = _selection_case(rng, s, b=b, d=d)
    q, k = rng.standard_normal((b, d)).astype(dt), rng.standard_normal((s, d)).astype(dt)
    v = v.astype(dt)
    sel, sv = np.empty((b, kk), dtype=np.int64), np.empty((b, kk))
    nk, ns, lf = np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64), np.zeros(b)
    _select_block(
        S.copy(),
        lims,
        kk,
        True,
        False,
        sel,
        sv,
        nk,
        ns,
        lf,
        np.zeros((3, 0), S.dtype),
        np.zeros((1, 3)),
    )
    sv0 = sv.copy()
    out, lk = np.full((b, 4), np.nan), np.full(b, np.nan)
    sp._kept_block(sel, sv, nk, q, k, v, 0.7, rescore, out, lk)
    tol = 1e-12 if dt == np.float64 else 2e-6
    for i in range(b):
        J = sel[i, : nk[i]]
        sc = (q[i].astype(float) @ k[J].astype(float).T) * 0.7 if rescore else sv0[i, : nk[i]]
        w = np.exp(sc - sc.max())
        np.testing.assert_allclose(out[i], w @ v[J].astype(float) / w.sum(), rtol=tol, atol=tol)
        np.testing.assert_allclose(lk[i], sc.max() + np.log(w.sum()), rtol=tol, atol=tol)
        if rescore:
            np.testing.assert_allclose(sv[i, : nk[i]], sc, rtol=tol, atol=tol)
    assert np.all(np.isfinite(out))


def _gather_case(rng, dtype, with_logw, dv=5, W=9):
    n, m, d, nb, B = 23, 31, 6, 5, 4
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((m, d)).astype(dtype)
    v = rng.standard_normal((m, dv)).astype(dtype)
    rows = rng.permutation(n)[: nb * B].reshape(nb, B)
    rows[1, 2] = rows[3, 0] = -1  # padding
    J = rng.integers(0, m, (nb, W))
    kpos = J.copy()
    kpos[0, 3] = -5  # out-of-range positions are never visible
    kpos[2, :] = m  # a block that nobody sees
    lo = rng.integers(0, 6, n)
    hi = lo + rng.integers(0, m, n)
    excl = np.where(rng.random(n) < 0.5, rng.integers(0, m, n), -1)
    logw = -np.log(rng.integers(1, 4, (nb, B, W))).astype(dtype) if with_logw else None
    # accumulators already holding partial results for some rows (merged into)
    acc = rng.standard_normal((n, dv)).astype(dtype)
    L = np.where(rng.random(n) < 0.5, rng.standard_normal(n), -np.inf)
    acc[np.isneginf(L)] = 0
    return q, k, v, rows, J, kpos, lo, hi, excl, logw, acc, L


@pytest.mark.parametrize("with_logw", [False, True])
def test_gather_attend_kernel_matches_numpy_reference(rng, dtype, with_logw):
    import attention.sparse as sp

    q, k, v, rows, J, kpos, lo, hi, excl, logw, acc, L = _gather_case(rng, dtype, with_logw)
    acc0, L0 = acc.copy(), L.copy()
    a1, l1 = sp._gather_attend(
        q, k, v, 0.7, rows, J, kpos, lo, hi, excl, logw, acc.copy(), L.copy()
    )
    a2, l2 = acc.copy(), L.copy()
    sp._gather_attend_numpy(q, k, v, rows, J, kpos, lo, hi, excl, 0.7, logw, a2, l2)
    if with_logw:
        # the in-kernel round counts against explicit log-weights -log(1 + N)
        U, (nb, W), n = 2, J.shape, q.shape[0]
        rounds = (
            rng.integers(0, 2, (U, n)),
            rng.integers(0, 2, (U, nb, W)),
            rng.integers(0, 4, (U, nb, W)),
            rng.integers(0, 4, (U, n)),
        )
        obq, obk, ork, olo = rounds
        rr = np.maximum(rows, 0)
        N = sum(
            (obk[u][:, None, :] == obq[u][rr][:, :, None])
            & (ork[u][:, None, :] >= olo[u][rr][:, :, None])
            for u in range(U)
        )
        a3, l3 = sp._gather_attend(
            q, k, v, 0.7, rows, J, kpos, lo, hi, excl, None, acc.copy(), L.copy(), rounds
        )
        a4, l4 = acc.copy(), L.copy()
        lw = -np.log1p(N).astype(dtype)
        sp._gather_attend_numpy(q, k, v, rows, J, kpos, lo, hi, excl, 0.7, lw, a4, l4)
        np.testing.assert_allclose(a3, a4, rtol=tol(dtype, 100), atol=tol(dtype, 100))
        np.testing.assert_allclose(l3, l4, rtol=tol(dtype, 100), atol=tol(dtype, 100))
        a0, _ = sp._gather_attend(
            q, k, v, 0.7, rows, J, kpos, lo, hi, excl, None, acc.copy(), L.copy()
        )
        assert N.max() > 0 and not np.allclose(a3, a0)  # the counts change the result
    np.testing.assert_allclose(a1, a2, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    np.testing.assert_allclose(l1, l2, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    assert np.all(np.isfinite(a1))
    # a row that is in no block, or sees nothing, keeps its accumulators
    untouched = np.setdiff1d(np.arange(q.shape[0]), rows[rows >= 0])
    np.testing.assert_array_equal(a1[untouched], acc0[untouched])
    np.testing.assert_array_equal(l1[untouched], L0[untouched])
    # the reference itself: one row by hand
    b, r = 0, 0
    i = rows[b, r]
    vis = (kpos[b] >= lo[i]) & (kpos[b] <= hi[i]) & (kpos[b] != excl[i])
    if vis.any():
        s = q[i].astype(float) @ k[J[b, vis]].T.astype(float) * 0.7
        if logw is not None:
            s = s + logw[b, r, vis]
        lse = np.logaddexp.reduce(s)
        y = np.exp(s - lse) @ v[J[b, vis]].astype(float)
        if np.isfinite(L0[i]):
            new = np.logaddexp(L0[i], lse)
            y = np.exp(L0[i] - new) * acc0[i] + np.exp(lse - new) * y
            lse = new
        np.testing.assert_allclose(a2[i], y, rtol=tol(dtype, 100), atol=tol(dtype, 100))
        np.testing.assert_allclose(l2[i], lse, rtol=tol(dtype, 100), atol=tol(dtype, 100))


@pytest.mark.parametrize("W", [9, 70])
@pytest.mark.parametrize("with_logw", [False, True])
def test_gather_attend_tiles_match_row_kernel_and_numpy(rng, dtype, with_logw, W):
    # The register-tile kernel (AVX-512 hosts; LLVM legalises its vectors elsewhere)
    # against the portable row kernel and the plain-NumPy reference, with the round
    # counts of the causal Reformer; dv = 16 (a whole number of vectors for both dtypes).
    import attention.sparse as sp
    from attention._kernels.sparse import _gather_attend as rows_kernel
    from attention._kernels.sparse import _gather_attend_tiles

    q, k, v, rows, J, kpos, lo, hi, excl, logw, acc, L = _gather_case(
        rng, dtype, with_logw, dv=16, W=W
    )
    U, n = 1, q.shape[0]
    rounds = (
        rng.integers(0, 2, (U, n)),
        rng.integers(0, 2, (U, *J.shape)),
        rng.integers(0, 4, (U, *J.shape)),
        rng.integers(0, 4, (U, n)),
    )
    lw = np.empty((0, 0, 0), dtype) if logw is None else logw
    res = []
    for kernel in (rows_kernel, _gather_attend_tiles):
        a, ll = acc.copy(), L.copy()
        kernel(q, k, v, q.dtype.type(0.7), rows, J, kpos, lo, hi, excl, lw, *rounds, a, ll)
        res.append((a, ll))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=tol(dtype, 10), atol=tol(dtype, 10))
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=tol(dtype, 10), atol=tol(dtype, 10))
    obq, obk, ork, olo = rounds
    rr = np.maximum(rows, 0)
    N = (obk[0][:, None, :] == obq[0][rr][:, :, None]) & (
        ork[0][:, None, :] >= olo[0][rr][:, :, None]
    )
    ref_w = -np.log1p(N.astype(np.float64)).astype(dtype) + (0 if logw is None else logw)
    a2, l2 = acc.copy(), L.copy()
    sp._gather_attend_numpy(q, k, v, rows, J, kpos, lo, hi, excl, 0.7, ref_w, a2, l2)
    np.testing.assert_allclose(res[1][0], a2, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    np.testing.assert_allclose(res[1][1], l2, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    assert np.all(np.isfinite(res[1][0]))


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("method", ["reformer", "routing", "window", "bigbird"])
def test_methods_same_with_and_without_tiles(rng, monkeypatch, dtype, method, tiles):
    # dv = 16: the register-tile kernel serves these methods on AVX-512 hosts; forcing
    # _USE_TILES off gives the portable kernel, which must agree.
    import attention.exact as ex

    Q, K, V = _qkv(rng, dtype, n=70, m=70, dv=16)
    monkeypatch.setattr(ex, "_USE_TILES", tiles)
    a = approximate(Q, K, V, method, rng=3, causal=True)
    monkeypatch.setattr(ex, "_USE_TILES", not tiles)
    b = approximate(Q, K, V, method, rng=3, causal=True)
    np.testing.assert_allclose(a.output, b.output, rtol=tol(dtype, 10), atol=tol(dtype, 10))
    np.testing.assert_allclose(a.lse, b.lse, rtol=tol(dtype, 10), atol=tol(dtype, 10))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("window", {"window": 5}),
        ("bigbird", {"block_size": 4}),
        ("reformer", {"chunk_size": 4, "n_rounds": 2}),
        ("routing", {"n_clusters": 3, "cluster_size": 8}),
        ("smyrf", {"bucket_size": 5, "n_rounds": 3}),
        ("multipole", {"n_clusters": 4, "n_keys": 12}),
    ],
)
@pytest.mark.parametrize("causal", [True, False])
def test_methods_same_with_numpy_gather(rng, monkeypatch, dtype, method, params, causal):
    import attention.sparse as sp

    if causal and method in ("smyrf", "multipole"):
        pytest.skip("not causal")
    Q, K, V = _qkv(rng, dtype, n=33, m=41)
    a = approximate(Q, K, V, method, rng=3, causal=causal, **params)
    monkeypatch.setattr(sp, "_USE_KERNEL", False)
    b = approximate(Q, K, V, method, rng=3, causal=causal, **params)
    np.testing.assert_allclose(a.output, b.output, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    np.testing.assert_allclose(a.lse, b.lse, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    assert a.cost == b.cost


def test_angular_codes_kernel_matches_angular_lsh(rng, dtype):
    # Numba hashing of the causal Reformer against rnla.cluster.angular_lsh on the
    # normalised rows (same rotations; the code ignores row norms), zero rows included.
    from attention._kernels.sparse import _angular_codes
    from rnla.cluster import angular_lsh

    X = (rng.standard_normal((300, 12)) * rng.uniform(0.1, 10.0, (300, 1))).astype(dtype)
    X[5] = 0.0
    ref = angular_lsh(sp._unit_rows(X.astype(np.float64)), 8, n_rounds=3, rng=7)
    R = np.random.default_rng(7).standard_normal((3, 12, 4))
    out = np.full((3, 310), -1, dtype=np.int64)
    _angular_codes(X, np.ascontiguousarray(R.transpose(0, 2, 1)), out, 10)
    np.testing.assert_array_equal(out[:, 10:], ref)
    assert np.all(out[:, :10] == -1) and np.all(out[:, 15] == 0)


@pytest.mark.parametrize(("n", "m", "nb", "cs"), [(1, 1, 2, 1), (37, 37, 4, 4), (50, 80, 8, 8)])
def test_bucket_plan_kernels_match_numpy(rng, n, m, nb, cs):
    from attention._kernels import sparse as ks
    from attention.clustering import _bucket_blocks, _bucket_sets

    bq, bk = rng.integers(0, nb, n), rng.integers(0, nb, m)
    bk[: m // 2] = 0  # one large bucket, some empty ones
    qpos, kpos = np.arange(n) + (m - n), np.arange(m)
    order, start, rank, r, lo = ks._bucket_sets(bq, bk, qpos, cs, nb)
    ref = _bucket_sets(bq, bk, kpos, qpos, cs)
    for a, b in zip((order, start[: nb + 1], rank, r, lo), ref, strict=True):
        np.testing.assert_array_equal(a, b[: a.shape[0]])
    rows, J, kp = ks._bucket_blocks(bq, order, start, r, lo, qpos, cs, nb)
    blocks = _bucket_blocks(bq, ref, qpos, kpos, cs)
    if blocks is None:
        assert rows.shape[0] == 0
        return
    np.testing.assert_array_equal(rows, blocks[0])
    np.testing.assert_array_equal(J, blocks[1])
    np.testing.assert_array_equal(kp, blocks[3][:, 0, :])


@pytest.mark.parametrize("offset", [0, 5])
def test_online_labels_kernel_matches_numpy(rng, dtype, offset):
    from attention._kernels.sparse import _online_labels as kernel
    from attention.clustering import _online_labels

    n, d, C = 90, 8, 5
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((n + offset, d)).astype(dtype)
    q[3] = 0.0
    init = rng.standard_normal((C, d))
    lq, lk = kernel(q, k, offset, init, 16)
    rq, rk = _online_labels(
        sp._unit_rows(q.astype(np.float64)), sp._unit_rows(k.astype(np.float64)), offset, init, 16
    )
    np.testing.assert_array_equal(lq, rq)
    np.testing.assert_array_equal(lk, rk)
    assert len(set(lk.tolist())) > 1


@pytest.mark.parametrize("tiles", [True, False])
def test_multipole_exact_limit_long_clusters(rng, monkeypatch, dtype, tiles):
    # Clusters longer than one key chunk of the near-field kernel (256 keys), query
    # blocks sharing key chunks (gathered once), dv = 16: with a budget of every key,
    # multipole is exact attention, with the register tiles and without.
    import attention.exact as ex

    monkeypatch.setattr(ex, "_USE_TILES", tiles)
    Q, K, V = _qkv(rng, dtype, n=300, m=600, d=8, dv=16, lead=(1,))
    r = approximate(Q, K, V, "multipole", rng=1, n_clusters=2, n_keys=600)
    Y = reference_attention(*(x.astype(np.float64) for x in (Q, K, V)))
    np.testing.assert_allclose(r.output, Y, rtol=tol(dtype, 100), atol=tol(dtype, 100))
    # a small budget: near and far fields merged, finite, close to exact
    r2 = approximate(Q, K, V, "multipole", rng=1, n_clusters=4, n_keys=200)
    assert np.all(np.isfinite(r2.output)) and relative_error(r2.output, Y) < 1.0


@pytest.mark.parametrize("budget", [1, 40, 1000])
def test_multipole_split_kernel_matches_numpy(rng, budget):
    from attention._kernels.sparse import _multipole_split
    from attention.clustering import _multipole_split_numpy

    n, C, d, dv = 50, 6, 5, 3
    q, mu = rng.standard_normal((n, d)), rng.standard_normal((C, d))
    vbar = rng.standard_normal((C, dv))
    sizes = rng.integers(1, 30, C).astype(np.float64)
    sizes[2] = 0.0  # an empty cluster: never near, no far term
    mu[4], sizes[4] = mu[1], sizes[1]  # ties: the lower index first (stable argsort)
    with np.errstate(divide="ignore"):
        logN = np.log(sizes)
    est = q @ mu.T * 0.7 + logN
    out = [(np.empty((n, C), bool), np.empty((n, dv)), np.empty(n)) for _ in range(2)]
    _multipole_split(est, sizes, float(budget), vbar, *out[0])
    _multipole_split_numpy(q, mu, vbar, sizes, logN, 0.7, est, budget, *out[1])
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out[0][2], out[1][2], rtol=1e-13, atol=1e-14)
    assert np.all(out[0][0].sum(axis=1) >= 1) and not out[0][0][:, 2].any()


# ------------------------------------------------------------------ determinism

# (method, causal): every key-set method whose work runs on several threads.
_DETERMINISM = [
    ("multipole", False),
    ("reformer", False),
    ("reformer", True),
    ("routing", False),
    ("routing", True),
    ("smyrf", False),
    ("window", True),
    ("bigbird", False),
]


@pytest.mark.parametrize(("method", "causal"), _DETERMINISM, ids=lambda x: str(x))
def test_thread_count_determinism(rng, dtype, method, causal):
    # Same seed, one and two threads: bit-identical outputs (several heads, so the
    # slices run concurrently; clusters longer than one near-field key block).
    import numba

    Q, K, V = _qkv(rng, dtype, n=300, m=300, d=16, dv=16, lead=(3,))
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            outs.append(approximate(Q, K, V, method, rng=7, causal=causal).output)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


_FRESH_COMPILE = """
import sys, numpy as np
from attention.sparse import _gather_attend
a = np.load(sys.argv[1])
acc, L = _gather_attend(a["q"], a["k"], a["v"], 0.25, a["rows"], a["J"], a["kpos"],
                        a["lo"], a["hi"], acc=np.zeros((a["q"].shape[0], 16)),
                        L=np.full(a["q"].shape[0], -np.inf))
np.savez(sys.argv[2], acc=acc, L=L)
"""


def test_gather_kernel_fresh_compile_matches_cached(tmp_path):
    # The gather kernel (multipole, causal reformer/routing, window, BigBird) compiled
    # afresh in another process (empty Numba cache) returns the same bits as here. Its
    # softmax sum once used a reassociated reduction whose order LLVM chose per
    # compilation context, so a freshly compiled and a cached kernel differed by ~1 ulp.
    import os
    import subprocess
    import sys

    from attention.sparse import _gather_attend

    g = np.random.default_rng(3)
    n, m, W = 64, 200, 100
    q, k, v = (g.standard_normal((x, 16)).astype(np.float32) for x in (n, m, m))
    rows = np.arange(n).reshape(2, 32)
    J = np.stack([g.choice(m, W, replace=False) for _ in range(4)])
    rows = np.concatenate([rows, rows])  # every row merges two blocks
    kpos = np.zeros((4, W), dtype=np.int64)
    lo, hi = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    np.savez(tmp_path / "in.npz", q=q, k=k, v=v, rows=rows, J=J, kpos=kpos, lo=lo, hi=hi)
    acc, L = _gather_attend(
        q, k, v, 0.25, rows, J, kpos, lo, hi, acc=np.zeros((n, 16)), L=np.full(n, -np.inf)
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    subprocess.run(
        [sys.executable, "-c", _FRESH_COMPILE, str(tmp_path / "in.npz"), str(tmp_path / "out")],
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    fresh = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(fresh["acc"], acc)
    np.testing.assert_array_equal(fresh["L"], L)
