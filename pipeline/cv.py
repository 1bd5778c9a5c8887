"""Cross-validation report of an experiment's out-of-fold predictions.

    python -m pipeline.cv oof/<experiment>

Prints AUC per fold, the mean and standard deviation of the fold AUCs, the pooled OOF AUC, rows
and positives per fold, and writes roc.png into the experiment folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .io import atomic_write


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
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def report(exp_dir: str | Path, plot: bool = True) -> dict:
    exp_dir = Path(exp_dir)
    path = exp_dir / "oof.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no OOF predictions yet (train some folds first)")
    oof = pd.read_csv(path)
    if oof.empty:
        raise ValueError(f"{path}: no rows")
    folds = fold_report(oof)
    pooled = roc_auc_score(oof["target"], oof["pred"]) if oof["target"].nunique() == 2 else float("nan")
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
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
