"""Decoding: KV-cache generation and sampling."""
