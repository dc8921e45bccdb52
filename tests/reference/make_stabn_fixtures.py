"""Write the ST-ABN reference fixtures by running the official ST-ABN code (MMAction 0.x ``TSN3D``).

    python tests/reference/make_stabn_fixtures.py --stabn /tmp/stabn/st --out tests/reference/stabn/tiny

``--stabn`` is a checkout of machine-perception-robotics-group/ST-ABN_PyTorch (its ``mmaction``
package is imported from there); run it with a Python that has torch and mmcv 0.2.10 (see
tests/reference/stabn/README.md for the throwaway environment and the shims). Nothing of the
official code is copied: this script builds the official model from its own config file
(``config_files/sthv1/st_abn_32.py``) with the sizes of a tiny clip, sets every weight from a
seed (the rule is ``seeded_tensor`` below; our test regenerates the same weights), and saves:

* ``stabn.json``: the seed, the official commit, the sizes, the shims, every official state key with
  its shape and float64 sum (so the other side can check its regenerated weights), the labels,
  the gradient sample indices;
* ``config.yaml``: our config of the same model (``Recognizer3D`` + ``stabn`` head);
* ``expected.npz`` (float64, names prefixed ``f64/``): eval- and train-mode perception logits,
  attention logits, spatial and temporal attention maps, both losses, gradients of a few parameters
  sampled at fixed flat indices, and six BatchNorms' running statistics after the training step
  (names: ours).

The whole model runs in float64. Train mode = BatchNorm with batch statistics and dropout off (the
two dropout layers are put in eval mode so the run is deterministic).
"""

import argparse
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

SEED = 20260518
BATCH, FRAMES, SIZE, CLASSES = 2, 4, 64, 5
# Official parameter -> our parameter, for the sampled gradients.
GRAD_PARAMS = {
    "backbone.conv1.weight": "backbone.s1.pathway0_stem.conv.weight",
    "backbone.layer3.5.conv1.weight": "backbone.s4.pathway0_res5.branch2.a.weight",
    "backbone.layer4.2.conv3.weight": "backbone.s5.pathway0_res2.branch2.c.weight",
    "backbone.att_layer4.0.conv1.weight": "head.att_res5.pathway0_res0.branch2.a.weight",
    "backbone.att_conv.weight": "head.att_conv.weight",
    "backbone.t_att_conv.weight": "head.temporal_conv.weight",
    "backbone.t_att_conv2.weight": "head.temporal_frame_conv.weight",
    "backbone.fc1.weight": "head.temporal_fc1.weight",
    "backbone.fc2.bias": "head.temporal_fc2.bias",
    "backbone.att_conv3.weight": "head.spatial_conv.weight",
    "backbone.bn_att3.weight": "head.spatial_bn.weight",
    "backbone.att_conv2.weight": "head.att_cls_conv.weight",
    "necks.att_head.fc.weight": "head.att_fc.weight",
    "backbone.t_att_conv3.weight": "head.fuse_conv.weight",
    "backbone.bn_att4.bias": "head.fuse_bn.bias",
    "cls_head.fc_cls.weight": "head.fc_cls.weight",
}
GRAD_SAMPLES = 24
# Official BatchNorm -> ours, for the running statistics after one training step (the official blocks run
# under torch.utils.checkpoint, which recomputes them in the backward pass: their BNs update twice).
BN_LAYERS = {
    "backbone.bn1": "backbone.s1.pathway0_stem.bn",
    "backbone.layer1.0.bn1": "backbone.s2.pathway0_res0.branch2.a_bn",
    "backbone.layer4.2.bn3": "backbone.s5.pathway0_res2.branch2.c_bn",
    "backbone.att_layer4.0.downsample.1": "head.att_res5.pathway0_res0.branch1_bn",
    "backbone.bn_att2": "head.att_conv_bn",
    "backbone.bn_att4": "head.fuse_bn",
}


