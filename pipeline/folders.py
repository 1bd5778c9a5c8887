"""What kind of folder a path is, and where a tool may write: the rule behind every command that writes.

    kind            marker        written by
    experiment      config.yaml   train.py (infer.py adds submission.csv; --force deletes); with
                                  data.csv, folds.csv, ... beside it (a project's config.yaml is none)
    blend           blend.json    python -m pipeline blend
    comparison      compare.csv   python -m pipeline cv
    re-prediction   tta.json      benchmarks/tta_views.py

Each tool writes its marker first, so a folder it was interrupted in is still recognised. A tool writes
only into a new or empty folder or one of its own kind: never into a folder of another kind, nor
anywhere below one (a folder inside an experiment is a foreign file there, which ``train.py --force``
refuses to delete). ``python -m pipeline cv oof/<name>`` drawing the experiment's own ``roc.png`` is
the one exception: the same picture ``train.py`` draws there.

Before the work starts, a tool also checks that its folder can be written (not on a read-only file
system, allowed, enough free space where the size is known: ``check_writable``) and that every name
fits the file system (``check_names``: 255 *bytes*, not characters); a write that still fails for such
a reason is one line naming the file (``storage_error``, used by ``io.atomic_write``).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from .errors import ConfigError, ExperimentError, StorageError
from .tables import few

MARKERS = {"experiment": "config.yaml", "blend": "blend.json", "comparison": "compare.csv",
           "re-prediction": "tta.json"}
WRITERS = {"experiment": "train.py", "blend": "python -m pipeline blend", "comparison": "python -m pipeline cv",
           "re-prediction": "benchmarks/tta_views.py"}
# what a write can fail on that the user fixes (space, permissions, the file system), not the code
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG}
NAME_MAX = 255  # bytes per file or folder name on Linux, macOS and Windows file systems alike


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def check_names(path: str | Path, what: str | None = None) -> Path:
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


# beside config.yaml, what train.py writes with it: a project's own config.yaml makes no experiment
EXPERIMENT_FILES = ("data.csv", "env.json", "features.json", "folds.csv", "oof.csv", "fold0")


def kind(folder: str | Path) -> str | None:
    """The kind of ``folder`` by its marker file, or None (missing, empty, or anything else). An
    experiment's config.yaml counts beside one of the other files train.py writes."""
    folder = Path(folder)
    for k, marker in MARKERS.items():
        if (folder / marker).is_file() and (k != "experiment" or any((folder / f).exists() for f in EXPERIMENT_FILES)):
            return k
    return None


def article(k: str) -> str:
    return f"{'an' if k[0] in 'aeiou' else 'a'} {k}"


def describe(k: str) -> str:
    return f"{article(k)} ({MARKERS[k]}, written by {WRITERS[k]})"


def enclosing(folder: str | Path) -> tuple[str, Path] | None:
    """The nearest folder above ``folder`` that is of a kind, with its kind."""
    folder = Path(folder)
    for parent in Path(os.path.abspath(folder)).parents:
        k = kind(parent)
        if k is not None:  # shown as given: relative where the folder was
            return k, parent if folder.is_absolute() else Path(os.path.relpath(parent))
    return None


def listing(folder: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


def check_not_inside(folder: str | Path, advice: str) -> None:
    """Refuse a folder inside an experiment, a blend, a comparison or a re-prediction."""
    above = enclosing(folder)
    if above is not None:
        k, parent = above
        raise ExperimentError(f"{folder}: inside the {k} {parent} ({MARKERS[k]}), where only {WRITERS[k]} writes; "
                              f"{advice}")


def check_output(folder: str | Path, own: str, advice: str) -> Path:
    """``folder`` may receive the files of a ``own`` (a kind): it is new, empty or of that kind, no
    file stands in its way, it is inside no folder of a kind, and its names fit the file system."""
    folder = check_names(folder)
    for p in [folder, *folder.parents]:
        if p.exists() and not p.is_dir():
            where = "exists and is not a folder" if p == folder else f"{p} is a file, not a folder"
            raise ExperimentError(f"{folder}: {where}; {advice}")
    check_not_inside(folder, advice)
    if folder.is_dir():
        k = kind(folder)
        if k is not None and k != own:
            raise ExperimentError(f"{folder}: is {describe(k)}, not {article(own)}; {advice}")
        held = listing(folder) if k is None else []
        if held:
            raise ExperimentError(f"{folder}: exists and is not {article(own)} (no {MARKERS[own]}; it holds {few(held)}); "
                                  f"{advice}")
    return folder


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


def ranked(folder: str | Path) -> bool:
    """Whether ``folder``'s oof.csv holds ranks within each fold, not probabilities: a rank blend."""
    try:
        return json.loads((Path(folder) / MARKERS["blend"]).read_text()).get("transform") == "rank"
    except (OSError, ValueError, AttributeError):
        return False


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
        raise StorageError(f"{folder}:{what or ' the output'} needs {human(need)}, only {human(free)} free on its disk; "
                           f"free some space or {advice}")


def storage_error(path: str | Path, e: OSError) -> StorageError | None:
    """A failed write as one line naming the file, when its cause is the user's to fix (no space,
    read-only, not allowed, name too long); None for anything else (a bug keeps its traceback)."""
    if e.errno not in DISK_ERRNOS:
        return None
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    try:
        free = f"; {human(free_bytes(Path(path).parent))} free on its disk" if full else ""
    except OSError:
        free = ""
    fix = ("use a shorter name" if e.errno == errno.ENAMETOOLONG else
           "free some space or use another folder" if full else "use another folder")
    return StorageError(f"{path}: cannot write ({e.strerror}{free}); {fix}, then run the command again")
