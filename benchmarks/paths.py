"""The compiled, exported, int8 and frozen paths for benchmarks/throughput.py (issues 17, 31): the
machine's fp32 matmul rate (its practical ceiling), the model's GFLOP per image, the pipeline's
compiled training epoch (train.compile) and its epoch with the stem and first stages frozen
(train.freeze_stages), TTA inference through each infer.backend (exported graphs take the uint8
views themselves) and through OpenVINO int8 (infer.precision=int8), each interleaved with the eager
raw step or forward as throughput.py measures the eager pipeline, and each path's share of the ceiling."""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model.backends import example, for_inference
from pipeline.model.export import exported_runner
from pipeline.train.calibration import from_training
from pipeline.core.config import with_overrides
from pipeline.model.runtime import forward
from pipeline.train.loop import predict
from pipeline.train.trainer import build_fold

BACKENDS = ("torch", "compile", "onnxruntime", "openvino")


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    """fp32 GFLOP/s of an n x n matmul on torch's threads: the practical ceiling of this machine."""
    a, c = torch.randn(n, n), torch.randn(n, n)
    a @ c
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ c
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def forward_gflop(model, rt, n_meta: int, size: int) -> float:
    """GFLOP of one image's forward (torch.utils.flop_counter; a training step is taken as 3x: the
    counter's backward count for depthwise convolutions is not to be trusted)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        forward(model, *example(rt, 1, n_meta, size), rt)
    return counter.get_total_flops() / 1e9


def compiled_training(b, train_raw: dict, fmt: str, train_epochs) -> dict:
    """A second fold, built with train.compile (its compile timed by build_fold), trained by
    run_epoch as train.py runs it: one warm-up epoch, one timed, interleaved with the eager raw step
    on the compiled fold's own plain module; then one epoch alone."""
    cfg = with_overrides(b.cfg, ["train.compile=true", f"train.compile_mode={b.args.compile_mode}"])
    cfg.infer.batch_size = b.infer_bs
    fold = build_fold(cfg, b.data, 0)
    pipe_fmt = "channels_last" if fold.rt.channels_last else "contiguous"
    raw = dict(train_raw, train=type(train_raw["train"])())  # a tally of its own
    if fmt == pipe_fmt:
        raw.update(model=fold.model, opt=fold.optimizer, rt=fold.rt)
    pipe, _, _, alone = train_epochs(b, raw, fmt, fold=fold, epochs=2, label="compiled")
    return {"rate": pipe.rate, "raw": raw["train"].rate, "compile_s": fold.compile_s, "alone": alone}


def frozen_training(b, train_raw: dict, fmt: str, train_epochs) -> dict:
    """A third fold, built with train.freeze_stages (trainer.build_fold freezes it), trained by run_epoch
    under its own config as train.py runs it: one warm-up epoch, one timed, interleaved with the full
    eager raw step (the unfrozen fold's, nothing frozen); then one epoch alone."""
    cfg = with_overrides(b.cfg, [f"train.freeze_stages={b.args.freeze_stages}"])
    cfg.infer.batch_size = b.infer_bs
    fold = build_fold(cfg, b.data, 0)
    raw = dict(train_raw, train=type(train_raw["train"])())  # a tally of its own
    pipe, _, _, alone = train_epochs(b, raw, fmt, fold=fold, epochs=2, label=f"frozen {b.args.freeze_stages}",
                                     cfg=cfg)
    return {"rate": pipe.rate, "raw": raw["train"].rate, "alone": alone}


def runners(b) -> dict:
    """What predicts, by name: each infer.backend (for_inference, as predicting_model builds it
    without a cache: exported now) and, with --int8, OpenVINO int8 calibrated on the fold's own
    training rows (calibration.from_training, as trainer.finish_fold)."""
    model, rt, size = b.fold.model, b.fold.rt, b.cfg.model.image_size
    out = {name: (lambda name=name: for_inference(copy.deepcopy(model), rt, name, b.args.compile_mode, b.infer_bs,
                                                  b.n_meta, size)) for name in b.args.backends}
    if b.args.int8:
        out["openvino int8"] = lambda: exported_runner(copy.deepcopy(model).eval(), rt, "openvino", b.n_meta, size,
                                                       "int8", None, from_training(b.cfg, b.data, 0))
    return out


