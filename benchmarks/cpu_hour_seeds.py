"""Issue 32's table over two seeds: Lite1, Lite2 and today's recipe against the shipped recipe
(Lite0, freeze 3, OpenVINO int8) within the CPU hour on ISIC 2017, after
``benchmarks/cpu_hour_final.sh`` has trained each run into oof/cpuhour/ (seed 42 under the names
below, seed 7 with ``EXTRA="train.seed=7 ..."`` as <arm>_s7; the commands: benchmarks/cpu_hour.md).

    .venv/bin/python benchmarks/cpu_hour_seeds.py

For each seed, each arm's pooled OOF AUC and its paired difference to Lite0 of the same seed; then
each arm against Lite0 over the seeds present for both (``pipeline.report.seeds.over_seeds``: the
mean of the per-seed differences, its interval from the same grouped-bootstrap replicates of every run);
the minutes (train.py + infer.py) from oof/cpuhour/wall.tsv. Every run's predictions are saved
without labels to benchmarks/cpu_hour_preds/ (benchmarks/saved_runs.py) and rebuilt from there when
its folder is gone.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402

from pipeline.experiment import oof  # noqa: E402
from pipeline.report.seeds import over_seeds  # noqa: E402
from pipeline.report.stats import auc  # noqa: E402
from saved_runs import restore, save  # noqa: E402

OUT = ROOT / "oof" / "cpuhour"
SAVED = ROOT / "benchmarks" / "cpu_hour_preds"
SEEDS = (42, 7)
RUNS = {  # arm: its run per seed; the first arm is the baseline
    "Lite0 (shipped)": ("freeze3_int8", "lite0_s7"),
    "Lite1": ("lite1_f3_int8", "lite1_s7"),
    "Lite2": ("lite2_f3_int8", "lite2_s7"),
    "today's recipe": ("today", "today_s7"),
}


def run_dir(name: str) -> Path | None:
    """The finished run's OOF folder (its predictions saved on the way), or its saved copy, or None
    (a run stopped before infer.py wrote its submission.csv counts as not run)."""
    if (OUT / name / "submission.csv").is_file():
        save(OUT / name, SAVED)
        return OUT / name
    return restore(name, SAVED, OUT / "saved")


def minutes() -> dict[str, float]:
    """train.py + infer.py minutes per run from wall.tsv (its last line for a name run twice)."""
    if not (OUT / "wall.tsv").is_file():
        return {}
    wall = pd.read_csv(OUT / "wall.tsv", sep="\t", names=["run", "s"]).groupby("run")["s"].last()
    return {r: (wall[r] + wall.get(f"{r}_infer", 0)) / 60 for r in wall.index if not r.endswith("_infer")}


def main() -> None:
    dirs = {name: run_dir(name) for names in RUNS.values() for name in names}
    mins = minutes()
    base_arm, *arms = RUNS
    print("| arm | seed | run | minutes | pooled OOF AUC | diff to Lite0 | 95% | share <= 0 |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in RUNS:
        for i, seed in enumerate(SEEDS):
            name, base = RUNS[arm][i], RUNS[base_arm][i]
            if dirs[name] is None or dirs[base] is None:
                print(f"| {arm} | {seed} | {name} | | not run | | | |")
                continue
            if name == base:
                rows = oof.read(dirs[name] / "oof.csv")
                pooled, diff = auc(rows["target"].to_numpy(), rows["pred"].to_numpy()), " | |"
            else:
                o = over_seeds([dirs[base]], [dirs[name]])
                pooled, diff = o.arm, f"{o.diff:+.4f} | {o.lo:+.4f} to {o.hi:+.4f} | {o.share:.3f}"
            print(f"| {arm} | {seed} | {name} | {mins.get(name, float('nan')):.1f} | {pooled:.4f} | {diff} |")
    print("\nover the seeds (the mean of the per-seed pooled AUCs and differences):")
    for arm in arms:
        both = [i for i in range(len(SEEDS)) if dirs[RUNS[arm][i]] and dirs[RUNS[base_arm][i]]]
        if len(both) < 2:
            print(f"{arm}: {len(both)} seed(s) with both runs: left out")
            continue
        o = over_seeds([dirs[RUNS[base_arm][i]] for i in both], [dirs[RUNS[arm][i]] for i in both])
        print(f"{arm} - Lite0 over seeds {', '.join(str(SEEDS[i]) for i in both)}: pooled OOF AUC {o.arm:.4f} vs "
              f"{o.base:.4f}, difference {o.diff:+.4f} (95% {o.lo:+.4f} to {o.hi:+.4f}, share <= 0: {o.share:.3f})")


if __name__ == "__main__":
    main()
