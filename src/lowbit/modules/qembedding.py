"""QuantizedEmbedding: an ``nn.Embedding`` stored as packed codes (opt-in: embeddings stay in full
precision by default, as the guide and every reference tool do, since they are few weights per token
but hurt quality when rounded).

Blocks run along the embedding dimension, so for per-channel and per-group specs a lookup unpacks
only the rows it needs; a per-tensor spec dequantizes the table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import grid
from lowbit.bitpack import packed_nbytes, unpack_codes
from lowbit.spec import PER_TENSOR, QuantSpec
from lowbit.tensor import QuantizedTensor


class QuantizedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, spec: QuantSpec, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.spec, self.padding_idx = num_embeddings, embedding_dim, spec, padding_idx
        shape = (num_embeddings, embedding_dim)
        nblk = spec.n_blocks(shape)
        self.register_buffer("qweight", torch.zeros(packed_nbytes(num_embeddings * embedding_dim, spec.bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(nblk, dtype=grid.scale_dtype(spec)))
        if not spec.symmetric:
            self.register_buffer("zero", torch.zeros(nblk, dtype=torch.uint8))
        else:
            self.zero = None

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, qt: QuantizedTensor) -> QuantizedEmbedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, qt.spec, emb.padding_idx)
        m.qweight, m.scale = qt.packed.clone(), qt.scale.clone()
        if m.zero is not None:
            m.zero = qt.zero.clone()
        return m

    def record(self) -> dict:
        """This layer in the checkpoint's record (export/checkpoint.py rebuilds it from this)."""
        return self.quantized_tensor().record("embedding")

    def quantized_tensor(self) -> QuantizedTensor:
        return QuantizedTensor(self.qweight, self.scale, self.zero, self.spec, (self.num_embeddings, self.embedding_dim))

    @property
    def in_features(self) -> int:  # for size accounting shared with QuantizedLinear
        return self.embedding_dim

    @property
    def out_features(self) -> int:
        return self.num_embeddings

    def _row_aligned(self) -> bool:
        return self.spec.group_size != PER_TENSOR and (self.embedding_dim * self.spec.bits) % 8 == 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self._row_aligned():
            return F.embedding(ids, self.quantized_tensor().dequantize(), self.padding_idx)
        flat = ids.reshape(-1)
        row_bytes = self.embedding_dim * self.spec.bits // 8
        packed = self.qweight.view(self.num_embeddings, row_bytes)[flat].reshape(-1)
        codes = unpack_codes(packed, self.spec.bits, flat.numel() * self.embedding_dim)
        per_row = self.scale.numel() // self.num_embeddings
        block = self.embedding_dim // per_row
        scale = self.scale.view(self.num_embeddings, per_row)[flat].reshape(-1)
        zero = None if self.zero is None else self.zero.view(self.num_embeddings, per_row)[flat].reshape(-1)
        rows = grid.dequantize_blocks(codes.view(-1, block), scale, zero, self.spec)
        return rows.view(*ids.shape, self.embedding_dim)

    def _apply(self, fn, recurse=True):
        scale = self.scale
        out = super()._apply(fn, recurse)
        self.scale = scale.to(self.qweight.device)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, spec={self.spec}"
