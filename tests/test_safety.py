"""Atomic writes survive failures and kill -9; checkpoints and YAML cannot run code; damaged
checkpoints give one clear error that names the file."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import signal
import time

import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import CheckpointError, ConfigError, ExperimentError
from pipeline.core.files import atomic_write, write_text
from pipeline.experiment.environment import _git, environment, record_environment
from pipeline.experiment.folder import check_config
from pipeline.model.checkpoint_file import load_checkpoint, save_checkpoint


def temps(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_atomic_write_that_fails_halfway_keeps_the_old_file(tmp_path):
    target = write_text(tmp_path / "oof.csv", "old\n")

    def half(p):
        p.write_text("new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old\n" and temps(tmp_path) == []


def test_atomic_write_killed_halfway_keeps_the_old_file_and_the_leftover_is_cleaned(tmp_path):
    target = write_text(tmp_path / "last.pt", "old")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: start writing, tell the parent, then wait to be killed
        try:
            def slow(p):
                p.write_text("half of a new checkpoint")
                os.write(write, b"x")
                time.sleep(60)
            atomic_write(target, slow)
        finally:
            os._exit(1)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert target.read_text() == "old"
    assert temps(tmp_path) == [f".last.pt.tmp{pid}"]  # what kill -9 leaves...
    write_text(target, "new")
    assert target.read_text() == "new" and temps(tmp_path) == []  # ...is removed by the next write


class RunsCode:
    """Unpickling this calls open(marker, 'w'): a checkpoint that would run code on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("fmt", ["torch.save", "pickle protocol 2"])
def test_crafted_pickle_checkpoint_is_refused_without_running_code(tmp_path, fmt):
    marker, path = tmp_path / "pwned", tmp_path / "best.pt"
    payload = {"model": {"w": torch.zeros(2)}, "x": RunsCode(marker)}
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="best.pt: refused") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and not marker.exists()
    if fmt != "torch.save":  # the payload is live: an ordinary unpickler does run it
        pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.fixture
def checkpoint(tmp_path):
    model = torch.nn.Linear(64, 8)
    path = save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "state": {"epoch": 3}})
    return path, model


def test_checkpoint_round_trip(checkpoint):
    path, model = checkpoint
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"model", "state"} and ckpt["state"] == {"epoch": 3}
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("keep", [0, 1, 40, 0.5, -1])
def test_truncated_checkpoint_error_names_the_file(checkpoint, keep):
    path, _ = checkpoint
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_flipped_byte_in_tensor_data_is_caught_by_the_checksum(checkpoint):
    path, model = checkpoint
    data = bytearray(path.read_bytes())
    at = data.find(model.weight.detach().numpy().tobytes()[:32])
    assert at > 0
    data[at + 100] ^= 0x10
    path.write_bytes(bytes(data))
    assert isinstance(torch.load(path, weights_only=True), dict)  # torch itself notices nothing
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04" + bytes(200)])
def test_garbage_and_missing_checkpoints_name_the_file(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="best.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found: .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="best.pt: not a checkpoint"):
        load_checkpoint(path)


def test_yaml_is_read_safely(tmp_path, tiny_cfg):
    marker = tmp_path / "pwned"
    evil = f"train:\n  epochs: !!python/object/apply:os.system ['touch {marker}']\n"
    (tmp_path / "evil.yaml").write_text(evil)
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(tmp_path / "evil.yaml")
    cfg = tiny_cfg()
    cfg.exp_dir.mkdir(parents=True)
    (cfg.exp_dir / "config.yaml").write_text(evil)  # a crafted saved config in an experiment folder
    with pytest.raises(ExperimentError, match="config.yaml: cannot read the saved config"):
        check_config(cfg, force=False)
    assert not marker.exists()


def test_env_json_records_the_commit_asked_at_the_repository_root():
    """git runs at the checkout's top, whatever module asks it (a subfolder would still answer, so the
    prefix is what shows where it ran)."""
    if _git("rev-parse", "--is-inside-work-tree") != "true":
        pytest.skip("not a git checkout")
    assert _git("rev-parse", "--show-prefix") == ""
    assert environment(load_config(None, []))["git_commit"] == _git("rev-parse", "HEAD") != ""


def test_env_json_keeps_the_earlier_environment_when_it_changes(tmp_path, capsys):
    path = tmp_path / "env.json"
    first = {"torch": "2.0", "device": "cpu", "seed": 42, "git_commit": "abc"}
    record_environment(path, first)
    record_environment(path, first)  # a resume in the same environment changes nothing
    assert json.loads(path.read_text()) == first and capsys.readouterr().err == ""
    record_environment(path, {**first, "device": "cuda"})
    env = json.loads(path.read_text())
    assert env["device"] == "cuda" and env["earlier"] == [first]
    assert "device" in capsys.readouterr().err
