"""Cross-validation report of one experiment's out-of-fold predictions, or a comparison of several.

    python -m pipeline cv oof/<experiment>
    python -m pipeline cv oof/a oof/b oof/c --baseline a [--bootstrap 1000] [--seed 0] [--out DIR] [--no-plot]

One experiment: AUC per fold, the mean and standard deviation of the fold AUCs, the pooled OOF AUC,
rows and positives per fold, and roc.png in the experiment folder; then the pooled AUC's
95% interval, the pooled AUC of per-fold ranks and the training effort from the folds' log.csv.

Several experiments (trained on the same rows and the same folds) print one row each:

- pooled OOF AUC with a 95% percentile interval from a bootstrap of *groups* (the group column of
  oof.csv, as its header names it: pipeline/experiment/oof.py; without one each row is its own group). A
  patient's images are correlated, so resampling rows would pretend there are more independent
  observations than there are and make the interval too narrow.
- mean +- std of the fold AUCs, and the pooled AUC of per-fold rank-normalised predictions: when it
  differs from the pooled AUC, the folds' models are calibrated differently and the pooled figure
  mixes scales (a submission averages the folds, so the fold AUCs are the better guide then).
- epochs run and training minutes (train_s + val_s) summed over the folds' ``fold<k>/log.csv``.
- with ``--baseline``: the paired difference of pooled AUC to the baseline, its 95% interval from the
  same resampled patients for both experiments in each replicate, and the share of replicates where
  it is <= 0 (a one-sided bootstrap p; its resolution is 1/--bootstrap).
- the per-fold AUCs with grouped-bootstrap intervals, and the Pearson correlation of the experiments'
  predictions (aligned by id) and of their per-fold ranks.

There is deliberately no DeLong test: its variance treats every row as independent, which a patient's
correlated images are not, and its p-values come out too small; where it is valid the paired grouped
bootstrap gives the same answer (simulated: benchmarks/README.md, "DeLong against the grouped bootstrap").

The bootstrap uses one numpy Generator seeded by --seed: the same experiments and seed give the
same numbers, and an experiment's interval does not depend on which others it is compared with.

Like with like: experiments on different rows, folds or targets are refused with one line naming both
folders; when one of them is a rank blend (its pred a rank within each fold: pipeline/report/blend.py), every
experiment's predictions are ranked within each fold before any figure, and the output says so.

Files (all written atomically) go to --out, by default ``<parent of the first experiment>/compare/
<name>+<name>...`` (``oof/compare/a+b``; ``oof/compare/a`` for one experiment): a new or empty folder
or an earlier comparison, whose files are replaced (never an experiment, a blend or anything inside
one: pipeline/core/folders.py). compare.csv (the comparison table, and the folder's marker), folds.csv
(fold AUCs with intervals), correlation.csv, subgroups.csv (AUC per subgroup: pipeline/report/subgroups.py)
and unless --no-plot: roc.png, fold_auc.png, learning_curves.png, calibration.png, pred_by_class.png and
report.html, one self-contained page holding the tables and the pictures (inline, no network).

Statistics: pipeline/report/stats.py; oof.csv: pipeline/experiment/oof.py; pictures:
pipeline/report/figures.py; options: cli.cv_main.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipeline.core import disk, folders
from pipeline.core.errors import ConfigError, first_few
from pipeline.core.files import atomic_write
from pipeline.data.tables import parse_csv
from pipeline.experiment.oof import aligned, read_both_classes
from pipeline.report import subgroups
from pipeline.report.blend import is_rank_blend
from pipeline.report.stats import (auc, bootstrap_auc, draw_groups, fold_aucs, fold_ranks, group_codes,
                                   paired_difference, percentile_interval, replicates)

COMPARISON_FILES = ("compare.csv", "folds.csv", "correlation.csv", "subgroups.csv", "roc.png", "fold_auc.png",
                    "learning_curves.png", "calibration.png", "pred_by_class.png", "report.html")  # the marker first

# ---------------------------------------------------------------- experiments side by side

def labels(dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [d.name for d in dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, dirs)]


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
    preds, codes, pooled, boot = replicates(frame, len(names), n_boot, seed)
    rows = []
    for k, name in enumerate(names):
        fold_auc = pd.Series(fold_aucs(target, preds[:, k], fold))
        epochs, minutes = effort(logs[k], has_logs[k])
        row = {"experiment": name, "path": str(dirs[k]), "rows": len(frame), "groups": int(codes.max() + 1),
               "positives": int(target.sum()), "folds": len(fold_auc), "pooled_auc": pooled[k]}
        row["pooled_lo"], row["pooled_hi"] = percentile_interval(boot[:, k])
        row.update(fold_auc_mean=float(fold_auc.mean()), fold_auc_std=float(fold_auc.std(ddof=0)),
                   rank_auc=auc(target, fold_ranks(preds[:, k], fold)), epochs=epochs, train_min=minutes,
                   baseline=names[baseline] if baseline is not None else None)
        row["diff"], row["diff_lo"], row["diff_hi"], row["p_diff_le_0"] = (
            paired_difference(boot[:, k], boot[:, baseline], pooled[k], pooled[baseline])
            if baseline is not None else (float("nan"),) * 4)
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
                         "auc": auc(target, preds[:, k]), "auc_lo": lo, "auc_hi": hi})
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
    """``<parent of the first>/compare/<a>+<b>...``; past 100 bytes (names are limited in bytes, not
    characters), the start of the first name, the count of the others and a hash."""
    joined = "+".join(Path(n).name for n in names)
    if len(os.fsencode(joined)) > 100:
        digest = hashlib.sha1("\0".join(str(d.resolve()) for d in dirs).encode()).hexdigest()[:8]
        first = os.fsencode(Path(names[0]).name)[:60].decode("utf-8", "ignore")  # whole characters only
        joined = f"{first}+{len(names) - 1}-more-{digest}"
    return dirs[0].parent / "compare" / joined


def comparison_folder(dirs: list, out: str | Path | None = None, advice: str = "use another --out") -> Path:
    """Where the comparison of ``dirs`` goes (``out``, else ``default_out``), checked before any work:
    a new or empty folder or an earlier comparison (core/folders.py), that can be written."""
    dirs = [Path(d) for d in dirs]
    out = folders.check_output_folder(Path(out) if out is not None else default_out(dirs, labels(dirs)), "comparison",
                               advice)
    disk.check_writable(out, what=" the comparison", advice=advice)
    return out


def pick_baseline(baseline: str | None, dirs: list[Path], names: list[str]) -> int | None:
    if baseline is None:
        return None
    hits = [k for k, (d, n) in enumerate(zip(dirs, names))
            if baseline in (n, d.name, str(d)) or Path(baseline).resolve() == d.resolve()]
    if len(set(dirs[k].resolve() for k in hits)) != 1:
        how = "matches several; give its path" if hits else f"is not one of {', '.join(map(str, dirs))}"
        raise ConfigError(f"--baseline {baseline}: {how}")
    return hits[0]


def analyse(exp_dirs: list, baseline: str | None = None, n_boot: int = 1000, seed: int = 0) -> SimpleNamespace:
    """Read the experiments and compute every table of their report: nothing printed or written."""
    given, dirs = experiment_dirs(exp_dirs)
    names = labels(dirs)
    base = pick_baseline(baseline, dirs, names)
    frame = aligned([read_both_classes(d) for d in dirs], dirs)
    ranked = [n for n, d in zip(names, dirs) if is_rank_blend(d)]
    if ranked:  # like with like: a rank blend's pred is a rank within each fold, so every pred becomes one
        for k in range(len(names)):
            frame[f"pred:{k}"] = fold_ranks(frame[f"pred:{k}"].to_numpy(), frame["fold"].to_numpy())
    logs = [read_logs(d, frame["fold"].unique()) for d in dirs]
    has_logs = [any((d / f"fold{int(f)}" / "log.csv").is_file() for f in frame["fold"].unique()) for d in dirs]
    corr, rank_corr = correlations(frame, names)
    return SimpleNamespace(given=given, dirs=dirs, names=names, frame=frame, logs=logs, has_logs=has_logs,
                           n_boot=n_boot, seed=seed, corr=corr, rank_corr=rank_corr, ranked=ranked,
                           table=compare_table(frame, names, dirs, logs, has_logs, n_boot, seed, base).assign(
                               basis="per-fold rank" if ranked else "pred"),
                           folds=fold_auc_table(frame, names, n_boot, seed), leaks=groups_across_folds(frame))


def experiment_dirs(exp_dirs: list) -> tuple[list[Path], list[Path]]:
    """The folders as given, and the same with ``.`` and ``..`` resolved to a name (``.`` names no
    experiment, and its parent would be the experiment itself); each once."""
    given = [disk.check_name_length(d) for d in exp_dirs]
    dirs = [d.resolve() if d.name in ("", ".", "..") else d for d in given]
    seen = {}
    for d in dirs:
        if d.resolve() in seen:
            raise ConfigError(f"{d}: given twice (also as {seen[d.resolve()]})")
        seen[d.resolve()] = d
    return given, dirs


def basis_note(a: SimpleNamespace) -> str | None:
    """What the figures are of when not of pred as written: a rank blend makes every pred a per-fold rank."""
    if a.ranked:
        blends = f"{', '.join(a.ranked)} {'is a rank blend' if len(a.ranked) == 1 else 'are rank blends'}"
        return (f"compared on per-fold ranks, not on pred: {blends} (pred: a rank within each fold), so every "
                f"prediction is ranked within each fold before any figure here")
    return None


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


def print_experiment(a: SimpleNamespace, plot: bool, details: bool = True) -> dict:
    """The report of one experiment: AUC, rows and positives per fold, the fold AUCs' mean and std,
    the pooled AUC and (``plot``) roc.png in the experiment folder; with ``details`` the pooled AUC's
    interval, the pooled AUC of per-fold ranks and the training effort. Returns the figures."""
    exp_dir, row, folds = a.given[0], a.table.iloc[0], a.folds[["fold", "rows", "positives", "auc"]]
    print(f"CV of {exp_dir}")
    print(folds.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"fold AUC mean {row['fold_auc_mean']:.4f} +- {row['fold_auc_std']:.4f} over {row['folds']} fold(s)")
    print(f"pooled OOF AUC {row['pooled_auc']:.4f} ({row['rows']} rows, {row['positives']} positives)")
    if basis_note(a):
        print(f"note: {basis_note(a)}")
    reason = disk.why_not_writable(exp_dir) if plot else None
    if reason:  # an experiment on a read-only disk is still reported
        print(f"warning: {exp_dir / 'roc.png'} not drawn ({reason})", file=sys.stderr)
    elif plot:
        from pipeline.report.figures import fold_roc_figure, png_bytes
        data = png_bytes(fold_roc_figure(a.frame["target"].to_numpy(), a.frame["pred:0"].to_numpy(),
                                         a.frame["fold"].to_numpy(), f"{exp_dir.name}: ROC"))
        print(f"ROC curve: {atomic_write(exp_dir / 'roc.png', lambda p: p.write_bytes(data))}")
    if details:
        print(f"pooled OOF AUC 95% interval {_interval(row['pooled_lo'], row['pooled_hi'])} "
              f"({bootstrap_note(a.frame, a.n_boot, a.seed)})")
        print(f"pooled AUC of per-fold ranks {_f(row['rank_auc'])}")
        if a.has_logs[0]:
            print(f"training: {_f(row['epochs'], '.0f')} epochs, {_f(row['train_min'], '.1f')} min (fold*/log.csv)")
    return {"fold_auc": dict(zip(folds["fold"], folds["auc"])), "mean_auc": float(row["fold_auc_mean"]),
            "std_auc": float(row["fold_auc_std"]), "pooled_auc": float(row["pooled_auc"]), "rows": int(row["rows"])}


def print_comparison(a: SimpleNamespace) -> None:
    print(f"Compare {len(a.dirs)} experiments: {summary_line(a.frame, a.n_boot, a.seed)}")
    if basis_note(a):
        print(f"note: {basis_note(a)}")
    shown = display_table(a.table)
    shown["experiment"] = shown["experiment"].str.ljust(shown["experiment"].str.len().max())
    print(shown.to_string(index=False, justify="left"))
    print("\nfold AUC (95% interval: bootstrap of the groups within the fold)")
    print(display_folds(a.folds).to_string(index=False))
    print("\ncorrelation of pred")
    print(a.corr.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\ncorrelation of per-fold ranks")
    print(a.rank_corr.to_string(float_format=lambda v: f"{v:.3f}"))


def write_files(a: SimpleNamespace, out: Path, plot: bool, sections=()) -> list[Path]:
    """compare.csv, folds.csv, correlation.csv and (``plot``) the pictures and report.html in ``out``.
    An earlier comparison's files go first, but its marker compare.csv, which is replaced: no table or
    picture of another comparison stays beside these, even after a Ctrl-C."""
    for name in COMPARISON_FILES[1:]:
        (out / name).unlink(missing_ok=True)
    written = []
    for name, df in [("compare.csv", a.table), ("folds.csv", a.folds),
                     ("correlation.csv", pd.concat([a.corr.assign(of="pred"), a.rank_corr.assign(of="fold rank")])
                      .rename_axis("experiment").reset_index()), ("subgroups.csv", a.subgroups)]:
        written.append(atomic_write(out / name, lambda p, df=df: df.to_csv(p, index=False)))
    if plot:
        from pipeline.report.figures import write_report
        gcol = a.frame.attrs["group_col"]
        preds = {n: a.frame[f"pred:{k}"].to_numpy() for k, n in enumerate(a.names)}
        tables = {"Comparison": display_table(a.table), "Fold AUC": display_folds(a.folds),
                  "AUC per subgroup": subgroups.display(a.subgroups),
                  **({"Correlation of pred": a.corr, "Correlation of per-fold ranks": a.rank_corr}
                     if len(a.names) > 1 else {})}
        leaks = f"{len(a.leaks)} '{gcol}' group(s) have rows in several folds ({first_few(a.leaks)})"
        notes = [leaks] if a.leaks else []
        notes += [basis_note(a)] if a.ranked else []
        written += write_report(out, a.frame["target"].to_numpy(), preds, a.table, a.folds, dict(zip(a.names, a.logs)),
                                tables=tables, summary=summary_line(a.frame, a.n_boot, a.seed), notes=notes,
                                sections=[make(a) for make in sections])
    return written


# ---------------------------------------------------------------- the commands

def report(exp_dir: str | Path, plot: bool = True) -> dict:
    """The summary of one experiment as train.py prints it at the end (``print_experiment`` without
    the details; no bootstrap, nothing written but roc.png). Returns the figures."""
    return print_experiment(analyse([exp_dir], n_boot=0), plot, details=False)


def compare(exp_dirs: list, baseline: str | None = None, plot: bool = True, n_boot: int = 1000, seed: int = 0,
            out: str | Path | None = None, by: list[str] = (), sections=()) -> dict:
    """The report of one experiment, or the comparison of several: print the tables, write them (and unless
    ``plot`` is False the pictures, and report.html ending in each ``make(a)`` of ``sections``) to ``out``."""
    out = comparison_folder(experiment_dirs(exp_dirs)[1], out)  # before the work: where it goes can be written
    a = analyse(exp_dirs, baseline, n_boot, seed)
    if len(a.dirs) == 1:
        print_experiment(a, plot)
    else:
        print_comparison(a)
    a.subgroups = subgroups.report(a, by)  # AUC per subgroup; --by: columns to add
    if a.leaks:
        print(f"note: {len(a.leaks)} '{a.frame.attrs['group_col']}' group(s) have rows in several folds "
              f"({first_few(a.leaks)}): their images leak between training and validation")
    written = write_files(a, out, plot, sections)
    print(f"written to {out}/: {', '.join(p.name for p in written)}")
    return {"table": a.table, "folds": a.folds, "corr": a.corr, "rank_corr": a.rank_corr, "out": out,
            "files": written, "subgroups": a.subgroups}
