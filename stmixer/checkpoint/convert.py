"""Convert any supported weight file to the stmixer format.

    python -m stmixer.checkpoint.convert SRC DST

DST holds ``{"format": "stmixer", "format_version": 1, "model": <detector state
dict>, "converted_from": {"file", "format", "dropped"}}``. Only the weights are
kept (in the file's dtype): optimizer / scheduler / iteration entries of other
formats describe other training set-ups and are not carried over. DST is
written atomically. Exit status 1 with a one-line error for unreadable,
unsafe or unknown files and for a full disk (DST is then not written).

An old ``model_final.pth`` that still carries the optimizer (stmixer before
the weights-only final file) is stripped to its weights the same way.
"""

import argparse
import os
import sys

from ..errors import exit_on_user_error
from .formats import read_checkpoint, save_checkpoint


def convert(src, dst):
    """Convert ``src`` to the project format at ``dst``; returns the source's ``CheckpointContents``."""
    contents = read_checkpoint(src)
    save_checkpoint(
        dst,
        contents.state_dict,
        converted_from={
            "file": os.path.basename(str(src)),
            "format": contents.format,
            "dropped": {reason: len(keys) for reason, keys in contents.dropped.items()},
        },
    )
    return contents


def main(argv=None):
    """Command-line entry point; returns 0, or exits with status 1 and one ``error:`` line."""
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.checkpoint.convert",
        description="Convert a weight file (stmixer, official STMixer, PySlowFast .pkl/.pyth, VideoMAE .pth) "
                    "to the stmixer checkpoint format.",
    )
    parser.add_argument("src", help="weight file to read (format detected from its content)")
    parser.add_argument("dst", help="stmixer checkpoint to write")
    args = parser.parse_args(argv)
    with exit_on_user_error(status=1):
        contents = convert(args.src, args.dst)
    dropped = ", ".join(f"{len(v)} {r}" for r, v in contents.dropped.items()) or "nothing"
    print(f"{args.src}: {contents.description}; {len(contents.state_dict)} tensors written to {args.dst} "
          f"(dropped: {dropped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
