"""K-fold training: data -> folds -> meta features -> per-fold training -> OOF table.

Everything is checked before the first file is written (config ranges, the backbone, the folds
asked for, the data, the experiment folder, the fold locks); the experiment folder's layout and
its rules are in ``pipeline/experiment.py``.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from timm.optim import Lookahead, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from . import config as C
from . import distributed as D
from . import experiment as E
from .data import ImageMetaDataset, build_cache, make_loader, train_transform
from .engine import Runtime, make_runtime, place, predict, train_one_epoch
from .errors import DataError, ExperimentError, Interrupted, PipelineError
from .features import MetaTransform, check_numeric
from .folds import fold_table, load_or_make_folds
from .io import CheckpointError, load_checkpoint, remove_stale_temps, save_checkpoint, write_csv, write_json
from .model import build_model, check_backbone
from .tables import data_path, few, load_test, load_train

@dataclass
class TrainData:
    df: pd.DataFrame          # training table, one row per image, with 'fold' and 'cache_row' columns
    images: np.ndarray        # (N, S, S, 3) uint8, memory-mapped cache
    meta: np.ndarray          # (N, F) float32 meta features
    transform: MetaTransform
    digests: list             # content hash of each cached image file, by cache row


def environment(cfg: C.Config) -> dict:
    import albumentations, sklearn, timm  # noqa: E401 - versions only
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                    text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "pandas": pd.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "seed": cfg.train.seed,
            "git_commit": commit, "git_dirty": dirty}


def record_environment(path: Path, env: dict) -> None:
    """Write env.json. A resumed run on another machine, package set or commit keeps the earlier
    environments under 'earlier' (folds trained there may not be bit-identical) and warns."""
    earlier = []
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        old = None
    if isinstance(old, dict):
        earlier = old.pop("earlier", [])
        changed = [k for k in env if old.get(k) != env[k]]
        if changed:
            print(f"warning: the environment changed since {path} was written ({', '.join(changed)}); "
                  f"the earlier one is kept in it", file=sys.stderr)
            earlier.append(old)
    write_json(path, {**env, **({"earlier": earlier} if earlier else {})})


def prepare(cfg: C.Config) -> TrainData:
    """Load and check the training data and its images, make or reuse the folds, fit the meta
    transform: every data problem surfaces here, before any training."""
    d = cfg.data
    # only into a new or empty folder: in a folder of real data a missing table is the user's error below
    if d.generate_sample and not data_path(cfg, d.train_csv).exists() and not any(Path(d.root).glob("*")):
        from .sample import ensure_sample
        print(f"writing the bundled synthetic sample into {d.root}")
        ensure_sample(Path(d.root))
    df = load_train(cfg)
    test = load_test(cfg)[0] if d.test_csv else None  # a broken test table or missing image: reported now
    images, bad, digests = build_cache([Path(p) for p in df["image_path"]], cfg.model.image_size,
                                       Path(d.cache_dir), "train")
    df["cache_row"] = np.arange(len(df))
    if bad:
        listed = few([f"{df[d.id_col][i]} ({why})" for i, why in bad.items()], 3)
        where = Path(df["image_path"][next(iter(bad))]).parent
        if d.on_bad_image == "fail":
            raise DataError(f"{where}: {len(bad)} image(s) cannot be decoded: {listed}; "
                            f"replace them or set data.on_bad_image=skip")
        print(f"warning: skipping {len(bad)} undecodable image(s) in {where}: {listed}", file=sys.stderr)
        df = df.drop(index=list(bad)).reset_index(drop=True)
    folds_path = Path(cfg.folds.path) if cfg.folds.path else data_path(cfg, d.train_csv).with_name(
        f"{Path(d.train_csv).stem}_folds{cfg.folds.n_folds}_seed{cfg.folds.seed}.csv")
    own = ~df["is_external"].to_numpy()  # external rows train every fold and are never validated
    df["fold"] = -1
    df.loc[own, "fold"] = load_or_make_folds(df[own].reset_index(drop=True), folds_path, d.id_col, d.target_col,
                                             d.group_col, cfg.folds.n_folds, cfg.folds.seed)
    table = fold_table(df[own], df["fold"][own].to_numpy(), d.target_col, d.group_col or d.id_col)
    empty = table.index[table["positives"] == 0].tolist()
    if empty:
        raise DataError(f"{folds_path}: fold(s) {empty} have no positive; AUC is undefined (use fewer folds)")
    print(f"folds from {folds_path}:\n{table.to_string()}")
    if not own.all():
        print(f"plus {int((~own).sum())} external training-only rows ({int(df[d.target_col][~own].sum())} positives)")
    fit_df = df
    if cfg.features.fit_on == "train+test":
        fit_df = pd.concat([df, test], ignore_index=True)
    transform = MetaTransform.from_config(cfg).fit(fit_df)
    limit = cfg.features.max_bad_fraction
    check_numeric(transform, df[own], str(data_path(cfg, d.train_csv)), d.id_col, limit)
    if not own.all():
        check_numeric(transform, df[~own], str(data_path(cfg, d.external_csv)), d.id_col, limit)
    if test is not None:
        check_numeric(transform, test, str(data_path(cfg, d.test_csv)), d.id_col, limit)
    return TrainData(df, images, transform.transform(df), transform, digests)


def build_optimizer(model, t: C.TrainConfig) -> Lookahead:
    """Adam (no weight decay on biases and norm weights) wrapped in Lookahead(k, alpha)."""
    adam = torch.optim.Adam(param_groups_weight_decay(model, t.weight_decay), lr=t.lr)
    return Lookahead(adam, alpha=t.lookahead_alpha, k=t.lookahead_k)


def build_scheduler(optimizer, t: C.TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    total = max(t.epochs * steps_per_epoch - warmup, 1)
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=t.min_lr, warmup_t=warmup,
                             warmup_lr_init=t.lr * 0.01, warmup_prefix=True, t_in_epochs=False)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Every random draw of an epoch (shuffle, augmentation, mixup, dropout) derives from this, so
    a resumed epoch replays exactly what an uninterrupted run would have done."""
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2**31


