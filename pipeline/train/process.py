"""The process around the loop: its one-time tuning (malloc, OpenCV threads, inductor's cache,
deterministic algorithms), Ctrl-C between steps, and its peak memory.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import signal
import sys

import cv2
import torch

from pipeline.core.config import Config
from pipeline.model.backends import use_cache


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Tell glibc's malloc to keep freed blocks up to ``limit`` bytes for reuse rather than hand them
    back to the OS: by default every large tensor (activations, gradients) is a fresh mmap, and each
    training step page-faults its memory in again (measured in benchmarks/README.md). The cost is
    that resident memory stays at its peak. Linux with glibc only; elsewhere nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


@functools.cache
def _tune_once() -> None:
    keep_freed_memory()
    cv2.setNumThreads(1)


def tune_process(cfg: Config | None = None) -> None:
    """The process-wide switches of a command that trains or predicts, made by the entry points (train,
    infer, the benchmarks), never on import: glibc keeps freed memory, and OpenCV runs on one thread
    (its thread pool, the augmentation's warps, spins waiting for work after each call on the cores
    torch's threads need for the step that follows: benchmarks/README.md). With the command's config:
    inductor's cache under ``data.cache_dir`` (train.compile, infer.backend=compile) and, with
    ``train.deterministic``, torch's deterministic algorithms."""
    _tune_once()
    if cfg is not None:
        use_cache(cfg.data.cache_dir)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)


class StopFlag:
    """Ctrl-C sets a flag; the loop stops between steps and the caller says how to resume."""

    def __init__(self):
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    @contextlib.contextmanager
    def installed(self):
        owner = os.getpid()

        def handler(signum, frame):
            if os.getpid() != owner:  # a forked data-loader worker: the main process decides
                return
            if self.stop:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.stop = True
            print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)
        try:
            old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, old)


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux: kilobytes in ru_maxrss)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
