"""Tabular meta features, fitted once and saved with the experiment.

Categorical columns become one-hot vectors with a ``missing`` level (NaN and categories unseen
at fit time land there); numeric columns are standardised with a missing flag; optionally
log1p(number of images of the group), log(image file size) and the image's file-size z-score and
rank among its group's images (the 2020 winners' context features). The fitted state is plain JSON, so inference applies
exactly the transform the model was trained with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "__missing__"


def _as_category(series: pd.Series) -> pd.Series:
    s = series.astype("string").str.strip().str.lower()
    return s.fillna(MISSING).replace({"": MISSING, "nan": MISSING, "unknown": MISSING})


def _as_number(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype("string").str.strip(), errors="coerce").astype("float64")


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
        self.stats: dict[str, list[float]] = {}

    @classmethod
    def from_config(cls, cfg) -> "MetaTransform":
        f = cfg.features
        return cls(f.categorical, f.numeric, f.n_images, cfg.data.group_col, f.file_size, f.group_context)

    def _groups(self, df: pd.DataFrame) -> pd.Series:
        """Group ids; a row without one (or no group column at all) is its own group."""
        if not self.group_col:
            return pd.Series(np.arange(len(df)).astype(str), index=df.index)
        g = df[self.group_col].astype("string")
        return g.fillna(pd.Series("__row_" + np.arange(len(df)).astype(str), index=df.index))

    def fit(self, df: pd.DataFrame) -> "MetaTransform":
        for col in self.categorical:
            seen = sorted(set(_as_category(df[col])) - {MISSING})
            self.levels[col] = seen + [MISSING]
        for col in self.numeric:
            x = _as_number(df[col])
            mean = float(x.mean()) if x.notna().any() else 0.0
            std = float(x.std()) if x.notna().sum() > 1 else 1.0
            self.stats[col] = [mean, std if std > 0 else 1.0]
        if self.file_size:
            x = np.log(df["image_bytes"].astype(float).clip(lower=1))
            self.stats["log_file_size"] = [float(x.mean()), float(x.std()) or 1.0]
        return self

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
            mean, std = self.stats[col]
            x = _as_number(df[col])
            blocks.append(np.stack([((x - mean) / std).fillna(0.0), x.isna().astype(float)], 1))
        groups = self._groups(df)
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
