"""QAT's training checkpoint: one file with the student's weights, the optimizer, the step, the losses
so far, the elapsed seconds and torch's RNG state, written atomically, so an interrupted run resumes
where it stopped and ends bit-identical to an uninterrupted one.

The file holds tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: resuming never runs code from the file.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import InputError

KEYS = ("model", "optimizer", "step", "losses", "seconds", "rng", "spec", "total_steps")


def save_state(path: Path, net: nn.Module, opt: torch.optim.Optimizer, step: int, losses: list[float],
               seconds: float, spec: str, settings: Any) -> None:
    """Write the training state after ``step`` steps (``settings``: the run's TrainSettings)."""
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "losses": losses,
             "seconds": seconds, "rng": torch.get_rng_state(), "spec": spec, "total_steps": settings.steps,
             "settings": asdict(settings)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True``."""
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"--resume: {path} is not a lowbit QAT training checkpoint (it holds something other than "
                         f"tensors and plain values; such a file is never unpickled)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise InputError(f"--resume: {path} is not a lowbit QAT training checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise InputError(f"--resume: {path} is not a lowbit QAT training checkpoint (it lacks "
                         f"{', '.join(k for k in KEYS if not isinstance(state, dict) or k not in state)})")
    return state


def resume(path: Path, net: nn.Module, opt: torch.optim.Optimizer, spec: str, steps: int) -> tuple[int, list[float], float]:
    """Load the checkpoint at ``path`` into ``net`` and ``opt`` and restore torch's RNG state; returns
    (steps done, losses so far, seconds so far). Refused if it was written for another spec or length."""
    state = read_state(path)
    if state["spec"] != spec or state["total_steps"] != steps:
        raise InputError(f"{path} was written for --spec {state['spec']} --steps {state['total_steps']}, "
                         f"not {spec} / {steps}")
    try:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"--resume: {path} does not fit this model ({str(e).splitlines()[0]})") from None
    torch.set_rng_state(state["rng"])
    return state["step"], state["losses"], state["seconds"]
