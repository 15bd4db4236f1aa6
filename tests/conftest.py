"""What the tests share: the CLI runner and its one-line error assertion, demo data, a scoped registry.

Fixture models live in ``fixtures/`` (the repository root is put on ``sys.path`` here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # makes `fixtures` importable from tests

FIXTURE_FILE = ROOT / "fixtures" / "models.py"


def run_cli(*args: object, catch_exceptions: bool = True, env: dict[str, str] | None = None) -> Any:
    """Invoke ``eqsurgeon ARGS...`` in-process; stdout and stderr are kept apart on the result."""
    from typer.testing import CliRunner

    from eqsurgeon.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions, env=env)


def assert_input_error(result: Any, *needles: str) -> str:
    """Exit code 2 and exactly one stderr line, ``error: ...``, holding every needle; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``demo_data(images=8, size=32)``: an ``eqsurgeon demo-data`` folder, made once per argument set."""
    from eqsurgeon.training.demo_data import make_demo_data

    made: dict[tuple[int, int], Path] = {}

    def make(images: int = 8, size: int = 32) -> Path:
        if (images, size) not in made:
            root = tmp_path_factory.mktemp(f"demo{images}x{size}") / "demo"
            made[images, size] = make_demo_data(root, images=images, size=size)
        return made[images, size]

    return make


@pytest.fixture
def scoped_registry() -> Iterator[None]:
    """Registrations made during the test (leaves, upsample functions, models) are undone after it."""
    from eqsurgeon.registry import scoped

    with scoped():
        yield


@pytest.fixture
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
