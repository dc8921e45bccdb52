"""AVA frame-mAP evaluation: exact official numbers (two protocols), fast, with readable results.

* :class:`AVAEvaluator` -- reset / process / evaluate for the engine.
* :func:`evaluate_files` -- the metric from CSV files (also ``python -m stmixer.evaluation.ava``).
"""

from ..ava_files import AVAFormatError, read_exclusions
from .ava_csv import AVATable, read_ava_csv
from .evaluator import AVAEvaluator, evaluate_files
from .frame_map import PROTOCOLS, EvaluationError, FrameMAP, evaluate_frame_map
from .labelmap import LabelMap, LabelMapError, parse_labelmap, read_labelmap

__all__ = [
    "AVAEvaluator",
    "AVAFormatError",
    "AVATable",
    "EvaluationError",
    "FrameMAP",
    "LabelMap",
    "LabelMapError",
    "PROTOCOLS",
    "evaluate_files",
    "evaluate_frame_map",
    "parse_labelmap",
    "read_ava_csv",
    "read_exclusions",
    "read_labelmap",
]
