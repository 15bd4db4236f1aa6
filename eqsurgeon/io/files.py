"""Atomic writes of files and folders, and the checks every output path gets before any work.

A file is written to a temporary file in the same folder, fsynced, then renamed into place
(``os.replace``); a folder is written in full next to its target, then renamed into place. A crash or
Ctrl-C leaves the old output or the complete new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from eqsurgeon.errors import OutputExistsError
from eqsurgeon.stats import finite


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync, then rename it into place.

    The temporary file, ``.{name}.{pid}.tmp``, is removed on any failure, KeyboardInterrupt included;
    ones that a killed process left (its pid is gone) are removed when ``path`` is next written. The file
    gets the mode a plain ``open`` would give it (0666 less the umask). An OS error (a full or read-only
    disk) names ``path``.

    >>> import tempfile
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.bin", lambda f: f.write(b"hi"))
    >>> p.read_bytes()
    b'hi'
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or Path(exc.filename) == tmp:  # say which output failed, not its temp
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Remove the ``.{name}.{pid}.tmp`` files of ``path`` whose writer is no longer alive; return them.

    A SIGKILL or power loss during :func:`atomic_write` leaves such a file behind (the output itself
    is intact). A temp file of a live process, another run writing the same output, is left alone.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / ".x.bin.999999999.tmp").write_bytes(b"half")
    4
    >>> [p.name for p in remove_stale_temps(d / "x.bin")]
    ['.x.bin.999999999.tmp']
    """
    path = Path(path)
    prefix, suffix = f".{path.name}.", ".tmp"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in names:
        pid = name[len(prefix) : -len(suffix)]
        if name.endswith(suffix) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            (path.parent / name).unlink(missing_ok=True)
            removed.append(path.parent / name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


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
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputExistsError(f"{path.parent} is a file, not a folder; choose another path")
    if not path.parent.is_dir():
        raise OutputExistsError(f"output folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; name a file inside it")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; choose another path or pass force=True to replace")
    if suffixes and path.suffix not in suffixes:
        raise OutputExistsError(f"{path} must end in {' or '.join(suffixes)}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
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
        raise OutputExistsError(f"{path} already exists; choose another path or pass force=True to replace")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"output folder {path.parent} is not writable; choose another")
    return path
