"""Numba kernels behind :class:`rnla.operators.KernelMatrix`.

Every kernel here takes arrays and scalars only, does no validation and writes into a
caller-allocated output. Parallel loops run over output rows (or over output pairs), so
each output element is computed by exactly one iteration with a fixed operation order:
results do not depend on the number of Numba threads.

Kernel codes (``kind``) shared with :mod:`rnla.operators`:

* ``GAUSSIAN = 0`` - ``exp(-gamma * ||x - y||_2^2)``,
* ``EXP = 1`` - ``exp(scale * <x, y>)``,
* ``POLYNOMIAL = 2`` - ``(coef0 + scale * <x, y>) ** degree``,
* ``LAPLACIAN = 3`` - ``exp(-gamma * ||x - y||_1)``.
"""

import numpy as np
from numba import njit, prange

GAUSSIAN = 0
EXP = 1
POLYNOMIAL = 2
LAPLACIAN = 3


@njit(cache=True, nogil=True, parallel=True)
def _gram_transform(G, xsq, ysq, kind, gamma, scale, coef0, degree):
    """Overwrite the Gram block ``G[i, j] = <x_i, y_j>`` with kernel values.

    ``xsq``/``ysq`` (squared norms) are read only for the Gaussian kernel. Returns False
    if some output is not finite (overflow of the exp or polynomial kernels).
    """
    n_rows, n_cols = G.shape
    ok = np.ones(n_rows, dtype=np.bool_)
    for i in prange(n_rows):
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
        if kind != GAUSSIAN:
            for j in range(n_cols):
                if not np.isfinite(G[i, j]):
                    ok[i] = False
                    break
    return ok.all()


@njit(cache=True, nogil=True, parallel=True)
def _laplacian_block(Xa, Yb, gamma, out):
    """``out[i, j] = exp(-gamma * ||Xa[i] - Yb[j]||_1)``; no Gram shortcut exists for L1."""
    n_rows = Xa.shape[0]
    n_cols = Yb.shape[0]
    d = Xa.shape[1]
    for i in prange(n_rows):
        for j in range(n_cols):
            acc = 0.0
            for k in range(d):
                acc += abs(Xa[i, k] - Yb[j, k])
            out[i, j] = np.exp(-gamma * acc)


@njit(cache=True, nogil=True, parallel=True)
def _kernel_pairs(X, Y, ii, jj, kind, gamma, scale, coef0, degree, out):
    """``out[p] = k(X[ii[p]], Y[jj[p]])`` for each pair, accumulated in float64.

    Distances are formed from direct differences (no cancellation). Returns False if some
    output is not finite.
    """
    n_pairs = ii.shape[0]
    d = X.shape[1]
    ok = np.ones(n_pairs, dtype=np.bool_)
    for p in prange(n_pairs):
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
            ok[p] = False
    return ok.all()
