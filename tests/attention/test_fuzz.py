"""Fuzz every registered attention method (hypothesis; enumerated from ``methods()``).

Inputs: small shapes (with heads and grouped-query attention), float32 and float64,
logits up to 1e4 in magnitude, entries of 1e-30 and 1e30 in float32, causal and
``n != m``. Properties, for every method with its default parameters:

* only documented exceptions (``ValueError``/``TypeError`` with a message) and, on
  valid finite inputs with default parameters, none except the listed requirements;
* no NaN/inf in the output (and no NaN in ``lse`` or the bound) from finite input;
* the output dtype is the input dtype, the inputs are not modified;
* a deterministic bound is never violated (exact attention in float64 as the oracle);
* NaN input raises ``ValueError``, complex input ``TypeError``.

Probabilistic bounds are checked by counting failures over independent draws and a
one-sided binomial test against their ``delta`` (:func:`test_probabilistic_bounds`).
New methods are fuzzed as soon as they are registered.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from attention import approximate, methods, reference_attention

METHODS = {m.name: m for m in methods()}
NAMES = sorted(METHODS)

# Inputs a method may legitimately refuse with its default parameters: method name ->
# (condition on the problem, a fragment of the error message).
REQUIREMENTS = {
    "loki": (lambda p: p["causal"], "calibration"),
}

# Parameters a method requires (it has no default for them).
REQUIRED = {
    "adaptive": {"tol": 1e-2},
}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (|Q| entry size, |K| entry size): float32 extremes whose product stays representable.
MAGNITUDES = [(1.0, 1.0), (1e-30, 1e-30), (1e30, 1e-30), (1e15, 1e15), (1e-15, 1.0)]
LOGITS = [None, 1.0, 30.0, 300.0, 1e4]  # max |scale q.k| (None: default scale)


@st.composite
def problems(draw, causal_ok: bool):
    """Random attention inputs with a target logit range; returns a dict."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, m = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    d, dv = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    heads = draw(st.sampled_from([(), (2,), (1, 2)]))
    kv_heads = heads if not heads or draw(st.booleans()) else (*heads[:-1], 1)
    qmag, kmag = draw(st.sampled_from(MAGNITUDES))
    vmag = draw(st.sampled_from([1.0, 1e-30, 1e30]))
    logit = draw(st.sampled_from(LOGITS))
    causal = causal_ok and draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    r = np.random.default_rng(seed)
    Q = (r.standard_normal((*heads, n, d)) * qmag).astype(dtype)
    K = (r.standard_normal((*kv_heads, m, d)) * kmag).astype(dtype)
    V = (r.standard_normal((*kv_heads, m, dv)) * vmag).astype(dtype)
    scale = None
    if logit is not None:
        top = float(np.max(np.abs(Q.astype(np.float64) @ np.swapaxes(K, -1, -2))))
        scale = logit / top if top > 0 else None
    return {"Q": Q, "K": K, "V": V, "scale": scale, "causal": causal, "seed": seed}


