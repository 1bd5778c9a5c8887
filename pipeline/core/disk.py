"""Whether a folder can take what a command will write: names that fit the file system, a
writable folder, free space; and a failed write as one line naming the file.

Before the long work, a command checks that its folder can be written (not on a read-only file
system, allowed, enough free space where the size is known: ``check_writable``) and that every name
fits the file system (``check_name_length``: 255 *bytes*, not characters); a write that still fails
for such a reason is one line naming the file (``storage_error``, used by ``files.atomic_write``).
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pipeline.core.errors import ConfigError, StorageError

# what a write can fail on that the user fixes (space, permissions, the file system), not the code
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG}


NAME_MAX = 255  # bytes per file or folder name on Linux, macOS and Windows file systems alike


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def check_name_length(path: str | Path, what: str | None = None) -> Path:
    """``path`` whose every name fits ``NAME_MAX`` bytes (the file systems count bytes: 'é' is two),
    else a ConfigError naming ``what`` (the option or key that gave it) or the path."""
    path = Path(path)

    def short(part: str) -> str:
        return part if len(part) <= 24 else part[:20] + "..."

    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ConfigError(f"{what or Path(*map(short, path.parts))}: the name '{short(part)}' is {size} bytes long "
                              f"({len(part)} characters); file and folder names may be at most {NAME_MAX} bytes: "
                              f"use a shorter one")
    return path


def existing(folder: Path) -> Path:
    """``folder`` or, where it does not exist yet, the nearest folder above it that does."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(existing(Path(folder))).free


def why_not_writable(folder: str | Path) -> str | None:
    """Why ``folder`` (or, where it is still to be created, the nearest folder above it) cannot be
    written: a read-only file system or no permission; None when it can."""
    folder = Path(folder)
    base = existing(folder)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    try:
        if os.statvfs(base).f_flag & os.ST_RDONLY:  # also for root, whom permissions do not stop
            reason = os.strerror(errno.EROFS)
        elif not os.access(base, os.W_OK | os.X_OK):
            reason = os.strerror(errno.EACCES)
        else:
            return None
    except OSError as e:
        reason = e.strerror
    return reason + ("" if base == Path(os.path.abspath(folder)) else f" at {base}")


def check_writable(folder: str | Path, need: int = 0, what: str = "", advice: str = "use another folder") -> None:
    """Before the long work: ``folder`` can be written (``why_not_writable``) and, when ``need``
    bytes are known, its disk has them free. ``what`` says what is written (" the image cache of ...")."""
    folder = Path(folder)
    reason = why_not_writable(folder)
    if reason:
        raise StorageError(f"{folder}: cannot write{what} ({reason}); {advice}")
    base = existing(folder)
    free = shutil.disk_usage(base).free
    if need and free < need:
        raise StorageError(f"{folder}:{what or ' the output'} needs {format_bytes(need)}, only {format_bytes(free)} "
                           f"free on its disk; free some space or {advice}")


def storage_error(path: str | Path, e: OSError) -> StorageError | None:
    """A failed write as one line naming the file, when its cause is the user's to fix (no space,
    read-only, not allowed, name too long); None for anything else (a bug keeps its traceback)."""
    if e.errno not in DISK_ERRNOS:
        return None
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    try:
        free = f"; {format_bytes(free_bytes(Path(path).parent))} free on its disk" if full else ""
    except OSError:
        free = ""
    fix = ("use a shorter name" if e.errno == errno.ENAMETOOLONG else
           "free some space or use another folder" if full else "use another folder")
    return StorageError(f"{path}: cannot write ({e.strerror}{free}); {fix}, then run the command again")
