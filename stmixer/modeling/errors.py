"""Errors of a diverging training run (NaN or infinite values), shared by the loss and the trainer."""

from ..errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss term became NaN or infinite (the run diverged)."""


class NonFiniteCostError(NonFiniteLossError):
    """The Hungarian matching cost is NaN or infinite: the predictions of a clip hold NaN/inf.

    Raised by the matcher before the loss can be computed; the trainer handles it like a
    non-finite loss (``SOLVER.NONFINITE_LOSS``).
    """
