"""The moe-tui and engine command lines: answers, and one-line errors with a non-zero exit."""

from __future__ import annotations

import csv
import io
import json

from tests.helpers import engine, moe


def one_line_error(out) -> str:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_ls_show_export_on_a_real_run(ws_path, copy_run):
    rd = copy_run(ws_path)
    out = moe(ws_path, "ls")
    assert out.returncode == 0, out.stderr
    assert rd.name in out.stdout and "succeeded" in out.stdout and "3/3" in out.stdout
    assert "val/balanced_acc" in out.stdout
    show = moe(ws_path, "show", rd.name[:15])
    assert show.returncode == 0 and "status    succeeded" in show.stdout and "val/balanced_acc" in show.stdout
    lines = show.stdout.splitlines()
    top = lines.index("config")
    head = next(i for i, l in enumerate(lines) if l.startswith("metrics "))
    stop = next((i for i, l in enumerate(lines) if l.startswith("log ")), len(lines))
    # every value starts in one column, however long the name before it
    config = [l for l in lines[top + 1:head] if len(l.split()) >= 2]
    assert len({l.index(l.split()[1], 2 + len(l.split()[0])) for l in config}) == 1, config
    final_end = lines[head].index("final") + len("final")
    metrics = lines[head + 1:stop]
    assert metrics and {l.index(l.split()[1], 2 + len(l.split()[0])) + len(l.split()[1]) for l in metrics} == {final_end}
    csv_out = moe(ws_path, "export", "--out", "-")
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [r["run_id"] for r in rows] == [rd.name]


def test_unknown_loss(ws_path):
    assert "--loss 'focal' is not one of: ce, logit_adjust, balanced_softmax, decoupling, moe_head" in one_line_error(moe(ws_path, "submit", "--", "train-expert", "--loss", "focal"))
    assert "--loss 'focal' is not one of: ce, logit_adjust, balanced_softmax, decoupling, moe_head" in one_line_error(engine(ws_path, "train-expert", "--loss", "focal"))
    assert not (ws_path / "runs").exists() or not any((ws_path / "runs").iterdir())  # nothing half-made


