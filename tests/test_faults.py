"""Disk faults and changed inputs around a trained experiment (issue 19; docs/bad-input.md, "The
experiment tools under misuse and faults"): a read-only or full disk is refused before the long work
with one line naming the folder, a write that still fails leaves nothing half-written, the tools
that read a trained experiment (infer.py, tta_views.py, python -m pipeline cv) notice what changed.

Faults are simulated in-process, as this suite runs as root as often as not (permissions do not stop
root): ``os.statvfs`` says a folder's file system is read-only, ``os.access`` refuses, ``shutil.
disk_usage`` reports a full disk, a file object stops taking bytes with ENOSPC. By hand, on a real
1 MB tmpfs and a read-only remount, the same messages come (docs/bad-input.md).
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, copy_finished, one_error_line, run_main, snapshot, tiny_overrides

from pipeline.core.config import load_config
from pipeline.core.errors import CheckpointError, CheckpointReadError, DataError, StorageError
from pipeline.data.cache import build_cache
from pipeline.data.tables import load_test
from pipeline.experiment.run import fold_lock
from pipeline.model import checkpoint_file as pio
from pipeline.report import cv
from pipeline.train import checkpoints as K, infer as I, trainer as T

sys.path.insert(0, str(ROOT / "benchmarks"))
import tta_views  # noqa: E402


def under(path, folder) -> bool:
    p, f = os.path.abspath(path), os.path.abspath(folder)
    return p == f or p.startswith(f + os.sep)


def read_only(monkeypatch, folder) -> None:
    """``folder`` on a read-only file system, as statvfs reports one (ST_RDONLY, also for root)."""
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY) if under(p, folder) else real(p))


def not_allowed(monkeypatch, folder) -> None:
    """``folder`` that this user may not write (what chmod does to anyone but root)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if under(p, folder) and mode & os.W_OK
                        else real(p, mode, **k))


def full_disk(monkeypatch, free: int = 1000) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def trained(finished, tmp_path_factory):
    """The session's finished tiny experiment (all 3 folds, 1 epoch, TTA x2), copied for this module."""
    data, work = copy_finished(finished, tmp_path_factory.mktemp("faults"))
    args = tiny_overrides(data, work, **{"train.epochs": 1})
    cfg = load_config(None, args)
    return SimpleNamespace(work=work, data=data, args=args, cfg=cfg, exp=cfg.exp_dir)


def fresh(trained, **extra):
    return load_config(None, tiny_overrides(trained.data, trained.work, **{"train.epochs": 1, **extra}))


# -- read-only, not allowed, full -------------------------------------------------------------------

@pytest.mark.parametrize("fault, says", [(read_only, "Read-only file system"), (not_allowed, "Permission denied")])
def test_an_experiment_that_cannot_be_written_is_refused_before_the_data_is_read(trained, monkeypatch, fault, says):
    before = snapshot(trained.exp)
    fault(monkeypatch, trained.exp)
    cfg = fresh(trained, **{"data.cache_dir": str(trained.work / "cache2")})  # a cache that would be built
    with pytest.raises(StorageError, match=f"^{trained.exp}: cannot write the experiment \\({says}\\); use another "
                                           f"output_dir$"):
        T.train(cfg)
    assert snapshot(trained.exp) == before and not (trained.work / "cache2").exists()  # no lock, no cache

    fault(monkeypatch, trained.work / "ro")
    (trained.work / "ro").mkdir(exist_ok=True)
    with pytest.raises(StorageError, match=f"ro/new: cannot write the experiment \\({says} at .*ro\\)"):
        T.train(fresh(trained, output_dir=str(trained.work / "ro"), name="new"))
    assert not (trained.work / "ro" / "new").exists()


def test_a_fold_table_that_cannot_be_written_is_refused_before_the_cache_is_built(trained, tiny_data, monkeypatch):
    data = trained.work / "data_ro"
    shutil.copytree(tiny_data, data)
    for table in data.glob("*_folds*_seed*.csv"):  # made there by earlier tests: this run must make its own
        table.unlink()
    read_only(monkeypatch, data)
    cfg = load_config(None, tiny_overrides(data, trained.work, name="ro_table", **{"data.cache_dir": str(data) + "_c"}))
    with pytest.raises(StorageError, match="cannot write the fold table train_folds3_seed42.csv \\(Read-only file system"
                                           "\\); set folds.path to a file in a folder that can be written"):
        T.train(cfg)
    assert not cfg.exp_dir.exists() and not Path(str(data) + "_c").exists()


