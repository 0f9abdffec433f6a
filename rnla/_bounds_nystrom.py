r"""A-priori error bounds for Nyström approximation and randomly pivoted Cholesky.

Re-exported from :mod:`rnla.bounds`. Each function states the theorem it implements and
raises :class:`ValueError` outside its assumptions.

Notation: :math:`A` is :math:`n \times n` PSD with eigenvalues :math:`\lambda_1 \ge
\dots \ge \lambda_n \ge 0`; :math:`[\![A]\!]_r` is its best rank-:math:`r`
approximation, so :math:`\operatorname{tr}(A - [\![A]\!]_r) = \sum_{j>r}\lambda_j`.
"""

from __future__ import annotations

import math

import numpy as np

from rnla._validation import as_float_array, check_int, check_option, check_real

__all__ = [
    "nystrom_expected_trace_bound",
    "nystrom_structural_bound",
    "rpcholesky_rank_bound",
]


def _check_spectrum(eigenvalues, name: str = "eigenvalues") -> np.ndarray:
    """Nonnegative eigenvalues of a PSD matrix, sorted in descending order (float64)."""
    lam = as_float_array(eigenvalues, name=name, ndim=1, dtype=np.float64)
    scale = float(np.max(np.abs(lam)))
    # eigvalsh of a PSD matrix returns values down to about -n eps ||A||: clip those.
    slack = lam.size * np.finfo(np.float64).eps * scale
    if lam.min() < -slack:
        raise ValueError(
            f"{name} must be those of a PSD matrix (>= 0), got the value {lam.min():.6g}"
        )
    return np.sort(np.maximum(lam, 0.0))[::-1]


def nystrom_expected_trace_bound(eigenvalues, rank, oversample) -> float:
    r"""Bound on the expected trace error of a Gaussian Nyström approximation.

    .. math::

        \mathbb{E}\operatorname{tr}(A - A\langle\Omega\rangle)
        \le \Bigl(1 + \frac{k}{p-1}\Bigr) \sum_{j>k} \lambda_j ,

    for a standard Gaussian test matrix :math:`\Omega` with :math:`\ell = k + p`
    columns and :math:`A\langle\Omega\rangle = A\Omega(\Omega^T A\Omega)^\dagger
    \Omega^T A`.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues of the PSD matrix :math:`A` (any order; values down to
        :math:`-n\epsilon\max|\lambda|` are treated as 0).
    rank : int
        Target rank :math:`k \ge 1`.
    oversample : int
        Oversampling :math:`p \ge 2`, with :math:`k + p \le n`.

    Returns
    -------
    float
        The bound.

    Raises
    ------
    TypeError
        Non-integer ``rank`` or ``oversample``.
    ValueError
        ``p < 2`` (the expectation of :math:`\|\Omega_1^\dagger\|_F^2` is infinite
        for :math:`p \le 1`), :math:`k + p > n`, or negative eigenvalues.

    Notes
    -----
    Derivation. The Nyström approximation is a projection of :math:`A^{1/2}`:
    :math:`A - A\langle\Omega\rangle = A^{1/2}(I - P)A^{1/2}` with :math:`P` the
    orthogonal projector onto :math:`\operatorname{range}(A^{1/2}\Omega)`, hence
    :math:`\operatorname{tr}(A - A\langle\Omega\rangle) = \|(I-P)A^{1/2}\|_F^2` exactly.
    Halko, Martinsson and Tropp [1]_, Thm. 10.5 (in the squared form established
    in its proof, from Thm. 9.1 and Prop. 10.1), bounds
    :math:`\mathbb{E}\|(I - P_{M\Omega})M\|_F^2 \le (1 + k/(p-1))\sum_{j>k}\sigma_j(M)^2`;
    apply it to :math:`M = A^{1/2}` (:math:`\sigma_j(M)^2 = \lambda_j`). The bound
    is invariant under orthonormalising :math:`\Omega` (same range), so it applies to
    :func:`rnla.nystrom` with ``oversample = p`` and ``rank = k + p`` (no truncation)
    up to the :math:`O(\sqrt{n}\epsilon\|A\|)` effect of the stabilising shift. For the
    *truncated* output (``rank = k``) Tropp, Yurtsever, Udell and Cevher [2]_, Thm. 4.1
    state the bound :math:`(1 + k/(p - 1))\sum_{j>k}\lambda_j` as well (sketch size
    :math:`\ell = k + p`); the test suite checks both forms by Monte Carlo.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011. https://doi.org/10.1137/090771806
    .. [2] J. A. Tropp, A. Yurtsever, M. Udell and V. Cevher, "Fixed-rank approximation
       of a positive-semidefinite matrix from streaming data", NeurIPS 2017.
       https://arxiv.org/abs/1706.05736

    Examples
    --------
    >>> round(nystrom_expected_trace_bound([4.0, 2.0, 1.0, 1.0], 1, 2), 6)
    8.0
    """
    lam = _check_spectrum(eigenvalues)
    n = lam.size
    k = check_int(rank, "rank", minimum=1)
    p = check_int(oversample, "oversample", minimum=2)
    if k + p > n:
        raise ValueError(f"rank + oversample = {k + p} must be <= n = {n}")
    return float((1.0 + k / (p - 1)) * lam[k:].sum())


