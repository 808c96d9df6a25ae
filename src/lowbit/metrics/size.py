"""Size: bytes of the whole model and bits per weight of the quantized layers."""

from __future__ import annotations

from torch import nn

from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.select import select_linears


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, each shared (tied) tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        key = t.untyped_storage().data_ptr()
        if key in seen and t.numel():
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def quantized_layer_bits(model: nn.Module) -> tuple[float, int]:
    """(bits per weight, weight count) over the quantized Linear layers.

    For an unquantized model, the same measure over the Linear layers lowbit would quantize by
    default (so the reference reads 32.0 in float32).
    """
    qmods = [m for m in model.modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))
             or hasattr(m, "quant_nbytes")]
    if qmods:
        nbytes = sum(m.quant_nbytes if hasattr(m, "quant_nbytes") else m.quantized_tensor().nbytes for m in qmods)
        numel = sum(m.in_features * m.out_features for m in qmods)
        return 8 * nbytes / numel, numel
    sel, _ = select_linears(model)
    ws = [m.weight for m in sel.values()]
    numel = sum(w.numel() for w in ws)
    if not numel:
        return float("nan"), 0
    return 8 * sum(w.numel() * w.element_size() for w in ws) / numel, numel


