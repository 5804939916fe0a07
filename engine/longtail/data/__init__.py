"""Data sets as tensors plus the long-tail bookkeeping (profiles, splits, groups)."""
