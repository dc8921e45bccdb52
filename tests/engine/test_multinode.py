"""Multi-node launch recipes on one machine: two "nodes" of one process each on the loopback address (gloo).

``torchrun --nnodes 2 --node_rank K --rdzv-endpoint 127.0.0.1:PORT`` and ``srun`` (its SLURM_*
variables, the rendezvous host taken from the node list) both train the micro model to the
weights of one process with the whole batch; the SLURM run also accumulates 2 micro-batches.
No time limits: a failing process ends the other (exit codes decide).
"""

import json
import os
import subprocess
import sys
import threading

import pytest

from stmixer.engine.launch import expand_nodelist, slurm_environment
from stmixer.errors import UserError

from .conftest import TINY_CONFIG, free_port, micro_opts
from .test_end_to_end import _train, _weights

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def test_expand_nodelist():
    assert expand_nodelist("node[01-03],gpu7") == ["node01", "node02", "node03", "gpu7"]
    assert expand_nodelist("gpu7") == ["gpu7"]
    assert expand_nodelist("n[008-010,3]-ib") == ["n008-ib", "n009-ib", "n010-ib", "n3-ib"]
    assert expand_nodelist("r[1-2]n[3-4]") == ["r1n3", "r1n4", "r2n3", "r2n4"]
    for bad in ("node[01-03", "node[a-b]", "a,,b"):
        with pytest.raises(UserError, match="SLURM_JOB_NODELIST"):
            expand_nodelist(bad)


SRUN = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_JOB_ID": "4711"}


def test_slurm_environment():
    assert slurm_environment(SRUN) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node01",
                                       "MASTER_PORT": str(20000 + 4711)}
    own = slurm_environment(dict(SRUN, MASTER_ADDR="head", MASTER_PORT="1234", SLURM_STEP_NUM_TASKS="4"))
    assert (own["MASTER_ADDR"], own["MASTER_PORT"], own["WORLD_SIZE"]) == ("head", "1234", "4")
    assert slurm_environment(dict(SRUN, RANK="0", WORLD_SIZE="2")) == {}  # torchrun inside a SLURM job wins
    batch_script = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    assert slurm_environment(batch_script) == {}  # plain python in an sbatch script: not an srun task
    assert slurm_environment(dict(SRUN, SLURM_NTASKS="1")) == {}
    with pytest.raises(UserError, match="MASTER_ADDR"):
        slurm_environment({k: v for k, v in SRUN.items() if k != "SLURM_JOB_NODELIST"})


def run_two(commands, cwd, envs):
    """Start both processes; wait until both end, or end the other when one fails. Returns the results."""
    procs = [subprocess.Popen([sys.executable, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd, env in zip(commands, envs)]
    outputs, done = [None, None], threading.Condition()

    def reap(i):
        outputs[i] = procs[i].communicate()[0]
        with done:
            done.notify_all()

    threads = [threading.Thread(target=reap, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    with done:
        done.wait_for(lambda: all(p.returncode is not None for p in procs)
                      or any(p.returncode not in (None, 0) for p in procs))
    for p in procs:
        if p.returncode is None:
            p.kill()
    for t in threads:
        t.join()
    return [(p.returncode, out) for p, out in zip(procs, outputs)]


def base_env(repo_root):
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def whole_batch_run(repo_root, micro_dataset, tmp_path_factory):
    """One process, batch 4, 6 iterations: the weights both launches must reach."""
    out = tmp_path_factory.mktemp("whole")
    _train(repo_root, micro_dataset, out)
    return out


def train_args(data, out, extra=()):
    return ["train_net.py", "--config-file", TINY_CONFIG, "--skip-val", "--skip-final-test",
            *micro_opts(data, out), *extra]


def check_run(out, reference, results):
    for code, output in results:
        assert code == 0, output[-5000:]
    log = (out / "log.txt").read_text()
    assert "Process group ready: world size 2, backend gloo" in log
    assert (out / "log.txt.rank1").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == sorted(p.name for p in reference.glob("*.pth"))
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]  # iterations are optimizer steps
    expected = [json.loads(line)["total_loss"] for line in (reference / "metrics.json").read_text().splitlines()]
    assert [r["total_loss"] for r in records] == pytest.approx(expected, rel=1e-5)
    one, two = _weights(reference / "model_final.pth"), _weights(out / "model_final.pth")
    for name in one:  # the tolerance of test_end_to_end's DDP test (AdamW steps of lr on rounding-noise gradients)
        a, b = one[name], two[name]
        if a.is_floating_point() and not name.endswith("in_proj_bias"):
            assert (a - b).abs().max() <= 1e-3 * a.abs().max() + 1e-7, name


def test_torchrun_two_nodes_on_loopback(repo_root, micro_dataset, whole_batch_run, tmp_path):
    port = free_port()
    commands = [["-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(k), "--nproc_per_node", "1",
                 "--rdzv-endpoint", f"127.0.0.1:{port}", *train_args(micro_dataset, tmp_path)] for k in range(2)]
    results = run_two(commands, repo_root, [base_env(repo_root)] * 2)
    check_run(tmp_path, whole_batch_run, results)


def test_srun_two_nodes_with_accumulation(repo_root, micro_dataset, whole_batch_run, tmp_path):
    """Two srun tasks on two "nodes" (rank 0's host is the node list's first, localhost), 2 micro-batches of
    one clip each per process and step: the weights of one process with the whole batch of 4."""
    port = str(free_port())
    envs = []
    for k in range(2):
        env = base_env(repo_root)
        env.update(SLURM_PROCID=str(k), SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_NODEID=str(k),
                   SLURM_JOB_NODELIST="localhost,node[2-3]", SLURM_JOB_ID="99", MASTER_PORT=port)
        envs.append(env)
    args = train_args(micro_dataset, tmp_path, ["SOLVER.GRAD_ACCUM_STEPS", "2"])
    results = run_two([args, args], repo_root, envs)
    check_run(tmp_path, whole_batch_run, results)
    assert "SOLVER.GRAD_ACCUM_STEPS 2: micro-batches of 1 clips per process" in (tmp_path / "log.txt").read_text()
