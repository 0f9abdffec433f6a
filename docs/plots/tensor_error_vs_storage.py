"""Relative error against storage for the tensor decompositions of :mod:`rnla.tensor`.

Writes ``docs/_static/tensor_error_vs_storage.png`` for the user guide page
``docs/user_guide/tensor.rst``. Run from the repository root::

    .venv/bin/python docs/plots/tensor_error_vs_storage.py

Left: the smooth function f(x) = 1 / sqrt(1 + |x|^2) on a uniform 12^6 grid of [0, 1]^6
(about 3 million entries): TT-SVD in tolerance mode, randomized TT-SVD at fixed ranks and
TT-cross (which reads only a few entries; the number read is annotated). Right: the
activations of the six real MiniLM heads shipped with the package
(``attention.data.load_sample("minilm")``) stacked as a 3 x 6 x 512 x 32 tensor
A[t, h, i, c] (t = query, key, value): TT-SVD (tolerance sweep), randomized TT-SVD and
randomized Tucker (rank sweeps). Storage is the number of stored parameters.
"""

from __future__ import annotations

import pathlib
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tensorly as tl

from rnla.tensor import randomized_tt_svd, randomized_tucker, tt_cross, tt_svd

OUT = pathlib.Path(__file__).resolve().parents[1] / "_static" / "tensor_error_vs_storage.png"
SEED = 20240611


def tt_storage(tt) -> int:
    return int(sum(np.asarray(c).size for c in tt))


def tucker_storage(tucker) -> int:
    core, factors = tucker
    return int(core.size + sum(U.size for U in factors))


def rel_error(X, Y) -> float:
    return float(np.linalg.norm(X - Y) / np.linalg.norm(X))


def smooth_panel(ax):
    d, n = 6, 12
    x = np.linspace(0, 1, n)

    def f(idx):
        return 1.0 / np.sqrt(1.0 + np.sum(x[idx] ** 2, axis=1))

    X = f(np.indices((n,) * d).reshape(d, -1).T).reshape((n,) * d)
    tols = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
    pts = [
        (tt_storage(r.tt), rel_error(X, tl.tt_to_tensor(r.tt)))
        for r in (tt_svd(X, tol=t) for t in tols)
    ]
    ax.loglog(*zip(*pts, strict=True), "o-", label="tt_svd (tol sweep)")
    pts = [
        (tt_storage(r.tt), rel_error(X, tl.tt_to_tensor(r.tt)))
        for r in (randomized_tt_svd(X, k, rng=SEED) for k in range(1, 9))
    ]
    ax.loglog(*zip(*pts, strict=True), "s--", label="randomized_tt_svd (rank 1..8)")
    pts, evals = [], []
    for t in [1e-3, 1e-5, 1e-7, 1e-9]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tt_cross(f, (n,) * d, 12, tol=t, rng=SEED)
        pts.append((tt_storage(res.tt), rel_error(X, tl.tt_to_tensor(res.tt))))
        evals.append(res.n_evals)
    ax.loglog(*zip(*pts, strict=True), "^:", label="tt_cross (tol sweep)")
    for (s, e), m in zip(pts, evals, strict=True):
        ax.annotate(
            f"{100 * m / X.size:.1f}% read",
            (s, e),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
        )
    ax.axvline(X.size, color="grey", lw=0.8)
    ax.set_title(r"$1/\sqrt{1+|x|^2}$ on a $12^6$ grid")
    ax.set_xlabel("stored parameters")
    ax.set_ylabel(r"relative error $\|X - \hat X\|_F / \|X\|_F$")
    ax.legend(fontsize=8)


def attention_panel(ax):
    from attention.data import load_sample

    s = load_sample("minilm")
    # Activations stack A[t, h, i, c]: t in (Q, K, V), 6 heads, 512 positions, 32 dims.
    A = np.stack([s.Q, s.K, s.V]).astype(np.float64)
    t, h, m, c = A.shape
    pts = [
        (tt_storage(r.tt), rel_error(A, tl.tt_to_tensor(r.tt)))
        for r in (tt_svd(A, tol=e) for e in [0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01])
    ]
    ax.loglog(*zip(*pts, strict=True), "o-", label="tt_svd (tol sweep)")
    pts = [
        (tt_storage(r.tt), rel_error(A, tl.tt_to_tensor(r.tt)))
        for r in (randomized_tt_svd(A, k, rng=SEED) for k in (4, 8, 16, 32, 64, 96))
    ]
    ax.loglog(*zip(*pts, strict=True), "s--", label="randomized_tt_svd (rank sweep)")
    pts = [
        (tucker_storage(r.tucker), rel_error(A, tl.tucker_to_tensor(r.tucker)))
        for r in (randomized_tucker(A, [t, h, k, k // 4], rng=SEED) for k in (16, 32, 64, 96, 128))
    ]
    ax.loglog(*zip(*pts, strict=True), "d-.", label="randomized_tucker (rank sweep)")
    ax.axvline(A.size, color="grey", lw=0.8)
    ax.set_title(f"MiniLM activations Q, K, V ({t} x {h} x {m} x {c})")
    ax.set_xlabel("stored parameters")
    ax.legend(fontsize=8)


def logits_panel(ax):
    from attention.data import load_sample

    s = load_sample("minilm")
    # Attention logits S[h, i, j] = q_i . k_j / sqrt(d) of the six heads (rank <= 32 each).
    S = np.einsum("hid,hjd->hij", s.Q.astype(np.float64), s.K.astype(np.float64)) * s.scale
    h, m, _ = S.shape
    pts = [
        (tt_storage(r.tt), rel_error(S, tl.tt_to_tensor(r.tt)))
        for r in (tt_svd(S, tol=e) for e in [0.3, 0.1, 0.03, 0.01, 1e-3])
    ]
    ax.loglog(*zip(*pts, strict=True), "o-", label="tt_svd (tol sweep)")
    pts = [
        (tt_storage(r.tt), rel_error(S, tl.tt_to_tensor(r.tt)))
        for r in (randomized_tt_svd(S, k, rng=SEED) for k in (8, 16, 32, 64, 128))
    ]
    ax.loglog(*zip(*pts, strict=True), "s--", label="randomized_tt_svd (rank sweep)")
    pts = [
        (tucker_storage(r.tucker), rel_error(S, tl.tucker_to_tensor(r.tucker)))
        for r in (randomized_tucker(S, [h, k, k], rng=SEED) for k in (8, 16, 32, 64, 128))
    ]
    ax.loglog(*zip(*pts, strict=True), "d-.", label="randomized_tucker (rank sweep)")
    ax.axvline(S.size, color="grey", lw=0.8)
    ax.set_title(f"MiniLM attention logits ({h} x {m} x {m})")
    ax.set_xlabel("stored parameters")
    ax.legend(fontsize=8)


def main():
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    smooth_panel(axes[0])
    attention_panel(axes[1])
    logits_panel(axes[2])
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
