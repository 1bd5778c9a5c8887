"""Throughput: the pipeline's training and TTA inference against the model's own raw step.

Run from the repository root (a few minutes on a 2-core CPU at the defaults)::

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --source generated --images 256 --workers 1
    .venv/bin/python benchmarks/throughput.py --set train.cpu_bf16=true --threads 2

What it measures, in one process:

1. raw training step: random tensors already in memory, the same model, size, batch, precision and
   Lookahead(Adam) as the pipeline; forward + backward + optimizer step. A short probe alternating
   contiguous and channels_last finds the faster format, which is the one measured against the
   pipeline;
2. the pipeline's training: a fold built by ``trainer.build_fold`` and trained by
   ``trainer.run_epoch``, the very steps train.py runs (loader, augmentation, mixup, step, Lookahead
   sync, validation), over full epochs with the image cache warm; the first epoch is a warm-up, the
   rest are timed; validation (tta=1) is timed separately. The figure train.py's own log.csv would
   show for the same epochs (images / train_s) is printed beside it;
3. raw forward (inference_mode, batches of infer.batch_size: loop.predict runs one view of a batch
   per forward) and the pipeline's loop.predict
   with TTA, counting every view;
4. peak resident memory of this process (ru_maxrss; loader workers are reported apart).

Raw and pipeline alternate step by step (each pipeline step or inference batch is followed by a raw
step in the faster format; the pipeline's time excludes it), so that load from other processes hits
both alike. When the faster format is the pipeline's, the raw step runs on the pipeline's own model
and optimizer, as it would be in training: stepping a second model in between costs both sides, as
each step starts with the other model's memory in the caches and the allocator.
An epoch is 1,600 images by default (50 steps), the size of a real one: a training fold of ISIC 2017.
Per-epoch costs (the first step after validation allocates its memory afresh) weigh more in shorter
epochs than real training has.
The ratios use total images over total time; the ratio of per-step medians is printed beside them as
a noise check.

Images: ``--source isic2017`` (../shared/data/isic2017/images, real 256x256 JPEGs; the default when
present) or ``--source generated`` (synthetic 512x512 JPEGs from pipeline.data.sample.render_image,
written to a temporary folder). The last line is machine-readable::

    train_ratio=<pipeline/raw> infer_ratio=<pipeline/raw> ... peak_rss_mb=<MiB>

with, from benchmarks/paths.py: ``compiled_train_x=`` and ``freeze_train_x=`` (the compiled epoch, and
the epoch with ``--freeze-stages`` frozen, over the full eager raw step beside it), ``fastest_infer_x=``
(the fastest backend within 1e-4 of eager: fp32, the per-view work inside the exported graph) and
``int8_infer_x=`` (OpenVINO int8, over the eager raw forward beside it; nan where the pipeline falls
back to fp32 because int8 runs slower).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.train.process import tune_process  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.data.cache import build_cache  # noqa: E402
from pipeline.model.runtime import forward, one_thread, to_input
from pipeline.train.loop import predict, tta_views  # noqa: E402
from pipeline.model.mixup import mixup, mixup_loss  # noqa: E402
from pipeline.data.prepare import TrainData  # noqa: E402
from pipeline.train.trainer import build_fold, build_optimizer, run_epoch  # noqa: E402

import paths  # noqa: E402  (benchmarks/paths.py)

ISIC2017 = ROOT.parent / "shared" / "data" / "isic2017"
N_META = 8  # width of the (random) meta vector; the meta MLP is tiny either way


def source_images(source: str, n: int, tmp: Path) -> list[Path]:
    if source == "isic2017":
        paths = sorted((ISIC2017 / "images").glob("*.jpg"))
        if len(paths) < n:
            sys.exit(f"error: {ISIC2017 / 'images'} has {len(paths)} images, fewer than the {n} asked for")
        return paths[:n]
    # Synthetic dermoscopy-like 512 px JPEGs: a few distinct renders written under n names (decoding
    # cost is what matters, and rendering at 512 px is slow).
    from pipeline.data.sample import render_image
    rng = np.random.default_rng(0)
    renders = [render_image(rng, 512, rng.normal(), rng.random()) for _ in range(min(n, 24))]
    folder = tmp / "images"
    folder.mkdir()
    paths = [folder / f"IMG_{i:05d}.jpg" for i in range(n)]
    for i, p in enumerate(paths):
        Image.fromarray(renders[i % len(renders)]).save(p, quality=90)
    return paths


class Interleaved:
    """Wraps a loader: the pipeline iterates it as usual, and after each batch it has used,
    ``between()`` runs raw steps. The pipeline's time is the wall time of its pass minus the time
    spent in ``between``, so raw and pipeline alternate step by step and share the same noise."""

    def __init__(self, loader, between):
        self.loader, self.between = loader, between
        self.between_s, self.steps, self.fetch = 0.0, [], []  # per batch: fetch + work on it; fetch alone

    def __len__(self):
        return len(self.loader)

    @property
    def generator(self):  # trainer.run_epoch seeds the loader's shuffle through it
        return self.loader.generator

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.fetch.append(time.perf_counter() - start)
            yield batch
            back = time.perf_counter()
            self.steps.append(back - start)
            self.between()
            self.between_s += time.perf_counter() - back


class Tally:
    """Images and seconds summed over timed blocks, plus per-step (or per-batch) times."""

    def __init__(self):
        self.images, self.seconds, self.steps = 0, 0.0, []

    def add(self, images: int, seconds: float, steps: list[float]):
        self.images += images
        self.seconds += seconds
        self.steps += steps

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def median_rate(self, per_step: int) -> float:
        return per_step / statistics.median(self.steps) if self.steps else float("nan")


def raw_train_step(r: dict, meta, y) -> float:
    model, opt = r["model"], r["opt"]
    model.train()
    start = time.perf_counter()
    loss = mixup_loss(forward(model, r["x"], meta, r["rt"]), y, y, 1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


@torch.inference_mode()
def raw_forward(r: dict, meta) -> float:
    r["model"].eval()
    start = time.perf_counter()
    torch.sigmoid(forward(r["model"], r["xi"], meta, r["rt"]))
    return time.perf_counter() - start


def ab_ms(fa, fb, repeats: int = 15) -> tuple[float, float]:
    """Median milliseconds of two functions, run alternately so that both see the same load."""
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((fa, fb), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def workers_peak_rss_mb() -> list[float]:
    """Peak resident memory (VmHWM) of this process's children: the loader workers."""
    out = []
    for task in Path("/proc/self/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                hwm = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmHWM")]
            except OSError:
                continue
            out += [int(hwm[0].split()[1]) / 1024] if hwm else []
    return out


