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


class _SVDResultFields(NamedTuple):
    """Fields of :class:`SVDResult`."""

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray


class SVDResult(_SVDResultFields):
    r"""Truncated singular value decomposition :math:`A \approx U \operatorname{diag}(s) V^T`.

    Attributes
    ----------
    U : ndarray, shape (m, r)
        Left singular vectors, orthonormal columns.
    s : ndarray, shape (r,)
        Singular values, non-negative and sorted in descending order.
    Vt : ndarray, shape (r, n)
        Right singular vectors (transposed), orthonormal rows.
    n_passes : int or None
        Attribute, not a field (unpacking is unchanged): passes over ``A`` made by the
        producing function (products with ``A`` or ``A^T``; with dask input, one fused
        pass may give both), ``None`` where not counted.
    """

    n_passes: int | None = None


class _EighResultFields(NamedTuple):
    """Fields of :class:`EighResult`."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray


class EighResult(_EighResultFields):
    r"""Truncated symmetric eigendecomposition :math:`A \approx V \operatorname{diag}(w) V^T`.

    Attributes
    ----------
    eigenvalues : ndarray, shape (r,)
        Eigenvalues, sorted in descending order (the producing function documents
        whether the order is by value or by magnitude).
    eigenvectors : ndarray, shape (n, r)
        Orthonormal eigenvectors; column ``i`` belongs to ``eigenvalues[i]``.
    n_passes : int or None
        Attribute, not a field (unpacking is unchanged): passes over ``A`` made by the
        producing function (products with ``A`` or ``A^T``; with dask input, one fused
        pass may give both), ``None`` where not counted.
    """

    n_passes: int | None = None


class _QBResultFields(NamedTuple):
    """Fields of :class:`QBResult`."""

    Q: np.ndarray
    B: np.ndarray
    error: float


class QBResult(_QBResultFields):
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
    n_passes : int or None
        Attribute, not a field (unpacking is unchanged): passes over ``A`` made by the
        producing function (products with ``A`` or ``A^T``; with dask input, one fused
        pass may give both), ``None`` where not counted.
    """

    n_passes: int | None = None


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


def _with_passes(result, n_passes):
    """Attach the pass count to a result (an attribute, so the arity is unchanged)."""
    result.n_passes = None if n_passes is None else int(n_passes)
    return result
