"""Errors raised while reading or loading checkpoints; each message names the file and what was expected."""

from ..errors import UserError



class CheckpointError(UserError):
    """Base class: a weight file that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler for something outside the allow-list; nothing was executed."""


class CheckpointFormatError(CheckpointError):
    """The file is readable but not a checkpoint layout stmixer knows."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the model (missing / unexpected / shape-mismatched keys).

    ``report`` holds the ``LoadReport``; the message is its table.
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report
