"""Error vs rank of randomized low-rank approximations against their a-priori bounds.

Writes ``docs/_static/lowrank_error_vs_rank.png`` for the user guide page
``docs/user_guide/lowrank.rst``. Run from the repository root::

    .venv/bin/python docs/plots/lowrank_error_vs_rank.py

Left: Gaussian range finder (the first stage of :func:`rnla.lowrank.rsvd`) on a
500 x 300 matrix with polynomially decaying singular values, sigma_j = j^-1: the
Monte Carlo mean of ||A - QQ^T A||_F^2 with l = k + 5 columns against the HMT bound
(1 + k/(p - 1)) tau_k^2 (Thm 10.5) and the optimum tau_k^2; also the rank-k rsvd with one
power iteration, and a certified upper bound from one draw
(:func:`rnla.estimate.lowrank_error_estimate`).

Right: trace error of RPCholesky on the Gaussian kernel matrix of scikit-learn's digits
(1797 points, never formed: a :class:`rnla.operators.KernelMatrix`), against the
Chen-Epperly-Tropp-Webber bound (Thm 2.3), with uniform column Nyström and Gaussian
Nyström (and its bound, HMT Thm 10.5 applied to A^{1/2}) for comparison.
"""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from rnla.estimate import lowrank_error_estimate
from rnla.lowrank import range_finder, rsvd
from rnla.operators import KernelMatrix
from rnla.psd import nystrom, rpcholesky

OUT = pathlib.Path(__file__).resolve().parents[1] / "_static" / "lowrank_error_vs_rank.png"
SEED = 20240501
OVERSAMPLE = 5
TRIALS = 100  # Monte Carlo draws per rank (left panel)
TRIALS_KERNEL = 20  # per rank (right panel)


# ----------------------------------------------------------------------------------------
# bounds (closed forms; cross-checked against rnla's bound functions when available)
# ----------------------------------------------------------------------------------------


def hmt_bound(s, k, p):
    """HMT Thm 10.5, squared form: E||(I - P)A||_F^2 <= (1 + k/(p-1)) sum_{j>k} s_j^2."""
    return (1 + k / (p - 1)) * np.sum(s[k:] ** 2)


def rpcholesky_eps(lam, r, k):
    """Smallest eps with k >= r/eps + r log+(1/(eps eta_r)) (CETW Thm 2.3), or inf."""
    eta = np.sum(lam[r:]) / np.sum(lam)

    def pivots(eps):
        return r / eps + r * max(math.log(1 / (eps * eta)), 0.0)

    lo, hi = 1e-8, 1e8
    if eta <= 0 or pivots(hi) > k:
        return math.inf
    for _ in range(200):  # bisection on the decreasing function pivots(eps)
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if pivots(mid) <= k else (mid, hi)
    return hi


def rpcholesky_bound(lam, k):
    """Best guarantee of CETW Thm 2.3 for k pivots: min over r < k of (1 + eps) tail_r."""
    return min((1 + rpcholesky_eps(lam, r, k)) * np.sum(lam[r:]) for r in range(1, k))


def gaussian_nystrom_bound(lam, ell):
    """HMT Thm 10.5 for A^{1/2}: E tr(A - A<Omega>) <= min_{k+p=ell, p>=2} (1 + k/(p-1)) tail_k."""
    tails = np.cumsum(lam[::-1])[::-1]
    return min((1 + k / (ell - k - 1)) * tails[k] for k in range(1, ell - 1))


def _check_against_library(s, lam):
    """Use the library's bound functions when rnla.bounds re-exports them."""
    try:
        from rnla.bounds import (
            hmt_frobenius_bound,
            nystrom_expected_trace_bound,
            rpcholesky_rank_bound,
        )
    except ImportError:
        from rnla._bounds_lowrank import hmt_frobenius_bound
        from rnla._bounds_nystrom import nystrom_expected_trace_bound, rpcholesky_rank_bound
    assert math.isclose(hmt_frobenius_bound(s, 10, OVERSAMPLE), hmt_bound(s, 10, OVERSAMPLE))
    assert math.isclose(
        nystrom_expected_trace_bound(lam, 10, 5), (1 + 10 / 4) * lam[10:].sum(), rel_tol=1e-12
    )
    # The pivot count of the library reproduces the eps found by bisection.
    eps = rpcholesky_eps(lam, 10, 60)
    assert rpcholesky_rank_bound(lam, 10, eps * 1.0001) <= 60
    assert rpcholesky_rank_bound(lam, 10, eps * 0.9) > 60


# ----------------------------------------------------------------------------------------
# experiments
# ----------------------------------------------------------------------------------------


