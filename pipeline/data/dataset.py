"""The dataset (cached image + meta vector + target) and its loaders, seeded so that an epoch
replays exactly after a resume, whatever the worker count or number of processes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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
