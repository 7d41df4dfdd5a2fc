"""Evaluation: multiple-choice benchmarks, perplexity, reports."""
