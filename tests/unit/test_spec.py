"""spec.py: validation, granularity, block sizes and the bits-per-weight formula."""

from __future__ import annotations

import dataclasses

import pytest

from lowbit.errors import InputError, LowbitError, ShapeError
from lowbit.spec import QuantSpec


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -4])
def test_bits_out_of_range_raise_input_error(bits: int) -> None:
    with pytest.raises(InputError, match=f"bits={bits}"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("bits", [4.0, "4", True])
def test_bits_must_be_an_int(bits: object) -> None:
    with pytest.raises(InputError):
        QuantSpec(bits=bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", range(2, 9))
def test_bits_2_to_8_accepted(bits: int) -> None:
    s = QuantSpec(bits=bits)
    assert s.qmax == 2**bits - 1
    assert s.mid == 2 ** (bits - 1)


def test_bad_group_size_and_scale_dtype() -> None:
    with pytest.raises(InputError, match="group_size=-2"):
        QuantSpec(group_size=-2)
    with pytest.raises(InputError, match="scale_dtype"):
        QuantSpec(scale_dtype="float8")


def test_errors_are_lowbit_errors() -> None:
    assert issubclass(InputError, LowbitError) and issubclass(ShapeError, LowbitError)


@pytest.mark.parametrize(
    "group_size, expected", [(0, "tensor"), (-1, "channel"), (64, "group64"), (128, "group128")]
)
def test_granularity_names(group_size: int, expected: str) -> None:
    assert QuantSpec(group_size=group_size).granularity == expected


def test_str() -> None:
    assert str(QuantSpec(4, True, 64)) == "int4-sym-group64"
    assert str(QuantSpec(8, False, -1)) == "int8-asym-channel"
    assert str(QuantSpec(3, True, 0)) == "int3-sym-tensor"


def test_block_len_and_n_blocks() -> None:
    shape = (96, 256)
    assert QuantSpec(group_size=0).block_len(shape) == 96 * 256
    assert QuantSpec(group_size=0).n_blocks(shape) == 1
    assert QuantSpec(group_size=-1).block_len(shape) == 256
    assert QuantSpec(group_size=-1).n_blocks(shape) == 96
    assert QuantSpec(group_size=64).block_len(shape) == 64
    assert QuantSpec(group_size=64).n_blocks(shape) == 96 * 4


def test_block_len_flattens_trailing_dims() -> None:
    # a conv-like (out, in, k, k) weight: width is in*k*k = 8*3*3 = 72
    assert QuantSpec(group_size=-1).block_len((16, 8, 3, 3)) == 72
    assert QuantSpec(group_size=8).n_blocks((16, 8, 3, 3)) == 16 * 9


def test_group_not_dividing_width_names_width_and_suggests_divisor() -> None:
    with pytest.raises(ShapeError) as ei:
        QuantSpec(group_size=80).block_len((32, 192), name="mlp.up")
    msg = str(ei.value)
    assert "192" in msg and "mlp.up" in msg and "80" in msg
    assert "[32, 64]" in msg  # divisors of 192 among 32/64/128/256
    assert "\n" not in msg


def test_group_error_without_standard_divisor_suggests_per_channel() -> None:
    with pytest.raises(ShapeError, match=r"input width 100 .*--group-size -1"):
        QuantSpec(group_size=64).block_len((8, 100))


def test_group_larger_than_width_is_an_error() -> None:
    with pytest.raises(ShapeError, match="input width 64"):
        QuantSpec(group_size=128).block_len((8, 64))


def test_one_d_weight_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="2-D"):
        QuantSpec().block_len((64,))


@pytest.mark.parametrize(
    "spec, shape, bpw",
    [
        (QuantSpec(4, True, 64, "float16"), (128, 256), 4.25),
        (QuantSpec(4, False, 64, "float16"), (128, 256), 4.375),
        (QuantSpec(4, True, 32, "float16"), (128, 256), 4.5),
        (QuantSpec(4, True, 128, "float32"), (128, 256), 4.25),
        (QuantSpec(8, True, -1, "float16"), (128, 256), 8 + 16 / 256),
        (QuantSpec(8, False, -1, "bfloat16"), (128, 256), 8 + 24 / 256),
        (QuantSpec(2, True, 0, "float32"), (128, 256), 2 + 32 / (128 * 256)),
        (QuantSpec(3, False, 16, "float16"), (8, 32), 3 + 24 / 16),
    ],
)
def test_bits_per_weight_formula(spec: QuantSpec, shape: tuple[int, int], bpw: float) -> None:
    assert spec.bits_per_weight(shape) == pytest.approx(bpw, abs=1e-12)


def test_dict_round_trip_and_frozen() -> None:
    s = QuantSpec(3, False, 32, "bfloat16")
    assert QuantSpec.from_dict(s.to_dict()) == s
    assert QuantSpec.from_dict({"bits": 8, "extra": "ignored"}) == QuantSpec(bits=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bits = 4  # type: ignore[misc]
    with pytest.raises(InputError):
        QuantSpec.from_dict({"bits": 1})
