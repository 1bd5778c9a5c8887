"""What an experiment was trained on, and how a new run differs from it.

The training record (``data.csv`` of an experiment) is one row per training image, every value as
text: the id first, then fold (-1: external, training only), target, group, each configured feature
column as read, and the image file's content hash. A run whose record, or fitted meta features,
differ from the saved ones is another experiment; the differences are said in words. The config
keys that a run must keep are all but ``RUN_ONLY_KEYS``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core.config import Config, from_dict
from pipeline.core.errors import ExperimentError, first_few
from pipeline.data.tables import parse_csv_as_text


def training_record(df: pd.DataFrame, cfg: Config, digests: list[str]) -> pd.DataFrame:
    """What a model is trained on, one row per training image, every value as text: the id, fold
    (-1: external, training only), target, group, diagnosis, each configured feature column as read,
    and the image file's content hash."""
    d = cfg.data
    cols = [d.id_col, "fold", d.target_col] + ([d.group_col] if d.group_col else [])
    cols += [d.diagnosis_col] if d.diagnosis_col else []
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
        out.append(f"{len(new)} training row(s) added: {first_few(new, 3)}")
    if len(gone):
        out.append(f"{len(gone)} training row(s) removed: {first_few(gone, 3)}")
    common = a.index.intersection(b.index, sort=False)
    a, b = a.loc[common], b.loc[common]
    for col in a.columns:
        x, y = a[col].fillna("<missing>"), b[col].fillna("<missing>")
        changed = x.index[(x != y).to_numpy()]
        if not len(changed):
            continue
        shown = first_few([f"{i} ({x[i]} -> {y[i]})" for i in changed[:3]] + list(changed[3:]), 3)
        if col == "image_sha":
            out.append(f"{len(changed)} image file(s) changed: {first_few(changed, 3)}")
        elif col == "fold":
            out.append(f"the fold of {len(changed)} row(s) changed: {shown}")
        else:
            out.append(f"column '{col}' changed in {len(changed)} row(s): {shown}")
    return out


def read_record(path: Path) -> pd.DataFrame:  # every value as text, as training_record makes it
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


def missing_record(exp: Path) -> str:
    """Why the data of ``exp``'s trained folds cannot be checked ('' when it can, or nothing is trained)."""
    trained = any(exp.glob("fold*/*.pt")) or any(exp.glob("fold*/val_predictions.csv"))
    if trained and not (exp / "data.csv").is_file():
        return "data.csv (the record of the data its folds were trained on) is missing"
    return ""


def data_changes(exp: Path, record: pd.DataFrame, features: dict) -> list[str]:
    """How the data of this run differs from what ``exp`` was trained on ([] when the same, or when
    nothing was recorded yet: see ``missing_record``). The fitted features follow from the record,
    except with features.fit_on=train+test, where the test table counts too."""
    out = []
    if (exp / "data.csv").is_file():
        out += record_changes(read_record(exp / "data.csv"), record)
    saved = exp / "features.json"
    if not out and saved.is_file() and not _same(json.loads(saved.read_text()), json.loads(json.dumps(features))):
        out.append("the fitted meta-feature transform differs (with features.fit_on=train+test: the test table "
                   "changed)")
    return out


RETRAIN = "use a new name (name=...) or --force to delete its results and train again"


def changed_data_error(exp: Path, changes: list[str]) -> ExperimentError:
    return ExperimentError(f"{exp} was trained on other data: {'; '.join(changes[:4])}"
                           f"{f'; and {len(changes) - 4} more' if len(changes) > 4 else ''}; {RETRAIN}")


# Keys that change where or how a run is executed, not its results: they may differ on resume.
# Where the data and the fold table lie does not matter either: their content is compared (data.csv).
RUN_ONLY_KEYS = {"name", "output_dir", "train.folds", "train.num_workers", "train.deterministic",
                 "train.compile", "train.compile_mode", "data.root",
                 "data.cache_dir", "data.generate_sample", "folds.path", "features.max_bad_fraction", "infer",
                 "log"}


# Of those, the keys that train.py still uses for what it writes: the views of the OOF predictions.
# Every fold of an experiment is predicted with config.yaml's; infer.py may use others for the submission.
OOF_KEYS = {"infer.tta"}


def get_key(d: dict, key: str):
    """The value of a dotted key (``train.lr``) in a config dict."""
    for part in key.split("."):
        d = d[part]
    return d


def set_key(d: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        d = d[part]
    d[last] = value


def leaf_keys(d: dict) -> list[str]:
    """Every dotted key of a config dict: ``name``, ``output_dir`` and each section's keys (``train.lr``)."""
    out = []
    for name, value in d.items():
        out += [f"{name}.{key}" for key in value] if isinstance(value, dict) else [name]
    return out


def result_keys(d: dict, prefix: str = "", run_only: bool = False) -> dict:
    """The keys of a config dict that a training run must keep (all but RUN_ONLY_KEYS, OOF_KEYS included)."""
    out = {}
    for k, v in d.items():
        key = prefix + k
        inside = run_only or key in RUN_ONLY_KEYS
        if isinstance(v, dict) and any(o.startswith(key + ".") for o in OOF_KEYS):
            out.update(result_keys(v, key + ".", inside))
        elif key in OOF_KEYS or not inside:
            out.update(result_keys(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def saved_config(path: Path) -> Config:
    """An experiment's config.yaml (safe_load: a crafted file cannot build Python objects)."""
    try:
        return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, OSError) as e:
        raise ExperimentError(f"{path}: cannot read the saved config ({str(e).splitlines()[0]})") from None
