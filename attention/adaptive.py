r"""Tolerance-driven certified attention: ask for ``tol``, get a certified output.

``approximate(Q, K, V, "adaptive", tol=..., delta=..., causal=..., rng=...)`` chooses its
own budget per query block so that the returned bound certifies

.. math::

    \|Y - \tilde Y\|_F \le \text{bound} \le \text{tol}\,\|Y\|_F .

The current estimator is deterministic (kind ``"deterministic"``, ``delta`` accepted
and unused): it holds for every input, without a failure probability.

**Estimator.** Query rows are processed in *tasks* (64 consecutive rows of one head in
prefill; for decode, ``n <= 16``, the rows of all query heads that share a key/value
head). Keys are split into blocks of 64. For every task:

* every visible score :math:`s_{ij}` is formed (GEMM), giving the exact row maximum
  :math:`M_i`, weights :math:`w_{ij} = e^{s_{ij} - M_i}` and the exact normaliser
  :math:`D_i = \sum_j w_{ij}`;
* a subset :math:`R` of key blocks is *dropped*: its product with ``V`` is replaced by
  the block's value centroid :math:`\bar v_b` times the block mass
  :math:`B_{ib} = \sum_{j \in b} w_{ij}`:

.. math::

    \tilde y_i = \frac{1}{D_i}\Big(\sum_{j \notin R} w_{ij} v_j
        + \sum_{b \in R} B_{ib}\,\bar v_b\Big).

The sink block (keys 0..63), the last fully visible block and every partly visible
block (the causal diagonal) are never dropped.

**Bound.** Exactly :math:`y_i - \tilde y_i = D_i^{-1}\sum_{b\in R} w_{ib}^\top U_b` with
:math:`U_b` the block's centred values (rows :math:`v_j - \bar v_b`), so

.. math::

    \|y_i - \tilde y_i\| \le e_i = \frac{1}{D_i}\sum_{b \in R}
        \min\Big(\sigma_b \|w_{ib}\|_2,\ \sum_{j \in b} w_{ij}\|v_j - \bar v_b\|\Big),

:math:`\sigma_b = \|U_b\|_2` (bounded above once per key/value head by
:math:`(\operatorname{tr} G_b^{16})^{1/32}` with :math:`G_b = U_b^\top U_b`, at most
:math:`64^{1/32} = 1.14` times :math:`\sigma_b`). ``bound`` is
:math:`(\sum_i e_i^2)^{1/2}` plus an allowance for floating-point rounding (see
``_rounding_pad``). This is the normaliser-aware row lemma with the normaliser exact,
sharpened per block by Cauchy-Schwarz.

**Budget.** Each task drops the blocks of smallest bound cost while
:math:`\|e_{task}\|_2 \le 0.9\,\tau\,\|\tilde y^{(0)}_{task}\|_F` (:math:`\tilde y^{(0)}`
the all-centroid output, a cheap proxy), with :math:`\tau = 0.95\,\text{tol}/(1+\text{tol})`,
and keeps them only if :math:`\|e_{task}\|_2 \le \tau \|\tilde Y_{task}\|_F` for the
computed output (otherwise it computes them exactly). Summing over tasks,
:math:`\text{bound} \le \text{tol}/(1+\text{tol})\,\|\tilde Y\|_F`, and since
:math:`\|Y\|_F \ge \|\tilde Y\|_F - \text{bound}`, ``bound <= tol * ||Y||_F`` without
an exact pass.

**Cost.** Every visible score and exponential (as exact attention), the products with
``V`` only over kept keys: the saving is at most the ``V`` half of the flops. Scores
of unevaluated keys cannot be certified cheaply on real heads: per-block score upper
bounds (key centroid and radius, or the Quest key box) exceed the true block maxima of
SmolLM2 heads by 11-18 (in units of the scaled score), so a certificate that skips
scores would have to treat ``e^{11}``-fold weights as possible.

**Causality.** A row never sees a future key's weight; the choice of dropped blocks is
shared by the 64 rows of a query block, so it can depend on keys that are future for
some rows of the same block (never for earlier blocks).

References
----------
The row lemma: ``y_i - y~_i = (a_i - a~_i)(V - 1 y_i^T) / z~_i``. Quest's key box bound:
J. Tang et al., "Quest: query-aware sparsity for efficient long-context LLM inference",
ICML 2024. Rounding model: N. J. Higham, T. Mary, "A new approach to probabilistic
rounding error analysis", SIAM J. Sci. Comput. 41 (2019).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from attention._core import Cost, ErrorBound, Problem
from attention._kernels.adaptive import _task_kernel, _value_summaries
from attention._registry import MethodResult, register
from attention.exact import _single_threaded_blas
from rnla._validation import AccuracyWarning

__all__: list[str] = []

_BK = 64  # keys per block
_BQ = 64  # query rows per prefill task
_DECODE_ROWS = 16  # n <= this: decode path (query heads of a kv group in one task)


def _check_tol(tol) -> float:
    if tol is None:
        raise TypeError("method 'adaptive' needs tol (relative Frobenius tolerance), got None")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number in (0, 1), got {tol!r}")
    tol = float(tol)
    if not (0.0 < tol < 1.0) or not math.isfinite(tol):
        raise ValueError(f"tol={tol} must lie in (0, 1) (relative Frobenius error)")
    return tol


def _check_delta(delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise TypeError(f"delta must be a real number in (0, 1), got {delta!r}")
    delta = float(delta)
    if not (0.0 < delta < 1.0) or not math.isfinite(delta):
        raise ValueError(f"delta={delta} must lie in (0, 1) (failure probability)")
    return delta


def _tasks(problem: Problem) -> tuple[np.ndarray, ...]:
    """Group query rows into tasks that read one key/value slice.

    Prefill: 64 consecutive rows of one query slice. Decode (``n <= 16``): the rows of
    all query slices that share a key/value slice, up to 64 rows per task.
    """
    G, n = problem.n_slices, problem.n
    kv = np.asarray(problem.kv_index, dtype=np.int64)
    if n <= _DECODE_ROWS:
        groups: dict[int, list[int]] = {}
        for g in range(G):
            groups.setdefault(int(kv[g]), []).append(g)
        per = max(1, _BQ // n)
        task_kv, members = [], []
        for gk, gs in groups.items():
            for s in range(0, len(gs), per):
                task_kv.append(gk)
                members.append(gs[s : s + per])
        T, bmax = len(task_kv), max(len(mm) for mm in members) * n
        tg = np.zeros((T, bmax), dtype=np.int64)
        tr = np.zeros((T, bmax), dtype=np.int64)
        tl = np.zeros(T, dtype=np.int64)
        for t, gs in enumerate(members):
            gg = np.repeat(np.asarray(gs, dtype=np.int64), n)
            rr = np.tile(np.arange(n, dtype=np.int64), len(gs))
            tg[t, : gg.size], tr[t, : gg.size], tl[t] = gg, rr, gg.size
        return np.asarray(task_kv, dtype=np.int64), tg, tr, tl
    nqb = -(-n // _BQ)
    T = G * nqb
    tg = np.repeat(np.arange(G, dtype=np.int64), nqb)[:, None] * np.ones(_BQ, dtype=np.int64)
    starts = np.tile(np.arange(nqb, dtype=np.int64) * _BQ, G)
    tr = np.minimum(starts[:, None] + np.arange(_BQ, dtype=np.int64), n - 1)
    tl = np.minimum(_BQ, n - starts).astype(np.int64)
    return kv[tg[:, 0]], np.ascontiguousarray(tg), np.ascontiguousarray(tr), tl


def _summaries(problem: Problem):
    """Value-block centroids, per-key deviations and spectral norms of centred blocks."""
    Gk, m, dv = problem.v.shape
    nkb = -(-m // _BK)
    vc = np.empty((Gk, nkb, dv))
    vdev = np.empty((Gk, m))
    _value_summaries(problem.v, _BK, vc, vdev)
    # sigma_b = ||V_b - 1 vc_b^T||_2 <= (tr G^16)^(1/32) with G = U^T U the block's
    # Gram matrix (an upper bound; at most 64^(1/32) = 1.14 times sigma_b): three
    # squarings of G / tr(G), batched, instead of an eigensolver.
    pad = (-m) % _BK
    vv = np.concatenate([problem.v.astype(np.float64), np.zeros((Gk, pad, dv))], axis=1)
    U = vv.reshape(Gk, nkb, _BK, dv) - vc[:, :, None, :]
    if pad:
        U[:, -1, _BK - pad :, :] = 0.0
    gram = np.matmul(U.transpose(0, 1, 3, 2), U)
    tr = np.trace(gram, axis1=-2, axis2=-1)
    safe = np.where(tr > 0, tr, 1.0)
    P = gram / safe[..., None, None]
    for _ in range(3):
        P = np.matmul(P, P)
    # ||P^8||_F = (sum lambda^16)^(1/2) for the normalised G (eigenvalues <= 1)
    lam = safe * np.sqrt(np.sum(P * P, axis=(-2, -1))) ** (1.0 / 8.0)
    vsig = np.where(tr > 0, np.sqrt(lam) * (1.0 + 1e-6), 0.0)
    # ||U_R||_2 for any set R of blocks: its Gram matrix sum_{b in R} G_b is dominated by
    # the sum over all blocks, so one eigenvalue per key/value head bounds them all.
    total = gram.sum(axis=1)
    top = np.linalg.eigvalsh(total)[..., -1]
    big = np.trace(total, axis1=-2, axis2=-1)
    vsig_all = np.sqrt(np.maximum(top, 0.0) + 1e-12 * big) * (1.0 + 1e-6)
    return vc, vdev, np.ascontiguousarray(vsig), np.ascontiguousarray(vsig_all)


def _run(problem, tasks, tau, summaries, out, lse):
    task_kv, tg, tr, tl = tasks
    stats = np.zeros((task_kv.shape[0], 6))
    with _single_threaded_blas():
        _task_kernel(
            problem.q,
            problem.k,
            problem.v,
            task_kv,
            tg,
            tr,
            tl,
            *summaries,
            float(problem.scale),
            bool(problem.causal),
            int(problem.offset),
            _BK,
            1,
            float(tau),
            out,
            lse,
            stats,
        )
    return stats


def _rounding_pad(problem: Problem, out: np.ndarray) -> float:
    """Frobenius allowance for floating-point rounding (scores and output).

    Per row ``4 u (2||y~_i|| + R) + (exp(2 eps_i) - 1) (R + ||y~_i||)`` with
    ``R = max_j ||v_j||``, ``u`` the unit roundoff of the problem dtype and
    ``eps_i = (sqrt(d) + 2) u scale ||q_i|| max_j ||k_j||`` the score rounding under the
    probabilistic rounding model of Higham and Mary (2019) (the worst case has ``d``
    instead of ``sqrt(d)``); a score perturbation of at most ``eps`` changes a row of
    weights by at most ``exp(2 eps) - 1`` in l1.
    """
    u = float(np.finfo(problem.dtype).eps)
    vmax = np.sqrt(np.max(np.einsum("gmd,gmd->gm", problem.v, problem.v, dtype=np.float64), 1))
    kmax = np.sqrt(np.max(np.einsum("gmd,gmd->gm", problem.k, problem.k, dtype=np.float64), 1))
    qn = np.sqrt(np.einsum("gnd,gnd->gn", problem.q, problem.q, dtype=np.float64))
    yn = np.sqrt(np.einsum("gnd,gnd->gn", out, out, dtype=np.float64))
    kv = problem.kv_index
    vm = vmax[kv][:, None]
    # score rounding |fl(s) - s| <= eps_i (probabilistic model, sqrt(d) u ||q|| ||k||)
    # perturbs the weights by at most exp(2 eps_i) - 1 in l1 (row lemma).
    eps_s = (math.sqrt(problem.d) + 2.0) * u * problem.scale * qn * kmax[kv][:, None]
    pad = 4.0 * u * (2.0 * yn + vm) + np.expm1(2.0 * eps_s) * (vm + yn)
    return float(np.sqrt(np.sum(pad * pad)))


@register(
    "adaptive",
    section="§3",
    family="sparse",
    causal=True,
    masks=False,
    bound="deterministic",
    summary=(
        "Tolerance-driven certified attention: exact scores and normaliser, products with "
        "V only over the key blocks the certified bound needs (the others replaced by "
        "value centroids); ||Y - Y~||_F <= tol ||Y||_F."
    ),
)
def _adaptive(problem: Problem, *, rng, tol=None, delta=0.01):
    tol = _check_tol(tol)
    delta = _check_delta(delta)
    del rng  # the current estimator draws no random numbers
    G, n, d, dv = problem.n_slices, problem.n, problem.d, problem.dv
    out = np.zeros((G, n, dv), dtype=problem.dtype)
    lse = np.full((G, n), -np.inf)
    tasks = _tasks(problem)
    T = tasks[0].shape[0]
    summaries = _summaries(problem)
    # Per-task target; 5% of tol is left for the rounding allowance.
    tau = 0.95 * tol / (1.0 + tol)
    stats = _run(problem, tasks, tau, summaries, out, lse)
    pad = _rounding_pad(problem, out)
    dropped2 = float(stats[:, 2].sum())
    y_norm = float(np.linalg.norm(out.astype(np.float64).ravel()))
    value = math.sqrt(dropped2 + pad * pad)
    limit = tol / (1.0 + tol) * y_norm
    if value > limit and dropped2 > 0:
        # Rare (the rounding allowance tipped the total): recompute every task exactly.
        stats = _run(problem, tasks, 0.0, summaries, out, lse)
        pad = _rounding_pad(problem, out)
        dropped2 = 0.0
        value = pad
    if value > tol / (1.0 + tol) * float(np.linalg.norm(out.astype(np.float64).ravel())):
        warnings.warn(
            f"tol={tol} is below what the rounding of {problem.dtype} scores allows "
            f"to certify here (bound {value:.3g}); the bound still holds but exceeds "
            "tol ||Y||_F (use float64 inputs or a larger tol)",
            AccuracyWarning,
            stacklevel=4,
        )
    kept = stats[:, 0]
    visible = stats[:, 1]
    rows = stats[:, 3]
    # Scores and exponentials over every visible key; products with V over kept keys.
    evals = int((rows * visible).sum())
    flops = float((rows * (visible * 2 * d + kept * 2 * dv)).sum())
    key_fraction = np.zeros(G)
    if T:
        task_g = tasks[1]
        tot_kept = np.zeros(G)
        tot_vis = np.zeros(G)
        for t in range(T):
            gs = task_g[t, : int(rows[t])]
            np.add.at(tot_kept, gs, kept[t])
            np.add.at(tot_vis, gs, visible[t])
        key_fraction = np.divide(tot_kept, tot_vis, out=np.ones(G), where=tot_vis > 0)
    assumptions = (
        "Deterministic: exact scores and normaliser; each dropped key block b of row i "
        "contributes at most min(sigma_b ||w_ib||_2, sum_j w_ij ||v_j - vc_b||) / D_i to "
        "||y_i - y~_i|| (its values replaced by their centroid vc_b; sigma_b the spectral "
        "norm of the centred block), summed over dropped blocks (triangle inequality); "
        "plus an allowance for rounding the output to the input dtype (score rounding, "
        "shared with exact attention, not included). Each task accepts dropped blocks only "
        "if its bound is <= 0.95 tol/(1+tol) ||Y~_task||_F, so bound <= tol ||Y||_F."
    )
    bound = ErrorBound(
        value=value, norm="fro", kind="deterministic", delta=0.0, assumptions=assumptions
    )
    cost = Cost(flops=flops, kernel_evals=evals, key_fraction=key_fraction)
    return MethodResult(out, lse, bound, cost)
