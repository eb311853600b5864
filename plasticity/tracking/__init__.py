"""Experiment tracking adapters at the edge of the library (the core never imports them)."""
