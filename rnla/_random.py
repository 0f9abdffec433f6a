"""Counter-based random test matrices: any block of rows is drawn on its own.

A random matrix ``G`` with ``N`` rows is defined by one integer ``key`` (drawn once from
the caller's ``rng``) and cut into canonical row blocks of :data:`BLOCK_ROWS` rows. Block
``b`` (rows ``b * BLOCK_ROWS`` to ``(b + 1) * BLOCK_ROWS``) is drawn row-major from its own
generator ``default_rng(SeedSequence(key, spawn_key=(b,)))``, so rows ``start:stop`` can be
produced anywhere (a dask worker holding one chunk of the data) without drawing, storing
or shipping the rest. The canonical blocks do not depend on how the data are chunked,
hence the same ``rng`` gives the same ``G`` in memory and on any dask chunking.

The row-major draw has the prefix property: the first ``r`` rows of a ``(R, w)`` draw
equal an ``(r, w)`` draw from the same generator, so a block is only drawn up to the
last row needed. Generator set-up costs about 15 microseconds per block.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK_ROWS",
    "bit_rows",
    "draw_key",
    "integer_rows",
    "normal_rows",
    "rademacher_rows",
    "uniform_rows",
]

#: Rows per canonical block. Small enough that a chunk boundary wastes little (at most
#: one partial block is drawn and discarded per chunk), large enough that the
#: per-block generator set-up is negligible next to the draws.
BLOCK_ROWS = 2048


def draw_key(rng: np.random.Generator) -> int:
    """One 63-bit key from ``rng`` (consumes one draw of ``rng``)."""
    return int(rng.integers(0, 2**63 - 1))


def _block_rng(key: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(key, spawn_key=(block,)))


def _rows(key: int, start: int, stop: int, width: int, draw, dtype) -> np.ndarray:
    out = np.empty((max(stop - start, 0), width), dtype=dtype)
    if stop <= start or width == 0:
        return out
    first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
    for b in range(first, last + 1):
        lo = max(start, b * BLOCK_ROWS) - b * BLOCK_ROWS
        hi = min(stop, (b + 1) * BLOCK_ROWS) - b * BLOCK_ROWS
        block = draw(_block_rng(key, b), hi, width)
        dst = b * BLOCK_ROWS + lo - start
        out[dst : dst + hi - lo] = block[lo:hi]
    return out


def normal_rows(key: int, start: int, stop: int, width: int, dtype=np.float64) -> np.ndarray:
    """Rows ``start:stop`` of the standard normal matrix ``G(key)`` with ``width`` columns.

    Drawn in float64 and cast, so float32 and float64 runs share the same matrix. Whole
    blocks are drawn straight into the output (no copy).
    """
    out = np.empty((max(stop - start, 0), width))
    if stop > start and width > 0:
        for b in range(start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS + 1):
            lo = max(start, b * BLOCK_ROWS) - b * BLOCK_ROWS
            hi = min(stop, (b + 1) * BLOCK_ROWS) - b * BLOCK_ROWS
            dst = b * BLOCK_ROWS + lo - start
            g = _block_rng(key, b)
            if lo == 0:
                g.standard_normal(out=out[dst : dst + hi])
            else:
                out[dst : dst + hi - lo] = g.standard_normal((hi, width))[lo:]
    return out if np.dtype(dtype) == out.dtype else out.astype(dtype)


def rademacher_rows(key: int, start: int, stop: int, width: int, dtype=np.float64) -> np.ndarray:
    """Rows ``start:stop`` of the ``+-1`` matrix ``G(key)``."""
    return _rows(
        key,
        start,
        stop,
        width,
        lambda g, r, w: 2 * g.integers(0, 2, size=(r, w), dtype=np.int8) - 1,
        np.dtype(dtype),
    )


def uniform_rows(key: int, start: int, stop: int, width: int) -> np.ndarray:
    """Rows ``start:stop`` of the uniform ``[0, 1)`` matrix ``G(key)`` (float64)."""
    return _rows(key, start, stop, width, lambda g, r, w: g.random((r, w)), np.dtype(np.float64))


def integer_rows(key: int, start: int, stop: int, width: int, high: int) -> np.ndarray:
    """Rows ``start:stop`` of a matrix of uniform integers in ``[0, high)`` (int64)."""
    return _rows(
        key,
        start,
        stop,
        width,
        lambda g, r, w: g.integers(0, high, size=(r, w), dtype=np.int64),
        np.dtype(np.int64),
    )


def bit_rows(key: int, start: int, stop: int, width: int) -> np.ndarray:
    """Rows ``start:stop`` of a matrix of fair random bits (uint8 0/1)."""
    return _rows(
        key,
        start,
        stop,
        width,
        lambda g, r, w: g.integers(0, 2, size=(r, w), dtype=np.uint8),
        np.dtype(np.uint8),
    )
