r"""Scale-out on Dask: out-of-core rSVD / single-pass SVD, and rnla against svd_compressed.

Three sub-commands (each a separate process, so that peak memory is measured per run):

``generate --rows M --cols N --path P``
    Writes a float64 matrix :math:`A = U\,\mathrm{diag}(\sigma)\,V^\top` to a zarr store
    (row chunks of 20000 rows, no compression), generated block by block so that it
    never exists in memory. The spectrum is known exactly: "signal" :math:`\sigma_j =
    10/j` for :math:`j \le 50`, then a flat "noise" floor falling linearly from 0.1 to
    0.05. :math:`U` has exactly orthonormal columns and costs :math:`O(mn)` to
    generate: its row block ``b`` (of ``B`` blocks) is :math:`P_b D_b H_b[:, :n] /
    \sqrt B` with :math:`H_b` a Householder reflector of a random vector, :math:`D_b`
    random signs and :math:`P_b` a random row permutation; :math:`V` is a Haar
    orthogonal ``n x n``. For Gaussian test matrices the error of the algorithms depends
    on the singular values only, so this structure of ``U`` does not help them.

``outofcore --path P --method rsvd|single_pass``
    Rank-50 ``rnla.rsvd(method="subspace")`` or ``rnla.single_pass_svd`` on the zarr
    array through a ``distributed.LocalCluster`` (2 worker processes, 1 thread each,
    ``--memory-limit`` per worker). Reports wall time, the peak resident memory of the
    whole process tree (client, scheduler, workers; sampled every 50 ms with psutil),
    the passes over the data counted by rnla and measured independently (bytes read by
    the process tree through ``read()`` divided by the size of the store), and the
    error against the known spectrum: :math:`\max_j |\hat\sigma_j - \sigma_j| /
    \sigma_j` and :math:`\|A (I - \hat V\hat V^\top)\|_2 / \sigma_{51}` (exact, from
    :math:`\sigma` and :math:`V`, no pass over the data).

``compare``
    A 200000 x 2000 float64 dask array in memory (row chunks of 10000), slowly decaying
    spectrum :math:`\sigma_j = j^{-1/2}`, rank 50, oversampling 10:
    ``dask.array.linalg.svd_compressed(a, 50, n_power_iter=q)`` (``2q + 2`` passes)
    against ``rnla.rsvd`` (subspace, fused passes: ``n_iter + 1`` passes; krylov:
    ``n_iter + 2``), all on dask's threaded scheduler (2 threads, BLAS pinned to one
    thread), interleaved repeats, median time and median of the per-round time ratios.
    Spectral error :math:`\|A - U\Sigma V^\top\|_2 / \sigma_{51}` computed exactly
    (``U`` lies in the range of ``A``), median over ``--seeds`` seeds. Then
    ``rnla.randqb(tol=...)`` on the same array.

Run ``generate`` and ``outofcore`` under ``flock /tmp/bench.lock``; ``compare --lock
/tmp/bench.lock`` takes the lock for its timed rounds only. ``python -m
benchmarks.dask_outofcore --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_ROWS = 20_000
RANK = 50


# ---------------------------------------------------------------------------------------
# data with a known spectrum
# ---------------------------------------------------------------------------------------


def spectrum(n: int) -> np.ndarray:
    j = np.arange(1, n + 1, dtype=np.float64)
    s = np.empty(n)
    s[:RANK] = 10.0 / j[:RANK]
    t = (j[RANK:] - RANK - 1) / max(n - RANK - 1, 1)
    s[RANK:] = 0.1 * (1.0 - 0.5 * t)
    return s


def u_block(seed: int, b: int, rows: int, n: int, n_blocks: int) -> np.ndarray:
    """Row block ``b`` of the orthonormal ``U`` (rows x n), see the module docstring."""
    g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b,)))
    w = g.standard_normal(rows)
    w /= np.linalg.norm(w)
    Q = -2.0 * np.outer(w, w[:n])
    Q[np.arange(n), np.arange(n)] += 1.0
    Q *= g.choice([-1.0, 1.0], size=rows)[:, None]
    return Q[g.permutation(rows)] / np.sqrt(n_blocks)


def a_block(seed: int, b: int, rows: int, SVt: np.ndarray, n_blocks: int) -> np.ndarray:
    """Row block ``b`` of ``A = U diag(s) V^T`` in O(rows n): ``u_block(...) @ SVt``, no GEMM.

    ``H[:, :n] SVt = E SVt - 2 w (w[:n]^T SVt)`` with ``E`` the first ``n`` rows of the
    identity; the same draws in the same order as :func:`u_block`.
    """
    n = SVt.shape[0]
    g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b,)))
    w = g.standard_normal(rows)
    w /= np.linalg.norm(w)
    out = np.multiply.outer(-2.0 * w, w[:n] @ SVt)
    out[:n] += SVt
    out *= g.choice([-1.0, 1.0], size=rows)[:, None]
    out = out[g.permutation(rows)]
    out /= np.sqrt(n_blocks)
    return out


def known_factors(n: int, seed: int):
    g = np.random.default_rng(seed + 1)
    V, R = np.linalg.qr(g.standard_normal((n, n)))
    V *= np.sign(np.diag(R))
    return spectrum(n), V


def generate(path: str, m: int, n: int, seed: int = 0) -> None:
    import zarr

    if m % CHUNK_ROWS:
        raise SystemExit(f"--rows must be a multiple of {CHUNK_ROWS}")
    s, V = known_factors(n, seed)
    SVt = s[:, None] * V.T
    n_blocks = m // CHUNK_ROWS
    z = zarr.create_array(
        store=path,
        shape=(m, n),
        chunks=(CHUNK_ROWS, n),
        dtype="f8",
        compressors=None,
        overwrite=True,
    )
    t0 = time.perf_counter()
    for b in range(n_blocks):
        z[b * CHUNK_ROWS : (b + 1) * CHUNK_ROWS] = a_block(seed, b, CHUNK_ROWS, SVt, n_blocks)
    np.savez(Path(path).with_suffix(".npz"), s=s, V=V, seed=seed)
    print(
        f"wrote {m}x{n} float64 ({m * n * 8 / 2**30:.1f} GiB) in {time.perf_counter() - t0:.0f} s"
    )


# ---------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------


class TreeMonitor:
    """Peak RSS and bytes read (``rchar``) of this process and all its descendants."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.root = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = 0
        self.read0 = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except Exception:
            return [self.root]

    def _read(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.io_counters().read_chars
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            rss = 0
            for p in self._procs():
                try:
                    rss += p.memory_info().rss
                except Exception:
                    pass
            self.peak = max(self.peak, rss)
            # read_chars of exited processes is lost: sample it continuously
            self.last_read = self._read()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.last_read = self._read()
        self._stop.set()
        self._thread.join()

    @property
    def bytes_read(self) -> int:
        """Bytes read by the process tree since the monitor started."""
        return self.last_read - self.read0


def projection_error(s, V, Vt_hat) -> float:
    """Return ``||A (I - V^ V^T)||_2`` for ``A = U diag(s) V^T`` with orthonormal ``U``."""
    Vh = np.asarray(Vt_hat, dtype=np.float64).T
    M = (s[:, None] * V.T) - ((s[:, None] * V.T) @ Vh) @ Vh.T
    return float(np.linalg.norm(M, 2))


# ---------------------------------------------------------------------------------------
# out-of-core run
# ---------------------------------------------------------------------------------------


def outofcore(path: str, method: str, memory_limit: str, n_iter: int, rows_used=None) -> dict:
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    import rnla

    z = zarr.open_array(path, mode="r")
    meta = Path(path).with_suffix(".npz")
    if meta.exists():
        s, V = np.load(meta)["s"], np.load(meta)["V"]
    else:
        s, V = known_factors(z.shape[1], 0)
    m = z.shape[0] if rows_used is None else int(rows_used)
    if m % CHUNK_ROWS or m > z.shape[0]:
        raise SystemExit(f"--rows-used must be a multiple of {CHUNK_ROWS} <= {z.shape[0]}")
    # The first m rows: U's row blocks are orthonormal up to 1/sqrt(#blocks of the whole
    # store), so the top m rows have singular values s * sqrt(m / M), same V.
    s = s * np.sqrt(m / z.shape[0])
    size = m * z.shape[1] * z.dtype.itemsize
    out = {"method": method, "shape": [m, z.shape[1]], "data_GiB": size / 2**30}
    with TreeMonitor() as mon:
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
        )
        client = Client(cluster)
        A = da.from_zarr(z)[:m]
        read0 = mon._read()
        t0 = time.perf_counter()
        if method == "rsvd":
            res = rnla.rsvd(A, RANK, method="subspace", n_iter=n_iter, rng=0)
        else:
            res = rnla.single_pass_svd(A, RANK, rng=0)
        t_fact = time.perf_counter() - t0
        read_fact = mon._read() - read0
        G = (res.U.T @ res.U).compute()  # reads the persisted sketch, not A
        t_total = time.perf_counter() - t0
        read_total = mon._read() - read0
        client.close()
        cluster.close()
    out.update(
        n_iter=n_iter if method == "rsvd" else None,
        memory_limit_per_worker=memory_limit,
        seconds_factorisation=t_fact,
        seconds_with_U=t_total,
        peak_rss_GiB=mon.peak / 2**30,
        passes_counted=int(res.n_passes),
        passes_measured_factorisation=read_fact / size,
        passes_measured_with_U=read_total / size,
        sv_max_rel_error=float(np.max(np.abs(res.s - s[:RANK]) / s[:RANK])),
        projection_error_over_sigma51=projection_error(s, V, res.Vt) / s[RANK],
        U_orthonormality=float(np.abs(G - np.eye(RANK)).max()),
        load_average=os.getloadavg(),
    )
    return out


