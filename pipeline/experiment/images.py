"""The images an experiment's model saw: each training row's pixels at the trained size, as the
training loop read them (before augmentation), and the row as data.csv recorded it.

    trained = open_trained(Path("oof/a"))       # config.yaml and data.csv; .problem says what is missing
    seen = seen_images(trained, ["ISIC_1"])     # {id: Seen(pixels (S, S, 3) uint8 or None, note)}

The pixels come from the decoded-image cache in ``data.cache_dir`` when it holds them, else from
the image file itself, decoded as the cache decodes it (``data/cache.py``). A cached image is found by
its content: data.csv records each row's image hash, and each cache's ``.json`` the hash of every
image it decoded, so the pixels are those of the file the model was trained on even after the file
was replaced (which changes the cache key). A file read instead whose hash is not the recorded one
has changed since training: its note says so.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import Config
from pipeline.core.errors import PipelineError
from pipeline.data.cache import decode, file_digest
from pipeline.experiment.record import read_record, saved_config


class Trained(NamedTuple):
    cfg: Config | None         # the experiment's config.yaml (None when it has none)
    record: pd.DataFrame       # data.csv indexed by id, every value as text (empty when it has none)
    problem: str               # why there is no image to show ('' when both files were read)


class Seen(NamedTuple):
    pixels: np.ndarray | None  # (S, S, 3) uint8 at model.image_size; None when not found
    note: str                  # why it is missing, or that the file changed since training; '' otherwise


def open_trained(exp_dir: Path) -> Trained:
    """``exp_dir``'s config.yaml and data.csv; a missing or unreadable one is named in ``problem``."""
    exp_dir = Path(exp_dir)
    cfg, record = None, pd.DataFrame()
    try:
        if (exp_dir / "config.yaml").is_file():
            cfg = saved_config(exp_dir / "config.yaml")
        if (exp_dir / "data.csv").is_file():
            record = read_record(exp_dir / "data.csv")
            record = record.set_index(record.columns[0], drop=False)
    except PipelineError as e:
        return Trained(None, pd.DataFrame(), str(e))
    missing = [name for name, ok in (("config.yaml", cfg is not None), ("data.csv", len(record.columns))) if not ok]
    problem = f"{exp_dir}: no {' and no '.join(missing)} (the record of its training images)" if missing else ""
    return Trained(cfg, record, problem)


def meta_columns(cfg: Config) -> list[str]:
    """The table columns the meta features are made of, as configured."""
    return list(dict.fromkeys([*cfg.features.categorical, *cfg.features.numeric]))


def image_file(cfg: Config, row_id: str) -> Path:
    """Where a training row's image file lies (``<data.root>/<data.train_images>/<id><data.image_ext>``)."""
    d = cfg.data
    return Path(d.root) / d.train_images / f"{row_id}{d.image_ext}"


def cached_rows(cache_dir: Path, size: int, digests: set[str]) -> dict[str, tuple[Path, int]]:
    """For each of ``digests`` that a training-image cache at ``size`` px holds decoded: (its array,
    row). Rows the cache lists as unread hold zeros and are not counted."""
    found = {}
    for info_path in sorted(Path(cache_dir).glob(f"train_{size}px_*.json")):
        array = info_path.with_suffix(".npy")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if not array.is_file():
            continue
        unread = set(info.get("unread", info.get("bad", [])))
        for row, digest in enumerate(info.get("digests", [])):
            if digest in digests and digest not in found and row not in unread:
                found[digest] = (array, row)
    return found


def from_file(cfg: Config, row_id: str, digest: str | None) -> Seen:
    """The row's image file decoded at the trained size, as the cache would decode it."""
    path = image_file(cfg, row_id)
    try:
        data = path.read_bytes()
        pixels = decode(io.BytesIO(data), cfg.model.image_size)
    except FileNotFoundError:
        return Seen(None, f"image not found: not in the cache, and no file {path}")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return Seen(None, f"image not readable: {path} ({type(e).__name__})")
    changed = digest is not None and file_digest(data) != digest
    return Seen(pixels, f"{path} changed since training: shown as it is now" if changed else "")


def seen_images(trained: Trained, ids) -> dict[str, Seen]:
    """The pixels of rows ``ids`` as the experiment's model saw them (see the module's docstring)."""
    ids = list(ids)
    if trained.problem:
        return {i: Seen(None, f"image not found: {trained.problem}") for i in ids}
    cfg, record = trained.cfg, trained.record
    known = record.index.intersection(ids)
    sha = record["image_sha"].loc[known].to_dict() if "image_sha" in record.columns else {}
    cached = cached_rows(Path(cfg.data.cache_dir), cfg.model.image_size, set(sha.values()))
    arrays, out = {}, {}
    for i in ids:
        if i not in known:
            out[i] = Seen(None, "image not found: not a row of data.csv")
        elif sha.get(i) in cached:
            array, row = cached[sha[i]]
            if array not in arrays:
                arrays[array] = np.load(array, mmap_mode="r")
            out[i] = Seen(np.array(arrays[array][row]), "")
        else:
            out[i] = from_file(cfg, i, sha.get(i))
    return out
