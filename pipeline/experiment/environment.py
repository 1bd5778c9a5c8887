"""The environment of a run (env.json): package versions, device, seed, git commit, the weights the
backbone started from; a resumed run on another machine keeps the earlier ones.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.files import write_json
from pipeline.model.pretrained import weights_source


def _git(*args: str) -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def environment(cfg: Config) -> dict:
    """Package versions, device, seed, git commit and the backbone's starting weights (``backbone_weights``:
    ``pretrained.weights_source``) of this run (env.json)."""
    import albumentations  # the versions only
    import numpy
    import sklearn
    import timm
    import torch
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "pandas": pd.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "device": "cuda" if cuda else "cpu",
            "gpu": torch.cuda.get_device_name() if cuda else None, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "seed": cfg.train.seed, "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain")),
            "backbone_weights": weights_source(cfg.model.backbone, cfg.model.pretrained)}


def record_environment(path: Path, env: dict) -> None:
    """Write env.json. A resumed run on another machine, package set or commit keeps the earlier
    environments under 'earlier' (folds trained there may not be bit-identical) and warns."""
    earlier = []
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        old = None
    if isinstance(old, dict):
        earlier = old.pop("earlier", [])
        changed = [k for k in env if old.get(k) != env[k]]
        if changed:
            print(f"warning: the environment changed since {path} was written ({', '.join(changed)}); "
                  f"the earlier one is kept in it", file=sys.stderr)
            earlier.append(old)
    write_json(path, {**env, **({"earlier": earlier} if earlier else {})})
