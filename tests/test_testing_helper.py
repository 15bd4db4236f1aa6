import pytest
import torch

from eqsurgeon.testing import assert_scale_equilibrium
from fixtures.models import iid_pyramid, iid_pyramid_equalized


def test_helper_passes_an_equalized_model_and_fails_an_unequal_one():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_scale_equilibrium(iid_pyramid_equalized(), x, max_ratio=1.2)
    with pytest.raises(AssertionError, match=r"fuse \(var_ratio 2\.\d+\)"):
        assert_scale_equilibrium(iid_pyramid(), x, max_ratio=1.2)
