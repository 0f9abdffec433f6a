"""Numba kernels: products of CSR/CSC matrices with dense blocks, on all cores.

SciPy's sparse-times-dense products run on one thread. Both kernels here split the work
into a fixed number of parts that do not depend on the thread count, and add in a fixed
order, so results do not depend on the number of threads.
"""

import numpy as np
from numba import njit, prange

_ROW_TASKS = 64  # CSR: row ranges per product (each owns its output rows)
SCATTER_PARTS = 2  # CSC: column ranges, each scattering into its own buffer


@njit(cache=True, nogil=True, parallel=True)
def csr_matmat(indptr, indices, data, X, out):  # pragma: no cover - compiled
    """``out = A @ X`` for CSR ``A`` (m, n) and C-ordered ``X`` (n, p); ``out`` (m, p)."""
    m = out.shape[0]
    p = out.shape[1]
    for t in prange(_ROW_TASKS):
        for i in range((t * m) // _ROW_TASKS, ((t + 1) * m) // _ROW_TASKS):
            o = out[i]
            for c in range(p):
                o[c] = 0.0
            for q in range(indptr[i], indptr[i + 1]):
                a = data[q]
                x = X[indices[q]]
                for c in range(p):
                    o[c] += a * x[c]


@njit(cache=True, nogil=True, parallel=True)
def csc_matmat(indptr, indices, data, X, bufs):  # pragma: no cover - compiled
    """``bufs[t] = A[:, cols_t] @ X[cols_t]`` for CSC ``A`` (m, n), C-ordered ``X`` (n, p).

    Column range ``t`` of ``SCATTER_PARTS`` scatters into ``bufs[t]`` (m, p), zeroed by
    the caller; ``A @ X`` is the sum of the buffers in order.
    """
    n = X.shape[0]
    p = X.shape[1]
    parts = bufs.shape[0]
    for t in prange(parts):
        o = bufs[t]
        for j in range((t * n) // parts, ((t + 1) * n) // parts):
            x = X[j]
            for q in range(indptr[j], indptr[j + 1]):
                a = data[q]
                row = o[indices[q]]
                for c in range(p):
                    row[c] += a * x[c]


def sparse_matmat(A, X: np.ndarray) -> np.ndarray | None:
    """Return ``A @ X`` for a CSR/CSC ``A`` by the kernels above, or None (use SciPy).

    Used for products with at least 2 columns and ``nnz(A) * p >= 2^20`` (below, the
    parallel region's start-up cost dominates) when ``A`` and ``X`` share a float32 or
    float64 dtype. Unsorted or duplicate indices are fine (the sums are linear).
    """
    fmt = getattr(A, "format", None)
    if fmt not in ("csr", "csc") or X.ndim != 2 or X.shape[1] < 2:
        return None
    if A.nnz * X.shape[1] < (1 << 20) or A.dtype != X.dtype:
        return None
    if A.dtype not in (np.float32, np.float64):
        return None
    X = np.ascontiguousarray(X)
    m = A.shape[0]
    if fmt == "csr":
        out = np.empty((m, X.shape[1]), dtype=X.dtype)
        csr_matmat(A.indptr, A.indices, A.data, X, out)
        return out
    bufs = np.zeros((SCATTER_PARTS, m, X.shape[1]), dtype=X.dtype)
    csc_matmat(A.indptr, A.indices, A.data, X, bufs)
    out = bufs[0]
    for t in range(1, SCATTER_PARTS):
        out += bufs[t]
    return out
