import pytest
import torch

from eqsurgeon.testing import assert_scale_equilibrium
from fixtures.models import iid_pyramid, iid_pyramid_equalized


def test_helper_passes_an_equalized_model_and_fails_an_unequal_one():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_scale_equilibrium(iid_pyramid_equalized(), x, max_ratio=1.2)
    with pytest.raises(AssertionError, match=r"fuse \(var_ratio 2\.\d+\)"):
        assert_scale_equilibrium(iid_pyramid(), x, max_ratio=1.2)


def test_helper_reads_a_checkpoint_and_recognizes_one_without_a_record(tmp_path):
    from eqsurgeon import api
    from eqsurgeon.calibration import CalibrationOptions
    from eqsurgeon.io import save_checkpoint, write
    from fixtures.calibration import fuse_two

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(4)]
    net = fuse_two()
    opts = api.DataOptions(batch_size=4, device="cpu")
    done = api.calibrate(net, batches, options=CalibrationOptions(min_batches=4), data_options=opts)
    write(tmp_path / "cal.pth", net, done.record)  # record in meta
    save_checkpoint(tmp_path / "plain.safetensors", net.state_dict())  # no record
    x = torch.cat(batches[:2])
    with pytest.raises(AssertionError, match=r"max_ratio 1\.5 at: fuse \(var_ratio \d+\.\d+\)"):
        assert_scale_equilibrium(fuse_two(), x)
    assert_scale_equilibrium(fuse_two(), x, tmp_path / "cal.pth")
    assert_scale_equilibrium(fuse_two(), x, tmp_path / "plain.safetensors")
    fresh = fuse_two()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert_scale_equilibrium(fresh, x, tmp_path / "cal.pth")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # loaded into a copy


@pytest.mark.slow
def test_pytest_shows_the_callers_line_not_eqsurgeon_frames(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "test_user.py").write_text(
        "import torch\n"
        "from eqsurgeon.testing import assert_scale_equilibrium\n"
        "from fixtures.models import iid_pyramid\n\n"
        "def test_model():\n"
        "    assert_scale_equilibrium(iid_pyramid(), torch.randn(4, 3, 64, 64), max_ratio=1.2)\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_user.py")],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "test_user.py:6: AssertionError" in res.stdout
    assert "eqsurgeon/testing.py" not in res.stdout and "max_ratio 1.2 at: fuse (var_ratio" in res.stdout
