"""make-splits: write a data set's split index files and class statistics, nothing else.

The files land in ``artifacts/splits/`` of the run; pass that folder to
``train-expert --splits-dir`` so every expert of a study shares them.
"""

from __future__ import annotations

from engine.core.config import JobSpec
from engine.core.recorder import RunRecorder
from engine.longtail.config import MakeSplitsConfig
from engine.longtail.data.load import load_image_data


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MakeSplitsConfig = spec.config  # type: ignore[assignment]
    data = load_image_data(cfg)
    out = rec.run_dir.artifacts / "splits"
    data.index.write(out, data.source_targets)
    print(data.describe(), flush=True)
    print(f"fingerprint {data.index.fingerprint}; wrote {out}", flush=True)
    g = data.groups
    rec.log_summary({"classes": data.num_classes, "train_lt_images": sum(g.counts),
                     **{f"{k}_images": len(v) for k, v in data.splits.items()},
                     **{f"{grp}_classes": int(g.mask(grp).sum()) for grp in ("many", "medium", "few", "head", "tail")}})
