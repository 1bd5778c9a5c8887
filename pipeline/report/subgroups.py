"""For whom the model works: the AUC of each subgroup of the OOF rows, in ``python -m pipeline cv``.

    python -m pipeline cv oof/a [--by COL ...]     # printed, subgroups.csv beside report.html

The subgroups, in this order (a family is a column, each of its values or bands a subgroup):

- each categorical feature of the experiment's config.yaml (``features.categorical``: sex, body site),
  one subgroup per value, missing values as ``(missing)``;
- each numeric feature (``features.numeric``): a column whose name has the word ``age`` (``age_approx``)
  in the bands of ``AGE_BANDS`` (<30, 30-44, 45-59, 60-74, 75+; 44.5 is in 30-44), any other in
  quartile bands when it has more than ``MAX_LEVELS`` distinct values, else one subgroup per value;
- the diagnosis (``data.diagnosis_col``), when the experiment has one: each class, then each class
  that holds negatives against every positive (``<diagnosis> vs``: the positives with that class's
  negatives, how well the model tells the two apart; where the diagnosis decides the target, as in
  ISIC 2017, a class alone holds one target and cannot be scored);
- images per patient (the rows of each patient in oof.csv), in the bands of ``IMAGE_BANDS``, when
  oof.csv has a group column;
- the fold;
- each ``--by`` column, from the experiment's data.csv, else its training table (matched by id),
  banded as a numeric feature when its values are numbers, else by value.

The feature values come from data.csv, the record of what was trained (pipeline/experiment/record.py).
In a comparison the experiments hold the same rows, so the columns are read from the first experiment
that has a config.yaml and a data.csv, and every experiment is scored on the same subgroups.

Each row: the family (``by``), the subgroup, its rows and positives, and per experiment the AUC with a
95% interval from a bootstrap of the patients within the subgroup (pipeline/report/stats.py; of the
rows when oof.csv has no group column), and ``below pooled`` / ``above pooled`` when that interval lies
wholly below / above the experiment's pooled OOF AUC (the first row, ``all``). A subgroup with fewer
than ``MIN_CLASS`` positives or negatives is not scored: its note says so (``too few: 3 positives``).
A family of more than ``MAX_LEVELS`` values, and a ``--by`` column that is not there, are one warning
line each (the second naming the columns there are); the rest of the report is made.
"""
from __future__ import annotations

import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.data.tables import MISSING_WORDS, data_path, parse_csv_as_text
from pipeline.experiment.record import read_record, saved_config
from pipeline.report.stats import auc, bootstrap_auc, draw_groups, group_codes, percentile_interval

MIN_CLASS = 5  # positives and negatives a subgroup needs to be scored
MAX_LEVELS = 30  # values of a family shown one by one (a numeric column with more is banded)
MISSING = "(missing)"
INF = float("inf")
# (upper edge, exclusive; label)
AGE_BANDS = ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74"), (INF, "75+"))
IMAGE_BANDS = ((2, "1"), (5, "2-4"), (10, "5-9"), (20, "10-19"), (50, "20-49"), (INF, "50+"))
COLUMNS = ["experiment", "by", "group", "rows", "positives", "auc", "auc_lo", "auc_hi", "pooled_auc", "vs_pooled",
           "note"]


# ---------------------------------------------------------------- the subgroups of a column

def is_age(name: str) -> bool:
    """A column named with the word 'age' (age, age_approx, patient_age; not image_size)."""
    return re.search(r"(^|[^a-z])age($|[^a-z])", name.lower()) is not None


def blank(values: pd.Series) -> pd.Series:
    """Text values with every spelling of "not known" (data.tables.MISSING_WORDS) as NA."""
    text = values.astype("string").str.strip()
    return text.mask(text.str.lower().isin(MISSING_WORDS))


def in_bands(values: pd.Series, bands: tuple) -> pd.Series:
    """The band label of each number (NA: missing), ``bands`` as (exclusive upper edge, label) pairs."""
    uppers = np.array([b[0] for b in bands], dtype=float)
    index = np.searchsorted(uppers, values.to_numpy(dtype=float, na_value=np.nan), side="right")
    labels = np.array([b[1] for b in bands] + [MISSING], dtype=object)
    return pd.Series(labels[np.where(values.isna(), len(bands), np.minimum(index, len(bands) - 1))],
                     index=values.index, dtype=object)


