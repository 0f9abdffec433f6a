"""The sampled-tail study of the certified prefill (benchmarks/attention_adaptive_tail.py).

Its conclusions rest on three formulas: the variance of the shared importance-sampling
estimate of a task's tail, the range of its terms, and Quest's box bound. Each is checked
against a plain Monte Carlo simulation or the exact scores on a small synthetic head.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import attention_adaptive_tail as tail  # noqa: E402


def _head(seed, n=448, d=16, dv=8):
    g = np.random.default_rng(seed)
    q = g.standard_normal((n, d))
    k = g.standard_normal((n, d))
    k[:4] += 2.0 * q.mean(0)  # a sink-like heavy start
    k *= np.repeat(g.uniform(0.3, 2.0, n // 64), 64)[:, None]  # blocks of unequal weight
    v = g.standard_normal((n, dv))
    return q, k, v, 1.0 / np.sqrt(d)


def _rows():
    return np.arange(400, 448)


def _mc(task, v, b, p, s=16, reps=4000):
    """Monte Carlo ``s * sum_i E||x^_i - x_i||^2`` of the shared estimate, proposal ``p``."""
    keys = task.keys[b:].reshape(-1)
    wn = task.wn[:, b:].reshape(task.wn.shape[0], -1)
    target = (wn[:, :, None] * (v[keys][None] - task.y[:, None, :])).sum(1)
    draws = np.random.default_rng(1).choice(keys.size, size=(reps, s), p=p)
    contrib = wn[:, draws] / p[draws]  # (rows, reps, s)
    est = np.einsum("rks,rksd->rkd", contrib, v[keys][draws][None] - task.y[:, None, None, :])
    est /= s
    return s * float(((est - target[:, None, :]) ** 2).sum(2).mean(1).sum())


@pytest.mark.parametrize("proposal", ["ideal", "box"])
def test_variance_matches_monte_carlo(proposal):
    """Mean squared error of the shared estimate times s equals sum_i V_i (exact formula)."""
    q, k, v, scale = _head(0)
    task = tail.task_setup(q, k, v, scale, _rows(), proposal)
    var, _ = tail.task_terms(task)
    assert task.keys.shape[0] >= 3
    b = 1  # keep the first ranked block, sample the rest
    p = task.weight[b:].reshape(-1) / task.weight[b:].sum()
    # 4000 draws of heavy-tailed terms: a 10 % tolerance (several standard errors).
    assert _mc(task, v, b, p) == pytest.approx(float(var[:, b].sum()), rel=0.1)


def test_variance_control_wrong_proposal_fails():
    """Negative control: the formula for another proposal (uniform) misses the simulation."""
    q, k, v, scale = _head(0)
    task = tail.task_setup(q, k, v, scale, _rows(), "ideal")
    b = 1
    p = task.weight[b:].reshape(-1) / task.weight[b:].sum()
    uniform = task._replace(weight=np.ones_like(task.weight))
    var_u, _ = tail.task_terms(uniform)
    mc = _mc(task, v, b, p)
    assert abs(mc - var_u[:, b].sum()) > 0.2 * mc


def test_range_bounds_every_term():
    """B_i >= a_ij / p_j for every tail key (the empirical-Bernstein range)."""
    q, k, v, scale = _head(3)
    for proposal in ("ideal", "box"):
        task = tail.task_setup(q, k, v, scale, _rows(), proposal)
        _, rng = tail.task_terms(task)
        for b in range(task.keys.shape[0]):
            p = task.weight[b:] / task.weight[b:].sum()
            ratio = (task.a[:, b:] / p[None]).reshape(len(_rows()), -1).max(1)
            np.testing.assert_array_less(ratio, rng[:, b] * (1 + 1e-12) + 1e-300)


def test_box_bound_covers_block_maxima():
    """Quest's box bound is >= every score of its block and equals it for one key."""
    q, k, _, scale = _head(4)
    blocks = np.arange(k.shape[0] // tail.BK)
    lo, hi = tail.box_bounds(k, blocks)
    qs = q * scale
    ub = np.maximum(qs[:, None, :] * lo[None], qs[:, None, :] * hi[None]).sum(2)
    s = (qs @ k.T).reshape(q.shape[0], blocks.size, tail.BK).max(2)
    assert np.all(ub >= s - 1e-12)
    one = np.repeat(k[:1], tail.BK, axis=0)
    lo1, hi1 = tail.box_bounds(one, np.arange(1))
    ub1 = np.maximum(qs * lo1, qs * hi1).sum(1)
    np.testing.assert_allclose(ub1, qs @ k[0], rtol=1e-12, atol=1e-12)


def test_first_task_has_no_tail():
    """The first rows see only never-dropped blocks: no candidate, only the exact option."""
    q, k, v, scale = _head(5)
    task = tail.task_setup(q, k, v, scale, np.arange(48), "box")
    var, rng = tail.task_terms(task)
    assert task.keys.shape[0] == 0 and var.shape == rng.shape == (48, 0)
    cost, err2 = tail.task_options(task.visible, 48, 0, var, rng, "eb", 10.0)
    assert cost.tolist() == [48 * 49 / 2] and err2.tolist() == [0.0]


def test_allocate_picks_the_cheapest_feasible_mix():
    """Two tasks, budget 1: the Lagrangian choice matches the brute-force optimum."""
    opts = [
        (np.array([10.0, 4.0, 2.0]), np.array([0.0, 0.5, 2.0])),
        (np.array([10.0, 5.0, 1.0]), np.array([0.0, 0.4, 3.0])),
    ]
    got = tail.allocate(opts, 1.0)
    best = min(
        c1 + c2
        for c1, e1 in zip(*opts[0], strict=True)
        for c2, e2 in zip(*opts[1], strict=True)
        if e1 + e2 <= 1.0
    )
    assert got == best == 9.0
    assert tail.allocate(opts, 0.0) == 20.0  # no budget: every task exact
