r"""A-priori bounds for sketch-preconditioned least squares and Nyström PCG.

Re-exported from :mod:`rnla.bounds`. Each function states the theorem it implements and
raises :class:`ValueError` outside its assumptions.
"""

from __future__ import annotations

import math

import numpy as np

from rnla._validation import as_float_array, check_option, check_real

__all__ = [
    "effective_dimension",
    "iteration_bound",
    "nystrom_pcg_condition_bound",
    "nystrom_pcg_rank",
    "preconditioned_condition_bound",
]


def preconditioned_condition_bound(distortion, /, *, definition="squared") -> float:
    r"""Condition number of :math:`AN` for a sketch-and-precondition preconditioner.

    If :math:`S` is a subspace embedding of :math:`\operatorname{range}(A)` and
    :math:`SA = U\Sigma V^T` (or :math:`QR`), then :math:`N = V\Sigma^{-1}` (or
    :math:`R^{-1}`) satisfies

    .. math::

        \kappa(AN) \le \sqrt{\frac{1+\varepsilon}{1-\varepsilon}}
        \quad\text{(squared definition)}, \qquad
        \kappa(AN) \le \frac{1+\varepsilon}{1-\varepsilon}
        \quad\text{(norm definition)}.

    Parameters
    ----------
    distortion : float
        :math:`\varepsilon \in [0, 1)`.
    definition : {"squared", "norm"}, default="squared"
        ``"squared"``: :math:`\|U^TS^TSU - I\|_2 \le \varepsilon`, i.e.
        :math:`\sigma_i(SU)^2 \in [1-\varepsilon, 1+\varepsilon]` (the convention of
        :class:`~rnla.bounds.SketchSize`); ``"norm"``: :math:`\sigma_i(SU) \in
        [1-\varepsilon, 1+\varepsilon]`, the form of Rokhlin-Tygert and LSRN.

    Returns
    -------
    float
        The bound (deterministic given the embedding; its failure probability is the
        ``delta`` of the sketch size that produced :math:`\varepsilon`).

    Raises
    ------
    ValueError
        ``distortion`` outside ``[0, 1)`` (a sketch with :math:`\varepsilon \ge 1`
        may annihilate a direction of :math:`\operatorname{range}(A)`: no bound).

    Notes
    -----
    **Proof** (Rokhlin and Tygert 2008, Thm 1; Meng, Saunders and Mahoney 2014,
    Lemma 4.1). With :math:`U` an orthonormal basis of :math:`\operatorname{range}(A)`,
    write :math:`A = UT`. Then :math:`SAN = (SU)TN` has orthonormal columns (it is
    :math:`U_s` of the SVD of :math:`SA`), so :math:`TN = (SU)^{+}U_s` has singular
    values in :math:`[1/\sigma_{\max}(SU), 1/\sigma_{\min}(SU)]`, and so has
    :math:`AN = U\,TN`. Proven, deterministic; tested per draw with the distortion
    measured on the draw.

    Examples
    --------
    >>> from rnla.bounds import preconditioned_condition_bound
    >>> round(preconditioned_condition_bound(0.5, definition="norm"), 6)
    3.0
    """
    eps = check_real(distortion, "distortion", lower=0.0, upper=1.0, open_left=False)
    definition = check_option(definition, ("squared", "norm"), "definition")
    ratio = (1.0 + eps) / (1.0 - eps)
    return math.sqrt(ratio) if definition == "squared" else ratio


def iteration_bound(condition, tol, /) -> int:
    r"""LSQR / CG iterations guaranteed to reduce the error by ``tol``.

    .. math::

        j = \Bigl\lceil \frac{\log(\mathrm{tol}/2)}{\log\rho} \Bigr\rceil,
        \qquad \rho = \frac{\kappa - 1}{\kappa + 1},

    so that :math:`2\rho^j \le \mathrm{tol}`.

    Parameters
    ----------
    condition : float
        :math:`\kappa \ge 1`: :math:`\kappa(AN)` for LSQR on :math:`\min\|ANy - b\|`
        (e.g. from :func:`preconditioned_condition_bound`), or
        :math:`\sqrt{\kappa(M)}` for CG on a symmetric positive-definite :math:`M`.
    tol : float
        Error reduction in ``(0, 1)``.

    Returns
    -------
    int
        :math:`j`; 0 when :math:`\kappa = 1`.

    Notes
    -----
    LSQR is mathematically CG on :math:`(AN)^T(AN)y = (AN)^Tb`, whose condition number
    is :math:`\kappa(AN)^2`; the CG bound (:func:`rnla.bounds.cg_error_bound`) with
    :math:`(\sqrt{\kappa^2} - 1)/(\sqrt{\kappa^2} + 1) = \rho` gives
    :math:`\|AN(y_j - y_\star)\| \le 2\rho^j\,\|AN(y_0 - y_\star)\|` (proven, exact
    arithmetic; Paige and Saunders 1982, Björck 1996 §7.4). With a sketch of
    distortion :math:`\varepsilon` (norm definition), :math:`\rho = \varepsilon`: the
    count is independent of :math:`\kappa(A)`.

    Examples
    --------
    >>> from rnla.bounds import iteration_bound
    >>> iteration_bound(3.0, 1e-12)  # distortion 1/2
    41
    """
    kappa = check_real(condition, "condition", lower=1.0, open_left=False)
    tol = check_real(tol, "tol", lower=0.0, upper=1.0)
    if kappa == 1.0:
        return 0
    # log(rho) = log1p(-2 / (kappa + 1)): (kappa - 1) / (kappa + 1) rounds to 1 (and
    # log(rho) to 0) for kappa >= 1e16.
    return max(0, math.ceil(math.log(tol / 2.0) / math.log1p(-2.0 / (kappa + 1.0))))


