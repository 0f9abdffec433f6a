"""Numba kernels behind :mod:`attention.kernel` (§5: kernelised / linear attention).

``_causal_linear_attention`` computes causal linear attention
``num_i = sum_{j <= i + offset} (phi_q_i . phi_k_j) v_j`` and
``den_i = sum_{j <= i + offset} phi_q_i . phi_k_j`` by chunked prefix sums: it carries
the running ``(M, dv)`` state ``sum_j phi_k_j v_j^T`` (and ``sum_j phi_k_j``) across
chunks of ``chunk`` queries and handles the keys that become visible inside a chunk
directly (at most ``chunk`` of them per query). Memory is ``O(M (dv + chunk))``; the
``n x d x M`` cumulative-sum tensor of naive implementations is never formed.

Key features are passed in factored form ``phi_k[j, f] = exp(lk[j, f] - c) * sk[j, f]``
where ``c`` is a *running* maximum of ``lk`` over the keys seen so far (the online-
softmax trick): when a new chunk raises the maximum, the state is rescaled by
``exp(c_old - c_new)``. The shift of query ``i`` is returned in ``shift[i]``, so the
true sums are ``exp(shift[i]) * num[i]``. Because the shift only depends on keys
visible to (or before) the current chunk, future keys cannot under- or overflow the
features of past keys: no numerical future leakage.

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
def _causal_linear_attention(phq, lk, sk, v, offset, chunk, num, den, shift):
    """Chunked causal prefix-sum linear attention (bottom-right aligned).

    Parameters
    ----------
    phq : float64 (n, M)
        Query features (already stabilised by the caller).
    lk, sk : float64 (m, M)
        Log-magnitudes and multipliers of the key features.
    v : float64 (m, dv)
        Values.
    offset : int
        ``m - n``: query ``i`` sees keys ``j <= i + offset``.
    chunk : int
        Queries per chunk (``>= 1``).
    num : float64 (n, dv), den : float64 (n,), shift : float64 (n,)
        Outputs (overwritten). Rows that see no key get ``num = 0``, ``den = 0`` and
        ``shift = -inf``.

    Notes
    -----
    The products with the state and within a chunk are BLAS GEMMs (``np.dot``) on
    contiguous blocks; everything else is in a fixed serial order.
    """
    n, M = phq.shape
    m = lk.shape[0]
    dv = v.shape[1]
    S = np.zeros((M, dv))
    s1 = np.zeros(M)
    c = -np.inf
    absorbed = 0
    i0 = 0
    while i0 < n:
        i1 = min(n, i0 + chunk)
        e0 = min(max(i0 + offset + 1, 0), m)
        e1 = min(max(i1 + offset, 0), m)
        # Raise the running shift over the keys that become visible in this chunk.
        cnew = c
        for j in range(absorbed, e1):
            for f in range(M):
                if lk[j, f] > cnew:
                    cnew = lk[j, f]
        if cnew > c:
            if c > -np.inf:
                r = np.exp(c - cnew)
                S *= r
                s1 *= r
            c = cnew
        # Keys visible to every query of the chunk go straight into the state.
        if e0 > absorbed:
            F = np.exp(lk[absorbed:e0] - c) * sk[absorbed:e0]
            S += np.dot(F.T, v[absorbed:e0])
            s1 += F.sum(axis=0)
            absorbed = e0
        P = phq[i0:i1]
        blk = np.dot(P, S)
        dblk = np.dot(P, s1)
        # Keys that become visible inside the chunk (fewer than ``chunk``).
        nb = e1 - absorbed
        if nb > 0:
            F2 = np.exp(lk[absorbed:e1] - c) * sk[absorbed:e1]
            Wt = np.dot(P, F2.T)
            for i in range(i0, i1):
                ei = min(max(i + offset + 1, 0), m)
                for u in range(max(ei - absorbed, 0), nb):
                    Wt[i - i0, u] = 0.0
            blk += np.dot(Wt, v[absorbed:e1])
            dblk += Wt.sum(axis=1)
            S += np.dot(F2.T, v[absorbed:e1])
            s1 += F2.sum(axis=0)
            absorbed = e1
        for i in range(i0, i1):
            ei = min(max(i + offset + 1, 0), m)
            if ei == 0:
                num[i, :] = 0.0
                den[i] = 0.0
                shift[i] = -np.inf
            else:
                num[i, :] = blk[i - i0]
                den[i] = dblk[i - i0]
                shift[i] = c
        i0 = i1


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
