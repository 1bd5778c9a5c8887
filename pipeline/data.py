"""Tables, the decoded-image cache, the dataset (image + meta + target) and its loaders.

Each source image is decoded and resized to the training size once, into a uint8 array
(N, S, S, 3) saved as ``.npy`` and memory-mapped afterwards: later epochs, folds and inference
read pixels, not JPEGs. The cache key covers the files' paths, sizes and modification times and
the image size, so it is rebuilt when any of them changes.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .folders import check_writable
from .io import atomic_write, write_json


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


def file_digest(data: bytes) -> str:
    """Content hash of an image file: what an experiment records of each image it was trained on."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _read(path: Path, size: int):
    """(pixels, reason it cannot be decoded or None, digest of the file's bytes): one read of the file."""
    data = b""
    try:
        data = path.read_bytes()
        return decode(io.BytesIO(data), size), None, file_digest(data)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # unreadable, corrupt, truncated, not an image
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return np.zeros((size, size, 3), np.uint8), reason, file_digest(data)


class ImageCache(NamedTuple):
    images: np.ndarray   # (N, S, S, 3) uint8, memory-mapped
    bad: dict            # {row: why it cannot be decoded}; those rows hold zeros
    digests: list        # file_digest of each source file, in row order


def cache_bytes(n: int, size: int) -> int:
    """What a cache of ``n`` images at ``size`` px takes on disk: the array, its header, its .json."""
    return n * size * size * 3 + 4096 + 64 * n


def reserve(path: Path) -> None:
    """Allocate the blocks of the whole (sparse) file now: a memory-mapped write that finds the disk
    full kills the process with SIGBUS, where this raises ENOSPC before any pixel is decoded."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the free-space check before it stands alone
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # those: the file system cannot
                raise


def build_cache(paths: list[Path], size: int, cache_dir: Path, desc: str = "cache") -> ImageCache:
    """Memory-mapped uint8 array of all images at ``size``, built once per key, with the images that
    could not be decoded and each file's content digest (kept beside the array in ``.json``). Its
    size is known in advance: a cache folder that cannot be written, or a disk without the room, is
    a StorageError before the first image is decoded, and a failed build leaves no partial file."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{desc}_{size}px_{cache_key(paths, size)}.npy"
    info_path = target.with_suffix(".json")
    # The .json is written after the array: an array without it is from a build that stopped in between.
    if not (target.exists() and info_path.exists()):
        check_writable(cache_dir, cache_bytes(len(paths), size), f" the image cache of {len(paths)} {desc} images "
                       f"at {size} px", advice="set data.cache_dir to a folder on another disk")
        info = {"bad": {}, "digests": [""] * len(paths)}

        def write(tmp: Path):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
            reserve(tmp)
            threads = min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool:
                decoded = pool.map(lambda p: _read(p, size), paths)
                for i, (img, err, digest) in enumerate(tqdm(decoded, total=len(paths), leave=False,
                                                            desc=f"decoding {desc} images at {size}px")):
                    arr[i] = img
                    info["digests"][i] = digest
                    if err:
                        info["bad"][i] = err
            arr.flush()
            del arr
        atomic_write(target, write)
        write_json(info_path, info)
    info = json.loads(info_path.read_text())
    return ImageCache(np.load(target, mmap_mode="r"), {int(k): v for k, v in info["bad"].items()}, info["digests"])


# Colour jitter's constants: Rec. 601 luma of an RGB pixel, the matrix that turns a pixel into its
# grey, and the cross-product and outer-product matrices of the unit grey axis (a hue rotation).
LUMA = np.array([0.299, 0.587, 0.114])
GREY = np.outer(np.ones(3), LUMA)
_U = 3 ** -0.5
GREY_CROSS = np.array([[0, -_U, _U], [_U, 0, -_U], [-_U, _U, 0]])
GREY_OUTER = np.full((3, 3), _U * _U)
FLIPS = [np.array(m, float) for m in ([[-1, 0, 1], [0, 1, 0], [0, 0, 1]],  # horizontal (x -> last - x)
                                      [[1, 0, 0], [0, -1, 1], [0, 0, 1]],  # vertical
                                      [[0, 1, 0], [1, 0, 0], [0, 0, 1]])]  # transpose


