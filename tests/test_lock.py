"""The fold lock: one live holder, recovery of dead or silent holders, heartbeat, races."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline.core import lock as lockmod
from pipeline.core.errors import LockedError
from pipeline.core.lock import HOST, STALE_AFTER_S, Lock

ROOT = Path(__file__).resolve().parent.parent


def spawn(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, **kw)


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def write_lock(path: Path, age: float = 0.0, **fields) -> None:
    """A lock file as another process would have left it, last touched ``age`` seconds ago."""
    info = {"pid": 12345, "host": "other-host", "pid_namespace": None,
            "started": "2026-11-27 13:05:01", "start_time": None, **fields}
    path.write_text(json.dumps(info))
    os.utime(path, (time.time() - age,) * 2)


def test_acquire_release_and_same_process_contention(tmp_path):
    path = tmp_path / "fold0.lock"
    first = Lock(path, "fold 0 of oof/exp").acquire()
    assert first.held and path.exists()
    with pytest.raises(LockedError, match=f"pid {os.getpid()} on host {HOST} since") as e:
        Lock(path, "fold 0 of oof/exp").acquire()
    assert str(e.value).startswith(f"{path}: fold 0 of oof/exp is being trained by") and "\n" not in str(e.value)
    first.release()
    first.release()  # idempotent
    assert not first.held and not path.exists()
    with Lock(path, "fold 0 of oof/exp") as again:
        assert again.held
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary or stale files left behind


def test_live_child_holds_until_killed(tmp_path, capsys):
    path, ready = tmp_path / "fold0.lock", tmp_path / "ready"
    child = spawn(f"""
        import time
        from pipeline.core.lock import Lock
        Lock({str(path)!r}, "fold 0").acquire()
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)
    try:
        wait_for(ready)
        with pytest.raises(LockedError, match=f"pid {child.pid} on host {HOST}"):
            Lock(path, "fold 0").acquire()
    finally:
        child.kill()
        child.wait()
    with Lock(path, "fold 0"):
        err = capsys.readouterr().err
        assert f"warning: fold 0: recovered the lock of pid {child.pid} on host {HOST} (dead)" in err


def test_other_host_is_judged_by_heartbeat(tmp_path, capsys):
    path = tmp_path / "fold0.lock"
    write_lock(path, age=STALE_AFTER_S - 60)
    with pytest.raises(LockedError, match="pid 12345 on host other-host since 2026-11-27 13:05:01"):
        Lock(path, "fold 0").acquire()
    write_lock(path, age=STALE_AFTER_S + 10)
    with Lock(path, "fold 0"):
        assert "recovered the lock of pid 12345 on host other-host (no heartbeat for" in capsys.readouterr().err
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_heartbeat_refreshes_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT_S", 0.05)
    path = tmp_path / "fold0.lock"
    with Lock(path, "fold 0"):
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.monotonic() + 5
        while path.stat().st_mtime < old + 500:
            assert time.monotonic() < deadline, "the heartbeat never touched the lock"
            time.sleep(0.02)


@pytest.mark.skipif(lockmod._start_time(os.getpid()) is None, reason="needs /proc/<pid>/stat")
def test_recycled_pid_is_not_the_holder(tmp_path, capsys):
    path, pid = tmp_path / "fold0.lock", os.getppid()
    same_host = {"host": HOST, "pid_namespace": lockmod._pid_namespace(), "pid": pid}
    write_lock(path, start_time=lockmod._start_time(pid), **same_host)
    with pytest.raises(LockedError, match=f"pid {pid}"):
        Lock(path, "fold 0").acquire()
    write_lock(path, start_time=lockmod._start_time(pid) + 1, **same_host)
    with Lock(path, "fold 0"):
        assert f"recovered the lock of pid {pid} on host {HOST} (dead)" in capsys.readouterr().err


def test_acquire_wait(tmp_path):
    path = tmp_path / "fold0.lock"
    first = Lock(path, "fold 0").acquire()
    threading.Timer(0.3, first.release).start()
    start = time.monotonic()
    second = Lock(path, "fold 0").acquire_wait(timeout=5, poll=0.02)
    assert second.held and time.monotonic() - start >= 0.25
    start = time.monotonic()
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        Lock(path, "fold 0").acquire_wait(timeout=0.3, poll=0.05)
    assert time.monotonic() - start >= 0.3
    second.release()


def test_concurrent_contenders_one_wins(tmp_path):
    path, go = tmp_path / "fold0.lock", tmp_path / "go"
    children = [spawn(f"""
        import os, sys, time
        from pipeline.core.errors import LockedError
        from pipeline.core.lock import Lock
        open({str(tmp_path / 'ready')!r} + str(os.getpid()), "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        try:
            lock = Lock({str(path)!r}, "fold 0").acquire()
        except LockedError:
            print("locked", flush=True)
            sys.exit()
        print("got", flush=True)
        time.sleep(1)
        lock.release()
    """, stdout=subprocess.PIPE) for _ in range(6)]
    try:
        for child in children:
            wait_for(tmp_path / f"ready{child.pid}")
        go.touch()
        answers = sorted(child.communicate(timeout=30)[0].strip() for child in children)
    finally:
        for child in children:
            child.kill()
    assert answers == ["got"] + ["locked"] * 5
    assert not path.exists()


def test_unreadable_lock_file(tmp_path, capsys):
    path = tmp_path / "fold0.lock"
    path.write_bytes(b"\x00\xffgarbage")
    with pytest.raises(LockedError, match="being trained by an unknown process"):
        Lock(path, "fold 0").acquire()
    os.utime(path, (time.time() - STALE_AFTER_S - 10,) * 2)
    with Lock(path, "fold 0"):
        assert "recovered the lock of an unknown process (no heartbeat for" in capsys.readouterr().err


def test_exit_and_fork(tmp_path):
    path = tmp_path / "fold0.lock"
    # sys.exit without release: the atexit handler removes the lock
    child = spawn(f"""
        import sys
        from pipeline.core.lock import Lock
        Lock({str(path)!r}, "fold 0").acquire()
        sys.exit(3)
    """)
    assert child.wait(timeout=10) == 3 and not path.exists()
    # a forked child neither holds nor releases its parent's lock
    with Lock(path, "fold 0") as lock:
        pid = os.fork()
        if pid == 0:
            lock.release()
            os._exit(0 if not lock.held else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert path.exists() and lock.held
    assert not path.exists()


def test_release_leaves_a_lock_taken_over(tmp_path):
    path = tmp_path / "fold0.lock"
    lock = Lock(path, "fold 0").acquire()
    write_lock(path)  # as if another host had recovered it after our heartbeat stalled
    lock.release()
    assert json.loads(path.read_text())["host"] == "other-host"


def test_recovery_puts_back_a_lock_retaken_in_between(tmp_path):
    path = tmp_path / "fold0.lock"
    write_lock(path, age=STALE_AFTER_S + 10)
    stale = path.read_bytes()
    write_lock(path, pid=777)  # another contender recovered the stale lock and took it before our rename
    assert not Lock(path, "fold 0")._remove_stale(stale)
    assert json.loads(path.read_text())["pid"] == 777
    assert [p.name for p in tmp_path.iterdir()] == ["fold0.lock"]
