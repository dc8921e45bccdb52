"""Long-term feature bank: the bank (stmixer.modeling.roi_heads.lfb_bank) and its shared heads (stmixer.modeling.roi_heads.lfb).

The ``mmaction2``-marked tests hold them to mmaction2's own ``LFB`` / ``FBOHead`` / ``LFBInferHead``
answers in tests/reference/mmaction2/lfb (made by tests/reference/make_mmaction2_lfb_fixtures.py):
bank files read from mmaction2's pickles, the written bank, lookups and the FBO heads' outputs and
gradients within 1e-9 x max|value| in float64 (F32_TOL in float32; see the fixture README).
"""

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.modeling.roi_heads.lfb_bank import (LFBFormatError, LFBKeyError, LongTermFeatureBank, convert, load_bank, load_banks,
                              parse_img_key, save_bank)
from stmixer.errors import UserError
from stmixer.modeling.roi_heads.lfb import FBOAvg, FBOHead, FBOMax, FBONonLocal, LFBInferHead, NonLocalLayer
from stmixer.modeling.roi_heads.shared_heads import SHARED_HEAD_REGISTRY

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "lfb"
F64_TOL = 1e-9
F32_TOL = 3e-5


def _meta():
    return json.loads((FIXTURES / "cases.json").read_text())


def _arrays():
    with np.load(FIXTURES / "lfb.npz") as data:
        return dict(data)


def _assert_close(ours, ref, tol, name, floor=1e-30):
    """``|ours - ref| <= tol x max(max|ref|, floor)`` (``floor``: the scale of a tensor that is zero in exact
    arithmetic, whose reference holds only rounding noise)."""
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, name
    scale = max(np.abs(ref).max(), floor)
    err = np.abs(ours - ref).max() if ref.size else 0.0
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def _same_bank(ours, ref):
    assert list(ours.videos) == list(ref.videos)
    for video, seconds in ref.videos.items():
        assert list(ours.videos[video]) == list(seconds), video
        for second, feats in seconds.items():
            got = ours.videos[video][second]
            assert got.dtype == feats.dtype and torch.equal(got, feats), (video, second)


def _tiny_bank(dtype=torch.float32, channels=4):
    gen = torch.Generator().manual_seed(0)
    return LongTermFeatureBank({
        "v1": {900: torch.randn(1, channels, generator=gen).to(dtype),
               902: torch.randn(3, channels, generator=gen).to(dtype)},
        "v,2": {10: [torch.randn(channels, generator=gen).to(dtype) for _ in range(2)]},
    }, source="tiny")


# ---------------------------------------------------------------------------- official fixtures
mmaction2 = pytest.mark.mmaction2


@mmaction2
@pytest.mark.parametrize("tag", ["multi", "multi_half"])
def test_writer_equals_mmaction2_lfb_infer_head(tag):
    """Our LFBInferHead on the fixture's RoIs writes mmaction2's bank: same videos, seconds, order, bits."""
    meta, arrays = _meta(), _arrays()
    case = meta["multi"][tag]
    head = LFBInferHead(meta["lfb_channels"], half_precision=case["half_precision"],
                        temporal_pool_type=case["pools"][0], spatial_pool_type=case["pools"][1])
    for b, keys in enumerate(meta["multi"]["keys"]):
        x = torch.from_numpy(arrays[f"multi/b{b}/roi_feats"])
        rois = torch.from_numpy(arrays[f"multi/b{b}/rois"])
        assert head(x, torch.zeros(1), rois, keys) is x
    ref = load_bank(FIXTURES / f"lfb_{tag}.pkl")
    assert ref.dtype == (torch.float16 if case["half_precision"] else torch.float64)
    _same_bank(head.bank(), ref)


