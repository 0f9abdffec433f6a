r"""Least squares and linear systems: sketch-and-solve, sketch-and-precondition, Nyström PCG.

Two solvers built on sketching:

* :func:`lstsq` - overdetermined least squares :math:`\min_x \|Ax - b\|_2` for a tall
  :math:`A` (``m >= n``) given as an ndarray, a ``scipy.sparse`` matrix or a
  :class:`~scipy.sparse.linalg.LinearOperator`. ``method="precondition"`` (default) is
  sketch-and-precondition in the manner of Blendenpik and LSRN: the SVD (or QR) of a
  sketch :math:`SA` gives a right preconditioner :math:`N` with
  :math:`\kappa(AN) \le (1+\varepsilon)/(1-\varepsilon)` when :math:`S` embeds
  :math:`\operatorname{range}(A)` with distortion :math:`\varepsilon`; LSQR (or LSMR)
  then converges in a number of iterations that depends on :math:`\varepsilon` and the
  tolerance only, not on :math:`\kappa(A)`. It starts from the sketch-and-solve
  solution. ``method="solve"`` returns that sketch-and-solve solution itself.
* :func:`nystrom_pcg` - :math:`(A + \mu I)x = b` for a PSD :math:`A` given as an
  ndarray, a ``LinearOperator`` or an :class:`~rnla.operators.EntryMatrix` such as
  :class:`~rnla.operators.KernelMatrix` (kernel ridge regression; never formed): CG
  preconditioned with a randomized Nyström (or RPCholesky) approximation whose rank is
  doubled until the preconditioned system is well conditioned.

Both return a result that reports the iterations, the residual, an a-posteriori
accuracy estimate and the tolerance actually reached. Bounds: :mod:`rnla.bounds`
(:func:`~rnla.bounds.preconditioned_condition_bound`,
:func:`~rnla.bounds.iteration_bound`,
:func:`~rnla.bounds.nystrom_pcg_condition_bound`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, lsmr, lsqr

from rnla import sketch as _sketch
from rnla._kernels.solve import normal_residual
from rnla._results import _with_passes
from rnla._validation import (
    AccuracyWarning,
    ConvergenceWarning,
    as_float_array,
    check_int,
    check_option,
    check_real,
    check_rng,
    float_dtype,
)
from rnla.operators import _Operator, _wrap
from rnla.psd import _nystrom_factor, rpcholesky
from rnla.qr import cholqr_sketch

__all__ = ["LstsqResult", "PCGResult", "lstsq", "nystrom_pcg"]


# ---------------------------------------------------------------------------------------
# Products with A: one place, so that a project-wide operator wrapper can replace it
# ---------------------------------------------------------------------------------------


def _product_operator(A, name: str = "A") -> _Operator:
    """Return the validated operator through which every product with ``A`` is taken.

    The project-wide wrapper: ndarray, scipy.sparse, LinearOperator, EntryMatrix or
    ``dask.array.Array`` (each product one pass over the chunks, see :mod:`rnla._dask`).
    """
    return _wrap(A, name=name)


def _apply_sketch(S, A, op: _Operator):
    r"""Return the dense sketch :math:`SA` (k, n).

    Dense and sparse ``A`` are sketched directly (``S @ A``, the sketch's own kernels);
    an operator through :math:`(A^T S^T)^T` in blocks of 64 sketch rows, so the extra
    memory is :math:`64 m`.
    """
    if isinstance(A, np.ndarray) and op.kind == "dense" and A.ndim == 2:
        return np.asarray(S._apply_dense(op.A))  # validated by the wrapper: no second scan
    if isinstance(A, np.ndarray) or sp.issparse(A):
        return np.asarray(S @ A)
    if op.is_dask:  # blockwise: each chunk draws its own columns of S
        return op.sketch_rows(S)
    k = S.shape[0]
    out = np.empty((k, op.shape[1]), dtype=np.result_type(op.dtype, np.float32))
    eye = np.eye(k)
    for start in range(0, k, 64):
        stop = min(k, start + 64)
        St_block = S.T @ eye[:, start:stop]  # (m, c): columns of S^T
        out[start:stop] = np.asarray(op.rmatmat(St_block.astype(out.dtype))).T
    return out


# ---------------------------------------------------------------------------------------
# Least squares
# ---------------------------------------------------------------------------------------


class _LstsqResultFields(NamedTuple):
    """Fields of :class:`LstsqResult`."""

    x: np.ndarray
    iterations: int | np.ndarray
    residual_norm: float | np.ndarray
    error_estimate: float | np.ndarray
    tol: float | np.ndarray
    rank: int
    sketch_size: int


class LstsqResult(_LstsqResultFields):
    r"""Result of :func:`lstsq`.

    Shapes follow ``b``: scalars for ``b`` of shape (m,), arrays of shape (k,) for ``b``
    of shape (m, k).

    Attributes
    ----------
    x : ndarray, shape (n,) or (n, k)
        The solution, dtype of the data (float32 or float64).
    iterations : int or ndarray of int
        LSQR/LSMR iterations (0 for ``method="solve"``).
    residual_norm : float or ndarray
        :math:`\|b - Ax\|_2`, recomputed from ``x`` (one product).
    error_estimate : float or ndarray
        A-posteriori estimate of the relative forward error
        :math:`\|x - x_\star\|_2 / \|x\|_2` against the exact minimum-norm solution
        :math:`x_\star` of the (truncated) problem: :math:`\|NN^T A^T r\|_2/\|x\|_2`
        with :math:`r = b - Ax`. Exact in exact arithmetic when :math:`S` embeds
        :math:`\operatorname{range}(A)` perfectly, within a factor
        :math:`[(1-\varepsilon)^2, (1+\varepsilon)^2]` for distortion
        :math:`\varepsilon` (see Notes of :func:`lstsq`); it cannot resolve errors below
        the rounding of :math:`r` (about :math:`\kappa(A)\,u`).
    tol : float or ndarray
        Tolerance reached: :math:`\|N^T A^T r\| / \|b\|`, the relative gradient
        :math:`\|(AN)^T r\|/\|b\|` of the preconditioned problem (for which
        :math:`\|AN\|_2 \approx 1`); zero exactly at the least-squares solution.
        Normalising by :math:`\|b\|` rather than :math:`\|r\|` keeps it meaningful
        for nearly consistent systems, where the rounding of :math:`r` (about
        :math:`u\|A\|\|x\|`) dominates :math:`\|r\|`.
    rank : int
        Numerical rank kept by the preconditioner (``n`` when full rank).
    sketch_size : int
        Rows of the sketch used.
    n_passes : int
        Attribute, not a field (unpacking is unchanged): passes over ``A`` (the sketch
        ``SA`` and every product with ``A`` or ``A^T``; each one graph over the chunks
        for a dask array; :math:`A^T(b - Ax)` counts once for a C-contiguous ndarray,
        which it reads once).
    """

    n_passes: int | None = None


_SKETCHES = {
    "srht": _sketch.srht,
    "sparse_sign": _sketch.sparse_sign,
    "countsketch": _sketch.countsketch,
    "gaussian": _sketch.gaussian,
}


class _Preconditioned(LinearOperator):
    r""":math:`M = AN` with :math:`N = V_r\Sigma_r^{-1}` (SVD) or :math:`R^{-1}` (QR).

    Products with ``A`` run in ``A``'s dtype (float32 data stay float32); the iterate
    vectors of LSQR are float64.
    """

    def __init__(self, op: LinearOperator, N: np.ndarray | None, R: np.ndarray | None):
        self._op = op
        self._N = N
        self._R = R
        r = N.shape[1] if N is not None else R.shape[0]
        self._work = np.dtype(op.dtype) if op.dtype is not None else np.dtype(np.float64)
        super().__init__(dtype=np.dtype(np.float64), shape=(op.shape[0], r))

    def right(self, y):
        """:math:`N y`."""
        if self._N is not None:
            return self._N @ y
        return sla.solve_triangular(self._R, y, lower=False, check_finite=False)

    def right_t(self, z):
        """:math:`N^T z`."""
        if self._N is not None:
            return self._N.T @ z
        return sla.solve_triangular(self._R, z, trans="T", lower=False, check_finite=False)

    def _matvec(self, y):
        v = self.right(np.ravel(y)).astype(self._work, copy=False)
        return np.asarray(self._op.matvec(v), dtype=np.float64).ravel()

    def _rmatvec(self, u):
        u = np.ravel(u).astype(self._work, copy=False)
        return self.right_t(np.asarray(self._op.rmatvec(u), dtype=np.float64).ravel())


def _fused(op) -> bool:
    """Whether :math:`A^T(B - AX)` can be taken in one pass (C-contiguous dense ``A``)."""
    A = op.A
    return (
        op.kind == "dense"
        and isinstance(A, np.ndarray)
        and A.flags.c_contiguous
        and A.dtype in (np.float32, np.float64)
    )


def _normal_residual(op, B, X, dtype):
    r"""Return :math:`A^T(B - AX)` (n, p) and :math:`\|B - AX\|` per column, float64.

    A C-contiguous dense ``A`` is read once (:func:`rnla._kernels.solve.normal_residual`,
    one pass); otherwise two products in ``A``'s dtype (two passes).
    """
    if _fused(op):
        op._passes.n += 1
        G, rr = normal_residual(op.A, B, X)
        return G, np.sqrt(rr)
    R = np.asarray(B, dtype=np.float64) - np.asarray(op.matmat(X.astype(dtype)), dtype=np.float64)
    G = np.asarray(op.rmatmat(R.astype(dtype)), dtype=np.float64)
    return G, np.linalg.norm(R, axis=0)


def _default_tol(dtype) -> float:
    return 1e-12 if dtype == np.float64 else 1e-5


def _check_tol(tol, dtype) -> float:
    if tol is None:
        return _default_tol(dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number in (0, 1), got {tol!r}")
    tol = float(tol)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol={tol} must lie in (0, 1)")
    floor = 10.0 * float(np.finfo(dtype).eps)
    if tol < floor:
        warnings.warn(
            f"tol={tol:.3g} is below the precision of {np.dtype(dtype).name} data "
            f"(10 eps = {floor:.3g}); the iteration stops at the precision floor",
            AccuracyWarning,
            stacklevel=3,
        )
        tol = floor
    return tol


def _default_sketch_size(m: int, n: int, kind: str) -> int:
    # k rows give distortion about sqrt(n/k) for Gaussian-like sketches and the
    # momentum iteration contracts by about sqrt(1.25 n/k) per step: 8n rows give 0.40,
    # i.e. about 30 iterations from the warm start to 1e-12, for an O(kn^2) SVD.
    k = 8 * n + 16 if kind in ("srht", "gaussian", "sparse_sign") else 2 * n * n + 16
    return int(min(m, k))


def lstsq(
    A,
    b,
    /,
    *,
    method="precondition",
    tol=None,
    sketch="auto",
    sketch_size=None,
    solver="momentum",
    preconditioner="svd",
    rcond=None,
    maxiter=None,
    rng=None,
) -> LstsqResult:
    r"""Overdetermined least squares :math:`\min_x \|Ax - b\|_2` by sketching.

    Parameters
    ----------
    A : ndarray, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Tall matrix, ``m >= n``. A ``LinearOperator`` is sketched through ``rmatmat``
        (:math:`(A^T S^T)^T`, in blocks of 64 sketch rows).
    b : array_like, shape (m,) or (m, k)
        Right-hand side(s); each column is solved with the same sketch and
        preconditioner.
    method : {"precondition", "solve"}, default="precondition"
        ``"precondition"``: sketch-and-precondition + LSQR/LSMR to ``tol``.
        ``"solve"``: sketch-and-solve, :math:`\hat x = \arg\min\|S(Ax - b)\|`
        (one pass over ``A``; see Notes for its residual guarantee).
    tol : float, optional
        Relative tolerance in ``(0, 1)``. ``"momentum"`` stops when the step
        :math:`\|NN^TA^Tr\|`, an estimate of the forward error (see ``error_estimate``),
        is below ``tol`` :math:`\|x\|`, or when it stagnates at the rounding floor
        (about :math:`\kappa(A)u`, :class:`~rnla.AccuracyWarning`).
        LSQR/LSMR on the preconditioned problem
        :math:`\min_y\|ANy - b\|` stop when :math:`\|(AN)^T r\|` or :math:`\|r\|`
        is small relative to :math:`\|b\|` (``atol = btol = tol / 10``, since their
        running estimate of :math:`\|AN\|` is a Frobenius norm growing like
        :math:`\sqrt{2j}`); the result reports :math:`\|(AN)^Tr\|/\|b\|`. Default ``1e-12``
        (float64 data) and ``1e-5`` (float32). Values below ``10 eps`` of the data
        dtype are raised to it with an :class:`~rnla.AccuracyWarning`.
    sketch : {"auto", "srht", "sparse_sign", "countsketch", "gaussian"} or SketchOperator
        The sketch :math:`S`. ``"auto"``: sparse sign with 4 nonzeros per column
        for dense ``A`` (one read of ``A``; faster than SRHT on row-major data at the
        same iteration counts), 8 for sparse ``A`` and operators (``"sparse_sign"``
        always uses 8). A prebuilt
        :class:`~rnla.sketch.SketchOperator` of shape ``(sketch_size, m)`` is used as
        is (``sketch_size`` and ``rng`` are then ignored for the sketch).
    sketch_size : int, optional
        Rows of :math:`S`, ``n <= sketch_size <= m``. Default
        :math:`\min(m, 8n + 16)` (``2n^2 + 16`` for CountSketch, whose embedding
        needs :math:`O(n^2)` rows).
    solver : {"momentum", "lsqr", "lsmr"}, default="momentum"
        ``"momentum"``: iterative sketching with heavy-ball momentum (Epperly [6]_),
        :math:`x_{i+1} = x_i + \alpha NN^TA^T(b - Ax_i) + \beta(x_i - x_{i-1})`,
        forward stable; it recomputes the true residual every step and works on all
        right-hand sides at once (one pass over ``A`` per product). ``"lsqr"`` /
        ``"lsmr"``: Krylov solver from :mod:`scipy.sparse.linalg` on
        :math:`\min_y\|ANy - b\|` (a few iterations fewer; less accurate ``x`` when
        :math:`\kappa(A)` is large, see Notes).
    preconditioner : {"svd", "qr"}, default="svd"
        ``"svd"`` (LSRN): :math:`SA = U\Sigma V^T`, :math:`N = V_r\Sigma_r^{-1}` keeping
        the singular values above ``rcond`` times the largest, which handles
        rank-deficient ``A`` (see Notes). ``"qr"`` (Blendenpik): :math:`SA = QR`,
        :math:`N = R^{-1}` applied by triangular solves; assumes full column rank.
    rcond : float, optional
        Relative cut-off of the ``"svd"`` preconditioner. Default ``n * eps`` of the
        data dtype.
    maxiter : int, optional
        Iteration limit per right-hand side. Default ``max(100, 2 * iterations
        predicted by`` :func:`rnla.bounds.iteration_bound` ``at distortion 1/2)``
        (100 at ``tol=1e-12``).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Randomness of the sketch.

    Returns
    -------
    LstsqResult
        ``x`` (n,) or (n, k) in the data dtype, ``iterations``, ``residual_norm``,
        ``error_estimate``, ``tol`` (reached), ``rank``, ``sketch_size``. For
        ``A = 0`` the minimum-norm solution ``x = 0``: rank 0, no iterations,
        ``residual_norm`` :math:`\|b\|`, ``tol`` and ``error_estimate`` 0.

    Raises
    ------
    TypeError
        Unsupported or complex input, non-integer sizes, a non-numeric ``tol``.
    ValueError
        ``A`` wide (``m < n``), empty or non-finite; ``b`` of the wrong length or
        non-finite; unknown option names; ``sketch_size`` outside ``[n, m]``; a sketch
        with :math:`SA = 0` for a nonzero ``A`` (a hash sketch can cancel a tiny ``A``).

    Warns
    -----
    ConvergenceWarning
        ``maxiter`` reached before ``tol`` (the sketch does not embed: enlarge
        ``sketch_size``).
    AccuracyWarning
        ``tol`` below the precision floor; ``preconditioner="qr"`` on a numerically
        rank-deficient sketch.

    Notes
    -----
    **Algorithm** (Rokhlin and Tygert [1]_, Avron, Maymounkov and Toledo [2]_ -
    Blendenpik, Meng, Saunders and Mahoney [3]_ - LSRN). Sketch :math:`SA` (k, n) and
    :math:`Sb`; factor :math:`SA = U\Sigma V^T` and set :math:`N = V_r\Sigma_r^{-1}`;
    start from the sketch-and-solve solution :math:`x_0 = NU_r^T Sb` and iterate
    (momentum, or LSQR on :math:`\min_y\|ANy - b\|` with :math:`x = Ny`).

    **Why it converges fast.** If :math:`S` is a subspace embedding of
    :math:`\operatorname{range}(A)` with distortion :math:`\varepsilon`, i.e.
    :math:`(1-\varepsilon)\|Az\| \le \|SAz\| \le (1+\varepsilon)\|Az\|` for all
    :math:`z`, then every singular value of :math:`AN` lies in
    :math:`[1/(1+\varepsilon), 1/(1-\varepsilon)]`, so
    :math:`\kappa(AN) \le (1+\varepsilon)/(1-\varepsilon)` (proven, deterministic
    given the embedding; :func:`rnla.bounds.preconditioned_condition_bound`) and LSQR
    reduces the error in the :math:`(AN)^T(AN)` norm by
    :math:`2\varepsilon^j` after :math:`j` steps (the CG bound with
    :math:`(\sqrt\kappa-1)/(\sqrt\kappa+1) \le \varepsilon`;
    :func:`rnla.bounds.iteration_bound`); heavy-ball momentum tuned to the
    Marchenko-Pastur spectrum of aspect ratio :math:`\rho = n/k` contracts by about
    :math:`\sqrt\rho` per step (Lacotte and Pilanci; here :math:`\rho` is inflated
    by 25% as a margin). The iteration count depends on the sketch and ``tol`` only,
    not on :math:`\kappa(A)`: the default ``k = 8n`` gives about 30 iterations at
    ``tol=1e-12``.

    **Sketch-and-solve guarantee** (Sarlós [4]_). If :math:`S` embeds the
    :math:`(n+1)`-dimensional :math:`\operatorname{range}([A, b])` with distortion
    :math:`\varepsilon`, then :math:`\|A\hat x - b\| \le \frac{1+\varepsilon}
    {1-\varepsilon}\min_x\|Ax - b\|` (proven; probabilistic through the embedding,
    whose failure probability ``delta`` is given by the sketch-size functions of
    :mod:`rnla.bounds`). The solution itself can be far from :math:`x_\star` when
    :math:`\kappa(A)` is large: use ``"precondition"`` for accurate ``x``.

    **Rank-deficient A.** The ``"svd"`` preconditioner drops singular values of
    :math:`SA` below ``rcond`` :math:`\sigma_1(SA)`. Since :math:`x = Ny` lies in
    :math:`\operatorname{range}(V_r)`, which is the row space of :math:`A` when
    :math:`S` embeds :math:`\operatorname{range}(A)` (:math:`\ker SA = \ker A`),
    the result is the **minimum-norm** least-squares solution of the problem with
    the dropped directions removed (LSRN, [3]_, Thm 4.2); ``rank`` reports
    :math:`r`.

    **Error estimate.** With :math:`r = b - Ax`, the exact correction is
    :math:`x_\star - x = (A^TA)^{+}A^Tr`; replacing :math:`A^TA` by :math:`(SA)^T(SA)
    = N^{-T}N^{-1}` (a :math:`(1\pm\varepsilon)^2` spectral approximation) gives the
    estimate :math:`\|NN^TA^Tr\|`: one extra product with :math:`A^T`.

    **Stability.** Sketch-and-precondition with LSQR is not stable in general (Meier,
    Nakatsukasa, Townsend and Webb [5]_): LSQR works in the coordinates :math:`y =
    N^{-1}x`, and the rounding of :math:`N^T(A^Tu)` is amplified by :math:`\|N\|`,
    so the forward error of ``x`` is about :math:`\kappa(A)` times ``tol``. Iterative
    sketching (``"momentum"``) is forward stable (Epperly [6]_): its error is of order
    :math:`\kappa u + \kappa^2 u\|r_\star\|/(\|A\|\|x_\star\|)`, the sensitivity of the
    problem. Neither is backward stable: on ill-conditioned problems with a large
    residual LAPACK's Householder-based ``gelsd`` can be far more accurate (the
    benchmark shows both regimes).

    **Cost.** Sketch: SRHT :math:`O(mn\log m)`, sparse sign :math:`8\,\mathrm{nnz}(A)`;
    QR of :math:`[SA, Sb]` and SVD of the triangle: :math:`O(kn^2)`; each iteration: one
    product with :math:`A` and one with :math:`A^T` plus :math:`O(n^2)` for :math:`N`
    (for a C-contiguous ndarray the ``"momentum"`` step takes :math:`A^T(b - Ax)` in one
    pass over :math:`A`, row block by row block). Memory
    :math:`O(kn + m)` beyond ``A``.

    References
    ----------
    .. [1] V. Rokhlin and M. Tygert, "A fast randomized algorithm for overdetermined
       linear least-squares regression", PNAS 105 (2008).
    .. [2] H. Avron, P. Maymounkov and S. Toledo, "Blendenpik: supercharging LAPACK's
       least-squares solver", SIAM J. Sci. Comput. 32 (2010).
    .. [3] X. Meng, M. A. Saunders and M. W. Mahoney, "LSRN: a parallel iterative
       solver for strongly over- or underdetermined systems", SIAM J. Sci. Comput. 36
       (2014).
    .. [4] T. Sarlós, "Improved approximation algorithms for large matrices via random
       projections", FOCS 2006.
    .. [5] M. Meier, Y. Nakatsukasa, A. Townsend and M. Webb, "Are sketch-and-precondition
       least squares solvers numerically stable?", SIAM J. Matrix Anal. Appl. 45 (2024),
       arXiv:2302.07202.
    .. [6] E. N. Epperly, "Fast and forward stable randomized algorithms for linear
       least-squares problems", SIAM J. Matrix Anal. Appl. 45 (2024), arXiv:2311.04362.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import lstsq
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((2000, 20))
    >>> b = A @ np.ones(20) + 1e-3 * rng.standard_normal(2000)
    >>> res = lstsq(A, b, rng=0)
    >>> res.x.shape, bool(np.allclose(res.x, np.linalg.lstsq(A, b)[0], atol=1e-10))
    ((20,), True)
    """
    op = _product_operator(A)
    m, n = op.shape
    if m < n:
        raise ValueError(f"A must be tall (m >= n) for lstsq, got shape {op.shape}")
    dtype = float_dtype(op.dtype if op.dtype is not None else np.float64)
    b = as_float_array(b, name="b", ndim=(1, 2))
    if b.shape[0] != m:
        raise ValueError(f"b must have m={m} rows to match A of shape {op.shape}, got {b.shape}")
    method = check_option(method, ("precondition", "solve"), "method")
    solver = check_option(solver, ("momentum", "lsqr", "lsmr"), "solver")
    preconditioner = check_option(preconditioner, ("svd", "qr"), "preconditioner")
    tol = _check_tol(tol, dtype)
    if rcond is None:
        rcond = n * float(np.finfo(dtype).eps)
    elif isinstance(rcond, bool) or not isinstance(rcond, numbers.Real) or not 0 <= rcond < 1:
        raise ValueError(f"rcond must be a real number in [0, 1), got {rcond!r}")
    rng = check_rng(rng)

    S = _lstsq_sketch(A, sketch, sketch_size, m, n, rng)
    k = S.shape[0]
    SA = np.asarray(_apply_sketch(S, A, op), dtype=np.float64)
    b2 = b if b.ndim == 2 else b[:, None]
    Sb = np.asarray(S @ b2, dtype=np.float64)
    if not SA.any():  # A = 0: x = 0 is the minimum-norm solution
        return _zero_matrix_solution(A, op, b, dtype, k, rng)
    N, R, r, y0 = _sketch_preconditioner(SA, Sb, preconditioner, rcond)
    M = _Preconditioned(op, N, R)
    if maxiter is None:
        maxiter = max(100, 2 * _lsqr_steps(0.5, tol))
    else:
        maxiter = check_int(maxiter, "maxiter", minimum=1)

    B64 = b2.astype(np.float64)
    X0 = M.right(y0)
    if method == "solve":
        X, iterations = X0, np.zeros(b2.shape[1], dtype=np.int64)
    elif solver == "momentum":
        X, iterations = _momentum_solve(op, M, B64, X0, dtype, min(r, n) / k, tol, maxiter, k)
    else:
        X, iterations = _krylov_solve(solver, M, B64, y0, n, tol, maxiter, k)
    res_norm, est, reached = _lstsq_diagnostics(op, M, X, b2, dtype)
    x = X.astype(dtype)
    # S @ A taken directly for arrays is a pass the operator did not count
    n_passes = op.n_passes + int(isinstance(A, np.ndarray) or sp.issparse(A))
    if b.ndim == 1:
        res = LstsqResult(
            x[:, 0],
            int(iterations[0]),
            float(res_norm[0]),
            float(est[0]),
            float(reached[0]),
            r,
            k,
        )
    else:
        res = LstsqResult(x, iterations, res_norm, est, reached, r, k)
    return _with_passes(res, n_passes)


def _lstsq_sketch(A, sketch, sketch_size, m: int, n: int, rng):
    """Return the sketching operator ``S`` (k, m), ``k >= n``: given, or drawn by name."""
    if isinstance(sketch, _sketch.SketchOperator):
        if sketch.shape[1] != m or sketch.shape[0] < n:
            raise ValueError(
                f"sketch must have shape (sketch_size, m={m}) with sketch_size >= n={n}, "
                f"got {sketch.shape}"
            )
        return sketch
    allowed = ("auto", *_SKETCHES)
    kind = check_option(sketch, allowed, "sketch")
    # dense A: 4 nonzeros per column (one read of A, 0.46 s against SRHT's 0.7 s and
    # sparse sign 8's 0.65 s at 200000 x 500, same iteration counts); else 8
    per_col = 4 if kind == "auto" and isinstance(A, np.ndarray) else 8
    if kind == "auto":
        kind = "sparse_sign"
    if sketch_size is None:
        k = _default_sketch_size(m, n, kind)
    else:
        k = check_int(sketch_size, "sketch_size", minimum=n, maximum=m)
    if kind == "sparse_sign":
        return _sketch.sparse_sign(k, m, nnz_per_col=min(per_col, k), rng=rng)
    return _SKETCHES[kind](k, m, rng=rng)


def _zero_matrix_solution(A, op, b, dtype, k: int, rng) -> LstsqResult:
    """Return the result for ``A = 0`` (``x = 0``), or refuse a sketch with ``SA = 0``.

    Dense and sparse ``A`` are checked exactly; an operator by one product with a
    Gaussian vector (nonzero with probability 1 unless ``A = 0``). ``A^T r = 0``, so the
    reached ``tol`` and the error estimate are 0; the rank is 0.
    """
    n = op.shape[1]
    if isinstance(A, np.ndarray):
        nonzero = bool(A.any())
    elif sp.issparse(A):
        nonzero = bool(A.count_nonzero())
    else:
        probe = rng.standard_normal((n, 1)).astype(dtype)
        nonzero = bool(np.asarray(op.matmat(probe)).any())
    if nonzero:
        raise ValueError(
            "the sketch annihilates A (S @ A = 0 although A is nonzero): draw another "
            "sketch (rng) or increase sketch_size"
        )
    # S @ A taken directly for arrays is a pass the operator did not count
    n_passes = op.n_passes + int(isinstance(A, np.ndarray) or sp.issparse(A))
    residual = np.linalg.norm(b.astype(np.float64), axis=0)
    if b.ndim == 1:
        res = LstsqResult(np.zeros(n, dtype=dtype), 0, float(residual), 0.0, 0.0, 0, k)
    else:
        nrhs = b.shape[1]
        res = LstsqResult(
            np.zeros((n, nrhs), dtype=dtype),
            np.zeros(nrhs, dtype=np.int64),
            residual,
            np.zeros(nrhs),
            np.zeros(nrhs),
            0,
            k,
        )
    return _with_passes(res, n_passes)


def _sketch_preconditioner(SA, Sb, preconditioner: str, rcond: float):
    """``N`` (svd) or ``R`` (qr) from ``SA``, its rank ``r`` and the sketch-and-solve ``y0``.

    ``y0`` is the sketch-and-solve solution in the coordinates ``x = N y`` (svd) or
    ``x = R^{-1} y`` (qr).
    """
    if preconditioner == "svd":
        # QR of [SA, Sb] without forming Q (R's last columns are Q^T Sb), then the SVD
        # of the n x n triangle: SA = Q U s V^T at a fraction of a thin SVD of SA.
        n = SA.shape[1]
        T = sla.qr(np.hstack([SA, Sb]), mode="r", check_finite=False)[0]
        U, s, Vt = np.linalg.svd(T[:n, :n])
        if s[0] == 0.0:
            raise ValueError("A is zero on the sketch: the least-squares problem is trivial")
        r = int(np.count_nonzero(s > rcond * s[0]))
        return Vt[:r].T / s[:r], None, r, U[:, :r].T @ T[:n, n:]
    Q, R = np.linalg.qr(SA)
    d = np.abs(np.diag(R))
    if d.min() <= rcond * d.max():
        warnings.warn(
            "the sketch is numerically rank deficient (min |R_ii| / max |R_ii| = "
            f"{d.min() / d.max():.3g}); preconditioner='qr' assumes full column rank, "
            "use preconditioner='svd' for the minimum-norm solution",
            AccuracyWarning,
            stacklevel=3,
        )
        R = R + np.diag(np.where(d <= rcond * d.max(), rcond * d.max(), 0.0))
    return None, R, SA.shape[1], Q.T @ Sb


def _momentum_solve(op, M, B64, X0, dtype, ratio: float, tol: float, maxiter: int, k: int):
    """Run iterative sketching with momentum from ``X0``; warn on stagnation or maxiter."""
    X, iterations, stalled = _momentum(op, M, B64, X0, dtype, ratio, tol, maxiter)
    if stalled.any():
        warnings.warn(
            f"iterative sketching stagnated before tol={tol:.3g} (right-hand sides "
            f"{np.flatnonzero(stalled).tolist()}): the forward error has reached its "
            "rounding floor (about cond(A) * eps); see error_estimate",
            AccuracyWarning,
            stacklevel=3,
        )
    if np.any(iterations >= maxiter):
        warnings.warn(
            f"iterative sketching reached maxiter={maxiter} before tol={tol:.3g}; the "
            f"sketch may not embed range(A): increase sketch_size (now {k})",
            ConvergenceWarning,
            stacklevel=3,
        )
    return X, iterations


def _krylov_solve(solver: str, M, B64, y0, n: int, tol: float, maxiter: int, k: int):
    """Run LSQR or LSMR on ``M = AN`` from ``y0``, one right-hand side at a time."""
    nrhs = B64.shape[1]
    X = np.empty((n, nrhs), dtype=np.float64)
    iterations = np.zeros(nrhs, dtype=np.int64)
    krylov = lsqr if solver == "lsqr" else lsmr
    for j in range(nrhs):
        # LSQR/LSMR normalise by their running Frobenius estimate of ||AN|| (about
        # sqrt(2 j) after j steps, while ||AN||_2 ~ 1): tol / 10 makes the reported
        # ||N^T A^T r|| / ||b|| meet tol.
        limit = {"iter_lim" if krylov is lsqr else "maxiter": maxiter}
        out = krylov(M, B64[:, j], atol=tol / 10, btol=tol / 10, conlim=1e16, x0=y0[:, j], **limit)
        y, istop, itn = out[0], out[1], out[2]
        iterations[j] = itn
        if itn >= maxiter and istop == 7:
            warnings.warn(
                f"{solver} reached maxiter={maxiter} before tol={tol:.3g} "
                f"(right-hand side {j}); the sketch may not embed range(A): increase "
                f"sketch_size (now {k})",
                ConvergenceWarning,
                stacklevel=3,
            )
        X[:, j] = M.right(y)
    return X, iterations


def _lstsq_diagnostics(op, M, X, b2, dtype):
    """Return the residual norms, the error estimate ``||N N^T A^T r|| / ||x||``, the tol reached.

    For the returned ``x`` (rounded to the data dtype): one pass over a C-contiguous
    dense ``A``, else two (``A x`` and ``A^T r``, in ``A``'s dtype).
    """
    AtR, res_norm = _normal_residual(op, b2, X.astype(dtype).astype(np.float64), dtype)
    NtAtR = M.right_t(AtR)
    dX = M.right(NtAtR)
    b_norm = np.linalg.norm(b2.astype(np.float64), axis=0)
    x_norm = np.linalg.norm(X, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(x_norm > 0, np.linalg.norm(dX, axis=0) / x_norm, 0.0)
        reached = np.where(b_norm > 0, np.linalg.norm(NtAtR, axis=0) / b_norm, 0.0)
    return res_norm, est, reached


def _lsqr_steps(eps: float, tol: float) -> int:
    """Return the number of iterations ``j`` with ``2 eps^j <= tol`` (rate ``eps``)."""
    return max(1, math.ceil(math.log(tol / 2.0) / math.log(eps)))


def _momentum(op, M, B, X, dtype, ratio, tol, maxiter):
    r"""Run iterative sketching with heavy-ball momentum (Epperly 2024, forward stable).

    :math:`X_{i+1} = X_i + \alpha D_i + \beta(X_i - X_{i-1})` with
    :math:`D_i = NN^TA^T(B - AX_i)`; for a sketch whose :math:`(SA)^T(SA)` spectrum
    relative to :math:`A^TA` lies in the Marchenko-Pastur interval of aspect ratio
    :math:`\rho` (``ratio``), :math:`\alpha = (1-\rho)^2`, :math:`\beta = \rho` give
    the rate :math:`\sqrt\rho` per iteration. ``ratio`` is inflated by 25% as a safety
    margin for non-Gaussian sketches and finite-size fluctuations, and doubled (restart
    from the best iterate) if the steps grow. Stops per column when
    :math:`\|D_i\| \le \mathrm{tol}\|X_i\|` (the step is the forward-error estimate),
    or when the step has not halved for ``max(4, 2 log(1/2)/log(sqrt(rho)))`` iterations
    (twice the iterations a halving takes at the predicted rate: the rounding floor).
    """
    nrhs = B.shape[1]
    rho = min(0.9, 1.25 * ratio)
    iterations = np.zeros(nrhs, dtype=np.int64)
    active = np.ones(nrhs, dtype=bool)
    stalled = np.zeros(nrhs, dtype=bool)
    best = np.full(nrhs, np.inf)
    mark = np.full(nrhs, np.inf)  # step at the last halving
    since_best = np.zeros(nrhs, dtype=np.int64)
    X_best = X.copy()
    X_prev = X.copy()
    it = 0
    while it < maxiter and active.any():
        cols = np.flatnonzero(active)
        Xa = X[:, cols]
        G, _ = _normal_residual(op, B[:, cols], Xa, dtype)
        D = M.right(M.right_t(G))
        it += 1
        step = np.linalg.norm(D, axis=0)
        xnorm = np.linalg.norm(Xa, axis=0)
        improved = step < best[cols]
        X_best[:, cols[improved]] = Xa[:, improved]
        # progress = the step halved since the last mark (a converging step contracts by
        # about sqrt(rho) <= 0.45 per iteration; at the rounding floor steps only wander)
        halved = step <= 0.5 * mark[cols]
        mark[cols] = np.where(halved, step, mark[cols])
        since_best[cols] = np.where(halved, 0, since_best[cols] + 1)
        best[cols] = np.minimum(best[cols], step)
        done = step <= tol * xnorm
        diverged = step > 1e3 * best[cols]
        if diverged.any() and rho < 0.9:
            # Momentum tuned for a better embedding than the sketch delivers: restart
            # every active column from its best iterate with a safer rate.
            rho = min(0.9, 2 * rho)
            X[:, cols] = X_best[:, cols]
            X_prev[:, cols] = X_best[:, cols]
            continue
        # patience: twice the iterations a halving takes at the rate sqrt(rho), at least 4
        patience = max(4, 2 * math.ceil(math.log(0.5) / math.log(math.sqrt(rho))))
        stuck = (since_best[cols] >= patience) & ~done
        alpha, beta = (1 - rho) ** 2, rho
        X_new = Xa + alpha * D + beta * (Xa - X_prev[:, cols])
        X_prev[:, cols] = Xa
        # a converged column takes its last (full) step and leaves the active set
        X[:, cols] = np.where(done, Xa + D, X_new)
        X[:, cols[stuck]] = X_best[:, cols[stuck]]
        iterations[cols] = it
        stalled[cols[stuck]] = True
        active[cols[done | stuck]] = False
    return X, iterations, stalled


# ---------------------------------------------------------------------------------------
# Nyström-preconditioned CG
# ---------------------------------------------------------------------------------------


class PCGResult(NamedTuple):
    r"""Result of :func:`nystrom_pcg`.

    Attributes
    ----------
    x : ndarray, shape (n,)
        Solution of :math:`(A + \mu I)x = b`, dtype of the data.
    iterations : int
        CG iterations (each one product with :math:`A`).
    residual_norm : float
        True residual :math:`\|b - (A + \mu I)x\|_2`, recomputed from ``x`` at the
        end (certified up to the rounding of one product).
    tol : float
        Reached relative residual ``residual_norm / ||b||``.
    rank : int
        Rank of the preconditioner.
    condition_estimate : float
        Estimate of :math:`\kappa(P^{-1/2}(A+\mu I)P^{-1/2})`: ratio of the extreme
        Ritz values of the CG (Lanczos) tridiagonal matrix, a lower estimate that
        converges from below.
    n_matvecs : int
        Products with :math:`A` in total (sketch columns, CG steps and residual
        checks), the cost measure for an implicit :math:`A`.
    """

    x: np.ndarray
    iterations: int
    residual_norm: float
    tol: float
    rank: int
    condition_estimate: float
    n_matvecs: int


def _stable_nystrom(Omega: np.ndarray, Y: np.ndarray):
    r"""Eigendecomposition of the shifted Nyström approximation from orthonormal Omega.

    Frangella, Tropp and Udell, Alg. 2.1: :math:`\nu = \sqrt n\,\epsilon\,\|Y\|`,
    :math:`Y_\nu = Y + \nu\Omega`, :math:`C^TC = \Omega^TY_\nu`, :math:`B = Y_\nu C^{-1}`,
    :math:`B = U\Sigma W^T`, :math:`\hat\lambda = \max(\sigma^2 - \nu, 0)`. float64.
    """
    n = Omega.shape[0]
    norm_y = np.linalg.norm(Y, 2)
    nu = math.sqrt(n) * np.finfo(np.float64).eps * max(norm_y, np.finfo(np.float64).tiny)
    B = _nystrom_factor(Omega, Y + nu * Omega)
    if B.shape[1] == 0:
        raise ValueError("A is not positive semidefinite on the sketch space")
    U, s, _ = np.linalg.svd(B, full_matrices=False)
    lam = np.maximum(s**2 - nu, 0.0)
    return U, lam


class _NystromPreconditioner:
    r""":math:`P^{-1} = (\hat\lambda_\ell + \mu)U(\hat\Lambda + \mu I)^{-1}U^T + (I - UU^T)`."""

    def __init__(self, U: np.ndarray, lam: np.ndarray, mu: float):
        self.U = U
        self.lam = lam
        self.mu = mu
        self._scale = (lam[-1] + mu) / (lam + mu) - 1.0

    def __call__(self, v):
        c = self.U.T @ v
        return v + self.U @ (self._scale * c)


def _check_mu(mu) -> float:
    return check_real(mu, "mu", lower=0)


def _ritz_condition(alphas, betas) -> float:
    """Condition number of the Lanczos tridiagonal built from CG coefficients."""
    j = len(alphas)
    if j == 0:
        return 1.0
    a = np.asarray(alphas)
    bt = np.asarray(betas[: j - 1])
    diag = 1.0 / a
    diag[1:] += bt / a[:-1]
    off = np.sqrt(np.maximum(bt, 0.0)) / a[:-1]
    theta = sla.eigvalsh_tridiagonal(diag, off) if j > 1 else diag
    lo = theta.min()
    return float(theta.max() / lo) if lo > 0 else math.inf


def nystrom_pcg(
    A,
    b,
    /,
    *,
    mu,
    rank=None,
    tol=None,
    preconditioner="nystrom",
    max_rank=None,
    maxiter=None,
    rng=None,
) -> PCGResult:
    r"""Solve :math:`(A + \mu I)x = b` for PSD :math:`A` by Nyström-preconditioned CG.

    Parameters
    ----------
    A : ndarray, scipy.sparse matrix, LinearOperator or EntryMatrix, shape (n, n)
        Symmetric positive-semidefinite. Products use :meth:`as_linear_operator` of an
        :class:`~rnla.operators.KernelMatrix`, which streams row blocks (the matrix is
        never formed).
    b : array_like, shape (n,)
        Right-hand side.
    mu : float
        Regularisation :math:`\mu > 0`.
    rank : int, optional
        Fixed preconditioner rank :math:`\ell`. Default (``None``): adaptive, starting
        at ``min(n, 32)`` and doubling while :math:`\hat\lambda_\ell > 4\mu`, up to
        ``max_rank``.
    tol : float, optional
        Relative residual :math:`\|b - (A+\mu I)x\| \le \mathrm{tol}\,\|b\|` to reach;
        default ``1e-8`` (float64), ``1e-4`` (float32). The attainable residual is
        limited by the rounding of the products, about :math:`u\|A\|\|x\|`, i.e.
        relative :math:`u\|A\|/\mu` in the worst case; CG stops with an
        :class:`~rnla.AccuracyWarning` when the true residual stagnates above ``tol``.
    preconditioner : {"nystrom", "rpcholesky", "none"}, default="nystrom"
        ``"nystrom"``: randomized Nyström approximation from a Gaussian sketch
        (:math:`\ell` products with :math:`A`). ``"rpcholesky"``: the column Nyström
        approximation of :func:`rnla.rpcholesky` (:math:`\ell` rows of :math:`A`, so
        :math:`\ell n` entries instead of :math:`\ell` passes over :math:`n^2`; needs
        an ndarray or an EntryMatrix); the adaptive rank stops when the exactly
        tracked residual trace :math:`\operatorname{tr}(A - FF^T) \le 4\mu`, which
        certifies :math:`\kappa \le \hat\lambda_\ell/\mu + 5`. ``"none"``: plain CG
        (the baseline).
    max_rank : int, optional
        Cap of the adaptive rank; default ``min(n, 1024)``.
    maxiter : int, optional
        CG iteration limit; default ``max(100, n)`` capped at ``10 n``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Randomness of the sketch / pivots.

    Returns
    -------
    PCGResult
        ``x``, ``iterations``, ``residual_norm`` (true, recomputed), ``tol`` (reached),
        ``rank``, ``condition_estimate``, ``n_matvecs``.

    Raises
    ------
    TypeError
        Unsupported input types; ``preconditioner="rpcholesky"`` with a sparse matrix
        or a LinearOperator.
    ValueError
        Non-square, empty or non-finite ``A``/``b``; ``mu <= 0``; bad sizes or names.

    Warns
    -----
    ConvergenceWarning
        ``maxiter`` reached before ``tol``.
    AccuracyWarning
        The true residual stagnates above ``tol`` (rounding floor).

    Notes
    -----
    **Preconditioner** (Frangella, Tropp and Udell [1]_). From the rank-:math:`\ell`
    approximation :math:`\hat A = U\hat\Lambda U^T`,

    .. math::

        P^{-1} = (\hat\lambda_\ell + \mu)\,U(\hat\Lambda + \mu I)^{-1}U^T + (I - UU^T),

    applied in :math:`O(n\ell)`. Deterministically (their Prop. 5.3),
    :math:`\kappa(P^{-1/2}(A+\mu I)P^{-1/2}) \le (\hat\lambda_\ell + \mu +
    \|A - \hat A\|)/\mu`; with :math:`\ell \ge 2\lceil 1.5\,d_{\mathrm{eff}}(\mu)\rceil
    + 1`, :math:`d_{\mathrm{eff}}(\mu) = \operatorname{tr}(A(A+\mu I)^{-1})`, the
    expected condition number is below 28 (their Thm 5.1); see
    :func:`rnla.bounds.nystrom_pcg_condition_bound`. The adaptive rule doubles
    :math:`\ell` until :math:`\hat\lambda_\ell \le 4\mu`, the cheap proxy of
    [1]_ §5.4 for :math:`\ell \gtrsim d_{\mathrm{eff}}`; new sketch columns are
    orthogonalised against the old ones and appended, so the total sketch is the
    final :math:`\ell` columns (no product is recomputed). The RPCholesky variant
    (Díaz, Epperly, Frangella, Tropp and Webber [2]_) uses :math:`\hat A = FF^T`.

    **Stopping on the true residual.** CG updates its residual recursively; when the
    recursive residual passes ``tol`` the true residual :math:`b - (A+\mu I)x` is
    computed (one product) and CG stops only if it also passes, otherwise it restarts
    from the true residual (residual replacement). The returned ``residual_norm`` is
    recomputed from the returned ``x``, so the achieved ``tol`` is certified up to the
    rounding of one product.

    **Cost.** Nyström: :math:`\ell` products with :math:`A` (kernel matrix: one
    streamed pass per doubling) plus :math:`O(n\ell^2)`; RPCholesky: :math:`\ell n`
    entries plus :math:`O(n\ell^2)`; CG: one product and :math:`O(n\ell)` per
    iteration. Memory :math:`O(n\ell)`.

    References
    ----------
    .. [1] Z. Frangella, J. A. Tropp and M. Udell, "Randomized Nyström
       preconditioning", SIAM J. Matrix Anal. Appl. 44 (2023), arXiv:2110.02820.
    .. [2] M. Díaz, E. N. Epperly, Z. Frangella, J. A. Tropp and R. J. Webber,
       "Robust, randomized preconditioning for kernel ridge regression",
       arXiv:2304.12465.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import nystrom_pcg
    >>> from rnla.operators import KernelMatrix
    >>> X = np.random.default_rng(0).standard_normal((500, 3))
    >>> K = KernelMatrix(X, kernel="gaussian")
    >>> res = nystrom_pcg(K, np.ones(500), mu=1e-3, rng=0)
    >>> res.x.shape, res.tol <= 1e-8
    ((500,), True)
    """
    entry = (
        not isinstance(A, np.ndarray | LinearOperator)
        and not sp.issparse(A)
        and hasattr(A, "rows")
        and hasattr(A, "diag")
    )
    op = _product_operator(A)
    n, n2 = op.shape
    if n != n2:
        raise ValueError(f"A must be square (symmetric PSD), got shape {op.shape}")
    dtype = float_dtype(op.dtype if op.dtype is not None else np.float64)
    b = as_float_array(b, name="b", ndim=1)
    if b.shape[0] != n:
        raise ValueError(f"b must have length n={n} to match A of shape {op.shape}, got {b.shape}")
    mu = _check_mu(mu)
    preconditioner = check_option(
        preconditioner, ("nystrom", "rpcholesky", "none"), "preconditioner"
    )
    if tol is None:
        tol = 1e-8 if dtype == np.float64 else 1e-4
    tol = _check_tol(tol, dtype)
    if max_rank is None:
        max_rank = min(n, 1024)
    else:
        max_rank = check_int(max_rank, "max_rank", minimum=1, maximum=n)
    if rank is not None:
        rank = check_int(rank, "rank", minimum=1, maximum=n)
    maxiter = (
        min(max(100, n), 10 * n) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    )
    rng = check_rng(rng)
    if preconditioner == "rpcholesky" and not (entry or isinstance(A, np.ndarray)):
        raise TypeError(
            "preconditioner='rpcholesky' needs entry access (an ndarray or an EntryMatrix "
            f"such as KernelMatrix), got {type(A).__name__}; use preconditioner='nystrom'"
        )

    shifted = _ShiftedOperator(op, mu, dtype)
    if preconditioner == "nystrom":
        precond, ell = _nystrom_preconditioner(shifted, rank, max_rank, rng)
    elif preconditioner == "rpcholesky":
        precond, ell = _rpcholesky_preconditioner(A, entry, mu, rank, max_rank, rng)
    else:
        precond, ell = None, 0

    b64 = b.astype(np.float64)
    b_norm = float(np.linalg.norm(b64))
    if b_norm == 0.0:
        return PCGResult(np.zeros(n).astype(dtype), 0, 0.0, 0.0, ell, 1.0, shifted.n_matvecs)
    threshold = tol * b_norm
    x, alphas, betas, stop = _cg(shifted, b64, precond, threshold, maxiter)
    res = float(np.linalg.norm(b64 - shifted(x)))
    if res > threshold and stop != "converged":
        _warn_cg_stopped(stop, res / b_norm, tol, maxiter)
    cond = _ritz_condition(alphas, betas)
    return PCGResult(x.astype(dtype), len(alphas), res, res / b_norm, ell, cond, shifted.n_matvecs)


class _ShiftedOperator:
    """``v -> (A + mu I) v`` in float64 (products with ``A`` in its dtype), counted."""

    def __init__(self, op: _Operator, mu: float, dtype) -> None:
        self.op = op
        self.mu = mu
        self.dtype = dtype
        self.n_matvecs = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.n_matvecs += 1
        Av = self.op.matvec(v.astype(self.dtype, copy=False))
        return np.asarray(Av, dtype=np.float64).ravel() + self.mu * v

    def sketch(self, Q: np.ndarray) -> np.ndarray:
        """Return ``A Q`` in float64 (``Q.shape[1]`` products, no shift)."""
        self.n_matvecs += Q.shape[1]
        return np.asarray(self.op.matmat(Q.astype(self.dtype)), dtype=np.float64)


def _nystrom_preconditioner(shifted: _ShiftedOperator, rank, max_rank: int, rng):
    """Nyström preconditioner; without ``rank`` the sketch doubles until ``lambda_l <= 4 mu``."""
    n, mu = shifted.op.shape[0], shifted.mu
    ell = rank if rank is not None else min(n, 32, max_rank)
    Omega = np.empty((n, 0))
    Y = np.empty((n, 0))
    new = ell
    while True:
        G = rng.standard_normal((n, new))
        for _ in range(2):  # orthogonalise against the previous columns twice
            G -= Omega @ (Omega.T @ G)
        Q, _ = np.linalg.qr(G)
        Z = shifted.sketch(Q)
        Omega = np.hstack([Omega, Q])
        Y = np.hstack([Y, Z])
        U, lam = _stable_nystrom(Omega, Y)
        ell = Omega.shape[1]
        if rank is not None or lam[-1] <= 4.0 * mu or ell >= max_rank:
            break
        new = min(ell, max_rank - ell)
    return _NystromPreconditioner(U, lam, mu), ell


def _rpcholesky_preconditioner(A, entry: bool, mu: float, rank, max_rank: int, rng):
    """Preconditioner from the RPCholesky factor ``F`` (``rank`` pivots, or trace-adaptive)."""
    if rank is not None:
        F = rpcholesky(A, rank, rng=rng).F
    else:
        # ||A - FF^T|| <= tr(A - FF^T), tracked exactly by RPCholesky: stopping at
        # tr(A - FF^T) <= 4 mu certifies kappa <= (lambda_l + mu + 4 mu) / mu.
        trace = float(np.sum(A.diag() if entry else np.diag(A), dtype=np.float64))
        rel = min(0.5, 4.0 * mu / trace) if trace > 0 else 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AccuracyWarning)  # max_rank cap reached
            F = rpcholesky(A, max_rank, tol=rel, rng=rng).F
    return _NystromPreconditioner(*_left_svd(F, rng), mu), F.shape[1]


def _left_svd(F: np.ndarray, rng):
    """``U, s**2`` of the thin SVD of the tall factor ``F`` (float64).

    For ``n >= 4 l``: QR first (sketch-preconditioned CholeskyQR, BLAS-3; Householder
    if ``F`` is numerically rank deficient), then the SVD of the small ``R`` (at
    ``n = 50000``, ``l = 1024`` much cheaper than ``gesdd`` on ``F``); otherwise (the
    sketch would not be smaller than ``F``) ``gesdd`` on ``F``.
    """
    F = F.astype(np.float64)
    n, ell = F.shape
    if ell == 0 or n < 4 * ell:
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        return U, s**2
    try:
        Q, R, _ = cholqr_sketch(F, rng=rng)
    except ValueError:
        Q, R = np.linalg.qr(F)
    Ur, s, _ = np.linalg.svd(R)
    return Q @ Ur, s**2


def _cg(shifted: _ShiftedOperator, b64, precond, threshold: float, maxiter: int):
    """Preconditioned CG from 0 with residual replacement.

    Returns ``x``, the CG coefficients ``alphas`` and ``betas`` (one alpha per step) and
    why it stopped: "converged" (true residual <= threshold), "stalled" (the recursive
    residual keeps passing, the true one does not decrease), "breakdown" or "maxiter".
    """
    apply_p = precond if precond is not None else (lambda v: v)
    x = np.zeros(b64.size)
    r = b64.copy()
    z = apply_p(r)
    p = z.copy()
    rz = float(r @ z)
    alphas: list[float] = []
    betas: list[float] = []
    last_true = math.inf
    while len(alphas) < maxiter:
        q = shifted(p)
        pq = float(p @ q)
        if pq <= 0:
            return x, alphas, betas, "breakdown"
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        alphas.append(alpha)
        if np.linalg.norm(r) <= threshold:
            r = b64 - shifted(x)  # true residual
            true_norm = float(np.linalg.norm(r))
            if true_norm <= threshold:
                return x, alphas, betas, "converged"
            if true_norm > 0.5 * last_true:
                return x, alphas, betas, "stalled"
            last_true = true_norm
        z = apply_p(r)
        rz_new = float(r @ z)
        beta = rz_new / rz
        betas.append(beta)
        rz = rz_new
        p = z + beta * p
    return x, alphas, betas, "maxiter"


def _warn_cg_stopped(stop: str, relative: float, tol: float, maxiter: int) -> None:
    if stop == "stalled":
        warnings.warn(
            f"CG stagnated at relative residual {relative:.3g} > tol={tol:.3g}: the "
            "rounding floor of the products (about eps ||A|| ||x|| / ||b||) is reached",
            AccuracyWarning,
            stacklevel=3,
        )
    else:
        warnings.warn(
            f"CG reached maxiter={maxiter} with relative residual {relative:.3g} > tol={tol:.3g}",
            ConvergenceWarning,
            stacklevel=3,
        )
