"""Shared fixtures: a tiny generated dataset and a tiny config that trains in seconds on CPU."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.data.sample import generate_sample

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory) -> Path:
    """One cache folder (``data.cache_dir``) for the session's compiled runs, its ``inductor/`` also
    inductor's cache for compiles in this process and in subprocesses that do not set their own:
    a graph that several tests compile (the tiny model's training and validation step) is built
    once. Each compile of a new graph costs tens of seconds on two cores."""
    folder = tmp_path_factory.getbasetemp() / "compile_cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
        yield folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small copy of the bundled sample layout: ~120 training images, 48 px."""
    root = tmp_path_factory.mktemp("data") / "sample"
    generate_sample(root, n_train_patients=24, n_test_patients=6, image_size=48, seed=0)
    return root


def tiny_overrides(data_root: Path, work: Path, **extra) -> list[str]:
    """Overrides that shrink the default experiment to seconds: 32 px, 3 folds, 2 epochs."""
    values = {
        "data.root": str(data_root), "data.cache_dir": str(work / "cache"), "output_dir": str(work / "oof"),
        "name": "tiny", "model.image_size": 32, "folds.n_folds": 3, "train.epochs": 2, "train.batch_size": 16,
        "infer.tta": 2, "infer.batch_size": 32, "data.generate_sample": False,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def only(cfg, *folds):
    """``cfg`` training only ``folds`` (train.folds: what train.py --folds sets)."""
    from pipeline.core.config import with_overrides
    return with_overrides(cfg, [f"train.folds={list(folds)}"])


@pytest.fixture
def tiny_cfg(tiny_data, tmp_path):
    def make(**extra):
        return load_config(None, tiny_overrides(tiny_data, tmp_path, **extra))
    return make


def run_cli(*args, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of the project's entry points in a subprocess, as a user would: for what only a new
    process shows (a kill, a signal, torchrun, a traceback, the start-up itself)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def torch_on_one_thread():
    """Tiny models train many times faster on one thread than on two cores shared with other jobs;
    the environment variable carries it into the CLI subprocesses."""
    import torch
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def one_torch_thread():
    with torch_on_one_thread():
        yield


@pytest.fixture(scope="session")
def finished(tiny_data, tmp_path_factory):
    """A finished tiny experiment, trained once for the session (3 folds, 1 epoch, one torch thread):
    ``<folder>/data`` (a copy of the sample with its fold table), ``<folder>/oof/tiny`` and the image
    cache it was trained with, ``<folder>/cache``. Tests take their own copy (``copy_finished``) and
    never write into this one."""
    from pipeline.train.trainer import train
    work = tmp_path_factory.mktemp("finished")
    shutil.copytree(tiny_data, work / "data", ignore=shutil.ignore_patterns("*_folds*.csv"))
    with torch_on_one_thread():
        train(load_config(None, tiny_overrides(work / "data", work, **{"train.epochs": 1})))
    before = snapshot(work)
    yield work
    assert snapshot(work) == before, "a test or tool wrote into the session's finished experiment"


def copy_finished(finished: Path, work: Path) -> tuple[Path, Path]:
    """The finished experiment and its data copied into ``work``: (``work/data``, ``work``, whose
    ``oof/tiny`` is the experiment), as if trained there: its config.yaml names the copy's folders
    (where things lie is not what an experiment is), so that a tool reading it writes nothing into
    the session's original."""
    from pipeline.core.config import to_yaml, with_overrides
    from pipeline.experiment.record import saved_config
    shutil.copytree(finished / "data", work / "data")
    exp = work / "oof" / "tiny"
    shutil.copytree(finished / "oof" / "tiny", exp)
    here = with_overrides(saved_config(exp / "config.yaml"), [f"data.root={work / 'data'}",
                                                              f"data.cache_dir={work / 'cache'}",
                                                              f"output_dir={work / 'oof'}"])
    (exp / "config.yaml").write_text(to_yaml(here))
    return work / "data", work


def run_main(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``run_cli``'s twin in this process: the same script (``train.py``, ``infer.py``) or
    ``-m pipeline`` runs as ``__main__`` with ``args`` as its command line, in ``cwd``, its output
    and exit code captured. What a subprocess adds is only the interpreter's start-up and imports
    (several seconds each on two cores), so the tests of a command's answer use this."""
    import io
    import runpy
    out, err, code = io.StringIO(), io.StringIO(), 0
    script, argv = (args[1], list(args[2:])) if args[0] == "-m" else (str(args[0]), list(args[1:]))
    old_argv, old_cwd, old_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = [script, *map(str, argv)]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if args[0] == "-m":
                runpy.run_module(script, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(f"{e.code}\n")
    finally:  # what the command set for its process (inductor's cache folder) ends with it
        sys.argv = old_argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    proc = subprocess.CompletedProcess([sys.executable, *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{args} exited {code}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def one_error_line(proc, alone: bool = False) -> str:
    """A command's answer to bad input: exit 2 and one line 'error: ...', last on stderr (after any
    progress bars; with ``alone``, nothing else), no traceback. Returns that line."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert [x for x in lines if x.startswith("error: ")] == lines[-1:], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and (len(lines) == 1 or not alone), proc.stderr[-2000:]
    return lines[-1]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and mtime, and every folder: what a refused command
    must leave as it was."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(Path(folder).rglob("*"))}
