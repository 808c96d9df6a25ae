"""A GGUF file as a lazy source: tensors read one at a time from the memory map and dequantized with the
``gguf`` package's own dequantizers, under their Hugging Face names (transformers' GGUF tables, with
its per-architecture processors: llama.cpp's converter permutes the q/k rows of Llama models, and
the processor puts them back). Nothing is cached: the file is the source."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.errors import InputError
from lowbit.formats.ggml.names import NOT_PARAMETERS
from lowbit.loaders.gguf_check import check_gguf
from lowbit.loaders.handle import CAUSAL_LM
from lowbit.loaders.lazy import LazyModel, bind, build_on_meta


class GGUFSource:
    """HF tensor name -> the GGUF tensor it comes from; ``get`` dequantizes one tensor to float32."""

    def __init__(self, path: Path, reader: Any, processor: Any, mapping: dict[str, str], parsed: dict[str, Any]) -> None:
        self.path = path
        self.processor = processor
        self.tensors = {t.name: t for t in reader.tensors}
        self.by_hf = {hf: g for g, hf in mapping.items() if g in self.tensors}
        self.mapping = mapping
        self.parsed = parsed

    def keys(self) -> list[str]:
        return list(self.by_hf)

    def get(self, key: str) -> torch.Tensor:
        from gguf.quants import dequantize

        gname = self.by_hf[key]
        t = self.tensors[gname]
        # read, not through the reader's memory map: mapped pages once read stay in the process' RSS
        raw = np.fromfile(self.path, dtype=np.uint8, count=int(t.n_bytes), offset=int(t.data_offset))
        data = raw.view(t.data.dtype).reshape(t.data.shape)
        result = self.processor.process(weights=dequantize(data, t.tensor_type), name=gname,
                                        tensor_key_mapping=self.mapping, parsed_parameters=self.parsed)
        return torch.from_numpy(np.copy(result.weights))


# llama.cpp's Gemma 27B models scale attention by hidden / heads, the others by the head size (a GGUF
# has no key for it; transformers' default, 256, is right only when the head size is 256)
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def gguf_config(path: Path) -> Any:
    """transformers' config for a GGUF file, with what its GGUF reader leaves at the defaults though the
    file says it (or llama.cpp assumes it): the head size from ``{arch}.attention.key_length`` (Qwen3's
    default is 128), Gemma's attention scale as llama.cpp computes it, the rope scaling (gguf_rope.py)."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    reader = GGUFReader(path)
    arch = _architecture(reader)
    field = reader.fields.get(f"{arch}.attention.key_length")
    if field is not None and hasattr(config, "head_dim"):
        config.head_dim = int(field.parts[-1][0])
    if arch in _GEMMA_27B_LAYERS and hasattr(config, "query_pre_attn_scalar"):
        big = config.num_hidden_layers == _GEMMA_27B_LAYERS[arch]
        config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads if big else config.head_dim
    from lowbit.loaders.gguf_rope import rope_from_gguf

    rope_from_gguf(config, reader, arch, path)
    return config


def open_gguf(path: Path) -> LazyModel:
    """The model a GGUF file holds, on meta, with the file as its weight source."""
    import transformers.modeling_gguf_pytorch_utils as hf_gguf
    from gguf import GGUFReader
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    check_gguf(path)
    reader = GGUFReader(path)
    arch = _architecture(reader)
    need = [f"{arch}.{k}" for k in ("block_count", "embedding_length")]
    if not all(k in reader.fields for k in need):
        raise InputError(f"{path} is not a model llama.cpp could run: its metadata lacks {' or '.join(need)}")
    with _parse_once():
        try:
            parsed = hf_gguf.load_gguf_checkpoint(str(path), return_tensors=False)
            config = gguf_config(path)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise InputError(f"{path}: transformers cannot read this GGUF's metadata: {str(e).splitlines()[0]}") from None
        model, kind = build_on_meta(config, CAUSAL_LM)  # what transformers' GGUF loader builds
        processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=parsed.get("config", {}))
        mapping = get_gguf_hf_weights_map(model, processor)
        parsed = dict(parsed, tensors={})
        source = GGUFSource(path, reader, processor, mapping, parsed)
        files, ties = bind(model, source.by_hf, str(path))
        _check_tensors(path, model, source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: transformers cannot read this GGUF's tokenizer: {str(e).splitlines()[0]}") from None
    dtypes = {n: torch.float32 for n in files}
    return LazyModel(model, source, files, dtypes, kind, str(path), str(path), tokenizer, gguf_source=str(path), ties=ties)


def _check_tensors(path: Path, model: Any, source: GGUFSource) -> None:
    """Every mapped tensor with its parameter's shape, and no tensor of the file left unmapped (renamed
    or foreign): the weights transformers would otherwise fill in at random, or ignore."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for hf, g in source.by_hf.items():
        want = params.get(hf)
        got = tuple(int(d) for d in reversed(source.tensors[g].shape.tolist()))
        if want is not None and got != tuple(want.shape):
            raise InputError(f"{path}: tensor {g} has shape {list(got)}, the model's metadata needs {list(want.shape)}")
    extra = sorted(set(source.tensors) - set(source.by_hf.values()) - set(NOT_PARAMETERS))
    if extra:
        raise InputError(f"{path} holds {len(extra)} tensor(s) its architecture does not use (e.g. "
                         f"{', '.join(extra[:3])}): renamed or foreign tensors")


@contextmanager
def _parse_once() -> Iterator[None]:
    """transformers parses a GGUF's metadata anew for the config, the tokenizer and the weights (3 s each
    for smollm2's 49k-token vocabulary), and rebuilds gguf's tensor-name table for every module (400
    times): within this context, each is done once."""
    import functools

    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    parse, names = hf_gguf.load_gguf_checkpoint, gguf.get_tensor_name_map
    memo: dict[str, Any] = {}

    def parse_once(path: Any, return_tensors: bool = False, **kw: Any) -> Any:
        if return_tensors or kw:
            return parse(path, return_tensors=return_tensors, **kw)
        key = str(path)
        if key not in memo:
            memo[key] = parse(path, return_tensors=False)
        return copy.deepcopy(memo[key])  # callers pop from what they get

    hf_gguf.load_gguf_checkpoint, gguf.get_tensor_name_map = parse_once, functools.lru_cache(maxsize=None)(names)
    try:
        yield
    finally:
        hf_gguf.load_gguf_checkpoint, gguf.get_tensor_name_map = parse, names


def _architecture(reader: Any) -> str:
    field = reader.fields.get("general.architecture")
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (AttributeError, IndexError, UnicodeDecodeError):
        raise InputError("the GGUF file has no readable general.architecture") from None
