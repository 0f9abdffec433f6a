"""Input validation shared by every public function of :mod:`rnla`.

The library's input conventions live here once:

* **dtype contract** - float32 stays float32, float64 stays float64, integers and
  booleans promote to float64, float16 promotes to float32; complex input is rejected
  with :class:`TypeError` (the package is real-valued throughout).
* **finiteness** - NaN and inf are rejected at the public boundary with the location
  of the first offending entry.
* **rng** - ``None | int | SeedSequence | BitGenerator | Generator`` normalised once
  with :func:`numpy.random.default_rng`.
* **sizes** - ranks and sketch sizes are checked against their admissible range with
  messages that state the expected range and the received value.

Nothing here mutates its input: coercion copies only when the dtype or layout must
change, and callers that write into an array must request ``copy=True``.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

__all__ = [
    "AccuracyWarning",
    "ConvergenceWarning",
    "RNLAWarning",
    "as_float_array",
    "as_operator",
    "as_sparse",
    "check_int",
    "check_option",
    "check_probability",
    "check_rank",
    "check_real",
    "check_rng",
    "float_dtype",
    "result_dtype",
]


class RNLAWarning(UserWarning):
    """Base class of every warning issued by :mod:`rnla` and :mod:`attention`."""


class ConvergenceWarning(RNLAWarning):
    """An iterative method stopped before meeting its tolerance."""


class AccuracyWarning(RNLAWarning):
    """A requested accuracy cannot be honoured (precision floor, budget, assumptions)."""


def float_dtype(dtype) -> np.dtype:
    """Return the floating dtype that data of ``dtype`` is computed in.

    Parameters
    ----------
    dtype : dtype-like
        Dtype of the input data.

    Returns
    -------
    numpy.dtype
        ``float32`` for float16/float32, ``float64`` for float64, integers and bools.

    Raises
    ------
    TypeError
        For complex, object, string or extended-precision dtypes.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise TypeError(
            f"complex input (dtype={dtype}) is not supported: rnla is real-valued; "
            "split real and imaginary parts or use a real embedding"
        )
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype.kind == "f":
        if dtype.itemsize <= 4:
            return np.dtype(np.float32)
        if dtype.itemsize == 8:
            return np.dtype(np.float64)
    raise TypeError(f"expected a real numeric dtype (float32, float64 or integer), got {dtype}")


def result_dtype(*dtypes) -> np.dtype:
    """Return the common floating dtype of several inputs under the dtype contract.

    float32 only if every input computes in float32, float64 otherwise.
    """
    kinds = [float_dtype(d) for d in dtypes]
    if kinds and all(k == np.float32 for k in kinds):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _first_nonfinite(values: np.ndarray):
    bad = np.argwhere(~np.isfinite(values))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


def as_float_array(
    A,
    *,
    name: str = "A",
    ndim: int | tuple[int, ...] | None = None,
    dtype=None,
    allow_nonfinite: bool = False,
    allow_empty: bool = False,
    copy: bool = False,
    order: str | None = None,
) -> np.ndarray:
    """Coerce ``A`` to a floating ndarray under the dtype contract.

    Parameters
    ----------
    A : array_like
        Input data. Sparse matrices and :class:`LinearOperator` are rejected here; use
        :func:`as_sparse` or :func:`as_operator` for those.
    name : str, default="A"
        Name used in error messages.
    ndim : int or tuple of int, optional
        Required number of dimensions (or allowed set).
    dtype : dtype-like, optional
        Force this floating dtype instead of the contract's choice.
    allow_nonfinite : bool, default=False
        Skip the NaN/inf check.
    allow_empty : bool, default=False
        Accept arrays with a zero-length axis.
    copy : bool, default=False
        Always return a fresh array (use before writing into it).
    order : {"C", "F"}, optional
        Required memory layout.

    Returns
    -------
    numpy.ndarray
        float32 or float64 array; ``A`` itself when nothing had to change and
        ``copy=False``.

    Raises
    ------
    TypeError
        Sparse, operator, complex, object or string input.
    ValueError
        Wrong number of dimensions, empty input or non-finite entries.
    """
    if sp.issparse(A) or isinstance(A, LinearOperator):
        raise TypeError(f"{name} must be a dense array, got {type(A).__name__}")
    arr = np.asarray(A)
    if arr.dtype == object:
        raise TypeError(f"{name} must be numeric, got an array of dtype object")
    # The contract's check runs even when a dtype is forced: complex input must raise,
    # not lose its imaginary part in the cast.
    target = float_dtype(arr.dtype)
    if dtype is not None:
        target = np.dtype(dtype)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name} must be {want}-dimensional, got shape {arr.shape} ({arr.ndim}-D)"
            )
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    out = np.array(arr, dtype=target, order=order or "K", copy=copy or None)
    if order == "C" and not out.flags.c_contiguous:
        out = np.ascontiguousarray(out)
    elif order == "F" and not out.flags.f_contiguous:
        out = np.asfortranarray(out)
    if not allow_nonfinite and out.size and not np.isfinite(out).all():
        where = _first_nonfinite(out)
        raise ValueError(
            f"{name} must contain only finite values, found {out[where]} at index {where}"
        )
    return out


