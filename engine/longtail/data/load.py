"""The data set a long-tail config names (digits, CIFAR pickles or file lists), with its splits."""

from __future__ import annotations

from engine.longtail.data.images import ImageData


def load_image_data(cfg) -> ImageData:
    """The data set a config (engine.longtail.config.DataSettings) names, with its splits."""
    if cfg.dataset == "digits":
        from engine.longtail.data.embedded import load_digits_lt

        return load_digits_lt(image_size=cfg.image_size, imb_factor=cfg.imb_factor, split_seed=cfg.split_seed,
                              splits_dir=cfg.splits_dir)
    if cfg.dataset in ("cifar10", "cifar100"):
        from engine.longtail.data.cifar import load_cifar_lt

        return load_cifar_lt(cfg.dataset, cfg.data_root, cfg.imb_factor, cfg.split_seed, cfg.splits_dir, cfg.image_size)
    if cfg.dataset == "filelist":
        from engine.longtail.data.filelist import load_filelist_lt

        return load_filelist_lt(cfg.data_root, cfg.train_list, cfg.test_list, cfg.split_seed, cfg.splits_dir)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
