"""Compiled and exported paths (train.compile, infer.backend): each predicts as eager within 1e-4,
the compiled step computes the eager step, checkpoints stay the plain module's, a compiled run
killed mid-fold resumes exactly, and what cannot compile runs eager with one warning line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, run_cli, run_main, tiny_overrides

from pipeline.core.errors import ConfigError
from pipeline.data.dataset import ImageMetaDataset, make_loader
from pipeline.model import backends as B
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.model.net import ImageMetaNet
from pipeline.model.runtime import forward, make_runtime, place
from pipeline.train.loop import predict

TINY = "test_efficientnet"  # timm's test model: compiles in seconds where a real backbone takes minutes


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def trained_looking(n_meta: int, dropout: float = 0.3) -> ImageMetaNet:
    """A tiny model whose every weight and batch-norm statistic is off its initial value, so that a
    backend that dropped or reordered anything would show."""
    torch.manual_seed(0)
    model = ImageMetaNet(TINY, n_meta, "none", meta_dropout=dropout, head_dropout=dropout)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
        model.head.weight.normal_(0, 1)  # predictions spread over the rows
    return model


def loader(n_meta: int, rows: int = 10, batch: int = 4, size: int = 32):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8)
    meta = rng.normal(size=(rows, n_meta)).astype(np.float32)
    return make_loader(ImageMetaDataset(images, np.arange(rows), meta, None), batch, False, 0)


@pytest.mark.parametrize("backend,n_meta", [("onnxruntime", 5), ("onnxruntime", 0), ("openvino", 5), ("openvino", 0)])
def test_each_backend_predicts_as_eager_within_1e4(backend, n_meta, monkeypatch):
    """TTA x3 over 10 rows in batches of 4 (the last one short); no meta features: the exported
    graph has no meta input. The exported graph takes the loader's uint8 NHWC views as they are,
    the three views of a batch together, and does the conversion and normalisation itself: to_input
    never runs. The compiled backend is held the same way, through infer.py on a compiled run's
    checkpoint (its test set a short batch), in
    test_a_compiled_checkpoint_is_the_plain_module_and_every_backend_predicts_it: each compile costs
    tens of seconds on two cores."""
    from pipeline.model.export import ExportedRunner
    from pipeline.train import loop
    model = trained_looking(n_meta)
    rt = make_runtime(model, amp=False, cpu_bf16=False, channels_last=True, device=torch.device("cpu"))
    place(model, rt)
    data = loader(max(n_meta, 3))  # a model without meta still gets the loader's columns
    eager = predict(model, data, rt, tta=3)
    runner = B.for_inference(model, rt, backend, "default", 4, max(n_meta, 3), 32)
    assert isinstance(runner, ExportedRunner) and runner.name == backend and runner.takes_uint8
    given, views = [], runner.views
    monkeypatch.setattr(runner, "views", lambda vs, meta: given.append([v.dtype for v in vs]) or views(vs, meta))
    monkeypatch.setattr(loop, "to_input", lambda *a: pytest.fail("to_input ran for an exported graph"))
    got = predict(runner, data, rt, tta=3)
    assert given == [[torch.uint8] * 3] * 3
    assert got.shape == eager.shape == (10,)
    np.testing.assert_allclose(got, eager, rtol=0, atol=1e-4)
    assert np.ptp(eager) > 1e-3  # the rows differ: equality is not a constant


def test_compiled_training_step_is_the_eager_step_and_leaves_the_model_as_it_was():
    """Without dropout: inductor draws its own random masks (a compiled run is reproducible with
    itself, not with eager: see the resume test below)."""
    model = trained_looking(4, dropout=0.0)
    twin = trained_looking(4, dropout=0.0)
    rt = make_runtime(model, amp=False, cpu_bf16=False, channels_last=True, device=torch.device("cpu"))
    place(model, rt), place(twin, rt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net, validating, seconds = B.compiled_for_training(model, model, model, rt, "default", 6, 4, 4, 32)
    assert seconds > 0 and net is not model and isinstance(validating, B.Runner)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the compile's own step left no trace
    assert all(p.grad is None for p in model.parameters())
    x, meta = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randn(6, 4)
    losses = []
    for m in (net, twin):
        model.train(), twin.train()
        losses.append(forward(m, x, meta, rt).square().mean())
        losses[-1].backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    compiled, eager = (torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (model, twin))
    assert (compiled - eager).norm() <= 1e-4 * eager.norm()  # float sums in another order, no more
    model.eval(), twin.eval()
    with torch.inference_mode():  # validation: the compiled eval graph on a short batch
        torch.testing.assert_close(validating(x[:3], meta[:3]), twin(x[:3], meta[:3]), rtol=0, atol=1e-4)


def test_a_model_that_does_not_compile_runs_eager_with_one_warning(monkeypatch, capsys):
    def broken(module, **_):
        def run(*a, **k):
            raise RuntimeError("inductor: unsupported operator\nmore detail")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    model = trained_looking(2)
    rt = make_runtime(model, amp=False, cpu_bf16=False, channels_last=True, device=torch.device("cpu"))
    net, validating, _ = B.compiled_for_training(model, model, model, rt, "default", 4, 4, 2, 32)
    assert net is model and validating is model
    assert B.for_inference(model, rt, "compile", "default", 4, 2, 32) is model
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: train.compile: torch.compile cannot be used (RuntimeError: inductor: unsupported "
                   "operator); running eager",
                   "warning: infer.backend=compile: torch.compile cannot be used (RuntimeError: inductor: "
                   "unsupported operator); running eager"]


@pytest.fixture(scope="module")
def compiled_runs(tiny_data, tmp_path_factory, compile_cache):
    """The same compiled fold (with EMA and 2 micro-batches per step) twice: once uninterrupted,
    once killed after its first epoch was saved and run again. Both share one image cache (the
    session's compile cache), so inductor's on-disk cache (under it) serves the later compiles."""
    work = tmp_path_factory.mktemp("compiled")

    def args(name):
        return [str(ROOT / "train.py"), *tiny_overrides(tiny_data, work, **{
            "data.cache_dir": str(compile_cache),
            "name": name, "model.backbone": TINY, "model.pretrained": "none", "train.compile": True,
            "train.epochs": 4, "train.patience": 5, "folds.n_folds": 2, "train.ema": True,
            "train.accumulate": 2}), "--folds", "0"]

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    first = run_cli(*args("ref"), cwd=work)
    proc = subprocess.Popen([sys.executable, *args("res")], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = work / "oof" / "res" / "fold0" / "last.pt"
    deadline = time.time() + 600
    while not last.exists():  # a compiled epoch of the tiny model takes well under a second: poll often
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)  # frozen at once, then killed: the fold cannot finish in between
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(last)["state"]["epoch"] < 4  # killed mid-fold
    resumed = run_cli(*args("res"), cwd=work)
    return {"work": work, "first": first, "resumed": resumed, "args": args, "cache": compile_cache}


def test_a_killed_compiled_run_resumes_to_the_uninterrupted_one(compiled_runs):
    work = compiled_runs["work"]
    assert "fold 0: resuming from" in compiled_runs["resumed"].stdout
    ref, res = (pd.read_csv(work / "oof" / n / "fold0" / "val_predictions.csv") for n in ("ref", "res"))
    np.testing.assert_allclose(res["pred"], ref["pred"], rtol=0, atol=1e-6)
    ref_log, res_log = (pd.read_csv(work / "oof" / n / "fold0" / "log.csv") for n in ("ref", "res"))
    assert (ref_log["train_loss"] == res_log["train_loss"]).all()
    # the compile time is logged on the first epoch each process ran; the other epochs carry 0
    assert ref_log["compile_s"].iloc[0] > 0 and (ref_log["compile_s"].iloc[1:] == 0).all()
    assert (res_log["compile_s"] > 0).sum() == 2
    assert "train.compile (default) took" in compiled_runs["first"].stdout
    assert any((compiled_runs["cache"] / "inductor").iterdir())


def test_the_commands_put_inductors_cache_under_the_image_cache(tiny_cfg, monkeypatch, tmp_path):
    """train.py and infer.py (tune_process with their config) keep inductor's compiled graphs under
    data.cache_dir, not in /tmp, so that the next fold and the next run reuse them; torch's
    deterministic algorithms are switched on with train.deterministic, and only then."""
    from pipeline.train.process import tune_process
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    tune_process(tiny_cfg(**{"data.cache_dir": str(tmp_path / "images")}))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "images" / "inductor").resolve())
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        tune_process(tiny_cfg(**{"train.deterministic": True}))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_compiled_checkpoint_is_the_plain_module_and_every_backend_predicts_it(compiled_runs, tiny_data):
    work = compiled_runs["work"]
    best = load_checkpoint(work / "oof" / "ref" / "fold0" / "best.pt")["model"]
    assert best and not any("_orig_mod" in k or k.startswith("module.") for k in best)
    subs = {}
    for backend in ("torch", "onnxruntime", "openvino", "compile"):
        args = ["output_dir=oof", "name=ref", f"infer.backend={backend}"]  # the rest as trained (config.yaml)
        proc = run_main(str(ROOT / "infer.py"), *args, "--allow-missing-folds", cwd=work)
        assert ("ready in" in proc.stdout) == (backend != "torch"), proc.stdout
        subs[backend] = pd.read_csv(work / "oof" / "ref" / "submission.csv")
    for backend, sub in subs.items():
        assert (sub["image_name"] == subs["torch"]["image_name"]).all()
        np.testing.assert_allclose(sub["target"], subs["torch"]["target"], rtol=0, atol=1e-4, err_msg=backend)


def test_without_a_cxx_compiler_train_and_infer_run_eager_with_one_warning(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"model.backbone": TINY, "model.pretrained": "none",
                                                  "train.compile": True, "infer.backend": "compile",
                                                  "train.epochs": 1, "folds.n_folds": 2})
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CXX="/nonexistent/g++")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--folds", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "torch.compile cannot be used" in line]
    assert warnings == [
        "warning: train.compile: torch.compile cannot be used (no C++ compiler (InvalidCxxCompiler: No working "
        "C++ compiler found in torch._inductor.config.cpp.cxx: (None, '/nonexistent/g++'))); running eager",
        "warning: infer.backend=compile: torch.compile cannot be used (no C++ compiler (InvalidCxxCompiler: No "
        "working C++ compiler found in torch._inductor.config.cpp.cxx: (None, '/nonexistent/g++'))); running eager"]
    log = pd.read_csv(tmp_path / "oof" / "tiny" / "fold0" / "log.csv")
    assert (log["compile_s"] == 0).all()


@pytest.mark.parametrize("override,message", [
    ("infer.backend=tensorrt", "infer.backend must be one of torch, compile, onnxruntime, openvino, got 'tensorrt'"),
    ("train.compile_mode=fast", "train.compile_mode and infer.compile_mode must be one of default, reduce-overhead, "
                                "max-autotune, max-autotune-no-cudagraphs, got 'fast' and 'default'"),
])
def test_a_backend_or_mode_that_does_not_exist_is_one_line_before_anything_runs(tiny_data, tmp_path, override,
                                                                                 message):
    proc = run_cli(str(ROOT / "train.py"), *tiny_overrides(tiny_data, tmp_path), override, cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "oof").exists()


def test_bf16_with_an_fp32_backend_is_refused(tiny_data, tmp_path):
    proc = run_cli(str(ROOT / "infer.py"), *tiny_overrides(tiny_data, tmp_path), "infer.backend=onnxruntime",
                   "infer.cpu_bf16=true", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: infer.backend=onnxruntime runs fp32: set infer.cpu_bf16=false, or use "
                                   "torch or compile for bf16")


def test_an_fp32_backend_under_bf16_predicts_with_torch_and_a_missing_package_is_one_line(capsys, monkeypatch):
    import importlib.util
    model = trained_looking(2)
    rt = make_runtime(model, amp=False, cpu_bf16=True, channels_last=True, device=torch.device("cpu"))
    assert B.for_inference(model, rt, "openvino", "default", 4, 2, 32) is model
    assert capsys.readouterr().err.strip() == ("warning: infer.backend=openvino runs fp32 on the CPU; predicting "
                                               "with torch on cpu with autocast")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^infer.backend=onnxruntime needs the onnxruntime package "
                                          r"\(pip install onnxruntime\), or use infer.backend=torch$"):
        B.check_backend("onnxruntime")


def test_a_backend_whose_package_is_missing_is_refused_before_training(tiny_data, tmp_path, monkeypatch):
    """The OOF rows are predicted with infer.backend: a missing package is found by check_run, before
    the first epoch, not after it."""
    import importlib.util

    from pipeline.core import config as C
    from pipeline.train import distributed as D, trainer as T
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    cfg = C.load_config(None, tiny_overrides(tiny_data, tmp_path, **{"infer.backend": "openvino"}))
    with pytest.raises(ConfigError, match=r"^infer.backend=openvino needs the openvino package \(pip install "
                                          r"openvino\), or use infer.backend=torch$"):
        T.check_run(cfg, D.SINGLE)
