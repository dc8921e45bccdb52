"""State-dict layout of every mmaction2 AVA detector of the seed page, built from mmaction2's own configs.

    PYTHONPATH=<mmdet 3.3 package dir> /tmp/mmbb/venv/bin/python tests/reference/make_mmaction2_config_fixtures.py \\
        --mmaction2 /tmp/mm/src --out tests/reference/mmaction2/configs --commit <sha>

``--mmaction2`` holds mmaction2's ``mmaction`` package and ``configs/`` (``git archive`` of
open-mmlab/mmaction2); the script needs mmengine, mmcv-lite and mmdet 3.3 (``pip install --no-deps``)
in a throwaway environment. For every config of ``CONFIGS`` (the seed page's AVA rows and the LFB
bank-inference config) it reads the config with mmengine's ``Config``, drops ``init_cfg`` (no
download: the weights do not matter, only their names and shapes) and builds the detector with
mmdet's registry as ``tools/train.py`` would, then records the state dict: every key and shape
(the backbones' lists once per distinct backbone), the number of parameters and the bbox head's
``in_channels``. ``tests/config/test_mmaction2_configs.py`` checks that our model built from the
yaml of the same name holds exactly these tensors under the keys our ``mmaction2`` checkpoint
format maps them to, so mmaction2's trained checkpoints load into every config.

Shims: mmcv-lite has no compiled ops, so a stand-in ``mmcv._ext`` lets ``mmcv.ops`` import (no op
is called: nothing runs forward), packages that only unused mmdet / mmaction2 modules import
(pycocotools, scipy, terminaltables, shapely) are empty stand-ins when absent, and ``mmcv.ops.RoIAlign`` is a parameter-free stand-in; LFB's
``FBOHead`` reads its bank files when it is built, so ``LFB.__init__`` is replaced by one that
reads nothing (the bank holds no parameters); ``LFBInferHead`` writes its (empty) bank into a
temporary folder.
"""

import argparse
import hashlib
import json
import sys
import tempfile
import types
from pathlib import Path

# mmaction2 configs (below configs/detection/) of the seed page's AVA tables + the LFB bank inference.
CONFIGS = [
    "acrn/slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava21-rgb",
    "acrn/slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava22-rgb",
    "lfb/slowonly-lfb-nl_kinetics400-pretrained-r50_8xb12-4x16x1-20e_ava21-rgb",
    "lfb/slowonly-lfb-max_kinetics400-pretrained-r50_8xb12-4x16x1-20e_ava21-rgb",
    "lfb/slowonly-lfb_ava-pretrained-r50_infer-4x16x1_ava21-rgb",
    "slowfast/slowfast_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb",
    "slowfast/slowfast_kinetics400-pretrained-r50-context_8xb16-4x16x1-20e_ava21-rgb",
    "slowfast/slowfast_kinetics400-pretrained-r50_8xb8-8x8x1-20e_ava21-rgb",
    "slowfast/slowfast_kinetics400-pretrained-r50_8xb6-8x8x1-cosine-10e_ava22-rgb",
    "slowfast/slowfast_kinetics400-pretrained-r50-temporal-max_8xb6-8x8x1-cosine-10e_ava22-rgb",
    "slowfast/slowfast_r50-k400-pre-temporal-max-focal-alpha3-gamma1_8xb6-8x8x1-cosine-10e_ava22-rgb",
    "slowonly/slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb",
    "slowonly/slowonly_kinetics700-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb",
    "slowonly/slowonly_kinetics400-pretrained-r50-nl_8xb16-4x16x1-20e_ava21-rgb",
    "slowonly/slowonly_kinetics400-pretrained-r50-nl_8xb16-8x8x1-20e_ava21-rgb",
    "slowonly/slowonly_kinetics400-pretrained-r101_8xb16-8x8x1-20e_ava21-rgb",
    "slowonly/slowonly_k400-pre-r50_8xb8-4x16x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50_8xb8-4x16x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k400-pre-r50_8xb8-8x8x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50_8xb8-8x8x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50-context_8xb8-8x8x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50-context-temporal-max_8xb8-8x8x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50-context-temporal-max-nl-head_8xb8-8x8x1-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50-context-temporal-max-nl-head_8xb8-8x8x1-focal-10e_ava-kinetics-rgb",
    "slowonly/slowonly_k700-pre-r50_8xb8-16x4x1-10e-tricks_ava-kinetics-rgb",
]


