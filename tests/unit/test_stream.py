"""Block-by-block quantization from the files (pipeline/stream.py) against the in-memory pipeline.

Tiny random models of four architectures are written as bf16 safetensors in several shards; streaming
them must give the very checkpoint the in-memory path gives, keep what it does not quantize in bf16,
and refuse bad files with one line and nothing left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from lowbit import api
from lowbit.errors import ExportError, InputError
from lowbit.loaders import load_model
from lowbit.pipeline.stream import can_stream, quantize_stream

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 16,
                                                         "sliding_window": 16}),
    "bert": ("BertConfig", "BertModel", {}),
}


def write_model(path, arch: str, tokenizer, layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random ``arch`` model saved as bf16 safetensors in shards of ~40 kB, with its tokenizer."""
    import transformers

    conf_cls, model_cls, extra = ARCHS[arch]
    kw = {"vocab_size": 128, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
          "num_attention_heads": 4, "max_position_embeddings": 512, **extra}
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, conf_cls)(**kw)).eval()
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="40KB")
    tokenizer.save_pretrained(path)
    return path


def _inputs(handle):
    ids = torch.arange(3, 40).reshape(1, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _out(handle):
    with torch.no_grad():
        out = handle.model(**_inputs(handle))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _in_memory(src, config, out, calib=None):
    quantized, _ = api.quantize(load_model(str(src)), config, calib=calib)
    api.save(quantized, out)
    return load_model(str(out))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_stream_equals_in_memory_rtn(tmp_path, tiny_tokenizer, arch, monkeypatch):
    monkeypatch.setattr("lowbit.writers.shards.SINGLE_FILE_BYTES", 0)  # keep the output sharded, as a big model's
    src = write_model(tmp_path / "src", arch, tiny_tokenizer)
    assert len(list(src.glob("*.safetensors"))) > 1  # really sharded
    config = api.make_config("rtn", api.QuantSpec(4, True, 32))
    report = quantize_stream(src, config, tmp_path / "stream")
    assert (tmp_path / "stream" / "model.safetensors.index.json").is_file()
    streamed = load_model(str(tmp_path / "stream"))
    memory = _in_memory(src, config, tmp_path / "memory")
    assert len(report.layers) == 3 * (7 if arch != "bert" else 6) + (arch == "bert")  # + BERT's pooler
    assert torch.equal(_out(streamed), _out(memory))
    from safetensors import safe_open

    dtypes = {}
    for f in (tmp_path / "stream").glob("model-*.safetensors"):
        with safe_open(f, "pt") as st:
            dtypes.update({k: st.get_slice(k).get_dtype() for k in st.keys()})  # noqa: SIM118 (not a dict)
    norms = [k for k in dtypes if "norm" in k.lower() and k.endswith("weight")]
    assert norms and all(dtypes[k] == "BF16" for k in norms)  # untouched tensors keep the source dtype
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))
    assert size(tmp_path / "stream") < size(src)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_stream_equals_in_memory_calibrated(tmp_path, tiny_tokenizer, text_file, method):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    config = api.make_config(method, api.QuantSpec(4, True, 32))
    calib = api.CalibSettings(str(text_file), 4, 64)
    report = quantize_stream(src, config, tmp_path / "stream", calib=calib)
    memory = _in_memory(src, config, tmp_path / "memory", calib)
    streamed = load_model(str(tmp_path / "stream"))
    assert report.calibration.tokens == 4 * 64
    assert torch.equal(_out(streamed), _out(memory))


