"""Folds: grouped by patient, stratified by target, seeded, saved once and reused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.folds import assign_folds, load_or_make_folds


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
    fold = assign_folds(df, "target", "patient_id", 5, seed=42)
    assert set(fold) == set(range(5))
    per_patient = pd.Series(fold).groupby(df["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1]


def test_folds_are_stratified():
    df = make_table(n_patients=200)
    fold = assign_folds(df, "target", "patient_id", 5, seed=42)
    overall = df["target"].mean()
    rates = df["target"].groupby(fold).mean()
    assert (rates - overall).abs().max() < 0.02, (overall, rates.to_dict())
    sizes = pd.Series(fold).value_counts()
    assert sizes.max() - sizes.min() <= 0.1 * len(df)


def test_same_seed_same_folds_other_seed_other_folds():
    df = make_table()
    a = assign_folds(df, "target", "patient_id", 5, seed=1)
    b = assign_folds(df, "target", "patient_id", 5, seed=1)
    c = assign_folds(df, "target", "patient_id", 5, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_rows_without_group_are_their_own_group():
    df = make_table(n_missing_group=40)
    fold = assign_folds(df, "target", "patient_id", 5, seed=42)
    lonely = fold[df["patient_id"].isna().to_numpy()]
    # one shared "NaN patient" would put all 40 rows into a single fold
    assert len(set(lonely)) == 5


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


def test_saved_fold_table_with_other_ids_is_refused(tmp_path):
    df = make_table()
    path = tmp_path / "folds.csv"
    load_or_make_folds(df, path, "image_name", "target", "patient_id", 5, seed=42)
    changed = df.copy()
    changed.loc[3, "image_name"] = "ISIC_new"
    with pytest.raises(ValueError, match="folds.csv.*do not match"):
        load_or_make_folds(changed, path, "image_name", "target", "patient_id", 5, seed=42)
    with pytest.raises(ValueError, match="folds.csv.*do not match"):
        load_or_make_folds(df.iloc[:-1], path, "image_name", "target", "patient_id", 5, seed=42)
    with pytest.raises(ValueError, match="4"):
        load_or_make_folds(df, path, "image_name", "target", "patient_id", 4, seed=42)
