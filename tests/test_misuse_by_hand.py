"""The misuse first tried by hand (docs/bad-input.md, "Further misuse"), each case held by a test: what
train.py, infer.py and ``python -m pipeline cv`` answer, and that a refused command writes and deletes
nothing. The commands run in this process (run_main), in a work folder, with ``output_dir=oof`` as a
user types it; a module fixture trains one tiny experiment (3 folds, 1 epoch) that the tests copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import ROOT, copy_finished, one_error_line, run_main, snapshot, tiny_overrides

from pipeline.core import lock

TRAIN, INFER = str(ROOT / "train.py"), str(ROOT / "infer.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def args(data: Path, work: Path, **extra) -> list[str]:
    """The tiny experiment's overrides, with oof/ relative to the work folder (the commands run there)."""
    return tiny_overrides(data, work, **{"train.epochs": 1, "output_dir": "oof", **extra})


@pytest.fixture(scope="module")
def trained(finished, tmp_path_factory):
    """The session's finished tiny experiment (oof/tiny) and its data (data/, with its fold table), copied."""
    data, work = copy_finished(finished, tmp_path_factory.mktemp("by_hand"))
    return SimpleNamespace(data=data, work=work)


@pytest.fixture
def copy(finished, tmp_path):
    """The finished experiment and its data, copied into ``tmp_path``: (data folder, work folder with oof/tiny)."""
    return copy_finished(finished, tmp_path)


# --- config and command-line errors: before anything is read or written ---------------------------

