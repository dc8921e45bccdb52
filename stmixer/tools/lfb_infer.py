"""Write a long-term feature bank: run a trained two-stage detector over a split with the "LFBInfer" shared head.

    python -m stmixer.tools.lfb_infer CONFIG --split train|val --out DIR [--weights FILE] [KEY VALUE ...]
    torchrun --nproc_per_node 8 -m stmixer.tools.lfb_infer CONFIG --split train --out DIR ...

mmaction2's ``slowonly-lfb-infer_r50_ava21-rgb.py`` step: CONFIG is the baseline detector's config
(``MODEL.META_ARCHITECTURE FastRCNN``, e.g. the SlowOnly-R50 4x16 AVA model), FILE its trained weights
(default ``MODEL.WEIGHT``). The command sets ``MODEL.ROI_HEAD.SHARED_HEAD LFBInfer`` (the RoI features go
to the bbox head unchanged and are recorded per keyframe), runs test-time inference over every keyframe
of the split -- the test pipeline and the test-time proposals (``PROPOSALS.TEST_FILE``); ``--split train``
reads the training split's files in their place (``AVA.TRAIN_LISTS``, ``AVA.TRAIN_GT_BOX_LISTS``,
``PROPOSALS.TRAIN_FILE``) -- and writes ``DIR/lfb_<split>.npz`` (stmixer's safe bank format, float16 unless
``MODEL.LFB.INFER_HALF_PRECISION False``). With several processes each writes its part and rank 0 merges.
Exclusions come from ``AVA.EXCLUSION_FILE`` as for any run (give the split's own file on the command
line, as mmaction2's infer config does).

Then train / test an FBO model with ``MODEL.LFB.PREFIX_PATH DIR`` and
``MODEL.LFB.FILES ["lfb_train.npz", "lfb_val.npz"]``.
"""

import argparse
import logging

import torch

from ..config import load_config
from ..errors import UserError, UserFileNotFoundError, exit_on_user_error
from ..utils import distributed as comm

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")


def split_config(cfg, split):
    """A copy of ``cfg`` whose test split is ``split`` and whose shared head is ``LFBInfer``.

    ``split == "train"``: the test split's frame lists, box CSVs and proposal file become the training
    split's (the samples still go through the test-time pipeline, as mmaction2's infer config).
    """
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {SPLITS}")
    cfg = cfg.clone()
    cfg.defrost()
    if "ROI_HEAD" not in cfg.MODEL:
        raise UserError(f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r}: lfb_infer needs a two-stage "
                        "detector (FastRCNN, with the MODEL.ROI_HEAD node) whose shared head can be LFBInfer")
    cfg.MODEL.ROI_HEAD.SHARED_HEAD = "LFBInfer"
    if split == "train":
        cfg.AVA.TEST_LISTS = list(cfg.AVA.TRAIN_LISTS)
        cfg.AVA.TEST_GT_BOX_LISTS = list(cfg.AVA.TRAIN_GT_BOX_LISTS)
        if "PROPOSALS" in cfg:
            cfg.PROPOSALS.TEST_FILE = cfg.PROPOSALS.TRAIN_FILE
    cfg.freeze()
    return cfg


def find_infer_head(model):
    """The model's ``LFBInferHead`` (exactly one)."""
    from ..modeling.roi_heads.lfb import LFBInferHead

    heads = [m for m in model.modules() if isinstance(m, LFBInferHead)]
    if len(heads) != 1:
        raise UserError(f"the detector has {len(heads)} LFBInfer shared heads, expected one "
                        "(MODEL.ROI_HEAD.SHARED_HEAD LFBInfer on a FastRCNN detector)")
    return heads[0]


def infer_bank(model, data_loader, device, out_dir, split, amp="off", progress=True):
    """Run ``model`` (with an LFBInfer head) over ``data_loader`` and write ``out_dir/lfb_<split>.npz``.

    Every process must call it (the head's ``write`` synchronises). Returns the bank's path.
    """
    from ..engine.inference import predict

    head = find_infer_head(model)
    head.reset()
    predict(model, data_loader, device, amp=amp, progress=progress)
    return head.write(out_dir, split)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stmixer.tools.lfb_infer",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG", help="config of the trained baseline detector (FastRCNN)")
    parser.add_argument("--split", required=True, choices=SPLITS, help="split whose keyframes fill the bank")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of lfb_<split>.npz")
    parser.add_argument("--weights", default="", metavar="FILE", help="detector weights (default MODEL.WEIGHT)")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    with exit_on_user_error():
        cfg = split_config(load_config(args.config, args.opts), args.split)
    dist_info = comm.init_distributed(args.local_rank)
    try:
        with exit_on_user_error():
            from ..checkpoint import load_weights
            from ..data.build import build_data_loader
            from ..modeling import build_detector

            weights = args.weights or cfg.MODEL.WEIGHT
            if not weights:
                raise UserFileNotFoundError("lfb_infer needs the trained detector: give --weights FILE or "
                                            "MODEL.WEIGHT")
            device = comm.resolve_device(cfg.MODEL.DEVICE, dist_info.local_rank)
            model = build_detector(cfg).to(device)
            load_weights(model, weights)
            loader = build_data_loader(cfg, is_train=False)
            with torch.no_grad():
                path = infer_bank(model, loader, device, args.out, args.split, amp=cfg.SOLVER.AMP)
            if comm.is_main_process():
                print(f"feature bank written to {path}")
    finally:
        comm.cleanup_distributed()


if __name__ == "__main__":
    main()
