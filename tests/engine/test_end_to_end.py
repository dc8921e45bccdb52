"""train_net.py / test_net.py end to end on CPU: DDP equivalence, crash-proof resume, sharded inference."""

import json
import signal

import pytest
import torch

from .conftest import TINY_CONFIG, free_port, micro_opts, run_python


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _train(repo_root, data, out, extra=(), launcher=()):
    return run_python([*launcher, "train_net.py", "--config-file", TINY_CONFIG, "--skip-val", "--skip-final-test",
                       *micro_opts(data, out), *extra], repo_root)


@pytest.fixture(scope="module")
def single_run(repo_root, micro_dataset, tmp_path_factory):
    """One uninterrupted single-process training run (6 iterations, batch 4)."""
    out = tmp_path_factory.mktemp("single")
    _train(repo_root, micro_dataset, out)
    return out


def test_single_process_run_writes_everything(single_run):
    files = {p.name for p in single_run.iterdir()}
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "model_final.pth"} <= files
    assert (single_run / "last_checkpoint").read_text().strip() == "model_final.pth"
    lines = [json.loads(line) for line in (single_run / "metrics.json").read_text().splitlines()]
    assert [entry["iteration"] for entry in lines] == [1, 2, 3, 4, 5, 6]
    assert all(k in lines[0] for k in ("loss_bce", "loss_ce", "loss_giou", "loss_bbox", "lr", "time", "data_time"))
    # the padded batch of every step: 64 x 96 frames at short side 64, already multiples of 32
    assert all((e["input_height"], e["input_width"]) == (64, 96) for e in lines)
    assert "Process group" not in (single_run / "log.txt").read_text()


def test_two_processes_match_one_process_with_twice_the_batch(repo_root, micro_dataset, single_run, tmp_path):
    """torchrun 2 x batch 2 (gloo) must reach the weights of 1 x batch 4 after the same iterations."""
    _train(repo_root, micro_dataset, tmp_path, launcher=("-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                         "--master_port", str(free_port())))
    log = (tmp_path / "log.txt").read_text()
    assert "Process group ready: world size 2, backend gloo" in log
    assert (tmp_path / "log.txt.rank1").exists()
    losses_one = [json.loads(line)["total_loss"] for line in (single_run / "metrics.json").read_text().splitlines()]
    losses_two = [json.loads(line)["total_loss"] for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    one, two = _weights(single_run / "model_final.pth"), _weights(tmp_path / "model_final.pth")
    assert one.keys() == two.keys()
    for name in one:
        a, b = one[name], two[name]
        if not a.is_floating_point():
            continue
        if name.endswith("in_proj_bias"):
            # The key bias gets a zero gradient (softmax ignores a shift shared by a row); AdamW turns
            # its rounding noise into steps of size lr, differently for any summation order. It never
            # changes an output, so compare the query and value biases only.
            d = a.numel() // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert (a - b).abs().max() <= 1e-3 * a.abs().max() + 1e-7, name


# train_net.py that SIGKILLs itself as soon as its iteration-2 checkpoint is written: the crash
# happens at the same point of the run however busy the machine is (no polling, no deadline).
_KILL_AFTER_CHECKPOINT_2 = """
import os, runpy, signal, sys
from stmixer.engine.checkpointer import Checkpointer
save = Checkpointer.save
def save_then_die(self, name, iteration, **extra):
    path = save(self, name, iteration, **extra)
    if name == "model_0000002":
        os.kill(os.getpid(), signal.SIGKILL)
    return path
Checkpointer.save = save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_run_resumes_to_the_same_weights(repo_root, micro_dataset, single_run, tmp_path):
    """SIGKILL right after the iteration-2 checkpoint, restart the same command: same final weights, bit for bit."""
    killed = run_python(["-c", _KILL_AFTER_CHECKPOINT_2, "train_net.py", "--config-file", TINY_CONFIG, "--skip-val",
                         "--skip-final-test", *micro_opts(micro_dataset, tmp_path)], repo_root, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "model_0000002.pth").exists()
    assert not (tmp_path / "model_final.pth").exists(), "the run finished before it could be killed"

    _train(repo_root, micro_dataset, tmp_path)
    log = (tmp_path / "log.txt").read_text()
    assert "Resumed from" in log
    straight, resumed = _weights(single_run / "model_final.pth"), _weights(tmp_path / "model_final.pth")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_inference_on_one_and_two_processes_agree(repo_root, micro_dataset, single_run, tmp_path):
    weight = str(single_run / "model_final.pth")
    one, two = tmp_path / "one", tmp_path / "two"
    run_python(["test_net.py", "--config-file", TINY_CONFIG, *micro_opts(micro_dataset, one), "MODEL.WEIGHT", weight],
               repo_root)
    run_python(["-m", "torch.distributed.launch", "--nproc_per_node=2", "--master_port", str(free_port()),
                "test_net.py", "--config-file", TINY_CONFIG, *micro_opts(micro_dataset, two), "MODEL.WEIGHT", weight],
               repo_root)
    folder = "inference/ava_v2.2"
    csv_one = (one / folder / "detections.csv").read_bytes()
    assert csv_one and csv_one == (two / folder / "detections.csv").read_bytes()
    metrics_one = json.loads((one / folder / "frame_map.json").read_text())
    metrics_two = json.loads((two / folder / "frame_map.json").read_text())
    assert metrics_one["mAP"] == metrics_two["mAP"]
    assert metrics_one["num_keyframes"] == metrics_two["num_keyframes"] > 0
    assert "Process group ready: world size 2" in (two / "log.txt").read_text()


def test_test_net_without_weights_says_what_to_do(repo_root, micro_dataset, tmp_path):
    result = run_python(["test_net.py", "--config-file", TINY_CONFIG, *micro_opts(micro_dataset, tmp_path)],
                        repo_root, check=False)
    assert result.returncode != 0
    assert "MODEL.WEIGHT" in result.stderr


def test_transfer_periodic_evaluation_and_tensorboard(repo_root, micro_dataset, single_run, tmp_path):
    """--transfer loads weights only and starts at iteration 0; evaluation runs every epoch; TensorBoard is written."""
    run_python(["train_net.py", "--config-file", TINY_CONFIG, "--transfer", "--use-tfboard", "--skip-final-test",
                *micro_opts(micro_dataset, tmp_path), "MODEL.WEIGHT", str(single_run / "model_final.pth"),
                "SOLVER.MAX_EPOCH", "2", "SOLVER.EVAL_PERIOD", "1", "SOLVER.EVAL_AFTER", "0"], repo_root)
    log = (tmp_path / "log.txt").read_text()
    assert "Weights from" in log and "Starting training from iteration 0 of 4" in log
    assert log.count("frame-mAP@0.5IoU") == 1  # after epoch 1 (iteration 2); the final test is skipped
    entries = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("eval/mAP" in entry for entry in entries)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "inference" / "ava_v2.2" / "frame_map.json").exists()
