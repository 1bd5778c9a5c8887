"""The experiment folder: what it was trained on, who may write it, what ``--force`` may delete.

``<output_dir>/<name>/`` holds one experiment of this pipeline and nothing else::

    config.yaml      the resolved config (compared on every run)
    data.csv         every training row it was trained on: id, fold, target, group, the feature
                     columns as read, and the content hash of the row's image file
    folds.csv        its fold table (id, fold): ``folds.path=<this file>`` reuses it
    features.json    the fitted meta-feature transform (inference applies exactly this)
    env.json         package versions, device, seed, git commit
    fold<k>/         best.pt, last.pt (while training), log.csv, val_predictions.csv (the fold's
                     predictions of its validation rows, written when the fold is done),
                     export-<backend>-<precision>.zip (infer.backend's export of best.pt)
    fold<k>.lock     while a process trains fold k (pipeline/core/lock.py)
    oof.csv, roc.png, submission.csv
    tracker.json     with log.tracker: the tracker's run, reopened on resume, and the epochs logged to
                     it (rewritten as they are); tensorboard/ or wandb/ beside it with those trackers

A run on an existing experiment must bring the same config and the same data (compared with
config.yaml, data.csv and features.json); otherwise it is refused before anything is written,
with what changed. The files above are written once, by the first run, and never rewritten.

This module holds the folder's rules: what belongs in it, whether a run may write it, what
``--force`` deletes; ``run.py`` holds a command's life in it.
"""
from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from pipeline.core import disk, folders
from pipeline.core.config import Config, from_dict, to_dict, to_yaml
from pipeline.core.errors import ExperimentError, first_few
from pipeline.core.files import write_csv, write_json, write_text
from pipeline.experiment.record import (OOF_KEYS, RETRAIN, RUN_ONLY_KEYS, get_key, leaf_keys, result_keys,
                                        saved_config, set_key)

# Everything this pipeline writes into an experiment folder (besides fold<k>/ folders); --force
# deletes nothing else. Hidden ".<name>.tmp<pid>" files are atomic writes in progress or left by a kill.
OWNED_FILES = re.compile("|".join(map(re.escape, folders.EXPERIMENT_FILES))
                         + r"|.*\.lock|.*\.lock\.stale\..*|\..*\.tmp\d*")
OWNED_IN_FOLD = re.compile(r"(best\.pt|last\.pt|last\.prev\.pt|.*\.corrupt|log\.csv|val_predictions\.csv|"
                           r"export-[a-z]+-[a-z0-9]+\.zip|\..*\.tmp\d*)")


def foreign_in_fold(fold_dir: Path) -> list[str]:
    return [q.name for q in sorted(fold_dir.iterdir()) if q.is_dir() or not OWNED_IN_FOLD.fullmatch(q.name)]


def foreign_entries(exp: Path) -> list[str]:
    """What in ``exp`` this pipeline did not write (relative paths)."""
    out = []
    for p in sorted(exp.iterdir()):
        if p.is_dir() and re.fullmatch(r"fold\d+", p.name):
            out += [f"{p.name}/{name}" for name in foreign_in_fold(p)]
        elif p.is_dir() and p.name in folders.EXPERIMENT_FOLDERS:  # the tracker's: what is inside is its own
            continue
        elif p.is_dir() or not OWNED_FILES.fullmatch(p.name):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def check_config_paths(cfg: Config) -> None:
    """Every folder and file the config names fits the file system (255 bytes a name): a name too long
    is a ConfigError naming the key, not an OSError from the first stat of it."""
    for key, path in [("name", cfg.name), ("output_dir", cfg.output_dir), ("data.root", cfg.data.root),
                      ("data.cache_dir", cfg.data.cache_dir), ("folds.path", cfg.folds.path)]:
        disk.check_name_length(path, key)


