"""Per-iteration scalars recorded by the trainer and read by the writer hooks."""

import collections
import statistics


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
        self.iteration = 0

    def put(self, **scalars):
        """Record float scalars for the current iteration."""
        for name, value in scalars.items():
            value = float(value)
            self._values[name].append(value)
            self._totals[name] += value
            self._counts[name] += 1

    def latest(self, name):
        """The most recent value of ``name``."""
        return self._values[name][-1]

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
