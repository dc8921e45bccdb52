"""benchmarks/scaling.py: train_net.py on 1 and 2 CPU processes (gloo), the table and its arithmetic (not speed)."""

import json
import statistics

import pytest

from .conftest import load_benchmark
TINY = ["DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]", "DATA.NUM_FRAMES", "4",
        "RESNET.WIDTH_PER_GROUP", "4", "MODEL.STM.HIDDEN_DIM", "32", "MODEL.STM.NUM_QUERIES", "8",
        "MODEL.STM.NUM_STAGES", "2", "MODEL.STM.NUM_HEADS", "2", "MODEL.STM.DIM_FEEDFORWARD", "64"]
COMMON = ["--config-file", "config_files/synthetic/tiny-slowonly.yaml", "--device", "cpu", "--clips-per-gpu", "2",
          "--workers", "1"]


@pytest.fixture(scope="module")
def scaling():
    return load_benchmark("scaling")


@pytest.fixture
def dataset(small_dataset):
    return small_dataset


def _table(out):
    lines = [line for line in out.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_one_and_two_processes_give_the_table_from_their_metrics(scaling, dataset, tmp_path, capsys):
    code = scaling.main([*COMMON, "--gpus", "2", "--iters", "5", "--skip-first", "2", "--data", str(dataset),
                         "--out", str(tmp_path / "runs"), "--predict", "2,4", "--json", str(tmp_path / "rows.json"),
                         *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["variant"], r["gpus"]) for r in rows] == [("defaults", 1), ("defaults", 2)]
    for row in rows:
        run_dir = tmp_path / "runs" / f"defaults-{row['gpus']}gpu"
        times = scaling.step_times(run_dir / "metrics.json", 2)
        assert len(times) == row["iterations"] == 3  # iterations 3, 4, 5
        assert row["s_per_iter"] == pytest.approx(statistics.median(times))
        assert row["clips_per_s"] == pytest.approx(2 * row["gpus"] / row["s_per_iter"])
        assert not list(run_dir.glob("*.pth"))  # the checkpoints are deleted
        assert "--nproc_per_node 2" in (run_dir / "stdout.txt").read_text().splitlines()[0] or row["gpus"] == 1
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["clips_per_s"] / (2 * rows[0]["clips_per_s"]))
    body = _table(out)
    assert [r[:2] for r in body] == [["defaults", "1"], ["defaults", "2"]]
    assert body[0][4] == "100.0%"
    assert body[1][4] == f"{rows[1]['efficiency']:.1%}" + (" (met)" if rows[1]["efficiency"] >= 0.95 else " (missed)")
    assert "defaults: one-GPU step times (wall-clock)" in out and "at 2 GPUs" in out and "at 4 GPUs" in out
    assert len(rows[0]["step_times"]) == 3


def test_a_failed_run_is_one_line_and_the_others_are_still_printed(scaling, dataset, tmp_path, capsys):
    # what a run killed before its clean-up leaves: train_net.py would resume this checkpoint (and fail on it)
    (tmp_path / "runs" / "defaults-1gpu").mkdir(parents=True)
    (tmp_path / "runs" / "defaults-1gpu" / "model_0000002.pth").write_bytes(b"not a checkpoint")
    code = scaling.main([*COMMON, "--gpus", "1", "--iters", "3", "--skip-first", "1", "--data", str(dataset),
                         "--out", str(tmp_path / "runs"), "--variant", "broken=SOLVER.BASE_LRR 1", *TINY])
    out = capsys.readouterr().out
    assert code == 1
    stdout = tmp_path / "runs" / "broken-1gpu" / "stdout.txt"
    assert out.count(f"failed (exit status 2): see {stdout}") == 2  # the progress line and the table row
    assert "unknown config key SOLVER.BASE_LRR" in stdout.read_text()
    body = _table(out)
    assert body[0][:2] == ["defaults", "1"] and float(body[0][3]) > 0
    assert body[1][:2] == ["broken", "1"]


