"""``--auto-scale-lr``: the linear scaling rule of mmaction2's ``auto_scale_lr`` (mmengine ``Runner.scale_lr``).

mmengine multiplies the optimizer's lr by ``world_size x batch per GPU / base_batch_size``;
here the total batch is ``SOLVER.VIDEOS_PER_BATCH`` (clips over all processes), so
``BASE_LR <- BASE_LR x VIDEOS_PER_BATCH / BASE_BATCH_SIZE``. Like mmengine, the warm-up
factor and the cosine floor ``COSINE_ETA_MIN`` (an absolute rate) are left as they are.
"""

from ..config.config import ConfigError


def auto_scale_lr(cfg):
    """``(cfg, message)``: a copy of ``cfg`` (frozen if ``cfg`` was) with the scaled ``SOLVER.BASE_LR``.

    Raises:
        ConfigError: ``SOLVER.BASE_BATCH_SIZE`` is not given (0).
    """
    base_batch = cfg.SOLVER.BASE_BATCH_SIZE
    if base_batch <= 0:
        raise ConfigError(
            "--auto-scale-lr needs SOLVER.BASE_BATCH_SIZE, the total batch SOLVER.BASE_LR is meant for "
            "(e.g. 128 for mmaction2's 8 GPUs x 16 clips); it is 0 in this config"
        )
    batch = cfg.SOLVER.VIDEOS_PER_BATCH
    ratio = batch / base_batch
    scaled = cfg.clone()
    frozen = cfg.is_frozen()
    scaled.defrost()
    scaled.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * ratio
    if frozen:
        scaled.freeze()
    message = (f"--auto-scale-lr: SOLVER.BASE_LR {cfg.SOLVER.BASE_LR:g} x (VIDEOS_PER_BATCH {batch} / BASE_BATCH_SIZE "
               f"{base_batch}) = {scaled.SOLVER.BASE_LR:g}")
    return scaled, message
