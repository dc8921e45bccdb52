"""Write a frame list from extracted frames: ``python -m stmixer.data.frame_lists --frame-dir D --out F``.

Every video folder ``<frame-dir>/<video>/`` must hold ``<video>_000001.jpg`` ... without gaps
(as ``ffmpeg ... <video>_%06d.jpg`` writes them). The list has the AVA header and one row
``<video> <video_idx> <frame_idx> <video>/<video>_%06d.jpg ""`` per frame.
"""

import argparse
import os
import re
import sys

from ..ava_files import FRAME_LIST_HEADER, ava_frame_name
from ..utils.io import atomic_open


def count_frames(frame_dir, video):
    """Number of frames ``<video>_%06d.jpg`` in ``frame_dir/video``.

    Raises:
        FileNotFoundError for a missing folder; ValueError naming the first missing frame
        number when the numbering (from 1) has a gap.
    """
    folder = os.path.join(frame_dir, video)
    pattern = re.compile(re.escape(video) + r"_(\d{6})\.jpg$")
    numbers = sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m)
    for expected, number in enumerate(numbers, 1):
        if number != expected:
            raise ValueError(f"{folder}: frame {ava_frame_name(video, expected - 1)} is missing "
                             f"(frames must be numbered 1, 2, ... without gaps)")
    return len(numbers)


def write_frame_list(frame_dir, videos, out_path):
    """Write the frame list of ``videos`` (names of folders in ``frame_dir``) to ``out_path``; returns frame counts."""
    counts = {video: count_frames(frame_dir, video) for video in videos}
    with atomic_open(out_path, "w") as f:
        f.write(FRAME_LIST_HEADER + "\n")
        for video_idx, video in enumerate(videos):
            for frame in range(counts[video]):
                f.write(f'{video} {video_idx} {frame} {ava_frame_name(video, frame)} ""\n')
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stmixer.data.frame_lists", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-dir", required=True, help="folder of the video folders (AVA.FRAME_DIR under the root)")
    parser.add_argument("--out", required=True, help="frame list to write, e.g. <root>/frame_lists/train.csv")
    parser.add_argument("--videos", default="", help="text file with one video id per line (default: every folder)")
    args = parser.parse_args(argv)
    if args.videos:
        with open(args.videos) as f:
            videos = [line.strip() for line in f if line.strip()]
    else:
        videos = sorted(e.name for e in os.scandir(args.frame_dir) if e.is_dir())
    try:
        counts = write_frame_list(args.frame_dir, videos, args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(counts)} videos, {sum(counts.values())} frames "
          f"(per video: min {min(counts.values(), default=0)}, max {max(counts.values(), default=0)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
