"""The reference's log-probabilities on disk, one file per window, shared by every candidate and every
rerun: a second `lowbit compare` on the same model and data (another report, more windows, another
``--seed`` that draws some of the same windows) reads them instead of running the reference again.

    LOWBIT_CACHE/logprobs/<model key>/<sha256 of the window's token ids>.safetensors

A window is keyed by its token ids alone (the protocol that cut it is in the ids: BOS first or not), so
the first windows of a longer run are the files of a shorter one. Files are float32, exactly what the
reference computed (about 100 MB per 512-token window of a 49K vocabulary); the oldest are removed when
the store passes ``LOWBIT_LOGPROB_CACHE_GB`` (default 8).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

DEFAULT_GB = 8.0
_STORE_NAME = re.compile(r"[0-9a-f]{32}")


def store_dir(model_key: str) -> Path:
    from lowbit.loaders.cache import cache_root

    return cache_root() / "logprobs" / hashlib.sha256(model_key.encode()).hexdigest()[:24]


class LogprobStore:
    """``get(window)`` the stored log-probs of a window of token ids or None; ``put(window, lp)`` them."""

    def __init__(self, where: Path) -> None:
        self.where = where

    @staticmethod
    def key(window: torch.Tensor) -> str:
        """A window's name in the store: the sha256 of its token ids."""
        return hashlib.sha256(window.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:32]

    def _path(self, window: torch.Tensor) -> Path:
        return self.where / f"{self.key(window)}.safetensors"

    def get(self, window: torch.Tensor) -> torch.Tensor | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        p = self._path(window)
        if not p.is_file():
            return None
        try:
            lp = load_file(str(p))["logprobs"]
        except (SafetensorError, KeyError, OSError):  # a damaged file is recomputed, never trusted
            p.unlink(missing_ok=True)
            return None
        if lp.shape[0] != window.numel() - 1:
            return None
        os.utime(p)  # recently used: kept longest
        return lp

    def put(self, window: torch.Tensor, lp: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self._path(window)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            self.where.mkdir(parents=True, exist_ok=True)
            save_file({"logprobs": lp.float().contiguous()}, str(tmp))
            os.replace(tmp, p)
            prune(self.where.parent)
        except OSError:  # a full or read-only disk costs a recomputation, not the run
            tmp.unlink(missing_ok=True)


def prune(root: Path, limit_gb: float | None = None) -> None:
    """Remove the least recently used window files under ``root`` until it holds at most ``limit_gb``."""
    limit = (limit_gb if limit_gb is not None else float(os.environ.get("LOWBIT_LOGPROB_CACHE_GB", DEFAULT_GB))) * 2**30
    files = [(f.stat().st_mtime, f.stat().st_size, f) for f in root.glob("*/*.safetensors")
             if _STORE_NAME.fullmatch(f.stem)]  # the store's own files: a streamed reference's cache is left whole
    total = sum(s for _, s, _ in files)
    for _, size, f in sorted(files, key=lambda t: t[0]):
        if total <= limit:
            break
        f.unlink(missing_ok=True)
        total -= size
