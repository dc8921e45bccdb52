"""``demo.py`` with a recognizer config (``MODEL.META_ARCHITECTURE Recognizer3D``): classify one video.

The input (a video file or a frame folder, read by ``data.video.VideoSource``) is written as JPEG
frames (quality 95) to a temporary raw-frame dataset of one video, which is then tested exactly as
``test_net.py`` tests a list file: the test views of ``RECOGNITION.*`` (clips x crops), their
softmax scores averaged. Outputs: the top classes in the log, ``--json`` (one JSON object:
``{"video": input, "views": n, "classes": [{"id": k, "name": name, "score": p}, ...]}``, the
``--topk`` best), and with ``--attention DIR`` the attention maps of every view (ST-ABN's
``stabn`` head: ``<video>_clip<c>_crop<k>.npz`` / ``.png``, see ``TEST.SAVE_ATTENTION``).
"""

import json
import logging
import os
import tempfile

import simplejpeg
import torch

from ..checkpoint import load_weights
from ..data.build import build_data_loader, build_dataset
from ..data.video import VideoSource
from ..errors import UserError, UserFileNotFoundError
from ..utils import distributed as comm
from ..utils.io import atomic_open
from .recognition import attention_saver, predict_scores
from .runner import build_model

logger = logging.getLogger(__name__)

FRAME_TEMPLATE = "img_{:05d}.jpg"


def class_names(path, num_classes):
    """Class names: one per line of ``path`` (e.g. the synthetic ``classes.txt``, a Kinetics label list;
    a trailing ``<tab or space><index>`` column is not split off), else ``"class <k>"``."""
    if not path:
        return [f"class {k}" for k in range(num_classes)]
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"--labelmap {path}: file not found")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise UserError(f"--labelmap {path}: {len(names)} class names, MODEL.RECOGNIZER.NUM_CLASSES is {num_classes}")
    return names


def extract_frames(source, folder):
    """Write every frame of ``source`` as ``folder/img_00001.jpg`` ...; returns the frame count."""
    os.makedirs(folder, exist_ok=True)
    count = 0
    for _, frame in source.frames():
        count += 1
        data = simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR")
        with open(os.path.join(folder, FRAME_TEMPLATE.format(count)), "wb") as f:
            f.write(data)
    return count


def run_recognition_demo(cfg, args):
    """Classify ``args.input``; returns the result dict written to ``--json``."""
    if not cfg.MODEL.WEIGHT:
        raise UserFileNotFoundError("demo.py needs weights: add MODEL.WEIGHT path/to/checkpoint.pth to the command")
    if args.output:
        raise UserError(f"--output {args.output}: the annotated video is for detectors; a recognizer "
                        "(MODEL.META_ARCHITECTURE Recognizer3D) writes --json OUT.json and/or --attention DIR")
    source = VideoSource(args.input, folder_fps=args.input_fps or cfg.DATA.TARGET_FPS)
    device = comm.resolve_device(cfg.MODEL.DEVICE, 0)
    names = class_names(args.labelmap, cfg.MODEL.RECOGNIZER.NUM_CLASSES)
    video_id = os.path.splitext(os.path.basename(os.path.normpath(args.input)))[0] or "video"
    with tempfile.TemporaryDirectory(prefix="stmixer-demo-") as root:
        num_frames = extract_frames(source, os.path.join(root, "rawframes", video_id))
        with open(os.path.join(root, "video.txt"), "w", encoding="utf-8") as f:
            f.write(f"{video_id} {num_frames} 0\n")
        test_cfg = cfg.clone()
        test_cfg.defrost()
        test_cfg.DATA.PATH_TO_DATA_DIR = root
        test_cfg.RECOGNITION.TEST_FRAME_DIR = "rawframes"
        test_cfg.RECOGNITION.TEST_LIST = "video.txt"
        test_cfg.RECOGNITION.FILENAME_TMPL = FRAME_TEMPLATE
        test_cfg.RECOGNITION.START_INDEX = 1
        test_cfg.TEST.SAVE_ATTENTION = os.path.abspath(args.attention) if args.attention else ""
        if args.batch_size:
            test_cfg.TEST.VIDEOS_PER_BATCH = args.batch_size
        test_cfg.freeze()
        dataset = build_dataset(test_cfg, is_train=False, defer_pixels=True)
        model = build_model(cfg, device)
        load_weights(model, cfg.MODEL.WEIGHT)
        loader = build_data_loader(test_cfg, is_train=False, dataset=dataset)
        on_batch, handle = attention_saver(test_cfg, dataset, model)
        try:
            _, scores = predict_scores(model, loader, device, amp=cfg.SOLVER.AMP, progress=not args.no_progress,
                                       on_batch=on_batch)
        finally:
            if handle is not None:
                handle.remove()
    probs = scores[: dataset.views].mean(dim=0)
    top = torch.topk(probs, k=min(args.topk, probs.numel()))
    result = {"video": args.input, "views": int(dataset.views), "classes": [
        {"id": int(k), "name": names[int(k)], "score": float(p)} for p, k in zip(top.values, top.indices)]}
    for entry in result["classes"]:
        logger.info("%s: %.4f", entry["name"], entry["score"])
    if args.json:
        with atomic_open(args.json, "w") as f:
            f.write(json.dumps(result) + "\n")
        logger.info("Classes written to %s", args.json)
    if args.attention:
        logger.info("Attention maps of %d views written to %s", dataset.views, args.attention)
    return result
