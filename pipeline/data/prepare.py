"""The training data of an experiment, made ready before any training: the table and its images,
the folds, the fitted meta features; every data problem surfaces here.

    data = prepare(cfg)     # -> TrainData: table (with 'fold' and 'cache_row'), image cache, meta

Also what the folds read from it: the targets, and the loader of some of its rows (their OOF rows:
experiment/oof.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError, DataError, first_few
from pipeline.data.cache import build_cache
from pipeline.data.dataset import ImageMetaDataset, make_loader
from pipeline.data.diagnosis import Diagnosis, check_contradictions, check_test
from pipeline.data.features import MetaTransform, check_numeric
from pipeline.data.folds import fold_table, load_or_make_folds
from pipeline.data.tables import data_path, load_test, load_train


@dataclass
class TrainData:
    df: pd.DataFrame          # training table, one row per image, with 'fold' and 'cache_row' columns
    images: np.ndarray        # (N, S, S, 3) uint8, memory-mapped cache
    meta: np.ndarray          # (N, F) float32 meta features
    transform: MetaTransform
    digests: list             # content hash of each cached image file, by cache row
    diagnosis: Diagnosis | None = None   # the diagnosis classes (data.diagnosis_col)
    codes: np.ndarray | None = None      # each row's diagnosis class, -1 where unknown

    def fitted(self) -> dict:
        """What was fitted on the training rows, saved as the experiment's features.json."""
        return {**self.transform.to_dict(), **({"diagnosis": self.diagnosis.to_dict()} if self.diagnosis else {})}


def prepare(cfg: Config) -> TrainData:
    """Load and check the training data and its images, make or reuse the folds, fit the meta
    transform."""
    d = cfg.data
    # only into a new or empty folder: in a folder of real data a missing table is the user's error below
    if d.generate_sample and not data_path(cfg, d.train_csv).exists() and not any(Path(d.root).glob("*")):
        from pipeline.data.sample import ensure_sample
        print(f"writing the bundled synthetic sample into {d.root}")
        ensure_sample(Path(d.root))
    df = load_train(cfg)
    test = load_test(cfg)[0] if d.test_csv else None  # a broken test table or missing image: reported now
    df, images, digests = cached_images(cfg, df)
    attach_folds(cfg, df)
    transform = fit_features(cfg, df, test)
    diagnosis = fit_diagnosis(cfg, df, test)
    return TrainData(df, images, transform.transform(df), transform, digests, diagnosis,
                     diagnosis.codes(df[d.diagnosis_col])[0] if diagnosis else None)


def cached_images(cfg: Config, df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list]:
    """The images decoded into the cache; those that cannot be decoded in this run fail, or are
    skipped with ``data.on_bad_image=skip`` (the next run reads them again). Adds each row's
    ``cache_row``."""
    d = cfg.data
    images, bad, digests = build_cache([Path(p) for p in df["image_path"]], cfg.model.image_size,
                                       Path(d.cache_dir), "train")
    df["cache_row"] = np.arange(len(df))
    if bad:
        listed = first_few([f"{df[d.id_col][i]} ({why})" for i, why in bad.items()], 3)
        where = Path(df["image_path"][next(iter(bad))]).parent
        if d.on_bad_image == "fail":
            raise DataError(f"{where}: {len(bad)} image(s) cannot be decoded: {listed}; "
                            f"replace them or set data.on_bad_image=skip")
        print(f"warning: skipping {len(bad)} undecodable image(s) in {where}: {listed}", file=sys.stderr)
        df = df.drop(index=list(bad)).reset_index(drop=True)
    return df, images, digests


def fold_table_path(cfg: Config) -> Path:
    if cfg.folds.path:
        return Path(cfg.folds.path)
    train_csv = data_path(cfg, cfg.data.train_csv)
    return train_csv.with_name(f"{train_csv.stem}_folds{cfg.folds.n_folds}_seed{cfg.folds.seed}.csv")


def attach_folds(cfg: Config, df: pd.DataFrame) -> None:
    """The ``fold`` column from the fold table (made once, then reused); external rows (-1) train
    every fold and are never validated."""
    d = cfg.data
    path = fold_table_path(cfg)
    in_folds = ~df["is_external"].to_numpy()
    df["fold"] = -1
    df.loc[in_folds, "fold"] = load_or_make_folds(df[in_folds].reset_index(drop=True), path, d.id_col,
                                                  d.target_col, d.group_col, cfg.folds.n_folds, cfg.folds.seed)
    table = fold_table(df[in_folds], df["fold"][in_folds].to_numpy(), d.target_col, d.group_col or d.id_col)
    positives, images = table["positives"], table["images"]
    for missing, one_class in [("positive", positives == 0), ("negative", positives == images)]:
        if one_class.any():
            raise DataError(f"{path}: fold(s) {table.index[one_class].tolist()} have no {missing}; AUC is undefined "
                            f"(use fewer folds)")
    print(f"folds from {path}:\n{table.to_string()}")
    if not in_folds.all():
        external = df[d.target_col][~in_folds]
        print(f"plus {len(external)} external training-only rows ({int(external.sum())} positives)")


