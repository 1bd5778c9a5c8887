"""Comparing experiments (python -m pipeline cv oof/a oof/b ...): the grouped bootstrap, paired
differences, rank-normalised AUC, refusals of experiments on other data, and report.html.

The experiments are written by hand: 60 patients with 5 images each in 5 folds by patient, a
target that depends on a patient-level score, and predictions that are that score plus noise.
"""
from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_main
from sklearn.metrics import roc_auc_score

from pipeline.core.errors import PipelineError
from pipeline.experiment import oof
from pipeline.report import cv, seeds, stats


def dataset(seed: int = 0, patients: int = 60, per: int = 5, folds: int = 5) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows (id, patient, fold, target) and a latent score the targets depend on; a patient's
    images share most of their latent score, as a patient's skin and camera would."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(patients), per)
    fold = rng.permutation(np.arange(patients) % folds)[pid]
    latent = rng.normal(size=patients)[pid] + 0.4 * rng.normal(size=len(pid))
    target = (latent + 0.8 * rng.normal(size=len(pid)) > 0.9).astype(int)
    rows = pd.DataFrame({"image_name": [f"ISIC_{i:05d}" for i in range(len(pid))],
                         "patient_id": [f"IP_{p:03d}" for p in pid], "fold": fold, "target": target})
    return rows, latent


def prediction(latent: np.ndarray, noise: float, seed: int) -> np.ndarray:
    z = latent + noise * np.random.default_rng(seed).normal(size=len(latent))
    return 1 / (1 + np.exp(-(z - 1.5)))


