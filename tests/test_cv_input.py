"""The CV report refuses a malformed oof.csv with one line naming the file, never a traceback."""
from __future__ import annotations

import pytest
from conftest import ROOT, run_main

HEADER = "image_name,patient_id,fold,target,pred\n"
GOOD = HEADER + "".join(f"ISIC_{i},IP_{i // 2},{i % 2},{int(i % 3 == 0)},{i / 10}\n" for i in range(8))


def lines(*rows: str, header: str = HEADER) -> str:
    return header + "".join(r + "\n" for r in rows)


OK = ["ISIC_0,IP_0,0,1,0.9", "ISIC_1,IP_0,1,0,0.2"]
BAD = {
    "missing": (None, "no OOF predictions yet (train some folds first)"),
    "empty": ("", "the file is empty"),
    "ragged": (lines(*OK, "ISIC_2,IP_1,0,1,0.5,7,8"), "not a readable CSV"),
    "binary": (b"\xff\xfe\x00\x81PK\x03\x04" * 50, "not a readable CSV"),
    "no pred": (lines("ISIC_0,IP_0,0,1", header="image_name,patient_id,fold,target\n"),
                "missing column(s) pred (has: image_name, patient_id, fold, target)"),
    "no rows": (HEADER, "no rows"),
    "target 2": (lines(*OK, "ISIC_2,IP_1,0,2,0.5", "ISIC_3,IP_1,1,,0.5"),
                 "column 'target' must be 0 or 1; found '2' at ISIC_2, blank at ISIC_3 (2 in all)"),
    "pred text": (lines(*OK, "ISIC_2,IP_1,0,1,high", "ISIC_3,IP_1,1,0,nan", "ISIC_4,IP_2,1,0,inf", "ISIC_5,,1,0,"),
                  "column 'pred' must be a finite number; found 'high' at ISIC_2, 'nan' at ISIC_3, "
                  "'inf' at ISIC_4, blank at ISIC_5 (4 in all)"),
    "fold 1.5": (lines(*OK, "ISIC_2,IP_1,1.5,1,0.5", "ISIC_3,IP_1,x,0,0.5"),
                 "column 'fold' must be a whole number; found '1.5' at ISIC_2, 'x' at ISIC_3 (2 in all)"),
    "duplicate": (lines(*OK, "ISIC_0,IP_0,1,0,0.5", "ISIC_1,IP_0,0,1,0.5"),
                  "duplicate ids in column 'image_name': ISIC_0, ISIC_1 (2 in all)"),
    "blank id": (lines(*OK, ",IP_1,1,0,0.5"), "column 'image_name' is blank at line 4 (1 in all)"),
    "no id column": (lines("0,1,0.9", "1,0,x", header="fold,target,pred\n"),
                     "column 'pred' must be a finite number; found 'x' at line 3 (1 in all)"),
    "one class": (lines("ISIC_0,IP_0,0,0,0.9", "ISIC_1,IP_0,1,0,0.2"),
                  "column 'target' is 0 in all 2 rows; AUC needs both classes"),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_oof_is_one_error_line_naming_the_file(tmp_path, case):
    content, expected = BAD[case]
    d = tmp_path / "exp"
    d.mkdir()
    path = d / "oof.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    proc = run_main("-m", "pipeline", "cv", str(d), cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr


def test_good_oof_is_reported(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    (d / "oof.csv").write_text(GOOD)
    proc = run_main("-m", "pipeline", "cv", str(d), cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "pooled OOF AUC" in proc.stdout and "(8 rows, 3 positives)" in proc.stdout
    assert (d / "roc.png").is_file()


def test_read_oof_returns_typed_columns(tmp_path):
    from pipeline.experiment.oof import read
    path = tmp_path / "oof.csv"
    path.write_text(GOOD.replace("ISIC_", "00"))
    oof = read(path)
    assert oof["image_name"].tolist()[:2] == ["000", "001"]  # ids stay text: leading zeros kept
    assert [str(oof[c].dtype) for c in ("fold", "target", "pred")] == ["int64", "int64", "float64"]
