"""CIFAR-LT from python-pickle folders, file lists, and the split index files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from engine.core.config import resolve
from engine.longtail.data.load import load_image_data
from engine.longtail.data.profile import lt_counts, select_lt
from engine.longtail.data.splits import SPLIT_NAMES
from engine.core.errors import JobError
from tests.fake_data import write_cifar, write_filelist
from tests.helpers import engine, run_dirs


def data_cfg(**fields):
    return resolve("make-splits", fields=fields)


@pytest.mark.parametrize("num_classes, n_max, total, smallest", [(100, 500, 10847, 5), (10, 5000, 12406, 50)])
def test_selection_on_full_size_labels_gives_the_published_counts(num_classes, n_max, total, smallest):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(num_classes), n_max))
    chosen = select_lt(labels, lt_counts(n_max, num_classes, 100), seed=0)
    counts = np.bincount(labels[chosen], minlength=num_classes)
    assert len(chosen) == total and counts[0] == n_max and counts[-1] == smallest


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10", train_per_class=60, test_per_class=20)
    write_cifar(root, "cifar100", train_per_class=10, test_per_class=10)
    return root


def test_cifar10_lt_counts_and_splits(cifar_root):
    d = load_image_data(data_cfg(dataset="cifar10", data_root=str(cifar_root), imb_factor=10))
    assert list(d.groups.counts) == lt_counts(60, 10, 10)
    assert d.groups.counts[0] == 60 and d.groups.counts[-1] == 6
    idx = d.index.indices
    # expert/gating: disjoint, 90/10 of every class of train-LT, both long-tailed
    assert not set(idx["expert"]) & set(idx["gating"])
    assert len(idx["expert"]) + len(idx["gating"]) == sum(d.groups.counts)
    gating = d.splits["gating"].class_counts(10)
    assert gating == [round(0.1 * n) for n in d.groups.counts]
    assert gating[0] > gating[-1]
    # test/val/tunev: disjoint, balanced 16/2/2 of the 20 test images per class
    assert {n: set(d.splits[n].class_counts(10)) for n in ("test", "val", "tunev")} == {"test": {16}, "val": {2}, "tunev": {2}}
    assert not (set(idx["test"]) & set(idx["val"]) or set(idx["test"]) & set(idx["tunev"]) or set(idx["val"]) & set(idx["tunev"]))
    assert d.splits["expert"].x.shape[1:] == (3, 32, 32) and d.hflip


def test_cifar100_reads_fine_labels(cifar_root):
    d = load_image_data(data_cfg(dataset="cifar100", data_root=str(cifar_root), imb_factor=10))
    assert d.num_classes == 100 and list(d.groups.counts) == lt_counts(10, 100, 10)
    assert sum(d.splits["test"].class_counts(100)) == 800


def test_split_files_are_written_once_and_reused(cifar_root, tmp_path):
    ws = tmp_path / "ws"
    out = engine(ws, "make-splits", "--dataset", "cifar10", "--data-root", str(cifar_root), "--imb-factor", "10")
    assert out.returncode == 0, out.stderr
    (rd,) = run_dirs(ws)
    folder = rd / "artifacts" / "splits"
    assert {p.name for p in folder.iterdir()} == {f"{n}.json" for n in SPLIT_NAMES} | {
        "fingerprint.json", "class_counts.json", "class_weights.json", "groups.json"}
    counts = json.loads((folder / "class_counts.json").read_text())
    assert counts["train_lt"] == lt_counts(60, 10, 10)
    weights = json.loads((folder / "class_weights.json").read_text())["weights"]
    assert weights[0] < 1 < weights[-1]
    groups = json.loads((folder / "groups.json").read_text())
    assert groups["boundaries"] == {"many_above": 100, "few_below": 20, "tail_at_most": 20}

    # Reused: hand-edit the split (same fingerprint) and the loader takes the file, not a fresh draw.
    val = json.loads((folder / "val.json").read_text())
    val["indices"] = val["indices"][:5]
    (folder / "val.json").write_text(json.dumps(val))
    d = load_image_data(data_cfg(dataset="cifar10", data_root=str(cifar_root), imb_factor=10, splits_dir=str(folder)))
    assert len(d.splits["val"]) == 5
    # Other settings: refused with the cause.
    with pytest.raises(JobError, match="made from different data settings"):
        load_image_data(data_cfg(dataset="cifar10", data_root=str(cifar_root), imb_factor=20, splits_dir=str(folder)))


def test_bad_cifar_folders_get_one_line(tmp_path):
    with pytest.raises(JobError, match=r"holds no cifar-10-batches-py/; extract https://"):
        load_image_data(data_cfg(dataset="cifar10", data_root=str(tmp_path)))
    with pytest.raises(JobError, match="needs --data-root"):
        load_image_data(data_cfg(dataset="cifar100"))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not a pickle")
    (folder / "test").write_bytes(b"")
    with pytest.raises(JobError, match="is not a CIFAR python batch"):
        load_image_data(data_cfg(dataset="cifar100", data_root=str(tmp_path)))


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Boom(), b"fine_labels": [0]}, f)
    with pytest.raises(JobError, match="refusing to load builtins.print"):
        load_image_data(data_cfg(dataset="cifar100", data_root=str(tmp_path)))


def test_file_list_data(tmp_path):
    train, test = write_filelist(tmp_path, [20, 10, 4], test_per_class=10, side=12)
    d = load_image_data(data_cfg(dataset="filelist", data_root=str(tmp_path), train_list=str(train), test_list=str(test)))
    assert d.streamed and d.num_classes == 3 and list(d.groups.counts) == [20, 10, 4]
    assert d.splits["gating"].class_counts(3) == [2, 1, 0]
    assert d.splits["test"].class_counts(3) == [8, 8, 8]
    bad = tmp_path / "bad.txt"
    bad.write_text("images/x.png 0\nimages/y.png cat\n")
    with pytest.raises(JobError, match=r"bad.txt:2: expected 'relative/path label'"):
        load_image_data(data_cfg(dataset="filelist", data_root=str(tmp_path), train_list=str(bad), test_list=str(test)))
