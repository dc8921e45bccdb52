"""PySlowFast Caffe2 blob names -> PySlowFast module paths (the official backbone keys).

Every name is matched as a whole against one table of patterns (no chained
regex substitutions, no suffix guessing). A blob name is ``<module>_<leaf>``:
convolutions end in ``_w`` (weight) / ``_b`` (bias), BatchNorms in
``_bn_s`` (weight), ``_bn_b`` (bias), ``_bn_rm`` (running mean) and
``_bn_riv`` (running variance, copied as is). A ``t_`` prefix marks the Fast
pathway (``pathway1``). FORMATS.md section 2.2 has the full table.
"""

import re

_CONV_LEAVES = {"w": "weight", "b": "bias"}
_BN_LEAVES = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}

# (pattern over the module part of a convolution blob, module path template)
_CONV_MODULES = [
    (r"(?P<t>t_)?conv1", "s1.pathway{p}_stem.conv"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch1", "s{s}.pathway{p}_res{i}.branch1"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch2(?P<x>[abc])", "s{s}.pathway{p}_res{i}.branch2.{x}"),
    (r"t_pool1_subsample", "s1_fuse.conv_f2s"),
    # The block index in lateral names is the last Fast block of the stage; it is not needed.
    (r"t_res(?P<s>\d+)_\d+_branch2c_bn_subsample", "s{s}_fuse.conv_f2s"),
    (r"nonlocal_conv(?P<s>\d+)_(?P<i>\d+)_(?P<x>theta|phi|g|out)", "s{s}.pathway0_nonlocal{i}.conv_{x}"),
]
# (pattern over the module part of a BatchNorm blob, i.e. the name before "_bn_<leaf>", module path template)
_BN_MODULES = [
    (r"(?P<t>t_)?res_conv1", "s1.pathway{p}_stem.bn"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch1", "s{s}.pathway{p}_res{i}.branch1_bn"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch2(?P<x>[abc])", "s{s}.pathway{p}_res{i}.branch2.{x}_bn"),
    (r"t_pool1_subsample", "s1_fuse.bn"),
    (r"t_res(?P<s>\d+)_\d+_branch2c_bn_subsample", "s{s}_fuse.bn"),
    (r"nonlocal_conv(?P<s>\d+)_(?P<i>\d+)", "s{s}.pathway0_nonlocal{i}.bn"),
]
_CONV_MODULES = [(re.compile(p), t) for p, t in _CONV_MODULES]
_BN_MODULES = [(re.compile(p), t) for p, t in _BN_MODULES]
_BN_BLOB = re.compile(r"(?P<module>.+)_bn_(?P<leaf>s|b|rm|riv)")
_CONV_BLOB = re.compile(r"(?P<module>.+)_(?P<leaf>w|b)")


def _module_path(table, module_name):
    for pattern, template in table:
        match = pattern.fullmatch(module_name)
        if match:
            fields = match.groupdict()
            fields["p"] = 1 if fields.pop("t", None) else 0
            return template.format(**fields)
    return None


def caffe2_to_module_path(blob_name):
    """Module path of a Caffe2 blob name, e.g. ``res2_0_branch2a_bn_riv`` ->
    ``s2.pathway0_res0.branch2.a_bn.running_var``; None when the name is not a Caffe2 parameter name.

    BatchNorm names are tried first: ``t_res2_2_branch2c_bn_subsample_bn_s`` is the
    fusion BN, ``t_res2_2_branch2c_bn_subsample_w`` the fusion convolution.
    """
    match = _BN_BLOB.fullmatch(blob_name)
    if match:
        path = _module_path(_BN_MODULES, match["module"])
        if path:
            return f"{path}.{_BN_LEAVES[match['leaf']]}"
    match = _CONV_BLOB.fullmatch(blob_name)
    if match:
        path = _module_path(_CONV_MODULES, match["module"])
        if path:
            return f"{path}.{_CONV_LEAVES[match['leaf']]}"
    return None