class StopFlag:
    """Ctrl-C sets a flag; the loop stops between steps and the caller says how to resume."""

    def __init__(self):
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    @contextmanager
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


RESUME_KEYS = ("model", "optimizer", "scheduler", "state")


def _load_resume_state(fold_dir: Path) -> tuple[Path, dict] | None:
    """The last epoch checkpoint, falling back to the previous one when the last is damaged (which
    is then set aside as <name>.corrupt, so that the next rotation keeps the good one). None when
    the fold has no checkpoint; CheckpointError when none of them is usable."""
    damaged = []
    for name in ("last.pt", "last.prev.pt"):
        path = fold_dir / name
        if not path.exists():
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

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, saved as best.pt and predict: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


def build_fold(cfg: C.Config, data: TrainData, k: int, dist: D.Dist = D.SINGLE) -> Fold:
    """Model (head bias at the fold's base rate), runtime, loaders, optimizer and schedule of fold
    ``k``; the same on every rank (the seed is set first; DDP also broadcasts rank 0's weights)."""
    t = cfg.train
    fold_of = data.df["fold"].to_numpy()
    train_idx, val_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    y = data.df[cfg.data.target_col].to_numpy().astype(np.float32)
    torch.manual_seed(epoch_seed(t.seed, k, -1))
    model = build_model(cfg, data.meta.shape[1])
    if t.bias_init:
        model.init_head_bias(float(y[train_idx].mean()))
    if t.sync_bn and dist.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    rt = make_runtime(model, t.amp, t.cpu_bf16, t.channels_last, dist.device, progress=dist.main)
    place(model, rt)
    ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True) if t.ema else None
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if rt.device.type == "cuda" else None)

    rows = data.df["cache_row"].to_numpy()
    mine = np.array_split(val_idx, dist.world)[dist.rank]  # unpadded shares: gathered, each row once
    train_ds = ImageMetaDataset(data.images, rows[train_idx], data.meta[train_idx], y[train_idx],
                                train_transform(t.augment, t.aug_scale, t.aug_color), seed=epoch_seed(t.seed, k, 0))
    val_ds = ImageMetaDataset(data.images, rows[mine], data.meta[mine], y[mine])
    pin = rt.device.type == "cuda"
    micro = t.batch_size // (dist.world * t.accumulate)
    train_loader = make_loader(train_ds, micro, True, t.num_workers, pin_memory=pin, global_batch=t.batch_size,
                               rank=dist.rank, world=dist.world)
    val_loader = make_loader(val_ds, cfg.infer.batch_size, False, t.num_workers, pin_memory=pin)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, len(train_idx) // t.batch_size)
    scaler = torch.amp.GradScaler() if rt.amp_dtype == torch.float16 else None
    state = {"epoch": 0, "step": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0}
    return Fold(k, cfg.exp_dir / f"fold{k}", model, net, rt, train_ds, train_loader, val_loader, val_idx,
                y[val_idx], optimizer, scheduler, scaler, state, ema)


