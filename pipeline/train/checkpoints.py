"""A fold's checkpoints, their whole life: save an epoch, rotate, keep the best, resume, repair, and
load the weights that predict.

``fold<k>/`` holds, while it trains, ``last.pt`` (everything an epoch needs to resume exactly: model,
optimizer with Lookahead's slow weights, scheduler, AMP scaler, EMA, loop state) and
``last.prev.pt`` (the epoch before, in case ``last.pt`` is damaged); always ``best.pt`` (the weights
that validated best: the EMA's with ``train.ema``). A finished fold keeps ``best.pt`` (and the
exports made from it: ``export-<backend>-<precision>.zip``).
Reading and writing the files themselves (atomic, checksummed, tensors only) is ``model/checkpoint_file.py``.

The functions take the fold being trained (``trainer.Fold``): its ``dir``, ``model``, ``optimizer``,
``scheduler``, ``scaler``, ``ema``, ``state`` and ``evaluated`` (the weights validated and saved).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from pipeline.core.errors import CheckpointError
from pipeline.core.files import remove_stale_temps
from pipeline.model.backends import for_inference
from pipeline.model.checkpoint_file import load_checkpoint, read_error, save_checkpoint
from pipeline.model.export import Calibration
from pipeline.model.export_cache import ExportCache
from pipeline.model.net import build_model
from pipeline.model.runtime import Runtime, make_runtime, place
from pipeline.train.calibration import fold_calibration

RESUME_KEYS = ("model", "optimizer", "scheduler", "state")


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; CheckpointReadError when the file system will not say."""
    try:
        return path.exists()
    except OSError as e:
        raise read_error(path, e) from None


def last_usable(fold_dir: Path) -> tuple[Path, dict] | None:
    """The last epoch checkpoint, falling back to the previous one when the last is damaged (a
    CheckpointError: failed checksum, unreadable format; it is then set aside as <name>.corrupt, so
    that the next rotation keeps the good one). None when the fold has no checkpoint; CheckpointError
    when none of them is usable. A file that cannot be read (CheckpointReadError: no permission, an
    I/O error) stops it at once, before any file is renamed."""
    damaged = []
    for name in ("last.pt", "last.prev.pt"):
        path = fold_dir / name
        if not _exists(path):
            continue
        try:
            ckpt = load_checkpoint(path)
            missing = [k for k in RESUME_KEYS if k not in ckpt]
            if missing:
                raise CheckpointError(f"{path}: not an epoch checkpoint (no {', '.join(missing)})")
        except CheckpointError as e:
            print(f"warning: {e}", file=sys.stderr)
            damaged.append((path, str(e)))
            continue
        for bad, _ in damaged:
            bad.replace(bad.with_name(bad.name + ".corrupt"))
            print(f"warning: resuming from {path} instead; {bad.name} kept as {bad.name}.corrupt", file=sys.stderr)
        return path, ckpt
    if damaged:
        raise CheckpointError(f"{damaged[0][1]}; no usable checkpoint to resume from: delete {fold_dir} to "
                              f"train this fold again")
    return None


def resume(f) -> None:
    """Continue from the fold's last epoch checkpoint, when there is one (every rank loads it)."""
    found = last_usable(f.dir)
    if found is None:
        return
    path, ckpt = found
    try:  # Lookahead's slow weights and step counter live in the base Adam's state dict
        f.model.load_state_dict(ckpt["model"])
        f.optimizer.load_state_dict(ckpt["optimizer"])
        f.scheduler.load_state_dict(ckpt["scheduler"])
        if f.scaler is not None and "scaler" in ckpt:
            f.scaler.load_state_dict(ckpt["scaler"])
        if f.ema is not None:
            f.ema.module.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit this model and config ({str(e).splitlines()[0]}); "
                              f"delete {f.dir} to train this fold again") from None
    f.state = dict(ckpt["state"])
    print(f"fold {f.k}: resuming from {path} after epoch {f.state['epoch']} (best AUC {f.state['best_auc']:.4f}, "
          f"{f.state['bad_epochs']} epoch(s) without improvement)")


