r"""Worst-case rounding allowance of exact (and nearly exact) attention rows (Numba).

One formula, shared by every bound labelled ``"deterministic"`` that rests on an output
computed by the blocked online-softmax kernels (prefill, split-key decode, the certified
decode of the KV cache, the adaptive method's kept blocks): the Python callers
(:func:`attention._core.attention_rounding`, :func:`attention.adaptive._rounding_pad`)
and the kernels (:func:`attention._kernels.adaptive._decode_allowance`,
:func:`attention._kernels.kvcache._pad_sums`) all call :func:`_row_allowance`.

**Model** (N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
SIAM 2002: the standard model (2.4) with gradual underflow, Lemma 3.1 and Lemma 3.3 for
the ``gamma_k = k u / (1 - k u)`` calculus, (3.4)-(3.5) for inner products and §4.2 for
sums, whose bounds hold **for every order of evaluation** and with or without fused
multiply-adds). ``u`` is the unit roundoff of the working dtype (``eps / 2``), ``u64``
that of float64. For one query row ``i``, with ``sigma_i >= scale max_j |q_i|^T |k_j|
+ max |b_ij|`` (``b`` an additive mask):

1. *exponent*: ``q_i * scale`` (one rounding), the ``d``-term dot product (any order,
   Higham (3.5)), the mask addition and the subtraction of a reference score (the
   running maximum, itself a computed score) give ``|x^_ij - x_ij| <= gamma_{d+5}
   sigma_i``; the float64 rescaling factors ``alpha = exp(m_old - m_new)`` of the online
   softmax add ``gamma_{2K+2}(u64) (sigma_i + 1)`` (``K`` float64 accumulation steps);
   subnormal products add ``(d + 1) eta`` (``eta`` half the smallest subnormal);
2. *exponential*: relative error at most 4 ulp ``= 8 u`` (the kernels of
   :mod:`rnla._kernels.fastexp`: at most 2.0 ulp measured in float64, 0.98 ulp in
   float32, checked on every float32 input of ``[-87, 0]``; a factor 2 of margin);
   results below the underflow cut (``exp(-87)`` / ``exp(-708)``) are 0, an absolute
   error of at most ``phi`` per weight. So every weight is ``p^_j = p_j e^{t_j}(1 +
   c_j)``, ``|t_j| <= theta_i``, ``|c_j| <= 8u``: a relative error ``rho_i = e^{theta_i}
   (1 + 8u) - 1``, and the row lemma ``y - y' = (p - p^)(V - 1 y^T) / sum p^`` gives
   ``||y_i - y'_i|| <= a_i (vmax + ||y_i||)``, ``a_i = rho_i / (1 - rho_i)``, for the
   output ``y'`` of the computed weights in exact arithmetic;
3. *accumulation*: ``P V`` and the normaliser are sums of at most ``L`` (``chain``)
   terms in the working dtype (Higham (3.5) / (4.4), any order), then at most ``2K + 1``
   float64 additions and rescalings, so every term carries a relative error at most
   ``mu = (1 + gamma_L)(1 + gamma_{2K+1}(u64)) - 1``; with ``||sum_j p^_j |v_j| || <=
   sum_j p^_j ||v_j|| <= D vmax`` (Minkowski), ``||N^/D^ - y'_i|| <= (mu vmax + mu
   ||y'_i||) / (1 - mu)``;
4. *division and cast*: ``acc * (1 / l)`` in float64 and the cast to the output dtype
   (unit roundoff ``u_out``): ``omega = (1 + u_out)(1 + gamma_3(u64)) - 1`` relative,
   so ``omega / (1 - omega) ||y^_i||``.

With ``r = ||y^_i||`` (the returned row), ``||y_i|| <= r + e_i`` and ``||y'_i|| <= r +
e_i`` the allowance solves ``e_i <= [(a + c) vmax + (a + b + w) r + t] / (1 - a - b)``
(``b = c = mu / (1 - mu)``, ``w = omega / (1 - omega)``, ``t`` the underflow terms);
since ``y_i`` and ``y'_i`` are convex combinations of value rows (norm ``<= vmax``),
also ``e_i <= (2a + b + c) vmax + w r + t``, and always ``e_i <= vmax + r``. The
allowance is the smallest of the three: finite for finite input.

Not covered (stated where it is used): the rounding of ``Q``, ``K``, ``V`` themselves
(the inputs are taken as exact), and a non-IEEE environment (flush-to-zero, x87).
"""

