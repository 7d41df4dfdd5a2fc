"""Alignment: chat formatting, supervised fine-tuning data, and direct preference optimisation."""
