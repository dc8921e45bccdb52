"""AVA CSV files: fast reading into columns, and writing detections in the official format.

Row format (no header)::

    video_id,timestamp,x1,y1,x2,y2,action_id[,score]

Boxes are normalized ``[0, 1]`` x1,y1,x2,y2 (as AVA stores them). The 8th
column is the detection score, or the person id in ground-truth files; a row
without it has score 1.0 (as the official reader does). A keyframe is
``(video_id as written, timestamp)``: "902" and "0902" are the same one; a timestamp
must be an integer (the one field rule of ``stmixer.ava_files.parse_timestamp``).

Reading uses pandas' C parser in chunks; a file it cannot parse (7 and 8
column rows mixed, a bad number, ...) is re-read row by row with the ``csv``
module and Python's ``float``/``int`` (what the official reader does), which
either gives the same columns or names the file and line at fault.
"""

import csv
import dataclasses
import math
import re

import numpy as np
import pandas as pd

from ..ava_files import AVAFormatError, check_utf8, parse_action_id, parse_timestamp

# Rows per chunk of the fast reader (read_ava_csv's chunk_rows overrides it).
CHUNK_ROWS = 500_000
_TIMESTAMP_LIMIT = 2**31 - 1
_COLUMN_NAMES = ("video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "score")
_PANDAS_OLD_FLOATS = tuple(int(p) for p in pd.__version__.split(".")[:2]) < (3, 1)


@dataclasses.dataclass
class AVATable:
    """Rows of one AVA CSV file (or of in-memory detections), in file order.

    Boxes are stored once per detected box (a detection file repeats each box on one
    row per class): consecutive rows with the same keyframe and coordinates share an
    entry, and ``box_index`` never decreases.

    Attributes:
        videos: video names as written; ``box_video`` indexes it.
        box_video: int32 ``[B]`` video of each box.
        box_timestamp: int32 ``[B]`` integer timestamp (seconds) of each box.
        boxes: float64 ``[B, 4]`` normalized x1, y1, x2, y2.
        box_index: int32 ``[N]`` row -> box (non-decreasing).
        action: int32 ``[N]`` AVA action id.
        score: float64 ``[N]``: the score (detections) or the 8th column (person id in
            ground truth; the ``activitynet`` protocol orders ground truth by it); 1.0
            for rows without an 8th column.
        data_row: int32 (int64 past 2**31 rows) ``[N]`` index of the row among the file's non-blank rows
            (to name the line in error messages), or None.
        source: the file name (or a description) for messages.
        kept: bool ``[R]`` over the file's non-blank rows: True for the rows in the table
            (the same information as ``data_row`` in one byte per file row; tables read
            from a file have it), or None.
    """

    videos: list
    box_video: np.ndarray
    box_timestamp: np.ndarray
    boxes: np.ndarray
    box_index: np.ndarray
    action: np.ndarray
    score: np.ndarray
    data_row: np.ndarray = None
    source: str = "<memory>"
    kept: np.ndarray = None

    def __len__(self):
        return len(self.action)

    def row_boxes(self, rows):
        """float64 ``[n, 4]`` x1, y1, x2, y2 of the given rows."""
        return self.boxes[self.box_index[rows]]

    def data_row_of(self, row):
        """Index among the file's non-blank rows of table row ``row``; None when not known."""
        if self.data_row is not None:
            return int(self.data_row[row])
        if self.kept is None:
            return None
        seen = 0
        for start in range(0, len(self.kept), _ROUND_BLOCK):  # blocks: no [R] temporaries
            block = self.kept[start : start + _ROUND_BLOCK]
            n = int(np.count_nonzero(block))
            if seen + n > row:
                return start + int(np.flatnonzero(block)[row - seen])
            seen += n
        raise IndexError(f"{self.source}: the table has no row {row}")

    def row_keyframe(self, row):
        """``(video_id, timestamp)`` of one row."""
        box = self.box_index[row]
        return self.videos[self.box_video[box]], int(self.box_timestamp[box])


def _action_filter(keep_actions):
    """Lookup table for ``np.take``-style filtering: allowed[id] is True for kept ids."""
    if keep_actions is None:
        return None
    top = max(keep_actions)
    allowed = np.zeros(top + 2, dtype=bool)
    allowed[list(keep_actions)] = True
    return allowed


def _keep_mask(action, allowed):
    if allowed is None:
        return np.ones(len(action), dtype=bool)
    clipped = np.clip(action, -1, len(allowed) - 1)
    return allowed[clipped] & (action >= 0)


def _first_row_width(path):
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and any(field.strip() for field in row):
                return len(row)
    return 0


def _check_rows(path, bad, data_rows, message):
    """Raise ``path:line: message`` for the first row where ``bad`` is True."""
    if bad.any():
        raise AVAFormatError(f"{path}:{line_of_data_row(path, int(data_rows[np.argmax(bad)]))}: {message}")


_LINE_BLOCK = 1 << 24
# A line of only these bytes makes no CSV row (csv gives only blank fields); it is skipped.
_BLANK_LINE = re.compile(rb"[ \t\r\f\v,]*(?:\n|\Z)")
_BLANK_LINE_START = re.compile(rb"\n(?=[\n \t\r\f\v,])")  # a newline, then a line that may be blank (rare)
_LONE_CR = re.compile(rb"\r(?!\n)")


def _blank_lines(block):
    """Ascending 0-based indices of the blank lines of ``block`` (bytes ending with a newline or the file)."""
    starts = [0] + [m.start() + 1 for m in _BLANK_LINE_START.finditer(block)]
    return [block.count(b"\n", 0, start) for start in starts if start < len(block) and _BLANK_LINE.match(block, start)]


def line_of_data_row(path, data_row):
    """1-based line number of the ``data_row``-th non-blank CSV row of ``path``.

    Counts newlines in blocks of bytes (a row deep in a detection file is found in a
    fraction of a second); a file with quotes or lone carriage returns (where a row may
    span lines) is walked with the ``csv`` module instead.
    """
    lines_before = rows_before = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_LINE_BLOCK)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += f.readline()
            if b'"' in block or _LONE_CR.search(block):
                return _line_of_data_row_csv(path, data_row)
            num_lines = block.count(b"\n") + (not block.endswith(b"\n"))
            blank = _blank_lines(block)
            if rows_before + num_lines - len(blank) > data_row:
                line = data_row - rows_before
                for b in blank:  # ascending: step over the blank lines up to the row
                    if b > line:
                        break
                    line += 1
                return lines_before + line + 1
            rows_before += num_lines - len(blank)
            lines_before += num_lines
    raise IndexError(f"{path} has no data row {data_row}")


