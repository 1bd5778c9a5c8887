"""An experiment is what it says it is: checked before anything is written, refused on other data or
folds, one writer per fold, --force deletes only what the pipeline wrote (pipeline/experiment/).

Most cases go through train.py in a subprocess, as a user would; a module fixture trains one tiny
experiment (3 folds, 1 epoch) that the tests copy.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import ROOT, copy_finished, one_error_line, only, run_cli, run_main, snapshot, tiny_overrides

from pipeline.core import config as C
from pipeline.core.errors import DataError, ExperimentError
from pipeline.data.tables import load_train
from pipeline.experiment.folder import check_config
from pipeline.experiment.oof import collect_oof, read as read_oof
from pipeline.experiment.record import read_record
from pipeline.train import trainer as T

TRAIN = str(ROOT / "train.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def args(data: Path, work: Path, **extra) -> list[str]:
    return tiny_overrides(data, work, **{"train.epochs": 1, **extra})


@pytest.fixture(scope="module")
def trained(finished, tmp_path_factory):
    """The session's finished tiny experiment, copied for this module."""
    data, work = copy_finished(finished, tmp_path_factory.mktemp("trained"))
    cfg = C.load_config(None, args(data, work))
    return SimpleNamespace(cfg=cfg, data=data, work=work, oof=read_oof(cfg.exp_dir / "oof.csv"))


@pytest.fixture
def copy(finished, tmp_path):
    """The finished experiment and its data, copied: (data folder, work folder with oof/tiny)."""
    return copy_finished(finished, tmp_path)


# --- the experiment records what it was trained on ----------------------------------------------

