"""The output folder of a run: writability check, lock, the resumed config's diff (in-process, no model built)."""

import json
import os
import re
import socket

import pytest

from stmixer.engine.launch import run_entry_point
from stmixer.utils.run_dir import (
    LOCK_FILE,
    RunDirBusyError,
    RunDirLock,
    UnwritableDirError,
    config_changes,
    ensure_writable_dir,
)

from .conftest import TINY_CONFIG, free_port, run_python


@pytest.fixture
def unwritable(tmp_path):
    """A folder path that cannot be created: its parent is a regular file (chmod does not stop root)."""
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    return blocker / "out"


def test_ensure_writable_dir_creates_and_returns_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ensure_writable_dir("a/b", "OUTPUT_DIR") == str(tmp_path / "a" / "b")
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe file is gone


def test_ensure_writable_dir_names_folder_and_reason(unwritable):
    with pytest.raises(UnwritableDirError, match=rf"^--output {unwritable}: not writable \(Not a directory"):
        ensure_writable_dir(str(unwritable), "--output")


def test_second_lock_names_the_holder(tmp_path):
    with RunDirLock(str(tmp_path)):
        with pytest.raises(RunDirBusyError) as caught:
            RunDirLock(str(tmp_path)).acquire()
    message = str(caught.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}, started 20" in message
    assert str(tmp_path / LOCK_FILE) in message
    assert not (tmp_path / LOCK_FILE).exists()  # released: the file goes
    assert RunDirLock(str(tmp_path)).acquire() == []


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "h1", "started": "2026-01-01T00:00:00"}))
    lock = RunDirLock(str(tmp_path))
    warnings = lock.acquire()
    assert len(warnings) == 1 and "stale lock of pid 999999 on host h1" in warnings[0]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_forked_child_does_not_keep_the_lock(tmp_path):
    """A data-loader worker forked by a run that is then killed must not keep the folder locked."""
    lock = RunDirLock(str(tmp_path))
    lock.acquire()
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker" (its at-fork handlers have run): says it is up, waits until told to end
        os.close(write_end)
        os.write(ready_write, b"r")
        os.read(read_end, 1)
        os._exit(0)
    try:
        os.close(read_end)
        os.close(ready_write)
        assert os.read(ready_read, 1) == b"r"
        os.close(ready_read)
        os.close(lock._fd)  # the run "dies" without releasing; its worker lives on
        lock._fd = None
        warnings = RunDirLock(str(tmp_path)).acquire()
        assert len(warnings) == 1 and "stale lock" in warnings[0]
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.waitpid(pid, 0)


def test_config_changes_ignore_harmless_keys():
    saved = "MODEL:\n  WEIGHT: a\n  STM:\n    HIDDEN_DIM: 64\nSOLVER:\n  BASE_LR: 0.1\n  LOG_PERIOD: 20\nTEST:\n  X: 1\n"
    now = "MODEL:\n  WEIGHT: b\n  STM:\n    HIDDEN_DIM: 32\nSOLVER:\n  BASE_LR: 0.1\n  LOG_PERIOD: 1\nTEST:\n  X: 2\nNEW: 3\n"
    assert config_changes(saved, now) == [("MODEL.STM.HIDDEN_DIM", 64, 32), ("NEW", "(absent)", 3)]


# --- the entry points (run_entry_point with a body that records its call; no model, no data) ---


@pytest.fixture(autouse=True)
def _logger(isolated_logger):
    return isolated_logger


def _run(kind, repo_root, output_dir, *extra):
    calls = []
    argv = ["--config-file", str(repo_root / TINY_CONFIG), "OUTPUT_DIR", str(output_dir), *extra]
    run_entry_point(kind, lambda args, cfg, dist_info: calls.append(cfg), argv)
    return calls


def _fails(kind, repo_root, output_dir, capsys, *extra):
    """Run an entry point that must stop before its body; returns its one error line."""
    with pytest.raises(SystemExit) as caught:
        _run(kind, repo_root, output_dir, *extra)
    assert caught.value.code == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("kind", ["train", "test"])
def test_unwritable_output_dir_fails_before_any_work(kind, repo_root, unwritable, capsys):
    line = _fails(kind, repo_root, unwritable, capsys)
    assert line.startswith(f"error: OUTPUT_DIR {unwritable}: not writable (Not a directory")


@pytest.mark.parametrize("kind", ["train", "test"])
def test_second_run_in_a_locked_output_dir_fails_at_once(kind, repo_root, tmp_path, capsys):
    with RunDirLock(str(tmp_path)):
        line = _fails(kind, repo_root, tmp_path, capsys)
    assert f"is in use by another run: pid {os.getpid()} on host {socket.gethostname()}" in line
    # Nothing of the failed run was written: no config.yaml, no lines in the holder's log.
    assert sorted(os.listdir(tmp_path)) == []