def as_sparse(A, *, name: str = "A", formats: tuple[str, ...] = ("csr", "csc")):
    """Validate a SciPy sparse array or matrix and return it in a supported format.

    Parameters
    ----------
    A : scipy.sparse array or matrix
        Input. Formats not in ``formats`` are converted to the first one (a copy);
        data are cast under the dtype contract; index arrays are left untouched.
    name : str, default="A"
        Name used in error messages.
    formats : tuple of str, default=("csr", "csc")
        Formats the caller has kernels for.

    Returns
    -------
    scipy.sparse.csr_array or scipy.sparse.csc_array (or matrix)
        With sorted, duplicate-free indices, floating data and the same shape.

    Raises
    ------
    TypeError
        Not sparse, or complex data.
    ValueError
        Non-finite stored values or a zero-size dimension.
    """
    if not sp.issparse(A):
        raise TypeError(f"{name} must be a scipy.sparse array or matrix, got {type(A).__name__}")
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional, got shape {A.shape}")
    if 0 in A.shape:
        raise ValueError(f"{name} must be non-empty, got shape {A.shape}")
    target = float_dtype(A.dtype)
    out = A if A.format in formats else A.asformat(formats[0])
    if out.dtype != target:
        out = out.astype(target)
    if not out.has_canonical_format:
        # Kernels assume sorted, duplicate-free indices; never fix the caller's object.
        out = out.copy() if out is A else out
        out.sum_duplicates()
    if out.nnz and not np.isfinite(out.data).all():
        raise ValueError(
            f"{name} must contain only finite values, found non-finite stored entries"
        )
    return out


def as_operator(A, *, name: str = "A") -> LinearOperator:
    """Return ``A`` as a :class:`scipy.sparse.linalg.LinearOperator`.

    Dense and sparse inputs are validated (finite, real) before wrapping with
    :func:`scipy.sparse.linalg.aslinearoperator`; operators are passed through after a
    dtype check.

    Raises
    ------
    TypeError
        Unsupported type or complex dtype.
    ValueError
        Not 2-D, empty, or non-finite entries.
    """
    if isinstance(A, LinearOperator):
        if len(A.shape) != 2 or 0 in A.shape:
            raise ValueError(f"{name} must be a non-empty 2-D operator, got shape {A.shape}")
        float_dtype(A.dtype if A.dtype is not None else np.float64)
        return A
    if sp.issparse(A):
        return aslinearoperator(as_sparse(A, name=name))
    return aslinearoperator(as_float_array(A, name=name, ndim=2))


def check_rng(rng) -> np.random.Generator:
    """Normalise ``rng`` to a :class:`numpy.random.Generator` (SPEC 7).

    Parameters
    ----------
    rng : None, int, array_like of int, SeedSequence, BitGenerator or Generator
        ``None`` draws fresh OS entropy; a Generator is returned as is (shared state).

    Raises
    ------
    TypeError
        Legacy :class:`numpy.random.RandomState` or another unsupported type.
    """
    if isinstance(rng, np.random.RandomState):
        raise TypeError(
            "rng must be None, an int, a SeedSequence, a BitGenerator or a Generator; "
            "the legacy RandomState is not accepted (use np.random.default_rng(seed))"
        )
    if isinstance(rng, bool | float):
        raise TypeError(f"rng must be None, an int seed or a Generator, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"rng must be None, an int seed, a SeedSequence, a BitGenerator or a Generator, "
            f"got {type(rng).__name__}"
        ) from exc


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Validate an integer parameter within ``[minimum, maximum]``.

    Raises
    ------
    TypeError
        Not an integer (bools and floats are rejected, even 3.0).
    ValueError
        Out of range; the message states the range and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name}={value} must satisfy {minimum} <= {name} <= {maximum}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} must be <= {maximum}")
    return value


def check_rank(rank, shape: tuple[int, ...], *, name: str = "rank") -> int:
    """Validate a target rank: ``1 <= rank <= min(shape)``."""
    return check_int(rank, name, minimum=1, maximum=min(shape))


def check_option(value, options, name: str):
    """Validate a strategy name against the allowed ``options`` (dict keys or iterable).

    Returns ``options[value]`` for a dict (dispatch table), else ``value``.
    """
    allowed = list(options)
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(o) for o in allowed)
        raise ValueError(f"{name}={value!r} is not one of {listed}")
    return options[value] if isinstance(options, dict) else value


def check_real(
    value,
    name: str,
    *,
    lower: float | None = None,
    upper: float | None = None,
    open_left: bool = True,
    open_right: bool = True,
) -> float:
    """Validate a finite real number, optionally in an interval (ends open unless told).

    Raises
    ------
    TypeError
        Not a real number (bools are rejected).
    ValueError
        Not finite, or outside the interval; the message states the range and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    above = lower is None or (value > lower if open_left else value >= lower)
    below = upper is None or (value < upper if open_right else value <= upper)
    if np.isfinite(value) and above and below:
        return value
    if lower is None and upper is None:
        raise ValueError(f"{name}={value} must be finite")
    if upper is None:
        raise ValueError(
            f"{name}={value} must be a finite number {'>' if open_left else '>='} {lower:g}"
        )
    if lower is None:
        raise ValueError(
            f"{name}={value} must be a finite number {'<' if open_right else '<='} {upper:g}"
        )
    if open_left and open_right:
        raise ValueError(f"{name}={value} must lie in the open interval ({lower:g}, {upper:g})")
    lb = "(" if open_left else "["
    rb = ")" if open_right else "]"
    raise ValueError(f"{name}={value} must lie in {lb}{lower:g}, {upper:g}{rb}")


def check_probability(
    value, name: str, *, open_left: bool = True, open_right: bool = True
) -> float:
    """Validate a probability-like float in (0, 1) (ends closed on request)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    lo_ok = value > 0 if open_left else value >= 0
    hi_ok = value < 1 if open_right else value <= 1
    if not (lo_ok and hi_ok and np.isfinite(value)):
        lo = "(" if open_left else "["
        hi = ")" if open_right else "]"
        raise ValueError(f"{name}={value} must lie in {lo}0, 1{hi}")
    return value
