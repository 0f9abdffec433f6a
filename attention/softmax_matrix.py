r"""The implicit softmax matrix :math:`A = \exp(QK^T s)` as an operator and an EntryMatrix.

Every method of the survey arXiv:2604.01757 approximates the attention output
:math:`Y = Z^{-1} A V` with :math:`A = \exp(QK^T s)` (elementwise), :math:`Z =
\operatorname{diag}(A\mathbf 1)`. :class:`SoftmaxMatrix` holds :math:`A` implicitly,
without ever forming the :math:`n \times m` array, and exposes it to the :mod:`rnla` core:
entries, rows and columns for RPCholesky, ACA and CUR (the EntryMatrix protocol of
:mod:`rnla.operators`), and blocked products for range finders and Krylov methods.

Because :math:`A` overflows for real heads (:math:`s\,q_i\cdot k_j > 709.8` in float64,
:math:`88.7` in float32), every object represents one of three row scalings of it,
:math:`M = \operatorname{diag}(e^{-c})\,A`, fixed by its :attr:`SoftmaxMatrix.form`:

``"stabilized"`` (default)
    :math:`\bar A = D_{\mathrm{row}}^{-1} A`, :math:`c_i = \max_j s\,q_i\cdot k_j` (the
    row maximum of the visible scores): entries in :math:`[0, 1]`, each row's largest
    entry exactly 1. Never overflows.
``"raw"``
    :math:`A` itself, :math:`c = 0`. Raises :class:`OverflowError` when an evaluated entry
    overflows.
``"normalized"``
    The row-stochastic attention weights :math:`P = Z^{-1} A`, :math:`c_i = \log z_i`
    (the matrix of the survey's Figures 5 and 8).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
from scipy.sparse.linalg import LinearOperator

from attention._core import _check_scale
from rnla._validation import as_float_array, check_int, result_dtype
from rnla.operators import EntryMatrixBase, KernelMatrix

__all__ = ["LiftFactors", "PSDLift", "SoftmaxMatrix"]

_FORMS = ("stabilized", "raw", "normalized")
# Entries per streamed block (8 MiB in float64), as in rnla.operators.KernelMatrix.
_BLOCK_ENTRIES = 1 << 20


class PSDLift(NamedTuple):
    r"""Positive-semidefinite lift of a softmax matrix (see :meth:`SoftmaxMatrix.psd_lift`).

    Attributes
    ----------
    matrix : rnla.operators.KernelMatrix, shape (n + m, n + m)
        :math:`\bar B = G(X, X)` with :math:`X = [\tau Q; K/\tau]` and the Gaussian kernel
        :math:`G(x, y) = \exp(-s\|x - y\|^2/2)`: symmetric PSD, unit diagonal, entries in
        :math:`(0, 1]`. Its off-diagonal block ``[:n, n:]`` is :math:`G_{QK}`.
    log_dq : ndarray of float64, shape (n,)
        :math:`\log D_Q = s\tau^2\|q_i\|^2/2`.
    log_dk : ndarray of float64, shape (m,)
        :math:`\log D_K = s\|k_j\|^2/(2\tau^2)`, so that
        :math:`A = D_Q G_{QK} D_K`.
    tau : float
        The balancing factor used.
    """

    matrix: KernelMatrix
    log_dq: np.ndarray
    log_dk: np.ndarray
    tau: float


class LiftFactors(NamedTuple):
    r"""Low-rank factors of a softmax matrix mapped back from its PSD lift.

    Attributes
    ----------
    U : ndarray, shape (n, r)
        Left factor.
    W : ndarray, shape (m, r)
        Right factor: :math:`U W^T` approximates the matrix :math:`M` the
        :class:`SoftmaxMatrix` represents (its :attr:`~SoftmaxMatrix.form`).
    fro_bound : float
        Deterministic bound on :math:`\|M - UW^T\|_F` (see
        :meth:`SoftmaxMatrix.lift_to_attention`).
    row_l1_bounds : ndarray of float64, shape (n,)
        Deterministic bounds on :math:`\|m_i - (UW^T)_i\|_1` per row, the input of
        :func:`attention.bounds.row_lemma`.
    residual_diag : ndarray of float64, shape (n + m,)
        :math:`e = \operatorname{diag}(\bar B - FF^T)` (plus a rounding allowance) used by
        the bounds.
    """

    U: np.ndarray
    W: np.ndarray
    fro_bound: float
    row_l1_bounds: np.ndarray
    residual_diag: np.ndarray


class _Stats:
    """Row maxima and log normalisers, computed once and shared between forms."""

    __slots__ = ("lse", "row_max")

    def __init__(self) -> None:
        self.row_max = None
        self.lse = None


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x)) if x.size else -math.inf
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(x - top))))


class SoftmaxMatrix(EntryMatrixBase):
    r"""Implicit softmax matrix :math:`A = \exp(s\,QK^T)`, held in log-stabilised form.

    Parameters
    ----------
    Q : array_like, shape (n, d)
        Queries of one head.
    K : array_like, shape (m, d)
        Keys of the same head.
    scale : float, optional
        Score scale :math:`s > 0`; ``1 / sqrt(d)`` by default.
    causal : bool, default=False
        Bottom-right aligned causal mask: entry :math:`(i, j)` is kept iff
        :math:`j \le i + m - n` (flash-attn convention; PyTorch's ``is_causal`` is
        top-left aligned, which differs when :math:`n \ne m`). Masked entries are 0.
    stabilized : bool, default=True
        Represent :math:`\bar A = D_{\mathrm{row}}^{-1} A` (True) or :math:`A` itself
        (False). :meth:`normalized` gives :math:`P = Z^{-1}A`.

    Attributes
    ----------
    shape : tuple of int
        ``(n, m)``.
    dtype : numpy.dtype
        ``float32`` if both ``Q`` and ``K`` are float32, else ``float64``.
    form : {"stabilized", "raw", "normalized"}
        Which matrix :math:`M = \operatorname{diag}(e^{-c}) A` the object represents.
    n_evaluations : int
        Entries delivered by ``diag``, ``rows``, ``cols``, ``entries`` and products
        (EntryMatrix protocol); the one-off statistics pass is counted separately in
        ``n_statistics_evaluations``.

    Raises
    ------
    TypeError
        Complex or non-numeric inputs, non-bool ``causal``/``stabilized``.
    ValueError
        ``Q`` or ``K`` not 2-D, empty or non-finite; different ``d``; ``scale`` not
        positive and finite.

    Notes
    -----
    **What each method returns.** Let :math:`c` be :meth:`log_row_scale` (0, the row
    maxima or the log normalisers, by form) and :math:`M = \operatorname{diag}(e^{-c})A`.
    ``diag``, ``rows``, ``cols``, ``entries``, ``matmat``, ``rmatmat``,
    ``as_linear_operator`` and ``row_sums`` all refer to :math:`M`, in ``dtype``.
    ``row_max`` (:math:`\max_j s\,q_i\cdot k_j`) and ``log_row_sums``
    (:math:`\log z_i = \log (A\mathbf 1)_i`, the log-sum-exp of the scores) refer to
    :math:`A` in every form and are float64. Rows that see no key (causal with
    :math:`n > m`) are zero in every form; their ``row_max`` and ``log_row_sums`` are
    :math:`-\infty` and their ``log_row_scale`` is 0.

    **Cost.** ``rows(idx)``: :math:`2|idx|md` flops (one GEMM) and :math:`|idx|m`
    exponentials; ``cols`` symmetrically; ``entries``: :math:`2d` flops per pair;
    a product with :math:`k` vectors: :math:`2nm(d + k)` flops, streamed in row blocks
    of about :math:`2^{20}` entries (memory :math:`O(2^{20} + (n + m)k)`, nothing
    :math:`n \times m`). With ``causal=True`` the blocks skip the masked upper part.
    The stabilised and normalised forms need the row maxima and normalisers, computed
    once in a streamed pass (:math:`2nmd` flops, :math:`O(n)` memory) at the first
    call that needs them and shared with :meth:`normalized`.

    **Rounding.** Scores are formed in ``dtype`` (one GEMM per block), the statistics
    are accumulated in float64. Rows, columns and single entries use different BLAS
    calls, so they agree to rounding (a few ulps of :math:`s\,|q_i\cdot k_j|`), not
    bitwise.

    The PSD lift (:meth:`psd_lift`) is the matrix :math:`B = \exp(s[Q;K][Q;K]^T)` of
    Skyformer [2]_ and WILDCAT, factored as :math:`D\,\bar B\,D` with a Gaussian kernel
    :math:`\bar B` with entries in (0, 1], so that the :mod:`rnla` PSD algorithms apply
    without overflow; see the survey [1]_, §2.

    References
    ----------
    .. [1] Serret et al., "Randomized numerical linear algebra for attention: a survey",
       arXiv:2604.01757, 2026.
    .. [2] Y. Chen, Q. Zeng, H. Ji, Y. Yang, "Skyformer: Remodel Self-Attention with
       Gaussian Kernel and Nyström Method", NeurIPS 2021. arXiv:2111.00035.

    Examples
    --------
    >>> import numpy as np
    >>> from attention.softmax_matrix import SoftmaxMatrix
    >>> rng = np.random.default_rng(0)
    >>> S = SoftmaxMatrix(rng.standard_normal((6, 4)), rng.standard_normal((5, 4)))
    >>> S.shape, S.rows([0, 2]).shape, S.matmat(np.ones((5, 2))).shape
    ((6, 5), (2, 5), (6, 2))
    >>> S.log_row_sums().shape, S.normalized().row_sums().round(12).tolist()[:2]
    ((6,), [1.0, 1.0])
    """

    def __init__(self, Q, K, *, scale=None, causal=False, stabilized=True) -> None:
        Q = as_float_array(Q, name="Q", ndim=2)
        K = as_float_array(K, name="K", ndim=2)
        if Q.shape[1] != K.shape[1]:
            raise ValueError(
                f"Q and K must have the same number of columns d, got Q.shape={Q.shape} "
                f"and K.shape={K.shape}"
            )
        for name, flag in (("causal", causal), ("stabilized", stabilized)):
            if not isinstance(flag, bool | np.bool_):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        dtype = result_dtype(Q.dtype, K.dtype)
        q = np.array(Q, dtype=dtype, order="C", copy=True)
        k = np.array(K, dtype=dtype, order="C", copy=True)
        q.flags.writeable = False
        k.flags.writeable = False
        self._init(
            q,
            k,
            _check_scale(scale, Q.shape[1]),
            bool(causal),
            "stabilized" if stabilized else "raw",
            _Stats(),
        )

    def _init(self, q, k, scale, causal, form, stats) -> None:
        super().__init__((q.shape[0], k.shape[0]), q.dtype)
        self._q, self._k = q, k
        self._scale = scale
        self._causal = causal
        self._form = form
        self._stats = stats
        self.n_statistics_evaluations = 0

    def _with_form(self, form: str) -> SoftmaxMatrix:
        new = object.__new__(SoftmaxMatrix)
        new._init(self._q, self._k, self._scale, self._causal, form, self._stats)
        return new

    # -- attributes ---------------------------------------------------------------------

    @property
    def Q(self) -> np.ndarray:
        """Queries, read-only, shape ``(n, d)``."""
        return self._q

    @property
    def K(self) -> np.ndarray:
        """Keys, read-only, shape ``(m, d)``."""
        return self._k

    @property
    def scale(self) -> float:
        """Score scale :math:`s`."""
        return self._scale

    @property
    def causal(self) -> bool:
        """Whether the bottom-right aligned causal mask is applied."""
        return self._causal

    @property
    def form(self) -> str:
        """``"stabilized"``, ``"raw"`` or ``"normalized"``: the matrix represented."""
        return self._form

    @property
    def offset(self) -> int:
        """Causal offset ``m - n``: query ``i`` sees key ``j`` iff ``j <= i + offset``."""
        return self.shape[1] - self.shape[0]

    def __repr__(self) -> str:
        return (
            f"SoftmaxMatrix(shape={self.shape}, form={self._form!r}, scale={self._scale:.4g}, "
            f"causal={self._causal}, dtype={self.dtype})"
        )

    def stabilized(self) -> SoftmaxMatrix:
        r"""Return the same matrix in the stabilised form :math:`\bar A = D_{\mathrm{row}}^{-1}A`.

        Returns
        -------
        SoftmaxMatrix
            Shares ``Q``, ``K`` and the computed statistics with ``self``.
        """
        return self._with_form("stabilized")

    def raw(self) -> SoftmaxMatrix:
        r"""Return the same matrix in the raw form :math:`A` (may overflow).

        Returns
        -------
        SoftmaxMatrix
            Shares ``Q``, ``K`` and the computed statistics with ``self``.
        """
        return self._with_form("raw")

    def normalized(self) -> SoftmaxMatrix:
        r"""Return the row-stochastic attention weights :math:`P = Z^{-1}A` as an operator.

        Returns
        -------
        SoftmaxMatrix
            Form ``"normalized"``: entries :math:`\exp(s\,q_i\cdot k_j - \log z_i)`, rows
            summing to 1 (0 for rows that see no key). Shares ``Q``, ``K`` and the
            statistics with ``self``; every operation of the class applies.
        """
        return self._with_form("normalized")

    # -- statistics ---------------------------------------------------------------------

    def _col_limit(self, stop: int) -> int:
        """Columns that rows ``< stop`` can see (all of them without a causal mask)."""
        m = self.shape[1]
        return m if not self._causal else max(0, min(m, stop + self.offset))

    def _block_rows(self) -> int:
        return max(1, min(self.shape[0], _BLOCK_ENTRIES // self.shape[1]))

    def _ensure_stats(self) -> _Stats:
        st = self._stats
        if st.lse is not None:
            return st
        n = self.shape[0]
        row_max = np.full(n, -np.inf)
        lse = np.full(n, -np.inf)
        b = self._block_rows()
        for start in range(0, n, b):
            stop = min(n, start + b)
            cm = self._col_limit(stop)
            if cm == 0:
                continue
            S = self._scores(np.arange(start, stop), slice(0, cm)).astype(np.float64)
            self.n_statistics_evaluations += S.size
            top = S.max(axis=1)
            seen = np.isfinite(top)
            shift = np.where(seen, top, 0.0)
            # Row max subtracted before exp: every exponent is <= 0 (the online-softmax trick).
            tot = np.exp(S - shift[:, None]).sum(axis=1)
            with np.errstate(divide="ignore"):
                lse[start:stop] = np.where(seen, shift + np.log(tot), -np.inf)
            row_max[start:stop] = top
        st.row_max, st.lse = row_max, lse
        return st

    def row_max(self) -> np.ndarray:
        r"""Return :math:`\max_j s\,q_i\cdot k_j` over the visible keys of each row.

        Returns
        -------
        ndarray of float64, shape (n,)
            :math:`-\infty` for rows that see no key. The first call costs a streamed
            pass over :math:`A` (:math:`2nmd` flops).
        """
        return self._ensure_stats().row_max.copy()

    def log_row_sums(self) -> np.ndarray:
        r"""Return :math:`\log z_i = \log\sum_j A_{ij}`, the log normaliser of :math:`A`.

        Returns
        -------
        ndarray of float64, shape (n,)
            The log-sum-exp of the scaled visible scores (the ``lse`` of exact
            attention), :math:`-\infty` for rows that see no key. Refers to :math:`A` in
            every form.
        """
        return self._ensure_stats().lse.copy()

    def log_row_scale(self) -> np.ndarray:
        r"""Return :math:`c` with :math:`A = \operatorname{diag}(e^{c})\,M`.

        Returns
        -------
        ndarray of float64, shape (n,)
            0 (``"raw"``), the row maxima (``"stabilized"``) or the log normalisers
            (``"normalized"``); 0 for rows that see no key.
        """
        if self._form == "raw":
            return np.zeros(self.shape[0])
        st = self._ensure_stats()
        c = st.row_max if self._form == "stabilized" else st.lse
        return np.where(np.isfinite(c), c, 0.0)

    def row_sums(self) -> np.ndarray:
        r"""Return :math:`M\mathbf 1`, the row sums of the represented matrix.

        Returns
        -------
        ndarray, shape (n,)
            In ``dtype``: :math:`z_i e^{-c_i}` in :math:`[1, m]` (stabilised), :math:`z_i`
            (raw) or 1 (normalised); 0 for rows that see no key. Computed from the cached
            statistics, no extra pass.

        Raises
        ------
        OverflowError
            Raw form whose normaliser overflows ``dtype``; use :meth:`log_row_sums`.
        """
        lse = self._ensure_stats().lse
        with np.errstate(over="ignore"):
            z = np.exp(lse - self.log_row_scale()).astype(self.dtype)
        self._check_finite(z)
        return z

    # -- entries ------------------------------------------------------------------------

    def _scores(self, rows, cols) -> np.ndarray:
        """Masked scaled scores ``s q_i . k_j`` (masked = -inf), in ``dtype``."""
        S = self._q[rows] @ self._k[cols].T
        S *= self.dtype.type(self._scale)
        if self._causal:
            r = np.arange(self.shape[0])[rows]
            c = np.arange(self.shape[1])[cols]
            S[c[None, :] > r[:, None] + self.offset] = -np.inf
        return S

    def _check_finite(self, X) -> None:
        if not np.isfinite(X).all():
            raise OverflowError(
                f"entries of the raw softmax matrix overflow {self.dtype} (largest finite "
                f"value {np.finfo(self.dtype).max:.3g}); use the stabilised form "
                "(stabilized=True), the normalised form, or log_row_sums()"
            )

    def _exp_block(self, rows, cols) -> np.ndarray:
        """Block ``M[rows, cols]`` (selectors: index arrays or slices)."""
        S = self._scores(rows, cols)
        if self._form != "raw":
            S -= self.log_row_scale()[rows].astype(self.dtype)[:, None]
        with np.errstate(over="ignore"):
            np.exp(S, out=S)
        if self._form == "raw":
            self._check_finite(S)
        return S

    def _rows(self, idx):
        return np.ascontiguousarray(self._exp_block(idx, slice(None)))

    def _cols(self, idx):
        return self._exp_block(slice(None), idx)

    def _entries(self, i, j):
        s = np.einsum("ij,ij->i", self._q[i], self._k[j])
        s *= self.dtype.type(self._scale)
        if self._form != "raw":
            s -= self.log_row_scale()[i].astype(self.dtype)
        if self._causal:
            s[j > i + self.offset] = -np.inf
        with np.errstate(over="ignore"):
            out = np.exp(s)
        if self._form == "raw":
            self._check_finite(out)
        return out

    def _diag(self):
        k = np.arange(min(self.shape), dtype=np.intp)
        return self._entries(k, k)

    # -- products -----------------------------------------------------------------------

    def _operand(self, X, rows: int, name: str) -> tuple[np.ndarray, bool]:
        X = as_float_array(X, name=name, ndim=(1, 2))
        vec = X.ndim == 1
        X2 = X.reshape(-1, 1) if vec else X
        if X2.shape[0] != rows:
            raise ValueError(
                f"{name} must have {rows} rows to multiply a matrix of shape {self.shape}, "
                f"got shape {X.shape}"
            )
        return X2, vec

    def _product(self, X, transpose: bool, block_size: int) -> np.ndarray:
        n, m = self.shape
        if self._form != "raw":
            self._ensure_stats()
        dt = np.result_type(self.dtype, X.dtype)
        out = np.zeros((m if transpose else n, X.shape[1]), dtype=dt)
        for start in range(0, n, block_size):
            stop = min(n, start + block_size)
            cm = self._col_limit(stop)
            if cm == 0:
                continue
            B = self._exp_block(np.arange(start, stop), slice(0, cm))
            self.n_evaluations += B.size
            if transpose:
                out[:cm] += B.T @ X[start:stop]
            else:
                out[start:stop] = B @ X[:cm]
        return out

    def matmat(self, X) -> np.ndarray:
        r"""Return :math:`MX` without forming :math:`M`.

        Parameters
        ----------
        X : array_like, shape (m,) or (m, k)
            Operand.

        Returns
        -------
        ndarray, shape (n,) or (n, k)
            In the promoted dtype of the matrix and ``X``.

        Raises
        ------
        ValueError
            ``X`` with the wrong number of rows, non-finite or empty.
        OverflowError
            Raw form whose entries overflow.
        """
        X2, vec = self._operand(X, self.shape[1], "X")
        out = self._product(X2, False, self._block_rows())
        return out.reshape(-1) if vec else out

    def rmatmat(self, X) -> np.ndarray:
        r"""Return :math:`M^TX` without forming :math:`M`: :meth:`matmat` of the transpose.

        ``X`` has shape ``(n,)`` or ``(n, k)``, the result ``(m,)`` or ``(m, k)``;
        dtype and errors as for :meth:`matmat`.
        """
        X2, vec = self._operand(X, self.shape[0], "X")
        out = self._product(X2, True, self._block_rows())
        return out.reshape(-1) if vec else out

    def as_linear_operator(self, *, block_size: int | None = None) -> LinearOperator:
        r"""Return :math:`M` as a :class:`~scipy.sparse.linalg.LinearOperator`.

        Parameters
        ----------
        block_size : int, optional
            Rows per streamed block; default about :math:`2^{20}/m`.

        Returns
        -------
        scipy.sparse.linalg.LinearOperator
            Shape ``(n, m)``, dtype ``self.dtype``. ``matmat`` and ``rmatmat`` stream the
            same row blocks, so the adjoint is exact for the computed entries (dot test
            at rounding level).

        Raises
        ------
        TypeError
            Non-integer ``block_size``.
        ValueError
            ``block_size < 1``.
        """
        b = (
            self._block_rows()
            if block_size is None
            else min(check_int(block_size, "block_size", minimum=1), self.shape[0])
        )
        return _SoftmaxOperator(self, b)

    # -- PSD lift -----------------------------------------------------------------------

    def _lift_logs(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        q = self._q.astype(np.float64)
        k = self._k.astype(np.float64)
        log_dq = 0.5 * self._scale * tau**2 * np.einsum("ij,ij->i", q, q)
        log_dk = 0.5 * self._scale / tau**2 * np.einsum("ij,ij->i", k, k)
        return log_dq, log_dk

    def psd_lift(self, *, tau: float = 1.0) -> PSDLift:
        r"""Return the PSD lift :math:`\bar B` as an EntryMatrix, with its diagonal scalings.

        Parameters
        ----------
        tau : float, default=1.0
            Balancing factor: :math:`QK^T = (\tau Q)(K/\tau)^T` for any :math:`\tau > 0`,
            but the lift and the scalings depend on it (Skyformer's rescaling).

        Returns
        -------
        PSDLift
            ``(matrix, log_dq, log_dk, tau)``: ``matrix`` is the
            :class:`~rnla.operators.KernelMatrix` of the Gaussian kernel with bandwidth
            :math:`1/\sqrt{s}` on :math:`X = [\tau Q; K/\tau]`, of size
            :math:`(n + m) \times (n + m)`.

        Raises
        ------
        ValueError
            ``causal=True`` (a masked matrix is not the off-diagonal block of a PSD
            matrix; lift the unmasked matrix and mask the product), or ``tau`` not
            positive and finite.

        Notes
        -----
        Polarisation: :math:`s\,q\cdot k = s\|q\|^2/2 + s\|k\|^2/2 - s\|q - k\|^2/2`, so
        :math:`A = D_Q G_{QK} D_K` with :math:`G_{QK} = \exp(-s\|q_i - k_j\|^2/2) \in
        (0, 1]`, :math:`D_Q = \operatorname{diag}(e^{s\|q_i\|^2/2})` and :math:`D_K`
        likewise. :math:`G_{QK}` is the off-diagonal block of the Gaussian kernel matrix
        :math:`\bar B` of all :math:`n + m` points, which is PSD with unit diagonal, so
        ``rnla.rpcholesky``, ``rnla.nystrom``, ``rnla.aca`` and ``rnla.rsvd`` run on it
        without forming it. For any approximation :math:`\hat{\bar B}`,
        :math:`\|A - D_Q\hat G_{QK}D_K\| \le \|D_Q\|\,\|D_K\|\,\|\bar B - \hat{\bar B}\|`
        in the spectral and Frobenius norms (the off-diagonal block of a matrix is no
        larger than the matrix), the Skyformer/WILDCAT inequality of the survey, §2. The
        lift loses the spectral decay of :math:`A` (survey §4): expect a higher rank.
        Costs nothing until entries are requested.
        """
        if self._causal:
            raise ValueError(
                "psd_lift() needs causal=False: the causally masked matrix is not an "
                "off-diagonal block of a PSD matrix; lift SoftmaxMatrix(Q, K) and apply the "
                "mask to the low-rank product"
            )
        tau = _check_positive(tau, "tau")
        X = np.vstack([self._q * self.dtype.type(tau), self._k / self.dtype.type(tau)])
        B = KernelMatrix(X, kernel="gaussian", bandwidth=1.0 / math.sqrt(self._scale))
        log_dq, log_dk = self._lift_logs(tau)
        return PSDLift(matrix=B, log_dq=log_dq, log_dk=log_dk, tau=tau)

    def lift_to_attention(self, F, *, tau: float = 1.0) -> LiftFactors:
        r"""Map a Nyström-type factor of the PSD lift back to factors of :math:`M`.

        Parameters
        ----------
        F : array_like, shape (n + m, r)
            Factor with :math:`\bar B \succeq FF^T` and :math:`\bar B - FF^T` PSD, as
            returned by ``rnla.rpcholesky(lift.matrix, r).F`` (any column Nyström or
            partial Cholesky factor qualifies; rSVD and ACA factors do not).
        tau : float, default=1.0
            The ``tau`` the lift was built with.

        Returns
        -------
        LiftFactors
            ``U`` (n, r) and ``W`` (m, r) with :math:`M \approx UW^T` (the represented
            form), plus the deterministic bounds below.

        Raises
        ------
        ValueError
            Wrong shape, non-finite ``F``, ``causal=True``, or a row with
            :math:`\|F_i\|^2 > 1` beyond rounding (then :math:`\bar B - FF^T` is not PSD).
        OverflowError
            The balanced factors overflow ``dtype`` (the dynamic range of
            :math:`D_Q, D_K` is too large; the bounds would be useless anyway).

        Notes
        -----
        With :math:`F = [F_Q; F_K]`, :math:`U W^T = \operatorname{diag}(e^{-c})D_Q F_QF_K^T
        D_K` where a common factor :math:`e^{\pm t}` balances the two sides. The residual
        :math:`E = \bar B - FF^T` is PSD, so :math:`|E_{ij}| \le \sqrt{e_ie_j}` with
        :math:`e = \operatorname{diag}(E) = 1 - \|F_i\|^2` (computable from :math:`F`
        alone). Hence, with :math:`\alpha_i = e^{\log D_{Q,i} - c_i}` and
        :math:`\beta_j = D_{K,j}`,

        .. math::

            \|m_i - (UW^T)_i\|_1 \le \alpha_i\sqrt{e_i}\sum_j \beta_j\sqrt{e_j},
            \qquad
            \|M - UW^T\|_F^2 \le \Bigl(\sum_i \alpha_i^2 e_i\Bigr)
            \Bigl(\sum_j \beta_j^2 e_j\Bigr),

        which is never worse than the survey's
        :math:`\|D_Q\|\|D_K\|\|\bar B - FF^T\|_F` (since
        :math:`\|E_{QK}\|_F \le \sqrt{\operatorname{tr}E_{QQ}\operatorname{tr}E_{KK}}
        \le \operatorname{tr}E/2`). A rounding allowance of :math:`10\,r\,\epsilon` is
        added to every :math:`e_i`. Cost :math:`O((n + m)r)`.
        """
        if self._causal:
            raise ValueError("lift_to_attention() needs causal=False (see psd_lift)")
        tau = _check_positive(tau, "tau")
        n, m = self.shape
        F = as_float_array(F, name="F", ndim=2)
        if F.shape[0] != n + m:
            raise ValueError(
                f"F must have n + m = {n + m} rows (a factor of the lift), got shape {F.shape}"
            )
        dt = result_dtype(F.dtype, self.dtype)
        F64 = F.astype(np.float64)
        r = F.shape[1]
        sq = np.einsum("ij,ij->i", F64, F64)
        eps = float(np.finfo(dt).eps)
        allowance = 10.0 * max(r, 1) * eps
        if sq.max() > 1.0 + 100.0 * allowance:
            i = int(np.argmax(sq))
            raise ValueError(
                f"||F[{i}]||^2 = {sq[i]:.6g} > 1 = lift diagonal: F F^T is not dominated by "
                "the lift, so F is not a Nyström-type factor of it"
            )
        e = np.maximum(1.0 - sq, 0.0) + allowance
        log_dq, log_dk = self._lift_logs(tau)
        log_a = log_dq - self.log_row_scale()
        log_b = log_dk
        t = 0.5 * (log_a.max() - log_b.max())
        with np.errstate(over="ignore"):
            U = np.exp(log_a - t)[:, None] * F64[:n]
            W = np.exp(log_b + t)[:, None] * F64[n:]
        if not (np.isfinite(U).all() and np.isfinite(W).all()):
            raise OverflowError(
                "the factors U, W overflow: the scalings exp(s||q||^2/2), exp(s||k||^2/2) "
                "span too large a range; try another tau or a low-rank method on A directly"
            )
        half_log_e = 0.5 * np.log(e)
        log_sk = _logsumexp(log_b + half_log_e[n:])
        with np.errstate(over="ignore"):
            row_l1 = np.exp(log_a + half_log_e[:n] + log_sk)
            log_fro2 = _logsumexp(2 * log_a + np.log(e[:n])) + _logsumexp(
                2 * log_b + np.log(e[n:])
            )
            fro = math.exp(0.5 * log_fro2) if 0.5 * log_fro2 < 709.0 else math.inf
        return LiftFactors(
            U=U.astype(dt), W=W.astype(dt), fro_bound=fro, row_l1_bounds=row_l1, residual_diag=e
        )


class _SoftmaxOperator(LinearOperator):
    """Row-block streaming operator of a :class:`SoftmaxMatrix`."""

    def __init__(self, S: SoftmaxMatrix, block_size: int) -> None:
        super().__init__(dtype=S.dtype, shape=S.shape)
        self._S = S
        self.block_size = block_size

    def _matmat(self, X):
        X = np.asarray(X)
        return self._S._product(X.reshape(X.shape[0], -1), False, self.block_size)

    def _rmatmat(self, X):
        X = np.asarray(X)
        return self._S._product(X.reshape(X.shape[0], -1), True, self.block_size)

    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, x):
        return self._rmatmat(np.asarray(x).reshape(-1, 1)).reshape(-1)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value} must be finite and > 0")
    return value
