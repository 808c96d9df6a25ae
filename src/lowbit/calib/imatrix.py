"""Importance matrices: the mean squared activation of every input column of every weight matrix,
which llama.cpp's k-quant searches use as per-column weights.

Computed from lowbit's calibration data with one full-precision pass (hooks on every Linear, names
in GGUF form), and read or written in both of llama.cpp's file formats, so an imatrix moves both ways:

- GGUF (``imatrix.gguf``, current llama-imatrix): ``general.type = imatrix``, ``imatrix.datasets``,
  ``imatrix.chunk_count``, ``imatrix.chunk_size``; per tensor ``<name>.in_sum2`` (sums of x^2) and
  ``<name>.counts`` (rows seen);
- legacy ``.dat``: int32 entry count; per entry int32 name length, name, int32 ncall, int32 nval,
  float32[nval] = mean * ncall; then int32 chunk count, int32 length and the dataset name.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.calib.stats import gather
from lowbit.errors import InputError
from lowbit.formats.ggml.names import gguf_name
from lowbit.progress import track

log = logging.getLogger(__name__)


@dataclass
class Imatrix:
    """sums[name] = sum over calibration rows of x^2 per column; counts[name] = rows seen."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def weights(self) -> dict[str, np.ndarray]:
        """The per-column importances the quantizers take: mean x^2 (tensors never reached are left out)."""
        return {k: (v / self.counts[k]).astype(np.float32) for k, v in self.sums.items() if self.counts.get(k, 0) > 0}

    def gguf_kv(self, path: str | Path) -> list[tuple[str, str | int]]:
        """The keys llama-quantize adds to a file quantized with this matrix read from ``path`` (as given),
        strings cut at 127 bytes as it cuts them: a lowbit export can then be byte-identical to its."""
        def cut(s: str) -> str:
            return s.encode()[:127].decode(errors="ignore")

        kv: list[tuple[str, str | int]] = [("quantize.imatrix.file", cut(str(path)))]
        if self.datasets:
            kv.append(("quantize.imatrix.dataset", cut(self.datasets[0])))
        kv.append(("quantize.imatrix.entries_count", len(self.sums)))
        if self.chunk_count > 0:
            kv.append(("quantize.imatrix.chunks_count", self.chunk_count))
        return kv


@torch.no_grad()
def compute_imatrix(model: nn.Module, windows: torch.Tensor, dataset: str = "", micro_batch: int = 4) -> Imatrix:
    """Run ``windows`` (n, L) token ids through the float model and gather x^2 at every Linear input
    (the one statistics gatherer, calib/stats.py, in float64 sums)."""
    im = Imatrix(datasets=[dataset] if dataset else [], chunk_count=int(windows.shape[0]),
                 chunk_size=int(windows.shape[1]))
    accs = gather(model, _imatrix_targets(model), ("act_sqsum",), track(list(windows.split(micro_batch)), "imatrix"))
    im.sums = {k: a.sq_sum.numpy().astype(np.float32) for k, a in accs.items() if a.rows}
    im.counts = {k: a.rows for k, a in accs.items() if a.rows}
    return im


def _imatrix_targets(model: nn.Module) -> dict[str, nn.Module]:
    """GGUF tensor name -> the module whose input it weights, as llama-imatrix records them."""
    cfg = getattr(model, "config", None)
    tied = getattr(cfg, "tie_word_embeddings", False)
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        g = gguf_name(f"{name}.weight", cfg)
        if g is None or not (isinstance(mod, nn.Linear) or hasattr(mod, "dequantize")) or isinstance(mod, nn.Embedding):
            continue
        if g == "output.weight":  # as llama-imatrix: an untied output is skipped (no --process-output);
            if not tied:          # a tied one is the token_embd matrix, recorded under that name
                continue
            g = "token_embd.weight"
        out[g] = mod
    return out


