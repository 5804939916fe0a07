"""Control characters in text from a run or a person (names, notes, errors, commands, logs): which
they are, and how the command line shows them.

Sent to a terminal as they are, they act: ``ESC ]0;TITLE BEL`` retitles the window, ``ESC [2J``
clears it, a newline in a name breaks ``moe-tui ls``'s table. The TUI shows each as U+FFFD
(``app/tui/markup.py``: one cell a character keeps its columns); the command line prints each as
its Python escape (``\\x1b``, ``\\n``), which says which character it was and is plain ASCII.
"""

from __future__ import annotations

# C0 controls but tab and newline, DEL, and C1 (0x9b alone starts a sequence on some terminals)
CONTROLS = (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))

# On the command line a tab or newline in a value breaks its line or its columns as well.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*CONTROLS, 0x09, 0x0A)}


def escaped(value: object) -> str:
    """``value`` as one line of text for the command line, every control character escaped (``\\x1b``)."""
    return str(value).translate(_ESCAPES)
