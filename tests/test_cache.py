"""The image cache across runs and processes: a read error is not kept beyond the run that met it,
and processes that need the same cache build it once, the others waiting for it."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tiny_overrides
from PIL import Image

from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.core.lock import HOST
from pipeline.data import cache
from pipeline.data.cache import build_cache, decode
from pipeline.data.prepare import cached_images
from pipeline.data.tables import load_train


def unreadable(monkeypatch, path: Path) -> None:
    """``path`` refused as after ``chmod 000`` (the caller restores its mode); root reads such a file
    anyway, so for root the read itself is made to refuse it. Its size and mtime stay as they are."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real = Path.read_bytes

    def read_bytes(self):
        if self.resolve() == path.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def count_decodes(monkeypatch) -> list:
    """Every call of the cache's decode from now on, appended to the returned list."""
    calls, real = [], cache.decode

    def counted(*args):
        calls.append(args)
        return real(*args)
    monkeypatch.setattr(cache, "decode", counted)
    return calls


@pytest.mark.parametrize("on_bad_image", ["skip", "fail"])
def test_an_image_unreadable_in_one_run_is_read_again_in_the_next(tiny_data, tmp_path, monkeypatch, on_bad_image):
    """Before: the read error was kept in the cache's .json, whose key (path, size, mtime) a chmod does
    not change: the image failed, or was skipped, in every run until the cache was deleted by hand."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("*_folds*.csv"))
    cfg = load_config(None, tiny_overrides(root, tmp_path, **{"data.on_bad_image": on_bad_image}))
    victim = load_train(cfg)["image_name"][5]
    path = root / "train" / f"{victim}.jpg"
    before = path.stat()
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as fault, contextlib.redirect_stderr(err):
        unreadable(fault, path)
        if on_bad_image == "fail":
            with pytest.raises(DataError, match=f"^{root / 'train'}: 1 image\\(s\\) cannot be decoded: {victim} "
                                                f"\\(PermissionError: .*Permission denied.*\\); replace them or set "
                                                f"data.on_bad_image=skip$"):
                cached_images(cfg, load_train(cfg))
        else:
            df = cached_images(cfg, load_train(cfg))[0]
            assert victim not in set(df["image_name"]) and len(df) == len(load_train(cfg)) - 1
            assert f"warning: skipping 1 undecodable image(s) in {root / 'train'}: {victim} (PermissionError: " \
                   in err.getvalue()
        if os.geteuid() != 0:
            path.chmod(before.st_mode)
    after = path.stat()  # the fault is gone, and nothing the cache key sees has changed
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    decodes = count_decodes(monkeypatch)
    df, images, digests = cached_images(cfg, load_train(cfg))
    assert len(decodes) == 1  # the victim alone: the other rows come from the cache built in the first run
    row = int(df.set_index("image_name")["cache_row"][victim])
    np.testing.assert_array_equal(images[row], decode(path, 32))
    assert digests[row] == cache.file_digest(path.read_bytes())
    assert [p.suffix for p in sorted((tmp_path / "cache").iterdir())] == [".json", ".npy"]  # one cache, updated
    decodes.clear()
    assert len(cached_images(cfg, load_train(cfg))[0]) == len(df) and decodes == []  # filled in for good


def test_a_damaged_image_is_read_again_each_run_and_stays_skipped(tmp_path, monkeypatch):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), colour).save(paths[-1])
    paths[1].write_bytes(b"not an image\n" * 10)
    first = build_cache(paths, 16, tmp_path / "cache")
    assert list(first.bad) == [1] and first.bad[1] == "UnidentifiedImageError: cannot identify image file"
    decodes = count_decodes(monkeypatch)
    again = build_cache(paths, 16, tmp_path / "cache")
    assert again.bad == first.bad and len(decodes) == 1  # the damaged one alone
    assert not again.images[1].any()


def test_a_cache_of_the_older_format_reads_its_bad_rows_again(tmp_path):
    """A .json of the version that kept read errors ("bad": {row: reason}) is read as listing those
    rows unread: an image that failed then is read again now."""
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), colour).save(paths[-1])
    expected = np.array(build_cache(paths, 16, tmp_path / "cache").images)
    npy = next((tmp_path / "cache").glob("*.npy"))
    old = np.load(npy, mmap_mode="r+")
    old[1] = 0
    old.flush()
    del old
    info = json.loads(npy.with_suffix(".json").read_text())
    npy.with_suffix(".json").write_text(json.dumps({"bad": {"1": "OSError: [Errno 5] Input/output error"},
                                                    "digests": info["digests"]}))
    again = build_cache(paths, 16, tmp_path / "cache")
    assert again.bad == {}
    np.testing.assert_array_equal(again.images, expected)
    assert json.loads(npy.with_suffix(".json").read_text())["unread"] == []


# -- several processes, one cache ------------------------------------------------------------------

BUILDER = """
    import sys, time
    from pathlib import Path
    import numpy as np
    from pipeline.data import cache

    images, cache_dir, out, go = map(Path, sys.argv[1:5])
    real, decoded = cache.decode, []

    def gated(*args):  # each decode waits for the test's go: the build lasts until the test says
        while not go.exists():
            time.sleep(0.01)
        decoded.append(1)
        return real(*args)

    cache.decode = gated
    built = cache.build_cache(sorted(images.glob("*.jpg")), 32, cache_dir, "train")
    np.save(out, built.images)
    print(f"decoded {len(decoded)}", flush=True)
