"""TubeR's AVA annotation JSON (``ava_{train,val}_v2{1,2}.json``): writer, reader and converter to the AVA CSV.

TubeR (amazon-science/tubelet-transformer, ``datasets/ava_frame.py``) reads its AVA ground truth from
JSON files (``CONFIG.DATA.ANNO_PATH``) instead of the AVA CSVs::

    {"video_frame_bbox": {"<video_id>,<SSSS>": {"bboxes": [[x1, y1, x2, y2], ...],   # normalized
                                              "acts": [[a, ...], ...]}, ...},       # 0-based action ids
     "frame_keys_list": ["<video_id>,<SSSS>", ...]}

one entry per keyframe (second zero-padded to 4 digits), one ``bboxes`` row per person with the list
of its actions (``acts[i]``: AVA action id - 1). TubeR builds them from the AVA CSV rows, merging
rows of one keyframe with the same four coordinates (``obtain_generated_bboxes_training``).

* ``boxrows_to_tuber_json(rows)``: ``stmixer.ava_files.BoxRows`` (an AVA CSV) -> that dict;
* ``write_tuber_json(path, rows)`` / ``read_tuber_json(path)`` -> ``BoxRows`` (one row per box and action,
  1-based action ids, ``person_id`` unknown: -1 when written back as CSV);
* ``python -m stmixer.data.tuber_json IN.json OUT.csv`` converts a TubeR file to the AVA CSV layout
  stmixer's datasets read (``python -m stmixer.data.tuber_json --to-json IN.csv OUT.json`` the reverse).

The synthetic generator (``stmixer.data.synthetic``) writes ``annotations_v2.2/ava_{split}_v22.json``
beside its CSVs.
"""

import argparse
import json
import math
import sys

import numpy as np

from ..ava_files import BoxRows, DataFormatError, parse_timestamp, read_box_csv
from ..errors import exit_on_user_error
from ..utils.io import atomic_open


class TubeRJSONError(DataFormatError):
    """A TubeR annotation JSON whose content does not have the expected form."""


def frame_key(video, second):
    """TubeR's keyframe key ``"<video_id>,<SSSS>"``."""
    return f"{video},{int(second):04d}"


def boxrows_to_tuber_json(rows):
    """TubeR's dict of the ground-truth rows (see module docstring); rows with an empty action are skipped."""
    entries, keys = {}, []
    for i in range(len(rows)):
        action = int(rows.actions[i])
        if action < 1:
            continue
        key = frame_key(rows.videos[i], rows.seconds[i])
        box = [float(v) for v in rows.box_keys[i].split(",")]
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = {"bboxes": [], "acts": []}
            keys.append(key)
        if box in entry["bboxes"]:
            acts = entry["acts"][entry["bboxes"].index(box)]
            if action - 1 not in acts:
                acts.append(action - 1)
        else:
            entry["bboxes"].append(box)
            entry["acts"].append([action - 1])
    return {"video_frame_bbox": entries, "frame_keys_list": keys}


def write_tuber_json(path, rows):
    """Write the ground-truth ``rows`` (``BoxRows``) as a TubeR annotation JSON; returns the dict."""
    data = boxrows_to_tuber_json(rows)
    with atomic_open(path, "w") as f:
        json.dump(data, f)
    return data


def _fail(path, where, expected):
    raise TubeRJSONError(f"{path}: {where}: expected {expected}")


def read_tuber_json(path):
    """Read a TubeR annotation JSON into ``BoxRows`` (one row per box and action; ``line_numbers`` 0).

    Raises:
        TubeRJSONError naming the file, the keyframe key and what was expected (not JSON, missing
        ``video_frame_bbox``, a key not ``<video>,<second>``, ``bboxes`` / ``acts`` of different lengths,
        a box that is not 4 finite numbers with x1 <= x2 and y1 <= y2, an action id not an integer >= 0).
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise TubeRJSONError(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise TubeRJSONError(f"{path}: not valid UTF-8 JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("video_frame_bbox"), dict):
        _fail(path, "top level", 'an object with "video_frame_bbox": {"<video_id>,<SSSS>": {"bboxes", "acts"}}')
    keys = data.get("frame_keys_list", list(data["video_frame_bbox"]))
    videos, seconds, boxes, box_keys, actions = [], [], [], [], []
    for key in keys:
        entry = data["video_frame_bbox"].get(key)
        if not isinstance(entry, dict):
            _fail(path, f"frame_keys_list entry {key!r}", "a key of video_frame_bbox")
        video, sep, second = str(key).rpartition(",")
        try:
            second = parse_timestamp(second)
        except ValueError:
            second = None
        if not sep or not video or second is None:
            _fail(path, f"key {key!r}", '"<video_id>,<second>"')
        bboxes, acts = entry.get("bboxes"), entry.get("acts")
        if not isinstance(bboxes, list) or not isinstance(acts, list) or len(bboxes) != len(acts):
            _fail(path, f"key {key!r}", '"bboxes" and "acts" lists of the same length')
        for j, (box, act) in enumerate(zip(bboxes, acts)):
            ok = (isinstance(box, list) and len(box) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box))
            if not ok or box[2] < box[0] or box[3] < box[1]:
                _fail(path, f"key {key!r} box {j}", "4 finite numbers x1, y1, x2, y2 with x1 <= x2 and y1 <= y2")
            if not isinstance(act, list) or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0
                                                    for a in act):
                _fail(path, f"key {key!r} acts {j}", "a list of 0-based action ids (integers >= 0)")
            for a in act:
                videos.append(video)
                seconds.append(second)
                boxes.append([float(v) for v in box])
                box_keys.append(",".join(repr(float(v)) for v in box))
                actions.append(a + 1)
    n = len(videos)
    return BoxRows(videos=videos, seconds=np.asarray(seconds, dtype=np.int64),
                   boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), box_keys=box_keys,
                   actions=np.asarray(actions, dtype=np.int64), scores=np.full(n, np.nan, dtype=np.float32),
                   path=str(path), line_numbers=np.zeros(n, dtype=np.int64))


def write_box_csv(path, rows):
    """``rows`` as an AVA ground-truth CSV (``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``; person -1)."""
    with atomic_open(path, "w") as f:
        for i in range(len(rows)):
            f.write(f"{rows.videos[i]},{int(rows.seconds[i]):04d},{rows.box_keys[i]},{int(rows.actions[i])},-1\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stmixer.data.tuber_json",
                                     description="Convert TubeR's AVA annotation JSON to the AVA CSV layout, or back.")
    parser.add_argument("source", help="TubeR JSON (or, with --to-json, an AVA ground-truth CSV)")
    parser.add_argument("target", help="AVA CSV to write (or, with --to-json, the JSON)")
    parser.add_argument("--to-json", action="store_true", help="convert an AVA CSV to TubeR's JSON")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        return _convert(args)


def _convert(args):
    if args.to_json:
        data = write_tuber_json(args.target, read_box_csv(args.source))
        print(f"{len(data['frame_keys_list'])} keyframes written to {args.target}")
    else:
        rows = read_tuber_json(args.source)
        write_box_csv(args.target, rows)
        print(f"{len(rows)} rows written to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
