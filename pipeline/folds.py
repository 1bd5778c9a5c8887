"""Patient-grouped, stratified folds: made once with a seed, saved as a table, reused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .io import write_csv


def assign_folds(df: pd.DataFrame, target: str, group: str, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row; rows without a group id (or all rows, when ``group`` is '') are their own group."""
    groups = df[group].astype("string") if group else pd.Series(pd.NA, index=df.index, dtype="string")
    missing = groups.isna()
    groups = groups.where(~missing, "__row_" + pd.Series(np.arange(len(df)), index=df.index).astype(str))
    fold = np.full(len(df), -1, dtype=np.int64)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(len(df)), df[target].to_numpy(), groups.to_numpy())):
        fold[val_idx] = k
    return fold


def load_or_make_folds(df: pd.DataFrame, path: Path, id_col: str, target: str, group: str,
                       n_folds: int, seed: int) -> np.ndarray:
    """Reuse the fold table at ``path`` when it covers exactly these ids, else make and save it."""
    path = Path(path)
    if path.is_file():
        saved = pd.read_csv(path, dtype={id_col: "string"})
        if set(saved[id_col]) != set(df[id_col].astype("string")) or len(saved) != len(df):
            raise ValueError(f"{path}: the saved folds do not match the training ids; "
                             f"delete it or set folds.path to make new folds")
        if saved["fold"].max() + 1 != n_folds:
            raise ValueError(f"{path}: holds {saved['fold'].max() + 1} folds, the config asks for {n_folds}; "
                             f"delete it or set folds.path")
        return saved.set_index(id_col)["fold"].loc[df[id_col].astype("string")].to_numpy()
    fold = assign_folds(df, target, group, n_folds, seed)
    write_csv(path, pd.DataFrame({id_col: df[id_col], "fold": fold}))
    return fold


def fold_table(df: pd.DataFrame, fold: np.ndarray, target: str, group: str) -> pd.DataFrame:
    """Images, groups and positives per fold: printed before training."""
    t = pd.DataFrame({"fold": fold, "y": df[target].to_numpy(), "g": df[group].to_numpy()})
    out = t.groupby("fold").agg(images=("y", "size"), patients=("g", "nunique"), positives=("y", "sum"))
    out["pos_rate"] = (out["positives"] / out["images"]).round(4)
    return out
