"""Tests of attention.kvcache.KVCache: summaries, pilot bound, certified decode steps."""

import warnings

import numpy as np
import pytest

import attention._kernels.kvcache as kkmod
import attention.exact as exact_mod
import attention.kvcache as kvmod
from attention import reference_attention, softmax_attention
from attention._kernels.kvcache import _pilot_kernel
from attention.kvcache import KVCache
from rnla._validation import AccuracyWarning

D = 32


@pytest.fixture(autouse=True)
def _small_caches(monkeypatch):
    """Certified steps on the small caches of these tests (the default routing reads
    caches under 4096 keys, and more than 16 stacked rows, exactly)."""
    monkeypatch.setattr(kvmod, "_MIN_BLOCKS", 8)
    monkeypatch.setattr(kvmod, "_MAX_ROWS", 64)
    monkeypatch.setattr(kvmod, "_PAY_FRACTION", 0.7)


def _head(rng, kind, h=2, m=1280, d=D, dtype=np.float64):
    """Keys/values of a synthetic head and queries (2 query heads per kv head, 4 rows).

    The query heads of a group share a direction ``u`` (as real heads of one group do);
    ``sharp`` plants 12 keys along ``u``, ``sinks`` three at the start, ``huge`` two
    with logits of order ``+-1e4``, ``diffuse`` has tiny scores everywhere;
    ``coherent`` has sinks and values whose deviations grow with the score (the errors
    of the dropped blocks add up coherently: the bound is tight there).
    """
    u = rng.standard_normal((h, d))
    K = rng.standard_normal((h, m, d))
    V = rng.standard_normal((h, m, d))
    Q = 1.5 * np.repeat(u, 2, axis=0)[:, None] + 0.5 * rng.standard_normal((2 * h, 4, d))
    if kind == "sharp":
        K *= 0.3
        idx = rng.choice(m - 64, size=12, replace=False)
        K[:, idx] = 3.0 * u[:, None]
    elif kind == "diffuse":
        K *= 0.02
    elif kind == "sinks":
        K *= 0.3
        K[:, :3] = 1.5 * u[:, None]
    elif kind == "huge":
        K *= 0.3
        K[:, 7] = 200.0 * u
        K[:, 100] = -200.0 * u
    elif kind == "coherent":  # sinks, and values whose deviations follow the scores
        K *= 0.3
        K[:, :3] = 1.5 * u[:, None]
        s = np.einsum("hd,hjd->hj", Q[::2].mean(axis=1), K) / np.sqrt(d)
        z = rng.standard_normal((h, 1, d))
        V = 0.3 * V + 3 * np.tanh(s - np.median(s, axis=1, keepdims=True))[:, :, None] * z
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


def _cache(K, V, block=64, dtype=None):
    c = KVCache(K.shape[0], K.shape[2], V.shape[2], dtype=dtype or K.dtype, block=block)
    c.append(K, V)
    return c


def _exact(Q, K, V, causal=True):
    return reference_attention(
        Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), causal=causal
    )


# ---------------------------------------------------------------- summaries vs NumPy


