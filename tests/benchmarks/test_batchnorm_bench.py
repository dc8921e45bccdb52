"""benchmarks/batchnorm.py: one clear line without a GPU; with one, the table of both paths and their ratio."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "batchnorm.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_without_cuda_it_says_why_in_one_line():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "benchmarks/batchnorm.py: needs CUDA and Triton (the kernels run on CUDA only)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_it_prints_both_paths_and_the_ratio(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("batchnorm_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "SHAPES", [(2, 40, 2, 8, 8)])
    monkeypatch.setattr(sys, "argv", ["batchnorm.py", "--repeats", "2", "--dtypes", "bfloat16"])
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        bench.main()
    lines = out.getvalue().splitlines()
    assert "kernels/modules" in lines[1] and lines[-1].split()[1:3] == ["all", "shapes"]
    assert float(lines[-1].split()[-1]) > 0
