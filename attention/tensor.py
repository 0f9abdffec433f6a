r"""Tensor methods for attention (survey §7): weight compression and tensorised attention.

=================================  ======================================================
function                           method
=================================  ======================================================
:func:`collaborative_heads`        Collaborative MHA: CP of the stacked per-head
                                   :math:`W_Q^hW_K^{hT}` (shared projections + mixing)
:func:`compress_stacked_weights`   TRAWL / Ren et al.: weight matrices stacked across
                                   layers, compressed by SVD, shared factors, Tucker or TT
:func:`tpa_factorize`              Tensor Product Attention: per-token rank-:math:`R`
                                   factorisation of the ``(heads, head_dim)`` slice
:func:`tpa_attention`              attention with TPA-factorised keys and values, its KV
                                   cache and a deterministic output bound
:func:`third_order_attention`      Sanford et al.: :math:`D^{-1}A(V_1 * V_2)` with
                                   :math:`A = \exp(Q(K_1 * K_2)^T s)`, blockwise
:func:`kronecker_attention`        Higher-Order Transformers: :math:`\sum_h w_h
                                   S_h^{(1)}\otimes S_h^{(2)}` on 2-D inputs
:func:`logit_error_bound`          perturbed :math:`Q, K` :math:`\Rightarrow` row-wise
                                   bound on the logit error
:func:`logit_output_bound`         logit error :math:`\Rightarrow` output error (row lemma)
=================================  ======================================================

The bounds chain is the same for every method that perturbs queries, keys or values: an
a-priori truncation bound (Eckart-Young, TT-SVD, Tucker) bounds the perturbation of
:math:`q_i, k_j`; :func:`logit_error_bound` turns it into
:math:`\delta_i \ge \max_j|\tilde s_{ij} - s_{ij}|`; then :math:`|\tilde a_{ij} - a_{ij}|
\le \tilde a_{ij}(e^{\delta_i} - 1)` and the normaliser-aware lemma
(:func:`attention.bounds.row_lemma`) give :math:`\|\tilde y_i - y_i\| \le
(e^{\delta_i} - 1)\max_j\|v_j - y_i\|` (:func:`logit_output_bound`); equivalently the
attention weights satisfy :math:`\|\tilde p_i - p_i\|_1 \le e^{2\delta_i} - 1`.

References
----------
- [CJ20] J.-B. Cordonnier, A. Loukas, M. Jaggi, "Multi-head attention: collaborate instead
  of concatenate", 2020. arXiv:2006.16362.
- [RTS22] Y. Ren, B. Wang, L. Shang, X. Jiang, Q. Liu, "Exploring extreme parameter
  compression for pre-trained language models", ICLR 2022. arXiv:2205.10036.
- [TPA25] Y. Zhang et al., "Tensor product attention is all you need", 2025.
  arXiv:2501.06425.
- [SHT23] C. Sanford, D. Hsu, M. Telgarsky, "Representational strengths and limitations of
  transformers", NeurIPS 2023. arXiv:2306.02896.
- [HOT24] S. Omranpour, G. Rabusseau, R. Rabbany, "Higher order transformers: efficient
  attention mechanism for tensor structured data", 2024. arXiv:2412.02919.
- [Ose11] I. V. Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5), 2011.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac

from attention._core import _check_scale
from attention.bounds import RowBound, row_lemma
from rnla._validation import (
    as_float_array,
    check_int,
    check_option,
    check_rng,
    result_dtype,
)
from rnla.tensor import randomized_tt_svd, randomized_tucker, tt_svd

__all__ = [
    "CollaborativeHeads",
    "StackedCompression",
    "TPAFactors",
    "TPAResult",
    "TensorAttentionOutput",
    "collaborative_heads",
    "compress_stacked_weights",
    "kronecker_attention",
    "logit_error_bound",
    "logit_output_bound",
    "third_order_attention",
    "tpa_attention",
    "tpa_factorize",
]


# ---------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------


class CollaborativeHeads(NamedTuple):
    r"""Collaborative multi-head attention weights (see :func:`collaborative_heads`).

    Attributes
    ----------
    W_Q, W_K : ndarray, shape (d, R)
        Shared query and key projections :math:`\tilde W_Q, \tilde W_K`.
    mixing : ndarray, shape (h, R)
        Per-head mixing vectors :math:`M_h`:
        :math:`W_Q^hW_K^{hT} \approx \tilde W_Q\,\mathrm{diag}(M_h)\tilde W_K^T`.
    n_params : int
        :math:`2dR + hR`.
    original_params : int
        :math:`2\,h\,d\,d_{\text{head}}`.
    relative_error : float
        :math:`\|\mathcal T - [\![M, \tilde W_Q, \tilde W_K]\!]\|_F / \|\mathcal T\|_F`
        of the stacked products :math:`\mathcal T_h = W_Q^hW_K^{hT}`.
    logit_error : float
        :math:`\|S - \tilde S\|_F / \|S\|_F` over all heads of the logits
        :math:`S_h = XW_Q^hW_K^{hT}X^T` when ``X`` is given, else NaN.
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    mixing: np.ndarray
    n_params: int
    original_params: int
    relative_error: float
    logit_error: float


class StackedCompression(NamedTuple):
    r"""Weight matrices compressed jointly (see :func:`compress_stacked_weights`).

    Attributes
    ----------
    weights : ndarray, shape (L, m, n)
        Reconstructed matrices :math:`\tilde X_i`.
    n_params : int
        Parameters of the compressed representation.
    original_params : int
        :math:`Lmn`.
    relative_error : float
        :math:`\|\mathcal X - \tilde{\mathcal X}\|_F / \|\mathcal X\|_F` (computed).
    error_bound : float
        A-priori/algorithmic bound on :math:`\|\mathcal X - \tilde{\mathcal X}\|_F`
        (absolute): Eckart-Young tails, the TT-SVD or Tucker discarded mass.
    spectral_errors : ndarray, shape (L,)
        :math:`\|X_i - \tilde X_i\|_2` per matrix (computed).
    ranks : tuple of int
        Ranks used (per method: ``(r,)``, ``(r1, r2)``, Tucker ``(r_L, r1, r2)``, TT
        ``(1, r1, r2, 1)``).
    method : str
    """

    weights: np.ndarray
    n_params: int
    original_params: int
    relative_error: float
    error_bound: float
    spectral_errors: np.ndarray
    ranks: tuple[int, ...]
    method: str


