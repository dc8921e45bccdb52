"""Training and inference loops, their hooks, and the entry-point set-up."""
