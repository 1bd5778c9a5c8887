"""What a fold's int8 model is calibrated on (``infer.precision=int8``): up to CALIBRATION_ROWS of the
fold's training rows, never its validation rows, drawn with a fixed seed from the experiment's rows in
the order of its training record (data.csv), so that training (``from_training``, the rows in memory)
and infer.py (``from_experiment``, data.csv and the image cache) draw the same rows, and infer.py reuses
the export cached by training. The images are loaded only when the model is quantized.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import DataError, PipelineError, first_few
from pipeline.data.cache import build_cache
from pipeline.data.features import MetaTransform
from pipeline.data.prepare import TrainData
from pipeline.data.tables import load_train
from pipeline.experiment.record import read_record
from pipeline.model.export import Calibration

CALIBRATION_ROWS = 300
CALIBRATION_SEED = 0


def calibration_rows(folds: np.ndarray, k: int, rows: int = CALIBRATION_ROWS) -> np.ndarray:
    """Positions of up to ``rows`` training rows of fold ``k`` (fold != k: external rows too), drawn
    with CALIBRATION_SEED, in ascending order."""
    train = np.flatnonzero(np.asarray(folds).astype(int) != k)
    if len(train) <= rows:
        return train
    return np.sort(np.random.default_rng(CALIBRATION_SEED).choice(train, rows, replace=False))


def ids_digest(ids) -> str:
    return hashlib.blake2b("\n".join(map(str, ids)).encode(), digest_size=16).hexdigest()


def from_training(cfg: Config, data: TrainData, k: int) -> Calibration:
    """Fold ``k``'s calibration from the training data in memory (trainer.finish_fold)."""
    idx = calibration_rows(data.df["fold"].to_numpy(), k)
    rows = data.df["cache_row"].to_numpy()[idx]
    return Calibration(len(idx), ids_digest(data.df[cfg.data.id_col].astype(str).to_numpy()[idx]),
                       lambda: (np.asarray(data.images[rows]), data.meta[idx]))


def from_experiment(cfg: Config, k: int) -> Calibration:
    """Fold ``k``'s calibration from the experiment at ``cfg.exp_dir``: its data.csv names the rows;
    the images come from the training image cache and the meta rows from features.json, as trained."""
    record = read_record(cfg.exp_dir / "data.csv")
    idx = calibration_rows(record["fold"].to_numpy(), k)
    ids = record[cfg.data.id_col].to_numpy()

    def load() -> tuple[np.ndarray, np.ndarray]:
        try:
            return training_rows(cfg, ids, idx)
        except PipelineError as e:
            raise DataError(f"{cfg.exp_dir}/fold{k}: infer.precision=int8 calibrates on the fold's training images "
                            f"and no int8 export is cached to reuse: {e}") from None
    return Calibration(len(idx), ids_digest(ids[idx]), load)


def training_rows(cfg: Config, ids: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and meta rows of rows ``idx`` of the training record ``ids``: the meta transform
    runs on every recorded row, as in training (it counts images per group within the table)."""
    df = load_train(cfg)
    pos = pd.Index(df[cfg.data.id_col].astype(str)).get_indexer(ids)
    if (pos < 0).any():
        raise DataError(f"training row(s) of data.csv not in the training table: {first_few(ids[pos < 0], 3)}")
    cache = build_cache([Path(p) for p in df["image_path"]], cfg.model.image_size, Path(cfg.data.cache_dir), "train")
    bad = sorted(set(pos[idx].tolist()) & set(cache.bad))
    if bad:
        raise DataError(f"training image(s) cannot be decoded: {first_few([df[cfg.data.id_col][i] for i in bad], 3)}")
    transform = MetaTransform.from_dict(json.loads((cfg.exp_dir / "features.json").read_text()))
    meta = transform.transform(df.iloc[pos].reset_index(drop=True))
    return np.asarray(cache.images[pos[idx]]), meta[idx]


def fold_calibration(cfg: Config, k: int, data: TrainData | None = None) -> Calibration | None:
    """What fold ``k`` calibrates on with ``infer.precision=int8`` (None otherwise): from ``data``
    when given, else from the experiment."""
    if cfg.infer.precision != "int8":
        return None
    return from_training(cfg, data, k) if data is not None else from_experiment(cfg, k)
