"""Encoder metric: cosine similarity of mean-pooled embeddings to the reference's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def embed(model: nn.Module, tokenizer: Any, texts: list[str], max_len: int = 128, batch: int = 16) -> torch.Tensor:
    """Mean-pooled, L2-normalized embeddings (n, hidden) in float32 (sentence-transformers' pooling).
    Quantized layers run their exact arithmetic ("dequant" mode), as in the causal-LM metrics."""
    from lowbit.modules.kernel_mode import kernel_mode

    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with kernel_mode(model, "dequant"):
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)


def cosine_to_reference(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-text cosine similarity, (n,)."""
    return (F.normalize(emb, dim=-1) * F.normalize(ref, dim=-1)).sum(-1)
