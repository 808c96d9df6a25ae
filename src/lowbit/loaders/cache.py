"""The user cache: dequantized GGUF models saved as Hugging Face directories, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("LOWBIT_CACHE")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("lowbit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_key(path: Path) -> str:
    """A cheap content key: size + sha256 of the first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def atomic_dir(final: Path) -> Path:
    """A fresh temporary directory next to ``final``; publish it with :func:`publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def publish_dir(tmp: Path, final: Path, overwrite: bool = False) -> None:
    """Move a finished temporary directory into place (rename is atomic on one filesystem)."""
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)  # someone else won the race; theirs is identical
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
        return
    os.replace(tmp, final)