STUBBED_PACKAGES = ("tqdm", "six", "pycocotools", "scipy", "terminaltables", "shapely")


def install_shims():
    """mmcv._ext stand-in (its ops raise if called), a parameter-free RoIAlign, an LFB that reads no file."""
    import torch.nn as nn

    class _Ext(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def _missing(*args, **kwargs):
                raise RuntimeError(f"{self.__name__}.{name} is not available (shimmed)")
            # a class, so that modules may also subclass it; calling it raises
            return type(name, (), {"__init__": _missing})

    sys.modules.setdefault("mmcv._ext", _Ext("mmcv._ext"))
    # Imported by mmdet / mmaction2 modules these models never use (COCO masks, pose transforms):
    # any module below an absent package of STUBBED_PACKAGES is an empty stand-in.
    import importlib.abc
    import importlib.machinery
    import importlib.util

    absent = [name for name in STUBBED_PACKAGES if importlib.util.find_spec(name) is None]

    class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in absent:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Ext(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _StubFinder())
    import mmcv.ops

    class _RoIAlign(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

    mmcv.ops.RoIAlign = _RoIAlign
    import mmdet.models  # noqa: F401  (first, so that an import error shows instead of mmaction2 skipping its RoI heads)
    import mmaction.models.roi_heads as roi_heads
    from mmaction.models.roi_heads.shared_heads import lfb

    assert hasattr(roi_heads, "AVARoIHead"), "mmaction2's RoI heads did not register (mmdet import failed)"

    def _no_bank(self, *args, **kwargs):
        self.lfb = {}

    lfb.LFB.__init__ = _no_bank


def layout(model):
    """[[key, shape], ...] of a module's state dict, in order."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmaction2", required=True, type=Path, help="folder with mmaction/ and configs/")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.mmaction2))
    install_shims()
    import mmdet
    import mmengine
    import torch
    import mmaction.models  # noqa: F401  (registers mmaction2's models; its datasets are not needed)
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS

    DefaultScope.get_instance("stmixer-layouts", scope_name="mmaction")
    backbones, configs = {}, {}
    for rel in CONFIGS:
        cfg = Config.fromfile(str(args.mmaction2 / "configs" / "detection" / f"{rel}.py"))
        model_cfg = cfg.model
        model_cfg.pop("init_cfg", None)
        shared = model_cfg.roi_head.get("shared_head")
        if shared is not None and shared.type == "LFBInferHead":
            shared.lfb_prefix_path = tempfile.mkdtemp()  # its __del__ writes an (empty) bank there
        model = MODELS.build(model_cfg)
        keys = layout(model)
        backbone = [[k[len("backbone."):], s] for k, s in keys if k.startswith("backbone.")]
        digest = hashlib.sha256(json.dumps(backbone).encode()).hexdigest()[:12]
        backbones.setdefault(digest, backbone)
        configs[rel.split("/")[1]] = {
            "backbone": digest,
            "backbone_type": model_cfg.backbone.type,
            "roi_head": [[k, s] for k, s in keys if not k.startswith("backbone.")],
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_tensors": len(keys),
            "bbox_head_in_channels": model.roi_head.bbox_head.in_channels,
        }
        print(rel, configs[rel.split("/")[1]]["num_params"], len(keys))
    out = {"backbones": backbones, "configs": configs,
           "versions": {"mmaction2_commit": args.commit, "mmengine": mmengine.__version__, "mmdet": mmdet.__version__,
                        "torch": torch.__version__, "python": sys.version.split()[0]},
           "shims": "mmcv._ext stand-in (no op runs), parameter-free RoIAlign stand-in, LFB reads no bank file"}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "layouts.json", "w") as f:
        json.dump(out, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
