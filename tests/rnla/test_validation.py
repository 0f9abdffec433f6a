"""Tests of the shared conventions in rnla._validation."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from rnla import AccuracyWarning, ConvergenceWarning, RNLAWarning
from rnla._validation import (
    as_float_array,
    as_operator,
    as_sparse,
    check_int,
    check_option,
    check_probability,
    check_rank,
    check_rng,
    float_dtype,
    result_dtype,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.int8, np.float64),
        (np.int64, np.float64),
        (np.uint16, np.float64),
        (bool, np.float64),
    ],
)
def test_dtype_contract(given, expected):
    assert float_dtype(given) == expected
    assert as_float_array(np.ones(3, dtype=given)).dtype == expected


@pytest.mark.parametrize("bad", [np.complex64, np.complex128, object, "U3"])
def test_non_real_dtypes_rejected(bad):
    with pytest.raises(TypeError):
        float_dtype(bad)


def test_result_dtype_mixes_to_float64():
    assert result_dtype(np.float32, np.float32) == np.float32
    assert result_dtype(np.float32, np.float64) == np.float64
    assert result_dtype(np.float32, np.int32) == np.float64


def test_as_float_array_no_copy_when_not_needed(dtype):
    A = np.ones((3, 2), dtype=dtype)
    assert as_float_array(A) is A
    B = as_float_array(A, copy=True)
    assert B is not A and np.shares_memory(A, B) is False


def test_as_float_array_layout():
    A = np.ones((4, 3))
    assert as_float_array(A, order="F").flags.f_contiguous
    assert as_float_array(A.T, order="C").flags.c_contiguous


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array([[1.0, np.nan]]), r"finite values, found nan at index \(0, 1\)"),
        (np.array([np.inf]), r"finite values, found inf at index \(0,\)"),
        (np.ones((2, 2, 2)), r"must be 1 or 2-dimensional, got shape \(2, 2, 2\)"),
        (np.ones((0, 3)), r"non-empty, got shape \(0, 3\)"),
    ],
    ids=["nan", "inf", "ndim", "empty"],
)
def test_as_float_array_value_errors(value, match):
    with pytest.raises(ValueError, match=match):
        as_float_array(value, ndim=(1, 2))


def test_as_float_array_type_errors():
    with pytest.raises(TypeError, match="dense array, got csr_matrix"):
        as_float_array(sp.csr_matrix(np.eye(2)))
    with pytest.raises(TypeError, match="complex"):
        as_float_array(np.ones(2) * 1j)
    with pytest.raises(TypeError, match="dtype object"):
        as_float_array(np.array([None, 1.0]))


def test_allow_nonfinite_and_empty():
    assert np.isnan(as_float_array([np.nan], allow_nonfinite=True)[0])
    assert as_float_array(np.ones((0, 2)), allow_empty=True).shape == (0, 2)


def test_as_sparse_converts_and_validates(dtype):
    A = sp.coo_matrix(np.eye(3, dtype=dtype))
    B = as_sparse(A)
    assert B.format == "csr" and B.dtype == dtype
    C = sp.csc_array(np.eye(3, dtype=np.int32))
    assert as_sparse(C).dtype == np.float64
    with pytest.raises(ValueError, match="finite"):
        as_sparse(sp.csr_matrix(np.array([[np.nan, 1.0]])))
    with pytest.raises(TypeError, match=r"scipy\.sparse"):
        as_sparse(np.eye(2))
    with pytest.raises(TypeError, match="complex"):
        as_sparse(sp.csr_matrix(np.eye(2) * 1j))


def test_as_sparse_fixes_duplicates_without_mutating():
    A = sp.csr_matrix((np.array([1.0, 2.0]), np.array([0, 0]), np.array([0, 2])), shape=(1, 2))
    assert not A.has_canonical_format
    B = as_sparse(A)
    assert B.nnz == 1 and B[0, 0] == 3.0
    assert A.nnz == 2  # the caller's matrix is untouched


def test_as_operator_accepts_three_kinds():
    A = np.arange(6.0).reshape(3, 2)
    for x in (A, sp.csr_matrix(A), aslinearoperator(A)):
        op = as_operator(x)
        assert isinstance(op, LinearOperator)
        np.testing.assert_allclose(op @ np.ones(2), A @ np.ones(2))
    with pytest.raises(ValueError, match="2-dimensional"):
        as_operator(np.ones(3))


def test_check_rng_forms(seed):
    g = np.random.default_rng(seed)
    assert check_rng(g) is g
    a = check_rng(seed).random()
    b = check_rng(np.random.SeedSequence(seed)).random()
    assert a == b
    assert isinstance(check_rng(None), np.random.Generator)
    assert check_rng(np.random.PCG64(seed)).random() == a


@pytest.mark.parametrize("bad", [np.random.RandomState(0), 1.5, True, "x", object()])
def test_check_rng_rejects(bad):
    with pytest.raises(TypeError, match="rng must be"):
        check_rng(bad)


def test_check_int_and_rank():
    assert check_int(np.int64(3), "k", minimum=1) == 3
    with pytest.raises(TypeError, match=r"k must be an integer, got 3.0"):
        check_int(3.0, "k")
    with pytest.raises(TypeError):
        check_int(True, "k")
    with pytest.raises(ValueError, match=r"k=0 must be >= 1"):
        check_int(0, "k", minimum=1)
    with pytest.raises(ValueError, match=r"k=9 must be <= 8"):
        check_int(9, "k", maximum=8)
    with pytest.raises(ValueError, match=r"rank=5 must satisfy 1 <= rank <= 4"):
        check_rank(5, (4, 7))


def test_check_option_dispatch():
    table = {"a": 1, "b": 2}
    assert check_option("b", table, "method") == 2
    assert check_option("x", ["x", "y"], "kind") == "x"
    with pytest.raises(ValueError, match=r"method='c' is not one of 'a', 'b'"):
        check_option("c", table, "method")


def test_check_probability():
    assert check_probability(0.1, "delta") == 0.1
    assert check_probability(1.0, "p", open_right=False) == 1.0
    for bad in (0.0, 1.0, -1, np.nan):
        with pytest.raises(ValueError, match=r"delta=.* must lie in \(0, 1\)"):
            check_probability(bad, "delta")
    with pytest.raises(TypeError):
        check_probability("0.1", "delta")


def test_warning_hierarchy():
    assert issubclass(ConvergenceWarning, RNLAWarning)
    assert issubclass(AccuracyWarning, RNLAWarning)
    assert issubclass(RNLAWarning, UserWarning)
