"""Configs of the m-height jobs (registered into engine.core.config.JOBS when it loads them).

Torch- and numpy-free: the manager imports it (through engine.core.config.JOBS) to
build launch forms and validate submissions.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from engine.core.config import TRUST, JobConfig, register
from engine.fast.switch import HELP as CPU_KERNELS_HELP
from engine.fast.switch import CpuKernels

# The course grid: n in {9, 10}, k in {4, 5, 6}, m = 2..n-k (21 groups).
COURSE_N = [9, 10]
COURSE_K = [4, 5, 6]
PAD = 6  # models read P zero-padded to 6 x 6: the largest k and n-k of the course grid

DEVICE_HELP = "'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'"


@register
class MHeightGenerateConfig(JobConfig):
    """Exact m-height labels for random codes over an (n, k, m) grid, as resumable .npz shards."""

    kind: ClassVar[str] = "mheight-generate"

    job: ClassVar[str] = "engine.mheight.generate"
    help: ClassVar[str] = "m-height data: random codes over an (n, k, m) grid, exact labels, .npz shards."
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"codes_per_group": 96, "shard_size": 48, "workers": 1},
    }
    metric_goals: ClassVar[dict[str, str]] = {"labels_per_s": "max", "labels": "max"}

    n_values: list[int] = Field(COURSE_N, description="code lengths n (course grid: 9, 10)")
    k_values: list[int] = Field(COURSE_K, description="dimensions k; pairs with k >= n are skipped (course grid: 4, 5, 6)")
    m_min: int = Field(2, ge=0, description="smallest m of each (n, k); the course uses 2")
    m_max: int | None = Field(None, ge=0, description="largest m; default n-k, the largest that can be finite")
    codes_per_group: int = Field(10000, ge=1, description="codes per (n, k); each is labelled for every m, so also labels per (n, k, m) group")
    p_dist: Literal["int_uniform", "uniform", "normal"] = Field(
        "int_uniform", description="distribution of P's entries: integers uniform in [p_low, p_high] (the course's), reals uniform in it, or normal(0, p_scale)")
    p_low: float = Field(-100, description="lowest entry of P (int_uniform, uniform)")
    p_high: float = Field(100, description="highest entry of P (int_uniform, uniform)")
    p_scale: float = Field(1.0, gt=0, description="standard deviation of P's entries (normal)")
    seed: int = Field(0, description="seed; each shard derives its own from (seed, n, k, shard), so a resumed run is identical")
    shard_size: int = Field(4096, ge=1, description="codes per shard file (the unit of resuming and of parallel work)")
    batch_size: int = Field(32, ge=1, description="codes per vectorised solver call on a CPU; ~32 keeps the working set (~160 kB per code at n=10, k=5) in cache, 2x faster than 256")
    gpu_batch_size: int = Field(8192, ge=1, description="codes per solver call on a GPU (~0.5 MB of GPU memory per code at n=10, k=5)")
    workers: int | None = Field(None, ge=1, description="worker processes on a CPU; default: one per core")
    device: str = Field("auto", description=DEVICE_HELP + "; a GPU runs in-process with large batches")
    resume_from: str | None = Field(None, description="a previous generate run (or its shards dir) with the same grid: its finished shards are reused")

    @model_validator(mode="after")
    def _grid(self):
        if self.p_dist != "normal" and self.p_low > self.p_high:
            raise ValueError(f"p_low {self.p_low} > p_high {self.p_high}")
        if self.m_max is not None and self.m_max < self.m_min:
            raise ValueError(f"m_max {self.m_max} < m_min {self.m_min}")
        return self

    def total_epochs(self) -> int | None:
        return None  # progress is counted in shards, set once the grid is known

    def run_name(self) -> str:
        return f"mheight-data-n{','.join(map(str, self.n_values))}-k{','.join(map(str, self.k_values))}-{self.codes_per_group}"


@register
class MHeightImportConfig(JobConfig):
    """Convert the users' folders of pickled pandas DataFrames into shards."""

    kind: ClassVar[str] = "mheight-import"

    job: ClassVar[str] = "engine.mheight.import_codes"
    help: ClassVar[str] = "m-height data: import pickled pandas DataFrames (n, k, m, result, P) into shards."

    source: str = Field(..., description="folder of pickled DataFrames (*.pkl, *.pickle), searched recursively")
    # TRUST: only --trust-pickle typed on the command line sets it (not --config, --set or a pipeline)
    trust_pickle: Annotated[bool, TRUST] = Field(False, description="required: unpickling runs code from the file, so only import files you trust; only this option typed on the command line gives it")
    shard_size: int = Field(4096, ge=1, description="codes per shard file")

    def run_name(self) -> str:
        return "mheight-import"


