"""Crash-safe file writing: a file is either the old one or the complete new one, never half written."""

import contextlib
import os
import tempfile

# The process's file-creation mask (read once: os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_sibling(path, suffix):
    """Create an empty hidden file beside ``path`` (its folder is created if needed) to be renamed onto it.

    The file gets the permissions a new file normally gets (``0o666`` less the umask), not the
    owner-only ones of ``tempfile.mkstemp``, so the renamed result looks like any other output.

    Returns:
        (open file descriptor, temporary path).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp_path


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding=None):
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: final file path (its folder is created if needed).
        mode: "w" (text) or "wb" (binary).
        encoding: text encoding (default UTF-8 for text mode).

    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    fd, tmp_path = temporary_sibling(path, ".tmp")
    try:
        if mode == "w":
            f = os.fdopen(fd, mode, encoding=encoding or "utf-8")
        else:
            f = os.fdopen(fd, mode)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
