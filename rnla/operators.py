r"""Operator protocols: products through LinearOperator, entries through EntryMatrix.

Algorithms in :mod:`rnla` touch a matrix in one of two ways.

**Products.** Range finders, Krylov methods and trace estimators need only
:math:`A x` and :math:`A^T y`. They accept an ndarray, a ``scipy.sparse`` array or
matrix, a :class:`scipy.sparse.linalg.LinearOperator`, an object with an
``as_linear_operator()`` method, or a ``dask.array.Array``, all through one private
wrapper (validation, products in the input's dtype, rows and columns where the input
allows it, and a count of the passes over the data); dask is imported only when the
input already is a dask array. :func:`as_linear_operator` (a validating wrapper of
:func:`scipy.sparse.linalg.aslinearoperator`) gives the same view as a public
``LinearOperator``. :func:`dot_test` checks that an operator's
adjoint is consistent with its forward map.

**Entries.** RPCholesky, adaptive cross approximation, CUR and TT-cross read individual
entries, rows and columns, and never need the whole matrix. They accept any object that
satisfies the :class:`EntryMatrix` protocol, so they can factor a matrix that is never
formed (a kernel matrix, :class:`KernelMatrix`; a softmax attention matrix,
``attention.SoftmaxMatrix``).

**The EntryMatrix protocol.** An object ``M`` representing an ``m x n`` real matrix
satisfies the protocol when it has:

``M.shape : tuple[int, int]``
    ``(m, n)``, both at least 1.
``M.dtype : numpy.dtype``
    ``float32`` or ``float64``; every array returned below has exactly this dtype.
``M.n_evaluations : int``
    Number of matrix entries delivered so far, counted per call: ``diag()`` adds
    ``min(m, n)``, ``rows(idx)`` adds ``len(idx) * n``, ``cols(idx)`` adds
    ``m * len(idx)``, ``entries(i, j)`` adds ``len(i)``. Repeated indices count every
    time. Algorithms report it as their cost in kernel evaluations.
``M.reset_count() -> None``
    Set ``n_evaluations`` back to 0.
``M.diag() -> ndarray, shape (min(m, n),)``
    The main diagonal ``M[k, k]``.
``M.rows(idx) -> ndarray, shape (len(idx), n)``
    The rows ``M[idx, :]``, C-contiguous.
``M.cols(idx) -> ndarray, shape (m, len(idx))``
    The columns ``M[:, idx]``.
``M.entries(i, j) -> ndarray, shape (len(i),)``
    The elementwise pairs ``M[i[k], j[k]]``; ``i`` and ``j`` have equal lengths.

Index arguments are validated at the boundary by :func:`check_indices`: a 1-D
array-like of integers (a scalar integer is treated as a length-1 array; an empty
sequence gives an empty block). Every index must satisfy ``0 <= index < size``:
**negative indices are rejected** with :class:`ValueError` rather than wrapped, because
in pivoted factorizations a negative index is almost always a bug. Boolean masks and
floating-point arrays are rejected with :class:`TypeError`. Returned arrays are fresh:
the caller may write into them without affecting the matrix.

Implementations may subclass :class:`EntryMatrixBase`, which provides validation,
counting and the attributes, leaving only ``_rows``, ``_cols``, ``_entries`` and
``_diag`` to write. :class:`DenseEntries` wraps an ndarray; :class:`KernelMatrix`
evaluates kernel matrices block by block in Numba without forming them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from rnla._kernels.kernel_matrix import (
    EXP,
    GAUSSIAN,
    LAPLACIAN,
    POLYNOMIAL,
    _gaussian_matmat,
    _gram_transform,
    _kernel_pairs,
    _laplacian_block,
)
from rnla._kernels.sparse import sparse_matmat
from rnla._validation import (
    as_float_array,
    as_operator,
    as_sparse,
    check_int,
    check_rng,
    float_dtype,
    result_dtype,
)

__all__ = [
    "DenseEntries",
    "DotTestResult",
    "EntryMatrix",
    "EntryMatrixBase",
    "KernelMatrix",
    "KernelOverflowError",
    "as_linear_operator",
    "check_indices",
    "dot_test",
]


# ---------------------------------------------------------------------------------------
# LinearOperator helpers
# ---------------------------------------------------------------------------------------


def as_linear_operator(A, *, name: str = "A") -> LinearOperator:
    """Return ``A`` as a validated :class:`scipy.sparse.linalg.LinearOperator`.

    Parameters
    ----------
    A : array_like, scipy.sparse array or matrix, LinearOperator, or EntryMatrix
        A 2-D real matrix. Dense and sparse inputs are checked (real, finite, non-empty)
        and wrapped with :func:`scipy.sparse.linalg.aslinearoperator` without copying
        (unless the dtype contract requires a cast). An object with an
        ``as_linear_operator()`` method (:class:`DenseEntries`, :class:`KernelMatrix`)
        is converted through that method.
    name : str, default="A"
        Name used in error messages.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        Operator of shape ``A.shape`` and dtype ``float32`` or ``float64``.

    Raises
    ------
    TypeError
        Complex, object or otherwise unsupported input.
    ValueError
        Not 2-D, empty, or non-finite entries.

    Notes
    -----
    Wrapping costs no flops; the finiteness check reads every stored entry once.
    Products through the returned operator cost what they cost for ``A`` itself.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.operators import as_linear_operator
    >>> op = as_linear_operator(np.ones((3, 2)))
    >>> op.shape, (op @ np.ones(2)).shape
    ((3, 2), (3,))
    """
    from rnla._dask import is_dask_array

    if is_dask_array(A):
        return _wrap(A, name=name).linear_operator()
    if _has_linear_operator(A):
        return as_operator(A.as_linear_operator(), name=name)
    return as_operator(A, name=name)


class DotTestResult(NamedTuple):
    r"""Outcome of :func:`dot_test`.

    Attributes
    ----------
    passed : bool
        ``max_relative_gap <= rtol``.
    max_relative_gap : float
        Largest observed :math:`|\langle A x, y\rangle - \langle x, A^T y\rangle|`
        divided by :math:`\max(\|Ax\|\|y\|, \|x\|\|A^T y\|)`; ``inf`` if the
        operator returned non-finite values.
    """

    passed: bool
    max_relative_gap: float


def _adjoint_gaps(X, Y, AX, ATY) -> np.ndarray:
    """Relative gaps for every probe pair (columns of X, columns of Y)."""
    AX = np.asarray(AX, dtype=np.float64).reshape(Y.shape[0], -1)
    ATY = np.asarray(ATY, dtype=np.float64).reshape(X.shape[0], -1)
    if not (np.isfinite(AX).all() and np.isfinite(ATY).all()):
        return np.array([np.inf])
    with np.errstate(over="ignore", invalid="ignore"):
        forward = Y.T @ AX  # [b, a] = <A x_a, y_b>
        backward = ATY.T @ X  # [b, a] = <A^T y_b, x_a>
        # Cauchy-Schwarz bounds both inner products: a scale that cannot vanish by chance.
        scale = np.maximum(
            np.linalg.norm(Y, axis=0)[:, None] * np.linalg.norm(AX, axis=0)[None, :],
            np.linalg.norm(ATY, axis=0)[:, None] * np.linalg.norm(X, axis=0)[None, :],
        )
        gap = np.abs(forward - backward)
        # scale == 0 forces both inner products to 0, hence a zero gap.
        rel = np.divide(gap, scale, out=np.zeros_like(gap), where=scale > 0)
    return np.where(np.isfinite(rel), rel, np.inf)


def dot_test(A, *, n_trials: int = 3, rtol: float | None = None, rng=None) -> DotTestResult:
    r"""Check that an operator's adjoint matches its forward map (the dot test).

    For random probes :math:`x` and :math:`y`, an exact adjoint gives
    :math:`\langle A x, y\rangle = \langle x, A^T y\rangle`. The test passes when the
    relative gap

    .. math::

        \frac{|\langle A x, y\rangle - \langle x, A^T y\rangle|}
             {\max(\|Ax\|_2 \|y\|_2,\ \|x\|_2 \|A^T y\|_2)}

    is at most ``rtol`` for every probe. Each trial checks ``matvec``/``rmatvec`` on
    one vector pair and ``matmat``/``rmatmat`` on a pair of 2-column blocks (all 4
    column pairs).

    Parameters
    ----------
    A : array_like, scipy.sparse array or matrix, LinearOperator, or EntryMatrix
        Operator of shape ``(m, n)``, rectangular allowed; converted with
        :func:`as_linear_operator`.
    n_trials : int, default=3
        Number of independent probe draws.
    rtol : float, optional
        Tolerance on the relative gap. Default ``sqrt(eps)`` of the operator's dtype
        (``1.5e-8`` for float64, ``3.5e-4`` for float32).
    rng : None, int, SeedSequence or Generator, optional
        Source of the standard normal float64 probes.

    Returns
    -------
    DotTestResult
        ``(passed, max_relative_gap)``.

    Raises
    ------
    TypeError
        Unsupported operator type or non-integer ``n_trials``.
    ValueError
        ``n_trials < 1`` or ``rtol`` not a positive finite number.

    Notes
    -----
    Cost per trial: 3 products with :math:`A` and 3 with :math:`A^T` (one vector and a
    2-column block each), plus :math:`O(m + n)` flops. The denominator is the
    Cauchy-Schwarz bound on both inner products, so a correct adjoint evaluated in
    floating point gives a gap of the order of the rounding error of one product
    (about :math:`\sqrt{n}\,\epsilon` for random rounding), whereas a wrong adjoint
    gives a gap of order 1 for generic probes. This is the adjoint test of PyLops [1]_.

    References
    ----------
    .. [1] M. Ravasi and I. Vasconcelos, "PyLops - A linear-operator Python library
       for scalable algebra and optimization", SoftwareX 11, 2020.
       https://doi.org/10.1016/j.softx.2019.100361

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.operators import dot_test
    >>> res = dot_test(np.arange(6.0).reshape(2, 3), rng=0)
    >>> bool(res.passed)
    True
    """
    op = as_linear_operator(A)
    n_trials = check_int(n_trials, "n_trials", minimum=1)
    dtype = float_dtype(op.dtype if op.dtype is not None else np.float64)
    if rtol is None:
        rtol = float(np.sqrt(np.finfo(dtype).eps))
    else:
        rtol = _check_real(rtol, "rtol", positive=True)
    rng = check_rng(rng)
    m, n = op.shape
    worst = 0.0
    for _ in range(n_trials):
        x = rng.standard_normal(n)
        y = rng.standard_normal(m)
        gaps = _adjoint_gaps(x[:, None], y[:, None], op.matvec(x), op.rmatvec(y))
        worst = max(worst, float(gaps.max()))
        X = rng.standard_normal((n, 2))
        Y = rng.standard_normal((m, 2))
        gaps = _adjoint_gaps(X, Y, op.matmat(X), op.rmatmat(Y))
        worst = max(worst, float(gaps.max()))
    return DotTestResult(passed=bool(worst <= rtol), max_relative_gap=worst)


def _check_real(value, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or (positive and value <= 0):
        want = "a positive finite number" if positive else "finite"
        raise ValueError(f"{name}={value} must be {want}")
    return value


# ---------------------------------------------------------------------------------------
# EntryMatrix protocol
# ---------------------------------------------------------------------------------------


def check_indices(idx, size: int, *, name: str = "idx") -> np.ndarray:
    """Validate indices into an axis of length ``size``.

    Parameters
    ----------
    idx : int or 1-D array_like of int
        Indices. A scalar integer is treated as a length-1 array; an empty sequence is
        allowed.
    size : int
        Length of the indexed axis.
    name : str, default="idx"
        Name used in error messages.

    Returns
    -------
    numpy.ndarray of numpy.intp, shape (len(idx),)
        The indices; ``idx`` itself (not a copy) when it already has this dtype.

    Raises
    ------
    TypeError
        Boolean, floating-point or non-numeric indices.
    ValueError
        More than one dimension, or an index outside ``0 <= index < size`` (negative
        indices are rejected, not wrapped).

    Examples
    --------
    >>> from rnla.operators import check_indices
    >>> check_indices([2, 0], 3).tolist()
    [2, 0]
    """
    arr = np.asarray(idx)
    if arr.dtype == np.bool_:
        raise TypeError(
            f"{name} must contain integer indices, got a boolean array; "
            "convert a mask with np.flatnonzero(mask)"
        )
    if arr.ndim > 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        # np.asarray([]) is float64: an empty list is still a valid (empty) selection.
        return np.empty(0, dtype=np.intp)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must contain integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.min() < 0:
        pos = int(np.argmax(arr < 0))
        raise ValueError(
            f"{name}[{pos}]={arr[pos]} is negative: indices must satisfy "
            f"0 <= {name} < {size} (negative indices are not wrapped)"
        )
    if arr.max() >= size:
        pos = int(np.argmax(arr >= size))
        raise ValueError(
            f"{name}[{pos}]={arr[pos]} is out of range: indices must satisfy 0 <= {name} < {size}"
        )
    return np.ascontiguousarray(arr, dtype=np.intp)


@runtime_checkable
class EntryMatrix(Protocol):
    """Structural type of a matrix accessed through its entries.

    See the module docstring for the full contract (shapes, dtype, counting, index
    validation). ``isinstance(M, EntryMatrix)`` checks that the attributes and methods
    exist, not their behaviour.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``.
    dtype : numpy.dtype
        ``float32`` or ``float64``.
    n_evaluations : int
        Entries delivered since construction or the last :meth:`reset_count`.
    """

    shape: tuple[int, int]
    dtype: np.dtype
    n_evaluations: int

    def diag(self) -> np.ndarray:
        """Return the main diagonal, shape ``(min(m, n),)``."""
        ...

    def rows(self, idx) -> np.ndarray:
        """Return the rows ``M[idx, :]``, shape ``(len(idx), n)``."""
        ...

    def cols(self, idx) -> np.ndarray:
        """Return the columns ``M[:, idx]``, shape ``(m, len(idx))``."""
        ...

    def entries(self, i, j) -> np.ndarray:
        """Return the entries ``M[i[k], j[k]]``, shape ``(len(i),)``."""
        ...

    def reset_count(self) -> None:
        """Set ``n_evaluations`` to 0."""
        ...


class EntryMatrixBase:
    """Base class implementing the :class:`EntryMatrix` boilerplate.

    Subclasses call ``super().__init__(shape, dtype)`` and implement ``_rows(idx)``,
    ``_cols(idx)``, ``_entries(i, j)`` and ``_diag()``, which receive validated
    :data:`numpy.intp` index arrays and must return fresh arrays of dtype
    ``self.dtype``. The public methods validate indices with :func:`check_indices`
    and update ``n_evaluations`` after each successful call.

    Parameters
    ----------
    shape : tuple of int
        ``(m, n)`` with ``m, n >= 1``.
    dtype : dtype-like
        ``float32`` or ``float64``.
    """

    def __init__(self, shape: tuple[int, int], dtype) -> None:
        m, n = (int(s) for s in shape)
        if m < 1 or n < 1:
            raise ValueError(f"shape must have both dimensions >= 1, got {shape}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self._shape = (m, n)
        self._dtype = dtype
        self.n_evaluations = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """Dtype of every returned block."""
        return self._dtype

    def reset_count(self) -> None:
        """Set the entry counter ``n_evaluations`` to 0."""
        self.n_evaluations = 0

    def diag(self) -> np.ndarray:
        """Return the main diagonal ``M[k, k]``, shape ``(min(m, n),)``."""
        out = self._diag()
        self.n_evaluations += min(self._shape)
        return out

    def rows(self, idx) -> np.ndarray:
        """Return the rows ``M[idx, :]``, shape ``(len(idx), n)``, C-contiguous."""
        idx = check_indices(idx, self._shape[0], name="idx")
        out = self._rows(idx)
        self.n_evaluations += idx.size * self._shape[1]
        return out

    def cols(self, idx) -> np.ndarray:
        """Return the columns ``M[:, idx]``, shape ``(m, len(idx))``."""
        idx = check_indices(idx, self._shape[1], name="idx")
        out = self._cols(idx)
        self.n_evaluations += idx.size * self._shape[0]
        return out

    def entries(self, i, j) -> np.ndarray:
        """Return the entries ``M[i[k], j[k]]``, shape ``(len(i),)``."""
        i = check_indices(i, self._shape[0], name="i")
        j = check_indices(j, self._shape[1], name="j")
        if i.shape != j.shape:
            raise ValueError(
                f"i and j must have the same length, got len(i)={i.size} and len(j)={j.size}"
            )
        out = self._entries(i, j)
        self.n_evaluations += i.size
        return out

    def _rows(self, idx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cols(self, idx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _entries(self, i, j):  # pragma: no cover - abstract
        raise NotImplementedError

    def _diag(self):  # pragma: no cover - abstract
        raise NotImplementedError


class DenseEntries(EntryMatrixBase):
    """EntryMatrix view of a dense array.

    Parameters
    ----------
    A : array_like, shape (m, n)
        Real, finite matrix. It is **copied** (and cast under the dtype contract) into
        a read-only array at construction, so later changes to the caller's array do
        not affect this object.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``.
    dtype : numpy.dtype
        ``float32`` for float32 (or float16) input, ``float64`` otherwise.
    n_evaluations : int
        Entries delivered so far (see the module docstring).

    Raises
    ------
    TypeError
        Sparse, complex or non-numeric input.
    ValueError
        Not 2-D, empty, or non-finite entries.

    Notes
    -----
    Memory :math:`mn` entries for the copy. ``rows``, ``cols`` and ``entries`` are
    NumPy fancy indexing: cost proportional to the number of entries returned. Useful
    as the reference implementation of the protocol and to run entry-based algorithms
    on explicit matrices.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.operators import DenseEntries
    >>> M = DenseEntries(np.arange(6.0).reshape(2, 3))
    >>> M.rows([1]).shape, M.cols([0, 2]).shape, M.diag().shape, M.n_evaluations
    ((1, 3), (2, 2), (2,), 9)
    """

    def __init__(self, A) -> None:
        A = as_float_array(A, name="A", ndim=2, copy=True)
        A.flags.writeable = False
        self._A = A
        super().__init__(A.shape, A.dtype)

    @property
    def array(self) -> np.ndarray:
        """The stored (read-only) matrix; reading it does not count as evaluations."""
        return self._A

    def __repr__(self) -> str:
        return f"DenseEntries(shape={self.shape}, dtype={self.dtype})"

    def _rows(self, idx):
        return self._A[idx]

    def _cols(self, idx):
        return np.ascontiguousarray(self._A[:, idx])

    def _entries(self, i, j):
        return self._A[i, j]

    def _diag(self):
        return np.diagonal(self._A).copy()

    def as_linear_operator(self) -> LinearOperator:
        """Return the matrix as a :class:`~scipy.sparse.linalg.LinearOperator`.

        Products are ordinary dense products (:math:`2mn` flops per vector) and are not
        counted in ``n_evaluations``.
        """
        return aslinearoperator(self._A)


# ---------------------------------------------------------------------------------------
# Kernel matrices
# ---------------------------------------------------------------------------------------

_KERNELS = {"gaussian": GAUSSIAN, "exp": EXP, "polynomial": POLYNOMIAL, "laplacian": LAPLACIAN}
_KERNEL_NAMES = {code: name for name, code in _KERNELS.items()}
# Entries of one streamed row block in KernelMatrix.as_linear_operator (8 MiB in float64).
_DEFAULT_BLOCK_ENTRIES = 1 << 20
# Pairs per call of a user kernel in entries(): f sees blocks, pairs are its diagonal.
_CALLABLE_PAIR_CHUNK = 64
_NO_NORMS = np.zeros(0)


def _readonly_view(a: np.ndarray) -> np.ndarray:
    out = a.view()
    out.flags.writeable = False
    return out


class KernelOverflowError(ValueError, OverflowError):
    """An entry of an unbounded kernel (exp, polynomial) overflows the result dtype.

    A ``ValueError`` (the project's error for input outside what can be computed) and,
    for code written against earlier versions, an ``OverflowError``. Raised by every
    :class:`KernelMatrix` evaluation that would otherwise return ``inf``; the message
    names the kernel, the dtype, its largest finite value and the remedies (rescale the
    points, lower ``scale``, or use float64).
    """


class KernelMatrix(EntryMatrixBase):
    r"""Kernel matrix :math:`K_{ij} = k(x_i, y_j)`, evaluated block by block.

    Implements the :class:`EntryMatrix` protocol without ever forming :math:`K`, so
    entry-based factorizations (RPCholesky, ACA, CUR) cost only the entries they read.

    Parameters
    ----------
    X : array_like, shape (m, d)
        Row points :math:`x_i`. Real and finite.
    Y : array_like, shape (n, d), optional
        Column points :math:`y_j`. ``None`` (default) means ``Y = X``: the square,
        symmetric matrix :math:`K(X, X)` (positive semidefinite for the Gaussian,
        Laplacian, exp and polynomial kernels with ``coef0 >= 0`` and ``scale > 0``).
    kernel : {"gaussian", "exp", "polynomial", "laplacian"} or callable, default="gaussian"
        The kernel:

        - ``"gaussian"``: :math:`\exp(-\|x - y\|_2^2 / (2 h^2))` with :math:`h` the
          bandwidth;
        - ``"exp"``: :math:`\exp(s \langle x, y\rangle)` with :math:`s` = ``scale`` (the
          unnormalised softmax kernel; see Notes on overflow);
        - ``"polynomial"``: :math:`(c + s \langle x, y\rangle)^p` with :math:`c` =
          ``coef0`` and :math:`p` = ``degree``;
        - ``"laplacian"``: :math:`\exp(-\|x - y\|_1 / h)`;
        - a callable ``f(Xa, Yb)`` taking arrays of shapes ``(a, d)`` and ``(b, d)`` and
          returning the ``(a, b)`` block; it is evaluated with NumPy semantics and is
          slower (see Notes).
    bandwidth : float, optional
        :math:`h > 0` for the Gaussian and Laplacian kernels. Default
        :math:`h = \sqrt{d}` (Gaussian) and :math:`h = d` (Laplacian): for
        standardised data, :math:`\|x - y\|_2^2 \approx 2d` and
        :math:`\|x - y\|_1 \approx 1.13 d`, so typical off-diagonal entries are of
        order :math:`e^{-1}`. This rule is deterministic and costs nothing, unlike the
        median heuristic; pass the median distance explicitly if you prefer it. Must be
        ``None`` for other kernels.
    degree : int, default=2
        Polynomial degree :math:`p \geq 1` (used by ``"polynomial"`` only).
    coef0 : float, default=1.0
        Polynomial offset :math:`c` (used by ``"polynomial"`` only).
    scale : float, default=1.0
        Inner-product scale :math:`s` (used by ``"exp"`` and ``"polynomial"``). Softmax
        attention uses :math:`s = 1/\sqrt{d}`.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``.
    dtype : numpy.dtype
        ``float32`` if ``X`` (and ``Y``) are float32, else ``float64``.
    n_evaluations : int
        Kernel entries delivered so far (see the module docstring); products through
        :meth:`as_linear_operator` add :math:`mn` each.
    X, Y : numpy.ndarray
        Read-only copies of the points (``Y is X`` when symmetric).
    symmetric : bool
        ``True`` when constructed with ``Y=None``.
    kernel : str or callable
        Kernel name or the user callable.
    bandwidth : float or None
        Bandwidth in use (Gaussian and Laplacian), else ``None``.

    Raises
    ------
    TypeError
        Complex or non-numeric points; ``kernel`` neither a known name nor callable;
        non-numeric parameters.
    ValueError
        Points not 2-D, empty or non-finite; ``X`` and ``Y`` with different numbers of
        features; unknown kernel name (the message lists the allowed names);
        non-positive bandwidth; ``bandwidth`` given for a kernel without one;
        ``degree < 1``. At evaluation: :class:`KernelOverflowError` (a ``ValueError``)
        when an entry of the exp or polynomial kernel overflows ``dtype``.

    Notes
    -----
    **Algorithm.** For the Gaussian, exp and polynomial kernels a block
    :math:`K_{IJ}` is computed as a Gram block :math:`G = X_I Y_J^T` with one BLAS GEMM
    (:math:`2|I||J|d` flops) followed by a Numba elementwise transform using the
    precomputed squared norms,
    :math:`\|x - y\|^2 = \|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` (clamped at 0), with
    one ``exp`` per entry. The Gaussian kernel is translation invariant, so the points
    are centred by their common mean at construction to limit the cancellation in this
    formula. The Laplacian kernel has no Gram form and costs :math:`3|I||J|d` flops in a
    Numba loop. ``entries(i, j)`` evaluates each pair directly in Numba from the
    coordinates (:math:`O(d)` flops per pair, accumulated in float64). For
    ``Y=None``, ``diag()`` is closed form (1 for Gaussian and Laplacian,
    :math:`e^{s\|x\|^2}` and :math:`(c + s\|x\|^2)^p` otherwise).

    **Cost and memory.** ``rows(idx)``: :math:`2|idx|\,n\,d` flops (GEMM) plus
    :math:`|idx|\,n` kernel transforms; memory :math:`|idx|\,n` for the output only.
    ``cols`` symmetrically. Storage: the points, :math:`O((m + n)d)`.

    **dtype.** float32 points give float32 entries; the Gram block is computed in
    float32, so the Gaussian entries have absolute error of order
    :math:`\epsilon\,(\|x\|^2 + \|y\|^2)/(2h^2)` (norms after centring).

    **Overflow.** The exp and polynomial kernels are unbounded: :math:`e^{s\langle x,
    y\rangle}` exceeds the largest float32 (float64) once :math:`s\langle x, y\rangle >
    88.7` (709.8). Rather than return ``inf``, every evaluation that overflows raises
    :class:`KernelOverflowError`, a ``ValueError`` (and, for code written against
    earlier versions, an ``OverflowError``) naming the kernel, the dtype and its
    largest finite value; rescale the points, lower ``scale`` or use float64. For
    softmax attention, ``attention.SoftmaxMatrix`` stabilises each row by its maximum
    and factors the symmetric lift as :math:`D\,G\,D` with a bounded Gaussian
    :math:`G`, which avoids the problem.

    **Callable kernels** are called once per block (``rows``, ``cols``, streamed
    products). ``entries`` and a ``diag`` call it on chunks of 64 pairs and keep the
    diagonal of each :math:`64 \times 64` block, i.e. 64 times the necessary work; the
    returned block is checked for shape and finiteness and cast to ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.operators import KernelMatrix
    >>> X = np.random.default_rng(0).standard_normal((5, 3))
    >>> K = KernelMatrix(X, kernel="gaussian")
    >>> K.shape, K.rows([0, 2]).shape, K.diag().shape, K.n_evaluations
    ((5, 5), (2, 5), (5,), 15)
    """

    def __init__(
        self,
        X,
        Y=None,
        *,
        kernel: str | Callable = "gaussian",
        bandwidth: float | None = None,
        degree: int = 2,
        coef0: float = 1.0,
        scale: float = 1.0,
    ) -> None:
        X = as_float_array(X, name="X", ndim=2)
        symmetric = Y is None
        if not symmetric:
            Y = as_float_array(Y, name="Y", ndim=2)
            if Y.shape[1] != X.shape[1]:
                raise ValueError(
                    "X and Y must have the same number of features (columns), got "
                    f"X.shape={X.shape} and Y.shape={Y.shape}"
                )
        dtype = result_dtype(X.dtype, Y.dtype) if not symmetric else X.dtype
        # Private writable copies for the kernels (Numba compiles read-only arrays as a
        # separate type); the public X and Y are read-only views of them.
        self._Xw = np.array(X, dtype=dtype, order="C", copy=True)
        self._Yw = self._Xw if symmetric else np.array(Y, dtype=dtype, order="C", copy=True)
        self._X = _readonly_view(self._Xw)
        self._Y = self._X if symmetric else _readonly_view(self._Yw)
        self._symmetric = symmetric
        d = self._X.shape[1]

        if callable(kernel) and not isinstance(kernel, str):
            self._kind = None
        elif isinstance(kernel, str):
            if kernel not in _KERNELS:
                allowed = ", ".join(repr(k) for k in _KERNELS)
                raise ValueError(f"kernel={kernel!r} is not one of {allowed}, or a callable")
            self._kind = _KERNELS[kernel]
        else:
            raise TypeError(
                f"kernel must be a kernel name or a callable f(Xa, Yb), got "
                f"{type(kernel).__name__}"
            )
        self._kernel = kernel

        self._degree = check_int(degree, "degree", minimum=1)
        self._coef0 = _check_real(coef0, "coef0")
        self._scale = _check_real(scale, "scale")
        self._gamma = 0.0
        if self._kind in (GAUSSIAN, LAPLACIAN):
            if bandwidth is None:
                bandwidth = float(np.sqrt(d)) if self._kind == GAUSSIAN else float(d)
            bandwidth = _check_real(bandwidth, "bandwidth", positive=True)
            self._gamma = 1.0 / (2.0 * bandwidth**2) if self._kind == GAUSSIAN else 1.0 / bandwidth
        elif bandwidth is not None:
            raise ValueError(
                "bandwidth applies only to the 'gaussian' and 'laplacian' kernels, got "
                f"bandwidth={bandwidth!r} with kernel={kernel!r}"
            )
        self._bandwidth = bandwidth

        self._xsq = self._ysq = _NO_NORMS
        if self._kind == GAUSSIAN:
            # Centring does not change Gaussian entries but shrinks the norms in
            # ||x||^2 + ||y||^2 - 2<x, y>, hence the cancellation.
            X64 = self._X.astype(np.float64)
            Y64 = X64 if symmetric else self._Y.astype(np.float64)
            center = (X64.sum(axis=0) + (0.0 if symmetric else Y64.sum(axis=0))) / (
                X64.shape[0] + (0 if symmetric else Y64.shape[0])
            )
            self._Xw = np.ascontiguousarray(X64 - center, dtype=dtype)
            self._Yw = self._Xw if symmetric else np.ascontiguousarray(Y64 - center, dtype=dtype)
            # Norms of the rounded working points, so that x == y gives distance ~0.
            self._xsq = np.einsum("ij,ij->i", self._Xw, self._Xw, dtype=np.float64)
            self._ysq = (
                self._xsq
                if symmetric
                else np.einsum("ij,ij->i", self._Yw, self._Yw, dtype=np.float64)
            )
        super().__init__((self._X.shape[0], self._Y.shape[0]), dtype)

    # -- attributes ---------------------------------------------------------------------

    @property
    def X(self) -> np.ndarray:
        """Row points, read-only, shape ``(m, d)``."""
        return self._X

    @property
    def Y(self) -> np.ndarray:
        """Column points, read-only, shape ``(n, d)``."""
        return self._Y

    @property
    def symmetric(self) -> bool:
        """Whether the matrix is :math:`K(X, X)` (constructed with ``Y=None``)."""
        return self._symmetric

    @property
    def kernel(self) -> str | Callable:
        """Kernel name or user callable."""
        return self._kernel

    @property
    def bandwidth(self) -> float | None:
        """Bandwidth of the Gaussian or Laplacian kernel, else ``None``."""
        return self._bandwidth

    def __repr__(self) -> str:
        name = _KERNEL_NAMES.get(self._kind, "callable")
        extra = f", bandwidth={self._bandwidth:.4g}" if self._bandwidth is not None else ""
        return (
            f"KernelMatrix(shape={self.shape}, kernel={name!r}{extra}, dtype={self.dtype}, "
            f"symmetric={self._symmetric})"
        )

    # -- evaluation ---------------------------------------------------------------------

    def _overflow(self) -> KernelOverflowError:
        name = _KERNEL_NAMES[self._kind]
        return KernelOverflowError(
            f"{name!r} kernel entries overflow {self.dtype} (largest finite value "
            f"{np.finfo(self.dtype).max:.3g}) with scale={self._scale}; rescale the points, "
            "lower scale, or use float64"
        )

    def _call(self, Xa: np.ndarray, Yb: np.ndarray) -> np.ndarray:
        expected = (Xa.shape[0], Yb.shape[0])
        out = np.asarray(self._kernel(Xa, Yb))
        if out.shape != expected:
            raise ValueError(
                f"kernel callable must return a block of shape {expected}, got {out.shape}"
            )
        float_dtype(out.dtype)  # rejects complex and non-numeric blocks
        out = np.array(out, dtype=self.dtype, order="C", copy=True)
        if not np.isfinite(out).all():
            raise ValueError("kernel callable returned non-finite values")
        return out

    def _block(self, rsel, csel) -> np.ndarray:
        """Uncounted block ``K[rsel, csel]``; selectors are index arrays or slices."""
        if self._kind is None:
            return self._call(self._X[rsel], self._Y[csel])
        Xa = self._Xw[rsel]
        Yb = self._Yw[csel]
        if self._kind == LAPLACIAN:
            out = np.empty((Xa.shape[0], Yb.shape[0]), dtype=self.dtype)
            _laplacian_block(Xa, Yb, self._gamma, out)
            return out
        G = np.ascontiguousarray(Xa @ Yb.T)
        gaussian = self._kind == GAUSSIAN
        ok = _gram_transform(
            G,
            self._xsq[rsel] if gaussian else _NO_NORMS,
            self._ysq[csel] if gaussian else _NO_NORMS,
            self._kind,
            self._gamma,
            self._scale,
            self._coef0,
            self._degree,
        )
        if not ok:
            raise self._overflow()
        return G

    def _rows(self, idx):
        return self._block(idx, slice(None))

    def _cols(self, idx):
        return self._block(slice(None), idx)

    def _entries(self, i, j):
        if self._kind is None:
            out = np.empty(i.size, dtype=self.dtype)
            step = _CALLABLE_PAIR_CHUNK
            for s in range(0, i.size, step):
                out[s : s + step] = np.diagonal(
                    self._call(self._X[i[s : s + step]], self._Y[j[s : s + step]])
                )
            return out
        out = np.empty(i.size, dtype=self.dtype)
        ok = _kernel_pairs(
            self._Xw,
            self._Yw,
            i,
            j,
            self._kind,
            self._gamma,
            self._scale,
            self._coef0,
            self._degree,
            out,
        )
        if not ok:
            raise self._overflow()
        return out

    def _diag(self):
        p = min(self.shape)
        if self._symmetric and self._kind in (GAUSSIAN, LAPLACIAN):
            return np.ones(p, dtype=self.dtype)
        k = np.arange(p, dtype=np.intp)
        return self._entries(k, k)

    def _row_block(self, start: int, stop: int) -> np.ndarray:
        out = self._block(slice(start, stop), slice(None))
        self.n_evaluations += (stop - start) * self.shape[1]
        return out

    def as_linear_operator(self, *, block_size: int | None = None) -> LinearOperator:
        r"""Return :math:`K` as a LinearOperator that streams row blocks.

        Parameters
        ----------
        block_size : int, optional
            Rows per block, :math:`b \geq 1`. Default: about :math:`2^{20}/n` rows
            (8 MiB blocks in float64), at least 1 and at most :math:`m`.

        Returns
        -------
        scipy.sparse.linalg.LinearOperator
            Shape ``(m, n)``, dtype ``self.dtype``. ``matmat(V)`` computes
            :math:`K V` and ``rmatmat(U)`` computes :math:`K^T U` from the same
            blocks, so the adjoint is exact for the computed entries. Results are in
            the promoted dtype of :math:`K` and the operand.

        Raises
        ------
        TypeError
            Non-integer ``block_size``.
        ValueError
            ``block_size < 1``.

        Notes
        -----
        Each product with :math:`k` vectors recomputes all :math:`mn` entries:
        :math:`2mnd` flops (GEMM) plus :math:`mn` kernel transforms, plus :math:`2mnk`
        flops for the products, with extra memory :math:`O(bn + (m + n)k)`. Gaussian
        kernels with :math:`d \le 32` and :math:`k \le 64` take a fused path instead
        (distance from direct differences, a vectorised exponential within about 1 ulp,
        and the product, per entry; float64; no block is stored, ``block_size`` is not
        used): about 1 ns per entry on 2 cores at :math:`d = 3`, :math:`k = 1`. Every
        product adds :math:`mn` to ``n_evaluations``. Blocks are accumulated in a fixed
        order, so results are reproducible.
        """
        m, n = self.shape
        if block_size is None:
            block_size = max(1, min(m, _DEFAULT_BLOCK_ENTRIES // n))
        else:
            block_size = min(check_int(block_size, "block_size", minimum=1), m)
        return _KernelOperator(self, block_size)


_FUSED_MAX_DIM = 32  # above, the Gram GEMM of the blocked path beats per-entry distances


class _KernelOperator(LinearOperator):
    """Row-block streaming operator of a :class:`KernelMatrix`."""

    def __init__(self, K: KernelMatrix, block_size: int) -> None:
        super().__init__(dtype=K.dtype, shape=K.shape)
        self._K = K
        self.block_size = block_size

    def _blocks(self):
        m = self.shape[0]
        for start in range(0, m, self.block_size):
            stop = min(m, start + self.block_size)
            yield start, stop, self._K._row_block(start, stop)

    def _fused(self, V, transpose: bool):
        """``K V`` (or ``K^T V``) by the fused Gaussian kernel, or None if it does not apply.

        Low-dimensional Gaussian kernels (``d <= _FUSED_MAX_DIM``) are cheapest with the
        distance, the exponential and the product fused per entry (about 1 ns per
        entry on 2 cores, against about 10 ns for the blocked Gram-BLAS path, whose GEMM
        has inner dimension ``d``); entries are computed in float64.
        """
        K = self._K
        if K._kind != GAUSSIAN or K._Xw.shape[1] > _FUSED_MAX_DIM or V.shape[1] > 64:
            return None
        A, B = (K._Yw, K._Xw) if transpose else (K._Xw, K._Yw)
        out = np.empty((A.shape[0], V.shape[1]))
        _gaussian_matmat(
            np.ascontiguousarray(A, dtype=np.float64),
            np.ascontiguousarray(B.T, dtype=np.float64),
            K._gamma,
            np.ascontiguousarray(V.T, dtype=np.float64),
            out,
        )
        K.n_evaluations += self.shape[0] * self.shape[1]
        return out.astype(np.result_type(self.dtype, V.dtype), copy=False)

    def _matmat(self, V):
        V = np.asarray(V)
        fused = self._fused(V, False)
        if fused is not None:
            return fused
        out = np.empty((self.shape[0], V.shape[1]), dtype=np.result_type(self.dtype, V.dtype))
        for start, stop, B in self._blocks():
            out[start:stop] = B @ V
        return out

    def _rmatmat(self, U):
        U = np.asarray(U)
        fused = self._fused(U, True)
        if fused is not None:
            return fused
        out = np.zeros((self.shape[1], U.shape[1]), dtype=np.result_type(self.dtype, U.dtype))
        for start, stop, B in self._blocks():
            out += B.T @ U[start:stop]
        return out

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, u):
        return self._rmatmat(np.asarray(u).reshape(-1, 1)).reshape(-1)


# ---------------------------------------------------------------------------------------
# the one private operator wrapper of the product-based algorithms
# ---------------------------------------------------------------------------------------


def _has_linear_operator(A) -> bool:
    """Tell whether ``A`` converts through its own ``as_linear_operator()`` (EntryMatrix)."""
    return (
        not isinstance(A, np.ndarray | LinearOperator)
        and not sp.issparse(A)
        and callable(getattr(A, "as_linear_operator", None))
    )


class _PassCounter:
    """Passes over the data (one per product, or per fused dask pass), shared with ``.T``."""

    __slots__ = ("n", "unit")

    def __init__(self) -> None:
        self.n = 0
        self.unit = 0  # products with unit vectors spent on extracting rows/columns

    def add(self, k: int = 1) -> None:
        self.n += k


class _Operator:
    """One view of ``A`` for every product-based algorithm of :mod:`rnla`.

    Kinds: ``"dense"`` (ndarray, BLAS), ``"sparse"`` (CSR/CSC, SciPy kernels),
    ``"operator"`` (a LinearOperator), ``"entries"`` (an EntryMatrix: products through
    its ``as_linear_operator()``, rows and columns through the protocol) and ``"dask"``
    (a ``dask.array.Array``: products computed chunk by chunk, one graph per product;
    see :mod:`rnla._dask`). Products are returned in ``dtype`` (float32 stays float32),
    as NumPy arrays. Every product adds one to ``n_passes``, shared with ``.T``.
    Dense and sparse inputs are used as they are: no copy, no per-product overhead
    beyond an integer increment.
    """

    __slots__ = ("A", "_passes", "_transposed", "dtype", "kind", "shape", "source")

    def __init__(self, A, kind, dtype, *, source=None, passes=None, transposed=False):
        self.A = A
        self.kind = kind
        self.dtype = np.dtype(dtype)
        self.shape = (int(A.shape[0]), int(A.shape[1]))
        self.source = source
        self._passes = _PassCounter() if passes is None else passes
        self._transposed = transposed

    # -- bookkeeping --------------------------------------------------------------------
    @property
    def n_passes(self) -> int:
        """Products (passes over ``A``) made through this view and its transpose."""
        return self._passes.n

    @property
    def n_unit_products(self) -> int:
        """Products with unit vectors spent on rows/columns of a LinearOperator."""
        return self._passes.unit

    @property
    def is_dask(self) -> bool:
        return self.kind == "dask"

    @property
    def T(self) -> _Operator:
        return _Operator(
            self.A.T,
            self.kind,
            self.dtype,
            source=self.source,
            passes=self._passes,
            transposed=not self._transposed,
        )

    # -- products -----------------------------------------------------------------------
    def _cast(self, Z, dtype=None) -> np.ndarray:
        Z = np.asarray(Z)
        dtype = self.dtype if dtype is None else dtype
        return Z if Z.dtype == dtype else Z.astype(dtype)

    def matmat(self, X, dtype=None) -> np.ndarray:
        """Return ``A @ X`` for a NumPy ``X`` (n, p), as an (m, p) array.

        In ``dtype`` (default: the operator's dtype, so float32 stays float32).
        """
        self._passes.n += 1
        if self.kind == "sparse":
            out = sparse_matmat(self.A, X)  # all cores; None: SciPy's one-thread kernel
            return self._cast(self.A @ X if out is None else out, dtype)
        if self.kind == "dense":
            return self._cast(self.A @ X, dtype)
        if self.kind == "dask":
            return _dask_product(self.A, X, self.dtype if dtype is None else dtype)
        Y = self._cast(self.A.matmat(X), dtype)
        if Y.shape != (self.shape[0], X.shape[1]):
            raise ValueError(
                f"A @ X must have shape {(self.shape[0], X.shape[1])}, the operator "
                f"returned {Y.shape}"
            )
        return Y

    def rmatmat(self, Y, dtype=None) -> np.ndarray:
        """Return ``A^T @ Y`` for a NumPy ``Y`` (m, p), as an (n, p) array (in ``dtype``)."""
        self._passes.n += 1
        if self.kind == "sparse":
            out = sparse_matmat(self.A.T, Y)
            return self._cast(self.A.T @ Y if out is None else out, dtype)
        if self.kind == "dense":
            return self._cast(self.A.T @ Y, dtype)
        if self.kind == "dask":
            return _dask_product(self.A.T, Y, self.dtype if dtype is None else dtype)
        X = self._cast(self.A.rmatmat(Y), dtype)
        if X.shape != (self.shape[1], Y.shape[1]):
            raise ValueError(
                f"A^T @ Y must have shape {(self.shape[1], Y.shape[1])}, the operator "
                f"returned {X.shape}"
            )
        return X

    def matvec(self, x, dtype=None) -> np.ndarray:
        return self.matmat(np.reshape(x, (-1, 1)), dtype)[:, 0]

    def rmatvec(self, y, dtype=None) -> np.ndarray:
        return self.rmatmat(np.reshape(y, (-1, 1)), dtype)[:, 0]

    def linear_operator(self) -> LinearOperator:
        """Return a :class:`LinearOperator` whose products go through this view (counted)."""
        return _CountingOperator(self)

    def sketch_rows(self, S) -> np.ndarray:
        """``S @ A`` for a SketchOperator ``S`` of shape (k, m); an array of shape (k, n)."""
        self._passes.n += 1
        if self.kind == "dense" or self.kind == "sparse":
            return self._cast(S @ self.A)
        if self.kind == "dask":
            from rnla import _dask

            return self._cast(_dask.sketch_rows(S, self.A).compute())
        St = np.ascontiguousarray(S.todense().T, dtype=self.dtype)
        self._passes.n -= 1  # counted by rmatmat
        return np.ascontiguousarray(self.rmatmat(St).T)

    # -- entries --------------------------------------------------------------------------
    def _unit_products(self, idx, *, rows: bool) -> np.ndarray:
        size = self.shape[0] if rows else self.shape[1]
        E = np.zeros((size, idx.size), dtype=self.dtype)
        E[idx, np.arange(idx.size)] = 1
        self._passes.unit += idx.size
        return self.rmatmat(E).T if rows else self.matmat(E)

    def columns(self, idx) -> np.ndarray:
        """Dense ``A[:, idx]``, shape (m, len(idx)), C-contiguous, in ``dtype``."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.kind == "dense":
            C = self.A[:, idx]
        elif self.kind == "sparse":
            C = self.A[:, idx].toarray()
        elif self.kind == "entries":
            C = self.source.rows(idx).T if self._transposed else self.source.cols(idx)
        elif self.kind == "dask":
            self._passes.n += 1
            C = self.A[:, idx].compute()
        else:
            C = self._unit_products(idx, rows=False)
        return np.ascontiguousarray(C, dtype=self.dtype)

    def rows(self, idx) -> np.ndarray:
        """Dense ``A[idx, :]``, shape (len(idx), n), C-contiguous, in ``dtype``."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.kind == "dense":
            R = self.A[idx]
        elif self.kind == "sparse":
            R = self.A[idx].toarray()
        elif self.kind == "entries":
            R = self.source.cols(idx).T if self._transposed else self.source.rows(idx)
        elif self.kind == "dask":
            self._passes.n += 1
            R = self.A[idx].compute()
        else:
            R = self._unit_products(idx, rows=True)
        return np.ascontiguousarray(R, dtype=self.dtype)

    def dense(self) -> np.ndarray:
        """Return the whole matrix as an ndarray (for small problems and exact references)."""
        if self.kind == "dense":
            return self.A
        if self.kind == "sparse":
            return self._cast(self.A.toarray())
        if self.kind == "dask":
            self._passes.n += 1
            return self._cast(self.A.compute())
        m, n = self.shape
        if n <= m:
            return self.columns(np.arange(n))
        return self.rows(np.arange(m))

    def fro_norm_sq(self) -> float:
        """Exact ``||A||_F^2`` accumulated in float64 (operators: ``min(m, n)`` products)."""
        if self.kind == "dense" or self.kind == "sparse":
            self._passes.n += 1  # one read of the data
        if self.kind == "dense":
            total = 0.0
            rows = max(1, (1 << 20) // max(1, self.shape[1]))
            for start in range(0, self.shape[0], rows):
                chunk = np.asarray(self.A[start : start + rows], dtype=np.float64)
                total += float(np.einsum("ij,ij->", chunk, chunk))
            return total
        if self.kind == "sparse":
            data = np.asarray(self.A.data, dtype=np.float64)
            return float(data @ data)
        if self.kind == "dask":
            from rnla import _dask

            return _dask.Tall(self.A, self.dtype, self._passes).sum_squares()
        m, n = self.shape
        op, dim = (self, n) if n <= m else (self.T, m)
        total, width = 0.0, 256
        for start in range(0, dim, width):
            stop = min(dim, start + width)
            E = np.zeros((dim, stop - start), dtype=self.dtype)
            E[np.arange(start, stop), np.arange(stop - start)] = 1
            Z = np.asarray(op.matmat(E), dtype=np.float64)
            total += float(np.einsum("ij,ij->", Z, Z))
        return total

    def as_long(self, X: np.ndarray, axis: int = 0):
        """``X`` (as long as side ``axis`` of ``A``) in the input's kind: dask stays dask."""
        if self.kind != "dask":
            return X
        import dask.array as da

        return da.from_array(X, chunks=(self.A.chunks[axis], X.shape[1]))


class _CountingOperator(LinearOperator):
    """:class:`LinearOperator` view of an :class:`_Operator` (products counted)."""

    def __init__(self, op: _Operator) -> None:
        super().__init__(dtype=op.dtype, shape=op.shape)
        self._op = op

    def _matmat(self, X):
        return self._op.matmat(np.asarray(X, dtype=self.dtype))

    def _rmatmat(self, Y):
        return self._op.rmatmat(np.asarray(Y, dtype=self.dtype))

    def _matvec(self, x):
        return self._matmat(np.reshape(x, (-1, 1)))[:, 0]

    def _rmatvec(self, y):
        return self._rmatmat(np.reshape(y, (-1, 1)))[:, 0]


def _dask_product(A, X, dtype) -> np.ndarray:
    """Return ``A @ X`` for a dask ``A`` and a NumPy ``X``: one graph, computed to NumPy."""
    import dask.array as da

    from rnla import _dask

    X = np.asarray(X, dtype=dtype)
    Xd = da.from_array(X, chunks=(A.chunks[1], X.shape[1]))
    Y = np.asarray((A @ Xd).compute(), dtype=dtype)
    _dask.check_finite(Y)
    return Y


def _wrap(A, *, name: str = "A", square: bool = False) -> _Operator:
    """Validate ``A`` and wrap it without copying (the only entry point of the wrapper).

    ndarray and array_like: real, finite, 2-D, non-empty (cast under the dtype
    contract); scipy.sparse: CSR/CSC, finite stored values; LinearOperator: shape and
    dtype checked; an object with ``as_linear_operator()`` (EntryMatrix): converted, and
    its ``rows``/``cols`` kept for entry access; ``dask.array.Array``: shape and dtype
    checked lazily (finiteness on the results of the first pass). dask is only imported
    when ``A`` already is a dask array. ``square`` requires ``m == n``.
    """
    from rnla._dask import is_dask_array

    if isinstance(A, _Operator):
        op = A
    elif sp.issparse(A):
        A = as_sparse(A, name=name)
        op = _Operator(A, "sparse", float_dtype(A.dtype))
    elif isinstance(A, np.ndarray):
        A = as_float_array(A, name=name, ndim=2)
        op = _Operator(A, "dense", A.dtype)
    elif is_dask_array(A):
        from rnla import _dask

        A, dtype = _dask.validate(A, name=name)
        op = _Operator(A, "dask", dtype)
    elif isinstance(A, LinearOperator):
        A = as_operator(A, name=name)
        op = _Operator(A, "operator", float_dtype(A.dtype if A.dtype is not None else "f8"))
    elif _has_linear_operator(A):
        lin = as_operator(A.as_linear_operator(), name=name)
        dtype = float_dtype(lin.dtype if lin.dtype is not None else "f8")
        entries = callable(getattr(A, "rows", None)) and callable(getattr(A, "cols", None))
        op = _Operator(lin, "entries" if entries else "operator", dtype, source=A)
        if not entries:
            op.source = None
    else:
        A = as_float_array(A, name=name, ndim=2)
        op = _Operator(A, "dense", A.dtype)
    if square and op.shape[0] != op.shape[1]:
        raise ValueError(f"{name} must be square, got shape {op.shape}")
    return op
