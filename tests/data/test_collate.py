import pytest
import torch

from stmixer.data.collate import BatchCollator, pad_clips, padded_size


def test_padded_size_rounds_up_to_the_divisibility():
    assert padded_size([(3, 5), (4, 2)], 4) == (4, 8)
    assert padded_size([(3, 5), (4, 2)], 0) == (4, 5)
    assert padded_size([(256, 455), (320, 569)], 32) == (320, 576)


def test_pad_clips_hand_computed():
    a = torch.arange(1, 1 + 1 * 2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    b = -torch.ones(1, 2, 4, 2)
    out = pad_clips([a, b], size_divisibility=4)
    assert out.shape == (2, 1, 2, 4, 8)
    assert torch.equal(out[0, :, :, :3, :5], a)
    assert torch.equal(out[1, :, :, :4, :2], b)
    # Everything else is zero: bottom and right padding only.
    mask = torch.zeros_like(out, dtype=torch.bool)
    mask[0, :, :, :3, :5] = True
    mask[1, :, :, :4, :2] = True
    assert torch.count_nonzero(out[~mask]) == 0


def test_pad_clips_refuses_mismatched_frames():
    with pytest.raises(ValueError, match="share channels and frames"):
        pad_clips([torch.zeros(3, 4, 2, 2), torch.zeros(3, 8, 2, 2)], 0)


def sample(index, size, num_boxes, pathways=1):
    h, w = size
    videos = [torch.full((3, 8 // (4 if p == 0 and pathways == 2 else 1), h, w), float(index)) for p in range(pathways)]
    return {
        "videos": videos,
        "whwh": torch.tensor([w, h, w, h], dtype=torch.float32),
        "boxes": torch.zeros(num_boxes, 4),
        "labels": torch.zeros(num_boxes, 9),
        "metadata": {"video_id": f"v{index}", "timestamp": 902 + index, "orig_size": (h, w)},
        "index": index,
    }


def test_batch_collator_contract_two_pathways():
    batch = BatchCollator(32)([sample(4, (20, 30), 2, pathways=2), sample(7, (33, 10), 1, pathways=2)])
    slow, fast = batch["videos"]
    assert slow.shape == (2, 3, 2, 64, 32) and fast.shape == (2, 3, 8, 64, 32)
    assert slow.dtype == fast.dtype == torch.float32
    assert slow[1, 0, 0, 32, 9].item() == 7 and slow[1, 0, 0, 33, 9].item() == 0
    assert batch["whwh"].tolist() == [[30, 20, 30, 20], [10, 33, 10, 33]]
    assert [b.shape for b in batch["boxes"]] == [(2, 4), (1, 4)]
    assert [label.shape for label in batch["labels"]] == [(2, 9), (1, 9)]
    assert batch["indices"].dtype == torch.int64 and batch["indices"].tolist() == [4, 7]
    assert batch["metadata"][1] == {"video_id": "v7", "timestamp": 909, "orig_size": (33, 10)}


def test_large_batches_are_padded_correctly():
    """Batches over 8 MB take the huge-page allocation path (where the system offers it)."""
    a = torch.rand(3, 4, 250, 300)
    b = torch.rand(3, 4, 256, 320)
    out = pad_clips([a, b], 32)
    assert out.shape == (2, 3, 4, 256, 320) and out.is_contiguous()
    assert torch.equal(out[0, :, :, :250, :300], a) and torch.equal(out[1], b)
    assert torch.count_nonzero(out[0, :, :, 250:]) == 0 and torch.count_nonzero(out[0, ..., 300:]) == 0
    moved = out * 1  # an ordinary tensor computed from it
    assert torch.equal(moved, out)
