"""Which training step is fastest on this CPU: the raw step (forward + backward + Lookahead(Adam) on
tensors already in memory, the pipeline's model and precision) under each setting, alternated step
by step with the eager reference so that load from other processes hits all alike.

    .venv/bin/python benchmarks/step_sweep.py                       # recipe size: 192 px, batch 32
    .venv/bin/python benchmarks/step_sweep.py --modes default max-autotune-no-cudagraphs --steps 12
    .venv/bin/python benchmarks/step_sweep.py --batches --modes --freeze 1 2 3 4 5 6   # train.freeze_stages

Settings: eager at each --batches (per-image rate); eager on 1 thread; eager with denormal floats
flushed to zero (torch.set_flush_denormal); torch.compile of the step's model in each --modes (compile time printed);
the stem and first N stages frozen for each --freeze N (``freeze.set_frozen``, as train.freeze_stages
does). Each line gives images/s and the ratio to the eager reference (batch 32, all threads, nothing
frozen) measured beside it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.train.process import tune_process  # noqa: E402
from pipeline.model.runtime import make_runtime, place  # noqa: E402
from pipeline.model.freeze import set_frozen  # noqa: E402
from pipeline.model.net import build_model  # noqa: E402
from pipeline.train.trainer import build_optimizer  # noqa: E402
from throughput import raw_train_step  # noqa: E402

N_META = 8


class Step:
    """One raw training step of its own model, optimizer and inputs: ``run()`` returns seconds."""

    def __init__(self, cfg, batch: int, compile_mode: str | None = None, threads: int | None = None,
                 flush_denormal: bool = False, freeze: int = 0):
        self.model = build_model(cfg, N_META, pretrained="none")
        self.rt = make_runtime(self.model, cfg.train.amp, cfg.train.cpu_bf16, True)
        place(self.model, self.rt)
        self.opt = build_optimizer(self.model, cfg.train)
        set_frozen(self.model, freeze)  # after the optimizer, as trainer.build_fold does
        size = cfg.model.image_size
        self.x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        self.meta, self.y = torch.randn(batch, N_META), (torch.rand(batch) < 0.2).float()
        self.batch, self.threads, self.net, self.flush = batch, threads, self.model, flush_denormal
        self.compile_s = 0.0
        if compile_mode:
            self.net = torch.compile(self.model, mode=compile_mode, dynamic=False)
            self.compile_s = self.run()  # the first step compiles

    def run(self) -> float:
        """throughput.py's raw step, on this setting's threads and denormal mode."""
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.set_flush_denormal(self.flush)
        seconds = raw_train_step(dict(model=self.net, opt=self.opt, x=self.x, rt=self.rt), self.meta, self.y)
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)
        return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--batches", type=int, nargs="*", default=[16, 32, 64])
    p.add_argument("--modes", nargs="*", default=["default"], help="torch.compile modes to try at batch 32")
    p.add_argument("--freeze", type=int, nargs="*", default=[], help="train.freeze_stages values to try at batch 32")
    p.add_argument("--steps", type=int, default=10, help="timed steps per setting (after 2 warm-up steps)")
    args = p.parse_args(argv)
    cfg = load_config(None, [f"model.image_size={args.image_size}", f"model.backbone={args.backbone}"])
    tune_process(cfg)  # train.py's process switches
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.image_size} px, {cfg.model.backbone}", flush=True)
    ref = Step(cfg, 32)
    settings = {f"eager, batch {b}": Step(cfg, b) for b in args.batches if b != 32}
    if threads > 1:
        settings["eager, batch 32, 1 thread"] = Step(cfg, 32, threads=1)
    settings["eager, batch 32, denormals flushed to zero"] = Step(cfg, 32, flush_denormal=True)
    for mode in args.modes:
        step = Step(cfg, 32, compile_mode=mode)
        print(f"compiled ({mode}): first step (the compile) {step.compile_s:.0f}s", flush=True)
        settings[f"compiled {mode}, batch 32"] = step
    for n in args.freeze:
        settings[f"eager, batch 32, stem + {n} stage(s) frozen"] = Step(cfg, 32, freeze=n)
    times = {name: [] for name in ["eager, batch 32 (reference)", *settings]}
    for s in [ref, *settings.values()]:
        s.run(), s.run()  # warm-up
    for _ in range(args.steps):
        times["eager, batch 32 (reference)"].append(ref.run() / 32)
        for name, s in settings.items():
            times[name].append(s.run() / s.batch)
    ref_rate = 1 / statistics.median(times["eager, batch 32 (reference)"])
    print(f"\n| setting | images/s | x eager batch 32 |\n|---|---|---|")
    for name, t in times.items():
        rate = 1 / statistics.median(t)
        print(f"| {name} | {rate:.1f} | {rate / ref_rate:.3f} |")


if __name__ == "__main__":
    main()
