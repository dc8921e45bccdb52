"""Decode time of one JPEG frame: stmixer's reader (simplejpeg, strict) against OpenCV and Pillow.

    python benchmarks/frame_decoding.py [--sizes 240x320 720x1280] [--repeats 7]

Frames are smooth synthetic images encoded by OpenCV at quality 90 (4:2:0), one
decoder thread. Printed per size: the median and the best over ``--repeats``
interleaved rounds of milliseconds per decode, and each candidate's time relative
to ``cv2.imdecode``. Every candidate's pixels are checked to equal
``cv2.imdecode``'s (BGR) first. Only stmixer's reader (``decode_frame``) names
corrupt-data warnings per file; OpenCV decodes such files silently and Pillow
ignores the warnings.
"""

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stmixer.data.frames import decode_frame  # noqa: E402


def make_jpeg(height, width):
    """Bytes of a smooth ``height`` x ``width`` colour JPEG (quality 90)."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (15, 15), 4)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def candidates(data):
    """{name: zero-argument decode of ``data`` to a BGR uint8 array}."""
    return {
        "cv2.imdecode": lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
        "stmixer decode_frame": lambda: decode_frame(data, "frame.jpg"),
        "Pillow + RGB->BGR": lambda: np.ascontiguousarray(
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
        ),
    }


def time_per_call(fn, min_seconds=0.2):
    """Seconds per call of ``fn``, over at least ``min_seconds`` of calls."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["240x320", "720x1280"], help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per candidate")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    for size in args.sizes:
        height, width = map(int, size.split("x"))
        data = make_jpeg(height, width)
        fns = candidates(data)
        reference = fns["cv2.imdecode"]()
        for name, fn in fns.items():
            if not np.array_equal(fn(), reference):
                raise SystemExit(f"{name}: pixels differ from cv2.imdecode at {width}x{height}")
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                times[name].append(time_per_call(fn))
        base = statistics.median(times["cv2.imdecode"])
        print(f"{width}x{height} JPEG, {len(data) / 1024:.0f} KiB (pixels identical):")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:22s} median {median * 1e3:6.2f} ms  best {min(values) * 1e3:6.2f} ms  "
                  f"x{median / base:.2f} of cv2")


if __name__ == "__main__":
    main()
