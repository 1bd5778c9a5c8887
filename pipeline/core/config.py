"""Experiment configuration: typed dataclass groups, YAML files, dotted overrides.

Precedence: defaults in code < YAML files (``--config``, repeatable: later files win) <
``section.key=value`` overrides.
Unknown keys and values of the wrong type are errors, never silently ignored.

    cfg = load_config("configs/sample.yaml", ["train.epochs=3", "model.backbone=efficientnet_b0"])
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.infer_config import InferConfig
from pipeline.core.log_config import LogConfig


def opt(default, help: str):
    """A dataclass field with a default and a one-line help text (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    root: str = opt("input/sample", "folder the data paths below are relative to")
    train_csv: str = opt("train.csv", "training table")
    test_csv: str = opt("test.csv", "test table (no target column)")
    sample_submission: str = opt("sample_submission.csv", "defines the submission's ids and order")
    train_images: str = opt("train", "folder of training images")
    test_images: str = opt("test", "folder of test images")
    image_ext: str = opt(".jpg", "image file extension")
    id_col: str = opt("image_name", "image id column; the file is <images>/<id><image_ext>")
    target_col: str = opt("target", "binary target column")
    group_col: str = opt("patient_id", "group (patient) column; folds never split a group; '' = none")
    keep_where: dict = opt({}, "keep only training rows whose column equals the value, e.g. {split: train}")
    drop_where: dict = opt({}, "drop training rows whose column equals the value, e.g. {tfrecord: -1}")
    test_keep_where: dict = opt({}, "keep only test rows whose column equals the value")
    external_csv: str = opt("", "extra table used for training only (never validated or scored), e.g. ISIC 2019")
    external_images: str = opt("", "folder of the external table's images")
    external_rename: dict = opt({}, "rename external columns to this config's names, e.g. {image: image_name}")
    diagnosis_col: str = opt("", "multi-class diagnosis column (e.g. diagnosis): an auxiliary training target "
                                 "(train.aux_weight) and part of the recorded data; '' = none")
    diagnosis_min_rows: int = opt(10, "diagnosis classes with fewer training rows than this are grouped into 'other'")
    melanoma_class: str = opt("melanoma", "the diagnosis class that is the positive target (target 1)")
    max_contradictions: float = opt(0.01, "largest fraction of training rows whose diagnosis contradicts the target "
                                          "(target 1 with another class, or the melanoma class with target 0): "
                                          "listed with a warning; above it, an error")
    external_diagnosis: dict = opt({}, "the external table's one-hot diagnosis columns and the class each stands for, "
                                       "e.g. {MEL: melanoma, NV: nevus}; {} = its diagnosis_col as a column")
    on_bad_image: str = opt("fail", "corrupt or unreadable training image: 'fail' or 'skip' (listed)")
    generate_sample: bool = opt(True, "write the bundled synthetic sample into root when root is empty or absent")
    cache_dir: str = opt("input/cache", "decoded-image cache (uint8 arrays at the training size)")


@dataclass
class FeatureConfig:
    categorical: list = opt(["sex", "anatom_site_general_challenge"], "one-hot columns (with a missing level)")
    numeric: list = opt(["age_approx"], "standardised columns (with a missing flag)")
    n_images: bool = opt(True, "add log1p(images per group)")
    file_size: bool = opt(False, "add log(image file size), standardised")
    group_context: bool = opt(False, "add the image's file-size z-score and rank among its group's images")
    fit_on: str = opt("train", "fit the transform on 'train' or 'train+test'")
    max_bad_fraction: float = opt(0.05, "largest fraction of a numeric column's rows that may be non-numbers or "
                                        "far outside its range (made missing, with a warning); above it, an error")


@dataclass
class FoldConfig:
    n_folds: int = opt(5, "number of folds")
    seed: int = opt(42, "fold assignment seed")
    path: str = opt("", "fold table; '' = <train_csv stem>_folds<n>_seed<seed>.csv next to it")


@dataclass
class ModelConfig:
    backbone: str = opt("tf_efficientnet_lite0", "any timm model name")
    pretrained: str = opt("auto", "auto | offline | timm | none | <checkpoint file>")
    image_size: int = opt(96, "square training and inference size in pixels")
    use_meta: bool = opt(True, "fuse the meta-feature MLP with the image features")
    meta_hidden: list = opt([128, 32], "widths of the two meta MLP layers")
    meta_dropout: float = opt(0.2, "dropout inside the meta MLP")
    head_dropout: float = opt(0.3, "dropout before the head (multi-sample)")
    dropout_samples: int = opt(4, "multi-sample dropout: head evaluated this many times, averaged")
    drop_path_rate: float = opt(0.1, "stochastic depth of the backbone")
    predict: str = opt("binary", "what the model predicts (validation, OOF, submission): binary (the binary "
                                 "head), diagnosis (the melanoma class's probability from the diagnosis head; "
                                 "needs the head) or mean (of the heads the model has: without the diagnosis "
                                 "head, the binary one)")


@dataclass
class TrainConfig:
    epochs: int = opt(8, "maximum epochs per fold")
    batch_size: int = opt(32, "global training batch size (over all processes and accumulation steps); train.lr is for it")
    accumulate: int = opt(1, "gradient accumulation: micro-batches per optimizer step")
    sync_bn: bool = opt(False, "SyncBatchNorm under torchrun (CUDA only): batch statistics over all "
                                "processes; timm's converter keeps each norm's activation")
    lr: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(1e-6, "final learning rate of the cosine schedule")
    warmup_epochs: float = opt(1.0, "linear warmup length in epochs")
    weight_decay: float = opt(1e-5, "L2 on weights (never on biases and norm weights)")
    lookahead_k: int = opt(5, "Lookahead: fast steps per slow update")
    lookahead_alpha: float = opt(0.5, "Lookahead: slow weights step size")
    mixup_prob: float = opt(0.5, "probability that a batch is mixed")
    mixup_alpha: float = opt(0.4, "mixup lambda ~ Beta(alpha, alpha)")
    bias_init: bool = opt(True, "initialise the head bias to the fold's log-odds (and the diagnosis head's to "
                                "the log of each class's share)")
    aux_weight: float = opt(0.0, "weight of the diagnosis head's cross-entropy beside the binary BCE; > 0 adds "
                                 "the head where data.diagnosis_col names a column (without one the model "
                                 "stays binary)")
    ema: bool = opt(False, "validate, checkpoint and predict with an exponential moving average of the weights "
                           "(timm ModelEmaV3)")
    ema_decay: float = opt(0.998, "EMA decay per optimizer step (timm's warmup: the first steps average fewer)")
    patience: int = opt(3, "early stopping: epochs without a better validation AUC")
    freeze_stages: int = opt(0, "backbone stem + first N stages (timm's group_matcher) frozen: no gradient, BN stats fixed")
    unfreeze_epoch: int = opt(0, "the frozen stages train again after this many epochs; 0 = never")
    seed: int = opt(42, "training seed")
    folds: list = opt([], "folds to train; [] = all")
    num_workers: int = opt(0, "data loader worker processes")
    deterministic: bool = opt(False, "torch.use_deterministic_algorithms: bit-identical reruns on CUDA (slower; "
                                     "on CPU the loop is deterministic without it, and it cost 17% of a step)")
    amp: bool = opt(True, "mixed precision on CUDA: bf16 on compute capability >= 8.0, "
                             "else fp16 with a GradScaler")
    cpu_bf16: bool = opt(False, "bf16 autocast on CPU")
    channels_last: bool = opt(True, "channels_last memory format")
    compile: bool = opt(False, "torch.compile (inductor) the training step and validation; the saved weights stay "
                               "the plain module's. Off: on the 2-core CPU it was slower than eager "
                               "(benchmarks/README.md); without a C++ compiler (CPU) or Triton (CUDA): eager, warned")
    compile_mode: str = opt("default", "inductor's mode for train.compile: default, reduce-overhead, max-autotune, "
                                       "max-autotune-no-cudagraphs")
    augment: str = opt("fused", "training augmentation: fused (one warp + one colour matrix) or albumentations (same ops, slower)")
    aug_scale: float = opt(0.1, "random scale jitter (+-)")
    aug_color: float = opt(0.1, "brightness/contrast/saturation jitter (+-)")


@dataclass
class Config:
    name: str = opt("sample", "experiment name: results go to <output_dir>/<name>")
    output_dir: str = opt("oof", "parent folder of experiments")
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def exp_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def __post_init__(self):
        """Every value's range, checked when the config is loaded: before any file is written."""
        d, f, m, t, i = self.data, self.features, self.model, self.train, self.infer
        checks = [
            (plain_name(self.name), f"name must be a plain folder name (not empty, no '/' or '\\', not '.' or "
                                     f"'..'), got {self.name!r}"),
            (self.output_dir.strip() != "", "output_dir must not be empty"),
            (self.folds.n_folds >= 2, "folds.n_folds must be at least 2"),
            (d.on_bad_image in ("fail", "skip"), "data.on_bad_image must be 'fail' or 'skip'"),
            (d.id_col != "" and d.target_col != "", "data.id_col and data.target_col must not be empty"),
            (f.fit_on in ("train", "train+test"), "features.fit_on must be 'train' or 'train+test'"),
            (0.0 <= f.max_bad_fraction <= 1.0, "features.max_bad_fraction must be in [0, 1]"),
            (m.backbone.strip() != "", "model.backbone must name a timm model"),
            (m.pretrained.strip() != "", f"model.pretrained must be one of {', '.join(PRETRAINED)} or a checkpoint file"),
            (16 <= m.image_size <= 4096, f"model.image_size must be between 16 and 4096 pixels, got {m.image_size}"),
            (len(m.meta_hidden) == 2 and all(isinstance(w, int) and w >= 1 for w in m.meta_hidden),
             f"model.meta_hidden must be two positive widths such as [128, 32], got {m.meta_hidden}"),
            (all(0.0 <= p < 1.0 for p in (m.meta_dropout, m.head_dropout, m.drop_path_rate)),
             "model.meta_dropout, model.head_dropout and model.drop_path_rate must be in [0, 1)"),
            (m.dropout_samples >= 1, "model.dropout_samples must be >= 1"),
            (m.predict in PREDICT, f"model.predict must be one of {', '.join(PREDICT)}, got {m.predict!r}"),
            (m.predict != "diagnosis" or (d.diagnosis_col and t.aux_weight > 0),
             "model.predict=diagnosis needs the diagnosis head: set data.diagnosis_col and train.aux_weight > 0"),
            (t.aux_weight >= 0, f"train.aux_weight must be >= 0, got {t.aux_weight}"),
            (d.diagnosis_col not in (d.id_col, d.target_col, d.group_col) or not d.diagnosis_col, f"data.diagnosis_col="
             f"{d.diagnosis_col} names the id, target or group column; the diagnosis is a column of its own (e.g. diagnosis)"),
            (d.diagnosis_min_rows >= 1 and 0.0 <= d.max_contradictions <= 1.0,
             "data.diagnosis_min_rows must be >= 1 and data.max_contradictions in [0, 1]"),
            (t.epochs >= 1, "train.epochs must be >= 1"),
            (t.batch_size >= 2, f"train.batch_size must be >= 2 (batch norm needs two rows), got {t.batch_size}"),
            (t.accumulate >= 1 and t.batch_size % t.accumulate == 0 and t.batch_size // t.accumulate >= 2,
             f"train.accumulate must be >= 1 and divide train.batch_size into micro-batches of at least 2 rows, "
             f"got batch_size {t.batch_size} and accumulate {t.accumulate}"),
            (t.lr > 0 and t.min_lr >= 0, "train.lr must be > 0 and train.min_lr >= 0"),
            (0 <= t.warmup_epochs <= t.epochs, "train.warmup_epochs must be in [0, train.epochs]"),
            (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (t.lookahead_k >= 1, "train.lookahead_k must be >= 1"),
            (0.0 < t.lookahead_alpha <= 1.0, "train.lookahead_alpha must be in (0, 1]"),
            (0.0 <= t.mixup_prob <= 1.0, "train.mixup_prob must be in [0, 1]"),
            (t.mixup_alpha > 0, "train.mixup_alpha must be > 0"),
            (0.0 < t.ema_decay < 1.0, "train.ema_decay must be in (0, 1)"),
            (t.patience >= 1, "train.patience must be >= 1"),
            (t.seed >= 0 and self.folds.seed >= 0, "train.seed and folds.seed must be >= 0"),
            (all(isinstance(k, int) and 0 <= k < self.folds.n_folds for k in t.folds),
             f"train.folds must be fold numbers in 0..{self.folds.n_folds - 1}, got {t.folds}"),
            (t.num_workers >= 0, "train.num_workers must be >= 0"),
            (t.augment in ("fused", "albumentations"), "train.augment must be 'fused' or 'albumentations'"),
            (0.0 <= t.aug_scale < 1.0 and 0.0 <= t.aug_color < 1.0, "train.aug_scale and train.aug_color must be in [0, 1)"),
            (1 <= i.tta <= 8, "infer.tta must be between 1 and 8"),
            (i.batch_size >= 1, "infer.batch_size must be >= 1"),
            (t.compile_mode in COMPILE_MODES and i.compile_mode in COMPILE_MODES,
             f"train.compile_mode and infer.compile_mode must be one of {', '.join(COMPILE_MODES)}, "
             f"got {t.compile_mode!r} and {i.compile_mode!r}"),
            *i.checks(),  # infer.backend, infer.precision (core/infer_config.py)
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


PRETRAINED = ("auto", "offline", "timm", "none")
PREDICT = ("binary", "diagnosis", "mean")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def plain_name(name: str) -> bool:
    """A single folder name: results of ``name=..`` or ``name=a/b`` would land outside output_dir."""
    return name.strip() not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _coerce(key: str, value, typ):
    """Check (and gently convert) one value against a field's annotated type."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, str):  # PyYAML reads exponents without a dot (1e-4) as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .inf passes every range check and trains NaN
                raise ConfigError(f"config key '{key}' expects a finite number, got {value!r}")
            return float(value)
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is dict:
        glued = [k for k, v in value.items() if v is None and ":" in str(k)] if isinstance(value, dict) else []
        if glued:  # YAML reads {MEL:melanoma} as {'MEL:melanoma': None}
            raise ConfigError(f"config key '{key}': the entry {glued[0]!r} has no value; YAML needs a space after "
                              f"the colon: {{{str(glued[0]).replace(':', ': ', 1)}}}")
        if isinstance(value, dict):
            return value
        if value is None:
            return {}
    elif typ is list:
        if isinstance(value, list):
            return value
        if value is None:
            return []
        return [value]
    raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r}")


def _update(obj, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        if not isinstance(key, str):  # YAML reads `1:` or `yes:` as a number or a boolean
            raise ConfigError(f"config key {prefix}{key!r} is not a name ({type(key).__name__}); keys are section "
                              f"and field names such as train.epochs")
        full = prefix + key
        if key not in hints:
            raise ConfigError(f"unknown config key '{full}' (see --help for the keys)")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give it a mapping")
            _update(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(full, value, typ))


def parse_overrides(items: list[str]) -> dict:
    """['train.epochs=3', 'model.backbone=x'] -> nested dict; values are read as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({str(e).splitlines()[0]})") from None
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # `train=1 train.epochs=2`
                raise ConfigError(f"override '{item}' sets a key inside '{'.'.join(parts[:i + 1])}', which another "
                                  f"override sets to a value")
        node[parts[-1]] = value
    return out


def from_dict(values: dict) -> Config:
    cfg = Config()
    _update(cfg, values or {})
    cfg.__post_init__()
    return cfg


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: a folder, not a config file")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it "
                          f"as UTF-8") from None
    except OSError as e:  # not allowed, a name too long for the file system, ...
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(paths: str | Path | list | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then each YAML file in turn (a later file overrides an earlier one key by key,
    e.g. a data layout then a training recipe), then the overrides; ranges checked at the end."""
    cfg = Config()
    for path in as_paths(paths):
        try:
            _update(cfg, read_yaml(path))
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    return with_overrides(cfg, overrides or [])


def as_paths(paths: str | Path | list | None) -> list:
    """``load_config``'s ``paths`` as a list: none, one file or several."""
    return [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied and checked (in place)."""
    try:
        _update(cfg, parse_overrides(overrides))
    except ConfigError as e:
        raise ConfigError(f"{e} (in the command-line overrides)") from None
    cfg.__post_init__()
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def help_text() -> str:
    """Every config key with its default and help line, for ``--help``."""
    lines = ["config keys (override with section.key=value):"]

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                lines.append(f"  {prefix + f.name:<28} = {value!r:<26} {f.metadata.get('help', '')}")

    walk(Config(), "")
    return "\n".join(lines)
