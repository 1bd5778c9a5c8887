"""TTA views as a lever: a trained experiment's folds predict their validation rows again with 1, 2,
4 and 8 views (flips and transposes), from the same best.pt files train.py wrote. Each view count
becomes an OOF table that ``python -m pipeline.cv`` compares with intervals; no training.

    .venv/bin/python benchmarks/tta_views.py oof/cpuhour/ref_seed42 --views 1,2,4,8
    .venv/bin/python -m pipeline.cv oof/cpuhour/ref_seed42_tta{1,2,4,8} --baseline ref_seed42_tta4 --no-plot

Each table goes beside the experiment, ``<experiment>_tta<views>/oof.csv`` (not into it: the
experiment folder holds only what train.py writes).

The predictions are train.py's own path: prepare.prepare, checkpoints.predicting_model (the one way a
trained fold predicts), engine.predict; the seconds printed are the validation rows' inference time
for each view count.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pipeline.checkpoints import predicting_model  # noqa: E402
from pipeline.cli import parse_ints, tune_process  # noqa: E402
from pipeline.engine import predict  # noqa: E402
from pipeline.experiment import saved_config  # noqa: E402
from pipeline.io import write_csv  # noqa: E402
from pipeline.prepare import eval_loader, oof_rows, prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="a trained experiment folder (config.yaml, fold<k>/best.pt)")
    p.add_argument("--views", default="1,2,4,8", help="comma-separated view counts (1..8)")
    args = p.parse_args()
    cfg = saved_config(args.experiment / "config.yaml")
    cfg.output_dir, cfg.name = str(args.experiment.parent), args.experiment.name
    views = parse_ints(args.views, "--views")
    missing = [k for k in range(cfg.folds.n_folds) if not (args.experiment / f"fold{k}" / "best.pt").is_file()]
    if missing:
        sys.exit(f"error: {args.experiment}: fold(s) {missing} have no best.pt; a pooled OOF needs every fold")
    tune_process()
    data = prepare(cfg)
    tables = {v: [] for v in views}
    seconds = {v: 0.0 for v in views}
    for k in range(cfg.folds.n_folds):
        idx = np.flatnonzero(data.df["fold"].to_numpy() == k)
        loader = eval_loader(cfg, data, idx)
        model, rt = predicting_model(cfg, data.meta.shape[1], args.experiment / f"fold{k}")
        for v in views:
            start = time.perf_counter()
            pred = predict(model, loader, rt, tta=v, desc=f"fold {k} TTA x{v}")
            seconds[v] += time.perf_counter() - start
            tables[v].append(oof_rows(cfg, data, idx, pred))
    for v in views:
        oof = pd.concat(tables[v])
        out = args.experiment.with_name(f"{args.experiment.name}_tta{v}")
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "oof.csv", oof)
        print(f"TTA x{v}: pooled OOF AUC {roc_auc_score(oof['target'], oof['pred']):.4f}, "
              f"{seconds[v]:.1f} s for {len(oof)} images -> {out / 'oof.csv'}")


if __name__ == "__main__":
    main()
