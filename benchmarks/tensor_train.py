r"""Tensor-train decompositions: rnla against tensorly, and TT-cross on 10^10 entries.

Task 1 (one row per tensor): TT decompositions at equal TT rank of order-6 to order-8
tensors of about :math:`10^7` entries with decaying TT spectra (a random TT of rank 40
whose bond weights decay geometrically, 0.8^j, plus 1e-4 Gaussian noise; shapes
15^6, 10^7 and 8^8 at rank 20; ``--quick``: 8^6 and 5^8 at rank 10), and the smooth
:math:`(1 + \|x\|^2)^{-1}` on a :math:`14^6` grid of :math:`[0, 1]^6` at rank 8 (TT
tails near 1e-11: the TSQR path of ``tt_svd``; goal there: <= 0.33x tensorly's time):

* tensorly ``tensor_train(X, rank)`` (sequential gesdd SVDs) - the baseline;
* ``rnla.tensor.tt_svd(X, rank=rank)`` (same algorithm, Gram/eigh SVDs of the wide
  unfoldings with a TSQR + small-SVD fallback);
* ``rnla.tensor.randomized_tt_svd(X, rank)`` with ``n_iter=1`` (default) and ``n_iter=0``.

Accuracy: relative Frobenius error :math:`\|X - \mathrm{TT}\|_F/\|X\|_F`. Goals: >= 3x
faster than tensorly at <= 1.1x its error (the error ratio is stored in the parameters
and printed at the end).

Task 2: ``rnla.tensor.tt_cross`` on :math:`f(x) = (1 + \|x\|^2)^{-1/2}` sampled on a
uniform :math:`10^{10}` grid of :math:`[0, 1]^{10}` (``--quick``: :math:`10^6`, order 6)
with ``tol=1e-7``. Accuracy: relative error on 20,000 uniformly sampled entries; the
number of entries evaluated (goal: well under 0.01% of the tensor) is in the parameters.
tensorly's TT-cross (``tensorly.contrib.decomposition.tensor_train_cross``) takes the
full tensor as input, so it cannot run at this size and is not timed.

Run ``python -m benchmarks.tensor_train [--quick] [--plot] [--repeats R]``.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorly as tl
from tensorly.decomposition import tensor_train

from benchmarks.harness import Task, main
from rnla.tensor import randomized_tt_svd, tt_cross, tt_svd

NAME = "tensor_train"


def decaying_tt_tensor(shape, bond_rank, decay, noise, rng):
    """Random TT of rank ``bond_rank`` with bond weights decay**j, plus Gaussian noise."""
    d = len(shape)
    weights = decay ** np.arange(bond_rank)
    cores = []
    for k, n in enumerate(shape):
        r0 = 1 if k == 0 else bond_rank
        r1 = 1 if k == d - 1 else bond_rank
        G = rng.standard_normal((r0, n, r1)) / np.sqrt(n * r0)
        if k < d - 1:
            G *= weights[None, None, :r1]
        cores.append(G)
    X = tl.tt_to_tensor(cores)
    X /= np.linalg.norm(X)
    X += noise * rng.standard_normal(X.shape) / np.sqrt(X.size)
    return X


def smooth_tensor(n, d):
    """``1 / (1 + |x|^2)`` on a uniform ``n^d`` grid of ``[0, 1]^d`` (tiny TT tails)."""
    x = np.linspace(0.0, 1.0, n)
    grids = np.meshgrid(*([x] * d), indexing="ij")
    return 1.0 / (1.0 + sum(g**2 for g in grids))


def tt_task(shape, rank, rng, *, smooth=False) -> Task:
    if smooth:
        X = smooth_tensor(shape[0], len(shape))
    else:
        X = decaying_tt_tensor(shape, 40, 0.8, 1e-4, rng)
    norm = float(np.linalg.norm(X))

    def accuracy(_name, tt):
        return float(np.linalg.norm(X - tl.tt_to_tensor(tt)) / norm)

    seeds = np.random.default_rng(7)
    impls = {
        "tensorly tensor_train": lambda: tensor_train(X, rank),
        "rnla tt_svd": lambda: tt_svd(X, rank=rank).tt,
        "rnla randomized_tt_svd q=1": lambda: (
            randomized_tt_svd(X, rank, rng=int(seeds.integers(2**31))).tt
        ),
        "rnla randomized_tt_svd q=0": lambda: (
            randomized_tt_svd(X, rank, n_iter=0, rng=int(seeds.integers(2**31))).tt
        ),
    }
    errors = {name: accuracy(name, fn()) for name, fn in impls.items()}
    base = errors["tensorly tensor_train"]
    return Task(
        name=(
            f"TT rank {rank}, {'smooth ' if smooth else ''}shape {shape[0]}^{len(shape)} "
            f"({X.size:.2g} entries)"
        ),
        impls=impls,
        baseline="tensorly tensor_train",
        accuracy=accuracy,
        accuracy_label="rel. Frobenius error",
        goal=3.0,
        goal_for=["rnla tt_svd", "rnla randomized_tt_svd q=1"],
        params={
            "shape": list(shape),
            "rank": rank,
            "relative_error": errors,
            "error_ratio_vs_tensorly": {k: v / base for k, v in errors.items()},
            "error_goal": "<= 1.1x tensorly",
        },
    )


def cross_task(d, n, tol) -> Task:
    x = np.linspace(0.0, 1.0, n)

    def f(idx):
        return 1.0 / np.sqrt(1.0 + np.sum(x[idx] ** 2, axis=1))

    sample = np.random.default_rng(11).integers(0, n, size=(20_000, d))
    exact = f(sample)

    def entries(tt):
        v = np.ones((sample.shape[0], 1))
        for k, G in enumerate(tt):
            v = np.einsum("na,anb->nb", v, G[:, sample[:, k], :])
        return v[:, 0]

    def run(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tt_cross(f, (n,) * d, 20, tol=tol, rng=seed)

    res = run(0)
    size = float(n) ** d
    return Task(
        name=f"tt_cross, (1 + |x|^2)^-1/2 on a {n}^{d} grid ({size:.0e} entries)",
        impls={"rnla tt_cross": lambda: run(0).tt},
        baseline="rnla tt_cross",
        accuracy=lambda _name, tt: float(
            np.linalg.norm(entries(tt) - exact) / np.linalg.norm(exact)
        ),
        accuracy_label="rel. error on 20,000 sampled entries",
        params={
            "d": d,
            "n": n,
            "tol": tol,
            "n_evals": res.n_evals,
            "fraction_evaluated": res.n_evals / size,
            "converged": res.converged,
            "ranks": list(res.ranks),
            "half_sweeps": res.n_sweeps,
            "sampled_relative_error": float(
                np.linalg.norm(entries(res.tt) - exact) / np.linalg.norm(exact)
            ),
            "goal": "sampled error <= 1e-6 with < 0.01% of the entries evaluated",
        },
    )


def build_tasks(quick: bool) -> list[Task]:
    rng = np.random.default_rng(20240611)
    if quick:
        specs, cross = [((8,) * 6, 10), ((5,) * 8, 10)], (6, 10)
    else:
        specs, cross = [((15,) * 6, 20), ((10,) * 7, 20), ((8,) * 8, 20)], (10, 10)
    tasks = [tt_task(shape, rank, rng) for shape, rank in specs]
    # Smooth tensor: the discarded tails (~1e-11) are below the Gram matrix's rounding,
    # so every wide unfolding takes the TSQR path.
    tasks.append(tt_task((8,) * 6 if quick else (14,) * 6, 8, rng, smooth=True))
    tasks.append(cross_task(*cross, tol=1e-7))
    return tasks


def summarize(result: dict) -> str:
    lines = ["", "Relative error (ratio to tensorly):"]
    for task in result["tasks"]:
        params = task["params"]
        lines.append(f"  {task['name']}:")
        if "relative_error" in params:
            for impl, err in params["relative_error"].items():
                ratio = params["error_ratio_vs_tensorly"][impl]
                lines.append(f"    {impl:28s} {err:.4e}  ({ratio:.3f}x)")
        else:
            lines.append(
                f"    evaluations {params['n_evals']} ({100 * params['fraction_evaluated']:.2e}% "
                f"of the tensor), sampled rel. error {params['sampled_relative_error']:.2e}, "
                f"ranks {params['ranks']}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(NAME, build_tasks, description=__doc__.splitlines()[0])
    print(summarize(out))
