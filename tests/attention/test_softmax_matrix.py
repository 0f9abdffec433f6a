"""Tests for attention.softmax_matrix: entries, products, statistics and the PSD lift."""

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator

import rnla
from attention.bounds import row_lemma
from attention.softmax_matrix import SoftmaxMatrix
from rnla.operators import EntryMatrix, dot_test
from tests.conftest import tol

FORMS = ("stabilized", "raw", "normalized")


def _reference(Q, K, *, scale=None, causal=False):
    """Dense float64 A, row maxima and log normalisers (plain NumPy)."""
    Q = np.asarray(Q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    n, m = Q.shape[0], K.shape[0]
    s = 1 / np.sqrt(Q.shape[1]) if scale is None else scale
    S = Q @ K.T * s
    if causal:
        S = np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + m - n, S, -np.inf)
    top = S.max(axis=1)
    seen = np.isfinite(top)
    shift = np.where(seen, top, 0.0)
    A = np.exp(S)
    with np.errstate(divide="ignore"):
        lse = np.where(seen, shift + np.log(np.exp(S - shift[:, None]).sum(axis=1)), -np.inf)
    return A, top, lse


def _form_matrix(A, top, lse, form):
    c = {"raw": np.zeros_like(top), "stabilized": top, "normalized": lse}[form]
    c = np.where(np.isfinite(c), c, 0.0)
    return A * np.exp(-c)[:, None]


def _make(S: SoftmaxMatrix, form: str) -> SoftmaxMatrix:
    return {"raw": S.raw, "stabilized": S.stabilized, "normalized": S.normalized}[form]()


def _head(rng, n, m, d, dtype, spread=1.0):
    Q = (spread * rng.standard_normal((n, d))).astype(dtype)
    K = rng.standard_normal((m, d)).astype(dtype)
    return Q, K


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("n", "m", "causal"),
    [(17, 17, False), (9, 23, True), (23, 9, True), (1, 1, False), (30, 12, False)],
    ids=["square", "causal-wide", "causal-tall-empty-rows", "1x1", "rect"],
)
def test_entries_match_reference(rng, dtype, form, n, m, causal):
    Q, K = _head(rng, n, m, 5, dtype)
    S = _make(SoftmaxMatrix(Q, K, causal=causal), form)
    assert isinstance(S, EntryMatrix)
    assert S.form == form and S.dtype == dtype and S.shape == (n, m)
    A, top, lse = _reference(Q, K, causal=causal)
    M = _form_matrix(A, top, lse, form)
    rt = tol(dtype, 200)
    ref_scale = np.maximum(np.abs(M), np.abs(M).max(axis=1, keepdims=True) * 1e-3)
    rows = S.rows(np.arange(n))
    cols = S.cols(np.arange(m))
    assert rows.dtype == dtype and cols.dtype == dtype and rows.flags.c_contiguous
    np.testing.assert_array_less(np.abs(rows - M), rt * ref_scale + 1e-300)
    np.testing.assert_array_less(np.abs(cols - M), rt * ref_scale + 1e-300)
    i = rng.integers(0, n, size=40)
    j = rng.integers(0, m, size=40)
    np.testing.assert_allclose(S.entries(i, j), M[i, j], rtol=rt, atol=rt * M.max())
    np.testing.assert_allclose(S.diag(), np.diagonal(M), rtol=rt, atol=rt * M.max())
    # Entry paths agree with each other, not only with the reference.
    np.testing.assert_allclose(rows, cols, rtol=rt, atol=rt * M.max())


