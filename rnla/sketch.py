r"""Sketching operators: random linear maps that embed a subspace in fewer dimensions.

Every constructor returns a :class:`SketchOperator`, a
:class:`scipy.sparse.linalg.LinearOperator` of shape ``(k, n)`` scaled so that
:math:`\mathbb{E}[S^\top S] = I_n`. It applies from the left to dense arrays and to
SciPy CSR/CSC matrices without forming ``S`` where ``S`` is structured, composes with
other operators, has a dot-test-exact adjoint ``S.T`` and a ``todense()`` method.

===========================  ========================  ====================================
constructor                  storage                   cost of ``S @ A``, ``A`` (n, p)
===========================  ========================  ====================================
:func:`gaussian`             dense ``k x n``           ``2knp`` (BLAS GEMM)
:func:`rademacher`           dense ``k x n``           ``2knp`` (BLAS GEMM)
:func:`orthogonal_gaussian`  dense ``k x n``           ``2knp`` (BLAS GEMM)
:func:`srht`                 ``n`` signs, ``k`` rows   ``~ N p log2(n2) + k p N/n2``
:func:`countsketch`          a hash key (lazy)         ``p n`` dense, ``nnz(A)`` sparse
:func:`sparse_sign`          a hash key (lazy)         ``z p n`` dense, ``z nnz(A)`` sparse
:func:`tensor_sketch`        ``degree`` CountSketches  ``degree (n + k log k)`` per row
===========================  ========================  ====================================

Here ``N`` is ``n`` rounded up to a power of two and ``n2 <= N`` a cache-sized block.
The hash sketches draw their ``(n, z)`` table of rows and signs from a counter-based hash
only when a dense product needs it; a sparse product draws the codes of the rows it
meets, so constructing and applying them to sparse input is one pass over ``nnz(A)``.
Randomness is drawn once, at construction, from ``rng``; applying an operator is
deterministic and independent of the number of Numba threads.

Samplers (:func:`leverage_scores`, :func:`row_norm_sampling`, :func:`uniform_sampling`)
return row indices with importance weights.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numba
import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from rnla import _random
from rnla._dask import is_dask_array
from rnla._kernels import sketch as _k
from rnla._validation import as_float_array, as_sparse, check_int, check_rng

__all__ = [
    "SRHT",
    "DenseSketch",
    "HashSketch",
    "SampleResult",
    "SamplingSketch",
    "SketchOperator",
    "TensorSketch",
    "countsketch",
    "gaussian",
    "leverage_score_sampling",
    "leverage_scores",
    "orthogonal_gaussian",
    "rademacher",
    "row_norm_sampling",
    "sampling_sketch",
    "sparse_sign",
    "srht",
    "tensor_sketch",
    "uniform_sampling",
]


_SERIAL_WORK = 1 << 17  # scalar updates below which one thread beats a parallel launch


@contextmanager
def _threads_for(work: int):
    """Run small kernels on one Numba thread (restored afterwards).

    A parallel region costs tens of microseconds to start, and far more when the
    machine is oversubscribed; below ``_SERIAL_WORK`` updates one thread is faster.
    Results do not depend on this choice (the kernels' partitions are fixed).
    """
    previous = numba.get_num_threads()
    if work >= _SERIAL_WORK or previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class SketchOperator(LinearOperator):
    """Base class of the sketching operators, a :class:`LinearOperator` of shape (k, n).

    Subclasses implement ``_apply_dense`` (``S @ A`` for a validated float array ``A``
    of shape (n, p)), ``_apply_sparse`` (CSR/CSC ``A``) and ``_adjoint_dense``
    (``S.T @ Y`` for ``Y`` of shape (k, p)). The public entry point validates input
    once, keeps float32 as float32 and returns dense arrays.

    Attributes
    ----------
    shape : tuple of int
        ``(k, n)``: sketch size and input dimension.
    dtype : numpy.dtype
        ``float64``, the precision the random entries are drawn in; products are
        computed in the input's floating dtype.
    """

    _spec = None  # recipe of a blockwise sketch (see _column_block), else None

    def __init__(self, sketch_size: int, n: int):
        super().__init__(dtype=np.dtype(np.float64), shape=(sketch_size, n))

    # -- public application ---------------------------------------------------------
    def apply(self, A):
        """Return ``S @ A`` for a dense (n,) / (n, p) array or a sparse (n, p) matrix.

        Parameters
        ----------
        A : array_like or scipy.sparse matrix
            Input with ``n`` rows. Sparse formats other than CSR/CSC are converted to
            CSR (a copy).

        Returns
        -------
        numpy.ndarray of shape (k,) or (k, p)
            float32 if ``A`` is float32, float64 otherwise.

        Raises
        ------
        ValueError
            If ``A`` does not have ``n`` rows, is empty, or holds NaN/inf.
        TypeError
            If ``A`` is complex or not numeric.
        """
        if sp.issparse(A):
            A = as_sparse(A, name="A")
            self._check_rows(A.shape[0])
            return self._apply_sparse(A)
        A = as_float_array(A, name="A", ndim=(1, 2))
        self._check_rows(A.shape[0])
        if A.ndim == 1:
            return self._apply_dense(A[:, None])[:, 0]
        return self._apply_dense(A)

    def _check_rows(self, rows):
        if rows != self.shape[1]:
            raise ValueError(
                f"A must have n={self.shape[1]} rows to be sketched by an operator of shape "
                f"{self.shape}, got {rows} rows"
            )

    def dot(self, x):
        """``S @ x``: arrays and sparse matrices are sketched, operators composed.

        A ``dask.array.Array`` gives a lazy dask array: each task draws the columns of
        ``S`` that meet its row chunk (blockwise sketches; see :mod:`rnla._dask`).
        """
        if isinstance(x, LinearOperator) or np.isscalar(x):
            return super().dot(x)
        if is_dask_array(x):
            from rnla import _dask

            x, _ = _dask.validate(x, name="A")
            return _dask.sketch_rows(self, x)
        return self.apply(x)

    def __matmul__(self, other):
        if np.isscalar(other):
            raise ValueError("Scalar operands are not allowed, use '*' instead")
        return self.dot(other)

    def todense(self) -> np.ndarray:
        """Return the sketch as a dense float64 array of shape (k, n).

        Costs one adjoint application to the ``k x k`` identity; meant for tests and
        small problems.
        """
        return np.ascontiguousarray(self._adjoint_dense(np.eye(self.shape[0])).T)

    # -- LinearOperator protocol ----------------------------------------------------
    def _matvec(self, x):
        return self._matmat(np.reshape(x, (-1, 1)))[:, 0]

    def _rmatvec(self, y):
        return self._rmatmat(np.reshape(y, (-1, 1)))[:, 0]

    def _matmat(self, X):
        if sp.issparse(X):
            return self.apply(X)
        return self._apply_dense(as_float_array(X, name="X", ndim=2, allow_nonfinite=True))

    def _rmatmat(self, Y):
        return self._adjoint_dense(as_float_array(Y, name="Y", ndim=2, allow_nonfinite=True))

    def _adjoint(self):
        return _AdjointSketch(self)

    _transpose = _adjoint

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        k, n = self.shape
        extra = self._describe()
        return f"<{type(self).__name__} k={k} n={n}{', ' + extra if extra else ''}>"


class _AdjointSketch(LinearOperator):
    """``S.T``: shape (n, k), exact adjoint of a :class:`SketchOperator`."""

    def __init__(self, parent: SketchOperator):
        self.parent = parent
        k, n = parent.shape
        super().__init__(dtype=parent.dtype, shape=(n, k))

    def _matvec(self, x):
        return self._matmat(np.reshape(x, (-1, 1)))[:, 0]

    def _rmatvec(self, y):
        return self._rmatmat(np.reshape(y, (-1, 1)))[:, 0]

    def _matmat(self, X):
        return self.parent._adjoint_dense(as_float_array(X, name="X", ndim=2))

    def _rmatmat(self, Y):
        return self.parent._apply_dense(as_float_array(Y, name="Y", ndim=2))

    def _adjoint(self):
        return self.parent

    _transpose = _adjoint


# ----------------------------------------------------------------------------------------
# dense sketches
# ----------------------------------------------------------------------------------------


class DenseSketch(SketchOperator):
    """A sketch stored as an explicit ``k x n`` matrix (Gaussian, Rademacher, orthogonal).

    Products are one BLAS GEMM (dense input) or one SciPy sparse-times-dense product
    (sparse input): for an unstructured dense sketch nothing beats the library kernels,
    so none is written by hand. A float32 copy of the matrix is cached on first use
    with float32 data.
    """

    def __init__(self, matrix: np.ndarray, kind: str):
        k, n = matrix.shape
        super().__init__(k, n)
        self._matrix = matrix
        self._matrix.setflags(write=False)
        self._cast = {np.dtype(np.float64): matrix}
        self.kind = kind

    def _as(self, dtype):
        if dtype not in self._cast:
            m = self._matrix.astype(dtype)
            m.setflags(write=False)
            self._cast[dtype] = m
        return self._cast[dtype]

    def _apply_dense(self, A):
        return self._as(A.dtype) @ A

    def _apply_sparse(self, A):
        # (S A)^T = A^T S^T: SciPy's compiled sparse @ dense, no densification of A.
        return np.ascontiguousarray((A.T @ self._as(A.dtype).T).T)

    def _adjoint_dense(self, Y):
        return self._as(Y.dtype).T @ Y

    def todense(self) -> np.ndarray:
        """Return a copy of the (k, n) float64 matrix."""
        return self._matrix.copy()

    def _describe(self):
        return f"kind={self.kind!r}"


def _check_sizes(sketch_size, n):
    n = check_int(n, "n", minimum=1)
    k = check_int(sketch_size, "sketch_size", minimum=1)
    return k, n


def gaussian(sketch_size, n, /, *, rng=None) -> DenseSketch:
    r"""Gaussian sketch with i.i.d. :math:`N(0, 1/k)` entries.

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k`` (rows), ``k >= 1``.
    n : int
        Input dimension (columns), ``n >= 1``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness, normalised with :func:`numpy.random.default_rng`.

    Returns
    -------
    DenseSketch
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`.

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``n`` is not an integer, or ``rng`` is not a valid seed.
    ValueError
        If ``sketch_size < 1`` or ``n < 1``.

    Notes
    -----
    Storage ``8kn`` bytes; ``S @ A`` costs ``2knp`` flops. For a ``d``-dimensional
    subspace with orthonormal basis ``U`` (Davidson–Szarek), with probability at least
    :math:`1 - 2e^{-t^2/2}` every singular value of ``S U`` lies in
    :math:`[1 - (\sqrt d + t)/\sqrt k,\ 1 + (\sqrt d + t)/\sqrt k]`; see
    :func:`rnla.bounds.gaussian_embedding_size`.

    References
    ----------
    .. [1] K. R. Davidson and S. J. Szarek, "Local operator theory, random matrices and
       Banach spaces", Handbook of the Geometry of Banach Spaces, 2001, Thm II.13.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import gaussian
    >>> S = gaussian(20, 1000, rng=0)
    >>> (S @ np.ones((1000, 3))).shape
    (20, 3)
    """
    k, n = _check_sizes(sketch_size, n)
    rng = check_rng(rng)
    return _build(("gaussian", k, (_random.draw_key(rng),), None), 0, n)


def rademacher(sketch_size, n, /, *, rng=None) -> DenseSketch:
    r"""Rademacher sketch with i.i.d. entries :math:`\pm 1/\sqrt k`.

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k`` (rows), ``k >= 1``.
    n : int
        Input dimension (columns), ``n >= 1``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    DenseSketch
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`.

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``n`` is not an integer.
    ValueError
        If ``sketch_size < 1`` or ``n < 1``.

    Notes
    -----
    Same cost as :func:`gaussian`. Per-vector JL tails as for Gaussians (Achlioptas
    2003, Thm 1.1); the subspace-embedding size with explicit constants is
    :func:`rnla.bounds.rademacher_embedding_size`.

    References
    ----------
    .. [1] D. Achlioptas, "Database-friendly random projections: Johnson-Lindenstrauss
       with binary coins", J. Comput. Syst. Sci. 66 (2003).

    Examples
    --------
    >>> from rnla.sketch import rademacher
    >>> rademacher(8, 100, rng=1).todense().shape
    (8, 100)
    """
    k, n = _check_sizes(sketch_size, n)
    rng = check_rng(rng)
    return _build(("rademacher", k, (_random.draw_key(rng),), None), 0, n)


def orthogonal_gaussian(sketch_size, n, /, *, rng=None) -> DenseSketch:
    r"""Block-orthogonal Gaussian sketch (orthogonal random features).

    Rows come in blocks of at most ``n`` mutually orthogonal rows. Each block is
    ``diag(r) Q^T / sqrt(k)`` with ``Q`` an ``n x b`` Haar-distributed orthonormal
    matrix and ``r`` i.i.d. chi-distributed norms with ``n`` degrees of freedom, so
    every row has exactly the law of a Gaussian row while rows within a block are
    orthogonal; blocks are independent (``k > n`` is allowed).

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k`` (rows), ``k >= 1``.
    n : int
        Input dimension (columns), ``n >= 1``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    DenseSketch
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`.

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``n`` is not an integer.
    ValueError
        If ``sketch_size < 1`` or ``n < 1``.

    Notes
    -----
    Construction costs one Householder QR of an ``n x min(k, n)`` Gaussian matrix per
    block, ``O(n k min(n, k))`` flops. ``Q`` is made Haar by multiplying its columns by
    the signs of ``diag(R)`` (Mezzadri 2007); without that fix the distribution of a
    LAPACK QR factor is not uniform.

    References
    ----------
    .. [1] F. Mezzadri, "How to generate random matrices from the classical compact
       groups", Notices of the AMS 54 (2007).
    .. [2] F. X. Yu et al., "Orthogonal random features", NeurIPS 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import orthogonal_gaussian
    >>> S = orthogonal_gaussian(4, 16, rng=0).todense()
    >>> G = S @ S.T
    >>> bool(np.allclose(G, np.diag(np.diag(G))))
    True
    """
    k, n = _check_sizes(sketch_size, n)
    rng = check_rng(rng)
    rows = np.empty((k, n))
    for start in range(0, k, n):
        b = min(n, k - start)
        Q, R = sla.qr(rng.standard_normal((n, b)), mode="economic")
        # Haar fix: flip columns so that diag(R) > 0 (zero has probability zero).
        Q *= np.sign(np.diag(R))
        norms = np.sqrt(rng.chisquare(n, size=b))
        rows[start : start + b] = Q.T * norms[:, None]
    rows /= math.sqrt(k)
    return DenseSketch(rows, "orthogonal_gaussian")


# ----------------------------------------------------------------------------------------
# hash sketches
# ----------------------------------------------------------------------------------------


class HashSketch(SketchOperator):
    r"""Sparse sketch with ``z`` nonzeros per column: ``S[idx[j, t], j] = scale * sign``.

    CountSketch is ``z = 1``; the sparse sign sketch has ``z`` distinct rows per column
    with values :math:`\pm 1/\sqrt z`. Applied by Numba kernels that never build
    ``S``: dense input costs ``z n p`` additions, CSR/CSC input ``z nnz(A)``.

    Parameters
    ----------
    sketch_size : int
        Number of rows ``k`` of the sketch.
    idx : ndarray of int, shape (n, z)
        Row of each nonzero, in ``[0, k)``.
    negative : ndarray of bool, shape (n, z)
        Whether each nonzero is ``-scale`` (else ``+scale``).
    scale : float
        Common magnitude of the nonzeros.
    kind : str
        Name shown in ``repr``.

    Notes
    -----
    A nonzero is stored as one integer ``(row << 1) | sign_bit`` (int32 when ``k`` allows),
    so a column of a ``z = 8`` sketch occupies 32 bytes: random access to the hash table
    is what the sparse kernels pay for. The scale is applied once to the output.
    :func:`countsketch` and :func:`sparse_sign` keep only their counter-based hash key:
    the table is drawn the first time a dense product or ``idx``/``val`` needs it, and
    sparse products draw the codes of the rows they meet on the fly.
    """

    def __init__(
        self, sketch_size: int, idx: np.ndarray, negative: np.ndarray, scale: float, kind: str
    ):
        codes = (np.asarray(idx, dtype=np.int64) << 1) | np.asarray(negative, dtype=np.int64)
        self._init(sketch_size, codes.astype(_code_type(sketch_size)), scale, kind)

    @classmethod
    def _from_codes(cls, k: int, codes: np.ndarray, scale: float, kind: str) -> HashSketch:
        """Build from packed codes ``(row << 1) | sign_bit`` (taken over, not copied)."""
        self = cls.__new__(cls)
        self._init(k, codes, scale, kind)
        return self

    @classmethod
    def _from_key(
        cls, k: int, key: int, start: int, stop: int, z: int, scale: float, kind: str
    ) -> HashSketch:
        """Columns ``start:stop`` of the counter-based hash sketch of ``key``, drawn lazily."""
        self = cls.__new__(cls)
        SketchOperator.__init__(self, k, max(stop - start, 0))
        self._table = None
        self._hash = (int(key), int(start), int(z))
        self.scale = float(scale)
        self.kind = kind
        return self

    def _init(self, k, codes, scale, kind):
        super().__init__(k, codes.shape[0])
        self._table = np.ascontiguousarray(codes)
        self._table.setflags(write=False)
        self._hash = None
        self.scale = float(scale)
        self.kind = kind

    @property
    def _codes(self) -> np.ndarray:
        """Packed codes, shape (n, z); drawn on first use for a counter-based sketch."""
        if self._table is None:
            key, start, z = self._hash
            table = _hash_codes(key, start, start + self.shape[1], self.shape[0], z)
            table.setflags(write=False)
            self._table = table
        return self._table

    @property
    def nnz_per_col(self) -> int:
        """Number of nonzeros in each column of ``S``."""
        return self._hash[2] if self._table is None else self._table.shape[1]

    @property
    def idx(self) -> np.ndarray:
        """Rows of the nonzeros, int64 array of shape (n, z)."""
        return (self._codes >> 1).astype(np.int64)

    @property
    def val(self) -> np.ndarray:
        """Values of the nonzeros, float64 array of shape (n, z)."""
        return self.scale * (1.0 - 2.0 * (self._codes & 1))

    def _scaled(self, out):
        if self.scale != 1.0:
            out *= out.dtype.type(self.scale)
        return out

    def _apply_dense(self, A):
        k = self.shape[0]
        p = A.shape[1]
        if A.flags.f_contiguous and not A.flags.c_contiguous:
            # Fortran-ordered input: sketch the rows of A.T and transpose the result,
            # which avoids copying A.
            out_t = np.zeros((p, k), dtype=A.dtype)
            with _threads_for(A.size * self.nnz_per_col):
                _k._hash_apply_dense_t(self._codes, A.T, out_t)
            return self._scaled(np.ascontiguousarray(out_t.T))
        out = np.zeros((k, p), dtype=A.dtype)
        with _threads_for(A.size * self.nnz_per_col):
            _k._hash_apply_dense(self._codes, np.ascontiguousarray(A), out)
        return self._scaled(out)

    def _apply_sparse(self, A):
        k, p = self.shape[0], A.shape[1]
        z = self.nnz_per_col
        if A.nnz == 0:
            return np.zeros((k, p), dtype=A.dtype)
        out = np.empty((k, p), dtype=A.dtype)  # every entry written by its block's task
        # One task per block of cb = 2**shift columns of A: its k x cb slab of the output
        # stays in L2 cache while the block's nonzeros are added (any cb gives the same
        # result); at least 4 tasks per thread when p allows, to balance the threads.
        cb = min(_SPARSE_MAX_BLOCK, _SPARSE_SLAB_BYTES // (k * A.dtype.itemsize))
        cb = max(1, min(cb, -(-p // (4 * numba.get_num_threads()))))
        shift = max(0, int(cb).bit_length() - 1)  # cb rounded down to a power of two
        cb = 1 << shift
        n_blocks = -(-p // cb)
        with _threads_for(A.nnz * z):
            if A.format == "csc":  # already grouped by column: the blocks are slices
                starts = np.append(A.indptr[:-1:cb], A.indptr[-1]).astype(np.int64)
                cols = np.repeat(np.arange(p, dtype=np.int64) & (cb - 1), np.diff(A.indptr))
                cols = cols.astype(np.int16 if shift < 15 else np.int64)
                rows, vals = A.indices, A.data
            else:
                starts, rows, cols, vals = _bucket_csr(A, shift, n_blocks)
            scale = A.dtype.type(self.scale)
            workers = min(numba.get_num_threads(), n_blocks)
            if self._table is None:
                key, start, _ = self._hash
                _k._bucket_apply_hashed(
                    key, start, k, z, starts, cb, rows, cols, vals, scale, out, workers
                )
            else:
                _k._bucket_apply_codes(
                    self._table, starts, cb, rows, cols, vals, scale, out, workers
                )
        return out

    def _adjoint_dense(self, Y):
        out = np.zeros((self.shape[1], Y.shape[1]), dtype=Y.dtype)
        with _threads_for(out.size * self.nnz_per_col):
            _k._hash_adjoint_dense(self._codes, np.ascontiguousarray(Y), out)
        return self._scaled(out)

    def todense(self) -> np.ndarray:
        """Return the (k, n) float64 matrix (``z n`` nonzeros)."""
        k, n = self.shape
        M = np.zeros((k, n))
        cols = np.repeat(np.arange(n), self.nnz_per_col)
        np.add.at(M, (self.idx.ravel(), cols), self.val.ravel())
        return M

    def _describe(self):
        return f"kind={self.kind!r}, nnz_per_col={self.nnz_per_col}"


_SPARSE_SLAB_BYTES = 1 << 20  # k x cb output slab of one sparse task: in L2 cache
_SPARSE_MAX_BLOCK = 128  # at most this many columns of A per sparse task
_SPARSE_ROW_CHUNKS = 16  # fixed row chunks of the bucketing pass


def _bucket_csr(A, shift: int, n_blocks: int):
    """Group the nonzeros of CSR ``A`` by column block (``2**shift`` columns), in row order.

    Returns ``starts`` (n_blocks + 1,), and per nonzero its row, its column within the
    block and its value: a stable counting sort over fixed row chunks (two passes over
    the indices, sequential writes into ``n_blocks`` streams).
    """
    n_chunks = max(1, min(_SPARSE_ROW_CHUNKS, A.shape[0]))
    counts = np.zeros((n_chunks, n_blocks), dtype=np.int64)
    _k._bucket_count(A.indptr, A.indices, shift, counts)
    # block-major offsets: block blk holds chunk 0's nonzeros, then chunk 1's, ...
    flat = counts.T.ravel()
    offsets = np.ascontiguousarray((np.cumsum(flat) - flat).reshape(n_blocks, n_chunks).T)
    starts = np.append(offsets[0], A.nnz).astype(np.int64)
    rows = np.empty(A.nnz, dtype=np.int32 if A.shape[0] < 2**31 else np.int64)
    cols = np.empty(A.nnz, dtype=np.int16 if shift < 15 else np.int64)
    vals = np.empty(A.nnz, dtype=A.dtype)
    ends = np.empty(A.nnz + n_chunks, dtype=rows.dtype)  # scratch of the row tracking
    workers = min(numba.get_num_threads(), n_chunks)
    _k._bucket_fill(A.indptr, A.indices, A.data, shift, offsets, rows, cols, vals, ends, workers)
    return starts, rows, cols, vals


def _code_type(k: int):
    return np.int32 if k < 2**30 else np.int64


def _random_signs(rng, shape):
    return 2.0 * rng.integers(0, 2, size=shape, dtype=np.int8) - 1.0


def _random_negative(rng, shape):
    return rng.integers(0, 2, size=shape, dtype=np.int8).astype(bool)


def countsketch(sketch_size, n, /, *, rng=None) -> HashSketch:
    r"""CountSketch (Clarkson–Woodruff transform): one :math:`\pm 1` per column.

    Column ``j`` of ``S`` is :math:`s_j e_{h(j)}` with ``h(j)`` uniform on
    ``{0..k-1}`` and :math:`s_j = \pm 1` uniform, all independent (fully random
    hashing).

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k`` (number of buckets), ``k >= 1``.
    n : int
        Input dimension, ``n >= 1``.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    HashSketch
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`.

    Raises
    ------
    TypeError
        If ``sketch_size`` or ``n`` is not an integer.
    ValueError
        If ``sketch_size < 1`` or ``n < 1``.

    Notes
    -----
    ``S @ A`` costs ``nnz(A)`` additions for sparse ``A`` (the rows drawn on the fly,
    as for :func:`sparse_sign`), ``n p`` for dense ``A``. Inner products are unbiased
    with the exact variance

    .. math::

        \operatorname{Var}\langle Sx, Sy\rangle = \frac1k\Big(\sum_{i\ne j}
        x_i^2 y_j^2 + \sum_{i \ne j} x_i y_i x_j y_j\Big)
        \le \frac2k \|x\|^2\|y\|^2,

    and ``k >= (d^2 + d)/(eps^2 delta)`` gives a subspace embedding of distortion
    ``eps`` with probability ``1 - delta`` (Nelson–Nguyen 2013); see
    :func:`rnla.bounds.countsketch_embedding_size`.

    References
    ----------
    .. [1] K. L. Clarkson and D. P. Woodruff, "Low rank approximation and regression in
       input sparsity time", STOC 2013.
    .. [2] J. Nelson and H. L. Nguyen, "OSNAP: faster numerical linear algebra
       algorithms via sparser subspace embeddings", FOCS 2013.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from rnla.sketch import countsketch
    >>> A = sp.random(10_000, 50, density=0.01, format="csr", random_state=0)
    >>> (countsketch(200, 10_000, rng=0) @ A).shape
    (200, 50)
    """
    k, n = _check_sizes(sketch_size, n)
    rng = check_rng(rng)
    keys = (_random.draw_key(rng), _random.draw_key(rng))
    return _build(("countsketch", k, keys, None), 0, n)


_DEFAULT_NNZ_PER_COL = 8  # Martinsson and Tropp (2020, §9.2)


def sparse_sign(sketch_size, n, /, *, nnz_per_col=None, rng=None) -> HashSketch:
    r"""Sparse sign sketch (SJLT/OSNAP): ``z`` distinct rows per column, values ±1/√z.

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k >= 1`` (``k >= nnz_per_col`` when ``nnz_per_col`` is given).
    n : int
        Input dimension, ``n >= 1``.
    nnz_per_col : int, optional
        Nonzeros ``z`` in each column; ``z = 1`` is CountSketch with distinct-row
        sampling. Default ``min(8, k)``: ``z = 8`` with ``k >= 2d`` is the practical
        recommendation of Martinsson and Tropp (2020, §9.2), clamped to ``k`` because
        the nonzeros of a column occupy distinct rows (``k < 8`` gives ``z = k``: every
        entry of ``S`` is a random sign times :math:`1/\sqrt k`).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    HashSketch
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`; every column
        has unit norm exactly.

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If an explicit ``nnz_per_col > sketch_size`` (rows in a column must be distinct)
        or a size is < 1.

    Notes
    -----
    Rows of each column are sampled without replacement by Floyd's algorithm from
    counter-based draws (SplitMix64 of the column and nonzero index), so any block of
    columns is drawn on its own and in parallel. Construction stores the key only.
    ``S @ A`` costs ``z nnz(A)`` additions and ``z`` draws per nonzero for sparse ``A``
    (the nonzeros are grouped by blocks of columns whose ``k x cb`` output slab stays
    in cache; no table of ``S`` is formed), ``z n p`` additions plus the ``(n, z)``
    table, drawn once, for dense ``A``. For ``x, y`` the inner product variance
    equals CountSketch's for every ``z`` (distinct columns are independent, and
    :math:`\sum_r S_{rj}^2 = 1`),
    so the second-moment embedding size of :func:`countsketch` applies; larger ``z``
    improves the higher moments (Cohen 2016: ``k = O(d log d / eps^2)`` with
    ``z = O(log d / eps)``).

    References
    ----------
    .. [1] M. B. Cohen, "Nearly tight oblivious subspace embeddings by trace
       inequalities", SODA 2016.
    .. [2] P.-G. Martinsson and J. A. Tropp, "Randomized numerical linear algebra:
       foundations and algorithms", Acta Numerica 29 (2020), §9.2.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import sparse_sign
    >>> S = sparse_sign(64, 1000, rng=0)
    >>> bool(np.allclose(np.linalg.norm(S.todense(), axis=0), 1.0))
    True
    """
    k, n = _check_sizes(sketch_size, n)
    if nnz_per_col is None:
        nnz_per_col = min(_DEFAULT_NNZ_PER_COL, k)
    z = check_int(nnz_per_col, "nnz_per_col", minimum=1)
    if z > k:
        raise ValueError(
            f"nnz_per_col={z} must be <= sketch_size={k}: the nonzeros of a column occupy "
            "distinct rows"
        )
    rng = check_rng(rng)
    keys = (_random.draw_key(rng), _random.draw_key(rng))
    return _build(("sparse_sign", k, keys, z), 0, n)


# ----------------------------------------------------------------------------------------
# blockwise construction: any column block of S from its recipe
# ----------------------------------------------------------------------------------------


def _column_block(spec, start: int, stop: int) -> SketchOperator:
    """Columns ``start:stop`` of the sketch described by ``spec``, drawn on their own.

    ``spec = (kind, k, keys, param)`` is the recipe a blockwise sketch keeps in
    ``S._spec``: the entries of column ``j`` depend only on ``keys`` and on the canonical
    block of ``j`` (:mod:`rnla._random`), so a dask task sketching rows ``start:stop``
    of its chunk draws exactly these columns of ``S``, and ``S`` is never shipped.
    """
    kind, k, keys, param = spec
    if kind == "gaussian":
        M = _random.normal_rows(keys[0], start, stop, k).T  # F-ordered view: no copy
        M *= 1.0 / math.sqrt(k)
        return DenseSketch(M, "gaussian")
    if kind == "rademacher":
        M = _random.rademacher_rows(keys[0], start, stop, k).T
        M *= 1.0 / math.sqrt(k)
        return DenseSketch(M, "rademacher")
    if kind == "countsketch":
        return HashSketch._from_key(k, keys[0], start, stop, 1, 1.0, "countsketch")
    return HashSketch._from_key(k, keys[0], start, stop, param, 1.0 / math.sqrt(param), kind)


def _hash_codes(key: int, start: int, stop: int, k: int, z: int) -> np.ndarray:
    """Packed codes of columns ``start:stop`` of a hash sketch with ``z`` nonzeros each.

    Counter-based: nonzero ``m`` of column ``j`` is drawn from
    ``splitmix64(key + gamma (j z + m + 1))`` (top 32 bits: the uniform of Floyd's
    sampling step, so the rows of a column are distinct; ``z = 1`` gives the row
    ``floor(U k)``; bit 0: the sign). Any column range is produced on its own (a dask
    chunk draws only its columns), in parallel, without storing draws.
    """
    codes = np.empty((max(stop - start, 0), z), dtype=_code_type(k))
    if stop > start:
        _k._hash_codes_counter(key, start, k, codes)
    return codes


def _build(spec, start: int, stop: int) -> SketchOperator:
    S = _column_block(spec, start, stop)
    S._spec = spec
    return S


# ----------------------------------------------------------------------------------------
# SRHT
# ----------------------------------------------------------------------------------------

_BLOCK_BYTES = 1 << 18  # a stage-1 block of the Hadamard transform stays in L2 cache
_PANEL_BYTES = 1 << 23  # the N x w work panel stays in L3 cache during stage 2
_SPARSE_PANEL_BYTES = 1 << 26  # dense copy of a sparse column panel: at most 64 MiB


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


class SRHT(SketchOperator):
    """Subsampled randomized Hadamard transform ``S = R H D / sqrt(k)``.

    ``D`` is a diagonal of random signs, ``H`` the unnormalised ``N x N``
    Walsh–Hadamard matrix (``N`` = ``n`` rounded up to a power of two, input padded
    with zeros) and ``R`` selects ``k`` distinct rows uniformly at random.

    Attributes
    ----------
    signs : ndarray of shape (n,)
        Diagonal of ``D``.
    rows : ndarray of int64, shape (k,)
        Rows of ``H`` kept by ``R``, each in ``[0, N)``.
    """

    def __init__(self, sketch_size: int, n: int, signs: np.ndarray, rows: np.ndarray):
        super().__init__(sketch_size, n)
        self.N = 1 << max(0, (n - 1).bit_length())
        self.signs = np.ascontiguousarray(signs, dtype=np.float64)
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.signs.setflags(write=False)
        self.rows.setflags(write=False)
        self._signs32 = self.signs.astype(np.float32)

    def _signs(self, dtype):
        return self._signs32 if dtype == np.float32 else self.signs

    def _panel_width(self, p: int, itemsize: int) -> int:
        return max(8, min(p, _pow2_floor(_PANEL_BYTES / (self.N * itemsize))))

    def _plan(self, width: int, itemsize: int):
        """Block size ``n2`` of the two-level transform and the stage-2 strategy.

        Stage 1 transforms blocks of ``n2`` rows (``N p log2 n2`` adds); stage 2 either
        forms only the ``k`` requested outputs directly (``k p N/n2`` adds) or finishes
        the full transform (``N p log2(N/n2)`` adds). ``n2 ~ k ln 2`` balances the
        direct variant; the cache caps ``n2``.
        """
        k, N = self.shape[0], self.N
        cap = _pow2_floor(_BLOCK_BYTES / (width * itemsize))
        n2 = min(N, cap, _pow2_floor(k * math.log(2.0)) * 2)
        n1 = N // n2
        direct = k * n1 <= N * max(1, int(math.log2(n1)))
        return n2, direct

    def _forward_panels(self, A, out, c0, c1):
        width = c1 - c0
        n2, direct = self._plan(width, A.itemsize)
        Z = np.empty((self.N, width), dtype=A.dtype)
        scale = 1.0 / math.sqrt(self.shape[0])
        _k._srht_stage1(A, self._signs(A.dtype), c0, c1, n2, Z)
        if direct:
            _k._srht_stage2_direct(Z, self.rows, n2, scale, out, c0)
        else:
            _k._fwht_stage2(Z, n2)
            _k._gather_rows_scaled(Z, self.rows, scale, out, c0)

    def _apply_dense(self, A):
        A = np.ascontiguousarray(A)
        p = A.shape[1]
        out = np.empty((self.shape[0], p), dtype=A.dtype)
        w = self._panel_width(p, A.itemsize)
        with _threads_for(self.N * p * max(1, self.N.bit_length() // 2)):
            for c0 in range(0, p, w):
                self._forward_panels(A, out, c0, min(p, c0 + w))
        return out

    def _apply_sparse(self, A):
        # The transform mixes every row, so sparsity cannot be exploited: sketch dense
        # column panels of bounded memory. Prefer countsketch/sparse_sign for sparse A.
        A = A.tocsc()
        n, p = A.shape
        width = max(
            1,
            min(
                self._panel_width(p, A.dtype.itemsize),
                _SPARSE_PANEL_BYTES // (max(n, self.N) * A.dtype.itemsize),
            ),
        )
        out = np.empty((self.shape[0], p), dtype=A.dtype)
        for c0 in range(0, p, width):
            c1 = min(p, c0 + width)
            panel = np.ascontiguousarray(A[:, c0:c1].toarray())
            block = np.empty((self.shape[0], c1 - c0), dtype=A.dtype)
            self._forward_panels(panel, block, 0, c1 - c0)
            out[:, c0:c1] = block
        return out

    def _adjoint_dense(self, Y):
        Y = np.ascontiguousarray(Y)
        k, n = self.shape
        p = Y.shape[1]
        out = np.empty((n, p), dtype=Y.dtype)
        scale = 1.0 / math.sqrt(k)
        w = self._panel_width(p, Y.itemsize)
        with _threads_for(self.N * p * self.N.bit_length()):
            self._adjoint_panels(Y, out, w, scale)
        return out

    def _adjoint_panels(self, Y, out, w, scale):
        p = Y.shape[1]
        for c0 in range(0, p, w):
            c1 = min(p, c0 + w)
            n2, _ = self._plan(c1 - c0, Y.itemsize)
            Z = np.empty((self.N, c1 - c0), dtype=Y.dtype)
            _k._srht_adjoint_fill(Y, self.rows, c0, c1, Z)
            _k._fwht_blocks(Z, n2)
            _k._fwht_stage2(Z, n2)
            _k._srht_adjoint_finish(Z, self._signs(Y.dtype), scale, out, c0)
        return out

    def _describe(self):
        return f"N={self.N}"


def srht(sketch_size, n, /, *, rng=None) -> SRHT:
    r"""Subsampled randomized Hadamard transform (SRHT) with a Numba fast Walsh–Hadamard.

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k``, ``1 <= k <= n``.
    n : int
        Input dimension; need not be a power of two (input is zero-padded to ``N``).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    SRHT
        Operator of shape (k, n) with :math:`\mathbb{E}[S^\top S] = I_n`.

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If ``k > n`` (an SRHT larger than its input is never useful: use the identity
        or a Gaussian sketch) or a size is < 1.

    Notes
    -----
    Two-level transform: ``H_N = H_{N/n2} (x) H_{n2}``. Stage 1 applies ``H_{n2}`` to
    cache-sized blocks of rows; stage 2 forms only the ``k`` sampled outputs
    (``k p N/n2`` adds) or finishes the transform, whichever is cheaper, so the cost
    is about ``N p (log2 n2 + 1)`` additions instead of ``N p log2 N``. Memory: one
    ``N x 256`` work panel. Sparse input is densified panel by panel (the transform
    mixes all rows).

    With ``k >= 4 (sqrt(d) + sqrt(8 ln(d n)))^2 ln d`` every singular value of ``S U``
    lies in ``[0.40, 1.48]`` for orthonormal ``U`` (n x d) with probability
    ``1 - O(1/d)`` (Tropp 2011, Thm 3.1); see :func:`rnla.bounds.srht_embedding_size`
    for the ``eps``-version.

    References
    ----------
    .. [1] N. Ailon and B. Chazelle, "The fast Johnson-Lindenstrauss transform and
       approximate nearest neighbors", SIAM J. Comput. 39 (2009).
    .. [2] J. A. Tropp, "Improved analysis of the subsampled randomized Hadamard
       transform", Adv. Adapt. Data Anal. 3 (2011).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import srht
    >>> S = srht(64, 1000, rng=0)
    >>> (S @ np.ones((1000, 5))).shape
    (64, 5)
    """
    k, n = _check_sizes(sketch_size, n)
    if k > n:
        raise ValueError(f"sketch_size={k} must satisfy 1 <= sketch_size <= n={n} for an SRHT")
    rng = check_rng(rng)
    N = 1 << max(0, (n - 1).bit_length())
    signs = _random_signs(rng, n)
    rows = np.sort(rng.choice(N, size=k, replace=False))
    return SRHT(k, n, signs, rows)


# ----------------------------------------------------------------------------------------
# TensorSketch
# ----------------------------------------------------------------------------------------


class TensorSketch(SketchOperator):
    r"""TensorSketch of degree ``p``: a sketch of :math:`\mathbb{R}^{n^p}` to ``k`` dims.

    As an operator it is the CountSketch of :math:`\mathbb{R}^{n^p}` (C-order
    flattening of ``p``-way tensors) with hash :math:`H(j_1..j_p) = \sum_t h_t(j_t)
    \bmod k` and sign :math:`\prod_t s_t(j_t)`; applying it to a general vector costs
    :math:`O(n^p)`. The point is :meth:`transform`, which sketches the rank-one
    tensors :math:`x^{\otimes p}` of the rows of ``X`` in :math:`O(p(n + k\log k))`
    per row by FFT, never forming :math:`x^{\otimes p}`.

    Attributes
    ----------
    degree : int
        Tensor order ``p``.
    hashes : ndarray of int64, shape (p, n)
        Hash ``h_t`` of each CountSketch.
    negative : ndarray of bool, shape (p, n)
        Whether ``s_t(j) = -1`` for each CountSketch.
    """

    def __init__(self, sketch_size: int, n: int, hashes: np.ndarray, negative: np.ndarray):
        k = sketch_size
        self.degree = hashes.shape[0]
        self.n_features = n
        super().__init__(k, n**self.degree)
        self.hashes = np.ascontiguousarray(hashes, dtype=np.int64)
        self.negative = np.ascontiguousarray(negative, dtype=bool)
        self.hashes.setflags(write=False)
        self.negative.setflags(write=False)
        self._stages = [
            HashSketch(k, self.hashes[t][:, None], self.negative[t][:, None], 1.0, "countsketch")
            for t in range(self.degree)
        ]
        self._full = None

    def _hash_sketch(self) -> HashSketch:
        """Return the equivalent CountSketch of the flattened tensor space (cached)."""
        if self._full is None:
            k, p = self.shape[0], self.degree
            H = np.zeros((1,), dtype=np.int64)
            neg = np.zeros((1,), dtype=bool)
            for t in range(p):
                H = (H[:, None] + self.hashes[t][None, :]).ravel() % k
                neg = (neg[:, None] ^ self.negative[t][None, :]).ravel()
            self._full = HashSketch(k, H[:, None], neg[:, None], 1.0, "tensor_sketch")
        return self._full

    def _apply_dense(self, A):
        return self._hash_sketch()._apply_dense(A)

    def _apply_sparse(self, A):
        return self._hash_sketch()._apply_sparse(A)

    def _adjoint_dense(self, Y):
        return self._hash_sketch()._adjoint_dense(Y)

    def transform(self, X):
        r"""Feature map :math:`\phi(x) = S\,x^{\otimes p}` of each row of ``X``.

        Parameters
        ----------
        X : array_like of shape (N, n) or (n,)
            Rows to sketch.

        Returns
        -------
        numpy.ndarray of shape (N, k) or (k,)
            :math:`\mathbb{E}\langle\phi(x), \phi(y)\rangle = \langle x, y\rangle^p`;
            float32 for float32 input.

        Raises
        ------
        ValueError
            If ``X`` does not have ``n`` columns or holds NaN/inf, or if a feature
            overflows the dtype (it scales as :math:`\|x\|^p`: entries of ``1e30``
            overflow float32 at ``p = 2``).

        Notes
        -----
        :math:`\phi(x) = \mathcal F^{-1}(\prod_t \mathcal F(C_t x))`: ``p``
        CountSketches (Numba) and real FFTs of length ``k`` (NumPy's pocketfft), in all
        :math:`O(N p (n + k \log k))` flops. If an intermediate overflows, the rows are
        scaled by powers of two to :math:`\max_i|x_i| < 1` (exact), transformed again
        and scaled back by :math:`2^{pe}` in float64; features that do not fit the dtype
        raise ``ValueError`` rather than return ``inf`` or NaN.
        """
        X = as_float_array(X, name="X", ndim=(1, 2))
        vector = X.ndim == 1
        X2 = X[None, :] if vector else np.ascontiguousarray(X)
        if X2.shape[1] != self.n_features:
            raise ValueError(
                f"X must have n={self.n_features} columns (features), got {X2.shape[1]}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._transform_rows(X2)
            if not np.isfinite(out).all():
                out = self._transform_rescaled(X2)
        return out[0] if vector else out

    def _transform_rows(self, X2):
        k = self.shape[0]
        spectrum = None
        for stage in self._stages:
            # C_t X^T, laid out as (N, k): X is the Fortran-ordered view of X^T.
            cs = stage._apply_dense(X2.T).T
            f = np.fft.rfft(cs, axis=1)
            spectrum = f if spectrum is None else spectrum * f
        return np.fft.irfft(spectrum, n=k, axis=1).astype(X2.dtype, copy=False)

    def _transform_rescaled(self, X2):
        r"""Rows scaled by powers of two (exact) to ``max|x| < 1``, rescaled at the end.

        The fallback when an intermediate of :meth:`_transform_rows` overflowed
        (:math:`x^{\otimes p}` beyond the dtype's range): it recovers every feature
        that is representable and refuses the call when a feature itself is not.
        """
        _, e = np.frexp(np.max(np.abs(X2), axis=1))
        e = e.astype(np.int64)
        out = self._transform_rows(np.ldexp(X2, -e[:, None].astype(np.int32)))
        # Rescale in float64 by 2**(p e): the feature is finite iff this fits the dtype.
        big = np.ldexp(out.astype(np.float64), (self.degree * e)[:, None])
        limit = np.finfo(X2.dtype).max
        fits = np.isfinite(out).all() and bool(np.all(np.abs(big) <= limit))
        if not fits:
            raise ValueError(
                f"the TensorSketch features of x^(tensor power {self.degree}) overflow "
                f"{X2.dtype} (largest finite value {limit:.3g}): rescale X "
                "(the features scale as the degree-th power of X)"
                + (" or use float64" if X2.dtype == np.float32 else "")
            )
        return big.astype(X2.dtype)

    def _describe(self):
        return f"degree={self.degree}, n_features={self.n_features}"


def tensor_sketch(sketch_size, n, degree=2, /, *, rng=None) -> TensorSketch:
    r"""TensorSketch (Pham–Pagh): sketch of degree-``p`` tensor powers via CountSketch+FFT.

    Parameters
    ----------
    sketch_size : int
        Sketch size ``k``, ``k >= 1``.
    n : int
        Dimension of the vectors whose tensor powers are sketched.
    degree : int, default=2
        Tensor order ``p >= 1`` (``p = 1`` is a CountSketch).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    TensorSketch
        Operator of shape ``(k, n**degree)``; use :meth:`TensorSketch.transform` on
        data rows.

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If a size or the degree is < 1.

    Notes
    -----
    Unbiased: :math:`\mathbb{E}\langle\phi(x),\phi(y)\rangle = \langle x,y\rangle^p`,
    with :math:`\operatorname{Var} \le (3^p - 1)/k\,\|x\|^{2p}\|y\|^{2p}`; the exact
    variance for fully random hashes is
    :func:`rnla.bounds.tensor_sketch_inner_product_variance`.

    References
    ----------
    .. [1] N. Pham and R. Pagh, "Fast and scalable polynomial kernels via explicit
       feature maps", KDD 2013.
    .. [2] H. Avron, H. Nguyen and D. Woodruff, "Subspace embeddings for the polynomial
       kernel", NeurIPS 2014.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import tensor_sketch
    >>> ts = tensor_sketch(128, 16, 2, rng=0)
    >>> ts.transform(np.ones((5, 16))).shape
    (5, 128)
    """
    k, n = _check_sizes(sketch_size, n)
    p = check_int(degree, "degree", minimum=1)
    rng = check_rng(rng)
    hashes = rng.integers(0, k, size=(p, n), dtype=np.int64)
    return TensorSketch(k, n, hashes, _random_negative(rng, (p, n)))


# Samplers live in their own module (they need the operators above); re-exported here so
# that ``rnla.sketch`` is the one public home of sketching and sampling.
from rnla._sampling import (  # noqa: E402
    SampleResult,
    SamplingSketch,
    leverage_score_sampling,
    leverage_scores,
    row_norm_sampling,
    sampling_sketch,
    uniform_sampling,
)
