"""Nothing lost: Ctrl-C and kill -9 resume to the same OOF predictions, finished folds are skipped,
early stopping survives a resume, results of another config are never mixed in, runs reproduce."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, only, tiny_overrides

from pipeline.core.config import to_yaml
from pipeline.core.errors import CheckpointError, ExperimentError
from pipeline.data.prepare import prepare
from pipeline.experiment.folder import check_config
from pipeline.model.checkpoint_file import load_checkpoint, save_checkpoint
from pipeline.train import checkpoints as K, trainer as T

EPOCHS = 3
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # same threads in every run: same floats


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread than on cores shared with other jobs."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(log: Path) -> int:
    """Epochs recorded in a log.csv (0 while it does not exist)."""
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


class Run:
    """train.py in a subprocess, its output in files (tqdm would fill a pipe)."""

    def __init__(self, args: list[str], out: Path):
        self.out, self.err = out.with_suffix(".out"), out.with_suffix(".err")
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=out.parent,
                                         env=ENV, stdout=o, stderr=e)

    def wait_until(self, ready, what: str, timeout: float = 240):
        deadline = time.time() + timeout
        while not ready():
            assert self.proc.poll() is None, f"train.py ended before {what}:\n{self.text()}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    def text(self) -> str:
        return self.out.read_text()[-3000:] + "\n--- stderr ---\n" + self.err.read_text()[-3000:]


@pytest.fixture(scope="module")
def scenario(tiny_data, tmp_path_factory):
    """An uninterrupted run, and the same config interrupted twice: Ctrl-C in fold 0, then kill -9
    in fold 1 with last.pt torn afterwards (resume must fall back to last.prev.pt); then finished."""
    work = tmp_path_factory.mktemp("resume")
    args = tiny_overrides(tiny_data, work, **{"folds.n_folds": 2, "train.epochs": EPOCHS})
    ref = Run(args + ["name=ref"], work / "ref")  # runs alongside the interrupted one (2 cores)
    exp = work / "oof" / "res"
    res = {"work": work, "ref_exp": work / "oof" / "ref", "exp": exp}

    first = Run(args + ["name=res"], work / "first")
    first.wait_until(lambda: rows(exp / "fold0" / "log.csv") >= 1, "fold 0 epoch 1")
    first.proc.send_signal(signal.SIGINT)
    res["sigint_rc"], res["sigint_text"] = first.finish(), first.text()
    res["after_sigint"] = load_checkpoint(exp / "fold0" / "last.pt")["state"]
    res["fold0_done_after_sigint"] = (exp / "fold0" / "val_predictions.csv").exists()

    second = Run(args + ["name=res"], work / "second")
    f1 = exp / "fold1"
    # last.prev.pt appears while epoch 2 is being saved; epoch 3 is still to come
    second.wait_until(lambda: (f1 / "last.prev.pt").exists(), "fold 1 epoch 2")
    second.proc.send_signal(signal.SIGKILL)
    res["kill_rc"] = second.finish()
    res["fold1_done_after_kill"] = (f1 / "val_predictions.csv").exists()
    res["fold0_oof_mtime"] = (exp / "fold0" / "val_predictions.csv").stat().st_mtime_ns
    if (f1 / "last.pt").exists():  # tear the newest checkpoint, as a crash of the disk would
        data = (f1 / "last.pt").read_bytes()
        (f1 / "last.pt").write_bytes(data[: len(data) // 2])

    third = Run(args + ["name=res"], work / "third")
    res["third_rc"], res["third_text"] = third.finish(), third.text()
    res["ref_rc"], res["ref_text"] = ref.finish(), ref.text()
    assert res["ref_rc"] == 0, res["ref_text"]
    return res


def read_oof(exp: Path) -> pd.DataFrame:
    return pd.read_csv(exp / "oof.csv").sort_values("image_name").reset_index(drop=True)


def test_ctrl_c_stops_cleanly_with_resume_message(scenario):
    assert scenario["sigint_rc"] == 130, scenario["sigint_text"]
    assert "run the same command again to resume" in scenario["sigint_text"]
    assert "Traceback" not in scenario["sigint_text"]
    assert scenario["after_sigint"]["epoch"] >= 1 and not scenario["fold0_done_after_sigint"]


def test_kill9_then_resume_gives_the_uninterrupted_oof(scenario):
    assert scenario["kill_rc"] == -signal.SIGKILL and not scenario["fold1_done_after_kill"]
    assert scenario["third_rc"] == 0, scenario["third_text"]
    out = scenario["third_text"]
    assert "fold 0: done already" in out  # finished folds are skipped...
    assert (scenario["exp"] / "fold0" / "val_predictions.csv").stat().st_mtime_ns == scenario["fold0_oof_mtime"]
    assert "last.prev.pt after epoch 1" in out, out  # ...and the torn last.pt falls back to the previous
    ref, got = read_oof(scenario["ref_exp"]), read_oof(scenario["exp"])
    assert len(ref) == len(got) > 0 and list(ref["image_name"]) == list(got["image_name"])
    assert (ref["fold"] == got["fold"]).all()
    np.testing.assert_allclose(got["pred"], ref["pred"], rtol=0, atol=1e-6)
    # the OOF comes from the best epoch, which may precede the interruption; every resumed epoch's
    # loss, AUC and learning rate must match as well (a lost optimizer state shows up here)
    for fold in (0, 1):
        cols = ["epoch", "train_loss", "val_auc", "lr", "best"]
        ref_log = pd.read_csv(scenario["ref_exp"] / f"fold{fold}" / "log.csv")[cols]
        pd.testing.assert_frame_equal(pd.read_csv(scenario["exp"] / f"fold{fold}" / "log.csv")[cols], ref_log)


def test_logs_after_resume_have_each_epoch_once_and_no_leftovers(scenario):
    for fold in (0, 1):
        got = pd.read_csv(scenario["exp"] / f"fold{fold}" / "log.csv")
        assert list(got["epoch"]) == list(range(1, EPOCHS + 1))
        leftovers = [p.name for p in (scenario["exp"] / f"fold{fold}").iterdir()
                     if p.name.startswith((".", "last"))]
        assert leftovers == [], leftovers  # no checkpoints, set-aside or temporary files stay behind


def test_env_json_records_versions_device_seed_commit(scenario):
    import torch
    env = json.loads((scenario["exp"] / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["seed"] == 42
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert env["git_commit"] == head
    for key in ("timm", "albumentations", "numpy", "pandas", "scikit-learn", "python", "platform"):
        assert env[key], key


def test_cli_refuses_a_changed_config_with_exit_2_naming_the_key(scenario, tiny_data, capsys):
    from pipeline import cli  # the entry point of train.py, called in-process to spare an interpreter start
    args = tiny_overrides(tiny_data, scenario["work"], **{"folds.n_folds": 2, "train.epochs": EPOCHS,
                                                          "name": "ref", "train.lr": 0.002})
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda: cli.train_main(args))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and "train.lr: 0.001 -> 0.002" in err and "ref/config.yaml" in err, err


# ---------------------------------------------------------------- in-process (no interpreter start)

def test_best_metric_and_early_stopping_counter_survive_resume(tiny_cfg):
    cfg = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 3, "train.patience": 2})
    data = prepare(cfg)
    last = cfg.exp_dir / "fold0" / "last.pt"
    with pytest.raises(T.Interrupted):
        T.run_fold(cfg, data, 0, last.exists)  # "Ctrl-C" once epoch 1 is saved
    ckpt = load_checkpoint(last)
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["best_epoch"] == 1
    # pretend epoch 1 had an unbeatable AUC and was already one epoch without improvement, and that
    # the kill came between last.pt and best.pt (resume rewrites best.pt from last.pt's weights)
    ckpt["state"].update(best_auc=1.5, bad_epochs=1)
    save_checkpoint(last, ckpt)
    (cfg.exp_dir / "fold0" / "best.pt").unlink()
    T.run_fold(cfg, data, 0, lambda: False)
    log = pd.read_csv(cfg.exp_dir / "fold0" / "log.csv")
    # the restored counter reaches patience 2 after epoch 2 (a reset one would train epoch 3), and the
    # restored best AUC keeps epoch 2 from being "best" and from replacing best.pt
    assert list(log["epoch"]) == [1, 2] and list(log["best"]) == [True, False]
    assert load_checkpoint(cfg.exp_dir / "fold0" / "best.pt")["epoch"] == 1


def test_resume_without_any_usable_checkpoint_names_the_files(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 torn")
    (tmp_path / "last.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.pt.*delete .* to train this fold again"):
        K.last_usable(tmp_path)
    assert (tmp_path / "last.pt").exists()  # nothing is set aside when nothing can be used


@pytest.mark.parametrize("damage", ["torn", "flipped"])
def test_resume_falls_back_to_previous_checkpoint(tmp_path, capsys, damage):
    w = torch.arange(256, dtype=torch.float32)
    state = {"model": {"w": w}, "optimizer": {}, "scheduler": {}}
    save_checkpoint(tmp_path / "last.prev.pt", {**state, "state": {"epoch": 1}})
    save_checkpoint(tmp_path / "last.pt", {**state, "state": {"epoch": 2}})
    bad = bytearray((tmp_path / "last.pt").read_bytes())
    if damage == "torn":
        del bad[-100:]
    else:  # a bit of the tensor's data: only the checksum sees it
        bad[bad.find(w.numpy().tobytes()) + 100] ^= 0x10
    (tmp_path / "last.pt").write_bytes(bytes(bad))
    path, ckpt = K.last_usable(tmp_path)
    assert path.name == "last.prev.pt" and ckpt["state"]["epoch"] == 1
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'last.pt'}: " + ("truncated or corrupt checkpoint" if damage == "torn" else
                                                   "corrupt checkpoint (checksum mismatch)") in err
    assert f"warning: resuming from {tmp_path / 'last.prev.pt'} instead; last.pt kept as last.pt.corrupt" in err
    # the damaged file is set aside, so the next save does not rotate it over the good one
    assert not (tmp_path / "last.pt").exists() and (tmp_path / "last.pt.corrupt").exists()


def test_same_seed_same_folds_and_oof_other_seed_differs(tiny_cfg, tmp_path):
    def run(name, seed):
        # each run makes its own fold table, so the fold assignment is reproduced too
        cfg = tiny_cfg(**{"name": name, "folds.n_folds": 2, "train.epochs": 1, "train.folds": "[0]",
                          "train.seed": seed, "folds.path": str(tmp_path / f"folds_{name}.csv")})
        return T.train(cfg).sort_values("image_name").reset_index(drop=True)

    a, b, c = run("a", 42), run("b", 42), run("c", 7)
    assert (pd.read_csv(tmp_path / "folds_a.csv") == pd.read_csv(tmp_path / "folds_b.csv")).all().all()
    assert list(a["image_name"]) == list(b["image_name"]) and (a["fold"] == b["fold"]).all()
    np.testing.assert_allclose(a["pred"], b["pred"], rtol=0, atol=1e-6)
    assert np.abs(a["pred"] - c["pred"]).max() > 1e-4


def test_force_retrains_and_a_forced_new_config_leaves_nothing_of_the_old(tiny_cfg, capsys):
    cfg = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 1})
    T.train(only(cfg, 0, 1))
    exp = cfg.exp_dir
    before = (exp / "fold0" / "val_predictions.csv").stat().st_mtime_ns
    T.train(only(cfg, 0))
    assert (exp / "fold0" / "val_predictions.csv").stat().st_mtime_ns == before  # done: skipped
    T.train(only(cfg, 0), force=True)
    assert (exp / "fold0" / "val_predictions.csv").stat().st_mtime_ns != before  # --force: trained again
    assert (exp / "fold1" / "val_predictions.csv").exists()  # same config: the other fold stays

    changed = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 1, "train.lr": 0.002})
    with pytest.raises(ExperimentError, match="train.lr"):
        T.train(only(changed, 0))
    capsys.readouterr()
    T.train(only(changed, 0), force=True)
    assert "train.lr" in capsys.readouterr().err
    assert not (exp / "fold1").exists()  # fold 1 of the old config is gone, not mixed in
    assert set(pd.read_csv(exp / "oof.csv")["fold"]) == {0}


def test_run_only_keys_may_change(tiny_cfg):
    cfg = tiny_cfg()
    cfg.exp_dir.mkdir(parents=True)
    (cfg.exp_dir / "config.yaml").write_text(to_yaml(cfg))
    same = tiny_cfg(**{"train.folds": "[1]", "train.num_workers": 2, "infer.batch_size": 4})
    assert check_config(same, force=False) == []
    # infer.tta makes the folds' OOF rows: one value per experiment
    for key, value in (("train.seed", 1), ("model.image_size", 48), ("features.n_images", False), ("infer.tta", 1)):
        with pytest.raises(ExperimentError, match=key.replace(".", r"\.")):
            check_config(tiny_cfg(**{key: value}), force=False)