def test_the_image_cache_on_a_full_disk_is_refused_before_any_image_is_decoded(trained, monkeypatch):
    cfg = fresh(trained, name="full", **{"data.cache_dir": str(trained.work / "cache_full"), "model.image_size": 40})
    full_disk(monkeypatch)
    with pytest.raises(StorageError, match=r"cache_full: the image cache of 121 train images at 40 px needs 592.6 KB, "
                                           r"only 1.0 KB free on its disk; free some space or set data.cache_dir"):
        T.train(cfg)
    assert not cfg.exp_dir.exists()  # the folder this run made is gone again, locks and all
    assert not (trained.work / "cache_full").exists() or not list((trained.work / "cache_full").iterdir())


def test_a_cache_folder_on_a_read_only_disk_is_one_line(trained, monkeypatch):
    (trained.work / "ro_disk").mkdir()
    read_only(monkeypatch, trained.work / "ro_disk")
    paths = sorted((trained.data / "train").glob("*.jpg"))[:5]
    with pytest.raises(StorageError, match="ro_disk/cache: cannot write the image cache of 5 x images at 32 px "
                                           "\\(Read-only file system at .*ro_disk\\); set data.cache_dir"):
        build_cache(paths, 32, trained.work / "ro_disk" / "cache", "x")
    assert not (trained.work / "ro_disk" / "cache").exists()


