"""Write a model as a GGUF file that llama.cpp loads, in any lowbit GGML type or mix: the Llama family
(llama, mistral), qwen2, qwen3, phi3, gemma2, gemma3 and the BERT encoder (formats/ggml/names.py).

    handle (float or lowbit-quantized) -> float32 tensors in GGUF names and layout -> per-tensor type
    from the mix (writers/gguf_mix.py) -> bytes (formats/ggml, bit-exact with llama.cpp) -> GGUFWriter
    -> temp file -> atomic rename

The metadata llama.cpp needs comes from the model config (``{arch}.*`` keys); the tokenizer is copied
from the GGUF the model was loaded from, or converted from a Hugging Face byte-level BPE tokenizer.
An importance matrix (GGUF tensor name -> per-column weights) feeds the weighted searches; a tensor it
does not cover is quantized without one, with a warning, as llama.cpp does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
import torch

from lowbit.errors import ExportError, InputError
from lowbit.formats.ggml import GGML_TYPES
from lowbit.formats.ggml.names import arch_kv, arch_of, gguf_name, permute_qk, unpermute_qk
from lowbit.loaders.handle import ModelHandle
from lowbit.writers.gguf_extra import data_bytes, extras_of, order_key
from lowbit.writers.gguf_mix import MIXES, NEEDS_IMATRIX, MixPlanner, parse_overrides
from lowbit.writers.gguf_vocab import hf_tokenizer_kv
from lowbit.writers.guard import check_output

log = logging.getLogger(__name__)

_V = gguf.GGUFValueType
_ARRAY_DTYPES = {_V.UINT8: "<u1", _V.INT8: "<i1", _V.UINT16: "<u2", _V.INT16: "<i2", _V.UINT32: "<u4",
                 _V.INT32: "<i4", _V.UINT64: "<u8", _V.INT64: "<i8", _V.FLOAT32: "<f4", _V.FLOAT64: "<f8",
                 _V.BOOL: "?"}


class _Writer(gguf.GGUFWriter):
    """gguf-py's writer, packing a metadata array in one go instead of item by item (which costs a
    third of a second for a 49k-token vocabulary and its merges). Same bytes; strings that came from a
    file are re-encoded with surrogateescape, so undecodable token bytes are written back unchanged."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        if vtype != _V.ARRAY or self.endianess != gguf.GGUFEndian.LITTLE or isinstance(val, bytes) or not len(val):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        ltype = sub_type if sub_type is not None else _V.get_type(val[0])
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
        if ltype == _V.STRING:
            enc = [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else bytes(v) for v in val]
            return head + b"".join([struct.pack("<Q", len(e)) + e for e in enc])
        if ltype in _ARRAY_DTYPES:
            return head + np.asarray(val, dtype=_ARRAY_DTYPES[ltype]).tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def tensor_names(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(Hugging Face name, GGUF name) of every tensor to write, in file order. A tied output head is
    left out (llama.cpp reuses token_embd); quantized layers count by their (buffer) weights."""
    tie = getattr(model.config, "tie_word_embeddings", False)
    drops = arch_of(model.config).drops
    names: list[tuple[str, str]] = []
    seen: set[int] = set()
    for hf, p in model.named_parameters(remove_duplicate=False):
        if hf.startswith(drops):
            continue
        g = gguf_name(hf, model.config)
        if g is None and id(p) in seen:  # a tied head the architecture has no name for (gemma2): the embedding
            continue
        if g is None:
            raise ExportError(f"{hf}: llama.cpp's {arch_of(model.config).arch} architecture has no tensor of that name")
        if g == "output.weight" and id(p) in seen:
            continue
        seen.add(id(p))
        names.append((hf, g))
    have = {h for h, _ in names}
    for base, mod in model.named_modules():
        if f"{base}.".startswith(drops):
            continue
        g = gguf_name(f"{base}.weight", model.config)
        if hasattr(mod, "dequantize") and g and f"{base}.weight" not in have and not (base == "lm_head" and tie):
            names.append((f"{base}.weight", g))
    names.sort(key=lambda hg: order_key(hg[1]))  # llama.cpp's order (llama-quantize writes its files in it)
    return names


def _shape(model: torch.nn.Module, mods: dict[str, torch.nn.Module], hf: str) -> tuple[int, ...]:
    base, _, leaf = hf.rpartition(".")
    mod = mods.get(base)
    if leaf == "weight" and hasattr(mod, "dequantize"):
        return (mod.out_features, mod.in_features)
    return tuple(model.get_parameter(hf).shape)


def _float_tensor(model: torch.nn.Module, mods: dict[str, torch.nn.Module], hf: str, g: str) -> np.ndarray:
    """One tensor as float32 in GGUF's row-major PyTorch layout (q and k rows permuted for llama.cpp's rope)."""
    cfg = model.config
    base, _, leaf = hf.rpartition(".")
    mod = mods.get(base)
    t = mod.dequantize(torch.float32) if leaf == "weight" and hasattr(mod, "dequantize") else model.get_parameter(hf)
    a = _llama_rows(t.detach().to(torch.float32).contiguous().numpy(), g, cfg)
    shift = arch_of(cfg).norm_shift
    return a + np.float32(shift) if shift and g.endswith("norm.weight") else a


def _llama_rows(a: np.ndarray, g: str, cfg: Any) -> np.ndarray:
    """attn_q / attn_k rows (values, or a row's GGML blocks) in llama.cpp's rope order, for the
    architectures whose converter permutes them; others as they are."""
    if not arch_of(cfg).permute_qk:
        return a
    if g.endswith("attn_q.weight"):
        return permute_qk(a, cfg.num_attention_heads)
    if g.endswith("attn_k.weight"):
        return permute_qk(a, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    return a


def _own_blocks(model: torch.nn.Module, mods: dict[str, torch.nn.Module], hf: str, g: str, t: str) -> np.ndarray | None:
    """The GGML blocks of a layer stored in type ``t`` already (GGMLLinear), rows in llama.cpp's order."""
    base, _, leaf = hf.rpartition(".")
    mod = mods.get(base)
    if leaf != "weight" or getattr(mod, "ggml_type", None) != t:
        return None
    return np.ascontiguousarray(_llama_rows(mod.raw(), g, model.config))


def float_tensors(handle: ModelHandle) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in GGUF's row-major PyTorch layout) for every tensor, in file order."""
    mods = dict(handle.model.named_modules())
    for hf, g in tensor_names(handle.model):
        yield g, _float_tensor(handle.model, mods, hf, g)


def check_arch(handle: ModelHandle) -> Any:
    """The model's config, if llama.cpp runs its architecture (else one error listing those it does)."""
    cfg = getattr(handle.model, "config", None)
    if cfg is None:
        raise InputError(f"GGUF export needs a Hugging Face model with a config; {handle.name} is "
                         f"{type(handle.model).__name__}")
    arch_of(cfg, handle.name)
    return cfg


def _copy_kv(w: gguf.GGUFWriter, src: str, skip: Callable[[str], bool]) -> None:
    from lowbit.loaders.gguf_check import read_metadata

    for key, vtype, value in read_metadata(Path(src)):
        if key.startswith("GGUF.") or skip(key):
            continue
        if vtype == gguf.GGUFValueType.ARRAY:
            sub, items = value
            w.add_key_value(key, items, gguf.GGUFValueType(vtype), sub_type=gguf.GGUFValueType(sub))
        else:
            w.add_key_value(key, value, gguf.GGUFValueType(vtype))


IN_FLIGHT = 3  # tensors queued on the quantizing pool at once: both cores busy, memory bounded
_UNQUANTIZED = ("F32", "F16", "BF16")


class _Planned(NamedTuple):
    """One tensor of the file: its Hugging Face and GGUF names, shape, GGML type and imatrix row."""

    hf: str
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    imatrix: np.ndarray | None
    value: np.ndarray | None = None  # a tensor no parameter holds (gguf_extra.py), written as it is


def export_gguf(handle: ModelHandle, out: str | Path, mix: str = "Q8_0", *,
                imatrix: dict[str, np.ndarray] | None = None, tensor_types: list[str] | None = None,
                overwrite: bool = False, progress: Callable[[str], None] | None = None,
                lazy: Any = None, imatrix_kv: list[tuple[str, str | int]] | None = None) -> dict[str, Any]:
    """Write ``handle`` to ``out`` as GGUF in ``mix`` (a llama.cpp type or mix name such as Q4_K_M).
    With ``lazy`` (loaders/lazy.py's LazyModel, of which ``handle`` is the handle) each tensor is read
    from the model's files just before it is converted and freed after: memory is a few tensors.
    ``imatrix_kv`` (calib.imatrix.Imatrix.gguf_kv) records the importance matrix as llama-quantize does.

    Returns a summary: the type of every tensor, the fallbacks taken, tensors without imatrix data.
    """
    mix = mix.upper()
    if mix not in MIXES:
        raise InputError(f"unknown GGUF type {mix!r}; choose one of {', '.join(MIXES)}")
    cfg = check_arch(handle)
    out = _check_out(Path(out), overwrite)
    tied = not any(g == "output.weight" for _, g in tensor_names(handle.model))
    planner = MixPlanner(mix, cfg.num_hidden_layers, cfg.num_attention_heads,
                         getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, tied,
                         has_imatrix=imatrix is not None, overrides=parse_overrides(tensor_types))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    missing: list[str] = []
    pending: deque[Callable[[], np.ndarray]] = deque()
    w = _Writer(tmp, arch_of(cfg).arch)
    try:
        _write_kv(w, handle, cfg, mix, imatrix_kv)
        # Every tensor's type and size first: the header and tensor table go out before any data,
        # then each tensor's bytes are written as soon as they are ready, while later ones quantize.
        model, mods = handle.model, dict(handle.model.named_modules())
        plan = _plan(model, mods, planner, imatrix, missing, extras_of(handle))
        for p in plan:
            _add_tensor_info(w, p.name, p.shape, p.ggml_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        _write_tensors(w, model, mods, plan, pending, progress, lazy)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        for wait in pending:  # drop queued work (a running chunk finishes on its own)
            getattr(wait, "cancel", lambda: None)()
        with contextlib.suppress(Exception):
            w.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    for f in planner.fallbacks:
        log.info("fallback: %s", f)
    types = {p.name: p.ggml_type for p in plan}
    return {"path": str(out), "mix": mix, "types": types, "fallbacks": planner.fallbacks, "no_imatrix": missing}


def _check_out(out: Path, overwrite: bool) -> Path:
    check_output(out, overwrite)
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a .gguf file name")
    return out


def header_bytes(handle: ModelHandle, mix: str, imatrix_kv: list[tuple[str, str | int]] | None = None) -> int:
    """Bytes of the file :func:`export_gguf` writes that no tensor type changes: the metadata and tensor
    table, padded to the alignment, and the F32 rope-factor tensors (gguf_extra.py)."""
    cfg = check_arch(handle)
    fd, tmp = tempfile.mkstemp(suffix=".gguf")
    os.close(fd)
    w = _Writer(tmp, arch_of(cfg).arch)
    try:
        _write_kv(w, handle, cfg, mix, imatrix_kv)
        mods = dict(handle.model.named_modules())
        extras = extras_of(handle)
        for hf, g in tensor_names(handle.model):
            _add_tensor_info(w, g, _shape(handle.model, mods, hf), "F32")
        for g, a in extras.items():  # the table's size does not depend on its order
            _add_tensor_info(w, g, a.shape, "F32")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        return gguf.GGUFWriter.ggml_pad(os.path.getsize(tmp), w.data_alignment) + data_bytes(extras, w.data_alignment)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_kv(w: gguf.GGUFWriter, handle: ModelHandle, cfg: Any, mix: str,
              imatrix_kv: list[tuple[str, str | int]] | None = None) -> None:
    """The metadata: copied from the GGUF the model came from, or built from its config and tokenizer."""
    if handle.gguf_source:
        _copy_kv(w, handle.gguf_source, lambda k: k in ("general.architecture", "general.file_type",
                                                         "general.quantization_version"))
    else:
        arch_kv(w, cfg, Path(handle.name).name)
        if handle.tokenizer is None:
            raise ExportError("GGUF export needs the model's tokenizer (none was loaded)")
        hf_tokenizer_kv(w, handle.tokenizer)
    if mix not in _UNQUANTIZED:  # in llama-quantize's order: it sets the version, then the file type
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(MIXES[mix][1])
    for key, value in imatrix_kv or ():  # after the file type, as llama-quantize's overrides
        (w.add_string if isinstance(value, str) else w.add_uint32)(key, value)


def _plan(model: torch.nn.Module, mods: dict[str, torch.nn.Module], planner: MixPlanner,
          imatrix: dict[str, np.ndarray] | None, missing: list[str], extras: dict[str, np.ndarray]) -> list[_Planned]:
    """Every tensor's type from the mix, in file order, with its imatrix row (names without one go to
    ``missing``); the ``extras`` (rope factors) F32 in their places."""
    plan = []
    for hf, name in tensor_names(model):
        shape = _shape(model, mods, hf)
        t = planner.type_for(name, shape)
        im = None
        needs = t in NEEDS_IMATRIX and name not in ("token_embd.weight", "output.weight")
        if needs and (imatrix is None or imatrix.get(name) is None):  # llama.cpp's words and refusal
            raise InputError(f"Missing importance matrix for tensor {name} in a very low-bit quantization ({t}); "
                             f"give --imatrix FILE or --calib DATA")
        if imatrix is not None and t not in (*_UNQUANTIZED, "Q8_0") and len(shape) == 2:
            im = imatrix.get(name)
            if im is None:
                missing.append(name)
                log.warning("%s: no importance-matrix data (calibration never reached it); quantized without", name)
            elif im.shape != (shape[-1],):
                raise InputError(f"importance matrix for {name} has {im.shape[0]} values, the tensor {shape[-1]} columns")
        plan.append(_Planned(hf, name, shape, t, im))
    if imatrix and not any(p.imatrix is not None for p in plan) and missing:
        raise InputError(f"the importance matrix names none of this model's tensors (it has {', '.join(list(imatrix)[:3])}; "
                         f"the model {', '.join(missing[:3])}): it was made for another model")
    plan += [_Planned("", g, a.shape, "F32", None, a) for g, a in extras.items()]
    return sorted(plan, key=lambda p: order_key(p.name))


def _add_tensor_info(w: gguf.GGUFWriter, name: str, shape: tuple[int, ...], t: str) -> None:
    """One entry of the tensor table: the name, shape, type and byte size of a tensor still to come."""
    if t in ("F32", "F16"):
        w.add_tensor_info(name, shape, np.dtype(np.float32 if t == "F32" else np.float16),
                          int(np.prod(shape)) * (4 if t == "F32" else 2))
    else:
        g = GGML_TYPES.get(t)
        rows = int(np.prod(shape[:-1]))
        w.add_tensor_info(name, shape, np.dtype(np.float32), rows * (shape[-1] // g.block_size) * g.type_size,
                          raw_dtype=gguf.GGMLQuantizationType[t])


def _write_tensors(w: gguf.GGUFWriter, model: torch.nn.Module, mods: dict[str, torch.nn.Module],
                   plan: list[_Planned], pending: deque[Callable[[], np.ndarray]],
                   progress: Callable[[str], None] | None, lazy: Any = None) -> None:
    """Every tensor's bytes in plan order; up to IN_FLIGHT quantize on the pool while the next are converted.
    ``pending`` is the caller's, so that a failure can cancel what is still queued."""
    for p in plan:
        raw = p.value if p.value is not None else _own_blocks(model, mods, p.hf, p.name, p.ggml_type)
        if raw is not None:  # a layer already in this type (trained on its grid): its bytes as they are
            pending.append(lambda raw=raw: raw)
            continue
        owner = p.hf.rpartition(".")[0]
        if lazy is not None:
            lazy.materialize(owner)
        a = _float_tensor(model, mods, p.hf, p.name)
        if lazy is not None:
            lazy.release(owner)  # the array keeps its own reference to the values
        if progress:
            progress(f"{p.name} -> {p.ggml_type}")
        if p.ggml_type == "F32":
            pending.append(lambda a=a: a)
        elif p.ggml_type == "F16":
            pending.append(lambda a=a: a.astype(np.float16))
        else:  # quantized on the pool while the next tensors are converted and queued
            pending.append(GGML_TYPES.get(p.ggml_type).quantize_async(a, p.imatrix))
        del a
        while len(pending) > IN_FLIGHT:
            w.write_tensor_data(pending.popleft()())
    while pending:
        w.write_tensor_data(pending.popleft()())


def load_into(path: str | Path, like: ModelHandle) -> ModelHandle:
    """The torch model a GGUF file written by :func:`export_gguf` describes: its tensors dequantized
    (by gguf-py, llama.cpp's own decoder) into a copy of ``like``, q/k rows un-permuted. Evaluates a
    GGUF's exact weights in torch without writing a dequantized copy to the cache."""
    import copy

    r = gguf.GGUFReader(str(path))
    data = {t.name: t for t in r.tensors}
    model = copy.deepcopy(like.model)
    for hf, g in tensor_names(model):
        if g not in data:
            raise InputError(f"{path}: no tensor {g}; not a file lowbit exported from this model")
        t = data[g]
        put_tensor(model, hf, g, np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    return ModelHandle(model=model, tokenizer=like.tokenizer, kind=like.kind, name=str(path))



def put_tensor(model: torch.nn.Module, hf: str, g: str, a: np.ndarray) -> None:
    """Set the model's tensor ``hf`` from values in GGUF layout (``g``'s q/k rows un-permuted, Gemma's norm
    shift taken off): the inverse of :func:`float_tensors` for one tensor."""
    cfg = model.config
    arch = arch_of(cfg)
    kind = g.split(".")[-2]
    if arch.permute_qk and kind in ("attn_q", "attn_k"):
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        a = unpermute_qk(a, cfg.num_attention_heads if kind == "attn_q" else kv)
    if arch.norm_shift and g.endswith("norm.weight"):
        a = a - np.float32(arch.norm_shift)
    p = model.get_parameter(hf)
    p.data.copy_(torch.from_numpy(np.array(a, copy=True).reshape(p.shape)))
