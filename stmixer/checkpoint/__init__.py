"""Reading, converting and loading weight files: stmixer's own format, official STMixer checkpoints,
PySlowFast Caffe2 ``.pkl`` and ``.pyth``, VideoMAE / VideoMAEv2 ``.pth``.

API::

    from stmixer.checkpoint import read_checkpoint, load_weights, save_checkpoint

    contents = read_checkpoint(path)        # CheckpointContents
    contents = checkpoint_from_object({"model": state_dict}, "name")   # the same for an object in memory
    contents.format                         # "stmixer", "official_stmixer", "pyslowfast_caffe2", ...
    contents.state_dict                     # detector keys (backbone.*, lateral_convs.*, stm_head.*) -> tensors
    contents.extras                         # other top-level entries, untouched (optimizer, scheduler, ...)

    report = load_weights(model, path_or_contents, no_head=False, strict=True)   # LoadReport
    save_checkpoint(path, model.state_dict(), optimizer=..., scheduler=..., iteration=...)

* The format is detected from the file's content, never its name (``formats``).
* Files are read safely (``safe_unpickle``): pickles through a restricted
  unpickler (numpy arrays and plain containers only), torch files with
  ``weights_only=True`` and an allow-list mapping the official files' custom
  objects to inert placeholders. Anything else raises
  ``UnsafeCheckpointError`` and nothing from the file runs.
* Keys are matched exactly; every load logs one table (loaded / missing /
  unexpected / shape mismatch, plus what was not stored, left at init,
  dropped or skipped) and, with ``strict``, a checkpoint that does not fit
  raises ``CheckpointMismatchError`` with that table (``loader``).
* The project format is ``{"format": "stmixer", "format_version": 1, "model":
  detector state dict, ...}``; the trainer adds "optimizer", "scheduler",
  "iteration", "rng", "sampler", "config" as it needs, and gets them back in
  ``extras``. ``--transfer`` = ``load_weights`` only (extras ignored).
* ``python -m stmixer.checkpoint.convert SRC DST`` converts any supported file
  to the project format.
"""

from .errors import CheckpointError, CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError
from .formats import (
    DETECTOR_PARTS,
    FORMAT_VERSION,
    FORMATS,
    CheckpointContents,
    checkpoint_from_object,
    read_checkpoint,
    save_checkpoint,
)
from .loader import LoadReport, load_weights, match_state_dict

__all__ = [
    "DETECTOR_PARTS",
    "FORMATS",
    "FORMAT_VERSION",
    "CheckpointContents",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "LoadReport",
    "UnsafeCheckpointError",
    "checkpoint_from_object",
    "load_weights",
    "match_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]
