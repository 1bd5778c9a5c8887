"""benchmarks/saved_runs.py: a run saved without labels comes back as the same OOF folder."""
from __future__ import annotations

import sys

import pandas as pd
from conftest import ROOT

from pipeline.experiment import oof

sys.path.insert(0, str(ROOT / "benchmarks"))
import saved_runs  # noqa: E402


def test_a_saved_run_holds_no_labels_and_is_rebuilt_with_them(tmp_path, monkeypatch):
    ids = [f"ISIC_{i:07d}" for i in range(6)]
    labels = pd.DataFrame({"image_id": ids[::-1], "melanoma": [1, 0, 0, 1, 0, 0][::-1]})  # another order
    labels.to_csv(tmp_path / "metadata.csv", index=False)
    monkeypatch.setattr(saved_runs, "METADATA", tmp_path / "metadata.csv")
    run = tmp_path / "oof" / "run_s7"
    run.mkdir(parents=True)
    written = oof.table(oof.Layout("image_id"), pd.Series(ids), None, [0, 0, 1, 1, 2, 2], [1, 0, 0, 1, 0, 0],
                        [0.9, 0.123456789, 0.2, 0.7, 0.1, 0.3])
    oof.write(run / "oof.csv", written)
    pd.DataFrame({"image_id": ids[:2], "melanoma": [0.5, 0.25]}).to_csv(run / "submission.csv", index=False)
    saved_runs.save(run, tmp_path / "saved")
    assert list(pd.read_csv(tmp_path / "saved" / "run_s7.csv").columns) == ["image_id", "fold", "pred"]
    back = saved_runs.restore("run_s7", tmp_path / "saved", tmp_path / "rebuilt")
    assert back == tmp_path / "rebuilt" / "run_s7"
    again = oof.read(back / "oof.csv")
    kept = ["image_id", "fold", "target"]
    pd.testing.assert_frame_equal(again[kept], oof.read(run / "oof.csv")[kept])
    assert (again["pred"] - written["pred"]).abs().max() < 1e-8  # 8 significant digits
    assert (back / "submission.csv").read_text() == (run / "submission.csv").read_text()
    assert saved_runs.restore("never_run", tmp_path / "saved", tmp_path / "rebuilt") is None
