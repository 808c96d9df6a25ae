"""QuantizedLinear: an ``nn.Linear`` replacement that stores packed codes, not floats.

Buffers (saved in the state dict)::

    qweight  uint8 (ceil(out*in*bits/8),)   packed codes, bitpack.py
    scale    (n_blocks,) float16/float32
    zero     (n_blocks,) uint8              asymmetric specs only

Forward: with bfloat16 activations, it uses torch's CPU weight-only kernels where the spec fits
them (``_weight_int4pack_mm_for_cpu`` for codes of <= 4 bits whose blocks are multiples of 32,
``_weight_int8pack_mm`` for symmetric 5-8 bit per-channel or per-tensor); see ``kernel_name``. The
kernel layout is built on first use and kept in memory beside the packed buffers. Those kernels are slow with float32 activations on CPU (6-9x), so
larger float32 inputs dequantize the weight exactly and call ``F.linear``: evaluation numbers are
those of the exact quantized weights. Small float32 inputs (decode steps, at most KERNEL_MAX_ROWS
rows) are cast to bfloat16 for the kernel, where one exists, and cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec
from lowbit.tensor import QuantizedTensor

INT4_KERNEL_GROUPS = (32, 64, 128, 256)
# float32 inputs of at most this many rows (decode steps) go through the kernels in bfloat16: the
# unpack-per-call of the dequantize path costs more than the matmul there. Larger inputs dequantize.
KERNEL_MAX_ROWS = 8


class QuantizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        shape = (out_features, in_features)
        nblk = spec.n_blocks(shape)
        from lowbit.bitpack import packed_nbytes
        from lowbit.grid import scale_dtype

        self.register_buffer("qweight", torch.zeros(packed_nbytes(out_features * in_features, spec.bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(nblk, dtype=scale_dtype(spec)))
        if not spec.symmetric:
            self.register_buffer("zero", torch.zeros(nblk, dtype=torch.uint8))
        else:
            self.zero = None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        #: "auto": kernels for bfloat16 inputs and small float32 inputs; "dequant": always exact float
        #: dequantization (what evaluation uses); "kernel": kernels whenever the spec has one. Set per
        #: model with modules.kernel_mode.kernel_mode(model, mode).
        self.kernel_mode = "auto"
        self._kernel: tuple[str, torch.Tensor, torch.Tensor] | None = None

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, qt: QuantizedTensor) -> QuantizedLinear:
        m = cls(linear.in_features, linear.out_features, qt.spec, bias=linear.bias is not None)
        m.load_quantized(qt)
        if linear.bias is not None:  # where the weight is (a GPU too)
            m.bias = nn.Parameter(linear.bias.data.float().clone(), requires_grad=m.bias.requires_grad)
        return m

    def load_quantized(self, qt: QuantizedTensor) -> None:
        assert qt.shape == (self.out_features, self.in_features) and qt.spec == self.spec
        self.qweight = qt.packed.clone()
        self.scale = qt.scale.clone()
        if self.zero is not None:
            self.zero = qt.zero.clone()
        self._kernel = None

    def record(self) -> dict:
        """This layer in the checkpoint's record (export/checkpoint.py rebuilds it from this)."""
        return self.quantized_tensor().record("linear")

    def quantized_tensor(self) -> QuantizedTensor:
        return QuantizedTensor(self.qweight, self.scale, self.zero, self.spec, (self.out_features, self.in_features))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.quantized_tensor().dequantize(dtype)

    # --- forward -----------------------------------------------------------------------------
    def kernel_group(self) -> int | None:
        """The int4 kernel's group size for this layer: the largest of 256..32 dividing both the input
        width and the spec's block (per-channel and per-tensor scales are repeated per kernel group)."""
        block = self.spec.block_len((self.out_features, self.in_features))
        for g in sorted(INT4_KERNEL_GROUPS, reverse=True):
            if self.in_features % g == 0 and block % g == 0:
                return g
        return None

    def kernel_name(self) -> str | None:
        """Which torch CPU kernel a bfloat16 forward uses, or None (dequantize + F.linear).

        - ``int4pack`` (``_weight_int4pack_mm_for_cpu``): codes of 4 bits or fewer fit its 4-bit
          slots, with ``w = (q - 8) * s + z`` per kernel group, so sym and asym both map onto it;
        - ``int8pack`` (``_weight_int8pack_mm``): symmetric 5-8 bit codes minus the midpoint fit int8,
          with one scale per output row (per-channel or per-tensor specs).
        """
        s = self.spec
        if s.bits <= 4 and self.kernel_group() is not None:
            return "int4pack"
        if s.bits > 4 and s.symmetric and s.group_size in (PER_CHANNEL, PER_TENSOR):
            return "int8pack"
        return None

    def _per_row_group(self, v: torch.Tensor, g: int) -> torch.Tensor:
        """Expand per-block values (n_blocks,) to one value per (row, kernel group): (out, in/g)."""
        block = self.spec.block_len((self.out_features, self.in_features))
        assert block % g == 0, "kernel_group() divides the block"  # each block spans block/g kernel groups
        return v.repeat_interleave(block // g).view(self.out_features, self.in_features // g)

    def _prepare_kernel(self) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        name = self.kernel_name()
        if name is None or self._kernel is not None:
            return self._kernel
        codes = self.quantized_tensor().codes().view(self.out_features, self.in_features)
        if name == "int8pack":
            w = (codes.to(torch.int16) - self.spec.mid).to(torch.int8)
            scale = self.scale.float().expand(self.out_features) if self.scale.numel() == 1 else self.scale.float()
            self._kernel = (name, w, scale.to(torch.bfloat16))
        else:
            g = self.kernel_group()
            assert g is not None
            wp = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
            s = self._per_row_group(self.scale.float(), g)  # (out, in/g)
            zc = self._per_row_group(self.zero.float(), g) if self.zero is not None else torch.full_like(s, self.spec.mid)
            z = (8.0 - zc) * s  # (q - zero) * s == (q - 8) * s + (8 - zero) * s
            sz = torch.stack([s.t(), z.t()], dim=-1).contiguous().to(torch.bfloat16)  # (in/g, out, 2)
            self._kernel = (name, wp, sz)
        return self._kernel

    def _use_kernel(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or self.kernel_name() is None or self.kernel_mode == "dequant":
            return False
        if x.dtype == torch.bfloat16:
            return True
        rows = x.numel() // self.in_features
        if x.dtype != torch.float32:
            return False
        return self.kernel_mode == "kernel" or (self.kernel_mode == "auto" and rows <= KERNEL_MAX_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(x):
            name, w, aux = self._prepare_kernel()  # type: ignore[misc]
            x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
            if name == "int8pack":
                y = torch.ops.aten._weight_int8pack_mm(x2, w, aux)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, w, self.kernel_group(), aux)
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        w = self.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel = None  # new codes: the kernel layout must be rebuilt
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not round the stored scales: they keep their dtype, move device only.
        scale = self.scale
        out = super()._apply(fn, recurse)
        self.scale = scale.to(self.qweight.device)
        self._kernel = None
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, spec={self.spec}"
