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

**Causality.** ``reformer`` and ``routing`` have causal forms, as in their papers (causal
language models): per-bucket (per-cluster) chunks in position order, so a query's key set
depends on earlier keys only, and online centroids for routing (see their notes). SMYRF
and Multipole choose key sets from all keys (balanced bucket boundaries, k-means
centroids): future keys would change past outputs, so they are registered with
``causal=False`` (the registry's ``noncausal_reason`` says why).

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

from attention import sparse as _sp
from attention._core import Problem, method_result
from attention._kernels import sparse as _ks
from attention._parallel import map_slices
from attention._registry import register
from attention.exact import _single_threaded_blas
from attention.sparse import (
    _NEG,
    _cost,
    _gather_attend,
    _merge_into,
    _partial,
    _positions,
    _slices64,
    _unit_rows,
    _work_dtype,
)
from rnla._validation import check_int
from rnla.cluster import _kmeans_seeds, angular_lsh, balanced_buckets, kmeans

__all__: list[str] = []

_ROUTING_MAX_CLUSTER = 256  # default cap of the keys a routing cluster attends
_ROUTING_PERIOD = 256  # positions between online centroid updates (causal routing)
# Multipole near field: query rows x keys per block of the gather kernel.
_MP_ROWS = 128
_MP_KEYS = 256


# ---------------------------------------------------------------------------------------
# Reformer (angular LSH, sorted chunks, multi-round with duplicate correction)
# ---------------------------------------------------------------------------------------


@register(
    "reformer",
    section="§3.2",
    family="clustering",
    causal=True,
    bound=None,
    summary="Reformer: angular LSH of normalised q/k, sorted chunks + previous chunk, rounds.",
)
def _reformer(
    problem: Problem, *, rng, n_buckets=8, chunk_size=32, n_rounds=2, exclude_self=False
):
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
    exclude_self : bool, default=False
        ``causal=True`` only: a query does not attend the key at its own position
        unless nothing else is visible to it (the rule of the paper's shared-QK
        language model, where that key is the query itself; off by default because with
        separate keys it only adds error).

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
    about :math:`4\,n\,c\,r(d + d_v)` flops plus hashing :math:`(n + m)\,d\,b\,r`.

    ``causal=True`` (the causal language model of Kitaev et al., 2020): the same hashes,
    but chunks are cut inside each bucket in position order - the ``t``-th key of a
    bucket lies in that bucket's chunk ``t // chunk_size`` - so a key's chunk depends on
    earlier keys only. Query ``i`` attends, in each round, the keys of its bucket at
    positions ``<= i + m - n`` that lie in the chunk of the last of them or in the
    previous chunk (between 1 and ``2 chunk_size`` keys), never a future position; the
    rounds are merged with the same duplicate correction. Changing future queries, keys
    or values leaves every earlier output bit-for-bit unchanged (blocks of a fixed
    shape). A query whose union of sets is empty attends its own position. Cost about
    :math:`4\,n\,c\,r(d + d_v)` flops.
    """
    n_buckets = check_int(n_buckets, "n_buckets", minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets} must be even (angular LSH)")
    cs = check_int(chunk_size, "chunk_size", minimum=1)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    if not isinstance(exclude_self, bool | np.bool_):
        raise TypeError(f"exclude_self must be a bool, got {exclude_self!r}")
    n, m, G = problem.n, problem.m, problem.n_slices
    N = n + m
    n_buckets = min(n_buckets, 2 * ((N + 1) // 2))
    if problem.causal:
        return _reformer_causal(problem, rng, n_buckets, cs, n_rounds, bool(exclude_self))
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
    causal=True,
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
        ``min(ceil(m / n_clusters), 256)``, the balanced cluster size up to 256 keys (the
        cap keeps the cost linear in ``n`` at long context; it was uncapped).
    n_iter : int, default=10
        k-means iterations (non-causal).

    Notes
    -----
    Spherical k-means (:func:`rnla.cluster.kmeans`) on the union of the normalised
    queries and keys; each centroid attends its ``cluster_size`` nearest keys (top-k
    balancing as in Roy et al., 2021) and each query is routed to its nearest centroid,
    so every query has exactly one key set of size ``cluster_size``. Cost
    :math:`2(n + m)\,d\,C\,t` for k-means plus :math:`2n\,w(d + d_v)`.

    ``causal=True`` (Roy et al., 2021, use routing attention in causal language models
    with centroids learned online, never from the current sequence's future): the
    centroids start as ``n_clusters`` random directions drawn from ``rng`` and are
    updated online as positions advance - every 256 positions each centroid becomes the
    normalised sum of its start and the unit queries and keys assigned to it so far
    (sequential spherical k-means); the queries and keys of a period are routed with the
    centroids of the positions before it. Query ``i`` attends the most recent keys
    (positions ``<= i + m - n``) of its cluster: the window of the last
    ``cluster_size / 2`` to ``cluster_size`` of them (per-cluster chunks, as the causal
    ``reformer``). No future query, key or value changes a past output. Cost
    :math:`2(n + m)\,d\,C + 2n\,w(d + d_v)` flops.
    """
    C = check_int(n_clusters, "n_clusters", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    C = min(C, n + m)  # more centroids than points is one cluster per point
    if cluster_size is None:
        w = min(-(-m // C), _ROUTING_MAX_CLUSTER)
    else:
        w = check_int(cluster_size, "cluster_size", minimum=1)
    w = max(1, min(w, m))
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    if problem.causal:
        return _routing_causal(problem, rng, C, w)
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
    noncausal_reason=(
        "SMYRF (Daras et al., 2020) cuts the projections of all queries and keys into "
        "equal-size (balanced) buckets: a future key moves the bucket boundaries of past "
        "ones; the paper applies it to non-causal models (BigGAN, BERT, RoBERTa)"
    ),
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
    work = _work_dtype(problem)
    # Projections drawn in slice order; the slices then run on all cores.
    Ws = [rng.standard_normal((n_rounds, problem.d + 2)) for _ in range(G)]

    def attend(g):
        q, k, _ = _slices64(problem, g)
        qw, kw, vw = (x.astype(work) for x in problem.slice(g))
        nq, nk = np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", k, k)
        M2 = nq.max() + nk.max()
        zq, zk = np.zeros((n, 1)), np.zeros((m, 1))
        phi = np.hstack([q, zq, np.sqrt(np.maximum(M2 - nq, 0.0))[:, None]])
        psi = np.hstack([k, np.sqrt(np.maximum(M2 - nk, 0.0))[:, None], zk])
        pairs = 0
        rows, J = [], []
        for r in range(n_rounds):
            bq = balanced_buckets(phi @ Ws[g][r], L)
            bk = balanced_buckets(psi @ Ws[g][r], L)
            rows.append(_bucket_members(bq, L)[0])
            J.append(_bucket_members(bk, L)[0])
            pairs += int(np.bincount(bq, minlength=L) @ np.bincount(bk, minlength=L))
        # The L buckets of every round as blocks of the gather kernel (query bucket b
        # attends key bucket b; padding keys at position 1, never visible): partials
        # merged through the log-sum-exp in the kernel, rounds included.
        wq, wk = max(x.shape[1] for x in rows), max(x.shape[1] for x in J)
        rows = np.concatenate(
            [np.pad(x, ((0, 0), (0, wq - x.shape[1])), constant_values=-1) for x in rows]
        )
        J = np.concatenate(
            [np.pad(x, ((0, 0), (0, wk - x.shape[1])), constant_values=-1) for x in J]
        )
        zero = np.zeros(n, dtype=np.int64)
        acc, Lse = _gather_attend(
            qw,
            kw,
            vw,
            problem.scale,
            rows,
            np.maximum(J, 0),
            (J < 0).astype(np.int64),
            zero,
            zero,
            acc=np.zeros((n, problem.dv)),
            L=np.full(n, _NEG),
        )
        return acc, Lse, pairs

    res = map_slices(attend, range(G))
    outs = np.stack([r[0] for r in res])
    lses = np.stack([r[1] for r in res])
    pairs = sum(r[2] for r in res)
    return method_result(
        problem,
        outs,
        lses,
        None,
        _cost(problem, pairs, 2.0 * G * (n + m) * (problem.d + 2) * n_rounds),
    )


def _bucket_members(b, L):
    """Members of each of ``L`` buckets as rows of ``(L, W)`` indices (``-1`` padded)."""
    order = np.argsort(b, kind="stable")
    counts = np.bincount(b, minlength=L)
    start = np.concatenate([[0], np.cumsum(counts)])
    width = max(int(counts.max(initial=0)), 1)
    valid = np.arange(width)[None, :] < counts[:, None]
    pos = np.minimum(start[:-1, None] + np.arange(width)[None, :], b.size - 1)
    return np.where(valid, order[pos], -1), valid


# ---------------------------------------------------------------------------------------
# Multipole (k-means on keys: near clusters exact, far clusters through centroids)
# ---------------------------------------------------------------------------------------


@register(
    "multipole",
    section="§3.2",
    family="clustering",
    causal=False,
    noncausal_reason=(
        "Multipole attention (Hooper et al., 2025) clusters all keys by k-means and "
        "summarises the far clusters by centroids and mean values: future keys move the "
        "centroids and enter every query's far-field term"
    ),
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
    :math:`2m\,d\,C\,t` (k-means, once per key/value slice) :math:`+ 2nC(d + d_v) +
    2n\,B(d + d_v)` flops per slice (``B``: keys attended exactly; the top cluster is
    always attended, whatever its size). The exact part runs on keys sorted by
    cluster, in blocks of 128 queries by 256 keys merged through the log-sum-exp
    (the gather kernel of :mod:`attention.sparse`; float32 for float32 inputs with
    moderate logits). Not causal: the clusters depend on all keys.
    """
    C = check_int(n_clusters, "n_clusters", minimum=1)
    budget = check_int(n_keys, "n_keys", minimum=1)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    n, m, G = problem.n, problem.m, problem.n_slices
    C = min(C, m)
    work = _work_dtype(problem)
    outs = np.empty((G, n, problem.dv), dtype=problem.dtype)
    lses = np.empty((G, n))

    def clusters_of(g, init):
        # The clustering depends on the keys only: once per key/value slice (shared by
        # the query heads of a group), from k-means++ seeds drawn from rng in key/value
        # slice order. Keys and values are sorted by cluster (contiguous blocks for the
        # near-field kernel).
        _, k, v = _slices64(problem, g)
        km = kmeans(k, C, n_iter=n_iter, init=init)
        labels = km.labels
        sizes = np.bincount(labels, minlength=C).astype(np.float64)
        perm = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))])
        # Mean value of each cluster (segments of the sorted values; empty: 0).
        vbar = np.zeros((C, problem.dv))
        full = sizes > 0
        vbar[full] = np.add.reduceat(v[perm], starts[:-1][full], axis=0)
        vbar /= np.maximum(sizes, 1.0)[:, None]
        _, kw, vw = problem.slice(g)
        ks = np.ascontiguousarray(kw[perm], dtype=work)
        vs = np.ascontiguousarray(vw[perm], dtype=work)
        return sizes, km.centers.astype(np.float64), vbar, starts, ks, vs

    def attend(g, cl):
        sizes, mu, vbar, starts, ks, vs = cl
        q = problem.slice(g)[0]
        q64 = q.astype(np.float64)
        with np.errstate(divide="ignore"):
            logN = np.log(sizes)
        est = (q64 @ mu.T) * problem.scale + logN  # (n, C) log estimated cluster mass
        # Near clusters (top estimated mass up to the budget) and the far field: one
        # term per far cluster, N_c exp(q . mu_c s) vbar_c (Numba, one pass; the NumPy
        # reference is _multipole_split_numpy).
        near = np.empty((n, C), dtype=np.bool_)
        acc, Lse = np.empty((n, problem.dv)), np.empty(n)
        if _sp._USE_KERNEL:
            _ks._multipole_split(est, sizes, float(budget), vbar, near, acc, Lse)
        else:
            _multipole_split_numpy(
                q64, mu, vbar, sizes, logN, problem.scale, est, budget, near, acc, Lse
            )
        pairs = n * C
        # Near field: exact attention of each cluster's queries on its keys, in blocks
        # of _MP_ROWS queries x _MP_KEYS keys merged through the log-sum-exp.
        rows, J = [], []
        for c in range(C):
            qi = np.flatnonzero(near[:, c])
            if qi.size == 0:
                continue
            nqb = -(-qi.size // _MP_ROWS)
            rc = np.full(nqb * _MP_ROWS, -1, dtype=np.int64)
            rc[: qi.size] = qi
            rc = rc.reshape(nqb, _MP_ROWS)
            for j0 in range(int(starts[c]), int(starts[c + 1]), _MP_KEYS):
                rows.append(rc)
                J.append(np.repeat((j0 + np.arange(_MP_KEYS))[None, :], nqb, axis=0))
            pairs += qi.size * int(sizes[c])
        if rows:
            rows, J = np.concatenate(rows), np.concatenate(J)
            # Slots beyond the cluster (J >= its end) have position 1: never visible.
            ends = starts[1:][np.searchsorted(starts[1:], J[:, :1], side="right")]
            kpos = (J >= ends).astype(np.int64)
            zero = np.zeros(n, dtype=np.int64)
            _gather_attend(
                q.astype(work, copy=False),
                ks,
                vs,
                problem.scale,
                rows,
                np.minimum(J, m - 1),
                kpos,
                zero,
                zero,
                acc=acc,
                L=Lse,
            )
        outs[g] = acc
        lses[g] = Lse
        return pairs

    # k-means++ seeds in key/value slice order in this thread (the shared rng: the same
    # draws as one kmeans call per slice); the Lloyd iterations (no draws) and the query
    # slices run on the workers, every clustering queued before any query slice (FIFO:
    # a query slice waiting for its clusters never blocks a clustering). One-thread BLAS.
    from concurrent.futures import ThreadPoolExecutor

    import numba

    clusters, futures = {}, []
    with (
        _single_threaded_blas(),
        ThreadPoolExecutor(max_workers=max(1, numba.get_num_threads())) as pool,
    ):
        for g in range(G):
            j = int(problem.kv_index[g])
            if j not in clusters:
                init = _kmeans_seeds(problem.slice(g)[1], C, rng)
                clusters[j] = pool.submit(clusters_of, g, init)
        for g in range(G):
            cl = clusters[int(problem.kv_index[g])]
            futures.append(pool.submit(lambda g, cl: attend(g, cl.result()), g, cl))
        pairs = sum(f.result() for f in futures)
    km_flops = 2.0 * len(clusters) * m * problem.d * C * (n_iter + 2)
    return method_result(problem, outs, lses, None, _cost(problem, pairs, km_flops))


def _multipole_split_numpy(q, mu, vbar, sizes, logN, scale, est, budget, near, acc, L):
    """Plain-NumPy reference of :func:`attention._kernels.sparse._multipole_split`."""
    order = np.argsort(-est, axis=1, kind="stable")
    csum = np.cumsum(sizes[order], axis=1)
    take = csum <= budget
    take[:, 0] = True
    near[:] = False
    np.put_along_axis(near, order, take, axis=1)
    near &= sizes[None, :] > 0
    far = ~near & (sizes[None, :] > 0)
    acc[:], L[:] = _partial(q, mu, vbar, scale, keep=far, logw=logN)


# ---------------------------------------------------------------------------------------
# Causal bucketed attention (shared by causal Reformer and causal Routing)
# ---------------------------------------------------------------------------------------


def _bucket_sets(bq, bk, kpos, qpos, cs):
    """Per-bucket chunk windows of the visible keys (causal).

    Keys of bucket ``b`` are taken in position order; the ``t``-th of them lies in
    chunk ``t // cs`` of its bucket. Query ``i`` (bucket ``bq[i]``, key position
    ``qpos[i]``) sees ``r_i`` keys of its bucket at positions ``<= qpos[i]``; it attends
    the chunk of the last of them and the previous chunk of the same bucket: ranks
    ``lo_i <= t < r_i`` with ``lo_i = cs * max(0, (r_i - 1) // cs - 1)``. All of this
    depends on the keys at positions ``<= qpos[i]`` only.

    Returns ``order`` (keys sorted by (bucket, position)), ``start`` (first index of
    each bucket in ``order``), ``rank`` (m,) rank of each key in its bucket, ``r`` (n,)
    and ``lo`` (n,).
    """
    nb = int(max(bq.max(initial=0), bk.max(initial=0))) + 1
    m = bk.shape[0]
    order = np.lexsort((kpos, bk))
    counts = np.bincount(bk, minlength=nb)
    start = np.concatenate([[0], np.cumsum(counts)])
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m) - start[bk[order]]
    # r_i: keys of bucket bq_i at positions <= qpos_i (composite key bucket * (m + 1) + pos).
    comp = bk[order] * (m + 1) + kpos[order]
    r = np.searchsorted(comp, bq * (m + 1) + np.minimum(qpos, m), side="right") - start[bq]
    lo = cs * np.maximum(0, (r - 1) // cs - 1)
    return order, start, rank, r, lo


def _bucket_blocks(bq, sets, qpos, kpos, cs):
    """Blocks of fixed shape ``(cs, 2 cs)`` of the per-bucket chunk windows of one round.

    Queries sharing (bucket, window start) share a key block; groups are cut into blocks
    of at most ``cs`` queries. Returns ``rows (nblk, cs)`` (``-1`` padding), ``J (nblk,
    2 cs)`` key indices, ``keep (nblk, cs, 2 cs)`` (same bucket, causal) and the key and
    query positions ``kp (nblk, 1, 2 cs)``, ``qp (nblk, cs, 1)``; None if no query sees
    a key.
    """
    order, start, _, r, lo = sets
    m = kpos.shape[0]
    qi = np.flatnonzero((r > 0) & (qpos >= 0))
    if qi.size == 0:
        return None
    keyid = bq[qi] * (m + 1) + lo[qi]
    srt = np.lexsort((qi, keyid))
    qi, keyid = qi[srt], keyid[srt]
    newgrp = np.concatenate([[True], keyid[1:] != keyid[:-1]])
    grp = np.cumsum(newgrp) - 1
    within = np.arange(qi.size) - np.flatnonzero(newgrp)[grp]
    blk_of = np.cumsum(newgrp | (within % cs == 0)) - 1
    rows = np.full((int(blk_of[-1]) + 1, cs), -1, dtype=np.int64)
    rows[blk_of, within % cs] = qi
    lead = rows[:, 0]
    span = (start[bq[lead]] + lo[lead])[:, None] + np.arange(2 * cs)[None, :]
    inb = span < start[bq[lead] + 1][:, None]
    J = order[np.minimum(span, m - 1)]
    rr = np.maximum(rows, 0)
    # Padding rows have position -1 and keys beyond the bucket position m: never kept.
    qp = np.where(rows >= 0, qpos[rr], -1)[:, :, None]
    kp = np.where(inb, kpos[J], m)[:, None, :]
    return rows, J, kp <= qp, kp, qp


def _causal_bucket_attend(q, k, v, scale, offset, bq_rounds, bk_rounds, cs, exclude_self):
    """Causal attention within per-bucket chunk windows, merged over rounds.

    ``bq_rounds`` (R, n) and ``bk_rounds`` (R, m) are bucket labels of queries and keys
    per round. Round ``r`` gives query ``i`` the key set ``S_r(i)`` of
    :func:`_bucket_sets`; the rounds are merged through log-sum-exp with each score
    lowered by ``log N_ij`` (``N_ij`` the rounds whose set holds ``j``), which is exact
    softmax attention over the union of the sets. With ``exclude_self`` the key at the
    query's own position is left out; a query whose union is empty attends its own
    position (the paper's "unless it is the only option"). Every block has the same
    shape ``(cs, 2 cs)``, so a row's arithmetic never depends on other rows' data.

    Returns ``(out (n, dv), lse (n,), pairs)`` in the dtype of ``q`` (lse float64).
    """
    n, m = q.shape[0], k.shape[0]
    R = bq_rounds.shape[0]
    cs = max(1, min(cs, m))  # wider chunks than all keys only add padding
    qpos = np.arange(n) + offset
    kpos = np.arange(m)
    kernel = _sp._USE_KERNEL
    if kernel:
        nbk = int(max(bq_rounds.max(initial=0), bk_rounds.max(initial=0))) + 1
        bq_rounds = np.ascontiguousarray(bq_rounds, dtype=np.int64)
        bk_rounds = np.ascontiguousarray(bk_rounds, dtype=np.int64)
        sets = [_ks._bucket_sets(bq_rounds[t], bk_rounds[t], qpos, cs, nbk) for t in range(R)]
    else:
        sets = [_bucket_sets(bq_rounds[t], bk_rounds[t], kpos, qpos, cs) for t in range(R)]
    acc = np.zeros((n, v.shape[1]), dtype=np.float64)
    L = np.full(n, _NEG)
    pairs = 0
    L_key = 2 * cs
    lo = np.zeros(n, dtype=np.int64)
    excl = qpos if exclude_self else None
    for t in range(R):
        if kernel:
            order, start, _, r, lo_t = sets[t]
            rows, J, kp = _ks._bucket_blocks(bq_rounds[t], order, start, r, lo_t, qpos, cs, nbk)
            if rows.shape[0] == 0:
                continue
        else:
            blocks = _bucket_blocks(bq_rounds[t], sets[t], qpos, kpos, cs)
            if blocks is None:
                continue
            rows, J, _, kp, _ = blocks
            kp = kp[:, 0, :]
        rounds = None
        if R > 1:
            # N_ij = 1 + the other rounds whose set of query i holds key j (same bucket,
            # rank within the window): counted in the kernel.
            other = [u for u in range(R) if u != t]
            rounds = (
                np.stack([bq_rounds[u] for u in other]),
                np.stack([bk_rounds[u][J] for u in other]),
                np.stack([sets[u][2][J] for u in other]),
                np.stack([sets[u][4] for u in other]),
            )
        # Visible: same bucket (kp < m) at a position <= the query's (kp <= qpos_i).
        _gather_attend(q, k, v, scale, rows, J, kp, lo, qpos, excl, None, acc, L, rounds)
        pairs += int((rows >= 0).sum()) * L_key
    # Rows with an empty union: their own position (if visible) is the only option.
    lonely = np.flatnonzero(~np.isfinite(L) & (qpos >= 0) & (qpos < m))
    if lonely.size:
        jj = qpos[lonely]
        s = np.einsum("id,id->i", q[lonely].astype(np.float64), k[jj].astype(np.float64))
        acc[lonely] = v[jj]
        L[lonely] = s * scale
        pairs += lonely.size
    return acc.astype(q.dtype), L, pairs


def _reformer_causal(problem, rng, n_buckets, cs, n_rounds, exclude_self):
    """Causal Reformer (see :func:`_reformer`): per-bucket chunks, on all cores."""
    n, m, G = problem.n, problem.m, problem.n_slices
    seeds = rng.integers(0, 2**63 - 1, size=G)
    wdt = _work_dtype(problem)

    def attend(g):
        q, k, v = (x.astype(wdt, copy=False) for x in problem.slice(g))
        if _sp._USE_KERNEL:
            # The rotations angular_lsh draws from this seed; hashed in one Numba pass
            # (the code ignores the row norms: no normalised copies).
            R = np.random.default_rng(int(seeds[g])).standard_normal(
                (n_rounds, problem.d, n_buckets // 2)
            )
            Rt = np.ascontiguousarray(R.transpose(0, 2, 1))
            codes = np.empty((n_rounds, n + m), dtype=np.int64)
            _ks._angular_codes(q, Rt, codes, 0)
            _ks._angular_codes(k, Rt, codes, n)
        else:
            codes = angular_lsh(
                np.vstack([_unit_rows(q.astype(np.float64)), _unit_rows(k.astype(np.float64))]),
                n_buckets,
                n_rounds=n_rounds,
                rng=int(seeds[g]),
            )
        return _causal_bucket_attend(
            q, k, v, problem.scale, problem.offset, codes[:, :n], codes[:, n:], cs, exclude_self
        )

    res = map_slices(attend, range(G))
    pairs = sum(p for _, _, p in res)
    hash_flops = 2.0 * G * (n + m) * problem.d * (n_buckets // 2) * n_rounds
    return method_result(
        problem,
        [o for o, _, _ in res],
        [ls for _, ls, _ in res],
        None,
        _cost(problem, pairs, hash_flops),
    )


def _online_labels(qn, kn, offset, init, period):
    """Causal routing labels: sequential spherical k-means over position periods.

    The queries and keys of positions ``[p0, p0 + period)`` are routed with the
    centroids of the positions before ``p0``, then added to their centroids' sums.
    """
    n, m = qn.shape[0], kn.shape[0]
    S = init / np.linalg.norm(init, axis=1, keepdims=True)
    C = S.shape[0]
    lq = np.zeros(n, dtype=np.int64)
    lk = np.zeros(m, dtype=np.int64)
    top = max(m, n + offset)
    for p0 in range(0, top, period):
        p1 = p0 + period
        norms = np.linalg.norm(S, axis=1, keepdims=True)
        cent = S / np.where(norms > 0, norms, 1.0)
        k0, k1 = min(p0, m), min(p1, m)
        q0, q1 = min(max(p0 - offset, 0), n), min(max(p1 - offset, 0), n)
        X = np.vstack([kn[k0:k1], qn[q0:q1]])
        if X.shape[0] == 0:
            continue
        lab = np.argmax(X @ cent.T, axis=1)
        lk[k0:k1] = lab[: k1 - k0]
        lq[q0:q1] = lab[k1 - k0 :]
        onehot = np.zeros((C, X.shape[0]))
        onehot[lab, np.arange(X.shape[0])] = 1.0
        S = S + onehot @ X
    return lq, lk


def _routing_causal(problem, rng, C, w):
    """Causal routing (see :func:`_routing`): online centroids, recent keys per cluster."""
    n, m, G = problem.n, problem.m, problem.n_slices
    init = rng.standard_normal((C, problem.d))
    cs = max(1, -(-w // 2))
    wdt = _work_dtype(problem)

    def attend(g):
        q, k, v = (x.astype(wdt, copy=False) for x in problem.slice(g))
        if _sp._USE_KERNEL:
            lq, lk = _ks._online_labels(q, k, problem.offset, init, _ROUTING_PERIOD)
        else:
            lq, lk = _online_labels(
                _unit_rows(q.astype(np.float64)),
                _unit_rows(k.astype(np.float64)),
                problem.offset,
                init,
                _ROUTING_PERIOD,
            )
        return _causal_bucket_attend(
            q, k, v, problem.scale, problem.offset, lq[None], lk[None], cs, False
        )

    res = map_slices(attend, range(G))
    pairs = sum(p for _, _, p in res)
    km_flops = 2.0 * G * (n + m) * problem.d * C * 2
    return method_result(
        problem,
        [o for o, _, _ in res],
        [ls for _, ls, _ in res],
        None,
        _cost(problem, pairs, km_flops),
    )