@pytest.mark.parametrize("form", FORMS)
def test_statistics(rng, dtype, form):
    n, m = 21, 13
    Q, K = _head(rng, n, m, 4, dtype, spread=3.0)
    S = _make(SoftmaxMatrix(Q, K, causal=True), form)
    A, top, lse = _reference(Q, K, causal=True)
    got_lse = S.log_row_sums()
    assert got_lse.dtype == np.float64
    np.testing.assert_array_equal(np.isinf(got_lse), np.isinf(lse))
    fin = np.isfinite(lse)
    np.testing.assert_allclose(got_lse[fin], lse[fin], rtol=0, atol=tol(dtype, 100) * 10)
    np.testing.assert_allclose(S.row_max()[fin], top[fin], atol=tol(dtype, 100) * 10)
    M = _form_matrix(A, top, lse, form)
    np.testing.assert_allclose(S.row_sums(), M.sum(axis=1), rtol=tol(dtype, 500))
    if form == "normalized":
        np.testing.assert_allclose(S.row_sums()[fin], 1.0, rtol=tol(dtype, 100))
    if form == "stabilized":
        # Every visible row's largest entry is exactly representable: 1 up to rounding.
        np.testing.assert_allclose(S.rows(np.flatnonzero(fin)).max(axis=1), 1.0, rtol=tol(dtype))
    np.testing.assert_allclose(
        np.exp(S.log_row_scale()) * S.row_sums(),
        np.where(fin, np.exp(lse), 0),
        rtol=tol(dtype, 500),
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_products_and_dot_test(rng, dtype, form, causal):
    n, m = 37, 29
    Q, K = _head(rng, n, m, 6, dtype)
    S = _make(SoftmaxMatrix(Q, K, causal=causal), form)
    A, top, lse = _reference(Q, K, causal=causal)
    M = _form_matrix(A, top, lse, form)
    X = rng.standard_normal((m, 3)).astype(dtype)
    Y = rng.standard_normal((n, 2)).astype(dtype)
    rt = tol(dtype, 500)
    np.testing.assert_allclose(S.matmat(X), M @ X, rtol=rt, atol=rt * np.abs(M).sum(1).max())
    np.testing.assert_allclose(S.rmatmat(Y), M.T @ Y, rtol=rt, atol=rt * np.abs(M).sum(0).max())
    np.testing.assert_allclose(S.matmat(X[:, 0]), M @ X[:, 0], rtol=rt, atol=rt * M.sum(1).max())
    assert S.matmat(X).dtype == dtype
    for block in (None, 1, 7):
        op = S.as_linear_operator(block_size=block)
        assert isinstance(op, LinearOperator) and op.shape == (n, m) and op.dtype == dtype
        np.testing.assert_allclose(op @ X, M @ X, rtol=rt, atol=rt * M.sum(1).max())
        res = dot_test(op, rng=rng)
        assert res.passed, res


def test_stabilized_survives_overflow(rng):
    Q, K = _head(rng, 8, 6, 4, np.float32, spread=1.0)
    Q *= 60.0  # scores of order 100 > log(float32 max) = 88.7
    S = SoftmaxMatrix(Q, K)
    assert np.isfinite(S.rows(np.arange(8))).all()
    assert np.isfinite(S.normalized().matmat(np.ones(6))).all()
    assert np.isfinite(S.log_row_sums()).all()
    with pytest.raises(OverflowError, match="overflow"):
        S.raw().rows([0, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(OverflowError, match="overflow"):
        S.raw().row_sums()


def test_counts(rng):
    S = SoftmaxMatrix(*_head(rng, 10, 7, 3, np.float64))
    S.rows([0, 1])
    S.cols([2])
    S.entries([0, 1, 2], [0, 0, 0])
    S.diag()
    assert S.n_evaluations == 2 * 7 + 10 + 3 + 7
    assert S.n_statistics_evaluations == 70
    S.matmat(np.ones(7))
    assert S.n_evaluations == 34 + 70
    S.reset_count()
    assert S.n_evaluations == 0
    causal = SoftmaxMatrix(*_head(rng, 64, 64, 3, np.float64), causal=True).raw()
    causal.as_linear_operator(block_size=8).matvec(np.ones(64))
    # The streamed causal product skips the masked blocks above the diagonal.
    assert causal.n_evaluations == sum(8 * min(64, s + 8) for s in range(0, 64, 8))


def test_bad_input(rng):
    Q, K = _head(rng, 5, 4, 3, np.float64)
    Q0 = Q.copy()
    with pytest.raises(ValueError, match="same number of columns"):
        SoftmaxMatrix(Q, K[:, :2])
    with pytest.raises(ValueError, match="2-dimensional"):
        SoftmaxMatrix(Q[0], K)
    with pytest.raises(TypeError, match="complex"):
        SoftmaxMatrix(Q + 1j, K)
    with pytest.raises(TypeError, match="causal must be a bool"):
        SoftmaxMatrix(Q, K, causal=1)
    with pytest.raises(ValueError, match="scale"):
        SoftmaxMatrix(Q, K, scale=0.0)
    with pytest.raises(ValueError, match="finite"):
        SoftmaxMatrix(np.full_like(Q, np.nan), K)
    S = SoftmaxMatrix(Q, K)
    with pytest.raises(ValueError, match="must have 4 rows"):
        S.matmat(np.ones(5))
    with pytest.raises(ValueError, match="out of range"):
        S.rows([5])
    with pytest.raises(ValueError, match="block_size"):
        S.as_linear_operator(block_size=0)
    with pytest.raises(ValueError, match="causal=False"):
        SoftmaxMatrix(Q, K, causal=True).psd_lift()
    with pytest.raises(ValueError, match="tau"):
        S.psd_lift(tau=-1.0)
    with pytest.raises(ValueError, match="n \\+ m = 9 rows"):
        S.lift_to_attention(np.zeros((8, 2)))
    with pytest.raises(ValueError, match="not a Nyström-type factor"):
        S.lift_to_attention(np.full((9, 2), 1.0))
    np.testing.assert_array_equal(Q, Q0)
    assert not S.Q.flags.writeable


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_psd_lift_entries(rng, dtype, tau):
    n, m = 11, 8
    Q, K = _head(rng, n, m, 4, dtype)
    S = SoftmaxMatrix(Q, K)
    lift = S.psd_lift(tau=tau)
    B = lift.matrix
    assert B.shape == (n + m, n + m) and B.dtype == dtype
    np.testing.assert_array_equal(B.diag(), 1.0)
    full = B.rows(np.arange(n + m)).astype(np.float64)
    np.testing.assert_allclose(full, full.T, atol=tol(dtype, 10))
    assert np.linalg.eigvalsh(full).min() > -tol(dtype, 1000)
    A, _, _ = _reference(Q, K)
    recon = np.exp(lift.log_dq)[:, None] * full[:n, n:] * np.exp(lift.log_dk)[None, :]
    np.testing.assert_allclose(recon, A, rtol=tol(dtype, 2000))


@pytest.mark.parametrize("form", ["stabilized", "normalized", "raw"])
def test_rpcholesky_on_lift_meets_bounds(rng, dtype, form):
    """A = D_Q G D_K: RPCholesky of the lift recovers A within the stated bounds."""
    n, m, d = 60, 50, 8
    Q, K = _head(rng, n, m, d, dtype, spread=0.6)
    S = _make(SoftmaxMatrix(Q, K), form)
    lift = S.psd_lift()
    A, top, lse = _reference(Q, K)
    M = _form_matrix(A, top, lse, form)
    for rank in (5, 20, 60):
        F = rnla.rpcholesky(lift.matrix, rank, rng=rng).F
        lf = S.lift_to_attention(F)
        assert lf.U.shape == (n, F.shape[1]) and lf.W.shape == (m, F.shape[1])
        E = M - lf.U.astype(np.float64) @ lf.W.T.astype(np.float64)
        fro = np.linalg.norm(E)
        slack = 1 + tol(dtype, 100)
        assert fro <= lf.fro_bound * slack + tol(dtype, 100) * np.linalg.norm(M)
        assert (np.abs(E).sum(axis=1) <= lf.row_l1_bounds * slack + tol(dtype, 1e3)).all()
        # Never worse than the survey's ||D_Q|| ||D_K|| ||B - FF^T||_F (form-scaled).
        Bfull = lift.matrix.rows(np.arange(n + m)).astype(np.float64)
        Ffl = F.astype(np.float64)
        lift_err = np.linalg.norm(Bfull - Ffl @ Ffl.T)
        log_a = lift.log_dq - S.log_row_scale()
        survey = np.exp(log_a.max() + lift.log_dk.max()) * lift_err
        assert lf.fro_bound <= survey * (1 + 1e-6) + tol(dtype, 1e4) * np.exp(
            log_a.max() + lift.log_dk.max()
        )
        assert fro <= survey * slack + tol(dtype, 1e3) * np.linalg.norm(M)


def test_lift_bound_negative_control(rng):
    """The bound is not vacuous: halving it fails at low rank."""
    Q, K = _head(rng, 40, 40, 6, np.float64, spread=0.6)
    S = SoftmaxMatrix(Q, K)
    F = rnla.rpcholesky(S.psd_lift().matrix, 3, rng=rng).F
    lf = S.lift_to_attention(F)
    A, top, lse = _reference(Q, K)
    E = _form_matrix(A, top, lse, "stabilized") - lf.U @ lf.W.T
    row_err = np.abs(E).sum(axis=1)
    assert (row_err > 0.01 * lf.row_l1_bounds).any()
    assert np.linalg.norm(E) > 0.01 * lf.fro_bound


def test_lift_to_output_bound(rng):
    """End to end: lift factors + row lemma bound the attention output error."""
    n, m, d, dv = 50, 45, 8, 6
    Q, K = _head(rng, n, m, d, np.float64, spread=0.5)
    V = rng.standard_normal((m, dv))
    S = SoftmaxMatrix(Q, K)
    F = rnla.rpcholesky(S.psd_lift().matrix, 40, rng=rng).F
    lf = S.lift_to_attention(F)
    At = lf.U @ lf.W.T
    zt = At.sum(axis=1)
    Yt = At @ V / zt[:, None]
    A, _, _ = _reference(Q, K)
    Y = A @ V / A.sum(axis=1, keepdims=True)
    bound = row_lemma(lf.row_l1_bounds, zt, V)
    err = np.linalg.norm(Yt - Y, axis=1)
    assert (err <= bound.rows * (1 + 1e-9)).all()
    assert np.linalg.norm(Yt - Y) <= bound.fro.value


def _load_real_head():
    """Head 0 of the shipped MiniLM sample: (Q, K, V, scale), float64; skip if absent."""
    data = pytest.importorskip("attention.data")
    load = getattr(data, "load_sample", None)
    if load is None:
        pytest.skip("attention.data.load_sample is not available yet")
    try:
        sample = load("minilm")
    except (FileNotFoundError, ValueError, KeyError) as exc:  # pragma: no cover
        pytest.skip(f"minilm sample unavailable: {exc}")
    Q, K, V = (np.asarray(X, dtype=np.float64) for X in (sample.Q, sample.K, sample.V))
    Q, K, V = (X.reshape(-1, *X.shape[-2:])[0] for X in (Q, K, V))
    return Q, K, V, float(sample.scale)


def test_real_head_lift_and_entries():
    Q, K, _, scale = _load_real_head()
    S = SoftmaxMatrix(Q, K, scale=scale)
    n, m = S.shape
    A, top, lse = _reference(Q, K, scale=scale)
    M = _form_matrix(A, top, lse, "stabilized")
    np.testing.assert_allclose(S.rows(np.arange(n)), M, rtol=1e-10, atol=1e-12)
    assert dot_test(S.normalized(), rng=0).passed
    F = rnla.rpcholesky(S.psd_lift().matrix, min(n + m, 64), rng=0).F
    lf = S.lift_to_attention(F)
    E = M - lf.U @ lf.W.T
    assert np.linalg.norm(E) <= lf.fro_bound * (1 + 1e-9)
    assert (np.abs(E).sum(axis=1) <= lf.row_l1_bounds * (1 + 1e-9) + 1e-12).all()
