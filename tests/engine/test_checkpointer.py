"""Checkpointer edge cases: other architectures, changed optimizer groups, corrupt or lagging files,
a full disk, leftovers of interrupted writes, the weights-only final file, a non-UTF-8 pointer."""

import errno
import logging
import os
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from stmixer.checkpoint import CheckpointError, CheckpointMismatchError, read_checkpoint
from stmixer.engine import checkpointer as checkpointer_module
from stmixer.engine.checkpointer import Checkpointer
from stmixer.engine.runner import _start_state
from stmixer.errors import UserEncodingError, UserError
from stmixer.solver.lr_scheduler import ParamSchedulerLR, WarmupMultiStepMultiplier
from stmixer.utils import io as io_module

from .test_trainer import ToyDetector, _make


def _train(folder, iterations, keep_last=3):
    model, trainer, ckpt = _make(folder, keep_last=keep_last)
    trainer.train(0, iterations)
    return model, ckpt


def _fresh(folder, model=None, groups=None):
    """A new process's model, optimizer and scheduler over ``folder`` (nothing resumed yet)."""
    torch.manual_seed(7)
    model = model or ToyDetector()
    opt = torch.optim.AdamW(groups(model) if groups else model.parameters(), lr=0.01)
    sched = ParamSchedulerLR(opt, WarmupMultiStepMultiplier(10, [6], 0.1, 3, 0.1, "linear"), 10)
    return model, opt, Checkpointer(str(folder), model, opt, sched)


def _run_config(weight=""):
    return SimpleNamespace(MODEL=SimpleNamespace(WEIGHT=str(weight)))


def _other_architecture():
    model = ToyDetector()
    model.stm_head = nn.Linear(4, 3)
    return model


# ----------------------------------------------------------------------------- other architecture
def test_resume_of_another_architecture_shows_the_mismatch_table(tmp_path):
    _train(tmp_path, 4)
    model, _, ckpt = _fresh(tmp_path, _other_architecture())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        ckpt.resume_latest(max_iter=10)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "model_0000004.pth"))
    assert "shape mismatch" in message and "stm_head.weight (file [2, 4] vs model [3, 4])" in message
    assert "OUTPUT_DIR" in message and "--transfer" in message
    assert len(message.splitlines()) < 12
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_weight_training_checkpoint_of_another_architecture(tmp_path):
    _train(tmp_path / "old", 4)
    model, _, ckpt = _fresh(tmp_path / "new", _other_architecture())
    cfg = _run_config(tmp_path / "old" / "model_0000004.pth")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)--transfer.*shape mismatch"):
        _start_state(cfg, model, ckpt, max_iter=10)


# ----------------------------------------------------------------------------- optimizer groups
def test_changed_optimizer_groups_name_checkpoint_sizes_and_what_to_do(tmp_path):
    _train(tmp_path, 4)

    def two_groups(model):
        return [{"params": list(model.backbone.parameters())}, {"params": list(model.stm_head.parameters())}]

    model, opt, ckpt = _fresh(tmp_path, groups=two_groups)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        ckpt.resume_latest(max_iter=10)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'model_0000004.pth'}: ")
    assert "1 parameter group of sizes [4]" in message and "2 parameter groups of sizes [2, 2]" in message
    assert "SOLVER.DECAY_NORM_AND_BIAS" in message and "--transfer" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not opt.state


# ----------------------------------------------------------------------------- corrupt / lagging files
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, caplog):
    _train(tmp_path, 6)  # model_0000002/4/6 (full), model_final (weights)
    _truncate(tmp_path / "model_final.pth")
    _truncate(tmp_path / "model_0000006.pth")
    _, opt, ckpt = _fresh(tmp_path)
    with caplog.at_level(logging.WARNING, logger=checkpointer_module.__name__):
        assert ckpt.resume_latest(max_iter=10) == 4
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "model_final.pth" in warnings and "model_0000006.pth" in warnings and "not a readable" in warnings
    assert opt.state


def test_pointer_lagging_behind_a_newer_intact_checkpoint(tmp_path, caplog):
    _train(tmp_path, 4)  # killed after writing model_0000004.pth, before the pointer moved on:
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth\n")
    os.remove(tmp_path / "model_final.pth")
    _, _, ckpt = _fresh(tmp_path)
    with caplog.at_level(logging.WARNING, logger=checkpointer_module.__name__):
        assert ckpt.resume_latest(max_iter=10) == 4
    assert any("last_checkpoint names model_0000002.pth" in r.getMessage() for r in caplog.records)


def test_missing_pointer_resumes_from_the_newest_file(tmp_path):
    _train(tmp_path, 4)
    os.remove(tmp_path / "last_checkpoint")
    os.remove(tmp_path / "model_final.pth")
    assert _fresh(tmp_path)[2].resume_latest(max_iter=10) == 4


def test_no_intact_checkpoint_is_an_error_naming_each_file(tmp_path):
    _train(tmp_path, 2)
    for name in ("model_0000002.pth", "model_final.pth"):
        _truncate(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"(?s)no intact checkpoint.*model_final.pth.*model_0000002.pth"):
        _fresh(tmp_path)[2].resume_latest(max_iter=10)


def test_empty_output_dir_starts_afresh(tmp_path):
    assert _fresh(tmp_path)[2].resume_latest(max_iter=10) is None


