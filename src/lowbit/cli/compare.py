"""`lowbit compare` (every candidate on your data, the Pareto front and a recommendation) and `lowbit demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli import _quiet_libraries, command, out

BudgetOption = Annotated[list[str] | None, typer.Option(
    help="Add a GGUF candidate mixed to this size (4.5 bpw, 90MB): one llama.cpp type per tensor, least predicted KL "
         "(repeatable: a curve beside the fixed mixes).")]
BudgetCheckOption = Annotated[int, typer.Option(
    help="With --budget: (tensor, type) pairs quantized one at a time and measured, to report the predicted KL's "
         "rank correlation with the measured (0: skip).")]


@command()
def compare(
    model: Annotated[list[str], typer.Argument(help="Built-in (smollm2, minilm), HF dir, .gguf or checkpoint; several: a report each.")],
    calib: Annotated[str, typer.Option(help="Calibration data (pydoc:calib, stdlib:calib, a file or directory).")] = "pydoc:calib",
    eval_data: Annotated[str, typer.Option("--eval", help="Your eval set: text, or JSONL of "
                                           '{"question","choices","answer"} / {"text","label"}.')] = "pydoc:eval",
    eval_text: Annotated[str, typer.Option(help="Text for KL/PPL when --eval is a labelled JSONL set.")] = "pydoc:eval",
    methods: Annotated[str | None, typer.Option(help="Comma-separated candidates (default: every family); "
                                                "e.g. rtn-w8,gptq-w4g64,gguf-q4_k_m.")] = None,
    bar: Annotated[str | None, typer.Option(help="Your quality bar: kl=0.05, ppl=+3%, acc=-1, cos=0.99, top1=0.9.")] = None,
    budget_bpw: Annotated[float | None, typer.Option(help="Largest bits per weight you can afford.")] = None,
    budget: BudgetOption = None,
    budget_check: BudgetCheckOption = 16,
    seed: Annotated[int, typer.Option(help="Which eval windows are drawn (rerun with another to check a decision).")] = 0,
    until_decided: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Add eval windows (doubling, only for the candidates the decision hinges on) until "
                                "the recommendation no longer depends on noise, within this time budget.")] = None,
    protocol: Annotated[str, typer.Option(
        help="How KL/PPL are scored: windows (default: seeded windows, tokens 2..n) or llama-perplexity "
             "(consecutive chunks, BOS first, second half scored: comparable with llama.cpp's KLD tables).")] = "windows",
    embeddings: Annotated[str, typer.Option(
        help="stored: every candidate keeps the token embeddings and head as stored (equal footing, default); "
             "quantized: every candidate quantizes them to 8 bits (int8 rows, Q8_0 in GGUF; equal footing); "
             "gguf-rule: GGUF candidates quantize them by llama.cpp's mix rule.")] = "stored",
    target: Annotated[str, typer.Option(help="Where it will run (cpu, cuda:SM, apple, edge): the hardware axis.")] = "cpu",
    report: Annotated[Path, typer.Option(help="Directory for report.md, report.html and results.json.")] = Path("lowbit-report"),
    windows: Annotated[int, typer.Option(help="Eval windows of --seq-len tokens (an encoder: 16 passages each).")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per eval and calibration window.")] = 512,
    calib_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    calib_check: Annotated[bool, typer.Option("--calib-check", help="Also calibrate on a generic set and show the gap.")] = False,
    train_data: Annotated[str | None, typer.Option(help="Training text: with --qat-steps, QAT candidates (4- and 3-bit, "
                                                        "distilled from the float model) join the comparison.")] = None,
    qat_steps: Annotated[int, typer.Option(help="QAT step budget per candidate (one 256-token window per step).")] = 0,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip the speed measurements.")] = False,
    cluster: Annotated[str | None, typer.Option(help="Run the candidates as Ray tasks: ray (Ray's default) or ray://HOST:PORT "
                                                     "(the head's address); needs lowbit\\[ray].")] = None,
    task_cpus: Annotated[int, typer.Option(help="With --cluster: CPUs per task (torch's threads in it).")] = 1,
    plugin: Annotated[list[str] | None, typer.Option(help="A module that registers candidates (repeatable; every node's).")] = None,
    list_methods: Annotated[bool, typer.Option("--list", help="List the candidates and exit.")] = False,
) -> None:
    """Run every candidate on your data, mark the Pareto front of size vs quality, and recommend one.

    The recommendation follows the guide: start conservative and push the bit width down only while your bar
    holds. Resumable: finished candidates are cached in REPORT/.cache."""
    from lowbit.compare import CANDIDATES, CompareSettings

    if list_methods:
        import lowbit.compare.families  # noqa: F401  (every family registers its candidates there)

        for name in CANDIDATES:
            c = CANDIDATES.get(name)
            out.print(f"{c.id:<14} {c.family:<6} {c.bits}-bit  {c.label}{'  (default)' if c.default else ''}")
        return
    _quiet_libraries()
    _run(list(model), CompareSettings(
        calib=calib, eval=eval_data, eval_text=eval_text, bar=bar, budget_bpw=budget_bpw, budgets=list(budget or ()),
        budget_check=budget_check, methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None, embeddings=embeddings,
        protocol=protocol, until_decided=until_decided, windows=windows, seq_len=seq_len, seed=seed,
        calib_samples=calib_samples, speed=not no_speed, calib_check=calib_check, target=target, train_data=train_data,
        qat_steps=qat_steps, cluster=cluster, task_cpus=task_cpus, plugins=list(plugin or ())), report)


def _run(models: list[str], settings: Any, report: Path) -> None:
    from lowbit.compare.run import compare_models

    t0 = time.perf_counter()
    for m, res in zip(models, compare_models(models, settings, report, console=out), strict=True):
        if len(models) > 1:
            out.print(f"\n[bold]{m}[/]")
        _print_results(res)
    where = report if len(models) == 1 else report / "*"
    out.print(f"report: {where / 'report.html'}, {where / 'report.md'}, {where / 'results.json'} "
              f"({time.perf_counter() - t0:.0f} s)")


def _print_results(res: Any) -> None:
    """The table, the recommendation with its reasons, the warnings and the calibration check."""
    from lowbit.compare.calib_check import CalibCheck
    from lowbit.compare.report import markdown_table

    out.print(markdown_table([res.reference, *res.candidates]), markup=False, highlight=False)
    rec = res.recommendation
    out.print(f"\n[bold]Recommendation: {rec.id}[/]" + ("" if rec.met_bar else " [red](bar not met)[/]"))
    for r in rec.reasons:
        out.print(f"  - {r}", markup=False, highlight=False)
    for w in res.warnings:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)
    cc = res.calib_check
    if isinstance(cc, CalibCheck):
        out.print(f"calibration check: {cc.candidate} on {cc.user_calib}: {cc.metric} {cc.user_value:.4f}; "
                  f"on {cc.generic_calib}: {cc.generic_value:.4f} -> "
                  f"{'yours is better' if cc.user_calib_better else 'yours is NOT better'}", highlight=False)


@command()
def demo(
    report: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("lowbit-report"),
    windows: Annotated[int, typer.Option(help="Eval windows of 512 tokens.")] = 4,
) -> None:
    """The main job on built-in defaults: `lowbit compare smollm2`.

    Calibration pydoc:calib, eval pydoc:eval, every family, bar kl=0.05: the table, the recommendation and
    the report."""
    compare(["smollm2"], report=report, windows=windows, calib="pydoc:calib", eval_data="pydoc:eval",
            eval_text="pydoc:eval", methods=None, bar=None, budget_bpw=None, seed=0, embeddings="stored", target="cpu", seq_len=512, calib_samples=16,
            calib_check=False, train_data=None, qat_steps=0, no_speed=False, list_methods=False, cluster=None,
            task_cpus=1, plugin=None)
