"""Data: the AVA and UCF101-24 / JHMDB-21 on-disk layouts (``descriptions``: what each ``DATA.DATASETS``
name is), clip sampling and transforms, batching, samplers, the synthetic dataset.

Entry points: ``build_dataset(cfg, is_train)`` and ``build_data_loader(cfg, is_train, ...)``;
``python -m stmixer.data.synthetic`` (write a learnable dataset in either layout) and
``python -m stmixer.data.check`` (validate a dataset).
"""

from .build import build_data_loader, build_dataset

__all__ = ["build_data_loader", "build_dataset"]
