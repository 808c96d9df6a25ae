"""Model in -> ModelHandle: a Hugging Face directory, a GGUF file, a lowbit checkpoint, a built-in
name (``smollm2``, ``minilm``) or any ``torch.nn.Module``.

The torch-free parts (builtin, gguf_check, cache) are imported by `lowbit plan`; the loader itself is
imported on first use."""

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.load.dispatch import load_model
    from lowbit.load.handle import ModelHandle

__all__ = ["ModelHandle", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from lowbit.load.dispatch import load_model

        return load_model
    if name == "ModelHandle":
        from lowbit.load.handle import ModelHandle

        return ModelHandle
    raise AttributeError(f"module 'lowbit.load' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """`lowbit.load` is both this package and the verb (``lowbit.load("smollm2")``): `import lowbit` loads
    the verbs lazily, so the first import of this package rebinds the name to it; calling it still loads."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lowbit.load.dispatch import load_model

        return load_model(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
