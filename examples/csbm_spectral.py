r"""Semi-supervised spectral node classification on a contextual SBM (CSBM).

Two balanced communities :math:`\sigma_i = \pm 1`. The graph is a stochastic block model
with edge probabilities :math:`p = a\log n/n` inside and :math:`q = b\log n/n` across
communities; every node also carries a feature vector :math:`x_i = \sigma_i\mu + z_i`,
:math:`z_i \sim N(0, I_d)`, with :math:`\|\mu\|^4/(\|\mu\|^2 + d/n) = c\log n`; the labels
of a fraction ``rho`` of the nodes are revealed. Exact recovery of all test nodes has
the threshold

    I(a, b, c) = (sqrt(a) - sqrt(b))^2 / 2 + c / 2 = 1

(Abbe, Fan and Wang 2022 for the unsupervised CSBM; see the docs page for the
semi-supervised setting of Wang and Wang 2024). The estimator:

1. leading eigenvector :math:`u` of the combined operator
   :math:`M = \log(a/b)\,(A - \bar d\,\mathbf 1\mathbf 1^T/n) + w\,H(XX^T)`
   (:math:`H` removes the diagonal, :math:`w = 2/(n + d/\|\mu\|^2)`), by
   :func:`rnla.krylov.lanczos` on a LinearOperator (sparse adjacency, Gram matrix never
   formed); its sign is fixed by the training labels;
2. one refinement step: :math:`s = \sqrt n\,u` with the training labels substituted,
   prediction :math:`\hat\sigma = \operatorname{sgn}(Ms)` (the genie-aided likelihood
   ratio test with the unknown labels replaced by the spectral estimate).

Run from the repository root::

    .venv/bin/python examples/csbm_spectral.py
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from rnla.krylov import lanczos

D_FEATURES = 100
RHO = 0.2  # fraction of revealed labels
B_GRAPH = 2.0  # b, the across-community degree parameter
LANCZOS_STEPS = 40


def threshold(a: float, b: float, c: float) -> float:
    """Exact-recovery exponent I = (sqrt a - sqrt b)^2 / 2 + c / 2 (recovery iff I > 1)."""
    return (math.sqrt(a) - math.sqrt(b)) ** 2 / 2 + c / 2


def params_for(signal: float, b: float = B_GRAPH) -> tuple[float, float, float]:
    """Return (a, b, c) with I = signal, split evenly between graph and features."""
    a = (math.sqrt(b) + math.sqrt(signal)) ** 2
    return a, b, signal


def feature_norm2(c: float, n: int, d: int) -> float:
    """||mu||^2 solving ||mu||^4 / (||mu||^2 + d/n) = c log n."""
    L = c * math.log(n)
    return (L + math.sqrt(L * L + 4 * L * d / n)) / 2


def _sample_pairs(rows, cols, prob, rng, same):
    """Independent Bernoulli(prob) edges between index sets (upper triangle if same)."""
    m1, m2 = rows.size, cols.size
    total = m1 * (m1 - 1) // 2 if same else m1 * m2
    count = rng.binomial(total, prob)
    i = rng.integers(0, m1, 2 * count + 16)
    j = rng.integers(0, m2, 2 * count + 16)
    if same:
        keep = i < j
        i, j = i[keep], j[keep]
    pairs = np.unique(np.stack([rows[i], cols[j]], axis=1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:count]]
    return pairs


def csbm(n: int, a: float, b: float, c: float, *, d: int = D_FEATURES, rng=None):
    """Sample labels, sparse adjacency (CSR) and features of a two-community CSBM."""
    rng = np.random.default_rng(rng)
    sigma = np.ones(n)
    sigma[rng.permutation(n)[: n // 2]] = -1.0
    plus, minus = np.flatnonzero(sigma > 0), np.flatnonzero(sigma < 0)
    p, q = a * math.log(n) / n, b * math.log(n) / n
    edges = np.concatenate(
        [
            _sample_pairs(plus, plus, p, rng, True),
            _sample_pairs(minus, minus, p, rng, True),
            _sample_pairs(plus, minus, q, rng, False),
        ]
    )
    A = sp.coo_array((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    A = (A + A.T).tocsr()
    mu = np.zeros(d)
    mu[0] = math.sqrt(feature_norm2(c, n, d))
    X = sigma[:, None] * mu[None, :] + rng.standard_normal((n, d))
    return sigma, A, X


def combined_operator(A, X, a: float, b: float, mu2: float) -> LinearOperator:
    """M = log(a/b) (A - dbar 11^T / n) + 2 / (n + d / ||mu||^2) * hollow(X X^T)."""
    n, d = X.shape
    w_graph = math.log(a / b)
    w_feat = 2.0 / (n + d / mu2)
    dbar = A.sum() / n
    row_sq = np.einsum("ij,ij->i", X, X)

    def matmat(V):
        V = np.asarray(V, dtype=np.float64).reshape(n, -1)
        graph = A @ V - (dbar / n) * V.sum(axis=0, keepdims=True)
        feat = X @ (X.T @ V) - row_sq[:, None] * V
        return w_graph * graph + w_feat * feat

    return LinearOperator(
        (n, n),
        matvec=lambda v: matmat(v)[:, 0],
        matmat=matmat,
        rmatvec=lambda v: matmat(v)[:, 0],
        dtype=np.float64,
    )


def spectral_classify(A, X, sigma_train, train, a, b, mu2, *, rng=None):
    """Predict the labels (+-1) of all nodes.

    The training labels fix the sign of the eigenvector and are substituted in the
    refinement step.
    """
    rng = np.random.default_rng(rng)
    n = X.shape[0]
    M = combined_operator(A, X, a, b, mu2)
    res = lanczos(M, rng.standard_normal(n), LANCZOS_STEPS, rng=rng)
    _, S = sla.eigh_tridiagonal(res.alpha, res.beta)
    u = res.Q @ S[:, -1]  # leading Ritz vector
    if np.sum(sigma_train * u[train]) < 0:
        u = -u
    s = math.sqrt(n) * u
    s[train] = sigma_train
    return np.where(M.matvec(s) >= 0, 1.0, -1.0)


def trial(n: int, signal: float, seed: int, *, rho: float = RHO) -> tuple[float, bool]:
    """Misclassified fraction of test nodes and whether all test nodes are correct."""
    rng = np.random.default_rng(seed)
    a, b, c = params_for(signal)
    sigma, A, X = csbm(n, a, b, c, rng=rng)
    train = np.zeros(n, dtype=bool)
    train[rng.permutation(n)[: int(rho * n)]] = True
    mu2 = feature_norm2(c, n, X.shape[1])
    pred = spectral_classify(A, X, sigma[train], train, a, b, mu2, rng=rng)
    errors = np.count_nonzero(pred[~train] != sigma[~train])
    return errors / np.count_nonzero(~train), errors == 0


def main(n: int = 3000, seeds: int = 10) -> None:
    """Print the error and the exact-recovery rate across the threshold."""
    print(f"CSBM n={n}, d={D_FEATURES}, b={B_GRAPH}, revealed labels {RHO:.0%}, {seeds} seeds")
    print(f"{'I(a,b,c)':>8s} {'a':>6s} {'c':>5s} {'mean error':>11s} {'P(exact)':>9s}")
    for signal in (0.4, 0.7, 1.0, 1.3, 1.6, 2.0):
        a, _, c = params_for(signal)
        out = [trial(n, signal, seed) for seed in range(seeds)]
        err = np.mean([o[0] for o in out])
        exact = np.mean([o[1] for o in out])
        print(f"{signal:8.2f} {a:6.2f} {c:5.2f} {err:11.2e} {exact:9.2f}")


if __name__ == "__main__":
    main()