def resume(f: Fold) -> None:
    """Continue from the fold's last epoch checkpoint, when there is one (every rank loads it)."""
    found = _load_resume_state(f.dir)
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


def predict_fold(f: Fold, tta: int, desc: str, dist: D.Dist) -> np.ndarray:
    """Probabilities for every validation row of the fold, in ``val_idx`` order: each rank predicts
    its share, and the shares are gathered."""
    return np.concatenate(dist.gather(predict(f.evaluated, f.val_loader, f.rt, tta=tta, desc=desc)))


def save_best(f: Fold, epoch: int, auc: float) -> None:
    save_checkpoint(f.dir / "best.pt", {"model": f.evaluated.state_dict(), "epoch": epoch, "auc": auc})


def save_epoch(f: Fold, improved: bool, auc: float) -> None:
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


def repair_best(f: Fold) -> None:
    """Killed between last.pt and best.pt of an improving epoch: rewrite best.pt from last.pt."""
    if f.state["best_epoch"] != f.state["epoch"] or f.state["epoch"] == 0:
        return
    try:
        best_epoch = load_checkpoint(f.dir / "best.pt").get("epoch")
    except CheckpointError:
        best_epoch = None
    if best_epoch != f.state["epoch"]:
        save_best(f, f.state["epoch"], f.state["best_auc"])


def run_epoch(cfg: C.Config, f: Fold, epoch: int, stop, dist: D.Dist = D.SINGLE) -> dict:
    """Train one epoch, sync Lookahead's slow weights and validate them; returns the log row."""
    t = cfg.train
    seed = epoch_seed(t.seed, f.k, epoch)
    torch.manual_seed(seed)
    f.train_loader.generator.manual_seed(seed)
    f.train_ds.set_epoch(epoch)
    start = time.time()
    loss, f.state["step"] = train_one_epoch(
        f.net, f.train_loader, f.optimizer, f.scheduler, f.scaler, f.rt, f.state["step"], t.mixup_prob,
        t.mixup_alpha, np.random.default_rng(seed), desc=f"fold {f.k} epoch {epoch + 1}/{t.epochs}",
        should_stop=lambda: dist.any(stop()), accumulate=t.accumulate,
        after_step=None if f.ema is None else lambda step: f.ema.update(f.model, step=step))
    if dist.any(stop()):
        raise Interrupted(f"in fold {f.k} during epoch {epoch + 1} (not saved; it is redone)")
    f.optimizer.sync_lookahead()  # evaluate and save the slow weights
    dist.average_buffers(f.model)
    if f.ema is not None:
        dist.average_buffers(f.ema.module)
    train_time = time.time() - start
    loss = float(np.mean(dist.gather(loss)))
    auc = float(roc_auc_score(f.y_val, predict_fold(f, 1, f"fold {f.k} validate", dist)))
    improved = auc > f.state["best_auc"]
    if improved:
        f.state.update(best_auc=auc, best_epoch=epoch + 1, bad_epochs=0)
    else:
        f.state["bad_epochs"] += 1
    f.state["epoch"] = epoch + 1
    return {"epoch": epoch + 1, "train_loss": round(loss, 6), "val_auc": round(auc, 6),
            "lr": f.optimizer.param_groups[0]["lr"], "train_s": round(train_time, 2),
            "val_s": round(time.time() - start - train_time, 2), "best": improved,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux: kilobytes in ru_maxrss)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def oof_rows(cfg: C.Config, data: TrainData, rows: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """OOF table rows: id, group (when configured), fold, target, pred."""
    d = cfg.data
    keep = [d.id_col] + ([d.group_col] if d.group_col else []) + ["fold", d.target_col]
    return data.df.iloc[rows][keep].rename(columns={d.target_col: "target"}).assign(pred=pred)


def finish_fold(cfg: C.Config, data: TrainData, f: Fold, dist: D.Dist) -> pd.DataFrame:
    """The best epoch's weights predict the fold's validation rows with TTA: its OOF rows."""
    f.evaluated.load_state_dict(load_checkpoint(f.dir / "best.pt")["model"])  # the EMA's, with train.ema
    oof = oof_rows(cfg, data, f.val_idx, predict_fold(f, cfg.infer.tta, f"fold {f.k} OOF", dist))
    if dist.main:
        write_csv(f.dir / "val_predictions.csv", oof)
        for p in f.dir.glob("last*.pt*"):  # last.pt, last.prev.pt and any set-aside .corrupt file
            p.unlink()
        remove_stale_temps(f.dir)
    print(f"fold {f.k}: best val AUC {f.state['best_auc']:.4f} at epoch {f.state['best_epoch']}, "
          f"OOF AUC (TTA x{cfg.infer.tta}) {roc_auc_score(oof['target'], oof['pred']):.4f}")
    return oof


def run_fold(cfg: C.Config, data: TrainData, fold: int, stop, dist: D.Dist = D.SINGLE) -> pd.DataFrame:
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
    for epoch in range(f.state["epoch"], t.epochs):
        if f.state["bad_epochs"] >= t.patience:
            break
        if dist.any(stop()):  # Ctrl-C during validation or saving: stop before starting another epoch
            raise Interrupted(f"in fold {fold} after epoch {epoch} (saved)")
        row = run_epoch(cfg, f, epoch, stop, dist)
        if dist.main:
            log = pd.concat([log, pd.DataFrame([row])], ignore_index=True)
            write_csv(log_path, log)
            save_epoch(f, row["best"], row["val_auc"])
        dist.barrier()  # the checkpoint is on disk before any rank goes on (a kill then resumes from it)
        print(f"fold {fold} epoch {epoch + 1}: loss {row['train_loss']:.4f}  val AUC {row['val_auc']:.4f}"
              f"{'  *best*' if row['best'] else ''}  ({row['train_s']:.0f}s train, peak {row['peak_rss_mb']} MB)")
    dist.barrier()
    return finish_fold(cfg, data, f, dist)


def check_batch_size(cfg: C.Config, data: TrainData, folds: list[int]) -> None:
    """The training loader drops the last incomplete batch: a batch larger than a fold's training
    rows would train nothing and report AUC 0.5."""
    for k in folds:
        n = int((data.df["fold"] != k).sum())
        if n < cfg.train.batch_size:
            raise C.ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the {n} training rows of "
                                f"fold {k}: no step would train; use a smaller batch")


