"""bitpack.py (+ formats/intpack.py): dense little-endian bit packing, exact round trips and the documented layout."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.formats import FORMATS, IntPacked, pack_codes, unpack_codes
from lowbit.bitpack import packed_nbytes
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.spec import QuantSpec

BITS = list(range(2, 9))
LENGTHS = [1, 7, 8, 9, 1001]


def _random_codes(n: int, bits: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 131 + n * 7 + bits)
    return torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_round_trip_exact_and_size(bits: int, n: int) -> None:
    codes = _random_codes(n, bits)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n * bits / 8) == packed_nbytes(n, bits)
    out = unpack_codes(packed, bits, n)
    assert out.dtype == torch.uint8
    assert torch.equal(out, codes)


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_extreme_codes(bits: int) -> None:
    qmax = (1 << bits) - 1
    for codes in (torch.full((13,), qmax, dtype=torch.uint8), torch.zeros(13, dtype=torch.uint8),
                  torch.tensor([qmax, 0] * 6 + [qmax], dtype=torch.uint8)):
        assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, codes.numel()), codes)


def test_four_bit_layout_low_nibble_first() -> None:
    codes = torch.tensor([0x1, 0x2, 0xA, 0xF, 0x7], dtype=torch.uint8)
    packed = pack_codes(codes, 4)
    assert packed.tolist() == [0x1 | 0x2 << 4, 0xA | 0xF << 4, 0x7]


def test_two_bit_layout() -> None:
    codes = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
    assert pack_codes(codes, 2).tolist() == [1 | 2 << 2 | 3 << 4 | 0 << 6, 3]


def test_three_bit_layout_eight_codes_in_three_bytes() -> None:
    codes = [5, 3, 6, 1, 7, 2, 4, 0]
    packed = pack_codes(torch.tensor(codes, dtype=torch.uint8), 3)
    assert packed.numel() == 3
    word = sum(c << (3 * i) for i, c in enumerate(codes))  # one 24-bit little-endian word
    assert packed.tolist() == [word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF]
    # the documented byte formulas
    c = codes
    assert packed[0] == (c[0] | c[1] << 3 | (c[2] & 3) << 6)
    assert packed[1] == (c[2] >> 2 | c[3] << 1 | c[4] << 4 | (c[5] & 1) << 7)


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_general_layout_is_a_little_endian_bitstream(bits: int) -> None:
    codes = _random_codes(19, bits, seed=3).tolist()
    stream = sum(c << (bits * i) for i, c in enumerate(codes))
    nbytes = packed_nbytes(len(codes), bits)
    expect = [(stream >> (8 * k)) & 0xFF for k in range(nbytes)]
    assert pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).tolist() == expect


def test_eight_bit_is_identity_copy() -> None:
    codes = _random_codes(10, 8)
    packed = pack_codes(codes, 8)
    assert torch.equal(packed, codes)
    packed[0] ^= 1
    assert not torch.equal(packed, codes), "pack_codes(…, 8) must not alias its input"


def test_unpack_ignores_padding_bits() -> None:
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    packed = pack_codes(codes, 4).clone()
    packed[-1] |= 0xF0  # garbage in the unused high nibble
    assert unpack_codes(packed, 4, 3).tolist() == [1, 2, 3]


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 64), QuantSpec(3, False, 32), QuantSpec(8, True, -1)])
def test_intpacked_format_round_trip(spec: QuantSpec) -> None:
    assert FORMATS.get("intpack") is IntPacked
    qt = rtn(torch.randn(16, 64, generator=torch.Generator().manual_seed(1)), RTNConfig(spec=spec))
    tensors = IntPacked.to_tensors(qt)
    assert set(tensors) == ({"qweight", "scale"} if spec.symmetric else {"qweight", "scale", "zero"})
    back = IntPacked.from_tensors(tensors, {"spec": spec.to_dict(), "shape": list(qt.shape)})
    assert back.spec == spec and back.shape == (16, 64)
    assert torch.equal(back.dequantize(), qt.dequantize())
