"""torchrun and DDP on CPU (gloo), in subprocesses: sharded shuffle, OOF coverage, identical ranks,
resume after a kill; gradient accumulation."""
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
from conftest import ROOT, tiny_overrides

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.data.dataset import SeededShuffle
from pipeline.data.prepare import prepare
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.train import trainer as T

TRAIN = str(ROOT / "train.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def torchrun(*argv, cwd: Path, nproc: int = 2, env: dict | None = None, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions of their
    own: killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_shuffle_gives_every_global_batch_whatever_the_process_count(world):
    n, batch = 103, 16
    one = list(SeededShuffle(n, torch.Generator().manual_seed(5), batch))
    shares = [list(SeededShuffle(n, torch.Generator().manual_seed(5), batch, r, world)) for r in range(world)]
    assert len(one) == (n // batch) * batch and len(set(one)) == len(one)  # whole batches, each row once
    for r, share in enumerate(shares):
        assert len(share) == len(SeededShuffle(n, torch.Generator(), batch, r, world))
    steps = n // batch
    for s in range(steps):  # the ranks' shares of step s together are the one-process batch s
        together = [i for share in shares for i in share[s * batch // world:(s + 1) * batch // world]]
        assert together == one[s * batch:(s + 1) * batch]


@pytest.mark.parametrize("aux,compiled", [(False, False), (True, False), (False, True)],
                         ids=["binary", "diagnosis_head", "compiled"])
def test_ranks_start_equal_mix_alike_and_stay_equal(tiny_data, tmp_path, aux, compiled):
    """Head-bias init, every mixup lambda, the step count, the weights (both heads apart) and
    Lookahead's slow weights after an epoch are the same on both ranks, and the model ends the epoch
    on its slow weights; each rank trains half of
    every global batch. Compiled: DDP first, then torch.compile (timm's test model: it compiles in
    a minute)."""
    extra = {"data.diagnosis_col": "diagnosis", "train.aux_weight": 1.0} if aux else {}
    if compiled:
        extra.update({"train.compile": True, "model.backbone": "test_efficientnet", "model.pretrained": "none"})
    args = tiny_overrides(tiny_data, tmp_path, **{"train.epochs": 1, "train.mixup_prob": 0.7,
                                                  "train.lookahead_k": 2, "train.batch_size": 16, **extra})
    out, _ = finish(torchrun(str(ROOT / "tests" / "ddp_probe.py"), *args, cwd=tmp_path))
    a, b = json.loads(out.strip().splitlines()[-1])
    assert a["bias"] == b["bias"] and a["bias"][0] != 0.0 and len(a["bias"]) == (4 if aux else 1)
    assert a["head"] == b["head"] and all(w != 0.0 for w in a["head"])  # every output trained, alike
    assert a["lams"] == b["lams"] and len(a["lams"]) == a["step"] > 0 and any(lam != 1.0 for lam in a["lams"])
    assert a["step"] == b["step"] and a["rows"] == b["rows"] == a["step"] * 8
    assert a["weights"] == b["weights"] and a["slow"] == b["slow"] and a["n_slow"] > 0
    assert a["step"] % 2 and a["gap"] == b["gap"] == 0.0  # k=2: the epoch ends between slow updates, on the slow weights


def test_torchrun_trains_every_fold_and_the_oof_covers_each_row_once(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"train.epochs": 1})
    out, err = finish(torchrun(TRAIN, *args, cwd=tmp_path))
    exp = tmp_path / "oof" / "tiny"
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": "string"})
    train = pd.read_csv(tiny_data / "train.csv", dtype={"image_name": "string"})
    assert sorted(oof["image_name"]) == sorted(train["image_name"])  # each validation row once, no padding
    assert "global batch 16 = 2 process(es) x 1 accumulation step(s) x 8 rows" in out
    assert out.count("pooled OOF AUC") == 1  # rank 0 alone prints
    assert not list(exp.glob("*.lock")) and not list(exp.glob("fold*/last*.pt"))
    assert all(len(pd.read_csv(exp / f"fold{k}" / "log.csv")) == 1 for k in range(3))


def test_resume_after_a_kill_under_torchrun_equals_an_uninterrupted_run(tiny_data, tmp_path):
    def args(work):
        return [TRAIN, *tiny_overrides(tiny_data, work, **{"train.epochs": 2, "train.patience": 5}), "--folds", "0"]

    finish(torchrun(*args(tmp_path / "a"), cwd=tmp_path))
    (tmp_path / "b").mkdir()
    proc = torchrun(*args(tmp_path / "b"), cwd=tmp_path)
    last = tmp_path / "b" / "oof" / "tiny" / "fold0" / "last.pt"
    deadline = time.time() + 300
    while not last.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    kill_tree(proc.pid)  # torchrun and both ranks, after epoch 1 was saved
    proc.wait()
    assert load_checkpoint(last)["state"]["epoch"] == 1
    out, err = finish(torchrun(*args(tmp_path / "b"), cwd=tmp_path))
    assert "fold 0: resuming from" in out and "recovered the lock" in err, out[-3000:]
    a, b = (pd.read_csv(tmp_path / w / "oof" / "tiny" / "oof.csv") for w in ("a", "b"))
    assert (a["image_name"] == b["image_name"]).all()
    np.testing.assert_allclose(a["pred"], b["pred"], rtol=0, atol=1e-6)


def test_accumulation_counts_optimizer_steps_not_micro_batches(tiny_cfg):
    steps = {}
    for acc in (1, 2):
        cfg = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 2, "train.accumulate": acc, "name": f"acc{acc}"})
        data = prepare(cfg)
        fold = T.build_fold(cfg, data, 0)
        assert fold.train_loader.batch_size == 16 // acc
        T.run_epoch(cfg, fold, 0, lambda: False)
        steps[acc] = fold.state["step"]  # optimizer steps of one epoch, counted by the schedule
        assert fold.scheduler.t_initial + fold.scheduler.warmup_t == cfg.train.epochs * steps[acc]
    assert steps[1] == steps[2] == int((data.df["fold"] != 0).sum()) // 16
    with pytest.raises(ConfigError, match="train.accumulate"):
        tiny_cfg(**{"train.accumulate": 3})


def test_sync_bn_on_the_cpu_is_a_config_error_before_anything_is_written(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"train.sync_bn": True})
    proc = torchrun(TRAIN, *args, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("error: train.sync_bn=true needs CUDA") == 1  # rank 0 alone says it
    assert not (tmp_path / "oof").exists()


def test_a_rank_that_reads_other_training_rows_than_rank_0_stops_in_one_line(tiny_cfg):
    """Rows dropped for unreadable images are read again by every process (the cache stores no
    read error): a rank > 0 whose rows differ from rank 0's (an image fixed in between) stops."""
    cfg = tiny_cfg()
    ids = prepare(cfg).df[cfg.data.id_col].tolist()

    class Rank1(T.Dist):  # rank 0 opened the run without this image; its answers, as broadcast
        def broadcast(self, obj):
            return self.answers.pop(0)

    rank1 = Rank1(rank=1, world=2)
    object.__setattr__(rank1, "answers", [None, ids[1:]])
    with pytest.raises(PipelineError, match=r"rank 1 read other training rows than rank 0 \(\d+ against \d+"):
        T.open_run(cfg, [0], False, rank1)
