"""TTA views as a lever: a trained experiment's folds predict their validation rows again with 1, 2,
4 and 8 views (flips and transposes), from the same best.pt files train.py wrote. Each view count
becomes an OOF table that ``python -m pipeline cv`` compares with intervals; no training.

    .venv/bin/python benchmarks/tta_views.py oof/cpuhour/ref_seed42 --views 1,2,4,8
    .venv/bin/python -m pipeline cv oof/cpuhour/ref_seed42_tta{1,2,4,8} --baseline ref_seed42_tta4 --no-plot
    .venv/bin/python benchmarks/tta_views.py oof/x --views 4 --backend openvino --precision int8  # -> oof/x_tta4_openvino-int8

``--backend`` and ``--precision`` predict with another ``infer.backend`` / ``infer.precision`` than the
experiment's (int8 calibrated on each fold's own training rows, calibration.from_training, as
train.py does; the export is made in memory, nothing is written beside best.pt); the folders are then
named ``<experiment>_tta<views>_<backend>-<precision>``.

Each table goes beside the experiment, ``<experiment>_tta<views>/``: a re-prediction folder
(``tta.json``, what it re-predicts, written first; then ``oof.csv``), new or an earlier re-prediction,
never an experiment or another tool's folder (pipeline/core/folders.py): the experiment folder holds only
what train.py writes. Every problem is refused before any prediction, in one line: view counts
outside 1..8 (there are 8 views: a 9th would be averaged as if it existed), a folder that is not a
trained experiment, an output folder of another kind, data that differs from what the experiment was
trained on (its data.csv: a re-prediction of other rows is no re-prediction).

The predictions are train.py's own path: prepare.prepare, checkpoints.predicting_model (the one way a
trained fold predicts), loop.predict; the seconds printed are the validation rows' inference time
for each view count.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.core import config as C  # noqa: E402
from pipeline.core import disk, folders  # noqa: E402
from pipeline.experiment import oof as oof_table  # noqa: E402
from pipeline.train.checkpoints import predicting_model  # noqa: E402
from pipeline.cli import parse_ints, stoppable  # noqa: E402
from pipeline.train.process import tune_process  # noqa: E402
from pipeline.train.loop import predict  # noqa: E402
from pipeline.core.errors import ConfigError, ExperimentError  # noqa: E402
from pipeline.experiment.record import saved_config  # noqa: E402
from pipeline.core.files import write_json  # noqa: E402
from pipeline.data.prepare import aux_head, eval_loader, prepare
from pipeline.experiment.oof import oof_rows  # noqa: E402
from pipeline.train.calibration import fold_calibration  # noqa: E402
from pipeline.experiment.record import data_changes, missing_record, training_record  # noqa: E402
from pipeline.report.stats import auc  # noqa: E402

VIEWS = 8  # loop.tta_views: the flips and transposes of a square image


def parse_views(text: str) -> list[int]:
    views = parse_ints(text, "--views", "1,2,4,8")
    bad = [v for v in views if not 1 <= v <= VIEWS]
    if bad:
        raise ConfigError(f"--views must be view counts in 1..{VIEWS} (the flips and transposes of an image), "
                            f"got {bad}")
    return views


def open_experiment(exp: Path) -> C.Config:
    """The trained config of ``exp``, refused unless it is an experiment whose every fold has a best.pt."""
    disk.check_name_length(exp)
    if not exp.is_dir():
        raise ExperimentError(f"{exp}: no such folder")
    kind = folders.kind(exp)
    if kind != "experiment":
        what = f"is {folders.describe(kind)}" if kind else "is not a trained experiment (config.yaml, data.csv, ...)"
        raise ExperimentError(f"{exp}: {what}; tta_views re-predicts the folds of a trained experiment")
    cfg = saved_config(exp / "config.yaml")
    cfg.output_dir, cfg.name = str(exp.parent), exp.name
    missing = [k for k in range(cfg.folds.n_folds) if not (exp / f"fold{k}" / "best.pt").is_file()]
    if missing:
        raise ExperimentError(f"{exp}: fold(s) {missing} have no best.pt; a pooled OOF needs every fold")
    return cfg


def outputs(exp: Path, views: list[int], suffix: str = "") -> dict[int, Path]:
    """``<experiment>_tta<v><suffix>`` for each view count, each a new folder or an earlier re-prediction."""
    outs = {v: exp.with_name(f"{exp.name}_tta{v}{suffix}") for v in views}
    for out in outs.values():
        folders.check_output_folder(out, "re-prediction", "move that folder away (or re-predict a copy of the "
                                                   "experiment under another name)")
        disk.check_writable(out, what=" the re-prediction")
    return outs


def check_same_data(exp: Path, cfg: C.Config, data) -> None:
    missing = missing_record(exp)
    changes = [] if missing else data_changes(exp, training_record(data.df, cfg, data.digests), data.fitted())
    if missing or changes:
        what = f": {missing}" if missing else f" was trained on other data: {'; '.join(changes[:4])}"
        raise ExperimentError(f"{exp}{what}; a re-prediction must "
                              f"see the rows and images it was trained on: restore them (data.root in its config.yaml)")


def predict_views(cfg: C.Config, data, exp: Path, views: list[int]) -> tuple[dict, dict]:
    """Each view count's OOF rows and its inference seconds, fold by fold."""
    tables, seconds = {v: [] for v in views}, {v: 0.0 for v in views}
    for k in range(cfg.folds.n_folds):
        idx = np.flatnonzero(data.df["fold"].to_numpy() == k)
        loader = eval_loader(cfg, data, idx)
        model, rt = predicting_model(cfg, data.meta.shape[1], exp / f"fold{k}", data.diagnosis if aux_head(cfg) else None,
                                     calibration=fold_calibration(cfg, k, data), write_export=False)
        for v in views:
            start = time.perf_counter()
            pred = predict(model, loader, rt, tta=v, desc=f"fold {k} TTA x{v}")
            seconds[v] += time.perf_counter() - start
            tables[v].append(oof_rows(cfg, data, idx, pred))
    return tables, seconds


