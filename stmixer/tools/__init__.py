"""Command-line tools (``python -m stmixer.tools.<name>``)."""
