"""The output folder of a run: a writability check, a one-run-at-a-time lock, the saved config's diff.

* ``ensure_writable_dir`` fails before any work when a folder cannot be written
  (train_net, test_net and demo call it first).
* ``RunDirLock`` is an OS lock (``fcntl.flock``) on ``OUTPUT_DIR/run.lock``
  holding the holder's pid, host and start time. The OS releases it when the
  holder dies, so a second run fails at once naming a live holder, and takes
  over (with a warning) a lock file left by a dead one.
* ``config_changes`` lists the keys in which a resumed run's config differs from
  the ``config.yaml`` saved by the run it continues, ignoring ``HARMLESS_KEYS``.

Torch-free, like ``stmixer.errors``.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile

import yaml

from ..errors import UserError

LOCK_FILE = "run.lock"

#: Config keys that may change when a run is resumed: they change neither the model,
#: the optimizer nor the training inputs (logging, checkpoint and evaluation cadence,
#: where things are, evaluation-only settings). A key ending in "." covers its whole group.
HARMLESS_KEYS = (
    "OUTPUT_DIR",
    "MODEL.WEIGHT",  # a resumed run continues from OUTPUT_DIR, whatever MODEL.WEIGHT says
    "MODEL.DEVICE",
    "DATA.PATH_TO_DATA_DIR",
    "DATA.TEST_MIN_SCALES",
    "DATA.TEST_MAX_SCALE",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.LOG_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.CHECKPOINTS_KEPT",
    "SOLVER.EVAL_PERIOD",
    "SOLVER.EVAL_AFTER",
    "SOLVER.NONFINITE_LOSS",
    "AVA.TEST_LISTS",
    "AVA.TEST_GT_BOX_LISTS",
    "AVA.TEST_FORCE_FLIP",
    "AVA.GROUNDTRUTH_FILE",
    "AVA.EXCLUSION_FILE",
    "TEST.",
)


class UnwritableDirError(UserError):
    """A folder the run must write to cannot be created or written."""


class RunDirBusyError(UserError):
    """Another live process holds the lock of the output folder."""


class ConfigChangedError(UserError):
    """A resumed run's config differs from the saved one in keys that change the model, optimizer or inputs."""


def _os_reason(error):
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return error.strerror or str(error)


def ensure_writable_dir(path, what):
    """Create the folder ``path`` if needed and check that a file can be created in it.

    Args:
        path: the folder.
        what: how the user knows it, for the message (e.g. "OUTPUT_DIR", "--output").

    Returns:
        The absolute path of the folder.

    Raises:
        UnwritableDirError: "<what> <path>: not writable (<os error>)".
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UnwritableDirError(f"{what} {path}: not writable ({_os_reason(e)})") from None
    return os.path.abspath(path)


def holder_info():
    """This process as a lock holder: pid, host, start time (ISO, local time with offset), command."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def describe_holder(info):
    """One phrase naming a holder (``holder_info`` dict, possibly partial) for messages."""
    if not info:
        return "an unknown process (the lock file holds no holder information)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f" ({info['command']})" if info.get("command") else ""))


# Lock files held by this process. A forked child (a data-loader worker) closes its copies at
# once: a flock belongs to the open file, so a child outliving a killed run would otherwise
# keep the folder locked.
_HELD_FDS = set()


def _close_held_in_child():
    for fd in _HELD_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunDirLock:
    """An exclusive lock on an output folder for the life of a run (``fcntl.flock`` on ``<folder>/run.lock``).

    The lock belongs to the open file: the OS drops it when the process ends, however it
    ends. A lock file that exists while no process holds the lock is stale (its holder died)
    and is taken over with a warning. ``release`` removes the file.

    Args:
        folder: the output folder (must exist).
        what: how the user knows the folder, for messages (e.g. "OUTPUT_DIR").
    """

    def __init__(self, folder, what="OUTPUT_DIR"):
        self.folder = folder
        self.what = what
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd = None

    def acquire(self):
        """Take the lock or raise ``RunDirBusyError`` naming the holder.

        Returns:
            A list of warnings (one when a stale lock was taken over).
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise RunDirBusyError(
                    f"{self.what} {self.folder} is in use by another run: {describe_holder(info)} "
                    f"(lock file {self.path}); wait for it to end or choose another {self.what}"
                ) from None
            # The holder before us may have removed the file between our open and our flock:
            # then we locked a deleted file; start again on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_info(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD_FDS.add(fd)
        if previous is None:
            return []
        return [f"{self.what} {self.folder}: taking over the stale lock of {describe_holder(previous)}, "
                "which ended without releasing it"]

    def release(self):
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        _HELD_FDS.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_info(fd):
    """The holder dict written in the lock file ``fd``; None when empty; {} when unreadable."""
    data = os.pread(fd, 65536, 0)
    if not data.strip():
        return None
    try:
        info = json.loads(data.decode("utf-8"))
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def flatten(tree, prefix=""):
    """``{"A.B": value}`` of a nested dict (a config as loaded from YAML)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _harmless(key):
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_KEYS)


_ABSENT = object()


def config_changes(saved_yaml, current_yaml):
    """Keys that differ between two config dumps (``cfg.dump()`` text), ``HARMLESS_KEYS`` left out.

    Returns:
        Sorted list of (key, saved value, current value); a key missing on one side has
        the value ``"(absent)"`` there.
    """
    saved = flatten(yaml.safe_load(saved_yaml) or {})
    current = flatten(yaml.safe_load(current_yaml) or {})
    changes = []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if before != after and not _harmless(key):
            changes.append((key, "(absent)" if before is _ABSENT else before,
                            "(absent)" if after is _ABSENT else after))
    return changes


def format_changes(changes):
    """``KEY: saved -> now`` joined by "; "."""
    return "; ".join(f"{key}: {before} -> {after}" for key, before, after in changes)
