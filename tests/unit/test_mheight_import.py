"""engine mheight import: the users' pickled DataFrames, only with --trust-pickle."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from engine.mheight.shards import load_labels
from tests.helpers import engine, run_dirs

PUBLIC_P = [[0.4759809, 0.9938236, 0.819425], [-0.8960798, -0.7442706, 0.3345122]]


def _write_pickles(folder):
    folder.mkdir()
    (folder / "sub").mkdir()
    # P 2-D in one file, flat in another (both occur in the users' folders)
    pd.DataFrame({"n": [5, 5], "k": [2, 2], "m": [2, 4], "result": [1.9242386, math.inf],
                  "P": [np.array(PUBLIC_P), np.array(PUBLIC_P)]}).to_pickle(folder / "a.pkl")
    pd.DataFrame({"n": [4], "k": [2], "m": [1], "result": [2.0],
                  "P": [[1.0, 1.0, 1.0, 2.0]]}).to_pickle(folder / "sub" / "b.pickle")


def test_import_refuses_without_trust_pickle(tmp_path):
    _write_pickles(tmp_path / "users")
    out = engine(tmp_path / "ws", "mheight", "import", str(tmp_path / "users"))
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert "refusing to read pickles" in last and "--trust-pickle" in last and "runs any code" in last
    (rd,) = run_dirs(tmp_path / "ws")
    assert not (rd / "artifacts" / "shards").exists()


def test_import_with_trust_pickle_writes_shards(tmp_path):
    _write_pickles(tmp_path / "users")
    out = engine(tmp_path / "ws", "mheight", "import", "--trust-pickle", str(tmp_path / "users"))
    assert out.returncode == 0, out.stderr
    (rd,) = run_dirs(tmp_path / "ws")
    man = json.loads((rd / "artifacts" / "shards" / "manifest.json").read_text())
    assert man["grid"] == [[4, 2, [1]], [5, 2, [2, 4]]] and man["labels"] == 3 and man["infinite"] == 1
    labels, _ = load_labels(rd, pad=6)
    got = {(int(n), int(k), int(m)): h for n, k, m, h in zip(labels.n, labels.k, labels.m, labels.log2h)}
    assert got[(5, 2, 2)] == np.log2(1.9242386) and got[(4, 2, 1)] == 1.0 and math.isinf(got[(5, 2, 4)])
    row = np.flatnonzero(labels.n == 4)[0]
    assert labels.P[row][:2, :2].tolist() == [[1, 1], [1, 2]] and labels.P[row][2:].sum() == 0


def test_import_bad_row_names_file_and_row(tmp_path):
    folder = tmp_path / "users"
    folder.mkdir()
    pd.DataFrame({"n": [5], "k": [2], "m": [2], "result": [2.0], "P": [[1.0, 2.0]]}).to_pickle(folder / "bad.pkl")
    out = engine(tmp_path / "ws", "mheight", "import", "--trust-pickle", str(folder))
    assert out.returncode == 2
    assert "bad.pkl row 0: P has shape (2,) but n=5, k=2 needs k x (n-k) = 2 x 3" in out.stderr


class _WritesMarker:
    """Unpickled, it creates the marker file: proof that a pickle was read (and its code run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def hostile_folder(tmp_path):
    """A folder holding one pickle that writes ``tmp_path/unpickled`` when read; (folder, marker)."""
    import pickle

    folder, marker = tmp_path / "users", tmp_path / "unpickled"
    folder.mkdir()
    (folder / "innocent.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    return folder, marker


@pytest.mark.parametrize("how", ["yaml", "json", "set", "set-dashed"])
def test_trust_pickle_is_refused_from_a_config_file_or_set(tmp_path, how):
    folder, marker = hostile_folder(tmp_path)
    if how in ("yaml", "json"):
        cfg = tmp_path / f"innocent.{how}"
        cfg.write_text("trust_pickle: true\n" if how == "yaml" else '{"trust_pickle": true}')
        args, source = ["--config", str(cfg)], f"config file {cfg}"
    else:
        item = "trust_pickle=true" if how == "set" else "trust-pickle=yes"
        args, source = ["--set", item], f"--set {item}"
    out = engine(tmp_path / "ws", "mheight", "import", str(folder), *args)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {source} sets trust_pickle") and "pass --trust-pickle" in line
    assert not marker.exists() and not run_dirs(tmp_path / "ws")


def test_the_typed_trust_pickle_flag_still_unpickles(tmp_path):
    folder, marker = hostile_folder(tmp_path)
    out = engine(tmp_path / "ws", "mheight", "import", "--trust-pickle", str(folder))
    assert marker.exists(), out.stderr
    assert out.returncode == 2 and "holds a TextIOWrapper, not a pandas DataFrame" in out.stderr