class FusedAugment:
    """The default training augmentation: a random flip/transpose, rotation and scale warped in one
    cv2.warpAffine, then brightness, contrast, saturation and hue jitter applied as one 3x4 colour
    matrix (cv2.transform, saturating to uint8). The same operations as ``AlbumentationsAugment``
    without its per-transform overhead (timings in benchmarks/README.md). Images are square (the cache's)."""

    def __init__(self, scale: float, color: float, p_affine: float = 0.7, p_color: float = 0.7):
        self.scale, self.color, self.p_affine, self.p_color = scale, color, p_affine, p_color

    def geometry(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """3x3 pixel-coordinate matrix: a random element of the 8 flips/transposes, then (with
        p_affine) a rotation in [-180, 180] degrees and a scale in 1 +- scale about the centre."""
        m, last = np.eye(3), size - 1
        for flip, draw in zip(FLIPS, rng.random(3)):
            if draw < 0.5:
                flip = flip.copy()
                flip[:2, 2] *= last
                m = flip @ m
        if rng.random() < self.p_affine:
            angle, scale = rng.uniform(-180, 180), rng.uniform(1 - self.scale, 1 + self.scale)
            m = np.vstack([cv2.getRotationMatrix2D((last / 2, last / 2), angle, scale), [0, 0, 1]]) @ m
        return m

    def colour(self, mean_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """3x4 matrix [M | offset] for brightness, contrast (towards the mean grey), saturation
        (towards each pixel's grey) and a hue rotation about the grey axis, each drawn in turn."""
        c = self.color
        brightness, contrast, saturation = rng.uniform(1 - c, 1 + c, 3)
        theta = 2 * np.pi * rng.uniform(-c / 5, c / 5)
        # brightness scales; contrast blends with the mean grey (of the brightened image)
        m = np.zeros((3, 4))
        m[:, :3] = brightness * contrast * np.eye(3)
        m[:, 3] = (1 - contrast) * brightness * (LUMA @ mean_rgb)
        sat = saturation * np.eye(3) + (1 - saturation) * GREY
        hue = np.cos(theta) * np.eye(3) + np.sin(theta) * GREY_CROSS + (1 - np.cos(theta)) * GREY_OUTER  # Rodrigues
        return (hue @ sat @ m).astype(np.float32)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = img.shape[0]
        m = self.geometry(size, rng)
        if not np.array_equal(m, np.eye(3)):
            img = cv2.warpAffine(img, m[:2], (size, size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < self.p_color:
            img = cv2.transform(img, self.colour(np.array(cv2.mean(img)[:3]), rng))
        return img


class AlbumentationsAugment:
    """The same augmentation as ``FusedAugment`` built from albumentations transforms
    (``train.augment: albumentations``): slower per image, a base to extend with other transforms."""

    def __init__(self, scale: float, color: float):
        self.compose = A.Compose([
            A.HorizontalFlip(), A.VerticalFlip(), A.Transpose(),
            A.Affine(scale=(1 - scale, 1 + scale), rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.ColorJitter(brightness=color, contrast=color, saturation=color, hue=color / 5, p=0.7),
        ])

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # One random stream shared by the transforms in turn (Compose.set_random_seed would give each
        # transform the same seed: identical draws, so all flips fired together).
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**32))))
        return self.compose(image=img)["image"]


def train_transform(kind: str, scale: float, color: float):
    """Dermoscopy suits any flip, transpose and rotation; scale and colour jitter stay mild and
    nothing is cropped away (the lesion is usually central). Returns ``f(uint8 HWC image, rng)``."""
    return {"fused": FusedAugment, "albumentations": AlbumentationsAugment}[kind](scale, color)


class ImageMetaDataset(Dataset):
    """Yields (uint8 HWC image, float32 meta vector, float32 target) from the cache.

    Augmentation is seeded from (seed, epoch, index), so an epoch is reproducible whatever the
    worker count and after a resume.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, meta: np.ndarray, targets: np.ndarray | None,
                 transform=None, seed: int = 0):
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
        img = self.images[self.rows[i]]  # a read-only view of the cached pixels
        if self.transform is not None:
            seed = (self.seed * 1_000_003 + self.epoch * 7919 + i) % 2**32  # one random stream per sample
            img = self.transform(img, np.random.default_rng(seed))  # usually a new array already
        if not (img.flags.writeable and img.flags.c_contiguous):
            img = np.array(img)  # torch gets its own writable, contiguous pixels
        return torch.from_numpy(img), torch.from_numpy(self.meta[i]), self.targets[i]


class SeededShuffle(Sampler):
    """A permutation drawn from the generator's last ``manual_seed`` alone. RandomSampler draws from
    the generator's state, which a fresh loader iterator advances first and a persistent one does
    not: with workers, epoch 2 on would differ from a resumed run.

    With ``batch`` (the global batch), only whole global batches are yielded (the last incomplete
    one is dropped) and, under torchrun, each of the ``world`` ranks yields its own contiguous
    ``batch / world`` share of every global batch: every global batch is the same whatever the
    number of processes, and every row is used at most once an epoch over all ranks."""

    def __init__(self, n: int, generator: torch.Generator, batch: int | None = None, rank: int = 0, world: int = 1):
        self.n, self.generator, self.last_seed, self.repeats = n, generator, None, 0
        self.batch, self.rank, self.world = batch, rank, world

    def __len__(self):
        return self.n if self.batch is None else (self.n // self.batch) * (self.batch // self.world)

    def __iter__(self):
        seed = self.generator.initial_seed()
        self.repeats = self.repeats + 1 if seed == self.last_seed else 0  # not reseeded: still a new order
        self.last_seed = seed
        g = torch.Generator().manual_seed(seed + 7919 * self.repeats)
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.batch is None:
            return iter(perm)
        share = self.batch // self.world
        return iter([i for start in range(0, self.n - self.batch + 1, self.batch)
                     for i in perm[start + self.rank * share:start + (self.rank + 1) * share]])


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False, drop_last: bool = False, global_batch: int | None = None,
                rank: int = 0, world: int = 1) -> DataLoader:
    """``global_batch`` (with shuffle): the rows of whole global batches only, this rank's share,
    in ``batch_size`` micro-batches (see SeededShuffle)."""
    gen = torch.Generator().manual_seed(seed)
    sampler = SeededShuffle(len(ds), gen, global_batch, rank, world) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=gen,
                      pin_memory=pin_memory, drop_last=drop_last, persistent_workers=num_workers > 0)
