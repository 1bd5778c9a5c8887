"""The checkpoint file: tensors and plain values with a checksum, written atomically, loaded
weights-only (a checkpoint cannot run code).
"""
from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import torch

from pipeline.core.errors import CheckpointError
from pipeline.core.files import atomic_write

CHECKSUM_KEY = "_crc32"


def _checksum(obj, crc: int = 0) -> int:
    """CRC32 over every tensor's bytes and every other value's repr, in order. The zip reader of
    torch.load checks no checksum, so a flipped byte inside tensor data would load silently."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode(), crc)
        return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    if isinstance(obj, dict):
        for k, v in obj.items():
            crc = _checksum(v, zlib.crc32(repr(k).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = _checksum(v, crc)
        return zlib.crc32(b"]", crc)
    return zlib.crc32(repr(obj).encode(), crc)


class _Writes:
    """A file for torch.save that writes all it is given and keeps the OSError of a failed write:
    torch reports a full disk as a RuntimeError about stream positions, without the cause."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):  # an unbuffered write may take only part
                done += self.fh.write(view[done:])
        except OSError as e:
            self.error = e
            raise
        return done

    def flush(self) -> None:
        pass


def torch_save(obj, fh) -> None:
    """``torch.save`` into the open binary file ``fh``; a failed write raises its own OSError (a
    full disk: ENOSPC), not torch's RuntimeError about stream positions."""
    out = _Writes(fh)
    try:
        torch.save(obj, out)
    except RuntimeError:
        if out.error is not None:
            raise out.error from None
        raise


def save_checkpoint(path, obj: dict) -> Path:
    """``obj`` (tensors, numbers, strings, lists, dicts) plus a checksum, written atomically."""
    def write(p: Path) -> None:
        with open(p, "wb", buffering=0) as fh:
            torch_save({**obj, CHECKSUM_KEY: _checksum(obj)}, fh)
    return atomic_write(path, write)


def load_checkpoint(path) -> dict:
    """Load tensors only (``weights_only=True``): a checkpoint cannot run code. Anything that is not
    a readable dict whose checksum (when it has one) matches raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (UnpicklingError: {e})") from None
        reason = next((line.strip().split(" Please")[0] for line in str(e).splitlines() if "Unsupported" in line),
                      "unsupported content")
        if "GLOBAL" in reason:  # it names a Python callable or class: loading it could run code
            raise CheckpointError(f"{path}: refused, it holds more than tensors and plain values "
                                  f"(weights_only load: {reason})") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (weights_only load: {reason})") from None
    except Exception as e:  # torch.load raises many types on damaged files (RuntimeError, OSError, KeyError...)
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if CHECKSUM_KEY in obj:
        expected = obj.pop(CHECKSUM_KEY)
        if _checksum(obj) != expected:
            raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch)")
    return obj
