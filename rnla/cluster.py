"""Locality-sensitive hashing and k-means: the clustering primitives of sparse attention.

Hash families (each returns ``(n_rounds, N)`` int64 codes, one row per independent round):

* :func:`angular_lsh` - random-rotation (cross-polytope style) hashing of directions,
  used by the Reformer;
* :func:`hyperplane_lsh` - sign random projections (SimHash), optionally mapped to Gray
  order as in HyperAttention's sortLSH;
* :func:`e2lsh` - p-stable (Euclidean) hashing ``floor((<w, x> + b) / width)``.

Helpers :func:`sort_by_bucket` (stable per-round order) and :func:`balanced_buckets`
(equal-size buckets from a 1-D projection, as in SMYRF), and :func:`kmeans` (Lloyd,
mini-batch and spherical k-means with k-means++ seeding) complete the module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rnla._kernels.cluster import _assign_from_gram, _center_sums
from rnla._validation import as_float_array, check_int, check_option, check_real, check_rng

__all__ = [
    "KMeansResult",
    "angular_lsh",
    "balanced_buckets",
    "e2lsh",
    "hyperplane_lsh",
    "kmeans",
    "sort_by_bucket",
]


def _check_points(X) -> np.ndarray:
    return as_float_array(X, name="X", ndim=2)


def _matmul_rounds(X: np.ndarray, R: np.ndarray) -> np.ndarray:
    # (N, d) @ (r, d, h) -> (r, N, h), one GEMM per round.
    return np.matmul(X[None, :, :], R)


def angular_lsh(X, n_buckets, /, *, n_rounds=1, rng=None) -> np.ndarray:
    r"""Angular (random-rotation) LSH: bucket ``argmax([x R, -x R])``.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Points; only their directions matter (the hash is invariant to positive scaling).
    n_buckets : int
        Number of buckets, even and ``>= 2``.
    n_rounds : int, default=1
        Number of independent hash rounds.
    rng : None, int or Generator, optional
        Source of the Gaussian projections.

    Returns
    -------
    codes : ndarray of int64, shape (n_rounds, N)
        Bucket of each point in each round, in ``[0, n_buckets)``.

    Raises
    ------
    TypeError
        Non-integer ``n_buckets`` or ``n_rounds``.
    ValueError
        Odd or too small ``n_buckets``, ``n_rounds < 1``, non-finite ``X``.

    Notes
    -----
    Round ``r`` draws :math:`R_r \in \mathbb R^{d \times b/2}` with i.i.d. standard normal
    entries and hashes :math:`h(x) = \arg\max_j [xR_r, -xR_r]_j` ([1]_, Section 2; the
    Gaussian version of the cross-polytope hash of [2]_). Points at a small angle
    collide with high probability. Cost :math:`N d b` flops per round.

    References
    ----------
    .. [1] N. Kitaev, L. Kaiser, A. Levskaya, "Reformer: The Efficient Transformer",
       ICLR 2020, arXiv:2001.04451.
    .. [2] A. Andoni, P. Indyk, T. Laarhoven, I. Razenshteyn, L. Schmidt, "Practical and
       Optimal LSH for Angular Distance", NeurIPS 2015, arXiv:1509.02897.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import angular_lsh
    >>> X = np.random.default_rng(0).standard_normal((100, 8))
    >>> angular_lsh(X, 4, n_rounds=2, rng=0).shape
    (2, 100)
    """
    X = _check_points(X)
    n_buckets = check_int(n_buckets, "n_buckets", minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets} must be even (buckets come in +/- pairs)")
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    rng = check_rng(rng)
    R = rng.standard_normal((n_rounds, X.shape[1], n_buckets // 2)).astype(X.dtype)
    U = _matmul_rounds(X, R)
    return np.argmax(np.concatenate([U, -U], axis=-1), axis=-1).astype(np.int64)


def _gray_rank(codes: np.ndarray) -> np.ndarray:
    """Position of each code in the reflected binary Gray sequence (inverse Gray code)."""
    r = codes.copy()
    shift = 1
    while shift < 64:
        r ^= r >> shift
        shift <<= 1
    return r


def hyperplane_lsh(X, n_bits, /, *, n_rounds=1, gray=False, rng=None) -> np.ndarray:
    r"""Sign-random-projection (SimHash) LSH: ``n_bits`` hyperplane bits packed in a code.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Points.
    n_bits : int
        Number of hyperplanes, ``1 <= n_bits <= 62``.
    n_rounds : int, default=1
        Number of independent hash rounds.
    gray : bool, default=False
        Return the rank of each bit pattern in the reflected Gray sequence instead of its
        binary value, so that sorting by code places patterns that differ in one bit
        next to each other (HyperAttention's sortLSH).
    rng : None, int or Generator, optional
        Source of the hyperplanes.

    Returns
    -------
    codes : ndarray of int64, shape (n_rounds, N)
        Codes in ``[0, 2**n_bits)``.

    Raises
    ------
    TypeError
        Non-integer ``n_bits``/``n_rounds``, non-boolean ``gray``.
    ValueError
        ``n_bits`` outside ``[1, 62]``, ``n_rounds < 1``, non-finite ``X``.

    Notes
    -----
    Bit :math:`t` of the pattern is :math:`[\langle r_t, x\rangle > 0]` with
    :math:`r_t \sim N(0, I_d)`; two points collide on one bit with probability
    :math:`1 - \theta/\pi` ([1]_). With ``gray=True`` the pattern :math:`g` is mapped to
    :math:`\mathrm{rank}(g) = g \oplus (g \gg 1) \oplus (g \gg 2) \oplus \dots`, the
    inverse Gray code: consecutive ranks are patterns at Hamming distance one, as used
    to sort keys and queries in HyperAttention ([2]_, Algorithm 1). Cost
    :math:`N d\,n_{bits}` flops per round.

    References
    ----------
    .. [1] M. Charikar, "Similarity Estimation Techniques from Rounding Algorithms",
       STOC 2002.
    .. [2] I. Han, R. Jayaram, A. Karbasi, V. Mirrokni, D. Woodruff, A. Zandieh,
       "HyperAttention: Long-context Attention in Near-Linear Time", ICLR 2024,
       arXiv:2310.05869.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import hyperplane_lsh
    >>> X = np.random.default_rng(0).standard_normal((100, 8))
    >>> hyperplane_lsh(X, 5, gray=True, rng=0).shape
    (1, 100)
    """
    X = _check_points(X)
    n_bits = check_int(n_bits, "n_bits", minimum=1, maximum=62)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    if not isinstance(gray, bool | np.bool_):
        raise TypeError(f"gray must be a bool, got {gray!r}")
    rng = check_rng(rng)
    R = rng.standard_normal((n_rounds, X.shape[1], n_bits)).astype(X.dtype)
    bits = (_matmul_rounds(X, R) > 0).astype(np.int64)
    codes = bits @ (np.int64(1) << np.arange(n_bits, dtype=np.int64))
    return _gray_rank(codes) if gray else codes


def e2lsh(X, width, /, *, n_rounds=1, rng=None) -> np.ndarray:
    r"""Euclidean (p-stable) LSH: ``floor((<w, x> + b) / width)``.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Points.
    width : float
        Bucket width ``> 0``, in the units of ``X``.
    n_rounds : int, default=1
        Number of independent hash rounds.
    rng : None, int or Generator, optional
        Source of ``w ~ N(0, I_d)`` and ``b ~ U[0, width)``.

    Returns
    -------
    codes : ndarray of int64, shape (n_rounds, N)
        Bucket indices (any integers; not shifted to start at 0).

    Raises
    ------
    TypeError
        Non-real ``width``, non-integer ``n_rounds``.
    ValueError
        ``width`` not finite and positive, ``n_rounds < 1``, non-finite ``X``.

    Notes
    -----
    For points at distance :math:`\delta` the collision probability decreases with
    :math:`\delta / \mathrm{width}` ([1]_, Section 3.2). Cost :math:`2Nd` flops per
    round.

    References
    ----------
    .. [1] M. Datar, N. Immorlica, P. Indyk, V. Mirrokni, "Locality-Sensitive Hashing
       Scheme Based on p-Stable Distributions", SoCG 2004.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import e2lsh
    >>> X = np.random.default_rng(0).standard_normal((100, 8))
    >>> e2lsh(X, 2.0, n_rounds=3, rng=0).shape
    (3, 100)
    """
    X = _check_points(X)
    width = check_real(width, "width", lower=0)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=1)
    rng = check_rng(rng)
    W = rng.standard_normal((n_rounds, X.shape[1]))
    b = rng.uniform(0.0, width, size=n_rounds)
    proj = W @ X.astype(np.float64).T + b[:, None]
    return np.floor(proj / width).astype(np.int64)


def sort_by_bucket(codes, /) -> np.ndarray:
    """Stable per-round ordering of points by bucket code.

    Parameters
    ----------
    codes : array_like of int, shape (n_rounds, N) or (N,)
        Bucket codes (e.g. from :func:`angular_lsh`).

    Returns
    -------
    order : ndarray of int64, same shape as ``codes``
        ``order[r]`` lists the points by increasing code, ties by increasing index
        (the position order Reformer-style chunking needs).

    Raises
    ------
    TypeError
        Non-integer codes.
    ValueError
        ``codes`` not 1-D or 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import sort_by_bucket
    >>> sort_by_bucket(np.array([[1, 0, 1, 0]])).tolist()
    [[1, 3, 0, 2]]
    """
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.ndim not in (1, 2):
        raise ValueError(f"codes must have shape (n_rounds, N) or (N,), got {codes.shape}")
    return np.argsort(codes, axis=-1, kind="stable").astype(np.int64)


def balanced_buckets(values, n_buckets, /) -> np.ndarray:
    r"""Equal-size buckets from a 1-D projection (sort, then cut into ``n_buckets`` runs).

    Parameters
    ----------
    values : array_like, shape (N,)
        Scalar projections (e.g. an LSH projection of the points).
    n_buckets : int
        ``1 <= n_buckets <= N``.

    Returns
    -------
    buckets : ndarray of int64, shape (N,)
        Bucket of each point; bucket ``b`` holds the points of ranks
        ``[ceil(b N / n_buckets), ceil((b + 1) N / n_buckets))`` in the stable sorted
        order, so sizes differ by at most one.

    Raises
    ------
    TypeError
        Non-integer ``n_buckets``.
    ValueError
        ``values`` not 1-D or not finite, ``n_buckets`` out of range.

    Notes
    -----
    SMYRF ([1]_, Section 3) replaces LSH buckets, whose sizes are data dependent, by
    equal-size clusters of the hash-sorted sequence, which bounds the work per bucket.
    Cost :math:`O(N \log N)`.

    References
    ----------
    .. [1] G. Daras, N. Kitaev, A. Odena, A. Dimakis, "SMYRF: Efficient Attention
       using Asymmetric Clustering", NeurIPS 2020, arXiv:2010.05315.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import balanced_buckets
    >>> balanced_buckets(np.array([0.3, -1.0, 2.0, 0.1]), 2).tolist()
    [1, 0, 1, 0]
    """
    values = as_float_array(values, name="values", ndim=1)
    N = values.shape[0]
    n_buckets = check_int(n_buckets, "n_buckets", minimum=1, maximum=N)
    order = np.argsort(values, kind="stable")
    out = np.empty(N, dtype=np.int64)
    out[order] = (np.arange(N, dtype=np.int64) * n_buckets) // N
    return out


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    Attributes
    ----------
    centers : ndarray, shape (k, d)
        Cluster centres (unit rows when ``spherical=True``), dtype of ``X``.
    labels : ndarray of int64, shape (N,)
        Index of the nearest centre of each point.
    inertia : float
        Sum of squared distances of the points to their centres (on the normalised rows
        when ``spherical=True``, where it equals ``2 * sum(1 - cos)``).
    n_iter : int
        Number of Lloyd (or mini-batch) iterations run.
    converged : bool
        Whether the centre shift fell below the tolerance before ``n_iter`` ran out.
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


def _assign(Xw, xsq, C):
    labels = np.empty(Xw.shape[0], dtype=np.int64)
    dist = np.empty(Xw.shape[0], dtype=np.float64)
    _assign_from_gram(xsq, Xw @ C.T, np.einsum("ij,ij->i", C, C), labels, dist)
    return labels, dist


def _sq_dists_to(Xw, xsq, idx):
    # Squared distances (len(idx), N) from the points X[idx] to all points.
    G = Xw[idx] @ Xw.T
    return np.maximum(xsq[idx, None] + xsq[None, :] - 2.0 * G, 0.0)


def _kmeans_plusplus(Xw, xsq, k, rng):
    """Greedy k-means++ seeding ([2]_ of :func:`kmeans`; 2 + log k trials per centre)."""
    N = Xw.shape[0]
    n_trials = 2 + int(math.log(k))
    idx = [int(rng.integers(N))]
    closest = _sq_dists_to(Xw, xsq, np.array(idx))[0]
    for _ in range(1, k):
        pot = closest.sum()
        if pot <= 0:
            # Every point coincides with a chosen centre: the rest are duplicates.
            cand = rng.integers(N, size=n_trials)
        else:
            r = rng.random(n_trials) * pot
            cand = np.minimum(np.searchsorted(np.cumsum(closest), r), N - 1)
        D = np.minimum(closest[None, :], _sq_dists_to(Xw, xsq, cand))
        best = int(np.argmin(D.sum(axis=1)))
        idx.append(int(cand[best]))
        closest = D[best]
    return Xw[np.array(idx)].copy()


def _kmeans_seeds(X, n_clusters, rng):
    """Return the initial centres ``kmeans(X, n_clusters, rng=rng)`` draws (not spherical).

    k-means++ on ``X`` as :func:`kmeans` prepares it (float64), consuming ``rng``
    exactly as that call would: ``kmeans(X, n_clusters, init=_kmeans_seeds(X,
    n_clusters, rng), ...)`` returns the same result, bit for bit. Callers draw the
    seeds of several problems in order from one generator and run the Lloyd iterations
    (which draw nothing) on several threads.
    """
    X = _check_points(X)
    k = check_int(n_clusters, "n_clusters", minimum=1, maximum=X.shape[0])
    Xw = X.astype(np.float64)
    return _kmeans_plusplus(Xw, np.einsum("ij,ij->i", Xw, Xw), k, check_rng(rng))


def _normalise_rows(C):
    norms = np.linalg.norm(C, axis=1)
    return np.where(norms[:, None] > 0, C / np.where(norms > 0, norms, 1.0)[:, None], C)


def kmeans(
    X,
    n_clusters,
    /,
    *,
    init="k-means++",
    n_iter=50,
    tol=1e-6,
    batch_size=None,
    spherical=False,
    rng=None,
) -> KMeansResult:
    r"""k-means clustering: Lloyd iterations, mini-batch or spherical (cosine) variant.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Points.
    n_clusters : int
        Number of clusters ``k``, ``1 <= k <= N``.
    init : {"k-means++", "random"} or array_like of shape (k, d), default="k-means++"
        Seeding: greedy k-means++ (``2 + log k`` candidates per centre, as in
        scikit-learn), ``k`` distinct random points, or explicit initial centres.
    n_iter : int, default=50
        Maximum number of iterations (Lloyd steps, or mini-batches).
    tol : float, default=1e-6
        Stop when the squared centre shift ``sum ||c_new - c||^2`` is at most
        ``tol * mean(var(X, axis=0))`` (scikit-learn's convention).
    batch_size : int, optional
        Use mini-batch k-means with batches of this size (drawn with replacement);
        full-batch Lloyd when None.
    spherical : bool, default=False
        Cluster the directions ``x / ||x||`` with unit centres (cosine similarity).
    rng : None, int or Generator, optional
        Seeding and mini-batch draws; the same seed gives the same result.

    Returns
    -------
    KMeansResult
        ``centers`` (k, d), ``labels`` (N,), ``inertia``, ``n_iter``, ``converged``.

    Raises
    ------
    TypeError
        Non-integer ``n_clusters``/``n_iter``/``batch_size``, bad ``init`` or ``spherical`` type.
    ValueError
        ``n_clusters`` outside ``[1, N]``, unknown ``init`` name or wrong ``init`` shape,
        negative ``tol``, non-finite ``X``.

    Notes
    -----
    Lloyd's algorithm ([1]_) alternates the assignment of each point to its nearest
    centre (a GEMM ``X C^T`` plus a fused Numba arg-min, :math:`2Nkd` flops) and the
    centre update (mean of the members, :math:`Nd`). A centre that loses all its points
    is moved to the point farthest from its centre. k-means++ seeding ([2]_) is
    :math:`O(\log k)`-competitive in expectation. Mini-batch k-means ([3]_) updates each
    centre as the running mean of the batch points assigned to it. Spherical k-means
    ([4]_) normalises the points and re-normalises the centres after each update; the
    assignment then maximises the cosine. Computation is in float64; the centres are
    returned in the dtype of ``X``. The inertia decreases monotonically in Lloyd's
    iterations (not in mini-batch mode). scikit-learn's ``KMeans`` is not used because
    it is an optional dependency and its threading makes results thread-count dependent.

    References
    ----------
    .. [1] S. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28(2),
       1982.
    .. [2] D. Arthur, S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
       SODA 2007.
    .. [3] D. Sculley, "Web-Scale K-Means Clustering", WWW 2010.
    .. [4] I. Dhillon, D. Modha, "Concept Decompositions for Large Sparse Text Data
       Using Clustering", Machine Learning 42, 2001.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.cluster import kmeans
    >>> X = np.random.default_rng(0).standard_normal((200, 4))
    >>> res = kmeans(X, 5, rng=0)
    >>> res.centers.shape, res.labels.shape
    ((5, 4), (200,))
    """
    X = _check_points(X)
    N, d = X.shape
    k = check_int(n_clusters, "n_clusters", minimum=1, maximum=N)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    tol = check_real(tol, "tol", lower=0, open_left=False)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(spherical, bool | np.bool_):
        raise TypeError(f"spherical must be a bool, got {spherical!r}")
    rng = check_rng(rng)

    Xw = X.astype(np.float64)
    if spherical:
        Xw = _normalise_rows(Xw)
    xsq = np.einsum("ij,ij->i", Xw, Xw)
    if isinstance(init, str):
        check_option(init, ("k-means++", "random"), "init")
        if init == "k-means++":
            C = _kmeans_plusplus(Xw, xsq, k, rng)
        else:
            C = Xw[np.sort(rng.choice(N, size=k, replace=False))].copy()
    else:
        C = as_float_array(init, name="init", ndim=2).astype(np.float64)
        if C.shape != (k, d):
            raise ValueError(f"init must have shape (k, d) = ({k}, {d}), got {C.shape}")
        C = C.copy()
    if spherical:
        C = _normalise_rows(C)
    tol_abs = tol * float(np.mean(np.var(Xw, axis=0)))

    sums = np.zeros((k, d))
    counts = np.zeros(k)
    seen = np.zeros(k)  # mini-batch: points seen per centre so far
    converged = False
    it = 0
    while it < n_iter:
        it += 1
        if batch_size is None:
            labels, dist = _assign(Xw, xsq, C)
            _center_sums(Xw, labels, np.ones(N), sums, counts)
            C_new = C.copy()
            full = counts > 0
            C_new[full] = sums[full] / counts[full, None]
            empty = np.flatnonzero(~full)
            if empty.size:
                # Re-seed empty clusters at the points worst served by their centres.
                far = np.argsort(-dist, kind="stable")[: empty.size]
                C_new[empty] = Xw[far]
        else:
            b = rng.integers(N, size=batch_size)
            Xb = Xw[b]
            labels_b, _ = _assign(Xb, xsq[b], C)
            _center_sums(Xb, labels_b, np.ones(batch_size), sums, counts)
            seen += counts
            C_new = C.copy()
            hit = counts > 0
            # Running mean: c <- c + (sum_batch - count_batch * c) / seen.
            C_new[hit] += (sums[hit] - counts[hit, None] * C[hit]) / seen[hit, None]
        if spherical:
            C_new = _normalise_rows(C_new)
        shift = float(np.sum((C_new - C) ** 2))
        C = C_new
        if shift <= tol_abs:
            converged = True
            break
    labels, dist = _assign(Xw, xsq, C)
    return KMeansResult(
        centers=C.astype(X.dtype),
        labels=labels,
        inertia=float(dist.sum()),
        n_iter=it,
        converged=converged,
    )
