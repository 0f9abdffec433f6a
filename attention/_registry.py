"""The method registry behind :func:`attention.approximate` and :func:`attention.methods`.

A method is a function ``fn(problem, *, rng, **params) -> MethodResult`` working on the
flattened :class:`attention._core.Problem`, registered with :func:`register`. Its keyword
parameters with their defaults are the method's public parameters: :func:`approximate`
rejects any other name, listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

from attention._core import (
    BOUND_KINDS,
    AttentionApprox,
    MethodResult,
    finish,
    finish_lse,
    prepare,
)
from rnla._validation import check_rng

__all__ = ["MethodInfo", "MethodResult", "approximate", "get_method", "methods", "register"]


class MethodInfo(NamedTuple):
    """One entry of the registry (see :func:`attention.methods`).

    Attributes
    ----------
    name : str
        Name passed to :func:`attention.approximate`.
    section : str
        Section of the survey arXiv:2604.01757 that describes the method.
    family : str
        Method family ("exact", "sparse", "clustering", "sampling", "low-rank",
        "kernel", ...).
    causal : bool
        Whether ``causal=True`` is supported (without future leakage).
    masks : bool
        Whether a ``mask`` is supported.
    bound : str or None
        Kind of the returned :class:`ErrorBound` ("deterministic", "probabilistic",
        "estimate") or None when the method's theory gives none.
    summary : str
        One line describing the method.
    defaults : dict
        Parameter names and default values.
    func : callable
        The implementation.
    noncausal_reason : str
        For a method without ``causal=True``: why (which paper, what would leak);
        empty for causal methods.
    checks_finite : bool
        Whether the method detects NaN and inf in ``Q``, ``K``, ``V`` itself (while
        its kernels read them); :func:`approximate` then skips its own validation
        pass over the inputs.
    """

    name: str
    section: str
    family: str
    causal: bool
    masks: bool
    bound: str | None
    summary: str
    defaults: dict
    func: Callable
    noncausal_reason: str = ""
    checks_finite: bool = False


_REGISTRY: dict[str, MethodInfo] = {}

# Modules whose import registers methods.
_METHOD_MODULES = (
    "attention.exact",
    "attention.sparse",
    "attention.clustering",
    "attention.sampling",
    "attention.lowrank",
    "attention.kernel",
    "attention.adaptive",
)


def register(
    name: str,
    *,
    section: str,
    family: str,
    causal: bool,
    bound: str | None,
    summary: str,
    masks: bool = False,
    noncausal_reason: str | None = None,
    checks_finite: bool = False,
):
    """Register a method implementation under ``name`` (decorator).

    The function must take ``(problem, *, rng, **params)`` with every parameter
    keyword-only and defaulted, and return a :class:`MethodResult`. A method registered
    with ``causal=False`` should say why in ``noncausal_reason`` (which paper, what
    would leak); the text is shown when ``causal=True`` is refused. A method registered
    with ``checks_finite=True`` receives inputs not yet checked for NaN and inf and must
    reject them itself (with the message of :func:`attention._core.prepare`).
    """
    if bound is not None and bound not in BOUND_KINDS:
        raise ValueError(f"bound={bound!r} must be None or one of {BOUND_KINDS}")

    def decorate(func: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        defaults = {}
        for pname, p in list(inspect.signature(func).parameters.items())[1:]:
            if pname == "rng":
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is p.empty:
                raise TypeError(
                    f"{func.__name__}: parameter {pname!r} must be keyword-only with a default"
                )
            defaults[pname] = p.default
        _REGISTRY[name] = MethodInfo(
            name,
            section,
            family,
            causal,
            masks,
            bound,
            summary,
            defaults,
            func,
            "" if causal else (noncausal_reason or ""),
            checks_finite,
        )
        return func

    return decorate


def _load_methods() -> None:
    # Importing the method modules registers their methods (kept lazy so that importing
    # ``attention`` stays cheap and free of cycles).
    import importlib

    for name in _METHOD_MODULES:
        importlib.import_module(name)


def methods() -> tuple[MethodInfo, ...]:
    """List the registered methods, sorted by survey section then name.

    Returns
    -------
    tuple of MethodInfo
        ``name``, ``section``, ``family``, ``causal``, ``masks``, ``bound``, ``summary``,
        ``defaults`` (and ``func``) of every method.

    Examples
    --------
    >>> from attention import methods
    >>> "exact" in [m.name for m in methods()]
    True
    """
    _load_methods()
    return tuple(sorted(_REGISTRY.values(), key=lambda m: (m.section, m.name)))


def get_method(name: str) -> MethodInfo:
    """Look a method up by name (the error lists the registered names)."""
    _load_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        listed = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown method {name!r}; registered methods: {listed}")
    return _REGISTRY[name]


def approximate(
    Q, K, V, method: str, *, rng=None, causal=False, mask=None, scale=None, **params
) -> AttentionApprox:
    """Approximate softmax attention ``softmax(Q K^T * scale) V`` with a registered method.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys (grouped-query attention when ``K`` has fewer heads than ``Q``, axis -3).
    V : array_like, shape (..., m, dv)
        Values.
    method : str
        A name from :func:`methods`.
    rng : None, int, SeedSequence or Generator, optional
        Randomness of randomized methods; the same seed gives the same result.
    causal : bool, default=False
        Causal attention (bottom-right aligned when ``n != m``); methods that cannot
        be causal without leaking the future raise.
    mask : array_like, optional
        Boolean (True = attend) or additive mask broadcastable to ``(..., n, m)``, for
        methods that support masks.
    scale : float, optional
        Score scale, ``1 / sqrt(d)`` by default. Must be ``> 0`` for approximation
        methods; ``"exact"`` accepts any finite scale (as :func:`softmax_attention`).
    **params
        The method's parameters (see ``methods()[i].defaults``).

    Returns
    -------
    AttentionApprox
        ``output`` of shape ``(..., n, dv)``, ``lse``, ``bound``, ``cost``, ``method``
        and the full ``params``.

    Raises
    ------
    ValueError
        Unknown method or parameter (the message lists the valid names), causal or mask
        requested from a method that does not support it, invalid inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from attention import approximate
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.standard_normal((2, 64, 16)) for _ in range(3))
    >>> approximate(Q, K, V, "exact").output.shape
    (2, 64, 16)
    """
    info = get_method(method)
    unknown = sorted(set(params) - set(info.defaults))
    if unknown:
        valid = ", ".join(info.defaults) or "(none)"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for method {method!r}; "
            f"valid parameters: {valid}"
        )
    # Exact attention accepts any finite scale; approximation methods need scale > 0.
    problem = prepare(
        Q,
        K,
        V,
        scale=scale,
        causal=causal,
        mask=mask,
        positive_scale=method != "exact",
        check_finite=not info.checks_finite,
    )
    if problem.causal and not info.causal:
        why = info.noncausal_reason or "it would leak future keys"
        raise ValueError(
            f"method {method!r} does not support causal=True ({why}); "
            "causal methods: " + ", ".join(m.name for m in methods() if m.causal)
        )
    if problem.mask is not None and not info.masks:
        raise ValueError(
            f"method {method!r} does not support masks; methods with masks: "
            + ", ".join(m.name for m in methods() if m.masks)
        )
    full = {**info.defaults, **params}
    res = info.func(problem, rng=check_rng(rng), **full)
    return AttentionApprox(
        output=finish(problem, res.output),
        lse=finish_lse(problem, res.lse),
        bound=res.bound,
        cost=res.cost,
        method=method,
        params=full,
    )
