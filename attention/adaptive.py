r"""Tolerance-driven certified attention: ask for ``tol``, get a certified output.

``approximate(Q, K, V, "adaptive", tol=..., delta=..., causal=..., rng=...)`` chooses its
own budget per query block so that the returned bound certifies

.. math::

    \|Y - \tilde Y\|_F \le \text{bound} \le \text{tol}\,\|Y\|_F .

Every bound it returns is deterministic (kind ``"deterministic"``, ``bound.delta ==
0.0``), in prefill and in decode, on the estimator's route and on the exact kernel's:
it holds for every input, without a failure probability, including the rounding
(a proven worst case, not a probabilistic model). ``delta`` (default 0.01) is checked
(``0 < delta < 1``) and reserved for a sampled estimator: it changes neither the
output nor the bound.

**Estimator.** Query rows are processed in *tasks* (48 consecutive rows of one head in
prefill, in 8 *groups* of 6 rows, one register tile each; for decode, ``n <= 16``, the
rows of all query heads that share a key/value head, stacked, with the keys split into
chunks processed in parallel). Keys are split into blocks of 64. For every task:

* every visible score :math:`s_{ij}` is formed, on the register-tile GEMM of the exact
  kernel (prefill: row-major ``48 x m`` scores, see
  :mod:`attention._kernels.adaptive_prefill`), giving the exact row maximum
  :math:`M_i`, weights :math:`w_{ij} = e^{s_{ij} - M_i}` and the exact normaliser
  :math:`D_i = \sum_j w_{ij}`, with three sums per row and key block;
* a subset of (group, key block) *units* is *dropped*: for the rows of the group, the
  block's product with ``V`` is replaced by the block's value centroid
  :math:`\bar v_b` times the block mass :math:`B_{ib} = \sum_{j \in b} w_{ij}`:

.. math::

    \tilde y_i = \frac{1}{D_i}\Big(\sum_{j \notin R_i} w_{ij} v_j
        + \sum_{b \in R_i} B_{ib}\,\bar v_b\Big)

(:math:`R_i` the dropped blocks of row :math:`i`'s group). The sink block (keys 0..63),
the last block fully visible to the group and every partly visible block (the causal
diagonal) are never dropped.

**Bound.** Exactly :math:`y_i - \tilde y_i = D_i^{-1}\sum_{b\in R_i} w_{ib}^\top U_b` with
:math:`U_b` the block's centred values (rows :math:`v_j - \bar v_b`), so

.. math::

    \|y_i - \tilde y_i\| \le e_i = \frac{1}{D_i}\min\Big(\sum_{b \in R_i}
        \min\big(\sigma_b \|w_{ib} - \bar w_{ib}\|_2,\ \sum_{j \in b} w_{ij}\|v_j -
        \bar v_b\|\big),\ \sigma_{all} \big(\textstyle\sum_{b \in R_i} \|w_{ib} -
        \bar w_{ib}\|_2^2\big)^{1/2}\Big),

:math:`\sigma_b \ge \|U_b\|_2`, :math:`\sigma_{all} \ge \|[U_b]_b\|_2` (the weights
may be centred per block since :math:`\mathbf 1^\top U_b = 0`), bounded above by the
smaller of the Frobenius norm :math:`\|U_b\|_F` and :math:`(\operatorname{tr}
G_b^{4})^{1/8}` with :math:`G_b = U_b^\top U_b` (at most :math:`64^{1/8} = 1.68` times
:math:`\sigma_b`, measured 1.003-1.07 on SmolLM2 value blocks; the Gram matrices cost
:math:`O(m\,d_v^2)`, so they are formed only for ``n >= 1024``; decode uses the
Frobenius norms). ``bound`` is :math:`(\sum_i e_i^2)^{1/2}` plus an allowance for
floating-point rounding (the proven worst case of
:func:`attention._core.attention_rounding`, see ``_rounding_pad``), added to it
(Minkowski). This is the normaliser-aware row lemma with the normaliser exact,
sharpened per block by Cauchy-Schwarz; it is proven (no failure probability).

**Budget.** Each task first multiplies the blocks that are never dropped, then drops
the units of smallest cost :math:`\sum_{i \in g} c_{ib}/D_i` (a counting sort by
quarter octaves) while :math:`\|e_{task}\|_2 \le 0.9\,\tau\,\|\tilde
y^{(0)}_{task}\|_F` (:math:`\tilde y^{(0)}` the output with those blocks exact and
every candidate block replaced by its centroid, a proxy known before the remaining
products), with :math:`\tau = 0.95\,\text{tol}/(1+\text{tol})`, and keeps them only if
:math:`\|e_{task}\|_2 \le \tau \|\tilde Y_{task}\|_F` for the computed output
(otherwise it computes the dropped units exactly). Summing over tasks,
:math:`\text{bound} \le \text{tol}/(1+\text{tol})\,\|\tilde Y\|_F`, and since
:math:`\|Y\|_F \ge \|\tilde Y\|_F - \text{bound}`, ``bound <= tol * ||Y||_F`` without
an exact pass.

**Cost.** Every visible score and exponential (as exact attention), three block sums per
weight, the products with ``V`` only over kept units: the saving is at most the ``V``
half of the flops. Measured on SmolLM2 layer 29 (``n = 4096``, three query heads, one
thread, CPU time, median of 5 interleaved pairs against the exact kernel, load 4.2):
the method costs about ``0.81 + 0.38 f`` of the exact kernel for a kept fraction ``f``
(1.19 at ``f = 1``, 0.95 at 0.23, 0.83 at 0.08), plus ~0.04 for the spectral value
summaries; the score GEMMs alone were 0.44 and the exponential pass 0.24 of exact. The
speed-ups asked for (1.7x-6x) are out of reach of any design that forms every score.
Against the current exact kernel (one thread, CPU time, every slice through the method,
SmolLM2 layers 14/21/29) the method costs ``1.01 + 0.53 f`` at ``n = 4096`` and
``0.98 + 0.50 f`` at ``n = 8192`` (``f`` = 0.06-0.49): it is not faster than exact
attention for any kept fraction on these heads.

**Route.** The router predicts the time of each slice from the cost model above and
sends a slice to the method only if the mean predicted saving over all slices is at
least 2 % of the exact time; prefill whose saving could not reach that even with every
droppable block dropped (an upper bound, known without a pilot; with the measured
model: every prefill) skips the pilot and runs the exact kernel on every row. The bound is then
the rounding allowance alone (kind ``"deterministic"``, ``key_fraction = 1``), and the
output that of :func:`attention.softmax_attention`.

*Why no low-precision pilot of the scores* (measured on this AVX-512 machine, one
thread, 96 query rows x 2048 keys, ``d = 64``, register tiles of 6 rows x 64 keys): a
bf16 score tile on ``vdpbf16ps`` ran at 1.24 ns per score against 0.79 ns for the
float32 FMA tile (the instruction issues on one port, the FMA on two), so bf16 saves
nothing here; an int8 tile on ``vpdpbusd`` ran at 0.21 ns (3.7x faster), but its proven
error (per-dimension key scales folded into per-row query scales, rounding
:math:`\le 1/2` per entry: :math:`|\tilde s_{ij} - s_{ij}| \le \tfrac12 \sum_e
|q''_{ie}| + \tfrac{\alpha_i}{2}\sum_e |\hat\kappa_{je}|`) has a median of 0.2-0.3 logits
(max 0.9) on layer 0 and 0.9-1.5 (max 3.0) on layers 14 and 29 of SmolLM2 at ``n =
4096`` (the actual error was 20x smaller), and a dropped-mass bound from block maxima
(64 keys times the largest upper bound) then kept 84-99.8 % of the (6-row, 64-key) units
of rows ``n/2..n`` in layers 14 and 29 at ``tol = 0.01`` and 67-97 % at ``tol = 0.1``
(NumPy simulation, per-row budgets); even exact block maxima kept 54-93 % at 0.1,
against 22-79 % with the exact block sums this estimator uses. Hardly any block of a
real head lies 20 or more logits below its row maximum (0.2 % of the blocks in layer 14
at 20, none at 25), so skipping the exponentials of far blocks saves nothing either.

*Why no sampled tail* (``benchmarks/attention_adaptive_tail.py``, SmolLM2, all 9 heads
of layers 0/7/14/21/29): keeping key blocks exactly and importance-sampling the others
(keys shared by a task's rows) with a finite-sample (empirical-Bernstein) certificate
needs, with Quest's key boxes as proposal, 0.93/0.88/0.80 of the key evaluations at
``n = 8192`` and tol 1e-2/3e-2/1e-1, even with exact variances and ranges and the budget
allocated optimally; with the ideal proposal (every exact weight) 0.70/0.56/0.40. The
range term of the bound (no cheap summary tells which key of a block is heavy) is what
costs: the CLT plug-in, not a finite-sample bound, would need 0.48/0.32/0.16 (ideal)
or 0.71/0.56/0.37 (boxes). So ``delta`` stays unused.

**Measured** (``benchmarks/attention_adaptive.py``, SmolLM2 layers 0/7/14/21/29, 9 heads
each, float32, causal, n = 4096 and 8192, tol 1e-2/3e-2/1e-1): the bound held and was
``<= tol ||Y||_F`` in all 30 runs of the default route and of the estimator alone, and
in 300 of 300 seeded random windows (the quadrature control failed 49 times: binomial
p = 5e-43); median bound/actual of the estimator 2.5-2.9 (3.4 over the windows); kept
key fractions 0.77/0.66/0.52 (n = 4096) and 0.67/0.56/0.44 (n = 8192) against the
oracle top-k 0.63/0.43/0.20 and 0.57/0.36/0.17; at n = 8192 (medians of interleaved
pairs, load 2.0-2.1) 0.80-0.91 of the exact kernel's speed for the estimator alone
(medians over layers per tol) and 0.94-1.01 for the default route (exact kernel on
every row; 0.964-0.977 at n = 4096, load 1.5-1.7).

**Causality.** A row never sees a future key's weight; the choice of dropped blocks is
made per task of 48 rows (units of 6 rows, the task's target and the check on its
computed output), so it can depend on keys that are future for some rows of the same
task; for rows of earlier tasks only through ``sigma_all``, the norm bound over all
value blocks of the key/value head, which enters the bound (and so the choice), never
the output formula.

References
----------
The row lemma: ``y_i - y~_i = (a_i - a~_i)(V - 1 y_i^T) / z~_i``. Quest's key box bound:
J. Tang et al., "Quest: query-aware sparsity for efficient long-context LLM inference",
ICML 2024. Rounding: N. J. Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., SIAM 2002 (Lemma 3.1, Lemma 3.3, (3.5), (4.4); worst case, every order of
evaluation), see :func:`attention._core.attention_rounding`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import threading
import warnings

import numba
import numpy as np

from attention._core import Cost, ErrorBound, Problem, attention_rounding, problem_cost_exact
from attention._kernels.adaptive import (
    _decode_kernel,
    _exact_decode_kernel,
    _sq_norms3,
    _sq_rows,
    _value_summaries,
)
from attention._kernels.adaptive_prefill import _GROUP, _tiled_kernel
from attention._registry import MethodResult, register
from attention.exact import _BK as _BK_EXACT
from attention.exact import (
    _CHUNK_MAX,
    _SERIAL_WORK,
    _USE_TILES,
    _attend,
    _single_threaded_blas,
    _split_plan,
)
from rnla._validation import AccuracyWarning, as_float_array

__all__: list[str] = []

_BK = 64  # keys per block
_BQ = 48  # query rows per prefill task (8 skipping groups of 6 rows)
_DECODE_ROWS = 16  # n <= this (and equal grouped-query groups): decode path
_DECODE_CHUNK_MIN = 1024  # decode: keys per parallel chunk (a multiple of _BK) ...
_DECODE_MAX_CHUNKS = 32  # ... and at most this many chunks per key/value slice
_PILOT_BLOCKS = 4  # prefill with at least this many query blocks per slice: pilot
# A slice whose pilot keeps more than this fraction of its keys goes to the exact
# kernel (see the cost model below; the fraction is predicted from the slice's pilot,
# _predicted_fraction).
_EXACT_FRACTION = 0.25
# The cost model: time / exact time = _COST_FIXED + _COST_KEPT * f for a slice keeping a
# fraction f of its keys. Re-measured against the current exact kernel (one thread, CPU
# time, every slice through the method, medians of 3 interleaved pairs, load 1.6-2.7):
# SmolLM2 layers 14/21/29 (9 heads), n = 4096, f = 0.10-0.49: 1.06-1.28 (fit 1.01 +
# 0.53 f); n = 8192, f = 0.06-0.36: 1.01-1.17 (fit 0.98 + 0.50 f). The earlier
# constants (0.92 + 0.38 f, measured against an older exact kernel) sent heads to the
# method at tol >= 0.3 and made the default route 0.89-0.92 of exact's speed instead of
# 0.94-0.96 with those heads exact (same runs, n = 4096, layers 14/21, load 2.4-2.8).
# Only inputs on which the exact kernel itself is slow gain: a sharp synthetic head
# (queries near one recent key, n = 8192, f = 0.04-0.06) measured 0.88, because its
# exact call took 0.56 s against 0.47 s for a real head.
_COST_FIXED = 0.98
_COST_KEPT = 0.50
# Sending any slice to the method also costs the spectral value summaries, a second
# parallel phase and the exact kernel on a copied subset of the slices. The method
# slices go ahead only if their predicted saving, the mean over all slices of
# ``1 - (_COST_FIXED + _COST_KEPT f)`` (0 for the exact ones), is at least this fraction
# of the exact time (-inf: no such check). When even dropping every droppable block of
# every slice could not save that much (_best_saving), the pilot is skipped and every
# row goes to the exact kernel: with the constants above this is every prefill (the
# pilot alone cost about 2-3 % of the exact time; short prefill, with fewer than
# _PILOT_BLOCKS query blocks and no pilot, ran the method at 0.66-0.80 of the exact
# kernel's speed for 48-96 rows against 4096 keys).
_SWITCH_COST = 0.02
# Without the register tiles (no AVX-512, or dv not a multiple of the vector length) the
# method's kernel runs its products on BLAS in 6-row pieces: SmolLM2 layer 29, n = 4096,
# tol 3e-2, every slice through it, measured 0.45x the speed of the exact kernel's own
# portable path (load 2.9). Its slices then go to the exact kernel after the pilot
# unless this is set (the tests set it to exercise the portable kernel).
_PORTABLE_METHOD = False
# Tests only: a boolean array (tasks, groups, key blocks) that receives the dropped units.
_DROPS = None
_SPECTRAL_ROWS = 1024  # n >= this: spectral norms of the centred value blocks
# Decode-shaped calls (n <= _DECODE_ROWS) run the exact kernel unless this is set: the
# split-key decode path (kept and tested) measured 0.24-0.30x the exact kernel's speed at
# m = 2048-32768 (its per-call value-block summaries over the whole cache cost more than
# the V reads it saves), which breaks the rule of never being much slower than exact.
_DECODE_SPLIT = False


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


def _decode_members(problem: Problem):
    """Query slices of each key/value slice ``(Gk, gs)``, or None (prefill layout).

    Decode is taken for ``n <= 16`` when every key/value slice has the same number of
    query slices (their rows are stacked into one block).
    """
    if problem.n > _DECODE_ROWS:
        return None
    Gk = problem.k.shape[0]
    counts = np.bincount(problem.kv_index, minlength=Gk)
    gs = int(counts[0])
    if gs == 0 or np.any(counts != gs):
        return None
    return np.argsort(problem.kv_index, kind="stable").astype(np.int64).reshape(Gk, gs)


def _summaries(problem: Problem, spectral: bool | None = None):
    """Value-block centroids, per-key deviations and norms of the centred blocks.

    Returns ``(vc, vdev, vsig, vsig_all)``: ``vsig[g, b] >= ||U_b||_2`` for the centred
    block ``U_b`` and ``vsig_all[g] >= ||U||_2`` for all centred blocks stacked. With
    ``spectral`` (default: ``n >= 1024``, where the ``O(m dv^2)`` cost is small against
    the attention) they are within 1.14x of the spectral norms; otherwise they are the
    Frobenius norms (``O(m dv)``, read from the per-key deviations).
    """
    Gk, m, dv = problem.v.shape
    nkb = -(-m // _BK)
    if spectral is None:
        spectral = problem.n >= _SPECTRAL_ROWS
    vc = np.empty((Gk, nkb, dv))
    vdev = np.empty((Gk, m))
    vsig = np.empty((Gk, nkb))
    gram = np.empty((Gk, nkb, dv, dv) if spectral else (1, 1, 1, 1))
    with _single_threaded_blas(), _serial(not spectral):
        _value_summaries(problem.v, _BK, bool(spectral), vc, vdev, vsig, gram)
    if not spectral:
        vsig_all = np.sqrt(np.einsum("gm,gm->g", vdev, vdev)) * (1.0 + 1e-9)
        return vc, vdev, vsig, vsig_all
    # ||U_R||_2 for any set R of blocks: its Gram matrix sum_{b in R} G_b is dominated by
    # the sum over all blocks, so one eigenvalue per key/value head bounds them all.
    total = gram.sum(axis=1)
    top = np.linalg.eigvalsh(total)[..., -1]
    big = np.trace(total, axis1=-2, axis2=-1)
    vsig_all = np.sqrt(np.maximum(top, 0.0) + 1e-12 * big) * (1.0 + 1e-6)
    return vc, vdev, vsig, vsig_all


# O(n d) passes (row norms, Frobenius value summaries) on one thread if set: each parallel
# region ends in a barrier that costs milliseconds when another process holds a core.
# SmolLM2 n = 4096, all heads exact, median of 5 interleaved pairs against exact: at load
# 3.0-3.3 one thread gave 1.11x aggregate (worst layer 1.16x) against 1.17x (1.25x); at
# load 2.1 it gave 1.095x (1.12x) against 1.07x (1.08x). Off: the quiet case is kept.
_SERIAL_SMALL = False


@contextlib.contextmanager
def _serial(on: bool = True):
    """One Numba thread inside the block if ``on`` and ``_SERIAL_SMALL``."""
    threads = numba.get_num_threads()
    if on and _SERIAL_SMALL:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _upad(dtype) -> float:
    """Relative allowance for the block sums of 64 weights formed in ``dtype``."""
    return 4.0 * _BK * float(np.finfo(dtype).eps)


_LOCAL = threading.local()


def _work_buffer(size: int, dtype) -> np.ndarray:
    """Per-Numba-thread score buffers ``(threads, size)``, reused across calls.

    Kept per calling Python thread (first-touch page faults of a fresh 2 MB buffer per
    task cost as much as a tenth of the task); contents are never read before written.
    """
    nthreads = numba.config.NUMBA_NUM_THREADS
    buf = getattr(_LOCAL, "work", None)
    if buf is None or buf.dtype != dtype or buf.shape[1] < size:
        buf = np.empty((nthreads, size), dtype=dtype)
        _LOCAL.work = buf
    return buf


def _tiles_ok(problem) -> bool:
    """Register-tile GEMMs for the prefill kernel (AVX-512, ``dv`` a vector multiple)."""
    vl = 64 // problem.q.itemsize
    return bool(_USE_TILES) and problem.dv % vl == 0 and problem.d > 0


def _packed_kt(problem, tiles):
    """Buffer for ``K^T`` in register-tile panels (filled by the first launch)."""
    if not tiles:
        return np.empty((1, 0), dtype=problem.dtype)
    mp = -(-problem.m // _BK) * _BK
    return np.empty((problem.k.shape[0], mp * problem.d), dtype=problem.dtype)


def _launch(problem, order, summaries, tau, upad, work, out, lse, stats, kt, pack):
    """Run the prefill kernel on the tasks ``order`` (ids ``slice * nqb + block``)."""
    vc, vdev, vsig, vsig_all = summaries
    _tiled_kernel(
        problem.q,
        problem.k,
        kt,
        problem.v,
        np.ascontiguousarray(problem.kv_index, dtype=np.int64),
        order,
        vc,
        np.ascontiguousarray(vdev, dtype=problem.dtype),  # rounding covered by upad
        vsig,
        vsig_all,
        float(problem.scale),
        bool(problem.causal),
        int(problem.offset),
        _BQ,
        _BK,
        float(tau),
        upad,
        work,
        out,
        lse,
        stats,
        kt.shape[1] > 0,
        bool(pack),
        _DROPS if _DROPS is not None else np.zeros((0, 1, 1), dtype=np.bool_),
        np.zeros(1, dtype=np.int64),
        numba.get_num_threads(),
    )


def _candidates(problem, nqb):
    """Visible keys and droppable (candidate) keys of every query block ``(nqb,)``."""
    n, m = problem.n, problem.m
    i0 = np.arange(nqb) * _BQ
    nb = np.minimum(_BQ, n - i0)
    if problem.causal:
        lim_lo = np.minimum(i0 + problem.offset, m - 1)
        vis = np.clip(i0 + nb + problem.offset, 0, m)
    else:
        lim_lo = np.full(nqb, m - 1)
        vis = np.full(nqb, m)
    nfull = np.where(lim_lo >= 0, (lim_lo + 1) // _BK, 0)
    ncand = np.maximum(nfull - 1, 1) - 1  # as the kernel: sink, last full, diagonal kept
    return vis * nb, ncand * _BK * nb, nb


def _predicted_fraction(problem, nqb, pilot_stats):
    """Kept fraction of every slice predicted from its pilot (the last query block).

    The pilot keeps ``kept_p`` of ``vis_p`` keys, ``cand_p`` of which could be dropped;
    assuming every block keeps the same share of its droppable keys, block ``b`` keeps
    ``vis_b - cand_b + share * cand_b``. (Earlier blocks have fewer droppable keys, so
    the fraction of the whole slice exceeds the pilot's: by 0.1-0.2 at n = 4096.)
    """
    work, cand, nb = _candidates(problem, nqb)
    p = nqb - 1  # the pilot is the last query block (causal or not)
    kept_p = pilot_stats[:, 0] * nb[p]
    fixed_p = work[p] - cand[p]
    share = np.clip((kept_p - fixed_p) / max(cand[p], 1), 0.0, 1.0)
    kept = (work - cand).sum() + share * cand.sum()
    return kept / max(work.sum(), 1)


def _best_saving(problem, nqb) -> float:
    """Largest saving the cost model predicts: every droppable block of every slice dropped.

    The kept fraction is then that of the never-dropped blocks (sink, last full block,
    causal diagonal), from :func:`_candidates`.
    """
    work, cand, _ = _candidates(problem, nqb)
    f_min = (work - cand).sum() / max(work.sum(), 1)
    return 1.0 - _COST_FIXED - _COST_KEPT * f_min


def _exact_rows(problem, slices, nqb, out, lse, stats, pilot=True):
    """Exact attention for every query block but the pilot of the given slices.

    The rows are a prefix (the pilot is the last block; ``pilot=False``: every row):
    one call of the exact kernel, on the problem itself when every slice is exact (no
    copy of ``Q``).
    """
    n, m = problem.n, problem.m
    nr = (nqb - 1) * _BQ if pilot else n
    rows = np.arange(nr, dtype=np.int64)  # the pilot is the last block
    if not pilot and slices.shape[0] == problem.n_slices:
        _attend(problem, out=out, lse=lse)  # every row, written in place
    elif slices.shape[0] == problem.n_slices:
        _attend(problem, rows, out=out, lse=lse)  # written in place (a prefix of rows)
    else:
        sub = dataclasses.replace(
            problem,
            q=np.ascontiguousarray(problem.q[slices]),  # all rows: n sets the offset
            kv_index=np.ascontiguousarray(problem.kv_index[slices]),
        )
        o, lo = _attend(sub, rows)
        out[slices, :nr] = o
        lse[slices, :nr] = lo
    # every key of the exact blocks kept (one vectorised assignment: a Python loop over
    # the blocks cost ~0.5 ms per call at n = 4096)
    i0 = np.arange(nqb - 1 if pilot else nqb) * _BQ
    nb = np.minimum(_BQ, n - i0)
    vis = np.clip(i0 + nb + problem.offset, 0, m) if problem.causal else np.full(i0.size, m)
    t = (np.asarray(slices)[:, None] * nqb + np.arange(i0.size)[None, :]).reshape(-1)
    reps = np.asarray(slices).size
    stats[t, 0] = np.tile(vis, reps)
    stats[t, 1] = np.tile(vis, reps)
    stats[t, 2] = 0.0
    stats[t, 3] = np.tile(nb, reps)


def _run(problem, tau, summaries, out, lse, members=None, pilot=True):
    """Run the prefill or decode kernel; returns ``(stats, task_slices)``.

    ``summaries``: from :func:`_summaries`, or None to form them here (prefill: the
    Frobenius ones for the pilot, the spectral ones only if some slice continues with
    the method). ``stats[t] = (kept keys, visible keys, squared bound, rows, dropped
    blocks, squared quadrature sum)``; ``task_slices[t]`` lists the query slices of
    task ``t``.
    """
    G, n, m = problem.n_slices, problem.n, problem.m
    causal, offset = bool(problem.causal), int(problem.offset)
    upad = _upad(problem.dtype)
    threads = numba.get_num_threads()
    with _single_threaded_blas():
        if members is None:
            nqb = -(-n // _BQ)
            if pilot and _best_saving(problem, nqb) < _SWITCH_COST:
                # No slice could pay for the method (an upper bound, so no pilot is
                # needed, and short prefill is covered too): every row through the exact
                # kernel.
                stats = np.zeros((G * nqb, 6))
                _exact_rows(problem, np.arange(G), nqb, out, lse, stats, pilot=False)
                return stats, np.repeat(np.arange(G), nqb).reshape(-1, 1)
            bqp = -(-_BQ // _GROUP) * _GROUP
            work = _work_buffer(bqp * (-(-m // _BK) * _BK + 16), problem.dtype)
            kt = _packed_kt(problem, _tiles_ok(problem))
            packed = False
            stats = np.zeros((G * nqb, 6))
            tasks = np.arange(G * nqb, dtype=np.int64).reshape(G, nqb)
            if causal:
                tasks = tasks[:, ::-1]  # longest first
            exact_slices = np.zeros(G, dtype=bool)
            if pilot and nqb >= _PILOT_BLOCKS:
                # Pilot: the last (longest) query block of every slice, with the cheap
                # (Frobenius) value summaries. A slice predicted to keep more than
                # _EXACT_FRACTION of its keys would be slower than exact attention
                # (see _EXACT_FRACTION): its other rows go through the exact kernel;
                # so do all slices if the predicted saving is below _SWITCH_COST.
                fro = summaries if summaries is not None else _summaries(problem, False)
                order = np.ascontiguousarray(tasks[:, 0] if causal else tasks[:, -1])
                _launch(problem, order, fro, tau, upad, work, out, lse, stats, kt, True)
                packed = True
                pred = _predicted_fraction(problem, nqb, stats[order])
                exact_slices = pred > _EXACT_FRACTION
                gain = 1.0 - _COST_FIXED - _COST_KEPT * pred
                saving = np.where(exact_slices, 0.0, gain).mean()
                if saving < _SWITCH_COST or not (_PORTABLE_METHOD or kt.shape[1] > 0):
                    exact_slices[:] = True
                rest = tasks[:, 1:] if causal else tasks[:, :-1]
            else:
                rest = tasks
            order = np.ascontiguousarray(rest[~exact_slices].T.reshape(-1))
            if order.size:
                full = summaries if summaries is not None else _summaries(problem)
                _launch(problem, order, full, tau, upad, work, out, lse, stats, kt, not packed)
            if exact_slices.any():
                _exact_rows(problem, np.flatnonzero(exact_slices), nqb, out, lse, stats)
            slices = np.repeat(np.arange(G), nqb).reshape(-1, 1)
            return stats, slices
        if summaries is None:
            summaries = _summaries(problem)
        vc, vdev, vsig, vsig_all = summaries
        Gk, gs = members.shape
        R = gs * n
        vis = min(m, n - 1 + offset + 1) if causal else m
        vis = max(vis, 0)
        chunk = -(-vis // _DECODE_MAX_CHUNKS) if vis else _DECODE_CHUNK_MIN
        chunk = max(_DECODE_CHUNK_MIN, -(-chunk // _BK) * _BK)
        C = max(1, -(-vis // chunk))
        nkb = -(-vis // _BK)
        stats = np.zeros((Gk, 6))
        try:
            if Gk * C < 2:
                numba.set_num_threads(1)
            _decode_kernel(
                problem.q,
                problem.k,
                problem.v,
                members,
                n,
                vc,
                vdev,
                vsig,
                vsig_all,
                float(problem.scale),
                causal,
                offset,
                chunk,
                _BK,
                1,
                float(tau),
                upad,
                np.empty((Gk, vis, R), dtype=problem.dtype),
                np.empty((Gk, C, R)),
                np.empty((Gk, nkb, R)),
                np.empty((Gk, nkb, R)),
                np.empty((Gk, nkb, R)),
                np.empty((Gk, C, R, problem.dv)),
                out,
                lse,
                stats,
            )
        finally:
            numba.set_num_threads(threads)
        return stats, members


def _sq_norms(*arrays: np.ndarray) -> list[np.ndarray]:
    """Squared row norms ``(G, r)`` (float64) of up to three ``(G, r, c)`` arrays, one pass.

    Float64 squares and sums (:func:`attention._kernels.adaptive._sq_norms3`, on all
    cores; below ``_SERIAL_WORK`` entries :func:`~attention._kernels.adaptive._sq_rows`
    in the calling thread; the two may sum in another order), padded by ``1 + 2 c u_64``
    for the rounding of the sums in any order; NaN or inf rows give non-finite norms.
    """
    u = float(np.finfo(np.float64).eps)
    flat = [np.ascontiguousarray(x).reshape(-1, x.shape[-1]) for x in arrays]
    res = [np.empty(f.shape[0]) for f in flat]
    if sum(f.size for f in flat) < _SERIAL_WORK:
        # Small (n = 256: a few hundred thousand entries, tens of microseconds): in the
        # calling thread. A parallel region costs its wake-up and barrier, milliseconds
        # when another process holds a core (measured 2-10 ms under load).
        for f, r in zip(flat, res, strict=True):
            _sq_rows(f, r, 0, f.shape[0])
    else:
        empty = np.zeros((0, 1), dtype=flat[0].dtype)
        flat += [empty] * (3 - len(flat))
        res += [np.empty(0)] * (3 - len(res))
        with _single_threaded_blas(), _serial():
            _sq_norms3(flat[0], flat[1], flat[2], res[0], res[1], res[2])
    return [
        r.reshape(x.shape[:-1]) * (1.0 + 2.0 * x.shape[-1] * u)
        for r, x in zip(res, arrays, strict=False)
    ]


def _rounding_pad(
    problem: Problem, out: np.ndarray, norms=None, bias: float = 0.0, chain: int | None = None
) -> tuple[float, float]:
    """Worst-case Frobenius allowance for floating-point rounding (scores to output).

    Per row the proven allowance of :func:`attention._kernels.rounding._row_allowance`
    (Higham's ``gamma_k`` bounds for the ``d``-term scores, the exponential's 4 ulp,
    sums of at most ``chain`` terms in the problem dtype, the float64 accumulation and
    the cast; every order of evaluation) with ``sigma_i = scale ||q_i|| max_j ||k_j||
    + bias`` (Cauchy-Schwarz) and ``vmax = max_j ||v_j||``. ``chain``: the longest
    sum in the problem dtype; None: that of the exact kernel (:func:`_exact_chain`).
    ``norms = (||q_i||^2 (G, n), ||k_j||^2 (Gk, m), ||v_j||^2 (Gk, m))`` from
    :func:`_sq_norms` if the caller has them; ``bias`` bounds the finite entries of an
    additive mask. Returns ``(allowance, ||out||_F)``. (Decode computes the same
    allowance inside its kernel, with ``||q_i|| ||k_j||`` sharpened to ``|q_i|^T
    |k_j|``: :func:`attention._kernels.adaptive._decode_allowance`.)
    """
    if norms is None:
        norms = _sq_norms(problem.q, problem.k, problem.v)
    qn2, kn2, vn2 = norms
    (yn2,) = _sq_norms(out)
    k2 = kn2.max(axis=1) if kn2.shape[1] else np.zeros(kn2.shape[0])
    v2 = vn2.max(axis=1) if vn2.shape[1] else np.zeros(vn2.shape[0])
    kv = problem.kv_index
    shape = qn2.shape
    with np.errstate(invalid="ignore", over="ignore"):
        sigma = problem.scale * np.sqrt(qn2) * np.sqrt(k2)[kv][:, None] + bias
        vmax = np.broadcast_to(np.sqrt(v2)[kv][:, None], shape)
        pad = attention_rounding(
            problem.dtype,
            d=problem.d,
            m=problem.m,
            dv=problem.dv,
            chain=_exact_chain(problem.m) if chain is None else chain,
            sigma=sigma,
            vmax=vmax,
            ynorm=np.sqrt(yn2),
        )
        pad = np.where(np.isnan(pad), np.inf, pad)  # 0 * inf from overflowed norms
        return float(np.sqrt(np.sum(pad * pad)) * (1.0 + 1e-12)), float(np.sqrt(yn2.sum()))


def _exact_chain(m: int) -> int:
    """Longest sum in the problem dtype of the exact kernel over ``m`` keys.

    Prefill: ``P V`` and the normaliser over key blocks of ``_BK_EXACT`` (512) keys
    (float32 FMA chains on the register tiles, BLAS otherwise), float64 across blocks;
    split-key decode: chunks of at most ``_CHUNK_MAX`` (2048) keys, merged in float64.
    """
    return int(min(max(m, 1), max(_BK_EXACT, _CHUNK_MAX)))


def _check_finite(problem: Problem, norms=None) -> None:
    """Reject NaN or inf in the inputs (``approximate`` leaves this check to the method).

    With ``norms`` (the squared row norms of ``Q``, ``K``, ``V`` from :func:`_sq_norms`,
    which prefill needs for the rounding allowance) only inputs with a non-finite norm
    are scanned. Decode through the exact kernel needs no pass of its own: that kernel
    detects them while it reads ``K`` and ``V``.
    """
    for i, (name, x) in enumerate((("Q", problem.q), ("K", problem.k), ("V", problem.v))):
        if norms is not None and np.isfinite(norms[i]).all():
            continue
        if not np.isfinite(x).all():
            as_float_array(x, name=name)


def _decode_exact_pass(problem: Problem):
    """Exact attention of a decode-shaped problem with its rounding allowance, one pass.

    Returns ``(out, lse, allowance, ||out||_F)``. With the split-key layout of the exact
    kernel (at least two chunks, at most 64 stacked rows) everything comes from one pass
    over ``K`` and ``V`` (:func:`attention._kernels.adaptive._exact_decode_kernel`),
    which also detects NaN and inf: the allowance of :func:`_rounding_pad` with
    ``max_j |q_i|^T |k_j|`` and ``max_j ||v_j||`` bounded through the column maxima of
    ``|K|`` and ``|V|`` per chunk, taken as the kernel reads it (on
    SmolLM2 decode heads 2.5-3.3x the allowance from the row norms themselves, below
    3e-3 ||Y||_F; a row-norm pass cost a third of the kernel). Otherwise (short caches,
    many stacked rows) the exact kernel runs and one more pass forms the norms.
    """
    G, n, m, dv = problem.n_slices, problem.n, problem.m, problem.dv
    Gk = problem.k.shape[0]
    m_eff = min(m, n + problem.offset) if problem.causal else m
    plan = _split_plan(problem, n, m_eff) if m_eff > 0 else None
    if plan is None:
        norms = _sq_norms(problem.q, problem.k, problem.v)
        _check_finite(problem, norms)
        out, lse = _attend(problem)
        pad, y_norm = _rounding_pad(problem, out, norms)
        return out, lse, pad, y_norm
    if not np.isfinite(problem.q).all():
        as_float_array(problem.q, name="Q")
    members, chunk = plan
    gs = members.shape[1]
    C = -(-m_eff // chunk)
    R = gs * n
    out = np.empty((G, n, dv), dtype=problem.dtype)
    lse = np.empty((G, n))
    probe = np.zeros(Gk * C)
    allow = np.zeros(2)
    threads = numba.get_num_threads()
    try:
        if Gk * C < 2 or G * n * m * (problem.d + dv) < _SERIAL_WORK:
            numba.set_num_threads(1)
        with _single_threaded_blas():
            _exact_decode_kernel(
                problem.q,
                problem.k,
                problem.v,
                members,
                n,
                float(problem.scale),
                bool(problem.causal),
                int(problem.offset),
                chunk,
                out,
                lse,
                np.empty((Gk, C, R, dv)),
                np.empty((Gk, C, R)),
                np.empty((Gk, C, R)),
                probe,
                np.empty((Gk * C, problem.d), dtype=problem.dtype),
                np.empty((Gk * C, dv), dtype=problem.dtype),
                float(np.finfo(problem.dtype).eps) / 2.0,  # unit roundoff
                allow,
                bool(_USE_TILES),
                np.zeros(1, dtype=np.int64),
                numba.get_num_threads(),
            )
    finally:
        numba.set_num_threads(threads)
    if not np.isfinite(probe).all():
        _check_finite(problem)  # raises for non-finite inputs (else a score overflowed)
    return out, lse, float(allow[0]), float(allow[1])


def _warn_uncertifiable(problem, tol, bound, y_norm, depth=0):
    """``AccuracyWarning`` when the (valid) bound exceeds what ``tol`` asks for.

    ``depth``: frames between the caller and :func:`_adaptive` (so that the warning
    points at the user's call).
    """
    if bound > tol / (1.0 + tol) * y_norm:
        warnings.warn(
            f"tol={tol} is below what the rounding of {problem.dtype} scores allows "
            f"to certify here (bound {bound:.3g}); the bound still holds but exceeds "
            "tol ||Y||_F (use float64 inputs or a larger tol)",
            AccuracyWarning,
            stacklevel=5 + depth,
        )


def _every_key_cost(problem: Problem) -> Cost:
    """Cost of a call the exact kernel answered (every visible key kept)."""
    cost = problem_cost_exact(problem)
    return Cost(
        flops=cost.flops, kernel_evals=cost.kernel_evals, key_fraction=np.ones(problem.n_slices)
    )


def _exact_decode(problem: Problem, tol: float) -> MethodResult:
    """Decode-shaped call through the exact kernel: the bound is the rounding allowance.

    One pass over ``K`` and ``V`` (:func:`_decode_exact_pass`).
    """
    out, lse, pad, y_norm = _decode_exact_pass(problem)
    _warn_uncertifiable(problem, tol, pad, y_norm, depth=1)
    assumptions = (
        "Deterministic: decode-shaped call computed by the exact kernel (every key kept); "
        "the bound is the worst-case rounding allowance (Higham 2002, (3.5) and (4.4): "
        "scores, exponentials, sums of at most 2048 terms in the input dtype, cast)."
    )
    bound = ErrorBound(
        value=pad, norm="fro", kind="deterministic", delta=0.0, assumptions=assumptions
    )
    return MethodResult(out, lse, bound, _every_key_cost(problem))


def _exact_masked(problem: Problem, tol: float) -> MethodResult:
    """Masked call (``mask=``): exact kernel, the bound is the rounding allowance.

    The method's own kernels do not take masks; the exact kernel does (and skips key
    blocks a key-padding mask hides). An additive mask adds one rounding of
    ``s_ij + b_ij`` per score, at most ``u (|s_ij| + |b_ij|)``: covered by adding
    ``u max |b|`` (over the finite entries) to the score allowance.
    """
    norms = _sq_norms(problem.q, problem.k, problem.v)
    _check_finite(problem, norms)
    out, lse = _attend(problem)
    bmax = 0.0
    if problem.mask.dtype != np.bool_:
        fin = np.isfinite(problem.mask)
        bmax = float(np.abs(problem.mask, where=fin, out=np.zeros(problem.mask.shape)).max())
    pad, y_norm = _rounding_pad(problem, out, norms, bias=bmax)
    _warn_uncertifiable(problem, tol, pad, y_norm, depth=1)
    assumptions = (
        "Deterministic: masked call computed by the exact kernel (every visible key "
        "kept); the bound is the worst-case rounding allowance of scores, mask, "
        "exponentials, sums and cast (Higham 2002, (3.5) and (4.4))."
    )
    bound = ErrorBound(
        value=pad, norm="fro", kind="deterministic", delta=0.0, assumptions=assumptions
    )
    return MethodResult(out, lse, bound, _every_key_cost(problem))


@register(
    "adaptive",
    section="§3",
    family="sparse",
    causal=True,
    masks=True,
    bound="deterministic",
    checks_finite=True,
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
    if problem.mask is not None:
        return _exact_masked(problem, tol)
    if problem.n <= _DECODE_ROWS and not _DECODE_SPLIT:
        return _exact_decode(problem, tol)
    # One pass: the squared row norms of the rounding allowance, which also find NaN/inf.
    norms = _sq_norms(problem.q, problem.k, problem.v)
    _check_finite(problem, norms)
    out = np.empty((G, n, dv), dtype=problem.dtype)
    lse = np.full((G, n), -np.inf)
    members = _decode_members(problem)
    # Per-task target; 5% of tol is left for the rounding allowance.
    tau = 0.95 * tol / (1.0 + tol)
    stats, task_slices = _run(problem, tau, None, out, lse, members)
    # The method's products run over at most 8 key blocks (512 keys) at a time; its
    # decode kernel's weights and sums stay within blocks of 64; prefill rows that went
    # to the exact kernel: its own chains (None).
    chain = min(problem.m, 8 * _BK) if members is not None else None
    pad, y_norm = _rounding_pad(problem, out, norms, chain=chain)
    dropped2 = float(stats[:, 2].sum())
    # Minkowski: ||e + pad||_2 <= ||e||_2 + ||pad||_2 (the row errors may align).
    value = math.sqrt(dropped2) + pad
    limit = tol / (1.0 + tol) * y_norm
    if value > limit and dropped2 > 0:
        # Rare (the rounding allowance tipped the total): recompute every task exactly.
        stats, task_slices = _run(problem, 0.0, None, out, lse, members, pilot=False)
        pad, y_norm = _rounding_pad(problem, out, norms, chain=chain)
        dropped2 = 0.0
        value = pad
    _warn_uncertifiable(problem, tol, value, y_norm)
    kept = stats[:, 0]
    visible = stats[:, 1]
    rows = stats[:, 3]
    # Scores and exponentials over every visible key; products with V over kept keys.
    evals = int((rows * visible).sum())
    flops = float((rows * (visible * 2 * d + kept * 2 * dv)).sum())
    tot_kept = np.zeros(G)
    tot_vis = np.zeros(G)
    per_slice = rows / task_slices.shape[1]
    for a in range(task_slices.shape[1]):
        np.add.at(tot_kept, task_slices[:, a], kept * per_slice)
        np.add.at(tot_vis, task_slices[:, a], visible * per_slice)
    key_fraction = np.divide(tot_kept, tot_vis, out=np.ones(G), where=tot_vis > 0)
    assumptions = (
        "Deterministic: exact scores and normaliser; each dropped key block b of row i "
        "contributes at most min(sigma_b ||w_ib||_2, sum_j w_ij ||v_j - vc_b||) / D_i to "
        "||y_i - y~_i|| (its values replaced by their centroid vc_b; sigma_b an upper "
        "bound of the spectral norm of the centred block), summed over dropped blocks "
        "(triangle inequality); "
        "plus the worst-case rounding allowance of scores, exponentials, sums and cast "
        "(Higham 2002, (3.5) and (4.4)), added to the Frobenius norm of the row bounds "
        "(Minkowski). Each task accepts dropped blocks only "
        "if its bound is <= 0.95 tol/(1+tol) ||Y~_task||_F, so bound <= tol ||Y||_F."
    )
    bound = ErrorBound(
        value=value, norm="fro", kind="deterministic", delta=0.0, assumptions=assumptions
    )
    cost = Cost(flops=flops, kernel_evals=evals, key_fraction=key_fraction)
    return MethodResult(out, lse, bound, cost)
