"""Fixtures for the evaluation tests."""

import pytest

from evaluation_cases import csv_text


@pytest.fixture
def write_files(tmp_path):
    """Write a case to tmp_path; returns a dict of paths (groundtruth, detections, labelmap, exclusions)."""

    def write(gt_rows, det_rows, ids, excluded=(), det_text=None):
        paths = {name: tmp_path / name for name in ("gt.csv", "det.csv", "labelmap.pbtxt", "excl.csv")}
        paths["gt.csv"].write_text(csv_text(gt_rows))
        paths["det.csv"].write_text(det_text if det_text is not None else (csv_text(det_rows) if det_rows else ""))
        paths["labelmap.pbtxt"].write_text("".join(f'item {{\n  name: "a{i}"\n  id: {i}\n}}\n' for i in ids))
        paths["excl.csv"].write_text("".join(f"{v},{t}\n" for v, t in excluded))
        return {
            "groundtruth": str(paths["gt.csv"]),
            "detections": str(paths["det.csv"]),
            "labelmap": str(paths["labelmap.pbtxt"]),
            "exclusions": str(paths["excl.csv"]),
        }

    return write
