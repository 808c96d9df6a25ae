"""Valid tiny inputs the fuzz cases start from, built from transformers configs with random weights (no
file is committed): a Llama directory, a BERT directory, a Llama GGUF, a lowbit checkpoint, and
importance matrices in both of llama.cpp's formats."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SEEDS = ("llama_dir", "bert_dir", "llama_gguf", "checkpoint", "imatrix_gguf", "imatrix_dat")


def tests_helpers():
    """tests/conftest.py as a module of its own: under pytest the name ``conftest`` may be another
    directory's (tests/integration/conftest.py)."""
    import importlib.util

    if "lowbit_tests_conftest" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lowbit_tests_conftest", TESTS / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lowbit_tests_conftest"] = module
        spec.loader.exec_module(module)
    return sys.modules["lowbit_tests_conftest"]


def tokenizer():
    """A byte-pair tokenizer with one merge (transformers and llama.cpp both read it from a GGUF)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    helpers = tests_helpers()
    vocab = {t: i for i, t in enumerate(helpers.TINY_SPECIALS + helpers.TINY_CHARS)}
    vocab["he"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e")], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def build(root: Path) -> dict[str, Path]:
    """Write every seed under ``root``; returns seed name -> its path."""
    import torch

    import lowbit
    from lowbit.calib.imatrix import compute_imatrix, save_imatrix
    from lowbit.writers.gguf import export_gguf

    helpers = tests_helpers()
    make_tiny_bert, make_tiny_llama = helpers.make_tiny_bert, helpers.make_tiny_llama
    tok = tokenizer()
    llama = make_tiny_llama(tokenizer=tok, vocab_size=len(tok))
    seeds = {name: root / name for name in SEEDS}
    llama.model.save_pretrained(seeds["llama_dir"])
    tok.save_pretrained(seeds["llama_dir"])
    bert = make_tiny_bert(tokenizer=tok, vocab_size=len(tok))
    bert.model.save_pretrained(seeds["bert_dir"])
    tok.save_pretrained(seeds["bert_dir"])
    seeds["llama_gguf"] = root / "llama.gguf"
    export_gguf(llama, seeds["llama_gguf"], "F32")
    q, _ = lowbit.quantize(make_tiny_llama(tokenizer=tok, vocab_size=len(tok)))
    lowbit.save(q, seeds["checkpoint"])
    _fixed_record(seeds["checkpoint"])
    torch.manual_seed(0)
    im = compute_imatrix(llama.model, torch.randint(0, len(tok), (2, 32)), dataset="fuzz")
    seeds["imatrix_gguf"], seeds["imatrix_dat"] = root / "imatrix.gguf", root / "imatrix.dat"
    save_imatrix(im, seeds["imatrix_gguf"])
    save_imatrix(im, seeds["imatrix_dat"])
    return seeds


def _fixed_record(path: Path) -> None:
    """The checkpoint's record with its measured seconds and memory set to 0, so the seed's bytes (and the
    random byte cases made from it) are the same on every build."""
    import json

    from fuzz.cases import st_read, st_write

    def fix(text: str) -> str:
        rec = json.loads(text)
        rec["quantize_seconds"] = 0.0
        rec.get("calibration", {}).update(seconds=0.0, peak_rss_bytes=0)
        return json.dumps(rec)

    header, data = st_read(path / "model.safetensors")
    header["__metadata__"]["lowbit"] = fix(header["__metadata__"]["lowbit"])
    st_write(path / "model.safetensors", header, data)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = json.loads(fix(json.dumps(config["quantization_config"])))
    (path / "config.json").write_text(json.dumps(config, indent=2))
