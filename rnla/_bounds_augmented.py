r"""A-priori bound for the augmented Krylov data fit (re-exported by :mod:`rnla.bounds`)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from rnla._validation import check_int

__all__ = ["datafit_error_bound"]


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def datafit_error_bound(lam, k, /, *, mu_min, mu_max):
    r"""Relative error bound of the Gauss (Galerkin) data fit after ``k`` block steps.

    Parameters
    ----------
    lam : float or array_like of shape (m,)
        Shifts :math:`\lambda > 0`.
    k : int
        Block Lanczos steps (``k >= 1``); the Krylov space contains
        :math:`\mathcal K_k(A, y)`.
    mu_min, mu_max : float
        Bounds :math:`0 \le \mu_{\min} \le \lambda_{\min}(A)` and
        :math:`\lambda_{\max}(A) \le \mu_{\max}`.

    Returns
    -------
    ndarray or float
        :math:`4\bigl((\sqrt\kappa - 1)/(\sqrt\kappa + 1)\bigr)^{2k}`, with
        :math:`\kappa = (\lambda + \mu_{\max})/(\lambda + \mu_{\min})`, shape of
        ``lam``.

    Raises
    ------
    TypeError
        Non-numeric input.
    ValueError
        ``lam <= 0``, ``k < 1`` or ``0 <= mu_min <= mu_max`` violated.

    Notes
    -----
    For :math:`M = \lambda I + A` and any space :math:`\mathcal V \supseteq
    \mathcal K_k(A, y)`, the Gauss value :math:`G` of :class:`rnla.augmented.AugmentedKrylov`
    satisfies

    .. math::

       0 \le \frac{y^TM^{-1}y - G}{y^TM^{-1}y} = \frac{\|x - x_{\mathcal V}\|_M^2}
       {\|x\|_M^2} \le 4\Bigl(\frac{\sqrt\kappa - 1}{\sqrt\kappa + 1}\Bigr)^{2k},

    because the Galerkin error in :math:`\mathcal V` is at most the one in
    :math:`\mathcal K_k(A, y)`, which is the CG error after ``k`` steps (Greenbaum
    [1]_, Thm 3.1.1, squared). It does not show the gain of augmentation; the
    heuristic (not a theorem) is that once :math:`\mathcal V` holds the top ``r``
    eigenvectors, :math:`\mu_{\max}` can be replaced by :math:`\mu_{r+1}`.

    References
    ----------
    .. [1] A. Greenbaum, *Iterative Methods for Solving Linear Systems*, SIAM, 1997.

    Examples
    --------
    >>> from rnla.bounds import datafit_error_bound
    >>> float(datafit_error_bound(1.0, 10, mu_min=0.0, mu_max=3.0)) < 1e-3
    True
    """
    k = check_int(k, "k", minimum=1)
    lo = _real(mu_min, "mu_min")
    hi = _real(mu_max, "mu_max")
    if not (0 <= lo <= hi and math.isfinite(hi)):
        raise ValueError(f"need 0 <= mu_min <= mu_max < inf, got mu_min={lo}, mu_max={hi}")
    arr = np.asarray(lam, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"lam must be finite and > 0, got {lam!r}")
    # (sqrt(kappa) - 1) / (sqrt(kappa) + 1) with kappa = (lam + hi) / (lam + lo), written
    # without forming kappa: it overflows (inf / inf = NaN) for lam + lo near 1e-308.
    top, bottom = np.sqrt(arr + hi), np.sqrt(arr + lo)
    rate = (top - bottom) / (top + bottom)
    out = np.minimum(4.0 * rate ** (2 * k), 1.0)
    return out[()] if out.ndim == 0 else out
