"""GGUF tensors that no model parameter holds: the rope factors llama.cpp computes with.

Made from the config for a Hugging Face model (formats/ggml/names.py: Llama 3's ``rope_freqs``, Phi-3's
long-rope ``rope_factors_long`` / ``_short``), or copied from the GGUF a model was loaded from. They
are written as F32, in llama.cpp's tensor order (llama-quantize keeps them F32 too)."""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from lowbit.formats.ggml.names import NOT_PARAMETERS, extra_tensors


def order_key(name: str) -> tuple[int, str]:
    """llama.cpp's weight_name_comparer: by layer (-1 outside the blocks), then by name. llama-quantize
    writes its output in this order, so a lowbit file can be byte-identical to one it writes."""
    return (int(name.split(".")[1]) if name.startswith("blk.") else -1, name)


def extras_of(handle: Any) -> dict[str, np.ndarray]:
    """The extra tensors of ``handle``'s file: its GGUF source's own, else those its config implies."""
    if handle.gguf_source:
        from gguf.quants import dequantize

        from lowbit.loaders.gguf_check import tensor_table

        if not any(name in NOT_PARAMETERS for name, _ in tensor_table(handle.gguf_source)):
            return {}  # the usual case: no need for gguf-py's reader, seconds on a large vocabulary
        r = gguf.GGUFReader(str(handle.gguf_source))
        return {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
                for t in r.tensors if t.name in NOT_PARAMETERS}
    return extra_tensors(handle.model.config)


def data_bytes(extras: dict[str, np.ndarray], alignment: int) -> int:
    """Their bytes in the file, each padded to the alignment."""
    return sum(gguf.GGUFWriter.ggml_pad(a.nbytes, alignment) for a in extras.values())
