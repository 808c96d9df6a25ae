"""ModelHandle: a model plus what lowbit needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
MODULE = "module"


@dataclass
class ModelHandle:
    """A loaded model.

    kind:       "causal-lm" (next-token logits), "encoder" (pooled embeddings) or "module" (anything)
    name:       what the user asked for ("smollm2", a path, ...)
    path:       the directory it was loaded from, if any
    quant:      lowbit quantization record for a quantized checkpoint (method config, layers), else None
    """

    model: nn.Module
    tokenizer: Any = None
    kind: str = MODULE
    name: str = "module"
    path: str | None = None
    quant: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_name(self) -> str | None:
        """The full-precision model a quantized checkpoint came from, when recorded."""
        return (self.quant or {}).get("source")