def nystrom_structural_bound(eigenvalues, eigenvectors, Omega, rank, *, norm="trace") -> float:
    r"""Deterministic (per-draw) bound on the error of the Nyström approximation.

    With :math:`A = V\Lambda V^T`, :math:`V = [V_1\ V_2]` split after column
    :math:`k`, :math:`\Omega_1 = V_1^T\Omega` (:math:`k \times \ell`),
    :math:`\Omega_2 = V_2^T\Omega` and :math:`\Lambda_2 = \operatorname{diag}
    (\lambda_{k+1}, \dots, \lambda_n)`, if :math:`\Omega_1` has full row rank then

    .. math::

        \operatorname{tr}(A - A\langle\Omega\rangle) &\le \sum_{j>k}\lambda_j
            + \|\Lambda_2^{1/2}\Omega_2\Omega_1^\dagger\|_F^2, \\
        \|A - A\langle\Omega\rangle\|_2 &\le \lambda_{k+1}
            + \|\Lambda_2^{1/2}\Omega_2\Omega_1^\dagger\|_2^2 .

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues of :math:`A` (any order; they are sorted together with the
        eigenvectors).
    eigenvectors : array_like, shape (n, n)
        Orthonormal eigenvectors, column ``j`` for ``eigenvalues[j]``.
    Omega : array_like, shape (n, ell)
        The test matrix actually used (any real matrix).
    rank : int
        Split index :math:`k`, ``1 <= k <= ell`` and ``k < n``.
    norm : {"trace", "spectral"}, default="trace"
        Which of the two bounds.

    Returns
    -------
    float
        The bound for this particular :math:`\Omega`.

    Raises
    ------
    ValueError
        Shapes inconsistent, :math:`k` out of range, negative eigenvalues, or
        :math:`\Omega_1` rank deficient (the bound does not apply).

    Notes
    -----
    Cost :math:`O(n^2\ell)` flops. These are the structural bounds of Gittens and
    Mahoney [1]_ (Thm. 2 and Lemma 1 there); they follow from Halko, Martinsson and
    Tropp [2]_, Thm. 9.1 applied to :math:`A^{1/2}` together with the exact identity
    :math:`A - A\langle\Omega\rangle = A^{1/2}(I - P_{A^{1/2}\Omega})A^{1/2}`, so that
    :math:`\operatorname{tr}(A - A\langle\Omega\rangle) = \|(I-P)A^{1/2}\|_F^2` and
    :math:`\|A - A\langle\Omega\rangle\|_2 = \|(I-P)A^{1/2}\|_2^2`.

    References
    ----------
    .. [1] A. Gittens and M. W. Mahoney, "Revisiting the Nyström method for improved
       large-scale machine learning", JMLR 17, 2016.
       https://jmlr.org/papers/v17/gittens16a.html
    .. [2] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011. https://doi.org/10.1137/090771806

    Examples
    --------
    >>> import numpy as np
    >>> Om = np.random.default_rng(0).standard_normal((4, 2))
    >>> b = nystrom_structural_bound([4.0, 2.0, 1.0, 1.0], np.eye(4), Om, 1)
    >>> b >= 4.0
    True
    """
    norm = check_option(norm, ("trace", "spectral"), "norm")
    lam_raw = as_float_array(eigenvalues, name="eigenvalues", ndim=1, dtype=np.float64)
    n = lam_raw.size
    V = as_float_array(eigenvectors, name="eigenvectors", ndim=2, dtype=np.float64)
    Om = as_float_array(Omega, name="Omega", ndim=2, dtype=np.float64)
    if V.shape != (n, n):
        raise ValueError(f"eigenvectors must have shape {(n, n)}, got {V.shape}")
    if Om.shape[0] != n:
        raise ValueError(f"Omega must have {n} rows, got shape {Om.shape}")
    ell = Om.shape[1]
    k = check_int(rank, "rank", minimum=1)
    if k > ell or k >= n:
        raise ValueError(f"rank={k} must satisfy 1 <= rank <= min(ell, n - 1) = {min(ell, n - 1)}")
    lam_sorted = _check_spectrum(lam_raw)
    order = np.argsort(-lam_raw, kind="stable")
    V = V[:, order]
    Om1 = V[:, :k].T @ Om
    Om2 = V[:, k:].T @ Om
    s1 = np.linalg.svd(Om1, compute_uv=False)
    if s1[-1] <= s1[0] * max(Om1.shape) * np.finfo(np.float64).eps:
        raise ValueError(
            "Omega_1 = V_1^T Omega is rank deficient (smallest singular value "
            f"{s1[-1]:.3g}): the structural bound needs it to have full row rank"
        )
    tail = lam_sorted[k:]
    T = (np.sqrt(tail)[:, None] * Om2) @ np.linalg.pinv(Om1)
    if norm == "trace":
        return float(tail.sum() + np.sum(T * T))
    return float(tail[0] + np.linalg.norm(T, 2) ** 2)


