"""Exact attention: Numba online-softmax kernel vs the NumPy oracle, masks, merging."""

import itertools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attention.exact as exact_module
from attention._core import prepare
from attention._kernels.exact import (
    _DIAG_ROWS,
    _TILE_VECS,
    _exp_sum_f32,
    _exp_sum_f64,
    _gemm_tiles,
    _make_tile,
    _mask_row_limits,
    _nonfinite_probe,
    _pack_kt,
    _pack_kt_panels,
    _qk_exp_tiles,
    _qk_rows,
    _qk_small,
    _softmax_cols,
    _softmax_rows_vec,
)
from attention.exact import _attend, merge_partials, reference_attention, softmax_attention
from rnla._kernels.fastexp import _HAS_AVX512, _make_exp_sum

# Max-norm error relative to max |Y| (target: ~1e-13 in float64, ~1e-6 in float32).
RTOL = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 1e-13}


def qkv(rng, shape_q, shape_k, dv=None, dtype=np.float64, scale=1.0):
    dv = shape_k[-1] if dv is None else dv
    Q = (scale * rng.standard_normal(shape_q)).astype(dtype)
    K = (scale * rng.standard_normal(shape_k)).astype(dtype)
    V = rng.standard_normal((*shape_k[:-1], dv)).astype(dtype)
    return Q, K, V


def naive(Q, K, V, scale, keep=None, bias=None):
    """Row-by-row softmax of one 2-D slice in float64 (independent of the oracle)."""
    Q, K, V = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    out = np.zeros((Q.shape[0], V.shape[1]))
    lse = np.full(Q.shape[0], -np.inf)
    for i in range(Q.shape[0]):
        s = K @ Q[i] * scale
        if bias is not None:
            s = s + bias[i]
        vis = np.isfinite(s) if keep is None else keep[i] & np.isfinite(s)
        if not vis.any():
            continue
        mx = s[vis].max()
        p = np.exp(s[vis] - mx)
        out[i] = p @ V[vis] / p.sum()
        lse[i] = mx + np.log(p.sum())
    return out, lse


def assert_close(Y, R, dtype, factor=1.0):
    Y, R = np.asarray(Y, dtype=np.float64), np.asarray(R, dtype=np.float64)
    assert Y.shape == R.shape
    assert np.isfinite(Y).all()
    err = np.max(np.abs(Y - R), initial=0.0)
    assert err <= factor * RTOL[np.dtype(dtype)] * max(np.max(np.abs(R), initial=0.0), 1.0)


def assert_lse_close(L, R, dtype, factor=1.0):
    L, R = np.asarray(L, dtype=np.float64), np.asarray(R, dtype=np.float64)
    assert np.array_equal(np.isneginf(L), np.isneginf(R))
    fin = np.isfinite(R)
    err = np.max(np.abs(L[fin] - R[fin]), initial=0.0)
    assert err <= factor * RTOL[np.dtype(dtype)] * max(np.max(np.abs(R[fin]), initial=0.0), 1.0)


# ----------------------------------------------------------------------------- oracle


