"""Device decisions held on the CPU with the device's capability given, not detected: the autocast
dtype from the compute capability, the GradScaler's state through last.pt, SyncBatchNorm that keeps
timm's activations, no host read per training step, and the Ctrl-C vote that does not wait."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from timm.utils import ModelEmaV3
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.core.config import TrainConfig
from pipeline.model.net import ImageMetaNet, sync_batchnorm
from pipeline.model.runtime import autocast_dtype, make_runtime
from pipeline.train import checkpoints as K, loop, trainer as T
from pipeline.train.distributed import SINGLE

# --- the autocast dtype -----------------------------------------------------------------------

CAPABILITIES = {(6, 0): torch.float16, (7, 0): torch.float16, (7, 5): torch.float16, (8, 0): torch.bfloat16,
                (8, 6): torch.bfloat16, (9, 0): torch.bfloat16, None: torch.float16}


@pytest.mark.parametrize("capability", list(CAPABILITIES), ids=str)
def test_cuda_autocasts_bf16_from_sm80_and_fp16_below(capability):
    """P100 (6.0), V100 (7.0) and T4 (7.5) emulate bf16: fp16 there (with the GradScaler); A100
    (8.0), RTX 30xx (8.6), H100 (9.0): bf16. An unknown capability gets fp16. amp off: fp32."""
    assert autocast_dtype("cuda", capability, amp=True, cpu_bf16=False) is CAPABILITIES[capability]
    assert autocast_dtype("cuda", capability, amp=True, cpu_bf16=True) is CAPABILITIES[capability]
    assert autocast_dtype("cuda", capability, amp=False, cpu_bf16=True) is None


@pytest.mark.parametrize("amp", [True, False])
def test_the_cpu_autocasts_bf16_only_with_cpu_bf16(amp):
    assert autocast_dtype("cpu", None, amp=amp, cpu_bf16=True) is torch.bfloat16
    assert autocast_dtype("cpu", None, amp=amp, cpu_bf16=False) is None
    model = ImageMetaNet("test_efficientnet", 0)
    assert make_runtime(model, amp, True, True, torch.device("cpu")).amp_dtype is torch.bfloat16
    assert make_runtime(model, amp, False, True, torch.device("cpu")).amp_dtype is None


# --- the GradScaler through last.pt -----------------------------------------------------------

def fp16_fold(folder: Path) -> SimpleNamespace:
    """What checkpoints.save_epoch and resume take from a trainer.Fold: a small model, Lookahead(Adam),
    the schedule and a GradScaler (on the CPU: its fp16 autocast runs here)."""
    t = TrainConfig()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    optimizer = T.build_optimizer(model, t)
    return SimpleNamespace(k=0, dir=folder, model=model, optimizer=optimizer,
                           scheduler=T.build_scheduler(optimizer, t, 10), ema=None,
                           scaler=torch.amp.GradScaler("cpu", growth_interval=3),
                           state={"epoch": 1, "step": 0, "best_auc": 0.5, "best_epoch": 1, "bad_epochs": 0})


def fp16_step(f: SimpleNamespace, seed: int, blow_up: float = 1.0) -> None:
    """One scaled fp16 step; ``blow_up`` large overflows the gradients, so the scaler skips the
    step and halves its scale."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.rand(16, 1, generator=g)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.mse_loss(f.model(x).float(), y) * blow_up
    f.scaler.scale(loss).backward()
    f.scaler.step(f.optimizer)
    f.scaler.update()
    f.optimizer.zero_grad(set_to_none=True)


def test_an_fp16_resume_restores_the_grad_scaler_and_continues_exactly(tmp_path):
    """The scale and growth tracker after a skipped (overflowing) step and a growth are saved in
    last.pt and restored by resume; the resumed fold then takes the same steps as the one that went
    on, to the bit. A fresh scaler would start from another scale."""
    f = fp16_fold(tmp_path)
    for s, blow_up in enumerate([1e30, 1, 1, 1, 1e30, 1]):
        fp16_step(f, s, blow_up)
    saved = f.scaler.state_dict()
    assert saved["scale"] == 2.0**15 and saved["_growth_tracker"] == 1  # halved, grown, halved, one step since
    K.save_epoch(f, improved=False, auc=0.5)
    resumed = fp16_fold(tmp_path)
    assert resumed.scaler.state_dict() != saved
    K.resume(resumed)
    assert resumed.scaler.state_dict() == saved
    for s in (6, 7, 8):
        fp16_step(f, s)
        fp16_step(resumed, s)
    for a, b in zip(f.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.scaler.state_dict() == f.scaler.state_dict()


# --- SyncBatchNorm ----------------------------------------------------------------------------

def with_batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random batch-norm weights and running statistics, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
    return model


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "test_efficientnet"])  # ReLU6, SiLU
def test_sync_batchnorm_keeps_each_activation_and_predicts_as_the_plain_model(backbone):
    """Every BatchNormAct2d becomes a SyncBatchNormAct with its activation and drop, every other
    batch norm (the meta MLP's) a SyncBatchNorm; the state-dict keys and values are the plain
    model's, and in eval mode (no process group needed) both give the same logits: the model that
    predicts (built without SyncBatchNorm, loading best.pt) is the network that trained."""
    torch.manual_seed(0)
    plain = with_batch_statistics(ImageMetaNet(backbone, 6)).eval()
    synced = sync_batchnorm(copy.deepcopy(plain)).eval()
    modules = dict(synced.named_modules())
    norm_acts = [(name, m) for name, m in plain.named_modules() if isinstance(m, BatchNormAct2d)]
    assert norm_acts
    for name, m in norm_acts:
        assert isinstance(modules[name], SyncBatchNormAct), name
        assert type(modules[name].act) is type(m.act) and type(modules[name].drop) is type(m.drop), name
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    a, b = plain.state_dict(), synced.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    image, meta = torch.randn(4, 3, 64, 64), torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(plain(image, meta), synced(image, meta))