class _MHeightFitConfig(JobConfig):
    """Fields shared by train and finetune."""

    data: str = Field(..., description="training data: a generate/import run directory or its shards/ folder")
    val_data: str | None = Field(None, description="validation data (same forms); default: a val_fraction split of --data")
    pairs: list[str] | None = Field(None, description="train on these (n, k) pairs only, e.g. 9x4,10x5 (to pretrain specialised experts); default: all")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of each (n, k, m) group held out for validation when --val-data is not given")
    minor_features: bool = Field(False, description="add statistics (min, mean, std) of log2 |det| of P's square submatrices per size: what the height is made of; ~600 multiply-adds per code (n=10, k=5) per prediction")
    p_input: bool = Field(True, description="feed P's entries (zero-padded 6 x 6) to the model; --no-p-input with --minor-features reads only the statistics, which are already invariant to P's signed permutations: fc only, no canonicalisation, the first layer reads 33 inputs instead of 69")
    canonicalize: bool = Field(True, description="put P in a canonical signed-permutation form (h is invariant to it) before the model sees it")
    augment: bool = Field(False, description="random row/column permutations and sign flips of P per batch (h is invariant); redundant when canonicalizing")
    expert_arch: Literal["fc", "resnet2d"] = Field("resnet2d", description="expert network of hard_moe and sparse_moe")
    hidden: int = Field(256, ge=8, description="fc: width of the hidden layers")
    depth: int = Field(3, ge=1, description="fc: number of hidden layers")
    norm: bool = Field(True, description="fc: LayerNorm after each hidden layer (--no-norm: cheaper to predict, see docs/mheight.md)")
    act: Literal["gelu", "relu"] = Field("gelu", description="fc: activation of the hidden layers (relu is the cheaper on a CPU)")
    channels: int = Field(64, ge=4, description="resnet2d: channels of the residual blocks")
    blocks: int = Field(4, ge=1, description="resnet2d: residual blocks (two 3x3 convs each, 6x6 maps, no downsampling)")
    vit_dim: int = Field(64, ge=8, description="vit: token width (one token per row of P)")
    vit_depth: int = Field(3, ge=1, description="vit: transformer layers")
    vit_heads: int = Field(4, ge=1, description="vit: attention heads")
    num_experts: int = Field(6, ge=2, description="sparse_moe: experts (the course grid has 6 (n, k) pairs)")
    top_k: int = Field(2, ge=1, le=2, description="sparse_moe: experts per code (Shazeer et al. 2017 top-k gating)")
    gate_hidden: int = Field(128, ge=0, description="sparse_moe: hidden width of the gate MLP; 0 makes the gate linear (a few multiply-adds per expert)")
    balance_weight: float = Field(0.01, ge=0, description="sparse_moe: weight of the load-balance loss E * sum_e f_e p_e (Switch Transformer, Fedus et al. 2021)")
    epochs: int = Field(60, ge=1, description="training epochs")
    batch_size: int = Field(64, ge=2, description="codes per AdamW step, each with its labels for every m (~3.5 on the course grid)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW), cosine-decayed to 0 after warm-up")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay")
    warmup_epochs: int = Field(2, ge=0, description="linear learning-rate warm-up, in epochs")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    split_seed: int = Field(0, description="seed of the train/val split of --data; keep it fixed so runs (and the experts of a finetune) share one validation set")
    seed: int = Field(0, description="seed of initialisation, batch order and augmentation")
    device: str = Field("auto", description=DEVICE_HELP)
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")
    cpu_kernels: CpuKernels = Field("auto", description=CPU_KERNELS_HELP)

    primary_metric: ClassVar[str] = "val/log2_mse"

    @model_validator(mode="after")
    def _p_input(self):
        if not self.p_input and not self.minor_features:
            raise ValueError("--no-p-input leaves the model nothing but (n, k) to read: add --minor-features")
        return self


