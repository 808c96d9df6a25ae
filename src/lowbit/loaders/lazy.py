"""Open a model without loading it: the module tree with its parameters on the ``meta`` device, and a
source that reads any one tensor when it is needed.

    lazy = open_lazy("Llama-2-13b-hf")        # config + file headers only, a few MB of RAM
    lazy.materialize("model.layers.7")         # that block's weights, read from the memory map
    ...
    lazy.release("model.layers.7")             # back to meta: its memory is free

Buffers that a module computes itself (rotary ``inv_freq``, BERT's ``position_ids``) are built for real:
only parameters go to meta, so no per-architecture code is needed. Weights come from memory-mapped
safetensors (one file or shards with ``model.safetensors.index.json``) in their stored dtype, or from a
GGUF file tensor by tensor, dequantized with the ``gguf`` package and mapped to Hugging Face names by
transformers' own GGUF tables (the q/k row order that llama.cpp's converter permutes is restored).
Every parameter the model declares must be in the files, or opening fails: nothing is ever filled in
with random values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, ModelHandle

log = logging.getLogger(__name__)


class WeightSource(Protocol):
    def keys(self) -> list[str]: ...

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key``, in its stored dtype (a dequantized GGUF tensor: float32)."""
        ...


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with every parameter on ``meta`` (``torch.empty`` never touches its pages, so the
    brief CPU allocation costs nothing); buffers stay real."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