def test_pointer_with_non_utf8_bytes_is_one_line_naming_it(tmp_path):
    _train(tmp_path, 2)
    (tmp_path / "last_checkpoint").write_bytes(b"model_\xff.pth\n")
    ckpt = _fresh(tmp_path)[2]
    for call in (ckpt.last_checkpoint, lambda: ckpt.resume_latest(max_iter=10)):
        with pytest.raises(UserEncodingError, match=r"last_checkpoint:1: not UTF-8 text") as info:
            call()
        assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------- weights-only final file
def test_final_file_holds_weights_only_and_finished_runs_stay_finished(tmp_path):
    trained, _ = _train(tmp_path, 10)
    final = read_checkpoint(tmp_path / "model_final.pth")
    assert final.extras["iteration"] == 10 and "optimizer" not in final.extras and "rng" not in final.extras
    full = read_checkpoint(tmp_path / "model_0000010.pth")
    assert "optimizer" in full.extras and full.extras["iteration"] == 10
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"

    model, opt, ckpt = _fresh(tmp_path)
    assert ckpt.resume_latest(max_iter=10) == 10  # the runner then says "Training already finished"
    assert not opt.state  # only the weights were read
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in model.state_dict().items())

    model, opt, ckpt = _fresh(tmp_path)
    assert ckpt.resume_latest(max_iter=12) == 10  # a longer schedule continues from the full state
    assert opt.state


def test_final_weights_without_their_full_state_cannot_be_continued(tmp_path):
    _train(tmp_path, 10)
    os.remove(tmp_path / "model_0000010.pth")
    with pytest.raises(CheckpointError, match=r"(?s)model_final.pth.*weights only.*--transfer"):
        _fresh(tmp_path)[2].resume_latest(max_iter=12)


def test_model_weight_final_file_starts_a_new_run_from_its_weights(tmp_path):
    trained, _ = _train(tmp_path / "old", 10)
    model, opt, ckpt = _fresh(tmp_path / "new")
    cfg = _run_config(tmp_path / "old" / "model_final.pth")
    assert _start_state(cfg, model, ckpt, max_iter=10) == 0
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- full disk
class _FullDisk:
    """A file object that accepts ``capacity`` bytes, then fails like a full disk."""

    def __init__(self, f, capacity):
        self.f, self.capacity = f, capacity

    def write(self, data):
        self.capacity -= len(data)
        if self.capacity < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model, ckpt = _train(tmp_path, 4)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fdopen = os.fdopen
    monkeypatch.setattr(io_module.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k), 1000))
    with pytest.raises(UserError) as info:
        ckpt.save("model_0000006", 6)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'model_0000006.pth'}: no space left on device")
    assert "free in" in message and len(message.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_disk_full_at_fsync_in_any_atomic_output(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(io_module.DiskFullError, match=r"out.json: no space left on device .*; it is unchanged"):
        with io_module.atomic_open(target, "w") as f:
            f.write("new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


# ----------------------------------------------------------------------------- interrupted writes
def test_stale_partial_files_are_removed_at_start(tmp_path, caplog):
    fd, live = io_module.temporary_sibling(str(tmp_path / "model_0000004.pth"), "")
    os.close(fd)
    assert io_module.is_temporary_name(os.path.basename(live))
    ckpt = Checkpointer(str(tmp_path), ToyDetector())
    stale = [tmp_path / ".model_0000002.pth.0123abcd.partial", tmp_path / ".model_0000002.pth.k3j_h5g6.tmp",
             tmp_path / ".frame_map.json.ffffffff.partial"]
    kept = [tmp_path / ".hidden", tmp_path / "notes.partial", tmp_path / "model_0000002.pth"]
    old = time.time() - 3600
    for path in stale + kept:
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    os.utime(live, (old, old))
    os.utime(live)  # a writer still working on it touched it after the run started
    with caplog.at_level(logging.INFO, logger=checkpointer_module.__name__):
        removed = ckpt.remove_stale_temporaries()
    assert sorted(removed) == sorted(p.name for p in stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept) and os.path.exists(live)
    assert any(".model_0000002.pth.0123abcd.partial" in r.getMessage() for r in caplog.records)


def test_a_longer_schedule_killed_midway_resumes_past_the_old_final_file(tmp_path):
    _train(tmp_path, 4)  # model_final.pth: iteration 4
    _, _, ckpt = _fresh(tmp_path)
    assert ckpt.resume_latest(max_iter=10) == 4
    ckpt.save("model_0000006", 6)  # the longer run's next checkpoint; then it is killed
    assert _fresh(tmp_path)[2].resume_latest(max_iter=10) == 6


class _AdaptingHead(nn.Linear):
    """Cuts a stored weight to its own size on load, as the ViT resizes a position table."""

    def adapt_loaded_state(self, state_dict, prefix):
        for name in ("weight", "bias"):
            state_dict[prefix + name] = state_dict[prefix + name][: self.out_features]


def test_resume_refuses_tensors_the_model_would_adapt(tmp_path):
    _train(tmp_path, 4)
    model = ToyDetector()
    model.stm_head = _AdaptingHead(4, 1)
    with pytest.raises(CheckpointMismatchError, match=r"stm_head.weight \(file \[2, 4\] vs model \[1, 4\]\)"):
        _fresh(tmp_path, model)[2].resume_latest(max_iter=10)


def test_a_run_start_removes_stale_partial_files(tmp_path):
    stale = tmp_path / ".model_0000002.pth.0123abcd.partial"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    model, _, ckpt = _fresh(tmp_path)
    assert _start_state(_run_config(), model, ckpt, max_iter=10) == 0
    assert not stale.exists()
