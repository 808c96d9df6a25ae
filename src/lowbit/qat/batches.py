"""Training data for QAT: token windows (causal LM), tokenized texts (encoder distillation), or an
``(x, y)`` pair of tensors (a classifier), cycled in mini-batches reshuffled every epoch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle


def lm_batches(handle: ModelHandle, data: str, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(n, seq_len) token windows of ``data`` for causal-LM training."""
    from lowbit.calib import load_corpus, token_windows

    return token_windows(load_corpus(data), handle.tokenizer, n, seq_len, seed)


def encoder_batches(handle: ModelHandle, data: str, n: int, max_len: int = 128, seed: int = 0) -> list[dict]:
    """``n`` texts of ``data``, tokenized one by one, for encoder distillation."""
    from lowbit.calib import load_corpus, sample_texts

    texts = sample_texts(load_corpus(data), n, seed)
    return [dict(handle.tokenizer(t, truncation=True, max_length=max_len, return_tensors="pt")) for t in texts]


def cycle(data: Any, batch: int, seed: int, start_step: int) -> Iterator[Any]:
    """Mini-batches of ``data`` (a (n, seq) tensor, a list of tokenized-encoder dicts, or (x, y)),
    reshuffled every epoch, deterministic in ``seed``; skips the batches of ``start_step`` steps (the
    shuffles still run, so a resumed run sees the batches an uninterrupted one would)."""
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    if n == 0:
        raise InputError("no training data")
    rng = random.Random(seed)
    step = 0
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch + 1 if n >= batch else 1, batch):
            idx = order[i : i + batch]
            if step >= start_step:
                if isinstance(data, tuple):
                    yield tuple(d[idx] for d in data)
                elif isinstance(data, torch.Tensor):
                    yield data[idx]
                else:
                    yield collate([data[j] for j in idx])
            step += 1


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tokenized texts of different lengths as one batch, right-padded with zeros (attention mask 0)."""
    width = max(it["input_ids"].shape[-1] for it in items)
    return {k: torch.cat([F.pad(it[k], (0, width - it[k].shape[-1])) for it in items]) for k in items[0]}
