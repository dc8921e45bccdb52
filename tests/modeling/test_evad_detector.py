"""The EVAD detector (``stmixer/modeling/evad/``) against the whole official EVAD model.

The fixtures in tests/reference/evad/detector (``make_evad_fixtures.py --sections detector``, see the README)
hold the official model's float64 answers on a tiny ViT (6 blocks, pruning at blocks 1, 3, 4) / Sparse R-CNN
person detector (8 proposals, 2 stages, width 16) / context-refinement decoder (3 blocks, width 12) for keep
1.0, keep 0.7, and keep 0.6 with enhanced weight 4, in eval mode (kept indices, FPN outputs, per-stage person
logits and boxes, per-block action logits, detections) and train mode (weighted losses, matched indices,
gradients of a few parameters). The official weights load through our checkpoint reader and loader.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.checkpoint import load_weights
from stmixer.checkpoint.formats import read_checkpoint
from stmixer.config import get_cfg, validate_config
from stmixer.modeling.backbones.evad_vit import EVADVisionTransformer
from stmixer.modeling.evad import ContextRefinement, EVADFPN

pytestmark = pytest.mark.evad

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "evad" / "detector"
META = json.loads((FIXTURES / "cases.json").read_text())
CASES = sorted(META["cases"])
REL = 1e-9
WHWH = [[96.0, 64.0, 96.0, 64.0]] * 2


def _inputs():
    data = np.load(FIXTURES / "inputs.npz")
    weights = {k[2:]: torch.from_numpy(v) for k, v in data.items() if k.startswith("w/")}
    clip = torch.from_numpy(data["clip_k"]).to(torch.float64) / 4
    boxes = [torch.from_numpy(data[f"gt_boxes_{i}"]) for i in range(2)]
    labels = [torch.from_numpy(data[f"gt_labels_{i}"]) for i in range(2)]
    return weights, clip, boxes, labels


WEIGHTS, CLIP, GT_BOXES, GT_LABELS = _inputs()


def _ref(case):
    return dict(np.load(FIXTURES / f"{case}.npz"))


def _close(ours, ref, name, rel=REL):
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-30)
    err = np.abs(ours - ref).max() / scale
    assert err <= rel, f"{name}: relative error {err:.3g} > {rel}"


def _backbone(case):
    info = META["cases"][case]
    v = META["vit"]
    model = EVADVisionTransformer(info["keep_rates"], info["enhanced_weight"], META["fpn_indices"],
                                  embed_dim=v["embed_dim"], depth=v["depth"], num_heads=v["num_heads"],
                                  mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"],
                                  tubelet_size=v["tubelet_size"], pretrain_img_size=v["pretrain_img_size"],
                                  pretrain_num_frames=META["clip"][2]).double()
    model.load_state_dict({k: w for k, w in WEIGHTS.items() if k.split(".")[0] in ("patch_embed", "blocks", "norm")})
    return model.eval()


def _context(restore_shuffle=True):
    crd, sp, v = META["crd"], META["sparse_rcnn"], META["vit"]
    side = v["pretrain_img_size"] // v["patch_size"]
    model = ContextRefinement(v["embed_dim"], embed_dim=crd["EMBED_DIM"], depth=crd["DEPTH"],
                              num_heads=crd["NUM_HEADS"], mlp_ratio=crd["MLP_RATIO"], num_actions=META["num_classes"],
                              act_dim=sp["ACT_FC_DIM"], num_act_layers=sp["NUM_ACT"], num_queries=sp["NUM_PROPOSALS"],
                              roi_extension=tuple(crd["ROI_EXTENSION"]), roi_resolution=META["pooler"]["resolution"],
                              roi_sampling_ratio=META["pooler"]["sampling_ratio"], patch_size=v["patch_size"],
                              pos_grid=(META["clip"][2] // v["tubelet_size"], side, side),
                              restore_shuffle=restore_shuffle).double()
    prefix = "det_head."
    model.load_state_dict({k[len(prefix):]: w for k, w in WEIGHTS.items()
                           if k.startswith(prefix) and not k.startswith(prefix + "s0_headseries.")})
    return model.eval()


# ----------------------------------------------------------------------------- parts (no person detector)
@pytest.mark.parametrize("case", CASES)
def test_context_refinement_matches_official_float64(case):
    """Our backbone's tokens + the official last-stage person boxes -> every decoder block's action logits."""
    ref = _ref(case)
    with torch.no_grad():
        feats = _backbone(case)([CLIP])
        assert np.array_equal(feats.kept_index.numpy(), ref["kept/final"])
        last = META["sparse_rcnn"]["NUM_HEADS"] - 1
        out = _context()(feats.tokens, feats.kept_index, feats.grid, torch.from_numpy(ref[f"stage{last}/boxes"]),
                         torch.tensor(WHWH, dtype=torch.float64))
    assert len(out) == META["crd"]["DEPTH"]
    for j, logits in enumerate(out):
        _close(logits, ref[f"block{j}/actions"], f"block{j}/actions")


@pytest.mark.parametrize("case", ["keep10", "keep07"])
def test_restore_order_switch(case):
    """``restore_shuffle=False`` puts each kept token at its own position: other logits when tokens were dropped,
    the same without pruning (so the official order is what the fixtures hold)."""
    ref = _ref(case)
    with torch.no_grad():
        feats = _backbone(case)([CLIP])
        args = (feats.tokens, feats.kept_index, feats.grid, torch.from_numpy(ref["stage1/boxes"]),
                torch.tensor(WHWH, dtype=torch.float64))
        official, own = _context(True)(*args)[-1], _context(False)(*args)[-1]
    assert torch.equal(official, own) == (case == "keep10")


def test_fpn_matches_official_float64():
    ref = _ref("keep07")
    fpn = EVADFPN([META["vit"]["embed_dim"]] * 4, META["sparse_rcnn"]["HIDDEN_DIM"]).double()
    fpn.load_state_dict({k: w for k, w in WEIGHTS.items() if k.startswith("fpn_")})
    with torch.no_grad():
        out = fpn(_backbone("keep07")([CLIP]).features)
    for level, p in enumerate(out):
        _close(p, ref[f"fpn/p{level + 2}"], f"fpn/p{level + 2}")


def test_fpn_refuses_an_odd_token_grid():
    fpn = EVADFPN([4] * 4, 8)
    maps = [torch.zeros(1, 4, 12, 20), torch.zeros(1, 4, 6, 10), torch.zeros(1, 4, 3, 5), torch.zeros(1, 4, 1, 2)]
    with pytest.raises(ValueError, match="must be even"):
        fpn(maps)
