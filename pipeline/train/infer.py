"""The inference stage behind infer.py: every trained fold's predicting model (its best.pt) predicts
the test set with flip TTA; the folds are averaged, checked and written as submission.csv."""
from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config, from_dict, to_dict
from pipeline.core.disk import check_writable
from pipeline.core.errors import ConfigError, DataError, ExperimentError, first_few
from pipeline.core.files import write_csv
from pipeline.data.cache import build_cache
from pipeline.data.dataset import ImageMetaDataset, make_loader
from pipeline.data.diagnosis import Diagnosis, check_test
from pipeline.data.features import MetaTransform, check_numeric
from pipeline.data.prepare import aux_head
from pipeline.data.tables import check_submission, data_path, load_test
from pipeline.experiment.folder import check_config_paths as check_names
from pipeline.experiment.oof import val_predictions_path
from pipeline.experiment.record import RUN_ONLY_KEYS, get_key, saved_config, set_key
from pipeline.model.backends import check_backend
from pipeline.train.checkpoints import predicting_model
from pipeline.train.loop import predict


def trained_config(exp_dir: Path) -> Config:
    path = exp_dir / "config.yaml"
    if not path.is_file():
        raise ExperimentError(f"{path}: no trained experiment here (run train.py first)")
    return saved_config(path)


# The keys infer.py may be given otherwise than the experiment was trained with: where and how it runs
# (record.RUN_ONLY_KEYS, but for those only train.py reads) and where its test set lies.
TEST_KEYS = {"data.test_csv", "data.sample_submission", "data.test_images", "data.image_ext", "data.test_keep_where"}
NOT_READ = {"train.folds": "infer.py predicts with every trained fold (--allow-missing-folds: with those there are)",
            "train.compile": "it compiles training; infer.backend=compile compiles the predicting model",
            "train.compile_mode": "it is train.compile's; infer.compile_mode is infer.backend=compile's",
            "folds.path": "the folds were made when the experiment was trained",
            "data.generate_sample": "infer.py reads a test set, it never generates one",
            **{f"log.{k}": "train.py logs to the tracker" for k in ("tracker", "tracking_uri", "project")}}


def inference_config(cfg: Config, given: Collection[str] = ()) -> Config:
    """The config of the experiment at ``cfg.exp_dir`` (its config.yaml), with ``cfg``'s values of the
    keys in ``given`` (those the command was given); ``check_changes`` refuses the others."""
    check_names(cfg)
    trained, now = to_dict(trained_config(cfg.exp_dir)), to_dict(cfg)
    changed = [k for k in sorted(set(given) - {"name", "output_dir"}) if get_key(trained, k) != get_key(now, k)]
    check_changes(cfg.exp_dir / "config.yaml", changed, trained, now)
    for key in [*changed, "name", "output_dir"]:  # where the experiment lies now, whatever its config.yaml says
        set_key(trained, key, get_key(now, key))
    return from_dict(trained)


def check_changes(saved: Path, changed: list[str], trained: dict, now: dict) -> None:
    """A key given otherwise than trained is refused unless it says where or how infer.py runs
    (RUN_ONLY_KEYS, TEST_KEYS) and infer.py reads it (not in NOT_READ)."""
    fixed = [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RUN_ONLY_KEYS | TEST_KEYS)]
    if fixed:
        shown = ", ".join(f"{k} (trained {get_key(trained, k)!r}, given {get_key(now, k)!r})" for k in fixed[:4])
        more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
        raise ConfigError(f"{saved}: {shown}{more}: infer.py predicts an experiment as it was trained; leave "
                          f"{'it' if len(fixed) == 1 else 'them'} out, or train another experiment (name=...)")
    unread = [k for k in changed if k in NOT_READ]
    if unread:
        raise ConfigError(f"{unread[0]} is not read by infer.py ({NOT_READ[unread[0]]}); leave it out")


