"""benchmarks/speed.py runs stmixer alone on the CPU and prints the comparison table (columns, not speed)."""

import pytest
import torch

from .conftest import load_benchmark
TINY = ["MODEL.STM.HIDDEN_DIM", "32", "MODEL.STM.NUM_QUERIES", "4", "MODEL.STM.NUM_STAGES", "2",
        "MODEL.STM.NUM_HEADS", "2", "MODEL.STM.DIM_FEEDFORWARD", "32", "MODEL.STM.SPATIAL_POINTS", "4",
        "RESNET.WIDTH_PER_GROUP", "4"]


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def test_ours_alone_on_the_cpu_prints_the_table(speed, capsys, tmp_path):
    rows = speed.main(["--config", "config_files/synthetic/tiny-slowonly.yaml", "--device", "cpu", "--H", "64",
                       "--W", "96", "--steps", "1", "--warmup", "0", "--train-batches", "2", "--infer-batches", "1",
                       "--json", str(tmp_path / "speed.json"), *TINY])
    lines = capsys.readouterr().out.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["mode", "batch", "precision", "ours ms", "ours clips/s", "ours peak GiB", "official ms",
                      "official clips/s", "official peak GiB", "speed ours/official", "memory ours/official"]
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:3] for row in body] == [["train", "2", "fp32"], ["train", "2", "bf16"], ["infer", "1", "fp32"],
                                         ["infer", "1", "bf16"]]
    for row in body:
        assert float(row[3]) > 0 and float(row[4]) > 0  # ours ran
        assert row[5:] == ["-"] * 6  # no GPU memory on the CPU, no official run
    assert all("error" not in row["ours"] for row in rows)
    assert (tmp_path / "speed.json").is_file()


def test_overrides_are_refused_with_the_official_code(speed):
    with pytest.raises(SystemExit):
        speed.parse_args(["--official-dir", "x", "MODEL.STM.NUM_STAGES", "2"])


def test_the_table_gives_the_ratios(speed):
    rows = [{"mode": "train", "batch": 2, "precision": "fp32", "ours": {"ms": 50.0, "clips_per_s": 40.0, "peak_gib": 3.0},
             "official": {"ms": 100.0, "clips_per_s": 20.0, "peak_gib": 6.0}},
            {"mode": "infer", "batch": 8, "precision": "bf16", "ours": {"ms": 10.0, "clips_per_s": 800.0},
             "official": {"error": "OOM"}}]
    lines = speed.table(rows).splitlines()
    assert lines[2].endswith("| 2.00 | 0.50 |")
    assert "| OOM | - | - | - | - |" in lines[3]


def test_a_baseline_of_ours_with_one_key_changed_takes_the_official_columns(speed, capsys):
    rows = speed.main(["--config", "config_files/synthetic/tiny-slowonly.yaml", "--device", "cpu", "--H", "64",
                       "--W", "96", "--steps", "1", "--warmup", "0", "--modes", "infer", "--precisions", "fp32",
                       "--infer-batches", "1", "--baseline", "MODEL.BACKBONE.SPATIAL_CONV_2D True", *TINY])
    out = capsys.readouterr().out
    assert "baseline: ours with MODEL.BACKBONE.SPATIAL_CONV_2D True" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[6:] == ["baseline ms", "baseline clips/s", "baseline peak GiB", "speed ours/baseline",
                          "memory ours/baseline"]
    body = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert float(body[6]) > 0 and float(body[9]) > 0  # the baseline ran and the speed ratio is given
    assert set(rows[0]) == {"mode", "batch", "precision", "ours", "baseline"}


def test_the_baseline_takes_key_value_pairs_and_not_the_official_code(speed):
    with pytest.raises(SystemExit):
        speed.parse_args(["--baseline", "MODEL.BACKBONE.SPATIAL_CONV_2D"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--baseline", "A B", "--official-dir", "x"])
    assert speed.parse_args(["--baseline", "A  B C D"]).baseline == ["A", "B", "C", "D"]


def test_sync_bn_needs_cuda_and_converts_only_configs_with_sync_bn(speed, repo_root):
    with pytest.raises(SystemExit):
        speed.parse_args(["--sync-bn", "--device", "cpu"])
    assert speed.parse_args(["--sync-bn", "--device", "cuda"]).sync_bn
    config = str(repo_root / "config_files" / "synthetic" / "tiny-slowonly.yaml")
    assert speed.Ours(config, [], torch.device("cpu"), sync_bn=True).sync_bn
    assert not speed.Ours(config, ["MODEL.BACKBONE.SYNC_BN", "False"], torch.device("cpu"), sync_bn=True).sync_bn
    assert not speed.Ours(config, [], torch.device("cpu")).sync_bn
