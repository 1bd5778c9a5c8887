"""Patient-grouped, stratified folds: made once with a seed, saved as a table, reused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.core.errors import DataError, first_few
from pipeline.core.files import write_csv
from pipeline.data.tables import group_ids, read_csv


def make_folds(df: pd.DataFrame, target: str, group: str, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row; rows without a group id (or all rows, when ``group`` is '') are their own group."""
    groups = group_ids(df, group)
    fold = np.full(len(df), -1, dtype=np.int64)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(len(df)), df[target].to_numpy(), groups.to_numpy())):
        fold[val_idx] = k
    return fold


def read_folds(path: Path, ids: pd.Series, id_col: str, n_folds: int) -> np.ndarray:
    """int64 fold per id from a saved fold table, which must hold exactly these ids, each once,
    each with a whole-number fold 0..n_folds-1, and every fold at least once."""
    saved = read_csv(path, id_col, ["fold"])  # also refuses blank and duplicate ids
    fold = pd.to_numeric(saved["fold"], errors="coerce")
    bad = fold.isna() | (fold % 1 != 0) | (fold < 0) | (fold >= n_folds)
    if bad.any():
        # numbers as integers even in a float column (-1, not -1.0); text quoted as written
        text = "'" + saved["fold"].astype("string") + "'"
        shown = text.fillna("blank").where(fold.isna(), fold.map("{:g}".format))
        raise DataError(f"{path}: column 'fold' must be a whole number 0..{n_folds - 1} (folds.n_folds = "
                        f"{n_folds}); found {first_few(shown[bad] + ' at ' + saved[id_col][bad])}")
    empty = sorted(set(range(n_folds)) - set(fold.astype(np.int64)))
    if empty:
        raise DataError(f"{path}: no rows in fold(s) {', '.join(map(str, empty))} (folds.n_folds = {n_folds})")
    missing, extra = set(ids) - set(saved[id_col]), set(saved[id_col]) - set(ids)
    if missing or extra:
        sides = [f"{len(s)} {what}: {first_few(sorted(s))}" for s, what in
                 [(missing, "training id(s) missing from it"), (extra, "id(s) in it are not training ids")] if s]
        raise DataError(f"{path}: the saved folds do not match the training ids: {'; '.join(sides)}")
    return pd.Series(fold.astype(np.int64).to_numpy(), index=saved[id_col]).loc[ids].to_numpy()


def load_or_make_folds(df: pd.DataFrame, path: Path, id_col: str, target: str, group: str,
                       n_folds: int, seed: int) -> np.ndarray:
    """Reuse the fold table at ``path`` when it covers exactly these ids, else make and save it."""
    path = Path(path)
    if path.is_file():
        try:
            return read_folds(path, df[id_col].astype("string"), id_col, n_folds)
        except DataError as e:
            raise DataError(f"{e}; delete it or set folds.path to make new folds") from None
    try:
        fold = make_folds(df, target, group, n_folds, seed)
    except ValueError as e:  # more folds than groups or rows
        raise DataError(f"{path}: cannot make {n_folds} folds of {len(df)} training rows ({e}); "
                        f"use fewer folds (folds.n_folds)") from None
    write_csv(path, pd.DataFrame({id_col: df[id_col], "fold": fold}))
    return fold


def fold_table(df: pd.DataFrame, fold: np.ndarray, target: str, group: str) -> pd.DataFrame:
    """Images, groups and positives per fold: printed before training."""
    t = pd.DataFrame({"fold": fold, "y": df[target].to_numpy(), "g": df[group].to_numpy()})
    out = t.groupby("fold").agg(images=("y", "size"), patients=("g", "nunique"), positives=("y", "sum"))
    out["pos_rate"] = (out["positives"] / out["images"]).round(4)
    return out
