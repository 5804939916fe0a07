"""TuiData: the TUI's reads and writes, on real run directories and a real database."""

from __future__ import annotations

import pytest

from app.errors import UserError
from app.ingest import Ingester
from app.tui.data import TuiData
from engine.core.recorder import RunRecorder
from engine.core.rundir import RunDir


def test_runs_since_reads_only_changed_runs_and_carries_summaries(ws, copy_run):
    rd = copy_run(ws.root)
    Ingester(ws).run_pass()
    data = TuiData(ws)
    rows, rev = data.runs_since(0)
    (row,) = rows
    assert row.run_id == rd.name and row.progress == "3/3" and row.key_config == "ce/resnet8"
    assert row.metric_best == row.best["val/balanced_acc"] and "test/acc" in row.final
    assert data.runs_since(rev) == ([], rev)  # nothing changed: nothing read
    data.set_tags(row.pk, ("baseline",))
    rows, rev2 = data.runs_since(rev)
    assert rev2 > rev and [r.tags for r in rows] == [("baseline",)]


def test_metrics_and_log_are_read_incrementally(ws):
    rd = RunDir.create(ws.runs)
    with RunRecorder(rd, kind="train-expert", config={}, argv=["train-expert"], total_epochs=2) as rec:
        rec.log_epoch(1, {"train/loss": 1.0})
        rec.log_expert_load(1, ["e0", "e1"], [0.6, 0.4])
        Ingester(ws).run_pass()
        data = TuiData(ws)
        (row,), _ = data.runs_since(0)
        first = data.metrics_since(row.pk, 0)
        text, log_offset = data.read_log(rd.run_id, None)
        assert [(p.key, p.value) for p in first] == [("train/loss", 1.0), ("expert_load/e0", 0.6),
                                                     ("expert_load/e1", 0.4)]
        assert "epoch 1/2" in text
        rec.log_epoch(2, {"train/loss": 0.5})
    Ingester(ws).run_pass()
    new = data.metrics_since(row.pk, first[-1].id)
    assert [(p.epoch, p.value) for p in new] == [(2, 0.5)]
    more, _ = data.read_log(rd.run_id, log_offset)
    assert "epoch 2/2" in more and "epoch 1/2" not in more


def test_partial_log_line_waits_for_its_newline(ws):
    rd = RunDir.create(ws.runs)
    rd.stdout_log.write_text("one\ntw")
    data = TuiData(ws)
    text, offset = data.read_log(rd.run_id, None)
    assert text == "one\n" and offset == 4
    with open(rd.stdout_log, "a") as f:
        f.write("o\n")
    assert data.read_log(rd.run_id, offset) == ("two\n", 8)


def test_artifact_preview_stays_inside_artifacts(ws, copy_run):
    rd = copy_run(ws.root)
    data = TuiData(ws)
    on_disk = sorted(str(p.relative_to(rd / "artifacts")) for p in (rd / "artifacts").rglob("*") if p.is_file())
    listed = [name for name, _ in data.artifacts(rd.name)]
    assert listed == on_disk and {"class_groups.json", "reliability_ce.png", "splits/val.json"} <= set(listed)
    assert data.artifact_text(rd.name, "class_groups.json").startswith("{")
    assert "binary file" in data.artifact_text(rd.name, "reliability_ce.png")
    with pytest.raises(UserError, match="outside the run's artifacts"):
        data.artifact_text(rd.name, "../run.json")


def test_delete_refuses_active_runs_and_export_refuses_a_directory(ws, copy_run):
    copy_run(ws.root)
    Ingester(ws).run_pass()
    data = TuiData(ws)
    (row,), _ = data.runs_since(0)
    with pytest.raises(UserError, match="is a directory"):
        data.export_csv([row.pk], str(ws.root))
    from app.store.models import Run

    with ws.store.write() as s:
        run = s.get(Run, row.pk)
        run.status = "running"
        s.add(run)
    with pytest.raises(UserError, match="only finished runs can be deleted"):
        data.delete_run(row.pk)
    assert ws.run_dir(row.run_id).path.exists()
