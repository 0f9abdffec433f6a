r"""A-priori error bounds for Krylov methods: CG and Lanczos (Gauss) quadrature.

Re-exported from :mod:`rnla.bounds`. Notation: :math:`A` symmetric with spectrum in
:math:`[a, b]`; for SPD :math:`A`, :math:`\kappa = b/a`.
"""

from __future__ import annotations

import math

import numpy as np

from rnla._validation import check_int, check_option, check_real

__all__ = ["cg_error_bound", "lanczos_quadrature_bound"]


def cg_error_bound(kappa, k, /) -> float:
    r"""Relative energy-norm error bound of conjugate gradients after ``k`` steps.

    .. math::

        \frac{\|x - x_k\|_A}{\|x - x_0\|_A} \le
        2\left(\frac{\sqrt\kappa - 1}{\sqrt\kappa + 1}\right)^k .

    Parameters
    ----------
    kappa : float
        Condition number :math:`\kappa \ge 1` of the SPD matrix (an upper bound on it
        keeps the bound valid).
    k : int
        Number of CG (equivalently Lanczos) steps, ``k >= 0``.

    Returns
    -------
    float
        The bound (at most 2; not clipped to 1).

    Raises
    ------
    TypeError
        Non-real ``kappa`` or non-integer ``k``.
    ValueError
        ``kappa < 1`` or ``k < 0``.

    Notes
    -----
    From the Chebyshev polynomial of degree ``k`` on :math:`[\lambda_{\min},
    \lambda_{\max}]` [1]_ (Thm 10.2.6). With :math:`x_0 = 0` the CG iterate is the
    Lanczos/Galerkin solution :math:`\|b\|Q_kT_k^{-1}e_1`, and the Gauss quadrature
    error of :math:`b^TA^{-1}b` equals :math:`\|x - x_k\|_A^2`, so
    :math:`0 \le b^TA^{-1}b - G_k \le 4\rho^{2k}\,b^TA^{-1}b` with
    :math:`\rho = (\sqrt\kappa-1)/(\sqrt\kappa+1)`.

    References
    ----------
    .. [1] G. H. Golub and C. F. Van Loan, *Matrix Computations*, 4th ed., Johns Hopkins,
       2013.

    Examples
    --------
    >>> from rnla.bounds import cg_error_bound
    >>> round(cg_error_bound(4.0, 3), 6)
    0.074074
    """
    kappa = check_real(kappa, "kappa")
    if kappa < 1:
        raise ValueError(f"kappa={kappa} must be >= 1")
    k = check_int(k, "k", minimum=0)
    r = math.sqrt(kappa)
    return 2.0 * ((r - 1.0) / (r + 1.0)) ** k


def _log_ellipse_max(f: str, c: float, h: float, semi: float) -> float:
    """Log of max |f| on the ellipse image {c + h t : t in E_rho}, semi = (rho + 1/rho)/2."""
    lo, hi = c - h * semi, c + h * semi
    if f == "exp":
        return hi
    if f == "inv":
        return -math.log(lo)
    if f == "sqrt":
        return 0.5 * math.log(hi)
    # log: |log z| <= |ln|z|| + |arg z| with Re z > 0, so |arg z| < pi/2.
    return math.log(max(abs(math.log(lo)), abs(math.log(hi))) + math.pi / 2)


