"""Shared fixtures: ``seed`` (sweepable), ``rng``, ``dtype`` and the ``slow`` marker.

``RNLA_TEST_SEED`` selects the seeds: unset gives the single default seed 42, an integer
gives that seed, ``"all"`` sweeps 0..99 and ``"a-b"`` sweeps a range. Every test that
uses these fixtures must pass for any seed in 0..99.
"""

import os

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator

_DEFAULT_SEED = 42


def _seeds():
    spec = os.environ.get("RNLA_TEST_SEED", "").strip()
    if not spec:
        return [_DEFAULT_SEED]
    if spec == "all":
        return list(range(100))
    if "-" in spec:
        lo, hi = (int(s) for s in spec.split("-"))
        return list(range(lo, hi + 1))
    return [int(spec)]


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}")


@pytest.fixture
def rng(seed):
    """A fresh Generator seeded from the ``seed`` fixture."""
    return np.random.default_rng(seed)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """Both floating dtypes of the dtype contract."""
    return np.dtype(request.param)


def tol(dtype, factor=100.0):
    """A relative tolerance scaled from machine epsilon."""
    return factor * np.finfo(dtype).eps


class CountingOperator(LinearOperator):
    """A matrix behind products only; counts the vectors it is applied to (A and A^T)."""

    def __init__(self, A):
        super().__init__(dtype=A.dtype, shape=A.shape)
        self.A = A
        self.count = 0

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.A @ X

    def _rmatmat(self, Y):
        self.count += Y.shape[1]
        return self.A.T @ Y

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, y):
        return self._rmatmat(y.reshape(-1, 1)).reshape(-1)
