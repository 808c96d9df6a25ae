"""Tensors of a Hugging Face directory's safetensors files (one file, or shards listed in
``model.safetensors.index.json``), read one at a time in their stored dtype.

Each file's header is read and checked when the source opens (length, JSON, dtype, every byte range
inside the file): a truncated or malformed shard fails at once with one line, before any work."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import InputError

INDEX = "model.safetensors.index.json"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER = 100 << 20  # the safetensors format's own limit


def read_header(path: Path) -> dict[str, Any]:
    """The checked JSON header of a safetensors file: {name: {"dtype", "shape", "data_offsets"}}."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= min(MAX_HEADER, size - 8):
                raise InputError(f"{path}: not a safetensors file (header length {n} in a {size}-byte file)")
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except _Duplicate as e:
        raise InputError(f"{path}: its header names {e.args[0]!r} twice") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise InputError(f"{path}: its __metadata__ must map names to strings")
    _check_entries(path, header, size - 8 - n)
    return header


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _check_entries(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    for name, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in DTYPES and isinstance(info.get("shape"), list)
        offsets = info.get("data_offsets") if ok else None
        if not ok or not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InputError(f"{path}: tensor {name!r} has a malformed entry in the header")
        numel = 1
        for d in info["shape"]:
            if not isinstance(d, int) or d < 0:
                raise InputError(f"{path}: tensor {name!r} has a malformed shape {info['shape']}")
            numel *= d
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise InputError(f"{path}: tensor {name!r} lies past the end of the file (bytes {begin}-{end} of "
                             f"{data_bytes}); the file is truncated")
        if end - begin != numel * DTYPES[info["dtype"]].itemsize:
            raise InputError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {info['shape']} "
                             f"{info['dtype']}")
    # as the safetensors library requires: the tensors tile the data, no overlap, no gap, nothing after
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items())
    at, prev = 0, None
    for begin, end, name in spans:
        if begin < at:
            raise InputError(f"{path}: tensors {prev!r} and {name!r} overlap in the file (bytes {begin}..{at})")
        if begin > at:
            raise InputError(f"{path}: tensor {name!r} starts at data byte {begin}, expected {at} (a gap)")
        at, prev = end, name
    if at != data_bytes:
        raise InputError(f"{path}: {data_bytes - at} byte(s) after the last tensor; the header does not match the file")


class SafetensorsSource:
    """Tensor name -> its file, dtype and shape; ``get`` reads one tensor."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, Path] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.offsets: dict[str, int] = {}  # where each tensor's bytes start in its file
        for file in _files(directory):
            with open(file, "rb") as f:
                start = 8 + struct.unpack("<Q", f.read(8))[0]
            for name, info in read_header(file).items():
                self.files[name] = file
                self.dtypes[name] = DTYPES[info["dtype"]]
                self.shapes[name] = tuple(info["shape"])
                self.offsets[name] = start + info["data_offsets"][0]

    def keys(self) -> list[str]:
        return list(self.files)

    def get(self, key: str) -> torch.Tensor:
        """One tensor, read with a plain read (not a memory map: mapped pages that were read count in the
        process' RSS until the map closes, so a streamed run would grow by every block it read)."""
        buf = bytearray(self.nbytes(key))
        try:
            with open(self.files[key], "rb") as f:
                f.seek(self.offsets[key])
                got = f.readinto(buf)
        except OSError as e:
            raise InputError(f"cannot read {self.files[key]}: {e.strerror}") from None
        if got != len(buf):
            raise InputError(f"{self.files[key]}: tensor {key!r} is cut short ({got} of {len(buf)} bytes)")
        if not buf:
            return torch.empty(self.shapes[key], dtype=self.dtypes[key])
        return torch.frombuffer(buf, dtype=self.dtypes[key]).reshape(self.shapes[key])

    def nbytes(self, key: str) -> int:
        n = self.dtypes[key].itemsize
        for d in self.shapes[key]:
            n *= d
        return n


def _files(directory: Path) -> list[Path]:
    """The safetensors files of a directory: the index's shards, or model.safetensors, or every one."""
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{index}: not a safetensors index (a JSON object with a weight_map)") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise InputError(f"{index} lists {len(missing)} shard(s) that are not in {directory}: {', '.join(missing[:3])}")
        return [directory / s for s in shards]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        raise InputError(f"{directory} has no .safetensors weights (pytorch_model.bin pickles are not read)")
    return found
