"""`lowbit demo` / `make demo`: the main job on the built-in defaults.

smollm2 (dequantized float32 reference) -> RTN int8 per-channel and int4 group-64 (sym and asym) ->
each measured against the reference on pydoc:eval -> a table and a short reading of it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lowbit import api
from lowbit.evaluate.result import EvalResult
from lowbit.evaluate.run import EvalSettings, Evaluator
from lowbit.load import load_model
from lowbit.report import results_table, write_json
from lowbit.spec import QuantSpec

DEMO_SPECS = [QuantSpec(8, True, -1), QuantSpec(4, True, 64), QuantSpec(4, False, 64)]


def run_demo(console: Console, windows: int = 4, json_out: Path | None = None) -> list[EvalResult]:
    console.print("[bold]lowbit demo[/]: smollm2 (SmolLM2-135M-Instruct, float32 reference), RTN, "
                  f"evaluated on pydoc:eval ({windows} x 512 tokens)")
    with console.status("loading smollm2 (first run dequantizes the GGUF, ~30 s)"):
        ref = load_model("smollm2")
    ev = Evaluator(ref, EvalSettings(data="pydoc:eval", windows=windows))
    results = [ev.run(ref, label="smollm2 fp32 (reference)")]
    extra: dict[str, dict[str, str]] = {results[0].model: {"quantize s": "–"}}
    for spec in DEMO_SPECS:
        label = f"rtn {spec}"
        with console.status(f"quantizing {label}"):
            qh, rep = api.quantize(ref, api.make_config("rtn", spec))
        res = ev.run(qh, label=label)
        res.extra["quantize_seconds"] = rep.seconds
        results.append(res)
        extra[label] = {"quantize s": f"{rep.seconds:.1f}"}
        del qh
    console.print(results_table(results, title="smollm2 on pydoc:eval", extra=extra))
    console.print(_reading(results))
    if json_out:
        write_json([r.to_dict() for r in results], json_out)
        console.print(f"wrote {json_out}")
    return results


def _reading(results: list[EvalResult]) -> str:
    ref, rest = results[0], results[1:]
    lines = [f"Protocol: {ref.protocol.windows} windows x {ref.protocol.seq_len} tokens of {ref.protocol.data}, "
             "non-overlapping, first token of each window is context only; KL is KL(reference || quantized)."]
    for r in rest:
        size = r.size_bytes / ref.size_bytes if ref.size_bytes else float("nan")
        ppl = 100 * (r.ppl / ref.ppl - 1) if ref.ppl else float("nan")
        lines.append(f"- {r.model}: {r.bits_per_weight:.2f} bits/weight, model {size:.2f}x the float32 bytes, "
                     f"PPL {ppl:+.1f}%, KL {r.kl_mean:.4f}, top-1 agreement {r.top1_agreement:.1%}.")
    return "\n".join(lines)


