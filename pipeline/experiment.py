"""The experiment folder: what it was trained on, who may write it, what ``--force`` may delete.

``<output_dir>/<name>/`` holds one experiment of this pipeline and nothing else::

    config.yaml      the resolved config (compared on every run)
    data.csv         every training row it was trained on: id, fold, target, group, the feature
                     columns as read, and the content hash of the row's image file
    folds.csv        its fold table (id, fold): ``folds.path=<this file>`` reuses it
    features.json    the fitted meta-feature transform (inference applies exactly this)
    env.json         package versions, device, seed, git commit
    fold<k>/         best.pt, last.pt (while training), log.csv, val_predictions.csv (the fold's
                     predictions of its validation rows, written when the fold is done)
    fold<k>.lock     while a process trains fold k (pipeline/lock.py)
    oof.csv, roc.png, submission.csv

A run on an existing experiment must bring the same config and the same data (compared with
config.yaml, data.csv and features.json); otherwise it is refused before anything is written,
with what changed. The files above are written once, by the first run, and never rewritten.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from . import config as C
from .errors import ExperimentError
from .io import write_csv, write_json, write_text
from .lock import Lock
from .tables import few, parse_csv_as_text

# Keys that change where or how a run is executed, not its results: they may differ on resume.
# Where the data and the fold table lie does not matter either: their content is compared (data.csv).
RUN_ONLY_KEYS = {"name", "output_dir", "train.folds", "train.num_workers", "train.deterministic", "data.root",
                 "data.cache_dir", "data.generate_sample", "folds.path", "features.max_bad_fraction", "infer"}

# Everything this pipeline writes into an experiment folder (besides fold<k>/ folders); --force
# deletes nothing else. Hidden ".<name>.tmp<pid>" files are atomic writes in progress or left by a kill.
OWNED_FILES = re.compile(r"(config\.yaml|env\.json|features\.json|data\.csv|folds\.csv|oof\.csv|roc\.png|"
                         r"submission\.csv|.*\.lock|.*\.lock\.stale\..*|\..*\.tmp\d*)")
OWNED_IN_FOLD = re.compile(r"(best\.pt|last\.pt|last\.prev\.pt|.*\.corrupt|log\.csv|val_predictions\.csv|oof\.csv|"
                           r"\..*\.tmp\d*)")


def fold_predictions(fold_dir: Path) -> Path:
    """A finished fold's predictions of its validation rows (``oof.csv`` in folders of earlier
    versions): the experiment's oof.csv is assembled from these."""
    legacy = fold_dir / "oof.csv"
    return legacy if legacy.exists() else fold_dir / "val_predictions.csv"


