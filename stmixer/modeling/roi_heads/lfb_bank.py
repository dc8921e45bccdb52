"""Long-term feature banks (LFB, Wu et al. 2019) as mmaction2 keys them, their files and their lookup.

A bank maps ``video id -> second -> [n, C]`` RoI features (one row per person box of that keyframe,
in the order the boxes were given to the writer). mmaction2's ``LFB`` keeps the same mapping; its
files ``lfb_{train,val}.pkl`` are ``torch.save``'d dicts ``{video: {second: [C-vectors]}}``.

Files
-----
* **stmixer's format** (``.npz``, written by ``save_bank``; members, no pickled object anywhere):

  - ``format``: 0-d unicode array ``"stmixer-lfb/1"``;
  - ``video_ids``: unicode ``[V]``;
  - ``group_video`` int64 ``[G]`` (index into ``video_ids``), ``group_second`` int64 ``[G]``;
  - ``group_offset`` int64 ``[G + 1]``: the rows of group ``g`` are ``features[offset[g]:offset[g+1]]``;
  - ``features`` float16 / float32 / float64 ``[N, C]``.

  It is read with ``numpy.load(allow_pickle=False)``: an ``.npz`` is a zip of ``.npy`` members whose
  headers are parsed as Python literals only, and object arrays (the one place ``.npy`` could hold a
  pickle) are refused; every member's dtype, shape and offsets are then checked. Reading one can
  therefore not run code, whatever the file holds.
* **mmaction2's pickles** are read through ``stmixer.checkpoint.safe_unpickle`` (``torch.load`` with
  ``weights_only=True`` and the project's allow-list: tensors and plain containers, nothing callable).

``python -m stmixer.modeling.roi_heads.lfb_bank convert IN OUT [--dtype float16|float32]`` converts between the two
(by OUT's suffix: ``.npz`` ours, ``.pkl`` / ``.pth`` mmaction2's layout); ``... info FILE`` summarises one.

Lookup (``LongTermFeatureBank.sample``) is mmaction2's ``LFB.sample_long_term_features``: the window of
``window_size`` seconds starting at ``timestamp - window_size // 2``; for each second present in the
bank ``torch.randperm(n)[:K]`` (drawn from the global torch generator unless one is given, so a seeded
run draws what mmaction2 draws) picks up to ``K = max_num_sampled_feat`` of its features in that order;
absent seconds and unused slots stay zero. The result is ``[window_size * K, C]``, second-major. mmaction2
always returns float32 (``torch.zeros`` of the default dtype); ours returns the ``dtype`` asked for
(float32 by default; the FBO heads ask for their RoI features' dtype).
"""

import argparse
import collections
import os
import zipfile

import numpy as np
import torch

from ...errors import UserError, UserFileNotFoundError, exit_on_user_error

FORMAT_TAG = "stmixer-lfb/1"
BANK_DTYPES = ("float16", "float32", "float64")
_MEMBERS = ("format", "video_ids", "group_video", "group_second", "group_offset", "features")


class LFBFormatError(UserError, ValueError):
    """A feature-bank file (or in-memory mapping) is not a bank; the message names the file and the fault."""


