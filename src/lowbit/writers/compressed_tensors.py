"""Export to compressed-tensors' ``pack-quantized`` format: what llm-compressor writes, and what
vLLM and ``transformers`` (with ``compressed-tensors`` installed) load.

Layout, matched to compressed-tensors 0.20 (``compressors/pack_quantized``, ``lifecycle/forward.py``)::

    DIR/config.json        the model's config, ``dtype`` = the model's float dtype, and
                           quantization_config {"quant_method": "compressed-tensors",
                           "format": "pack-quantized", "config_groups": ..., "ignore": [...]}
    DIR/model.safetensors  per quantized Linear NAME (weight shape (out, in), b bits, n groups):
        NAME.weight_packed      int32 (out, ceil(in*b/32))   codes, dense little-endian per row
        NAME.weight_scale       model dtype, (out, n) group / (out, 1) channel / (1,) tensor
        NAME.weight_zero_point  asym only: int32 (ceil(out*b/32), n) packed down the columns
                                (group, channel), int8 (1,) unpacked (tensor)
        NAME.weight_shape       int64 (2,) = [out, in]
        NAME.bias               as is
                           every other tensor as is; tied copies stored once (transformers re-ties)
    DIR/tokenizer*         the tokenizer, when the model has one

Codes: compressed-tensors computes ``w = (q - zp) * scale`` with signed ``q, zp`` in
``[-2**(b-1), 2**(b-1) - 1]`` (zp absent = 0 for symmetric schemes); lowbit stores ``u`` in
``[0, 2**b - 1]`` with ``w = (u - z) * scale`` and ``z = 2**(b-1)`` when symmetric. So
``q = u - 2**(b-1)`` and ``zp = z - 2**(b-1)``: ``q - zp == u - z``, the same weights. Packing adds
``2**(b-1)`` back before writing, so the packed bits *are* lowbit's ``u`` (and ``z``)::

    row r of weight_packed: a little-endian bit stream, code c at bits [c*b, (c+1)*b)
    b=4  word k = u[8k] | u[8k+1] << 4 | ... | u[8k+7] << 28
    b=3  word 0 = u0 | u1 << 3 | ... | u9 << 27 | (u10 & 3) << 30 ; word 1 = u10 >> 2 | u11 << 1 | ...

2, 4 and 8 bits pack the same in every release that takes them. 3/5/6/7 bits are packed densely (codes straddle
words) since compressed-tensors PR #732 (in 0.20); older releases refuse them or put ``32 // b`` codes in
each word, so they misread a 3/5/6/7-bit export: ``version`` in the config says which layout it is.

Scales are written in the model's float dtype (compressed-tensors creates ``weight_scale`` in the
weight's dtype and dequantizes in the scale's dtype); an export whose scales that dtype cannot hold
exactly is refused, so the loaded weights equal lowbit's dequantized weights bit for bit.
The directory is written beside its final path and renamed into place: never half-written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.bitpack import pack_codes
from lowbit.errors import ExportError
from lowbit.loaders.handle import ModelHandle
from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec
from lowbit.writers.guard import check_output
from lowbit.writers.hfdir import write_model_dir

#: compressed-tensors release whose pack-quantized layout this writer follows (dense packing).
CT_FORMAT_VERSION = "0.20.0"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (rows, cols) < 2**bits as compressed-tensors' ``pack_to_int32`` does.

    Each row becomes ceil(cols*bits/32) int32 words: the row is padded to a multiple of 32 codes,
    packed as one little-endian bit stream (32 codes fill exactly ``bits`` words), and cut.
    """
    rows, cols = codes.shape
    padded = math.ceil(cols / 32) * 32
    c = torch.nn.functional.pad(codes.to(torch.uint8), (0, padded - cols))
    stream = pack_codes(c.reshape(-1), bits).to(torch.int64).view(-1, 4)  # rows * padded*bits/32 words
    word = stream[:, 0] | stream[:, 1] << 8 | stream[:, 2] << 16 | stream[:, 3] << 24
    word = torch.where(word >= 1 << 31, word - (1 << 32), word).to(torch.int32)  # two's complement
    return word.view(rows, padded * bits // 32)[:, : math.ceil(cols * bits / 32)].contiguous()


def weights_args(spec: QuantSpec) -> dict[str, Any]:
    """compressed-tensors ``QuantizationArgs`` for ``spec``, as its config.json spells them."""
    if spec.group_size == PER_TENSOR:
        strategy, group = "tensor", None
    elif spec.group_size == PER_CHANNEL:
        strategy, group = "channel", None
    else:
        strategy, group = "group", spec.group_size
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric, "group_size": group,
            "strategy": strategy, "dynamic": False}


