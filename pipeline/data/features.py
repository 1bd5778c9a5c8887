"""Tabular meta features, fitted once and saved with the experiment.

Categorical columns become one-hot vectors with a ``missing`` level (NaN and categories unseen
at fit time land there); numeric columns are standardised with a missing flag, which also marks
non-numbers and numbers far outside the fitting rows' range (``check_numeric`` reports them);
optionally log1p(number of images of the group), log(image file size) and the image's file-size
z-score and rank among its group's images (the 2020 winners' context features). The fitted state
is plain JSON, so inference applies exactly the transform the model was trained with.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.data.tables import MISSING_WORDS, group_ids

MISSING = "__missing__"
FAR = 20  # a number further than this many robust standard deviations from the median is treated as missing


def _as_category(series: pd.Series) -> pd.Series:
    s = series.astype("string").str.strip().str.lower()
    return s.fillna(MISSING).replace({w: MISSING for w in MISSING_WORDS})


def _as_number(series: pd.Series) -> pd.Series:
    x = pd.to_numeric(series.astype("string").str.strip(), errors="coerce").astype("float64")
    return x.where(np.isfinite(x))  # 'inf' is no more usable than '45y'


def _bounds(x: pd.Series) -> tuple[float, float]:
    """median -+ FAR * scale, the scale from the IQR (which the outliers being bounded barely move),
    or the std when most values are equal; infinite when there is no spread to measure."""
    x = x.dropna()
    if len(x) < 2:
        return -np.inf, np.inf
    q1, median, q3 = x.quantile([0.25, 0.5, 0.75])
    scale = (q3 - q1) / 1.349 if q3 > q1 else x.std()
    return (float(median - FAR * scale), float(median + FAR * scale)) if scale > 0 else (-np.inf, np.inf)


class MetaTransform:
    def __init__(self, categorical: list[str], numeric: list[str], n_images: bool, group_col: str,
                 file_size: bool = False, group_context: bool = False):
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.n_images = n_images
        self.group_col = group_col
        self.file_size = file_size
        self.group_context = group_context
        self.levels: dict[str, list[str]] = {}
        # numeric column -> [mean, std, lo, hi]; lo/hi are None for "no bound" (JSON has no infinity)
        self.stats: dict[str, list] = {}

    @classmethod
    def from_config(cls, cfg) -> "MetaTransform":
        f = cfg.features
        return cls(f.categorical, f.numeric, f.n_images, cfg.data.group_col, f.file_size, f.group_context)

    def fit(self, df: pd.DataFrame) -> "MetaTransform":
        for col in self.categorical:
            seen = sorted(set(_as_category(df[col])) - {MISSING})
            self.levels[col] = seen + [MISSING]
        for col in self.numeric:
            x = _as_number(df[col])
            lo, hi = _bounds(x)
            x = x[(x >= lo) & (x <= hi)]
            mean = float(x.mean()) if len(x) else 0.0
            std = float(x.std()) if len(x) > 1 else 1.0
            self.stats[col] = [mean, std if std > 0 else 1.0, *(None if np.isinf(v) else v for v in (lo, hi))]
        if self.file_size:
            x = np.log(df["image_bytes"].astype(float).clip(lower=1))
            self.stats["log_file_size"] = [float(x.mean()), float(x.std()) or 1.0]
        return self

    def limits(self, col: str) -> tuple[float, float]:
        """Bounds of a numeric column, infinite where there are none (None)."""
        lo, hi = self.stats[col][2:]
        return -np.inf if lo is None else lo, np.inf if hi is None else hi

    def number(self, df: pd.DataFrame, col: str) -> pd.Series:
        """The column as floats; non-numbers and numbers outside the fitted bounds are NaN (missing)."""
        lo, hi = self.limits(col)
        x = _as_number(df[col])
        return x.where((x >= lo) & (x <= hi))

    @property
    def names(self) -> list[str]:
        out = [f"{c}={lvl}" for c in self.categorical for lvl in self.levels[c]]
        out += [n for c in self.numeric for n in (c, f"{c}_missing")]
        out += ["log1p_n_images"] if self.n_images else []
        out += ["log_file_size"] if self.file_size else []
        return out + (["file_size_group_z", "file_size_group_rank"] if self.group_context else [])

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """float32 array (rows, features); group sizes are counted within ``df``."""
        blocks = []
        for col in self.categorical:
            levels = self.levels[col]
            cat = _as_category(df[col])
            cat = cat.where(cat.isin(levels), MISSING)
            codes = pd.Categorical(cat, categories=levels).codes
            blocks.append(np.eye(len(levels), dtype=np.float32)[codes])
        for col in self.numeric:
            mean, std = self.stats[col][:2]
            x = self.number(df, col)
            blocks.append(np.stack([((x - mean) / std).fillna(0.0), x.isna().astype(float)], 1))
        groups = group_ids(df, self.group_col)
        if self.n_images:
            counts = groups.map(groups.value_counts()).astype(float)
            blocks.append(np.log1p(counts.to_numpy())[:, None])
        if self.file_size or self.group_context:
            size = np.log(df["image_bytes"].astype(float).clip(lower=1))
        if self.file_size:
            mean, std = self.stats["log_file_size"]
            blocks.append(((size - mean) / std).to_numpy()[:, None])
        if self.group_context:
            by = size.groupby(groups)
            z = ((size - by.transform("mean")) / by.transform("std").replace(0, np.nan)).fillna(0.0)
            rank = by.rank(pct=True).where(by.transform("size") > 1, 0.5)
            blocks.append(np.stack([z.to_numpy(), rank.to_numpy()], 1))
        if not blocks:
            return np.zeros((len(df), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return dict(categorical=self.categorical, numeric=self.numeric, n_images=self.n_images,
                    group_col=self.group_col, file_size=self.file_size, group_context=self.group_context,
                    levels=self.levels, stats=self.stats)

    @classmethod
    def from_dict(cls, d: dict) -> "MetaTransform":
        t = cls(d["categorical"], d["numeric"], d["n_images"], d["group_col"], d["file_size"], d["group_context"])
        t.levels, t.stats = d["levels"], d["stats"]
        return t


def _examples(words: np.ndarray, ids: np.ndarray, n: int = 3) -> str:
    pairs = [f"{w} at {i}" for w, i in zip(words[:n], ids[:n])]
    return ", ".join(pairs + ["..."] * (len(words) > n))


def check_categories(transform: MetaTransform, df: pd.DataFrame, where: str, id_col: str, max_share: float) -> None:
    """Warn, one stderr line per categorical column, when more than ``max_share`` of ``df``'s rows
    hold a value the fitted ``transform`` never saw (a recoded column: ``sex`` as M/F where training
    saw male/female): the transform puts them in the missing level, which is right for a few
    rare values and silently wrong for a whole column."""
    ids = df[id_col].astype("string").to_numpy()
    for col in transform.categorical:
        cat = _as_category(df[col])
        unseen = ((cat != MISSING) & ~cat.isin(transform.levels[col])).to_numpy()
        if unseen.mean() <= max_share:
            continue
        raw = np.array([f"'{v}'" for v in df[col].astype("string").str.strip()], dtype=object)
        first = pd.Series(raw[unseen]).drop_duplicates().index.to_numpy()  # distinct values first
        known = [lvl for lvl in transform.levels[col] if lvl != MISSING]
        print(f"warning: {where}: column '{col}': {unseen.sum()} of {len(df)} rows ({unseen.mean():.1%}) hold values "
              f"never seen in training ({_examples(raw[unseen][first], ids[unseen][first])}); they are treated as "
              f"missing (training saw {', '.join(known[:8]) + (', ...' if len(known) > 8 else '') or 'no value'})",
              file=sys.stderr)


def check_numeric(transform: MetaTransform, df: pd.DataFrame, where: str, id_col: str,
                  max_bad_fraction: float) -> None:
    """Warn, one stderr line per column, about the non-numbers and far-out numbers in ``df`` that
    the fitted ``transform`` treats as missing; raise DataError when they are more than
    ``max_bad_fraction`` of a column's rows: a broken column rather than a few typos. Then the
    categorical columns' values never seen in fitting (``check_categories``, a warning above the
    same share): every table that meets the fitted transform goes through here."""
    check_categories(transform, df, where, id_col, max_bad_fraction)
    ids = df[id_col].astype("string").to_numpy()
    for col in transform.numeric:
        raw = df[col].astype("string").str.strip()
        x = _as_number(df[col])
        lo, hi = transform.limits(col)
        text = (x.isna() & raw.notna() & ~raw.str.lower().isin(MISSING_WORDS)).to_numpy()
        far = ((x < lo) | (x > hi)).to_numpy()
        bad = text | far
        if not bad.any():
            continue
        words = np.array([f"'{r}'" if t else f"{v:g}" for r, v, t in zip(raw, x, text)], dtype=object)
        if bad.mean() > max_bad_fraction:
            raise DataError(f"{where}: column '{col}': {bad.sum()} of {len(df)} rows ({bad.mean():.1%}) are "
                            f"non-numbers or far outside its range ({_examples(words[bad], ids[bad])}); "
                            f"fix the column or raise features.max_bad_fraction (now {max_bad_fraction:g})")
        parts = []
        if text.any():
            parts.append(f"{text.sum()} non-number(s) ({_examples(words[text], ids[text])})")
        if far.any():
            parts.append(f"{far.sum()} value(s) far outside its range [{lo:g}, {hi:g}] "
                         f"({_examples(words[far], ids[far])})")
        print(f"warning: {where}: column '{col}': {' and '.join(parts)} are treated as missing", file=sys.stderr)
