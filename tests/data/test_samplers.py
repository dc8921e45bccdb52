import itertools

import numpy as np
import pytest
from torch.utils.data import BatchSampler

from stmixer.data.samplers import SHARED_SCALE_TAG, InferenceSampler, TrainingBatchSampler, sample_generators
from stmixer.data.transforms import choose_short_side


def stream(n, batch, **kwargs):
    return list(TrainingBatchSampler(n, batch, **kwargs))


def test_training_stream_is_deterministic_and_seeded():
    a = stream(10, 3, seed=5, num_iters=12)
    assert a == stream(10, 3, seed=5, num_iters=12)
    assert a != stream(10, 3, seed=6, num_iters=12)
    assert len(a) == 12 and all(len(b) == 3 for b in a)


def test_training_passes_drop_the_leftover_and_cover_each_index_once():
    batches = stream(10, 3, seed=0, num_iters=6)  # 3 batches per pass of 10 (1 left over)
    for first in (0, 3):
        indices = [i for b in batches[first:first + 3] for i, _ in b]
        assert len(set(indices)) == 9
    assert [i for b in batches[:3] for i, _ in b] != [i for b in batches[3:] for i, _ in b]


@pytest.mark.parametrize("start", [0, 1, 3, 4, 7])
def test_resume_yields_the_same_batches(start):
    full = stream(10, 3, seed=2, world_size=2, rank=1, num_iters=9)
    resumed = stream(10, 3, seed=2, world_size=2, rank=1, start_iter=start, num_iters=9)
    assert resumed == full[start:]
    assert len(TrainingBatchSampler(10, 3, seed=2, world_size=2, rank=1, start_iter=start, num_iters=9)) == 9 - start


def test_distributed_shards_partition_each_pass_and_augmentation_keys_are_unique():
    n, world = 11, 3  # 12 positions per pass: one index repeated
    per_rank = [stream(n, 2, seed=1, rank=r, world_size=world, num_iters=2) for r in range(world)]
    items = [item for batches in per_rank for batch in batches for item in batch]
    indices = [i for i, _ in items]
    assert sorted(set(indices)) == list(range(n)) and len(indices) == 12
    keys = [key for _, key in items]
    assert len(set(keys)) == len(keys) and all(key[:2] == (1, 0) for key in keys)


def test_endless_stream_and_errors():
    sampler = TrainingBatchSampler(4, 2, seed=0)
    assert len(list(itertools.islice(iter(sampler), 25))) == 25
    with pytest.raises(TypeError):
        len(sampler)
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainingBatchSampler(5, 3, world_size=4)
    with pytest.raises(ValueError, match="rank 2"):
        TrainingBatchSampler(5, 2, rank=2, world_size=2)


def test_grouped_batches_hold_one_group_and_resume():
    groups = np.array([0, 1] * 10)
    full = stream(20, 3, seed=4, group_ids=groups, num_iters=10)
    assert all(len({groups[i] for i, _ in b}) == 1 for b in full)
    assert stream(20, 3, seed=4, group_ids=groups, start_iter=5, num_iters=10) == full[5:]


def test_inference_sampler_single_process_in_order():
    assert list(InferenceSampler(7)) == list(range(7))
    batches = list(BatchSampler(InferenceSampler(7), 3, drop_last=False))
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_inference_sampler_shards_with_padding():
    shards = [list(InferenceSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]
    assert sorted(set(sum(shards, []))) == list(range(7))


def test_shared_scale_draws_give_slot_j_of_batch_k_one_entropy_on_every_process():
    plain = [stream(10, 2, seed=3, rank=r, world_size=2, num_iters=6) for r in range(2)]
    shared = [stream(10, 2, seed=3, rank=r, world_size=2, num_iters=6, shared_scale_draws=True) for r in range(2)]
    for r in range(2):  # the same samples and augmentation entropy, plus the shared part
        assert [[item[:2] for item in batch] for batch in shared[r]] == plain[r]
        assert all(len(item) == 2 for batch in plain[r] for item in batch)
    for k in range(6):
        for j in range(2):
            assert shared[0][k][j][2] == shared[1][k][j][2] == (3, k, j, SHARED_SCALE_TAG)
    resumed = stream(10, 2, seed=3, rank=1, world_size=2, start_iter=4, num_iters=6, shared_scale_draws=True)
    assert resumed == shared[1][4:]


def test_sample_generators_draw_the_short_side_from_the_shared_entropy():
    index, rng, scale_rng = sample_generators((7, (1, 0, 5)))
    assert index == 7 and scale_rng is rng
    assert rng.integers(2**62) == np.random.default_rng((1, 0, 5)).integers(2**62)
    index, rng, scale_rng = sample_generators((7, (1, 0, 5), (1, 4, 0, SHARED_SCALE_TAG)))
    assert scale_rng is not rng and rng.integers(2**62) == np.random.default_rng((1, 0, 5)).integers(2**62)
    assert scale_rng.integers(2**62) == np.random.default_rng((1, 4, 0, SHARED_SCALE_TAG)).integers(2**62)
    index, rng, scale_rng = sample_generators(3)
    assert index == 3 and scale_rng is rng
    # each slot's draw keeps the official distribution: a uniform choice of the listed short sides
    sides = [choose_short_side([256, 320], "choice", sample_generators((0, (0,), (9, k, j, SHARED_SCALE_TAG)))[2])
             for k in range(1000) for j in range(2)]
    assert 0.46 < sides.count(256) / len(sides) < 0.54
    assert [sides[2 * k] == sides[2 * k + 1] for k in range(1000)].count(True) < 560  # the two slots independent
