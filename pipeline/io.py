"""Atomic writes and safe checkpoint loading.

Every file that is read back (checkpoints, OOF tables, logs, the saved config, the submission)
is written to a temporary sibling and renamed into place: a crash leaves the old file or the
new one, never half of one.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import pandas as pd
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or unsafe; the message names it."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


def save_checkpoint(path, obj: dict) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_checkpoint(path) -> dict:
    """Load tensors only (``weights_only=True``): a checkpoint cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, it holds more than tensors (weights_only load): "
                              f"{str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({str(e).splitlines()[0]})") from None
