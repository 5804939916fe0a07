"""Config of the learning-to-reject job (``fit-reject``).

Torch- and numpy-free: ``engine.core.config.JOBS`` loads this module so the manager
can build launch forms for it. Defaults are Narasimhan, Menon, Jitkrittum, Gupta and
Kumar, "Learning to Reject Meets Long-tail Learning" (ICLR 2024): Algorithm 1
(CS-plug-in) and Algorithm 2 (worst-group plug-in), with the grids of their code.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from engine.core.config import JobConfig, register

METHODS = ("chow", "plugin_balanced", "plugin_worst")
GROUPINGS = {"head-tail": ("head", "tail"), "many-medium-few": ("many", "medium", "few")}
# Target rejection rates 0, 0.05, ..., 0.8: the paper's risk-coverage range.
DEFAULT_RATES = [round(0.05 * i, 2) for i in range(17)]
# The paper's grid of lambda = mu_tail - mu_head for K = 2 (mu_head fixed at 0: only differences matter).
DEFAULT_LAMBDAS = [-5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 8.0, 11.0, 15.0, 20.0]
WORST_LAMBDAS = [1.0, 6.0, 11.0]
# What every AURC means: recorded in the config, aurc.csv and fit.json, since papers differ.
AURC_AXES = ("target_rate", "rejection_rate")


@register
class FitRejectConfig(JobConfig):
    """Chow's rule and the plug-in rejectors (balanced, worst-group) over posteriors of the gate,
    the uniform average and single experts: error against rejection rate, and AURC."""

    kind: ClassVar[str] = "fit-reject"

    job: ClassVar[str] = "engine.reject.fit_reject"
    help: ClassVar[str] = "Fit rejectors (Chow, plug-in balanced / worst-group) on tunev/val; risk-coverage and AURC."
    primary_metric: ClassVar[str] = "test/aurc_balanced"
    # Errors and their areas are minimised; a goal holds for the keys under it (test/aurc_balanced/gate/chow).
    metric_goals: ClassVar[dict[str, str]] = {
        f"{split}/{key}": "min" for split in ("test", "val", "tunev")
        for key in ("aurc_balanced", "aurc_worst", "balanced_error", "worst_error")
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # A second on a CPU: fewer fixed-point steps and worst-group rounds, the same rule and grids.
        "quick": {"alpha_iters": 10, "worst_rounds": 5, "worst_alpha_iters": 5},
    }

    # inputs
    gating_run: str | None = Field(
        None, description="a train-gating run (id or directory): its gate's mixture is source 'gate', and its logits "
                          "folder and experts are the default --logits-dir and --experts")
    checkpoint: Literal["best", "final"] = Field("best", description="the gate's checkpoint: best (by val balanced "
                                                                     "accuracy) or final")
    logits_dir: str | None = Field(
        None, description="recompute-logits run (id or directory) or its logits folder DIR/<expert>/<split>_logits.npz "
                          "(use the calibrated logits: its default final_calibrated_ checkpoints); default: the gating run's")
    experts: list[str] | None = Field(None, description="experts (sub-folders of the logits folder, comma-separated); "
                                                        "default: the gate's, else every expert in the manifest")
    labels_dir: str | None = Field(None, description="folder of <split>_targets.npy for .pt logits; default: the gating run's")
    splits_dir: str | None = Field(
        None, description="make-splits folder (or its class_counts.json): the train-LT class counts that define the "
                          "groups; default: the recompute-logits manifest, else the gate's checkpoint")
    source: list[str] = Field(["all"], min_length=1, description="posteriors to fit: gate, uniform (the experts' "
                              "average), an expert's name, or all (gate if given, uniform, every expert); comma-separated")
    methods: list[Literal[METHODS]] = Field(list(METHODS), min_length=1, description="rejectors: chow, plugin_balanced, "
                                                                                       "plugin_worst (comma-separated)")
    groups: Literal[tuple(GROUPINGS)] = Field(
        "head-tail", description="head-tail: K=2, tail = at most 20 train-LT images; many-medium-few: K=3 "
                                 "(>100, 20-100, <20 images)")
    fit_split: str = Field("tunev", description="S1: the split alpha is fitted on (the fixed point and its thresholds)")
    select_split: str = Field("val", description="S2: the split mu is selected on, and beta's worst-group errors measured on")
    test_split: str | None = Field("test", description="split reported (summary metrics) if its logits exist; 'none' to skip")
    # the sweep and its summary
    rates: list[float] = Field(DEFAULT_RATES, min_length=2, description="target rejection rates, each in [0, 1); "
                               "every split's threshold is the percentile of its own scores that rejects that share")
    aurc_axis: Literal[AURC_AXES] = Field(
        "target_rate", description="x of the AURC trapezoid: the target rates (the same grid for every source) or the "
                                   "rejection rates achieved (within 1/N of them)")
    aurc_normalised: bool = Field(False, description="divide the AURC by the rate range (r_max - r_min); off: the paper's "
                                                     "and the users' convention, an area over [r_min, r_max]")
    reweight_test: bool = Field(False, description="weight test errors by C * pi_train(y), the training prior "
                                                   "(the paper's appendix F.2)")
    empty_group_error: float = Field(
        1.0, ge=0, le=1, description="error of a group none of whose samples is accepted (0/0): 1 counts it as "
                                     "entirely wrong, so rejecting a whole group never looks like a cure")
    # CS-plug-in (Algorithm 1)
    lambda_grid: list[float] = Field(DEFAULT_LAMBDAS, min_length=1, description="mu grid: mu = [0, lambda] for K=2; "
                                     "for K=3 every pair [0, l1, l2] of grid values")
    alpha_iters: int = Field(20, ge=1, description="M: at most this many fixed-point updates of alpha per (rate, mu)")
    alpha_damping: float = Field(0.5, gt=0, le=1, description="alpha <- (1-d) alpha + d K P(accepted, y in G_k); "
                                                              "1 is the undamped update")
    alpha_tol: float = Field(1e-4, gt=0, description="stop once no alpha_k moves by more than this in one update")
    # worst-group plug-in (Algorithm 2)
    worst_rounds: int = Field(25, ge=1, description="T: exponentiated-gradient rounds on beta; the last iterate is kept")
    worst_lambda_grid: list[float] = Field(WORST_LAMBDAS, min_length=1, description="lambda grid of each round's CS-plug-in")
    worst_alpha_iters: int = Field(10, ge=1, description="M of each round's CS-plug-in")
    eg_step: float = Field(1.0, gt=0, description="xi: beta_k <- beta_k exp(xi e_k), then normalised")
    # run
    chunk_mb: int = Field(64, ge=1, description="MiB of one float64 [rows, E, C] block when reducing posteriors to "
                                                "per-group statistics; bounds peak memory at large C (iNaturalist)")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch while reducing posteriors (the fitting "
                                                        "runs on one); default: torch's choice")

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 <= r < 1]
        if bad:
            raise ValueError(f"rates must lie in [0, 1), got {', '.join(map(str, bad))}")
        out = sorted(set(v))
        if len(out) < 2:
            raise ValueError("give at least two distinct rates: an AURC is an area between them")
        return out

    @model_validator(mode="after")
    def _check(self) -> "FitRejectConfig":
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct, got {','.join(self.methods)}")
        if self.fit_split == self.select_split:
            raise ValueError(f"--fit-split and --select-split are both '{self.fit_split}'; select mu on held-out data")
        return self

    def run_name(self) -> str:
        base = self.gating_run or self.logits_dir or "logits"
        return f"reject-{str(base).rstrip('/').rsplit('/', 1)[-1]}"

    def total_epochs(self) -> int | None:
        return None
