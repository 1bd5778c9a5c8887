"""A timm image backbone fused with an MLP over the meta features; one head gives the binary logit
and, with the diagnosis head, one logit per diagnosis class beside it."""
from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.core.config import PREDICT
from pipeline.core.errors import ConfigError, first_few
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.model.pretrained import hub_advice, offline_state, offline_weights, resolve


def create_backbone(name: str, pretrained: str, drop_path_rate: float = 0.0) -> nn.Module:
    """``pretrained``: auto (offline weights when ``OFFLINE`` has them for ``name``, else none), offline,
    timm (hub or local cache), none, or the path of a file of weights that fits the backbone: its
    state dict, or a pipeline checkpoint such as best.pt (see ``file_state``)."""
    pretrained = resolve(name, pretrained)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"model.backbone={name}: not a timm model" + (f" (close: {', '.join(close)})" if close else ""))
    if pretrained == "offline":
        offline_weights(name)  # one that has them, before the model is built
    if pretrained not in ("offline", "timm", "none") and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained={pretrained}: no such file (or use auto, offline, timm or none)")
    try:
        model = timm.create_model(name, pretrained=pretrained == "timm", num_classes=0,
                                  drop_path_rate=drop_path_rate)
    except (RuntimeError, OSError) as e:  # timm's hub weights unreachable, or a model that takes no such option
        advice = hub_advice(name) if pretrained == "timm" and isinstance(e, OSError) else ""
        raise ConfigError(f"model.backbone={name} (pretrained={pretrained}): "
                          f"{str(e).splitlines()[0]}{advice}") from None
    if pretrained == "offline":
        model.load_state_dict(offline_state(name, model))
    elif pretrained not in ("timm", "none"):
        model.load_state_dict(file_state(pretrained, model, name), strict=False)  # checked to fit: all keys
    return model


PIPELINE_PREFIX = "backbone."


