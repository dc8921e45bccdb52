"""Plain-tensor helpers for the data structures that travel through the model (boxes)."""
