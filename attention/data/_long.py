"""Long-context SmolLM2 heads: extraction at any length up to 8192 tokens, cached on disk.

The cache lives in the user's cache directory (see :func:`cache_directory`), one folder
per model, text and length::

    <cache>/smollm2/<model key>/text-<sha256 of the text, 16 hex>/n<n>/
        reference.npz     tokens, exact next-token log-likelihoods and predictions,
                          perplexity and top-1 accuracy (the validation of the pass)
        layer<LL>.npz     q (9, n, 64), k (3, n, 64), v (3, n, 64) float32 of layer LL,
                          with the same perplexity stored alongside

so asking for other layers of the same text and length reuses what is there, and only the
missing layers are computed. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rnla._validation import AccuracyWarning

from . import _extract
from ._format import AttentionSample

__all__ = ["ModelHeads", "cache_directory", "load_smollm2_heads", "reference_pass"]

CACHE_ENV = "RNLA_ATTENTION_CACHE"
DEFAULT_LONG_TEXT = "licenses"
#: A forward pass whose perplexity exceeds this on English text is taken as broken.
PERPLEXITY_WARN = 100.0
_FORMAT = 1


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of the on-disk cache of extracted heads.

    Parameters
    ----------
    cache_dir : path-like, optional
        Use this folder. Otherwise the environment variable ``RNLA_ATTENTION_CACHE``,
        else ``$XDG_CACHE_HOME/rnla-attention``, else ``~/.cache/rnla-attention``.

    Returns
    -------
    pathlib.Path
        The folder (not created by this function).

    Examples
    --------
    >>> from attention.data import cache_directory
    >>> cache_directory("/tmp/heads").as_posix()
    '/tmp/heads'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rnla-attention"


class ModelHeads(NamedTuple):
    """All heads of some layers of SmolLM2-135M on one text (see :func:`load_smollm2_heads`).

    Attributes
    ----------
    Q : ndarray of shape (L, 9, n, 64), float32
        Queries of the 9 query heads of each requested layer, after RoPE, unscaled.
    K, V : ndarray of shape (L, 3, n, 64), float32
        Keys (after RoPE) and values of the 3 kv heads; query head ``h`` reads kv head
        ``h // 3`` (grouped-query attention, as :func:`attention.approximate` takes it).
    layers : ndarray of shape (L,), int64
        The layers, increasing.
    tokens : ndarray of shape (n,), int64
        Token ids.
    scale : float
        Score scale ``1/8``.
    causal : bool
        Always True.
    perplexity : float
        Next-token perplexity of the forward pass that produced the heads (exact
        attention), the validation of the pass.
    accuracy : float
        Its top-1 next-token accuracy.
    model : str
        Model name.
    text : str
        The text and its checksum.
    path : str
        Cache folder holding the files.
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    layers: np.ndarray
    tokens: np.ndarray
    scale: float
    causal: bool
    perplexity: float
    accuracy: float
    model: str
    text: str
    path: str

    def sample(self, heads=None) -> AttentionSample:
        """Stack chosen query heads as an :class:`AttentionSample` (K/V per query head).

        Parameters
        ----------
        heads : array_like of shape (h, 2) or sequence of "L:H", optional
            ``(layer, query head)`` pairs among the loaded layers. Default: all heads.

        Returns
        -------
        AttentionSample
            ``Q``, ``K``, ``V`` of shape ``(h, n, 64)``, the format of the shipped samples
            (usable with ``python -m attention report --input``).
        """
        if heads is None:
            heads = [(int(layer), h) for layer in self.layers for h in range(self.Q.shape[1])]
        chosen = _extract.parse_heads(heads, 30, self.Q.shape[1])
        index = {int(layer): i for i, layer in enumerate(self.layers)}
        missing = sorted({int(layer) for layer in chosen[:, 0]} - set(index))
        if missing:
            raise ValueError(
                f"layers {missing} are not loaded; loaded layers: {self.layers.tolist()}"
            )
        group = self.Q.shape[1] // self.K.shape[1]
        q = {layer: self.Q[i] for layer, i in index.items()}
        k = {layer: self.K[i] for layer, i in index.items()}
        v = {layer: self.V[i] for layer, i in index.items()}
        description = (
            f"{self.model}; text {self.text}, first {self.tokens.size} tokens; "
            f"validation perplexity {self.perplexity:.3f} (top-1 {self.accuracy:.3f}); "
            f"K/V are the kv head (query head // {group}) of each query head."
        )
        return _extract.assemble(
            q,
            k,
            v,
            self.tokens,
            chosen,
            group=group,
            causal=True,
            scale=self.scale,
            model=self.model,
            description=description,
        )


