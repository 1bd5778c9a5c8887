"""Reading the competition tables named by the config, and checking them before any training.

Every problem is reported in one line naming the file, the column and the first offending ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .data import image_paths


class DataError(ValueError):
    """The data does not match the config; the message names the file, column or rows."""


def _few(ids, n: int = 5) -> str:
    ids = list(ids)
    more = f", ... ({len(ids)} in all)" if len(ids) > n else f" ({len(ids)} in all)"
    return ", ".join(map(str, ids[:n])) + more


def data_path(cfg, name: str) -> Path:
    return Path(cfg.data.root) / name


def read_csv(path: Path, id_col: str, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype={id_col: "string"})
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    if df.empty:
        raise DataError(f"{path}: no rows")
    dup = df[id_col][df[id_col].duplicated()]
    if len(dup):
        raise DataError(f"{path}: duplicate ids in column '{id_col}': {_few(dup.unique())}")
    return df


def binary_target(df: pd.DataFrame, col: str, id_col: str, path: Path) -> np.ndarray:
    """0/1 ints; floats 0.0/1.0 are accepted, anything else is an error listing the rows."""
    y = pd.to_numeric(df[col], errors="coerce")
    bad = ~y.isin([0, 1])
    if bad.any():
        values = sorted(set(map(str, df[col][bad])))[:5]
        raise DataError(f"{path}: column '{col}' must be 0/1; found {values} at ids {_few(df[id_col][bad])}")
    return y.astype(np.int64).to_numpy()


def check_images(paths: list[Path], ids, what: str):
    missing = [i for i, p in zip(ids, paths) if not p.is_file()]
    if missing:
        folder = paths[0].parent if paths else "?"
        raise DataError(f"{folder}: {len(missing)} {what} image(s) missing: {_few(missing)}")


def feature_columns(cfg) -> list[str]:
    f = cfg.features
    return list(f.categorical) + list(f.numeric) + ([cfg.data.group_col] if f.n_images else [])


def load_train(cfg) -> tuple[pd.DataFrame, list[Path]]:
    d = cfg.data
    path = data_path(cfg, d.train_csv)
    df = read_csv(path, d.id_col, [d.id_col, d.target_col, d.group_col] + feature_columns(cfg))
    df[d.target_col] = binary_target(df, d.target_col, d.id_col, path)
    if df[d.target_col].nunique() < 2:
        raise DataError(f"{path}: column '{d.target_col}' has a single class; AUC needs both")
    paths = image_paths(df[d.id_col], data_path(cfg, d.train_images), d.image_ext)
    check_images(paths, df[d.id_col], "training")
    return df.reset_index(drop=True), paths


def load_test(cfg) -> tuple[pd.DataFrame, list[Path], pd.DataFrame]:
    d = cfg.data
    path = data_path(cfg, d.test_csv)
    df = read_csv(path, d.id_col, [d.id_col] + [c for c in feature_columns(cfg) if c != d.target_col])
    sub_path = data_path(cfg, d.sample_submission)
    sub = read_csv(sub_path, d.id_col, [d.id_col])
    only_test, only_sub = set(df[d.id_col]) - set(sub[d.id_col]), set(sub[d.id_col]) - set(df[d.id_col])
    if only_test or only_sub:
        raise DataError(f"{sub_path}: ids differ from {path}: {len(only_sub)} only in the submission "
                        f"({_few(sorted(only_sub))}), {len(only_test)} only in the test table ({_few(sorted(only_test))})")
    paths = image_paths(df[d.id_col], data_path(cfg, d.test_images), d.image_ext)
    check_images(paths, df[d.id_col], "test")
    return df.reset_index(drop=True), paths, sub
