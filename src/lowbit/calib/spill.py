"""Calibration activations on disk, for runs whose residual stream does not fit in memory.

A block's inputs are a list of chunks ``((hidden, *rest), kwargs)``, one per micro-batch. The hidden
states are what grows with the calibration set (tokens x width x 4 bytes, entering and leaving every
block: 2 x 8.6 GB for 128 x 2048 tokens of a 70B model); ``rest`` and ``kwargs`` (rotary tables, masks)
are small and shared. :class:`SpilledChunks` is that list with each hidden state in its own file,
read back when the chunk is used and dropped after, so memory holds one chunk at a time:

    out = SpilledChunks(where / "b7")      # the outputs of block 6, the inputs of block 7
    out.append(((hidden, *rest), kwargs))  # written to b7/0.bin at once
    for args, kwargs in out: ...           # each read back in turn

The files of the block being calibrated are kept until its outputs are recorded, so a killed run
resumes from them (pipeline/stream.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

Chunk = tuple[tuple, dict]


class SpilledChunks:
    """A list of calibration chunks whose hidden states live in ``where/<j>.bin``. With ``write=False``
    the files are already there (a resumed run): appending records only the shape and the small rest."""

    def __init__(self, where: Path, write: bool = True) -> None:
        self.where, self.write = Path(where), write
        self.where.mkdir(parents=True, exist_ok=True)
        self._meta: list[tuple[tuple[int, ...], torch.dtype, torch.device, tuple, dict[str, Any]]] = []

    def append(self, chunk: Chunk) -> None:
        (hidden, *rest), kwargs = chunk
        path = self.where / f"{len(self._meta)}.bin"
        if self.write:
            tmp = path.with_suffix(".tmp")
            hidden.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tofile(tmp)
            tmp.replace(path)
        self._meta.append((tuple(hidden.shape), hidden.dtype, hidden.device, tuple(rest), kwargs))

    def __len__(self) -> int:
        return len(self._meta)

    def __getitem__(self, j: int) -> Chunk:
        shape, dtype, device, rest, kwargs = self._meta[j]
        raw = torch.from_numpy(np.fromfile(self.where / f"{j}.bin", dtype=np.uint8))
        want = int(np.prod(shape)) * dtype.itemsize
        if raw.numel() != want:
            from lowbit.errors import CalibrationError

            raise CalibrationError(f"{self.where / f'{j}.bin'} holds {raw.numel()} bytes, not the {want} of a "
                                   f"{list(shape)} {dtype} activation; remove the .partial directory and start over")
        return (raw.view(dtype).view(shape).to(device), *rest), kwargs

    def __iter__(self) -> Iterator[Chunk]:
        return (self[j] for j in range(len(self)))

    def remove(self) -> None:
        shutil.rmtree(self.where, ignore_errors=True)
