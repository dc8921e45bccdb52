"""Reading weight files without running code from them.

``read_file(path)`` returns ``(container, object)``. The container is decided
from the bytes, never from the file name: ``"zip"`` (torch >= 1.6 file), ``"mat"`` (MATLAB v5 file, see ``read_mat``),
``"torch_legacy"`` (older torch file: a pickle whose first object is torch's
magic number) or ``"pickle"`` (anything else, e.g. PySlowFast Caffe2 ``.pkl``).

* Plain pickles go through a restricted unpickler that can only build dicts,
  lists, tuples, strings, numbers and numpy arrays of plain numeric dtypes;
  Python-2 pickles are read with ``encoding="latin1"``.
* Torch files go through ``torch.load(weights_only=True)`` plus an explicit
  allow-list: numpy arrays (same safe reconstruction) and inert placeholders
  for the custom objects official files hold (STMixer's ``MemoryPool`` in
  ``person_pool``, VideoMAE's ``argparse.Namespace`` in ``args``, mmengine's
  ``HistoryBuffer``, TubeR's yacs ``CfgNode`` in ``config``: a plain dict).

Anything else in a file is refused with ``UnsafeCheckpointError`` before it
can be called. Numpy arrays are never created by numpy's own pickle hooks:
the pickle's calls are answered by tokens that only record a dtype string,
a shape and raw bytes, and the array is built afterwards with
``np.frombuffer`` from those, after checking the dtype is a plain number type.
"""

import collections
import contextlib
import pickle

import numpy as np
import torch

from .errors import CheckpointFormatError, UnsafeCheckpointError

# torch.save's legacy (non-zip) format starts with this pickled integer.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
# numpy dtype kinds an array may have: bool, signed/unsigned int, float, complex.
_NUMERIC_KINDS = set("biufc")


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list (as opposed to being malformed)."""


# ----------------------------------------------------------------------------- numpy tokens
class _DtypeToken:
    """Stands for ``numpy.dtype(descr)``: records the descriptor and the byte order set by the pickle."""

    def __init__(self, descr, align=False, copy=True):
        del align, copy
        if not isinstance(descr, str):
            raise _Refused(f"numpy dtype descriptor must be a string, got {type(descr).__name__}")
        self.descr = descr
        self.byteorder = "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise _Refused("only plain numeric numpy dtypes are allowed (no sub-arrays or fields)")
        if state[1] not in ("<", ">", "=", "|"):
            raise _Refused(f"invalid numpy byte order {state[1]!r}")
        self.byteorder = state[1]

    def resolve(self):
        """The ``numpy.dtype``; refuses object, string, void and other non-numeric kinds."""
        try:
            dtype = np.dtype(self.descr)
        except TypeError as e:
            raise _Refused(f"unknown numpy dtype {self.descr!r}") from e
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refused(f"numpy dtype {self.descr!r} is not a plain numeric type")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _raw_bytes(data):
    """Array bytes as pickled: bytes (Python 3) or a latin-1 decoded str (Python 2 read with latin1)."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("latin1")
    raise _Refused(f"numpy array data must be bytes, got {type(data).__name__}")


def _array_from_bytes(dtype_token, shape, fortran, data):
    if not isinstance(dtype_token, _DtypeToken):
        raise _Refused("numpy array without a numpy dtype")
    shape = tuple(shape)
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _Refused(f"invalid numpy array shape {shape!r}")
    dtype = dtype_token.resolve()
    raw = _raw_bytes(data)
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise _Refused(f"numpy array of shape {shape} and dtype {dtype} needs "
                                     f"{count * dtype.itemsize} bytes, the file has {len(raw)}")
    # bytearray: a writable copy, so torch.from_numpy can share the array's memory later.
    array = np.frombuffer(bytearray(raw), dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))


class _ArrayToken:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, ...)``; the pickle's BUILD step gives
    (version, shape, dtype, is_fortran, raw bytes), from which the array is made with ``np.frombuffer``."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("unexpected numpy array state")
        _, shape, dtype_token, fortran, data = state
        self.array = _array_from_bytes(dtype_token, shape, bool(fortran), data)


# Stands for ``numpy.ndarray`` as the argument of ``_reconstruct`` (calling it makes an empty, inert object).
_NDARRAY = type("ndarray", (), {"__module__": "numpy", "__qualname__": "ndarray"})


def _reconstruct(subtype, shape, typecode):
    del shape, typecode
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct is only allowed for plain numpy.ndarray")
    return _ArrayToken()


def _scalar(dtype_token, data=None):
    """``numpy.core.multiarray.scalar``: one value of a numeric dtype from its raw bytes."""
    return _array_from_bytes(dtype_token, (), False, data)[()]


def _frombuffer(buffer, dtype_token, shape, order):
    """``numpy.core.numeric._frombuffer`` (pickle protocol 5 arrays)."""
    return _array_from_bytes(dtype_token, shape, order == "F", buffer)