def rpcholesky_rank_bound(eigenvalues, r, eps) -> int:
    r"""Return the number of RPCholesky pivots that guarantees a near-optimal trace error.

    Returns the smallest integer :math:`k` with

    .. math::

        k \ge \frac{r}{\varepsilon} + r \log_+\!\Bigl(\frac{1}{\varepsilon\eta}\Bigr),
        \qquad \eta = \frac{\operatorname{tr}(A - [\![A]\!]_r)}{\operatorname{tr} A},

    for which RPCholesky with :math:`k` pivots satisfies
    :math:`\mathbb{E}\operatorname{tr}(A - \hat A^{(k)}) \le (1+\varepsilon)
    \operatorname{tr}(A - [\![A]\!]_r)`.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues of the PSD matrix :math:`A` (any order).
    r : int
        Comparison rank, ``1 <= r < n``.
    eps : float
        Relative excess :math:`\varepsilon > 0`.

    Returns
    -------
    int
        The number of pivots :math:`k`.

    Raises
    ------
    TypeError
        Non-integer ``r`` or non-real ``eps``.
    ValueError
        ``r`` out of range, ``eps <= 0``, negative eigenvalues, or :math:`\eta = 0`
        (:math:`A` has rank at most :math:`r`: the theorem gives no finite :math:`k`;
        RPCholesky then recovers :math:`A` exactly after :math:`\operatorname{rank}(A)`
        steps almost surely).

    Notes
    -----
    Chen, Epperly, Tropp and Webber [1]_, Thm. 2.3 (main error bound). The bound holds
    for simple and accelerated RPCholesky (identical output distributions, [2]_), not
    for the blocked, greedy or uniform variants. :math:`\log_+ x = \max(\log x, 0)`:
    when :math:`\varepsilon\eta \ge 1` the right-hand side exceeds
    :math:`\operatorname{tr} A` and any :math:`k \ge r/\varepsilon` trivially
    qualifies.

    References
    ----------
    .. [1] Y. Chen, E. N. Epperly, J. A. Tropp and R. J. Webber, "Randomly pivoted
       Cholesky: Practical approximation of a kernel matrix with few entry
       evaluations", Comm. Pure Appl. Math. 78(5), 2025.
       https://arxiv.org/abs/2207.06503
    .. [2] E. N. Epperly, J. A. Tropp and R. J. Webber, "Embrace rejection: Kernel
       matrix approximation by accelerated randomly pivoted Cholesky", 2024.
       https://arxiv.org/abs/2410.03969

    Examples
    --------
    >>> rpcholesky_rank_bound([1.0, 0.1, 0.01, 0.001], 1, 1.0)
    4
    """
    lam = _check_spectrum(eigenvalues)
    n = lam.size
    if n < 2:
        raise ValueError(f"need n >= 2 eigenvalues to have 1 <= r < n, got n={n}")
    r = check_int(r, "r", minimum=1, maximum=n - 1)
    eps = check_real(eps, "eps", lower=0)
    total = float(lam.sum())
    tail = float(lam[r:].sum())
    if tail <= 0.0 or total <= 0.0:
        raise ValueError(
            f"eta = tr(A - [[A]]_r) / tr(A) = 0 for r={r}: A has rank <= r, the theorem "
            "gives no finite k (RPCholesky recovers A exactly after rank(A) pivots)"
        )
    eta = tail / total
    k = r / eps + r * max(math.log(1.0 / (eps * eta)), 0.0)
    # Guard against k landing a rounding error above an integer.
    return math.ceil(k - 1e-12 * max(k, 1.0))