"""


def builder(tmp_path: Path, tiny_data: Path, name: str) -> tuple[subprocess.Popen, queue.Queue]:
    """A process that builds (or waits for) the cache of the tiny sample's training images at 32 px,
    and the queue of its output lines (stdout and stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(BUILDER), str(tiny_data / "train"),
                             str(tmp_path / "cache"), str(tmp_path / f"{name}.npy"), str(tmp_path / "go")],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    return proc, lines


def read_until(lines: queue.Queue, text: str, seen: list, timeout: float = 60.0) -> str:
    """The first output line holding ``text``, each line read appended to ``seen`` (what follows the
    last carriage return: a progress bar's redraws go before it)."""
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {text!r} within {timeout}s; output:\n{''.join(seen)}") from None
        assert line is not None, f"exited before {text!r}; output:\n{''.join(seen)}"
        line = line.rsplit("\r", 1)[-1]
        seen.append(line)
        if text in line:
            return line


def expected_pixels(tiny_data: Path) -> np.ndarray:
    return np.stack([decode(p, 32) for p in sorted((tiny_data / "train").glob("*.jpg"))])


def test_two_processes_needing_the_same_cache_build_it_once(tiny_data, tmp_path):
    """Before: each fold-parallel process decoded the same images into its own temporary file and
    reserved the cache's space on disk again, with no lock."""
    first, first_out = builder(tmp_path, tiny_data, "first")
    seen_first, seen_second = [], []
    read_until(first_out, "building the image cache of", seen_first)
    second, second_out = builder(tmp_path, tiny_data, "second")
    waiting = read_until(second_out, "waiting for it to finish", seen_second)
    lock = next((tmp_path / "cache").glob("train_32px_*.lock"))
    assert waiting.startswith(f"{lock}: the image cache of {len(expected_pixels(tiny_data))} train images at 32 px "
                              f"is being built by pid {first.pid} on host {HOST} since ")
    assert waiting.endswith("; waiting for it to finish\n")
    (tmp_path / "go").touch()
    assert first.wait(60) == 0 and second.wait(60) == 0
    read_until(first_out, "decoded", seen_first)
    read_until(second_out, "decoded", seen_second)
    out = "".join(seen_first + seen_second)
    assert out.count("building the image cache of") == 1 and out.count("waiting for it to finish") == 1, out
    assert seen_first[-1] == f"decoded {len(expected_pixels(tiny_data))}\n" and seen_second[-1] == "decoded 0\n"
    expected = expected_pixels(tiny_data)
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), expected)
    assert [p.suffix for p in sorted((tmp_path / "cache").iterdir())] == [".json", ".npy"]  # no lock, no temporary


def test_a_builder_killed_mid_build_is_taken_over_by_the_process_waiting_for_it(tiny_data, tmp_path):
    first, first_out = builder(tmp_path, tiny_data, "first")
    seen_first, seen_second = [], []
    read_until(first_out, "building the image cache of", seen_first)
    second, second_out = builder(tmp_path, tiny_data, "second")
    read_until(second_out, f"is being built by pid {first.pid} ", seen_second)
    first.kill()
    first.wait(60)  # reaped: a zombie's pid would still look alive
    (tmp_path / "go").touch()
    read_until(second_out, f"recovered the lock of pid {first.pid} on host {HOST} (dead)", seen_second)
    read_until(second_out, "building the image cache of", seen_second)
    assert second.wait(60) == 0
    read_until(second_out, "decoded", seen_second)
    assert seen_second[-1] == f"decoded {len(expected_pixels(tiny_data))}\n"
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), expected_pixels(tiny_data))
    assert [p.suffix for p in sorted((tmp_path / "cache").iterdir())] == [".json", ".npy"]  # its .tmp<pid> too
