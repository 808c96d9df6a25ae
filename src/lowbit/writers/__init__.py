"""Writers: every one writes to a temporary location and renames on success."""

from lowbit.writers.checkpoint import save_checkpoint

__all__ = ["save_checkpoint"]