@mmaction2
def test_sparse_banks_written_by_our_head_equal_official_files():
    meta, arrays = _meta(), _arrays()
    for mode in ("train", "val"):
        head = LFBInferHead(meta["lfb_channels"], half_precision=False)
        for b, keys in enumerate(meta[f"sparse_{mode}_keys"]):
            head(torch.from_numpy(arrays[f"sparse_{mode}/b{b}/roi_feats"]), None,
                 torch.from_numpy(arrays[f"sparse_{mode}/b{b}/rois"]), keys)
        _same_bank(head.bank(), load_bank(FIXTURES / f"lfb_{mode}.pkl"))


@mmaction2
def test_lookups_equal_mmaction2():
    """Window, per-second order, zero padding and the train + val merge (val's vidB replaces train's)."""
    meta, arrays = _meta(), _arrays()
    bank = load_banks([FIXTURES / "lfb_train.pkl", FIXTURES / "lfb_val.pkl"])
    assert sorted(bank.videos["vidB"]) == [907, 908, 909]
    for key, window, k in meta["lookups"]:
        ref = arrays[f"lookup/{key}/w{window}k{k}"]
        ours = bank.sample(*parse_img_key(key), window, k, dtype=torch.float64)
        assert ours.dtype == torch.float64
        np.testing.assert_array_equal(ours.numpy(), ref, err_msg=key)
    assert not arrays["lookup/vidA,0950/w6k1"].any()  # a window without features is all zeros


@mmaction2
def test_seeded_randperm_draws_what_mmaction2_draws():
    meta, arrays = _meta(), _arrays()
    bank = load_bank(FIXTURES / "lfb_multi.pkl")
    for key, window, k in meta["randperm"]["lookups"]:
        torch.manual_seed(meta["randperm"]["seed"])
        ours = bank.sample(*parse_img_key(key), window, k, dtype=torch.float64)
        np.testing.assert_array_equal(ours.numpy(), arrays[f"randperm/{key}/w{window}k{k}"], err_msg=key)


def _fbo_from_fixture(name, meta, dtype):
    case = meta["fbo"][name]
    c_roi, c_lfb, window, k = meta["roi_channels"], meta["lfb_channels"], meta["fbo_window"], meta["fbo_k"]
    if case["type"] == "non_local":
        fbo = FBONonLocal(c_roi, c_lfb, case["latent_channels"], 1, window * k, **case["fbo"])
    else:
        fbo = (FBOMax if case["type"] == "max" else FBOAvg)(c_lfb)
    bank = load_banks([FIXTURES / "lfb_train.pkl", FIXTURES / "lfb_val.pkl"])
    return FBOHead(bank, fbo, c_roi, window, k, *case["pools"]).to(dtype).eval()