def save_imatrix(im: Imatrix, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``im`` atomically: ``.dat`` in the legacy format, anything else as GGUF."""
    from lowbit.writers.guard import check_output

    path = check_output(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        if path.suffix == ".dat":
            _save_legacy(im, tmp)
        else:
            _save_gguf(im, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_gguf(im: Imatrix, path: str) -> None:
    import gguf

    w = gguf.GGUFWriter(path, arch="imatrix")  # llama-imatrix files carry no architecture key...
    w.kv_data[0].pop("general.architecture", None)  # ...so drop the one the writer adds
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", im.datasets or ["lowbit"])
    w.add_uint32("imatrix.chunk_count", im.chunk_count)
    w.add_uint32("imatrix.chunk_size", im.chunk_size)
    for name in sorted(im.sums):
        w.add_tensor(f"{name}.in_sum2", im.sums[name].astype(np.float32)[None, :])
        w.add_tensor(f"{name}.counts", np.array([[float(im.counts[name])]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _save_legacy(im: Imatrix, path: str) -> None:
    chunk = max(im.chunk_size, 1)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(im.sums)))
        for name in sorted(im.sums):
            ncall = max(1, -(-im.counts[name] // chunk))
            mean = im.sums[name] / max(im.counts[name], 1)
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, mean.size))
            f.write((mean * np.float32(ncall)).astype("<f4").tobytes())
        ds = (im.datasets[-1] if im.datasets else "").encode()
        f.write(struct.pack("<i", im.chunk_count) + struct.pack("<i", len(ds)) + ds)


def load_imatrix(path: str | Path) -> Imatrix:
    """Read an imatrix written by llama-imatrix (either format) or by lowbit; clear errors on bad files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: imatrix file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    _check_values(im, path)
    return im


def _check_values(im: Imatrix, path: Path) -> None:
    """Importances are finite and >= 0, counts >= 0: a poisoned entry would turn a quantized tensor into
    NaNs. $LOWBIT_ALLOW_NONFINITE (``lowbit --allow-nonfinite``) lets NaN / inf through, not negatives."""
    from lowbit.loaders.validate import allow_nonfinite

    for name, v in im.sums.items():
        if not allow_nonfinite() and not np.isfinite(v).all():
            raise InputError(f"{path}: importance values of {name} hold {int((~np.isfinite(v)).sum())} NaN/inf; "
                             f"pass --allow-nonfinite to use it anyway")
        if (v < 0).any():
            raise InputError(f"{path}: importance values of {name} hold {int((v < 0).sum())} negative value(s); "
                             f"a mean of squares cannot be negative")
        if im.counts.get(name, 0) < 0:
            raise InputError(f"{path}: {name} has a negative count ({im.counts[name]})")


def _load_gguf(path: Path) -> Imatrix:
    import gguf

    from lowbit.loaders.gguf_check import read_metadata

    meta = {k: (vtype, v) for k, vtype, v in read_metadata(path)}  # every length checked against the file first
    if meta.get("general.type", (None, None))[1] != "imatrix":
        raise InputError(f"{path} is a GGUF file but not an imatrix (general.type is not 'imatrix')")
    r = gguf.GGUFReader(str(path))
    bad = [x.name for x in r.tensors if x.tensor_type != gguf.GGMLQuantizationType.F32]
    if bad:
        raise InputError(f"{path}: imatrix tensor {bad[0]} is not F32")
    t = {x.name: np.asarray(x.data, dtype=np.float32) for x in r.tensors}
    im = Imatrix(datasets=_strings(meta.get("imatrix.datasets")), chunk_count=_int(meta.get("imatrix.chunk_count"), "imatrix.chunk_count", path),
                 chunk_size=_int(meta.get("imatrix.chunk_size"), "imatrix.chunk_size", path))
    for key, v in t.items():
        if not key.endswith(".in_sum2"):
            continue
        name = key[: -len(".in_sum2")]
        counts = t.get(f"{name}.counts")
        if counts is None:
            raise InputError(f"{path}: {name} has in_sum2 but no counts")
        if counts.size != 1:
            raise InputError(f"{path}: {name} has {counts.size} expert slices; lowbit handles dense models only")
        if not np.isfinite(counts).all():
            raise InputError(f"{path}: {name} has a count that is not a number ({counts.reshape(-1)[0]})")
        im.sums[name] = v.reshape(-1)
        im.counts[name] = int(counts.reshape(-1)[0])
    return im


def _strings(entry: tuple[int, object] | None) -> list[str]:
    """A GGUF string array's values (read_metadata's (type, (element type, list)))."""
    if entry is None or not isinstance(entry[1], tuple) or entry[1][0] != 8:
        return []
    return [str(x) for x in entry[1][1]]


def _int(entry: tuple[int, object] | None, key: str, path: Path) -> int:
    v = 0 if entry is None else entry[1]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InputError(f"{path}: {key} must be a count (an integer >= 0), got {v!r}")
    return v


def _load_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(f"{path}: truncated imatrix file")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i")
    if not 0 <= n <= 1_000_000:
        raise InputError(f"{path}: not an imatrix file (entry count {n})")
    im = Imatrix()
    for _ in range(n):
        (ln,) = take("<i")
        if not 0 < ln <= 4096:
            raise InputError(f"{path}: bad tensor name length {ln}")
        try:
            name = take(f"<{ln}s")[0].decode()
        except UnicodeDecodeError:
            raise InputError(f"{path}: a tensor name is not valid UTF-8") from None
        if name in im.sums:
            raise InputError(f"{path}: tensor {name} appears twice")
        ncall, nval = take("<ii")
        if not 0 < nval <= 1 << 24:
            raise InputError(f"{path}: bad value count {nval} for {name}")
        vals = np.array(take(f"<{nval}f"), dtype=np.float32)
        ncall = max(ncall, 1)
        im.sums[name] = vals / np.float32(ncall)  # the mean; counts of 1 keep sums/counts = mean
        im.counts[name] = 1
    if pos + 4 <= len(data):
        (im.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (ln,) = take("<i")
            if 0 <= ln <= 4096 and pos + ln <= len(data):
                im.datasets = [data[pos : pos + ln].decode(errors="replace")]
    return im