def _line_of_data_row_csv(path, data_row):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        count = -1
        for row in reader:
            if row and any(field.strip() for field in row):
                count += 1
                if count == data_row:
                    return reader.line_num
    raise IndexError(f"{path} has no data row {data_row}")


class _Columns:
    """Accumulates parsed chunks into compact columns (shared video vocabulary, one entry per box)."""

    def __init__(self, allowed, keep_data_rows):
        self.allowed = allowed
        self.keep_data_rows = keep_data_rows
        self.vocab = {}
        self.box_parts = []
        self.row_parts = []
        self.num_boxes = 0
        self.last_box = None
        self.kept_parts = []

    def add(self, names, codes, ts, boxes, action, score, data_rows):
        """Add one chunk: ``names[codes]`` video names, integer timestamps, [n, 4] boxes, ids, scores."""
        lookup = np.array([self.vocab.setdefault(name, len(self.vocab)) for name in names] or [0], dtype=np.int32)
        keep = _keep_mask(action, self.allowed)
        self.kept_parts.append(keep)
        if not keep.all():
            codes, ts, boxes, action, score, data_rows = (a[keep] for a in (codes, ts, boxes, action, score, data_rows))
        if len(codes) == 0:
            return
        video = lookup[codes]
        timestamp = ts.astype(np.int32)
        # Rows of one box (same keyframe, same coordinates) follow each other in detection files.
        new_box = np.ones(len(video), dtype=bool)
        new_box[1:] = (video[1:] != video[:-1]) | (timestamp[1:] != timestamp[:-1]) | (boxes[1:] != boxes[:-1]).any(1)
        first = (int(video[0]), int(timestamp[0]), *boxes[0].tolist())
        if first == self.last_box:  # the previous chunk ended inside this box
            new_box[0] = False
        self.last_box = (int(video[-1]), int(timestamp[-1]), *boxes[-1].tolist())
        box_index = np.cumsum(new_box, dtype=np.int64) - 1 + self.num_boxes
        self.num_boxes = int(box_index[-1]) + 1
        self.box_parts.append((video[new_box], timestamp[new_box], np.asarray(boxes[new_box], dtype=np.float64)))
        self.row_parts.append(
            (
                box_index.astype(np.int32),
                action.astype(np.int32),
                score.astype(np.float64),
                data_rows.astype(np.int32 if len(data_rows) and data_rows[-1] < 2**31 else np.int64)
                if self.keep_data_rows else None,
            )
        )

    def _column(self, parts, k, dtype, shape=(0,)):
        """Concatenate column ``k`` of the parts, releasing the pieces as it goes."""
        pieces = [part[k] for part in parts]
        for i, part in enumerate(parts):
            parts[i] = part[:k] + (None,) + part[k + 1 :]
        return np.concatenate(pieces) if pieces else np.zeros(shape, dtype)

    def table(self, source):
        """The accumulated AVATable (the chunks are released)."""
        box_parts, row_parts = self.box_parts, self.row_parts
        self.box_parts, self.row_parts = [], []
        return AVATable(
            videos=list(self.vocab),
            box_video=self._column(box_parts, 0, np.int32),
            box_timestamp=self._column(box_parts, 1, np.int32),
            boxes=self._column(box_parts, 2, np.float64, (0, 4)),
            box_index=self._column(row_parts, 0, np.int32),
            action=self._column(row_parts, 1, np.int32),
            score=self._column(row_parts, 2, np.float64),
            data_row=self._column(row_parts, 3, np.int64) if self.keep_data_rows else None,
            source=source,
            kept=np.concatenate(self.kept_parts) if self.kept_parts else np.zeros(0, dtype=bool),
        )


