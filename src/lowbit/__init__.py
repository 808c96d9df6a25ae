"""lowbit: quantize a neural network and know what you gave up.

The public API is a handful of verbs::

    import lowbit
    ref = lowbit.load("smollm2")
    q, report = lowbit.quantize(ref, lowbit.make_config("rtn", lowbit.QuantSpec(bits=4, group_size=64)))
    result = lowbit.evaluate(q, reference=ref)
    lowbit.save(q, "out/smollm2-int4")
"""

from typing import TYPE_CHECKING, Any

from lowbit.errors import LowbitError

__version__ = "0.1.0"

# The verbs load torch; they are imported on first use, so `lowbit plan` (and `import lowbit`) stay instant.
# No verb shares its name with a subpackage (loaders/, metrics/, writers/): importing a subpackage binds
# its name on this module, which would shadow a verb of the same name.
_LAZY = {
    "CalibSettings": "lowbit.api", "QuantizeReport": "lowbit.api", "export": "lowbit.api",
    "make_config": "lowbit.api", "quantize": "lowbit.api", "save": "lowbit.api",
    "EvalResult": "lowbit.metrics", "evaluate": "lowbit.metrics",
    "EvalSettings": "lowbit.metrics.run", "Evaluator": "lowbit.metrics.run",
    "ModelHandle": "lowbit.loaders", "load_model": "lowbit.loaders", "load": "lowbit.loaders",
    "QuantSpec": "lowbit.spec",
}

if TYPE_CHECKING:
    from lowbit.api import CalibSettings, QuantizeReport, export, make_config, quantize, save
    from lowbit.metrics import EvalResult, evaluate
    from lowbit.metrics.run import EvalSettings, Evaluator
    from lowbit.loaders import ModelHandle, load_model
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
