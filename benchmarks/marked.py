"""Write a generated table into a Markdown page between ``<!-- table:NAME -->`` markers (the form
benchmarks/tables.py regenerates from committed JSON): the page's own text around the markers is kept; a missing
page is created around the table with ``title``."""

from __future__ import annotations

from pathlib import Path


def write_marked(page: Path, name: str, table: str, title: str) -> None:
    opening, closing = f"<!-- table:{name} -->\n", f"<!-- /table:{name} -->"
    text = page.read_text() if page.exists() else f"# {title}\n\n{opening}{closing}\n"
    before, found, rest = text.partition(opening)
    if not found or closing not in rest:
        raise SystemExit(f"{page}: no {opening.strip()} ... {closing} markers to write the table between")
    page.write_text(before + opening + table.strip("\n") + "\n" + closing + rest.split(closing, 1)[1])