def _read_fast(path, width, columns, chunk_rows):
    dtypes = {"video_id": "category", "action_id": np.int64}
    for name in _COLUMN_NAMES[1:width]:
        dtypes.setdefault(name, np.float64)
    kwargs = dict(
        header=None,
        names=list(_COLUMN_NAMES[:width]),
        dtype=dtypes,
        na_filter=False,
        engine="c",
        chunksize=chunk_rows,
        skip_blank_lines=True,
        encoding="utf-8",
    )
    if _PANDAS_OLD_FLOATS:
        kwargs["float_precision"] = "round_trip"  # correctly rounded, like Python's float()
    start = 0
    with pd.read_csv(path, **kwargs) as reader:
        for chunk in reader:
            n = len(chunk)
            data_rows = np.arange(start, start + n, dtype=np.int64)
            start += n
            ts = chunk["timestamp"].to_numpy(np.float64)
            if not (np.isfinite(ts) & (ts == np.trunc(ts)) & (np.abs(ts) <= _TIMESTAMP_LIMIT)).all():
                raise ValueError("a timestamp the slow path names")  # with the field's text and line
            boxes = chunk[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
            score = chunk["score"].to_numpy(np.float64) if width == 8 else np.ones(n)
            _check_rows(path, ~np.isfinite(boxes).all(axis=1), data_rows, "a box coordinate is not a finite number")
            _check_rows(path, ~np.isfinite(score), data_rows, "the 8th column (score) is not a finite number")
            video = chunk["video_id"]
            columns.add(
                [str(c) for c in video.cat.categories],
                video.cat.codes.to_numpy(),
                ts,
                boxes,
                chunk["action_id"].to_numpy(np.int64),
                score,
                data_rows,
            )


def _parse_number(path, line, field, what, convert):
    try:
        value = convert(field)
    except (ValueError, OverflowError):
        raise AVAFormatError(f"{path}:{line}: {what} {field!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise AVAFormatError(f"{path}:{line}: {what} {field!r} is not a finite number")
    return value


def _read_slow(path, columns):
    names, codes, ts, boxes, action, score, data_rows = {}, [], [], [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        data_row = -1
        for row in reader:
            if not row or not any(field.strip() for field in row):
                continue
            data_row += 1
            line = reader.line_num
            if len(row) not in (7, 8):
                raise AVAFormatError(
                    f"{path}:{line}: expected 7 or 8 comma-separated fields "
                    f"(video_id,timestamp,x1,y1,x2,y2,action_id[,score]), found {len(row)}: {','.join(row)[:200]!r}"
                )
            try:
                t = parse_timestamp(row[1])
                a = parse_action_id(row[6])
            except ValueError as e:
                raise AVAFormatError(f"{path}:{line}: {e}") from None
            if abs(t) > _TIMESTAMP_LIMIT:
                raise AVAFormatError(f"{path}:{line}: timestamp {row[1]!r} is out of range")
            box = [_parse_number(path, line, v, "box coordinate", float) for v in row[2:6]]
            s = _parse_number(path, line, row[7], "score", float) if len(row) == 8 else 1.0
            codes.append(names.setdefault(row[0], len(names)))
            ts.append(t)
            boxes.append(box)
            action.append(a)
            score.append(s)
            data_rows.append(data_row)
    if not codes:
        return
    try:
        action_arr = np.array(action, dtype=np.int64)
    except OverflowError:
        raise AVAFormatError(f"{path}: an action_id does not fit in 64 bits") from None
    columns.add(
        list(names),
        np.array(codes, dtype=np.int64),
        np.array(ts, dtype=np.int64),
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        action_arr,
        np.array(score, dtype=np.float64),
        np.array(data_rows, dtype=np.int64),
    )


def select_actions(table, keep_actions):
    """The rows of ``table`` whose action id is in ``keep_actions``: the AVATable that
    ``read_ava_csv(..., keep_actions=keep_actions, keep_data_rows=True)`` gives for the same
    file (``table`` must have been read with ``keep_data_rows``)."""
    if table.data_row is None:
        raise ValueError(f"{table.source}: select_actions needs a table read with keep_data_rows=True")
    columns = _Columns(_action_filter(sorted(set(keep_actions))), True)
    if len(table):
        box = table.box_index
        columns.add(
            table.videos,
            table.box_video[box],
            table.box_timestamp[box].astype(np.int64),
            table.boxes[box],
            table.action.astype(np.int64),
            table.score,
            table.data_row,
        )
    selected = columns.table(table.source)
    selected.kept = None  # (its mask is over the table's rows; data_row says where they are)
    if not selected.videos:
        selected.videos = list(table.videos)
    return selected


def select_videos(table, keep_video):
    """The rows of ``table`` whose video name satisfies ``keep_video(name)``, in order (same
    ``videos`` list and codes; ``data_row`` kept when known, ``kept`` dropped)."""
    keep_code = np.array([bool(keep_video(name)) for name in table.videos], dtype=bool)
    keep_box = keep_code[table.box_video] if len(table.box_video) else np.zeros(0, dtype=bool)
    new_index = np.cumsum(keep_box, dtype=np.int64) - 1
    keep_row = keep_box[table.box_index] if len(table.box_index) else np.zeros(0, dtype=bool)
    return AVATable(
        videos=list(table.videos),
        box_video=table.box_video[keep_box],
        box_timestamp=table.box_timestamp[keep_box],
        boxes=table.boxes[keep_box],
        box_index=new_index[table.box_index[keep_row]].astype(table.box_index.dtype),
        action=table.action[keep_row],
        score=table.score[keep_row],
        data_row=None if table.data_row is None else table.data_row[keep_row],
        source=table.source,
    )


def read_ava_csv(path, keep_actions=None, keep_data_rows=False, chunk_rows=None):
    """Read an AVA CSV file (ground truth or detections).

    Args:
        path: the CSV file.
        keep_actions: iterable of action ids to keep (the label map's); rows of other
            ids are dropped while reading. None keeps every row.
        keep_data_rows: also record each row's index among the non-blank rows
            (``AVATable.data_row``), for error messages.
        chunk_rows: rows parsed per chunk by the fast reader (default ``CHUNK_ROWS``);
            the result does not depend on it.

    Returns:
        AVATable with the kept rows in file order.

    Raises:
        AVAFormatError: a row with a wrong number of fields, a field that is not a
            number, a non-finite number, a timestamp or action id that is not an integer,
            an out-of-range timestamp, naming the file and line.
        UserEncodingError: a byte that is not UTF-8, naming the file and line.
    """
    path = str(path)
    allowed = _action_filter(None if keep_actions is None else sorted(set(keep_actions)))
    try:
        width = _first_row_width(path)
        columns = _Columns(allowed, keep_data_rows)
        if width in (7, 8):
            try:
                _read_fast(path, width, columns, chunk_rows or CHUNK_ROWS)
                return columns.table(path)
            except (AVAFormatError, UnicodeDecodeError):
                raise
            except (ValueError, OverflowError, pd.errors.ParserError):
                columns = _Columns(allowed, keep_data_rows)
        if width != 0:
            _read_slow(path, columns)
        return columns.table(path)
    except UnicodeDecodeError as e:
        check_utf8(path)  # raises the error naming file:line
        raise AVAFormatError(f"{path}: not a UTF-8 text file ({e.reason})") from None


# ----------------------------------------------------------------------------------------------
# Writing: the official STMixer detection file, byte for byte.
# The official writer formats every value with '{:.5f}' (correctly rounded, ties to even on the
# exact binary value), the timestamp with '%04d', and ends rows with '\r\n' (csv.writer's default).

_SCALE = 100000
_FAST_LIMIT = 1e6
_HUGE = 1e10  # above this q no longer fits a float64 exactly
_ROUND_BLOCK = 1 << 20


def round5(values):
    """What ``float('{:.5f}'.format(v))`` gives for each value, without formatting them all.

    Args:
        values: float array (any shape; float32 is widened exactly, as the official
            writer's ``format`` does).

    Returns:
        float64 array of the same shape: the values as they read back from the
        5-decimal text (the sign is kept: -0.000001 gives -0.0, as "-0.00000" does).
    """
    x = np.asarray(values)
    out = np.empty(x.shape, dtype=np.float64)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _ROUND_BLOCK):  # blocks keep the temporaries small
        block = slice(start, start + _ROUND_BLOCK)
        flat_out[block] = _round5_block(flat_in[block].astype(np.float64))
    return out


def _round5_block(x):
    if not np.isfinite(x).all():
        raise ValueError("cannot write non-finite values to an AVA CSV")
    mag = np.abs(x)
    scaled = mag * _SCALE
    q = np.floor(scaled + 0.5)
    frac = scaled - np.floor(scaled)
    # Near a half-way point (or for large values) the float64 product may round the wrong
    # way: those few values are formatted exactly.
    unsure = (np.abs(frac - 0.5) < 1e-4) | (mag >= _FAST_LIMIT)
    if unsure.any():
        q[unsure] = [int(format(v, ".5f").replace(".", "")) for v in mag[unsure].tolist()]
    rounded = np.copysign(q / _SCALE, x)  # exact division of integers below 2**53: float(text)
    huge = mag >= _HUGE
    if huge.any():
        rounded[huge] = np.copysign([float(format(v, ".5f")) for v in mag[huge].tolist()], x[huge])
    return rounded


def _fixed_width(texts):
    """uint8 ``[n, w]`` of byte strings, left-aligned and padded with zero bytes."""
    width = max(len(t) for t in texts)
    return np.frombuffer(np.array(texts, dtype=f"S{width}").tobytes(), dtype=np.uint8).reshape(len(texts), width)


def _decimal_bytes(values):
    """uint8 ``[n, w]`` of the '{:.5f}' text of 5-decimal values (left-aligned, zero-padded).

    Args:
        values: float64 ``[n]`` as returned by :func:`round5`.
    """
    n = len(values)
    fast = (values >= 0) & (values < 10) & ~np.signbit(values)
    out = np.zeros((n, 7), dtype=np.uint8)
    if fast.any():
        q = np.rint(values[fast] * _SCALE).astype(np.int64)
        digits = out[fast]
        digits[:, 0] = q // _SCALE + 48
        digits[:, 1] = ord(".")
        for k, power in enumerate((10000, 1000, 100, 10, 1)):
            digits[:, 2 + k] = (q // power) % 10 + 48
        out[fast] = digits
    if not fast.all():
        idx = np.flatnonzero(~fast)
        slow = _fixed_width([format(v, ".5f").encode() for v in values[idx].tolist()])
        if slow.shape[1] > out.shape[1]:
            out = np.concatenate([out, np.zeros((n, slow.shape[1] - out.shape[1]), np.uint8)], axis=1)
        out[idx, : slow.shape[1]] = slow
    return out


def _csv_field(text):
    """One field as csv.writer (excel dialect, minimal quoting) writes it."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_detections_csv(f, table):
    """Write detection rows in the official STMixer format to a binary file object.

    Every row is ``video_id,timestamp,x1,y1,x2,y2,action_id,score\\r\\n``: the
    timestamp as ``%04d``, the box and score as ``{:.5f}`` text, exactly what the
    official ``write_csv`` produces.

    Args:
        f: binary file object.
        table: AVATable of the rows to write, in order; boxes and scores already
            rounded by :func:`round5`.
    """
    n = len(table)
    if n == 0:
        return
    prefix = _fixed_width(
        [
            f"{_csv_field(table.videos[v])},{t:04d},".encode()
            for v, t in zip(table.box_video.tolist(), table.box_timestamp.tolist())
        ]
    )
    comma = np.full((len(prefix), 1), ord(","), dtype=np.uint8)
    box_text = np.concatenate([prefix] + [part for k in range(4) for part in (_decimal_bytes(table.boxes[:, k]), comma)], 1)
    action_values = np.unique(table.action)
    action_text = _fixed_width([f"{a},".encode() for a in action_values.tolist()])
    newline = np.frombuffer(b"\r\n", dtype=np.uint8)
    chunk = max(1, 4_000_000 // (box_text.shape[1] + action_text.shape[1] + 9))
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        block = np.concatenate(
            [
                box_text[table.box_index[rows]],
                action_text[np.searchsorted(action_values, table.action[rows])],
                _decimal_bytes(table.score[rows]),
                np.broadcast_to(newline, (rows.stop - rows.start, 2)),
            ],
            axis=1,
        )
        f.write(block[block != 0].tobytes())