def _encode(text, encoding="utf-8"):
    """``_codecs.encode`` as Python-3 pickles of bytes use it (latin-1 only)."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise _Refused("only latin-1 encoding of a string is allowed (pickled bytes)")
    return text.encode("latin1")


# ----------------------------------------------------------------------------- inert placeholders
class PickledObjectPlaceholder:
    """An inert stand-in for an object of a class a checkpoint pickled but that loading weights never needs.

    ``class_path`` names the original class; ``args`` and ``state`` keep what the
    pickle passed to it (plain data, itself unpickled under the same allow-list).
    It has no behaviour.
    """

    class_path = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<placeholder for {self.class_path}>"


def _placeholder_class(path):
    module, name = path.rsplit(".", 1)
    cls = type(name, (PickledObjectPlaceholder,), {"__module__": module, "__qualname__": name, "class_path": path})
    return cls


def _named(function, path):
    """A copy-by-reference of ``function`` whose ``__module__``/``__qualname__`` spell ``path``
    (torch's allow-list matches globals by that name)."""
    module, name = path.rsplit(".", 1)

    def wrapper(*args):
        return function(*args)

    wrapper.__module__, wrapper.__qualname__, wrapper.__name__ = module, name, name
    return wrapper


def _defaultdict_as_dict(default_factory=None, *args):
    """``collections.defaultdict`` becomes a plain dict (its items are added by the pickle)."""
    del default_factory, args
    return {}


def _dict_stand_in(path):
    """A class named ``path`` for torch's allow-list whose instances are plain ``OrderedDict``s: a pickled
    ``dict`` subclass (e.g. a yacs ``CfgNode``) is read as its items (its attributes land in the
    OrderedDict's ``__dict__``). torch's weights-only reader fills only real dicts."""
    module, name = path.rsplit(".", 1)

    def __new__(cls, *args):
        del cls, args
        return collections.OrderedDict()

    return type(name, (), {"__module__": module, "__qualname__": name, "__new__": __new__})


# Custom classes found in official checkpoints, mapped to placeholders.
PLACEHOLDER_CLASSES = {
    path: _placeholder_class(path)
    for path in (
        "alphaction.structures.memory_pool.MemoryPool",
        "argparse.Namespace",
        # mmengine training checkpoints (mmaction2) keep their logged scalars in ``message_hub``.
        "mmengine.logging.history_buffer.HistoryBuffer",
    )
}
# TubeR checkpoints keep their yacs config in ``config`` (a dict subclass).
DICT_STAND_INS = {path: _dict_stand_in(path) for path in ("yacs.config.CfgNode",)}

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "dtype"): _DtypeToken,
    ("numpy", "ndarray"): _NDARRAY,
}

# Everything a plain pickle may reference.
PICKLE_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode,
}


def _torch_safe_globals():
    """Extra globals for ``torch.load(weights_only=True)``: numpy tokens, placeholders, defaultdict -> dict."""
    items = [dict, _ArrayToken, _DtypeToken, _named(_defaultdict_as_dict, "collections.defaultdict")]
    for (module, name), target in _NUMPY_GLOBALS.items():
        items.append(target if target is _NDARRAY else _named(target, f"{module}.{name}"))
    items.extend(PLACEHOLDER_CLASSES.values())
    items.extend(DICT_STAND_INS.values())
    return items


@contextlib.contextmanager
def _torch_allow_list():
    """Add the extra globals to torch's weights-only allow-list for the duration of a load."""
    previous = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(_torch_safe_globals())
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous)


# ----------------------------------------------------------------------------- readers
class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load global {module}.{name}: a pickled weight or data file may only contain dicts, "
                "lists, tuples, strings, numbers and numpy arrays"
            ) from None

    def persistent_load(self, pid):
        raise _Refused("persistent ids are not allowed in a pickled weight file")


# Containers nested deeper than this are refused: checkpoints nest a few levels (optimizer state:
# 4), and the walk below must stay far from Python's recursion limit.
MAX_NESTING = 100


class _Malformed(pickle.UnpicklingError):
    """The pickle is well-formed but not plain data a weight file holds (too deep, self-referencing)."""


def _resolve_tokens(obj, depth=0, open_containers=None):
    """Replace numpy tokens by arrays throughout dicts / lists / tuples; refuse unexpected objects.

    Containers nested deeper than ``MAX_NESTING`` or containing themselves raise ``_Malformed``.
    """
    if isinstance(obj, _ArrayToken):
        if obj.array is None:
            raise _Refused("numpy array without data")
        return obj.array
    if isinstance(obj, _DtypeToken):
        return obj.resolve()
    if not isinstance(obj, (dict, list, tuple, PickledObjectPlaceholder)):
        return obj
    if depth >= MAX_NESTING:
        raise _Malformed(f"its data is nested deeper than {MAX_NESTING} levels (a weight file holds a few)")
    open_containers = set() if open_containers is None else open_containers
    container_id = id(obj)
    if container_id in open_containers:
        raise _Malformed(f"a {type(obj).__name__} in it contains itself (a weight file holds plain data)")
    open_containers.add(container_id)

    def resolve(value):
        return _resolve_tokens(value, depth + 1, open_containers)

    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = resolve(obj[key])
    elif isinstance(obj, list):
        obj[:] = [resolve(v) for v in obj]
    elif isinstance(obj, tuple):
        obj = tuple(resolve(v) for v in obj)
    else:
        obj.args = resolve(obj.args)
        obj.state = resolve(obj.state)
    open_containers.discard(container_id)
    return obj


