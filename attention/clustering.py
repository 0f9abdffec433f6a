r"""Sparse and clustering softmax-attention approximations (survey arXiv:2604.01757, §3).

Softmax sharpens the differences between scores, so each row of
:math:`P = Z^{-1}A`, :math:`A = \exp(QK^\top s)`, is nearly sparse. The methods here
compute exact scores on a key set :math:`S_i` per query and renormalise:

* ``"topk"`` - the :math:`k` largest scores of each row (the sparse yardstick: it forms
  every score to find them);
* ``"window"`` - a sliding window of keys around each query position (local attention);
* ``"bigbird"`` - window blocks, global blocks and random blocks (BigBird);
* ``"reformer"`` - angular LSH of the normalised queries and keys, sorted into chunks
  that attend their own and the previous chunk, several rounds merged;
* ``"routing"`` - spherical k-means on queries and keys, each centroid attends its
  nearest keys (Routing Transformer);
* ``"smyrf"`` - asymmetric transforms turning inner products into distances, balanced
  buckets of a random projection, rounds weighted by their softmax mass;
* ``"multipole"`` - k-means on keys, exact attention to the highest-scoring clusters up
  to a key budget, the others through their centroid (one "multipole" term each).

Partial results over key sets are combined through their log-normalisers: for key sets
:math:`S` and :math:`T` with outputs :math:`y_S, y_T` and log-normalisers
:math:`\ell_S, \ell_T`, the merged output is
:math:`(e^{\ell_S}y_S + e^{\ell_T}y_T)/(e^{\ell_S} + e^{\ell_T})`.

**Bounds.** ``topk`` (always) and ``window``/``bigbird`` (with ``error_bound="exact"``)
return the deterministic dropped-mass bound :func:`attention.bounds.dropped_mass_bound`:
with :math:`\varepsilon_i = \sum_{j \notin S_i} p_{ij}` the exact dropped probability,
:math:`\|y_i - \tilde y_i\| \le \varepsilon_i(R + \|\tilde y_i - c\|)`. Computing
:math:`\varepsilon_i = 1 - e^{\ell_{S_i} - \ell_i}` needs the exact log-normaliser
:math:`\ell_i`, i.e. one exact pass (``topk`` forms all scores anyway). The LSH and
k-means methods return no bound: their theory gives none that can be checked on the
data (:func:`attention.certify` still applies). Bounds are with respect to exact
attention of the given inputs in exact arithmetic, padded by ``4 eps (||~y_i|| + R)``
for the rounding of the output to the problem dtype.

**Causality.** ``topk``, ``window`` and ``bigbird`` support ``causal=True`` without
future leakage (their key sets and random draws do not depend on future keys). The LSH
and k-means methods choose key sets from all keys (bucket boundaries, centroids), so
future keys would change past outputs: they are registered with ``causal=False``.

References
----------
Survey: Serret et al., arXiv:2604.01757, §3. Reformer: N. Kitaev, L. Kaiser,
A. Levskaya, ICLR 2020, arXiv:2001.04451. Routing Transformer: A. Roy, M. Saffar,
A. Vaswani, D. Grangier, TACL 2021, arXiv:2003.05997. SMYRF: G. Daras, N. Kitaev,
A. Odena, A. Dimakis, NeurIPS 2020, arXiv:2010.05315. Multipole Attention:
C. Hooper et al., arXiv:2506.13059. BigBird: M. Zaheer et al., NeurIPS 2020,
arXiv:2007.14062. Longformer (sliding window): I. Beltagy, M. Peters, A. Cohan,
arXiv:2004.05150.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from attention._core import Cost, ErrorBound, Problem
from attention._registry import MethodResult, problem_cost_exact, register
from attention.bounds import dropped_mass_bound, value_radius
from attention.exact import _attend
from rnla._validation import check_int, check_option
from rnla.cluster import angular_lsh, balanced_buckets, kmeans

__all__: list[str] = []

_NEG = -np.inf


# ---------------------------------------------------------------------------------------
# Shared pieces: exact attention on a block of queries and keys, log-sum-exp merging
# ---------------------------------------------------------------------------------------


def _partial(qb, kb, vb, scale, keep=None, logw=None):
    """Exact softmax attention of queries ``qb`` over keys ``kb`` (float64).

    ``keep`` (b, s) marks visible pairs, ``logw`` (b, s) or (s,) adds log-weights to the
    scores (duplicate corrections, cluster sizes). Returns ``(out (b, dv), lse (b,))``;
    rows that see no key get zero output and ``lse = -inf``.
    """
    s = (qb @ kb.T) * scale
    if logw is not None:
        s = s + logw
    if keep is not None:
        s = np.where(keep, s, _NEG)
    mx = s.max(axis=1) if s.shape[1] else np.full(s.shape[0], _NEG)
    finite = np.isfinite(mx)
    shift = np.where(finite, mx, 0.0)
    e = np.exp(s - shift[:, None])
    z = e.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(finite[:, None], (e @ vb) / np.where(finite, z, 1.0)[:, None], 0.0)
        lse = np.where(finite, shift + np.log(np.where(finite, z, 1.0)), _NEG)
    return out, lse


def _merge_into(acc, L, rows, o, lse):
    """Merge partial ``(o, lse)`` of query ``rows`` into the accumulators ``acc``, ``L``."""
    La = L[rows]
    new = np.logaddexp(La, lse)
    ok = np.isfinite(new)
    safe = np.where(ok, new, 0.0)
    wa = np.where(ok, np.exp(La - safe), 0.0)
    wb = np.where(ok, np.exp(lse - safe), 0.0)
    acc[rows] = wa[:, None] * acc[rows] + wb[:, None] * o
    L[rows] = new


def _unit_rows(X):
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _slices64(problem: Problem, g: int):
    q, k, v = problem.slice(g)
    return q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)


def _positions(problem: Problem) -> np.ndarray:
    # Key position aligned with each query (bottom-right alignment, as for causality).
    return np.arange(problem.n, dtype=np.int64) + problem.offset


def _finish_out(problem: Problem, out: np.ndarray) -> np.ndarray:
    return out.astype(problem.dtype)


def _dropped_bound(problem, outs, lse_kept, lse_full, how: str) -> ErrorBound:
    """Deterministic dropped-mass bound over all slices (Frobenius norm of the output)."""
    u = float(np.finfo(problem.dtype).eps)
    total = 0.0
    for g in range(problem.n_slices):
        _, _, v = problem.slice(g)
        with np.errstate(invalid="ignore"):
            eps = -np.expm1(lse_kept[g] - lse_full[g])
        # Rows seeing no key (lse_full = -inf) drop nothing; rounding can leave eps < 0.
        eps = np.clip(np.where(np.isfinite(lse_full[g]), eps, 0.0), 0.0, 1.0)
        rows = dropped_mass_bound(eps, v, Y_tilde=outs[g]).rows
        _, R = value_radius(v)
        rows = rows + 4 * u * (np.linalg.norm(outs[g].astype(np.float64), axis=1) + R)
        total += float(np.sum(rows * rows))
    return ErrorBound(
        math.sqrt(total),
        "fro",
        "deterministic",
        1.0,
        "dropped-mass bound ||y_i - ~y_i|| <= eps_i (R + ||~y_i - c||) (attention.bounds."
        "dropped_mass_bound; exact scores kept on a key subset and renormalised) with the "
        f"exact dropped probability eps_i = 1 - exp(lse_kept_i - lse_i) ({how}), padded by "
        "4 eps (||~y_i|| + R) for the cast to the output dtype",
    )


def _check_error_bound(error_bound):
    if error_bound is None:
        return None
    return check_option(error_bound, ("exact",), "error_bound")


def _cost(problem: Problem, pairs: float, extra: float = 0.0) -> Cost:
    return Cost(flops=2.0 * pairs * (problem.d + problem.dv) + extra, kernel_evals=int(pairs))


# ---------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------


@register(
    "topk",
    section="§3",
    family="sparse",
    causal=True,
    masks=True,
    bound="deterministic",
    summary="Exact top-k keys per query row (sparse yardstick; forms every score).",
)
def _topk(problem: Problem, *, rng, k=32):
    r"""Exact per-row top-k attention (registered as ``"topk"``).

    Parameters
    ----------
    k : int, default=32
        Keys kept per query row (all visible keys when fewer).

    Notes
    -----
    Forms the scores :math:`S = QK^\top s` (plus mask), keeps the :math:`k` largest of
    each row and renormalises. The exact log-normaliser comes from the same scores, so
    the dropped mass :math:`\varepsilon_i` and the deterministic bound
    :math:`\varepsilon_i(R + \|\tilde y_i - c\|)` are free; the bound is attained when
    the kept keys share one value and the dropped keys its opposite. Cost
    :math:`2nm\,d + 2nk\,d_v` flops and :math:`nm` kernel evaluations per slice: a
    quality yardstick, not a fast method.
    """
    k = check_int(k, "k", minimum=1)
    n, m = problem.n, problem.m
    kk = min(k, m)
    G = problem.n_slices
    outs = np.empty((G, n, problem.dv))
    lse_kept = np.empty((G, n))
    lse_full = np.empty((G, n))
    for g in range(G):
        q, kx, v = _slices64(problem, g)
        S = (q @ kx.T) * problem.scale
        bias = problem.bias(g)
        if bias is not None:
            S = S + bias
        keep = problem.keep(g)
        if keep is not None:
            S = np.where(keep, S, _NEG)
        sel = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        Ssel = np.take_along_axis(S, sel, axis=1)
        mx = S.max(axis=1)
        finite = np.isfinite(mx)
        shift = np.where(finite, mx, 0.0)
        with np.errstate(divide="ignore"):
            lse_full[g] = np.where(finite, shift + np.log(np.exp(S - shift[:, None]).sum(1)), _NEG)
            e = np.exp(Ssel - shift[:, None])
            z = e.sum(axis=1)
            lse_kept[g] = np.where(finite, shift + np.log(np.where(finite, z, 1.0)), _NEG)
        zs = np.where(finite, z, 1.0)
        outs[g] = np.where(finite[:, None], np.einsum("is,isd->id", e, v[sel]) / zs[:, None], 0.0)
    bound = _dropped_bound(problem, outs, lse_kept, lse_full, "from the scores formed by topk")
    cost = Cost(flops=2.0 * G * (n * m * problem.d + n * kk * problem.dv), kernel_evals=G * n * m)
    return MethodResult(_finish_out(problem, outs), lse_kept.astype(problem.dtype), bound, cost)


# ---------------------------------------------------------------------------------------
# Sliding window and BigBird
# ---------------------------------------------------------------------------------------

_WINDOW_BLOCK = 64  # query rows per dense block of the banded computation


def _exact_lse(problem: Problem) -> np.ndarray:
    # One exact pass in float64 (the kept log-normalisers are float64 too, so the
    # dropped mass 1 - exp(lse_kept - lse) is not swamped by float32 rounding).
    p64 = dataclasses.replace(
        problem,
        q=problem.q.astype(np.float64),
        k=problem.k.astype(np.float64),
        v=problem.v.astype(np.float64),
        dtype=np.dtype(np.float64),
    )
    _, lse = _attend(p64)
    return lse


@register(
    "window",
    section="§3",
    family="sparse",
    causal=True,
    bound="deterministic",
    summary="Sliding-window (local) attention; exact dropped-mass bound on request.",
)
def _window(problem: Problem, *, rng, window=64, error_bound=None):
    r"""Sliding-window attention (registered as ``"window"``).

    Parameters
    ----------
    window : int, default=64
        Half-width: query ``i`` (at key position ``p_i = i + m - n``) sees the keys
        ``|j - p_i| <= window`` (``p_i - window <= j <= p_i`` when causal).
    error_bound : {None, "exact"}, default=None
        ``"exact"`` runs one exact pass for the log-normalisers (the flops of exact
        attention, added to ``cost.flops``) and returns the deterministic dropped-mass
        bound.

    Notes
    -----
    Computed in dense blocks of 64 query rows against the band of keys they need, so
    the cost is about :math:`2n(2w + 64)(d + d_v)` flops per slice. Queries whose
    window holds no key (``n > m``, non-causal) get zero output.
    """
    window = check_int(window, "window", minimum=0)
    error_bound = _check_error_bound(error_bound)
    n, m, G = problem.n, problem.m, problem.n_slices
    pos = _positions(problem)
    outs = np.zeros((G, n, problem.dv))
    lse = np.full((G, n), _NEG)
    pairs = 0
    for g in range(G):
        q, k, v = _slices64(problem, g)
        for r0 in range(0, n, _WINDOW_BLOCK):
            r1 = min(n, r0 + _WINDOW_BLOCK)
            p = pos[r0:r1]
            lo = max(0, int(p[0]) - window)
            hi = min(m, int(p[-1]) + (1 if problem.causal else window + 1))
            if hi <= lo:
                continue
            j = np.arange(lo, hi)
            keep = np.abs(j[None, :] - p[:, None]) <= window
            if problem.causal:
                keep &= j[None, :] <= p[:, None]
            o, ls = _partial(q[r0:r1], k[lo:hi], v[lo:hi], problem.scale, keep)
            outs[g, r0:r1], lse[g, r0:r1] = o, ls
            pairs += (r1 - r0) * (hi - lo)
    bound = None
    extra = 0.0
    if error_bound == "exact":
        lse_full = _exact_lse(problem)
        bound = _dropped_bound(problem, outs, lse, lse_full, "one exact pass")
        extra = problem_cost_exact(problem).flops
    return MethodResult(
        _finish_out(problem, outs), lse.astype(problem.dtype), bound, _cost(problem, pairs, extra)
    )


@register(
    "bigbird",
    section="§3",
    family="sparse",
    causal=True,
    bound="deterministic",
    summary="BigBird: window + global + random key blocks; exact dropped-mass bound on request.",
)
def _bigbird(
    problem: Problem,
    *,
    rng,
    block_size=32,
    n_window=3,
    n_global=1,
    n_random=2,
    error_bound=None,
):
    r"""BigBird block-sparse attention (registered as ``"bigbird"``).

    Parameters
    ----------
    block_size : int, default=32
        Queries and keys are grouped in blocks of this many positions.
    n_window : int, default=3
        Key blocks around the query block's position (``n_window // 2`` on each side;
        the ``n_window - 1`` previous blocks and its own when causal).
    n_global : int, default=1
        The first ``n_global`` key blocks are seen by every query, and the queries at
        those positions see every (visible) key.
    n_random : int, default=2
        Random key blocks per query block, drawn from ``rng`` among the blocks not yet
        included (when causal, among blocks not after the query block).
    error_bound : {None, "exact"}, default=None
        ``"exact"`` adds one exact pass for the deterministic dropped-mass bound.

    Notes
    -----
    Each query block attends the union of its window, global and random key blocks,
    computed densely: about :math:`2n\,b(n_w + n_g + n_r)(d + d_v)` flops per slice,
    plus :math:`2 n_g b\,m(d + d_v)` for the global queries. The random blocks depend
    only on ``rng`` and positions, never on the data, so the same seed gives the same
    pattern and causal masking leaks nothing (Zaheer et al., 2020).
    """
    bs = check_int(block_size, "block_size", minimum=1)
    n_window = check_int(n_window, "n_window", minimum=1)
    n_global = check_int(n_global, "n_global", minimum=0)
    n_random = check_int(n_random, "n_random", minimum=0)
    error_bound = _check_error_bound(error_bound)
    n, m, G = problem.n, problem.m, problem.n_slices
    nkb = -(-m // bs)
    pos = _positions(problem)
    outs = np.zeros((G, n, problem.dv))
    lse = np.full((G, n), _NEG)
    pairs = 0
    n_global_pos = n_global * bs
    for g in range(G):
        q, k, v = _slices64(problem, g)
        for r0 in range(0, n, bs):
            r1 = min(n, r0 + bs)
            p = pos[r0:r1]
            b_lo = int(p[0]) // bs if p[0] >= 0 else -1
            b_hi = int(p[-1]) // bs if p[-1] >= 0 else -1
            if problem.causal:
                win = range(b_lo - (n_window - 1), b_hi + 1)
                top = b_hi
            else:
                h = n_window // 2
                win = range(b_lo - h, b_hi + h + 1)
                top = nkb - 1
            blocks = {b for b in win if 0 <= b < nkb}
            blocks |= {b for b in range(min(n_global, nkb)) if b <= top}
            pool = np.array([b for b in range(min(top, nkb - 1) + 1) if b not in blocks])
            n_draw = min(n_random, pool.size)
            # Drawn for every block (even with an empty pool the draw count is fixed by
            # positions only), so the pattern never depends on the data.
            if n_draw:
                blocks |= set(rng.choice(pool, size=n_draw, replace=False).tolist())
            if not blocks:
                continue
            j = np.concatenate([np.arange(b * bs, min(m, (b + 1) * bs)) for b in sorted(blocks)])
            keep = (j[None, :] <= p[:, None]) if problem.causal else None
            o, ls = _partial(q[r0:r1], k[j], v[j], problem.scale, keep)
            outs[g, r0:r1], lse[g, r0:r1] = o, ls
            pairs += (r1 - r0) * j.size
        # Global queries (positions < n_global * block_size) see every visible key.
        gq = np.flatnonzero((pos >= 0) & (pos < n_global_pos))
        if gq.size:
            keep = (np.arange(m)[None, :] <= pos[gq, None]) if problem.causal else None
            o, ls = _partial(q[gq], k, v, problem.scale, keep)
            outs[g, gq], lse[g, gq] = o, ls
            pairs += gq.size * m
    bound = None
    extra = 0.0
    if error_bound == "exact":
        lse_full = _exact_lse(problem)
        bound = _dropped_bound(problem, outs, lse, lse_full, "one exact pass")
        extra = problem_cost_exact(problem).flops
    return MethodResult(
        _finish_out(problem, outs), lse.astype(problem.dtype), bound, _cost(problem, pairs, extra)
    )


# ---------------------------------------------------------------------------------------
# Reformer (angular LSH, sorted chunks, multi-round with duplicate correction)
# ---------------------------------------------------------------------------------------


@register(
    "reformer",
    section="§3.2",
    family="clustering",
    causal=False,
    bound=None,
    summary="Reformer: angular LSH of normalised q/k, sorted chunks + previous chunk, rounds.",
)
def _reformer(problem: Problem, *, rng, n_buckets=8, chunk_size=32, n_rounds=2):
    r"""Reformer LSH attention (registered as ``"reformer"``).

    Parameters
    ----------
    n_buckets : int, default=8
        Angular-LSH buckets (even).
    chunk_size : int, default=32
        Items (queries and keys together) per chunk of the sorted sequence.
    n_rounds : int, default=2
        Independent hash rounds.

    Notes
    -----
    Shared-QK style: the normalised queries and keys are hashed with the same rotation
    (:func:`rnla.cluster.angular_lsh`); the ``n + m`` items are sorted by (bucket,
    position) and cut into chunks; the queries of a chunk attend the keys of that chunk
    and of the previous one, with exact scores. Round ``r`` gives a partial result over
    key set :math:`S_{r,i}`; the rounds are merged through log-sum-exp after subtracting
    :math:`\log N_{ij}` from each score, :math:`N_{ij}` the number of rounds in which
    key ``j`` is in the set of query ``i``, so the merge is exact softmax attention over
    :math:`\cup_r S_{r,i}` (Kitaev et al., 2020, §3). Queries that see no key in any
    round get zero output. Cost about :math:`4\,n\,c\,r(d + d_v)` flops plus hashing
    :math:`(n + m)\,d\,b\,r`. Not causal: bucket and chunk boundaries depend on all keys.
    """
    n_buckets = check_int(n_buckets, "n_buckets", minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets} must be even (angular LSH)")
    cs = check_int(chunk_size, "chunk_size", minimum=1)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    N = n + m
    n_chunks = -(-N // cs)
    outs = np.zeros((G, n, problem.dv))
    lses = np.full((G, n), _NEG)
    pairs = 0
    pos = np.concatenate([_positions(problem), np.arange(m)])
    is_key = np.concatenate([np.zeros(n, np.int64), np.ones(m, np.int64)])
    for g in range(G):
        q, k, v = _slices64(problem, g)
        codes = angular_lsh(
            np.vstack([_unit_rows(q), _unit_rows(k)]), n_buckets, n_rounds=n_rounds, rng=rng
        )
        chunk = np.empty((n_rounds, N), dtype=np.int64)
        for r in range(n_rounds):
            # Sort by bucket, then position; keys before queries at equal position.
            order = np.lexsort((1 - is_key, pos, codes[r]))
            chunk[r, order] = np.arange(N) // cs
        cq, ck = chunk[:, :n], chunk[:, n:]
        acc, L = outs[g], lses[g]
        for r in range(n_rounds):
            for c in range(n_chunks):
                qi = np.flatnonzero(cq[r] == c)
                kj = np.flatnonzero((ck[r] == c) | (ck[r] == c - 1))
                if qi.size == 0 or kj.size == 0:
                    continue
                # N_ij: rounds in which key j lies in query i's chunk or the previous one.
                diff = cq[:, qi][:, :, None] - ck[:, kj][:, None, :]
                count = np.sum((diff == 0) | (diff == 1), axis=0)
                o, ls = _partial(q[qi], k[kj], v[kj], problem.scale, logw=-np.log(count))
                _merge_into(acc, L, qi, o, ls)
                pairs += qi.size * kj.size
    hash_flops = 2.0 * G * N * problem.d * (n_buckets // 2) * n_rounds
    return MethodResult(
        _finish_out(problem, outs),
        lses.astype(problem.dtype),
        None,
        _cost(problem, pairs, hash_flops),
    )


# ---------------------------------------------------------------------------------------
# Routing Transformer (spherical k-means)
# ---------------------------------------------------------------------------------------


@register(
    "routing",
    section="§3.2",
    family="clustering",
    causal=False,
    bound=None,
    summary="Routing Transformer: spherical k-means on q/k, each centroid attends its top keys.",
)
def _routing(problem: Problem, *, rng, n_clusters=8, members=None, n_iter=10):
    r"""Routing attention (registered as ``"routing"``).

    Parameters
    ----------
    n_clusters : int, default=8
        Centroids of the spherical k-means on the normalised queries and keys.
    members : int, optional
        Keys attended per centroid (its ``members`` nearest keys by cosine); default
        ``ceil(m / n_clusters)``, the balanced cluster size.
    n_iter : int, default=10
        k-means iterations.

    Notes
    -----
    Spherical k-means (:func:`rnla.cluster.kmeans`) on the union of the normalised
    queries and keys; each centroid attends its ``members`` nearest keys (top-k
    balancing as in Roy et al., 2021) and each query is routed to its nearest centroid,
    so every query has exactly one key set of size ``members``. Cost
    :math:`2(n + m)\,d\,C\,t` for k-means plus :math:`2n\,w(d + d_v)`. Not causal:
    the centroids depend on all keys and queries.
    """
    C = check_int(n_clusters, "n_clusters", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    w = -(-m // C) if members is None else check_int(members, "members", minimum=1)
    w = min(w, m)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    if C > n + m:
        raise ValueError(f"n_clusters={C} must be <= n + m = {n + m}")
    outs = np.zeros((G, n, problem.dv))
    lses = np.full((G, n), _NEG)
    pairs = 0
    for g in range(G):
        q, k, v = _slices64(problem, g)
        qn, kn = _unit_rows(q), _unit_rows(k)
        cent = kmeans(np.vstack([qn, kn]), C, spherical=True, n_iter=n_iter, rng=rng).centers
        label_q = np.argmax(qn @ cent.T, axis=1)
        sim_k = kn @ cent.T
        for c in range(C):
            qi = np.flatnonzero(label_q == c)
            if qi.size == 0:
                continue
            kj = np.sort(np.argpartition(-sim_k[:, c], w - 1)[:w])
            o, ls = _partial(q[qi], k[kj], v[kj], problem.scale)
            outs[g, qi], lses[g, qi] = o, ls
            pairs += qi.size * w
    km_flops = 2.0 * G * (n + m) * problem.d * C * (n_iter + 2)
    return MethodResult(
        _finish_out(problem, outs),
        lses.astype(problem.dtype),
        None,
        _cost(problem, pairs, km_flops),
    )


# ---------------------------------------------------------------------------------------
# SMYRF (asymmetric transforms, balanced buckets)
# ---------------------------------------------------------------------------------------


@register(
    "smyrf",
    section="§3.2",
    family="clustering",
    causal=False,
    bound=None,
    summary="SMYRF: asymmetric transforms, balanced projection buckets, mass-weighted rounds.",
)
def _smyrf(problem: Problem, *, rng, bucket_size=32, n_rounds=2):
    r"""SMYRF attention (registered as ``"smyrf"``).

    Parameters
    ----------
    bucket_size : int, default=32
        Target number of queries (and keys) per bucket: ``L = max(1, min(n, m) //
        bucket_size)`` buckets.
    n_rounds : int, default=2
        Independent rounds.

    Notes
    -----
    With :math:`M^2 = \max\|q\|^2 + \max\|k\|^2`, the transforms
    :math:`\varphi(q) = [q; 0; \sqrt{M^2 - \|q\|^2}]` and
    :math:`\psi(k) = [k; \sqrt{M^2 - \|k\|^2}; 0]` give
    :math:`\|\varphi(q) - \psi(k)\|^2 = 2M^2 - 2\langle q, k\rangle`, so nearby pairs
    are the large inner products. Each round projects both onto one Gaussian direction
    and cuts queries and keys into ``L`` equal-size buckets
    (:func:`rnla.cluster.balanced_buckets`); query bucket ``b`` attends key bucket ``b``.
    The rounds are averaged with weights proportional to their softmax mass
    :math:`e^{\ell_r}` (Daras et al., 2020, §3), i.e. merged through log-sum-exp without
    duplicate correction (a key found in two rounds counts twice). Cost about
    :math:`2n(m/L)(d + d_v)r` flops. Not causal: buckets depend on all keys.
    """
    bsz = check_int(bucket_size, "bucket_size", minimum=1)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    L = max(1, min(n, m) // bsz)
    outs = np.zeros((G, n, problem.dv))
    lses = np.full((G, n), _NEG)
    pairs = 0
    for g in range(G):
        q, k, v = _slices64(problem, g)
        nq, nk = np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", k, k)
        M2 = nq.max() + nk.max()
        zq, zk = np.zeros((n, 1)), np.zeros((m, 1))
        phi = np.hstack([q, zq, np.sqrt(np.maximum(M2 - nq, 0.0))[:, None]])
        psi = np.hstack([k, np.sqrt(np.maximum(M2 - nk, 0.0))[:, None], zk])
        W = rng.standard_normal((n_rounds, problem.d + 2))
        acc, Lse = outs[g], lses[g]
        for r in range(n_rounds):
            bq = balanced_buckets(phi @ W[r], L)
            bk = balanced_buckets(psi @ W[r], L)
            for b in range(L):
                qi, kj = np.flatnonzero(bq == b), np.flatnonzero(bk == b)
                o, ls = _partial(q[qi], k[kj], v[kj], problem.scale)
                _merge_into(acc, Lse, qi, o, ls)
                pairs += qi.size * kj.size
    return MethodResult(
        _finish_out(problem, outs),
        lses.astype(problem.dtype),
        None,
        _cost(problem, pairs, 2.0 * G * (n + m) * (problem.d + 2) * n_rounds),
    )


# ---------------------------------------------------------------------------------------
# Multipole (k-means on keys: near clusters exact, far clusters through centroids)
# ---------------------------------------------------------------------------------------


@register(
    "multipole",
    section="§3.2",
    family="clustering",
    causal=False,
    bound=None,
    summary="Multipole: k-means keys, exact top clusters up to a budget, centroids for the rest.",
)
def _multipole(problem: Problem, *, rng, n_clusters=16, budget=128, n_iter=10):
    r"""Multipole attention (registered as ``"multipole"``).

    Parameters
    ----------
    n_clusters : int, default=16
        k-means clusters of the keys (at most ``m``).
    budget : int, default=128
        Keys attended exactly per query: the clusters with the largest estimated mass
        are taken while their total size stays within the budget (at least one).
    n_iter : int, default=10
        k-means iterations.

    Notes
    -----
    k-means (:func:`rnla.cluster.kmeans`) on the keys gives centroids :math:`\mu_c`,
    sizes :math:`N_c` and mean values :math:`\bar v_c`. A cluster's estimated mass for
    query :math:`q` is :math:`N_c e^{\langle q, \mu_c\rangle s}`; the top clusters up to
    the budget are attended exactly and every other cluster contributes the single term
    :math:`N_c e^{\langle q, \mu_c\rangle s}\bar v_c` (Hooper et al., 2025; survey
    §3.2). The two parts are merged through log-sum-exp. Cost
    :math:`2m\,d\,C\,t` (k-means) :math:`+ 2nC(d + d_v) + 2n\,B(d + d_v)` flops per
    slice. Not causal: the clusters depend on all keys.
    """
    C = check_int(n_clusters, "n_clusters", minimum=1)
    budget = check_int(budget, "budget", minimum=1)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    C = min(C, m)
    outs = np.zeros((G, n, problem.dv))
    lses = np.full((G, n), _NEG)
    pairs = 0
    for g in range(G):
        q, k, v = _slices64(problem, g)
        km = kmeans(k, C, n_iter=n_iter, rng=rng)
        labels = km.labels
        sizes = np.bincount(labels, minlength=C).astype(np.float64)
        mu = km.centers.astype(np.float64)
        vbar = np.zeros((C, problem.dv))
        np.add.at(vbar, labels, v)
        vbar /= np.maximum(sizes, 1.0)[:, None]
        with np.errstate(divide="ignore"):
            logN = np.log(sizes)
        est = (q @ mu.T) * problem.scale + logN  # (n, C) log estimated cluster mass
        order = np.argsort(-est, axis=1, kind="stable")
        csum = np.cumsum(sizes[order], axis=1)
        take = csum <= budget
        take[:, 0] = True
        near = np.zeros((n, C), dtype=bool)
        np.put_along_axis(near, order, take, axis=1)
        near &= sizes[None, :] > 0
        acc, Lse = outs[g], lses[g]
        for c in range(C):
            qi = np.flatnonzero(near[:, c])
            if qi.size == 0:
                continue
            kj = np.flatnonzero(labels == c)
            o, ls = _partial(q[qi], k[kj], v[kj], problem.scale)
            _merge_into(acc, Lse, qi, o, ls)
            pairs += qi.size * kj.size
        far = ~near & (sizes[None, :] > 0)
        o, ls = _partial(q, mu, vbar, problem.scale, keep=far, logw=logN)
        _merge_into(acc, Lse, np.arange(n), o, ls)
        pairs += n * C
    km_flops = 2.0 * G * m * problem.d * C * (n_iter + 2)
    return MethodResult(
        _finish_out(problem, outs),
        lses.astype(problem.dtype),
        None,
        _cost(problem, pairs, km_flops),
    )
