"""Model in -> ModelHandle: a Hugging Face directory, a GGUF file, a lowbit checkpoint, a built-in
name (``smollm2``, ``minilm``) or any ``torch.nn.Module``. The verb is ``lowbit.load``.

The torch-free parts (builtin, gguf_check, cache) are imported by `lowbit plan`; the loader itself is
imported on first use."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.loaders.dispatch import load_model
    from lowbit.loaders.handle import ModelHandle

__all__ = ["ModelHandle", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from lowbit.loaders.dispatch import load_model

        return load_model
    if name == "ModelHandle":
        from lowbit.loaders.handle import ModelHandle

        return ModelHandle
    raise AttributeError(f"module 'lowbit.loaders' has no attribute {name!r}")
