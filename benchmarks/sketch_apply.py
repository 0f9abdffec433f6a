"""Sketch application: rnla sketches against plain NumPy/SciPy equivalents.

1. SRHT (``k = 1024``) on a dense ``65536 x 256`` matrix against the cheapest correct
   NumPy subsampled randomized Fourier transform (SRFT). Goal: >= 2x faster.
2. Sparse sign / CountSketch (``k = 1024``) on a ``10^6 x 10^3`` CSR matrix of density
   ``1e-3`` against :func:`scipy.linalg.clarkson_woodruff_transform`, apply-only and
   construct + apply. Goal: >= 3x faster.
3. Gaussian sketch against a NumPy GEMM with the same pre-built matrix. Goal: within
   1.1x (speed-up >= 1/1.1).

Float32 variants of 1 and 3 are included. The accuracy column is
``|SA|_F / |A|_F``, which is 1 in expectation for every correctly scaled sketch
(``E[S^T S] = I``), or the relative difference from the reference GEMM output.

Run ``python -m benchmarks.sketch_apply [--quick] [--plot]``.

``python -m benchmarks.sketch_apply --sparse-goal [ROUNDS]`` measures only the speed goal
of 2 (construction included, ``10^6 x 10^3`` CSR, density ``1e-3``, ``k = 1024``): rnla
and SciPy called in turn in each of ``ROUNDS`` rounds (default 15) in one process, the
median of the per-round ratios printed with the load average before and after.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft
import scipy.linalg
import scipy.sparse as sp

from benchmarks.harness import Task, main
from rnla.sketch import countsketch, gaussian, sparse_sign, srht

NAME = "sketch_apply"


def srft_numpy(A: np.ndarray, signs: np.ndarray, rows: np.ndarray, *, fft=np.fft.rfft):
    """Real subsampled randomized Fourier transform ``sqrt(n/k) R F_real D A``.

    ``F_real`` is the orthogonal real DFT (rows: DC, Nyquist, and ``sqrt(2)`` times the
    cosine and sine parts of each other frequency), so ``E[S^T S] = I`` exactly as for
    the SRHT. One real FFT of ``D A`` along the rows, then a gather of ``k`` rows.
    ``rows`` are distinct indices in ``[0, n)`` (``n`` even): ``r <= n/2`` is the real
    part of frequency ``r``, ``r > n/2`` the imaginary part of frequency ``r - n/2``.
    """
    n, k = A.shape[0], rows.shape[0]
    half = n // 2
    freq = np.where(rows <= half, rows, rows - half)
    imag = rows > half
    weight = np.where((rows == 0) | (rows == half), 1.0, math.sqrt(2.0)) / math.sqrt(k)
    F = fft(A * signs[:, None].astype(A.dtype), axis=0)[freq]
    out = np.where(imag[:, None], F.imag, F.real)
    return (out * weight[:, None].astype(out.dtype)).astype(A.dtype, copy=False)


def one_thread(fn):
    """``fn`` run with a single Numba thread (fair against single-threaded peers)."""

    def wrapped():
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(previous)

    return wrapped


def norm_ratio(A):
    """Accuracy metric ``|SA|_F / |A|_F`` (1 in expectation)."""

    def fro(X):
        return sp.linalg.norm(X) if sp.issparse(X) else np.linalg.norm(X)

    norm_a = fro(A)

    def metric(_name, out):
        # SciPy's CWT returns a sparse matrix for sparse input; it is timed as returned.
        return float(fro(out) / norm_a)

    return metric


def srht_task(n, p, k, dtype, rng) -> Task:
    A = rng.standard_normal((n, p)).astype(dtype)
    S = srht(k, n, rng=rng)
    signs = rng.choice([-1.0, 1.0], size=n)
    rows = np.sort(rng.choice(n, size=k, replace=False))
    G = gaussian(k, n, rng=rng) if dtype == np.float64 else None
    impls = {
        "NumPy SRFT (np.fft.rfft)": lambda: srft_numpy(A, signs, rows),
        "SciPy SRFT (scipy.fft, all workers)": lambda: srft_numpy(
            A, signs, rows, fft=lambda X, axis: scipy.fft.rfft(X, axis=axis, workers=-1)
        ),
        "rnla srht": lambda: S @ A,
        "rnla srht, 1 thread": one_thread(lambda: S @ A),
    }
    if G is not None:
        impls["rnla gaussian (GEMM), same size"] = lambda: G @ A
    return Task(
        name=f"SRHT apply, A {n}x{p} {np.dtype(dtype).name}, k={k}",
        impls=impls,
        baseline="NumPy SRFT (np.fft.rfft)",
        accuracy=norm_ratio(A),
        accuracy_label="‖SA‖/‖A‖",
        goal=2.0,
        goal_for=["rnla srht"],
        params={"n": n, "p": p, "k": k, "dtype": np.dtype(dtype).name},
    )


def sparse_tasks(n, p, density, k, rng) -> list[Task]:
    A = sp.random(n, p, density=density, format="csr", rng=rng, dtype=np.float64)
    cwt_rng, op_rng = rng.spawn(2)  # SciPy and the construct+apply rows draw per call
    S_sign = sparse_sign(k, n, rng=rng)
    S_count = countsketch(k, n, rng=rng)
    params = {"n": n, "p": p, "density": density, "nnz": int(A.nnz), "k": k, "format": "csr"}
    metric = norm_ratio(A)

    def cwt():
        return scipy.linalg.clarkson_woodruff_transform(A, k, rng=cwt_rng)

    apply_only = Task(
        name=f"Sparse apply (operator pre-built), A {n}x{p} CSR nnz={A.nnz}, k={k}",
        impls={
            "SciPy clarkson_woodruff_transform": cwt,
            "rnla sparse_sign (z=8)": lambda: S_sign @ A,
            "rnla countsketch": lambda: S_count @ A,
            "rnla sparse_sign (z=8), 1 thread": one_thread(lambda: S_sign @ A),
            "rnla countsketch, 1 thread": one_thread(lambda: S_count @ A),
        },
        baseline="SciPy clarkson_woodruff_transform",
        accuracy=metric,
        accuracy_label="‖SA‖/‖A‖",
        goal=3.0,
        goal_for=["rnla sparse_sign (z=8)", "rnla countsketch"],
        params=params,
    )
    construct = Task(
        name=f"Sparse construct + apply, A {n}x{p} CSR nnz={A.nnz}, k={k}",
        impls={
            "SciPy clarkson_woodruff_transform": cwt,
            "rnla sparse_sign (z=8)": lambda: sparse_sign(k, n, rng=op_rng) @ A,
            "rnla countsketch": lambda: countsketch(k, n, rng=op_rng) @ A,
        },
        baseline="SciPy clarkson_woodruff_transform",
        accuracy=metric,
        accuracy_label="‖SA‖/‖A‖",
        goal=3.0,
        goal_for=["rnla sparse_sign (z=8)", "rnla countsketch"],
        params=params,
    )
    return [apply_only, construct]


def gaussian_task(n, p, k, dtype, rng) -> Task:
    A = rng.standard_normal((n, p)).astype(dtype)
    S = gaussian(k, n, rng=rng)
    M = S.todense().astype(dtype)  # the same matrix, as a plain array
    reference = M @ A

    def rel_diff(_name, out):
        return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))

    return Task(
        name=f"Gaussian apply, A {n}x{p} {np.dtype(dtype).name}, k={k}",
        impls={"NumPy GEMM (M @ A)": lambda: M @ A, "rnla gaussian": lambda: S @ A},
        baseline="NumPy GEMM (M @ A)",
        accuracy=rel_diff,
        accuracy_label="rel. diff. from GEMM",
        goal=1 / 1.1,
        goal_text="within 1.1x",
        goal_for=["rnla gaussian"],
        params={"n": n, "p": p, "k": k, "dtype": np.dtype(dtype).name},
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20240601)
    if quick:
        dense = {"n": 4096, "p": 32, "k": 256}
        sparse = {"n": 50_000, "p": 200, "density": 1e-3, "k": 256}
    else:
        dense = {"n": 65536, "p": 256, "k": 1024}
        sparse = {"n": 10**6, "p": 10**3, "density": 1e-3, "k": 1024}
    return [
        srht_task(**dense, dtype=np.float64, rng=rng),
        srht_task(**dense, dtype=np.float32, rng=rng),
        *sparse_tasks(**sparse, rng=rng),
        gaussian_task(**dense, dtype=np.float64, rng=rng),
        gaussian_task(**dense, dtype=np.float32, rng=rng),
    ]


def sparse_goal(rounds: int = 15) -> dict[str, float]:
    """Median per-round time ratio to SciPy's CWT, construction included (interleaved)."""
    import os
    import time

    n, p, k = 10**6, 10**3, 1024
    A = sp.random(n, p, density=1e-3, format="csr", rng=np.random.default_rng(20240601))

    def one_thread_call(f):
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return f()
        finally:
            numba.set_num_threads(previous)

    impls = {
        "SciPy clarkson_woodruff_transform": lambda r: scipy.linalg.clarkson_woodruff_transform(
            A, k, rng=r
        ),
        "rnla sparse_sign (z=8)": lambda r: sparse_sign(k, n, rng=r) @ A,
        "rnla countsketch": lambda r: countsketch(k, n, rng=r) @ A,
        "rnla sparse_sign (z=8), 1 thread": lambda r: one_thread_call(
            lambda: sparse_sign(k, n, rng=r) @ A
        ),
        "rnla countsketch, 1 thread": lambda r: one_thread_call(
            lambda: countsketch(k, n, rng=r) @ A
        ),
    }
    for f in impls.values():
        f(0)  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in impls}
    load_before = os.getloadavg()
    for r in range(rounds):
        for name, f in impls.items():
            t0 = time.perf_counter()
            f(r)
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    base = np.array(times["SciPy clarkson_woodruff_transform"])
    ratios = {}
    print(f"A {n}x{p} CSR nnz={A.nnz}, k={k}, {rounds} interleaved rounds, construction included")
    for name, t in times.items():
        ratio = np.array(t) / base
        ratios[name] = float(np.median(ratio))
        print(
            f"{name:36s} median {np.median(t) * 1e3:7.1f} ms   ratio to CWT {np.median(ratio):.3f}"
            f" (min {ratio.min():.3f}, max {ratio.max():.3f})"
        )
    print(
        "load average (1/5/15 min) before "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + "/".join(f"{x:.2f}" for x in load_after)
        + f"; {numba.get_num_threads()} Numba threads; goal: ratio <= 0.33"
    )
    return ratios


if __name__ == "__main__":
    import sys

    if "--sparse-goal" in sys.argv:
        tail = sys.argv[sys.argv.index("--sparse-goal") + 1 :]
        sparse_goal(int(tail[0]) if tail else 15)
    else:
        main(NAME, build_tasks, description=__doc__.splitlines()[0])
