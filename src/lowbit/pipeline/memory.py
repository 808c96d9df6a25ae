"""What one block needs, what the machine (or ``--max-memory``) allows, and the check between them.

A streamed run holds one block's weights in float32 (the compute copy) beside the copy read from the
file, the calibration activations entering and leaving the block, and the method's own statistics (a
Hessian per group of Linears that share an input). Nothing here depends on the number of blocks."""

from __future__ import annotations

import re

from torch import nn

from lowbit.errors import InputError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """``"4GiB"``, ``"4G"`` (10^9), ``"512MiB"`` or a byte count -> bytes.

    >>> parse_size("4GiB"), parse_size("1.5G"), parse_size(1024)
    (4294967296, 1500000000, 1024)
    """
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise InputError(f"size {text!r} is not a size; write e.g. 4GiB, 16G or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def machine_memory() -> int:
    """The memory a run may use by default: what the machine has available now, less a margin."""
    import psutil

    return int(psutil.virtual_memory().available * 0.85)


def block_bytes(block: nn.Module) -> int:
    """Bytes of one block's weights in float32 (parameters on meta have shapes, which is all this needs)."""
    return sum(p.numel() for p in block.parameters()) * 4


def hessian_bytes(block: nn.Module) -> int:
    """The largest Hessian a block needs (in_features^2 float32; GPTQ keeps one and works on a copy)."""
    widest = max((m.in_features for m in block.modules() if isinstance(m, nn.Linear)), default=0)
    return 3 * widest * widest * 4


def activation_bytes(tokens: int, width: int) -> int:
    """The residual stream entering and leaving a block, float32."""
    return 2 * tokens * width * 4


def check_fits(name: str, block: int, activations: int, workspace: int, cap: int, source: str = "--max-memory") -> None:
    """One line when a model cannot run even block by block under ``cap``."""
    need = 2 * block + activations + workspace
    if need > cap:
        raise InputError(f"{name}: one block needs about {_gib(need)} ({_gib(block)} of float32 weights, twice while "
                         f"it is quantized, {_gib(activations)} of calibration activations, {_gib(workspace)} of "
                         f"method statistics); {source} allows {_gib(cap)}; raise it, or use fewer calibration "
                         f"tokens (--n-samples, --seq-len)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def resolve_device(text: str | None) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (a GPU where torch sees one) -> a torch device string;
    a GPU that is not there is an error, not a silent fall-back to the CPU."""
    import torch

    text = (text or "cpu").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise InputError(f"--device {text!r}: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise InputError(f"--device {text}: torch sees no CUDA GPU on this machine (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise InputError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text
