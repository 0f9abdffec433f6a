"""Numba kernels behind :func:`rnla.psd.rpcholesky`.

Both kernels are serial, use no ``fastmath`` (they decide pivots: a reassociated sum
can flip an accept/reject decision) and take only arrays and scalars. Randomness is
drawn by the caller and passed in (``u``), so results do not depend on threads.

``_block_pivoted_cholesky`` runs a partial Cholesky factorisation of a small ``b x b``
residual block in proposal order and decides, pivot by pivot, whether to accept it:

* accelerated RPCholesky (rejection sampling): proposal ``j`` was drawn with
  probability proportional to ``dprop[j]`` (the residual diagonal at the start of the
  block) and is accepted when ``u[j] * dprop[j] < h``, where ``h`` is its *current*
  residual diagonal (after the Schur complements of the pivots accepted before it);
* blocked, greedy and uniform pivoting: ``u = 0``, so every proposal whose residual
  exceeds the floor is accepted; proposals are visited in order of decreasing
  residual (complete pivoting inside the block), which keeps the block factor well
  conditioned.

A proposal is always rejected when ``h <= floor[j]`` (rounding noise: the column is
already in the span of the accepted ones) and when it repeats an accepted index.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _block_pivoted_cholesky(H, u, dprop, floor, negtol, ids, max_accept, pivoting, accepted, L):
    """Partial Cholesky of ``H`` (overwritten) with accept/reject per proposal.

    Parameters
    ----------
    H : float64 (b, b)
        Symmetric residual block, overwritten by its Schur complements.
    u, dprop, floor, negtol : float64 (b,)
        Uniforms, proposal weights, acceptance floors and negativity tolerances.
    ids : int64 (b,)
        Matrix index of each proposal (repeats of accepted indices are rejected).
    max_accept : int
        Stop after this many acceptances.
    pivoting : bool
        Visit the proposals in order of decreasing current residual (complete
        pivoting, as LAPACK ``pstrf``) instead of proposal order. Only for the
        deterministic rule ``u = 0``: rejection sampling must use proposal order.
    accepted : int64 (b,)
        Output: positions (into the block) of the accepted proposals, in order.
    L : float64 (b, b)
        Output: the leading ``count x count`` block holds the lower Cholesky factor
        of ``H[accepted][:, accepted]`` (original ``H``).

    Returns
    -------
    int
        Number of accepted proposals ``count >= 0``, or ``-(j + 1)`` if the residual
        diagonal of proposal ``j`` is below ``-negtol[j]`` (the matrix is not PSD).
    """
    b = H.shape[0]
    done = np.zeros(b, dtype=np.bool_)
    W = np.zeros((b, b))  # W[:, c]: Cholesky column of the c-th accepted pivot
    count = 0
    for step in range(b):
        if count >= max_accept:
            break
        j = step
        if pivoting:
            best = -np.inf
            for q in range(b):
                if not done[q] and H[q, q] > best:
                    best = H[q, q]
                    j = q
        done[j] = True
        h = H[j, j]
        if h < -negtol[j]:
            return -(j + 1)
        repeat = False
        for a in range(count):
            if ids[accepted[a]] == ids[j]:
                repeat = True
                break
        if repeat or h <= floor[j] or not (u[j] * dprop[j] < h):
            continue
        root = np.sqrt(h)
        for r in range(b):
            W[r, count] = 0.0 if done[r] else H[r, j] / root
        W[j, count] = root
        # Schur complement of the accepted pivot on the proposals not yet visited.
        for c in range(b):
            wc = W[c, count]
            if wc != 0.0 and not done[c]:
                for r in range(b):
                    if not done[r]:
                        H[r, c] -= W[r, count] * wc
        accepted[count] = j
        count += 1
    for a in range(count):
        for c in range(count):
            L[a, c] = W[accepted[a], c] if c <= a else 0.0
    return count


@njit(cache=True, nogil=True)
def _downdate_diagonal(d, Fb, d0, floor_factor, neg_factor, neg_abs):
    """Subtract the squared column norms of ``Fb`` from the residual diagonal ``d``.

    ``d[i] -= sum_r Fb[r, i]**2`` accumulated in float64. Entries at or below the
    rounding floor ``floor_factor * d0[i]`` are set to exactly 0 (converged). Returns
    the first index whose new value is below ``-(neg_factor * d0[i] + neg_abs)`` (the
    matrix is not PSD), or -1.
    """
    n_rows, n = Fb.shape
    for r in range(n_rows):
        for i in range(n):
            f = np.float64(Fb[r, i])
            d[i] -= f * f
    bad = -1
    for i in range(n):
        v = d[i]
        if v <= floor_factor * d0[i]:
            if bad < 0 and v < -(neg_factor * d0[i] + neg_abs):
                bad = i
            d[i] = 0.0
    return bad