def test_reuse_keeps_the_runs_that_finished_with_the_same_command(scaling, dataset, tmp_path, capsys):
    argv = [*COMMON, "--gpus", "1", "--iters", "3", "--skip-first", "1", "--data", str(dataset), "--out",
            str(tmp_path / "runs"), "--variant", "broken=SOLVER.BASE_LRR 1", "--reuse", *TINY]
    assert scaling.main(argv) == 1
    first = capsys.readouterr().out
    metrics = tmp_path / "runs" / "defaults-1gpu" / "metrics.json"
    written = metrics.stat().st_mtime_ns
    assert scaling.main(argv) == 1  # the finished run is kept; the failed one runs again (and fails again)
    again = capsys.readouterr().out
    assert "[1/2] defaults, 1 process(es) ... kept from an earlier call (--reuse)" in again
    assert "[2/2] broken, 1 process(es) ... failed (exit status 2)" in again
    assert metrics.stat().st_mtime_ns == written
    assert _table(again)[0] == _table(first)[0]  # the same numbers, read from the same metrics.json
    argv[argv.index("--iters") + 1] = "4"  # another command line: run again
    scaling.main(argv)
    assert "defaults, 1 process(es) ... done" in capsys.readouterr().out and metrics.stat().st_mtime_ns != written


