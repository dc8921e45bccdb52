"""AVAEvaluator: process / evaluate, the written CSV, the CLI on it, gathering across processes."""

import json
import os
import queue
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from stmixer.evaluation import AVAEvaluator, evaluate_files
from stmixer.evaluation.ava import main
from stmixer.utils import distributed

from evaluation_cases import FULL


@pytest.fixture
def files(write_files):
    gt = [("v1", 902, (0.1, 0.1, 0.5, 0.5), a, 0) for a in (1, 3)]
    gt += [("v1", 903, (0.2, 0.2, 0.6, 0.6), 4, 1), ("v2", 902, FULL, 1, 0), ("v3", 1000, (0.0, 0.0, 0.5, 0.5), 3, 0)]
    return write_files(gt, [], ids=(1, 3, 4), excluded=[("v2", 902)])


def keyframes(seed=0):
    """Per-keyframe inputs (video, timestamp, boxes [n, 4], scores [n, 5]) with float32 values."""
    rng = np.random.default_rng(seed)
    frames = [("v1", 902, 3), ("v1", 903, 2), ("v2", 902, 1), ("v3", 1000, 0), ("v3", 1001, 2)]
    out = []
    for video, timestamp, n in frames:
        boxes = np.clip(np.tile([0.1, 0.1, 0.5, 0.5], (n, 1)) + rng.normal(0, 0.04, (n, 4)), 0, 1).astype(np.float32)
        out.append((video, timestamp, boxes, rng.random((n, 5)).astype(np.float32)))
    return out


def test_process_evaluate_writes_files_and_matches_the_cli(files, tmp_path, capsys):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"], output_folder=tmp_path / "out")
    frames = keyframes()
    evaluator.process(*[list(x) for x in zip(*frames[:2])])
    # tensors work too, and the batch order does not matter (sorted by video, timestamp)
    last = frames[2:][::-1]
    evaluator.process([f[0] for f in last], [torch.tensor(f[1]) for f in last],
                      [torch.from_numpy(f[2]) for f in last], [torch.from_numpy(f[3]) for f in last])
    metrics = evaluator.evaluate()
    assert set(metrics) >= {"mAP", "per_class", "protocol", "num_gt", "num_detections"}
    assert metrics["num_keyframes"] == 5 and metrics["num_gt"] == {"a1": 1, "a3": 2, "a4": 1}
    csv_text = (tmp_path / "out" / "detections.csv").read_text()
    assert csv_text.count("\n") == 8 * 5  # one row per box and class (A = 5)
    assert csv_text.startswith("v1,0902,")
    assert json.loads((tmp_path / "out" / "frame_map.json").read_text()) == metrics
    # The CLI on the written CSV gives exactly the same numbers.
    out = tmp_path / "cli.json"
    assert main(["--groundtruth", files["groundtruth"], "--detections", metrics["detections_csv"], "--labelmap",
                 files["labelmap"], "--exclusions", files["exclusions"], "--json", str(out)]) == 0
    cli = json.loads(out.read_text())
    assert cli["mAP"] == metrics["mAP"] and cli["per_class"] == metrics["per_class"]


@pytest.mark.parametrize("protocol", ["stmixer", "activitynet"])
def test_metric_is_computed_on_the_rounded_csv_values(files, tmp_path, protocol):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"], protocol, tmp_path)
    for seed in range(3):
        evaluator.reset()
        frames = keyframes(seed)
        evaluator.process(*[list(x) for x in zip(*frames)])
        metrics = evaluator.evaluate()
        result, _ = evaluate_files(files["groundtruth"], tmp_path / "detections.csv", files["labelmap"],
                                   files["exclusions"], protocol)
        assert metrics["mAP"] == result.mean_ap


def test_indices_order_the_rows(files, tmp_path):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"], output_folder=tmp_path)
    frames = keyframes()
    evaluator.process(*[list(x) for x in zip(*frames)], indices=[4, 3, 2, 1, 0])
    evaluator.evaluate()
    assert (tmp_path / "detections.csv").read_text().startswith("v3,1001,")


def test_same_keyframe_twice_is_an_error(files):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"])
    video, timestamp, boxes, scores = keyframes()[0]
    evaluator.process([video], [timestamp], [boxes], [scores])
    with pytest.raises(ValueError, match="keyframe v1,0902 was processed twice"):
        evaluator.process([video], [timestamp], [boxes], [scores])


def test_bad_process_arguments(files):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"])
    boxes, scores = np.zeros((1, 4), np.float32), np.zeros((1, 5), np.float32)
    with pytest.raises(ValueError, match="one of each per keyframe"):
        evaluator.process(["v1", "v1"], [902], [boxes], [scores])
    with pytest.raises(ValueError, match="not an integer number of seconds"):
        evaluator.process(["v1"], [902.5], [boxes], [scores])
    with pytest.raises(ValueError, match="1 boxes but 2 score rows"):
        evaluator.process(["v1"], [902], [boxes], [np.zeros((2, 5))])
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a float \[n, 4\] array, got shape \(4,\)"):
        evaluator.process(["v1"], [902], [np.zeros(4)], [scores])
    evaluator.process(["v1"], [902], [torch.zeros(0, 4)], [torch.zeros(0)])  # a keyframe without detections


