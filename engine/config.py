"""Job configs: one pydantic model per job kind, the single source of truth.

The same model drives the ``engine`` CLI options, the launch form in the TUI,
the ``config`` block of run.json and the ``config.*`` export columns.
Defaults are the published recipes; presets (``--preset quick``) shrink a job
so it finishes in seconds on a CPU.

Resolution order, later wins: model defaults < preset < ``--config FILE``
< ``--set key=value`` < explicit ``--field value`` options.

Torch-free: the manager imports this module to validate submissions.
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """Bad job arguments; the message is one line that says what to change."""


class JobConfig(BaseModel):
    """Base of every job's config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: ClassVar[str]
    help: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # The metric that ranks runs of this kind, and whether higher is better for
    # each metric the job logs (keys not listed default by name: see goal_for).
    primary_metric: ClassVar[str | None] = None
    metric_goals: ClassVar[dict[str, str]] = {}
    # Settings given as positional arguments (``engine evaluate-gating RUN``), in order.
    positional: ClassVar[tuple[str, ...]] = ()

    def run_name(self) -> str:
        return self.kind

    def total_epochs(self) -> int | None:
        return getattr(self, "epochs", None)


JOBS: dict[str, type[JobConfig]] = {}


def register(cls: type[JobConfig]) -> type[JobConfig]:
    JOBS[cls.kind] = cls
    return cls


def goal_for(key: str, goals: dict[str, str] | None = None) -> str:
    """"max" or "min": explicit goal if the job declared one, else by the key's name."""
    if goals and key in goals:
        return goals[key]
    leaf = key.rsplit("/", 1)[-1].lower()
    lower_is_better = ("loss", "nll", "ece", "mse", "err", "time", "seconds")
    return "min" if any(w in leaf for w in lower_is_better) else "max"


# --------------------------------------------------------------------------- #
# Job kinds


class DataSettings(JobConfig):
    """Which long-tailed data set, and how it is split; shared by every job that reads one."""

    dataset: Literal["digits", "cifar10", "cifar100", "filelist"] = Field(
        "digits",
        description="data set: 'digits' is embedded (scikit-learn's 8x8 digits, no download); 'cifar10'/'cifar100' "
        "read the python-pickle folders under --data-root; 'filelist' reads 'path label' lists (ImageNet-LT style)",
    )
    data_root: str | None = Field(
        None, description="folder holding cifar-10-batches-py/ or cifar-100-python/, or the image root of a file list"
    )
    train_list: str | None = Field(
        None, description="filelist only: the long-tailed training list, one 'relative/path label' per line"
    )
    test_list: str | None = Field(
        None, description="filelist only: the balanced evaluation list, split into test/val/tunev per class"
    )
    imb_factor: float | None = Field(
        None, gt=1, description="imbalance factor n_max/n_min of the long-tailed train set (CIFAR-LT: Cao et al. 2019); "
        "default: the data set's (digits 10, CIFAR 100); file lists are already long-tailed and ignore it",
    )
    image_size: int | None = Field(
        None, ge=8, le=512, description="input side length in pixels; default: the data set's (digits 32, "
        "upsampled from 8; CIFAR 32; file lists 224, the ResNet-50 crop)",
    )
    split_seed: int = Field(0, description="seed of the LT selection and the splits; keep it fixed so experts share val/test")
    splits_dir: str | None = Field(
        None, description="reuse the split index files in this folder (written by `engine make-splits` or any "
        "train-expert run, in its artifacts/splits); they must match the data settings (fingerprint)",
    )
    workers: int = Field(4, ge=0, description="file lists only: DataLoader worker processes decoding images")

    def data_name(self) -> str:
        return self.dataset


@register
class MakeSplitsConfig(DataSettings):
    """Write the split index files, class counts/weights and groups of a data set, and nothing else."""

    kind: ClassVar[str] = "make-splits"
    help: ClassVar[str] = "Write a data set's split index files (expert/gating/test/val/tunev) and class statistics."

    def run_name(self) -> str:
        return f"splits-{self.dataset}"

    def total_epochs(self) -> int | None:
        return None


LOSSES = ("ce", "logit_adjust", "balanced_softmax", "decoupling", "moe_head")


