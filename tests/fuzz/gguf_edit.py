"""A GGUF file as editable parts (metadata entries with their raw value bytes, tensor infos, data), and
back to bytes with any change, valid or not: duplicate keys, bad UTF-8, wrong value types, lengths that
lie. The fuzz cases build hostile files with it; lowbit's reader never sees this code."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class Tensor:
    name: bytes
    dims: list[int]
    ttype: int
    offset: int


@dataclass
class GGUF:
    version: int
    kv: list[tuple[bytes, int, bytes]]  # key, value type, the value's raw bytes
    tensors: list[Tensor]
    data: bytes
    alignment: int = 32
    counts: tuple[int, int] | None = field(default=None)  # (n_tensors, n_kv) to write instead of the true ones

    def get(self, key: str) -> tuple[int, bytes] | None:
        return next(((t, v) for k, t, v in self.kv if k == key.encode()), None)

    def set(self, key: str, vtype: int, raw: bytes) -> None:
        for i, (k, _, _) in enumerate(self.kv):
            if k == key.encode():
                self.kv[i] = (k, vtype, raw)
                return
        self.kv.append((key.encode(), vtype, raw))

    def drop(self, key: str) -> None:
        self.kv = [e for e in self.kv if e[0] != key.encode()]

    def to_bytes(self) -> bytes:
        n_t, n_kv = self.counts or (len(self.tensors), len(self.kv))
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, n_t, n_kv))
        for k, t, v in self.kv:
            out += string(k) + struct.pack("<I", t) + v
        for t in self.tensors:
            out += string(t.name) + struct.pack("<I", len(t.dims)) + b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.ttype, t.offset)
        out += b"\0" * (-len(out) % self.alignment)
        return bytes(out) + self.data


def string(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def scalar(vtype: int, v: object) -> bytes:
    return struct.pack(FMT[vtype], v)


def array(etype: int, values: list) -> bytes:
    body = b"".join(string(v) if etype == STRING else scalar(etype, v) for v in values)
    return struct.pack("<IQ", etype, len(values)) + body


def parse(buf: bytes) -> GGUF:
    pos = 4
    version, n_t, n_kv = struct.unpack_from("<IQQ", buf, pos)
    pos += 20

    def take_string() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n : pos]

    def skip_value(t: int) -> None:
        nonlocal pos
        if t in SCALAR:
            pos += SCALAR[t]
        elif t == STRING:
            take_string()
        else:
            et, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            for _ in range(n):
                skip_value(et)

    kv, alignment = [], 32
    for _ in range(n_kv):
        k = take_string()
        (t,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        start = pos
        skip_value(t)
        kv.append((k, t, buf[start:pos]))
        if k == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, start)
    tensors = []
    for _ in range(n_t):
        name = take_string()
        (nd,) = struct.unpack_from("<I", buf, pos)
        dims = list(struct.unpack_from(f"<{nd}Q", buf, pos + 4))
        pos += 4 + 8 * nd
        tt, off = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        tensors.append(Tensor(name, dims, tt, off))
    pos += -pos % alignment
    return GGUF(version, kv, tensors, buf[pos:], alignment)
