"""pipeline.report.blend: honest CV for fitted weights, the numbers of mean and rank blends, the submission
made like the OOF, and refusals (different rows, foreign folders, bad names). Member experiments are
made by hand: no training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, one_error_line, run_main

import pipeline.report.blend as B
from pipeline.cli import blend_main
from pipeline.core.errors import DataError
from pipeline.experiment.oof import read as read_oof
from pipeline.report.stats import auc, fold_ranks

N_ROWS, N_PATIENTS, N_FOLDS, N_TEST = 400, 80, 5, 60


def write_member(folder: Path, oof: pd.DataFrame, sub: pd.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True)
    oof.to_csv(folder / "oof.csv", index=False)
    if sub is not None:
        sub.to_csv(folder / "submission.csv", index=False)
    return folder


def world(seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Rows (id with leading zeros, patient, fold by patient, target) and test ids in a shuffled order."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, N_PATIENTS, N_ROWS)
    fold_of_patient = rng.permutation(np.arange(N_PATIENTS) % N_FOLDS)
    target = (rng.random(N_ROWS) < 0.15 + 0.3 * (patient % 3 == 0)).astype(int)
    rows = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(N_ROWS)],
                         "patient_id": [f"IP_{p:04d}" for p in patient],
                         "fold": fold_of_patient[patient], "target": target})
    return rows, [f"{i:05d}" for i in rng.permutation(N_TEST)]


def make_members(root: Path, seed: int = 0, noise=(1.0, 1.5, 3.0), submissions: bool = True) -> list[Path]:
    """One member per noise level; the last one predicts fold 2 on a shifted scale, as a fold trained
    differently would."""
    rows, test_ids = world(seed)
    rng = np.random.default_rng(seed + 1)
    members = []
    for j, sd in enumerate(noise):
        pred = 1 / (1 + np.exp(-(2.0 * rows["target"] - 1 + rng.normal(0, sd, N_ROWS))))
        if j == len(noise) - 1:
            pred = np.where(rows["fold"] == 2, 0.05 * pred, pred)
        sub = pd.DataFrame({"image_name": test_ids, "target": rng.random(N_TEST)}) if submissions else None
        members.append(write_member(root / f"m{j}", rows.assign(pred=pred), sub))
    return members


# -- fit: the reported CV is out of fold -------------------------------------------------------------

def test_fit_scores_each_fold_with_weights_fitted_without_that_fold(tmp_path, monkeypatch):
    members = make_members(tmp_path / "oof")
    rows, _ = world()
    fold_of = dict(zip(rows["image_name"], rows["fold"]))
    calls = []  # (ids the fit saw, weights it returned)
    rng = np.random.default_rng(7)

    def spy(ranks, target):
        assert list(ranks.index) == list(target.index)
        w = rng.dirichlet(np.ones(ranks.shape[1]))  # distinct per call: shows which call scored what
        calls.append((set(ranks.index), w))
        return w

    monkeypatch.setattr(B, "fit_weights", spy)
    info = B.blend(members, "fitted", "fit")

    all_ids = set(rows["image_name"])
    final = [w for ids, w in calls if ids == all_ids]
    assert len(final) == 1 and len(calls) == N_FOLDS + 1
    out = read_oof(tmp_path / "oof" / "fitted" / "oof.csv").set_index("image_name")
    preds = pd.DataFrame({str(m): read_oof(m / "oof.csv")["pred"].to_numpy() for m in members},
                         index=rows["image_name"])
    ranks = B.fold_ranks_of(preds, rows.set_index("image_name")["fold"])
    for k in range(N_FOLDS):
        fold_ids = {i for i, f in fold_of.items() if f == k}
        used = [w for ids, w in calls if ids == all_ids - fold_ids]
        assert len(used) == 1, f"no fit saw exactly the rows outside fold {k}"
        in_k = sorted(fold_ids)
        np.testing.assert_allclose(out.loc[in_k, "pred"], ranks.loc[in_k].to_numpy() @ used[0])
        np.testing.assert_allclose(info["fold_weights"][str(k)], used[0])
    np.testing.assert_allclose(info["weights"], final[0])
    sub = pd.read_csv(tmp_path / "oof" / "fitted" / "submission.csv", dtype={"image_name": "string"})
    test = np.column_stack([fold_ranks(pd.read_csv(m / "submission.csv")["target"]) for m in members])
    np.testing.assert_allclose(sub["target"], test @ final[0])


def test_fit_of_pure_noise_reports_chance_while_in_fold_fitting_is_optimistic():
    reported, in_fold = [], []
    n = 200
    for seed in range(16):
        rng = np.random.default_rng(seed)
        fold = pd.Series(rng.integers(0, n // 5, n) % N_FOLDS)
        target = pd.Series((rng.random(n) < 0.3).astype(int))
        preds = pd.DataFrame(rng.random((n, 3)), columns=["a", "b", "c"])
        pred, _, _ = B.blend_oof(preds, fold, target, "fit")
        reported.append(auc(target.to_numpy(), pred.to_numpy()))
        ranks = B.fold_ranks_of(preds, fold)
        cheat = pd.Series(0.0, index=ranks.index)
        for k in range(N_FOLDS):  # weights fitted on the very rows they score
            rows = (fold == k).to_numpy()
            cheat[rows] = ranks[rows].to_numpy() @ B.fit_weights(ranks[rows], target[rows])
        in_fold.append(auc(target.to_numpy(), cheat.to_numpy()))
    assert np.mean(in_fold) > 0.56, in_fold
    assert abs(np.mean(reported) - 0.5) < 0.03, reported
    assert np.mean(in_fold) - np.mean(reported) > 0.04


def test_fit_weights_favour_the_informative_member_on_the_grid_and_with_nelder_mead():
    rng = np.random.default_rng(3)
    target = pd.Series((rng.random(300) < 0.4).astype(int))
    good = target + rng.normal(0, 0.7, 300)
    for n_noise in (2, 3):  # 3 members: grid; 4 members: Nelder-Mead
        ranks = pd.DataFrame({"good": fold_ranks(good), **{f"n{j}": rng.random(300) for j in range(n_noise)}})
        w = B.fit_weights(ranks, target)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
        assert w[0] > 0.5, w
        equal = np.full(len(w), 1 / len(w))
        assert auc(target.to_numpy(), ranks.to_numpy() @ w) > auc(target.to_numpy(), ranks.to_numpy() @ equal)
        np.testing.assert_array_equal(w, B.fit_weights(ranks, target))  # deterministic


# -- mean and rank on a hand-computed example ---------------------------------------------------------

TINY = pd.DataFrame({"image_name": ["001", "002", "003", "004", "005", "006"],
                     "patient_id": ["p1", "p1", "p2", "p3", "p3", "p4"],
                     "fold": [0, 0, 0, 1, 1, 1], "target": [0, 1, 1, 0, 0, 1]})
TINY_PRED = {"a": [0.1, 0.4, 0.3, 0.2, 0.6, 0.5], "b": [0.3, 0.2, 0.9, 0.15, 0.05, 0.25]}
TINY_TEST = {"a": [0.2, 0.8, 0.5, 0.1], "b": [0.6, 0.1, 0.4, 0.3]}
TEST_IDS = ["0042", "0007", "0100", "0001"]  # not sorted: the order must be kept


@pytest.mark.parametrize("method, oof_pred, sub_pred", [
    ("mean", [0.2, 0.3, 0.6, 0.175, 0.325, 0.375], [0.4, 0.45, 0.45, 0.2]),
    # ranks within each fold: a -> (0, 1, .5 | 0, 1, .5), b -> (.5, 0, 1 | .5, 0, 1); test ranks over all rows
    ("rank", [0.25, 0.5, 0.75, 0.25, 0.5, 0.75], [2 / 3, 0.5, 2 / 3, 1 / 6]),
])
def test_mean_and_rank_blends_match_hand_computed_numbers(tmp_path, method, oof_pred, sub_pred):
    members = [write_member(tmp_path / "oof" / m, TINY.assign(pred=p),
                            pd.DataFrame({"image_name": TEST_IDS, "target": TINY_TEST[m]}))
               for m, p in TINY_PRED.items()]
    info = B.blend(members, "tiny", method)
    out = tmp_path / "oof" / "tiny"
    oof = pd.read_csv(out / "oof.csv", dtype={"image_name": "string"})
    assert list(oof.columns) == ["image_name", "patient_id", "fold", "target", "pred"]
    assert list(oof["image_name"]) == list(TINY["image_name"])
    np.testing.assert_allclose(oof["pred"], oof_pred)
    sub = pd.read_csv(out / "submission.csv", dtype={"image_name": "string"})
    assert list(sub.columns) == ["image_name", "target"] and list(sub["image_name"]) == TEST_IDS
    np.testing.assert_allclose(sub["target"], sub_pred)
    saved = json.loads((out / "blend.json").read_text())
    assert saved == info and saved["method"] == method and saved["weights"] == [0.5, 0.5]
    assert saved["members"] == [str(m) for m in members]
    assert saved["resolved"] == [str(m.resolve()) for m in members]


# -- refusals through the command line ----------------------------------------------------------------


def _drop_rows(t):
    return t.iloc[5:]


def _move_fold(t):
    return t.assign(fold=np.where(t.index < 3, (t["fold"] + 1) % N_FOLDS, t["fold"]))


def _flip_target(t):
    return t.assign(target=np.where(t.index == 0, 1 - t["target"], t["target"]))


@pytest.mark.parametrize("change, words", [(_drop_rows, "hold different rows"),
                                           (_move_fold, "different folds"),
                                           (_flip_target, "different targets")])
def test_members_on_other_rows_folds_or_targets_are_refused(tmp_path, change, words):
    a, b = make_members(tmp_path / "oof", noise=(1.0, 2.0))
    changed = change(pd.read_csv(b / "oof.csv", dtype={"image_name": "string"}))
    changed.to_csv(b / "oof.csv", index=False)
    proc = run_main("-m", "pipeline", "blend", str(a), str(b), "--name", "ab", cwd=ROOT, check=False)
    line = one_error_line(proc, alone=True)
    assert words in line and str(a) in line and str(b) in line
    assert "ISIC_000000" in line  # the first rows are the changed ones
    assert not (tmp_path / "oof" / "ab").exists()


def test_submissions_with_other_ids_or_order_are_refused(tmp_path):
    a, b = make_members(tmp_path / "oof", noise=(1.0, 2.0))
    sub = pd.read_csv(b / "submission.csv", dtype={"image_name": "string"})
    sub.iloc[::-1].to_csv(b / "submission.csv", index=False)
    with pytest.raises(DataError, match="same ids in a different order"):
        B.blend([a, b], "ab", "rank")
    sub.iloc[1:].to_csv(b / "submission.csv", index=False)
    with pytest.raises(DataError, match=f"only in {a / 'submission.csv'}: {sub['image_name'][0]}"):
        B.blend([a, b], "ab", "rank")
    assert not (tmp_path / "oof" / "ab").exists()


@pytest.mark.parametrize("args, words", [
    (["--name", ""], "plain folder name"), (["--name", "x/y"], "plain folder name"),
    (["--name", ".."], "plain folder name"), (["--name", "."], "plain folder name"),
])
def test_bad_names_are_refused(tmp_path, capsys, args, words):
    members = make_members(tmp_path / "oof", noise=(1.0, 2.0))
    assert blend_main([*map(str, members), *args]) == 2
    assert words in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "oof").iterdir()) == ["m0", "m1"]


def test_fewer_than_two_members_are_refused(tmp_path, capsys):
    members = make_members(tmp_path / "oof", noise=(1.0,))
    assert blend_main([str(members[0]), "--name", "solo"]) == 2
    assert "at least two members" in capsys.readouterr().err
    assert not (tmp_path / "oof" / "solo").exists()


# -- the blend folder ---------------------------------------------------------------------------------

def test_blend_is_an_experiment_that_cv_reports(tmp_path, capsys):
    members = make_members(tmp_path / "oof")
    assert blend_main([*map(str, members), "--name", "blend", "--method", "fit"]) == 0
    printed = capsys.readouterr().out
    blend_line = next(line for line in printed.splitlines() if line.startswith(str(tmp_path / "oof" / "blend")))
    assert all(any(line.startswith(str(m)) for line in printed.splitlines()) for m in members)
    proc = run_main("-m", "pipeline", "cv", "oof/blend", "--no-plot", cwd=tmp_path)
    pooled = float(proc.stdout.split("pooled OOF AUC ")[1].split()[0])
    assert f"{pooled:.4f}" in blend_line
    # the fitted rank blend undoes member m2's shifted fold: better than any member
    member_aucs = [float(line.split()[2]) for line in printed.splitlines() if line.startswith(str(tmp_path / "oof" / "m"))]
    assert pooled > max(member_aucs)


def test_existing_folder_that_is_not_a_blend_is_refused(tmp_path, capsys):
    members = make_members(tmp_path / "oof", noise=(1.0, 2.0))
    exp = tmp_path / "oof" / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("name: exp\n")
    assert blend_main([*map(str, members), "--name", "exp"]) == 2
    err = capsys.readouterr().err
    assert "not a blend" in err and str(exp) in err and "config.yaml" in err
    assert [p.name for p in exp.iterdir()] == ["config.yaml"]
    assert blend_main([*map(str, members), "--name", "m1"]) == 2  # a member is never overwritten
    assert "one of the members" in capsys.readouterr().err


def test_missing_member_submission_writes_the_oof_only_and_replaces_an_older_blend(tmp_path, capsys):
    members = make_members(tmp_path / "oof", noise=(1.0, 2.0))
    out = tmp_path / "oof" / "ab"
    assert blend_main([*map(str, members), "--name", "ab", "--method", "mean"]) == 0
    assert (out / "submission.csv").is_file()
    (members[1] / "submission.csv").unlink()
    capsys.readouterr()
    assert blend_main([*map(str, members), "--name", "ab", "--method", "rank"]) == 0  # same name: replaced
    err = capsys.readouterr().err
    assert "no submission made" in err and str(members[1]) in err and "error" not in err
    assert not (out / "submission.csv").exists()  # the mean blend's submission is gone with it
    assert json.loads((out / "blend.json").read_text())["method"] == "rank"
    assert json.loads((out / "blend.json").read_text())["submission"] is None
    assert len(read_oof(out / "oof.csv")) == N_ROWS
