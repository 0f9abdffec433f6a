"""The method registry and approximate(): dispatch, parameter checks, result wrapping."""

import numpy as np
import pytest

from attention import AttentionApprox, Cost, ErrorBound, approximate, methods
from attention import _registry as reg
from attention.exact import reference_attention


@pytest.fixture
def toy_method(monkeypatch):
    """Register a throw-away method (uniform attention) without leaking it."""
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    calls = []

    @reg.register(
        "toy_uniform",
        section="§0",
        family="test",
        causal=False,
        bound="estimate",
        summary="mean of V",
    )
    def _toy(problem, *, rng, weight=1.0):
        calls.append((rng, weight))
        out = np.stack(
            [weight * problem.slice(g)[2].mean(axis=0) for g in range(problem.n_slices)]
        )[:, None, :].repeat(problem.n, axis=1)
        bound = ErrorBound(0.0, "fro", "estimate", float("nan"), "none")
        return reg.MethodResult(out, None, bound, Cost(1.0, 0))

    return calls


def test_methods_lists_exact_with_metadata():
    infos = {m.name: m for m in methods()}
    exact = infos["exact"]
    assert exact.causal and exact.masks and exact.bound is None and exact.defaults == {}
    assert all(m.section.startswith("§") for m in infos.values())


def test_approximate_exact_matches_reference(rng, dtype):
    Q, K, V = (rng.standard_normal((2, 3, 16, 8)).astype(dtype) for _ in range(3))
    res = approximate(Q, K, V, "exact", causal=True)
    assert isinstance(res, AttentionApprox) and res.output.dtype == dtype
    assert res.output.shape == (2, 3, 16, 8) and res.lse.shape == (2, 3, 16)
    ref = reference_attention(Q, K, V, causal=True)
    np.testing.assert_allclose(res.output, ref, rtol=0, atol=50 * np.finfo(dtype).eps)
    assert res.cost.kernel_evals == 6 * 16 * 17 // 2
    assert res.method == "exact" and res.params == {}


def test_approximate_wraps_and_fills_defaults(toy_method, rng):
    Q, K, V = (rng.standard_normal((4, 10, 3)) for _ in range(3))
    res = approximate(Q, K, V, "toy_uniform", rng=7)
    assert res.params == {"weight": 1.0} and res.lse is None
    np.testing.assert_allclose(res.output[2, 5], V[2].mean(axis=0))
    res = approximate(Q, K, V, "toy_uniform", weight=2.0)
    assert res.params == {"weight": 2.0}
    assert isinstance(toy_method[0][0], np.random.Generator)


def test_same_seed_same_generator_stream(toy_method, rng):
    Q, K, V = (rng.standard_normal((5, 3)) for _ in range(3))
    approximate(Q, K, V, "toy_uniform", rng=3)
    approximate(Q, K, V, "toy_uniform", rng=3)
    (g1, _), (g2, _) = toy_method
    assert g1.random() == g2.random()


def test_unknown_method_lists_names(rng):
    Q = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match=r"unknown method 'nope'; registered methods: .*exact"):
        approximate(Q, Q, Q, "nope")


def test_unknown_parameter_lists_valid_ones(toy_method, rng):
    Q = rng.standard_normal((4, 2))
    with pytest.raises(
        ValueError,
        match=r"unknown parameter\(s\) 'wieght'.*valid parameters: "
        "weight",
    ):
        approximate(Q, Q, Q, "toy_uniform", wieght=2.0)
    with pytest.raises(ValueError, match=r"valid parameters: [(]none[)]"):
        approximate(Q, Q, Q, "exact", rank=3)


def test_causal_and_mask_rejected_where_unsupported(toy_method, rng):
    Q = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match=r"does not support causal=True.*exact"):
        approximate(Q, Q, Q, "toy_uniform", causal=True)
    with pytest.raises(ValueError, match="does not support masks"):
        approximate(Q, Q, Q, "toy_uniform", mask=np.ones((4, 4), dtype=bool))


def test_register_validates_signature(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    with pytest.raises(TypeError, match="keyword-only with a default"):

        @reg.register("bad", section="§0", family="t", causal=False, bound=None, summary="")
        def _bad(problem, rank, *, rng):
            return None

    with pytest.raises(ValueError, match="already registered"):
        reg.register("exact", section="§0", family="t", causal=False, bound=None, summary="")(
            lambda problem, *, rng: None
        )
    with pytest.raises(ValueError, match="bound='sure' must be None or one of"):
        reg.register("x", section="§0", family="t", causal=False, bound="sure", summary="")


def test_every_noncausal_method_says_why():
    from attention import methods

    for info in methods():
        if info.causal:
            assert info.noncausal_reason == ""
        else:
            # Which paper (a year in parentheses or an "et al.") and what would leak.
            assert len(info.noncausal_reason) > 60, info.name
            assert any(w in info.noncausal_reason for w in ("future", "mask")), info.name


def test_refusal_states_the_reason():
    Q = np.ones((8, 4))
    with pytest.raises(ValueError, match="Linformer"):
        approximate(Q, Q, Q, "linformer", causal=True)
