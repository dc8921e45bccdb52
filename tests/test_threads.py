"""The intra-op thread choice of the entry points (stmixer.utils.threads)."""

import logging

import pytest
import torch

from stmixer.config import ConfigError
from stmixer.utils.threads import choose_threads, processes_on_node, set_threads


@pytest.mark.parametrize("workers, processes, cores, expected", [
    (1, 1, 2, 1),     # the quickstart on 2 cores: 1 thread + 1 loader worker
    (0, 1, 2, 2),     # test_net/demo without workers: every core
    (4, 1, 2, 1),     # more workers than cores: still one thread
    (4, 2, 16, 4),    # 2 processes: 8 cores each, 4 of them for workers
    (0, 8, 4, 1),     # more processes than cores
    (2, 1, 1, 1),
])
def test_automatic_choice_keeps_threads_plus_workers_within_the_share_of_cores(workers, processes, cores, expected):
    threads, source = choose_threads(workers, processes, cores, requested=0, environ={})
    assert (threads, source) == (expected, "automatic")
    assert threads >= 1
    if expected > 1:
        assert processes * (threads + workers) <= cores


def test_config_key_wins_over_the_environment_and_the_environment_over_the_automatic_choice():
    assert choose_threads(1, 1, 2, requested=3, environ={"OMP_NUM_THREADS": "5"}) == (3, "NUM_THREADS")
    assert choose_threads(1, 1, 2, requested=0, environ={"OMP_NUM_THREADS": "5"}) == (5, "OMP_NUM_THREADS")
    for junk in ("", "0", "-2", "four"):
        assert choose_threads(1, 1, 8, requested=0, environ={"OMP_NUM_THREADS": junk}) == (7, "automatic")


def test_negative_num_threads_is_a_config_error():
    with pytest.raises(ConfigError, match="NUM_THREADS = -1"):
        choose_threads(0, 1, 2, requested=-1, environ={})


def test_processes_on_node_reads_local_world_size(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert processes_on_node(world_size=8) == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert processes_on_node(world_size=8) == 8
    assert processes_on_node() == 1


def test_set_threads_applies_and_logs_the_choice(caplog):
    before = torch.get_num_threads()
    try:
        logger = logging.getLogger("test_threads")
        with caplog.at_level(logging.INFO, logger="test_threads"):
            assert set_threads(num_workers=1, requested=2, logger=logger) == 2
        assert torch.get_num_threads() == 2
        (message,) = [r.getMessage() for r in caplog.records if "intra-op" in r.getMessage()]
        assert message.startswith("Using 2 intra-op threads (from the NUM_THREADS config key;")
        assert "1 loader workers" in message and "set NUM_THREADS or OMP_NUM_THREADS to change" in message
    finally:
        torch.set_num_threads(before)


def test_entry_point_setup_sets_and_logs_the_threads(tmp_path, repo_root):
    import logging

    from stmixer.engine.launch import run_entry_point

    before = torch.get_num_threads()
    seen = []
    try:
        run_entry_point("test", lambda args, cfg, dist_info: seen.append(torch.get_num_threads()),
                        ["--config-file", str(repo_root / "config_files/synthetic/tiny-slowonly.yaml"),
                         "OUTPUT_DIR", str(tmp_path), "NUM_THREADS", "3"])
        assert seen == [3]
        logger = logging.getLogger("stmixer")
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
        log = "".join(p.read_text() for p in tmp_path.glob("log*"))
        assert "Using 3 intra-op threads (from the NUM_THREADS config key;" in log
    finally:
        torch.set_num_threads(before)
