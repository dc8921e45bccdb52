"""Per-iteration scalars recorded by the trainer, and ``metrics.json``, the run's history of them.

``metrics.json`` holds one JSON record a line, in iteration order:

* a training record ``{"iteration": i, "total_loss": ..., "lr": ..., ...}`` every
  ``SOLVER.LOG_PERIOD`` iterations (and the last), with the values of iteration ``i`` only;
* an evaluation record ``{"iteration": i, "type": "eval", "eval/mAP": ...}`` after each
  evaluation, the final one (iteration ``max_iter``) included.

A resumed run first drops the records of the iterations it replays.
"""

import collections
import json
import logging
import os
import statistics

from ..utils.io import atomic_open

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


class MetricHistory:
    """Scalars of the current training run: the latest value and a window of recent ones per name.

    Args:
        window: how many recent values are kept per name (for medians).
    """

    def __init__(self, window=20):
        self.window = window
        self._values = collections.defaultdict(lambda: collections.deque(maxlen=window))
        self._totals = collections.defaultdict(float)
        self._counts = collections.defaultdict(int)
        self._put_at = {}
        #: The iteration (1-based count of steps) the values put now belong to; the trainer sets it.
        self.iteration = 0

    def put(self, **scalars):
        """Record float scalars for the current iteration."""
        for name, value in scalars.items():
            value = float(value)
            self._values[name].append(value)
            self._totals[name] += value
            self._counts[name] += 1
            self._put_at[name] = self.iteration

    def latest(self, name):
        """The most recent value of ``name``."""
        return self._values[name][-1]

    def current(self):
        """{name: value} of the scalars put during the current iteration (``self.iteration``) only."""
        return {name: self._values[name][-1] for name, at in self._put_at.items() if at == self.iteration}

    def median(self, name):
        """Median of the recent window of ``name``."""
        return statistics.median(self._values[name])

    def global_mean(self, name):
        """Mean of every value of ``name`` recorded in this run."""
        return self._totals[name] / max(self._counts[name], 1)

    def names(self):
        """Names recorded so far, in first-seen order."""
        return list(self._values)

    def __contains__(self, name):
        return name in self._values and len(self._values[name]) > 0


class MetricsFile:
    """``<output_dir>/metrics.json`` (see the module docstring); written by rank 0 only.

    Args:
        output_dir: the run's folder.
    """

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, METRICS_FILE)

    def records(self):
        """The records in the file (a line that is not a JSON object, e.g. cut by a kill, is skipped)."""
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path, "r", encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("iteration"), int):
                    records.append(record)
                else:
                    logger.warning("%s:%d: not a metrics record; dropped", self.path, number)
        return records

    def trim(self, iteration):
        """Keep only the records of iterations <= ``iteration`` (atomic rewrite; the run resumes there)."""
        if not os.path.exists(self.path):
            return
        records = self.records()
        kept = [r for r in records if r["iteration"] <= iteration]
        self._rewrite(kept)
        if len(kept) < len(records):
            logger.info("%s: dropped %d records after iteration %d (the run resumes there)",
                        self.path, len(records) - len(kept), iteration)

    def append(self, record):
        """Add one record (a dict with an int "iteration") at the end."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def add_evaluation(self, iteration, scalars):
        """Add the evaluation record of ``iteration``, replacing an earlier one of the same iteration.

        (The final evaluation is run again when a finished run is started again.)
        """
        records = self.records()
        kept = [r for r in records if not (r.get("type") == "eval" and r["iteration"] == iteration)]
        if len(kept) < len(records):
            self._rewrite(kept)
        self.append({"iteration": iteration, "type": "eval", **scalars})

    def _rewrite(self, records):
        with atomic_open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
