"""Turn ``demo.py --json`` detections into a person-proposal CSV for the two-stage detectors.

``python -m stmixer.tools.detections_to_proposals DEMO.jsonl OUT.csv --video-id ID`` writes one row
``ID,second,x1,y1,x2,y2,score`` (``stmixer.data.proposals.PROPOSAL_CSV_COLUMNS``, boxes normalized) per
person of each keyframe record on a whole second: e.g. an STMixer model's detections of a video become
the ``--proposals`` of a FastRCNN model's ``demo.py`` run on the same video (``--video-id`` defaults to
the JSON file's stem up to its first dot, ``clip.jsonl`` -> ``clip``; give the video's file stem).
Records between whole seconds (``--keyframe-rate`` above 1) are left out, with a count in the log;
``--min-score`` drops persons scored lower (the FastRCNN run also applies ``PROPOSALS.DET_SCORE_THR``).
"""

import argparse
import json
import logging
import math
import os

from ..ava_files import iter_lines
from ..errors import UserError, exit_on_user_error
from ..utils.io import atomic_open
from ..utils.logging import setup_logger

logger = logging.getLogger("stmixer.tools.detections_to_proposals")


def _record_error(path, line_no, expected):
    return UserError(f"{path}:{line_no}: expected a demo.py --json record {expected}")


def detection_rows(path, video_id, min_score=0.0):
    """Proposal CSV rows of a ``demo.py --json`` file.

    Args:
        path: the JSON-lines file (``{"time": s, "persons": [{"box": [x1, y1, x2, y2], "score": p}, ...]}``).
        video_id: the video id written in the rows.
        min_score: persons scored below it are left out.

    Returns:
        (list of ``(video_id, second, x1, y1, x2, y2, score)``, number of records not on a whole second).

    Raises:
        UserError naming ``file:line`` for a line that is not such a record.
    """
    rows, skipped = [], 0
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise _record_error(path, line_no, f"(not JSON: {e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("time"), (int, float)) \
                or not isinstance(record.get("persons"), list):
            raise _record_error(path, line_no, 'with a number "time" and a list "persons"')
        time_s = float(record["time"])
        if not math.isfinite(time_s) or time_s < 0 or not time_s.is_integer():
            skipped += 1
            continue
        for person in record["persons"]:
            box, score = (person.get("box"), person.get("score")) if isinstance(person, dict) else (None, None)
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                    and isinstance(score, (int, float))):
                raise _record_error(path, line_no, 'whose persons have a "box" of 4 numbers and a "score"')
            if score >= min_score:
                rows.append((video_id, int(time_s), *(float(v) for v in box), float(score)))
    return rows, skipped


def main(argv=None):
    """Command-line entry point: bad input ends with status 1 and one ``error:`` line."""
    parser = argparse.ArgumentParser(prog="python -m stmixer.tools.detections_to_proposals",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("detections", metavar="DEMO.jsonl", help="detections written by demo.py --json")
    parser.add_argument("out", metavar="OUT.csv", help="proposal CSV to write (video_id,timestamp,x1,y1,x2,y2,score)")
    parser.add_argument("--video-id", metavar="ID",
                        help="video id of the rows: the file stem of the video (default: DEMO.jsonl's name up to "
                             "its first dot)")
    parser.add_argument("--min-score", type=float, default=0.0, help="leave out persons scored lower (default 0)")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".csv"):
        parser.error(f"OUT.csv {args.out}: the proposal readers take a .csv file")
    setup_logger("", 0)
    video_id = args.video_id or os.path.basename(args.detections).split(".")[0]
    with exit_on_user_error():
        if "," in video_id:
            raise UserError(f"--video-id {video_id!r}: a video id cannot hold a comma (it is a CSV column)")
        rows, skipped = detection_rows(args.detections, video_id, args.min_score)
        with atomic_open(args.out, "w") as f:
            f.writelines(",".join([v, str(s)] + [f"{x:.6g}" for x in rest]) + "\n" for v, s, *rest in rows)
    logger.info("%d proposals of video %r written to %s", len(rows), video_id, args.out)
    if skipped:
        logger.warning("%d records of %s are not on a whole second (proposals are per second): left out",
                       skipped, args.detections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
