from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY, engine, kill_workspace_processes, run_dirs


@pytest.fixture
def ws_path(tmp_path: Path):
    """An empty workspace directory; its daemon and jobs are stopped afterwards."""
    path = tmp_path / "ws"
    path.mkdir()
    yield path
    kill_workspace_processes(path)


@pytest.fixture
def ws(ws_path: Path):
    from app.workspace import Workspace

    w = Workspace.open(ws_path)
    yield w
    if "store" in w.__dict__:
        w.store.close()


@pytest.fixture(scope="session")
def finished_run_dir(tmp_path_factory) -> Path:
    """One real, finished tiny training run (trained once per session)."""
    root = tmp_path_factory.mktemp("trained")
    out = engine(root, *TINY)
    assert out.returncode == 0, out.stderr
    (rd,) = run_dirs(root)
    return rd


@pytest.fixture
def copy_run(finished_run_dir):
    """Copy the session's finished run into a workspace (as a fresh run id if asked)."""

    def copy(ws_root: Path, run_id: str | None = None) -> Path:
        dest = Path(ws_root) / "runs" / (run_id or finished_run_dir.name)
        shutil.copytree(finished_run_dir, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def data_run(tmp_path_factory) -> Path:
    """A real m-height generate run, read-only for the tests that train and evaluate on it:
    n in {6, 7}, k = 3, m from 1, 150 codes per (n, k) (~800 labels)."""
    ws = tmp_path_factory.mktemp("mhdata")
    out = engine(ws, "mheight", "generate", "--n-values", "6,7", "--k-values", "3", "--m-min", "1",
                 "--codes-per-group", "150", "--shard-size", "75", "--workers", "1")
    assert out.returncode == 0, out.stderr
    (rd,) = run_dirs(ws)
    return rd
