"""Generation tasks: how a condition becomes model inputs (COMMIT for MAGVIT)."""