def test_the_experiment_records_its_data_folds_and_image_hashes(trained):
    exp = trained.cfg.exp_dir
    record, folds = read_record(exp / "data.csv"), pd.read_csv(exp / "folds.csv", dtype={"image_name": "string"})
    train = load_train(trained.cfg)
    assert list(record.columns) == ["image_name", "fold", "target", "patient_id", "sex",
                                    "anatom_site_general_challenge", "age_approx", "image_sha"]
    assert sorted(record["image_name"]) == sorted(train["image_name"]) == sorted(folds["image_name"])
    assert record["image_sha"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert record["image_sha"].nunique() == len(record)  # content hashes: every generated image differs
    fold_of = dict(zip(folds["image_name"], folds["fold"]))
    assert all(fold_of[i] == int(k) for i, k in zip(record["image_name"], record["fold"]))
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": "string"})
    assert sorted(oof["image_name"]) == sorted(train["image_name"])  # every training id exactly once


def change_age(data: Path):
    df = pd.read_csv(data / "train.csv", dtype="string")
    df.loc[3, "age_approx"] = "77.0" if df.loc[3, "age_approx"] != "77.0" else "78.0"
    df.to_csv(data / "train.csv", index=False)
    return f"column 'age_approx' changed in 1 row(s): {df.loc[3, 'image_name']} ("


def change_target(data: Path):
    df = pd.read_csv(data / "train.csv", dtype="string")
    df.loc[5, "target"] = "1" if df.loc[5, "target"] == "0" else "0"
    df.to_csv(data / "train.csv", index=False)
    return f"column 'target' changed in 1 row(s): {df.loc[5, 'image_name']} ("


def change_image(data: Path):
    df = pd.read_csv(data / "train.csv", dtype="string")
    a, b = data / "train" / f"{df['image_name'][0]}.jpg", data / "train" / f"{df['image_name'][1]}.jpg"
    a.write_bytes(b.read_bytes())  # another picture under the same name
    return f"1 image file(s) changed: {df['image_name'][0]} (1 in all)"


def add_rows_and_delete_the_fold_table(data: Path):
    """The user adds rows, and deletes the fold table as its error message advises."""
    df = pd.read_csv(data / "train.csv", dtype="string")
    new = df.iloc[:2].copy()
    new["image_name"] = ["ISIC_new_a", "ISIC_new_b"]
    for old, name in zip(df["image_name"][:2], new["image_name"]):
        shutil.copy(data / "train" / f"{old}.jpg", data / "train" / f"{name}.jpg")
    pd.concat([df, new]).to_csv(data / "train.csv", index=False)
    for p in data.glob("*_folds*.csv"):
        p.unlink()
    return "2 training row(s) added: ISIC_new_a, ISIC_new_b"


@pytest.mark.parametrize("change", [change_age, change_target, change_image, add_rows_and_delete_the_fold_table])
def test_a_rerun_on_changed_data_is_refused_and_touches_nothing(copy, change):
    data, work = copy
    exp = work / "oof" / "tiny"
    says = change(data)
    before = snapshot(exp)
    line = one_error_line(run_main(TRAIN, *args(data, work), cwd=work, check=False))
    assert f"{exp} was trained on other data: " in line and says in line, line
    assert "name=..." in line and "--force" in line
    assert snapshot(exp) == before  # features.json, oof.csv and the rest as they were


def test_force_on_changed_data_deletes_the_experiment_and_trains_again(copy, capsys):
    data, work = copy
    exp = work / "oof" / "tiny"
    says = change_age(data)
    cfg = C.load_config(None, args(data, work, **{"train.folds": "[0]"}))
    T.train(cfg, force=True)
    err = capsys.readouterr().err
    assert f"--force: deleting {exp / 'config.yaml'}, {exp / 'data.csv'}" in err and says in err
    assert not (exp / "fold1").exists() and (exp / "fold0" / "val_predictions.csv").exists()
    assert read_record(exp / "data.csv").set_index("image_name")["age_approx"].str.startswith("7").any()


def test_a_deleted_data_record_is_refused_and_force_trains_again(copy, capsys):
    """Without data.csv the folds' data cannot be checked: refused, not silently recorded afresh."""
    data, work = copy
    exp = work / "oof" / "tiny"
    (exp / "data.csv").unlink()
    before = snapshot(exp)
    line = one_error_line(run_main(TRAIN, *args(data, work), cwd=work, check=False))
    assert line == (f"error: {exp}: data.csv (the record of the data its folds were trained on) is missing, so this "
                    f"run's data cannot be checked against its folds; use a new name (name=...) or --force to delete "
                    f"its results and train again")
    assert snapshot(exp) == before
    T.train(C.load_config(None, args(data, work, **{"train.folds": "[0]"})), force=True)
    assert "--force: deleting" in capsys.readouterr().err
    assert (exp / "data.csv").is_file() and not (exp / "fold1").exists()


def test_folds_edited_between_runs_of_different_folds_are_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("*_folds*.csv"))
    cfg = C.load_config(None, args(data, tmp_path))
    T.train(only(cfg, 0))
    table = data / "train_folds3_seed42.csv"
    folds = pd.read_csv(table, dtype={"image_name": "string"})
    moved = folds.index[folds["fold"] == 0][:2]
    folds.loc[moved, "fold"] = 1  # two validation rows of fold 0 now train fold 1... and are validated there
    folds.to_csv(table, index=False)
    with pytest.raises(ExperimentError, match=r"the fold of 2 row\(s\) changed: .* \(0 -> 1\)"):
        T.train(only(cfg, 1))
    assert not (cfg.exp_dir / "fold1").exists()
    # the experiment's own copy of its fold table trains the other folds as it began
    T.train(only(C.with_overrides(cfg, [f"folds.path={cfg.exp_dir / 'folds.csv'}"]), 1))
    assert pd.read_csv(cfg.exp_dir / "oof.csv")["image_name"].is_unique


