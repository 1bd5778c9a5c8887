"""Tables, the decoded-image cache, the dataset (image + meta + target) and its loaders.

Each source image is decoded and resized to the training size once, into a uint8 array
(N, S, S, 3) saved as ``.npy`` and memory-mapped afterwards: later epochs, folds and inference
read pixels, not JPEGs. The cache key covers the files' paths, sizes and modification times and
the image size, so it is rebuilt when any of them changes.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .io import atomic_write


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


def build_cache(paths: list[Path], size: int, cache_dir: Path, desc: str = "cache") -> np.ndarray:
    """Memory-mapped uint8 array of all images at ``size``; built once per key."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{desc}_{size}px_{cache_key(paths, size)}.npy"
    if not target.exists():
        def write(tmp: Path):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
            threads = min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool:
                for i, img in enumerate(tqdm(pool.map(lambda p: decode(p, size), paths), total=len(paths),
                                             desc=f"decoding {desc} images at {size}px", leave=False)):
                    arr[i] = img
            arr.flush()
            del arr
        atomic_write(target, write)
    return np.load(target, mmap_mode="r")


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
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        img = np.array(self.images[self.rows[i]])  # a writable copy of the cached pixels
        if self.transform is not None:
            self.transform.set_random_seed((self.seed * 1_000_003 + self.epoch * 7919 + i) % 2**32)
            img = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(self.meta[i]), self.targets[i]


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=gen,
                      pin_memory=pin_memory, drop_last=drop_last, persistent_workers=num_workers > 0)