def test_cli_streams_and_in_memory_methods_do_not(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    assert can_stream(str(src), "gptq") and can_stream(str(src), "gguf") and can_stream(str(src), "w8a8")
    assert not can_stream(str(src), "qat")  # QAT's convert: the model was trained in memory
    out = tmp_path / "q"
    quantize_stream(src, api.make_config("rtn"), out)
    assert not can_stream(str(out), "rtn")  # an already quantized checkpoint loads whole
    with pytest.raises(InputError, match="runs in memory"):
        api.quantize_to(str(out), api.make_config("rtn"), tmp_path / "w", resume=True)


def test_missing_shard_is_one_line_and_leaves_nothing(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (src / victim).unlink()
    with pytest.raises(InputError, match=victim) as e:
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.glob("q*"))


def test_truncated_shard_is_refused_before_anything_is_written(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated|shorter|bytes"):
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q")
    assert not any(tmp_path.glob("q*"))


def test_missing_tensor_names_it(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = "model.layers.1.mlp.down_proj.weight"
    shard = src / index["weight_map"].pop(key)
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    with pytest.raises(InputError, match="down_proj"):
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q")


def test_max_memory_below_one_block(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    with pytest.raises(InputError, match=r"one block needs about .* --max-memory allows") as e:
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q", max_memory="10KiB")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.glob("q*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    with pytest.raises(InputError, match="no CUDA GPU"):
        api.quantize_to(str(src), api.make_config("rtn"), tmp_path / "q", device="cuda")
    with pytest.raises(InputError, match="cpu, cuda, cuda:N or auto"):
        api.quantize_to(str(src), api.make_config("rtn"), tmp_path / "q", device="tpu")
    assert not any(tmp_path.glob("q*"))


def test_resume_needs_a_partial_run_of_the_same_settings(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    with pytest.raises(InputError, match="no interrupted run"):
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q", resume=True)
    (tmp_path / "q.partial").mkdir()
    (tmp_path / "q.partial" / "progress.json").write_text(json.dumps({"key": "another run", "done": 1, "shards": []}))
    with pytest.raises(ExportError, match="--resume"):
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q")
    with pytest.raises(InputError, match="other settings"):
        quantize_stream(src, api.make_config("rtn"), tmp_path / "q", resume=True)
    assert (tmp_path / "q.partial" / "progress.json").is_file()  # a refused resume keeps the run it refused


def _tensors(path):
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


CUDA_CASES = [  # method, options, calibrated, how close to the CPU's checkpoint (see _cuda_vs_cpu)
    ("rtn", {}, False, "bytes"), ("rtn", {"clip_search": True}, False, "close"),
    ("hqq", {}, False, "bytes"), ("nf4", {}, False, "bytes"), ("int8", {}, False, "bytes"),
    ("gguf", {"type": "Q8_0"}, False, "bytes"),
    ("gptq", {}, True, "close"), ("gptq", {"act_order": True}, True, "close"), ("awq", {}, True, "close"),
    ("w8a8", {"smooth": True, "alpha": 0.5}, True, "close"), ("w8a8", {"smooth": True}, True, "quality"),
]
CUDA_IDS = [f"{c[0]}{'-' + '-'.join(map(str, c[1])) if c[1] else ''}" for c in CUDA_CASES]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("method", "options", "calibrated", "match"), CUDA_CASES, ids=CUDA_IDS)
def test_cuda_matches_cpu(tmp_path, tiny_tokenizer, text_file, method, options, calibrated, match):
    """--device cuda: each block computed on the GPU (the method's math too, or on the CPU for methods
    that are numpy / CPU kernels) gives the CPU's checkpoint, or one as good."""
    _cuda_vs_cpu(tmp_path, tiny_tokenizer, text_file, "llama", method, options, calibrated, match)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("arch", "method"), [("qwen2", "gptq"), ("gemma3", "awq"), ("bert", "rtn"), ("bert", "gptq")])
def test_cuda_matches_cpu_on_other_architectures(tmp_path, tiny_tokenizer, text_file, arch, method):
    _cuda_vs_cpu(tmp_path, tiny_tokenizer, text_file, arch, method, {}, method != "rtn",
                 "bytes" if method == "rtn" else "close")


def _cuda_vs_cpu(tmp_path, tiny_tokenizer, text_file, arch, method, options, calibrated, match):
    """``match``: "bytes", every tensor identical (the CPU does the math, or it is exact arithmetic);
    "close", most bytes identical and the error against the float model as the CPU's; "quality", that
    error only. GPTQ is chaotic at this size: a 1e-6 relative change of its Hessians (the GPU's matmul
    rounds otherwise) flips 5-15% of the codes and moves the logits' squared error by up to 1.4x, either
    way (measured on the CPU, three seeds, these models)."""
    from lowbit.methods import get_method

    src = write_model(tmp_path / "src", arch, tiny_tokenizer)
    spec = api.QuantSpec(4, True, 32) if get_method(method).takes_spec else None
    config = api.make_config(method, spec, **options)
    calib = api.CalibSettings(str(text_file), 4, 64) if calibrated else None
    quantize_stream(src, config, tmp_path / "cpu", calib=calib)
    quantize_stream(src, config, tmp_path / "gpu", calib=calib, device="cuda")
    a, b = _tensors(tmp_path / "cpu"), _tensors(tmp_path / "gpu")
    assert sorted(a) == sorted(b) and all(t.device.type == "cpu" for t in b.values())
    raw = lambda t: t.contiguous().view(-1).view(torch.uint8)
    same = sum(int((raw(a[k]) == raw(b[k])).sum()) for k in a) / sum(raw(a[k]).numel() for k in a)
    if match == "bytes":
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    elif match == "close":
        assert same >= 0.7, same
    ref = _out(load_model(str(src)))
    err = [float((_out(load_model(str(tmp_path / d))) - ref).pow(2).mean()) for d in ("cpu", "gpu")]
    assert 0.5 * err[0] <= err[1] <= 2 * err[0], (err, same)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_eval_matches_cpu(tmp_path, tiny_tokenizer, text_file):
    """`lowbit eval --device cuda`: the model and its reference block by block on the GPU, the CPU's figures."""
    from lowbit.metrics.run import EvalSettings

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    quantize_stream(src, api.make_config("rtn", api.QuantSpec(4, True, 32)), tmp_path / "q")
    settings = EvalSettings(data=str(text_file), windows=3, seq_len=48, speed=False)
    cpu, cpu_ref = api.evaluate_against(str(tmp_path / "q"), settings, reference=str(src))
    gpu, gpu_ref = api.evaluate_against(str(tmp_path / "q"), settings, reference=str(src), device="cuda")
    for a, b in ((cpu, gpu), (cpu_ref, gpu_ref)):
        assert b.ppl == pytest.approx(a.ppl, rel=1e-3)
    assert gpu.kl_mean == pytest.approx(cpu.kl_mean, rel=2e-2, abs=1e-5)
    assert abs(gpu.top1_agreement - cpu.top1_agreement) <= 0.02


def test_eval_on_a_gpu_takes_what_runs_block_by_block(tmp_path, tiny_tokenizer, text_file):
    """--device cuda evaluates a causal LM from its files; an encoder there is refused in one line, and the
    reference log-probs a GPU computes are cached apart from the CPU's."""
    from lowbit.loaders.lazy import open_lazy
    from lowbit.metrics.streamed import cache_dir

    bert = write_model(tmp_path / "bert", "bert", tiny_tokenizer)
    with pytest.raises(InputError, match="cannot be evaluated there") as e:
        api._load_for_eval(str(bert), 0, "cuda")
    assert "\n" not in str(e.value)
    lazy, windows = open_lazy(write_model(tmp_path / "src", "llama", tiny_tokenizer)), torch.arange(20).reshape(2, 10)
    on_cpu = cache_dir(lazy, windows)
    lazy.device = "cuda"
    assert cache_dir(lazy, windows) != on_cpu


def test_kill_then_resume_is_bit_identical(tmp_path, tiny_tokenizer, text_file):
    """A real `lowbit quantize` process killed (SIGKILL) after a block, then --resume: same files."""
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer, layers=12, hidden=256)
    args = [sys.executable, "-m", "lowbit.cli", "quantize", str(src), "--method", "gptq", "--group-size", "32",
            "--calib", str(text_file), "--n-samples", "8", "--seq-len", "128"]
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, check=False)
    assert whole.returncode == 0, whole.stderr
    progress = tmp_path / "cut.partial" / "progress.json"
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "cut")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = 0
    while proc.poll() is None:
        try:
            done = json.loads(progress.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 2:
            proc.kill()
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -9 and 2 <= done < 12, "the run ended before it could be killed"
    assert not (tmp_path / "cut").exists()
    again = subprocess.run([*args, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "cut").iterdir())
    for name in files:
        assert _content(tmp_path / "whole" / name) == _content(tmp_path / "cut" / name), name
    assert not (tmp_path / "cut.partial").exists()


def _content(path):
    """A file's bytes, but for the record of each run's own time and memory (config.json, and the
    checkpoint's metadata, which repeats it): tensors byte for byte."""
    def strip(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in ("quantize_seconds", "calibration")}

    if path.name == "config.json":
        config = json.loads(path.read_text())
        return dict(config, quantization_config=strip(config["quantization_config"]))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k).contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                       for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        return strip(json.loads(meta["lowbit"])), tensors
    return path.read_bytes()


