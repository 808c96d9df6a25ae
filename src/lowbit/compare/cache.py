"""The resume cache of `lowbit compare`: a finished candidate's row is stored in ``REPORT/.cache``
under a key of everything that changes it (the model's and the data's contents, the candidate's
settings, the protocol), so a rerun after Ctrl-C or a crash skips it. Files are written atomically."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbit.compare.row import Row
from lowbit.writers.guard import atomic_write

if TYPE_CHECKING:
    from lowbit.calib.settings import CalibSettings
    from lowbit.compare.candidates import Candidate
    from lowbit.compare.settings import CompareSettings
    from lowbit.loaders.handle import ModelHandle

VERSION = 3  # bump when a change alters cached rows or keys (2: per-block sums and intervals; 3: keys without paths)


def data_key(data: str) -> str:
    """A file's or folder's content key (sizes and sampled bytes, never a path or a time: a cluster's nodes
    and a moved copy agree on it); a built-in corpus's name and the Python version it comes with."""
    from lowbit.loaders.cache import file_key

    p = Path(data)
    if p.is_file():
        return f"file:{file_key(p)}"
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return "dir:" + hashlib.sha256("".join(f"{f.relative_to(p).as_posix()}:{file_key(f)}"
                                               for f in files).encode()).hexdigest()[:16]
    return f"{data}:{sys.version_info[:2]}"  # the built-in corpora come with the Python install


def model_key(model: Any, handle: ModelHandle) -> str:
    """The model's files' key, or a hash of an in-memory module's weights."""
    src = handle.path or (model if isinstance(model, str) else None)
    if src and Path(src).exists():
        return data_key(str(src))
    if isinstance(model, str):
        from lowbit.loaders.builtin import BUILTINS, builtin_path

        if model in BUILTINS:
            return data_key(str(builtin_path(model)))
    h = hashlib.sha256()  # an in-memory module: hash its weights
    for k, t in handle.model.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def candidate_key(c: Candidate, s: CompareSettings, model: str, calib: CalibSettings | None, task: bool) -> str:
    """Everything that changes candidate ``c``'s row: the model's key ``model``, the candidate, the eval
    data and protocol, the calibration data where it calibrates, the training data where it trains."""
    parts = [VERSION, model, c.config, data_key(s.eval), s.eval_text if task else "",
             s.embeddings if c.family == "gguf" or s.embeddings == "quantized" else None,
             s.windows, s.seq_len, s.seed, s.task_limit, s.speed, s.protocol,
             (data_key(calib.data), calib.n_samples, calib.seq_len) if (calib and (c.needs_calib or c.family == "gguf")) else None,
             (data_key(s.train_data), s.qat_steps) if c.needs_training else None]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def read_row(path: Path) -> Row | None:
    """The cached row at ``path``, or None if there is none."""
    if not path.exists():
        return None
    return Row.from_dict(json.loads(path.read_text()))


def write_row(path: Path, row: Row) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(row.to_dict()))
