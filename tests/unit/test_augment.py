from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.longtail.data.augment import random_crop_flip


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(x, pad=2, flip=False, gen=g)
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (2,), generator=g)
    ox = torch.randint(0, 5, (2,), generator=g)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 6])


def test_flip_mirrors_about_half_of_a_batch():
    x = torch.randn(400, 3, 4, 4)
    out = random_crop_flip(x, pad=0, flip=True, gen=torch.Generator().manual_seed(0))
    flipped = sum(torch.equal(o, xi.flip(2)) for o, xi in zip(out, x))
    same = sum(torch.equal(o, xi) for o, xi in zip(out, x))
    assert flipped + same == 400 and 150 < flipped < 250


def test_uint8_batches_keep_their_dtype():
    x = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    assert random_crop_flip(x, pad=1, flip=True).dtype == torch.uint8


def test_cpu_and_gather_crops_agree():
    from engine.longtail.data.augment import _crop_by_gather, _crop_by_offset_groups

    x = torch.randint(0, 255, (64, 3, 10, 10), dtype=torch.uint8)
    padded = F.pad(x, (4, 4, 4, 4))
    g = torch.Generator().manual_seed(1)
    oy, ox = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    assert torch.equal(_crop_by_offset_groups(padded, oy, ox, 10, 10), _crop_by_gather(padded, oy, ox, 10, 10))
