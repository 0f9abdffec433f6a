"""Tests of rnla.qr: sketch-preconditioned CholeskyQR and randomized QRCP."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from rnla import cholqr_sketch, qrcp


def _conditioned(rng, m, n, kappa):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * np.logspace(0, -np.log10(kappa), n)) @ V.T


@pytest.mark.parametrize("kappa", [1e1, 1e8, 1e12])
def test_cholqr_sketch_orthogonal_at_high_condition(kappa, rng):
    A = _conditioned(rng, 20000, 30, kappa)
    Q, R, orth = cholqr_sketch(A, rng=rng)
    assert np.linalg.norm(Q.T @ Q - np.eye(30), 2) <= 1e-13
    np.testing.assert_allclose(Q @ R, A, atol=1e-14 * np.linalg.norm(A))
    assert np.allclose(R, np.triu(R)) and orth < 1e-12


def test_cholqr_sketch_negative_control_plain_cholqr_fails(rng):
    """Without the sketch preconditioner CholeskyQR breaks down at kappa = 1e12."""
    A = _conditioned(rng, 5000, 20, 1e12)
    G = A.T @ A
    try:
        R = np.linalg.cholesky(G).T
        Q = sla.solve_triangular(R, A.T, trans="T").T
        lost = np.linalg.norm(Q.T @ Q - np.eye(20), 2)
    except np.linalg.LinAlgError:
        lost = np.inf
    assert lost > 1e-3
    Q, _, _ = cholqr_sketch(A, rng=rng)
    assert np.linalg.norm(Q.T @ Q - np.eye(20), 2) <= 1e-13


def test_cholqr_sketch_dtypes_and_reference(dtype, rng):
    A = _conditioned(rng, 3000, 12, 1e3).astype(dtype)
    Q, R, _ = cholqr_sketch(A, n_steps=2, rng=rng)
    assert Q.dtype == dtype and R.dtype == dtype
    eps = np.finfo(dtype).eps
    assert np.linalg.norm(Q.T.astype(np.float64) @ Q - np.eye(12), 2) <= 100 * eps
    # same R as Householder up to row signs
    R_ref = np.linalg.qr(A.astype(np.float64), mode="r")
    signs = np.sign(np.diag(R)) * np.sign(np.diag(R_ref))
    np.testing.assert_allclose(
        R, signs[:, None] * R_ref, rtol=0, atol=1e4 * eps * abs(R_ref).max()
    )
    assert np.isfinite(Q).all()


def test_cholqr_sketch_bad_input(rng):
    A = rng.standard_normal((100, 5))
    A0 = A.copy()
    with pytest.raises(ValueError, match="tall"):
        cholqr_sketch(A.T)
    with pytest.raises(ValueError, match="rank deficient"):
        cholqr_sketch(np.column_stack([A, A[:, :1]]), rng=rng)
    with pytest.raises(TypeError):
        cholqr_sketch(sp.random(100, 5, density=0.5))
    with pytest.raises(ValueError, match="finite"):
        cholqr_sketch(np.where(A > 2.5, np.inf, A))
    with pytest.raises(ValueError, match="sketch_size"):
        cholqr_sketch(A, sketch_size=2)
    cholqr_sketch(A, rng=rng)
    np.testing.assert_array_equal(A, A0)


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (150, 150)], ids=str)
def test_qrcp_factorises(shape, dtype, rng):
    A = rng.standard_normal(shape).astype(dtype)
    Q, R, piv, growth = qrcp(A, block_size=32, rng=rng)
    k = min(shape)
    eps = np.finfo(dtype).eps
    assert Q.shape == (shape[0], k) and R.shape == (k, shape[1]) and Q.dtype == dtype
    assert sorted(piv) == list(range(shape[1]))
    np.testing.assert_allclose(Q @ R, A[:, piv], atol=1e3 * eps * np.abs(A).max())
    assert np.linalg.norm(Q.T @ Q - np.eye(k), 2) <= 1e3 * eps
    assert np.allclose(R, np.triu(R))
    assert np.isnan(growth) == (k == shape[1])


@pytest.mark.parametrize("selection", ["lu", "qrcp"])
def test_qrcp_diagonal_tracks_geqp3(selection, rng):
    """Rank revealing: |R_ii| within a small factor of LAPACK geqp3's on a graded matrix."""
    A = rng.standard_normal((400, 300)) @ np.diag(np.logspace(0, -10, 300))
    A = A @ sla.qr(rng.standard_normal((300, 300)))[0]
    R = qrcp(A, block_size=32, selection=selection, rng=rng).R
    R_ref = sla.qr(A, pivoting=True, mode="r")[0]
    ratio = np.abs(np.diag(R)) / np.abs(np.diag(R_ref))
    assert 0.1 <= ratio.min() and ratio.max() <= 10


