"""The decoded-image cache: each source image decoded and resized once.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.disk import check_writable
from pipeline.core.files import atomic_write, write_json


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
