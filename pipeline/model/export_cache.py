"""The cache of an exported model: one file beside the fold's best.pt, ``export-<backend>-<precision>.zip``,
holding the graph and ``key.json``, the key it was made for (``export.cache_key``: best.pt's digest,
the backend and its version, image size, precision, read-out, meta columns, normalisation,
calibration rows).

A file whose key differs in any part is stale and made again; a file that cannot be read (a damaged
zip, a failed CRC, a graph the backend refuses) is made again after one warning line. The file is
written atomically (``core.files.atomic_write``), so a killed export leaves the old file or none.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.files import atomic_write


@dataclass
class ExportCache:
    """Where a fold's exports are kept: beside ``checkpoint`` (its best.pt), written there when
    ``write`` (rank 0 only under torchrun)."""
    checkpoint: Path
    write: bool = True

    @property
    def label(self) -> str:
        return self.checkpoint.parent.name

    def weights(self) -> str:
        """The checkpoint file's content digest: the weights the export was made from."""
        h = hashlib.blake2b(digest_size=16)
        with open(self.checkpoint, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


def read_members(path: Path) -> dict:
    """Every member of the zip at ``path``, its CRC checked."""
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_members(path: Path, members: dict) -> None:
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, data in members.items():
                z.writestr(name, data)
    atomic_write(path, write)


def why_not(found: dict, key: dict) -> str:
    saved = json.loads(found.pop("key.json"))
    stale = [k for k in key if saved.get(k) != key[k]]
    return f"stale: {', '.join(stale)}" if stale else ""


def cached(cache: ExportCache, name: str, key: dict, build: Callable[[], dict], load: Callable[[dict], object]):
    """``load`` of the export kept as ``name`` beside the checkpoint when its key is ``key``; else
    ``load`` of ``build()``, written there for the next time. Prints which, and how long a build took."""
    path = cache.checkpoint.parent / name
    where = f"{cache.label}/{name}"
    why = "none yet"
    if path.exists():
        try:
            found = read_members(path)
            why = why_not(found, key)
            if not why:
                runner = load(found)
                print(f"{where}: reused")
                return runner
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, it is made again
            text = str(e).strip().splitlines()
            print(f"warning: {where}: cannot be read ({type(e).__name__}: {text[0] if text else ''}); exporting "
                  f"it again", file=sys.stderr)
            why = "damaged"
    start = time.time()
    members = build()
    if cache.write:
        write_members(path, {"key.json": json.dumps(key, indent=1, sort_keys=True).encode(), **members})
    runner = load(members)
    print(f"{where}: built in {time.time() - start:.0f}s ({why})")
    return runner