def finished_folds(cfg: Config) -> list[int]:
    """The folds that predict: every fold, or with ``infer.allow_missing_folds`` those trained."""
    exp = cfg.exp_dir
    folds = [k for k in range(cfg.folds.n_folds) if val_predictions_path(exp / f"fold{k}").exists()]
    missing = sorted(set(range(cfg.folds.n_folds)) - set(folds))
    if not folds:
        raise ExperimentError(f"{exp}: no finished fold to predict with (run train.py first)")
    if missing and not cfg.infer.allow_missing_folds:
        raise ExperimentError(f"{exp}: fold(s) {missing} not trained; train them or pass --allow-missing-folds")
    return folds


def prepare_test(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray, Diagnosis | None]:
    """The test table, the submission template, the test images (cached at the trained size), their
    meta features (the experiment's fitted transform) and the diagnosis classes of the model's head
    (None without one); every problem reported before any prediction."""
    test, sample = load_test(cfg)
    fitted = json.loads((cfg.exp_dir / "features.json").read_text())
    transform, diagnosis = MetaTransform.from_dict(fitted), Diagnosis.from_dict(fitted.get("diagnosis"))
    if diagnosis is not None:
        check_test(diagnosis, test, cfg.data.id_col, str(data_path(cfg, cfg.data.test_csv)))
    check_numeric(transform, test, str(data_path(cfg, cfg.data.test_csv)), cfg.data.id_col,
                  cfg.features.max_bad_fraction)
    images, bad, _ = build_cache([Path(p) for p in test["image_path"]], cfg.model.image_size,
                                 Path(cfg.data.cache_dir), desc="test")
    if bad:  # a submission needs every id, so test images are never skipped
        raise DataError(f"{Path(test['image_path'][next(iter(bad))]).parent}: {len(bad)} test image(s) cannot be "
                        f"decoded: {first_few([f'{test[cfg.data.id_col][i]} ({why})' for i, why in bad.items()], 3)}")
    return test, sample, images, transform.transform(test), diagnosis if aux_head(cfg) else None


def make_submission(cfg: Config, given: Collection[str] = ()) -> Path:
    """``predict_submission`` of the experiment at ``cfg.exp_dir`` (``inference_config``: ``cfg``'s values
    of the keys in ``given``, the rest as trained)."""
    return predict_submission(inference_config(cfg, given))


def predict_submission(cfg: Config) -> Path:
    """Predict the test set with each trained fold and TTA; write ``<exp_dir>/submission.csv``.
    ``cfg``: the experiment's inference config (``inference_config``)."""
    folds = finished_folds(cfg)
    check_backend(cfg.infer.backend, cfg.infer.precision)
    writable = dict(what=" submission.csv", advice="copy the experiment to a disk that can be written (output_dir=...)")
    check_writable(cfg.exp_dir, **writable)  # before the test images are cached and predicted, not after
    test, sample, images, meta, diagnosis = prepare_test(cfg)
    check_writable(cfg.exp_dir, need=len(sample) * (int(sample[cfg.data.id_col].str.len().max()) + 32), **writable)
    loader = make_loader(ImageMetaDataset(images, np.arange(len(test)), meta, None), cfg.infer.batch_size, False,
                         cfg.train.num_workers)
    preds = []
    for k in folds:
        model, rt = predicting_model(cfg, meta.shape[1], cfg.exp_dir / f"fold{k}", diagnosis,
                                     cpu_bf16=cfg.infer.cpu_bf16)
        preds.append(predict(model, loader, rt, tta=cfg.infer.tta, desc=f"fold {k} test"))
    id_col = cfg.data.id_col
    by_id = pd.Series(np.mean(preds, axis=0), index=test[id_col])
    pred_col = next((c for c in sample.columns if c != id_col), cfg.data.target_col)  # the template's name
    sub = pd.DataFrame({id_col: sample[id_col], pred_col: by_id.loc[sample[id_col]].to_numpy()})
    sub = sub[[c for c in sample.columns if c in sub.columns] if pred_col in sample.columns else [id_col, pred_col]]
    check_submission(sub, sample[id_col], id_col, pred_col)  # a failure here is a bug: the inputs were checked
    path = write_csv(cfg.exp_dir / "submission.csv", sub)
    print(f"wrote {path}: {len(sub)} rows, folds {folds}, TTA x{cfg.infer.tta}, "
          f"mean prediction {sub[pred_col].mean():.4f}")
    return path
