r"""Low-rank softmax-attention approximations (survey arXiv:2604.01757, §4).

Every method here approximates :math:`Y = Z^{-1} A V`, :math:`A = \exp(QK^\top s)`,
:math:`Z = \operatorname{diag}(A\mathbf 1)`, by a low-rank (or top-k) :math:`\tilde A`
and returns :math:`\tilde Y = \operatorname{diag}(\tilde A\mathbf 1)^{-1}\tilde A V`
(Loki, Skyformer, WildCat, the rSVD oracle, CSALR) or the published formula
(Linformer, Nyströmformer). They are registered in :mod:`attention._registry` and run
through :func:`attention.approximate`; this module has no other public API.

Deterministic bounds all come from the normaliser-aware row lemma
(:func:`attention.bounds.row_lemma`): with :math:`\tilde z_i = \tilde a_i\mathbf 1 > 0`,

.. math::

    y_i - \tilde y_i = (a_i - \tilde a_i)(V - \mathbf 1 y_i^\top)/\tilde z_i,
    \qquad \|y_i - \tilde y_i\|_2 \le \rho_i \max_j \|v_j - y_i\|_2,
    \quad \rho_i = \|a_i - \tilde a_i\|_1/\tilde z_i,

where only ``rho_i`` is method specific (:func:`attention.bounds.row_lemma` and
:func:`attention.bounds.dropped_mass_bound` do the rest). Loki's bound is the
dropped-mass form of the lemma; the Skyformer/WildCat bounds use the PSD residual of
the lift (:meth:`attention.softmax_matrix.SoftmaxMatrix.lift_to_attention`); the rSVD
oracle's is probabilistic (a posteriori spectral residual). Linformer, Nyströmformer and
CSALR return no bound: their theory gives none that can be checked on the data.

References
----------
Loki: P. Singhania et al., NeurIPS 2024, arXiv:2406.02542. Skyformer: Y. Chen et al.,
NeurIPS 2021, arXiv:2111.00035. WildCat: T. Schröder, L. Mackey, arXiv:2602.10056.
Linformer: S. Wang et al., arXiv:2006.04768. Nyströmformer: Y. Xiong et al., AAAI 2021,
arXiv:2102.03902. Survey: Serret et al., arXiv:2604.01757, §4.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dtrsm
from scipy.special import logsumexp

from attention._core import (
    CAP_TEXT,
    Cost,
    ErrorBound,
    Problem,
    finish_row_bounds,
    method_result,
    project_to_value_ball,
    value_ball,
)
from attention._parallel import map_slices
from attention._registry import register
from attention.bounds import dropped_mass_bound, row_lemma, value_radius
from attention.exact import softmax_attention
from attention.softmax_matrix import SoftmaxMatrix
from rnla import sketch as _sketch
from rnla._validation import (
    ConvergenceWarning,
    as_float_array,
    check_int,
    check_option,
    check_probability,
)
from rnla.estimate import lowrank_error_estimate
from rnla.lowrank import rsvd
from rnla.operators import EntryMatrixBase
from rnla.psd import rpcholesky

__all__: list[str] = []

_EPS64 = float(np.finfo(np.float64).eps)

_SKETCHES = {
    "gaussian": _sketch.gaussian,
    "rademacher": _sketch.rademacher,
    "orthogonal_gaussian": _sketch.orthogonal_gaussian,
    "srht": _sketch.srht,
    "countsketch": _sketch.countsketch,
    "sparse_sign": _sketch.sparse_sign,
}


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------


def _fro_bound(rows: list[np.ndarray], kind: str, assumptions: str, delta: float = 0.0):
    """Frobenius-norm :class:`ErrorBound` from per-row bounds of every slice."""
    with np.errstate(over="ignore"):
        value = float(math.sqrt(sum(float(np.sum(e * e)) for e in rows)))
    bound_delta = 0.0 if kind == "deterministic" else delta
    return ErrorBound(value, "fro", kind, bound_delta, assumptions)


def _softmax_rows(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row softmax of scores ``s`` (``-inf`` allowed) and its log-normaliser.

    Overwrites ``s`` (a temporary of the callers) with the softmax, in place: three
    passes over the ``(n, c)`` block instead of eight with temporaries (same values).
    """
    mx = np.max(s, axis=1, keepdims=True)
    mx[~np.isfinite(mx)] = 0.0
    p = np.subtract(s, mx, out=s)
    np.exp(p, out=p)
    z = p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(z[:, 0] > 0, np.log(z[:, 0]) + mx[:, 0], -np.inf)
    pos = z[:, 0] > 0
    if pos.all():
        p /= z
    else:
        p[pos] /= z[pos]
        p[~pos] = 0.0
    return p, lse