def test_reference_matches_naive(rng):
    Q, K, V = qkv(rng, (7, 5), (9, 5), dv=3)
    keep = rng.random((7, 9)) > 0.4
    keep[2] = False
    Y, lse = reference_attention(Q, K, V, mask=keep, return_lse=True)
    R, rl = naive(Q, K, V, 1 / np.sqrt(5), keep=keep)
    np.testing.assert_allclose(Y, R, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(lse, rl, rtol=1e-13)


# ------------------------------------------------------------------- kernel == oracle

SHAPES = [
    pytest.param(1, 1, 1, 1, id="n1-m1-d1"),
    pytest.param(1, 37, 8, 8, id="n1"),
    pytest.param(37, 1, 8, 4, id="m1"),
    pytest.param(20, 30, 1, 1, id="d1"),
    pytest.param(129, 513, 16, 16, id="block-edges"),
    pytest.param(300, 1100, 32, 8, id="many-blocks"),
    pytest.param(256, 512, 64, 64, id="exact-blocks"),
]


@pytest.mark.parametrize(("n", "m", "d", "dv"), SHAPES)
def test_kernel_matches_reference(rng, dtype, n, m, d, dv):
    Q, K, V = qkv(rng, (2, n, d), (2, m, d), dv=dv, dtype=dtype)
    Y, lse = softmax_attention(Q, K, V, return_lse=True)
    R, rl = reference_attention(Q, K, V, return_lse=True)
    assert Y.dtype == dtype and lse.dtype == dtype
    assert Y.shape == (2, n, dv) and lse.shape == (2, n)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


@given(
    n=st.integers(1, 140),
    m=st.integers(1, 600),
    d=st.integers(1, 12),
    causal=st.booleans(),
    use_mask=st.booleans(),
    data_seed=st.integers(0, 2**31),
)
@settings(max_examples=25, deadline=None)
def test_kernel_matches_reference_random(n, m, d, causal, use_mask, data_seed):
    rng = np.random.default_rng(data_seed)
    Q, K, V = qkv(rng, (n, d), (m, d), dv=3)
    mask = rng.random((n, m)) > 0.3 if use_mask else None
    Y, lse = softmax_attention(Q, K, V, causal=causal, mask=mask, return_lse=True)
    R, rl = reference_attention(Q, K, V, causal=causal, mask=mask, return_lse=True)
    assert_close(Y, R, np.float64)
    assert_lse_close(lse, rl, np.float64)


def test_integer_inputs_promote_to_float64(rng):
    Q, K, V = (rng.integers(-3, 4, size=(5, 4)) for _ in range(3))
    Y = softmax_attention(Q, K, V)
    assert Y.dtype == np.float64
    assert_close(Y, reference_attention(Q, K, V), np.float64)


def test_scale(rng):
    Q, K, V = qkv(rng, (6, 4), (10, 4))
    Y = softmax_attention(Q, K, V, scale=0.7)
    assert_close(Y, naive(Q, K, V, 0.7)[0], np.float64)


# -------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "mask_shape",
    [(40, 70), (1, 70), (40, 1), (3, 40, 70), (1, 1, 70), (2, 1, 40, 70)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_boolean_mask_broadcast(rng, dtype, mask_shape):
    Q, K, V = qkv(rng, (2, 3, 40, 8), (2, 3, 70, 8), dtype=dtype)
    mask = rng.random(mask_shape) > 0.3
    Y, lse = softmax_attention(Q, K, V, mask=mask, return_lse=True)
    R, rl = reference_attention(Q, K, V, mask=mask, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
    # Independent check on one slice against the naive loop.
    full = np.broadcast_to(mask, (2, 3, 40, 70))
    Rn, _ = naive(Q[1, 2], K[1, 2], V[1, 2], 1 / np.sqrt(8), keep=full[1, 2])
    assert_close(Y[1, 2], Rn, dtype)


def test_additive_mask_with_neg_inf(rng, dtype):
    Q, K, V = qkv(rng, (3, 50, 8), (3, 90, 8), dtype=dtype)
    bias = rng.standard_normal((50, 90)) * 3
    bias[rng.random((50, 90)) < 0.3] = -np.inf
    bias[7] = -np.inf  # one fully masked row
    Y, lse = softmax_attention(Q, K, V, mask=bias, return_lse=True)
    R, rl = reference_attention(Q, K, V, mask=bias, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
    assert np.all(Y[:, 7] == 0) and np.all(np.isneginf(lse[:, 7]))
    Rn, _ = naive(Q[0], K[0], V[0], 1 / np.sqrt(8), bias=bias)
    assert_close(Y[0], Rn, dtype)


def test_additive_mask_float32_input_float64_mask(rng):
    Q, K, V = qkv(rng, (20, 4), (30, 4), dtype=np.float32)
    bias = rng.standard_normal((20, 30))
    Y = softmax_attention(Q, K, V, mask=bias)
    assert Y.dtype == np.float32
    assert_close(Y, reference_attention(Q, K, V, mask=bias), np.float32)


def test_fully_masked_rows_give_zero_and_neg_inf(rng, dtype):
    Q, K, V = qkv(rng, (130, 8), (600, 8), dtype=dtype)
    mask = rng.random((130, 600)) > 0.5
    mask[[0, 64, 129]] = False
    with np.errstate(all="raise"):
        Y, lse = softmax_attention(Q, K, V, mask=mask, return_lse=True)
    assert np.isfinite(Y).all()
    assert np.all(Y[[0, 64, 129]] == 0)
    assert np.all(np.isneginf(lse[[0, 64, 129]]))
    assert np.isfinite(np.delete(lse, [0, 64, 129])).all()
    R, rl = reference_attention(Q, K, V, mask=mask, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


def test_everything_masked(rng):
    Q, K, V = qkv(rng, (2, 5, 3), (2, 9, 3))
    Y, lse = softmax_attention(Q, K, V, mask=np.zeros((5, 9), bool), return_lse=True)
    assert np.all(Y == 0) and np.all(np.isneginf(lse))


# ------------------------------------------------------------------------- causal


@pytest.mark.parametrize(
    ("n", "m"),
    [(200, 200), (70, 600), (600, 70), (1, 50), (50, 1), (513, 1030)],
    ids=lambda v: str(v),
)
def test_causal_bottom_right(rng, dtype, n, m):
    Q, K, V = qkv(rng, (2, n, 8), (2, m, 8), dtype=dtype)
    Y, lse = softmax_attention(Q, K, V, causal=True, return_lse=True)
    keep = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
    Rn, rln = naive(Q[1], K[1], V[1], 1 / np.sqrt(8), keep=keep)
    assert_close(Y[1], Rn, dtype)
    assert_lse_close(lse[1], rln, dtype)
    R, rl = reference_attention(Q, K, V, causal=True, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
    if n > m:  # the first n - m rows see no key
        assert np.all(Y[:, : n - m] == 0) and np.all(np.isneginf(lse[:, : n - m]))


def test_causal_with_mask(rng):
    Q, K, V = qkv(rng, (140, 8), (700, 8))
    mask = rng.random((140, 700)) > 0.2
    Y = softmax_attention(Q, K, V, causal=True, mask=mask)
    keep = mask & (np.arange(700)[None, :] <= np.arange(140)[:, None] + 560)
    assert_close(Y, naive(Q, K, V, 1 / np.sqrt(8), keep=keep)[0], np.float64)


def test_causal_last_row_is_full_attention(rng):
    Q, K, V = qkv(rng, (30, 8), (80, 8))
    Y = softmax_attention(Q, K, V, causal=True)
    assert_close(Y[-1], softmax_attention(Q[-1:], K, V)[0], np.float64)


# ------------------------------------------------------------------ batch and GQA


def test_grouped_query_attention(rng, dtype):
    Q, K, V = qkv(rng, (2, 6, 40, 8), (2, 2, 90, 8), dtype=dtype)
    Y = softmax_attention(Q, K, V, causal=True)
    R = reference_attention(Q, np.repeat(K, 3, axis=1), np.repeat(V, 3, axis=1), causal=True)
    assert_close(Y, R, dtype)
    # Query head 4 uses key/value head 4 // 3 = 1 (repeat_interleave convention).
    keep = np.arange(90)[None, :] <= np.arange(40)[:, None] + 50
    assert_close(Y[1, 4], naive(Q[1, 4], K[1, 1], V[1, 1], 1 / np.sqrt(8), keep=keep)[0], dtype)


def test_batch_broadcasting(rng):
    Q, _, _ = qkv(rng, (2, 3, 30, 8), (1, 1, 1, 8))
    _, K, V = qkv(rng, (1, 8), (1, 3, 50, 8))
    Y = softmax_attention(Q, K, V)
    assert Y.shape == (2, 3, 30, 8)
    for b in range(2):
        for h in range(3):
            assert_close(Y[b, h], naive(Q[b, h], K[0, h], V[0, h], 1 / np.sqrt(8))[0], np.float64)
    # One query sequence against a batch of key sets.
    Y1 = softmax_attention(Q[0, 0], K, V)
    assert Y1.shape == (1, 3, 30, 8)
    assert_close(Y1[0, 2], naive(Q[0, 0], K[0, 2], V[0, 2], 1 / np.sqrt(8))[0], np.float64)


# ----------------------------------------------------------------- extreme logits


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pos", "neg"])
def test_extreme_logits(rng, dtype, sign):
    # Scores of magnitude ~1e4: no overflow, no NaN, nearly one-hot weights.
    Q, K, V = qkv(rng, (64, 4), (700, 4), dtype=dtype)
    Q = (sign * 100 * Q).astype(dtype)
    K = (100 * K).astype(dtype)
    smax = float(np.max(np.abs(Q.astype(float) @ K.astype(float).T))) / 2
    assert smax > 5e3
    with np.errstate(all="raise"):
        Y, lse = softmax_attention(Q, K, V, return_lse=True)
    R, rl = reference_attention(Q, K, V, return_lse=True)
    assert np.isfinite(Y).all() and np.isfinite(lse).all()
    # A score perturbed by eps * |s| changes each weight by that relative amount.
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(Y - R)) <= 20 * eps * smax * np.max(np.abs(V))
    assert np.max(np.abs(lse - rl)) <= 20 * eps * smax


def test_extreme_additive_mask(rng, dtype):
    Q, K, V = qkv(rng, (20, 4), (40, 4), dtype=dtype)
    bias = rng.choice([-1e4, 0.0, 1e4], size=(20, 40))
    Y = softmax_attention(Q, K, V, mask=bias)
    R = reference_attention(Q, K, V, mask=bias)
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(Y - R)) <= 50 * eps * 1e4 * np.max(np.abs(V))


# ------------------------------------------------------------------ determinism


def test_thread_count_determinism(rng, dtype):
    Q, K, V = qkv(rng, (3, 300, 16), (3, 700, 16), dtype=dtype)
    mask = rng.random((300, 700)) > 0.1
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        Y1, l1 = softmax_attention(Q, K, V, causal=True, mask=mask, return_lse=True)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        Y2, l2 = softmax_attention(Q, K, V, causal=True, mask=mask, return_lse=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(Y1, Y2) and np.array_equal(l1, l2)


def test_inputs_not_mutated(rng):
    Q, K, V = qkv(rng, (2, 20, 4), (2, 30, 4))
    mask = rng.random((20, 30)) > 0.5
    copies = [x.copy() for x in (Q, K, V, mask)]
    softmax_attention(Q, K, V, mask=mask, causal=True)
    for a, b in zip((Q, K, V, mask), copies, strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------- rows=


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rows_subset(rng, dtype, causal):
    Q, K, V = qkv(rng, (2, 300, 8), (2, 500, 8), dtype=dtype)
    mask = rng.random((300, 500)) > 0.2
    problem = prepare(Q, K, V, causal=causal, mask=mask)
    out, lse = _attend(problem)
    rows = np.array([299, 0, 5, 5, 150, 131, 17])
    out_r, lse_r = _attend(problem, rows=rows)
    assert out_r.shape == (2, 7, 8) and lse_r.shape == (2, 7)
    # Equal up to rounding: BLAS may order the sums differently for another block height.
    assert_close(out_r, out[:, rows], dtype)
    assert_lse_close(lse_r, lse[:, rows], dtype)
    empty_out, empty_lse = _attend(problem, rows=np.array([], dtype=np.int64))
    assert empty_out.shape == (2, 0, 8) and empty_lse.shape == (2, 0)


# ----------------------------------------------------------------- merge_partials


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_merge_partials_equals_full(rng, dtype, causal):
    Q, K, V = qkv(rng, (2, 40, 8), (2, 100, 8), dtype=dtype)
    cuts = [0, 13, 14, 60, 100]
    keep = np.arange(100)[None, :] <= np.arange(40)[:, None] + 60
    parts = []
    for a, b in itertools.pairwise(cuts):
        # Causal split: the part sees the keys a..b-1 under the global causal pattern.
        mask = keep[:, a:b] if causal else None
        parts.append(softmax_attention(Q, K[:, a:b], V[:, a:b], mask=mask, return_lse=True))
    Y, lse = merge_partials([p[0] for p in parts], [p[1] for p in parts])
    R, rl = softmax_attention(Q, K, V, causal=causal, return_lse=True)
    assert Y.dtype == dtype and lse.dtype == dtype
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


def test_merge_partials_all_neg_inf():
    Y, lse = merge_partials([np.ones((3, 2)), np.zeros((3, 2))], [np.full(3, -np.inf)] * 2)
    assert np.all(Y == 0) and np.all(np.isneginf(lse))


def test_merge_partials_single_part(rng):
    Y0 = rng.standard_normal((4, 3))
    l0 = rng.standard_normal(4)
    Y, lse = merge_partials([Y0], [l0])
    np.testing.assert_allclose(Y, Y0, rtol=1e-15)
    np.testing.assert_allclose(lse, l0, rtol=1e-15)


@pytest.mark.parametrize(
    ("outputs", "lses", "err", "match"),
    [
        ([], [], ValueError, "at least one part"),
        ([np.zeros((3, 2))], [np.zeros(3), np.zeros(3)], ValueError, "1 outputs but 2"),
        ([np.zeros((3, 2)), np.zeros((4, 2))], [np.zeros(3)] * 2, ValueError, "shape"),
        ([np.zeros((3, 2))], [np.zeros(4)], ValueError, r"expected \(3,\)"),
        ([np.zeros((3, 2))], [np.array([0.0, np.nan, 0.0])], ValueError, "NaN"),
        ([np.zeros((3, 2))], [np.array([0.0, np.inf, 0.0])], ValueError, r"\+inf"),
        ([np.full((3, 2), np.nan)], [np.zeros(3)], ValueError, "finite"),
        (np.zeros((1, 3, 2)), np.zeros((1, 3)), TypeError, "sequences"),
        ([np.zeros((3, 2), complex)], [np.zeros(3)], TypeError, "complex"),
    ],
    ids=["empty", "count", "shape", "lse-shape", "nan-lse", "inf-lse", "nan-out", "array", "cplx"],
)
def test_merge_partials_bad_input(outputs, lses, err, match):
    with pytest.raises(err, match=match):
        merge_partials(outputs, lses)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [softmax_attention, reference_attention], ids=["kernel", "ref"])
@pytest.mark.parametrize(
    ("shapes", "kw", "err", "match"),
    [
        (((5, 4), (6, 3), (6, 2)), {}, ValueError, "same last dimension"),
        (((5, 4), (6, 4), (7, 2)), {}, ValueError, "number of keys"),
        (((3, 5, 4), (2, 6, 4), (2, 6, 4)), {}, ValueError, "multiple of the number"),
        (((5, 4), (6, 4), (6, 2)), {"mask": np.ones((5, 7), bool)}, ValueError, "mask"),
        (((5, 4), (6, 4), (6, 2)), {"mask": np.ones((2, 5, 6), bool)}, ValueError, "mask"),
        (((5, 4), (6, 4), (6, 2)), {"mask": np.ones((5, 6), int)}, TypeError, "mask"),
        (((5, 4), (6, 4), (6, 2)), {"causal": "yes"}, TypeError, "causal"),
        (((5, 4), (6, 4), (6, 2)), {"causal": 1}, TypeError, "causal"),
        (((5, 4), (6, 4), (6, 2)), {"scale": float("nan")}, ValueError, "scale"),
        (((4,), (6, 4), (6, 2)), {}, ValueError, "shape"),
    ],
    ids=[
        "d",
        "m",
        "gqa",
        "mask-m",
        "mask-lead",
        "mask-int",
        "causal",
        "causal-int",
        "scale",
        "1d",
    ],
)
def test_bad_input(rng, fn, shapes, kw, err, match):
    Q, K, V = (rng.standard_normal(s) for s in shapes)
    with pytest.raises(err, match=match):
        fn(Q, K, V, **kw)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["Q", "K", "V"])
def test_nan_rejected(rng, which):
    arrs = [rng.standard_normal((5, 4)) for _ in range(3)]
    arrs[which][2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        softmax_attention(*arrs)


def test_complex_rejected(rng):
    Q = rng.standard_normal((5, 4)) + 1j
    with pytest.raises(TypeError, match="complex"):
        softmax_attention(Q, Q.real, Q.real)


def test_nan_additive_mask_rejected(rng):
    Q, K, V = qkv(rng, (5, 4), (6, 4))
    bias = np.zeros((5, 6))
    bias[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        softmax_attention(Q, K, V, mask=bias)


# ------------------------------------------------------- decode: split keys, GQA stacking


@pytest.fixture
def small_chunks(monkeypatch):
    """Split-key chunks of 64 keys (at most 8 per slice) so that small m splits."""
    monkeypatch.setattr(exact_module, "_CHUNK_MIN", 64)
    monkeypatch.setattr(exact_module, "_CHUNK_MAX", 256)
    monkeypatch.setattr(exact_module, "_MAX_CHUNKS", 8)


def split_taken(Q, K, V, causal=False, rows=None):
    problem = prepare(Q, K, V, causal=causal)
    r = problem.n if rows is None else len(rows)
    last = problem.n - 1 if rows is None else max(rows)
    m_eff = min(problem.m, last + problem.offset + 1) if causal else problem.m
    return exact_module._split_plan(problem, r, m_eff) is not None


@pytest.mark.parametrize("n", [1, 4, 16])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_split_keys_matches_reference(rng, dtype, small_chunks, n, causal, mask_kind):
    # 6 query heads on 2 key/value heads: 3 * n stacked rows per key/value head, a
    # partial last chunk (m = 1000 is not a multiple of the chunk), bottom-right causal.
    Q, K, V = qkv(rng, (2, 6, n, 16), (2, 2, 1000, 16), dv=8, dtype=dtype)
    mask = None
    if mask_kind == "bool":
        mask = rng.random((6, n, 1000)) > 0.3
    elif mask_kind == "float":
        mask = np.where(rng.random((n, 1000)) > 0.3, rng.standard_normal((n, 1000)), -np.inf)
    assert split_taken(Q, K, V, causal)
    Y, lse = softmax_attention(Q, K, V, causal=causal, mask=mask, return_lse=True)
    R, rl = reference_attention(Q, K, V, causal=causal, mask=mask, return_lse=True)
    assert Y.dtype == dtype and lse.dtype == dtype
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


def test_split_keys_default_chunks_decode(rng, dtype):
    # The decode shape of the benchmark: 9 query heads on 3 key/value heads, one query.
    Q, K, V = qkv(rng, (9, 1, 64), (3, 2048, 64), dtype=dtype)
    assert split_taken(Q, K, V)
    Y, lse = softmax_attention(Q, K, V, return_lse=True)
    R, rl = reference_attention(Q, K, V, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
    # Each query head against its own key/value head, one at a time (prefill path).
    for h in (0, 4, 8):
        assert_close(Y[h], softmax_attention(Q[h], K[h // 3], V[h // 3]), dtype)


def test_split_keys_fully_masked_rows_and_chunks(rng, dtype, small_chunks):
    Q, K, V = qkv(rng, (4, 3, 16), (2, 700, 16), dtype=dtype)
    keep = rng.random((4, 3, 700)) > 0.5
    keep[1, 2] = False  # a row that sees nothing
    keep[:, 0, :400] = False  # whole chunks hidden from a row
    Y, lse = softmax_attention(Q, K, V, mask=keep, return_lse=True)
    R, rl = reference_attention(Q, K, V, mask=keep, return_lse=True)
    assert np.all(Y[1, 2] == 0) and np.isneginf(lse[1, 2])
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
    # Causal together with the mask.
    Y, lse = softmax_attention(Q, K, V, mask=keep, causal=True, return_lse=True)
    R, rl = reference_attention(Q, K, V, mask=keep, causal=True, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


def test_split_keys_rows_subset(rng, dtype, small_chunks):
    Q, K, V = qkv(rng, (3, 8, 8), (3, 900, 8), dtype=dtype)
    problem = prepare(Q, K, V, causal=True)
    out, lse = _attend(problem)
    rows = np.array([7, 0, 3, 3])
    assert split_taken(Q, K, V, causal=True, rows=rows)
    out_r, lse_r = _attend(problem, rows=rows)
    assert_close(out_r, out[:, rows], dtype)
    assert_lse_close(lse_r, lse[:, rows], dtype)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pos", "neg"])
def test_split_keys_extreme_logits(rng, dtype, small_chunks, sign):
    Q, K, V = qkv(rng, (2, 4), (2, 700, 4), dtype=dtype)
    Q = (sign * 100 * Q).astype(dtype)
    K = (100 * K).astype(dtype)
    assert split_taken(Q, K, V)
    with np.errstate(all="raise"):
        Y, lse = softmax_attention(Q, K, V, return_lse=True)
    R = reference_attention(Q, K, V)
    assert np.isfinite(Y).all() and np.isfinite(lse).all()
    smax = float(np.max(np.abs(Q.astype(float) @ np.swapaxes(K.astype(float), 1, 2)))) / 2
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(Y - R)) <= 20 * eps * smax * np.max(np.abs(V))


def test_split_keys_tiny_inputs(rng, dtype, small_chunks):
    # d = 1, dv = 1, all-zero queries (uniform weights): the mean of V.
    Q = np.zeros((3, 1, 1), dtype=dtype)
    K = rng.standard_normal((1, 500, 1)).astype(dtype)
    V = rng.standard_normal((1, 500, 1)).astype(dtype)
    assert split_taken(Q, K, V)
    Y, lse = softmax_attention(Q, K, V, return_lse=True)
    assert_close(Y, np.broadcast_to(V.astype(float).mean(axis=1), (3, 1, 1)), dtype)
    np.testing.assert_allclose(lse, np.log(500), rtol=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize(
    ("shape_q", "shape_k", "causal", "chunks"),
    [
        pytest.param((9, 2, 16), (3, 900, 16), True, True, id="split-gqa"),
        pytest.param((6, 300, 16), (2, 700, 16), True, False, id="prefill-gqa-causal"),
        pytest.param((1, 600, 16), (1, 600, 16), True, False, id="prefill-causal-one-head"),
    ],
)
def test_thread_count_determinism_paths(rng, dtype, monkeypatch, shape_q, shape_k, causal, chunks):
    if chunks:
        monkeypatch.setattr(exact_module, "_CHUNK_MIN", 64)
        monkeypatch.setattr(exact_module, "_MAX_CHUNKS", 8)
    monkeypatch.setattr(exact_module, "_SERIAL_WORK", 0)  # use the thread pool
    monkeypatch.setattr(exact_module, "_BQ", 64)  # several query blocks per slice
    Q, K, V = qkv(rng, shape_q, shape_k, dtype=dtype)
    assert split_taken(Q, K, V, causal) == chunks
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        Y1, l1 = softmax_attention(Q, K, V, causal=causal, return_lse=True)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        Y2, l2 = softmax_attention(Q, K, V, causal=causal, return_lse=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(Y1, Y2) and np.array_equal(l1, l2)
    assert_close(Y1, reference_attention(Q, K, V, causal=causal), dtype)


# ---------------------------------------------------------------- exponential kernel


@pytest.mark.parametrize(
    ("kernel", "dt", "lo", "cut"),
    [
        pytest.param(_exp_sum_f32, np.float32, -90.0, -87.0, id="float32"),
        pytest.param(_exp_sum_f64, np.float64, -745.0, -708.0, id="float64"),
    ],
)
def test_exp_kernel_against_numpy(kernel, dt, lo, cut):
    x = np.linspace(lo, 0.0, 200_003).astype(dt)
    x[::997] = -np.inf
    s = x.copy()
    total = kernel(s, 0.0)
    ref = np.exp(x.astype(np.longdouble))
    normal = x >= cut
    ulp = np.abs(s[normal] - ref[normal]) / np.spacing(ref[normal].astype(dt))
    assert float(ulp.max()) <= 2.0
    assert np.all(s[~normal] == 0)  # below the cut (and -inf): exactly 0
    np.testing.assert_allclose(total, float(s.astype(np.float64).sum()), rtol=1e-6)
    # Shifted by the row maximum: exp(x - mx).
    s = np.array([3.0, 2.0, -np.inf], dtype=dt)
    kernel(s, 3.0)
    np.testing.assert_allclose(s, np.exp(np.array([0.0, -1.0, -np.inf])), rtol=4e-7)


_exp_sum_portable = _make_exp_sum(False)
_exp_sum_scalef = _make_exp_sum(True)


@numba.njit
def _call_exp_sum_portable(s, off, w, mx):
    return _exp_sum_portable(s, off, w, mx)


@numba.njit
def _call_exp_sum_scalef(s, off, w, mx):  # compiled only on AVX-512 CPUs (test skipped)
    return _exp_sum_scalef(s, off, w, mx)


@pytest.mark.parametrize(
    "variant",
    [
        "portable",
        pytest.param("scalef", marks=pytest.mark.skipif(not _HAS_AVX512, reason="needs AVX-512")),
    ],
)
@pytest.mark.parametrize(
    ("dt", "lo", "cut"), [(np.float32, -90.0, -87.0), (np.float64, -745.0, -708.0)]
)
def test_exp_sum_vec_against_numpy(rng, variant, dt, lo, cut):
    """Row exponential of the prefill kernel: <= 1 ulp on the whole range, 0 below."""
    call = _call_exp_sum_portable if variant == "portable" else _call_exp_sum_scalef
    x = np.concatenate(
        [
            np.linspace(lo, 0.0, 100_003),
            lo * rng.random(100_000),
            -1e-3 * rng.random(1000),
            [0.0, -0.0, cut, np.nextafter(cut, 0.0), np.nextafter(cut, -1.0), -np.inf],
        ]
    ).astype(dt)
    s = x.copy()
    total = call(s, 0, s.shape[0], 0.0)
    ref = np.exp(x.astype(np.longdouble))
    normal = x >= cut
    ulp = np.abs(s[normal] - ref[normal]) / np.spacing(ref[normal].astype(dt))
    assert float(ulp.max()) <= 1.0
    assert np.all(s[~normal] == 0)  # below the cut (and -inf): exactly 0
    assert s[x == 0][0] == 1.0
    np.testing.assert_allclose(total, float(s.astype(np.float64).sum()), rtol=1e-5)
    # Offsets and partial vectors: entries outside [off, off + w) are not touched.
    for w in (0, 1, 7, 8, 9, 15, 16, 17, 33):
        buf = np.full(w + 2, 5.0, dtype=dt)
        buf[1 : w + 1] = x[-w - 7 : -7] if w else []
        want = np.exp(buf[1 : w + 1].astype(np.float64) - 0.5)
        got = call(buf, 1, w, 0.5)
        assert buf[0] == 5.0 and buf[-1] == 5.0
        np.testing.assert_allclose(buf[1 : w + 1], want, rtol=4e-7)
        np.testing.assert_allclose(got, want.sum(), rtol=1e-6)


def test_softmax_rows_vec_matches_row_kernel(rng, dtype):
    """The prefill softmax on a flat buffer equals the row kernel to rounding."""
    nr, w, ld = 7, 45, 64
    s = (3 * rng.standard_normal((nr, ld))).astype(dtype)
    s[2, :] = -np.inf  # a row that sees nothing yet
    s[4, 5:] = -np.inf
    mrow = np.array([-np.inf, 0.5, -np.inf, 9.0, -np.inf, 1.0, -np.inf])
    lrow = np.array([0.0, 2.0, 0.0, 3.0, 0.0, 1.0, 0.0])
    got = [s.copy().reshape(-1), mrow.copy(), lrow.copy(), np.ones(nr)]
    want = [s.copy(), mrow.copy(), lrow.copy(), np.ones(nr)]
    _softmax_rows_vec(got[0], ld, nr, w, got[1], got[2], got[3])
    _softmax_cols(want[0], w, want[1], want[2], want[3])
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(got[0].reshape(nr, ld)[:, :w], want[0][:, :w], rtol=tol, atol=0)
    np.testing.assert_array_equal(got[1], want[1])
    for a, b in zip(got[2:], want[2:], strict=True):
        np.testing.assert_allclose(a, b, rtol=tol)
    assert np.all(got[0].reshape(nr, ld)[2, :w] == 0)


@pytest.mark.parametrize(("R", "w", "d"), [(1, 1, 1), (3, 700, 64), (8, 33, 5), (2, 9, 63)])
def test_small_row_products_against_numpy(rng, dtype, R, w, d):
    qb = rng.standard_normal((R, d)).astype(dtype)
    kc = rng.standard_normal((w, d)).astype(dtype)
    s = np.full((R, w), np.nan, dtype=dtype)
    _qk_small(qb, kc, s)
    ref = qb.astype(np.float64) @ kc.astype(np.float64).T
    scale = np.abs(qb).astype(np.float64) @ np.abs(kc).astype(np.float64).T
    assert np.all(np.abs(s - ref) <= 2 * d * np.finfo(dtype).eps * scale + 1e-300)


@pytest.mark.parametrize(
    ("R", "w", "d"), [(1, 1, 16), (3, 1024, 64), (8, 33, 128), (2, 9, 64), (3, 50, 8)]
)
def test_row_group_products_against_numpy(rng, dtype, R, w, d):
    """Decode scores by key groups (transposing reduction) against a float64 product."""
    if d % (64 // np.dtype(dtype).itemsize):
        pytest.skip("d must be a multiple of the vector length")
    qb = rng.standard_normal((R, d)).astype(dtype)
    k2 = rng.standard_normal((w + 7, d)).astype(dtype)
    s = np.full((R, w), np.nan, dtype=dtype)
    _qk_rows(qb, k2, 7, w, s)
    ref = qb.astype(np.float64) @ k2[7:].astype(np.float64).T
    scale = np.abs(qb).astype(np.float64) @ np.abs(k2[7:]).astype(np.float64).T
    assert np.all(np.abs(s - ref) <= 2 * d * np.finfo(dtype).eps * scale + 1e-300)


@pytest.mark.parametrize("m", [1, 63, 64, 200])
def test_pack_kt_panels_split_anywhere(rng, dtype, m):
    """Packing by flat panel ranges (one slice shared by threads) equals per-slice."""
    d = 5
    k = rng.standard_normal((3, m, d)).astype(dtype)
    wide = _TILE_VECS * (64 // np.dtype(dtype).itemsize)
    mp = -(-m // 64) * 64
    want = np.full((3, mp * d), np.nan, dtype=dtype)
    _pack_kt(k, want, 0, 3)
    n_pan = 3 * mp // wide
    for cut in (0, 1, n_pan // 2, n_pan):
        got = np.full_like(want, np.nan)
        _pack_kt_panels(k, got, 0, cut)
        _pack_kt_panels(k, got, cut, n_pan)
        np.testing.assert_array_equal(got, want)
    # Against NumPy: panel c of slice g is K[g, c*wide:(c+1)*wide].T, zero-padded.
    pad = np.zeros((3, mp, d), dtype=dtype)
    pad[:, :m] = k
    ref = pad.reshape(3, mp // wide, wide, d).transpose(0, 1, 3, 2).reshape(3, -1)
    np.testing.assert_array_equal(want, ref)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, None])
def test_nonfinite_probe_against_numpy(rng, dtype, value):
    x = rng.standard_normal((7, 33)).astype(dtype)
    if value is not None:
        x[5, 31] = value
    got = _nonfinite_probe(x)
    assert (got == 0.0) == bool(np.isfinite(x).all())
    assert np.isnan(got) != bool(np.isfinite(x).all())
    assert _nonfinite_probe(x[:, :0]) == 0.0


@pytest.mark.parametrize("which", ["K", "V"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["visible", "masked", "hidden-chunk", "causal-hidden"])
def test_split_keys_detect_nonfinite(rng, dtype, small_chunks, which, value, where):
    # The decode path does not validate K and V in a separate pass: the kernel detects a
    # NaN / inf wherever it sits (a visible key, a masked key inside a read chunk, a
    # chunk the mask hides, the last key, which causal masking hides from row 0) and the
    # usual error is raised; the inputs are not modified.
    Q, K, V = qkv(rng, (6, 2, 8), (2, 700, 8), dtype=dtype)
    mask = np.ones((2, 700), dtype=bool)
    mask[:, 300:320] = False  # masked keys inside a read chunk
    mask[:, 500:] = False  # whole chunks hidden (chunk size 64)
    pos = {"visible": 100, "masked": 310, "hidden-chunk": 650, "causal-hidden": 699}[where]
    causal = where == "causal-hidden"
    mask = None if causal else mask
    assert split_taken(Q, K, V, causal=causal)
    X = K if which == "K" else V
    X[1, pos, 3] = value
    before = (Q.copy(), K.copy(), V.copy())
    with pytest.raises(ValueError, match=f"{which} must contain only finite values"):
        softmax_attention(Q, K, V, mask=mask, causal=causal)
    for a, b in zip(before, (Q, K, V), strict=True):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("split", [False, True], ids=["prefill", "split"])
def test_nonfinite_query_rejected_without_prepare_check(rng, dtype, small_chunks, split):
    Q, K, V = qkv(rng, (3, 2 if split else 300, 8), (3, 700, 8), dtype=dtype)
    assert split_taken(Q, K, V) == split
    Q[2, 1, 0] = np.inf
    with pytest.raises(ValueError, match="Q must contain only finite values"):
        softmax_attention(Q, K, V)


def test_split_keys_overflowing_scores_are_not_an_input_error(small_chunks):
    # Finite inputs whose float32 scores overflow: the probe fires, the inputs are found
    # finite, and the result is that of the kernel (no spurious error).
    Q = np.full((3, 1, 4), 1e20, dtype=np.float32)
    K = np.full((1, 700, 4), 1e20, dtype=np.float32)
    V = np.ones((1, 700, 4), dtype=np.float32)
    assert split_taken(Q, K, V)
    softmax_attention(Q, K, V)  # must not raise


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("split", [False, True], ids=["prefill", "split"])
def test_key_padding_batch(rng, dtype, monkeypatch, kind, split):
    # A batch of sequences of different lengths padded to m = 1300 (key-padding mask):
    # the padded key blocks are skipped, the result is that of each unpadded sequence.
    if split:
        monkeypatch.setattr(exact_module, "_CHUNK_MIN", 64)
        monkeypatch.setattr(exact_module, "_MAX_CHUNKS", 8)
    n = 2 if split else 600
    lengths = [1300, 200, 701]
    Q, K, V = qkv(rng, (3, 2, n, 16), (3, 2, 1300, 16), dtype=dtype)
    keep = np.arange(1300)[None, :] < np.array(lengths)[:, None]
    mask = keep[:, None, None, :]
    if kind == "float":
        mask = np.where(mask, 0.0, -np.inf)
    assert split_taken(Q, K, V) == split
    Y, lse = softmax_attention(Q, K, V, mask=mask, return_lse=True)
    for b, length in enumerate(lengths):
        R, rl = reference_attention(Q[b], K[b, :, :length], V[b, :, :length], return_lse=True)
        assert_close(Y[b], R, dtype)
        assert_lse_close(lse[b], rl, dtype)


@pytest.mark.parametrize("split", [False, True], ids=["prefill", "split"])
def test_thread_count_determinism_masked_work_queue(rng, dtype, monkeypatch, split):
    # Many small tasks of unequal cost (hidden key chunks, causal blocks, a padded batch)
    # taken from the shared counter: bit-identical results for 1 and 2 threads, and
    # equal to the oracle.
    monkeypatch.setattr(exact_module, "_CHUNK_MIN", 64)
    monkeypatch.setattr(exact_module, "_MAX_CHUNKS", 16)
    monkeypatch.setattr(exact_module, "_SERIAL_WORK", 0)
    monkeypatch.setattr(exact_module, "_BQ", 32)
    n = 3 if split else 200
    Q, K, V = qkv(rng, (2, 6, n, 16), (2, 2, 900, 16), dtype=dtype)
    keep = np.arange(900)[None, :] < np.array([900, 333])[:, None]
    mask = keep[:, None, None, :]
    assert split_taken(Q, K, V) == split
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        Y1, l1 = softmax_attention(Q, K, V, mask=mask, causal=True, return_lse=True)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        Y2, l2 = softmax_attention(Q, K, V, mask=mask, causal=True, return_lse=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(Y1, Y2) and np.array_equal(l1, l2)
    R, rl = reference_attention(Q, K, V, mask=mask, causal=True, return_lse=True)
    assert_close(Y1, R, dtype)
    assert_lse_close(l1, rl, dtype)


# ------------------------------------------------------------- register-tile GEMMs


@pytest.mark.parametrize(
    ("n_rows", "kdim", "n_cols"),
    [(1, 1, 1), (6, 64, 4), (13, 7, 5), (37, 64, 9), (12, 0, 4), (5, 300, 2)],
    ids=["1x1x1", "one-tile", "remainders", "mixed", "kdim0", "rows-only-remainder"],
)
def test_gemm_tiles_against_numpy(rng, dtype, n_rows, kdim, n_cols):
    # n_cols counts vectors (16 float32 / 8 float64 columns); operands at offsets inside
    # larger flat buffers with leading dimensions larger than the tile.
    vl = 64 // np.dtype(dtype).itemsize
    cols = n_cols * vl
    lda, ldb, ldo = kdim + 3, cols + vl, cols + 2 * vl
    a = rng.standard_normal(5 + n_rows * lda).astype(dtype)
    b = rng.standard_normal(7 + max(kdim, 1) * ldb).astype(dtype)
    out = np.full(11 + n_rows * ldo, np.nan, dtype=dtype)
    _gemm_tiles(a, b, out, 5, 7, 11, n_rows, kdim, cols, lda, ldb, ldo, False)
    A = a[5 : 5 + n_rows * lda].reshape(n_rows, lda)[:, :kdim].astype(np.float64)
    B = b[7 : 7 + kdim * ldb].reshape(kdim, ldb)[:, :cols].astype(np.float64)
    got = out[11:].reshape(n_rows, ldo)
    ref = A @ B
    bound = 2 * max(kdim, 1) * np.finfo(dtype).eps * (np.abs(A) @ np.abs(B)) + 1e-300
    assert np.all(np.abs(got[:, :cols] - ref) <= bound)
    assert np.isnan(got[:, cols:]).all() and np.isnan(out[:11]).all()  # nothing else written


@pytest.mark.parametrize(("m", "d"), [(1, 1), (64, 64), (130, 24), (200, 128)])
def test_packed_keys_and_panel_product_against_numpy(rng, dtype, m, d):
    # K^T packed into panels (zero padding) and S = Q K^T computed from the panels.
    wide = _TILE_VECS * (64 // np.dtype(dtype).itemsize)
    mp = -(-m // 64) * 64
    K = rng.standard_normal((2, m, d)).astype(dtype)
    kt = np.full((2, mp * d), np.nan, dtype=dtype)
    _pack_kt(K, kt, 0, 2)
    ref_kt = np.zeros((2, mp, d), dtype=dtype)
    ref_kt[:, :m] = K
    panels = ref_kt.reshape(2, mp // wide, wide, d).transpose(0, 1, 3, 2).reshape(2, -1)
    assert np.array_equal(kt, panels)
    q = rng.standard_normal((7, d)).astype(dtype)
    s = np.full(7 * mp, np.nan, dtype=dtype)
    _gemm_tiles(q.reshape(-1), kt[1], s, 0, 0, 0, 7, d, mp, d, wide, mp, True)
    S = s.reshape(7, mp)
    ref = q.astype(np.float64) @ K[1].astype(np.float64).T
    bound = 2 * d * np.finfo(dtype).eps * (np.abs(q) @ np.abs(K[1]).T).astype(np.float64)
    assert np.all(np.abs(S[:, :m] - ref) <= bound + 1e-300)
    assert np.all(S[:, m:] == 0)


def _epilogue_exp(x, tile=None):
    """``exp(x)`` through the score tiles' epilogue: ``S = 1 * x`` (``kdim = 1``), ``m = 0``.

    ``tile``: a runner of one exp-epilogue variant (:func:`_tile_exp_runner`) to use
    instead of :func:`_qk_exp_tiles`.
    Returns the exponentials and the row sum the tiles accumulated.
    """
    vl = 64 // x.dtype.itemsize
    wide = _TILE_VECS * vl
    n = -(-x.size // wide) * wide
    b = np.zeros(n, dtype=x.dtype)
    b[: x.size] = x
    out = np.full(n, np.nan, dtype=x.dtype)
    args = (np.ones(1, x.dtype), b, out, np.zeros(1, x.dtype), np.zeros(vl, x.dtype))
    wlim = np.array([x.size], dtype=np.int64)
    if tile is None:
        _qk_exp_tiles(*args[:3], 0, 0, 1, 1, n, 1, n, args[3], args[4], wlim)
    else:
        tile(*args, wlim, n, wide)
    return out, args[4].sum(dtype=np.float64)


def _tile_exp_runner(tile):
    """A jitted loop of the 1 x 4 exp-epilogue intrinsic ``tile`` over a row (kdim = 1)."""

    @numba.njit
    def run(a, b, out, mref, sums, wlim, n, wide):
        for c0 in range(0, n, wide):
            tile(a, b, out, 0, c0, c0, 1, 1, wide, n, mref, 0, sums, wlim, c0)

    return run


_EPILOGUE_VARIANTS = {
    "module": None,
    "polynomial": _tile_exp_runner(_make_tile(1, _TILE_VECS, True, False)),
    "table": _tile_exp_runner(_make_tile(1, _TILE_VECS, True, True)),
}


@pytest.mark.skipif(not _HAS_AVX512, reason="the register tiles need AVX-512")
@pytest.mark.parametrize("variant", list(_EPILOGUE_VARIANTS))
@pytest.mark.parametrize(
    ("dt", "lo", "cut", "max_ulp"),
    [(np.float32, -90.0, -87.0, 1.0), (np.float64, -745.0, -708.0, 1.0)],
    ids=["float32", "float64"],
)
def test_epilogue_exp_against_longdouble(rng, variant, dt, lo, cut, max_ulp):
    """Exponential of the fused score epilogue: <= 1 ulp, 0 below the cut and beyond wlim.

    The float64 table variant (``2^(j/16)`` from registers, degree-6 polynomial)
    measured 0.77 ulp on 2e7 points, the polynomial one 0.94 (the contract is 2 ulp).
    Negative control: an exponential taken in float32 fails the float64 check.
    """
    x = np.concatenate(
        [
            np.linspace(lo, 0.0, 50_003),
            lo * rng.random(50_000),
            -np.log(2) / 32 * rng.random(20_000),
            [0.0, -0.0, cut, np.nextafter(cut, 0.0), np.nextafter(cut, -1.0), -np.inf],
        ]
    ).astype(dt)
    got, total = _epilogue_exp(x, _EPILOGUE_VARIANTS[variant])
    y = got[: x.size]
    ref = np.exp(x.astype(np.longdouble))
    normal = x >= cut
    ulp = np.abs(y[normal] - ref[normal]) / np.spacing(ref[normal].astype(dt))
    assert float(ulp.max()) <= max_ulp
    assert np.all(y[~normal] == 0)  # below the cut and -inf: exactly 0
    assert y[x == 0][0] == 1.0
    assert np.all(got[x.size :] == 0)  # columns at or beyond wlim
    np.testing.assert_allclose(total, y.astype(np.float64).sum(), rtol=1e-5)
    if dt == np.float64:
        # Negative control: a less accurate exponential fails the same check.
        weak = np.exp(x[normal].astype(np.float32)).astype(dt)
        bad = np.abs(weak - ref[normal]) / np.spacing(ref[normal].astype(dt))
        assert float(np.nanmax(bad)) > max_ulp


@pytest.fixture(params=[True, False], ids=["tiles", "blas"])
def gemm_path(request, monkeypatch):
    """Run the prefill kernel with the register-tile GEMMs and with BLAS."""
    monkeypatch.setattr(exact_module, "_USE_TILES", request.param)
    return request.param


@pytest.mark.parametrize(
    ("n", "m", "causal"),
    [(600, 600, True), (300, 1100, True), (700, 400, True), (257, 700, False)],
    ids=["square-causal", "more-keys", "more-queries", "full"],
)
def test_prefill_gemm_paths_match_reference(rng, dtype, gemm_path, n, m, causal):
    # d = dv = 64 (both products on tiles), several query blocks, diagonal strips.
    Q, K, V = qkv(rng, (2, n, 64), (2, m, 64), dtype=dtype)
    mask = rng.random((n, m)) > 0.1
    for kw in ({}, {"mask": mask}):
        Y, lse = softmax_attention(Q, K, V, causal=causal, return_lse=True, **kw)
        R, rl = reference_attention(Q, K, V, causal=causal, return_lse=True, **kw)
        assert_close(Y, R, dtype)
        assert_lse_close(lse, rl, dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("jump", [4.0, 60.0, 200.0])
def test_prefill_fused_rows_formed_again(rng, dtype, gemm_path, causal, jump):
    """Later key blocks far above the running maximum (the fused epilogue's redo path).

    Some keys of the third and fourth 512-key blocks give scores ``jump`` above every
    earlier one (``jump = 4``: weights up to e^4 but a sum below the block width, kept;
    60 / 200: formed again unfused, 200 would overflow float32 weights).
    """
    n, m, d = 300, 1900, 64
    Q, K, V = qkv(rng, (2, n, d), (2, m, d), dtype=dtype)
    Q[:, :, 0] = 1.0
    K[:, :, 0] = 0.0
    for j in (1100, 1600, 1601):
        K[:, j, 0] = jump * np.sqrt(d)  # score + jump for every query row
    bigger = np.array([1.0, 1e-3, 1e3], dtype=dtype)  # values of very different size
    V[:, 1100:1103] *= bigger[:, None]
    Y, lse = softmax_attention(Q, K, V, causal=causal, return_lse=True)
    R, rl = reference_attention(Q, K, V, causal=causal, return_lse=True)
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(lse))
    # Scores of size ~jump carry a rounding of ~jump u (both paths, float32).
    factor = max(1.0, jump / 16) if dtype == np.float32 else 1.0
    assert_close(Y, R, dtype, factor=factor)
    assert_lse_close(lse, rl, dtype, factor=factor)


def test_prefill_gemm_paths_rows_any_order(rng, dtype, gemm_path):
    # Rows in any order (certificates): the diagonal strips use each strip's own limit.
    Q, K, V = qkv(rng, (1, 700, 32), (1, 700, 32), dtype=dtype)
    problem = prepare(Q, K, V, causal=True)
    rows = rng.permutation(700)[: 3 * _DIAG_ROWS + 5]
    out_r, lse_r = _attend(problem, rows=rows)
    R, rl = reference_attention(Q, K, V, causal=True, return_lse=True)
    assert_close(out_r, R[:, rows], dtype)
    assert_lse_close(lse_r, rl[:, rows], dtype)


@pytest.mark.parametrize("heads", [(9, 3), (8, 2), (5, 1), (14, 2)], ids=["R3", "R4", "R5", "R7"])
def test_split_keys_gemm_paths_match_reference(rng, dtype, gemm_path, small_chunks, heads):
    # Decode with R stacked rows per key/value head: P V on 3-, 2- and 1-row tiles.
    hq, hk = heads
    Q, K, V = qkv(rng, (hq, 1, 64), (hk, 900, 64), dtype=dtype)
    assert split_taken(Q, K, V)
    Y, lse = softmax_attention(Q, K, V, return_lse=True)
    R, rl = reference_attention(Q, K, V, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)


def test_prefill_tiles_thread_count_determinism(rng, dtype, monkeypatch):
    monkeypatch.setattr(exact_module, "_USE_TILES", True)
    monkeypatch.setattr(exact_module, "_SERIAL_WORK", 0)
    Q, K, V = qkv(rng, (6, 600, 64), (2, 600, 64), dtype=dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        Y1, l1 = softmax_attention(Q, K, V, causal=True, return_lse=True)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        Y2, l2 = softmax_attention(Q, K, V, causal=True, return_lse=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(Y1, Y2) and np.array_equal(l1, l2)


# ----------------------------------------------------------- key spans of the mask


@pytest.mark.parametrize(
    "row",
    [
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 1, 0, 1, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    ids=["right-pad", "left-pad", "holes", "hidden", "full", "single"],
)
@pytest.mark.parametrize("kind", ["bool", "float", "float-bias"])
def test_mask_row_limits_against_numpy(row, kind):
    keep = np.array(row, dtype=bool)
    m = keep.size
    if kind == "bool":
        mask_b = np.broadcast_to(keep[None, None, None], (2, 1, 1, m))
        mask_f = np.zeros((2, 1, 1, 1))
        mode = 1
    else:
        vals = np.where(keep, 0.5 if kind == "float-bias" else 0.0, -np.inf)
        mask_f = np.broadcast_to(vals[None, None, None], (2, 1, 1, m))
        mask_b = np.ones((2, 1, 1, 1), dtype=bool)
        mode = 2
    lo, hi, interval = _mask_row_limits(mask_b, mask_f, mode, 0, 0)
    vis = np.flatnonzero(keep)
    if vis.size == 0:
        assert (lo, hi, interval) == (m, 0, 1)
        return
    assert (lo, hi) == (vis[0], vis[-1] + 1)
    expect = vis.size == hi - lo and kind != "float-bias"
    assert interval == int(expect)


@pytest.mark.parametrize("kind", ["bool", "float", "float-bias"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_key_padding_left_and_right(rng, dtype, gemm_path, kind, causal):
    # Left- and right-padded sequences (key spans not aligned to the key blocks), causal
    # or not, masks that are and are not plain spans: equal to the oracle.
    n = m = 1300
    spans = [(0, 1300), (700, 1300), (0, 530), (100, 1250)]
    Q, K, V = qkv(rng, (4, 2, n, 64), (4, 2, m, 64), dtype=dtype)
    j = np.arange(m)
    keep = np.stack([(j >= a) & (j < b) for a, b in spans])[:, None, None, :]
    mask = keep
    if kind != "bool":
        bias = 0.25 * rng.standard_normal(m) if kind == "float-bias" else 0.0
        mask = np.where(keep, bias, -np.inf)
    Y, lse = softmax_attention(Q, K, V, mask=mask, causal=causal, return_lse=True)
    R, rl = reference_attention(Q, K, V, mask=mask, causal=causal, return_lse=True)
    assert_close(Y, R, dtype)
    assert_lse_close(lse, rl, dtype)
