"""Configs of the long-tail jobs (make-splits, train-expert, recompute-logits, verify-logits).

Torch-free: the manager builds launch forms from them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from engine.core.config import JobConfig, register


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

    job: ClassVar[str] = "engine.longtail.make_splits"
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

    job: ClassVar[str] = "engine.longtail.train_expert"
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
    arch: Literal["resnet32", "resnet20", "resnet56", "resnet8", "resnet18", "resnet50"] = Field(
        "resnet32", description="backbone: CIFAR ResNet-32, -20 or -56 (He et al. 2016; resnet8 is a smoke-test "
        "size), ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), or torchvision's ResNet-50 (for file lists)",
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

    job: ClassVar[str] = "engine.longtail.recompute_logits"
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

    job: ClassVar[str] = "engine.longtail.verify_logits"
    help: ClassVar[str] = "Check a recompute-logits output: shapes, argmax, NaN/Inf, accuracy, shared targets."

    logits: str = Field(..., description="a recompute-logits run directory (or its artifacts/logits folder)")

    def run_name(self) -> str:
        return "verify-logits"

    def total_epochs(self) -> int | None:
        return None