def test_a_cache_write_that_finds_the_disk_full_leaves_no_partial_file(trained, monkeypatch):
    """Before: the memory-mapped write into a sparse file died with SIGBUS, leaving .npy.tmp<pid>."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    cache = trained.work / "cache_enospc"
    paths = sorted((trained.data / "train").glob("*.jpg"))[:5]
    with pytest.raises(StorageError, match=r"cache_enospc/x_32px_\w+\.npy: cannot write \(No space left on device; "):
        build_cache(paths, 32, cache, "x")
    assert [p.name for p in cache.iterdir()] == []


class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def writable(self):
        return True

    def write(self, b):
        n = min(len(b), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.real.write(memoryview(b).cast("B")[:n])

    def close(self):
        self.real.close()
        super().close()


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch):
    old = {"model": {"w": torch.ones(3)}}
    pio.save_checkpoint(tmp_path / "last.pt", old)
    with pytest.raises(OSError) as e:  # torch alone says RuntimeError "unexpected pos ..."
        pio.torch_save({"w": torch.zeros(100_000)}, FullDisk(open(tmp_path / "x", "wb", buffering=0), 1000))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(pio, "open", lambda p, mode="r", *a, **k: FullDisk(builtins.open(p, mode, *a, **k), 1000)
                        if "w" in mode else builtins.open(p, mode, *a, **k), raising=False)
    with pytest.raises(StorageError, match=f"^{tmp_path / 'last.pt'}: cannot write \\(No space left on device; "
                                           f".* free on its disk\\); free some space or use another folder, then run "
                                           f"the command again$"):
        pio.save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(100_000)}})
    assert torch.equal(pio.load_checkpoint(tmp_path / "last.pt")["model"]["w"], old["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "x"]  # no temporary left


def test_a_lock_on_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(
        OSError(errno.EROFS, os.strerror(errno.EROFS))) if ".lock." in self.name else real(self, data))
    with pytest.raises(StorageError, match="fold0.lock: cannot write \\(Read-only file system\\); use another folder"):
        fold_lock(tmp_path, 0).acquire()


def test_infer_on_a_read_only_experiment_is_refused_before_predicting(trained, monkeypatch):
    def predicted(cfg):
        raise AssertionError("the test set was cached and predicted first")
    monkeypatch.setattr(I, "prepare_test", predicted)
    read_only(monkeypatch, trained.exp)
    with pytest.raises(StorageError, match=f"^{trained.exp}: cannot write submission.csv \\(Read-only file system\\); "
                                           f"copy the experiment to a disk that can be written"):
        I.make_submission(fresh(trained))


def test_cv_reports_a_read_only_experiment_and_refuses_a_read_only_out_before_the_work(trained, monkeypatch, capsys):
    roc = b"the picture train.py drew"
    (trained.exp / "roc.png").write_bytes(roc)
    read_only(monkeypatch, trained.exp)
    cv.compare([trained.exp], plot=True, n_boot=20, out=trained.work / "cmp")
    assert f"warning: {trained.exp / 'roc.png'} not drawn (Read-only file system)" in capsys.readouterr().err
    assert (trained.exp / "roc.png").read_bytes() == roc and (trained.work / "cmp" / "report.html").is_file()
    (trained.work / "cmp_ro").mkdir()
    read_only(monkeypatch, trained.work / "cmp_ro")
    monkeypatch.setattr(cv, "analyse", lambda *a, **k: pytest.fail("analysed before the folder was checked"))
    with pytest.raises(StorageError, match="cmp_ro: cannot write the comparison \\(Read-only file system\\)"):
        cv.compare([trained.exp], out=trained.work / "cmp_ro")


# -- a checkpoint that cannot be read now: not damage ----------------------------------------------------

class FailsAfter:
    """A file open for reading whose reads fail with ``err`` once ``after`` bytes lie behind them: a
    disk or network mount that fails in the middle of torch.load."""

    def __init__(self, real, after: int, err: int):
        self.real, self.after, self.err = real, after, err

    def __getattr__(self, name):
        return getattr(self.real, name)

    def _check(self):
        if self.real.tell() >= self.after:
            raise OSError(self.err, os.strerror(self.err))

    def read(self, *args):
        self._check()
        return self.real.read(*args)

    def readinto(self, buffer):
        self._check()
        return self.real.readinto(buffer)

    def readline(self, *args):
        self._check()
        return self.real.readline(*args)


def unreadable(monkeypatch, target, err: int = errno.EIO, after: int | None = None) -> None:
    """Reading the file ``target`` fails with ``err``: at open when ``after`` is None, else once ``after``
    bytes are read. Writing it, and every other file, work as before."""
    real = builtins.open

    def fake(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == os.path.abspath(target) \
                and "r" in mode and "+" not in mode:
            if after is None:
                raise OSError(err, os.strerror(err), str(file))
            return FailsAfter(real(file, mode, *args, **kwargs), after, err)
        return real(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake)


def cannot_read(path, reason: str) -> str:
    return (f"{path}: cannot read the checkpoint ({reason}); it is left as it is, not taken for damaged: run the "
            f"command again once it can be read")


def epoch_checkpoints(folder) -> None:
    """last.prev.pt (epoch 1) and last.pt (epoch 2), both good, as a fold that is training leaves them."""
    state = {"model": {"w": torch.randn(1000)}, "optimizer": {}, "scheduler": {}}
    pio.save_checkpoint(folder / "last.prev.pt", {**state, "state": {"epoch": 1}})
    pio.save_checkpoint(folder / "last.pt", {**state, "state": {"epoch": 2}})


@pytest.mark.parametrize("err, after", [(errno.EACCES, None), (errno.ESTALE, None), (errno.EIO, 0), (errno.EIO, 30),
                                        (errno.EIO, 2000), (errno.EIO, 4000)],
                         ids=["open-EACCES", "open-ESTALE", "read-EIO-at-0", "read-EIO-at-30", "read-EIO-at-2000",
                              "read-EIO-at-4000"])
def test_a_checkpoint_that_cannot_be_read_is_one_line_and_not_called_corrupt(tmp_path, monkeypatch, err, after):
    epoch_checkpoints(tmp_path)
    last = tmp_path / "last.pt"
    unreadable(monkeypatch, last, err, after)
    with pytest.raises(CheckpointReadError) as e:
        pio.load_checkpoint(last)
    assert str(e.value) == cannot_read(last, os.strerror(err))
    assert not isinstance(e.value, CheckpointError) and "corrupt" not in str(e.value)


@pytest.mark.parametrize("err, after, last_torn", [(errno.EACCES, None, False), (errno.EIO, 2000, False),
                                                   (errno.EIO, 2000, True)],
                         ids=["last-EACCES", "last-EIO", "last-torn-prev-EIO"])
def test_a_last_pt_that_cannot_be_read_stops_the_resume_and_nothing_is_renamed(tmp_path, monkeypatch, capsys,
                                                                                err, after, last_torn):
    epoch_checkpoints(tmp_path)
    if last_torn:  # damaged: the fallback to last.prev.pt is tried, and that one cannot be read
        (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:-100])
    before = snapshot(tmp_path)
    which = tmp_path / ("last.prev.pt" if last_torn else "last.pt")
    unreadable(monkeypatch, which, err, after)
    with pytest.raises(CheckpointReadError, match=f"^{re.escape(cannot_read(which, os.strerror(err)))}$"):
        K.last_usable(tmp_path)
    assert snapshot(tmp_path) == before  # both files as they were, no .corrupt
    assert ("last.pt: truncated or corrupt" in capsys.readouterr().err) == last_torn


def test_a_last_pt_without_read_permission_stops_the_resume_and_nothing_is_renamed(tmp_path):
    probe = tmp_path / "probe"
    probe.touch(mode=0)
    readable = os.access(probe, os.R_OK)
    probe.unlink()
    if readable:
        pytest.skip("this user reads a file whatever its permissions (root)")
    epoch_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    (tmp_path / "last.pt").chmod(0)
    try:
        says = cannot_read(tmp_path / "last.pt", "Permission denied")
        with pytest.raises(CheckpointReadError, match=re.escape(says)):
            K.last_usable(tmp_path)
    finally:
        (tmp_path / "last.pt").chmod(0o644)
    assert snapshot(tmp_path) == before


def test_a_best_pt_that_cannot_be_read_is_not_rewritten_on_resume(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 1)
    fold = SimpleNamespace(dir=tmp_path, evaluated=model, state={"epoch": 2, "best_epoch": 2, "best_auc": 0.7})
    K.save_best(fold, 1, 0.6)  # of another epoch: repair_best rewrites it when it can read it
    before = snapshot(tmp_path)
    unreadable(monkeypatch, tmp_path / "best.pt", errno.EIO, 100)
    with pytest.raises(CheckpointReadError, match=re.escape(cannot_read(tmp_path / "best.pt", "Input/output error"))):
        K.repair_best(fold)
    assert snapshot(tmp_path) == before
    monkeypatch.undo()
    K.repair_best(fold)
    assert pio.load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_train_py_stops_at_a_checkpoint_it_cannot_read_and_the_same_command_then_resumes(tiny_data, tmp_path,
                                                                                          monkeypatch):
    args = tiny_overrides(tiny_data, tmp_path, **{"folds.n_folds": 2, "train.epochs": 2})
    fold = load_config(None, args).exp_dir / "fold0"
    with monkeypatch.context() as m:  # best.pt is written each time, and cannot be read when the fold ends
        unreadable(m, fold / "best.pt", errno.EACCES)
        line = one_error_line(run_main(ROOT / "train.py", "--folds", "0", *args, cwd=tmp_path, check=False))
    assert line == "error: " + cannot_read(fold / "best.pt", "Permission denied")
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "last.prev.pt", "last.pt", "log.csv"]
    before = snapshot(fold)
    with monkeypatch.context() as m:  # the resume: last.pt fails in the middle of its read
        unreadable(m, fold / "last.pt", errno.EIO, 2000)
        line = one_error_line(run_main(ROOT / "train.py", "--folds", "0", *args, cwd=tmp_path, check=False))
    assert line == "error: " + cannot_read(fold / "last.pt", "Input/output error")
    assert snapshot(fold) == before  # nothing renamed, nothing trained
    out = run_main(ROOT / "train.py", "--folds", "0", *args, cwd=tmp_path).stdout
    assert f"fold 0: resuming from {fold / 'last.pt'} after epoch 2" in out
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "log.csv", "val_predictions.csv"]


def test_infer_py_on_a_best_pt_it_cannot_read_is_one_line_and_writes_nothing(trained, monkeypatch):
    before = snapshot(trained.exp)
    best = trained.exp / "fold1" / "best.pt"
    unreadable(monkeypatch, best, errno.EIO, 2000)
    line = one_error_line(run_main(ROOT / "infer.py", *trained.args, cwd=trained.work, check=False))
    assert line == "error: " + cannot_read(best, "Input/output error")
    assert snapshot(trained.exp) == before


# -- inputs almost right, inputs changed ----------------------------------------------------------------

def test_a_submission_follows_its_templates_columns_and_new_categories_are_said(trained, tiny_data, capsys):
    data = trained.work / "data_swapped"
    shutil.copytree(tiny_data, data)
    template = pd.read_csv(data / "sample_submission.csv")[["target", "image_name"]].iloc[::-1]
    template.to_csv(data / "sample_submission.csv", index=False)
    test = pd.read_csv(data / "test.csv")
    test.assign(sex=test["sex"].map({"male": "M", "female": "F"})).to_csv(data / "test.csv", index=False)
    capsys.readouterr()
    path = I.make_submission(fresh(trained, **{"data.root": str(data)}), given=["data.root"])
    sub = pd.read_csv(path)
    assert list(sub.columns) == ["target", "image_name"] and list(sub["image_name"]) == list(template["image_name"])
    assert sub["target"].between(0, 1).all()
    n = int(test["sex"].notna().sum())
    assert (f"warning: {data / 'test.csv'}: column 'sex': {n} of {len(test)} rows (100.0%) hold values never seen in "
            f"training ('F' at ") in capsys.readouterr().err

    for columns, says in [(["image_name", "target", "Usage"], "this one has 2 columns besides the id"),
                          (["image_name"], "this one has no prediction column")]:
        template.assign(Usage="Public")[columns].to_csv(data / "sample_submission.csv", index=False)
        with pytest.raises(DataError, match=f"sample_submission.csv: a submission template holds the id column "
                                            f"'image_name' and one prediction column; {says}"):
            load_test(load_config(None, tiny_overrides(data, trained.work)))


def test_tta_views_re_predicts_beside_the_experiment_like_train_py_did(trained, capsys):
    exp = trained.exp
    assert tta_views.main([str(exp), "--views", "2,1"]) == 0
    again = pd.read_csv(exp.with_name("tiny_tta2") / "oof.csv")
    assert again.equals(pd.read_csv(exp / "oof.csv"))  # infer.tta=2: the same path, the same numbers
    assert sorted(p.name for p in exp.with_name("tiny_tta1").iterdir()) == ["oof.csv", "tta.json"]
    (exp.with_name("tiny_tta1") / "roc.png").write_bytes(b"drawn for the earlier one")
    assert tta_views.main([str(exp), "--views", "1"]) == 0  # its own kind: replaced whole
    assert sorted(p.name for p in exp.with_name("tiny_tta1").iterdir()) == ["oof.csv", "tta.json"]

    other = exp.with_name("tiny_tta4")  # a user's experiment that happens to have the name
    other.mkdir()
    for name in ("config.yaml", "data.csv"):
        shutil.copy(exp / name, other / name)
    capsys.readouterr()
    assert tta_views.main([str(exp), "--views", "4"]) == 2
    assert f"{other}: is an experiment (config.yaml, written by train.py), not a re-prediction" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "data.csv"]


def test_tta_views_with_another_backend_predicts_as_eager_and_writes_nothing_beside_best_pt(trained):
    """--backend openvino: its own folder (tiny_tta2_openvino-fp32), eager's predictions within 1e-4,
    and the export made in memory: the experiment's fold folders are as they were."""
    exp = trained.exp
    before = {k: sorted(p.name for p in (exp / f"fold{k}").iterdir()) for k in range(3)}
    assert tta_views.main([str(exp), "--views", "2", "--backend", "openvino"]) == 0
    out = exp.with_name("tiny_tta2_openvino-fp32")
    again, eager = pd.read_csv(out / "oof.csv"), pd.read_csv(exp / "oof.csv")
    assert (again["pred"] - eager["pred"]).abs().max() < 1e-4
    assert json.loads((out / "tta.json").read_text())["backend"] == "openvino"
    assert {k: sorted(p.name for p in (exp / f"fold{k}").iterdir()) for k in range(3)} == before


def test_tta_views_on_other_data_than_the_experiment_was_trained_on_is_refused(trained, tiny_data, capsys):
    data = trained.work / "data_changed"
    shutil.copytree(tiny_data, data)
    table = pd.read_csv(data / "train.csv", dtype={"image_name": str})
    table.loc[0, "age_approx"] = 5.0
    table.to_csv(data / "train.csv", index=False)
    copy = trained.work / "elsewhere" / "tiny"
    shutil.copytree(trained.exp, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["data"]["root"] = str(data)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    assert tta_views.main([str(copy), "--views", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: {copy} was trained on other data: column 'age_approx' changed in 1 row(s): {table['image_name'][0]}" in err
    assert not (copy.parent / "tiny_tta1").exists()


def test_tta_views_on_an_experiment_without_its_data_record_is_refused(trained, capsys):
    copy = trained.work / "unrecorded" / "tiny"
    shutil.copytree(trained.exp, copy)
    (copy / "data.csv").unlink()
    capsys.readouterr()
    assert tta_views.main([str(copy), "--views", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: {copy}: data.csv (the record of the data its folds were trained on) is missing; a re-prediction" in err
    assert not (copy.parent / "tiny_tta1").exists()
