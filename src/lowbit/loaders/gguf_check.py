"""Walk a GGUF file's header, metadata and tensor table with every length checked against the file,
before any library parses it: a corrupt or hostile file is one clear InputError, never a crash, a
hang or a huge allocation (gguf-py trusts lengths: a 2^62-byte string reads as a short one, a 2^61
element array tries to map it).
"""

from __future__ import annotations

import itertools
import mmap
import struct
from pathlib import Path

import gguf

from lowbit.errors import InputError

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
MAX_DIMS = 4


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.path} is not a valid GGUF file: {what} (at byte {self.pos} of {self.size})")

    def take(self, fmt: str) -> int:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise self.fail("truncated")
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} of {n} bytes runs past the end of the file")
        self.pos += n

    def string(self, what: str, limit: int | None = 256, errors: str = "replace") -> str:
        """A length-prefixed string, checked against the file; decoded up to ``limit`` bytes."""
        n = self.take("Q")
        start = self.pos
        self.skip(n, what)
        return bytes(self.buf[start : start + (n if limit is None else min(n, limit))]).decode("utf-8", errors)

    def read(self, vtype: int, key: str) -> object:
        """A metadata value (after the checks of :meth:`value` passed on this file)."""
        if vtype in _SCALAR:
            fmt = _FMT[vtype]
            v = struct.unpack_from(fmt, self.buf, self.pos)[0]
            self.pos += _SCALAR[vtype]
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(key, limit=None, errors="surrogateescape")
        etype, n = self.take("I"), self.take("Q")
        if etype in _SCALAR:
            size = _SCALAR[etype] * n
            vals = list(struct.unpack_from(f"<{n}{_FMT[etype][1:]}", self.buf, self.pos))
            self.pos += size
            return (etype, [bool(v) for v in vals] if etype == 7 else vals)
        if etype == _STRING:
            return (etype, self.strings(n, key, decode=True))
        return (etype, [self.read(etype, key) for _ in range(n)])

    def strings(self, n: int, key: str, decode: bool) -> list[str] | None:
        """``n`` length-prefixed strings (a tokenizer's vocabulary: ~10^5 of them), each checked
        against the file, in one tight loop; decoded with surrogateescape so any bytes round-trip."""
        if n > (self.size - self.pos) // 8:
            raise self.fail(f"array {key} claims {n} entries, more than the file can hold")
        buf, pos, size = self.buf, self.pos, self.size
        unpack = _U64.unpack_from
        out: list[str] | None = [] if decode else None
        for _ in range(n):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail("truncated")
            (m,) = unpack(buf, pos)
            pos += 8
            if m > size - pos:
                self.pos = pos
                raise self.fail(f"string in {key} of {m} bytes runs past the end of the file")
            if out is not None:
                out.append(buf[pos : pos + m].decode("utf-8", "surrogateescape"))
            pos += m
        self.pos = pos
        return out

    def value(self, vtype: int, key: str, depth: int = 0) -> object:
        """Skip one metadata value, checked; returns a scalar's value, a string (valid UTF-8), or an
        array's (element type, count)."""
        if vtype in _SCALAR:
            start = self.pos
            self.skip(_SCALAR[vtype], f"value of {key}")
            return struct.unpack_from(_FMT[vtype], self.buf, start)[0]
        if vtype == _STRING:
            return self.utf8(self.string(f"string value of {key}", limit=None, errors="surrogateescape"), f"value of {key}")
        if vtype == _ARRAY:
            if depth > 2:
                raise self.fail(f"{key}: arrays nested too deep")
            etype, n = self.take("I"), self.take("Q")
            if etype in _SCALAR:
                self.skip(n * _SCALAR[etype], f"array {key} ({n} values)")
            elif etype == _STRING:
                self.strings(n, key, decode=False)  # any bytes: vocabularies hold partial UTF-8 tokens
            elif etype == _ARRAY:
                if n > (self.size - self.pos) // 8:
                    raise self.fail(f"array {key} claims {n} entries, more than the file can hold")
                for _ in range(n):
                    self.value(etype, key, depth + 1)
            else:
                raise self.fail(f"{key}: unknown array element type {etype}")
            return (etype, n)
        raise self.fail(f"{key}: unknown value type {vtype}")

    def utf8(self, text: str, what: str) -> str:
        """``text`` (decoded with surrogateescape) must have been valid UTF-8."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None
        return text


def check_gguf(path: Path) -> None:
    """Raise InputError unless ``path`` is a well-formed little-endian GGUF v2/v3 file whose every
    length and tensor offset lies inside the file."""
    tensor_table(path)


def _walk(w: _Walker) -> list[tuple[str, int]]:
    if bytes(w.buf[:4]) != b"GGUF":
        raise InputError(f"{w.path} is not a GGUF file (magic {bytes(w.buf[:4])!r}, expected b'GGUF')")
    w.pos = 4
    version = w.take("I")
    if version not in (2, 3):
        raise w.fail(f"unsupported GGUF version {version} (lowbit reads 2 and 3; a big-endian file shows a huge number)")
    n_tensors, n_kv = w.take("Q"), w.take("Q")
    if n_kv > w.size // 12 or n_tensors > w.size // 24:
        raise w.fail(f"header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold")
    alignment = 32
    meta: dict[str, tuple[int, object]] = {}
    for _ in range(n_kv):
        key = w.utf8(w.string("metadata key", limit=None, errors="surrogateescape"), "a metadata key")
        if key in meta:
            raise w.fail(f"metadata key {key} appears twice")
        vtype = w.take("I")
        meta[key] = (vtype, w.value(vtype, key))
        if key == "general.alignment":
            v = meta[key][1]
            if vtype != 4 or not v or v & (v - 1):
                raise w.fail(f"general.alignment must be a power of two (got {v})")
            alignment = v
    infos = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = w.utf8(w.string("tensor name", limit=None, errors="surrogateescape"), "a tensor name")
        if name in names:
            raise w.fail(f"tensor {name} appears twice")
        names.add(name)
        ndims = w.take("I")
        if not 1 <= ndims <= MAX_DIMS:
            raise w.fail(f"tensor {name} has {ndims} dimensions")
        dims = [w.take("Q") for _ in range(ndims)]
        ttype, offset = w.take("I"), w.take("Q")
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise w.fail(f"tensor {name} has unknown type {ttype}") from None
        numel = 1
        for d in dims:
            numel *= d
        if numel > w.size * 64 or max(dims) > w.size * 64 or dims[0] % block:
            raise w.fail(f"tensor {name} has impossible dimensions {dims} for its type")
        infos.append((name, offset, numel // block * type_size, numel))
    data_start = -(-w.pos // alignment) * alignment
    for name, offset, nbytes, _ in infos:
        end = data_start + offset + nbytes
        if offset % alignment or end > w.size:
            raise InputError(f"{w.path} is truncated or corrupt: tensor {name} spans bytes "
                             f"{data_start + offset}..{end}, the file has {w.size}")
    spans = sorted((offset, offset + nbytes, name) for name, offset, nbytes, _ in infos)
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise InputError(f"{w.path} is corrupt: the data of tensors {a} and {b} overlap")
    check_metadata(w.path, meta, names)
    return [(name, numel) for name, _, _, numel in infos]


_INTS, _FLOATS = {0, 1, 2, 3, 4, 5, 10, 11}, {6, 12}
# per-architecture keys llama.cpp reads as numbers: (suffix, integer?, largest sane value)
_ARCH_KEYS = [("block_count", True, 4096), ("context_length", True, 1 << 24), ("embedding_length", True, 1 << 20),
              ("feed_forward_length", True, 1 << 22), ("attention.head_count", True, 1 << 14),
              ("attention.head_count_kv", True, 1 << 14), ("attention.key_length", True, 1 << 16),
              ("attention.value_length", True, 1 << 16), ("vocab_size", True, 1 << 24),
              ("attention.layer_norm_rms_epsilon", False, 1.0), ("attention.layer_norm_epsilon", False, 1.0),
              ("rope.freq_base", False, 1e12)]
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "seperator_token_id",
              "eot_token_id")


def check_metadata(path: Path, meta: dict[str, tuple[int, object]], names: set[str]) -> None:
    """The metadata llama.cpp and transformers read as numbers, ids and lists: types, ranges, and what
    they must agree with (the block count with the blocks the tensors hold, token ids with the vocabulary)."""
    def bad(what: str) -> InputError:
        return InputError(f"{path} is not a valid GGUF file: {what}")

    arch_t, arch = meta.get("general.architecture", (_STRING, None))
    if arch_t != _STRING:
        raise bad("general.architecture must be a string")
    for suffix, integer, limit in _ARCH_KEYS if arch else []:
        key = f"{arch}.{suffix}"
        if key not in meta:
            continue
        vtype, v = meta[key]
        if vtype == _ARRAY and integer and v[0] in _INTS:  # per-layer values (head counts, widths)
            continue
        if vtype not in (_INTS if integer else _INTS | _FLOATS) or not int(integer) <= v <= limit:
            raise bad(f"{key} must be {'an integer' if integer else 'a number'} from {int(integer)} to {limit:g}, got "
                      f"{v!r} (type {vtype})")
    blocks = meta.get(f"{arch}.block_count")
    if blocks is not None:
        held = {n.split(".")[1] for n in names if n.startswith("blk.") and n.count(".") >= 2}
        if blocks[1] != len(held):
            raise bad(f"{arch}.block_count is {blocks[1]}, but the file holds {len(held)} block(s) of tensors")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    if tokens[0] != _ARRAY or tokens[1][0] != _STRING or tokens[1][1] == 0:
        raise bad("tokenizer.ggml.tokens must be a non-empty list of strings")
    n_vocab = tokens[1][1]
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in meta and (meta[key][0] != _ARRAY or meta[key][1][1] != n_vocab):
            raise bad(f"{key} must list one value for each of the {n_vocab} tokens")
    for key in (f"tokenizer.ggml.{k}" for k in _TOKEN_IDS):
        if key in meta and (meta[key][0] not in _INTS or not 0 <= meta[key][1] < n_vocab):
            raise bad(f"{key} is {meta[key][1]!r}, not a token id below the vocabulary size {n_vocab}")


def tensor_table(path: Path) -> list[tuple[str, int]]:
    """(name, element count) of every tensor of a checked GGUF file, from its header alone."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise InputError(f"{path} is truncated or not a GGUF file: {size} bytes, shorter than a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _walk(_Walker(buf, path))
    finally:
        buf.close()


def read_metadata(path: Path) -> list[tuple[str, int, object]]:
    """Every metadata entry of a checked GGUF file as (key, value type, value); an array's value is
    (element type, list). Much faster than gguf-py's reader on large tokenizer arrays."""
    check_gguf(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        w = _Walker(buf, path)
        w.pos = 16
        n_kv = w.take("Q")
        out = []
        for _ in range(n_kv):
            key = w.string("metadata key", limit=None)
            vtype = w.take("I")
            out.append((key, vtype, w.read(vtype, key)))
        return out
    finally:
        buf.close()