def quartiles(values: pd.Series) -> pd.Series:
    """Quartile bands of the numbers, each labelled with its range ('12 to 30'); NA: missing."""
    cut = pd.qcut(values.astype(float), 4, duplicates="drop")
    labels = {iv: f"{max(iv.left, values.min()):g} to {iv.right:g}" for iv in cut.cat.categories}
    return pd.Series([labels[v] if isinstance(v, pd.Interval) else MISSING for v in cut], index=values.index,
                     dtype=object)


def subgroups_of(name: str, values: pd.Series, numeric: bool | None = None) -> tuple[pd.Series, list]:
    """Each row's subgroup in the column ``name`` and the subgroups in table order. ``numeric``: banded
    as numbers (None: when every value there is a number)."""
    text = blank(values)
    numbers = pd.to_numeric(text, errors="coerce")
    if numeric is None:
        numeric = bool(text.notna().any()) and not (numbers.isna() & text.notna()).any()
    if numeric and is_age(name):
        labels, order = in_bands(numbers, AGE_BANDS), [b[1] for b in AGE_BANDS]
    elif numeric and numbers.nunique() > MAX_LEVELS:
        labels = quartiles(numbers)
        order = list(dict.fromkeys(labels[numbers.dropna().sort_values().index]))
    else:
        labels = text.astype(object).where(text.notna(), MISSING)
        order = sorted(set(labels) - {MISSING}, key=float if numeric else str)
    return labels, in_order(labels, order)


def in_order(labels: pd.Series, order: list) -> list:
    """The subgroups of ``order`` that hold rows, then the missing values' one when it does."""
    held = set(labels)
    return [v for v in order if v in held and v != MISSING] + ([MISSING] if MISSING in held else [])


# ---------------------------------------------------------------- where the columns come from

def experiment_columns(dirs: list[Path], ids: pd.Series) -> tuple[pd.DataFrame | None, object, Path | None, list]:
    """The first experiment's data.csv with a config.yaml beside it, as text, lined up with ``ids``
    (NA where an id is not in it), its config and folder; else (None, None, None, warnings)."""
    warnings = []
    for d in dirs:
        if not ((d / "data.csv").is_file() and (d / "config.yaml").is_file()):
            continue
        try:
            cfg, record = saved_config(d / "config.yaml"), read_record(d / "data.csv")
        except PipelineError as e:
            warnings.append(f"subgroups: {e}")
            continue
        record = record.drop_duplicates(record.columns[0]).set_index(record.columns[0])
        if not ids.isin(record.index).any():
            warnings.append(f"subgroups: no id of oof.csv is in {d / 'data.csv'}; its columns are left out")
            continue
        return record.reindex(ids.to_numpy()).reset_index(drop=True), cfg, d, warnings
    return None, None, None, warnings


def training_table(cfg, ids: pd.Series) -> tuple[pd.DataFrame | None, Path | None]:
    """The experiment's training table as text, lined up with ``ids``; None when it cannot be read."""
    path = data_path(cfg, cfg.data.train_csv)
    try:
        table = parse_csv_as_text(path)
    except (PipelineError, OSError):
        return None, None
    if cfg.data.id_col not in table.columns:
        return None, None
    table = table.drop_duplicates(cfg.data.id_col).set_index(cfg.data.id_col)
    return table.reindex(ids.to_numpy()).reset_index(drop=True), path


def against(name: str, labels: pd.Series, order: list, target: np.ndarray) -> tuple[str, list]:
    """The family ``<name> vs``: for each class holding negatives, every positive with that class's
    negatives, as ('positives vs <class>', rows)."""
    negative = target == 0
    return f"{name} vs", [(f"positives vs {c}", ~negative | (negative & (labels == c).to_numpy())) for c in order
                          if (negative & (labels == c).to_numpy()).any()]