def _summaries_numpy(K, V, B):
    """Plain-NumPy reference of the block summaries of full blocks."""
    h, m, d = K.shape
    nb = m // B
    Kb = K[:, : nb * B].astype(np.float64).reshape(h, nb, B, d)
    amax = np.abs(Kb).max(axis=2)
    s = (amax / 127.0).astype(np.float32)
    s64 = s.astype(np.float64)[:, :, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(s64 > 0, np.clip(np.round(Kb / s64), -127, 127), 0.0)
    r = Kb - s64 * c
    Vb = V[:, : nb * B].astype(np.float64).reshape(h, nb, B, -1)
    vc = Vb.mean(axis=2)
    U = Vb - vc[:, :, None]
    sig = np.linalg.svd(U, compute_uv=False)[..., 0]
    return {
        "codes": np.swapaxes(c, 2, 3).astype(np.int8),
        "qscale": s,
        "qres": np.abs(r).max(axis=2),
        "rho": np.sqrt((r * r).sum(axis=3)).max(axis=2),
        "vc": vc,
        "udev": np.sqrt((U * U).sum(axis=3)).reshape(h, -1),
        "sig": sig,
    }


@pytest.mark.parametrize("B", [16, 64])
def test_summaries_match_numpy(rng, dtype, B):
    K = (rng.standard_normal((2, 5 * B + 7, 24)) * rng.uniform(0.1, 5, 24)).astype(dtype)
    K[0, 3, 5] = 0.0
    K[1, :, 2] = 0.0  # an all-zero channel: scale 0, codes 0
    V = rng.standard_normal((2, 5 * B + 7, 16)).astype(dtype)
    c = _cache(K, V, block=B)
    ref = _summaries_numpy(K, V, B)
    nb = 5
    np.testing.assert_array_equal(c._codes[:, :nb], ref["codes"])
    np.testing.assert_array_equal(c._qscale[:, :nb], ref["qscale"])
    # Stored upper bounds: at least the reference, and tight.
    for name in ("qres", "rho"):
        got = getattr(c, "_" + name)[:, :nb]
        assert np.all(got >= ref[name]), name
        np.testing.assert_allclose(got, ref[name], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(c._vc[:, :nb], ref["vc"], rtol=1e-12, atol=1e-12)
    assert np.all(c._udev[:, : nb * B] >= ref["udev"] * (1 - 1e-15))
    np.testing.assert_allclose(c._udev[:, : nb * B], ref["udev"], rtol=1e-5)
    assert np.all(c._sig[:, :nb] >= ref["sig"] * (1 - 1e-12))
    np.testing.assert_allclose(c._sig[:, :nb], ref["sig"], rtol=1e-6)


def test_incremental_appends_equal_batch(rng):
    K = rng.standard_normal((3, 700, 16)).astype(np.float32)
    V = rng.standard_normal((3, 700, 8)).astype(np.float32)
    whole = _cache(K, V)
    step = KVCache(3, 16, 8, capacity=1)
    step.append(K[:, :1], V[:, :1])
    for j in range(1, 700, 37):
        step.append(K[:, j : j + 37], V[:, j : j + 37])
    assert len(step) == len(whole) == 700 and step.capacity >= 700
    for name in ("_codes", "_qscale", "_qres", "_rho", "_vc", "_sig"):
        np.testing.assert_array_equal(getattr(step, name)[:, :10], getattr(whole, name)[:, :10])
    np.testing.assert_array_equal(step.keys, K)
    np.testing.assert_array_equal(step.values, V)
    one = KVCache(3, 16, 8)
    for j in range(130):
        one.append(K[:, j], V[:, j])  # (h, d): one token
    np.testing.assert_array_equal(one._codes[:, :2], whole._codes[:, :2])


# ---------------------------------------------------------------- pilot bound


def _pilot(c, Qs, nbc, tiles=True):
    h, R, _ = Qs.shape
    arrs = [np.empty((h, nbc, R)) for _ in range(6)]
    _pilot_kernel(
        Qs,
        c._codes,
        c._qscale,
        c._qres,
        c._rho,
        c._udev,
        nbc,
        c.block,
        3,
        tiles,
        *arrs,
        np.zeros(1, dtype=np.int64),
        2,
    )
    return arrs


@pytest.mark.parametrize("scale_keys", [1.0, 30.0])
def test_pilot_radius_bounds_every_score(rng, dtype, scale_keys):
    h, m, d, B = 2, 640, 64, 64
    K = (rng.standard_normal((h, m, d)) * scale_keys).astype(dtype)
    K[:, :, 3] *= 20  # an outlier channel, as rotary keys have
    V = rng.standard_normal((h, m, d)).astype(dtype)
    c = _cache(K, V)
    Qs = rng.standard_normal((h, 5, d)) * 0.125 * scale_keys
    nbc = m // B
    bm, bw, bs2, bt, beps, bex = _pilot(c, Qs, nbc)
    s = np.einsum("hid,hjd->hij", Qs, K.astype(np.float64))  # exact scores
    Kq = (c._codes[:, :nbc].astype(np.float64) * c._qscale[:, :nbc, :, None]).swapaxes(2, 3)
    shat = np.einsum("hid,hjd->hij", Qs, Kq.reshape(h, m, d))
    gap = np.abs(s - shat).reshape(h, 5, nbc, B).max(axis=3).transpose(0, 2, 1)
    assert np.all(gap <= beps)
    assert np.median(gap / beps) > 0.05  # not vacuous
    # Negative control: the radius without the quantisation term does not hold.
    ctrl = 256 * np.finfo(np.float32).eps
    assert np.mean(gap > ctrl) > 0.5
    # Block maxima and masses against the float64 pilot scores.
    sh = shat.reshape(h, 5, nbc, B).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(bm, sh.max(axis=3), rtol=1e-4, atol=1e-4 * np.abs(sh).max())
    w = np.exp(sh - bm[..., None])
    rtol = 1e-4 + 8 * np.finfo(np.float32).eps * np.abs(sh).max()  # float32 pilot scores
    np.testing.assert_allclose(bw, w.sum(axis=3), rtol=rtol)
    np.testing.assert_allclose(bs2, (w * w).sum(axis=3), rtol=2 * rtol)
    dev = c._udev[:, : nbc * B].reshape(h, nbc, 1, B)
    np.testing.assert_allclose(bt, (w * dev).sum(axis=3), rtol=rtol)
    np.testing.assert_allclose(bex, np.exp(beps), rtol=1e-14)


def test_pilot_portable_path_matches_tiles(rng):
    K = rng.standard_normal((2, 512, 64)).astype(np.float32)
    c = _cache(K, K.copy())
    Qs = rng.standard_normal((2, 3, 64))
    a = _pilot(c, Qs, 8, tiles=exact_mod._USE_TILES)
    b = _pilot(c, Qs, 8, tiles=False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B", [16, 48, 64, 80, 128])
@pytest.mark.parametrize("R", [1, 2, 3, 5, 7])
def test_code_tiles_match_numpy_and_portable(rng, B, R):
    # The int8 register tiles (codes converted in registers) against a float64 NumPy
    # product and against the portable path (convert, then a loop): same FMA chain, so
    # bit-identical to the portable path.
    cb = rng.integers(-127, 128, size=(64, B)).astype(np.int8)
    q = rng.standard_normal((R, 64)).astype(np.float32)
    tiles = np.full((R, B), np.nan, dtype=np.float32)
    loop = np.full((R, B), np.nan, dtype=np.float32)
    f = np.empty((64, B), dtype=np.float32)
    kkmod._code_scores(q, cb, tiles)
    kkmod._pilot_scores(cb, q, loop, f, False)
    ref = q.astype(np.float64) @ cb.astype(np.float64)
    bound = 66 * np.finfo(np.float32).eps / 2 * (np.abs(q).astype(np.float64) @ np.abs(cb))
    assert np.all(np.abs(tiles - ref) <= bound)
    np.testing.assert_array_equal(tiles, loop)


# ---------------------------------------------------------------- certified steps


@pytest.mark.parametrize("kind", ["sharp", "diffuse", "sinks", "huge", "coherent"])
@pytest.mark.parametrize("nq", [1, 4])
def test_bound_holds_synthetic(rng, dtype, kind, nq):
    Q, K, V = _head(rng, kind, dtype=dtype)
    Q = Q[:, :nq]
    c = _cache(K, V)
    Y = _exact(Q, K, V)
    ynorm = np.linalg.norm(Y)
    for tol in (1e-2, 1e-1):
        c._skip = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AccuracyWarning)
            res = c.attend(Q, tol=tol)
        assert res.output.dtype == dtype and res.output.shape == (4, nq, D)
        assert np.isfinite(res.output).all() and np.isfinite(res.lse).all()
        err = np.linalg.norm(res.output.astype(np.float64) - Y)
        assert err <= res.bound.value
        # Within tol unless the rounding of the dtype cannot certify it (then a warning).
        assert res.bound.value <= tol * ynorm or caught
        assert res.bound.kind == "deterministic" and res.bound.norm == "fro"
        assert res.cost.key_fraction.shape == (4,)
        assert 0 < res.cost.bytes_read


def test_sharp_head_reads_fewer_bytes(rng):
    Q, K, V = _head(rng, "sharp", m=4096, dtype=np.float32)
    c = _cache(K, V)
    res = c.attend(Q[:, :1], tol=0.1)
    assert res.cost.key_fraction[0] < 0.5
    assert res.cost.bytes_read < 0.7 * K.size * 2 * 4
    Y = _exact(Q[:, :1], K, V)
    assert np.linalg.norm(res.output - Y) <= res.bound.value <= 0.1 * np.linalg.norm(Y)


def _control_bound(c, Q, tol):
    """Bound of one step with the pilot radius set to 0 (scores taken as exact)."""
    h, nq = c.n_kv_heads, Q.shape[1]
    gs = Q.shape[0] // h
    R, t, B = gs * nq, len(c), c.block
    nbc = min(t // B, (t - nq + 1) // B)
    members = np.arange(Q.shape[0], dtype=np.int64).reshape(h, gs)
    qs = Q.reshape(h, R, -1).astype(np.float64) / np.sqrt(Q.shape[2])
    bm, bw, bs2, bt, _, bex = _pilot(c, qs, nbc)
    keep = np.ones((h, nbc), dtype=np.int8)
    seg, nseg = np.zeros((h, nbc + 8, 2), dtype=np.int64), np.zeros(h, dtype=np.int64)
    cpart = np.zeros((h, R, 2 + c.value_dim))
    tau = 0.95 * tol / (1 + tol)
    kkmod._select(
        bm,
        bw,
        bs2,
        bt,
        bex,
        c._vc,
        c._sig,
        c._vrms2,
        tau,
        0.5,
        nbc,
        t,
        B,
        512,
        keep,
        seg,
        nseg,
        cpart,
    )
    parts = c._segments(Q, members, nq, 1 / np.sqrt(Q.shape[2]), True, t - nq, seg, nseg)
    out = np.empty((Q.shape[0], nq, c.value_dim), dtype=c.dtype)
    lse = np.empty((Q.shape[0], nq))
    kkmod._merge((parts,), cpart, members, nq, out, lse)
    e_row = np.empty((h, R))
    seps = c._score_eps(Q, 1 / np.sqrt(Q.shape[2]))
    kkmod._row_bounds(
        bw,
        bs2,
        bt,
        bex,
        c._vc,
        c._sig,
        c._vrms2,
        B,
        keep,
        cpart,
        members,
        nq,
        out,
        lse,
        e_row,
        seps,
    )
    # Plain-NumPy reference of the row bounds, and the quadrature control.
    y = out.reshape(h, R, -1).astype(np.float64)
    drop = keep == 0
    sh = 0.5 * (bex - 1 / bex)
    dist = np.linalg.norm(c._vc[:, :nbc, None, :] - y[:, None], axis=3)
    sig = c._sig[:, :nbc, None]
    cen = bex * np.minimum(sig * np.sqrt(bs2), bt)
    # Spread form: sig (||w^ - c 1|| + (e^eps - 1) ||w^||) + c ||1^T U|| with c = W / B.
    var = np.maximum(bs2 * (1 + 1e-4) - bw**2 * (1 - 2e-4) / B, 0.0)
    spread = np.sqrt(var) + (bex - 1) * np.sqrt(bs2 * (1 + 1e-4))
    defect = 2.0 * (B + 1) * np.finfo(np.float64).eps * B * np.sqrt(c._vrms2[:, :nbc, None])
    cen = np.minimum(cen, sig * spread * (1 + 1e-12) + bw / B * defect * (1 + 1e-6))
    cost = (bw * sh * dist + cen) * drop[:, :, None]
    slack = (bw * sh * drop[:, :, None]).sum(axis=1)
    dlo = (np.exp(lse.reshape(h, R) - cpart[:, :, 0] - 2 * seps) - slack) * (1 - 1e-3)
    ref = cost.sum(axis=1) / dlo
    np.testing.assert_allclose(e_row, ref, rtol=1e-12, atol=1e-300)
    quad = np.sqrt((cost**2).sum(axis=1)) / dlo
    return out, np.sqrt((e_row**2).sum()), np.sqrt((quad**2).sum())


def test_bound_and_negative_control():
    """Row bounds == NumPy; the same costs added in quadrature (not a bound) fail."""
    fails = 0
    for trial in range(6):
        Q, K, V = _head(np.random.default_rng(100 + trial), "coherent", m=2048)
        c = _cache(K, V)
        out, bound, ctrl = _control_bound(c, Q[:, :1], 0.1)
        err = np.linalg.norm(out - _exact(Q[:, :1], K, V))
        assert err <= bound
        assert bound < 4 * err  # tight on this head
        fails += err > ctrl
    assert fails >= 4


def test_gqa_equals_separate_heads(rng):
    Q, K, V = _head(rng, "sinks", dtype=np.float64)
    c = _cache(K, V)
    res = c.attend(Q[:, :2], tol=None)
    Y = _exact(Q[:, :2], K, V)
    np.testing.assert_allclose(res.output, Y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        res.lse, reference_attention(Q[:, :2], K, V, causal=True, return_lse=True)[1], rtol=1e-10
    )


def test_causal_no_leakage(rng):
    Q, K, V = _head(rng, "sinks", m=1300)
    c1 = _cache(K, V)
    K2, V2 = K.copy(), V.copy()
    K2[:, -1] += 50.0  # the last key is visible only to the last query row
    V2[:, -1] -= 50.0
    c2 = _cache(K2, V2)
    e1 = c1.attend(Q, tol=None)
    e2 = c2.attend(Q, tol=None)
    np.testing.assert_array_equal(e1.output[:, :-1], e2.output[:, :-1])
    assert not np.allclose(e1.output[:, -1], e2.output[:, -1])
    # Certified steps: the rows share which blocks are read (a future key can change
    # that choice, never enter an earlier row): every row stays within the bound of its
    # own causal attention.
    for c, KK, VV in ((c1, K, V), (c2, K2, V2)):
        r = c.attend(Q, tol=0.05)
        Y = _exact(Q, KK, VV)
        assert np.linalg.norm(r.output - Y) <= r.bound.value
    nc = c1.attend(Q, tol=None, causal=False)
    np.testing.assert_allclose(nc.output, _exact(Q, K, V, causal=False), rtol=1e-9)


def test_exact_fallbacks(rng, monkeypatch):
    Q, K, V = _head(rng, "diffuse", m=2048)
    c = _cache(K, V)
    Y = _exact(Q[:, :1], K, V)
    first = c.attend(Q[:, :1], tol=0.01)
    assert first.cost.key_fraction[0] > kvmod._PAY_FRACTION  # diffuse: does not pay
    # The next steps skip the pilot: exact, bound = rounding allowance.
    nxt = c.attend(Q[:, :1], tol=0.01)
    assert nxt.cost.key_fraction[0] == 1.0 and "exact attention" in nxt.bound.assumptions
    np.testing.assert_allclose(nxt.output, Y, rtol=1e-10, atol=1e-13)
    assert c._skip == kvmod._SKIP_STEPS - 1
    # Portable (BLAS) segment path.
    monkeypatch.setattr(exact_mod, "_USE_TILES", False)
    c._skip = 0
    again = c.attend(Q[:, :1], tol=0.01)
    assert np.linalg.norm(again.output - Y) <= again.bound.value


@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "portable"])
@pytest.mark.parametrize("nq", [1, 3])
@pytest.mark.parametrize("m", [700, 1024, 3000])
def test_exact_step_equals_softmax_attention(rng, dtype, m, nq, tiles, monkeypatch):
    # Exact steps (tol=None) of a causal cache run the exact kernel's split-key path on
    # the capacity buffers (the rows after the cached keys are never visible): with the
    # register tiles, at most 8 stacked rows (no BLAS) and m a multiple of the chunk the
    # output is bit-identical to softmax_attention on the cached keys, also with a
    # capacity beyond m; otherwise within a few ulps; short caches take the segments path.
    monkeypatch.setattr(exact_mod, "_USE_TILES", tiles and exact_mod._USE_TILES)
    K = rng.standard_normal((2, m, 32)).astype(dtype)
    V = rng.standard_normal((2, m, 32)).astype(dtype)
    Q = rng.standard_normal((6, nq, 32)).astype(dtype)
    c = KVCache(2, 32, dtype=dtype, capacity=2 * m + 64)
    c.append(K, V)
    Q0, K0, V0 = Q.copy(), K.copy(), V.copy()
    res = c.attend(Q, scale=0.3)
    ref, lse = softmax_attention(Q, K, V, causal=True, scale=0.3, return_lse=True)
    eps = np.finfo(dtype).eps
    if m >= 2 * exact_mod._CHUNK_MIN and m % 1024 == 0 and exact_mod._USE_TILES and nq == 1:
        # Same chunks, register tiles, no BLAS: bit-identical.
        np.testing.assert_array_equal(res.output, ref)
    else:
        # Last chunk partly masked (other widths of the vector sums), BLAS or segments.
        np.testing.assert_allclose(res.output, ref, rtol=8 * eps, atol=8 * eps)
    # (softmax_attention returns lse in the input dtype, the cache in float64)
    np.testing.assert_allclose(res.lse, lse, rtol=8 * eps)
    assert res.bound.kind == "deterministic" and res.bound.value > 0
    Y = reference_attention(
        Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), causal=True, scale=0.3
    )
    assert np.linalg.norm(res.output.astype(np.float64) - Y) <= res.bound.value
    np.testing.assert_array_equal(Q, Q0)
    np.testing.assert_array_equal(K, K0)
    np.testing.assert_array_equal(V, V0)


