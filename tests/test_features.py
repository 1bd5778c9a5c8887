"""Meta features: fitted on the fit frame only, JSON round trip, missing levels and flags, group sizes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from pipeline.data.features import MISSING, MetaTransform, check_numeric

FIT = pd.DataFrame({
    "sex": ["male", "female", "Male ", "female", np.nan, "female"],
    "site": ["torso", "head/neck", "torso", "unknown", "torso", ""],
    "age": [30.0, 50.0, np.nan, 70.0, 40.0, 60.0],
    "patient_id": ["a", "a", "a", "b", "b", "c"],
})
NEW = pd.DataFrame({  # what inference sees: an unseen category, NaNs, a non-number, new patients
    "sex": ["female", "other", np.nan],
    "site": ["palms/soles", "torso", "TORSO"],
    "age": [np.nan, 45.0, "n/a"],
    "patient_id": ["x", "x", np.nan],
})


def make() -> MetaTransform:
    return MetaTransform(["sex", "site"], ["age"], n_images=True, group_col="patient_id").fit(FIT)


def block(t: MetaTransform, x: np.ndarray, prefix: str) -> np.ndarray:
    cols = [i for i, n in enumerate(t.names) if n.startswith(prefix)]
    return x[:, cols]


def test_levels_and_statistics_come_from_the_fit_frame():
    t = make()
    assert t.levels["sex"] == ["female", "male", MISSING]  # normalised case/space, NaN not a level
    assert t.levels["site"] == ["head/neck", "torso", MISSING]  # 'unknown' and '' are missing
    ages = FIT["age"].dropna()
    assert t.stats["age"][:2] == pytest.approx([ages.mean(), ages.std()])
    # transforming another frame never refits
    before = json.dumps(t.to_dict())
    t.transform(NEW)
    assert json.dumps(t.to_dict()) == before
    x = t.transform(FIT)
    assert x.dtype == np.float32 and x.shape == (len(FIT), len(t.names))


def test_json_round_trip_gives_identical_arrays():
    t = make()
    back = MetaTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.names == t.names
    for df in (FIT, NEW):
        a, b = t.transform(df), back.transform(df)
        assert a.tobytes() == b.tobytes()


def test_unknown_category_and_nan_map_to_the_missing_level():
    t = make()
    x = t.transform(NEW)
    sex = block(t, x, "sex=")
    np.testing.assert_array_equal(sex, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])  # female, other -> missing, NaN
    site = block(t, x, "site=")
    np.testing.assert_array_equal(site, [[0, 0, 1], [0, 1, 0], [0, 1, 0]])  # unseen -> missing; TORSO = torso


def test_numeric_nan_gets_flag_one_and_value_zero():
    t = make()
    mean, std = t.stats["age"][:2]
    x = t.transform(NEW)
    age = x[:, t.names.index("age")]
    flag = x[:, t.names.index("age_missing")]
    np.testing.assert_array_equal(flag, [1, 0, 1])  # NaN and a non-number are missing
    np.testing.assert_allclose(age, [0.0, (45.0 - mean) / std, 0.0], rtol=1e-6)


def test_log1p_images_per_group():
    t = make()
    n = t.transform(FIT)[:, t.names.index("log1p_n_images")]
    np.testing.assert_allclose(n, np.log1p([3, 3, 3, 2, 2, 1]), rtol=1e-6)
    # counted within the frame being transformed; a row without a group id counts alone
    n = t.transform(NEW)[:, t.names.index("log1p_n_images")]
    np.testing.assert_allclose(n, np.log1p([2, 2, 1]), rtol=1e-6)


def test_prepare_fits_on_the_training_table_only(tiny_cfg, tmp_path):
    from pipeline.data.prepare import prepare
    cfg = tiny_cfg(**{"folds.path": str(tmp_path / "folds.csv")})
    data = prepare(cfg)
    train = pd.read_csv(f"{cfg.data.root}/train.csv")
    test = pd.read_csv(f"{cfg.data.root}/test.csv")
    age = train["age_approx"].dropna()
    assert data.transform.stats["age_approx"][:2] == pytest.approx([age.mean(), age.std()])
    both = pd.concat([train, test])["age_approx"].dropna()
    assert abs(both.mean() - age.mean()) > 1e-6  # the check above can tell the two apart
    np.testing.assert_array_equal(data.meta, data.transform.transform(data.df))


# ---------------------------------------------------------------------------------------------
# Numeric columns: non-numbers and far-out values become missing, with a warning or an error
# ---------------------------------------------------------------------------------------------
def ages(n: int = 40, **bad) -> pd.DataFrame:
    """``n`` plausible ages (20..80) with ids ISIC_0..; ``bad`` puts values at given rows, e.g. r3='45y'."""
    age = np.random.default_rng(0).integers(20, 81, n).astype(object)
    for row, value in bad.items():
        age[int(row[1:])] = value
    return pd.DataFrame({"image_name": [f"ISIC_{i}" for i in range(n)], "age": age})


def fit_age(df: pd.DataFrame) -> MetaTransform:
    return MetaTransform([], ["age"], n_images=False, group_col="").fit(df)


def check(t: MetaTransform, df: pd.DataFrame, capsys, max_bad_fraction: float = 0.05) -> str:
    check_numeric(t, df, "input/train.csv", "image_name", max_bad_fraction)
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_non_number_is_warned_about_and_missing(capsys):
    df = ages(r3="45y", r7=" ", r8=np.nan)  # blank and NaN are missing, not bad
    t = fit_age(df)
    assert check(t, df, capsys) == ("warning: input/train.csv: column 'age': 1 non-number(s) ('45y' at ISIC_3) "
                                    "are treated as missing\n")
    x = t.transform(df)
    assert x[[3, 7, 8], 1].tolist() == [1, 1, 1] and x[[3, 7, 8], 0].tolist() == [0, 0, 0]
    assert x[:, 1].sum() == 3


def test_far_value_is_missing_and_does_not_move_the_standardisation(capsys):
    clean = ages()
    df = ages(r5=1e9)
    t = fit_age(df)
    lo, hi = t.limits("age")
    assert 0 < hi < 1000 and -1000 < lo < 20
    err = check(t, df, capsys)
    assert err == (f"warning: input/train.csv: column 'age': 1 value(s) far outside its range [{lo:g}, {hi:g}] "
                   f"(1e+09 at ISIC_5) are treated as missing\n")
    x, ref = t.transform(df), fit_age(clean.drop(index=5)).transform(clean)
    assert x[5].tolist() == [0, 1]
    np.testing.assert_allclose(np.delete(x, 5, 0), np.delete(ref, 5, 0), rtol=1e-6)
    # a far value met at inference (the test table) is missing too, and warned about in its own file
    new = ages(5, r1=-1e6, r2="1e9", r3="inf")
    check_numeric(t, new, "input/test.csv", "image_name", 0.9)
    err = capsys.readouterr().err
    assert err.startswith("warning: input/test.csv: column 'age': 1 non-number(s) ('inf' at ISIC_3) and "
                          "2 value(s) far outside its range") and err.endswith(
                          "(-1e+06 at ISIC_1, 1e+09 at ISIC_2) are treated as missing\n")
    assert t.transform(new)[1:4, 1].tolist() == [1, 1, 1]


def test_at_most_three_examples_of_each_kind(capsys):
    df = ages(100, r1="a", r2="b", r3="c", r4="d", r9=1e9)
    err = check(fit_age(df), df, capsys)
    assert err.count("\n") == 1
    assert "4 non-number(s) ('a' at ISIC_1, 'b' at ISIC_2, 'c' at ISIC_3, ...) and 1 value(s) far" in err


def test_too_many_bad_values_are_an_error_naming_file_and_column(capsys):
    df = ages(r3="45y", r9="abc")
    assert "2 non-number(s)" in check(fit_age(df), df, capsys)  # 2 of 40 = 5 %: still a warning
    df = ages(r3="45y", r9="abc", r20=1e9)
    msg = ("input/train.csv: column 'age': 3 of 40 rows (7.5%) are non-numbers or far outside its range "
           "('45y' at ISIC_3, 'abc' at ISIC_9, 1e+09 at ISIC_20); fix the column or raise "
           "features.max_bad_fraction (now 0.05)")
    with pytest.raises(DataError) as e:
        check(fit_age(df), df, capsys)
    assert str(e.value) == msg
    assert check(fit_age(df), df, capsys, max_bad_fraction=0.1).startswith("warning: ")


def test_clean_data_no_warning_same_transform(capsys):
    t = make()
    assert check(t, FIT.assign(image_name=list("abcdef")), capsys) == ""
    ages_ = FIT["age"].dropna()
    mean, std = ages_.mean(), ages_.std()
    x = t.transform(FIT)
    np.testing.assert_allclose(x[:, t.names.index("age")], ((FIT["age"] - mean) / std).fillna(0), rtol=1e-6)
    np.testing.assert_array_equal(x[:, t.names.index("age_missing")], FIT["age"].isna())


def test_no_bounds_without_spread():
    for values in ([50, 50, 50, 50], [50], []):
        t = fit_age(pd.DataFrame({"image_name": [str(i) for i in range(len(values))], "age": values}, dtype=object))
        assert t.stats["age"][2:] == [None, None]
    # most values equal: the spread comes from the std when the IQR is 0
    t = fit_age(pd.DataFrame({"age": [50] * 10 + [60]}))
    lo, hi = t.limits("age")
    assert lo == pytest.approx(50 - 20 * np.std([50] * 10 + [60], ddof=1))


def test_bounds_round_trip_through_json():
    df = ages(r5=1e9)
    t = MetaTransform([], ["age", "flat"], n_images=False, group_col="").fit(df.assign(flat=7))
    text = json.dumps(t.to_dict(), allow_nan=False)  # strict JSON: no Infinity
    back = MetaTransform.from_dict(json.loads(text))
    assert back.stats == t.stats and back.limits("age") == t.limits("age")
    assert len(t.stats["age"]) == 4 and t.stats["flat"] == [7.0, 1.0, None, None]
    assert back.transform(df.assign(flat=7)).tobytes() == t.transform(df.assign(flat=7)).tobytes()
