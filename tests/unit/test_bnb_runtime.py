"""NF4 / FP4 / LLM.int8 timed in bitsandbytes' own kernels: the copy compare times holds bitsandbytes'
layers with lowbit's codes and computes what lowbit's layers compute (needs bitsandbytes: make test
installs it)."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.modules.bnb4_linear import Linear4bit
from lowbit.modules.int8_linear import LinearInt8

bnb = pytest.importorskip("bitsandbytes")


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from lowbit.modules.kernel_mode import kernel_mode

    with torch.inference_mode(), kernel_mode(model, "dequant"):
        return model(input_ids=ids).logits


@pytest.mark.parametrize(("method", "kw"), [("nf4", {}), ("nf4", {"double_quant": True}), ("fp4", {}),
                                            ("int8", {"threshold": 6.0})])
def test_the_bitsandbytes_copy_holds_the_same_codes_and_computes_the_same(tiny_llama, method, kw) -> None:
    from lowbit.metrics.bnb_runtime import to_bitsandbytes

    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config(method, **kw))
    ours = {n: m for n, m in q.model.named_modules() if isinstance(m, (Linear4bit, LinearInt8))}
    copy, swapped = to_bitsandbytes(q.model)
    assert swapped == len(ours) > 0
    theirs = dict(copy.named_modules())
    for name, mod in ours.items():
        b = theirs[name]
        if isinstance(mod, Linear4bit):
            assert isinstance(b, bnb.nn.Linear4bit) and b.weight.quant_state.blocksize == mod.blocksize
            assert b.weight.quant_state.quant_type == mod.quant_type
            if not mod.double_quant:  # every weight and block constant comes back the same
                back = bnb.functional.dequantize_4bit(b.weight.data, b.weight.quant_state)
                assert torch.equal(back, mod.dequantize()) and torch.equal(b.weight.quant_state.absmax, mod.absmax)
                if mod.quant_type == "nf4":  # and every code (FP4 has two codes for 0, either may come back)
                    assert torch.equal(b.weight.data.flatten(), mod.packed.flatten())
        else:
            assert isinstance(b, bnb.nn.Linear8bitLt) and b.state.threshold == mod.threshold
            assert torch.equal(b.weight.data, mod.CB)
    assert all(isinstance(m, (Linear4bit, LinearInt8)) for m in ours.values())  # the model itself untouched
    ids = torch.randint(3, 100, (1, 24), generator=torch.Generator().manual_seed(0))
    a, b = _logits(q.model, ids), _logits(copy, ids)
    assert (a - b).abs().max() <= 2e-2 * a.abs().max()


def test_compare_times_them_in_bitsandbytes(tiny_llama, text_file) -> None:
    from lowbit.compare.speed import SpeedMeter
    from lowbit.metrics.run import EvalSettings, Evaluator

    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("nf4"))
    ev = Evaluator(tiny_llama, EvalSettings(data=str(text_file), windows=1, seq_len=32, speed=False))
    r = SpeedMeter(tiny_llama, ev, None, enabled=True).bitsandbytes_ratio(q.model)
    assert r.prefill > 0 and r.decode > 0
    assert r.note.startswith(f"bitsandbytes {bnb.__version__}'s CPU kernels (") and "lowbit" not in r.note
