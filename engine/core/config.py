"""Job configs: one pydantic model per job kind, the single source of truth.

The same model drives the ``engine`` CLI options, the launch form in the TUI,
the ``config`` block of run.json and the ``config.*`` export columns.
Defaults are the published recipes; presets (``--preset quick``) shrink a job
so it finishes in seconds on a CPU.

Resolution order, later wins: model defaults < preset < ``--config FILE``
< ``--set key=value`` < explicit ``--field value`` options.
A setting marked ``TRUST`` (``trust_pickle``) comes only from its own option.

Torch-free: the manager imports this module to validate submissions.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.core.errors import ConfigError, not_utf8


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
    # The module whose ``run(spec, recorder)`` runs this kind.
    job: ClassVar[str]
    # Settings given as positional arguments (``engine evaluate-gating RUN``), in order.
    positional: ClassVar[tuple[str, ...]] = ()

    def run_name(self) -> str:
        return self.kind

    def total_epochs(self) -> int | None:
        return getattr(self, "epochs", None)


# The workloads' config modules, imported by name on the first look-up of a job kind, so that
# this module depends on none of them (each of them imports this one to register its kinds).
WORKLOAD_CONFIGS = ("engine.longtail.config", "engine.gating.config", "engine.reject.config", "engine.mheight.config")


class _Registry(Mapping[str, type[JobConfig]]):
    """Job kind -> config class, filled by ``@register`` as the workload configs load."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[JobConfig]] = {}
        self._loaded = False

    def add(self, cls: type[JobConfig]) -> None:
        self._kinds[cls.kind] = cls

    def _all(self) -> dict[str, type[JobConfig]]:
        if not self._loaded:
            self._loaded = True
            for module in WORKLOAD_CONFIGS:
                importlib.import_module(module)
        return self._kinds

    def __getitem__(self, kind: str) -> type[JobConfig]:
        return self._all()[kind]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


JOBS = _Registry()


def register(cls: type[JobConfig]) -> type[JobConfig]:
    JOBS.add(cls)
    return cls


class Trust:
    """The mark of a setting that widens what a job trusts: ``trust_pickle: Annotated[bool, TRUST]``.

    Trust is the person's to give, so it comes only from the setting's own option typed on the
    command line: a ``--config`` file, ``--set``, a preset, a pipeline step or a queued run's
    stored arguments would hand it to whoever wrote them (``innocent.yaml`` unpickling a folder).
    """


TRUST = Trust()


def trust_options(cls: type[JobConfig]) -> dict[str, str]:
    """Each setting of ``cls`` marked TRUST -> the option that gives it (``--trust-pickle``)."""
    return {name: _option(name) for name, info in cls.model_fields.items() if TRUST in info.metadata}


def split_trust(argv: list[str]) -> tuple[list[str], list[str]]:
    """An engine argv (``[kind, ...]``) as (the argv without its trust options, those options).

    For the manager, whose stored or file-given arguments must not carry trust (a retry, a pipeline).
    """
    if not argv or argv[0] not in JOBS:  # no job, no trust options (parse_argv refuses it)
        return list(argv), []
    cls = JOBS[argv[0]]
    options = {opt: cls.model_fields[name].annotation is bool for name, opt in trust_options(cls).items()}
    rest, given = [argv[0]], []
    tokens = iter(argv[1:])
    for tok in tokens:
        opt = tok.partition("=")[0]
        if opt not in options:
            rest.append(tok)
            continue
        given.append(tok)
        if tok == opt and not options[opt]:
            given.extend(itertools.islice(tokens, 1))  # its value
    return rest, given


def _refuse_trust(cls: type[JobConfig], source: str, keys) -> None:
    options = trust_options(cls)
    for key in keys:
        if key in options:
            raise ConfigError(f"{source} sets {key}, which widens what the job trusts; trust is given only by "
                              f"typing {options[key]} on the command line: remove it there and pass {options[key]}")


def goal_for(key: str, goals: dict[str, str] | None = None) -> str:
    """"max" or "min": the goal the job declared for the key or for a key above it (a goal for
    ``test/aurc_balanced`` holds for ``test/aurc_balanced/gate/chow``, whose leaf names a method,
    not a measure), else by the key's name."""
    if goals:
        parts = key.split("/")
        for end in range(len(parts), 0, -1):
            goal = goals.get("/".join(parts[:end]))
            if goal is not None:
                return goal
    leaf = key.rsplit("/", 1)[-1].lower()
    lower_is_better = ("loss", "nll", "ece", "mse", "err", "time", "seconds")
    return "min" if any(w in leaf for w in lower_is_better) else "max"


# --------------------------------------------------------------------------- #
# Job kinds
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
        elif e["type"] == "value_error" and len(e["loc"]) == 1:
            # a field's own check says what is wrong with the value: not "--rates ['0', '1.5']: value error, ..."
            parts.append(f"{opt}: {e.get('ctx', {}).get('error', e['msg'])}")
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
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is {not_utf8(e)}; name a YAML or JSON file") from None
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
        _refuse_trust(cls, f"preset '{preset}'", cls.presets[preset])
        values.update(cls.presets[preset])
    if config_file:
        from_file = load_config_file(config_file)
        _refuse_trust(cls, f"config file {config_file}", from_file)
        values.update(from_file)
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        _refuse_trust(cls, f"--set {item}", [key])
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
