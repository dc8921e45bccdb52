"""Data: the AVA on-disk layout, clip sampling and transforms, batching, samplers, the synthetic dataset.

Entry points: ``build_dataset(cfg, is_train)`` and ``build_data_loader(cfg, is_train, ...)``;
``python -m stmixer.data.synthetic`` (write a learnable AVA-layout dataset) and
``python -m stmixer.data.check`` (validate a dataset).
"""

from .build import build_data_loader, build_dataset

__all__ = ["build_data_loader", "build_dataset"]
