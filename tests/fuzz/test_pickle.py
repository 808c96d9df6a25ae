"""Pickle never: a file that would run code when unpickled runs nothing, wherever a user can pass one."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lowbit.errors import InputError


class Payload:
    """Unpickling this calls os.system: it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_qat_resume_runs_no_code(tmp_path) -> None:
    from lowbit.qat.state import read_state

    marker, path = tmp_path / "pwned", tmp_path / "state.pt"
    torch.save({"model": Payload(str(marker)), "step": 1}, path)
    with pytest.raises(InputError) as ei:
        read_state(path)
    assert str(ei.value) == (f"--resume: {path} is not a lowbit QAT training checkpoint (it holds something other than "
                             f"tensors and plain values; such a file is never unpickled)")
    assert not marker.exists()


def test_pytorch_bin_directory_is_refused_unread(tmp_path) -> None:
    from lowbit.loaders import load_model

    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    torch.save({"model.embed_tokens.weight": Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError) as ei:
        load_model(tmp_path)
    assert str(ei.value) == f"{tmp_path} has no .safetensors weights (pytorch_model.bin pickles are not read)"
    assert not marker.exists()