def _ratio_output(num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(num[:, :-1] / z, z)`` with ``z = num[:, -1]``.

    Rows with ``z = 0``, or whose ratio overflows (``z`` tiny next to ``num``), give
    output 0 and ``z = 0`` (no approximate normaliser): never inf or NaN.
    """
    z = num[:, -1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = num[:, :-1] / np.where(z != 0, z, 1.0)[:, None]
    bad = (z == 0) | ~np.isfinite(y).all(axis=1)
    y[bad] = 0.0
    return y, np.where(bad, 0.0, z)


def _in_range(problem: Problem, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Project rows the output dtype cannot hold (ratio overflow) onto the value ball."""
    limit = float(np.finfo(problem.dtype).max)
    bad = ~(np.abs(y) <= limit).all(axis=1)  # also catches inf and NaN
    if np.any(bad):
        y = y.copy()
        clipped = np.clip(np.nan_to_num(y[bad], nan=0.0), -limit, limit)
        y[bad] = project_to_value_ball(problem, clipped, v)
    return y


def _log_abs(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(z > 0, np.log(np.where(z > 0, z, 1.0)), -np.inf)


def _check_nonneg_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value} must be finite and >= 0")
    return value


def _slice64(problem: Problem, g: int):
    return tuple(x.astype(np.float64) for x in problem.slice(g))


# ---------------------------------------------------------------------------------------
# §4.1 Loki: PCA of keys, top-k by low-dimensional scores, exact attention on the top-k
# ---------------------------------------------------------------------------------------


def _loki_basis(keys: np.ndarray, rank: int, rng) -> np.ndarray:
    """Top-``rank`` right singular vectors ``P`` (d, r) of the (uncentred) keys."""
    if rank >= keys.shape[1]:
        return np.eye(keys.shape[1])
    r = min(rank, min(keys.shape))
    return rsvd(keys, r, rng=rng).Vt.T.astype(np.float64)


def _check_calibration(calibration, problem: Problem):
    if calibration is None:
        return None
    C = as_float_array(calibration, name="calibration")
    d, Gk = problem.d, problem.k.shape[0]
    if C.ndim == 2 and C.shape[1] == d:
        return [C.astype(np.float64)] * Gk
    if C.ndim == 3 and C.shape[0] == Gk and C.shape[2] == d:
        return [c.astype(np.float64) for c in C]
    raise ValueError(
        f"calibration must have shape (N, d={d}) or (Gk={Gk}, N, d={d}) (one set per "
        f"key/value slice), got {C.shape}"
    )


@register(
    "loki",
    section="§4.1",
    family="low-rank",
    causal=True,
    bound="deterministic",
    summary=(
        "Loki: PCA of keys, top-k keys by rank-r scores (quadratic: scores every visible "
        "key), exact attention on them."
    ),
)
def _loki(problem: Problem, *, rng, rank=None, top_k=None, calibration=None):
    r"""Loki: low-dimensional key selection, then exact attention on the selection.

    ``P`` (d, r) = top right singular vectors of the calibration keys (default: the
    keys of the slice) from :func:`rnla.rsvd`; approximate scores
    :math:`\tilde s_{ij} = s\,(q_iP)(k_jP)^\top`; keep the ``top_k`` visible keys per
    query and attend exactly over them. Since :math:`q^\top(I - PP^\top)k =
    ((I - PP^\top)q)^\top((I - PP^\top)k)`,
    :math:`|s_{ij} - \tilde s_{ij}| \le \delta_{ij} = s\|q_i^\perp\|\|k_j^\perp\|`, so
    the dropped mass is at most :math:`D_i = \sum_{j\notin S_i} e^{\tilde s_{ij} +
    \delta_{ij}}` while :math:`\tilde z_i = \sum_{j\in S_i} e^{s_{ij}}` is exact: the
    dropped probability is at most :math:`D_i/(\tilde z_i + D_i)`.

    **Cost: quadratic at the default budget.** Only the approximate scores scale with
    the rank: :math:`2nmr` flops (``r/d`` of exact attention's score GEMM). Every row
    still selects among all its visible keys (:math:`O(m)` per row: vectorised
    counting passes, :func:`attention._kernels.topk._select_block`), attends
    :math:`k = \lceil m/8\rceil` keys exactly (:math:`2nk(d + d_v)` flops; gathered
    rows in float64 arithmetic, or GEMMs over the union of a block's kept keys when it
    is small, :func:`attention.sparse._kept_block`) and the dropped-mass bound needs
    :math:`\tilde s_{ij} + \delta_{ij}` and its exponential for every dropped visible
    pair (one vectorised float64 log-sum-exp pass per row, no :math:`O(nm)`
    temporaries). Blocks of 256 rows of all slices run on all cores. Measured on one
    real SmolLM2 layer (9 causal heads, ``n = 4096``, one thread): about 45% of the
    time in the kept part, 17% in the selection, 12% in the bound pass, 8% in the
    rank-``r`` scores; 0.25-0.3x the speed of exact attention
    (:mod:`benchmarks.attention_selection`). What limits it is the kept part: with
    :math:`k = m/8` the union of a 256-row block's kept keys is 70-85% of its visible
    keys (one real head), so the dense form costs most of exact attention's two GEMMs,
    and the gathered form (about 15 ns per kept key: two scattered rows) more. A fixed
    ``top_k`` makes the kept part linear; the selection and the bound pass stay
    :math:`O(nm)`.

    **Bound.** :math:`\tilde s_{ij}` is formed in the work dtype and the exact scores
    of the kept keys too, so the bound adds their rounding: :math:`s\,\tau\,\|q_i\|
    \|k_j\|` per dropped pair (:math:`\tau` covers the rounding of :math:`\tilde s`,
    :math:`\gamma_{r+3}`, the float64 projections and residual norms and the basis's
    departure from orthonormal columns :math:`\|P^\top P - I\|`) and
    :math:`\gamma_{d+3} s\|q_i\|\max_j\|k_j\| + 2u + 2k\,u_{64}` to the kept
    log-normaliser (Higham, Lemma 3.1 and (3.5)).
    """
    n, m, d = problem.n, problem.m, problem.d
    rank = max(1, d // 4) if rank is None else rank
    rank = check_int(rank, "rank", minimum=1, maximum=d)
    top_k = max(1, -(-m // 8)) if top_k is None else check_int(top_k, "top_k", minimum=1)
    calib = _check_calibration(calibration, problem)
    if problem.causal and calib is None:
        raise ValueError(
            "loki with causal=True needs calibration keys: a PCA of the keys themselves "
            "would let future keys decide which past keys a query attends to; pass "
            "calibration= an (N, d) array of keys from other text (as Loki does)"
        )
    from attention._kernels.topk import _loki_drop, _select_block
    from attention.sparse import _TOPK_ROWS, _kept_block, _work_dtype

    scale = problem.scale
    G = problem.n_slices
    kk = min(top_k, m)
    work = _work_dtype(problem)
    u64 = _EPS64 / 2
    uw = float(np.finfo(work).eps) / 2
    bases: dict[int, np.ndarray] = {}
    flops = 0.0
    kv = {}
    for j in dict.fromkeys(int(x) for x in problem.kv_index):
        src = problem.k[j].astype(np.float64) if calib is None else calib[j]
        P = _loki_basis(src, rank, rng)
        bases[j] = P
        flops += 2.0 * src.shape[0] * d * rank * 8  # rsvd: about 8 passes
        k64 = problem.k[j].astype(np.float64)
        kP = k64 @ P
        # ||E||: departure of P from orthonormal columns (rounding of the basis)
        e_orth = float(np.linalg.norm(P.T @ P - np.eye(P.shape[1]), 2))
        kv[j] = (
            np.ascontiguousarray(kP.astype(work)),
            np.linalg.norm(k64 - kP @ P.T, axis=1),  # ||(I - PP^T) k_j||
            np.linalg.norm(k64, axis=1) * (1 + 2 * (d + 2) * u64),
            np.ascontiguousarray(problem.k[j], dtype=work),
            np.ascontiguousarray(problem.v[j], dtype=work),
            e_orth,
        )
    # Exact scores s_ij = s q_i.k_j against the approximate ones S_ij (work dtype):
    # s_ij <= S_ij + s ||q_i^perp|| ||k_j^perp|| + s tau ||q_i|| ||k_j||, where tau
    # covers the basis's departure from orthonormality ||E|| (q.(I-PP^T)k <=
    # |(I-PP^T)q| |(I-PP^T)k| + ||E||(1+||E||)|q||k|), the float64 rounding of the
    # projections and residual norms (eps) and the rounding of S (gamma_(r+3) in the
    # work dtype, Higham Lemma 3.1/(3.5)).
    gd = (d + 2) * u64 / (1 - (d + 2) * u64)
    gr = (rank + 3) * uw / (1 - (rank + 3) * uw)
    ld = (d + 3) * uw / (1 - (d + 3) * uw)

    def tau_of(e_orth):
        eps = 3 * (d + rank + 4) * u64 * (1 + e_orth)
        return 1.01 * (
            (1 + e_orth) * (gr * (1 + 2 * gd) + 3 * gd)
            + 2 * eps * (1 + eps)
            + eps * eps
            + e_orth * (1 + e_orth)
        )

    outs = np.zeros((G, n, problem.dv))
    lses = np.full((G, n), -np.inf)
    log_drop = np.full((G, n), -np.inf)
    n_kept = np.zeros((G, n), dtype=np.int64)

    def prep(g):
        j = int(problem.kv_index[g])
        P = bases[j]
        kn, e_orth = kv[j][2], kv[j][5]
        q64 = problem.q[g].astype(np.float64)
        qP = q64 @ P
        q_perp = np.linalg.norm(q64 - qP @ P.T, axis=1)
        qn = np.linalg.norm(q64, axis=1) * (1 + 2 * (d + 2) * u64)
        return (
            np.ascontiguousarray((scale * qP).astype(work)),
            scale * q_perp,
            scale * tau_of(e_orth) * qn,
            # the kept normaliser is computed from scores rounded in the work dtype
            # (and weights stored there): its log is low by at most this
            ld * scale * qn * float(kn.max(initial=0.0)) + 2 * uw + 2 * kk * u64,
            np.ascontiguousarray(problem.q[g], dtype=work),
        )

    qpre = map_slices(prep, range(G))

    no_aux, no_mom = np.zeros((3, 0), dtype=work), np.zeros((1, 3))

    def block(unit):
        g, r0 = unit
        r1 = min(n, r0 + _TOPK_ROWS)
        hi = min(max(r1 + problem.offset if problem.causal else m, 0), m)
        if hi == 0:
            return
        j = int(problem.kv_index[g])
        kPw, k_perp, kn, kw, vw, _ = kv[j]
        qPw, a, c_row, low, qw = qpre[g]
        S = qPw[r0:r1] @ kPw[:hi].T
        lims = np.full(r1 - r0, hi, dtype=np.int64)
        if problem.causal:
            lims = np.clip(np.arange(r0, r1) + problem.offset + 1, 0, hi)
        sl = slice(r0, r1)
        sel = np.empty((r1 - r0, kk), dtype=np.int64)
        sv = np.empty((r1 - r0, kk))
        # Selection by the approximate scores, exact attention on the kept keys.
        seen = np.empty(r1 - r0, dtype=np.int64)
        _select_block(
            S, lims, kk, False, False, sel, sv, n_kept[g, sl], seen, lses[g, sl], no_aux, no_mom
        )
        _kept_block(
            sel, sv, n_kept[g, sl], qw[sl], kw[:hi], vw[:hi], scale, True, outs[g, sl], lses[g, sl]
        )
        # Upper bound of the dropped mass relative to the kept normaliser.
        _loki_drop(
            S,
            lims,
            sel,
            n_kept[g, sl],
            a[sl],
            k_perp[:hi],
            c_row[sl],
            kn[:hi],
            lses[g, sl] - low[sl],
            log_drop[g, sl],
        )

    # largest blocks first (causal: the last rows see the most keys), for balance
    map_slices(block, [(g, r0) for r0 in range(0, n, _TOPK_ROWS)[::-1] for g in range(G)])
    rows = []
    for g in range(G):
        v = problem.v[int(problem.kv_index[g])].astype(np.float64)
        ok = np.isfinite(lses[g])
        # eps = D / (1 + D), D = exp(log_drop) (1 + 1e-12 for the float64 pass);
        # nothing dropped: 0.
        ld_g = log_drop[g] + 1e-12
        e = np.where(np.isfinite(ld_g), 1.0 / (1.0 + np.exp(np.minimum(-ld_g, 700.0))), 0.0)
        eps = np.where(ok, e, 0.0)
        rb = dropped_mass_bound(eps, v, Y_tilde=outs[g])
        rows.append(finish_row_bounds(problem, rb.rows, outs[g], v))
    evals = int(n_kept.sum())
    flops += G * (2.0 * (n + m) * d * rank + 2.0 * n * m * rank + 2.0 * n * kk * (d + problem.dv))
    bound = _fro_bound(
        rows,
        "deterministic",
        "Dropped-mass bound (attention.bounds.dropped_mass_bound): exact scores on the "
        "selected keys, dropped probability <= D_i / (z~_i + D_i) with D_i = sum over "
        "unselected visible keys of exp(s~_ij + scale ||q_i^perp|| ||k_j^perp||) "
        "(|q.(I-PP^T)k| <= ||(I-PP^T)q|| ||(I-PP^T)k||); holds for every draw of the "
        "randomized PCA" + CAP_TEXT,
    )
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


# ---------------------------------------------------------------------------------------
# §4.1 Skyformer and WildCat: Nyström on the PSD lift B = D G D
# ---------------------------------------------------------------------------------------


def _n_threads() -> int:
    """Worker threads of the slice pools (``numba.get_num_threads()``, as map_slices)."""
    import numba

    return max(1, numba.get_num_threads())


def _trsm_right_lt(L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``R^T L^{-T}`` (``= solve_triangular(L, R, lower=True).T``), overwriting ``R``.

    ``L`` lower triangular ``(r, r)``, ``R`` float64 ``(r, N)`` C-ordered (its transpose
    is Fortran-ordered, so BLAS ``dtrsm`` solves it in place).
    """
    if R.shape[1] == 0 or not R.flags.c_contiguous:
        return sla.solve_triangular(L, R, lower=True).T
    return dtrsm(1.0, L, R.T, side=1, lower=1, trans_a=1, overwrite_b=1)


class _Values(NamedTuple):
    """Value-side quantities of one key/value slice, shared by its query heads."""

    v: np.ndarray  # (m, dv) float64
    vz: np.ndarray  # (m, dv + 1) [V 1]
    vn1: np.ndarray  # (m, 2) [||v_j||, 1]
    radius: float  # 2 R of attention.bounds.value_radius (row lemma without Y)
    ball: tuple  # attention._core.value_ball(v)


def _values(problem: Problem) -> dict:
    """:class:`_Values` of every key/value slice (computed once per slice)."""
    out = {}
    for g in range(problem.n_slices):
        j = int(problem.kv_index[g])
        if j not in out:
            v = problem.slice(g)[2].astype(np.float64)
            vz = np.empty((v.shape[0], v.shape[1] + 1))
            vz[:, :-1] = v
            vz[:, -1] = 1.0
            vn1 = np.ones((v.shape[0], 2))
            vn1[:, 0] = np.sqrt(np.einsum("ij,ij->i", v, v))
            ball = value_ball(v)
            out[j] = _Values(v, vz, vn1, 2.0 * ball[1], ball)
    return out


def _lift_nystrom(q, k, vals, scale, tau, landmarks, gamma):
    r"""Regularised Nyström of the PSD lift on ``landmarks`` (indices into ``[Q; K]``).

    :math:`F = G_{:S}L^{-\top}` with :math:`LL^\top = G_{SS} + \gamma I` satisfies
    :math:`FF^\top \preceq G` (so the residual :math:`E` is PSD and :math:`|E_{ij}| \le
    \sqrt{e_ie_j}`, :math:`e = 1 - \|F_i\|^2`), and :math:`\hat A = D_QF_QF_K^\top D_K`.

    ``G`` is the Gaussian kernel of :meth:`SoftmaxMatrix.psd_lift` (bandwidth
    :math:`1/\sqrt{s}`) on :math:`X = [\tau Q; K/\tau]` in float64; only its landmark
    rows are formed (one GEMM and the exponentials, :func:`_gaussian_rows`).

    Overflow and underflow: the row scaling :math:`D_{Q,i}` cancels in
    :math:`\tilde y_i`, so the products use :math:`F_Q` and :math:`W = \beta F_K` with
    :math:`\beta_j = D_{K,j}/\max_l D_{K,l} \le 1`; ``z`` and the :math:`\ell_1` row
    errors are in the same units (divided by :math:`D_{Q,i}\max_l D_{K,l}`), ``lse``
    adds the logs back. Nothing overflows, whatever the logits. The rounding of the two
    products (and underflow in :math:`W`) is bounded by :math:`\gamma_{r+m}` times the
    absolute products and added to the row bound, with ``z`` lowered by its own error.
    Rows with :math:`\tilde z_i \le 0` (a query so far from every landmark that its
    kernel row underflows) are computed exactly (``m`` kernel evaluations each), and so
    is every row when the kernel entries are too inaccurate for the theory
    (:math:`\|F_i\|^2 > 1` beyond rounding or an indefinite :math:`G_{SS}`, at extreme
    scale times squared norms): they are returned as ``lost`` (bound 0) and computed by
    :func:`_finish_lost`. ``vals``: the slice's :class:`_Values`. Returns ``(y, lse,
    rows, evals, lost)`` with ``rows`` the row-lemma bounds before the cap.
    """
    from attention._kernels.lowrank import _gaussian_rows, _lift_rows

    n, m = q.shape[0], k.shape[0]
    X = np.empty((n + m, q.shape[1]))
    np.multiply(q, tau, out=X[:n], dtype=np.float64)
    np.divide(k, tau, out=X[n:], dtype=np.float64)
    xsq = np.einsum("ij,ij->i", X, X)
    R = X[landmarks] @ X.T  # (r, n + m) Gram rows, then the Gaussian kernel in place
    _gaussian_rows(R, xsq[landmarks], xsq, 0.5 * scale)
    r = R.shape[0]
    M = R[:, landmarks] + gamma * np.eye(r)
    jitter, L = 0.0, None
    for _ in range(12):
        try:
            L = sla.cholesky(M + jitter * np.eye(r), lower=True)
            break
        except np.linalg.LinAlgError:
            # Duplicate landmarks make G_SS singular: a jitter only regularises the
            # Nyström approximation further, which keeps F F^T <= G and the bound valid.
            jitter = max(10.0 * jitter, r * np.finfo(np.float64).eps)
    # G_SS has unit diagonal: only kernel entries ruined by rounding make it indefinite.
    # F = R^T L^-T: one BLAS trsm from the right on R^T (already Fortran-ordered, solved
    # in place), 2.5x faster than solve_triangular's left solve on a copy of R.
    F = np.zeros((n + m, r)) if L is None else _trsm_right_lt(L, R)
    sq = np.einsum("ij,ij->i", F, F)
    allowance = 10.0 * r * _EPS64
    e = np.maximum(1.0 - sq, 0.0) + allowance
    reliable = L is not None and bool(sq.max() <= 1.0 + 100.0 * allowance)
    # log D = s ||x||^2 / 2 (the lift's diagonal scalings of the rescaled rows).
    log_d = 0.5 * scale * xsq
    b = float(log_d[n:].max()) if m else 0.0
    beta = np.exp(log_d[n:] - b)  # in (0, 1]
    W = beta[:, None] * F[n:]
    num = F[:n] @ (W.T @ vals.vz)
    # |fl(num) - num| <= gamma_{r+m} |F_Q| |W|^T |[V 1]| (+ underflow, absolute), bounded
    # per row in the kernel through |W|^T [||v_j||, 1].
    babs = np.abs(W).T @ vals.vn1
    half = 0.5 * np.log(e)
    s_half = (
        float(logsumexp(log_d[n:] - b + half[n:])) if m else -np.inf
    )  # log(beta): no underflow
    y = np.empty((n, num.shape[1] - 1))
    lse, rows = np.empty(n), np.empty(n)
    lost_rows = np.empty(n, dtype=np.bool_)
    _lift_rows(
        num,
        F,
        babs,
        (r + m + 2) * _EPS64,
        (r + m + 2) * np.finfo(np.float64).tiny,
        log_d[:n],
        b,
        half[:n],
        s_half,
        vals.radius,
        y,
        lse,
        rows,
        lost_rows,
    )
    evals = r * (n + m)
    # Rows the lift cannot represent (the query is so far from every landmark that its
    # Gaussian kernel row underflows, so z~_i <= 0), or every row when the kernel
    # entries are too inaccurate for the theory: exact attention, bound 0.
    lost = np.flatnonzero(lost_rows) if reliable else np.arange(n)
    rows[lost] = 0.0
    return y, lse, rows, evals, lost


def _finish_rows(problem, res, vals, g, outs, lses):
    """Write slice ``g`` of :func:`_lift_nystrom`'s result into ``outs``/``lses``.

    Returns ``(row bounds, kernel evaluations, lost)``: the bounds capped and padded by
    :func:`attention._core.finish_row_bounds` (on the workers).
    """
    y, lse, lemma, ev, lost = res
    outs[g] = y
    lses[g] = lse
    return finish_row_bounds(problem, lemma, y, vals.v, ball=vals.ball), ev, lost


def _finish_lost(problem, res, vals, outs, lses):
    """Exact rows ``lost`` of every slice (see :func:`_lift_nystrom`) and their bounds.

    ``res[g] = (rows, evaluations, lost)`` of slice ``g``. The exact kernel (a parallel
    kernel, so called from the main thread after the slices' pools) computes the rows
    the lift cannot represent, one call per key/value slice with the lost rows of all
    its query heads stacked (a head may lose most of its rows: larger calls keep the
    kernel's blocks full), in the working dtype of the sparse methods
    (:func:`attention.sparse._work_dtype`: float32 for float32 inputs with moderate
    logits, 2x the float64 rate). Bound: the cap and rounding allowance of
    :func:`attention._core.finish_row_bounds` of a 0 bound, row by row as for the
    others (the allowance is the proven worst case of an exact softmax row over ``m``
    keys formed in the input dtype). Returns ``[(row bounds, kernel evaluations)]`` per
    slice.
    """
    out = [[r[0], r[1]] for r in res]
    groups = {}
    for g, r in enumerate(res):
        if r[2].size:
            groups.setdefault(int(problem.kv_index[g]), []).append(g)
    from attention.sparse import _work_dtype

    work = _work_dtype(problem) if groups else np.float64
    for j, gs in groups.items():
        vg = vals[j]
        _, k, v = problem.slice(gs[0])
        q = np.concatenate([problem.slice(g)[0][res[g][2]] for g in gs])
        y, lse = softmax_attention(
            q.astype(work, copy=False),
            k.astype(work, copy=False),
            v.astype(work, copy=False),
            scale=problem.scale,
            return_lse=True,
        )
        y = y.astype(np.float64)
        start = 0
        for g in gs:
            lost = res[g][2]
            yg, lg = y[start : start + lost.size], lse[start : start + lost.size]
            start += lost.size
            outs[g, lost], lses[g, lost] = yg, lg
            out[g][0][lost] = finish_row_bounds(
                problem, np.zeros(lost.size), yg, vg.v, ball=vg.ball
            )
            out[g][1] += lost.size * problem.m
    return [tuple(o) for o in out]


def _check_tau(tau):
    if isinstance(tau, str):
        return check_option(tau, ("balance",), "tau")
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be 'balance' or a positive real number, got {tau!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau={tau} must be finite and > 0")
    return float(tau)


def _balanced_tau(q: np.ndarray, k: np.ndarray) -> float:
    r"""Closed-form balancing factor :math:`\tau = \sqrt{R_K/R_Q}` (maximum row norms).

    It minimises :math:`\max_{i,j} D_{Q,i}D_{K,j} = \exp(s(\tau^2R_Q^2 +
    R_K^2/\tau^2)/2)`, the factor that multiplies the Gaussian residual in the bound,
    to :math:`\exp(sR_QR_K)`, by balancing :math:`\tau R_Q = R_K/\tau`.
    """
    rq = float(np.sqrt(np.max(np.einsum("ij,ij->i", q, q, dtype=np.float64))))
    rk = float(np.sqrt(np.max(np.einsum("ij,ij->i", k, k, dtype=np.float64))))
    return 1.0 if rq == 0 or rk == 0 else math.sqrt(rk / rq)


_LIFT_TEXT = (
    "Normaliser-aware row lemma (attention.bounds.row_lemma) with ||a_i - a^_i||_1 <= "
    "D_Q,i sqrt(e_i) sum_j D_K,j sqrt(e_j) from |E_ij| <= sqrt(E_ii E_jj) for the PSD "
    "Nyström residual E = G - F F^T of the Gaussian lift G of [tau Q; K/tau] "
    "(SoftmaxMatrix.lift_to_attention; A - A^ = D_Q E_QK D_K is its off-diagonal block, "
    "Skyformer/WildCat); e = diag(E) computed exactly from F; products in row-scaled form "
    "(D_Q,i cancels; no overflow) with their float64 rounding gamma_(r+m) |F_Q| |W|^T "
    "|[V 1]| added; rows whose approximate normaliser is not positive are computed "
    "exactly, and so is every row if the kernel entries are too inaccurate for the "
    "theory (||F_i||^2 > 1 beyond rounding); "
    "deterministic given the landmarks (holds for every draw)"
)


@register(
    "skyformer",
    section="§4.1",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "Skyformer (Chen et al., 2021) factors the Gaussian-kernel PSD lift of [Q; K] by "
        "Nyström with landmarks drawn from all queries and keys; a causal mask destroys "
        "the PSD structure and every output row would mix future keys through the "
        "landmarks"
    ),
    bound="deterministic",
    summary="Skyformer: regularised Nyström of the Gaussian-kernel PSD lift, uniform landmarks.",
)
def _skyformer(problem: Problem, *, rng, n_landmarks=None, gamma=1e-2):
    r"""Skyformer: uniform-landmark Nyström of the softmax PSD lift.

    ``n_landmarks`` points (default ``min(64, n + m)``) drawn uniformly without
    replacement from the ``n + m`` rows of :math:`[Q; K]`;
    :math:`\hat G = G_{:S}(G_{SS} + \gamma I)^{-1}G_{S:}` of the Gaussian lift :math:`G`
    (:meth:`SoftmaxMatrix.psd_lift`, ``tau = 1``);
    :math:`\hat A = D_Q\hat G_{QK}D_K`, :math:`\tilde Y = \hat AV/\hat A\mathbf 1`.
    """
    n, m = problem.n, problem.m
    landmarks = min(64, n + m) if n_landmarks is None else n_landmarks
    landmarks = check_int(landmarks, "n_landmarks", minimum=1, maximum=n + m)
    gamma = _check_nonneg_real(gamma, "gamma")
    G = problem.n_slices
    # Landmarks drawn in slice order; the slices then run on all cores (one-thread BLAS:
    # a threaded BLAS on these thin products is 2-4x slower under load).
    picks = [
        np.sort(_sketch.uniform_sampling(n + m, landmarks, replace=False, rng=rng).indices)
        for _ in range(G)
    ]

    vals = _values(problem)
    outs = np.empty((G, n, problem.dv), dtype=problem.dtype)
    lses = np.empty((G, n))

    def work(g):
        q, k, _ = problem.slice(g)
        vg = vals[int(problem.kv_index[g])]
        res = _lift_nystrom(q, k, vg, problem.scale, 1.0, picks[g], gamma)
        return _finish_rows(problem, res, vg, g, outs, lses)

    res = _finish_lost(problem, map_slices(work, range(G)), vals, outs, lses)
    rows = [r[0] for r in res]
    evals = sum(r[1] for r in res)
    flops = G * 2.0 * (n + m) * landmarks * (problem.d + problem.dv + 1 + landmarks)
    bound = _fro_bound(rows, "deterministic", _LIFT_TEXT + "; tau = 1" + CAP_TEXT)
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


class _KeyExpKernel(EntryMatrixBase):
    r"""Normalised exponential kernel :math:`\exp(x_i\cdot x_j - R^2)` on scaled keys.

    The key block :math:`D_KG_{KK}D_K` of the lift divided by :math:`e^{R^2}`,
    :math:`R = \max\|x_j\|` (entries in (0, 1], no overflow): RPCholesky on it samples
    pivots with probability proportional to :math:`D_{K,j}^2` times the Gaussian
    residual, as the WildCat reference code does.
    """

    def __init__(self, X: np.ndarray):
        super().__init__((X.shape[0], X.shape[0]), np.float64)
        self._X = X
        self._xsq = np.einsum("ij,ij->i", X, X)
        self._r2 = float(np.max(self._xsq)) if X.shape[0] else 0.0

    def _rows(self, idx):
        from attention._kernels.lowrank import _exp_shifted

        G = self._X[idx] @ self._X.T
        _exp_shifted(G, self._r2)
        return G

    def _cols(self, idx):
        return np.ascontiguousarray(self._rows(idx).T)

    def _entries(self, i, j):
        return np.exp(np.minimum(np.sum(self._X[i] * self._X[j], 1) - self._r2, 0.0))

    def _diag(self):
        return np.exp(np.minimum(self._xsq - self._r2, 0.0))


@register(
    "wildcat",
    section="§4.1",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "WildCat picks its RPCholesky coreset (pivots) from all keys of the PSD lift and "
        "fits Nyström weights on them; future keys would decide which past keys represent "
        "the rest, and a causally masked matrix is not PSD"
    ),
    bound="deterministic",
    summary="WildCat: RPCholesky coreset of the tau-balanced PSD lift, Nyström weights.",
)
def _wildcat(problem: Problem, *, rng, rank=None, tau="balance", pivots="keys"):
    r"""WildCat: a weighted coreset chosen by randomly pivoted Cholesky.

    Queries and keys are rescaled :math:`\tau Q`, :math:`K/\tau` (:math:`QK^\top`
    unchanged), ``tau="balance"`` giving :math:`\tau = \sqrt{\max_j\|k_j\|/\max_i\|q_i\|}`.
    ``pivots="keys"`` (the paper's algorithm): :func:`rnla.rpcholesky` on the key block
    of the lift selects a coreset :math:`S` of keys and the Nyström (RKHS
    least-squares) weights :math:`W = \kappa(K_S, K_S)^{-1}\kappa(K_S, K)` give
    :math:`\hat A = A_{:S}W`; ``pivots="lift"``: :func:`rnla.rpcholesky` on the whole
    lift :meth:`SoftmaxMatrix.psd_lift` (pivots among queries and keys).
    """
    n, m = problem.n, problem.m
    pivots = check_option(pivots, ("keys", "lift"), "pivots")
    top = m if pivots == "keys" else n + m
    rank = min(64, top) if rank is None else rank
    rank = check_int(rank, "rank", minimum=1, maximum=top)
    tau = _check_tau(tau)
    rs = math.sqrt(problem.scale)

    G = problem.n_slices
    # One seed per slice, drawn in slice order: each slice's pivots come from its own
    # generator, so the slices (pivots and Nyström steps) run on all cores and the
    # result does not depend on the threads.
    seeds = rng.integers(0, 2**63 - 1, size=G)
    vals = _values(problem)
    outs = np.empty((G, n, problem.dv), dtype=problem.dtype)
    lses = np.empty((G, n))

    def work(g):
        q, k, _ = problem.slice(g)
        t = _balanced_tau(q, k) if tau == "balance" else tau
        if pivots == "keys":
            E = _KeyExpKernel(np.multiply(k, rs / t, dtype=np.float64))
            S = n + rpcholesky(E, rank, rng=int(seeds[g])).pivots
            ev = E.n_evaluations
        else:
            q64, k64 = q.astype(np.float64), k.astype(np.float64)
            sm = SoftmaxMatrix(q64, k64, scale=problem.scale, stabilized=False)
            lift = sm.psd_lift(tau=t)
            S = rpcholesky(lift.matrix, rank, rng=int(seeds[g])).pivots
            ev = lift.matrix.n_evaluations
        vg = vals[int(problem.kv_index[g])]
        res = _lift_nystrom(q, k, vg, problem.scale, t, S, 0.0)
        r = S.size
        flops = 2.0 * (n + m) * r * (problem.d + problem.dv + 1 + r) + 2.0 * m * r * r
        return (*_finish_rows(problem, res, vg, g, outs, lses), t, flops, ev)

    # One-thread BLAS (map_slices): a threaded BLAS on these thin products is 2-4x
    # slower under load.
    res = map_slices(work, range(G))
    taus = [r[3] for r in res]
    flops = sum(r[4] for r in res)
    evals = sum(r[5] for r in res)
    res = _finish_lost(problem, [r[:3] for r in res], vals, outs, lses)
    rows = [r[0] for r in res]
    evals += sum(r[1] for r in res)
    how = (
        f"tau = sqrt(max||k|| / max||q||) per slice ({min(taus):.3g} to {max(taus):.3g})"
        if tau == "balance"
        else f"tau = {tau}"
    )
    bound = _fro_bound(rows, "deterministic", _LIFT_TEXT + "; " + how + CAP_TEXT)
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


# ---------------------------------------------------------------------------------------
# best rank-r approximation of A (the yardstick)
# ---------------------------------------------------------------------------------------


@register(
    "rsvd_oracle",
    section="§4",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "a randomized SVD of the whole n x m matrix A: the causal mask (a triangle) is "
        "not low-rank and the factors mix every key into every row"
    ),
    bound="probabilistic",
    summary="Yardstick: randomized SVD of the implicit A, output diag(A~1)^-1 A~V.",
)
def _rsvd_oracle(
    problem: Problem, *, rng, rank=None, oversample=10, form="normalized", delta=1e-3
):
    r"""Near-best rank-``r`` approximation of the row-scaled :math:`A` by rSVD.

    :func:`rnla.rsvd` (block Krylov) on the operator of the :class:`SoftmaxMatrix`
    :math:`\bar A = \operatorname{diag}(e^{-c})A` in the given ``form``, products only.
    Default: the attention matrix :math:`P = Z^{-1}A`, whose rows all weigh the same in the
    truncation; the output is :math:`\tilde P V` (not renormalised: :math:`P` is
    row-stochastic) and :math:`\|Y - \tilde P V\|_F \le \|P - \tilde P\|_2 \|V\|_F`.
    Other forms renormalise, :math:`\tilde Y = \operatorname{diag}(\tilde A 1)^{-1}
    \tilde A V`, bounded by the row lemma with
    :math:`\|\bar a_i - \tilde a_i\|_1 \le \sqrt m\,\|\bar A - \tilde A\|_2`. The
    spectral residual is bounded a posteriori by
    :func:`rnla.estimate.lowrank_error_estimate`.
    """
    n, m = problem.n, problem.m
    rank = min(32, n, m) if rank is None else rank
    rank = check_int(rank, "rank", minimum=1, maximum=min(n, m))
    oversample = check_int(oversample, "oversample", minimum=0)
    form = check_option(form, ("normalized", "stabilized", "raw"), "form")
    delta = check_probability(delta, "delta")
    G = problem.n_slices
    outs, lses, rows = [], [], []
    flops, evals = 0.0, 0
    for g in range(G):
        q, k, v = _slice64(problem, g)
        sm = SoftmaxMatrix(q, k, scale=problem.scale)
        sm = {"normalized": sm.normalized, "stabilized": sm.stabilized, "raw": sm.raw}[form]()
        op = sm.as_linear_operator()
        res = rsvd(op, rank, oversample=oversample, rng=rng)
        est = lowrank_error_estimate(op, res, norm=2, delta=delta / G, rng=rng)
        if form == "normalized":
            # P = Z^{-1} A is row-stochastic and Y = P V exactly: no renormalisation (which
            # divides by row sums of P~ that can be near 0 on sharp heads), and
            # ||Y - P~ V||_F = ||(P - P~) V||_F <= ||P - P~||_2 ||V||_F.
            y = res.U @ ((res.s[:, None] * res.Vt) @ v)
            c, R = value_radius(v)
            cap = np.sqrt(np.sum((y - c) ** 2, axis=1)) + R
            pad = 4.0 * np.finfo(problem.dtype).eps * (np.sqrt(np.sum(y * y, axis=1)) + R)
            fro = min(est.upper * np.linalg.norm(v), float(np.linalg.norm(cap)))
            rows.append(np.full(n, fro / math.sqrt(n)) + pad)
            lses.append(sm.log_row_sums())
        else:
            num = res.U @ ((res.s[:, None] * res.Vt) @ np.column_stack([v, np.ones(m)]))
            y, z = _ratio_output(num)
            l1 = np.full(n, math.sqrt(m) * est.upper)
            rows.append(finish_row_bounds(problem, row_lemma(l1, z, v).rows, y, v))
            lses.append(_log_abs(z) + sm.log_row_scale())
        outs.append(y)
        ev = sm.n_evaluations + sm.n_statistics_evaluations
        evals += ev
        flops += 2.0 * ev * problem.d + 2.0 * sm.n_evaluations * (rank + oversample)
    how = (
        "||Y - P~V||_F <= ||P - P~||_2 ||V||_F with P = Z^{-1}A row-stochastic (output P~V, "
        "not renormalised; rows of the list are the Frobenius bound spread evenly)"
        if form == "normalized"
        else "Normaliser-aware row lemma with ||a_i - a~_i||_1 <= sqrt(m) ||A - A~||_2 (A in "
        f"the {form} form of SoftmaxMatrix)"
    )
    bound = _fro_bound(
        rows,
        "probabilistic",
        how + ", the spectral residual bounded a posteriori by "
        "rnla.estimate.lowrank_error_estimate (Gaussian probes, power method), each slice "
        f"failing with probability <= {delta / G:.3g}, {delta:.3g} overall (union bound)"
        + CAP_TEXT,
        delta,
    )
    return method_result(problem, outs, lses, bound, Cost(flops, evals))


# ---------------------------------------------------------------------------------------
# §4.2 Linformer (training-free), Nyströmformer, CSALR
# ---------------------------------------------------------------------------------------


@register(
    "linformer",
    section="§4.2",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "Linformer (Wang et al., 2020) projects the sequence axis of K and V (E K, F V), "
        "so every projected key mixes all positions including future ones; the paper "
        "notes that causal masking is not possible with these projections"
    ),
    bound=None,
    summary="Linformer, training-free: random JL projections E = F of keys and values.",
)
def _linformer(problem: Problem, *, rng, sketch_size=None, sketch="gaussian"):
    r"""Linformer (Wang et al. 2020) with a random projection instead of learned ones.

    :math:`\tilde Y = \operatorname{softmax}(s\,Q(EK)^\top)(FV)` with
    :math:`E = F = S` a ``(k, m)`` sketch from :mod:`rnla.sketch`, ``k = sketch_size``
    (default ``min(64, m)``) (Theorem 2 of the
    paper uses scaled Gaussian :math:`E = \delta R`, :math:`F = e^{-\delta}R`).
    Output rows beyond the range of the output dtype are projected onto the ball of
    the values (:func:`attention._core.project_to_value_ball`; never increases the
    error).
    """
    n, m = problem.n, problem.m
    k = min(64, m) if sketch_size is None else sketch_size
    k = check_int(k, "sketch_size", minimum=1, maximum=m)
    make = check_option(sketch, _SKETCHES, "sketch")
    G = problem.n_slices
    # Sketches drawn in slice order; the slices then run on all cores (one-thread BLAS:
    # a threaded BLAS on these thin products is 10-100x slower under load).
    sketches = [make(k, m, rng=rng) for _ in range(G)]

    def work(g):
        q, kk, v = _slice64(problem, g)
        S = sketches[g]
        SK, SV = S @ kk, S @ v
        p, _ = _softmax_rows(problem.scale * (q @ SK.T))
        return _in_range(problem, p @ SV, v)

    outs = map_slices(work, range(G))
    flops = G * (2.0 * k * m * (problem.d + problem.dv) + 2.0 * n * k * (problem.d + problem.dv))
    return method_result(problem, outs, None, None, Cost(flops, G * n * k))


def _segment_means(X: np.ndarray, c: int) -> np.ndarray:
    """Means of ``c`` contiguous segments of near-equal length (``np.array_split``).

    Segment sums by ``np.add.reduceat`` (one pass; a column-wise ``cumsum`` of the
    ``(n, d)`` block took 2.3 ms at ``n = 4096`` and its differences cancel).
    """
    n = X.shape[0]
    sizes = np.full(c, n // c, dtype=np.int64)
    sizes[: n % c] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.add.reduceat(X, starts, axis=0) / sizes[:, None]


_PINV = ("iterative", "exact", "truncated")


def _pinv(A: np.ndarray, method: str, n_iter: int, rcond: float) -> tuple[np.ndarray, float]:
    r"""Pseudo-inverse of the landmark matrix and its residual :math:`\|I - AZ\|_2`.

    ``iterative``: the Nyströmformer iteration (Razavi et al. 2014 form)
    :math:`Z \leftarrow \tfrac14 Z(13I - AZ(15I - AZ(7I - AZ)))` from
    :math:`Z_0 = A^\top/(\|A\|_1\|A\|_\infty)`, ``n_iter`` times (cubic convergence
    once the residual is below 1).
    """
    c = A.shape[0]
    eye = np.eye(c)
    if method == "iterative":
        Z = A.T / (np.abs(A).sum(0).max() * np.abs(A).sum(1).max())
        for _ in range(n_iter):
            AZ = A @ Z
            Z = 0.25 * Z @ (13 * eye - AZ @ (15 * eye - AZ @ (7 * eye - AZ)))
    elif method == "exact":
        Z = np.linalg.pinv(A)
    else:
        Z = np.linalg.pinv(A, rtol=rcond)
    return Z, float(np.linalg.norm(eye - A @ Z, 2))


def _landmark_pieces(problem: Problem, g: int, c: int):
    q, k, v = _slice64(problem, g)
    s = problem.scale
    qt, kt = _segment_means(q, c), _segment_means(k, c)
    F, _ = _softmax_rows(s * (q @ kt.T))
    C, _ = _softmax_rows(s * (qt @ kt.T))
    B, _ = _softmax_rows(s * (qt @ k.T))
    return F, C, B, v


def _check_landmarks(n_landmarks, problem: Problem) -> int:
    if n_landmarks is None:
        return min(64, problem.n, problem.m)
    return check_int(n_landmarks, "n_landmarks", minimum=1, maximum=min(problem.n, problem.m))


@register(
    "nystromformer",
    section="§4.2",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "Nystromformer (Xiong et al., 2021) takes landmarks as segment means over the "
        "whole sequence, so every landmark (and every output row) mixes future queries "
        "and keys; the paper targets bidirectional encoders"
    ),
    bound=None,
    summary="Nyströmformer: segment-means landmarks, iterative/exact/truncated pinv.",
)
def _nystromformer(
    problem: Problem, *, rng, n_landmarks=None, pinv="iterative", n_iter=6, rcond=1e-2
):
    r"""Nyströmformer (Xiong et al. 2021): :math:`\tilde F\,Z\,(\tilde BV)`.

    :math:`\tilde F = \operatorname{softmax}(sQ\tilde K^\top)`,
    :math:`C = \operatorname{softmax}(s\tilde Q\tilde K^\top)`,
    :math:`\tilde B = \operatorname{softmax}(s\tilde QK^\top)` with segment-mean
    landmarks :math:`\tilde Q, \tilde K`, and :math:`Z \approx C^+`.
    Output rows beyond the range of the output dtype are projected onto the ball of
    the values (:func:`attention._core.project_to_value_ball`; never increases the
    error).
    """
    c = _check_landmarks(n_landmarks, problem)
    pinv = check_option(pinv, _PINV, "pinv")
    n_iter = check_int(n_iter, "n_iter", minimum=0)
    rcond = check_probability(rcond, "rcond")
    n, m = problem.n, problem.m

    def work(g):  # slices on all cores, one-thread BLAS (see map_slices)
        F, C, B, v = _landmark_pieces(problem, g, c)
        Z, res = _pinv(C, pinv, n_iter, rcond)
        return _in_range(problem, F @ (Z @ (B @ v)), v), res

    res_g = map_slices(work, range(problem.n_slices))
    outs, resid = [r[0] for r in res_g], [r[1] for r in res_g]
    if pinv == "iterative" and max(resid) > 0.5:
        # From Z0 the residual is 1 - sigma_min^2 / (||A||_1 ||A||_inf) < 1 and it only
        # contracts cubically once small: above 1/2 Z is far from the pseudo-inverse.
        warnings.warn(
            f"nystromformer: the pseudo-inverse iteration did not converge, "
            f"max ||I - A_S Z||_2 = {max(resid):.3g} > 0.5 after n_iter={n_iter} "
            f"(median {float(np.median(resid)):.3g}); use pinv='truncated' or more n_iter",
            ConvergenceWarning,
            stacklevel=3,
        )
    dd = problem.d + problem.dv
    flops = problem.n_slices * (2.0 * (n * c + c * c + c * m) * dd + (8 * n_iter + 2) * c**3)
    return method_result(
        problem, outs, None, None, Cost(flops, problem.n_slices * c * (n + m + c))
    )


@register(
    "csalr",
    section="§4.2",
    family="low-rank",
    causal=False,
    noncausal_reason=(
        "the CSALR form uses segment-mean landmarks of the whole sequence (as "
        "Nystromformer), mixing future queries and keys into every row"
    ),
    bound=None,
    summary="CSALR (survey form): Nyströmformer form with the core C' = C + ones.",
)
def _csalr(problem: Problem, *, rng, n_landmarks=None, augment="diagonal"):
    r"""CSALR as stated in the survey: the Nyströmformer form with an invertible core.

    :math:`\tilde A = \tilde F C'^{-1}\tilde B` and
    :math:`\tilde Y = \operatorname{diag}(\tilde A\mathbf 1)^{-1}\tilde AV`, with
    ``augment="diagonal"``: :math:`C' = C + I` (ones added on the diagonal; invertible
    because :math:`C` is a positive row-stochastic matrix, whose eigenvalues other than
    1 have modulus < 1 (Perron-Frobenius), so -1 is not one) or ``"ones"``:
    :math:`C' = C + \mathbf 1\mathbf 1^\top` (solved by least squares if singular).
    Output rows beyond the range of the output dtype are projected onto the ball of
    the values (:func:`attention._core.project_to_value_ball`; never increases the
    error).
    """
    c = _check_landmarks(n_landmarks, problem)
    augment = check_option(augment, ("diagonal", "ones"), "augment")
    n, m = problem.n, problem.m

    def work(g):  # slices on all cores, one-thread BLAS (see map_slices)
        F, C, B, v = _landmark_pieces(problem, g, c)
        Cp = C + (np.eye(c) if augment == "diagonal" else np.ones((c, c)))
        R = B @ np.column_stack([v, np.ones(m)])
        try:
            X = np.linalg.solve(Cp, R)
        except np.linalg.LinAlgError:
            X = np.linalg.lstsq(Cp, R, rcond=None)[0]
        return _in_range(problem, _ratio_output(F @ X)[0], v)

    outs = map_slices(work, range(problem.n_slices))
    dd = problem.d + problem.dv
    flops = problem.n_slices * (2.0 * (n * c + c * c + c * m) * dd + 2 * c**3)
    return method_result(
        problem, outs, None, None, Cost(flops, problem.n_slices * c * (n + m + c))
    )
