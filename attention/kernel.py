r"""§5 kernel methods: random features, polynomial features, sketches and leverage scores.

Every method here writes attention as :math:`y_i = \sum_j \kappa(q_i, k_j) v_j /
\sum_j \kappa(q_i, k_j)` and replaces the kernel by an inner product of features
:math:`\kappa(q, k) \approx \langle\phi(q), \phi(k)\rangle` (survey arXiv:2604.01757,
§5), so that :math:`\tilde Y = \tilde Z^{-1}\Phi_Q(\Phi_K^T V)` costs
:math:`O((n + m) M d_v)` for ``M`` features instead of :math:`O(n m (d + d_v))`:

* ``performer`` — FAVOR+ random features of :math:`\exp(q\cdot k\,\mathrm{scale})`
  (positive, trigonometric or hyperbolic; orthogonal or i.i.d. frequencies);
* ``scatterbrain`` — exact scores on angular-LSH buckets plus Performer features on
  the rest (unbiased sparse + low-rank);
* ``taylor`` — the polynomial method of Alman and Song: degree-``p`` Taylor features
  of ``exp`` with a deterministic remainder bound (sketched with TensorSketch above a
  feature budget);
* ``polysketch`` and ``tensorsketch`` — polynomial attention
  :math:`\langle q, k\rangle^p` (a different mechanism than softmax) with the sketches
  of PolySketchFormer and TensorSketch;
* ``levattention`` — exact softmax restricted to the keys of large leverage score
  (plus an optional local window), with a deterministic dropped-mass bound.

Causal attention (bottom-right aligned) of the feature methods runs as chunked prefix
sums (:func:`_key_state`, :func:`_apply_state`: batched BLAS GEMMs over all chunks,
never an ``n x d x M`` tensor); the key side (features, chunk states) is computed once
per key/value slice and shared by its grouped-query heads; float32 inputs of moderate
size get float32 features and GEMMs, and the slices run on all cores
(:func:`attention._parallel.map_slices`). With ``n == m`` the query side runs by units
of (key/value group, segment of 512 rows) (:func:`_grouped_segments`): the features of
a segment are computed, exponentiated and used while they are in cache, and each chunk
state is read once for all query heads of its group; where the register tiles apply,
the key side of such a unit is a scan that stores only the state at each segment start
(:func:`_scan_key_state`). Row exponentials, chunk shifts,
prefix states and the output/bound row passes are fused Numba kernels
(:mod:`attention._kernels.features`).
The angular-LSH bucketing used by ``scatterbrain`` is a minimal private version, to be
replaced by the hashing primitives of ``rnla.cluster`` when that module exists.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import warnings
from typing import NamedTuple

import numba
import numpy as np
from scipy.special import gammaln, logsumexp

from attention import exact as _exact
from attention._core import (
    CAP_TEXT,
    Cost,
    ErrorBound,
    Problem,
    _score_bounds,
    attention_rounding,
    check_error_bound,
    finish_row_bounds,
    method_result,
    prepare,
    problem_cost_exact,
)
from attention._kernels.features import (
    _angular_codes,
    _ball_rows,
    _block_attend_tiles,
    _block_unions,
    _bucket_tiles,
    _bucket_weights,
    _chunk_features,
    _chunk_products,
    _chunk_sums,
    _cumsum_rows,
    _exp_rows,
    _finish_rows,
    _finish_rows_keys,
    _gather_rows,
    _gather_rows_t,
    _key_means,
    _key_sums,
    _merge_rows,
    _merge_rows_keys,
    _online_leverage,
    _prefix_states,
    _prefix_topk,
    _scan_key_states,
    _scan_segment,
    _scan_shifts,
    _scatter_rows,
    _value_ball,
    _window_features,
)
from attention._parallel import map_slices
from attention._registry import register
from attention.bounds import dropped_mass_bound, value_radius
from attention.clustering import _bucket_blocks, _bucket_sets
from attention.sparse import _block_partials, _partial
from attention.sparse import _work_dtype as _sparse_work_dtype
from rnla import sketch as _sketch
from rnla._validation import (
    AccuracyWarning,
    as_float_array,
    check_int,
    check_option,
    check_probability,
    check_rng,
)

__all__ = [
    "PolynomialSketchError",
    "polynomial_attention",
    "polynomial_sketch_error",
    "random_feature_mse",
    "taylor_remainder_bound",
]

_CHUNK = 32  # keys and queries per chunk of the causal prefix-sum kernel
# Rows per segment of the row-blocked passes (feature GEMMs and exponentials, chunk
# products): their temporaries stay in the core's cache instead of streaming n x M
# arrays through memory (about 10 GB/s on the reference machine beyond 16 MB).
_SEGMENT_ROWS = 512
_EPS64 = np.finfo(np.float64).eps
_FEATURES = ("positive", "trig", "hyperbolic")
_MAX_TAYLOR_DEGREE = 64  # 1/64! ~ 1e-89; higher degrees only add features
_ERROR_BOUNDS = ("norms", "exact")
_NO_KBAR = np.zeros((0, 0))  # _finish_rows without the Jensen term
_SPARSE_BLOCKS = 16  # Scatterbrain: blocks per group of the sparse part (cache-sized)
_LEV_BLOCK = 64  # query rows per block of LevAttention (one GEMM over their key union)


# ---------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------


class _Features(NamedTuple):
    """Feature map in factored, log-stabilised form (float64).

    Query features ``exp(cq[i]) * phq[i]``; key features ``exp(lk[j]) * sk[j]``.
    """

    phq: np.ndarray  # (n, M)
    cq: np.ndarray  # (n,) per-query log shift (cancels in the normalisation)
    lk: np.ndarray | None  # (m, M) log-magnitudes of the key features (None: all 0)
    sk: np.ndarray | None  # (m, M) multipliers (signs / trig / polynomial; None: all 1)


def _query_features(lq: np.ndarray, sq) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the per-query maximum of the log-magnitudes (it cancels in ``num/den``)."""
    cq = lq.max(axis=1)
    ph = np.exp(lq - cq[:, None])
    if sq is not None:
        ph *= sq
    return ph, cq.astype(np.float64)


def _plain(fq: np.ndarray, fk: np.ndarray) -> _Features:
    """Features without a log part (polynomial and Taylor features)."""
    n = fq.shape[0]
    return _Features(fq, np.zeros(n), None, fk)


def _visible_counts(problem: Problem) -> np.ndarray:
    """Count the keys each query row sees (``m`` without causality)."""
    if not problem.causal:
        return np.full(problem.n, problem.m, dtype=np.int64)
    return np.clip(np.arange(problem.n) + problem.offset + 1, 0, problem.m)


class _KeyState(NamedTuple):
    """The key/value side of linear attention, shared by the query slices of one group.

    Non-causal: ``S = Phi_K^T [V, 1]`` (``M x w``) in the key shift ``s`` (a scalar).
    Causal (see :func:`_key_state`): per chunk ``c`` of ``C`` aligned keys the key
    features ``F[c]`` (``C x M``), values ``Vc[c]`` (``C x w``), the state ``S[c]`` of
    every key before the chunk (``M x w``) and the chunk's shift ``s[c]``.
    """

    causal: bool
    S: np.ndarray
    s: np.ndarray  # float64 shifts: () non-causal, (nc,) causal
    F: np.ndarray | None = None
    Vc: np.ndarray | None = None
    n: int = 0  # queries
    first: int = 0  # first query that sees a key (causal)
    chunk: int = _CHUNK


