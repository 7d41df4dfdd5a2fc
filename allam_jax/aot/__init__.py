"""Ahead-of-time compilation: dry-run a config on a TPU slice from a CPU host (``allam compile``)."""
