"""The statistics of the CV report, the comparisons and the blends: arrays in, numbers out (no files,
no printing).

- ``auc``: the ROC AUC of every reported figure (sklearn's ``roc_auc_score``), NaN with one class.
- the grouped bootstrap: ``group_codes`` numbers the groups (patients), ``draw_groups`` draws them with
  replacement, ``group_counts`` / ``row_weights`` say how often each group / row is in a replicate,
  ``weighted_auc`` and ``bootstrap_auc`` give the AUC of each replicate without copying rows, and
  ``percentile_interval`` the 95% interval of the replicates.
- ``paired_difference``: experiment minus baseline on the same replicates.
- ``fold_aucs`` and ``fold_ranks``: per fold, since each fold is scored by a different model.

``weighted_auc`` without weights is the exact AUC (the share of positive-negative pairs in order, ties
half), rounded once; ``auc`` sums sklearn's trapezoids and can differ from it in the last bit, so the
reported figures stay ``auc``'s and ``weighted_auc`` serves where many candidates are scored (a
blend's weights) and where equal AUCs must compare equal.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def auc(target, pred) -> float:
    """ROC AUC (sklearn's ``roc_auc_score``: tied predictions count half); NaN when ``target``
    holds a single class."""
    return float(roc_auc_score(target, pred)) if len(np.unique(target)) == 2 else float("nan")


def fold_aucs(target: np.ndarray, pred: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """``auc`` of each fold's rows, the folds in increasing order (NaN for a fold of one class)."""
    target, pred, fold = np.asarray(target), np.asarray(pred), np.asarray(fold)
    return np.array([auc(target[fold == f], pred[fold == f]) for f in np.unique(fold)], dtype=np.float64)


def fold_ranks(pred: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
    """Each prediction's rank within its fold (all one fold when ``fold`` is None) scaled to [0, 1],
    ties sharing their mean rank: only the order of a model's scores compares between models."""
    s = pd.Series(np.asarray(pred, dtype=np.float64))
    fold = np.zeros(len(s)) if fold is None else fold
    rank = s.groupby(fold).rank(method="average").to_numpy()
    n = s.groupby(fold).transform("size").to_numpy()
    return np.where(n > 1, (rank - 1) / np.maximum(n - 1, 1), 0.5)


# ---------------------------------------------------------------- the grouped bootstrap

def group_codes(groups: pd.Series | None, n: int) -> np.ndarray:
    """0..G-1 per row; without groups, and for a blank group, each row is a group of its own."""
    if groups is None:
        return np.arange(n)
    codes, uniques = pd.factorize(groups, use_na_sentinel=True)
    blank = codes < 0
    codes[blank] = len(uniques) + np.arange(int(blank.sum()))
    return codes


def draw_groups(n_groups: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_groups) indices of the groups drawn, with replacement, for each replicate."""
    return rng.integers(0, n_groups, size=(n_boot, n_groups))


def group_counts(draws: np.ndarray, n_groups: int) -> np.ndarray:
    """(replicates, groups): how often each group was drawn in each replicate."""
    n_boot = len(draws)
    offsets = draws + n_groups * np.arange(n_boot)[:, None]
    return np.bincount(offsets.ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups)


def row_weights(draws: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(replicates, rows): how often each row is in each replicate, i.e. how often its group was
    drawn; all rows of a patient go in together, as often as the patient was drawn."""
    return group_counts(draws, draws.shape[1])[:, codes]


def _auc_plan(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    """What a weighted AUC needs of the predictions, whatever the weights: the positives, the
    negatives in order of pred, and for each positive how many negatives score below it and how
    many score below or equal (ties count 1/2)."""
    pos, neg = np.flatnonzero(target == 1), np.flatnonzero(target == 0)
    neg = neg[np.argsort(pred[neg], kind="stable")]
    below = np.searchsorted(pred[neg], pred[pos], side="left")
    upto = np.searchsorted(pred[neg], pred[pos], side="right")
    return pos, neg, below, upto


def _weighted(w_pos: np.ndarray, w_neg: np.ndarray, below: np.ndarray, upto: np.ndarray) -> np.ndarray:
    """Weighted AUC per replicate from the positives' weights and the sorted negatives' weights."""
    cum = np.zeros((len(w_neg), w_neg.shape[1] + 1))
    np.cumsum(w_neg, axis=1, out=cum[:, 1:])
    # a positive beats the negatives below it and half of those it ties with
    num = 0.5 * (w_pos * (cum[:, below] + cum[:, upto])).sum(axis=1)
    den = w_pos.sum(axis=1) * cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_auc(pred: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUC for each row of ``weights`` (replicates x rows), a row counted as often as its weight:
    the same as ``auc`` on the resampled rows, without copying them. NaN where a replicate holds
    one class only. Without weights each row counts once: one exact AUC, rounded once."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target)
    pos, neg, below, upto = _auc_plan(pred, target)
    w = np.ones((1, len(target))) if weights is None else np.atleast_2d(weights)
    return _weighted(w[:, pos], w[:, neg], below, upto)


def bootstrap_auc(preds: np.ndarray, target: np.ndarray, codes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(replicates, experiments) AUCs of the columns of ``preds`` (rows x experiments), every
    experiment on the same resampled groups in each replicate (so differences are paired)."""
    preds = preds.reshape(len(target), -1)
    out = np.full((len(draws), preds.shape[1]), np.nan)
    plans = [_auc_plan(preds[:, e], target) for e in range(preds.shape[1])]
    step = max(1, 2_000_000 // max(1, len(target)))  # bounds the weights gathered at once to ~16 MB
    for s in range(0, len(draws), step):
        counts = group_counts(draws[s:s + step], draws.shape[1]).astype(np.float64)
        for e, (pos, neg, below, upto) in enumerate(plans):
            out[s:s + step, e] = _weighted(counts[:, codes[pos]], counts[:, codes[neg]], below, upto)
    return out


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite values (NaN, NaN when there are none)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(boot: np.ndarray, base_boot: np.ndarray, value: float,
                      base_value: float) -> tuple[float, float, float, float]:
    """An experiment's AUC minus the baseline's: the difference, its 95% interval from the same
    replicates of both (``boot``, ``base_boot``) and the share of replicates where it is <= 0 (a
    one-sided bootstrap p; NaN without replicates)."""
    diff = boot - base_boot
    finite = diff[np.isfinite(diff)]
    lo, hi = percentile_interval(diff)
    return value - base_value, lo, hi, float((finite <= 0).mean()) if len(finite) else float("nan")


def replicates(frame: pd.DataFrame, n: int, n_boot: int, seed: int):
    """The aligned frame's ``n`` predictions (a column each), its group codes, each prediction's pooled
    AUC and its AUC in each of ``n_boot`` grouped-bootstrap replicates (the same draws for all)."""
    target = frame["target"].to_numpy()
    preds = np.column_stack([frame[f"pred:{k}"].to_numpy() for k in range(n)])
    codes = group_codes(frame["group"] if frame.attrs.get("group_col") else None, len(frame))
    boot = bootstrap_auc(preds, target, codes, draw_groups(codes.max() + 1, n_boot, np.random.default_rng(seed)))
    return preds, codes, np.array([auc(target, preds[:, k]) for k in range(n)]), boot