def families(a, by: list[str]) -> tuple[list[tuple[str, list]], list[str]]:
    """Every family of subgroups of the report ``a`` (pipeline/report/cv.analyse) as (by, [(subgroup,
    its rows as a mask), ...] in order), and the warnings (one line each) about what was left out."""
    frame, gcol = a.frame, a.frame.attrs.get("group_col")
    record, cfg, exp, warnings = experiment_columns(a.dirs, frame["id"])
    plan = []  # (by, values, numeric: True, False, None (when all are numbers) or bands)
    if record is not None:
        f = cfg.features
        plan += [(c, record[c], False) for c in f.categorical if c in record.columns]
        plan += [(c, record[c], True) for c in f.numeric if c in record.columns]
        if cfg.data.diagnosis_col and cfg.data.diagnosis_col in record.columns:
            plan.append((cfg.data.diagnosis_col, record[cfg.data.diagnosis_col], False))
    if gcol:
        per = frame.groupby("group")["id"].transform("size").fillna(1)  # a row without a group: its own
        plan.append((f"images per {gcol}", per, IMAGE_BANDS))
    plan.append(("fold", frame["fold"], True))
    plan += [(c, v, None) for c, v in asked(a, by, record, cfg, exp, warnings) if c not in [p[0] for p in plan]]
    out = []
    for name, values, numeric in plan:
        if isinstance(numeric, tuple):  # bands of its own
            labels = in_bands(values, numeric)
            order = in_order(labels, [b[1] for b in numeric])
        else:
            labels, order = subgroups_of(name, values.reset_index(drop=True), numeric)
        if len(order) > MAX_LEVELS:
            warnings.append(f"subgroups: '{name}' has {len(order)} values, over {MAX_LEVELS}: left out")
            continue
        out.append((name, [(g, (labels == g).to_numpy()) for g in order]))
        if cfg is not None and name == cfg.data.diagnosis_col:
            out.append(against(name, labels, order, a.frame["target"].to_numpy()))
    return out, warnings


def asked(a, by: list[str], record, cfg, exp, warnings: list[str]) -> list[tuple[str, pd.Series]]:
    """The ``--by`` columns' values, from data.csv, else the training table, else oof.csv's group
    column; a column found nowhere is a warning naming the columns there are."""
    frame, gcol = a.frame, a.frame.attrs.get("group_col")
    sources = [(exp / "data.csv", record)] if record is not None else []
    if cfg is not None and any(c not in record.columns for c in by):
        table, path = training_table(cfg, frame["id"])
        sources += [(path, table)] if table is not None else []
    own = pd.DataFrame({"fold": frame["fold"], **({gcol: frame["group"]} if gcol else {})})
    sources.append((Path(a.dirs[0]) / "oof.csv", own))
    out = []
    for col in dict.fromkeys(by):
        hit = next((df[col] for _, df in sources if col in df.columns), None)
        if hit is None:
            there = list(dict.fromkeys(c for _, df in sources for c in df.columns))
            where = " or ".join(str(p) for p, _ in sources)
            warnings.append(f"--by {col}: no such column in {where} (columns there: {', '.join(there)})")
        else:
            out.append((col, hit))
    return out


# ---------------------------------------------------------------- the table

def too_few(positives: int, negatives: int) -> str:
    """Why a subgroup is not scored ('' when it is): 'too few: 3 positives', 'too few: 0 negatives'."""
    short = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in [(positives, "positive"), (negatives, "negative")]
             if n < MIN_CLASS]
    return f"too few: {', '.join(short)}" if short else ""


def score(part: pd.DataFrame, names: list[str], grouped: bool, n_boot: int, rng) -> list[tuple[float, float, float]]:
    """(AUC, interval low, high) of each experiment on the rows ``part``, the patients resampled."""
    target = part["target"].to_numpy()
    codes = pd.factorize(group_codes(part["group"] if grouped else None, len(part)))[0]
    preds = np.column_stack([part[f"pred:{k}"].to_numpy() for k in range(len(names))])
    boot = bootstrap_auc(preds, target, codes, draw_groups(codes.max() + 1, n_boot, rng))
    return [(auc(target, preds[:, k]), *percentile_interval(boot[:, k])) for k in range(len(names))]


def mark(lo: float, hi: float, pooled: float) -> str:
    """'below pooled' / 'above pooled' when the interval excludes the pooled AUC; else ''."""
    return "below pooled" if hi < pooled else "above pooled" if lo > pooled else ""


