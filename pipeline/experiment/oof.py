"""The OOF table (``oof.csv``): its one definition, written by train.py and the blends, read by the CV
report, the comparisons and the blends.

    <id>[,<group>],fold,target,pred

The header records which column is which: the columns before ``fold`` are the id (text, each row's
own) and, when there are two, the group (the patient: the bootstrap resamples whole groups). With
``fold,target,pred`` alone there is no id and the rows are numbered. Any other layout (a column more,
another order) is refused.

``collect_oof`` assembles an experiment's table from its finished folds' val_predictions.csv.
``aligned`` lines up the tables of several experiments (or a blend's members) by id, refusing tables
of other rows, folds, targets or groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import DataError, ExperimentError, first_few
from pipeline.core.files import write_csv
from pipeline.data.tables import parse_csv_as_text

FOLD, TARGET, PRED = "fold", "target", "pred"
COLUMNS = (FOLD, TARGET, PRED)
EXPECTED = "<id>[,<group>],fold,target,pred"

if TYPE_CHECKING:  # the training data's type only: reading an OOF table needs no torch
    from pipeline.data.prepare import TrainData


@dataclass(frozen=True)
class Layout:
    """Which columns of an OOF table are the id and the group (None: the table has none)."""
    id: str | None = None
    group: str | None = None

    def __post_init__(self):
        if self.group is not None and self.id is None:
            raise ValueError("an OOF table with a group column needs an id column before it")

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.id, self.group) if c is not None] + list(COLUMNS)

    @classmethod
    def from_header(cls, columns, path: str | Path | None = None) -> Layout:
        """The layout of a table with these columns; any other layout is a DataError naming ``path``."""
        cols = [str(c) for c in columns]
        head = cols[:-len(COLUMNS)]
        if cols[-len(COLUMNS):] != list(COLUMNS) or len(head) > 2 or set(head) & set(COLUMNS):
            where = f"{path}: " if path is not None else ""
            raise DataError(f"{where}expected the columns {EXPECTED} in this order, or {','.join(COLUMNS)} "
                            f"alone (has: {', '.join(cols)})")
        return cls(*head)


def layout_of(oof: pd.DataFrame) -> Layout:
    """The layout ``read`` recorded, else the one of the frame's columns."""
    return oof.attrs.get("layout") or Layout.from_header(oof.columns)


def _values(v):
    # a Series keeps its dtype but not its index: the table's rows are in the order given
    return v.array if isinstance(v, (pd.Series, pd.Index)) else v


def table(layout: Layout, ids, groups, fold, target, pred) -> pd.DataFrame:
    """The rows as an OOF table in ``layout``'s columns and order; ``ids`` / ``groups`` are None
    exactly when the layout has no id / group column. The index is 0..n-1."""
    if (ids is None) != (layout.id is None) or (groups is None) != (layout.group is None):
        raise ValueError(f"ids and groups must be given exactly for the layout's columns ({layout})")
    values = dict(zip(layout.columns, [v for v in (ids, groups) if v is not None] + [fold, target, pred]))
    out = pd.DataFrame({c: _values(v) for c, v in values.items()})
    out.attrs["layout"] = layout
    return out


def write(path: str | Path, oof: pd.DataFrame) -> Path:
    """``oof`` (in an OOF layout) written as CSV, atomically."""
    try:
        Layout.from_header(oof.columns)
    except DataError as e:
        raise ValueError(f"{path}: not an OOF table: {e}") from None
    return write_csv(path, oof)


def read(path: str | Path) -> pd.DataFrame:
    """The OOF table at ``path`` with int fold and target, float pred, the id and group as text, and
    its Layout in ``.attrs["layout"]``. Anything malformed raises DataError: one line starting with
    the path, naming the column and the first few ids (or file lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no OOF predictions yet (train some folds first)")
    oof = parse_csv_as_text(path)  # a bad cell is shown as it is ('nan')
    missing = [c for c in COLUMNS if c not in oof.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(oof.columns)})")
    layout = Layout.from_header(oof.columns, path)
    if oof.empty:
        raise DataError(f"{path}: no rows")
    id_col = layout.id
    lines = "line " + pd.Series(oof.index + 2, index=oof.index).astype("string")  # the header is line 1
    if id_col and oof[id_col].isna().any():
        raise DataError(f"{path}: column '{id_col}' is blank at {first_few(lines[oof[id_col].isna()])}")
    if id_col and oof[id_col].duplicated().any():
        dup = oof[id_col][oof[id_col].duplicated()].unique()
        raise DataError(f"{path}: duplicate ids in column '{id_col}': {first_few(dup)}")
    where = oof[id_col] if id_col else lines
    numbers = {c: pd.to_numeric(oof[c], errors="coerce").astype("float64") for c in COLUMNS}
    for col, bad, must in [(TARGET, ~numbers[TARGET].isin([0, 1]), "0 or 1"),
                           (PRED, ~np.isfinite(numbers[PRED]), "a finite number"),
                           (FOLD, numbers[FOLD] % 1 != 0, "a whole number")]:
        if bad.any():
            shown = ("'" + oof[col] + "'").fillna("blank")
            found = first_few(shown[bad] + " at " + where[bad])
            raise DataError(f"{path}: column '{col}' must be {must}; found {found}")
    out = oof.assign(fold=numbers[FOLD].astype(np.int64), target=numbers[TARGET].astype(np.int64),
                     pred=numbers[PRED])
    out.attrs["layout"] = layout
    return out


def read_both_classes(exp_dir: str | Path) -> pd.DataFrame:
    """``exp_dir``'s oof.csv (``read``), refused unless it holds both classes (AUC needs them)."""
    path = Path(exp_dir) / "oof.csv"
    oof = read(path)
    if oof[TARGET].nunique() < 2:
        raise DataError(f"{path}: column 'target' is {oof[TARGET].iloc[0]} in all {len(oof)} rows; "
                        f"AUC needs both classes")
    return oof


