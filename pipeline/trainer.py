"""K-fold training: data -> folds -> meta features -> per-fold training -> OOF table.

Layout of an experiment folder (``<output_dir>/<name>/``)::

    config.yaml      the resolved config (compared on resume)
    env.json         package versions, device, seed, git commit
    features.json    the fitted meta-feature transform
    fold<k>/         best.pt, last.pt (while training), log.csv, oof.csv (written when the fold is done)
    oof.csv          image id, group, fold, target, pred for every finished fold
"""
from __future__ import annotations

import platform
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
import yaml
from sklearn.metrics import roc_auc_score
from timm.optim import Lookahead, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from . import config as C
from .data import ImageMetaDataset, build_cache, make_loader, train_transform
from .engine import make_runtime, predict, train_one_epoch
from .features import MetaTransform
from .folds import fold_table, load_or_make_folds
from .io import CheckpointError, load_checkpoint, save_checkpoint, write_csv, write_json, write_text
from .model import build_model
from .tables import DataError, data_path, load_test, load_train

# Keys that change how a run is executed, not its results: they may differ on resume.
RUN_ONLY_KEYS = {"name", "output_dir", "train.folds", "train.num_workers", "data.cache_dir", "infer"}


class ExperimentError(RuntimeError):
    """The experiment folder holds results of a different configuration."""


@dataclass
class TrainData:
    df: pd.DataFrame          # training table, one row per image, with a 'fold' column
    images: np.ndarray        # (N, S, S, 3) uint8, memory-mapped cache
    meta: np.ndarray          # (N, F) float32 meta features
    transform: MetaTransform


def _result_keys(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = prefix + k
        if key in RUN_ONLY_KEYS:
            continue
        out.update(_result_keys(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_experiment(cfg: C.Config, force: bool) -> None:
    """Refuse to mix results of a different configuration into an existing experiment folder."""
    saved_path = cfg.exp_dir / "config.yaml"
    if force or not saved_path.is_file():
        return
    saved = _result_keys(C.to_dict(C.from_dict(yaml.safe_load(saved_path.read_text()))))
    now = _result_keys(C.to_dict(cfg))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        raise ExperimentError(f"{saved_path} holds a different experiment ({shown}); use a new name "
                              f"(name=...) or --force to overwrite it")


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
            "platform": platform.platform(), "seed": cfg.train.seed, "git_commit": commit, "git_dirty": dirty}


def prepare(cfg: C.Config) -> tuple[TrainData, list[Path]]:
    """Load and check the training data, make or reuse the folds, fit the meta transform."""
    d = cfg.data
    if d.generate_sample and not data_path(cfg, d.train_csv).exists():
        from .sample import ensure_sample
        print(f"writing the bundled synthetic sample into {d.root}")
        ensure_sample(Path(d.root))
    df, paths = load_train(cfg)
    folds_path = Path(cfg.folds.path) if cfg.folds.path else \
        data_path(cfg, d.train_csv).with_name(f"{Path(d.train_csv).stem}_folds{cfg.folds.n_folds}_seed{cfg.folds.seed}.csv")
    df["fold"] = load_or_make_folds(df, folds_path, d.id_col, d.target_col, d.group_col,
                                    cfg.folds.n_folds, cfg.folds.seed)
    table = fold_table(df, df["fold"].to_numpy(), d.target_col, d.group_col)
    empty = table.index[table["positives"] == 0].tolist()
    if empty:
        raise DataError(f"{folds_path}: fold(s) {empty} have no positive; AUC is undefined (use fewer folds)")
    print(f"folds from {folds_path}:\n{table.to_string()}")
    fit_df = df
    if cfg.features.fit_on == "train+test":
        fit_df = pd.concat([df, load_test(cfg)[0]], ignore_index=True)
    transform = MetaTransform(cfg.features.categorical, cfg.features.numeric, cfg.features.n_images,
                              d.group_col).fit(fit_df)
    images = build_cache(paths, cfg.model.image_size, Path(d.cache_dir), desc="train")
    return TrainData(df, images, transform.transform(df), transform), paths


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
        def handler(signum, frame):
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


class Interrupted(Exception):
    pass


def _load_resume_state(fold_dir: Path) -> dict | None:
    """The last epoch checkpoint, falling back to the previous one when the last is damaged."""
    for name in ("last.pt", "last.prev.pt"):
        path = fold_dir / name
        if path.exists():
            try:
                return load_checkpoint(path)
            except CheckpointError as e:
                print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
    return None


def run_fold(cfg: C.Config, data: TrainData, fold: int, stop: StopFlag) -> pd.DataFrame:
    """Train one fold (resuming when a checkpoint exists); return its OOF rows."""
    t, d = cfg.train, cfg.data
    fold_dir = cfg.exp_dir / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    train_idx = np.flatnonzero(data.df["fold"].to_numpy() != fold)
    val_idx = np.flatnonzero(data.df["fold"].to_numpy() == fold)
    y = data.df[d.target_col].to_numpy().astype(np.float32)

    torch.manual_seed(epoch_seed(t.seed, fold, -1))
    model = build_model(cfg, data.meta.shape[1])
    if t.bias_init:
        model.init_head_bias(float(y[train_idx].mean()))
    rt = make_runtime(model, t.amp, t.cpu_bf16, t.channels_last)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)

    train_ds = ImageMetaDataset(data.images, train_idx, data.meta[train_idx], y[train_idx],
                                train_transform(t.aug_scale, t.aug_color), seed=epoch_seed(t.seed, fold, 0))
    val_ds = ImageMetaDataset(data.images, val_idx, data.meta[val_idx], y[val_idx])
    pin = rt.device.type == "cuda"
    train_loader = make_loader(train_ds, t.batch_size, True, t.num_workers, pin_memory=pin, drop_last=True)
    val_loader = make_loader(val_ds, cfg.infer.batch_size, False, t.num_workers, pin_memory=pin)
    steps_per_epoch = len(train_loader)

    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch)
    scaler = torch.amp.GradScaler() if rt.amp_dtype == torch.float16 else None
    state = {"epoch": 0, "step": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0}
    resume = _load_resume_state(fold_dir)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        state = dict(resume["state"])
        print(f"fold {fold}: resuming after epoch {state['epoch']} (best AUC {state['best_auc']:.4f})")

    log_path = fold_dir / "log.csv"
    log = pd.read_csv(log_path).iloc[:state["epoch"]] if log_path.exists() and state["epoch"] else pd.DataFrame()
    for epoch in range(state["epoch"], t.epochs):
        if state["bad_epochs"] >= t.patience:
            break
        seed = epoch_seed(t.seed, fold, epoch)
        torch.manual_seed(seed)
        train_loader.generator.manual_seed(seed)
        train_ds.set_epoch(epoch)
        start = time.time()
        loss, state["step"] = train_one_epoch(
            model, train_loader, optimizer, scheduler, scaler, rt, state["step"], t.mixup_prob, t.mixup_alpha,
            np.random.default_rng(seed), desc=f"fold {fold} epoch {epoch + 1}/{t.epochs}", should_stop=stop)
        if stop():
            raise Interrupted(f"fold {fold} epoch {epoch + 1}")
        optimizer.sync_lookahead()  # evaluate and save the slow weights
        train_time = time.time() - start
        pred = predict(model, val_loader, rt, tta=1, desc=f"fold {fold} validate")
        auc = float(roc_auc_score(y[val_idx], pred))
        improved = auc > state["best_auc"]
        if improved:
            state.update(best_auc=auc, best_epoch=epoch + 1, bad_epochs=0)
            save_checkpoint(fold_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1, "auc": auc})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        row = {"epoch": epoch + 1, "train_loss": round(loss, 6), "val_auc": round(auc, 6),
               "lr": optimizer.param_groups[0]["lr"], "train_s": round(train_time, 2),
               "val_s": round(time.time() - start - train_time, 2), "best": improved}
        log = pd.concat([log, pd.DataFrame([row])], ignore_index=True)
        write_csv(log_path, log)
        last = fold_dir / "last.pt"
        if last.exists():
            last.replace(fold_dir / "last.prev.pt")
        save_checkpoint(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "state": state,
                               **({"scaler": scaler.state_dict()} if scaler is not None else {})})
        print(f"fold {fold} epoch {epoch + 1}: loss {loss:.4f}  val AUC {auc:.4f}"
              f"{'  *best*' if improved else ''}  ({train_time:.0f}s train)")

    model.load_state_dict(load_checkpoint(fold_dir / "best.pt")["model"])
    pred = predict(model, val_loader, rt, tta=cfg.infer.tta, desc=f"fold {fold} OOF")
    oof = data.df.iloc[val_idx][[d.id_col, d.group_col, "fold", d.target_col]].copy()
    oof.columns = [d.id_col, d.group_col, "fold", "target"]
    oof["pred"] = pred
    write_csv(fold_dir / "oof.csv", oof)
    for name in ("last.pt", "last.prev.pt"):
        (fold_dir / name).unlink(missing_ok=True)
    print(f"fold {fold}: best val AUC {state['best_auc']:.4f} at epoch {state['best_epoch']}, "
          f"OOF AUC (TTA x{cfg.infer.tta}) {roc_auc_score(oof['target'], pred):.4f}")
    return oof


