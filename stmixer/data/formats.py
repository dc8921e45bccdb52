"""The AVA text-file parsers, under their old import path (they live in ``stmixer.ava_files``)."""

from ..ava_files import (  # noqa: F401  (re-exported)
    AVA_FIRST_KEYFRAME_SECOND,
    AVA_FPS,
    AVA_LAST_KEYFRAME_SECOND,
    AVA_START_SECOND,
    FRAME_LIST_HEADER,
    AVAFormatError,
    BoxRows,
    DataFormatError,
    LabelMapError,
    VideoFrames,
    ava_frame_name,
    box_csv_columns,
    parse_box_row,
    read_box_csv,
    read_exclusions,
    read_frame_lists,
    read_label_map,
    row_error,
    second_to_frame_index,
    write_label_map,
)
