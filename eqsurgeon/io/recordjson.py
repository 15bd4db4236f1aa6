"""The calibration record at the file boundary: typed ``CalibrationRecord`` ⇄ JSON, under one key.

Every format stores the record under the key ``eqsurgeon``: a canonical JSON string in safetensors
metadata, a JSON object in a ``save_pretrained`` folder's ``config.json`` (HF, smp) and in a ``.pth``
file's ``meta`` (MMSegmentation). Records written on the 0–255 pixel scale are converted to 0–1 when read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eqsurgeon.errors import CheckpointError, one_line
from eqsurgeon.records import CalibrationRecord, InputRecord, SiteRecord, validate_record
from eqsurgeon.stats import finite

METADATA_KEY = "eqsurgeon"


def record_to_dict(record: CalibrationRecord) -> dict[str, Any]:
    """The record as plain JSON-able data, with the writing tool's version filled in."""
    data = asdict(record)
    if not data["tool_version"]:
        from eqsurgeon import __version__

        data["tool_version"] = __version__
    return data


def record_to_json(record: CalibrationRecord) -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal records give equal bytes."""
    return json.dumps(record_to_dict(record), sort_keys=True, separators=(",", ":"), allow_nan=True)


def record_to_plain(record: CalibrationRecord) -> dict[str, Any]:
    """The record as a JSON object of lists, numbers and strings (NaN as null), for config.json and meta.

    >>> from eqsurgeon.records import CalibrationRecord
    >>> record_to_plain(CalibrationRecord("m", "fold", "eval", 1, "ab"))["mode"]
    'fold'
    """
    return finite(json.loads(record_to_json(record)))


def record_from_json(text: str) -> CalibrationRecord:
    """Parse :func:`record_to_json` output; unknown keys (newer versions) are ignored.

    >>> r = record_from_json('{"model": "m", "mode": "fold", "bn_mode": "eval", "images": 1, '
    ...                      '"data_fingerprint": "", "image_mean": [123.675, 116.28, 103.53]}')
    >>> [round(v, 3) for v in r.image_mean]
    [0.485, 0.456, 0.406]
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the record is not a JSON object")
    return _from_dict(data)


def record_from_value(value: Any, source: Path | str = "") -> CalibrationRecord | None:
    """The record stored under the ``eqsurgeon`` key in any format (a JSON string or object), or None.

    Raises:
        CheckpointError: the value is not a well-formed record.

    >>> record_from_value({"model": "m", "mode": "fold", "bn_mode": "eval", "images": 1,
    ...                    "data_fingerprint": ""}).mode
    'fold'
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            record = record_from_json(value)
        elif isinstance(value, Mapping):
            record = _from_dict(dict(value))
        else:
            raise TypeError(f"it is a {type(value).__name__}, not a JSON object")
        validate_record(record)
        return record
    except Exception as exc:  # any shape of broken JSON: wrong types, missing keys, nesting
        raise CheckpointError(
            f"{source or 'the checkpoint'} has a malformed eqsurgeon record ({one_line(exc)}); "
            "recalibrate from the original weights"
        ) from exc


def record_from_header(header: Mapping[str, str], source: Path | str = "") -> CalibrationRecord | None:
    """The record under the ``eqsurgeon`` key of safetensors metadata, or None."""
    return record_from_value(header.get(METADATA_KEY), source)


def _from_dict(data: dict[str, Any]) -> CalibrationRecord:
    sites = tuple(
        SiteRecord(
            **{
                **_known(SiteRecord, s),
                "inputs": tuple(
                    InputRecord(**{**_known(InputRecord, i), "channels": tuple(i["channels"])})
                    for i in s.get("inputs", ())
                ),
            }
        )
        for s in data.get("sites", ())
    )
    tuples = {k: tuple(data[k]) for k in ("input_size", "image_mean", "image_std") if data.get(k)}
    if "image_mean" in tuples and max(tuples["image_mean"]) > 1.5:  # a 0–255 record: to 0–1
        tuples["image_mean"] = tuple(v / 255 for v in tuples["image_mean"])
        tuples["image_std"] = tuple(v / 255 for v in tuples.get("image_std", ()))
    return CalibrationRecord(**{**_known(CalibrationRecord, data), **tuples, "sites": sites})


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}
