"""Meta features: fitted on the fit frame only, JSON round trip, missing levels and flags, group sizes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.features import MISSING, MetaTransform

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
    assert t.stats["age"] == pytest.approx([ages.mean(), ages.std()])
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
    mean, std = t.stats["age"]
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
    from pipeline.trainer import prepare
    cfg = tiny_cfg(**{"folds.path": str(tmp_path / "folds.csv")})
    data = prepare(cfg)
    train = pd.read_csv(f"{cfg.data.root}/train.csv")
    test = pd.read_csv(f"{cfg.data.root}/test.csv")
    age = train["age_approx"].dropna()
    assert data.transform.stats["age_approx"] == pytest.approx([age.mean(), age.std()])
    both = pd.concat([train, test])["age_approx"].dropna()
    assert abs(both.mean() - age.mean()) > 1e-6  # the check above can tell the two apart
    np.testing.assert_array_equal(data.meta, data.transform.transform(data.df))
