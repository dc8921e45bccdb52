"""Weights and clips of the mmaction2 detector fixtures, regenerated bit for bit from their seed.

``stmixer.tools.mmaction2_parity`` (``python -m stmixer.tools.reference_parity --fixture <case folder>``)
loads this file from the folder above the case. The generator is the backbone fixtures' one
(``tests/reference/make_mmaction2_backbone_fixtures.py``: numpy PCG64 seeded from sha256 of
``version|seed|key``); the manifest in each ``mmaction2.json`` names every state-dict key of mmaction2's
detector with its shape and generator kind.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "mm_backbone_fixtures", Path(__file__).resolve().parents[2] / "make_mmaction2_backbone_fixtures.py")
_gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gen)

GEN_VERSION = _gen.GEN_VERSION


def fake_state_dict(manifest, seed):
    """``{mmaction2 key: float64 / int64 numpy array}`` of a manifest (``[key, shape, dtype, kind]`` rows)."""
    return _gen.fake_state_dict(manifest, seed)


def fake_input(seed, shape):
    """The clip ``[B, 3, T, H, W]`` float64 of a case."""
    return _gen.fake_input(seed, tuple(shape))
