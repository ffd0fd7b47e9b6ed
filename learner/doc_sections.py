"""Sections of a Markdown report that can be rewritten one at a time.

Each benchmark (and the drift drill) writes its own section of a document between
``<!-- name -->`` and ``<!-- /name -->`` markers, so one can be rerun without the others.
"""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(text: str, section: str, name: str = "bench:step-cost") -> str:
    """``text`` with the part between the markers of section ``name`` replaced by ``section``.

    The markers are ``<!-- name -->`` and ``<!-- /name -->``. Without them the section is
    appended (markers included); the rest is kept as is.
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    if start in text or end in text:
        raise ValueError(f"unbalanced markers {start} / {end}")
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"


def write_section(path: Path, section: str, name: str = "bench:step-cost") -> None:
    """Replace (or append) the section ``name`` of the file at ``path``."""
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_section(text, section, name))