CONFIG_ERRORS = {  # id: (files made in the work folder, command line, its one error line)
    "folds_letter": ({}, ["--folds", "a"], "error: --folds expects comma-separated integers such as 0,2, got 'a'"),
    "folds_negative": ({}, ["--folds", "-1"], "error: train.folds must be fold numbers in 0..2, got [-1]"),
    "no_value": ({}, ["train.epochs="],
                 "error: config key 'train.epochs' expects int, got '' (in the command-line overrides)"),
    "no_equals": ({}, ["train.epochs", "3"],
                  "error: override 'train.epochs' is not of the form section.key=value "
                  "(in the command-line overrides)"),
    "config_missing": ({}, ["--config", "nothere.yaml"], "error: nothere.yaml: config file not found"),
    "config_list": ({"list.yaml": "- train\n- model\n"}, ["--config", "list.yaml"],
                    "error: list.yaml: the top level must be a mapping of sections"),
    "meta_hidden": ({}, ["model.meta_hidden=[64]"],
                    "error: model.meta_hidden must be two positive widths such as [128, 32], got [64]"),
    "tta9": ({}, ["infer.tta=9"], "error: infer.tta must be between 1 and 8"),
    # what issues 17 and 18 added (the diagnosis head, model.predict, infer.backend, train.compile), misused
    "aux_weight_inf": ({}, ["data.diagnosis_col=diagnosis", "train.aux_weight=.inf"],
                       "error: config key 'train.aux_weight' expects a finite number, got inf "
                       "(in the command-line overrides)"),
    "lr_inf": ({}, ["train.lr=inf"],
               "error: config key 'train.lr' expects a finite number, got inf (in the command-line overrides)"),
    "diagnosis_is_target": ({}, ["data.diagnosis_col=target", "train.aux_weight=1"],
                            "error: data.diagnosis_col=target names the id, target or group column; the diagnosis "
                            "is a column of its own (e.g. diagnosis)"),
    "melanoma_class_alone": ({}, ["data.melanoma_class=MEL"],
                             "error: data.melanoma_class does nothing without data.diagnosis_col: give "
                             "data.diagnosis_col too, or leave data.melanoma_class out"),
    "external_diagnosis_alone": ({"my.yaml": "data:\n  diagnosis_col: diagnosis\n  external_diagnosis: "
                                             "{MEL: melanoma}\n"}, ["--config", "my.yaml"],
                                 "error: data.external_diagnosis does nothing without data.external_csv: give "
                                 "data.external_csv too, or leave data.external_diagnosis out"),
    "mapping_without_spaces": ({}, ["data.diagnosis_col=diagnosis", "data.external_diagnosis={MEL:melanoma}"],
                               "error: config key 'data.external_diagnosis': the entry 'MEL:melanoma' has no value; "
                               "YAML needs a space after the colon: {MEL: melanoma} (in the command-line overrides)"),
    "compile_mode_alone": ({}, ["train.compile_mode=max-autotune"],
                           "error: train.compile_mode does nothing without train.compile=true: give "
                           "train.compile=true too, or leave train.compile_mode out"),
    "infer_compile_mode_alone": ({}, ["infer.backend=onnxruntime", "infer.compile_mode=reduce-overhead"],
                                 "error: infer.compile_mode does nothing without infer.backend=compile: give "
                                 "infer.backend=compile too, or leave infer.compile_mode out"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_a_bad_flag_override_or_config_file_is_one_line_and_writes_nothing(tiny_data, tmp_path, case):
    files, argv, says = CONFIG_ERRORS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    line = one_error_line(run_main(TRAIN, *args(tiny_data, tmp_path), *argv, cwd=tmp_path, check=False))
    assert line == says
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no oof/, no cache/


def test_infer_before_any_training_says_no_trained_experiment_and_writes_nothing(tiny_data, tmp_path):
    line = one_error_line(run_main(INFER, *args(tiny_data, tmp_path), cwd=tmp_path, check=False))
    assert line == "error: oof/tiny/config.yaml: no trained experiment here (run train.py first)"
    assert list(tmp_path.iterdir()) == []


def test_an_output_dir_that_is_a_file_is_refused_before_the_data_is_read(tiny_data, tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    line = one_error_line(run_main(TRAIN, *args(tiny_data, tmp_path, output_dir="afile"), cwd=tmp_path, check=False))
    assert line == (f"error: afile/tiny: cannot write the experiment ({tmp_path / 'afile'} is a file, not a "
                    f"folder); use another output_dir")  # the file as an absolute path
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "mine\n"


# --- data errors: while the tables are read, before the experiment is written ---------------------

def test_a_text_column_as_a_number_is_one_line_naming_file_and_column(trained, tmp_path):
    data = trained.data
    line = one_error_line(run_main(TRAIN, *args(data, tmp_path, **{"features.numeric": "[sex]"}), cwd=tmp_path,
                                   check=False))
    n = len(pd.read_csv(data / "train.csv"))
    assert line.startswith(f"error: {data / 'train.csv'}: column 'sex': {n} of {n} rows (100.0%) are non-numbers "
                           f"or far outside its range ('male' at ISIC_"), line
    assert line.endswith(", ...); fix the column or raise features.max_bad_fraction (now 0.05)"), line
    assert not (tmp_path / "oof").exists()


def test_an_id_column_that_is_not_unique_lists_the_duplicate_ids(trained, tmp_path):
    data = trained.data
    line = one_error_line(run_main(TRAIN, *args(data, tmp_path, **{"data.id_col": "patient_id"}), cwd=tmp_path,
                                   check=False))
    patients = pd.read_csv(data / "train.csv")["patient_id"]
    repeated = patients[patients.duplicated()].nunique()
    assert line.startswith(f"error: {data / 'train.csv'}: duplicate ids in column 'patient_id': IP_"), line
    assert line.endswith(f", ... ({repeated} in all)"), line
    assert not (tmp_path / "oof").exists()


def test_more_folds_than_rows_at_train_py_is_one_line_and_writes_no_fold_table(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained.data, data, ignore=shutil.ignore_patterns("*_folds*.csv"))
    line = one_error_line(run_main(TRAIN, *args(data, tmp_path, **{"folds.n_folds": 500}), cwd=tmp_path,
                                   check=False))
    n = len(pd.read_csv(data / "train.csv"))
    assert line.startswith(f"error: {data / 'train_folds500_seed42.csv'}: cannot make 500 folds of {n} training "
                           f"rows ("), line
    assert line.endswith("); use fewer folds (folds.n_folds)"), line
    assert not list(data.glob("*_folds*.csv")) and not (tmp_path / "oof").exists()


def diagnosed(data: Path, work: Path, diagnosis) -> Path:
    """A copy of ``data`` whose training table's diagnosis column is ``diagnosis(table)``."""
    copied = work / "data"
    shutil.copytree(data, copied, ignore=shutil.ignore_patterns("*_folds*.csv"))
    table = pd.read_csv(copied / "train.csv")
    table.assign(diagnosis=diagnosis(table)).to_csv(copied / "train.csv", index=False)
    return copied


HEADS = {  # id: (the training table's diagnosis column, overrides, the error line after 'train.csv: ')
    "all_missing": (lambda t: [None] * len(t), {},
                    "column 'diagnosis' holds no class (every value is missing or unknown) in the training rows; "
                    "the diagnosis head (train.aux_weight > 0) needs at least 2 classes: fix the column or set "
                    "train.aux_weight=0"),
    "one_class": (lambda t: t["target"].map({1: "melanoma", 0: "unknown"}), {},
                  "column 'diagnosis' holds one class, melanoma, in the training rows; the diagnosis head "
                  "(train.aux_weight > 0) needs at least 2 classes"),
    "no_melanoma_class": (lambda t: t["diagnosis"], {"data.melanoma_class": "MEL", "model.predict": "diagnosis"},
                          "column 'diagnosis' has no training row of class 'MEL' (data.melanoma_class; it has "
                          "melanoma, nevus, seborrheic keratosis); model.predict=diagnosis reads that class's "
                          "probability: set data.melanoma_class to one of them, or model.predict=binary"),
}


@pytest.mark.parametrize("case", HEADS)
def test_a_diagnosis_head_without_two_classes_or_the_melanoma_class_is_one_line_before_training(trained, tmp_path,
                                                                                                case):
    """Before: no class was a ZeroDivisionError, one class a head whose softmax is 1 (AUC 0.5), no melanoma
    class a ConfigError from the model; each after config.yaml and data.csv were written."""
    diagnosis, extra, says = HEADS[case]
    data = diagnosed(trained.data, tmp_path, diagnosis)
    argv = args(data, tmp_path, **{"data.diagnosis_col": "diagnosis", "train.aux_weight": 1,
                                   "model.predict": "mean", **extra})
    line = one_error_line(run_main(TRAIN, *argv, cwd=tmp_path, check=False))
    assert line.startswith(f"error: {data / 'train.csv'}: {says}"), line
    assert not (tmp_path / "oof").exists()


# --- on a trained experiment ------------------------------------------------------------------------

def test_a_fold_given_twice_is_trained_once_with_duplicates_dropped(copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    shutil.rmtree(exp / "fold0")
    proc = run_main(TRAIN, *args(data, work), "--folds", "0,0", cwd=work)
    assert proc.stdout.count("fold 0 epoch 1: ") == 1 and proc.stdout.count("fold 0: best val AUC") == 1, proc.stdout
    assert len(pd.read_csv(exp / "fold0" / "log.csv")) == 1
    assert "fold 1:" not in proc.stdout  # only the fold asked for
    assert pd.read_csv(exp / "oof.csv")["image_name"].is_unique


def test_infer_with_folds_not_trained_names_them_and_writes_nothing(copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    for k in (1, 2):
        shutil.rmtree(exp / f"fold{k}")
    before = snapshot(work)
    line = one_error_line(run_main(INFER, *args(data, work), cwd=work, check=False))
    assert line == "error: oof/tiny: fold(s) [1, 2] not trained; train them or pass --allow-missing-folds"
    assert snapshot(work) == before  # no submission.csv, no test cache


def record_of(exp: Path) -> dict:
    """What an experiment's record is: its description and its folds' models (bytes and mtimes)."""
    record = ["config.yaml", "data.csv", "folds.csv", "features.json"] + [f"fold{k}/best.pt" for k in range(3)]
    return {k: v for k, v in snapshot(exp).items() if k in record}


def accepted(proc, exp: Path, before: dict) -> None:
    """train.py took the run as the same experiment: every fold done already, its record as it was."""
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(f"fold {k}: done already" in proc.stdout for k in range(3)), proc.stdout
    assert record_of(exp) == before
    assert "was trained on other data" not in proc.stderr and "different experiment" not in proc.stderr


def test_shuffled_rows_an_unused_column_and_touched_images_are_accepted_as_the_same_experiment(finished, copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    other = work / "elsewhere"
    shutil.copytree(data, other)
    table = pd.read_csv(other / "train.csv", dtype="string")
    table.sample(frac=1.0, random_state=1).assign(unused="x").to_csv(other / "train.csv", index=False)
    later = time.time() + 60
    for image in (other / "train").iterdir():
        os.utime(image, (later, later))
    shutil.copytree(finished / "cache", work / "cache")  # the cache the experiment was trained with
    before, caches = record_of(exp), set((work / "cache").glob("train_*.npy"))
    assert len(caches) == 1
    accepted(run_main(TRAIN, *args(other, work), cwd=work, check=False), exp, before)
    rebuilt = set((work / "cache").glob("train_*.npy")) - caches
    assert len(rebuilt) == 1  # the image cache is rebuilt (new paths and mtimes) ...
    accepted(run_main(TRAIN, *args(other, work), cwd=work, check=False), exp, before)
    assert set((work / "cache").glob("train_*.npy")) == caches | rebuilt  # ... once


def test_data_root_cache_dir_and_fold_table_moved_between_runs_are_accepted_by_their_content(copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    moved = work / "mnt" / "other" / "data"
    shutil.move(data, moved)
    before = record_of(exp)
    proc = run_main(TRAIN, *args(moved, work, **{"data.cache_dir": str(work / "mnt" / "cache"),
                                                 "folds.path": str(moved / "train_folds3_seed42.csv")}),
                    cwd=work, check=False)
    accepted(proc, exp, before)
    assert list((work / "mnt" / "cache").glob("train_*.npy"))


def fresh_lock(path: Path, pid: int, host: str) -> None:
    """A lock file as another live process writes it (touched now)."""
    info = {"pid": pid, "host": host, "started": "2026-11-27 13:05:01"}
    if host == lock.HOST:
        info.update(pid_namespace=lock._pid_namespace(), start_time=lock._start_time(pid))
    path.write_text(json.dumps(info))


def test_a_fresh_lock_of_another_host_is_refused_and_touches_nothing(copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    fresh_lock(exp / "fold2.lock", 12, "gpu-node-7")
    before = snapshot(work)
    line = one_error_line(run_main(TRAIN, *args(data, work), cwd=work, check=False))
    assert line == ("error: oof/tiny/fold2.lock: fold 2 of oof/tiny is being trained by pid 12 on host gpu-node-7 "
                    "since 2026-11-27 13:05:01; wait for it to finish or train another fold (--folds)")
    assert snapshot(work) == before  # the locks of folds 0 and 1 it took are given back


def test_force_with_a_new_config_while_another_process_trains_a_fold_deletes_nothing(copy):
    data, work = copy
    exp = work / "oof" / "tiny"
    other = subprocess.Popen(["sleep", "60"])  # a live process of this host, holding fold 1
    try:
        fresh_lock(exp / "fold1.lock", other.pid, lock.HOST)
        before = snapshot(work)
        line = one_error_line(run_main(TRAIN, *args(data, work, **{"train.lr": 0.002}), "--force", cwd=work,
                                       check=False))
    finally:
        other.kill()
        other.wait()
    assert line.startswith(f"error: oof/tiny/fold1.lock: fold 1 of oof/tiny is being trained by pid {other.pid} "
                           f"on host {lock.HOST} since "), line
    assert "--force: deleting" not in line
    assert snapshot(work) == before  # nothing deleted


def half_written(path: Path) -> None:
    """config.yaml cut in the middle of a key, as an editor that crashed while saving leaves it."""
    text = path.read_text()
    cut = text.index("\n", len(text) // 2) + 1
    path.write_text(text[:cut] + text[cut:].lstrip()[:3])


def test_a_half_written_saved_config_is_one_line_at_train_and_infer(copy):
    data, work = copy
    half_written(work / "oof" / "tiny" / "config.yaml")
    before = snapshot(work)
    line = one_error_line(run_main(TRAIN, *args(data, work), cwd=work, check=False))
    assert line == ("error: oof/tiny/config.yaml: cannot read the saved config (while scanning a simple key); "
                    "use a new name (name=...) or --force to start this experiment again")
    line = one_error_line(run_main(INFER, *args(data, work), cwd=work, check=False))
    assert line == "error: oof/tiny/config.yaml: cannot read the saved config (while scanning a simple key)"
    assert snapshot(work) == before


def test_pred_edited_to_text_in_oof_csv_is_one_line_at_cv(copy):
    _, work = copy
    path = work / "oof" / "tiny" / "oof.csv"
    oof = pd.read_csv(path, dtype="string")
    oof.loc[3, "pred"] = "high"
    oof.to_csv(path, index=False)
    before = snapshot(work)
    line = one_error_line(run_main("-m", "pipeline", "cv", "oof/tiny", cwd=work, check=False))
    assert line == (f"error: oof/tiny/oof.csv: column 'pred' must be a finite number; found 'high' at "
                    f"{oof['image_name'][3]} (1 in all)")
    assert snapshot(work) == before
