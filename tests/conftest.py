import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # makes `fixtures` importable from tests

FIXTURE_FILE = ROOT / "fixtures" / "models.py"


@pytest.fixture
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