def _run_fbo(name, dtype):
    meta, arrays = _meta(), _arrays()
    head = _fbo_from_fixture(name, meta, dtype)
    prefix = f"fbo/{name}/weight/"
    weights = {k[len(prefix):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}
    head.load_state_dict(weights, strict=True)  # mmaction2's roi_head.shared_head.* names
    x = torch.from_numpy(arrays["fbo/input/roi_feats"]).to(dtype).requires_grad_()
    rois = torch.from_numpy(arrays["fbo/input/rois"]).to(dtype)
    out = head(x, None, rois, meta["fbo_keys"])
    assert out.dtype == dtype and out.shape[1] == head.out_channels
    (out * torch.from_numpy(arrays[f"fbo/{name}/loss_weight"]).to(dtype)).sum().backward()
    ours = {f"fbo/{name}/out": out, f"fbo/{name}/grad/roi_feats": x.grad}
    ours.update({f"fbo/{name}/grad/{k}": p.grad for k, p in head.named_parameters()})
    refs = {k: v for k, v in arrays.items() if k.startswith(f"fbo/{name}/out") or k.startswith(f"fbo/{name}/grad/")}
    assert sorted(ours) == sorted(refs)
    return {k: v.detach().double().numpy() for k, v in ours.items()}, refs


@mmaction2
@pytest.mark.parametrize("name", ["nonlocal", "nonlocal_postact", "max", "avg"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fbo_heads_equal_mmaction2(name, dtype):
    ours, refs = _run_fbo(name, dtype)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    # The key projections' biases (lt_feat_conv of each non-local layer) get no gradient in exact
    # arithmetic (softmax is invariant to a shift shared by all keys): their references are ~1e-16
    # noise, compared on the scale of the case's largest gradient.
    grad_scale = max(np.abs(v).max() for k, v in refs.items() if "/grad/" in k)
    for key, ref in refs.items():
        analytic_zero = "/grad/" in key and np.abs(ref).max() < 1e-12 * grad_scale
        _assert_close(ours[key], ref, tol, key, floor=grad_scale if analytic_zero else 1e-30)


# ---------------------------------------------------------------------------- the bank and its files
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_npz_round_trip_keeps_order_values_and_dtype(tmp_path, dtype):
    bank = _tiny_bank(dtype)
    save_bank(bank, tmp_path / "b.npz")
    back = load_bank(tmp_path / "b.npz")
    assert back.dtype == dtype and back.channels == 4
    _same_bank(back, bank)
    assert load_bank(tmp_path / "b.npz", dtype="float64").dtype == torch.float64


def test_convert_between_mmaction2_pickle_and_npz(tmp_path):
    bank = _tiny_bank(torch.float16)
    convert_src = tmp_path / "b.npz"
    save_bank(bank, convert_src)
    convert(convert_src, tmp_path / "lfb_train.pkl")
    with zipfile.ZipFile(tmp_path / "lfb_train.pkl") as z:  # torch.save's container, as mmaction2 writes
        assert any(n.endswith("data.pkl") for n in z.namelist())
    raw = torch.load(tmp_path / "lfb_train.pkl", weights_only=True)
    assert isinstance(raw["v1"][902], list) and raw["v1"][902][0].shape == (4,)
    convert(tmp_path / "lfb_train.pkl", tmp_path / "again.npz", dtype="float32")
    again = load_bank(tmp_path / "again.npz")
    assert again.dtype == torch.float32
    _same_bank(load_bank(tmp_path / "again.npz", dtype="float16"), bank)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "lfb_train.pkl"
    with open(path, "wb") as f:
        pickle.dump({"v": {1: _Evil()}}, f)
    with pytest.raises(LFBFormatError, match="refus"):
        load_bank(path)
    torch.save({"v": {1: [torch.zeros(2)]}, "x": _Evil()}, tmp_path / "t.pkl")
    with pytest.raises(LFBFormatError, match="refus"):
        load_bank(tmp_path / "t.pkl")


def test_npz_with_object_array_or_bad_layout_is_refused(tmp_path):
    bank = _tiny_bank()
    save_bank(bank, tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        members = dict(data)
    bad = dict(members, video_ids=np.array([{"a": 1}, "b"], dtype=object))
    np.savez(tmp_path / "obj.npz", **bad)
    with pytest.raises(LFBFormatError, match="obj.npz"):
        load_bank(tmp_path / "obj.npz")
    np.savez(tmp_path / "off.npz", **dict(members, group_offset=members["group_offset"][::-1]))
    with pytest.raises(LFBFormatError, match="group_offset"):
        load_bank(tmp_path / "off.npz")
    with pytest.raises(UserError, match="not found"):
        load_bank(tmp_path / "missing.npz")


def test_lookup_window_truncation_and_errors():
    bank = _tiny_bank()
    out = bank.sample("v1", 901, window_size=4, max_num_sampled_feat=2, dtype=torch.float64)
    # window 899..902: 900 -> slot (1, 0); 902 (3 features) -> 2 of them in slots (3, 0..1)
    out = out.view(4, 2, 4)
    assert out.dtype == torch.float64
    assert torch.equal(out[1, 0], bank.videos["v1"][900][0].double()) and not out[1, 1].any()
    rows = {tuple(r.tolist()) for r in bank.videos["v1"][902].double()}
    assert {tuple(out[3, 0].tolist()), tuple(out[3, 1].tolist())} <= rows and out[3, 0].ne(out[3, 1]).any()
    assert not out[0].any() and not out[2].any()
    assert parse_img_key("v,2,0010") == ("v,2", 10)
    with pytest.raises(LFBKeyError, match="'nope' is not in the feature bank"):
        bank.sample("nope", 1, 2, 1)
    with pytest.raises(LFBKeyError, match="img_key"):
        parse_img_key("no-comma")
    with pytest.raises(LFBFormatError, match="channels"):
        LongTermFeatureBank({"a": {1: torch.zeros(1, 3), 2: torch.zeros(1, 4)}})
    with pytest.raises(LFBFormatError, match="'a' second 1: not a list of feature vectors"):
        LongTermFeatureBank({"a": {1: ["text"]}})
    with pytest.raises(LFBFormatError, match="seconds must be integers"):
        LongTermFeatureBank({"a": {"0902": torch.zeros(1, 3)}})


# ---------------------------------------------------------------------------- heads and builders
def _cfg(tmp_path, bank, **lfb):
    save_bank(bank, tmp_path / "lfb_train.npz")
    cfg = get_cfg()
    cfg.MODEL.LFB.PREFIX_PATH = str(tmp_path)
    cfg.MODEL.LFB.FILES = ["lfb_train.npz"]
    cfg.MODEL.LFB.CHANNELS = bank.channels
    cfg.MODEL.LFB.WINDOW_SIZE = 4
    cfg.MODEL.LFB.MAX_NUM_SAMPLED_FEAT = 2
    cfg.MODEL.LFB.LATENT_CHANNELS = 6
    for k, v in lfb.items():
        cfg.MODEL.LFB[k] = v
    return cfg


@pytest.mark.parametrize("name,extra", [("FBONonLocal", 6), ("FBOMax", 4), ("FBOAvg", 4)])
def test_registered_fbo_heads_build_from_config(tmp_path, name, extra):
    cfg = _cfg(tmp_path, _tiny_bank())
    head = SHARED_HEAD_REGISTRY.get(name)(cfg, 5)
    assert head.out_channels == 5 + extra
    out = head(torch.randn(3, 5, 2, 3, 3), torch.zeros(2, 5, 2, 4, 4),
               torch.tensor([[0.0, 1, 1, 5, 5], [1, 0, 0, 3, 3], [0, 2, 2, 4, 4]]), ["v1,0901", "v,2,0010"])
    assert out.shape == (3, 5 + extra, 1, 1, 1)
    assert not any(k.startswith("bank") for k in head.state_dict())


def test_nonlocal_parameter_names_are_mmaction2s():
    fbo = FBONonLocal(10, 8, 6, 1, 10, num_non_local_layers=2)
    head = FBOHead(_tiny_bank(channels=8), fbo, 10)
    keys = set(head.state_dict())
    assert {"fbo.st_feat_conv.weight", "fbo.lt_feat_conv.bias", "fbo.non_local_layer_2.global_conv.conv.weight",
            "fbo.non_local_layer_1.out_conv.conv.bias", "fbo.non_local_layer_1.ln.weight"} <= keys
    assert len(keys) == 4 + 2 * 10


def test_builder_errors_name_the_keys(tmp_path):
    cfg = _cfg(tmp_path, _tiny_bank(), CHANNELS=7)
    with pytest.raises(UserError, match="MODEL.LFB.CHANNELS = 7"):
        SHARED_HEAD_REGISTRY.get("FBOMax")(cfg, 5)
    cfg.MODEL.LFB.FILES = []
    with pytest.raises(UserError, match="MODEL.LFB.FILES is empty"):
        SHARED_HEAD_REGISTRY.get("FBOAvg")(cfg, 5)


@mmaction2
def test_zero_init_out_conv_is_a_no_op_in_mmaction2():
    """The fact the default below reproduces, as measured on mmaction2's own FBONonLocal."""
    assert _meta()["zero_init_out_conv_zeroes_out_conv"] is False


def test_zero_init_out_conv_reproduces_mmaction2_unless_switched_off():
    torch.manual_seed(0)
    as_mm = FBONonLocal(4, 4, 4, 1, 2, zero_init_out_conv=True)
    assert as_mm.non_local_layer_1.out_conv.conv.weight.abs().sum() > 0  # mmaction2: the flag does nothing
    fixed = FBONonLocal(4, 4, 4, 1, 2, zero_init_out_conv=True, zero_init_as_mmaction2=False)
    assert fixed.non_local_layer_1.out_conv.conv.weight.abs().sum() == 0
    assert fixed.non_local_layer_2.out_conv.conv.bias.abs().sum() == 0


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    layer = NonLocalLayer(4, 4, 4, 1, 3, dropout_ratio=0.5)
    st, lt = torch.randn(8, 4, 1, 1, 1), torch.randn(8, 4, 3, 1, 1)
    assert torch.equal(layer.eval()(st, lt), layer.eval()(st, lt))
    assert not torch.equal(layer.train()(st, lt), layer.train()(st, lt))


def test_lfb_infer_writes_the_bank_and_replaces_padding_repeats(tmp_path):
    cfg = get_cfg()
    cfg.MODEL.LFB.INFER_HALF_PRECISION = False
    head = SHARED_HEAD_REGISTRY.get("LFBInfer")(cfg, 3)
    assert head.out_channels == 3

    def pooled(x):  # temporal avg, then spatial max
        return x.mean(2).amax((2, 3))

    x = torch.randn(3, 3, 2, 2, 2)
    assert head(x, None, torch.tensor([[1.0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [1, 0, 0, 1, 1]]),
                ["a,0001", "b,0002"]) is x
    # a later call repeating clip a,0001 (a test sampler's padding) replaces its features
    y = torch.randn(2, 3, 2, 2, 2)
    head(y, None, torch.tensor([[0.0, 0, 0, 1, 1], [1, 0, 0, 1, 1]]), ["a,0001", "c,0003"])
    path = head.write(tmp_path / "banks", "val")
    assert os.path.basename(path) == "lfb_val.npz" and sorted(os.listdir(tmp_path / "banks")) == ["lfb_val.npz"]
    bank = load_bank(path)
    assert list(bank.videos) == ["b", "a", "c"] and bank.dtype == torch.float32
    assert torch.equal(bank.videos["a"][1], pooled(y[:1]))
    assert torch.equal(bank.videos["b"][2], pooled(x)[[0, 2]])  # RoIs of one clip in RoI order
    assert torch.equal(bank.videos["c"][3], pooled(y[1:]))


def test_config_rejects_unknown_pool_and_dtype():
    from stmixer.config.validate import validate_config

    cfg = get_cfg()
    cfg.MODEL.LFB.TEMPORAL_POOL = "sum"
    cfg.MODEL.LFB.DTYPE = "int8"
    with pytest.raises(UserError) as e:
        validate_config(cfg)
    assert "MODEL.LFB.TEMPORAL_POOL" in str(e.value) and "MODEL.LFB.DTYPE" in str(e.value)


# ---------------------------------------------------------------------------- the lfb_infer command
class _FakeTwoStage(torch.nn.Module):
    """Stands in for FastRCNN: one whole-frame RoI per clip through an LFBInfer shared head."""

    def __init__(self):
        super().__init__()
        self.shared_head = LFBInferHead(3, half_precision=True)
        self.calls = 0

    def forward(self, slow, fast, whwh, **kwargs):
        b = slow.shape[0]
        keys = [f"vid{self.calls},{900 + i:04d}" for i in range(b)]
        self.calls += 1
        rois = torch.cat([torch.arange(b, dtype=slow.dtype)[:, None], torch.zeros(b, 4)], 1)
        self.shared_head(slow[:, :3], None, rois, keys)
        return [{"boxes": torch.zeros(1, 4), "scores": torch.zeros(1, 80)} for _ in range(b)]


def test_lfb_infer_runs_the_model_and_writes_the_split_bank(tmp_path):
    from stmixer.tools.lfb_infer import infer_bank

    def batch(start, b):
        return {"videos": [torch.randn(b, 3, 2, 4, 4)], "whwh": torch.ones(b, 4), "boxes": [], "labels": [],
                "metadata": [{"video_id": "x", "timestamp": 900 + i} for i in range(b)],
                "indices": torch.arange(start, start + b)}

    model = _FakeTwoStage()
    path = infer_bank(model, [batch(0, 2), batch(2, 1)], torch.device("cpu"), tmp_path, "train", progress=False)
    bank = load_bank(path)
    assert path.endswith("lfb_train.npz") and bank.dtype == torch.float16 and bank.channels == 3
    assert list(bank.videos) == ["vid0", "vid1"] and list(bank.videos["vid0"]) == [900, 901]


def test_lfb_infer_split_config():
    from yacs.config import CfgNode

    from stmixer.tools.lfb_infer import split_config

    cfg = get_cfg()
    no_roi_head = cfg.clone()
    no_roi_head.MODEL.pop("ROI_HEAD", None)
    with pytest.raises(UserError, match="two-stage"):
        split_config(no_roi_head, "train")
    if "ROI_HEAD" not in cfg.MODEL:  # before the FastRCNN keys are merged
        cfg.MODEL.ROI_HEAD = CfgNode({"SHARED_HEAD": ""})
    if "PROPOSALS" in cfg:
        cfg.PROPOSALS.TRAIN_FILE, cfg.PROPOSALS.TEST_FILE = "train.pkl", "val.pkl"
    cfg.AVA.TRAIN_LISTS = ["train.csv"]
    out = split_config(cfg, "train")
    assert out.MODEL.ROI_HEAD.SHARED_HEAD == "LFBInfer"
    assert out.AVA.TEST_LISTS == ["train.csv"] and out.AVA.TEST_GT_BOX_LISTS == list(cfg.AVA.TRAIN_GT_BOX_LISTS)
    if "PROPOSALS" in cfg:
        assert out.PROPOSALS.TEST_FILE == "train.pkl"
    val = split_config(cfg, "val")
    assert val.AVA.TEST_LISTS == list(cfg.AVA.TEST_LISTS) and val.MODEL.ROI_HEAD.SHARED_HEAD == "LFBInfer"


_WRITER_WORKER = """
import datetime, sys
import torch, torch.distributed as dist
from stmixer.modeling.roi_heads.lfb import LFBInferHead
dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))  # a failed peer ends the other
rank = dist.get_rank()
head = LFBInferHead(2, half_precision=False)
x = torch.arange(6, dtype=torch.float32).view(3, 2, 1, 1, 1) + 100 * rank
keys = [["a,0001", "b,0002"], ["c,0003", "a,0001", "a,0005"]][rank]
rois = torch.tensor([[[0.0, 0, 0, 1, 1], [1, 0, 0, 1, 1], [0, 0, 0, 1, 1]],
                     [[0.0, 0, 0, 1, 1], [1, 0, 0, 1, 1], [2, 0, 0, 1, 1]]][rank])
head(x, None, rois, keys)
print(head.write(sys.argv[1], "train"))
dist.destroy_process_group()
"""


def test_writer_merges_the_processes_parts_on_rank0(tmp_path, repo_root):
    """Two gloo processes: rank 0 merges per video in rank order (a second on both: the later rank's)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER_WORKER, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, stderr = proc.communicate()
        assert proc.returncode == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["lfb_train.npz"]
    bank = load_bank(tmp_path / "lfb_train.npz")
    assert list(bank.videos) == ["a", "b", "c"] and list(bank.videos["a"]) == [1, 5]
    # rank 0: RoIs 0 and 2 -> a (x[0], x[2]), RoI 1 -> b; rank 1 (x + 100): c, a,0001 (replaces), a,0005
    assert bank.videos["a"][1].tolist() == [[102.0, 103.0]]
    assert bank.videos["a"][5].tolist() == [[104.0, 105.0]]
    assert bank.videos["b"][2].tolist() == [[2.0, 3.0]] and bank.videos["c"][3].tolist() == [[100.0, 101.0]]


def _fast_rcnn_cfg(shared_head):
    from stmixer.modeling.build import DETECTOR_REGISTRY

    if "FastRCNN" not in DETECTOR_REGISTRY:
        pytest.skip("the FastRCNN detector (issue #15, mm-core) is not in this checkout")
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FastRCNN"
    cfg.MODEL.BACKBONE.CONV_BODY = "PySlowonly"
    cfg.RESNET.WIDTH_PER_GROUP = 4  # a thin ResNet-50: last stage 128 channels
    cfg.RESNET.SPATIAL_STRIDES = [[1], [2], [2], [1]]
    cfg.MODEL.ROI_HEAD.SHARED_HEAD = shared_head
    return cfg


def test_fast_rcnn_writes_a_bank_and_trains_on_it(tmp_path):
    """The contract with the detector: LFBInfer in eval mode writes the bank of the clips' img keys,
    FBONonLocal reads it in training (bbox head input C + latent) and gets gradients; checkpoint keys
    are mmaction2's ``roi_head.shared_head.fbo.*``."""
    from stmixer.modeling import build_detector

    torch.manual_seed(0)
    model = build_detector(_fast_rcnn_cfg("LFBInfer")).eval()
    slow, whwh = torch.randn(2, 3, 4, 64, 64), torch.tensor([[64.0, 64, 64, 64]] * 2)
    proposals = [torch.tensor([[2.0, 2, 40, 60], [10, 5, 60, 50]]), torch.tensor([[0.0, 0, 30, 30]])]
    keys = ["vidA,0902", "vidB,0903"]
    with torch.no_grad():
        model(slow, None, whwh, proposals=proposals, img_keys=keys)
    bank = load_bank(model.roi_head.shared_head.write(tmp_path, "train"))
    assert {v: {s: f.shape[0] for s, f in x.items()} for v, x in bank.videos.items()} == {"vidA": {902: 2},
                                                                                         "vidB": {903: 1}}
    cfg = _fast_rcnn_cfg("FBONonLocal")
    cfg.MODEL.LFB.PREFIX_PATH, cfg.MODEL.LFB.FILES = str(tmp_path), ["lfb_train.npz"]
    cfg.MODEL.LFB.CHANNELS, cfg.MODEL.LFB.LATENT_CHANNELS, cfg.MODEL.LFB.WINDOW_SIZE = bank.channels, 16, 4
    model = build_detector(cfg).train()
    assert model.roi_head.shared_head.out_channels == bank.channels + 16
    labels = [torch.zeros(1, 80).index_fill_(1, torch.tensor([3]), 1.0)] * 2
    losses = model(slow, None, whwh, [p[:1] for p in proposals], labels, proposals=proposals, img_keys=keys)
    sum(losses.values()).backward()
    assert model.roi_head.shared_head.fbo.non_local_layer_1.out_conv.conv.weight.grad.abs().sum() > 0
    assert "roi_head.shared_head.fbo.non_local_layer_2.ln.weight" in model.state_dict()


def test_lookup_table_is_shared_and_batched_lookup_draws_like_single_ones(tmp_path):
    bank = _tiny_bank()
    save_bank(bank, tmp_path / "b.npz")
    from_npz = load_bank(tmp_path / "b.npz")
    table, rows = from_npz._lookup_table()
    assert table.data_ptr() == from_npz.videos["v1"][900].data_ptr()  # the file's rows, not a copy
    assert rows["v1"][902] == (1, 3) and rows["v,2"][10] == (4, 2)
    table, _ = bank._lookup_table()  # per-second tensors: copied once into one table, views re-pointed
    assert bank.videos["v1"][902].data_ptr() == table[1].data_ptr()
    clips = [("v1", 902), ("v,2", 11), ("v1", 901)]
    batched = bank.sample_many(clips, 4, 2, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    single = torch.stack([bank.sample(v, t, 4, 2, generator=gen) for v, t in clips])
    assert torch.equal(batched, single) and batched.shape == (3, 8, 4)


def test_lfb_infer_command_then_fbo_training_on_synthetic_data(tmp_path):
    """After the #15 merge (FastRCNN, proposals, engine passing img_keys): ``lfb_infer`` writes the train
    and val banks of a synthetic dataset from a detector checkpoint, and an FBONonLocal detector trains
    one step and predicts on them."""
    from stmixer.config import load_config
    from stmixer.data import build_data_loader
    from stmixer.data.synthetic import main as make_synthetic
    from stmixer.engine.inference import predict
    from stmixer.engine.trainer import detector_inputs
    from stmixer.modeling import build_detector
    from stmixer.tools.lfb_infer import main as lfb_infer

    _fast_rcnn_cfg("LFBInfer")  # skips without the detector
    if "PROPOSALS" not in get_cfg():
        pytest.skip("person proposals (issue #15, mm-data) are not in this checkout")
    root = tmp_path / "data"
    make_synthetic(["--out", str(root), "--videos", "4", "--seconds", "3", "--size", "64", "96", "--workers", "1",
                    "--val-fraction", "0.5"])
    opts = ["MODEL.META_ARCHITECTURE", "FastRCNN", "MODEL.BACKBONE.CONV_BODY", "PySlowonly",
            "MODEL.STM.ACTION_CLASSES", "9", "MODEL.ROI_HEAD.NUM_CLASSES", "10", "RESNET.WIDTH_PER_GROUP", "4",
            "RESNET.SPATIAL_STRIDES", "[[1], [2], [2], [1]]", "DATA.PATH_TO_DATA_DIR", str(root),
            "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "4", "DATA.TRAIN_MIN_SCALES", "[64]",
            "DATA.TEST_MIN_SCALES", "[64]", "TEST.VIDEOS_PER_BATCH", "2", "SOLVER.VIDEOS_PER_BATCH", "2",
            "DATALOADER.NUM_WORKERS", "0",
            "PROPOSALS.TRAIN_FILE", "ava_dense_proposals_train.FAIR.recall_93.9.pkl",
            "PROPOSALS.TEST_FILE", "ava_dense_proposals_val.FAIR.recall_93.9.pkl"]
    torch.manual_seed(0)
    torch.save({"model": build_detector(load_config("", opts)).state_dict()}, tmp_path / "baseline.pth")
    for split in ("train", "val"):
        lfb_infer(["", "--split", split, "--out", str(tmp_path / "banks"), "--weights",
                   str(tmp_path / "baseline.pth"), *opts])
    banks = {s: load_bank(tmp_path / "banks" / f"lfb_{s}.npz") for s in ("train", "val")}
    assert all(v.startswith("syn_train") for v in banks["train"].videos)
    assert all(v.startswith("syn_val") for v in banks["val"].videos)
    assert banks["train"].dtype == torch.float16 and banks["train"].channels == 128

    cfg = load_config("", opts + ["MODEL.ROI_HEAD.SHARED_HEAD", "FBONonLocal", "MODEL.LFB.PREFIX_PATH",
                                  str(tmp_path / "banks"), "MODEL.LFB.CHANNELS", "128",
                                  "MODEL.LFB.LATENT_CHANNELS", "16", "MODEL.LFB.WINDOW_SIZE", "6"])
    model = build_detector(cfg).train()
    batch = next(iter(build_data_loader(cfg, is_train=True, max_iter=1)))
    assert "proposals" in batch
    keys = [f"{m['video_id']},{int(m['timestamp']):04d}" for m in batch["metadata"]]
    losses = model(*detector_inputs(batch), batch["boxes"], batch["labels"], proposals=batch["proposals"],
                   img_keys=keys)
    sum(losses.values()).backward()
    assert model.roi_head.shared_head.fbo.st_feat_conv.weight.grad.abs().sum() > 0
    records = predict(model, build_data_loader(cfg, is_train=False), torch.device("cpu"), progress=False)
    assert len(records) == 6 and all(r["scores"].shape[1] == 9 for r in records.values())
