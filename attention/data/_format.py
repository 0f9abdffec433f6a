"""The ``.npz`` format of real attention samples: container type, validation, I/O.

Format (one file holds the queries, keys and values of ``h`` attention heads of one
model on one token sequence of length ``n``):

=============  ==========================  ==================================================
key            shape / dtype               meaning
=============  ==========================  ==================================================
``Q``          ``(h, n, d)`` float32       queries (after RoPE where the model uses it)
``K``          ``(h, n, d)`` float32       keys (after RoPE); for grouped-query models the
                                           kv head that query head uses
``V``          ``(h, n, dv)`` float32      values, same convention as ``K``
``heads``      ``(h, 2)`` int64            ``(layer, query head)`` of each slice
``causal``     scalar bool                 the model masks the future (decoder)
``scale``      scalar float                the model's score scale ``1/sqrt(d)``
``model``      scalar str                  model name and weight format
``tokens``     ``(n,)`` int64              the token ids the heads were computed from
``description`` scalar str (optional)      provenance: package, text, selection, entropies
=============  ==========================  ==================================================

Q and K are unscaled: the attention matrix of slice ``i`` is
``softmax(Q[i] @ K[i].T * scale)`` (with the causal mask when ``causal``).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "AttentionSample",
    "attention_entropy",
    "load_npz",
    "save_npz",
    "validate_sample",
]

_REQUIRED = ("Q", "K", "V", "heads", "causal", "scale", "model", "tokens")


class AttentionSample(NamedTuple):
    """Queries, keys and values of real attention heads.

    Attributes
    ----------
    Q : ndarray of shape (h, n, d), float32
        Queries of ``h`` heads over ``n`` tokens (after RoPE for rotary models).
    K : ndarray of shape (h, n, d), float32
        Keys; for grouped-query models slice ``i`` holds the kv head of query head
        ``heads[i, 1]``, so the slices can be used as ordinary multi-head attention.
    V : ndarray of shape (h, n, dv), float32
        Values, same convention as ``K``.
    heads : ndarray of shape (h, 2), int64
        ``(layer, query head)`` of each slice.
    causal : bool
        Whether the model is a causal decoder (use ``causal=True`` in attention).
    scale : float
        The model's score scale, ``1/sqrt(d)``.
    model : str
        Model name and weight format.
    tokens : ndarray of shape (n,), int64
        Token ids the heads were computed from.
    description : str
        Provenance: package and version, text, selection rule, row entropies.
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    heads: np.ndarray
    causal: bool
    scale: float
    model: str
    tokens: np.ndarray
    description: str