# MATLAB files (TubeR's converted Caffe2 ir-CSN weights) start with a text header.
_MAT5_MAGIC = b"MATLAB 5.0 MAT-file"
_MAT73_MAGIC = b"MATLAB 7.3 MAT-file"


def read_mat(path):
    """``{name: numpy array}`` of a MATLAB v5 ``.mat`` file (``scipy.io.loadmat``: a parser, it runs
    nothing). The ``__header__`` / ``__version__`` / ``__globals__`` entries are left out; a variable
    that is not a plain numeric array (struct, cell, object, string, function handle) raises
    ``CheckpointFormatError``: weight files hold only arrays.
    """
    import scipy.io

    try:
        data = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise CheckpointFormatError(
            f"{path}: not a readable MATLAB v5 .mat file ({type(e).__name__}: {e})"
        ) from None
    arrays = {}
    for name, value in data.items():
        if name.startswith("__") and name.endswith("__"):
            continue
        if type(value) is not np.ndarray or value.dtype.kind not in _NUMERIC_KINDS or value.dtype.fields:
            raise CheckpointFormatError(
                f"{path}: MATLAB variable {name!r} is a {type(value).__name__} of dtype "
                f"{getattr(value, 'dtype', '?')}; "
                "a weight file holds only numeric arrays"
            )
        arrays[name] = value
    return arrays


def read_file(path):
    """``(container, object)`` of a weight file, read safely (see the module docstring).

    MATLAB v5 files (TubeR's ``.mat`` ir-CSN weights) are container ``"mat"``: ``{name: array}``
    (``read_mat``).

    Raises ``UnsafeCheckpointError`` when the file references anything outside
    the allow-list (nothing from it is executed), ``CheckpointFormatError`` when
    it is not a readable pickle / torch file.
    """
    with open(path, "rb") as f:
        head = f.read(len(_MAT5_MAGIC))
        if head[:4] == _ZIP_MAGIC:
            return "zip", _load_torch(path, mmap=True)
        if head == _MAT5_MAGIC:
            return "mat", read_mat(path)
        if head == _MAT73_MAGIC:
            raise CheckpointFormatError(
                f"{path}: a MATLAB v7.3 (HDF5) .mat file; stmixer reads MATLAB v5 files: re-save it with "
                "scipy.io.savemat or MATLAB's save -v7"
            )
        f.seek(0)
        first = _guarded(path, lambda: _RestrictedUnpickler(f, encoding="latin1").load())
    if isinstance(first, int) and first == LEGACY_TORCH_MAGIC:
        return "torch_legacy", _load_torch(path, mmap=False)
    return "pickle", _guarded(path, lambda: _resolve_tokens(first))


def load_plain_pickle(file):
    """Plain data (dicts, lists, tuples, strings, numbers, numpy arrays) from an open binary pickle file.

    For data files such as the UCF101-24 / JHMDB-21 ground-truth pickles: the same
    restricted unpickler as weight files (Python-2 pickles read with ``encoding="latin1"``).
    Raises ``pickle.UnpicklingError`` (a refused global, too deep or self-referencing data)
    or the error of a malformed stream; nothing from the file is executed.
    """
    return _resolve_tokens(_RestrictedUnpickler(file, encoding="latin1").load())


def _guarded(path, read):
    """Run ``read()``, turning unpickling failures into checkpoint errors that name ``path``."""
    try:
        return read()
    except _Refused as e:
        raise UnsafeCheckpointError(f"{path}: refused to unpickle: {e}") from None
    except _Malformed as e:
        raise CheckpointFormatError(f"{path}: not a weight file: {e}") from None
    except RecursionError:
        raise CheckpointFormatError(f"{path}: not a weight file: its data is nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise CheckpointFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _load_torch(path, mmap):
    """``torch.load`` on CPU with ``weights_only=True`` and the allow-list above."""
    try:
        with _torch_allow_list():
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [""]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0])
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle (only tensors, plain containers, numpy arrays and the official "
            f"checkpoints' MemoryPool / argparse.Namespace / mmengine HistoryBuffer / yacs CfgNode are allowed): "
            f"{detail.strip()}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    return _guarded(path, lambda: _resolve_tokens(obj))