def test_oof_assembly_refuses_an_id_in_two_folds_or_outside_its_fold(trained, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(trained.cfg.exp_dir, exp)
    record = read_record(exp / "data.csv")
    assert len(collect_oof(exp, record)) == len(record)
    f0, f1 = (pd.read_csv(exp / f"fold{k}" / "val_predictions.csv", dtype={"image_name": "string"}) for k in (0, 1))
    stray = f0.iloc[:1].assign(fold=1)
    pd.concat([f1, stray]).to_csv(exp / "fold1" / "val_predictions.csv", index=False)
    with pytest.raises(ExperimentError, match=f"ids predicted by more than one fold: {stray['image_name'][0]}"):
        collect_oof(exp, record)
    f0.iloc[1:].to_csv(exp / "fold0" / "val_predictions.csv", index=False)
    with pytest.raises(ExperimentError, match=f"outside their fold in folds.csv: {stray['image_name'][0]}"):
        collect_oof(exp, record)


@pytest.mark.parametrize("cell", ["", "-1", "1.5", "x"])
def test_a_bad_fold_cell_is_one_error_line(copy, cell):
    data, work = copy
    table = data / "train_folds3_seed42.csv"
    folds = pd.read_csv(table, dtype="string")
    folds.loc[4, "fold"] = cell
    folds.to_csv(table, index=False)
    line = one_error_line(run_main(TRAIN, *args(data, work), cwd=work, check=False))
    assert line.startswith(f"error: {table}: ") and folds["image_name"][4] in line, line


# --- validate everything before writing anything ---------------------------------------------------

@pytest.mark.parametrize("extra, cli, says", [
    ({"train.batch_size": 0}, [], "train.batch_size must be >= 2"),
    ({"model.backbone": "efficientnet_bx"}, [], "model.backbone=efficientnet_bx: not a timm model"),
    ({"model.image_size": 0}, [], "model.image_size must be between 16 and 4096"),
    ({"model.pretrained": "weights/missing.pt"}, [], "model.pretrained=weights/missing.pt: no such file"),
    ({"model.backbone": "resnet18", "model.pretrained": "offline"}, [], "offline weights for resnet18; they exist for"),
    ({"model.backbone": "vit_tiny_patch16_224", "model.pretrained": "none"}, [], "cannot take model.image_size=32"),
    ({}, ["--folds", "3"], "train.folds must be fold numbers in 0..2, got [3]"),
    ({"train.batch_size": 100}, [], "train.batch_size=100 is larger than the "),
], ids=["batch0", "backbone", "size0", "pretrained", "offline_elsewhere", "vit_size", "folds", "batch_vs_fold"])
def test_config_errors_leave_no_trace_and_the_corrected_command_runs(tiny_data, tmp_path, extra, cli, says):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("*_folds*.csv"))
    line = one_error_line(run_main(TRAIN, *args(data, tmp_path, **extra), *cli, cwd=tmp_path, check=False))
    assert says in line, line
    assert not (tmp_path / "oof").exists() or not any((tmp_path / "oof").iterdir())
    # nothing of the failed command stands in the way (no config.yaml "of another experiment")
    assert check_config(C.load_config(None, args(data, tmp_path)), force=False) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused_even_with_force(trained, tmp_path, name):
    out = tmp_path / "oof"
    shutil.copytree(trained.cfg.exp_dir, out / "tiny")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    line = one_error_line(run_main(TRAIN, *args(trained.data, tmp_path, name=name), "--force", cwd=tmp_path,
                                  check=False))
    assert "name must be a plain folder name" in line
    assert snapshot(out) == before


