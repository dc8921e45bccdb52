"""benchmarks/step_phases.py on 1 and 2 CPU processes (gloo): every phase is printed (not speed)."""

import os
import subprocess
import sys
import pytest

from .conftest import REPO_ROOT
TINY = ["DATA.TRAIN_MIN_SCALES", "[64]", "DATA.NUM_FRAMES", "4", "RESNET.WIDTH_PER_GROUP", "4",
        "MODEL.STM.HIDDEN_DIM", "32", "MODEL.STM.NUM_QUERIES", "8", "MODEL.STM.NUM_STAGES", "2",
        "MODEL.STM.NUM_HEADS", "2", "MODEL.STM.DIM_FEEDFORWARD", "64", "SOLVER.VIDEOS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "1", "MODEL.DEVICE", "cpu"]


@pytest.mark.parametrize("processes", [1, 2])
def test_every_phase_is_printed(small_dataset, processes):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    script = ["benchmarks/step_phases.py", "config_files/synthetic/tiny-slowonly.yaml"]
    result = subprocess.run([sys.executable, *launcher, *script, "DATA.PATH_TO_DATA_DIR", str(small_dataset), *TINY],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    out = result.stdout
    assert f"{processes} process(es), AMP off, 2 clips per step:" in out
    phases = ["data", "forward", "backward", "step", "total"] + (["backward_no_sync"] if processes == 2 else [])
    for phase in phases:
        line = next(line for line in out.splitlines() if line.split()[:1] == [phase])
        assert float(line.split()[1]) >= 0 and "(ranks " in line
    assert ("gradient all-reduce not hidden by backward" in out) == (processes == 2)
