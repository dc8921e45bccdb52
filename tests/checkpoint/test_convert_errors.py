"""python -m stmixer.checkpoint.convert: bad input and a full disk end in one error line."""

import errno
import os

import pytest
import torch

from stmixer.checkpoint import save_checkpoint
from stmixer.checkpoint.convert import main as convert_main
from stmixer.utils import io as io_module


def test_full_disk_is_one_error_line_and_nothing_is_left(tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.pth"
    save_checkpoint(source, {"backbone.x": torch.ones(3)})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(SystemExit) as info:
        convert_main([str(source), str(tmp_path / "out.pth")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'out.pth'}: no space left on device") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["in.pth"]


def test_missing_source_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        convert_main([str(tmp_path / "missing.pkl"), str(tmp_path / "x.pth")])
    assert info.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.pkl'}: no such file\n"
    assert not (tmp_path / "x.pth").exists()
