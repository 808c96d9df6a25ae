"""What is inside a checkpoint or GGUF file: each tensor's type, shape and bits per weight."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import InputError


@dataclass
class TensorInfo:
    name: str
    dtype: str  # torch dtype, GGUF type name, or a lowbit spec such as int4-asym-group64
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bpw(self) -> float:
        return 8 * self.nbytes / max(self.numel, 1)


@dataclass
class FileInfo:
    path: str
    format: str
    tensors: list[TensorInfo]

    @property
    def bpw(self) -> float:
        return 8 * sum(t.nbytes for t in self.tensors) / max(sum(t.numel for t in self.tensors), 1)


def inspect_path(path: str | Path) -> FileInfo:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} not found")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise InputError(f"{path} holds no .safetensors file to inspect")
        infos = [inspect_safetensors(f) for f in files]
        return FileInfo(str(path), infos[0].format, [t for i in infos for t in i.tensors])
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return inspect_gguf(path)
    if path.suffix == ".safetensors":
        return inspect_safetensors(path)
    raise InputError(f"{path} is neither a GGUF file, a .safetensors file nor a checkpoint directory")


def inspect_gguf(path: Path) -> FileInfo:
    import gguf

    from lowbit.loaders.dispatch import check_gguf

    check_gguf(path)
    reader = gguf.GGUFReader(str(path))
    rows = [TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.n_bytes))
            for t in reader.tensors]
    return FileInfo(str(path), "gguf", rows)


def inspect_safetensors(path: Path) -> FileInfo:
    from safetensors import safe_open

    from lowbit.loaders.safetensors_source import read_header

    read_header(path)  # lengths, offsets, dtypes and shapes checked before the library reads it
    try:
        f = safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors' own error type for bad headers
        raise InputError(f"{path} is not a readable safetensors file: {e}") from None
    with f:
        meta = f.metadata() or {}
        raw = {k: f.get_slice(k) for k in f.keys()}
        shapes = {k: tuple(s.get_shape()) for k, s in raw.items()}
        dtypes = {k: str(s.get_dtype()) for k, s in raw.items()}
    record = _record(path, meta["lowbit"]) if "lowbit" in meta else None
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "I32": 4, "I64": 8, "F64": 8, "I16": 2, "BOOL": 1}
    nbytes = {k: math.prod(shapes[k]) * sizes.get(dtypes[k].upper(), 4) for k in shapes}
    rows: list[TensorInfo] = []
    used: set[str] = set()
    if record:
        from lowbit.spec import QuantSpec

        for layer, info in record["layers"].items():
            if "spec" in info:
                parts = [f"{layer}.{p}" for p in ("qweight", "scale", "zero") if f"{layer}.{p}" in shapes]
                try:
                    label = str(QuantSpec.from_dict(info["spec"]))
                except (TypeError, ValueError) as e:
                    raise InputError(f"{path}: layer {layer} has an invalid spec {info['spec']} ({e})") from None
            else:  # NF4 / LLM.int8 / W8A8 layers: every tensor of the layer but its bias
                parts = [k for k in shapes if k.startswith(f"{layer}.") and k != f"{layer}.bias"]
                label = info.get("format", info.get("module", "?"))
            used.update(parts)
            rows.append(TensorInfo(f"{layer}.weight", label, tuple(info["shape"]), sum(nbytes[p] for p in parts)))
    for k in shapes:
        if k not in used:
            rows.append(TensorInfo(k, dtypes[k], shapes[k], nbytes[k]))
    return FileInfo(str(path), "lowbit" if record else "safetensors", rows)


def _record(path: Path, text: str) -> dict:
    """A lowbit checkpoint's quantization record (the file's metadata), its shape checked."""
    from lowbit.loaders.checkpoint import check_record

    try:
        record = json.loads(text)
    except ValueError:
        raise InputError(f"{path}: its lowbit record is not JSON") from None
    check_record(record, path)
    for layer, info in record["layers"].items():
        shape = info.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError(f"{path}: layer {layer} of the lowbit record has no valid shape ({shape!r})")
    return record
