"""Run a GGUF file in llama.cpp itself (the optional ``llama-cpp-python`` package, `make reference`),
behind the call shape of a transformers causal LM, so lowbit's evaluator scores it with exactly the
protocol, windows and reference it uses for torch models.

    handle = load_llamacpp("model.gguf")       # ModelHandle(kind="causal-lm"), tokenizer from the file
    Evaluator(reference, settings).run(handle)   # PPL / KL / top-1 computed by llama.cpp's logits

Each window is evaluated from an empty context with its tokens as given (no BOS added), all logits
kept (``logits_all``), as lowbit's torch path does.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, Artifact, ModelHandle


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppLM(nn.Module):
    """``model(input_ids=(1, L))`` -> ``.logits`` (1, L, vocab) float32, computed by llama.cpp."""

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        super().__init__()
        if not available():
            raise InputError("--runtime llama.cpp needs llama-cpp-python: run `make reference` (builds it, ~15 min)")
        from llama_cpp import Llama

        self.path = str(path)
        self.n_ctx = n_ctx
        self.llm = Llama(model_path=self.path, n_ctx=n_ctx, n_batch=min(512, n_ctx), logits_all=True, verbose=False,
                         n_threads=n_threads or max(1, torch.get_num_threads()))
        self.vocab = self.llm.n_vocab()

    def get_output_embeddings(self) -> Any:
        return SimpleNamespace(out_features=self.vocab)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        if input_ids.shape[0] != 1:
            raise ValueError("llama.cpp evaluation runs one sequence at a time")
        ids = [int(t) for t in input_ids[0]]
        if len(ids) > self.n_ctx:
            raise InputError(f"window of {len(ids)} tokens exceeds llama.cpp's context {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.array(self.llm.scores[: len(ids)], dtype=np.float32, copy=True)
        return SimpleNamespace(logits=torch.from_numpy(logits).unsqueeze(0))

    # speed on this machine, measured in llama.cpp (the torch KV-cache path does not apply)
    def prefill_tok_s(self, tokens: torch.Tensor, repeats: int = 2) -> float:
        ids = [int(t) for t in tokens]
        best = math.inf
        for _ in range(repeats):
            self.llm.reset()
            t0 = time.perf_counter()
            self.llm.eval(ids)
            best = min(best, time.perf_counter() - t0)
        return len(ids) / best

    def decode_tok_s(self, prompt: torch.Tensor, new_tokens: int = 16) -> float:
        self.llm.reset()
        self.llm.eval([int(t) for t in prompt])
        nxt = int(np.argmax(self.llm.scores[len(prompt) - 1]))
        self.llm.eval([nxt])  # warm-up step, not timed
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            self.llm.eval([nxt])
        return new_tokens / (time.perf_counter() - t0)


def load_llamacpp(path: str | Path, n_ctx: int = 2048) -> ModelHandle:
    """A GGUF file as a causal-LM handle run by llama.cpp; the tokenizer comes from the same file
    (through transformers), so windows are tokenized exactly as for the torch runtime."""
    from transformers import AutoTokenizer

    from lowbit.loaders.gguf_check import check_gguf
    from lowbit.report.inspect import inspect_gguf

    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"{path} not found")
    check_gguf(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    info = inspect_gguf(path)
    weights = [t for t in info.tensors if len(t.shape) >= 2]
    bpw = 8 * sum(t.nbytes for t in weights) / max(sum(t.numel for t in weights), 1)
    model = LlamaCppLM(path, n_ctx=n_ctx)
    return ModelHandle(model=model, tokenizer=tok, kind=CAUSAL_LM, name=f"{path} (llama.cpp)", path=str(path),
                       artifact=Artifact("llama.cpp", path.stat().st_size, bpw))


def quantize_with_llamacpp(src: str | Path, dst: str | Path, mix: str, nthread: int = 0,
                           imatrix: dict[str, np.ndarray] | None = None) -> float:
    """llama.cpp's own ``llama_model_quantize`` (the reference for mixes and bytes); returns seconds.
    A failed run leaves no output file (llama.cpp itself leaves a truncated one)."""
    import ctypes

    import llama_cpp

    from lowbit.writers.gguf_mix import MIXES

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = MIXES[mix][1]
    params.nthread = nthread
    params.allow_requantize = True
    keep: list[Any] = []
    if imatrix:
        if not hasattr(llama_cpp, "llama_model_imatrix_data"):
            raise InputError("this llama-cpp-python has no imatrix entry point")
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-name terminated
        for i, (name, v) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(v, dtype=np.float32)
            keep += [arr, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    seconds = time.perf_counter() - t0
    if rc != 0:
        Path(dst).unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return seconds
