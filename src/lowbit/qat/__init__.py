"""Quantization-aware training: ``prepare`` -> ``train`` -> ``convert``.

The guide's escalation step: when post-training quantization misses the target, train through the
rounding. ``prepare`` (start.py) swaps the selected Linear (and Conv2d) layers for fake-quantized ones
(modules/fake_quant.py), starting from a PTQ result (RTN or GPTQ) so step 0 *is* that PTQ model;
``train`` (training.py) runs a CPU-sized loop: causal-LM loss, cross-entropy on labels, or distillation
to the full-precision model, which needs no labels (losses.py), over batches.py's data, with a
resumable training checkpoint (state.py); ``convert`` (conversion.py) runs the registered method "qat"
(methods/qat.py) through the pipeline, which turns each fake-quantized layer into the same real module
PTQ produces, so saving, compressed-tensors and GGUF export work as they do for PTQ.

    p = qat.prepare("smollm2", "int3-asym-g64", start="rtn")
    qat.train(p, qat.lm_batches(p, "pydoc:calib", 200, 256), qat.TrainSettings(steps=200, lr=2e-5))
    q = qat.convert(p)

Spec strings (``parse_spec``): ``int3-asym-g64``, ``int4-sym-ch``, ``int8-sym-tensor``, ``nf4``,
``fp4``, ``nf4-dq``, a GGUF type (``Q4_K``, ``Q3_K``, ``Q8_0``...), or ``w8a8``.
"""

from lowbit.methods.qat import QATSpec, parse_spec
from lowbit.qat.batches import encoder_batches, lm_batches
from lowbit.qat.conversion import convert
from lowbit.qat.start import fake_quant_layers, prepare
from lowbit.qat.training import TrainResult, TrainSettings, train

__all__ = ["QATSpec", "TrainResult", "TrainSettings", "convert", "encoder_batches", "fake_quant_layers",
           "lm_batches", "parse_spec", "prepare", "train"]
