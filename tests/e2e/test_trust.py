"""Trust (``--trust-pickle``) comes only from a person typing it: not from a pipeline file, a sweep
or a queued run's stored arguments, which a retry would otherwise carry over."""

from __future__ import annotations

import json

from tests.e2e.test_cli import one_line_error
from tests.helpers import moe, run_dirs
from tests.unit.test_mheight_import import hostile_folder


def test_a_pipeline_step_cannot_give_trust(ws_path, tmp_path):
    folder, marker = hostile_folder(tmp_path)
    spec = tmp_path / "innocent.yaml"
    spec.write_text(json.dumps({"name": "innocent", "steps": {
        "imp": {"args": ["mheight-import", "--trust-pickle", "--source", str(folder)]}}}))
    line = one_line_error(moe(ws_path, "pipeline", str(spec)))
    assert "step 'imp': --trust-pickle cannot come from a pipeline file" in line and "moe-tui submit --" in line
    assert not run_dirs(ws_path) and not marker.exists()


def test_a_sweep_cannot_give_trust(ws_path, tmp_path):
    folder, marker = hostile_folder(tmp_path)
    line = one_line_error(moe(ws_path, "submit", "--sweep", "trust_pickle=true,false", "--",
                              "mheight-import", "--source", str(folder)))
    assert "sets trust_pickle" in line and "pass --trust-pickle" in line
    assert not run_dirs(ws_path) and not marker.exists()


def test_a_retry_asks_for_trust_again(ws_path, tmp_path):
    folder, marker = hostile_folder(tmp_path)
    out = moe(ws_path, "submit", "--", "mheight-import", "--trust-pickle", "--source", str(folder))
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[1]
    moe(ws_path, "wait", run_id, "--timeout", "170")  # it fails: the pickle is no DataFrame
    assert marker.exists()  # typed at submit: the queued run was trusted
    marker.unlink()

    line = one_line_error(moe(ws_path, "retry", run_id))
    assert "was given --trust-pickle; a retry does not carry trust over" in line
    assert f"moe-tui retry {run_id} --trust-pickle" in line
    assert "has no option --frobnicate" in one_line_error(moe(ws_path, "retry", run_id, "--frobnicate"))
    assert len(run_dirs(ws_path)) == 1

    out = moe(ws_path, "retry", run_id, "--trust-pickle")
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.split()[1]
    moe(ws_path, "wait", new_id, "--timeout", "170")
    assert marker.exists()
    assert json.loads((ws_path / "runs" / new_id / "submit.json").read_text())["argv"].count("--trust-pickle") == 1