def check_config(cfg: Config, force: bool) -> list[str]:
    """Refuse to mix results of a different configuration into an existing experiment folder, or to
    write into a folder that is not an experiment of this pipeline. Returns the result keys that
    differ from the saved config (only with ``force``; [] when none)."""
    exp = cfg.exp_dir
    check_config_paths(cfg)
    folders.check_not_inside(exp, "use another output_dir")
    if exp.exists() and not exp.is_dir():
        raise ExperimentError(f"{exp}: exists and is not a folder; use another name (name=...)")
    other = folders.kind(exp)
    if other not in (None, "experiment"):
        raise ExperimentError(f"{exp}: is {folders.describe(other)}, not an experiment; use another name (name=...) "
                              f"or output_dir")
    saved_path = exp / "config.yaml"
    if not saved_path.is_file():
        foreign = foreign_entries(exp) if exp.is_dir() else []
        if foreign:
            raise ExperimentError(f"{exp}: not an experiment of this pipeline (no config.yaml; it holds "
                                  f"{first_few(foreign)}); use another name (name=...) or output_dir")
        return []
    try:
        saved = result_keys(to_dict(saved_config(saved_path)))
    except ExperimentError as e:
        if force:
            return ["config.yaml (unreadable)"]
        raise ExperimentError(f"{e}; use a new name (name=...) or --force to start this experiment again") from None
    now = result_keys(to_dict(cfg))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff and not force:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        tta = " (infer.tta is the TTA of its OOF predictions; infer.py may use another)" if "infer.tta" in diff else ""
        raise ExperimentError(f"{saved_path} holds a different experiment ({shown}{more}){tta}; {RETRAIN}")
    return diff


# Of the run-only keys, those of one command alone: never taken from an earlier run's config.yaml.
COMMAND_KEYS = {"name", "output_dir", "train.folds"}


def resumed_config(cfg: Config, given: Collection[str]) -> Config:
    """``cfg`` with the run-only keys the command was not given (where the data lies, how the run goes:
    RUN_ONLY_KEYS but COMMAND_KEYS and OOF_KEYS) as the experiment at ``cfg.exp_dir`` holds them; ``cfg``
    itself where there is no experiment or its config.yaml cannot be read (check_config says why)."""
    check_config_paths(cfg)
    if folders.kind(cfg.exp_dir) != "experiment":
        return cfg
    try:
        saved = to_dict(saved_config(cfg.exp_dir / "config.yaml"))
    except ExperimentError:
        return cfg
    now = to_dict(cfg)
    for key in leaf_keys(now):
        run_only = any(key == r or key.startswith(r + ".") for r in RUN_ONLY_KEYS - COMMAND_KEYS)
        if run_only and key not in given and key not in OOF_KEYS:
            set_key(now, key, get_key(saved, key))
    return from_dict(now)


def write_record(exp: Path, cfg: Config, record: pd.DataFrame, features: dict) -> None:
    """The experiment's description, each file written once (a run that gets here brings the same
    config and data as the files already there)."""
    in_folds = record[record["fold"] != "-1"]
    for name, write in [("config.yaml", lambda p: write_text(p, to_yaml(cfg))),
                        ("data.csv", lambda p: write_csv(p, record)),
                        ("folds.csv", lambda p: write_csv(p, in_folds[[in_folds.columns[0], "fold"]])),
                        ("features.json", lambda p: write_json(p, features))]:
        if not (exp / name).exists():
            write(exp / name)


def delete_results(exp: Path, keep: set[str], why: str) -> None:
    """Delete what this pipeline wrote in ``exp`` except the names in ``keep`` (our own locks),
    saying exactly what goes. Refused when ``exp`` holds anything this pipeline did not write."""
    foreign = foreign_entries(exp)
    if foreign:
        raise ExperimentError(f"--force: {exp} holds files this pipeline did not write ({first_few(foreign)}); "
                              f"nothing was deleted: move them away or use another name")
    doomed = [p for p in sorted(exp.iterdir()) if p.name not in keep]
    if not doomed:
        return
    print(f"--force: deleting {', '.join(str(p) + ('/' if p.is_dir() else '') for p in doomed)} ({why})",
          file=sys.stderr)
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def delete_fold(exp: Path, fold: int) -> None:
    """--force on a fold of the same experiment: its results go, refused when it holds foreign files."""
    d = exp / f"fold{fold}"
    if not d.is_dir():
        return
    foreign = foreign_in_fold(d)
    if foreign:
        raise ExperimentError(f"--force: {d} holds files this pipeline did not write ({first_few(foreign)}); "
                              f"nothing was deleted: move them away")
    print(f"--force: deleting {d}/ ({', '.join(sorted(q.name for q in d.iterdir()))}) to train fold {fold} again",
          file=sys.stderr)
    shutil.rmtree(d)
