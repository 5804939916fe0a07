"""mheight-import: the users' folders of pickled pandas DataFrames into shards.

Each DataFrame row is one label: columns n, k, m, result (the m-height) and P
(k x (n-k), nested or flat). Rows become shards of one (n, k, m) group each,
in the same format the generator writes, so training reads both alike.
Unpickling runs code from the file, so the job refuses without --trust-pickle.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.mheight.codes import check_code
from engine.mheight.config import MHeightImportConfig
from engine.mheight.shards import (
    SHARDS_DIRNAME,
    shard_name,
    write_manifest,
    write_shard,
)

COLUMNS = ("n", "k", "m", "result", "P")
PATTERNS = ("*.pkl", "*.pickle", "*.pkl.gz")


def find_pickles(source: Path) -> list[Path]:
    if not source.is_dir():
        raise JobError(f"--source {source} is not a folder; give the folder holding the pickled DataFrames")
    files = sorted({p for pat in PATTERNS for p in source.rglob(pat)})
    if not files:
        raise JobError(f"no pickle files ({', '.join(PATTERNS)}) under {source}")
    return files


def read_rows(path: Path) -> list[tuple[int, int, int, np.ndarray, float]]:
    """(n, k, m, P, h) for every row of one pickled DataFrame, validated."""
    import pandas as pd

    try:
        df = pd.read_pickle(path)
    except Exception as e:
        raise JobError(f"{path} cannot be unpickled as a pandas DataFrame ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(df, pd.DataFrame):
        raise JobError(f"{path} holds a {type(df).__name__}, not a pandas DataFrame")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise JobError(f"{path} lacks the column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    rows = []
    for i, (n, k, m, h, P) in enumerate(zip(*(df[c].tolist() for c in COLUMNS))):
        where = f"{path.name} row {i}"
        n, k, m = int(n), int(k), int(m)
        arr = check_code(n, k, m, P, where)
        h = float(h)
        if math.isnan(h) or h < 1 - 1e-9:
            raise JobError(f"{where}: result {h} is not an m-height (those are >= 1, or inf)")
        rows.append((n, k, m, arr, max(h, 1.0)))
    return rows


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightImportConfig = spec.config  # type: ignore[assignment]
    source = Path(cfg.source).expanduser()
    if not cfg.trust_pickle:
        raise JobError(f"refusing to read pickles in {source}: unpickling runs any code the file holds; "
                       "pass --trust-pickle if you made these files or trust whoever did")
    files = find_pickles(source)
    groups: dict[tuple[int, int, int], list[tuple[np.ndarray, float]]] = defaultdict(list)
    rec.set_total_epochs(len(files))
    for i, path in enumerate(files, start=1):
        rows = read_rows(path)
        for n, k, m, P, h in rows:
            groups[(n, k, m)].append((P, h))
        rec.log_epoch(i, {"rows": float(len(rows))}, phase="import")
    out = rec.run_dir.artifacts / SHARDS_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    grid: dict[tuple[int, int], list[int]] = defaultdict(list)
    shards, labels, infinite = [], 0, 0
    for (n, k, m), items in sorted(groups.items()):
        grid[(n, k)].append(m)
        for index, start in enumerate(range(0, len(items), cfg.shard_size)):
            part = items[start:start + cfg.shard_size]
            P = np.stack([p for p, _ in part])
            H = np.array([[h] for _, h in part])
            name = shard_name(n, k, index, m)
            write_shard(out / name, n, k, P, [m], H)
            shards.append({"file": name, "n": n, "k": k, "m": m, "codes": len(part), "labels": len(part),
                           "infinite": int(np.isinf(H).sum())})
            labels += len(part)
            infinite += int(np.isinf(H).sum())
    write_manifest(out, {"grid": [[n, k, sorted(ms)] for (n, k), ms in sorted(grid.items())],
                         "source": {"imported_from": str(source.resolve()), "files": len(files)},
                         "complete": True, "labels": labels, "infinite": infinite, "shards": shards})
    rec.log_summary({"labels": labels, "infinite_fraction": infinite / max(labels, 1), "files": len(files)})
    print(f"imported {labels} labels in {len(groups)} (n, k, m) groups from {len(files)} file(s) into {out}", flush=True)
