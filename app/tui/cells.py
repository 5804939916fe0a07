"""Text cut to a table cell's width, always showing that it was cut (a cut value must never
read as a whole one: "mheight-fine" was once read as a job kind of its own)."""

from __future__ import annotations


def cut(text: str, width: int) -> str:
    """``text`` in ``width`` columns, its end replaced by "…" when it had to be cut (names, kinds)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def cut_middle(text: str, width: int) -> str:
    """``text`` in ``width`` columns, cut in the middle, where paths and metric keys differ least."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"
