"""Tests of the §3.3 LSH + sampling attention methods (attention/sampling.py)."""

import numpy as np
import pytest

import attention.sampling as smp
from attention import approximate, methods, relative_error
from attention.data import load_sample
from attention.exact import reference_attention, softmax_attention

NAMES = ("kdeformer", "hyperattention", "prescoring")


def _qkv(rng, n=256, m=256, d=16, dv=8, heads=1, q_scale=1.5):
    Q = q_scale * rng.standard_normal((heads, n, d))
    K = q_scale * rng.standard_normal((heads, m, d))
    V = rng.standard_normal((heads, m, dv))
    return Q, K, V


def _exact(Q, K, V, **kw):
    return reference_attention(*(np.asarray(x, dtype=np.float64) for x in (Q, K, V)), **kw)


def test_registry_entries():
    info = {m.name: m for m in methods()}
    for name in NAMES:
        assert info[name].family == "sampling"
        assert info[name].section == "§3.3"
        assert info[name].bound == "probabilistic"
    assert info["hyperattention"].causal
    assert not info["kdeformer"].causal
    assert not info["prescoring"].causal
    assert info["hyperattention"].defaults["sampling"] == "uniform"


# Parameter choices under which each method is exact (one block holds every key, or the
# sequence is below min_seq_len).
EXACT_CASES = [
    ("kdeformer", {"block_size": 256}),
    ("hyperattention", {"block_size": 256, "min_seq_len": 8}),
    ("hyperattention", {"min_seq_len": 256}),
    ("prescoring", {"n_select": 256, "min_seq_len": 256}),
]


@pytest.mark.parametrize(("name", "params"), EXACT_CASES, ids=lambda x: str(x))
def test_exact_limits(name, params, rng, dtype):
    Q, K, V = (x.astype(dtype) for x in _qkv(rng))
    res = approximate(Q, K, V, name, rng=rng, error_bound=False, **params)
    assert res.output.dtype == dtype
    assert res.lse.shape == (1, 256)
    Y, lse = _exact(Q, K, V, return_lse=True)
    assert relative_error(res.output, Y) < 1e3 * np.finfo(dtype).eps
    np.testing.assert_allclose(res.lse, lse, rtol=0, atol=1e3 * np.finfo(dtype).eps * 10)


def test_causal_exact_limit(rng):
    Q, K, V = _qkv(rng, n=200, m=260)
    res = approximate(
        Q,
        K,
        V,
        "hyperattention",
        rng=rng,
        causal=True,
        block_size=400,
        min_seq_len=16,
        error_bound=False,
    )
    Y = _exact(Q, K, V, causal=True)
    assert relative_error(res.output, Y) < 1e-12


def _mean_err(Q, K, V, name, rng, s, draws, **kw):
    Y = _exact(Q, K, V, **{k: kw[k] for k in ("causal", "scale") if k in kw})
    errs = [
        relative_error(
            approximate(Q, K, V, name, rng=rng, sample_size=s, error_bound=False, **kw).output, Y
        )
        ** 2
        for _ in range(draws)
    ]
    return float(np.sqrt(np.mean(errs)))


@pytest.mark.parametrize("name", NAMES)
def test_error_decreases_with_samples_synthetic(name, rng):
    Q, K, V = _qkv(rng, n=512, m=512)
    kw = {"block_size": 32, **({"min_seq_len": 64} if name != "kdeformer" else {})}
    small = _mean_err(Q, K, V, name, rng, 16, 6, **kw)
    large = _mean_err(Q, K, V, name, rng, 256, 6, **kw)
    # The sampled part's variance scales like 1/s (16x more samples: rms error ~4x
    # smaller); at s = 16 the row errors saturate at the value diameter (the output is a
    # convex combination of the values), so the measured ratio is ~0.5, not 0.25.
    assert large < 0.7 * small


