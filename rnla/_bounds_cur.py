r"""A-priori and deterministic bounds for skeleton decompositions (ID, QRCP, CUR).

Each function implements one inequality, states its assumptions and raises
:class:`ValueError` outside them. Re-exported by :mod:`rnla.bounds`.

Notation: ``A`` is :math:`m \times n`; a column ID of rank ``k`` is
:math:`A \approx A[:, J] X` with :math:`X = [I_k\ \ T]\,\Pi^T` (so ``X[:, J] = I``);
:math:`P_X = X^\dagger X` is the orthogonal projector onto the row space of ``X``.

Sources. The ID bound is Lemma 5.1 of Halko-Martinsson-Tropp (2011), re-derived in
:func:`id_bound` (the derivation is two lines and gives the constant in the form used
here; the reference document quotes it with ``m`` for a row ID of an ``m x k`` basis,
which is the same statement transposed). The strong RRQR bound is Theorem 3.2 of
Gu-Eisenstat (1996), quoted from the paper's definitions (the growth quantity
:math:`\rho` below is their equation (7)); :func:`rrqr_growth` computes it so that the
theorem can be applied - and tested - on any computed factorisation. The CUR inequality
is elementary and proved in :func:`cur_bound`.

References
----------
.. [HMT11] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
   randomness", SIAM Rev. 53 (2011), §5.2, Lemma 5.1. arXiv:0909.4061.
.. [GE96] M. Gu and S. C. Eisenstat, "Efficient algorithms for computing a strong
   rank-revealing QR factorization", SIAM J. Sci. Comput. 17(4) (1996) 848-869.
.. [K66] W. Kahan, "Numerical linear algebra", Canad. Math. Bull. 9 (1966).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from rnla._validation import as_float_array, check_int, check_real

__all__ = ["CURBound", "cur_bound", "id_bound", "rrqr_growth", "strong_rrqr_bound"]


def _nonneg(value, name: str) -> float:
    return check_real(value, name, lower=0, open_left=False)


def _rank_in(rank, n) -> tuple[int, int]:
    n = check_int(n, "n", minimum=1)
    k = check_int(rank, "rank", minimum=1, maximum=n)
    return k, n


def id_bound(eps, rank, n, /, *, growth=2.0) -> float:
    r"""Error bound of an interpolative decomposition built on an accurate subspace.

    Parameters
    ----------
    eps : float
        :math:`\varepsilon = \|A(I - P_X)\|` (spectral or Frobenius): the distance of
        ``A`` from the row space of the interpolation matrix. For the randomized ID
        this is the error of the underlying range approximation (HMT's
        :math:`\|A - QQ^* A\|`), ``>= 0``.
    rank : int
        ``k``, the number of selected columns, ``1 <= rank <= n``.
    n : int
        Number of columns selected from (for a row ID, the number of rows).
    growth : float, default=2.0
        Bound ``f >= 0`` on the interpolation coefficients, :math:`\max_{ij}|T_{ij}|
        \le f`. ``f = 2`` is the value HMT use (a strong rank-revealing QR with
        ``f = 2`` guarantees it); plain QRCP does **not** guarantee any constant (see
        Notes), so pass the observed ``np.abs(X).max()`` for an a-posteriori bound.

    Returns
    -------
    float
        :math:`\bigl[1 + \sqrt{1 + f^2 k (n - k)}\bigr]\,\varepsilon`, an upper bound
        on :math:`\|A - A[:, J]\,X\|` in the same norm as ``eps``.

    Raises
    ------
    TypeError
        Non-numeric ``eps``/``growth`` or non-integer ``rank``/``n``.
    ValueError
        ``eps`` or ``growth`` negative or not finite; ``rank`` outside ``[1, n]``.

    Notes
    -----
    **Statement** (Halko-Martinsson-Tropp [1]_, Lemma 5.1, in the column form). Let
    :math:`X = [I_k\ \ T]\Pi^T` with ``X[:, J] = I`` and
    :math:`\varepsilon = \|A(I - P_X)\|`. Then

    .. math::

        \varepsilon \le \|A - A[:, J]\,X\| \le (1 + \|X\|_2)\,\varepsilon
        \le \bigl[1 + \sqrt{1 + f^2 k(n-k)}\bigr]\,\varepsilon .

    *Proof.* :math:`A P_X = A X^\dagger X` and ``X[:, J] = I`` give
    :math:`(A P_X)[:, J] = A X^\dagger`, so :math:`(AP_X)[:, J] X = A P_X` and
    :math:`A - A[:, J]X = E - E[:, J]X` with :math:`E = A(I - P_X)`; then
    :math:`\|E[:, J] X\| \le \|E\|\|X\|_2` (both norms). The lower bound holds because
    the rows of :math:`A[:, J]X` lie in the row space of ``X``. Finally
    :math:`XX^T = I + TT^T`, so :math:`\|X\|_2 = \sqrt{1 + \|T\|_2^2} \le
    \sqrt{1 + \|T\|_F^2} \le \sqrt{1 + f^2 k(n-k)}`.

    In HMT's setting (row ID of an orthonormal basis ``Q`` of :math:`m \times k`, exact
    because ``Q`` has ``k`` columns) ``eps`` is :math:`\|A - QQ^*A\|` and ``n`` is
    ``m``. For :func:`rnla.interpolative` the row space of ``X`` is that of the
    truncated QRCP of the sketch, and the inequality holds for every draw.

    **Limits.** Column-pivoted QR keeps :math:`|R_{jj}|` decreasing but not
    :math:`|T_{ij}|` small: on Kahan's matrix (Kahan 1966) the coefficients grow
    exponentially with ``k`` (``tests/bounds/test_cur_bounds.py`` shows it), so
    ``growth=2`` is only justified for a strong RRQR (Gu-Eisenstat 1996, see
    :func:`strong_rrqr_bound`).

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, SIAM Rev. 53 (2011), Lemma 5.1.

    Examples
    --------
    >>> round(id_bound(1e-3, 2, 10), 6)
    0.009062
    """
    eps = _nonneg(eps, "eps")
    k, n = _rank_in(rank, n)
    f = _nonneg(growth, "growth")
    return (1.0 + math.sqrt(1.0 + f * f * k * (n - k))) * eps


def strong_rrqr_bound(sigma_next, rank, n, /, *, f=2.0) -> float:
    r"""Gu-Eisenstat bound on the error of a strong rank-revealing QR (and its ID).

    Parameters
    ----------
    sigma_next : float
        :math:`\sigma_{k+1}(M) \ge 0` of the factored matrix (0 if ``rank == n``).
    rank : int
        ``k``, ``1 <= rank <= n``.
    n : int
        Number of columns of ``M``.
    f : float, default=2.0
        Strong RRQR parameter, ``f >= 1``: the factorisation must satisfy
        :math:`\rho(R, k) \le f` (:func:`rrqr_growth`).

    Returns
    -------
    float
        :math:`\sqrt{1 + f^2 k(n-k)}\;\sigma_{k+1}(M)`, an upper bound on
        :math:`\|R_{22}\|_2 = \|M - M[:, J] X\|_2` for the column ID
        :math:`X = [I\ \ R_{11}^{-1}R_{12}]\Pi^T` of the factorisation.

    Raises
    ------
    TypeError
        Non-numeric ``sigma_next``/``f``, non-integer ``rank``/``n``.
    ValueError
        ``sigma_next < 0`` or not finite, ``rank`` outside ``[1, n]``, ``f < 1``.

    Notes
    -----
    For :math:`M \Pi = Q \begin{bmatrix} R_{11} & R_{12}\\ 0 & R_{22}\end{bmatrix}`
    with :math:`R_{11}` of order ``k``, Gu and Eisenstat define (their eq. (7))

    .. math::

        \rho(R, k) = \max_{i,j} \sqrt{(R_{11}^{-1}R_{12})_{ij}^2
        + \bigl(\gamma_j(R_{22}) / \omega_i(R_{11})\bigr)^2},

    :math:`\gamma_j` the column norms of :math:`R_{22}` and :math:`1/\omega_i` the row
    norms of :math:`R_{11}^{-1}`. Theorem 3.2 [1]_: if :math:`\rho(R, k) \le f` then for
    all ``i`` and ``j``

    .. math::

        \sigma_i(R_{11}) \ge \frac{\sigma_i(M)}{\sqrt{1 + f^2 k(n-k)}}, \qquad
        \sigma_j(R_{22}) \le \sigma_{k+j}(M)\sqrt{1 + f^2 k(n-k)} .

    A strong RRQR with any ``f > 1`` exists and costs :math:`O(mn^2)` (their
    Algorithm 4). **Plain QRCP does not guarantee** :math:`\rho \le f` for any constant
    ``f``: on Kahan's matrix it makes no pivoting and :math:`\|R_{22}\|_2 /
    \sigma_{k+1}` grows exponentially in ``k``, so this bound fails for it with
    ``f = 2``; it holds with ``f = rrqr_growth(R, k)`` whatever the pivoting.

    References
    ----------
    .. [1] M. Gu and S. C. Eisenstat, SIAM J. Sci. Comput. 17(4) (1996), Theorem 3.2.

    Examples
    --------
    >>> round(strong_rrqr_bound(1e-3, 2, 10), 6)
    0.008062
    """
    sigma = _nonneg(sigma_next, "sigma_next")
    k, n = _rank_in(rank, n)
    f = _nonneg(f, "f")
    if f < 1.0:
        raise ValueError(f"f={f} must be >= 1 (a strong RRQR needs f >= 1, Gu-Eisenstat)")
    return math.sqrt(1.0 + f * f * k * (n - k)) * sigma


def rrqr_growth(R, rank, /) -> float:
    r"""Gu-Eisenstat growth quantity :math:`\rho(R, k)` of a computed QR factorisation.

    Parameters
    ----------
    R : array_like, shape (l, n)
        Upper-trapezoidal factor of :math:`M\Pi = QR` (columns already permuted), e.g.
        from ``scipy.linalg.qr(M, mode="r", pivoting=True)``.
    rank : int
        ``k``, ``1 <= rank <= min(l, n)``.

    Returns
    -------
    float
        :math:`\rho(R, k)` as defined in :func:`strong_rrqr_bound` (0 when
        ``k == n``; ``inf`` if :math:`R_{11}` is singular). The factorisation is a strong
        RRQR with parameter ``f`` iff :math:`\rho \le f`.

    Raises
    ------
    TypeError
        Complex or non-numeric ``R``; non-integer ``rank``.
    ValueError
        ``R`` not 2-D, empty, non-finite or with nonzeros below the diagonal (relative
        to its norm); ``rank`` out of range.

    Notes
    -----
    Cost: a triangular solve with ``n`` right-hand sides, :math:`O(k^2 n)` flops,
    computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> rrqr_growth(np.array([[2.0, 1.0], [0.0, 0.5]]), 1)
    0.5590169943749475
    """
    R = as_float_array(R, name="R", ndim=2).astype(np.float64, copy=False)
    ell, n = R.shape
    k = check_int(rank, "rank", minimum=1, maximum=min(ell, n))
    scale = float(np.max(np.abs(R)))
    if np.max(np.abs(np.tril(R, -1)), initial=0.0) > 1e-12 * scale:
        raise ValueError("R must be upper trapezoidal (the R factor of a QR factorisation)")
    if k == n:
        return 0.0
    R11 = R[:k, :k]
    if np.any(np.diagonal(R11) == 0):
        return math.inf
    T = sla.solve_triangular(R11, R[:k, k:], check_finite=False)
    inv = sla.solve_triangular(R11, np.eye(k), check_finite=False)
    inv_row = np.linalg.norm(inv, axis=1)  # 1 / omega_i
    gamma = np.linalg.norm(R[k:, k:], axis=0) if ell > k else np.zeros(n - k)
    return float(np.sqrt(np.max(T**2 + np.outer(inv_row, gamma) ** 2)))


class CURBound(NamedTuple):
    r"""Right-hand side of the deterministic CUR inequality.

    Attributes
    ----------
    value : float
        ``column_term + row_term``, an upper bound on :math:`\|A - CUR\|` for
        :math:`U = C^\dagger A R^\dagger`.
    column_term : float
        :math:`\|(I - CC^\dagger)A\|`.
    row_term : float
        :math:`\|A(I - R^\dagger R)\|`.
    norm : int or str
        The norm: ``2`` or ``"fro"``.
    """

    value: float
    column_term: float
    row_term: float
    norm: int | str


def _orth(B: np.ndarray) -> np.ndarray:
    """Orthonormal basis of range(B) with the numerical-rank cut-off of ``orth``."""
    if B.shape[1] == 0:
        return np.zeros((B.shape[0], 0))
    return sla.orth(B)


def _norm(E: np.ndarray, norm) -> float:
    if E.size == 0:
        return 0.0
    if norm == "fro":
        return float(np.linalg.norm(E))
    return float(sla.svdvals(E)[0])


def cur_bound(A, C, R, /, *, norm="fro") -> CURBound:
    r"""Deterministic bound :math:`\|A - CUR\| \le \|(I-CC^\dagger)A\| + \|A(I-R^\dagger R)\|`.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix, shape (m, n)
        The matrix (sparse input is densified: :math:`mn` memory).
    C : array_like, shape (m, c)
        Column factor (typically ``A[:, cols]``; any matrix works).
    R : array_like, shape (r, n)
        Row factor (typically ``A[rows, :]``).
    norm : {"fro", 2}, default="fro"
        Frobenius or spectral norm.

    Returns
    -------
    CURBound
        ``(value, column_term, row_term, norm)``.

    Raises
    ------
    TypeError
        Complex or non-numeric input.
    ValueError
        Shapes that do not chain (``C`` must have ``m`` rows and ``R`` ``n`` columns),
        empty or non-finite input, unknown ``norm``.

    Notes
    -----
    **Assumption:** the core is :math:`U = C^\dagger A R^\dagger` (what
    :func:`rnla.cur` returns). Other cores, e.g. the cross approximation
    :math:`U = A[I, J]^{-1}`, are not covered and can exceed the bound.

    *Proof.* :math:`A - CC^\dagger A R^\dagger R = (I - CC^\dagger)A +
    CC^\dagger A (I - R^\dagger R)` and :math:`\|CC^\dagger\|_2 \le 1` (orthogonal
    projector); the triangle inequality gives the bound in every unitarily invariant
    norm. Each term is itself a lower bound on the error of any approximation whose
    column (row) space is that of ``C`` (``R``).

    Cost: orthonormal bases of ``C`` and :math:`R^T` by SVD (:math:`O(mc^2 + nr^2)`),
    two products with ``A`` (:math:`O(mn(c + r))`), and an SVD of the residuals for
    ``norm=2`` (:math:`O(mn\min(m, n))`). Computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.arange(12.0).reshape(3, 4)
    >>> b = cur_bound(A, A[:, :2], A[:2, :])
    >>> b.value < 1e-10
    True
    """
    if norm not in ("fro", 2) or isinstance(norm, bool):
        raise ValueError(f"norm={norm!r} is not one of 'fro', 2")
    if sp.issparse(A):
        A = A.toarray()
    A = as_float_array(A, name="A", ndim=2).astype(np.float64, copy=False)
    C = as_float_array(C, name="C", ndim=2).astype(np.float64, copy=False)
    R = as_float_array(R, name="R", ndim=2).astype(np.float64, copy=False)
    m, n = A.shape
    if C.shape[0] != m:
        raise ValueError(f"C must have m={m} rows like A {A.shape}, got C.shape={C.shape}")
    if R.shape[1] != n:
        raise ValueError(f"R must have n={n} columns like A {A.shape}, got R.shape={R.shape}")
    Qc = _orth(C)
    Qr = _orth(R.T)
    col = _norm(A - Qc @ (Qc.T @ A), norm)
    row = _norm(A - (A @ Qr) @ Qr.T, norm)
    return CURBound(col + row, col, row, norm)