def test_forced_refinement_and_exact_retry(rng, monkeypatch):
    Q, K, V = _head(rng, "sinks", m=2048)
    Y = _exact(Q[:, :1], K, V)
    c = _cache(K, V)
    # A selection budget far above tol: the refinement (or the exact retry) must fix it.
    orig = kvmod._pilot_select

    def greedy(*args):
        args = list(args)
        args[19] = 10.0  # tau
        return orig(*args)

    monkeypatch.setattr(kvmod, "_pilot_select", greedy)
    res = c.attend(Q[:, :1], tol=0.02)
    err = np.linalg.norm(res.output - Y)
    assert err <= res.bound.value <= 0.02 * np.linalg.norm(Y)


def test_pilot_overflow_falls_back(rng):
    """Float64 scores beyond the float32 range: the pilot overflows, the step is exact.

    (Scores of order 1e38 also make the rounding allowance infinite: it warns.)
    """
    Q, K, V = _head(rng, "sinks", m=1280)
    c = _cache(K * 1e19, V)
    Qb = Q[:, :1] * 1e19
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.warns(AccuracyWarning):
            res = c.attend(Qb, tol=0.1)
    assert "exact attention" in res.bound.assumptions
    np.testing.assert_allclose(res.output, _exact(Qb, K * 1e19, V), rtol=1e-12, atol=1e-12)