@register
class TrainExpertConfig(DataSettings):
    """Train one long-tail expert (a CIFAR-style ResNet) and log per-epoch metrics."""

    kind: ClassVar[str] = "train-expert"
    help: ClassVar[str] = "Train a long-tail expert on an imbalanced image set."
    primary_metric: ClassVar[str] = "val/balanced_acc"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # About 15 s on a 2-core CPU: 16 px images and small batches (digits has
        # ~330 training images, so batch 128 would give 3 steps an epoch).
        "quick": {"epochs": 20, "image_size": 16, "batch_size": 32, "lr": 0.05, "warmup_epochs": 1,
                  "lr_milestones": [14, 18], "crt_epochs": 4, "crt_lr_milestones": [3]},
    }

    augment: bool = Field(True, description="random crop (4 px padding) and, where the data allows, horizontal flip")
    # model and loss
    arch: Literal["resnet32", "resnet18", "resnet50"] = Field(
        "resnet32", description="backbone: CIFAR ResNet-32 (He et al. 2016), ResNet-18 with the CIFAR stem "
        "(3x3 conv, no max-pool), or torchvision's ResNet-50 (for file lists)",
    )
    loss: Literal["ce", "logit_adjust", "balanced_softmax", "decoupling", "moe_head"] = Field(
        "ce", description="ce; logit_adjust (logits + tau log prior, Menon et al. 2021); balanced_softmax "
        "(logits + log counts, Ren et al. 2020); decoupling (cRT, Kang et al. 2020: CE, then a re-initialised "
        "classifier on the frozen backbone with class-balanced sampling); moe_head (top-k gated expert MLPs)",
    )
    tau: float = Field(1.0, ge=0, description="logit_adjust: weight of the log class prior (Menon et al. 2021 use 1)")
    # cRT stage 2 (Kang et al. 2020 retrain the classifier for 10 epochs with a fresh cosine/step schedule)
    crt_epochs: int = Field(10, ge=1, description="decoupling: epochs of classifier re-training (stage 2)")
    crt_lr: float = Field(0.1, gt=0, description="decoupling: peak learning rate of stage 2 (SGD, its own schedule)")
    crt_lr_milestones: list[int] = Field(
        [6, 8], description="decoupling: stage-2 epochs (counted from 0 in the stage) at which its lr is x lr_gamma"
    )
    # MoE head (Shazeer et al. 2017 top-k gate; Switch-style load balance, Fedus et al. 2021)
    moe_experts: int = Field(4, ge=2, description="moe_head: number E of expert MLPs on the backbone features")
    moe_top_k: int = Field(2, ge=1, description="moe_head: experts each image is routed to (top-k of the gate)")
    moe_hidden: int = Field(128, ge=1, description="moe_head: hidden units of each expert MLP")
    moe_balance_coef: float = Field(
        0.01, ge=0, description="moe_head: weight of the load-balance term E * sum_e f_e P_e (Switch Transformer: 0.01)"
    )
    # optimisation: the CIFAR-LT recipe of Cao et al. 2019 (LDAM-DRW) and Menon et al. 2021
    epochs: int = Field(200, ge=1, description="training epochs (decoupling: stage 1)")
    batch_size: int = Field(128, ge=1, description="images per SGD step")
    lr: float = Field(0.1, gt=0, description="peak learning rate (SGD)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    warmup_epochs: int = Field(5, ge=0, description="linear learning-rate warm-up, in epochs")
    lr_milestones: list[int] = Field([160, 180], description="epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="learning-rate decay factor at each milestone")
    # speed
    amp: bool = Field(True, description="bf16 autocast + channels_last on a GPU and on CPUs with bf16 units (AMX); "
                      "ignored on other CPUs, where bf16 is emulated and slower")
    compile: bool = Field(False, description="torch.compile the model (pays off on a GPU for long runs; adds start-up time)")
    # run
    seed: int = Field(0, description="seed of initialisation, sampling and augmentation")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")
    resume: str | None = Field(
        None, description="continue from a run directory (or its checkpoints/last.pth): model, optimizer, scheduler, "
        "epoch and RNG states; the settings must describe the same model and data (epochs may grow)",
    )

    def run_name(self) -> str:
        return f"{self.loss}-{self.arch}-{self.dataset}"

    def total_epochs(self) -> int | None:
        return self.epochs + (self.crt_epochs if self.loss == "decoupling" else 0)


@register
class RecomputeLogitsConfig(JobConfig):
    """Run trained experts over the splits and write their logits for the gating stage."""

    kind: ClassVar[str] = "recompute-logits"
    help: ClassVar[str] = "Export each expert's logits per split (<split>_logits.npz and .pt) with a manifest."

    experts: list[str] = Field(
        ..., min_length=1, description="train-expert run directories or checkpoint files (.pth), comma-separated"
    )
    checkpoint_prefix: Literal["best_", "final_calibrated_"] = Field(
        "final_calibrated_", description="which checkpoint of a run directory: best_<loss>.pth or "
        "final_calibrated_<loss>.pth (logits divided by its fitted temperature)",
    )
    splits: list[str] = Field(["val", "test", "tunev", "gating"], description="splits to export (expert gating val test tunev)")
    batch_size: int | None = Field(
        None, ge=1, description="images per forward pass; default 512 on a GPU, 64 on a CPU (cache-sized batches run "
        "about 2x faster there); halved automatically on CUDA out-of-memory")
    data_root: str | None = Field(None, description="override the data root the experts were trained with (moved data)")
    splits_dir: str | None = Field(None, description="override the split index files the experts were trained with")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    amp: bool = Field(True, description="bf16 autocast on a GPU and on CPUs with bf16 units (AMX); logits are stored "
                      "as float32 either way")

    def run_name(self) -> str:
        return f"logits-{len(self.experts)}-experts"

    def total_epochs(self) -> int | None:
        return None


@register
class VerifyLogitsConfig(JobConfig):
    """Check exported logits before the gating stage trusts them."""

    kind: ClassVar[str] = "verify-logits"
    help: ClassVar[str] = "Check a recompute-logits output: shapes, argmax, NaN/Inf, accuracy, shared targets."

    logits: str = Field(..., description="a recompute-logits run directory (or its artifacts/logits folder)")

    def run_name(self) -> str:
        return "verify-logits"

    def total_epochs(self) -> int | None:
        return None


# --------------------------------------------------------------------------- #
# Resolution


@dataclass
class JobSpec:
    """A parsed engine command line."""

    kind: str
    config: JobConfig
    argv: list[str]  # the job's own arguments, without --run-dir / --workspace
    name: str | None = None
    run_dir: str | None = None
    workspace: str | None = None
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def job_class(kind: str) -> type[JobConfig]:
    try:
        return JOBS[kind]
    except KeyError:
        raise ConfigError(f"unknown job '{kind}'; choose one of: {', '.join(sorted(JOBS))}") from None


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or any(
        typing.get_origin(a) is list for a in typing.get_args(annotation)
    )


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def literal_choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def coerce_text(cls: type[JobConfig], name: str, raw: Any) -> Any:
    """Turn a command-line or form string into what pydantic validates.

    Lists are comma-separated; 'none' means None where the field allows it.
    Everything else goes to pydantic as text (it parses numbers and booleans).
    """
    if not isinstance(raw, str):
        return raw
    info = cls.model_fields.get(name)
    if info is None:
        return raw
    text = raw.strip()
    if _allows_none(info.annotation) and text.lower() in ("none", "null", ""):
        return None
    if _is_list(info.annotation):
        text = text.strip("[]")
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def _format_validation_error(cls: type[JobConfig], err: ValidationError, errors: list | None = None) -> str:
    parts = []
    for e in err.errors() if errors is None else errors:
        loc = e["loc"][0] if e["loc"] else ""
        opt = _option(str(loc)) if loc else "config"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting '{loc}' for {cls.kind}; see `engine {cls.kind} --help`")
        elif e["type"] == "missing":
            parts.append(f"{opt} is required; see `engine {cls.kind} --help`")
        elif not loc and e["type"] == "value_error":
            # a check across fields (a model validator) says it all: not "config {every field}: value error, ..."
            parts.append(str(e.get("ctx", {}).get("error", e["msg"])))
        elif e["type"] == "literal_error":
            choices = literal_choices(cls.model_fields[loc].annotation) or ()
            parts.append(f"{opt} {e['input']!r} is not one of: {', '.join(map(str, choices))}")
        else:
            parts.append(f"{opt} {e['input']!r}: {e['msg'][0].lower() + e['msg'][1:]}")
    return "; ".join(parts)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of config fields."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise many types; all mean "not parseable"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of setting: value, not a {type(data).__name__}")
    return data


def resolve(
    kind: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    fields: dict[str, Any] | None = None,
) -> JobConfig:
    """Build a validated config from the layers, raising ConfigError in one line."""
    cls = job_class(kind)
    values: dict[str, Any] = {}
    if preset:
        if preset not in cls.presets:
            known = ", ".join(sorted(cls.presets)) or "none"
            raise ConfigError(f"unknown preset '{preset}' for {kind}; known presets: {known}")
        values.update(cls.presets[preset])
    if config_file:
        values.update(load_config_file(config_file))
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        values[key] = coerce_text(cls, key, raw)
    for key, raw in (fields or {}).items():
        values[key] = coerce_text(cls, key, raw)
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(cls, e)) from None