class TPAFactors(NamedTuple):
    r"""Per-token rank-:math:`R` factors :math:`X_t \approx \sum_r a_{t,r} b_{t,r}^T`.

    Attributes
    ----------
    a : ndarray, shape (n, R, h)
        Head factors (singular values folded in).
    b : ndarray, shape (n, R, d)
        Feature factors (orthonormal over ``r`` for each token).
    tails : ndarray of float64, shape (n,)
        :math:`\|X_t - \tilde X_t\|_F = (\sum_{j > R}\sigma_j(X_t)^2)^{1/2}` (Eckart-Young:
        the optimum over rank-:math:`R` slices).
    relative_error : float
        :math:`\|X - \tilde X\|_F / \|X\|_F`.
    """

    a: np.ndarray
    b: np.ndarray
    tails: np.ndarray
    relative_error: float

    def reconstruct(self) -> np.ndarray:
        """Return the approximation, shape ``(n, h, d)``."""
        return np.matmul(self.a.transpose(0, 2, 1), self.b)


class TPAResult(NamedTuple):
    r"""Attention with TPA-factorised keys and values (see :func:`tpa_attention`).

    Attributes
    ----------
    output : ndarray, shape (h, n, dv)
    cache_per_token : int
        :math:`(R_K + R_V)(h + d_{\text{head}})` numbers.
    dense_cache_per_token : int
        :math:`2\,h\,d_{\text{head}}`.
    key_error, value_error : float
        Relative Frobenius errors of the factorised keys and values.
    bound : RowBound
        Deterministic bound on :math:`\|\tilde Y - Y\|` per head and row, shape
        ``(h, n)`` in ``bound.rows``.
    """

    output: np.ndarray
    cache_per_token: int
    dense_cache_per_token: int
    key_error: float
    value_error: float
    bound: RowBound


class TensorAttentionOutput(NamedTuple):
    r"""Output of a tensorised attention and the log-normaliser of every row.

    Attributes
    ----------
    output : ndarray, shape (n, dv)
    lse : ndarray, shape (n,)
        :math:`\log\sum_{j,k} A_{i,(j,k)}`.
    """

    output: np.ndarray
    lse: np.ndarray


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _softmax_rows(S: np.ndarray) -> np.ndarray:
    S = S - S.max(axis=-1, keepdims=True)
    P = np.exp(S)
    return P / P.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Collaborative MHA
# ---------------------------------------------------------------------------------------