def resolve_folds(cfg: C.Config, folds: list[int] | None) -> list[int]:
    folds = list(dict.fromkeys(folds if folds else (cfg.train.folds or range(cfg.folds.n_folds))))
    bad = [f for f in folds if not 0 <= f < cfg.folds.n_folds]
    if bad:
        raise C.ConfigError(f"fold(s) {bad} out of range 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})")
    return folds


def assemble_oof(exp: Path, cfg: C.Config, record: pd.DataFrame) -> pd.DataFrame:
    """<exp>/oof.csv from the finished folds (several processes may finish folds of one experiment)."""
    with E.experiment_lock(exp).acquire_wait():
        oof = E.collect_oof(exp, (cfg.data.id_col, cfg.data.group_col), record)
        if oof.empty:
            (exp / "oof.csv").unlink(missing_ok=True)
        else:
            write_csv(exp / "oof.csv", oof)
    return oof


def open_experiment(cfg: C.Config, data: TrainData, folds: list[int], force: bool, held: set[str]) -> pd.DataFrame:
    """Check this run against the experiment folder (config, data, fold table, fitted features) and
    write its description where it is new; with ``force``, first delete what this run replaces.
    Runs under the experiment lock: another process may be opening the same experiment."""
    exp = cfg.exp_dir
    record = E.training_record(data.df, cfg, data.digests)
    features = data.transform.to_dict()
    with E.experiment_lock(exp).acquire_wait():
        changed = E.check_config(cfg, force)  # again: another process may have started it meanwhile
        changes = [f"config: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"] if changed else []
        changes = changes or E.data_changes(exp, record, features)
        if changes and not force:
            raise E.changed_data_error(exp, changes)
        if changes:  # nobody may be training any fold of what is deleted
            others = [E.fold_lock(exp, k).acquire() for k in range(cfg.folds.n_folds) if k not in folds]
            try:
                E.delete_results(exp, held | {o.path.name for o in others} | {"experiment.lock"},
                                 f"results of other {'data' if not changed else 'settings'}: {'; '.join(changes)}")
            finally:
                for o in others:
                    o.release()
        elif force:
            for k in folds:
                E.delete_fold(exp, k)
        if (exp / "config.yaml").is_file() and not (exp / "data.csv").is_file():
            print(f"warning: {exp} has no record of its training data (an earlier version trained it); "
                  f"recording the data of this run", file=sys.stderr)
        E.write_record(exp, cfg, record, features)
        record_environment(exp / "env.json", environment(cfg))
    return record


