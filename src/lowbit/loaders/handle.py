"""ModelHandle: a model plus what lowbit needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
MODULE = "module"


@dataclass(frozen=True)
class Artifact:
    """A model that runs in another runtime (a GGUF file in llama.cpp): its own size and bits per weight."""

    runtime: str
    file_bytes: int
    bits_per_weight: float


@dataclass
class ModelHandle:
    """A loaded model.

    kind:       "causal-lm" (next-token logits), "encoder" (pooled embeddings) or "module" (anything)
    name:       what the user asked for ("smollm2", a path, ...)
    path:       the directory it was loaded from, if any
    quant:      lowbit quantization record for a quantized checkpoint (method config, layers), else None
    gguf_source: the GGUF file a float model was dequantized from (GGUF export reuses its metadata)
    artifact:   set when the model is a file run by another runtime (llama.cpp)
    qat:        the QAT record of a model prepared for quantization-aware training (lowbit.qat)
    teacher:    the full-precision model a QAT model distills from
    lazy:       a model opened without loading it (loaders/lazy.py): weights on meta, read block by block
    """

    model: nn.Module
    tokenizer: Any = None
    kind: str = MODULE
    name: str = "module"
    path: str | None = None
    quant: dict[str, Any] | None = None
    gguf_source: str | None = None
    artifact: Artifact | None = None
    qat: dict[str, Any] | None = None
    teacher: ModelHandle | None = None
    lazy: Any = None

    @property
    def reference_name(self) -> str | None:
        """The full-precision model a quantized checkpoint came from, when recorded."""
        return (self.quant or {}).get("source")
