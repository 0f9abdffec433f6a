r"""Multi-head latent attention (MLA) and conversion of trained heads to MLA (survey §6).

MLA caches one shared latent vector :math:`c_t = x_tW_{DKV}\in\mathbb R^{d_c}` per token
(plus :math:`d_R` rotary key dimensions shared by all heads) instead of the keys and
values of every head. Per head :math:`h` the keys and values are
:math:`k_{h,t} = c_tW_{UK}^h` and :math:`v_{h,t} = c_tW_{UV}^h`; at inference
:math:`W_{UK}^h` is absorbed into the query (:math:`q_hk_h^T = (q_hW_{UK}^{hT})c^T`) and
:math:`W_{UV}^h` into the output projection, so attention runs as multi-query attention
over the cache :math:`[c_t \mid k^R_t]`.

Conversions of a trained MHA/GQA layer are randomized-NLA problems on the stacked
key/value projection :math:`W = [W_K, W_V]` (``x @ W`` convention): a rank-:math:`d_c`
factorisation :math:`W \approx W_{DKV}W_U`, by

* ``"weight_svd"`` (MHA2MLA): truncated SVD of :math:`W` (:func:`rnla.rsvd`), optimal in
  the weight space;
* ``"activation_pca"`` (TransMLA): PCA of the calibration activations :math:`XW`
  (:func:`rnla.reigh` on the damped covariance), :math:`W_U = U_r^T`,
  :math:`W_{DKV} = WU_r`;
* ``"whitened_svd"`` (Palu / SVD-LLM): SVD of :math:`L^TW` with
  :math:`X^TX/N = LL^T`, un-whitened, optimal for the calibration activations.

Biases are handled with homogeneous coordinates: append a column of ones to ``X`` and
the bias as an extra row of each weight matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from attention.bounds import RowBound, _aggregate, row_lemma
from attention.exact import softmax_attention
from rnla._validation import as_float_array, check_int, check_option, check_rng, result_dtype
from rnla.lowrank import reigh, rsvd

__all__ = [
    "MLAConversion",
    "MLAForward",
    "MLAWeights",
    "gqa_to_mla",
    "kv_cache_size",
    "latent_output_bound",
    "mha_to_mla",
    "mla_attention",
    "rope",
]

_METHODS = ("weight_svd", "activation_pca", "whitened_svd")
_SOLVERS = ("randomized", "dense")


class MLAWeights(NamedTuple):
    r"""Weights of one multi-head latent attention layer (``x @ W`` convention).

    Attributes
    ----------
    W_DKV : ndarray, shape (d_model, d_c)
        Down-projection to the cached latent :math:`c = XW_{DKV}`.
    W_UK : ndarray, shape (n_heads, d_c, d_qk)
        Per-head key up-projections (non-rotary part): :math:`K_h = cW_{UK}^h`.
    W_UV : ndarray, shape (n_heads, d_c, d_v)
        Per-head value up-projections: :math:`V_h = cW_{UV}^h`.
    W_Q : ndarray, shape (n_heads, d_model, d_qk)
        Per-head non-rotary query projections.
    W_QR : ndarray, shape (n_heads, d_model, d_R)
        Per-head rotary query projections (``d_R = 0``: no RoPE).
    W_KR : ndarray, shape (d_model, d_R)
        Rotary key projection, shared by all heads (cached after rotation).
    rope_freqs : ndarray of float64, shape (d_R // 2,)
        Angular frequency of each rotary pair ``(2i, 2i + 1)`` (interleaved layout):
        position ``t`` rotates pair ``i`` by ``t * rope_freqs[i]``.
    W_O : ndarray, shape (n_heads, d_v, d_out), or None
        Output projection; :math:`W_{UV}^h` is folded into it at inference. ``None``:
        :func:`mla_attention` returns the concatenated head outputs.
    scale : float
        Score scale (the original model's, e.g. :math:`1/\sqrt{d_h}`).
    """

    W_DKV: np.ndarray
    W_UK: np.ndarray
    W_UV: np.ndarray
    W_Q: np.ndarray
    W_QR: np.ndarray
    W_KR: np.ndarray
    rope_freqs: np.ndarray
    W_O: np.ndarray | None
    scale: float


class MLAForward(NamedTuple):
    r"""Result of :func:`mla_attention`.

    Attributes
    ----------
    output : ndarray, shape (n, d_out) or (n, n_heads * d_v)
        ``concat_h(softmax(S_h) V_h) @ W_O`` (or the concatenated heads if
        ``weights.W_O`` is None).
    cache : ndarray, shape (n, d_c + d_R)
        The KV cache :math:`[c_t \mid \operatorname{RoPE}(x_tW_{KR})]`.
    """

    output: np.ndarray
    cache: np.ndarray


class MLAConversion(NamedTuple):
    r"""Result of :func:`mha_to_mla` / :func:`gqa_to_mla`.

    Attributes
    ----------
    weights : MLAWeights
        The converted layer. Without query weights (``W_Q=None``) it has no query heads
        (``W_Q`` of shape (0, d_model, 0)) and ``W_UK``/``W_UV`` hold the unsplit
        up-projections with shapes (1, d_c, n_heads d_h) and (1, d_c, n_heads d_v).
    rank : int
        Latent dimension :math:`d_c`.
    cache_size : int
        Cached elements per token per layer, :math:`d_c + d_R`.
    compression : float
        Original cache per token (:math:`2N_hd_h` MHA, :math:`2N_gd_h` GQA) divided by
        ``cache_size``.
    weight_error : float
        :math:`\|W - W_{DKV}W_U\|_F/\|W\|_F` for the compressed
        :math:`W = [W_K^{\mathrm{nope}}, W_V]`.
    activation_error : float
        :math:`\|X(W - W_{DKV}W_U)\|_F/\|XW\|_F` on the calibration rows (NaN without
        calibration data).
    rope_kept : float
        Fraction of the RoPE 2-norm score kept rotary (1.0 when the model has no RoPE
        or every rotary pair is kept); see :func:`gqa_to_mla`.
    """

    weights: MLAWeights
    rank: int
    cache_size: int
    compression: float
    weight_error: float
    activation_error: float
    rope_kept: float


# ---------------------------------------------------------------------------------------
# cache accounting and RoPE
# ---------------------------------------------------------------------------------------


def kv_cache_size(
    kind="mha",
    *,
    n_heads=None,
    head_dim=None,
    n_groups=None,
    latent_dim=None,
    rope_dims=0,
) -> int:
    r"""KV-cache elements per token per layer (survey §2.3 and §6).

    Parameters
    ----------
    kind : {"mha", "gqa", "mqa", "mla"}, default="mha"
        Attention variant.
    n_heads : int, optional
        Heads :math:`N_h` (``"mha"``).
    head_dim : int, optional
        Head dimension :math:`d_h` (``"mha"``, ``"gqa"``, ``"mqa"``).
    n_groups : int, optional
        Key/value heads :math:`N_g` (``"gqa"``).
    latent_dim : int, optional
        Latent dimension :math:`d_c` (``"mla"``).
    rope_dims : int, default=0
        Decoupled rotary key dimensions :math:`d_R` (``"mla"``).

    Returns
    -------
    int
        :math:`2N_hd_h` (MHA), :math:`2N_gd_h` (GQA), :math:`2d_h` (MQA),
        :math:`d_c + d_R` (MLA). Multiply by tokens and layers for the whole cache.

    Raises
    ------
    ValueError
        Unknown ``kind`` or a missing/non-positive size.

    Notes
    -----
    DeepSeek-V2 (:math:`d_c = 512`, :math:`d_R = 64`, :math:`d_h = 128`) caches 576
    elements per token, the cache of GQA with :math:`576/(2\cdot128) = 2.25` groups.

    Examples
    --------
    >>> from attention.latent import kv_cache_size
    >>> kv_cache_size("mla", latent_dim=512, rope_dims=64)
    576
    >>> kv_cache_size("gqa", n_groups=3, head_dim=64)
    384
    """
    kind = check_option(kind, ("mha", "gqa", "mqa", "mla"), "kind")
    need = {
        "mha": {"n_heads": n_heads, "head_dim": head_dim},
        "gqa": {"n_groups": n_groups, "head_dim": head_dim},
        "mqa": {"head_dim": head_dim},
        "mla": {"latent_dim": latent_dim},
    }[kind]
    for name, value in need.items():
        if value is None:
            raise ValueError(f"kind={kind!r} needs {name}=..., got None")
        check_int(value, name, minimum=1)
    check_int(rope_dims, "rope_dims", minimum=0)
    if kind == "mha":
        return 2 * n_heads * head_dim
    if kind == "gqa":
        return 2 * n_groups * head_dim
    if kind == "mqa":
        return 2 * head_dim
    return latent_dim + rope_dims


def rope(x, freqs, positions=None) -> np.ndarray:
    r"""Rotary position embedding, interleaved layout (pairs ``(2i, 2i + 1)``).

    Parameters
    ----------
    x : array_like, shape (..., n, 2p)
        Vectors to rotate (row ``t`` is position ``positions[t]``).
    freqs : array_like, shape (p,)
        Angular frequency of each pair; the Llama/GGUF choice is
        ``base ** (-2 i / d_h)``.
    positions : array_like, shape (n,), optional
        Token positions (default ``0 .. n-1``).

    Returns
    -------
    ndarray, shape (..., n, 2p), dtype of ``x``
        :math:`(x_{2i}\cos\theta - x_{2i+1}\sin\theta,\;
        x_{2i}\sin\theta + x_{2i+1}\cos\theta)` with :math:`\theta = t\,\omega_i`.

    Raises
    ------
    ValueError
        Odd last dimension or ``freqs`` of the wrong length.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.latent import rope
    >>> rope(np.ones((3, 4)), np.array([1.0, 0.1])).shape
    (3, 4)
    """
    x = as_float_array(x, name="x", allow_empty=True)
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    if x.ndim < 2 or x.shape[-1] != 2 * freqs.size:
        raise ValueError(
            f"x must have shape (..., n, 2 * len(freqs)) = (..., n, {2 * freqs.size}), "
            f"got {x.shape}"
        )
    n = x.shape[-2]
    pos = np.arange(n, dtype=np.float64) if positions is None else np.asarray(positions, float)
    if pos.shape != (n,):
        raise ValueError(f"positions must have shape ({n},), got {pos.shape}")
    ang = pos[:, None] * freqs[None, :]
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


# ---------------------------------------------------------------------------------------
# MLA forward pass
# ---------------------------------------------------------------------------------------


def _check_weights(weights, d_model: int):
    if not isinstance(weights, MLAWeights):
        raise TypeError(f"weights must be an MLAWeights, got {type(weights).__name__}")
    W_DKV, W_UK, W_UV, W_Q, W_QR, W_KR = (np.asarray(w) for w in weights[:6])
    h = W_Q.shape[0]
    d_c, d_R = W_DKV.shape[1], W_KR.shape[1]
    if h == 0:
        raise ValueError(
            "weights have no query heads (n_heads = 0): pass W_Q (and n_heads) to the "
            "conversion function to get a layer mla_attention can run"
        )
    shapes = {
        "W_DKV": (W_DKV.shape, (d_model, d_c)),
        "W_UK": (W_UK.shape, (h, d_c, W_Q.shape[2])),
        "W_UV": (W_UV.shape[:2], (h, d_c)),
        "W_Q": (W_Q.shape[:2], (h, d_model)),
        "W_QR": (W_QR.shape, (h, d_model, d_R)),
        "W_KR": (W_KR.shape, (d_model, d_R)),
        "rope_freqs": (np.shape(weights.rope_freqs), (d_R // 2,)),
    }
    for name, (got, want) in shapes.items():
        if tuple(got) != tuple(want):
            raise ValueError(f"weights.{name} must have shape {want}, got {tuple(got)}")
    if d_R % 2:
        raise ValueError(f"the rotary dimension d_R={d_R} must be even (pairs)")
    if weights.W_O is not None and np.shape(weights.W_O)[:2] != W_UV.shape[::2]:
        raise ValueError(
            f"weights.W_O must have shape ({h}, {W_UV.shape[2]}, d_out), "
            f"got {np.shape(weights.W_O)}"
        )


def mla_attention(
    X, weights, *, causal=False, positions=None, absorb=True, return_cache=True
) -> MLAForward:
    r"""Multi-head latent attention forward pass with absorbed weights and decoupled RoPE.

    Parameters
    ----------
    X : array_like, shape (n, d_model)
        Layer inputs (one sequence).
    weights : MLAWeights
        The layer (from :func:`mha_to_mla`, :func:`gqa_to_mla` or built by hand).
    causal : bool, default=False
        Causal mask (token ``i`` sees ``j <= i``).
    positions : array_like, shape (n,), optional
        Positions for RoPE (default ``0 .. n-1``).
    absorb : bool, default=True
        ``True``: absorbed inference form (queries :math:`XW_Q^hW_{UK}^{hT}` of size
        :math:`d_c + d_R` attend to the shared cache, multi-query style; the value
        up-projection is applied after attention, folded into :math:`W_O`).
        ``False``: naive form (materialise every head's keys and values); the same
        result up to rounding, kept as a reference.
    return_cache : bool, default=True
        Return the cache (else ``cache`` is an empty ``(n, 0)`` array).

    Returns
    -------
    MLAForward
        ``output`` (n, d_out) (or (n, n_heads * d_v) without ``W_O``) and ``cache``
        (n, d_c + d_R), in the dtype of ``X`` and the weights.

    Raises
    ------
    TypeError
        ``weights`` not an :class:`MLAWeights`.
    ValueError
        Inconsistent weight shapes, ``X`` of the wrong width, non-finite input.

    Notes
    -----
    Scores of head :math:`h`:
    :math:`S_h = \mathrm{scale}\,[(XW_Q^hW_{UK}^{hT})c^T +
    \mathrm{RoPE}(XW_{QR}^h)\mathrm{RoPE}(XW_{KR})^T]`. Cost with absorption:
    :math:`2n\,d\,d_c` (latent) :math:`+ 2N_hn\,d(d_c + d_R)` (queries)
    :math:`+ 4N_hn^2(d_c + d_R)` (scores and outputs) :math:`+ 2N_hn\,d_c d_{out}`
    flops, i.e. :math:`O(N_hn^2d_c)` as in survey §6; the cache holds
    :math:`d_c + d_R` numbers per token (:func:`kv_cache_size`). The absorbed product
    :math:`W_Q^hW_{UK}^{hT}` is exact algebra, which is why RoPE (position dependent)
    must live in separate dimensions (DeepSeek-V2 [1]_).

    References
    ----------
    .. [1] DeepSeek-AI, "DeepSeek-V2: a strong, economical, and efficient
       mixture-of-experts language model", arXiv:2405.04434, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.latent import mha_to_mla, mla_attention
    >>> rng = np.random.default_rng(0)
    >>> WQ, WK, WV = (rng.standard_normal((16, 16)) for _ in range(3))
    >>> conv = mha_to_mla(WK, WV, 8, W_Q=WQ, n_heads=4, rng=0)
    >>> out = mla_attention(rng.standard_normal((10, 16)), conv.weights)
    >>> out.output.shape, out.cache.shape
    ((10, 16), (10, 8))
    """
    X = as_float_array(X, name="X", ndim=2)
    _check_weights(weights, X.shape[1])
    dt = result_dtype(X.dtype, np.asarray(weights.W_DKV).dtype)
    X = X.astype(dt, copy=False)
    w = [np.asarray(a, dtype=dt) for a in weights[:6]]
    W_DKV, W_UK, W_UV, W_Q, W_QR, W_KR = w
    freqs = np.asarray(weights.rope_freqs, dtype=np.float64)
    h, _, d_v = W_UV.shape
    n = X.shape[0]
    c = X @ W_DKV
    k_r = rope(X @ W_KR, freqs, positions)
    q_r = rope(np.einsum("nd,hdr->hnr", X, W_QR), freqs, positions)
    if absorb:
        # q_h k_h^T = (X W_Q^h W_UK^hT) c^T: attention runs over the latent cache, with
        # all heads sharing one "key/value head" (multi-query attention).
        # Written out for an empty contraction (every key pair rotary, W_Q of width 0):
        # einsum over an empty axis was seen to return uninitialised memory (NaN) on one
        # machine, where the product is exactly zero.
        if W_Q.shape[2]:
            W_abs = np.einsum("hde,hce->hdc", W_Q, W_UK)
        else:
            W_abs = np.zeros((h, W_Q.shape[1], W_UK.shape[1]), dtype=dt)
        q = np.concatenate([np.einsum("nd,hdc->hnc", X, W_abs), q_r], axis=-1)
        kv = np.concatenate([c, k_r], axis=-1)[None]
        o = softmax_attention(q, kv, c[None], scale=weights.scale, causal=causal)
        heads = np.einsum("hnc,hcv->hnv", o, W_UV)  # W_UV^h, folded into W_O below
    else:
        q = np.concatenate([np.einsum("nd,hde->hne", X, W_Q), q_r], axis=-1)
        k = np.concatenate(
            [np.einsum("nc,hce->hne", c, W_UK), np.broadcast_to(k_r, (h, *k_r.shape))], axis=-1
        )
        v = np.einsum("nc,hcv->hnv", c, W_UV)
        heads = softmax_attention(q, k, v, scale=weights.scale, causal=causal)
    if weights.W_O is None:
        out = heads.transpose(1, 0, 2).reshape(n, h * d_v)
    else:
        out = np.einsum("hnv,hvo->no", heads, np.asarray(weights.W_O, dtype=dt))
    cache = np.concatenate([c, k_r], axis=-1) if return_cache else np.empty((n, 0), dt)
    return MLAForward(output=out.astype(dt, copy=False), cache=cache.astype(dt, copy=False))


# ---------------------------------------------------------------------------------------
# low-rank factorisations of [W_K, W_V]
# ---------------------------------------------------------------------------------------


def _svd(A, rank, solver, rng):
    if solver == "dense":
        U, s, Vt = sla.svd(A, full_matrices=False, check_finite=False)
        return U[:, :rank], s[:rank], Vt[:rank]
    return rsvd(A, rank, rng=rng)


def _top_eig(C, rank, solver, rng):
    """Top ``rank`` eigenvectors of the symmetric PSD matrix ``C`` (descending)."""
    if solver == "dense":
        _, U = sla.eigh(C, subset_by_index=(C.shape[0] - rank, C.shape[0] - 1))
        return U[:, ::-1]
    return reigh(C, rank, rng=rng).eigenvectors


def _whitener(X, damping):
    """Lower Cholesky factor of X^T X / N, shifted by damping * mean(diag) if not PD."""
    C = (X.T @ X) / X.shape[0]
    shift = 0.0
    base = float(np.mean(np.diag(C))) or 1.0
    for _ in range(20):
        try:
            return sla.cholesky(C + shift * np.eye(C.shape[0]), lower=True), shift
        except sla.LinAlgError:
            # Palu: shift the spectrum until the covariance is numerically PD
            shift = max(10 * shift, max(damping, 1e-8) * base)
    raise ValueError("the calibration covariance could not be made positive definite")


def _factorize(W, rank, method, X, damping, solver, rng):
    """W (d, p) ~ D @ U with D (d, rank), U (rank, p)."""
    if method == "weight_svd":
        U, s, Vt = _svd(W, rank, solver, rng)
        return U, s[:, None] * Vt
    if method == "activation_pca":
        # TransMLA: PCA of the activations XW. Its damping lambda = damping * mean(diag)
        # adds lambda I, which leaves the eigenvectors unchanged: the eigensolver gets the
        # undamped covariance, because the shift would only narrow the eigenvalue gaps
        # (lambda_r + lambda) / (lambda_{r+1} + lambda) that subspace iteration relies on.
        XW = X @ W
        C = XW.T @ XW / X.shape[0]
        Ur = _top_eig((C + C.T) / 2, rank, solver, rng)
        return W @ Ur, Ur.T
    # whitened SVD (Palu / SVD-LLM): ||X(W - W~)||_F = sqrt(N) ||L^T W - L^T W~||_F
    L, _ = _whitener(X.astype(np.float64), damping)
    U, s, Vt = _svd(L.T @ W.astype(np.float64), rank, solver, rng)
    D = sla.solve_triangular(L.T, U, lower=False, check_finite=False)
    return D, s[:, None] * Vt


def _rel(num, den):
    den = float(np.linalg.norm(den))
    return float(np.linalg.norm(num)) / den if den > 0 else 0.0


def _compress(blocks, rank, *, method, split, X, damping, solver, rng):
    """Factor the list of column blocks [W_K, W_V] jointly or separately.

    Returns W_DKV (d, rank), the up-projections per block (rank, p_b) and the errors.
    """
    d = blocks[0].shape[0]
    if not split:
        W = np.concatenate(blocks, axis=1)
        full = min(d, W.shape[1])
        if rank > full:
            raise ValueError(
                f"rank={rank} must satisfy 1 <= rank <= min(d_model, cols of [W_K, W_V])="
                f"{full} for split=False"
            )
        D, U = _factorize(W, rank, method, X, damping, solver, rng)
        ups = np.split(U, np.cumsum([b.shape[1] for b in blocks])[:-1], axis=1)
    else:
        fulls = [min(d, b.shape[1]) for b in blocks]
        # rank split as evenly as possible (K first), never beyond a block's full rank
        ranks = [0] * len(blocks)
        for _ in range(rank):
            room = [i for i in range(len(blocks)) if ranks[i] < fulls[i]]
            if not room:
                raise ValueError(
                    f"rank={rank} must satisfy 1 <= rank <= sum of the blocks' full ranks="
                    f"{sum(fulls)} for split=True"
                )
            ranks[min(room, key=lambda i: (ranks[i], i))] += 1
        Ds, ups, off = [], [], 0
        for b, r in zip(blocks, ranks, strict=True):
            U = np.zeros((rank, b.shape[1]), dtype=b.dtype)
            if r:
                Db, Ub = _factorize(b, r, method, X, damping, solver, rng)
                Ds.append(Db)
                U[off : off + r] = Ub
            off += r
            ups.append(U)
        D = np.concatenate(Ds, axis=1)
    # the whitening runs in float64 (Cholesky of a covariance): back to the input dtype
    dt = blocks[0].dtype
    D, ups = D.astype(dt, copy=False), [u.astype(dt, copy=False) for u in ups]
    W = np.concatenate(blocks, axis=1)
    E = W - D @ np.concatenate(ups, axis=1)
    w_err = _rel(E, W)
    a_err = math.nan if X is None else _rel(X @ E, X @ W)
    return D, ups, w_err, a_err


def _check_common(method, X, d_model, damping, solver):
    method = check_option(method, _METHODS, "method")
    solver = check_option(solver, _SOLVERS, "solver")
    if isinstance(damping, bool) or not isinstance(damping, int | float) or not damping >= 0:
        raise ValueError(f"damping={damping!r} must be a float >= 0")
    if X is not None:
        X = as_float_array(X, name="calibration", ndim=2)
        if X.shape[1] != d_model:
            raise ValueError(
                f"calibration must have shape (N, d_model) = (N, {d_model}), got {X.shape}"
            )
    elif method != "weight_svd":
        raise ValueError(f"method={method!r} needs calibration=X of shape (N, {d_model})")
    return method, solver, X


def _check_split(split):
    if not isinstance(split, bool | np.bool_):
        raise TypeError(f"split must be a bool, got {split!r}")
    return bool(split)


def mha_to_mla(
    W_K,
    W_V,
    rank,
    /,
    *,
    method="weight_svd",
    split=False,
    calibration=None,
    damping=0.01,
    W_Q=None,
    W_O=None,
    n_heads=None,
    scale=None,
    solver="randomized",
    rng=None,
) -> MLAConversion:
    r"""Convert a multi-head attention layer (no RoPE) to MLA with latent dimension ``rank``.

    Parameters
    ----------
    W_K : array_like, shape (d_model, n_heads * d_h)
        Key projection (``K = X @ W_K``; append a bias as an extra row).
    W_V : array_like, shape (d_model, n_heads * d_v)
        Value projection.
    rank : int
        Latent dimension :math:`d_c` (the cache per token). ``split=False``:
        ``1 <= rank <= min(d_model, n_heads (d_h + d_v))``; ``split=True``: up to
        ``min(d_model, n_heads d_h) + min(d_model, n_heads d_v)``.
    method : {"weight_svd", "activation_pca", "whitened_svd"}, default="weight_svd"
        See the module docstring and Notes.
    split : bool, default=False
        ``False``: one joint factorisation of :math:`[W_K, W_V]` (shared latent).
        ``True``: factor :math:`W_K` and :math:`W_V` separately with ranks
        ``ceil(rank/2)`` and ``floor(rank/2)`` (MHA2MLA's "split"); the latent is the
        concatenation.
    calibration : array_like, shape (N, d_model), optional
        Calibration inputs :math:`X` (required by the activation methods); also used to
        report ``activation_error``.
    damping : float, default=0.01
        ``activation_pca``: TransMLA's shift ``damping * mean(diag)`` of the covariance;
        it does not change the principal components, so it has no effect on the result
        (the eigensolver works on the unshifted covariance, see Notes).
        ``whitened_svd``: the first shift tried when :math:`X^TX` is not numerically
        positive definite (then multiplied by 10 until Cholesky succeeds).
    W_Q : array_like, shape (d_model, n_heads * d_h), optional
        Query projection; needed for a runnable :class:`MLAWeights`.
    W_O : array_like, shape (n_heads * d_v, d_out), optional
        Output projection (the value up-projection is folded into it at inference).
    n_heads : int, optional
        Number of heads (required with ``W_Q``).
    scale : float, optional
        Score scale, default :math:`1/\sqrt{d_h}`.
    solver : {"randomized", "dense"}, default="randomized"
        ``"randomized"``: :func:`rnla.rsvd` / :func:`rnla.reigh`; ``"dense"``: LAPACK
        (reference and timing baseline).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Randomness of the randomized solvers.

    Returns
    -------
    MLAConversion
        The weights, rank, cache size :math:`d_c`, compression
        :math:`2N_hd_h/d_c` (for :math:`d_v = d_h`; in general
        :math:`N_h(d_h + d_v)/d_c`), and the weight/activation errors.

    Raises
    ------
    TypeError
        Non-integer ``rank``/``n_heads``, non-bool ``split``, complex input.
    ValueError
        ``rank`` out of range, mismatched shapes, columns not divisible by ``n_heads``,
        missing calibration for an activation method, unknown method or solver.

    Notes
    -----
    With :math:`W = [W_K, W_V]` (``d x p``) the three methods give
    :math:`W \approx W_{DKV}W_U`:

    * weight SVD: :math:`W_{DKV} = U_r`, :math:`W_U = \Sigma_rV_r^T`; error
      :math:`\|W - \tilde W\|_2 = \sigma_{r+1}(W)` for the exact SVD (Eckart-Young);
      :func:`rnla.rsvd` is within the HMT bounds of it;
    * activation PCA: :math:`U_r` = top eigenvectors of
      :math:`W^TX^TXW/N + \lambda I`, :math:`\tilde W = WU_rU_r^T`;
    * whitened SVD: :math:`X^TX/N = LL^T`, :math:`L^TW \approx U\Sigma V^T`,
      :math:`\tilde W = L^{-T}U_r\Sigma_rV_r^T`.

    For a full-column-rank :math:`X` and no damping, the last two give the *same*
    :math:`\tilde W = WV_rV_r^T` (:math:`V_r` the top right singular vectors of
    :math:`XW`), optimal in :math:`\|X(W - \tilde W)\|_F`; they differ through the
    damping/shift (rank-deficient calibration) and the solver. At full rank each
    reconstruction is exact (for ``activation_pca`` when :math:`XW` has full column
    rank or the rank reaches ``p``). Cost: one (randomized) SVD of a ``d x p`` matrix,
    plus :math:`O(Nd\,p)` for the activation methods. When ``d_model <= n_heads (d_h +
    d_v)``, caching :math:`X` itself (rank ``d_model``) is already exact.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.latent import mha_to_mla
    >>> rng = np.random.default_rng(0)
    >>> WK, WV = rng.standard_normal((32, 16)), rng.standard_normal((32, 16))
    >>> conv = mha_to_mla(WK, WV, 8, rng=0)
    >>> conv.cache_size, conv.compression, conv.weights.W_DKV.shape
    (8, 4.0, (32, 8))
    """
    W_K = as_float_array(W_K, name="W_K", ndim=2)
    W_V = as_float_array(W_V, name="W_V", ndim=2)
    d = W_K.shape[0]
    if W_V.shape[0] != d:
        raise ValueError(f"W_K {W_K.shape} and W_V {W_V.shape} must have the same d_model rows")
    check_int(rank, "rank", minimum=1)
    split = _check_split(split)
    method, solver, X = _check_common(method, calibration, d, damping, solver)
    rng = check_rng(rng)
    dt = result_dtype(W_K.dtype, W_V.dtype, *(() if X is None else (X.dtype,)))
    W_K, W_V = W_K.astype(dt, copy=False), W_V.astype(dt, copy=False)
    Xc = None if X is None else X.astype(dt, copy=False)
    D, (U_K, U_V), w_err, a_err = _compress(
        [W_K, W_V],
        rank,
        method=method,
        split=split,
        X=Xc,
        damping=damping,
        solver=solver,
        rng=rng,
    )
    original = W_K.shape[1] + W_V.shape[1]
    weights = _assemble(D, U_K, U_V, W_Q, W_O, n_heads, scale, dt, d, kv_of=None)
    return MLAConversion(
        weights=weights,
        rank=rank,
        cache_size=rank,
        compression=original / rank,
        weight_error=w_err,
        activation_error=a_err,
        rope_kept=1.0,
    )


def _heads(n_heads, W_Q, d):
    if W_Q is None:
        if n_heads is not None:
            check_int(n_heads, "n_heads", minimum=1)
        return None, n_heads
    if n_heads is None:
        raise ValueError("n_heads is required when W_Q is given")
    n_heads = check_int(n_heads, "n_heads", minimum=1)
    W_Q = as_float_array(W_Q, name="W_Q", ndim=2)
    if W_Q.shape[0] != d or W_Q.shape[1] % n_heads:
        raise ValueError(
            f"W_Q must have shape (d_model, n_heads * d_h) = ({d}, {n_heads} * d_h), "
            f"got {W_Q.shape}"
        )
    return W_Q, n_heads


def _assemble(D, U_K, U_V, W_Q, W_O, n_heads, scale, dt, d, *, kv_of):
    """MLAWeights without RoPE from the latent factors (MHA: head h uses columns h)."""
    W_Q, n_heads = _heads(n_heads, W_Q, d)
    rank = D.shape[1]
    if W_Q is None:
        # no query heads: keep the unsplit up-projections as one pseudo-head
        return MLAWeights(
            W_DKV=D,
            W_UK=U_K[None],
            W_UV=U_V[None],
            W_Q=np.zeros((0, d, 0), dt),
            W_QR=np.zeros((0, d, 0), dt),
            W_KR=np.zeros((d, 0), dt),
            rope_freqs=np.zeros(0),
            W_O=None,
            scale=1.0,
        )
    if U_K.shape[1] != W_Q.shape[1] or U_V.shape[1] % n_heads:
        raise ValueError(
            f"W_Q {W_Q.shape} and W_K/W_V columns ({U_K.shape[1]}, {U_V.shape[1]}) must "
            f"both be divisible into n_heads={n_heads} heads of equal size"
        )
    d_h = W_Q.shape[1] // n_heads
    d_v = U_V.shape[1] // n_heads
    W_Qh = W_Q.astype(dt).reshape(d, n_heads, d_h).transpose(1, 0, 2)
    W_UK = U_K.reshape(rank, n_heads, d_h).transpose(1, 0, 2)
    W_UV = U_V.reshape(rank, n_heads, d_v).transpose(1, 0, 2)
    return MLAWeights(
        W_DKV=D,
        W_UK=np.ascontiguousarray(W_UK),
        W_UV=np.ascontiguousarray(W_UV),
        W_Q=np.ascontiguousarray(W_Qh),
        W_QR=np.zeros((n_heads, d, 0), dt),
        W_KR=np.zeros((d, 0), dt),
        rope_freqs=np.zeros(0),
        W_O=_out_proj(W_O, n_heads, d_v, dt),
        scale=_scale(scale, d_h),
    )


def _scale(scale, d_h):
    if scale is None:
        return 1.0 / math.sqrt(d_h)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"scale={scale!r} must be a positive float")
    return float(scale)


def _out_proj(W_O, n_heads, d_v, dt):
    if W_O is None:
        return None
    W_O = as_float_array(W_O, name="W_O", ndim=2)
    if W_O.shape[0] != n_heads * d_v:
        raise ValueError(
            f"W_O must have shape (n_heads * d_v, d_out) = ({n_heads * d_v}, d_out), "
            f"got {W_O.shape}"
        )
    return np.ascontiguousarray(W_O.astype(dt).reshape(n_heads, d_v, -1))


# ---------------------------------------------------------------------------------------
# GQA with RoPE -> MLA
# ---------------------------------------------------------------------------------------


def _pair_scores(Wkf, Wqf, X):
    """2-norm criterion ||k_pair|| * sum_h ||q_h,pair|| per (virtual head, frequency)."""
    if X is None:
        kn = np.sqrt(np.einsum("djic,djic->ji", Wkf, Wkf))
        qn = np.sqrt(np.einsum("hdjic,hdjic->hji", Wqf, Wqf)).sum(axis=0)
    else:
        Kf = np.einsum("nd,djic->njic", X, Wkf, optimize=True)
        Qf = np.einsum("nd,hdjic->hnjic", X, Wqf, optimize=True)
        kn = np.sqrt(np.einsum("njic,njic->ji", Kf, Kf))
        qn = np.sqrt(np.einsum("hnjic,hnjic->hji", Qf, Qf)).sum(axis=0)
    return kn * qn


def gqa_to_mla(
    W_Q,
    W_K,
    W_V,
    rank,
    /,
    *,
    n_heads,
    n_kv_heads,
    rope_dims,
    rope_base=10000.0,
    freqfold=False,
    method="weight_svd",
    split=False,
    calibration=None,
    damping=0.01,
    W_O=None,
    scale=None,
    solver="randomized",
    rng=None,
) -> MLAConversion:
    r"""Convert a grouped-query attention layer with RoPE to MLA with decoupled RoPE.

    Parameters
    ----------
    W_Q : array_like, shape (d_model, n_heads * d_h)
        Query projection (before RoPE), interleaved RoPE layout: pair ``i`` of a head is
        columns ``(2i, 2i + 1)`` with frequency ``rope_base ** (-2 i / d_h)`` (the GGUF /
        llama.cpp layout; permute Hugging Face "half-split" weights first).
    W_K : array_like, shape (d_model, n_kv_heads * d_h)
        Key projection (before RoPE), same layout.
    W_V : array_like, shape (d_model, n_kv_heads * d_v)
        Value projection. Query head ``h`` uses kv head ``h // (n_heads // n_kv_heads)``.
    rank : int
        Latent dimension :math:`d_c` of the compressed non-rotary keys and values.
    n_heads, n_kv_heads : int
        Query and key/value heads (``n_heads % n_kv_heads == 0``).
    rope_dims : int
        :math:`d_R`, even, ``0 <= rope_dims <= n_kv_heads * d_h``: rotary key dimensions
        kept (cached, shared by all heads). The other pairs lose their rotation.
    rope_base : float, default=10000.0
        RoPE base of the original model.
    freqfold : bool, default=False
        ``True``: RoRoPE-style rotation (TransMLA [2]_): for every frequency ``i``, an
        orthogonal :math:`U_i` (eigenvectors of the kv-head covariance of the key pairs
        at that frequency) mixes the kv heads *before* selecting the rotary pairs, so
        the key energy of each frequency concentrates in the first "virtual head".
        ``False``: select among the original ``(kv head, pair)`` (MHA2MLA's partial
        RoPE [1]_).
    method, split, calibration, damping, W_O, scale, solver, rng
        As in :func:`mha_to_mla`; the factorised matrix is
        :math:`[W_K^{\mathrm{nope}}, W_V]`. Calibration rows also drive the 2-norm
        criterion and the RoRoPE covariances (weights are used without them).

    Returns
    -------
    MLAConversion
        Weights with ``W_QR`` (n_heads, d_model, d_R), ``W_KR`` (d_model, d_R) and the
        kept frequencies; cache :math:`d_c + d_R`; compression
        :math:`N_g(d_h + d_v)/(d_c + d_R)`; ``rope_kept`` = kept share of the 2-norm
        scores.

    Raises
    ------
    TypeError
        Non-integer sizes, non-bool ``split``/``freqfold``.
    ValueError
        Heads not divisible, odd ``d_h`` or ``rope_dims``, ``rope_dims`` larger than the
        key width, mismatched shapes, ``rank`` out of range.

    Notes
    -----
    **Why exact conversion is impossible under RoPE.** A RoPE score is
    :math:`q_s^TR_{t-s}k_t` with :math:`R_{t-s}` a rotation depending on the position
    difference, so :math:`q^TW_{UK}^Tc_t` becomes :math:`q^TR_{t-s}W_{UK}^Tc_t`: the
    product :math:`R_{t-s}W_{UK}^T` changes with every pair of positions and cannot be
    absorbed into one query matrix. MLA keeps RoPE only in :math:`d_R` decoupled
    dimensions; the pairs left out are scored without rotation, a change of the model
    that no rank recovers (it vanishes only when every pair is kept, or for the parts of
    the keys with small 2-norm score). A real orthogonal :math:`U_i` acting across
    heads on pair ``i`` commutes with the rotation of that pair (the same angle for all
    heads), so RoRoPE is exact before the selection.

    **2-norm criterion** (MHA2MLA): score of pair ``(j, i)`` =
    :math:`\|K_{j,i}\|_F\sum_h\|Q_{h,j,i}\|_F` (calibration activations, or weights);
    the top ``rope_dims / 2`` pairs stay rotary.

    Cost: one factorisation as in :func:`mha_to_mla` plus :math:`O(NdN_hN_gd_h)` for the
    scores.

    References
    ----------
    .. [1] T. Ji et al., "Towards economical inference: enabling DeepSeek's multi-head
       latent attention in any transformer-based LLMs" (MHA2MLA), arXiv:2502.14837.
    .. [2] F. Meng, Z. Yao, M. Zhang, "TransMLA: multi-head latent attention is all you
       need", arXiv:2502.07864.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.latent import gqa_to_mla
    >>> rng = np.random.default_rng(0)
    >>> WQ, WK, WV = (rng.standard_normal((32, c)) for c in (32, 16, 16))
    >>> conv = gqa_to_mla(WQ, WK, WV, 8, n_heads=4, n_kv_heads=2, rope_dims=4, rng=0)
    >>> conv.cache_size, conv.weights.W_QR.shape, conv.weights.W_KR.shape
    (12, (4, 32, 4), (32, 4))
    """
    W_Q, W_K, W_V, n_heads, n_kv, d_h, rope_dims, split = _check_gqa(
        W_Q, W_K, W_V, rank, n_heads, n_kv_heads, rope_dims, rope_base, freqfold, split
    )
    d = W_Q.shape[0]
    method, solver, X = _check_common(method, calibration, d, damping, solver)
    rng = check_rng(rng)
    dt = result_dtype(W_Q.dtype, W_K.dtype, W_V.dtype, *(() if X is None else (X.dtype,)))
    W_Q, W_K, W_V = (w.astype(dt, copy=False) for w in (W_Q, W_K, W_V))
    X = None if X is None else X.astype(dt, copy=False)
    P = d_h // 2
    d_v = W_V.shape[1] // n_kv
    group = np.arange(n_heads) // (n_heads // n_kv)
    freqs_all = float(rope_base) ** (-2.0 * np.arange(P) / d_h)

    Wkf, Wqf = _virtual_heads(W_K, W_Q, X, group, n_kv, P, freqfold, dt)
    (kj, ki), (nj, ni), rope_kept = _select_rope_pairs(Wkf, Wqf, X, rope_dims)
    W_KR = Wkf[:, kj, ki, :].reshape(d, rope_dims)
    W_QR = Wqf[:, :, kj, ki, :].reshape(n_heads, d, rope_dims)
    W_Kn = Wkf[:, nj, ni, :].reshape(d, -1)
    W_Qn = Wqf[:, :, nj, ni, :].reshape(n_heads, d, -1)

    opts = {"method": method, "split": split, "X": X, "damping": damping, "solver": solver}
    D, U_K, U_V, w_err, a_err = _compress_kv(W_Kn, W_V, rank, dt, rng=rng, **opts)
    W_UV = U_V.reshape(rank, n_kv, d_v).transpose(1, 0, 2)[group]
    weights = MLAWeights(
        W_DKV=D,
        W_UK=np.ascontiguousarray(np.broadcast_to(U_K, (n_heads, *U_K.shape))),
        W_UV=np.ascontiguousarray(W_UV),
        W_Q=np.ascontiguousarray(W_Qn),
        W_QR=np.ascontiguousarray(W_QR),
        W_KR=np.ascontiguousarray(W_KR),
        rope_freqs=freqs_all[ki],
        W_O=_out_proj(W_O, n_heads, d_v, dt),
        scale=_scale(scale, d_h),
    )
    cache = rank + rope_dims
    return MLAConversion(
        weights=weights,
        rank=rank,
        cache_size=cache,
        compression=n_kv * (d_h + d_v) / cache,
        weight_error=w_err,
        activation_error=a_err,
        rope_kept=rope_kept,
    )


def _check_gqa(W_Q, W_K, W_V, rank, n_heads, n_kv_heads, rope_dims, rope_base, freqfold, split):
    """Validate :func:`gqa_to_mla`'s layer shapes and RoPE options.

    Returns ``(W_Q, W_K, W_V, n_heads, n_kv, d_h, rope_dims, split)`` (arrays as floats).
    """
    W_Q = as_float_array(W_Q, name="W_Q", ndim=2)
    W_K = as_float_array(W_K, name="W_K", ndim=2)
    W_V = as_float_array(W_V, name="W_V", ndim=2)
    n_heads = check_int(n_heads, "n_heads", minimum=1)
    n_kv = check_int(n_kv_heads, "n_kv_heads", minimum=1)
    if n_heads % n_kv:
        raise ValueError(
            f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv} (grouped-query)"
        )
    d = W_Q.shape[0]
    if W_K.shape[0] != d or W_V.shape[0] != d:
        raise ValueError(
            f"W_Q {W_Q.shape}, W_K {W_K.shape}, W_V {W_V.shape} must share d_model rows"
        )
    if W_Q.shape[1] % n_heads:
        raise ValueError(f"W_Q columns {W_Q.shape[1]} not divisible by n_heads={n_heads}")
    d_h = W_Q.shape[1] // n_heads
    if W_K.shape[1] != n_kv * d_h or W_V.shape[1] % n_kv:
        raise ValueError(
            f"W_K must have n_kv_heads * d_h = {n_kv * d_h} columns and W_V a multiple of "
            f"{n_kv}, got {W_K.shape} and {W_V.shape}"
        )
    if d_h % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d_h={d_h}")
    rope_dims = check_int(rope_dims, "rope_dims", minimum=0)
    if rope_dims % 2 or rope_dims > n_kv * d_h:
        raise ValueError(
            f"rope_dims={rope_dims} must be even and <= n_kv_heads * d_h = {n_kv * d_h} "
            "(rotary pairs of the original keys)"
        )
    check_int(rank, "rank", minimum=1)
    split = _check_split(split)
    if not isinstance(freqfold, bool | np.bool_):
        raise TypeError(f"freqfold must be a bool, got {freqfold!r}")
    if not (isinstance(rope_base, int | float) and rope_base > 1):
        raise ValueError(f"rope_base={rope_base!r} must be a float > 1")
    return W_Q, W_K, W_V, n_heads, n_kv, d_h, rope_dims, split


def _virtual_heads(W_K, W_Q, X, group, n_kv, P, freqfold, dt):
    """Key and query weights of the "virtual" kv heads, split in RoPE pairs.

    Returns ``Wkf`` (d, n_kv, P, 2) and ``Wqf`` (n_heads, d, n_kv, P, 2). With
    ``freqfold`` (RoRoPE), frequency ``i`` mixes the kv heads by the eigenvectors
    :math:`U_i` of their covariance (decreasing energy); otherwise :math:`U_i = I`.
    """
    d = W_K.shape[0]
    Wk = W_K.reshape(d, n_kv, P, 2)
    Wq = W_Q.reshape(d, len(group), P, 2)
    if freqfold:
        # per-frequency covariance across kv heads of the (cos, sin) components
        if X is None:
            S = np.einsum("dgic,dkic->igk", Wk, Wk)
        else:
            Kp = np.einsum("nd,dgic->ngic", X, Wk, optimize=True)
            S = np.einsum("ngic,nkic->igk", Kp, Kp, optimize=True)
        _, U = np.linalg.eigh(S.astype(np.float64))
        U = U[:, :, ::-1].astype(dt)  # (P, n_kv, n_kv), columns by decreasing energy
    else:
        U = np.broadcast_to(np.eye(n_kv, dtype=dt), (P, n_kv, n_kv))
    Wkf = np.einsum("dgic,igj->djic", Wk, U)  # keys of the virtual heads
    # query head h sees virtual head j through U_i[g(h), j] (commutes with RoPE)
    Wqf = np.einsum("dhic,ihj->hdjic", Wq, U[:, group, :])
    return Wkf, Wqf


def _select_rope_pairs(Wkf, Wqf, X, rope_dims):
    """Select the ``rope_dims / 2`` (virtual head, pair) indices of largest 2-norm score.

    Returns ``((kj, ki), (nj, ni), rope_kept)``: kept and dropped head and pair indices
    (kept sorted), and the kept share of the scores.
    """
    n_kv, P = Wkf.shape[1], Wkf.shape[2]
    scores = _pair_scores(Wkf, Wqf, X)  # (n_kv, P)
    order = np.argsort(-scores.reshape(-1), kind="stable")
    kept = np.sort(order[: rope_dims // 2])
    total = float(scores.sum())
    rope_kept = float(scores.reshape(-1)[kept].sum()) / total if total > 0 else 1.0
    if rope_dims == n_kv * 2 * P:
        rope_kept = 1.0
    is_kept = np.zeros(n_kv * P, dtype=bool)
    is_kept[kept] = True
    nope = np.flatnonzero(~is_kept)
    return np.unravel_index(kept, (n_kv, P)), np.unravel_index(nope, (n_kv, P)), rope_kept


def _compress_kv(W_Kn, W_V, rank, dt, **opts):
    """Joint low-rank factors of ``[W_K^nope, W_V]`` (``W_V`` alone if every pair rotates).

    Returns ``(D, U_K, U_V, weight_error, activation_error)``.
    """
    if W_Kn.shape[1]:
        D, (U_K, U_V), w_err, a_err = _compress([W_Kn, W_V], rank, **opts)
    else:
        D, (U_V,), w_err, a_err = _compress([W_V], rank, **opts)
        U_K = np.zeros((rank, 0), dt)
    return D, U_K, U_V, w_err, a_err


# ---------------------------------------------------------------------------------------
# bounds
# ---------------------------------------------------------------------------------------


def latent_output_bound(
    Q, K, V, K_tilde, V_tilde=None, *, scale=None, logits="cauchy_schwarz", Y=None
) -> RowBound:
    r"""Deterministic bound on the attention-output error caused by perturbed keys/values.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries (exact).
    K, K_tilde : array_like, shape (..., m, d)
        Exact keys and their reconstruction (e.g. from the rank-:math:`d_c` latent).
    V : array_like, shape (..., m, dv)
        Exact values.
    V_tilde : array_like, shape (..., m, dv), optional
        Reconstructed values (default: ``V``, exact).
    scale : float, optional
        Score scale, default :math:`1/\sqrt d`.
    Y : array_like, shape (..., n, dv), optional
        Any reference point per row (e.g. the exact output): the row lemma then uses
        :math:`\max_j\|\tilde v_j - y_i\|` instead of :math:`2R` (valid for any
        :math:`y_i` because :math:`(\tilde p_i - p_i)\mathbf 1 = 0`).
    logits : {"cauchy_schwarz", "exact"}, default="cauchy_schwarz"
        How :math:`\delta_i \ge \max_j|\tilde s_{ij} - s_{ij}|` is obtained:
        ``"cauchy_schwarz"`` from norms only (:math:`O((n + m)d)`), ``"exact"`` by forming
        the score differences (:math:`O(nmd)`, much tighter on real data).

    Returns
    -------
    RowBound
        Per-row bounds on :math:`\|\tilde y_i - y_i\|_2` and their aggregates; valid with
        and without a causal mask (every quantity is maximised over all keys).

    Raises
    ------
    ValueError
        Mismatched shapes or non-finite input.

    Notes
    -----
    Entrywise logit perturbation:
    :math:`|\tilde s_{ij} - s_{ij}| = \mathrm{scale}\,|q_i^T(\tilde k_j - k_j)| \le
    \delta_i := \mathrm{scale}\,\|q_i\|\max_j\|\tilde k_j - k_j\|` (Cauchy-Schwarz; in
    matrix form :math:`\|QK^T - Q\tilde K^T\|_2 \le \|Q\|_2\|K - \tilde K\|_2`). Then
    :math:`\tilde p_{ij}/p_{ij}\in[e^{-2\delta_i}, e^{2\delta_i}]`, which gives the
    textbook :math:`\|\tilde p_i - p_i\|_1 \le e^{2\delta_i} - 1`; we use the sharp
    :math:`\|\tilde p_i - p_i\|_1 \le 2\tanh(\delta_i/2)` (smaller, and at most 2):
    with :math:`S = \{j : \tilde p_{ij} > p_{ij}\}`, :math:`a = p_i(S)`, the odds
    :math:`\tilde p_i(S)/\tilde p_i(S^c)` are at most :math:`e^{2\delta_i}a/(1 - a)`,
    so :math:`\tilde p_i(S) - a \le \max_a [ac/(1 + a(c - 1)) - a] =
    \tanh(\delta_i/2)` with :math:`c = e^{2\delta_i}`, attained at
    :math:`a = 1/(1 + e^{\delta_i})`. With
    :math:`\tilde y_i - y_i = (\tilde p_i - p_i)\tilde V + p_i(\tilde V - V)`, the first
    term is bounded by the normaliser-aware lemma
    (:func:`attention.bounds.row_lemma` with :math:`\tilde z_i = 1` and values
    :math:`\tilde V`) and the second by :math:`\max_j\|\tilde v_j - v_j\|`. For a
    weight-space truncation, :math:`\|\tilde k_j - k_j\| \le \|x_j\|\,\|W_K - \tilde
    W_K\|_2` and :math:`\|W_K - \tilde W_K\|_2 = \sigma_{r+1}` for the exact SVD.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.latent import latent_output_bound
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((3, 5, 4))
    >>> latent_output_bound(Q, K, V, K + 1e-3).rows.shape
    (5,)
    """
    Q = as_float_array(Q, name="Q").astype(np.float64)
    K = as_float_array(K, name="K").astype(np.float64)
    Kt = as_float_array(K_tilde, name="K_tilde").astype(np.float64)
    V = as_float_array(V, name="V").astype(np.float64)
    Vt = V if V_tilde is None else as_float_array(V_tilde, name="V_tilde").astype(np.float64)
    if Q.ndim < 2 or K.shape != Kt.shape or V.shape != Vt.shape or Q.shape[-1] != K.shape[-1]:
        raise ValueError(
            f"shapes must be Q (..., n, d), K and K_tilde (..., m, d), V and V_tilde "
            f"(..., m, dv); got Q {Q.shape}, K {K.shape}, K_tilde {Kt.shape}, V {V.shape}, "
            f"V_tilde {Vt.shape}"
        )
    if K.shape[-2] != V.shape[-2]:
        raise ValueError(f"K {K.shape} and V {V.shape} must have the same number of keys")
    s = _scale(scale, Q.shape[-1])
    logits = check_option(logits, ("cauchy_schwarz", "exact"), "logits")
    if logits == "exact":
        # maximum over all keys (also valid under a causal mask)
        delta = s * np.abs(np.einsum("...nd,...md->...nm", Q, Kt - K)).max(axis=-1)
    else:
        dk = np.linalg.norm(Kt - K, axis=-1).max(axis=-1)  # (...)
        delta = s * np.linalg.norm(Q, axis=-1) * dk[..., None]
    # sharp softmax perturbation bound ||~p_i - p_i||_1 <= 2 tanh(delta_i / 2) (<= 2 and
    # <= exp(2 delta_i) - 1); the row lemma (~z_i = 1) turns it into an output bound
    p_err = 2.0 * np.tanh(delta / 2.0)
    first = row_lemma(p_err, np.ones_like(p_err), Vt, Y=Y).rows
    dv = np.linalg.norm(Vt - V, axis=-1).max(axis=-1)
    rows = first + dv[..., None]
    assumptions = (
        "latent-attention perturbation bound: |~s_ij - s_ij| <= delta_i "
        f"({logits}: scale ||q_i|| max_j ||~k_j - k_j|| or computed), "
        "||~p_i - p_i||_1 <= 2 tanh(delta_i / 2) <= exp(2 delta_i) - 1, "
        "row lemma on ~V (radius about its centroid) + max_j ||~v_j - v_j||"
    )
    return _aggregate(np.asarray(rows, dtype=np.float64), assumptions)
