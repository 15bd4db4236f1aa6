"""The pipeline's pure functions follow mmseg on hand-made cases (test_parity_pipeline.py runs mmseg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eqsurgeon.training.augment import (
    PhotometricDraws,
    normalize,
    pad_batch,
    photometric_distortion,
    random_resize_size,
    rescale_size,
)
from eqsurgeon.training.config import DataConfig
from eqsurgeon.training.segmentation import SegmentationDataset, find_samples
from eqsurgeon.training.transforms import PadCollate, PhotoMetricDistortion


def test_resize_truncates_the_scaled_target_before_the_keep_ratio_fit() -> None:
    # ratio 0.7: 2048 × 0.7 = 1433.6 and 512 × 0.7 = 358.4 → target (1433, 358), not (1433.6, 358.4)
    assert random_resize_size(375, 500, (2048, 512), 0.7) == rescale_size(375, 500, (1433, 358)) == (358, 477)
    assert rescale_size(375, 500, (2048 * 0.7, 512 * 0.7)) == (358, 478)  # what the untruncated scale gives


def test_padding_is_zero_after_normalization_and_ignore_in_the_mask() -> None:
    data = DataConfig()
    items = [
        (torch.full((3, 4, 5), 7, dtype=torch.uint8), torch.ones(4, 5, dtype=torch.uint8)),
        (torch.full((3, 6, 6), 7, dtype=torch.uint8), torch.ones(6, 6, dtype=torch.uint8)),
    ]
    batch = PadCollate((6, 6), data.ignore_index)(items)
    x = normalize(batch.images, data.mean, data.std, batch.sizes)
    assert batch.sizes.tolist() == [[4, 5], [6, 6]]
    assert x.shape == (2, 3, 6, 6)
    assert torch.equal(x[0, :, 4:, :], torch.zeros(3, 2, 6))
    assert torch.equal(x[0, :, :, 5:], torch.zeros(3, 6, 1))
    black = (7 - torch.tensor(data.mean)) / torch.tensor(data.std)
    assert torch.allclose(x[0, :, :4, :5], black.view(3, 1, 1).expand(3, 4, 5))
    assert torch.equal(x[1], normalize(items[1][0][None], data.mean, data.std)[0])  # nothing padded
    assert (batch.masks[0, 4:] == 255).all() and (batch.masks[0, :4, :5] == 1).all()


def test_pad_batch_grows_to_the_largest_item() -> None:
    images = [torch.zeros(3, 2, 9, dtype=torch.uint8), torch.zeros(3, 5, 3, dtype=torch.uint8)]
    masks = [torch.zeros(2, 9, dtype=torch.uint8), torch.zeros(5, 3, dtype=torch.uint8)]
    assert pad_batch(images, masks, (4, 4), 255).images.shape == (2, 3, 5, 9)


def test_hue_draws_cover_minus_18_to_17() -> None:
    torch.manual_seed(0)
    t = PhotoMetricDistortion()
    hues = {t.make_params([])["draws"].hue for _ in range(3000)} - {None}
    assert hues == set(range(-18, 18))


def test_photometric_steps_truncate_to_uint8_between_steps() -> None:
    img = torch.tensor([[[100]], [[101]], [[250]]], dtype=torch.uint8)
    # brightness +0.6 truncates back to the input; contrast × 1.5 then sees the uint8 values
    out = photometric_distortion(img, PhotometricDraws(brightness=0.6, contrast_first=True, contrast=1.5))
    assert out.flatten().tolist() == [150, 151, 255]
    gray = torch.full((3, 1, 1), 77, dtype=torch.uint8)  # S = 0: saturation and hue leave gray alone
    assert torch.equal(photometric_distortion(gray, PhotometricDraws(saturation=1.4, hue=-18)), gray)


def test_ade20k_label_255_stays_ignored(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(base / "images" / split / "a.jpg")
        mask = np.array([[0, 1, 150, 255]] * 4, np.uint8)
        Image.fromarray(mask).save(base / "annotations" / split / "a.png")
    ds = SegmentationDataset(find_samples(tmp_path, "train"), num_classes=150)
    assert ds[0][1][0].tolist() == [255, 0, 149, 255]