class Reference(NamedTuple):
    """Exact forward pass on a text: tokens, per-token log-likelihoods and predictions."""

    tokens: np.ndarray
    nll: np.ndarray
    argmax: np.ndarray
    perplexity: float
    accuracy: float


def _model_key() -> str:
    from . import _smollm2

    version = _extract.package_version(_smollm2.DISTRIBUTION)
    return f"{_smollm2.DISTRIBUTION}-{version}-{_smollm2.GGUF_NAME.removesuffix('.gguf')}"


def _folder(root: Path, text: str, n_tokens: int) -> Path:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return root / "smollm2" / _model_key() / f"text-{digest}" / f"n{n_tokens}"


def _save(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=np.int64(_FORMAT), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached data are not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError):
        return None  # a truncated or foreign file: recompute it
    if int(data.get("format", -1)) != _FORMAT:
        return None
    return data


def _check_n(n_tokens) -> int:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int | np.integer):
        raise TypeError(f"n_tokens must be an int, got {type(n_tokens).__name__}")
    if not 2 <= n_tokens <= 8192:
        raise ValueError(f"n_tokens must satisfy 2 <= n_tokens <= 8192, got {n_tokens}")
    return int(n_tokens)


def _check_layers(layers) -> np.ndarray:
    if layers is None:
        return np.arange(30, dtype=np.int64)
    if isinstance(layers, int | np.integer):
        layers = [layers]
    out = np.unique(np.asarray(list(layers), dtype=np.int64))
    if out.size == 0 or out.min() < 0 or out.max() >= 30:
        raise ValueError(f"layers must be a non-empty subset of 0..29, got {list(layers)}")
    return out


def _validate(ppl: float, label: str) -> None:
    if not np.isfinite(ppl):
        raise RuntimeError(f"the forward pass on {label} gave a non-finite perplexity")
    if ppl > PERPLEXITY_WARN:
        warnings.warn(
            f"next-token perplexity {ppl:.1f} on {label} exceeds {PERPLEXITY_WARN:g}: "
            "expected 5-60 for English text; the forward pass may be broken",
            AccuracyWarning,
            stacklevel=3,
        )


def _exact_attend(layer, q, k, v, scale):
    from attention.exact import softmax_attention

    return softmax_attention(q, k, v, scale=scale, causal=True)


def reference_pass(
    text: str | None = None,
    n_tokens: int = 1024,
    *,
    cache_dir=None,
    store_layers: Iterable[int] = (),
    callback: Callable[[int], None] | None = None,
    timings: dict | None = None,
) -> tuple[Reference, Path]:
    """Exact forward pass on the first ``n_tokens`` tokens of a text, cached.

    Returns the :class:`Reference` (read from the cache when present) and the cache
    folder. The Q/K/V of ``store_layers`` not yet in the cache are computed (by a full
    pass when the reference is new, else by a pass up to the deepest missing layer)
    and written, each with the pass's perplexity.
    """
    n_tokens = _check_n(n_tokens)
    body, label = _extract.read_text(DEFAULT_LONG_TEXT if text is None else text)
    folder = _folder(cache_directory(cache_dir), body, n_tokens)
    ref = _load(folder / "reference.npz")
    store = sorted({int(i) for i in store_layers})
    store = [i for i in store if not (folder / f"layer{i:02d}.npz").is_file()]
    if ref is not None and not store:
        return _as_reference(ref), folder
    from . import _smollm2

    model = _smollm2.load("float32")
    ids = ref["tokens"] if ref is not None else model.tokenize(body, n_tokens)
    kept: dict[int, tuple] = {}

    def collect(layer, q, k, v):
        if layer in store:
            kept[layer] = (q, k, v)
        if callback is not None:
            callback(layer)

    if ref is None:
        # full pass: every layer runs, the final hidden state gives the validation
        fwd = model.forward(
            ids, layers=None, keep=False, on_layer=collect, attend=_exact_attend, timings=timings
        )
        nll, argmax = model.next_token_stats(fwd.hidden, ids, timings=timings)
        ppl, acc = float(np.exp(nll.mean())), float(np.mean(argmax == ids[1:]))
        _validate(ppl, label)
        ref = {
            "tokens": ids,
            "nll": nll,
            "argmax": argmax,
            "perplexity": np.float64(ppl),
            "accuracy": np.float64(acc),
            "text": np.str_(label),
        }
        _save(folder / "reference.npz", **ref)
    else:
        # the validation is known: run only up to the deepest missing layer
        model.forward(ids, layers=store, keep=False, on_layer=collect, attend=_exact_attend)
    for layer, (q, k, v) in kept.items():
        _save(
            folder / f"layer{layer:02d}.npz",
            q=q.astype(np.float32),
            k=k.astype(np.float32),
            v=v.astype(np.float32),
            tokens=ids,
            perplexity=ref["perplexity"],
            accuracy=ref["accuracy"],
        )
    return _as_reference(ref), folder


