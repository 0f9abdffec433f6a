r"""Stochastic trace and log-determinant estimation from matrix-vector products.

* :func:`hutchinson` - Girard-Hutchinson :math:`\frac1m\sum_i z_i^TAz_i`.
* :func:`hutchpp` - Hutch++: exact trace on a sketched dominant subspace plus
  Hutchinson on the rest; error :math:`O(1/m)` instead of :math:`O(1/\sqrt m)` for PSD
  ``A``.
* :func:`xtrace` - XTrace, the exchangeable (leave-one-out) version of Hutch++ with a
  built-in error estimate.
* :func:`xnystrace` - XNysTrace for PSD ``A``: the same idea with Nyström
  approximations, one matvec per probe.
* :func:`slq` - stochastic Lanczos quadrature for :math:`\operatorname{tr} f(A)`.
* :func:`logdet` - :math:`\log\det A` of an SPD operator: Cholesky, SLQ, or SLQ with
  Hutch++-style deflation.

Every estimator returns a :class:`TraceEstimate` ``(value, stderr, n_matvecs)``.
Products go through the package's operator wrapper, so ``A`` may be an ndarray, a
sparse matrix, a :class:`~scipy.sparse.linalg.LinearOperator`, an object with
``as_linear_operator()`` or a ``dask.array.Array`` (each block product is one pass over
the chunks, computed to NumPy: ``n x m`` probes fit on the client). Probes are drawn from
the ``rng`` in one block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from rnla._results import _with_passes
from rnla._validation import check_int, check_option, check_rng
from rnla.krylov import (
    _apply_f,
    _block_lanczos_core,
    _check_symmetric,
    _eig_tridiag,
    _lanczos_batch,
    _resolve_f,
)
from rnla.operators import _wrap

__all__ = ["TraceEstimate", "hutchinson", "hutchpp", "logdet", "slq", "xnystrace", "xtrace"]

_DISTRIBUTIONS = ("rademacher", "gaussian")


class _TraceEstimateFields(NamedTuple):
    """Fields of :class:`TraceEstimate`."""

    value: float | np.ndarray
    stderr: float | np.ndarray
    n_matvecs: int


class TraceEstimate(_TraceEstimateFields):
    """A stochastic trace (or log-determinant) estimate.

    Returned by every estimator of :mod:`rnla.trace` (Python floats) and by
    :func:`rnla.augmented.slq_logdet` (arrays of the shape of ``lam``, one estimate per
    shift).

    Attributes
    ----------
    value : float or ndarray
        The estimate (the mean of the per-probe estimates, plus any exactly computed
        part).
    stderr : float or ndarray
        Estimated standard error of ``value``: the sample standard deviation of the
        per-probe estimates over the square root of their number. With a single probe
        the sample standard deviation is undefined and ``stderr`` is ``inf`` (no
        accuracy claimed); ``0.0`` for exact results.
    n_matvecs : int
        Products with ``A`` (columns) spent, including symmetry probes.
    n_passes : int or None
        Attribute, not a field (unpacking is unchanged): passes over ``A`` (block
        products, each one graph over the chunks for a dask array), including symmetry
        probes; ``None`` where not counted (``logdet(method="exact")``,
        :func:`rnla.augmented.slq_logdet`).
    """

    n_passes: int | None = None


def _estimate(op, value, stderr, n_matvecs) -> TraceEstimate:
    """Return a :class:`TraceEstimate` carrying the passes made through ``op``."""
    return _with_passes(TraceEstimate(value, stderr, n_matvecs), op.n_passes)


def _probes(rng, n, m, distribution, dtype) -> np.ndarray:
    if distribution == "rademacher":
        Z = rng.integers(0, 2, size=(n, m)).astype(dtype) * 2 - 1
    else:
        Z = rng.standard_normal((n, m))
    return np.asarray(Z, dtype=dtype)


def _mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size < 2:
        # One probe: the sample standard deviation is undefined; claim no accuracy.
        return float(samples.mean()), math.inf
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(samples.size))


def hutchinson(A, n_probes, /, *, distribution="rademacher", rng=None) -> TraceEstimate:
    r"""Girard-Hutchinson trace estimator.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Square operator (need not be symmetric).
    n_probes : int
        Number of probe vectors :math:`m \ge 1`.
    distribution : {"rademacher", "gaussian"}, default="rademacher"
        Law of the i.i.d. probe entries.
    rng : None, int or Generator, optional
        Source of the probes.

    Returns
    -------
    TraceEstimate
        ``value``, ``stderr`` (``inf`` for one probe), ``n_matvecs = n_probes``;
        ``n_passes = 1`` (one block product).

    Raises
    ------
    TypeError
        Complex input, non-integer ``n_probes``.
    ValueError
        Non-square ``A``, ``n_probes < 1``, unknown ``distribution``.

    Notes
    -----
    Unbiased, with variance :math:`2\|A_s\|_F^2/m` for Gaussian probes and
    :math:`2(\|A_s\|_F^2 - \sum_i A_{ii}^2)/m` for Rademacher probes
    (:math:`A_s = (A + A^T)/2`; see :func:`rnla.bounds.hutchinson_variance`) [1]_ [2]_.
    Cost: ``n_probes`` matvecs, done as one block product.

    References
    ----------
    .. [1] M. F. Hutchinson, "A stochastic estimator of the trace of the influence
       matrix for Laplacian smoothing splines", Commun. Stat. Simul. Comput. 18 (1989).
    .. [2] H. Avron and S. Toledo, "Randomized algorithms for estimating the trace of an
       implicit symmetric positive semi-definite matrix", J. ACM 58 (2011).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import hutchinson
    >>> est = hutchinson(np.eye(20), 5, rng=0)
    >>> est.value, est.n_matvecs
    (20.0, 5)
    """
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    m = check_int(n_probes, "n_probes", minimum=1)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    Z = _probes(check_rng(rng), n, m, distribution, dtype)
    AZ = op.matmat(Z, dtype)
    samples = np.einsum("ij,ij->j", Z.astype(np.float64), AZ.astype(np.float64))
    return _estimate(op, *_mean_stderr(samples), m)


def hutchpp(A, n_matvecs, /, *, distribution="rademacher", rng=None) -> TraceEstimate:
    r"""Hutch++ trace estimator (Meyer, Musco, Musco & Woodruff).

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Square operator; the :math:`O(1/m)` guarantee needs ``A`` PSD.
    n_matvecs : int
        Budget :math:`m \ge 3`: :math:`s = \lfloor m/3\rfloor` for the sketch, ``s`` for
        the projected trace and :math:`m - 2s` Hutchinson probes.
    distribution : {"rademacher", "gaussian"}, default="rademacher"
        Law of the sketch and probe entries.
    rng : None, int or Generator, optional
        Source of the sketch and probes.

    Returns
    -------
    TraceEstimate
        ``stderr`` is the standard error of the Hutchinson part (``inf`` with a single
        probe); ``n_passes = 3`` (block products with ``S``, ``Q`` and the probes).

    Raises
    ------
    TypeError
        Complex input, non-integer budget.
    ValueError
        Non-square ``A``, ``n_matvecs < 3``, unknown ``distribution``.

    Notes
    -----
    With :math:`Q = \operatorname{orth}(AS)` and :math:`P = I - QQ^T`, the estimate
    :math:`\operatorname{tr}(Q^TAQ) + \frac1g\operatorname{tr}(G^TPAPG)` is unbiased.
    For PSD ``A``, :math:`m = O(\sqrt{\log(1/\delta)}/\varepsilon + \log(1/\delta))`
    matvecs give relative error :math:`\varepsilon` with probability :math:`1-\delta`
    [1]_ (Thm 1.1), against :math:`O(1/\varepsilon^2)` for :func:`hutchinson`. The
    estimate is exact when :math:`\operatorname{rank}(A) \le s`.

    References
    ----------
    .. [1] R. A. Meyer, C. Musco, C. Musco and D. P. Woodruff, "Hutch++: optimal
       stochastic trace estimation", SOSA 2021, arXiv:2010.09649.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import hutchpp
    >>> hutchpp(np.diag(np.arange(30.0)), 12, rng=0).n_matvecs
    12
    """
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    m = check_int(n_matvecs, "n_matvecs", minimum=3)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    rng = check_rng(rng)
    s = min(m // 3, n)
    g = m - 2 * s
    S = _probes(rng, n, s, distribution, dtype)
    G = _probes(rng, n, g, distribution, dtype)
    Q, _ = np.linalg.qr(op.matmat(S, dtype))
    head = float(np.trace(Q.T.astype(np.float64) @ op.matmat(Q, dtype)))
    PG = G - Q @ (Q.T @ G)
    tail = np.einsum("ij,ij->j", PG.astype(np.float64), op.matmat(PG, dtype))
    mean, stderr = _mean_stderr(tail)
    return _estimate(op, head + mean, stderr, 2 * s + g)


def xtrace(A, n_matvecs, /, *, distribution="gaussian", rng=None) -> TraceEstimate:
    r"""XTrace: exchangeable Hutch++ with an error estimate (Epperly, Tropp & Webber).

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Square operator (need not be symmetric).
    n_matvecs : int
        Budget :math:`m \ge 4`; :math:`s = \min(\lfloor m/2\rfloor, n)` probes are used,
        each twice (``A @ Omega`` and ``A @ Q``).
    distribution : {"gaussian", "rademacher"}, default="gaussian"
        Law of the probe entries.
    rng : None, int or Generator, optional
        Source of the probes.

    Returns
    -------
    TraceEstimate
        ``value`` is the mean of the ``s`` leave-one-out estimates and ``stderr`` their
        standard deviation over :math:`\sqrt s` (the estimator's own error estimate);
        ``n_passes = 2`` (block products with ``Omega`` and ``Q``).

    Raises
    ------
    TypeError
        Complex input, non-integer budget.
    ValueError
        Non-square ``A``, ``n_matvecs < 4``, unknown ``distribution``.

    Notes
    -----
    Let :math:`Y = A\Omega = QR` and, for each probe :math:`\omega_i`, :math:`P_i` the
    orthogonal projector on :math:`\operatorname{range}(A\Omega_{-i})`. Then

    .. math::

        \hat t_i = \operatorname{tr}(AP_i) + \omega_i^T(I - P_i)A(I - P_i)\omega_i

    is unbiased (:math:`\omega_i` is independent of :math:`P_i`), and XTrace returns
    their mean [1]_ (§2). All :math:`P_i` are rank-one downdates
    :math:`P_i = Q(I - s_is_i^T)Q^T` with :math:`s_i` the normalised :math:`i`-th column
    of :math:`R^{-T}`, so the ``s`` estimates cost :math:`O(ns^2)` flops beyond the
    ``2s`` matvecs. If ``Y`` is rank deficient, ``range(Y) = range(A)`` (almost surely
    for Gaussian probes) and the exact :math:`\operatorname{tr}(Q^TAQ)` is returned with
    ``stderr = 0``.

    References
    ----------
    .. [1] E. N. Epperly, J. A. Tropp and R. J. Webber, "XTrace: making the most of every
       sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45 (2024),
       arXiv:2301.07825.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import xtrace
    >>> xtrace(np.diag(np.arange(30.0)), 10, rng=0).n_matvecs
    10
    """
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    m = check_int(n_matvecs, "n_matvecs", minimum=4)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    s = min(m // 2, n)
    Om = _probes(check_rng(rng), n, s, distribution, dtype)
    Y = op.matmat(Om, dtype)
    Q, R = np.linalg.qr(Y.astype(np.float64))
    Ur, sv, _ = np.linalg.svd(R)
    rank = int(np.count_nonzero(sv > s * np.finfo(dtype).eps * max(sv[0], 1e-300)))
    if rank < s:
        Qr = Q @ Ur[:, :rank]
        Z = op.matmat(Qr.astype(dtype), dtype).astype(np.float64)
        return _estimate(op, float(np.trace(Qr.T @ Z)), 0.0, s + rank)
    Z = op.matmat(Q.astype(dtype), dtype).astype(np.float64)
    Om64 = Om.astype(np.float64)
    H = Q.T @ Z
    if s == n:
        # Q is a basis of the whole space (n <= m/2, e.g. tiny problems): tr(Q^T A Q) is
        # the exact trace, better than any leave-one-out estimate.
        return _estimate(op, float(np.trace(H)), 0.0, 2 * s)
    W = Q.T @ Om64
    Sv = sla.solve_triangular(R, np.eye(s), trans="T")  # R^{-T}; column i is s_i
    Sv /= np.linalg.norm(Sv, axis=0)
    c = np.einsum("ji,ji->i", Sv, W)
    Gm = W - Sv * c  # column i: coordinates of P_i omega_i in the basis Q
    Tm = Om64.T @ Z  # row i: omega_i^T A Q
    est = (
        np.trace(H)
        - np.einsum("ji,jk,ki->i", Sv, H, Sv)
        + np.einsum("ji,ji->i", Om64, Y.astype(np.float64))
        - np.einsum("ij,ji->i", Tm, Gm)
        - np.einsum("ji,ji->i", Gm, R)
        + np.einsum("ji,jk,ki->i", Gm, H, Gm)
    )
    return _estimate(op, *_mean_stderr(est), 2 * s)


def xnystrace(A, n_matvecs, /, *, distribution="gaussian", rng=None) -> TraceEstimate:
    r"""XNysTrace: exchangeable Nyström trace estimator for PSD operators.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric positive semidefinite operator.
    n_matvecs : int
        Number of probes :math:`s \ge 2` (one matvec each). With :math:`s \ge n` the
        trace is computed exactly from the :math:`n` products with the unit vectors
        (``stderr = 0``, ``n_matvecs = n`` plus the symmetry probe).
    distribution : {"gaussian", "rademacher"}, default="gaussian"
        Law of the probe entries.
    rng : None, int or Generator, optional
        Source of the probes (and of the symmetry probe).

    Returns
    -------
    TraceEstimate
        Mean of the ``s`` leave-one-out estimates with its standard error;
        ``n_matvecs = s + 2`` (symmetry probe included).

    Raises
    ------
    TypeError
        Complex input, non-integer budget.
    ValueError
        Non-square, non-symmetric or non-PSD ``A`` (detected through a failed Cholesky
        factorisation of :math:`\Omega^T(A + \nu I)\Omega`), budget out of range.

    Notes
    -----
    With :math:`Y = (A+\nu I)\Omega`, :math:`H = \Omega^TY = R^TR` and the Nyström
    approximation :math:`\hat A_{(i)}` built from all probes but :math:`\omega_i`,

    .. math::

        \hat t_i = \operatorname{tr}\hat A_{(i)} + \omega_i^T(A - \hat A_{(i)})\omega_i
        = \|YR^{-1}\|_F^2 - \frac{\|YR^{-1}r_i\|^2}{\|r_i\|^2} + \frac{1}{\|r_i\|^2},

    with :math:`r_i = R^{-T}e_i` (block inversion of :math:`H`), minus :math:`n\nu`
    [1]_ (§2.3). The shift :math:`\nu = \sqrt n\,\epsilon\,\|Y\|_F` stabilises the
    factorisation (Tropp et al. 2017). Cost: ``s`` matvecs and :math:`O(ns^2)` flops.

    References
    ----------
    .. [1] E. N. Epperly, J. A. Tropp and R. J. Webber, "XTrace: making the most of every
       sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45 (2024),
       arXiv:2301.07825.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import xnystrace
    >>> A = np.diag(np.r_[np.arange(1.0, 6.0), np.zeros(25)])  # PSD, rank 5 <= 8
    >>> est = xnystrace(A, 8, rng=0)
    >>> round(est.value, 6), est.n_matvecs
    (15.0, 10)
    """
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    s = check_int(n_matvecs, "n_matvecs", minimum=2)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    rng = check_rng(rng)
    extra = _check_symmetric(op, rng, dtype)
    if s >= n:
        # The budget covers the whole space: n products with unit vectors give the trace.
        diag = np.einsum("ii->i", op.matmat(np.eye(n, dtype=dtype), dtype).astype(np.float64))
        if np.any(diag < -math.sqrt(n) * float(np.finfo(dtype).eps) * np.abs(diag).max()):
            raise ValueError("A must be positive semidefinite: it has a negative diagonal entry")
        return TraceEstimate(float(diag.sum()), 0.0, n + extra)
    Om = _probes(rng, n, s, distribution, dtype).astype(np.float64)
    Y = op.matmat(Om.astype(dtype), dtype).astype(np.float64)
    nu = math.sqrt(n) * float(np.finfo(dtype).eps) * float(np.linalg.norm(Y))
    # A Omega = 0 (e.g. the zero matrix) leaves nothing to scale the shift by; any positive
    # shift keeps Omega^T (A + nu I) Omega definite, and the estimate is then ~0.
    nu = max(nu, float(np.finfo(np.float64).tiny) / float(np.finfo(np.float64).eps))
    Y += nu * Om
    H = Om.T @ Y
    try:
        R = sla.cholesky((H + H.T) / 2, lower=False)
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            "A must be positive semidefinite: Omega^T (A + nu I) Omega is not positive definite"
        ) from exc
    B = sla.solve_triangular(R, Y.T, trans="T").T  # Y R^{-1}
    Rt = sla.solve_triangular(R, np.eye(s), trans="T")  # R^{-T}, columns r_i
    rn2 = np.sum(Rt**2, axis=0)
    BR = B @ Rt
    est = np.sum(B**2) - np.sum(BR**2, axis=0) / rn2 + 1.0 / rn2 - n * nu
    return _estimate(op, *_mean_stderr(est), s + extra)


def _slq_samples(op, Z, f, k, full, dtype):
    """Per-probe quadrature ``||z||^2 e1^T f(T) e1`` from batched Lanczos."""
    fun, name, lo, _ = f
    alpha, beta, steps, norms, n_mv = _lanczos_batch(op, Z, k, full, dtype)
    out = np.empty(Z.shape[1])
    for c in range(Z.shape[1]):
        j = steps[c]
        theta, S = _eig_tridiag(alpha[c, :j], beta[c, : j - 1])
        out[c] = norms[c] ** 2 * np.sum(S[0] ** 2 * _apply_f(fun, name, lo, theta))
    return out, n_mv


# Defaults shared with rnla.augmented: probes of the stochastic part and Lanczos steps
# per probe (clamped to the problem size when the caller did not choose them).
_DEFAULT_N_PROBES = 10
_DEFAULT_K = 20


def _check_k(k, n):
    if k is None:
        return min(_DEFAULT_K, n)
    return check_int(k, "k", minimum=1, maximum=n)


def slq(
    A, f, /, *, n_probes=10, k=None, distribution="rademacher", reorth="full", rng=None
) -> TraceEstimate:
    r"""Stochastic Lanczos quadrature for :math:`\operatorname{tr} f(A)`.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric operator.
    f : callable or {"log", "inv", "sqrt", "exp"}
        Function applied to eigenvalues; the named ``"log"``, ``"inv"``, ``"sqrt"``
        require ``A`` positive definite.
    n_probes : int, default=10
        Number of probe vectors.
    k : int, optional
        Lanczos steps per probe, ``1 <= k <= n``; default ``min(20, n)``.
    distribution : {"rademacher", "gaussian"}, default="rademacher"
        Law of the probe entries.
    reorth : {"full", "none"}, default="full"
        Reorthogonalisation of each probe's Lanczos basis.
    rng : None, int or Generator, optional
        Source of the probes and of the symmetry probe.

    Returns
    -------
    TraceEstimate
        Mean over probes of :math:`\|z\|^2 e_1^Tf(T_k)e_1` with its standard error.

    Raises
    ------
    TypeError
        Complex input, ``f`` neither callable nor str.
    ValueError
        Non-square or non-symmetric ``A``, ``k`` out of range, a Ritz value outside the
        domain of the named ``f``.

    Notes
    -----
    Each probe's quadratic form :math:`z^Tf(A)z` is replaced by its ``k``-point Gauss
    quadrature [1]_; the probes run in lockstep so each Lanczos step is one block
    product. The quadrature error per probe is at most
    :math:`2\|z\|^2\min_{\deg p\le 2k-1}\max_{[\lambda_{\min},\lambda_{\max}]}|f-p|`
    (:func:`rnla.bounds.lanczos_quadrature_bound`), and the sampling error follows the
    Hutchinson variance of :math:`f(A)` [2]_. Cost: ``n_probes * k`` matvecs plus
    :math:`O(n\,k^2)` flops per probe for full reorthogonalisation.

    References
    ----------
    .. [1] S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic
       Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38 (2017), 1075-1099.
    .. [2] A. Cortinovis and D. Kressner, "On randomized trace estimates for indefinite
       matrices with an application to determinants", Found. Comput. Math. 22 (2022).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import slq
    >>> est = slq(np.diag(np.linspace(1.0, 2.0, 50)), "log", n_probes=4, k=5, rng=0)
    >>> est.n_matvecs
    22
    """
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    fres = _resolve_f(f)
    m = check_int(n_probes, "n_probes", minimum=1)
    k = _check_k(k, n)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    full = check_option(reorth, ("full", "none"), "reorth") == "full"
    rng = check_rng(rng)
    extra = _check_symmetric(op, rng, dtype)
    Z = _probes(rng, n, m, distribution, dtype)
    samples, n_mv = _slq_samples(op, Z, fres, k, full, dtype)
    return _estimate(op, *_mean_stderr(samples), n_mv + extra)


def _logdet_exact(A, rng) -> TraceEstimate:
    if sp.issparse(A) or not isinstance(A, np.ndarray | list | tuple):
        raise TypeError(
            f"method='exact' needs a dense array, got {type(A).__name__}; use method='slq'"
        )
    A = np.asarray(A)
    op = _wrap(A, square=True)
    dtype = op.dtype
    _check_symmetric(op, check_rng(rng), dtype)
    try:
        L = sla.cholesky(np.asarray(A, dtype=dtype), lower=True, check_finite=False)
    except np.linalg.LinAlgError as exc:
        raise ValueError("A must be symmetric positive definite (Cholesky failed)") from exc
    return TraceEstimate(float(2.0 * np.sum(np.log(np.diag(L).astype(np.float64)))), 0.0, 0)


def _logdet_deflated(op, n, dtype, n_probes, k, rank, distribution, full, rng, extra):
    """Hutch++-style SLQ: block Gauss quadrature on a sketched top subspace + SLQ rest."""
    Om = _probes(rng, n, rank, distribution, dtype)
    Q, _ = np.linalg.qr(op.matmat(Om, dtype))
    kb = max(1, min(k, -(-n // rank)))
    st = _block_lanczos_core(op, Q, kb, full, dtype)
    theta, S = np.linalg.eigh(st.T.astype(np.float64))
    r0 = st.R0.shape[0]
    # tr(Q^T log(A) Q) ~ sum over the start block of E1^T log(T) E1 (block Gauss rule).
    head = float(np.sum(np.sum(S[:r0] ** 2, axis=0) * _apply_f(np.log, "log", 0.0, theta)))
    if Q.shape[1] >= n:
        # The sketch spans the whole space: the block Gauss rule on it is the exact
        # log-determinant (up to the Krylov depth) and there is no remainder to sample.
        return _estimate(op, head, 0.0, rank + st.n_matvecs + extra)
    G = _probes(rng, n, n_probes, distribution, dtype)
    PG = G - Q @ (Q.T @ G)
    samples, n_mv = _slq_samples(op, PG, (np.log, "log", 0.0, None), k, full, dtype)
    mean, stderr = _mean_stderr(samples)
    return _estimate(op, head + mean, stderr, rank + st.n_matvecs + n_mv + extra)


_LOGDET = ("auto", "exact", "slq", "hutchpp")


def logdet(
    A,
    /,
    *,
    method="auto",
    n_probes=10,
    k=None,
    rank=None,
    distribution="rademacher",
    reorth="full",
    rng=None,
) -> TraceEstimate:
    r"""Log-determinant of a symmetric positive definite operator.

    Parameters
    ----------
    A : array_like, sparse matrix, LinearOperator or dask array of shape (n, n)
        Symmetric positive definite operator.
    method : {"auto", "exact", "slq", "hutchpp"}, default="auto"
        ``"exact"``: Cholesky of a dense array; ``"slq"``: :func:`slq` with ``f = log``;
        ``"hutchpp"``: SLQ deflated by a sketched dominant subspace. ``"auto"`` is
        ``"exact"`` for dense arrays and ``"slq"`` otherwise.
    n_probes : int, default=10
        Probes of the stochastic part.
    k : int, optional
        Lanczos steps per probe (block steps for the deflation subspace), ``1 <= k <= n``;
        default ``min(20, n)``.
    rank : int, optional
        Dimension of the deflation sketch for ``"hutchpp"`` (default ``n_probes``).
    distribution : {"rademacher", "gaussian"}, default="rademacher"
        Law of the probe entries.
    reorth : {"full", "none"}, default="full"
        Reorthogonalisation of the Lanczos bases.
    rng : None, int or Generator, optional
        Source of probes and sketches.

    Returns
    -------
    TraceEstimate
        ``stderr = 0`` and ``n_matvecs = 0`` for ``"exact"``.

    Raises
    ------
    TypeError
        ``"exact"`` on a sparse matrix or operator; complex input.
    ValueError
        Non-symmetric or not positive definite ``A`` (failed Cholesky, or a Ritz value
        :math:`\le 0`), parameters out of range.

    Notes
    -----
    :math:`\log\det A = \operatorname{tr}\log A`. SLQ [1]_ needs, for relative accuracy
    :math:`\varepsilon` of the quadrature, :math:`k = O(\sqrt\kappa\log(\kappa/
    \varepsilon))` steps and :math:`O(\|\log A\|_F^2/\varepsilon^2)` probes [2]_.
    ``"hutchpp"`` computes :math:`\operatorname{tr}(Q^T\log(A)Q)` for
    :math:`Q = \operatorname{orth}(A\Omega)` by block Gauss quadrature and runs SLQ on
    :math:`(I-QQ^T)z`, which removes the variance of the dominant eigenvalues
    (Hutch++ [3]_ applied to :math:`\log A`). Cost of ``"exact"``: :math:`n^3/3` flops.

    References
    ----------
    .. [1] S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic
       Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38 (2017), 1075-1099.
    .. [2] A. Cortinovis and D. Kressner, "On randomized trace estimates for indefinite
       matrices with an application to determinants", Found. Comput. Math. 22 (2022).
    .. [3] R. A. Meyer, C. Musco, C. Musco and D. P. Woodruff, "Hutch++: optimal
       stochastic trace estimation", SOSA 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.trace import logdet
    >>> A = np.diag(np.linspace(1.0, 2.0, 40))
    >>> round(logdet(A).value, 6) == round(float(np.sum(np.log(np.diag(A)))), 6)
    True
    >>> logdet(A, method="slq", n_probes=4, k=8, rng=0).n_matvecs
    34
    """
    method = check_option(method, _LOGDET, "method")
    if method == "auto":
        dense = not sp.issparse(A) and isinstance(A, np.ndarray | list | tuple)
        method = "exact" if dense else "slq"
    if method == "exact":
        return _logdet_exact(A, rng)
    op = _wrap(A, square=True)
    n, dtype = op.shape[0], op.dtype
    m = check_int(n_probes, "n_probes", minimum=1)
    k = _check_k(k, n)
    distribution = check_option(distribution, _DISTRIBUTIONS, "distribution")
    full = check_option(reorth, ("full", "none"), "reorth") == "full"
    rng = check_rng(rng)
    if method == "slq":
        extra = _check_symmetric(op, rng, dtype)
        Z = _probes(rng, n, m, distribution, dtype)
        samples, n_mv = _slq_samples(op, Z, (np.log, "log", 0.0, None), k, full, dtype)
        return _estimate(op, *_mean_stderr(samples), n_mv + extra)
    rank = m if rank is None else check_int(rank, "rank", minimum=1, maximum=n)
    extra = _check_symmetric(op, rng, dtype)
    return _logdet_deflated(op, n, dtype, m, k, rank, distribution, full, rng, extra)
