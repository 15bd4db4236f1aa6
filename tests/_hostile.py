"""Hostile files for tests/test_hostile.py: a workspace that makes them, and a snapshot of a folder tree.

Everything is tiny: 32-pixel images, the fixture models, a PNG whose header declares a size it never
decodes to.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FX = str(ROOT / "fixtures" / "models.py")
FX_MODEL = f"{FX}:dropout_between"  # a conv-BN-ReLU branch and an upsampled one, fused by a 1×1 conv


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width``×``height`` 8-bit gray pixels but holds almost no data: only its header
    is sound, which is all a cheap size check reads."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def png_zeros(path: Path, width: int, height: int) -> Path:
    """A genuine all-black gray PNG of any size, written row by row (memory stays small while writing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row = zlib.compressobj(6), b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path below ``root`` (hidden ones too): (is a folder, size, mtime) by relative path."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (
                path.is_dir(),
                0 if path.is_dir() else st.st_size,
                st.st_mtime_ns,
            )
    return out


class Workspace:
    """A test's folder, with makers for the hostile inputs a case needs (all below ``root``)."""

    def __init__(self, root: Path, shared: Any) -> None:
        self.root, self.shared = root, shared

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def folder(self, name: str) -> Path:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return self.root / name

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def images(self, name: str = "imgs", n: int = 4, size: int = 32, black: bool = False) -> Path:
        """A folder of ``n`` RGB PNGs (random, or all black)."""
        folder, rng = self.folder(name), np.random.default_rng(0)
        for i in range(n):
            pixels = np.zeros((size, size, 3), np.uint8) if black else rng.integers(0, 256, (size, size, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        return folder

    def checkpoint(
        self,
        name: str,
        change: Callable[[dict[str, torch.Tensor]], None] | None = None,
        metadata: dict[str, str] | None = None,
        factory: Callable[[], torch.nn.Module] | None = None,
    ) -> Path:
        """The fixture model's weights (or ``factory()``'s), changed by ``change``, as safetensors."""
        from safetensors.torch import save_file

        from fixtures.models import dropout_between

        state = {k: v.clone() for k, v in (factory or dropout_between)().state_dict().items()}
        if change is not None:
            change(state)
        path = self.root / name
        save_file(state, str(path), metadata=metadata)
        return path

    def record(self, name: str, text: str) -> Path:
        """Weights whose ``eqsurgeon`` metadata is ``text`` (malformed records)."""
        return self.checkpoint(name, metadata={"eqsurgeon": text})

    def demo(self, name: str = "demo") -> Path:
        """A private copy of the shared demo data (6 images, 32 px), to damage."""
        return Path(shutil.copytree(self.shared.demo, self.root / name))

    def run(self, name: str = "run") -> Path:
        """A private copy of a finished 4-iteration run folder (checkpoints at 2 and 4)."""
        return Path(shutil.copytree(self.shared.run(), self.root / name))


def record_json(**change: Any) -> str:
    """A well-formed calibration record for the fixture model, with ``change`` applied."""
    record = {"model": FX_MODEL, "mode": "fold", "bn_mode": "batch", "images": 4, "data_fingerprint": "x"}
    return json.dumps({**record, **change})
