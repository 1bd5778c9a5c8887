"""Where a trained model looked: Grad-CAM overlays (pytorch_grad_cam's ``GradCAM``) for the images of
the CV report's gallery (pipeline/report/mistakes.py), each made by the model of the fold that
predicted the row out of fold.

    overlays(Path("oof/a"), rows, pixels)   # rows: id, fold; pixels: {id: (S, S, 3) uint8}

A row of fold k is explained by ``fold<k>/best.pt`` as ``checkpoints.predicting_model`` loads it (the
weights that predicted it), on the unflipped image at the trained size with the row's own meta
features (the experiment's features.json applied to its data.csv, as training applied it). The model
takes an image and a meta row; ``FixedMeta`` makes it a function of the image alone, the meta row
fixed. The target is the binary logit (column 0 of the head). The layer is found by
``target_layer``: the last module of the backbone's ``forward_features`` to output a feature map of
at least 2x2 (the last conv stage; on images so small that its map is 1x1, where its overlay would be
one flat colour, the last map before it that is that large). A backbone without such a map (a vision
transformer's tokens) cannot be hooked: one line, and no overlays. The work is bounded by the rows
given (the gallery's), and its seconds are printed. On the CPU it runs on one thread: one small image
at a time, where a second thread's barriers cost more than they share (docs/results.md, the gallery).

This is the train layer (it loads the fold models, and imports torch): the reporting layer, which
imports without torch, receives ``overlays`` as a function from the command line (pipeline/cli.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pipeline.core.config import with_overrides
from pipeline.core.errors import PipelineError
from pipeline.data.diagnosis import Diagnosis
from pipeline.data.features import MetaTransform
from pipeline.data.prepare import aux_head
from pipeline.experiment.images import Trained, image_file, open_trained
from pipeline.model.runtime import one_thread, to_input
from pipeline.train.checkpoints import predicting_model


class CannotHook(Exception):
    """The backbone has no feature map for Grad-CAM to weigh."""


class FixedMeta(nn.Module):
    """The image + meta model as a function of the image alone: its meta row fixed."""

    def __init__(self, model: nn.Module, meta: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("meta", meta.reshape(1, -1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, self.meta.expand(image.shape[0], -1))


def target_layer(backbone: nn.Module, size: int) -> tuple[str, nn.Module, tuple[int, int]]:
    """(name, module, map size) of the last module of ``backbone.forward_features`` to output a
    feature map (N, C, H, W) with H and W >= 2, found by one forward pass of a blank image at
    ``size`` px; CannotHook when the features are no feature map or none is that large."""
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((name, getattr(out, "shape", ()))))
             for name, m in backbone.named_modules() if name]
    try:
        blank = torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device)
        with torch.no_grad():
            features = backbone.forward_features(blank)
    except (AttributeError, RuntimeError) as e:
        raise CannotHook(f"{type(backbone).__name__}: no forward_features to hook ({type(e).__name__})") from None
    finally:
        for h in hooks:
            h.remove()
    if getattr(features, "ndim", 0) != 4:
        raise CannotHook(f"{type(backbone).__name__}: its features are not a feature map "
                         f"(shape {tuple(getattr(features, 'shape', ()))})")
    maps = [(name, tuple(shape[2:])) for name, shape in outputs if len(shape) == 4 and min(shape[2:]) >= 2]
    if not maps:
        raise CannotHook(f"{type(backbone).__name__}: no feature map of 2x2 or more at {size} px")
    name, grid = maps[-1]
    return name, backbone.get_submodule(name), grid


def fold_dir(exp_dir: Path, fold: int) -> Path:
    """The folder of the model that predicted a row of ``fold`` out of fold."""
    return Path(exp_dir) / f"fold{int(fold)}"


def meta_rows(exp_dir: Path, trained: Trained) -> dict[str, np.ndarray]:
    """Each training row's meta features (features.json's transform of data.csv), by id."""
    fitted = json.loads((Path(exp_dir) / "features.json").read_text())
    transform, record = MetaTransform.from_dict(fitted), trained.record.reset_index(drop=True)
    if transform.file_size or transform.group_context:  # these features read the image files' sizes
        record["image_bytes"] = [image_file(trained.cfg, i).stat().st_size for i in record.iloc[:, 0]]
    return dict(zip(record.iloc[:, 0], transform.transform(record)))


def overlay(model: nn.Module, rt, layer: nn.Module, pixels: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """The Grad-CAM of ``model``'s binary logit at ``layer`` over one image, laid on it: (S, S, 3) uint8."""
    x = to_input(torch.from_numpy(np.array(pixels, dtype=np.uint8)[None]), rt)
    wrapped = FixedMeta(model, torch.as_tensor(meta, dtype=torch.float32, device=rt.device))
    with GradCAM(model=wrapped, target_layers=[layer]) as cam:
        mask = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])[0]
    return show_cam_on_image(np.asarray(pixels, np.float32) / 255, mask, use_rgb=True, image_weight=0.55)


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def setup(exp_dir: Path) -> tuple:
    """The experiment's config (predicting with torch: a module to take gradients of), each row's meta
    features and the classes of its diagnosis head (None without one)."""
    trained = open_trained(exp_dir)
    if trained.problem:
        raise PipelineError(trained.problem)
    cfg = with_overrides(trained.cfg, ["infer.backend=torch"])
    fitted = json.loads((exp_dir / "features.json").read_text())
    diagnosis = Diagnosis.from_dict(fitted.get("diagnosis")) if aux_head(cfg) else None
    return cfg, meta_rows(exp_dir, trained), diagnosis