def _run(name: str, p: dict):
    """approximate() with warnings silenced; returns the result or the exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return approximate(
                p["Q"],
                p["K"],
                p["V"],
                name,
                rng=p["seed"],
                causal=p["causal"],
                scale=p["scale"],
                **REQUIRED.get(name, {}),
                **p.get("extra", {}),
            )
        except (ValueError, TypeError) as exc:
            return exc


def _norm(E: np.ndarray, norm: str) -> float:
    if norm == "fro":
        return float(np.linalg.norm(E.ravel()))
    if norm == "row_max":
        return float(np.sqrt(np.max(np.sum(E * E, axis=-1)))) if E.size else 0.0
    flat = E.reshape((-1, *E.shape[-2:]))
    return float(max(np.linalg.norm(s, 2) for s in flat))


def _oracle(p: dict) -> np.ndarray:
    """Exact attention in float64 on the inputs as the method saw them."""
    return reference_attention(
        p["Q"].astype(np.float64),
        p["K"].astype(np.float64),
        p["V"].astype(np.float64),
        scale=p["scale"],
        causal=p["causal"],
    )


def check_result(name: str, p: dict) -> None:
    """Run ``name`` on ``p`` and assert every fuzz property."""
    copies = {k: p[k].copy() for k in ("Q", "K", "V")}
    res = _run(name, p)
    for k, arr in copies.items():
        assert np.array_equal(p[k], arr), f"{name} modified its input {k}"
    if isinstance(res, Exception):
        assert str(res), f"{name} raised {type(res).__name__} without a message"
        need = REQUIREMENTS.get(name)
        allowed = need is not None and need[0](p) and need[1] in str(res)
        assert allowed, f"{name} refused valid input with default parameters: {res!r}"
        return
    out = res.output
    assert out.dtype == p["Q"].dtype, f"{name}: output dtype {out.dtype} != {p['Q'].dtype}"
    assert np.isfinite(out).all(), f"{name}: non-finite output from finite input"
    if res.lse is not None:
        assert not np.isnan(res.lse).any(), f"{name}: NaN in lse"
    b = res.bound
    if b is None:
        return
    assert not math.isnan(b.value) and b.value >= 0, f"{name}: bound value {b.value}"
    if b.kind != "deterministic":
        return
    Y = _oracle(p)
    actual = _norm(out.astype(np.float64) - Y, b.norm)
    vmax = float(np.max(np.abs(p["V"]))) if p["V"].size else 0.0
    atol = 1e-12 * vmax * math.sqrt(Y.size)
    assert actual <= b.value * (1 + 1e-9) + atol, (
        f"{name}: deterministic bound violated: error {actual:.6g} > bound {b.value:.6g}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_method(name):
    """Every property above on random inputs with the method's defaults."""

    @FUZZ
    @given(problems(causal_ok=METHODS[name].causal))
    def run(p):
        check_result(name, p)

    run()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", ["nan", "inf", "complex"])
def test_bad_values_rejected(name, bad, rng):
    Q, K, V = (rng.standard_normal((6, 3)) for _ in range(3))
    Kbad = K.copy()
    if bad == "complex":
        Kbad = Kbad + 1j
        expected = TypeError
    else:
        Kbad[2, 1] = np.nan if bad == "nan" else np.inf
        expected = ValueError
    with pytest.raises(expected, match=r"\w"):
        approximate(Q, Kbad, V, name, rng=0, **REQUIRED.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_empty_queries(name, rng):
    """n = 0 queries: an empty output of the right shape and dtype, or a ValueError."""
    Q = np.zeros((0, 3), np.float32)
    K, V = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = approximate(Q, K, V, name, rng=0, **REQUIRED.get(name, {}))
    except ValueError as exc:
        assert str(exc)
        return
    assert res.output.shape == (0, 3) and res.output.dtype == np.float32


# ---------------------------------------------------------------------------------------
# probabilistic bounds: failure counts against delta (one-sided binomial test)
# ---------------------------------------------------------------------------------------

PROBABILISTIC = [m.name for m in METHODS.values() if m.bound == "probabilistic"]
DRAWS = 40
LEVEL = 1e-3


def _head(seed: int, logit: float, causal: bool):
    r = np.random.default_rng(seed)
    n, d = 48, 8
    Q, K, V = (r.standard_normal((n, d)) for _ in range(3))
    K[:8] += 2.0 * Q[:8]  # a few strong matches, as in real heads
    s = logit / float(np.max(np.abs(Q @ K.T)))
    return {"Q": Q, "K": K, "V": V, "scale": s, "causal": causal}


@pytest.mark.parametrize("name", PROBABILISTIC)
@pytest.mark.parametrize("logit", [3.0, 30.0])
def test_probabilistic_bounds(name, logit):
    """Failures over independent draws are not significantly above ``delta``."""
    p = _head(7, logit, causal=False)
    if "error_bound" in METHODS[name].defaults and METHODS[name].defaults["error_bound"] is None:
        p["extra"] = {"error_bound": True}  # a bound only on request (e.g. hyperattention)
    Y = _oracle(p)
    fails, deltas, ran = 0, [], 0
    for r in range(DRAWS):
        res = _run(name, {**p, "seed": 1000 + r})
        if isinstance(res, Exception) or res.bound is None:
            continue
        b = res.bound
        if b.kind != "probabilistic":
            continue
        ran += 1
        deltas.append(b.delta)
        fails += _norm(res.output - Y, b.norm) > b.value * (1 + 1e-9)
    if not ran:
        pytest.skip(f"{name} returned no probabilistic bound on this input")
    delta = max(deltas)
    p_value = float(stats.binom.sf(fails - 1, ran, delta)) if fails else 1.0
    assert p_value >= LEVEL, f"{name}: {fails}/{ran} failures at delta={delta} (p={p_value:.2g})"