def parse_args(argv) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=1600, help="training images (one epoch)")
    p.add_argument("--val-images", type=int, default=None, help="validation/inference images, whole batches "
                   "of infer.batch_size (default: 2 batches)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs; the first is a warm-up")
    p.add_argument("--infer-rounds", type=int, default=9, help="TTA inference passes, alternating with the raw "
                   "forward; the first is a warm-up")
    p.add_argument("--tta", type=int, default=4)
    p.add_argument("--probe-steps", type=int, default=6, help="raw steps per memory format to find the faster")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: train.num_workers)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--source", choices=["auto", "isic2017", "generated"], default="auto")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--no-compiled-train", action="store_true", help="skip the compiled training epoch")
    p.add_argument("--backends", type=lambda v: [x for x in v.split(",") if x], default=list(paths.BACKENDS),
                   help="infer.backend values to measure, comma-separated ('' = none)")
    p.add_argument("--backend-rounds", type=int, default=5, help="TTA rounds per backend; the first is a warm-up")
    p.add_argument("--compile-mode", default="default", help="inductor mode of the compiled paths")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip OpenVINO int8 inference")
    p.add_argument("--freeze-stages", type=int, default=3, help="train.freeze_stages of the frozen training "
                   "epoch (0: skip it)")
    args = p.parse_args(argv)
    if args.epochs < 2 or args.infer_rounds < 2:
        p.error("--epochs and --infer-rounds must be at least 2 (the first one is a warm-up)")
    return p, args


@dataclasses.dataclass
class Bench:
    """What the steps share: the arguments, the config, the fold the pipeline trains and the raw
    twins (one per memory format: model, optimizer, inputs, runtime and tallies)."""
    args: argparse.Namespace
    cfg: object
    source: str
    n_train: int
    n_val: int
    infer_bs: int
    paths: list = None
    cold_cache_s: float = 0.0
    fold: object = None
    raw: dict = None
    raw_meta: torch.Tensor = None   # inputs of the raw step (batch_size rows) and forward (infer_bs rows)
    raw_y: torch.Tensor = None
    raw_meta_i: torch.Tensor = None
    data: object = None             # the pipeline's TrainData (the compiled fold is built on it too)
    n_meta: int = N_META


