"""The exported model paid once (model/export.py, model/export_cache.py): kept beside best.pt, reused
while every part of its key holds, made again when one changes or the file is damaged; int8 through
NNCF, calibrated on the fold's training rows only (train/calibration.py), and the command line's
train.py then infer.py on one int8 export."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import ROOT, copy_finished, run_main, tiny_overrides
from test_backends import TINY, loader, trained_looking

from pipeline.core.config import load_config, with_overrides
from pipeline.core.errors import ConfigError
from pipeline.model import export as E
from pipeline.model.checkpoint_file import save_checkpoint
from pipeline.model.export_cache import ExportCache
from pipeline.model.net import ImageMetaNet
from pipeline.model.runtime import make_runtime, place
from pipeline.train.loop import predict


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def fold_with(tmp_path, model, name="fold0"):
    """A fold folder holding ``model``'s weights as best.pt."""
    fold = tmp_path / name
    save_checkpoint(fold / "best.pt", {"model": model.state_dict(), "epoch": 1, "auc": 0.5})
    return fold


def on_cpu(model):
    rt = make_runtime(model, amp=False, cpu_bf16=False, channels_last=True, device=torch.device("cpu"))
    place(model, rt).eval()
    return rt


@pytest.fixture
def builds(monkeypatch):
    """How many times each backend's graph was made."""
    count = {"onnxruntime": 0, "openvino": 0}
    onnx, ov = E.onnx_graph, E.openvino_graph
    monkeypatch.setattr(E, "onnx_graph", lambda *a: count.__setitem__("onnxruntime", count["onnxruntime"] + 1)
                        or onnx(*a))
    monkeypatch.setattr(E, "openvino_graph", lambda *a: count.__setitem__("openvino", count["openvino"] + 1)
                        or ov(*a))
    return count


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_export_is_kept_beside_best_pt_and_reused_not_made_again(backend, tmp_path, builds, capsys):
    model = trained_looking(3)
    rt = on_cpu(model)
    fold = fold_with(tmp_path, model)
    data = loader(3)
    eager = predict(model, data, rt, tta=2)
    first = E.exported_runner(model, rt, backend, 3, 32, "fp32", ExportCache(fold / "best.pt"))
    path = fold / f"export-{backend}-fp32.zip"
    stamp = path.stat().st_mtime_ns
    second = E.exported_runner(model, rt, backend, 3, 32, "fp32", ExportCache(fold / "best.pt"))
    assert builds[backend] == 1 and path.stat().st_mtime_ns == stamp
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"fold0/export-{backend}-fp32.zip: built in ") and out[0].endswith("s (none yet)")
    assert out[1] == f"fold0/export-{backend}-fp32.zip: reused"
    for runner in (first, second):
        np.testing.assert_allclose(predict(runner, data, rt, tta=2), eager, rtol=0, atol=1e-4)
    with zipfile.ZipFile(path) as z:  # the key is stored with the graph
        assert json.loads(z.read("key.json")) == E.cache_key(model, rt, backend, "fp32", 3, 32,
                                                             ExportCache(fold / "best.pt").weights(), None)


def changed(part: str, model, rt, fold, monkeypatch) -> dict:
    """exported_runner's arguments with one part of the key changed."""
    args = dict(model=model, rt=rt, n_meta=3, size=32)
    if part == "weights":  # best.pt replaced by other weights
        other = trained_looking(3)
        with torch.no_grad():
            other.head.bias.add_(1.0)
        save_checkpoint(fold / "best.pt", {"model": other.state_dict(), "epoch": 2, "auc": 0.6})
        args["model"] = other
        on_cpu(other)
    elif part == "version":
        import onnxruntime
        monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    elif part == "image_size":
        args["size"] = 48
    elif part == "n_meta":
        args["n_meta"] = 4
    elif part == "read_out":
        monkeypatch.setattr(model, "predict", "mean")
    elif part == "mean":
        args["rt"] = make_runtime(model, False, False, True, torch.device("cpu"))
        args["rt"].mean = args["rt"].mean + 1
    elif part == "format":
        monkeypatch.setattr(E, "FORMAT", E.FORMAT + 1)
    return args


