"""One writer per fold: a lock file that only one process at a time can hold, also across machines
that share the experiment folder over a network filesystem.

What it relies on:

- ``os.link`` is atomic and fails if the target exists, also on NFS, where ``O_EXCL`` has
  historically been unreliable. The complete content is written to a unique temporary sibling
  first and linked into place, so a lock file is never seen half-written (the recipe of open(2)).
- ``os.rename`` is atomic: of several processes recovering the same stale lock only one succeeds.
- On the same host (and pid namespace) the holder is alive iff its pid exists and, where
  ``/proc/<pid>/stat`` is readable (Linux), its start time matches the one recorded: a recycled pid
  is not taken for the holder.
- Pids of another host cannot be checked: holders touch their lock files every ``HEARTBEAT_S``, and
  a lock not touched for ``STALE_AFTER_S`` is taken as dead. This assumes that the clocks of the
  hosts and of the file server (which stamps the mtime) agree to within a few minutes.
- SIGKILL, a power cut or a lost machine leave the file behind; the recovery above removes it.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from pipeline.core.disk import storage_error
from pipeline.core.errors import ExperimentError, LockedError

STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0
DEFAULT_HINT = "wait for it to finish or train another fold (--folds)"

HOST = socket.gethostname()


def _pid_namespace() -> str | None:
    # containers may share a host name (--network host) but not their pids
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), if known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # the command name before ")" may hold spaces


def _alive(pid: int, start_time: int | None) -> bool:
    if pid <= 0:  # 0 and negative numbers would signal process groups
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, but belongs to another user
        pass
    now = _start_time(pid)
    return start_time is None or now is None or now == start_time


# Locks held by this process. One guard serialises acquire, release and the heartbeat within the
# process, which also makes the per-pid temporary name unique.
_held: set[Lock] = set()
_guard = threading.Lock()
_wake = threading.Event()
_heartbeat: threading.Thread | None = None


def _beat() -> None:
    while True:
        _wake.wait(HEARTBEAT_S)  # acquire wakes it, so a changed HEARTBEAT_S takes effect at once
        _wake.clear()
        with _guard:
            for lock in _held:
                try:
                    os.utime(lock.path)
                except OSError:  # taken from us, or the share is briefly unreachable: retry next beat
                    pass


def _release_all() -> None:
    for lock in list(_held):
        lock.release()


def _forget_in_child() -> None:
    # a forked child holds none of its parent's locks, and the guard may have been held at fork
    global _guard, _wake
    _guard, _wake = threading.Lock(), threading.Event()
    _held.clear()


@functools.cache
def _install_hooks() -> None:
    """Made when this process takes its first lock, not on import: release at exit (sys.exit paths;
    normal release is the caller's job), forget the parent's locks in a forked child."""
    atexit.register(_release_all)
    os.register_at_fork(after_in_child=_forget_in_child)


class Lock:
    """Exclusive lock on ``path``; ``what`` names the guarded thing in messages ("fold 0 of oof/exp"),
    ``doing`` what its holder does to it ("being trained")."""

    def __init__(self, path: Path, what: str, hint: str = DEFAULT_HINT, doing: str = "being trained"):
        self.path, self.what, self.hint, self.doing = Path(path), what, hint, doing
        self._pid: int | None = None  # the acquiring process: a forked child must not release
        self._content = b""

    @property
    def held(self) -> bool:
        return self._pid == os.getpid()

    def acquire(self) -> Lock:
        """Take the lock, or raise LockedError at once if a live process holds it (StorageError when
        the folder cannot be written)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(self.path, e) or e from None
        with _guard:
            for _ in range(2):  # a contender that recovered the stale lock before us: look again once
                if content := self._create():
                    return self._taken(content)
                try:
                    with open(self.path, "rb") as f:
                        seen, age = f.read(), time.time() - os.fstat(f.fileno()).st_mtime
                except FileNotFoundError:  # released in between
                    continue
                info, stale = _judge(seen, age)
                if stale is None:
                    raise LockedError(self._message(info, age))
                if self._remove_stale(seen) and (content := self._create()):
                    who = f"pid {info['pid']} on host {info['host']}" if info else "an unknown process"
                    print(f"warning: {self.what}: recovered the lock of {who} ({stale})", file=sys.stderr)
                    return self._taken(content)
            raise LockedError(f"{self.path}: {self.what} is contended by several processes; {self.hint}")

    def acquire_wait(self, timeout: float = 120.0, poll: float = 0.2) -> Lock:
        """Take the lock, waiting up to ``timeout`` seconds; for short critical sections."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.acquire()
            except LockedError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(poll)

    def release(self) -> None:
        """Remove the lock file if it is still ours; safe to call again or when never acquired."""
        with _guard:
            if not self.held:
                return
            self._pid = None
            _held.discard(self)
            try:
                if self.path.read_bytes() == self._content:
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _create(self) -> bytes | None:
        """Link a complete lock file into place and return its content; None if a lock file exists."""
        info = {"pid": os.getpid(), "host": HOST, "pid_namespace": _pid_namespace(),
                "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
                "start_time": _start_time(os.getpid())}
        content = json.dumps(info).encode()
        tmp = self.path.with_name(f".{self.path.name}.{HOST}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(content)
        except OSError as e:  # read-only, not allowed, a full disk
            raise storage_error(self.path, e) or e from None
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            # NFS: a retransmitted link whose first reply was lost fails although it succeeded
            return content if os.stat(tmp).st_nlink == 2 else None
        except OSError as e:
            raise ExperimentError(f"{self.path}: cannot create a lock file, the filesystem does not "
                                  f"support hard links ({e.strerror}); use another output folder") from e
        finally:
            tmp.unlink(missing_ok=True)
        return content

    def _remove_stale(self, seen: bytes) -> bool:
        """Move the stale lock whose content is ``seen`` out of the way; False if another did first."""
        grave = self.path.with_name(f"{self.path.name}.stale.{HOST}.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        if grave.read_bytes() != seen:
            # another contender recovered it and took the lock between our read and our rename:
            # put its live lock back (link, so that nothing newer is overwritten)
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            grave.unlink(missing_ok=True)
            return False
        grave.unlink(missing_ok=True)
        return True

    def _taken(self, content: bytes) -> Lock:
        global _heartbeat
        _install_hooks()
        self._pid, self._content = os.getpid(), content
        _held.add(self)
        if _heartbeat is None or not _heartbeat.is_alive():  # not yet started, or lost in a fork
            _heartbeat = threading.Thread(target=_beat, name="lock-heartbeat", daemon=True)
            _heartbeat.start()
        _wake.set()
        return self

    def _message(self, info: dict | None, age: float) -> str:
        if info is None:
            who = f"an unknown process (unreadable lock file, touched {age:.0f}s ago)"
        else:
            who = f"pid {info['pid']} on host {info['host']} since {info.get('started', '?')}"
        return f"{self.path}: {self.what} is {self.doing} by {who}; {self.hint}"


def _judge(content: bytes, age: float) -> tuple[dict | None, str | None]:
    """The lock's content (None if unreadable) and why its holder is gone (None while it may live)."""
    try:
        info = json.loads(content)
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError):
        info = None
    if info is not None and host == HOST and info.get("pid_namespace") == _pid_namespace():
        return info, None if _alive(pid, info.get("start_time")) else "dead"
    return info, None if age < STALE_AFTER_S else f"no heartbeat for {age:.0f}s"