def test_run_releases_the_lock_and_takes_over_a_stale_one(repo_root, tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "h1", "started": "2026-01-01T00:00:00"}))
    assert len(_run("train", repo_root, tmp_path)) == 1
    assert "taking over the stale lock of pid 999999 on host h1" in (tmp_path / "log.txt").read_text()
    assert not (tmp_path / LOCK_FILE).exists()
    assert len(_run("train", repo_root, tmp_path)) == 1


def test_test_net_keeps_the_training_config(repo_root, tmp_path):
    _run("train", repo_root, tmp_path, "SOLVER.BASE_LR", "0.125")
    _run("test", repo_root, tmp_path, "SOLVER.BASE_LR", "0.5")
    assert "BASE_LR: 0.125" in (tmp_path / "config.yaml").read_text()
    assert "BASE_LR: 0.5" in (tmp_path / "test_config.yaml").read_text()


def _resumable(repo_root, folder):
    """A run folder as a killed training leaves it: config.yaml and a checkpoint pointer."""
    _run("train", repo_root, folder, "SOLVER.BASE_LR", "0.125", "MODEL.STM.HIDDEN_DIM", "64")
    (folder / "last_checkpoint").write_text("model_0000002.pth")
    return (folder / "config.yaml").read_text()


def test_resume_with_a_changed_config_lists_the_keys(repo_root, tmp_path, capsys):
    saved = _resumable(repo_root, tmp_path)
    capsys.readouterr()
    line = _fails("train", repo_root, tmp_path, capsys, "SOLVER.BASE_LR", "0.25", "MODEL.STM.HIDDEN_DIM", "32",
                  "SOLVER.LOG_PERIOD", "5", "MODEL.WEIGHT", "other.pth")
    assert "MODEL.STM.HIDDEN_DIM: 64 -> 32; SOLVER.BASE_LR: 0.125 -> 0.25 (" in line
    assert "LOG_PERIOD" not in line and "MODEL.WEIGHT" not in line and "--allow-config-change" in line
    assert (tmp_path / "config.yaml").read_text() == saved  # the saved config of the run is kept
    # Harmless keys alone do not stop a resume.
    assert len(_run("train", repo_root, tmp_path, "SOLVER.BASE_LR", "0.125", "MODEL.STM.HIDDEN_DIM", "64",
                    "SOLVER.LOG_PERIOD", "5")) == 1


def test_allow_config_change_resumes_and_keeps_the_old_config(repo_root, tmp_path):
    saved = _resumable(repo_root, tmp_path)
    calls = _run("train", repo_root, tmp_path, "--allow-config-change", "SOLVER.BASE_LR", "0.25",
                 "MODEL.STM.HIDDEN_DIM", "64")
    assert len(calls) == 1
    assert "resuming with config changes SOLVER.BASE_LR: 0.125 -> 0.25" in (tmp_path / "log.txt").read_text()
    assert "BASE_LR: 0.25" in (tmp_path / "config.yaml").read_text()
    backups = list(tmp_path.glob("config.before-*.yaml"))
    assert len(backups) == 1 and backups[0].read_text() == saved


def test_every_process_of_a_group_ends_with_the_same_line(repo_root, tmp_path):
    """torchrun, 2 processes (gloo): rank 0 finds OUTPUT_DIR locked; rank 1 learns it and ends too (no hang)."""
    with RunDirLock(str(tmp_path)):
        result = run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                             "train_net.py", "--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path)],
                            repo_root, check=False)
    assert result.returncode != 0
    # Each rank writes its line in one write; match the messages, not lines, so that output of the
    # launcher between them cannot split or join them.
    lines = re.findall(r"error: (OUTPUT_DIR .*? or choose another OUTPUT_DIR)", result.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], result.stderr[-3000:]
    assert f"is in use by another run: pid {os.getpid()}" in lines[0]
    assert sorted(os.listdir(tmp_path)) == []


def test_unreadable_saved_config_is_named(repo_root, tmp_path, capsys):
    _resumable(repo_root, tmp_path)
    (tmp_path / "config.yaml").write_text("SOLVER: [unclosed\n")
    capsys.readouterr()
    line = _fails("train", repo_root, tmp_path, capsys)
    assert line.startswith(f"error: {tmp_path / 'config.yaml'}:2: not a readable config (expected ',' or ']'")
    assert not (tmp_path / LOCK_FILE).exists()
