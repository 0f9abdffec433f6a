"""Numba kernels of the low-rank attention methods (:mod:`attention.lowrank`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from rnla._kernels.fastexp import _exp_f64
from rnla._kernels.intrinsics import _wide_vectors


@njit(cache=True, nogil=True, fastmath={"contract"})
def _gaussian_rows(G, xsq_rows, xsq, gamma):  # pragma: no cover - compiled; NumPy ref in tests
    """Overwrite the Gram rows ``G[a, j] = x_a . x_j`` with ``exp(-gamma ||x_a - x_j||^2)``.

    ``||x_a - x_j||^2 = xsq_rows[a] + xsq[j] - 2 G[a, j]``, clamped at 0 (it can round
    below zero for near-equal points), as :class:`rnla.operators.KernelMatrix` does;
    the exponential of :mod:`rnla._kernels.fastexp` (float64, < 1 ulp, vectorised).
    """
    _wide_vectors()
    r, N = G.shape
    for a in range(r):
        xa = xsq_rows[a]
        row = G[a]
        for j in range(N):
            d2 = xa + xsq[j] - 2.0 * row[j]
            d2 = d2 if d2 > 0.0 else 0.0
            row[j] = _exp_f64(-gamma * d2)


@njit(cache=True, nogil=True)
def _lift_rows(num, F, babs, gam, tiny, log_dq, b, half_q, s_half, radius, y, lse, rows, lost):
    """Output, log-normaliser and row-lemma bound of every query row of the lift (one pass).

    ``num (n, dv + 1)`` = ``F_Q (W^T [V 1])``; ``F (>= n, r)`` the factor (rows ``< n``
    read: ``F_Q``); ``babs (r, 2)`` = ``|W|^T [||v_j||, 1]``; ``gam`` the relative and
    ``tiny`` the absolute rounding factor of the products. Per row ``i``:

    * ``z = num[i, dv]``, ``y_i = num[i, :dv] / z`` (0 and ``z = 0`` when ``z = 0`` or a
      ratio is not finite), ``lse_i = log z + log_dq[i] + b`` (``-inf`` if ``z <= 0``);
    * rounding of the products: ``err_z = gam |F_i| babs[:, 1] + tiny`` bounds that of
      ``z`` and ``err_v = gam |F_i| babs[:, 0] + dv tiny`` the norm of that of the value
      columns (triangle inequality over the keys and landmarks);
    * ``l1 = exp(half_q[i] + s_half)``, ``z_low = z - err_z``; if ``z_low > 0`` the bound
      is ``l1 radius / z_low`` (0 if ``l1 = 0``, ``inf`` if NaN) plus ``(err_v + ||y_i||
      err_z) / z_low``, else the row is ``lost`` (bound ``inf``).
    """
    n, dv1 = num.shape
    dv = dv1 - 1
    r = F.shape[1]
    for i in range(n):
        z = num[i, dv]
        ok = z != 0
        ysq = 0.0
        if ok:
            for c in range(dv):
                t = num[i, c] / z
                if not np.isfinite(t):
                    ok = False
                    break
                y[i, c] = t
                ysq += t * t
        if not ok:
            for c in range(dv):
                y[i, c] = 0.0
            z = 0.0
            ysq = 0.0
        lse[i] = (np.log(z) if z > 0 else -np.inf) + log_dq[i] + b
        ev = 0.0
        ez = 0.0
        for a in range(r):
            f = abs(F[i, a])
            ev += f * babs[a, 0]
            ez += f * babs[a, 1]
        ev = gam * ev + dv * tiny
        ez = gam * ez + tiny
        l1 = np.exp(half_q[i] + s_half)
        z_low = z - ez
        if z_low > 0:
            if l1 == 0:
                lemma = 0.0
            else:
                lemma = l1 * radius / z_low
                if np.isnan(lemma):
                    lemma = np.inf
            rows[i] = lemma + (ev + np.sqrt(ysq) * ez) / z_low
            lost[i] = False
        else:
            rows[i] = np.inf
            lost[i] = True


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_shifted(G, shift):  # pragma: no cover - compiled; NumPy reference in tests
    """Overwrite ``G`` with ``exp(min(G - shift, 0))`` (the exponential of ``fastexp``)."""
    _wide_vectors()
    r, N = G.shape
    for a in range(r):
        row = G[a]
        for j in range(N):
            x = row[j] - shift
            row[j] = _exp_f64(x if x < 0.0 else 0.0)
