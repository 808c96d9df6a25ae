"""bitsandbytes' 4-bit formats: NF4 and FP4 codes per block of 64 with float32 absmax, optionally
double-quantized (QLoRA): the absmax constants, less their mean, re-quantized to 8 bits per block of
256 with bitsandbytes' dynamic map. Codes and constants are bit-identical to
``bitsandbytes.functional.quantize_4bit`` on CPU (tests/unit/test_bnb4.py: golden fixtures and, when
bitsandbytes is installed, a live comparison).

    q = quantize_4bit(w, "nf4", double_quant=True)     # Bnb4 (packed codes, constants)
    w_hat = q.dequantize()                              # float32, w's shape
    q.bits_per_weight                                   # 4.127 for NF4 + DQ at block 64

Written from the formats as the QLoRA paper and bitsandbytes' kernels define them (the NF4 table, the
FP4 e2m1 values, the dynamic 8-bit map and its 65536-entry lookup), not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from lowbit.errors import InputError

QUANT_TYPES = ("nf4", "fp4")

# NF4: quantiles of N(0, 1) with equal mass per bin and an exact zero, scaled to [-1, 1] (QLoRA, Table/App. E).
_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
# FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2) in bit-pattern order, then divided by its max (12).
_FP4 = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
LUT_SIZE = 1 << 16


@cache
def code4(quant_type: str) -> torch.Tensor:
    """The 16 values a 4-bit code stands for (times the block's absmax)."""
    if quant_type not in QUANT_TYPES:
        raise InputError(f"4-bit type {quant_type!r}: choose nf4 or fp4")
    data = torch.tensor(_NF4 if quant_type == "nf4" else _FP4)
    return data / data.abs().max()


@cache
def _bounds(quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints between the sorted code values, and the sort order (FP4's codes are not sorted)."""
    code = code4(quant_type)
    order = torch.argsort(code)  # the same call as bitsandbytes: the order of +0/-0 must match
    return (code[order[:-1]] + code[order[1:]]) / 2, order


@cache
def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (Dettmers 2015): for each decade 10^-6..10^0, a linear
    fraction grid of 2^k + 1 points whose midpoints are the values, both signs, plus 0 and 1; sorted."""
    values: list[float] = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (-6 + i)
        values += (scale * mids).tolist() + (-scale * mids).tolist()  # float32 products, as the reference
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    values.sort()
    return torch.tensor(values, dtype=torch.float32)


@cache
def _lut(code_bytes: bytes) -> np.ndarray:
    """For each of 65536 evenly spaced points of [-1, 1], the index of the nearest code value, found
    as bitsandbytes' CPU kernel does (a scan over float32 midpoints)."""
    code = np.frombuffer(code_bytes, dtype=np.float32)
    mids = np.float32(0.5) * (code[:-1] + code[1:])
    pts = np.float32(-1.0) + (np.float32(2.0) * np.arange(LUT_SIZE, dtype=np.float32)) / np.float32(LUT_SIZE - 1)
    # index = number of midpoints strictly below the point (the scan advances while mid < val)
    return np.searchsorted(mids, pts, side="left").astype(np.uint8)


def quantize_blockwise8(a: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit codes of ``a`` against ``code`` (256 sorted values) per block: (codes uint8, absmax float32).
    bitsandbytes' CPU kernel: x / absmax mapped to a 65536-entry table. The index arithmetic
    ((v + 1) * 0.5 * 65535 + 0.5, truncated) is evaluated in float64 and rounded once, which is what a
    fused multiply-add gives; plain float32 gave the same indices on 3M test values (live test)."""
    x = a.detach().reshape(-1).to(torch.float32).numpy()
    n = x.size
    nb = -(-n // blocksize)
    pad = np.zeros(nb * blocksize, dtype=np.float32)
    pad[:n] = x
    blocks = pad.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: 0 * inf, overwritten below
        inv = np.float32(1.0) / absmax
        v = np.clip(blocks * inv[:, None], np.float32(-1.0), np.float32(1.0))
        t = (v + np.float32(1.0)) * np.float32(0.5)
        idx = (t.astype(np.float64) * (LUT_SIZE - 1) + 0.5).astype(np.float32)
        idx = np.nan_to_num(idx).astype(np.uint16)  # = fma(t, 65535, 0.5), truncated
    out = _lut(code.numpy().astype(np.float32).tobytes())[idx]
    out[absmax == 0] = 0
    return torch.from_numpy(out.reshape(-1)[:n].copy()), torch.from_numpy(absmax.astype(np.float32))


def dequantize_blockwise8(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    n = q.numel()
    vals = code.to(q.device)[q.long()]
    nb = absmax.numel()
    full = torch.zeros(nb * blocksize, device=q.device)
    full[:n] = vals
    return (full.reshape(nb, blocksize) * absmax[:, None]).reshape(-1)[:n]


@dataclass
class Bnb4:
    """A 4-bit bitsandbytes tensor: ``packed`` (numel/2,) uint8, two codes per byte, the first in the
    high nibble; ``absmax`` (blocks,) float32, or with double quantization ``absmax`` (blocks,) uint8
    codes of absmax - ``offset`` under ``absmax2`` (per 256) and the dynamic map."""

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    quant_type: str
    blocksize: int = 64
    offset: torch.Tensor | None = None
    absmax2: torch.Tensor | None = None
    blocksize2: int = 256

    @property
    def double_quant(self) -> bool:
        return self.offset is not None

    def constants(self) -> torch.Tensor:
        """The float32 absmax of every block (dequantized when double-quantized)."""
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise8(self.absmax, self.absmax2, dynamic_map(), self.blocksize2) + self.offset

    def dequantize(self) -> torch.Tensor:
        n = int(np.prod(self.shape))
        codes = torch.stack([self.packed >> 4, self.packed & 0xF], 1).reshape(-1)[:n]
        vals = code4(self.quant_type).to(codes.device)[codes.long()]
        absmax = self.constants()
        nb = absmax.numel()
        full = torch.zeros(nb * self.blocksize, device=codes.device)
        full[:n] = vals
        return (full.reshape(nb, self.blocksize) * absmax[:, None]).reshape(-1)[:n].reshape(self.shape)

    @property
    def nbytes(self) -> int:
        extra = 0 if not self.double_quant else self.absmax2.numel() * 4 + 4
        return self.packed.numel() + self.absmax.numel() * self.absmax.element_size() + extra

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / int(np.prod(self.shape))


def quantize_4bit(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False) -> Bnb4:
    """NF4/FP4 codes of ``w`` per ``blocksize`` values (flattened, row-major), as bitsandbytes makes them."""
    bounds, order = _bounds(quant_type)
    a = w.detach().reshape(-1).to(torch.float32)
    if not torch.isfinite(a).all():
        raise InputError(f"{int((~torch.isfinite(a)).sum())} NaN/inf value(s): {quant_type} cannot represent them")
    n = a.numel()
    rem = n % blocksize
    full = n - rem
    com = a[:full].reshape(full // blocksize, blocksize)
    absmax = com.abs().max(dim=-1)[0]
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = a[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = torch.bucketize(scaled, bounds, out_int32=True)
    if quant_type != "nf4":
        q = order[q]
    q8 = q.to(torch.uint8)
    packed = (q8[::2] << 4) | q8[1::2]
    shape = tuple(w.shape)
    if not double_quant:
        return Bnb4(packed, absmax, shape, quant_type, blocksize)
    offset = absmax.mean()
    qabs, absmax2 = quantize_blockwise8(absmax - offset, dynamic_map(), 256)
    return Bnb4(packed, qabs, shape, quant_type, blocksize, offset, absmax2, 256)
