"""Logger set-up: rank 0 prints, every rank writes its own file in the output folder."""

import logging
import os
import sys

LOGGER_NAME = "stmixer"
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def log_file_name(rank):
    """File name of a rank's log: ``log.txt`` for rank 0, ``log.txt.rank<K>`` beyond."""
    return "log.txt" if rank == 0 else f"log.txt.rank{rank}"


def setup_logger(output_dir, rank, name=LOGGER_NAME):
    """Configure and return the package logger.

    Args:
        output_dir: folder of the log files ("" or None: console only).
        rank: global rank; rank 0 also logs to stdout.
        name: logger name; modules log through ``logging.getLogger("stmixer.<module>")``.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    if rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, log_file_name(rank)), mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
