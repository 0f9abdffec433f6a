r"""Clustering and LSH softmax-attention approximations (survey arXiv:2604.01757, §3).

Softmax sharpens the differences between scores, so each row of
:math:`P = Z^{-1}A`, :math:`A = \exp(QK^\top s)`, is nearly sparse. The methods here
choose the key set :math:`S_i` of each query by hashing or clustering, compute exact
scores on it and renormalise:

* ``"reformer"`` - angular LSH of the normalised queries and keys, sorted into chunks
  that attend their own and the previous chunk, several rounds merged;
* ``"routing"`` - spherical k-means on queries and keys, each centroid attends its
  nearest keys (Routing Transformer);
* ``"smyrf"`` - asymmetric transforms turning inner products into distances, balanced
  buckets of a random projection, rounds weighted by their softmax mass;
* ``"multipole"`` - k-means on keys, exact attention to the highest-scoring clusters up
  to a key budget, the others through their centroid (one "multipole" term each).

The fixed-pattern sparse methods (``topk``, ``window``, ``bigbird``) live in
:mod:`attention.sparse`; partial results are merged through their log-normalisers with
its helpers.

**Bounds.** These methods return no bound: their theory gives none that can be checked
on the data (:func:`attention.certify` still applies).

**Causality.** They choose key sets from all keys (bucket boundaries, centroids), so
future keys would change past outputs: they are registered with ``causal=False``.

References
----------
Survey: Serret et al., arXiv:2604.01757, §3. Reformer: N. Kitaev, L. Kaiser,
A. Levskaya, ICLR 2020, arXiv:2001.04451. Routing Transformer: A. Roy, M. Saffar,
A. Vaswani, D. Grangier, TACL 2021, arXiv:2003.05997. SMYRF: G. Daras, N. Kitaev,
A. Odena, A. Dimakis, NeurIPS 2020, arXiv:2010.05315. Multipole Attention:
C. Hooper et al., arXiv:2506.13059.
"""

from __future__ import annotations

import numpy as np

from attention._core import Problem, method_result
from attention._registry import register
from attention.sparse import (
    _NEG,
    _cost,
    _merge_into,
    _partial,
    _positions,
    _slices64,
    _unit_rows,
)
from rnla._validation import check_int
from rnla.cluster import angular_lsh, balanced_buckets, kmeans

__all__: list[str] = []


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
        Angular-LSH buckets (even); clamped to ``n + m`` rounded up to even (finer
        buckets than items only cost memory).
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
    :math:`\cup_r S_{r,i}` (Kitaev et al., 2020, §3). A query that sees no key in any
    round (its chunk and the previous one hold only queries, e.g. when ``m`` is much
    smaller than ``n``) attends exactly to all keys instead (counted in the cost). Cost
    about :math:`4\,n\,c\,r(d + d_v)` flops plus hashing :math:`(n + m)\,d\,b\,r`. Not
    causal: bucket and chunk boundaries depend on all keys.
    """
    n_buckets = check_int(n_buckets, "n_buckets", minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets} must be even (angular LSH)")
    cs = check_int(chunk_size, "chunk_size", minimum=1)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    N = n + m
    n_buckets = min(n_buckets, 2 * ((N + 1) // 2))
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
        starved = np.flatnonzero(~np.isfinite(L))
        if starved.size and m:
            acc[starved], L[starved] = _partial(q[starved], k, v, problem.scale)
            pairs += starved.size * m
    hash_flops = 2.0 * G * N * problem.d * (n_buckets // 2) * n_rounds
    return method_result(problem, outs, lses, None, _cost(problem, pairs, hash_flops))


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
def _routing(problem: Problem, *, rng, n_clusters=8, cluster_size=None, n_iter=10):
    r"""Routing attention (registered as ``"routing"``).

    Parameters
    ----------
    n_clusters : int, default=8
        Centroids of the spherical k-means on the normalised queries and keys; clamped
        to ``n + m`` (one per point).
    cluster_size : int, optional
        Keys attended per centroid (its ``cluster_size`` nearest keys by cosine); default
        ``ceil(m / n_clusters)``, the balanced cluster size.
    n_iter : int, default=10
        k-means iterations.

    Notes
    -----
    Spherical k-means (:func:`rnla.cluster.kmeans`) on the union of the normalised
    queries and keys; each centroid attends its ``cluster_size`` nearest keys (top-k
    balancing as in Roy et al., 2021) and each query is routed to its nearest centroid,
    so every query has exactly one key set of size ``cluster_size``. Cost
    :math:`2(n + m)\,d\,C\,t` for k-means plus :math:`2n\,w(d + d_v)`. Not causal:
    the centroids depend on all keys and queries.
    """
    C = check_int(n_clusters, "n_clusters", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    C = min(C, n + m)  # more centroids than points is one cluster per point
    w = -(-m // C) if cluster_size is None else check_int(cluster_size, "cluster_size", minimum=1)
    w = min(w, m)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
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
    return method_result(problem, outs, lses, None, _cost(problem, pairs, km_flops))


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
    return method_result(
        problem,
        outs,
        lses,
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
def _multipole(problem: Problem, *, rng, n_clusters=16, n_keys=128, n_iter=10):
    r"""Multipole attention (registered as ``"multipole"``).

    Parameters
    ----------
    n_clusters : int, default=16
        k-means clusters of the keys (at most ``m``).
    n_keys : int, default=128
        Keys attended exactly per query (the budget): the clusters with the largest
        estimated mass are taken while their total size stays within it (at least one).
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
    budget = check_int(n_keys, "n_keys", minimum=1)
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
    return method_result(problem, outs, lses, None, _cost(problem, pairs, km_flops))