def seeded_tensor(key, shape, seed):
    """The value of official state entry ``key``: a float64 array from ``default_rng([seed, crc32(key)])``.

    ``>= 2``-D weights N(0, 1) / sqrt(fan_in); 1-D ``weight`` (BatchNorm) 1 + 0.1 N; ``bias`` and
    ``running_mean`` 0.1 N; ``running_var`` U(0.5, 1.5)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    if leaf in ("bias", "running_mean"):
        return 0.1 * rng.standard_normal(shape)
    if len(shape) == 1:
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))


def seeded_inputs(seed):
    """The clip ``[B, 3, T, H, W]`` (N(0, 1), normalized pixels) and the labels ``[B]``."""
    rng = np.random.default_rng([seed, 1])
    video = rng.standard_normal((BATCH, 3, FRAMES, SIZE, SIZE))
    labels = rng.integers(0, CLASSES, size=BATCH)
    return video, labels


def build_official(stabn_root):
    """The official TSN3D of config_files/sthv1/st_abn_32.py at the tiny sizes (float64), and the shims."""
    import mmcv
    import torch
    from torch import nn

    sys.path.insert(0, str(stabn_root))
    from mmaction.models import build_recognizer

    cfg = mmcv.Config.fromfile(str(Path(stabn_root) / "config_files/sthv1/st_abn_32.py"))
    cfg.model.backbone.pretrained = None          # no ImageNet download; every weight is set below
    cfg.model.backbone.nsegments = FRAMES          # constructor arguments of ResNet_SlowFast
    cfg.model.backbone.num_classes = CLASSES
    cfg.model.necks.att_head_config.planes = CLASSES
    cfg.model.spatial_temporal_module.temporal_size = FRAMES
    cfg.model.spatial_temporal_module.spatial_size = SIZE // 32
    cfg.model.cls_head.num_classes = CLASSES
    model = build_recognizer(cfg.model, train_cfg=None, test_cfg=None)
    res4 = SIZE // 16
    # Shims for the sizes the official code hard-codes (224 pixels, 32 frames, 174 classes):
    model.necks.att_head.fc = nn.Linear(CLASSES * FRAMES, CLASSES)       # was Linear(planes * 32, 174)
    model.backbone.t_att_gap = nn.AvgPool2d(res4)                         # was AvgPool2d(14)
    model.backbone.att_gap = nn.AvgPool3d((1, res4, res4), stride=1)      # was AvgPool3d((1, 14, 14))
    shims = [
        "necks.att_head.fc = Linear(K*T, K) (official: Linear(planes*32, 174))",
        f"backbone.t_att_gap = AvgPool2d({res4}) (official: AvgPool2d(14), 224-pixel input)",
        f"backbone.att_gap = AvgPool3d((1, {res4}, {res4}), stride=1) (official: (1, 14, 14))",
        "both nn.Dropout modules in eval mode during the train-mode pass (deterministic)",
    ]
    return model.to(torch.float64), shims, cfg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stabn", required=True, type=Path, help="ST-ABN_PyTorch checkout")
    parser.add_argument("--out", required=True, type=Path, help="fixture folder to write")
    parser.add_argument("--commit", default=None, help="the checkout's commit (default: git rev-parse there)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    commit = args.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "-C", str(args.stabn), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    model, shims, _ = build_official(args.stabn)
    state = model.state_dict()
    keys = []
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                continue
            arr = seeded_tensor(key, tuple(value.shape), SEED)
            value.copy_(torch.from_numpy(arr))
            keys.append([key, list(value.shape), float(arr.sum())])
    video_np, labels_np = seeded_inputs(SEED)
    video = torch.from_numpy(video_np)
    labels = torch.from_numpy(labels_np)
    img_group = video.unsqueeze(1)                 # [B, num_clips=1, 3, T, H, W] as RawFramesDataset gives
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("backbone", o))
    model.cls_head.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    model.necks.att_head.fc.register_forward_hook(lambda m, i, o: captured.__setitem__("att_logits", o))
    out = {}

    # eval mode: the official forward_test (perception logits); the attention logits as Att_branch computes
    # them (the neck is not run at test time), from the backbone's pooled attention map
    model.eval()
    with torch.no_grad():
        logits = model(num_modalities=[1], img_meta=None, return_loss=False, img_group_0=img_group)
        ax, _, att, t_att = captured["backbone"]
        att_logits = model.necks.att_head.fc(ax.reshape(ax.size(0), -1))
    out["eval/logits"] = np.asarray(logits)
    out["eval/att_logits"] = att_logits.numpy()
    out["eval/spatial_attention"] = att.numpy()
    out["eval/temporal_attention"] = t_att.numpy()

    # train mode: BatchNorm with batch statistics, dropout off
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    model.zero_grad()
    losses = model(num_modalities=[1], img_meta=None, return_loss=True, gt_label=labels.view(-1, 1),
                   img_group_0=img_group)
    total = losses["per_loss"] + losses["att_loss"]   # the official sum: att loss_weight=0.5 is never applied
    total.backward()
    _, _, att, t_att = captured["backbone"]
    out["train/logits"] = captured["logits"].detach().numpy()
    out["train/att_logits"] = captured["att_logits"].detach().numpy()
    out["train/spatial_attention"] = att.detach().numpy()
    out["train/temporal_attention"] = t_att.detach().numpy()
    out["train/loss_cls"] = np.asarray(losses["per_loss"].item())
    out["train/loss_att"] = np.asarray(losses["att_loss"].item())
    modules = dict(model.named_modules())
    for official, ours in BN_LAYERS.items():
        out[f"train/running_mean/{ours}"] = modules[official].running_mean.detach().numpy().copy()
        out[f"train/running_var/{ours}"] = modules[official].running_var.detach().numpy().copy()
    params = dict(model.named_parameters())
    rng = np.random.default_rng([SEED, 2])
    grad_index = {}
    for official, ours in GRAD_PARAMS.items():
        grad = params[official].grad.detach().numpy().reshape(-1)
        index = np.sort(rng.choice(grad.size, size=min(GRAD_SAMPLES, grad.size), replace=False))
        grad_index[ours] = index.tolist()
        out[f"train/grad/{ours}"] = grad[index]

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": "ST-ABN", "official_repo": "machine-perception-robotics-group/ST-ABN_PyTorch",
        "official_commit": commit, "official_config": "config_files/sthv1/st_abn_32.py",
        "torch": torch.__version__, "seed": SEED, "batch": BATCH, "frames": FRAMES, "size": SIZE,
        "classes": CLASSES, "labels": labels_np.tolist(), "shims": shims,
        "weight_rule": "seeded_tensor in tests/reference/make_stabn_fixtures.py",
        "input_rule": "seeded_inputs in tests/reference/make_stabn_fixtures.py",
        "input_sum": float(video_np.sum()), "keys": keys, "grad_index": grad_index,
        "grad_official_names": {v: k for k, v in GRAD_PARAMS.items()},
        "bn_layers": {v: k for k, v in BN_LAYERS.items()},
    }
    (args.out / "stabn.json").write_text(json.dumps(manifest, indent=0) + "\n")
    (args.out / "config.yaml").write_text(CONFIG_YAML.format(classes=CLASSES, frames=FRAMES, size=SIZE))
    # names prefixed with the precision, as stmixer.tools.parity_check reads expected.npz
    np.savez_compressed(args.out / "expected.npz", **{f"f64/{name}": value for name, value in out.items()})
    print(f"wrote {len(out)} arrays, {len(keys)} weight entries to {args.out}")


CONFIG_YAML = """\
# Our config of the official model of this fixture (stabn.json): ST-ABN on a SlowOnly R50
# (config_files/sthv1/st_abn_32.py) at {classes} classes, {frames} frames, {size} x {size} pixels.
DATA:
  NUM_FRAMES: {frames}
  INPUT_CHANNEL_NUM: [3]
MODEL:
  META_ARCHITECTURE: "Recognizer3D"
  BACKBONE:
    CONV_BODY: "PySlowonly"
    PATHWAYS: 1
    CHANNELS_LAST: False
  RECOGNIZER:
    HEAD: "stabn"
    NUM_CLASSES: {classes}
    DROPOUT_RATE: 0.5
  STABN:
    ATT_DROPOUT_RATE: 0.5
    APPLY_ATT_LOSS_WEIGHT: False
RESNET:
  DEPTH: 50
"""


if __name__ == "__main__":
    main()