def validate_sample(sample: AttentionSample, *, source: str = "sample") -> AttentionSample:
    """Check shapes, dtypes and values of an :class:`AttentionSample`.

    Parameters
    ----------
    sample : AttentionSample
        The sample to check.
    source : str, default="sample"
        Name used in error messages (a file path, say).

    Returns
    -------
    AttentionSample
        The same sample with arrays converted to their canonical dtypes (float32 for
        ``Q``, ``K``, ``V``; int64 for ``heads`` and ``tokens``) and scalars to Python
        types.

    Raises
    ------
    ValueError
        If a shape is inconsistent, an array is not finite, ``scale`` is not positive
        or ``heads`` holds negative indices.
    TypeError
        If an array has a non-numeric dtype.
    """
    arrays = {}
    for key in ("Q", "K", "V"):
        a = np.asarray(getattr(sample, key))
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{source}: {key} must be a real float array, got dtype={a.dtype}")
        if a.ndim != 3:
            raise ValueError(f"{source}: {key} must have shape (h, n, d), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: {key} contains NaN or inf")
        arrays[key] = np.ascontiguousarray(a, dtype=np.float32)
    q, k, v = arrays["Q"], arrays["K"], arrays["V"]
    if k.shape != q.shape:
        raise ValueError(
            f"{source}: K must have the shape of Q (h, n, d)={q.shape}, got {k.shape}"
        )
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"{source}: V must have shape (h, n, dv) with (h, n)={q.shape[:2]}, got {v.shape}"
        )
    h, n, _ = q.shape
    if h < 1 or n < 1 or q.shape[2] < 1 or v.shape[2] < 1:
        raise ValueError(f"{source}: empty arrays: Q {q.shape}, V {v.shape}")
    heads = np.asarray(sample.heads)
    if heads.dtype.kind not in "iu":
        raise TypeError(f"{source}: heads must be an integer array, got dtype={heads.dtype}")
    if heads.shape != (h, 2):
        raise ValueError(f"{source}: heads must have shape (h, 2)={(h, 2)}, got {heads.shape}")
    if np.any(heads < 0):
        raise ValueError(f"{source}: heads must hold non-negative (layer, head) indices")
    tokens = np.asarray(sample.tokens)
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"{source}: tokens must be an integer array, got dtype={tokens.dtype}")
    if tokens.shape != (n,):
        raise ValueError(f"{source}: tokens must have shape (n,)={(n,)}, got {tokens.shape}")
    scale = float(sample.scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{source}: scale must be finite and > 0, got {scale}")
    return AttentionSample(
        Q=q,
        K=k,
        V=v,
        heads=heads.astype(np.int64),
        causal=bool(sample.causal),
        scale=scale,
        model=str(sample.model),
        tokens=tokens.astype(np.int64),
        description=str(sample.description),
    )


def save_npz(path: str | os.PathLike, sample: AttentionSample) -> None:
    """Write an :class:`AttentionSample` to a compressed ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (``numpy.savez_compressed`` appends ``.npz`` if missing).
    sample : AttentionSample
        The heads to store; validated first.

    Raises
    ------
    ValueError, TypeError
        As :func:`validate_sample`.
    """
    s = validate_sample(sample, source=os.fspath(path))
    np.savez_compressed(
        path,
        Q=s.Q,
        K=s.K,
        V=s.V,
        heads=s.heads,
        causal=np.bool_(s.causal),
        scale=np.float64(s.scale),
        model=np.str_(s.model),
        tokens=s.tokens,
        description=np.str_(s.description),
    )


def _from_npz(data, source: str) -> AttentionSample:
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(
            f"{source}: missing keys {missing}; an attention sample needs {list(_REQUIRED)} "
            "(and optionally 'description')"
        )
    scalars = {}
    for key in ("causal", "scale", "model"):
        a = data[key]
        if a.shape != ():
            raise ValueError(f"{source}: {key} must be a scalar, got shape {a.shape}")
        scalars[key] = a[()]
    if "description" in data:
        description = str(data["description"][()])
    else:
        description = ""
    return validate_sample(
        AttentionSample(
            Q=data["Q"],
            K=data["K"],
            V=data["V"],
            heads=data["heads"],
            causal=scalars["causal"],
            scale=scalars["scale"],
            model=scalars["model"],
            tokens=data["tokens"],
            description=description,
        ),
        source=source,
    )


def load_npz(path: str | os.PathLike) -> AttentionSample:
    """Read and validate an attention sample written in the ``attention.data`` format.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` file with keys ``Q (h, n, d)``, ``K (h, n, d)``, ``V (h, n, dv)``,
        ``heads (h, 2)``, ``tokens (n,)`` and scalars ``causal``, ``scale``, ``model``
        (optionally ``description``), as written by :func:`save_npz` and the extraction
        scripts ``python -m attention.data.extract_minilm`` /
        ``python -m attention.data.extract_smollm2``.

    Returns
    -------
    AttentionSample
        ``Q``, ``K``, ``V`` as float32, ``heads`` and ``tokens`` as int64.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If keys are missing or shapes are inconsistent (the message names the key).
    TypeError
        If an array has the wrong kind of dtype.

    Examples
    --------
    >>> import tempfile, os
    >>> from attention.data import load_sample, load_npz, save_npz
    >>> s = load_sample("minilm")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_npz(os.path.join(tmp, "s.npz"), s)
    ...     t = load_npz(os.path.join(tmp, "s.npz"))
    >>> t.Q.shape == s.Q.shape
    True
    """
    source = os.fspath(path)
    # allow_pickle=False: the format holds plain arrays and strings only
    with np.load(source, allow_pickle=False) as data:
        return _from_npz(data, source)


def attention_entropy(Q: np.ndarray, K: np.ndarray, *, scale: float, causal: bool) -> np.ndarray:
    """Mean row entropy of ``softmax(Q K^T * scale)`` per head, in nats.

    Parameters
    ----------
    Q : ndarray of shape (h, n, d)
    K : ndarray of shape (h, m, d)
    scale : float
        Score scale.
    causal : bool
        Apply the (bottom-right aligned) causal mask.

    Returns
    -------
    ndarray of shape (h,), float64
        The average over query rows of ``-sum_j p_ij log p_ij``. A row that attends
        to a single key has entropy 0; a uniform row over ``r`` keys has ``log r``.

    Notes
    -----
    Forms the ``n x m`` matrix of each head in float64: meant for samples of a few
    thousand tokens, not for long sequences.
    """
    q = np.asarray(Q, dtype=np.float64)
    k = np.asarray(K, dtype=np.float64)
    n, m = q.shape[-2], k.shape[-2]
    out = np.empty(q.shape[0])
    for i in range(q.shape[0]):
        s = (q[i] @ k[i].T) * scale
        if causal:
            keep = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
            s = np.where(keep, s, -np.inf)
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        # 0 log 0 = 0: masked and underflowed entries contribute nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0)
        out[i] = -plogp.sum(axis=1).mean()
    return out
