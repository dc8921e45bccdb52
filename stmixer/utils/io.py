"""Crash-safe file writing: a file is either the old one or the complete new one, never half written.

Temporary files are named ``.<target name>.<8 hex digits>.partial[<suffix>]`` beside their target,
so the leftovers of a writer killed mid-write are recognisable (``is_temporary_name``) and can be
removed later (``stale_temporaries``). A full disk is reported as one ``DiskFullError`` line naming
the file and the free space; the target is left as it was.
"""

import contextlib
import errno
import os
import re
import secrets
import shutil

from ..errors import UserError

# Marks the temporaries of this module: ``.<name>.<8 hex>.partial`` plus an optional suffix (".mp4").
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.[A-Za-z0-9]+)?$")
# Temporaries of older stmixer versions (``tempfile.mkstemp``: ``.<name>.<8 characters>.tmp``).
_LEGACY_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# errno values that mean "the disk (or the user's quota) is full".
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(UserError):
    """A write failed for lack of space; the message names the file and the free space left."""


def is_temporary_name(name):
    """Whether the file name ``name`` is an atomic writer's temporary (this or an older stmixer version)."""
    return bool(_TEMPORARY.match(name) or _LEGACY_TEMPORARY.match(name))


def stale_temporaries(folder, before):
    """Temporaries directly in ``folder`` last modified before the time ``before`` (seconds since the epoch).

    A writer that is still running keeps touching its temporary, so a file untouched since before the
    caller started was left behind by an interrupted one. Returns full paths, sorted.
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    stale = []
    for name in sorted(names):
        path = os.path.join(folder, name)
        if not is_temporary_name(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if os.path.isfile(path) and os.stat(path).st_mtime < before:
                stale.append(path)
    return stale


def temporary_sibling(path, suffix):
    """Create an empty hidden file ``.<name>.<random>.partial<suffix>`` beside ``path`` (its folder is
    created if needed) to be renamed onto it.

    The file gets the permissions a new file normally gets (``0o666`` less the umask), so the renamed
    result looks like any other output.

    Returns:
        (open file descriptor, temporary path).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp_path = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.partial{suffix}")
        try:
            return os.open(tmp_path, flags, 0o666), tmp_path
        except FileExistsError:
            continue


def disk_full_error(path, error):
    """A ``DiskFullError`` for ``path`` when ``error`` (or an exception it was raised from, e.g. torch's
    ``RuntimeError`` around a failed write) means the disk is full; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            folder = os.path.dirname(os.path.abspath(path))
            try:
                free = _size(shutil.disk_usage(folder).free)
            except OSError:
                free = "unknown space"
            kept = "it is unchanged" if os.path.exists(path) else "nothing was written"
            return DiskFullError(f"{path}: {os.strerror(error.errno).lower()} ({free} free in {folder}); "
                                 f"{kept}: free some space and run again")
        error = error.__cause__ or error.__context__
    return None


def _size(count):
    """``count`` bytes for people: "512 bytes", "3.2 MiB", "1234.5 GiB"."""
    if count < 1024:
        return f"{count} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding=None):
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: final file path (its folder is created if needed).
        mode: "w" (text) or "wb" (binary).
        encoding: text encoding (default UTF-8 for text mode).

    If the block raises, the temporary file is removed and ``path`` is untouched; a full disk
    (also inside the block, e.g. during ``torch.save``) raises ``DiskFullError``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    fd, tmp_path = temporary_sibling(path, "")
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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        full = disk_full_error(path, e)
        if full is not None:
            raise full from e
        raise
