"""Tabular meta features, fitted once and saved with the experiment.

Categorical columns become one-hot vectors with a ``missing`` level (NaN and categories unseen
at fit time land there); numeric columns are standardised with a missing flag; optionally
log1p(number of images of the group). The fitted state is plain JSON, so inference applies
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
    def __init__(self, categorical: list[str], numeric: list[str], n_images: bool, group_col: str):
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.n_images = n_images
        self.group_col = group_col
        self.levels: dict[str, list[str]] = {}
        self.stats: dict[str, list[float]] = {}

    def fit(self, df: pd.DataFrame) -> "MetaTransform":
        for col in self.categorical:
            seen = sorted(set(_as_category(df[col])) - {MISSING})
            self.levels[col] = seen + [MISSING]
        for col in self.numeric:
            x = _as_number(df[col])
            mean = float(x.mean()) if x.notna().any() else 0.0
            std = float(x.std()) if x.notna().sum() > 1 else 1.0
            self.stats[col] = [mean, std if std > 0 else 1.0]
        return self

    @property
    def names(self) -> list[str]:
        out = [f"{c}={lvl}" for c in self.categorical for lvl in self.levels[c]]
        out += [n for c in self.numeric for n in (c, f"{c}_missing")]
        return out + (["log1p_n_images"] if self.n_images else [])

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
        if self.n_images:
            groups = df[self.group_col].astype("string")
            counts = groups.map(groups.value_counts()).fillna(1).astype(float)
            blocks.append(np.log1p(counts.to_numpy())[:, None])
        if not blocks:
            return np.zeros((len(df), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return dict(categorical=self.categorical, numeric=self.numeric, n_images=self.n_images,
                    group_col=self.group_col, levels=self.levels, stats=self.stats)

    @classmethod
    def from_dict(cls, d: dict) -> "MetaTransform":
        t = cls(d["categorical"], d["numeric"], d["n_images"], d["group_col"])
        t.levels, t.stats = d["levels"], d["stats"]
        return t
