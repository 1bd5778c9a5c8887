"""benchmarks/saved_runs.py: a run saved without labels comes back as the same OOF folder; and
benchmarks/cpu_hour_seeds.py, which reads runs through it."""
from __future__ import annotations

import sys

import numpy as np
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


def test_cpu_hour_seeds_counts_a_stopped_run_as_not_run_and_averages_the_finished_ones(tmp_path, monkeypatch, capsys):
    """benchmarks/cpu_hour_seeds.py: a run without its submission.csv is 'not run' (and not saved);
    an arm with both seeds gets the over-seeds line of pipeline.report.seeds; minutes from wall.tsv."""
    import cpu_hour_seeds as table

    from pipeline.report.seeds import over_seeds
    rng = np.random.default_rng(0)
    ids, target = pd.Series([f"ISIC_{i:07d}" for i in range(60)]), rng.integers(0, 2, 60)
    for k, name in enumerate(["b42", "b7", "a42", "a7", "s42", "s7"]):
        run = tmp_path / "oof" / name
        run.mkdir(parents=True)
        oof.write(run / "oof.csv", oof.table(oof.Layout("image_id"), ids, None, np.arange(60) % 3, target,
                                             target * (k % 3) * 0.2 + rng.random(60)))
        if name != "s7":
            pd.DataFrame({"image_id": ids[:3], "melanoma": [0.1, 0.2, 0.3]}).to_csv(run / "submission.csv", index=False)
    (tmp_path / "oof" / "wall.tsv").write_text("b42\t600\nb42_infer\t30\n")
    monkeypatch.setattr(table, "OUT", tmp_path / "oof")
    monkeypatch.setattr(table, "SAVED", tmp_path / "saved")
    monkeypatch.setattr(table, "RUNS", {"Lite0": ("b42", "b7"), "arm": ("a42", "a7"), "stopped": ("s42", "s7")})
    table.main()
    out = capsys.readouterr().out
    assert "| Lite0 | 42 | b42 | 10.5 |" in out and "| stopped | 7 | s7 | | not run | | | |" in out
    o = over_seeds([tmp_path / "oof" / n for n in ("b42", "b7")], [tmp_path / "oof" / n for n in ("a42", "a7")])
    assert f"arm - Lite0 over seeds 42, 7: pooled OOF AUC {o.arm:.4f} vs {o.base:.4f}, difference {o.diff:+.4f}" in out
    assert "stopped: 1 seed(s) with both runs: left out" in out
    assert sorted(p.name for p in (tmp_path / "saved").glob("*.csv") if not p.name.endswith("_val.csv")) == [
        "a42.csv", "a7.csv", "b42.csv", "b7.csv", "s42.csv"]
