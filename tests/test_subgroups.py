"""AUC per subgroup (pipeline/report/subgroups.py) in ``python -m pipeline cv``: rows, positives and AUC
of each subgroup against sklearn on the same rows, the subgroups too small to score, the mark of a
subgroup whose interval excludes the pooled AUC, the bands, ``--by``, subgroups.csv and report.html.

The experiment is written by hand: 90 patients with 1, 3 or 6 images in 3 folds by patient, a
config.yaml and data.csv as train.py writes them, and predictions that rank the women's images well
and the men's at random, so that the men are clearly worse than the pooled AUC.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_cli, run_main
from sklearn.metrics import roc_auc_score

from pipeline.core.config import load_config, to_yaml
from pipeline.report import cv, subgroups

AGES = [29, 30, 44, 44.5, 45, 59, 60, 74, 75, 90, np.nan]
SITES = ["torso", "lower extremity", "head/neck"]


def dataset(seed: int = 0) -> pd.DataFrame:
    """One row per image: ids, patient, fold, target, pred and the meta columns."""
    rng = np.random.default_rng(seed)
    patients = np.arange(90)
    pid = np.repeat(patients, np.tile([1, 3, 6], 30))
    sex = np.where(patients % 2 == 0, "female", "male").astype(object)
    sex[::15] = None  # missing for 6 patients
    n = len(pid)
    rows = pd.DataFrame({"image_name": [f"ISIC_{i:05d}" for i in range(n)], "patient_id": [f"IP_{p:03d}" for p in pid],
                         "fold": (patients % 3)[pid], "target": (rng.random(n) < 0.3).astype(int),
                         "sex": sex[pid], "age_approx": np.array(AGES)[patients % len(AGES)][pid],
                         "anatom_site_general_challenge": rng.choice(SITES, size=n),
                         "colour": rng.choice(["red", "blue"], size=n), "size_mm": rng.uniform(1, 20, size=n).round(2),
                         "lesion": [f"L{i}" for i in range(n)]})
    rows.loc[:2, ["anatom_site_general_challenge", "target"]] = [["palms/soles", 1], ["palms/soles", 0],
                                                                 ["palms/soles", 0]]
    male = (rows["sex"] == "male").to_numpy()
    rows["pred"] = np.where(male, rng.random(n), rows["target"] + 0.4 * rng.normal(size=n))
    return rows


def write_experiment(folder, rows: pd.DataFrame, data_root=None, record: bool = True, **overrides):
    """oof.csv, and (``record``) config.yaml and data.csv as train.py writes them; the training table
    (with the columns data.csv leaves out) in ``data_root`` when given."""
    folder.mkdir(parents=True)
    rows[["image_name", "patient_id", "fold", "target", "pred"]].to_csv(folder / "oof.csv", index=False)
    if record:
        cfg = load_config(None, [f"{k}={v}" for k, v in {"data.root": data_root or folder / "nodata",
                                                         **overrides}.items()])
        (folder / "config.yaml").write_text(to_yaml(cfg))
        columns = ["image_name", "fold", "target", "patient_id", "sex", "anatom_site_general_challenge", "age_approx"]
        columns += [cfg.data.diagnosis_col] if cfg.data.diagnosis_col else []
        rows[columns].assign(image_sha="0" * 16).to_csv(folder / "data.csv", index=False)
    if data_root:
        data_root.mkdir(parents=True, exist_ok=True)
        rows.drop(columns=["fold", "pred"]).to_csv(data_root / "train.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The hand-made experiment oof/a and its report (50 bootstrap replicates), --by colour."""
    root = tmp_path_factory.mktemp("subgroups")
    rows = dataset()
    exp = write_experiment(root / "oof" / "a", rows, data_root=root / "data")
    result = cv.compare([exp], plot=True, n_boot=50, out=root / "report", by=["colour"])
    return {"rows": rows, "exp": exp, "out": root / "report", "table": result["subgroups"]}


