"""Reading lowbit's native checkpoint (writers/checkpoint.py writes it; docs/format.md has the layout).

Reloading rebuilds the architecture from config.json, swaps in the recorded quantized modules (each
layer kind from its record: integer grids, NF4/FP4, LLM.int8, W8A8, GGML blocks) and loads the tensors as
they were saved, so logits are bit-identical. A checkpoint written by a newer lowbit (a higher
``format_version``, or a method config of a higher version) is refused with one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, ModelHandle
from lowbit.spec import QuantSpec

FORMAT_VERSION = 1


def load_checkpoint(path: str | Path) -> ModelHandle:
    """Rebuild a model saved by :func:`save_checkpoint`."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    raw = _raw_config(path)
    record, tensors = _read_tensors(path, raw.pop("quantization_config", None))
    _check_versions(record, path)
    check_record(record, path)
    config = _config(raw, path)
    from lowbit.loaders.validate import check_layer_count

    check_layer_count(raw, tensors, str(path))
    cls = AutoModelForCausalLM if record.get("kind") == CAUSAL_LM else AutoModel
    try:
        model = cls.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}/config.json: transformers cannot build the model: {str(e).splitlines()[0]}") from None
    swap_layers(model, record, path)
    _check_shapes(model, tensors, record, path)
    from lowbit.loaders.validate import check_finite

    check_finite(tensors.items(), str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k not in record.get("tied", {})]
    if missing or unexpected:
        raise InputError(f"{path}: checkpoint does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for dup, kept in record.get("tied", {}).items():
        _tie(model, dup, kept)
    tokenizer = None
    if any(path.glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(path)
    return ModelHandle(model=model.eval(), tokenizer=tokenizer, kind=record.get("kind", CAUSAL_LM),
                       name=str(path), path=str(path), quant=record)


def swap_layers(model: nn.Module, record: dict[str, Any], path: Path | str = "checkpoint") -> None:
    """Put the recorded quantized module in place of each float layer (empty: the tensors come next)."""
    for name, info in record["layers"].items():
        try:
            _swap_one(model, name, info)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: layer {name} of the quantization record cannot be rebuilt "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _swap_one(model: nn.Module, name: str, info: dict[str, Any]) -> None:
    from lowbit.modules.qembedding import QuantizedEmbedding
    from lowbit.modules.qlinear import QuantizedLinear

    mod = model.get_submodule(name)
    if info.get("module") not in (*LAYER_MODULES, *GRID_MODULES):
        raise ValueError(f"unknown module kind {info.get('module')!r}")
    if info.get("module") in LAYER_MODULES:  # layers that are not integer grids (NF4, LLM.int8, W8A8)
        _set_submodule(model, name, _layer_module(info["module"]).empty(mod, info))
        return
    spec = QuantSpec.from_dict(info["spec"])
    if info.get("module") == "embedding":
        q: nn.Module = QuantizedEmbedding(mod.num_embeddings, mod.embedding_dim, spec, mod.padding_idx)
    elif info.get("module") == "conv2d":
        from lowbit.modules.qconv import QuantizedConv2d

        q = QuantizedConv2d(mod, spec)
    else:
        q = QuantizedLinear(mod.in_features, mod.out_features, spec, mod.bias is not None)
    _set_submodule(model, name, q)


def open_checkpoint(path: str | Path) -> Any:
    """A lowbit checkpoint opened lazily (loaders/lazy.py): quantized layers on meta until read, so a
    model larger than memory evaluates block by block."""
    from transformers import AutoTokenizer

    from lowbit.loaders.lazy import LazyModel, build_on_meta
    from lowbit.loaders.safetensors_source import SafetensorsSource

    path = Path(path)
    raw = _raw_config(path)
    record = raw.pop("quantization_config", None)
    if not (isinstance(record, dict) and record.get("quant_method") == "lowbit"):
        raise InputError(f"{path}/config.json has no lowbit quantization record")
    _check_versions(record, path)
    check_record(record, path)
    config = _config(raw, path)
    source = SafetensorsSource(path)
    from lowbit.loaders.validate import check_layer_count

    check_layer_count(raw, source.shapes, str(path))
    model, kind = build_on_meta(config, record.get("kind", CAUSAL_LM))
    with torch.device("meta"):
        swap_layers(model, record, path)
    _check_shapes(model, source.shapes, record, path)
    tied = record.get("tied", {})
    files: dict[str, str] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        key = tied.get(name, name)
        if key in source.dtypes:
            files[name] = key
        elif value.device.type == "meta":
            raise InputError(f"{path}: checkpoint does not match its config (no tensor {name})")
    ties: dict[str, list[str]] = {}
    for dup, kept in tied.items():
        ties.setdefault(kept, [kept]).append(dup)
        ties[dup] = ties[kept]
    tokenizer = AutoTokenizer.from_pretrained(path) if any(path.glob("tokenizer*")) else None
    return LazyModel(model, source, files, {n: source.dtypes[k] for n, k in files.items()}, kind, str(path),
                     str(path), tokenizer, ties=ties, quant=record)


def _read_tensors(path: Path, record: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The quantization record and every tensor: one model.safetensors (its metadata repeats the record),
    or the shards of a streamed run (model.safetensors.index.json; the record is config.json's)."""
    from safetensors import safe_open

    from lowbit.loaders.safetensors_source import INDEX, SafetensorsSource

    single = path / "model.safetensors"
    if (path / INDEX).is_file():
        source = SafetensorsSource(path)
        return record, {k: source.get(k) for k in source.files}
    if not single.is_file():
        raise InputError(f"{path}: lowbit checkpoint without model.safetensors or {INDEX}")
    try:
        with safe_open(str(single), framework="pt") as f:
            record = json.loads(f.metadata()["lowbit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types for corrupt files)
        raise InputError(f"{single} cannot be read: {e}") from None
    return record, tensors


def _raw_config(path: Path) -> dict[str, Any]:
    from lowbit.loaders.dispatch import read_json
    from lowbit.loaders.validate import check_config

    raw = read_json(path / "config.json")
    check_config(raw, f"{path}/config.json")
    if not isinstance(raw.get("model_type"), str):
        raise InputError(f"{path}/config.json has no model_type")
    return raw


def _config(raw: dict[str, Any], path: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "model_type"}, model_type=raw["model_type"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}/config.json: transformers cannot read it: {str(e).splitlines()[0]}") from None


def check_record(record: Any, path: Path) -> None:
    """The quantization record's shape: a ``layers`` object of layer name -> an object with a spec."""
    layers = record.get("layers") if isinstance(record, dict) else None
    if not isinstance(layers, dict):
        raise InputError(f"{path}: the quantization record has no 'layers' object")
    for name, info in layers.items():
        if not isinstance(info, dict) or not isinstance(info.get("spec", {}), dict):
            raise InputError(f"{path}: the quantization record's entry for layer {name} is not an object with a spec")
    tied = record.get("tied", {})
    if not (isinstance(tied, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items())):
        raise InputError(f"{path}: the quantization record's 'tied' must map tensor names to tensor names")


def _check_shapes(model: nn.Module, stored: dict[str, Any], record: dict[str, Any], path: Path) -> None:
    """Each stored tensor against what the record's layer (its bits, group size, format) makes of it."""
    layers = record["layers"]
    names = model.state_dict(keep_vars=True)
    for dup, kept in record.get("tied", {}).items():
        if dup not in names or kept not in names:
            raise InputError(f"{path}: the quantization record ties {dup} to {kept}, which this model does not have")
    for name, value in names.items():
        got = stored.get(record.get("tied", {}).get(name, name))
        if got is None:
            continue
        got = tuple(got.shape) if hasattr(got, "shape") else tuple(got)
        if got != tuple(value.shape):
            owner = next((n for n in layers if name.startswith(f"{n}.")), None)
            spec = f" (layer {owner}: {layers[owner].get('spec') or layers[owner].get('module')})" if owner else ""
            raise InputError(f"{path}: tensor {name} has shape {list(got)}, expected {list(value.shape)}{spec}; "
                             f"the record does not match the stored tensors")


def _check_versions(record: Any, path: Path) -> None:
    """Refuse a checkpoint this lowbit cannot read: a newer layout (the record's ``format_version``) or
    a newer method config (the record's ``method.version`` above its config class's ``version``)."""
    found = record.get("format_version") if isinstance(record, dict) else None
    if not _readable(found, FORMAT_VERSION):
        raise InputError(f"{path}: checkpoint format_version {found!r} was written by a newer lowbit; this lowbit "
                         f"reads format_version {FORMAT_VERSION} and older; upgrade lowbit to load it")
    method = record.get("method")
    if isinstance(method, dict) and "method" in method and "version" in method:
        from lowbit.methods import METHODS, get_method

        name = method["method"]
        # The version alone, not config.from_dict(record): a converted QAT model's record carries training
        # fields and its grid's spec beside the config's own options.
        if name in METHODS and not _readable(method["version"], supported := get_method(name).config.version):
            raise InputError(f"{path}: {name} config version {method['version']!r} was written by a newer lowbit; "
                             f"this lowbit reads {name} config version {supported} and older; upgrade lowbit to load it")


def _readable(version: Any, supported: int) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version <= supported


LAYER_MODULES = {"bnb4": "lowbit.modules.bnb4_linear:Linear4bit", "llm_int8": "lowbit.modules.int8_linear:LinearInt8",
                 "w8a8": "lowbit.modules.w8a8_linear:W8A8Linear", "ggml": "lowbit.modules.ggml_linear:GGMLLinear"}


GRID_MODULES = (None, "linear", "embedding", "conv2d")  # integer grids: QuantizedLinear / Embedding / Conv2d


def _layer_module(key: str) -> Any:
    import importlib

    mod, _, cls = LAYER_MODULES[key].partition(":")
    return getattr(importlib.import_module(mod), cls)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _tie(model: nn.Module, dup: str, kept: str) -> None:
    mod_name, _, leaf = dup.rpartition(".")
    kmod, _, kleaf = kept.rpartition(".")
    src = getattr(model.get_submodule(kmod) if kmod else model, kleaf)
    dst = model.get_submodule(mod_name) if mod_name else model
    if isinstance(src, nn.Parameter):
        dst._parameters[leaf] = src
    else:
        dst._buffers[leaf] = src
