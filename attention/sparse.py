r"""Sparse softmax-attention approximations (survey arXiv:2604.01757, §3).

Softmax sharpens the differences between scores, so each row of
:math:`P = Z^{-1}A`, :math:`A = \exp(QK^\top s)`, is nearly sparse. The methods here
compute exact scores on a fixed or score-selected key set :math:`S_i` per query and
renormalise:

* ``"topk"`` - the ``top_k`` largest scores of each row (the sparse yardstick: it forms
  every score to find them);
* ``"window"`` - a sliding window of keys around each query position (local attention);
* ``"bigbird"`` - window blocks, global blocks and random blocks (BigBird).

The LSH and k-means methods that choose key sets by clustering live in
:mod:`attention.clustering`; they share the merging helpers of this module.

Partial results over key sets are combined through their log-normalisers: for key sets
:math:`S` and :math:`T` with outputs :math:`y_S, y_T` and log-normalisers
:math:`\ell_S, \ell_T`, the merged output is
:math:`(e^{\ell_S}y_S + e^{\ell_T}y_T)/(e^{\ell_S} + e^{\ell_T})`.

**Bounds.** ``topk`` returns the moment bound of :func:`_topk_bound` (exact split of
the error along the values' leading direction, Jensen's inequality on the rest; never
above the dropped-mass bound, about half of it on real heads). ``window``/``bigbird``
(with ``error_bound=True``) return the deterministic dropped-mass bound
:func:`attention.bounds.dropped_mass_bound`:
with :math:`\varepsilon_i = \sum_{j \notin S_i} p_{ij}` the exact dropped probability,
:math:`\|y_i - \tilde y_i\| \le \varepsilon_i(R + \|\tilde y_i - c\|)`. Computing
:math:`\varepsilon_i = 1 - e^{\ell_{S_i} - \ell_i}` needs the exact log-normaliser
:math:`\ell_i`, i.e. one exact pass (``topk`` forms all scores anyway). Bounds are with
respect to exact attention of the given inputs in exact arithmetic, padded by
``4 eps (||~y_i|| + R)`` for the rounding of the output to the problem dtype.

**Causality.** ``topk``, ``window`` and ``bigbird`` support ``causal=True`` without
future leakage (their key sets and random draws do not depend on future keys).

References
----------
Survey: Serret et al., arXiv:2604.01757, §3. BigBird: M. Zaheer et al., NeurIPS 2020,
arXiv:2007.14062. Longformer (sliding window): I. Beltagy, M. Peters, A. Cohan,
arXiv:2004.05150.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from attention._core import (
    CAP_TEXT,
    Cost,
    ErrorBound,
    Problem,
    check_error_bound,
    finish_row_bounds,
    method_result,
    problem_cost_exact,
    rounding_allowance,
    value_ball,
)
from attention._parallel import map_slices
from attention._registry import register
from attention.bounds import dropped_mass_bound
from attention.exact import _attend
from rnla._validation import check_int

__all__: list[str] = []

_NEG = -np.inf


# ---------------------------------------------------------------------------------------
# Shared pieces: exact attention on a block of queries and keys, log-sum-exp merging
# ---------------------------------------------------------------------------------------


def _partial(qb, kb, vb, scale, keep=None, logw=None):
    """Exact softmax attention of queries ``qb`` over keys ``kb`` (float64).

    ``keep`` (b, s) marks visible pairs, ``logw`` (b, s) or (s,) adds log-weights to the
    scores (duplicate corrections, cluster sizes). Returns ``(out (b, dv), lse (b,))``;
    rows that see no key get zero output and ``lse = -inf``.
    """
    s = (qb @ kb.T) * scale
    if logw is not None:
        s = s + logw
    if keep is not None:
        s = np.where(keep, s, _NEG)
    mx = s.max(axis=1) if s.shape[1] else np.full(s.shape[0], _NEG)
    finite = np.isfinite(mx)
    shift = np.where(finite, mx, 0.0)
    e = np.exp(s - shift[:, None])
    z = e.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(finite[:, None], (e @ vb) / np.where(finite, z, 1.0)[:, None], 0.0)
        lse = np.where(finite, shift + np.log(np.where(finite, z, 1.0)), _NEG)
    return out, lse


def _work_dtype(problem: Problem):
    """Dtype of the score GEMMs: float32 for float32 inputs whose logits stay moderate.

    Float32 scores are used when ``scale * max ||q|| * max ||k|| <= 1e4`` and the raw
    products cannot overflow; otherwise (huge ``scale`` or entries) float64, where the
    scaled scores of float32 inputs are always finite.
    """
    if problem.dtype != np.float32:
        return np.float64
    qn = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.q, problem.q, dtype=float))))
    kn = float(np.sqrt(np.max(np.einsum("gij,gij->gi", problem.k, problem.k, dtype=float))))
    ok = qn * kn <= 1e30 and problem.scale * qn * kn <= 1e4 and problem.scale <= 1e30
    return np.float32 if ok else np.float64


def _block_partials(q, k, v, scale, rows, J, keep, logw=None):
    """Exact attention of query blocks over gathered key sets, as batched GEMMs.

    ``rows`` (nb, B) query indices (``-1``: padding), ``J`` (nb, L) key indices
    (clipped into range), ``keep`` (nb, B, L) the visible pairs and ``logw`` (nb, B, L)
    optional log-weights added to the scores. Returns
    ``(out (nb, B, dv), lse (nb, B))`` in the dtype of ``q`` (lse in float64); rows that
    see no key get zero output and ``lse = -inf``.
    """
    qb = q[np.maximum(rows, 0)]
    s = np.matmul(qb, k[J].transpose(0, 2, 1))
    s *= s.dtype.type(scale)
    if logw is not None:
        s += logw.astype(s.dtype, copy=False)
    np.putmask(s, ~keep, _NEG)
    mx = s.max(axis=2)
    finite = np.isfinite(mx)
    shift = np.where(finite, mx, 0.0).astype(s.dtype)
    s -= shift[..., None]
    np.exp(s, out=s)
    z = s.sum(axis=2)
    out = np.matmul(s, v[J])
    zs = np.where(finite, z, 1.0)
    out /= zs[..., None]
    with np.errstate(divide="ignore"):
        lse = np.where(finite, shift + np.log(zs.astype(np.float64)), _NEG)
    return out, lse


_USE_KERNEL = True  # False: the plain-NumPy reference path (tests)


def _gather_attend(
    q, k, v, scale, rows, J, kpos, lo, hi, excl=None, logw=None, acc=None, L=None, rounds=None
):
    """Exact attention of query blocks over gathered keys, merged into ``acc``, ``L``.

    Row ``rows[b, r]`` (``-1``: padding) sees key slot ``j`` of its block (key
    ``J[b, j]``, in range) iff ``lo[i] <= kpos[b, j] <= hi[i]`` and ``kpos[b, j] !=
    excl[i]``; ``logw (nb, B, W)`` optional log-weights added to the scores;
    ``rounds = (obq (U, n), obk (U, nb, W), ork (U, nb, W), olo (U, n))`` optional
    duplicate counts of the causal Reformer's other hash rounds: ``-log(1 + N_ij)`` is
    added to the score, ``N_ij`` the rounds ``u`` with ``obk[u, b, j] == obq[u, i]`` and
    ``ork[u, b, j] >= olo[u, i]`` (computed in the kernel, no ``(nb, B, W)`` arrays). The
    partial results are merged into ``acc (n, dv)`` and ``L (n,)`` (float64; new ones,
    zero and ``-inf``, when None) through the log-sum-exp; rows that see no key keep
    their values. Numba kernel :func:`attention._kernels.sparse._gather_attend` (its
    register-tile form :func:`~attention._kernels.sparse._gather_attend_tiles` on
    AVX-512 when ``dv`` is a multiple of the vector length), or the NumPy reference
    (:func:`_gather_attend_numpy`) when ``_USE_KERNEL`` is off.
    Returns ``(acc, L)``.
    """
    n = q.shape[0]
    if acc is None:
        acc = np.zeros((n, v.shape[1]), dtype=q.dtype)
    if L is None:
        L = np.full(n, _NEG)
    if excl is None:
        excl = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    args = (
        q,
        k,
        v,
        rows.astype(np.int64, copy=False),
        J.astype(np.int64, copy=False),
        kpos.astype(np.int64, copy=False),
        np.asarray(lo, dtype=np.int64),
        np.asarray(hi, dtype=np.int64),
        np.asarray(excl, dtype=np.int64),
    )
    if rows.size == 0 or J.shape[1] == 0 or k.shape[0] == 0:
        return acc, L
    if rounds is not None:
        rounds = tuple(np.ascontiguousarray(x, dtype=np.int64) for x in rounds)
    if not _USE_KERNEL:
        if rounds is not None:
            obq, obk, ork, olo = rounds
            rr = np.maximum(args[3], 0)
            cnt = np.ones((*rows.shape, J.shape[1]))
            for u in range(obq.shape[0]):
                same = obk[u][:, None, :] == obq[u][rr][:, :, None]
                cnt += same & (ork[u][:, None, :] >= olo[u][rr][:, :, None])
            logw = -np.log(cnt) if logw is None else logw - np.log(cnt)
        _gather_attend_numpy(*args, scale, logw, acc, L)
        return acc, L
    from attention import exact as _exact
    from attention._kernels.sparse import _gather_attend as kernel
    from attention._kernels.sparse import _gather_attend_tiles

    # Register tiles (AVX-512) when the value width is a whole number of vectors.
    if _exact._USE_TILES and v.shape[1] % (64 // q.itemsize) == 0 and q.shape[1] > 0:
        kernel = _gather_attend_tiles
    lw = np.empty((0, 0, 0), q.dtype) if logw is None else logw.astype(q.dtype, copy=False)
    if rounds is None:
        e1, e2 = np.empty((0, 0), np.int64), np.empty((0, 0, 0), np.int64)
        rounds = (e1, e2, e2, e1)
    q, k, v, rows, J, kpos, lo, hi, excl = args
    kernel(q, k, v, q.dtype.type(scale), rows, J, kpos, lo, hi, excl, lw, *rounds, acc, L)
    return acc, L


def _gather_attend_numpy(q, k, v, rows, J, kpos, lo, hi, excl, scale, logw, acc, L):
    """Plain-NumPy reference of the kernel behind :func:`_gather_attend` (float64 scores)."""
    for b in range(rows.shape[0]):
        r_ok = np.flatnonzero(rows[b] >= 0)
        if r_ok.size == 0:
            continue
        i = rows[b, r_ok]
        kp = kpos[b][None, :]
        keep = (kp >= lo[i, None]) & (kp <= hi[i, None]) & (kp != excl[i, None])
        lw = None if logw is None else logw[b, r_ok]
        q64 = q[i].astype(np.float64)
        o, ls = _partial(
            q64, k[J[b]].astype(np.float64), v[J[b]].astype(np.float64), scale, keep, lw
        )
        seen = np.isfinite(ls)
        acc64 = acc[i[seen]].astype(np.float64)
        sub_acc, sub_L = acc64, L[i[seen]].copy()
        _merge_into(sub_acc, sub_L, np.arange(seen.sum()), o[seen], ls[seen])
        acc[i[seen]] = sub_acc
        L[i[seen]] = sub_L


def _merge_into(acc, L, rows, o, lse):
    """Merge partial ``(o, lse)`` of query ``rows`` into the accumulators ``acc``, ``L``."""
    La = L[rows]
    new = np.logaddexp(La, lse)
    ok = np.isfinite(new)
    safe = np.where(ok, new, 0.0)
    wa = np.where(ok, np.exp(La - safe), 0.0)
    wb = np.where(ok, np.exp(lse - safe), 0.0)
    acc[rows] = wa[:, None] * acc[rows] + wb[:, None] * o
    L[rows] = new


def _unit_rows(X):
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _slices64(problem: Problem, g: int):
    q, k, v = problem.slice(g)
    return q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)


def _positions(problem: Problem) -> np.ndarray:
    # Key position aligned with each query (bottom-right alignment, as for causality).
    return np.arange(problem.n, dtype=np.int64) + problem.offset


def _dropped_bound(problem, outs, lse_kept, lse_full, how: str) -> ErrorBound:
    """Deterministic dropped-mass bound over all slices (Frobenius norm of the output)."""
    total = 0.0
    for g in range(problem.n_slices):
        _, _, v = problem.slice(g)
        with np.errstate(invalid="ignore"):
            eps = -np.expm1(lse_kept[g] - lse_full[g])
        # Rows seeing no key (lse_full = -inf) drop nothing; rounding can leave eps < 0.
        eps = np.clip(np.where(np.isfinite(lse_full[g]), eps, 0.0), 0.0, 1.0)
        rows = dropped_mass_bound(eps, v, Y_tilde=outs[g]).rows
        rows = finish_row_bounds(problem, rows, outs[g], v)
        total += float(np.sum(rows * rows))
    return ErrorBound(
        math.sqrt(total),
        "fro",
        "deterministic",
        0.0,
        "dropped-mass bound ||y_i - ~y_i|| <= eps_i (R + ||~y_i - c||) (attention.bounds."
        "dropped_mass_bound; exact scores kept on a key subset and renormalised) with the "
        f"exact dropped probability eps_i = 1 - exp(lse_kept_i - lse_i) ({how})" + CAP_TEXT,
    )


def _cost(problem: Problem, pairs: float, extra: float = 0.0) -> Cost:
    return Cost(flops=2.0 * pairs * (problem.d + problem.dv) + extra, kernel_evals=int(pairs))


# ---------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------


_TOPK_ROWS = 256  # query rows per block of topk (scores formed block by block)
_TOPK_GROUP = 16  # keys per group of the group-maximum preselection


# Dense kept part when b |U| <= _DENSE_UNION x (kept pairs), twice that when the kept
# scores are recomputed: measured ~3 ns per dense entry (two GEMMs and the zeroing)
# against ~6 ns per gathered key (12 with the scores).
_DENSE_UNION = 2


def _kept_block(sel, sv, n_kept, qb, k, v, scale, rescore, out, lse_kept):
    """Softmax attention of a block of rows over their kept keys (in place).

    ``sel (b, kk)`` kept key indices (``-1`` padded), ``sv`` their scores (float64),
    ``qb (b, d)``, ``k``, ``v`` the block's inputs in the work dtype; ``rescore``:
    the kept scores are recomputed exactly from ``qb`` and ``k`` (and written to
    ``sv``). When the union ``U`` of the block's kept keys is small (at most
    :data:`_DENSE_UNION` times the mean number kept, twice that with ``rescore``),
    the weights are scattered into a dense ``(b, |U|)`` matrix and the outputs are
    one GEMM with ``V[U]`` (the rescored scores one GEMM with ``K[U]``), in the work
    dtype with float64 statistics; otherwise each row gathers its keys four at a
    time (arithmetic in the work dtype, normaliser in float64). Both are
    softmax rows over the kept keys formed in the work dtype, the case covered by
    :func:`attention._core.rounding_allowance`.
    """
    from attention._kernels.topk import _dense_weights, _gather_kept

    b = sel.shape[0]
    total = int(n_kept.sum())
    if total == 0:
        out[:] = 0.0
        lse_kept[:] = _NEG
        return
    mark = np.zeros(k.shape[0], dtype=bool)
    mark[sel[sel >= 0]] = True
    U = np.flatnonzero(mark)
    if U.size * b > _DENSE_UNION * (2 if rescore else 1) * total:
        _gather_kept(sel, sv, n_kept, qb, k, v, float(scale), rescore, out, lse_kept)
        return
    colmap = np.zeros(k.shape[0], dtype=np.int64)
    colmap[U] = np.arange(U.size)
    SU = np.zeros((1, 1), dtype=qb.dtype)
    if rescore:
        SU = (qb * qb.dtype.type(scale)) @ k[U].T
    W = np.empty((b, U.size), dtype=qb.dtype)
    zk = np.empty(b)
    _dense_weights(W, sel, sv, n_kept, colmap, SU, rescore, lse_kept, zk)
    np.divide(W @ v[U].astype(qb.dtype, copy=False), zk[:, None], out=out)


def _value_geometry(v, work):
    """``(c, u, aux, ball)`` of value rows ``v (m, dv)`` for :func:`_topk_bound`.

    ``c`` the centroid, ``u`` the unit leading right singular vector of ``V - c``
    (float64; 30 power iterations), ``aux (3, m)`` in the work dtype:
    ``||(I - uu^T)(v_j - c)||^2``,
    ``w_j = u.(v_j - c)`` and ``|w_j|``; ``ball`` the :func:`attention._core.value_ball`.
    """
    v = np.asarray(v, dtype=np.float64)
    c = v.mean(axis=0) if v.shape[0] else np.zeros(v.shape[1])
    D = v - c
    u = np.zeros(v.shape[1])
    if v.shape[0] and v.shape[1]:
        # power iteration on D^T D (any unit u gives a valid bound: no convergence test;
        # LAPACK's eigh costs milliseconds when its threads meet a loaded machine)
        C = D.T @ D
        x = C[:, int(np.argmax(np.diag(C)))].copy()
        for _ in range(30):
            nx = float(np.linalg.norm(x))
            if nx == 0.0 or not np.isfinite(nx):
                break
            x = C @ (x / nx)
        nx = float(np.linalg.norm(x))
        if nx > 0.0 and np.isfinite(nx):
            u = x / nx
    w = D @ u
    a = np.einsum("ij,ij->i", D, D)
    perp = np.maximum(a - w * w, 0.0) + 1e-12 * a
    aux = np.ascontiguousarray(np.stack([perp, w, np.abs(w)]).astype(work))
    return c, u, aux, value_ball(v)


def _moment_rows(e_lo, e_hi, T, f, y, c, u):
    """Row bounds of :func:`_topk_bound` from the computed moments ``T (n, 3)``.

    ``e_lo <= eps <= e_hi`` the dropped probabilities, ``f >= 1`` the factor within
    which the computed probabilities ``p_j`` are exact (1: exact moments), ``y`` the
    kept outputs, ``c`` the centre and ``u`` the unit direction of the moments.
    """
    dy = c - y
    gu = dy @ u
    h = np.linalg.norm(dy - gu[:, None] * u, axis=1)
    T1, T2, T3 = T[:, 0] * f, T[:, 1], T[:, 2]
    A = np.maximum(np.abs(T2 + e_lo * gu), np.abs(T2 + e_hi * gu))
    A = A + 1.01 * f * (f - 1.0 + 2e-5) * T3 * (f > 1)
    e_hi = np.maximum(e_hi, 0.0)
    B = np.sqrt(e_hi * np.maximum(T1, 0.0)) + e_hi * h
    return np.sqrt(A * A + B * B)


def _topk_bound(problem, outs, lse_kept, lse_full, shift, dropped, mom, geo, sums):
    r"""Deterministic bound of topk from the dropped keys' moments (Frobenius norm).

    Row :math:`i` with dropped set :math:`D`, dropped probability :math:`\varepsilon`
    and kept output :math:`\tilde y`: :math:`y - \tilde y = \sum_{j\in D} p_j (v_j -
    \tilde y)` (exact identity, :math:`y = (1-\varepsilon)\tilde y + \sum_D p_j v_j`).
    Split along the unit leading direction :math:`u` of the centred values and its
    complement :math:`P_\perp = I - uu^\top` (orthogonal, so the squared norms add):
    the :math:`u` part is the scalar :math:`A = T_2 + \varepsilon\,u^\top(c - \tilde
    y)` with :math:`T_2 = \sum_D p_j w_j`, :math:`w_j = u^\top(v_j - c)`, computed;
    the rest is :math:`\|\sum_D p_j P_\perp(v_j - c)\| + \varepsilon\|P_\perp(c -
    \tilde y)\|` with, by Jensen's inequality (convexity of :math:`\|\cdot\|^2`,
    weights :math:`p_j/\varepsilon`), :math:`\|\sum_D p_j P_\perp(v_j - c)\| \le
    \sqrt{\varepsilon\,T_1}`, :math:`T_1 = \sum_D p_j\|P_\perp(v_j - c)\|^2`. So

    .. math::

        \|y - \tilde y\| \le \sqrt{A^2 + \big(\sqrt{\varepsilon T_1} +
        \varepsilon\|P_\perp(c - \tilde y)\|\big)^2},

    never above the dropped-mass bound :math:`\varepsilon(R + \|\tilde y - c\|)`
    (the minimum of the two is returned). :math:`T_1, T_2` and
    :math:`T_3 = \sum_D p_j|w_j|` come from the exponentials topk forms anyway (one
    extra vectorised pass over each row). Rounding: the computed :math:`p_j` are
    within a factor :math:`f = e^{\text{shift}_i + 5\cdot 10^{-5}}` (float32; the
    score rounding :math:`2\delta_i` of :func:`_topk`, the exponential, the sums
    and the float32 storage of :math:`w_j` and :math:`T`'s terms) of the exact ones,
    so :math:`T_1 \le f\tilde T_1`, :math:`|T_2 - \tilde T_2| \le 1.01 f (f - 1 +
    2\cdot 10^{-5})\tilde T_3`; :math:`\varepsilon` is only known in
    :math:`[\varepsilon_{lo}, \varepsilon_{hi}]` (normalisers shifted down/up), and
    :math:`|A|` is maximised over it (linear in :math:`\varepsilon`). The kept output
    is computed, not exact: its rounding (:func:`attention._core.rounding_allowance`)
    enters with weight :math:`1 + 2\varepsilon`.
    """

    def rows_of(g):
        j = int(problem.kv_index[g])
        v = problem.v[j]
        c, u = geo[j][0], geo[j][1]
        y = outs[g]
        lk, lf = lse_kept[g], lse_full[g]
        fin = np.isfinite(lf) & dropped[g]
        with np.errstate(invalid="ignore", over="ignore"):
            e_hi = np.where(fin, -np.expm1(lk - (lf + shift[g])), 0.0)
            e_lo = np.where(fin, -np.expm1(lk - (lf - shift[g])), 0.0)
        e_hi = np.clip(np.nan_to_num(e_hi, nan=1.0), 0.0, 1.0)
        e_lo = np.clip(np.nan_to_num(e_lo, nan=0.0), 0.0, e_hi)
        f = np.exp(shift[g] + (5e-5 if sums > 1e-9 else 1e-12))
        new = np.where(fin, _moment_rows(e_lo, e_hi, mom[g], f, y, c, u), 0.0)
        ball = geo[j][3]
        # the dropped-mass bound eps (R + ||~y - c||) with the value ball (c, R)
        old = e_hi * (ball[1] + np.sqrt(np.einsum("ij,ij->i", y - ball[0], y - ball[0])))
        extra = 2.0 * e_hi * rounding_allowance(problem, y, v, ball=ball)
        rows = finish_row_bounds(problem, np.minimum(new, old) + extra, y, v, ball=ball)
        return float(np.sum(rows * rows))

    total = sum(map_slices(rows_of, range(problem.n_slices)))
    return ErrorBound(
        math.sqrt(total),
        "fro",
        "deterministic",
        0.0,
        "topk moment bound ||y_i - ~y_i|| <= sqrt(A_i^2 + (sqrt(eps_i T1_i) + eps_i "
        "||P_perp(c - ~y_i)||)^2) (exact split y - ~y = sum_dropped p_j (v_j - ~y) along "
        "the values' leading direction u, Jensen on the rest; attention.sparse._topk_bound), "
        "capped by the dropped-mass bound eps_i (R + ||~y_i - c||) (attention.bounds."
        "dropped_mass_bound), eps_i the exact dropped probability from the scores formed by "
        "topk" + CAP_TEXT,
    )


def _topk_rows_numpy(S, v, kk):
    """Top-``kk`` softmax of the score rows ``S`` (b, s): ``(out, lse_kept, lse_full)``.

    Plain-NumPy reference of :func:`attention._kernels.topk._select_block` with the kept
    part of :func:`_kept_block` (scores ``S`` as given). Preselection
    by group maxima: the ``kk`` largest scores of a row lie in the ``kk``
    groups (of 16 consecutive keys) with the largest maxima - each such score's group
    maximum is at least the ``kk``-th largest score - so the exact selection runs on
    ``16 kk`` candidates instead of all ``s`` scores.
    """
    b, s = S.shape
    kk = min(kk, s)
    ng = -(-s // _TOPK_GROUP)
    if ng > 2 * kk:
        Sp = S
        if ng * _TOPK_GROUP != s:
            Sp = np.full((b, ng * _TOPK_GROUP), _NEG)
            Sp[:, :s] = S
        gmax = Sp.reshape(b, ng, _TOPK_GROUP).max(axis=2)
        top = np.argpartition(-gmax, kk - 1, axis=1)[:, :kk]
        cand = (top[:, :, None] * _TOPK_GROUP + np.arange(_TOPK_GROUP)).reshape(b, -1)
        Sc = np.take_along_axis(Sp, cand, axis=1)
        sel = np.take_along_axis(cand, np.argpartition(-Sc, kk - 1, axis=1)[:, :kk], axis=1)
    else:
        sel = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
    Ssel = np.take_along_axis(S, sel, axis=1)
    mx = S.max(axis=1)
    finite = np.isfinite(mx)
    shift = np.where(finite, mx, 0.0)
    S -= shift[:, None]
    np.exp(S, out=S)
    with np.errstate(divide="ignore"):
        lse_full = np.where(finite, shift + np.log(S.sum(axis=1)), _NEG)
        e = np.exp(Ssel - shift[:, None])
        z = e.sum(axis=1)
        lse_kept = np.where(finite, shift + np.log(np.where(finite, z, 1.0)), _NEG)
    zs = np.where(finite, z, 1.0)
    out = np.where(finite[:, None], np.einsum("is,isd->id", e, v[sel]) / zs[:, None], 0.0)
    return out, lse_kept, lse_full


@register(
    "topk",
    section="§3",
    family="sparse",
    causal=True,
    masks=True,
    bound="deterministic",
    summary=("Exact top-k keys per query row (sparse yardstick; quadratic: forms every score)."),
)
def _topk(problem: Problem, *, rng, top_k=32):
    r"""Exact per-row top-k attention (registered as ``"topk"``).

    Parameters
    ----------
    top_k : int, default=32
        Keys ``k`` kept per query row (all visible keys when fewer).

    Notes
    -----
    Forms the scores :math:`S = QK^\top s` (plus mask), keeps the :math:`k` largest of
    each row and renormalises. The exact log-normaliser comes from the same scores, so
    the dropped mass :math:`\varepsilon_i` is free, and so are the dropped keys'
    moments of the deterministic bound (:func:`_topk_bound`, at most the dropped-mass
    bound :math:`\varepsilon_i(R + \|\tilde y_i - c\|)`); the bound is attained when
    the kept keys share one value and the dropped keys its opposite. Measured on real
    SmolLM2 heads (``n = 4096``, causal): bound/actual 3.4 (default) and 3.7
    (``top_k=128``), against 6.5 and 7.0 for the dropped-mass bound.

    **Quadratic**: cost :math:`2nm\,d + 2nk\,(d + d_v)` flops and :math:`nm` kernel
    evaluations per slice (about half with ``causal=True``), the cost class of exact
    attention - a quality yardstick. Scores are formed in blocks of 256 query rows by
    one GEMM (float32 for float32 inputs with moderate logits, as the other sparse
    methods); :func:`attention._kernels.topk._select_block` selects the :math:`k`
    largest of each row by vectorised counting passes (no sort) and sums the
    exponentials of the normaliser; the kept keys are attended with their formed
    scores (:func:`_kept_block`: gathered in float64 arithmetic, or one GEMM over the
    union of a block's kept keys). Blocks of all slices run on all cores. Measured on
    one real SmolLM2 layer at ``n = 4096`` (9 causal heads, one thread): about 40% of
    the time in the score GEMM, 40% in the selection, the exponentials and the dropped
    keys' moments, 5% in the kept part, 7% in the bound; 0.6x the speed of exact
    attention (whose kernel does the same score GEMM, the exponentials and ``P V`` at
    ~90% of the GEMM rate): the selection costs about as much as the second GEMM it
    saves (:mod:`benchmarks.attention_selection`).

    **Rounding.** Both normalisers come from the rounded scores (each within
    :math:`\delta_i = \gamma_{d+3}(s\|q_i\|\max_j\|k_j\| + \max|b|)` of the exact
    one, Higham, *Accuracy and Stability of Numerical Algorithms*, Lemma 3.1 and
    (3.5)); the log-normaliser of the row is raised by :math:`2\delta_i` plus the
    rounding of the sums (:math:`\gamma_{512} + 4u`, :math:`3.1\cdot 10^{-5}` in float32,
    for the exponential sums in chunks of 512 in any order of addition,
    :math:`2u` for the kept weights), so the dropped mass :math:`1 -
    e^{\ell_{S_i} - \ell_i}`, and the bound, stay upper bounds. The output's own
    rounding (a softmax over the kept keys formed in the work dtype) is the case
    covered by :func:`attention._core.rounding_allowance`.
    """
    from attention._kernels.topk import _CHUNK as _CHUNK_SUM
    from attention._kernels.topk import _select_block

    k = check_int(top_k, "top_k", minimum=1)
    n, m = problem.n, problem.m
    kk = min(k, m)
    G = problem.n_slices
    work = _work_dtype(problem)
    # scores in the work dtype: |fl(s q.k + b) - (s q.k + b)| <= delta_i =
    # gamma_(d+3) (s |q_i| max|k| + max|b|)
    # (Higham: the d-term products, the scaled query, the cast and addition of b).
    u = float(np.finfo(work).eps) / 2
    gamma = (problem.d + 3) * u / (1 - (problem.d + 3) * u)
    # Inputs in the work dtype once per slice (the kept part reads them too: its
    # scores are accumulated in float64 from these rows, exact products).
    # (the scale folded into the queries: one rounding, inside gamma_(d+3))
    qs = [(problem.q[g].astype(np.float64) * problem.scale).astype(work) for g in range(G)]
    ks = {j: np.ascontiguousarray(problem.k[j], dtype=work) for j in set(problem.kv_index)}
    vs = {j: np.ascontiguousarray(problem.v[j], dtype=work) for j in set(problem.kv_index)}
    outs = np.zeros((G, n, problem.dv))
    lse_kept, lse_full = np.full((G, n), _NEG), np.full((G, n), _NEG)
    # Per key/value slice: centroid c, leading direction u of the centred values and
    # the per-key quantities of the bound's moments (see _topk_bound).
    kv_ids = list(ks)
    geos = map_slices(lambda j: _value_geometry(problem.v[j], work), kv_ids)
    geo = dict(zip(kv_ids, geos, strict=True))
    mom = np.zeros((G, n, 3))
    n_kept = np.zeros((G, n), dtype=np.int64)
    n_seen = np.zeros((G, n), dtype=np.int64)
    keeps = {}
    if problem.mask is not None:  # the (n, m) pattern only for a user mask
        keeps = {g: problem.keep(g) for g in range(G)}

    def block(unit):
        g, r0 = unit
        r1 = min(n, r0 + _TOPK_ROWS)
        # Causal: keys after the block's last visible one are skipped.
        hi = min(max(r1 + problem.offset if problem.causal else m, 0), m)
        if hi == 0:
            return 0
        j = int(problem.kv_index[g])
        S = qs[g][r0:r1] @ ks[j][:hi].T
        bias = problem.bias(g)
        if bias is not None:
            S += bias[r0:r1, :hi].astype(S.dtype)
        keep = keeps.get(g)
        if keep is not None:
            np.putmask(S, ~keep[r0:r1, :hi], _NEG)
        lims = np.full(r1 - r0, hi, dtype=np.int64)
        if problem.causal and keep is None:
            lims = np.clip(np.arange(r0, r1) + problem.offset + 1, 0, hi)
        b = r1 - r0
        sel = np.empty((b, kk), dtype=np.int64)
        sv = np.empty((b, kk))
        _select_block(
            S,
            lims,
            kk,
            problem.mask is not None,
            True,
            sel,
            sv,
            n_kept[g, r0:r1],
            n_seen[g, r0:r1],
            lse_full[g, r0:r1],
            geo[j][2],
            mom[g, r0:r1],
        )
        _kept_block(
            sel,
            sv,
            n_kept[g, r0:r1],
            qs[g][r0:r1],
            ks[j][:hi],
            vs[j][:hi],
            problem.scale,
            False,
            outs[g, r0:r1],
            lse_kept[g, r0:r1],
        )
        return (r1 - r0) * hi

    # largest blocks first (causal: the last rows see the most keys), for balance
    units = [(g, r0) for r0 in range(0, n, _TOPK_ROWS)[::-1] for g in range(G)]
    pairs = sum(map_slices(block, units))
    # Nothing dropped: exactly zero dropped mass. Otherwise both normalisers come from
    # the rounded scores (each off by at most delta_i, see above): raise lse_full by
    # 2 delta_i plus the rounding of the sums (exponential sums in the work dtype in
    # chunks of 512: gamma_512 + 4u, 3.1e-5 in float32; the kept weights: 2u), so that
    # the dropped mass stays an upper bound.
    bmax = 0.0
    if problem.mask is not None and problem.mask.dtype != np.bool_:
        fin = np.isfinite(problem.mask)
        bmax = float(np.abs(problem.mask[fin]).max(initial=0.0))
    kmax = {
        j: float(np.max(np.linalg.norm(ks[j].astype(np.float64), axis=1), initial=0.0)) for j in ks
    }
    # Worst case over any order of the reassociated (vectorised) chunk sums: Higham's
    # gamma_512 = 512u / (1 - 512u) (Lemma 3.1), plus 4u for the exponential.
    u_w = float(np.finfo(work).eps) / 2
    sums = max(_CHUNK_SUM * u_w / (1.0 - _CHUNK_SUM * u_w) + 4.0 * u_w, 1e-12)
    shift = np.zeros((G, n))
    for g in range(G):
        sigma = problem.scale * np.linalg.norm(problem.q[g].astype(np.float64), axis=1)
        sigma = sigma * kmax[int(problem.kv_index[g])] + bmax
        shift[g] = 2.0 * gamma * sigma + sums + 2.0 * u
    dropped = n_kept < n_seen
    bound = _topk_bound(problem, outs, lse_kept, lse_full, shift, dropped, mom, geo, sums)
    cost = Cost(
        flops=2.0 * (pairs * problem.d + G * n * kk * (problem.d + problem.dv)),
        kernel_evals=pairs,
    )
    return method_result(problem, outs, lse_kept, bound, cost)


# ---------------------------------------------------------------------------------------
# Sliding window and BigBird
# ---------------------------------------------------------------------------------------

_WINDOW_BLOCK = 16  # query rows per block of the banded computation (keys gathered once)


def _finish_sparse(problem, outs, lse, pairs, error_bound):
    """Wrap a sparse method's output; the dropped-mass bound costs one exact pass."""
    bound = None
    extra = 0.0
    if error_bound == "exact":
        lse_full = _exact_lse(problem)
        bound = _dropped_bound(problem, outs, lse, lse_full, "one exact pass")
        extra = problem_cost_exact(problem).flops
    return method_result(problem, outs, lse, bound, _cost(problem, pairs, extra))


def _exact_lse(problem: Problem) -> np.ndarray:
    # One exact pass in float64 (the kept log-normalisers are float64 too, so the
    # dropped mass 1 - exp(lse_kept - lse) is not swamped by float32 rounding).
    p64 = dataclasses.replace(
        problem,
        q=problem.q.astype(np.float64),
        k=problem.k.astype(np.float64),
        v=problem.v.astype(np.float64),
        dtype=np.dtype(np.float64),
    )
    _, lse = _attend(p64)
    return lse


@register(
    "window",
    section="§3",
    family="sparse",
    causal=True,
    bound="deterministic",
    summary="Sliding-window (local) attention; exact dropped-mass bound on request.",
)
def _window(problem: Problem, *, rng, window=64, error_bound=None):
    r"""Sliding-window attention (registered as ``"window"``).

    Parameters
    ----------
    window : int, default=64
        Half-width: query ``i`` (at key position ``p_i = i + m - n``) sees the keys
        ``|j - p_i| <= window`` (``p_i - window <= j <= p_i`` when causal).
    error_bound : {None, False, True, "exact"}, default=None
        ``"exact"`` (also ``True``) runs one exact pass for the log-normalisers (the flops of exact
        attention, added to ``cost.flops``) and returns the deterministic dropped-mass
        bound.

    Notes
    -----
    Computed in blocks of 16 query rows against the band of keys they need (a Numba
    kernel, keys gathered once per block), so the cost is about
    :math:`2n(w + 16)(d + d_v)` flops per slice causal, :math:`2n(2w + 16)(d + d_v)`
    otherwise. Queries whose
    window holds no key (``n > m``, non-causal) get zero output.
    """
    window = check_int(window, "window", minimum=0)
    error_bound = check_error_bound(error_bound, ("exact",))
    n, m, G = problem.n, problem.m, problem.n_slices
    B = _WINDOW_BLOCK
    nb = -(-n // B)
    rows = np.arange(nb * B).reshape(nb, B)
    rows = np.where(rows < n, rows, -1)
    pos = _positions(problem)  # key position of each query
    # Keys of block b: the band from its first query's position - window to its last
    # query's position (+ window when not causal).
    width = B + window + (0 if problem.causal else window)
    J = (pos[rows[:, 0]] - window)[:, None] + np.arange(width)[None, :]
    Jc = np.clip(J, 0, max(m - 1, 0))
    lo = np.maximum(pos - window, 0)
    hi = np.minimum(pos if problem.causal else pos + window, m - 1)
    # float64 when the exact dropped mass is wanted (kept lse must not be swamped by
    # float32 rounding), the input dtype otherwise.
    wdt = np.float64 if error_bound == "exact" else _work_dtype(problem)
    outs = np.zeros((G, n, problem.dv), dtype=wdt)
    lse = np.full((G, n), _NEG)

    def attend(g):
        q, k, v = (x.astype(wdt, copy=False) for x in problem.slice(g))
        _gather_attend(q, k, v, problem.scale, rows, Jc, J, lo, hi, acc=outs[g], L=lse[g])

    map_slices(attend, range(G))
    pairs = G * int(np.sum((rows >= 0).sum(axis=1) * ((J >= 0) & (J < m)).sum(axis=1)))
    return _finish_sparse(problem, outs, lse, pairs, error_bound)


@register(
    "bigbird",
    section="§3",
    family="sparse",
    causal=True,
    bound="deterministic",
    summary="BigBird: window + global + random key blocks; exact dropped-mass bound on request.",
)
def _bigbird(
    problem: Problem,
    *,
    rng,
    block_size=32,
    n_window=3,
    n_global=1,
    n_random=2,
    error_bound=None,
):
    r"""BigBird block-sparse attention (registered as ``"bigbird"``).

    Parameters
    ----------
    block_size : int, default=32
        Queries and keys are grouped in blocks of this many positions.
    n_window : int, default=3
        Key blocks around the query block's position (``n_window // 2`` on each side;
        the ``n_window - 1`` previous blocks and its own when causal); clamped to
        ``2 * ceil(m / block_size) + 1`` (every block).
    n_global : int, default=1
        The first ``n_global`` key blocks are seen by every query, and the queries at
        those positions see every (visible) key.
    n_random : int, default=2
        Random key blocks per query block, drawn from ``rng`` among the blocks not yet
        included (when causal, among blocks not after the query block).
    error_bound : {None, False, True, "exact"}, default=None
        ``"exact"`` (also ``True``) adds one exact pass for the deterministic dropped-mass bound.

    Notes
    -----
    Each query block attends the union of its window, global and random key blocks,
    computed densely: about :math:`2n\,b(n_w + n_g + n_r)(d + d_v)` flops per slice,
    plus :math:`2 n_g b\,m(d + d_v)` for the global queries. The random blocks depend
    only on ``rng`` and positions, never on the data, so the same seed gives the same
    pattern and causal masking leaks nothing (Zaheer et al., 2020).
    """
    bs = check_int(block_size, "block_size", minimum=1)
    n_window = check_int(n_window, "n_window", minimum=1)
    n_global = check_int(n_global, "n_global", minimum=0)
    n_random = check_int(n_random, "n_random", minimum=0)
    error_bound = check_error_bound(error_bound, ("exact",))
    n, m, G = problem.n, problem.m, problem.n_slices
    nkb = -(-m // bs)
    # 2 nkb + 1 blocks around any position already cover every key block.
    n_window = min(n_window, 2 * nkb + 1)
    pos = _positions(problem)
    n_global_pos = n_global * bs
    nqb = -(-n // bs)
    rows = np.arange(nqb * bs).reshape(nqb, bs)
    rows = np.where(rows < n, rows, -1)
    # The pattern: key blocks of every query block of every slice, drawn in a fixed
    # order from positions and rng only (never from the data). The window and global
    # blocks depend on positions only (vectorised); the random blocks are drawn per
    # query block, ``rng.choice(pool size, n_draw)`` mapped onto the pool of blocks not
    # yet included (the same draws as ``rng.choice(pool, n_draw)``).
    starts = np.arange(0, n, bs)
    p_lo, p_hi = pos[starts], pos[np.minimum(starts + bs, n) - 1]
    b_lo = np.where(p_lo >= 0, p_lo // bs, -1)
    b_hi = np.where(p_hi >= 0, p_hi // bs, -1)
    if problem.causal:
        w_lo, w_hi, top = b_lo - (n_window - 1), b_hi, b_hi
    else:
        h = n_window // 2
        w_lo, w_hi, top = b_lo - h, b_hi + h, np.full(nqb, nkb - 1)
    fixed = []  # sorted window + global blocks of each query block
    for t in range(nqb):
        win = range(max(int(w_lo[t]), 0), min(int(w_hi[t]), nkb - 1) + 1)
        glob = range(min(n_global, nkb, int(top[t]) + 1))
        fixed.append(sorted({*win, *glob}))
    n_pool = [
        max(0, min(int(top[t]), nkb - 1) + 1 - sum(1 for c in fx if c <= top[t]))
        for t, fx in enumerate(fixed)
    ]
    plans = []
    for _ in range(G):
        plan = []
        for t in range(nqb):
            blocks = fixed[t]
            n_draw = min(n_random, n_pool[t])
            # Drawn for every block (even with an empty pool the draw count is fixed by
            # positions only), so the pattern never depends on the data.
            if n_draw:
                extra = []
                for x in rng.choice(n_pool[t], size=n_draw, replace=False).tolist():
                    for c in blocks:  # the x-th block not in ``blocks``
                        if c <= x:
                            x += 1
                    extra.append(x)
                blocks = sorted(blocks + extra)
            plan.append(blocks)
        plans.append(plan)
    n_blocks = max((len(b) for plan in plans for b in plan), default=0)
    width = n_blocks * bs
    gq = np.flatnonzero((pos >= 0) & (pos < n_global_pos))
    wdt = np.float64 if error_bound == "exact" else _work_dtype(problem)
    outs = np.zeros((G, n, problem.dv), dtype=wdt)
    lse = np.full((G, n), _NEG)
    lo = np.zeros(n, dtype=np.int64)
    hi = np.minimum(pos, m - 1) if problem.causal else np.full(n, m - 1)
    n_rows = (rows >= 0).sum(axis=1)

    def attend(g):
        q, k, v = (x.astype(wdt, copy=False) for x in problem.slice(g))
        out, lse_g = outs[g], lse[g]
        if width == 0 or m == 0:
            return 0
        blk = np.full((nqb, n_blocks), -1, dtype=np.int64)
        for t, blocks in enumerate(plans[g]):
            blk[t, : len(blocks)] = blocks
        J = (blk[:, :, None] * bs + np.arange(bs)).reshape(nqb, width)
        J = np.where(
            (blk[:, :, None] >= 0).repeat(bs, axis=2).reshape(nqb, width) & (J < m), J, -1
        )
        _gather_attend(q, k, v, problem.scale, rows, np.maximum(J, 0), J, lo, hi, acc=out, L=lse_g)
        npairs = int(np.sum(n_rows * (J >= 0).sum(axis=1)))
        # Global queries (positions < n_global * block_size) see every visible key.
        if gq.size:
            keep_g = (np.arange(m)[None, :] <= pos[gq, None]) if problem.causal else None
            out[gq], lse_g[gq] = _partial(q[gq], k, v, problem.scale, keep_g)
            npairs += gq.size * m
        return npairs

    pairs = sum(map_slices(attend, range(G)))
    return _finish_sparse(problem, outs, lse, pairs, error_bound)