# ---------------------------------------------------------------------------------------
# in-memory comparison with dask.array.linalg.svd_compressed
# ---------------------------------------------------------------------------------------


def exact_spectral_error(A, s, V, U_hat, s_hat, Vt_hat) -> float:
    """Return ``||A - U^ S^ V^T||_2`` for ``A = U diag(s) V^T`` (U orthonormal, n columns).

    ``U^`` lies in the range of ``A`` (both algorithms build it from products with
    ``A``), so the residual does too and its norm is that of ``U^T(residual)``, an
    ``n x n`` matrix; ``U^T U^ = diag(1/s) V^T A^T U^`` costs one product.
    """
    C = (V.T @ (A.T @ U_hat)) / s[:, None]
    M = s[:, None] * V.T - (C * s_hat) @ Vt_hat
    return float(np.linalg.norm(M, 2))


@contextlib.contextmanager
def _timing_lock(path):
    """Hold an exclusive ``flock`` on ``path`` (if given) around the timed runs only."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compare(m: int, n: int, repeats: int, tol: float, n_seeds: int = 3, lock=None) -> dict:
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    import rnla

    rng_seed = 7
    s = np.arange(1, n + 1, dtype=np.float64) ** -0.5
    g = np.random.default_rng(rng_seed)
    V, _ = np.linalg.qr(g.standard_normal((n, n)))
    n_blocks = m // 10_000
    SVt = s[:, None] * V.T
    A = np.empty((m, n))
    for b in range(n_blocks):
        A[b * 10_000 : (b + 1) * 10_000] = a_block(rng_seed, b, 10_000, SVt, n_blocks)
    a = da.from_array(A, chunks=(10_000, n))
    sigma_next = s[RANK]

    def ours(method, n_iter, oversample=10, seed=0):
        res = rnla.rsvd(a, RANK, method=method, n_iter=n_iter, oversample=oversample, rng=seed)
        U = res.U.compute()
        return U, res.s, res.Vt, res.n_passes

    def theirs(q, seed=0):
        u, sv, v = da.linalg.svd_compressed(
            a, RANK, n_power_iter=q, n_oversamples=10, seed=seed, compute=False
        )
        u, sv, v = dask.compute(u, sv, v)
        return u, sv, v, 2 * q + 2

    configs = {
        "svd_compressed q=0": lambda seed=0: theirs(0, seed),
        "svd_compressed q=1": lambda seed=0: theirs(1, seed),
        "svd_compressed q=3": lambda seed=0: theirs(3, seed),
        "rnla subspace n_iter=1": lambda seed=0: ours("subspace", 1, seed=seed),
        "rnla subspace n_iter=3": lambda seed=0: ours("subspace", 3, seed=seed),
        "rnla krylov n_iter=1": lambda seed=0: ours("krylov", 1, seed=seed),
        "rnla krylov n_iter=2": lambda seed=0: ours("krylov", 2, seed=seed),
        "rnla krylov n_iter=2 oversample=0": lambda seed=0: ours("krylov", 2, 0, seed),
    }
    times = {k: [] for k in configs}
    errors, passes = {k: [] for k in configs}, {}
    with dask.config.set(scheduler="threads", num_workers=2), threadpool_limits(1, "blas"):
        for seed in range(n_seeds):  # warm-up + accuracy over seeds
            for name, fn in configs.items():
                U, sv, Vt, p = fn(seed)
                errors[name].append(exact_spectral_error(A, s, V, U, sv, Vt) / sigma_next)
                passes[name] = p
        with _timing_lock(lock):  # the accuracy runs above need no lock
            load_before = os.getloadavg()
            for _ in range(repeats):
                for name, fn in configs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            load_after = os.getloadavg()
        t0 = time.perf_counter()
        qb = rnla.randqb(a, tol=tol, block_size=25, rng=0)
        t_qb = time.perf_counter() - t0
    # exact relative Frobenius error of the QB result, to check the reported one
    Q = qb.Q.compute()
    exact_fro = float(
        np.sqrt(max(np.sum(s**2) - np.sum(np.asarray(qb.B, dtype=np.float64) ** 2), 0.0))
        / np.sqrt(np.sum(s**2))
    )
    return {
        "shape": [m, n],
        "rank": RANK,
        "spectrum": "j^-1/2",
        "median_seconds": {k: float(np.median(v)) for k, v in times.items()},
        "median_time_ratio_to_svd_compressed": {
            ref: {
                k: float(np.median(np.asarray(v) / np.asarray(times[ref])))
                for k, v in times.items()
            }
            for ref in ("svd_compressed q=0", "svd_compressed q=1")
        },
        "spectral_error_over_sigma51": {k: float(np.median(v)) for k, v in errors.items()},
        "spectral_error_over_sigma51_per_seed": errors,
        "n_seeds": n_seeds,
        "passes": passes,
        "randqb": {
            "tol": tol,
            "rank": int(Q.shape[1]),
            "reported_error": float(qb.error),
            "error_from_spectrum": exact_fro,
            "seconds": t_qb,
            "passes": int(qb.n_passes),
        },
        "load_average": os.getloadavg(),
        "load_average_timed_runs": [load_before, load_after],
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--path", required=True)
    g.add_argument("--rows", type=int, default=2_000_000)
    g.add_argument("--cols", type=int, default=2000)
    o = sub.add_parser("outofcore")
    o.add_argument("--path", required=True)
    o.add_argument("--method", choices=["rsvd", "single_pass"], required=True)
    o.add_argument("--memory-limit", default="3GiB")
    o.add_argument("--n-iter", type=int, default=1)
    o.add_argument("--rows-used", type=int, default=None)
    c = sub.add_parser("compare")
    c.add_argument("--rows", type=int, default=200_000)
    c.add_argument("--cols", type=int, default=2000)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--tol", type=float, default=0.5)
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument(
        "--lock",
        default=None,
        help="flock this file around the timed runs only (do not also run under flock)",
    )
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.cmd == "generate":
        generate(args.path, args.rows, args.cols)
        return
    if args.cmd == "outofcore":
        res = outofcore(args.path, args.method, args.memory_limit, args.n_iter, args.rows_used)
        name = f"dask_outofcore_{args.method}.json"
        if args.method == "rsvd" and args.n_iter != 1:
            name = f"dask_outofcore_rsvd_n_iter{args.n_iter}.json"
    else:
        res = compare(args.rows, args.cols, args.repeats, args.tol, args.seeds, args.lock)
        name = "dask_compare.json"
    (RESULTS / name).write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