import numpy as np
from numba import njit

_U64 = 2.0**-53
# Exponential: 4 ulp of the result (<= 8 u relative); measured <= 2.0 ulp (float64) and
# 0.98 ulp (float32), see rnla._kernels.fastexp.
_EXP_U = 8.0


@njit(cache=True, nogil=True)
def _gamma(k, u):
    """Higham's ``gamma_k = k u / (1 - k u)`` (inf when ``k u >= 1``)."""
    ku = k * u
    if ku >= 1.0:
        return np.inf
    return ku / (1.0 - ku)


@njit(cache=True, nogil=True)
def _exponent_error(u, d, sigma, steps):
    """Bound ``theta`` on the rounding of one exponent ``s_ij - m`` (item 1 above).

    ``u``: unit roundoff of the working dtype; ``d``: terms of the score dot product;
    ``sigma >= scale max_j |q_i|^T |k_j| + max |b_ij|``; ``steps``: float64 accumulation
    steps ``K`` (online-softmax rescalings).
    """
    eta = 2.0**-150 if u > 1e-10 else 2.0**-1075
    return (
        _gamma(d + 5.0, u) * sigma
        + _gamma(2.0 * steps + 2.0, _U64) * (sigma + 1.0)
        + (d + 1.0) * eta
    )


@njit(cache=True, nogil=True)
def _row_allowance(u, u_out, d, chain, steps, sigma, vmax, ynorm, m, dv):
    """Worst-case bound on ``||y_i - y^_i||`` for one row (see the module docstring).

    Parameters: ``u`` / ``u_out`` unit roundoffs of the working and the output dtype;
    ``d`` score terms; ``chain`` the longest sum (``P V`` entries, normaliser pieces) in
    the working dtype; ``steps`` float64 accumulation steps; ``sigma >= scale max_j
    |q_i|^T |k_j| + max |b_ij|``; ``vmax >= max_j ||v_j||``; ``ynorm >= ||y^_i||``;
    ``m`` keys (underflow terms); ``dv`` value width. All float64 scalars.
    """
    if u > 1e-10:
        phi = np.exp(-86.0)  # float32 underflow cut exp(-87), with margin
        eta = 2.0**-150
    else:
        phi = np.exp(-707.0)
        eta = 2.0**-1075
    theta = _exponent_error(u, d, sigma, steps)
    rho = np.expm1(theta) * (1.0 + _EXP_U * u) + _EXP_U * u
    trivial = vmax + ynorm
    if not rho < 1.0:
        return trivial
    a = rho / (1.0 - rho)
    mu = (1.0 + _gamma(chain, u)) * (1.0 + _gamma(2.0 * steps + 1.0, _U64)) - 1.0
    if not mu < 1.0:
        return trivial
    b = mu / (1.0 - mu)
    om = (1.0 + u_out) * (1.0 + _gamma(3.0, _U64)) - 1.0
    w = om / (1.0 - om)
    # underflow: flushed weights (<= phi each, normaliser >= 1/2) and subnormal P V terms
    t = 4.0 * m * phi * vmax + 2.0 * m * eta * np.sqrt(dv)
    e = (2.0 * a + 2.0 * b) * vmax + w * ynorm + t
    if a + b < 0.5:
        e = min(e, ((a + b) * vmax + (a + b + w) * ynorm + t) / (1.0 - a - b))
    return min(e, trivial) * (1.0 + 1e-12)


@njit(cache=True, nogil=True)
def _rows_allowance(u, u_out, d, chain, steps, sigma, vmax, ynorm, m, dv, out):
    """:func:`_row_allowance` of every row (float64 arrays of one length).

    ``out[i]`` from ``sigma[i]``, ``vmax[i]`` and ``ynorm[i]``.
    """
    for i in range(out.shape[0]):
        out[i] = _row_allowance(u, u_out, d, chain, steps, sigma[i], vmax[i], ynorm[i], m, dv)
