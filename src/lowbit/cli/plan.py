"""`lowbit plan`: the guide's decision rule, answered from file headers (imports no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import command, out


def _plan_help() -> str:
    from lowbit.plan import rule_text

    return ("Walk the guide's decision rule top-down, stop at the first match, and explain the choice and the "
            "runner-up on the five axes (bit width, what is quantized, granularity, calibration cost, hardware "
            "support). Reads file headers only: answers at once, without loading the model.\n\n"
            "The rule (src/lowbit/plan/rules.toml):\n\n" + rule_text().replace("\n", "\n\n"))


@command(help=_plan_help())
def plan(
    model: Annotated[str | None, typer.Argument(help="Built-in name, HF directory, .safetensors or .gguf (optional).")] = None,
    target: Annotated[str, typer.Option(help="Where it will run: cpu, cuda:SM (e.g. cuda:8.0), apple or edge.")] = "cpu",
    goal: Annotated[str, typer.Option(help="experiment, serve, edge or accuracy (8-bit PTQ missed your bar).")] = "serve",
    batch: Annotated[int, typer.Option(help="Typical serving batch size.")] = 1,
    have_training_data: Annotated[bool, typer.Option("--have-training-data", help="You have labelled training data.")] = False,
    latency_critical: Annotated[bool, typer.Option("--latency-critical", help="Latency matters more than size.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the plan as JSON here.")] = None,
) -> None:
    from lowbit.plan import Inputs, ModelInfo, make_plan

    p = make_plan(Inputs(target=target, goal=goal, batch=batch, have_training_data=have_training_data,
                         latency_critical=latency_critical), ModelInfo.of(model))
    out.print(p.render(), markup=False, highlight=False)
    if json_out:
        import json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(p.to_dict(), indent=2))