def test_error_decreases_with_samples_causal(rng):
    Q, K, V = _qkv(rng, n=256, m=256)
    kw = {"causal": True, "min_seq_len": 32, "block_size": 16}
    small = _mean_err(Q, K, V, "hyperattention", rng, 4, 6, **kw)
    large = _mean_err(Q, K, V, "hyperattention", rng, 64, 6, **kw)
    assert large < 0.6 * small


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_error_decreases_with_samples_real(name, rng):
    s = load_sample(name)
    Q, K, V = s.Q[:2], s.K[:2], s.V[:2]
    meth = "kdeformer" if not s.causal else "hyperattention"
    kw = {"causal": s.causal, "scale": s.scale, "block_size": 32}
    sizes = (8, 128) if s.causal else (16, 256)  # keep the sampled pieces sampled
    if s.causal:
        kw["min_seq_len"] = 64
    small = _mean_err(Q, K, V, meth, rng, sizes[0], 3, **kw)
    large = _mean_err(Q, K, V, meth, rng, sizes[1], 3, **kw)
    # Real heads have heavy keys outside the blocks: the decrease is slower than 1/sqrt(s).
    assert large < 0.85 * small


@pytest.mark.parametrize("sampling", ["uniform", "row_norm"])
def test_causal_no_future_leakage(sampling, rng):
    Q, K, V = _qkv(rng, n=256, m=256)
    t = 150
    K2, V2 = K.copy(), V.copy()
    K2[:, t + 1 :] = 3.0 * rng.standard_normal(K2[:, t + 1 :].shape)
    V2[:, t + 1 :] = 5.0 * rng.standard_normal(V2[:, t + 1 :].shape)
    kw = {
        "causal": True,
        "min_seq_len": 32,
        "sample_size": 16,
        "sampling": sampling,
        "error_bound": False,
    }
    a = approximate(Q, K, V, "hyperattention", rng=7, **kw)
    b = approximate(Q, K2, V2, "hyperattention", rng=7, **kw)
    np.testing.assert_allclose(a.output[:, : t + 1], b.output[:, : t + 1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a.output[:, t + 1 :], b.output[:, t + 1 :])


def test_causal_rectangular_and_empty_rows(rng):
    # n > m: the first n - m queries see no key (zero output, lse = -inf).
    Q, K, V = _qkv(rng, n=300, m=200)
    kw = {"causal": True, "min_seq_len": 32, "error_bound": "exact"}
    res = approximate(Q, K, V, "hyperattention", rng=rng, **kw)
    Y = _exact(Q, K, V, causal=True)
    assert np.all(res.output[:, :100] == 0)
    assert np.all(np.isneginf(res.lse[:, :100]))
    assert np.all(np.isfinite(res.lse[:, 100:]))
    assert np.isfinite(res.bound.value)
    assert relative_error(res.output, Y) < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_rng(name, rng):
    Q, K, V = _qkv(rng, n=160, m=160)
    kw = {"sample_size": 32, **({"min_seq_len": 32} if name != "kdeformer" else {})}
    a = approximate(Q, K, V, name, rng=3, **kw)
    b = approximate(Q, K, V, name, rng=3, **kw)
    c = approximate(Q, K, V, name, rng=4, **kw)
    np.testing.assert_array_equal(a.output, b.output)
    assert a.bound == b.bound
    assert not np.array_equal(a.output, c.output)


@pytest.mark.parametrize("name", NAMES)
def test_dtypes_and_shapes(name, dtype, rng):
    # Grouped-query heads: 4 query heads on 2 kv heads, batch 2.
    Q = rng.standard_normal((2, 4, 96, 8)).astype(dtype)
    K = rng.standard_normal((2, 2, 96, 8)).astype(dtype)
    V = rng.standard_normal((2, 2, 96, 5)).astype(dtype)
    kw = {"min_seq_len": 16} if name != "kdeformer" else {}
    if name == "hyperattention":
        kw["error_bound"] = True  # the certificate (grouped-query heads passed through)
    res = approximate(Q, K, V, name, rng=0, block_size=16, sample_size=24, **kw)
    assert res.output.shape == (2, 4, 96, 5)
    assert res.output.dtype == dtype
    assert res.lse.shape == (2, 4, 96)
    assert np.isfinite(res.output).all()
    assert res.bound.kind == "probabilistic" and res.bound.delta == pytest.approx(0.1)
    assert res.cost.kernel_evals < 8 * 96 * 96
    Y = _exact(Q, K, V)
    assert relative_error(res.output, Y) <= 1.0 or res.bound.value > 0


def test_float32_matches_float64(rng):
    Q, K, V = _qkv(rng, n=128, m=128)
    a = approximate(Q, K, V, "kdeformer", rng=1, block_size=32, error_bound=False)
    b = approximate(
        *(x.astype(np.float32) for x in (Q, K, V)),
        "kdeformer",
        rng=1,
        block_size=32,
        error_bound=False,
    )
    np.testing.assert_allclose(b.output, a.output, rtol=1e-3, atol=1e-4)


BAD = [
    ("kdeformer", {"sample_size": 0}, ValueError, "sample_size"),
    ("kdeformer", {"block_size": 0}, ValueError, "block_size"),
    ("kdeformer", {"n_bits": 0}, ValueError, "n_bits"),
    ("kdeformer", {"uniform_mix": 0.0}, ValueError, "uniform_mix"),
    ("kdeformer", {"uniform_mix": "a"}, TypeError, "uniform_mix"),
    ("kdeformer", {"delta": 1.5}, ValueError, "delta"),
    ("kdeformer", {"error_bound": "yes"}, ValueError, "error_bound"),
    ("kdeformer", {"samples": 3}, ValueError, "valid parameters"),
    ("hyperattention", {"sampling": "bad"}, ValueError, "sampling"),
    ("hyperattention", {"min_seq_len": 0}, ValueError, "min_seq_len"),
    ("hyperattention", {"sample_size": 2.5}, TypeError, "sample_size"),
    ("prescoring", {"scoring": "median"}, ValueError, "scoring"),
    ("prescoring", {"n_select": 65}, ValueError, "n_select"),
    ("prescoring", {"n_clusters": 0}, ValueError, "n_clusters"),
]


@pytest.mark.parametrize(("name", "params", "exc", "match"), BAD, ids=lambda x: str(x))
def test_bad_parameters(name, params, exc, match, rng):
    Q, K, V = _qkv(rng, n=64, m=64)
    before = [x.copy() for x in (Q, K, V)]
    with pytest.raises(exc, match=match):
        approximate(Q, K, V, name, rng=0, **params)
    for x, y in zip((Q, K, V), before, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["kdeformer", "prescoring"])
def test_causal_rejected(name, rng):
    Q, K, V = _qkv(rng, n=64, m=64)
    with pytest.raises(ValueError, match="causal"):
        approximate(Q, K, V, name, causal=True)


@pytest.mark.parametrize("scoring", ["kmeans", "leverage"])
def test_prescoring_scorings(scoring, rng):
    Q, K, V = _qkv(rng, n=128, m=128)
    kw = {"n_select": 64, "min_seq_len": 32, "block_size": 16, "sample_size": 16}
    res = approximate(Q, K, V, "prescoring", rng=0, scoring=scoring, **kw)
    Y = _exact(Q, K, V)
    err = np.linalg.norm(res.output - Y)
    assert np.isfinite(res.output).all()
    assert err <= res.bound.value


def test_zero_values(rng):
    Q, K, _ = _qkv(rng, n=96, m=96)
    V = np.zeros((1, 96, 4))
    res = approximate(Q, K, V, "kdeformer", rng=0, block_size=16)
    assert np.all(res.output == 0)


# ---------------------------------------------------------------------------------------
# diagnostics and the AMM formula
# ---------------------------------------------------------------------------------------


def test_diagnostics_uniform_attention(dtype):
    n, d = 64, 8
    Q = np.zeros((n, d), dtype=dtype)
    K = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    V = np.random.default_rng(1).standard_normal((n, 3)).astype(dtype)
    diag = smp.sampling_diagnostics(Q, K, V, n_heavy=4)
    assert diag.alpha.shape == ()
    np.testing.assert_allclose(diag.alpha, 1.0, rtol=1e-10)
    np.testing.assert_allclose(diag.kappa, 1.0, rtol=1e-10)
    np.testing.assert_allclose(diag.srank_attention, 1.0, rtol=1e-10)
    np.testing.assert_allclose(diag.max_probability, 1.0 / n, rtol=1e-10)
    np.testing.assert_allclose(diag.attention_norm, 1.0, rtol=1e-10)
    Vd = V.astype(np.float64)
    np.testing.assert_allclose(diag.values_norm, np.linalg.norm(Vd, 2), rtol=1e-5)


def test_diagnostics_sharp_and_causal(rng):
    Q, K, V = _qkv(rng, n=64, m=64, heads=2, q_scale=3.0)
    diag = smp.sampling_diagnostics(Q, K, V, causal=True, n_heavy=8)
    assert diag.alpha.shape == (2,)
    assert np.all(diag.alpha >= 1.0)
    assert np.all(np.isfinite(diag.kappa)) and np.all(diag.kappa >= 1.0)
    assert np.all(diag.max_probability == 1.0)  # the first query sees one key
    with pytest.raises(ValueError, match="n_heavy"):
        smp.sampling_diagnostics(Q, K, V, n_heavy=0)


def test_amm_variance_small_case():
    # A = I, B = ones, p uniform, s = 1: the estimate is 2 e_j e_j^T 1: error^2 = 2.
    assert smp.amm_variance(np.eye(2), np.ones((2, 1)), np.array([0.5, 0.5]), 1) == 2.0
    # Optimal p on a rank-one product with one column: zero variance.
    A = np.array([[1.0, 2.0]])
    B = np.array([[1.0], [1.0]])
    assert abs(smp.amm_variance(A, B, np.array([1 / 3, 2 / 3]), 5)) < 1e-15


def test_amm_variance_errors():
    with pytest.raises(ValueError, match="agree"):
        smp.amm_variance(np.eye(2), np.ones((3, 1)), np.array([0.5, 0.5]), 1)
    with pytest.raises(ValueError, match="sum to 1"):
        smp.amm_variance(np.eye(2), np.ones((2, 1)), np.array([0.5, 0.6]), 1)
    with pytest.raises(ValueError, match="biased"):
        smp.amm_variance(np.eye(2), np.ones((2, 1)), np.array([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="s="):
        smp.amm_variance(np.eye(2), np.ones((2, 1)), np.array([0.5, 0.5]), 0)


def test_softmax_attention_still_the_reference(rng):
    # The exact pieces reuse softmax_attention: sanity check of the oracle pairing.
    Q, K, V = _qkv(rng, n=40, m=40)
    np.testing.assert_allclose(softmax_attention(Q, K, V), _exact(Q, K, V), atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_exact_when_not_cheaper(name, rng):
    # m <= block_size + sample_size: exact attention costs no more kernel evaluations.
    Q, K, V = _qkv(rng, n=96, m=96)
    kw = {"min_seq_len": 8, "n_select": 96} if name == "prescoring" else {"min_seq_len": 8}
    kw = {} if name == "kdeformer" else kw
    # the Markov bound (zero at the exact limit; HyperAttention's default is a certificate)
    kw["error_bound"] = "exact"
    res = approximate(Q, K, V, name, rng=0, block_size=32, sample_size=64, **kw)
    assert relative_error(res.output, _exact(Q, K, V)) < 1e-12
    assert res.cost.kernel_evals == 96 * 96
    assert res.bound.value < 1e-10


@pytest.mark.parametrize("causal", [False, True])
def test_hyperattention_float32_without_bound_matches_float64(causal):
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 400, 8)) * 0.5 for _ in range(3))
    kw = dict(rng=1, causal=causal, error_bound=False, min_seq_len=64, sample_size=32)
    a = approximate(*(x.astype(np.float32) for x in (Q, K, V)), "hyperattention", **kw)
    b = approximate(Q, K, V, "hyperattention", **kw)
    assert a.output.dtype == np.float32 and np.all(np.isfinite(a.output))
    np.testing.assert_allclose(a.output, b.output, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize(
    ("name", "causal"), [("hyperattention", False), ("hyperattention", True), ("kdeformer", False)]
)
@pytest.mark.parametrize(("tiles", "dv"), [(True, 16), (True, 5), (False, 16)])
def test_block_sample_kernel_matches_numpy_reference(name, causal, tiles, dv, dtype, monkeypatch):
    # The Numba block + sample kernels (register tiles when the value width is a multiple
    # of the vector length and tiles are on; BLAS otherwise) against their plain-NumPy
    # twin, same draws.
    import attention.exact as exact_module

    monkeypatch.setattr(exact_module, "_USE_TILES", tiles)
    rng = np.random.default_rng(5)
    n = 700 if causal else 300  # causal: the split has sampled pieces (unequal blocks)
    Q = rng.standard_normal((2, 3, n, 8)).astype(dtype)
    K = rng.standard_normal((2, 1, n, 8)).astype(dtype)
    V = rng.standard_normal((2, 1, n, dv)).astype(dtype)
    kw = dict(rng=2, causal=causal, block_size=16, sample_size=24, error_bound=False)
    if name == "hyperattention":
        kw["min_seq_len"] = 32
    a = approximate(Q, K, V, name, **kw)
    monkeypatch.setattr(smp, "_USE_KERNEL", False)
    b = approximate(Q, K, V, name, **kw)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(a.output, b.output, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.lse, b.lse, rtol=tol, atol=tol)
    assert a.cost[:2] == b.cost[:2]
    np.testing.assert_array_equal(a.cost.key_fraction, b.cost.key_fraction)


def test_causal_plan_pieces_cover_the_triangle():
    # Every visible (row, key) pair lies in exactly one piece of the causal plan.
    opts = {"block_size": 4, "sample_size": 4, "min_seq_len": 8, "n_bits": 3}
    for n, m in [(100, 100), (64, 90), (90, 64), (37, 37)]:
        plan = []
        smp._plan_causal(n, m, 0, 0, opts, plan)
        cover = np.zeros((n, m), dtype=int)
        for kind, r0, nr, k0, mk in plan:
            rows, keys = np.arange(r0, r0 + nr)[:, None], np.arange(k0, k0 + mk)[None, :]
            vis = keys <= rows + (m - n)
            if kind != "causal":
                assert vis.all()
            cover[r0 : r0 + nr, k0 : k0 + mk] += vis
        want = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
        np.testing.assert_array_equal(cover, want.astype(int))


@pytest.mark.parametrize("causal", [False, True])
def test_hyperattention_certificate_bound(rng, causal):
    # error_bound=True is sub-quadratic: 64 exact rows, counted in the cost; the output
    # is the one without a bound (the certificate draws after the method). Default: none.
    Q, K, V = _qkv(rng, n=300, m=300)
    kw = dict(rng=4, causal=causal, min_seq_len=32, block_size=16, sample_size=16)
    plain = approximate(Q, K, V, "hyperattention", error_bound=False, **kw)
    assert approximate(Q, K, V, "hyperattention", **kw).bound is None
    res = approximate(Q, K, V, "hyperattention", error_bound=True, **kw)
    np.testing.assert_array_equal(res.output, plain.output)
    assert res.bound.kind == "probabilistic" and res.bound.norm == "fro"
    assert "sampled-row certificate" in res.bound.assumptions
    assert res.cost.flops == plain.cost.flops + 2 * 64 * 300 * (Q.shape[-1] + V.shape[-1])
    err = np.linalg.norm(res.output - _exact(Q, K, V, causal=causal))
    assert err <= res.bound.value
    markov = approximate(Q, K, V, "hyperattention", error_bound="exact", **kw)
    assert "Markov" in markov.bound.assumptions
    with pytest.raises(ValueError, match="certificate"):
        approximate(Q, K, V, "hyperattention", error_bound="nope", **kw)


@pytest.mark.parametrize("method", ["prescoring", "kdeformer"])
def test_key_selection_thread_count_determinism(rng, dtype, method):
    # Same seed, one and two threads (heads run concurrently): bit-identical outputs.
    import numba

    Q, K, V = (rng.standard_normal((3, 300, 16)).astype(dtype) for _ in range(3))
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            outs.append(approximate(Q, K, V, method, rng=7).output)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_causal_pairs_counts_visible_pairs():
    for n in range(0, 9):
        for m in range(0, 9):
            brute = sum(max(0, min(m, i + m - n + 1)) for i in range(n))
            assert smp._causal_pairs(n, m) == brute, (n, m)


def test_hyperattention_exact_leaves_reported(rng, dtype):
    # Below the leaf size the causal split is one exact leaf: exact attention, and
    # cost.key_fraction says so (1.0); above it pieces are sampled (< 1, not exact).
    Q, K, V = (rng.standard_normal((2, 400, 16)).astype(dtype) for _ in range(3))
    Y = reference_attention(*(x.astype(np.float64) for x in (Q, K, V)), causal=True)
    r = approximate(Q, K, V, "hyperattention", rng=0, causal=True, block_size=16, sample_size=64)
    np.testing.assert_array_equal(r.cost.key_fraction, [1.0, 1.0])
    assert relative_error(r.output, Y) < 100 * np.finfo(dtype).eps
    s = approximate(
        Q, K, V, "hyperattention", rng=0, causal=True, block_size=8, sample_size=8, min_seq_len=16
    )
    # n = 400, cap 64: leaves of 50 rows (8 of them), about 1/8 of the visible pairs
    assert 0.05 < s.cost.key_fraction[0] < 0.5
    assert relative_error(s.output, Y) > 1e3 * np.finfo(dtype).eps
    full = approximate(Q, K, V, "hyperattention", rng=0, block_size=8, sample_size=8)
    assert full.cost.key_fraction[0] == 0.0  # non-causal, sampled: no exact piece