def backend_inference(b, infer_raw: dict, infer_rounds) -> dict:
    """Each runner on the trained fold's weights: TTA predictions over the validation rows, their
    largest difference from eager's, and the rate over rounds interleaved with the eager raw
    forward. {name: dict(rate, ratio, ready_s, max_diff, runs)} for those that run."""
    model, rt, tta = b.fold.model, b.fold.rt, b.args.tta
    eager = predict(model, b.fold.val_loader, rt, tta=tta, desc="eager")
    out = {}
    for backend, build in runners(b).items():
        start = time.perf_counter()
        try:
            runner = build()
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            print(f"{backend}: cannot run ({type(e).__name__}: {str(e).splitlines()[0]})", flush=True)
            continue
        ready = time.perf_counter() - start
        diff = float(np.abs(predict(runner, b.fold.val_loader, rt, tta=tta, desc=backend) - eager).max())
        raw = dict(infer_raw, infer=type(infer_raw["infer"])())
        tally, ratios = infer_rounds(b, raw, model=runner, rounds=b.args.backend_rounds)
        out[backend] = {"rate": tally.rate, "ratio": statistics.median(ratios), "ready_s": ready, "max_diff": diff,
                        "runs": getattr(runner, "runs", "fp32")}  # int8 falls back to fp32 where slower
        print(f"{backend} ({out[backend]['runs']}): TTA x{tta} {tally.rate:.1f} views/s, {statistics.median(ratios):.3f}x the eager raw "
              f"forward (ready in {ready:.0f}s), largest difference from eager {diff:.1e}", flush=True)
    return out


def print_paths(b, m: dict) -> dict:
    """The paths' table; returns the figures the last line gains."""
    ceiling, gflop = m["ceiling"], m["gflop"]
    train_eager, raw_step = m["pipe_train"].rate, m["train_raw"]["train"].rate
    raw_forward = m["infer_raw"]["infer"].rate
    rows = [("fp32 matmul 2048^2 (the ceiling)", f"{ceiling:.1f} GFLOP/s", ""),
            ("model forward per image", f"{gflop:.3f} GFLOP", "training step taken as 3x"),
            ("raw train step, eager", f"{raw_step:.1f} img/s", share(raw_step * 3 * gflop, ceiling)),
            ("pipeline training, eager", f"{train_eager:.1f} img/s", share(train_eager * 3 * gflop, ceiling))]
    c = m.get("compiled")
    if c:
        rows.append((f"pipeline training, compiled ({b.args.compile_mode})", f"{c['rate']:.1f} img/s",
                     f"{share(c['rate'] * 3 * gflop, ceiling)}; {c['rate'] / c['raw']:.3f}x its interleaved eager raw "
                     f"step ({c['raw']:.1f}); compile {c['compile_s']:.0f}s; alone {c['alone']:.1f}"))
    z = m.get("frozen")
    if z:
        rows.append((f"pipeline training, stem + {b.args.freeze_stages} stage(s) frozen", f"{z['rate']:.1f} img/s",
                     f"{z['rate'] / z['raw']:.3f}x the full eager raw step beside it ({z['raw']:.1f}); alone "
                     f"{z['alone']:.1f} (the eager pipeline alone: {m['alone']:.1f})"))
    rows.append(("raw forward, eager", f"{raw_forward:.1f} img/s", share(raw_forward * gflop, ceiling)))
    for name, r in m.get("backends", {}).items():
        rows.append((f"TTA inference, infer.backend={name}", f"{r['rate']:.1f} views/s",
                     f"{share(r['rate'] * gflop, ceiling)}; {r['ratio']:.3f}x the raw forward; max diff "
                     f"{r['max_diff']:.1e}; ready {r['ready_s']:.0f}s"))
    print(f"\n| {'path':<44} | {'rate':>15} | note")
    print(f"|{'-' * 46}|{'-' * 17}|------")
    for name, rate, note in rows:
        print(f"| {name:<44} | {rate:>15} | {note}")
    shipped = {k: r for k, r in m.get("backends", {}).items() if r["max_diff"] <= 1e-4}
    fastest = max(shipped, key=lambda k: shipped[k]["ratio"]) if shipped else None
    int8 = m.get("backends", {}).get("openvino int8")
    return {"compiled_train_x": c["rate"] / c["raw"] if c else float("nan"),
            "int8_infer_x": int8["ratio"] if int8 and int8["runs"] == "int8" else float("nan"),
            "freeze_train_x": z["rate"] / z["raw"] if z else float("nan"),
            "fastest_infer_x": shipped[fastest]["ratio"] if fastest else float("nan"),
            "fastest_backend": fastest, "gflop": gflop, "ceiling_gflops": ceiling}


def share(gflops: float, ceiling: float) -> str:
    return f"{gflops:.1f} GFLOP/s = {100 * gflops / ceiling:.0f}% of the ceiling"
