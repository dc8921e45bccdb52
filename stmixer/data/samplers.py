"""Samplers: a resumable, distributed, seeded batch stream for training and a sharding sampler for testing."""

import math

import numpy as np
import torch
from torch.utils.data import Sampler


def _torch_generator(*entropy):
    """A torch.Generator seeded from the integers ``entropy`` (mixed by NumPy's SeedSequence)."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


# Last entropy word of a shared short-side draw, so that its (seed, iteration, slot) never equals a sample's own
# (seed, pass, position) entropy.
SHARED_SCALE_TAG = 0x5CA1ED


def sample_generators(key):
    """(dataset index, rng, scale_rng) of a dataset key from a sampler.

    ``key`` is a dataset index, ``(index, entropy)`` or ``(index, entropy, scale_entropy)``
    (TrainingBatchSampler with ``shared_scale_draws``). ``rng`` (a NumPy Generator) makes every random
    choice of the sample; ``scale_rng`` draws its training short side: ``rng`` itself unless the key
    carries ``scale_entropy``. Without entropy the seed comes from NumPy's global generator.
    """
    if not isinstance(key, tuple):
        key = (key,)
    index, entropy, scale_entropy = (tuple(key) + (None, None))[:3]
    if entropy is None:
        entropy = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    rng = np.random.default_rng(entropy)
    return index, rng, rng if scale_entropy is None else np.random.default_rng(scale_entropy)


class TrainingBatchSampler(Sampler):
    """The per-process batch stream of iteration-based training.

    Batch k (k = 0, 1, 2, ...: the global iteration) is a pure function of
    ``(seed, k, rank, world_size, dataset_size, batch_size, group_ids)``, so a run resumed
    with ``start_iter=k`` sees exactly the batches (and augmentations) that an uninterrupted
    run sees from iteration k on, whatever the number of loader workers.

    The stream runs in passes over the dataset. Pass p shuffles all indices with a
    generator seeded by (seed, p), repeats its first indices until the length is a
    multiple of ``world_size``, and gives rank r the positions r, r + W, r + 2W, ...
    Consecutive runs of ``batch_size`` of them form the rank's batches; with ``group_ids``
    each group fills its own batch (clips of one orientation together). Leftovers at the end
    of a pass are dropped (the official ``drop_last``).

    Every item is ``(dataset_index, (seed, p, position))``: the second part, unique per
    sample of the run, seeds that sample's random augmentation. With ``shared_scale_draws``
    a third part ``(seed, k, j, SHARED_SCALE_TAG)`` seeds the short-side draw of the j-th clip of
    batch k: the same on every process, so every process's batch k holds the same short sides
    and (for frames of one size) the same padded shape; each clip's draw keeps its
    distribution, and the clips of one process's batch stay independent of each other.

    Args:
        dataset_size: number of samples N.
        batch_size: samples per batch of this process.
        seed: non-negative run seed (the same on every process).
        rank, world_size: this process and the number of processes.
        start_iter: first batch to yield.
        num_iters: stop before batch ``num_iters`` (None: never stop).
        group_ids: optional int ``[N]`` group of every sample.
        shared_scale_draws: add the shared short-side entropy to every item
            (``DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES``).
    """

    def __init__(self, dataset_size, batch_size, seed=0, rank=0, world_size=1, start_iter=0, num_iters=None,
                 group_ids=None, shared_scale_draws=False):
        if seed < 0:
            raise ValueError(f"the sampler seed must be >= 0, got {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if start_iter < 0 or (num_iters is not None and start_iter > num_iters):
            raise ValueError(f"start_iter {start_iter} must lie in 0..num_iters ({num_iters})")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_iter = int(start_iter)
        self.num_iters = None if num_iters is None else int(num_iters)
        self.shared_scale_draws = bool(shared_scale_draws)
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.int64)
        if self.group_ids is not None and len(self.group_ids) != self.dataset_size:
            raise ValueError(f"group_ids has {len(self.group_ids)} entries for {self.dataset_size} samples")
        per_rank = math.ceil(self.dataset_size / self.world_size) if self.dataset_size else 0
        if per_rank < self.batch_size:
            raise ValueError(
                f"the training set has {self.dataset_size} keyframes: {per_rank} per process over {self.world_size} "
                f"processes, fewer than one batch of {self.batch_size}"
            )

    def _rank_positions(self, pass_index):
        """(dataset indices, global positions) of this rank's share of pass ``pass_index``."""
        order = torch.randperm(self.dataset_size, generator=_torch_generator(self.seed, pass_index)).numpy()
        total = math.ceil(self.dataset_size / self.world_size) * self.world_size
        order = np.resize(order, total)  # repeats the first entries to fill up
        positions = np.arange(self.rank, total, self.world_size)
        return order[positions], positions

    def pass_batches(self, pass_index):
        """The batches of this rank in pass ``pass_index``: lists of ``(index, (seed, pass, position))``."""
        indices, positions = self._rank_positions(pass_index)
        items = [(int(i), (self.seed, int(pass_index), int(p))) for i, p in zip(indices, positions)]
        if self.group_ids is None:
            count = len(items) // self.batch_size
            return [items[b * self.batch_size:(b + 1) * self.batch_size] for b in range(count)]
        batches, buckets = [], {}
        for item in items:
            bucket = buckets.setdefault(int(self.group_ids[item[0]]), [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                batches.append(list(bucket))
                bucket.clear()
        if not batches:
            raise ValueError(f"no group has a full batch of {self.batch_size} samples in a pass over this process's share")
        return batches

    def _batches_in_pass(self, pass_index):
        if self.group_ids is None:
            return math.ceil(self.dataset_size / self.world_size) // self.batch_size
        return len(self.pass_batches(pass_index))

    def locate(self, iteration):
        """(pass, batch within the pass) of global batch ``iteration``."""
        pass_index = 0
        while True:
            count = self._batches_in_pass(pass_index)
            if self.group_ids is None:
                return iteration // count, iteration % count
            if iteration < count:
                return pass_index, iteration
            iteration -= count
            pass_index += 1

    def __iter__(self):
        iteration = self.start_iter
        pass_index, offset = self.locate(iteration)
        while self.num_iters is None or iteration < self.num_iters:
            for batch in self.pass_batches(pass_index)[offset:]:
                if self.num_iters is not None and iteration >= self.num_iters:
                    return
                if self.shared_scale_draws:
                    batch = [(index, entropy, (self.seed, iteration, j, SHARED_SCALE_TAG))
                             for j, (index, entropy) in enumerate(batch)]
                yield batch
                iteration += 1
            pass_index, offset = pass_index + 1, 0

    def __len__(self):
        if self.num_iters is None:
            raise TypeError("an endless TrainingBatchSampler has no length (num_iters is None)")
        return self.num_iters - self.start_iter


class InferenceSampler(Sampler):
    """Test-time sharding: the indices 0..N-1 in order, cut into ``world_size`` contiguous blocks.

    Every process gets ``ceil(N / world_size)`` indices; the last blocks are filled up by
    repeating indices from the start (the engine drops these duplicates by their index).
    With one process it visits every sample once, in order.
    """

    def __init__(self, dataset_size, rank=0, world_size=1):
        if dataset_size < 1:
            raise ValueError("the test set is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.dataset_size = int(dataset_size)
        self.per_rank = math.ceil(self.dataset_size / world_size)
        self.start = rank * self.per_rank

    def __iter__(self):
        for position in range(self.start, self.start + self.per_rank):
            yield position % self.dataset_size

    def __len__(self):
        return self.per_rank
