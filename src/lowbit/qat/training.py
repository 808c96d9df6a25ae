"""``train``: the fake-quantized layers of a prepared model learn through the rounding (straight-through
estimator; LSQ scales too when prepared with ``lsq``), with Adam, gradient clipping and a resumable
training checkpoint. Sized for a CPU: short sequences, one per step, a few hundred steps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle
from lowbit.qat.batches import cycle
from lowbit.qat.losses import Loss, loss_fn
from lowbit.qat.start import fake_quant_layers
from lowbit.qat.state import resume, save_state


@dataclass
class TrainSettings:
    """Sized for a CPU: short sequences, one per step, a few hundred steps."""

    steps: int = 200
    lr: float = 1e-5
    scale_lr: float | None = None  # LSQ scales; default lr / 10 (on smollm2, 1e-4 diverged within 60 steps)
    batch: int = 1
    seq_len: int = 256
    distill: bool = True
    clip: float = 1.0
    checkpoint: str | None = None  # a file: written every ``save_every`` steps and at the end
    save_every: int = 50
    resume: bool = False
    seed: int = 0
    data: str = ""

    def __post_init__(self) -> None:  # checked when built, so a CLI run fails before loading a model
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: train at least one step")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise InputError(f"--lr {self.lr}: must be a positive number")
        if self.resume and not self.checkpoint:
            raise InputError("--resume needs --checkpoint FILE")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


@dataclass
class _Step:
    """One optimizer step of ``net`` on a batch: loss, backward, clipped gradients, Adam."""

    net: nn.Module
    teacher: nn.Module | None
    opt: torch.optim.Optimizer
    loss: Loss
    params: list[nn.Parameter]
    clip: float

    def __call__(self, batch: Any, done: int) -> float:
        loss = self.loss(self.net, self.teacher, batch)
        if not torch.isfinite(loss):
            raise InputError(f"step {done + 1}: the loss is {loss.item()}; lower --lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        return float(loss.detach())


def _teacher(handle: ModelHandle, teacher: ModelHandle | None) -> nn.Module:
    teacher = teacher or handle.teacher
    if teacher is None:
        raise InputError("--distill needs the full-precision model as the teacher")
    net = teacher.model.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _trainable(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze ``net`` but the fake-quantized layers' latent weights and biases, and their LSQ scales."""
    layers = fake_quant_layers(net)
    for p in net.parameters():
        p.requires_grad_(False)
    weights, scales = [], []
    for mod in layers.values():
        weights += [p for p in (mod.weight, mod.bias) if p is not None]
        if getattr(mod.weight_quant, "lsq", False):
            scales.append(mod.weight_quant.scale)
    for p in weights + scales:
        p.requires_grad_(True)
    return weights, scales


def _optimizer(weights: list[nn.Parameter], scales: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Adam:
    scale_lr = settings.scale_lr if settings.scale_lr is not None else settings.lr / 10
    groups = [{"params": weights, "lr": settings.lr}] + ([{"params": scales, "lr": scale_lr}] if scales else [])
    return torch.optim.Adam(groups)


def train(handle: ModelHandle, data: Any, settings: TrainSettings, teacher: ModelHandle | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train the fake-quantized layers of a prepared ``handle`` in place.

    ``data``: (n, seq) token windows (causal LM), a list of tokenized texts (encoder), or an
    ``(x, y)`` pair of tensors (a classifier). With ``settings.distill`` the loss is the KL divergence
    (cosine distance for encoders) to ``teacher`` (default: the model ``prepare`` started from);
    otherwise next-token or label cross-entropy. Only the fake-quantized layers train (latent
    weights, biases, LSQ scales). Gradients are clipped to ``settings.clip``. With
    ``settings.checkpoint`` the student, optimizer, step and RNG state are written every
    ``save_every`` steps and at the end (atomically); ``resume`` continues from that file.
    ``progress(step, steps, loss)`` is called after every step.
    """
    rec = handle.qat
    if rec is None:
        raise InputError(f"{handle.name} was not prepared for QAT (lowbit.qat.prepare)")
    net = handle.model
    teacher_net = _teacher(handle, teacher) if settings.distill else None
    weights, scales = _trainable(net)
    opt = _optimizer(weights, scales, settings)
    step = _Step(net, teacher_net, opt, loss_fn(handle.kind, settings.distill), weights + scales, settings.clip)
    ckpt = Path(settings.checkpoint) if settings.checkpoint else None
    done, losses, seconds = 0, [], 0.0
    if settings.resume:
        done, losses, seconds = resume(ckpt, net, opt, rec["spec"], settings.steps)
    resumed = done
    batches = cycle(data, settings.batch, settings.seed, done)
    net.train()
    t0 = time.perf_counter() - seconds
    while done < settings.steps:
        losses.append(step(next(batches), done))
        done += 1
        if progress is not None:
            progress(done, settings.steps, losses[-1])
        if ckpt is not None and (done % settings.save_every == 0 or done == settings.steps):
            save_state(ckpt, net, opt, done, losses, time.perf_counter() - t0, rec["spec"], settings)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    rec.update(steps=settings.steps, lr=settings.lr, distill=settings.distill, train_seconds=round(seconds, 3),
               data=settings.data)
    return TrainResult(done, seconds, losses, resumed)
