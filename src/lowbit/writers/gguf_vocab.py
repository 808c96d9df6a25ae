"""A Hugging Face tokenizer as llama.cpp's GGUF vocabulary: byte-level BPE as ``gpt2`` (tokens, types,
merges, special ids, chat template), SentencePiece BPE (byte fallback: Llama 2, Gemma, Phi-3) as ``llama``
(scores) and BERT's WordPiece as ``bert`` (phantom-space tokens), as llama.cpp's converter writes them.

llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text is the vocabulary entry of
highest score. Its converter reads the scores from ``tokenizer.model``; lowbit reads the tokenizer.json
that transformers made from that file, whose merges are listed in the order of those scores. A token's
score is minus the rank of its first merge, which orders every pair as the original scores do.

The pre-tokenizer (how text is split before the merges) is named in ``tokenizer.ggml.pre``; llama.cpp
keeps one regex set per name. llama.cpp's converter finds the name by hashing the tokens of a test
string; lowbit reads it off the tokenizer's own pre-tokenizer instead:

    ByteLevel (its built-in regex)                      -> gpt-2
    Digits (one per digit), ByteLevel (its regex)       -> smollm
    Split(R, isolated), ByteLevel (no regex of its own) -> the name transformers' GGUF reader maps to R
                                                           (llama3, qwen2, tekken, gpt-4o, ...)

Anything else is written as ``default`` with a warning (llama.cpp may then split text differently)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import gguf

from lowbit.errors import ExportError

log = logging.getLogger(__name__)


def hf_tokenizer_kv(w: gguf.GGUFWriter, tok: Any) -> None:
    """A Hugging Face byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizer.json) tokenizer to convert")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") == "WordPiece":
        _wordpiece_kv(w, tok, spec)
        return
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export converts byte-pair and WordPiece tokenizers; this one is {model.get('type')!r}")
    if model.get("byte_fallback"):
        _sentencepiece_kv(w, tok, spec)
        return
    tokens, types = _tokens_and_types(tok, spec)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    pre = pre_tokenizer_name(spec)
    if pre is None:
        log.warning("GGUF export: the tokenizer's pre-tokenizer (%s) has no llama.cpp name; it is recorded as "
                    "'default', and llama.cpp may split text differently from transformers for this model",
                    json.dumps(spec.get("pre_tokenizer"))[:200])
    w.add_tokenizer_pre(pre or "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    _special_kv(w, tok)


def _sentencepiece_kv(w: gguf.GGUFWriter, tok: Any, spec: dict[str, Any]) -> None:
    """A SentencePiece byte-pair vocabulary (byte fallback) as llama.cpp's ``llama`` one: pieces with
    their "\u2581" spaces, scores from the merge order (see the module docstring), ``<0xNN>`` byte tokens,
    and whether a space is put before the text."""
    tokens, types = _tokens_and_types(tok, spec)
    rank: dict[str, int] = {}
    for r, m in enumerate(spec["model"].get("merges", [])):
        rank.setdefault("".join(m.split(" ", 1) if isinstance(m, str) else m), r)
    unk = spec["model"].get("unk_token") or getattr(tok, "unk_token", None)
    scores = []
    for i, (t, kind) in enumerate(zip(tokens, types)):
        if t == unk and kind != gguf.TokenType.UNUSED:
            types[i] = kind = gguf.TokenType.UNKNOWN
        elif kind == gguf.TokenType.NORMAL and _BYTE.fullmatch(t):
            types[i] = kind = gguf.TokenType.BYTE
        if kind == gguf.TokenType.USER_DEFINED:
            tokens[i] = t.replace("\u2581", " ")  # as the converter writes user-defined pieces
        scores.append(-float(rank[t]) if t in rank else
                      -float(len(rank) + i) if kind == gguf.TokenType.NORMAL else 0.0 if kind != gguf.TokenType.UNUSED
                      else -1000.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(_prepends_space(spec))
    _special_kv(w, tok)


_BYTE = re.compile(r"<0x[0-9A-F]{2}>")


def _prepends_space(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "\u2581" before the text: a Prepend normalizer (Llama 2's
    tokenizer.json) or a Metaspace pre-tokenizer that prepends (transformers' newer conversion)."""
    if any(n.get("type") == "Prepend" for n in _steps(spec.get("normalizer"), "normalizers")):
        return True
    return any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never"
               and p.get("add_prefix_space", True) for p in _steps(spec.get("pre_tokenizer"), "pretokenizers"))


def _steps(part: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A normalizer's or pre-tokenizer's steps: a Sequence's own, else itself alone."""
    part = part or {}
    return part.get(key, []) if part.get("type") == "Sequence" else [part]


def _tokens_and_types(tok: Any, spec: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Every id's text and llama.cpp type: added tokens that are special (or look it, as llama.cpp's
    converter judges: ``<|...|>``, ``<unused...>``, ``<pad>``...) are CONTROL, other added ones
    USER_DEFINED, ids the vocabulary skips UNUSED ``[PADn]``."""
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special") or _looks_special(t["content"])}
    added = {t["content"] for t in spec.get("added_tokens", [])}
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = (gguf.TokenType.CONTROL if t in special else
                    gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL)
    return tokens, types


def _looks_special(t: str) -> bool:
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<unused") and t.endswith(">")))


def _special_kv(w: gguf.GGUFWriter, tok: Any) -> None:
    """The special ids, whether encoding adds BOS / EOS (read off the tokenizer's own output), and the
    chat template."""
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        if getattr(tok, attr, None) is not None:
            add(int(getattr(tok, attr)))
    plain, full = tok("a", add_special_tokens=False)["input_ids"], tok("a")["input_ids"]
    bos, eos = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
    w.add_add_bos_token(bos is not None and len(full) > len(plain) and full[0] == bos)
    w.add_add_eos_token(eos is not None and len(full) > len(plain) and full[-1] == eos)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)


def pre_tokenizer_name(spec: dict[str, Any]) -> str | None:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json ``spec`` (see the module docstring),
    or None when it has none."""
    steps = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    kinds = [s.get("type") for s in steps]
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space", False):
        return None
    own_regex = steps[-1].get("use_regex", True)
    if kinds == ["ByteLevel"] and own_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and own_regex and steps[0].get("individual_digits"):
        return "smollm"
    split = steps[0]
    if kinds == ["Split", "ByteLevel"] and not own_regex and split.get("behavior") == "Isolated" and not split.get("invert"):
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            return None
        regex = (split.get("pattern") or {}).get("Regex")
        return next((name for name, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex), None)
    return None


def _wordpiece_kv(w: gguf.GGUFWriter, tok: Any, spec: dict[str, Any]) -> None:
    """A BERT WordPiece vocabulary as llama.cpp's ``bert`` one: "##" continuations lose the marker, word
    starts take the "\u2581" phantom space, bracketed specials stay as they are."""
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(n)], [gguf.TokenType.UNUSED] * n
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    for t, i in vocab.items():
        tokens[i] = t if t.startswith("[") and t.endswith("]") else t[2:] if t.startswith("##") else "\u2581" + t
        types[i] = gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    for attr, add in (("cls_token_id", w.add_bos_token_id), ("unk_token_id", w.add_unk_token_id),
                      ("sep_token_id", w.add_sep_token_id), ("pad_token_id", w.add_pad_token_id),
                      ("mask_token_id", w.add_mask_token_id)):
        if getattr(tok, attr, None) is not None:
            add(int(getattr(tok, attr)))