def form_defaults(kind: str, preset: str | None = None) -> dict[str, Any]:
    """Each field's starting value for a form: the preset's, else the recipe default;
    a required field without either is left out (``resolve`` would refuse the kind)."""
    cls = job_class(kind)
    try:
        cfg = resolve(kind, preset=preset)
        return {name: getattr(cfg, name) for name in cls.model_fields}
    except ConfigError:
        pass
    values = {name: info.get_default(call_default_factory=True)
              for name, info in cls.model_fields.items() if not info.is_required()}
    if preset:
        values.update({k: coerce_text(cls, k, v) for k, v in cls.presets[preset].items()})
    return values


def field_error(kind: str, name: str, raw: Any, *, preset: str | None = None) -> str | None:
    """What is wrong with ``name`` set to ``raw`` over the preset, in one line, or None.

    Only that field's errors (and whole-config checks) count: another required
    field not filled in yet belongs under that field, not this one.
    """
    cls = job_class(kind)
    values: dict[str, Any] = dict(cls.presets.get(preset, {})) if preset else {}
    values[name] = coerce_text(cls, name, raw)
    try:
        cls.model_validate(values)
    except ValidationError as e:
        mine = [err for err in e.errors() if not err["loc"] or err["loc"][0] == name]
        return _format_validation_error(cls, e, mine) if mine else None
    return None


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; we want one line
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _help(text: str | None) -> str | None:
    """argparse expands %-formats in help (%(default)s): a literal % ("10%") must be doubled."""
    return text.replace("%", "%%") if text else text


