"""attention: softmax-attention approximations with error bounds, on the ``rnla`` core.

Softmax attention is ``Y = Z^{-1} A V`` with ``A = exp(Q K^T * scale)`` and
``Z = diag(A 1)``. Every method of the survey arXiv:2604.01757 is a structured
approximation of ``A`` and ``Z``; :func:`approximate` runs one by name and returns its
output with an error bound (or None where no theory exists), and :func:`certify` gives
an a-posteriori certificate for any output.

Where each method lives (run any of them by name through :func:`approximate`;
:func:`methods` lists them with their defaults):

======  ===========================  ====================================================
Survey  Module                       Methods (registered names, or functions)
======  ===========================  ====================================================
§2.1    :mod:`attention.exact`       ``exact``
§3      :mod:`attention.sparse`      ``topk``, ``window``, ``bigbird``
§3.2    :mod:`attention.clustering`  ``reformer``, ``routing``, ``smyrf``, ``multipole``
§3.3    :mod:`attention.sampling`    ``hyperattention``, ``kdeformer``, ``prescoring``
§3      :mod:`attention.adaptive`    ``adaptive``: tolerance-driven, certified
                                     ``||Y - Y~||_F <= tol ||Y||_F``
§4      :mod:`attention.lowrank`     ``loki``, ``skyformer``, ``wildcat``, ``linformer``,
                                     ``nystromformer``, ``csalr``, ``rsvd_oracle``
§5      :mod:`attention.kernel`      kernel methods: ``performer``, ``scatterbrain``,
                                     ``taylor``, ``polysketch``, ``tensorsketch``,
                                     ``levattention``
§6      :mod:`attention.latent`      MLA and MHA/GQA to MLA conversion (functions)
§7      :mod:`attention.tensor`      CP/Tucker/TT weight compression, tensorised
                                     attention (functions)
======  ===========================  ====================================================

Error bounds and the sampled-row certificate are in :mod:`attention.bounds`, the
implicit softmax matrix in :mod:`attention.softmax_matrix`, shipped real samples in
:mod:`attention.data`. Certified decoding over a key/value cache that keeps block
summaries (reads fewer bytes than exact attention): :class:`attention.kvcache.KVCache`.
"""

from attention import bounds, latent, tensor
from attention._core import AttentionApprox, Cost, ErrorBound, relative_error
from attention._registry import MethodInfo, approximate, methods
from attention.bounds import Certificate, certify
from attention.exact import merge_partials, reference_attention, softmax_attention
from attention.kvcache import KVCache
from attention.softmax_matrix import SoftmaxMatrix

__all__ = [
    "AttentionApprox",
    "Certificate",
    "Cost",
    "ErrorBound",
    "KVCache",
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
