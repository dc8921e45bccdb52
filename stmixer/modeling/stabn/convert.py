"""Official ST-ABN (MMAction 0.x ``TSN3D``) state-dict keys -> ours (``Recognizer3D`` + ``stabn`` head).

===========================================================  ====================================================
official                                                     ours
===========================================================  ====================================================
``backbone.conv1`` / ``backbone.bn1``                        ``backbone.s1.pathway0_stem.conv`` / ``.bn``
``backbone.layer{L}.{i}.conv{1,2,3}`` / ``bn{1,2,3}``        ``backbone.s{L+1}.pathway0_res{i}.branch2.{a,b,c}[_bn]``
``backbone.layer{L}.{i}.downsample.0`` / ``.1``              ``... branch1`` / ``branch1_bn``
``backbone.att_layer4.{i}.*`` (the stride-1 res5 copy)       ``head.att_res5.pathway0_res{i}.*`` (same sub-names)
``backbone.bn_att``                                          ``head.att_bn``
``backbone.att_conv`` / ``bn_att2``                          ``head.att_conv`` / ``head.att_conv_bn``
``backbone.t_att_conv`` / ``t_bn_att``                       ``head.temporal_conv`` / ``head.temporal_bn``
``backbone.t_att_conv2`` / ``fc1`` / ``fc2``                 ``head.temporal_frame_conv`` / ``temporal_fc1`` / ``temporal_fc2``
``backbone.att_conv3`` / ``bn_att3``                         ``head.spatial_conv`` / ``head.spatial_bn``
``backbone.att_conv2``                                       ``head.att_cls_conv``
``necks.att_head.fc``                                        ``head.att_fc``
``backbone.t_att_conv3`` / ``bn_att4``                       ``head.fuse_conv`` / ``head.fuse_bn``
``cls_head.fc_cls``                                          ``head.fc_cls``
===========================================================  ====================================================

Every other ``necks.*`` tensor (``level_fusion_op*``, ``spatial_modulation``, ``pyramid_fusion_op``,
``temporal_modulation_ops``, ``downsampling_ops``, ``att_head.convs``: TPN modules the official
``Att_head`` builds and never runs) is dropped. The tensors keep their shapes.

``python -m stmixer.modeling.stabn.convert OFFICIAL.pth OUT.pth`` writes ``{"model": state dict}``
that ``MODEL.WEIGHT`` loads into a ``Recognizer3D`` with ``MODEL.RECOGNIZER.HEAD stabn``.
"""

import argparse
import re

_BLOCK_SUB = {"conv1": "branch2.a", "bn1": "branch2.a_bn", "conv2": "branch2.b", "bn2": "branch2.b_bn",
              "conv3": "branch2.c", "bn3": "branch2.c_bn", "downsample.0": "branch1", "downsample.1": "branch1_bn"}
_BLOCK = re.compile(r"backbone\.(?P<layer>layer[1-4]|att_layer4)\.(?P<i>\d+)\."
                    r"(?P<sub>conv[123]|bn[123]|downsample\.[01])\.(?P<leaf>[a-z_]+)$")
_MODULES = {
    "backbone.conv1": "backbone.s1.pathway0_stem.conv", "backbone.bn1": "backbone.s1.pathway0_stem.bn",
    "backbone.bn_att": "head.att_bn", "backbone.att_conv": "head.att_conv", "backbone.bn_att2": "head.att_conv_bn",
    "backbone.t_att_conv": "head.temporal_conv", "backbone.t_bn_att": "head.temporal_bn",
    "backbone.t_att_conv2": "head.temporal_frame_conv", "backbone.fc1": "head.temporal_fc1",
    "backbone.fc2": "head.temporal_fc2", "backbone.att_conv3": "head.spatial_conv",
    "backbone.bn_att3": "head.spatial_bn", "backbone.att_conv2": "head.att_cls_conv",
    "necks.att_head.fc": "head.att_fc", "backbone.t_att_conv3": "head.fuse_conv", "backbone.bn_att4": "head.fuse_bn",
    "cls_head.fc_cls": "head.fc_cls",
}


def official_key(key):
    """Our key for an official ST-ABN key (``module.`` prefix allowed), or None for the unused ``necks.*``."""
    key = key[len("module."):] if key.startswith("module.") else key
    m = _BLOCK.match(key)
    if m:
        sub = _BLOCK_SUB[m.group("sub")]
        if m.group("layer") == "att_layer4":
            return f"head.att_res5.pathway0_res{m.group('i')}.{sub}.{m.group('leaf')}"
        stage = int(m.group("layer")[-1]) + 1
        return f"backbone.s{stage}.pathway0_res{m.group('i')}.{sub}.{m.group('leaf')}"
    module, _, leaf = key.rpartition(".")
    if module in _MODULES:
        return f"{_MODULES[module]}.{leaf}"
    if key.startswith("necks."):
        return None
    raise KeyError(f"not an ST-ABN key: {key!r}")


def convert_state_dict(state):
    """Official state dict -> ours (unused neck tensors dropped)."""
    out = {}
    for key, value in state.items():
        ours = official_key(key)
        if ours is not None:
            out[ours] = value
    return out


def main(argv=None):
    import torch  # noqa: PLC0415

    from ...checkpoint.safe_unpickle import read_file  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", help="official ST-ABN checkpoint (.pth, mmcv layout with 'state_dict')")
    parser.add_argument("out", help="output .pth for MODEL.WEIGHT")
    args = parser.parse_args(argv)
    _, ckpt = read_file(args.official)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    torch.save({"model": convert_state_dict(state)}, args.out)


if __name__ == "__main__":
    main()
