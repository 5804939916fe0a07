"""Configs of the gating jobs (``train-gating``, ``evaluate-gating``).

Torch- and numpy-free: ``engine.core.config.JOBS`` loads this module so the manager
can build launch forms for it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from engine.core.config import JobConfig, register

# Data sets of the long-tail pipeline: where `engine recompute-logits` writes
# their logits, how many classes they have and which experts the recipe trains.
# The class count guards against pointing a preset at another data set's logits.
LT_EXPERTS = ["ce", "logit_adjust", "balanced_softmax"]
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar100_lt_if100": {"dataset": "cifar100_lt_if100", "logits_dir": "outputs/logits/cifar100_lt_if100",
                          "num_classes": 100, "experts": LT_EXPERTS},
    "imagenet_lt": {"dataset": "imagenet_lt", "logits_dir": "outputs/logits/imagenet_lt",
                    "num_classes": 1000, "experts": LT_EXPERTS},
    "inaturalist2018": {"dataset": "inaturalist2018", "logits_dir": "outputs/logits/inaturalist2018",
                        "num_classes": 8142, "experts": LT_EXPERTS},
}


@register
class TrainGatingConfig(JobConfig):
    """Learn per-sample weights over E frozen experts from their logits (MAP routing)."""

    kind: ClassVar[str] = "train-gating"

    job: ClassVar[str] = "engine.gating.train_gating"
    help: ClassVar[str] = "Train a gate that mixes frozen experts' logits per sample."
    primary_metric: ClassVar[str] = "val/balanced_acc"
    metric_goals: ClassVar[dict[str, str]] = {"eff_experts": "max"}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        **DATASET_PRESETS,
        # Seconds on a CPU: few epochs; the data-set keys stay whatever is given.
        "quick": {"epochs": 10, "warmup_epochs": 1},
    }

    # inputs
    logits_dir: str | None = Field(
        None, description="folder of per-expert logits: DIR/<expert>/<split>_logits.npz (engine recompute-logits) "
                          "or DIR/<expert>/<split>_logits.pt (original layout, needs --labels-dir); or a "
                          "recompute-logits run directory or run id, whose artifacts/logits is used")
    experts: list[str] = Field(LT_EXPERTS, min_length=1, description="expert names, sub-folders of --logits-dir (comma-separated)")
    train_split: str = Field("gating", description="split the gate is trained on (held out from the experts' training)")
    val_split: str = Field("val", description="split for model selection (best checkpoint by balanced accuracy)")
    test_split: str | None = Field("test", description="split reported at the end if its logits exist; 'none' to skip")
    labels_dir: str | None = Field(
        None, description="folder of <split>_targets.npy (or .json): labels for .pt logits; checked against .npz targets")
    class_weights: str | None = Field(
        None, description="class_weights.json (a list of C weights, or {'class_weights': [...]}); normalised to sum to C; "
                          "uniform when absent")
    class_counts: str | None = Field(
        None, description="JSON with the train-LT class counts (a list, or {'class_counts': [...]}, e.g. train-expert's "
                          "artifacts/class_groups.json) defining head/tail; default: the experts' train split as the "
                          "recompute-logits manifest records it, else train-split counts / --train-share")
    train_share: float = Field(
        0.1, gt=0, le=1, description="share of the train-LT set held in --train-split (the gating split is 10%), used to "
                                     "estimate train-LT counts when neither --class-counts nor the manifest gives them")
    dataset: str | None = Field(None, description="data set the logits come from (set by the data-set presets; names errors)")
    num_classes: int | None = Field(None, ge=2, description="expected class count; a mismatch with the logits is an error")
    # model (the original train_gating_map.py)
    hidden: list[int] = Field([256, 128], min_length=1, description="hidden widths of the gating MLP")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after each hidden layer")
    router: Literal["dense", "top_k"] = Field(
        "dense", description="dense: softmax(router logits / T); top_k: noisy top-k (Shazeer et al. 2017), softmax over the k kept")
    top_k: int = Field(2, ge=1, description="experts kept per sample by the top_k router")
    noise_std: float = Field(1.0, ge=0, description="std of the Gaussian noise added to router logits by top_k in training")
    temperature_start: float = Field(2.0, gt=0, description="router temperature at the first epoch (annealed linearly)")
    temperature_end: float = Field(0.7, gt=0, description="router temperature at the last epoch")
    # loss: mixture NLL plus switchable terms (0 switches a term off)
    lambda_lb: float = Field(1e-2, ge=0, description="weight of the Switch-style load-balancing loss E*sum f_e P_e "
                                                      "(Fedus et al. 2021); top_k router only")
    lambda_entropy: float = Field(0.01, ge=0, description="weight of the mean routing entropy H(w) (penalised: sharper per-sample routing)")
    lambda_resp: float = Field(0.1, ge=0, description="weight of KL(q || w), q the (tempered, detached) posterior "
                                                      "responsibilities r_e = w_e p_e(y) / sum_j w_j p_j(y)")
    resp_temperature: float = Field(1.0, gt=0, description="temperature T of q = softmax(log r / T); 1 uses r itself, <1 sharpens")
    lambda_prior: float = Field(0.05, ge=0, description="weight of KL(mean w over a group || group prior), summed over head/tail")
    prior_temperature: float = Field(0.1, gt=0, description="temperature of the group prior softmax(acc_g,e / T) over per-group "
                                                            "expert accuracies on the train split")
    # optimisation
    epochs: int = Field(100, ge=1, description="training epochs")
    batch_size: int = Field(128, ge=2, description="samples per AdamW step")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay")
    warmup_epochs: int = Field(5, ge=0, description="linear warm-up epochs, then cosine decay to 0")
    grad_clip: float = Field(1.0, gt=0, description="max global L2 norm of the gradient")
    # run
    seed: int = Field(0, description="seed of initialisation, batch order, dropout and router noise")
    feature_chunk_mb: int = Field(32, ge=1, description="MiB of one float64 [rows, E, C] block when building features; "
                                                       "bounds peak memory at large C (iNaturalist: C=8142)")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")

    @model_validator(mode="after")
    def _check(self) -> "TrainGatingConfig":
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts must be distinct, got {','.join(self.experts)}")
        if self.router == "top_k" and self.top_k > len(self.experts):
            raise ValueError(f"top_k {self.top_k} is more than the {len(self.experts)} experts")
        return self

    def run_name(self) -> str:
        return f"gating-{self.router}-{self.dataset or 'logits'}"


@register
class EvaluateGatingConfig(JobConfig):
    """Score a trained gate on a split beside each expert, the uniform average and the oracle."""

    kind: ClassVar[str] = "evaluate-gating"

    job: ClassVar[str] = "engine.gating.evaluate_gating"
    help: ClassVar[str] = "Evaluate a train-gating run on a split (final numbers)."
    positional: ClassVar[tuple[str, ...]] = ("run",)
    primary_metric: ClassVar[str] = "gate/balanced_acc"

    run: str | None = Field(None, description="the train-gating run: its id in the workspace, or its directory")
    split: str = Field("test", description="split to evaluate")
    checkpoint: Literal["best", "final"] = Field("best", description="best (by val balanced accuracy) or final checkpoint")
    logits_dir: str | None = Field(None, description="logits folder; default: the training run's")
    labels_dir: str | None = Field(None, description="labels folder; default: the training run's")

    def run_name(self) -> str:
        return f"evaluate-gating-{self.split}"

    def total_epochs(self) -> int | None:
        return None