def subgroup_table(a, by: list[str] = ()) -> pd.DataFrame:
    """The long table (``COLUMNS``): one row per experiment and subgroup, the pooled ``all`` row first;
    ``attrs["warnings"]`` holds the warning lines."""
    frame, names, grouped = a.frame, a.names, bool(a.frame.attrs.get("group_col"))
    found, warnings = families(a, list(by))
    pooled = a.table.set_index("experiment")
    rows = [{"experiment": n, "by": "all", "group": "all rows", "rows": len(frame),
             "positives": int(frame["target"].sum()), "auc": pooled.loc[n, "pooled_auc"],
             "auc_lo": pooled.loc[n, "pooled_lo"], "auc_hi": pooled.loc[n, "pooled_hi"], "note": ""} for n in names]
    for name, groups in found:
        for group, rows_of in groups:
            part = frame[rows_of]
            positives = int(part["target"].sum())
            note = too_few(positives, len(part) - positives)
            rng = np.random.default_rng([a.seed, 2, zlib.crc32(f"{name}\0{group}".encode())])
            scores = score(part, names, grouped, a.n_boot, rng) if not note else [(np.nan,) * 3] * len(names)
            rows += [{"experiment": n, "by": name, "group": str(group), "rows": len(part), "positives": positives,
                      "auc": s[0], "auc_lo": s[1], "auc_hi": s[2], "note": note} for n, s in zip(names, scores)]
    out = pd.DataFrame(rows)
    out["pooled_auc"] = out["experiment"].map(pooled["pooled_auc"])
    out["vs_pooled"] = [mark(lo, hi, p) if b != "all" else "" for lo, hi, p, b in
                        zip(out["auc_lo"], out["auc_hi"], out["pooled_auc"], out["by"])]
    out = out[COLUMNS].sort_values("experiment", kind="stable", key=lambda s: s.map(names.index))
    out = out.reset_index(drop=True)
    gcol = frame.attrs.get("group_col")
    out.attrs.update(warnings=warnings, resampled=f"the '{gcol}' groups" if gcol else "the rows (no group column)",
                     n_boot=a.n_boot)
    return out


def cell(row) -> str:
    """'0.7812 (0.650 to 0.900) below pooled', or the reason it is not scored."""
    if row["note"]:
        return row["note"]
    text = "" if not np.isfinite(row["auc"]) else f"{row['auc']:.4f}"
    if np.isfinite(row["auc_lo"]) and np.isfinite(row["auc_hi"]):
        text += f" ({row['auc_lo']:.3f} to {row['auc_hi']:.3f})"
    return f"{text} {row['vs_pooled']}".strip()


def display(table: pd.DataFrame) -> pd.DataFrame:
    """Subgroups down, experiments across, as printed and in report.html (table id ``subgroups``)."""
    names = list(dict.fromkeys(table["experiment"]))
    shown = table.assign(cell=[cell(r) for _, r in table.iterrows()])
    wide = shown.pivot(index=["by", "group"], columns="experiment", values="cell")[names]
    counts = shown.drop_duplicates(["by", "group"]).set_index(["by", "group"])[["rows", "positives"]]
    out = pd.concat([counts, wide], axis=1).reset_index().rename_axis(columns=None)  # an experiment may be "rows"
    out.attrs["id"] = "subgroups"
    out.attrs["notes"] = [("small", caption(table))] + [("note", f"warning: {w}") for w in table.attrs["warnings"]]
    return out


def caption(table: pd.DataFrame) -> str:
    """What the table shows, below it in report.html."""
    return (f"AUC of each subgroup's rows with a 95% interval from {table.attrs['n_boot']} bootstrap replicates of "
            f"{table.attrs['resampled']} within it; 'below pooled' / 'above pooled': the interval lies wholly below / "
            f"above the experiment's pooled OOF AUC (first row). Subgroups with fewer than {MIN_CLASS} positives or "
            f"{MIN_CLASS} negatives are not scored. Age bands: {', '.join(b[1] for b in AGE_BANDS)} (30-44: from 30 "
            f"to under 45). Images per patient: the patient's rows in oof.csv.")


def report(a, by: list[str] = ()) -> pd.DataFrame:
    """``subgroup_table``, printed (its warnings on stderr, one line each); returns it."""
    table = subgroup_table(a, by)
    for w in table.attrs["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"\nAUC per subgroup (95% interval: bootstrap of {table.attrs['resampled']} within the subgroup; 'below "
          f"pooled' / 'above pooled': the interval excludes the pooled AUC; fewer than {MIN_CLASS} positives or "
          f"negatives: not scored)")
    shown = display(table)
    for k in (0, 1):  # by and group: text to the left, numbers to the right
        shown.iloc[:, k] = shown.iloc[:, k].str.ljust(shown.iloc[:, k].str.len().max())
    print(shown.to_string(index=False, justify="left"))
    return table
