"""The one parser per AVA text file: every consumer (data, checker, evaluator, demo) gives the same answer."""

import subprocess
import sys

import pytest

from stmixer.errors import UserEncodingError, UserError

HEADER = "original_vido_id video_idx frame_idx path labels\n"


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "import stmixer.ava_files as m\n"
        "assert m.read_label_map and 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_consumer_uses_the_one_module():
    from stmixer import ava_files
    from stmixer.data import build, check, formats
    from stmixer.engine import demo
    from stmixer.evaluation import evaluator, labelmap

    assert check.read_label_map is formats.read_label_map is ava_files.read_label_map
    assert check.read_exclusions is build.read_exclusions is evaluator.read_exclusions is ava_files.read_exclusions
    assert check.parse_box_row is ava_files.parse_box_row and build.read_box_csv is ava_files.read_box_csv
    assert labelmap.read_labelmap is demo.read_labelmap is ava_files.read_labelmap


def test_one_line_label_map_is_accepted_by_data_checker_and_evaluator(tmp_path):
    from stmixer.data.check import read_label_map
    from stmixer.evaluation import read_labelmap

    path = tmp_path / "one_line.pbtxt"
    path.write_text('item { name: "stand" id: 12 } item { name: "sit" id: 11 }\n')
    assert read_label_map(path) == {12: "stand", 11: "sit"}
    assert read_labelmap(path).names == {12: "stand", 11: "sit"}


@pytest.mark.parametrize("timestamp", ["0902.5", "9.025e2", "nan", "inf", "1_000", "x", ""])
def test_a_fractional_timestamp_is_refused_with_file_and_line_by_every_reader(tmp_path, timestamp):
    from stmixer.data.check import read_exclusions as data_exclusions
    from stmixer.data.formats import read_box_csv
    from stmixer.evaluation import read_ava_csv, read_exclusions as eval_exclusions

    excl = tmp_path / "excl.csv"
    excl.write_text(f"vid,0902\nvid,{timestamp}\n")
    messages = set()
    for read in (data_exclusions, eval_exclusions):
        with pytest.raises(UserError) as e:
            read(excl)
        messages.add(str(e.value))
    assert messages == {f"{excl}:2: timestamp {timestamp!r} is not an integer number of seconds; row: 'vid,{timestamp}'"}
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"vid,0902,0,0,1,1,1,0.5\nvid,{timestamp},0,0,1,1,1,0.5\n")
    for read in (read_box_csv, read_ava_csv):
        with pytest.raises(UserError, match=rf"boxes.csv:2: timestamp {timestamp!r} is not an integer number of seconds"):
            read(boxes)


def test_whole_number_timestamps_read_the_same_everywhere(tmp_path):
    from stmixer.data.formats import read_box_csv, read_exclusions
    from stmixer.evaluation import read_ava_csv

    path = tmp_path / "gt.csv"
    path.write_text("vid,0902,0,0,1,1,1,0\nvid, 903,0,0,1,1,1,0\nvid,+904,0,0,1,1,1,0\nvid,905.0,0,0,1,1,1,0\n"
                    "vid,9.06e2,0,0,1,1,1,0\n")
    assert read_box_csv(path).seconds.tolist() == [902, 903, 904, 905, 906]
    table = read_ava_csv(path)
    assert table.box_timestamp[table.box_index].tolist() == [902, 903, 904, 905, 906]
    path.write_text("vid,0902\nvid, 903\nvid,904.0\n")
    assert read_exclusions(path) == {("vid", 902), ("vid", 903), ("vid", 904)}


def _bad_bytes(tmp_path, name, text_before, line):
    path = tmp_path / name
    path.write_bytes(text_before.encode() + b"caf\xe9\n")
    return path, rf"{name}:{line}: not UTF-8 text \(byte 0xe9 at offset {len(text_before.encode()) + 3}\)"


def test_non_utf8_bytes_name_file_and_line_in_every_reader(tmp_path):
    from stmixer import ava_files
    from stmixer.evaluation import read_ava_csv

    cases = [
        (ava_files.read_frame_lists, _bad_bytes(tmp_path, "list.csv", HEADER + 'v 0 0 v/v_000001.jpg ""\n', 3), True),
        (ava_files.read_box_csv, _bad_bytes(tmp_path, "gt.csv", "v,902,0,0,1,1,1,0\n", 2), False),
        (read_ava_csv, _bad_bytes(tmp_path, "det.csv", "v,902,0,0,1,1,1,0.5\n" * 3, 4), False),
        (ava_files.read_exclusions, _bad_bytes(tmp_path, "excl.csv", "v,902\n\n", 3), False),
        (ava_files.read_label_map, _bad_bytes(tmp_path, "map.pbtxt", 'item { name: "a" id: 1 }\n# ', 2), False),
        (ava_files.read_labelmap, _bad_bytes(tmp_path, "map2.pbtxt", "# \xe9\n", 2), False),
    ]
    for read, (path, message), as_list in cases:
        with pytest.raises(UserEncodingError, match=message):
            read([path] if as_list else path)


@pytest.mark.parametrize("field, value", [("12", 12), ("012", 12), ("12.0", 12), ("1.2e1", 12), (" +12 ", 12),
                                          ("12.5", None), ("x", None), ("nan", None), ("1_2", None)])
def test_action_ids_follow_one_rule_in_the_data_and_evaluator_readers(tmp_path, field, value):
    from stmixer.data.formats import read_box_csv
    from stmixer.evaluation import read_ava_csv

    path = tmp_path / "gt.csv"
    path.write_text(f"v,902,0,0,1,1,1,0\nv,902,0,0,1,1,{field},0\n")
    if value is None:
        for read in (read_box_csv, read_ava_csv):
            with pytest.raises(UserError, match=rf"gt.csv:2: action_id {field!r} is not an integer"):
                read(path)
    else:
        assert read_box_csv(path).actions.tolist() == [1, value]
        assert read_ava_csv(path).action.tolist() == [1, value]
