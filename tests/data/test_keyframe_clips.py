import numpy as np
import pytest
import torch

from stmixer.data.ava import clip_frame_indices
from stmixer.data.build import build_dataset, build_transform, num_pathways
from stmixer.data.collate import BatchCollator
from stmixer.data.formats import second_to_frame_index
from stmixer.data.keyframe_clips import ClipTooShortError, KeyframeClips, keyframe_center
from stmixer.data.transforms import pathway_frame_indices
from stmixer.data.video import VideoSource, resample


def _clips(cfg, keyframe_rate=1.0):
    return KeyframeClips(
        build_transform(cfg, is_train=False),
        cfg.DATA.NUM_FRAMES,
        cfg.DATA.SAMPLING_RATE,
        pathway_frame_indices(cfg.DATA.NUM_FRAMES, num_pathways(cfg), cfg.SLOWFAST.ALPHA),
        cfg.DATA.TARGET_FPS,
        keyframe_rate,
    )


@pytest.mark.parametrize("opts", [(), ("MODEL.BACKBONE.PATHWAYS", 2, "DATA.INPUT_CHANNEL_NUM", [3, 3])],
                         ids=["slowonly", "slowfast"])
def test_clips_of_a_frame_stream_equal_the_test_dataset_clips(tiny_dataset, make_cfg, opts):
    """Frame 0 of a dataset video is second 900, so keyframe k of its stream is AVA second 900 + k."""
    root, _ = tiny_dataset
    cfg = make_cfg(root, opts)
    dataset = build_dataset(cfg, is_train=False)
    index = 0
    info = dataset.keyframe_info(index)
    source = VideoSource(str(root / "frames" / info["video_id"]), folder_fps=30)
    samples = {s["index"]: s for s in _clips(cfg)(resample(source.frames(), 30))}
    k = info["timestamp"] - 900
    ours, theirs = samples[k], dataset[index]
    assert ours["metadata"]["frame"] == second_to_frame_index(info["timestamp"])
    assert torch.equal(ours["whwh"], theirs["whwh"])
    assert len(ours["videos"]) == len(theirs["videos"]) == num_pathways(cfg)
    for mine, reference in zip(ours["videos"], theirs["videos"]):
        assert torch.equal(mine.to_tensor(), reference)


