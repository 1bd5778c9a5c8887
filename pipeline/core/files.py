"""Atomic writes and CSV reads: the file helpers every layer uses (no torch).

Every file that is read back (checkpoints, OOF tables, logs, the saved config, the submission)
is written to a temporary sibling and renamed into place: a crash leaves the old file or the
new one, never half of one. A write that fails for a reason the user fixes (no space left,
read-only, not allowed) is a one-line StorageError naming the file (``disk.storage_error``), and
leaves nothing behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.core.disk import storage_error


def remove_stale_temps(folder: Path, name: str = "*") -> None:
    """Delete the temporary files that a killed process left while writing ``folder/name``."""
    for tmp in Path(folder).glob(f".{name}.tmp*"):
        try:
            os.kill(int(tmp.name.rsplit(".tmp", 1)[1]), 0)
        except ProcessLookupError:  # its writer is gone
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):  # not one of ours, or a live process of another user
            pass


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())  # a full disk may only show here (delayed allocation)
        os.replace(tmp, path)
    except OSError as e:
        error = storage_error(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # it could not have been made (read-only, a name too long)
            pass
    try:  # make the rename itself durable (power loss); not every file system allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))
