"""Coverage of the sampled-row attention certificate (attention.bounds.certify).

For a fixed perturbed output, ``certify`` is drawn R >= 200 times with independent row
samples; the failure rate of each certified quantity must not exceed its delta (one-sided
binomial test at level 1e-3). Perturbations: uniform noise, errors concentrated on a few
rows (the hard case for sampling), and the error of a low-rank approximation of the
attention weights. Negative controls: the plug-in estimate without the confidence term,
and a KL bound computed with a too small confidence level, fail far more often than delta.
"""

import math

import numpy as np
import pytest
from scipy.stats import binom

from attention.bounds import _betting_lower_bound, certify, kl_confidence_bound
from attention.exact import reference_attention

R_DRAWS = 200
DELTA = 0.1  # large enough for the binomial test to have power
LEVEL = 1e-3


def _too_many(failures: int, draws: int, delta: float) -> bool:
    """One-sided binomial test: is the failure count significantly above delta?"""
    return failures > 0 and binom.sf(failures - 1, draws, delta) < LEVEL


def _problem(rng):
    G, n, d, dv = 2, 128, 16, 8
    Q = 1.5 * rng.standard_normal((G, n, d))
    K = rng.standard_normal((G, n, d))
    V = rng.standard_normal((G, n, dv))
    return Q, K, V


def _perturb(kind, rng, Q, K, V, Y):
    G, n, dv = Y.shape
    if kind == "noise":
        return Y + 0.05 * rng.standard_normal(Y.shape)
    if kind == "few_rows":
        E = np.zeros((G * n, dv))
        bad = rng.choice(G * n, size=5, replace=False)
        E[bad] = 2.0 * rng.standard_normal((5, dv))
        return Y + E.reshape(Y.shape)
    # Low-rank approximation of the attention weights, renormalised (rSVD-like error).
    S = Q @ np.swapaxes(K, -1, -2) / math.sqrt(Q.shape[-1])
    P = np.exp(S - S.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    U, s, Vt = np.linalg.svd(P)
    r = 16
    Pr = (U[..., :r] * s[..., None, :r]) @ Vt[..., :r, :]
    return Pr @ V / Pr.sum(-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noise", "few_rows", "lowrank"])
def test_certificate_coverage(rng, kind):
    Q, K, V = _problem(rng)
    Y = reference_attention(Q, K, V)
    Yt = _perturb(kind, rng, Q, K, V, Y)
    true_fro = float(np.linalg.norm(Yt - Y))
    true_rel = true_fro / float(np.linalg.norm(Y))
    true_mean = float(np.linalg.norm(Yt - Y, axis=-1).mean())
    delta = DELTA
    fails = dict(fro=0, relative_fro=0, mean_row=0, joint=0, plug_in=0)
    ratios = []
    for seed in rng.integers(0, 2**63, size=R_DRAWS):
        c = certify(Yt, Q, K, V, n_rows=32, delta=DELTA, rng=int(seed))
        f = (c.fro < true_fro, c.relative_fro < true_rel, c.mean_row < true_mean)
        fails["fro"] += f[0]
        fails["relative_fro"] += f[1]
        fails["mean_row"] += f[2]
        fails["joint"] += any(f)
        fails["plug_in"] += c.fro_estimate < true_fro
        ratios.append(c.fro / true_fro)
    for name in ("fro", "relative_fro", "mean_row", "joint"):
        assert not _too_many(fails[name], R_DRAWS, delta), (name, fails)
    # Negative control: the estimate without its confidence term is not a bound.
    assert _too_many(fails["plug_in"], R_DRAWS, delta), fails
    # Tightness (bound / true error) is finite and, for these errors, below 100.
    assert 1 <= np.median(ratios) < 100


def test_kl_bound_coverage_worst_case_population(rng):
    """Bernoulli population sampled without replacement: the KL bound's worst case."""
    N, s, delta = 2000, 100, 0.1
    pop = np.zeros(N)
    pop[: int(0.03 * N)] = 1.0  # mean 0.03 > 1 - delta**(1/s): an all-zero sample fails
    mu = pop.mean()
    fails = naive = 0
    for _ in range(400):
        x = rng.choice(pop, size=s, replace=False).mean()
        fails += kl_confidence_bound(x, s, delta) < mu
        naive += kl_confidence_bound(x, s, 0.9) < mu  # far too optimistic level
    assert not _too_many(fails, 400, delta)
    assert _too_many(naive, 400, delta)


def test_betting_lower_bound_coverage(rng):
    """The WoR betting lower bound (used for ||Y||_F) covers a skewed population."""
    N, s, delta = 1000, 64, 0.1
    pop = np.minimum(rng.lognormal(-3.0, 1.0, N), 1.0)
    mu = pop.mean()
    fails = naive = 0
    for _ in range(300):
        x = rng.choice(pop, size=s, replace=False)
        lcb = _betting_lower_bound(x, N, delta)
        assert 0.0 <= lcb <= x.mean()
        fails += lcb > mu
        naive += x.mean() > mu  # the sample mean is not a lower bound
    assert not _too_many(fails, 300, delta)
    assert _too_many(naive, 300, delta)
