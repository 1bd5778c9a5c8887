"""Tables, the decoded-image cache, the dataset (image + meta + target) and its loaders.

Each source image is decoded and resized to the training size once, into a uint8 array
(N, S, S, 3) saved as ``.npy`` and memory-mapped afterwards: later epochs, folds and inference
read pixels, not JPEGs. The cache key covers the files' paths, sizes and modification times and
the image size, so it is rebuilt when any of them changes.
"""
from __future__ import annotations

import hashlib
import json
import random
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .io import atomic_write, write_json


def read_table(path: Path, id_col: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype={id_col: "string"})


def image_paths(ids, folder: Path, ext: str) -> list[Path]:
    return [folder / f"{i}{ext}" for i in ids]


def decode(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3); grayscale, palette and RGBA images are converted."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: let libjpeg decode at a reduced scale
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(im, dtype=np.uint8)


def cache_key(paths: list[Path], size: int) -> str:
    h = hashlib.sha1(str(size).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _try_decode(path: Path, size: int):
    try:
        return decode(path, size), None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # corrupt, truncated, not an image
        return np.zeros((size, size, 3), np.uint8), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def build_cache(paths: list[Path], size: int, cache_dir: Path, desc: str = "cache") -> tuple[np.ndarray, dict]:
    """Memory-mapped uint8 array of all images at ``size``, built once per key, and the images that
    could not be decoded ({row: reason}, kept beside the array; their pixels are zeros)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{desc}_{size}px_{cache_key(paths, size)}.npy"
    bad_path = target.with_suffix(".bad.json")
    if not target.exists():
        bad = {}

        def write(tmp: Path):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
            threads = min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool:
                decoded = pool.map(lambda p: _try_decode(p, size), paths)
                for i, (img, err) in enumerate(tqdm(decoded, total=len(paths), leave=False,
                                                    desc=f"decoding {desc} images at {size}px")):
                    arr[i] = img
                    if err:
                        bad[i] = err
            arr.flush()
            del arr
            write_json(bad_path, bad)
        atomic_write(target, write)
    bad = {int(k): v for k, v in json.loads(bad_path.read_text()).items()} if bad_path.exists() else {}
    return np.load(target, mmap_mode="r"), bad


def train_transform(aug_scale: float, aug_color: float) -> A.Compose:
    """Dermoscopy suits any flip, transpose and rotation; scale and colour jitter stay mild and
    nothing is cropped away (the lesion is usually central)."""
    return A.Compose([
        A.HorizontalFlip(), A.VerticalFlip(), A.Transpose(),
        A.Affine(scale=(1 - aug_scale, 1 + aug_scale), rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.ColorJitter(brightness=aug_color, contrast=aug_color, saturation=aug_color, hue=aug_color / 5, p=0.7),
    ])


class ImageMetaDataset(Dataset):
    """Yields (uint8 HWC image, float32 meta vector, float32 target) from the cache.

    Augmentation is seeded from (seed, epoch, index), so an epoch is reproducible whatever the
    worker count and after a resume.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, meta: np.ndarray, targets: np.ndarray | None,
                 transform: A.Compose | None = None, seed: int = 0):
        self.images, self.rows, self.meta = images, np.asarray(rows), meta.astype(np.float32)
        self.targets = np.zeros(len(rows), np.float32) if targets is None else targets.astype(np.float32)
        self.transform, self.seed = transform, seed
        # In shared memory: persistent loader workers hold a copy of the dataset and must see it change.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int):
        self._epoch.fill_(epoch)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        img = np.array(self.images[self.rows[i]])  # a writable copy of the cached pixels
        if self.transform is not None:
            # One random stream per sample, shared by all the transforms in turn (Compose.set_random_seed
            # would give each transform the same seed: identical draws, so all flips fired together).
            seed = (self.seed * 1_000_003 + self.epoch * 7919 + i) % 2**32
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            img = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(self.meta[i]), self.targets[i]


class SeededShuffle(Sampler):
    """A permutation drawn from the generator's last ``manual_seed`` alone. RandomSampler draws from
    the generator's state, which a fresh loader iterator advances first and a persistent one does
    not: with workers, epoch 2 on would differ from a resumed run."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.last_seed, self.repeats = n, generator, None, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        seed = self.generator.initial_seed()
        self.repeats = self.repeats + 1 if seed == self.last_seed else 0  # not reseeded: still a new order
        self.last_seed = seed
        g = torch.Generator().manual_seed(seed + 7919 * self.repeats)
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    sampler = SeededShuffle(len(ds), gen) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=gen,
                      pin_memory=pin_memory, drop_last=drop_last, persistent_workers=num_workers > 0)
