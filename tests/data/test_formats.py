import numpy as np
import pytest

from stmixer.data.formats import (
    DataFormatError,
    ava_frame_name,
    read_box_csv,
    read_exclusions,
    read_frame_lists,
    read_label_map,
    second_to_frame_index,
)

HEADER = "original_vido_id video_idx frame_idx path labels\n"


def write(path, text):
    path.write_text(text)
    return str(path)


def test_ava_frame_naming_and_keyframe_index():
    assert ava_frame_name("abc", 0) == "abc/abc_000001.jpg"
    assert ava_frame_name("abc", 59) == "abc/abc_000060.jpg"
    assert second_to_frame_index(902) == 60
    assert second_to_frame_index(1798) == 26940


def test_frame_lists_regular_and_irregular_paths_across_files(tmp_path):
    a = write(tmp_path / "a.csv", HEADER + 'v1 0 0 v1/v1_000001.jpg ""\nv1 0 1 v1/v1_000002.jpg ""\n\n'
              'v2 1 0 other/f0.jpg ""\n')
    b = write(tmp_path / "b.csv", HEADER + 'v2 1 1 other/f1.jpg ""\nv1 0 2 v1/v1_000003.jpg ""\n')
    videos = read_frame_lists([a, b])
    assert [v.name for v in videos] == ["v1", "v2"]
    assert [v.num_frames for v in videos] == [3, 2]
    assert videos[0].paths is None  # AVA naming: no per-frame strings kept
    assert videos[0].path(2) == "v1/v1_000003.jpg"
    assert videos[1].paths == ["other/f0.jpg", "other/f1.jpg"]


def test_frame_list_switching_to_irregular_keeps_earlier_paths(tmp_path):
    path = write(tmp_path / "a.csv", HEADER + 'v 0 0 v/v_000001.jpg ""\nv 0 1 v/odd.jpg ""\n')
    (video,) = read_frame_lists([path])
    assert video.paths == ["v/v_000001.jpg", "v/odd.jpg"]


@pytest.mark.parametrize(
    "body, line, words",
    [
        ('v 0 0 v/v_000001.jpg ""\nv 0 2 v/v_000003.jpg ""\n', 3, "expected frame_idx 1"),
        ('v 0 0 v/v_000001.jpg\n', 2, "5 space-separated fields"),
        ('v 0 x v/v_000001.jpg ""\n', 2, "not an integer"),
    ],
)
def test_frame_list_errors_name_file_line_and_row(tmp_path, body, line, words):
    path = write(tmp_path / "list.csv", HEADER + body)
    with pytest.raises(DataFormatError) as e:
        read_frame_lists([path])
    assert f"{path}:{line}:" in str(e.value) and words in str(e.value)


def test_frame_list_without_header_is_refused(tmp_path):
    path = write(tmp_path / "list.csv", 'v 0 0 v/v_000001.jpg ""\n')
    with pytest.raises(DataFormatError, match=r"list.csv:1: expected the header"):
        read_frame_lists([path])


def test_box_csv_parses_rows_and_empty_actions(tmp_path):
    path = write(tmp_path / "gt.csv", "v,0902,0.1,0.2,0.5,0.6,12,0\nv,902,0.1,0.2,0.5,0.6,,0\n\n")
    rows = read_box_csv(path)
    assert rows.videos == ["v", "v"]
    np.testing.assert_array_equal(rows.seconds, [902, 902])
    np.testing.assert_allclose(rows.boxes[0], [0.1, 0.2, 0.5, 0.6])
    np.testing.assert_array_equal(rows.actions, [12, -1])
    assert rows.box_keys == ["0.1,0.2,0.5,0.6"] * 2
    assert [rows.source(0), rows.source(1)] == [f"{path}:1", f"{path}:2"]


def test_predicted_box_csv_reads_and_thresholds_scores(tmp_path):
    path = write(tmp_path / "predicted_boxes.csv", "v,902,0.1,0.2,0.5,0.6,,0.95\nv,903,0.1,0.2,0.5,0.6,,0.3\n")
    rows = read_box_csv(path, has_score=True, min_score=0.9)
    np.testing.assert_array_equal(rows.seconds, [902])
    np.testing.assert_allclose(rows.scores, [0.95])


@pytest.mark.parametrize(
    "row, words",
    [
        ("v,902,0.1,0.2,0.5", "expected 7 comma-separated fields"),
        ("v,9o2,0.1,0.2,0.5,0.6,1,0", "timestamp '9o2'"),
        ("v,902,0.1,zz,0.5,0.6,1,0", "must be numbers"),
        ("v,902,0.1,nan,0.5,0.6,1,0", "finite"),
        ("v,902,0.5,0.2,0.1,0.6,1,0", "inverted box"),
        ("v,902,0.1,0.2,0.5,0.6,stand,0", "action_id 'stand'"),
    ],
)
def test_box_csv_errors_name_file_line_and_row(tmp_path, row, words):
    path = write(tmp_path / "gt.csv", "v,902,0.1,0.2,0.5,0.6,1,0\n" + row + "\n")
    with pytest.raises(DataFormatError) as e:
        read_box_csv(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2:") and words in message and repr(row) in message


def test_label_map_both_pbtxt_forms(tmp_path):
    item = write(tmp_path / "a.pbtxt", 'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\nitem {\n  name: "sit"\n  id: 11\n}\n')
    label = write(tmp_path / "b.pbtxt", 'label {\n  name: "stand"\n  label_id: 12\n  label_type: PERSON_MOVEMENT\n}\n')
    assert read_label_map(item) == {1: "bend/bow (at the waist)", 11: "sit"}
    assert read_label_map(label) == {12: "stand"}


def test_label_map_errors(tmp_path):
    twice = write(tmp_path / "a.pbtxt", 'item {\n name: "a"\n id: 1\n}\nitem {\n name: "b"\n id: 1\n}\n')
    with pytest.raises(DataFormatError, match=r"a.pbtxt:7: duplicate id 1 \(first at line 3\)"):
        read_label_map(twice)
    nameless = write(tmp_path / "b.pbtxt", "item {\n id: 3\n}\n")
    with pytest.raises(DataFormatError, match=r"b.pbtxt:1: item block without name"):
        read_label_map(nameless)
    with pytest.raises(DataFormatError, match="no 'item"):
        read_label_map(write(tmp_path / "c.pbtxt", "\n"))


def test_exclusions(tmp_path):
    assert read_exclusions(write(tmp_path / "e.csv", "v,0902\nw,1000\n")) == {("v", 902), ("w", 1000)}
    with pytest.raises(DataFormatError, match=r"e2.csv:2: timestamp"):
        read_exclusions(write(tmp_path / "e2.csv", "v,902\nv,x\n"))
