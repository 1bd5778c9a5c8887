"""The ``log.*`` keys: which experiment tracker a training run logs to, and where.

Kept beside ``config.py`` (whose ``Config`` holds it as its ``log`` section); what is logged, and how,
is in ``pipeline/experiment/tracker.py``. Each tracker is an optional package: ``PACKAGES`` names what
to pip install for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.errors import ConfigError

TRACKERS = ("none", "mlflow", "tensorboard", "wandb")
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
DEFAULT_PROJECT = "melanoma-pipeline"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class LogConfig:
    tracker: str = _opt("none", "experiment tracker: none, mlflow, tensorboard (<exp>/tensorboard) or wandb "
                                "(offline unless logged in); rank 0 logs the config, each epoch and the OOF AUC")
    tracking_uri: str = _opt("", "MLflow's tracking URI; '' = sqlite:///<output_dir>/mlruns/mlflow.db, the "
                                 "artifacts in <output_dir>/mlruns/artifacts")
    project: str = _opt(DEFAULT_PROJECT, "the MLflow experiment or W&B project the runs go to")

    def __setattr__(self, key: str, value) -> None:
        """Each value checked as it is set (by the config loader): the ranges of this section."""
        if key == "tracker" and value not in TRACKERS:
            raise ConfigError(f"log.tracker must be one of {', '.join(TRACKERS)}, got {value!r}")
        if key == "project" and not str(value).strip():
            raise ConfigError("log.project must not be empty")
        super().__setattr__(key, value)
