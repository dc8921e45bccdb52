"""Weight files cannot run code: crafted pickles are refused before anything from them is called."""

import os
import pickle

import numpy as np
import pytest
import torch

from stmixer.checkpoint import UnsafeCheckpointError, read_checkpoint


class _RunsShell:
    """Unpickling this object would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _write(path, payload, how):
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "torch_zip")
    return path


@pytest.mark.parametrize("how", ["pickle", "torch_zip", "torch_legacy"])
@pytest.mark.parametrize("payload_class", [_RunsShell, _RunsExec])
@pytest.mark.parametrize("name", ["weights.pkl", "weights.pth"])
def test_malicious_file_is_refused_and_nothing_runs(tmp_path, how, payload_class, name):
    marker = tmp_path / "pwned"
    payload = {"blobs": {"conv1_w": np.zeros((2, 3, 1, 7, 7), np.float32)}, "evil": payload_class(marker)}
    if how != "pickle":
        payload = {"model": {"backbone.x": torch.zeros(2)}, "evil": payload_class(marker)}
    path = _write(tmp_path / name, payload, how)
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert ("system" in str(info.value)) or ("exec" in str(info.value))
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.array([1, "a"], dtype=object)}}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="not a plain numeric type"):
        read_checkpoint(path)


def test_numpy_state_survives_a_torch_file(tmp_path):
    from stmixer.checkpoint import save_checkpoint

    rng = np.random.RandomState(3).get_state()
    save_checkpoint(tmp_path / "c.pth", {"backbone.x": torch.ones(2)}, rng={"numpy": rng, "scale": np.float32(2)})
    back = read_checkpoint(tmp_path / "c.pth").extras["rng"]
    assert back["numpy"][0] == "MT19937" and np.array_equal(back["numpy"][1], rng[1])
    assert back["numpy"][1].dtype == np.uint32 and back["scale"] == np.float32(2)


def _torch_zip_holding(path, pickle_bytes):
    """A torch zip file whose data.pkl is ``pickle_bytes`` (crafted: ``torch.save`` cannot write these)."""
    import zipfile

    source = path.with_suffix(".src")
    torch.save({"x": 1}, source)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, pickle_bytes if info.filename.endswith("/data.pkl") else zin.read(info))
    source.unlink()
    return path


# {"m": [[[...]]]} nested 100000 lists deep, and {"m": L} with L a list that contains itself.
_DEEP = b"\x80\x02}q\x00X\x01\x00\x00\x00mq\x01" + b"]" * 100000 + b"a" * 99999 + b"s."
_SELF = b"\x80\x02}q\x00X\x01\x00\x00\x00mq\x01]q\x02h\x02as."


@pytest.mark.parametrize("container", ["pickle", "torch_zip"])
@pytest.mark.parametrize("payload, problem", [(_DEEP, "nested deeper than"), (_SELF, "contains itself")],
                         ids=["deep", "self-referencing"])
def test_deep_or_self_referencing_pickle_is_one_clear_error(tmp_path, container, payload, problem):
    from stmixer.checkpoint import CheckpointFormatError

    path = tmp_path / "weights.pth"
    if container == "pickle":
        path.write_bytes(payload)
    else:
        _torch_zip_holding(path, payload)
    with pytest.raises(CheckpointFormatError, match=problem) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")
    assert len(str(info.value).splitlines()) == 1
