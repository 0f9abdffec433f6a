"""Baseline registered methods: exact attention (the reference every method is timed against)."""

from __future__ import annotations

from attention._registry import MethodResult, problem_cost_exact, register
from attention.exact import _attend


@register(
    "exact",
    section="§2.1",
    family="exact",
    causal=True,
    masks=True,
    bound=None,
    summary="Exact blocked online-softmax attention (the reference; no approximation).",
)
def _exact(problem, *, rng):
    out, lse = _attend(problem)
    return MethodResult(out, lse, None, problem_cost_exact(problem))
