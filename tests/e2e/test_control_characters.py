"""Text from a run reaches a terminal through moe-tui's commands with its control characters
escaped (``\\x1b``): an ESC in a name would retitle or clear the terminal, a newline break ls's table."""

from __future__ import annotations

import re

from tests.helpers import engine, moe

NAME = "run\x1b]0;owned\x07 \x1b[2Jcleared\nnext\x9b1m"
SHOWN = "run\\x1b]0;owned\\x07 \\x1b[2Jcleared\\nnext\\x9b1m"
# Control characters but the newline that ends each printed line
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def clean(out) -> str:
    text = out.stdout + out.stderr
    assert not RAW.search(text), repr(text)
    return text


def test_names_notes_and_errors_print_escaped(ws_path):
    assert moe(ws_path, "pause").returncode == 0  # queued, never started
    out = moe(ws_path, "submit", "--name", NAME, "--", "mheight-import", "--source", "/x")
    assert out.returncode == 0, out.stderr
    assert SHOWN in clean(out)
    run_id = out.stdout.split()[1]
    out = moe(ws_path, "note", run_id, "see\x1b[2J\tthis")
    assert out.returncode == 0 and "see\\x1b[2J\\tthis" in clean(out)
    out = moe(ws_path, "tag", run_id, "a\x1b[31m")
    assert out.returncode == 0 and "a\\x1b[31m" in clean(out)

    # a headless run whose error quotes its bad --source
    failed = engine(ws_path, "mheight", "import", "--trust-pickle", "/no\x1b]0;such\x07folder")
    assert failed.returncode == 2
    ls = moe(ws_path, "ls")
    assert ls.returncode == 0 and SHOWN in clean(ls)
    assert "--source /no\\x1b]0;such\\x07folder is not a folder" in ls.stdout
    assert len(ls.stdout.splitlines()) == 3  # the header and one line a run
    show = moe(ws_path, "show", run_id)
    assert show.returncode == 0 and SHOWN in clean(show)
    err = moe(ws_path, "show", "\x1b[2J")
    assert err.returncode == 2 and "\\x1b[2J" in clean(err)
