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

Before the work starts, a tool also checks that its folder can be written (``disk.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.disk import check_name_length
from pipeline.core.errors import ExperimentError, first_few

MARKERS = {"experiment": "config.yaml", "blend": "blend.json", "comparison": "compare.csv",
           "re-prediction": "tta.json"}
WRITERS = {"experiment": "train.py", "blend": "python -m pipeline blend", "comparison": "python -m pipeline cv",
           "re-prediction": "benchmarks/tta_views.py"}


# Every file train.py and infer.py write at the top of an experiment folder (fold<k>/ folders and locks
# beside them): what --force may delete there.
EXPERIMENT_FILES = ("config.yaml", "data.csv", "env.json", "features.json", "folds.csv", "oof.csv", "roc.png",
                    "submission.csv", "tracker.json")
# The folders beside fold<k>/ that train.py writes: the experiment tracker's (log.tracker, tracker.json).
EXPERIMENT_FOLDERS = ("tensorboard", "wandb")
# Beside config.yaml, one of these makes a folder an experiment: a project's own config.yaml makes none.
TRAINED_MARKS = ("data.csv", "env.json", "features.json", "folds.csv", "oof.csv", "fold0")


def kind(folder: str | Path) -> str | None:
    """The kind of ``folder`` by its marker file, or None (missing, empty, or anything else). An
    experiment's config.yaml counts beside one of the other files train.py writes."""
    folder = Path(folder)
    for k, marker in MARKERS.items():
        if (folder / marker).is_file() and (k != "experiment" or any((folder / f).exists() for f in TRAINED_MARKS)):
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


def check_output_folder(folder: str | Path, folder_kind: str, advice: str) -> Path:
    """``folder`` may receive the files of a ``folder_kind`` (a kind): it is new, empty or of that kind, no
    file stands in its way, it is inside no folder of a kind, and its names fit the file system."""
    folder = check_name_length(folder)
    for p in [folder, *folder.parents]:
        if p.exists() and not p.is_dir():
            where = "exists and is not a folder" if p == folder else f"{p} is a file, not a folder"
            raise ExperimentError(f"{folder}: {where}; {advice}")
    check_not_inside(folder, advice)
    if folder.is_dir():
        k = kind(folder)
        if k is not None and k != folder_kind:
            raise ExperimentError(f"{folder}: is {describe(k)}, not {article(folder_kind)}; {advice}")
        held = listing(folder) if k is None else []
        if held:
            raise ExperimentError(f"{folder}: exists and is not {article(folder_kind)} (no {MARKERS[folder_kind]}; "
                                  f"it holds {first_few(held)}); {advice}")
    return folder
