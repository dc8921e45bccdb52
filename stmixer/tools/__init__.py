"""Command-line tools run as ``python -m stmixer.tools.<name>``."""