def write_re_prediction(out: Path, exp: Path, views: int, oof: pd.DataFrame, infer: dict) -> None:
    """tta.json first (the marker), after the files of an earlier re-prediction have gone."""
    for name in ("oof.csv", "roc.png"):
        (out / name).unlink(missing_ok=True)
    write_json(out / "tta.json", {"experiment": str(exp), "resolved": str(exp.resolve()), "views": views, **infer})
    oof_table.write(out / "oof.csv", oof)


def re_predict(exp: Path, views_text: str, backend: str | None = None, precision: str | None = None) -> None:
    views = parse_views(views_text)
    exp = exp.resolve() if exp.name in ("", ".", "..") else exp
    cfg = open_experiment(exp)
    given = [f"infer.{k}={v}" for k, v in (("backend", backend), ("precision", precision)) if v]
    cfg = C.with_overrides(cfg, given)
    outs = outputs(exp, views, f"_{cfg.infer.backend}-{cfg.infer.precision}" if given else "")
    tune_process(cfg)
    data = prepare(cfg)
    check_same_data(exp, cfg, data)
    tables, seconds = predict_views(cfg, data, exp, views)
    print(f"(the experiment's own oof.csv: TTA x{cfg.infer.tta})")
    for v in views:
        oof = pd.concat(tables[v], ignore_index=True)
        write_re_prediction(outs[v], exp, v, oof, {"backend": cfg.infer.backend, "precision": cfg.infer.precision})
        print(f"TTA x{v}: pooled OOF AUC {auc(oof['target'], oof['pred']):.4f}, "
              f"{seconds[v]:.1f} s for {len(oof)} images -> {outs[v] / 'oof.csv'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="a trained experiment folder (config.yaml, fold<k>/best.pt)")
    p.add_argument("--views", default="1,2,4,8", help=f"comma-separated view counts (1..{VIEWS})")
    p.add_argument("--backend", help="infer.backend to predict with (default: the experiment's)")
    p.add_argument("--precision", help="infer.precision to predict with (default: the experiment's)")
    args = p.parse_args(argv)
    return stoppable(lambda: re_predict(args.experiment, args.views, args.backend, args.precision))


if __name__ == "__main__":
    sys.exit(main())
