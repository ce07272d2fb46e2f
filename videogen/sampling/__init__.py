"""Decoding token sequences from trained generators."""
