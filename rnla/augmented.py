r"""Augmented Krylov evaluation of Gaussian marginal likelihoods over many shifts.

For a symmetric positive semidefinite (PSD) operator :math:`A \in \mathbb R^{N\times N}`
with fast products, a vector :math:`y` and many shifts :math:`\lambda > 0`, the
profiled negative log marginal likelihood of the model
:math:`y \sim \mathcal N(0, c(\lambda I + A))` needs two terms,

.. math::

   \text{data fit } y^T(\lambda I + A)^{-1}y, \qquad
   \text{complexity } \log\det(\lambda I + A).

:class:`AugmentedKrylov` builds **one** block Krylov space of :math:`A` from the
augmented start block :math:`[y, \Omega]` (:math:`\Omega`: random probes) and evaluates
both terms, two-sided quadrature bounds and the likelihood for arrays of shifts at
:math:`O(\dim)` cost per shift (shift invariance of Krylov spaces) - the approach of
Matti, Andersen, Chen and Kressner (arXiv:2605.08362) for kernel-based system
identification. Baselines with the same number of products are
:func:`lanczos_datafit` (plain Lanczos on :math:`y`) and :func:`slq_logdet`
(stochastic Lanczos quadrature); :func:`exact_likelihood` (dense, per shift) and
:func:`fir_likelihood_qr` (Chen-Ljung QR for FIR models) are the exact references.
:func:`fir_regressor`, :func:`fir_kernel` and :func:`fir_operator` build the FIR
identification problem :math:`A = \Phi K \Phi^T` with FFT-based Toeplitz products.

Dense work (eigendecompositions of the small projected matrices, QR) is LAPACK through
NumPy/SciPy; the Krylov bases come from :mod:`rnla.krylov`. No Numba kernel is needed:
every per-shift evaluation is one small matrix product.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import scipy.fft
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.stats
from scipy.sparse.linalg import LinearOperator

from rnla._validation import (
    as_float_array,
    check_int,
    check_option,
    check_rng,
    result_dtype,
)
from rnla.krylov import block_lanczos, lanczos
from rnla.operators import _wrap
from rnla.trace import _DEFAULT_K, _DEFAULT_N_PROBES, TraceEstimate

__all__ = [
    "AugmentedBounds",
    "AugmentedKrylov",
    "LikelihoodValues",
    "QuadratureEstimate",
    "exact_likelihood",
    "fir_kernel",
    "fir_likelihood_qr",
    "fir_operator",
    "fir_regressor",
    "lanczos_datafit",
    "slq_logdet",
]

_RULES = ("gauss", "radau")
_PROBES = ("rademacher", "gaussian")
# Two-sided level of the probabilistic log-det interval (Student t with s - 1 degrees of
# freedom on the probe values).
_CONFIDENCE = 0.99
# A Ritz value below -sqrt(eps) * max|theta| proves that A is not PSD.
# A Ritz pair with residual <= _CONV_TOL * max|theta| counts as converged (deflated from
# the log-det probes); float64 sqrt(eps) for every input dtype, since the residuals are
# computed in float64 and deflation only reduces variance.
_CONV_TOL = math.sqrt(float(np.finfo(np.float64).eps))
# Ritz values within _PINV_TOL * max|theta| of the Radau node are treated as exact null
# directions of T - aI (their coupling to the rest of the space is at rounding level).
_PINV_TOL = 1e3 * float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------


class AugmentedBounds(NamedTuple):
    r"""Bounds on the data fit, the log-determinant and the likelihood, per shift.

    Every field has the shape of the ``lam`` argument (a scalar for a scalar ``lam``).

    Attributes
    ----------
    datafit_lower : ndarray
        Gauss rule: a guaranteed lower bound on :math:`y^T(\lambda I+A)^{-1}y`.
    datafit_upper : ndarray
        Gauss-Radau rule with the node at ``spectrum_lower``: a guaranteed upper bound
        (given :math:`\lambda_{\min}(A) \ge` ``spectrum_lower``).
    logdet_lower : ndarray
        The larger of the guaranteed (interlacing) lower bound
        :math:`N\log\lambda + \sum_i \log(1 + \theta_i/\lambda)` and the probabilistic
        lower end (mean of the per-probe Radau values minus :math:`t` standard errors).
    logdet_upper : ndarray
        **Probabilistic**: mean of the per-probe Gauss values plus :math:`t` standard
        errors, :math:`t` the 0.995 quantile of Student's t with ``n_probes - 1``
        degrees of freedom (``inf`` with one probe). Not a guarantee: a nominal 99%
        interval under a normal approximation of the probe values.
    logdet_stderr : ndarray
        Standard error of the probe mean of the log-det estimate (``inf`` with one probe).
    nll_lower, nll_upper : ndarray
        :math:`N\log(\cdot) + \log\det` combined from the bounds above (the upper end is
        probabilistic through ``logdet_upper``).
    """

    datafit_lower: np.ndarray
    datafit_upper: np.ndarray
    logdet_lower: np.ndarray
    logdet_upper: np.ndarray
    logdet_stderr: np.ndarray
    nll_lower: np.ndarray
    nll_upper: np.ndarray


class QuadratureEstimate(NamedTuple):
    r"""Quadrature estimate of :math:`y^T(\lambda I + A)^{-1} y` with its bracket.

    Attributes
    ----------
    value : ndarray
        The estimate of the requested rule, shape of ``lam``.
    lower : ndarray
        Gauss rule (guaranteed lower bound), shape of ``lam``.
    upper : ndarray
        Gauss-Radau rule (guaranteed upper bound), shape of ``lam``.
    n_matvecs : int
        Products with ``A`` used (including the residual and symmetry probes).
    """

    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_matvecs: int


class LikelihoodValues(NamedTuple):
    r"""Exact data fit, log-determinant and profiled negative log-likelihood.

    Attributes
    ----------
    datafit : ndarray
        :math:`y^T(\lambda I + A)^{-1}y`, shape of ``lam``.
    logdet : ndarray
        :math:`\log\det(\lambda I + A)`, shape of ``lam``.
    neg_log_likelihood : ndarray
        :math:`N\log(\text{datafit}) + \text{logdet}`, shape of ``lam``.
    """

    datafit: np.ndarray
    logdet: np.ndarray
    neg_log_likelihood: np.ndarray


# ---------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------


def _check_lam(lam) -> tuple[np.ndarray, tuple[int, ...]]:
    """Return the shifts as a flat float64 array and the shape to restore."""
    if isinstance(lam, bool) or (sp.issparse(lam) or isinstance(lam, LinearOperator)):
        raise TypeError(f"lam must be a positive number or a 1-D array, got {type(lam)}")
    arr = np.asarray(lam)
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        if arr.dtype.kind == "c":
            raise TypeError(f"lam must be real, got dtype {arr.dtype}")
        raise TypeError(f"lam must be a positive number or a 1-D array, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"lam must be a scalar or 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("lam must contain at least one shift, got an empty array")
    flat = arr.astype(np.float64).ravel()
    if not np.all(np.isfinite(flat)) or not np.all(flat > 0):
        bad = flat[~(np.isfinite(flat) & (flat > 0))][0]
        raise ValueError(f"lam must be finite and > 0 (shifts of a PSD matrix), got {bad}")
    return flat, arr.shape


def _shape_out(values: np.ndarray, shape, dtype):
    out = np.asarray(values, dtype=dtype).reshape(shape)
    return out[()] if out.ndim == 0 else out


def _check_spectrum_lower(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"spectrum_lower must be a real number, got {value!r}")
    value = float(value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"spectrum_lower={value} must be a finite lower bound on the eigenvalues of the "
            "PSD matrix A, i.e. 0 <= spectrum_lower <= lambda_min(A)"
        )
    return value


def _draw_probes(n: int, s: int, kind: str, rng: np.random.Generator, dtype) -> np.ndarray:
    if kind == "rademacher":
        return (2.0 * rng.integers(0, 2, size=(n, s)) - 1.0).astype(dtype)
    return rng.standard_normal((n, s)).astype(dtype)


# ---------------------------------------------------------------------------------------
# Gauss and block Gauss-Radau rules from one Krylov basis (no validation)
# ---------------------------------------------------------------------------------------


class _Rules(NamedTuple):
    theta: np.ndarray  # (J,) Ritz values (Gauss nodes), clipped at spectrum_lower
    S: np.ndarray  # (J, J) eigenvectors of T
    theta_r: np.ndarray  # (J + q,) nodes of the block Gauss-Radau rule
    S_r: np.ndarray  # (J, J + q) first J rows of the eigenvectors of the extended matrix
    resid: np.ndarray  # (J,) Ritz residual norms ||A Q s_i - theta_i Q s_i||
    n_matvecs: int


def _rules(
    op: LinearOperator, Q: np.ndarray, T: np.ndarray, q: int, a: float, dtype, *, all_columns=False
) -> _Rules:
    r"""Gauss nodes of ``T`` and the block Gauss-Radau extension with nodes at ``a``.

    The residual :math:`G = AQ_{:,c} - QT_{:,c} = Q_{+}B` of the basis columns ``c``
    (the last ``q``; all of them when ``all_columns``, needed after deflation inside
    the block recurrence) costs ``len(c)`` products. With :math:`E` selecting ``c``,
    :math:`\tilde T = [[T, EB^T], [BE^T, aI + BE^T(T - aI)^{+}EB^T]]` has
    :math:`\tilde T - aI \succeq 0` and ``rank(B)`` eigenvalues equal to ``a``.
    """
    J = T.shape[0]
    T64 = np.asarray(T, dtype=np.float64)
    T64 = (T64 + T64.T) / 2
    theta, S = np.linalg.eigh(T64)
    scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
    sqrt_eps = math.sqrt(float(np.finfo(dtype).eps))
    if theta[0] < -sqrt_eps * scale:
        raise ValueError(
            "A must be positive semidefinite: a Ritz value of A is "
            f"{theta[0]:.6g} < 0 (largest |Ritz value| {scale:.6g})"
        )
    if theta[0] < a - sqrt_eps * scale:
        raise ValueError(
            f"spectrum_lower={a} exceeds the smallest Ritz value {theta[0]:.6g}, so it is "
            "not a lower bound on the eigenvalues of A (Cauchy interlacing)"
        )
    cols = np.arange(J) if all_columns else np.arange(J - min(q, J), J)
    G = np.asarray(op.matmat(Q[:, cols]), dtype=np.float64)
    Q64 = np.asarray(Q, dtype=np.float64)
    G -= Q64 @ T64[:, cols]
    for _ in range(2):  # the residual is orthogonal to the basis up to rounding
        G -= Q64 @ (Q64.T @ G)
    B = sla.qr(G, mode="economic")[1]  # G = Q_+ B, B (min(N, c), c)
    S_c = S[cols, :]  # E^T S
    resid = np.linalg.norm(B @ S_c, axis=0)
    theta = np.maximum(theta, a)
    shifted = theta - a
    # pseudo-inverse of T - aI: only exact (rounding-level) null directions are dropped
    keep = shifted > _PINV_TOL * scale
    D = (S_c[:, keep] / shifted[keep]) @ S_c[:, keep].T  # E^T (T - aI)^+ E
    qb = B.shape[0]
    Tt = np.zeros((J + qb, J + qb))
    Tt[:J, :J] = T64
    Tt[J:, cols] = B
    Tt[cols, J:] = B.T
    Tt[J:, J:] = a * np.eye(qb) + B @ D @ B.T
    theta_r, S_r = np.linalg.eigh((Tt + Tt.T) / 2)
    theta_r = np.maximum(theta_r, a)
    return _Rules(theta, S, theta_r, S_r[:J], resid, cols.size)


def _resolvent(nodes: np.ndarray, weights: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``sum_i weights[i, j] / (lam + nodes[i])`` for every shift: (m, n_vectors)."""
    return (1.0 / (lam[:, None] + nodes[None, :])) @ weights


