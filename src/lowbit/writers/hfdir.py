"""Write a Hugging Face model directory atomically: tensors, config.json, tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lowbit.loaders.cache import atomic_dir, publish_dir


def write_model_dir(out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], tokenizer: Any = None,
                    metadata: dict[str, str] | None = None) -> Path:
    """Build the directory beside ``out`` and rename it into place; on any failure nothing is left."""
    from safetensors.torch import save_file

    tmp = atomic_dir(out)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata=metadata)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        publish_dir(tmp, out, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
