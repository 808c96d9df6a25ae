"""llama.cpp's quantization mixes (Q4_K_M, Q3_K_S, ...): which GGML type each tensor gets.

Written from the rules of llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp, 0c1e570) for
dense Llama-family models and the mixes lowbit offers (the k-quant and legacy mixes, IQ4_NL, IQ4_XS,
TQ1_0, TQ2_0); the expert (MoE) and Falcon branches and the sub-4-bit i-quant mixes are left out. In order, for each tensor:

1. only 2-D ``*.weight`` tensors that are not norms are quantized; the rest keep their type;
2. a ``--tensor-type REGEX=TYPE`` override wins (first matching pattern);
3. otherwise the mix's base type, bumped by category: the output (and, with tied embeddings, the
   token embedding) goes to Q6_K (Q8_0 if its rows do not split into 256-blocks); ``attn_v`` and
   ``ffn_down`` get more bits in some layers (``use_more_bits``: the first and last eighth, and every
   third layer in between); ``attn_output`` is bumped in the Q2_K/Q3_K mixes;
4. a type whose block does not divide the row falls back: Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0,
   Q2_K/Q3_K/TQ1_0/TQ2_0->Q4_0, IQ4_XS->IQ4_NL, and to F16 if even 32 does not divide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import gguf

from lowbit.errors import InputError

# mix -> (base type, llama.cpp's LLAMA_FTYPE for general.file_type)
MIXES: dict[str, tuple[str, int]] = {
    "F32": ("F32", 0), "F16": ("F16", 1), "BF16": ("BF16", 32),
    "Q4_0": ("Q4_0", 2), "Q4_1": ("Q4_1", 3), "Q5_0": ("Q5_0", 8), "Q5_1": ("Q5_1", 9), "Q8_0": ("Q8_0", 7),
    "Q2_K": ("Q2_K", 10), "Q3_K_S": ("Q3_K", 11), "Q3_K_M": ("Q3_K", 12), "Q3_K_L": ("Q3_K", 13),
    "Q4_K_S": ("Q4_K", 14), "Q4_K_M": ("Q4_K", 15), "Q5_K_S": ("Q5_K", 16), "Q5_K_M": ("Q5_K", 17),
    "Q6_K": ("Q6_K", 18), "IQ4_NL": ("IQ4_NL", 25), "IQ4_XS": ("IQ4_XS", 30), "TQ1_0": ("TQ1_0", 36),
    "TQ2_0": ("TQ2_0", 37), "IQ2_XXS": ("IQ2_XXS", 19), "IQ2_XS": ("IQ2_XS", 20),
    "IQ2_S": ("IQ2_XS", 28), "IQ2_M": ("IQ2_S", 29), "IQ3_XXS": ("IQ3_XXS", 23), "IQ3_XS": ("IQ3_S", 22),
    "IQ3_S": ("IQ3_S", 26), "IQ3_M": ("IQ3_S", 27), "IQ1_S": ("IQ1_S", 24), "IQ1_M": ("IQ1_M", 31),
}
# the file types of llama.cpp's sub-2.5-bit rules (output Q5_K, embeddings Q2_K, attn_v / ffn_down guarded)
VERY_LOW = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")
Q5K_OUTPUT = (*VERY_LOW, "IQ3_XXS")  # their output (and tied embedding) goes to Q5_K, not Q6_K
# tensors of these types need importance-matrix data (llama.cpp's tensor_requires_imatrix)
NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
            "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL",
            "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL",
            "TQ1_0": "Q4_0", "TQ2_0": "Q4_0"}
FLOAT_TYPES = ("F32", "F16", "BF16")


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def category(name: str) -> str:
    """The tensor's role from its GGUF name: output, token_embd, attn_v, ffn_down, ..."""
    base = name.rsplit(".", 1)[0]
    return base.split(".", 2)[2] if base.startswith("blk.") else base


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """As llama.cpp's tensor_allows_quantization: 2-D weights, not norms, not BERT's position and
    token-type embeddings."""
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and name not in ("position_embd.weight", "token_types.weight"))


