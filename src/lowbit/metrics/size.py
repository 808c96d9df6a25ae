"""Size: bytes of the whole model and bits per weight of the quantized layers."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.select import select_linears


def _distinct(model: nn.Module) -> Iterator[tuple[int, int]]:
    """(storage key, bytes) of every parameter and persistent buffer, each shared (tied) tensor once."""
    seen: set[int] = set()
    for t in model.state_dict().values():
        key = t.untyped_storage().data_ptr()
        if key in seen and t.numel():
            continue
        seen.add(key)
        yield key, t.numel() * t.element_size()


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, each shared (tied) tensor counted once."""
    return sum(n for _, n in _distinct(model))


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


def size_breakdown(model: nn.Module) -> dict[str, int | str]:
    """Bytes of the whole model split into quantized layers, embeddings (every embedding table), the
    output head (when it is not tied to the input embeddings) and everything else, each shared tensor
    counted once; with the policy the embeddings and head were stored under."""
    embeds = {id(m) for m in model.modules() if isinstance(m, (nn.Embedding, QuantizedEmbedding))}
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    owner: dict[int, str] = {}
    quantized = False
    for m in model.modules():
        kind = ("embeddings" if id(m) in embeds else "head" if m is head else
                "quantized_layers" if isinstance(m, QuantizedLinear) or hasattr(m, "quant_nbytes") else None)
        quantized |= kind == "embeddings" and isinstance(m, QuantizedEmbedding)
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            if kind is not None:
                owner.setdefault(t.untyped_storage().data_ptr(), kind)
    out = {"quantized_layers": 0, "embeddings": 0, "head": 0, "other": 0}
    for key, n in _distinct(model):
        out[owner.get(key, "other")] += n
    head_q = head is not None and (isinstance(head, QuantizedLinear) or hasattr(head, "quant_nbytes"))
    policy = ("embeddings quantized" if quantized else "embeddings kept as stored") + \
             ("; no output head" if head is None else "; head tied to the embeddings" if not out["head"] else
              "; head quantized" if head_q else "; head kept as stored")
    return {**out, "total": sum(out.values()), "embeddings_policy": policy}


def gguf_size_breakdown(path: str) -> dict[str, int | str]:
    """The same split for a GGUF file, by tensor name: ``token_embd`` (and position / type tables) are the
    embeddings, ``output.weight`` the head, other 2-D tensors the quantized layers; the rest (norms,
    biases) other. ``total`` is the whole file, metadata included."""
    import os

    import gguf

    out = {"quantized_layers": 0, "embeddings": 0, "head": 0, "other": 0}
    types = {}
    for t in gguf.GGUFReader(path).tensors:
        kind = ("embeddings" if t.name.startswith(("token_embd", "position_embd", "token_types")) else
                "head" if t.name == "output.weight" else "quantized_layers" if len(t.shape) >= 2 else "other")
        out[kind] += int(t.n_bytes)
        if kind in ("embeddings", "head"):
            types[kind] = t.tensor_type.name
    policy = "in the file: " + ", ".join(f"{k} {types[k]}" for k in ("embeddings", "head") if k in types) + \
             ("" if "head" in types else "; head tied to the embeddings")
    return {**out, "total": os.path.getsize(path), "embeddings_policy": policy}
