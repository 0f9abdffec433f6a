"""Run independent per-slice work of an attention method on all cores.

The approximation methods spend their time in many medium-sized GEMMs (chunks, blocks,
buckets). A multithreaded BLAS gains little on such products and, on a loaded machine,
its threads hand work back and forth so slowly that a 64 x 64 product can take
milliseconds. :func:`map_slices` therefore runs the independent units of work (query
slices, key/value groups) on ``numba.get_num_threads()`` Python threads - NumPy and
BLAS release the GIL - with BLAS kept on one thread during the call, as the exact
kernel does. Each unit is computed by one thread in a fixed operation order, so results
do not depend on the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numba


def map_slices(fn: Callable, items: Iterable) -> list:
    """Return ``[fn(item) for item in items]``, computed on all cores.

    Parameters
    ----------
    fn : callable
        Work on one item; must not depend on the other items (no shared mutable state
        except disjoint output slices).
    items : iterable
        Units of work, e.g. slice indices.

    Returns
    -------
    list
        Results in the order of ``items``.
    """
    from attention.exact import _single_threaded_blas

    items = list(items)
    threads = min(numba.get_num_threads(), len(items))
    with _single_threaded_blas():
        if threads <= 1:
            return [fn(it) for it in items]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(fn, items))
