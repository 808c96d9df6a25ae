"""QAT's training losses, chosen by model kind: next-token cross-entropy or KL divergence to the float
teacher (causal LM), cosine distance of token states to the teacher (encoder), label cross-entropy or
KL divergence (any module returning class logits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, ENCODER

# (student, teacher or None, batch) -> scalar loss
Loss = Callable[[nn.Module, nn.Module | None, Any], torch.Tensor]


def causal_lm_loss(student: nn.Module, teacher: nn.Module | None, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy without a teacher; else the mean per-token KL(teacher || student)."""
    logits = student(input_ids=batch).logits.float()  # (batch, seq, vocab)
    if teacher is None:
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    with torch.no_grad():
        ref = F.log_softmax(teacher(input_ids=batch).logits.float(), -1)
    return F.kl_div(F.log_softmax(logits, -1), ref, log_target=True, reduction="none").sum(-1).mean()


def encoder_loss(student: nn.Module, teacher: nn.Module | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cosine distance of the student's token states to the teacher's, over unpadded tokens."""
    h = student(**batch).last_hidden_state  # (batch, seq, hidden)
    with torch.no_grad():
        ref = teacher(**batch).last_hidden_state
    mask = batch["attention_mask"].float()
    cos = F.cosine_similarity(h, ref, dim=-1)
    return ((1 - cos) * mask).sum() / mask.sum()


def module_loss(student: nn.Module, teacher: nn.Module | None, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Label cross-entropy without a teacher; else KL(teacher || student) per sample."""
    x, y = batch
    out = student(x)
    if teacher is None:
        return F.cross_entropy(out, y)
    with torch.no_grad():
        ref = F.log_softmax(teacher(x), -1)
    return F.kl_div(F.log_softmax(out, -1), ref, log_target=True, reduction="batchmean")


def loss_fn(kind: str, distill: bool) -> Loss:
    """The loss for a model of ``kind``; encoders have no label to fit, so they need ``distill``."""
    if kind == CAUSAL_LM:
        return causal_lm_loss
    if kind == ENCODER:
        if not distill:
            raise InputError("encoders train by distillation (--distill): there is no label to fit")
        return encoder_loss
    return module_loss