def test_qrcp_truncated_rank_reveals(rng):
    A = rng.standard_normal((300, 20)) @ rng.standard_normal((20, 200))
    A += 1e-9 * rng.standard_normal(A.shape)
    Q, R, piv, growth = qrcp(A, rank=20, rng=rng)
    resid = A[:, piv] - Q @ R
    assert np.linalg.norm(resid) <= 1e-7 * np.linalg.norm(A)
    assert growth < 100
    # negative control: unpivoted truncation at the same rank is much worse on a
    # matrix whose leading columns are nearly dependent
    B = A.copy()
    B[:, :10] = B[:, :1] + 1e-6 * rng.standard_normal((300, 10))
    Qn, _ = np.linalg.qr(B[:, :20])
    Qp = qrcp(B, rank=20, rng=rng).Q
    assert np.linalg.norm(B - Qn @ (Qn.T @ B)) > 100 * np.linalg.norm(B - Qp @ (Qp.T @ B))


def test_qrcp_reference_numpy(rng):
    """Same factorisation as Householder QR of the permuted matrix (plain NumPy)."""
    A = rng.standard_normal((60, 40))
    _, R, piv, _ = qrcp(A, block_size=8, rng=rng)
    R_ref = np.linalg.qr(A[:, piv], mode="r")
    np.testing.assert_allclose(np.abs(R), np.abs(R_ref), atol=1e-12 * np.abs(A).max())


def test_qrcp_bad_input(rng):
    A = rng.standard_normal((30, 20))
    A0 = A.copy()
    with pytest.raises(ValueError, match="rank"):
        qrcp(A, rank=21)
    with pytest.raises(TypeError, match="integer"):
        qrcp(A, rank=2.5)
    with pytest.raises(TypeError, match="complex"):
        qrcp(A + 1j)
    with pytest.raises(ValueError, match="finite"):
        qrcp(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="selection must be one of"):
        qrcp(A, selection="geqp3")
    qrcp(A, rng=rng)
    np.testing.assert_array_equal(A, A0)


def test_qrcp_negative_control_unpivoted_diagonal(rng):
    """The diagonal test above can fail: unpivoted QR's |R_ii| is far from geqp3's."""
    A = rng.standard_normal((400, 300)) * np.logspace(0, -10, 300)[rng.permutation(300)]
    d_ref = np.abs(np.diag(sla.qr(A, pivoting=True, mode="r")[0]))
    d_qrcp = np.abs(np.diag(qrcp(A, block_size=32, rng=rng).R))
    d_plain = np.abs(np.diag(np.linalg.qr(A, mode="r")))
    ratio = d_plain / d_ref
    assert ratio.min() < 0.1 or ratio.max() > 10
    ratio = d_qrcp / d_ref
    assert 0.1 <= ratio.min() and ratio.max() <= 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lapack_views_reference(dtype, rng):
    """The in-place LAPACK/BLAS calls on strided views against plain NumPy."""
    from rnla import _lapack

    eps = np.finfo(dtype).eps
    W = np.asfortranarray(rng.standard_normal((50, 40)).astype(dtype))
    W0 = W.copy()
    panel = W[5:, 3:11]
    T = _lapack.geqrt3(panel)
    V = np.tril(panel, -1) + np.eye(45, 8, dtype=dtype)
    H = np.eye(45, dtype=dtype) - V @ T @ V.T  # H_1 ... H_8
    R = np.triu(panel[:8])
    np.testing.assert_allclose(H[:, :8] @ R, W0[5:, 3:11], atol=50 * eps)
    np.testing.assert_allclose(H.T @ H, np.eye(45), atol=50 * eps)
    np.testing.assert_allclose(T, _lapack.larft(panel, np.diagonal(T).copy()), atol=50 * eps)
    C = W[5:, 11:]
    _lapack.larfb("L", "T", panel, T, C)
    np.testing.assert_allclose(C, H.T @ W0[5:, 11:], atol=100 * eps)
    G = np.asfortranarray(rng.standard_normal((7, 45)).astype(dtype))
    G0 = G.copy()
    _lapack.larfb("R", "N", panel, T, G)
    np.testing.assert_allclose(G, G0 @ H, atol=100 * eps)
    Y = np.asfortranarray(rng.standard_normal((7, 30)).astype(dtype))
    Y0 = Y.copy()
    _lapack.gemm(-1.0, G[:, :8], W[5:13, 11:], 1.0, Y[:, 1:30])
    np.testing.assert_allclose(Y[:, 1:], Y0[:, 1:] - G[:, :8] @ W[5:13, 11:], atol=100 * eps)
    np.testing.assert_array_equal(Y[:, 0], Y0[:, 0])  # outside the view: untouched
    np.testing.assert_array_equal(W[:5], W0[:5])
    tau = np.zeros(8, dtype=dtype)
    P = np.asfortranarray(W0[5:, 3:11])
    _lapack.geqrf(P, tau)
    np.testing.assert_allclose(np.abs(np.diag(P)), np.abs(np.diag(R)), rtol=50 * eps)
    with pytest.raises(ValueError, match="column-major"):
        _lapack.larft(np.ascontiguousarray(panel), tau)
