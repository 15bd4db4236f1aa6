"""Image folder loading: every mode becomes RGB, corrupt files are skipped and listed, order is fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eqsurgeon.errors import DataError, OptionError
from eqsurgeon.images import (
    IMAGENET_MEAN,
    ImageSource,
    LoaderOptions,
    image_loader,
    load_rgb,
    scan_images,
)
from eqsurgeon.inputs import model_input_size, model_normalization


def _rgb(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _truncated_jpeg(path: Path) -> None:
    Image.fromarray(_rgb(9, 64, 64)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # header intact, entropy-coded data cut


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(tmp_path / "a.jpg")
    Image.fromarray(_rgb(1)[..., 0]).save(tmp_path / "b_gray.png")
    Image.fromarray(np.dstack([_rgb(2), np.full((20, 30), 7, np.uint8)])).save(tmp_path / "c_rgba.png")
    Image.fromarray(_rgb(3)).convert("P").save(tmp_path / "sub" / "d_palette.png")
    Image.fromarray(_rgb(4)).save(tmp_path / "sub" / "e.WEBP")
    Image.fromarray(_rgb(5)).save(tmp_path / "sub" / "deeper" / "f.bmp")
    Image.fromarray(_rgb(6)).save(tmp_path / "sub" / "deeper" / "g.tif")
    Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(tmp_path / "h16.png")
    (tmp_path / "notes.txt").write_text("not an image and not an image extension")
    return tmp_path


def test_scan_is_recursive_sorted_and_case_insensitive(folder: Path) -> None:
    source = scan_images(folder)
    names = [p.relative_to(folder).as_posix() for p in source.paths]
    assert names == [
        "a.jpg",
        "b_gray.png",
        "c_rgba.png",
        "h16.png",
        "sub/d_palette.png",
        "sub/deeper/f.bmp",
        "sub/deeper/g.tif",
        "sub/e.WEBP",
    ]
    assert source.skipped == ()


def test_every_mode_decodes_to_rgb_uint8(folder: Path) -> None:
    for path in scan_images(folder).paths:
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (30, 20), path
    gray = np.asarray(load_rgb(folder / "b_gray.png"))
    np.testing.assert_array_equal(gray[..., 0], _rgb(1)[..., 0])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    rgba = np.asarray(load_rgb(folder / "c_rgba.png"))
    np.testing.assert_array_equal(rgba, _rgb(2))  # alpha dropped, colour kept


def test_sixteen_bit_is_scaled_not_clipped(folder: Path) -> None:
    # 32768 / 65535 * 255 = 127.5 -> 128; PIL's own convert("RGB") would clip to 255
    assert np.unique(np.asarray(load_rgb(folder / "h16.png"))).tolist() == [128]


def test_loader_shapes_normalization_and_resize(folder: Path) -> None:
    options = LoaderOptions(size=(16, 24), batch_size=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    loader, source = image_loader(folder, options)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [3, 3, 2]
    assert all(b.shape[1:] == (3, 16, 24) and b.dtype == torch.float32 for b in batches)
    allx = torch.cat(batches)
    assert allx.min() >= -1.0 and allx.max() <= 1.0  # (x/255 - 0.5) / 0.5
    assert loader.images_seen == 8 and loader.skipped == ()
    # the 16-bit constant image stays constant after resize: (128/255 - 0.5) / 0.5
    idx = [p.name for p in source.paths].index("h16.png")
    torch.testing.assert_close(allx[idx], torch.full((3, 16, 24), 128 / 255 * 2 - 1))


def test_non_square_target_covers_then_crops(tmp_path: Path) -> None:
    Image.fromarray(_rgb(0, 40, 10)).save(tmp_path / "tall.png")  # 40 high, 10 wide
    loader, _ = image_loader(tmp_path, LoaderOptions(size=(8, 32), batch_size=1))
    assert next(iter(loader)).shape == (1, 3, 8, 32)


def test_order_is_deterministic_and_seeded(folder: Path) -> None:
    def stats(seed: int, workers: int = 0) -> tuple[list[str], torch.Tensor]:
        options = LoaderOptions(size=(8, 8), batch_size=2, seed=seed, workers=workers)
        loader, source = image_loader(folder, options)
        return [p.name for p in source.paths], torch.cat(list(loader))

    names0, x0 = stats(0)
    names0b, x0b = stats(0, workers=2)
    names1, _ = stats(1)
    assert names0 == names0b and torch.equal(x0, x0b)
    assert sorted(names0) == sorted(names1) and names0 != names1
    _, sub = image_loader(folder, LoaderOptions(size=(8, 8), max_images=3, seed=0))
    assert [p.name for p in sub.paths] == names0[:3]


def test_corrupt_files_are_skipped_counted_and_listed(folder: Path) -> None:
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    _truncated_jpeg(folder / "sub" / "truncated.jpg")
    loader, source = image_loader(folder, LoaderOptions(size=(8, 8), batch_size=4, workers=2))
    assert {s.path.name for s in source.skipped} == {"garbage.jpg", "empty.png"}
    batches = list(loader)  # the truncated file fails inside a worker and must not crash the loader
    assert sum(b.shape[0] for b in batches) == 8 == loader.images_seen
    assert [s.path.name for s in loader.failed] == ["truncated.jpg"]
    assert "OSError" in loader.failed[0].reason
    assert len(loader.skipped) == 3


def test_empty_missing_and_corrupt_only_folders_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_images(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no usable image in .*\(no image\)"):
        scan_images(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"1 unreadable file\(s\), e.g. bad.png"):
        image_loader(tmp_path)
    (tmp_path / "bad.png").unlink()
    _truncated_jpeg(tmp_path / "cut.jpg")
    loader, _ = image_loader(tmp_path, LoaderOptions(size=(8, 8)))
    with pytest.raises(DataError, match="could be decoded"):
        list(loader)


def test_mean_std_default_to_imagenet_and_bad_ones_raise(folder: Path) -> None:
    loader, _ = image_loader(folder, LoaderOptions(size=(8, 8)))
    assert next(iter(loader)).shape[1] == 3
    with pytest.raises(OptionError, match=r"std=.*positive"):
        LoaderOptions(std=(0.2, 0.0, 0.2))


def test_fingerprint_tracks_contents(folder: Path) -> None:
    a = scan_images(folder).fingerprint()
    assert a == scan_images(folder).fingerprint()
    Image.fromarray(_rgb(11)).save(folder / "zz.png")
    assert scan_images(folder).fingerprint() != a
    assert isinstance(ImageSource((), ()).fingerprint(), str)


def test_model_normalization_sources() -> None:
    import timm

    assert model_normalization(nn.Conv2d(3, 3, 1)) is None
    net = timm.create_model("resnet18", pretrained=False)
    assert model_normalization(net) == (IMAGENET_MEAN, (0.229, 0.224, 0.225))
    wrapper = nn.Sequential(nn.Identity(), nn.Sequential(net))
    assert model_normalization(wrapper)[0] == IMAGENET_MEAN  # found on a submodule (zoo backbones)
    wrapper.eqsurgeon_cfg = {"mean": (0.1, 0.2, 0.3), "std": (1, 1, 1), "input_size": (3, 64, 96)}
    assert model_normalization(wrapper) == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))  # own declaration first
    assert model_input_size(wrapper) == (64, 96)
