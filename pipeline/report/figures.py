"""The pictures and the HTML page of a CV report or comparison; the numbers come from pipeline/report/cv.py
and pipeline/report/stats.py.

    python -m pipeline cv oof/a oof/b --baseline a    # -> oof/compare/a+b/report.html and five PNGs
    python -m pipeline cv oof/a                       # also oof/a/roc.png: each fold's ROC and the pooled one

Drawn with matplotlib's object interface (``Figure``, never pyplot): no global backend or figure
state is touched, so calling this from a notebook changes nothing there. report.html holds the
pictures inline (base64) and the tables as HTML: it can be mailed or opened offline, and loads
nothing from the network.
"""
from __future__ import annotations

import base64
import html
import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from pipeline.core.files import atomic_write
from pipeline.report.stats import auc

# tab10: an experiment keeps its colour in every picture
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def color(k: int) -> str:
    return COLORS[k % len(COLORS)]


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # no Software/URL metadata: the page must not hold a web address, and the bytes stay reproducible
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def legend_width(labels) -> float:
    """Inches a fontsize-8 legend of ``labels`` takes beside the axes (so the axes keep their size)."""
    return 0.07 * max(map(len, labels), default=0) + 0.7


def _note(ax, text: str) -> None:
    """An empty panel says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def roc_figure(curves: list, title: str, inside: bool, legend_title: str | None = None) -> Figure:
    """The one ROC drawer: ``curves`` holds (label, target, pred, line keywords) each, drawn over the
    chance diagonal. The legend sits inside, below the diagonal, when ``inside``, else beside the axes
    (which keep their size)."""
    width = 0 if inside else legend_width([c[0] for c in curves] + [legend_title or ""]) + 0.3
    fig = Figure(figsize=(6.4 + width, 6), dpi=110, layout="constrained")
    ax = fig.subplots()
    for label, target, pred, style in curves:
        fpr, tpr, _ = roc_curve(target, pred)
        ax.plot(fpr, tpr, label=label, **style)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    where = {"loc": "lower right"} if inside else {"loc": "upper left", "bbox_to_anchor": (1.02, 1)}
    ax.legend(**where, fontsize=8, title=legend_title, title_fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pooled_roc_figure(target: np.ndarray, preds: dict, table: pd.DataFrame) -> Figure:
    """Each experiment's pooled OOF ROC, labelled with the pooled AUC and its interval from ``table``."""
    curves = []
    for k, (name, pred) in enumerate(preds.items()):
        row = table.iloc[k]
        ci = f" ({row['pooled_lo']:.3f} to {row['pooled_hi']:.3f})" if np.isfinite(row["pooled_lo"]) else ""
        curves.append((f"{name}: {row['pooled_auc']:.4f}{ci}", target, pred, {"lw": 1.8, "color": color(k)}))
    # inside below the diagonal while short enough to stay clear of the curves
    return roc_figure(curves, "ROC of the pooled OOF predictions", inside=len(preds) <= 4,
                      legend_title="pooled AUC (95% interval)")


def fold_roc_figure(target: np.ndarray, pred: np.ndarray, fold: np.ndarray, title: str) -> Figure:
    """One experiment: the ROC of each fold holding both classes, and of the pooled OOF predictions."""
    curves = [(f"fold {f}: {auc(target[fold == f], pred[fold == f]):.3f}", target[fold == f], pred[fold == f],
               {"lw": 1, "alpha": 0.6, "color": color(k)})
              for k, f in enumerate(np.unique(fold)) if len(np.unique(target[fold == f])) == 2]
    curves.append((f"pooled OOF: {auc(target, pred):.3f}", target, pred, {"lw": 2.5, "color": "black"}))
    return roc_figure(curves, title, inside=True)


