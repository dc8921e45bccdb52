"""The one base class of bad-input errors, and how every command line reports them.

Every error that means "the user gave us something unusable" (a file, a line of
it, a config key, a command-line value) derives from ``UserError``. Entry points
catch ``UserError`` alone: it ends the process with one ``error:`` line naming
the file, line or key, and the traceback goes to the log file only. Anything
else is a defect of stmixer and keeps its traceback.

This module imports nothing heavy (no torch), so torch-free tools can use it.
"""

import contextlib
import logging
import sys


class UserError(Exception):
    """Bad input: the message names the file, line or config key at fault and what was expected."""

    #: Exit status of a command line that stops on this error.
    exit_status = 1


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or the config points to) does not exist."""


class UserEncodingError(UserError, ValueError):
    """A text file the user gave is not UTF-8 (raised by ``decode_text`` / ``read_text``)."""

    def __init__(self, path, error):
        self.path = str(path)
        self.line = error.object[: error.start].count(b"\n") + 1
        super().__init__(
            f"{self.path}:{self.line}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); save the file as UTF-8"
        )


def decode_text(data, path):
    """``data`` (bytes of the file ``path``) as UTF-8 text; a ``UserEncodingError`` names file and line.

    A UTF-8 byte-order mark at the start is dropped.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserEncodingError(path, e) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path):
    """The whole text of ``path`` (UTF-8), with user errors for a missing file or other bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserFileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a file") from None
    return decode_text(data, path)


@contextlib.contextmanager
def exit_on_user_error(logger=None, status=None):
    """Turn a ``UserError`` raised in the block into one ``error:`` line on stderr and ``SystemExit``.

    A plain ``FileNotFoundError`` (from ``open`` of a path the user gave) is reported the same way.

    Args:
        logger: when given, the traceback is logged at DEBUG level (log files only) and the
            message at ERROR level to the logger's *file* handlers, so the console shows it once.
        status: exit status (default: the error's ``exit_status``).
    """
    try:
        yield
    except (UserError, FileNotFoundError) as e:  # an OS "no such file" always names the path the user gave
        if logger is not None:
            _log_to_files(logger, e)
        # One write of the whole line: processes of a group that fail together do not interleave it.
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(status if status is not None else getattr(e, "exit_status", 1)) from None


def _log_to_files(logger, error):
    """The traceback (DEBUG) and the message (ERROR) to ``logger``'s file handlers only."""
    records = [
        logger.makeRecord(logger.name, logging.DEBUG, __file__, 0, "Traceback of the error below", (),
                          sys.exc_info()),
        logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (error,), None),
    ]
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in records:
                if record.levelno >= handler.level:
                    handler.handle(record)
