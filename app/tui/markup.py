"""Text from a person or from disk shown as it is, never read as markup.

Static, Label, Confirm and toasts parse a str as Textual markup, and DataTable parses a str cell
as Rich markup: a run named or noted "[/]" ended the TUI (MarkupError), and "[b]" in a tag
turned the rest of the line bold. Escaping is not enough: ``textual.markup.escape`` follows
Rich's rule (a tag starts with a-z, #, / or @) while Textual's parser takes any "[", so
"status=[/b" still ended the TUI through it and "[B]x" lost its "[B]"; and a value ending in a
backslash escapes the closing tag after it. So values never become markup text:

- ``markup("[b]$run_id[/b]  $name", run_id=..., name=...)``: our markup, each ``$name`` a
  value put in as plain text after the markup is parsed (Textual's template variables);
- ``cell(value)``: a DataTable cell as plain Text;
- ``notify(..., markup=False)`` and ``Static(..., markup=False)`` where nothing is styled.

Both also show control characters as U+FFFD: an ESC in a run's name or notes would otherwise
reach the terminal as the start of an escape sequence (Textual strips only BEL, BS, VT, FF, CR).
"""

from __future__ import annotations

from rich.text import Text
from textual.content import Content

from app.controls import CONTROLS

_CONTROLS = dict.fromkeys(CONTROLS, "\ufffd")


def shown(value: object) -> str:
    """``value`` as text with its control characters made visible (U+FFFD)."""
    return str(value).translate(_CONTROLS)


def markup(template: str, **values: object) -> Content:
    """``template`` (our own markup) with each ``$key`` replaced by ``values[key]`` as it is."""
    return Content.from_markup(template, **{k: shown(v) for k, v in values.items()})


def cell(value: object) -> Text:
    """A DataTable cell showing ``value`` as it is, cut at the column's edge as a str cell is."""
    return Text(shown(value), no_wrap=True, end="")