def layer_tensors(name: str, qt: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one QuantizedTensor ``qt`` (weight shape (out, in))."""
    spec: QuantSpec = qt.spec
    out_f, in_f = qt.shape
    scale = qt.scale.to(dtype)
    if not torch.equal(scale.to(qt.scale.dtype), qt.scale):
        raise ExportError(
            f"scales of {name!r} are {spec.scale_dtype} values that {str(dtype).removeprefix('torch.')} (the "
            "model's dtype, which compressed-tensors stores scales in) cannot hold exactly; export a float32 "
            "model or quantize with a matching scale_dtype"
        )
    n = 1 if spec.group_size == PER_TENSOR else spec.n_blocks(qt.shape) // out_f  # scale columns per row
    t = {
        "weight_packed": pack_rows(qt.codes().view(out_f, in_f), spec.bits),
        "weight_scale": scale.view(1) if spec.group_size == PER_TENSOR else scale.view(out_f, n),
        "weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64),
    }
    if not spec.symmetric:
        if spec.group_size == PER_TENSOR:  # compressed-tensors packs group/channel zero points only
            t["weight_zero_point"] = (qt.zero.to(torch.int16) - spec.mid).to(torch.int8).view(1)
        else:  # packed along dim 0: each column of the (out, n) zero points is one bit stream
            t["weight_zero_point"] = pack_rows(qt.zero.view(out_f, n).t(), spec.bits).t().contiguous()
    return {f"{name}.{k}": v for k, v in t.items()}


def _model_dtype(model: nn.Module, quantized: set[str]) -> torch.dtype:
    """The float dtype of the tensors kept as they are (what ``dtype="auto"`` will load them in)."""
    dtypes = {p.dtype for n, p in model.named_parameters()
              if p.is_floating_point() and n.rpartition(".")[0] not in quantized}
    if len(dtypes) > 1:
        raise ExportError(f"the model mixes float dtypes {sorted(map(str, dtypes))}; cast it to one dtype first")
    dtype = dtypes.pop() if dtypes else torch.float32
    if dtype not in _FLOAT_DTYPES:
        raise ExportError(f"model dtype {dtype} is not one compressed-tensors stores scales in; use float32")
    return dtype


def _dense_tensors(model: nn.Module, quantized: set[str],
                   state: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """Every state-dict tensor outside the packed buffers, and whether a declared tie is broken.

    safetensors refuses tensors that share storage. A tied copy that transformers re-ties from the
    config (``all_tied_weights_keys``: lm_head.weight -> model.embed_tokens.weight) is left out, as
    ``save_pretrained`` does; any other shared tensor is cloned. A tie is broken when its target is
    quantized (a packed lm_head) or stored on its own: the config must then not re-tie it.
    """
    packed = {f"{n}.{b}" for n in quantized for b in ("qweight", "scale", "zero")}
    ties = _declared_ties(model)
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for k, v in (model.state_dict(keep_vars=True) if state is None else state).items():
        if k in packed:
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride()) if v.numel() else (k,)
        if key in seen and k in ties and ties[k] in (seen[key], None):
            continue
        out[k] = v.detach().clone() if key in seen else v.detach().contiguous()
        seen.setdefault(key, k)
    broken = any(t in out or t.rpartition(".")[0] in quantized for t in ties)
    return out, broken


def _declared_ties(model: nn.Module) -> dict[str, str | None]:
    """{tied target: source} that transformers re-ties on load (source None: any earlier twin)."""
    ties = getattr(model, "all_tied_weights_keys", None)  # transformers >= 5, already config-aware
    if ties is not None:
        return dict(ties)
    legacy = getattr(model, "_tied_weights_keys", None) or []  # transformers 4: a list of targets
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return {}
    return dict(legacy) if isinstance(legacy, dict) else dict.fromkeys(legacy)


def quantization_config(specs: dict[str, QuantSpec], kept: list[str]) -> dict[str, Any]:
    """compressed-tensors' quantization_config: one group per distinct scheme.

    One scheme over every quantized Linear -> targets ["Linear"] with the kept Linear layers in
    ``ignore``; several -> explicit module names per group (``ignore`` still lists the kept ones).
    """
    groups: dict[str, list[str]] = {}
    args: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        a = weights_args(spec)
        key = json.dumps(a, sort_keys=True)
        groups.setdefault(key, []).append(name)
        args[key] = a
    single = len(groups) == 1
    config_groups = {
        f"group_{i}": {"targets": ["Linear"] if single else names, "weights": args[key],
                       "input_activations": None, "output_activations": None, "format": None}
        for i, (key, names) in enumerate(groups.items())
    }
    return {"config_groups": config_groups, "format": "pack-quantized", "global_compression_ratio": None,
            "ignore": kept, "kv_cache_scheme": None, "moe_sparsity_config": None, "quant_method": "compressed-tensors",
            "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
            "version": CT_FORMAT_VERSION}


def _collect(model: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """(quantized Linear name -> module, names of the Linear layers kept in full precision)."""
    from lowbit.loaders.checkpoint import LAYER_MODULES, _layer_module
    from lowbit.modules.qembedding import QuantizedEmbedding
    from lowbit.modules.qlinear import QuantizedLinear

    quantized: dict[str, Any] = {}
    kept: list[str] = []
    other = {_layer_module(key): key for key in LAYER_MODULES}  # lowbit's non-grid layer classes -> record key
    for name, mod in model.named_modules():
        if type(mod) in other:
            raise ExportError(f"{name!r} is stored as {other[type(mod)]} (not an integer grid): "
                              "compressed-tensors' pack-quantized holds integer grids only; save it as a lowbit "
                              "checkpoint, or quantize that layer to an integer grid")
        if isinstance(mod, QuantizedEmbedding):
            raise ExportError(
                f"{name!r} is a quantized embedding: the pack-quantized export writes quantized Linear layers "
                "only; quantize without embeddings=True (--embeddings) to export it"
            )
        if isinstance(mod, QuantizedLinear):
            quantized[name] = mod
        elif any(c.__name__ == "Linear" for c in type(mod).__mro__):  # what the target "Linear" matches
            kept.append(name)
    return quantized, kept


def export_compressed_tensors(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``handle`` (quantized by lowbit) as a compressed-tensors ``pack-quantized`` directory.

    >>> q, _ = lowbit.quantize("smollm2", lowbit.make_config("rtn", QuantSpec(4, False, 64)))  # doctest: +SKIP
    >>> export_compressed_tensors(q, "smollm2-w4a16-ct")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("smollm2-w4a16-ct")  # decompresses  # doctest: +SKIP
    """

    out = check_output(out, overwrite)
    if handle.quant is None:
        raise ExportError("this model is not quantized by lowbit; quantize it before exporting to compressed-tensors")
    model = handle.model
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ExportError("only models with a Hugging Face config can be exported to compressed-tensors")
    layers, kept = _collect(model)
    if not layers:
        raise ExportError("the model has no quantized Linear layer; nothing to export as pack-quantized")
    dtype = _model_dtype(model, set(layers))
    tensors, broken_tie = _dense_tensors(model, set(layers))
    tensors.update(packed_tensors(layers, dtype))
    return write_model_dir(out, tensors, model_config(model, layers, kept, dtype, broken_tie), handle.tokenizer,
                           metadata={"format": "pt"})


def packed_tensors(layers: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors (and biases) of ``layers`` (name -> QuantizedLinear)."""
    tensors = {}
    for name, mod in layers.items():  # check every layer before writing anything
        tensors.update(layer_tensors(name, mod.quantized_tensor(), dtype))
        if mod.bias is not None:
            tensors[f"{name}.bias"] = mod.bias.detach().to(dtype).contiguous()
    return tensors


def model_config(model: nn.Module, layers: dict[str, Any], kept: list[str], dtype: torch.dtype,
                 broken_tie: bool) -> dict[str, Any]:
    """config.json: the model's, with its dtype and the quantization_config."""
    cfg = model.config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    if broken_tie:  # e.g. a quantized lm_head: its embedding twin stays in full precision
        cfg["tie_word_embeddings"] = False
    cfg["quantization_config"] = quantization_config({n: m.spec for n, m in layers.items()}, kept)
    return cfg
