"""The inference stage behind infer.py: every trained fold's best checkpoint predicts the test set with
flip TTA; the folds are averaged, checked and written as submission.csv."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import config as C
from .data import ImageMetaDataset, build_cache, make_loader
from .engine import make_runtime, place, predict
from .errors import ExperimentError
from .experiment import fold_predictions, saved_config
from .features import MetaTransform, check_numeric
from .io import load_checkpoint, write_csv
from .model import build_model
from .tables import DataError, data_path, few, load_test


def trained_config(exp_dir: Path) -> C.Config:
    path = exp_dir / "config.yaml"
    if not path.is_file():
        raise ExperimentError(f"{path}: no trained experiment here (run train.py first)")
    return saved_config(path)


def check_submission(sub: pd.DataFrame, expected_ids: pd.Series, id_col: str, pred_col: str = "target") -> None:
    """Every expected id exactly once, in order; probabilities in [0, 1]; no NaN. A failure here is
    a bug (the inputs were checked before): a ValueError with its traceback."""
    if list(sub[id_col]) != list(expected_ids):
        raise ValueError("submission ids differ from sample_submission.csv (order, duplicates or missing ids)")
    p = sub[pred_col].to_numpy()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("submission has NaN or probabilities outside [0, 1]")


def make_submission(cfg: C.Config, allow_missing_folds: bool | None = None,
                    data_overrides: Sequence[str] = ()) -> Path:
    """Predict the test set with each trained fold and TTA; write ``<exp_dir>/submission.csv``.
    The model and features are the trained experiment's; ``data_overrides`` (``data.key=value``)
    say where its test set lies now, e.g. trained here and predicted on Kaggle."""
    exp = cfg.exp_dir
    trained = C.with_overrides(trained_config(exp), list(data_overrides))
    allow = cfg.infer.allow_missing_folds if allow_missing_folds is None else allow_missing_folds
    folds = [k for k in range(trained.folds.n_folds) if fold_predictions(exp / f"fold{k}").exists()]
    missing = sorted(set(range(trained.folds.n_folds)) - set(folds))
    if not folds:
        raise ExperimentError(f"{exp}: no finished fold to predict with (run train.py first)")
    if missing and not allow:
        raise ExperimentError(f"{exp}: fold(s) {missing} not trained; train them or pass --allow-missing-folds")
    test, sample = load_test(trained)
    transform = MetaTransform.from_dict(json.loads((exp / "features.json").read_text()))
    check_numeric(transform, test, str(data_path(trained, trained.data.test_csv)), trained.data.id_col,
                  cfg.features.max_bad_fraction)
    meta = transform.transform(test)
    images, bad, _ = build_cache([Path(p) for p in test["image_path"]], trained.model.image_size,
                              Path(cfg.data.cache_dir), desc="test")
    if bad:  # a submission needs every id, so test images are never skipped
        raise DataError(f"{Path(test['image_path'][next(iter(bad))]).parent}: {len(bad)} test image(s) cannot be "
                        f"decoded: {few([f'{test[trained.data.id_col][i]} ({why})' for i, why in bad.items()], 3)}")
    ds = ImageMetaDataset(images, np.arange(len(test)), meta, None)
    loader = make_loader(ds, cfg.infer.batch_size, False, cfg.train.num_workers)
    preds = []
    for k in folds:
        model = build_model(trained, meta.shape[1], pretrained="none")
        model.load_state_dict(load_checkpoint(exp / f"fold{k}" / "best.pt")["model"])
        rt = make_runtime(model, trained.train.amp, trained.train.cpu_bf16 or cfg.infer.cpu_bf16,
                          trained.train.channels_last)
        place(model, rt)
        preds.append(predict(model, loader, rt, tta=cfg.infer.tta, desc=f"fold {k} test"))
    id_col = trained.data.id_col
    by_id = pd.Series(np.mean(preds, axis=0), index=test[id_col])
    pred_col = next((c for c in sample.columns if c != id_col), trained.data.target_col)  # the template's name
    sub = pd.DataFrame({id_col: sample[id_col], pred_col: by_id.loc[sample[id_col]].to_numpy()})
    check_submission(sub, sample[id_col], id_col, pred_col)
    path = write_csv(exp / "submission.csv", sub)
    print(f"wrote {path}: {len(sub)} rows, folds {folds}, TTA x{cfg.infer.tta}, "
          f"mean prediction {sub[pred_col].mean():.4f}")
    return path


__all__ = ["make_submission", "check_submission", "trained_config", "DataError"]
