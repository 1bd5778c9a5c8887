"""Exported inference (``infer.backend=onnxruntime`` or ``openvino``): a graph that takes the image
cache's uint8 NHWC batches itself, int8 when ``infer.precision=int8``, kept in a file beside the fold's
best.pt so that it is exported once.

    runner = exported_runner(model, rt, backend, n_meta, size, precision, ExportCache(fold / "best.pt"), calibration)
    logits = runner(images_uint8_nhwc, meta)          # or runner.views([view, ...], meta)

The graph does the per-view work that ``runtime.to_input`` does for eager (uint8 to float, NHWC to
NCHW, the backbone's mean and std): ONNX exports a wrapper module doing it before the model, OpenVINO
adds it with a PrePostProcessor. OpenVINO runs the views of a batch as requests in flight together
(the THROUGHPUT hint). int8 is NNCF's post-training quantization of the OpenVINO model, calibrated on
a ``Calibration`` (the fold's training images); when the quantized model runs slower than fp32 here
(``compare_speed``, timed once at export), the fp32 model is kept, with one line saying so.

The cache file (``export_cache.py``) is keyed by everything the graph depends on (``cache_key``).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.model.export_cache import ExportCache, cached
from pipeline.model.runtime import Runtime

FORMAT = 2  # what is exported and how (2: int8 leaves the MatMuls in fp32); a change of it makes every cached export stale
TIMED_ROWS, TIMED_RUNS = 32, 3  # compare_speed: one batch of calibration rows, best of 3 runs after a warm-up


@dataclass
class Calibration:
    """What an int8 model is calibrated on: ``rows`` training images named by ``ids`` (a digest of
    their ids: part of the cache key); ``load()`` gives them as (uint8 NHWC images, meta rows) and is
    called only when the model is quantized."""
    rows: int
    ids: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def need(package: str):
    """The package's module; ImportError when it is missing (``backends.check_backend`` refuses
    that before anything runs)."""
    import importlib
    return importlib.import_module(package)


def cache_key(model, rt: Runtime, backend: str, precision: str, n_meta: int, size: int, weights: str,
              calibration: Calibration | None) -> dict:
    """Everything an exported graph depends on; a cached one with another key is stale. The batch
    dimension is dynamic, so the batch size is not part of it."""
    return {"format": FORMAT, "backend": backend, "version": need(backend).__version__,
            "precision": precision, "nncf": need("nncf").__version__ if precision == "int8" else None,
            "weights": weights, "image_size": size, "n_meta": n_meta, "read_out": getattr(model, "predict", None),
            "mean": [round(float(v), 6) for v in rt.mean.flatten()],
            "std": [round(float(v), 6) for v in rt.std.flatten()],
            "calibration": {"rows": calibration.rows, "ids": calibration.ids} if precision == "int8" else None}


class FromUint8(torch.nn.Module):
    """The model behind the per-view work of ``to_input``: uint8 NHWC in, normalised float NCHW on."""

    def __init__(self, model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().cpu().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().cpu().reshape(1, 3, 1, 1).clone())

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std, meta)


def onnx_graph(model, rt: Runtime, n_meta: int, size: int) -> dict:
    wrapper = FromUint8(model, rt.mean, rt.std).eval()
    example = (torch.zeros(2, size, size, 3, dtype=torch.uint8), torch.zeros(2, n_meta))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapper, example, buffer, input_names=["image", "meta"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "meta": {0: "n"}}, dynamo=False)
    return {"model.onnx": buffer.getvalue()}


def openvino_graph(model, rt: Runtime, n_meta: int, size: int):
    """The OpenVINO model of ``model`` with the per-view work in front of it (a PrePostProcessor)."""
    ov = need("openvino")
    from openvino.preprocess import PrePostProcessor
    example = (torch.zeros(2, 3, size, size), torch.zeros(2, n_meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    for port, name in zip(converted.inputs, ("image", "meta")):  # without meta features: no meta input
        port.get_tensor().set_names({name})
    ppp = PrePostProcessor(converted)
    image = ppp.input("image")
    image.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_shape([-1, size, size, 3])
    image.model().set_layout(ov.Layout("NCHW"))
    image.preprocess().convert_element_type(ov.Type.f32).mean(rt.mean.flatten().tolist()).scale(
        rt.std.flatten().tolist())
    return ppp.build()


def ov_members(ov_model) -> dict:
    """An OpenVINO model as the bytes of its IR (model.xml, model.bin), weights kept in fp32."""
    ov = need("openvino")
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(ov_model, f"{tmp}/model.xml", compress_to_fp16=False)
        return {name: Path(tmp, name).read_bytes() for name in ("model.xml", "model.bin")}


def inputs_of(feed: dict, names: set) -> dict:
    return {k: v for k, v in feed.items() if k in names}


def quantize(ov_model, images: np.ndarray, meta: np.ndarray):
    """NNCF's post-training int8 quantization of ``ov_model``, its statistics gathered one image at a
    time over the calibration rows; NNCF's progress bars and notices are kept quiet. NNCF chooses the
    convolutions it quantizes; the MatMuls (the meta MLP, the head: a small share of the work) are
    left out and stay in fp32, which cut the AUC cost on ISIC 2017 (benchmarks/README.md, "Cheaper
    paths")."""
    nncf = need("nncf")
    names = {n for port in ov_model.inputs for n in port.get_names()}
    items = [inputs_of({"image": images[i:i + 1], "meta": meta[i:i + 1]}, names) for i in range(len(images))]
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                             ignored_scope=nncf.IgnoredScope(types=["MatMul"]))


