"""How a model runs: PyTorch eager, compiled by torch.compile (inductor), or exported to ONNX Runtime
or OpenVINO for prediction.

    net, validating, seconds = compiled_for_training(model, net, evaluated, rt, mode, ...)  # train.compile
    runner = for_inference(model, rt, backend, mode, batch, n_meta, size)                # infer.backend
    runner = for_inference(..., precision, ExportCache(fold / "best.pt"), calibration)   # exported once (export.py)

Whatever runs, the plain module stays what is saved and loaded: checkpoints, EMA, best.pt, resume
and blends never see a compiled or exported model (no ``_orig_mod.`` keys). A compile that cannot
work (no C++ compiler, a backbone inductor cannot trace) leaves the model eager with one warning
line saying why. Measured on the 2-core CPU: benchmarks/README.md ("Compiled and exported paths").
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from pipeline.core.errors import ConfigError
from pipeline.model.export import Calibration, exported_runner
from pipeline.model.export_cache import ExportCache
from pipeline.model.runtime import Runtime, forward


def use_cache(cache_dir: str) -> None:
    """Inductor's on-disk cache under the image cache folder (``data.cache_dir``), so that a compiled
    graph is reused by the next fold and the next run: its default, /tmp/torchinductor_<user>, is
    wiped with /tmp and shared by every project. Set once per process by the entry points
    (train.process.tune_process)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir, "inductor").resolve())


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None: inductor needs a C++ compiler on the CPU and
    Triton on CUDA."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "Triton is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - whatever inductor says, the answer is "eager"
        return f"no C++ compiler ({first_line(e)})"
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def warn_eager(what: str, why: str) -> None:
    print(f"warning: {what}: torch.compile cannot be used ({why}); running eager", file=sys.stderr)


def example(rt: Runtime, batch: int, n_meta: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero inputs of the shapes the loop feeds (normalised float NCHW, meta rows)."""
    x = torch.zeros(batch, 3, size, size, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.zeros(batch, n_meta, device=rt.device)


def compiled_for_training(model: torch.nn.Module, net: torch.nn.Module, evaluated: torch.nn.Module, rt: Runtime,
                          mode: str, batch: int, eval_batch: int, n_meta: int, size: int) -> tuple:
    """(what trains, what validates, seconds): ``net`` (the model, or its DDP wrapper: PyTorch
    compiles the wrapper, DDP first) and ``evaluated`` (the model or its EMA) compiled. Both are
    compiled now, on zero inputs of the loop's shapes (a training micro-batch forward and backward,
    a validation batch), so that a failure falls back to eager here and the compile time is its
    own; the weights, buffers and gradients are put back as they were."""
    why = compile_problem(rt.device)
    if why:
        warn_eager("train.compile", why)
        return net, evaluated, 0.0
    training = torch.compile(net, mode=mode, dynamic=False)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.time()
    try:
        model.train()
        forward(training, *example(rt, batch, n_meta, size), rt).sum().backward()
        evaluated.eval()
        validating = Runner(evaluated, padded(torch.compile(evaluated, mode=mode, dynamic=False), rt, eval_batch,
                                              n_meta, size), "compile")
    except Exception as e:  # noqa: BLE001 - a graph inductor cannot compile: eager
        warn_eager("train.compile", first_line(e))
        training, validating = net, evaluated
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    return training, validating, time.time() - start


def padded(compiled, rt: Runtime, batch: int, n_meta: int, size: int):
    """``compiled`` (an eval-mode module) on batches of exactly ``batch`` rows, compiled now: a
    shorter batch (a loader's last) is copied into a full one and its rows taken back, so one
    static graph serves every batch. Rows are independent in eval mode (batch norm uses its
    running statistics), so the padding changes nothing. A dynamic batch instead compiled 3
    graphs here (1 row, 2-15 rows, 16 or more: inductor's linear kernels differ)."""
    with torch.inference_mode():  # as loop.predict runs it: the inputs are inference tensors
        x, meta = example(rt, batch, n_meta, size)
        forward(compiled, x, meta, rt)

    def run(image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        if n == batch:
            return compiled(image, rows)
        x[:n], meta[:n] = image, rows
        return compiled(x, meta)[:n]
    return run


class Runner:
    """A predicting model behind another engine: called like the module on (image, meta) and
    returning its logits; ``eval`` and ``probability`` are the module's (loop.predict uses them)."""

    def __init__(self, model: torch.nn.Module, run, name: str):
        self.model, self.run, self.name = model, run, name

    def __call__(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.run(image, meta)

    def eval(self):
        self.model.eval()
        return self

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return self.model.probability(logits)


def for_inference(model: torch.nn.Module, rt: Runtime, backend: str, mode: str, batch: int, n_meta: int,
                  size: int, precision: str = "fp32", cache: ExportCache | None = None,
                  calibration: Calibration | None = None):
    """What predicts with ``model`` (eval mode, on ``rt``) in batches of at most ``batch`` rows: the
    module itself (``torch``), or a Runner over inductor with frozen weights (``compile``), or an
    ExportedRunner over ONNX Runtime or OpenVINO (CPU; uint8 NHWC in; ``export.exported_runner``:
    ``precision``, the export kept in ``cache``, int8 calibrated on ``calibration``)."""
    model.eval()
    if backend == "torch":
        return model
    if backend == "compile":
        why = compile_problem(rt.device)
        if why:
            warn_eager("infer.backend=compile", why)
            return model
        # freezing: the weights become constants of the graph, so inductor folds the batch norms into
        # the convolutions and lays the weights out for its kernels once (inference only)
        try:
            options = {**torch._inductor.list_mode_options(mode), "freezing": True}  # mode= and options= exclude
            return Runner(model, padded(torch.compile(model, dynamic=False, options=options), rt, batch, n_meta, size),
                          "compile")
        except Exception as e:  # noqa: BLE001
            warn_eager("infer.backend=compile", first_line(e))
            return model
    if rt.device.type != "cpu" or rt.amp_dtype is not None:
        print(f"warning: infer.backend={backend} runs {precision} on the CPU; predicting with torch on "
              f"{rt.device.type}{' with autocast' if rt.amp_dtype is not None else ''}", file=sys.stderr)
        return model
    return exported_runner(model, rt, backend, n_meta, size, precision, cache, calibration)


def check_backend(backend: str, precision: str = "fp32") -> None:
    """Refuse an exported backend, or int8, whose package is not installed, before anything runs."""
    if backend in ("onnxruntime", "openvino") and importlib.util.find_spec(backend) is None:
        raise missing(backend, backend)
    if precision == "int8" and importlib.util.find_spec("nncf") is None:
        raise ConfigError("infer.precision=int8 needs the nncf package (pip install nncf), or use "
                          "infer.precision=fp32")


def missing(package: str, backend: str) -> ConfigError:
    return ConfigError(f"infer.backend={backend} needs the {package} package (pip install {package}), "
                       f"or use infer.backend=torch")
