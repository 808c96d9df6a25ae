"""A checkpoint written as a stream of shards, that survives a kill and never shows a half result.

    OUT.partial/                       while the run lasts (kept after kill -9, removed on any error)
        part-00000.safetensors ...     one shard per finished block (and one for the rest)
        progress.json                  the run's key, the finished blocks, their layer records
        activations.safetensors        the calibration activations entering the next block
    OUT/                               on success: model-0000i-of-0000N.safetensors and the index
                                       (one model.safetensors up to 1 GiB), config.json, the
                                       tokenizer; renamed into place in one step

``--resume`` continues an interrupted run whose key (source, method config, data, selection) matches.
Every file inside ``OUT.partial`` is itself written to a temporary name and renamed, so a kill leaves
only whole files behind, and ``progress.json`` is written last: it never lists a shard that is not there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ExportError, InputError
from lowbit.loaders.safetensors_source import INDEX

SINGLE_FILE_BYTES = 1 << 30  # outputs up to this size are merged into one model.safetensors at the end


class ShardedWriter:
    def __init__(self, out: Path, key: str, overwrite: bool = False, resume: bool = False) -> None:
        self.final = out
        self.partial = out.with_name(out.name + ".partial")
        self.key = key
        self.state: dict[str, Any] = {"key": key, "done": 0, "shards": []}
        if self.partial.exists():
            found = _read_progress(self.partial)
            if resume and found.get("key") == key:
                self.state = found
                return
            if resume:
                raise InputError(f"{self.partial} holds an interrupted run with other settings (source, method, data "
                                 f"or layers differ); run without --resume and with --overwrite to start over")
            if not overwrite:
                raise ExportError(f"{self.partial} holds an interrupted run ({found.get('done', 0)} blocks done); pass "
                                  f"--resume to continue it, or --overwrite to start over")
            shutil.rmtree(self.partial)
        elif resume:
            raise InputError(f"--resume: there is no interrupted run at {self.partial} to continue")
        self.partial.mkdir(parents=True)
        self._save_progress()

    @property
    def done(self) -> int:
        return int(self.state["done"])

    def write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"part-{len(self.state['shards']):05d}.safetensors"
        tmp = self.partial / f".{name}.tmp"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, self.partial / name)
        self.state["shards"].append({"file": name, "keys": sorted(tensors)})

    def save_activations(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.partial / ".activations.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self.partial / "activations.safetensors")

    def activations(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.partial / "activations.safetensors"))

    def block_done(self, done: int, **extra: Any) -> None:
        """Blocks [0, done) are written; ``extra`` (layer records, sizes) is kept for a resumed run."""
        self.state.update(extra, done=done)
        self._save_progress()

    def finish(self, config: dict[str, Any], tokenizer: Any = None, metadata: dict[str, str] | None = None) -> Path:
        """Name the shards as transformers expects, write the index, config and tokenizer; publish. A small
        output is one model.safetensors, whose ``metadata`` is by default the lowbit record."""
        from lowbit.loaders.cache import publish_dir

        shards = self.state["shards"]
        total = sum((self.partial / s["file"]).stat().st_size for s in shards)
        if total <= SINGLE_FILE_BYTES:
            if metadata is None:
                metadata = {"format": "pt", "lowbit": json.dumps(config.get("quantization_config"))}
            self._merge(shards, metadata)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                os.replace(self.partial / shard["file"], self.partial / name)
                weight_map.update(dict.fromkeys(shard["keys"], name))
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.partial / INDEX).write_text(json.dumps(index, indent=2))
        (self.partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(self.partial)
        for leftover in ("progress.json", "activations.safetensors"):
            (self.partial / leftover).unlink(missing_ok=True)
        shutil.rmtree(self.partial / "activations", ignore_errors=True)  # calib/spill.py's files
        publish_dir(self.partial, self.final, overwrite=True)
        return self.final

    def _merge(self, shards: list[dict[str, Any]], metadata: dict[str, str]) -> None:
        """A small model: its parts become the one ``model.safetensors`` (the layout writers/checkpoint.py
        writes, its metadata repeating the record)."""
        from safetensors.torch import load_file, save_file

        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(str(self.partial / shard["file"])))
        save_file(tensors, str(self.partial / ".model.tmp"), metadata=metadata)
        os.replace(self.partial / ".model.tmp", self.partial / "model.safetensors")
        for shard in shards:
            (self.partial / shard["file"]).unlink()

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def _save_progress(self) -> None:
        tmp = self.partial / ".progress.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.partial / "progress.json")


def _read_progress(partial: Path) -> dict[str, Any]:
    try:
        found = json.loads((partial / "progress.json").read_text())
    except (OSError, ValueError):
        raise ExportError(f"{partial} is left from an interrupted run but has no readable progress.json; remove "
                          f"it or pass --overwrite") from None
    if not isinstance(found, dict):
        raise ExportError(f"{partial}/progress.json is not a progress record; remove it or pass --overwrite")
    return found
