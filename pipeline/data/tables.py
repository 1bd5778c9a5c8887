"""Reading the tables named by the config, and checking them before any training starts.

Each kind of problem is reported once, in one line naming the file and column, with the first
few offending ids and their total.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, first_few

# How tables spell "not known": any of these, stripped and in any case, is a missing value
# (a category's missing level, a missing number, an unknown diagnosis).
MISSING_WORDS = frozenset({"", "nan", "unknown", "na", "n/a", "none", "null", "?"})


def group_ids(df: pd.DataFrame, group_col: str) -> pd.Series:
    """Each row's group (the patient) as text; a row without one, or every row when there is no group
    column, is a group of its own (``__row_<position>``)."""
    singletons = "__row_" + pd.Series(np.arange(len(df)), index=df.index).astype(str)
    if not group_col:
        return singletons.astype("string")
    return df[group_col].astype("string").fillna(singletons)


def data_path(cfg, name: str) -> Path:
    return Path(cfg.data.root) / name


def parse_csv(path: Path, **read_csv_args) -> pd.DataFrame:
    """``pd.read_csv``, with an empty or unreadable file as a one-line DataError naming it."""
    try:
        return pd.read_csv(path, **read_csv_args)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def parse_csv_as_text(path: Path) -> pd.DataFrame:
    """Every cell as written (ids keep their leading zeros, 'nan' stays a word); only '' is missing."""
    return parse_csv(path, dtype="string", keep_default_na=False, na_values=[""])


def check_submission(sub: pd.DataFrame, expected_ids=None, id_col: str | None = None, pred_col: str | None = None,
                     path: Path | None = None, probabilities: bool = True) -> pd.DataFrame:
    """A submission checked: two columns, the id (``id_col``, by default the first) and the prediction
    (``pred_col``, the other); rows; every id once and not blank, in ``expected_ids``' order when
    given; every prediction a finite number, in [0, 1] with ``probabilities``. Cells may be text as
    read (parse_csv_as_text). Returns the ids and the predictions as floats. Read from ``path``, a
    failure is the user's to fix: a DataError naming the file; without a path ``sub`` is the
    pipeline's own output and a failure is a bug: a ValueError."""
    def fail(message: str):
        if path is None:
            raise ValueError(f"submission: {message}")
        raise DataError(f"{path}: {message}")

    if sub.shape[1] != 2:
        fail(f"expected 2 columns, the id then the prediction (has: {', '.join(map(str, sub.columns))})")
    if sub.empty:
        fail("no rows")
    id_col = id_col or sub.columns[0]
    pred_col = pred_col or next(c for c in sub.columns if c != id_col)
    ids = sub[id_col]
    if ids.isna().any() or ids.duplicated().any():
        fail(f"column '{id_col}' has blank or duplicate ids: "
             f"{first_few(ids[ids.isna() | ids.duplicated()].fillna('blank').unique())}")
    if expected_ids is not None and list(ids) != list(expected_ids):
        expected = list(expected_ids)
        first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        fail(f"column '{id_col}' differs from the expected ids ({len(ids)} rows, {len(expected)} expected; "
             f"first difference at row {first + 1})")
    pred = pd.to_numeric(sub[pred_col], errors="coerce").astype("float64")
    bad = ~np.isfinite(pred) | (probabilities & ((pred < 0) | (pred > 1)))
    if bad.any():
        shown = ("'" + sub[pred_col].astype("string") + "'").fillna("blank") + " at " + ids.astype("string")
        must = "a probability in [0, 1]" if probabilities else "a finite number"
        fail(f"column '{pred_col}' must be {must}; found {first_few(shown[bad])}")
    return pd.DataFrame({id_col: ids, pred_col: pred.to_numpy()})


