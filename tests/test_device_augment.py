"""Device-side batch augmentation: the same augmentation as the per-sample CPU pipeline, in distribution
(colour shifts: KS tests) and sample by sample (geometry, masks, seeds)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import _rgb_to_hsv

from eqsurgeon.training.augment import PhotometricDraws, pad_batch
from eqsurgeon.training.config import load_config
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.device_augment import COL, decode_images, photometric, plan_row, resize_crop_flip
from eqsurgeon.training.device_data import PlannedDataset, collate_planned, model_input
from eqsurgeon.training.transforms import PhotoMetricDistortion
from tests._train_helpers import DEMO_RECIPE

DRAWS = 1000
# Two-sample Kolmogorov-Smirnov at alpha = 0.001 with equal sample sizes: D > 1.949 sqrt(2 / n) rejects.
KS_CRITICAL = 1.949 * math.sqrt(2 / DRAWS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("aug") / "demo", images=6, size=64)


STEPS = ("brightness", "contrast", "saturation", "hue")


def _image() -> torch.Tensor:
    # A fixed colourful image whose levels no step can clip: every hue, saturation 0.25-0.6 (×1.5 stays
    # below 1), value 0.35-0.65 (levels 35-166: ±32 and ×1.5 stay within 0-255).
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb

    g = torch.Generator().manual_seed(0)
    hsv = torch.stack([torch.rand(8, 64, generator=g), 0.25 + 0.35 * torch.rand(8, 64, generator=g),
                       0.35 + 0.3 * torch.rand(8, 64, generator=g)])  # fmt: skip
    return (_hsv_to_rgb(hsv) * 255).round().to(torch.uint8)


def _shift(step: str, original: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The shift each output image shows for one step: the level added (brightness), the factor on the
    levels (contrast) or on saturation, the hue rotation in OpenCV units (nearest integer)."""
    x, x0 = out.float(), original.float()
    if step == "brightness":
        return (x - x0).mean((-3, -2, -1))
    if step == "contrast":
        return x.mean((-3, -2, -1)) / x0.mean()
    hsv, hsv0 = _rgb_to_hsv(x / 255), _rgb_to_hsv(x0 / 255)
    if step == "saturation":
        return hsv[..., 1, :, :].mean((-2, -1)) / hsv0[1].mean()
    turn = (hsv[..., 0, :, :] - hsv0[0]) * 2 * math.pi
    return (torch.atan2(turn.sin().mean((-2, -1)), turn.cos().mean((-2, -1))) * 90 / math.pi).round()


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def _draws(step: str, seed0: int) -> list[PhotometricDraws]:
    # PhotoMetricDistortion's own draws, with every other step switched off
    t = PhotoMetricDistortion()
    params = []
    for i in range(DRAWS):
        torch.manual_seed(seed0 + i)
        drawn = t.make_params([])["draws"]
        off = {s: None for s in STEPS if s != step}
        params.append(dataclasses.replace(drawn, **off))
    return params


@pytest.mark.parametrize("step", STEPS)
def test_colour_shifts_are_distributed_as_the_per_sample_cpu_version(step: str) -> None:
    image = _image()
    cpu_t = PhotoMetricDistortion()
    cpu = torch.stack([cpu_t.transform(tv_tensors.Image(image), {"draws": p}).as_subclass(torch.Tensor)
                       for p in _draws(step, 0)])  # fmt: skip
    # independent seeds: the comparison is between distributions, not sample by sample
    plans = torch.stack([plan_row((1, 1), (0, 0, 1, 1), False, p) for p in _draws(step, 10**6)])
    batch = photometric(image.expand(DRAWS, -1, -1, -1), plans)
    d = _ks(_shift(step, image, cpu), _shift(step, image, batch))
    assert d < KS_CRITICAL, f"{step}: KS {d:.3f} >= {KS_CRITICAL:.3f}"
    # the test has power: a batch version that skipped the step is rejected
    plans[:, COL[step]] = math.nan
    skipped = photometric(image.expand(DRAWS, -1, -1, -1), plans)
    assert _ks(_shift(step, image, cpu), _shift(step, image, skipped)) > KS_CRITICAL


def test_photometric_follows_mmsegs_uint8_steps() -> None:
    x = torch.tensor([100, 50, 200], dtype=torch.uint8).view(1, 3, 1, 1)
    row = plan_row((1, 1), (0, 0, 1, 1), False, PhotometricDraws(brightness=10.9))
    assert photometric(x, row[None]).flatten().tolist() == [110, 60, 210]  # truncated, as astype(uint8)
    # contrast runs right after brightness or after the HSV steps; clipping makes the order matter
    def plan(**colour: object) -> torch.Tensor:
        return plan_row((1, 1), (0, 0, 1, 1), False, PhotometricDraws(**colour))[None]

    orange = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1)
    first = photometric(orange, plan(hue=40, contrast=1.5, contrast_first=True))
    last = photometric(orange, plan(hue=40, contrast=1.5, contrast_first=False))
    assert torch.equal(first, photometric(photometric(orange, plan(contrast=1.5)), plan(hue=40)))
    assert torch.equal(last, photometric(photometric(orange, plan(hue=40)), plan(contrast=1.5)))
    assert not torch.equal(first, last)
    gray = torch.full((1, 3, 2, 2), 77, dtype=torch.uint8)
    hsv_only = plan_row((1, 1), (0, 0, 1, 1), False, PhotometricDraws(saturation=1.5, hue=17))
    assert torch.equal(photometric(gray, hsv_only[None]), gray)  # no colour to scale or rotate
    # per-sample parameters: the second image of the batch is left alone
    both = torch.stack([row, plan_row((1, 1), (0, 0, 1, 1), False)])
    assert photometric(x.expand(2, -1, -1, -1), both)[1].flatten().tolist() == [100, 50, 200]


