r"""Randomized SVD: rnla.rsvd against scikit-learn's randomized_svd, same rank.

Tasks (rank ``k = 50``, oversampling 10 for every implementation):

1. dense 5000 x 3000, slow decay :math:`\sigma_j = (j + 1)^{-1/2}` (float64 and float32);
2. dense 5000 x 3000, fast decay :math:`\sigma_j = e^{-j/10}`;
3. sparse 10^5 x 10^4 CSR, density 10^-3 (10^6 non-zeros, uniform [0, 1) values);
4. dense 3000 x 2000, S-shaped :math:`\sigma_j = 1/(1 + e^{(j - k)/2}) + 10^{-3}`.

Implementations: ``sklearn.utils.extmath.randomized_svd`` with its defaults (the
baseline: subspace iteration, ``n_iter='auto'`` = 7 here, LU normalizer); ``rnla.rsvd``
with its defaults (block Krylov, ``n_iter='auto'`` = 3: 8 passes instead of 16);
``rnla.rsvd(method="subspace")`` (same 16 passes as scikit-learn, Cholesky-QR).

Accuracy column: :math:`\|A - U\Sigma V^\top\|_2 / \sigma_{k+1}` (1 is optimal), the
residual norm computed by ARPACK (``scipy.sparse.linalg.svds`` on the residual
operator, ``tol=1e-8``), :math:`\sigma_{k+1}` known by construction for the dense
matrices and from ARPACK for the sparse one. Goal for the default ``rnla rsvd``:
>= 1.3x faster at equal or lower error.

BLAS threads: every implementation runs with BLAS pinned to one thread (the machine the
results were produced on is shared, and OpenBLAS's threaded LAPACK paths slow down by
10-40x under oversubscription, which would measure the load, not the algorithms); one
extra task repeats the dense slow-decay case with the default BLAS threads.

Run ``python -m benchmarks.rsvd [--quick] [--plot]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, svds
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from benchmarks.harness import Task, main
from rnla.lowrank import rsvd

NAME = "rsvd"
OVERSAMPLE = 10


def with_spectrum(rng, m, n, s):
    """``U diag(s) V^T`` with Haar-distributed orthonormal ``U``, ``V`` (exact spectrum)."""
    d = s.size
    U = np.linalg.qr(rng.standard_normal((m, d)))[0]
    V = np.linalg.qr(rng.standard_normal((n, d)))[0]
    return (U * s) @ V.T


def residual_norm(A, U, s, Vt) -> float:
    """Return ``||A - U diag(s) Vt||_2``, by ARPACK on the residual operator (float64)."""
    U = np.asarray(U, dtype=np.float64)
    Vt = np.asarray(Vt, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    m, n = A.shape

    def mv(x):
        x = np.ravel(x)
        return A @ x - U @ (s * (Vt @ x))

    def rmv(y):
        y = np.ravel(y)
        return A.T @ y - Vt.T @ (s * (U.T @ y))

    R = LinearOperator((m, n), matvec=mv, rmatvec=rmv, dtype=np.float64)
    return float(svds(R, k=1, tol=1e-8, return_singular_vectors=False, rng=0)[0])


def error_metric(A, sigma_next):
    A64 = A.astype(np.float64)  # the matrix actually factorised, in float64

    def metric(_name, out):
        U, s, Vt = out
        return residual_norm(A64, U, s, Vt) / sigma_next

    return metric


def one_blas_thread(fn):
    def wrapped():
        with threadpool_limits(limits=1, user_api="blas"):
            return fn()

    return wrapped


def rsvd_task(label, A, k, sigma_next, *, threads_pinned=True, params=None) -> Task:
    impls = {
        "sklearn randomized_svd": lambda: randomized_svd(
            A, k, n_oversamples=OVERSAMPLE, random_state=0
        ),
        "rnla rsvd (default: krylov)": lambda: rsvd(A, k, oversample=OVERSAMPLE, rng=0),
        "rnla rsvd (subspace)": lambda: rsvd(
            A, k, oversample=OVERSAMPLE, method="subspace", rng=0
        ),
    }
    if threads_pinned:
        impls = {name: one_blas_thread(fn) for name, fn in impls.items()}
    suffix = "1 BLAS thread" if threads_pinned else "default BLAS threads"
    kind = "CSR" if sp.issparse(A) else np.dtype(A.dtype).name
    return Task(
        name=f"{label}, {A.shape[0]}x{A.shape[1]} {kind}, k={k}, {suffix}",
        impls=impls,
        baseline="sklearn randomized_svd",
        accuracy=error_metric(A, sigma_next),
        accuracy_label="‖A−UΣVᵀ‖₂/σₖ₊₁",
        goal=1.3,
        goal_for=["rnla rsvd (default: krylov)"],
        params={"k": k, "oversample": OVERSAMPLE, **(params or {})},
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20240607)
    if quick:
        m, n, k = 1000, 600, 20
        sm, sn, density = 20_000, 2_000, 2e-3
    else:
        m, n, k = 5000, 3000, 50
        sm, sn, density = 100_000, 10_000, 1e-3
    j = np.arange(n)
    slow = (j + 1.0) ** -0.5
    fast = np.exp(-j / 10)
    with threadpool_limits(limits=1, user_api="blas"):
        A_slow = with_spectrum(rng, m, n, slow)
        A_fast = with_spectrum(rng, m, n, fast)
    sm_, sn_ = (m, n) if quick else (3000, 2000)
    with np.errstate(over="ignore"):
        s_shaped = 1.0 / (1.0 + np.exp((np.arange(sn_) - k) / 2.0)) + 1e-3
    with threadpool_limits(limits=1, user_api="blas"):
        A_s = with_spectrum(rng, sm_, sn_, s_shaped)
    S = sp.random(sm, sn, density=density, format="csr", rng=rng, dtype=np.float64)
    sigma_sparse = np.sort(svds(S, k=k + 1, tol=1e-10, return_singular_vectors=False, rng=0))
    tasks = [
        rsvd_task("dense, slow decay j^-1/2", A_slow, k, slow[k], params={"decay": "slow"}),
        rsvd_task(
            "dense, slow decay j^-1/2",
            A_slow.astype(np.float32),
            k,
            slow[k],
            params={"decay": "slow"},
        ),
        rsvd_task("dense, fast decay exp(-j/10)", A_fast, k, fast[k], params={"decay": "fast"}),
        rsvd_task(
            "dense, S-shaped",
            A_s,
            k,
            s_shaped[k],
            params={"decay": "S-shaped"},
        ),
        rsvd_task(
            f"sparse, density {density:g}",
            S,
            k,
            float(sigma_sparse[0]),
            params={"density": density, "nnz": int(S.nnz)},
        ),
        rsvd_task(
            "dense, slow decay j^-1/2",
            A_slow,
            k,
            slow[k],
            threads_pinned=False,
            params={"decay": "slow"},
        ),
    ]
    return tasks


if __name__ == "__main__":
    main(NAME, build_tasks, description=__doc__.splitlines()[0])