def test_reuse_keeps_a_synthetic_dataset_written_whole_before(scaling, tmp_path, monkeypatch, capsys):
    import types

    args = types.SimpleNamespace(synthetic_size=[64, 96], synthetic_videos=2, reuse=True)
    monkeypatch.setattr(scaling.subprocess, "run", lambda *a, **k: pytest.fail("wrote the dataset again"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic_dataset.json").write_text("{}")  # written last: the dataset is whole
    assert scaling.write_synthetic(args, tmp_path) == tmp_path / "data"
    assert "using the synthetic dataset written before" in capsys.readouterr().out
    args.reuse = False
    with pytest.raises(pytest.fail.Exception, match="wrote the dataset again"):
        scaling.write_synthetic(args, tmp_path)


def test_the_straggler_bound_is_the_mean_over_the_expected_maximum(scaling):
    # two steps of 1 s and 2 s: the maximum of two draws is 2 s unless both are 1 s (1/4)
    assert scaling.expected_max([2.0, 1.0], 2) == pytest.approx(0.25 * 1 + 0.75 * 2)
    assert scaling.expected_max([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    bound, left_out = scaling.straggler_bound([1.0, 2.0], 2)
    assert bound == pytest.approx(1.5 / 1.75) and left_out == 0
    bound, left_out = scaling.straggler_bound([1.0] * 9 + [30.0], 4)  # a capture, left out
    assert bound == pytest.approx(1.0) and left_out == 1


def test_a_slow_drift_is_not_jitter(scaling):
    drift = [1.0 + 0.01 * i for i in range(40)]  # every step a little slower than the one before
    assert scaling.straggler_bound(drift, 4)[0] < 0.92
    jitter = scaling.detrended(drift)
    assert max(jitter) - min(jitter) < 0.05 and scaling.straggler_bound(jitter, 4)[0] > 0.99
    # alternate steps 10 % slower: jitter, kept (the mean of 9 alternating steps is 1.05 +- 0.0056)
    noisy = [1.0 + 0.1 * (i % 2) for i in range(40)]
    assert scaling.straggler_bound(noisy, 2)[0] == pytest.approx(1.05 / 1.075)
    assert scaling.straggler_bound(scaling.detrended(noisy), 2)[0] == pytest.approx(1.05 / 1.075, rel=3e-3)


def test_the_table_compares_each_variant_with_its_own_one_gpu_run_and_with_defaults(scaling):
    runs = [{"variant": "defaults", "gpus": 1, "times": [0.2, 0.2, 0.3]},
            {"variant": "defaults", "gpus": 4, "times": [0.25]},
            {"variant": "fast", "gpus": 1, "times": [0.1]},
            {"variant": "fast", "gpus": 4, "times": [0.104]},
            {"variant": "lost", "gpus": 4, "error": "failed (exit status 1): see x"}]
    rows = scaling.summarize(runs, clips_per_gpu=8)
    assert rows[0]["clips_per_s"] == pytest.approx(40.0) and rows[1]["efficiency"] == pytest.approx(0.8)
    assert rows[3]["efficiency"] == pytest.approx(0.1 / 0.104) and rows[3]["vs_first"] == pytest.approx(0.25 / 0.104)
    lines = scaling.table(rows, "defaults").splitlines()
    assert lines[3] == "| defaults | 4 | 0.2500 | 128.00 | 80.0% (missed) | - |"
    assert lines[5] == "| fast | 4 | 0.1040 | 307.69 | 96.2% (met) | 2.40x |"
    assert lines[6] == "| lost | 4 | failed (exit status 1): see x | - | - | - |"


def test_predict_takes_the_gpus_step_times_when_every_timed_iteration_has_one(scaling):
    runs = [{"variant": "cuda", "gpus": 1, "times": [0.3, 0.1, 0.3, 0.1], "gpu_times": [0.2, 0.2, 0.2, 0.2]},
            {"variant": "partly", "gpus": 1, "times": [0.3, 0.1, 0.3, 0.1], "gpu_times": [0.2, 0.2, 0.2]},
            {"variant": "cpu", "gpus": 1, "times": [0.3, 0.1, 0.3, 0.1], "gpu_times": []}]
    rows = scaling.summarize(runs, clips_per_gpu=8)
    assert [(r["step_clock"], r["step_times"]) for r in rows] == [
        ("GPU", [0.2] * 4), ("wall-clock", runs[1]["times"]), ("wall-clock", runs[2]["times"])]
    assert rows[0]["s_per_iter"] == pytest.approx(0.2)  # the table stays the wall-clock's median
    lines = scaling.predictions(rows, [2])
    assert lines[0].startswith("cuda: one-GPU step times (GPU) 0.2000-0.2000 s")
    assert "100.0% at 2 GPUs" in lines[0]  # equal GPU steps: no waiting, though the wall-clock alternates
    assert lines[2].startswith("cpu: one-GPU step times (wall-clock) 0.1000-0.3000 s")
    assert "80.0% at 2 GPUs" in lines[2]  # mean 0.2 over the expected maximum 0.25


@pytest.mark.parametrize("argv,message", [
    (["--gpus", "0,2"], "--gpus '0,2': expected a comma list of positive integers"),
    (["--variant", "x=SOLVER.BASE_LR"], "expected KEY VALUE pairs"),
    (["--variant", "defaults=SOLVER.BASE_LR 1"], "two variants share a name"),
    (["--iters", "5", "--skip-first", "5"], "leaves none of the --iters 5 iterations"),
])
def test_bad_arguments_are_one_line(scaling, argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        scaling.parse_args(["--config-file", "c.yaml", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_shared_shapes_wait_only_for_the_steps_of_the_same_shape(scaling):
    # two shapes: small steps 0.1 s, large 0.2 s, half each. Independent draws on 2 processes wait for a large
    # step 3/4 of the time; with the shape shared, equal steps of one shape never wait.
    times, shapes = [0.1, 0.2] * 4, [(256, 352), (320, 448)] * 4
    assert scaling.straggler_bound(times, 2)[0] == pytest.approx(0.15 / 0.175)
    assert scaling.shared_shape_bound(times, shapes, 2) == pytest.approx(1.0)
    # within a shape the jitter still costs: 0.1 / 0.3 s large steps, the maximum of two is 0.3 s 3/4 of the time
    times, shapes = [0.1, 0.1, 0.1, 0.3], [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert scaling.shared_shape_bound(times, shapes, 2) == pytest.approx(0.15 / (0.5 * 0.1 + 0.5 * 0.25))


def test_predict_adds_the_shared_shape_line_from_the_gpu_steps_own_shapes(scaling, tmp_path):
    from stmixer.engine.events import MetricsFile

    metrics = MetricsFile(str(tmp_path))
    # gpu_time is the iteration before its record's: iteration i's shape is small for odd i, its GPU time 0.1 s
    for i in range(1, 10):
        record = {"iteration": i, "time": 0.15, "input_height": 256.0 if i % 2 else 320.0, "input_width": 352.0}
        if i > 1:
            record["gpu_time"] = 0.1 if (i - 1) % 2 else 0.2
        metrics.append(record)
    pairs = scaling.timed_shapes(tmp_path / "metrics.json", 1, "gpu_time")
    assert pairs == [(0.1 if i % 2 else 0.2, (256.0 if i % 2 else 320.0, 352.0)) for i in range(1, 9)]
    assert scaling.timed_shapes(tmp_path / "metrics.json", 7) == [(0.15, (320.0, 352.0)), (0.15, (256.0, 352.0))]
    run = {"variant": "ms", "gpus": 1, "times": [0.15] * 8, "shapes": [(0, 0)] * 8,
           "gpu_times": [t for t, _ in pairs], "gpu_shapes": [s for _, s in pairs]}
    lines = scaling.predictions(scaling.summarize([run], clips_per_gpu=2), [2])
    assert "85.7% at 2 GPUs" in lines[0]  # independent shapes: 0.15 / 0.175
    assert lines[1] == ("ms: 2 padded input shapes (256x352 4, 320x352 4 steps); with each step's shape shared by "
                        "all processes (DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES True, frames of one size): "
                        "100.0% at 2 GPUs")
    one_shape = dict(run, gpu_shapes=[(256.0, 352.0)] * 8)
    assert len(scaling.predictions(scaling.summarize([one_shape], clips_per_gpu=2), [2])) == 1
