"""Numba kernels behind :class:`rnla.operators.KernelMatrix`.

Every kernel here takes arrays and scalars only, does no validation and writes into a
caller-allocated output. The entry kernels are serial (``parallel=False``): entry-based
algorithms request many small blocks, for which the launch cost of a parallel region
(measured at several milliseconds on a loaded 2-core machine) exceeds the work, and BLAS
already threads the Gram products. Being ``nogil``, they can be driven from Python
threads. The fused product :func:`_gaussian_matmat` (whole products ``K V``, one
parallel region per product) is the exception. Each output element is computed with a
fixed operation order, so results do not depend on the number of threads.

Kernel codes (``kind``) shared with :mod:`rnla.operators`:

* ``GAUSSIAN = 0`` - ``exp(-gamma * ||x - y||_2^2)``,
* ``EXP = 1`` - ``exp(scale * <x, y>)``,
* ``POLYNOMIAL = 2`` - ``(coef0 + scale * <x, y>) ** degree``,
* ``LAPLACIAN = 3`` - ``exp(-gamma * ||x - y||_1)``.
"""

import numpy as np
from numba import njit, prange

from rnla._kernels.fastexp import _add_reassoc, _exp_f64

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


# ---------------------------------------------------------------------------------------
# fused Gaussian kernel-matrix product (K V without storing K)
# ---------------------------------------------------------------------------------------

_FUSED_ROWS = 32  # rows per parallel task: the column chunk of Y^T and V^T is reused
_FUSED_COLS = 1024  # columns per chunk: d + k + 1 rows of 8 KiB stay in L1/L2


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_nonpositive(s, w):
    """Overwrite ``s[:w]`` (entries <= 0) with their exponential, vectorisably.

    Range reduction ``x = k ln 2 + r``, ``|r| <= ln(2)/2``, and a degree-13 Taylor
    polynomial (truncation < 2e-16) scaled by ``2^k`` built from the bit pattern: within
    about 1 ulp of ``np.exp``; entries below ``-708`` become 0.
    """
    for j in range(w):
        s[j] = _exp_f64(s[j])


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def _gaussian_matmat(X, Yt, gamma, Vt, out):  # pragma: no cover - compiled
    """``out = K V`` with ``K[i, j] = exp(-gamma ||X[i] - Yt[:, j]||^2)``, never stored.

    ``X`` (m, d), ``Yt`` (d, n) and ``Vt`` (k, n) are C-ordered float64 (``Y`` and ``V``
    transposed, so the loops over columns are contiguous and vectorise). Distances are
    formed from direct differences (no cancellation). Each task owns ``_FUSED_ROWS``
    output rows and sums each row over fixed column chunks in a fixed order, so the
    result does not depend on the number of threads.
    """
    m, d = X.shape
    n = Yt.shape[1]
    k = Vt.shape[0]
    n_tiles = (m + _FUSED_ROWS - 1) // _FUSED_ROWS
    for tile in prange(n_tiles):
        i0 = tile * _FUSED_ROWS
        i1 = min(m, i0 + _FUSED_ROWS)
        s = np.empty(_FUSED_COLS)
        acc = np.zeros((i1 - i0, k))
        for j0 in range(0, n, _FUSED_COLS):
            w = min(_FUSED_COLS, n - j0)
            for i in range(i0, i1):
                for jj in range(w):
                    s[jj] = 0.0
                for c in range(d):
                    xc = X[i, c]
                    yrow = Yt[c]
                    for jj in range(w):
                        t = xc - yrow[j0 + jj]
                        s[jj] += t * t
                for jj in range(w):
                    s[jj] *= -gamma
                _exp_nonpositive(s, w)
                for c in range(k):
                    vrow = Vt[c]
                    a = 0.0
                    for jj in range(w):
                        a = _add_reassoc(a, s[jj] * vrow[j0 + jj])
                    acc[i - i0, c] += a
        for i in range(i0, i1):
            for c in range(k):
                out[i, c] = acc[i - i0, c]
