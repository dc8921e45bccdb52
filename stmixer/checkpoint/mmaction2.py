"""mmaction2 backbone key names -> our PySlowFast-layout module paths (``formats`` format ``mmaction2``).

mmaction2 (1.x, and 0.x files: same names) stores its 3-D ResNets as mmcv ``ConvModule``s
(``<name>.conv.weight``, ``<name>.bn.*``):

====================================================  =============================================
mmaction2 (below ``backbone.``)                       ours (below ``backbone.``)
====================================================  =============================================
``[P.]conv1.{conv,bn}.*``                             ``s1.pathway{p}_stem.{conv,bn}.*``
``[P.]layer{L}.{i}.conv1.{conv,bn}.*``                ``s{L+1}.pathway{p}_res{i}.branch2.{a,a_bn}.*``
``[P.]layer{L}.{i}.conv2`` / ``conv3``                ``... branch2.{b,b_bn}`` / ``branch2.{c,c_bn}``
``[P.]layer{L}.{i}.downsample.{conv,bn}.*``           ``... branch1`` / ``branch1_bn``
``[P.]layer{L}.{i}.non_local_block.theta.conv.*``     ``s{L+1}.pathway{p}_nonlocal{i}.conv_theta.*``
``... phi[.0].conv.*`` / ``g[.0].conv.*``             ``... conv_phi.*`` / ``conv_g.*``
``... conv_out.conv.*`` / ``conv_out.bn.*``           ``... conv_out.*`` / ``bn.*``
``slow_path.conv1_lateral.{conv,bn}.*``               ``s1_fuse.{conv_f2s,bn}.*``
``slow_path.layer{L}_lateral.{conv,bn}.*``            ``s{L+1}_fuse.{conv_f2s,bn}.*``
====================================================  =============================================

``P`` is ``slow_path`` (p = 0) or ``fast_path`` (p = 1) in ``ResNet3dSlowFast``; absent
(p = 0) in ``ResNet3dSlowOnly`` / ``ResNet3d``. The tensors are used as they are (same
shapes, same BatchNorm conventions). Which of our options a file needs: non-local blocks
``NONLOCAL.STYLE mmaction2`` (no ``conv_out`` bias), SlowFast laterals without BN
(``lateral_norm=False``, the AVA configs) ``SLOWFAST.FUSION_BN_RELU False``; otherwise the
load table reports the missing keys.
"""

import re

# Keys (below an optional ``backbone.``) that only mmaction2 backbones have.
MARKERS = ("conv1.conv.weight", "slow_path.conv1.conv.weight")

_PATH = r"(?:(?P<path>slow_path|fast_path)\.)?"
_STEM = re.compile(_PATH + r"conv1\.(?P<mod>conv|bn)\.(?P<leaf>[a-z_]+)$")
_BLOCK = re.compile(_PATH + r"layer(?P<layer>[1-9])\.(?P<i>\d+)\.(?P<mod>conv1|conv2|conv3|downsample)\."
                    r"(?P<sub>conv|bn)\.(?P<leaf>[a-z_]+)$")
_NONLOCAL = re.compile(_PATH + r"layer(?P<layer>[1-9])\.(?P<i>\d+)\.non_local_block\."
                       r"(?:(?P<proj>theta|phi|g)(?:\.0)?\.conv|conv_out\.(?P<out>conv|bn))\.(?P<leaf>[a-z_]+)$")
_LATERAL = re.compile(r"slow_path\.(?:conv1|layer(?P<layer>[1-9]))_lateral\.(?P<mod>conv|bn)\.(?P<leaf>[a-z_]+)$")

_BRANCH = {("conv1", "conv"): "branch2.a", ("conv1", "bn"): "branch2.a_bn",
           ("conv2", "conv"): "branch2.b", ("conv2", "bn"): "branch2.b_bn",
           ("conv3", "conv"): "branch2.c", ("conv3", "bn"): "branch2.c_bn",
           ("downsample", "conv"): "branch1", ("downsample", "bn"): "branch1_bn"}


def is_mmaction2(keys):
    """True when ``keys`` (a set of state-dict keys) hold an mmaction2 3-D ResNet, bare or below ``backbone.``."""
    return any(m in keys or f"backbone.{m}" in keys for m in MARKERS)


def _pathway(match):
    return 1 if match.group("path") == "fast_path" else 0


def backbone_key(key):
    """Our backbone module path (without ``backbone.``) of an mmaction2 backbone key (without
    ``backbone.``), or None when the key is not part of the layout above."""
    m = _STEM.match(key)
    if m:
        return f"s1.pathway{_pathway(m)}_stem.{m.group('mod')}.{m.group('leaf')}"
    m = _BLOCK.match(key)
    if m:
        stage, p, i = int(m.group("layer")) + 1, _pathway(m), int(m.group("i"))
        return f"s{stage}.pathway{p}_res{i}.{_BRANCH[m.group('mod'), m.group('sub')]}.{m.group('leaf')}"
    m = _NONLOCAL.match(key)
    if m:
        stage, p, i = int(m.group("layer")) + 1, _pathway(m), int(m.group("i"))
        if m.group("proj"):
            name = f"conv_{m.group('proj')}"
        else:
            name = "conv_out" if m.group("out") == "conv" else "bn"
        return f"s{stage}.pathway{p}_nonlocal{i}.{name}.{m.group('leaf')}"
    m = _LATERAL.match(key)
    if m:
        stage = int(m.group("layer")) + 1 if m.group("layer") else 1
        return f"s{stage}_fuse.{'conv_f2s' if m.group('mod') == 'conv' else 'bn'}.{m.group('leaf')}"
    return None