def _key_state(lk, sk, vaug, n: int, offset: int, causal: bool, chunk: int = _CHUNK, lk_off=None):
    r"""Key side of (causal) linear attention: features, chunk states and shifts.

    Parameters
    ----------
    lk, sk : ndarray (m, M) or None
        Key features in factored form ``exp(lk - s) * sk`` (``lk = None``: plain
        features ``sk``, shift 0; ``sk = None``: multipliers 1).
    vaug : ndarray (m, w)
        Values with a ones column appended (the normaliser comes from the same GEMMs).
    n : int
        Number of queries.
    offset : int
        ``m - n``: query ``i`` sees the keys ``j <= i + offset`` (causal).
    causal : bool
        Causal (bottom-right aligned) masking.
    chunk : int
        Keys (and queries) per chunk ``C``.
    lk_off : ndarray of float64 (m,), optional
        Per-key term of the log-features: key ``j`` has the log-features ``lk[j] +
        lk_off[j]`` (so that ``lk`` need not be shifted row by row first).

    Returns
    -------
    _KeyState

    Notes
    -----
    Causal: query ``i`` sees the keys ``j <= i + offset``. The queries ``i >= first``
    (``first = max(0, -offset)``) are aligned with the keys ``j = i + offset``; the keys
    before ``p = max(offset, 0)`` (the prefix) are seen by all of them. The aligned keys
    are cut into chunks of ``C``; chunk ``c`` gets the shift :math:`s_c`, the running
    maximum of ``lk`` over the prefix and the chunks ``0..c`` (the keys visible to the
    chunk's last query, so no future key enters a row), its features
    :math:`F_c = e^{l_k - s_c} s_k`, and the state of every earlier key
    :math:`S_c = e^{s_{c-1} - s_c}(S_{c-1} + F_{c-1}^T \tilde V_{c-1})`,
    :math:`S_0 = e^{s_{pre} - s_0} F_{pre}^T \tilde V_{pre}` (online-softmax rescaling).
    All chunk products are one batched GEMM: :math:`2 m M w` flops and
    :math:`O(mM + (m/C) M w)` memory. Log-form features are built by one Numba pass
    (:func:`attention._kernels.features._chunk_features`: chunk maxima, shifts and
    exponentials) and stored transposed (``F`` is a view of a contiguous ``(nc, M, C)``
    array), so both chunk GEMMs take plain operands.
    """
    m, w = vaug.shape
    dt = vaug.dtype
    if lk is not None and lk_off is not None and (not causal or sk is not None):
        lk = lk + lk_off[:, None].astype(lk.dtype)  # rare forms: materialise the logs
        lk_off = None
    if not causal:
        c = float(lk.max()) if lk is not None and lk.size else 0.0
        phk = _key_block(lk, sk, 0, m, c)
        return _KeyState(False, phk.T @ vaug, np.float64(c), n=n)
    first = min(max(-offset, 0), n)
    p = max(offset, 0)
    na = n - first  # aligned queries = aligned keys m - p
    C = max(1, int(chunk))
    if na <= 0 or m == 0:
        return _KeyState(True, np.zeros((0, 0, w), dt), np.zeros(0), n=n, first=n, chunk=C)
    nc = -(-na // C)
    pad = nc * C - na
    M = (lk if lk is not None else sk).shape[1]
    if lk is not None:
        off = np.zeros(m) if lk_off is None else np.asarray(lk_off, dtype=np.float64)
        s_pre = float(np.max(lk[:p].max(axis=1) + off[:p])) if p > 0 and M > 0 else -np.inf
        s = np.empty(nc)
        if M > 0:
            Ft = np.empty((nc, M, C), dtype=lk.dtype)
            mult = sk if sk is not None else np.zeros((1, 1), dtype=lk.dtype)
            _chunk_features(
                np.ascontiguousarray(lk),
                off,
                np.ascontiguousarray(mult, dtype=lk.dtype),
                sk is not None,
                p,
                C,
                s_pre,
                Ft,
                s,
            )
        else:
            Ft = np.zeros((nc, 0, C), dtype=lk.dtype)
            s[:] = 0.0 if not math.isfinite(s_pre) else s_pre
        F = Ft.transpose(0, 2, 1)
    else:
        s_pre = 0.0
        s = np.zeros(nc)
        F = sk[p:]
        if pad:
            F = np.concatenate([F, np.zeros((pad, M), dtype=F.dtype)])
        F = F.reshape(nc, C, M)
    Vc = vaug[p:]
    if pad:
        Vc = np.concatenate([Vc, np.zeros((pad, w), dtype=dt)])
    Vc = Vc.reshape(nc, C, w)
    # S[c] for c >= 1 first holds chunk c - 1's own sum F_{c-1}^T V_{c-1} (one batched
    # GEMM written in place; the last chunk's sum is never needed), then the prefix.
    S = np.empty((nc, M, w), dtype=np.result_type(F.dtype, dt))
    Ftc = F.transpose(0, 2, 1)
    vl = 64 // S.itemsize
    if (
        nc > 1
        and _exact._USE_TILES
        and M > 0
        and w > 1
        and (w - 1) % vl == 0
        and Ftc.dtype == Vc.dtype == S.dtype
        and Ftc.flags.c_contiguous
        and Vc.flags.c_contiguous
    ):
        _chunk_sums(Ftc, Vc, S)  # register tiles, chunk by chunk
    elif nc > 1:
        np.matmul(Ftc[:-1], Vc[:-1], out=S[1:])
    if p > 0:
        if lk is not None:
            # (lk + off) - s_pre <= 0 exactly in float64 (s_pre is the maximum of the same
            # rounded sums); lk + (off - s_pre) in the work dtype cancels catastrophically
            # for huge logits and overflowed to inf (then inf * 0 = NaN).
            pre = np.exp((lk[:p] + off[:p, None]) - s_pre).astype(lk.dtype)
            if sk is not None:
                pre *= sk[:p]
        else:
            pre = sk[:p]
        S[0] = pre.T @ vaug[:p]
        if s[0] > s_pre:
            S[0] *= dt.type(math.exp(s_pre - s[0]))
    else:
        S[0] = 0.0
    if nc > 1:
        rescale = np.zeros(nc, dtype=bool)
        rescale[1:] = s[1:] > s[:-1]
        fac = np.ones(nc, dtype=dt)
        for c in np.flatnonzero(rescale):
            fac[c] = math.exp(s[c - 1] - s[c])
        _prefix_states(S, fac, rescale)  # S[c] = (S[c-1] + F_{c-1}^T V_{c-1}) * fac[c]
    return _KeyState(True, S, s, F, Vc, n=n, first=first, chunk=C)


class _ScanState(NamedTuple):
    """Key side of causal linear attention kept as a scan (:func:`_scan_key_state`).

    Chunk ``c`` of ``C`` keys has the shift ``s[c]``; ``Sseg[t]`` is the state of the
    keys before chunk ``t * seg`` (the start of row segment ``t``), None until
    :func:`_scan_states` computes them (a group whose segments run in order on one
    thread does not need them); the chunk features are rebuilt from ``L``
    (log-features, or plain features without ``use_log``) while the scan goes on
    (:func:`attention._kernels.features._scan_segment`).
    """

    L: np.ndarray  # (m, M) log-features (use_log) or features
    off: np.ndarray  # (m,) float64 per-key term of the log-features
    mult: np.ndarray  # (m, M) multipliers (use_mult) or a (1, 1) placeholder
    use_log: bool
    use_mult: bool
    V: np.ndarray  # (m, w) values with the ones column
    s: np.ndarray  # (nc,) float64 chunk shifts
    Sseg: np.ndarray | None  # (nseg, M, w) states at the segment starts
    seg: int  # chunks per segment
    C: int = _CHUNK


def _scan_states(st: _ScanState) -> _ScanState:
    """``st`` with the states at the segment starts (the key scan, once per group)."""
    if st.Sseg is not None:
        return st
    nc = st.s.shape[0]
    Sseg = np.empty((-(-nc // st.seg), st.L.shape[1], st.V.shape[1]), dtype=st.V.dtype)
    s = np.empty(nc)  # the same shifts again
    _scan_key_states(st.L, st.off, st.mult, st.use_log, st.use_mult, st.V, st.C, st.seg, s, Sseg)
    return st._replace(Sseg=Sseg)


def _scan_key_state(lk, sk, vaug, n: int, offset: int, causal: bool, lk_off=None):
    r"""Key side for :func:`_grouped_segments`: a :class:`_ScanState` where it applies.

    Causal with ``n == m`` (no prefix keys), the chunk products on the exact kernel's
    register tiles (``C`` and ``w - 1`` multiples of the vector length, one dtype):
    the key side is one scan (:func:`attention._kernels.features._scan_key_states`)
    that keeps the states at the starts of the row segments only (``M w`` numbers per
    512 rows instead of per 32: 2 MB instead of 34 MB per group at ``n = 16384``,
    ``M = 256``); the chunk features are not stored either but rebuilt in the query
    units, whose scan adds the chunks' own sums once more (:math:`2 m M w` flops per
    group). Here only the chunk shifts are computed; the states follow in
    :func:`_scan_states` for the groups whose segments run in parallel
    (:func:`_grouped_segments`). Otherwise :func:`_key_state` (all chunk states).
    """
    m, w = vaug.shape
    dt = vaug.dtype
    L = lk if lk is not None else sk
    C = _CHUNK
    vl = 64 // dt.itemsize
    if not (
        causal
        and offset == 0
        and n == m
        and m > 0
        and _exact._USE_TILES
        and L is not None
        and L.shape[1] > 0
        and w > 1
        and (w - 1) % vl == 0
        and C % vl == 0
        and L.dtype == dt
        and (sk is None or lk is None or sk.dtype == dt)
    ):
        return _key_state(lk, sk, vaug, n, offset, causal, lk_off=lk_off)
    use_log = lk is not None
    use_mult = use_log and sk is not None
    off = np.zeros(m) if lk_off is None or not use_log else np.asarray(lk_off, dtype=np.float64)
    mult = np.ascontiguousarray(sk) if use_mult else np.zeros((1, 1), dtype=dt)
    nc = -(-m // C)
    seg = max(1, _SEGMENT_ROWS // C)
    s = np.empty(nc)
    L = np.ascontiguousarray(L)
    V = np.ascontiguousarray(vaug)
    _scan_shifts(L, off, use_log, C, s)
    return _ScanState(L, off, mult, use_log, use_mult, V, s, None, seg, C)


def _apply_state(phq: np.ndarray, st: _KeyState):
    r"""Query side of (causal) linear attention: ``(out, shift)``.

    ``out[i] = sum_{j visible} (phq_i . phk_j) vaug_j`` scaled by ``exp(-shift[i])``;
    ``shift`` is float64, ``-inf`` for rows that see no key. Causal: per chunk one
    batched GEMM :math:`\Phi_{Q,c} S_c` (the earlier keys) plus the masked in-chunk
    product :math:`(\Phi_{Q,c} F_c^T \odot L)\tilde V_c` (``L`` lower triangular with
    its diagonal): :math:`2nMw + 2nC(M + w)` flops. Without padding (``C`` divides the
    aligned rows, no unaligned rows) the chunk products are written into ``out``
    directly.
    """
    n = st.n
    dt = phq.dtype
    if not st.causal:
        return phq @ st.S, np.full(n, float(st.s))
    w = st.S.shape[2] if st.S.ndim == 3 else 0
    shift = np.full(n, -np.inf)
    if st.first >= n:
        return np.zeros((n, w), dtype=dt), shift
    nc, C, M = st.F.shape
    na = n - st.first
    pad = nc * C - na
    P = phq[st.first :]
    if pad:
        P = np.concatenate([P, np.zeros((pad, M), dtype=dt)])
    P = np.ascontiguousarray(P).reshape(nc, C, M)
    direct = st.first == 0 and not pad
    blk = np.empty((nc, C, w), dtype=dt)
    Ft = st.F.transpose(0, 2, 1)
    vl = 64 // np.dtype(dt).itemsize
    if (
        _exact._USE_TILES
        and M > 0
        and w > 1
        and (w - 1) % vl == 0
        and C % vl == 0
        and st.S.dtype == dt
        and st.Vc.dtype == dt
        and Ft.dtype == dt
        and all(x.flags.c_contiguous for x in (P, st.S, Ft, st.Vc))
    ):
        # Register tiles, chunk by chunk (BLAS packs these small operands per call).
        _chunk_products(P, st.S, Ft, st.Vc, blk)
        nc_done = nc
    else:
        nc_done = 0
    # Segments of chunks whose temporaries stay in cache (the n x w products of a whole
    # long sequence do not): the same batched GEMMs, segment by segment.
    seg = max(1, _SEGMENT_ROWS // C)
    A = np.empty((min(seg, nc), C, C), dtype=dt)
    tmp = np.empty((min(seg, nc), C, w), dtype=dt)
    tri = np.tri(C, dtype=dt)
    for c0 in range(nc_done, nc, seg):
        c1 = min(nc, c0 + seg)
        a, t = A[: c1 - c0], tmp[: c1 - c0]
        np.matmul(P[c0:c1], st.S[c0:c1], out=blk[c0:c1])
        np.matmul(P[c0:c1], Ft[c0:c1], out=a)
        a *= tri
        np.matmul(a, st.Vc[c0:c1], out=t)
        blk[c0:c1] += t
    if direct:
        out = blk.reshape(n, w)
    else:
        out = np.zeros((n, w), dtype=dt)
        out[st.first :] = blk.reshape(nc * C, w)[:na]
    shift[st.first :] = np.repeat(st.s, C)[:na]
    return out, shift


def _linear_attend(feat: _Features, v: np.ndarray, causal: bool, offset: int):
    """Linear attention with features: ``(num, den, logscale)`` (true sums ``e^logscale *``).

    Non-causal: one GEMM with a global key shift. Causal: chunked prefix sums
    (:func:`_key_state`, :func:`_apply_state`) with a running key shift. Rows that see
    no key have ``den = 0`` and ``logscale = -inf``. Works in the dtype of ``feat.phq``
    (float32 features give float32 GEMMs); ``sk = None`` means multipliers 1.
    """
    st = _key_state(
        feat.lk, feat.sk, _augment(v, feat.phq.dtype), feat.phq.shape[0], offset, causal
    )
    return _attend_state(feat.phq, feat.cq, st)


def _augment(v: np.ndarray, dt) -> np.ndarray:
    """``[v, 1]`` in dtype ``dt``."""
    m, dv = v.shape
    vaug = np.empty((m, dv + 1), dtype=dt)
    vaug[:, :dv] = v
    vaug[:, dv] = 1.0
    return vaug


def _attend_state(phq: np.ndarray, cq: np.ndarray, st: _KeyState):
    """``(num, den, logscale)`` of query features ``exp(cq) * phq`` against a key state."""
    out, shift = _apply_state(phq, st)
    dv = out.shape[1] - 1
    return out[:, :dv], out[:, dv], cq + shift


def _key_block(lk, sk, j0: int, j1: int, c: float) -> np.ndarray:
    """Key features ``exp(lk - c) * sk`` of keys ``j0:j1`` (``lk = None``: ``sk``)."""
    if lk is None:
        return sk[j0:j1]
    F = np.exp(lk[j0:j1] - lk.dtype.type(c))
    if sk is not None:
        F *= sk[j0:j1]
    return F


def _causal_linear(phq, lk, sk, vaug, offset: int, chunk: int):
    r"""Causal linear attention by chunks (all products are batched BLAS GEMMs).

    Parameters
    ----------
    phq : ndarray (n, M)
        Query features.
    lk, sk : ndarray (m, M) or None
        Key features in factored form ``exp(lk - c) * sk`` (``lk = None``: plain
        features ``sk``, no shift; ``sk = None``: multipliers 1).
    vaug : ndarray (m, w)
        Values with a ones column appended (the normaliser comes from the same GEMM).
    offset : int
        ``m - n``: query ``i`` sees the keys ``j <= i + offset``.
    chunk : int
        Keys per chunk ``C``.

    Returns
    -------
    out : ndarray (n, w)
        ``sum_{j visible} (phq_i . phk_j) vaug_j`` scaled by ``exp(-shift_i)``.
    shift : ndarray of float64 (n,)
        The key shift of each row (``-inf`` for rows that see no key; 0 without ``lk``).

    Notes
    -----
    :func:`_key_state` then :func:`_apply_state`. Cost :math:`2(n + m)Mw + 2nC(M + w)`
    flops.
    """
    return _apply_state(phq, _key_state(lk, sk, vaug, phq.shape[0], offset, True, chunk))


def _take(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``src[idx]`` (rows of ``src`` by an integer array of any shape), without the GIL."""
    out = np.empty((*idx.shape, *src.shape[1:]), dtype=src.dtype)
    if out.size:
        _gather_rows(
            np.ascontiguousarray(src).reshape(src.shape[0], -1),
            np.ascontiguousarray(idx, dtype=np.int64).reshape(-1),
            out.reshape(idx.size, -1),
        )
    return out


def _take_t(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``src[idx].transpose(0, 2, 1)`` as a contiguous array (2-D ``src``, ``idx``)."""
    out = np.empty((idx.shape[0], src.shape[1], idx.shape[1]), dtype=src.dtype)
    if out.size:
        _gather_rows_t(np.ascontiguousarray(src), np.ascontiguousarray(idx, dtype=np.int64), out)
    return out


def _logsumexp(x: np.ndarray) -> float:
    """``log sum exp(x)`` of a 1-D float64 array (``-inf`` if empty or all ``-inf``)."""
    if x.size == 0:
        return -math.inf
    mx = float(np.max(x))
    if not math.isfinite(mx):
        return mx
    return mx + math.log(float(np.sum(np.exp(x - mx))))


def _n_kv(problem: Problem) -> int:
    """Count the distinct key/value slices used by the query slices."""
    return int(np.unique(problem.kv_index).size)


def _linear_flops(problem: Problem, M: int) -> float:
    """Flops of linear attention with ``M`` features, key states shared per kv slice.

    Key side (:func:`_key_state`, once per key/value slice): ``2 m M w``; query side
    (:func:`_apply_state`, per query slice): ``2 n M w`` plus the in-chunk GEMMs
    ``2 n C (M + w)`` when causal (``w = dv + 1``).
    """
    n, m, w = problem.n, problem.m, problem.dv + 1
    q = 2.0 * n * M * w
    if problem.causal:
        q += 2.0 * n * min(_CHUNK, m) * (M + w)
    return problem.n_slices * q + _n_kv(problem) * 2.0 * m * M * w


def _feature_flops(problem: Problem, per_row: float) -> float:
    """Flops of a feature map costing ``per_row`` multiply-adds a row, keys shared."""
    return 2.0 * per_row * (problem.n_slices * problem.n + _n_kv(problem) * problem.m)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` row-wise, 0 for rows with ``den == 0`` (no visible key)."""
    zero = den == 0
    out = num / np.where(zero, 1.0, den)[:, None]
    if zero.any():
        out[zero] = 0.0
    return out


def _positive_lse(den: np.ndarray, logscale: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(den > 0, np.log(np.where(den > 0, den, 1.0)) + logscale, -np.inf)


def _geometry(v: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """``R`` and ``R + ||y_i - c||`` (the a-posteriori radius of the row lemma)."""
    c, R = value_radius(v)
    return float(R), float(R) + np.linalg.norm(y - c, axis=1)


def _scaled(problem: Problem, g: int, dtype=np.float64):
    """Slice ``g`` in ``dtype`` with ``sqrt(scale)`` folded into ``q`` and ``k``."""
    q, k, v = problem.slice(g)
    r = math.sqrt(problem.scale)
    r = np.dtype(dtype).type(r)
    # One pass and one allocation each (astype then multiply allocated twice: the
    # fresh pages of long inputs fault in on every call); the same products.
    return np.multiply(q, r, dtype=dtype), np.multiply(k, r, dtype=dtype), v.astype(dtype)


def _scaled_kv(problem: Problem, g: int, dtype=np.float64):
    """Keys of slice ``g`` as :func:`_scaled` and its values as stored (no copy).

    For the key sides, which need no queries; the values go to :func:`_augment`, which
    casts them (``dtype`` holds the input dtype's values exactly: no rounding).
    """
    r = np.dtype(dtype).type(math.sqrt(problem.scale))
    j = problem.kv_index[g]
    return np.multiply(problem.k[j], r, dtype=dtype), problem.v[j]


def _scaled_q(problem: Problem, g: int, dtype=np.float64) -> np.ndarray:
    """Return the queries of slice ``g`` in ``dtype``, times ``sqrt(scale)``."""
    r = np.dtype(dtype).type(math.sqrt(problem.scale))
    return np.multiply(problem.q[g], r, dtype=dtype)  # one allocation (as _scaled)


def _work_dtype(problem: Problem, xmax: float, limit: float = 1e3):
    """Dtype of the feature GEMMs: float32 for float32 inputs of moderate size.

    ``xmax`` bounds the prescaled query/key norms; beyond ``limit`` the features are
    built in float64 (their logs and powers would lose too many float32 digits).
    """
    if problem.dtype == np.float32 and xmax <= limit:
        return np.float32
    return np.float64


def _one_blas_thread(fn):
    """Run a method with BLAS on one thread (its slices run on all cores instead).

    The set-up products in the calling thread (frequencies, sketch matrices) are small:
    a multithreaded BLAS on a loaded machine can take tens of milliseconds for each.
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from attention.exact import _single_threaded_blas

        with _single_threaded_blas():
            return fn(*args, **kwargs)

    return run


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _lazy_key_sides(problem: Problem, key_side):
    """Group the query slices by key/value head; ``key(j)`` computes ``key_side`` once.

    Returns ``(members, key)``: ``members[j]`` lists the query slices of key/value head
    ``j`` in order, and ``key(j)`` returns ``key_side(g)`` for the first slice ``g`` of
    that group, computed on first use under a per-group lock (other threads asking for
    the same group wait for it), so it runs once whichever thread needs it first.
    """
    reps: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    for g in range(problem.n_slices):
        j = int(problem.kv_index[g])
        reps.setdefault(j, g)
        members.setdefault(j, []).append(g)
    locks = {j: threading.Lock() for j in reps}
    keys: dict[int, object] = {}

    def key(j: int):
        with locks[j]:
            if j not in keys:
                keys[j] = key_side(reps[j])
        return keys[j]

    def release(j: int) -> None:
        """Forget group ``j``'s key side (its last user is done): its memory is reused."""
        with locks[j]:
            keys[j] = None

    key.release = release
    return members, key


def _grouped_map(problem: Problem, key_side, query_side) -> list:
    """Key-side work once per key/value slice, then query-side work per query slice.

    ``key_side(g)`` runs once for one slice ``g`` of every key/value group (grouped-query
    heads share their keys), ``query_side(g, key_result)`` for every query slice. The
    query slices run on all cores (:func:`attention._parallel.map_slices`) in an order
    interleaved over the groups; each computes its group's key side on first use (the
    other slices of that group wait for it), so no thread idles between the two stages
    (3 key/value and 9 query slices on 2 threads: 6 units of time instead of 2 + 5).
    The key side of a group is computed from the same slice whichever thread runs it.
    Returns the query-side results in slice order.
    """
    members, key = _lazy_key_sides(problem, key_side)
    left = {j: len(hs) for j, hs in members.items()}
    lock = threading.Lock()

    def run(g):
        j = int(problem.kv_index[g])
        out = query_side(g, key(j))
        with lock:
            left[j] -= 1
            done = left[j] == 0
        if done:
            # The group's key side (tens of MB at long n) is freed as soon as its last
            # query slice is done: the next groups reuse the memory instead of
            # faulting in fresh pages (and the peak memory is that of the groups in
            # progress, not of all groups).
            key.release(j)
        return out

    order = [g for grp in itertools.zip_longest(*members.values()) for g in grp if g is not None]
    res = map_slices(run, order)
    out: list = [None] * problem.n_slices
    for g, r in zip(order, res, strict=True):
        out[g] = r
    return out


def _segmented(problem: Problem) -> bool:
    """Whether :func:`_grouped_segments` applies: causal, ``n == m > 0``."""
    return bool(problem.causal and problem.offset == 0 and problem.n > 0)


def _grouped_segments(problem: Problem, key_side, feats, finish) -> dict:
    r"""Causal linear attention by units of (key/value group, row segment).

    For causal problems with ``n == m`` (:func:`_segmented`). ``key_side(g)`` returns
    ``(st, extra)`` once per key/value group (``st`` from :func:`_key_state`), computed
    on first use as in :func:`_grouped_map`. A unit takes one segment of
    ``_SEGMENT_ROWS // C`` chunks of one group: ``feats(g, i0, i1, out)`` writes the
    query features of rows ``i0:i1`` of every query slice ``g`` of the group into
    ``out`` and returns their log shifts (float64); the chunk products of all these
    slices run as one batched GEMM over (chunk, slice) with :math:`S_c`, :math:`F_c` and
    :math:`\tilde V_c` broadcast over the slices, so each chunk state is read once per
    group (a long sequence's states do not fit in cache: 34 MB per group at ``n =
    16384``, ``M = 256``) or, when ``st`` is a :class:`_ScanState`, the unit continues
    the key scan from its segment's state (one Numba kernel,
    :func:`attention._kernels.features._scan_segment`: the chunk's features, values and
    state stay in cache for the group's heads); ``finish(g, i0, i1, num, logscale,
    extra)`` receives the rows
    ``[numerators, normaliser]`` (the work dtype) and their log scale. The features and
    products of a unit stay in cache. The same per-chunk products as
    :func:`_apply_state`, so the results do not depend on the number of threads.
    Returns the ``extra`` of every group (by key/value index).
    """
    groups = list(dict.fromkeys(int(j) for j in problem.kv_index))
    # Groups run whole (their segments in order on one thread, the state carried from
    # one segment to the next: no separate key scan) while every thread gets one;
    # the remaining groups run by segments (balance). The same operations either way.
    threads = numba.get_num_threads()
    whole = set(groups[: len(groups) - len(groups) % threads]) if threads > 1 else set(groups)

    def key_side_states(g):
        st, extra = key_side(g)
        if isinstance(st, _ScanState) and int(problem.kv_index[g]) not in whole:
            st = _scan_states(st)
        return st, extra

    extras = {}

    def key_side_kept(g):
        st, extra = key_side_states(g)
        extras[int(problem.kv_index[g])] = extra
        return st, extra

    members, key = _lazy_key_sides(problem, key_side_kept)

    n, C = problem.n, _CHUNK
    nc = -(-n // C)
    seg = max(1, _SEGMENT_ROWS // C)
    left = {j: 1 if j in whole else -(-nc // seg) for j in groups}
    lock = threading.Lock()

    def unit(task):
        j, c0 = task
        if c0 is None:  # the whole group, segment after segment
            st = key(j)[0]
            S = None
            if isinstance(st, _ScanState):
                S = np.zeros((st.L.shape[1], st.V.shape[1]), dtype=st.V.dtype)
            for c in range(0, nc, seg):
                segment(j, c, S)
        else:
            segment(j, c0, None)
        with lock:
            left[j] -= 1
            done = left[j] == 0
        if done:
            key.release(j)  # as in _grouped_map: the memory goes to the next groups

    def segment(j, c0, S):
        st, extra = key(j)
        hs = members[j]
        G = len(hs)
        c1 = min(nc, c0 + seg)
        k = c1 - c0
        i0, i1 = c0 * C, min(n, c1 * C)
        rows = i1 - i0
        scan = isinstance(st, _ScanState)
        if scan:
            M, w, dt = st.L.shape[1], st.V.shape[1], st.V.dtype
        else:
            M, w, dt = st.F.shape[2], st.S.shape[2], st.S.dtype
        P = np.empty((G, k * C, M), dtype=dt)
        P[:, rows:] = 0.0
        cqs = [feats(g, i0, i1, P[h, :rows]) for h, g in enumerate(hs)]
        res = np.empty((G, k, C, w), dtype=dt)
        if scan:
            # One Numba scan over the segment's chunks: features, state and values of a
            # chunk in cache for the G heads (a whole group: S carried over).
            advance = S is not None
            if not advance:
                S = st.Sseg[c0 // st.seg].copy()
            res3 = res.reshape(G, k * C, w)
            _scan_segment(
                P,
                st.L,
                st.off,
                st.mult,
                st.use_log,
                st.use_mult,
                st.V,
                C,
                c0,
                st.s,
                S,
                res3,
                advance,
            )
        else:
            P4 = P.reshape(G, k, C, M).transpose(1, 0, 2, 3)  # (chunk, slice, C, M)
            res4 = res.transpose(1, 0, 2, 3)
            np.matmul(P4, st.S[c0:c1, None], out=res4)
            A = np.matmul(P4, st.F[c0:c1, None].transpose(0, 1, 3, 2))
            A *= np.tri(C, dtype=dt)
            res4 += np.matmul(A, st.Vc[c0:c1, None])
        shift = np.repeat(st.s[c0:c1], C)[:rows]
        for h, g in enumerate(hs):
            finish(g, i0, i1, res[h].reshape(k * C, w)[:rows], cqs[h] + shift, extra)

    tasks = [(j, None) for j in groups if j in whole]
    tasks += [(j, c0) for c0 in range(0, nc, seg) for j in groups if j not in whole]
    map_slices(unit, tasks)
    return extras  # every group ran at least one unit


def _key_cache(problem: Problem, build):
    """Memoise per key/value slice (grouped-query heads share their keys)."""
    cache: dict[int, object] = {}

    def get(g: int):
        j = int(problem.kv_index[g])
        if j not in cache:
            cache[j] = build(g)
        return cache[j]

    return get


# ---------------------------------------------------------------------------------------
# Performer (FAVOR+) random features
# ---------------------------------------------------------------------------------------


def _frequencies(n_features: int, d: int, orthogonal: bool, rng) -> np.ndarray:
    """Gaussian frequencies ``W`` (M, d): rows ``N(0, I)``, block-orthogonal if asked."""
    if orthogonal:
        # orthogonal_gaussian rows have the law of N(0, I/M): undo its 1/sqrt(M).
        return _sketch.orthogonal_gaussian(n_features, d, rng=rng).todense() * math.sqrt(
            n_features
        )
    return rng.standard_normal((n_features, d))


def _rf_logs(x: np.ndarray, W: np.ndarray, features: str, query: bool):
    """Log-magnitudes and multipliers of the random features of the rows of ``x``."""
    u = x @ W.T.astype(x.dtype, copy=False)
    half = x.dtype.type(0.5) * np.einsum("ij,ij->i", x, x)[:, None]
    M = W.shape[0]
    if features == "positive":
        u -= half + x.dtype.type(0.5 * math.log(M))
        return u, None
    if features == "hyperbolic":
        lu = np.hstack([u, -u])
        lu -= half + x.dtype.type(0.5 * math.log(2 * M))
        return lu, None
    # trig: e^{||x||^2/2} [sin, cos] / sqrt(M); the magnitude is shared by all features.
    s = np.hstack([np.sin(u), np.cos(u)])
    return np.broadcast_to(half - x.dtype.type(0.5 * math.log(M)), s.shape).copy(), s


def _rf_query_features(q: np.ndarray, W: np.ndarray, features: str):
    """Query features in the form of :func:`_query_features` (``phq``, ``cq``).

    The per-row terms ``-||q||^2/2 - log(M)/2`` of the positive and hyperbolic maps are
    constant along a row: they go to ``cq`` without touching the ``n x M`` array.
    """
    if features == "trig":
        return _query_features(*_rf_logs(q, W, features, True))
    Wt = W.T.astype(q.dtype, copy=False)
    M = W.shape[0] * (2 if features == "hyperbolic" else 1)
    half = 0.5 * np.einsum("ij,ij->i", q, q, dtype=np.float64)
    off = -half - 0.5 * math.log(M)
    n = q.shape[0]
    cq = np.empty(n)
    if features == "hyperbolic":
        u = q @ Wt
        u = np.hstack([u, -u])
        if M:
            _exp_rows(u, off, cq)
        else:
            cq[:] = off
        return u, cq
    u = np.empty((n, M), dtype=q.dtype)
    if M == 0:
        cq[:] = off
        return u, cq
    # By row segments: the GEMM's output is exponentiated while it is in cache (one
    # pass: row maximum, shift, exp).
    for i0 in range(0, n, _SEGMENT_ROWS):
        i1 = min(n, i0 + _SEGMENT_ROWS)
        np.matmul(q[i0:i1], Wt, out=u[i0:i1])
        _exp_rows(u[i0:i1], off[i0:i1], cq[i0:i1])
    return u, cq


def _rf_key_logs(k: np.ndarray, W: np.ndarray, features: str):
    """Key log-features as ``(lk, sk, lk_off)`` for :func:`_key_state`.

    Positive features: ``lk = k W^T`` and the per-key term ``lk_off = -||k||^2/2 -
    log(M)/2`` (float64) kept apart (no pass over the ``m x M`` array); the other maps
    as :func:`_rf_logs`.
    """
    if features != "positive":
        return (*_rf_logs(k, W, features, False), None)
    u = k @ W.T.astype(k.dtype, copy=False)
    half = 0.5 * np.einsum("ij,ij->i", k, k, dtype=np.float64)
    return u, None, -half - 0.5 * math.log(W.shape[0])


def _rf_features(q: np.ndarray, k: np.ndarray, W: np.ndarray, features: str) -> _Features:
    lq, sq = _rf_logs(q, W, features, True)
    lk, sk = _rf_logs(k, W, features, False)
    phq, cq = _query_features(lq, sq)
    return _Features(phq, cq, lk, sk)


def _log_mse_block(s, nq, nk, features: str, M: int) -> np.ndarray:
    """Log of the exact per-entry MSE of the estimators of ``exp(s)`` (Performer Lemma 2).

    ``s = q.k``, ``nq = ||q||^2``, ``nk = ||k||^2`` (prescaled vectors), ``M`` frequencies.
    """
    nz = nq[:, None] + nk[None, :] + 2.0 * s  # ||q + k||^2
    with np.errstate(divide="ignore"):
        if features == "positive":
            return nz + 2.0 * s + np.log(-np.expm1(-nz)) - math.log(M)
        if features == "hyperbolic":
            return nz + 2.0 * s + 2.0 * np.log(-np.expm1(-nz)) - math.log(2 * M)
        nd = np.maximum(nq[:, None] + nk[None, :] - 2.0 * s, 0.0)  # ||q - k||^2
        return nz - 2.0 * s + 2.0 * np.log(-np.expm1(-nd)) - math.log(2 * M)


def random_feature_mse(x, y, /, *, features="positive", n_features=1):
    r"""Exact mean squared error of the random-feature estimators of :math:`e^{x\cdot y}`.

    Parameters
    ----------
    x : array_like, shape (n, d)
        First arguments (already multiplied by :math:`\sqrt{\mathrm{scale}}`).
    y : array_like, shape (m, d)
        Second arguments (same prescaling).
    features : {"positive", "trig", "hyperbolic"}, default="positive"
        Estimator.
    n_features : int, default=1
        Number ``M`` of i.i.d. Gaussian frequencies (trig and hyperbolic use ``2M``
        features).

    Returns
    -------
    ndarray of float64, shape (n, m)
        :math:`\mathbb E(\hat\kappa(x_i, y_j) - e^{x_i\cdot y_j})^2` (may be ``inf``).

    Raises
    ------
    ValueError
        Mismatched dimensions, unknown ``features``, ``n_features < 1``.

    Notes
    -----
    With :math:`z = x + y`, :math:`\Delta = x - y` and :math:`SM = e^{x\cdot y}`
    (Choromanski et al. [1]_, Lemma 2; re-derived in ``attention_kernel.rst``):

    .. math::

        \mathrm{MSE}_{+} = \tfrac1M e^{\|z\|^2} SM^2 (1 - e^{-\|z\|^2}),\quad
        \mathrm{MSE}_{\mathrm{trig}} = \tfrac1{2M} e^{\|z\|^2} SM^{-2}
        (1 - e^{-\|\Delta\|^2})^2,\quad
        \mathrm{MSE}_{\mathrm{hyp}} = \tfrac1{2M} e^{\|z\|^2} SM^2 (1 - e^{-\|z\|^2})^2 .

    For orthogonal frequencies (blocks of at most ``d`` orthogonal rows with
    chi-distributed norms) the positive estimator's MSE is not larger ([1]_, Theorem 2).

    References
    ----------
    .. [1] K. Choromanski et al., "Rethinking attention with Performers", ICLR 2021,
       arXiv:2009.14794.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.kernel import random_feature_mse
    >>> random_feature_mse(np.zeros((2, 3)), np.ones((4, 3)) * 0.1).shape
    (2, 4)
    """
    x = as_float_array(x, name="x", ndim=2).astype(np.float64)
    y = as_float_array(y, name="y", ndim=2).astype(np.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension: x {x.shape}, y {y.shape}")
    features = check_option(features, _FEATURES, "features")
    M = check_int(n_features, "n_features", minimum=1)
    logm = _log_mse_block(
        x @ y.T, np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y), features, M
    )
    with np.errstate(over="ignore"):
        return np.exp(logm)


def _log_mse_rows(q, k, features, M, causal, offset, exclude=None):
    """Exact ``log sum_j MSE_ij`` and ``log z_i`` over visible keys (blocks of keys).

    ``exclude(rows_slice, cols_slice) -> bool (n, b)`` removes pairs that are computed
    exactly (Scatterbrain's LSH buckets) from the MSE sum.
    """
    n, m = q.shape[0], k.shape[0]
    nq = np.einsum("ij,ij->i", q, q)
    nk = np.einsum("ij,ij->i", k, k)
    acc_mse = np.full(n, -np.inf)
    acc_z = np.full(n, -np.inf)
    rows = np.arange(n)
    for j0 in range(0, m, 256):
        j1 = min(m, j0 + 256)
        s = q @ k[j0:j1].T
        lm = _log_mse_block(s, nq, nk[j0:j1], features, M)
        if causal:
            vis = np.arange(j0, j1)[None, :] <= rows[:, None] + offset
            s = np.where(vis, s, -np.inf)
            lm = np.where(vis, lm, -np.inf)
        if exclude is not None:
            lm = np.where(exclude(j0, j1), -np.inf, lm)
        acc_mse = np.logaddexp(acc_mse, logsumexp(lm, axis=1))
        acc_z = np.logaddexp(acc_z, logsumexp(s, axis=1))
    return acc_mse, acc_z


def _kv_bound_data(problem: Problem, k: np.ndarray, v: np.ndarray, r: float = 1.0) -> dict:
    """Key/value-side ingredients of the norm-based random-feature bound (float64).

    Computed once per key/value slice (grouped-query heads share them) from the keys
    times ``r`` (``k`` in any float dtype, e.g. unscaled with ``r = sqrt(scale)``):
    squared key norms, the value centre and radius, the mean of the keys each query row
    sees, and the value terms of the rounding allowance (:func:`_slack`). Causal with
    ``n == m``: one Numba pass for the norms and running means
    (:func:`attention._kernels.features._key_means`).
    """
    counts = _visible_counts(problem)
    if problem.causal and problem.offset == 0 and k.shape[0] > 0:
        kbar = np.empty((k.shape[0], k.shape[1]))
        nk = np.empty(k.shape[0])
        _key_means(np.ascontiguousarray(k), float(r), kbar, nk)
    else:
        k = np.ascontiguousarray(k, dtype=np.float64) * r
        nk = np.einsum("ij,ij->i", k, k)
        if problem.causal:
            csum = np.empty_like(k)
            _cumsum_rows(k, csum)
            if problem.offset == 0:
                csum /= counts[:, None]
                kbar = csum
            else:
                kbar = csum[np.clip(counts - 1, 0, None)] / np.maximum(counts, 1)[:, None]
        else:
            kbar = np.broadcast_to(k.mean(axis=0), (problem.n, k.shape[1]))
    return {
        "nk": nk,
        "k2max": float(nk.max()) if nk.size else 0.0,
        "kbar": kbar,
        **_value_terms(v),
    }


def _value_terms(v: np.ndarray) -> dict:
    """Value ball ``c``, ``R`` and the value terms of :func:`_slack` (one pass, float64).

    The formulas of :func:`attention._core.center_radius` (centroid, largest distance
    plus the allowance ``64 eps_64 (max ||v_j|| + R)``), which is
    :func:`attention.bounds.value_radius` of one slice, computed by one Numba kernel
    (:func:`attention._kernels.features._value_ball`) from ``v`` in its own dtype, so one
    pass serves the bound's ball and the rounding allowance's radius.
    """
    m, dv = v.shape
    c = np.zeros(dv)
    R = vmax = 0.0
    if m:
        R2, vm2 = _value_ball(np.ascontiguousarray(v), c)
        R, vmax = math.sqrt(R2), math.sqrt(vm2)
        R += 64 * _EPS64 * (vmax + R)
    return {"c": c, "R": float(R), "slack_R": float(R), "vmax": vmax, "m": m}


def _slack(problem: Problem, y: np.ndarray, kvd: dict, ynorm=None) -> np.ndarray:
    """:func:`attention._core.rounding_allowance` from the precomputed value terms.

    The same call of :func:`attention._core.attention_rounding` (the proven worst case
    for a softmax row over the slice's keys in ``problem.dtype``) with the largest value
    norm of :func:`_value_terms`. ``ynorm``: the row norms of ``y`` when already
    computed (``y`` is then not read).
    """
    if ynorm is None:
        y = np.asarray(y, dtype=np.float64)
        ynorm = np.sqrt(np.einsum("ij,ij->i", y, y))
    dv = problem.dv
    up = 1.0 + 2.0 * (dv + 2) * _EPS64  # norms rounded up, as rounding_allowance does
    n = ynorm.shape[0]
    sigma = _score_bounds(problem)
    if sigma.shape[0] != n:
        sigma = np.full(n, sigma.max() if sigma.size else 0.0)
    m = max(problem.m, kvd["m"])
    return attention_rounding(
        problem.dtype,
        d=problem.d,
        m=m,
        dv=dv,
        chain=m + problem.d,
        sigma=sigma,
        vmax=np.full(n, kvd["vmax"] * up),
        ynorm=ynorm * math.sqrt(up),
    )


def _log_mse_rows_norms(q, kvd, features, M, counts, nq=None):
    """Upper bounds on ``log sum_j MSE_ij`` from norms only (Cauchy–Schwarz), O(n + m).

    ``nq``: the squared row norms of ``q`` when already computed (``q`` is then not read).
    """
    if nq is None:
        nq = np.einsum("ij,ij->i", q, q)
    k2max = kvd["k2max"]
    kmax = math.sqrt(k2max)
    with np.errstate(divide="ignore"):
        logc = np.log(counts.astype(np.float64))
    if features == "trig":
        # e^{||z||^2} SM^{-2} = e^{||q||^2 + ||k||^2} and (1 - e^{-||D||^2})^2 <= 1.
        return logc + nq + k2max - math.log(2 * M)
    # ||z||^2 + 2 q.k = ||q||^2 + ||k||^2 + 4 q.k <= ||q||^2 + ||k||^2 + 4 ||q|| ||k||.
    base = nq + k2max + 4.0 * np.sqrt(nq) * kmax
    return logc + base - math.log(M if features == "positive" else 2 * M)


def _jensen_logz(q, kvd, counts, qk=None):
    """Deterministic lower bound ``log z_i >= log m_i + q_i . mean_j k_j`` (Jensen).

    ``qk``: the products ``q_i . mean_j k_j`` when already computed.
    """
    if qk is None:
        qk = np.einsum("ij,ij->i", q, kvd["kbar"])
    with np.errstate(divide="ignore"):
        return np.log(counts.astype(np.float64)) + qk


def _norm_warning(qmax: float, kmax: float, M: int, method: str) -> None:
    worst = (qmax + kmax) ** 2
    if worst > math.log1p(M):
        warnings.warn(
            f"{method}: max ||q||*sqrt(scale) + max ||k||*sqrt(scale) = "
            f"{math.sqrt(worst):.3g}, so the relative MSE of an estimated entry of A can "
            f"reach (exp({worst:.3g}) - 1)/{M} > 1: random features are unreliable on "
            "these inputs (use more features, smaller norms, or another method)",
            AccuracyWarning,
            stacklevel=3,
        )


def _rf_bound(parts, problem, features, orthogonal, delta, mode, kind_override=None):
    """Combine per-slice random-feature error terms into one ``ErrorBound``."""
    N_rows = max(1, int(sum(p["nrows"] for p in parts)))
    slack = math.sqrt(sum(float(np.sum(p["slack"] ** 2)) for p in parts))
    if features in ("positive", "hyperbolic"):
        # Frobenius Markov bound: E X = sum_i (2R / z_i)^2 m_i sum_j MSE_ij.
        logex = logsumexp([p["logex"] for p in parts])
        log_mc = 0.5 * (logex - math.log(delta))
        # math.exp raises OverflowError (np.errstate does not apply): inf is honest here,
        # the trivial cap below keeps the bound finite.
        mc = math.exp(log_mc) if log_mc < 709.0 else math.inf
        trivial = math.sqrt(sum(float(np.sum(p["trivial"] ** 2)) for p in parts))
        value = min(mc, trivial) + slack
        how = (
            "||Y - ~Y||_F^2 <= sum_i (2R/z_i)^2 m_i ||a_i - ~a_i||_2^2 (row lemma with "
            "~y_i in conv(V), Cauchy-Schwarz), whose mean is given by the exact per-entry "
            "MSE (Choromanski et al. 2021, Lemma 2), then Markov's inequality; capped by "
            "the trivial sum_i (R + ||~y_i - c||)^2"
        )
    else:
        rows = np.concatenate([p["rows"](N_rows) for p in parts])
        with np.errstate(over="ignore"):
            value = float(np.sqrt(np.sum(np.square(rows)))) + slack
        how = (
            "per-row: Markov on ||a_i - ~a_i||_2^2 with a union bound over rows, "
            "||a_i - ~a_i||_1 <= sqrt(m_i) ||a_i - ~a_i||_2, then the row lemma "
            "||y_i - ~y_i|| <= ||a_i - ~a_i||_1 2R / |~z_i|"
        )
    src = (
        "exact MSE formulas with the exact z_i (O(n m d) extra work)"
        if mode == "exact"
        else "MSE bounded from norms (q.k <= ||q|| ||k||) and z_i >= m_i exp(q_i . mean k) "
        "(Jensen)"
    )
    kind = "probabilistic"
    bound_delta = delta
    note = ""
    if orthogonal and features != "positive":
        kind, bound_delta = "estimate", math.nan
        note = (
            "; orthogonal frequencies: the i.i.d. MSE formula is used as an estimate (no "
            "theorem that orthogonality does not increase the MSE of this estimator)"
        )
    elif orthogonal:
        note = "; orthogonal frequencies: MSE <= i.i.d. MSE (Choromanski et al. 2021, Thm 2)"
    if kind_override is not None:
        kind, bound_delta = kind_override
    return ErrorBound(
        value,
        "fro",
        kind,
        bound_delta,
        f"{features} random features: {how}; {src}{note}; "
        f"failure probability delta={delta}; plus a rounding allowance",
    )


def _rf_parts(
    problem, g, feat_out, q, k, v, features, M, mode, exclude=None, kvd=None, stats=None
):
    """Per-slice ingredients of the random-feature bound (see :func:`_rf_bound`).

    ``q, k, v`` are the float64 prescaled slice; ``kvd`` the slice's
    :func:`_kv_bound_data` (computed here when not given); ``stats`` the row sums of
    :func:`attention._kernels.features._finish_rows` (norms mode: ``y`` and ``q`` are
    then not read).
    """
    y, den, logscale = feat_out
    counts = _visible_counts(problem)
    seen = counts > 0
    if kvd is None:
        kvd = _kv_bound_data(problem, k, v)
    R = kvd["R"]
    if stats is None:
        yc = y - kvd["c"]
        ycn = np.sqrt(np.einsum("ij,ij->i", yc, yc))
        ynorm = nq = qk = None
    else:
        ynorm, ycn, nq, qk = (np.sqrt(stats[:, 0]), np.sqrt(stats[:, 1]), stats[:, 2], stats[:, 3])
    trivial = R + ycn
    if mode == "exact":
        lmse, logz = _log_mse_rows(q, k, features, M, problem.causal, problem.offset, exclude)
    else:
        lmse = _log_mse_rows_norms(q, kvd, features, M, counts, nq)
        logz = _jensen_logz(q, kvd, counts, qk)
    with np.errstate(divide="ignore"):
        logc = np.log(counts.astype(np.float64))
    part = {
        "nrows": int(seen.sum()),
        "slack": _slack(problem, y, kvd, ynorm),
        "trivial": np.where(seen, trivial, 0.0),
    }
    if seen.any():
        terms = logc[seen] + lmse[seen] - 2.0 * logz[seen]
        part["logex"] = _logsumexp(terms) + 2.0 * math.log(2.0 * R) if R > 0 else -np.inf
    else:
        part["logex"] = -np.inf

    part["lmse"], part["logc"], part["seen"], part["R"] = lmse, logc, seen, R
    part["logzt"] = np.where(
        den > 0, np.log(np.abs(np.where(den == 0, 1.0, den))) + logscale, -np.inf
    )
    return part


def _trig_rows(part, delta):
    def rows(N: int) -> np.ndarray:
        seen = part["seen"]
        out = np.zeros(seen.shape)
        if part["R"] == 0:
            return out
        logt = 0.5 * (part["logc"] + math.log(N) + part["lmse"] - math.log(delta))
        with np.errstate(invalid="ignore"):
            logr = logt + math.log(2.0 * part["R"]) - part["logzt"]
        # No error at all -> 0; ~z_i <= 0 (signed features) -> no bound.
        logr = np.where(logt == -np.inf, -np.inf, np.where(np.isnan(logr), np.inf, logr))
        with np.errstate(over="ignore"):
            out[seen] = np.exp(np.minimum(logr[seen], 800.0))
        return out

    return rows


@register(
    "performer",
    section="§5.2",
    family="kernel",
    causal=True,
    bound="probabilistic",
    summary="FAVOR+ random features (positive/trig/hyperbolic, orthogonal), linear time.",
)
@_one_blas_thread
def _performer(
    problem: Problem,
    *,
    rng,
    n_features=256,
    features="positive",
    orthogonal=True,
    error_bound="norms",
    delta=0.1,
):
    r"""Approximate attention with Performer / FAVOR+ features (``"performer"``).

    Parameters
    ----------
    problem : Problem
        Prepared inputs.
    rng : numpy.random.Generator
        Draws the frequencies (pass a new seed to redraw them).
    n_features : int, default=256
        Number ``M`` of Gaussian frequencies (``2M`` features for trig/hyperbolic).
    features : {"positive", "trig", "hyperbolic"}, default="positive"
        Feature map.
    orthogonal : bool, default=True
        Block-orthogonal frequencies with chi-distributed norms
        (:func:`rnla.sketch.orthogonal_gaussian`) instead of i.i.d.
    error_bound : {"norms", "exact", True, False, None}, default="norms"
        How the bound is computed: from norms only (``"norms"``, also ``True``;
        ``O(n + m)``, loose), from the exact per-entry MSE (``"exact"``, ``O(n m d)``,
        verification), or not at all (``None`` or ``False``).
    delta : float, default=0.1
        Failure probability of the bound.

    Returns
    -------
    MethodResult
        ``lse`` is None for trigonometric features (signed normaliser).
    """
    M = check_int(n_features, "n_features", minimum=1)
    features = check_option(features, _FEATURES, "features")
    orthogonal = _check_bool(orthogonal, "orthogonal")
    mode = check_error_bound(error_bound, _ERROR_BOUNDS)
    delta = check_probability(delta, "delta")
    d = problem.d
    W = _frequencies(M, d, orthogonal, rng)
    r = math.sqrt(problem.scale)
    qmax = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.q, problem.q)))) * r
    kmax = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.k, problem.k)))) * r
    _norm_warning(qmax, kmax, M, "performer")
    lses, parts = [], []
    outs = np.empty((problem.n_slices, problem.n, problem.dv), dtype=problem.dtype)
    evals = 0
    Mf = M if features == "positive" else 2 * M
    wdt = _work_dtype(problem, max(qmax, kmax))

    Wt = W.astype(wdt)
    segments = _segmented(problem) and features == "positive" and mode != "exact"
    key_state = _scan_key_state if segments else _key_state

    def key_side(g):
        if g == 0 and mode is not None:
            # The rounding allowance's score bounds (memoised per problem, one pass
            # over Q and K) on a worker thread, beside the other groups' work.
            _score_bounds(problem)
        k, v = _scaled_kv(problem, g, wdt)
        lk, sk, off = _rf_key_logs(k, Wt, features)
        st = key_state(
            lk, sk, _augment(v, wdt), problem.n, problem.offset, problem.causal, lk_off=off
        )
        kvd = None
        if mode == "norms":
            _, k0, v0 = problem.slice(g)
            if segments:
                # Norms and the key sums at the segment starts (no n x d key means).
                m = k0.shape[0]
                nk = np.empty(m)
                R = max(1, _SEGMENT_ROWS // _CHUNK) * _CHUNK  # rows per segment
                ksum = np.empty((-(-m // R), k0.shape[1]))
                _key_sums(np.ascontiguousarray(k0), float(r), R, nk, ksum)
                kvd = {
                    "nk": nk,
                    "k2max": float(nk.max()),
                    "ksum": ksum,
                    "k": np.ascontiguousarray(k0),
                    **_value_terms(v0),
                }
            else:
                kvd = _kv_bound_data(problem, k0, v0, r)
        return st, kvd

    def query_side(g, key):
        st, kvd = key
        q = _scaled_q(problem, g, wdt)
        phq, cq = _rf_query_features(q, Wt, features)
        num, den, logscale = _attend_state(phq, cq, st)
        part = None
        if mode == "norms":  # O(n d) from the queries and the key-side data
            # One pass: the output rows (written in place) and the bound's row sums.
            stats = np.empty((problem.n, 4))
            _finish_rows(num, den, problem.q[g], r, kvd["kbar"], kvd["c"], outs[g], stats)
            den = den.astype(np.float64)
            part = _rf_parts(
                problem,
                g,
                (None, den, logscale),
                None,
                None,
                None,
                features,
                M,
                mode,
                kvd=kvd,
                stats=stats,
            )
            return den, logscale, part
        if mode is None:
            outs[g] = _ratio(num, den)
            return den.astype(np.float64), logscale, None
        y = _ratio(num, den).astype(np.float64)
        den = den.astype(np.float64)
        if mode == "exact":
            q64, k64, v64 = _scaled(problem, g)
            part = _rf_parts(problem, g, (y, den, logscale), q64, k64, v64, features, M, mode)
        outs[g] = y  # cast in the worker thread (no stacked float64 copy)
        return den, logscale, part

    if segments:
        results = _performer_segments(problem, key_side, Wt, r, outs, mode, M)
    else:
        results = _grouped_map(problem, key_side, query_side)
    for den, logscale, part in results:
        lses.append(_positive_lse(den, logscale))
        if mode is not None:
            if features == "trig":
                part["rows"] = _trig_rows(part, delta)
            parts.append(part)
            if mode == "exact":
                evals += int(_visible_counts(problem).sum())
    bound = None if mode is None else _rf_bound(parts, problem, features, orthogonal, delta, mode)
    flops = _feature_flops(problem, d * M) + _linear_flops(problem, Mf)
    if mode == "exact":
        flops += 2.0 * evals * d
    lse = None if features == "trig" else lses
    return method_result(problem, outs, lse, bound, Cost(flops, evals))


def _performer_segments(problem, key_side, Wt, r, outs, mode, M):
    """Positive causal Performer by (group, row segment) units (:func:`_grouped_segments`).

    Returns ``(den, logscale, part)`` per query slice as the per-slice route does.
    """
    n, dv, G = problem.n, problem.dv, problem.n_slices
    dens = np.empty((G, n))
    logs = np.empty((G, n))
    stats = np.empty((G, n, 4))
    logm = 0.5 * math.log(M)

    def feats(g, i0, i1, out):
        q = np.multiply(problem.q[g][i0:i1], out.dtype.type(r), dtype=out.dtype)
        np.matmul(q, Wt.T, out=out)
        cq = np.empty(i1 - i0)
        _exp_rows(out, -0.5 * np.einsum("ij,ij->i", q, q, dtype=np.float64) - logm, cq)
        return cq

    def finish(g, i0, i1, num, logscale, kvd):
        den = num[:, dv]
        if mode == "norms":
            _finish_rows_keys(
                num,
                den,
                problem.q[g][i0:i1],
                r,
                kvd["k"],
                i0,
                kvd["ksum"][i0 // (max(1, _SEGMENT_ROWS // _CHUNK) * _CHUNK)],
                kvd["c"],
                outs[g][i0:i1],
                stats[g][i0:i1],
            )
        else:
            outs[g][i0:i1] = _ratio(num[:, :dv], den)
        dens[g][i0:i1] = den
        logs[g][i0:i1] = logscale

    kvds = _grouped_segments(problem, key_side, feats, finish)
    res = []
    for g in range(G):
        part = None
        if mode == "norms":
            j = int(problem.kv_index[g])
            part = _rf_parts(
                problem,
                g,
                (None, dens[g], logs[g]),
                None,
                None,
                None,
                "positive",
                M,
                mode,
                kvd=kvds[j],
                stats=stats[g],
            )
        res.append((dens[g], logs[g], part))
    return res


# ---------------------------------------------------------------------------------------
# Scatterbrain: LSH-sparse + Performer low-rank
# ---------------------------------------------------------------------------------------


def _bucket_windows(hk: np.ndarray, nb: int, cs: int) -> tuple[np.ndarray, np.ndarray]:
    """Key windows of the causal per-bucket chunks (:func:`attention.clustering._bucket_sets`).

    Window ``wstart[b] + t`` of bucket ``b`` holds the keys of ranks ``t cs`` to
    ``t cs + 2 cs - 1`` in the bucket (keys sorted by position; past the bucket's end the
    indices are clamped as in :func:`attention.clustering._bucket_blocks`, whose blocks
    with window start ``lo`` use exactly the keys ``Jw[wstart[b] + lo // cs]``).
    Returns ``wstart`` (nb + 1,) and ``Jw`` (n_windows, 2 cs).
    """
    m = hk.shape[0]
    order = np.lexsort((np.arange(m), hk))
    counts = np.bincount(hk, minlength=nb)
    start = np.concatenate([[0], np.cumsum(counts)])
    nwin = np.maximum(1, -(-counts // cs))
    wstart = np.concatenate([[0], np.cumsum(nwin)])
    b_of = np.repeat(np.arange(nb), nwin)
    t_of = np.arange(int(wstart[-1])) - wstart[b_of]
    span = (start[b_of] + t_of * cs)[:, None] + np.arange(2 * cs)[None, :]
    return wstart, order[np.minimum(span, m - 1)]


@register(
    "scatterbrain",
    section="§5.2",
    family="kernel",
    causal=True,
    bound="probabilistic",
    summary="Scatterbrain: exact scores on angular-LSH buckets + Performer features elsewhere.",
)
@_one_blas_thread
def _scatterbrain(
    problem: Problem,
    *,
    rng,
    n_features=128,
    n_buckets=8,
    chunk_size=32,
    features="positive",
    orthogonal=True,
    error_bound="norms",
    delta=0.1,
):
    r"""Scatterbrain attention (registered as ``"scatterbrain"``).

    Parameters
    ----------
    problem : Problem
        Prepared inputs.
    rng : numpy.random.Generator
        Draws the frequencies and the LSH projections.
    n_features : int, default=128
        Gaussian frequencies of the low-rank part.
    n_buckets : int, default=8
        Angular-LSH buckets (even, ``>= 2``); one hash round.
    chunk_size : int, default=32
        ``causal=True``: the exact (sparse) part covers, for each query, the keys of its
        bucket at visible positions among the last ``chunk_size`` to ``2 chunk_size``
        of them (per-bucket chunks in position order, as the causal Reformer), so it
        costs :math:`O(n \cdot chunk)` instead of :math:`O(n^2 / b)`; non-causal: every
        pair in a bucket.
    features : {"positive", "hyperbolic"}, default="positive"
        Positive feature maps only (the sparse correction must keep weights >= 0).
    orthogonal : bool, default=True
        Block-orthogonal frequencies.
    error_bound : {"norms", "exact", True, False, None}, default="norms"
        As for ``performer``; ``"exact"`` sums the MSE over the non-bucket pairs only.
    delta : float, default=0.1
        Failure probability of the bound.

    Returns
    -------
    MethodResult

    Notes
    -----
    Cost (causal): the Performer part :math:`2(n + m)(dM + M(d_v + 1))` flops plus the
    in-chunk products (key side once per key/value slice); the sparse part runs on
    blocks of ``chunk_size`` queries sharing a bucket window of ``2 chunk_size`` keys:
    three batched GEMMs (exact scores, low-rank estimates, weights times values) over
    the whole blocks, about twice the visible pairs (46% of the block entries are
    visible pairs on SmolLM2 layer-0 heads at ``n = 4096``; ``cost.flops`` counts every
    entry of the blocks' real rows, the same on both paths), and one fused Numba pass
    for the logarithms, row shifts and exponentials. The blocks go in groups of 16
    whose gathered operands stay in cache. The key windows are laid out once per
    key/value slice for plain (non-transposed) GEMMs (2.5x faster than transposed
    operands at these 32 x 64 shapes). Where the exact kernel uses its 512-bit
    register tiles (and ``2 chunk_size`` and ``d_v`` are multiples of the vector
    length) the sparse part runs block by block on them instead, in one Numba
    kernel: no gathered window copies, the padding rows of a block skipped, and the
    window's key features brought to one shift per window
    (:func:`attention._kernels.features._window_features`), so the low-rank estimates
    need one logarithm and one exponential per row instead of one per entry (same
    results to rounding; real SmolLM2 heads at ``n = 4096``: the same errors to six
    digits). One thread, 16384-token synthetic heads: 51 against 89 ms a head for the
    whole method.

    Measured (one thread, 16384-token synthetic heads, 3 query heads of one group,
    67 ms a head): the sparse part about 21 ms (gathers 7, the block GEMMs and weights
    9, the row bookkeeping 5), the low-rank part 12 ms (features 4.5, chunk products
    7.3), the shared key side 8 ms a head, the merge and bound rows 3 ms; exact
    attention takes about 270 ms a head there.
    """
    M = check_int(n_features, "n_features", minimum=1)
    nb = check_int(n_buckets, "n_buckets", minimum=2)
    cs = check_int(chunk_size, "chunk_size", minimum=1)
    if nb % 2:
        raise ValueError(f"n_buckets={nb} must be even (angular LSH has 2 buckets per ray)")
    features = check_option(features, ("positive", "hyperbolic"), "features")
    orthogonal = _check_bool(orthogonal, "orthogonal")
    mode = check_error_bound(error_bound, _ERROR_BOUNDS)
    delta = check_probability(delta, "delta")
    d, n, m = problem.d, problem.n, problem.m
    W = _frequencies(M, d, orthogonal, rng)
    # One seed for the hash: the same projections for queries, keys and every slice.
    lsh_seed = int(rng.integers(2**63))
    r = math.sqrt(problem.scale)
    qmax = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.q, problem.q)))) * r
    kmax = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.k, problem.k)))) * r
    _norm_warning(qmax, kmax, M, "scatterbrain")
    lses, parts = [], []
    outs = np.empty((problem.n_slices, problem.n, problem.dv), dtype=problem.dtype)
    evals = 0
    qpos, kpos = np.arange(n) + problem.offset, np.arange(m)

    wdt = _work_dtype(problem, max(qmax, kmax))
    # Exact scores of the bucket part: float32 only where the sparse methods use it.
    sdt = wdt if _sparse_work_dtype(problem) == np.float32 else np.float64
    Wt = W.astype(wdt)
    # Sparse part on the exact kernel's register tiles (AVX-512; window width and value
    # width multiples of the vector length), otherwise batched BLAS GEMMs.
    vl = 64 // np.dtype(sdt).itemsize
    tiles = bool(_exact._USE_TILES) and (2 * cs) % 16 == 0 and problem.dv % vl == 0 and d > 0

    # The projections of rnla.cluster.angular_lsh(x, nb, rng=lsh_seed), applied to
    # the rows of sqrt(scale) x in float64 by one Numba pass (no float64 copies).
    lsh_R = np.ascontiguousarray(check_rng(lsh_seed).standard_normal((1, d, nb // 2))[0])

    def _lsh(x):
        codes = np.empty(x.shape[0], dtype=np.int64)
        _angular_codes(np.ascontiguousarray(x), r, lsh_R, codes)
        return codes

    def key_side(g):
        if g == 0 and mode is not None:
            # The rounding allowance's score bounds (memoised per problem, one pass
            # over Q and K) on a worker thread, beside the other groups' work.
            _score_bounds(problem)
        k, v = _scaled_kv(problem, g, wdt)
        lk, _, off = _rf_key_logs(k, Wt, features)
        vaug = _augment(v, wdt)
        st = _key_state(lk, None, vaug, n, problem.offset, problem.causal, lk_off=off)
        k0 = problem.slice(g)[1]
        hk = _lsh(k0)
        kvd = None
        if mode == "norms" and problem.causal and problem.offset == 0 and m > 0:
            # Norms only: the merge continues the causal key means row by row
            # (_merge_rows_keys), no n x d array of means.
            k0 = np.ascontiguousarray(k0)
            nk = np.empty(m)
            _key_sums(k0, float(r), m, nk, np.empty((1, k0.shape[1])))
            kvd = {"nk": nk, "k2max": float(nk.max()), "k": k0, **_value_terms(v)}
        elif mode == "norms":
            kvd = _kv_bound_data(problem, k0, v, r)
        # Key features over their row maximum (log shift ck), once: one pass, in place
        # (the chunk states above are built; lk is not used again).
        fk = lk
        ck = np.empty(m)
        if Wt.shape[0]:
            _exp_rows(fk, np.zeros(m) if off is None else off, ck)
        ks = k.astype(sdt, copy=False)
        vv = vaug if vaug.dtype == sdt else _augment(v, sdt)  # read-only in both
        win = None
        if problem.causal and m > 0:
            # Every causal key window of every bucket, once per key/value slice, laid
            # out for plain (non-transposed) GEMMs: keys and features transposed.
            wstart, Jw = _bucket_windows(hk, nb, cs)
            if tiles:
                # Features at one shift per window (the register-tile kernel).
                fwe = np.empty((Jw.shape[0], fk.shape[1], Jw.shape[1]), dtype=fk.dtype)
                cmax = np.empty(Jw.shape[0])
                _window_features(fk, ck, Jw, fwe, cmax)
                win = (wstart, _take_t(ks, Jw), fwe, _take(vv, Jw), cmax)
            else:
                win = (wstart, _take_t(ks, Jw), _take_t(fk, Jw), _take(vv, Jw), None)
        return st, fk, ck, ks, vv, hk, kvd, win

    def query_side(g, key):
        st, fkey, ck, k, vv, hk, kvd, win = key
        q = _scaled_q(problem, g, wdt)
        phq, cq = _rf_query_features(q, Wt, features)
        num, shift = _apply_state(phq, st)  # (n, dv + 1): the normaliser is num[:, dv]
        logscale = cq + shift
        hq = _lsh(problem.q[g])
        qs = q.astype(sdt, copy=False)
        ref = logscale.copy()
        corr = np.zeros((n, vv.shape[1]))
        pairs = computed = 0
        sets = None
        if problem.causal:
            # Exact part on the per-bucket chunk windows (as the causal reformer): the
            # keys of the query's bucket among the last chunk_size..2 chunk_size of them.
            sets = _bucket_sets(hq, hk, kpos, qpos, cs)
            blocks = _bucket_blocks(hq, sets, qpos, kpos, cs)
            if blocks is not None:
                rows, J, keep, _, _ = blocks
                rr = np.maximum(rows, 0)
                wstart, kwt, fwt, vw, cmax = win
                lead = rows[:, 0]
                wid = wstart[hq[lead]] + sets[4][lead] // cs  # the window of each block
                nbk, L = J.shape
            if blocks is not None and tiles:
                # Block by block on register tiles, everything of a block in cache.
                _bucket_tiles(qs, phq, kwt, fwt, vw, rows, wid, keep, cq, cmax, ref, corr)
                pairs = int(keep.sum())
                computed = int((rows >= 0).sum()) * L
            elif blocks is not None:
                # Scores in the score dtype (float32 where the scores allow it); the
                # weights exp(s - rb) - exp(log(phq . fk) + cq + ck - rb) in one pass.
                # (Gathers by Numba kernels: NumPy fancy indexing holds the GIL, which
                # the other slices' threads wait for.)
                # By groups of blocks whose gathered operands stay in cache (a long
                # sequence's gathered copies do not: 24 MB per head at n = 16384); each
                # query row belongs to one block, so the groups are independent.
                B = max(1, min(nbk, _SPARSE_BLOCKS))
                bufs = [
                    np.empty((B, cs, qs.shape[1]), dtype=sdt),
                    np.empty((B, *kwt.shape[1:]), dtype=kwt.dtype),
                    np.empty((B, cs, phq.shape[1]), dtype=phq.dtype),
                    np.empty((B, *fwt.shape[1:]), dtype=fwt.dtype),
                    np.empty((B, *vw.shape[1:]), dtype=vw.dtype),
                ]
                sc_b = np.empty((B, cs, L), dtype=sdt)
                lp_b = np.empty((B, cs, L), dtype=np.result_type(phq.dtype, fwt.dtype))
                out_b = np.empty((B, cs, vw.shape[2]), dtype=sdt)
                rb = np.empty((B, cs))
                cqs, cks = cq.astype(sdt), ck.astype(sdt, copy=False)
                srcs = [qs, kwt, phq, fwt, vw]
                for b0 in range(0, nbk, B):
                    b1 = min(nbk, b0 + B)
                    t = b1 - b0
                    idx = [rr[b0:b1], wid[b0:b1], rr[b0:b1], wid[b0:b1], wid[b0:b1]]
                    for src, ix, buf in zip(srcs, idx, bufs, strict=True):
                        _gather_rows(
                            src.reshape(src.shape[0], -1),
                            ix.reshape(-1),
                            buf[:t].reshape(ix.size, -1),
                        )
                    sc, lp = sc_b[:t], lp_b[:t]
                    np.matmul(bufs[0][:t], bufs[1][:t], out=sc)
                    np.matmul(bufs[2][:t], bufs[3][:t], out=lp)
                    _bucket_weights(
                        sc, lp, keep[b0:b1], rows[b0:b1], J[b0:b1], cqs, cks, ref, rb[:t]
                    )
                    np.matmul(sc, bufs[4][:t], out=out_b[:t])
                    _scatter_rows(rows[b0:b1], out_b[:t], rb[:t], corr, ref)
                pairs = int(keep.sum())
                # Entries of the real rows, as on the tiles path: cost.flops is the
                # method's work, not this path's padding (the batched GEMMs also
                # multiply the padding rows of each block, about 13% more entries).
                computed = int((rows >= 0).sum()) * L
        else:
            for b in range(nb):
                qi = np.flatnonzero(hq == b)
                kj = np.flatnonzero(hk == b)
                if qi.size == 0 or kj.size == 0:
                    continue
                sc = qs[qi] @ k[kj].T
                # Low-rank estimate of the same entries, in log form (it is subtracted).
                with np.errstate(divide="ignore"):
                    lphi = cq[qi, None] + ck[None, kj] + np.log(phq[qi] @ fkey[kj].T)
                pairs += sc.size
                computed += sc.size
                rb = np.maximum(ref[qi], np.maximum(sc.max(axis=1), lphi.max(axis=1)))
                rb = np.where(np.isfinite(rb), rb, 0.0)
                wgt = np.exp(sc - rb[:, None]) - np.exp(lphi - rb[:, None])
                corr[qi] = wgt.astype(sdt) @ vv[kj] + 0.0
                ref[qi] = rb
        # One pass: merge the two parts, divide, write the output rows in place and
        # take the row norms of the bound.
        y = outs[g] if mode != "exact" else np.empty((n, problem.dv))
        den_t = np.empty(n)
        stats = np.empty((n, 4))
        kbar = kvd["kbar"] if kvd is not None and "kbar" in kvd else _NO_KBAR
        c_v = kvd["c"] if mode == "norms" else np.zeros(problem.dv)
        if kvd is not None and "k" in kvd:
            q_g = problem.q[g]
            _merge_rows_keys(num, logscale, corr, ref, q_g, r, kvd["k"], c_v, y, den_t, stats)
        else:
            _merge_rows(num, logscale, corr, ref, problem.q[g], r, kbar, c_v, y, den_t, stats)
        part = None
        if mode == "norms":
            part = _rf_parts(
                problem,
                g,
                (None, den_t, ref),
                None,
                None,
                None,
                features,
                M,
                mode,
                kvd=kvd,
                stats=stats,
            )
        elif mode == "exact":
            if sets is None:

                def exclude(j0, j1):
                    return hq[:, None] == hk[None, j0:j1]

            else:
                rank, lo = sets[2], sets[4]

                def exclude(j0, j1):
                    same = hq[:, None] == hk[None, j0:j1]
                    return same & (rank[None, j0:j1] >= lo[:, None])

            q64, k64, v64 = _scaled(problem, g)
            part = _rf_parts(
                problem, g, (y, den_t, ref), q64, k64, v64, features, M, mode, exclude
            )
            outs[g] = y  # cast in the worker thread (no stacked float64 copy)
        return den_t, ref, (pairs, computed), part

    block_entries = mse_evals = 0
    for den_t, ref, (pairs, computed), part in _grouped_map(problem, key_side, query_side):
        evals += pairs
        block_entries += computed
        lses.append(_positive_lse(den_t, ref))
        if mode is not None:
            parts.append(part)
            if mode == "exact":
                mse_evals += int(_visible_counts(problem).sum())
    evals += mse_evals
    bound = None if mode is None else _rf_bound(parts, problem, features, orthogonal, delta, mode)
    Mf = M if features == "positive" else 2 * M
    flops = _feature_flops(problem, d * (M + nb // 2)) + _linear_flops(problem, Mf)
    # Sparse part: scores, low-rank estimates and weights times [V, 1] of every computed
    # block entry (about twice the kept pairs when causal); the exact-MSE pass of
    # error_bound="exact" (its q.k products) on top.
    flops += 2.0 * block_entries * (d + Mf + problem.dv + 1) + 2.0 * mse_evals * d
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


# ---------------------------------------------------------------------------------------
# Taylor features (Alman–Song polynomial method)
# ---------------------------------------------------------------------------------------


def taylor_remainder_bound(B, degree):
    r"""Relative error bound of the degree-``p`` Taylor polynomial of ``exp`` on ``[-B, B]``.

    Parameters
    ----------
    B : float or array_like
        Bound on :math:`|s|` (``>= 0``), ``s`` the scaled score.
    degree : int
        Taylor degree ``p >= 0``.

    Returns
    -------
    float or ndarray
        :math:`\eta = e^{B} B^{p+1}/(p+1)!`, such that
        :math:`|e^s - T_p(s)| \le \eta\,e^s` for every :math:`|s| \le B`.

    Raises
    ------
    ValueError
        Negative ``B`` or ``degree``.

    Notes
    -----
    Lagrange remainder: :math:`e^s - T_p(s) = e^{\xi}s^{p+1}/(p+1)!` with :math:`\xi`
    between 0 and :math:`s`. For :math:`s \ge 0`, :math:`e^\xi \le e^s`; for
    :math:`s < 0`, :math:`e^{\xi} \le 1 = e^{s}e^{-s} \le e^s e^{B}`. Hence the
    relative bound :math:`\eta`. When :math:`\eta < 1` every
    :math:`T_p(s) \ge (1 - \eta)e^s > 0`: the approximate attention weights stay
    positive. Alman and Song [1]_ use this (with :math:`B = o(\sqrt{\log n})`) to get
    almost-linear-time attention.

    References
    ----------
    .. [1] J. Alman and Z. Song, "Fast attention requires bounded entries", NeurIPS 2023,
       arXiv:2302.13214.

    Examples
    --------
    >>> from attention.kernel import taylor_remainder_bound
    >>> float(taylor_remainder_bound(0.5, 3)) < 0.01
    True
    """
    B = np.asarray(B, dtype=np.float64)
    p = check_int(degree, "degree", minimum=0)
    if np.any(B < 0) or np.any(np.isnan(B)):
        raise ValueError("B must be >= 0")
    with np.errstate(over="ignore", divide="ignore"):
        logb = np.where(B > 0, np.log(np.where(B > 0, B, 1.0)), -np.inf)
        out = np.exp(B + (p + 1) * logb - gammaln(p + 2))
    return out if out.ndim else float(out)


class _TensorSketchGemm:
    r"""TensorSketch features as GEMMs: the same map as ``TensorSketch.transform``.

    ``transform`` computes :math:`\mathcal F^{-1}(\prod_t \mathcal F(C_t x))` with
    CountSketches :math:`C_t` and real FFTs of length ``k`` on every row. Both DFTs
    are small dense matrices, so the rows go through GEMMs instead: the forward
    transform of stage ``t`` is ``x @ (C_t^T F)`` (``d x (k/2 + 1)``, real and imaginary
    parts) and the inverse real DFT is one ``(k + 2) x k`` matrix. Cost
    :math:`2N(2 d (k/2 + 1) p + (k + 2) k)` flops for ``N`` rows, at the GEMM rate.
    """

    def __init__(self, ts, dtype, factor: float = 1.0):
        k = ts.shape[0]
        d = ts.n_features
        nf = k // 2 + 1
        ang = 2.0 * np.pi / k * np.outer(np.arange(k), np.arange(nf))  # (k, nf)
        cos, sin = np.cos(ang), np.sin(ang)
        self.stages = []
        for t in range(ts.degree):
            CT = np.zeros((d, k))
            CT[np.arange(d), ts.hashes[t]] = np.where(ts.negative[t], -1.0, 1.0)
            # rfft(y)_f = sum_j y_j exp(-2 pi i j f / k)
            self.stages.append(np.hstack([CT @ cos, -(CT @ sin)]).astype(dtype))
        c = np.full(nf, 2.0)
        c[0] = 1.0
        if k % 2 == 0:
            c[-1] = 1.0
        # irfft: y_j = (1/k) sum_f c_f (Re P_f cos(2 pi j f/k) - Im P_f sin(2 pi j f/k)).
        self.inverse = np.vstack([c[:, None] * cos.T, -c[:, None] * sin.T]).astype(dtype) / k
        self.nf = nf
        self.k = k
        self.d = d
        # Frequency-domain features (:meth:`features`). Parseval: <irfft(P), irfft(P')> =
        # sum_f (c_f/k)(Re P_f Re P'_f + Im P_f Im P'_f), and Im P_f = 0 at f = 0 (and
        # f = k/2 for even k): k real features. Each stage gets the columns
        # (Re, Im) of every frequency interleaved, so that its block of ``x @ stacked``
        # is a complex64/128 array without a copy, and the factor (c_f/k)^(1/2p) (the
        # weights of the p-fold product).
        p = ts.degree
        wf = (c / k) ** (0.5 / p)
        blocks = []
        for t in range(p):
            A = self.stages[t]
            B = np.empty((d, 2 * nf))
            B[:, 0::2] = A[:, :nf] * wf
            B[:, 1::2] = A[:, nf:] * wf
            blocks.append(B * factor if t == 0 else B)
        self.stacked = np.hstack(blocks).astype(dtype)
        drop = [1] + ([2 * nf - 1] if k % 2 == 0 else [])
        self.keep = np.setdiff1d(np.arange(2 * nf), drop)
        self.cdtype = np.complex64 if np.dtype(dtype) == np.float32 else np.complex128

    def transform(self, x):
        """Apply the map of ``TensorSketch.transform`` (forward GEMMs, products, inverse DFT)."""
        nf = self.nf
        z = x @ self.stages[0]
        pr, pi = z[:, :nf], z[:, nf:]
        for A in self.stages[1:]:
            z = x @ A
            zr, zi = z[:, :nf], z[:, nf:]
            pr, pi = pr * zr - pi * zi, pr * zi + pi * zr
        return np.hstack([pr, pi]) @ self.inverse

    def features(self, x, out=None):
        r"""Features with the inner products of :meth:`transform`, in the frequency domain.

        ``features(x)[:, keep] @ features(y)[:, keep].T == transform(x) @
        transform(y).T`` times ``factor**2`` up to rounding (Parseval for the real DFT of
        length ``k``): the weighted real and imaginary parts of the product spectrum,
        ``2 (k // 2 + 1)`` columns interleaved (``keep`` drops the imaginary parts at
        ``f = 0`` and ``f = k/2``, which are 0 up to rounding), without the inverse DFT:
        one ``d x (k + 2)p`` GEMM and ``p - 1`` complex products. ``out`` (a float view
        whose rows are 8-byte aligned) receives the result.
        """
        w2 = 2 * self.nf
        p = len(self.stages)
        dt = np.result_type(x.dtype, self.stacked.dtype)
        n = x.shape[0]
        if out is None:
            out = np.empty((n, w2), dtype=dt)
        # By row segments: each segment's GEMM output is used while it is in cache.
        z = np.empty((min(n, _SEGMENT_ROWS), self.stacked.shape[1]), dtype=dt)
        for i0 in range(0, n, _SEGMENT_ROWS):
            i1 = min(n, i0 + _SEGMENT_ROWS)
            zs = z[: i1 - i0]
            np.matmul(x[i0:i1], self.stacked, out=zs)
            Z = [zs[:, t * w2 : (t + 1) * w2].view(self.cdtype) for t in range(p)]
            P = out[i0:i1].view(self.cdtype)
            if p == 1:
                P[...] = Z[0]
            else:
                np.multiply(Z[0], Z[1], out=P)
                for t in range(2, p):
                    P *= Z[t]
        return out

    def flops(self, rows: int) -> float:
        """Flops of :meth:`features` on ``rows`` rows (the forward GEMMs)."""
        return 2.0 * rows * 2 * self.d * self.nf * len(self.stages)


def _taylor_sketched_features(d: int, p: int, k: int) -> int:
    """Count the sketched Taylor features: ``1 + d`` plus ``k + 2`` per degree, even."""
    Mf = 1 + d + (p - 1) * 2 * (k // 2 + 1)
    return Mf + Mf % 2


def _taylor_feats(x: np.ndarray, p: int, sketches, out=None) -> np.ndarray:
    """Taylor features of the rows of ``x`` (into ``out`` (n, M) when given, sketched)."""
    n, d = x.shape
    dt = x.dtype.type
    if sketches is not None:
        # [sketch_2 | ... | sketch_p | 1 | x | (0)]: the complex products are written
        # in place (an even number of columns keeps every row 8-byte aligned).
        w2 = 2 * sketches[2].nf
        Mf = _taylor_sketched_features(d, p, sketches[2].k)
        if out is None:
            out = np.empty((n, Mf), dtype=x.dtype)
        for j in range(2, p + 1):
            sketches[j].features(x, out=out[:, (j - 2) * w2 : (j - 1) * w2])
        c0 = (p - 1) * w2
        out[:, c0] = 1.0
        out[:, c0 + 1 : c0 + 1 + d] = x
        out[:, c0 + 1 + d :] = 0.0
        return out
    blocks = [np.ones((n, 1), dtype=x.dtype), x]
    power = x
    for j in range(2, p + 1):
        power = np.einsum("ni,nj->nij", power, x).reshape(n, -1)
        blocks.append(power / dt(math.sqrt(math.factorial(j))))
    if out is not None:
        np.concatenate(blocks[: p + 1], axis=1, out=out)
        return out
    return np.hstack(blocks[: p + 1])


@register(
    "taylor",
    section="§5.1",
    family="kernel",
    causal=True,
    bound="deterministic",
    summary="Degree-p Taylor features of exp (Alman-Song polynomial method), remainder bound.",
)
@_one_blas_thread
def _taylor(problem: Problem, *, rng, degree=2, feature_budget=256, sketch_size=256, delta=0.1):
    r"""Taylor-feature attention (registered as ``"taylor"``).

    Parameters
    ----------
    problem : Problem
        Prepared inputs.
    rng : numpy.random.Generator
        Draws the TensorSketches (only when sketched).
    degree : int, default=2
        Taylor degree, ``1 <= p <= 64``.
    feature_budget : int, default=256
        Exact tensor features (:math:`\sum_{j\le p} d^j` of them) are used up to this
        number; above it degrees ``>= 2`` are sketched with TensorSketch. (Was 8192:
        the exact degree-2 features of ``d = 64`` heads, 4161 of them, made causal
        Taylor attention cost about 3x exact attention at ``n = 4096``; with the
        default budget they are sketched, ``1 + d`` plus ``sketch_size + 2`` features
        per degree (the frequency-domain form), and the bound becomes probabilistic.)
    sketch_size : int, default=256
        TensorSketch size per degree when sketched (was 1024).
    delta : float, default=0.1
        Failure probability of the bound when sketched.

    Returns
    -------
    MethodResult
        ``lse`` is None when some approximate normaliser is not positive.

    Raises
    ------
    ValueError
        The Taylor features overflow float64 (logits far beyond the method's range,
        e.g. a huge ``scale``).

    Notes
    -----
    The method is accurate only for bounded logits (:math:`B = \max|s|` small, Alman
    and Song: :math:`B = o(\sqrt{\log n})`); beyond that both of its parts fail, as
    they should, and the bound says so (``inf`` rows). Measured on real SmolLM2-135M
    causal heads (``n = 1024``, layers 0/10/20/29, 9 heads each): scaled scores reach
    -23 to -35, where :math:`T_2(s) = 1 + s + s^2/2` gives a key with :math:`s = -20`
    the weight 181 instead of :math:`e^{-20}`; with the exact degree-2 features the
    relative error is 0.41-1.25 (uniform attention: 0.59-1.14). With the default
    sketched degree-2 term (``sketch_size = 256``) the sketch adds noise of order
    :math:`\sqrt{8/k}\,(\|q\|\|k\|\mathrm{scale})^2/2` to every weight, so 1-5% of
    the rows get a normaliser near 0 or negative and errors of :math:`10^2`-:math:`10^4`
    (relative Frobenius error 10-180 per layer). This is the method's honest behaviour
    on such heads, not a numerical failure: use it only for small logits.

    Cost: the TensorSketch features are evaluated in the frequency domain (products of
    the stages' spectra, Parseval), the key-side features and causal states once per
    key/value slice; :math:`O((n + m)(d k p + M d_v))` flops with ``M`` features.
    With the defaults at ``d = 64`` (``M = 324`` features) a causal head of ``n =
    4096`` costs about 1.0 GFLOP: 0.54 for the feature GEMMs (``2 (n + m) d (k + 2) p``
    at ``p = 2``), 0.45 for the chunked causal products; exact causal attention costs
    2.15 GFLOP and runs at about 90% of the GEMM rate, so at equal efficiency this
    method cannot be more than about 2x faster there (measured 1.1-1.3x on 11 real
    single-key/value SmolLM2 heads, 1.7x on grouped heads whose key side is shared).
    """
    p = check_int(degree, "degree", minimum=1, maximum=_MAX_TAYLOR_DEGREE)
    budget = check_int(feature_budget, "feature_budget", minimum=1)
    ksz = check_int(sketch_size, "sketch_size", minimum=1)
    delta = check_probability(delta, "delta")
    d, n = problem.d, problem.n
    n_exact, power = 0, 1
    for _ in range(p + 1):  # sum_j d^j, stopping as soon as it exceeds the budget
        n_exact += power
        power *= d
        if n_exact > budget:
            break
    sketched = n_exact > budget
    sketches = None
    if sketched:
        sketches = {j: _sketch.tensor_sketch(ksz, d, j, rng=rng) for j in range(2, p + 1)}
    Mf = _taylor_sketched_features(d, p, ksz) if sketched else n_exact
    r = math.sqrt(problem.scale)
    # Norms in float64: squares of float32 entries of 1e30 overflow float32.
    kmax_all = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.k, problem.k, dtype=float))))
    qmax_all = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.q, problem.q, dtype=float))))
    kmax_all, qmax_all = kmax_all * r, qmax_all * r
    eta_max = taylor_remainder_bound(qmax_all * kmax_all, p)
    if eta_max >= 1:
        warnings.warn(
            f"taylor: B = max|q.k|*scale can reach {qmax_all * kmax_all:.3g}, where the "
            f"degree-{p} remainder bound e^B B^(p+1)/(p+1)! = {eta_max:.3g} >= 1: approximate "
            "weights may be negative (raise the degree or use smaller inputs)",
            AccuracyWarning,
            stacklevel=2,
        )
    wdt0 = _work_dtype(problem, max(qmax_all, kmax_all), limit=1e6 ** (1.0 / p))
    feat_flops = 0.0
    if sketches is not None:
        # The same TensorSketch maps, evaluated by GEMMs (no per-row FFTs).
        sketches = {
            j: _TensorSketchGemm(ts, wdt0, 1.0 / math.sqrt(math.factorial(j)))
            for j, ts in sketches.items()
        }
        feat_flops = sum(ts.flops(1) for ts in sketches.values()) / 2.0
    counts = _visible_counts(problem)
    seen = counts > 0
    outs = np.empty((problem.n_slices, n, problem.dv), dtype=problem.dtype)
    lses = []
    rows_bound = []
    N_rows = max(1, int(problem.n_slices * seen.sum()))
    positive = True
    # float32 GEMMs while the largest feature (<= B^p) stays far from float32's range.
    wdt = wdt0

    key_state = _scan_key_state if _segmented(problem) else _key_state

    def key_side(g):
        if g == 0:
            # The rounding allowance's score bounds (memoised per problem, one pass
            # over Q and K) on a worker thread, beside the other groups' work.
            _score_bounds(problem)
        k, v = _scaled_kv(problem, g, wdt)
        st = key_state(
            None,
            _taylor_feats(k, p, sketches),
            _augment(v, wdt),
            n,
            problem.offset,
            problem.causal,
        )
        # Key-side parts of the bound (float64).
        _, k0, v0 = problem.slice(g)
        nk2 = np.einsum("ij,ij->i", k0, k0, dtype=np.float64) * problem.scale
        ksums = {}
        if sketched:
            for t in range(2, p + 1):
                ksums[t] = (
                    np.cumsum(nk2**t)[np.clip(counts - 1, 0, None)]
                    if problem.causal
                    else np.full(n, np.sum(nk2**t))
                )
        kvd = _value_terms(v0)  # ball of the values and the rounding allowance's terms
        return st, float(np.sqrt(np.max(nk2))), ksums, kvd

    def query_side(g, key):
        st, kvd = key[0], key[3]
        q = _scaled_q(problem, g, wdt)
        num, den, logscale = _attend_state(_taylor_feats(q, p, sketches), np.zeros(n), st)
        if not (np.isfinite(num).all() and np.isfinite(den).all()):
            return None
        # One pass: the output rows (written in place; the division in the work dtype
        # is the float64 quotient rounded to it) and the row norms of the bound.
        stats = np.empty((n, 4))
        _finish_rows(num, den, problem.q[g], r, _NO_KBAR, kvd["c"], outs[g], stats)
        return rows_bound_of(key, den.astype(np.float64), logscale, stats)

    def rows_bound_of(key, den, logscale, stats):
        _, kmax, ksums, kvd = key
        R = kvd["R"]
        # Per-row B_i = ||q_i|| max_j ||k_j|| (Cauchy–Schwarz) and eta_i.
        nq = np.sqrt(stats[:, 2])
        eta = np.asarray(taylor_remainder_bound(nq * kmax, p))
        radius = R + np.sqrt(stats[:, 1])
        slack = _slack(problem, None, kvd, np.sqrt(stats[:, 0]))
        with np.errstate(over="ignore", invalid="ignore"):
            if not sketched:
                # ~y-form of the lemma: ||y_i - ~y_i|| <= ||a_i - ~a_i||_1 max_j||v_j - ~y_i||
                # / z_i and ||a_i - ~a_i||_1 <= eta_i z_i; needs only ~z_i != 0.
                rb = np.where(den != 0, eta * radius, np.inf)
            else:
                # Sketch error: E||e_i||^2 <= sum_t (3^t - 1)/(k t!^2) ||q||^2t sum_j ||k||^2t.
                var = np.zeros(n)
                for t in range(2, p + 1):
                    var += (3.0**t - 1) / (ksz * math.factorial(t) ** 2) * nq ** (2 * t) * ksums[t]
                tl1 = np.sqrt(counts * N_rows * var / delta)
                zt = den * np.exp(logscale)
                u = eta * (zt + tl1) / (1.0 - eta) + tl1
                rb = np.where(
                    (eta < 1) & (zt > 0), u * 2.0 * R / np.where(zt > 0, zt, 1.0), np.inf
                )
            rb = np.where(seen, rb, 0.0) + slack
        return den, logscale, rb

    if _segmented(problem):
        # Causal, n == m: units of (group, row segment) (see _grouped_segments).
        dens, logs = np.empty((problem.n_slices, n)), np.empty((problem.n_slices, n))
        stats = np.empty((problem.n_slices, n, 4))
        bad = np.zeros(problem.n_slices, dtype=bool)
        dv = problem.dv

        def feats(g, i0, i1, out):
            q = np.multiply(problem.q[g][i0:i1], wdt(r), dtype=wdt)
            _taylor_feats(q, p, sketches, out=out)
            return np.zeros(i1 - i0)

        def finish(g, i0, i1, num, logscale, key):
            if not np.isfinite(num).all():
                bad[g] = True
            den = num[:, dv]
            _finish_rows(
                num,
                den,
                problem.q[g][i0:i1],
                r,
                _NO_KBAR,
                key[3]["c"],
                outs[g][i0:i1],
                stats[g][i0:i1],
            )
            dens[g][i0:i1] = den
            logs[g][i0:i1] = logscale

        keys = _grouped_segments(
            problem, lambda g: (lambda ks: (ks[0], ks))(key_side(g)), feats, finish
        )
        results = [
            None
            if bad[g]
            else rows_bound_of(keys[int(problem.kv_index[g])], dens[g], logs[g], stats[g])
            for g in range(problem.n_slices)
        ]
    else:
        results = _grouped_map(problem, key_side, query_side)
    for res in results:
        if res is None:
            raise ValueError(
                f"taylor: the degree-{p} Taylor features overflow float64 at "
                f"B = max ||q|| max ||k|| scale = {qmax_all * kmax_all:.3g} (scale="
                f"{problem.scale:.3g}); the Taylor method needs bounded logits (Alman-Song: "
                "B = o(log n)): use a smaller scale or another method"
            )
        den, logscale, rb = res
        positive &= bool(np.all(den[seen] > 0))
        lses.append(_positive_lse(den, logscale))
        rows_bound.append(rb)
    with np.errstate(over="ignore"):
        value = float(np.sqrt(np.sum(np.square(np.concatenate(rows_bound)))))
    if sketched:
        bound = ErrorBound(
            value,
            "fro",
            "probabilistic",
            delta,
            f"Taylor remainder |e^s - T_{p}(s)| <= eta_i e^s, eta_i = e^B_i B_i^{p + 1}/"
            f"({p + 1})!, B_i = ||q_i|| max_j ||k_j|| scale (Cauchy-Schwarz), plus "
            "TensorSketch error of degrees >= 2 (Var <= (3^t - 1)/k ||q||^2t ||k||^2t, "
            "Pham-Pagh) by Markov with a union bound over rows; row lemma with 2R; "
            f"delta={delta}; rows with eta_i >= 1 or ~z_i <= 0 get inf",
        )
    else:
        bound = ErrorBound(
            value,
            "fro",
            "deterministic",
            0.0,
            f"Taylor remainder (Lagrange) |e^s - T_{p}(s)| <= eta_i e^s with eta_i = "
            f"e^B_i B_i^{p + 1}/({p + 1})!, B_i = ||q_i|| max_j ||k_j|| scale "
            "(Cauchy-Schwarz); row lemma in the ~y form: ||y_i - ~y_i|| <= eta_i "
            "(R + ||~y_i - c||) (needs ~z_i != 0, checked; weights positive when "
            "eta_i < 1); Alman & Song 2023; plus a rounding allowance",
        )
    flops = _feature_flops(problem, Mf + feat_flops) + _linear_flops(problem, Mf)
    return method_result(problem, outs, lses if positive else None, bound, Cost(flops, 0))


# ---------------------------------------------------------------------------------------
# Polynomial attention: PolySketch and TensorSketch
# ---------------------------------------------------------------------------------------


def _check_degree(degree) -> int:
    p = check_int(degree, "degree", minimum=2)
    if p % 2:
        raise ValueError(f"degree={p} must be even (polynomial attention needs <q,k>^p >= 0)")
    return p


def polynomial_attention(Q, K, V, degree=4, /, *, scale=None, causal=False):
    r"""Exact polynomial attention :math:`y_i = \sum_j w_{ij} v_j / \sum_j w_{ij}`.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys.
    V : array_like, shape (..., m, dv)
        Values.
    degree : int, default=4
        Even degree ``p >= 2``.
    scale : float, optional
        Score scale, ``1/sqrt(d)`` by default.
    causal : bool, default=False
        Causal (bottom-right aligned) masking.

    Returns
    -------
    ndarray, shape (..., n, dv)
        Same dtype as the inputs; rows with :math:`\sum_j w_{ij} = 0` are 0.

    Raises
    ------
    ValueError
        Invalid shapes or an odd or too small ``degree``.

    Notes
    -----
    Weights :math:`w_{ij} = (\mathrm{scale}\,\langle q_i, k_j\rangle)^p \ge 0`, the
    mechanism PolySketchFormer [1]_ trains instead of softmax (which also adds 1 to
    the denominator and layer-normalises ``q`` and ``k``; not done here). Forms the
    ``n x m`` weights per slice: a reference, :math:`O(nm(d + d_v))`.

    References
    ----------
    .. [1] P. Kacham, V. Mirrokni and P. Zhong, "PolySketchFormer: fast transformers via
       sketching polynomial kernels", ICML 2024, arXiv:2310.01655.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.kernel import polynomial_attention
    >>> X = np.ones((2, 5, 4))
    >>> polynomial_attention(X, X, X, 2).shape
    (2, 5, 4)
    """
    p = _check_degree(degree)
    problem = prepare(Q, K, V, scale=scale, causal=causal)
    out = []
    for g in range(problem.n_slices):
        q, k, v = _scaled(problem, g)
        w = (q @ k.T) ** p
        keep = problem.causal_keep()
        if keep is not None:
            w = np.where(keep, w, 0.0)
        out.append(_ratio(w @ v, w.sum(axis=1)))
    return np.stack(out).astype(problem.dtype).reshape((*problem.lead, problem.n, problem.dv))


def _polysketch_plan(d: int, p: int, r: int, rng):
    """Draw the Gaussian matrices of the recursive degree-``p`` sketch (Ahle et al.).

    The tree ``(a, b, G1, G2)`` (``None`` for ``p = 1``) of
    :func:`_polysketch_apply`, drawn in the order of the recursion.
    """
    if p == 1:
        return None
    a = _polysketch_plan(d, (p + 1) // 2, r, rng)
    b = _polysketch_plan(d, p // 2, r, rng)
    G1 = _sketch.gaussian(r, d if a is None else r, rng=rng).todense()
    G2 = _sketch.gaussian(r, d if b is None else r, rng=rng).todense()
    return a, b, G1, G2


def _polysketch_apply(X: np.ndarray, plan) -> np.ndarray:
    """Recursive Gaussian sketch of ``x^{(x)p}`` (PolySketchWithNegativity) of the rows."""
    if plan is None:
        return X
    a, b, G1, G2 = plan
    dt = X.dtype
    A = _polysketch_apply(X, a) @ G1.T.astype(dt)
    B = _polysketch_apply(X, b) @ G2.T.astype(dt)
    # Each factor carries 1/sqrt(r): their product is the sqrt(1/r) (M1 G1) * (M2 G2) map.
    A *= B
    A *= dt.type(math.sqrt(G1.shape[0]))
    return A


def _self_tensor(F: np.ndarray, out=None) -> np.ndarray:
    n, r = F.shape
    if out is not None and out.flags.c_contiguous:  # rows of out (n, r * r), in place
        np.einsum("ni,nj->nij", F, F, out=out.reshape(n, r, r))
        return out
    # C order: einsum's default follows F's layout (a column selection of a GEMM's
    # output), and the key scan's Numba kernels take C-contiguous features (a
    # Fortran-ordered result was copied, 4 MB a head at n = 4096).
    return np.einsum("ni,nj->nij", F, F, order="C").reshape(n, -1)


def _poly_plan(d: int, p: int, kind: str, r: int, nonnegative: bool, seed: int, dtype):
    """Draw the random feature map of the polynomial methods once from ``seed``."""
    half = p // 2 if nonnegative else p
    rng = np.random.default_rng(seed)
    if kind == "polysketch":
        return _polysketch_plan(d, half, r, rng)
    # TensorSketch evaluated by GEMMs in the frequency domain (the same inner products).
    return _TensorSketchGemm(_sketch.tensor_sketch(r, d, half, rng=rng), dtype)


def _poly_feature_map(X: np.ndarray, kind: str, plan, nonnegative: bool, out=None):
    """Features of the rows of ``X`` (queries and keys get the same ``plan``).

    ``out`` (n, M), when given, receives them (the self-tensor is written in place).
    """
    if kind == "polysketch":
        F = _polysketch_apply(X, plan)
    else:
        F = plan.features(X)[:, plan.keep]
    if nonnegative:
        T = _self_tensor(F, out)
        if out is not None and T is not out:
            out[...] = T
        return T if out is None else out
    if out is not None:
        out[...] = F
        return out
    return F


def _unit_rows(x: np.ndarray) -> np.ndarray:
    nq = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(nq > 0, nq, 1).astype(x.dtype)


def _max_scaled(x: np.ndarray) -> np.ndarray:
    xmax = float(np.max(np.linalg.norm(x.astype(np.float64), axis=1))) if x.size else 0.0
    return x / x.dtype.type(xmax if xmax > 0 else 1.0)


def _poly_slice_features(problem, g, p, kind, r, nonnegative, seed, dtype=np.float64):
    r"""Features ``(F_q, F_k, v)`` of slice ``g`` in ``dtype``; the same ``seed`` for all.

    The weights :math:`(q_i\cdot k_j)^p` are homogeneous and the feature maps linear in
    :math:`x^{\otimes p}`: a positive factor per query row and one for all keys cancel in
    the normalisation, so unit query rows and keys scaled by their largest norm give the
    same output without overflow or underflow (``scale`` cancels too).
    """
    q, k, v = (x.astype(dtype) for x in problem.slice(g))
    plan = _poly_plan(problem.d, p, kind, r, nonnegative, seed, dtype)
    fq = _poly_feature_map(_unit_rows(q), kind, plan, nonnegative)
    fk = _poly_feature_map(_max_scaled(k), kind, plan, nonnegative)
    return fq, fk, v


def _poly_method(problem, rng, degree, sketch_size, nonnegative, kind):
    p = _check_degree(degree)
    r = check_int(sketch_size, "sketch_size", minimum=1)
    nonnegative = _check_bool(nonnegative, "nonnegative")
    d, n = problem.d, problem.n
    # One draw for the whole call, applied to queries and keys of every slice alike.
    seed = int(rng.integers(0, 2**63 - 1))
    # Unit-norm features: float32 GEMMs for float32 inputs.
    wdt = problem.dtype
    plan = _poly_plan(d, p, kind, r, nonnegative, seed, wdt)
    key_state = _scan_key_state if _segmented(problem) else _key_state

    def key_side(g):
        _, k, v = problem.slice(g)
        fk = _poly_feature_map(_max_scaled(k.astype(wdt)), kind, plan, nonnegative)
        return key_state(None, fk, _augment(v, wdt), n, problem.offset, problem.causal)

    def query_side(g, st):
        fq = _poly_feature_map(_unit_rows(problem.q[g].astype(wdt)), kind, plan, nonnegative)
        num, den, _ = _attend_state(fq, np.zeros(n), st)
        return _ratio(num, den), fq.shape[1]

    if _segmented(problem):
        # Causal, n == m: units of (group, row segment) (see _grouped_segments).
        outs = np.empty((problem.n_slices, n, problem.dv), dtype=problem.dtype)
        dv = problem.dv

        def feats(g, i0, i1, out):
            x = _unit_rows(problem.q[g][i0:i1].astype(wdt))
            _poly_feature_map(x, kind, plan, nonnegative, out=out)
            return np.zeros(i1 - i0)

        def finish(g, i0, i1, num, logscale, st):
            outs[g][i0:i1] = _ratio(num[:, :dv], num[:, dv])

        keys = _grouped_segments(
            problem, lambda g: (lambda st: (st, st))(key_side(g)), feats, finish
        )
        st0 = next(iter(keys.values()))
        Mf = st0.L.shape[1] if isinstance(st0, _ScanState) else st0.F.shape[2]
    else:
        slices = _grouped_map(problem, key_side, query_side)
        outs = [y for y, _ in slices]
        Mf = slices[-1][1]
    half = p // 2 if nonnegative else p
    if kind == "polysketch":
        per_row = d * r + (half - 1) * (d + r) * r  # the recursion's GEMMs (<= this)
    else:
        per_row = 2 * d * (r // 2 + 1) * half
    per_row += Mf if nonnegative else 0
    flops = _feature_flops(problem, per_row) + _linear_flops(problem, Mf)
    return method_result(problem, outs, None, None, Cost(flops, 0))


@register(
    "polysketch",
    section="§5.1",
    family="kernel",
    causal=True,
    bound=None,
    summary="PolySketchFormer: sketched polynomial attention <q,k>^p (a different mechanism).",
)
@_one_blas_thread
def _polysketch(problem: Problem, *, rng, degree=4, sketch_size=16, nonnegative=True):
    r"""PolySketchFormer features of polynomial attention (registered as ``"polysketch"``).

    Parameters
    ----------
    problem : Problem
        Prepared inputs.
    rng : numpy.random.Generator
        Draws the Gaussian sketches.
    degree : int, default=4
        Even degree ``p``.
    sketch_size : int, default=16
        Sketch size ``r`` (``r^2`` features with ``nonnegative=True``). Was 32: 1024
        features made causal polynomial attention slower than exact softmax attention
        up to ``n ~ 8000`` (``d = 64``); 256 features keep it below exact from
        ``n ~ 2000``.
    nonnegative : bool, default=True
        Sketch degree ``p/2`` and self-tensor (non-negative weights).

    Returns
    -------
    MethodResult
        No bound against softmax: see :func:`polynomial_sketch_error`.
    """
    return _poly_method(problem, rng, degree, sketch_size, nonnegative, "polysketch")


@register(
    "tensorsketch",
    section="§5.1",
    family="kernel",
    causal=True,
    bound=None,
    summary="TensorSketch features of polynomial attention <q,k>^p (a different mechanism).",
)
@_one_blas_thread
def _tensorsketch(problem: Problem, *, rng, degree=4, sketch_size=16, nonnegative=True):
    r"""TensorSketch features of polynomial attention (registered as ``"tensorsketch"``).

    The parameters and the result are those of ``"polysketch"``, with the Gaussian
    sketches replaced by TensorSketch (:func:`rnla.sketch.tensor_sketch`, hashes drawn
    from ``rng``): ``r`` features per degree-``p/2`` sketch, ``r^2`` after the
    self-tensor when ``nonnegative=True``. No bound against softmax: see
    :func:`polynomial_sketch_error`.
    """
    return _poly_method(problem, rng, degree, sketch_size, nonnegative, "tensorsketch")


class PolynomialSketchError(NamedTuple):
    r"""Errors of sketched polynomial attention (see :func:`polynomial_sketch_error`).

    Attributes
    ----------
    amm_error : float
        :math:`\|\Phi_Q\Phi_K^T - (QK^T\mathrm{scale})^{\circ p}\|_F` over all slices.
    amm_scale : float
        :math:`(\sum_g \|Q_g'^{\otimes p}\|_F^2\|K_g'^{\otimes p}\|_F^2)^{1/2}`, primes
        meaning rows multiplied by :math:`\sqrt{\mathrm{scale}}`.
    epsilon : float
        Achieved ``amm_error / amm_scale``.
    epsilon_bound : float
        The ``epsilon`` that holds with probability ``1 - delta`` where an explicit
        constant is known (signed TensorSketch of degree ``p``:
        :math:`\sqrt{(3^p - 1)/(r\delta)}`; signed PolySketch with ``p = 2``:
        :math:`\sqrt{8/(r\delta)}`), NaN otherwise (the AMM theorem's ``r = O(eps^-2)``
        has no explicit constant).
    error_vs_polynomial : float
        Relative Frobenius output error against :func:`polynomial_attention`.
    error_vs_softmax : float
        Relative Frobenius output error against softmax attention (no theory: a
        different mechanism).
    """

    amm_error: float
    amm_scale: float
    epsilon: float
    epsilon_bound: float
    error_vs_polynomial: float
    error_vs_softmax: float


def polynomial_sketch_error(
    Q,
    K,
    V,
    degree=4,
    /,
    *,
    features="polysketch",
    sketch_size=16,
    nonnegative=True,
    scale=None,
    causal=False,
    delta=0.1,
    rng=None,
) -> PolynomialSketchError:
    r"""Measure sketched polynomial attention against exact polynomial and softmax attention.

    Parameters
    ----------
    Q, K, V : array_like
        As for :func:`attention.approximate`.
    degree : int, default=4
        Even degree ``p``.
    features : {"polysketch", "tensorsketch"}, default="polysketch"
        Sketch family (the registered method of the same name).
    sketch_size : int, default=16
        Sketch size ``r`` (the default of the registered methods).
    nonnegative : bool, default=True
        Self-tensored (non-negative) features.
    scale : float, optional
        Score scale, ``1/sqrt(d)`` by default.
    causal : bool, default=False
        Causal attention (the AMM error is always measured on the full product).
    delta : float, default=0.1
        Failure probability for ``epsilon_bound``.
    rng : None, int or Generator, optional
        The same seed as given to :func:`attention.approximate` reproduces its features.

    Returns
    -------
    PolynomialSketchError

    Raises
    ------
    ValueError
        Invalid inputs or parameters.

    Notes
    -----
    Forms ``n x m`` matrices per slice: a diagnostic, :math:`O(nm(d + M))`. The AMM
    property of PolySketchFormer [1]_ (survey §2 item 4) is
    :math:`\|(Q^{\otimes p}S)(K^{\otimes p}S)^T - (QK^T)^{\circ p}\|_F \le
    \varepsilon\|Q^{\otimes p}\|_F\|K^{\otimes p}\|_F` with :math:`r = O(\varepsilon^{-2})`.
    For signed TensorSketch every entry has variance at most
    :math:`(3^p - 1)/r\,\|q\|^{2p}\|k\|^{2p}` [2]_, so Markov's inequality on the squared
    Frobenius error gives ``epsilon_bound``; the Gaussian sketch of degree 2 has the same
    constant :math:`3^2 - 1`.

    References
    ----------
    .. [1] P. Kacham, V. Mirrokni and P. Zhong, "PolySketchFormer", ICML 2024,
       arXiv:2310.01655.
    .. [2] N. Pham and R. Pagh, "Fast and scalable polynomial kernels via explicit feature
       maps", KDD 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.kernel import polynomial_sketch_error
    >>> X = np.random.default_rng(0).standard_normal((16, 8))
    >>> e = polynomial_sketch_error(X, X, X, 2, rng=0)
    >>> bool(e.epsilon >= 0)
    True
    """
    from attention.exact import reference_attention

    features = check_option(features, ("polysketch", "tensorsketch"), "features")
    delta = check_probability(delta, "delta")
    p = _check_degree(degree)
    r = check_int(sketch_size, "sketch_size", minimum=1)
    nonnegative = _check_bool(nonnegative, "nonnegative")
    rng = check_rng(rng)
    problem = prepare(Q, K, V, scale=scale, causal=causal)
    # Same draw as the registered method given the same seed.
    seed = int(rng.integers(0, 2**63 - 1))
    err2 = sc2 = 0.0
    outs, poly = [], []
    for g in range(problem.n_slices):
        fq, fk, v = _poly_slice_features(problem, g, p, features, r, nonnegative, seed)
        q, k, _ = _scaled(problem, g)
        exact = (q @ k.T) ** p
        e2 = float(np.sum((fq @ fk.T - exact) ** 2))
        s2 = float(
            np.sum(np.einsum("ij,ij->i", q, q) ** p) * np.sum(np.einsum("ij,ij->i", k, k) ** p)
        )
        err2 += e2
        sc2 += s2
        num, den, _ = _linear_attend(_plain(fq, fk), v, problem.causal, problem.offset)
        outs.append(_ratio(num, den))
        keep = problem.causal_keep()
        w = exact if keep is None else np.where(keep, exact, 0.0)
        poly.append(_ratio(w @ v, w.sum(axis=1)))
    Y = np.stack(outs)
    P = np.stack(poly)
    S = reference_attention(
        problem.q,
        problem.k[problem.kv_index],
        problem.v[problem.kv_index],
        scale=problem.scale,
        causal=problem.causal,
    ).astype(np.float64)
    if nonnegative:
        eps_bound = math.nan
    elif features == "tensorsketch":
        eps_bound = math.sqrt((3.0**p - 1) / (r * delta))
    else:
        eps_bound = math.sqrt(8.0 / (r * delta)) if p == 2 else math.nan

    def rel(a, b):
        nb = float(np.linalg.norm(b))
        return float(np.linalg.norm(a - b)) / nb if nb > 0 else float(np.linalg.norm(a))

    return PolynomialSketchError(
        amm_error=math.sqrt(err2),
        amm_scale=math.sqrt(sc2),
        epsilon=math.sqrt(err2 / sc2) if sc2 > 0 else 0.0,
        epsilon_bound=eps_bound,
        error_vs_polynomial=rel(Y, P),
        error_vs_softmax=rel(Y, S),
    )


# ---------------------------------------------------------------------------------------
# LevAttention: keys of large leverage score
# ---------------------------------------------------------------------------------------


def _select_keys(problem: Problem, g: int, n_keys: int, threshold):
    """Kept keys of every query row of slice ``g``: ``idx (n, s)`` and ``valid (n, s)``.

    Non-causal: leverage scores of ``K`` (:func:`rnla.sketch.leverage_scores`), the
    ``n_keys`` largest or those above ``threshold``. Causal: online ridge leverage
    scores (key ``j`` scored against keys ``0..j`` only); row ``i`` keeps the
    ``n_keys`` best visible keys, or the visible keys above ``threshold``.
    """
    k = problem.slice(g)[1].astype(np.float64)
    n, m = problem.n, k.shape[0]
    if problem.causal:
        nk = float(np.einsum("j,j->", k[0], k[0]))
        lam = 1e-6 * nk if nk > 0 else 1e-300
        scores = np.empty(m)
        _online_leverage(np.ascontiguousarray(k), lam, scores)
    else:
        scores = _sketch.leverage_scores(k)
    if threshold is not None:
        S = np.flatnonzero(scores > threshold)
        idx = np.broadcast_to(S, (n, S.size))
        valid = np.ones((n, S.size), dtype=bool)
        if problem.causal:
            valid = S[None, :] <= np.arange(n)[:, None] + problem.offset
        return idx, valid
    if problem.causal:
        idx = np.empty((n, n_keys), dtype=np.int64)
        valid = np.empty((n, n_keys), dtype=bool)
        _prefix_topk(scores, n_keys, _visible_counts(problem).astype(np.int64), idx, valid)
        return idx, valid
    # Stable sort: ties broken by position.
    S = np.sort(np.argsort(-scores, kind="stable")[: min(n_keys, m)])
    return np.broadcast_to(S, (n, S.size)), np.ones((n, S.size), dtype=bool)


def _lev_norms_key_side(problem: Problem, j: int) -> tuple:
    """Key-side data of LevAttention's ``"norms"`` bound for key/value slice ``j``.

    ``(kmax, kvd)``: per query row the largest ``sqrt(scale) ||k||`` over its visible
    keys (float64, norms rounded up as :func:`attention._core._score_bounds` does) and
    the value ball and rounding terms of :func:`_value_terms`. ``O(m (d + d_v))``.
    """
    n, d = problem.n, problem.d
    up = 1.0 + 2.0 * (d + 2) * _EPS64
    r = math.sqrt(abs(problem.scale))
    k = problem.k[j]
    kn = np.sqrt(np.einsum("ij,ij->i", k, k, dtype=np.float64) * up) * r
    if problem.causal:
        visible = _visible_counts(problem)
        run = np.maximum.accumulate(kn) if kn.size else kn
        kmax = np.where(visible > 0, run[np.clip(visible - 1, 0, None)], 0.0)
    else:
        kmax = np.full(n, kn.max() if kn.size else 0.0)
    return kmax, _value_terms(problem.v[j])


def _lev_norms_rows(problem: Problem, g: int, y, lse, kept, key, wdt) -> np.ndarray:
    r"""Row bounds of LevAttention's ``"norms"`` bound for query slice ``g`` (float64).

    :math:`\varepsilon_i \le D_i / (Z_i + D_i)` with :math:`D_i = (m_i - s_i)
    e^{\|r q_i\| \max_j \|r k_j\|}` (see :func:`_levattention`, Notes), then
    :math:`\varepsilon_i (R + \|\tilde y_i - c\|)`
    (:func:`attention.bounds.dropped_mass_bound`, valid for any ball holding the
    values), capped by :math:`R + \|\tilde y_i - c\|` (plus :math:`\|\tilde y_i\|`
    where a row may see no key) and padded with the rounding allowance (:func:`_slack`)
    as :func:`attention._core.finish_row_bounds` does, from one pass over the rows
    (:func:`attention._kernels.features._ball_rows`). ``kept``: keys kept by each row;
    ``key``: :func:`_lev_norms_key_side` of the slice's key/value slice. ``O(n (d +
    d_v))``.
    """
    d = problem.d
    kmax, kvd = key
    up = 1.0 + 2.0 * (d + 2) * _EPS64
    r = math.sqrt(abs(problem.scale))
    u = float(np.finfo(wdt).eps) / 2.0
    q = problem.q[g]
    qn = np.sqrt(np.einsum("ij,ij->i", q, q, dtype=np.float64) * up) * r
    dropped = _visible_counts(problem) - kept
    # Higham's gamma_c = c u / (1 - c u) (Lemma 3.1): no first-order truncation.
    c_s, c_z = (d + 4) * u, (2.0 * kept + 16.0) * u
    margin = np.where(
        np.maximum(c_s, c_z) < 0.5,
        c_s / (1.0 - c_s) * _score_bounds(problem) + c_z / (1.0 - np.minimum(c_z, 0.5)),
        np.inf,
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_d = np.log(np.maximum(dropped, 0).astype(np.float64)) + qn * kmax * (
            1.0 + 4.0 * _EPS64
        )
        # eps_i <= D_i / (Z_i + D_i) = 1 / (1 + exp(lse_i - margin - log D_i)).
        rho = 1.0 / (1.0 + np.exp((lse - margin) - log_d))
    rho = np.where(dropped <= 0, 0.0, np.where(np.isnan(rho), 1.0, rho))
    rho = np.clip(rho, 0.0, 1.0)
    stats = np.empty((y.shape[0], 2))
    _ball_rows(np.ascontiguousarray(y), kvd["c"], stats)
    ynorm = np.sqrt(stats[:, 0])
    cap = kvd["R"] + np.sqrt(stats[:, 1])
    rows = rho * cap
    if problem.may_have_empty_rows:
        cap = np.maximum(cap, ynorm)
    rows = np.minimum(np.where(np.isnan(rows), np.inf, rows), cap)
    return rows + _slack(problem, None, kvd, ynorm)


_LEV_NORMS_TEXT = (
    "dropped-mass bound ||y_i - ~y_i|| <= eps_i (R + ||~y_i - c||) with eps_i <= "
    "D_i / (Z_i + D_i), D_i = (m_i - s_i) exp(scale ||q_i|| max_j ||k_j||) "
    "(Cauchy-Schwarz over the dropped visible keys; Z_i the kept normaliser, with a "
    "rounding margin from Higham's gamma_k)"
)


def _levattention_norms_bound(problem: Problem, outs, lses, kept, wdt) -> ErrorBound:
    """LevAttention's ``"norms"`` bound from every slice's rows (:func:`_lev_norms_rows`)."""
    keys = {int(j): _lev_norms_key_side(problem, int(j)) for j in np.unique(problem.kv_index)}
    sq = 0.0
    for g in range(problem.n_slices):
        key = keys[int(problem.kv_index[g])]
        rows = _lev_norms_rows(problem, g, outs[g], lses[g], kept[g], key, wdt)
        sq += float(np.sum(rows * rows))
    return ErrorBound(math.sqrt(sq), "fro", "deterministic", 0.0, _LEV_NORMS_TEXT + CAP_TEXT)


def _window(problem: Problem, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Local-window key indices ``(n, W)`` and validity, around ``i + offset``."""
    n, m, off = problem.n, problem.m, problem.offset
    if problem.causal:
        rel = np.arange(-w + 1, 1)
    else:
        rel = np.arange(-w + 1, w)
    J = np.arange(n)[:, None] + off + rel[None, :]
    valid = (J >= 0) & (J < m)
    return np.clip(J, 0, m - 1), valid


@register(
    "levattention",
    section="§5.1",
    family="kernel",
    causal=True,
    bound="deterministic",
    summary="LevAttention: exact softmax on the keys of large leverage score (+ local window).",
)
@_one_blas_thread
def _levattention(
    problem: Problem, *, rng, n_keys=64, threshold=None, window=0, error_bound="norms"
):
    r"""LevAttention (registered as ``"levattention"``).

    Parameters
    ----------
    problem : Problem
        Prepared inputs.
    rng : numpy.random.Generator
        Unused (the method is deterministic).
    n_keys : int, default=64
        Keep the ``n_keys`` keys of largest leverage score (causal: of largest online
        leverage score among the keys visible to each query).
    threshold : float, optional
        Keep keys whose (online, when causal) leverage score exceeds ``threshold``
        (the universal set of LevAttention, of size at most ``d / threshold``).
    window : int, default=0
        Also keep the ``window`` most recent keys (causal) or the keys within
        ``window - 1`` positions (non-causal) of each query; clamped to
        ``max(n, m)`` (every key).
    error_bound : {"norms", "exact", True, False, None}, default="norms"
        Deterministic dropped-mass bound (:func:`attention.bounds.dropped_mass_bound`)
        with the dropped mass :math:`\varepsilon_i` bounded from norms (``"norms"``,
        also ``True``; :math:`O((n + m) d)`, loose) or computed exactly from the exact
        log-normaliser (``"exact"``: one exact pass, :math:`O(nm(d + d_v))`, as
        expensive as exact attention; was the default, which made the method slower
        than exact attention: 0.49x on real SmolLM2 heads at ``n = 4096``); ``None`` or
        ``False`` returns no bound.

    Returns
    -------
    MethodResult

    Notes
    -----
    The ``"norms"`` bound: row ``i`` keeps the set :math:`S_i` of :math:`s_i` keys out
    of its :math:`m_i` visible keys, so its dropped mass is

    .. math::

        \varepsilon_i = \frac{D_i}{Z_{S_i} + D_i},\qquad
        D_i = \sum_{j \notin S_i} e^{q_i\cdot k_j\,\mathrm{scale}}
        \le (m_i - s_i)\, e^{\mathrm{scale}\,\|q_i\| \max_{j \le i + m - n}
        \|k_j\|} =: \bar D_i

    (Cauchy-Schwarz), and :math:`\varepsilon_i` increases with :math:`D_i`, so
    :math:`\varepsilon_i \le \bar D_i / (Z_{S_i} + \bar D_i)` with the kept
    normaliser :math:`Z_{S_i} = e^{\ell_i}` the method computed anyway. Its rounding
    (scores, exponentials and sums in the work dtype) enters as the margin
    :math:`\ell_i - \gamma_{d+4}\sigma_i - \gamma_{2 s_i + 16}`, :math:`\gamma_c =
    cu/(1 - cu)` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
    Lemma 3.1; :math:`\sigma_i` the score
    bound of the rounding allowance, :math:`u` the unit roundoff); the norms are rounded
    up. Cauchy-Schwarz ignores the angle between :math:`q_i` and the dropped keys:
    on heads with large norms :math:`\varepsilon_i` is close to 1 and the bound is
    the trivial :math:`R + \|\tilde y_i - c\|` (as for Performer's ``"norms"``);
    ``"exact"`` measures it.
    """
    n_keys = check_int(n_keys, "n_keys", minimum=1)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
            raise TypeError(f"threshold must be a real number or None, got {threshold!r}")
        threshold = float(threshold)
        if not (0 <= threshold < 1):
            raise ValueError(f"threshold={threshold} must lie in [0, 1) (leverage scores)")
    w = check_int(window, "window", minimum=0)
    mode = check_error_bound(error_bound, ("norms", "exact"))
    n, m, d, dv = problem.n, problem.m, problem.d, problem.dv
    # A window of max(n, m) already covers every key: larger ones only cost memory.
    w = min(w, max(n, m))

    # Key selections per key/value slice, computed once (grouped-query heads share them).
    # Without a window, each block of rows attends the union of its rows' keys through
    # one batched GEMM over all blocks (:func:`_block_unions`).
    def select(g):
        if g == 0 and mode == "norms":
            _score_bounds(problem)  # memoised: one pass, on a worker thread
        idx, valid = _select_keys(problem, g, n_keys, threshold)
        blocks = (
            _block_unions(np.ascontiguousarray(idx), np.ascontiguousarray(valid), _LEV_BLOCK)
            if w == 0
            else None
        )
        norms = None
        if mode == "norms":
            norms = _lev_norms_key_side(problem, int(problem.kv_index[g]))
        return idx, valid, blocks, norms

    reps: dict[int, int] = {}
    for g in range(problem.n_slices):
        reps.setdefault(int(problem.kv_index[g]), g)
    selections = dict(zip(reps, map_slices(select, list(reps.values())), strict=True))
    # float64 when the dropped mass is measured against the exact lse, else the inputs'
    # dtype (float32 GEMMs for float32 inputs).
    wdt = np.float64 if mode == "exact" else _sparse_work_dtype(problem)
    pos = np.arange(n) + problem.offset
    tiles = bool(_exact._USE_TILES) and dv % (64 // np.dtype(wdt).itemsize) == 0 and d > 0

    def attend(g):
        y, lse, kept, comp, counts = attend_rows(g)
        rows = None
        if mode == "norms":
            norms = selections[int(problem.kv_index[g])][3]
            rows = _lev_norms_rows(problem, g, y, lse, counts, norms, wdt)
        return y, lse, kept, comp, rows

    def attend_rows(g):
        q, k, v = _scaled(problem, g, wdt)
        idx, valid, blocks, _ = selections[int(problem.kv_index[g])]
        if blocks is not None:
            U, keep = blocks
            nb, B, L = keep.shape
            if tiles:
                # Block by block on register tiles: no gathered (nb, L, d) key copies or
                # (nb, B, L) score arrays (the same formulas as _block_partials).
                y = np.empty((n, dv), dtype=wdt)
                lse = np.empty(n)
                _block_attend_tiles(q, k, v, U, keep, y, lse)
                counts = keep.sum(axis=2).reshape(nb * B)[:n]
                return y, lse, int(keep.sum()), nb * B * L, counts
            rows = np.arange(nb * B).reshape(nb, B)
            rows[rows >= n] = -1
            yb, lb = _block_partials(q, k, v, 1.0, rows, U, keep)
            counts = keep.sum(axis=2).reshape(nb * B)[:n]
            return (
                yb.reshape(nb * B, dv)[:n],
                lb.reshape(nb * B)[:n],
                int(keep.sum()),
                nb * B * L,
                counts,
            )
        y = np.zeros((n, dv), dtype=wdt)
        lse = np.full(n, -np.inf)
        counts = np.zeros(n, dtype=np.int64)
        kept = computed = 0
        for i0 in range(0, n, _LEV_BLOCK):
            i1 = min(n, i0 + _LEV_BLOCK)
            # The block's keys: the union of its rows' selections and windows, attended
            # with one GEMM; each row keeps its own keys (each key once).
            sel = idx[i0:i1][valid[i0:i1]]
            parts = [sel]
            if w > 0:
                lo = max(0, int(pos[i0]) - w + 1)
                hi = min(m, int(pos[i1 - 1]) + (1 if problem.causal else w))
                parts.append(np.arange(lo, hi))
            U = np.unique(np.concatenate(parts))
            if U.size == 0:
                continue
            keep = np.zeros((i1 - i0, U.size), dtype=bool)
            r = np.nonzero(valid[i0:i1])[0]
            keep[r, np.searchsorted(U, sel)] = True
            if w > 0:
                p = pos[i0:i1, None]
                near = (U[None, :] <= p) & (U[None, :] > p - w)
                if not problem.causal:
                    near = np.abs(U[None, :] - p) < w
                keep |= near
            y[i0:i1], lse[i0:i1] = _partial(q[i0:i1], k[U], v[U], 1.0, keep)
            counts[i0:i1] = keep.sum(axis=1)
            kept += int(keep.sum())
            computed += (i1 - i0) * U.size
        return y, lse, kept, computed, counts

    lses = []
    evals = computed = 0
    res = map_slices(attend, range(problem.n_slices))
    # Without the exact pass the rows go out in the work dtype (no float64 copy).
    outs = [y.astype(np.float64) for y, *_ in res] if mode == "exact" else [y for y, *_ in res]
    for _, lse, kept, comp, _ in res:
        lses.append(lse)
        evals += kept
        computed += comp
    bound = None
    if mode == "norms":
        value = math.sqrt(sum(float(np.sum(rows * rows)) for *_, rows in res))
        bound = ErrorBound(value, "fro", "deterministic", 0.0, _LEV_NORMS_TEXT + CAP_TEXT)
    # Block GEMMs over the key unions, plus the leverage scores once per key/value slice
    # (causal: Sherman-Morrison updates, 4 d^2 a key; otherwise a QR of K, ~2 m d^2).
    flops = (
        2.0 * computed * (d + dv) + _n_kv(problem) * (4.0 if problem.causal else 2.0) * m * d * d
    )
    if mode == "exact":
        from attention.exact import _attend

        _, lse_exact = _attend(problem)
        Y = np.stack(outs)
        L = np.stack(lses)
        with np.errstate(invalid="ignore"):
            rho = np.where(np.isfinite(L), -np.expm1(L - lse_exact), 1.0)
        rho = np.where(np.isfinite(lse_exact), np.clip(rho, 0.0, 1.0), 0.0)
        V = problem.v[problem.kv_index].astype(np.float64)
        rb = dropped_mass_bound(rho, V, Y_tilde=Y)
        rows = [finish_row_bounds(problem, rb.rows[g], Y[g], V[g]) for g in range(len(Y))]
        value = float(np.sqrt(sum(float(np.sum(r * r)) for r in rows)))
        bound = ErrorBound(
            value,
            "fro",
            "deterministic",
            0.0,
            rb.fro.assumptions
            + "; eps_i from the exact log-normaliser (one exact pass)"
            + CAP_TEXT,
        )
        exact_cost = problem_cost_exact(problem)
        flops += exact_cost.flops
        evals += exact_cost.kernel_evals
    return method_result(problem, outs, lses, bound, Cost(flops, evals))