def test_force_deletes_only_an_experiment_folder_of_this_pipeline(trained, tmp_path, capsys):
    out = tmp_path / "oof"
    shutil.copytree(trained.cfg.exp_dir, out / "tiny")
    (out / "tiny" / "notes.txt").write_text("mine")
    (out / "tiny" / "fold1" / "plot.png").write_bytes(b"mine")
    before = snapshot(out)
    other = C.load_config(None, args(trained.data, tmp_path, **{"train.lr": 0.002}))
    with pytest.raises(ExperimentError, match=r"holds files this pipeline did not write \(fold1/plot.png, notes.txt"):
        T.train(other, force=True)
    with pytest.raises(ExperimentError, match="fold1 holds files this pipeline did not write"):
        T.train(only(C.load_config(None, args(trained.data, tmp_path)), 1), force=True)
    assert snapshot(out) == before
    # a folder that is not an experiment (a data folder, say) is never written into nor deleted
    data_as_exp = C.load_config(None, args(trained.data, tmp_path, output_dir=str(trained.data.parent), name="data"))
    with pytest.raises(ExperimentError, match="not an experiment of this pipeline .no config.yaml"):
        T.train(data_as_exp, force=True)
    assert (trained.data / "train.csv").exists()


def test_ids_that_are_paths_are_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("*_folds*.csv"))
    df = pd.read_csv(data / "train.csv", dtype="string")
    df.loc[2, "image_name"] = "../test/" + pd.read_csv(data / "test.csv", dtype="string")["image_name"][0]
    df.to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv: ids in column 'image_name' must be file names, not paths: "
                                        r"\.\./test/"):
        load_train(C.load_config(None, args(data, tmp_path)))


# --- one writer per fold -------------------------------------------------------------------------

def popen(*argv, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_second_process_on_a_fold_being_trained_exits_at_once_and_a_killed_ones_lock_is_recovered(trained,
                                                                                                    tmp_path):
    data, work = trained.data, tmp_path
    cmd = [TRAIN, *args(data, work, **{"train.epochs": 50, "train.patience": 50}), "--folds", "0"]
    first = popen(*cmd, cwd=work)
    lock = work / "oof" / "tiny" / "fold0.lock"
    try:
        deadline = time.time() + 120
        while not (lock.exists() and (work / "oof" / "tiny" / "fold0" / "last.pt").exists()):
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.2)
        start = time.time()
        line = one_error_line(run_cli(*cmd, cwd=work, check=False))
        assert time.time() - start < 30  # at once: before the data is read
        assert f"is being trained by pid {first.pid} on host {socket.gethostname()}" in line, line
        assert "fold 0 of" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.exists()  # kill -9 leaves the lock ...
    proc = run_cli(*cmd[:-2], "train.epochs=1", "--force", cwd=work, check=False)  # ... which is recovered
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"recovered the lock of pid {first.pid}" in proc.stderr
    assert not lock.exists()


def test_folds_trained_by_parallel_processes_give_the_same_oof_as_one_process(trained, tmp_path):
    data, work = trained.data, tmp_path
    procs = [popen(TRAIN, *args(data, work), "--folds", folds, cwd=work) for folds in ("0", "1,2")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    key = ["image_name"]
    one = trained.oof.sort_values(key).reset_index(drop=True)
    both = pd.read_csv(work / "oof" / "tiny" / "oof.csv", dtype={"image_name": "string", "patient_id": "string"})
    both = both.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(one[["image_name", "fold", "target"]], both[["image_name", "fold", "target"]])
    assert (one["pred"] - both["pred"]).abs().max() < 1e-6
    assert not list((work / "oof" / "tiny").glob("*.lock"))


# --- errors that are bugs keep their traceback --------------------------------------------------

def test_cli_prints_one_line_for_pipeline_errors_and_a_traceback_for_bugs(tmp_path):
    code = ("import sys; from pipeline.cli import run; from pipeline.core.errors import DataError\n"
            "def main():\n    raise {}('the message')\nrun(main)")
    user = run_cli("-c", code.format("DataError"), cwd=tmp_path, check=False)
    assert user.returncode == 2 and user.stderr == "error: the message\n"
    for bug in ("ValueError", "FileNotFoundError", "KeyError"):
        proc = run_cli("-c", code.format(bug), cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "Traceback" in proc.stderr and f"{bug}: " in proc.stderr, bug
