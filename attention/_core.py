"""Shapes, broadcasting, grouped-query attention, validation and result types.

Every public attention function goes through :func:`prepare`, which validates the inputs
once and flattens them into a :class:`Problem`: ``G`` query slices of shape ``(n, d)``,
each attending to one of ``Gk`` key/value slices. Methods work slice by slice on the
problem; :func:`finish` restores the caller's leading shape.

The plumbing every registered method shares lives here too: :func:`method_result` (the
one result builder), :func:`problem_cost_exact`, and the one rounding rule of the
bounds: the proven worst-case allowance :func:`attention_rounding` (also used by
``"adaptive"`` and :class:`attention.kvcache.KVCache`), applied to every method's rows
by :func:`rounding_allowance` / :func:`finish_row_bounds`.
"""

from __future__ import annotations

import functools
import math
import numbers
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rnla._validation import as_float_array, result_dtype

__all__ = [
    "AttentionApprox",
    "Cost",
    "ErrorBound",
    "MethodResult",
    "Problem",
    "attention_rounding",
    "finish",
    "finish_lse",
    "finish_row_bounds",
    "method_result",
    "prepare",
    "problem_cost_exact",
    "project_to_value_ball",
    "relative_error",
    "rounding_allowance",
]

BOUND_KINDS = ("deterministic", "probabilistic", "estimate")
BOUND_NORMS = ("fro", "2", "row_max")


class ErrorBound(NamedTuple):
    """A bound on the absolute output error ``||Y_approx - Y||`` of an approximation.

    Attributes
    ----------
    value : float
        The bound. It bounds the *absolute* error in the norm ``norm`` (divide by
        ``||Y||`` for a relative bound; :func:`attention.certify` gives one without
        knowing ``Y``).
    norm : {"fro", "2", "row_max"}
        ``"fro"``: Frobenius norm of the whole output (all slices); ``"2"``: largest
        spectral norm over the ``(n, dv)`` slices; ``"row_max"``: largest Euclidean norm
        of an output row.
    kind : {"deterministic", "probabilistic", "estimate"}
        ``"deterministic"``: holds for every draw (a theorem applied to quantities the
        method computed); ``"probabilistic"``: holds with probability at least
        ``1 - delta`` over the method's randomness; ``"estimate"``: no guarantee.
    delta : float
        Failure probability: 0.0 for deterministic bounds, the ``delta`` of the
        probabilistic statement for probabilistic ones, NaN for estimates.
    assumptions : str
        The theorem used (with reference) and the assumptions it needs, stating which
        were checked on the data.
    """

    value: float
    norm: str
    kind: str
    delta: float
    assumptions: str


class Cost(NamedTuple):
    """Work actually spent by an approximation.

    Attributes
    ----------
    flops : float
        Floating-point operations (a multiply-add counts 2), excluding the work needed
        to validate the inputs.
    kernel_evals : int
        Number of evaluations of ``exp(q_i . k_j * scale)`` (entries of ``A`` formed),
        the quantity sub-quadratic methods save; exact attention spends ``n * m`` per
        slice (about half with ``causal=True``).
    key_fraction : ndarray of shape (G,), or None
        Optional, per query slice (head): the fraction of the visible keys whose values
        entered the output exactly (reported by methods that choose their key sets,
        e.g. ``"adaptive"``); None for methods that do not report it.
    bytes_read : float or None
        Optional: bytes of keys, values and summaries read (reported by
        :meth:`attention.kvcache.KVCache.attend`); None where not counted.
    """

    flops: float
    kernel_evals: int
    key_fraction: np.ndarray | None = None
    bytes_read: float | None = None


class AttentionApprox(NamedTuple):
    """Result of :func:`attention.approximate`.

    Attributes
    ----------
    output : ndarray, shape (..., n, dv)
        The approximate attention output, same dtype as the inputs.
    lse : ndarray of shape (..., n), or None
        Log of the approximate normaliser ``z_i`` (``-inf`` for rows that see no key),
        when the method has one; lets partial results be merged with
        :func:`attention.merge_partials`.
    bound : ErrorBound or None
        The error bound the method's theory gives, or None where no theory exists
        (:func:`attention.certify` still applies).
    cost : Cost
        Flops and kernel evaluations spent.
    method : str
        Registered method name.
    params : dict
        The full parameter set used, defaults filled in.
    """

    output: np.ndarray
    lse: np.ndarray | None
    bound: ErrorBound | None
    cost: Cost
    method: str
    params: dict


