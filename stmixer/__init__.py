"""stmixer: spatio-temporal action detection with STMixer."""

__version__ = "0.1.0"
