"""Sphinx configuration of the sapg-torchrl docs."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "sapg-torchrl"
author = "sapg-torchrl developers"
release = "0.1.0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinx.ext.intersphinx"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
intersphinx_mapping = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
# TorchRL/tensordict/torch types in signatures are not cross-referenced (no intersphinx offline)
nitpicky = False
suppress_warnings = ["ref.python"]
