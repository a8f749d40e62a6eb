"""Sphinx configuration of pint's documentation.

Build (offline, warnings are errors)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorials in ``docs/tutorials_src/plot_*.py`` run during the build (sphinx-gallery);
the benchmarks page reads ``benchmarks/results/`` at build time (``_ext/bench_results.py``);
``_ext/docstring_check.py`` fails the build when a public name has no docstring.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the repository's pint and adapters, installed or not
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tutorials are small: threads only add overhead

project = "pint"
author = "the pint authors"
copyright = "the pint authors"  # noqa: A001
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax from _static/mathjax, not a CDN: math renders offline
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "bench_results",
    "docstring_check",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials_src", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- API reference: autodoc + autosummary + napoleon (Google-style docstrings)
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as field lists: no duplicate object descriptions
napoleon_use_rtype = False

# the public names whose docstrings docstring_check requires (module: names or None for
# every public name defined in that module)
docstring_check_modules = {
    "pint": None,
    "pint.problems": None,
    "pint.problems.ode": None,
    "pint.problems.pde": None,
    "pint.problems.pde2d": None,
    "pint.problems.anchors": None,
    "pint.stopping": None,
    "pint.propagators": None,
    "adapters.diffusion": None,
    "adapters.diffusion.pretrained": None,
    "adapters.diffusers": None,
    "adapters.text_to_image": None,
    "adapters.bridge": None,
    "adapters.pipelines": None,
}

# --- pages in Markdown (MyST)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- tutorials: every docs/tutorials_src/plot_*.py runs during the build
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials_src"],
    "gallery_dirs": ["auto_tutorials"],
    "filename_pattern": r"/plot_",  # run these; other *.py files are shown without running
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "reference_url": {"pint": None},
    "min_reported_time": 1,
    "show_memory": False,
}

# --- HTML
html_theme = "furo"
html_title = "pint"
html_static_path: list[str] = []


def _quiet_diffusers() -> None:
    """diffusers logs loading hints (``accelerate`` missing, ...) that would clutter the
    tutorials' output; errors still show."""
    try:
        from diffusers.utils import logging as dlog
    except ImportError:
        return
    dlog.set_verbosity_error()


_quiet_diffusers()
