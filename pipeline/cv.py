"""Cross-validation report of an experiment's out-of-fold predictions.

    python -m pipeline.cv oof/<experiment>

Prints AUC per fold, the mean and standard deviation of the fold AUCs, the pooled OOF AUC, rows
and positives per fold, and writes roc.png into the experiment folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import DataError, PipelineError
from .tables import few

COLUMNS = ["fold", "target", "pred"]


def read_oof(path: str | Path) -> pd.DataFrame:
    """The OOF table at ``path`` with int fold and target, float pred, and the id (its first column,
    unless that is one of COLUMNS) as text. Anything malformed raises DataError: one line starting
    with the path, naming the column and the first few ids (or file lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no OOF predictions yet (train some folds first)")
    try:
        # as written: ids keep their leading zeros, a bad cell is shown as it is ('nan'), only '' is blank
        oof = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
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
        auc = roc_auc_score(g["target"], g["pred"]) if g["target"].nunique() == 2 else float("nan")
        rows.append({"fold": int(fold), "rows": len(g), "positives": int(g["target"].sum()), "auc": auc})
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


def report(exp_dir: str | Path, plot: bool = True) -> dict:
    exp_dir = Path(exp_dir)
    path = exp_dir / "oof.csv"
    oof = read_oof(path)
    if oof["target"].nunique() < 2:
        raise DataError(f"{path}: column 'target' is {oof['target'].iloc[0]} in all {len(oof)} rows; "
                        f"AUC needs both classes")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CV report of an experiment's OOF predictions.")
    parser.add_argument("exp_dir", help="experiment folder, e.g. oof/sample")
    parser.add_argument("--no-plot", action="store_true", help="skip roc.png")
    args = parser.parse_args(argv)
    try:
        report(args.exp_dir, plot=not args.no_plot)
    except PipelineError as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