class MethodResult(NamedTuple):
    """What a registered method returns (slice-stacked; wrapped by ``approximate``).

    Build it with :func:`method_result`.

    Attributes
    ----------
    output : ndarray, shape (G, n, dv)
    lse : ndarray of shape (G, n), or None
    bound : ErrorBound or None
    cost : Cost
    """

    output: np.ndarray
    lse: np.ndarray | None
    bound: ErrorBound | None
    cost: Cost


@dataclass(frozen=True, eq=False)
class Problem:
    """Validated attention inputs flattened into slices (built by :func:`prepare`).

    Query slice ``g`` (``q[g]``, shape ``(n, d)``) attends to key/value slice
    ``kv_index[g]`` (``k[kv_index[g]]``, ``v[kv_index[g]]``) under the mask
    ``mask[mask_index[g]]`` (if any) and the causal pattern. Arrays are C-contiguous
    (``mask`` may be a broadcast view with zero strides) and must not be written to.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kv_index: np.ndarray
    mask: np.ndarray | None
    mask_index: np.ndarray | None
    scale: float
    causal: bool
    lead: tuple
    dtype: np.dtype

    @property
    def n(self) -> int:
        """Number of queries per slice."""
        return self.q.shape[1]

    @property
    def m(self) -> int:
        """Number of keys per slice."""
        return self.k.shape[1]

    @property
    def d(self) -> int:
        """Query/key dimension."""
        return self.q.shape[2]

    @property
    def dv(self) -> int:
        """Value dimension."""
        return self.v.shape[2]

    @property
    def n_slices(self) -> int:
        """Number ``G`` of query slices."""
        return self.q.shape[0]

    @property
    def may_have_empty_rows(self) -> bool:
        """Whether some query row may see no key (causal with ``n > m``, or a mask)."""
        return self.mask is not None or (self.causal and self.n > self.m)

    @property
    def offset(self) -> int:
        """Causal offset ``m - n``: query ``i`` sees key ``j`` iff ``j <= i + offset``."""
        return self.m - self.n

    def slice(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(q, k, v)`` of slice ``g``: shapes ``(n, d)``, ``(m, d)``, ``(m, dv)``."""
        j = self.kv_index[g]
        return self.q[g], self.k[j], self.v[j]

    def mask_for(self, g: int) -> np.ndarray | None:
        """Return the user mask of slice ``g`` (an ``(n, m)`` view) or None."""
        return None if self.mask is None else self.mask[self.mask_index[g]]

    def causal_keep(self, rows=None) -> np.ndarray | None:
        """Boolean ``(len(rows), m)`` causal pattern (all rows if ``rows`` is None), or None."""
        if not self.causal:
            return None
        i = np.arange(self.n) if rows is None else np.asarray(rows)
        return np.arange(self.m)[None, :] <= i[:, None] + self.offset

    def keep(self, g: int) -> np.ndarray | None:
        """Return the combined ``(n, m)`` boolean pattern of slice ``g``, or None.

        Combines causality, a boolean mask and the ``-inf`` entries of an additive mask;
        None means every key is visible. Forms an ``n x m`` array: for references,
        tests and small problems.
        """
        keep = self.causal_keep()
        mask = self.mask_for(g)
        if mask is not None:
            visible = mask if mask.dtype == np.bool_ else np.isfinite(mask)
            keep = visible if keep is None else keep & visible
        return None if keep is None else np.broadcast_to(keep, (self.n, self.m))

    def bias(self, g: int) -> np.ndarray | None:
        """Additive ``(n, m)`` bias of slice ``g`` (an additive float mask), or None."""
        mask = self.mask_for(g)
        return None if mask is None or mask.dtype == np.bool_ else mask


def _check_scale(scale, d: int, *, positive: bool = True) -> float:
    """Validate the score scale: the one rule of the package.

    ``None`` gives ``1 / sqrt(d)``. Exact attention (``positive=False``:
    :func:`attention.softmax_attention`, :func:`attention.reference_attention`, the
    ``"exact"`` method, :func:`attention.certify` and the tensorised attention of
    :mod:`attention.tensor`) accepts any finite real, as PyTorch's
    ``scaled_dot_product_attention`` does: ``scale=0`` gives uniform weights over the
    visible keys, a negative scale favours the keys least aligned with the query.
    Approximation methods (``positive=True``) need ``scale > 0``: their feature maps,
    hashes, PSD lifts and bounds assume scores that grow with ``q . k``.
    """
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale} must be finite")
    if positive and scale <= 0:
        raise ValueError(
            f"scale={scale} must be > 0 for approximate attention (exact attention: "
            "softmax_attention, reference_attention and method 'exact' accept any finite "
            "scale)"
        )
    return scale


