"""m-height job configs: registered, CLI-typed, refusing bad settings in one line; torch-free."""

from __future__ import annotations

import pytest

from engine.core.config import JOBS, parse_argv, resolve
from engine.core.errors import ConfigError
from engine.mheight.cli import to_job_argv


def test_jobs_are_registered_and_every_field_is_documented():
    kinds = {"mheight-generate", "mheight-import", "mheight-train", "mheight-finetune", "mheight-evaluate"}
    assert kinds <= set(JOBS)
    for kind in kinds:
        for name, info in JOBS[kind].model_fields.items():
            assert info.description, f"{kind}.{name} has no description"


def test_cli_strings_become_typed_settings():
    spec = parse_argv(to_job_argv("train", ["--data", "d", "--model", "sparse_moe", "--top-k", "1", "--pairs", "9x4,10x5"]))
    assert spec.kind == "mheight-train" and spec.config.top_k == 1 and spec.config.pairs == ["9x4", "10x5"]
    spec = parse_argv(to_job_argv("finetune", ["--experts", "a,b", "--data", "d"]))
    assert spec.config.experts == ["a", "b"]
    spec = parse_argv(to_job_argv("evaluate", ["ckpt.pth", "--data", "d"]))
    assert spec.config.checkpoint == "ckpt.pth"
    spec = parse_argv(to_job_argv("import", ["--trust-pickle", "folder"]))
    assert spec.config.source == "folder" and spec.config.trust_pickle


@pytest.mark.parametrize("kind,fields,msg", [
    ("mheight-train", {"data": "d", "top_k": "3"}, "--top-k '3'"),
    ("mheight-train", {"data": "d", "model": "cnn"}, "not one of: fc, resnet2d, vit, hard_moe, sparse_moe"),
    ("mheight-finetune", {"data": "d", "experts": "a"}, "at least two expert checkpoints"),
    ("mheight-generate", {"m_min": "4", "m_max": "3"}, "m_max 3 < m_min 4"),
    ("mheight-generate", {"p_low": "5", "p_high": "1"}, "p_low 5.0 > p_high 1.0"),
    ("mheight-train", {"data": "d", "p_input": "false"}, "--no-p-input leaves the model nothing but (n, k) to read"),
])
def test_bad_settings_are_one_line(kind, fields, msg):
    with pytest.raises(ConfigError) as e:
        resolve(kind, fields=fields)
    assert msg in str(e.value) and "\n" not in str(e.value)
    # a check across fields says only what is wrong, not every field given and pydantic's "value error"
    assert "config {" not in str(e.value) and "alue error" not in str(e.value)
