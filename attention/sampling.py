r"""LSH-plus-sampling softmax-attention approximations (survey arXiv:2604.01757, §3.3).

All three methods write :math:`Y = Z^{-1}AV`, :math:`A = \exp(s\,QK^\top)`, as an exact
part on a sparse "heavy" pattern plus an importance-sampled estimate of the rest, and
divide by a normaliser :math:`\tilde z_i = \tilde a_i\mathbf 1` estimated from the same
samples (the ones column appended to ``V``):

.. math::

    \tilde a_{ij} = a_{ij}\,\mathbb 1[j \in B_i]
    + \frac1s\sum_{t=1}^s \frac{a_{ij}\,\mathbb 1[j = j_t,\ j \notin B_i]}{p_j},
    \qquad \tilde y_i = \tilde a_iV/\tilde a_i\mathbf 1,

where :math:`B_i` is query :math:`i`'s diagonal block after sorting queries and keys by
an LSH code (:func:`rnla.cluster.hyperplane_lsh`), and :math:`j_1, \dots, j_s` are i.i.d.
draws from :math:`p`. The registered methods (run them through
:func:`attention.approximate`) are

* ``"kdeformer"`` [1]_: :math:`p_j = (1-\gamma)\|v_j\|^2/\|V\|_F^2 + \gamma/m`;
* ``"hyperattention"`` [2]_: sortLSH (Gray-ordered codes), uniform samples as in the
  released code or row-norm samples of :math:`[V\ \mathbf 1]`, the two parts merged
  through their log-normalisers (:func:`attention.exact.merge_partials`); causal by the
  recursive 2x2 split;
* ``"prescoring"`` [3]_: keys preselected by k-means residuals (:func:`rnla.cluster.kmeans`)
  or leverage scores (:func:`rnla.sketch.leverage_scores`), then HyperAttention on them.

**Bound** (probabilistic, checked by ``tests/bounds/test_attention_sampling_bounds.py``).
With :math:`e_i = \tilde a_iV - \tilde z_iy_i = \sum_j(\tilde a_{ij} - a_{ij})(v_j - y_i)`,
:math:`\tilde y_i - y_i = e_i/\tilde z_i` and :math:`\tilde z_i \ge z^B_i = \sum_{j\in
B_i}a_{ij}` for every draw. The exact AMM variance of the i.i.d. sum gives

.. math::

    \mathbb E\|e_i\|^2 = \frac1s\Big(\sum_{j\in R_i}\frac{a_{ij}^2\|v_j - y_i\|^2}{p_j}
    - \Big\|\sum_{j\in R_i}a_{ij}(v_j - y_i)\Big\|^2\Big),
    \qquad R_i = \{j\ \text{visible}, j\notin B_i\},

so :math:`\mathbb E\|\tilde Y - Y\|_F^2 \le M = \sum_i\min(\mathbb E\|e_i\|^2/(z^B_i)^2,
4R^2)` (both rows lie in the ball :math:`B(c, R)` of the values) and, by Markov's
inequality, :math:`\|\tilde Y - Y\|_2 \le \|\tilde Y - Y\|_F \le \sqrt{M/\delta}`
with probability at least :math:`1-\delta`. :math:`M` needs the exact :math:`A` and
:math:`Y`: the methods compute it by an extra exact pass (quadratic, not counted in
``cost``) when ``error_bound`` is ``"exact"`` (KDEformer and prescoring: also True).
HyperAttention returns no bound by default; ``error_bound=True`` (``"certificate"``) gives
the sampled-row certificate of :func:`attention.bounds.certify` on 64 exactly computed
rows, which keeps its cost sub-quadratic. The published theorems (KDEformer Thm 3.4,
HyperAttention Thm 1) are of the form
:math:`\|\tilde Y - Y\|_2 \le \varepsilon\|Z^{-1}A\|_2\|V\|_2`; the
quantities they depend on are returned by :func:`sampling_diagnostics`.

References
----------
.. [1] A. Zandieh, I. Han, M. Daliri, A. Karbasi, "KDEformer: accelerating transformers
   via kernel density estimation", ICML 2023, arXiv:2302.02451.
.. [2] I. Han, R. Jayaram, A. Karbasi, V. Mirrokni, D. P. Woodruff, A. Zandieh,
   "HyperAttention: long-context attention in near-linear time", ICLR 2024,
   arXiv:2310.05869.
.. [3] Z. Li, H. Wang, Y. Bao, D. P. Woodruff, "Efficient attention via pre-scoring:
   prioritizing informative keys in transformers", arXiv:2505.11040, 2025.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numba
import numpy as np

from attention._core import Cost, ErrorBound, Problem, check_error_bound, method_result, prepare
from attention._parallel import map_slices
from attention._registry import register
from attention.bounds import value_radius
from attention.exact import softmax_attention
from attention.sparse import _work_dtype
from rnla._validation import as_float_array, check_int, check_option, check_probability

__all__ = ["SamplingDiagnostics", "amm_variance", "sampling_diagnostics"]


# ---------------------------------------------------------------------------------------
# exact AMM variance and diagnostics
# ---------------------------------------------------------------------------------------


def amm_variance(A, B, p, s, /) -> float:
    r"""Exact mean squared error of the sampled product :math:`AS^\top SB`.

    Parameters
    ----------
    A : array_like, shape (n, m)
        Left factor.
    B : array_like, shape (m, k)
        Right factor.
    p : array_like, shape (m,)
        Sampling probabilities (nonnegative, summing to 1, positive wherever
        :math:`\|Ae_j\|\|b_j\| > 0`).
    s : int
        Number of i.i.d. draws, ``s >= 1``.

    Returns
    -------
    float
        :math:`\mathbb E\|AS^\top SB - AB\|_F^2 = \frac1s\big(\sum_j\|Ae_j\|^2\|b_j\|^2/p_j
        - \|AB\|_F^2\big)`.

    Raises
    ------
    ValueError
        Mismatched shapes, ``p`` not a probability vector, ``p_j = 0`` on a column that
        contributes, ``s < 1``.

    Notes
    -----
    :math:`AS^\top SB = \frac1s\sum_t Ae_{j_t}b_{j_t}^\top/p_{j_t}` with :math:`j_t` i.i.d.
    from :math:`p`; each term has mean :math:`AB` and second moment
    :math:`\sum_j\|Ae_j\|^2\|b_j\|^2/p_j`, so the variance of the mean of ``s`` terms is
    the formula above (Drineas, Kannan and Mahoney [1]_, Lemma 4; the optimal
    :math:`p_j \propto \|Ae_j\|\|b_j\|`). Cost :math:`O(nmk)` for :math:`AB`.

    References
    ----------
    .. [1] P. Drineas, R. Kannan, M. W. Mahoney, "Fast Monte Carlo algorithms for
       matrices I: approximating matrix multiplication", SIAM J. Comput. 36 (2006).

    Examples
    --------
    >>> import numpy as np
    >>> from attention.sampling import amm_variance
    >>> A, B = np.eye(2), np.ones((2, 1))
    >>> amm_variance(A, B, np.array([0.5, 0.5]), 1)
    2.0
    """
    A = as_float_array(A, name="A").astype(np.float64)
    B = as_float_array(B, name="B").astype(np.float64)
    p = as_float_array(p, name="p").astype(np.float64)
    s = check_int(s, "s", minimum=1)
    if A.ndim != 2 or B.ndim != 2 or p.ndim != 1:
        raise ValueError(f"need A (n, m), B (m, k), p (m,); got {A.shape}, {B.shape}, {p.shape}")
    if A.shape[1] != B.shape[0] or p.shape[0] != B.shape[0]:
        raise ValueError(
            f"A {A.shape}, B {B.shape} and p {p.shape} must agree on m (A columns = B rows "
            "= len(p))"
        )
    if (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"p must be nonnegative and sum to 1, got sum {p.sum()}")
    w = np.sum(A * A, axis=0) * np.sum(B * B, axis=1)
    if ((p == 0) & (w > 0)).any():
        raise ValueError("p_j = 0 on a column with ||A e_j|| ||b_j|| > 0: the estimator is biased")
    second = float(np.sum(np.where(w > 0, w / np.where(p > 0, p, 1.0), 0.0)))
    AB = A @ B
    return (second - float(np.sum(AB * AB))) / s


class SamplingDiagnostics(NamedTuple):
    r"""The quantities the §3.3 sampling theorems depend on, per slice.

    Every field is an ndarray of float64 with the leading shape ``lead`` of the inputs
    (one value per query slice).

    Attributes
    ----------
    alpha : ndarray
        :math:`\alpha = n\max_j\|Z^{-1}Ae_j\|_2^2` (HyperAttention's column-norm
        parameter; 1 for uniform attention, up to :math:`n` for a single key every
        query attends to).
    kappa : ndarray
        :math:`\kappa = \max_i r_i/\min_i r_i` with :math:`r_i` the row sums of :math:`A`
        after removing its ``n_heavy`` largest entries per row (HyperAttention's
        row-norm ratio with an oracle top-k heavy pattern), over the rows that see more
        than ``n_heavy`` keys (``inf`` if some such :math:`r_i` underflows to 0).
    srank_attention : ndarray
        :math:`\mathrm{srank}(Z^{-1}A) = \|Z^{-1}A\|_F^2/\|Z^{-1}A\|_2^2`.
    srank_values : ndarray
        :math:`\mathrm{srank}(V)`.
    attention_norm : ndarray
        :math:`\|Z^{-1}A\|_2`.
    values_norm : ndarray
        :math:`\|V\|_2`.
    output_norm : ndarray
        :math:`\|Y\|_2`.
    max_probability : ndarray
        :math:`\max_{ij}(Z^{-1}A)_{ij}`.
    """

    alpha: np.ndarray
    kappa: np.ndarray
    srank_attention: np.ndarray
    srank_values: np.ndarray
    attention_norm: np.ndarray
    values_norm: np.ndarray
    output_norm: np.ndarray
    max_probability: np.ndarray


def _probabilities(q, k, scale, causal):
    """Dense softmax matrix ``Z^-1 A`` (n, m), float64, and its row log-normalisers."""
    S = (q @ k.T) * scale
    n, m = S.shape
    if causal:
        S = np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n), S, -np.inf)
    mx = S.max(axis=1, keepdims=True)
    seen = np.isfinite(mx)
    P = np.exp(S - np.where(seen, mx, 0.0))
    z = P.sum(axis=1, keepdims=True)
    P = np.where(seen, P / np.where(z > 0, z, 1.0), 0.0)
    return P, np.where(seen[:, 0], mx[:, 0] + np.log(np.where(z[:, 0] > 0, z[:, 0], 1.0)), -np.inf)


def sampling_diagnostics(
    Q, K, V, *, scale=None, causal=False, n_heavy: int = 64
) -> SamplingDiagnostics:
    r"""Compute the parameters of the KDEformer / HyperAttention theorems on given inputs.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys (grouped-query heads as in :func:`attention.approximate`).
    V : array_like, shape (..., m, dv)
        Values.
    scale : float, optional
        Score scale, ``1/sqrt(d)`` by default.
    causal : bool, default=False
        Bottom-right aligned causal mask.
    n_heavy : int, default=64
        Entries per row treated as heavy for ``kappa`` (clipped to ``m - 1``).

    Returns
    -------
    SamplingDiagnostics
        ``alpha``, ``kappa``, ``srank_attention``, ``srank_values``, ``attention_norm``,
        ``values_norm``, ``output_norm``, ``max_probability``, each of shape ``lead``.

    Raises
    ------
    TypeError, ValueError
        Invalid attention inputs (see :func:`attention.approximate`) or ``n_heavy < 1``.

    Notes
    -----
    HyperAttention (Han et al. 2024, Thm 1; constants not reproduced here) needs
    :math:`\alpha` and :math:`\kappa` small for :math:`O(\alpha\kappa\ldots)` samples;
    KDEformer (Zandieh et al. 2023, Thm 3.4) needs
    :math:`s = \Omega(\varepsilon^{-2}\log n\,(\mathrm{srank}(Z^{-1}A) +
    \mathrm{srank}(V)))` samples for
    :math:`\|\tilde Y - Y\|_2 \le \varepsilon\|Z^{-1}A\|_2\|V\|_2` with high probability.
    Forms the dense ``n x m`` softmax matrix: cost :math:`O(nm(d + d_v))` plus two
    spectral norms (LAPACK SVD of ``Z^-1 A``): a diagnostic, not a fast path.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.sampling import sampling_diagnostics
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.standard_normal((2, 32, 8)) for _ in range(3))
    >>> sampling_diagnostics(Q, K, V, n_heavy=4).alpha.shape
    (2,)
    """
    problem = prepare(Q, K, V, scale=scale, causal=causal)
    n_heavy = check_int(n_heavy, "n_heavy", minimum=1)
    G = problem.n_slices
    vals = np.zeros((8, G))
    for g in range(G):
        q, k, v = (x.astype(np.float64) for x in problem.slice(g))
        P, lse = _probabilities(q, k, problem.scale, problem.causal)
        n, m = P.shape
        col = np.sum(P * P, axis=0)
        sv_p = np.linalg.norm(P, 2)
        sv_v = np.linalg.norm(v, 2)
        Y = P @ v
        # Residual row sums after the top-h entries, in the unnormalised scale of A
        # (rows rescaled by z_i = exp(lse_i)); computed in log space for range.
        h = min(n_heavy, m - 1)
        if h > 0:
            part = np.partition(P, m - h - 1, axis=1)[:, : m - h]
        else:
            part = P
        with np.errstate(divide="ignore"):
            logr = np.log(part.sum(axis=1)) + lse
        # Rows seeing at most n_heavy keys (causal starts) have no residual: skipped.
        logr = logr[np.sum(P > 0, axis=1) > h]
        if logr.size == 0:
            kappa = 1.0
        elif np.isneginf(logr).any():
            kappa = math.inf
        else:
            kappa = float(np.exp(logr.max() - logr.min()))
        vals[:, g] = (
            n * col.max(),
            kappa,
            float(np.sum(P * P)) / sv_p**2 if sv_p > 0 else 0.0,
            float(np.sum(v * v)) / sv_v**2 if sv_v > 0 else 0.0,
            sv_p,
            sv_v,
            np.linalg.norm(Y, 2),
            P.max(),
        )
    return SamplingDiagnostics(*(x.reshape(problem.lead) for x in vals))


# ---------------------------------------------------------------------------------------
# the shared block + sample estimator
# ---------------------------------------------------------------------------------------


class _Piece(NamedTuple):
    """One part of the estimator on (global) query rows x key columns of a slice.

    ``kind`` is "exact" (all visible pairs computed exactly) or "sampled" (exact on the
    pairs with ``qblock == kblock``, ``s`` i.i.d. samples from ``p`` on the others).
    """

    rows: np.ndarray
    keys: np.ndarray
    kind: str
    qblock: np.ndarray | None
    kblock: np.ndarray | None
    p: np.ndarray | None
    s: int


# A plan is a list of (kind, r0, nr, k0, mk): query rows r0 + arange(nr) of every slice
# on keys k0 + arange(mk), kind "causal" (exact, bottom-right causal within the piece),
# "exact" (exact, all pairs) or "sampled" (LSH blocks + samples). It depends on the
# shapes only, so every slice follows the same plan and equal pieces run as one batch.


# The causal split stops once its lower-left piece would hold at most this many times
# (block_size + sample_size) keys: there the estimator evaluates at least a quarter of
# the pairs exact attention does, and the exact kernel is 2-3x faster per pair
# (measured at n = 4096 and 16384: speed-up over exact 1.0 -> 1.4 and 1.9 -> 3.8 against
# stopping at the piece where the estimator would itself fall back to exact).
_LEAF_FACTOR = 4


def _plan_noncausal(n, m, r0, k0, opts, plan, *, force=False):
    # Exact below min_seq_len, and wherever exact costs no more kernel evaluations.
    if m == 0 or n == 0:
        return
    if m <= opts["block_size"] + opts["sample_size"] or (
        not force and min(n, m) <= opts["min_seq_len"]
    ):
        plan.append(("exact", r0, n, k0, m))
    else:
        plan.append(("sampled", r0, n, k0, m))


def _plan_causal(n, m, r0, k0, opts, plan):
    """Causal HyperAttention by the recursive 2x2 split (bottom-right aligned)."""
    if m <= 0 or n == 0:
        return
    cap = _LEAF_FACTOR * (opts["block_size"] + opts["sample_size"])
    n1 = n // 2
    # Query i sees key j iff j <= i + m - n: keys below m1 are visible to every lower
    # query, and the two diagonal sub-problems are again bottom-right causal.
    m1 = n1 + (m - n)
    # A leaf is exact: below min_seq_len, or where every lower-left piece of the split
    # (at most m1 keys, and (n - n1) // 2 in the square lower-right half) is small
    # (<= _LEAF_FACTOR (block_size + sample_size) keys): exact attention is faster there.
    if n <= opts["min_seq_len"] or (m1 <= cap and (n - n1) // 2 <= cap):
        plan.append(("causal", r0, n, k0, m))
        return
    if m1 <= 0:
        _plan_causal(n - n1, m, r0 + n1, k0, opts, plan)
        return
    _plan_causal(n1, m1, r0, k0, opts, plan)
    _plan_causal(n - n1, m - m1, r0 + n1, k0 + m1, opts, plan)
    _plan_noncausal(n - n1, m1, r0 + n1, k0, opts, plan, force=True)


def _causal_pairs(n, m):
    """Count the visible pairs of a bottom-right causal ``n x m`` piece (``j <= i + m - n``)."""
    first = m - n + 1  # keys the first row sees (may be <= 0)
    lo = max(0, -first + 1)  # rows seeing no key
    rows = n - lo
    if rows <= 0:
        return 0
    a = first + lo  # keys seen by the first row that sees any (capped at m below)
    full = max(0, min(rows, a + rows - 1 - m + 1))  # rows that see all m keys
    part = rows - full
    return part * (2 * a + part - 1) // 2 + full * m


def _exact_pair_fraction(plan, n, m, causal):
    """Share of the visible query-key pairs that the plan's exact pieces attend.

    1.0: no piece is sampled, the output is exact attention (up to rounding).
    """
    total = _causal_pairs(n, m) if causal else n * m
    exact = sum(
        _causal_pairs(nr, mk) if kind == "causal" else nr * mk
        for kind, _, nr, _, mk in plan
        if kind != "sampled"
    )
    return exact / total if total else 1.0


def _lsh_codes(x, H, gray):
    """LSH codes of the rows of ``x (N, d)`` under the hyperplanes ``H (d, n_bits)``."""
    from rnla.cluster import _gray_rank

    bits = (x @ H) > 0
    codes = bits.astype(np.int64) @ (np.int64(1) << np.arange(H.shape[-1], dtype=np.int64))
    return _gray_rank(codes) if gray else codes


def _block_sample_numpy(
    q, k, v, kvi, pg, qord, kord, qstart, kstart, ks, vs, sblk, logw, scale, out, lse
):
    """Plain-NumPy reference of :data:`attention._kernels.sampling._block_sample_kernel`.

    Same arguments and effect (results merged into ``out``/``lse``); loops over pieces
    and blocks.
    """
    nb = qstart.shape[0] - 1
    for b in range(qord.shape[0]):
        g = pg[b]
        gk = kvi[g]
        for t in range(nb):
            rows = qord[b, qstart[t] : qstart[t + 1]]
            cols = kord[b, kstart[t] : kstart[t + 1]]
            qb = q[g, rows].astype(np.float64) * scale
            s1 = qb @ k[gk, cols].T.astype(np.float64)
            s2 = qb @ ks[b].T.astype(np.float64) + logw[b]
            s2[:, sblk[b] == t] = -np.inf
            S = np.hstack([s1, s2])
            mx = S.max(axis=1, keepdims=True)
            P = np.exp(S - mx)
            z = P.sum(axis=1)
            y = P @ np.vstack([v[gk, cols], vs[b]]).astype(np.float64) / z[:, None]
            yo, lo = out[g, rows].astype(np.float64), lse[g, rows]
            y, ly = _merge2(yo, lo, y, mx[:, 0] + np.log(z))
            out[g, rows] = y
            lse[g, rows] = ly


def _merge2(y1, l1, y2, l2):
    """Merge two partial results through their log-normalisers (empty rows: 0, -inf)."""
    new = np.logaddexp(l1, l2)
    ok = np.isfinite(new)
    safe = np.where(ok, new, 0.0)
    w1 = np.where(ok, np.exp(l1 - safe), 0.0).astype(y1.dtype)
    w2 = np.where(ok, np.exp(l2 - safe), 0.0).astype(y1.dtype)
    return w1[..., None] * y1 + w2[..., None] * y2, new


def _draw_batch(w, B, mk, s, sampling, mix, rng):
    r"""Probabilities ``p (B, mk)`` and ``s`` i.i.d. indices ``(B, s)`` per piece.

    ``w (B, mk)``: squared value norms :math:`\|v_j\|^2` of each piece's keys (unused
    for ``"uniform"``). ``"row_norm"``: :math:`p_j \propto \|v_j\|^2 + 1` (row norms
    of ``[V 1]``); ``"kde"``: :math:`(1-\gamma)\|v_j\|^2/\|V\|_F^2 + \gamma/m`. The
    random numbers drawn do not depend on the data.
    """
    if sampling == "uniform":
        return np.full((B, mk), 1.0 / mk), rng.integers(0, mk, size=(B, s))
    if sampling == "row_norm":
        p = w + 1.0
    else:
        fro2 = w.sum(axis=1, keepdims=True)
        gamma = np.where(fro2 == 0, 1.0, mix)
        p = (1.0 - gamma) * w / np.where(fro2 > 0, fro2, 1.0) + gamma / mk
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    u = rng.random((B, s))
    idx = np.stack([np.searchsorted(cdf[i], u[i] * cdf[i, -1], side="right") for i in range(B)])
    # Keys of zero probability are never drawn (u < cdf[-1] almost surely).
    return p, np.minimum(idx, mk - 1)


_USE_KERNEL = True  # False: the plain-NumPy reference (tests)


def _run_plan(Q, K, V, kvi, scale, plan, opts, rng, *, gray, mix=0.0, pieces=False):
    """Run ``plan`` on every slice of ``Q (G, n, d)`` (keys ``K``/``V (Gk, m, .)``).

    Query slice ``g`` reads key/value slice ``kvi[g]``. Equal pieces of all slices form
    one batch: exact ones go to the exact kernel in one call, sampled ones to the block
    + sample kernel; both merge into the output through the log-normalisers. One set of
    LSH hyperplanes per slice serves all its pieces (as the released HyperAttention
    code, whose projections are fixed). Returns ``(out (G, n, dv), lse (G, n),
    slice_pieces, kernel_evals, flops)``; ``slice_pieces[g]`` lists the
    :class:`_Piece` records of slice ``g`` when ``pieces`` (for the bound).
    """
    from attention import exact as _exact
    from attention._kernels.exact import _TILE_VECS
    from attention._kernels.sampling import (
        _block_sample_kernel,
        _block_sample_tiles,
        _merge_kernel,
    )
    from attention.exact import _attend, _single_threaded_blas

    G, n, d = Q.shape
    dv = V.shape[2]
    out = np.zeros((G, n, dv), dtype=Q.dtype)
    lse = np.full((G, n), -np.inf)
    recs = [[] for _ in range(G)]
    evals, flops = 0, 0.0
    groups: dict = {}
    for kind, r0, nr, k0, mk in plan:
        groups.setdefault((kind, nr, mk), []).append((r0, k0))
    cq = ck = vn2 = None
    fresh = True
    for (kind, nr, mk), offs in groups.items():
        n_off = len(offs)
        B = G * n_off
        pg = np.repeat(np.arange(G, dtype=np.int64), n_off)
        pr0 = np.tile(np.array([r0 for r0, _ in offs], dtype=np.int64), G)
        pk0 = np.tile(np.array([k0 for _, k0 in offs], dtype=np.int64), G)
        if kind != "sampled":
            causal = kind == "causal"
            tiled = offs == [(t * nr, t * mk) for t in range(n_off)]
            if fresh and tiled and n_off * nr == n and n_off * mk == K.shape[1]:
                # The pieces tile the rows and keys in order (the causal leaves): Q, K, V
                # and the output viewed as n_off pieces per slice, no copies; the exact
                # kernel writes the output in place (nothing merged yet).
                leaves = Problem(
                    q=Q.reshape(B, nr, d),
                    k=K.reshape(-1, mk, d),
                    v=V.reshape(-1, mk, dv),
                    kv_index=(kvi[:, None] * n_off + np.arange(n_off)).reshape(-1),
                    mask=None,
                    mask_index=None,
                    scale=float(scale),
                    causal=causal,
                    lead=(B,),
                    dtype=Q.dtype,
                )
                _attend(leaves, out=out.reshape(B, nr, dv), lse=lse.reshape(B, nr))
            else:
                qp = np.stack([Q[:, r0 : r0 + nr] for r0, _ in offs], axis=1)
                kp = np.stack([K[kvi, k0 : k0 + mk] for _, k0 in offs], axis=1)
                vp = np.stack([V[kvi, k0 : k0 + mk] for _, k0 in offs], axis=1)
                y, ly = softmax_attention(qp, kp, vp, scale=scale, causal=causal, return_lse=True)
                if fresh:
                    # Nothing merged yet (pieces of a group have disjoint rows): merging
                    # into (0, -inf) is a copy; one NumPy copy avoids a parallel region.
                    at = (pg[:, None], pr0[:, None] + np.arange(nr))
                    out[at] = y.reshape(B, nr, dv)
                    lse[at] = ly.reshape(B, nr)
                else:
                    with _single_threaded_blas():
                        _merge_kernel(out, lse, pg, pr0, y.reshape(B, nr, dv), ly.reshape(B, nr))
            fresh = False
            pairs = int(np.clip(np.arange(nr) + (mk - nr) + 1, 0, mk).sum()) if causal else nr * mk
            evals += B * pairs
            flops += B * 2.0 * pairs * (d + dv)
            if pieces:
                for b in range(B):
                    pr, pk = pr0[b] + np.arange(nr), pk0[b] + np.arange(mk)
                    recs[pg[b]].append(_Piece(pr, pk, "exact", None, None, None, 0))
            continue
        s = opts["sample_size"]
        if cq is None:
            H = rng.standard_normal((G, d, opts["n_bits"])).astype(Q.dtype)
            # One thread: a threaded BLAS is slow on these thin products under load.
            with _single_threaded_blas():
                cq = np.stack([_lsh_codes(Q[g], H[g], gray) for g in range(G)])
                ck = np.stack([_lsh_codes(K[kvi[g]], H[g], gray) for g in range(G)])
            flops += 2.0 * G * (n + K.shape[1]) * d * opts["n_bits"]
        rows, cols = np.arange(nr), np.arange(mk)
        # Codes below 2^n_bits: as 16-bit integers the stable sort is a radix sort.
        cdt = np.uint16 if opts["n_bits"] <= 16 else np.int64
        qo = np.argsort(cq[pg[:, None], pr0[:, None] + rows].astype(cdt), axis=1, kind="stable")
        ko = np.argsort(ck[pg[:, None], pk0[:, None] + cols].astype(cdt), axis=1, kind="stable")
        nb = max(1, min(nr, mk) // opts["block_size"])
        blk = np.arange(nb + 1)
        qstart, kstart = -((-blk * nr) // nb), -((-blk * mk) // nb)
        kblock = np.empty((B, mk), dtype=np.int64)
        np.put_along_axis(kblock, ko, np.broadcast_to((cols * nb) // mk, (B, mk)), 1)
        w = None
        if opts["sampling"] != "uniform":
            if vn2 is None:
                vn2 = np.einsum("gjd,gjd->gj", V, V, dtype=np.float64)
            w = vn2[kvi[pg][:, None], pk0[:, None] + cols]
        p, idx = _draw_batch(w, B, mk, s, opts["sampling"], mix, rng)
        bi = np.arange(B)[:, None]
        logw = (-np.log(s * p[bi, idx])).astype(Q.dtype)
        gk = kvi[pg][:, None]
        args = (
            Q,
            K,
            V,
            kvi,
            pg,
            qo + pr0[:, None],
            ko + pk0[:, None],
            qstart,
            kstart,
            np.ascontiguousarray(K[gk, pk0[:, None] + idx]),
            np.ascontiguousarray(V[gk, pk0[:, None] + idx]),
            np.ascontiguousarray(kblock[bi, idx]),
            logw,
            float(scale),
            out,
            lse,
        )
        vl = 64 // Q.itemsize
        if _USE_KERNEL and _exact._USE_TILES and dv % vl == 0 and d > 0:
            # Register tiles: the samples' K^T as panels of one tile width (zero keys
            # past s), their values with zero rows (masked columns, P = 0 there).
            wide = _TILE_VECS * vl
            Ws = -(-s // wide) * wide
            ksp = np.zeros((B, Ws, d), dtype=Q.dtype)
            ksp[:, :s] = args[9]
            kst = np.ascontiguousarray(
                ksp.reshape(B, Ws // wide, wide, d).transpose(0, 1, 3, 2)
            ).reshape(B, Ws * d)
            vsp = np.zeros((B, Ws, dv), dtype=Q.dtype)
            vsp[:, :s] = args[10]
            _block_sample_tiles(
                *args[:9],
                kst,
                vsp,
                *args[11:],
                np.zeros(1, dtype=np.int64),
                numba.get_num_threads(),
            )
        elif _USE_KERNEL:
            with _single_threaded_blas():
                _block_sample_kernel(*args)
        else:
            _block_sample_numpy(*args)
        fresh = False
        ev = int(np.diff(qstart) @ np.diff(kstart)) + nr * s
        evals += B * ev
        flops += B * 2.0 * ev * (d + dv + 1)
        if pieces:
            qblock = np.empty((B, nr), dtype=np.int64)
            np.put_along_axis(qblock, qo, np.broadcast_to((rows * nb) // nr, (B, nr)), 1)
            for b in range(B):
                pr, pk = pr0[b] + rows, pk0[b] + cols
                recs[pg[b]].append(_Piece(pr, pk, "sampled", qblock[b], kblock[b], p[b], s))
    return out, lse, recs, evals, flops


# ---------------------------------------------------------------------------------------
# the bound: exact second moment of the estimator (extra exact pass)
# ---------------------------------------------------------------------------------------


def _second_moment(q, k, v, scale, y, lse, pieces, offset, *, chunk=1024):
    r"""Exact moments of one slice's estimator, in normalised units (:math:`a_{ij}/z_i`).

    Returns ``var`` (n,): :math:`\sum_{\text{pieces}}\mathbb E\|e_i\|^2`; ``zlow`` (n,):
    :math:`z^B_i`, the exactly computed mass (a lower bound on :math:`\tilde z_i` for every
    draw); and ``tails``: per sampled piece ``(rows, mean, second, s)`` with the mean
    :math:`\sum_{j\in R_i}a_{ij}` and second moment :math:`\sum_{j\in R_i}a_{ij}^2/p_j`
    of one draw of the sampled normaliser (for Maurer's lower tail bound).
    """
    n = q.shape[0]
    var = np.zeros(n)
    zlow = np.zeros(n)
    tails = []
    vsq = np.sum(v * v, axis=1)
    for pc in pieces:
        kk, vv, vs = k[pc.keys], v[pc.keys], vsq[pc.keys]
        for lo in range(0, pc.rows.size, chunk):
            sl = slice(lo, lo + chunk)
            rows = pc.rows[sl]
            fin = np.isfinite(lse[rows])
            P = np.exp((q[rows] @ kk.T) * scale - np.where(fin, lse[rows], 0.0)[:, None])
            P = np.where(fin[:, None], P, 0.0)
            if offset is not None:
                # Bottom-right causal pattern of the whole slice (sub-problems keep it).
                P = np.where(pc.keys[None, :] <= rows[:, None] + offset, P, 0.0)
            if pc.kind == "exact":
                zlow[rows] += P.sum(axis=1)
                continue
            inblk = pc.qblock[sl][:, None] == pc.kblock[None, :]
            zlow[rows] += np.sum(np.where(inblk, P, 0.0), axis=1)
            Pr = np.where(inblk, 0.0, P)
            yr = y[rows]
            ysq = np.sum(yr * yr, axis=1)
            D2 = np.maximum(vs[None, :] + ysq[:, None] - 2.0 * (yr @ vv.T), 0.0)
            first = np.sum(Pr * Pr * D2 / pc.p[None, :], axis=1)
            mu = Pr @ vv - Pr.sum(axis=1)[:, None] * yr
            var[rows] += np.maximum(first - np.sum(mu * mu, axis=1), 0.0) / pc.s
            tails.append((rows, Pr.sum(axis=1), np.sum(Pr * Pr / pc.p[None, :], axis=1), pc.s))
    return var, zlow, tails


def _moments(plan, scale):
    """Exact moments of one slice (see :func:`_second_moment`) and its exact rows."""
    (q, k, v), causal, pieces = plan
    y, lse = softmax_attention(q, k, v, scale=scale, causal=causal, return_lse=True)
    offset = k.shape[0] - q.shape[0] if causal else None
    return _second_moment(q, k, v, scale, y, lse, pieces, offset)


def _ratio_sum(var, low, cap):
    """Return ``sum_i min(var_i / low_i^2, cap)`` (``cap`` where ``low_i = 0``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = np.where(var > 0, var / np.where(low > 0, low, 1.0) ** 2, 0.0)
    r = np.where((var > 0) & (low <= 0), np.inf, r)
    return float(np.sum(np.minimum(r, cap)))


def _markov_bound(problem, outs, plans, delta):
    r"""Probabilistic Frobenius bound of the block + sample estimator, all slices.

    Two bounds, each valid with probability :math:`\ge 1-\delta`; their minimum fails
    only if both fail, so it is valid with the same probability:

    * (a) :math:`\sqrt{M_B/\delta}`, :math:`M_B = \sum_i\mathbb E\|e_i\|^2/(z^B_i)^2`
      (Markov; :math:`\tilde z_i \ge z^B_i` always);
    * (b) :math:`\sqrt{2M_L/\delta}` with :math:`L_i = z^B_i + \sum_{\text{pieces}}
      \max(0, \mu - \sqrt{2\,\mathbb EX^2\log(2T/\delta)/s})`: Maurer's lower tail
      for means of nonnegative i.i.d. variables, :math:`P(\bar X \le \mu - t) \le
      e^{-st^2/(2\mathbb EX^2)}`, union over the :math:`T` (row, piece) pairs at
      :math:`\delta/2`, Markov at :math:`\delta/2` on the event :math:`\tilde z \ge L`.

    Every row term is capped at :math:`4R^2` (:math:`R` from
    :func:`attention.bounds.value_radius`): :math:`\tilde y_i` and :math:`y_i` are convex
    combinations of the values, so :math:`\|\tilde y_i - y_i\|^2 \le 4R^2` for every
    draw, and :math:`\mathbb E\min(X, c) \le \min(\mathbb EX, c)`.

    Returns ``(value, M_B, M_L)`` with the cast allowance included in ``value``.
    """
    moments = [_moments(plan, problem.scale) for plan in plans]
    T = sum(r.size for _, _, tails in moments for r, _, _, _ in tails)
    log_t = math.log(2.0 * max(T, 1) / delta)
    m_b = m_l = rnd2 = 0.0
    for (var, zlow, tails), plan, out in zip(moments, plans, outs, strict=True):
        low = zlow.copy()
        for rows, mean, second, s in tails:
            low[rows] += np.maximum(0.0, mean - np.sqrt(2.0 * second * log_t / s))
        # ~y_i and y_i are convex combinations of the values (nonnegative weights), so
        # ||~y_i - y_i||^2 <= 4 R^2 for every draw; E min(X, c) <= min(E X, c).
        _, R = value_radius(plan[0][2])
        cap = 4.0 * float(R) ** 2
        m_b += _ratio_sum(var, zlow, cap)
        m_l += _ratio_sum(var, low, cap)
        rnd = 4.0 * np.finfo(problem.dtype).eps * (np.sqrt(np.sum(out * out, axis=1)) + float(R))
        rnd2 += float(np.sum(rnd * rnd))
    value = min(math.sqrt(m_b / delta), math.sqrt(2.0 * m_l / delta)) + math.sqrt(rnd2)
    return value, m_b, m_l


def _make_bound(problem, outs, plans, delta, name):
    """Return :func:`_markov_bound` as an :class:`ErrorBound` with its assumptions."""
    value, m_b, m_l = _markov_bound(problem, outs, plans, delta)
    assumptions = (
        f"{name}: Markov bound on the exact AMM second moment. ~y_i - y_i = e_i/~z_i with "
        "e_i = sum_j (~a_ij - a_ij)(v_j - y_i); E||e_i||^2 = (1/s)(sum_{j in R_i} a_ij^2 "
        "||v_j - y_i||^2/p_j - ||sum_{j in R_i} a_ij (v_j - y_i)||^2) for s i.i.d. draws "
        "from p (R_i = visible keys outside the query's block; p_j > 0 on every key by "
        "construction); bound = min(sqrt(M_B/delta), sqrt(2 M_L/delta)) with "
        f"M_B = sum_i min(E||e_i||^2/(z^B_i)^2, 4R^2) = {m_b:.4g} (~z_i >= z^B_i, the exact block "
        f"mass, for every draw) and M_L = {m_l:.4g} (~z_i >= L_i by Maurer's lower tail "
        "for nonnegative sums, union bound at delta/2); rows capped at 4R^2 since ~y_i and "
        "y_i are convex combinations of the values; moments computed by an extra exact "
        f"pass; delta = {delta}; also bounds the spectral norm; plus 4 eps (||~y_i|| + R) "
        "per row for the cast to the output dtype"
    )
    return ErrorBound(value, "fro", "probabilistic", delta, assumptions)


#: Rows of the sampled-row certificate, HyperAttention's default bound.
_CERTIFICATE_ROWS = 64


def _certificate_bound(problem, outs, delta, rng):
    """Sampled-row certificate (:func:`attention.bounds.certify`) of the outputs ``outs``.

    ``_CERTIFICATE_ROWS`` query rows drawn uniformly over all slices from ``rng`` are
    computed exactly (``O(rows m d)``, sub-quadratic); returns ``(ErrorBound, Cost)``.
    """
    from attention.bounds import certify
    from attention.exact import _single_threaded_blas

    G, Gk = problem.n_slices, problem.k.shape[0]
    kv = np.asarray(problem.kv_index)
    K, V = problem.k, problem.v
    if G % Gk or not np.array_equal(kv, np.arange(G) // (G // Gk)):
        K, V = K[kv], V[kv]  # not consecutive grouped-query heads: one kv slice per query
    with _single_threaded_blas():  # a few thin row products: threaded BLAS only waits
        cert = certify(
            np.stack(outs),
            problem.q,
            K,
            V,
            n_rows=_CERTIFICATE_ROWS,
            delta=delta,
            causal=problem.causal,
            scale=problem.scale,
            rng=rng,
        )
    assumptions = (
        f"{cert.assumptions} (attention.bounds.certify, delta = {cert.delta}); the output "
        "is fixed when certified, the probability is over the certificate's rows only"
    )
    bound = ErrorBound(cert.fro, "fro", "probabilistic", cert.delta, assumptions)
    return bound, cert.exact_rows_cost


# ---------------------------------------------------------------------------------------
# parameter checks
# ---------------------------------------------------------------------------------------


def _check_common(block_size, sample_size, n_bits, delta, error_bound):
    block_size = check_int(block_size, "block_size", minimum=1)
    sample_size = check_int(sample_size, "sample_size", minimum=1)
    n_bits = check_int(n_bits, "n_bits", minimum=1, maximum=30)
    delta = check_probability(delta, "delta")
    error_bound = check_error_bound(error_bound, ("exact",))
    return block_size, sample_size, n_bits, delta, error_bound


def _check_mix(uniform_mix) -> float:
    if isinstance(uniform_mix, bool) or not isinstance(uniform_mix, numbers.Real):
        raise TypeError(f"uniform_mix must be a real number, got {uniform_mix!r}")
    gamma = float(uniform_mix)
    if not (0.0 < gamma <= 1.0):
        raise ValueError(
            f"uniform_mix={gamma} must lie in (0, 1]: p_j must stay positive on every key "
            "for the estimator to be unbiased"
        )
    return gamma


# ---------------------------------------------------------------------------------------
# KDEformer
# ---------------------------------------------------------------------------------------


@register(
    "kdeformer",
    section="§3.3",
    family="sampling",
    causal=False,
    noncausal_reason=(
        "KDEformer (Zandieh et al., 2023) sorts all queries and keys by LSH code into "
        "blocks and samples residual columns with probabilities ||v_j||^2 / ||V||_F^2 "
        "over all keys: block boundaries and sampling weights depend on future keys; the "
        "paper gives no causal form"
    ),
    bound="probabilistic",
    summary="KDEformer: LSH diagonal blocks + ||v_j||^2/uniform importance-sampled columns.",
)
def _kdeformer(
    problem: Problem,
    *,
    rng,
    sample_size=128,
    block_size=64,
    n_bits=7,
    uniform_mix=0.5,
    error_bound=True,
    delta=0.1,
):
    r"""KDEformer ("spar + res"): exact LSH blocks plus importance-sampled residual columns.

    Queries and keys are hashed with ``n_bits`` shared random hyperplanes, sorted by code
    and cut into diagonal blocks of about ``block_size``; the block part is exact. The
    residual is estimated from ``sample_size`` i.i.d. columns drawn with
    :math:`p_j = (1-\gamma)\|v_j\|^2/\|V\|_F^2 + \gamma/m` (``gamma = uniform_mix``;
    the released code mixes :math:`\|v_j\|/\|V\|_2` with uniform), reweighted by
    :math:`1/(sp_j)` and masked inside the query's own block. ``V`` is augmented with a
    ones column, so the normaliser comes from the same pass. Exact when
    ``m <= block_size + sample_size`` (no more kernel evaluations than the estimator).
    """
    block_size, sample_size, n_bits, delta, error_bound = _check_common(
        block_size, sample_size, n_bits, delta, error_bound
    )
    gamma = _check_mix(uniform_mix)
    opts = {
        "block_size": block_size,
        "sample_size": sample_size,
        "n_bits": n_bits,
        "sampling": "kde",
        "min_seq_len": 1,
    }
    # Exact when m <= block_size + sample_size (no more kernel evaluations than the
    # estimator); otherwise one block + sample piece per slice.
    plan = []
    _plan_noncausal(problem.n, problem.m, 0, 0, opts, plan, force=True)
    outs, lses, plans, evals, flops = _run_slices(problem, plan, opts, rng, error_bound, mix=gamma)
    bound = _make_bound(problem, outs, plans, delta, "KDEformer") if error_bound else None
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


# ---------------------------------------------------------------------------------------
# HyperAttention
# ---------------------------------------------------------------------------------------


def _run_slices(problem, plan, opts, rng, error_bound, *, gray=False, mix=0.0, K=None, V=None):
    """Run ``plan`` on all slices of ``problem``; the per-slice plans for the bound.

    Without the bound (whose exact moments want float64 inputs) float32 inputs are
    processed in float32. ``K``/``V (G, m', .)`` replace the keys and values of every
    query slice (prescoring's selection).
    """
    dtype = np.float64 if error_bound else _work_dtype(problem)
    Q = np.ascontiguousarray(problem.q, dtype=dtype)
    if K is None:
        K, V, kvi = problem.k, problem.v, np.asarray(problem.kv_index, dtype=np.int64)
    else:
        kvi = np.arange(problem.n_slices, dtype=np.int64)
    K = np.ascontiguousarray(K, dtype=dtype)
    V = np.ascontiguousarray(V, dtype=dtype)
    out, lse, recs, evals, flops = _run_plan(
        Q, K, V, kvi, problem.scale, plan, opts, rng, gray=gray, mix=mix, pieces=error_bound
    )
    plans = [
        ((Q[g], K[kvi[g]], V[kvi[g]]), problem.causal, recs[g]) for g in range(problem.n_slices)
    ]
    return list(out), list(lse), plans, evals, flops


def _hyper_opts(block_size, sample_size, n_bits, sampling, min_seq_len):
    return {
        "block_size": block_size,
        "sample_size": sample_size,
        "n_bits": n_bits,
        "sampling": check_option(sampling, ("uniform", "row_norm"), "sampling"),
        "min_seq_len": check_int(min_seq_len, "min_seq_len", minimum=1),
    }


@register(
    "hyperattention",
    section="§3.3",
    family="sampling",
    causal=True,
    bound="probabilistic",
    summary="HyperAttention: sortLSH diagonal blocks + sampled columns, merged by lse.",
)
def _hyperattention(
    problem: Problem,
    *,
    rng,
    sample_size=128,
    block_size=64,
    n_bits=7,
    sampling="uniform",
    min_seq_len=128,
    error_bound=None,
    delta=0.1,
):
    r"""HyperAttention: sortLSH blocks and sampled columns, merged through lse.

    sortLSH: ``n_bits`` shared hyperplanes, codes in Gray order so that
    Hamming-adjacent buckets are adjacent, queries and keys sorted, exact attention on
    diagonal blocks of about ``block_size``. ``sample_size`` columns are drawn uniformly
    (``sampling="uniform"``, the released code) or by the row norms of :math:`[V\
    \mathbf 1]` (``"row_norm"``, the paper's AMM sampling applied to the augmented
    product), reweighted by :math:`1/(sp_j)` and masked inside the query's own block.
    Both parts are merged through their log-normalisers (as
    :func:`attention.exact.merge_partials`). Below ``min_seq_len`` queries or keys, or
    when ``m <= block_size + sample_size``, the attention is exact. ``causal=True``:
    recursive 2x2 split, upper-left and lower-right recursively causal, the lower-left
    block by the non-causal method (at any size), merged through lse; the split stops
    at an exact causal leaf once ``n <= min_seq_len`` or the lower-left pieces would
    have at most ``4 (block_size + sample_size)`` keys (there the estimator evaluates
    at least a quarter of the pairs and the exact kernel is faster per pair).

    **Exact leaves.** Below those sizes nothing is sampled and the result *is* exact
    attention (error at rounding level, not an accurate approximation): with the
    defaults (``block_size=64``, ``sample_size=128``) a square causal problem is one
    exact leaf up to ``n = 1537``; with ``sample_size=512`` up to ``n = 4609``, so at
    ``n = 2048`` and ``4096`` it is exact attention at exact cost. ``cost.key_fraction``
    (per slice) reports the share of the visible query-key pairs attended in exact
    pieces: 1.0 means no piece was sampled (the keys of the sampled pieces' LSH blocks
    also enter exactly, so the share of exactly attended pairs is at least this).

    Cost: sortLSH ``2 (n + m) d n_bits`` flops; each sampled piece of ``r`` rows costs
    ``r (block_size + sample_size)`` kernel evaluations; causal: ``O(n log(n) (block_size
    + sample_size))`` evaluations plus the exact leaves (``O(n (block_size +
    sample_size))``). Equal pieces of all heads run as one batch: exact leaves in one
    call of the exact kernel (on views of the inputs and of the output when the leaves
    tile the sequence, as the causal split's do), sampled pieces in one Numba kernel (per
    (piece, block) task: one score tile over the block's keys and the samples, one
    softmax pass, one product with their values, on the exact kernel's register tiles
    where it uses them, otherwise BLAS); one set of LSH hyperplanes per slice serves all
    its pieces, as the released code's fixed projections. Measured (synthetic causal
    SmolLM2-shaped heads, ``n = 16384``, 9 query / 3 key-value heads, float32, load
    3.6-3.8): 3.9x faster than exact attention, against 2.2x with the sampled pieces on
    BLAS.

    ``error_bound``: ``None`` (default) or ``False``: no bound, the method's own cost.
    ``True`` or ``"certificate"`` certifies the output by the sampled-row certificate
    of :func:`attention.bounds.certify`: 64 query rows drawn uniformly (from ``rng``,
    after the method's own draws) over all heads are computed exactly,
    ``64 m (2d + 2 d_v)`` flops (counted in ``cost``), and Hoeffding's relative-entropy
    bound gives :math:`\|\tilde Y - Y\|_F` with probability
    :math:`\ge 1-\delta` over those rows (informative when the error is spread over
    many rows; see :func:`~attention.bounds.certify`). ``"exact"``: the Markov bound on
    the estimator's exact second moment (module docstring), which costs an extra exact
    float64 pass, :math:`O(nm)`: quadratic, slower than exact attention (the method
    then also runs in float64). The certificate's fixed costs (value ranges and
    norms of every output row, in float64) add about 60-80% to the method's time on
    real SmolLM2 heads at 4096 tokens, which is why the default is off (as for
    ``window`` and ``bigbird``).
    """
    block_size, sample_size, n_bits, delta, _ = _check_common(
        block_size, sample_size, n_bits, delta, None
    )
    error_bound = check_error_bound(error_bound, ("certificate", "exact"))
    opts = _hyper_opts(block_size, sample_size, n_bits, sampling, min_seq_len)
    plan = []
    if problem.causal:
        _plan_causal(problem.n, problem.m, 0, 0, opts, plan)
    else:
        _plan_noncausal(problem.n, problem.m, 0, 0, opts, plan)
    markov = error_bound == "exact"
    outs, lses, plans, evals, flops = _run_slices(problem, plan, opts, rng, markov, gray=True)
    bound = None
    if markov:
        bound = _make_bound(problem, outs, plans, delta, "HyperAttention")
    elif error_bound == "certificate":
        bound, extra = _certificate_bound(problem, outs, delta, rng)
        flops += extra.flops
        evals += extra.kernel_evals
    # Every slice follows the same plan: one share of exactly attended pairs for all.
    frac = _exact_pair_fraction(plan, problem.n, problem.m, problem.causal)
    cost = Cost(flops, evals, key_fraction=np.full(problem.n_slices, frac))
    return method_result(problem, outs, lses, bound, cost)


# ---------------------------------------------------------------------------------------
# Prescoring + HyperAttention
# ---------------------------------------------------------------------------------------


def _top(scores, count):
    """Return the indices of the ``count`` largest scores (ties by index), sorted ascending."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return np.sort(order[:count])


@register(
    "prescoring",
    section="§3.3",
    family="sampling",
    causal=False,
    noncausal_reason=(
        "Prescoring (Li et al., 2025) preselects keys by k-means residuals or leverage "
        "scores computed over all keys, so future keys decide which past keys survive; "
        "only the HyperAttention stage has a causal split"
    ),
    bound="probabilistic",
    summary="Prescoring: k-means or leverage preselection of keys, then HyperAttention.",
)
def _prescoring(
    problem: Problem,
    *,
    rng,
    n_select=None,
    scoring="kmeans",
    n_clusters=16,
    sample_size=128,
    block_size=64,
    n_bits=7,
    sampling="uniform",
    min_seq_len=128,
    error_bound=True,
    delta=0.1,
):
    r"""Pre-scoring: keep the ``n_select`` highest-scoring keys, run HyperAttention on them.

    Scores are query independent: ``scoring="kmeans"`` clusters the keys
    (:func:`rnla.cluster.kmeans`, ``n_clusters`` centres) and scores each key by its
    squared distance to its centre (keys the clustering represents worst, the k-means
    analogue of a leverage score; our reading of Li et al.); ``"leverage"`` uses the
    exact leverage scores of ``K`` (:func:`rnla.sketch.leverage_scores`). Default
    ``n_select = max(1, m // 2)``; ``n_clusters`` is clamped to ``m``. The dropped keys
    bias the result: the bound adds the deterministic dropped-mass term
    :math:`2\varepsilon_iR` (exact dropped softmax mass, from the same extra exact pass)
    to the Markov bound of the HyperAttention part (relative to attention over the
    selected keys), by the triangle inequality.
    """
    block_size, sample_size, n_bits, delta, error_bound = _check_common(
        block_size, sample_size, n_bits, delta, error_bound
    )
    opts = _hyper_opts(block_size, sample_size, n_bits, sampling, min_seq_len)
    scoring = check_option(scoring, ("kmeans", "leverage"), "scoring")
    m = problem.m
    n_sel = max(1, m // 2) if n_select is None else n_select
    n_sel = check_int(n_sel, "n_select", minimum=1, maximum=m)
    # More centres than keys is one centre per key (the default 16 on short inputs).
    n_clusters = min(check_int(n_clusters, "n_clusters", minimum=1), m)

    # The scores are query independent: one selection per key/value slice, shared by
    # the query slices that read it (grouped-query heads).
    from attention.exact import _single_threaded_blas

    flops = 0.0
    picks = []
    n_kv = problem.k.shape[0]
    if scoring == "leverage":
        from rnla.sketch import leverage_scores

        for j in range(n_kv):
            k = problem.k[j].astype(np.float64)
            sc = leverage_scores(k)
            flops += 4.0 * m * k.shape[1] ** 2
            picks.append(_top(np.asarray(sc, dtype=np.float64), n_sel))
    else:
        from rnla.cluster import _kmeans_seeds, kmeans

        # k-means++ seeds drawn from rng in key/value slice order (as one kmeans call
        # per slice would draw them); the Lloyd iterations, which draw nothing, then run
        # on all cores (one-thread BLAS: thin products): the same picks, bit for bit.
        with _single_threaded_blas():
            seeds = [_kmeans_seeds(problem.k[j], n_clusters, rng) for j in range(n_kv)]

        def score(j):
            k = problem.k[j].astype(np.float64)
            res = kmeans(k, n_clusters, init=seeds[j])
            sc = np.sum((k - res.centers[res.labels]) ** 2, axis=1)
            fl = 2.0 * m * k.shape[1] * n_clusters * max(int(res.n_iter), 1)
            return _top(np.asarray(sc, dtype=np.float64), n_sel), fl

        for pick, fl in map_slices(score, range(n_kv)):
            picks.append(pick)
            flops += fl
    chosen = [picks[j] for j in problem.kv_index]
    Ksel = np.stack([problem.k[j][picks[j]] for j in problem.kv_index])
    Vsel = np.stack([problem.v[j][picks[j]] for j in problem.kv_index])
    plan = []
    _plan_noncausal(problem.n, n_sel, 0, 0, opts, plan)
    outs, lses, plans, evals, fl = _run_slices(
        problem, plan, opts, rng, error_bound, gray=True, K=Ksel, V=Vsel
    )
    flops += fl
    bound = None
    if error_bound:
        bound = _prescoring_bound(problem, outs, plans, chosen, delta)
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


def _prescoring_bound(problem, outs, plans, chosen, delta):
    """Markov bound of the HyperAttention part + deterministic dropped-mass term."""
    inner = _make_bound(problem, outs, plans, delta, "Prescoring (HyperAttention part)")
    drop2 = 0.0
    for g, keys in enumerate(chosen):
        q, k, v = (x.astype(np.float64) for x in problem.slice(g))
        P, _ = _probabilities(q, k, problem.scale, False)
        eps = 1.0 - P[:, keys].sum(axis=1)
        _, R = value_radius(v)
        drop2 += float(np.sum((2.0 * np.clip(eps, 0.0, 1.0) * float(R)) ** 2))
    value = inner.value + math.sqrt(drop2)
    assumptions = (
        inner.assumptions
        + "; relative to attention over the selected keys, plus the deterministic "
        "dropped-mass bound 2 eps_i R (eps_i = exact softmax mass of the unselected keys, "
        "R = value radius) by the triangle inequality"
    )
    return ErrorBound(value, "fro", "probabilistic", delta, assumptions)
