"""Small shared helpers: distributed communication, logging, environment, atomic I/O."""
