"""Blend the out-of-fold predictions (and submissions) of several experiments into a new experiment.

    python -m pipeline blend oof/a oof/b oof/c --name abc_rank --method rank
    python -m pipeline cv oof/abc_rank

writes ``oof/abc_rank/`` beside its members (``--output-dir`` puts it elsewhere)::

    blend.json       members (as given and resolved), method, transform, the submission's weights
                     and, for ``fit``, the weights that scored each fold
    oof.csv          id, group column (when the members have one), fold, target, pred: like a member's
    submission.csv   the members' submission.csv combined with the same weights and transform
                     (only when every member has one; otherwise a note on stderr says why not)

Methods:

    mean   equal weights on the probabilities
    rank   equal weights on rank-normalised predictions (ranks scaled to [0, 1]; OOF ranks are taken
           within each fold, since each fold is a different model, test ranks over the whole test set)
    fit    rank average with non-negative weights summing to 1 that maximise the AUC. Fold k is scored
           with weights fitted on the other folds' rows only, so the reported CV is out of fold; the
           submission uses weights fitted on all rows.

Members must hold the same rows, in the same folds, with the same targets; their submissions the
same ids in the same order (the blend's keeps the first member's columns, in its order). An existing
folder is replaced only when it is a blend (has blend.json), and whole; no blend goes into or below
an experiment or another tool's folder (pipeline/core/folders.py).

Like with like: a rank or fitted blend is made of per-fold ranks, so the members' pooled AUC printed
beside it is of their per-fold ranks too (ranking alone lifts a pooled AUC whose folds are on
different scales: a member predicting a constant would seem to help); ``python -m pipeline cv`` compares a rank
blend with anything on per-fold ranks. A mean blend of probabilities refuses a rank blend as a member.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from pipeline.core import disk, folders
from pipeline.core.config import plain_name
from pipeline.core.errors import ConfigError, DataError, ExperimentError, first_few
from pipeline.core.files import write_csv, write_json
from pipeline.core.folders import MARKERS
from pipeline.data.tables import check_submission, parse_csv_as_text
from pipeline.experiment.oof import (Layout, aligned, layout_of, read_both_classes, table as oof_table,
                                     write as write_oof)
from pipeline.report.stats import auc, fold_aucs, fold_ranks, weighted_auc

METHODS = ("mean", "rank", "fit")
GRID_STEPS = 20  # weights on a 0.05 grid: exhaustive for 2-3 members (21 or 231 candidates)
GRID_MAX_MEMBERS = 3


def check_name(name: str) -> str:
    # the name becomes one folder beside the members: a path could write over anything
    if not plain_name(name):
        raise ConfigError(f"--name must be a plain folder name (no '/', not '.' or '..'), got {name!r}")
    disk.check_name_length(name, "--name")
    return name


def default_output_dir(first: Path) -> Path:
    """The folder that holds the first member (``oof/a`` -> ``oof``)."""
    return first.parent if first.name not in ("", ".", "..") else first.resolve().parent


def check_members(members: list[Path]) -> None:
    if len(members) < 2:
        raise ConfigError(f"a blend needs at least two members, got {len(members)}: {first_few(members)}")
    for m in members:
        disk.check_name_length(m)
    resolved = [m.resolve() for m in members]
    twice = [str(m) for i, m in enumerate(members) if resolved[i] in resolved[:i]]
    if twice:
        raise ConfigError(f"member(s) given more than once: {first_few(twice)}")
    missing = [str(m) for m in members if not m.is_dir()]
    if missing:
        raise DataError(f"member folder(s) not found: {first_few(missing)}")


def check_blend_folder(out: Path, members: list[Path]) -> None:
    """Only a blend may be replaced: anything else in the way is the user's (an experiment, a member),
    and a blend goes nowhere inside an experiment or another tool's folder (core/folders.py)."""
    if out.resolve() in [m.resolve() for m in members]:
        raise ExperimentError(f"{out}: is one of the members; use another --name")
    advice = "use another --name or --output-dir"
    folders.check_output_folder(out, "blend", advice)
    disk.check_writable(out, what=" the blend", advice=advice)


