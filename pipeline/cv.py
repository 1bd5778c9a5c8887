"""Cross-validation report of one experiment's out-of-fold predictions, or a comparison of several.

    python -m pipeline.cv oof/<experiment>
    python -m pipeline.cv oof/a oof/b oof/c --baseline a [--bootstrap 1000] [--seed 0] [--out DIR] [--no-plot]

One experiment: AUC per fold, the mean and standard deviation of the fold AUCs, the pooled OOF AUC,
rows and positives per fold, and roc.png in the experiment folder (as before); then the pooled AUC's
95% interval, the pooled AUC of per-fold ranks and the training effort from the folds' log.csv.

Several experiments (trained on the same rows and the same folds) print one row each:

- pooled OOF AUC with a 95% percentile interval from a bootstrap of *groups* (the patient column of
  oof.csv: the column between the id and ``fold``, else ``patient_id``; without one each row is its
  own group). A patient's images are correlated, so resampling rows would pretend there are more
  independent observations than there are and make the interval too narrow.
- mean +- std of the fold AUCs, and the pooled AUC of per-fold rank-normalised predictions: when it
  differs from the pooled AUC, the folds' models are calibrated differently and the pooled figure
  mixes scales (a submission averages the folds, so the fold AUCs are the better guide then).
- epochs run and training minutes (train_s + val_s) summed over the folds' ``fold<k>/log.csv``.
- with ``--baseline``: the paired difference of pooled AUC to the baseline, its 95% interval from the
  same resampled patients for both experiments in each replicate, and the share of replicates where
  it is <= 0 (a one-sided bootstrap p; its resolution is 1/--bootstrap).
- the per-fold AUCs with grouped-bootstrap intervals, and the Pearson correlation of the experiments'
  predictions (aligned by id) and of their per-fold ranks.

There is deliberately no DeLong test: its variance treats every row as independent. With several
correlated images per patient that is not so and its p-values come out too small. On simulated data
(3000 rows, two experiments) the standard error of the AUC difference was 0.0129 by DeLong and 0.0224
by the paired grouped bootstrap with 16 images per patient (the ISIC 2020 average), 0.0131 vs 0.0158
with 5, and 0.0122 vs 0.0125 with one image per patient. So where DeLong is valid the bootstrap gives
the same answer, and where it is not it would only add a second, over-confident figure.

The bootstrap uses one numpy Generator seeded by --seed: the same experiments and seed give the
same numbers, and an experiment's interval does not depend on which others it is compared with
(all replicates resample the shared patients).

Files (all written atomically) go to --out, by default ``<parent of the first experiment>/compare/
<name>+<name>...`` (``oof/compare/a+b``; ``oof/compare/a`` for one experiment): never into an
experiment folder, where they would be files that train.py --force refuses to delete.
compare.csv (the comparison table), folds.csv (fold AUCs with intervals), correlation.csv, and unless
--no-plot: roc.png, fold_auc.png, learning_curves.png, calibration.png, pred_by_class.png and
report.html, one self-contained page holding the tables and the pictures (inline, no network).
Experiments on different rows, folds or targets are refused with one line naming both folders.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .cli import guarded
from .errors import ConfigError, DataError
from .tables import few, parse_csv, parse_csv_as_text

COLUMNS = ["fold", "target", "pred"]


def read_oof(path: str | Path) -> pd.DataFrame:
    """The OOF table at ``path`` with int fold and target, float pred, and the id (its first column,
    unless that is one of COLUMNS) as text. Anything malformed raises DataError: one line starting
    with the path, naming the column and the first few ids (or file lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no OOF predictions yet (train some folds first)")
    oof = parse_csv_as_text(path)  # a bad cell is shown as it is ('nan')
    missing = [c for c in COLUMNS if c not in oof.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(oof.columns)})")
    if oof.empty:
        raise DataError(f"{path}: no rows")
    id_col = oof.columns[0] if oof.columns[0] not in COLUMNS else None
    lines = "line " + pd.Series(oof.index + 2, index=oof.index).astype("string")  # the header is line 1
    if id_col and oof[id_col].isna().any():
        raise DataError(f"{path}: column '{id_col}' is blank at {few(lines[oof[id_col].isna()])}")
    if id_col and oof[id_col].duplicated().any():
        dup = oof[id_col][oof[id_col].duplicated()].unique()
        raise DataError(f"{path}: duplicate ids in column '{id_col}': {few(dup)}")
    where = oof[id_col] if id_col else lines
    numbers = {c: pd.to_numeric(oof[c], errors="coerce").astype("float64") for c in COLUMNS}
    for col, bad, must in [("target", ~numbers["target"].isin([0, 1]), "0 or 1"),
                           ("pred", ~np.isfinite(numbers["pred"]), "a finite number"),
                           ("fold", numbers["fold"] % 1 != 0, "a whole number")]:
        if bad.any():
            shown = ("'" + oof[col] + "'").fillna("blank")
            raise DataError(f"{path}: column '{col}' must be {must}; found {few(shown[bad] + ' at ' + where[bad])}")
    return oof.assign(fold=numbers["fold"].astype(np.int64), target=numbers["target"].astype(np.int64),
                      pred=numbers["pred"])