@pytest.mark.parametrize("part", ["weights", "version", "image_size", "n_meta", "read_out", "mean", "format"])
def test_a_change_in_any_part_of_the_key_makes_the_export_again(part, tmp_path, builds, capsys, monkeypatch):
    """The model has no meta features, so that the export takes any number of meta columns."""
    model = ImageMetaNet(TINY, 0, "none")
    rt = on_cpu(model)
    fold = fold_with(tmp_path, model)
    E.exported_runner(model, rt, "onnxruntime", 3, 32, "fp32", ExportCache(fold / "best.pt"))
    args = changed(part, model, rt, fold, monkeypatch)
    E.exported_runner(args["model"], args["rt"], "onnxruntime", args["n_meta"], args["size"], "fp32",
                      ExportCache(fold / "best.pt"))
    assert builds["onnxruntime"] == 2
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("fold0/export-onnxruntime-fp32.zip: built in ") and last.endswith(f"(stale: {part})")
    E.exported_runner(args["model"], args["rt"], "onnxruntime", args["n_meta"], args["size"], "fp32",
                      ExportCache(fold / "best.pt"))
    assert builds["onnxruntime"] == 2  # the new one is kept in its place


def test_precision_and_calibration_are_parts_of_the_key():
    model = trained_looking(3)
    rt = on_cpu(model)
    a = E.Calibration(300, "ids-a", lambda: None)
    key = E.cache_key(model, rt, "openvino", "int8", 3, 32, "w", a)
    assert key["calibration"] == {"rows": 300, "ids": "ids-a"} and key["nncf"]
    assert E.cache_key(model, rt, "openvino", "int8", 3, 32, "w", E.Calibration(299, "ids-a", lambda: None)) != key
    assert E.cache_key(model, rt, "openvino", "int8", 3, 32, "w", E.Calibration(300, "ids-b", lambda: None)) != key
    fp32 = E.cache_key(model, rt, "openvino", "fp32", 3, 32, "w", a)
    assert fp32["precision"] == "fp32" and fp32["calibration"] is None and fp32["nncf"] is None


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "no_key"])
def test_a_damaged_export_is_made_again_with_one_warning_line(damage, tmp_path, builds, capsys):
    model = trained_looking(3)
    rt = on_cpu(model)
    fold = fold_with(tmp_path, model)
    E.exported_runner(model, rt, "onnxruntime", 3, 32, "fp32", ExportCache(fold / "best.pt"))
    path = fold / "export-onnxruntime-fp32.zip"
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped_byte":  # inside the graph's bytes: the zip's CRC fails
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(raw)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("model.onnx", b"")
    capsys.readouterr()
    runner = E.exported_runner(model, rt, "onnxruntime", 3, 32, "fp32", ExportCache(fold / "best.pt"))
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: fold0/export-onnxruntime-fp32.zip: cannot be read (")
    assert err[0].endswith("); exporting it again")
    assert builds["onnxruntime"] == 2 and captured.out.strip().endswith("(damaged)")
    np.testing.assert_allclose(predict(runner, loader(3), rt, tta=2), predict(model, loader(3), rt, tta=2),
                               rtol=0, atol=1e-4)
    E.exported_runner(model, rt, "onnxruntime", 3, 32, "fp32", ExportCache(fold / "best.pt"))
    assert builds["onnxruntime"] == 2


def test_openvino_runs_the_views_as_requests_in_flight_together():
    """On two threads (the 2-core CPU), the THROUGHPUT hint gives 2 requests: TTA x3 goes out as 3
    requests, TTA x1 as a batch split by rows into 2; both predict as eager."""
    import os
    model = trained_looking(3)
    rt = on_cpu(model)
    data = loader(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner = E.exported_runner(model, rt, "openvino", 3, 32)
    finally:
        torch.set_num_threads(threads)
    assert runner.requests == (2 if os.cpu_count() >= 2 else 1)
    for tta in (1, 3):
        np.testing.assert_allclose(predict(runner, data, rt, tta=tta), predict(model, data, rt, tta=tta),
                                   rtol=0, atol=1e-4)


def test_without_write_the_export_is_made_in_memory_and_no_file_written(tmp_path, builds):
    """Under torchrun, the ranks but rank 0 (trainer.finish_fold: write_export=dist.main)."""
    model = trained_looking(3)
    rt = on_cpu(model)
    fold = fold_with(tmp_path, model)
    E.exported_runner(model, rt, "onnxruntime", 3, 32, "fp32", ExportCache(fold / "best.pt", write=False))
    assert builds["onnxruntime"] == 1 and sorted(p.name for p in fold.iterdir()) == ["best.pt"]


@pytest.mark.parametrize("override,message", [
    ("infer.precision=int8", "infer.precision must be fp32, or int8 with infer.backend=openvino; got 'int8' with "
                             "infer.backend=torch"),
    ("infer.precision=fp16", "infer.precision must be fp32, or int8 with infer.backend=openvino; got 'fp16' with "
                             "infer.backend=openvino"),
], ids=["int8_with_torch", "fp16"])
def test_int8_off_openvino_or_another_precision_is_one_line_at_config_load(override, message, tiny_data, tmp_path):
    extra = [] if override == "infer.precision=int8" else ["infer.backend=openvino"]
    with pytest.raises(ConfigError) as e:
        load_config(None, [*tiny_overrides(tiny_data, tmp_path), *extra, override])
    assert str(e.value) == message


def test_int8_needs_nncf_installed_before_anything_runs(monkeypatch):
    import importlib.util

    from pipeline.model import backends as B
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    B.check_backend("openvino")
    with pytest.raises(ConfigError, match=r"^infer.precision=int8 needs the nncf package \(pip install nncf\), or "
                                          r"use infer.precision=fp32$"):
        B.check_backend("openvino", "int8")


# --- int8 and its calibration -----------------------------------------------------------------------

@pytest.fixture
def experiment(finished, tmp_path):
    """A copy of the session's finished experiment (lite0 from its ImageNet weights, 1 epoch, 32 px),
    its config, and its training data prepared as train.py prepares it."""
    from pipeline.data.prepare import prepare
    from pipeline.experiment.record import saved_config
    _, work = copy_finished(finished, tmp_path)
    cfg = saved_config(work / "oof" / "tiny" / "config.yaml")
    return cfg, prepare(cfg)


def test_int8_predicts_close_to_fp32(experiment, monkeypatch):
    """ImageNet lite0 with a random head (predictions spread: std 0.056), calibrated on fold 0's
    training rows, predicting its validation rows with TTA x2 at 32 px. int8 rounds weights and
    activations to 256 levels, which moves each prediction by a share of that spread: measured, a
    largest difference of 0.049 and a correlation of 0.968 with fp32. The bounds leave room above
    that and still fail a broken quantization (a wrong scale or a layer left out shifts every
    prediction or loses their order)."""
    from pipeline.data.prepare import eval_loader
    from pipeline.train.calibration import from_training
    cfg, data = experiment
    torch.manual_seed(0)
    model = ImageMetaNet("tf_efficientnet_lite0", data.meta.shape[1], "offline")
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    rt = on_cpu(model)
    monkeypatch.setattr(E, "compare_speed", lambda *a: (2.0, 1.0))  # int8, whatever this CPU says
    val = eval_loader(cfg, data, np.flatnonzero(data.df["fold"].to_numpy() == 0))
    eager = predict(model, val, rt, tta=2)
    runner = E.exported_runner(model, rt, "openvino", data.meta.shape[1], 32, "int8", None, from_training(cfg, data, 0))
    int8 = predict(runner, val, rt, tta=2)
    assert runner.runs == "int8" and eager.std() > 0.03
    assert np.abs(int8 - eager).max() < 0.08 and np.corrcoef(int8, eager)[0, 1] > 0.95


def synthetic_calibration(rows: int = 24, n_meta: int = 3) -> E.Calibration:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
    meta = rng.normal(size=(rows, n_meta)).astype(np.float32)
    return E.Calibration(rows, "synthetic", lambda: (images, meta))


def test_int8_slower_than_fp32_here_predicts_in_fp32_with_one_line(tmp_path, monkeypatch, capsys):
    """The speed check (compare_speed) forced to find int8 slower: the fp32 graph is what the cache
    holds and runs, the line is said when it is made and when it is reused; the quantization was
    given the calibration's images."""
    model = trained_looking(3)
    rt = on_cpu(model)
    fold = fold_with(tmp_path, model)
    calibration = synthetic_calibration()
    quantized, real = [], E.quantize
    monkeypatch.setattr(E, "quantize", lambda m, images, meta: quantized.append(images) or real(m, images, meta))
    monkeypatch.setattr(E, "compare_speed", lambda *a: (1.0, 2.0))
    line = ("fold0: infer.precision=int8 ran slower than fp32 on this CPU when exported (2.000s vs 1.000s a batch); "
            "predicting in fp32")
    for made in ("built in", "reused"):
        runner = E.exported_runner(model, rt, "openvino", 3, 32, "int8", ExportCache(fold / "best.pt"), calibration)
        out = capsys.readouterr().out.splitlines()
        assert out[0] == line and out[1].startswith(f"fold0/export-openvino-int8.zip: {made}")
        assert runner.runs == "fp32"
        np.testing.assert_allclose(predict(runner, loader(3), rt, tta=2), predict(model, loader(3), rt, tta=2),
                                   rtol=0, atol=1e-4)
    assert len(quantized) == 1 and quantized[0] is calibration.load()[0]


def test_int8_quantizes_the_convolutions_and_leaves_the_matmuls_in_fp32():
    """Convolutions take int8-rounded inputs (a FakeQuantize before them) and int8 weights (decompressed
    by a Multiply); the MatMuls take neither: fp32 inputs and fp32 weights (a Constant)."""
    model = trained_looking(3)
    rt = on_cpu(model)
    images, meta = synthetic_calibration().load()
    int8 = E.quantize(E.openvino_graph(model, rt, 3, 32), images, meta)
    inputs = {"Convolution": [], "MatMul": []}
    for op in int8.get_ordered_ops():
        if op.get_type_name() in inputs:
            inputs[op.get_type_name()].append(tuple(v.get_node().get_type_name() for v in op.input_values()))
    assert sum(ins == ("FakeQuantize", "Multiply") for ins in inputs["Convolution"]) >= 5
    assert len(inputs["MatMul"]) == 3 and all(ins[0] != "FakeQuantize" and ins[1] == "Constant"
                                              for ins in inputs["MatMul"])


def test_the_speed_check_times_a_batch_of_both_models():
    model = trained_looking(3)
    rt = on_cpu(model)
    images, meta = synthetic_calibration().load()
    fp32 = E.openvino_graph(model, rt, 3, 32)
    fp32_s, int8_s = E.compare_speed(fp32, E.quantize(fp32, images, meta), images, meta)
    assert 0 < fp32_s < 10 and 0 < int8_s < 10


def test_calibration_rows_are_up_to_300_training_rows_of_the_fold_drawn_the_same_each_time():
    from pipeline.train.calibration import CALIBRATION_ROWS, calibration_rows
    folds = np.random.default_rng(0).integers(-1, 5, 2000)  # -1: external rows, training only
    for k in range(5):
        rows = calibration_rows(folds, k)
        assert len(rows) == CALIBRATION_ROWS == 300 and (folds[rows] != k).all()
        assert (np.diff(rows) > 0).all() and np.array_equal(rows, calibration_rows(folds, k))
    few = np.array([0, 1, 1, 0, 2, -1])
    assert calibration_rows(few, 1).tolist() == [0, 3, 4, 5]


def test_training_and_infer_calibrate_on_the_same_training_rows_never_validation_rows(experiment):
    """trainer.finish_fold (the data in memory) and infer.py (data.csv, the image cache, features.json)
    draw the same rows, so that their cache keys match; the images are those rows' training images."""
    from pipeline.train.calibration import calibration_rows, from_experiment, from_training
    cfg, data = experiment
    folds = data.df["fold"].to_numpy()
    for k in range(cfg.folds.n_folds):
        rows = calibration_rows(folds, k)
        assert len(rows) == (folds != k).sum() and not set(rows) & set(np.flatnonzero(folds == k))
        a, b = from_training(cfg, data, k), from_experiment(cfg, k)
        assert (a.rows, a.ids) == (b.rows, b.ids)
        (images_a, meta_a), (images_b, meta_b) = a.load(), b.load()
        assert np.array_equal(images_a, data.images[data.df["cache_row"].to_numpy()[rows]])
        assert np.array_equal(images_a, images_b)
        np.testing.assert_allclose(meta_a, meta_b, rtol=0, atol=1e-6)


def test_infer_without_the_training_images_or_an_int8_export_is_one_line(finished, tmp_path):
    """int8 calibrates on training images: with neither them nor a cached int8 export, infer.py stops
    with one line naming the fold."""
    from conftest import one_error_line
    data, work = copy_finished(finished, tmp_path)
    shutil.rmtree(data / "train")
    proc = run_main(str(ROOT / "infer.py"), "output_dir=oof", "name=tiny", "infer.backend=openvino",
                    "infer.precision=int8", cwd=work, check=False)
    line = one_error_line(proc)
    assert line.startswith("error: oof/tiny/fold0: infer.precision=int8 calibrates on the fold's training images "
                           "and no int8 export is cached to reuse: ") and "training image(s) missing" in line, line


def test_train_then_infer_share_one_int8_export(tiny_data, tmp_path):
    """train.py with infer.backend=openvino infer.precision=int8 makes fold 0's export for its OOF rows
    and keeps it beside best.pt (a file of the experiment: --force may delete it); infer.py reuses it."""
    from pipeline.experiment.folder import delete_fold, foreign_in_fold
    args = tiny_overrides(tiny_data, tmp_path, **{"model.backbone": TINY, "model.pretrained": "none",
                                                  "infer.backend": "openvino", "infer.precision": "int8",
                                                  "train.epochs": 1})
    trained = run_main(str(ROOT / "train.py"), *args, "--folds", "0", cwd=tmp_path)
    assert "fold0/export-openvino-int8.zip: built in " in trained.stdout
    fold = tmp_path / "oof" / "tiny" / "fold0"
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "export-openvino-int8.zip", "log.csv",
                                                      "val_predictions.csv"]
    stamp = (fold / "export-openvino-int8.zip").stat().st_mtime_ns
    inferred = run_main(str(ROOT / "infer.py"), f"output_dir={tmp_path / 'oof'}", "name=tiny", "infer.batch_size=8",
                        "--allow-missing-folds", cwd=tmp_path)  # another batch size: the batch is dynamic
    assert "fold0/export-openvino-int8.zip: reused" in inferred.stdout and "built in" not in inferred.stdout
    assert (fold / "export-openvino-int8.zip").stat().st_mtime_ns == stamp
    assert (tmp_path / "oof" / "tiny" / "submission.csv").is_file()
    assert foreign_in_fold(fold) == []
    delete_fold(tmp_path / "oof" / "tiny", 0)
    assert not fold.exists()
