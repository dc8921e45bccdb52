"""AVA label maps (``.pbtxt``), under their old import path (the parser lives in ``stmixer.ava_files``)."""

from ..ava_files import LabelMap, LabelMapError, parse_labelmap, read_labelmap  # noqa: F401  (re-exported)