def row(table: pd.DataFrame, by: str, group: str) -> pd.Series:
    hit = table[(table["by"] == by) & (table["group"] == group)]
    assert len(hit) == 1, (by, group, table[["by", "group"]].to_string())
    return hit.iloc[0]


def test_rows_positives_and_auc_of_each_subgroup_are_those_of_its_rows(made):
    rows, table = made["rows"], made["table"]
    sex = rows["sex"].fillna("(missing)")
    cases = {("sex", "female"): sex == "female", ("sex", "male"): sex == "male",
             ("anatom_site_general_challenge", "torso"): rows["anatom_site_general_challenge"] == "torso",
             ("fold", "2"): rows["fold"] == 2, ("colour", "blue"): rows["colour"] == "blue",
             ("all", "all rows"): rows["fold"] >= 0}
    for (by, group), mask in cases.items():
        r = row(table, by, group)
        assert (r["rows"], r["positives"]) == (mask.sum(), rows["target"][mask].sum()), (by, group)
        assert r["auc"] == pytest.approx(roc_auc_score(rows["target"][mask], rows["pred"][mask]), abs=1e-12)
        assert r["auc_lo"] < r["auc"] < r["auc_hi"], r
    assert list(table[table["by"] == "sex"]["group"]) == ["female", "male", "(missing)"]
    assert row(table, "sex", "(missing)")["rows"] == 6  # 6 patients with one image each
    assert list(table[table["by"] == "fold"]["group"]) == ["0", "1", "2"]


def test_images_per_patient_are_the_patients_rows_in_oof_csv_in_bands(made):
    table = made["table"]
    per = table[table["by"] == "images per patient_id"].set_index("group")["rows"]
    assert per.to_dict() == {"1": 30, "2-4": 90, "5-9": 180}  # 30 patients each with 1, 3 and 6 images


def test_a_subgroup_too_small_is_said_and_not_scored(made):
    r = row(made["table"], "anatom_site_general_challenge", "palms/soles")
    assert (r["rows"], r["positives"], r["note"]) == (3, 1, "too few: 1 positive, 2 negatives")
    assert np.isnan(r["auc"]) and np.isnan(r["auc_lo"]) and r["vs_pooled"] == ""
    assert subgroups.too_few(3, 40) == "too few: 3 positives" and subgroups.too_few(9, 0) == "too few: 0 negatives"
    assert subgroups.too_few(5, 5) == ""


def test_a_subgroup_clearly_worse_than_the_pooled_auc_is_marked(made):
    table = made["table"]
    male, female = row(table, "sex", "male"), row(table, "sex", "female")
    pooled = row(table, "all", "all rows")["auc"]
    assert male["auc_hi"] < pooled and male["vs_pooled"] == "below pooled", male
    assert female["auc_lo"] > pooled and female["vs_pooled"] == "above pooled", female
    inside = table[(table["auc_lo"] <= table["pooled_auc"]) & (table["auc_hi"] >= table["pooled_auc"])]
    assert len(inside) > 3 and (inside["vs_pooled"] == "").all()
    assert subgroups.mark(0.70, 0.80, pooled=0.85) == "below pooled" and subgroups.mark(0.7, 0.9, 0.85) == ""


def test_age_bands_and_their_edges():
    ages = pd.Series([0, 29, 29.9, 30, 44, 44.5, 45, 59, 60, 74.9, 75, 101, np.nan], dtype="string")
    labels, order = subgroups.subgroups_of("age_approx", ages, numeric=True)
    assert list(labels) == ["<30", "<30", "<30", "30-44", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74",
                            "75+", "75+", "(missing)"]
    assert order == ["<30", "30-44", "45-59", "60-74", "75+", "(missing)"]
    images = pd.Series([1, 2, 4, 5, 9, 10, 19, 20, 49, 50, 300])
    assert list(subgroups.in_bands(images, subgroups.IMAGE_BANDS)) == [
        "1", "2-4", "2-4", "5-9", "5-9", "10-19", "10-19", "20-49", "20-49", "50+", "50+"]
    assert subgroups.is_age("age_approx") and subgroups.is_age("patient_age") and not subgroups.is_age("image_size")