def test_float32_tolerance_warning(rng):
    Q, K, V = _head(rng, "huge", dtype=np.float32)
    c = _cache(K, V)
    with pytest.warns(AccuracyWarning, match="rounding"):
        c.attend(Q[:, :1] * 30, tol=1e-6)


def test_determinism_and_threads(rng):
    import numba

    Q, K, V = _head(rng, "sinks", m=2048, dtype=np.float32)
    c = _cache(K, V)
    a = c.attend(Q[:, :2], tol=0.03)
    c._skip = 0  # the skip policy (state of the cache) is tested elsewhere
    b = c.attend(Q[:, :2], tol=0.03)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        c._skip = 0
        s = c.attend(Q[:, :2], tol=0.03)
    finally:
        numba.set_num_threads(threads)
    for r in (b, s):
        np.testing.assert_array_equal(a.output, r.output)
        assert a.bound.value == r.bound.value


def test_default_routing(rng, monkeypatch):
    monkeypatch.undo()
    Q, K, V = _head(rng, "sinks", m=1280)
    c = _cache(K, V)
    res = c.attend(Q[:, :1], tol=0.1)  # 20 blocks < 64: exact read
    assert res.cost.key_fraction[0] == 1.0 and "exact attention" in res.bound.assumptions
    Q, K, V = _head(rng, "sinks", h=1, m=4200, dtype=np.float32)
    c = _cache(K, V)
    assert c.attend(Q[:, :1], tol=0.1).cost.key_fraction[0] < 0.3  # certified
    Qm = np.repeat(Q, 5, axis=1)[:, :9]  # 2 heads x 9 rows = 18 stacked rows > 16
    assert c.attend(Qm, tol=0.1).cost.key_fraction[0] == 1.0


