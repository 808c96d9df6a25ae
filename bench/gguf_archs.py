"""GGUF export per architecture, against llama.cpp: tiny random models of each architecture lowbit
writes (widths multiples of 256, built from a transformers config by tests/unit/test_gguf_archs.py),
exported as F32 by lowbit and run by llama.cpp; then Q4_K_M and Q8_0 by lowbit against llama.cpp's own
``llama_model_quantize`` of that F32 file. Needs llama-cpp-python (`make reference`).

    python bench/gguf_archs.py [--json FILE]

Per architecture: the top-1 next token at each of 48 positions (llama.cpp vs transformers), the
largest |logit difference|, and whether the Q4_K_M / Q8_0 files hold the same tensors (types and bytes).
The logits use the tests' tiny byte-pair tokenizer. Tokenization on real text uses a vocabulary of
each architecture's family, converted by lowbit from the Hugging Face tokenizer into the tiny model's
file (``tokenization``): Llama's and Phi-3's real SentencePiece vocabularies (llama.cpp's own vocabulary
files, read by transformers; also scored on llama.cpp's test-tokenizer-0 strings and expected ids), a
SentencePiece model trained on pydoc under transformers' Gemma tokenizer, smollm2's byte-pair vocabulary
under Qwen2's pre-tokenizer. ``tokenizer_identical``: llama.cpp's tokens of 16 pydoc / stdlib samples equal
transformers' (minilm: its 32 passages). ``smollm2_tokenization`` compares smollm2's copied vocabulary.
``rope``: rope-scaling variants (tests/unit/test_gguf_rope.py) in llama.cpp against transformers.
"""

from __future__ import annotations

import argparse
import functools
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit"), str(ROOT / "tests" / "integration")]

from conftest import TINY_CHARS, TINY_SPECIALS
from test_gguf_archs import ARCHS, IDS, logits, tiny
from test_gguf_rope import VARIANTS as ROPES
from test_gguf_rope import tiny_rope

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


def same_as_llamacpp(h, f32: Path, stem: Path) -> dict:
    """Whether lowbit's Q4_K_M and Q8_0 files hold the tensors llama.cpp's own quantization of ``f32`` does."""
    row = {}
    for mix in ("Q4_K_M", "Q8_0"):
        mine, theirs = Path(f"{stem}-{mix}.gguf"), Path(f"{stem}-{mix}-llamacpp.gguf")
        export_gguf(h, mine, mix)
        llamacpp.quantize_with_llamacpp(f32, theirs, mix)
        row[f"{mix.lower()}_identical"] = same_tensors(mine, theirs)
    return row


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


FAMILY = {"llama": "llama-spm", "mistral": "llama-spm", "phi3": "phi-3", "qwen2": "qwen2-bpe", "qwen3": "qwen2-bpe",
          "gemma2": "gemma-spm (trained)", "gemma3": "gemma-spm (trained)"}


def family_tokenizers(tmp: Path) -> dict:
    """Each vocabulary of FAMILY as a transformers tokenizer (see the module docstring)."""
    import copy

    import transformers
    from test_gguf_spm_vocab import vocab_dir
    from test_gguf_vocab import VARIANTS as PRE
    from test_gguf_vocab_spm import spm_tokenizer, train_spm

    from lowbit.loaders import load_model

    models = vocab_dir()
    toks = {name: transformers.AutoTokenizer.from_pretrained(models, gguf_file=f"ggml-vocab-{name}.gguf")
            for name in ("llama-spm", "phi-3")} if models else {}
    toks["gemma-spm (trained)"] = spm_tokenizer(train_spm(tmp / "spm"), "GemmaTokenizer", tmp / "gemma-tok")
    bpe = copy.deepcopy(load_model("smollm2").tokenizer)
    bpe.backend_tokenizer.pre_tokenizer = PRE["qwen2"]
    toks["qwen2-bpe"] = bpe
    return toks


def family_tokenization(tmp: Path) -> dict:
    """Per architecture: llama.cpp's tokens of 16 samples from lowbit's file (its family's vocabulary)
    against transformers', and for llama.cpp's own vocabulary files its test-tokenizer-0 expected ids."""
    from llama_cpp import Llama
    from test_gguf_spm_vocab import vocab_dir

    from lowbit.calib import load_corpus

    samples = [doc()[:1500] for data in ("pydoc:eval", "stdlib:eval") for doc in load_corpus(data).docs[:8]]
    toks, out = family_tokenizers(tmp), {}
    for arch, family in FAMILY.items():
        if family not in toks:
            continue
        tok, path = toks[family], tmp / f"tok-{arch}.gguf"
        export_gguf(tiny(arch, tok), path, "F32")
        llm = Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
        ids = functools.partial(_tokens, llm)
        row = {"vocabulary": family, "samples": len(samples),
               "same_as_transformers": sum(ids(t) == tok(t, add_special_tokens=False)["input_ids"] for t in samples)}
        if family in ("llama-spm", "phi-3"):
            base = vocab_dir() / f"ggml-vocab-{family}.gguf"
            inputs = Path(f"{base}.inp").read_text().split("\n__ggml_vocab_test__\n")
            expected = [[int(i) for i in line.split()] for line in Path(f"{base}.out").read_text().split("\n")]
            row.update(test_strings=len(inputs), test_strings_identical=sum(ids(t) == e for t, e in zip(inputs, expected)))
        out[arch] = row
        path.unlink()
    return out


