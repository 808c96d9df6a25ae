"""lowbit: quantize a neural network and know what you gave up.

The public API is a handful of verbs::

    import lowbit
    ref = lowbit.load("smollm2")
    q, report = lowbit.quantize(ref, lowbit.make_config("rtn", lowbit.QuantSpec(bits=4, group_size=64)))
    result = lowbit.evaluate(q, reference=ref)
    lowbit.save(q, "out/smollm2-int4")
"""

import os

# numpy's OpenBLAS (used for the calibration Gram matrices) keeps its threads spinning after each call,
# and they fight torch's own threads for the cores; let them sleep at once. Effective only when lowbit
# is imported before numpy (always for the CLI); a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from typing import TYPE_CHECKING, Any

from lowbit.errors import LowbitError

__version__ = "0.1.0"

# The verbs load torch; they are imported on first use, so `lowbit plan` (and `import lowbit`) stay instant.
_LAZY = {
    "CalibSettings": "lowbit.api", "QuantizeReport": "lowbit.api", "export": "lowbit.api",
    "make_config": "lowbit.api", "quantize": "lowbit.api", "save": "lowbit.api",
    "EvalResult": "lowbit.evaluate", "evaluate": "lowbit.evaluate",
    "EvalSettings": "lowbit.evaluate.run", "Evaluator": "lowbit.evaluate.run",
    "ModelHandle": "lowbit.load", "load_model": "lowbit.load", "load": "lowbit.load",
    "QuantSpec": "lowbit.spec",
}

if TYPE_CHECKING:
    from lowbit.api import CalibSettings, QuantizeReport, export, make_config, quantize, save
    from lowbit.evaluate import EvalResult, evaluate
    from lowbit.evaluate.run import EvalSettings, Evaluator
    from lowbit.load import ModelHandle, load_model
    from lowbit.spec import QuantSpec

    load = load_model


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name])
    value = getattr(module, "load_model" if name == "load" else name)
    globals()[name] = value
    return value


__all__ = [
    "CalibSettings",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "LowbitError",
    "ModelHandle",
    "QuantSpec",
    "QuantizeReport",
    "evaluate",
    "export",
    "load",
    "load_model",
    "make_config",
    "quantize",
    "save",
]
