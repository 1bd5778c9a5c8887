"""Issue 18's table: the diagnosis head on ISIC 2017 against the binary recipe, after
``bash benchmarks/diagnosis.sh`` has trained its runs into oof/diag/.

    .venv/bin/python benchmarks/diagnosis_table.py [--runs bin aux1 ...] [--modes binary diagnosis mean]

For every run with the diagnosis head, its folds' best.pt also predict the OOF rows the other ways
(``model.predict``: the binary head, the melanoma class of the diagnosis head, their mean; TTA as
the run's config says; the folds it finished) into oof/diag/modes/<run>_<mode>/oof.csv: the same weights, only the read-out
differs (the best epoch was chosen by the run's own ``model.predict``). Then ``python -m pipeline cv``
compares everything with the binary run as the baseline (grouped-bootstrap intervals, paired
differences), and each run's val-split AUC is scored once from its submission.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import config as C  # noqa: E402
from pipeline import oof  # noqa: E402
from pipeline.checkpoints import predicting_model  # noqa: E402
from pipeline.cli import tune_process  # noqa: E402
from pipeline.cv import compare  # noqa: E402
from pipeline.engine import predict  # noqa: E402
from pipeline.experiment import saved_config, val_predictions_path  # noqa: E402
from pipeline.prepare import aux_head, eval_loader, oof_rows, prepare  # noqa: E402
from pipeline.stats import auc  # noqa: E402

OUT = ROOT / "oof" / "diag"
METADATA = ROOT.parent / "shared" / "data" / "isic2017" / "metadata.csv"


def repredict(exp: Path, modes: list[str]) -> list[Path]:
    """The run's OOF rows predicted with each of ``modes`` (other than its own) from its best.pt."""
    cfg = saved_config(exp / "config.yaml")
    cfg.output_dir, cfg.name = str(exp.parent), exp.name
    if not aux_head(cfg):
        return []
    data, made = None, []
    for mode in [m for m in modes if m != cfg.model.predict]:
        out = OUT / "modes" / f"{exp.name}_{mode}"
        if (out / "oof.csv").is_file():
            made.append(out)
            continue
        data = data or prepare(cfg)
        run = C.with_overrides(cfg, [f"model.predict={mode}"])
        parts = []
        for k in [k for k in range(cfg.folds.n_folds) if val_predictions_path(exp / f"fold{k}").is_file()]:
            idx = np.flatnonzero(data.df["fold"].to_numpy() == k)
            model, rt = predicting_model(run, data.meta.shape[1], exp / f"fold{k}", data.diagnosis)
            parts.append(oof_rows(run, data, idx, predict(model, eval_loader(run, data, idx), rt, run.infer.tta,
                                                          f"{exp.name} fold {k} as {mode}")))
        out.mkdir(parents=True, exist_ok=True)
        oof.write(out / "oof.csv", pd.concat(parts, ignore_index=True))
        made.append(out)
    return made


def val_auc(exp: Path) -> str:
    """The val split's AUC from the run's submission (150 images, scored once)."""
    sub = exp / "submission.csv"
    if not sub.is_file():
        return ""
    s = pd.read_csv(sub, dtype={"image_id": "string"})
    meta = pd.read_csv(METADATA, dtype={"image_id": "string"}).set_index("image_id")
    return f"{auc(meta.loc[s['image_id'], 'melanoma'].to_numpy(), s['melanoma'].to_numpy()):.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["bin", "aux1", "aux05", "aux2"])
    p.add_argument("--modes", nargs="+", default=list(C.PREDICT))
    args = p.parse_args()
    tune_process()
    runs = [OUT / r for r in args.runs if (OUT / r / "oof.csv").is_file()]
    extra = [m for r in runs for m in repredict(r, args.modes)]
    compare([*runs, *extra], baseline=str(runs[0]), plot=False, out=OUT / "compare")
    print("\nval split (150 images, scored once): " + ", ".join(f"{r.name} {val_auc(r)}" for r in runs))


if __name__ == "__main__":
    main()
