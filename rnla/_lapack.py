"""In-place LAPACK/BLAS calls on strided views (private).

SciPy's f2py wrappers copy any operand that is not contiguous, so a blocked algorithm
that updates a sub-block ``W[j:, j + b:]`` of a Fortran array through them pays a full
copy of the trailing matrix per block. The Cython LAPACK/BLAS modules of SciPy export
the raw routines as capsules; calling them through :mod:`ctypes` with the view's
address and leading dimension updates the block in place (and releases the GIL).

Only column-major views are accepted: ``strides[0] == itemsize`` and
``strides[1] = lda * itemsize``.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
import scipy.linalg.cython_blas as _cblas
import scipy.linalg.cython_lapack as _clapack

__all__ = ["gemm", "geqrf", "geqrt3", "larfb", "larft"]

_P = ctypes.c_void_p
_getptr = ctypes.pythonapi.PyCapsule_GetPointer
_getptr.restype = ctypes.c_void_p
_getptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
_getname = ctypes.pythonapi.PyCapsule_GetName
_getname.restype = ctypes.c_char_p
_getname.argtypes = [ctypes.py_object]


@cache
def _routine(name: str, nargs: int):
    module = _cblas if name[1:] in ("gemm", "trsm") else _clapack
    capsule = module.__pyx_capi__[name]
    address = _getptr(capsule, _getname(capsule))
    return ctypes.CFUNCTYPE(None, *([_P] * nargs))(address)


def _prefix(dtype) -> str:
    if dtype == np.float64:
        return "d"
    if dtype == np.float32:
        return "s"
    raise TypeError(f"expected float32 or float64, got {dtype}")


def _mat(X: np.ndarray):
    """(address, leading dimension) of a column-major view."""
    item = X.itemsize
    if X.ndim != 2 or (X.shape[0] > 1 and X.strides[0] != item):
        raise ValueError("expected a column-major 2-D view")
    ld = X.strides[1] // item if X.shape[1] > 1 else X.shape[0]
    return _P(X.__array_interface__["data"][0]), ctypes.byref(ctypes.c_int(max(1, ld)))


def _int(v: int):
    return ctypes.byref(ctypes.c_int(int(v)))


def _chr(c: str):
    return ctypes.c_char_p(c.encode())


def geqrf(A: np.ndarray, tau: np.ndarray) -> None:
    """Householder QR of the column-major view ``A`` in place (reflectors below R)."""
    m, n = A.shape
    p = _prefix(A.dtype)
    a, lda = _mat(A)
    info = ctypes.c_int(0)
    query = np.zeros(1, dtype=A.dtype)
    f = _routine(p + "geqrf", 8)
    f(
        _int(m),
        _int(n),
        a,
        lda,
        _P(tau.ctypes.data),
        _P(query.ctypes.data),
        _int(-1),
        ctypes.byref(info),
    )
    lwork = max(1, int(query[0]))
    work = np.empty(lwork, dtype=A.dtype)
    f(
        _int(m),
        _int(n),
        a,
        lda,
        _P(tau.ctypes.data),
        _P(work.ctypes.data),
        _int(lwork),
        ctypes.byref(info),
    )
    if info.value != 0:  # pragma: no cover - only for invalid arguments
        raise RuntimeError(f"{p}geqrf returned info={info.value}")


def larft(V: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Upper triangular ``T`` with ``H_1 ... H_k = I - V T V^T`` (forward, columnwise)."""
    m, k = V.shape
    T = np.zeros((k, k), dtype=V.dtype, order="F")
    v, ldv = _mat(V)
    _routine(_prefix(V.dtype) + "larft", 9)(
        _chr("F"),
        _chr("C"),
        _int(m),
        _int(k),
        v,
        ldv,
        _P(tau.ctypes.data),
        _P(T.ctypes.data),
        _int(k),
    )
    return T


def larfb(side: str, trans: str, V: np.ndarray, T: np.ndarray, C: np.ndarray) -> None:
    """Apply ``H = I - V T V^T`` (or ``H^T``) to the column-major view ``C`` in place.

    ``side="L"``: ``C <- op(H) C`` (``V`` has ``C.shape[0]`` rows); ``side="R"``:
    ``C <- C op(H)`` (``V`` has ``C.shape[1]`` rows). Only the unit lower trapezoid
    of ``V`` is read.
    """
    m, n = C.shape
    k = T.shape[0]
    if m == 0 or n == 0 or k == 0:
        return
    ldwork = n if side == "L" else m
    work = np.empty((ldwork, k), dtype=C.dtype, order="F")
    v, ldv = _mat(V)
    c, ldc = _mat(C)
    _routine(_prefix(C.dtype) + "larfb", 15)(
        _chr(side),
        _chr(trans),
        _chr("F"),
        _chr("C"),
        _int(m),
        _int(n),
        _int(k),
        v,
        ldv,
        _P(T.ctypes.data),
        _int(k),
        c,
        ldc,
        _P(work.ctypes.data),
        _int(ldwork),
    )


def gemm(alpha: float, A: np.ndarray, B: np.ndarray, beta: float, C: np.ndarray) -> None:
    """``C <- alpha A B + beta C`` on column-major views, ``C`` in place."""
    m, n = C.shape
    k = A.shape[1]
    if m == 0 or n == 0:
        return
    dt = np.dtype(C.dtype).type
    al = np.array([alpha], dtype=dt)
    be = np.array([beta], dtype=dt)
    a, lda = _mat(A)
    b, ldb = _mat(B)
    c, ldc = _mat(C)
    _routine(_prefix(C.dtype) + "gemm", 13)(
        _chr("N"),
        _chr("N"),
        _int(m),
        _int(n),
        _int(k),
        _P(al.ctypes.data),
        a,
        lda,
        b,
        ldb,
        _P(be.ctypes.data),
        c,
        ldc,
    )


def geqrt3(A: np.ndarray) -> np.ndarray:
    """Recursive Householder QR of the column-major view ``A`` (m >= n) in place.

    Returns the ``n x n`` upper triangular ``T`` of the compact WY form
    ``H_1 ... H_n = I - V T V^T`` (``V`` is stored below ``R`` in ``A``); level-3 BLAS
    throughout (Elmroth and Gustavson).
    """
    m, n = A.shape
    T = np.zeros((n, n), dtype=A.dtype, order="F")
    a, lda = _mat(A)
    info = ctypes.c_int(0)
    _routine(_prefix(A.dtype) + "geqrt3", 7)(
        _int(m), _int(n), a, lda, _P(T.ctypes.data), _int(max(1, n)), ctypes.byref(info)
    )
    if info.value != 0:  # pragma: no cover - only for invalid arguments
        raise RuntimeError(f"geqrt3 returned info={info.value}")
    return T