def test_the_features_come_from_the_experiments_config(made, tmp_path):
    """The families are the config's features (not fixed names), the diagnosis when it has one."""
    rows = dataset().assign(diagnosis=lambda r: np.where(r["target"] == 1, "melanoma", "nevus"))
    exp = write_experiment(tmp_path / "oof" / "d", rows, **{"features.categorical": "[sex]",
                                                           "features.numeric": "[]", "data.diagnosis_col": "diagnosis"})
    table = cv.compare([exp], plot=False, n_boot=10, out=tmp_path / "r")["subgroups"]
    assert list(dict.fromkeys(table["by"])) == ["all", "sex", "diagnosis", "diagnosis vs", "images per patient_id",
                                                "fold"]
    assert row(table, "diagnosis", "melanoma")["note"] == "too few: 0 negatives"
    families = list(dict.fromkeys(made["table"]["by"]))
    assert families == ["all", "sex", "anatom_site_general_challenge", "age_approx", "images per patient_id", "fold",
                        "colour"]


def test_where_the_diagnosis_decides_the_target_each_class_is_scored_against_the_positives(tmp_path):
    """ISIC 2017's case: melanoma is target 1, nevus and seborrheic keratosis target 0, so no class
    alone can be scored; 'diagnosis vs' scores every positive with one class's negatives."""
    rows = dataset(1)
    rng = np.random.default_rng(1)
    rows["diagnosis"] = np.where(rows["target"] == 1, "melanoma", rng.choice(["nevus", "keratosis"], len(rows)))
    keratosis = (rows["diagnosis"] == "keratosis").to_numpy()
    rows["pred"] = np.where(keratosis, rng.random(len(rows)), rows["target"] + 0.3 * rng.normal(size=len(rows)))
    exp = write_experiment(tmp_path / "oof" / "d", rows, **{"data.diagnosis_col": "diagnosis"})
    table = cv.compare([exp], plot=False, n_boot=50, out=tmp_path / "r")["subgroups"]
    assert row(table, "diagnosis", "nevus")["note"] == "too few: 0 positives"
    for cls in ("nevus", "keratosis"):
        got = row(table, "diagnosis vs", f"positives vs {cls}")
        part = rows[(rows["target"] == 1) | (rows["diagnosis"] == cls)]
        assert (got["rows"], got["positives"]) == (len(part), int(part["target"].sum()))
        assert got["auc"] == pytest.approx(roc_auc_score(part["target"], part["pred"]))
    assert row(table, "diagnosis vs", "positives vs keratosis")["vs_pooled"] == "below pooled"
    assert row(table, "diagnosis vs", "positives vs nevus")["vs_pooled"] == "above pooled"
    assert not (table["group"] == "positives vs melanoma").any()  # no negatives of its own


def test_without_a_group_column_the_rows_are_resampled_and_there_are_no_images_per_patient(tmp_path, capsys):
    rows = dataset()
    exp = tmp_path / "oof" / "rows"  # named as a column of the table: a column of its own all the same
    exp.mkdir(parents=True)
    rows[["image_name", "fold", "target", "pred"]].to_csv(exp / "oof.csv", index=False)
    table = cv.compare([exp], plot=False, n_boot=10, out=tmp_path / "r")["subgroups"]
    assert "AUC per subgroup (95% interval: bootstrap of the rows (no group column) within" in capsys.readouterr().out
    assert list(dict.fromkeys(table["by"])) == ["all", "fold"]
    assert list(subgroups.display(table).columns) == ["by", "group", "rows", "positives", "rows"]