def check_error_bound(error_bound, variants: tuple[str, ...]) -> str | None:
    """Normalise an attention method's ``error_bound`` switch.

    ``None`` or ``False``: no bound (returns None); ``True``: the method's default
    variant ``variants[0]``; a string: that named variant (one of ``variants``).
    """
    if error_bound is None or error_bound is False or error_bound is np.False_:
        return None
    if error_bound is True or error_bound is np.True_:
        return variants[0]
    allowed = ", ".join(repr(v) for v in variants)
    if not isinstance(error_bound, str):
        raise TypeError(
            f"error_bound must be None, a bool or one of {allowed}, got {error_bound!r}"
        )
    if error_bound not in variants:
        raise ValueError(
            f"error_bound must be None, False, True or one of {allowed}, got {error_bound!r}"
        )
    return error_bound


def _broadcast(shapes: list[tuple], names: list[str]) -> tuple:
    if all(sh == shapes[0] for sh in shapes):
        return tuple(shapes[0])
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        listed = ", ".join(f"{nm} {sh}" for nm, sh in zip(names, shapes, strict=True))
        raise ValueError(f"leading (batch/head) dimensions do not broadcast: {listed}") from None


@functools.lru_cache(maxsize=64)
def _slice_index(lead_own: tuple, lead: tuple, *, repeat: int = 1) -> np.ndarray:
    """Map each slice of the broadcast leading shape ``lead`` to a slice of ``lead_own``.

    Returns the flattened int64 index, read-only and cached per shape (a decode step
    calls :func:`prepare` with the same shapes every token); ``repeat`` repeats every
    entry of the last axis (grouped-query heads).
    """
    idx = np.arange(math.prod(lead_own), dtype=np.int64).reshape(lead_own)
    if repeat > 1:
        idx = np.repeat(idx, repeat, axis=-1)
    idx = np.ascontiguousarray(np.broadcast_to(idx, lead)).reshape(-1)
    idx.flags.writeable = False
    return idx


def _check_mask(mask, lead: tuple, n: int, m: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"mask must be boolean (True = attend) or floating (additive), got dtype {arr.dtype}"
        )
    if arr.ndim < 2:
        arr = arr.reshape((1,) * (2 - arr.ndim) + arr.shape)
    full = (*lead, n, m)
    try:
        np.broadcast_shapes(arr.shape, full)
    except ValueError:
        raise ValueError(
            f"mask of shape {np.shape(mask)} does not broadcast to the score shape {full} "
            "(leading dims, n queries, m keys)"
        ) from None
    if len(arr.shape) > len(full) or np.broadcast_shapes(arr.shape, full) != full:
        raise ValueError(
            f"mask of shape {np.shape(mask)} would enlarge the score shape {full}; "
            "it must broadcast to it"
        )
    if arr.dtype != np.bool_:
        if np.isnan(arr).any() or np.isposinf(arr).any():
            raise ValueError("an additive mask may contain -inf but not NaN or +inf")
        arr = arr.astype(dtype, copy=False)
    mlead = arr.shape[:-2]
    stack = arr.reshape((-1, *arr.shape[-2:]))
    # Only the trailing (n, m) axes are broadcast (a zero-stride view, never copied).
    stack = np.broadcast_to(stack, (stack.shape[0], n, m))
    return stack, _slice_index(mlead, lead)