class LFBKeyError(UserError, KeyError):
    """A clip's video is not in the bank (the bank was inferred from another split or dataset)."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


def parse_img_key(img_key):
    """``"video_id,second"`` -> ``(video_id, int second)`` (mmaction2's ``img_key``, e.g. ``"abc,0902"``).

    The video id is everything before the last comma (mmaction2 splits on the only comma)."""
    video_id, sep, second = str(img_key).rpartition(",")
    if not sep or not video_id:
        raise LFBKeyError(f"img_key {img_key!r}: expected '<video_id>,<second>'")
    try:
        return video_id, int(second)
    except ValueError:
        raise LFBKeyError(f"img_key {img_key!r}: the part after the comma is not an integer second") from None


def img_key(video_id, timestamp):
    """mmaction2's img key of a keyframe: ``f"{video_id},{timestamp:04d}"``."""
    return f"{video_id},{int(timestamp):04d}"


class LongTermFeatureBank:
    """``video id -> second -> [n, C]`` features (CPU tensors of one dtype), with mmaction2's lookup.

    Args:
        videos: mapping ``video_id -> {second: features}`` where features are a ``[n, C]`` tensor /
            array or a sequence of ``[C]`` vectors (mmaction2's pickles hold lists; they are stacked).
        source: what to name in error messages (a file path).
        dtype: convert every feature to this dtype (``torch.float16`` / ``float32`` / ``float64``);
            None keeps the stored dtype (which must be the same for all features).
    """

    def __init__(self, videos, source="<bank>", dtype=None):
        self.source = str(source)
        self.videos = collections.OrderedDict()
        self.channels = None
        self.dtype = None
        self._table = None  # lookup table: all features [N, C] and video -> second -> (first row, count)
        for video_id, seconds in videos.items():
            if not isinstance(video_id, str):
                raise LFBFormatError(f"{self.source}: video ids must be strings, got {video_id!r}")
            if not isinstance(seconds, dict):
                raise LFBFormatError(f"{self.source}: video {video_id!r}: expected a dict second -> features, "
                                     f"got {type(seconds).__name__}")
            per_second = collections.OrderedDict()
            for second, feats in seconds.items():
                if isinstance(second, bool) or not isinstance(second, (int, np.integer)):
                    raise LFBFormatError(f"{self.source}: video {video_id!r}: seconds must be integers, got "
                                         f"{second!r}")
                per_second[int(second)] = self._as_matrix(feats, f"{video_id!r} second {second}", dtype)
            self.videos[video_id] = per_second
        if dtype is not None:
            self.dtype = dtype

    def _as_matrix(self, feats, where, dtype):
        try:
            if isinstance(feats, (list, tuple)):
                if not feats:
                    raise LFBFormatError(f"{self.source}: {where}: empty feature list")
                feats = torch.stack([torch.as_tensor(f).reshape(-1) for f in feats])
            else:
                feats = torch.as_tensor(feats)
        except (TypeError, ValueError, RuntimeError) as e:
            raise LFBFormatError(f"{self.source}: {where}: not a list of feature vectors or a [n, C] array "
                                 f"({type(e).__name__}: {e})") from None
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise LFBFormatError(f"{self.source}: {where}: expected [n, C] features with n >= 1, got shape "
                                 f"{tuple(feats.shape)}")
        if str(feats.dtype).replace("torch.", "") not in BANK_DTYPES:
            raise LFBFormatError(f"{self.source}: {where}: features of dtype {feats.dtype}; expected one of "
                                 f"{BANK_DTYPES}")
        if dtype is not None:
            feats = feats.to(dtype)
        if self.channels is None:
            self.channels, self.dtype = int(feats.shape[1]), feats.dtype
        elif feats.shape[1] != self.channels:
            raise LFBFormatError(f"{self.source}: {where}: {feats.shape[1]} channels, other features have "
                                 f"{self.channels}")
        elif feats.dtype != self.dtype:
            raise LFBFormatError(f"{self.source}: {where}: dtype {feats.dtype}, other features are {self.dtype}")
        return feats.cpu()

    # ------------------------------------------------------------------ queries
    def __len__(self):
        """Number of videos (as mmaction2's ``len(lfb)``)."""
        return len(self.videos)

    def __contains__(self, video_id):
        return video_id in self.videos

    def num_features(self):
        """Total number of stored feature vectors."""
        return sum(f.shape[0] for seconds in self.videos.values() for f in seconds.values())

    def update(self, other):
        """Merge ``other`` into this bank as mmaction2 merges its split files (``dict.update`` per
        video: a video present in both keeps ``other``'s seconds only)."""
        if other.channels is not None and self.channels is not None:
            if other.channels != self.channels:
                raise LFBFormatError(f"{other.source}: {other.channels} channels, {self.source} has "
                                     f"{self.channels}")
            if other.dtype != self.dtype:
                raise LFBFormatError(f"{other.source}: dtype {other.dtype}, {self.source} is {self.dtype}; "
                                     f"convert one of them (python -m stmixer.modeling.roi_heads.lfb_bank convert --dtype)")
        self.videos.update(other.videos)
        self._table = None
        if self.channels is None:
            self.channels, self.dtype = other.channels, other.dtype
        self.source = f"{self.source} + {other.source}"
        return self

    def _lookup_table(self):
        """``(table [N, C], {video: {second: (first row, count)}})``, built on first use.

        The features are copied once into one table (unless they already are consecutive slices of
        one, as a ``.npz`` bank's) and ``videos`` is re-pointed at views of it, so the bank is held once.
        """
        if self._table is not None:
            return self._table
        blocks, rows, offset = [], {}, 0
        for video_id, seconds in self.videos.items():
            rows[video_id] = {}
            for second, feats in seconds.items():
                rows[video_id][second] = (offset, feats.shape[0])
                blocks.append(feats)
                offset += feats.shape[0]
        firsts = [first for seconds in rows.values() for first, _ in seconds.values()]
        if blocks and all(b.untyped_storage().data_ptr() == blocks[0].untyped_storage().data_ptr()
                          and b.is_contiguous() and b.storage_offset() == first * self.channels
                          for b, first in zip(blocks, firsts)):
            table = torch.as_strided(blocks[0], (offset, self.channels), (self.channels, 1), 0)
        elif blocks:
            table = torch.cat(blocks)
            for video_id, seconds in rows.items():
                for second, (first, count) in seconds.items():
                    self.videos[video_id][second] = table[first:first + count]
        else:
            table = torch.zeros(0, self.channels or 0)
        self._table = (table, rows)
        return self._table

    def sample_many(self, clips, window_size, max_num_sampled_feat, dtype=torch.float32, device=None,
                    generator=None):
        """``[R, window_size * K, C]``: ``sample`` of each ``(video_id, timestamp)`` of ``clips`` in order
        (the same ``randperm`` draws as R calls of ``sample``), gathered in one indexing operation."""
        table, rows = self._lookup_table()
        k = int(max_num_sampled_feat)
        dest, src = [], []
        for r, (video_id, timestamp) in enumerate(clips):
            seconds = rows.get(video_id)
            if seconds is None:
                raise LFBKeyError(f"{self.source}: video {video_id!r} is not in the feature bank ({len(self)} "
                                  f"videos); infer the bank of this split with python -m stmixer.tools.lfb_infer "
                                  f"and list it in MODEL.LFB.FILES")
            start = int(timestamp) - window_size // 2
            for i in range(window_size):
                entry = seconds.get(start + i)
                if entry is None:
                    continue
                first, count = entry
                order = torch.randperm(count, generator=generator)[:k].tolist()
                slot = (r * window_size + i) * k
                dest.extend(range(slot, slot + len(order)))
                src.extend(first + o for o in order)
        # only the chosen rows travel to ``device`` (in the bank's dtype); the zero padding is made there
        out = torch.zeros(len(clips) * window_size * k, self.channels, dtype=dtype, device=device)
        if dest:
            picked = table[torch.tensor(src)].to(device=out.device)
            out[torch.tensor(dest, device=out.device)] = picked.to(dtype)
        return out.view(len(clips), window_size * k, self.channels)

    def sample(self, video_id, timestamp, window_size, max_num_sampled_feat, dtype=torch.float32, device=None,
               generator=None):
        """Long-term features of the clip at ``(video_id, timestamp)``: ``[window_size * K, C]``.

        Row ``i * K + j`` is the ``j``-th sampled feature of second ``timestamp - window_size // 2 + i``
        (zero when that second has fewer than ``j + 1`` features or is not in the bank). For every second
        present, ``torch.randperm(n, generator=generator)[:K]`` chooses and orders its features (the
        global generator when ``generator`` is None, as mmaction2); with ``n <= K`` all are kept.
        """
        return self.sample_many([(video_id, timestamp)], window_size, max_num_sampled_feat, dtype=dtype,
                                device=device, generator=generator)[0]

    def __getitem__(self, key):
        """mmaction2's ``lfb['video,second']`` needs the window parameters; use ``sample`` instead."""
        raise TypeError("LongTermFeatureBank[...] is not defined; call bank.sample(video_id, second, window_size, "
                        "max_num_sampled_feat) (parse_img_key splits an img key)")

    # ------------------------------------------------------------------ conversion
    def to_plain(self, as_lists=True):
        """``{video: {second: [C-tensors] | [n, C] tensor}}`` (mmaction2's pickle layout with ``as_lists``)."""
        return {v: {s: (list(f) if as_lists else f) for s, f in seconds.items()} for v, seconds in self.videos.items()}


# ---------------------------------------------------------------------- files
def _is_npz(path):
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return "format.npy" in names and "features.npy" in names


def save_bank(bank, path):
    """Write ``bank`` in stmixer's ``.npz`` format (uncompressed, atomically; see the module docstring)."""
    from ...utils.io import atomic_open

    video_ids = list(bank.videos)
    group_video, group_second, sizes, blocks = [], [], [], []
    for v, video_id in enumerate(video_ids):
        for second, feats in bank.videos[video_id].items():
            group_video.append(v)
            group_second.append(second)
            sizes.append(feats.shape[0])
            blocks.append(feats)
    channels = bank.channels if bank.channels is not None else 0
    np_dtype = str(bank.dtype).replace("torch.", "") if bank.dtype is not None else "float32"
    features = torch.cat(blocks).numpy() if blocks else np.zeros((0, channels), dtype=np_dtype)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    arrays = {
        "format": np.array(FORMAT_TAG),
        "video_ids": np.array(video_ids, dtype=str) if video_ids else np.zeros(0, dtype="<U1"),
        "group_video": np.asarray(group_video, dtype=np.int64),
        "group_second": np.asarray(group_second, dtype=np.int64),
        "group_offset": offsets,
        "features": features,
    }
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_npz(path, dtype):
    def bad(message):
        return LFBFormatError(f"{path}: not a stmixer feature bank: {message}")

    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [m for m in _MEMBERS if m not in data.files]
            if missing:
                raise bad(f"members {missing} are missing")
            arrays = {m: data[m] for m in _MEMBERS}
    except ValueError as e:  # object arrays (pickles) refused, malformed headers
        raise bad(str(e)) from None
    if arrays["format"].shape != () or str(arrays["format"]) != FORMAT_TAG:
        raise bad(f"format is {arrays['format']!r}, expected {FORMAT_TAG!r}")
    feats, ids = arrays["features"], arrays["video_ids"]
    if feats.ndim != 2 or feats.dtype.name not in BANK_DTYPES:
        raise bad(f"features: expected a 2-D {'/'.join(BANK_DTYPES)} array, got {feats.dtype} {feats.shape}")
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise bad(f"video_ids: expected a 1-D unicode array, got {ids.dtype} {ids.shape}")
    gv, gs, off = arrays["group_video"], arrays["group_second"], arrays["group_offset"]
    for name, a, n in (("group_video", gv, None), ("group_second", gs, len(gv)), ("group_offset", off, len(gv) + 1)):
        if a.ndim != 1 or a.dtype.kind not in "iu" or (n is not None and len(a) != n):
            raise bad(f"{name}: expected a 1-D integer array{'' if n is None else f' of length {n}'}, got "
                      f"{a.dtype} {a.shape}")
    if off[0] != 0 or off[-1] != len(feats) or np.any(np.diff(off) <= 0):
        raise bad("group_offset must rise strictly from 0 to the number of feature rows")
    if len(gv) and (gv.min() < 0 or gv.max() >= len(ids)):
        raise bad("group_video indexes outside video_ids")
    table = torch.from_numpy(feats)
    videos = collections.OrderedDict((str(v), collections.OrderedDict()) for v in ids)
    for g in range(len(gv)):
        video = videos[str(ids[gv[g]])]
        second = int(gs[g])
        if second in video:
            raise bad(f"video {str(ids[gv[g]])!r} second {second} is stored twice")
        video[second] = table[off[g]:off[g + 1]]
    return LongTermFeatureBank(videos, source=path, dtype=dtype)


def _read_pickle(path, dtype):
    from ...checkpoint import CheckpointError
    from ...checkpoint.safe_unpickle import read_file

    try:
        _, obj = read_file(path)
    except CheckpointError as e:
        raise LFBFormatError(f"not a feature bank: {e}") from None
    if not isinstance(obj, dict):
        raise LFBFormatError(f"{path}: expected a dict video_id -> {{second: features}} (mmaction2's "
                             f"lfb_<split>.pkl), got {type(obj).__name__}")
    return LongTermFeatureBank(obj, source=path, dtype=dtype)


def load_bank(path, dtype=None):
    """A ``LongTermFeatureBank`` from stmixer's ``.npz`` or mmaction2's pickle (decided from the bytes).

    ``dtype`` (a torch dtype or its name) converts the features; None keeps the file's dtype.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: feature bank file not found")
    if isinstance(dtype, str):
        if dtype not in BANK_DTYPES:
            raise LFBFormatError(f"bank dtype {dtype!r}: expected one of {BANK_DTYPES}")
        dtype = getattr(torch, dtype)
    return _read_npz(path, dtype) if _is_npz(path) else _read_pickle(path, dtype)


def load_banks(paths, dtype=None):
    """The banks of ``paths`` merged in order (mmaction2's ``dataset_modes``: later files' videos win)."""
    if not paths:
        raise LFBFormatError("no feature bank file given")
    bank = load_bank(paths[0], dtype)
    for path in paths[1:]:
        bank.update(load_bank(path, dtype))
    return bank


def save_mmaction2_pickle(bank, path):
    """Write ``bank`` as mmaction2's ``lfb_<split>.pkl`` (``torch.save`` of ``{video: {second: [C-tensors]}}``)."""
    from ...utils.io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save({v: {s: [row.clone() for row in f_] for s, f_ in seconds.items()}
                    for v, seconds in bank.videos.items()}, f)


def convert(src, dst, dtype=None):
    """Convert a bank file: ``dst`` ending in ``.npz`` gets stmixer's format, anything else mmaction2's pickle."""
    bank = load_bank(src, dtype)
    if os.fspath(dst).endswith(".npz"):
        save_bank(bank, dst)
    else:
        save_mmaction2_pickle(bank, dst)
    return bank


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stmixer.modeling.roi_heads.lfb_bank",
                                     description="Convert or summarise long-term feature bank files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="IN (.npz or mmaction2 .pkl) -> OUT (.npz: stmixer's; else mmaction2's)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", choices=BANK_DTYPES, default=None, help="convert the features (default: keep)")
    p = sub.add_parser("info", help="videos, features, channels and dtype of a bank file")
    p.add_argument("path")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "convert":
            bank = convert(args.src, args.dst, args.dtype)
            print(f"{args.dst}: {len(bank)} videos, {bank.num_features()} features of {bank.channels} channels "
                  f"({str(bank.dtype).replace('torch.', '')})")
        else:
            bank = load_bank(args.path)
            seconds = sum(len(s) for s in bank.videos.values())
            print(f"{args.path}: {len(bank)} videos, {seconds} seconds, {bank.num_features()} features of "
                  f"{bank.channels} channels ({str(bank.dtype).replace('torch.', '')})")


if __name__ == "__main__":
    main()