def _log1p_rule(nodes: np.ndarray, weights: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``sum_i weights[i, j] log(1 + nodes[i] / lam)`` for every shift: (m, n_vectors)."""
    return np.log1p(nodes[None, :] / lam[:, None]) @ weights


# ---------------------------------------------------------------------------------------
# The augmented Krylov evaluator
# ---------------------------------------------------------------------------------------


class AugmentedKrylov:
    r"""Data fit, log-determinant and likelihood of :math:`\lambda I + A` for many shifts.

    Builds one block Krylov space :math:`\mathcal V = \mathcal K_k(A, [y, \Omega])`
    (``k`` block steps of :func:`rnla.krylov.block_lanczos`, :math:`\Omega` with
    ``n_probes`` random probe columns) and then evaluates, for arrays of shifts
    :math:`\lambda > 0`, at :math:`O(J\,(1 + s))` flops per shift
    (:math:`J = \dim\mathcal V`, :math:`s` = ``n_probes``):

    * :meth:`datafit` :math:`\approx y^T(\lambda I + A)^{-1}y`,
    * :meth:`logdet` :math:`\approx \log\det(\lambda I + A)`,
    * :meth:`neg_log_likelihood` :math:`= N\log(\text{datafit}) + \text{logdet}`,
    * :meth:`bounds`: guaranteed two-sided bounds on the data fit, a guaranteed lower
      and a probabilistic upper bound on the log-determinant,
    * :meth:`solve`: the Galerkin solution of :math:`(\lambda I + A)x = y` in
      :math:`\mathcal V`.

    Parameters
    ----------
    A : array_like, sparse matrix or LinearOperator of shape (N, N)
        Symmetric positive semidefinite operator (only products are used).
    y : array_like of shape (N,)
        Nonzero data vector.
    k : int, optional
        Block Lanczos steps; ``k * (1 + n_probes) <= N``. Default
        ``max(1, min(20, N // (1 + n_probes)))`` (the 20 steps of
        :func:`rnla.trace.logdet`, clamped so the Krylov space fits in ``N``).
    n_probes : int, optional
        Number of random probe columns :math:`s \ge 1` (they drive the log-det
        estimate and deflate the top of the spectrum for the data fit). Default
        ``min(10, N - 1)`` (the 10 probes of :func:`rnla.trace.logdet`, clamped to the
        size): 0 only for :math:`N = 1`, where the space spanned by ``y`` is all of
        :math:`\mathbb R^1` and every result is exact (standard error 0). An explicit
        value must satisfy ``1 <= n_probes`` and ``k * (1 + n_probes) <= N``.
    probes : {"rademacher", "gaussian"}, default="rademacher"
        Distribution of the probe entries.
    spectrum_lower : float, default=0.0
        A lower bound :math:`a \le \lambda_{\min}(A)`, the prescribed node of the
        Gauss-Radau rules (0 is valid for every PSD ``A``; a larger valid value gives
        tighter upper bounds). A value above a Ritz value is rejected.
    rng : None, int or Generator, optional
        Randomness of the probes and of the symmetry check.

    Attributes
    ----------
    n : int
        Size :math:`N` of ``A``.
    dim : int
        Dimension :math:`J \le k(1 + s)` of the Krylov space (smaller after deflation
        or breakdown).
    ritz_values : ndarray of shape (dim,)
        Eigenvalues :math:`\theta_i` of :math:`T = Q^TAQ` (ascending, float64).
    n_converged : int
        Ritz pairs deflated from the log-det estimate (residual
        :math:`\le \sqrt{\epsilon}\max|\theta|`).
    breakdown : bool
        The Krylov space became invariant: data fit and log-det are then exact.
    n_matvecs : int
        Products with ``A``: the block Lanczos products, the 2 symmetry probes and
        the residual block (``1 + n_probes`` more; ``dim`` more if the recurrence
        deflated a direction, see Notes).
    dtype : numpy.dtype
        Result dtype (float32 for float32 ``A`` and ``y``, float64 otherwise).

    Raises
    ------
    TypeError
        Complex or non-numeric input, non-integer ``k``/``n_probes``.
    ValueError
        Non-square, non-symmetric or indefinite ``A``; ``y`` of the wrong length, zero
        or non-finite; ``k * (1 + n_probes) > N``; unknown ``probes``; invalid
        ``spectrum_lower``.

    Notes
    -----
    **Shift invariance.** :math:`\mathcal K_k(\lambda I + A, B) = \mathcal K_k(A, B)` and
    :math:`Q^T(\lambda I + A)Q = \lambda I + T`. With one eigendecomposition
    :math:`T = S\Theta S^T` (:math:`O(J^3)`) every shift is a weighted sum over the
    nodes :math:`\theta_i`.

    **Data fit** (block Gauss rule). With :math:`c = Q^Ty` (``y`` lies in
    :math:`\mathcal V`) and :math:`z = S^Tc`,

    .. math::

       G(\lambda) = c^T(\lambda I + T)^{-1}c = \sum_i \frac{z_i^2}{\lambda + \theta_i}
       \le y^T(\lambda I + A)^{-1}y,

    the Galerkin (CG-type) value, a lower bound because
    :math:`y^TM^{-1}y = \max_x 2x^Ty - x^TMx` and :math:`G` is the maximum over
    :math:`x \in \mathcal V`; its error is :math:`\|x - x_{\mathcal V}\|_M^2`
    [1]_. The probe directions make :math:`\mathcal V` contain a good approximation of
    the dominant eigenspace of :math:`A` after a few steps, so the error behaves as
    for CG *deflated* by those eigenvectors, with the effective condition number
    :math:`(\lambda + \mu_{r+1})/(\lambda + \mu_{\min})` instead of
    :math:`(\lambda + \mu_1)/(\lambda + \mu_{\min})`: the "implicit preconditioning"
    of [1]_ and of Chen, Huber, Lin and Zaid [2]_.

    **Upper bound** (block Gauss-Radau rule). Let :math:`G = Q_+B` be the residual
    block of the last ``q`` basis vectors (:math:`AQ = QT + Q_+BE^T`, ``q`` extra
    products) and :math:`\tilde T` the extension of :math:`T` by one block with ``q``
    eigenvalues equal to :math:`a` = ``spectrum_lower``,
    :math:`\tilde T_{22} = aI + BE^T(T - aI)^{+}EB^T`. Then

    .. math::

       y^T(\lambda I + A)^{-1}y \le R(\lambda) = \tilde c^T(\lambda I + \tilde T)^{-1}
       \tilde c, \qquad \tilde c = [c; 0].

    Proof: in the basis :math:`[Q, Q_\perp]` the exact value is
    :math:`c^T(\lambda I + T - C^TM_{22}^{-1}C)^{-1}c` with :math:`C = Q_\perp^TAQ =
    Q_\perp^TQ_+BE^T`; :math:`A - aI \succeq 0` gives, by the Schur complement,
    :math:`M_{22} \succeq (\lambda + a)I + CT_a^{+}C^T`, hence
    :math:`C^TM_{22}^{-1}C \preceq EB^T(\lambda I + \tilde T_{22})^{-1}BE^T`, and the
    right-hand side is the Schur complement of :math:`\lambda I + \tilde T`. The
    argument only needs :math:`C = Q_\perp^T G` for the residual :math:`G` of the
    columns that couple to :math:`Q_\perp`: the last block, or - when
    :func:`~rnla.krylov.block_lanczos` deflated directions below its
    :math:`\sqrt\epsilon\,\|A\|` tolerance (``dim < k(1+s)``) - every column, at
    ``dim`` extra products, so that the bracket stays valid to rounding. With
    ``q = 1`` this is the classical Gauss-Radau rule (Golub and Meurant [3]_, §6.2),
    whose node at :math:`a = 0` also captures the null space of a low-rank ``A``.

    **Log-determinant** (deflated block SLQ). Write
    :math:`\log\det(\lambda I + A) = N\log\lambda + \operatorname{tr} g(A)` with
    :math:`g(x) = \log(1 + x/\lambda)` (the first term is exact). Converged Ritz
    pairs (:math:`U = QS_c`) are counted exactly, the rest by Hutchinson's estimator
    on the deflated probes :math:`P_\perp\omega_j = (I - UU^T)\omega_j \in \mathcal V`,
    each quadratic form evaluated by the block quadrature rules of :math:`\mathcal V`:

    .. math::

       \widehat{L}(\lambda) = N\log\lambda + \sum_{i \in c} g(\theta_i) + \frac1s
       \sum_{j=1}^{s} \omega_j^TP_\perp\, Q\,g(\cdot)\,Q^TP_\perp\omega_j .

    Since :math:`\log(\lambda + x) = \int_0^\infty (1+t)^{-1} - (t + \lambda + x)^{-1}
    dt`, the resolvent bounds integrate to per-probe bounds: the Gauss value is an
    upper and the Radau value a lower bound of :math:`\omega^T P_\perp g(A) P_\perp
    \omega`. The default estimate uses the Radau rule (its node at ``a`` absorbs the
    null space of low-rank ``A``, where plain SLQ overestimates grossly); the probe
    spread gives the standard error (Hutchinson variance, Ubaru, Chen and Saad [4]_).
    Deterministically, Cauchy interlacing (:math:`\theta_i \le \mu_i`) gives
    :math:`N\log\lambda + \sum_i g(\theta_i) \le \log\det(\lambda I + A)`.

    **Likelihood.** For :math:`y \sim \mathcal N(0, c(\lambda I + A))`,
    :math:`-2\log p(y) = N\log 2\pi + N\log c + \log\det(\lambda I + A) +
    y^T(\lambda I + A)^{-1}y/c`; with :math:`\hat c = y^T(\lambda I + A)^{-1}y/N`
    it equals :meth:`neg_log_likelihood` :math:`+ N(1 + \log 2\pi - \log N)`.
    For the FIR model :math:`A = \Phi K\Phi^T` and :math:`\lambda = \sigma^2/c`.

    **Cost.** :math:`k(1+s) + (1+s) + 2` products with ``A`` (fewer block products
    and ``dim`` residual products after deflation),
    :math:`O(NJ^2)` flops of reorthogonalisation, :math:`O(J^3)` for the two small
    eigendecompositions, then :math:`O(J(1+s))` per shift.

    References
    ----------
    .. [1] F. Matti, M. S. Andersen, T. Chen and D. Kressner, "Kernel-based linear
       system identification using augmented Krylov subspaces", arXiv:2605.08362, 2026.
    .. [2] T. Chen, C. Huber, E. Lin and H. Zaid, "Preconditioning without a
       preconditioner: faster ridge-regression and Gaussian sampling with randomized
       block Krylov subspace methods", arXiv:2501.18717, 2025.
    .. [3] G. H. Golub and G. Meurant, *Matrices, Moments and Quadrature with
       Applications*, Princeton University Press, 2010.
    .. [4] S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic
       Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38(4), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import AugmentedKrylov
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 10))
    >>> A = X @ X.T
    >>> y = rng.standard_normal(200)
    >>> ak = AugmentedKrylov(A, y, k=3, n_probes=4, rng=0)
    >>> lam = np.geomspace(1e-2, 1e2, 5)
    >>> ak.datafit(lam).shape, ak.logdet(lam).shape, ak.bounds(lam).datafit_upper.shape
    ((5,), (5,), (5,))
    """

    def __init__(
        self,
        A,
        y,
        /,
        *,
        k=None,
        n_probes=None,
        probes="rademacher",
        spectrum_lower=0.0,
        rng=None,
    ):
        op = _wrap(A, square=True)
        n = op.shape[0]
        y = as_float_array(y, name="y", ndim=1)
        if y.shape[0] != n:
            raise ValueError(
                f"y must have {n} entries to match A of shape {op.shape}, got shape {y.shape}"
            )
        ynorm = float(np.linalg.norm(y.astype(np.float64)))
        if ynorm == 0.0:
            raise ValueError("y must be nonzero (the data fit of y = 0 is 0)")
        if n_probes is None:
            # Clamped to the size: N = 1 leaves no room for a probe next to y, and the
            # space spanned by y is then all of R^1 (the log-det is exact, no probe).
            s = min(_DEFAULT_N_PROBES, n - 1)
        else:
            s = check_int(n_probes, "n_probes", minimum=1, maximum=max(n - 1, 1))
        p = 1 + s
        if k is None:
            k = max(1, min(_DEFAULT_K, n // p))
        k = check_int(k, "k", minimum=1)
        if k * p > n:
            raise ValueError(
                f"k * (1 + n_probes) = {k} * {p} = {k * p} must be <= n={n} "
                "(the Krylov space cannot exceed the dimension of A)"
            )
        kind = check_option(probes, _PROBES, "probes")
        a = _check_spectrum_lower(spectrum_lower)
        rng = check_rng(rng)
        dtype = result_dtype(op.dtype, y.dtype)

        omega = _draw_probes(n, s, kind, rng, dtype)
        # y scaled to the probes' norm sqrt(N) so that rank decisions treat columns alike.
        y_scaled = (y.astype(np.float64) * (math.sqrt(n) / ynorm)).astype(dtype)
        res = block_lanczos(op, np.column_stack([y_scaled, omega]), k, rng=rng)
        J = res.Q.shape[1]
        # Deflation inside the recurrence (J < k p) drops residual directions of earlier
        # blocks: the bounds then need the residual of every basis vector.
        rules = _rules(op, res.Q, res.T, p, a, dtype, all_columns=J < k * p)

        # Coordinates of y and of the probes in the basis Q: V = Q[:, :r0] @ R0.
        R0 = np.zeros((J, p))
        R0[: res.R0.shape[0]] = res.R0
        c = R0[:, 0] * (ynorm / math.sqrt(n))
        P = R0[:, 1:]
        scale = max(float(np.max(np.abs(rules.theta))), np.finfo(np.float64).tiny)
        conv = rules.resid <= _CONV_TOL * scale
        Sc = rules.S[:, conv]
        Pd = P - Sc @ (Sc.T @ P)  # deflated probes P_perp omega_j in Q coordinates

        self.n = n
        self.dim = J
        self.k = k
        self.n_probes = s
        self.probes = kind
        self.spectrum_lower = a
        self.breakdown = bool(res.breakdown)
        self.n_matvecs = int(res.n_matvecs + rules.n_matvecs)
        self.dtype = dtype
        self.ritz_values = rules.theta.copy()
        self._t_quantile = (
            float(scipy.stats.t.ppf(0.5 + _CONFIDENCE / 2, s - 1)) if s > 1 else np.inf
        )
        if s == 0:
            self._t_quantile = 0.0  # no probe: the log-det is exact (N = 1)
        self.n_converged = int(np.count_nonzero(conv))
        self._rules = rules
        self._Q = res.Q
        self._z = rules.S.T @ c
        self._w_gauss = self._z**2
        self._w_radau = (rules.S_r.T @ c) ** 2
        self._theta_conv = rules.theta[conv]
        self._W_gauss = (rules.S.T @ Pd) ** 2
        self._W_radau = (rules.S_r.T @ Pd) ** 2

    def __repr__(self) -> str:
        return (
            f"AugmentedKrylov(n={self.n}, k={self.k}, n_probes={self.n_probes}, "
            f"dim={self.dim}, n_converged={self.n_converged}, n_matvecs={self.n_matvecs})"
        )

    # ----------------------------------------------------------------- evaluations
    def _datafit(self, lam: np.ndarray, rule: str) -> np.ndarray:
        r = self._rules
        if rule == "gauss":
            return _resolvent(r.theta, self._w_gauss[:, None], lam)[:, 0]
        return _resolvent(r.theta_r, self._w_radau[:, None], lam)[:, 0]

    def _logdet_probes(self, lam: np.ndarray, rule: str) -> np.ndarray:
        """Per-probe log-det estimates, shape (m, n_probes)."""
        r = self._rules
        base = self.n * np.log(lam) + np.log1p(self._theta_conv[None, :] / lam[:, None]).sum(1)
        if self.n_probes == 0:
            # Only at N = 1 (default n_probes): the space is R^1, its Ritz pair is exact.
            return base[:, None]
        if rule == "gauss":
            rest = _log1p_rule(r.theta, self._W_gauss, lam)
        else:
            rest = _log1p_rule(r.theta_r, self._W_radau, lam)
        return base[:, None] + rest

    @staticmethod
    def _mean_stderr(L: np.ndarray, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        s = L.shape[1]
        mean = L.mean(axis=1)
        if exact:
            return mean, np.zeros(mean.shape)  # no probe part (N = 1)
        if s < 2:
            return mean, np.full(mean.shape, np.inf)
        return mean, L.std(axis=1, ddof=1) / math.sqrt(s)

    def datafit(self, lam, /, *, rule="gauss"):
        r"""Quadrature estimate of :math:`y^T(\lambda I + A)^{-1}y`.

        Parameters
        ----------
        lam : float or array_like of shape (m,)
            Shifts :math:`\lambda > 0`.
        rule : {"gauss", "radau"}, default="gauss"
            ``"gauss"``: the Galerkin value, a guaranteed lower bound; ``"radau"``:
            the block Gauss-Radau value, a guaranteed upper bound (usually the more
            accurate one when ``A`` has a large (near) null space).

        Returns
        -------
        ndarray
            Shape of ``lam``, dtype :attr:`dtype`.

        Raises
        ------
        TypeError
            Non-numeric or complex ``lam``.
        ValueError
            ``lam`` not > 0, not finite or more than 1-D; unknown ``rule``.

        Notes
        -----
        :math:`\sum_i w_i/(\lambda + \theta_i)`: :math:`O(J)` flops per shift. See the
        class Notes for the derivation and the bounds.
        """
        lam, shape = _check_lam(lam)
        rule = check_option(rule, _RULES, "rule")
        return _shape_out(self._datafit(lam, rule), shape, self.dtype)

    def logdet(self, lam, /, *, rule="radau"):
        r"""Deflated block-SLQ estimate of :math:`\log\det(\lambda I + A)`.

        Parameters
        ----------
        lam : float or array_like of shape (m,)
            Shifts :math:`\lambda > 0`.
        rule : {"radau", "gauss"}, default="radau"
            Quadrature rule of the probe quadratic forms: ``"radau"`` (per-probe lower
            bounds, node at ``spectrum_lower``) or ``"gauss"`` (per-probe upper
            bounds: plain block SLQ on the deflated probes).

        Returns
        -------
        ndarray
            Probe mean, shape of ``lam``, dtype :attr:`dtype`.

        Raises
        ------
        TypeError
            Non-numeric or complex ``lam``.
        ValueError
            ``lam`` not > 0, not finite or more than 1-D; unknown ``rule``.

        Notes
        -----
        Exact part :math:`N\log\lambda + \sum_{\text{converged}} \log(1 + \theta_i/
        \lambda)` plus the probe mean of the deflated quadratic forms (class Notes):
        :math:`O(Js)` flops per shift. The standard error is in :meth:`bounds`.
        """
        lam, shape = _check_lam(lam)
        rule = check_option(rule, _RULES, "rule")
        mean, _ = self._mean_stderr(self._logdet_probes(lam, rule), self.n_probes == 0)
        return _shape_out(mean, shape, self.dtype)

    def neg_log_likelihood(self, lam, /, *, rule="radau"):
        r"""Profiled negative log marginal likelihood :math:`N\log(d) + \log\det`.

        Parameters
        ----------
        lam : float or array_like of shape (m,)
            Shifts :math:`\lambda > 0`.
        rule : {"radau", "gauss"}, default="radau"
            Rule used for **both** terms (see :meth:`datafit` and :meth:`logdet`).

        Returns
        -------
        ndarray
            :math:`N\log(y^T(\lambda I+A)^{-1}y) + \log\det(\lambda I + A)`, shape of
            ``lam``. Add :math:`N(1 + \log 2\pi - \log N)` for
            :math:`-2\log p(y \mid \lambda, \hat c)`.

        Raises
        ------
        TypeError
            Non-numeric or complex ``lam``.
        ValueError
            ``lam`` not > 0, not finite or more than 1-D; unknown ``rule``.
        """
        lam, shape = _check_lam(lam)
        rule = check_option(rule, _RULES, "rule")
        mean, _ = self._mean_stderr(self._logdet_probes(lam, rule), self.n_probes == 0)
        nll = self.n * np.log(self._datafit(lam, rule)) + mean
        return _shape_out(nll, shape, self.dtype)

    def bounds(self, lam, /) -> AugmentedBounds:
        r"""Two-sided bounds on the data fit, the log-det and the likelihood.

        Parameters
        ----------
        lam : float or array_like of shape (m,)
            Shifts :math:`\lambda > 0`.

        Returns
        -------
        AugmentedBounds
            Fields of the shape of ``lam`` (see :class:`AugmentedBounds` for which are
            guaranteed and which are probabilistic).

        Raises
        ------
        TypeError
            Non-numeric or complex ``lam``.
        ValueError
            ``lam`` not > 0, not finite or more than 1-D.

        Notes
        -----
        Data fit: Gauss :math:`\le y^T(\lambda I+A)^{-1}y \le` Gauss-Radau, for every
        draw (class Notes). Log-det: interlacing lower bound (guaranteed); probe mean
        of the per-probe Gauss upper bounds plus :math:`t_{0.995, s-1}` standard errors
        (probabilistic: a nominal 99% Student-t interval; the tests check a miss rate
        below 5% over three shifts jointly).
        """
        lam, shape = _check_lam(lam)
        lo = self._datafit(lam, "gauss")
        hi = self._datafit(lam, "radau")
        r = self._rules
        interlacing = self.n * np.log(lam) + np.log1p(r.theta[None, :] / lam[:, None]).sum(1)
        mean_r, se_r = self._mean_stderr(self._logdet_probes(lam, "radau"), self.n_probes == 0)
        mean_g, se_g = self._mean_stderr(self._logdet_probes(lam, "gauss"), self.n_probes == 0)
        t = self._t_quantile
        with np.errstate(invalid="ignore"):
            ld_lo = np.maximum(interlacing, mean_r - t * se_r)
        ld_hi = mean_g + t * se_g
        fields = (
            lo,
            hi,
            ld_lo,
            ld_hi,
            se_r,
            self.n * np.log(lo) + ld_lo,
            self.n * np.log(hi) + ld_hi,
        )
        return AugmentedBounds(*(_shape_out(f, shape, self.dtype) for f in fields))

    def solve(self, lam, /):
        r"""Galerkin solution :math:`x_{\mathcal V} \approx (\lambda I + A)^{-1}y`.

        Parameters
        ----------
        lam : float
            One shift :math:`\lambda > 0`.

        Returns
        -------
        ndarray of shape (N,)
            :math:`QS(\lambda I + \Theta)^{-1}S^TQ^Ty`; :math:`y^Tx_{\mathcal V}` equals
            :meth:`datafit` with ``rule="gauss"``.

        Raises
        ------
        TypeError
            Non-numeric or complex ``lam``.
        ValueError
            ``lam`` not a single finite positive number.
        """
        flat, shape = _check_lam(lam)
        if shape != ():
            raise ValueError(f"solve takes one shift, got lam of shape {shape}")
        r = self._rules
        coef = r.S @ (self._z / (flat[0] + r.theta))
        return (np.asarray(self._Q, dtype=np.float64) @ coef).astype(self.dtype)


# ---------------------------------------------------------------------------------------
# Baselines with single-vector Lanczos
# ---------------------------------------------------------------------------------------


def _tridiag(res) -> np.ndarray:
    alpha = np.asarray(res.alpha, dtype=np.float64)
    beta = np.asarray(res.beta, dtype=np.float64)
    return np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)


def lanczos_datafit(A, y, lam, /, *, k=None, rule="gauss", spectrum_lower=0.0, rng=None):
    r"""Plain Lanczos on :math:`y` for :math:`y^T(\lambda I + A)^{-1}y` over many shifts.

    The baseline for :meth:`AugmentedKrylov.datafit`: the same Gauss and Gauss-Radau
    rules, from the single-vector Krylov space :math:`\mathcal K_k(A, y)`.

    Parameters
    ----------
    A : array_like, sparse matrix or LinearOperator of shape (N, N)
        Symmetric PSD operator.
    y : array_like of shape (N,)
        Nonzero vector.
    lam : float or array_like of shape (m,)
        Shifts :math:`\lambda > 0`.
    k : int, optional
        Lanczos steps, ``1 <= k <= N``; default ``min(20, N)`` (as
        :func:`rnla.trace.logdet`).
    rule : {"gauss", "radau"}, default="gauss"
        Rule reported in ``value``.
    spectrum_lower : float, default=0.0
        Radau node :math:`a \le \lambda_{\min}(A)`.
    rng : None, int or Generator, optional
        Randomness of the symmetry check.

    Returns
    -------
    QuadratureEstimate
        ``value``, ``lower`` (Gauss), ``upper`` (Radau), each of the shape of ``lam``;
        ``n_matvecs`` = ``k + 3`` (2 symmetry probes, 1 residual product).

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        As :class:`AugmentedKrylov` (bad shapes, ``k`` out of range, ``lam <= 0``).

    Notes
    -----
    Golub-Meurant quadrature [1]_ on :math:`T_k` from :func:`rnla.krylov.lanczos`:
    :math:`O(k)` flops per shift after one :math:`O(k^3)` eigendecomposition. At an
    equal number of *products* this single-vector space often beats the augmented one
    on the data fit alone; the augmented space wins per block step and gives the
    log-determinant from the same products.

    References
    ----------
    .. [1] G. H. Golub and G. Meurant, *Matrices, Moments and Quadrature with
       Applications*, Princeton University Press, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import lanczos_datafit
    >>> A = np.diag(np.linspace(0.0, 1.0, 50))
    >>> est = lanczos_datafit(A, np.ones(50), [0.1, 1.0], k=5, rng=0)
    >>> est.value.shape, est.lower.shape, est.upper.shape
    ((2,), (2,), (2,))
    """
    op = _wrap(A, square=True)
    n = op.shape[0]
    y = as_float_array(y, name="y", ndim=1)
    if y.shape[0] != n:
        raise ValueError(f"y must have {n} entries to match A of shape {op.shape}, got {y.shape}")
    lam, shape = _check_lam(lam)
    k = min(_DEFAULT_K, n) if k is None else check_int(k, "k", minimum=1, maximum=n)
    rule = check_option(rule, _RULES, "rule")
    a = _check_spectrum_lower(spectrum_lower)
    dtype = result_dtype(op.dtype, y.dtype)
    res = lanczos(op, y.astype(dtype), k, rng=rng)
    rules = _rules(op, res.Q, _tridiag(res), 1, a, dtype)
    J = res.Q.shape[1]
    c = np.zeros(J)
    c[0] = res.beta0
    gauss = _resolvent(rules.theta, ((rules.S.T @ c) ** 2)[:, None], lam)[:, 0]
    radau = _resolvent(rules.theta_r, ((rules.S_r.T @ c) ** 2)[:, None], lam)[:, 0]
    value = gauss if rule == "gauss" else radau
    return QuadratureEstimate(
        _shape_out(value, shape, dtype),
        _shape_out(gauss, shape, dtype),
        _shape_out(radau, shape, dtype),
        int(res.n_matvecs + rules.n_matvecs),
    )


def slq_logdet(
    A,
    lam,
    /,
    *,
    k=None,
    n_probes=_DEFAULT_N_PROBES,
    probes="rademacher",
    rule="gauss",
    spectrum_lower=0.0,
    rng=None,
):
    r"""Stochastic Lanczos quadrature for :math:`\log\det(\lambda I + A)` over many shifts.

    The baseline for :meth:`AugmentedKrylov.logdet`: ``n_probes`` independent Lanczos
    runs of ``k`` steps, each quadratic form by a Gauss (standard SLQ) or Gauss-Radau
    rule, evaluated for every shift from one decomposition per probe.

    Parameters
    ----------
    A : array_like, sparse matrix or LinearOperator of shape (N, N)
        Symmetric PSD operator.
    lam : float or array_like of shape (m,)
        Shifts :math:`\lambda > 0`.
    k : int, optional
        Lanczos steps per probe, ``1 <= k <= N``; default ``min(20, N)`` (as
        :func:`rnla.trace.logdet`).
    n_probes : int, default=10
        Number of probes :math:`s \ge 1` (as :func:`rnla.trace.logdet`).
    probes : {"rademacher", "gaussian"}, default="rademacher"
        Probe distribution.
    rule : {"gauss", "radau"}, default="gauss"
        Quadrature rule: ``"gauss"`` is standard SLQ [1]_.
    spectrum_lower : float, default=0.0
        Radau node :math:`a \le \lambda_{\min}(A)`.
    rng : None, int or Generator, optional
        Randomness of the probes and the symmetry checks.

    Returns
    -------
    TraceEstimate
        ``value`` and ``stderr`` (``inf`` with one probe) of the shape of ``lam``; ``n_matvecs`` =
        ``n_probes * (k + 3)``.

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Bad shapes, ``k`` or ``n_probes`` out of range, ``lam <= 0``, unknown options.

    Notes
    -----
    :math:`N\log\lambda + \frac1s\sum_j \|\omega_j\|^2 e_1^Tg(T^{(j)})e_1`,
    :math:`g(x) = \log(1 + x/\lambda)`. Unbiased up to the quadrature error; the
    Hutchinson variance with Rademacher probes is
    :math:`2(\|g(A)\|_F^2 - \sum_i g(A)_{ii}^2)/s`. Cost: ``n_probes * (k + 3)``
    products, :math:`O(sNk^2)` flops of reorthogonalisation, :math:`O(sk)` per shift.

    References
    ----------
    .. [1] S. Ubaru, J. Chen and Y. Saad, "Fast estimation of tr(f(A)) via stochastic
       Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38(4), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import slq_logdet
    >>> A = np.diag(np.linspace(0.0, 1.0, 50))
    >>> est = slq_logdet(A, [0.1, 1.0], k=5, n_probes=3, rng=0)
    >>> est.value.shape, est.stderr.shape
    ((2,), (2,))
    """
    op = _wrap(A, square=True)
    n = op.shape[0]
    lam, shape = _check_lam(lam)
    k = min(_DEFAULT_K, n) if k is None else check_int(k, "k", minimum=1, maximum=n)
    s = check_int(n_probes, "n_probes", minimum=1)
    kind = check_option(probes, _PROBES, "probes")
    rule = check_option(rule, _RULES, "rule")
    a = _check_spectrum_lower(spectrum_lower)
    rng = check_rng(rng)
    dtype = op.dtype
    omega = _draw_probes(n, s, kind, rng, dtype)
    L = np.empty((lam.size, s))
    n_matvecs = 0
    for j in range(s):
        res = lanczos(op, omega[:, j], k, rng=rng)
        rules = _rules(op, res.Q, _tridiag(res), 1, a, dtype)
        n_matvecs += res.n_matvecs + rules.n_matvecs
        c = np.zeros(res.Q.shape[1])
        c[0] = res.beta0
        if rule == "gauss":
            L[:, j] = _log1p_rule(rules.theta, (rules.S.T @ c) ** 2, lam)
        else:
            L[:, j] = _log1p_rule(rules.theta_r, (rules.S_r.T @ c) ** 2, lam)
    L += n * np.log(lam)[:, None]
    mean, se = AugmentedKrylov._mean_stderr(L)
    return TraceEstimate(_shape_out(mean, shape, dtype), _shape_out(se, shape, dtype), n_matvecs)


# ---------------------------------------------------------------------------------------
# Exact references
# ---------------------------------------------------------------------------------------

_EXACT = ("cholesky", "eigh")


def _dense_symmetric(A, name="A") -> np.ndarray:
    M = np.asarray(_wrap(A, name=name, square=True).dense(), dtype=np.float64)
    gap = float(np.max(np.abs(M - M.T))) if M.size else 0.0
    if gap > 100 * math.sqrt(M.shape[0]) * np.finfo(np.float64).eps * max(
        float(np.max(np.abs(M))), 1e-300
    ) and gap > 1e-6 * float(np.max(np.abs(M))):
        raise ValueError(f"{name} must be symmetric, max |A - A^T| = {gap:.3g}")
    return (M + M.T) / 2


def exact_likelihood(A, y, lam, /, *, method="cholesky") -> LikelihoodValues:
    r"""Exact data fit, log-determinant and profiled likelihood, dense, per shift.

    Parameters
    ----------
    A : array_like, sparse matrix or LinearOperator of shape (N, N)
        Symmetric PSD matrix (operators and sparse matrices are densified with
        :math:`N` products).
    y : array_like of shape (N,)
        Data vector.
    lam : float or array_like of shape (m,)
        Shifts :math:`\lambda > 0`.
    method : {"cholesky", "eigh"}, default="cholesky"
        ``"cholesky"``: one Cholesky factorisation of :math:`\lambda I + A` per shift,
        :math:`N^3/3` flops each; ``"eigh"``: one eigendecomposition of ``A``
        (:math:`\approx 9N^3` flops), then :math:`O(N)` per shift.

    Returns
    -------
    LikelihoodValues
        ``datafit``, ``logdet``, ``neg_log_likelihood``, each float64 of the shape of
        ``lam``.

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Non-square or non-symmetric ``A``, ``y`` of the wrong length, ``lam <= 0``,
        or ``A`` not positive semidefinite (an eigenvalue below
        :math:`-100\,N u\,\|A\|_2`).

    Notes
    -----
    Cholesky :math:`\lambda I + A = LL^T`: data fit :math:`\|L^{-1}y\|^2`, log-det
    :math:`2\sum\log L_{ii}`. The eigendecomposition path uses
    :math:`\sum_i (u_i^Ty)^2/(\lambda+\mu_i)` and :math:`\sum_i\log(\lambda + \mu_i)`
    with :math:`\mu_i` clipped at 0. When the Cholesky factorisation of a shift fails
    (``A`` PSD only to rounding and a tiny :math:`\lambda`), that shift is evaluated by
    the eigendecomposition path.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import exact_likelihood
    >>> A = np.diag(np.linspace(0.0, 1.0, 20))
    >>> exact_likelihood(A, np.ones(20), [0.5, 1.0]).logdet.shape
    (2,)
    """
    M = _dense_symmetric(A)
    n = M.shape[0]
    y = as_float_array(y, name="y", ndim=1).astype(np.float64)
    if y.shape[0] != n:
        raise ValueError(f"y must have {n} entries to match A of shape {M.shape}, got {y.shape}")
    lam, shape = _check_lam(lam)
    method = check_option(method, _EXACT, "method")
    eig = None

    def eig_path():
        mu, U = np.linalg.eigh(M)
        # A PSD matrix has eigenvalues >= -O(n u ||A||) in floating point; below that, A
        # is not PSD (the rounding bound of a backward-stable eigensolver, with margin).
        floor = -100.0 * n * np.finfo(np.float64).eps * max(float(np.abs(mu).max()), 1e-300)
        if mu[0] < floor:
            raise ValueError(
                f"A must be positive semidefinite, its smallest eigenvalue is {mu[0]:.3g}"
            )
        return np.maximum(mu, 0.0), (U.T @ y) ** 2

    if method == "eigh":
        mu, w = eig_path()
        datafit = _resolvent(mu, w[:, None], lam)[:, 0]
        logdet = np.log(lam[:, None] + mu[None, :]).sum(axis=1)
    else:
        datafit = np.empty(lam.size)
        logdet = np.empty(lam.size)
        for i, lam_i in enumerate(lam):
            Mi = M.copy()
            Mi[np.diag_indices(n)] += lam_i
            try:
                L = sla.cholesky(Mi, lower=True, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:
                # lam I + A is indefinite in floating point: A is PSD only to rounding
                # (tiny lam) or not PSD at all (refused). Eigenvalues clipped at 0.
                eig = eig_path() if eig is None else eig
                mu, w = eig
                datafit[i] = _resolvent(mu, w[:, None], np.array([lam_i]))[0, 0]
                logdet[i] = np.log(lam_i + mu).sum()
                continue
            u = sla.solve_triangular(L, y, lower=True, check_finite=False)
            datafit[i] = u @ u
            logdet[i] = 2.0 * np.log(np.diag(L)).sum()
    nll = n * np.log(datafit) + logdet
    return LikelihoodValues(
        _shape_out(datafit, shape, np.float64),
        _shape_out(logdet, shape, np.float64),
        _shape_out(nll, shape, np.float64),
    )


# ---------------------------------------------------------------------------------------
# FIR system identification: regressor, kernels, fast operator, Chen-Ljung QR
# ---------------------------------------------------------------------------------------

_FIR_KERNELS = ("tc", "dc", "ss", "di")


def fir_regressor(u, n, /) -> np.ndarray:
    r"""Toeplitz regression matrix :math:`\Phi_{tk} = u(t - k)` of an FIR model.

    Parameters
    ----------
    u : array_like of shape (N,)
        Input signal; :math:`u(t) = 0` for :math:`t < 0` (zero initial conditions).
    n : int
        FIR order (number of impulse-response coefficients), ``1 <= n <= N``.

    Returns
    -------
    ndarray of shape (N, n)
        Lower-triangular Toeplitz :math:`\Phi` with :math:`y = \Phi g + e`.

    Raises
    ------
    TypeError
        Complex or non-numeric ``u``.
    ValueError
        ``u`` not 1-D or non-finite, ``n`` out of range.

    Examples
    --------
    >>> from rnla.augmented import fir_regressor
    >>> fir_regressor([1.0, 2.0, 3.0], 2)
    array([[1., 0.],
           [2., 1.],
           [3., 2.]])
    """
    u = as_float_array(u, name="u", ndim=1)
    n = check_int(n, "n", minimum=1, maximum=u.shape[0])
    first_row = np.zeros(n, dtype=u.dtype)
    first_row[0] = u[0]
    return sla.toeplitz(u, first_row)


def fir_kernel(n, /, *, kind="tc", alpha=0.9, rho=None, scale=1.0) -> np.ndarray:
    r"""Stable kernels for regularised FIR identification (TC, DC, SS, DI).

    Parameters
    ----------
    n : int
        FIR order; indices :math:`i, j = 1, \dots, n`.
    kind : {"tc", "dc", "ss", "di"}, default="tc"
        ``"tc"``: :math:`\alpha^{\max(i,j)}`; ``"dc"``:
        :math:`\alpha^{(i+j)/2}\rho^{|i-j|}`; ``"ss"`` (second-order stable spline):
        :math:`\alpha^{i+j+\max(i,j)}/2 - \alpha^{3\max(i,j)}/6`; ``"di"``:
        :math:`\alpha^i\delta_{ij}`.
    alpha : float, default=0.9
        Decay rate, ``0 < alpha < 1``.
    rho : float, optional
        Correlation of the DC kernel, ``-1 <= rho <= 1`` (required for ``"dc"``).
    scale : float, default=1.0
        Multiplier :math:`c > 0`.

    Returns
    -------
    ndarray of shape (n, n)
        Symmetric PSD kernel matrix (float64).

    Raises
    ------
    TypeError
        Non-numeric hyperparameters.
    ValueError
        Hyperparameters out of range, unknown ``kind``, ``rho`` missing for DC.

    Notes
    -----
    TC and DC as in Chen, Ohlsson and Ljung [1]_ (DC with :math:`\rho = \sqrt\alpha`
    is TC); SS is the second-order stable spline of Pillonetto and De Nicolao [2]_
    in its discrete form.

    References
    ----------
    .. [1] T. Chen, H. Ohlsson and L. Ljung, "On the estimation of transfer functions,
       regularizations and Gaussian processes - Revisited", Automatica 48(8), 2012.
    .. [2] G. Pillonetto and G. De Nicolao, "A new kernel-based approach for linear
       system identification", Automatica 46(1), 2010.

    Examples
    --------
    >>> from rnla.augmented import fir_kernel
    >>> fir_kernel(3, kind="tc", alpha=0.5)
    array([[0.5  , 0.25 , 0.125],
           [0.25 , 0.25 , 0.125],
           [0.125, 0.125, 0.125]])
    """
    n = check_int(n, "n", minimum=1)
    kind = check_option(kind, _FIR_KERNELS, "kind")
    for name, val in (("alpha", alpha), ("scale", scale)):
        if isinstance(val, bool) or not isinstance(val, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {val!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must satisfy 0 < alpha < 1")
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale={scale} must be finite and > 0")
    i = np.arange(1, n + 1, dtype=np.float64)
    imax = np.maximum.outer(i, i)
    if kind == "tc":
        K = alpha**imax
    elif kind == "dc":
        if rho is None:
            raise ValueError("kind='dc' needs rho (-1 <= rho <= 1)")
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
            raise TypeError(f"rho must be a real number, got {rho!r}")
        if not -1 <= rho <= 1:
            raise ValueError(f"rho={rho} must satisfy -1 <= rho <= 1")
        K = alpha ** (np.add.outer(i, i) / 2) * float(rho) ** np.abs(np.subtract.outer(i, i))
    elif kind == "ss":
        K = alpha ** (np.add.outer(i, i) + imax) / 2 - alpha ** (3 * imax) / 6
    else:
        K = np.diag(alpha**i)
    return scale * K


def fir_operator(u, K, /) -> LinearOperator:
    r"""Return the FIR Gram operator :math:`A = \Phi K\Phi^T` with FFT Toeplitz products.

    Parameters
    ----------
    u : array_like of shape (N,)
        Input signal (zero initial conditions, as :func:`fir_regressor`).
    K : array_like of shape (n, n)
        Symmetric PSD kernel matrix, ``n <= N``.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        Shape (N, N), float64, symmetric PSD; ``matmat`` handles blocks in one FFT.

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        ``u`` not 1-D, ``K`` not square or larger than ``N``, non-finite entries.

    Notes
    -----
    :math:`\Phi v` is the first :math:`N` samples of the convolution :math:`u * v` and
    :math:`\Phi^Tx` a correlation; both are computed with real FFTs of length
    :math:`L \ge N + n - 1`, so one product costs :math:`O(N\log N + n^2)` flops
    instead of :math:`2N^2` for a dense :math:`A`.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import fir_kernel, fir_operator, fir_regressor
    >>> u = np.random.default_rng(0).standard_normal(50)
    >>> K = fir_kernel(10, kind="tc", alpha=0.8)
    >>> A = fir_operator(u, K)
    >>> Phi = fir_regressor(u, 10)
    >>> bool(np.allclose(A @ np.ones(50), Phi @ K @ Phi.T @ np.ones(50)))
    True
    """
    u = as_float_array(u, name="u", ndim=1).astype(np.float64)
    K = as_float_array(K, name="K", ndim=2).astype(np.float64)
    N = u.shape[0]
    n = K.shape[0]
    if K.shape != (n, n) or n > N:
        raise ValueError(f"K must be square with n <= N={N}, got shape {K.shape}")
    L = scipy.fft.next_fast_len(N + n - 1, real=True)
    U = scipy.fft.rfft(u, L)
    Uc = np.conj(U)

    def matmat(X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            return matmat(X[:, None])[:, 0]
        # Phi^T X: correlation of each column with u (taps 0..n-1)
        PtX = scipy.fft.irfft(Uc[:, None] * scipy.fft.rfft(X, L, axis=0), L, axis=0)[:n]
        V = K @ PtX
        return scipy.fft.irfft(U[:, None] * scipy.fft.rfft(V, L, axis=0), L, axis=0)[:N]

    return LinearOperator(
        (N, N),
        matvec=lambda x: matmat(np.reshape(x, (-1, 1)))[:, 0],
        matmat=matmat,
        rmatvec=lambda x: matmat(np.reshape(x, (-1, 1)))[:, 0],
        dtype=np.float64,
    )


def fir_likelihood_qr(Phi, K, y, lam, /) -> LikelihoodValues:
    r"""Exact FIR likelihood terms by the QR method of Chen and Ljung.

    Parameters
    ----------
    Phi : array_like of shape (N, n)
        Regression matrix, ``n <= N`` (e.g. :func:`fir_regressor`).
    K : array_like of shape (n, n)
        Symmetric PSD kernel matrix.
    y : array_like of shape (N,)
        Output data.
    lam : float or array_like of shape (m,)
        Shifts :math:`\lambda = \sigma^2/c > 0`.

    Returns
    -------
    LikelihoodValues
        Exact :math:`y^T(\lambda I + \Phi K\Phi^T)^{-1}y`, the log-determinant and the
        profiled likelihood (float64, shape of ``lam``).

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Inconsistent shapes, ``n > N``, ``lam <= 0``.

    Notes
    -----
    One QR of :math:`[\Phi, y] = Q[[R_1, r], [0, \rho]]` (:math:`O(Nn^2)`), a square
    root :math:`K = LL^T` (symmetric, so singular kernels are allowed), :math:`W =
    R_1L`; per shift the QR of :math:`[[W, r], [\sqrt\lambda I, 0]]` has the last
    diagonal entry :math:`\tilde\rho` and leading block :math:`\tilde R` with

    .. math::

       y^T(\lambda I + A)^{-1}y = (\rho^2 + \tilde\rho^2)/\lambda, \qquad
       \log\det(\lambda I + A) = (N - n)\log\lambda + 2\sum_i\log|\tilde R_{ii}|,

    at :math:`O(n^3)` per shift and without cancellation (Chen and Ljung [1]_,
    Algorithm 2).

    References
    ----------
    .. [1] T. Chen and L. Ljung, "Implementation of algorithms for tuning parameters
       in regularized least squares problems in system identification", Automatica
       49(7), 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.augmented import fir_kernel, fir_likelihood_qr, fir_regressor
    >>> u = np.random.default_rng(0).standard_normal(40)
    >>> Phi = fir_regressor(u, 5)
    >>> fir_likelihood_qr(Phi, fir_kernel(5), u, [0.1, 1.0]).datafit.shape
    (2,)
    """
    Phi = as_float_array(Phi, name="Phi", ndim=2).astype(np.float64)
    K = as_float_array(K, name="K", ndim=2).astype(np.float64)
    y = as_float_array(y, name="y", ndim=1).astype(np.float64)
    N, n = Phi.shape
    if K.shape != (n, n):
        raise ValueError(f"K must have shape ({n}, {n}) to match Phi, got {K.shape}")
    if y.shape != (N,):
        raise ValueError(f"y must have shape ({N},) to match Phi, got {y.shape}")
    if n > N:
        raise ValueError(f"Phi must have n <= N columns, got shape {Phi.shape}")
    lam, shape = _check_lam(lam)
    R = sla.qr(np.column_stack([Phi, y]), mode="r")[0]
    R1, r, rho = R[:n, :n], R[:n, n], abs(R[n, n]) if R.shape[0] > n else 0.0
    d, V = np.linalg.eigh((K + K.T) / 2)
    Lk = V * np.sqrt(np.maximum(d, 0.0))
    W = R1 @ Lk
    datafit = np.empty(lam.size)
    logdet = np.empty(lam.size)
    top = np.column_stack([W, r])
    for i, lam_i in enumerate(lam):
        M = np.vstack([top, np.column_stack([math.sqrt(lam_i) * np.eye(n), np.zeros(n)])])
        Rt = sla.qr(M, mode="r", check_finite=False)[0]
        rho_t = Rt[n, n]
        datafit[i] = (rho**2 + rho_t**2) / lam_i
        logdet[i] = (N - n) * math.log(lam_i) + 2.0 * np.log(np.abs(np.diag(Rt)[:n])).sum()
    nll = N * np.log(datafit) + logdet
    return LikelihoodValues(
        _shape_out(datafit, shape, np.float64),
        _shape_out(logdet, shape, np.float64),
        _shape_out(nll, shape, np.float64),
    )
