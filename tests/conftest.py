"""Shared fixtures: ``seed`` (sweepable), ``rng``, ``dtype`` and the ``slow`` marker.

``RNLA_TEST_SEED`` selects the seeds: unset gives the single default seed 42, an integer
gives that seed, ``"all"`` sweeps 0..99 and ``"a-b"`` sweeps a range. Every test that
uses these fixtures must pass for any seed in 0..99.
"""

import os

import numpy as np
import pytest

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
