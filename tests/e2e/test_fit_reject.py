"""fit-reject end to end on the embedded digits: two tiny real experts, their calibrated logits
(recompute-logits), a gate over them (train-gating), then the rejectors over the gate's run."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import TINY, engine, read_events, run_dirs


def _ok(out):
    assert out.returncode == 0, out.stderr[-3000:]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory, finished_run_dir):
    ws = tmp_path_factory.mktemp("reject")
    _ok(engine(ws / "experts", *TINY, "--loss", "balanced_softmax", "--seed", "1"))
    (second,) = run_dirs(ws / "experts")
    _ok(engine(ws, "recompute-logits", "--experts", f"{finished_run_dir},{second}"))
    (logits,) = run_dirs(ws)
    _ok(engine(ws, "train-gating", "--preset", "quick", "--epochs", "2", "--logits-dir", logits.name,
               "--experts", "ce,balanced_softmax"))
    gate = next(rd for rd in run_dirs(ws) if rd != logits)
    return ws, logits, gate


@pytest.fixture(scope="module")
def reject_run(gate_run):
    ws, logits, gate = gate_run
    out = engine(ws, "fit-reject", "--preset", "quick", "--gating-run", gate.name)
    _ok(out)
    (rd,) = [p for p in run_dirs(ws) if p not in (logits, gate)]
    return out, rd


def test_fit_reject_over_a_gating_run_writes_every_output(gate_run, reject_run):
    ws, logits, gate = gate_run
    out, rd = reject_run
    art = rd / "artifacts" / "reject"
    sources = ["gate", "uniform", "ce", "balanced_softmax"]
    methods = ["chow", "plugin_balanced", "plugin_worst"]
    curves = _rows(art / "curves.csv")
    assert len(curves) == len(sources) * len(methods) * 3 * 17
    assert {(r["source"], r["method"], r["split"]) for r in curves} == {
        (s, m, split) for s in sources for m in methods for split in ("tunev", "val", "test")}
    sizes = {"tunev": 80, "val": 80, "test": 640}  # 8 + 8 + 64 held-out digits per class
    for r in curves:
        assert abs(float(r["rejection_rate"]) - float(r["target_rate"])) <= 1 / sizes[r["split"]] + 1e-9
        assert 0 <= float(r["balanced_error"]) <= float(r["worst_error"]) <= 1
    aurc = _rows(art / "aurc.csv")
    assert len(aurc) == len(sources) * len(methods) * 3
    fit = json.loads((art / "fit.json").read_text())
    assert fit["inputs"]["gating_run"] == gate.name and fit["inputs"]["checkpoint"] == "best_gating.pth"
    assert fit["inputs"]["logits_dir"] == str(logits / "artifacts" / "logits")
    assert fit["groups"]["counts_from"].startswith("class counts of the experts' train split")
    assert fit["groups"]["names"] == ["head", "tail"] and fit["groups"]["classes"]["tail"]  # digits IF10: a real tail
    assert fit["splits"]["samples"] == sizes and fit["convention"]["axis"] == "target_rate"
    assert set(fit["fits"]) == set(sources) and all(set(v) == set(methods) for v in fit["fits"].values())
    assert (art / "risk_coverage.png").stat().st_size > 1000
    events = read_events(rd)
    summary = next(e for e in events if e["type"] == "summary")["metrics"]
    test_rows = {(a["source"], a["method"]): a for a in aurc if a["split"] == "test"}
    for (s, m), a in test_rows.items():
        assert summary[f"test/aurc_balanced/{s}/{m}"] == pytest.approx(float(a["aurc_balanced"]), abs=1e-5)
        assert summary[f"test/aurc_worst/{s}/{m}"] == pytest.approx(float(a["aurc_worst"]), abs=1e-5)
    assert summary["test/aurc_worst"] == pytest.approx(min(float(a["aurc_worst"]) for a in test_rows.values()), abs=1e-5)
    (verdict,) = [e for e in events if e["type"] == "verdict"]
    assert verdict["split"] == "test" and "the gate's posterior" in verdict["text"] and verdict["text"] in out.stdout
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "succeeded"


def test_the_gate_needs_its_own_experts_and_digits_have_no_many_shot_group(gate_run):
    ws, logits, gate = gate_run
    out = engine(ws, "fit-reject", "--gating-run", gate.name, "--experts", "ce")
    assert out.returncode == 2 and "differ from the experts of gate" in out.stderr.strip().splitlines()[-1]
    out = engine(ws, "fit-reject", "--logits-dir", str(logits), "--groups", "many-medium-few")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("failed: group 'many' of --groups many-medium-few has no class")


async def test_the_run_screen_plots_error_against_rejection_rate_from_sqlite(gate_run, reject_run):
    """The run screen of a fit-reject run: balanced and worst-group error over the achieved rejection
    rate, a curve per method, for one source at a time (s cycles); no loss or accuracy boxes."""
    from app.ingest import Ingester
    from app.tui.app import MoeTuiApp
    from app.tui.screens.run import RunScreen
    from app.tui.widgets.curves import Curves
    from app.workspace import Workspace
    from tests.tui_support import screen_text, settle

    ws_path, _, _ = gate_run
    _, rd = reject_run
    ws = Workspace.open(ws_path)
    Ingester(ws).run_pass()
    curves = {}
    for r in _rows(rd / "artifacts" / "reject" / "curves.csv"):
        if r["split"] == "test":
            curves.setdefault((r["source"], r["method"]), []).append(
                (float(r["rejection_rate"]), float(r["balanced_error"]), float(r["worst_error"])))
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        (pk,) = [pk for pk, row in app.runs.items() if row.run_id == rd.name]
        assert app.runs[pk].kind == "fit-reject"
        await app.push_screen(RunScreen(pk))
        await settle(app, pilot, 1.2)
        screen = app.screen
        assert screen.query_one("#reject-row").display and not screen.query_one("#main-row").display
        for source in ("gate", "uniform", "ce", "balanced_softmax"):
            balanced = screen.query_one("#reject-balanced", Curves)
            worst = screen.query_one("#reject-worst", Curves)
            assert balanced.title_text == f"balanced error · {source}" and balanced.xlabel == "rejection rate"
            for method in ("chow", "plugin_balanced", "plugin_worst"):
                want = curves[(source, method)]
                flat = lambda pts: [v for pt in pts for v in pt]  # noqa: E731
                assert flat(balanced.points[method]) == pytest.approx(flat((x, b) for x, b, _ in want), abs=1e-6)
                assert flat(worst.points[method]) == pytest.approx(flat((x, w) for x, _, w in want), abs=1e-6)
            assert f"source {source}" in screen_text(app)
            await pilot.press("s")
            await settle(app, pilot)
        assert screen.query_one("#reject-balanced", Curves).title_text == "balanced error · gate"  # round again
    ws.store.close()


async def test_compare_overlays_the_error_curves_of_fit_reject_runs(gate_run, reject_run):
    """Compare → Curves over two fit-reject runs: one error curve per run over its achieved rate; the
    same source and method fitted twice draws the same curve twice."""
    from app.ingest import Ingester
    from app.tui.app import MoeTuiApp
    from app.tui.screens.compare import CompareScreen
    from app.tui.widgets.curves import Curves
    from app.workspace import Workspace
    from tests.tui_support import settle

    ws_path, logits, gate = gate_run
    _, rd = reject_run
    _ok(engine(ws_path, "fit-reject", "--preset", "quick", "--logits-dir", logits.name, "--source", "uniform",
               "--methods", "chow"))
    (other,) = [p for p in run_dirs(ws_path) if p.name > rd.name and (p / "artifacts" / "reject").is_dir()]
    ws = Workspace.open(ws_path)
    Ingester(ws).run_pass()
    want = [(float(r["rejection_rate"]), float(r["balanced_error"]))
            for r in _rows(rd / "artifacts" / "reject" / "curves.csv")
            if (r["split"], r["source"], r["method"]) == ("test", "uniform", "chow")]
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        pks = [pk for pk, row in app.runs.items() if row.run_id in (rd.name, other.name)]
        screen = CompareScreen(sorted(pks))
        await app.push_screen(screen)
        await settle(app, pilot)
        assert screen.rejects and screen.metric_keys[0] == "test/balanced_error/uniform/chow"  # the keys both have
        plot = screen.query_one("#compare-plot", Curves)
        assert plot.xlabel == "rejection rate" and len(plot.points) == 2
        flat = lambda pts: [v for pt in pts for v in pt]  # noqa: E731
        for pts in plot.points.values():
            assert flat(pts) == pytest.approx(flat(want), abs=1e-6)
    ws.store.close()
