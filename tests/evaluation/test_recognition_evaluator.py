"""Recognition metrics (against mmaction2) and the evaluator's views averaging and exact gathering."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stmixer.evaluation.recognition import RecognitionEvaluator, mean_class_accuracy, top_k_accuracy, video_scores
from stmixer.utils import distributed

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "recognition" / "cases.json"


@pytest.mark.mmaction2
def test_metrics_equal_mmaction2():
    for case in json.loads(FIXTURES.read_text())["accuracy"]:
        scores, labels = np.array(case["scores"]), np.array(case["labels"])
        assert top_k_accuracy(scores, labels, (1, 5)) == [case["top1"], case["top5"]]
        assert mean_class_accuracy(scores, labels) == case["mean_class_accuracy"]


def test_mean_class_accuracy_counts_predicted_only_classes_as_zero():
    scores = np.eye(3)[[0, 0, 2]]  # predicts 0, 0, 2 for labels 0, 1, 1
    assert mean_class_accuracy(scores, [0, 1, 1]) == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def views(num_videos=5, num_views=3, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.random((num_videos * num_views, classes)).astype(np.float32)
    return scores / scores.sum(1, keepdims=True), rng.integers(0, classes, num_videos)


def test_views_are_averaged_per_video_before_the_metrics():
    scores, labels = views()
    evaluator = RecognitionEvaluator(labels, 3)
    evaluator.process(np.arange(15)[::-1], scores[::-1])  # any order: rows go by index
    metrics = evaluator.evaluate()
    averaged = scores.astype(np.float64).reshape(5, 3, 4).mean(1)
    assert np.array_equal(video_scores(scores, 3), averaged)
    assert metrics["top1_acc"] == top_k_accuracy(averaged, labels, (1,))[0]
    assert metrics["mean_class_accuracy"] == mean_class_accuracy(averaged, labels)
    assert metrics["num_videos"] == 5 and metrics["views"] == 3


def test_gather_drops_padding_by_index_and_reports_lost_views(monkeypatch, tmp_path):
    scores, labels = views()
    single = RecognitionEvaluator(labels, 3)
    single.process(np.arange(15), scores)
    expected = single.evaluate()
    rank0 = RecognitionEvaluator(labels, 3, output_folder=str(tmp_path))
    rank1 = RecognitionEvaluator(labels, 3)
    rank0.process(np.arange(8), scores[:8])
    rank1.process(np.array([8, 9, 10, 11, 12, 13, 14, 0]), np.concatenate([scores[8:], scores[:1]]))  # padded
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [rank0._local(), rank1._local()])
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    assert rank1.evaluate() == {}
    monkeypatch.setattr(distributed, "get_rank", lambda: 0)
    assert rank0.evaluate() == expected
    assert json.loads((tmp_path / "recognition_metrics.json").read_text()) == expected
    assert np.load(tmp_path / "video_scores.npz")["scores"].shape == (5, 4)
    rank1.reset()
    rank1.process(np.array([8, 9, 11, 12, 13, 14]), scores[[8, 9, 11, 12, 13, 14]])
    with pytest.raises(RuntimeError, match=r"lost 1 of 15 views \(first missing dataset indices: \[10\]\)"):
        rank0.evaluate()


_WORKER = r"""
import json, sys
import numpy as np
from stmixer.evaluation.recognition import RecognitionEvaluator
from stmixer.utils import distributed
distributed.init_distributed()
rank = distributed.get_rank()
data = np.load(sys.argv[1])
scores, labels = data["scores"], data["labels"]
# the test sampler's shards of 15 items on 2 processes: 0..7 and 8..14 + 0 (padding)
shard = np.arange(8) if rank == 0 else np.array([8, 9, 10, 11, 12, 13, 14, 0])
evaluator = RecognitionEvaluator(labels, 3)
evaluator.process(shard, scores[shard])
metrics = evaluator.evaluate()
with open(sys.argv[2] + f"/rank{rank}.json", "w") as f:
    json.dump(metrics, f)
distributed.cleanup_distributed()
"""


def test_two_processes_with_gloo_give_the_one_process_numbers(tmp_path, repo_root):
    scores, labels = views(seed=3)
    single = RecognitionEvaluator(labels, 3)
    single.process(np.arange(15), scores)
    expected = single.evaluate()
    data, script = tmp_path / "views.npz", tmp_path / "worker.py"
    np.savez(data, scores=scores, labels=labels)
    script.write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # torchrun stops the other rank when one fails (no rank is left waiting in a collective)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(port), str(script), str(data), str(tmp_path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[1] == {} and results[0] == expected
