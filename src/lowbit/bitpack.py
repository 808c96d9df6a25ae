"""Dense little-endian bit packing of b-bit codes, b in 2..8 (the core of lowbit's native layout).

Codes are laid out one after the other from the least significant bit of byte 0::

    bits=4   byte k = c[2k]   | c[2k+1] << 4                 (two codes per byte)
    bits=2   byte k = c[4k]   | c[4k+1] << 2 | ... << 6      (four codes per byte)
    bits=3   8 codes -> 3 bytes, codes straddle byte boundaries
             byte0 = c0 | c1<<3 | (c2 & 3)<<6 ; byte1 = c2>>2 | c3<<1 | c4<<4 | (c5 & 1)<<7 ; ...

The packed size is ceil(n * bits / 8) bytes, so storage really shrinks to ``bits`` per weight.
QuantizedTensor (tensor.py) stores its codes this way; formats/intpack.py names the layout.
"""

from __future__ import annotations

import torch


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D uint8 tensor of codes < 2**bits into ceil(n*bits/8) bytes."""
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes.clone()
    if 8 % bits == 0:  # 2 or 4 bits: whole codes per byte
        per = 8 // bits
        n = codes.numel()
        pad = (-n) % per
        c = torch.nn.functional.pad(codes, (0, pad)).view(-1, per).to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
        return (c << shifts).sum(dim=1).to(torch.uint8)
    # general case: every 8 codes form one (8*bits)-bit little-endian word, written as `bits` bytes
    n = codes.numel()
    c = torch.nn.functional.pad(codes, (0, (-n) % 8)).view(-1, 8).to(torch.int64)
    word = (c << (torch.arange(8, dtype=torch.int64, device=c.device) * bits)).sum(dim=1, keepdim=True)  # (n/8, 1)
    out = (word >> (torch.arange(bits, dtype=torch.int64, device=c.device) * 8)) & 0xFF  # (n/8, bits)
    return out.reshape(-1)[: packed_nbytes(n, bits)].to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``n`` codes as uint8."""
    packed = packed.reshape(-1)
    if bits == 8:
        return packed[:n]
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits
        return ((packed.unsqueeze(1) >> shifts) & mask).reshape(-1)[:n]
    dev = packed.device
    b = torch.nn.functional.pad(packed, (0, (-packed.numel()) % bits)).view(-1, bits).to(torch.int64)
    word = (b << (torch.arange(bits, dtype=torch.int64, device=dev) * 8)).sum(dim=1, keepdim=True)
    codes = (word >> (torch.arange(8, dtype=torch.int64, device=dev) * bits)) & mask  # (n/8, 8)
    return codes.reshape(-1)[:n].to(torch.uint8)