def write_experiment(folder, rows: pd.DataFrame, pred, epochs: int | None = 4):
    folder.mkdir(parents=True)
    rows.assign(pred=pred).to_csv(folder / "oof.csv", index=False)
    for f in sorted(rows["fold"].unique()) if epochs else []:
        e = np.arange(1, epochs + 1)
        (folder / f"fold{f}").mkdir()
        pd.DataFrame({"epoch": e, "train_loss": 0.6 / e ** (epochs / 5) + 0.01 * f,
                      "val_auc": 0.7 + 0.01 * epochs * np.log(e) + 0.01 * f,
                      "lr": 1e-3 / e, "train_s": 30.0, "val_s": 6.0, "best": True}).to_csv(
            folder / f"fold{f}" / "log.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """oof/a (noisy), oof/b (clearly better), oof/same (a copy of a), on the same rows and folds."""
    root = tmp_path_factory.mktemp("oof")
    rows, latent = dataset()
    a = prediction(latent, 1.2, seed=1)
    return {"rows": rows, "latent": latent, "root": root,
            "a": write_experiment(root / "a", rows, a),
            "b": write_experiment(root / "b", rows, prediction(latent, 0.1, seed=2), epochs=6),
            "same": write_experiment(root / "same", rows, a, epochs=None)}


# ---------------------------------------------------------------- the grouped bootstrap

def test_a_replicate_holds_all_rows_of_each_drawn_patient_as_often_as_it_was_drawn():
    codes = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])  # patients with 3, 1, 2 and 4 rows
    draws = stats.draw_groups(4, 200, np.random.default_rng(0))
    weights = stats.row_weights(draws, codes)
    assert weights.shape == (200, 10)
    for drawn, w in zip(draws, weights):
        rows = np.repeat(np.arange(10), w)  # the replicate's rows, with multiplicity
        for g in range(4):
            times = int((drawn == g).sum())
            # every row of patient g, each exactly as often as g was drawn
            assert all((rows == r).sum() == times for r in np.flatnonzero(codes == g)), (drawn, w)
        assert len(rows) == sum(np.bincount(codes)[g] for g in drawn)
    assert len({tuple(w) for w in weights}) > 25  # the replicates differ (35 ways to draw 4 of 4)


def test_weighted_auc_is_the_auc_of_the_resampled_rows():
    rng = np.random.default_rng(3)
    pred = np.round(rng.random(50), 1)  # many ties
    target = (rng.random(50) < 0.4).astype(int)
    weights = stats.row_weights(stats.draw_groups(50, 30, rng), np.arange(50))
    for w, auc in zip(weights, stats.weighted_auc(pred, target, weights)):
        rows = np.repeat(np.arange(50), w)
        assert auc == pytest.approx(roc_auc_score(target[rows], pred[rows]), abs=1e-12)


def interval_width(target, pred, codes, seed=0, n_boot=1000) -> float:
    draws = stats.draw_groups(codes.max() + 1, n_boot, np.random.default_rng(seed))
    lo, hi = stats.percentile_interval(stats.bootstrap_auc(pred, target, codes, draws)[:, 0])
    return hi - lo


def test_grouped_interval_is_wider_than_a_row_bootstrap_when_a_patients_rows_are_alike():
    rng = np.random.default_rng(5)
    patient = np.repeat(np.arange(60), 5)
    # a patient's five images: the same target and nearly the same prediction
    sick = (rng.random(60) < 0.3).astype(int)
    target = sick[patient]
    pred = (sick + rng.normal(size=60) * 1.2)[patient] + 0.05 * rng.normal(size=300)
    grouped = interval_width(target, pred, patient)
    by_row = interval_width(target, pred, np.arange(300))
    assert grouped > 1.6 * by_row, (grouped, by_row)  # ~sqrt(5) for 5 identical rows per patient
    # rows put in groups at random are independent: about the same width as the row bootstrap
    shuffled = interval_width(target, pred, rng.permutation(patient))
    assert 0.75 < shuffled / by_row < 1.3, (shuffled, by_row)


def test_the_table_resamples_the_group_column_of_oof_csv(experiments, tmp_path):
    """The patient column is the one between the id and fold, whatever its name; without one the
    rows are resampled, which understates the uncertainty of these correlated images."""
    rows, pred = experiments["rows"], prediction(experiments["latent"], 1.2, seed=1)
    variants = {"patient_id": rows, "subject": rows.rename(columns={"patient_id": "subject"}),
                "none": rows.drop(columns="patient_id")}
    width = {}
    for name, r in variants.items():
        d = write_experiment(tmp_path / name, r, pred, epochs=None)
        frame = oof.aligned([oof.read_both_classes(d)], [d])
        t = cv.compare_table(frame, [name], [d], [pd.DataFrame()], [False], n_boot=1000, seed=0, baseline=None)
        width[name] = float(t["pooled_hi"].iloc[0] - t["pooled_lo"].iloc[0])
        assert t["groups"].iloc[0] == (300 if name == "none" else 60)
    assert width["subject"] == width["patient_id"]
    assert width["patient_id"] > 1.15 * width["none"], width


def test_the_interval_is_reproducible_with_the_seed(experiments):
    frame = oof.aligned([oof.read_both_classes(experiments["a"])], [experiments["a"]])
    args = dict(names=["a"], dirs=[experiments["a"]], logs=[pd.DataFrame()], has_logs=[False], n_boot=300,
                baseline=None)
    first, again = cv.compare_table(frame, seed=7, **args), cv.compare_table(frame, seed=7, **args)
    other = cv.compare_table(frame, seed=8, **args)
    assert first[["pooled_lo", "pooled_hi"]].equals(again[["pooled_lo", "pooled_hi"]])
    assert not first[["pooled_lo", "pooled_hi"]].equals(other[["pooled_lo", "pooled_hi"]])


# ---------------------------------------------------------------- paired differences

def test_paired_difference_to_itself_is_zero_and_a_better_experiment_is_above_zero(experiments):
    e = experiments
    dirs = [e["a"], e["same"], e["b"]]
    frame = oof.aligned([oof.read_both_classes(d) for d in dirs], dirs)
    table = cv.compare_table(frame, ["a", "same", "b"], dirs, [pd.DataFrame()] * 3, [False] * 3, n_boot=500,
                             seed=0, baseline=0).set_index("experiment")
    assert table.loc["same", ["diff", "diff_lo", "diff_hi"]].tolist() == [0.0, 0.0, 0.0]
    assert table.loc["same", "p_diff_le_0"] == 1.0
    b = table.loc["b"]
    assert b["diff"] > 0.1 and 0 < b["diff_lo"] < b["diff"] < b["diff_hi"], b
    assert b["p_diff_le_0"] < 0.01


def test_over_one_seed_is_the_tables_paired_difference_and_over_two_the_mean_of_theirs(experiments, tmp_path):
    e = experiments
    c = write_experiment(tmp_path / "c", e["rows"], prediction(e["latent"], 1.2, seed=5), epochs=None)
    d = write_experiment(tmp_path / "d", e["rows"], prediction(e["latent"], 0.6, seed=6), epochs=None)
    tables = []
    for base, arm in [(e["a"], e["b"]), (c, d)]:
        tables.append(cv.compare([base, arm], baseline=base.name, plot=False, n_boot=500, out=tmp_path / "cmp")
                      ["table"].set_index("experiment"))
        one = seeds.over_seeds([base], [arm], n_boot=500)
        row = tables[-1].loc[arm.name]
        assert [one.diff, one.lo, one.hi, one.share] == row[["diff", "diff_lo", "diff_hi", "p_diff_le_0"]].tolist()
        assert (one.arm, one.base, one.seeds) == (row["pooled_auc"], tables[-1].loc[base.name, "pooled_auc"], 1)
    two = seeds.over_seeds([e["a"], c], [e["b"], d], n_boot=500)
    diffs = [t["pooled_auc"].iloc[1] - t["pooled_auc"].iloc[0] for t in tables]
    assert two.seeds == 2 and two.diff == pytest.approx(np.mean(diffs)) and min(diffs) < two.diff < max(diffs)
    assert two.lo < two.diff < two.hi and two.share < 0.01
    with pytest.raises(PipelineError, match=r"^over seeds: 2 baseline run\(s\) and 1 arm run\(s\); give one"):
        seeds.over_seeds([e["a"], c], [d])


# ---------------------------------------------------------------- rank-normalised AUC

def test_rank_auc_equals_pooled_auc_on_one_scale_and_repairs_a_shifted_fold():
    rng = np.random.default_rng(2)
    fold = np.repeat(np.arange(4), 50)
    # every fold predicts the same 50 values (in its own order): one scale
    pred = np.concatenate([rng.permutation(np.linspace(0.01, 0.99, 50)) for _ in range(4)])
    target = (pred + 0.3 * rng.normal(size=200) > 0.6).astype(int)
    pooled = roc_auc_score(target, pred)
    assert roc_auc_score(target, stats.fold_ranks(pred, fold)) == pooled
    shifted = pred + 0.5 * (fold == 2)
    assert roc_auc_score(target, shifted) < pooled - 0.02  # the shifted fold's negatives outrank others' positives
    assert roc_auc_score(target, stats.fold_ranks(shifted, fold)) == pooled


def test_fold_ranks_span_zero_to_one_in_each_fold():
    ranks = stats.fold_ranks(np.array([5.0, 1.0, 3.0, 0.2, 0.1, 0.1]), np.array([0, 0, 0, 1, 1, 1]))
    assert ranks.tolist() == [1.0, 0.0, 0.5, 1.0, 0.25, 0.25]


# ---------------------------------------------------------------- refusals

def test_experiments_on_other_rows_are_refused_with_one_line_naming_both_folders(experiments, tmp_path):
    e = experiments
    fewer = write_experiment(tmp_path / "fewer", e["rows"].iloc[3:], prediction(e["latent"], 1.0, seed=4)[3:],
                             epochs=None)
    proc = run_main("-m", "pipeline", "cv", e["a"], fewer, "--no-plot", cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {e['a']} and {fewer} hold different rows (3 ids only in {e['a']}: "
                                  f"ISIC_00000, ISIC_00001, ISIC_00002 (3 in all))"), proc.stderr


def refusal(*dirs, baseline=None) -> str:
    """compare()'s one-line refusal; nothing is written before it."""
    with pytest.raises(PipelineError) as info:
        cv.compare(dirs, baseline=baseline, plot=False, n_boot=10)
    assert not any((d.parent / "compare").exists() for d in dirs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_experiments_on_other_folds_or_targets_are_refused(experiments, tmp_path):
    e = experiments
    rows, pred = e["rows"], prediction(e["latent"], 1.0, seed=4)
    refolded = write_experiment(tmp_path / "refolded", rows.assign(
        fold=np.where(rows.index < 2, (rows["fold"] + 1) % 5, rows["fold"])), pred, epochs=None)
    retarget = write_experiment(tmp_path / "retarget", rows.assign(
        target=np.where(rows.index == 7, 1 - rows["target"], rows["target"])), pred, epochs=None)
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = write_experiment(tmp_path / "shuffled", rows.iloc[order], pred[order], epochs=None)

    f0, f1 = rows["fold"].iloc[0], rows["fold"].iloc[1]
    assert refusal(e["a"], refolded).startswith(
        f"{e['a']} and {refolded} use different folds: ISIC_00000 ({f0} vs {(f0 + 1) % 5}), "
        f"ISIC_00001 ({f1} vs {(f1 + 1) % 5}) (2 in all)")
    t = rows["target"].iloc[7]
    assert refusal(e["a"], retarget).startswith(
        f"{e['a']} and {retarget} use different targets: ISIC_00007 ({t} vs {1 - t}) (1 in all)")
    # the same rows in another order are the same experiment data: lined up by id, not refused
    table = cv.compare([e["a"], shuffled], plot=False, n_boot=10, out=tmp_path / "cmp")["table"]
    assert table["pooled_auc"].iloc[1] == pytest.approx(roc_auc_score(rows["target"], pred))


def test_a_baseline_that_is_not_given_is_refused(experiments):
    assert refusal(experiments["a"], experiments["b"], baseline="nope").startswith(
        f"--baseline nope: is not one of {experiments['a']}, {experiments['b']}")


# ---------------------------------------------------------------- the command and its files

def test_comparison_prints_the_table_and_writes_a_self_contained_page(experiments, tmp_path):
    e = experiments
    out = tmp_path / "cmp"
    proc = run_main("-m", "pipeline", "cv", e["a"], e["b"], "--baseline", "a", "--bootstrap", "200", "--out", out,
                   cwd=ROOT)
    table = pd.read_csv(out / "compare.csv").set_index("experiment")
    b_auc = f"{table.loc['b', 'pooled_auc']:.4f}"
    assert "pooled AUC" in proc.stdout and b_auc in proc.stdout
    assert table.loc["a", "epochs"] == 20 and table.loc["b", "epochs"] == 30  # 5 folds x 4 and 6 epochs
    assert table.loc["a", "train_min"] == pytest.approx(20 * 36 / 60)

    page = (out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    for data in images:
        assert base64.b64decode(data, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    tables = re.findall(r"<table.*?</table>", page, flags=re.S)
    comparison = next(t for t in tables if b_auc in t)
    assert ">a<" in comparison and ">b<" in comparison and f"{table.loc['a', 'pooled_auc']:.4f}" in comparison
    assert not re.search(r"https?://|<script|<link|@import", page, flags=re.I)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["compare.csv", "folds.csv", "correlation.csv", "subgroups.csv", "report.html", "roc.png", "fold_auc.png",
         "learning_curves.png", "calibration.png", "pred_by_class.png"])


def test_one_experiment_works_as_before(experiments, tmp_path):
    exp = experiments["a"]
    proc = run_main("-m", "pipeline", "cv", exp, "--no-plot", "--bootstrap", "100", "--out", tmp_path / "o", cwd=ROOT)
    assert "pooled OOF AUC 0." in proc.stdout and "(300 rows, " in proc.stdout
    assert re.search(r"pooled OOF AUC 95% interval 0\.\d{4} to 0\.\d{4} .*60 'patient_id' groups", proc.stdout)
    assert (tmp_path / "o" / "compare.csv").is_file() and not (exp / "roc.png").exists()


def test_train_py_summary_is_the_first_part_of_the_one_report(experiments, capsys, tmp_path):
    """train.py ends with cv.report: the same printer as `python -m pipeline cv <one folder>`, without
    the bootstrap's lines and without files."""
    exp = experiments["a"]
    figures = cv.report(exp, plot=False)
    summary = capsys.readouterr().out
    cv.compare([exp], plot=False, n_boot=50, out=tmp_path / "o")
    full = capsys.readouterr().out
    assert full.startswith(summary) and "95% interval" not in summary and "95% interval" in full
    assert summary.startswith(f"CV of {exp}\n") and f"over {len(figures['fold_auc'])} fold(s)" in summary
    assert f"pooled OOF AUC {figures['pooled_auc']:.4f} (300 rows, " in summary and figures["rows"] == 300
    assert not (exp / "roc.png").exists()
