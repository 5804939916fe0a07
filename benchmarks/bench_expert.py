"""Expert training and logit recompute against the conventional pipeline, same model, same data shape.

Reference (what the original CIFAR-LT scripts do): a torchvision-style
Dataset that turns each uint8 image into a PIL image and applies
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize per
sample, a DataLoader with batch 128, fp32, contiguous memory. For logits:
per-sample ToTensor + Normalize, batch 128, each expert re-reading the data.

Ours: the engine's own code paths: DeviceImages (the split on the device as
uint8, crop+flip of whole batches there) feeding the job's
``train_one_epoch``; the recompute job's ``predict_with_backoff`` +
``write_split_logits``. On a GPU also channels_last, bf16 autocast and
(for the 200-epoch projection) torch.compile.

Rounds alternate ours and the reference and the medians are reported. On
a CPU both run on one thread and are timed in process CPU time
(``time.process_time``; the DataLoader runs in-process, so its decoding is
counted): the benchmark machine is shared, and wall time there measures the
neighbours' load more than the code.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = 100  # CIFAR-100 shape
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class _NoRecorder:
    def check_cancelled(self) -> None:
        pass


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, CLASSES, n).astype(np.int64)


class _ReferenceSet(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: HWC uint8 -> PIL -> transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, train: bool):
        from torchvision import transforms as T

        self.x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        self.y = y
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        self.tf = T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def _model(device: torch.device, channels_last: bool = False):
    from engine.longtail.models import build_network

    torch.manual_seed(0)
    m = build_network("resnet32", CLASSES, 3).to(device)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def reference_train(x, y, device: torch.device, batches: int | None = None) -> float:
    model = _model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(_ReferenceSet(x, y, True), batch_size=128, shuffle=True, num_workers=0)
    model.train()
    seen, t0 = 0, _clock(device)
    for i, (xb, yb) in enumerate(loader):
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(yb)
        if batches and i + 1 >= batches:
            break
    return seen / (_clock(device) - t0)


def ours_train(x, y, device: torch.device, epochs: int = 1, compile: bool = False) -> float:
    """Images/s over all epochs (the first includes compilation when ``compile``)."""
    per_epoch = ours_train_epochs(x, y, device, epochs, compile)
    return len(y) * epochs / sum(per_epoch)


def ours_train_epochs(x, y, device: torch.device, epochs: int, compile: bool = False) -> list[float]:
    """Seconds of each epoch through the job's own train_one_epoch."""
    from engine.core.config import resolve
    from engine.longtail.data.images import TensorSplit
    from engine.longtail.train_expert import make_optimizer, stages, train_one_epoch
    from engine.longtail.losses import make_loss
    from engine.common.device import uses_channels_last
    from engine.longtail.data.feed import DeviceImages

    cfg = resolve("train-expert", fields={"batch_size": "128", "epochs": str(epochs)})
    cl = uses_channels_last(device, cfg.amp)
    model = _model(device, channels_last=cl)
    forward = torch.compile(model) if compile else model
    feed = DeviceImages(TensorSplit(torch.from_numpy(x), torch.from_numpy(y)), device, MEAN, STD, channels_last=cl)
    stage = stages(cfg)[0]
    opt, _ = make_optimizer(model, cfg, stage)
    loss_fn = make_loss("ce", [1] * CLASSES, 1.0, device)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        t0 = _clock(device)
        train_one_epoch(model, forward, feed, opt, loss_fn, cfg, stage, gen, True, _NoRecorder())
        times.append(_clock(device) - t0)
    return times


def reference_logits(x, y, device: torch.device, experts: int, out: Path) -> float:
    t0 = _clock(device)
    for e in range(experts):
        model = _model(device).eval()
        loader = torch.utils.data.DataLoader(_ReferenceSet(x, y, False), batch_size=128, num_workers=0)
        chunks = []
        with torch.no_grad():
            for xb, _ in loader:
                chunks.append(model(xb.to(device)).cpu())
        np.save(out / f"ref{e}.npy", torch.cat(chunks).numpy())
    return _clock(device) - t0


