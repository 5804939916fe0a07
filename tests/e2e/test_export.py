from __future__ import annotations

import csv
import io

from app.export import BASE_COLUMNS, export
from app.ingest import Ingester
from app.queries import list_runs


def test_wide_and_history_csv_of_a_real_run(ws, copy_run, tmp_path):
    rd = copy_run(ws.root)
    Ingester(ws).run_pass()
    out = tmp_path / "runs.csv"
    with ws.store.read() as s:
        assert export(s, list_runs(s), str(out)) == 1
    rows = list(csv.DictReader(out.open()))
    (row,) = rows
    header = list(rows[0])
    assert header[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert row["run_id"] == rd.name and row["status"] == "succeeded" and row["kind"] == "train-expert"
    assert float(row["duration_s"]) > 0 and row["created_at"][:4] == "20" + rd.name[:2]
    assert row["config.loss"] == "ce" and row["config.epochs"] == "3" and row["config.lr_milestones"] == "[2]"
    assert 0 <= float(row["best.val/balanced_acc"]) <= 1
    assert float(row["best.val/balanced_acc"]) >= float(row["final.val/balanced_acc"])
    assert float(row["best.train/loss"]) <= float(row["final.train/loss"])
    assert "final.test/acc" in row  # the summary metrics of the best model
    assert not list(tmp_path.glob(".*.tmp"))

    hist = tmp_path / "hist.csv"
    with ws.store.read() as s:
        n = export(s, list_runs(s), str(hist), history=True)
    lines = list(csv.DictReader(hist.open()))
    assert len(lines) == n and set(lines[0]) == {"run_id", "epoch", "key", "value"}
    epochs = {int(l["epoch"]) for l in lines if l["epoch"]}
    assert epochs == {1, 2, 3}
    assert any(l["epoch"] == "" and l["key"] == "test/acc" for l in lines)


def test_export_to_stdout(ws, copy_run, capsys):
    copy_run(ws.root)
    Ingester(ws).run_pass()
    with ws.store.read() as s:
        export(s, list_runs(s), "-")
    text = capsys.readouterr().out
    assert text.startswith("run_id,name,kind,status,error,created_at,duration_s,git_commit,config.")
    assert len(list(csv.reader(io.StringIO(text)))) == 2
