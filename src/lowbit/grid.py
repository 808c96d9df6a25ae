"""The affine integer grid shared by every integer method (RTN now; GPTQ, AWQ, HQQ later).

All functions work on a 2-D ``blocks`` view, shape (n_blocks, block_len), so per-tensor,
per-channel and per-group granularity are the same code.
"""

from __future__ import annotations

import torch

from lowbit.errors import ShapeError
from lowbit.spec import QuantSpec

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def scale_dtype(spec: QuantSpec) -> torch.dtype:
    return _DTYPES[spec.scale_dtype]


def as_blocks(w: torch.Tensor, spec: QuantSpec, name: str = "weight") -> torch.Tensor:
    """View ``w`` (out, in, ...) as (n_blocks, block_len), in float32."""
    return w.detach().to(torch.float32).reshape(-1, spec.block_len(tuple(w.shape), name))


def qparams(
    blocks: torch.Tensor, spec: QuantSpec, shrink: torch.Tensor | float = 1.0, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (n_blocks,) in ``spec.scale_dtype`` and integer zero (n_blocks,) uint8, or None if symmetric.

    ``shrink`` (scalar or per block) narrows the range before rounding: the clipping search.
    ``check=False`` skips the NaN/inf scan, for search loops over a weight already checked once.
    """
    if check and not torch.isfinite(blocks).all():
        raise ShapeError("weight holds NaN or inf values; quantizing it would spread them to whole blocks")
    shrink = torch.as_tensor(shrink, dtype=torch.float32, device=blocks.device)
    if spec.symmetric:
        amax = blocks.abs().amax(dim=1) * shrink
        scale = amax / (spec.qmax / 2)
        zero = None
    else:
        lo = blocks.amin(dim=1).clamp(max=0) * shrink
        hi = blocks.amax(dim=1).clamp(min=0) * shrink
        scale = (hi - lo) / spec.qmax
    sdt = scale_dtype(spec)
    if sdt == torch.float16 and bool((scale > torch.finfo(torch.float16).max).any()):
        raise ShapeError(
            "a block's scale overflows float16 (weights above ~4e5); use scale_dtype='float32'"
        )
    # Rounded to nearest, as GPTQ and compressed-tensors store it. A scale that rounds down lets the
    # block's extreme weights reach past +-(qmax/2) steps: the negative one then uses the lowest code
    # (-2**(bits-1)), the positive one is clipped by at most (qmax/2) * 2**-11 extra steps (float16).
    scale = scale.to(sdt)
    # A block of zeros (or one whose scale underflows) gets scale 1: its codes sit on the zero point.
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if not spec.symmetric:
        zero = torch.round(-lo / scale.float()).clamp(0, spec.qmax).to(torch.uint8)
    return scale, zero


def quantize_blocks(
    blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec
) -> torch.Tensor:
    """Codes (n_blocks, block_len) uint8 in [0, qmax] for the given grid."""
    s = scale.float().unsqueeze(1)
    z = torch.full_like(s, spec.mid) if zero is None else zero.float().unsqueeze(1)
    return torch.clamp(torch.round(blocks / s) + z, 0, spec.qmax).to(torch.uint8)


def dequantize_blocks(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(codes - zero) * scale`` for codes (n_blocks, block_len)."""
    s = scale.to(dtype).unsqueeze(1)
    if zero is None:
        return (codes.to(dtype) - spec.mid) * s
    return (codes.to(dtype) - zero.to(dtype).unsqueeze(1)) * s