def prepare(
    Q, K, V, *, scale=None, causal=False, mask=None, positive_scale=True, check_finite=True
) -> Problem:
    """Validate attention inputs and flatten them into a :class:`Problem`.

    Parameters
    ----------
    Q : array_like, shape (..., n, d)
        Queries.
    K : array_like, shape (..., m, d)
        Keys.
    V : array_like, shape (..., m, dv)
        Values; ``K`` and ``V`` must have the same leading shape.
    scale : float, optional
        Score scale, ``1 / sqrt(d)`` by default.
    causal : bool, default=False
        Causal masking, bottom-right aligned: query ``i`` sees key ``j`` iff
        ``j <= i + m - n``.
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., n, m)``: boolean (True = attend) or additive (added to
        the scaled scores; ``-inf`` allowed).
    positive_scale : bool, default=True
        Require ``scale > 0`` (approximation methods); ``False`` accepts any finite
        scale (exact attention), see :func:`_check_scale`.
    check_finite : bool, default=True
        Reject NaN or inf in ``Q``, ``K``, ``V``. ``False`` skips that pass over the
        inputs; the caller must then detect them itself (exact attention's decode
        kernel does, while it reads ``K`` and ``V`` anyway).

    Returns
    -------
    Problem

    Raises
    ------
    TypeError
        Non-numeric or complex inputs, a non-boolean ``causal``, a mask of another dtype.
    ValueError
        Mismatched ``d``, ``m`` or leading shapes, head counts that do not divide
        (grouped-query attention), NaN or inf, a mask of the wrong shape.
    """
    Q = as_float_array(Q, name="Q", allow_nonfinite=not check_finite)
    K = as_float_array(K, name="K", allow_nonfinite=not check_finite)
    V = as_float_array(V, name="V", allow_nonfinite=not check_finite)
    for name, X in (("Q", Q), ("K", K), ("V", V)):
        if X.ndim < 2:
            raise ValueError(f"{name} must have shape (..., rows, features), got {X.shape}")
    if not isinstance(causal, bool | np.bool_):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    n, d = Q.shape[-2:]
    m = K.shape[-2]
    if K.shape[-1] != d:
        raise ValueError(f"Q and K must have the same last dimension d: Q {Q.shape}, K {K.shape}")
    if V.shape[-2] != m:
        raise ValueError(
            f"K and V must have the same number of keys m (axis -2): K {K.shape}, V {V.shape}"
        )
    if K.shape[:-2] != V.shape[:-2]:
        raise ValueError(f"K and V must have the same leading shape: K {K.shape}, V {V.shape}")
    # Q, K and V are float32 or float64 here: one dtype is the common one (the usual
    # case; result_dtype's checks cost ~2 us of a decode-shaped call).
    same = Q.dtype == K.dtype == V.dtype
    dtype = Q.dtype if same else result_dtype(Q.dtype, K.dtype, V.dtype)
    qlead, kvlead = Q.shape[:-2], K.shape[:-2]

    group = 1
    if qlead and kvlead and qlead[-1] != kvlead[-1] and 1 not in (qlead[-1], kvlead[-1]):
        hq, hk = qlead[-1], kvlead[-1]
        if hq % hk:
            raise ValueError(
                f"grouped-query attention needs the number of query heads ({hq}, axis -3 of "
                f"Q {Q.shape}) to be a multiple of the number of key/value heads ({hk}, "
                f"axis -3 of K {K.shape})"
            )
        group = hq // hk
    if group > 1:
        batch = _broadcast([qlead[:-1], kvlead[:-1]], ["Q", "K/V"])
        lead = (*batch, qlead[-1])
        # Query head h uses key/value head h // group (repeat_interleave convention).
        kv_index = _slice_index(kvlead, lead, repeat=group)
    else:
        lead = _broadcast([qlead, kvlead], ["Q", "K/V"])
        kv_index = _slice_index(kvlead, lead)

    G = math.prod(lead)
    if Q.shape[:-2] != lead:
        Q = np.broadcast_to(Q, (*lead, n, d))
    q = np.ascontiguousarray(Q, dtype=dtype).reshape(G, n, d)
    k = np.ascontiguousarray(K, dtype=dtype).reshape(-1, m, d)
    v = np.ascontiguousarray(V, dtype=dtype).reshape(-1, m, V.shape[-1])
    mask_stack = mask_index = None
    if mask is not None:
        mask_stack, mask_index = _check_mask(mask, lead, n, m, dtype)
    for arr in (q, k, v, kv_index) + (() if mask is None else (mask_stack,)):
        arr.flags.writeable = False
    return Problem(
        q=q,
        k=k,
        v=v,
        kv_index=kv_index,
        mask=mask_stack,
        mask_index=mask_index,
        scale=_check_scale(scale, d, positive=positive_scale),
        causal=bool(causal),
        lead=tuple(lead),
        dtype=np.dtype(dtype),
    )


def finish(problem: Problem, out3: np.ndarray) -> np.ndarray:
    """Reshape a ``(G, n, dv)`` slice stack to the caller's ``lead + (n, dv)``."""
    return np.asarray(out3, dtype=problem.dtype).reshape(problem.lead + out3.shape[1:])


