"""`lowbit qat`: quantization-aware training from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import _quiet_libraries, command, out


@command()
def qat(
    model: Annotated[str, typer.Argument(help="smollm2, minilm, a Hugging Face directory or safetensors file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the converted (real quantized) checkpoint.")],
    data: Annotated[str, typer.Option(help="Training text: pydoc:calib, stdlib:calib, a file, folder or .jsonl.")] = "pydoc:calib",
    spec: Annotated[str, typer.Option(help="int<bits>(-sym|-asym)(-g<N>|-ch|-tensor), nf4, fp4, nf4-dq, w8a8, or a GGUF "
                                           "type (Q4_K, Q3_K, Q8_0...).")] = "int4-asym-g64",
    steps: Annotated[int, typer.Option(help="Optimizer steps (one batch each).")] = 200,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the latent weights.")] = 1e-5,
    distill: Annotated[bool, typer.Option("--distill", help="Loss: KL divergence to the full-precision model (no labels "
                                                             "needed; encoders: cosine distance). Default: next-token loss.")] = False,
    start: Annotated[str, typer.Option(help="Start from this PTQ result: rtn, or gptq (uses --calib).")] = "rtn",
    calib: Annotated[str, typer.Option(help="Calibration text for --start gptq.")] = "pydoc:calib",
    lsq: Annotated[bool, typer.Option("--lsq", help="Learn the scales too (LSQ).")] = False,
    act: Annotated[bool, typer.Option("--act", help="Fake-quantize the layer inputs to int8 per token as well.")] = False,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence.")] = 256,
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 1,
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping.")] = 1.0,
    checkpoint: Annotated[Path | None, typer.Option(help="Training checkpoint file (written every --save-every steps).")] = None,
    save_every: Annotated[int, typer.Option(help="Steps between training checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint.")] = False,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Also score the start and the result against the "
                                                                  "full-precision model on this data (KL / cosine).")] = None,
    windows: Annotated[int, typer.Option(help="Eval windows of 512 tokens (--eval).")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Quantization-aware training: train MODEL through the rounding, then save a real quantized checkpoint.

    Fake-quantize MODEL's Linear layers to --spec (starting from RTN or GPTQ), train through the rounding
    with a straight-through estimator, then convert to the same real quantized layers PTQ makes and save a
    checkpoint that `lowbit eval` and `lowbit export` read."""
    from lowbit import api
    from lowbit.metrics.run import EvalSettings
    from lowbit.progress import Steps
    from lowbit.qat import TrainSettings

    settings = TrainSettings(steps=steps, lr=lr, batch=batch, seq_len=seq_len, distill=distill, clip=clip,
                             checkpoint=str(checkpoint) if checkpoint else None, save_every=save_every,
                             resume=resume, data=data)  # checks itself: fails before any model loads
    evaluate = EvalSettings(data=eval_data, windows=windows, speed=False) if eval_data else None
    _quiet_libraries()
    with Steps(steps, f"qat {spec}") as bar:
        run = api.train_qat(model, out_dir, settings, spec=spec, start=start, calib=calib, lsq=lsq, act=act,
                            evaluate=evaluate, overwrite=overwrite,
                            progress=lambda i, n, loss: bar.update(i, f"loss {loss:.4f}"))
    res = run.train
    first, last = res.losses[:10] or [float("nan")], res.losses[-10:] or [float("nan")]
    out.print(f"qat {run.label}: {res.steps} steps ({res.steps - res.resumed_from} run now) in {res.seconds:.0f} s, "
              f"loss {sum(first) / len(first):.4f} -> {sum(last) / len(last):.4f} (mean of first / last 10) -> {out_dir}",
              highlight=False)
    if run.before is not None and run.after is not None:
        key = "kl_mean" if run.kind == "causal-lm" else "cosine_mean"
        out.print(f"{key.split('_')[0]} to full precision on {eval_data}: start ({start}) {getattr(run.before, key):.4f} -> "
                  f"after QAT {getattr(run.after, key):.4f}", highlight=False)
