"""The calibration data a method sees, shaped for the model: token windows for a causal LM, batches of
tokenized passages for an encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lowbit.calib import load_corpus, sample_texts, token_windows
from lowbit.calib.settings import CalibSettings
from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, ModelHandle

ENCODER_BATCH = 16  # passages per batch, as the evaluator embeds them
ENCODER_MAX_LEN = 128


@dataclass
class CalibData:
    """``windows``: (n, L) token ids of the calibration text, for every model kind (what the sequential,
    block-by-block methods run; also the probe input of the fold search); ``batches``: keyword arguments
    for the model, one dict per forward of the float-model pass (token windows one at a time for causal
    LMs, 16 tokenized passages for encoders, as the evaluator embeds them); ``check``: one small batch on
    which a transformed float model must still give the same output."""

    settings: CalibSettings
    windows: torch.Tensor
    batches: list[dict[str, torch.Tensor]]
    check: dict[str, torch.Tensor]
    tokens: int
    lm: bool


def calibration_data(handle: ModelHandle, settings: CalibSettings) -> CalibData:
    if handle.tokenizer is None:
        raise InputError(f"{handle.name}: calibration runs on text, and the model has no tokenizer")
    corpus = load_corpus(settings.data)
    w = token_windows(corpus, handle.tokenizer, settings.n_samples, settings.seq_len, settings.seed)
    if handle.kind == CAUSAL_LM:
        return CalibData(settings, w, [{"input_ids": w[i : i + 1]} for i in range(len(w))],
                         {"input_ids": w[:1, :64]}, int(w.numel()), True)
    texts = sample_texts(corpus, ENCODER_BATCH * settings.n_samples, settings.seed)
    batches = [dict(handle.tokenizer(texts[i : i + ENCODER_BATCH], padding=True, truncation=True,
                                     max_length=ENCODER_MAX_LEN, return_tensors="pt"))
               for i in range(0, len(texts), ENCODER_BATCH)]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    return CalibData(settings, w, batches, batches[0], tokens, False)


def as_settings(calib: CalibSettings | str | None) -> CalibSettings | None:
    return CalibSettings(data=calib) if isinstance(calib, str) else calib


def describe(data: CalibData | None) -> dict[str, Any]:
    if data is None:
        return {"samples": 0, "tokens": 0}
    return {"data": data.settings.data, "samples": len(data.windows) if data.lm else len(data.batches),
            "tokens": data.tokens}