def compare_speed(fp32, int8, images: np.ndarray, meta: np.ndarray) -> tuple[float, float]:
    """Seconds per batch of the fp32 and the int8 model on this CPU: a batch of up to TIMED_ROWS
    calibration rows, the best of TIMED_RUNS runs after a warm-up, the two interleaved."""
    compiled = [ov_core().compile_model(m, "CPU", compile_config(latency=True)) for m in (fp32, int8)]
    feeds = [inputs_of({"image": images[:TIMED_ROWS], "meta": meta[:TIMED_ROWS]},
                       {n for port in c.inputs for n in port.get_names()}) for c in compiled]
    best = [math.inf, math.inf]
    for run in range(TIMED_RUNS + 1):
        for i, (c, feed) in enumerate(zip(compiled, feeds)):
            start = time.perf_counter()
            c(feed)
            if run:
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def openvino_members(model, rt: Runtime, n_meta: int, size: int, precision: str,
                     calibration: Calibration | None) -> dict:
    """The IR to cache: fp32, or int8 quantized on ``calibration`` unless it runs slower (``info.json``
    says which runs, and the two timings)."""
    if precision == "fp32":
        return ov_members(openvino_graph(model, rt, n_meta, size))
    images, meta = calibration.load()  # first: training images that cannot be had stop it before any work
    fp32 = openvino_graph(model, rt, n_meta, size)
    int8 = quantize(fp32, images, meta)
    fp32_s, int8_s = compare_speed(fp32, int8, images, meta)
    runs = "int8" if int8_s < fp32_s else "fp32"
    info = {"runs": runs, "fp32_s": fp32_s, "int8_s": int8_s}
    return {**ov_members(int8 if runs == "int8" else fp32), "info.json": json.dumps(info).encode()}


@functools.cache
def ov_core():
    return need("openvino").Core()


def compile_config(latency: bool = False) -> dict:
    """fp32 where not quantized, on the threads torch was given; THROUGHPUT: several requests in flight."""
    return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT"}


