"""Input validation, broadcasting/GQA flattening, result types and relative_error."""

import numpy as np
import pytest

from attention._core import finish, finish_lse, prepare, relative_error


def qkv(rng, qshape, kshape, dv=5, dtype=np.float64):
    Q = rng.standard_normal(qshape).astype(dtype)
    K = rng.standard_normal(kshape).astype(dtype)
    V = rng.standard_normal((*kshape[:-1], dv)).astype(dtype)
    return Q, K, V


def test_prepare_plain_2d(rng, dtype):
    Q, K, V = qkv(rng, (6, 4), (9, 4), dtype=dtype)
    p = prepare(Q, K, V)
    assert p.q.shape == (1, 6, 4) and p.k.shape == (1, 9, 4) and p.v.shape == (1, 9, 5)
    assert p.lead == () and p.dtype == dtype and p.scale == pytest.approx(0.5)
    assert (p.n, p.m, p.d, p.dv, p.n_slices, p.offset) == (6, 9, 4, 5, 1, 3)
    np.testing.assert_array_equal(p.q[0], Q)
    assert p.mask is None and p.keep(0) is None and p.bias(0) is None


def test_prepare_gqa_repeat_interleave(rng):
    """Query head h uses key/value head h // (hq // hk) (PyTorch enable_gqa convention)."""
    Q, K, V = qkv(rng, (2, 6, 3, 4), (2, 2, 5, 4))
    p = prepare(Q, K, V)
    assert p.lead == (2, 6)
    for b in range(2):
        for h in range(6):
            g = b * 6 + h
            q, k, v = p.slice(g)
            np.testing.assert_array_equal(q, Q[b, h])
            np.testing.assert_array_equal(k, K[b, h // 3])
            np.testing.assert_array_equal(v, V[b, h // 3])


def test_prepare_broadcasts_leading_dims_without_copying_kv(rng):
    Q, K, V = qkv(rng, (3, 4, 6, 2), (4, 7, 2))
    p = prepare(Q, K, V)
    assert p.lead == (3, 4) and p.k.shape == (4, 7, 2)
    np.testing.assert_array_equal(p.kv_index, np.tile(np.arange(4), 3))
    out = finish(p, np.zeros((12, 6, 5)))
    assert out.shape == (3, 4, 6, 5)
    assert finish_lse(p, np.zeros((12, 6))).shape == (3, 4, 6)
    assert finish_lse(p, None) is None


def test_prepare_single_query_head_broadcasts_over_kv_heads(rng):
    Q, K, V = qkv(rng, (2, 1, 4, 3), (1, 3, 5, 3))
    p = prepare(Q, K, V)
    assert p.lead == (2, 3)
    np.testing.assert_array_equal(p.kv_index, [0, 1, 2, 0, 1, 2])


def test_prepare_single_kv_head_broadcasts(rng):
    Q, K, V = qkv(rng, (5, 3, 2), (1, 4, 2))
    p = prepare(Q, K, V)
    np.testing.assert_array_equal(p.kv_index, np.zeros(5, dtype=np.int64))


def test_causal_is_bottom_right_aligned(rng):
    Q, K, V = qkv(rng, (3, 2), (5, 2))
    keep = prepare(Q, K, V, causal=True).keep(0)
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(keep, expected)
    # More queries than keys: the first n - m queries see nothing.
    Q, K, V = qkv(rng, (4, 2), (2, 2))
    keep = prepare(Q, K, V, causal=True).keep(0)
    np.testing.assert_array_equal(keep.sum(axis=1), [0, 0, 1, 2])


def test_masks_bool_and_additive_are_views(rng):
    Q, K, V = qkv(rng, (2, 3, 4, 2), (2, 3, 6, 2))
    pad = np.ones(6, dtype=bool)
    pad[-2:] = False
    p = prepare(Q, K, V, mask=pad, causal=True)
    assert p.mask.shape == (1, 4, 6) and p.mask.strides[1] == 0  # broadcast, not copied
    keep = p.keep(5)
    assert not keep[:, -2:].any() and keep[-1, :4].all()
    bias = np.zeros((3, 1, 6))
    bias[1, 0, 0] = -np.inf
    p = prepare(Q, K, V, mask=bias)
    np.testing.assert_array_equal(p.mask_index, [0, 1, 2, 0, 1, 2])
    assert not p.keep(1)[:, 0].any() and p.keep(0).all()
    assert p.bias(1).shape == (4, 6) and p.bias(1).dtype == np.float64


def test_float32_inputs_stay_float32(rng):
    Q, K, V = qkv(rng, (4, 3), (4, 3), dtype=np.float32)
    assert prepare(Q, K, V).q.dtype == np.float32
    assert prepare(Q, K.astype(np.float64), V).dtype == np.float64
    ints = np.arange(12).reshape(4, 3)
    assert prepare(ints, ints, ints).dtype == np.float64


def test_prepare_does_not_mutate_and_freezes(rng):
    Q, K, V = qkv(rng, (4, 3), (5, 3))
    copies = [X.copy() for X in (Q, K, V)]
    p = prepare(Q, K, V)
    for X, C in zip((Q, K, V), copies, strict=True):
        np.testing.assert_array_equal(X, C)
    with pytest.raises(ValueError, match="read-only"):
        p.q[0, 0, 0] = 1.0


@pytest.mark.parametrize(
    ("qshape", "kshape", "vshape", "match"),
    [
        ((4, 3), (5, 2), (5, 2), "same last dimension d"),
        ((4, 3), (5, 3), (6, 2), "same number of keys m"),
        ((2, 3, 4, 3), (3, 3, 5, 3), (3, 3, 5, 3), "do not broadcast"),
        ((2, 6, 4, 3), (2, 4, 5, 3), (2, 4, 5, 3), "multiple of the number of key/value heads"),
        ((2, 4, 3), (2, 5, 3), (1, 5, 3), "same leading shape"),
        ((3,), (5, 3), (5, 3), r"shape \(\.\.\., rows, features\)"),
    ],
    ids=["d", "m", "batch", "gqa", "kv-lead", "1d"],
)
def test_prepare_rejects_bad_shapes(qshape, kshape, vshape, match):
    with pytest.raises(ValueError, match=match):
        prepare(np.ones(qshape), np.ones(kshape), np.ones(vshape))


def test_prepare_rejects_nan_complex_and_bad_options(rng):
    Q, K, V = qkv(rng, (4, 3), (5, 3))
    bad = K.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="K must contain only finite values"):
        prepare(Q, bad, V)
    with pytest.raises(TypeError, match="complex"):
        prepare(Q.astype(complex), K, V)
    with pytest.raises(TypeError, match="causal must be a bool"):
        prepare(Q, K, V, causal="yes")
    with pytest.raises(ValueError, match=r"scale=-1\.0 must be > 0 for approximate attention"):
        prepare(Q, K, V, scale=-1.0)
    with pytest.raises(TypeError, match="scale must be a real number"):
        prepare(Q, K, V, scale="big")
    with pytest.raises(ValueError, match="does not broadcast to the score shape"):
        prepare(Q, K, V, mask=np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="would enlarge"):
        prepare(Q, K, V, mask=np.ones((2, 4, 5), dtype=bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        prepare(Q, K, V, mask=np.ones((4, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="may contain -inf but not NaN"):
        prepare(Q, K, V, mask=np.full((4, 5), np.nan))


def test_relative_error_norms(rng):
    Y = rng.standard_normal((2, 6, 3))
    E = 1e-3 * rng.standard_normal(Y.shape)
    fro = np.linalg.norm(E) / np.linalg.norm(Y)
    assert relative_error(Y + E, Y) == pytest.approx(fro, rel=1e-12)
    spec = max(np.linalg.norm(e, 2) for e in E) / max(np.linalg.norm(y, 2) for y in Y)
    assert relative_error(Y + E, Y, norm=2) == pytest.approx(spec, rel=1e-12)
    row = np.linalg.norm(E, axis=-1).max() / np.linalg.norm(Y, axis=-1).max()
    assert relative_error(Y + E, Y, norm="row_max") == pytest.approx(row, rel=1e-12)
    assert relative_error(Y, Y) == 0.0
    assert relative_error(np.ones((2, 2)), np.zeros((2, 2))) == np.inf


def test_relative_error_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="norm='nuc' is not one of"):
        relative_error(np.ones((2, 3)), np.ones((2, 3)), norm="nuc")


# --- shared method plumbing: result builder, rounding rule ------------------------------


def test_method_result_stacks_and_casts(rng):
    from attention._core import Cost, method_result

    Q = rng.standard_normal((2, 3, 4)).astype(np.float32)
    p = prepare(Q, Q, Q)
    outs = [rng.standard_normal((3, 4)) for _ in range(2)]
    res = method_result(p, outs, [np.zeros(3), np.ones(3)], None, Cost(1, 2.0))
    assert res.output.shape == (2, 3, 4) and res.output.dtype == np.float32
    assert res.lse.dtype == np.float64 and res.cost == Cost(1.0, 2)
    assert method_result(p, np.stack(outs), None, None, Cost(0, 0)).lse is None
    # optional fields survive (they were dropped when the Cost was rebuilt)
    frac = np.array([0.5, 1.0])
    kept = method_result(p, outs, None, None, Cost(3, 4, key_fraction=frac, bytes_read=8.0))
    assert kept.cost.key_fraction is frac and kept.cost.bytes_read == 8.0


def _rounding_case(dtype, seed=0):
    """A slice whose float64 output, cast to ``dtype``, differs from the exact output."""
    r = np.random.default_rng(seed)
    Q, K = r.standard_normal((16, 8)), r.standard_normal((32, 8))
    V = r.standard_normal((32, 4)) * 1e3 + 5e3  # far from 0: cast errors are visible
    p = prepare(Q.astype(dtype), K.astype(dtype), V.astype(dtype))
    from attention.exact import reference_attention

    q, k, v = (x.astype(np.float64) for x in p.slice(0))
    y64 = reference_attention(q, k, v, scale=p.scale)
    return p, y64, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rounding_allowance_covers_the_cast(dtype):
    """The allowance alone covers the cast of an exact float64 output (a zero bound)."""
    from attention._core import finish_row_bounds, rounding_allowance

    p, y64, v = _rounding_case(dtype)
    cast = y64.astype(dtype).astype(np.float64)
    err = np.linalg.norm(cast - y64, axis=1)
    allow = rounding_allowance(p, y64, v)
    assert np.all(err <= allow)
    np.testing.assert_array_equal(finish_row_bounds(p, np.zeros(16), y64, v), allow)
    # Negative control: without the allowance a zero bound fails in float32.
    if dtype == np.float32:
        assert np.any(err > 0)
    # At rounding level: a small multiple of (d + m) u of the output norm (worst case).
    level = 1e-4 if dtype == np.float32 else 1e-12
    assert np.all(allow <= level * np.linalg.norm(y64, axis=1))


def test_finish_row_bounds_caps_by_the_value_ball():
    from attention._core import center_radius, finish_row_bounds

    p, y64, v = _rounding_case(np.float64)
    c, R = center_radius(v)
    y_bad = y64 + 10.0  # any output: the cap still holds for the exact rows
    rows = finish_row_bounds(p, np.full(16, np.inf), y_bad, v)
    assert np.all(np.isfinite(rows))
    assert np.all(np.linalg.norm(y_bad - y64, axis=1) <= rows)
    np.testing.assert_allclose(rows, finish_row_bounds(p, np.full(16, np.nan), y_bad, v))
    assert np.all(rows >= R + np.linalg.norm(y_bad - c, axis=1))


def test_project_to_value_ball_never_increases_the_error():
    from attention._core import center_radius, project_to_value_ball
    from attention.exact import reference_attention

    p, y64, v = _rounding_case(np.float64)
    c, R = center_radius(v)
    y_bad = y64 + np.array([1e6, 0.0, 0.0, 0.0])  # far outside the ball
    y_proj = project_to_value_ball(p, y_bad, v)
    assert np.all(np.linalg.norm(y_proj - c, axis=1) <= R * (1 + 1e-12))
    assert np.all(np.linalg.norm(y_proj - y64, axis=1) <= np.linalg.norm(y_bad - y64, axis=1))
    np.testing.assert_array_equal(project_to_value_ball(p, y64, v), y64)  # inside: unchanged
    # Rows that may see no key (exact output 0) are left alone.
    Q = np.ones((4, 2))
    pc = prepare(Q, Q[:2], Q[:2], causal=True)
    assert reference_attention(Q, Q[:2], Q[:2], causal=True)[0].sum() == 0
    np.testing.assert_array_equal(project_to_value_ball(pc, 5 + Q, Q[:2]), 5 + Q)


# --- the worst-case rounding allowance of attention rows ----------------------------------


def _allowance_reference(dtype, d, m, dv, chain, sigma, vmax, ynorm):
    """Plain-NumPy statement of :func:`attention._core.attention_rounding`."""
    u = float(np.finfo(dtype).eps) / 2
    u64 = 2.0**-53
    steps = 2 * -(-m // 64) + 4

    def gamma(k, uu):
        return k * uu / (1 - k * uu)

    tiny32 = dtype == np.float32
    phi, eta = (np.exp(-86.0), 2.0**-150) if tiny32 else (np.exp(-707.0), 2.0**-1075)
    theta = gamma(d + 5, u) * sigma + gamma(2 * steps + 2, u64) * (sigma + 1) + (d + 1) * eta
    rho = np.expm1(theta) * (1 + 8 * u) + 8 * u
    a = rho / (1 - rho)
    mu = (1 + gamma(chain, u)) * (1 + gamma(2 * steps + 1, u64)) - 1
    b = mu / (1 - mu)
    om = (1 + u) * (1 + gamma(3, u64)) - 1
    w = om / (1 - om)
    t = 4 * m * phi * vmax + 2 * m * eta * np.sqrt(dv)
    e = np.minimum(
        (2 * a + 2 * b) * vmax + w * ynorm + t,
        ((a + b) * vmax + (a + b + w) * ynorm + t) / (1 - a - b),
    )
    return np.minimum(e, vmax + ynorm) * (1 + 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_rounding_matches_reference(dtype, rng):
    from attention._core import attention_rounding

    sigma = np.abs(rng.standard_normal(50)) * 10.0 ** rng.integers(-3, 4, 50)
    vmax = np.abs(rng.standard_normal(50)) + 0.1
    ynorm = vmax * rng.uniform(0, 1, 50)
    got = attention_rounding(
        dtype, d=64, m=4096, dv=64, chain=512, sigma=sigma, vmax=vmax, ynorm=ynorm
    )
    ref = _allowance_reference(dtype, 64, 4096, 64, 512, sigma, vmax, ynorm)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # longer chains, larger scores: never smaller
    longer = attention_rounding(
        dtype, d=64, m=4096, dv=64, chain=2048, sigma=sigma * 2, vmax=vmax, ynorm=ynorm
    )
    assert np.all(longer >= got)


def test_attention_rounding_is_finite_for_finite_input():
    """Scores too large for any relative statement: the trivial ||y|| + ||y~|| cap."""
    from attention._core import attention_rounding

    sigma = np.array([0.0, 1e3, 1e8, 1e30, 3e38])
    vmax, ynorm = np.full(5, 2.0), np.full(5, 1.5)
    for dtype in (np.float32, np.float64):
        got = attention_rounding(
            dtype, d=64, m=10**6, dv=64, chain=2048, sigma=sigma, vmax=vmax, ynorm=ynorm
        )
        assert np.all(np.isfinite(got)) and np.all(got <= (vmax + ynorm) * (1 + 1e-11))
        assert np.all(np.diff(got) >= 0)  # monotone in the score bound
    # a zero row (nothing to round) still gets a tiny positive allowance
    z = attention_rounding(
        np.float32, d=8, m=8, dv=16, chain=8, sigma=[0.0], vmax=[0.0], ynorm=[0.0]
    )
    assert 0.0 <= z[0] < 1e-40


@pytest.mark.parametrize("masked", [False, True])
def test_score_bounds_match_float64_reference(rng, dtype, masked):
    # scale max_g ||q_gi|| max_j ||k_j|| (+ the largest finite additive mask entry),
    # norms rounded up: bit-identical to float64 copies of every slice, inputs unchanged.
    from attention._core import _EPS64, _score_bounds

    Q = (rng.standard_normal((2, 3, 50, 8)) * rng.uniform(0.1, 10, (2, 3, 50, 1))).astype(dtype)
    K = rng.standard_normal((2, 1, 70, 8)).astype(dtype)
    V = rng.standard_normal((2, 1, 70, 4)).astype(dtype)
    mask = None
    if masked:
        mask = rng.standard_normal((50, 70)).astype(dtype)
        mask[3, 4] = -np.inf
    copies = [x.copy() for x in (Q, K)]
    p = prepare(Q, K, V, mask=mask)
    up = 1.0 + 2.0 * (8 + 2) * _EPS64
    q64 = p.q.astype(np.float64)
    qn = np.max(np.einsum("gij,gij->gi", q64, q64), axis=0)
    kn = max(float(np.einsum("ij,ij->i", k, k).max()) for k in p.k.astype(np.float64))
    bias = float(np.abs(mask[np.isfinite(mask)]).max()) * (1.0 + _EPS64) if masked else 0.0
    ref = abs(p.scale) * np.sqrt(qn * up) * np.sqrt(kn * up) + bias
    np.testing.assert_array_equal(_score_bounds(p), ref)
    for x, c in zip((Q, K), copies, strict=True):
        np.testing.assert_array_equal(x, c)
