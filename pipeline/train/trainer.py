"""The fold loop: build a fold, run its epochs, finish it; ``train`` runs the folds asked for.

    data = prepare(cfg)                     # pipeline/data/prepare.py: table, images, folds, features
    f = build_fold(cfg, data, k)            # model, loaders, optimizer, schedule of fold k
    row = run_epoch(cfg, f, epoch, stop)    # one epoch: train, sync Lookahead, validate
    oof = finish_fold(cfg, data, f)         # best.pt predicts the fold's validation rows

Around it: the experiment folder (``experiment/run.py``: claim the folds, check and record the run,
assemble oof.csv), the checkpoints (``train/checkpoints.py``: save, rotate, resume, repair), the steps
themselves (``train/loop.py``), torchrun (``train/distributed.py``: every rank runs this loop; rank 0
writes).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.optim import Lookahead, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from pipeline.core.config import Config, TrainConfig
from pipeline.core.errors import ConfigError, Interrupted, PipelineError
from pipeline.core.files import write_csv
from pipeline.data.augment import train_transform
from pipeline.data.dataset import ImageMetaDataset, make_loader
from pipeline.data.prepare import TrainData, aux_head, check_batch_size, eval_loader, prepare, targets
from pipeline.experiment.oof import oof_rows, val_predictions_path, write as write_oof
from pipeline.experiment.run import Run
from pipeline.experiment.tracker import NO_TRACKING, Tracking, check_tracker
from pipeline.model.backends import check_backend, compiled_for_training
from pipeline.model.freeze import check_freeze, describe, set_frozen, stages_at
from pipeline.model.net import build_model, check_backbone, sync_batchnorm
from pipeline.model.pretrained import weights_source
from pipeline.model.runtime import Runtime, make_runtime, place
from pipeline.report.stats import auc
from pipeline.train.calibration import fold_calibration
from pipeline.train.checkpoints import predicting_model, repair_best, resume, retire, save_epoch
from pipeline.train.distributed import SINGLE, Dist
from pipeline.train.loop import predict, train_one_epoch
from pipeline.train.process import StopFlag, peak_rss_mb
from pipeline.train.tracking import open_tracking, summarise


def build_optimizer(model, t: TrainConfig) -> Lookahead:
    """Adam (no weight decay on biases and norm weights) wrapped in Lookahead(k, alpha)."""
    adam = torch.optim.Adam(param_groups_weight_decay(model, t.weight_decay), lr=t.lr)
    return Lookahead(adam, alpha=t.lookahead_alpha, k=t.lookahead_k)


@torch.no_grad()
def sync_slow_weights(optimizer: Lookahead) -> None:
    """Pull every trained parameter to its slow weights, ``slow += alpha * (fast - slow)`` then
    ``fast = slow``, as timm's ``update_slow`` does every k steps, whatever the gradients hold.
    timm's own ``sync_lookahead`` skips parameters whose gradient is None, and the loop clears
    gradients to None after each step, so it would change nothing. A parameter with no slow copy yet
    (fewer than k steps so far) gets one from its fast weights, as timm's first update does; one
    never stepped (no optimizer state: frozen, say) is left alone."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer._base_optimizer.state.get(p)
            if not state:
                continue
            if "lookahead_slow_buff" not in state:
                state["lookahead_slow_buff"] = p.detach().clone()
            slow = state["lookahead_slow_buff"]
            slow.add_(p - slow, alpha=group["lookahead_alpha"])
            p.copy_(slow)


