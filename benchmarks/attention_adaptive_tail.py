r"""Sampled tails for certified prefill: how many keys would they need on SmolLM2 heads.

The certified prefill estimator of :mod:`attention.adaptive` forms every score; its cost
is bounded below by the score GEMMs and the exponentials (about 0.81 of exact
attention). The only way to go faster is to leave scores unformed: keep some key blocks
exactly and *sample* the others. This study measures, on real SmolLM2 causal heads, the
fewest key evaluations a sampled tail needs to certify ``||Y - Y~||_F <= tol ||Y||_F``
with probability ``1 - delta``, under assumptions that all favour the sampler.

Model (float64, per *task* of 48 consecutive query rows as in the estimator): the sink
block, the last fully visible 64-key block and the causal diagonal are kept; of the other
(*candidate*) 64-key blocks the first ``b`` in a ranking are kept, the rest form the tail
``T``. ``s`` keys are drawn i.i.d. from a proposal ``p`` over ``T`` and shared by the 48
rows (one gathered GEMM per task). With ``a_ij = w_ij ||v_j - y_i|| / D_i`` (exact
weights ``w``, normaliser ``D``, output ``y``), the importance-sampling estimate of row
``i``'s tail has the error variance

.. math::

    V_i = \sum_{j\in T} a_{ij}^2 / p_j - \|x_i\|^2, \qquad
    x_i = \sum_{j\in T} w_{ij}(v_j - y_i)/D_i,

taken *exactly* (an implementable method must estimate it), the ideal centring
``c_i = y_i`` and the denominator's fluctuation ignored (both favour the sampler). A task
spends ``sum_i (kept keys + s)`` key evaluations. Error models of the sampled tail:

* ``clt``: the CLT plug-in ``z^2 V_i / s``, ``z = Phi^{-1}(1 - delta/2)`` (vAttention's
  rule; not a finite-sample bound: a lower reference);
* ``eb``: the empirical-Bernstein shape (Maurer and Pontil 2009) with the true variance
  and the true range ``B_i = max_{j in T} a_ij / p_j``:
  ``(sqrt(2 V_i L / s) + 7 B_i L / (3 (s - 1)))^2`` with ``L = ln(2 N / delta)``, a union
  bound over the ``N`` query rows of the layer.

Proposals and rankings:

* ``ideal``: the best shared proposal ``p_j \propto (sum_i a_ij^2)^{1/2}`` and blocks
  ranked by their true share (needs every score: unreachable, a bound on any pilot);
* ``box``: Quest's channel boxes of each key block, ``ub_ib = scale sum_e
  max(q_ie lo_be, q_ie hi_be) >= max_{j in b} s_ij`` (``2 d`` flops per row and block,
  1/32 of the scores), block weight ``u_b = sum_i exp(ub_ib - M^h_i) / D^h_i`` from the
  kept blocks' maximum and normaliser, uniform within the block.

The budget is allocated *globally* over the tasks of a layer: for each task every option
``(b, s)`` (``s`` on a geometric grid) and "all exact" is a point (cost, squared error);
a Lagrange multiplier is bisected so that the summed squared error is at most
``(0.95 tol / (1 + tol))^2 ||Y||_F^2`` (the estimator's budget), and each task takes its
cheapest point for it. Reported: key evaluations over visible keys (``fraction``; its
inverse is the speed-up ceiling before any proposal cost), per layer and over all.

Run (no timing, no lock needed): ``python -m benchmarks.attention_adaptive_tail``
(``--ns 4096 8192``, ``--stride K`` every K-th task of each head, default 4;
``--heads`` query heads; ``--merge`` keeps the stored rows of other lengths; the stored
results used ``--ns 4096 --stride 8`` and ``--ns 8192 --stride 16 --merge``, about 100
tasks of 48 rows per layer, 3-4 minutes each). Results:
``benchmarks/results/attention_adaptive_tail.{json,md}`` and the docs summary
``attention_adaptive_tail_summary.rst``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = (0, 7, 14, 21, 29)
TOLS = (1e-2, 3e-2, 1e-1)
VARIANTS = ("ideal_clt", "box_clt", "ideal_eb", "box_eb")
BQ, BK = 48, 64  # rows per task, keys per block (as the estimator)
DELTA = 0.01
S_GRID = np.unique(np.round(np.geomspace(8, 16384, 40))).astype(np.int64)


class Task(NamedTuple):
    """One task of the study: rows, weights and the ranked tail (see :func:`task_setup`)."""

    visible: int  # visible keys summed over the rows
    ynorm2: float  # ||Y_task||_F^2
    keys: np.ndarray  # (C, BK) key indices of the candidate blocks, in ranked order
    a: np.ndarray  # (rows, C, BK) a_ij = w_ij ||v_j - y_i|| / D_i, ranked
    x: np.ndarray  # (rows, C, dv) block sums of w_ij (v_j - y_i) / D_i, ranked
    weight: np.ndarray  # (C, BK) unnormalised proposal over the candidate keys, ranked
    y: np.ndarray  # (rows, dv) exact output rows
    wn: np.ndarray  # (rows, C, BK) w_ij / D_i, ranked


def task_setup(q, k, v, scale, rows, proposal):
    """Exact weights of one task and its candidate blocks ranked by ``proposal``.

    ``q (n, d)``, ``k (m, d)``, ``v (m, dv)`` float64 of one head (causal, the last ``n``
    keys aligned with the queries), ``rows`` consecutive query rows, ``proposal``
    ``"ideal"`` or ``"box"`` (see the module notes).
    """
    n, m = q.shape[0], k.shape[0]
    off = m - n
    vis = rows[-1] + off + 1
    kk, vv = k[:vis], v[:vis]
    s = (q[rows] @ kk.T) * scale
    visible = np.arange(vis)[None, :] <= rows[:, None] + off
    s = np.where(visible, s, -np.inf)
    M = s.max(axis=1, keepdims=True)
    w = np.exp(s - M)
    D = w.sum(axis=1, keepdims=True)
    y = (w @ vv) / D
    nfull = (rows[0] + off + 1) // BK
    cand = np.arange(1, max(nfull - 1, 1))  # sink, last full block and diagonal kept
    C = cand.size
    keys = cand[:, None] * BK + np.arange(BK)
    flat = keys.reshape(-1)
    dist2 = (vv[flat] ** 2).sum(1)[None, :] - 2.0 * (y @ vv[flat].T) + (y * y).sum(1)[:, None]
    wn = (w[:, flat] / D).reshape(rows.size, C, BK)
    a = wn * np.sqrt(np.maximum(dist2, 0.0)).reshape(rows.size, C, BK)
    vb = vv[flat].reshape(C, BK, vv.shape[1])
    x = np.einsum("rbj,bjd->rbd", wn, vb) - wn.sum(2)[:, :, None] * y[:, None, :]
    if proposal == "ideal":
        weight = np.sqrt((a * a).sum(0))  # (C, BK): the best shared proposal
        rank = weight.sum(1)
    else:
        lo, hi = box_bounds(kk, cand)
        qs = q[rows] * scale
        ub = np.maximum(qs[:, None, :] * lo[None], qs[:, None, :] * hi[None]).sum(2)
        forced = np.setdiff1d(np.arange(-(-vis // BK)), cand)
        fkeys = np.concatenate([np.arange(b * BK, min(vis, (b + 1) * BK)) for b in forced])
        sf = s[:, fkeys]
        Mh = sf.max(axis=1, keepdims=True)
        Dh = np.exp(sf - Mh).sum(axis=1, keepdims=True)
        rank = (np.exp(ub - Mh) / Dh).sum(0) if C else np.zeros(0)
        weight = np.repeat(rank[:, None], BK, axis=1)
    order = np.argsort(-rank, kind="stable")
    return Task(
        int(visible.sum()),
        float((y * y).sum()),
        keys[order],
        a[:, order],
        x[:, order],
        weight[order],
        y,
        wn[:, order],
    )


def box_bounds(k, blocks):
    """Channel-wise minima and maxima ``(C, d)`` of the keys of each 64-key block."""
    kb = k[(blocks[:, None] * BK + np.arange(BK)).reshape(-1)].reshape(blocks.size, BK, k.shape[1])
    return kb.min(1), kb.max(1)


def task_terms(task):
    """Per-row variance and range of the sampled tail for every kept count.

    Returns ``(var, rng)`` of shape ``(rows, C)``: column ``b`` holds ``V_i`` and ``B_i``
    when the first ``b`` ranked candidate blocks are kept and the proposal (``weight``
    normalised over the tail) samples the others.
    """
    wo, ao, xo = task.weight, task.a, task.x
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(wo > 0, ao * ao / wo, np.where(ao > 0, np.inf, 0.0))
        r1 = np.where(wo > 0, ao / wo, np.where(ao > 0, np.inf, 0.0))
    # Suffix sums over the ranking: column b describes the tail "blocks b.. of the order".
    tail_w = np.cumsum(wo.sum(1)[::-1])[::-1]
    tail_r2 = np.cumsum(r2.sum(2)[:, ::-1], axis=1)[:, ::-1]
    tail_x = np.cumsum(xo[:, ::-1], axis=1)[:, ::-1]
    tail_r1 = np.maximum.accumulate(r1.max(2)[:, ::-1], axis=1)[:, ::-1]
    var = np.maximum(tail_w[None] * tail_r2 - (tail_x * tail_x).sum(2), 0.0)
    rng = tail_w[None] * tail_r1
    return var, rng


def task_options(visible, nr, C, var, rng, model, log_term):
    """Options ``(cost, squared error)`` of one task: ``(b, s)`` pairs plus all kept.

    ``cost`` counts key evaluations summed over the ``nr`` rows; ``model`` is ``"clt"``
    or ``"eb"``; ``log_term`` is ``z^2`` (clt) or ``L`` (eb).
    """
    cost = [np.array([float(visible)])]
    err2 = [np.array([0.0])]
    if C == 0:
        return cost[0], err2[0]
    s = S_GRID.astype(float)
    for b in range(C):
        kept_cost = visible - nr * (C - b) * BK  # kept keys (incl. the diagonal) per row
        V, B = var[:, b], rng[:, b]
        if model == "clt":
            e2 = log_term * V.sum() / s
        else:
            e = np.sqrt(2.0 * V[:, None] * log_term / s) + 7.0 * B[:, None] * log_term / (
                3.0 * (s - 1.0)
            )
            e2 = (e * e).sum(0)
        cost.append(kept_cost + nr * s)
        err2.append(e2)
    return np.concatenate(cost), np.concatenate(err2)


def allocate(options, budget):
    """Cheapest total cost with summed squared error <= budget (Lagrangian, bisection).

    ``options``: list of ``(cost, err2)`` arrays, one pair per task, each containing a
    zero-error point. Returns the total cost at the smallest multiplier found feasible.
    """

    def pick(lam):
        tot_c = tot_e = 0.0
        for c, e in options:
            j = int(np.argmin(c + lam * e))
            tot_c += c[j]
            tot_e += e[j]
        return tot_c, tot_e

    lo, hi = 1e-12, 1e30
    if not np.isfinite(budget) or budget <= 0:
        return sum(float(c[0]) for c, _ in options)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if pick(mid)[1] > budget:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-6:
            break
    return pick(hi)[0]


def layer_fractions(Q, K, V, scale, stride, heads):
    """Fractions ``{(tol, variant): key evaluations / visible keys}`` of one layer."""
    n = Q.shape[1]
    n_rows = Q.shape[0] * n
    z2 = NormalDist().inv_cdf(1.0 - DELTA / 2.0) ** 2
    L = math.log(2.0 * n_rows / DELTA)
    per = {p: [] for p in ("ideal", "box")}
    visible_total = 0
    ynorm2 = 0.0
    for h in heads:
        q = Q[h].astype(np.float64)
        k = K[h * K.shape[0] // Q.shape[0]].astype(np.float64)
        v = V[h * V.shape[0] // Q.shape[0]].astype(np.float64)
        for t, r0 in enumerate(range(0, n, BQ)):
            if t % stride:
                continue
            rows = np.arange(r0, min(n, r0 + BQ))
            for p in per:
                task = task_setup(q, k, v, scale, rows, p)
                var, rng = task_terms(task)
                per[p].append((task.visible, rows.size, task.keys.shape[0], var, rng))
            visible_total += task.visible
            ynorm2 += task.ynorm2
    out = {}
    for tol in TOLS:
        budget = (0.95 * tol / (1.0 + tol)) ** 2 * ynorm2
        for name in VARIANTS:
            p, model = name.split("_")
            log_term = z2 if model == "clt" else L
            opts = [task_options(*x, model, log_term) for x in per[p]]
            out[(tol, name)] = allocate(opts, budget) / visible_total
    return out


def run(ns, stride, heads):
    from attention.data import load_smollm2_heads

    rows = []
    for n in ns:
        data = load_smollm2_heads(n, layers=list(LAYERS))
        for li, layer in enumerate(data.layers):
            fr = layer_fractions(data.Q[li], data.K[li], data.V[li], data.scale, stride, heads)
            for tol in TOLS:
                row = {"n": n, "layer": int(layer), "tol": tol, "stride": stride}
                row.update({name: fr[(tol, name)] for name in VARIANTS})
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _estimator_and_oracle():
    """Estimator key fractions and oracle top-k fractions from the stored main results."""
    path = RESULTS / "attention_adaptive.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    ref = {}
    for r in data.get("prefill", []):
        ref[(r["n"], r["layer"], r["tol"])] = {"estimator": r.get("method_key_fraction")}
    for n, heads in data.get("oracle", {}).items():
        for key, fr in heads.items():
            layer = int(key.split(":")[0])
            for tol, f in fr.items():
                d = ref.setdefault((int(n), layer, float(tol)), {})
                d.setdefault("oracle_list", []).append(f)
    for d in ref.values():
        if "oracle_list" in d:
            d["oracle"] = float(np.mean(d.pop("oracle_list")))
    return ref


def _md(rows):
    ref = _estimator_and_oracle()
    head = (
        "| n | layer | tol | ideal, CLT | box, CLT | ideal, EB | box, EB | "
        "estimator (every score) | oracle top-k |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        e = ref.get((r["n"], r["layer"], r["tol"]), {})
        lines.append(
            f"| {r['n']} | {r['layer']} | {r['tol']:g} | "
            + " | ".join(f"{r[v]:.2f}" for v in VARIANTS)
            + f" | {e.get('estimator', math.nan):.2f} | {e.get('oracle', math.nan):.2f} |"
        )
    return (
        "## Sampled tail: key evaluations / visible keys (SmolLM2, all 9 heads per layer)\n\n"
        + head
        + "\n".join(lines)
        + "\n"
    )


def _summary_rst(rows):
    """Docs table: the mean over layers of every fraction, per (n, tol)."""
    ref = _estimator_and_oracle()
    lines = [
        ".. list-table:: Sampled tail on SmolLM2 heads: key evaluations over visible keys "
        "(mean over layers 0/7/14/21/29); every sampler column favours the sampler "
        "(exact variance, exact range, global budget)",
        "   :header-rows: 1",
        "",
        "   * - n",
        "     - tol",
        "     - ideal proposal, CLT plug-in (no bound)",
        "     - box proposal, CLT plug-in (no bound)",
        "     - ideal proposal, empirical Bernstein",
        "     - box proposal, empirical Bernstein",
        "     - deterministic estimator (forms every score)",
        "     - oracle top-k",
    ]
    for n in sorted({r["n"] for r in rows}):
        for tol in TOLS:
            sel = [r for r in rows if r["n"] == n and r["tol"] == tol]
            if not sel:
                continue
            est = [ref.get((n, r["layer"], tol), {}).get("estimator") for r in sel]
            orc = [ref.get((n, r["layer"], tol), {}).get("oracle") for r in sel]
            est_m = np.mean([x for x in est if x is not None]) if any(est) else math.nan
            orc_m = np.mean([x for x in orc if x is not None]) if any(orc) else math.nan
            lines.append(f"   * - {n}")
            lines.append(f"     - {tol:g}")
            for v in VARIANTS:
                lines.append(f"     - {np.mean([r[v] for r in sel]):.2f}")
            lines.append(f"     - {est_m:.2f}")
            lines.append(f"     - {orc_m:.2f}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--stride", type=int, default=4, help="every K-th task of 48 rows")
    parser.add_argument("--heads", type=int, nargs="*", default=list(range(9)))
    parser.add_argument("--results", default=None, help="output directory")
    parser.add_argument(
        "--merge", action="store_true", help="keep the stored rows of the other lengths"
    )
    args = parser.parse_args(argv)
    out = Path(args.results) if args.results is not None else RESULTS
    out.mkdir(exist_ok=True)
    rows = run(args.ns, args.stride, args.heads)
    path = out / "attention_adaptive_tail.json"
    if args.merge and path.exists():
        old = [r for r in json.loads(path.read_text()) if r["n"] not in args.ns]
        rows = sorted(old + rows, key=lambda r: (r["n"], r["layer"], r["tol"]))
    (out / "attention_adaptive_tail.json").write_text(json.dumps(rows, indent=1))
    (out / "attention_adaptive_tail.md").write_text(_md(rows))
    (out / "attention_adaptive_tail_summary.rst").write_text(_summary_rst(rows))


if __name__ == "__main__":
    main()
