"""What a command was given, as opposed to what it left at the defaults: the dotted keys its
``--config`` files and overrides set (``given_keys``), and the keys that do nothing without another
one (``check_given``). infer.py takes the keys it was not given from the experiment it predicts.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from pipeline.core.config import Config, as_paths, parse_overrides, read_yaml
from pipeline.core.errors import ConfigError

# Keys that do something only beside another key's value: (key, that value, whether cfg has it).
NEEDS = [("train.compile_mode", "train.compile=true", lambda c: c.train.compile),
         ("infer.compile_mode", "infer.backend=compile", lambda c: c.infer.backend == "compile"),
         *[(f"data.{k}", "data.diagnosis_col", lambda c: bool(c.data.diagnosis_col))
           for k in ("diagnosis_min_rows", "melanoma_class", "max_contradictions", "external_diagnosis")],
         ("data.external_diagnosis", "data.external_csv", lambda c: bool(c.data.external_csv)),
         ("log.tracking_uri", "log.tracker=mlflow", lambda c: c.log.tracker == "mlflow"),
         ("log.project", "log.tracker=mlflow or wandb", lambda c: c.log.tracker in ("mlflow", "wandb"))]


def check_given(cfg: Config, given: set[str]) -> None:
    """A key the command was given that does nothing with the rest of ``cfg`` (NEEDS) is refused,
    never dropped in silence."""
    for key, needs, met in NEEDS:
        if key in given and not met(cfg):
            raise ConfigError(f"{key} does nothing without {needs}: give {needs} too, or leave {key} out")


def given_keys(paths: str | Path | list | None = None, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys that the YAML files and the overrides set (``load_config``'s arguments, loaded
    without error by it): the keys a command was given, as opposed to those left at their defaults."""
    keys: set[str] = set()
    for values in [*map(read_yaml, as_paths(paths)), parse_overrides(overrides or [])]:
        keys |= _leaf_keys(Config(), values)
    return keys


def _leaf_keys(obj, values: dict, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(type(obj))
    out: set[str] = set()
    for key, value in values.items():
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            out |= _leaf_keys(getattr(obj, key), value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out
