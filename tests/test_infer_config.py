"""What infer.py (and train.py on an existing experiment) takes from the experiment and what from the
command: a key not given comes from the experiment's config.yaml; a key given is used where it says where
or how the command runs, and refused in one line where it would change what was trained. The commands
run in a fresh folder, where the defaults (data.root=input/sample, data.cache_dir=input/cache) point at
nothing: only the experiment says where its data lies.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, copy_finished, one_error_line, run_main, snapshot

from pipeline.core import config as C
from pipeline.core.given import given_keys

TRAIN, INFER = str(ROOT / "train.py"), str(ROOT / "infer.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture
def exp(finished, tmp_path):
    """A copy of the finished tiny experiment (data.root=<work>/data, infer.tta=2, 32 px, 3 folds) and an
    empty folder to run the commands in: (experiment folder, that folder)."""
    _, work = copy_finished(finished, tmp_path / "work")
    here = tmp_path / "here"
    here.mkdir()
    return work / "oof" / "tiny", here


def infer(exp: Path, here: Path, *argv: str, check: bool = True):
    return run_main(INFER, "name=tiny", f"output_dir={exp.parent}", *argv, cwd=here, check=check)


def test_the_trained_config_holds_another_data_root_and_tta_than_the_defaults(exp):
    saved = C.load_config(exp[0] / "config.yaml")
    assert saved.data.root != C.Config().data.root and saved.infer.tta == 2 != C.Config().infer.tta


def test_infer_given_the_name_alone_predicts_the_experiment_as_trained(exp):
    folder, here = exp
    proc = infer(folder, here)
    assert f"wrote {folder / 'submission.csv'}: " in proc.stdout and ", TTA x2, " in proc.stdout
    sample = pd.read_csv(folder.parent.parent / "data" / "sample_submission.csv")
    assert list(pd.read_csv(folder / "submission.csv")["image_name"]) == list(sample["image_name"])
    assert list(here.iterdir()) == []  # no input/cache, no sample generated where the command ran


def test_a_given_run_key_is_used(exp):
    folder, here = exp
    proc = infer(folder, here, "infer.tta=1")
    assert ", TTA x1, " in proc.stdout
    (here / "tta.yaml").write_text("infer:\n  tta: 3\nmodel:\n  image_size: 32\n")  # a config file is given too
    assert ", TTA x3, " in infer(folder, here, "--config", "tta.yaml").stdout


@pytest.mark.parametrize("argv, says", [
    (["model.image_size=64"], "model.image_size (trained 32, given 64): infer.py predicts an experiment as it was "
                              "trained; leave it out, or train another experiment (name=...)"),
    (["train.epochs=3", "folds.n_folds=4"], "folds.n_folds (trained 3, given 4), train.epochs (trained 1, given 3): "
                                            "infer.py predicts an experiment as it was trained; leave them out"),
    (["data.id_col=patient_id"], "data.id_col (trained 'image_name', given 'patient_id'): infer.py predicts"),
], ids=["image_size", "two_keys", "id_col"])
def test_a_given_key_of_what_was_trained_with_another_value_is_one_line(exp, argv, says):
    folder, here = exp
    before = snapshot(folder.parent.parent)
    where = f"data.root={folder.parent.parent / 'data'}"  # given as trained: before, the key alone was ignored
    line = one_error_line(infer(folder, here, where, *argv, check=False), alone=True)
    assert line.startswith(f"error: {folder / 'config.yaml'}: ") and says in line, line
    assert snapshot(folder.parent.parent) == before and list(here.iterdir()) == []
    infer(folder, here, "model.image_size=32", "train.epochs=1")  # the trained values: accepted


@pytest.mark.parametrize("key, says", [
    ("train.compile=true", "error: train.compile is not read by infer.py (it compiles training; "
                           "infer.backend=compile compiles the predicting model); leave it out"),
    ("train.folds=[0]", "error: train.folds is not read by infer.py (infer.py predicts with every trained fold "
                        "(--allow-missing-folds: with those there are)); leave it out"),
    ("infer.compile_mode=max-autotune", "error: infer.compile_mode does nothing without infer.backend=compile: give "
                                        "infer.backend=compile too, or leave infer.compile_mode out"),
], ids=["compile", "folds", "compile_mode"])
def test_a_given_key_that_infer_does_not_read_is_refused(exp, key, says):
    folder, here = exp
    where = f"data.root={folder.parent.parent / 'data'}"
    assert one_error_line(infer(folder, here, where, key, check=False), alone=True) == says


def test_train_on_an_existing_experiment_takes_its_data_root_and_cache_from_it(exp):
    """The same experiment resumed from another folder, its result keys given, where its data lies not:
    the data is read where it was trained (before: input/sample generated in the folder, then refused)."""
    folder, here = exp
    keys = C.load_config(folder / "config.yaml")
    argv = [f"{k}={v}" for k, v in [("model.image_size", 32), ("folds.n_folds", 3), ("train.epochs", 1),
                                    ("train.batch_size", 16), ("infer.tta", 2)]]
    proc = run_main(TRAIN, "name=tiny", f"output_dir={folder.parent}", *argv, cwd=here)
    assert "fold 0: done already" in proc.stdout and list(here.iterdir()) == []
    assert C.load_config(folder / "config.yaml") == keys
    with pytest.raises(AssertionError, match="holds a different experiment"):  # result keys are compared still
        run_main(TRAIN, "name=tiny", f"output_dir={folder.parent}", *argv[:-1], cwd=here)


def test_given_keys_are_those_of_the_files_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  image_size: 64\ndata:\n  keep_where: {split: train}\ntrain: {}\n")
    assert given_keys([tmp_path / "a.yaml"], ["infer.tta=1", "name=x"]) == {
        "model.image_size", "data.keep_where", "infer.tta", "name"}
    assert given_keys(None, None) == set()
