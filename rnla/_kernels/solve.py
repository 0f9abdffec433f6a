"""Numba kernels of the least-squares solvers (no validation; see :mod:`rnla.solve`).

:func:`normal_residual` computes :math:`A^T(B - AX)` and the squared residual norms in
one pass over a C-contiguous ``A``: each group of four rows is read from memory once and
used twice from cache (for the residual entries and for the update of :math:`A^Tr`),
where two BLAS products read ``A`` twice. Rows are split into a fixed number of chunks
(independent of the number of threads), each accumulated in a fixed order and summed in
chunk order, so results do not depend on the number of threads.
"""

import numpy as np
from numba import njit, prange

N_CHUNKS = 16  # fixed: results must not depend on the number of threads


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def _normal_residual_chunks(A, Bt, Xt, G, RR):  # pragma: no cover - compiled
    # A (m, n) C-contiguous float32/float64; Bt (p, m), Xt (p, n) float64 C-contiguous;
    # G (c, p, n) and RR (c, p) float64, written in full: chunk partial sums.
    m, n = A.shape
    p = Xt.shape[0]
    c = G.shape[0]
    size = (m + c - 1) // c
    for t in prange(c):
        lo = min(m, t * size)
        hi = min(m, lo + size)
        for q in range(p):
            x = Xt[q]
            b = Bt[q]
            g = np.zeros(n)
            rr = 0.0
            i = lo
            while i + 4 <= hi:
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                s3 = 0.0
                for j in range(n):
                    xj = x[j]
                    s0 += A[i, j] * xj
                    s1 += A[i + 1, j] * xj
                    s2 += A[i + 2, j] * xj
                    s3 += A[i + 3, j] * xj
                r0 = b[i] - s0
                r1 = b[i + 1] - s1
                r2 = b[i + 2] - s2
                r3 = b[i + 3] - s3
                rr += r0 * r0 + r1 * r1 + r2 * r2 + r3 * r3
                for j in range(n):
                    g[j] += r0 * A[i, j] + r1 * A[i + 1, j] + r2 * A[i + 2, j] + r3 * A[i + 3, j]
                i += 4
            while i < hi:
                s0 = 0.0
                for j in range(n):
                    s0 += A[i, j] * x[j]
                r0 = b[i] - s0
                rr += r0 * r0
                for j in range(n):
                    g[j] += r0 * A[i, j]
                i += 1
            for j in range(n):
                G[t, q, j] = g[j]
            RR[t, q] = rr


def normal_residual(A, B, X):
    """Return ``(A^T (B - A X), squared column norms of B - A X)``, one pass over ``A``.

    ``A`` (m, n) C-contiguous float32 or float64, ``B`` (m, p), ``X`` (n, p). Float64
    results of shapes (n, p) and (p,); residual entries and sums are float64 whatever
    the dtype of ``A``.
    """
    m, n = A.shape
    p = X.shape[1]
    c = max(1, min(N_CHUNKS, m))
    G = np.zeros((c, p, n))
    RR = np.zeros((c, p))
    Bt = np.ascontiguousarray(np.asarray(B, dtype=np.float64).T)
    Xt = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)
    if m > 0 and n > 0 and p > 0:
        _normal_residual_chunks(A, Bt, Xt, G, RR)
    g = G[0].copy()
    rr = RR[0].copy()
    for t in range(1, c):
        g += G[t]
        rr += RR[t]
    return np.ascontiguousarray(g.T), rr