def _result_keys(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = prefix + k
        if key in RUN_ONLY_KEYS:
            continue
        out.update(_result_keys(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def foreign_in_fold(fold_dir: Path) -> list[str]:
    return [q.name for q in sorted(fold_dir.iterdir()) if q.is_dir() or not OWNED_IN_FOLD.fullmatch(q.name)]


def foreign_entries(exp: Path) -> list[str]:
    """What in ``exp`` this pipeline did not write (relative paths)."""
    out = []
    for p in sorted(exp.iterdir()):
        if p.is_dir() and re.fullmatch(r"fold\d+", p.name):
            out += [f"{p.name}/{name}" for name in foreign_in_fold(p)]
        elif p.is_dir() or not OWNED_FILES.fullmatch(p.name):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def saved_config(path: Path) -> C.Config:
    """An experiment's config.yaml (safe_load: a crafted file cannot build Python objects)."""
    try:
        return C.from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as e:
        raise ExperimentError(f"{path}: cannot read the saved config ({str(e).splitlines()[0]})") from None


def check_config(cfg: C.Config, force: bool) -> list[str]:
    """Refuse to mix results of a different configuration into an existing experiment folder, or to
    write into a folder that is not an experiment of this pipeline. Returns the result keys that
    differ from the saved config (only with ``force``; [] when none)."""
    exp = cfg.exp_dir
    if exp.exists() and not exp.is_dir():
        raise ExperimentError(f"{exp}: exists and is not a folder; use another name (name=...)")
    saved_path = exp / "config.yaml"
    if not saved_path.is_file():
        foreign = foreign_entries(exp) if exp.is_dir() else []
        if foreign:
            raise ExperimentError(f"{exp}: not an experiment of this pipeline (no config.yaml; it holds "
                                  f"{few(foreign)}); use another name (name=...) or output_dir")
        return []
    try:
        saved = _result_keys(C.to_dict(saved_config(saved_path)))
    except ExperimentError as e:
        if force:
            return ["config.yaml (unreadable)"]
        raise ExperimentError(f"{e}; use a new name (name=...) or --force to start this experiment again") from None
    now = _result_keys(C.to_dict(cfg))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff and not force:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise ExperimentError(f"{saved_path} holds a different experiment ({shown}{more}); use a new name "
                              f"(name=...) or --force to delete its results and train again")
    return diff


def training_record(df: pd.DataFrame, cfg: C.Config, digests: list[str]) -> pd.DataFrame:
    """What a model is trained on, one row per training image, every value as text: the id, fold
    (-1: external, training only), target, group, each configured feature column as read, and the
    image file's content hash."""
    d = cfg.data
    cols = [d.id_col, "fold", d.target_col] + ([d.group_col] if d.group_col else [])
    cols += [c for c in [*cfg.features.categorical, *cfg.features.numeric] if c not in cols]
    rec = df[cols].astype("string")
    rec["image_sha"] = pd.array([digests[i] for i in df["cache_row"]], dtype="string")
    return rec.reset_index(drop=True)


def record_changes(saved: pd.DataFrame, now: pd.DataFrame) -> list[str]:
    """What differs between two training records, in words: rows added or removed, columns whose
    values changed (with examples), images whose files changed, folds reassigned."""
    id_col = now.columns[0]
    if list(saved.columns) != list(now.columns):
        return [f"columns {list(saved.columns)} -> {list(now.columns)}"]
    a, b = saved.set_index(id_col), now.set_index(id_col)
    out = []
    gone, new = a.index.difference(b.index, sort=False), b.index.difference(a.index, sort=False)
    if len(new):
        out.append(f"{len(new)} training row(s) added: {few(new, 3)}")
    if len(gone):
        out.append(f"{len(gone)} training row(s) removed: {few(gone, 3)}")
    common = a.index.intersection(b.index, sort=False)
    a, b = a.loc[common], b.loc[common]
    for col in a.columns:
        x, y = a[col].fillna("<missing>"), b[col].fillna("<missing>")
        changed = x.index[(x != y).to_numpy()]
        if not len(changed):
            continue
        shown = few([f"{i} ({x[i]} -> {y[i]})" for i in changed[:3]] + list(changed[3:]), 3)
        if col == "image_sha":
            out.append(f"{len(changed)} image file(s) changed: {few(changed, 3)}")
        elif col == "fold":
            out.append(f"the fold of {len(changed)} row(s) changed: {shown}")
        else:
            out.append(f"column '{col}' changed in {len(changed)} row(s): {shown}")
    return out


def read_record(path: Path) -> pd.DataFrame:
    return parse_csv_as_text(path)


def _same(a, b) -> bool:
    """JSON values equal, numbers up to float rounding (a reordered table sums in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def data_changes(exp: Path, record: pd.DataFrame, features: dict) -> list[str]:
    """How the data of this run differs from what ``exp`` was trained on ([] when the same, or when
    nothing was recorded yet). The fitted features follow from the record, except with
    features.fit_on=train+test, where the test table counts too."""
    out = []
    if (exp / "data.csv").is_file():
        out += record_changes(read_record(exp / "data.csv"), record)
    saved = exp / "features.json"
    if not out and saved.is_file() and not _same(json.loads(saved.read_text()), json.loads(json.dumps(features))):
        out.append("the fitted meta-feature transform differs (with features.fit_on=train+test: the test table "
                   "changed)")
    return out


def changed_data_error(exp: Path, changes: list[str]) -> ExperimentError:
    return ExperimentError(f"{exp} was trained on other data: {'; '.join(changes[:4])}"
                           f"{f'; and {len(changes) - 4} more' if len(changes) > 4 else ''}; use a new name "
                           f"(name=...) or --force to delete its results and train again")


def write_record(exp: Path, cfg: C.Config, record: pd.DataFrame, features: dict) -> None:
    """The experiment's description, each file written once (a run that gets here brings the same
    config and data as the files already there)."""
    own = record[record["fold"] != "-1"]
    for name, write in [("config.yaml", lambda p: write_text(p, C.to_yaml(cfg))),
                        ("data.csv", lambda p: write_csv(p, record)),
                        ("folds.csv", lambda p: write_csv(p, own[[own.columns[0], "fold"]])),
                        ("features.json", lambda p: write_json(p, features))]:
        if not (exp / name).exists():
            write(exp / name)


def delete_results(exp: Path, keep: set[str], why: str) -> None:
    """Delete what this pipeline wrote in ``exp`` except the names in ``keep`` (our own locks),
    saying exactly what goes. Refused when ``exp`` holds anything this pipeline did not write."""
    foreign = foreign_entries(exp)
    if foreign:
        raise ExperimentError(f"--force: {exp} holds files this pipeline did not write ({few(foreign)}); "
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
        raise ExperimentError(f"--force: {d} holds files this pipeline did not write ({few(foreign)}); "
                              f"nothing was deleted: move them away")
    print(f"--force: deleting {d}/ ({', '.join(sorted(q.name for q in d.iterdir()))}) to train fold {fold} again",
          file=sys.stderr)
    shutil.rmtree(d)


def collect_oof(exp: Path, id_cols: tuple = (), record: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished fold's OOF rows, each id at most once and, when ``record`` (the experiment's
    training record) is given, in the fold that its fold table says. Id and group columns stay text
    (ids such as 00012 keep their zeros)."""
    paths = [fold_predictions(d) for d in sorted(exp.glob("fold*")) if d.is_dir()]
    parts = [pd.read_csv(p, dtype={c: "string" for c in id_cols if c}) for p in paths if p.exists()]
    if not parts:
        return pd.DataFrame()
    oof = pd.concat(parts, ignore_index=True)
    ids = oof[oof.columns[0]]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ExperimentError(f"{exp}: ids predicted by more than one fold: {few(dup.unique())}; its folds were "
                              f"trained on different fold tables: train them again (--force)")
    if record is not None:
        own = record[record["fold"] != "-1"]
        fold_of = dict(zip(own.iloc[:, 0], own["fold"].astype(int)))
        wrong = [i for i, k in zip(ids, oof["fold"]) if fold_of.get(i) != k]
        if wrong:
            raise ExperimentError(f"{exp}: OOF rows outside their fold in folds.csv: {few(wrong)}; train those "
                                  f"folds again (--force --folds ...)")
    return oof


def fold_lock(exp: Path, fold: int) -> Lock:
    return Lock(exp / f"fold{fold}.lock", f"fold {fold} of {exp}")


def experiment_lock(exp: Path) -> Lock:
    """Held for the short steps that several processes of one experiment share: checking and
    writing its description, assembling oof.csv."""
    return Lock(exp / "experiment.lock", f"{exp}")