def ours_logits(x, y, device: torch.device, experts: int, out: Path) -> float:
    from engine.longtail.data.images import TensorSplit
    from engine.longtail.recompute_logits import predict_with_backoff
    from engine.common.logit_files import write_split_logits
    from engine.common.device import uses_channels_last
    from engine.longtail.data.feed import DeviceImages

    cl = uses_channels_last(device, True)
    t0 = _clock(device)
    feed = DeviceImages(TensorSplit(torch.from_numpy(x), torch.from_numpy(y)), device, MEAN, STD, channels_last=cl)
    for e in range(experts):
        model = _model(device, channels_last=cl)
        logits, targets, _ = predict_with_backoff(model, feed, 512 if device.type == "cuda" else 64, amp=True)
        write_split_logits(out / f"e{e}", "test", logits, targets)
    return _clock(device) - t0


def _median_pair(ours, ref, rounds: int) -> tuple[float, float, list, list]:
    a, b = [], []
    for _ in range(rounds):
        a.append(ours())
        b.append(ref())
    return statistics.median(a), statistics.median(b), a, b


def run() -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    from engine.common.device import uses_bf16

    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else "CPU, 1 thread, timed in process CPU time")
    ours_mode = "bf16 autocast + channels_last" if uses_bf16(device, True) else "fp32"
    lines = ["## Expert training and logit recompute vs the conventional pipeline", "",
             f"ResNet-32, CIFAR-100-shaped data (3x32x32 uint8, 100 classes), batch 128; device: {where}. "
             f"Ours runs in {ours_mode} (the engine's defaults on this machine); the reference in fp32.", ""]

    n_train = 20_000 if device.type == "cuda" else 512
    x, y = _data(n_train)
    ours_train(x[:256], y[:256], device)  # warm-up (allocator, cuDNN autotune, thread pools)
    reference_train(x[:256], y[:256], device)
    o, r, os_, rs = _median_pair(lambda: ours_train(x, y, device), lambda: reference_train(x, y, device), 3)
    print(f"  training: ours {os_}, reference {rs}", flush=True)
    lines += ["| training, images/s | ours | reference | ratio |", "|---|---|---|---|",
              f"| {n_train} images x 3 rounds (median) | {o:.1f} | {r:.1f} | **{o / r:.2f}x** |", "",
              f"Rounds: ours {', '.join(f'{v:.1f}' for v in os_)}; reference {', '.join(f'{v:.1f}' for v in rs)}.", ""]

    experts, n_eval = 3, (10_000 if device.type == "cuda" else 2_000)
    xe, ye = _data(n_eval, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        o, r, os_, rs = _median_pair(lambda: ours_logits(xe, ye, device, experts, out),
                                     lambda: reference_logits(xe, ye, device, experts, out), 2)
    print(f"  recompute: ours {os_}, reference {rs}", flush=True)
    lines += ["| recompute-logits, seconds | ours | reference | speed-up |", "|---|---|---|---|",
              f"| {experts} experts x {n_eval:,} images (median of 2) | {o:.2f} | {r:.2f} | **{r / o:.2f}x** |", ""]

    if device.type == "cuda":
        # 200 epochs of CIFAR-100-LT IF100 (10,847 train-LT images, 90% in the expert split), compiled model
        n_lt = int(10_847 * 0.9)
        xl, yl = _data(n_lt, seed=2)
        times = ours_train_epochs(xl, yl, device, epochs=12, compile=True)
        steady = statistics.median(times[2:])
        projected = sum(times[:2]) + 198 * steady
        lines += [f"200-epoch CIFAR-100-LT ResNet-32 expert (training part, {n_lt} images/epoch, torch.compile + bf16 "
                  f"+ channels_last): steady {n_lt / steady:,.0f} images/s ({steady:.2f} s/epoch), first 2 epochs "
                  f"incl. compilation {sum(times[:2]):.1f} s; projected **{projected:.0f} s** for 200 epochs "
                  "(per-epoch val adds 1,000 images of inference).", ""]
    else:
        lines += ["No GPU in this run: the GPU targets (>= 5x training, < 90 s for a 200-epoch CIFAR-100-LT expert, "
                  "< 2 s recompute) are not measured here; `make bench` on a GPU machine fills them in.", ""]
    return "\n".join(lines)
