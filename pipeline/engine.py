"""The loop: one forward step shared by training and prediction, train_one_epoch, predict (TTA).

Images travel as uint8 NHWC from the loader; ``to_input`` turns them into normalised float NCHW
on the device, which is channels_last by construction (a permuted NHWC buffer).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import resource
import signal
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import timm
import torch
from tqdm import tqdm

from .mixup import mixup, mixup_loss


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype, memory format, normalisation."""
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    mean: torch.Tensor
    std: torch.Tensor
    progress: bool = True  # draw progress bars (rank 0 only, under torchrun)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Tell glibc's malloc to keep freed blocks up to ``limit`` bytes for reuse rather than hand them
    back to the OS: by default every large tensor (activations, gradients) is a fresh mmap, and each
    training step page-faults its memory in again (measured in benchmarks/README.md). The cost is
    that resident memory stays at its peak. Linux with glibc only; elsewhere nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


@functools.cache
def tune_process() -> None:
    """Process-wide settings for the loop, made once by the entry points (train, infer, the
    benchmarks), never on import: glibc keeps freed memory, and OpenCV runs on one thread. OpenCV's
    thread pool (the augmentation's warps) spins waiting for work after each call, on the cores
    torch's threads need for the step that follows (benchmarks/README.md)."""
    keep_freed_memory()
    cv2.setNumThreads(1)


def make_runtime(model: torch.nn.Module, amp: bool, cpu_bf16: bool, channels_last: bool,
                 device: torch.device | None = None, progress: bool = True) -> Runtime:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    else:
        amp_dtype = torch.bfloat16 if cpu_bf16 else None
    data_cfg = timm.data.resolve_model_data_config(model.backbone)
    mean = torch.tensor(data_cfg["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_cfg["std"], device=device).view(1, 3, 1, 1) * 255
    return Runtime(device, amp_dtype, channels_last, mean, std, progress)


def place(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The model on the runtime's device, in its memory format."""
    model.to(rt.device)
    return model.to(memory_format=torch.channels_last) if rt.channels_last else model


def to_input(images: torch.Tensor, rt: Runtime) -> torch.Tensor:
    n, h, w, c = images.shape
    x = images.to(rt.device, non_blocking=True).float().contiguous()  # a transposed TTA view is not
    # Normalise in NHWC with mean/std tiled along an image row: broadcasting a (1, 3, 1, 1) over a
    # channels_last tensor runs an inner loop of 3 elements, 10-20x slower on CPU. Same values.
    x.view(n * h, w * c).sub_(rt.mean.view(c).repeat(w)).div_(rt.std.view(c).repeat(w))
    x = x.permute(0, 3, 1, 2)
    return x if rt.channels_last else x.contiguous()


@contextlib.contextmanager
def one_thread(rt: Runtime):
    """Runs the loop's own tensor chores (uint8 -> float, mixup, TTA flips) on one CPU thread. They
    are short and memory-bound; on two threads each op ends in a barrier which, on a CPU shared with
    other processes, often waits for a descheduled thread longer than the work takes
    (benchmarks/README.md). The model itself keeps all threads."""
    threads = torch.get_num_threads()
    if rt.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def forward(model, x: torch.Tensor, meta: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with rt.autocast():
        return model(x, meta.to(rt.device, non_blocking=True)).float()


def train_one_epoch(model, loader, optimizer, scheduler, scaler, rt: Runtime, step: int,
                    mixup_prob: float, mixup_alpha: float, rng: np.random.Generator, desc: str = "train",
                    should_stop=lambda: False, accumulate: int = 1, after_step=None,
                    aux_weight: float = 0.0) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, global step). The loader yields micro-batches:
    ``accumulate`` of them make one optimizer step (and one scheduler step); each is mixed on its
    own, with the same draws on every rank. Under DDP the gradients are averaged over the ranks
    at the last micro-batch of a step only. Stops early (between steps) when ``should_stop()``
    turns true; it is asked once per step on every rank. ``after_step(step)`` runs after each
    optimizer step (the EMA update)."""
    model.train()
    total, seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not rt.progress)
    for i, (images, meta, y) in enumerate(bar):
        last = (i + 1) % accumulate == 0
        y = y.to(rt.device)
        meta = meta.to(rt.device)
        with one_thread(rt):
            x = to_input(images, rt)
            x, meta, y_a, y_b, lam = mixup(x, meta, y, mixup_prob, mixup_alpha, rng)
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = mixup_loss(forward(model, x, meta, rt), y_a, y_b, lam, aux_weight)
            (scaler.scale(loss / accumulate) if scaler is not None else loss / accumulate).backward()
        total += loss.item() * len(y)
        seen += len(y)
        if not last:
            continue
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        scheduler.step_update(step)
        if after_step is not None:
            after_step(step)
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if should_stop():
            break
    return total / max(seen, 1), step


def tta_views(images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of the 8 flips/transposes of a uint8 NHWC batch (the first is the batch itself)."""
    # A generator: only the views asked for are made (each flip is a copy).
    views = (v.flip(d) if d else v for v in (images, images.transpose(1, 2)) for d in ((), (2,), (1,), (1, 2)))
    return list(itertools.islice(views, n))


@torch.inference_mode()
def predict(model, loader, rt: Runtime, tta: int = 1, desc: str = "predict") -> np.ndarray:
    """Probabilities averaged over ``tta`` views. A forward takes at most one loader batch of images
    (``infer.batch_size``): the views of a batch go through in turn, so that memory does not grow
    with ``tta`` (and glibc keeps what was freed: engine.keep_freed_memory)."""
    model.eval()
    out = []
    for images, meta, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not rt.progress):
        total = 0
        for view in tta_views(images, tta):
            with one_thread(rt):
                x = to_input(view, rt)
            total = total + model.probability(forward(model, x, meta, rt))
        out.append((total / tta).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


class StopFlag:
    """Ctrl-C sets a flag; the loop stops between steps and the caller says how to resume."""

    def __init__(self):
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    @contextlib.contextmanager
    def installed(self):
        owner = os.getpid()

        def handler(signum, frame):
            if os.getpid() != owner:  # a forked data-loader worker: the main process decides
                return
            if self.stop:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.stop = True
            print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)
        try:
            old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, old)


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux: kilobytes in ru_maxrss)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
