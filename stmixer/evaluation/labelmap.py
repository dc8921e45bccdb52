"""AVA label maps (``.pbtxt``), under their old import path (the parser lives in ``stmixer.ava_files``)."""

from ..ava_files import LabelMap, LabelMapError, parse_labelmap, read_labelmap

__all__ = ["LabelMap", "LabelMapError", "parse_labelmap", "read_labelmap"]
