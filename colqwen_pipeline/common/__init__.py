"""Shared utilities: atomic directory swaps and temporaries, the one-line error base."""
