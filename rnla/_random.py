"""Counter-based random test matrices: any block of rows is drawn on its own.

A random matrix ``G`` with ``N`` rows and ``w`` columns is defined by one integer ``key``
(drawn once from the caller's ``rng``) and cut into canonical row blocks of
``R = block_rows(w)`` rows (about :data:`BLOCK_ENTRIES` entries, a power of two between
:data:`MIN_BLOCK_ROWS` and :data:`MAX_BLOCK_ROWS`). Block ``b`` (rows ``b R`` to
``(b + 1) R``) is drawn row-major from its own generator
``default_rng(SeedSequence(key, spawn_key=(b,)))``, so rows ``start:stop`` can be
produced anywhere (a dask worker holding one chunk of the data) without drawing, storing
or shipping the rest. The canonical blocks do not depend on how the data are chunked,
hence the same ``rng`` gives the same ``G`` in memory and on any dask chunking.

The row-major draw has the prefix property: the first ``r`` rows of a ``(R, w)`` draw
equal an ``(r, w)`` draw from the same generator, so a block is only drawn up to the
last row needed. Generator set-up costs about 15 microseconds per block, negligible next
to the ~2^20 draws of a block.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK_ENTRIES",
    "block_rows",
    "draw_key",
    "normal_rows",
    "rademacher_rows",
]

#: Entries per canonical block: small enough that a chunk boundary wastes little (at
#: most one partial block, 8 MiB of float64, is drawn and discarded per chunk), large
#: enough that the per-block generator set-up is negligible next to the draws.
BLOCK_ENTRIES = 1 << 20
MIN_BLOCK_ROWS = 64
MAX_BLOCK_ROWS = 1 << 16


def block_rows(width: int) -> int:
    """Rows of a canonical block for a matrix with ``width`` columns (a power of two)."""
    rows = BLOCK_ENTRIES // max(int(width), 1)
    rows = 1 << max(rows.bit_length() - 1, 0)
    return min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, rows))


def draw_key(rng: np.random.Generator) -> int:
    """One 63-bit key from ``rng`` (consumes one draw of ``rng``)."""
    return int(rng.integers(0, 2**63 - 1))


def _block_rng(key: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(key, spawn_key=(block,)))


def _rows(key: int, start: int, stop: int, width: int, draw, dtype) -> np.ndarray:
    out = np.empty((max(stop - start, 0), width), dtype=dtype)
    if stop <= start or width == 0:
        return out
    R = block_rows(width)
    first, last = start // R, (stop - 1) // R
    for b in range(first, last + 1):
        lo = max(start, b * R) - b * R
        hi = min(stop, (b + 1) * R) - b * R
        block = draw(_block_rng(key, b), hi, width)
        dst = b * R + lo - start
        out[dst : dst + hi - lo] = block[lo:hi]
    return out


def normal_rows(key: int, start: int, stop: int, width: int, dtype=np.float64) -> np.ndarray:
    """Rows ``start:stop`` of the standard normal matrix ``G(key)`` with ``width`` columns.

    Drawn in float64 and cast, so float32 and float64 runs share the same matrix. Whole
    blocks are drawn straight into the output (no copy).
    """
    out = np.empty((max(stop - start, 0), width))
    if stop > start and width > 0:
        R = block_rows(width)
        for b in range(start // R, (stop - 1) // R + 1):
            lo = max(start, b * R) - b * R
            hi = min(stop, (b + 1) * R) - b * R
            dst = b * R + lo - start
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
