"""What ``demo.py`` runs: detect and label the actions in a user's video or frame folder.

Two passes over the input, so memory stays small for any video length:

1. detection: frames are resampled to ``DATA.TARGET_FPS``, each keyframe's clip is built
   exactly as testing builds it (``data.keyframe_clips``), clips are batched through the
   detector, and every keyframe gets its persons (person score at least
   ``MODEL.STM.PERSON_THRESHOLD``) with their top actions;
2. rendering: the input is decoded again at its own rate and size, every frame gets the
   detections of the latest keyframe at or before it (held until the next one), and the
   annotated video is written.

Before any work, outputs that resolve to the input (or into an input frame folder, or to each
other) are refused and their folders are created and checked writable. A video that looks
truncated or damaged is used as far as it decodes, with one warning naming it.

Two-stage detectors (``MODEL.META_ARCHITECTURE FastRCNN``) classify given person boxes:
``--proposals FILE`` gives them per whole second of the input (``stmixer.data.proposals``: mmaction2's
pickle or the proposal CSV, keys ``"<video id>,<second:04d>"`` with the video id the input's file stem
or ``--proposals-video-id``), selected as for a test split (``PROPOSALS.DET_SCORE_THR`` / ``NUM_MAX``,
whole frame for a keyframe without proposals) and transformed with the clip; each proposal is a
person of the output with its action scores and, as person score, the proposal's score.

Outputs (each written atomically, after the detection pass has succeeded): the annotated
video and, with ``--json``, one JSON line per keyframe:
``{"time": s, "frame": f, "persons": [{"box": [x1, y1, x2, y2] normalized, "score": person
probability, "actions": [{"id": k, "name": n, "score": p}, ...]}, ...]}``.
"""

import argparse
import json
import logging
import math
import os

import torch
from tqdm import tqdm

from ..ava_files import read_labelmap
from ..checkpoint import load_weights
from ..config import load_config
from ..errors import UserError, UserFileNotFoundError, exit_on_user_error
from ..data.build import build_transform, num_pathways
from ..data.collate import BatchCollator
from ..data.descriptions import describe
from ..data.keyframe_clips import KeyframeClips
from ..data.proposals import VideoProposals, read_proposals
from ..data.transforms import pathway_frame_indices
from ..data.video import VideoSource, VideoWriter, resample, resampled_length
from .runner import build_model
from ..utils import distributed as comm
from ..utils.io import atomic_open
from ..utils.logging import setup_logger
from ..utils.run_dir import ensure_writable_dir
from ..utils.threads import set_threads
from ..utils.visualizer import draw_detections
from .trainer import autocast_context, detector_inputs, detector_kwargs, move_batch

logger = logging.getLogger(__name__)


def build_parser():
    """Argument parser of ``demo.py``."""
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="Detect people in a video (or a folder of frames) and label their actions.",
        epilog="Config overrides follow the options as KEY VALUE pairs; the weights are given as "
               "MODEL.WEIGHT path/to/checkpoint.pth (any format stmixer.checkpoint reads).",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config of the model")
    parser.add_argument("--input", required=True, metavar="VIDEO_OR_DIR",
                        help="a video file (any format FFmpeg decodes) or a folder of frame images")
    parser.add_argument("--output", metavar="OUT.mp4", help="annotated video to write (same size, rate and frames)")
    parser.add_argument("--json", metavar="OUT.jsonl", help="detections as JSON lines, one per keyframe")
    parser.add_argument("--keyframe-rate", type=float, default=1.0,
                        help="keyframes per second that get detections (default 1, as AVA)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="smallest action probability shown or written (default 0.5)")
    parser.add_argument("--topk", type=int, default=3, help="most actions shown or written per person (default 3)")
    parser.add_argument("--input-fps", type=float, default=None,
                        help="frame rate of a frame folder (default DATA.TARGET_FPS); videos carry their own")
    parser.add_argument("--labelmap", metavar="FILE",
                        help="label map .pbtxt naming the actions (default: AVA.LABEL_MAP_FILE of the dataset, if present)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per forward pass (default TEST.VIDEOS_PER_BATCH)")
    parser.add_argument("--proposals", metavar="FILE",
                        help="two-stage detectors (FastRCNN): person boxes per second of the input, mmaction2's "
                             "pickle or a CSV video_id,timestamp,x1,y1,x2,y2,score (normalized boxes)")
    parser.add_argument("--proposals-video-id", metavar="ID",
                        help="video id of the input in the --proposals file (default: the input's file stem)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--attention", metavar="DIR",
                        help="recognizers (MODEL.META_ARCHITECTURE Recognizer3D, MODEL.RECOGNIZER.HEAD stabn): classify "
                             "the video and write each test view's attention maps (.npz + .png overlay) to DIR")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides")
    return parser


def action_names(cfg, labelmap_path=None):
    """``{action id: name}`` for the model's ``MODEL.STM.ACTION_CLASSES`` outputs (column c is id c + 1).

    Names come from ``labelmap_path`` or, when it is None, from the dataset's ``AVA.LABEL_MAP_FILE``
    (UCF101-24 / JHMDB-21 layout: the ``labels`` of ``TUBES.GT_FILE``) if that file exists; ids a label map does not name (or every id, without one) read "action <id>".
    """
    names = {}
    if labelmap_path is None and describe(cfg).layout == "tubes":
        return _tube_action_names(cfg)
    if labelmap_path is None:
        candidate = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.AVA.ANNOTATION_DIR, cfg.AVA.LABEL_MAP_FILE)
        if cfg.DATA.PATH_TO_DATA_DIR and os.path.isfile(candidate):
            labelmap_path = candidate
        else:
            logger.warning("No label map at %s (give --labelmap FILE): actions are shown by id", candidate)
    if labelmap_path is not None:
        names = read_labelmap(labelmap_path).names
    return {i: names.get(i, f"action {i}") for i in range(1, cfg.MODEL.STM.ACTION_CLASSES + 1)}


