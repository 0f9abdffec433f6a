r"""A key/value cache with block summaries for certified decoding.

:class:`KVCache` holds the keys and values of one sequence (``h_kv`` key/value heads)
during generation. Every time a block of ``block`` keys (64 by default) is complete, the
cache stores a compact summary of it: int8 key codes with per-channel scales and
rigorous residual bounds, the value centroid, the norms of the centred values (per key,
and the block's spectral norm). :meth:`KVCache.attend` then answers a decode step
(``n_q`` query rows per query head, grouped-query heads stacked) with a certified
output:

.. math::

    \|Y - \tilde Y\|_F \le \text{bound} \le \text{tol}\,\|Y\|_F,

reading the full-precision keys and values only for the blocks that matter.

Why a cache and not a stateless call
------------------------------------
A stateless call ``approximate(Q, K, V, "adaptive", tol=...)`` cannot read fewer bytes
than exact attention. To certify that a key ``j`` may be dropped it needs an upper
bound on its score ``q . k_j``, which depends on every coordinate of ``k_j`` (no bound
from other keys holds for an arbitrary key: one unread coordinate can carry any
value), so every key is read; and to bound the contribution of the dropped values it
needs their centroid and spread, which depend on every value row, so every value is
read. Exact decode attention reads each key and value exactly once and is
memory-bound, so any stateless certified method reads at least as many bytes. A cache
that summarises each block once, when it is appended, moves that reading to append
time (``O(d)`` work per appended key, amortised): a decode step reads the summaries
of all blocks (about a sixth of ``K + V`` in float32, a twelfth in float64) and the
full-precision keys and values of the kept blocks only.

Algorithm of a decode step
--------------------------
For every key/value head, the query rows of its query heads are stacked (``R = n_q x
group`` rows).

1. *Pilot.* For every summarised block ``b`` fully visible to every row, the pilot
   scores :math:`\hat s_{ij} = \sum_e (\text{scale}\,q_{ie} s_{be})\,c_{je}` from the
   int8 codes :math:`c_{je}` (one byte per key coordinate) and a radius
   :math:`\varepsilon_{ib}` with :math:`|s_{ij} - \hat s_{ij}| \le \varepsilon_{ib}`
   for every key ``j`` of the block: with the residual :math:`r_j = k_j - s_b \odot c_j`,

   .. math::

       |q_i\cdot r_j|\,\text{scale} \le \min\Big(\sum_e |\text{scale}\,q_{ie}|\,h_{be},\;
       \text{scale}\,\|q_i\|\,\rho_b\Big),\quad
       h_{be} = \max_{j\in b}|r_{je}|,\ \rho_b = \max_{j\in b}\|r_j\|,

   plus the float32 rounding of the pilot's inner products
   (:math:`\gamma_{d+2}\,127\sum_e|\text{scale}\,q_{ie}s_{be}|`, Higham 2002, Lemma
   3.1) and of its exponentials and sums. The bound is proven (it uses the stored
   residual maxima, measured at append time, not an assumption on the rounding).
   The pilot gives per (row, block) the block mass :math:`\hat W_{ib} = \sum_j
   e^{\hat s_{ij}}` (true mass within :math:`e^{\pm\varepsilon_{ib}}`),
   :math:`\sum_j e^{2\hat s_{ij}}` and :math:`\sum_j e^{\hat s_{ij}}\|v_j - \bar v_b\|`.
2. *Selection.* Dropping block ``b`` (values replaced by the centroid
   :math:`\bar v_b`, mass by the midpoint :math:`\hat W_{ib}\cosh\varepsilon_{ib}`)
   changes row ``i`` by at most

   .. math::

       c_{ib} = \frac{\hat W_{ib}\sinh(\varepsilon_{ib})\,\|\bar v_b - \tilde y_i\|
         + e^{\varepsilon_{ib}}\min\big(\sigma_b \|\hat w_{ib}\|_2,\
         \sum_{j\in b}\hat w_{ij}\|v_j - \bar v_b\|\big)}{D^{\rm lo}_i}

   (:math:`\sigma_b` the spectral norm of the centred value block, :math:`D^{\rm lo}_i`
   a lower bound of the normaliser; the centred term is also bounded by
   :math:`\sigma_b(\|\hat w_{ib} - \bar w_{ib}\mathbf 1\|_2 + (e^{\varepsilon_{ib}} - 1)
   \|\hat w_{ib}\|_2) + \bar w_{ib}\|\mathbf 1^\top U_b\|`, since :math:`w^\top U_b =
   (w - c\mathbf 1)^\top U_b + c\,\mathbf 1^\top U_b` and :math:`\mathbf 1^\top U_b` is
   the rounding of the stored centroid: nearly uniform weights cost little), which
   follows from
   :math:`y_i - \tilde y_i = D_i^{-1}\big[\sum_b (W_{ib} - \hat W_{ib}\cosh
   \varepsilon_{ib})(\bar v_b - \tilde y_i) + \sum_b w_{ib}^\top U_b\big]` (the
   normaliser-aware row lemma with the denominator treated jointly). Blocks are
   dropped in increasing order of :math:`\sum_i c_{ib}` while
   :math:`\|(\sum_{b\,\rm dropped} c_{ib})_i\|_2 \le 0.65\,\tau\,\|\tilde y^{(0)}\|_F`,
   :math:`\tau = 0.95\,\text{tol}/(1+\text{tol})` (:math:`\tilde y^{(0)}` the output
   with every block replaced by its centroid).
3. *Kept blocks* (and the keys of the incomplete last block, and the keys some row
   cannot see under the causal mask) are read in full precision and attended exactly
   (the split-key arithmetic of :func:`attention.softmax_attention`), merged with the
   centroid terms by their log-sum-exp.
4. *Bound.* The row errors are recomputed with the actual output, :math:`\tilde y_i`,
   and the exact kept mass in :math:`D^{\rm lo}_i`; ``bound`` is their Frobenius norm
   plus the rounding allowance of exact attention. If it exceeds
   :math:`\text{tol}/(1+\text{tol})\,\|\tilde Y\|_F` (rare), the step is recomputed
   exactly; since :math:`\|Y\|_F \ge \|\tilde Y\|_F - \text{bound}`, ``bound <= tol
   ||Y||_F`` always holds without an exact pass.

When it does not pay, the cache reads everything exactly (the bound is then the
rounding allowance): caches shorter than 4096 keys, more than 16 stacked query rows
per key/value head (exact decoding is then compute-bound and the pilot costs as much
as the exact scores), and, after a step that kept more than 15 % of the keys, the next
16 steps at the same ``tol``; the pilot is retried after them.

References
----------
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002 (inner
product error, Lemma 3.1). J. Tang et al., "Quest: query-aware sparsity for efficient
long-context LLM inference", ICML 2024 (per-page key summaries). Z. Chen et al.,
"MagicPIG: LSH sampling for efficient LLM generation", 2024, and A. Desai et al.,
"vAttention: verified sparse attention", 2025 (decode with a cache-side index; neither
gives a deterministic certificate).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import numba
import numpy as np

from attention import exact as _exact
from attention._core import AttentionApprox, Cost, ErrorBound, _check_scale, attention_rounding
from attention._kernels.exact import _SMALL_ROWS, _split_kernel
from attention._kernels.kvcache import (
    _attend_bound,
    _build_segments,
    _centroid_part,
    _merge,
    _pad_sums,
    _pilot_select,
    _refine,
    _row_bounds,
    _segments_kernel,
    _summarize,
)
from attention._kernels.rounding import _EXP_U, _exponent_error
from attention.adaptive import _check_delta, _check_tol
from rnla._validation import AccuracyWarning, as_float_array

__all__ = ["KVCache"]

# When a step pays (SmolLM2, 9 query / 3 kv heads, float32, medians of interleaved pairs
# against the exact kernel on the shared machine, load 2.6-4.9): one query at m = 8192
# took 0.79-0.90x the exact time at kept fractions 0.08-0.15 on one thread, 1.04-1.2x on
# two; a synthetic head at m = 32768 (fractions 0.02-0.10) 0.85x; at m = 2048 (exact
# 0.25 ms) 1.06x and more at any fraction (the fixed per-step work dominates); with the
# caches out of the CPU caches (40 copies of the layers visited in turn) 1.46x at
# fraction 0.33. A certified step that keeps more than this fraction of the visible
# keys makes the next _SKIP_STEPS steps (same tol) run exact attention without a pilot.
_PAY_FRACTION = 0.15
_SKIP_STEPS = 16
# Fewer summarised blocks than this (4096 keys): exact attention.
_MIN_BLOCKS = 64
# Stacked rows per key/value head above this: exact attention. With 48 stacked rows (16
# queries x 3 heads) exact decoding is compute-bound (108 GFLOP/s, 4.5 GB/s at m =
# 8192) and the pilot's scores and exponentials cost as much as exact attention's (6.6
# against 9.9 ms on one loaded thread): 1.4-1.7x the exact time at every kept fraction.
_MAX_ROWS = 16
# Pilot blocks per parallel task.
_PILOT_TASK = 16
# Selection budget: tau * Y0 with log Y0 = mix log(RMS value norm) + (1 - mix) log(norm of
# the centroid output), see attention._kernels.kvcache._select. SmolLM2, m = 8192, five
# layers, n_q = 1 / 16, tol 1e-2 / 1e-1: mix 0, 0.5, 1 kept the same fractions within
# 0.01 (n_q = 16: 0.02-0.04 fewer with 0.5) and refined 1-2, 3-4, 5 of the 5 steps.
_PROXY_MIX = 0.0
# The selection spends this share of its budget (a step whose bound then exceeds tol is
# refined: another kernel pass and its Python work, ~0.25 ms on one thread at m = 8192).
# SmolLM2 m = 8192, one query, layers 0/7/14/21/29 x tol 1e-2/3e-2/1e-1, one thread,
# medians of 25 interleaved pairs against the exact kernel (load 3-4): 1.0 refined 6 of
# the 15 steps (step / exact 1.07-1.11), 0.8 refined 5 (0.98-1.05), 0.65 none
# (0.81-0.92) at kept fractions 0.60 / 0.49 / 0.35 instead of 0.58 / 0.47 / 0.33, 0.5
# none (0.78-0.99) at 0.63 / 0.52 / 0.39.
_BUDGET = 0.65
# Refinement rounds when a step's bound exceeds its target (then: exact step).
_REFINE = 2


def _check_int(x, name: str, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {x!r}")
    if int(x) < lo:
        raise ValueError(f"{name}={x} must be >= {lo}")
    return int(x)


class KVCache:
    r"""Key/value cache of one sequence with block summaries for certified decoding.

    Parameters
    ----------
    n_kv_heads : int
        Number of key/value heads ``h_kv``.
    head_dim : int
        Key (and query) dimension ``d``.
    value_dim : int, optional
        Value dimension ``dv`` (default ``head_dim``).
    dtype : {numpy.float32, numpy.float64}, default=numpy.float32
        Storage and compute dtype of keys, values and outputs.
    capacity : int, optional
        Initial capacity in keys (grows by doubling; default 1024).
    block : int, default=64
        Keys per summarised block, a multiple of 16 in ``[16, 512]``.

    Notes
    -----
    **Memory.** ``K`` and ``V`` in ``dtype`` plus, per key, ``d`` bytes of int8 codes and
    4 bytes of centred-value norm, and per block ``(2 d + 2) * 4 + (dv + 2) * 8`` bytes:
    ``d + 4 + (8 d + 8 dv + 24) / block`` bytes per key (84 bytes at ``d = dv = 64``,
    against ``512`` for float32 ``K + V``).

    **Append cost.** :meth:`append` copies the new rows, and for every block it
    completes (once per ``block`` keys) computes its summaries: ``O(block * (d + dv))``
    for the codes, centroid and norms, ``O(block * dv^2)`` for the Gram matrix of the
    centred values and ``O(dv^3)`` for its top eigenvalue; ``O(d + dv^2)`` per key
    amortised. Growth beyond the capacity reallocates (amortised doubling).

    **Step cost.** :meth:`attend` reads the summaries (``d + 4`` bytes per key plus the
    per-block data) and ``(d + dv) * itemsize`` bytes per key of the kept blocks;
    flops ``2 R (m d + f m (d + dv))`` for ``R`` stacked rows and kept fraction ``f``.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.kvcache import KVCache
    >>> rng = np.random.default_rng(0)
    >>> cache = KVCache(2, 16, dtype=np.float64)
    >>> cache.append(rng.standard_normal((2, 1000, 16)), rng.standard_normal((2, 1000, 16)))
    >>> len(cache), cache.keys.shape
    (1000, (2, 1000, 16))
    >>> res = cache.attend(rng.standard_normal((4, 1, 16)), tol=1e-2)
    >>> res.output.shape
    (4, 1, 16)
    """

    def __init__(
        self, n_kv_heads, head_dim, value_dim=None, *, dtype=np.float32, capacity=None, block=64
    ):
        self._h = _check_int(n_kv_heads, "n_kv_heads", 1)
        self._d = _check_int(head_dim, "head_dim", 1)
        self._dv = self._d if value_dim is None else _check_int(value_dim, "value_dim", 1)
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self._dtype = dt
        self._B = _check_int(block, "block", 16)
        if self._B % 16 or self._B > 512:
            raise ValueError(f"block={block} must be a multiple of 16 in [16, 512]")
        cap = 1024 if capacity is None else _check_int(capacity, "capacity", 1)
        self._len = 0
        self._alloc(-(-cap // self._B) * self._B)
        self._kmax2 = np.zeros(self._h)
        self._vmax2 = np.zeros(self._h)
        self._kmax, self._vmax = np.zeros(self._h), np.zeros(self._h)
        # Skip policy of the pilot (see the module notes).
        self._skip = 0
        self._skip_tol = None
        # Work buffers of the steps, reused (fresh ones cost page faults and unmapping:
        # ~0.1 ms a step at m = 8192); outputs are always fresh arrays.
        self._work = {}

    # ------------------------------------------------------------------ storage

    def _alloc(self, cap: int) -> None:
        h, d, dv, B = self._h, self._d, self._dv, self._B
        nb = cap // B
        old = getattr(self, "_k", None)
        k = np.zeros((h, cap, d), dtype=self._dtype)
        v = np.zeros((h, cap, dv), dtype=self._dtype)
        codes = np.zeros((h, nb, d, B), dtype=np.int8)
        qscale = np.zeros((h, nb, d), dtype=np.float32)
        qres = np.zeros((h, nb, d), dtype=np.float32)
        rho = np.zeros((h, nb))
        vc = np.zeros((h, nb, dv))
        udev = np.zeros((h, cap), dtype=np.float32)
        sig = np.zeros((h, nb))
        vrms2 = np.zeros((h, nb))
        if old is not None:
            t, nbs = self._len, self._len // B
            k[:, :t] = self._k[:, :t]
            v[:, :t] = self._v[:, :t]
            codes[:, :nbs] = self._codes[:, :nbs]
            qscale[:, :nbs] = self._qscale[:, :nbs]
            qres[:, :nbs] = self._qres[:, :nbs]
            rho[:, :nbs] = self._rho[:, :nbs]
            vc[:, :nbs] = self._vc[:, :nbs]
            udev[:, : nbs * B] = self._udev[:, : nbs * B]
            sig[:, :nbs] = self._sig[:, :nbs]
            vrms2[:, :nbs] = self._vrms2[:, :nbs]
        self._k, self._v, self._codes, self._qscale, self._qres = k, v, codes, qscale, qres
        self._rho, self._vc, self._udev, self._sig = rho, vc, udev, sig
        self._vrms2 = vrms2

    def __len__(self) -> int:
        """Return the number of cached keys ``m``."""
        return self._len

    def __repr__(self) -> str:
        return (
            f"KVCache(n_kv_heads={self._h}, head_dim={self._d}, value_dim={self._dv}, "
            f"dtype={self._dtype.name}, len={self._len}, capacity={self.capacity}, "
            f"block={self._B})"
        )

    @property
    def n_kv_heads(self) -> int:
        """Number of key/value heads."""
        return self._h

    @property
    def head_dim(self) -> int:
        """Key dimension ``d``."""
        return self._d

    @property
    def value_dim(self) -> int:
        """Value dimension ``dv``."""
        return self._dv

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype."""
        return self._dtype

    @property
    def block(self) -> int:
        """Keys per summarised block."""
        return self._B

    @property
    def capacity(self) -> int:
        """Keys that fit before the next reallocation."""
        return self._k.shape[1]

    @property
    def keys(self) -> np.ndarray:
        """Read-only view of the cached keys, shape ``(h_kv, m, d)``."""
        view = self._k[:, : self._len]
        view.flags.writeable = False
        return view

    @property
    def values(self) -> np.ndarray:
        """Read-only view of the cached values, shape ``(h_kv, m, dv)``."""
        view = self._v[:, : self._len]
        view.flags.writeable = False
        return view

    def append(self, K, V) -> None:
        """Append keys and values (one call per generated token, or a whole prompt).

        Parameters
        ----------
        K : array_like, shape (h_kv, t, d) or (h_kv, d)
            New keys (a 2-D array is one token); cast to the cache dtype.
        V : array_like, shape (h_kv, t, dv) or (h_kv, dv)
            New values.

        Raises
        ------
        TypeError
            Non-numeric or complex input.
        ValueError
            Wrong shapes, or NaN/inf (the cache is left unchanged).

        Notes
        -----
        Cost ``O(t (d + dv))`` for the copy and, for each completed block,
        ``O(block * dv^2 + dv^3)`` for its summaries (see :class:`KVCache`).
        """
        K = as_float_array(K, name="K")
        V = as_float_array(V, name="V")
        h, d, dv = self._h, self._d, self._dv
        if K.ndim == 2:
            K = K[:, None]
        if V.ndim == 2:
            V = V[:, None]
        if K.ndim != 3 or K.shape[0] != h or K.shape[2] != d:
            raise ValueError(f"K must have shape ({h}, t, {d}) or ({h}, {d}), got {K.shape}")
        if V.ndim != 3 or V.shape[0] != h or V.shape[2] != dv:
            raise ValueError(f"V must have shape ({h}, t, {dv}) or ({h}, {dv}), got {V.shape}")
        if K.shape[1] != V.shape[1]:
            raise ValueError(f"K and V must hold the same number of tokens: {K.shape}, {V.shape}")
        t = K.shape[1]
        if t == 0:
            return
        t0, t1 = self._len, self._len + t
        if t1 > self.capacity:
            self._alloc(max(2 * self.capacity, -(-t1 // self._B) * self._B))
        kn = K.astype(self._dtype, copy=False)
        vn = V.astype(self._dtype, copy=False)
        self._k[:, t0:t1] = kn
        self._v[:, t0:t1] = vn
        # Largest key and value norms (for the rounding allowance), float64 sums.
        kk = np.square(kn, dtype=np.float64).sum(axis=2).max(axis=1)
        vv = np.square(vn, dtype=np.float64).sum(axis=2).max(axis=1)
        self._kmax2 = np.maximum(self._kmax2, kk * (1.0 + 2.0 * d * 1.2e-16))
        self._vmax2 = np.maximum(self._vmax2, vv * (1.0 + 2.0 * dv * 1.2e-16))
        self._kmax, self._vmax = np.sqrt(self._kmax2), np.sqrt(self._vmax2)
        self._len = t1
        b0, b1 = t0 // self._B, t1 // self._B
        if b1 > b0:
            gram = np.empty((h, b1 - b0, dv, dv))
            _summarize(
                self._k,
                self._v,
                b0,
                b1,
                self._B,
                self._codes,
                self._qscale,
                self._qres,
                self._rho,
                self._vc,
                self._udev,
                self._vrms2,
                gram,
            )
            self._sig[:, b0:b1] = _spectral_bound(gram)

    # ------------------------------------------------------------------ decode

    def attend(self, Q, *, tol=None, delta=0.01, scale=None, causal=True) -> AttentionApprox:
        r"""Certified attention of query rows against the cache.

        Parameters
        ----------
        Q : array_like, shape (h_q, n_q, d), or (n_q, d) if ``h_kv = 1``
            Queries; ``h_q`` a multiple of ``h_kv`` (grouped-query attention: query head
            ``h`` reads key/value head ``h // (h_q / h_kv)``). Cast to the cache dtype.
        tol : float in (0, 1), optional
            Relative Frobenius tolerance; None computes exact attention over the cache
            (the bound is then the rounding allowance).
        delta : float in (0, 1), default=0.01
            Accepted for the signature of ``"adaptive"``; the bound is deterministic.
        scale : float, optional
            Score scale, ``1 / sqrt(d)`` by default.
        causal : bool, default=True
            Bottom-right causal mask: query row ``i`` sees keys ``j <= m - n_q + i``.

        Returns
        -------
        AttentionApprox
            ``output (h_q, n_q, dv)`` in the cache dtype, ``lse (h_q, n_q)``,
            ``bound`` (kind ``"deterministic"``, norm ``"fro"``, absolute, ``<= tol
            ||Y||_F``), ``cost`` (flops, kernel evaluations counting pilot and exact
            scores, ``key_fraction`` per query head: kept keys over visible keys, and
            ``bytes_read``), ``method = "kvcache"``, ``params``.

        Raises
        ------
        TypeError
            Non-numeric ``Q``, bad ``tol``/``delta``/``causal`` types.
        ValueError
            Wrong shape, NaN/inf, an empty cache, ``tol``/``delta`` outside ``(0, 1)``.

        Warns
        -----
        AccuracyWarning
            When ``tol`` is below what the rounding of the dtype lets the bound certify
            (the bound still holds but exceeds ``tol ||Y||_F``).

        Notes
        -----
        The bound (see the module notes) is proven: the pilot's score radius uses the
        residuals measured at append time and Higham's inner-product error bound; the
        exact part carries the worst-case rounding allowance of exact attention
        (:func:`attention._core.attention_rounding`: Higham's ``gamma_k`` bounds for the
        scores, the sums of the segments and the cast, the exponential's 4 ulp; as for
        ``"adaptive"``), added to the row bounds' Frobenius norm (Minkowski).
        """
        if tol is not None:
            tol = _check_tol(tol)
        delta = _check_delta(delta)
        if not isinstance(causal, bool | np.bool_):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        causal = bool(causal)
        Q = as_float_array(Q, name="Q")
        h, d = self._h, self._d
        if Q.ndim == 2 and h == 1:
            Q = Q[None]
        if Q.ndim != 3 or Q.shape[2] != d or Q.shape[0] % h or Q.shape[0] == 0:
            raise ValueError(
                f"Q must have shape (h_q, n_q, {d}) with h_q a multiple of n_kv_heads={h}"
                f"{' (or (n_q, d))' if h == 1 else ''}, got {Q.shape}"
            )
        if self._len == 0:
            raise ValueError("the cache is empty: append keys and values before attend")
        nq = Q.shape[1]
        scale = _check_scale(scale, d)
        q = np.ascontiguousarray(Q, dtype=self._dtype)
        params = {"tol": tol, "delta": delta, "scale": scale, "causal": causal}
        if nq == 0:
            out = np.zeros((Q.shape[0], 0, self._dv), dtype=self._dtype)
            cost = Cost(0.0, 0, np.ones(Q.shape[0]), 0.0)
            bound = ErrorBound(0.0, "fro", "deterministic", 0.0, "no query rows")
            return AttentionApprox(out, np.zeros((Q.shape[0], 0)), bound, cost, "kvcache", params)
        return self._step(q, tol, scale, causal, params)

    def _plan(self, R: int, nq: int, causal: bool, tol) -> int:
        """Return the number of blocks the pilot covers (0: exact step)."""
        t, B = self._len, self._B
        nbc = min(t // B, (t - nq + 1) // B) if causal else t // B
        if tol is None or R > _MAX_ROWS or nbc < _MIN_BLOCKS:
            return 0
        if self._skip > 0 and self._skip_tol == tol:
            self._skip -= 1
            return 0
        return max(nbc, 0)

    def _step(self, q, tol, scale, causal, params) -> AttentionApprox:
        h, B, t, dv, d = self._h, self._B, self._len, self._dv, self._d
        G, nq = q.shape[0], q.shape[1]
        gs = G // h
        R = gs * nq
        members = np.arange(G, dtype=np.int64).reshape(h, gs)
        nbc = self._plan(R, nq, causal, tol)
        offset = t - nq
        chunk = -(-t // _exact._MAX_CHUNKS)
        chunk = min(max(_exact._CHUNK_MIN, -(-chunk // B) * B), _exact._CHUNK_MAX)
        threads = numba.get_num_threads()
        work = R * h * t * (d + dv)
        try:
            if work < _exact._SERIAL_WORK:
                numba.set_num_threads(1)
            # BLAS only for many stacked rows or without the register tiles: otherwise
            # no thread-pool limit (setting and restoring it costs ~0.1 ms a step).
            blas = R > _SMALL_ROWS or not _exact._USE_TILES
            with _exact._single_threaded_blas() if blas else contextlib.nullcontext():
                res = None
                if not nbc and causal:
                    res = self._exact_split(q, members, nq, scale, offset)
                if res is None:
                    res = self._run(q, members, nq, nbc, tol, scale, causal, offset, chunk)
                out, lse, e2, pad, ynorm, stats = res
                # Minkowski (row errors and allowances may align): ||e||_F + pad.
                total = math.sqrt(e2) + pad
                if nbc and not (e2 == 0 or total <= tol / (1.0 + tol) * ynorm):
                    # Rare: refinement did not bring the bound under tol (or a pilot
                    # quantity overflowed: NaN fails the test too): exact step.
                    nbc = 0
                    res = self._run(q, members, nq, 0, tol, scale, causal, offset, chunk)
                    out, lse, e2, pad, ynorm, stats = res
                    total = pad
        finally:
            numba.set_num_threads(threads)
        kept_keys, visible, pilot_keys = stats
        frac = kept_keys / max(visible, 1)
        if nbc and tol is not None:
            if frac > _PAY_FRACTION:
                self._skip, self._skip_tol = _SKIP_STEPS, tol
            else:
                self._skip = 0
        if tol is not None and total > tol / (1.0 + tol) * ynorm:
            warnings.warn(
                f"tol={tol} is below what the rounding of {self._dtype} scores allows to "
                f"certify here (bound {total:.3g}); the bound still holds but exceeds "
                "tol ||Y||_F (use a float64 cache or a larger tol)",
                AccuracyWarning,
                stacklevel=3,
            )
        isz = self._dtype.itemsize
        nblk = pilot_keys // B
        bytes_read = (
            kept_keys * (d + dv) * isz
            + pilot_keys * (d + 4)
            + nblk * (8 * d + 8 + 8 * dv + 8)
            + G * nq * d * isz
        )
        flops = 2.0 * R * (pilot_keys * d + kept_keys * (d + dv))
        evals = int(R * (pilot_keys + kept_keys))
        key_fraction = np.full(G, frac)
        if nbc:
            assumptions = (
                "Deterministic: keys of dropped blocks scored from int8 codes with a proven "
                "radius (stored residual maxima, Higham's inner-product bound); dropped "
                "values replaced by block centroids; row error <= sum_b [W_b sinh(eps_b) "
                "||vc_b - y~_i|| + exp(eps_b) min(sigma_b ||w_b||_2, sum_j w_j ||v_j - "
                "vc_b||)] / D_lo (normaliser-aware row lemma, numerator and denominator "
                "jointly); plus the worst-case rounding allowance of exact attention "
                "(Higham 2002, (3.5) and (4.4): scores, exponentials, sums, cast), added "
                "(Minkowski). Accepted only if <= tol/(1+tol) ||Y~||_F, so bound <= tol "
                "||Y||_F."
            )
        else:
            assumptions = (
                "Deterministic: exact attention over the cache (every key kept); the bound "
                "is the worst-case rounding allowance (Higham 2002, (3.5) and (4.4): "
                "scores, exponentials, sums of the segments, cast)."
            )
        bound = ErrorBound(
            value=total, norm="fro", kind="deterministic", delta=0.0, assumptions=assumptions
        )
        cost = Cost(flops, evals, key_fraction, float(bytes_read))
        return AttentionApprox(out, lse, bound, cost, "kvcache", params)

    def _buf(self, name: str, shape: tuple, dtype=np.float64) -> np.ndarray:
        """Return the work buffer ``name`` of this shape (contents undefined)."""
        buf = self._work.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            self._work[name] = buf
        return buf

    def _exact_split(self, q, members, nq, scale, offset):
        """Exact causal step on the exact kernel's split-key decode path, or None.

        The kernel of :func:`attention.softmax_attention` (its decode plan: chunks of
        the visible keys, one task per key/value head and chunk) runs on the capacity
        buffers: with the bottom-right causal mask (``offset = m - n_q``) no row sees a
        key at or beyond ``m``, so the zero rows after the cached keys never enter the
        output: the arithmetic of ``softmax_attention(Q, K[:, :m], V[:, :m],
        causal=True)``, bit-identical on the register tiles when ``m`` is a multiple of
        the chunk (else the last chunk's sums run over more, masked, keys; BLAS, for more
        than ``_SMALL_ROWS`` stacked rows, may round differently: a few ulps). None when
        that kernel would not take its split path (more than ``attention.exact._SPLIT_ROWS``
        stacked rows, fewer than two chunks of keys): then the cache's own segments kernel
        runs. Returns what :meth:`_run` returns.
        """
        h, t, dv = self._h, self._len, self._dv
        G = q.shape[0]
        gs = members.shape[1]
        R = gs * nq
        if R > _exact._SPLIT_ROWS or t < 2 * _exact._CHUNK_MIN:
            return None
        chunk = -(-t // _exact._MAX_CHUNKS)
        floor = 2 * _exact._CHUNK_MIN if t >= 4 * _exact._CHUNK_MIN else _exact._CHUNK_MIN
        chunk = min(max(floor, -(-chunk // 64) * 64), _exact._CHUNK_MAX)
        C = -(-t // chunk)
        key = ("split", G, nq)
        fixed = self._work.get(key)
        if fixed is None:
            # Read-only members and broadcast mask dummies: the argument types of the
            # exact kernel's own calls (one compiled specialisation for both).
            mem = members.copy()
            mem.flags.writeable = False
            fixed = (
                mem,
                np.arange(nq, dtype=np.int64),
                np.broadcast_to(np.ones((1, 1, 1, 1), dtype=np.bool_), (2, 1, 1, 1)),
                np.broadcast_to(np.zeros((1, 1, 1, 1), dtype=self._dtype), (2, 1, 1, 1)),
                np.zeros(G, dtype=np.int64),
            )
            self._work[key] = fixed
        mem, rows, mask_b, mask_f, mask_index = fixed
        out = np.empty((G, nq, dv), dtype=self._dtype)
        lse = np.empty((G, nq))
        probe = np.zeros(h * C)
        tiles = bool(_exact._USE_TILES) and dv % (64 // self._dtype.itemsize) == 0
        bad = _split_kernel(
            q,
            self._k,
            self._v,
            mem,
            rows,
            mask_b,
            mask_f,
            mask_index,
            0,
            float(scale),
            True,
            int(offset),
            chunk,
            tiles,
            out,
            lse,
            self._buf("xacc", (h, C, R, dv)),
            self._buf("xm", (h, C, R)),
            self._buf("xl", (h, C, R)),
            probe,
            np.zeros(1, dtype=np.int64),
            numba.get_num_threads(),
        )
        if not math.isfinite(bad):
            raise FloatingPointError("attention over the cache overflowed (non-finite P V)")
        sums = np.zeros(3)
        _pad_sums(
            q,
            out,
            gs,
            self._kmax,
            self._vmax,
            float(scale),
            float(np.finfo(self._dtype).eps),
            t,
            chunk,
            sums,
        )
        return out, lse, 0.0, math.sqrt(sums[1]), math.sqrt(sums[2]), (h * t, h * t, 0)

    def _segments(self, q, members, nq, scale, causal, offset, seg, nseg):
        """Exact partials of the key segments ``seg`` (see :func:`_segments_kernel`)."""
        h, S, R, dv = self._h, seg.shape[1], members.shape[1] * nq, self._dv
        parts = (np.empty((h, S, R, dv)), np.empty((h, S, R)), np.empty((h, S, R)))
        probe = np.zeros(h * S)
        _segments_kernel(
            q,
            self._k,
            self._v,
            members,
            nq,
            float(scale),
            causal,
            int(offset),
            seg,
            nseg,
            bool(_exact._USE_TILES),
            *parts,
            probe,
            np.zeros(1, dtype=np.int64),
            numba.get_num_threads(),
        )
        if not np.isfinite(probe).all():
            raise FloatingPointError("attention over the cache overflowed (non-finite P V)")
        return parts

    def _run(self, q, members, nq, nbc, tol, scale, causal, offset, chunk):
        """Pilot and selection (if ``nbc``), kept segments, merge, row bounds, refinement.

        Returns ``(out, lse, e2, pad, ynorm, stats)``; ``e2`` the squared Frobenius norm
        of the row bounds of the dropped blocks (0 for an exact step).
        """
        h, B, t, dv, d = self._h, self._B, self._len, self._dv, self._d
        G = q.shape[0]
        gs = members.shape[1]
        R = gs * nq
        nb1 = max(nbc, 1)
        workers = numba.get_num_threads()
        keep = np.ones((h, nb1), dtype=np.int8)
        cpart = np.zeros((h, R, 2 + dv))
        S = nb1 + t // chunk + 2
        seg = self._buf("seg", (h, S, 2), np.int64)
        nseg = np.zeros(h, dtype=np.int64)
        bm, bw, bs2, bt, beps, bex = self._buf("pilot", (6, h, nb1, R))
        tau = 0.0 if tol is None else 0.95 * tol / (1.0 + tol)
        if nbc:
            qs = q.reshape(h, R, d).astype(np.float64)
            qs *= scale
            _pilot_select(
                qs,
                self._codes,
                self._qscale,
                self._qres,
                self._rho,
                self._udev,
                nbc,
                B,
                _PILOT_TASK,
                bool(_exact._USE_TILES),
                bm,
                bw,
                bs2,
                bt,
                beps,
                bex,
                self._vc,
                self._sig,
                self._vrms2,
                _BUDGET * tau,
                _PROXY_MIX,
                t,
                chunk,
                keep,
                seg,
                nseg,
                cpart,
                np.zeros(1, dtype=np.int64),
                workers,
            )
        else:
            starts = np.arange(0, t, chunk, dtype=np.int64)
            seg[:, : starts.size, 0] = starts
            seg[:, : starts.size, 1] = np.minimum(starts + chunk, t)
            nseg[:] = starts.size
        out = np.empty((G, nq, dv), dtype=self._dtype)
        lse = np.empty((G, nq))
        # Partials only for the segments used (the kernel's task grid is seg.shape[1]).
        S = max(int(nseg.max()), 1)
        seg = np.ascontiguousarray(seg[:, :S])
        parts = (
            self._buf("pacc", (h, S, R, dv)),
            self._buf("pm", (h, S, R)),
            self._buf("pl", (h, S, R)),
        )
        probe = np.zeros(h * S)
        e_row = np.empty((h, R))
        sums = np.zeros(3)
        u = float(np.finfo(self._dtype).eps)
        kmax, vmax = self._kmax, self._vmax
        # Score rounding bound per stacked row (as in the rounding allowance).
        seps = self._score_eps(q, scale)
        _attend_bound(
            q,
            self._k,
            self._v,
            members,
            nq,
            float(scale),
            causal,
            int(offset),
            seg,
            nseg,
            bool(_exact._USE_TILES),
            *parts,
            probe,
            np.zeros(1, dtype=np.int64),
            workers,
            cpart,
            out,
            lse,
            nbc,
            bw,
            bs2,
            bt,
            bex,
            self._vc,
            self._sig,
            self._vrms2,
            B,
            keep,
            e_row,
            kmax,
            vmax,
            u,
            sums,
            seps,
        )
        if not np.isfinite(probe).all():
            raise FloatingPointError("attention over the cache overflowed (non-finite P V)")
        e2, pad, ynorm = float(sums[0]), math.sqrt(sums[1]), math.sqrt(sums[2])
        if not nbc:
            return out, lse, 0.0, pad, ynorm, (h * t, h * t, 0)
        plist = [parts]
        add = np.zeros_like(keep)
        limit = tol / (1.0 + tol)
        for _ in range(_REFINE):
            if math.sqrt(e2) + pad <= limit * ynorm:
                break
            # Bound above its target (the proxy output of the selection was off): read
            # the blocks of largest actual cost, keep the partials already computed.
            yg = np.sqrt(np.square(out, dtype=np.float64).reshape(h, -1).sum(axis=1))
            target = 0.9 * tau * yg
            if not _refine(
                bw,
                bs2,
                bt,
                bex,
                self._vc,
                self._sig,
                self._vrms2,
                B,
                keep,
                cpart,
                members,
                nq,
                out,
                lse,
                target,
                add,
                seps,
            ):
                break
            keep |= add
            _centroid_part(bw, bex, self._vc, keep, cpart)
            seg2 = np.zeros((h, nbc + 1, 2), dtype=np.int64)
            nseg2 = np.zeros(h, dtype=np.int64)
            for gk in range(h):
                _build_segments(add, gk, nbc, t, B, chunk, False, seg2, nseg2)
            plist.append(self._segments(q, members, nq, scale, causal, offset, seg2, nseg2))
            _merge(tuple(plist), cpart, members, nq, out, lse)
            _row_bounds(
                bw,
                bs2,
                bt,
                bex,
                self._vc,
                self._sig,
                self._vrms2,
                B,
                keep,
                cpart,
                members,
                nq,
                out,
                lse,
                e_row,
                seps,
            )
            e2 = float(np.sum(e_row * e_row))
            pad, ynorm = self._pad(q, out, scale)
        kept_keys = int(keep.sum()) * B + h * (t - nbc * B)
        return out, lse, e2, pad, ynorm, (kept_keys, h * t, h * nbc * B)

    def _score_eps(self, q, scale) -> np.ndarray:
        """Return the log-weight rounding bound of every stacked row, shape ``(h_kv, R)``.

        ``theta_i + 8 u`` of the worst-case rounding allowance
        (:func:`attention._kernels.rounding._exponent_error` with ``sigma_i = scale
        ||q_i|| max_j ||k_j||``, the exponential's 4 ulp): every computed weight is
        within a factor ``exp(+-seps_i)`` of the exact one.
        """
        h, d = self._h, self._d
        u = float(np.finfo(self._dtype).eps) / 2.0
        q64 = q.reshape(h, -1, d).astype(np.float64)
        qn = np.sqrt(np.einsum("hrd,hrd->hr", q64, q64) * (1.0 + 2.0 * d * 2.3e-16))
        sigma = scale * qn * np.sqrt(self._kmax2)[:, None] * (1.0 + 1e-12)
        steps = 2 * -(-self._len // 64) + 4
        theta = np.array([_exponent_error(u, float(d), x, float(steps)) for x in sigma.ravel()])
        return (theta.reshape(sigma.shape) + _EXP_U * u) * (1.0 + 1e-12)

    def _pad(self, q, out, scale) -> tuple[float, float]:
        """Return the worst-case rounding allowance (as ``adaptive``) and ``||Y~||_F``.

        :func:`attention._core.attention_rounding` with ``sigma_i = scale ||q_i||
        max_j ||k_j||`` and sums of at most ``_exact._CHUNK_MAX`` keys in the cache's
        dtype (the segments are cut to the chunk).
        """
        gs = q.shape[0] // self._h
        kv = np.arange(q.shape[0]) // gs
        d, dv = self._d, self._dv
        qn = np.sqrt(np.square(q, dtype=np.float64).sum(axis=2) * (1.0 + 2.0 * d * 2.3e-16))
        yn2 = np.square(out, dtype=np.float64).sum(axis=2)
        yn = np.sqrt(yn2 * (1.0 + 2.0 * dv * 2.3e-16))
        vm = np.sqrt(self._vmax2)[kv][:, None]
        km = np.sqrt(self._kmax2)[kv][:, None]
        m = self._len
        pad = attention_rounding(
            self._dtype,
            d=d,
            m=m,
            dv=dv,
            chain=min(max(m, 1), _exact._CHUNK_MAX),
            sigma=scale * qn * km * (1.0 + 1e-12),
            vmax=np.broadcast_to(vm, yn.shape),
            ynorm=yn,
        )
        return float(np.sqrt(np.sum(pad * pad)) * (1.0 + 1e-12)), float(np.sqrt(yn2.sum()))


def _spectral_bound(gram: np.ndarray) -> np.ndarray:
    """Upper bounds of the spectral norms of centred value blocks from their Gram matrices.

    ``sqrt(lambda_max + 1e-10 tr G)`` (the eigenvalue error of a symmetric solver is a
    small multiple of ``u ||G||_2 <= u tr G``), at most the Frobenius norm
    ``sqrt(tr G)``.
    """
    if gram.size == 0:
        return np.zeros(gram.shape[:-2])
    top = np.linalg.eigvalsh(gram)[..., -1]
    tr = np.trace(gram, axis1=-2, axis2=-1)
    sig = np.sqrt(np.maximum(top, 0.0) + 1e-10 * tr) * (1.0 + 1e-10)
    return np.minimum(sig, np.sqrt(tr) * (1.0 + 1e-12))