# ---------------------------------------------------------------- several tables side by side

def _differ(frame: pd.DataFrame, first: Path, d: Path, other: pd.DataFrame) -> None:
    """Refuse ``other`` (indexed by id) unless it holds the same ids, folds and targets as ``frame``."""
    only_first, only_here = frame["id"][~frame["id"].isin(other.index)], other.index[~other.index.isin(frame["id"])]
    if len(only_first) or len(only_here):
        sides = [f"{len(x)} ids only in {where}: {first_few(x)}"
                 for x, where in [(only_first, first), (only_here, d)] if len(x)]
        raise DataError(f"{first} and {d} hold different rows ({'; '.join(sides)}); compare experiments "
                        f"trained on the same data")
    other = other.loc[frame["id"]]
    for col, what, same in [("fold", "folds", "fold table"), ("target", "targets", "data")]:
        differ = other[col].to_numpy() != frame[col].to_numpy()
        if differ.any():
            shown = [f"{i} ({a} vs {b})" for i, a, b in zip(frame["id"][differ], frame[col][differ],
                                                            other[col].to_numpy()[differ])]
            raise DataError(f"{first} and {d} use different {what}: {first_few(shown)}; compare experiments "
                            f"trained on the same {same}")


def aligned(oofs: list[pd.DataFrame], dirs: list[Path]) -> pd.DataFrame:
    """One frame: id, group (NA without one), fold, target, and one prediction column per
    experiment, the rows in the first experiment's order; ``attrs["group_col"]`` names the group
    column. Experiments on other rows, folds, targets or patients are refused: a difference of AUCs
    on other data measures nothing."""
    base, first = oofs[0], dirs[0]
    layouts = [layout_of(oof) for oof in oofs]
    if len(oofs) > 1:
        for oof, layout, d in zip(oofs, layouts, dirs):
            if layout.id is None:
                raise DataError(f"{d / 'oof.csv'}: no id column (its first column is '{oof.columns[0]}'); "
                                f"comparing experiments needs ids to line up their rows")
    ids = base[layouts[0].id] if layouts[0].id else pd.Series(np.arange(len(base))).astype("string")
    frame = pd.DataFrame({"id": ids.to_numpy(), "fold": base["fold"].to_numpy(), "target": base["target"].to_numpy()})
    frame["group"] = pd.array([pd.NA] * len(frame), dtype="string")
    group_from = None
    for k, (oof, layout, d) in enumerate(zip(oofs, layouts, dirs)):
        other = oof.set_index(layout.id) if len(oofs) > 1 else oof.set_axis(frame["id"])
        _differ(frame, first, d, other)
        other = other.loc[frame["id"]]
        if layout.group:
            groups = other[layout.group].astype("string").reset_index(drop=True)
            if group_from is None:
                frame["group"], group_from = pd.array(groups, dtype="string"), (d, layout.group)
            else:
                differ = (groups.fillna("") != frame["group"].fillna("")).to_numpy()
                if differ.any():
                    shown = [f"{i} ({a} vs {b})" for i, a, b in zip(frame["id"][differ], frame["group"][differ],
                                                                    groups[differ])]
                    raise DataError(f"{group_from[0]} and {d} put rows in different groups "
                                    f"('{group_from[1]}' vs '{layout.group}'): {first_few(shown)}")
        frame[f"pred:{k}"] = other["pred"].to_numpy()
    frame.attrs["group_col"] = group_from[1] if group_from else None
    return frame


def val_predictions_path(fold_dir: Path) -> Path:
    """Where a finished fold's predictions of its validation rows lie; the experiment's oof.csv is
    assembled from these, and a fold that has one is done."""
    return fold_dir / "val_predictions.csv"


def collect_oof(exp: Path, record: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished fold's OOF rows, each id at most once and, when ``record`` (the experiment's
    training record) is given, in the fold that its fold table says."""
    paths = [val_predictions_path(d) for d in sorted(exp.glob("fold*")) if d.is_dir()]
    parts = [read(p) for p in paths if p.exists()]
    if not parts:
        return pd.DataFrame()
    oof = pd.concat(parts, ignore_index=True)
    ids = oof[layout_of(parts[0]).id]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ExperimentError(f"{exp}: ids predicted by more than one fold: {first_few(dup.unique())}; its folds were "
                              f"trained on different fold tables: train them again (--force)")
    if record is not None:
        in_folds = record[record["fold"] != "-1"]
        fold_of = dict(zip(in_folds.iloc[:, 0], in_folds["fold"].astype(int)))
        wrong = [i for i, k in zip(ids, oof["fold"]) if fold_of.get(i) != k]
        if wrong:
            raise ExperimentError(f"{exp}: OOF rows outside their fold in folds.csv: {first_few(wrong)}; train those "
                                  f"folds again (--force --folds ...)")
    return oof


def oof_rows(cfg: Config, data: TrainData, idx: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """The OOF table of rows ``idx`` (data.df positions): id, group (when configured), fold, target, pred."""
    d, rows = cfg.data, data.df.iloc[idx]
    return table(Layout(d.id_col, d.group_col or None), rows[d.id_col],
                 rows[d.group_col] if d.group_col else None, rows["fold"], rows[d.target_col], pred)
