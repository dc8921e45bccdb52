"""What the run is made of (versions, devices) and seeding."""

import os
import platform
import random
import sys

import numpy as np
import torch


def collect_env_info():
    """A short multi-line table of the software and hardware this process runs on."""
    rows = [
        ("Python", sys.version.split()[0]),
        ("Platform", platform.platform()),
        ("CPUs", str(os.cpu_count())),
        ("NumPy", np.__version__),
        ("PyTorch", torch.__version__),
        ("PyTorch CUDA build", str(torch.version.cuda)),
    ]
    try:
        import torchvision

        rows.append(("torchvision", torchvision.__version__))
    except ImportError:
        rows.append(("torchvision", "not installed"))
    try:
        import cv2

        rows.append(("OpenCV", cv2.__version__))
    except ImportError:
        rows.append(("OpenCV", "not installed"))
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda)))
    if cuda:
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            rows.append((f"GPU {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def seed_all(seed):
    """Seed Python, NumPy and PyTorch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_shared_dir():
    """The ``shared`` kit folder (reference fixtures, fake-checkpoint tools), or None.

    Looked up in ``$STMIXER_SHARED``, then ``../shared`` beside the repository root.
    """
    from pathlib import Path

    env = os.environ.get("STMIXER_SHARED")
    if env:
        return Path(env) if Path(env).is_dir() else None
    candidate = Path(__file__).resolve().parents[2].parent / "shared"
    return candidate if candidate.is_dir() else None
