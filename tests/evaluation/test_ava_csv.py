import csv
import io

import numpy as np
import pytest

from stmixer.evaluation import AVAFormatError, read_ava_csv, read_exclusions
from stmixer.errors import UserEncodingError
from stmixer.evaluation import ava_csv
from stmixer.evaluation.ava_csv import round5, write_detections_csv

from evaluation_cases import make_table


def read_text(tmp_path, text, **kwargs):
    path = tmp_path / "f.csv"
    path.write_text(text)
    return read_ava_csv(path, **kwargs), str(path)


def test_reads_8_and_7_columns_and_keyframe_keys(tmp_path):
    table, _ = read_text(tmp_path, "vid,0902,0.1,0.2,0.3,0.4,12,0.75\n\nvid,902,0.1,0.2,0.3,0.4,5,0.5\n")
    assert table.videos == ["vid"]
    assert table.box_timestamp.tolist() == [902]  # "0902" and "902": one keyframe, and one box
    assert table.box_index.tolist() == [0, 0]
    assert table.action.tolist() == [12, 5] and table.score.tolist() == [0.75, 0.5]
    seven, _ = read_text(tmp_path, "-a_b,1000,0,0,1,1,3\n")
    assert seven.score.tolist() == [1.0] and seven.videos == ["-a_b"]


def test_mixed_widths_quotes_and_label_map_filter(tmp_path):
    text = '"x,y",902,0.1,0.2,0.3,0.4,1,0.9\nNA,902,0.1,0.2,0.3,0.4,2\nNA,903,0,0,1,1,7,0.1\n'
    table, _ = read_text(tmp_path, text, keep_actions=[1, 2], keep_data_rows=True)
    assert [table.videos[v] for v in table.box_video[table.box_index]] == ["x,y", "NA"]
    assert table.score.tolist() == [0.9, 1.0]
    assert table.data_row.tolist() == [0, 1]


def test_numbers_parse_exactly_like_python_float(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_csv, "_read_slow", None)  # the fast (pandas) path must handle these
    rng = np.random.default_rng(0)
    values = [repr(v) for v in rng.random(300).tolist()] + ["0.1000000000000000055511151231257827", "1e-320", "7.0e-1", "0.30000000000000004"]
    values += [format(v, ".5f") for v in rng.random(300).tolist()] + [f"{m}.{d}5" for m in range(3) for d in range(0, 1000, 7)]
    text = "".join(f"v,902,{v},0,1,1,1,{v}\n" for v in values)
    table, _ = read_text(tmp_path, text)
    assert table.score.tolist() == [float(v) for v in values]


