"""hwnas."""