# --- no host read per step --------------------------------------------------------------------

TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
PIPELINE_DIR = str(ROOT / "pipeline") + os.sep
aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                 aten._index_put_impl_.default}


def project_caller() -> str | None:
    """``file:line`` of the project's code (pipeline/) that made the torch call under way: the first
    frame outside torch and this file; None when that frame is not the project's (timm's
    Lookahead calling Adam, which reads its step counters, kept on the CPU also on CUDA)."""
    f = sys._getframe(1)
    while f is not None and (f.f_code.co_filename.startswith(TORCH_DIR) or f.f_code.co_filename == __file__):
        f = f.f_back
    if f is None or not f.f_code.co_filename.startswith(PIPELINE_DIR):
        return None
    return f"{Path(f.f_code.co_filename).relative_to(ROOT)}:{f.f_lineno}"


class HostReads(TorchDispatchMode):
    """Records, by the project's line that asked, what makes the host wait for a CUDA device: a value
    read on the host (item, bool, float), an output whose size is a device value (nonzero, masked
    select, boolean-mask indexing), a tensor brought to the host (cpu, tolist, numpy) and a copy to
    the device without non_blocking=True. On the CPU none of these waits; the calls are the same."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.lines = []
        for name in ("cpu", "tolist", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, self.recording(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.Tensor, "to", self.copy_recording(torch.Tensor.to))

    def note(self) -> None:
        caller = project_caller()
        if caller is not None:
            self.lines.append(caller)

    def recording(self, method):
        def wrapper(*args, **kwargs):
            self.note()
            return method(*args, **kwargs)
        return wrapper

    def copy_recording(self, to):
        def wrapper(t, *args, **kwargs):
            device = "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)
            if device and not kwargs.get("non_blocking", any(a is True for a in args)):
                self.note()
            return to(t, *args, **kwargs)
        return wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masked = func in MASK_INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in READS or masked:
            self.note()
        return func(*args, **(kwargs or {}))


def batches(n: int, rows: int = 4, size: int = 32, n_meta: int = 5, seed: int = 0) -> list:
    """``n`` loader batches: uint8 NHWC images, meta, (target, class) rows with unknown classes (-1)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (rows, size, size, 3), dtype=torch.uint8, generator=g),
             torch.randn(rows, n_meta, generator=g),
             torch.stack([torch.tensor([0.0, 1.0] * (rows // 2)),
                          torch.randint(-1, 3, (rows,), generator=g).float()], 1)) for _ in range(n)]


def reads_of_an_epoch(monkeypatch, steps: int, accumulate: int = 2) -> tuple[list, float]:
    """The host reads of one train_one_epoch of ``steps`` optimizer steps, as the trainer runs it:
    diagnosis head, mixup on every batch, accumulation, EMA, the progress bar drawn."""
    t = TrainConfig()
    torch.manual_seed(0)
    model = ImageMetaNet("test_efficientnet", 5, n_classes=3)
    rt = make_runtime(model, True, False, True, torch.device("cpu"))
    optimizer = T.build_optimizer(model, t)
    ema = ModelEmaV3(model, decay=0.9, use_warmup=True)
    with monkeypatch.context() as mp, HostReads(mp) as reads:
        loss, step = loop.train_one_epoch(
            model, batches(steps * accumulate), optimizer, T.build_scheduler(optimizer, t, steps), None, rt, 0,
            1.0, 0.4, np.random.default_rng(0), accumulate=accumulate, after_step=lambda s: ema.update(model, step=s),
            aux_weight=0.5)
    assert step == steps and np.isfinite(loss)
    return reads.lines, loss


def test_training_reads_nothing_from_the_device_per_step(monkeypatch):
    """The project's code asks the device for one value per epoch (the mean loss, at the end),
    whatever the number of steps (below loop.LOSS_EVERY, the progress bar's refresh of the loss):
    no loss.item() per micro-batch, no host branch on the diagnosis classes, no blocking copy of the
    batch. The optimizer's own reads (Adam's CPU step counters) are not the project's."""
    short, _ = reads_of_an_epoch(monkeypatch, 1)
    long, _ = reads_of_an_epoch(monkeypatch, 3)
    assert 3 < loop.LOSS_EVERY
    assert short == long and len(long) == 1 and long[0].startswith("pipeline/train/loop.py"), long


# --- the Ctrl-C vote --------------------------------------------------------------------------

def test_one_process_votes_its_own_flag_at_once():
    vote = SINGLE.vote()
    assert [vote(f) for f in (False, True, False)] == [False, True, False] and vote.settle() is False


def test_ranks_stop_at_the_same_step_one_after_the_first_flag(tmp_path):
    """Under torchrun (gloo), rank 0's flag turns true at step 3 and rank 1's at step 5, rank 1
    running slower: both get the same answers, true from step 4 on (each call answers the vote of
    the call before), and the vote settled after the last step is true."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "stop_vote_probe.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(proc.stdout.strip().splitlines()[-1])
    assert a == b == [False] * 4 + [True] * 5
