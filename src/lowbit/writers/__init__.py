"""Writers: every one writes to a temporary location and renames on success."""

from lowbit.writers.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
