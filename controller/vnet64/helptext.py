"""Docstrings as ``--help`` text: one place that strips their reStructuredText markup.

The programs' docstrings double as their help (description and epilog), written for
readers of the source: ````literal````, ``:func:`name```. A terminal shows the text
without the markup.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)


def plain(text: str) -> str:
    """``text`` with inline literals and roles reduced to their content."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def paragraphs(doc: str, first: int, last: int | None = None) -> str:
    """Paragraphs ``first`` up to ``last`` (exclusive; None = to the end) of a docstring,
    as plain text."""
    parts = doc.strip("\n").split("\n\n")
    return plain("\n\n".join(parts[first:last]))