def load_smollm2_heads(
    n_tokens: int,
    layers=None,
    *,
    text: str | None = None,
    cache_dir=None,
    callback: Callable[[int], None] | None = None,
) -> ModelHeads:
    """Load Q/K/V of every head of SmolLM2-135M at up to 8192 tokens, cached on disk.

    The first call for a (text, ``n_tokens``) runs the plain-NumPy forward pass of
    SmolLM2-135M-Instruct (exact attention) on the first ``n_tokens`` tokens, validates
    it by next-token perplexity and caches the requested layers' Q/K/V in the user's
    cache directory; later calls read the files (only missing layers are computed).

    Parameters
    ----------
    n_tokens : int
        Sequence length, ``2 <= n_tokens <= 8192`` (the model's context).
    layers : int or iterable of int, optional
        Layers to return (default: all 30). Each costs ``15 n * 256`` bytes on disk
        and in memory (30 MB at ``n = 8192``).
    text : str, optional
        Name of a shipped text (see :func:`available_texts`) or path of a UTF-8 file.
        Default ``"licenses"``: GPL-2, Apache-2.0 and LGPL-2.1, 12119 tokens.
    cache_dir : path-like, optional
        Cache folder (default: :func:`cache_directory`).
    callback : callable, optional
        Called with each layer index as the forward pass reaches it (progress).

    Returns
    -------
    ModelHeads
        ``Q (L, 9, n, 64)``, ``K``/``V (L, 3, n, 64)`` float32 (grouped-query: query head
        ``h`` reads kv head ``h // 3``), ``layers``, ``tokens``, ``scale = 1/8``,
        ``causal = True``, and the validation ``perplexity``/``accuracy``.

    Raises
    ------
    ModuleNotFoundError
        On a cache miss when the model packages are not installed.
    ValueError
        If ``n_tokens`` or ``layers`` is out of range or the text is too short.
    TypeError
        If ``n_tokens`` is not an int.

    Warns
    -----
    AccuracyWarning
        If the validation perplexity exceeds 100 (English text gives 5-60).

    Notes
    -----
    Cost of a miss: one forward pass, about ``2 n (124 M + 30 * 9 * n/2 * 128)`` flops
    (model GEMMs, output head, causal attention) - 1.3 s at ``n = 1024`` and about 40 s
    at ``n = 8192`` on two cores. Measured validation perplexity on the default text:
    see the long-context page of the user guide.

    Examples
    --------
    >>> from attention.data import load_smollm2_heads
    >>> heads = load_smollm2_heads(64, layers=[0, 29])  # doctest: +SKIP
    >>> heads.Q.shape, heads.K.shape  # doctest: +SKIP
    ((2, 9, 64, 64), (2, 3, 64, 64))
    """
    n_tokens = _check_n(n_tokens)
    wanted = _check_layers(layers)
    ref, folder = reference_pass(
        text, n_tokens, cache_dir=cache_dir, store_layers=wanted, callback=callback
    )
    files = []
    for layer in wanted:
        data = _load(folder / f"layer{layer:02d}.npz")
        if data is None:  # removed concurrently: compute again
            reference_pass(text, n_tokens, cache_dir=cache_dir, store_layers=[layer])
            data = _load(folder / f"layer{layer:02d}.npz")
        files.append(data)
    from . import _smollm2

    body_label = _extract.read_text(DEFAULT_LONG_TEXT if text is None else text)[1]
    return ModelHeads(
        Q=np.stack([f["q"] for f in files]),
        K=np.stack([f["k"] for f in files]),
        V=np.stack([f["v"] for f in files]),
        layers=wanted,
        tokens=ref.tokens,
        scale=0.125,
        causal=True,
        perplexity=ref.perplexity,
        accuracy=ref.accuracy,
        model=_smollm2.MODEL_NAME,
        text=body_label,
        path=str(folder),
    )


def _as_reference(ref: dict) -> Reference:
    return Reference(
        tokens=ref["tokens"],
        nll=ref["nll"],
        argmax=ref["argmax"],
        perplexity=float(ref["perplexity"]),
        accuracy=float(ref["accuracy"]),
    )
