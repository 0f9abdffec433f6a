"""Bound verification for the §3.3 sampling methods (attention/sampling.py).

* the exact AMM variance formula (Monte Carlo mean of the squared error within 4
  standard errors; negative control: the formula without the ``-||AB||^2`` term);
* the per-row second moment the method's bound uses (row-dependent centring at
  ``y_i``), against Monte Carlo on the block + sample estimator; negative controls:
  uncentred values, and a sampler with ``p_j = 0`` on a heavy key (assumption violated);
* the probabilistic bound by failure counting (one-sided binomial test at level 1e-3)
  on synthetic inputs, and a negative control (the un-inflated "expected error" at the
  same claimed confidence) that the same test rejects.
"""

import numpy as np
import pytest
from scipy import stats

import attention.sampling as smp
from attention import approximate
from attention.exact import reference_attention

LEVEL = 1e-3


def _binomial_ok(fails: int, draws: int, delta: float) -> bool:
    """One-sided test of H0: failure rate <= delta; True if H0 is not rejected."""
    return stats.binom.sf(fails - 1, draws, delta) >= LEVEL


def _mc_mean(samples):
    samples = np.asarray(samples)
    return samples.mean(), samples.std(ddof=1) / np.sqrt(samples.size)


def _amm_draws(A, B, p, s, draws, rng):
    AB = A @ B
    idx = rng.choice(p.size, size=(draws, s), p=p)
    out = np.empty(draws)
    for r in range(draws):
        j = idx[r]
        est = (A[:, j] / (s * p[j])) @ B[j]
        out[r] = np.sum((est - AB) ** 2)
    return out


def test_amm_variance_matches_monte_carlo(rng):
    n, m, k, s = 12, 40, 4, 8
    A = np.exp(rng.standard_normal((n, m)))
    B = rng.standard_normal((m, k)) + 2.0
    # Near-optimal probabilities make the subtracted ||AB||^2 / s term large.
    w = np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=1)
    p = 0.8 * w / w.sum() + 0.2 / m
    draws = _amm_draws(A, B, p, s, 3000, rng)
    mean, se = _mc_mean(draws)
    theory = smp.amm_variance(A, B, p, s)
    assert abs(mean - theory) < 4 * se
    # Negative control: without the -||AB||_F^2 / s term the formula is far off.
    wrong = theory + np.sum((A @ B) ** 2) / s
    assert abs(mean - wrong) > 4 * se


def _piece_setup(rng, n=24, m=30, d=4, dv=3):
    q = 1.2 * rng.standard_normal((n, d))
    k = 1.2 * rng.standard_normal((m, d))
    v = rng.standard_normal((m, dv))
    qblock = rng.integers(0, 3, size=n)
    kblock = rng.integers(0, 3, size=m)
    return q, k, v, qblock, kblock


def _estimator_errors(q, k, v, qblock, kblock, p, s, draws, rng, *, centred=True):
    """Monte Carlo draws of sum_i ||e_i||^2 in normalised units (rows divided by z_i)."""
    S = q @ k.T
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    y = P @ v
    inblk = qblock[:, None] == kblock[None, :]
    Pr = np.where(inblk, 0.0, P)
    out = np.empty(draws)
    for r in range(draws):
        j = rng.choice(p.size, size=s, p=p)
        # A never-sampled key (p_j = 0) gets weight 0: the biased estimator.
        counts = np.bincount(j, minlength=p.size) / (s * np.where(p > 0, p, np.inf))
        D = Pr * (counts - 1.0)[None, :]  # ~a_i - a_i on the residual
        if centred:
            e = D @ v - D.sum(axis=1)[:, None] * y
        else:
            e = D @ v
        out[r] = np.sum(e * e)
    return out, y


def _formula(q, k, v, qblock, kblock, p, s, y):
    S = q @ k.T
    lse = S.max(axis=1) + np.log(np.exp(S - S.max(axis=1, keepdims=True)).sum(axis=1))
    piece = smp._Piece(
        np.arange(q.shape[0]), np.arange(k.shape[0]), "sampled", qblock, kblock, p, s
    )
    var, zlow, _ = smp._second_moment(q, k, v, 1.0, y, lse, [piece], None)
    return var.sum(), zlow


def test_row_second_moment_matches_monte_carlo(rng):
    q, k, v, qb, kb = _piece_setup(rng)
    m, s = k.shape[0], 6
    p = np.full(m, 1.0 / m)
    draws, y = _estimator_errors(q, k, v, qb, kb, p, s, 3000, rng)
    mean, se = _mc_mean(draws)
    theory, zlow = _formula(q, k, v, qb, kb, p, s, y)
    assert abs(mean - theory) < 4 * se
    assert np.all(zlow > 0) and np.all(zlow <= 1 + 1e-12)
    # Negative control: the uncentred AMM variance (v_j instead of v_j - y_i) is wrong.
    unc, _ = _estimator_errors(q, k, v + 5.0, qb, kb, p, s, 1, rng)
    theory_shift, _ = _formula(q, k, v + 5.0, qb, kb, p, s, y + 5.0)
    assert abs(theory_shift - theory) < 1e-8 * max(theory, 1.0)  # centring: shift-invariant
    draws_unc, _ = _estimator_errors(q, k, v + 5.0, qb, kb, p, s, 3000, rng, centred=False)
    m_unc, se_unc = _mc_mean(draws_unc)
    assert abs(m_unc - theory) > 4 * se_unc
    del unc