def _tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=False, special=False)


def rope_rows(tmp: Path) -> dict:
    """Each rope-scaling variant: llama.cpp's logits of lowbit's F32 file against transformers', the same
    weights' distance under the default rope, and the Q4_K_M / Q8_0 files against llama.cpp's."""
    out = {}
    for name in ROPES:
        h, plain = tiny_rope(name, bpe_tokenizer()), tiny_rope(name, bpe_tokenizer(), scaled=False)
        f32 = tmp / f"{name}-f32.gguf"
        export_gguf(h, f32, "F32")
        want = logits(h.model)[0]
        got = llamacpp.load_llamacpp(f32, n_ctx=64).model(input_ids=IDS).logits[0]
        row = {"llamacpp_top1_identical": bool((got.argmax(-1) == want.argmax(-1)).all()),
               "max_abs_dlogit": float((got - want).abs().max()),
               "default_rope_max_abs_dlogit": float((logits(plain.model)[0] - want).abs().max())}
        row.update(same_as_llamacpp(h, f32, tmp / name))
        out[name] = row
    return out


def minilm_row(tmp: Path) -> dict:
    """The real minilm: llama.cpp's mean-pooled embeddings of 32 pydoc:eval passages from lowbit's F32 file
    against transformers' (cosine), their WordPiece tokens, and the Q4_K_M / Q8_0 files."""
    import torch
    from llama_cpp import Llama
    from test_gguf_minilm import passages

    from lowbit.loaders import load_model

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
    row.update(same_as_llamacpp(h, f32, tmp / "minilm"))
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
            row.update(same_as_llamacpp(h, f32, tmp / arch))
            rows[arch] = row
        rows["bert (minilm)"] = minilm_row(tmp)
        tokens = smollm2_tokenization(tmp)
        family = family_tokenization(tmp)
        rope = rope_rows(tmp)
    for arch, row in rows.items():
        if arch in family:
            f = family[arch]
            row["tokenizer_identical"] = f["same_as_transformers"] == f["samples"] and \
                f.get("test_strings_identical", 0) == f.get("test_strings", 0)
    return rows, {"smollm2": tokens, "families": family}, rope


def print_tables(tokens: dict, rope: dict) -> None:
    sm = tokens["smollm2"]
    print(f"smollm2 in llama.cpp, {sm['samples']} pydoc:eval / stdlib:eval samples: lowbit's file tokenizes "
          f"{sm['same_as_source_gguf']} as the original GGUF does, {sm['same_as_transformers']} as transformers")
    t = Table(title="Each architecture's family vocabulary, converted by lowbit, tokenized by llama.cpp")
    for c in ("arch", "vocabulary", "samples = transformers", "test-tokenizer-0 strings = expected ids"):
        t.add_column(c)
    for arch, r in tokens["families"].items():
        t.add_row(arch, r["vocabulary"], f"{r['same_as_transformers']}/{r['samples']}",
                  f"{r['test_strings_identical']}/{r['test_strings']}" if "test_strings" in r else "-")
    Console(width=160).print(t)
    t = Table(title="Rope scaling: lowbit's file in llama.cpp vs transformers")
    for c in ("variant", "top-1 identical", "max |dlogit|", "default rope's max |dlogit|", "Q4_K_M same", "Q8_0 same"):
        t.add_column(c)
    for name, r in rope.items():
        t.add_row(name, str(r["llamacpp_top1_identical"]), f"{r['max_abs_dlogit']:.2e}",
                  f"{r['default_rope_max_abs_dlogit']:.2e}", str(r["q4_k_m_identical"]), str(r["q8_0_identical"]))
    Console(width=160).print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if not llamacpp.available():
        print("llama-cpp-python is not installed: `make reference`", file=sys.stderr)
        return 2
    rows, tokens, rope = measure()
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
    print_tables(tokens, rope)
    if args.json_out:
        write_json({"command": "python bench/gguf_archs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {"platform": platform.platform()},
                    "architectures": rows, "smollm2_tokenization": tokens["smollm2"],
                    "tokenization": tokens["families"], "rope": rope}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
