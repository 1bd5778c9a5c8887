"""Experiment trackers (``log.tracker``): MLflow, TensorBoard or Weights & Biases. Each is an optional
package, imported only when chosen; a missing one is refused in one line before training
(``check_tracker``).

What a training run logs (under torchrun, rank 0 alone):

- when its tracker run starts: the resolved config as parameters, one per dotted key (``train.lr``);
- each epoch of fold k once it is saved: ``fold<k>/train_loss``, ``fold<k>/val_auc`` and ``fold<k>/lr``
  at step = epoch, read from ``fold<k>/log.csv``;
- at the end of the command (``pipeline/train/tracking.py``): ``oof/auc``, ``oof/auc_lo`` and
  ``oof/auc_hi``, the pooled OOF AUC and its 95% interval as ``python -m pipeline cv`` gives them, at
  step = the folds in oof.csv, and oof.csv as an artifact;
- ``python -m pipeline cv``: its report.html as the artifact ``cv/<its folder>/report.html`` of each
  experiment it reports (``log_report``; with W&B a file of the run).

The tracker run is recorded in ``<exp>/tracker.json`` with the epochs logged to it per fold. The same
command again (a resume) reopens that run, never a second one, and logs each epoch once: epochs saved
but not logged (a kill in between) are logged when the experiment is next opened, as are the folds
trained before the tracker was chosen. ``--force``, another tracker, or another tracking URI or
project starts a new run, into which the folds kept are logged from their log.csv.

- MLflow: by default a SQLite file, ``<output_dir>/mlruns/mlflow.db`` (no server), with the artifacts
  in ``<output_dir>/mlruns/artifacts``; ``log.tracking_uri`` names another store. The
  MLflow experiment is ``log.project``, the run is named after the experiment (``name``).
- TensorBoard: event files in ``<exp>/tensorboard/<run>/`` (``torch.utils.tensorboard``); the config is
  the text ``config``; no artifacts.
- W&B: offline (in ``<exp>/wandb/``) unless WANDB_MODE says otherwise or the user is logged in
  (WANDB_API_KEY, or ``wandb login``'s entry in ~/.netrc), then online; project ``log.project``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.files import write_json
from pipeline.core.log_config import PACKAGES, LogConfig
from pipeline.experiment.record import get_key, leaf_keys
from pipeline.experiment.run import experiment_lock

RECORD = "tracker.json"
STORE = "mlruns"  # the default MLflow store's folder under output_dir
EPOCH_METRICS = ("train_loss", "val_auc", "lr")


def check_tracker(cfg: Config) -> None:
    """Refuse a tracker whose package cannot be imported (naming what to pip install), and an
    experiment named as the default MLflow store's folder, before anything is written."""
    tracker = cfg.log.tracker
    if tracker == "none":
        return
    package = PACKAGES[tracker]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise ConfigError(f"log.tracker={tracker} needs the {package} package ({e}): pip install {package}, or "
                          f"set log.tracker=none") from None
    if tracker == "mlflow" and not cfg.log.tracking_uri and cfg.name == STORE:
        raise ConfigError(f"name={STORE}: {cfg.output_dir}/{STORE} holds MLflow's store (log.tracker=mlflow without "
                          f"log.tracking_uri); use another name")


def params(cfg: Config) -> dict[str, str]:
    """The resolved config as one text value per dotted key; lists and mappings as JSON."""
    d = to_dict(cfg)
    values = {key: get_key(d, key) for key in leaf_keys(d)}
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in values.items()}


# ---------------------------------------------------------------- the trackers

class Backend:
    """No tracker (log.tracker=none): every call does nothing. ``where`` (the store) and ``project`` say
    which run a recorded one can be."""
    where = project = ""

    def start(self, name: str, values: dict[str, str]) -> str:
        return ""

    def resume(self, run_id: str) -> bool:
        return True

    def running(self) -> None:
        """A reopened run trains again."""

    def log(self, metrics: dict[str, float], step: int, step_name: str) -> None:
        pass

    def artifact(self, path: Path, folder: str = "") -> None:
        pass

    def flush(self) -> None:
        pass

    def end(self, status: str | None) -> None:
        pass


class MlflowBackend(Backend):
    """An MLflow run, through ``MlflowClient`` (no global active run)."""

    def __init__(self, exp: Path, log: LogConfig):
        import logging

        from mlflow.tracking import MlflowClient
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not the database set-up's INFO lines
        self.artifacts = None
        if log.tracking_uri:
            self.where = log.tracking_uri
        else:
            store = exp.resolve().parent / STORE
            store.mkdir(parents=True, exist_ok=True)
            self.where, self.artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.client, self.project, self.run_id = MlflowClient(self.where), log.project, ""

    def start(self, name: str, values: dict[str, str]) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        found = self.client.get_experiment_by_name(self.project)
        if found is None:
            try:
                eid = self.client.create_experiment(self.project, artifact_location=self.artifacts)
            except MlflowException:  # another process made it meanwhile
                eid = self.client.get_experiment_by_name(self.project).experiment_id
        else:
            eid = found.experiment_id
        self.run_id = self.client.create_run(eid, run_name=name).info.run_id
        items = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def resume(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self.run_id = run_id
        return True

    def running(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

    def log(self, metrics: dict[str, float], step: int, step_name: str) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def artifact(self, path: Path, folder: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def end(self, status: str | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, status)


class TensorBoardBackend(Backend):
    """Event files in ``<exp>/tensorboard/<run>/``: a run is a folder, reopened by its name."""

    def __init__(self, exp: Path, log: LogConfig):
        from torch.utils.tensorboard import SummaryWriter
        self.writer_class, self.folder, self.writer = SummaryWriter, exp / "tensorboard", None

    def start(self, name: str, values: dict[str, str]) -> str:
        run_id = stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (self.folder / run_id).exists():
            n += 1
            run_id = f"{stamp}-{n}"
        self.writer = self.writer_class(str(self.folder / run_id))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in values.items()))  # a code block
        return run_id

    def resume(self, run_id: str) -> bool:
        if not run_id or not (self.folder / run_id).is_dir():
            return False
        self.writer = self.writer_class(str(self.folder / run_id))
        return True

    def log(self, metrics: dict[str, float], step: int, step_name: str) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), step)

    def flush(self) -> None:
        self.writer.flush()

    def end(self, status: str | None) -> None:
        self.writer.close()


def wandb_mode() -> str | None:
    """W&B's mode: None (its own) when WANDB_MODE is set; online when the user is logged in (WANDB_API_KEY,
    or an entry for W&B's host in ~/.netrc, where ``wandb login`` puts the key); else offline."""
    import netrc
    from urllib.parse import urlparse
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbBackend(Backend):
    """A W&B run in ``<exp>/wandb/``, reopened by its id. W&B's own step only grows, so each fold (and
    the OOF summary) has a step metric of its own: ``fold<k>/epoch``, ``oof/folds``."""

    def __init__(self, exp: Path, log: LogConfig):
        import wandb
        self.wandb, self.exp, self.project, self.run, self.steps = wandb, exp, log.project, None, set()

    def _init(self, **kwargs) -> None:
        mode = wandb_mode()
        (self.exp / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=self.project, dir=str(self.exp), **({"mode": mode} if mode else {}),
                                   **kwargs)

    def start(self, name: str, values: dict[str, str]) -> str:
        self._init(name=name, config=values)
        return self.run.id

    def resume(self, run_id: str) -> bool:
        self._init(id=run_id, resume="allow")
        return True

    def log(self, metrics: dict[str, float], step: int, step_name: str) -> None:
        prefix = next(iter(metrics)).split("/")[0]
        if prefix not in self.steps:
            self.run.define_metric(f"{prefix}/{step_name}")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/{step_name}")
            self.steps.add(prefix)
        self.run.log({**{k: float(v) for k, v in metrics.items()}, f"{prefix}/{step_name}": step})

    def artifact(self, path: Path, folder: str = "") -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")  # a file of the run

    def end(self, status: str | None) -> None:
        self.run.finish(exit_code=0 if status in (None, "FINISHED") else 1)


BACKENDS = {"mlflow": MlflowBackend, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}


# ---------------------------------------------------------------- the run of an experiment