def configure(p: argparse.ArgumentParser, args: argparse.Namespace) -> Bench:
    """The config the pipeline runs with, and whole batches of training and validation images."""
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.source if args.source != "auto" else ("isic2017" if (ISIC2017 / "images").is_dir() else "generated")
    overrides = [f"model.backbone={args.backbone}", f"model.image_size={args.image_size}",
                 f"train.batch_size={args.batch_size}", f"infer.tta={args.tta}", f"train.epochs={args.epochs + 1}",
                 *args.set]
    if args.workers is not None:
        overrides.append(f"train.num_workers={args.workers}")
    cfg = load_config(None, overrides)
    # Whole inference batches only, so that each one matches the raw forward's batch.
    infer_bs = min(cfg.infer.batch_size, args.val_images or cfg.infer.batch_size)
    n_val = (args.val_images or 2 * infer_bs) // infer_bs * infer_bs
    cfg.infer.batch_size = infer_bs  # the fold's validation loader, batch for batch the raw forward's
    n_train = args.images - args.images % cfg.train.batch_size
    if n_train < cfg.train.batch_size:
        p.error("--images must be at least --batch-size")
    return Bench(args, cfg, source, n_train, n_val, infer_bs)


def setup(b: Bench, tmp: Path, rng: np.random.Generator) -> None:
    """The image cache (timed cold, then memory-mapped warm), the pipeline's fold and the raw twins."""
    t, size = b.cfg.train, b.cfg.model.image_size
    b.paths = source_images(b.source, b.n_train + b.n_val, tmp)
    start = time.perf_counter()
    build_cache(b.paths, size, tmp / "cache", desc="bench")
    b.cold_cache_s = time.perf_counter() - start
    images = build_cache(b.paths, size, tmp / "cache", desc="bench").images  # warm: memory-mapped
    meta = rng.standard_normal((len(b.paths), N_META)).astype(np.float32)
    y = (rng.random(len(b.paths)) < 0.2).astype(np.float32)

    # The pipeline: one fold built and trained by the trainer's own steps (trainer.build_fold,
    # trainer.run_epoch: what train.py runs), on a table whose fold 0 is the validation set.
    df = pd.DataFrame({"image_name": [f"bench{i}" for i in range(len(b.paths))],  # int8 calibration's ids
                       "cache_row": np.arange(len(b.paths)), "target": y.astype(int),
                       "fold": np.r_[np.ones(b.n_train, int), np.zeros(b.n_val, int)]})
    b.data = TrainData(df, images, meta, None, [])
    b.fold = build_fold(b.cfg, b.data, 0)
    model, rt = b.fold.model, b.fold.rt
    # Raw twins, one per memory format, copied before any training so all start alike. They run in the
    # pipeline's precision (autocast) and take already-normalised float inputs of the same shape.
    b.raw = {}
    for fmt, cl in (("contiguous", False), ("channels_last", True)):
        m = copy.deepcopy(model).to(rt.device).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = torch.randn(t.batch_size, 3, size, size, device=rt.device)
        xi = torch.randn(b.infer_bs, 3, size, size, device=rt.device)  # predict's forward: one view of a batch
        if cl:
            x, xi = (v.contiguous(memory_format=torch.channels_last) for v in (x, xi))
        b.raw[fmt] = dict(model=m, opt=build_optimizer(m, t), x=x, xi=xi,
                          rt=dataclasses.replace(rt, channels_last=cl), train=Tally(), infer=Tally(),
                          probe_train=Tally(), probe_infer=Tally())
    b.raw_meta = torch.randn(t.batch_size, N_META, device=rt.device)
    b.raw_y = (torch.rand(t.batch_size, device=rt.device) < 0.2).float()
    b.raw_meta_i = torch.randn(b.infer_bs, N_META, device=rt.device)


