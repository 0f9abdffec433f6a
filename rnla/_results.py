"""Result types shared by the randomized low-rank algorithms.

Every multi-part result of :mod:`rnla` low-rank routines is one of the
:class:`~typing.NamedTuple` classes below, so that the factors can be unpacked
(``U, s, Vt = rsvd(A, 10)``) or accessed by name (``res.U``). All floating
arrays have the result dtype of the input (float32 in, float32 out; float64
otherwise); index arrays are ``int64``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CURResult",
    "CholeskyResult",
    "CrossResult",
    "EighResult",
    "IDResult",
    "QBResult",
    "SVDResult",
]


class SVDResult(NamedTuple):
    r"""Truncated singular value decomposition :math:`A \approx U \operatorname{diag}(s) V^T`.

    Attributes
    ----------
    U : ndarray, shape (m, r)
        Left singular vectors, orthonormal columns.
    s : ndarray, shape (r,)
        Singular values, non-negative and sorted in descending order.
    Vt : ndarray, shape (r, n)
        Right singular vectors (transposed), orthonormal rows.
    """

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray


class EighResult(NamedTuple):
    r"""Truncated symmetric eigendecomposition :math:`A \approx V \operatorname{diag}(w) V^T`.

    Attributes
    ----------
    eigenvalues : ndarray, shape (r,)
        Eigenvalues, sorted in descending order (the producing function documents
        whether the order is by value or by magnitude).
    eigenvectors : ndarray, shape (n, r)
        Orthonormal eigenvectors; column ``i`` belongs to ``eigenvalues[i]``.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray


class QBResult(NamedTuple):
    r"""Low-rank QB factorisation :math:`A \approx Q B`.

    Attributes
    ----------
    Q : ndarray, shape (m, r)
        Orthonormal basis of the approximate range of ``A``.
    B : ndarray, shape (r, n)
        Projected matrix :math:`B = Q^T A`.
    error : float
        Achieved relative Frobenius error :math:`\|A - QB\|_F / \|A\|_F`, from exact
        bookkeeping :math:`\|A - QB\|_F^2 = \|A\|_F^2 - \|B\|_F^2`.
    """

    Q: np.ndarray
    B: np.ndarray
    error: float


class CholeskyResult(NamedTuple):
    r"""Low-rank (partial) Cholesky factorisation :math:`A \approx F F^T`.

    Attributes
    ----------
    F : ndarray, shape (n, r)
        Factor with :math:`A \approx F F^T`.
    pivots : ndarray of int64, shape (r,)
        Pivot indices, in the order they were selected.
    """

    F: np.ndarray
    pivots: np.ndarray


class IDResult(NamedTuple):
    r"""Interpolative decomposition.

    For ``axis=1`` (column ID), :math:`A \approx A[:, \mathrm{indices}] X` with ``X`` of
    shape (r, n); for ``axis=0`` (row ID), :math:`A \approx X A[\mathrm{indices}, :]`
    with ``X`` of shape (m, r).

    Attributes
    ----------
    indices : ndarray of int64, shape (r,)
        Selected column (``axis=1``) or row (``axis=0``) indices.
    X : ndarray, shape (r, n) or (m, r)
        Interpolation matrix.
    """

    indices: np.ndarray
    X: np.ndarray


class CURResult(NamedTuple):
    r"""CUR decomposition :math:`A \approx A[:, \mathrm{cols}]\, U\, A[\mathrm{rows}, :]`.

    Attributes
    ----------
    cols : ndarray of int64, shape (c,)
        Selected column indices.
    U : ndarray, shape (c, r)
        Core matrix.
    rows : ndarray of int64, shape (r,)
        Selected row indices.
    """

    cols: np.ndarray
    U: np.ndarray
    rows: np.ndarray


class CrossResult(NamedTuple):
    r"""Cross (skeleton) approximation :math:`A \approx U V^T` of rank r.

    Attributes
    ----------
    U : ndarray, shape (m, r)
        Left factor.
    V : ndarray, shape (n, r)
        Right factor.
    rows : ndarray of int64, shape (r,)
        Pivot rows, in selection order.
    cols : ndarray of int64, shape (r,)
        Pivot columns, in selection order.
    """

    U: np.ndarray
    V: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