def _tube_action_names(cfg):
    """``{action id: name}`` from the ``labels`` of the UCF101-24 / JHMDB-21 ground-truth pickle (id = index + 1)."""
    from ..evaluation.tubes import _unpickle

    path = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.TUBES.GT_FILE)
    labels = []
    if cfg.DATA.PATH_TO_DATA_DIR and os.path.isfile(path):
        data = _unpickle(path)
        labels = data.get("labels", []) if isinstance(data, dict) else []
    else:
        logger.warning("No ground-truth pickle at %s (TUBES.GT_FILE; or give --labelmap FILE): actions are shown "
                       "by id", path)
    return {i: str(labels[i - 1]) if i <= len(labels) else f"action {i}"
            for i in range(1, cfg.MODEL.STM.ACTION_CLASSES + 1)}


def load_detector(cfg, device):
    """The detector of the config with ``MODEL.WEIGHT`` loaded (exact key match), in eval mode on ``device``."""
    if not cfg.MODEL.WEIGHT:
        raise UserFileNotFoundError("demo.py needs weights: add MODEL.WEIGHT path/to/checkpoint.pth to the command")
    model = build_model(cfg, device)
    load_weights(model, cfg.MODEL.WEIGHT)
    return model.eval()


def keyframe_record(meta, detections, names, threshold, topk, person_threshold, input_fps, mirrored=False):
    """The JSON-line record of one keyframe.

    Args:
        meta: the sample's metadata ("time" seconds).
        detections: the detector's output for the clip ("boxes" ``[n, 4]`` normalized,
            "scores" ``[n, A]``, "person_scores" ``[n]``).
        names: ``{action id: name}``.
        threshold: smallest action probability kept; topk: most actions kept per person.
        person_threshold: smallest person probability kept (the detector's fallback
            queries below it are dropped).
        input_fps: frame rate of the input, for the "frame" index.
        mirrored: the clip was flipped (``AVA.TEST_FORCE_FLIP``): boxes are mirrored back.

    Returns:
        ``{"time", "frame", "persons": [{"box", "score", "actions": [{"id", "name", "score"}]}]}``,
        persons in decreasing person score, actions in decreasing score.
    """
    boxes = detections["boxes"].float().cpu()
    if mirrored:
        boxes = torch.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], dim=1)
    scores = detections["scores"].float().cpu()
    person_scores = detections["person_scores"].float().cpu()
    persons = []
    for j in torch.argsort(person_scores, descending=True).tolist():
        if person_scores[j] < person_threshold:
            continue
        top = torch.argsort(scores[j], descending=True)[:topk].tolist()
        persons.append({
            "box": [round(v, 5) for v in boxes[j].tolist()],
            "score": round(float(person_scores[j]), 5),
            "actions": [
                {"id": c + 1, "name": names[c + 1], "score": round(float(scores[j, c]), 5)}
                for c in top if scores[j, c] >= threshold
            ],
        })
    return {"time": round(meta["time"], 6), "frame": int(math.floor(meta["time"] * input_fps + 0.5)),
            "persons": persons}