def test_keyframes_cover_the_video_and_clamp_at_both_ends(make_cfg):
    cfg = make_cfg("unused", ("DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 8, "DATA.TEST_MIN_SCALES", [8]))
    length = 100  # 3.3 s at 30 fps: keyframes at 0, 1, 2, 3 s (frames 0, 30, 60, 90)
    frames = [np.full((8, 12, 3), i, dtype=np.uint8) for i in range(length)]
    samples = list(_clips(cfg)(enumerate(frames)))
    assert [s["index"] for s in samples] == [0, 1, 2, 3]
    assert [s["metadata"]["time"] for s in samples] == [0.0, 1.0, 2.0, 3.0]
    assert [s["metadata"]["frame"] for s in samples] == [0, 30, 60, 90]
    mean, std = cfg.DATA.MEAN[0], cfg.DATA.STD[0]
    for s in samples:
        clip = s["videos"][0].to_tensor()
        shown = torch.round((clip[0, :, 0, 0] * std + mean) * 255).int().tolist()
        assert shown == clip_frame_indices(s["metadata"]["frame"], 4, 8, length)
    assert shown == [74, 82, 90, 98] and samples[0]["videos"][0].to_tensor().shape[1] == 4
    first = torch.round((samples[0]["videos"][0].to_tensor()[0, :, 0, 0] * std + mean) * 255).int().tolist()
    assert first == [0, 0, 0, 8]
    batch = BatchCollator(0)(samples)
    assert batch["videos"][0].shape == (4, 3, 4, 8, 12)


def test_half_second_keyframes_and_window_memory(make_cfg):
    cfg = make_cfg("unused", ("DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 2, "DATA.TEST_MIN_SCALES", [8]))

    def stream():
        for i in range(300):
            yield i, np.full((16, 24, 3), i % 256, dtype=np.uint8)

    clips = _clips(cfg, keyframe_rate=2)
    window_sizes = []
    original_sample = clips._sample

    def watching_sample(k, indices, window, orig_size):
        window_sizes.append(len(window))  # frames held when keyframe k's clip is taken
        return original_sample(k, indices, window, orig_size)

    clips._sample = watching_sample
    samples = list(clips(stream()))
    assert [s["metadata"]["frame"] for s in samples] == list(range(0, 300, 15))
    # At most one clip span (8 frames) is held, never the stream, whatever the keyframe spacing.
    assert max(window_sizes) <= 8
    assert samples[0]["videos"][0].shape[-2:] == (8, 12)


def test_too_short_stream_is_an_error_naming_the_input(make_cfg):
    cfg = make_cfg("unused", ("DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 8))
    clips = KeyframeClips(build_transform(cfg, is_train=False), 4, 8, [[0, 1, 2, 3]], 30, 1, source_name="short.mp4")
    frames = [np.zeros((8, 8, 3), np.uint8)] * 31
    with pytest.raises(ClipTooShortError, match=r"short.mp4 has 31 frames at 30 fps .*spans 32 frames"):
        list(clips(enumerate(frames)))
    assert len(list(clips(enumerate(frames + frames[:1])))) == 2


def test_keyframe_center_rounds_to_the_nearest_frame():
    assert [keyframe_center(t, 30) for t in (0.0, 0.5, 1 / 3, 0.49 / 30, 0.51 / 30)] == [0, 15, 10, 0, 1]


@pytest.mark.parametrize("opts", [(), ("DATA.TEST_MIN_SCALES", [42]),
                                  ("DATA.TEST_MIN_SCALES", [42], "DATA.BOX_TRANSFORM", "mmaction2"),
                                  ("AVA.TEST_FORCE_FLIP", True)],
                         ids=["native", "scaled", "scaled-mmaction2", "flipped"])
def test_proposals_of_a_frame_stream_equal_the_test_dataset_proposals(tiny_dataset, make_cfg, opts):
    """demo.py --proposals: the stream's keyframes get the proposals a test sample gets, to the bit (same
    selection, same transform call); frame 0 of a dataset video is second 900."""
    from stmixer.data.proposals import VideoProposals, read_proposals
    from stmixer.data.synthetic import PROPOSAL_FILE

    root, _ = tiny_dataset
    name = PROPOSAL_FILE.format(split="val", ext="pkl")
    cfg = make_cfg(root, ("PROPOSALS.TEST_FILE", name, "PROPOSALS.DET_SCORE_THR", 0.7, *opts))
    dataset = build_dataset(cfg, is_train=False)
    path = root / cfg.AVA.ANNOTATION_DIR / name
    seen = 0
    for index in range(len(dataset)):
        info = dataset.keyframe_info(index)
        lookup = VideoProposals(read_proposals(str(path)), info["video_id"], 0.7, cfg.PROPOSALS.NUM_MAX, str(path))
        clips = KeyframeClips(build_transform(cfg, is_train=False), cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE,
                              pathway_frame_indices(cfg.DATA.NUM_FRAMES, 1, cfg.SLOWFAST.ALPHA), 30, 1.0,
                              proposals=lambda second: lookup(second + 900), video_id=info["video_id"])
        source = VideoSource(str(root / "frames" / info["video_id"]), folder_fps=30)
        ours = {s["index"]: s for s in clips(resample(source.frames(), 30))}[info["timestamp"] - 900]
        theirs = dataset[index]
        assert len(theirs["proposals"]) >= 1
        assert torch.equal(ours["proposals"], theirs["proposals"])
        assert torch.equal(ours["proposal_scores"], theirs["proposal_scores"])
        assert torch.equal(ours["whwh"], theirs["whwh"])
        assert torch.equal(ours["videos"][0].to_tensor(), theirs["videos"][0])
        assert ours["metadata"]["video_id"] == info["video_id"]
        seen += 1
    assert seen == len(dataset) >= 1


def test_proposals_need_keyframes_on_whole_seconds(make_cfg):
    from stmixer.errors import UserError

    cfg = make_cfg("unused")
    with pytest.raises(UserError, match="per whole second"):
        KeyframeClips(build_transform(cfg, is_train=False), 4, 8, [[0, 1, 2, 3]], 30, 2.0,
                      proposals=lambda second: None)
