"""The workspace's queue settings: ``moe-tui.toml`` in the workspace root.

    [queue]
    cpu_slots = 2           # runs at once that ask for no GPU
    runs_per_gpu = 1        # runs sharing one GPU
    max_running = 0         # cap on local runs at once (0: no cap beyond the slots)
    idle_exit_s = 300
    cancel_grace_s = 30
    default_backend = "local"
    on_finish = "notify-send \\"$MOE_TUI_RUN_NAME $MOE_TUI_RUN_STATUS\\""

    [slurm]
    partition = "gpu"
    time = "04:00:00"
    cpus_per_task = 8
    mem = "32G"
    extra = ["--account=myproj"]

Environment variables override single settings for one daemon (tests, CI):
``MOE_TUI_CPU_SLOTS``, ``MOE_TUI_RUNS_PER_GPU``, ``MOE_TUI_MAX_RUNNING``,
``MOE_TUI_IDLE_EXIT``, ``MOE_TUI_CANCEL_GRACE``, ``MOE_TUI_GPUS`` (see
app.queue.slots). Read on every daemon pass, so an edit takes effect without
a restart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import UserError
from engine.core.errors import not_utf8

SETTINGS_FILE = "moe-tui.toml"
BACKENDS = ("local", "slurm")


class QueueSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu_slots: int = Field(1, ge=1, description="runs at once that ask for no GPU (count); one keeps a laptop usable")
    runs_per_gpu: int = Field(1, ge=1, description="runs sharing one GPU (count); raise for small jobs that leave a GPU idle")
    max_running: int = Field(0, ge=0, description="cap on local runs at once (count; 0: only the slots limit)")
    idle_exit_s: float = Field(300, ge=0, description="the daemon exits after this many seconds with nothing queued or running")
    cancel_grace_s: float = Field(30, ge=0, description="seconds between SIGTERM and SIGKILL when a run is cancelled")
    default_backend: Literal["local", "slurm"] = Field("local", description="backend of `moe-tui submit` without --backend")
    on_finish: str | None = Field(None, description="shell command run when a queued run ends; "
                                                    "MOE_TUI_RUN_ID/_STATUS/_DIR/_NAME in its environment (like pueue's callback)")


# sbatch --time's formats (man sbatch): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or no limit; checked at submit,
# so a typo is one line then, not a failed run after the queue wait
SLURM_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|unlimited|infinite", re.IGNORECASE)


class SlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's default partition)")
    time: str = Field("01:00:00", description="sbatch --time, the wall-clock limit (Slurm formats: MM, HH:MM:SS, D-HH)")
    cpus_per_task: int = Field(2, ge=1, description="sbatch --cpus-per-task (cores)")
    mem: str | None = Field(None, description="sbatch --mem per node, e.g. '16G' (default: the partition's)")
    gres_gpu: str = Field("gpu", description="gres name of GPUs: a run asking for g GPUs gets --gres=<this>:g")
    extra: list[str] = Field([], description="further sbatch flags, each passed as one argument (e.g. --account=x)")
    poll_s: float = Field(2.0, gt=0, description="seconds between squeue polls of the daemon")
    command_timeout_s: float = Field(30.0, gt=0, description="seconds to wait for sbatch, squeue, scancel or sacct "
                                                             "to answer (a busy controller can be slow)")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        if not SLURM_TIME.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a Slurm time limit; give minutes (90), H:MM:SS (4:00:00) or D-HH (2-12)")
        return value.strip()


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: QueueSettings = QueueSettings()
    slurm: SlurmSettings = SlurmSettings()


_ENV = {
    "MOE_TUI_CPU_SLOTS": "cpu_slots",
    "MOE_TUI_RUNS_PER_GPU": "runs_per_gpu",
    "MOE_TUI_MAX_RUNNING": "max_running",
    "MOE_TUI_PARALLEL": "max_running",  # the foundation's name for the cap
    "MOE_TUI_IDLE_EXIT": "idle_exit_s",
    "MOE_TUI_CANCEL_GRACE": "cancel_grace_s",
    "MOE_TUI_ON_FINISH": "on_finish",
    "MOE_TUI_BACKEND": "default_backend",
}


def load_settings(root: Path) -> Settings:
    """The workspace's settings, with environment overrides; UserError on a bad file."""
    path = Path(root) / SETTINGS_FILE
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is {not_utf8(e)}; save it as UTF-8 or remove it") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"{path} is not valid TOML ({e}); fix or remove it") from None
    queue = data.get("queue") or {}
    if isinstance(queue, dict):  # anything else (queue = 5) is left for the schema to name
        queue = dict(queue)
        for env, key in _ENV.items():
            if os.environ.get(env):
                queue[key] = os.environ[env]
    data["queue"] = queue
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{path}: {where}: {error_text(err)} (input {err.get('input')!r})") from None


def error_text(err: dict) -> str:
    """A pydantic error's message; a validator's own words without pydantic's "Value error, " in front."""
    if err["type"] in ("model_type", "dict_type"):  # pydantic would name our class, not the file's shape
        return "should be a table of settings, not a single value"
    return str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else err["msg"]