@register
class MHeightTrainConfig(_MHeightFitConfig):
    """Train one m-height regressor on padded P plus (n, k, m); loss = MSE of log2 h."""

    kind: ClassVar[str] = "mheight-train"

    job: ClassVar[str] = "engine.mheight.train"
    help: ClassVar[str] = "m-height: train a regressor (fc, resnet2d, vit, hard_moe, sparse_moe) on log2 h."
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"epochs": 3, "hidden": 32, "depth": 2, "channels": 8, "blocks": 1, "vit_dim": 16, "vit_depth": 1,
                  "vit_heads": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0},
    }

    model: Literal["fc", "resnet2d", "vit", "hard_moe", "sparse_moe"] = Field(
        "resnet2d", description="fc: MLP; resnet2d: P as a 6x6 image; vit: rows of P as tokens; hard_moe: one expert per (n, k); sparse_moe: learned top-k gate")

    @model_validator(mode="after")
    def _p_input_arch(self):
        arch = self.model if self.model in ("fc", "resnet2d", "vit") else self.expert_arch
        if not self.p_input and arch != "fc":
            raise ValueError(f"--no-p-input needs fc ({arch} reads P as its structure): use --model fc, or --expert-arch fc for {self.model}")
        return self

    def run_name(self) -> str:
        return f"mheight-{self.model}"


@register
class MHeightFinetuneConfig(_MHeightFitConfig):
    """A sparse top-k MoE whose experts start from pretrained single-model checkpoints, trained together."""

    kind: ClassVar[str] = "mheight-finetune"

    job: ClassVar[str] = "engine.mheight.finetune"
    help: ClassVar[str] = "m-height: sparse MoE from pretrained single-model checkpoints, then trained jointly."
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 0},
    }

    experts: list[str] = Field(..., description="pretrained mheight-train checkpoints (or run directories), one per expert, all of one architecture (fc or resnet2d)")
    epochs: int = Field(30, ge=1, description="fine-tuning epochs")
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW); lower than training so the experts keep what they learned")
    gate_lr_scale: float = Field(10.0, gt=0, description="the new gate learns this many times faster than the pretrained experts")

    @model_validator(mode="after")
    def _two_experts(self):
        if len(self.experts) < 2:
            raise ValueError("a mixture needs at least two expert checkpoints")
        return self

    def run_name(self) -> str:
        return f"mheight-finetune-{len(self.experts)}x"


@register
class MHeightEvaluateConfig(JobConfig):
    """Score a trained m-height checkpoint on a data set, overall and per (n, k, m) group."""

    kind: ClassVar[str] = "mheight-evaluate"

    job: ClassVar[str] = "engine.mheight.evaluate"
    help: ClassVar[str] = "m-height: evaluate a checkpoint (Log2-MSE overall and per group, speed)."
    primary_metric: ClassVar[str] = "test/log2_mse"

    checkpoint: str = Field(..., description="a checkpoint file, or a train/finetune run directory (its best.pth)")
    data: str = Field(..., description="a generate/import run directory or its shards/ folder")
    batch_size: int = Field(16384, ge=1, description="codes per forward pass")
    cpu_kernels: CpuKernels = Field("auto", description=CPU_KERNELS_HELP)
    device: str = Field("auto", description=DEVICE_HELP)
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")

    def total_epochs(self) -> int | None:
        return None

    def run_name(self) -> str:
        return "mheight-evaluate"
