"""MkDocs hook: fills the generated pages (``<!-- generated: NAME -->``) from the code (allam_jax/reference.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from allam_jax import reference  # noqa: E402

_GENERATORS = {"config-reference": reference.config_reference, "flags": reference.flags_reference}


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    for name, generate in _GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