def read_csv(path: Path, id_col: str, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    df = parse_csv(path, dtype={id_col: "string"})
    missing = [c for c in dict.fromkeys([id_col] + required) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    if df.empty:
        raise DataError(f"{path}: no rows")
    ids = df[id_col]
    if ids.isna().any():
        raise DataError(f"{path}: column '{id_col}' is empty in {int(ids.isna().sum())} row(s)")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: duplicate ids in column '{id_col}': {first_few(dup.unique())}")
    # an id names a file inside its image folder: '../test/x' would train on a test image
    paths = ids[ids.str.contains(r"[/\\\0]", regex=True) | ids.str.strip().isin(["", ".", ".."])]
    if len(paths):
        raise DataError(f"{path}: ids in column '{id_col}' must be file names, not paths: {first_few(paths)}")
    return df


def _equals(series: pd.Series, value) -> pd.Series:
    """Column == value, numerically when the value is a number (so -1 matches -1.0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (pd.to_numeric(series, errors="coerce") == value).fillna(False).astype(bool)  # NA: no match
    return series.astype("string").fillna("") == str(value)


def filter_rows(df: pd.DataFrame, keep: dict, drop: dict, path: Path, key: str) -> pd.DataFrame:
    for col in [*keep, *drop]:
        if col not in df.columns:
            raise DataError(f"{path}: column '{col}' named in data.{key} does not exist")
    for col, value in keep.items():
        df = df[_equals(df[col], value)]
    for col, value in drop.items():
        df = df[~_equals(df[col], value)]
    if df.empty:
        raise DataError(f"{path}: no rows left after data.{key} filtering")
    return df


def binary_target(df: pd.DataFrame, col: str, id_col: str, path: Path) -> np.ndarray:
    """0/1 ints; floats 0.0/1.0 are accepted, anything else (NaN, 'unknown', 2) is an error."""
    y = pd.to_numeric(df[col], errors="coerce")
    bad = ~y.isin([0, 1])
    if bad.any():
        values = sorted(set(map(str, df[col][bad])))[:5]
        raise DataError(f"{path}: column '{col}' must be 0/1; found {values} at ids {first_few(df[id_col][bad])}")
    return y.astype(np.int64).to_numpy()


def attach_images(df: pd.DataFrame, folder: Path, ext: str, id_col: str, what: str) -> pd.DataFrame:
    """Add image_path and image_bytes columns; every missing file is listed at once."""
    paths = [folder / f"{i}{ext}" for i in df[id_col]]
    sizes = [p.stat().st_size if p.is_file() else -1 for p in paths]
    missing = [i for i, s in zip(df[id_col], sizes) if s < 0]
    if missing:
        raise DataError(f"{folder}: {len(missing)} {what} image(s) missing ({ext}): {first_few(missing)}")
    return df.assign(image_path=[str(p) for p in paths], image_bytes=sizes)


def feature_columns(cfg) -> list[str]:
    f = cfg.features
    return list(f.categorical) + list(f.numeric)


def external_diagnosis(df: pd.DataFrame, names: dict, column: str, path: Path, id_col: str) -> pd.Series:
    """The external table's diagnosis in this config's class names, from ``names`` ({2019 name:
    class}): one-hot columns of those names where the table has them (ISIC 2019's ground truth), else
    its ``column`` with those values renamed (others kept as written)."""
    if column in df.columns and not any(c in df.columns for c in names):
        return df[column].astype("string").replace({str(k): str(v) for k, v in names.items()})
    return diagnosis_from_onehot(df, names, path, id_col)


def diagnosis_from_onehot(df: pd.DataFrame, columns: dict, path: Path, id_col: str) -> pd.Series:
    """The class of each row from one-hot columns ({column: class}, e.g. ISIC 2019's {MEL: melanoma});
    NA where no column is 1; a row with two is a DataError."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} named in data.external_diagnosis "
                        f"(has: {', '.join(df.columns)})")
    hot = np.column_stack([pd.to_numeric(df[c], errors="coerce").fillna(0).to_numpy() == 1 for c in columns])
    twice = hot.sum(axis=1) > 1
    if twice.any():
        raise DataError(f"{path}: more than one of the columns {', '.join(columns)} is 1 at "
                        f"{first_few(df[id_col][twice])}")
    names = np.array(list(columns.values()), dtype=object)
    return pd.Series(np.where(hot.any(axis=1), names[hot.argmax(axis=1)], None), index=df.index, dtype="string")


def _external(cfg, columns: list[str]) -> pd.DataFrame:
    """Training-only rows from another table (e.g. ISIC 2019), renamed to this config's columns."""
    d = cfg.data
    path = data_path(cfg, d.external_csv)
    raw_id = {new: old for old, new in d.external_rename.items()}.get(d.id_col, d.id_col)
    df = read_csv(path, raw_id, []).rename(columns=d.external_rename)
    if d.diagnosis_col and d.external_diagnosis:
        df[d.diagnosis_col] = external_diagnosis(df, d.external_diagnosis, d.diagnosis_col, path, d.id_col)
    missing = [c for c in [d.target_col, *([d.diagnosis_col] if d.diagnosis_col else []), *feature_columns(cfg)]
               if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (after data.external_rename; "
                        f"has: {', '.join(df.columns)})")
    if d.group_col and d.group_col not in df.columns:
        df[d.group_col] = pd.NA
    df = filter_rows(df, {}, {k: v for k, v in d.drop_where.items() if k in df.columns}, path, "drop_where")
    df[d.target_col] = binary_target(df, d.target_col, d.id_col, path)
    df = attach_images(df, data_path(cfg, d.external_images or d.train_images), d.image_ext, d.id_col, "external")
    return df[[c for c in columns if c in df.columns]].assign(is_external=True)


def load_train(cfg) -> pd.DataFrame:
    """The training table (plus any external training-only rows), checked, with image paths."""
    d = cfg.data
    path = data_path(cfg, d.train_csv)
    group = [d.group_col] if d.group_col else []
    diagnosis = [d.diagnosis_col] if d.diagnosis_col else []
    df = read_csv(path, d.id_col, [d.id_col, d.target_col] + group + diagnosis + feature_columns(cfg))
    df = filter_rows(df, d.keep_where, d.drop_where, path, "keep_where/drop_where")
    df[d.target_col] = binary_target(df, d.target_col, d.id_col, path)
    if df[d.target_col].nunique() < 2:
        raise DataError(f"{path}: column '{d.target_col}' has a single class; AUC needs both")
    df = attach_images(df, data_path(cfg, d.train_images), d.image_ext, d.id_col, "training")
    df["is_external"] = False
    if d.external_csv:
        ext = _external(cfg, list(df.columns))
        clash = sorted(set(ext[d.id_col]) & set(df[d.id_col]))
        if clash:
            raise DataError(f"{data_path(cfg, d.external_csv)}: ids also in {path}: {first_few(clash)}")
        df = pd.concat([df, ext], ignore_index=True)
    return df.reset_index(drop=True)


def load_test(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test table with image paths, and the submission template (ids and their order)."""
    d = cfg.data
    if not d.test_csv:
        raise DataError("data.test_csv is empty: this experiment has no test set to predict")
    path = data_path(cfg, d.test_csv)
    group = [d.group_col] if d.group_col else []
    df = read_csv(path, d.id_col, [d.id_col] + group + feature_columns(cfg))
    df = filter_rows(df, d.test_keep_where, {}, path, "test_keep_where")
    if d.sample_submission:
        sub_path = data_path(cfg, d.sample_submission)
        sub = read_csv(sub_path, d.id_col, [d.id_col])
        check_template(sub, d.id_col, sub_path)
        only_test, only_sub = set(df[d.id_col]) - set(sub[d.id_col]), set(sub[d.id_col]) - set(df[d.id_col])
        if only_test or only_sub:
            sides = [f"{len(ids)} only in {where}: {first_few(sorted(ids))}"
                     for ids, where in [(only_sub, "the submission"), (only_test, "the test table")] if ids]
            raise DataError(f"{sub_path}: ids differ from {path}: {'; '.join(sides)}")
    else:
        sub = df[[d.id_col]].copy()
    df = attach_images(df, data_path(cfg, d.test_images), d.image_ext, d.id_col, "test")
    return df.reset_index(drop=True), sub.reset_index(drop=True)


def check_template(sub: pd.DataFrame, id_col: str, path: Path) -> None:
    """A submission template holds the id column and one prediction column, in either order; the
    submission is written with exactly these two columns, in this order, and the template's ids in
    its order. Anything else is refused: which other column would the competition score?"""
    others = [c for c in sub.columns if c != id_col]
    if len(others) == 1:
        return
    why = ("no prediction column: add the column the competition scores (e.g. target)" if not others else
           f"{len(others)} columns besides the id: keep the id and the one column the competition scores")
    raise DataError(f"{path}: a submission template holds the id column '{id_col}' and one prediction column; "
                    f"this one has {why} (has: {', '.join(map(str, sub.columns))})")