def detect(model, samples, batch_size, collate, device, amp, make_record):
    """Run the detector over keyframe samples in batches.

    Args:
        model: detector in eval mode on ``device``.
        samples: iterable of keyframe samples (``KeyframeClips``).
        batch_size: clips per forward pass.
        collate: BatchCollator.
        device: torch.device; amp: ``SOLVER.AMP``.
        make_record: ``(metadata, detections) -> record`` (see ``keyframe_record``).

    Returns:
        list of records, one per keyframe in time order.
    """
    records, pending = [], []

    def flush():
        batch = move_batch(collate(pending), device)
        with torch.no_grad(), autocast_context(device, amp):
            outputs = model(*detector_inputs(batch), **detector_kwargs(batch))
        if "proposal_scores" in batch:  # two-stage detectors: one output row per proposal, scored by it
            outputs = [{**det, "person_scores": scores} for det, scores in zip(outputs, batch["proposal_scores"])]
        records.extend(make_record(meta, det) for meta, det in zip(batch["metadata"], outputs))
        pending.clear()

    for sample in samples:
        pending.append(sample)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return records


def render(source, records, keyframe_rate, output, progress=True):
    """Write the input's frames with the detections of the latest keyframe at or before each frame.

    Args:
        source: VideoSource of the input.
        records: keyframe records in time order (``keyframe_record``); record k is at ``k / keyframe_rate`` s.
        keyframe_rate: keyframes per second.
        output: video path (written atomically).
        progress: tqdm bar.

    Returns:
        number of frames written.
    """
    frames = tqdm(source.frames(), total=source.num_frames or None, desc="render", unit="frame",
                  disable=not progress, dynamic_ncols=True)
    with VideoWriter(output, source.fps, source.height, source.width) as writer:
        for time_s, frame in frames:
            k = min(int(math.floor(time_s * keyframe_rate + 1e-6)), len(records) - 1)
            writer.write(draw_detections(frame, records[k]["persons"]))
    return writer.frames_written