def finish_lse(problem: Problem, lse3: np.ndarray | None) -> np.ndarray | None:
    """Reshape a ``(G, n)`` log-normaliser stack to ``lead + (n,)`` (None passes through)."""
    if lse3 is None:
        return None
    return np.asarray(lse3, dtype=problem.dtype).reshape(problem.lead + lse3.shape[1:])


def _norm(E: np.ndarray, norm: str) -> float:
    E = np.asarray(E, dtype=np.float64)
    if norm == "fro":
        return float(np.linalg.norm(E.ravel()))
    if norm == "row_max":
        return float(np.sqrt(np.max(np.sum(E * E, axis=-1))))
    slices = E.reshape((-1, *E.shape[-2:]))
    return float(max(np.linalg.norm(s, 2) for s in slices))


def relative_error(Y_approx, Y_exact, norm="fro") -> float:
    """Relative error ``||Y_approx - Y_exact|| / ||Y_exact||`` of an attention output.

    Parameters
    ----------
    Y_approx, Y_exact : array_like, shape (..., n, dv)
        Approximate and exact outputs (same shape).
    norm : {"fro", 2, "2", "row_max"}, default="fro"
        ``"fro"``: Frobenius norm over the whole array; ``2``: the largest spectral norm
        over the ``(n, dv)`` slices (numerator and denominator maximised separately);
        ``"row_max"``: the largest row error divided by the largest exact row norm.

    Returns
    -------
    float
        The relative error (0 when both are zero; inf when only ``Y_exact`` is zero).

    Examples
    --------
    >>> import numpy as np
    >>> from attention import relative_error
    >>> relative_error(np.ones((2, 3)) * 1.1, np.ones((2, 3)))
    0.10000000000000009
    """
    norm = "2" if norm == 2 else norm
    if norm not in BOUND_NORMS:
        raise ValueError(f"norm={norm!r} is not one of 'fro', 2, 'row_max'")
    A = as_float_array(Y_approx, name="Y_approx", allow_nonfinite=True)
    B = as_float_array(Y_exact, name="Y_exact")
    if A.shape != B.shape:
        raise ValueError(f"shapes differ: Y_approx {A.shape}, Y_exact {B.shape}")
    if A.ndim < 2:
        raise ValueError(f"outputs must have shape (..., n, dv), got {A.shape}")
    num = _norm(A.astype(np.float64) - B, norm)
    den = _norm(B, norm)
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


# ---------------------------------------------------------------------------------------
# Shared method plumbing: result builder, exact cost, rounding allowance of the bounds
# ---------------------------------------------------------------------------------------


def method_result(problem: Problem, outs, lses, bound: ErrorBound | None, cost: Cost):
    """Assemble the :class:`MethodResult` of a registered method.

    Parameters
    ----------
    problem : Problem
    outs : sequence of ndarray of shape (n, dv), or ndarray of shape (G, n, dv)
        Output of every query slice (any float dtype; cast to ``problem.dtype``).
    lses : sequence of ndarray of shape (n,), ndarray of shape (G, n), or None
        Log-normalisers (kept in float64 until :func:`finish_lse`).
    bound : ErrorBound or None
    cost : Cost

    Returns
    -------
    MethodResult
    """
    out = np.asarray(outs) if isinstance(outs, np.ndarray) else np.stack(list(outs))
    out = out.astype(problem.dtype, copy=False)
    lse = None
    if lses is not None:
        lse = np.asarray(lses) if isinstance(lses, np.ndarray) else np.stack(list(lses))
        lse = lse.astype(np.float64, copy=False)
    cost = cost._replace(flops=float(cost.flops), kernel_evals=int(cost.kernel_evals))
    return MethodResult(out, lse, bound, cost)


def problem_cost_exact(problem: Problem) -> Cost:
    """Flops and kernel evaluations of exact attention on ``problem``."""
    n, m, G = problem.n, problem.m, problem.n_slices
    if problem.causal:
        # Visible pairs under bottom-right alignment: sum_i min(m, max(0, i + m - n + 1)).
        i = np.arange(n)
        pairs = int(np.clip(i + problem.offset + 1, 0, m).sum())
    else:
        pairs = n * m
    return Cost(flops=2.0 * G * pairs * (problem.d + problem.dv), kernel_evals=G * pairs)


_EPS64 = float(np.finfo(np.float64).eps)

