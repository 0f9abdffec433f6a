"""Numba kernels behind :mod:`rnla.cluster` (k-means assignment and centre update).

Both kernels are serial and use no ``fastmath``: they decide labels, and a reassociated
sum could flip a near-tie between two centres (the result must not depend on the thread
count or the compiler's vectorisation choices). The Gram products ``X C^T`` are left to
BLAS; the kernels fuse what NumPy would do in several passes with ``N x k`` temporaries.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _assign_from_gram(xsq, G, csq, labels, dist):
    """Nearest centre from the Gram matrix ``G = X C^T`` (first index wins ties).

    Squared distances are ``xsq[i] + csq[c] - 2 G[i, c]``, clamped at zero (rounding can
    make them slightly negative). Writes ``labels`` (N,) and ``dist`` (N,) in place.
    """
    N, k = G.shape
    for i in range(N):
        best = np.inf
        arg = 0
        for c in range(k):
            v = csq[c] - 2.0 * G[i, c]
            if v < best:
                best = v
                arg = c
        labels[i] = arg
        dist[i] = max(xsq[i] + best, 0.0)


@njit(cache=True, nogil=True)
def _center_sums(X, labels, weights, sums, counts):
    """Accumulate ``sums[c] += w_i x_i`` and ``counts[c] += w_i`` over points with label ``c``.

    ``sums`` (k, d) and ``counts`` (k,) are zeroed by the kernel (float64 accumulation).
    """
    sums[:] = 0.0
    counts[:] = 0.0
    N, d = X.shape
    for i in range(N):
        c = labels[i]
        w = weights[i]
        counts[c] += w
        for j in range(d):
            sums[c, j] += w * X[i, j]
