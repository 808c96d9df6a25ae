"""modules/select.py: which Linear layers get quantized."""

from __future__ import annotations

from torch import nn

from lowbit.modules import DEFAULT_IGNORE, select_linears


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "k_proj": nn.Linear(8, 8)})
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 10)
        self.classifier = nn.Linear(8, 2)
        self.my_lm_head_proj = nn.Linear(8, 8)  # contains "lm_head" but is not the head


def test_default_ignores_heads_only() -> None:
    sel, skipped = select_linears(Net())
    assert list(sel) == ["attn.q_proj", "attn.k_proj", "mlp.0", "mlp.2", "my_lm_head_proj"]
    assert skipped == ["lm_head", "classifier"]
    assert all(isinstance(m, nn.Linear) for m in sel.values())


def test_nested_lm_head_is_ignored() -> None:
    outer = nn.Module()
    outer.inner = Net()
    sel, skipped = select_linears(outer)
    assert "inner.lm_head" in skipped and "inner.lm_head" not in sel


def test_tiny_llama_defaults(tiny_llama) -> None:
    sel, skipped = select_linears(tiny_llama.model)
    assert skipped == ["lm_head"]
    assert len(sel) == 14 and all(n.startswith("model.layers.") for n in sel)


def test_targets_regex() -> None:
    sel, skipped = select_linears(Net(), targets=[r"attn\."])
    assert list(sel) == ["attn.q_proj", "attn.k_proj"]
    assert set(skipped) == {"mlp.0", "mlp.2", "lm_head", "classifier", "my_lm_head_proj"}


def test_several_targets_are_or_ed() -> None:
    sel, _ = select_linears(Net(), targets=[r"q_proj$", r"^mlp\.2$"])
    assert list(sel) == ["attn.q_proj", "mlp.2"]


def test_ignore_replaces_the_default() -> None:
    sel, skipped = select_linears(Net(), ignore=[r"^mlp\."])
    assert "lm_head" in sel and "classifier" in sel
    assert skipped == ["mlp.0", "mlp.2"]


def test_empty_ignore_selects_everything() -> None:
    sel, skipped = select_linears(Net(), ignore=[])
    assert skipped == [] and len(sel) == 7


def test_targets_and_ignore_combine() -> None:
    sel, _ = select_linears(Net(), targets=[r"proj"], ignore=[r"k_proj"])
    assert list(sel) == ["attn.q_proj", "my_lm_head_proj"]


def test_no_match_gives_empty_selection() -> None:
    sel, skipped = select_linears(Net(), targets=[r"nothing-matches"])
    assert sel == {} and len(skipped) == 7


def test_default_ignore_patterns() -> None:
    import re

    def ignored(name: str) -> bool:
        return any(re.search(p, name) for p in DEFAULT_IGNORE)

    for name in ("lm_head", "model.lm_head", "embed_out", "score", "output", "x.classifier"):
        assert ignored(name), name
    for name in ("model.layers.0.attention.output.dense", "lm_head_extra", "scores", "classifier.dense"):
        assert not ignored(name), name
