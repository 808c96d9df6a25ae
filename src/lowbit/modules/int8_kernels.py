"""torch's integer matmuls, as lowbit's int8 layers reach them.

- :func:`int_mm`: int8 x int8 -> int32 through ``torch._int_mm`` (CPU and CUDA tensor cores);
- :func:`int8_engine` says which of torch's quantized-GEMM engines (x86 / fbgemm / qnnpack) this
  machine has; :func:`select_int8_engine` makes it torch's current engine. Reporting changes nothing;
  selecting is the one explicit call, made where a layer packs its weights for that engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENGINES = ("x86", "fbgemm", "qnnpack")


def int_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int8 (m, k) x int8 (k, n) -> int32 (m, n) through torch._int_mm, which wants more than 16 rows:
    fewer are padded with zero rows."""
    m = a.shape[0]
    return torch._int_mm(F.pad(a, (0, 0, 0, 17 - m)) if m <= 16 else a, b_t)[:m]


def int8_engine() -> str | None:
    """The int8 GEMM engine torch offers on this machine (x86 / fbgemm / qnnpack, best first), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ENGINES if e in engines), None)


def select_int8_engine() -> str | None:
    """Make :func:`int8_engine` torch's quantized engine (a process-wide torch setting); returns it."""
    engine = int8_engine()
    if engine is not None and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    return engine