def overlays(exp_dir: Path, rows: pd.DataFrame, pixels: dict) -> tuple[dict, str]:
    """The overlay of each row (``rows``: id, fold) whose image is in ``pixels``, or why it has none,
    and a line saying how they were made; the seconds taken and any problem are printed (one line
    each: the experiment, a fold whose best.pt is missing or does not load, a backbone it cannot hook)."""
    start, exp_dir = time.perf_counter(), Path(exp_dir)
    out, made, layer_name = {}, 0, ""
    try:
        cfg, meta, diagnosis = setup(exp_dir)
    except (PipelineError, OSError, ValueError, KeyError) as e:
        why = f"no overlays: {first_line(e)}"
        print(f"warning: {exp_dir}: {why}")
        return {i: why for i in rows["id"]}, f"{exp_dir.name}: {why}"
    n_meta = len(next(iter(meta.values()), []))
    for fold, part in rows.groupby("fold", sort=True):
        try:
            model, rt = predicting_model(cfg, n_meta, fold_dir(exp_dir, fold), diagnosis, progress=False)
            layer_name, layer, grid = target_layer(model.backbone, cfg.model.image_size)
        except CannotHook as e:
            print(f"warning: {exp_dir}: Grad-CAM cannot hook the backbone {cfg.model.backbone} ({e}): no overlays")
            return {i: "no overlay: the backbone cannot be hooked" for i in rows["id"]}, \
                f"{exp_dir.name}: no overlays: Grad-CAM cannot hook {cfg.model.backbone}"
        except (PipelineError, OSError, RuntimeError) as e:  # gone, damaged, or not this model's weights
            print(f"warning: {exp_dir}: fold {fold}: no overlays ({first_line(e)})")
            out.update({i: f"no overlay: no usable {fold_dir(exp_dir, fold).name}/best.pt" for i in part["id"]})
            continue
        with one_thread(rt):
            for i in part["id"]:
                out[i] = overlay(model, rt, layer, pixels[i], meta[i]) if i in meta else "no overlay: not in data.csv"
                made += i in meta
    seconds = time.perf_counter() - start
    how = f"layer {layer_name} ({grid[0]}x{grid[1]})" if layer_name else "no fold model"
    print(f"Grad-CAM of {exp_dir}: {made} overlay(s) in {seconds:.1f} s ({cfg.model.backbone}, {how})")
    return out, (f"{exp_dir.name}: Grad-CAM of the binary logit at {cfg.model.backbone}'s {how}, "
                 f"{cfg.model.image_size} px, each by its row's fold model; {made} overlay(s) in {seconds:.1f} s")