@pytest.mark.parametrize(
    "text, message",
    [
        ("v,902,0.1,0.2,0.3,0.4,1,0.5\nv,902,0.1,0.2,0.3\n", r"f.csv:2: expected 7 or 8 comma-separated fields"),
        ("v,902,0.1,0.2,0.3,0.4,1,0.5\n\nv,902,0.1,x,0.3,0.4,1,0.5\n", r"f.csv:3: box coordinate 'x' is not a number"),
        ("video_id,timestamp,x1,y1,x2,y2,action_id,score\n", r"f.csv:1: timestamp 'timestamp' is not an integer number of seconds"),
        ("v,902,0.1,0.2,0.3,0.4,1.5,0.5\n", r"f.csv:1: action_id '1.5' is not an integer"),
        ("v,902,0.1,0.2,0.3,0.4,1,nan\n", r"f.csv:1: score 'nan' is not a finite number"),
        ("v,902,0.1,0.2,0.3,0.4,1,0.5\nv,902,0.1,inf,0.3,0.4,1,0.5\n", r"f.csv:2: a box coordinate is not a finite number"),
        ("v,902,0,0,1,1,1,0.5\nv,99999999999,0.1,0.2,0.3,0.4,1,0.5\n", r"f.csv:2: timestamp '99999999999' is out of range"),
        ("v,902,0,0,1,1,1,0.5\nv,0902.5,0,0,1,1,1,0.5\n", r"f.csv:2: timestamp '0902.5' is not an integer number of seconds"),
        ("v,902,0,0,1,1,1,0.5\nv,nan,0,0,1,1,1,0.5\n", r"f.csv:2: timestamp 'nan' is not an integer number of seconds"),
        ("v,902,0,0,1,1,1,0.5\nv,9.025e2,0,0,1,1,1,0.5\n", r"f.csv:2: timestamp '9.025e2' is not an integer"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, text, message):
    with pytest.raises(AVAFormatError, match=message):
        read_text(tmp_path, text)


def test_binary_file_is_reported(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"v,902,0.1,0.2,0.3,0.4,1,0.5\n\xff\xfe,1\n")
    with pytest.raises(UserEncodingError, match=r"f.csv:2: not UTF-8 text \(byte 0xff at offset 28\)"):
        read_ava_csv(path)
    path.write_bytes(b"v,0902\n\nv,0903\xe9\n")
    with pytest.raises(UserEncodingError, match=r"f.csv:3: not UTF-8 text \(byte 0xe9 at offset 14\)"):
        read_exclusions(path)


def test_exclusions(tmp_path):
    path = tmp_path / "excl.csv"
    path.write_text("a,0902\n\nb,1000\n")
    assert read_exclusions(path) == {("a", 902), ("b", 1000)}
    assert read_exclusions(None) == set()
    path.write_text("a,0902,3\n")
    with pytest.raises(AVAFormatError, match=r"excl.csv:1: expected 2 fields"):
        read_exclusions(path)


def test_round5_matches_python_formatting():
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.random(20000),
            rng.random(20000).astype(np.float32),  # the official writer formats float32 values
            np.arange(0, 3, 1 / 1024),  # exact binary fractions: ties to even on the exact value
            [0.0, -0.0, -1e-7, 0.000005, 0.000015, 9.999995, 123456.789125, 1e12 + 0.5, -2.5e-6],
        ]
    )
    rounded = round5(values)
    expected = np.array([float(format(float(v), ".5f")) for v in values])
    assert np.array_equal(rounded, expected)
    assert np.array_equal(np.signbit(rounded), np.signbit(expected))


def _official_format_text(rows):
    """The official STMixer writer's format: csv.writer rows, '%04d' timestamp, '{:.5f}' numbers."""
    out = io.StringIO()
    writer = csv.writer(out)
    for video, timestamp, box, action, score in rows:
        writer.writerow([video, f"{timestamp:04d}"] + [f"{v:.5f}" for v in box] + [action, f"{score:.5f}"])
    return out.getvalue().encode()


def test_writer_is_byte_identical_to_the_official_format(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for video, timestamp in (("-vid_A", 902), ('q"uote,d', 1798), ("v", 15)):
        for _ in range(3):
            box = rng.random(4).astype(np.float32).tolist()
            for action in (1, 12, 80):
                rows.append((video, timestamp, box, action, float(np.float32(rng.random()))))
    rows.append(("v", 16, [-0.000001, 1.0, 12.345678, 0.5], 3, 0.000004))
    table = make_table([(v, t, round5(np.array(b)), a, round5(np.array([s]))[0]) for v, t, b, a, s in rows])
    buffer = io.BytesIO()
    write_detections_csv(buffer, table)
    assert buffer.getvalue() == _official_format_text(rows)
    # and it reads back to exactly the rounded values
    path = tmp_path / "det.csv"
    path.write_bytes(buffer.getvalue())
    back = read_ava_csv(path)
    assert np.array_equal(back.score, table.score)
    assert np.array_equal(back.boxes[back.box_index], table.boxes[table.box_index])


def _assert_same_table(a, b):
    assert a.videos == b.videos
    for name in ("box_video", "box_timestamp", "boxes", "box_index", "action", "score", "data_row"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("rows_per_box", [79, 3, 1])
@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 13, 80, 101])
def test_chunk_boundaries_inside_a_box_give_the_one_chunk_result(tmp_path, rows_per_box, chunk_rows):
    rng = np.random.default_rng(rows_per_box)
    lines = []
    for k in range(7):
        video, second = f"v{k % 2}", 902 + k // 2
        box = ",".join(format(v, ".5f") for v in np.sort(rng.random(4).reshape(2, 2), axis=0).T.reshape(-1))
        lines += [f"{video},{second:04d},{box},{a},{rng.random():.5f}" for a in range(1, rows_per_box + 1)]
    path = tmp_path / "det.csv"
    path.write_text("\n".join(lines) + "\n")
    whole = read_ava_csv(path, keep_data_rows=True, chunk_rows=len(lines))
    assert whole.box_index.tolist() == np.repeat(np.arange(7), rows_per_box).tolist()
    _assert_same_table(read_ava_csv(path, keep_data_rows=True, chunk_rows=chunk_rows), whole)
    kept = read_ava_csv(path, keep_actions=[2, 3], keep_data_rows=True, chunk_rows=len(lines))
    _assert_same_table(read_ava_csv(path, keep_actions=[2, 3], keep_data_rows=True, chunk_rows=chunk_rows), kept)


