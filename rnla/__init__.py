"""rnla: randomized numerical linear algebra, Numba-compiled.

Sketching operators and samplers (:mod:`rnla.sketch`), operator protocols
(:mod:`rnla.operators`), a-posteriori estimators (:mod:`rnla.estimate`) and closed-form
bounds (:mod:`rnla.bounds`).
"""

from rnla._validation import AccuracyWarning, ConvergenceWarning, RNLAWarning

__version__ = "0.1.0.dev0"

__all__ = ["AccuracyWarning", "ConvergenceWarning", "RNLAWarning", "__version__"]
