"""GGUF export per architecture, against llama.cpp: tiny random models of each architecture lowbit
writes (widths multiples of 256, built from a transformers config by tests/unit/test_gguf_archs.py),
exported as F32 by lowbit and run by llama.cpp; then Q4_K_M and Q8_0 by lowbit against llama.cpp's own
``llama_model_quantize`` of that F32 file. Needs llama-cpp-python (`make reference`).

    python bench/gguf_archs.py [--json FILE]

Per architecture: the top-1 next token at each of 48 positions (llama.cpp vs transformers), the
largest |logit difference|, and whether the Q4_K_M / Q8_0 files hold the same tensors (types and bytes).
The tokenizer is the tests' tiny byte-pair one; tokenization on real text is compared on smollm2 (whose
GGUF vocabulary lowbit copies): ``tokenizer_identical`` says lowbit's file tokenizes 16 pydoc / stdlib
samples as the original GGUF does in llama.cpp (``smollm2_tokenization`` also counts agreement with
transformers, which llama.cpp's own reading of the original file does not reach on every sample).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]

from conftest import TINY_CHARS, TINY_SPECIALS
from test_gguf_archs import ARCHS, IDS, logits, tiny

from lowbit.metrics import llamacpp
from lowbit.report import write_json
from lowbit.writers.gguf import export_gguf


def bpe_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_CHARS)}
    vocab["he"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e")], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def same_tensors(a: Path, b: Path) -> bool:
    ta = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(str(b)).tensors}
    return ta == tb


def smollm2_tokenization(tmp: Path) -> dict:
    """llama.cpp's tokens of pydoc and stdlib samples from lowbit's smollm2 export, against llama.cpp's
    from the original GGUF and against transformers'."""
    from llama_cpp import Llama

    from lowbit.calib import load_corpus
    from lowbit.loaders import load_model
    from lowbit.loaders.builtin import builtin_path

    ref = load_model("smollm2")
    path = tmp / "smollm2.gguf"
    export_gguf(ref, path, "Q8_0")
    mine = Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    source = Llama(model_path=str(builtin_path("smollm2")), n_ctx=64, verbose=False, vocab_only=True)
    n = same_as_source = same_as_transformers = 0
    for data in ("pydoc:eval", "stdlib:eval"):
        for doc in load_corpus(data).docs[:8]:
            sample = doc()[:2000].encode()
            ours = mine.tokenize(sample, add_bos=False, special=False)
            n += 1
            same_as_source += ours == source.tokenize(sample, add_bos=False, special=False)
            same_as_transformers += ours == ref.tokenizer(sample.decode(), add_special_tokens=False)["input_ids"]
    return {"samples": n, "same_as_source_gguf": same_as_source, "same_as_transformers": same_as_transformers}


def minilm_row(tmp: Path) -> dict:
    """The real minilm: llama.cpp's mean-pooled embeddings of 32 pydoc:eval passages from lowbit's F32 file
    against transformers' (cosine), their WordPiece tokens, and the Q4_K_M / Q8_0 files."""
    import torch
    from llama_cpp import Llama

    from lowbit.loaders import load_model

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from test_gguf_minilm import passages

    h = load_model("minilm")
    f32 = tmp / "minilm-f32.gguf"
    export_gguf(h, f32, "F32")
    texts = passages()
    enc = h.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = h.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = ((states * mask).sum(1) / mask.sum(1)).numpy()
    llm = Llama(model_path=str(f32), embedding=True, n_ctx=512, verbose=False)
    cos, same = [], 0
    for text, ref, ids in zip(texts, want, enc["input_ids"]):
        same += llm.tokenize(text.encode(), add_bos=True, special=False) == [int(i) for i in ids if i != 0]
        got = np.asarray(llm.embed(text, normalize=False), dtype=np.float32)
        cos.append(float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)))
    row = {"embedding_cosine_min": min(cos), "embedding_cosine_mean": float(np.mean(cos)), "passages": len(texts),
           "tokenizer_identical": same == len(texts), "llamacpp_top1_identical": None, "max_abs_dlogit": None}
    for mix in ("Q4_K_M", "Q8_0"):
        mine, theirs = tmp / f"minilm-{mix}.gguf", tmp / f"minilm-{mix}-llamacpp.gguf"
        export_gguf(h, mine, mix)
        llamacpp.quantize_with_llamacpp(f32, theirs, mix)
        row[f"{mix.lower()}_identical"] = same_tensors(mine, theirs)
    return row


def measure() -> tuple[dict, dict]:
    """Per architecture the figures above, and smollm2's tokenization in llama.cpp (needs llama-cpp-python)."""
    tok = bpe_tokenizer()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for arch in ARCHS:
            h = tiny(arch, tok)
            f32 = tmp / f"{arch}-f32.gguf"
            export_gguf(h, f32, "F32")
            want = logits(h.model)[0]
            got = llamacpp.load_llamacpp(f32, n_ctx=64).model(input_ids=IDS).logits[0]
            row = {"llamacpp_top1_identical": bool((got.argmax(-1) == want.argmax(-1)).all()),
                   "max_abs_dlogit": float((got - want).abs().max()), "max_abs_logit": float(want.abs().max())}
            for mix in ("Q4_K_M", "Q8_0"):
                mine, theirs = tmp / f"{arch}-{mix}.gguf", tmp / f"{arch}-{mix}-llamacpp.gguf"
                export_gguf(h, mine, mix)
                llamacpp.quantize_with_llamacpp(f32, theirs, mix)
                row[f"{mix.lower()}_identical"] = same_tensors(mine, theirs)
            rows[arch] = row
        rows["bert (minilm)"] = minilm_row(tmp)
        tokens = smollm2_tokenization(tmp)
    for row in rows.values():  # the tiny models' vocabulary is characters; real text is smollm2's (minilm: its own)
        row.setdefault("tokenizer_identical", tokens["same_as_source_gguf"] == tokens["samples"])
    return rows, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if not llamacpp.available():
        print("llama-cpp-python is not installed: `make reference`", file=sys.stderr)
        return 2
    rows, tokens = measure()
    t = Table(title="GGUF per architecture: lowbit's file in llama.cpp vs transformers (tiny random models)")
    for c in ("arch", "top-1 identical", "max |dlogit|", "max |logit|", "Q4_K_M same tensors", "Q8_0 same tensors"):
        t.add_column(c)
    for arch, r in rows.items():
        if r["max_abs_dlogit"] is None:
            t.add_row(arch, f"embedding cosine >= {r['embedding_cosine_min']:.6f} ({r['passages']} passages)", "-", "-",
                      str(r["q4_k_m_identical"]), str(r["q8_0_identical"]))
            continue
        t.add_row(arch, str(r["llamacpp_top1_identical"]), f"{r['max_abs_dlogit']:.2e}", f"{r['max_abs_logit']:.2f}",
                  str(r["q4_k_m_identical"]), str(r["q8_0_identical"]))
    Console(width=160).print(t)
    print(f"smollm2 in llama.cpp, {tokens['samples']} pydoc:eval / stdlib:eval samples: lowbit's file tokenizes "
          f"{tokens['same_as_source_gguf']} as the original GGUF does, {tokens['same_as_transformers']} as transformers")
    if args.json_out:
        write_json({"command": "python bench/gguf_archs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {"platform": platform.platform()},
                    "architectures": rows, "smollm2_tokenization": tokens}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