def probe(b: Bench) -> tuple[str, str, dict, dict]:
    """Which memory format runs the raw step and forward faster: a short probe, the two formats
    alternating. Returns the faster formats (step, forward) and the raw sides that the pipeline is
    measured against: the epochs interleave the pipeline with the faster format only, as a step
    that follows a step in the other format starts with cold kernels and caches, and pays for it."""
    t, rt, raw = b.cfg.train, b.fold.rt, b.raw
    print(f"source {b.source}: {b.n_train} training + {b.n_val} validation images -> {b.cfg.model.image_size}px; "
          f"{b.args.backbone}, batch {t.batch_size}, {len(b.fold.train_loader)} steps/epoch, {b.args.epochs} epochs; "
          f"workers {t.num_workers}, torch threads {torch.get_num_threads()}, channels_last "
          f"{t.channels_last}, autocast {rt.amp_dtype}, device {rt.device}", flush=True)
    for r in raw.values():  # warm-up: first calls pick kernels and allocate
        raw_train_step(r, b.raw_meta, b.raw_y)
        raw_forward(r, b.raw_meta_i)
    for _ in range(b.args.probe_steps):
        for r in raw.values():
            s = raw_train_step(r, b.raw_meta, b.raw_y)
            r["probe_train"].add(t.batch_size, s, [s])
            s = raw_forward(r, b.raw_meta_i)
            r["probe_infer"].add(len(r["xi"]), s, [s])
    best_train_fmt = max(raw, key=lambda k: raw[k]["probe_train"].rate)
    best_infer_fmt = max(raw, key=lambda k: raw[k]["probe_infer"].rate)
    print("probe, images/s: " + ", ".join(
        f"{k} step {r['probe_train'].rate:.1f} forward {r['probe_infer'].rate:.1f}" for k, r in raw.items())
        + f"; faster: {best_train_fmt} (step), {best_infer_fmt} (forward)", flush=True)
    # Beside the pipeline, the raw step runs on the pipeline's own model and optimizer where the
    # faster format is the pipeline's: the same weights, optimizer state and memory. A twin model
    # stepped in between would make every step of both start with the other model's memory in the
    # caches and the allocator (measured: 10% slower raw steps than in the probe).
    pipe_fmt = "channels_last" if rt.channels_last else "contiguous"
    train_raw, infer_raw = (dict(raw[f], model=b.fold.model, opt=b.fold.optimizer, rt=rt) if f == pipe_fmt else raw[f]
                            for f in (best_train_fmt, best_infer_fmt))
    used_twins = {f for f in (best_train_fmt, best_infer_fmt) if f != pipe_fmt}
    for f in set(raw) - used_twins:  # free the twins no longer used
        del raw[f]["model"], raw[f]["opt"]
    return best_train_fmt, best_infer_fmt, train_raw, infer_raw


def train_epochs(b: Bench, train_raw: dict, fmt: str, fold=None, epochs: int | None = None,
                 label: str = "pipeline", cfg=None) -> tuple[Tally, Tally, list, float]:
    """The pipeline's epochs (run_epoch, as train.py runs it), each pipeline step followed by a raw
    step of the faster format; the first epoch is a warm-up for both. Then one more epoch alone.
    Returns the pipeline's training and validation tallies, the loader waits, and the alone rate.
    ``fold``: another fold than the pipeline's (the compiled or frozen one), ``epochs`` of it, run under
    ``cfg`` (that fold's config; default the pipeline's)."""
    fold, epochs, cfg = fold or b.fold, epochs or b.args.epochs, cfg or b.cfg
    t, n_train, n_val = b.cfg.train, b.n_train, b.n_val
    train_loader, timed = fold.train_loader, False

    def between():  # one raw step of the faster format per pipeline step
        s = raw_train_step(train_raw, b.raw_meta, b.raw_y)
        if timed:
            train_raw["train"].add(t.batch_size, s, [s])

    pipe_train, pipe_val, fetch = Tally(), Tally(), []
    for epoch in range(epochs):
        timed = epoch > 0
        loader = fold.train_loader = Interleaved(train_loader, between)
        row = run_epoch(cfg, fold, epoch, lambda: False)  # train.py's epoch, as it is
        train_s, val_s = row["train_s"] - loader.between_s, row["val_s"]
        if timed:
            pipe_train.add(n_train, train_s, loader.steps)
            fetch += loader.fetch
            pipe_val.add(n_val, val_s, [])
        print(f"epoch {epoch + 1}: {label} {n_train / train_s:.1f} img/s" + (" (warm-up)" if not timed else "")
              + (f", raw {fmt} {train_raw['train'].rate:.1f}" if timed else "")
              + f"; validation {n_val / val_s:.1f} img/s; pipeline steps {sum(loader.steps):.2f}s (first "
              f"{loader.steps[0]:.2f}s, slowest {max(loader.steps):.2f}s), outside steps "
              f"{train_s - sum(loader.steps):.2f}s", flush=True)
    fold.train_loader = train_loader
    # One more epoch alone, nothing in between: the figure train.py's log.csv shows (images / train_s),
    # to check the interleaved measurement against.
    row = run_epoch(cfg, fold, epochs, lambda: False)
    alone = n_train / row["train_s"]
    print(f"epoch {epochs + 1} alone, as log.csv times it: {alone:.1f} img/s", flush=True)
    return pipe_train, pipe_val, fetch, alone


