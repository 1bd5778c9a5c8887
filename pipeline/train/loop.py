"""The loop: ``train_one_epoch`` (mixup, accumulation, the optimizer and scheduler steps) and
``predict`` (flip/transpose TTA).
"""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import torch
from tqdm import tqdm

from pipeline.model.mixup import mixup, mixup_loss
from pipeline.model.runtime import Runtime, forward, one_thread, to_input

LOSS_EVERY = 50  # optimizer steps between two readings of the running loss for the progress bar


def train_one_epoch(model, loader, optimizer, scheduler, scaler, rt: Runtime, step: int,
                    mixup_prob: float, mixup_alpha: float, rng: np.random.Generator, desc: str = "train",
                    should_stop=lambda: False, accumulate: int = 1, after_step=None,
                    aux_weight: float = 0.0) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, global step). The loader yields micro-batches:
    ``accumulate`` of them make one optimizer step (and one scheduler step); each is mixed on its
    own, with the same draws on every rank. Under DDP the gradients are averaged over the ranks
    at the last micro-batch of a step only. Stops early (between steps) when ``should_stop()``
    turns true; it is asked once per step on every rank. ``after_step(step)`` runs after each
    optimizer step (the EMA update).

    The host reads nothing from the device per step: the batch goes to the device without waiting,
    the running loss is summed on the device (in float64) and read once at the end, and the progress
    bar shows it every ``LOSS_EVERY`` optimizer steps (with its learning rate every step)."""
    model.train()
    total, seen, shown = torch.zeros((), dtype=torch.float64, device=rt.device), 0, {}
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not rt.progress)
    for i, (images, meta, y) in enumerate(bar):
        last = (i + 1) % accumulate == 0
        y = y.to(rt.device, non_blocking=True)
        meta = meta.to(rt.device, non_blocking=True)
        with one_thread(rt):
            x = to_input(images, rt)
            x, meta, y_a, y_b, lam = mixup(x, meta, y, mixup_prob, mixup_alpha, rng)
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = mixup_loss(forward(model, x, meta, rt), y_a, y_b, lam, aux_weight)
            (scaler.scale(loss / accumulate) if scaler is not None else loss / accumulate).backward()
        total += loss.detach().double() * len(y)
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
        if not bar.disable and step % LOSS_EVERY == 0:
            shown = {"loss": f"{total.item() / seen:.4f}"}
        bar.set_postfix(**shown, lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if should_stop():
            break
    return total.item() / max(seen, 1), step


def tta_views(images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of the 8 flips/transposes of a uint8 NHWC batch (the first is the batch itself)."""
    # A generator: only the views asked for are made (each flip is a copy).
    views = (v.flip(d) if d else v for v in (images, images.transpose(1, 2)) for d in ((), (2,), (1,), (1, 2)))
    return list(itertools.islice(views, n))


def eager_input(view: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with one_thread(rt):
        return to_input(view, rt)


@torch.inference_mode()
def predict(model, loader, rt: Runtime, tta: int = 1, desc: str = "predict") -> np.ndarray:
    """Probabilities averaged over ``tta`` views. A forward takes at most one loader batch of images
    (``infer.batch_size``): the views of a batch go through in turn, so that memory does not grow
    with ``tta`` (and glibc keeps what was freed: process.keep_freed_memory). An exported runner
    (``takes_uint8``: export.ExportedRunner) is given the batch's uint8 views together, as they are:
    its graph converts and normalises them itself."""
    model.eval()
    out = []
    for images, meta, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not rt.progress):
        views = tta_views(images, tta)
        if getattr(model, "takes_uint8", False):
            logits = model.views(views, meta)
        else:
            logits = (forward(model, eager_input(view, rt), meta, rt) for view in views)
        total = 0
        for view_logits in logits:
            total = total + model.probability(view_logits)
        out.append((total / tta).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