@dataclass
class LazyModel:
    """A model whose parameters live on ``meta`` until :meth:`materialize` reads them from ``source``."""

    model: nn.Module
    source: WeightSource
    files: dict[str, str]  # parameter name -> key in the source
    dtypes: dict[str, torch.dtype]  # parameter name -> stored dtype
    kind: str
    name: str
    path: str
    tokenizer: Any = None
    gguf_source: str | None = None
    ties: dict[str, list[str]] = field(default_factory=dict)  # every name of a shared parameter -> all its names
    device: str = "cpu"  # where materialized parameters go (buffers are moved by :meth:`to_device`)
    quant: dict[str, Any] | None = None  # a lowbit checkpoint's quantization record

    def __post_init__(self) -> None:
        # buffers the modules compute themselves (rotary inv_freq, Gemma's embed_scale): never released
        self.computed = {n for n, _ in self.model.named_buffers(remove_duplicate=False) if n not in self.files}

    def to_device(self, device: str) -> LazyModel:
        """Materialize onto ``device`` from now on; the (real, small) buffers move there now."""
        self.device = device
        for mod in self.model.modules():
            for key, buf in mod._buffers.items():
                if buf is not None and buf.device.type != "meta":
                    mod._buffers[key] = buf.to(device)
        return self

    def stamp(self) -> list[tuple[str, int, int]]:
        """(file, size, mtime) of every file the weights come from: what identifies this model's bytes."""
        files = sorted({str(p) for p in getattr(self.source, "files", {}).values()} | {self.path})
        return [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files if Path(f).is_file()]

    def handle(self) -> ModelHandle:
        return ModelHandle(model=self.model, tokenizer=self.tokenizer, kind=self.kind, name=self.name, path=self.path,
                           gguf_source=self.gguf_source, quant=self.quant, lazy=self)

    def names_under(self, prefix: str) -> list[str]:
        head = f"{prefix}." if prefix else ""
        return [n for n in self.files if n.startswith(head)]

    def as_stored(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` (tensor ``name``) in the dtype the source stores it in, where that is exact: a float
        parameter read as float32 and left untouched goes back to bf16; anything else stays as it is."""
        stored = self.dtypes.get(name)
        if stored is None or value.dtype == stored or not (value.is_floating_point() and stored.is_floating_point):
            return value
        cast = value.to(stored)
        return cast if torch.equal(cast.to(value.dtype), value) else value

    def read(self, name: str) -> torch.Tensor:
        """Parameter ``name`` as stored in the source; a NaN or inf is an error naming it (unless allowed)."""
        from lowbit.loaders.validate import check_finite

        value = self.source.get(self.files[name])
        check_finite([(self.files[name], value)], self.path)
        return value

    def materialize(self, prefix: str = "", dtype: torch.dtype = torch.float32, device: str | None = None) -> None:
        """Read every tensor under ``prefix`` (a module name; "" for all) still on meta: parameters as
        ``dtype``, buffers (a quantized layer's codes and scales) in the dtype they are stored in."""
        for name in self.names_under(prefix):
            mod_name, _, leaf = name.rpartition(".")
            mod = self.model.get_submodule(mod_name)
            current = mod._parameters.get(leaf, mod._buffers.get(leaf))
            if current is None or current.device.type != "meta":
                continue
            value = self.read(name).to(device=device or self.device)
            if leaf in mod._parameters:
                value = nn.Parameter(value.to(dtype), requires_grad=False)
            for alias in self.ties.get(name, [name]):  # tied weights stay one tensor
                self._set(alias, value)

    def _set(self, name: str, value: torch.Tensor) -> None:
        mod_name, _, leaf = name.rpartition(".")
        mod = self.model.get_submodule(mod_name)
        slot = mod._parameters if leaf in mod._parameters else mod._buffers
        slot[leaf] = value

    def release(self, prefix: str) -> None:
        """Put the module ``prefix`` back on meta (a quantized block's buffers too): its memory is freed,
        under every name it has (a tied embedding is the head too)."""
        mod = self.model.get_submodule(prefix)
        keep = {n: b for n, b in mod.named_buffers(prefix=prefix, remove_duplicate=False)
                if n in self.computed and b.device.type != "meta"}
        mod.to("meta")
        for name, buf in keep.items():
            self._set(name, buf)
        for name in self.names_under(prefix):
            for alias in self.ties.get(name, []):
                mod_name, _, leaf = alias.rpartition(".")
                mod = self.model.get_submodule(mod_name)
                value = mod._parameters.get(leaf, mod._buffers.get(leaf))
                if value is not None and value.device.type != "meta":
                    self._set(alias, nn.Parameter(value.to("meta"), requires_grad=False)
                              if isinstance(value, nn.Parameter) else value.to("meta"))

    @contextmanager
    def on_demand(self, outside: str, dtype: torch.dtype = torch.float32) -> Iterator[list[str]]:
        """While open, a module outside ``outside`` (the blocks) that runs is read first; on exit what was
        read goes back to meta, unless it was replaced meanwhile (a quantized module is the caller's).
        Yields the names read."""
        read: list[str] = []
        head = f"{outside}."

        def hook(mod: nn.Module, _args: Any) -> None:
            name = names[mod]
            if any(p.device.type == "meta" for p in mod.parameters(recurse=False)):
                self.materialize(name, dtype)
                read.append(name)

        names = {m: n for n, m in self.model.named_modules() if n and not (n == outside or n.startswith(head))}
        hooks = [m.register_forward_pre_hook(hook) for m in names]
        try:
            yield read
        finally:
            for h in hooks:
                h.remove()
            by_name = {n: m for m, n in names.items()}
            for name in read:
                if self.model.get_submodule(name) is by_name[name]:
                    self.release(name)


def open_lazy(path: str | Path) -> LazyModel:
    """A Hugging Face directory (safetensors) or a GGUF file, opened without reading its weights."""
    from lowbit.loaders.builtin import BUILTINS, builtin_path

    name = str(path)
    path = builtin_path(name) if name in BUILTINS else Path(path).expanduser().resolve()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from lowbit.loaders.gguf_source import open_gguf

        lazy = open_gguf(path)
    elif path.is_dir():
        lazy = _open_hf_dir(path)
    else:
        raise InputError(f"{path}: streaming opens a Hugging Face directory with safetensors or a .gguf file")
    if name in BUILTINS:
        lazy.name = name
    return lazy


def open_if_larger(model: Any, cap: int) -> ModelHandle | None:
    """``model`` (a name or path) opened lazily when its float32 weights would not fit in ``cap`` bytes
    (a lowbit checkpoint is built in float32 before its layers are swapped); None: load it whole."""
    from lowbit.loaders.builtin import BUILTINS, builtin_path

    if not isinstance(model, (str, Path)):
        return None
    path = builtin_path(str(model)) if str(model) in BUILTINS else Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return open_lazy(model).handle() if 8 * path.stat().st_size > cap else None
    if not (path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))):
        return None
    from transformers import AutoConfig

    from lowbit.loaders.dispatch import read_json
    from lowbit.loaders.validate import check_config

    raw = read_json(path / "config.json")
    check_config(raw, f"{path}/config.json")
    record = raw.get("quantization_config") or {}
    if record.get("quant_method") not in (None, "lowbit"):
        return None
    config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("model_type", "quantization_config")},
                                  model_type=raw.get("model_type"))
    meta, _ = build_on_meta(config, record.get("kind"))
    if 4 * sum(p.numel() for p in meta.parameters()) <= cap:
        return None
    if record:
        from lowbit.loaders.checkpoint import open_checkpoint

        return open_checkpoint(path).handle()
    return open_lazy(path).handle()


def build_on_meta(config: Any, kind: str | None = None) -> tuple[nn.Module, str]:
    """The model for ``config`` with its parameters on meta, and its kind (from the config's
    ``architectures`` unless given)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from lowbit.loaders.dispatch import model_kind

    kind = kind or model_kind(config)
    cls = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModel
    try:
        with params_on_meta():
            model = cls.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"transformers cannot build a {getattr(config, 'model_type', '?')!r} model from this config: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.eval(), kind


def tie_groups(model: nn.Module) -> dict[str, list[str]]:
    """Every name of a parameter that has several (tied embeddings) -> all of its names."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return {n: names for names in by_id.values() if len(names) > 1 for n in names}


def bind(model: nn.Module, available: dict[str, Any], where: str, resolve: Any = None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map every parameter of ``model`` to a key of ``available`` (``resolve(name)`` proposes keys);
    one InputError naming what is missing."""
    ties = tie_groups(model)
    files: dict[str, str] = {}
    missing = []
    for n, _ in model.named_parameters(remove_duplicate=False):
        found = next((k for k in (resolve(n) if resolve else [n]) if k in available), None)
        if found is not None:
            files[n] = found
    for n, _ in model.named_parameters(remove_duplicate=False):
        if n in files:
            continue
        alias = next((a for a in ties.get(n, []) if a in files), None)
        if alias is None:
            missing.append(n)
        else:
            files[n] = files[alias]
    if missing:
        raise InputError(f"{where} lacks {len(missing)} of the model's weights (e.g. {', '.join(missing[:3])}); "
                         f"the weights on disk do not match the model config")
    return files, ties


def checked_hf_dir(path: Path, foreign_ok: bool = False) -> tuple[Any, Any, nn.Module, str, dict[str, str], dict[str, list[str]]]:
    """A Hugging Face directory checked before anything reads its weights (loaders/validate.py): its
    config's fields and layer count, every safetensors header, and every weight the model declares in the
    files with its shape, nothing unknown beside them. Returns (config, source, model on meta, kind,
    parameter -> key, ties)."""
    from transformers import AutoConfig

    from lowbit.loaders.dispatch import read_json
    from lowbit.loaders.safetensors_source import SafetensorsSource
    from lowbit.loaders.validate import check_config, check_layer_count, check_weights

    if not (path / "config.json").is_file():
        raise InputError(f"{path} is a directory without config.json; expected a Hugging Face model directory")
    raw = read_json(path / "config.json")
    check_config(raw, f"{path}/config.json")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: transformers cannot load it: {str(e).splitlines()[0]}") from None
    source = SafetensorsSource(path)
    check_layer_count(raw, source.shapes, str(path))
    model, kind = build_on_meta(config)
    prefix = getattr(model, "base_model_prefix", "")

    def resolve(n: str) -> list[str]:  # checkpoints saved from the base model lack (or add) its prefix
        return [n, n.removeprefix(f"{prefix}."), f"{prefix}.{n}"] if prefix else [n]

    method = (raw.get("quantization_config") or {}).get("quant_method")
    if method:
        # another tool's quantized layout (compressed-tensors, GPTQ...): transformers' quantizer for that format
        # builds its own layers and checks their tensors; the headers were checked above
        if not foreign_ok:
            raise InputError(f"{path} is quantized ({method}); it opens whole (lowbit eval), not block by block")
        return config, source, model, kind, {}, tie_groups(model)
    # a base model (an encoder) read from a checkpoint with a task head: the head is not the model's
    head = kind != CAUSAL_LM and prefix and any(k.startswith(f"{prefix}.") for k in source.shapes)
    shapes = {k: v for k, v in source.shapes.items() if not head or k.startswith(f"{prefix}.")}
    files = check_weights(model, shapes, str(path), resolve)
    return config, source, model, kind, files, tie_groups(model)


def _open_hf_dir(path: Path) -> LazyModel:
    from transformers import AutoTokenizer

    _, source, model, kind, files, ties = checked_hf_dir(path)
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        log.warning("%s: no tokenizer (%s); text evaluation will not be available", path, e)
    return LazyModel(model, source, files, {n: source.dtypes[k] for n, k in files.items()}, kind, str(path), str(path),
                     tokenizer, ties=ties)