@pytest.mark.parametrize("seed", range(5))
def test_line_of_data_row_counts_like_the_csv_module(tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    pieces = ["v,902,0,0,1,1,1,0.5", "", "   ", " , ,", "w,903,0,0,1,1,2"]
    lines = [pieces[i] for i in rng.integers(0, len(pieces), 400)]
    path = tmp_path / "f.csv"
    path.write_text("\n".join(lines) + ("\n" if seed % 2 else ""))
    monkeypatch.setattr(ava_csv, "_LINE_BLOCK", 64)  # many blocks, lines cut at block ends
    rows = sum(1 for line in lines if line.replace(",", "").strip())
    for data_row in range(rows):
        assert ava_csv.line_of_data_row(path, data_row) == ava_csv._line_of_data_row_csv(path, data_row)
    with pytest.raises(IndexError):
        ava_csv.line_of_data_row(path, rows)


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_kept_mask_locates_rows_like_data_rows(tmp_path, chunk_rows):
    lines = [f"v,{902 + i % 3},0,0,1,1,{1 + i % 4},0.5" if i % 5 else "" for i in range(60)]
    path = tmp_path / "det.csv"
    path.write_text("\n".join(lines) + "\n")
    with_rows = read_ava_csv(path, keep_actions=[2, 4], keep_data_rows=True, chunk_rows=chunk_rows)
    masked = read_ava_csv(path, keep_actions=[2, 4], chunk_rows=chunk_rows)
    assert masked.data_row is None and len(masked) == len(with_rows) > 0
    assert [masked.data_row_of(r) for r in range(len(masked))] == with_rows.data_row.tolist()
    with pytest.raises(IndexError):
        masked.data_row_of(len(masked))


def test_frame_map_does_not_depend_on_the_chunk_size(write_files, monkeypatch):
    from stmixer.evaluation import evaluate_files

    rng = np.random.default_rng(5)
    gt = [("v", 902 + k, (0.1, 0.1, 0.5, 0.5), 1 + k % 3, 0) for k in range(6)]
    det = [("v", 902 + k, tuple(np.round([0.1, 0.1, 0.5 + 0.1 * b, 0.5], 3)), a, float(np.round(rng.random(), 4)))
           for k in range(6) for b in range(2) for a in (1, 2, 3)]
    paths = write_files(gt, det, ids=(1, 2, 3))
    expected = evaluate_files(paths["groundtruth"], paths["detections"], paths["labelmap"])[0]
    for chunk_rows in (1, 2, 5, 7):  # 3 rows per box: boxes straddle the chunk boundaries
        monkeypatch.setattr(ava_csv, "CHUNK_ROWS", chunk_rows)
        result = evaluate_files(paths["groundtruth"], paths["detections"], paths["labelmap"])[0]
        assert result.mean_ap == expected.mean_ap and result.ap == expected.ap
