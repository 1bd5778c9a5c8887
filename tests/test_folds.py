"""Folds: grouped by patient, stratified by target, seeded, saved once and reused."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from pipeline.data.folds import load_or_make_folds, make_folds


def make_table(n_patients: int = 120, seed: int = 0, n_missing_group: int = 0) -> pd.DataFrame:
    """1..8 images per patient, ~20 % positives (more for some patients, like real data)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_patients)
    patient = np.repeat([f"IP_{i:04d}" for i in range(n_patients)], sizes).astype(object)
    risk = np.repeat(rng.uniform(0.05, 0.4, n_patients), sizes)
    target = (rng.random(len(patient)) < risk).astype(int)
    if n_missing_group:
        patient = np.concatenate([patient, [np.nan] * n_missing_group])
        target = np.concatenate([target, (rng.random(n_missing_group) < 0.2).astype(int)])
    ids = [f"ISIC_{i:06d}" for i in range(len(patient))]
    return pd.DataFrame({"image_name": ids, "patient_id": patient, "target": target})


def test_no_patient_in_two_folds_and_every_row_assigned():
    df = make_table()
    fold = make_folds(df, "target", "patient_id", 5, seed=42)
    assert set(fold) == set(range(5))
    per_patient = pd.Series(fold).groupby(df["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1]


def test_folds_are_stratified():
    df = make_table(n_patients=200)
    fold = make_folds(df, "target", "patient_id", 5, seed=42)
    overall = df["target"].mean()
    rates = df["target"].groupby(fold).mean()
    assert (rates - overall).abs().max() < 0.02, (overall, rates.to_dict())
    sizes = pd.Series(fold).value_counts()
    assert sizes.max() - sizes.min() <= 0.1 * len(df)


def test_same_seed_same_folds_other_seed_other_folds():
    df = make_table()
    a = make_folds(df, "target", "patient_id", 5, seed=1)
    b = make_folds(df, "target", "patient_id", 5, seed=1)
    c = make_folds(df, "target", "patient_id", 5, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_rows_without_group_are_their_own_group():
    df = make_table(n_missing_group=40)
    fold = make_folds(df, "target", "patient_id", 5, seed=42)
    lonely = fold[df["patient_id"].isna().to_numpy()]
    # one shared "NaN patient" would put all 40 rows into a single fold
    assert len(set(lonely)) == 5


def test_more_folds_than_patients_is_one_error_line_and_writes_no_table(tmp_path):
    df = make_table(n_patients=30)
    path = tmp_path / "folds.csv"
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot make 500 folds of {len(df)} training rows (")
                       + r".*\); use fewer folds \(folds.n_folds\)$"):
        load_or_make_folds(df, path, "image_name", "target", "patient_id", 500, seed=42)
    assert not path.exists()


def test_saved_fold_table_is_reused(tmp_path):
    df = make_table()
    path = tmp_path / "folds.csv"
    first = load_or_make_folds(df, path, "image_name", "target", "patient_id", 5, seed=42)
    saved = pd.read_csv(path)
    assert list(saved.columns) == ["image_name", "fold"]
    assert dict(zip(saved["image_name"], saved["fold"])) == dict(zip(df["image_name"], first))

    # Relabel the saved folds consistently: the second call must return the file's folds, aligned
    # by id even when the table comes in another order, and whatever the seed now says.
    saved["fold"] = (saved["fold"] + 1) % 5
    saved.to_csv(path, index=False)
    shuffled = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = load_or_make_folds(shuffled, path, "image_name", "target", "patient_id", 5, seed=7)
    expected = shuffled["image_name"].map(dict(zip(df["image_name"], (first + 1) % 5))).to_numpy()
    np.testing.assert_array_equal(again, expected)


ARGS = ("image_name", "target", "patient_id", 5)


@pytest.fixture
def saved(tmp_path):
    """A training table and its freshly saved fold table, to be spoiled by each test."""
    df = make_table()
    path = tmp_path / "folds.csv"
    load_or_make_folds(df, path, *ARGS, seed=42)
    return df, path, pd.read_csv(path, dtype={"image_name": "string"})


def refused(df, path, table: pd.DataFrame, match: str, n_folds: int = 5) -> str:
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=match) as e:
        load_or_make_folds(df, path, *ARGS[:3], n_folds, seed=42)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and "delete it or set folds.path" in msg
    return msg


def test_saved_folds_are_int64(saved):
    df, path, table = saved
    table["fold"] = table["fold"].astype(float)  # "3.0" in the file is still fold 3
    table.to_csv(path, index=False)
    fold = load_or_make_folds(df, path, *ARGS, seed=42)
    assert fold.dtype == np.int64
    np.testing.assert_array_equal(fold, table["fold"].astype(int))


def test_saved_fold_table_with_other_ids_is_refused(saved):
    df, path, table = saved
    changed = df.copy()
    changed.loc[3, "image_name"] = "ISIC_new"
    msg = refused(changed, path, table, "do not match the training ids")
    assert "1 training id(s) missing from it: ISIC_new (1 in all)" in msg
    assert "1 id(s) in it are not training ids: ISIC_000003 (1 in all)" in msg
    msg = refused(df.iloc[:-2], path, table, "do not match")
    assert "missing from it" not in msg
    assert f"2 id(s) in it are not training ids: {df['image_name'].iloc[-2]}, {df['image_name'].iloc[-1]}" in msg
    refused(pd.concat([df, df.iloc[:1].assign(image_name="ISIC_extra")]), path, table,
            r"1 training id\(s\) missing from it: ISIC_extra")


def test_saved_fold_table_with_other_fold_count_is_refused(saved):
    df, path, table = saved
    refused(df, path, table, r"'fold' must be a whole number 0\.\.3 \(folds.n_folds = 4\); found 4 at ", n_folds=4)
    msg = refused(df, path, table, r"no rows in fold\(s\) 5, 6", n_folds=7)
    assert "folds.n_folds = 7" in msg


@pytest.mark.parametrize("cell, shown", [("", "blank"), ("-1", "-1"), ("5", "5"), ("1.5", "1.5"), ("x", "'x'")])
def test_bad_fold_cells_are_listed_with_their_ids(saved, cell, shown):
    df, path, table = saved
    table["fold"] = table["fold"].astype("string")
    table.loc[[3, 7], "fold"] = cell
    ids = table["image_name"]
    refused(df, path, table, rf"column 'fold' must be a whole number 0\.\.4 \(folds.n_folds = 5\); "
                             rf"found {re.escape(shown)} at {ids[3]}, {re.escape(shown)} at {ids[7]} \(2 in all\)")


def test_negative_fold_among_floats_is_shown_as_an_integer(saved):
    df, path, table = saved
    table["fold"] = table["fold"].astype(float)
    table.loc[3, "fold"] = -1.0
    refused(df, path, table, rf"found -1 at {table['image_name'][3]} \(1 in all\)")


def test_fold_table_with_a_missing_fold_is_refused(saved):
    df, path, table = saved
    table["fold"] = table["fold"].replace(4, 0)
    refused(df, path, table, r"no rows in fold\(s\) 4 ")


def test_fold_table_with_duplicate_or_blank_ids_is_refused(saved):
    df, path, table = saved
    refused(df, path, pd.concat([table, table.iloc[[5, 9]]]), r"duplicate ids in column 'image_name': "
            rf"{table['image_name'][5]}, {table['image_name'][9]} \(2 in all\)")
    blank = table.copy()
    blank.loc[4, "image_name"] = pd.NA
    refused(df, path, blank, "column 'image_name' is empty in 1 row")


def test_fold_table_without_its_columns_is_refused(saved):
    df, path, table = saved
    refused(df, path, table.drop(columns="fold"), r"missing column\(s\) fold")
    refused(df, path, table.rename(columns={"image_name": "id"}), r"missing column\(s\) image_name")
