"""What each dataset of ``DATA.DATASETS`` is, beyond its files: timeline, keyframes, labels, boxes, evaluation.

A ``DatasetDescription`` replaces the AVA timeline that used to be implied everywhere.
It says

* ``fps`` — the frame rate of the extracted frames (None: as extracted, see ``DATA.TARGET_FPS``);
* ``timeline`` — what a sample's ``timestamp`` counts: ``"second"`` (AVA: frame index 0
  is second ``timeline_start`` = 900, frame index of second s = ``(s - 900) * 30``) or
  ``"frame"`` (UCF101-24 / JHMDB-21: the 1-based frame number; ``timeline_start`` 0);
* ``keyframes`` — which frames are keyframes: one per second (AVA, seconds 902..1798)
  or every frame (training: the frames with a ground-truth box; testing: every frame,
  as the frame-mAP and tube linking of the UCF/JHMDB evaluation need);
* ``labels`` / ``boxes`` — where the class names and the boxes come from;
* ``evaluator`` — ``"ava"`` (``AVAEvaluator``, frame-mAP from the AVA CSVs),
  ``"tubes"`` (``TubeEvaluator``: frame-mAP and video-mAP of ``stmixer.evaluation.tubes``) or
  ``"recognition"`` (video classification, ``RecognitionEvaluator``: top-1 / top-5 / mean-class
  accuracy; raw-frame list files, ``stmixer.data.recognition``).

``describe(cfg)`` returns the description of the configured dataset. The loaders are
registered under the same names in ``stmixer.data.build.DATASET_REGISTRY``. This module
imports nothing heavy (no torch), so tools can read it.
"""

import dataclasses
from typing import Optional

from ..ava_files import AVA_FIRST_KEYFRAME_SECOND, AVA_FPS, AVA_LAST_KEYFRAME_SECOND, AVA_START_SECOND
from ..errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetDescription:
    """One dataset kind (see the module docstring for the fields)."""

    name: str
    layout: str  # "ava": frame lists + box CSVs (AVA.* keys); "tubes": frames per video + GT pickle (TUBES.* keys);
    # "rawframes": frame folders + list files "<frame dir> <num frames> <label>" (RECOGNITION.* keys)
    fps: Optional[float]
    timeline: str  # "second" or "frame"
    timeline_start: float  # seconds at frame index 0
    keyframes: str
    labels: str
    boxes: str
    evaluator: str  # "ava", "tubes" or "recognition"

    def frame_index(self, timestamp):
        """0-based frame index of a keyframe ``timestamp`` on this dataset's timeline."""
        if self.timeline == "second":
            return int(round((timestamp - self.timeline_start) * self.fps))
        return int(timestamp) - 1


AVA = DatasetDescription(
    name="ava",
    layout="ava",
    fps=AVA_FPS,
    timeline="second",
    timeline_start=AVA_START_SECOND,
    keyframes=f"one per second, seconds {AVA_FIRST_KEYFRAME_SECOND}..{AVA_LAST_KEYFRAME_SECOND}",
    labels="AVA.LABEL_MAP_FILE (.pbtxt)",
    boxes="AVA.*_GT_BOX_LISTS (CSV rows video,second,x1,y1,x2,y2,action,person; normalized)",
    evaluator="ava",
)

#: AVA + the Kinetics-700 clips annotated with AVA labels, in mmaction2's layout: the AVA
#: files, whose frame lists and box CSVs also name Kinetics clips ``<youtube id>_<start>_<end>``
#: (frames at 30 fps from second ``start``; one keyframe per clip). Timestamps stay seconds of
#: the original video; each Kinetics clip has its own timeline start (``ava_files.ava_kinetics_span``).
AVA_KINETICS = dataclasses.replace(
    AVA,
    name="ava_kinetics",
    # timeline_start stays the AVA part's; a Kinetics clip starts at its <start> second.
    keyframes=f"AVA videos: one per second, {AVA_FIRST_KEYFRAME_SECOND}..{AVA_LAST_KEYFRAME_SECOND}; "
    "Kinetics clips: the annotated second(s) within <start>..<end>",
    boxes="AVA.*_GT_BOX_LISTS (AVA and Kinetics rows in the same CSVs; Kinetics rows name the clip)",
)

_TUBE_FIELDS = dict(
    layout="tubes",
    timeline="frame",
    timeline_start=0.0,
    keyframes="every frame (training: frames with a ground-truth box; testing: all frames)",
    labels="'labels' of the TUBES.GT_FILE pickle",
    boxes="'gttubes' of the TUBES.GT_FILE pickle (frame, x1, y1, x2, y2 in pixels of 'resolution')",
    evaluator="tubes",
)
UCF24 = DatasetDescription(name="ucf24", fps=25.0, **_TUBE_FIELDS)
JHMDB = DatasetDescription(name="jhmdb", fps=30.0, **_TUBE_FIELDS)
#: Your own data in the UCF101-24 / JHMDB-21 layout (frames as extracted).
OWN_TUBES = DatasetDescription(name="tubes", fps=None, **_TUBE_FIELDS)

#: Video classification (recognition task) from raw frames and list files: Kinetics-400,
#: Something-Something v1 / v2, or your own ("rawframes"); they differ only in the config's
#: RECOGNITION.FILENAME_TMPL / START_INDEX / list files and DATA.RANDOM_FLIP (docs/recognition.md).
_RAWFRAME_FIELDS = dict(
    layout="rawframes",
    fps=None,
    timeline="frame",
    timeline_start=0.0,
    keyframes="none: one label per video (frames sampled by RECOGNITION.SAMPLING)",
    labels="the list files' third column, 0-based (MODEL.RECOGNIZER.NUM_CLASSES classes)",
    boxes="none",
    evaluator="recognition",
)
KINETICS400 = DatasetDescription(name="kinetics400", **_RAWFRAME_FIELDS)
STHV1 = DatasetDescription(name="sthv1", **_RAWFRAME_FIELDS)
STHV2 = DatasetDescription(name="sthv2", **_RAWFRAME_FIELDS)
OWN_RAWFRAMES = DatasetDescription(name="rawframes", **_RAWFRAME_FIELDS)

#: ``DATA.DATASETS`` name -> description.
DESCRIPTIONS = {
    "ava_v2.2": AVA,
    "ava_v2.1": AVA,
    "ava": AVA,
    "ava_kinetics": AVA_KINETICS,
    "ucf24": UCF24,
    "ucf101_24": UCF24,
    "jhmdb": JHMDB,
    "jhmdb21": JHMDB,
    "tubes": OWN_TUBES,
    "kinetics400": KINETICS400,
    "sthv1": STHV1,
    "sthv2": STHV2,
    "rawframes": OWN_RAWFRAMES,
}


class UnknownDatasetError(UserError, KeyError):
    """``DATA.DATASETS`` names no known dataset."""

    exit_status = 2

    def __str__(self):
        return self.args[0]


def dataset_name(cfg):
    """The one name in ``DATA.DATASETS`` (an error naming the key otherwise)."""
    names = list(cfg.DATA.DATASETS)
    if len(names) != 1:
        raise UnknownDatasetError(f"DATA.DATASETS must name exactly one dataset, got {names}")
    return names[0]


def describe(cfg):
    """The DatasetDescription of ``DATA.DATASETS``."""
    name = dataset_name(cfg)
    if name not in DESCRIPTIONS:
        raise UnknownDatasetError(
            f"DATA.DATASETS = {name!r} is not a known dataset; choices: {', '.join(sorted(DESCRIPTIONS))}"
        )
    return DESCRIPTIONS[name]
