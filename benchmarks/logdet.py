r"""Log-determinant of an SPD kernel matrix: SLQ against dense LU (``numpy.linalg.slogdet``).

Matrix: :math:`A = K + \sigma I` with the Gaussian kernel
:math:`K_{ij} = \exp(-\|x_i - x_j\|^2/2)` of ``n = 8000`` standard normal points in
:math:`\mathbb R^3` and :math:`\sigma = 0.1` (``--quick``: ``n = 800``). The condition
number is about :math:`10^4`, but the spectrum is a few large eigenvalues on top of a
flat floor at :math:`\sigma`, which Lanczos resolves in a few steps, and Rademacher
probes have no variance on the identity part of :math:`\log A`: the regime where SLQ
pays off. (Most of :math:`\log\det A` is :math:`n\log\sigma`; the error relative to the
non-trivial part :math:`\log\det A - n\log\sigma` is reported too.)

Implementations, all on the same dense array:

* ``numpy slogdet`` - LU, :math:`2n^3/3` flops (baseline);
* ``rnla logdet exact`` - Cholesky, :math:`n^3/3` flops;
* ``rnla logdet slq`` - 24 Rademacher probes, 20 Lanczos steps, probes in lockstep
  (one ``n x 24`` block product per step);
* ``imate slq`` - ``imate.logdet(method="slq")`` with Lanczos degree 20 and 10-24
  samples, if ``imate`` is installed (optional; skipped otherwise).

Accuracy: relative error against ``slogdet``. The warm-up call is shown in the table;
the mean over ``ERROR_SEEDS`` runs is in the JSON parameters and printed at the end.
Goals: ``rnla logdet slq`` >= 5x faster than ``slogdet`` at relative error <= 1e-2.

Run ``python -m benchmarks.logdet [--quick] [--repeats 3]`` (the full run takes minutes
per repeat on 2 cores: use few repeats).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from benchmarks.harness import Task, main
from rnla.trace import logdet

NAME = "logdet"
ERROR_SEEDS = 3
SHIFT = 0.1
N_PROBES, K_STEPS = 24, 20

try:  # optional peer
    import imate
except Exception:  # pragma: no cover - depends on the environment
    imate = None


def kernel_matrix(n, rng):
    X = rng.standard_normal((n, 3))
    A = np.exp(-0.5 * cdist(X, X, "sqeuclidean"))
    A[np.diag_indices(n)] += SHIFT
    return A


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20260101)
    n = 800 if quick else 8000
    error_seeds = 1 if quick else ERROR_SEEDS
    A = kernel_matrix(n, rng)
    exact = float(np.linalg.slogdet(A)[1])
    nontrivial = exact - n * np.log(SHIFT)

    # SLQ is bound by memory traffic (k passes over A): a float32 copy halves it, and its
    # rounding (1e-7) is far below the 1e-2 accuracy asked of the estimate.
    A32 = A.astype(np.float32)

    def slq(seed, M=A):
        return logdet(M, method="slq", n_probes=N_PROBES, k=K_STEPS, rng=seed).value

    factories = {
        "numpy slogdet": lambda seed: float(np.linalg.slogdet(A)[1]),
        "rnla logdet exact": lambda seed: logdet(A, method="exact").value,
        "rnla logdet slq": slq,
        "rnla logdet slq (float32 copy)": lambda seed: slq(seed, A32),
    }
    if imate is not None:
        factories["imate slq"] = lambda seed: float(
            imate.logdet(
                A,
                method="slq",
                lanczos_degree=K_STEPS,
                min_num_samples=10,
                max_num_samples=N_PROBES,
                error_rtol=1e-2,
                verbose=False,
            )
        )

    def rel_error(_impl, value):
        return abs(float(value) - exact) / abs(exact)

    errors = {
        impl: [rel_error(impl, make(s)) for s in range(error_seeds)]
        for impl, make in factories.items()
    }
    mean_error = {impl: float(np.mean(e)) for impl, e in errors.items()}
    nontrivial_error = {
        impl: float(np.mean(e)) * abs(exact) / abs(nontrivial) for impl, e in errors.items()
    }
    timing_rng = np.random.default_rng(7)
    impls = {
        impl: (lambda make=make: make(int(timing_rng.integers(2**31))))
        for impl, make in factories.items()
    }
    return [
        Task(
            name=f"logdet(K + {SHIFT} I), Gaussian kernel, n={n}",
            impls=impls,
            baseline="numpy slogdet",
            accuracy=rel_error,
            accuracy_label="rel. error vs slogdet",
            goal=5.0,
            goal_for=["rnla logdet slq", "rnla logdet slq (float32 copy)"],
            params={
                "n": n,
                "shift": SHIFT,
                "n_probes": N_PROBES,
                "lanczos_steps": K_STEPS,
                "logdet": exact,
                "logdet_minus_n_log_shift": nontrivial,
                "mean_relative_error": mean_error,
                "mean_error_relative_to_nontrivial_part": nontrivial_error,
                "error_seeds": error_seeds,
                "imate": "installed" if imate is not None else "not installed",
                "error_goal": "<= 1e-2 (rnla logdet slq)",
            },
        )
    ]


def summarize(result: dict) -> str:
    lines = ["", "Mean relative error over independent runs (and vs logdet - n log shift):"]
    for task in result["tasks"]:
        params = task["params"]
        lines.append(f"  {task['name']}  (imate: {params['imate']})")
        for impl, err in params["mean_relative_error"].items():
            rel = params["mean_error_relative_to_nontrivial_part"][impl]
            lines.append(f"    {impl:24s} {err:.3g}  ({rel:.3g})")
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    print(summarize(out))
