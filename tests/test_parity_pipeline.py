"""MMSegmentation 1.2.2 as the oracle for the data pipeline: the same random draws through both.

mmseg's own draws are recorded and replayed through eqsurgeon's pure functions (``training/augment.py``).
Runs only where mmseg is installed (``make test-parity``). Remaining deviations are asserted at their
measured size and listed in docs/parity.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _mmseg

pytestmark = [pytest.mark.parity, pytest.mark.skipif(not _mmseg.available(), reason=_mmseg.SKIP_REASON)]

from eqsurgeon.training import augment  # noqa: E402
from eqsurgeon.training.config import DataConfig  # noqa: E402


# -- the data pipeline on the same random draws ---------------------------------------------------------
class _Recorder:
    """Stands in for ``numpy.random`` in mmseg's transforms module and records what it draws."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.draws: list[Any] = []

    def randint(self, *args: Any) -> Any:
        self.draws.append(self.rng.randint(*args))
        return self.draws[-1]

    def uniform(self, *args: Any) -> Any:
        self.draws.append(self.rng.uniform(*args))
        return self.draws[-1]


def _replay(draws: list[Any]) -> augment.PhotometricDraws:
    # mmseg's order: brightness (coin, value), mode, [contrast], saturation, hue, [contrast]
    it = iter(draws)

    def step() -> Any:
        return next(it) if next(it) else None

    brightness = step()
    mode = int(next(it))
    contrast = step() if mode == 1 else None
    saturation = step()
    hue = step()
    if mode == 0:
        contrast = step()
    assert next(it, None) is None
    return augment.PhotometricDraws(
        None if brightness is None else float(brightness),
        mode == 1,
        None if contrast is None else float(contrast),
        None if saturation is None else float(saturation),
        None if hue is None else int(hue),
    )


def _photometric_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray, augment.PhotometricDraws]]:
    import mmseg.datasets.transforms.transforms as mm_transforms

    out = []
    rng = np.random.default_rng(0)
    original = mm_transforms.random
    try:
        for seed in range(count):
            # 64 wide: every pixel goes through OpenCV's vector loop (see test_hsv_conversions_match_opencv)
            rgb = rng.integers(0, 256, (16, 64, 3), dtype=np.uint8)
            recorder = _Recorder(seed)
            mm_transforms.random = recorder  # type: ignore[assignment]
            mm = mm_transforms.PhotoMetricDistortion()({"img": rgb[..., ::-1].copy()})["img"][..., ::-1]
            out.append((rgb, mm, _replay(recorder.draws)))
    finally:
        mm_transforms.random = original
    return out


def test_photometric_distortion_on_the_same_draws() -> None:
    exact, hsv_diffs, hues = 0, [], set()
    for rgb, mm, draws in _photometric_pairs(400):
        ours = augment.photometric_distortion(torch.from_numpy(rgb).permute(2, 0, 1), draws)
        diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - mm.astype(int))
        if draws.hue is not None:
            hues.add(draws.hue)
        if draws.saturation is None and draws.hue is None:
            assert diff.max() == 0, draws  # brightness and contrast alone: bit-exact
            exact += 1
        else:
            hsv_diffs.append(diff)
    assert exact > 50 and max(hues) == 17 and min(hues) == -18
    every = np.concatenate([d.ravel() for d in hsv_diffs])
    # what is left is OpenCV's float rounding in HSV→RGB (see below), at most one level, which a later
    # contrast step can stretch: measured 0.015% of values differ, by at most 2 (docs/parity.md)
    assert every.max() <= 2 and (every > 0).mean() < 1e-3, (every.max(), (every > 0).mean())


