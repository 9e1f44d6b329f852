"""Sphinx configuration of the sapg-torchrl docs.

``docs/_generated/config_reference.rst`` is written here from the config schema (:mod:`sapg_torchrl.app.schema`) at
every build, and the examples of ``docs/examples/`` are executed by sphinx-gallery into ``docs/auto_examples/``
(``-D plot_gallery=0`` builds their pages without running them).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath(".."))

from sapg_torchrl.app.schema import reference_rst  # noqa: E402

HERE = Path(__file__).resolve().parent
(HERE / "_generated").mkdir(exist_ok=True)
(HERE / "_generated" / "config_reference.rst").write_text(reference_rst())

project = "sapg-torchrl"
author = "sapg-torchrl developers"
release = "0.1.0"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "sphinx_gallery.gen_gallery",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
intersphinx_mapping = {}
exclude_patterns = ["_build", "_generated", "examples", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
html_theme = "furo"
html_title = "sapg-torchrl"
# TorchRL/tensordict/torch types in signatures are not cross-referenced (no intersphinx offline)
nitpicky = False
suppress_warnings = ["ref.python"]

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,  # a broken example fails the build
    "write_computation_times": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib",),
}