def file_state(path: str, backbone: nn.Module, name: str) -> dict:
    """The weights for ``backbone`` in the file ``model.pretrained`` names: a state dict of the
    backbone (timm's keys), or a pipeline model's (best.pt, last.pt: ``{"model": state}``, or an
    ImageMetaNet's state dict) whose ``backbone.*`` keys are taken, the prefix stripped, and the
    rest (meta MLP, head) left. The file must hold every key of the backbone, in its shape, and
    nothing else (BatchNorm's ``num_batches_tracked`` counters may be absent): else a one-line
    ConfigError naming the file and the first few missing, unexpected and misshapen keys."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    what = ""
    if any(isinstance(k, str) and k.startswith(PIPELINE_PREFIX) for k in state):
        state = {k[len(PIPELINE_PREFIX):]: v for k, v in state.items()
                 if isinstance(k, str) and k.startswith(PIPELINE_PREFIX)}
        what = f" (its {PIPELINE_PREFIX}* keys)"
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [str(k) for k in state if k not in expected]
    misshapen = [f"{k} {_shape(v)} (backbone: {_shape(expected[k])})" for k, v in state.items()
                 if k in expected and not (isinstance(v, torch.Tensor) and v.shape == expected[k].shape)]
    problems = [f"{label} key(s): {first_few(keys, 3)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if keys]
    if problems:
        raise ConfigError(f"model.pretrained={path}{what}: does not fit the backbone {name}: " + "; ".join(problems))
    return state


def _shape(v) -> str:
    if not isinstance(v, torch.Tensor):
        return f"a {type(v).__name__}, not a tensor"
    return "x".join(map(str, v.shape)) or "a scalar"


def check_backbone(cfg) -> None:
    """Build the configured backbone (with its pretrained weights) and run one image through it at
    ``model.image_size``, on the CPU: an unknown name, a missing or unfitting weights file, or a size
    the model cannot take is a one-line ConfigError before any experiment file is written."""
    m = cfg.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 'no offline weights' warning comes again when the fold builds it
        backbone = create_backbone(m.backbone, m.pretrained, m.drop_path_rate).eval()
    try:
        with torch.inference_mode():
            backbone(torch.zeros(1, 3, m.image_size, m.image_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ConfigError(f"model.backbone={m.backbone} cannot take model.image_size={m.image_size} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


class ImageMetaNet(nn.Module):
    """``forward`` returns (N, 1 + n_classes) logits: column 0 the binary one, then the diagnosis
    classes'. ``probability`` turns them into the one prediction per image that is scored."""

    def __init__(self, backbone: str, n_meta: int, pretrained: str = "none", meta_hidden=(128, 32),
                 meta_dropout: float = 0.2, head_dropout: float = 0.3, dropout_samples: int = 4,
                 drop_path_rate: float = 0.0, n_classes: int = 0, predict: str = "binary",
                 melanoma_index: int | None = None):
        super().__init__()
        # mean: of the heads there are (the recipe's read-out stays binary on a layout without diagnoses)
        predict = "binary" if predict == "mean" and n_classes == 0 else predict
        if predict != "binary" and (n_classes == 0 or melanoma_index is None):
            raise ConfigError(f"model.predict={predict} needs a diagnosis head with the melanoma class")
        self.predict, self.melanoma_index = predict, melanoma_index
        self.backbone = create_backbone(backbone, pretrained, drop_path_rate)
        width = self.backbone.num_features
        self.meta = None
        if n_meta > 0:
            h1, h2 = meta_hidden
            self.meta = nn.Sequential(
                nn.Linear(n_meta, h1), nn.BatchNorm1d(h1), nn.SiLU(), nn.Dropout(meta_dropout),
                nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.SiLU(), nn.Dropout(meta_dropout))
            width += h2
        self.dropouts = nn.ModuleList(nn.Dropout(head_dropout) for _ in range(max(1, dropout_samples)))
        self.head = nn.Linear(width, 1 + n_classes)

    def init_head_bias(self, positive_rate: float, class_shares=None):
        """Start every prediction at the base rate: sigmoid(bias) == positive_rate, and the diagnosis
        head at the class priors: softmax(bias) == the classes' shares (bias = log share). The head's
        weights start at zero so no random feature term moves it; they get gradients from the first
        step."""
        p = min(max(positive_rate, 1e-4), 1 - 1e-4)
        nn.init.zeros_(self.head.weight)
        bias = [math.log(p / (1 - p))]
        if self.head.out_features > 1:
            bias += [math.log(max(float(s), 1e-4)) for s in class_shares]
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(bias))

    def readouts(self, logits: torch.Tensor) -> torch.Tensor:
        """Every read-out of config.PREDICT side by side, (N, 3): the binary head's probability, the
        melanoma class's probability from the diagnosis head, and their mean."""
        binary = torch.sigmoid(logits[:, 0])
        diagnosis = torch.softmax(logits[:, 1:], dim=1)[:, self.melanoma_index]
        return torch.stack([binary, diagnosis, (binary + diagnosis) / 2], dim=1)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The scored prediction per image: the read-out that model.predict names."""
        if self.predict == "binary":
            return torch.sigmoid(logits[:, 0])  # the one read-out without a diagnosis head
        return self.readouts(logits)[:, PREDICT.index(self.predict)]

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = self.backbone(image)
        if self.meta is not None:
            x = torch.cat([x, self.meta(meta)], dim=1)
        if self.training:
            return torch.stack([self.head(d(x)) for d in self.dropouts]).mean(0)
        return self.head(x)

    frozen: tuple = ()  # the backbone's frozen submodules (train.freeze_stages, set by model/freeze.py)

    def train(self, mode: bool = True):
        """``nn.Module.train``, the frozen submodules of the backbone left in eval mode."""
        super().train(mode)
        for name in self.frozen:
            self.backbone.get_submodule(name).eval()
        return self


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its batch norms synchronised over the process group (train.sync_bn), by timm's
    converter: a BatchNormAct2d becomes a SyncBatchNormAct with the same activation and drop modules,
    any other batch norm a SyncBatchNorm. Parameters and buffers are the same tensors under the same
    state-dict keys, so the checkpoints load into the model built without it (which predicts)."""
    return timm.layers.convert_sync_batchnorm(model)


def build_model(cfg, n_meta: int, diagnosis=None, pretrained: str | None = None) -> ImageMetaNet:
    """The configured model; ``diagnosis`` (pipeline/data/diagnosis.py, None without the diagnosis head)
    gives the head its classes."""
    m = cfg.model
    return ImageMetaNet(m.backbone, n_meta if m.use_meta else 0, m.pretrained if pretrained is None else pretrained,
                        tuple(m.meta_hidden), m.meta_dropout, m.head_dropout, m.dropout_samples, m.drop_path_rate,
                        len(diagnosis.classes) if diagnosis else 0, m.predict,
                        diagnosis.melanoma_index if diagnosis else None)
