r"""Certified decode over a :class:`attention.kvcache.KVCache` on real SmolLM2 heads.

Data: :func:`attention.data.load_smollm2_heads` (the shipped ``"licenses"`` text), the 9
query heads (3 key/value heads, grouped-query attention) of layers 0, 7, 14, 21, 29,
float32, RoPE applied. A cache holds the first ``m`` keys and values (``m = 2048`` and
``8192``); the queries are the ``n_q`` rows ending at position ``m`` (``n_q = 1``: the
next token; ``16``: the stacked group of 48 rows, causal bottom-right). Synthetic: one
head group at ``m = 32768`` (Gaussian keys, 4 planted sinks, a local bump).

Per case and ``tol`` in ``{1e-2, 3e-2, 1e-1}``:

* actual relative Frobenius error against exact attention (float64), the returned
  ``bound`` over ``||Y||_F``, ``bound / actual``, whether the bound holds and is
  ``<= tol ||Y||_F``;
* the kept key fraction (``cost.key_fraction``), the bytes read over those of exact
  attention (``cost.bytes_read`` over ``m (d + dv) 4`` per key/value head), and the
  oracle top-k fraction (each query row keeps its largest exact weights, renormalised;
  the smallest grid fraction with relative error ``<= tol``, mean over query heads);
* error, bound and fractions are those of a certified step (the pilot forced, whatever
  the routing would choose);
* the time of a certified step (forced) and of the *policy* step (repeated calls as in
  generation, default routing: caches under 4096 keys and more than 16 stacked rows are
  read exactly, and a step keeping more than 15% makes the next 16 steps exact; its
  bound is checked too), each against our exact kernel
  (:func:`attention.softmax_attention` on the same ``K``/``V`` arrays), as the median
  of per-pair time ratios over interleaved pairs (``--pairs``), load average recorded.

Coverage (``--coverage N``): ``N`` seeded runs, each a random layer (0-29 spread), head
group position ``m`` in ``[1024, 8192]``, ``n_q`` in ``{1, 16}`` and ``tol``; counts
runs with error above the bound, and the same for a negative control (the row costs of
the dropped blocks added in quadrature instead of linearly: not a bound); one-sided
binomial test against ``delta = 0.01`` at level ``1e-3``.

Append (``--part append``): time per appended token (one call per token) at ``m = 8192``.

Cold (``--part cold``): the caches out of the CPU caches, as in a many-layer model: 40
copies of the five layers' caches (504 MB of ``K + V``) visited in turn, one step each,
summed time against the exact kernel visiting the same copies.

Run: ``flock /tmp/bench.lock python -m benchmarks.attention_kvcache`` (all parts) or one
part at a time (``--part real --ms 2048 --merge``, ``--part synthetic --merge``,
``--part coverage --merge``, ``--part append --merge``, and ``--layers`` to split the
real part: each a few minutes on 2 cores). Results:
``benchmarks/results/attention_kvcache.{json,md}`` and the docs table
``attention_kvcache_summary.rst``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import numba
import numpy as np
from scipy.stats import binom

import attention._kernels.kvcache as kk
import attention.exact as exact_mod
import attention.kvcache as kvmod
from attention import softmax_attention
from attention.data import load_smollm2_heads
from attention.exact import _single_threaded_blas
from attention.kvcache import KVCache
from benchmarks.attention_adaptive import _oracle_fraction

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = (0, 7, 14, 21, 29)
TOLS = (1e-2, 3e-2, 1e-1)


def _load():
    return os.getloadavg()[0]


def _exact64(Q, K, V, scale):
    return softmax_attention(
        Q.astype(np.float64),
        K.astype(np.float64),
        V.astype(np.float64),
        causal=True,
        scale=scale,
    )


def _ratio(f_exact, f_method, pairs):
    """Median of per-pair time ratios method / exact over interleaved calls."""
    f_exact()
    f_method()
    te, tm = [], []
    for _ in range(pairs):
        t = time.perf_counter()
        f_exact()
        te.append(time.perf_counter() - t)
        t = time.perf_counter()
        f_method()
        tm.append(time.perf_counter() - t)
    te, tm = np.array(te), np.array(tm)
    return float(np.median(tm / te)), 1e3 * float(np.median(te)), 1e3 * float(np.median(tm))


@contextlib.contextmanager
def _forced():
    """Certified steps (with the pilot) whatever the routing would choose."""
    saved = kvmod._MIN_BLOCKS, kvmod._MAX_ROWS, kvmod._PAY_FRACTION
    kvmod._MIN_BLOCKS, kvmod._MAX_ROWS, kvmod._PAY_FRACTION = 8, 64, 1.0
    try:
        yield
    finally:
        kvmod._MIN_BLOCKS, kvmod._MAX_ROWS, kvmod._PAY_FRACTION = saved


def _case_rows(name, Q, K, V, scale, pairs, oracle=True):
    rows = []
    Y = _exact64(Q, K, V, scale)
    ynorm = float(np.linalg.norm(Y))
    cache = KVCache(K.shape[0], K.shape[2], V.shape[2])
    cache.append(K, V)
    h, m = K.shape[:2]
    exact_bytes = h * m * (K.shape[2] + V.shape[2]) * 4
    gs = Q.shape[0] // h
    for tol in TOLS:
        cache._skip = 0
        with _forced():
            res = cache.attend(Q, tol=tol, scale=scale)
        err = float(np.linalg.norm(res.output.astype(np.float64) - Y))
        row = {
            "case": name,
            "m": m,
            "nq": Q.shape[1],
            "tol": tol,
            "rel_error": err / ynorm,
            "rel_bound": res.bound.value / ynorm,
            "bound_over_actual": res.bound.value / err if err > 0 else math.inf,
            "holds": bool(err <= res.bound.value),
            "within_tol": bool(res.bound.value <= tol * ynorm),
            "key_fraction": float(np.mean(res.cost.key_fraction)),
            "bytes_fraction": res.cost.bytes_read / exact_bytes,
        }
        if oracle:
            row["oracle_fraction"] = float(
                np.mean(
                    [
                        _oracle_fraction(Q[g], K[g // gs], V[g // gs], scale, tol)
                        for g in range(Q.shape[0])
                    ]
                )
            )
        if pairs:

            def fe(Q=Q, K=K, V=V):
                return softmax_attention(Q, K, V, causal=True, scale=scale)

            def fstep(tol=tol):
                cache._skip = 0
                with _forced():
                    return cache.attend(Q, tol=tol, scale=scale)

            def fpolicy(tol=tol):
                return cache.attend(Q, tol=tol, scale=scale)

            r, te, tm = _ratio(fe, fstep, pairs)
            row.update(step_ratio=r, exact_ms=te, step_ms=tm)
            cache._skip = 0
            r, _, tp = _ratio(fe, fpolicy, pairs)
            pol = cache.attend(Q, tol=tol, scale=scale)
            perr = float(np.linalg.norm(pol.output.astype(np.float64) - Y))
            row.update(
                policy_ratio=r,
                policy_ms=tp,
                policy_holds=bool(perr <= pol.bound.value),
                policy_within_tol=bool(pol.bound.value <= tol * ynorm),
            )
            row["speedup"] = 1.0 / row["policy_ratio"]
        row["load"] = _load()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def real(pairs, ms=(2048, 8192), layers=LAYERS):
    """Real SmolLM2 heads: caches of the first ``m`` keys, the queries ending at ``m``."""
    heads = load_smollm2_heads(8192, layers=list(layers))
    rows = []
    for m in ms:
        for li, layer in enumerate(heads.layers):
            for nq in (1, 16):
                Q = np.ascontiguousarray(heads.Q[li][:, m - nq : m])
                K = np.ascontiguousarray(heads.K[li][:, :m])
                V = np.ascontiguousarray(heads.V[li][:, :m])
                name = f"real m={m} L{int(layer)} nq={nq}"
                rows += _case_rows(name, Q, K, V, heads.scale, pairs)
    return rows


def synthetic(pairs, m=32768):
    """Run a synthetic head group at ``m`` keys.

    Queries of a group share a direction ``u``; 4 sinks along ``u`` (scores ~18), 64
    heavy hitters (~10), a local window of 256 keys (+3.6) and Gaussian keys (score
    spread ~0.5).
    """
    Q, K, V = _synthetic_heads(m)
    rows = []
    for nq in (1, 16):
        Qn = np.ascontiguousarray(Q[:, 16 - nq :])
        rows += _case_rows(f"synthetic m={m} nq={nq}", Qn, K, V, 0.125, pairs, oracle=False)
    return rows


def _synthetic_heads(m):
    """Return ``Q (9, 16, 64)``, ``K``, ``V (3, m, 64)`` float32 of :func:`synthetic`."""
    rng = np.random.default_rng(0)
    d = 64
    u = rng.standard_normal((3, 1, d))
    K = 0.3 * rng.standard_normal((3, m, d))
    V = rng.standard_normal((3, m, d))
    Q = 1.5 * np.repeat(u, 3, axis=0) + 0.5 * rng.standard_normal((9, 16, d))
    K[:, :4] = 1.5 * u
    hh = rng.choice(m - 512, size=64, replace=False) + 4
    K[:, hh] += 0.8 * u
    K[:, -256:] += 0.3 * u
    K, V, Q = (x.astype(np.float32) for x in (K, V, Q))
    return Q, K, V


def _bound_and_control(cache, Q, tol, scale):
    """One certified step (first pass, no refinement) through the kernels.

    Returns the output, its bound (row bounds of the dropped blocks and rounding
    allowance, as ``attend``) and the control (the row costs added in quadrature).
    """
    h, nq = cache.n_kv_heads, Q.shape[1]
    gs = Q.shape[0] // h
    R, t, B = gs * nq, len(cache), cache.block
    nbc = min(t // B, (t - nq + 1) // B)
    members = np.arange(Q.shape[0], dtype=np.int64).reshape(h, gs)
    qs = Q.reshape(h, R, -1).astype(np.float64) * scale
    arrs = [np.empty((h, nbc, R)) for _ in range(6)]
    _, bw, bs2, bt, _, bex = arrs
    keep = np.ones((h, nbc), dtype=np.int8)
    seg = np.zeros((h, nbc + t // 512 + 2, 2), dtype=np.int64)
    nseg = np.zeros(h, dtype=np.int64)
    cpart = np.zeros((h, R, 2 + cache.value_dim))
    tau = 0.95 * tol / (1 + tol)
    with _single_threaded_blas():
        kk._pilot_select(
            qs,
            cache._codes,
            cache._qscale,
            cache._qres,
            cache._rho,
            cache._udev,
            nbc,
            B,
            16,
            bool(exact_mod._USE_TILES),
            *arrs,
            cache._vc,
            cache._sig,
            cache._vrms2,
            tau,
            0.0,
            t,
            512,
            keep,
            seg,
            nseg,
            cpart,
            np.zeros(1, dtype=np.int64),
            numba.get_num_threads(),
        )
        parts = cache._segments(Q, members, nq, scale, True, t - nq, seg, nseg)
    out = np.empty((Q.shape[0], nq, cache.value_dim), dtype=cache.dtype)
    lse = np.empty((Q.shape[0], nq))
    kk._merge((parts,), cpart, members, nq, out, lse)
    e_row = np.empty((h, R))
    seps = cache._score_eps(Q, scale)
    kk._row_bounds(
        bw,
        bs2,
        bt,
        bex,
        cache._vc,
        cache._sig,
        cache._vrms2,
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
    y = out.reshape(h, R, -1).astype(np.float64)
    drop = (keep == 0)[:, :, None]
    sh = 0.5 * (bex - 1 / bex)
    dist = np.linalg.norm(cache._vc[:, :nbc, None, :] - y[:, None], axis=3)
    sig = cache._sig[:, :nbc, None]
    cen = bex * np.minimum(sig * np.sqrt(bs2), bt)
    spread = np.sqrt(np.maximum(bs2 * (1 + 1e-4) - bw**2 * (1 - 2e-4) / B, 0.0))
    cen = np.minimum(cen, sig * (spread + (bex - 1) * np.sqrt(bs2 * (1 + 1e-4))))
    cost = (bw * sh * dist + cen) * drop
    slack = (bw * sh * drop).sum(axis=1)
    dlo = (np.exp(lse.reshape(h, R) - cpart[:, :, 0] - 2 * seps) - slack) * (1 - 1e-3)
    quad = np.sqrt((cost**2).sum(axis=1)) / dlo
    pad2 = cache._pad(Q, out, scale)[0] ** 2
    return (
        out,
        math.sqrt(float((e_row**2).sum()) + pad2),
        math.sqrt(float((quad**2).sum()) + pad2),
    )


def coverage(n_runs, delta=0.01, level=1e-3):
    """Seeded runs over layers, positions, n_q and tol; bound vs quadrature control."""
    layers = (0, 3, 7, 10, 14, 18, 21, 25, 29)
    heads = load_smollm2_heads(8192, layers=list(layers))
    fails = ctrl_fails = 0
    ratios = []
    for seed in range(n_runs):
        rng = np.random.default_rng(seed)
        li = int(rng.integers(len(layers)))
        g = int(rng.integers(3))
        m = int(rng.integers(1024, 8193))
        nq = int(rng.choice([1, 16]))
        tol = float(rng.choice(TOLS))
        K = np.ascontiguousarray(heads.K[li][g : g + 1, :m])
        V = np.ascontiguousarray(heads.V[li][g : g + 1, :m])
        Q = np.ascontiguousarray(heads.Q[li][3 * g : 3 * g + 3, m - nq : m])
        cache = KVCache(1, 64)
        cache.append(K, V)
        Y = _exact64(Q, K, V, heads.scale)
        out, bound, quad = _bound_and_control(cache, Q, tol, heads.scale)
        err = float(np.linalg.norm(out.astype(np.float64) - Y))
        fails += err > bound
        ctrl_fails += err > quad
        if err > 0:
            ratios.append(bound / err)
    p = float(binom.sf(fails - 1, n_runs, delta)) if fails else 1.0
    p_ctrl = float(binom.sf(ctrl_fails - 1, n_runs, delta)) if ctrl_fails else 1.0
    res = {
        "runs": n_runs,
        "failures": int(fails),
        "p_value": p,
        "passes": bool(p >= level),
        "control_failures": int(ctrl_fails),
        "control_p_value": p_ctrl,
        "control_passes": bool(p_ctrl >= level),
        "median_bound_over_actual": float(np.median(ratios)),
        "delta": delta,
        "level": level,
        "load": _load(),
    }
    print(json.dumps(res), flush=True)
    return res


def cold(n_copies=40, m=8192, repeats=5):
    """Decode steps with the caches out of the CPU caches, as in a many-layer model.

    ``n_copies`` distinct copies of the five layers' caches (``n_copies x 12.6 MB`` of
    float32 ``K + V`` at ``m = 8192``, more than the last-level cache) are visited in
    turn, one step each (one query, as generating one token through ``n_copies``
    layers); per repeat the exact kernel visits all of them, then the cache. Returns the
    ratio of the summed times (median over repeats), forced certified steps and the
    default routing, per ``tol``.
    """
    heads = load_smollm2_heads(8192, layers=list(LAYERS))
    items = []
    for c in range(n_copies):
        li = c % len(LAYERS)
        K = np.array(heads.K[li][:, :m], order="C")
        V = np.array(heads.V[li][:, :m], order="C")
        Q = np.array(heads.Q[li][:, m - 1 : m], order="C")
        cache = KVCache(3, 64)
        cache.append(K, V)
        items.append((Q, K, V, cache))
    rows = []
    for tol in TOLS:
        for mode in ("step", "policy"):
            ratios, fr = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                for Q, K, V, _cache in items:
                    softmax_attention(Q, K, V, causal=True, scale=heads.scale)
                te = time.perf_counter() - t
                t = time.perf_counter()
                for Q, _, _, cache in items:
                    if mode == "step":
                        cache._skip = 0
                        with _forced():
                            r = cache.attend(Q, tol=tol, scale=heads.scale)
                    else:
                        r = cache.attend(Q, tol=tol, scale=heads.scale)
                    fr.append(float(r.cost.key_fraction[0]))
                tm = time.perf_counter() - t
                ratios.append(tm / te)
            row = {
                "tol": tol,
                "mode": mode,
                "copies": n_copies,
                "m": m,
                "time_ratio": float(np.median(ratios)),
                "exact_ms_per_step": 1e3 * te / n_copies,
                "key_fraction": float(np.mean(fr)),
                "load": _load(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def append_cost(m=8192, n_tokens=1024):
    heads = load_smollm2_heads(8192, layers=[14])
    K, V = heads.K[0], heads.V[0]
    cache = KVCache(3, 64, capacity=m + n_tokens)
    cache.append(K[:, : m - n_tokens], V[:, : m - n_tokens])
    t = time.perf_counter()
    for j in range(m - n_tokens, m):
        cache.append(K[:, j], V[:, j])
    per_token = (time.perf_counter() - t) / n_tokens
    bulk = KVCache(3, 64)
    t = time.perf_counter()
    bulk.append(K[:, :m], V[:, :m])
    t_bulk = time.perf_counter() - t
    Q = np.ascontiguousarray(heads.Q[0][:, m - 1 : m])
    Ks, Vs = np.ascontiguousarray(K[:, :m]), np.ascontiguousarray(V[:, :m])
    te = []
    for _ in range(20):
        t = time.perf_counter()
        softmax_attention(Q, Ks, Vs, causal=True, scale=heads.scale)
        te.append(time.perf_counter() - t)
    res = {
        "m": m,
        "append_us_per_token": 1e6 * per_token,
        "bulk_append_ms": 1e3 * t_bulk,
        "exact_step_ms": 1e3 * float(np.median(te)),
        "load": _load(),
    }
    print(json.dumps(res), flush=True)
    return res


# ------------------------------------------------------------------ potential


def _suffix(order, x, op=np.cumsum):
    """Tail sums (or maxima) ``out[k] = op over x[order[k:]]``, ``out[len] = 0``."""
    tail = op(x[order][::-1], axis=0)[::-1]
    return np.concatenate([tail, np.zeros((1, *x.shape[1:]))])


def _row_potential(q, K, V, scale, tol, log_term, block=64):
    """Key fractions one query row could reach at ``tol`` (NumPy, float64).

    * ``block_oracle``: blocks dropped in increasing order of their exact mass
      (renormalised, no centroid), the smallest kept fraction with relative error
      ``<= tol`` (selection for free, at the cache's block granularity);
    * ``box_det``: a Quest-style pilot (per-block channel minima / maxima, ``2 d``
      numbers per block): score bounds ``sum_e max(q_e lo_e, q_e hi_e)`` (and min), the
      deterministic row-lemma bound with centroids, blocks dropped in increasing order
      of the upper bound while it stays ``<= tol ||y||``;
    * ``sample_box`` / ``sample_ideal``: keep the top blocks (by the box upper bound /
      by the exact mass), estimate the rest by importance sampling with proposal
      ``p_j`` proportional to the box bound (uniform in a block) / to the exact weight
      (the ideal pilot); ``X = (w_j / p_j)(v_j - y)`` gives ``y~ - y = (mean X - E X) /
      Z~`` exactly. The sample size ``n`` is the smallest with the known-variance
      Bernstein width ``sqrt(2 s2 L / n) + 2 b L / (3 n) <= 0.9 tol ||y|| Z`` (Hilbert-
      space Bernstein, Pinelis 1994; ``s2 = E||X - EX||^2``, ``b`` the range of
      ``||X - EX||``): a lower bound on what an empirical-Bernstein certificate needs.
      The fraction is ``(kept keys + n) / m``, minimised over the number of kept blocks.
    """
    m, d = K.shape
    nb = m // block
    s = scale * (K @ q)
    smax = s.max()
    w = np.exp(s - smax)
    Z = w.sum()
    y = w @ V / Z
    budget = tol * np.linalg.norm(y)
    Kb = K[: nb * block].reshape(nb, block, d)
    Vb = V[: nb * block].reshape(nb, block, -1)
    wb = w[: nb * block].reshape(nb, block)
    sb = s[: nb * block].reshape(nb, block) - smax
    qs = scale * q
    lo, hi = qs * Kb.min(1), qs * Kb.max(1)
    ub = np.maximum(lo, hi).sum(1) - smax
    lb = np.minimum(lo, hi).sum(1) - smax
    W = wb.sum(1)
    dev = np.linalg.norm(Vb - y, axis=2)
    vc = Vb.mean(1)
    udev = np.linalg.norm(Vb - vc[:, None], axis=2).max(1)
    out = {}
    num = np.zeros_like(y)
    zd, nd = 0.0, 0
    for b in np.argsort(W):
        num2, zd2 = num + wb[b] @ (Vb[b] - y), zd + W[b]
        if Z - zd2 <= 0 or np.linalg.norm(num2) > budget * (Z - zd2):
            break
        num, zd, nd = num2, zd2, nd + 1
    out["block_oracle"] = 1.0 - nd * block / m
    mub, mlb = block * np.exp(ub), block * np.exp(lb)
    cost = 0.5 * (mub - mlb) * np.linalg.norm(vc - y, axis=1) + mub * udev
    order = np.argsort(ub)
    zk = np.maximum(Z - np.concatenate([[0.0], np.cumsum(W[order])]), 1e-300)
    ok = np.concatenate([[0.0], np.cumsum(cost[order])]) <= budget * zk
    out["box_det"] = 1.0 - int(np.max(np.nonzero(ok)[0])) * block / m
    target = 0.9 * budget * Z
    mu_b = np.einsum("bj,bje->be", wb, Vb - y)
    for name, rank in (("box", ub), ("ideal", np.log(np.maximum(W, 1e-300)))):
        order = np.argsort(-rank)
        mu = _suffix(order, mu_b)
        if name == "box":
            u_tail = _suffix(order, block * np.exp(ub))
            e2 = u_tail * _suffix(order, (wb * np.exp(sb - ub[:, None]) * dev**2).sum(1))
            rel = (np.exp(sb - ub[:, None]) * dev).max(1)
            top = u_tail * _suffix(order, rel, np.maximum.accumulate)
        else:
            w_tail = _suffix(order, W)
            e2 = w_tail * _suffix(order, (wb * dev**2).sum(1))
            top = w_tail * _suffix(order, dev.max(1), np.maximum.accumulate)
        mun = np.linalg.norm(mu, axis=1)
        s2 = np.maximum(e2 - mun**2, 0.0)
        a, c = np.sqrt(2.0 * s2 * log_term), 2.0 * (top + mun) * log_term / 3.0
        x = (a + np.sqrt(a * a + 4.0 * target * c)) / (2.0 * target)
        n = np.ceil(x * x)
        n[-1] = 0
        frac = (np.arange(nb + 1) * block + n) / m
        k = int(np.argmin(frac))
        best = (float(frac[k]), int(n[k]))
        out[f"sample_{name}"], out[f"n_{name}"] = best
    return out


def _lowrank_radius(K, Q, scale, ranks=(8, 16, 24), fit=2048):
    """Median score radius ``scale ||q_perp|| ||k_perp,j||`` of a rank-``r`` key pilot.

    Basis: top right singular vectors of the first ``fit`` keys of each head (the
    cache prefix); returns ``{r: (median radius, max actual score error)}`` over keys and
    query rows.
    """
    out = {}
    gs = Q.shape[0] // K.shape[0]
    for r in ranks:
        rad, act = [], []
        for g in range(K.shape[0]):
            k = K[g].astype(np.float64)
            P = np.linalg.svd(k[:fit], full_matrices=False)[2][:r].T
            kperp = np.linalg.norm(k - (k @ P) @ P.T, axis=1)
            for a in range(gs):
                q = Q[g * gs + a].astype(np.float64)
                qperp = np.linalg.norm(q - P @ (P.T @ q))
                rad.append(float(np.median(scale * qperp * kperp)))
                act.append(float(np.abs(scale * ((k @ P) @ (P.T @ q) - k @ q)).max()))
        out[r] = (float(np.mean(rad)), float(np.mean(act)))
    return out


def _step_split(cache, Q, tol, scale, repeats=60):
    """One-thread time split of a certified step: pilot, selection, kept part, rest (ms).

    Pilot scoring alone (:func:`attention._kernels.kvcache._pilot_kernel`), the fused
    pilot and selection call, the kept-segment / merge / bound call, the whole step and
    the exact kernel, medians of interleaved repeats.
    """
    h, nq = cache.n_kv_heads, Q.shape[1]
    R, t, B = (Q.shape[0] // h) * nq, len(cache), cache.block
    nbc = t // B
    qs = Q.reshape(h, R, -1).astype(np.float64) * scale
    arrs = [np.empty((h, nbc, R)) for _ in range(6)]
    times = {"pilot_scoring": [], "pilot_select": [], "kept_and_bound": []}
    tm, te = [], []
    orig = kvmod._pilot_select, kvmod._attend_bound

    def timed(name, fn):
        def run(*args):
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)

        return run

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    kvmod._pilot_select = timed("pilot_select", orig[0])
    kvmod._attend_bound = timed("kept_and_bound", orig[1])
    try:
        with _forced():
            for _ in range(repeats):
                t0 = time.perf_counter()
                kk._pilot_kernel(
                    qs,
                    cache._codes,
                    cache._qscale,
                    cache._qres,
                    cache._rho,
                    cache._udev,
                    nbc,
                    B,
                    16,
                    bool(exact_mod._USE_TILES),
                    *arrs,
                    np.zeros(1, np.int64),
                    1,
                )
                times["pilot_scoring"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                softmax_attention(Q, cache.keys, cache.values, causal=True, scale=scale)
                te.append(time.perf_counter() - t0)
                cache._skip = 0
                t0 = time.perf_counter()
                res = cache.attend(Q, tol=tol, scale=scale)
                tm.append(time.perf_counter() - t0)
    finally:
        kvmod._pilot_select, kvmod._attend_bound = orig
        numba.set_num_threads(threads)
    row = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    row.update(
        step=1e3 * float(np.median(tm)),
        exact=1e3 * float(np.median(te)),
        step_over_exact=float(np.median(np.array(tm) / np.array(te))),
        key_fraction=float(res.cost.key_fraction[0]),
    )
    row["rest"] = row["step"] - row["pilot_select"] - row["kept_and_bound"]
    return row


def potential(ms=(2048, 8192), layers=LAYERS, delta=0.01):
    """Measure what a cheaper pilot or a sampled tail could reach (one query, next token).

    Per case and ``tol``: means over the query heads of :func:`_row_potential`, the
    oracle top-k fraction, the rank-``r`` projection pilot's radius, and the one-thread
    time split of today's certified step (:func:`_step_split`).
    """
    heads = load_smollm2_heads(8192, layers=list(layers))
    cases = []
    for m in ms:
        for li, layer in enumerate(heads.layers):
            Q = np.ascontiguousarray(heads.Q[li][:, m - 1 : m])
            K = np.ascontiguousarray(heads.K[li][:, :m])
            V = np.ascontiguousarray(heads.V[li][:, :m])
            cases.append((f"real m={m} L{int(layer)}", Q, K, V, heads.scale, True))
    Q, K, V = _synthetic_heads(32768)
    cases.append(("synthetic m=32768", np.ascontiguousarray(Q[:, -1:]), K, V, 0.125, False))
    rows = []
    for name, Q, K, V, scale, oracle in cases:
        gs = Q.shape[0] // K.shape[0]
        log_term = math.log(2.0 * Q.shape[0] / delta)
        cache = KVCache(K.shape[0], K.shape[2], V.shape[2])
        cache.append(K, V)
        radius = _lowrank_radius(K, Q[:, 0], scale) if "L" in name else {}
        for tol in TOLS:
            per = [
                _row_potential(
                    Q[g, 0].astype(np.float64),
                    K[g // gs].astype(np.float64),
                    V[g // gs].astype(np.float64),
                    scale,
                    tol,
                    log_term,
                )
                for g in range(Q.shape[0])
            ]
            row = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
            row.update(case=name, m=K.shape[1], tol=tol)
            if oracle:
                row["oracle_fraction"] = float(
                    np.mean(
                        [
                            _oracle_fraction(Q[g], K[g // gs], V[g // gs], scale, tol)
                            for g in range(Q.shape[0])
                        ]
                    )
                )
            with _single_threaded_blas():
                row["split_ms"] = _step_split(cache, Q, tol, scale)
            row["lowrank_radius"] = {str(r): v for r, v in radius.items()}
            row["load"] = _load()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _md(data):
    lines = [
        "## Certified decode over a KVCache (9 query / 3 kv heads, float32)",
        "",
        "Time ratios: median over interleaved pairs of (cache step time / exact kernel time); "
        "*step*: a certified step with the pilot; *policy*: repeated calls (a step keeping "
        "> 15% makes the next 16 steps exact; caches < 4096 keys and > 16 stacked rows are "
        "read exactly).",
        "",
        "| case | tol | rel. error | bound/‖Y‖ | bound/actual | holds | ≤ tol | key frac. | "
        "bytes frac. | oracle frac. | step ratio | policy ratio | exact ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data.get("rows", []):
        lines.append(
            f"| {r['case']} | {r['tol']:g} | {r['rel_error']:.2e} | {r['rel_bound']:.2e} | "
            f"{r['bound_over_actual']:.2f} | {r['holds']} | {r['within_tol']} | "
            f"{r['key_fraction']:.2f} | {r['bytes_fraction']:.2f} | "
            f"{r.get('oracle_fraction', float('nan')):.2f} | "
            f"{r.get('step_ratio', float('nan')):.2f} | "
            f"{r.get('policy_ratio', float('nan')):.2f} | "
            f"{r.get('exact_ms', float('nan')):.3f} | {r['load']:.1f} |"
        )
    cov = data.get("coverage")
    if cov:
        lines += ["", "## Coverage", "", "```", json.dumps(cov, indent=1), "```"]
    if data.get("cold"):
        lines += [
            "",
            "## Caches out of the CPU caches (one query, 40 copies of the 5 layers' caches)",
            "",
            "| tol | mode | time ratio (cache / exact, summed over copies) | key frac. | "
            "exact ms per step | load |",
            "|---|---|---|---|---|---|",
        ]
        for r in data["cold"]:
            lines.append(
                f"| {r['tol']:g} | {r['mode']} | {r['time_ratio']:.2f} | "
                f"{r['key_fraction']:.2f} | {r['exact_ms_per_step']:.3f} | {r['load']:.1f} |"
            )
    app = data.get("append")
    if app:
        lines += ["", "## Append", "", "```", json.dumps(app, indent=1), "```"]
    if data.get("potential"):
        lines += [
            "",
            "## Potential of a cheaper pilot or a sampled tail (one query, next token)",
            "",
            "Key fractions, means over the query heads (see `_row_potential`): *block "
            "oracle* drops whole 64-key blocks by exact mass; *box det.*: a per-block "
            "channel min/max pilot with the deterministic row-lemma bound; *sampled tail*: "
            "top blocks kept, the rest estimated by importance sampling (proposal from the "
            "box bounds / from the exact weights = an ideal pilot), `(kept + n) / m` with "
            "the known-variance Bernstein sample size `n` (delta = 0.01). Time split of "
            "today's certified step on one thread (ms): pilot scoring alone, pilot + "
            "selection call, kept blocks + merge + bound call, whole step, exact kernel.",
            "",
            "| case | tol | oracle top-k | block oracle | box det. | sampled tail, box "
            "(n) | sampled tail, ideal (n) | certified step | pilot | pilot+select | "
            "kept+bound | step | exact | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["potential"]:
            sp = r["split_ms"]
            lines.append(
                f"| {r['case']} | {r['tol']:g} | {r.get('oracle_fraction', float('nan')):.2f} | "
                f"{r['block_oracle']:.2f} | {r['box_det']:.2f} | "
                f"{r['sample_box']:.2f} ({r['n_box']:.0f}) | "
                f"{r['sample_ideal']:.2f} ({r['n_ideal']:.0f}) | {sp['key_fraction']:.2f} | "
                f"{sp['pilot_scoring']:.3f} | {sp['pilot_select']:.3f} | "
                f"{sp['kept_and_bound']:.3f} | {sp['step']:.3f} | {sp['exact']:.3f} | "
                f"{r['load']:.1f} |"
            )
        radius = [r for r in data["potential"] if r.get("lowrank_radius") and r["tol"] == TOLS[0]]
        if radius:
            lines += [
                "",
                "Rank-r key projection pilot (basis from the first 2048 keys): median proven "
                "score radius / largest actual score error, in logits:",
                "",
                "| case | " + " | ".join(f"r = {k}" for k in radius[0]["lowrank_radius"]) + " |",
                "|---|" + "---|" * len(radius[0]["lowrank_radius"]),
            ]
            for r in radius:
                cells = " | ".join(
                    f"{v[0]:.1f} / {v[1]:.1f}" for v in r["lowrank_radius"].values()
                )
                lines.append(f"| {r['case']} | {cells} |")
    return "\n".join(lines) + "\n"


def _summary_rst(data):
    rows = data.get("rows", [])
    lines = [
        ".. list-table:: Certified decode over a ``KVCache`` (SmolLM2 layers 0/7/14/21/29, "
        "9 query / 3 kv heads, float32; means over layers; time ratios: medians of "
        "interleaved pairs against the exact kernel, above 1 = slower)",
        "   :header-rows: 1",
        "",
        "   * - cases",
        "     - tol",
        "     - bound holds, <= tol",
        "     - median bound/actual",
        "     - key fraction",
        "     - bytes read / exact",
        "     - oracle top-k fraction",
        "     - step time / exact",
        "     - policy time / exact",
        "     - load",
    ]
    groups = sorted({(r["case"].rsplit(" L", 1)[0], r["nq"]) for r in rows if "L" in r["case"]})
    groups += sorted({(r["case"], r["nq"]) for r in rows if "synthetic" in r["case"]})
    for prefix, nq in groups:
        for tol in TOLS:
            rs = [
                r
                for r in rows
                if r["case"].startswith(prefix) and r["nq"] == nq and r["tol"] == tol
            ]
            if not rs:
                continue
            label = prefix if "synthetic" in prefix else f"{prefix} nq={nq}"
            orc = [r["oracle_fraction"] for r in rs if "oracle_fraction" in r]
            lines += [
                f"   * - {label}",
                f"     - {tol:g}",
                f"     - {sum(r['holds'] for r in rs)}/{len(rs)}, "
                f"{sum(r['within_tol'] for r in rs)}/{len(rs)}",
                f"     - {np.median([r['bound_over_actual'] for r in rs]):.2f}",
                f"     - {np.mean([r['key_fraction'] for r in rs]):.2f}",
                f"     - {np.mean([r['bytes_fraction'] for r in rs]):.2f}",
                f"     - {np.mean(orc):.2f}" if orc else "     - n/a",
                f"     - {np.median([r.get('step_ratio', np.nan) for r in rs]):.2f}",
                f"     - {np.median([r.get('policy_ratio', np.nan) for r in rs]):.2f}",
                f"     - {np.mean([r['load'] for r in rs]):.1f}",
            ]
    if data.get("cold"):
        lines += [
            "",
            ".. list-table:: Caches out of the CPU caches: one query per step, 40 copies of "
            "the five layers' caches visited in turn (504 MB of K + V), summed time against "
            "the exact kernel over the same copies (median of 5 repeats; above 1 = slower)",
            "   :header-rows: 1",
            "",
            "   * - tol",
            "     - certified step / exact",
            "     - key fraction",
            "     - default routing / exact",
            "     - exact ms per step",
            "     - load",
        ]
        for tol in TOLS:
            st = [r for r in data["cold"] if r["tol"] == tol and r["mode"] == "step"]
            po = [r for r in data["cold"] if r["tol"] == tol and r["mode"] == "policy"]
            if not st or not po:
                continue
            lines += [
                f"   * - {tol:g}",
                f"     - {st[0]['time_ratio']:.2f}",
                f"     - {st[0]['key_fraction']:.2f}",
                f"     - {po[0]['time_ratio']:.2f}",
                f"     - {st[0]['exact_ms_per_step']:.3f}",
                f"     - {st[0]['load']:.1f}",
            ]
    return "\n".join(lines) + "\n"


def _potential_rst(data):
    pot = data.get("potential", [])
    groups = sorted({r["case"].rsplit(" L", 1)[0] for r in pot})
    lines = []
    if pot:
        lines += [
            ".. list-table:: What a cheaper pilot or a sampled tail could reach (one query; "
            "key fractions, means over layers 0/7/14/21/29 and query heads; sampled tail: "
            "known-variance Bernstein sample size at delta = 0.01, a lower bound for an "
            "empirical certificate; pilot: the int8 pilot's share of today's step, one "
            "thread)",
            "   :header-rows: 1",
            "",
            "   * - cases",
            "     - tol",
            "     - oracle top-k",
            "     - block oracle",
            "     - box pilot, deterministic",
            "     - box pilot + sampled tail",
            "     - ideal pilot + sampled tail",
            "     - today's certified step",
            "     - pilot scoring / exact time",
            "     - load",
        ]
        for prefix in groups:
            for tol in TOLS:
                rs = [r for r in pot if r["case"].startswith(prefix) and r["tol"] == tol]
                if not rs:
                    continue
                orc = [r["oracle_fraction"] for r in rs if "oracle_fraction" in r]
                lines += [
                    f"   * - {prefix}",
                    f"     - {tol:g}",
                    f"     - {np.mean(orc):.2f}" if orc else "     - n/a",
                    f"     - {np.mean([r['block_oracle'] for r in rs]):.2f}",
                    f"     - {np.mean([r['box_det'] for r in rs]):.2f}",
                    f"     - {np.mean([r['sample_box'] for r in rs]):.2f}",
                    f"     - {np.mean([r['sample_ideal'] for r in rs]):.2f}",
                    f"     - {np.mean([r['split_ms']['key_fraction'] for r in rs]):.2f}",
                    "     - "
                    + f"{np.median([r['split_ms']['pilot_scoring'] / r['split_ms']['exact'] for r in rs]):.2f}",  # noqa: E501
                    f"     - {np.mean([r['load'] for r in rs]):.1f}",
                ]
    return "\n".join(lines) + "\n"


def render():
    data = json.loads((RESULTS / "attention_kvcache.json").read_text())
    (RESULTS / "attention_kvcache.md").write_text(_md(data))
    (RESULTS / "attention_kvcache_summary.rst").write_text(_summary_rst(data))
    (RESULTS / "attention_kvcache_potential.rst").write_text(_potential_rst(data))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=("real", "synthetic", "coverage", "append", "cold", "potential", "all"),
        default="all",
    )
    parser.add_argument("--pairs", type=int, default=20, help="interleaved timing pairs")
    parser.add_argument("--coverage", type=int, default=200, help="seeded coverage runs")
    parser.add_argument("--quick", action="store_true", help="m = 2048, 2 layers, 3 pairs")
    parser.add_argument("--ms", type=int, nargs="*", default=[2048, 8192], help="real m")
    parser.add_argument(
        "--layers", type=int, nargs="*", default=list(LAYERS), help="real: SmolLM2 layers"
    )
    parser.add_argument("--merge", action="store_true", help="keep the stored other parts")
    parser.add_argument("--render", action="store_true", help="only rewrite the tables")
    parser.add_argument("--results", default=None, help="output directory")
    args = parser.parse_args(argv)
    global RESULTS
    if args.results is not None:
        RESULTS = Path(args.results)
    RESULTS.mkdir(exist_ok=True)
    if args.render:
        render()
        return
    path = RESULTS / "attention_kvcache.json"
    data = json.loads(path.read_text()) if args.merge and path.exists() else {}
    part = args.part
    if part in ("real", "all"):
        ms = (2048,) if args.quick else tuple(args.ms)
        layers = (0, 14) if args.quick else tuple(args.layers)
        names = {f"real m={m} L{layer} " for m in ms for layer in layers}
        old = [
            r for r in data.get("rows", []) if r["case"][: r["case"].rfind(" ") + 1] not in names
        ]
        new = real(3 if args.quick else args.pairs, ms=ms, layers=layers)
        data["rows"] = new + old
    if part in ("synthetic", "all"):
        old = [r for r in data.get("rows", []) if not r["case"].startswith("synthetic")]
        data["rows"] = old + synthetic(3 if args.quick else args.pairs)
    if part in ("coverage", "all"):
        data["coverage"] = coverage(20 if args.quick else args.coverage)
    if part in ("append", "all"):
        data["append"] = append_cost()
    if part in ("cold", "all"):
        data["cold"] = cold(8 if args.quick else 40)
    if part in ("potential", "all"):
        data["potential"] = potential(ms=(2048,) if args.quick else tuple(args.ms))
    data["threads"] = numba.get_num_threads()
    path.write_text(json.dumps(data, indent=1))
    render()


if __name__ == "__main__":
    main()
