"""A DataTable of rows where Home and End go to the first and last row.

Under a row cursor DataTable's own Home and End scroll sideways and leave the
cursor where it was, so the next action (open, cancel, tag) hit a row nobody meant.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class RowTable(DataTable):
    BINDINGS = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]