class ExportedRunner:
    """An exported graph that predicts for ``model``: called on a uint8 NHWC batch and its meta rows,
    it returns the logits; ``views`` runs several views of one batch at once. ``eval`` and
    ``probability`` are the module's (loop.predict uses them)."""
    takes_uint8 = True
    requests = 1  # inference requests in flight together (OpenVINO: its THROUGHPUT hint's number)

    def __init__(self, model: torch.nn.Module, name: str, run: Callable[[list, np.ndarray], list], runs: str):
        self.model, self.name, self.run, self.runs = model, name, run, runs  # runs: the precision that runs

    def views(self, views: list[torch.Tensor], meta: torch.Tensor) -> list[torch.Tensor]:
        rows = np.ascontiguousarray(meta.cpu().numpy(), dtype=np.float32)
        return [torch.from_numpy(o) for o in self.run([np.ascontiguousarray(v.cpu().numpy()) for v in views], rows)]

    def __call__(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.views([image], meta)[0]

    def eval(self):
        self.model.eval()
        return self

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return self.model.probability(logits)


def onnxruntime_runner(model, members: dict) -> ExportedRunner:
    ort = need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(members["model.onnx"], options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}  # a model without meta features has no meta input

    def run(views: list, meta: np.ndarray) -> list:
        return [session.run(None, inputs_of({"image": v, "meta": meta}, names))[0] for v in views]
    return ExportedRunner(model, "onnxruntime", run, "fp32")


def openvino_runner(model, members: dict) -> ExportedRunner:
    """The cached IR compiled for the CPU; each batch's views go out as requests in flight together
    (split by rows when there are fewer views than requests) and come back in order."""
    ov = need("openvino")
    weights = np.frombuffer(members["model.bin"], np.uint8)
    compiled = ov_core().compile_model(ov_core().read_model(model=members["model.xml"].decode(),
                                                            weights=ov.Tensor(weights)), "CPU", compile_config())
    names = {n for port in compiled.inputs for n in port.get_names()}
    queue = ov.AsyncInferQueue(compiled, max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    done: dict = {}
    queue.set_callback(lambda request, job: done.__setitem__(job, request.get_output_tensor(0).data.copy()))

    def run(views: list, meta: np.ndarray) -> list:
        parts = max(1, math.ceil(len(queue) / len(views)))
        jobs = [(i, p, rows) for i in range(len(views))
                for p, rows in enumerate(np.array_split(np.arange(len(meta)), parts)) if len(rows)]
        done.clear()
        for i, p, rows in jobs:
            queue.start_async(inputs_of({"image": views[i][rows[0]:rows[-1] + 1],
                                         "meta": meta[rows[0]:rows[-1] + 1]}, names), (i, p))
        queue.wait_all()
        return [np.concatenate([done[(i, p)] for j, p, _ in jobs if j == i]) for i in range(len(views))]
    info = json.loads(members.get("info.json", b"{}"))
    runner = ExportedRunner(model, "openvino", run, info.get("runs", "fp32"))
    runner.weights = weights  # the IR's weights stay alive with the compiled model that reads them
    runner.requests = len(queue)
    return runner


def slower_int8_line(label: str, members: dict) -> str | None:
    info = json.loads(members.get("info.json", b"{}"))
    if info.get("runs") != "fp32":
        return None
    return (f"{label}: infer.precision=int8 ran slower than fp32 on this CPU when exported ({info['int8_s']:.3f}s "
            f"vs {info['fp32_s']:.3f}s a batch); predicting in fp32")


def exported_runner(model, rt: Runtime, backend: str, n_meta: int, size: int, precision: str = "fp32",
                    cache: ExportCache | None = None, calibration: Calibration | None = None) -> ExportedRunner:
    """``model`` (eval mode, CPU) exported to ``backend`` at ``precision``: from ``cache`` when it holds
    a valid export, else exported now (and written there); without a cache, exported in memory."""
    if precision == "int8" and calibration is None:
        raise ValueError("infer.precision=int8 needs the fold's calibration images")

    def build() -> dict:
        if backend == "onnxruntime":
            return onnx_graph(model, rt, n_meta, size)
        return openvino_members(model, rt, n_meta, size, precision, calibration)

    def load(members: dict) -> ExportedRunner:
        runner = (onnxruntime_runner if backend == "onnxruntime" else openvino_runner)(model, members)
        line = slower_int8_line(cache.label if cache else backend, members)
        if line:
            print(line)
        return runner

    if cache is None:
        return load(build())
    key = cache_key(model, rt, backend, precision, n_meta, size, cache.weights(), calibration)
    return cached(cache, f"export-{backend}-{precision}.zip", key, build, load)
