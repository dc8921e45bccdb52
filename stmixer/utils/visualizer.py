"""Drawing action detections on video frames: a box per person, its top actions and scores above it."""

import cv2
import numpy as np

# Distinct BGR colours (Tableau 10), one per person of a keyframe, in detection order.
PALETTE = (
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23),
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_color(background):
    """Black or white, whichever reads better on a BGR ``background``."""
    b, g, r = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_detections(frame, persons):
    """Draw persons and their action labels on a frame, in place.

    Args:
        frame: uint8 ``[H, W, 3]`` BGR image (modified).
        persons: list of dicts with "box" (normalized x1, y1, x2, y2) and "actions" (list of
            dicts with "name" and "score" in [0, 1], drawn in the given order).

    Returns:
        ``frame``. Line width and text size follow the frame's short side; a label block that
        does not fit above its box is drawn inside the box's top instead.
    """
    height, width = frame.shape[:2]
    short = min(height, width)
    thickness = max(2, int(round(short / 240)))
    font_scale = max(0.3, short / 720)
    text_thickness = max(1, int(round(short / 480)))
    for i, person in enumerate(persons):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (np.asarray(person["box"], dtype=np.float64) * [width, height, width, height]).round()
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        cv2.rectangle(frame, (x1, y1), (x2, y2), color, thickness)
        lines = [f"{a['name']} {a['score']:.2f}" for a in person["actions"]]
        if not lines:
            continue
        sizes = [cv2.getTextSize(line, _FONT, font_scale, text_thickness) for line in lines]
        line_height = max(h + baseline for (_, h), baseline in sizes) + 2
        block_width = max(w for (w, _), _ in sizes) + 4
        block_height = line_height * len(lines)
        top = y1 - block_height if y1 - block_height >= 0 else y1
        left = min(max(x1, 0), max(width - block_width, 0))
        cv2.rectangle(frame, (left, top), (left + block_width, top + block_height), color, cv2.FILLED)
        for j, line in enumerate(lines):
            baseline_y = top + (j + 1) * line_height - sizes[j][1] - 1
            cv2.putText(frame, line, (left + 2, baseline_y), _FONT, font_scale, _text_color(color), text_thickness,
                        cv2.LINE_AA)
    return frame
