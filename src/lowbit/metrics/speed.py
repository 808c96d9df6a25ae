"""Speed on this machine: prefill tokens/s and greedy decode tokens/s (KV cache), best of a few runs.

These are wall-clock figures for *this* process on *this* CPU; compare candidates measured in one run,
as ratios, not across machines.
"""

from __future__ import annotations

import inspect
import time

import torch
from torch import nn


@torch.inference_mode()
def prefill_tok_s(model: nn.Module, tokens: torch.Tensor, repeats: int = 2) -> float:
    """Tokens per second for one forward over ``tokens`` (1-D), best of ``repeats``."""
    ids = tokens.unsqueeze(0)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids)
        best = min(best, time.perf_counter() - t0)
    return ids.shape[1] / best


def _cache_arg(model: nn.Module) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; older versions ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def decode_tok_s(model: nn.Module, prompt: torch.Tensor, new_tokens: int = 16) -> float:
    """Greedy decode speed with the KV cache, after a prefill of ``prompt`` (1-D)."""
    arg = _cache_arg(model)
    out = model(input_ids=prompt.unsqueeze(0), use_cache=True)
    past, nxt = out[arg], out.logits[:, -1:].argmax(-1)
    out = model(input_ids=nxt, use_cache=True, **{arg: past})  # warm-up step, not timed
    past, nxt = out[arg], out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, use_cache=True, **{arg: past})
        past, nxt = out[arg], out.logits[:, -1:].argmax(-1)
    return new_tokens / (time.perf_counter() - t0)


@torch.inference_mode()
def encoder_tok_s(model: nn.Module, enc: dict[str, torch.Tensor], repeats: int = 2) -> float:
    n = int(enc["attention_mask"].sum())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(**enc)
        best = min(best, time.perf_counter() - t0)
    return n / best