def check_method(method: str, members: list[Path]) -> None:
    """A mean of probabilities cannot take a member whose predictions are ranks (a rank blend)."""
    ranked = [str(m) for m in members if is_rank_blend(m)]
    if method == "mean" and ranked:
        raise ConfigError(f"--method mean averages probabilities, but {', '.join(ranked)} "
                          f"{'is a rank blend' if len(ranked) == 1 else 'are rank blends'} (pred: a rank within "
                          f"each fold); use --method rank or fit")


def align(oofs: list[pd.DataFrame], members: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, Layout]:
    """The rows (group, fold, target, in the first member's order) and one column of predictions per
    member, both indexed by id, and the blend's OOF layout: the first member's id, the members' group
    column. Members on other rows, folds, targets or groups are refused (oof.aligned, as for a
    comparison)."""
    frame = aligned(oofs, members)
    layout = Layout(layout_of(oofs[0]).id, frame.attrs["group_col"])
    base = pd.DataFrame({"group": frame["group"].to_numpy(), "fold": frame["fold"].to_numpy(),
                         "target": frame["target"].to_numpy()}, index=pd.Index(frame["id"].to_numpy(), name=layout.id))
    preds = pd.DataFrame({str(m): frame[f"pred:{k}"].to_numpy() for k, m in enumerate(members)}, index=base.index)
    return base, preds, layout


def fold_ranks_of(preds: pd.DataFrame, fold: pd.Series) -> pd.DataFrame:
    """Each member's predictions ranked within each fold: each fold is scored by a different model."""
    return preds.apply(lambda c: fold_ranks(c.to_numpy(), fold.to_numpy()))


