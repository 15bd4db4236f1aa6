"""Weights and calibration records on disk: the one package that reads and writes them.

Every file eqsurgeon writes goes through :func:`atomic_write` (a temporary file in the same folder,
fsync, then ``os.replace``), and every folder through :func:`atomic_folder`, so a crash or Ctrl-C
leaves the old output or the complete new one. A calibration record travels as a typed
``CalibrationRecord`` and becomes JSON only here, under the one key ``eqsurgeon`` in every format
(``formats`` lists where: safetensors metadata, ``config.json`` of transformers/smp folders, the
``meta`` of an MMSegmentation ``.pth``).

Units: ``image_mean``/``image_std`` in a record are on the 0–1 pixel scale (torchvision's convention).
Records written on the 0–255 scale (MMSegmentation's, as early trainer checkpoints did) are converted
when read.

    files ─ recordjson ─┬─ safetensors_file ─┐
                        ├─ pth_file ─────────┼─ folder_files ─ hf_folder, smp_folder ─ formats ─ weights
    fitting ────────────┘                    ┘

>>> import tempfile, torch
>>> from pathlib import Path
>>> from eqsurgeon.records import CalibrationRecord
>>> path = Path(tempfile.mkdtemp()) / "x.safetensors"
>>> record = CalibrationRecord(model="m", mode="fold", bn_mode="batch", images=2, data_fingerprint="ab")
>>> save_checkpoint(path, {"w": torch.ones(2)}, record).name
'x.safetensors'
>>> read_checkpoint(path)[1].mode
'fold'
"""

from __future__ import annotations

from eqsurgeon.io.files import (
    atomic_folder,
    atomic_write,
    check_output,
    check_output_folder,
    finite,
    remove_stale_temps,
    write_json,
)
from eqsurgeon.io.fitting import check_tensors, fit_state_dict, strip_ddp_prefix
from eqsurgeon.io.formats import (
    Loaded,
    Source,
    check_out,
    check_writable,
    folder_model,
    output_format,
    read,
    read_checkpoint,
    read_state_dict,
    write,
)
from eqsurgeon.io.recordjson import (
    METADATA_KEY,
    record_from_header,
    record_from_json,
    record_from_value,
    record_to_dict,
    record_to_json,
    record_to_plain,
)
from eqsurgeon.io.safetensors_file import save_checkpoint
from eqsurgeon.io.weights import (
    apply_checkpoint,
    check_record_fits,
    check_record_layers,
    load,
    rebuild_equalizers,
    refuse_double_equalization,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "METADATA_KEY",
    "Loaded",
    "Source",
    "apply_checkpoint",
    "atomic_folder",
    "atomic_write",
    "check_out",
    "check_output",
    "check_output_folder",
    "check_record_fits",
    "check_record_layers",
    "check_tensors",
    "check_writable",
    "finite",
    "fit_state_dict",
    "folder_model",
    "load",
    "output_format",
    "read",
    "read_checkpoint",
    "read_state_dict",
    "rebuild_equalizers",
    "record_from_header",
    "record_from_json",
    "record_from_value",
    "record_to_dict",
    "record_to_json",
    "record_to_plain",
    "refuse_double_equalization",
    "remove_stale_temps",
    "save_checkpoint",
    "strip_ddp_prefix",
    "write",
    "write_json",
]
