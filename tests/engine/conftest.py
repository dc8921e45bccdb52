"""A micro synthetic dataset and model for end-to-end engine tests (seconds per run on 2 CPU cores)."""

import csv
import os
import socket
import subprocess
import sys

import pytest

from stmixer.data.synthetic import main as make_synthetic

TINY_CONFIG = "config_files/synthetic/tiny-slowonly.yaml"


def micro_opts(data_dir, output_dir):
    """Overrides that shrink the tiny config further: a model of a few hundred k parameters."""
    return [
        "DATA.PATH_TO_DATA_DIR", str(data_dir), "OUTPUT_DIR", str(output_dir),
        "DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]",
        "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "8", "DATALOADER.NUM_WORKERS", "1",
        "RESNET.WIDTH_PER_GROUP", "4", "MODEL.BACKBONE.FROZEN_BN", "True",
        "MODEL.STM.HIDDEN_DIM", "32", "MODEL.STM.NUM_QUERIES", "8", "MODEL.STM.NUM_STAGES", "2",
        "MODEL.STM.NUM_HEADS", "2", "MODEL.STM.DIM_FEEDFORWARD", "64", "MODEL.STM.SPATIAL_POINTS", "4",
        "MODEL.STM.TEMPORAL_POINTS", "4",
        "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_EPOCH", "1",
        "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "4", "SOLVER.LOG_PERIOD", "1",
        "TEST.VIDEOS_PER_BATCH", "4",
    ]


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory):
    """A 12-video synthetic dataset (64 x 96 frames) whose training keyframes all hold exactly 2 boxes.

    Equal box counts make the official per-process loss normalization (CE and BCE are
    means over each process's own queries) agree with a single process over the whole batch.
    """
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(["--out", str(root), "--videos", "12", "--seconds", "2", "--size", "64", "96",
                    "--workers", "1", "--val-fraction", "0.34"])
    train_csv = root / "annotations_v2.2" / "ava_train_v2.2.csv"
    rows = list(csv.reader(train_csv.open()))
    kept, persons = [], {}
    for row in rows:
        key = (row[0], row[1])
        people = persons.setdefault(key, [])
        if row[7] not in people:
            if len(people) == 2:
                continue
            people.append(row[7])
        kept.append(row)
    assert all(len(p) == 2 for p in persons.values())
    with train_csv.open("w", newline="") as f:
        csv.writer(f).writerows(kept)
    return root


def free_port():
    """A TCP port free on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(args, cwd, check=True):
    """Run ``python args...`` in ``cwd`` with one thread per process and no inherited launcher variables.

    No time limit: on a busy machine a run may take many times its idle time; a limit in
    seconds would fail the test for the machine's load, not for a defect.
    """
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def isolated_logger():
    """Entry points run in-process re-configure the package logger; give back its handlers afterwards."""
    import logging

    from stmixer.utils.logging import LOGGER_NAME

    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if handler not in saved[0]:
            handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
