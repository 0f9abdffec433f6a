r"""Row samplers: leverage scores, importance sampling and the sampling sketch.

A row sampler draws ``s`` row indices of a tall matrix together with weights such that
the sampled-and-reweighted matrix ``SX = X[indices] * weights[:, None]`` is an unbiased
sketch of the Gram matrix:

.. math::

    \mathbb E\big[(SX)^\top (SX)\big] = X^\top X .

For i.i.d. sampling with replacement with probabilities :math:`p_i` the weights are
:math:`1/\sqrt{s\,p_i}`; without replacement (fixed-size systematic sampling with
inclusion probabilities :math:`\pi_i`) they are :math:`1/\sqrt{\pi_i}`. The result is a
:class:`SampleResult`; :func:`sampling_sketch` turns it into a :class:`SamplingSketch`,
the ``(s, n)`` :class:`~rnla.sketch.SketchOperator` with ``S[t, indices[t]] =
weights[t]``.

Everything here is NumPy/SciPy: drawing ``s`` indices is one ``cumsum`` and one
``searchsorted`` (or ``Generator.choice``), gathers are fancy indexing and scatters
``np.add.at``, so no Numba kernel is needed.

These names are re-exported by :mod:`rnla.sketch`.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from rnla._validation import (
    AccuracyWarning,
    as_float_array,
    as_sparse,
    check_int,
    check_option,
    check_probability,
    check_rank,
    check_real,
    check_rng,
)
from rnla.bounds import (
    gaussian_embedding_size,
    sparse_sign_embedding_size,
    srht_embedding_size,
)
from rnla.sketch import SketchOperator, gaussian, sparse_sign, srht

__all__ = [
    "SampleResult",
    "SamplingSketch",
    "leverage_score_sampling",
    "leverage_scores",
    "row_norm_sampling",
    "sampling_sketch",
    "uniform_sampling",
]

_METHODS = ("exact", "sketched")
_SPARSE_SIGN_NNZ = 8


class SampleResult(NamedTuple):
    r"""Sampled row indices with importance weights.

    Attributes
    ----------
    indices : ndarray of int64, shape (s,)
        Sampled rows, each in ``[0, n)``. With replacement they are i.i.d. draws in
        draw order (repeats possible); without replacement they are distinct and
        sorted ascending.
    weights : ndarray of shape (s,)
        float64 (float32 from :func:`leverage_score_sampling` of float32 input).
        Positive weights such that ``S X = X[indices] * weights[:, None]`` satisfies
        :math:`\mathbb E[(SX)^\top SX] = X^\top X` for every ``X`` whose nonzero rows all
        have positive sampling probability: :math:`1/\sqrt{s p_i}` with replacement,
        :math:`1/\sqrt{\pi_i}` (inclusion probability) without.
    """

    indices: np.ndarray
    weights: np.ndarray


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _check_replace(replace) -> bool:
    if not isinstance(replace, bool | np.bool_):
        raise TypeError(f"replace must be a bool, got {replace!r} ({type(replace).__name__})")
    return bool(replace)


def _check_tol(tol) -> float | None:
    if tol is None:
        return None
    return check_real(tol, "tol", lower=0, upper=1, open_left=False)


def _as_matrix(A, name: str, *, allow_sparse: bool):
    """Validate a dense or (optionally) sparse 2-D matrix under the dtype contract."""
    if isinstance(A, LinearOperator):
        raise TypeError(
            f"{name} must be a dense array or a scipy.sparse matrix (its rows are read), "
            f"got a {type(A).__name__}"
        )
    if sp.issparse(A):
        if not allow_sparse:
            raise TypeError(
                f"{name} is a scipy.sparse matrix, which method='exact' does not accept "
                "(it needs a dense QR): pass A.toarray() or use method='sketched'"
            )
        return as_sparse(A, name=name)
    return as_float_array(A, name=name, ndim=2)


# ----------------------------------------------------------------------------------------
# leverage scores
# ----------------------------------------------------------------------------------------


def _numerical_rank(diag_r: np.ndarray, tol: float) -> int:
    """Count the leading ``|R_jj| > tol |R_00|`` of a column-pivoted QR factor."""
    mags = np.abs(diag_r)
    if mags.size == 0 or not mags[0] > 0:
        return 0
    small = mags <= tol * mags[0]
    # Pivoting makes |R_jj| non-increasing; count up to the first small one anyway.
    return int(np.argmax(small)) if small.any() else int(mags.size)


def _default_tol(shape, dtype) -> float:
    return max(shape) * float(np.finfo(dtype).eps)


def _row_sq_norms(B: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", B, B)


def _exact_scores(A: np.ndarray, rank, tol) -> np.ndarray:
    if tol is None:
        tol = _default_tol(A.shape, A.dtype)
    if rank is None:
        Q, R, _ = sla.qr(A, mode="economic", pivoting=True, check_finite=False)
        r = _numerical_rank(np.diag(R), tol)
        return _row_sq_norms(Q[:, :r])
    U, sv, _ = sla.svd(A, full_matrices=False, check_finite=False)
    if not sv[rank - 1] > tol * sv[0]:
        warnings.warn(
            f"rank={rank} exceeds the numerical rank of A (sigma_{rank}={sv[rank - 1]:.3e} "
            f"<= tol * sigma_1 = {tol * sv[0]:.3e}): the rank-{rank} leverage scores are "
            "not determined by A",
            AccuracyWarning,
            stacklevel=3,
        )
    return _row_sq_norms(U[:, :rank])


def _chernoff_exponent(eps: float) -> float:
    """Return ``eps^2/2 - eps^3/3``, the chi-square Chernoff exponent.

    Both tails of ``chi2_k / k`` beyond ``1 +- eps`` are ``<= exp(-k/2 * this)``
    (Dasgupta-Gupta 2003, Lemma 2.2).
    """
    return eps * eps / 2.0 - eps**3 / 3.0


def _proven_embedding_size(sketch: str, m: int, n: int, eps: float, delta: float) -> int:
    """Return the proven rows of an ``eps``-subspace embedding of dimension ``m``.

    Failure probability ``delta``; ``n`` when the proven size does not fit.
    """
    if sketch == "gaussian":
        return gaussian_embedding_size(m, eps=eps, delta=delta).sketch_size
    if sketch == "sparse_sign":
        return sparse_sign_embedding_size(m, eps=eps, delta=delta, nnz_per_col=8).sketch_size
    try:
        return srht_embedding_size(m, n, eps=eps, delta=delta).sketch_size
    except ValueError:
        # The proven SRHT size exceeds n: no sketch of this kind can save work.
        return n


def _sketched_sizes(n, m, eps, delta, sketch, sketch_size, jl_dim):
    """``(k1, r2)``: rows of the embedding ``Pi_1`` and columns of the JL ``Pi_2``."""
    eps_split = eps / 3.0
    if jl_dim is None:
        r2 = math.ceil(2.0 * math.log(4.0 * n / delta) / _chernoff_exponent(eps_split))
    else:
        r2 = jl_dim
    if r2 >= m:
        # The second stage is skipped (exact row norms are cheaper than a JL of
        # dimension >= rank), so the whole budget goes to the embedding.
        eps1, delta1 = eps / (1.0 + eps), delta
    else:
        eps1, delta1 = eps_split, delta / 2.0
    if sketch_size is None:
        k1 = _proven_embedding_size(sketch, m, n, eps1, delta1)
    else:
        k1 = sketch_size
    return k1, r2


def _make_sketch(sketch: str, k: int, n: int, rng):
    if sketch == "gaussian":
        return gaussian(k, n, rng=rng)
    if sketch == "srht":
        return srht(k, n, rng=rng)
    return sparse_sign(k, n, nnz_per_col=min(_SPARSE_SIGN_NNZ, k), rng=rng)


def _sketched_scores(A, eps, delta, sketch, sketch_size, jl_dim, tol, rng) -> np.ndarray:
    n, d = A.shape
    m = min(n, d)
    k1, r2 = _sketched_sizes(n, m, eps, delta, sketch, sketch_size, jl_dim)
    if k1 >= n:
        # A sketch with at least n rows cannot save work; the exact scores satisfy every
        # accuracy guarantee.
        dense = A.toarray() if sp.issparse(A) else A
        return _exact_scores(dense, None, tol)
    SA = _make_sketch(sketch, k1, n, rng) @ A
    if tol is None:
        tol = _default_tol(SA.shape, SA.dtype)
    _, R, piv = sla.qr(SA, mode="economic", pivoting=True, check_finite=False)
    r = _numerical_rank(np.diag(R), tol)
    if r == 0:
        return np.zeros(n, dtype=SA.dtype)
    R11 = R[:r, :r]
    A_sel = A[:, piv[:r]]
    if r2 >= r:
        # A_sel R11^{-1} exactly: n r^2 flops, no worse than the JL product.
        M = sla.solve_triangular(R11, np.eye(r, dtype=R11.dtype), check_finite=False)
    else:
        G = rng.standard_normal((r, r2)) / math.sqrt(r2)
        M = sla.solve_triangular(R11, G.astype(R11.dtype), check_finite=False)
    B = A_sel @ M
    B = np.asarray(B.toarray() if sp.issparse(B) else B)
    return _row_sq_norms(B).astype(SA.dtype, copy=False)


def leverage_scores(
    A,
    /,
    *,
    method: str = "exact",
    rank: int | None = None,
    tol: float | None = None,
    sketch: str = "sparse_sign",
    eps: float = 0.5,
    delta: float = 0.1,
    sketch_size: int | None = None,
    jl_dim: int | None = None,
    rng=None,
) -> np.ndarray:
    r"""Row leverage scores of a matrix, exactly or by the two-stage sketch of DMMW.

    The leverage score of row ``i`` is :math:`\ell_i = \|e_i^\top U\|_2^2` for ``U`` an
    orthonormal basis of the column space of ``A`` (of the numerical rank ``r``, or of
    the top ``rank`` left singular vectors when ``rank`` is given). They lie in
    ``[0, 1]`` and sum to the rank.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix, shape (n, d)
        Input matrix, usually tall. Sparse input requires ``method="sketched"``.
    method : {"exact", "sketched"}, default="exact"
        ``"exact"``: column-pivoted Householder QR (or thin SVD when ``rank`` is
        given). ``"sketched"``: Drineas–Magdon-Ismail–Mahoney–Woodruff (DMMW), accurate
        to a relative ``eps`` with probability ``1 - delta`` at the default sizes.
    rank : int, optional
        Exact method only: return the rank-``rank`` leverage scores (squared row norms
        of the top ``rank`` left singular vectors), ``1 <= rank <= min(n, d)``.
        ``None`` uses the numerical rank.
    tol : float, optional
        Relative threshold of the numerical rank: ``|R_jj| > tol * |R_00|`` for the
        pivoted QR factor ``R`` (of ``A``, or of the sketch ``Pi_1 A``). Default
        ``max(rows, d) * eps_machine`` of the data's dtype, the threshold of
        :func:`numpy.linalg.matrix_rank` applied to the QR diagonal.
    sketch : {"sparse_sign", "gaussian", "srht"}, default="sparse_sign"
        First-stage embedding ``Pi_1`` (sketched method). The sparse sign sketch
        (``nnz_per_col=8``) costs ``8 nnz(A)``, the cheapest for sparse input.
    eps : float, default=0.5
        Target relative accuracy of the sketched scores, in (0, 1).
    delta : float, default=0.1
        Failure probability of the sketched guarantee, in (0, 1).
    sketch_size : int, optional
        Rows ``k1`` of ``Pi_1``; default: the proven size below. An explicit size
        voids the ``(eps, delta)`` guarantee (use :mod:`rnla.bounds` to size it).
    jl_dim : int, optional
        Columns ``r2`` of the Gaussian JL ``Pi_2``; default: the proven size below.
        When ``r2 >= rank`` the JL stage is skipped (exact row norms of
        :math:`A R^{-1}` cost no more).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness (sketched method), normalised with
        :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.ndarray of shape (n,)
        Leverage scores, float32 for float32 input, float64 otherwise. Exact scores sum
        to the (numerical) rank; zero rows have score 0; a wide matrix of full row rank
        has every score equal to 1.

    Raises
    ------
    TypeError
        Complex or non-numeric input, a :class:`LinearOperator`, sparse input with
        ``method="exact"``, or a non-integer size.
    ValueError
        ``A`` not 2-D, empty or non-finite; unknown ``method`` or ``sketch`` (the
        message lists the allowed names); ``rank`` out of range or given with
        ``method="sketched"``; ``eps``, ``delta`` or ``tol`` out of range; sizes < 1.

    Warns
    -----
    AccuracyWarning
        When ``rank`` exceeds the numerical rank (the rank-``rank`` subspace is then
        not determined by ``A``).

    Notes
    -----
    **Exact.** Column-pivoted QR :math:`AP = QR` (LAPACK ``geqp3``,
    about :math:`4nd^2 - \tfrac43 d^3` flops with ``Q`` formed); ``r`` is the
    numerical rank from ``diag(R)``; :math:`\ell_i = \|Q_{i,1:r}\|^2`. With ``rank``,
    the thin SVD (``gesdd``) replaces the QR.

    **Sketched (DMMW, Algorithm 1).** Draw ``Pi_1`` (``k1 x n``), factor
    :math:`\Pi_1 A P = Q_1 R` with column pivoting, keep the ``r`` pivot columns
    :math:`A_S` and :math:`R_{11}`, draw ``Pi_2`` (``r x r2``, i.i.d.
    :math:`N(0, 1/r_2)`) and return
    :math:`\tilde\ell_i = \|e_i^\top A_S R_{11}^{-1}\Pi_2\|^2`. Cost: one sketch
    (``8 nnz(A)`` sparse sign, ``~ n d log k1`` SRHT, ``2 k1 n d`` Gaussian),
    :math:`4 k_1 d^2` for the QR and :math:`2\,\mathrm{nnz}(A_S)\min(r, r_2)` for the
    product.

    *Stage 1 (deterministic given the embedding).* If every squared singular value of
    :math:`\Pi_1 U` lies in :math:`[1-\varepsilon_1, 1+\varepsilon_1]`, then
    :math:`\ell_i/(1+\varepsilon_1) \le \hat\ell_i \le \ell_i/(1-\varepsilon_1)` for
    :math:`\hat\ell_i = \|e_i^\top A_S R_{11}^{-1}\|^2`. Proof: :math:`A_S` spans
    :math:`\mathrm{range}(A)` (``Pi_1`` is injective on it), so
    :math:`A_S R_{11}^{-1} = UT` with ``T`` invertible, and :math:`\Pi_1 U T = Q_1`
    has orthonormal columns, hence :math:`TT^\top = (U^\top\Pi_1^\top\Pi_1U)^{-1}` and
    :math:`\hat\ell_i = u_i^\top TT^\top u_i`.

    *Stage 2.* For a fixed row ``b``, :math:`\|b^\top\Pi_2\|^2/\|b\|^2 \sim
    \chi^2_{r_2}/r_2`, whose tails beyond :math:`1 \pm \varepsilon_2` are each at most
    :math:`\exp(-\tfrac{r_2}{2}(\varepsilon_2^2/2 - \varepsilon_2^3/3))`
    (Dasgupta–Gupta 2003, Lemma 2.2); a union bound over the ``n`` rows.

    *Guarantee (explicit constants, derived here).* With the default sizes, with
    probability at least :math:`1-\delta`,
    :math:`|\tilde\ell_i - \ell_i| \le \varepsilon\,\ell_i` for all ``i`` at once:

    * :math:`r_2 = \lceil 2\ln(4n/\delta)/h(\varepsilon/3)\rceil`,
      :math:`h(e) = e^2/2 - e^3/3`. If :math:`r_2 \ge \min(n, d)` stage 2 is
      skipped and ``k1`` is the proven embedding size (:mod:`rnla.bounds`:
      :func:`~rnla.bounds.gaussian_embedding_size`,
      :func:`~rnla.bounds.srht_embedding_size`,
      :func:`~rnla.bounds.sparse_sign_embedding_size`) for dimension
      :math:`\min(n, d)`, distortion :math:`\varepsilon/(1+\varepsilon)` and failure
      :math:`\delta`;
    * otherwise both stages get :math:`\varepsilon/3` and :math:`\delta/2`, and
      :math:`(1+\varepsilon/3)/(1-\varepsilon/3) \le 1+\varepsilon`,
      :math:`(1-\varepsilon/3)/(1+\varepsilon/3) \ge 1-\varepsilon`.

    If ``k1`` is at least ``n`` (small ``n``, or a proven SRHT size above ``n``)
    sketching saves nothing and the exact scores are returned (sparse input is then
    densified). The proven sizes
    are pessimistic (e.g. Gaussian ``k1 ~ 42 (sqrt(d) + 2.4)^2`` at ``eps = 0.5``), so
    the method pays off for very tall or sparse ``A``; practical sizes such as
    ``sketch_size = 4 d`` are much smaller but come without this guarantee.

    DMMW (2012, Algorithm 1 and its main theorem) prove the same ``1 +- eps``
    relative accuracy with an SRHT :math:`\Pi_1` of
    :math:`O(\varepsilon^{-2} d \ln n \ln(\varepsilon^{-2} d\ln n))` rows and
    :math:`r_2 = O(\varepsilon^{-2}\ln n)`, with constant success probability; their
    sizes are stated up to unspecified constants (``O``), hence the explicit
    derivation above.

    References
    ----------
    .. [1] P. Drineas, M. Magdon-Ismail, M. W. Mahoney and D. P. Woodruff, "Fast
       approximation of matrix coherence and statistical leverage", J. Mach. Learn.
       Res. 13 (2012), 3475-3506.
    .. [2] S. Dasgupta and A. Gupta, "An elementary proof of a theorem of Johnson and
       Lindenstrauss", Random Struct. Algorithms 22 (2003), Lemma 2.2.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import leverage_scores
    >>> A = np.random.default_rng(0).standard_normal((500, 4))
    >>> leverage_scores(A).shape
    (500,)
    >>> leverage_scores(A, method="sketched", sketch_size=40, rng=0).shape
    (500,)
    """
    method = check_option(method, _METHODS, "method")
    sketch = check_option(sketch, ("sparse_sign", "gaussian", "srht"), "sketch")
    tol = _check_tol(tol)
    A = _as_matrix(A, "A", allow_sparse=method == "sketched")
    if method == "exact":
        if rank is not None:
            rank = check_rank(rank, A.shape)
        return _exact_scores(A, rank, tol)
    if rank is not None:
        raise ValueError(
            f"rank={rank!r} is only supported with method='exact' (rank-k leverage scores "
            "need the top singular subspace); use rank=None with method='sketched'"
        )
    eps = check_probability(eps, "eps")
    delta = check_probability(delta, "delta")
    if sketch_size is not None:
        sketch_size = check_int(sketch_size, "sketch_size", minimum=1)
    if jl_dim is not None:
        jl_dim = check_int(jl_dim, "jl_dim", minimum=1)
    rng = check_rng(rng)
    return _sketched_scores(A, eps, delta, sketch, sketch_size, jl_dim, tol, rng)


# ----------------------------------------------------------------------------------------
# sampling with given probabilities
# ----------------------------------------------------------------------------------------


def _inclusion_probabilities(p: np.ndarray, s: int) -> np.ndarray:
    """``pi_i = min(1, c p_i)`` with ``c`` chosen so that ``sum(pi) = s``.

    Sort the positive ``p`` decreasingly (``q``); with ``k`` certainty units the rest
    must satisfy ``c = (s - k) / sum_{j >= k} q_j`` and ``c q_k <= 1``. The smallest
    such ``k`` is consistent: ``c_k q_{k-1} > 1`` is equivalent to the failure of
    ``k - 1``, so exactly the ``k`` largest get ``pi = 1``.
    """
    q = np.sort(p[p > 0])[::-1]
    tail = np.cumsum(q[::-1])[::-1]
    ks = np.arange(s)
    c = (s - ks) / tail[ks]
    k = int(np.argmax(c * q[ks] <= 1.0))  # k = s - 1 always qualifies
    return np.minimum(1.0, c[k] * p)


def _sample(p: np.ndarray, s: int, replace: bool, rng) -> SampleResult:
    """Draw from normalised probabilities ``p`` (float64, nonnegative, sum 1)."""
    n = p.shape[0]
    if replace:
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        # side="right" never selects a zero-probability row: its cdf step is empty.
        idx = np.searchsorted(cdf, rng.random(s), side="right")
        np.minimum(idx, n - 1, out=idx)
        idx = idx.astype(np.int64, copy=False)
        return SampleResult(idx, 1.0 / np.sqrt(s * p[idx]))
    n_pos = int(np.count_nonzero(p))
    if s > n_pos:
        raise ValueError(
            f"s={s} must be <= {n_pos}, the number of rows with nonzero probability, "
            "when sampling without replacement"
        )
    pi = _inclusion_probabilities(p, s)
    certain = np.flatnonzero(pi >= 1.0)
    rest = np.flatnonzero((pi > 0.0) & (pi < 1.0))
    m = s - certain.size
    chosen = np.empty(0, dtype=np.int64)
    if m > 0:
        # Randomised systematic sampling (Madow 1949): unit intervals of length
        # pi_i < 1 in random order, hit by the grid u + {0, ..., m-1}; each is hit at
        # most once and with probability exactly pi_i.
        order = rng.permutation(rest)
        edges = np.cumsum(pi[order])
        edges *= m / edges[-1]
        edges[-1] = m
        pos = np.searchsorted(edges, rng.random() + np.arange(m), side="right")
        chosen = order[pos]
    idx = np.sort(np.concatenate([certain, chosen])).astype(np.int64, copy=False)
    return SampleResult(idx, 1.0 / np.sqrt(pi[idx]))


def _probabilities_from(values: np.ndarray, what: str) -> np.ndarray:
    """Normalise nonnegative importances to probabilities (float64)."""
    values = np.asarray(values, dtype=np.float64)
    total = float(values.sum())
    if not (total > 0.0 and math.isfinite(total)):
        raise ValueError(f"cannot sample rows: every {what} is zero")
    return values / total


def leverage_score_sampling(
    A,
    s,
    /,
    *,
    method: str = "exact",
    replace: bool = True,
    eps: float = 0.5,
    delta: float = 0.1,
    rng=None,
) -> SampleResult:
    r"""Sample rows with probabilities proportional to their leverage scores.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix, shape (n, d)
        Input matrix (sparse requires ``method="sketched"``).
    s : int
        Number of samples, ``s >= 1`` (``s <=`` number of rows with nonzero score
        when ``replace=False``).
    method : {"exact", "sketched"}, default="exact"
        How the scores are computed, see :func:`leverage_scores`.
    replace : bool, default=True
        I.i.d. sampling with replacement, or fixed-size sampling without replacement.
    eps, delta : float, default=0.5, 0.1
        Accuracy and failure probability of sketched scores (see
        :func:`leverage_scores`).
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness (sketch, then samples).

    Returns
    -------
    SampleResult
        ``indices`` (s,) int64 and ``weights`` (s,) with
        :math:`\mathbb E[(SA)^\top SA] = A^\top A`; the weights are float32 for
        float32 ``A`` (computed in float64, then rounded), float64 otherwise.

    Raises
    ------
    TypeError
        Complex, non-numeric or operator input; non-integer ``s``; non-bool
        ``replace``.
    ValueError
        ``A`` not 2-D, empty or non-finite; ``s < 1``; all scores zero (``A = 0``);
        ``s`` above the number of rows with nonzero score when ``replace=False``;
        unknown ``method``.

    Notes
    -----
    :math:`p_i = \ell_i/\sum_j\ell_j = \ell_i/r` and weights :math:`1/\sqrt{s p_i}`.
    Rows of ``A`` with :math:`\ell_i = 0` are zero rows, never sampled; the Gram
    estimate is unbiased for ``A`` (and any ``X`` whose nonzero rows have
    :math:`\ell_i > 0`). Cost: that of :func:`leverage_scores` plus :math:`O(n + s\log
    n)`.

    *Subspace embedding (explicit constants, derived).* For ``U`` an orthonormal basis
    of range(A) of dimension :math:`r \ge 2`, i.i.d. sampling with exact scores gives
    :math:`(SU)^\top SU - I = \sum_t Y_t` with independent centred
    :math:`Y_t = (u u^\top/p - I)/s`, :math:`\|Y_t\| \le (r-1)/s` and
    :math:`\|\sum_t\mathbb E Y_t^2\| = (r-1)/s`. Matrix Bernstein (Tropp 2015,
    Theorem 6.1.1) gives

    .. math::

        P\big(\|U^\top S^\top S U - I\|_2 \ge \varepsilon\big) \le
        2r\exp\Big(-\frac{s\,\varepsilon^2}{2(r-1)(1+\varepsilon/3)}\Big),

    so :math:`s \ge 2(r-1)(1+\varepsilon/3)\ln(2r/\delta)/\varepsilon^2` samples give an
    :math:`\varepsilon`-subspace embedding with probability :math:`1-\delta` (the
    classical :math:`O(r\log r/\varepsilon^2)`). Scores accurate to :math:`1\pm\eta`
    give :math:`p_i \ge \beta p_i^\star` with :math:`\beta = (1-\eta)/(1+\eta)`, and
    ``s`` grows by the factor :math:`1/\beta` (Drineas et al. 2012).

    *Gram product error* (iid): :math:`\mathbb E\|A^\top A - (SA)^\top SA\|_F^2 =
    (\sum_i\|a_i\|^4/p_i - \|A^\top A\|_F^2)/s` (Drineas–Kannan–Mahoney 2006, see
    :func:`row_norm_sampling`).

    *Without replacement* (``replace=False``): inclusion probabilities
    :math:`\pi_i = \min(1, c\,p_i)`, ``c`` chosen so that :math:`\sum_i\pi_i = s`, drawn
    by randomised systematic sampling (Madow 1949): exactly ``s`` distinct rows, row
    ``i`` included with probability exactly :math:`\pi_i` and weighted by
    :math:`1/\sqrt{\pi_i}`, so :math:`\mathbb E[(SA)^\top SA] = A^\top A`. Rows with
    :math:`\pi_i = 1` (high leverage) are always taken, which removes their variance.

    References
    ----------
    .. [1] P. Drineas, M. Magdon-Ismail, M. W. Mahoney and D. P. Woodruff, "Fast
       approximation of matrix coherence and statistical leverage", J. Mach. Learn.
       Res. 13 (2012).
    .. [2] J. A. Tropp, "An introduction to matrix concentration inequalities", Found.
       Trends Mach. Learn. 8 (2015), Theorem 6.1.1.
    .. [3] W. G. Madow, "On the theory of systematic sampling, II", Ann. Math. Statist.
       20 (1949).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import leverage_score_sampling
    >>> A = np.random.default_rng(0).standard_normal((1000, 5))
    >>> res = leverage_score_sampling(A, 50, rng=0)
    >>> res.indices.shape, res.weights.shape
    ((50,), (50,))
    """
    s = check_int(s, "s", minimum=1)
    replace = _check_replace(replace)
    rng = check_rng(rng)
    scores = leverage_scores(A, method=method, eps=eps, delta=delta, rng=rng)
    p = _probabilities_from(scores, "leverage score (A is zero)")
    res = _sample(p, s, replace, rng)
    # dtype contract: float32 scores (float32 A) give float32 weights. They fit: a
    # positive float32 score is >= 2**-149, so a weight is at most sqrt(r / s) 2**74.5.
    return SampleResult(res.indices, res.weights.astype(scores.dtype, copy=False))


def _row_sq_norms_any(X) -> np.ndarray:
    """Squared row norms in float64, scaled by the largest entry to avoid overflow."""
    if sp.issparse(X):
        data = np.abs(X.data).astype(np.float64)
        scale = float(data.max()) if data.size else 0.0
        if scale == 0.0:
            return np.zeros(X.shape[0])
        Y = X.tocsr().astype(np.float64)
        Y.data = (Y.data / scale) ** 2
        return np.asarray(Y.sum(axis=1)).ravel()
    scale = float(np.max(np.abs(X)))
    if scale == 0.0:
        return np.zeros(X.shape[0])
    Y = X.astype(np.float64) / scale
    return _row_sq_norms(Y)


def row_norm_sampling(X, s, /, *, replace: bool = True, rng=None) -> SampleResult:
    r"""Sample rows with probabilities :math:`\|x_i\|^2/\|X\|_F^2` (length-squared).

    Parameters
    ----------
    X : array_like or scipy.sparse matrix, shape (n, d)
        Matrix whose Gram matrix :math:`X^\top X` is to be approximated.
    s : int
        Number of samples, ``s >= 1`` (``s <=`` number of nonzero rows when
        ``replace=False``).
    replace : bool, default=True
        I.i.d. sampling with replacement, or fixed-size sampling without replacement.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    SampleResult
        ``indices`` (s,) int64 and ``weights`` (s,) float64 with
        :math:`\mathbb E[(SX)^\top SX] = X^\top X`.

    Raises
    ------
    TypeError
        Complex, non-numeric or operator input; non-integer ``s``; non-bool
        ``replace``.
    ValueError
        ``X`` not 2-D, empty, non-finite or identically zero; ``s < 1``; ``s`` above
        the number of nonzero rows when ``replace=False``.

    Notes
    -----
    Cost :math:`O(\mathrm{nnz}(X) + s\log n)`. Squared norms are computed in float64
    after scaling by :math:`\max|X_{ij}|`, so they neither overflow nor underflow.

    *Approximate matrix multiplication* (Drineas–Kannan–Mahoney 2006, the expectation
    lemma with :math:`A = X^\top`, :math:`B = X`, re-derived here). For ``s`` i.i.d.
    draws with any probabilities :math:`p_i` (positive on nonzero rows), each term
    :math:`x_i x_i^\top/p_i` has mean :math:`X^\top X` and
    :math:`\mathbb E\|x_ix_i^\top/p_i\|_F^2 = \sum_i\|x_i\|^4/p_i`, so exactly

    .. math::

        \mathbb E\,\|X^\top X - (SX)^\top SX\|_F^2
        = \frac1s\Big(\sum_i\frac{\|x_i\|^4}{p_i} - \|X^\top X\|_F^2\Big).

    By Cauchy–Schwarz the length-squared probabilities minimise it, giving

    .. math::

        \mathbb E\,\|X^\top X - (SX)^\top SX\|_F^2
        = \frac{\|X\|_F^4 - \|X^\top X\|_F^2}{s} \le \frac{\|X\|_F^4}{s}

    (DKM 2006, Theorem 1 with :math:`\beta = 1`). Note
    :math:`\|X^\top X\|_F^2 = \sum_{i,j}\langle x_i, x_j\rangle^2 \ge \sum_i\|x_i\|^4`,
    so :math:`(\|X\|_F^4 - \sum_i\|x_i\|^4)/s` is a weaker upper bound, not the
    expectation. Markov's inequality turns it into
    :math:`\|X^\top X - (SX)^\top SX\|_F \le \|X\|_F^2/\sqrt{\delta s}` with probability
    :math:`1-\delta`.

    *Without replacement* (``replace=False``): the same inclusion probabilities
    :math:`\pi_i = \min(1, c\,p_i)` with :math:`\sum_i \pi_i = s` and randomised
    systematic sampling as in :func:`leverage_score_sampling`; weights
    :math:`1/\sqrt{\pi_i}` keep the Gram estimate unbiased. The expectation formula
    above is for i.i.d. sampling only.

    References
    ----------
    .. [1] P. Drineas, R. Kannan and M. W. Mahoney, "Fast Monte Carlo algorithms for
       matrices I: approximating matrix multiplication", SIAM J. Comput. 36 (2006),
       132-157.
    .. [2] W. G. Madow, "On the theory of systematic sampling, II", Ann. Math. Statist.
       20 (1949).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import row_norm_sampling
    >>> X = np.random.default_rng(0).standard_normal((1000, 8))
    >>> row_norm_sampling(X, 100, rng=0).indices.shape
    (100,)
    """
    s = check_int(s, "s", minimum=1)
    replace = _check_replace(replace)
    X = _as_matrix(X, "X", allow_sparse=True)
    rng = check_rng(rng)
    p = _probabilities_from(_row_sq_norms_any(X), "row of X (X is zero)")
    return _sample(p, s, replace, rng)


def uniform_sampling(n, s, /, *, replace: bool = True, rng=None) -> SampleResult:
    r"""Sample ``s`` of ``n`` rows uniformly, with weights :math:`\sqrt{n/s}`.

    Parameters
    ----------
    n : int
        Number of rows, ``n >= 1``.
    s : int
        Number of samples, ``s >= 1`` (``s <= n`` when ``replace=False``).
    replace : bool, default=True
        I.i.d. uniform draws, or a simple random sample of ``s`` distinct rows.
    rng : None, int, SeedSequence, BitGenerator or Generator, optional
        Source of randomness.

    Returns
    -------
    SampleResult
        ``indices`` (s,) int64 and ``weights`` (s,) float64, all equal to
        :math:`\sqrt{n/s}`.

    Raises
    ------
    TypeError
        Non-integer ``n`` or ``s``; non-bool ``replace``.
    ValueError
        ``n < 1``, ``s < 1``, or ``s > n`` with ``replace=False``.

    Notes
    -----
    Both schemes include row ``i`` with expected multiplicity :math:`s/n`, so the
    weight :math:`\sqrt{n/s}` makes :math:`\mathbb E[(SX)^\top SX] = X^\top X` for every
    ``X``. With replacement the Gram error is exactly
    :math:`(n\sum_i\|x_i\|^4 - \|X^\top X\|_F^2)/s` in mean square (the formula of
    :func:`row_norm_sampling` with :math:`p_i = 1/n`); uniform sampling is a subspace
    embedding only for incoherent ``X`` (all leverage scores near ``d/n``); Cost
    :math:`O(s)` with replacement, :math:`O(n)` without (``Generator.choice``).

    Examples
    --------
    >>> from rnla.sketch import uniform_sampling
    >>> res = uniform_sampling(100, 10, replace=False, rng=0)
    >>> res.indices.shape, res.weights.shape
    ((10,), (10,))
    """
    n = check_int(n, "n", minimum=1)
    s = check_int(s, "s", minimum=1)
    replace = _check_replace(replace)
    if not replace and s > n:
        raise ValueError(f"s={s} must be <= n={n} when sampling without replacement")
    rng = check_rng(rng)
    if replace:
        idx = rng.integers(0, n, size=s, dtype=np.int64)
    else:
        idx = np.sort(rng.choice(n, size=s, replace=False)).astype(np.int64)
    return SampleResult(idx, np.full(s, math.sqrt(n / s)))


# ----------------------------------------------------------------------------------------
# the sampling sketch
# ----------------------------------------------------------------------------------------


class SamplingSketch(SketchOperator):
    r"""Row-sampling operator ``S`` (s x n) with ``S[t, indices[t]] = weights[t]``.

    ``S @ A`` gathers and reweights rows of ``A`` (``A[indices] * weights[:, None]``)
    without reading the other rows; ``S.T @ Y`` scatters rows of ``Y`` back,
    accumulating repeated indices.

    Parameters
    ----------
    indices : array_like of int, shape (s,)
        Sampled rows, each in ``[0, n)``; repeats allowed.
    weights : array_like of float, shape (s,)
        Finite row weights.
    n : int
        Number of rows of the matrices the operator applies to.

    Attributes
    ----------
    indices : ndarray of int64, shape (s,)
        Read-only copy of the indices.
    weights : ndarray of float64, shape (s,)
        Read-only copy of the weights.

    Raises
    ------
    TypeError
        Non-integer indices or ``n``; complex weights.
    ValueError
        Empty or mismatched ``indices``/``weights``, an index outside ``[0, n)``, or
        non-finite weights.

    Notes
    -----
    Costs: dense ``S @ A`` is ``s p`` copies and multiplies; CSR ``S @ A`` touches only
    the ``s`` sampled rows (CSC is converted to CSR first, ``O(nnz)``); ``S.T @ Y``
    is ``s p`` adds into a zeroed ``n x p`` output. With the weights of a
    :class:`SampleResult`, :math:`\mathbb E[S^\top S] = I_n` restricted to rows of
    positive probability (exactly :math:`I_n` for uniform sampling).

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import SamplingSketch
    >>> S = SamplingSketch([0, 2, 2], [1.0, 0.5, 0.5], 4)
    >>> S.todense()
    array([[1. , 0. , 0. , 0. ],
           [0. , 0. , 0.5, 0. ],
           [0. , 0. , 0.5, 0. ]])
    """

    def __init__(self, indices, weights, n):
        n = check_int(n, "n", minimum=1)
        idx = np.asarray(indices)
        if idx.dtype == np.bool_ or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-dimensional, got shape {idx.shape}")
        if idx.size == 0:
            raise ValueError("indices must be non-empty: a sampling sketch needs s >= 1 rows")
        if idx.min() < 0 or idx.max() >= n:
            bad = int(np.flatnonzero((idx < 0) | (idx >= n))[0])
            raise ValueError(
                f"indices[{bad}]={idx[bad]} is out of range: indices must satisfy "
                f"0 <= indices < n={n}"
            )
        w = as_float_array(weights, name="weights", ndim=1, dtype=np.float64)
        if w.shape != idx.shape:
            raise ValueError(
                f"weights must have the same length as indices ({idx.shape[0]}), got {w.shape[0]}"
            )
        super().__init__(idx.shape[0], n)
        self.indices = np.array(idx, dtype=np.int64)
        self.weights = np.array(w, dtype=np.float64)
        self.indices.setflags(write=False)
        self.weights.setflags(write=False)
        self._w32 = self.weights.astype(np.float32)

    def _w(self, dtype) -> np.ndarray:
        return self._w32 if dtype == np.float32 else self.weights

    def _apply_dense(self, A):
        out = A[self.indices]  # fancy indexing copies: safe to scale in place
        out *= self._w(out.dtype)[:, None]
        return out

    def _apply_sparse(self, A):
        rows = A.tocsr()[self.indices, :]
        out = np.asarray(rows.toarray())
        out *= self._w(out.dtype)[:, None]
        return out

    def _adjoint_dense(self, Y):
        out = np.zeros((self.shape[1], Y.shape[1]), dtype=Y.dtype)
        # Repeated indices must accumulate, which fancy assignment would not do.
        np.add.at(out, self.indices, Y * self._w(Y.dtype)[:, None])
        return out

    def todense(self) -> np.ndarray:
        """Return the (s, n) float64 matrix (one nonzero per row)."""
        k, n = self.shape
        M = np.zeros((k, n))
        M[np.arange(k), self.indices] = self.weights
        return M

    def _describe(self):
        return f"distinct={np.unique(self.indices).size}"


def sampling_sketch(result, n, /) -> SamplingSketch:
    r"""Wrap a :class:`SampleResult` as an ``(s, n)`` :class:`SamplingSketch`.

    Parameters
    ----------
    result : SampleResult or tuple of (indices, weights)
        Output of a sampler.
    n : int
        Number of rows of the sampled matrix.

    Returns
    -------
    SamplingSketch
        ``S`` with ``S @ X == X[indices] * weights[:, None]``.

    Raises
    ------
    TypeError, ValueError
        As :class:`SamplingSketch`; also when ``result`` is not an (indices, weights)
        pair.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.sketch import sampling_sketch, uniform_sampling
    >>> S = sampling_sketch(uniform_sampling(100, 10, rng=0), 100)
    >>> (S @ np.ones((100, 3))).shape
    (10, 3)
    """
    try:
        indices, weights = result
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"result must be a SampleResult (indices, weights), got {type(result).__name__}"
        ) from exc
    return SamplingSketch(indices, weights, n)
