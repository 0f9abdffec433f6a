"""attention: softmax-attention approximations with error bounds, on the ``rnla`` core.

Softmax attention is ``Y = Z^{-1} A V`` with ``A = exp(Q K^T * scale)`` and
``Z = diag(A 1)``. Every method of the survey arXiv:2604.01757 is a structured
approximation of ``A`` and ``Z``; :func:`approximate` runs one by name and returns its
output with an error bound (or None where no theory exists), and :func:`certify` gives
an a-posteriori certificate for any output.
"""

from attention import bounds, latent, tensor
from attention._core import AttentionApprox, Cost, ErrorBound, relative_error
from attention._registry import MethodInfo, approximate, methods
from attention.bounds import Certificate, certify
from attention.exact import merge_partials, reference_attention, softmax_attention
from attention.softmax_matrix import SoftmaxMatrix

__all__ = [
    "AttentionApprox",
    "Certificate",
    "Cost",
    "ErrorBound",
    "MethodInfo",
    "SoftmaxMatrix",
    "approximate",
    "bounds",
    "certify",
    "latent",
    "merge_partials",
    "methods",
    "reference_attention",
    "relative_error",
    "softmax_attention",
    "tensor",
]
