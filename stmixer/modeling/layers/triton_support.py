"""Where the project's Triton kernels may run, and a once-per-device check that they build and run.

Shared by the STMixer sampler (``stmixer/modeling/stmixer/sampling_triton.py``) and the training
BatchNorm kernels of the ResNet backbones (``stmixer/modeling/backbones/bn_act.py``). Each of those
modules imports Triton itself and checks its own ``triton`` name first, so a test can take Triton
away from one of them.
"""

import os

import torch

# Oldest GPUs an "auto" setting runs the Triton kernels on: Triton supports compute capability 8.0 (A100)
# and newer. Forcing a kernel (a True / "triton" setting) still tries older GPUs, behind the self-check.
AUTO_MIN_CAPABILITY = (8, 0)


def interpreted():
    """Whether Triton runs its kernels in its CPU interpreter (``TRITON_INTERPRET=1``, tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(device):
    """Whether Triton kernels can take tensors of ``device``: CUDA, or any device under the interpreter."""
    return torch.device(device).type == "cuda" or interpreted()


def capable(device):
    """Whether ``device`` is a CUDA GPU of compute capability ``AUTO_MIN_CAPABILITY`` or newer."""
    device = torch.device(device)
    return device.type == "cuda" and tuple(torch.cuda.get_device_capability(device)) >= AUTO_MIN_CAPABILITY


def checked(results, device, run):
    """None when ``run(device)`` (tiny forwards and backwards of some kernels) succeeded on ``device``, else why not.

    ``results`` caches the answer per (device type, index) for the process, so a GPU or an installation
    Triton cannot build for (an old GPU, a broken toolchain) costs one try and a fallback, not a failed
    training step. Not run during a CUDA graph capture (the graphed part runs eagerly in its warm-up first)."""
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    key = (device.type, device.index)
    if key in results:
        return results[key]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            run(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        reason = None
    except Exception as e:  # noqa: BLE001 - any failure to build or launch: the caller's fallback runs instead
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    results[key] = reason
    return reason
