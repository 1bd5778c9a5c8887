"""The checkpoint file: tensors and plain values with a checksum, written atomically, loaded
weights-only (a checkpoint cannot run code). Loading tells a file that cannot be read (an OSError of
the file system: CheckpointReadError) from a damaged one (a failed checksum, a format torch cannot
read: CheckpointError).
"""
from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import torch

from pipeline.core.errors import CheckpointError, CheckpointReadError
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


class _Reads:
    """A file for torch.load that keeps the OSError of a failed read or close: what the file system
    could not deliver, which says nothing about the file's content. A seek reads nothing, and fails
    on a damaged file (the zip reader seeks to a negative offset in a truncated one): its errors are
    not kept. It has no ``fileno``, so torch reads every format through it."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def _kept(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            self.error = e
            raise

    def read(self, *args):
        return self._kept(self.fh.read, *args)

    def readinto(self, *args):
        return self._kept(self.fh.readinto, *args)

    def readline(self, *args):
        return self._kept(self.fh.readline, *args)

    def seek(self, *args):
        return self.fh.seek(*args)

    def tell(self):
        return self.fh.tell()

    def close(self):
        return self._kept(self.fh.close)


def read_error(path, e: OSError) -> CheckpointReadError:
    """A checkpoint that the file system would not give, as one line naming it and the OS's reason."""
    reason = e.strerror or str(e) or type(e).__name__
    return CheckpointReadError(f"{path}: cannot read the checkpoint ({reason}); it is left as it is, not taken "
                               f"for damaged: run the command again once it can be read")


def _opened(path: Path) -> _Reads:
    """``path`` open for reading; CheckpointError when there is no such file, CheckpointReadError when
    the file system refuses it."""
    try:
        if path.is_file():
            return _Reads(open(path, "rb"))
    except OSError as e:
        raise read_error(path, e) from None
    raise CheckpointError(f"checkpoint not found: {path}")


def _damaged(path: Path, e: Exception) -> CheckpointError:
    """What torch.load raised while every read succeeded: a truncated, corrupt or unsafe file."""
    if isinstance(e, pickle.UnpicklingError):
        if "weights only load failed" not in str(e).lower():
            return CheckpointError(f"{path}: truncated or corrupt checkpoint (UnpicklingError: {e})")
        reason = next((line.strip().split(" Please")[0] for line in str(e).splitlines() if "Unsupported" in line),
                      "unsupported content")
        if "GLOBAL" in reason:  # it names a Python callable or class: loading it could run code
            return CheckpointError(f"{path}: refused, it holds more than tensors and plain values "
                                   f"(weights_only load: {reason})")
        return CheckpointError(f"{path}: truncated or corrupt checkpoint (weights_only load: {reason})")
    first = str(e).splitlines()[0] if str(e) else ""  # damaged bytes raise many types (RuntimeError, KeyError...)
    return CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {first})")


def _torch_load(path: Path):
    """torch.load of ``path``, tensors only. A failed open, read or close (any OSError of the file
    system) raises CheckpointReadError; anything else torch.load raises is damage: CheckpointError."""
    fh = _opened(path)
    try:
        try:
            return torch.load(fh, map_location="cpu", weights_only=True)
        finally:
            fh.close()
    except Exception as e:
        if fh.error is not None:
            raise read_error(path, fh.error) from None
        raise _damaged(path, e) from None


def load_checkpoint(path) -> dict:
    """Load tensors only (``weights_only=True``): a checkpoint cannot run code. A file that cannot be
    opened or read raises CheckpointReadError naming it; one that was read but is not a readable dict
    whose checksum (when it has one) matches raises CheckpointError naming it."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if CHECKSUM_KEY in obj:
        expected = obj.pop(CHECKSUM_KEY)
        if _checksum(obj) != expected:
            raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch)")
    return obj
