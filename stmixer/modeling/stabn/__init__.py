"""ST-ABN (Spatio-Temporal Attention Branch Network): the ``stabn`` recognition head of ``Recognizer3D``
(``head.STABNHead``), the official checkpoint key conversion (``convert``) and attention-map images
(``visualize``). See docs/stabn.md."""

from .head import STABNHead, build_stabn_head  # noqa: F401  (registers the "stabn" head)