def fold_report(oof: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fold, g in oof.groupby("fold"):
        rows.append({"fold": int(fold), "rows": len(g), "positives": int(g["target"].sum()),
                     "auc": safe_auc(g["target"], g["pred"])})
    return pd.DataFrame(rows)


def plot_roc(oof: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for fold, g in oof.groupby("fold"):
        if g["target"].nunique() == 2:
            fpr, tpr, _ = roc_curve(g["target"], g["pred"])
            ax.plot(fpr, tpr, lw=1, alpha=0.6, label=f"fold {fold}: {roc_auc_score(g['target'], g['pred']):.3f}")
    fpr, tpr, _ = roc_curve(oof["target"], oof["pred"])
    ax.plot(fpr, tpr, lw=2.5, color="black", label=f"pooled OOF: {roc_auc_score(oof['target'], oof['pred']):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from .io import atomic_write  # imports torch: not needed to report a malformed table
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def read_experiment(exp_dir: Path) -> pd.DataFrame:
    """``exp_dir``'s oof.csv, checked, with both classes (AUC needs them)."""
    path = exp_dir / "oof.csv"
    oof = read_oof(path)
    if oof["target"].nunique() < 2:
        raise DataError(f"{path}: column 'target' is {oof['target'].iloc[0]} in all {len(oof)} rows; "
                        f"AUC needs both classes")
    return oof


def report(exp_dir: str | Path, plot: bool = True) -> dict:
    exp_dir = Path(exp_dir)
    oof = read_experiment(exp_dir)
    folds = fold_report(oof)
    pooled = roc_auc_score(oof["target"], oof["pred"])
    print(f"CV of {exp_dir}")
    print(folds.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"fold AUC mean {folds['auc'].mean():.4f} +- {folds['auc'].std(ddof=0):.4f} over {len(folds)} fold(s)")
    print(f"pooled OOF AUC {pooled:.4f} ({len(oof)} rows, {int(oof['target'].sum())} positives)")
    out = {"fold_auc": dict(zip(folds["fold"], folds["auc"])), "mean_auc": float(folds["auc"].mean()),
           "std_auc": float(folds["auc"].std(ddof=0)), "pooled_auc": float(pooled), "rows": len(oof)}
    if plot:
        png = plot_roc(oof, exp_dir / "roc.png", f"{exp_dir.name}: ROC")
        print(f"ROC curve: {png}")
    return out


# ---------------------------------------------------------------- groups and the grouped bootstrap

def id_column(oof: pd.DataFrame) -> str | None:
    return oof.columns[0] if oof.columns[0] not in COLUMNS else None


def group_column(oof: pd.DataFrame) -> str | None:
    """The patient column: the one between the id and ``fold`` (where train.py writes data.group_col),
    else one named ``patient_id``; None when there is neither."""
    cols = list(oof.columns)
    if id_column(oof) and len(cols) > 2 and cols[1] not in COLUMNS and cols[2] == "fold":
        return cols[1]
    return "patient_id" if "patient_id" in cols and cols[0] != "patient_id" else None


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


def auc_plan(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    """What a weighted AUC needs of the predictions, whatever the weights: the positives, the
    negatives in order of pred, and for each positive how many negatives score below it and how
    many score below or equal (ties count 1/2)."""
    pos, neg = np.flatnonzero(target == 1), np.flatnonzero(target == 0)
    neg = neg[np.argsort(pred[neg], kind="stable")]
    below = np.searchsorted(pred[neg], pred[pos], side="left")
    upto = np.searchsorted(pred[neg], pred[pos], side="right")
    return pos, neg, below, upto


def _auc(w_pos: np.ndarray, w_neg: np.ndarray, below: np.ndarray, upto: np.ndarray) -> np.ndarray:
    """Weighted AUC per replicate from the positives' weights and the sorted negatives' weights."""
    cum = np.zeros((len(w_neg), w_neg.shape[1] + 1))
    np.cumsum(w_neg, axis=1, out=cum[:, 1:])
    # a positive beats the negatives below it and half of those it ties with
    num = 0.5 * (w_pos * (cum[:, below] + cum[:, upto])).sum(axis=1)
    den = w_pos.sum(axis=1) * cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_auc(pred: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of ``weights`` (replicates x rows), a row counted as often as its weight:
    the same as roc_auc_score on the resampled rows, without copying them. NaN where a replicate
    holds one class only."""
    pos, neg, below, upto = auc_plan(pred, target)
    w = np.atleast_2d(weights)
    return _auc(w[:, pos], w[:, neg], below, upto)


def bootstrap_auc(preds: np.ndarray, target: np.ndarray, codes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(replicates, experiments) AUCs of the columns of ``preds`` (rows x experiments), every
    experiment on the same resampled groups in each replicate (so differences are paired)."""
    preds = preds.reshape(len(target), -1)
    out = np.full((len(draws), preds.shape[1]), np.nan)
    plans = [auc_plan(preds[:, e], target) for e in range(preds.shape[1])]
    step = max(1, 2_000_000 // max(1, len(target)))  # bounds the weights gathered at once to ~16 MB
    for s in range(0, len(draws), step):
        counts = group_counts(draws[s:s + step], draws.shape[1]).astype(np.float64)
        for e, (pos, neg, below, upto) in enumerate(plans):
            out[s:s + step, e] = _auc(counts[:, codes[pos]], counts[:, codes[neg]], below, upto)
    return out


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def fold_ranks(pred: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
    """Each prediction's rank within its fold (all one fold when ``fold`` is None) scaled to [0, 1],
    ties sharing their mean rank: only the order of a model's scores compares between models."""
    s = pd.Series(np.asarray(pred, dtype=np.float64))
    fold = np.zeros(len(s)) if fold is None else fold
    rank = s.groupby(fold).rank(method="average").to_numpy()
    n = s.groupby(fold).transform("size").to_numpy()
    return np.where(n > 1, (rank - 1) / np.maximum(n - 1, 1), 0.5)


def safe_auc(target: np.ndarray, pred: np.ndarray) -> float:
    return float(roc_auc_score(target, pred)) if len(np.unique(target)) == 2 else float("nan")


# ---------------------------------------------------------------- experiments side by side

def labels(dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [d.name for d in dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, dirs)]


def aligned(oofs: list[pd.DataFrame], dirs: list[Path]) -> pd.DataFrame:
    """One frame: id, group (NA without one), fold, target, and one prediction column per
    experiment, the rows in the first experiment's order. Experiments on other rows, folds, targets
    or patients are refused: a difference of AUCs on other data measures nothing."""
    base, first = oofs[0], dirs[0]
    if len(oofs) > 1:
        for oof, d in zip(oofs, dirs):
            if id_column(oof) is None:
                raise DataError(f"{d / 'oof.csv'}: no id column (its first column is '{oof.columns[0]}'); "
                                f"comparing experiments needs ids to line up their rows")
    ids = base[id_column(base)] if id_column(base) else pd.Series(np.arange(len(base))).astype("string")
    frame = pd.DataFrame({"id": ids.to_numpy(), "fold": base["fold"].to_numpy(), "target": base["target"].to_numpy()})
    frame["group"] = pd.array([pd.NA] * len(frame), dtype="string")
    group_from = None
    for k, (oof, d) in enumerate(zip(oofs, dirs)):
        other = oof.set_index(id_column(oof)) if len(oofs) > 1 else oof.set_axis(frame["id"])
        only_first, only_here = frame["id"][~frame["id"].isin(other.index)], other.index[~other.index.isin(frame["id"])]
        if len(only_first) or len(only_here):
            sides = [f"{len(x)} ids only in {where}: {few(x)}"
                     for x, where in [(only_first, first), (only_here, d)] if len(x)]
            raise DataError(f"{first} and {d} hold different rows ({'; '.join(sides)}); compare experiments "
                            f"trained on the same data")
        other = other.loc[frame["id"]]
        for col, what, same in [("fold", "folds", "fold table"), ("target", "targets", "data")]:
            differ = other[col].to_numpy() != frame[col].to_numpy()
            if differ.any():
                shown = [f"{i} ({a} vs {b})" for i, a, b in zip(frame["id"][differ], frame[col][differ],
                                                                other[col].to_numpy()[differ])]
                raise DataError(f"{first} and {d} use different {what}: {few(shown)}; compare experiments "
                                f"trained on the same {same}")
        gcol = group_column(oof)
        if gcol:
            groups = other[gcol].astype("string").reset_index(drop=True)
            if group_from is None:
                frame["group"], group_from = pd.array(groups, dtype="string"), (d, gcol)
            else:
                differ = (groups.fillna("") != frame["group"].fillna("")).to_numpy()
                if differ.any():
                    shown = [f"{i} ({a} vs {b})" for i, a, b in zip(frame["id"][differ], frame["group"][differ],
                                                                    groups[differ])]
                    raise DataError(f"{group_from[0]} and {d} put rows in different groups "
                                    f"('{group_from[1]}' vs '{gcol}'): {few(shown)}")
        frame[f"pred:{k}"] = other["pred"].to_numpy()
    frame.attrs["group_col"] = group_from[1] if group_from else None
    return frame


def read_log(path: Path) -> pd.DataFrame:
    """A fold's log.csv, by column name (columns may be added later); numbers as floats."""
    if path.stat().st_size == 0:
        return pd.DataFrame()
    return parse_csv(path).apply(pd.to_numeric, errors="coerce")


def read_logs(exp_dir: Path, folds) -> pd.DataFrame:
    """The log.csv rows of the folds whose predictions are in oof.csv, with a ``fold`` column;
    columns a log lacks are NaN. Empty when no fold has a log."""
    parts = []
    for fold in sorted(set(int(f) for f in folds)):
        path = exp_dir / f"fold{fold}" / "log.csv"
        if path.is_file():
            log = read_log(path)
            parts.append(log.assign(fold=fold) if len(log) else pd.DataFrame({"fold": []}))
    logs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"fold": []})
    for col in ["epoch", "train_loss", "val_auc", "train_s", "val_s"]:
        if col not in logs.columns:
            logs[col] = np.nan
    return logs


def effort(logs: pd.DataFrame, has_logs: bool) -> tuple[float, float]:
    """Epochs run and training minutes (train + validation time); NaN where nothing was logged."""
    if not has_logs:
        return float("nan"), float("nan")
    seconds = logs[["train_s", "val_s"]].sum(axis=1, min_count=1)
    return float(len(logs)), float(seconds.sum() / 60) if seconds.notna().any() else float("nan")


def compare_table(frame: pd.DataFrame, names: list[str], dirs: list[Path], logs: list[pd.DataFrame],
                  has_logs: list[bool], n_boot: int, seed: int, baseline: int | None) -> pd.DataFrame:
    """One row per experiment: pooled AUC and its grouped-bootstrap interval, fold AUC mean and std,
    rank-normalised pooled AUC, effort and, against ``baseline`` (an index), the paired difference."""
    target, fold = frame["target"].to_numpy(), frame["fold"].to_numpy()
    preds = np.column_stack([frame[f"pred:{k}"].to_numpy() for k in range(len(names))])
    codes = group_codes(frame["group"] if frame.attrs.get("group_col") else None, len(frame))
    boot = bootstrap_auc(preds, target, codes, draw_groups(codes.max() + 1, n_boot, np.random.default_rng(seed)))
    pooled = [safe_auc(target, preds[:, k]) for k in range(len(names))]
    rows = []
    for k, name in enumerate(names):
        fold_auc = pd.Series([safe_auc(target[fold == f], preds[fold == f, k]) for f in np.unique(fold)])
        epochs, minutes = effort(logs[k], has_logs[k])
        row = {"experiment": name, "path": str(dirs[k]), "rows": len(frame), "groups": int(codes.max() + 1),
               "positives": int(target.sum()), "folds": len(fold_auc), "pooled_auc": pooled[k]}
        row["pooled_lo"], row["pooled_hi"] = percentile_interval(boot[:, k])
        row.update(fold_auc_mean=float(fold_auc.mean()), fold_auc_std=float(fold_auc.std(ddof=0)),
                   rank_auc=safe_auc(target, fold_ranks(preds[:, k], fold)), epochs=epochs, train_min=minutes,
                   baseline=names[baseline] if baseline is not None else None)
        diff = boot[:, k] - boot[:, baseline] if baseline is not None else np.full(n_boot, np.nan)
        finite = diff[np.isfinite(diff)]
        row["diff"] = pooled[k] - pooled[baseline] if baseline is not None else float("nan")
        row["diff_lo"], row["diff_hi"] = percentile_interval(diff)
        row["p_diff_le_0"] = float((finite <= 0).mean()) if len(finite) else float("nan")
        row.update(n_bootstrap=n_boot, seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)


def fold_auc_table(frame: pd.DataFrame, names: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    """Long table: experiment, fold, rows, positives, AUC and its 95% interval from a bootstrap of
    the groups within the fold (the same draws for every experiment)."""
    grouped = frame.attrs.get("group_col")
    rows = []
    for pos, (f, part) in enumerate(frame.groupby("fold", sort=True)):
        target = part["target"].to_numpy()
        codes = group_codes(part["group"].reset_index(drop=True) if grouped else None, len(part))
        codes = pd.factorize(codes)[0]
        preds = np.column_stack([part[f"pred:{k}"].to_numpy() for k in range(len(names))])
        draws = draw_groups(codes.max() + 1, n_boot, np.random.default_rng([seed, 1 + pos]))
        boot = bootstrap_auc(preds, target, codes, draws)
        for k, name in enumerate(names):
            lo, hi = percentile_interval(boot[:, k])
            rows.append({"experiment": name, "fold": int(f), "rows": len(part), "positives": int(target.sum()),
                         "auc": safe_auc(target, preds[:, k]), "auc_lo": lo, "auc_hi": hi})
    return pd.DataFrame(rows)


def correlations(frame: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pearson correlation of the experiments' predictions, and of their per-fold ranks (which
    ignores how each fold's model happens to be calibrated)."""
    preds = pd.DataFrame({n: frame[f"pred:{k}"].to_numpy() for k, n in enumerate(names)})
    ranks = pd.DataFrame({n: fold_ranks(preds[n].to_numpy(), frame["fold"].to_numpy()) for n in names})
    return preds.corr(), ranks.corr()


def groups_across_folds(frame: pd.DataFrame) -> list[str]:
    """Groups with rows in more than one fold: their images leak between training and validation."""
    if not frame.attrs.get("group_col"):
        return []
    n = frame.dropna(subset=["group"]).groupby("group")["fold"].nunique()
    return list(n.index[n > 1])


def default_out(dirs: list[Path], names: list[str]) -> Path:
    """``<parent of the first>/compare/<a>+<b>...``; long lists keep the first name and a hash."""
    joined = "+".join(Path(n).name for n in names)
    if len(joined) > 100:
        digest = hashlib.sha1("\0".join(str(d.resolve()) for d in dirs).encode()).hexdigest()[:8]
        joined = f"{Path(names[0]).name}+{len(names) - 1}-more-{digest}"
    return dirs[0].parent / "compare" / joined


def pick_baseline(baseline: str | None, dirs: list[Path], names: list[str]) -> int | None:
    if baseline is None:
        return None
    hits = [k for k, (d, n) in enumerate(zip(dirs, names))
            if baseline in (n, d.name, str(d)) or Path(baseline).resolve() == d.resolve()]
    if len(set(dirs[k].resolve() for k in hits)) != 1:
        how = "matches several; give its path" if hits else f"is not one of {', '.join(map(str, dirs))}"
        raise ConfigError(f"--baseline {baseline}: {how}")
    return hits[0]


# ---------------------------------------------------------------- printing

def _f(v: float, spec: str = ".4f") -> str:
    return "" if v is None or not np.isfinite(v) else format(v, spec)


def _interval(lo: float, hi: float, spec: str = ".4f") -> str:
    return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{lo:{spec}} to {hi:{spec}}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as text, as printed and shown in report.html."""
    out = pd.DataFrame({
        "experiment": table["experiment"],
        "pooled AUC": table["pooled_auc"].map(_f),
        "95% interval": [_interval(a, b) for a, b in zip(table["pooled_lo"], table["pooled_hi"])],
        "fold AUC mean +- std": [f"{_f(m)} +- {_f(s)}" for m, s in zip(table["fold_auc_mean"], table["fold_auc_std"])],
        "rank AUC": table["rank_auc"].map(_f),
        "epochs": table["epochs"].map(lambda v: _f(v, ".0f")),
        "train min": table["train_min"].map(lambda v: _f(v, ".1f")),
    })
    if table["baseline"].notna().any():
        base = table["baseline"].iloc[0]
        n_boot = int(table["n_bootstrap"].iloc[0])
        is_base = table["experiment"] == base
        out["diff"] = [("baseline" if b else _f(v, "+.4f")) for v, b in zip(table["diff"], is_base)]
        out["diff 95% interval"] = [("" if b else _interval(lo, hi, "+.4f"))
                                    for lo, hi, b in zip(table["diff_lo"], table["diff_hi"], is_base)]
        out["share <= 0"] = [("" if b else ("" if not np.isfinite(p) else
                                            f"<{1 / n_boot:.3g}" if p == 0 else f"{p:.3f}"))
                             for p, b in zip(table["p_diff_le_0"], is_base)]
    return out


def display_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Folds down, experiments across: 'AUC (lo to hi)'."""
    cell = [f"{_f(a)} ({_interval(lo, hi, '.3f')})" if np.isfinite(lo) else _f(a)
            for a, lo, hi in zip(folds["auc"], folds["auc_lo"], folds["auc_hi"])]
    wide = folds.assign(cell=cell).pivot(index="fold", columns="experiment", values="cell")
    wide = wide[list(dict.fromkeys(folds["experiment"]))]
    counts = folds.drop_duplicates("fold").set_index("fold")[["rows", "positives"]]
    return counts.join(wide).reset_index().rename_axis(columns=None)


def bootstrap_note(frame: pd.DataFrame, n_boot: int, seed: int) -> str:
    gcol = frame.attrs.get("group_col")
    n_groups = int(group_codes(frame["group"] if gcol else None, len(frame)).max() + 1)
    unit = f"{n_groups} '{gcol}' groups" if gcol else f"{len(frame)} rows (no group column: each row is a group)"
    return f"percentiles of {n_boot} bootstrap replicates of {unit}, seed {seed}"


def summary_line(frame: pd.DataFrame, n_boot: int, seed: int) -> str:
    return (f"{len(frame)} rows, {int(frame['target'].sum())} positives, {frame['fold'].nunique()} folds; "
            f"95% intervals: {bootstrap_note(frame, n_boot, seed)}")


# ---------------------------------------------------------------- the command

def compare(exp_dirs: list, baseline: str | None = None, plot: bool = True, n_boot: int = 1000, seed: int = 0,
            out: str | Path | None = None) -> dict:
    """Compare the experiments in ``exp_dirs`` (one works too), print the tables, write them (and
    unless ``plot`` is False the pictures and report.html) to ``out``. Returns the tables."""
    # `.` names no experiment (and its parent would be the experiment itself): use the real folder
    dirs = [Path(d).resolve() if Path(d).name in ("", ".", "..") else Path(d) for d in exp_dirs]
    seen = {}
    for d in dirs:
        if d.resolve() in seen:
            raise ConfigError(f"{d}: given twice (also as {seen[d.resolve()]})")
        seen[d.resolve()] = d
    names = labels(dirs)
    base = pick_baseline(baseline, dirs, names)
    oofs = [read_experiment(d) for d in dirs]
    frame = aligned(oofs, dirs)
    logs = [read_logs(d, frame["fold"].unique()) for d in dirs]
    has_logs = [any((d / f"fold{int(f)}" / "log.csv").is_file() for f in frame["fold"].unique()) for d in dirs]
    table = compare_table(frame, names, dirs, logs, has_logs, n_boot, seed, base)
    folds = fold_auc_table(frame, names, n_boot, seed)
    corr, rank_corr = correlations(frame, names)
    out = Path(out) if out is not None else default_out(dirs, names)
    leaks = groups_across_folds(frame)

    if len(dirs) == 1:
        row = table.iloc[0]
        print(f"pooled OOF AUC 95% interval {_interval(row['pooled_lo'], row['pooled_hi'])} "
              f"({bootstrap_note(frame, n_boot, seed)})")
        print(f"pooled AUC of per-fold ranks {_f(row['rank_auc'])}")
        if has_logs[0]:
            print(f"training: {_f(row['epochs'], '.0f')} epochs, {_f(row['train_min'], '.1f')} min (fold*/log.csv)")
    else:
        print(f"Compare {len(dirs)} experiments: {summary_line(frame, n_boot, seed)}")
        shown = display_table(table)
        shown["experiment"] = shown["experiment"].str.ljust(shown["experiment"].str.len().max())
        print(shown.to_string(index=False, justify="left"))
        print("\nfold AUC (95% interval: bootstrap of the groups within the fold)")
        print(display_folds(folds).to_string(index=False))
        print("\ncorrelation of pred")
        print(corr.to_string(float_format=lambda v: f"{v:.3f}"))
        print("\ncorrelation of per-fold ranks")
        print(rank_corr.to_string(float_format=lambda v: f"{v:.3f}"))
    if leaks:
        print(f"note: {len(leaks)} '{frame.attrs['group_col']}' group(s) have rows in several folds "
              f"({few(leaks)}): their images leak between training and validation")

    from .io import atomic_write  # imports torch: not needed to report a malformed table
    written = []
    for name, df in [("compare.csv", table), ("folds.csv", folds),
                     ("correlation.csv", pd.concat([corr.assign(of="pred"), rank_corr.assign(of="fold rank")])
                      .rename_axis("experiment").reset_index())]:
        written.append(atomic_write(out / name, lambda p, df=df: df.to_csv(p, index=False)))
    if plot:
        from .report import write_report
        preds = {n: frame[f"pred:{k}"].to_numpy() for k, n in enumerate(names)}
        written += write_report(out, frame["target"].to_numpy(), preds, table, folds, dict(zip(names, logs)),
                                tables={"Comparison": display_table(table), "Fold AUC": display_folds(folds),
                                        **({"Correlation of pred": corr, "Correlation of per-fold ranks": rank_corr}
                                           if len(names) > 1 else {})},
                                summary=summary_line(frame, n_boot, seed), notes=[
                                    f"{len(leaks)} '{frame.attrs['group_col']}' group(s) have rows in several "
                                    f"folds ({few(leaks)})"] if leaks else [])
    print(f"written to {out}/: {', '.join(p.name for p in written)}")
    return {"table": table, "folds": folds, "corr": corr, "rank_corr": rank_corr, "out": out, "files": written}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="CV report of an experiment's OOF predictions, or a comparison of several experiments "
                    "trained on the same rows and folds.")
    parser.add_argument("exp_dirs", nargs="+", metavar="exp_dir", help="experiment folder(s), e.g. oof/sample")
    parser.add_argument("--baseline", help="folder name or path of one of the experiments: paired differences to it")
    parser.add_argument("--no-plot", action="store_true", help="skip the pictures and report.html (tables only)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap replicates of the patients (default 1000; 0: no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--out", help="folder for compare.csv, the pictures and report.html "
                                      "(default <parent of the first experiment>/compare/<a>+<b>...)")
    args = parser.parse_args(argv)
    if args.bootstrap < 0 or args.seed < 0:
        parser.error("--bootstrap and --seed must be >= 0")
    # `oof/*` also names the comparisons' default output folder, oof/compare: not an experiment
    outputs = [d for d in args.exp_dirs if Path(d).name == "compare" and not (Path(d) / "oof.csv").exists()]
    exp_dirs = [d for d in args.exp_dirs if d not in outputs] if len(outputs) < len(args.exp_dirs) else args.exp_dirs
    if len(exp_dirs) < len(args.exp_dirs):
        print(f"skipping {', '.join(outputs)}: the output folder of comparisons, not an experiment")

    def run():
        if len(exp_dirs) == 1:  # as before, then the interval and the files of a comparison
            pick_baseline(args.baseline, [Path(exp_dirs[0])], labels([Path(exp_dirs[0])]))
            report(exp_dirs[0], plot=not args.no_plot)
        compare(exp_dirs, args.baseline, plot=not args.no_plot, n_boot=args.bootstrap, seed=args.seed, out=args.out)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