def test_hsv_conversions_match_opencv() -> None:
    import cv2

    c = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(4096, 4096, 3)  # every colour
    ours = augment.rgb_to_hsv_u8(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    h, s, v = np.meshgrid(np.arange(180, dtype=np.uint8), c, c, indexing="ij")
    hsv = np.stack([h, s, v], -1).reshape(180 * 256, 256, 3)  # every HSV value, rows of 256
    ours = augment.hsv_to_rgb_u8(torch.from_numpy(hsv).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    diff = np.abs(ours.astype(int) - cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(int))
    # OpenCV's vector loop truncates as ours does; its float op order differs on a few values: measured
    # 1758 of 11.8M pixels (0.015%), by one level
    assert diff.max() <= 1 and (diff > 0).any(-1).mean() < 5e-4
    # the scalar loop that finishes each row (its last W mod 16·lanes pixels) rounds instead
    row = hsv[:1, :70].copy()
    tail = np.abs(augment.hsv_to_rgb_u8(torch.from_numpy(row).permute(2, 0, 1)).permute(1, 2, 0).numpy()
                  .astype(int) - cv2.cvtColor(row, cv2.COLOR_HSV2RGB).astype(int))  # fmt: skip
    assert tail.max() <= 1


def test_random_resize_size_matches_mmcv() -> None:
    from mmseg.registry import TRANSFORMS

    # as the configs build it: mmcv's RandomResize around mmseg's Resize (which resizes seg_fields)
    t = TRANSFORMS.build({"type": "RandomResize", "scale": (2048, 512), "ratio_range": (0.5, 2.0),
                          "keep_ratio": True})  # fmt: skip
    for seed, (h, w) in enumerate([(375, 500), (512, 683), (333, 517), (1024, 2048), (481, 640)] * 20):
        np.random.seed(seed)
        ratio = np.random.random_sample() * (2.0 - 0.5) + 0.5  # the draw mmcv makes next
        np.random.seed(seed)
        out = t({"img": np.zeros((h, w, 3), np.uint8), "gt_seg_map": np.zeros((h, w), np.uint8),
                 "seg_fields": ["gt_seg_map"]})  # fmt: skip
        expected = out["img"].shape[:2]
        assert augment.random_resize_size(h, w, (2048, 512), ratio) == expected == out["gt_seg_map"].shape


def test_resize_interpolation_against_opencv() -> None:
    import mmcv

    from eqsurgeon.training.transforms import RandomResize

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    mask = rng.integers(0, 20, (75, 100), dtype=np.uint8)
    for size in [(113, 151), (40, 53), (75, 100)]:
        mm_img = mmcv.imresize(rgb, size[::-1], interpolation="bilinear")
        mm_mask = mmcv.imresize(mask, size[::-1], interpolation="nearest")
        t = RandomResize((1, 1), (1.0, 1.0))
        ours = t.transform(torch.from_numpy(rgb).permute(2, 0, 1), {"size": list(size)}).permute(1, 2, 0)
        from torchvision import tv_tensors

        ours_mask = t.transform(tv_tensors.Mask(torch.from_numpy(mask)[None]), {"size": list(size)})[0]
        assert np.array_equal(ours_mask.numpy(), mm_mask)  # nearest: exact
        # bilinear: cv2's 11-bit fixed point against torch's float; measured ≤ 1 level (docs/parity.md)
        assert np.abs(ours.numpy().astype(int) - mm_img.astype(int)).max() <= 1


def test_random_crop_on_the_same_draws() -> None:
    from mmseg.datasets.transforms import RandomCrop

    rng = np.random.default_rng(0)
    original = np.random.randint
    for seed in range(60):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cells = rng.integers(0, 3, (h // 8 + 1, w // 8 + 1))
        seg = cells.repeat(8, 0).repeat(8, 1)[:h, :w].astype(np.uint8)
        seg[: h // 3] = 0  # one class dominates many crops: re-draws happen
        draws: list[int] = []

        def recording(*args: Any, _draws: list[int] = draws) -> int:
            _draws.append(int(original(*args)))
            return _draws[-1]

        np.random.seed(seed)
        np.random.randint = recording  # mmseg calls np.random.randint at call time
        try:
            results = {"img": img, "gt_seg_map": seg, "seg_fields": ["gt_seg_map"]}
            out = RandomCrop((32, 32), cat_max_ratio=0.75)(results)
        finally:
            np.random.randint = original
        replay = iter(zip(draws[::2], draws[1::2], strict=True))
        top, left, ch, cw = augment.random_crop_box(
            torch.from_numpy(seg), (32, 32), 0.75, 255, lambda mh, mw, r=replay: next(r)
        )
        assert np.array_equal(seg[top : top + ch, left : left + cw], out["gt_seg_map"])
        assert np.array_equal(img[top : top + ch, left : left + cw], out["img"])
        assert next(replay, None) is None  # every mmseg draw was used


def test_training_model_input_is_padded_after_normalization() -> None:
    from mmengine.structures import PixelData
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.structures import SegDataSample

    data = DataConfig()
    pre = SegDataPreProcessor(mean=list(data.mean), std=list(data.std), bgr_to_rgb=True, pad_val=0,
                              seg_pad_val=255, size=(32, 32))  # fmt: skip
    rng = np.random.default_rng(0)
    sizes = ((32, 20), (17, 32))
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    masks = [torch.from_numpy(rng.integers(0, 5, img.shape[1:], dtype=np.uint8)) for img in images]
    samples = []
    for m in masks:
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=m[None].long())
        samples.append(s)
    out = pre({"inputs": [img.flip(0) for img in images], "data_samples": samples}, training=True)  # BGR in
    batch = augment.pad_batch(images, masks, (32, 32), 255)
    ours = augment.normalize(batch.images, data.mean, data.std, batch.sizes)
    assert torch.equal(ours, out["inputs"])
    theirs_masks = torch.stack([s.gt_sem_seg.data[0] for s in out["data_samples"]])
    assert torch.equal(batch.masks.long(), theirs_masks)


def test_eval_model_input_matches_the_test_pipeline(tmp_path: Path) -> None:
    from mmcv.transforms import LoadImageFromFile, Resize
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from PIL import Image

    from eqsurgeon.training.segmentation import SegmentationDataset, find_samples
    from eqsurgeon.training.transforms import eval_pipeline

    base = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for sub in ("images/validation", "annotations/validation", "images/training", "annotations/training"):
        (base / sub).mkdir(parents=True)
    # PNG, not JPEG: the decoders differ (cv2 and PIL), which is not what this test is about
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8), 5, 0), 5, 1)
    labels = rng.integers(0, 151, (375, 500), dtype=np.uint8)
    image_path = base / "images/validation/a.jpg"
    Image.fromarray(rgb).save(image_path, format="PNG")  # ADE lists *.jpg; the content is PNG
    Image.fromarray(labels).save(base / "annotations/validation/a.png")
    mm_pipeline = [LoadImageFromFile(), Resize(scale=(2048, 512), keep_ratio=True),
                   LoadAnnotations(reduce_zero_label=True), PackSegInputs()]  # fmt: skip
    label_path = base / "annotations/validation/a.png"
    results: dict[str, Any] = {"img_path": str(image_path), "seg_map_path": str(label_path),
                               "reduce_zero_label": True, "seg_fields": []}  # fmt: skip
    for t in mm_pipeline:
        results = t(results)
    data = DataConfig()
    pre = SegDataPreProcessor(mean=list(data.mean), std=list(data.std), bgr_to_rgb=True, pad_val=0,
                              seg_pad_val=255, size=(512, 512))  # fmt: skip
    theirs = pre({"inputs": [results["inputs"]], "data_samples": [results["data_samples"]]}, training=False)
    ds = SegmentationDataset(find_samples(tmp_path, "val"), 150, transform=eval_pipeline((2048, 512)))
    image, mask = ds[0]
    ours = augment.normalize(image[None], data.mean, data.std)
    assert ours.shape == theirs["inputs"].shape == (1, 3, 512, 683)  # no padding at test time
    # the only difference is bilinear resizing (cv2 fixed point vs torch float): ≤ 1 level before normalizing
    level = 1.0 / min(data.std)
    assert (ours - theirs["inputs"]).abs().max() <= level + 1e-5
    gt = results["data_samples"].gt_sem_seg.data[0]
    assert torch.equal(mask.long(), gt.long())  # labels, 255 included, as mmseg reduces them
