"""The one check every writer and every API verb that writes runs first: an output that exists is
replaced only when the caller asks (``overwrite=True``). The API verbs run it before loading a model,
so ``lowbit quantize --out taken`` fails at once; the writers run it again just before writing."""

from __future__ import annotations

import os
from pathlib import Path

from lowbit.errors import ExportError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a Path; an ExportError if it exists and ``overwrite`` is false.

    >>> check_output("/tmp", overwrite=False)  # doctest: +SKIP
    ExportError: /tmp already exists; choose another --out or pass --overwrite
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; choose another --out or pass --overwrite")
    return path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file beside it, renamed over it once complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