def test_gathers_across_processes_onto_rank_0(files, tmp_path, monkeypatch):
    frames = keyframes()
    single = AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"])
    single.process(*[list(x) for x in zip(*frames)])
    expected = single.evaluate()

    ranks = [AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"], output_folder=tmp_path / str(r))
             for r in range(2)]
    for r, evaluator in enumerate(ranks):  # a sampler's interleaved shards
        evaluator.process(*[list(x) for x in zip(*frames[r::2])])
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [e._records for e in ranks])
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    assert ranks[1].evaluate() == {}
    assert not (tmp_path / "1").exists()
    monkeypatch.setattr(distributed, "get_rank", lambda: 0)
    gathered = ranks[0].evaluate()
    assert gathered["mAP"] == expected["mAP"] and gathered["per_class"] == expected["per_class"]
    ranks[1].process(*[list(x) for x in zip(*frames[:1])])  # the same keyframe on two ranks
    with pytest.raises(ValueError, match="processed by two processes"):
        ranks[0].evaluate()


def test_nothing_processed_gives_zero_with_a_warning(files, tmp_path):
    evaluator = AVAEvaluator(files["groundtruth"], files["labelmap"], output_folder=tmp_path)
    with pytest.warns(UserWarning, match="no detection"):
        metrics = evaluator.evaluate()
    assert metrics["mAP"] == 0.0 and (tmp_path / "detections.csv").read_bytes() == b""


_WORKER = """
import json, sys
import numpy as np
import torch.distributed as dist
from stmixer.evaluation import AVAEvaluator
gt, labelmap, out, frames_file = sys.argv[1:5]
dist.init_process_group("gloo")
rank = dist.get_rank()
frames = np.load(frames_file, allow_pickle=True)["frames"].tolist()[rank::2]
evaluator = AVAEvaluator(gt, labelmap, output_folder=out)
evaluator.process([f[0] for f in frames], [f[1] for f in frames], [f[2] for f in frames], [f[3] for f in frames])
print(json.dumps({"rank": rank, "metrics": evaluator.evaluate()}))
dist.destroy_process_group()
"""


def _communicate_all(procs):
    """(stdout, stderr) of every process, awaited without a time limit; when one fails the others
    are killed, since a rank left waiting in a collective would wait for its peer forever."""
    finished, outputs = queue.Queue(), {}

    def communicate(index):
        outputs[index] = procs[index].communicate()
        finished.put(index)

    waiters = [threading.Thread(target=communicate, args=(i,)) for i in range(len(procs))]
    for waiter in waiters:
        waiter.start()
    for _ in procs:
        if procs[finished.get()].returncode != 0:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    for waiter in waiters:
        waiter.join()
    return [outputs[i] for i in range(len(procs))]


def test_real_two_process_gather_with_gloo(files, tmp_path, repo_root):
    frames = keyframes()
    expected = AVAEvaluator(files["groundtruth"], files["labelmap"])
    expected.process(*[list(x) for x in zip(*frames)])
    expected = expected.evaluate()
    frames_file = tmp_path / "frames.npz"
    holder = np.empty(len(frames), dtype=object)
    holder[:] = frames
    np.savez(frames_file, frames=holder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        cmd = [sys.executable, "-c", _WORKER, files["groundtruth"], files["labelmap"], str(tmp_path / "out"), str(frames_file)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for proc, (stdout, stderr) in zip(procs, _communicate_all(procs)):
        assert proc.returncode == 0, stderr
        line = json.loads(stdout.strip().splitlines()[-1])
        results[line["rank"]] = line["metrics"]
    assert results[1] == {}
    assert results[0]["mAP"] == expected["mAP"] and results[0]["num_keyframes"] == 5


def test_evaluate_gathers_drops_padding_by_index_and_only_rank_0_reads_annotations(files, tmp_path, monkeypatch):
    frames = keyframes()
    single = AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"])
    single.process(*[list(x) for x in zip(*frames)], indices=list(range(len(frames))))
    expected = single.evaluate()

    # Rank 1 never reads the annotations: paths that do not exist there are fine.
    missing = {name: str(tmp_path / "not-on-this-host" / name) for name in ("gt.csv", "map.pbtxt", "excl.csv")}
    rank1 = AVAEvaluator(missing["gt.csv"], missing["map.pbtxt"], missing["excl.csv"], num_keyframes=5)
    rank0 = AVAEvaluator(files["groundtruth"], files["labelmap"], files["exclusions"], output_folder=tmp_path,
                         num_keyframes=5)
    # A padded interleaved sampler over 5 items and 2 processes: rank 0 gets 0, 2, 4; rank 1 gets 1, 3, 0.
    for evaluator, shard in ((rank0, [0, 2, 4]), (rank1, [1, 3, 0])):
        evaluator.process(*[list(x) for x in zip(*[frames[i] for i in shard])], indices=shard)
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [rank0._records, rank1._records])
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    assert rank1.evaluate() == {}
    monkeypatch.setattr(distributed, "get_rank", lambda: 0)
    gathered = rank0.evaluate()
    assert gathered["num_keyframes"] == 5
    assert gathered["mAP"] == expected["mAP"] and gathered["per_class"] == expected["per_class"]

    rank1.reset()
    rank1.process(*[list(x) for x in zip(*[frames[i] for i in (1, 0)])], indices=[1, 0])  # index 3 lost
    with pytest.raises(RuntimeError, match=r"lost 1 of 5 keyframes \(first missing dataset indices: \[3\]\)"):
        rank0.evaluate()