def infer_rounds(b: Bench, infer_raw: dict, model=None, rounds: int | None = None) -> tuple[Tally, list]:
    """loop.predict with TTA over the validation rows, each batch followed by a raw forward of the
    faster format; the first round is a warm-up. Returns the pipeline's tally (every view counted)
    and the pipeline/raw ratio of each timed round. ``model``: what predicts (an infer.backend's
    runner), by default the fold's model."""
    tta, n_val, timed = b.args.tta, b.n_val, False

    def between():
        s = raw_forward(infer_raw, b.raw_meta_i)
        if timed:
            infer_raw["infer"].add(len(infer_raw["xi"]), s, [s])

    pipe_infer, ratios = Tally(), []
    for rnd in range(rounds or b.args.infer_rounds):
        timed = rnd > 0
        before = infer_raw["infer"].seconds, infer_raw["infer"].images
        loader = Interleaved(b.fold.val_loader, between)
        start = time.perf_counter()
        predict(model or b.fold.model, loader, b.fold.rt, tta=tta, desc="predict")
        s = time.perf_counter() - start - loader.between_s
        if timed:
            pipe_infer.add(n_val * tta, s, [])
            raw_rate = (infer_raw["infer"].images - before[1]) / (infer_raw["infer"].seconds - before[0])
            ratios.append(n_val * tta / s / raw_rate)
    return pipe_infer, ratios


def loop_chores(b: Bench, rng: np.random.Generator) -> dict:
    """The loop's own chores alone, on all threads vs on one (runtime.one_thread), alternated:
    {name: (ms on all threads, ms on one)}."""
    rt, t, tta = b.fold.rt, b.cfg.train, b.args.tta
    images_b, meta_b, y_b = next(iter(b.fold.train_loader))
    val_images = next(iter(b.fold.val_loader))[0]

    def train_chores():
        x = to_input(images_b, rt)
        return mixup(x, meta_b, y_b, 1.0, t.mixup_alpha, rng)

    def infer_chores():
        return to_input(torch.cat(tta_views(val_images, tta)), rt)

    def single(fn):
        def run():
            with one_thread(rt):
                fn()
        return run

    return {"to_input + mixup per training step, all threads / one": ab_ms(train_chores, single(train_chores)),
            f"TTA x{tta} views + to_input per batch, all threads / one": ab_ms(infer_chores, single(infer_chores))}


def table_rows(b: Bench, m: dict) -> list[tuple[str, str, str]]:
    """The table's rows (measure, images/s, note) up to its summary lines."""
    raw, tta = b.raw, b.args.tta
    best_train, best_infer = m["train_raw"]["train"], m["infer_raw"]["infer"]
    return [("decode + resize into the cache (cold)", f"{len(b.paths) / b.cold_cache_s:.1f}", f"{len(b.paths)} images"),
            *[(f"raw train step, {k} (probe)", f"{r['probe_train'].rate:.1f}",
               f"median step {1e3 * statistics.median(r['probe_train'].steps):.0f} ms") for k, r in raw.items()],
            (f"raw train step, {m['train_fmt']} (interleaved)", f"{best_train.rate:.1f}",
             f"median step {1e3 * statistics.median(best_train.steps):.0f} ms"),
            ("pipeline training, epochs 2..", f"{m['pipe_train'].rate:.1f}",
             f"median step {1e3 * statistics.median(m['pipe_train'].steps):.0f} ms"),
            ("  of which waiting for the loader", "", f"median {1e3 * statistics.median(m['fetch']):.1f} ms per step"),
            ("pipeline validation (tta 1)", f"{m['pipe_val'].rate:.1f}", ""),
            *[(f"raw forward, {k} (probe)", f"{r['probe_infer'].rate:.1f}", f"batch {len(r['xi'])}")
              for k, r in raw.items()],
            (f"raw forward, {m['infer_fmt']} (interleaved)", f"{best_infer.rate:.1f}",
             f"batch {len(m['infer_raw']['xi'])}"),
            (f"pipeline inference, TTA x{tta} (views)", f"{m['pipe_infer'].rate:.1f}", "")]