def test_by_columns_from_the_training_table_banded_or_left_out(made, tmp_path):
    """--by: a column of the training table (not in data.csv), numbers with many values in quartile
    bands, a column of more than 30 values left out in one line, an unknown one in one line naming
    the columns there are; the rest of the report is made."""
    out = tmp_path / "r"
    proc = run_main("-m", "pipeline", "cv", made["exp"], "--by", "size_mm", "--by", "lesion", "--by", "nope",
                    "--bootstrap", "20", "--out", out, cwd=ROOT)
    warnings = [x for x in proc.stderr.splitlines() if x.startswith(("warning: subgroups: ", "warning: --by "))]
    assert len(warnings) == 2 and "warning: subgroups: 'lesion' has 300 values, over 30: left out" in warnings
    nope = next(x for x in warnings if "nope" in x)
    assert re.fullmatch(r"warning: --by nope: no such column in .*data\.csv or .*train\.csv or .*oof\.csv \(columns "
                        r"there: fold, target, patient_id, sex, .*colour, size_mm, lesion.*\)", nope), nope
    table = pd.read_csv(out / "subgroups.csv", keep_default_na=False)
    sizes = table[table["by"] == "size_mm"]
    assert len(sizes) == 4 and sizes["rows"].between(74, 76).all(), sizes
    assert sizes["group"].iloc[0].startswith(f"{made['rows']['size_mm'].min():g} to ")
    assert {"lesion", "nope"}.isdisjoint(table["by"]) and {"sex", "fold"} <= set(table["by"])
    page = (out / "report.html").read_text()
    assert 'id="subgroups"' in page and "<p class=\"note\">warning: --by nope: no such column" in page
    assert (out / "compare.csv").is_file() and (out / "roc.png").is_file() and "<h2>Fold AUC</h2>" in page


def test_subgroups_csv_beside_the_report_is_the_table_and_the_page_shows_it(made):
    out, table = made["out"], made["table"]
    assert (out / "subgroups.csv").read_text() == table.to_csv(index=False)
    assert list(table.columns) == subgroups.COLUMNS
    page = (out / "report.html").read_text()
    html_table = re.search(r'<table[^>]*id="subgroups".*?</table>', page, flags=re.S).group(0)
    body = html_table.split("<tbody>")[1]
    assert body.count("<tr") == len(table.drop_duplicates(["by", "group"]))
    male = row(table, "sex", "male")
    assert f"{male['auc']:.4f} ({male['auc_lo']:.3f} to {male['auc_hi']:.3f}) below pooled" in html_table
    assert "too few: 1 positive, 2 negatives" in html_table


def test_a_comparison_scores_every_experiment_on_the_first_experiments_columns(tmp_path):
    """The columns come from the first experiment with a config.yaml and data.csv (here the second
    given), and each experiment gets its own AUC, interval and mark per subgroup."""
    rows = dataset()
    plain = write_experiment(tmp_path / "oof" / "plain", rows.assign(pred=rows["target"] + rows.index % 7),
                             record=False)
    exp = write_experiment(tmp_path / "oof" / "a", rows)
    proc = run_cli("-m", "pipeline", "cv", plain, exp, "--by", "sex", "--bootstrap", "20", "--no-plot", "--out",
                   tmp_path / "r", cwd=ROOT)
    assert "AUC per subgroup" in proc.stdout and "below pooled" in proc.stdout and "warning" not in proc.stderr
    table = pd.read_csv(tmp_path / "r" / "subgroups.csv")
    assert list(dict.fromkeys(table["experiment"])) == ["plain", "a"]
    female = table[(table["by"] == "sex") & (table["group"] == "female")].set_index("experiment")
    mask = (rows["sex"] == "female").to_numpy()
    assert female.loc["a", "auc"] == pytest.approx(roc_auc_score(rows["target"][mask], rows["pred"][mask]))
    plain_pred = (rows["target"] + rows.index % 7)[mask]
    assert female.loc["plain", "auc"] == pytest.approx(roc_auc_score(rows["target"][mask], plain_pred))
    assert (table["by"] == "sex").sum() == 6  # 3 groups x 2 experiments: --by sex is the feature's family