def effective_dimension(eigenvalues, mu, /) -> float:
    r"""Effective dimension :math:`d_{\mathrm{eff}}(\mu) = \sum_j \lambda_j/(\lambda_j+\mu)`.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues of a PSD matrix (tiny negative rounding is clipped).
    mu : float
        Regularisation :math:`\mu > 0`.

    Returns
    -------
    float
        :math:`\operatorname{tr}(A(A+\mu I)^{-1})`.

    Examples
    --------
    >>> from rnla.bounds import effective_dimension
    >>> effective_dimension([1.0, 1.0, 0.0], 1.0)
    1.0
    """
    lam = as_float_array(eigenvalues, name="eigenvalues", ndim=1, dtype=np.float64)
    mu = check_real(mu, "mu", lower=0.0)
    scale = float(np.max(np.abs(lam)))
    if lam.min() < -lam.size * np.finfo(np.float64).eps * scale:
        raise ValueError(f"eigenvalues must be those of a PSD matrix (>= 0), got {lam.min():.6g}")
    lam = np.maximum(lam, 0.0)
    return float(np.sum(lam / (lam + mu)))


def nystrom_pcg_rank(d_eff, /) -> int:
    r"""Nyström rank :math:`\ell = 2\lceil 1.5\,d_{\mathrm{eff}}(\mu)\rceil + 1`.

    Frangella, Tropp and Udell (2023), Thm 5.1, state that with this rank the
    Nyström-preconditioned matrix has :math:`\mathbb{E}\,\kappa < 28`. **The constant
    28 and the rank formula are quoted from memory and could not be re-read in the
    paper while writing this**; the test suite checks the statement empirically
    (Monte Carlo over draws on kernel and synthetic spectra) instead of relying on it.

    Parameters
    ----------
    d_eff : float
        Effective dimension, ``> 0`` (:func:`effective_dimension`).

    Returns
    -------
    int

    Examples
    --------
    >>> from rnla.bounds import nystrom_pcg_rank
    >>> nystrom_pcg_rank(10.0)
    31
    """
    d = check_real(d_eff, "d_eff", lower=0.0)
    return 2 * math.ceil(1.5 * d) + 1


def nystrom_pcg_condition_bound(lambda_min, mu, error_norm, /) -> float:
    r"""Deterministic condition bound of the Nyström-preconditioned system.

    .. math::

        \kappa\bigl(P^{-1/2}(A+\mu I)P^{-1/2}\bigr) \le
        \frac{\hat\lambda_\ell + \mu + \|A - \hat A\|_2}{\mu},

    for :math:`P = (\hat\lambda_\ell+\mu)^{-1}U(\hat\Lambda+\mu I)U^T + (I - UU^T)` built
    from any PSD :math:`\hat A = U\hat\Lambda U^T \preceq A` of rank :math:`\ell`
    (randomized Nyström, RPCholesky).

    Parameters
    ----------
    lambda_min : float
        :math:`\hat\lambda_\ell \ge 0`, the smallest retained eigenvalue of
        :math:`\hat A`.
    mu : float
        :math:`\mu > 0`.
    error_norm : float
        :math:`\|A - \hat A\|_2 \ge 0` (or an upper bound such as
        :math:`\operatorname{tr}(A - \hat A)`, which RPCholesky tracks exactly).

    Returns
    -------
    float

    Notes
    -----
    **Proof** (Frangella, Tropp and Udell 2023, Prop. 5.3). Write :math:`A+\mu I =
    (\hat A + \mu I) + E` with :math:`E = A - \hat A \succeq 0`. On
    :math:`\operatorname{range}(U)`, :math:`P^{-1/2}(\hat A+\mu I)P^{-1/2}` equals
    :math:`(\hat\lambda_\ell+\mu)I`, on its complement :math:`\mu I`; and
    :math:`0 \preceq P^{-1/2}EP^{-1/2} \preceq \|E\|I` because :math:`\|P^{-1}\|
    \le 1`. Hence the eigenvalues lie in :math:`[\mu, \hat\lambda_\ell + \mu +
    \|E\|]`. Proven, deterministic (the randomness is only in :math:`\|E\|`).

    Examples
    --------
    >>> from rnla.bounds import nystrom_pcg_condition_bound
    >>> nystrom_pcg_condition_bound(0.5, 1.0, 0.5)
    2.0
    """
    lam = check_real(lambda_min, "lambda_min", lower=0.0, open_left=False)
    mu = check_real(mu, "mu", lower=0.0)
    err = check_real(error_norm, "error_norm", lower=0.0, open_left=False)
    return (lam + mu + err) / mu
