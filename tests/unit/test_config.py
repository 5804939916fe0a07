from __future__ import annotations

import pytest

from engine.core.config import parse_argv, resolve
from engine.core.errors import ConfigError
from engine.longtail.config import TrainExpertConfig


def test_defaults_are_the_published_recipe():
    c = TrainExpertConfig()
    assert (c.arch, c.loss, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        "resnet32", "ce", 200, 128, 0.1, 0.9, 5e-4)
    assert (c.warmup_epochs, c.lr_milestones, c.lr_gamma) == (5, [160, 180], 0.1)


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.2\nbatch_size: 16\n")
    spec = parse_argv(["train-expert", "--preset", "quick", "--config", str(f), "--set", "lr=0.3",
                       "--batch-size", "8", "--lr-milestones", "3,5"])
    c = spec.config
    assert c.image_size == 16  # from the preset
    assert c.epochs == 7  # file over preset
    assert c.lr == 0.3  # --set over file
    assert c.batch_size == 8  # explicit option over everything
    assert c.lr_milestones == [3, 5]
    assert spec.argv[0] == "train-expert"


def test_run_location_is_not_part_of_the_job():
    spec = parse_argv(["train-expert", "--run-dir", "/x/y", "--workspace=/w", "--epochs", "2"])
    assert spec.run_dir == "/x/y" and spec.workspace == "/w"
    assert spec.argv == ["train-expert", "--epochs", "2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-expert", "--loss", "focal"], "--loss 'focal' is not one of: ce, logit_adjust, balanced_softmax, decoupling, moe_head"),
        (["train-expert", "--epochs", "-1"], "--epochs '-1': input should be greater than or equal to 1"),
        (["train-expert", "--epochs", "many"], "--epochs 'many'"),
        (["train-expert", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["train-expert", "--set", "nonsense=1"], "unknown setting 'nonsense'"),
        (["train-expert", "--set", "novalue"], "--set expects key=value"),
        (["train-expert", "--preset", "huge"], "invalid choice: 'huge'"),
        (["fly"], "unknown job 'fly'"),
        ([], "name a job first"),
    ],
)
def test_bad_arguments_get_one_line(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_argv(argv)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve("train-expert", config_file=f)
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve("train-expert", config_file=tmp_path / "missing.yaml")
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve("train-expert", config_file=f)


def test_config_round_trips_through_json():
    c = resolve("train-expert", preset="quick")
    assert TrainExpertConfig.model_validate(c.model_dump(mode="json")) == c


def test_every_job_kinds_help_renders():
    """A literal % in a setting's description ('the gating split is 10%') crashed --help."""
    from engine.core.config import JOBS, build_parser

    for kind in JOBS:
        text = build_parser(kind).format_help()
        assert "--workspace" in text, kind
    assert "10%" in build_parser("train-gating").format_help()
