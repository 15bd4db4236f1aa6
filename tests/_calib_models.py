"""Tiny fusion models and image folders for calibrate/verify tests (CPU, a few ms per forward)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding), nn.BatchNorm2d(cout), nn.ReLU())


class FuseNet(nn.Module):
    """stem ×1, ×2, ×4 → cat([x1, up(x2), up(x4)]) → fuse (k×k, no padding) → norm → ReLU → [site 2] → head.

    Site 2 (``two_sites``) concatenates the fused map with an upsampled ×4 map again, so its inputs
    depend on site 1's equalization. ``constant`` makes site 1's ×4 input a constant (zero variance).
    """

    def __init__(
        self,
        kernel: int = 1,
        norm: str = "bn",
        two_sites: bool = False,
        constant: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stem = cbr(3, 4)
        self.down2 = cbr(4, 6, stride=2)
        self.down4 = cbr(6, 5, stride=2)
        self.fuse = nn.Conv2d(15, 8, kernel, padding=0, bias=bias)
        self.norm = {"bn": nn.BatchNorm2d(8), "gn": nn.GroupNorm(2, 8), "none": nn.Identity()}[norm]
        self.two_sites = two_sites
        self.constant = constant
        self.fuse2 = nn.Conv2d(8 + 5, 6, 1)
        self.norm2 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6 if two_sites else 8, 3, 1)
        self.eqsurgeon_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 32, 32)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.stem(x)
        x2 = self.down2(x1)
        x4 = self.down4(x2) * 4.0  # a deliberately larger scale
        up2 = F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        up4 = F.interpolate(x4, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        if self.constant:  # site 1 only: site 2 still sees the real x4
            up4 = up4 * 0.0 + 2.0
        y = F.relu(self.norm(self.fuse(torch.cat([x1, up2, up4], dim=1))))
        if self.two_sites:
            up4b = F.interpolate(x4, size=y.shape[-2:], mode="bilinear", align_corners=False)
            y = F.relu(self.norm2(self.fuse2(torch.cat([y, up4b], dim=1))))
        return self.head(y)


class TokenFuse(nn.Module):
    """Channels-last fusion into nn.Linear (Segformer-style MLP head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.linear = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = F.interpolate(self.b(x) * 3.0, size=a.shape[-2:], mode="bilinear", align_corners=False)
        tokens = torch.cat([a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)], dim=-1)
        return self.linear(tokens)


class NoSites(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def fuse_1x1() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=1)


def fuse_3x3() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=3)


def fuse_two() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=1, two_sites=True)


def fuse_constant() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=1, constant=True)


def fuse_constant_two() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=1, constant=True, two_sites=True)


def fuse_two_plain() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=1, norm="none", two_sites=True)


def fuse_gn() -> nn.Module:
    torch.manual_seed(0)
    return FuseNet(kernel=3, norm="gn")


def token_fuse() -> nn.Module:
    torch.manual_seed(0)
    return TokenFuse()


def no_sites() -> nn.Module:
    return NoSites()


def make_images(folder: Path, count: int, size: int = 40, seed: int = 0) -> Path:
    """Smooth random colour images (a blurred noise field plus a gradient), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.normal(0, 1, (size // 4, size // 4, 3))
        img = Image.fromarray(((noise - noise.min()) / (np.ptp(noise) + 1e-9) * 255).astype(np.uint8))
        img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img).astype(np.float64) * 0.8 + np.linspace(0, 50, size)[None, :, None]
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder
