"""log.tracker: MLflow (its local SQLite store), TensorBoard (its event files, read back) and W&B (a
stand-in module that records the calls) receive the config, each epoch once, the pooled OOF AUC and
the files; an interrupted run resumes into the same tracker run; a missing package is one line
before training."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, one_error_line, run_main, snapshot, tiny_overrides, torch_on_one_thread

from pipeline.core.config import load_config, to_dict
from pipeline.experiment.record import leaf_keys
from pipeline.experiment.tracker import RECORD, Tracking, wandb_mode

TRAIN = str(ROOT / "train.py")
INFER = str(ROOT / "infer.py")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def rows(log: Path) -> int:
    """Epochs recorded in a log.csv (0 while it does not exist)."""
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def log_rows(exp: Path, fold: int, metric: str) -> list[tuple[int, float]]:
    log = pd.read_csv(exp / f"fold{fold}" / "log.csv")
    return [(int(e), float(v)) for e, v in zip(log["epoch"], log[metric])]


def cv_figures(exp: Path) -> pd.Series:
    from pipeline.report.cv import analyse
    return analyse([exp], n_boot=1000, seed=0).table.iloc[0]


@pytest.fixture(scope="module")
def mlflow_run(tiny_data, tmp_path_factory):
    """A tiny experiment trained through train.py with log.tracker=mlflow: Ctrl-C in fold 0, then the
    same command again to the end, then ``python -m pipeline cv`` on it (and on oof/*)."""
    from mlflow.tracking import MlflowClient
    work = tmp_path_factory.mktemp("mlflow")
    args = tiny_overrides(tiny_data, work, **{"folds.n_folds": 2, "train.epochs": 2, "name": "ml",
                                              "log.tracker": "mlflow"})
    exp = work / "oof" / "ml"
    with open(work / "first.out", "w") as out, open(work / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, TRAIN, *args], cwd=work, env=ENV, stdout=out, stderr=err)
    deadline = time.time() + 240
    while rows(exp / "fold0" / "log.csv") < 1:
        assert first.poll() is None and time.time() < deadline, (work / "first.err").read_text()[-3000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    res = {"work": work, "exp": exp, "sigint_rc": first.wait(240), "client": MlflowClient(
        f"sqlite:///{work / 'oof' / 'mlruns' / 'mlflow.db'}")}
    res["after_sigint"] = json.loads((exp / RECORD).read_text())
    res["status_after_sigint"] = res["client"].get_run(res["after_sigint"]["run_id"]).info.status
    with torch_on_one_thread():
        res["resumed"] = run_main(TRAIN, *args, cwd=work).stdout
    res["cv"] = run_main("-m", "pipeline", "cv", str(exp), str(work / "oof" / "mlruns"), "--no-cam", cwd=work).stdout
    res["record"] = json.loads((exp / RECORD).read_text())
    res["cfg"], res["args"] = load_config(None, args), args
    return res


def test_mlflow_holds_the_config_each_epoch_once_the_pooled_oof_auc_and_the_files(mlflow_run, tmp_path):
    client, exp, record = mlflow_run["client"], mlflow_run["exp"], mlflow_run["record"]
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "melanoma-pipeline"
    # the resolved config, one parameter per dotted key
    assert set(run.data.params) == set(leaf_keys(to_dict(mlflow_run["cfg"])))
    assert run.data.params["train.epochs"] == "2" and run.data.params["log.tracker"] == "mlflow"
    assert run.data.params["model.meta_hidden"] == "[128, 32]"
    # every epoch of each fold once, at step = epoch, as in its log.csv (fold 0 was interrupted)
    for fold in (0, 1):
        for metric in ("train_loss", "val_auc", "lr"):
            assert history(client, run.info.run_id, f"fold{fold}/{metric}") == log_rows(exp, fold, metric)
    assert record["logged"] == {"0": 2, "1": 2}
    # the pooled OOF AUC and its interval, as python -m pipeline cv gives them, at step = folds
    cv = cv_figures(exp)
    for key, col in [("auc", "pooled_auc"), ("auc_lo", "pooled_lo"), ("auc_hi", "pooled_hi"),
                     ("fold_auc_mean", "fold_auc_mean")]:
        assert history(client, run.info.run_id, f"oof/{key}") == [(2, pytest.approx(cv[col]))]
    # oof.csv, and python -m pipeline cv's report.html
    got = Path(client.download_artifacts(run.info.run_id, "oof.csv", str(tmp_path)))
    assert got.read_bytes() == (exp / "oof.csv").read_bytes()
    report = mlflow_run["work"] / "oof" / "compare" / "ml" / "report.html"
    got = Path(client.download_artifacts(run.info.run_id, "cv/ml/report.html", str(tmp_path)))
    assert got.read_bytes() == report.read_bytes()
    assert f"logged {report}" in mlflow_run["cv"]
    # the store lies under output_dir, and `cv oof/*` passes it by
    assert f"skipping {mlflow_run['work'] / 'oof' / 'mlruns'}: MLflow's store" in mlflow_run["cv"]
    assert (mlflow_run["work"] / "oof" / "mlruns" / "artifacts").is_dir()


def test_an_interrupted_run_resumes_into_the_same_mlflow_run(mlflow_run):
    assert mlflow_run["sigint_rc"] == 130
    assert mlflow_run["status_after_sigint"] == "KILLED"
    assert mlflow_run["after_sigint"]["logged"] == {"0": 1}  # the saved epoch, logged before the Ctrl-C
    run_id = mlflow_run["record"]["run_id"]
    assert run_id == mlflow_run["after_sigint"]["run_id"]
    assert f"log.tracker=mlflow: continuing run {run_id}" in mlflow_run["resumed"]
    client = mlflow_run["client"]
    runs = client.search_runs([client.get_experiment_by_name("melanoma-pipeline").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not two


def test_another_project_or_store_starts_a_new_run_with_every_fold_and_reopening_continues_it(mlflow_run, tmp_path):
    """A copy of the experiment (same store, same data) opened with another log.project: a new MLflow run
    in that project, holding the folds' epochs from their log.csv. Opened again after fold 0's second
    epoch was saved but not logged (a kill in between): the same run, and that epoch logged once.
    Another log.tracking_uri: a new run in that store."""
    work = mlflow_run["work"]
    exp = work / "oof" / "ml_copy"
    shutil.copytree(mlflow_run["exp"], exp)
    cfg_args = [*mlflow_run["args"], "name=ml_copy", "log.project=other"]
    cfg = load_config(None, cfg_args)
    full = (exp / "fold0" / "log.csv").read_text()
    (exp / "fold0" / "log.csv").write_text("".join(full.splitlines(keepends=True)[:2]))  # epoch 1 only
    Tracking.open(cfg, force=False).close()
    assert json.loads((exp / RECORD).read_text())["logged"] == {"0": 1, "1": 2}
    (exp / "fold0" / "log.csv").write_text(full)
    again = Tracking.open(cfg, force=False)
    again.close()
    client = mlflow_run["client"]
    run_id = json.loads((exp / RECORD).read_text())["run_id"]
    assert run_id != mlflow_run["record"]["run_id"] and again.record["run_id"] == run_id
    runs = client.search_runs([client.get_experiment_by_name("other").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    for fold in (0, 1):
        assert history(client, run_id, f"fold{fold}/val_auc") == log_rows(exp, fold, "val_auc")
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    Tracking.open(load_config(None, [*cfg_args, f"log.tracking_uri={uri}"]), force=False).close()
    record = json.loads((exp / RECORD).read_text())
    assert record["where"] == uri and record["run_id"] != run_id
    assert MlflowClient(uri).get_run(record["run_id"]).info.run_name == "ml_copy"


# ---------------------------------------------------------------- TensorBoard, W&B, the refusals

@pytest.fixture(scope="module")
def tb_run(tiny_data, tmp_path_factory):
    """Fold 0 of 2 trained with log.tracker=tensorboard, and the same command once more."""
    work = tmp_path_factory.mktemp("tb")
    overrides = tiny_overrides(tiny_data, work, **{"folds.n_folds": 2, "train.epochs": 2, "name": "tb",
                                                   "log.tracker": "tensorboard"})
    args = overrides + ["--folds", "0"]
    with torch_on_one_thread():
        outs = [run_main(TRAIN, *args, cwd=work).stdout for _ in range(2)]
    return {"work": work, "exp": work / "oof" / "tb", "args": args, "overrides": overrides, "outs": outs}


def tb_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_tensorboard_event_files_hold_each_epoch_once_the_pooled_oof_auc_and_the_config(tb_run):
    exp = tb_run["exp"]
    record = json.loads((exp / RECORD).read_text())
    assert [p.name for p in (exp / "tensorboard").iterdir()] == [record["run_id"]]  # the rerun: the same run
    assert f"log.tracker=tensorboard: continuing run {record['run_id']}" in tb_run["outs"][1]
    scalars, acc = tb_events(exp / "tensorboard" / record["run_id"])
    for metric in ("train_loss", "val_auc", "lr"):
        assert scalars[f"fold0/{metric}"] == [(e, pytest.approx(v)) for e, v in log_rows(exp, 0, metric)]
    cv = cv_figures(exp)
    assert scalars["oof/auc"] == [(1, pytest.approx(cv["pooled_auc"]))]  # once: the rerun trained nothing
    assert scalars["oof/auc_lo"] == [(1, pytest.approx(cv["pooled_lo"]))]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "train.epochs: 2" in text and "log.tracker: tensorboard" in text


def test_force_starts_a_new_tensorboard_run_with_the_folds_kept(tb_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tb_run["work"] / "oof", work / "oof")
    exp = work / "oof" / "tb"
    old = json.loads((exp / RECORD).read_text())["run_id"]
    cfg = load_config(None, [*tb_run["overrides"], f"output_dir={work / 'oof'}"])
    Tracking.open(cfg, force=True).close()
    new = json.loads((exp / RECORD).read_text())["run_id"]
    assert new != old and sorted(p.name for p in (exp / "tensorboard").iterdir()) == sorted([old, new])
    scalars, _ = tb_events(exp / "tensorboard" / new)
    assert scalars["fold0/val_auc"] == [(e, pytest.approx(v)) for e, v in log_rows(exp, 0, "val_auc")]


def test_only_rank_0_opens_the_tracker(tb_run):
    from pipeline.train.distributed import Dist
    from pipeline.train.tracking import NO_TRACKING, open_tracking
    before = snapshot(tb_run["work"] / "oof")
    cfg = load_config(None, tb_run["overrides"])
    assert open_tracking(cfg, False, Dist(rank=1, world=2, local_rank=1)) is NO_TRACKING
    assert snapshot(tb_run["work"] / "oof") == before


def test_the_tracker_files_belong_to_the_experiment_folder(tb_run):
    from pipeline.experiment.folder import foreign_entries
    exp = tb_run["exp"]
    assert (exp / "tensorboard").is_dir() and (exp / RECORD).is_file()
    assert foreign_entries(exp) == []  # so --force may delete them, with the rest of the experiment


@pytest.mark.parametrize("tracker", ["mlflow", "tensorboard", "wandb"])
def test_a_missing_tracker_package_is_one_line_before_training(tb_run, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import <tracker>` fails as when it is not installed
    before = snapshot(tb_run["work"])
    args = [a for a in tb_run["args"] if not a.startswith("log.tracker=")] + [f"log.tracker={tracker}"]
    line = one_error_line(run_main(TRAIN, *args, cwd=tb_run["work"], check=False))
    assert line.startswith(f"error: log.tracker={tracker} needs the {tracker} package (")
    assert line.endswith(f"pip install {tracker}, or set log.tracker=none")
    assert snapshot(tb_run["work"]) == before


def test_a_tracker_not_chosen_is_never_imported(tb_run, monkeypatch):
    """train.py with log.tracker=none on the TensorBoard experiment, every tracker's package blocked: it
    runs, and its tracker run is left as it was."""
    for name in ("mlflow", "tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, name, None)
    record = (tb_run["exp"] / RECORD).read_text()
    args = [a for a in tb_run["args"] if not a.startswith("log.")] + ["log.tracker=none"]
    out = run_main(TRAIN, *args, cwd=tb_run["work"]).stdout
    assert "fold 0: done already" in out and "log.tracker" not in out
    assert (tb_run["exp"] / RECORD).read_text() == record


@pytest.mark.parametrize("given, says", [
    pytest.param(["log.tracker=neptune"],
                 "error: log.tracker must be one of none, mlflow, tensorboard, wandb, got 'neptune'", id="unknown"),
    pytest.param(["log.tracking_uri=http://localhost:5000"],
                 "error: log.tracking_uri does nothing without log.tracker=mlflow: give log.tracker=mlflow too",
                 id="uri_without_mlflow"),
    pytest.param(["log.tracker=tensorboard", "log.project=p"],
                 "error: log.project does nothing without log.tracker=mlflow or wandb", id="project_without_one"),
    pytest.param(["log.tracker=mlflow", "name=mlruns"],
                 "mlruns holds MLflow's store (log.tracker=mlflow without log.tracking_uri); use another name",
                 id="name_of_the_store"),
])
def test_log_keys_that_cannot_work_are_one_line(tiny_data, tmp_path, given, says):
    args = tiny_overrides(tiny_data, tmp_path, **{"folds.n_folds": 2}) + given
    line = one_error_line(run_main(TRAIN, *args, cwd=tmp_path, check=False))
    assert line.startswith("error: ") and says.removeprefix("error: ") in line
    assert not (tmp_path / "oof").exists()


def test_infer_py_refuses_a_log_key(tb_run):
    args = [a for a in tb_run["args"] if not a.startswith(("log.", "--folds", "0"))] + ["log.tracker=mlflow"]
    line = one_error_line(run_main(INFER, *args, cwd=tb_run["work"], check=False))
    assert line == "error: log.tracker is not read by infer.py (train.py logs to the tracker); leave it out"


class FakeRun:
    """What the pipeline calls of a W&B run, recorded."""

    def __init__(self, calls: list, kwargs: dict):
        self.calls, self.id = calls, kwargs.get("id") or "wb1"

    def define_metric(self, name, step_metric=None):
        self.calls.append(("define_metric", name, step_metric))

    def log(self, data):
        self.calls.append(("log", data))

    def save(self, path, base_path=None, policy=None):
        self.calls.append(("save", Path(path).name, policy))

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


def test_wandb_is_offline_unless_logged_in_and_reopens_its_run(tb_run, tmp_path, monkeypatch):
    """The TensorBoard experiment switched to W&B (a stand-in for the package): a new run holding the
    trained fold's epochs from its log.csv and the OOF AUC, offline; the same command with an API key
    reopens it, online, and logs nothing twice."""
    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun(calls, kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    work = tb_run["work"]
    shutil.copytree(tb_run["exp"], work / "oof" / "wb")
    args = [a for a in tb_run["args"] if not a.startswith(("log.", "name="))] + ["name=wb", "log.tracker=wandb"]
    run_main(TRAIN, *args, cwd=work)
    exp = work / "oof" / "wb"
    init = calls[0][1]
    assert init["mode"] == "offline" and init["dir"] == str(exp) and init["project"] == "melanoma-pipeline"
    assert (exp / "wandb").is_dir()  # where W&B keeps its files: <dir>/wandb
    assert init["name"] == "wb" and set(init["config"]) == set(leaf_keys(to_dict(load_config(None, []))))
    assert init["config"]["log.tracker"] == "wandb" and init["config"]["train.folds"] == "[0]"
    logged = [c[1] for c in calls if c[0] == "log"]
    val = log_rows(exp, 0, "val_auc")
    assert [(d["fold0/epoch"], d["fold0/val_auc"]) for d in logged[:2]] == [(e, pytest.approx(v)) for e, v in val]
    assert logged[2]["oof/folds"] == 1 and logged[2]["oof/auc"] == pytest.approx(cv_figures(exp)["pooled_auc"])
    assert ("define_metric", "fold0/*", "fold0/epoch") in calls and ("save", "oof.csv", "now") in calls
    assert calls[-1] == ("finish", 0)

    calls.clear()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    run_main(TRAIN, *args, cwd=work)
    assert calls == [("init", {"project": "melanoma-pipeline", "dir": str(exp), "mode": "online", "id": "wb1",
                               "resume": "allow"}), ("finish", 0)]
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # the user's WANDB_MODE: W&B reads it itself
