r"""Profiled FIR likelihood at 200 shifts: augmented Krylov against a Cholesky per shift.

Kernel-based FIR identification (TC kernel, :math:`\alpha = 0.9`, ``n`` taps, white-noise
input, SNR 10): evaluate

.. math::

   \ell(\lambda) = N\log\bigl(y^T(\lambda I + A)^{-1}y\bigr) + \log\det(\lambda I + A),
   \qquad A = \Phi K\Phi^T \in \mathbb R^{N\times N},

at 200 log-spaced values of :math:`\lambda` with

* a dense Cholesky factorisation of :math:`\lambda I + A` per shift (``scipy.linalg``)
  - the baseline;
* the Chen-Ljung QR evaluation (exact, exploits the FIR structure: one :math:`O(Nn^2)`
  QR plus :math:`O(n^3)` per shift);
* :class:`rnla.augmented.AugmentedKrylov` on the dense :math:`A` and on the FFT
  Toeplitz operator (one block Krylov space of :math:`[y, \Omega]`, then :math:`O(J)`
  per shift), with ``k (1 + s) > n`` (the space captures the rank-``n`` operator) and a
  cheaper ``k (1 + s) < n`` setting;
* plain Lanczos on ``y`` + SLQ with the same number of products (FFT operator).

Accuracy: the largest relative error :math:`|\hat\ell - \ell| / |\ell|` over the 21 grid
points centred at the exact minimiser (a factor ~2 either side), :math:`\ell` from the
QR method. Goal: >= 50x faster than the Cholesky baseline at <= 1e-6 relative error
(augmented, dense and operator, ``k (1 + s) > n``). ``N = 4000, n = 200`` (``--quick``:
``N = 500, n = 40``).

Because the baseline costs 200 dense Cholesky factorisations, the default number of
timed rounds is 1 (full) / 2 (quick) unless ``--repeats`` is given.
Run ``python -m benchmarks.augmented_likelihood [--quick] [--plot]``.
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.linalg as sla

from benchmarks.harness import Task, main
from rnla.augmented import (
    AugmentedKrylov,
    fir_kernel,
    fir_likelihood_qr,
    fir_operator,
    fir_regressor,
    lanczos_datafit,
    slq_logdet,
)

NAME = "augmented_likelihood"
N_SHIFTS = 200
WINDOW = 10  # grid points either side of the minimiser in the accuracy metric


def problem(N, n, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(N)
    Phi = fir_regressor(u, n)
    t = np.arange(1, n + 1)
    g0 = 0.9**t * np.sin(0.35 * t) + 0.5 * 0.8**t * np.cos(1.3 * t)
    y0 = Phi @ g0
    sigma2 = np.var(y0) / 10.0
    y = y0 + np.sqrt(sigma2) * rng.standard_normal(N)
    K = fir_kernel(n, kind="tc", alpha=0.9)
    lams = np.geomspace(1e-3, 1e3, N_SHIFTS) * sigma2
    return u, Phi, K, y, lams


def cholesky_per_shift(A, y, lams):
    N = A.shape[0]
    out = np.empty(lams.size)
    for i, lam in enumerate(lams):
        M = A.copy()
        M[np.diag_indices(N)] += lam
        L = sla.cholesky(M, lower=True, overwrite_a=True, check_finite=False)
        z = sla.solve_triangular(L, y, lower=True, check_finite=False)
        out[i] = N * np.log(z @ z) + 2.0 * np.log(np.diag(L)).sum()
    return out


def build_tasks(quick: bool) -> list[Task]:
    N, n = (500, 40) if quick else (4000, 200)
    s = 10  # probes: block size 11
    k_full = n // (s + 1) + 2  # k (1 + s) > n + 1: the space captures range(A) and y
    k_cheap = max(2, n // (2 * (s + 1)))  # about half of n
    u, Phi, K, y, lams = problem(N, n)
    A = Phi @ K @ Phi.T
    op = fir_operator(u, K)
    exact = fir_likelihood_qr(Phi, K, y, lams).neg_log_likelihood
    i0 = int(np.argmin(exact))
    window = slice(max(i0 - WINDOW, 0), i0 + WINDOW + 1)

    def accuracy(_name, out):
        out = np.asarray(out)
        return float(np.max(np.abs(out[window] - exact[window]) / np.abs(exact[window])))

    def augmented(matrix, k):
        def run():
            return AugmentedKrylov(matrix, y, k=k, n_probes=s, rng=0).neg_log_likelihood(lams)

        return run

    def plain_plus_slq():
        # the same products as the cheap augmented run: k (1 + s)
        d = lanczos_datafit(op, y, lams, k=k_cheap, rule="radau", rng=0).value
        ld = slq_logdet(op, lams, k=k_cheap, n_probes=s, rng=1).value
        return N * np.log(d) + ld

    impls = {
        "Cholesky per shift (dense A)": lambda: cholesky_per_shift(A, y, lams),
        "Chen-Ljung QR (FIR structure)": lambda: (
            fir_likelihood_qr(Phi, K, y, lams).neg_log_likelihood
        ),
        f"augmented, dense A, k={k_full}": augmented(A, k_full),
        f"augmented, FFT operator, k={k_full}": augmented(op, k_full),
        f"augmented, FFT operator, k={k_cheap}": augmented(op, k_cheap),
        f"Lanczos on y + SLQ, k={k_cheap}": plain_plus_slq,
    }
    probe = AugmentedKrylov(op, y, k=k_full, n_probes=s, rng=0)
    return [
        Task(
            name=f"FIR likelihood at {N_SHIFTS} shifts, N={N}, n={n}, TC kernel",
            impls=impls,
            baseline="Cholesky per shift (dense A)",
            accuracy=accuracy,
            accuracy_label="max rel. error of l near its minimiser",
            goal=50.0,
            goal_text=">= 50x at <= 1e-6 rel. error",
            goal_for=[f"augmented, dense A, k={k_full}", f"augmented, FFT operator, k={k_full}"],
            params={
                "N": N,
                "n": n,
                "n_shifts": N_SHIFTS,
                "n_probes": s,
                "k_full": k_full,
                "k_cheap": k_cheap,
                "dim_full": probe.dim,
                "n_matvecs_full": probe.n_matvecs,
                "kernel": "tc, alpha=0.9",
                "lambda_range": [float(lams[0]), float(lams[-1])],
                "exact_minimiser": float(lams[i0]),
                "accuracy_window": [float(lams[window][0]), float(lams[window][-1])],
            },
        )
    ]


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--repeats" not in argv:
        argv += ["--repeats", "2" if "--quick" in argv else "1"]
    main(NAME, build_tasks, argv, description=__doc__.splitlines()[0])