def collect_oof(exp_dir: Path) -> pd.DataFrame:
    parts = [pd.read_csv(p) for p in sorted(exp_dir.glob("fold*/oof.csv"))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def train(cfg: C.Config, folds: list[int] | None = None, force: bool = False) -> pd.DataFrame:
    """Train the requested folds (default: all); finished folds are skipped unless ``force``."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    check_experiment(cfg, force)
    data, _ = prepare(cfg)
    exp = cfg.exp_dir
    exp.mkdir(parents=True, exist_ok=True)
    write_text(exp / "config.yaml", C.to_yaml(cfg))
    write_json(exp / "env.json", environment(cfg))
    write_json(exp / "features.json", data.transform.to_dict())
    folds = folds if folds else (cfg.train.folds or list(range(cfg.folds.n_folds)))
    bad = [f for f in folds if not 0 <= f < cfg.folds.n_folds]
    if bad:
        raise C.ConfigError(f"fold(s) {bad} out of range 0..{cfg.folds.n_folds - 1}")
    stop = StopFlag()
    with stop.installed():
        for fold in folds:
            fold_dir = exp / f"fold{fold}"
            if force:
                for p in fold_dir.glob("*"):
                    p.unlink()
            if (fold_dir / "oof.csv").exists():
                print(f"fold {fold}: done already ({fold_dir / 'oof.csv'}); --force retrains it")
                continue
            try:
                run_fold(cfg, data, fold, stop)
            except Interrupted as e:
                print(f"interrupted in {e}; run the same command again to resume from the last finished epoch",
                      file=sys.stderr)
                raise
            write_csv(exp / "oof.csv", collect_oof(exp))
    return collect_oof(exp)