def _parafac(T: np.ndarray, R: int, n_iter_max: int, init: str, seed: int):
    """Run tensorly's CP-ALS, with a tiny ridge if the normal equations are singular.

    On rank-deficient tensors ALS is rerun with ``l2_reg = 1e-12 ||T||^2``, which only
    regularises the least squares.
    """
    kw = {
        "n_iter_max": n_iter_max,
        "init": init,
        "random_state": seed,
        "tol": 1e-10,
        "normalize_factors": False,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        try:
            return parafac(tl.tensor(T), R, **kw)
        except np.linalg.LinAlgError:
            ridge = 1e-12 * float(np.sum(T * T))
            return parafac(tl.tensor(T), R, l2_reg=ridge, **kw)


def collaborative_heads(
    W_Q, W_K, rank, /, *, X=None, n_iter_max=100, init="svd", rng=None
) -> CollaborativeHeads:
    r"""Collaborative multi-head attention: a CP decomposition of the per-head products.

    Parameters
    ----------
    W_Q, W_K : array_like, shape (h, d, d_head)
        Per-head query and key projections (``q^h = x W_Q^h``).
    rank : int
        CP rank :math:`R \ge 1` (the shared key/query dimension).
    X : array_like, shape (n, d), optional
        Inputs on which to report the relative logit error.
    n_iter_max : int, default=100
        ALS iterations of :func:`tensorly.decomposition.parafac`.
    init : {"svd", "random"}, default="svd"
        Initialisation of ALS; ``"random"`` draws from ``rng``.
    rng : None, int, SeedSequence or Generator, optional
        Seeds the ALS initialisation (``"random"``, and the random padding of
        ``"svd"`` when ``R > min(h, d)``).

    Returns
    -------
    CollaborativeHeads
        ``W_Q, W_K`` of shape ``(d, R)``, ``mixing`` of shape ``(h, R)``, parameter
        counts, relative tensor error and relative logit error.

    Raises
    ------
    TypeError
        Complex input, non-integer ``rank``.
    ValueError
        Shapes that differ or are not 3-D, ``rank < 1``, unknown ``init``.

    Notes
    -----
    The stacked products :math:`\mathcal T_h = W_Q^hW_K^{hT}` form a tensor of shape
    :math:`h \times d \times d`; a CP decomposition :math:`\mathcal T \approx
    [\![M, \tilde W_Q, \tilde W_K]\!]` gives :math:`W_Q^hW_K^{hT} \approx \tilde W_Q
    \mathrm{diag}(M_h)\tilde W_K^T`: every head uses the shared projections
    :math:`x\tilde W_Q, x\tilde W_K` reweighted by its mixing vector [1]_ (survey §7.2).
    For :math:`R \ge h\,d_{\text{head}}` the concatenated heads
    :math:`\tilde W_Q = [W_Q^1, \dots, W_Q^h]` with block-indicator mixing are an exact
    CP and are returned without ALS. Otherwise ALS (tensorly ``parafac``, cost
    :math:`O(R\,h\,d^2)` per sweep) is run; CP has no Eckart-Young theorem, so the error
    is computed, not bounded a priori, and ALS finds a local optimum.

    References
    ----------
    .. [1] J.-B. Cordonnier, A. Loukas, M. Jaggi, "Multi-head attention: collaborate
       instead of concatenate", 2020. arXiv:2006.16362.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.random.default_rng(0).standard_normal((4, 16, 4))
    >>> res = collaborative_heads(W, W, 6, rng=0)
    >>> res.W_Q.shape, res.mixing.shape
    ((16, 6), (4, 6))
    """
    W_Q = as_float_array(W_Q, name="W_Q", ndim=3)
    W_K = as_float_array(W_K, name="W_K", ndim=3)
    if W_Q.shape != W_K.shape:
        raise ValueError(
            f"W_Q and W_K must have the same shape (h, d, d_head), got {W_Q.shape} and {W_K.shape}"
        )
    h, d, dh = W_Q.shape
    R = check_int(rank, "rank", minimum=1)
    n_iter_max = check_int(n_iter_max, "n_iter_max", minimum=1)
    check_option(init, ("svd", "random"), "init")
    rng = check_rng(rng)
    dtype = result_dtype(W_Q.dtype, W_K.dtype)
    W_Q64, W_K64 = W_Q.astype(np.float64), W_K.astype(np.float64)
    T = W_Q64 @ W_K64.transpose(0, 2, 1)
    if not np.any(T):
        # zero weights: the zero CP is exact (ALS would meet singular normal equations)
        A, B, M = np.zeros((d, R)), np.zeros((d, R)), np.zeros((h, R))
    elif R >= h * dh:
        # exact CP: concatenated heads, mixing = block indicators (zero-padded columns)
        A = np.zeros((d, R))
        B = np.zeros((d, R))
        M = np.zeros((h, R))
        A[:, : h * dh] = W_Q64.transpose(1, 0, 2).reshape(d, h * dh)
        B[:, : h * dh] = W_K64.transpose(1, 0, 2).reshape(d, h * dh)
        for k in range(h):
            M[k, k * dh : (k + 1) * dh] = 1.0
    else:
        # the seed also feeds tensorly's padding of the "svd" init when R > min(h, d)
        seed = int(rng.integers(2**31 - 1))
        weights, (M, A, B) = _parafac(T, R, n_iter_max, init, seed)
        M = M * np.asarray(weights)[None, :]
        # balance the two projections so neither carries the scale
        na = np.linalg.norm(A, axis=0)
        nb = np.linalg.norm(B, axis=0)
        good = (na > 0) & (nb > 0)
        c = np.ones(R)
        c[good] = np.sqrt(nb[good] / na[good])
        A, B = A * c, B / c
    T_hat = np.einsum("hr,ir,jr->hij", M, A, B, optimize=True)
    nT = float(np.linalg.norm(T))
    rel = float(np.linalg.norm(T - T_hat)) / nT if nT > 0 else 0.0
    logit = math.nan
    if X is not None:
        X = as_float_array(X, name="X", ndim=2).astype(np.float64)
        if X.shape[1] != d:
            raise ValueError(f"X must have shape (n, d={d}), got {X.shape}")
        # (X T_h) X^T per head: O(h n d (d + n)), not a naive three-operand einsum
        S = np.matmul(X @ T, X.T)
        S_hat = np.matmul(X @ T_hat, X.T)
        nS = float(np.linalg.norm(S))
        logit = float(np.linalg.norm(S - S_hat)) / nS if nS > 0 else 0.0
    return CollaborativeHeads(
        A.astype(dtype),
        B.astype(dtype),
        M.astype(dtype),
        2 * d * R + h * R,
        2 * h * d * dh,
        rel,
        logit,
    )


# ---------------------------------------------------------------------------------------
# TRAWL / Ren et al.: stacked weight compression
# ---------------------------------------------------------------------------------------

_METHODS = ("svd", "shared", "tucker", "tt")


def _rank_tuple(rank, count: int, limits: Sequence[int], method: str) -> tuple[int, ...]:
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        r = check_int(rank, "rank", minimum=1)
        return tuple(min(r, lim) for lim in limits)
    if isinstance(rank, str) or not isinstance(rank, Sequence | np.ndarray):
        raise TypeError(f"rank must be an int or a sequence of {count} ints, got {rank!r}")
    if len(rank) != count:
        raise ValueError(f"method={method!r} takes {count} ranks, got {len(rank)}: {rank!r}")
    return tuple(
        check_int(r, f"rank[{k}]", minimum=1, maximum=lim)
        for k, (r, lim) in enumerate(zip(rank, limits, strict=True))
    )


def compress_stacked_weights(
    Ws, method, rank, /, *, randomized=False, oversample=10, n_iter=1, rng=None
) -> StackedCompression:
    r"""Compress weight matrices stacked across layers (TRAWL / Ren et al. 2022).

    Parameters
    ----------
    Ws : array_like, shape (L, m, n)
        ``L`` weight matrices of the same shape (e.g. the query, key, value and output
        projections of every layer).
    method : {"svd", "shared", "tucker", "tt"}
        ``"svd"``: per-matrix truncated SVD, :math:`X_i \approx U_iS_iV_i^T` (rank
        ``r``). ``"shared"``: shared factors :math:`X_i \approx BG_iC^T` with
        :math:`B \in \mathbb R^{m\times r_1}, C \in \mathbb R^{n\times r_2}` (ranks
        ``(r1, r2)``; Tucker-2, the layer mode kept). ``"tucker"``: Tucker of the
        :math:`L\times m\times n` tensor, ranks ``(r_L, r1, r2)``. ``"tt"``: tensor train
        of the :math:`L\times m\times n` tensor, inner ranks ``(r1, r2)``.
    rank : int or sequence of int
        One int (applied to every mode/bond, clamped) or the per-method tuple above.
    randomized : bool, default=False
        ``"tt"`` only: :func:`rnla.tensor.randomized_tt_svd` instead of
        :func:`rnla.tensor.tt_svd`. (``"shared"`` and ``"tucker"`` always use
        :func:`rnla.tensor.randomized_tucker`, which takes exact SVD steps when they are
        no more expensive.)
    oversample, n_iter : int, default=10, 1
        Range-finder parameters of the randomized algorithms.
    rng : None, int, SeedSequence or Generator, optional

    Returns
    -------
    StackedCompression
        Reconstructed ``weights (L, m, n)``, parameter counts, relative error, error
        bound, per-matrix spectral errors, ranks and method.

    Raises
    ------
    TypeError
        Complex input, non-integer ranks.
    ValueError
        Not 3-D, unknown method, ranks of the wrong length or out of range.

    Notes
    -----
    Parameter counts (``L`` matrices of shape ``m x n``): SVD :math:`Lr(m+n)`; shared
    :math:`mr_1 + nr_2 + Lr_1r_2`; Tucker :math:`r_Lr_1r_2 + Lr_L + mr_1 + nr_2`; TT
    :math:`Lr_1 + r_1mr_2 + r_2n`. Ren et al. [1]_ compress the 12 layers of BERT-base
    with the shared and Tucker forms (86M to about 1.9M parameters, survey §7.2).

    Bounds: SVD is optimal per matrix (Eckart-Young-Mirsky), error
    :math:`(\sum_i\sum_{j>r}\sigma_j(X_i)^2)^{1/2}` and spectral error
    :math:`\sigma_{r+1}(X_i)`; TT-SVD satisfies
    :math:`\|\mathcal X - \mathrm{TT}\|_F \le (\sum_k\tau_k^2)^{1/2}` (Oseledets 2011,
    Thm 2.2; :func:`rnla.bounds.tt_svd_bound`); the sequentially truncated HOSVD
    error is the discarded mass of its nested projections (exact; expected-error bound
    :func:`rnla.bounds.randomized_tucker_bound`). In every case the per-matrix spectral
    error is at most the total Frobenius error, which carries to the logits through
    :func:`logit_error_bound`.

    Cost: SVD :math:`O(Lmn\min(m, n))`; Tucker/TT about one SVD of each unfolding
    (:func:`rnla.tensor.tt_svd`, :func:`rnla.tensor.randomized_tucker`).

    References
    ----------
    .. [1] Y. Ren, B. Wang, L. Shang, X. Jiang, Q. Liu, "Exploring extreme parameter
       compression for pre-trained language models", ICLR 2022. arXiv:2205.10036.

    Examples
    --------
    >>> import numpy as np
    >>> Ws = np.random.default_rng(0).standard_normal((4, 20, 30))
    >>> res = compress_stacked_weights(Ws, "tucker", (4, 5, 6), rng=0)
    >>> res.weights.shape, res.n_params, res.ranks
    ((4, 20, 30), 416, (4, 5, 6))
    """
    X = as_float_array(Ws, name="Ws", ndim=3)
    method = check_option(method, _METHODS, "method")
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(n_iter, "n_iter", minimum=0)
    rng = check_rng(rng)
    L, m, n = X.shape
    if method == "svd":
        (r,) = _rank_tuple(rank, 1, [min(m, n)], method)
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        Xh = (U[:, :, :r] * s[:, None, :r]) @ Vt[:, :r, :]
        bound = float(np.sqrt(np.sum(s[:, r:].astype(np.float64) ** 2)))
        ranks, n_params = (r,), L * r * (m + n)
    elif method == "shared":
        r1, r2 = _rank_tuple(rank, 2, [m, n], method)
        res = randomized_tucker(X, [L, r1, r2], oversample=p, n_iter=q, rng=rng)
        Xh = tl.tucker_to_tensor(res.tucker)
        bound, ranks = res.error_bound, (r1, r2)
        n_params = m * r1 + n * r2 + L * r1 * r2
    elif method == "tucker":
        rL, r1, r2 = _rank_tuple(rank, 3, [L, m, n], method)
        res = randomized_tucker(X, [rL, r1, r2], oversample=p, n_iter=q, rng=rng)
        Xh = tl.tucker_to_tensor(res.tucker)
        bound, ranks = res.error_bound, (rL, r1, r2)
        n_params = rL * r1 * r2 + L * rL + m * r1 + n * r2
    else:
        r1, r2 = _rank_tuple(rank, 2, [min(L, m * n), min(L * m, n)], method)
        if randomized:
            res = randomized_tt_svd(X, [r1, r2], oversample=p, n_iter=q, rng=rng)
        else:
            res = tt_svd(X, rank=[r1, r2])
        Xh = tl.tt_to_tensor(res.tt)
        bound, ranks = res.error_bound, tuple(int(r) for r in res.ranks)
        n_params = int(sum(c.size for c in res.tt))
    Xh = np.asarray(Xh, dtype=X.dtype)
    E = X.astype(np.float64) - Xh
    nX = float(np.linalg.norm(X.astype(np.float64)))
    rel = float(np.linalg.norm(E)) / nX if nX > 0 else 0.0
    spectral = np.linalg.norm(E, ord=2, axis=(1, 2))
    return StackedCompression(
        np.ascontiguousarray(Xh),
        int(n_params),
        L * m * n,
        rel,
        float(bound),
        spectral,
        tuple(int(r) for r in ranks),
        method,
    )


# ---------------------------------------------------------------------------------------
# bounds: perturbed Q, K -> logits -> output
# ---------------------------------------------------------------------------------------


def logit_error_bound(Q_tilde, K_tilde, q_err, k_err, /, *, scale=None) -> np.ndarray:
    r"""Row-wise bound on the logit error from perturbation radii of queries and keys.

    Parameters
    ----------
    Q_tilde : array_like, shape (..., n, d)
        Approximate queries.
    K_tilde : array_like, shape (..., m, d)
        Approximate keys.
    q_err : array_like, shape (..., n)
        :math:`\epsilon^Q_i \ge \|q_i - \tilde q_i\|_2` (0 when queries are exact).
    k_err : array_like, shape (..., m)
        :math:`\epsilon^K_j \ge \|k_j - \tilde k_j\|_2`.
    scale : float, optional
        Logit scale, default :math:`1/\sqrt d`.

    Returns
    -------
    ndarray of float64, shape (..., n)
        :math:`\delta_i = |s|\max_j(\epsilon^Q_i\|\tilde k_j\| + \|\tilde q_i\|\epsilon^K_j
        + \epsilon^Q_i\epsilon^K_j) \ge \max_j|\tilde s_{ij} - s_{ij}|`.

    Raises
    ------
    ValueError
        Negative radii, mismatched shapes.

    Notes
    -----
    :math:`q_i^Tk_j - \tilde q_i^T\tilde k_j = e_i^T\tilde k_j + \tilde q_i^Tf_j +
    e_i^Tf_j` with :math:`e_i = q_i - \tilde q_i`, :math:`f_j = k_j - \tilde k_j`;
    Cauchy-Schwarz on each term. Only approximate quantities and radii enter, so the
    bound is computable without the exact :math:`Q, K`. Radii come from truncation
    bounds: Eckart-Young (:math:`\|X E^T\|` with :math:`\|E\|_2 = \sigma_{r+1}`), TT-SVD
    or Tucker (:math:`\|E\|_2 \le \|E\|_F \le` the algorithm's bound). Cost
    :math:`O((n + m)d)`.

    Examples
    --------
    >>> import numpy as np
    >>> Q = np.ones((3, 4)); K = np.ones((5, 4))
    >>> logit_error_bound(Q, K, np.zeros(3), np.full(5, 0.1)).shape
    (3,)
    """
    Qt = as_float_array(Q_tilde, name="Q_tilde").astype(np.float64)
    Kt = as_float_array(K_tilde, name="K_tilde").astype(np.float64)
    if Qt.ndim < 2 or Kt.ndim < 2 or Qt.shape[-1] != Kt.shape[-1]:
        raise ValueError(
            f"Q_tilde (..., n, d) and K_tilde (..., m, d) must share d, got {Qt.shape} and "
            f"{Kt.shape}"
        )
    eq = as_float_array(q_err, name="q_err").astype(np.float64)
    ek = as_float_array(k_err, name="k_err").astype(np.float64)
    if eq.ndim < 1 or eq.shape[-1] != Qt.shape[-2]:
        raise ValueError(f"q_err must have shape (..., n={Qt.shape[-2]}), got {eq.shape}")
    if ek.ndim < 1 or ek.shape[-1] != Kt.shape[-2]:
        raise ValueError(f"k_err must have shape (..., m={Kt.shape[-2]}), got {ek.shape}")
    if (eq < 0).any() or (ek < 0).any():
        raise ValueError("q_err and k_err must be >= 0 (they bound norms)")
    s = abs(_check_scale(scale, Qt.shape[-1], positive=False))
    nq = np.linalg.norm(Qt, axis=-1)
    nk = np.linalg.norm(Kt, axis=-1)
    t = (
        eq[..., :, None] * nk[..., None, :]
        + nq[..., :, None] * ek[..., None, :]
        + eq[..., :, None] * ek[..., None, :]
    )
    return s * t.max(axis=-1)


def logit_output_bound(delta, V, /, *, v_err=None, Y=None) -> RowBound:
    r"""Output-error bound from a row-wise logit-error bound (normaliser-aware lemma).

    Parameters
    ----------
    delta : array_like, shape (..., n)
        :math:`\delta_i \ge \max_j|\tilde s_{ij} - s_{ij}|` (scaled logits), e.g. from
        :func:`logit_error_bound`.
    V : array_like, shape (..., m, dv)
        Exact values.
    v_err : array_like, shape (..., m), optional
        :math:`\|\tilde v_j - v_j\|` when the output uses approximate values
        :math:`\tilde V`; adds :math:`\max_j` of it to every row.
    Y : array_like, shape (..., n, dv), optional
        Exact output (tightens :math:`\max_j\|v_j - y_i\|`; see
        :func:`attention.bounds.row_lemma`).

    Returns
    -------
    RowBound
        Per-row bounds on :math:`\|\tilde y_i - y_i\|_2` and their ``fro``/``row_max``
        aggregates.

    Raises
    ------
    ValueError
        Negative or NaN ``delta``, shapes that do not broadcast.

    Notes
    -----
    :math:`|\tilde a_{ij} - a_{ij}| = \tilde a_{ij}|1 - e^{s_{ij} - \tilde s_{ij}}| \le
    \tilde a_{ij}(e^{\delta_i} - 1)`, so :math:`\|a_i - \tilde a_i\|_1/\tilde z_i \le
    e^{\delta_i} - 1` and the row lemma gives :math:`\|\tilde y_i - y_i\| \le
    (e^{\delta_i} - 1)\max_j\|v_j - y_i\|`. (The weights themselves satisfy
    :math:`\|\tilde p_i - p_i\|_1 \le e^{2\delta_i} - 1`.) With approximate values,
    :math:`\tilde P\tilde V - PV = (\tilde P - P)V + \tilde P(\tilde V - V)` and the
    second term is a convex combination of the :math:`\tilde v_j - v_j`.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.random.default_rng(0).standard_normal((6, 3))
    >>> logit_output_bound(np.full(4, 0.01), V).rows.shape
    (4,)
    """
    d = as_float_array(delta, name="delta").astype(np.float64)
    if np.isnan(d).any() or (d < 0).any():
        raise ValueError("delta must be >= 0 (it bounds absolute logit errors)")
    with np.errstate(over="ignore"):
        err = np.expm1(d)
    rb = row_lemma(err, np.ones_like(err), V, Y=Y)
    if v_err is None:
        return rb
    ev = as_float_array(v_err, name="v_err").astype(np.float64)
    if (ev < 0).any():
        raise ValueError("v_err must be >= 0 (it bounds norms)")
    rows = rb.rows + ev.max(axis=-1, keepdims=True)
    fro = math.sqrt(float(np.sum(rows**2)))
    return RowBound(
        rows,
        rb.fro._replace(value=fro, assumptions=rb.fro.assumptions + "; + max_j ||~v_j - v_j||"),
        rb.row_max._replace(
            value=float(rows.max()) if rows.size else 0.0,
            assumptions=rb.row_max.assumptions + "; + max_j ||~v_j - v_j||",
        ),
    )


# ---------------------------------------------------------------------------------------
# Tensor Product Attention
# ---------------------------------------------------------------------------------------


def tpa_factorize(X, rank, /) -> TPAFactors:
    r"""Per-token rank-:math:`R` factorisation of activations (Tensor Product Attention).

    Parameters
    ----------
    X : array_like, shape (n, h, d)
        Per-token query, key or value slices (``h`` heads of dimension ``d``).
    rank : int
        :math:`1 \le R \le \min(h, d)`.

    Returns
    -------
    TPAFactors
        ``a (n, R, h)``, ``b (n, R, d)``, per-token ``tails (n,)``, ``relative_error``;
        ``.reconstruct()`` gives ``(n, h, d)``.

    Raises
    ------
    TypeError
        Complex input, non-integer ``rank``.
    ValueError
        Not 3-D, rank out of range, non-finite entries.

    Notes
    -----
    TPA [1]_ writes every token's slice as :math:`X_t = \frac1R\sum_r a_r(x_t)\otimes
    b_r(x_t)`, with factors produced by trained projections. For a pretrained model the
    best such factorisation of given activations is, token by token, the truncated SVD
    of the :math:`h\times d` slice (Eckart-Young: optimal in Frobenius and spectral
    norm); the :math:`1/R` is absorbed in :math:`a`. Cache per token:
    :math:`R(h + d)` numbers instead of :math:`hd` (survey §7.2). Cost: one batched SVD,
    :math:`O(n\,hd\min(h, d))`.

    References
    ----------
    .. [1] Y. Zhang et al., "Tensor product attention is all you need", 2025.
       arXiv:2501.06425.

    Examples
    --------
    >>> import numpy as np
    >>> f = tpa_factorize(np.random.default_rng(0).standard_normal((10, 4, 8)), 2)
    >>> f.a.shape, f.b.shape, f.reconstruct().shape
    ((10, 2, 4), (10, 2, 8), (10, 4, 8))
    """
    X = as_float_array(X, name="X", ndim=3)
    _, h, d = X.shape
    R = check_int(rank, "rank", minimum=1, maximum=min(h, d))
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    a = np.ascontiguousarray((U[:, :, :R] * s[:, None, :R]).transpose(0, 2, 1))
    b = np.ascontiguousarray(Vt[:, :R, :])
    tails = np.sqrt(np.sum(s[:, R:].astype(np.float64) ** 2, axis=1))
    nX = float(np.linalg.norm(s.astype(np.float64)))
    rel = float(np.linalg.norm(tails)) / nX if nX > 0 else 0.0
    return TPAFactors(a, b, tails, rel)


def tpa_attention(Q, K, V, rank_k, rank_v, /, *, scale=None) -> TPAResult:
    r"""Multi-head attention with TPA-factorised (per-token low-rank) keys and values.

    Parameters
    ----------
    Q, K, V : array_like, shape (h, n, d_head)
        Per-head queries, keys, values (bidirectional, one sequence).
    rank_k, rank_v : int
        Per-token ranks :math:`R_K, R_V` of the cached keys and values.
    scale : float, optional
        Default :math:`1/\sqrt{d_{\text{head}}}`.

    Returns
    -------
    TPAResult
        ``output (h, n, d_head)``, cache accounting, relative K/V errors and a
        deterministic per-row bound (``bound.rows`` of shape ``(h, n)``).

    Raises
    ------
    TypeError, ValueError
        Bad arrays, shapes that differ, ranks out of range.

    Notes
    -----
    Keys and values are replaced by :func:`tpa_factorize` of their ``(n, h, d)``
    arrangement; queries stay exact. Cache per token
    :math:`(R_K + R_V)(h + d_{\text{head}})` against :math:`2hd_{\text{head}}`
    (survey §7.2). Bound: the per-head key error satisfies
    :math:`\|k^h_j - \tilde k^h_j\| \le \|K_j - \tilde K_j\|_F = \tau_j` (the
    Eckart-Young tail of token :math:`j`), so :func:`logit_error_bound` with
    :math:`\epsilon^Q = 0, \epsilon^K_j = \tau_j` and :func:`logit_output_bound` with
    ``v_err`` the value tails bound the output; both are deterministic. Cost: two
    batched SVDs plus exact attention, :math:`O(hn^2d)`.

    Examples
    --------
    >>> import numpy as np
    >>> Q = np.random.default_rng(0).standard_normal((4, 10, 8))
    >>> res = tpa_attention(Q, Q, Q, 2, 2)
    >>> res.output.shape, res.cache_per_token, res.dense_cache_per_token
    ((4, 10, 8), 48, 64)
    """
    Q = as_float_array(Q, name="Q", ndim=3)
    K = as_float_array(K, name="K", ndim=3)
    V = as_float_array(V, name="V", ndim=3)
    if Q.shape[0] != K.shape[0] or K.shape[:2] != V.shape[:2] or Q.shape[2] != K.shape[2]:
        raise ValueError(
            f"Q (h, n, d), K (h, m, d), V (h, m, dv) must agree, got {Q.shape}, {K.shape}, "
            f"{V.shape}"
        )
    h, _, d = Q.shape
    dv = V.shape[2]
    s = _check_scale(scale, d, positive=False)
    dtype = result_dtype(Q.dtype, K.dtype, V.dtype)
    fk = tpa_factorize(K.transpose(1, 0, 2), rank_k)
    fv = tpa_factorize(V.transpose(1, 0, 2), rank_v)
    Kt = fk.reconstruct().transpose(1, 0, 2).astype(np.float64)
    Vt = fv.reconstruct().transpose(1, 0, 2).astype(np.float64)
    Q64 = Q.astype(np.float64)
    P = _softmax_rows((Q64 @ Kt.transpose(0, 2, 1)) * s)
    out = (P @ Vt).astype(dtype)
    delta = logit_error_bound(
        Q64, Kt, np.zeros(Q.shape[:2]), np.broadcast_to(fk.tails, K.shape[:2]), scale=s
    )
    bound = logit_output_bound(delta, V, v_err=np.broadcast_to(fv.tails, V.shape[:2]))
    return TPAResult(
        out,
        int(fk.a.shape[1] * (h + d) + fv.a.shape[1] * (h + dv)),
        int(h * (d + dv)),
        fk.relative_error,
        fv.relative_error,
        bound,
    )


# ---------------------------------------------------------------------------------------
# third-order (Sanford et al.) and Kronecker (Higher-Order Transformers) attention
# ---------------------------------------------------------------------------------------


def third_order_attention(
    Q, K1, K2, V1, V2, /, *, scale=None, block_size=None
) -> TensorAttentionOutput:
    r"""Exact third-order (tensor) attention :math:`D^{-1}A(V_1 * V_2)`, blockwise.

    Parameters
    ----------
    Q : array_like, shape (n, d)
    K1, K2 : array_like, shape (m, d)
    V1, V2 : array_like, shape (m, dv)
    scale : float, optional
        Default :math:`1/\sqrt d`.
    block_size : int, optional
        Number of :math:`K_1` rows per block (memory :math:`O(n\,b\,m)`); default chosen
        so that a block holds about :math:`2^{22}` scores.

    Returns
    -------
    TensorAttentionOutput
        ``output (n, dv)`` and ``lse (n,)``.

    Raises
    ------
    TypeError, ValueError
        Bad arrays or shapes, non-positive ``block_size``.

    Notes
    -----
    Sanford et al. [1]_ (survey §7.3): with the column-wise Khatri-Rao products
    :math:`K_1 * K_2, V_1 * V_2 \in \mathbb R^{m^2\times\cdot}` (row :math:`(j, k)` is
    :math:`k^{(1)}_j\odot k^{(2)}_k`),

    .. math::

        A = \exp(s\,Q(K_1 * K_2)^T) \in \mathbb R^{n\times m^2}, \qquad
        Y = D^{-1}A(V_1 * V_2), \quad D = \mathrm{diag}(A\mathbf 1).

    :math:`A` is never formed: for a block :math:`J` of rows of :math:`K_1` the scores
    :math:`s\,(Q\odot k^{(1)}_j)K_2^T` (:math:`n\times|J|\times m`) are computed, and
    the numerator :math:`\sum_{j}v^{(1)}_j\odot(\sum_k A_{i,(j,k)}v^{(2)}_k)` and the
    normaliser are accumulated with the online-softmax rescaling of FlashAttention.
    Cost :math:`2nm^2(d + d_v)` flops and :math:`nm^2` exponentials, memory
    :math:`O(nbm)`: cubic, as the exact mechanism is (Alman-Song: subcubic needs
    bounded entries).

    References
    ----------
    .. [1] C. Sanford, D. Hsu, M. Telgarsky, "Representational strengths and limitations
       of transformers", NeurIPS 2023. arXiv:2306.02896.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((6, 4))
    >>> res = third_order_attention(X, X, X, X, X)
    >>> res.output.shape, res.lse.shape
    ((6, 4), (6,))
    """
    Q = as_float_array(Q, name="Q", ndim=2)
    K1 = as_float_array(K1, name="K1", ndim=2)
    K2 = as_float_array(K2, name="K2", ndim=2)
    V1 = as_float_array(V1, name="V1", ndim=2)
    V2 = as_float_array(V2, name="V2", ndim=2)
    n, d = Q.shape
    m = K1.shape[0]
    if K1.shape != (m, d) or K2.shape != (m, d):
        raise ValueError(
            f"K1 and K2 must have shape (m, d={d}) with the same m, got {K1.shape} and {K2.shape}"
        )
    if V1.shape[0] != m or V2.shape != V1.shape:
        raise ValueError(f"V1 and V2 must have shape (m={m}, dv), got {V1.shape} and {V2.shape}")
    s = _check_scale(scale, d, positive=False)
    if block_size is None:
        b = max(1, min(m, (1 << 22) // max(1, n * m)))
    else:
        b = check_int(block_size, "block_size", minimum=1)
    dtype = result_dtype(Q.dtype, K1.dtype, K2.dtype, V1.dtype, V2.dtype)
    Q64, K1_, K2_ = (x.astype(np.float64) for x in (Q, K1, K2))
    V1_, V2_ = V1.astype(np.float64), V2.astype(np.float64)
    mx = np.full(n, -np.inf)
    z = np.zeros(n)
    num = np.zeros((n, V1.shape[1]))
    for j0 in range(0, m, b):
        J = slice(j0, min(m, j0 + b))
        # scores of the block: s * sum_l q_il k1_jl k2_kl, shape (n, |J|, m)
        S = np.einsum("il,jl,kl->ijk", Q64 * s, K1_[J], K2_, optimize=True)
        new = np.maximum(mx, S.max(axis=(1, 2)))
        alpha = np.exp(mx - new)  # exp(-inf) = 0 on the first block
        E = np.exp(S - new[:, None, None])
        z = z * alpha + E.sum(axis=(1, 2))
        # sum_{j in J} v1_j * (sum_k A_ijk v2_k)
        num = num * alpha[:, None] + np.einsum("ijk,kc,jc->ic", E, V2_, V1_[J], optimize=True)
        mx = new
    out = num / z[:, None]
    return TensorAttentionOutput(out.astype(dtype), (mx + np.log(z)).astype(dtype))


def kronecker_attention(Q1, K1, Q2, K2, V, /, *, weights=None, scale=None) -> np.ndarray:
    r"""Kronecker-factored attention on 2-D inputs (Higher-Order Transformers).

    Parameters
    ----------
    Q1 : array_like, shape (H, n1, d1)
        Mode-1 queries of ``H`` terms (heads).
    K1 : array_like, shape (H, m1, d1)
    Q2 : array_like, shape (H, n2, d2)
    K2 : array_like, shape (H, m2, d2)
    V : array_like, shape (m1, m2, dv)
        Values on the :math:`m_1\times m_2` grid.
    weights : array_like, shape (H,), optional
        Term weights :math:`w_h`, default :math:`1/H` (a convex combination).
    scale : float, optional
        Logit scale, default :math:`1/\sqrt{d_1 + d_2}` (the head dimension of the
        equivalent dense attention on concatenated features).

    Returns
    -------
    ndarray, shape (n1, n2, dv)
        :math:`Y = \sum_h w_h (S^{(1)}_h\otimes S^{(2)}_h)\,\mathrm{vec}(V)`, reshaped.

    Raises
    ------
    TypeError, ValueError
        Bad arrays or inconsistent shapes.

    Notes
    -----
    Survey §7.4: attention over the :math:`N_1N_2` positions of a 2-D input with the
    attention matrix :math:`S = \sum_h w_hS^{(1)}_h\otimes S^{(2)}_h`,
    :math:`S^{(k)}_h = \mathrm{softmax}(s\,Q_kK_k^T)`, applied mode by mode:
    :math:`O(H\,d_v(n_1m_1m_2 + n_1n_2m_2))` flops instead of
    :math:`O(n_1n_2m_1m_2(d + d_v))` [1]_. Exactness: if the logits of a dense
    attention are separable, :math:`s\,q_{(i_1i_2)}^Tk_{(j_1j_2)} =
    s\,q^{(1)T}_{i_1}k^{(1)}_{j_1} + s\,q^{(2)T}_{i_2}k^{(2)}_{j_2}` (concatenated
    features), then its softmax is exactly :math:`S^{(1)}\otimes S^{(2)}` and ``H = 1``
    reproduces it.

    References
    ----------
    .. [1] S. Omranpour, G. Rabusseau, R. Rabbany, "Higher order transformers: efficient
       attention mechanism for tensor structured data", 2024. arXiv:2412.02919.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.random.default_rng(0)
    >>> Y = kronecker_attention(g.normal(size=(2, 3, 4)), g.normal(size=(2, 5, 4)),
    ...                         g.normal(size=(2, 6, 4)), g.normal(size=(2, 7, 4)),
    ...                         g.normal(size=(5, 7, 8)))
    >>> Y.shape
    (3, 6, 8)
    """
    Q1 = as_float_array(Q1, name="Q1", ndim=3)
    K1 = as_float_array(K1, name="K1", ndim=3)
    Q2 = as_float_array(Q2, name="Q2", ndim=3)
    K2 = as_float_array(K2, name="K2", ndim=3)
    V = as_float_array(V, name="V", ndim=3)
    H = Q1.shape[0]
    if not (K1.shape[0] == Q2.shape[0] == K2.shape[0] == H):
        raise ValueError(
            f"Q1, K1, Q2, K2 must have the same number of terms H={H} in axis 0, got "
            f"{K1.shape[0]}, {Q2.shape[0]}, {K2.shape[0]}"
        )
    if Q1.shape[2] != K1.shape[2] or Q2.shape[2] != K2.shape[2]:
        raise ValueError(
            f"feature dims must agree per mode: Q1 {Q1.shape} / K1 {K1.shape}, "
            f"Q2 {Q2.shape} / K2 {K2.shape}"
        )
    if V.shape[:2] != (K1.shape[1], K2.shape[1]):
        raise ValueError(
            f"V must have shape (m1={K1.shape[1]}, m2={K2.shape[1]}, dv), got {V.shape}"
        )
    if weights is None:
        w = np.full(H, 1.0 / H)
    else:
        w = as_float_array(weights, name="weights", ndim=1).astype(np.float64)
        if w.shape != (H,):
            raise ValueError(f"weights must have shape (H={H},), got {w.shape}")
    s = _check_scale(scale, Q1.shape[2] + Q2.shape[2], positive=False)
    dtype = result_dtype(Q1.dtype, K1.dtype, Q2.dtype, K2.dtype, V.dtype)
    P1 = _softmax_rows((Q1.astype(np.float64) @ K1.transpose(0, 2, 1)) * s)
    P2 = _softmax_rows((Q2.astype(np.float64) @ K2.transpose(0, 2, 1)) * s)
    V64 = V.astype(np.float64)
    out = np.zeros((Q1.shape[1], Q2.shape[1], V.shape[2]))
    for k in range(H):
        # mode-2 product first (m1 n2 m2 dv), then mode-1 (n1 m1 n2 dv)
        T = np.matmul(P2[k], V64)  # (m1, n2, dv)
        out += w[k] * (P1[k] @ T.reshape(T.shape[0], -1)).reshape(out.shape)
    return out.astype(dtype)