def test_batched_photometric_equals_the_per_sample_function() -> None:
    from eqsurgeon.training.augment import photometric_distortion

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    draws = [_draws(step, 7)[0] for step in STEPS] + [PhotometricDraws(), PhotometricDraws(
        brightness=-20.5, contrast_first=False, contrast=1.3, saturation=0.7, hue=-18)]  # fmt: skip
    plans = torch.stack([plan_row((8, 8), (0, 0, 8, 8), False, d) for d in draws])
    batch = photometric(images, plans)
    for i, d in enumerate(draws):  # sample by sample, bit for bit
        assert torch.equal(batch[i], photometric_distortion(images[i], d)), d
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    turned = photometric(red, plan_row((1, 1), (0, 0, 1, 1), False, PhotometricDraws(hue=60))[None])
    assert turned.flatten().tolist() == [0, 255, 0]  # +60 on OpenCV's 180 scale = +120°: red → green


def test_resize_crop_flip_matches_resize_then_crop() -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        h, w = torch.randint(8, 60, (2,), generator=g).tolist()
        rh, rw = torch.randint(8, 90, (2,), generator=g).tolist()
        ch, cw = min(32, rh), min(24, rw)
        top = int(torch.randint(0, rh - ch + 1, (), generator=g))
        left = int(torch.randint(0, rw - cw + 1, (), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        ref = F.crop(F.resize(img, [rh, rw], antialias=False), top, left, ch, cw)
        ref = ref.flip(-1) if flip else ref
        out = resize_crop_flip([img], plan_row((rh, rw), (top, left, ch, cw), flip)[None], (32, 24))
        assert (out[0, :, :ch, :cw].int() - ref.int()).abs().max() <= 1
        assert out[0, :, ch:].eq(0).all() and out[0, :, :, cw:].eq(0).all()


def test_planned_samples_match_the_per_sample_pipeline(data: Path) -> None:
    cfg = load_config(DEMO_RECIPE, [f'data.root="{data}"', "data.photometric=false"])
    train_set, _ = make_datasets(cfg)
    planned = PlannedDataset(train_set, cfg.data)
    crop, ignore = tuple(cfg.data.crop_size), cfg.data.ignore_index
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    padded_any = False
    for key in [(e, i) for e in range(3) for i in range(len(train_set))]:
        image, mask = train_set[key]
        source, planned_mask, plan = planned[key]
        reference = pad_batch([image], [mask], crop, ignore)
        assert torch.equal(planned_mask, reference.masks[0]), key  # same seed, same draws, same geometry
        x, y = model_input(collate_planned([(source, planned_mask, plan)]), cfg.data, torch.device("cpu"))
        x_ref, y_ref = model_input(reference, cfg.data, torch.device("cpu"))
        assert ((x - x_ref) * std).abs().max() <= 1.0 + 1e-4, key  # bilinear rounding only
        assert torch.equal(y, y_ref)
        h, w = mask.shape
        padded_any |= (h, w) != crop
        assert x[0, :, h:].eq(0).all() and x[0, :, :, w:].eq(0).all()  # 0 after normalizing, as mmseg
    assert padded_any  # some crops were smaller than the crop size: the padding was checked


def test_jpeg_bytes_decode_like_pil(tmp_path: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (24, 40, 3), dtype=torch.uint8, generator=g).numpy()
    path = tmp_path / "a.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    (decoded,) = decode_images([raw], torch.device("cpu"))
    with Image.open(path) as img:
        ref = torch.tensor(__import__("numpy").array(img.convert("RGB"))).permute(2, 0, 1)
    assert decoded.shape == ref.shape and (decoded.int() - ref.int()).abs().max() <= 2


@pytest.mark.slow
def test_trainer_augments_on_the_device_and_resumes_exactly(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eqsurgeon.training.device_data as device_data
    from eqsurgeon.io import read_state_dict
    from eqsurgeon.training.loop import train
    from tests._train_helpers import quick, truncated_copy

    calls: list[int] = []
    real = device_data.augment_batch

    def counting(images: list[torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(device_data, "augment_batch", counting)
    sets = ("data.augment=device", "data.crop_size=[48, 48]", "checkpoint.keep=3", "eval.max_images=2")
    full = train(load_config(DEMO_RECIPE, quick(data, tmp_path / "full", *sets)))
    assert calls == [4] * 6  # every batch of 4 was augmented on the device
    part = truncated_copy(tmp_path / "full", tmp_path / "part", after=4)
    resumed = train(load_config(DEMO_RECIPE, quick(data, part, *sets)), resume=True)
    a, _ = read_state_dict(full.weights)
    b, _ = read_state_dict(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the plan is seeded per sample, like the CPU pipeline