def test_unwritable_workspace(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = one_line_error(moe(blocker / "ws", "ls"))
    assert "is not writable" in line and "--workspace" in line
    line = one_line_error(engine(blocker / "ws", "train-expert", "--preset", "quick"))
    assert "cannot create a run directory" in line


def test_read_only_workspace():
    # /proc refuses new directories even to root, so this holds when tests run as root
    assert "is not writable" in one_line_error(moe("/proc/1", "ls"))


def test_run_that_does_not_exist(ws_path):
    line = one_line_error(moe(ws_path, "show", "nope"))
    assert "no run 'nope'" in line and "moe-tui ls" in line
    assert "no run 'nope'" in one_line_error(moe(ws_path, "wait", "nope"))


def test_usage_errors_are_one_line(ws_path):
    assert "--bogus" in one_line_error(moe(ws_path, "ls", "--bogus"))
    assert "Missing option" in one_line_error(moe(ws_path, "export"))
    assert "say what to run" in one_line_error(moe(ws_path, "submit"))
    assert "leave out --run-dir" in one_line_error(moe(ws_path, "submit", "--", "train-expert", "--run-dir", "/tmp/x"))


BINARY = bytes(range(128, 256)) * 4  # what a person names by mistake: a checkpoint, an image


def test_a_file_of_the_wrong_shape_is_one_line_naming_it(ws_path, tmp_path):
    toml = ws_path / "moe-tui.toml"
    for text, key in ((b"queue = 5\n", "queue"), (b'queue = "abc"\n', "queue")):
        toml.write_bytes(text)
        for args in (["daemon", "status"], ["submit", "--", "make-splits"]):
            out = moe(ws_path, *args)
            assert out.returncode == 2, out.stderr
            assert one_line_error(out).startswith(f"error: {toml}: {key}: should be a table of settings"), args
    toml.write_bytes(b"[queue]\ncpu_slots = 2  # caf\xe9 in Latin-1\n")
    assert one_line_error(moe(ws_path, "daemon", "status")) == \
        f"error: {toml} is not UTF-8 text (byte 0xe9 at offset 28); save it as UTF-8 or remove it"
    toml.unlink()

    binary = tmp_path / "steps.yaml"
    binary.write_bytes(BINARY)
    for args in (["pipeline", str(binary)], ["pipeline", "--print", str(binary)]):
        out = moe(ws_path, *args)
        assert out.returncode == 2
        assert one_line_error(out) == f"error: pipeline file {binary} is not UTF-8 text (byte 0x80 at offset 0); name a YAML or JSON file"
    for job in (["make-splits"], ["mheight", "train", "--data", str(tmp_path)]):
        out = engine(ws_path, *job, "--config", str(binary))
        assert out.returncode == 2
        assert one_line_error(out) == f"error: config file {binary} is not UTF-8 text (byte 0x80 at offset 0); name a YAML or JSON file"
    assert not (ws_path / "runs").exists() or not any((ws_path / "runs").iterdir()), "bad input starts nothing"


def test_a_run_dir_that_holds_a_run_is_refused_and_left_as_it_was(ws_path, copy_run):
    rd = copy_run(ws_path)
    (rd / "status.json").unlink()  # a run killed before its first status: still another job's run
    before = {p.name: p.read_bytes() for p in sorted(rd.iterdir()) if p.is_file()}
    for job in (["mheight", "train", "--data", str(rd)], ["train-expert"], ["make-splits"]):
        out = engine(ws_path, *job, "--run-dir", str(rd))
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
        assert line == f"error: {rd} already holds a run (run.json exists); start a new run instead"
    assert {p.name: p.read_bytes() for p in sorted(rd.iterdir()) if p.is_file()} == before, "not a byte of it written"


def test_export_refuses_a_directory(ws_path, copy_run):
    copy_run(ws_path)
    assert "is a directory" in one_line_error(moe(ws_path, "export", "--out", str(ws_path)))


def test_a_misspelt_status_or_kind_is_refused_not_an_empty_listing(ws_path, copy_run):
    copy_run(ws_path)
    target = ws_path / "runs.csv"
    err = one_line_error(moe(ws_path, "export", "--out", str(target), "--status", "runing"))
    assert "unknown --status 'runing'" in err and "running" in err
    assert not target.exists()
    err = one_line_error(moe(ws_path, "ls", "--kind", "gating"))
    assert "unknown --kind 'gating'" in err and "train-gating" in err
    out = moe(ws_path, "ls", "--status", "succeeded", "--kind", "train-expert")
    assert out.returncode == 0 and "train-expert" in out.stdout


def test_status_and_kind_take_a_beginning_as_the_tui_filter_does(ws_path, copy_run):
    """The filter took kind=recompute-lo and status=run; ls and export wanted the whole name."""
    rd = copy_run(ws_path)  # a succeeded train-expert run
    out = moe(ws_path, "ls", "--status", "succ", "--kind", "train-exp…")  # "…" as a cut cell shows it
    assert out.returncode == 0 and rd.name in out.stdout, out.stderr
    out = moe(ws_path, "export", "--out", "-", "--status", "SUCCEEDED", "--kind", "train-e")
    assert out.returncode == 0 and [r["run_id"] for r in csv.DictReader(io.StringIO(out.stdout))] == [rd.name]
    assert moe(ws_path, "ls", "--kind", "recompute-lo").returncode == 0  # recompute-logits: none here
    err = one_line_error(moe(ws_path, "ls", "--kind", "train-"))
    assert err == "error: --kind 'train-' could be train-expert or train-gating; type more of it"


def test_an_unknown_status_or_kind_names_the_closest_not_all(ws_path):
    err = one_line_error(moe(ws_path, "ls", "--kind", "trian-expert"))
    assert err == "error: unknown --kind 'trian-expert'; did you mean train-expert? `engine --help` lists every kind"
    err = one_line_error(moe(ws_path, "export", "--out", "-", "--status", "xx"))
    assert err == "error: unknown --status 'xx'; `moe-tui ls --help` lists every status"


def test_ls_help_lists_every_status(ws_path):
    """The unknown-status error sends people to `moe-tui ls --help`; its list is written out in
    app/cli.py (importing the store there would slow every command), so check it is whole."""
    from app.store.models import STATUSES

    out = moe(ws_path, "ls", "--help")
    words = set(out.stdout.replace(",", " ").replace(";", " ").split())
    assert out.returncode == 0 and set(STATUSES) <= words, out.stdout


def test_engine_help_lists_settings_with_defaults(ws_path):
    out = engine(ws_path, "train-expert", "--help")
    assert out.returncode == 0
    assert "--lr LR" in out.stdout and "[default: 0.1]" in out.stdout and "--preset {quick}" in out.stdout


def test_submit_runs_through_the_daemon_to_success(ws_path):
    out = moe(ws_path, "submit", "--name", "smoke", "--", "train-expert", "--preset", "quick", "--epochs", "1")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[1]
    w = moe(ws_path, "wait", run_id, "--timeout", "170")
    assert w.returncode == 0 and f"{run_id}  succeeded epoch 1/1" in w.stdout, w.stdout + w.stderr
    sub = json.loads((ws_path / "runs" / run_id / "submit.json").read_text())
    assert sub["name"] == "smoke" and sub["argv"] == ["train-expert", "--preset", "quick", "--epochs", "1"]