def polynomial_matrix(rng, m=500, n=300):
    s = 1.0 / np.arange(1, n + 1)
    U = np.linalg.qr(rng.standard_normal((m, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return (U * s) @ V.T, s


def range_finder_panel(rng, ranks):
    A, s = polynomial_matrix(rng)
    normA2 = np.sum(s**2)
    mean, se, rsvd_q1, cert = [], [], [], []
    for k in ranks:
        errs = []
        for _ in range(TRIALS):
            Q = range_finder(A, k + OVERSAMPLE, rng=rng)
            errs.append(normA2 - np.sum((Q.T @ A) ** 2))  # QB identity, exact
        errs = np.asarray(errs)
        mean.append(errs.mean())
        se.append(errs.std(ddof=1) / math.sqrt(TRIALS))
        res = rsvd(A, k, oversample=OVERSAMPLE, n_iter=1, rng=rng)
        rsvd_q1.append(np.linalg.norm(A - (res.U * res.s) @ res.Vt) ** 2)
        est = lowrank_error_estimate(A, res, n_probes=30, rng=rng)
        cert.append(est.upper**2)
    optimal = np.array([np.sum(s[k:] ** 2) for k in ranks])
    bound = np.array([hmt_bound(s, k, OVERSAMPLE) for k in ranks])
    return s, dict(
        mean=np.array(mean) / normA2,
        se=np.array(se) / normA2,
        rsvd_q1=np.array(rsvd_q1) / normA2,
        cert=np.array(cert) / normA2,
        optimal=optimal / normA2,
        bound=bound / normA2,
    )


def digits_kernel():
    X = load_digits().data.astype(np.float64)
    X = (X - X.mean(axis=0)) / X.std()
    return KernelMatrix(X, bandwidth=8.0)


def kernel_panel(rng, ranks):
    K = digits_kernel()
    n = K.shape[0]
    # The exact spectrum is needed only for the bounds and the optimum.
    lam = np.clip(np.linalg.eigvalsh(K.rows(np.arange(n)))[::-1], 0, None)
    trace = float(np.sum(K.diag()))
    Kop = K.as_linear_operator()
    out = {"rpc": [], "uniform": [], "gauss": []}
    for k in ranks:
        rpc = [trace - np.sum(rpcholesky(K, k, rng=rng).F ** 2) for _ in range(TRIALS_KERNEL)]
        uni = [
            trace - np.sum(rpcholesky(K, k, method="uniform", rng=rng).F ** 2)
            for _ in range(TRIALS_KERNEL)
        ]
        gau = [
            trace - np.sum(nystrom(Kop, k, oversample=0, rng=rng).eigenvalues)
            for _ in range(max(5, TRIALS_KERNEL // 4))
        ]
        out["rpc"].append(np.mean(rpc))
        out["uniform"].append(np.mean(uni))
        out["gauss"].append(np.mean(gau))
    tails = np.cumsum(lam[::-1])[::-1]
    result = {key: np.asarray(v) / trace for key, v in out.items()}
    result["optimal"] = np.array([tails[k] for k in ranks]) / trace
    result["rpc_bound"] = np.array([rpcholesky_bound(lam, k) for k in ranks]) / trace
    result["gauss_bound"] = np.array([gaussian_nystrom_bound(lam, k) for k in ranks]) / trace
    return lam, result


def main():
    rng = np.random.default_rng(SEED)
    ranks_a = np.arange(2, 81, 6)
    s, a = range_finder_panel(rng, ranks_a)
    ranks_b = np.array([5, 10, 20, 30, 45, 60, 80, 100, 125, 150])
    lam, b = kernel_panel(rng, ranks_b)
    _check_against_library(s, lam)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    ax1.semilogy(ranks_a, a["bound"], "k--", label=r"HMT bound $(1 + \frac{k}{p-1})\tau_k^2$")
    ax1.errorbar(
        ranks_a,
        a["mean"],
        yerr=3 * a["se"],
        fmt="o-",
        ms=4,
        capsize=2,
        label=rf"range finder, $\ell = k + {OVERSAMPLE}$ (mean of {TRIALS})",
    )
    ax1.semilogy(
        ranks_a, a["rsvd_q1"], "s-", ms=3, label="rsvd rank $k$, 1 power iteration (1 draw)"
    )
    ax1.semilogy(ranks_a, a["optimal"], "k-", lw=1, label=r"optimal $\tau_k^2$")
    ax1.semilogy(
        ranks_a,
        a["cert"],
        "^:",
        ms=4,
        color="tab:red",
        label=r"its certified upper bound (30 probes, $\delta=10^{-3}$)",
    )
    ax1.set_xlabel("rank $k$")
    ax1.set_ylabel(r"$\|A - \hat A\|_F^2 / \|A\|_F^2$")
    ax1.set_title(r"rSVD, $\sigma_j = j^{-1}$ (500 × 300), $p = 5$")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)

    ax2.semilogy(ranks_b, b["rpc_bound"], "k--", label="RPCholesky bound (CETW Thm 2.3)")
    ax2.semilogy(ranks_b, b["gauss_bound"], "k:", label="Gaussian Nyström bound")
    ax2.semilogy(ranks_b, b["uniform"], "v-", ms=4, label="uniform column Nyström")
    ax2.semilogy(ranks_b, b["gauss"], "s-", ms=3, label=r"Gaussian Nyström, $\ell = k$")
    ax2.semilogy(ranks_b, b["rpc"], "o-", ms=4, label=f"RPCholesky (mean of {TRIALS_KERNEL})")
    ax2.semilogy(ranks_b, b["optimal"], "k-", lw=1, label=r"optimal $\sum_{j>k}\lambda_j$")
    ax2.set_xlabel("rank $k$ (pivots / sketch columns)")
    ax2.set_ylabel(r"$\mathrm{tr}(A - \hat A) / \mathrm{tr}\,A$")
    ax2.set_title("Gaussian kernel, digits (1797 points)")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    # Numbers quoted in the user guide.
    i = int(np.searchsorted(ranks_a, 50))
    print(
        f"k={ranks_a[i]}: range finder mean/bound = {a['mean'][i] / a['bound'][i]:.2f}, "
        f"mean/optimal = {a['mean'][i] / a['optimal'][i]:.2f}, "
        f"certificate/actual rsvd = {a['cert'][i] / a['rsvd_q1'][i]:.2f}"
    )
    for j, k in enumerate(ranks_b):
        print(
            f"k={k}: rpc/opt={b['rpc'][j] / b['optimal'][j]:.2f} "
            f"rpc_bound/opt={b['rpc_bound'][j] / b['optimal'][j]:.2f} "
            f"uniform/rpc={b['uniform'][j] / b['rpc'][j]:.2f} "
            f"gauss/rpc={b['gauss'][j] / b['rpc'][j]:.2f}"
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
