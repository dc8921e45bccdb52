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
