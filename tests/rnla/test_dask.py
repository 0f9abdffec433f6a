"""Dask input: the product-based algorithms on a LocalCluster, against the in-memory path.

The cluster (2 in-process workers with one thread each) is started and closed here. Every
test compares a dask array, chunked along rows, columns or both, with the same data in
memory and the same ``rng``: results must agree to rounding.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnla
from rnla import sketch as sk
from rnla import trace

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

CHUNKINGS = {"rows": (90, -1), "cols": (-1, 25), "both": (130, 30)}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        # In-process workers measure the memory of the whole test process (gigabytes after
        # the rest of the suite has run): any limit would pause them and deadlock the tests.
        # The out-of-core benchmark exercises real per-worker limits with processes.
        memory_limit=0,
        dashboard_address=None,
    )
    cl = distributed.Client(cluster)
    try:
        yield cl
    finally:
        cl.close()
        cluster.close()


def _spectrum_matrix(m, n, decay=0.7, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((m, min(m, n))))[0]
    V = np.linalg.qr(rng.standard_normal((n, min(m, n))))[0]
    s = decay ** np.arange(min(m, n)) + 1e-3
    return ((U * s) @ V.T).astype(dtype)


@pytest.fixture(scope="module")
def tall():
    return _spectrum_matrix(400, 90)


@pytest.fixture(scope="module")
def psd():
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((260, 260)))[0]
    w = 0.8 ** np.arange(260)
    return (Q * w) @ Q.T


def _dask(A, chunking):
    return da.from_array(A, chunks=CHUNKINGS[chunking])


def _close(a, b, rtol=1e-8):
    a = np.asarray(a)
    b = np.asarray(b)
    scale = max(float(np.max(np.abs(b))), 1e-300)
    assert float(np.max(np.abs(a - b))) <= rtol * scale


def _np(x):
    return x.compute() if isinstance(x, da.Array) else x


def _check_svd(res_d, res_m, rtol=1e-7):
    """Factors agree; the long one (as long as A's long side) is a dask array."""
    m, n = res_m.U.shape[0], res_m.Vt.shape[1]
    long_factor = res_d.U if m >= n else res_d.Vt
    assert isinstance(long_factor, da.Array)
    assert isinstance(res_d.s, np.ndarray)
    _close(res_d.s, res_m.s, rtol)
    _close(_np(res_d.U), res_m.U, rtol * 10)
    _close(_np(res_d.Vt), res_m.Vt, rtol * 10)


# ---------------------------------------------------------------------------------------
# low-rank factorisations
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("wide", [False, True])
def test_rsvd_agrees_with_memory(client, tall, chunking, method, wide):
    A = tall.T.copy() if wide else tall
    Ad = _dask(A, chunking)
    res_m = rnla.rsvd(A, 8, method=method, n_iter=2, rng=5)
    res_d = rnla.rsvd(Ad, 8, method=method, n_iter=2, rng=5)
    _check_svd(res_d, res_m)
    # Fused passes: every pass reads A once for A X and A^T (A X).
    expected = 3 if method == "subspace" else 4
    assert res_d.n_passes == expected
    assert res_m.n_passes == 6
    assert isinstance(Ad, da.Array)  # input untouched


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_rsvd_float32(client, tall, chunking):
    A = tall.astype(np.float32)
    res_d = rnla.rsvd(_dask(A, chunking), 5, rng=1)
    res_m = rnla.rsvd(A, 5, rng=1)
    assert res_d.U.dtype == np.float32 and res_d.s.dtype == np.float32
    assert res_d.Vt.dtype == np.float32
    _close(res_d.s, res_m.s, 1e-4)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_range_finder_agrees(client, tall, chunking):
    Q_m = rnla.range_finder(tall, 10, n_iter=1, rng=2)
    Q_d = rnla.range_finder(_dask(tall, chunking), 10, n_iter=1, rng=2)
    assert isinstance(Q_d, da.Array)
    Q_d = Q_d.compute()
    _close(Q_d.T @ Q_d, np.eye(10), 1e-12)
    _close(Q_d @ Q_d.T, Q_m @ Q_m.T, 1e-8)  # same subspace (bases may differ)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_single_pass_is_one_pass(client, tall, chunking):
    res_m = rnla.single_pass_svd(tall, 6, rng=4)
    res_d = rnla.single_pass_svd(_dask(tall, chunking), 6, rng=4)
    _check_svd(res_d, res_m, 1e-6)
    assert res_d.n_passes == 1
    assert res_m.n_passes == 1


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_randqb_tol(client, tall, chunking):
    res_m = rnla.randqb(tall, tol=0.05, block_size=5, rng=3)
    res_d = rnla.randqb(_dask(tall, chunking), tol=0.05, block_size=5, rng=3)
    assert res_d.error <= 0.05
    assert res_d.Q.shape == res_m.Q.shape
    assert isinstance(res_d.Q, da.Array)
    assert abs(res_d.error - res_m.error) <= 1e-8
    _close(res_d.B, res_m.B, 1e-7)
    n_blocks = res_m.Q.shape[1] // 5 + (res_m.Q.shape[1] % 5 > 0)
    assert res_d.n_passes == res_m.n_passes == 1 + 2 * n_blocks  # ||A||_F, then 2 per block


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_nystrom_psd(client, psd, chunking):
    res_m = rnla.nystrom(psd, 6, rng=0)
    res_d = rnla.nystrom(da.from_array(psd, chunks=CHUNKINGS[chunking]), 6, rng=0)
    _close(res_d.eigenvalues, res_m.eigenvalues, 1e-8)
    V = res_d.eigenvectors
    assert isinstance(V, da.Array)
    _close(np.abs(V.compute()), np.abs(res_m.eigenvectors), 1e-6)


# ---------------------------------------------------------------------------------------
# trace and norm estimation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("name", ["hutchinson", "hutchpp", "xtrace"])
def test_trace_estimators_agree(client, psd, chunking, name):
    fn = getattr(trace, name)
    budget = 12
    res_m = fn(psd, budget, rng=7)
    res_d = fn(da.from_array(psd, chunks=CHUNKINGS[chunking]), budget, rng=7)
    assert abs(res_d.value - res_m.value) <= 1e-9 * abs(res_m.value)
    # one block product = one pass (one graph over the chunks), as documented
    passes = {"hutchinson": 1, "hutchpp": 3, "xtrace": 2}[name]
    assert res_d.n_passes == res_m.n_passes == passes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trace_estimate_n_passes_keeps_tuple(dtype):
    import pickle

    A = np.diag(np.arange(1.0, 41.0)).astype(dtype)
    est = trace.hutchpp(A, 9, rng=0)
    value, stderr, n_matvecs = est  # unpacking unchanged: n_passes is an attribute
    assert n_matvecs == 9 and est.n_passes == 3 and len(est) == 3
    assert np.isfinite(value) and np.isfinite(stderr)
    assert pickle.loads(pickle.dumps(est)).n_passes == 3
    assert trace.logdet(A, method="exact").n_passes is None  # not product-based


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_norm_and_error_estimates_agree(client, tall, chunking):
    Ad = _dask(tall, chunking)
    est_m = rnla.estimate.norm_estimate(tall, rng=0)
    est_d = rnla.estimate.norm_estimate(Ad, rng=0)
    assert abs(est_d.value - est_m.value) <= 1e-9 * est_m.value
    res = rnla.rsvd(tall, 5, rng=0)
    err_m = rnla.estimate.lowrank_error_estimate(tall, res, rng=1)
    err_d = rnla.estimate.lowrank_error_estimate(Ad, res, rng=1)
    assert abs(err_d.value - err_m.value) <= 1e-8 * err_m.value


# ---------------------------------------------------------------------------------------
# sketches
# ---------------------------------------------------------------------------------------

BLOCKWISE = {
    "gaussian": lambda n: sk.gaussian(30, n, rng=9),
    "rademacher": lambda n: sk.rademacher(30, n, rng=9),
    "countsketch": lambda n: sk.countsketch(30, n, rng=9),
    "sparse_sign": lambda n: sk.sparse_sign(30, n, rng=9),
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("kind", list(BLOCKWISE))
def test_sketch_blockwise_matches_memory(client, tall, chunking, kind):
    S = BLOCKWISE[kind](tall.shape[0])
    SA = S @ _dask(tall, chunking)
    assert isinstance(SA, da.Array)
    _close(SA.compute(), S @ tall, 1e-12)


@pytest.mark.parametrize("kind", list(BLOCKWISE))
def test_sketch_dot_test_on_dask(client, tall, kind):
    S = BLOCKWISE[kind](tall.shape[0])
    rng = np.random.default_rng(0)
    X = da.from_array(rng.standard_normal((tall.shape[0], 3)), chunks=(70, 3))
    Y = rng.standard_normal((30, 3))
    lhs = np.sum((S @ X).compute() * Y)
    rhs = np.sum(X.compute() * (S.T @ Y))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


def test_sketch_block_equals_slice():
    """The recipe regenerates any column block of S without the rest."""
    for kind, make in BLOCKWISE.items():
        S = make(5000)
        for start, stop in [(0, 1), (100, 2100), (2047, 4097), (4999, 5000)]:
            block = sk._column_block(S._spec, start, stop)
            np.testing.assert_array_equal(block.todense(), S.todense()[:, start:stop], kind)


def test_srht_refuses_row_chunks(client, tall):
    S = sk.srht(32, tall.shape[0], rng=0)
    with pytest.raises(ValueError, match="row chunk"):
        S @ _dask(tall, "rows")
    # One row chunk: applied whole, per column chunk.
    _close((S @ _dask(tall, "cols")).compute(), S @ tall, 1e-12)


# ---------------------------------------------------------------------------------------
# validation and laziness
# ---------------------------------------------------------------------------------------


def test_nonfinite_dask_rejected(client, tall):
    A = tall.copy()
    A[17, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        rnla.rsvd(_dask(A, "rows"), 3, rng=0)


def test_bad_dask_input(client):
    with pytest.raises(ValueError, match="2-dimensional"):
        rnla.rsvd(da.ones(10, chunks=5), 2)
    with pytest.raises(TypeError, match="complex"):
        rnla.rsvd(da.ones((10, 4), chunks=5, dtype=complex), 2)


def test_no_dask_import_for_numpy_input():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import rnla
        A = np.random.default_rng(0).standard_normal((60, 30))
        rnla.rsvd(A, 3, rng=0)
        rnla.single_pass_svd(A, 3, rng=0)
        rnla.randqb(A, tol=0.5, rng=0)
        rnla.trace.hutchpp(A @ A.T, 9, rng=0)
        rnla.sketch.gaussian(5, 60, rng=0) @ A
        assert not any(m == "dask" or m.startswith("dask.") for m in sys.modules), sorted(
            m for m in sys.modules if m.startswith("dask")
        )
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# least squares
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_lstsq_agrees(client, chunking):
    rng = np.random.default_rng(11)
    A = rng.standard_normal((500, 20)) * np.logspace(0, 3, 20)
    b = rng.standard_normal(500)
    res_m = rnla.solve.lstsq(A, b, rng=2)
    res_d = rnla.solve.lstsq(da.from_array(A, chunks=CHUNKINGS[chunking]), b, rng=2)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    _close(res_d.x, res_m.x, 1e-9)
    _close(res_d.x, x_ref, 1e-9)
    # S A, then A and A^T per iteration, then the residual checks (the default sketches
    # differ: sparse sign 4 in memory, blockwise on row-chunked dask input); a C-contiguous
    # ndarray gives A^T (b - A x) in one pass
    assert res_d.n_passes == 3 + 2 * res_d.iterations
    assert res_m.n_passes == 2 + res_m.iterations
    assert len(res_d) == 7  # an attribute, not a field


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstsq_n_passes_in_memory(dtype):
    import scipy.sparse as sp
    from scipy.sparse.linalg import aslinearoperator

    rng = np.random.default_rng(12)
    A = rng.standard_normal((300, 10)).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    solve = rnla.solve.lstsq(A, b, method="solve", rng=0)
    assert solve.n_passes == 2  # S A, then A^T (b - A x) of the diagnostics in one pass
    for kind in (A, sp.csr_array(A), aslinearoperator(A)):
        res = rnla.solve.lstsq(kind, b, rng=0)
        # an operator is sketched through A^T S^T in blocks of 64 sketch rows
        extra = (
            -(-res.sketch_size // 64) - 1
            if not isinstance(kind, np.ndarray) and not (sp.issparse(kind))
            else 0
        )
        fused = isinstance(kind, np.ndarray)  # A^T (b - A x) in one pass
        per_product = 1 if fused else 2
        assert res.n_passes == 1 + per_product * (1 + res.iterations) + extra
        assert np.all(np.isfinite(res.x))


@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("kind", ["sparse_sign", "rademacher", "countsketch"])
def test_rsvd_blockwise_sketches_agree(client, tall, method, kind):
    res_m = rnla.rsvd(tall, 6, method=method, n_iter=1, sketch=kind, rng=8)
    res_d = rnla.rsvd(_dask(tall, "both"), 6, method=method, n_iter=1, sketch=kind, rng=8)
    _check_svd(res_d, res_m)


def test_single_pass_wide(client, tall):
    A = np.ascontiguousarray(tall.T)
    res_m = rnla.single_pass_svd(A, 5, rng=4)
    res_d = rnla.single_pass_svd(_dask(A, "both"), 5, rng=4)
    _close(res_d.s, res_m.s, 1e-7)
    _close(_np(res_d.U), res_m.U, 1e-6)
    _close(_np(res_d.Vt), res_m.Vt, 1e-6)


def test_rsvd_rank_deficient_dask(client):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 40))
    res = rnla.rsvd(da.from_array(A, chunks=(100, 40)), 6, method="subspace", rng=0)
    assert res.s.shape == (6,) and res.U.shape == (300, 6)
    assert np.all(np.isfinite(res.s)) and np.all(res.s[3:] <= 1e-10 * res.s[0])
    U = res.U.compute()
    _close((U[:, :3] * res.s[:3]) @ res.Vt[:3], A, 1e-8)


# ---------------------------------------------------------------------------------------
# the operator wrapper itself (no dask needed beyond the module import)
# ---------------------------------------------------------------------------------------


def test_wrapper_kinds_and_pass_counting():
    import scipy.sparse as sp
    from scipy.sparse.linalg import aslinearoperator

    from rnla.operators import DenseEntries, _wrap

    A = np.arange(12.0).reshape(4, 3)
    for obj, kind in [
        (A, "dense"),
        (sp.csr_array(A), "sparse"),
        (aslinearoperator(A), "operator"),
        (DenseEntries(A), "entries"),
    ]:
        op = _wrap(obj)
        assert op.kind == kind and op.shape == (4, 3) and op.dtype == np.float64
        _close(op.matmat(np.eye(3)), A, 1e-15)
        _close(op.T.matmat(np.eye(4)), A.T, 1e-15)
        _close(op.rows([2, 0]), A[[2, 0]], 1e-15)
        _close(op.columns([1]), A[:, [1]], 1e-15)
        _close(op.T.rows([1]), A[:, [1]].T, 1e-15)
        assert op.fro_norm_sq() == pytest.approx(float(np.sum(A * A)))
        assert op.n_passes >= 2  # shared between op and op.T
    op32 = _wrap(A.astype(np.float32))
    assert op32.matmat(np.ones((3, 1))).dtype == np.float32
    with pytest.raises(ValueError, match="square"):
        _wrap(A, square=True)
    with pytest.raises(TypeError):
        _wrap(np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match="finite"):
        _wrap(np.array([[1.0, np.nan]]))
    assert _wrap(op32) is op32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_block_products_against_numpy(dtype, order):
    from rnla import _dask

    rng = np.random.default_rng(4)
    B = rng.standard_normal((70, 30)).astype(dtype)
    if order == "F":
        B = np.asfortranarray(B)
    elif order == "strided":
        B = B[::2]
    X = rng.standard_normal((30, 6)).astype(dtype)
    Y = rng.standard_normal((B.shape[0], 6)).astype(dtype)
    B_before = B.copy()
    tol = 1e-5 if dtype == np.float32 else 1e-13
    _close(_dask._mul(B, X), B @ X, tol)
    _close(_dask._tmul(B, Y), B.T @ Y, tol)
    assert _dask._mul(B, X).dtype == dtype
    _, (P, G) = _dask._normal_block(B, 0, B.shape[0], X)
    Y64 = (B @ X).astype(np.float64)
    _close(P, B.T.astype(np.float64) @ Y64, tol)
    _close(G, Y64.T @ Y64, tol)
    Yl, (P2,) = _dask._normal_long_only_block(B, 0, B.shape[0], X)
    _close(Yl, B @ X, tol)
    _close(P2, P, tol)
    Yg, (G2,) = _dask._long_gram_block(B, 0, B.shape[0], X)
    _close(Yg, B @ X, tol)
    _close(G2, G, tol)
    np.testing.assert_array_equal(B, B_before)


@pytest.mark.parametrize("width", [1, 7, 100, 3000])
def test_counter_based_rows_are_independent_of_blocking(width):
    from rnla import _random

    R = _random.block_rows(width)
    N = 3 * R + 17
    full = _random.normal_rows(5, 0, N, width)
    for a, b in [(0, 1), (3, N // 2), (R - 1, 2 * R + 1), (N - 5, N)]:
        np.testing.assert_array_equal(full[a:b], _random.normal_rows(5, a, b, width))
        np.testing.assert_array_equal(
            _random.rademacher_rows(2, 0, N, width)[a:b], _random.rademacher_rows(2, a, b, width)
        )
    assert _random.normal_rows(5, 0, N, width, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_rsvd_sparse_chunks(client, method):
    # chunks that are scipy.sparse matrices go through the plain products
    import scipy.sparse as sp

    A = sp.random(300, 50, density=0.2, format="csr", random_state=0)
    Ad = da.from_array(A, chunks=(100, 50), asarray=False)
    res_d = rnla.rsvd(Ad, 5, method=method, n_iter=1, rng=0)
    res_m = rnla.rsvd(A.toarray(), 5, method=method, n_iter=1, rng=0)
    _close(res_d.s, res_m.s, 1e-10)
    assert res_d.n_passes == (2 if method == "subspace" else 3)
