"""Reference run: llm-compressor's GPTQ `oneshot` on exactly lowbit's calibration tokens.

Runs inside the llm-compressor venv (`make bench-reference`), never in lowbit's: llm-compressor 0.14
pins transformers <= 5.17. bench/calibrated.py calls it with a float32 model directory and a file of
token windows, and evaluates the weights it writes with lowbit's own evaluator, so both tools are
scored on identical windows.

    .venv-llmc/bin/python bench/ref_llmcompressor.py --model DIR --tokens calib.pt --bits 4 --group-size 64 \
        [--asym] [--actorder static|none] --out weights.safetensors --json timing.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--asym", action="store_true")
    p.add_argument("--actorder", default="static", choices=["static", "none"])
    p.add_argument("--out", required=True)
    p.add_argument("--json", required=True)
    a = p.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    ids = torch.load(a.tokens)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    weights = {"num_bits": a.bits, "type": "int", "symmetric": not a.asym, "strategy": "group",
               "group_size": a.group_size}
    if a.actorder != "none":
        weights["actorder"] = a.actorder
    recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"])
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1])
    seconds = time.perf_counter() - t0
    # After oneshot the Linear weights hold the quantized-dequantized values: hand them back as floats.
    out = {f"{n}.weight": m.weight.detach().float().contiguous() for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    save_file(out, a.out)
    with open(a.json, "w") as f:
        json.dump({"seconds": seconds, "layers": len(out), "config": weights, "samples": int(ids.shape[0]),
                   "seq_len": int(ids.shape[1])}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
