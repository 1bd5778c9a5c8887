"""The diagnosis: a multi-class target beside the binary one, as the winning SIIM-ISIC 2020
solutions trained (nevus, melanoma, seborrheic keratosis, ...).

With ``data.diagnosis_col`` the classes are read from the training rows (own and external): a class
with fewer than ``data.diagnosis_min_rows`` rows is grouped into ``other``; a missing or
``unknown`` diagnosis is left out of the diagnosis loss only (code -1). The classes are saved with
the experiment (``features.json``, key ``diagnosis``), and a test table that has the column is
checked against them. With ``train.aux_weight > 0`` the model gets a second head, one logit per
class (pipeline/model/net.py), trained with cross-entropy (pipeline/model/mixup.py).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, first_few
from pipeline.data.tables import MISSING_WORDS

OTHER = "other"


def clean(values: pd.Series) -> pd.Series:
    """The diagnosis as text, stripped; NA where missing or a word for missing ('unknown')."""
    text = values.astype("string").str.strip()
    return text.mask(text.str.lower().isin(MISSING_WORDS))


@dataclass
class Diagnosis:
    column: str
    classes: list          # the diagnosis head's outputs, in this order
    grouped: list          # rarer classes seen in training, counted as 'other'
    melanoma: str          # the class that is target 1

    @classmethod
    def fit(cls, values: pd.Series, column: str, min_rows: int, melanoma: str) -> "Diagnosis":
        counts = clean(values).value_counts()
        common = sorted(c for c, n in counts.items() if n >= min_rows or c == melanoma)
        grouped = sorted(c for c in counts.index if c not in common)
        return cls(column, common + ([OTHER] if grouped else []), grouped, melanoma)

    @property
    def melanoma_index(self) -> int | None:
        return self.classes.index(self.melanoma) if self.melanoma in self.classes else None

    def codes(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(class index per row, -1 where missing; rows whose class was never seen in training)."""
        text = clean(values)
        index = {c: k for k, c in enumerate(self.classes)}
        index.update({c: index[OTHER] for c in self.grouped})
        codes = text.map(index).astype("Float64").fillna(-1).astype(np.int64).to_numpy()
        unseen = (text.notna() & ~text.isin(list(index))).to_numpy()
        return codes, unseen

    def shares(self, codes: np.ndarray) -> np.ndarray:
        """Each class's share of the rows with a known diagnosis (uniform when none is known)."""
        known = codes[codes >= 0]
        if not len(known):
            return np.full(len(self.classes), 1 / len(self.classes))
        return np.bincount(known, minlength=len(self.classes)) / len(known)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Diagnosis | None":
        return cls(**d) if d else None


def check_contradictions(df: pd.DataFrame, diag: Diagnosis, target_col: str, id_col: str, where: str,
                         limit: float) -> None:
    """Target 1 with a known diagnosis other than the melanoma class, or the melanoma class with
    target 0: listed with their count and ids; more than ``limit`` of the rows is a DataError."""
    text, y = clean(df[diag.column]), df[target_col].to_numpy()
    is_mel = (text == diag.melanoma).fillna(False).to_numpy()
    bad = (text.notna().to_numpy() & (y == 1) & ~is_mel) | (is_mel & (y == 0))
    if not bad.any():
        return
    shown = first_few([f"{i} ({d}, target {t})" for i, d, t in zip(df[id_col][bad], text[bad], y[bad])], 3)
    what = (f"{where}: column '{diag.column}' contradicts '{target_col}' in {int(bad.sum())} of {len(df)} rows "
            f"(target 1 with another class, or {diag.melanoma} with target 0): {shown}")
    if bad.mean() > limit:
        raise DataError(f"{what}; fix the table or raise data.max_contradictions (now {limit})")
    print(f"warning: {what}", file=sys.stderr)


def check_test(diag: Diagnosis, test: pd.DataFrame, id_col: str, where: str) -> None:
    """A test table with the diagnosis column may hold only classes seen in training."""
    if diag.column not in test.columns:
        return
    _, unseen = diag.codes(test[diag.column])
    if unseen.any():
        shown = first_few([f"{i} ({d})" for i, d in zip(test[id_col][unseen], clean(test[diag.column])[unseen])], 3)
        raise DataError(f"{where}: column '{diag.column}' has class(es) never seen in the training rows "
                        f"({', '.join(diag.classes)}): {shown}")