def read_record(exp: Path) -> dict | None:
    """``<exp>/tracker.json``, or None where there is none (or it cannot be read: a new run then)."""
    try:
        record = json.loads((exp / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"tracker", "where", "project", "run_id"} <= record.keys() else None


def status_of(error: BaseException | None) -> str:
    """The end status of a tracker run, from what ended the command."""
    if error is None:
        return "FINISHED"
    return "KILLED" if type(error).__name__ in ("Interrupted", "KeyboardInterrupt") else "FAILED"


class Tracking:
    """A training command's tracker run on an experiment (``open``): each fold's new epochs (``fold``),
    the summary at the end (``summary``), the end (``close``)."""

    def __init__(self, exp: Path | None, backend: Backend, record: dict):
        self.exp, self.backend, self.record = exp, backend, record

    @classmethod
    def open(cls, cfg: Config, force: bool) -> Tracking:
        """The run recorded in tracker.json, reopened; or (with ``force``, another tracker, store or
        project, or none recorded) a new one, recorded. The epochs of every fold not logged yet are logged."""
        if cfg.log.tracker == "none":
            return NO_TRACKING
        exp = cfg.exp_dir
        backend = BACKENDS[cfg.log.tracker](exp, cfg.log)
        with experiment_lock(exp).acquire_wait():
            record = read_record(exp)
            same = (record is not None and not force and record["tracker"] == cfg.log.tracker
                    and record["where"] == backend.where and record["project"] == backend.project)
            resumed = same and backend.resume(record["run_id"])
            if resumed:
                backend.running()
            elif same:
                print(f"warning: {exp / RECORD}: run {record['run_id']} cannot be reopened (deleted?); starting "
                      f"a new one", file=sys.stderr)
            if not resumed:
                record = {"tracker": cfg.log.tracker, "where": backend.where, "project": backend.project,
                          "run_id": backend.start(cfg.name, params(cfg)), "logged": {}, "oof_folds": 0}
                write_json(exp / RECORD, record)
        print(f"log.tracker={cfg.log.tracker}: {'continuing' if resumed else 'new'} run {record['run_id']}"
              f"{f' in {backend.where}' if backend.where else ''}")
        track = cls(exp, backend, record)
        for log in sorted(exp.glob("fold*/log.csv")):
            if log.parent.name[4:].isdigit():
                track.fold(int(log.parent.name[4:]))
        return track

    @contextlib.contextmanager
    def _saved(self):
        """The record as tracker.json holds it (other processes of the experiment count their folds
        there), under the experiment lock; written back when changed."""
        with experiment_lock(self.exp).acquire_wait():
            saved = read_record(self.exp)
            if saved is not None and saved["run_id"] == self.record["run_id"]:
                self.record = saved
            before = json.dumps(self.record, sort_keys=True)
            yield self.record
            if json.dumps(self.record, sort_keys=True) != before:
                write_json(self.exp / RECORD, self.record)

    def fold(self, k: int) -> None:
        """Log the epochs of fold ``k``'s log.csv not logged yet, and count them in tracker.json."""
        if self.exp is None:
            return
        path = self.exp / f"fold{k}" / "log.csv"
        with self._saved() as record:
            done = int(record.setdefault("logged", {}).get(str(k), 0))
            log = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame({"epoch": []})
            new = log[log["epoch"] > done]
            for _, row in new.iterrows():
                values = {f"fold{k}/{m}": row[m] for m in EPOCH_METRICS if m in row and not pd.isna(row[m])}
                if values:
                    self.backend.log(values, int(row["epoch"]), "epoch")
            if len(new):
                self.backend.flush()
                record["logged"][str(k)] = int(new["epoch"].max())

    def summary(self, metrics: dict[str, float], step: int, files: list[Path]) -> None:
        """The experiment's figures at the end of a command (``oof/...`` at ``step``, the folds in oof.csv)
        and its files; once per step: a command that trained no new fold logs nothing."""
        if self.exp is None:
            return
        with self._saved() as record:
            if int(record.get("oof_folds", 0)) >= step:
                return
            finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
            if finite:
                self.backend.log(finite, step, "folds")
            for path in files:
                self.backend.artifact(path)
            self.backend.flush()
            record["oof_folds"] = step

    def close(self, error: BaseException | None = None) -> None:
        """End the tracker run: finished, killed (Ctrl-C) or failed, as ``error`` says."""
        if self.exp is not None:
            self.backend.end(status_of(error))

NO_TRACKING = Tracking(None, Backend(), {})


def log_report(exp_dirs: list, report: Path) -> None:
    """``python -m pipeline cv``: ``report`` (its report.html) as the artifact cv/<its folder>/report.html
    of the tracker run of each experiment that has one (MLflow, W&B); a tracker that cannot be imported is a
    warning. Nothing without a report.html (``--no-plot``)."""
    for exp in map(Path, exp_dirs if report.is_file() else []):
        record = read_record(exp)
        if record is None or record["tracker"] not in ("mlflow", "wandb"):
            continue
        log = LogConfig(tracker=record["tracker"], project=record["project"],
                        tracking_uri=record["where"] if record["tracker"] == "mlflow" else "")
        try:
            backend = BACKENDS[record["tracker"]](exp, log)
        except ImportError as e:
            print(f"warning: {report} not logged to {exp}'s {record['tracker']} run ({e})", file=sys.stderr)
            continue
        if backend.resume(record["run_id"]):
            backend.artifact(report, f"cv/{report.parent.name}")
            backend.end(None)
            print(f"logged {report} to {exp}'s {record['tracker']} run {record['run_id']}")
