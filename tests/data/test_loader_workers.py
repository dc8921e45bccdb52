"""Training batches do not depend on the number of loader workers; each worker runs one thread."""

import torch

from stmixer.data import build_data_loader
from stmixer.data.build import seed_worker


def test_one_and_two_workers_give_identical_batches(tiny_cfg):
    tiny_cfg.merge_from_list(["DATA.TRAIN_MIN_SCALES", [48, 64], "DATA.TRAIN_SCALE_SAMPLING", "range",
                              "DATALOADER.NUM_WORKERS", 1])
    one = list(build_data_loader(tiny_cfg, True, max_iter=4, seed=5))
    tiny_cfg.merge_from_list(["DATALOADER.NUM_WORKERS", 2])
    two = list(build_data_loader(tiny_cfg, True, max_iter=4, seed=5))
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert torch.equal(a["indices"], b["indices"])
        assert torch.equal(a["videos"][0], b["videos"][0])
        assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.get_num_threads()


def test_loader_workers_run_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loader = torch.utils.data.DataLoader(_Threads(), num_workers=1,
                                             worker_init_fn=lambda i: seed_worker(i, seed=0, rank=0))
        assert [int(t) for batch in loader for t in batch] == [1, 1]
    finally:
        torch.set_num_threads(before)
