"""What `lowbit plan` needs to know about a model, read from file headers only (no torch, no weights):
its kind (causal LM or encoder) and its parameter count.

    ModelInfo.of("smollm2")          # built-in names, HF directories, .safetensors and .gguf files
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import InputError

CAUSAL_LM, ENCODER, UNKNOWN = "causal-lm", "encoder", "unknown"
_LLM_ARCHS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon", "gpt2", "mpt",
              "starcoder2", "olmo", "stablelm", "deepseek2", "granite", "smollm3"}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str = UNKNOWN
    params: int | None = None
    source: str = ""

    @classmethod
    def of(cls, model: str | None) -> ModelInfo:
        if not model:
            return cls("(no model given)")
        from lowbit.loaders.builtin import BUILTINS, builtin_path

        path = builtin_path(model) if model in BUILTINS else Path(model)
        if not path.exists():
            raise InputError(f"{model}: no such file or directory (or built-in name: {', '.join(BUILTINS)})")
        if path.is_dir():
            return _hf_dir(model, path)
        if path.suffix == ".gguf":
            return _gguf(model, path)
        if path.suffix == ".safetensors":
            return cls(model, UNKNOWN, _safetensors_params(path), "safetensors header")
        raise InputError(f"{model}: plan reads Hugging Face directories, .safetensors and .gguf files")


def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise InputError(f"{path} is not a safetensors file (header of {n} bytes)")
        try:
            meta = json.loads(f.read(n))
        except ValueError:
            raise InputError(f"{path} is not a safetensors file (unreadable header)") from None
    total = 0
    for k, v in meta.items():
        if k != "__metadata__":
            count = 1
            for d in v.get("shape", []):
                count *= int(d)
            total += count
    return total


def _hf_dir(name: str, path: Path) -> ModelInfo:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{path}: no config.json, not a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError:
        raise InputError(f"{cfg_path} is not valid JSON") from None
    archs = cfg.get("architectures") or []
    kind = CAUSAL_LM if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else ENCODER
    files = sorted(path.glob("*.safetensors"))
    params = sum(_safetensors_params(f) for f in files) if files else None
    return ModelInfo(name, kind, params, "config.json" + (" + safetensors headers" if files else ""))


def _gguf(name: str, path: Path) -> ModelInfo:
    from lowbit.loaders.gguf_check import read_metadata, tensor_table

    arch = next((v for k, _, v in read_metadata(path) if k == "general.architecture"), None)
    params = sum(numel for _, numel in tensor_table(path))
    kind = CAUSAL_LM if arch in _LLM_ARCHS else (ENCODER if arch in ("bert", "nomic-bert", "jina-bert-v2") else UNKNOWN)
    return ModelInfo(name, kind, params, f"GGUF header (architecture {arch})")
