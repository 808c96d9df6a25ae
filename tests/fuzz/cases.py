"""Malformed variants of the seeds (tests/fuzz/seeds.py), seeded and reproducible: ``generate(n, seed)``
gives the same ``n`` cases every time. Structured cases cover every hostile-input category of issue 16
(safetensors headers, config fields, GGUF metadata and tensor tables, checkpoint records, imatrix
values, missing or renamed tensors, NaN weights); random ones truncate, flip bits, overwrite bytes and
plant huge lengths in each seed's header."""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuzz import gguf_edit as ge

HUGE = [0, 1, 2**31 - 1, 2**32, 2**40, 2**62, 2**63, 2**64 - 1]


@dataclass(frozen=True)
class Case:
    id: str
    seed: str  # which seed it starts from
    category: str
    make: Callable[[Path, Path], None]  # (copy of the seed, work dir) -> mutate the copy in place

    def build(self, seeds: dict[str, Path], work: Path) -> Path:
        src = seeds[self.seed]
        dst = work / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        self.make(dst, work)
        return dst


# ---- safetensors as (header, data) ----

def st_read(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_write(path: Path, header: dict | str | bytes, data: bytes, length: int | None = None) -> None:
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def st_file(root: Path) -> Path:
    return root / "model.safetensors"


def st_edit(fn: Callable[[dict, bytes], tuple[dict | str | bytes, bytes]]) -> Callable[[Path, Path], None]:
    def make(root: Path, _work: Path) -> None:
        header, data = st_read(st_file(root))
        new, data = fn(header, data)
        st_write(st_file(root), new, data)
    return make


def tensors_of(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def _pick(header: dict, part: str) -> str:
    return next((k for k in tensors_of(header) if part in k), tensors_of(header)[0])


def st_cases(seed: str) -> list[Case]:
    def drop(part):  # the file as a writer would make it without that tensor
        def fn(h, d):
            gone = _pick(h, part)
            keep = sorted(tensors_of(h), key=lambda k: h[k]["data_offsets"][0])
            out, data = {k: h[k] for k in h if k == "__metadata__"}, b""
            for k in keep:
                if k == gone:
                    continue
                b, e = h[k]["data_offsets"]
                out[k] = dict(h[k], data_offsets=[len(data), len(data) + e - b])
                data += d[b:e]
            return out, data
        return fn

    def unlisted(h, d):  # the header forgets a tensor whose bytes stay
        return {k: v for k, v in h.items() if k != _pick(h, "down_proj")}, d

    def rename(h, d):
        k = _pick(h, "down_proj")
        return {("renamed." + k if n == k else n): v for n, v in h.items()}, d

    def field(part, key, value):
        def fn(h, d):
            h[_pick(h, part)][key] = value
            return h, d
        return fn

    def overlap(h, d):
        names = tensors_of(h)
        a, b = h[names[0]]["data_offsets"], h[names[1]]["data_offsets"]
        size = b[1] - b[0]
        h[names[1]]["data_offsets"] = [a[0], a[0] + size]
        return h, d

    def dup(h, d):
        k = tensors_of(h)[0]
        text = json.dumps(h)
        entry = json.dumps({k: h[k]})[1:-1]
        return text[:-1] + ", " + entry + "}", d

    def nan(h, d):
        k = _pick(h, "down_proj")
        b = h[k]["data_offsets"][0]
        arr = bytearray(d)
        arr[b : b + 4] = struct.pack("<f", math.nan)
        return h, bytes(arr)

    def inf(h, d):
        k = _pick(h, "embed")
        b = h[k]["data_offsets"][0]
        arr = bytearray(d)
        arr[b + 8 : b + 12] = struct.pack("<f", math.inf)
        return h, bytes(arr)

    edits = {
        "drop-down_proj": drop("down_proj"), "drop-embeddings": drop("embed"), "drop-head-or-last": drop("lm_head"),
        "drop-norm": drop("norm"), "unlisted-tensor": unlisted, "rename-tensor": rename, "empty-header": lambda h, d: ({}, d),
        "dtype-unknown": field("q_proj", "dtype", "F128"), "dtype-int": field("q_proj", "dtype", 7),
        "dtype-other-size": field("q_proj", "dtype", "F16"), "shape-mismatch": field("q_proj", "shape", [3, 7]),
        "shape-negative": field("q_proj", "shape", [-64, -64]), "shape-string": field("q_proj", "shape", "64x64"),
        "offsets-past-end": field("q_proj", "data_offsets", [0, 10**12]),
        "offsets-reversed": field("q_proj", "data_offsets", [100, 0]),
        "offsets-one": field("q_proj", "data_offsets", [0]), "overlap": overlap, "duplicate-key": dup,
        "header-not-json": lambda h, d: (b"{not json at all", d), "header-list": lambda h, d: ("[1, 2, 3]", d),
        "header-bad-utf8": lambda h, d: (b'{"\xff\xfe": 1}', d),
        "metadata-not-dict": lambda h, d: (dict(h, __metadata__=[1, 2]), d),
        "metadata-int-values": lambda h, d: (dict(h, __metadata__={"format": 3}), d),
        "entry-not-object": lambda h, d: (dict(h, **{tensors_of(h)[0]: 5}), d),
        "nan-weight": nan, "inf-weight": inf, "data-cut": lambda h, d: (h, d[: len(d) // 2]),
        "data-extra": lambda h, d: (h, d + b"\0" * 64),
    }
    cases = [Case(f"{seed}:st:{name}", seed, "safetensors-header" if "weight" not in name else "poisoned",
                  st_edit(fn)) for name, fn in edits.items()]
    for n in HUGE + [-1]:
        def length(root: Path, _w: Path, n=n) -> None:
            h, d = st_read(st_file(root))
            text = json.dumps(h).encode()
            st_write(st_file(root), text, d, length=n % 2**64)
        cases.append(Case(f"{seed}:st:header-length-{n}", seed, "huge-length", length))
    return cases


# ---- config.json ----

def config_cases(seed: str) -> list[Case]:
    def set_(key, value):
        def make(root: Path, _w: Path) -> None:
            c = json.loads((root / "config.json").read_text())
            c[key] = value
            (root / "config.json").write_text(json.dumps(c))
        return make

    def raw(text):
        def make(root: Path, _w: Path) -> None:
            (root / "config.json").write_text(text)
        return make

    cases = []
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "num_hidden_layers"):
        for label, value in (("str", "64"), ("float", 64.5), ("null", None), ("bool", True), ("neg", -4), ("zero", 0),
                             ("huge", 10**12), ("list", [64])):
            cases.append(Case(f"{seed}:config:{key}={label}", seed, "config", set_(key, value)))
    for label, value in (("str", "lowbit"), ("list", [1]), ("int", 3), ("bits", {"quant_method": "bitsandbytes"})):
        cases.append(Case(f"{seed}:config:quantization_config={label}", seed, "config",
                          set_("quantization_config", value)))
    cases += [
        Case(f"{seed}:config:layers-1e6", seed, "config", set_("num_hidden_layers", 1000000)),
        Case(f"{seed}:config:layers-3", seed, "config", set_("num_hidden_layers", 3)),
        Case(f"{seed}:config:hidden-32", seed, "config", set_("hidden_size", 32)),
        Case(f"{seed}:config:vocab-200", seed, "config", set_("vocab_size", 200)),
        Case(f"{seed}:config:model_type-int", seed, "config", set_("model_type", 7)),
        Case(f"{seed}:config:model_type-unknown", seed, "config", set_("model_type", "no-such-arch")),
        Case(f"{seed}:config:architectures-str", seed, "config", set_("architectures", "LlamaForCausalLM")),
        Case(f"{seed}:config:eps-str", seed, "config", set_("rms_norm_eps" if "llama" in seed else "layer_norm_eps", "x")),
        Case(f"{seed}:config:eps-nan", seed, "config", raw_nan("rms_norm_eps" if "llama" in seed else "layer_norm_eps")),
        Case(f"{seed}:config:not-json", seed, "config", raw("{oops")),
        Case(f"{seed}:config:list", seed, "config", raw("[]")),
        Case(f"{seed}:config:empty", seed, "config", raw("")),
        Case(f"{seed}:config:bad-utf8", seed, "config", lambda r, _w: (r / "config.json").write_bytes(b'{"a": "\xff"}')),
    ]
    return cases


def raw_nan(key: str) -> Callable[[Path, Path], None]:
    def make(root: Path, _w: Path) -> None:
        c = json.loads((root / "config.json").read_text())
        c[key] = 0.5
        (root / "config.json").write_text(json.dumps(c).replace("0.5", "NaN"))
    return make


# ---- GGUF ----

def gguf_edit(fn: Callable[[ge.GGUF], None]) -> Callable[[Path, Path], None]:
    def make(path: Path, _w: Path) -> None:
        g = ge.parse(path.read_bytes())
        fn(g)
        path.write_bytes(g.to_bytes())
    return make


def gguf_cases(seed: str = "llama_gguf") -> list[Case]:
    def dup_key(g):
        g.kv.append(g.kv[1])

    def dup_tensor(g):
        g.tensors[1].name = g.tensors[0].name

    def bad_utf8(where):
        def fn(g):
            if where == "key":
                k, t, v = g.kv[1]
                g.kv[1] = (b"\xff" + k[1:], t, v)
            elif where == "value":
                i = next(i for i, e in enumerate(g.kv) if e[0] == b"general.name")
                g.kv[i] = (g.kv[i][0], ge.STRING, ge.string(b"\xc3\x28bad"))
            else:
                g.tensors[2].name = b"blk.\xff.attn_k.weight"
        return fn

    def set_kv(key, vtype, raw):
        return lambda g: g.set(key, vtype, raw)

    def tensor(fn):
        return fn

    def drop_tensor(part):
        def fn(g):
            g.tensors = [t for t in g.tensors if part not in t.name.decode()]
        return fn

    def rename_tensor(g):
        t = next(t for t in g.tensors if b"ffn_down" in t.name)
        t.name = t.name.replace(b"ffn_down", b"ffn_dowm")

    def overlap(g):
        g.tensors[2].offset = g.tensors[1].offset

    def retype(g):
        t = next(t for t in g.tensors if b"ffn_up" in t.name)
        t.ttype = 2  # F32 -> Q4_0: the same bytes read as blocks

    def nan(g):
        t = next(t for t in g.tensors if b"attn_q" in t.name)
        d = bytearray(g.data)
        d[t.offset : t.offset + 8] = struct.pack("<ff", math.nan, math.inf)
        g.data = bytes(d)

    def dims(g):
        g.tensors[3].dims = [g.tensors[3].dims[0] * 2] + g.tensors[3].dims[1:]

    edits = {
        "dup-key": dup_key, "dup-tensor": dup_tensor, "utf8-key": bad_utf8("key"), "utf8-value": bad_utf8("value"),
        "utf8-tensor": bad_utf8("tensor"),
        "block_count-2^20": set_kv("llama.block_count", 4, ge.scalar(4, 2**20)),
        "block_count-str": set_kv("llama.block_count", ge.STRING, ge.string("2")),
        "block_count-float": set_kv("llama.block_count", 6, ge.scalar(6, 2.0)),
        "block_count-3": set_kv("llama.block_count", 4, ge.scalar(4, 3)),
        "rms_eps-str": set_kv("llama.attention.layer_norm_rms_epsilon", ge.STRING, ge.string("1e-6")),
        "rms_eps-nan": set_kv("llama.attention.layer_norm_rms_epsilon", 6, ge.scalar(6, math.nan)),
        "heads-0": set_kv("llama.attention.head_count", 4, ge.scalar(4, 0)),
        "heads-huge": set_kv("llama.attention.head_count", 4, ge.scalar(4, 2**31)),
        "embedding-str": set_kv("llama.embedding_length", ge.STRING, ge.string("64")),
        "arch-int": set_kv("general.architecture", 4, ge.scalar(4, 1)),
        "arch-unknown": set_kv("general.architecture", ge.STRING, ge.string("nosucharch")),
        "tokens-empty": set_kv("tokenizer.ggml.tokens", ge.ARRAY, ge.array(ge.STRING, [])),
        "tokens-ints": set_kv("tokenizer.ggml.tokens", ge.ARRAY, ge.array(4, [1, 2, 3])),
        "token_type-short": set_kv("tokenizer.ggml.token_type", ge.ARRAY, ge.array(5, [1, 1])),
        "bos-past-vocab": set_kv("tokenizer.ggml.bos_token_id", 4, ge.scalar(4, 10**6)),
        "eos-negative": set_kv("tokenizer.ggml.eos_token_id", 5, ge.scalar(5, -3)),
        "eos-str": set_kv("tokenizer.ggml.eos_token_id", ge.STRING, ge.string("1")),
        "alignment-3": set_kv("general.alignment", 4, ge.scalar(4, 3)),
        "nested-array": set_kv("general.tags", ge.ARRAY, struct.pack("<IQ", ge.ARRAY, 1) + ge.array(4, [1])),
        "unknown-vtype": set_kv("general.x", 99, b""),
        "drop-ffn_down": drop_tensor("blk.1.ffn_down"), "drop-token_embd": drop_tensor("token_embd"),
        "drop-norm": drop_tensor("output_norm"), "rename-tensor": rename_tensor, "overlap": overlap,
        "retype-f32-q4_0": retype, "nan-weight": nan, "dims-doubled": dims,
        "ndims-0": tensor(lambda g: setattr(g.tensors[0], "dims", [])),
        "ndims-9": tensor(lambda g: setattr(g.tensors[0], "dims", [1] * 9)),
        "type-999": tensor(lambda g: setattr(g.tensors[0], "ttype", 999)),
        "offset-unaligned": tensor(lambda g: setattr(g.tensors[1], "offset", g.tensors[1].offset + 1)),
        "offset-huge": tensor(lambda g: setattr(g.tensors[1], "offset", 2**62)),
        "version-1": lambda g: setattr(g, "version", 1), "version-big-endian": lambda g: setattr(g, "version", 3 << 24),
    }
    cases = [Case(f"{seed}:gguf:{name}", seed, "gguf-tensors" if name.startswith(
        ("drop", "rename", "overlap", "retype", "nan", "dims", "ndims", "type", "offset", "dup-tensor", "utf8-tensor"))
        else "gguf-metadata", gguf_edit(fn)) for name, fn in edits.items()]
    for n in HUGE:
        cases.append(Case(f"{seed}:gguf:n_kv-{n}", seed, "huge-length",
                          gguf_edit(lambda g, n=n: setattr(g, "counts", (len(g.tensors), n)))))
        cases.append(Case(f"{seed}:gguf:n_tensors-{n}", seed, "huge-length",
                          gguf_edit(lambda g, n=n: setattr(g, "counts", (n, len(g.kv))))))
        cases.append(Case(f"{seed}:gguf:string-len-{n}", seed, "huge-length", gguf_edit(
            lambda g, n=n: g.set("general.name", ge.STRING, struct.pack("<Q", n) + b"tiny"))))
        cases.append(Case(f"{seed}:gguf:array-len-{n}", seed, "huge-length", gguf_edit(
            lambda g, n=n: g.set("tokenizer.ggml.token_type", ge.ARRAY, struct.pack("<IQ", 5, n)))))
        cases.append(Case(f"{seed}:gguf:dim-{n}", seed, "huge-length", gguf_edit(
            lambda g, n=n: setattr(g.tensors[1], "dims", [g.tensors[1].dims[0], n]))))
    return cases


# ---- lowbit checkpoint (its record lives in model.safetensors' metadata) ----

def checkpoint_cases(seed: str = "checkpoint") -> list[Case]:
    def record(fn):
        def edit(h, d):
            rec = json.loads(h["__metadata__"]["lowbit"])
            fn(rec)
            h["__metadata__"]["lowbit"] = json.dumps(rec)
            return h, d
        return st_edit(edit)

    def first(rec):
        return next(iter(rec["layers"].values()))

    edits = {
        "bits-2": lambda r: first(r)["spec"].update(bits=2), "bits-8": lambda r: first(r)["spec"].update(bits=8),
        "bits-str": lambda r: first(r)["spec"].update(bits="4"), "bits-99": lambda r: first(r)["spec"].update(bits=99),
        "group-32": lambda r: first(r)["spec"].update(group_size=32),
        "group-7": lambda r: first(r)["spec"].update(group_size=7),
        "spec-list": lambda r: first(r).update(spec=[4]), "module-unknown": lambda r: first(r).update(module="nope"),
        "module-bnb4": lambda r: first(r).update(module="bnb4"),
        "layer-unknown": lambda r: r["layers"].update({"model.layers.9.mlp.up_proj": first(r)}),
        "layers-list": lambda r: r.update(layers=[]), "tied-list": lambda r: r.update(tied=[1]),
        "format-version-99": lambda r: r.update(format_version=99), "shape-str": lambda r: first(r).update(shape="x"),
    }
    cases = [Case(f"{seed}:record:{name}", seed, "checkpoint-record", record(fn)) for name, fn in edits.items()]

    def record_not_json(h, d):
        h["__metadata__"]["lowbit"] = "{oops"
        return h, d

    def qweight_shape(h, d):
        k = _pick(h, "qweight")
        h[k]["shape"] = [h[k]["shape"][0] // 2, 2]  # the same bytes, another shape
        return h, d

    cases += [Case(f"{seed}:record:not-json", seed, "checkpoint-record", st_edit(record_not_json)),
              Case(f"{seed}:record:qweight-reshaped", seed, "checkpoint-record", st_edit(qweight_shape))]
    cases += [c for c in st_cases(seed) if not c.id.endswith(("drop-norm", "dtype-other-size"))]
    return cases


# ---- importance matrices ----

def imatrix_cases() -> list[Case]:
    def values(fill):
        def fn(g):
            t = next(t for t in g.tensors if t.name.endswith(b".in_sum2"))
            d = bytearray(g.data)
            d[t.offset : t.offset + 12] = struct.pack("<3f", *fill)
            g.data = bytes(d)
        return gguf_edit(fn)

    def counts(value):
        def fn(g):
            t = next(t for t in g.tensors if t.name.endswith(b".counts"))
            d = bytearray(g.data)
            d[t.offset : t.offset + 4] = struct.pack("<f", value)
            g.data = bytes(d)
        return gguf_edit(fn)

    def shrink(g):
        t = next(t for t in g.tensors if t.name.endswith(b".in_sum2"))
        t.dims = [t.dims[0] // 2] + t.dims[1:]

    def rename_all(g):
        for t in g.tensors:
            t.name = b"x" + t.name[1:]

    cases = [
        Case("imatrix_gguf:nan", "imatrix_gguf", "imatrix", values([math.nan, 1, 1])),
        Case("imatrix_gguf:inf", "imatrix_gguf", "imatrix", values([math.inf, 1, 1])),
        Case("imatrix_gguf:negative", "imatrix_gguf", "imatrix", values([-1.0, 1, 1])),
        Case("imatrix_gguf:counts-nan", "imatrix_gguf", "imatrix", counts(math.nan)),
        Case("imatrix_gguf:counts-negative", "imatrix_gguf", "imatrix", counts(-5.0)),
        Case("imatrix_gguf:half-width", "imatrix_gguf", "imatrix", gguf_edit(shrink)),
        Case("imatrix_gguf:names-unknown", "imatrix_gguf", "imatrix", gguf_edit(rename_all)),
        Case("imatrix_gguf:type-str", "imatrix_gguf", "imatrix",
             gguf_edit(lambda g: g.set("general.type", ge.STRING, ge.string("model")))),
        Case("imatrix_gguf:chunk_count-str", "imatrix_gguf", "imatrix",
             gguf_edit(lambda g: g.set("imatrix.chunk_count", ge.STRING, ge.string("2")))),
        Case("imatrix_gguf:tensor-f16", "imatrix_gguf", "imatrix",
             gguf_edit(lambda g: setattr(g.tensors[0], "ttype", 1))),
    ]

    def dat(fn):
        def make(path: Path, _w: Path) -> None:
            path.write_bytes(fn(path.read_bytes()))
        return make

    def first_values(b: bytes, fill: list[float]) -> bytes:
        (ln,) = struct.unpack_from("<i", b, 4)
        at = 4 + 4 + ln + 8
        return b[:at] + struct.pack(f"<{len(fill)}f", *fill) + b[at + 4 * len(fill):]

    def dup_entry(b: bytes) -> bytes:
        (n,) = struct.unpack_from("<i", b)
        (ln,) = struct.unpack_from("<i", b, 4)
        (nval,) = struct.unpack_from("<i", b, 4 + 4 + ln + 4)
        entry = b[4 : 4 + 4 + ln + 8 + 4 * nval]
        return struct.pack("<i", n + 1) + entry + b[4:]

    cases += [
        Case("imatrix_dat:nan", "imatrix_dat", "imatrix", dat(lambda b: first_values(b, [math.nan]))),
        Case("imatrix_dat:inf", "imatrix_dat", "imatrix", dat(lambda b: first_values(b, [math.inf]))),
        Case("imatrix_dat:negative", "imatrix_dat", "imatrix", dat(lambda b: first_values(b, [-2.0]))),
        Case("imatrix_dat:duplicate", "imatrix_dat", "imatrix", dat(dup_entry)),
        Case("imatrix_dat:name-utf8", "imatrix_dat", "imatrix", dat(lambda b: b[:8] + b"\xff" + b[9:])),
        Case("imatrix_dat:count-huge", "imatrix_dat", "huge-length", dat(lambda b: struct.pack("<i", 2**31 - 1) + b[4:])),
        Case("imatrix_dat:count-negative", "imatrix_dat", "huge-length", dat(lambda b: struct.pack("<i", -1) + b[4:])),
        Case("imatrix_dat:name-len-huge", "imatrix_dat", "huge-length",
             dat(lambda b: b[:4] + struct.pack("<i", 2**31 - 1) + b[8:])),
    ]
    return cases


# ---- byte-level: truncation, bit flips, overwrites in each seed's header region ----

def main_file(seed: str) -> str | None:
    """The file of a directory seed the byte-level cases damage (None: the seed is the file)."""
    return {"llama_dir": "model.safetensors", "bert_dir": "model.safetensors", "checkpoint": "model.safetensors"}.get(seed)


def header_size(raw: bytes) -> int:
    if raw[:4] == b"GGUF":
        return min(len(raw), len(raw) - len(ge.parse(raw).data))
    if len(raw) >= 8:
        (n,) = struct.unpack_from("<Q", raw)
        if n < len(raw):
            return 8 + n
    return min(len(raw), 4096)


def byte_case(seed: str, kind: str, rng: random.Random, index: int) -> Case:
    r = random.Random(rng.getrandbits(64))
    target = main_file(seed)

    def make(path: Path, _w: Path) -> None:
        f = path / target if target else path
        raw = bytearray(f.read_bytes())
        span = header_size(bytes(raw))
        if kind == "truncate":
            cut = r.randrange(0, span + 64) if r.random() < 0.8 else r.randrange(0, len(raw))
            f.write_bytes(bytes(raw[:cut]))
            return
        for _ in range(1 if kind == "bitflip" else r.randint(1, 4)):
            at = r.randrange(0, span)
            if kind == "bitflip":
                raw[at] ^= 1 << r.randrange(8)
            else:
                n = r.randint(1, 8)
                raw[at : at + n] = bytes(r.choice([0x00, 0xFF, 0x7F, 0x80, r.randrange(256)]) for _ in range(n))
        f.write_bytes(bytes(raw))

    return Case(f"{seed}:{kind}:{index}", seed, kind, make)


def structured() -> list[Case]:
    cases = []
    for seed in ("llama_dir", "bert_dir"):
        cases += st_cases(seed) + config_cases(seed)
    cases += gguf_cases() + checkpoint_cases() + imatrix_cases()
    return cases


def generate(n: int, seed: int = 0) -> list[Case]:
    """``n`` cases: the structured ones first (all of them when n allows), then random byte damage."""
    fixed = structured()
    rng = random.Random(seed)
    if n <= len(fixed):
        return sorted(rng.sample(fixed, n), key=fixed.index)
    out = list(fixed)
    seeds = ("llama_dir", "bert_dir", "llama_gguf", "checkpoint", "imatrix_gguf", "imatrix_dat")
    for i in range(n - len(fixed)):
        out.append(byte_case(rng.choice(seeds), rng.choice(("truncate", "bitflip", "overwrite")), rng, i))
    return out

