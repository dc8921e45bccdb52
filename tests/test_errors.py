"""One base class for bad input, and the one way command lines report it."""

import importlib
import logging
import subprocess
import sys

import pytest

from stmixer.errors import UserEncodingError, UserError, UserFileNotFoundError, decode_text, exit_on_user_error, read_text

# Every error class that means bad input, by module: each must be a UserError so the
# command lines' single ``except`` reports it in one line.
USER_ERROR_CLASSES = [
    ("stmixer.checkpoint.errors", "CheckpointError"),
    ("stmixer.checkpoint.errors", "CheckpointMismatchError"),
    ("stmixer.checkpoint.errors", "UnsafeCheckpointError"),
    ("stmixer.config.config", "ConfigError"),
    ("stmixer.data.build", "DatasetConfigError"),
    ("stmixer.data.formats", "DataFormatError"),
    ("stmixer.data.frames", "FrameReadError"),
    ("stmixer.data.keyframe_clips", "ClipTooShortError"),
    ("stmixer.data.video", "VideoReadError"),
    ("stmixer.engine.trainer", "NonFiniteLossError"),
    ("stmixer.evaluation.ava_csv", "AVAFormatError"),
    ("stmixer.evaluation.frame_map", "EvaluationError"),
    ("stmixer.evaluation.labelmap", "LabelMapError"),
]


@pytest.mark.parametrize("module,name", USER_ERROR_CLASSES)
def test_bad_input_errors_share_one_base(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), UserError)


def test_exit_on_user_error_prints_one_line_and_logs_only_to_files(tmp_path, capsys):
    logger = logging.getLogger("stmixer.test_errors")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    log_file = tmp_path / "log.txt"
    file_handler = logging.FileHandler(log_file)
    logger.addHandler(console)
    logger.addHandler(file_handler)
    try:
        with pytest.raises(SystemExit) as exc:
            with exit_on_user_error(logger):
                raise UserError("cfg.yaml:3: SOLVER.BASE_LR must be positive")
    finally:
        logger.removeHandler(console)
        logger.removeHandler(file_handler)
        file_handler.close()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("SOLVER.BASE_LR must be positive") == 1
    assert err.strip() == "error: cfg.yaml:3: SOLVER.BASE_LR must be positive"
    logged = log_file.read_text()
    assert "Traceback" in logged and "SOLVER.BASE_LR must be positive" in logged


def test_defects_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        with exit_on_user_error():
            1 / 0


def test_config_errors_exit_with_status_2(capsys):
    from stmixer.config import ConfigError

    with pytest.raises(SystemExit) as exc:
        with exit_on_user_error():
            raise ConfigError("x.yaml:1: unknown key FOO")
    assert exc.value.code == 2


def test_non_utf8_text_names_file_and_line(tmp_path):
    path = tmp_path / "labels.pbtxt"
    path.write_bytes(b"item {\n  name: \"caf\xe9\"\n}\n")
    with pytest.raises(UserEncodingError, match=r"labels.pbtxt:2: not UTF-8 text \(byte 0xe9"):
        read_text(path)
    assert decode_text("\ufeffok".encode("utf-8"), "x") == "ok"
    with pytest.raises(UserFileNotFoundError, match="missing.txt: no such file"):
        read_text(tmp_path / "missing.txt")


def test_errors_module_does_not_import_torch():
    code = "import sys, stmixer.errors; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
