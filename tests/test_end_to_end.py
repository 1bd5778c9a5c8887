"""End to end through the real command lines on the tiny generated sample: train.py, infer.py and
``python -m pipeline cv`` each run as a user runs them, in a subprocess, at least once; the further
predictions of the same experiment (missing folds, bf16, the data moved) run the same scripts in
this process (conftest.run_main).

One experiment is trained once for the module (fold 0, then folds 1,2) and every assertion reads
its files; the partial state after fold 0 is checked on the way.
"""
from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_cli, run_main, tiny_overrides
from sklearn.metrics import roc_auc_score

TRAIN, INFER = str(ROOT / "train.py"), str(ROOT / "infer.py")
OOF_COLUMNS = ["image_name", "patient_id", "fold", "target", "pred"]


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_name": "string", "patient_id": "string"})


@pytest.fixture(scope="module")
def exp(tiny_data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        # one torch thread: on a shared 2-core machine two threads spin against other jobs (10x slower)
        mp.setenv("OMP_NUM_THREADS", "1")
        return train_and_predict(tiny_data, tmp_path_factory.mktemp("e2e"))


def train_and_predict(tiny_data, work):
    args = tiny_overrides(tiny_data, work, **{"train.epochs": 1, "folds.path": str(work / "folds.csv")})
    run = SimpleNamespace(work=work, data=tiny_data, dir=work / "oof" / "tiny")

    run_cli(TRAIN, "--folds", "0", *args, cwd=work)
    run.oof_fold0 = read(run.dir / "oof.csv")
    run.missing = run_main(INFER, *args, cwd=work, check=False)
    run_main(INFER, "--allow-missing-folds", *args, cwd=work)
    run.sub_fold0 = read(run.dir / "submission.csv")

    run_cli(TRAIN, "--folds", "1,2", *args, cwd=work)
    run_cli(INFER, *args, cwd=work)
    (run.dir / "roc.png").unlink(missing_ok=True)  # train.py drew one already: the report below must draw its own
    run.cv = run_cli("-m", "pipeline", "cv", str(run.dir), cwd=work)

    run.train = read(tiny_data / "train.csv")
    run.folds = read(work / "folds.csv")
    run.oof = read(run.dir / "oof.csv")
    run.sub = read(run.dir / "submission.csv")
    run.sample = read(tiny_data / "sample_submission.csv")

    run_main(INFER, *args, "infer.cpu_bf16=true", cwd=work)
    run.sub_bf16 = read(run.dir / "submission.csv")

    # Predict a copy of the data elsewhere (as on Kaggle): data.root at inference points there; its
    # sample_submission is reversed, so only a submission made from the copy follows its order.
    moved = work / "moved"
    shutil.copytree(tiny_data, moved)
    run.sample.iloc[::-1].to_csv(moved / "sample_submission.csv", index=False)
    run_main(INFER, *args, f"data.root={moved}", cwd=work)
    run.sub_moved = read(run.dir / "submission.csv")
    return run


def test_oof_covers_every_training_row_once_with_its_saved_fold(exp):
    oof = exp.oof
    assert list(oof.columns) == OOF_COLUMNS
    assert len(oof) == len(exp.train) and oof["image_name"].is_unique
    assert set(oof["image_name"]) == set(exp.train["image_name"])
    m = oof.merge(exp.folds, on="image_name", suffixes=("", "_saved")).merge(
        exp.train, on="image_name", suffixes=("", "_train"))
    assert len(m) == len(oof)
    assert (m["fold"] == m["fold_saved"]).all()
    assert (m["target"] == m["target_train"]).all() and (m["patient_id"] == m["patient_id_train"]).all()
    assert set(oof["fold"]) == {0, 1, 2}
    assert oof["pred"].notna().all() and oof["pred"].between(0, 1).all()
    assert oof["pred"].nunique() > 1  # a real model, not a constant


def test_subset_then_rest_of_the_folds(exp):
    first = exp.oof_fold0
    assert list(first.columns) == OOF_COLUMNS
    assert set(first["fold"]) == {0}
    assert set(first["image_name"]) == set(exp.folds.loc[exp.folds["fold"] == 0, "image_name"])
    # fold 0 was not retrained by the second command: its predictions are unchanged
    again = exp.oof[exp.oof["fold"] == 0].set_index("image_name")["pred"]
    assert np.array_equal(again.loc[first["image_name"]].to_numpy(), first["pred"].to_numpy())


def check_submission(sub: pd.DataFrame, sample: pd.DataFrame):
    assert list(sub.columns) == ["image_name", "target"]
    assert list(sub["image_name"]) == list(sample["image_name"])
    assert sub["target"].notna().all() and sub["target"].between(0, 1).all()


def test_submission_matches_sample_submission(exp):
    check_submission(exp.sub, exp.sample)
    assert exp.sub["target"].nunique() > 1
    # three folds averaged differ from fold 0 alone
    assert not np.allclose(exp.sub["target"], exp.sub_fold0["target"])


def test_infer_reads_the_test_set_where_data_overrides_point(exp):
    assert list(exp.sub_moved["image_name"]) == list(exp.sample["image_name"])[::-1]
    same = exp.sub.set_index("image_name")["target"]
    np.testing.assert_allclose(exp.sub_moved.set_index("image_name")["target"].loc[same.index], same, atol=1e-6)


def test_bf16_test_predictions_are_close_to_float32(exp):
    check_submission(exp.sub_bf16, exp.sample)
    diff = (exp.sub_bf16["target"] - exp.sub["target"]).abs()
    assert 0 < diff.max() < 0.02, diff.max()  # bf16 was used, and only rounding changed


def test_infer_with_a_missing_fold_fails_clearly_unless_allowed(exp):
    r = exp.missing
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "[1, 2]" in last and "--allow-missing-folds" in last, last
    check_submission(exp.sub_fold0, exp.sample)  # written by the --allow-missing-folds run


def test_cv_report_matches_the_oof_table(exp):
    out, oof = exp.cv.stdout, exp.oof
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d\.\d{4})\s*$", out, re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2], out
    for fold, n, pos, auc in rows:
        g = oof[oof["fold"] == int(fold)]
        assert (int(n), int(pos)) == (len(g), int(g["target"].sum()))
        assert abs(float(auc) - roc_auc_score(g["target"], g["pred"])) <= 5.1e-5
    pooled = re.search(r"pooled OOF AUC (\d\.\d{4})", out)
    assert pooled, out
    assert abs(float(pooled.group(1)) - roc_auc_score(oof["target"], oof["pred"])) <= 5.1e-5
    png = exp.dir / "roc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_override_exits_2_with_one_line(tmp_path):
    r = run_cli(TRAIN, "train.epoch=3", cwd=tmp_path, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "train.epoch" in lines[0], r.stderr
    assert not (tmp_path / "oof").exists()  # nothing was started