def test_zero_probability_violates_the_formula(rng):
    # Assumption p_j > 0 violated: a heavy key is never sampled, the estimator is biased
    # and its mean squared error exceeds the formula evaluated with those terms dropped.
    q, k, v, qb, kb = _piece_setup(rng)
    m, s = k.shape[0], 6
    # A sink: key 0 gets a large score from every query, lies outside every block and
    # carries a distinctive value, so missing it biases every row.
    q = np.hstack([q, np.ones((q.shape[0], 1))])
    k = np.hstack([k, np.zeros((m, 1))])
    k[0, -1], kb[0], v[0] = 3.0, 99, 4.0
    heavy = 0
    p = np.full(m, 1.0 / (m - 1))
    p[heavy] = 0.0
    draws, y = _estimator_errors(q, k, v, qb, kb, p, s, 2000, rng)
    mean, se = _mc_mean(draws)
    p_safe = np.where(p > 0, p, np.inf)  # 1/p_j -> 0: the dropped terms
    theory, _ = _formula(q, k, v, qb, kb, p_safe, s, y)
    assert mean > theory + 4 * se
    with pytest.raises(ValueError, match="biased"):
        smp.amm_variance(np.ones((2, m)), v, p, s)


def _failure_run(name, Q, K, V, draws, rng, **kw):
    Y = reference_attention(Q, K, V, causal=kw.get("causal", False))
    errs, bounds = np.empty(draws), np.empty(draws)
    for r in range(draws):
        res = approximate(Q, K, V, name, rng=rng, **kw)
        errs[r] = np.linalg.norm(res.output - Y)
        bounds[r] = res.bound.value
    return errs, bounds


CASES = [
    ("kdeformer", {"sample_size": 16, "block_size": 32}),
    (
        "hyperattention",
        {"sample_size": 16, "block_size": 32, "min_seq_len": 32, "error_bound": "exact"},
    ),
    (
        "hyperattention",
        {
            "sample_size": 16,
            "block_size": 32,
            "min_seq_len": 32,
            "sampling": "row_norm",
            "causal": True,
            "error_bound": "exact",
        },
    ),
    # the sampled-row certificate (64 of 128 rows)
    (
        "hyperattention",
        {"sample_size": 16, "block_size": 32, "min_seq_len": 32, "error_bound": True},
    ),
    ("prescoring", {"sample_size": 16, "block_size": 32, "min_seq_len": 32, "n_select": 96}),
]


@pytest.mark.parametrize(("name", "kw"), CASES, ids=lambda x: str(x))
def test_bound_failure_rate(name, kw, rng):
    Q = 1.5 * rng.standard_normal((1, 128, 8))
    K = 1.5 * rng.standard_normal((1, 128, 8))
    V = rng.standard_normal((1, 128, 4))
    draws, delta = 40, 0.1
    errs, bounds = _failure_run(name, Q, K, V, draws, rng, delta=delta, **kw)
    fails = int(np.sum(errs > bounds))
    assert _binomial_ok(fails, draws, delta), (fails, draws)
    assert np.median(bounds / errs) < 1e3  # tightness stays informative


def test_negative_control_expected_error_is_not_a_bound(rng):
    # The "expected error" sqrt(E||~Y - Y||_F^2), estimated from the same draws, is no
    # 90%-confidence bound: it is exceeded far more often than 10% of the time, and the
    # same binomial test rejects it (so the test above has power).
    Q = 1.5 * rng.standard_normal((1, 128, 8))
    K = 1.5 * rng.standard_normal((1, 128, 8))
    V = rng.standard_normal((1, 128, 4))
    draws, delta = 60, 0.1
    errs, _ = _failure_run(
        "kdeformer", Q, K, V, draws, rng, sample_size=16, block_size=32, error_bound=True
    )
    rms = float(np.sqrt(np.mean(errs**2)))
    fails = int(np.sum(errs > rms))
    assert not _binomial_ok(fails, draws, delta), (fails, draws)


@pytest.mark.parametrize(
    ("sample", "name"),
    [("minilm", "kdeformer"), ("minilm", "prescoring"), ("smollm2", "hyperattention")],
)
def test_bound_on_real_heads(sample, name, rng):
    from attention.data import load_sample

    s = load_sample(sample)
    Q, K, V = s.Q[:2], s.K[:2], s.V[:2]
    Y = reference_attention(Q, K, V, scale=s.scale, causal=s.causal).astype(np.float64)
    draws, delta, fails = 4, 0.1, 0
    for _ in range(draws):
        kw = {"error_bound": True} if name == "hyperattention" else {}
        res = approximate(
            Q, K, V, name, rng=rng, scale=s.scale, causal=s.causal, delta=delta, **kw
        )
        fails += int(np.linalg.norm(res.output - Y) > res.bound.value)
    assert _binomial_ok(fails, draws, delta), (fails, draws)