def save_best(f, epoch: int, auc: float) -> None:
    save_checkpoint(f.dir / "best.pt", {"model": f.evaluated.state_dict(), "epoch": epoch, "auc": auc})


def save_epoch(f, improved: bool, auc: float) -> None:
    """last.pt (rotating the previous one to last.prev.pt), then best.pt when the epoch improved."""
    last = f.dir / "last.pt"
    if last.exists():
        last.replace(f.dir / "last.prev.pt")
    save_checkpoint(last, {"model": f.model.state_dict(), "optimizer": f.optimizer.state_dict(),
                           "scheduler": f.scheduler.state_dict(), "state": f.state,
                           **({"scaler": f.scaler.state_dict()} if f.scaler is not None else {}),
                           **({"ema": f.ema.module.state_dict()} if f.ema is not None else {})})
    # best.pt after last.pt: a resume from an epoch never finds a best.pt of a later epoch, and
    # a kill between the two is repaired on resume from last.pt's weights
    if improved:
        save_best(f, f.state["epoch"], auc)


def repair_best(f) -> None:
    """Killed between last.pt and best.pt of an improving epoch: rewrite best.pt from last.pt when
    best.pt is missing, damaged (CheckpointError) or of another epoch. A best.pt that cannot be read
    (CheckpointReadError) is left as it is, and the error stops the run."""
    if f.state["best_epoch"] != f.state["epoch"] or f.state["epoch"] == 0:
        return
    try:
        best_epoch = load_checkpoint(f.dir / "best.pt").get("epoch")
    except CheckpointError:
        best_epoch = None
    if best_epoch != f.state["epoch"]:
        save_best(f, f.state["epoch"], f.state["best_auc"])


def retire(fold_dir: Path) -> None:
    """A finished fold keeps best.pt and its exports: the epoch checkpoints (and any set-aside .corrupt
    file) and the temporaries of killed writes go."""
    for p in fold_dir.glob("last*.pt*"):
        p.unlink()
    remove_stale_temps(fold_dir)


def predicting_model(cfg, n_meta: int, fold_dir: Path, diagnosis=None, device: torch.device | None = None,
                     cpu_bf16: bool = False, progress: bool = True, calibration: Calibration | None = None,
                     write_export: bool = True) -> tuple[torch.nn.Module, Runtime]:
    """The model that predicts for a trained fold, on its runtime: the experiment's architecture
    (``cfg``, the trained config) with ``fold_dir/best.pt``'s weights. The one way a trained fold
    predicts: its OOF rows (trainer.finish_fold), the submission (infer.py), re-predictions
    (benchmarks/tta_views.py). ``diagnosis``: the classes of the diagnosis head, when it has one.
    ``cpu_bf16`` turns bfloat16 on for CPU inference only. ``infer.backend`` says what runs it
    (backends.for_inference): the module itself, or a Runner over a compiled or exported copy. An
    export is kept beside best.pt (``fold_dir/export-<backend>-<precision>.zip``, written when
    ``write_export``) and reused while it is valid; int8 calibrates on ``calibration``, by default
    the fold's rows drawn from the experiment (calibration.from_experiment).
    A best.pt that cannot be read raises CheckpointReadError, a damaged one CheckpointError; neither
    changes a file."""
    model = build_model(cfg, n_meta, diagnosis, pretrained="none")
    model.load_state_dict(load_checkpoint(fold_dir / "best.pt")["model"])
    t, i = cfg.train, cfg.infer
    rt = make_runtime(model, t.amp, t.cpu_bf16 or cpu_bf16, t.channels_last, device, progress=progress)
    start = time.time()
    if calibration is None and i.precision == "int8":
        calibration = fold_calibration(cfg, int(fold_dir.name.removeprefix("fold")))
    runner = for_inference(place(model, rt), rt, i.backend, i.compile_mode, i.batch_size, n_meta, cfg.model.image_size,
                           i.precision, ExportCache(fold_dir / "best.pt", write_export), calibration)
    if runner is not model:
        print(f"{fold_dir.name}: infer.backend={i.backend} ready in {time.time() - start:.0f}s")
    return runner, rt
