"""The decoded-image cache: each source image decoded and resized once.

Each source image is decoded and resized to the training size once, into a uint8 array
(N, S, S, 3) saved as ``.npy`` and memory-mapped afterwards: later epochs, folds and inference
read pixels, not JPEGs. The cache key covers the files' paths, sizes and modification times and
the image size, so it is rebuilt when any of them changes.

A file that could not be read or decoded is not judged for good: its row is listed in the ``.json``
as unread, and every later call reads it again, writing its pixels in once it decodes (a permission
fixed by ``chmod`` keeps size and mtime, and so the key). Processes that need the same cache (folds
trained in parallel) share it: one builds it holding its lock (``pipeline/core/lock.py``), the others
wait, then read it; a dead builder's lock is taken over by the next waiter.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.disk import check_writable, storage_error
from pipeline.core.errors import LockedError
from pipeline.core.files import atomic_write, write_json
from pipeline.core.lock import Lock

ADVICE = "set data.cache_dir to a folder on another disk"
WAIT_POLL_S = 0.5  # how often a process waiting for another's build looks at its lock


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
    data, buffer = b"", None
    try:
        data = path.read_bytes()
        buffer = io.BytesIO(data)
        return decode(buffer, size), None, file_digest(data)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # unreadable, corrupt, truncated, not an image
        said = str(e) if buffer is None else str(e).replace(f" {buffer!r}", "")  # PIL names "<_io.BytesIO ...>"
        reason = f"{type(e).__name__}: {said.splitlines()[0] if said else ''}"
        return np.zeros((size, size, 3), np.uint8), reason, file_digest(data)


class ImageCache(NamedTuple):
    images: np.ndarray   # (N, S, S, 3) uint8, memory-mapped
    bad: dict            # {row: why it could not be decoded in this call}; those rows hold zeros
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
    cannot be decoded now and each file's content digest (kept beside the array in ``.json``). One
    process builds it, holding ``<name>.lock``; another that needs it meanwhile waits, then reads it.
    A cache folder that cannot be written, or a disk without the room, is a StorageError before the
    first image is decoded, and a failed build leaves no partial file. The rows that could not be
    read are read again by every later call (``_read_again``)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{desc}_{size}px_{cache_key(paths, size)}.npy"
    what = f" the image cache of {len(paths)} {desc} images at {size} px"
    bad = None
    if not _complete(target):
        check_writable(cache_dir, what=what, advice=ADVICE)
        lock = Lock(target.with_suffix(".lock"), what.strip(), hint="waiting for it to finish", doing="being built")
        with _wait_for(lock):
            if not _complete(target):  # else: built by the process this one waited for
                check_writable(cache_dir, cache_bytes(len(paths), size), what, advice=ADVICE)
                bad = _build(paths, size, target, desc)
    if bad is None:
        bad = _read_again(paths, size, target, what)
    info = json.loads(target.with_suffix(".json").read_text())
    return ImageCache(np.load(target, mmap_mode="r"), bad, info["digests"])


def _complete(target: Path) -> bool:
    # The .json is written after the array: an array without it is from a build that stopped in between.
    return target.exists() and target.with_suffix(".json").exists()


def _wait_for(lock: Lock) -> Lock:
    """``lock``, taken once no live process holds it (said once while waiting); the lock of a dead
    holder is recovered by ``Lock.acquire``."""
    said = False
    while True:
        try:
            return lock.acquire()
        except LockedError as e:
            if not said:
                print(e, flush=True)
                said = True
        time.sleep(WAIT_POLL_S)


def _build(paths: list[Path], size: int, target: Path, desc: str) -> dict:
    """Decode every image into ``target``; its ``.json`` holds the digests and, as ``unread``, the
    rows that could not be decoded (zeros). Returns those rows with the reason."""
    print(f"building the image cache of {len(paths)} {desc} images at {size} px: {target}", flush=True)
    bad, digests = {}, [""] * len(paths)

    def write(tmp: Path):
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        reserve(tmp)
        threads = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            decoded = pool.map(lambda p: _read(p, size), paths)
            for i, (img, err, digest) in enumerate(tqdm(decoded, total=len(paths), leave=False,
                                                        desc=f"decoding {desc} images at {size}px")):
                arr[i] = img
                digests[i] = digest
                if err:
                    bad[i] = err
        arr.flush()
        del arr
    atomic_write(target, write)
    write_json(target.with_suffix(".json"), {"digests": digests, "unread": sorted(bad)})
    return bad


def _read_again(paths: list[Path], size: int, target: Path, what: str) -> dict:
    """Read again the rows that the cache's ``.json`` lists as unread; those that decode now are
    written into it (``_fill``). Returns the others with the reason."""
    info = json.loads(target.with_suffix(".json").read_text())
    unread = [int(i) for i in info.get("unread", info.get("bad", []))]  # "bad": a cache of an older version
    read = {i: _read(paths[i], size) for i in unread}
    fixed = {i: r for i, r in read.items() if r[1] is None}
    if fixed:
        _fill(target, fixed, {"digests": info["digests"], "unread": [i for i in unread if i not in fixed]}, what)
    return {i: r[1] for i, r in read.items() if r[1] is not None}


def _fill(target: Path, fixed: dict, info: dict, what: str) -> None:
    """Write the ``fixed`` rows' pixels and digests into the cache, the array first: its ``.json``,
    replaced last, never lists a row as decoded whose pixels are not in the array. No lock: processes
    doing this at once write the same pixels, and rows only ever leave the list, so whichever
    ``.json`` lands last lists at most a few rows too many, read again next time."""
    check_writable(target.parent, what=what, advice=ADVICE)
    try:
        arr = np.load(target, mmap_mode="r+")
        for i, (img, _, digest) in fixed.items():
            arr[i] = img
            info["digests"][i] = digest
        arr.flush()
        del arr
    except OSError as e:
        raise storage_error(target, e) or e from None
    write_json(target.with_suffix(".json"), info)
