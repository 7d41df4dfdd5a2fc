"""Input pipelines: bundled corpora, text/JSONL files (and, later, seqio tasks and mixtures)."""