def test_gguf_read_tensor_by_tensor_equals_the_whole_load(tmp_path, bpe_llama):
    """A GGUF source read lazily (one tensor at a time, gguf's dequantizers) is the model the whole-file
    loader gives, and streams to the checkpoint the in-memory path writes."""
    from lowbit.loaders.lazy import open_lazy
    from lowbit.writers.gguf import export_gguf

    path = tmp_path / "m.gguf"
    export_gguf(bpe_llama, path, "Q8_0")
    lazy = open_lazy(path)
    assert all(p.device.type == "meta" for p in lazy.model.parameters())
    lazy.materialize()
    whole = load_model(str(path))
    assert torch.equal(_out(lazy.handle()), _out(whole))
    config = api.make_config("rtn", api.QuantSpec(4, True, 32))
    quantize_stream(path, config, tmp_path / "stream")
    assert torch.equal(_out(load_model(str(tmp_path / "stream"))), _out(_in_memory(path, config, tmp_path / "memory")))


@pytest.mark.parametrize(("extra", "needle"), [
    (["--max-memory", "10KiB"], "one block needs about"),
    (["--max-memory", "lots"], "is not a size"),
    (["--resume"], "no interrupted run"),
    pytest.param(["--device", "cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")),
])
def test_cli_streaming_errors_are_one_line_exit_2(tmp_path, tiny_tokenizer, extra, needle):
    from tests.unit.test_cli import assert_user_error
    from typer.testing import CliRunner

    from lowbit.cli import app

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    runner = CliRunner(env={"LOWBIT_PROGRESS": "0", "COLUMNS": "200"})
    assert_user_error(runner.invoke(app, ["quantize", str(src), "--out", str(tmp_path / "q"), *extra]), needle)
    assert not any(tmp_path.glob("q*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_cli_eval_on_a_missing_gpu_is_one_line_exit_2(tmp_path, tiny_tokenizer):
    from tests.unit.test_cli import assert_user_error
    from typer.testing import CliRunner

    from lowbit.cli import app

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    runner = CliRunner(env={"LOWBIT_PROGRESS": "0", "COLUMNS": "200"})
    assert_user_error(runner.invoke(app, ["eval", str(src), "--device", "cuda", "--json", str(tmp_path / "e.json")]),
                      "no CUDA GPU")
    assert not (tmp_path / "e.json").exists()


def test_gguf_of_an_architecture_transformers_cannot_build(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(path), arch="rwkv7")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_tensor("token_embd.weight", np.zeros((10, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="rwkv7") as e:
        quantize_stream(path, api.make_config("rtn"), tmp_path / "q")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.glob("q*"))


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
def test_gguf_export_reads_tensor_by_tensor_to_the_same_bytes(tmp_path, tiny_tokenizer, mix):
    """`lowbit export DIR --format gguf` reads one tensor at a time from the files, and writes the very
    bytes the export of the whole model in memory writes."""
    from lowbit.writers.gguf import export_gguf

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer, hidden=256)
    api.export_to(str(src), tmp_path / "stream.gguf", "gguf", gguf=api.GGUFSettings(mix))
    export_gguf(load_model(str(src)), tmp_path / "memory.gguf", mix)
    assert (tmp_path / "stream.gguf").read_bytes() == (tmp_path / "memory.gguf").read_bytes()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_eval_block_by_block_equals_in_memory(tmp_path, tiny_tokenizer, text_file, arch, monkeypatch):
    """`lowbit eval` of a model (and its reference) too big for the cap runs block by block from the
    files: the same PPL, KL and top-1 as in memory; the reference's log-probs come from the disk cache."""
    from lowbit.metrics.run import EvalSettings

    monkeypatch.setattr("lowbit.writers.shards.SINGLE_FILE_BYTES", 0)
    src = write_model(tmp_path / "src", arch, tiny_tokenizer)
    quantize_stream(src, api.make_config("rtn", api.QuantSpec(4, True, 32)), tmp_path / "q")
    settings = EvalSettings(data=str(text_file), windows=3, seq_len=48, speed=False)
    whole, whole_ref = api.evaluate_against(str(tmp_path / "q"), settings, reference=str(src))
    calls = []
    from lowbit.metrics import streamed

    real = streamed.streamed_logprobs
    def counting(*a, **k):
        calls.append(a[0].path)
        return real(*a, **k)

    monkeypatch.setattr(streamed, "streamed_logprobs", counting)
    monkeypatch.setattr("lowbit.metrics.run.streamed_logprobs", counting)
    for _ in range(2):  # the second run reads the reference's log-probs from the cache
        part, part_ref = api.evaluate_against(str(tmp_path / "q"), settings, reference=str(src), max_memory="1KiB")
        for a, b in ((whole, part), (whole_ref, part_ref)):
            assert a.ppl == pytest.approx(b.ppl, rel=1e-5)
        assert part.kl_mean == pytest.approx(whole.kl_mean, rel=1e-4, abs=1e-7)
        assert part.top1_agreement == whole.top1_agreement
    assert calls == [str(src), str(tmp_path / "q"), str(tmp_path / "q")]


def _spilling_cap(src, tokens: int) -> int:
    """A --max-memory one block fits under, but not with all its calibration activations."""
    from lowbit.calib.capture import find_blocks
    from lowbit.loaders.lazy import open_lazy
    from lowbit.pipeline import memory

    _, blocks = find_blocks(open_lazy(src).model)
    width = blocks[0].self_attn.q_proj.in_features
    return 2 * memory.block_bytes(blocks[0]) + memory.hessian_bytes(blocks[0]) + memory.activation_bytes(tokens, width) - 1


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_activations_on_disk_give_the_same_checkpoint(tmp_path, tiny_tokenizer, text_file, method, monkeypatch):
    """Calibration activations above the cap go to files, one micro-batch in memory: the same tensors as the
    in-memory two-pass schedule, and no file left in the output."""
    from lowbit.calib import spill

    monkeypatch.setattr("lowbit.calib.capture._fused_fits", lambda model, windows: False)
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    config = api.make_config(method, api.QuantSpec(4, True, 32))
    calib = api.CalibSettings(str(text_file), 12, 64)
    reads = []
    real = spill.SpilledChunks.__getitem__
    monkeypatch.setattr(spill.SpilledChunks, "__getitem__", lambda self, j: reads.append(j) or real(self, j))
    quantize_stream(src, config, tmp_path / "disk", calib=calib, max_memory=_spilling_cap(src, 12 * 64))
    assert reads  # the activations really came back from the files
    memory = _in_memory(src, config, tmp_path / "memory", calib)
    assert torch.equal(_out(load_model(str(tmp_path / "disk"))), _out(memory))
    assert not list((tmp_path / "disk").rglob("*.bin")) and not (tmp_path / "disk.partial").exists()


def _interrupt_after_block_1(monkeypatch):
    """A streamed run that stops (as at Ctrl-C) once its second block is written; returns the real writer."""
    from lowbit.pipeline import stream

    real = stream._Run.block_done

    def stop_after_two(self, i, activations=None):
        real(self, i, activations)
        if i == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(stream._Run, "block_done", stop_after_two)
    return real


def test_activations_on_disk_resume_after_an_interrupt(tmp_path, tiny_tokenizer, text_file, monkeypatch):
    """Interrupted after block 1 with its activations on disk, --resume continues from the files."""
    from lowbit.pipeline import stream

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer, layers=4)
    config = api.make_config("gptq", api.QuantSpec(4, True, 32))
    calib = api.CalibSettings(str(text_file), 12, 64)
    cap = _spilling_cap(src, 12 * 64)
    quantize_stream(src, config, tmp_path / "whole", calib=calib, max_memory=cap)
    real = _interrupt_after_block_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        quantize_stream(src, config, tmp_path / "cut", calib=calib, max_memory=cap)
    kept = tmp_path / "cut.partial" / "activations"
    assert sorted(p.name for p in kept.iterdir()) == ["b2"] and len(list((kept / "b2").glob("*.bin"))) == 3
    monkeypatch.setattr(stream._Run, "block_done", real)
    quantize_stream(src, config, tmp_path / "cut", calib=calib, resume=True)  # the cap is the first run's
    for name in ("model.safetensors", "config.json"):
        assert _content(tmp_path / "whole" / name) == _content(tmp_path / "cut" / name)


@pytest.mark.parametrize("arch,options", [
    ("llama", {"smooth": True}),  # the alpha search, scored through the head
    ("llama", {"smooth": True, "alpha": 0.5, "act": "static"}),
    ("bert", {"act": "static"}),  # post-norm: no fold; the pooler from its own statistics
])
def test_w8a8_streams_to_the_in_memory_checkpoint(tmp_path, tiny_tokenizer, text_file, arch, options):
    src = write_model(tmp_path / "src", arch, tiny_tokenizer)
    config = api.make_config("w8a8", **options)
    calib = api.CalibSettings(str(text_file), 4, 64)
    report = quantize_stream(src, config, tmp_path / "stream", calib=calib)
    _, mem_report = api.quantize(load_model(str(src)), config, calib=calib)
    memory = _in_memory(src, config, tmp_path / "memory", calib)
    assert report.details == mem_report.details
    if options.get("smooth"):
        assert report.details["alpha"] and report.details["smoothed_layers"]
    assert torch.equal(_out(load_model(str(tmp_path / "stream"))), _out(memory))


def test_w8a8_on_disk_interrupted_in_its_second_pass_resumes(tmp_path, tiny_tokenizer, text_file, monkeypatch):
    """W8A8's float statistics and alpha are kept after the first pass: a resumed run writes the blocks left
    from them (the statistics pass is not run again), to the same file; its activations went to disk."""
    from lowbit.pipeline import stream, stream_float

    src = write_model(tmp_path / "src", "llama", tiny_tokenizer, layers=4)
    config = api.make_config("w8a8", smooth=True, act="static")
    calib = api.CalibSettings(str(text_file), 12, 64)
    cap = _spilling_cap(src, 12 * 64)
    quantize_stream(src, config, tmp_path / "whole", calib=calib, max_memory=cap)
    real = _interrupt_after_block_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        quantize_stream(src, config, tmp_path / "cut", calib=calib, max_memory=cap)
    progress = json.loads((tmp_path / "cut.partial" / "progress.json").read_text())
    assert progress["done"] == 2 and progress["spill"] and "alpha" in progress["float"]["details"]
    assert not list((tmp_path / "cut.partial").rglob("*.bin"))  # pass 1's files are gone
    monkeypatch.setattr(stream._Run, "block_done", real)
    monkeypatch.setattr(stream_float, "_first_pass", lambda *a: pytest.fail("the statistics pass ran again"))
    quantize_stream(src, config, tmp_path / "cut", calib=calib, resume=True)
    for name in ("model.safetensors", "config.json"):
        assert _content(tmp_path / "whole" / name) == _content(tmp_path / "cut" / name)


def _tensors(d):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("fmt,method", [("compressed-tensors", "rtn"), ("bitsandbytes", "nf4")])
def test_export_of_a_checkpoint_streams_to_the_in_memory_tensors(tmp_path, tiny_tokenizer, fmt, method, monkeypatch):
    """`lowbit export CKPT` reads one block at a time: the tensors the in-memory writer gives, but the
    float ones (norms, embeddings) in the bf16 they are stored in; sharded with an index when large."""
    from lowbit.writers.bnb import export_bnb
    from lowbit.writers.compressed_tensors import export_compressed_tensors

    src = write_model(tmp_path / "src", "qwen2", tiny_tokenizer)
    config = api.make_config(method, api.QuantSpec(4, True, 32)) if method == "rtn" else api.make_config(method)
    quantize_stream(src, config, tmp_path / "ckpt")
    monkeypatch.setattr("lowbit.writers.shards.SINGLE_FILE_BYTES", 0)
    from lowbit.loaders.lazy import LazyModel

    reads, real = [], LazyModel.materialize
    monkeypatch.setattr(LazyModel, "materialize", lambda self, prefix="", **kw: reads.append(prefix) or real(self, prefix, **kw))
    api.export_to(str(tmp_path / "ckpt"), tmp_path / "stream", fmt)
    assert "model.layers.0" in reads and "" not in reads  # block by block, never the whole model
    assert (tmp_path / "stream" / "model.safetensors.index.json").is_file()
    writer = export_compressed_tensors if fmt == "compressed-tensors" else export_bnb
    writer(load_model(str(tmp_path / "ckpt")), tmp_path / "memory")
    a, b = _tensors(tmp_path / "stream"), _tensors(tmp_path / "memory")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].to(b[k].dtype), b[k]), k
    assert a["model.norm.weight"].dtype == torch.bfloat16 and b["model.norm.weight"].dtype == torch.float32
    assert json.loads((tmp_path / "stream" / "config.json").read_text()) == \
        json.loads((tmp_path / "memory" / "config.json").read_text())
    if fmt == "compressed-tensors":
        from transformers import AutoModelForCausalLM

        ids = torch.arange(3, 30).reshape(1, -1)
        with torch.no_grad():
            want = AutoModelForCausalLM.from_pretrained(tmp_path / "memory")(ids).logits
            got = AutoModelForCausalLM.from_pretrained(tmp_path / "stream")(ids).logits
        assert torch.equal(got, want)


def test_export_of_a_checkpoint_fails_leaving_nothing(tmp_path, tiny_tokenizer):
    src = write_model(tmp_path / "src", "llama", tiny_tokenizer)
    quantize_stream(src, api.make_config("rtn"), tmp_path / "ckpt")
    with pytest.raises(ExportError, match="nf4 or fp4"):
        api.export_to(str(tmp_path / "ckpt"), tmp_path / "bnb", "bitsandbytes")
    assert not list(tmp_path.glob("bnb*"))