#: How :func:`rounding_allowance` enters a bound's ``assumptions`` text.
ROUNDING_TEXT = (
    "plus the worst-case rounding allowance of attention_rounding per row (Higham 2002, "
    "(3.5) and (4.4): scores, exponentials, sums of at most m + d terms in the input "
    "dtype, float64 accumulation, cast)"
)
#: How the cap of :func:`finish_row_bounds` enters a bound's ``assumptions`` text.
CAP_TEXT = (
    "; each row bound is capped by R + ||~y_i - c|| (y_i lies in the ball B(c, R) of the "
    "values), " + ROUNDING_TEXT
)


def attention_rounding(dtype, *, d, m, dv, chain, sigma, vmax, ynorm, steps=None) -> np.ndarray:
    r"""Proven worst-case rounding allowance of attention rows computed in ``dtype``.

    For every row :math:`i`, a bound on :math:`\|y_i - \hat y_i\|` between the exact
    output and the output :math:`\hat y_i` of the online-softmax recurrence run in
    floating point (``dtype`` the working and output dtype; statistics, rescaling and
    the final division in float64):

    .. math::

        e_i = \min\Big(\frac{(a_i + b)\,v_{\max} + (a_i + b + w)\,\|\hat y_i\| + t}
        {1 - a_i - b},\ (2a_i + 2b)\,v_{\max} + w\,\|\hat y_i\| + t,\
        v_{\max} + \|\hat y_i\|\Big),

    with :math:`a_i = \rho_i / (1 - \rho_i)`, :math:`\rho_i = e^{\theta_i}(1 + 8u) - 1`,
    :math:`\theta_i = \gamma_{d+5}\,\sigma_i + \gamma_{2K+2}(u_{64})(\sigma_i + 1)` (the
    rounding of the scaled ``d``-term scores, the mask addition and the subtraction of
    the running maximum, any order of evaluation: Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., 2002, Lemma 3.1, Lemma 3.3 and (3.5); the
    exponential's relative error :math:`\le 4` ulp), :math:`b = \mu / (1 - \mu)`,
    :math:`\mu = (1 + \gamma_L)(1 + \gamma_{2K+1}(u_{64})) - 1` (``P V`` and the
    normaliser as sums of at most :math:`L` = ``chain`` terms in ``dtype``, (3.5) and
    (4.4), then :math:`K` = ``steps`` float64 accumulations), :math:`w` the division and
    the cast (:math:`u + \gamma_3(u_{64})`, relative) and :math:`t` the underflow terms
    (weights below the exponential's cut, subnormal products). :math:`u` is the unit
    roundoff of ``dtype``. Derivation: :mod:`attention._kernels.rounding`; the row
    lemma :math:`y - y' = (p - \hat p)(V - \mathbf 1 y^\top)/\sum_j \hat p_j` carries
    the weight errors to the output.

    Parameters
    ----------
    dtype : numpy dtype
        Working and output dtype (float32 or float64).
    d, m, dv : int
        Score terms, keys and value width.
    chain : int
        Longest sum formed in ``dtype`` (the exact kernel: ``min(m, 2048)``).
    sigma : array_like of float64, shape (r,)
        Upper bounds of :math:`\text{scale}\max_j |q_i|^\top|k_j|` plus the largest
        absolute additive mask entry (e.g. ``scale ||q_i|| max_j ||k_j||``).
    vmax : array_like of float64, shape (r,)
        Upper bounds of :math:`\max_j \|v_j\|` over the keys row ``i`` sees.
    ynorm : array_like of float64, shape (r,)
        Upper bounds of :math:`\|\hat y_i\|`.
    steps : int, optional
        Float64 accumulation steps; default ``2 ceil(m / 64) + 4`` (every kernel of the
        package accumulates blocks of at least 64 keys).

    Returns
    -------
    ndarray of float64, shape (r,)
        Finite whenever ``vmax`` and ``ynorm`` are.
    """
    from attention._kernels.rounding import _rows_allowance

    u = float(np.finfo(dtype).eps) / 2.0
    if steps is None:
        steps = 2 * -(-int(m) // 64) + 4
    sigma = np.ascontiguousarray(sigma, dtype=np.float64).reshape(-1)
    shape = np.shape(ynorm)
    vmax = np.ascontiguousarray(np.broadcast_to(vmax, shape), dtype=np.float64).reshape(-1)
    ynorm = np.ascontiguousarray(ynorm, dtype=np.float64).reshape(-1)
    out = np.empty(ynorm.shape[0])
    _rows_allowance(
        u, u, float(d), float(chain), float(steps), sigma, vmax, ynorm, float(m), float(dv), out
    )
    return out.reshape(shape)


def center_radius(v: np.ndarray) -> tuple[np.ndarray, float]:
    r"""Centroid :math:`c` and radius :math:`R = \max_j\|v_j - c\|` of value rows (m, dv).

    ``R`` includes an allowance of :math:`64\epsilon_{64}(\max_j\|v_j\| + R)` for the
    rounding of ``c`` and of the norms; every convex combination of the rows lies in
    the ball :math:`B(c, R)`. (:func:`attention.bounds.value_radius` is the batched,
    validated version.)
    """
    v = np.asarray(v, dtype=np.float64)
    if v.shape[0] == 0:
        return np.zeros(v.shape[1]), 0.0
    c = v.mean(axis=0)
    D = v - c
    R = float(np.sqrt(np.max(np.einsum("ij,ij->i", D, D))))
    vmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", v, v))))
    return c, R + 64 * _EPS64 * (vmax + R)


def value_ball(v: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(c, R, max_j ||v_j||)``: :func:`center_radius` and the largest value-row norm.

    Computed once per key/value slice and passed as ``ball=`` to
    :func:`finish_row_bounds` / :func:`rounding_allowance` by methods whose query heads
    share it (same results as computing it per call).
    """
    v = np.asarray(v, dtype=np.float64)
    c, R = center_radius(v)
    vmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", v, v)))) if v.size else 0.0
    return c, R, vmax


_SCORE_BOUNDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _score_bounds(problem: Problem) -> np.ndarray:
    r"""Per query position ``i``: ``scale max_g ||q_gi|| max_j ||k_j|| + max |b|`` (n,).

    An upper bound of :math:`|s_{ij}| + |b_{ij}|` for every slice, key and (finite)
    additive mask entry, from one float64 pass over ``Q`` and ``K`` per problem
    (memoised: the methods call :func:`rounding_allowance` once per slice). Norms are
    rounded up by ``1 + 2 d u_64``.
    """
    got = _SCORE_BOUNDS.get(problem)
    if got is not None:
        return got
    up = 1.0 + 2.0 * (problem.d + 2) * _EPS64
    # One slice at a time in float64: float32 slices are cast into one reused buffer
    # (n = 8192, d = 64: 4 MiB), float64 ones read in place (the same sums either way).
    f64 = problem.dtype == np.float64
    buf = None if f64 else np.empty((max(problem.n, problem.m), problem.d))

    def as64(x):
        if f64:
            return x
        out = buf[: x.shape[0]]
        np.copyto(out, x)
        return out

    qn = np.zeros(problem.n)
    for g in range(problem.n_slices):
        q = as64(problem.q[g])
        np.maximum(qn, np.einsum("ij,ij->i", q, q), out=qn)
    kmax = 0.0
    for j in range(problem.k.shape[0]):
        k = as64(problem.k[j])
        if k.size:
            kmax = max(kmax, float(np.einsum("ij,ij->i", k, k).max()))
    bias = 0.0
    if problem.mask is not None and problem.mask.dtype != np.bool_:
        fin = np.isfinite(problem.mask)
        if fin.any():
            bias = float(np.abs(problem.mask[fin]).max()) * (1.0 + _EPS64)
    with np.errstate(over="ignore", invalid="ignore"):
        sigma = abs(problem.scale) * np.sqrt(qn * up) * math.sqrt(kmax * up) + bias
    sigma = np.where(np.isnan(sigma), np.inf, sigma)
    _SCORE_BOUNDS[problem] = sigma
    return sigma


def rounding_allowance(problem: Problem, y: np.ndarray, v: np.ndarray, *, ball=None) -> np.ndarray:
    r"""Per-row rounding allowance that every returned bound adds (the one rule).

    A method's bound is proven for the quantities it computed in exact arithmetic; the
    output :math:`\hat y_i` it returns was computed in floating point, in the input
    dtype on the register tiles (the gather kernels of the sparse and clustering
    methods, the exact kernel) or in float64, and cast to ``problem.dtype``. The
    allowance is the proven worst case of :func:`attention_rounding` for a softmax row
    over at most :math:`m` keys formed in ``problem.dtype`` (which covers float64 work
    too): scores of :math:`d` terms bounded by :math:`\sigma_i = \text{scale}\,\max_g
    \|q_{gi}\|\max_j\|k_j\|` (plus the largest additive mask entry), sums of at most
    :math:`L = m + d` terms, float64 accumulation and the cast, with :math:`v_{\max} =
    \max_j\|v_j\|` and the row's :math:`\|\hat y_i\|`. It covers the rounding of a
    row that is a softmax-weighted mean of value rows (an exact sub-problem, the kept
    keys of a sparse method, a merged pair of partials); it does not cover the rounding
    of a method's other arithmetic (feature maps, linear solves), whose bounds are far
    above rounding level. Cost: one pass over ``Q`` and ``K`` per problem (memoised),
    :math:`O(n\,d_v)` per call.

    Parameters
    ----------
    problem : Problem
    y : ndarray, shape (n, dv)
        Output of one slice (any float dtype; before or after the cast).
    v : ndarray, shape (m, dv)
        Value rows of that slice.
    ball : tuple, optional
        :func:`value_ball` of ``v``, when the caller has it.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    y = np.asarray(y, dtype=np.float64)
    _, _, vmax = value_ball(v) if ball is None else ball
    ynorm = np.sqrt(np.einsum("ij,ij->i", y, y) * (1.0 + 2.0 * (y.shape[1] + 2) * _EPS64))
    sigma = _score_bounds(problem)
    if sigma.shape[0] != y.shape[0]:
        sigma = np.full(y.shape[0], sigma.max() if sigma.size else 0.0)
    m = max(problem.m, np.shape(v)[0])
    return attention_rounding(
        problem.dtype,
        d=problem.d,
        m=m,
        dv=y.shape[1],
        chain=m + problem.d,
        sigma=sigma,
        vmax=np.full(y.shape[0], vmax * (1.0 + 2.0 * (y.shape[1] + 2) * _EPS64)),
        ynorm=ynorm,
    )


def project_to_value_ball(problem: Problem, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    r"""Project output rows onto the ball :math:`B(c, R)` of the values (float64).

    Every exact row :math:`y_i` lies in that convex ball (:func:`center_radius`), so the
    projection never increases the error of a row, and it keeps methods without a bound
    from returning values far outside the data (or beyond the float32 range). Rows that
    may see no key (exact output 0) are left alone.
    """
    y = np.asarray(y, dtype=np.float64)
    if problem.may_have_empty_rows or not len(y):
        return y
    c, R = center_radius(v)
    dist = np.sqrt(np.einsum("ij,ij->i", y - c, y - c))
    out = dist > R
    if np.any(out):
        y = y.copy()
        y[out] = c + (y[out] - c) * (R / dist[out])[:, None]
    return y


def finish_row_bounds(
    problem: Problem, rows, y: np.ndarray, v: np.ndarray, *, ball=None
) -> np.ndarray:
    r"""Per-row error bounds of one slice, capped by the value ball and padded for rounding.

    Each exact row :math:`y_i` lies in the ball :math:`B(c, R)` of the values
    (:func:`center_radius`), so :math:`\|y_i - \tilde y_i\| \le R + \|\tilde y_i -
    c\|` whatever the method did (:math:`\max` with :math:`\|\tilde y_i\|` when a row
    may see no key, its exact output being 0): the cap keeps bounds finite when a
    theorem gives none (an approximate normaliser :math:`\le 0`, an overflow). Then
    :func:`rounding_allowance` is added. NaN row bounds (no theorem) become the cap.

    Parameters
    ----------
    problem : Problem
    rows : array_like, shape (n,)
        Row bounds from a theorem (``inf`` allowed).
    y, v : ndarray
        The float64 output ``(n, dv)`` and the values ``(m, dv)`` of the slice.
    ball : tuple, optional
        :func:`value_ball` of ``v``, when the caller has it.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    y = np.asarray(y, dtype=np.float64)
    ball = value_ball(v) if ball is None else ball
    c, R, _ = ball
    cap = R + np.sqrt(np.einsum("ij,ij->i", y - c, y - c))
    if problem.may_have_empty_rows:
        cap = np.maximum(cap, np.sqrt(np.einsum("ij,ij->i", y, y)))
    rows = np.asarray(rows, dtype=np.float64)
    rows = np.where(np.isnan(rows), np.inf, rows)
    return np.minimum(rows, cap) + rounding_allowance(problem, y, v, ball=ball)
