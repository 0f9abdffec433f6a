"""Numba kernels behind :class:`rnla.operators.KernelMatrix`.

Every kernel here takes arrays and scalars only, does no validation and writes into a
caller-allocated output. The kernels are serial (``parallel=False``): entry-based
algorithms request many small blocks, for which the launch cost of a parallel region
(measured at several milliseconds on a loaded 2-core machine) exceeds the work, and BLAS
already threads the Gram products. Being ``nogil``, they can be driven from Python
threads. Each output element is computed with a fixed operation order, so results do not
depend on the number of threads.

Kernel codes (``kind``) shared with :mod:`rnla.operators`:

* ``GAUSSIAN = 0`` - ``exp(-gamma * ||x - y||_2^2)``,
* ``EXP = 1`` - ``exp(scale * <x, y>)``,
* ``POLYNOMIAL = 2`` - ``(coef0 + scale * <x, y>) ** degree``,
* ``LAPLACIAN = 3`` - ``exp(-gamma * ||x - y||_1)``.
"""

import numpy as np
from numba import njit

GAUSSIAN = 0
EXP = 1
POLYNOMIAL = 2
LAPLACIAN = 3


@njit(cache=True, nogil=True)
def _gram_transform(G, xsq, ysq, kind, gamma, scale, coef0, degree):
    """Overwrite the Gram block ``G[i, j] = <x_i, y_j>`` with kernel values.

    ``xsq``/``ysq`` (squared norms) are read only for the Gaussian kernel. Returns False
    if some output is not finite (overflow of the exp or polynomial kernels).
    """
    n_rows, n_cols = G.shape
    ok = True
    for i in range(n_rows):
        if kind == GAUSSIAN:
            for j in range(n_cols):
                # ||x||^2 + ||y||^2 - 2<x, y> can round below zero for near-equal points.
                d2 = xsq[i] + ysq[j] - 2.0 * G[i, j]
                if d2 < 0.0:
                    d2 = 0.0
                G[i, j] = np.exp(-gamma * d2)
        elif kind == EXP:
            for j in range(n_cols):
                G[i, j] = np.exp(scale * G[i, j])
        else:
            for j in range(n_cols):
                G[i, j] = (coef0 + scale * G[i, j]) ** degree
        if kind != GAUSSIAN and ok:
            for j in range(n_cols):
                if not np.isfinite(G[i, j]):
                    ok = False
                    break
    return ok


@njit(cache=True, nogil=True)
def _laplacian_block(Xa, Yb, gamma, out):
    """``out[i, j] = exp(-gamma * ||Xa[i] - Yb[j]||_1)``; no Gram shortcut exists for L1."""
    n_rows = Xa.shape[0]
    n_cols = Yb.shape[0]
    d = Xa.shape[1]
    for i in range(n_rows):
        for j in range(n_cols):
            acc = 0.0
            for k in range(d):
                acc += abs(Xa[i, k] - Yb[j, k])
            out[i, j] = np.exp(-gamma * acc)


@njit(cache=True, nogil=True)
def _kernel_pairs(X, Y, ii, jj, kind, gamma, scale, coef0, degree, out):
    """``out[p] = k(X[ii[p]], Y[jj[p]])`` for each pair, accumulated in float64.

    Distances are formed from direct differences (no cancellation). Returns False if some
    output is not finite.
    """
    n_pairs = ii.shape[0]
    d = X.shape[1]
    ok = True
    for p in range(n_pairs):
        a = ii[p]
        b = jj[p]
        acc = 0.0
        if kind == GAUSSIAN:
            for k in range(d):
                t = np.float64(X[a, k]) - np.float64(Y[b, k])
                acc += t * t
            val = np.exp(-gamma * acc)
        elif kind == LAPLACIAN:
            for k in range(d):
                acc += abs(np.float64(X[a, k]) - np.float64(Y[b, k]))
            val = np.exp(-gamma * acc)
        else:
            for k in range(d):
                acc += np.float64(X[a, k]) * np.float64(Y[b, k])
            if kind == EXP:
                val = np.exp(scale * acc)
            else:
                val = (coef0 + scale * acc) ** degree
        out[p] = val
        if not np.isfinite(out[p]):
            ok = False
    return ok