def print_table(b: Bench, m: dict) -> None:
    """The table of rates, the loop's chores, and the last, machine-readable line."""
    best_train, best_infer, pipe_train = m["train_raw"]["train"], m["infer_raw"]["infer"], m["pipe_train"]
    train_ratio, infer_ratio = pipe_train.rate / best_train.rate, m["pipe_infer"].rate / best_infer.rate
    per_step = b.cfg.train.batch_size
    step_ratio = pipe_train.median_rate(per_step) / best_train.median_rate(per_step)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n| {'measure':<40} | {'images/s':>9} | note")
    print(f"|{'-' * 42}|{'-' * 11}|------")
    for name, rate, note in table_rows(b, m):
        print(f"| {name:<40} | {rate:>9} | {note}")
    print(f"| {'train ratio (median steps, noise check)':<40} | {step_ratio:>9.3f} |")
    q1, med, q3 = np.percentile(m["infer_ratios"], [25, 50, 75])
    print(f"| {'infer ratio per round: median (IQR)':<40} | {med:>9.3f} | {q1:.3f}-{q3:.3f} over "
          f"{len(m['infer_ratios'])} rounds")
    print(f"| {'one epoch alone, as log.csv times it':<40} | {m['alone']:>9.1f} | images / train_s of train.py's "
          f"epoch, nothing in between (vs pipeline {pipe_train.rate:.1f} interleaved)")
    print(f"| {'peak RSS: this process / loader workers':<40} | {rss_mb:>6.0f} MB | "
          f"{', '.join(f'{w:.0f} MB' for w in m['worker_mb']) or 'no workers'}")
    print("\nthe loop's chores alone, median ms: before -> as the pipeline runs them")
    for name, (a, c) in m["chores"].items():
        print(f"  {name:<50} {a:7.2f} -> {c:6.2f}")
    extra = paths.print_paths(b, m)
    print()
    print(f"train_ratio={train_ratio:.3f} infer_ratio={infer_ratio:.3f} infer_ratio_median={med:.3f} "
          f"compiled_train_x={extra['compiled_train_x']:.3f} freeze_train_x={extra['freeze_train_x']:.3f} "
          f"fastest_infer_x={extra['fastest_infer_x']:.3f} int8_infer_x={extra['int8_infer_x']:.3f} "
          f"fastest_backend={extra['fastest_backend']} gflop_per_image={extra['gflop']:.3f} "
          f"ceiling_gflops={extra['ceiling_gflops']:.1f} peak_rss_mb={int(round(rss_mb))}")


def main(argv=None):
    b = configure(*parse_args(argv))
    tune_process(b.cfg)  # train.py's process-wide switches: glibc keeps freed memory, one OpenCV thread
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        setup(b, Path(tmp), rng)
        m = dict(zip(("train_fmt", "infer_fmt", "train_raw", "infer_raw"), probe(b)))
        m.update(zip(("pipe_train", "pipe_val", "fetch", "alone"), train_epochs(b, m["train_raw"], m["train_fmt"])))
        m.update(zip(("pipe_infer", "infer_ratios"), infer_rounds(b, m["infer_raw"])))
        m["worker_mb"] = workers_peak_rss_mb()  # while the persistent loader workers are alive
        m["chores"] = loop_chores(b, rng)
        m["ceiling"] = paths.matmul_gflops()
        m["gflop"] = paths.forward_gflop(b.fold.model, b.fold.rt, b.n_meta, b.cfg.model.image_size)
        m["backends"] = paths.backend_inference(b, m["infer_raw"], infer_rounds)
        if not b.args.no_compiled_train:
            m["compiled"] = paths.compiled_training(b, m["train_raw"], m["train_fmt"], train_epochs)
        if b.args.freeze_stages:
            m["frozen"] = paths.frozen_training(b, m["train_raw"], m["train_fmt"], train_epochs)
    print_table(b, m)


if __name__ == "__main__":
    main()
