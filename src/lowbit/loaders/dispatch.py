"""Decide what a model argument is and load it; every failure is one clear line (InputError)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.errors import InputError
from lowbit.loaders.builtin import BUILTINS, builtin_path
from lowbit.loaders.gguf_check import check_gguf
from lowbit.loaders.handle import CAUSAL_LM, ENCODER, MODULE, ModelHandle

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
ACCEPTED = "a Hugging Face model directory, a .gguf file, a lowbit checkpoint, or a built-in name (smollm2, minilm)"


def load_model(source: str | os.PathLike[str] | nn.Module, **kw: Any) -> ModelHandle:
    """Load ``source`` into a :class:`ModelHandle` (float32, eval mode).

    >>> h = load_model("smollm2")            # doctest: +SKIP
    >>> h.kind, type(h.model).__name__        # doctest: +SKIP
    ('causal-lm', 'LlamaForCausalLM')
    """
    if isinstance(source, ModelHandle):
        return source
    if isinstance(source, nn.Module):
        return ModelHandle(model=source.eval(), kind=kw.get("kind", MODULE), name=type(source).__name__)
    text = str(source)
    if text in BUILTINS:
        handle = _load_path(builtin_path(text))
        handle.name = text
        return handle
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"model {text!r} not found: no such file or directory, and not {ACCEPTED}")
    return _load_path(path.resolve())  # absolute, so a checkpoint's recorded source resolves from anywhere


def _load_path(path: Path) -> ModelHandle:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise InputError(f"{path} is a directory without config.json; expected {ACCEPTED}")
        from lowbit.loaders.validate import check_config

        raw = read_json(config)
        check_config(raw, str(config))
        if (raw.get("quantization_config") or {}).get("quant_method") == "lowbit":
            from lowbit.loaders.checkpoint import load_checkpoint

            return load_checkpoint(path)
        return load_hf_dir(path)
    head = _head(path)
    if head[:4] == GGUF_MAGIC or path.suffix.lower() == ".gguf":
        return load_gguf(path)  # a .gguf with the wrong magic gets the GGUF checker's own error
    if path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        return _load_path(path.parent)
    if path.suffix == ".safetensors":
        raise InputError(f"{path}: a bare .safetensors file needs a config.json beside it to build the model")
    raise InputError(f"{path} is not a model: expected {ACCEPTED}")


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object (a model config), not {type(data).__name__}")
    return data


def model_kind(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return CAUSAL_LM
    return ENCODER


def load_hf_dir(path: Path) -> ModelHandle:
    """A Hugging Face directory: causal LMs through AutoModelForCausalLM, encoders through AutoModel,
    after loaders/lazy.py's checks (config, headers, every weight present with its shape); a NaN or inf
    weight is an error unless allowed (loaders/validate.py's ``allow_nonfinite``)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from lowbit.loaders.lazy import checked_hf_dir
    from lowbit.loaders.validate import check_finite

    config, _, _, kind, _, _ = checked_hf_dir(path, foreign_ok=True)
    cls = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModel
    try:
        model = cls.from_pretrained(path, config=config, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"{path}: transformers cannot load it: {str(e).splitlines()[0]}") from None
    check_finite(model.named_parameters(), str(path))
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        log.warning("%s: no tokenizer (%s); text evaluation will not be available", path, e)
    return ModelHandle(model=model.eval(), tokenizer=tokenizer, kind=kind, name=str(path), path=str(path))


GGUF_CACHE_VERSION = 3  # bumped when the dequantized copy changes (2: head size and Gemma's attention scale; 3: rope scaling)


def load_gguf(path: Path) -> ModelHandle:
    """A GGUF file, dequantized to float32 via transformers, cached as a HF directory.

    The first load takes ~30 s for smollm2; later loads read the cached float32 safetensors.
    """
    from lowbit.loaders.cache import atomic_dir, cache_root, file_key, publish_dir

    check_gguf(path)
    final = cache_root() / f"gguf{GGUF_CACHE_VERSION}-{path.stem}-{file_key(path)}"
    if not (final / "config.json").is_file():
        from lowbit.loaders.gguf_source import open_gguf

        open_gguf(path)  # every tensor the architecture needs, with its shape, and nothing else
        log.info("dequantizing %s to float32 (first use; cached in %s)", path.name, final)
        tmp = atomic_dir(final)
        try:
            _dequantize_gguf_to(path, tmp)
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    handle = load_hf_dir(final)
    handle.name, handle.gguf_source = str(path), str(path)
    return handle


def _dequantize_gguf_to(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowbit.loaders.gguf_source import gguf_config

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        config = gguf_config(path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     config=config)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"{path}: transformers cannot load this GGUF: {str(e).splitlines()[0]}") from None
    if any(getattr(model.config, k, None) != getattr(config, k, None) for k in ("head_dim", "query_pre_attn_scalar")):
        fixed = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # the attention scale is set at init
        fixed.load_state_dict(model.state_dict())
        model = fixed
    from lowbit.loaders.validate import check_finite

    check_finite(model.named_parameters(), str(path))
    # transformers marks GGUF-loaded models as quantized and then refuses to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