def build_parser(kind: str) -> argparse.ArgumentParser:
    cls = job_class(kind)
    p = OneLineParser(prog=f"engine {kind}", description=cls.help or cls.__doc__, allow_abbrev=False)
    run = p.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(cls.presets) or None, help="a named set of overrides")
    run.add_argument("--config", dest="config_file", metavar="FILE", help="YAML or JSON file of settings")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override any setting; repeatable")
    run.add_argument("--name", help="a name for the run (default: derived from the config)")
    run.add_argument("--run-dir", help="write into this (empty or manager-made) run directory")
    run.add_argument("--workspace", help="workspace holding runs/ (default: $MOE_TUI_WORKSPACE or the cwd)")
    opts = p.add_argument_group("settings (defaults are the published recipe)")
    for name in cls.positional:
        info = cls.model_fields[name]
        p.add_argument(name, nargs="?", default=None, metavar=name.upper(), help=_help(info.description))
    for name, info in cls.model_fields.items():
        if name in cls.positional:
            continue
        default = info.default
        if info.is_required():
            shown = "required"
        else:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = _help(f"{info.description or ''} [default: {shown}]")
        if info.annotation is bool:
            opts.add_argument(_option(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = literal_choices(info.annotation)
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else name.upper()
            opts.add_argument(_option(name), dest=name, default=None, metavar=metavar, help=help_text)
    return p


RUN_OPTIONS = ("preset", "config_file", "sets", "name", "run_dir", "workspace")


def parse_argv(argv: list[str]) -> JobSpec:
    """``["train-expert", "--loss", "ce", ...]`` -> a validated JobSpec."""
    if not argv or argv[0].startswith("-"):
        raise ConfigError(f"name a job first: one of {', '.join(sorted(JOBS))}")
    kind, rest = argv[0], list(argv[1:])
    ns = vars(build_parser(kind).parse_args(rest))
    fields = {k: v for k, v in ns.items() if k not in RUN_OPTIONS and v is not None}
    config = resolve(kind, preset=ns["preset"], config_file=ns["config_file"], sets=ns["sets"], fields=fields)
    return JobSpec(
        kind=kind,
        config=config,
        argv=[kind, *strip_run_location(rest)],
        name=ns["name"],
        run_dir=ns["run_dir"],
        workspace=ns["workspace"],
        preset=ns["preset"],
    )


def strip_run_location(args: list[str]) -> list[str]:
    """Drop --run-dir/--workspace (where a run goes is not part of what it is)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--run-dir", "--workspace"):
            skip = True
            continue
        if a.startswith(("--run-dir=", "--workspace=")):
            continue
        out.append(a)
    return out


# Job kinds defined beside their engine code; importing a module registers its jobs.
from engine.gating import config as _gating_config  # noqa: E402,F401  (train-gating, evaluate-gating)
from engine.mheight import config as _mheight_config  # noqa: E402,F401  (mheight-generate, -train, ...)