def simplex_grid(m: int, steps: int = GRID_STEPS) -> np.ndarray:
    return np.array([c for c in itertools.product(range(steps + 1), repeat=m) if sum(c) == steps]) / steps


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def fit_weights(ranks: pd.DataFrame, target: pd.Series) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the AUC of ``ranks @ w`` on exactly these rows.
    Ties (AUC is flat in places) go to the weights closest to equal ones, so the result is
    deterministic and moves away from equal weights only for a real gain."""
    x, y = ranks.to_numpy(np.float64), target.to_numpy()
    m = x.shape[1]
    equal = np.full(m, 1.0 / m)

    def score(w: np.ndarray) -> float:  # the exact AUC: fast, and equal AUCs compare equal
        return float(weighted_auc(x @ w, y)[0])

    if np.isnan(score(equal)):  # a single class: nothing to fit
        return equal
    if m <= GRID_MAX_MEMBERS:
        candidates = np.vstack([equal, simplex_grid(m)])
        scores = np.array([score(w) for w in candidates])
        distance = np.linalg.norm(candidates - equal, axis=1)
        best = np.lexsort((distance, -scores))[0]
        return candidates[best]
    # too many members for a grid: Nelder-Mead on a softmax parametrisation, from equal weights
    start = np.zeros(m)
    simplex = np.vstack([start, 2.0 * np.eye(m)])
    res = minimize(lambda z: -score(softmax(z)), start, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "maxiter": 200 * m, "xatol": 1e-3, "fatol": 1e-7})
    w = softmax(res.x)
    return w if score(w) > score(equal) else equal


def blend_oof(preds: pd.DataFrame, fold: pd.Series, target: pd.Series,
              method: str) -> tuple[pd.Series, np.ndarray, dict[int, list[float]]]:
    """The blended OOF predictions, the weights for the submission and, for ``fit``, the weights
    that scored each fold (fitted without that fold's rows)."""
    m = preds.shape[1]
    equal = np.full(m, 1.0 / m)
    if method == "mean":
        return preds @ equal, equal, {}
    ranks = fold_ranks_of(preds, fold)
    if method == "rank":
        return ranks @ equal, equal, {}
    folds = sorted(fold.unique())
    if len(folds) < 2:
        raise DataError(f"--method fit needs at least two folds to score each one out of fold; "
                        f"the members have only fold {folds[0]}")
    out = pd.Series(np.nan, index=preds.index)
    per_fold = {}
    for k in folds:
        held_out = (fold == k).to_numpy()
        w = fit_weights(ranks[~held_out], target[~held_out])
        out[held_out] = ranks[held_out].to_numpy() @ w
        per_fold[int(k)] = w.tolist()
    return out, fit_weights(ranks, target), per_fold


def read_submission(path: Path, id_col: str | None) -> pd.DataFrame:
    """id (text, as written) and one finite prediction column (tables.check_submission), in this
    order; ``attrs["columns"]``: the file's order (a template may put the prediction first)."""
    raw = parse_csv_as_text(path)
    sub = check_submission(raw, id_col=id_col if id_col in raw.columns else None, path=path, probabilities=False)
    sub.attrs["columns"] = list(raw.columns)
    return sub


def check_same_ids(a: pd.DataFrame, b: pd.DataFrame, a_path: Path, b_path: Path) -> None:
    """Rows are matched by position, so ids and their order must agree."""
    x, y = a.iloc[:, 0].to_numpy(), b.iloc[:, 0].to_numpy()
    if len(x) == len(y) and (x == y).all():
        return
    only_a, only_b = pd.Index(x).difference(y, sort=False), pd.Index(y).difference(x, sort=False)
    if len(only_a) or len(only_b):
        sides = [f"only in {p}: {first_few(ids)}" for ids, p in [(only_a, a_path), (only_b, b_path)] if len(ids)]
        raise DataError(f"{a_path} and {b_path} hold different ids: {'; '.join(sides)}")
    diff = np.flatnonzero(x != y)
    raise DataError(f"{a_path} and {b_path} list the same ids in a different order: "
                    f"{first_few([f'line {i + 2}: {x[i]} vs {y[i]}' for i in diff], 3)}")


def read_submissions(members: list[Path], id_col: str | None) -> tuple[list[pd.DataFrame] | None, str]:
    """Every member's submission (its id column named as in the OOF tables), checked against the
    first; or None and why not (not an error: the OOF blend is useful before inference)."""
    paths = [m / "submission.csv" for m in members]
    missing = [str(m) for m, p in zip(members, paths) if not p.is_file()]
    if missing:
        return None, f"no submission.csv in {first_few(missing)} (run infer.py for it)"
    subs = [read_submission(p, id_col) for p in paths]
    for sub, path in zip(subs[1:], paths[1:]):
        check_same_ids(subs[0], sub, paths[0], path)
    return subs, ""


def blend_submission(subs: list[pd.DataFrame], method: str, weights: np.ndarray) -> pd.DataFrame:
    """The OOF's transform and weights applied to the test predictions; the first member's column
    names and id order."""
    test = np.column_stack([s.iloc[:, 1].to_numpy(np.float64) for s in subs])
    if method != "mean":
        test = np.column_stack([fold_ranks(c) for c in test.T])
    id_col, col = subs[0].columns
    return pd.DataFrame({id_col: subs[0][id_col], col: test @ weights})[subs[0].attrs["columns"]]


def pooled_auc(oof: pd.DataFrame, ranks: bool) -> tuple[float, float]:
    """The pooled AUC (of per-fold ranks with ``ranks``) and the mean of the fold AUCs, as report/cv.py
    reports them."""
    target, pred, fold = oof["target"].to_numpy(), oof["pred"].to_numpy(), oof["fold"].to_numpy()
    pooled = auc(target, fold_ranks(pred, fold) if ranks else pred)
    return pooled, float(pd.Series(fold_aucs(target, pred, fold)).mean())


def write_blend(out: Path, info: dict, oof: pd.DataFrame, sub: pd.DataFrame | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # a replaced blend's files go first (roc.png: drawn by python -m pipeline cv), but blend.json, its marker:
    # written first, so that a folder interrupted half-way is still a blend, without a file of the old one
    for name in ("oof.csv", "submission.csv", "roc.png"):
        (out / name).unlink(missing_ok=True)
    write_json(out / "blend.json", info)
    write_oof(out / "oof.csv", oof)
    if sub is not None:
        write_csv(out / "submission.csv", sub)


def blend(members: list[str | Path], name: str, method: str = "rank", output_dir: str | Path | None = None) -> dict:
    """Blend ``members`` into ``<output_dir>/<name>/``; returns what blend.json holds."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    check_name(name)
    members = [Path(m) for m in members]
    check_members(members)
    out = Path(output_dir if output_dir is not None else default_output_dir(members[0])) / name
    check_blend_folder(out, members)
    check_method(method, members)
    oofs = [read_both_classes(m) for m in members]  # align checks the ids
    base, preds, layout = align(oofs, members)
    subs, why_not = read_submissions(members, layout.id)  # before writing: a bad one must leave nothing half-done
    pred, weights, per_fold = blend_oof(preds, base["fold"], base["target"], method)
    oof = oof_table(layout, base.index, base["group"] if layout.group else None, base["fold"], base["target"],
                    pred.to_numpy())
    sub = blend_submission(subs, method, weights) if subs is not None else None
    info = {"members": [str(m) for m in members], "resolved": [str(m.resolve()) for m in members],
            "method": method, "transform": "probability" if method == "mean" else "rank",
            "weights": weights.tolist(), "submission": "submission.csv" if sub is not None else None}
    if method == "fit":
        info["fold_weights"] = {str(k): w for k, w in per_fold.items()}
    write_blend(out, info, oof, sub)
    print(f"wrote {out / 'oof.csv'} ({len(oof)} rows)" +
          (f", {out / 'submission.csv'} ({len(sub)} rows)" if sub is not None else "") + f", {out / 'blend.json'}")
    if sub is None:
        print(f"no submission made: {why_not}", file=sys.stderr)
    print_scores(members, oofs, out, method, weights, oof)
    return info


def print_scores(members: list[Path], oofs: list[pd.DataFrame], out: Path, method: str,
                 weights: np.ndarray, oof: pd.DataFrame) -> None:
    """The members' figures beside the blend's, computed the same way: a rank or fitted blend is a
    blend of per-fold ranks, so the members' pooled AUC is of their per-fold ranks too (ranking alone
    can lift a pooled AUC whose folds are on different scales: a constant member would seem to help)."""
    ranks = method != "mean"
    rows = [(str(m), f"{w:.3f}", *pooled_auc(o, ranks)) for m, o, w in zip(members, oofs, weights)]
    rows.append((f"{out} ({method})", "", *pooled_auc(oof, ranks)))
    width = max(len(r[0]) for r in rows)
    pooled = "pooled AUC of per-fold ranks" if ranks else "pooled OOF AUC"
    print(f"{'':{width}}  weight  {pooled}  mean fold AUC")
    for label, w, auc_, mean in rows:
        print(f"{label:{width}}  {w:>6}  {auc_:{len(pooled)}.4f}  {mean:13.4f}")
    if ranks:
        print("(every figure of per-fold ranks, as the blend is made of them: compare with the 'pooled AUC of "
              "per-fold ranks' of python -m pipeline cv)")


def is_rank_blend(folder: str | Path) -> bool:
    """Whether ``folder``'s oof.csv holds ranks within each fold, not probabilities: a rank blend."""
    try:
        return json.loads((Path(folder) / MARKERS["blend"]).read_text()).get("transform") == "rank"
    except (OSError, ValueError, AttributeError):
        return False
