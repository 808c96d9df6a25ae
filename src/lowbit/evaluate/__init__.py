"""Metrics on the user's own data: perplexity, KL to the reference, top-1 agreement, size, speed,
and embedding cosine for encoders."""

import sys
import types

from lowbit.evaluate.result import EvalResult, Protocol
from lowbit.evaluate.run import evaluate

__all__ = ["EvalResult", "Protocol", "evaluate"]


class _CallableModule(types.ModuleType):
    """`lowbit.evaluate` is both this package and the verb: `import lowbit` loads the verbs lazily, so
    the first import of this package rebinds the name `lowbit.evaluate` to it; calling it still evaluates."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