def test_growth_and_views(rng):
    c = KVCache(1, 8, capacity=10)
    K = rng.standard_normal((1, 100, 8))
    c.append(K, K)
    assert len(c) == 100 and c.capacity >= 100 and c.dtype == np.float32
    assert c.keys.shape == (1, 100, 8) and not c.keys.flags.writeable
    with pytest.raises(ValueError):
        c.keys[0, 0, 0] = 1.0
    res = c.attend(rng.standard_normal((3, 8)))  # (n_q, d) with one kv head
    assert res.output.shape == (1, 3, 8)
    assert "KVCache(n_kv_heads=1" in repr(c)


def test_bad_input(rng):
    with pytest.raises(TypeError, match="dtype"):
        KVCache(2, 8, dtype=np.int32)
    with pytest.raises(ValueError, match="block"):
        KVCache(2, 8, block=20)
    with pytest.raises(ValueError, match="n_kv_heads"):
        KVCache(0, 8)
    c = KVCache(2, 8)
    with pytest.raises(ValueError, match="empty"):
        c.attend(np.zeros((2, 1, 8)), tol=0.1)
    with pytest.raises(ValueError, match=r"K must have shape \(2, t, 8\)"):
        c.append(np.zeros((3, 4, 8)), np.zeros((3, 4, 8)))
    K = rng.standard_normal((2, 70, 8))
    bad = K.copy()
    bad[1, 5, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        c.append(bad, K)
    assert len(c) == 0  # unchanged
    c.append(K, K)
    Q = rng.standard_normal((4, 1, 8))
    Q0 = Q.copy()
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        c.attend(np.zeros((3, 1, 8)), tol=0.1)
    with pytest.raises(ValueError, match="tol"):
        c.attend(Q, tol=1.5)
    with pytest.raises(TypeError, match="tol"):
        c.attend(Q, tol="0.1")
    with pytest.raises(ValueError, match="delta"):
        c.attend(Q, tol=0.1, delta=0.0)
    with pytest.raises(TypeError, match="causal"):
        c.attend(Q, tol=0.1, causal=None)
    Qn = Q.copy()
    Qn[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        c.attend(Qn, tol=0.1)
    c.attend(Q, tol=0.1)
    np.testing.assert_array_equal(Q, Q0)
    np.testing.assert_array_equal(c.keys, K.astype(np.float32))


@pytest.mark.parametrize("which", ["accumulation", "score"])
def test_exact_step_bound_holds_on_adversarial_float32(which):
    """Exact steps of the cache: the bound is the worst-case rounding allowance, which
    holds on float32 inputs built so that every rounding of a chain goes one way (the
    constructions of the adaptive tests; the old probabilistic model failed on them)."""
    from tests.attention.test_adaptive import _accumulation_adversary, _score_adversary

    Q, K, V = (_accumulation_adversary if which == "accumulation" else _score_adversary)()
    Q = np.ascontiguousarray(Q[:, -1:])  # one query (all rows of the construction agree)
    cache = KVCache(1, K.shape[2], V.shape[2])
    cache.append(K, V)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        res = cache.attend(Q, tol=0.5)
    Y = reference_attention(*(x.astype(np.float64) for x in (Q, K, V)), causal=True)
    err = float(np.linalg.norm(res.output.astype(np.float64) - Y))
    assert res.bound.kind == "deterministic"
    assert err <= res.bound.value
