"""pipeline/experiment/oof.py (the OOF table's one layout), pipeline/report/stats.py (the one AUC and its exact twin) and
tables.check_submission (the one submission check)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_main
from sklearn.metrics import roc_auc_score

from pipeline.core.errors import DataError
from pipeline.data.tables import check_submission
from pipeline.experiment import oof
from pipeline.report import stats

ROWS = ["ISIC_0,IP_0,0,1,0.9", "ISIC_1,IP_1,1,0,0.2", "ISIC_2,IP_2,0,0,0.4", "ISIC_3,IP_3,1,1,0.7"]


def write(tmp_path, header: str, rows=ROWS):
    path = tmp_path / "oof.csv"
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- the layout

@pytest.mark.parametrize("header, layout", [
    ("image_name,patient_id,fold,target,pred", oof.Layout("image_name", "patient_id")),
    ("image_name,subject,fold,target,pred", oof.Layout("image_name", "subject")),  # the header says, not the name
    ("patient_id,fold,target,pred", oof.Layout("patient_id", None)),  # an id called patient_id is no group
    ("fold,target,pred", oof.Layout(None, None)),
])
def test_the_header_says_which_column_is_the_id_and_which_the_group(tmp_path, header, layout):
    cells = len(header.split(","))
    table = oof.read(write(tmp_path, header, [",".join(r.split(",")[-cells:]) for r in ROWS]))
    assert table.attrs["layout"] == layout and oof.layout_of(table) == layout
    assert list(table.columns) == layout.columns == header.split(",")


@pytest.mark.parametrize("header", ["image_name,patient_id,site,fold,target,pred",  # a column more
                                    "image_name,patient_id,fold,target,pred,extra",
                                    "image_name,fold,patient_id,target,pred",  # another order
                                    "image_name,patient_id,target,fold,pred"])
def test_any_other_layout_is_one_error_line_naming_the_file(tmp_path, header):
    path = write(tmp_path, header, [r + ",x" if header.count(",") == 5 else r for r in ROWS])
    with pytest.raises(DataError) as info:
        oof.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: expected the columns {oof.EXPECTED} in this order")
    assert f"(has: {header.replace(',', ', ')})" in message and "\n" not in message


def test_an_extra_column_is_refused_by_the_report_too(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    write(d, "image_name,patient_id,fold,target,pred,site", [r + ",head" for r in ROWS])
    proc = run_main("-m", "pipeline", "cv", str(d), "--no-plot", cwd=ROOT, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {d / 'oof.csv'}: expected the columns ") and proc.stderr.count("\n") == 1


def test_table_builds_the_layouts_train_py_writes(tmp_path):
    ids = pd.Series(["007", "003", "001"], index=[10, 4, 7], dtype="string")  # the index is not the order
    fold, target, pred = np.array([0, 1, 0]), np.array([1, 0, 0]), np.array([0.5, 0.25, 0.125])
    grouped = oof.table(oof.Layout("image_name", "patient_id"), ids, ["p1", "p2", "p1"], fold, target, pred)
    assert list(grouped.columns) == ["image_name", "patient_id", "fold", "target", "pred"]
    assert grouped["image_name"].tolist() == ["007", "003", "001"] and list(grouped.index) == [0, 1, 2]
    plain = oof.table(oof.Layout("image_name"), ids, None, fold, target, pred)
    assert list(plain.columns) == ["image_name", "fold", "target", "pred"]
    with pytest.raises(ValueError):
        oof.table(oof.Layout("image_name"), ids, ["p1", "p2", "p1"], fold, target, pred)  # no group column
    with pytest.raises(ValueError):
        oof.Layout(None, "patient_id")

    path = oof.write(tmp_path / "oof.csv", grouped)
    assert path.read_text().splitlines()[:2] == ["image_name,patient_id,fold,target,pred", "007,p1,0,1,0.5"]
    back = oof.read(path)
    assert back.attrs["layout"] == oof.Layout("image_name", "patient_id")
    assert back["image_name"].tolist() == ["007", "003", "001"] and back["pred"].tolist() == pred.tolist()
    with pytest.raises(ValueError, match="not an OOF table"):
        oof.write(tmp_path / "bad.csv", grouped.assign(extra=1))


# ---------------------------------------------------------------- the AUC

def samples(n_cases: int = 300):
    rng = np.random.default_rng(11)
    for k in range(n_cases):
        n = int(rng.choice([5, 40, 300, 1000]))
        target = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
        if target.min() == target.max():
            continue
        pred = np.round(rng.random(n), k % 4 + 1)  # coarse predictions: many ties
        yield target, pred


def test_auc_is_sklearns_and_nan_for_one_class():
    for target, pred in samples():
        assert stats.auc(target, pred) == roc_auc_score(target, pred)
        assert stats.auc(pd.Series(target), pd.Series(pred)) == roc_auc_score(target, pred)
    assert np.isnan(stats.auc(np.zeros(5), np.arange(5.0))) and np.isnan(stats.auc(np.ones(3), np.arange(3.0)))


def test_the_exact_auc_is_the_share_of_pairs_in_order_and_sklearns_to_the_last_bits():
    for target, pred in samples():
        pos, neg = pred[target == 1], pred[target == 0]
        pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        exact = stats.weighted_auc(pred, target)
        assert exact.shape == (1,) and exact[0] == pairs / (len(pos) * len(neg))
        assert abs(exact[0] - roc_auc_score(target, pred)) <= 1e-15
    # two orderings with 9 of 21 pairs right: sklearn 1.9's sums of trapezoids differ in the last bit
    # (0.4285714285714286 and ...55), the exact AUCs are equal, as a blend's weight search needs to
    # break ties towards equal weights
    target = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    one, other = np.array([1, 7, 4, 3, 5, 0, 8, 6, 2, 9.0]), np.array([6, 4, 2, 9, 5, 1, 3, 8, 0, 7.0])
    assert stats.weighted_auc(one, target)[0] == stats.weighted_auc(other, target)[0] == 9 / 21
    assert np.isnan(stats.weighted_auc(np.arange(4.0), np.zeros(4)))[0]


def test_fold_aucs_and_the_paired_difference():
    rng = np.random.default_rng(4)
    fold = rng.integers(0, 4, 200)
    target = (rng.random(200) < 0.4).astype(int)
    pred = rng.random(200) + 0.3 * target
    assert stats.fold_aucs(target, pred, fold).tolist() == [roc_auc_score(target[fold == f], pred[fold == f])
                                                            for f in range(4)]
    boot = np.array([0.7, 0.8, np.nan, 0.9])
    diff, lo, hi, share = stats.paired_difference(boot, boot - np.array([0.1, -0.1, 0.0, 0.2]), 0.8, 0.75)
    assert diff == pytest.approx(0.05) and share == pytest.approx(1 / 3)
    assert lo == pytest.approx(np.percentile([0.1, -0.1, 0.2], 2.5)) and hi == pytest.approx(
        np.percentile([0.1, -0.1, 0.2], 97.5))
    assert np.isnan(stats.paired_difference(np.array([]), np.array([]), 0.8, 0.7)[3])


# ---------------------------------------------------------------- the submission check

def test_check_submission_of_a_file_names_it_and_of_our_own_output_is_a_bug(tmp_path):
    path = tmp_path / "submission.csv"
    text = pd.DataFrame({"image_name": ["001", "002", "003"], "target": ["0.5", "high", None]}, dtype="string")
    with pytest.raises(DataError) as info:
        check_submission(text, path=path, probabilities=False)
    assert str(info.value) == (f"{path}: column 'target' must be a finite number; found 'high' at 002, "
                               f"blank at 003 (2 in all)")
    with pytest.raises(DataError, match="blank or duplicate ids: 001"):
        check_submission(text.assign(image_name=["001", "001", "002"], target="0.1"), path=path)
    with pytest.raises(DataError, match=r"expected 2 columns, the id then the prediction \(has: image_name\)"):
        check_submission(text[["image_name"]], path=path)

    sub = pd.DataFrame({"image_name": ["b", "a"], "target": [0.25, 1.5]})
    with pytest.raises(ValueError, match=r"must be a probability in \[0, 1\]; found '1.5' at a") as bug:
        check_submission(sub, ["b", "a"], "image_name", "target")
    assert not isinstance(bug.value, DataError)  # not the user's to fix: shown with its traceback
    with pytest.raises(ValueError, match="differs from the expected ids .* first difference at row 1"):
        check_submission(sub.assign(target=0.5), ["a", "b"], "image_name", "target")
    checked = check_submission(sub.assign(target=["0.5", "1"]), ["b", "a"], "image_name", "target")
    assert checked["target"].tolist() == [0.5, 1.0] and checked["image_name"].tolist() == ["b", "a"]