def run_demo(cfg, args):
    """Detect, then write the outputs the arguments ask for; returns the keyframe records."""
    source = VideoSource(args.input, folder_fps=args.input_fps or cfg.DATA.TARGET_FPS)
    logger.info("Input %s: %dx%d, %.3g fps, %s frames", args.input, source.width, source.height, source.fps,
                source.num_frames or "unknown")
    device = comm.resolve_device(cfg.MODEL.DEVICE, 0)
    names = action_names(cfg, args.labelmap)
    proposals = video_proposals(cfg, args)
    model = load_detector(cfg, device)
    fps = float(cfg.DATA.TARGET_FPS)
    clips = KeyframeClips(
        build_transform(cfg, is_train=False),
        cfg.DATA.NUM_FRAMES,
        cfg.DATA.SAMPLING_RATE,
        pathway_frame_indices(cfg.DATA.NUM_FRAMES, num_pathways(cfg), cfg.SLOWFAST.ALPHA, cfg.DATA.SLOW_PATHWAY_FRAMES),
        fps,
        args.keyframe_rate,
        source_name=args.input,
        proposals=proposals,
        video_id=proposals.video_id if proposals is not None else input_video_id(args.input),
    )
    estimate = resampled_length(max(source.num_frames - 1, 0) / source.fps, fps) if source.num_frames else None
    resampled = tqdm(resample(source.frames(), fps), total=estimate, desc="detect", unit="frame",
                     disable=args.no_progress, dynamic_ncols=True)

    # Proposals were selected from the file (PROPOSALS.DET_SCORE_THR): every one is a person of the output.
    person_threshold = 0.0 if proposals is not None else cfg.MODEL.STM.PERSON_THRESHOLD

    def make_record(meta, detections):
        return keyframe_record(meta, detections, names, args.threshold, args.topk, person_threshold,
                               source.fps, mirrored=cfg.AVA.TEST_FORCE_FLIP)

    records = detect(model, clips(resampled), args.batch_size or cfg.TEST.VIDEOS_PER_BATCH,
                     BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY), device, cfg.SOLVER.AMP, make_record)
    resampled.close()
    if proposals is not None:
        proposals.summary()
    logger.info("%d keyframes, %d person detections", len(records), sum(len(r["persons"]) for r in records))
    if args.json:
        with atomic_open(args.json, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        logger.info("Detections written to %s", args.json)
    if args.output:
        written = render(source, records, args.keyframe_rate, args.output, progress=not args.no_progress)
        logger.info("Annotated video written to %s (%d frames)", args.output, written)
    return records


#: Detectors that classify given person boxes (``--proposals``) instead of finding people themselves.
TWO_STAGE_ARCHITECTURES = ("FastRCNN",)


def input_video_id(path):
    """The video id of an input: its file stem (``clips/abc.mp4`` -> ``abc``), or a frame folder's name."""
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _check_proposal_options(cfg, args):
    """A two-stage detector needs --proposals; the one-stage detectors find people themselves and take none."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in TWO_STAGE_ARCHITECTURES and not args.proposals:
        raise UserError(f"MODEL.META_ARCHITECTURE {arch} classifies given person boxes: pass --proposals FILE "
                        "(boxes per second of the input, a CSV video_id,timestamp,x1,y1,x2,y2,score or mmaction2's "
                        "proposal pickle; see docs/fast_rcnn.md)")
    if args.proposals and arch not in TWO_STAGE_ARCHITECTURES:
        raise UserError(f"--proposals {args.proposals}: MODEL.META_ARCHITECTURE {arch} detects people itself; "
                        f"person proposals are for {', '.join(TWO_STAGE_ARCHITECTURES)}")
    if args.proposals and not float(1.0 / args.keyframe_rate).is_integer():
        raise UserError(f"--proposals gives person boxes per whole second: --keyframe-rate must be 1 (or 1/N, a "
                        f"keyframe every N seconds), got {args.keyframe_rate:g}")
    if args.proposals and not os.path.isfile(args.proposals):
        raise UserFileNotFoundError(f"--proposals {args.proposals}: file not found")
    if args.proposals_video_id is not None and not args.proposals:
        raise UserError("--proposals-video-id names the input in a --proposals file; give --proposals FILE too")


def video_proposals(cfg, args):
    """VideoProposals of the input from ``--proposals`` (None without it), selected with ``PROPOSALS.DET_SCORE_THR``
    and ``PROPOSALS.NUM_MAX``."""
    if not args.proposals:
        return None
    video_id = args.proposals_video_id or input_video_id(args.input)
    proposals = read_proposals(args.proposals)
    logger.info("Proposals of video %r from %s (%d keys in the file)", video_id, args.proposals, len(proposals))
    return VideoProposals(proposals, video_id, cfg.PROPOSALS.DET_SCORE_THR, cfg.PROPOSALS.NUM_MAX,
                          source=args.proposals)


def _check_outputs_are_not_inputs(args):
    """Refuse an --output/--json that resolves (symlinks followed) to the input, into an input frame
    folder, or to the other output: writing it would destroy the input or the other result."""
    source = os.path.realpath(args.input)
    outputs = [(option, path) for option, path in (("--output", args.output), ("--json", args.json)) if path]
    for option, path in outputs:
        real = os.path.realpath(path)
        if real == source:
            raise UserError(f"{option} {path} is the input {args.input}; writing it would destroy the input")
        if os.path.isdir(source) and os.path.commonpath([source, real]) == source:
            raise UserError(f"{option} {path} is inside the input frame folder {args.input}; write it elsewhere")
    if len(outputs) == 2 and os.path.realpath(args.output) == os.path.realpath(args.json):
        raise UserError(f"--json {args.json} is also the --output video; give two different files")


def _check_writable_outputs(args):
    """Create the folders of --output/--json and make sure files can be written there, before any work."""
    for option, path in (("--output", args.output), ("--json", args.json)):
        if path:
            ensure_writable_dir(os.path.dirname(os.path.abspath(path)), f"{option} {path}: folder")


def main(argv=None):
    """``demo.py`` entry point: bad input ends with status 1 (2 for a bad config) and one ``error:`` line."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if not (args.output or args.json or args.attention):
        parser.error("give --output OUT.mp4, --json OUT.jsonl or both (recognizers: --json and/or --attention DIR)")
    if args.keyframe_rate <= 0 or args.topk < 1 or not 0.0 <= args.threshold <= 1.0:
        parser.error("--keyframe-rate must be positive, --topk at least 1 and --threshold in [0, 1]")
    if (args.input_fps is not None and args.input_fps <= 0) or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--input-fps must be positive and --batch-size at least 1")
    with exit_on_user_error():
        _check_outputs_are_not_inputs(args)
        _check_writable_outputs(args)
        cfg = load_config(args.config_file, args.opts)
        _check_proposal_options(cfg, args)
    setup_logger("", 0)
    with exit_on_user_error(logger):
        set_threads(0, 1, cfg.NUM_THREADS, logger)
        if describe(cfg).evaluator == "recognition":  # a recognizer: classify the video (recognition_demo)
            from .recognition_demo import run_recognition_demo

            run_recognition_demo(cfg, args)
            return
        if args.attention:
            raise UserError("--attention writes a recognizer's attention maps; MODEL.META_ARCHITECTURE "
                            f"{cfg.MODEL.META_ARCHITECTURE} is a detector")
        run_demo(cfg, args)