def claim(cfg: C.Config, folds: list[int], force: bool) -> tuple[list, Path | None]:
    """Before the data is read: the experiment folder is one of ours (or new), and no other process
    trains any of ``folds`` (their locks are taken, at once or never). Returns the locks and the
    topmost folder created for them (removed again if the run fails before writing anything)."""
    exp = cfg.exp_dir
    E.check_config(cfg, force)  # read-only: a wrong name or another config fails at once
    created = next((p for p in [*reversed(exp.parents), exp] if not p.exists()), None)
    try:
        exp.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # output_dir is a file, read-only, ...
        raise ExperimentError(f"{exp}: cannot create the experiment folder ({e.strerror})") from None
    locks = []
    try:
        for k in folds:
            locks.append(E.fold_lock(exp, k).acquire())
    except BaseException:
        release(locks, created, exp)
        raise
    return locks, created


def release(locks: list, created: Path | None, exp: Path, wrote: bool = False) -> None:
    """Release the fold locks; a run that wrote nothing removes the folders it created (if empty:
    another process may have started the experiment meanwhile)."""
    for lock in locks:
        lock.release()
    if wrote or created is None:
        return
    for folder in [exp, *exp.parents]:
        try:
            folder.rmdir()
        except OSError:
            break
        if folder == created:
            break


def train(cfg: C.Config, folds: list[int] | None = None, force: bool = False,
          dist: D.Dist = D.SINGLE) -> pd.DataFrame:
    """Train the requested folds (default: all); finished folds are skipped unless ``force``.
    A command that fails before training leaves the experiment folder as it found it. Under
    torchrun (``dist``) every rank trains every fold with DDP; rank 0 alone checks the experiment
    folder, holds the locks and writes."""
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    folds = resolve_folds(cfg, folds)
    check_backbone(cfg)
    t = cfg.train
    if t.sync_bn and dist.world > 1 and dist.device.type != "cuda":
        raise C.ConfigError("train.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    if t.batch_size % (dist.world * t.accumulate):
        raise C.ConfigError(f"train.batch_size={t.batch_size} (the global batch) must divide into {dist.world} "
                            f"process(es) x {t.accumulate} accumulation step(s)")
    exp = cfg.exp_dir
    locks, created, record, failed = [], None, None, None
    if dist.main:  # ranks > 0 wait for rank 0's checks, and stop with its error
        try:
            locks, created = claim(cfg, folds, force)
            data = prepare(cfg)
            check_batch_size(cfg, data, folds)
            record = open_experiment(cfg, data, folds, force, {lock.path.name for lock in locks})
            if force:
                assemble_oof(exp, cfg, record)
        except BaseException as e:
            release(locks, created, exp)
            failed = e
    error = dist.broadcast(None if failed is None else f"{type(failed).__name__}: {failed}")
    if failed is not None:
        raise failed
    if error is not None:
        raise PipelineError(f"rank 0 stopped: {error}")
    if not dist.main:
        data = prepare(cfg)  # rank 0 made the cache and the fold table: read here
    print(f"global batch {t.batch_size} = {dist.world} process(es) x {t.accumulate} accumulation step(s) x "
          f"{t.batch_size // (dist.world * t.accumulate)} rows; lr {t.lr:g} for the global batch, whatever the "
          f"number of processes")
    stop, oof = StopFlag(), pd.DataFrame()
    try:
        with stop.installed():
            for fold, lock in itertools.zip_longest(folds, locks):
                done = E.fold_predictions(exp / f"fold{fold}")
                if dist.broadcast(done.exists()):
                    print(f"fold {fold}: done already ({done}); --force retrains it")
                else:
                    run_fold(cfg, data, fold, stop, dist)
                if dist.main:
                    lock.release()
                    oof = assemble_oof(exp, cfg, record)
    except Interrupted as e:
        again = "without --force" if force else "again"
        print(f"interrupted {e}; run the same command {again} to resume from the last finished epoch",
              file=sys.stderr)
        raise
    finally:
        release(locks, None, exp, wrote=True)
    return oof
