"""Segmentation datasets: layouts, checks that name the bad file, and seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from eqsurgeon.errors import DataError
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.sampler import InfiniteSampler, shard_indices
from eqsurgeon.training.segmentation import SegmentationDataset, find_samples
from eqsurgeon.training.transforms import PhotoMetricDistortion, RandomCrop, train_pipeline


def _pair(image: Path, mask: Path | None, size: tuple[int, int] = (8, 10), label: int = 1) -> None:
    h, w = size
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(image)
    if mask is not None:
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w), label, np.uint8), mode="L").save(mask)


def test_generic_folder_pairs_images_and_masks_by_stem(tmp_path: Path) -> None:
    for name in ("b", "a"):
        _pair(tmp_path / "images" / f"{name}.jpg", tmp_path / "masks" / f"{name}.png")
    found = find_samples(tmp_path, "train")
    assert found.format == "folder"
    assert [p.name for p in found.images] == ["a.jpg", "b.jpg"]
    assert [p.name for p in found.masks] == ["a.png", "b.png"]
    image, mask = SegmentationDataset(found, num_classes=2)[0]
    assert image.shape == (3, 8, 10) and image.dtype == torch.uint8 and mask.shape == (8, 10)


def test_ade20k_layout_reduces_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    _pair(base / "images/training/x.jpg", base / "annotations/training/x.png", label=0)
    _pair(base / "images/validation/y.jpg", base / "annotations/validation/y.png", label=150)
    assert find_samples(tmp_path, "train").format == "ade20k"
    train = SegmentationDataset(find_samples(tmp_path, "train"), num_classes=150)
    val = SegmentationDataset(find_samples(tmp_path, "val"), num_classes=150)
    assert int(train[0][1].unique()) == 255  # "other" is ignored
    assert int(val[0][1].unique()) == 149  # classes shift down by one


def test_cityscapes_and_voc_aug_layouts(tmp_path: Path) -> None:
    city = tmp_path / "city"
    _pair(city / "leftImg8bit/train/aachen/a_000_leftImg8bit.png",
          city / "gtFine/train/aachen/a_000_gtFine_labelTrainIds.png")
    assert find_samples(city, "train").format == "cityscapes"
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    _pair(voc / "JPEGImages/2007_000032.jpg", voc / "SegmentationClassAug/2007_000032.png")
    _pair(voc / "JPEGImages/2007_000033.jpg", voc / "SegmentationClass/2007_000033.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000032\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    train, val = find_samples(tmp_path, "train"), find_samples(tmp_path, "val")
    assert train.format == "voc" and train.masks[0].parent.name == "SegmentationClassAug"
    assert val.masks[0].parent.name == "SegmentationClass"


def test_wrong_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DataError, match="matches no known dataset layout"):
        find_samples(tmp_path, "train")
    with pytest.raises(DataError, match="masks is missing"):
        (tmp_path / "images").mkdir()
        find_samples(tmp_path, "train", "folder")


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    _pair(tmp_path / "images/a.png", tmp_path / "masks/a.png")
    _pair(tmp_path / "images/lonely.png", None)
    with pytest.raises(DataError, match=r"lonely\.png has no mask"):
        find_samples(tmp_path, "train")


def test_mask_size_mismatch_names_the_mask(tmp_path: Path) -> None:
    _pair(tmp_path / "images/a.png", None, size=(8, 10))
    _pair(tmp_path / "x.png", tmp_path / "masks/a.png", size=(8, 12))
    ds = SegmentationDataset(find_samples(tmp_path, "train"), num_classes=2)
    with pytest.raises(DataError, match=r"mask .*a\.png is 12x8 but its image a\.png is 10x8"):
        ds[0]


def test_label_outside_classes_is_an_error_unless_ignored(tmp_path: Path) -> None:
    _pair(tmp_path / "images/a.png", tmp_path / "masks/a.png", label=7)
    _pair(tmp_path / "images/b.png", tmp_path / "masks/b.png", label=255)
    ds = SegmentationDataset(find_samples(tmp_path, "train"), num_classes=5)
    with pytest.raises(DataError, match=r"a\.png has label 7, outside data.num_classes = 5"):
        ds[0]
    assert int(ds[1][1].unique()) == 255


def test_rgb_mask_is_refused(tmp_path: Path) -> None:
    _pair(tmp_path / "images/a.png", None)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "masks.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks.png").rename(tmp_path / "masks/a.png")
    with pytest.raises(DataError, match="single-channel index PNGs"):
        SegmentationDataset(find_samples(tmp_path, "train"), num_classes=2)[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "d", images=8, size=64)


def test_augmentation_depends_only_on_seed_epoch_index(demo: Path) -> None:
    pipe = train_pipeline((48, 48), (128, 64), (0.5, 2.0), 0.75, 0.5, True, 255)
    ds = SegmentationDataset(find_samples(demo, "train"), 5, transform=pipe, seed=3)
    torch.manual_seed(123)  # the global stream must not matter, and must not be consumed
    state = torch.get_rng_state()
    a = ds[(2, 5)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = ds[(2, 5)]
    c = ds[(3, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape[0] == 3 and a[0].shape[-2:] == a[1].shape  # at most 48×48: padded per batch
    assert a[1].shape[0] <= 48 and a[1].shape[1] <= 48
    assert not torch.equal(a[0], c[0])


def test_crop_rejects_crops_dominated_by_one_class() -> None:
    mask = torch.zeros(1, 20, 20, dtype=torch.uint8)
    mask[:, :, 15:] = 1  # class 1 only in the right quarter
    crop = RandomCrop((10, 10), cat_max_ratio=0.75, ignore_index=255)
    torch.manual_seed(0)
    shares = []
    for _ in range(50):
        out = crop(tv_tensors.Image(torch.zeros(3, 20, 20)), tv_tensors.Mask(mask))[1]
        shares.append(float((out == 0).float().mean()))
    # Without the re-draws most crops would be all class 0; with them almost none are.
    assert sum(s >= 0.75 for s in shares) < 5


def test_photometric_distortion_leaves_the_mask_alone() -> None:
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 5, (1, 6, 6), dtype=torch.uint8))
    changed = 0
    for _ in range(10):
        out_image, out_mask = PhotoMetricDistortion()(image, mask)
        assert torch.equal(out_mask, mask) and out_image.dtype == torch.uint8
        changed += int(not torch.equal(out_image, image))
    assert changed >= 8


def test_sampler_resumes_mid_epoch_and_shards_ranks() -> None:
    full = iter(InfiniteSampler(10, seed=1, rank=1, world=2))
    stream = [next(full) for _ in range(12)]
    resumed = iter(InfiniteSampler(10, seed=1, rank=1, world=2, start=7))
    assert [next(resumed) for _ in range(5)] == stream[7:]
    rank0 = iter(InfiniteSampler(10, seed=1, rank=0, world=2))
    epoch0 = {i for _, i in [next(rank0) for _ in range(5)]} | {i for e, i in stream if e == 0}
    assert epoch0 == set(range(10))  # the two ranks split each epoch
    assert shard_indices(5, 0, 2) + shard_indices(5, 1, 2) == [0, 2, 4, 1, 3]


def test_ranks_take_strided_positions_of_each_epoch_permutation() -> None:
    """MMSeg's layout: rank r reads positions r, r + world, ... of the epoch's permutation, and the
    remainder (size mod world) is left out of the epoch."""
    ordered = [iter(InfiniteSampler(10, seed=0, rank=r, world=3, shuffle=False)) for r in range(3)]
    taken = [[next(s) for _ in range(4)] for s in ordered]
    assert taken[0] == [(0, 0), (0, 3), (0, 6), (1, 0)]
    assert taken[2] == [(0, 2), (0, 5), (0, 8), (1, 2)]  # index 9 is in no rank's epoch
    shuffled = [iter(InfiniteSampler(10, seed=4, rank=r, world=3)) for r in range(3)]
    epoch0 = [[next(s)[1] for _ in range(3)] for s in shuffled]
    single = iter(InfiniteSampler(10, seed=4))  # one process reads the same permutation in order
    assert [epoch0[r][k] for k in range(3) for r in range(3)] == [next(single)[1] for _ in range(9)]
    assert [next(s)[0] for s in shuffled] == [1, 1, 1]  # a new epoch after len // world samples
