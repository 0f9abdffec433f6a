"""Numba kernels of the :mod:`attention` package (private; no validation inside)."""
