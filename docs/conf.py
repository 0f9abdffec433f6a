"""Sphinx configuration for rnla-attention.

Build (as in CI)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The build needs no network: intersphinx is off and MathJax is only referenced by URL
from the generated HTML.
"""

import os
import sys

# Import the package from the source tree even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

import rnla

project = "rnla-attention"
author = "rnla-attention developers"
copyright = "rnla-attention developers"
release = rnla.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

templates_path = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"

# -- autodoc / autosummary ---------------------------------------------------------------
autosummary_generate = True  # stubs go to docs/api/generated (gitignored)
autosummary_imported_members = False
autodoc_default_options = {"members": False, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc "Parameters" sections document the types

# -- numpydoc ----------------------------------------------------------------------------
# Class pages list no member tables: autosummary already documents the public names and
# member tables of LinearOperator subclasses would duplicate SciPy's methods.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- doctest -----------------------------------------------------------------------------
doctest_global_setup = """
import numpy as np
np.set_printoptions(precision=4, suppress=True)
"""

# -- HTML --------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"rnla-attention {release}"
html_static_path = []

nitpicky = False
