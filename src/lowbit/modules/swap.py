"""Swap a float layer for its quantized replacement, and give the float weight's memory back.

A model loaded from safetensors keeps its weights in a private memory map of the file. The pages a
quantizer reads stay resident (and count in RSS) for as long as the mapping lives, which is as long
as any tensor of the file does (the embedding table, at least). So once a layer is replaced, its
weight's pages are handed back to the kernel, never at the cost of data: when /proc/self/pagemap shows
every resident page is still the file's own (never written), ``madvise(MADV_DONTNEED)`` drops them and
a later touch re-reads the same bytes from the file; otherwise ``MADV_PAGEOUT``, a mere hint, is used. Weights in anonymous memory (a
deep-copied model) are freed by dropping the last reference to the old layer instead, which is the
caller's business; they are left alone here. Freed blocks of the C heap go back to the system with
``trim_heap()`` (glibc keeps them otherwise, and RSS creeps up by a block's activations per block).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch
from torch import nn

MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # Linux >= 5.4; elsewhere madvise fails and this is a no-op
_PM_PRESENT, _PM_FILE = 1 << 63, 1 << 61  # /proc/self/pagemap entry bits

_libc = None


def _madvise():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc.madvise if _libc else None


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    if _madvise() is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def _file_backed(ptr: int) -> bool:
    """Whether ``ptr`` lies in a mapping of a file (inode != 0) in /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= ptr < hi:
                    return fields[4] != "0"
    except OSError:
        pass
    return False


def _all_file_pages(lo: int, hi: int) -> bool:
    """Whether every resident page in [lo, hi) is an unmodified file page (no private copy-on-write)."""
    page = mmap.PAGESIZE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(lo // page * 8)
            raw = f.read((hi - lo) // page * 8)
    except OSError:
        return False
    entries = memoryview(raw).cast("Q")
    return all(not (e & _PM_PRESENT) or (e & _PM_FILE) for e in entries)


def page_out(t: torch.Tensor) -> bool:
    """Hand the whole pages of ``t``'s data back to the kernel if they belong to a file mapping.

    Returns whether madvise succeeded. Non-destructive: the tensor stays valid and keeps its values.
    """
    if not sys.platform.startswith("linux") or t.device.type != "cpu" or t.numel() == 0:
        return False
    madvise = _madvise()
    ptr = t.data_ptr()
    if madvise is None or not _file_backed(ptr):
        return False
    page = mmap.PAGESIZE
    lo = -(-ptr // page) * page
    hi = (ptr + t.numel() * t.element_size()) // page * page
    if hi <= lo:
        return False
    advice = MADV_DONTNEED if _all_file_pages(lo, hi) else MADV_PAGEOUT
    return madvise(lo, hi - lo, advice) == 0


def replace_module(model: nn.Module, name: str, new: nn.Module, trim: bool = True) -> None:
    """Install ``new`` as ``model.<name>``, page out the replaced layer's file-mapped weight, and trim
    the heap (``trim=False`` when the caller trims once per batch of replacements)."""
    parent, _, leaf = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, leaf, None)
    setattr(owner, leaf, new)
    weight = getattr(old, "weight", None)
    if isinstance(weight, torch.Tensor) and old is not new:
        page_out(weight.data)
    if trim:
        trim_heap()