def build_scheduler(optimizer, t: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    total = max(t.epochs * steps_per_epoch - warmup, 1)
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=t.min_lr, warmup_t=warmup,
                             warmup_lr_init=t.lr * 0.01, warmup_prefix=True, t_in_epochs=False)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Every random draw of an epoch (shuffle, augmentation, mixup, dropout) derives from this, so
    a resumed epoch replays exactly what an uninterrupted run would have done."""
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2**31


@dataclass
class Fold:
    """One fold's training, built once: what a checkpoint saves (model, optimizer, scheduler,
    scaler, state) and what the epochs run on. ``net`` is what trains: the model itself, or its
    DistributedDataParallel wrapper under torchrun; ``model`` is what is validated and saved."""
    k: int
    dir: Path
    model: torch.nn.Module
    net: torch.nn.Module
    rt: Runtime
    train_ds: ImageMetaDataset
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader   # this rank's share of the validation rows
    val_idx: np.ndarray                        # all validation rows (data.df positions), in gathered order
    y_val: np.ndarray                          # their targets
    optimizer: Lookahead
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler | None
    state: dict
    ema: ModelEmaV3 | None = None
    validating: torch.nn.Module | None = None  # what validates ``evaluated``: itself, or compiled
    compile_s: float = 0.0                     # seconds train.compile took when this process built the fold

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated and saved as best.pt: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def compile(self, cfg: Config, n_meta: int) -> None:
        """train.compile: the training step and validation compiled (``net``, ``validating``); the
        plain modules stay what is saved and loaded."""
        self.net, self.validating, self.compile_s = compiled_for_training(
            self.model, self.net, self.evaluated, self.rt, cfg.train.compile_mode, self.train_loader.batch_size,
            cfg.infer.batch_size, n_meta, cfg.model.image_size)
        print(f"fold {self.k}: train.compile ({cfg.train.compile_mode}) took {self.compile_s:.0f}s")


def build_fold(cfg: Config, data: TrainData, k: int, dist: Dist = SINGLE) -> Fold:
    """Model (head bias at the fold's base rate), runtime, loaders, optimizer and schedule of fold
    ``k``; the same on every rank (the seed is set first; DDP also broadcasts rank 0's weights)."""
    t = cfg.train
    fold_of = data.df["fold"].to_numpy()
    train_idx, val_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    y = targets(cfg, data)  # with the diagnosis head: (target, class) rows
    binary = y if y.ndim == 1 else y[:, 0]
    diagnosis = data.diagnosis if aux_head(cfg) else None
    torch.manual_seed(epoch_seed(t.seed, k, -1))
    model = build_model(cfg, data.meta.shape[1], diagnosis)
    if t.bias_init:
        model.init_head_bias(float(binary[train_idx].mean()),
                             diagnosis.shares(data.codes[train_idx]) if diagnosis else None)
    if t.sync_bn and dist.world > 1:
        model = sync_batchnorm(model)
    rt = make_runtime(model, t.amp, t.cpu_bf16, t.channels_last, dist.device, progress=dist.main)
    place(model, rt)
    optimizer = build_optimizer(model, t)  # every parameter: the frozen ones train after train.unfreeze_epoch
    set_frozen(model, t.freeze_stages)  # before the EMA copy and DDP (which keeps what trains when built)
    ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True) if t.ema else None
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if rt.device.type == "cuda" else None)
    train_ds = ImageMetaDataset(data.images, data.df["cache_row"].to_numpy()[train_idx], data.meta[train_idx],
                                y[train_idx], train_transform(t.augment, t.aug_scale, t.aug_color),
                                seed=epoch_seed(t.seed, k, 0))
    pin = rt.device.type == "cuda"
    train_loader = make_loader(train_ds, t.batch_size // (dist.world * t.accumulate), True, t.num_workers,
                               pin_memory=pin, global_batch=t.batch_size, rank=dist.rank, world=dist.world)
    share = np.array_split(val_idx, dist.world)[dist.rank]  # unpadded shares: gathered, each row once
    scheduler = build_scheduler(optimizer, t, len(train_idx) // t.batch_size)
    scaler = torch.amp.GradScaler() if rt.amp_dtype == torch.float16 else None
    state = {"epoch": 0, "step": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0}
    f = Fold(k, cfg.exp_dir / f"fold{k}", model, net, rt, train_ds, train_loader,
             eval_loader(cfg, data, share, pin), val_idx, binary[val_idx], optimizer, scheduler, scaler, state, ema)
    f.validating = f.evaluated
    if t.compile:
        f.compile(cfg, data.meta.shape[1])
    return f


def predict_fold(model, loader, rt: Runtime, tta: int, desc: str, dist: Dist) -> np.ndarray:
    """Probabilities for a fold's validation rows, in gathered order: each rank predicts its share
    (``loader``), and the shares are gathered."""
    return np.concatenate(dist.gather(predict(model, loader, rt, tta=tta, desc=desc)))


def run_epoch(cfg: Config, f: Fold, epoch: int, stop, dist: Dist = SINGLE) -> dict:
    """Train one epoch, sync Lookahead's slow weights and validate them; returns the log row."""
    t = cfg.train
    if set_frozen(f.model, stages_at(t, epoch)):  # train.unfreeze_epoch reached, or resumed past it
        print(f"fold {f.k} epoch {epoch + 1}: {describe(f.model)}")
    seed = epoch_seed(t.seed, f.k, epoch)
    torch.manual_seed(seed)
    f.train_loader.generator.manual_seed(seed)
    f.train_ds.set_epoch(epoch)
    start = time.time()
    vote = dist.vote()  # under torchrun every rank stops one step after the first Ctrl-C
    loss, f.state["step"] = train_one_epoch(
        f.net, f.train_loader, f.optimizer, f.scheduler, f.scaler, f.rt, f.state["step"], t.mixup_prob,
        t.mixup_alpha, np.random.default_rng(seed), desc=f"fold {f.k} epoch {epoch + 1}/{t.epochs}",
        should_stop=lambda: vote(stop()), accumulate=t.accumulate,
        after_step=None if f.ema is None else lambda step: f.ema.update(f.model, step=step), aux_weight=t.aux_weight)
    vote.settle()  # the vote in flight ends before the next collective (Ctrl-C is asked below)
    if dist.any(stop()):
        raise Interrupted(f"in fold {f.k} during epoch {epoch + 1} (not saved; it is redone)")
    sync_slow_weights(f.optimizer)  # validate, save and resume the slow weights
    dist.average_buffers(f.model)
    if f.ema is not None:
        dist.average_buffers(f.ema.module)
    train_time = time.time() - start
    loss = float(np.mean(dist.gather(loss)))
    val_auc = auc(f.y_val, predict_fold(f.validating, f.val_loader, f.rt, 1, f"fold {f.k} validate", dist))
    improved = val_auc > f.state["best_auc"]
    if improved:
        f.state.update(best_auc=val_auc, best_epoch=epoch + 1, bad_epochs=0)
    else:
        f.state["bad_epochs"] += 1
    f.state["epoch"] = epoch + 1
    return {"epoch": epoch + 1, "train_loss": round(loss, 6), "val_auc": round(val_auc, 6),
            "lr": f.optimizer.param_groups[0]["lr"], "train_s": round(train_time, 2),
            "val_s": round(time.time() - start - train_time, 2), "best": improved,
            "peak_rss_mb": peak_rss_mb()}


def finish_fold(cfg: Config, data: TrainData, f: Fold, dist: Dist = SINGLE) -> pd.DataFrame:
    """The fold's predicting model (best.pt) predicts its validation rows with TTA: its OOF rows,
    written as val_predictions.csv; the epoch checkpoints go."""
    model, rt = predicting_model(cfg, data.meta.shape[1], f.dir, data.diagnosis if aux_head(cfg) else None,
                                   f.rt.device, progress=dist.main, calibration=fold_calibration(cfg, f.k, data),
                                   write_export=dist.main)
    oof = oof_rows(cfg, data, f.val_idx, predict_fold(model, f.val_loader, rt, cfg.infer.tta,
                                                      f"fold {f.k} OOF", dist))
    if dist.main:
        write_oof(val_predictions_path(f.dir), oof)
        retire(f.dir)
    print(f"fold {f.k}: best val AUC {f.state['best_auc']:.4f} at epoch {f.state['best_epoch']}, "
          f"OOF AUC (TTA x{cfg.infer.tta}) {auc(oof['target'], oof['pred']):.4f}")
    return oof


def run_fold(cfg: Config, data: TrainData, fold: int, stop, dist: Dist = SINGLE,
             track: Tracking = NO_TRACKING) -> pd.DataFrame:
    """Train one fold (resuming when a checkpoint exists); return its OOF rows. Under torchrun every
    rank runs this; rank 0 alone writes."""
    t = cfg.train
    f = build_fold(cfg, data, fold, dist)
    if dist.main:
        f.dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    resume(f)
    if dist.main:
        repair_best(f)
    log_path = f.dir / "log.csv"
    log = pd.read_csv(log_path).iloc[:f.state["epoch"]] if log_path.exists() and f.state["epoch"] else pd.DataFrame()
    first = f.state["epoch"]
    for epoch in range(first, t.epochs):
        if f.state["bad_epochs"] >= t.patience:
            break
        if dist.any(stop()):  # Ctrl-C during validation or saving: stop before starting another epoch
            raise Interrupted(f"in fold {fold} after epoch {epoch} (saved)")
        row = run_epoch(cfg, f, epoch, stop, dist)
        if t.compile:  # the compile time, on the first epoch this process ran of the fold
            row["compile_s"] = round(f.compile_s, 2) if epoch == first else 0.0
        if dist.main:
            log = pd.concat([log, pd.DataFrame([row])], ignore_index=True)
            write_csv(log_path, log)
            save_epoch(f, row["best"], row["val_auc"])
            track.fold(fold)  # log.tracker: the epoch, once saved
        dist.barrier()  # the checkpoint is on disk before any rank goes on (a kill then resumes from it)
        print(f"fold {fold} epoch {epoch + 1}: loss {row['train_loss']:.4f}  val AUC {row['val_auc']:.4f}"
              f"{'  *best*' if row['best'] else ''}  ({row['train_s']:.0f}s train, peak {row['peak_rss_mb']} MB)")
    dist.barrier()
    return finish_fold(cfg, data, f, dist)


def check_run(cfg: Config, dist: Dist) -> list[int]:
    """What can be refused from the config alone: the folds asked for, the backbone, the batch's
    split over processes and accumulation. Returns the folds to train."""
    t = cfg.train
    folds = list(dict.fromkeys(t.folds or range(cfg.folds.n_folds)))
    check_backbone(cfg)
    check_freeze(cfg, dist.world)
    check_backend(cfg.infer.backend, cfg.infer.precision)  # the OOF rows are predicted with it
    check_tracker(cfg)  # log.tracker's package
    if t.sync_bn and dist.world > 1 and dist.device.type != "cuda":
        raise ConfigError("train.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    if t.batch_size % (dist.world * t.accumulate):
        raise ConfigError(f"train.batch_size={t.batch_size} (the global batch) must divide into {dist.world} "
                          f"process(es) x {t.accumulate} accumulation step(s)")
    if t.batch_size // (dist.world * t.accumulate) < 2:  # batch norm fails on one row, mid-epoch
        raise ConfigError(f"train.batch_size={t.batch_size} over {dist.world} process(es) x {t.accumulate} "
                          f"accumulation step(s) leaves micro-batches of 1 row; batch norm needs at least 2: "
                          f"raise train.batch_size to {2 * dist.world * t.accumulate} or lower train.accumulate")
    return folds


def open_run(cfg: Config, folds: list[int], force: bool, dist: Dist) -> tuple[TrainData, Run | None]:
    """Rank 0 claims the folds, prepares the data and opens the experiment; a failure leaves the
    folder as it was, and stops the other ranks with its message. Ranks > 0 then read the data rank
    0 made (the cache, the fold table) and stop in one line when their rows differ from rank 0's."""
    run, failed = None, None
    if dist.main:
        try:
            run = Run.claim(cfg, folds, force)
            data = prepare(cfg)
            check_batch_size(cfg, data, folds)
            run.open(data, force)
        except BaseException as e:
            if run is not None:
                run.release()
            failed = e
    error = dist.broadcast(None if failed is None else f"{type(failed).__name__}: {failed}")
    if failed is not None:
        raise failed
    if error is not None:
        raise PipelineError(f"rank 0 stopped: {error}")
    ids = dist.broadcast(data.df[cfg.data.id_col].tolist() if dist.main else None)
    if not dist.main:
        data = prepare(cfg)
        if data.df[cfg.data.id_col].tolist() != ids:  # an image read again here that rank 0 could not, or back
            raise PipelineError(f"rank {dist.rank} read other training rows than rank 0 ({len(data.df)} against "
                                f"{len(ids)}: an image became readable or unreadable between them); run again")
    return data, run


def train(cfg: Config, force: bool = False, dist: Dist = SINGLE) -> pd.DataFrame:
    """Train the folds in ``train.folds`` (default: all); finished folds are skipped unless
    ``force``. A command that fails before training leaves the experiment folder as it found it.
    Under torchrun (``dist``) every rank trains every fold with DDP; rank 0 alone checks the
    experiment folder, holds the locks and writes. Returns oof.csv's rows so far."""
    folds = check_run(cfg, dist)
    data, run = open_run(cfg, folds, force, dist)
    t = cfg.train
    print(f"global batch {t.batch_size} = {dist.world} process(es) x {t.accumulate} accumulation step(s) x "
          f"{t.batch_size // (dist.world * t.accumulate)} rows; lr {t.lr:g} for the global batch, whatever the "
          f"number of processes")
    print(f"backbone {cfg.model.backbone} starts from {weights_source(cfg.model.backbone, cfg.model.pretrained)}")
    if t.aux_weight > 0 and not cfg.data.diagnosis_col:
        print(f"train.aux_weight={t.aux_weight:g} adds no diagnosis head: data.diagnosis_col is not set (binary model)")
    stop, oof, track = StopFlag(), pd.DataFrame(), NO_TRACKING
    try:
        track = open_tracking(cfg, force, dist)  # rank 0: the tracker run, reopened on resume
        with stop.installed():
            for fold in folds:
                done = val_predictions_path(cfg.exp_dir / f"fold{fold}")
                if dist.broadcast(done.exists()):
                    print(f"fold {fold}: done already ({done}); --force retrains it")
                else:
                    run_fold(cfg, data, fold, stop, dist, track)
                if dist.main:
                    oof = run.fold_done(fold)
        summarise(track, cfg, oof)  # the pooled OOF AUC, oof.csv
    except Interrupted as e:
        again = "without --force" if force else "again"
        print(f"interrupted {e}; run the same command {again} to resume from the last finished epoch",
              file=sys.stderr)
        raise
    finally:
        if run is not None:
            run.release(wrote=True)
        track.close(sys.exc_info()[1])  # finished, killed or failed
    return oof
