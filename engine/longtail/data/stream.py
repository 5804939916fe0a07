"""File-list images streamed through a DataLoader, served like DeviceImages.

ImageNet-sized images cannot live on the device; worker processes decode and
augment them per sample (the usual ResNet-50 transforms) and the main process
only moves finished batches.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from engine.core.errors import JobError
from engine.longtail.data.filelist import FileSplit


def resnet_transforms(size: int, train: bool, mean, std, hflip: bool):
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(size)] + ([T.RandomHorizontalFlip()] if hflip else [])
    else:
        # 256 -> 224 for ImageNet: resize to 8/7 of the crop, then a centre crop.
        steps = [T.Resize(round(size * 8 / 7)), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class _Files(Dataset):
    def __init__(self, split: FileSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        from PIL import Image

        path = self.split.root / self.split.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise JobError(f"cannot read image {path} ({e}); fix or remove it from the list") from None
        return self.transform(img), self.split.y[i]


def _leave_cancel_to_the_main_process(_worker_id: int) -> None:
    # A cancel reaches the whole process group. A worker dying of it would turn the
    # main process's clean stop (status "cancelled") into a "DataLoader worker killed" crash;
    # the main process shuts its workers down itself, and they exit if it dies.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StreamedImages:
    def __init__(self, split: FileSplit, device: torch.device, mean, std, image_size: int, hflip: bool,
                 workers: int, channels_last: bool = False):
        self.split, self.device = split, device
        self.y = split.y
        self.train_tf = resnet_transforms(image_size, True, mean, std, hflip)
        self.eval_tf = resnet_transforms(image_size, False, mean, std, hflip)
        self.workers = workers
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.split)

    def _loader(self, ds, batch_size: int, sampler=None, shuffle=False, gen=None, drop_last=False) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle, generator=gen,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=drop_last,
                          persistent_workers=False, worker_init_fn=_leave_cancel_to_the_main_process)

    def _move(self, xb, yb):
        xb = xb.to(self.device, non_blocking=True)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool, hflip: bool,
                      balanced: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = _Files(self.split, self.train_tf if augment else self.eval_tf)
        sampler = None
        if balanced:
            sampler = WeightedRandomSampler(_balanced_weights(self.y), len(self.y), replacement=True, generator=gen)
        # drop_last: BatchNorm cannot train on a batch of one image
        loader = self._loader(ds, batch_size, sampler=sampler, shuffle=sampler is None, gen=gen,
                              drop_last=len(self.y) % batch_size == 1)
        for xb, yb in loader:
            yield self._move(xb, yb)

    def eval_batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self._loader(_Files(self.split, self.eval_tf), batch_size):
            yield self._move(xb, yb)


def _balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-sample weight 1/n_c: every class is drawn equally often."""
    counts = torch.bincount(y).double()
    return (1.0 / counts)[y]
