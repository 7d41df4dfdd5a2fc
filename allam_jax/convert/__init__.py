"""Checkpoint conversion to and from other frameworks' formats."""