@dataclass
class MixPlanner:
    """Assigns types tensor by tensor in file order (the attn_v / ffn_down counters follow it)."""

    mix: str
    n_layer: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool
    has_imatrix: bool = False
    overrides: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    i_attn_v: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_attn_v: int = 0
    n_ffn_down: int = 0
    fallbacks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mix not in MIXES:
            raise InputError(f"unknown GGUF type {self.mix!r}; choose one of {', '.join(MIXES)}")
        self.n_attn_v = self.n_ffn_down = self.n_layer

    @property
    def base(self) -> str:
        return MIXES[self.mix][0]

    def type_for(self, name: str, shape: tuple[int, ...]) -> str:
        """GGML type for a tensor (``shape`` in PyTorch order, rows x columns)."""
        if not quantizable(name, shape):
            return "F32"
        cat = category(name)
        new = self.base
        manual = next((t for pat, t in self.overrides if pat.search(name)), None)
        if manual is not None:  # as in llama.cpp, an override skips the rules and their layer counters
            new = manual
        elif self.base not in FLOAT_TYPES:
            new = self._rules(cat, new, shape)
        return self._fallback(name, new, shape[-1]) if new not in FLOAT_TYPES else new

    def _rules(self, cat: str, new: str, shape: tuple[int, ...]) -> str:
        m = self.mix
        if cat == "output" or (self.tied_embeddings and cat == "token_embd"):
            block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[new]][0]
            return "Q8_0" if shape[-1] % block else "Q5_K" if m in Q5K_OUTPUT else ("Q6_K" if new != "Q8_0" else new)
        if cat == "token_embd":  # a ternary or very low-bit embedding table loses too much
            return {"TQ1_0": "Q4_K", "TQ2_0": "Q4_K", "IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K", "IQ2_S": "IQ3_S",
                    "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S"}.get(m, new)
        gqa = self.n_head // max(self.n_head_kv, 1)
        if m in VERY_LOW:
            return self._very_low(cat, new, gqa)
        if cat in ("attn_v", "attn_qkv"):  # llama.cpp counts a fused q/k/v (phi3) as attn_v
            new = self._attn_v(new, gqa)
        elif cat == "ffn_down":
            new = self._ffn_down(new)
        elif cat == "attn_output":
            new = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(m, new)
        elif cat in ("attn_k", "attn_q"):
            new = {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(m, new)
        elif cat in ("ffn_gate", "ffn_up"):
            counter = "i_ffn_gate" if cat == "ffn_gate" else "i_ffn_up"
            i, n = getattr(self, counter), self.n_layer
            if m == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                new = "IQ3_XXS"
            setattr(self, counter, i + 1)
        return new

    def _attn_v(self, new: str, gqa: int) -> str:
        m = self.mix
        i, n = self.i_attn_v, self.n_attn_v
        if m == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif m == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif m == "IQ3_XXS":
            new = "Q4_K" if gqa >= 4 else "IQ3_XXS" if self.has_imatrix else "IQ3_S"
        elif (m in ("IQ3_XS", "IQ3_S") and gqa >= 4) or m == "IQ3_M":
            new = "Q4_K"
        elif m == "Q3_K_L" or m in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = "Q5_K"
        elif m in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif m == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if self.n_layer == 80 and self.n_head != self.n_head_kv and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"  # llama.cpp's 70B rule: attn_v is 8x smaller there, more bits are cheap
        self.i_attn_v += 1
        return new

    def _ffn_down(self, new: str) -> str:
        m = self.mix
        i, n = self.i_ffn_down, self.n_ffn_down
        if m == "Q2_K":
            new = "Q3_K"
        elif m == "IQ3_XXS" and not self.has_imatrix:
            new = "Q4_K" if i < n // 8 else "Q3_K"
        elif m == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif m == "IQ3_M" and i < n // 8:
            new = "Q4_K"
        elif m == "Q3_K_L":
            new = "Q5_K"
        elif m == "Q4_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif m in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not self.has_imatrix:
            new = "Q5_K"
        elif m == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif m == "Q4_K_S" and i < n // 8:
            new = "Q5_K"
        elif m in ("Q4_0", "Q5_0") and self.has_imatrix and i < n // 8:
            new = "Q4_1" if m == "Q4_0" else "Q5_1"  # llama.cpp guards the first ffn_down layers
        self.i_ffn_down += 1
        return new

    def _very_low(self, cat: str, new: str, gqa: int) -> str:
        """llama.cpp's branch for the IQ2/IQ1 file types: attn_v to Q4_K under GQA >= 4 (else Q2_K, IQ3_S
        for IQ2_S/M), the first eighth of ffn_down to Q2_K (IQ3_S), IQ2_S/M's attn_output to IQ3_S."""
        low = "IQ3_S" if self.mix in ("IQ2_S", "IQ2_M") else "Q2_K"
        if cat in ("attn_v", "attn_qkv"):
            self.i_attn_v += 1
            return "Q4_K" if gqa >= 4 else low
        if cat == "ffn_down":
            i, self.i_ffn_down = self.i_ffn_down, self.i_ffn_down + 1
            return low if i < self.n_ffn_down // 8 else new
        if cat == "attn_output" and self.mix in ("IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"):
            return "IQ2_XXS" if self.mix in ("IQ1_S", "IQ1_M") else "IQ3_S"
        return new

    def _fallback(self, name: str, new: str, ncols: int) -> str:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[new]][0]
        if ncols % block == 0:
            return new
        fb = FALLBACK.get(new, new)
        if ncols % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[fb]][0]:
            fb = "F16"
        self.fallbacks.append(f"{name}: {new} -> {fb} ({ncols} columns)")
        return fb


def parse_overrides(specs: list[str] | None) -> list[tuple[re.Pattern[str], str]]:
    """``["attn_v=Q8_0", "blk\\.0\\..*=F16"]`` -> compiled (pattern, type) pairs, checked."""
    out = []
    for s in specs or []:
        pat, sep, t = s.rpartition("=")
        t = t.upper()
        if not sep or not pat:
            raise InputError(f"--tensor-type {s!r}: expected REGEX=TYPE")
        from lowbit.formats.ggml import GGML_TYPES

        if t not in FLOAT_TYPES and t not in GGML_TYPES:
            raise InputError(f"--tensor-type {s!r}: {t} is not a GGML type lowbit writes")
        try:
            out.append((re.compile(pat), t))
        except re.error as e:
            raise InputError(f"--tensor-type {s!r}: bad regex ({e})") from None
    return out
