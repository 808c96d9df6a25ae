"""Model in -> ModelHandle: a Hugging Face directory, a GGUF file, a lowbit checkpoint, a built-in
name (``smollm2``, ``minilm``) or any ``torch.nn.Module``."""

from lowbit.load.dispatch import load_model
from lowbit.load.handle import ModelHandle

__all__ = ["ModelHandle", "load_model"]