def fold_figure(folds: pd.DataFrame) -> Figure:
    names = list(dict.fromkeys(folds["experiment"]))
    fold_ids = sorted(folds["fold"].unique())
    fig = Figure(figsize=(max(5.4, 1.1 * len(fold_ids) + 1.5) + legend_width(names), 4.8), dpi=110,
                 layout="constrained")
    ax = fig.subplots()
    width = 0.6 / max(1, len(names))  # experiments side by side within a fold, never on top of each other
    for k, name in enumerate(names):
        f = folds[folds["experiment"] == name].set_index("fold").loc[fold_ids]
        x = np.arange(len(fold_ids)) + (k - (len(names) - 1) / 2) * width
        lo, hi = f["auc"] - f["auc_lo"], f["auc_hi"] - f["auc"]
        ax.errorbar(x, f["auc"], yerr=np.vstack([lo.fillna(0), hi.fillna(0)]), fmt="o", ms=5, capsize=3,
                    color=color(k), label=name)
    counts = folds.drop_duplicates("fold").set_index("fold").loc[fold_ids]
    ax.set_xticks(np.arange(len(fold_ids)),
                  [f"fold {f}\n{r} rows, {p} pos" for f, r, p in zip(fold_ids, counts["rows"], counts["positives"])],
                  fontsize=8)
    ax.set(ylabel="AUC", title="AUC per fold with 95% interval",
           xlim=(-0.5, len(fold_ids) - 0.5))  # room for the outer folds' tick labels
    ax.grid(axis="y", alpha=0.3)
    # beside the axes: a legend inside would sit on some fold's markers
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def learning_figure(logs: dict) -> Figure:
    fig = Figure(figsize=(9.5 + legend_width(logs), 4.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, label in [(axes[0], "train_loss", "train loss"), (axes[1], "val_auc", "validation AUC")]:
        drawn = False
        for k, (name, log) in enumerate(logs.items()):
            for fold, g in log.groupby("fold"):
                g = g.dropna(subset=[col])
                if len(g):
                    x = g["epoch"] if g["epoch"].notna().all() else np.arange(1, len(g) + 1)
                    ax.plot(x, g[col], color=color(k), lw=1.2, alpha=0.75, marker="o", ms=2.5)
                    drawn = True
        if drawn:
            ax.set(xlabel="epoch", ylabel=label, title=f"{label} by epoch (a line per fold)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        else:
            _note(ax, f"no {col} in any fold<k>/log.csv")
            ax.set_title(label)
    handles = [Line2D([], [], color=color(k), lw=2, label=name) for k, (name, log) in enumerate(logs.items())
               if len(log)]
    missing = [name for name, log in logs.items() if not len(log)]
    if handles:
        title = "\n".join(textwrap.wrap(f"no log.csv: {', '.join(missing)}", 30)) if missing else None
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, title=title,
                   title_fontsize=8, alignment="left")
    return fig


def near_zero(preds: dict) -> bool:
    """Probabilities crowded near 0, as with rare positives: shown on log-like axes, where a linear
    axis would squeeze most of them into one corner."""
    values = np.concatenate(list(preds.values()))
    return bool(values.min() >= 0 and values.max() <= 1 and np.median(values) < 0.1 * values.max())


def calibration_bins(target: np.ndarray, pred: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean prediction and observed positive rate in ``bins`` quantile bins of the prediction."""
    q = pd.qcut(pd.Series(pred), bins, duplicates="drop")
    return (pd.DataFrame({"pred": pred, "target": target}).groupby(q, observed=True)
            .agg(pred=("pred", "mean"), rate=("target", "mean"), n=("target", "size")).reset_index(drop=True))


def calibration_figure(target: np.ndarray, preds: dict, bins: int = 10) -> Figure:
    fig = Figure(figsize=(6.4, 6), dpi=110, layout="constrained")
    ax = fig.subplots()
    top, low = 0.0, np.inf
    for k, (name, pred) in enumerate(preds.items()):
        b = calibration_bins(target, pred, bins)
        ax.plot(b["pred"], b["rate"], marker="o", ms=4, lw=1.5, color=color(k), label=name)
        top = max(top, b["pred"].max(), b["rate"].max())
        low = min(low, np.min(b["pred"].to_numpy()[b["pred"].to_numpy() > 0], initial=np.inf), 1 / b["n"].max())
    top = min(1.0, top * 1.05) if top > 0 else 1.0
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.axhline(target.mean(), color="grey", lw=0.8, ls=":", label=f"positive rate {target.mean():.3f}")
    outside = any(np.nanmin(p) < 0 or np.nanmax(p) > 1 for p in preds.values())
    scale = ""
    if near_zero(preds) and np.isfinite(low):
        # symlog: bins with no positive (rate 0) stay on the plot, and the diagonal stays straight
        lin = 10 ** np.floor(np.log10(low))
        ax.set_xscale("symlog", linthresh=lin, linscale=0.3)
        ax.set_yscale("symlog", linthresh=lin, linscale=0.3)
        ax.plot(np.geomspace(lin / 10, top, 50), np.geomspace(lin / 10, top, 50), ls="--", color="grey", lw=1)
        scale = f", log scale above {lin:g}"
    ax.set(xlabel="mean prediction in the bin", ylabel="observed positive rate",
           title=f"Calibration ({bins} quantile bins of pred{scale})" + ("\npred is not in [0, 1]" if outside else ""))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def distribution_figure(target: np.ndarray, preds: dict) -> Figure:
    n = len(preds)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.7 * cols + 0.6, 3.2 * rows + 0.4), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    logit = near_zero(preds) and all(p.min() > 0 and p.max() < 1 for p in preds.values())
    for k, (name, pred) in enumerate(preds.items()):
        ax = axes[k]
        if logit:  # rare positives: on a linear axis nearly every negative falls into the first bin
            edges = 1 / (1 + np.exp(-np.linspace(*np.log(np.array([pred.min(), pred.max()]) /
                                                          (1 - np.array([pred.min(), pred.max()]))), 41)))
            ax.set_xscale("logit")
        else:
            edges = np.histogram_bin_edges(pred, bins=40)
        for cls, c in [(0, "#4c72b0"), (1, "#c44e52")]:
            p = pred[target == cls]
            # each class's share per bin: the classes differ in size many times over, and on a logit
            # axis the bins differ in width, so neither counts nor densities compare the two shapes
            share = np.full(len(p), 1 / max(1, len(p)))
            ax.hist(p, bins=edges, weights=share, histtype="stepfilled", alpha=0.35, color=c)
            ax.hist(p, bins=edges, weights=share, histtype="step", lw=1.2, color=c, label=f"target {cls} ({len(p)})")
        ax.set(title=name, xlabel="pred" + (" (logit scale)" if logit else ""), ylabel="share of the class")
        ax.legend(loc="best", fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Predictions by class (each class's bars add up to 1)")
    return fig


def _table_html(df: pd.DataFrame, index: bool) -> str:
    table_id = df.attrs.get("id")
    if index:
        df = df.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)
    return df.to_html(index=index, border=0, na_rep="", justify="left", escape=True, table_id=table_id)


STYLE = """body{font-family:sans-serif;max-width:1150px;margin:1.5em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:0.3em 0}
.note{color:#a33}.small{color:#666;font-size:13px}"""


TABLE_NOTES = {
    "Comparison": "pooled AUC: all folds' OOF predictions together; rank AUC: the same after ranking the "
                  "predictions within each fold (it differs from the pooled AUC when the folds' models are "
                  "calibrated differently); epochs and train min: summed over the folds' log.csv; diff: pooled "
                  "AUC minus the baseline's, its interval from the same resampled groups for both; share <= 0: "
                  "the share of bootstrap replicates in which the difference is not positive (a one-sided p).",
    "Correlation of per-fold ranks": "Pearson correlation of the predictions ranked within each fold: how "
                                     "much the experiments agree on the order, whatever their scale.",
}


def html_page(title: str, summary: str, tables: dict, images: list, notes: list[str], sections=()) -> str:
    """One self-contained page: ``tables`` (heading -> frame; a square frame keeps its index; a frame's
    ``attrs`` may give its table an ``id`` and ``notes``, (class, text) pairs shown below it) and
    ``images`` ((heading, caption, png bytes)), then ``sections`` (HTML, as given). No scripts, no external
    references."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=\"small\">{html.escape(summary)}</p>"]
    parts += [f"<p class=\"note\">note: {html.escape(n)}</p>" for n in notes]
    for heading, df in tables.items():
        square = list(df.index) == list(df.columns)
        parts += [f"<h2>{html.escape(heading)}</h2>", _table_html(df, index=square)]
        below = [("small", TABLE_NOTES[heading])] if heading in TABLE_NOTES else []
        parts += [f"<p class=\"{c}\">{html.escape(t)}</p>" for c, t in below + df.attrs.get("notes", [])]
    for heading, caption, data in images:
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<p class=\"small\">{html.escape(caption)}</p>",
                  f"<img alt=\"{html.escape(heading)}\" src=\"data:image/png;base64,"
                  f"{base64.b64encode(data).decode('ascii')}\">"]
    parts += [*sections, "</body></html>\n"]
    return "\n".join(parts)


def write_report(out: Path, target: np.ndarray, preds: dict, table: pd.DataFrame, folds: pd.DataFrame,
                 logs: dict, tables: dict, summary: str, notes: list[str], sections=()) -> list[Path]:
    """The five PNGs and report.html in ``out``, each written atomically; returns their paths."""
    pictures = [
        ("roc.png", "ROC curves", "Pooled out-of-fold ROC of each experiment; the legend gives the pooled AUC "
         "and its 95% interval from the grouped bootstrap.", pooled_roc_figure(target, preds, table)),
        ("fold_auc.png", "AUC per fold", "Each fold's AUC with a 95% interval from a bootstrap of the groups "
         "within that fold.", fold_figure(folds)),
        ("learning_curves.png", "Learning curves", "Train loss and validation AUC by epoch from each fold's "
         "log.csv; one line per fold, one colour per experiment.", learning_figure(logs)),
        ("calibration.png", "Calibration", "Mean prediction against the observed positive rate in 10 bins "
         "of equal size (quantiles of pred); on the diagonal the predictions are calibrated.",
         calibration_figure(target, preds)),
        ("pred_by_class.png", "Predictions by class", "Histograms of pred for target 0 and 1, each class's "
         "bars adding up to 1: the less they overlap, the better the ranking. Predictions crowded near 0 (rare "
         "positives) are shown on a logit axis.", distribution_figure(target, preds)),
    ]
    written, images = [], []
    for name, heading, caption, fig in pictures:
        data = png_bytes(fig)
        written.append(atomic_write(out / name, lambda p, data=data: p.write_bytes(data)))
        images.append((heading, caption, data))
    page = html_page(f"CV comparison: {', '.join(preds)}", summary, tables, images, notes, sections)
    written.append(atomic_write(out / "report.html", lambda p: p.write_text(page, encoding="utf-8")))
    return written
