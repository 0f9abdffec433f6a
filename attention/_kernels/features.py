"""Numba kernels behind :mod:`attention.kernel` (§5: kernelised / linear attention).

(Causal linear attention itself runs as chunked BLAS GEMMs in
:func:`attention.kernel._causal_linear`.)

``_online_leverage`` computes ridge online leverage scores
``tau_j = k_j^T (lam I + sum_{l <= j} k_l k_l^T)^{-1} k_j`` by Sherman–Morrison updates
of the inverse, ``O(m d^2)``; score ``j`` depends on keys ``0..j`` only (causal).

All kernels are serial and deterministic (no Numba threads; the GEMMs go to BLAS, whose
result does not depend on the partition of the output), take float64 arrays and
scalars only and do not validate.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _online_leverage(k, lam, out):
    """Ridge online leverage scores ``out[j] = k_j^T (lam I + K_{<=j}^T K_{<=j})^{-1} k_j``.

    Parameters
    ----------
    k : float64 (m, d)
        Keys in sequence order.
    lam : float
        Ridge ``> 0``.
    out : float64 (m,)
        Scores in ``[0, 1)`` (overwritten).
    """
    m, d = k.shape
    P = np.zeros((d, d))
    for a in range(d):
        P[a, a] = 1.0 / lam
    u = np.empty(d)
    for j in range(m):
        # u = P_{j-1} k_j; tau = k^T P_{j-1} k / (1 + k^T P_{j-1} k) (Sherman–Morrison).
        g = 0.0
        for a in range(d):
            s = 0.0
            for b in range(d):
                s += P[a, b] * k[j, b]
            u[a] = s
            g += k[j, a] * s
        out[j] = g / (1.0 + g)
        inv = 1.0 / (1.0 + g)
        for a in range(d):
            for b in range(d):
                P[a, b] -= inv * u[a] * u[b]