def lanczos_quadrature_bound(k, spectrum, /, *, f="log", shift=0.0) -> float:
    r"""Bound on the Gauss (Lanczos) quadrature error of :math:`b^Tf(A + sI)b/\|b\|^2`.

    .. math::

        \frac{|b^Tf(A)b - \|b\|^2e_1^Tf(T_k)e_1|}{\|b\|^2} \le
        \min_{1<\rho<\rho_0} \frac{4M_\rho}{(\rho-1)\rho^{2k-1}} ,

    with :math:`M_\rho` the maximum of :math:`|f|` on the Bernstein ellipse
    :math:`E_\rho` of the interval and :math:`\rho_0` the ellipse through the nearest
    singularity of :math:`f`.

    Parameters
    ----------
    k : int
        Lanczos steps (Gauss nodes), ``k >= 1``.
    spectrum : tuple of float
        ``(a, b)`` enclosing the eigenvalues of ``A``.
    f : {"log", "inv", "sqrt", "exp"}, default="log"
        The function.
    shift : float, default=0.0
        ``s``: the bound is for :math:`f(A + sI)`; ``a + s > 0`` unless ``f="exp"``.

    Returns
    -------
    float
        The relative bound (per unit :math:`\|b\|^2`); multiply by :math:`\|b\|^2`.

    Raises
    ------
    TypeError
        Non-real inputs.
    ValueError
        ``k < 1``, ``a > b``, ``a + s <= 0`` for ``log``/``inv``/``sqrt``, unknown ``f``.

    Notes
    -----
    Gauss quadrature with ``k`` nodes integrates polynomials of degree :math:`2k-1`
    exactly and both :math:`b^Tf(A)b` and :math:`G_k` integrate against nonnegative
    measures of mass :math:`\|b\|^2`, so the error is at most :math:`2\|b\|^2
    E_{2k-1}(f)`, the best uniform polynomial approximation error on :math:`[a, b]`
    ([1]_, Thm 6.2; [2]_, §3). For :math:`f` analytic in :math:`E_\rho` and bounded by
    :math:`M_\rho`, :math:`E_m(f) \le 2M_\rho\rho^{-m}/(\rho-1)` ([3]_, Thm 8.2). The
    minimum over :math:`\rho` is taken on a grid of 400 values. For ``log``, ``inv``
    and ``sqrt``, :math:`\rho_0 = (\sqrt\kappa+1)/(\sqrt\kappa-1)` with
    :math:`\kappa = (b+s)/(a+s)`, so the rate is :math:`\rho_0^{-2k}`.

    References
    ----------
    .. [1] G. H. Golub and G. Meurant, *Matrices, Moments and Quadrature with
       Applications*, Princeton University Press, 2010.
    .. [2] S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic
       Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38 (2017), 1075-1099.
    .. [3] L. N. Trefethen, *Approximation Theory and Approximation Practice*, SIAM,
       2013.

    Examples
    --------
    >>> from rnla.bounds import lanczos_quadrature_bound
    >>> lanczos_quadrature_bound(10, (1.0, 10.0), f="log") < 1e-3
    True
    """
    k = check_int(k, "k", minimum=1)
    f = check_option(f, ("log", "inv", "sqrt", "exp"), "f")
    shift = check_real(shift, "shift")
    try:
        a, b = (check_real(x, "spectrum") for x in spectrum)
    except TypeError as exc:
        raise TypeError(f"spectrum must be a pair (a, b), got {spectrum!r}") from exc
    if a > b:
        raise ValueError(f"spectrum=({a}, {b}) must satisfy a <= b")
    a, b = a + shift, b + shift
    if f != "exp" and a <= 0:
        raise ValueError(f"a + shift = {a:.6g} must be > 0 for f={f!r}")
    if b == a:
        return 0.0
    c, h = (a + b) / 2, (b - a) / 2
    if f == "exp":
        rhos = np.geomspace(1.0 + 1e-3, 1e3, 400)
    else:
        t0 = c / h  # the singularity at 0 sits at t = -t0 in the scaled variable
        rho0 = t0 + math.sqrt(t0 * t0 - 1.0)
        rhos = 1.0 + (rho0 - 1.0) * np.linspace(1e-3, 1.0 - 1e-3, 400)
    best = math.inf
    for rho in rhos:
        semi = (rho + 1.0 / rho) / 2
        if f != "exp" and c - h * semi <= 0:
            continue
        # Log space: M_rho (exp) and rho^(2k-1) overflow for wide intervals or large k.
        logv = (
            math.log(4.0)
            + _log_ellipse_max(f, c, h, semi)
            - math.log(rho - 1.0)
            - (2 * k - 1) * math.log(rho)
        )
        best = min(best, logv)
    return math.exp(min(max(best, -745.0), 709.0))
