"""Atomic writes of files and folders, and the checks every output path gets before any work.

A file is written to a temporary file in the same folder, fsynced, then renamed into place
(``os.replace``); a folder is written in full next to its target, then renamed into place. A crash or
Ctrl-C leaves the old output or the complete new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from eqsurgeon.errors import OutputExistsError


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync, then rename it into place.

    The temporary file is removed on any failure, KeyboardInterrupt included; the file gets the mode a
    plain ``open`` would give it (0666 less the umask).

    >>> import tempfile
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.bin", lambda f: f.write(b"hi"))
    >>> p.read_bytes()
    b'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_folder(path: Path | str, fill: Callable[[Path], object]) -> Path:
    """Call ``fill(empty folder)`` on a temporary folder next to ``path``, then rename it into place.

    An existing ``path`` (the caller checked ``force``) is replaced only once the new folder is complete.

    >>> import tempfile
    >>> p = atomic_folder(Path(tempfile.mkdtemp()) / "out", lambda d: (d / "a.txt").write_text("hi"))
    >>> sorted(x.name for x in p.iterdir())
    ['a.txt']
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def write_json(path: Path | str, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (NaN/inf become null: JSON has neither)."""
    text = json.dumps(finite(data), indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def check_output(path: Path | str, force: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """Fail before any work when ``path`` cannot be written: missing folder, existing file, wrong suffix.

    >>> check_output(Path("/nonexistent-dir/x.safetensors"), False)
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.OutputExistsError: output folder /nonexistent-dir does not exist; create it first
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputExistsError(f"output folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; name a file inside it")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; choose another path or pass force=True to overwrite")
    if suffixes and path.suffix not in suffixes:
        raise OutputExistsError(f"{path} must end in {' or '.join(suffixes)}")
    if not os.access(path.parent, os.W_OK):
        raise OutputExistsError(f"output folder {path.parent} is not writable; choose another")
    return path


def check_output_folder(path: Path | str, force: bool) -> Path:
    """Like :func:`check_output`, for an output that is a folder (a ``save_pretrained`` folder).

    >>> check_output_folder(Path("/nonexistent-dir/out"), False)
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.OutputExistsError: output folder /nonexistent-dir does not exist; create it first
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputExistsError(f"output folder {path.parent} does not exist; create it first")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file; a save_pretrained output is a folder, name a new one")
    if path.exists() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"{path} already exists; choose another path or pass force=True to overwrite")
    if not os.access(path.parent, os.W_OK):
        raise OutputExistsError(f"output folder {path.parent} is not writable; choose another")
    return path


def finite(data: Any) -> Any:
    """``data`` with NaN/inf floats replaced by None, recursively: JSON has neither.

    >>> finite({"a": [1.0, float("inf")]})
    {'a': [1.0, None]}
    """
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, Mapping):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data
