"""A Hugging Face tokenizer as llama.cpp's GGUF vocabulary: byte-level BPE as ``gpt2`` (tokens, types,
merges, special ids, chat template) and BERT's WordPiece as ``bert`` (phantom-space tokens), as
llama.cpp's converter writes them."""

from __future__ import annotations

import logging
from typing import Any

import gguf

from lowbit.errors import ExportError

log = logging.getLogger(__name__)


def hf_tokenizer_kv(w: gguf.GGUFWriter, tok: Any) -> None:
    """A Hugging Face byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary."""
    import json

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
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    added = {t["content"] for t in spec.get("added_tokens", [])}
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = (gguf.TokenType.CONTROL if t in special else
                    gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    log.warning("GGUF export: the tokenizer's pre-tokenizer is recorded as 'default'; llama.cpp may split text "
                "slightly differently from transformers for this model")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        if getattr(tok, attr, None) is not None:
            add(int(getattr(tok, attr)))
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)


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