def fit_features(cfg: Config, df: pd.DataFrame, test: pd.DataFrame | None) -> MetaTransform:
    """The meta-feature transform, fitted on the training rows (and the test rows with
    ``features.fit_on=train+test``); numeric columns checked in every table."""
    d = cfg.data
    fit_df = pd.concat([df, test], ignore_index=True) if cfg.features.fit_on == "train+test" else df
    transform = MetaTransform.from_config(cfg).fit(fit_df)
    limit = cfg.features.max_bad_fraction
    in_folds = ~df["is_external"].to_numpy()
    check_numeric(transform, df[in_folds], str(data_path(cfg, d.train_csv)), d.id_col, limit)
    if not in_folds.all():
        check_numeric(transform, df[~in_folds], str(data_path(cfg, d.external_csv)), d.id_col, limit)
    if test is not None:
        check_numeric(transform, test, str(data_path(cfg, d.test_csv)), d.id_col, limit)
    return transform


def fit_diagnosis(cfg: Config, df: pd.DataFrame, test: pd.DataFrame | None) -> Diagnosis | None:
    """The diagnosis classes of the training rows (data.diagnosis_col), each table checked: the
    diagnosis agrees with the target, and the test table (when it has the column) holds no class
    that training never saw."""
    d = cfg.data
    if not d.diagnosis_col:
        return None
    diagnosis = Diagnosis.fit(df[d.diagnosis_col], d.diagnosis_col, d.diagnosis_min_rows, d.melanoma_class)
    if aux_head(cfg):
        check_head(cfg, diagnosis, str(data_path(cfg, d.train_csv)))
    in_folds = ~df["is_external"].to_numpy()
    for rows, name in [(in_folds, d.train_csv), (~in_folds, d.external_csv)]:
        if rows.any():
            check_contradictions(df[rows], diagnosis, d.target_col, d.id_col, str(data_path(cfg, name)),
                                 d.max_contradictions)
    if test is not None:
        check_test(diagnosis, test, d.id_col, str(data_path(cfg, d.test_csv)))
    return diagnosis


def check_head(cfg: Config, diagnosis: Diagnosis, where: str) -> None:
    """The diagnosis head needs two classes or more in the training rows, and a read-out of the
    melanoma class (model.predict diagnosis or mean) needs that class among them."""
    col, classes = diagnosis.column, diagnosis.classes
    if len(classes) < 2:
        held = f"one class, {classes[0]}," if classes else "no class (every value is missing or unknown)"
        raise DataError(f"{where}: column '{col}' holds {held} in the training rows; the diagnosis head "
                        f"(train.aux_weight > 0) needs at least 2 classes: fix the column or set train.aux_weight=0")
    if cfg.model.predict != "binary" and diagnosis.melanoma_index is None:
        raise DataError(f"{where}: column '{col}' has no training row of class '{diagnosis.melanoma}' "
                        f"(data.melanoma_class; it has {', '.join(classes)}); model.predict={cfg.model.predict} "
                        f"reads that class's probability: set data.melanoma_class to one of them, or "
                        f"model.predict=binary")


def aux_head(cfg: Config) -> bool:
    """Whether the model has the diagnosis head (and the loss its cross-entropy)."""
    return bool(cfg.data.diagnosis_col) and cfg.train.aux_weight > 0


def check_batch_size(cfg: Config, data: TrainData, folds: list[int]) -> None:
    """The training loader drops the last incomplete batch: a batch larger than a fold's training
    rows would train nothing and report AUC 0.5."""
    for k in folds:
        n = int((data.df["fold"] != k).sum())
        if n < cfg.train.batch_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the {n} training rows of "
                              f"fold {k}: no step would train; use a smaller batch")


def targets(cfg: Config, data: TrainData) -> np.ndarray:
    """The binary target of each row; with the diagnosis head, (target, diagnosis class) pairs."""
    y = data.df[cfg.data.target_col].to_numpy().astype(np.float32)
    return np.column_stack([y, data.codes.astype(np.float32)]) if aux_head(cfg) else y


def eval_loader(cfg: Config, data: TrainData, idx: np.ndarray, pin_memory: bool = False):
    """Rows ``idx`` (data.df positions) in order, unaugmented, in batches of ``infer.batch_size``:
    what validation and OOF prediction read."""
    ds = ImageMetaDataset(data.images, data.df["cache_row"].to_numpy()[idx], data.meta[idx], targets(cfg, data)[idx])
    return make_loader(ds, cfg.infer.batch_size, False, cfg.train.num_workers, pin_memory=pin_memory)
