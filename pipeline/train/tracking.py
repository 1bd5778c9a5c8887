"""A training command's experiment tracker (``log.tracker``, ``pipeline/experiment/tracker.py``): opened
on rank 0 alone, and given the experiment's pooled OOF AUC at the end. The figures are those of
``python -m pipeline cv`` (``report.cv.analyse``: the grouped bootstrap, 1000 replicates, seed 0),
which the experiment layer, below the reports, cannot compute.
"""
from __future__ import annotations

import pandas as pd

from pipeline.core.config import Config
from pipeline.experiment.tracker import NO_TRACKING, Tracking
from pipeline.train.distributed import Dist

N_BOOT, SEED = 1000, 0


def open_tracking(cfg: Config, force: bool, dist: Dist) -> Tracking:
    """The experiment's tracker run on rank 0 (reopened on resume, new with ``force``); nothing elsewhere."""
    return Tracking.open(cfg, force) if dist.main else NO_TRACKING


def summarise(track: Tracking, cfg: Config, oof: pd.DataFrame) -> None:
    """``oof/auc``, ``oof/auc_lo``, ``oof/auc_hi`` (the pooled OOF AUC and its 95% interval) and
    ``oof/fold_auc_mean`` at step = the folds in oof.csv, and oof.csv itself; nothing before a fold is done."""
    if track is NO_TRACKING or oof.empty:
        return
    from pipeline.report.cv import analyse
    row = analyse([cfg.exp_dir], n_boot=N_BOOT, seed=SEED).table.iloc[0]
    track.summary({"oof/auc": row["pooled_auc"], "oof/auc_lo": row["pooled_lo"], "oof/auc_hi": row["pooled_hi"],
                   "oof/fold_auc_mean": row["fold_auc_mean"]}, int(row["folds"]), [cfg.exp_dir / "oof.csv"])
