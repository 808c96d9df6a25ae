"""writers/checkpoint.py + loaders/checkpoint.py: save -> load gives bit-identical outputs; saving is atomic."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.errors import ExportError, InputError
from lowbit.loaders import load_model
from lowbit.loaders.checkpoint import load_checkpoint
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec
from lowbit.writers import save_checkpoint


def ids(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 100, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 64), QuantSpec(4, False, 32), QuantSpec(3, True, -1),
                                  QuantSpec(8, False, 0, "float32")], ids=str)
def test_tiny_llama_round_trip_bit_identical(tiny_llama, tmp_path, spec: QuantSpec) -> None:
    q, rep = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", spec))
    path = lowbit.save(q, tmp_path / "ck")
    assert path == tmp_path / "ck"
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    r = load_model(path)
    assert r.kind == "causal-lm" and r.path == str(path) and r.quant["layers"] == q.quant["layers"]
    assert [n for n, m in r.model.named_modules() if isinstance(m, QuantizedLinear)] == rep.layers
    # tied embeddings survive: one tensor on disk, shared again after loading
    assert r.model.lm_head.weight is r.model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(q.model(input_ids=ids()).logits, r.model(input_ids=ids()).logits)
        with kernel_mode(q.model, "kernel"), kernel_mode(r.model, "kernel"):
            assert torch.equal(q.model(input_ids=ids()[:1, :4]).logits, r.model(input_ids=ids()[:1, :4]).logits)
    # the tokenizer comes back and tokenizes the same way
    text = "Hello, lowbit!\n"
    assert r.tokenizer(text)["input_ids"] == tiny_llama.tokenizer(text)["input_ids"]
    assert r.tokenizer.eos_token == "<eos>" and r.tokenizer.pad_token == "<pad>"


def test_tied_weights_stored_once(tiny_llama, tmp_path) -> None:
    from safetensors import safe_open

    q, _ = lowbit.quantize(tiny_llama)
    path = lowbit.save(q, tmp_path / "ck")
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        record = json.loads(f.metadata()["lowbit"])
        qweight = f.get_tensor("model.layers.0.self_attn.q_proj.qweight")
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert record["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert record["quant_method"] == "lowbit" and record["kind"] == "causal-lm"
    assert "model.layers.0.self_attn.q_proj.weight" not in keys
    assert qweight.dtype == torch.uint8 and qweight.numel() == 64 * 64 // 2
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "lowbit"
    assert cfg["model_type"] == "llama"


def test_quantized_lm_head_with_tied_config_round_trip(tiny_llama, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_llama, ignore=[])
    r = load_model(lowbit.save(q, tmp_path / "ck"))
    assert isinstance(r.model.lm_head, QuantizedLinear)
    with torch.no_grad():
        assert torch.equal(q.model(input_ids=ids()).logits, r.model(input_ids=ids()).logits)


def test_tiny_bert_round_trip_bit_identical(tiny_bert, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_bert, lowbit.make_config("rtn", QuantSpec(4, False, 32)))
    r = load_checkpoint(lowbit.save(q, tmp_path / "bert"))
    assert r.kind == "encoder" and type(r.model).__name__ == "BertModel"
    enc = tiny_bert.tokenizer(["a short text", "and a somewhat longer one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = q.model(**enc)
        b = r.model(**enc)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


def test_save_to_existing_dir_without_overwrite(tiny_llama, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_llama)
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        lowbit.save(q, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_the_directory(tiny_llama, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_llama)
    out = tmp_path / "ck"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    lowbit.save(q, out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "model.safetensors" in names
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp or .old dirs left


def test_failed_save_leaves_nothing(tiny_llama, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    q, _ = lowbit.quantize(tiny_llama)
    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(OSError, match="disk full"):
        lowbit.save(q, parent / "ck")
    assert list(parent.iterdir()) == []


def test_failed_tokenizer_save_leaves_nothing(tiny_llama, tmp_path, monkeypatch) -> None:
    q, _ = lowbit.quantize(tiny_llama)

    def boom(*a, **kw):
        raise RuntimeError("tokenizer cannot be written")

    monkeypatch.setattr(type(q.tokenizer), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        lowbit.save(q, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_model_without_hf_config_cannot_be_saved(tmp_path) -> None:
    from torch import nn

    q, _ = lowbit.quantize(nn.Sequential(nn.Linear(64, 8)))
    with pytest.raises(ExportError, match="Hugging Face config"):
        save_checkpoint(q, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_load_checkpoint_errors(tiny_llama, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_llama)
    path = lowbit.save(q, tmp_path / "ck")
    st = path / "model.safetensors"
    st.write_bytes(st.read_bytes()[:200])  # corrupt
    with pytest.raises(InputError, match="cannot be read"):
        load_model(path)
    st.unlink()
    with pytest.raises(InputError, match="without model.safetensors"):
        load_checkpoint(path)


def test_inspect_checkpoint_reports_bits_per_weight(tiny_llama, tmp_path) -> None:
    from lowbit.report.inspect import inspect_path

    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, False, 64)))
    info = inspect_path(lowbit.save(q, tmp_path / "ck"))
    assert info.format == "lowbit"
    rows = {t.name: t for t in info.tensors}
    qrow = rows["model.layers.0.mlp.down_proj.weight"]
    assert qrow.dtype == "int4-asym-group64" and qrow.shape == (64, 128) and qrow.bpw == pytest.approx(4.375)
    assert rows["model.embed_tokens.weight"].dtype.upper() == "F32"
    assert rows["model.embed_tokens.weight"].bpw == pytest.approx(32.0)
    assert not any(n.endswith((".qweight", ".scale", ".zero")) for n in rows)
    total_bytes = (lowbit_bytes := sum(t.nbytes for t in info.tensors))
    assert info.bpw == pytest.approx(8 * lowbit_bytes / sum(t.numel for t in info.tensors))
    assert total_bytes < 4 * sum(t.numel for t in info.tensors)


def test_overwrite_of_a_file_leaves_no_stray_backup(tiny_llama, tmp_path) -> None:
    q, _ = lowbit.quantize(tiny_llama)
    target = tmp_path / "ck"
    target.write_text("a file, not a directory")
    lowbit.save(q, target, overwrite=True)
    assert (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def _rewrite_record(path, change) -> dict:
    """Apply ``change`` to the quantization record of the checkpoint at ``path``, in both places it lives:
    config.json's quantization_config and model.safetensors' "lowbit" metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg_path, st = path / "config.json", path / "model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    change(cfg["quantization_config"])
    cfg_path.write_text(json.dumps(cfg))
    with safe_open(str(st), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    record = json.loads(meta["lowbit"])
    change(record)
    save_file(tensors, str(st), metadata=dict(meta, lowbit=json.dumps(record)))
    return record


@pytest.fixture
def saved(tiny_llama, tmp_path):
    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 64)))
    return lowbit.save(q, tmp_path / "ck")


def test_untouched_record_still_loads(saved) -> None:
    """The rewrite itself keeps a checkpoint loadable: the refusals below are the version's doing."""
    from lowbit.loaders.checkpoint import FORMAT_VERSION

    record = _rewrite_record(saved, lambda r: None)
    assert record["format_version"] == FORMAT_VERSION and record["method"]["version"] == 1
    assert load_model(saved).quant["layers"] == record["layers"]


@pytest.mark.parametrize("found", [2, 99, "2", None], ids=["2", "99", "str", "null"])
def test_checkpoint_from_a_newer_lowbit_is_refused(saved, found) -> None:
    from lowbit.loaders.checkpoint import FORMAT_VERSION

    assert FORMAT_VERSION == 1  # bump the values above with it
    _rewrite_record(saved, lambda r: r.update(format_version=found))
    with pytest.raises(InputError, match="newer") as e:
        load_model(saved)
    msg = str(e.value)
    assert f"format_version {found!r}" in msg and f"format_version {FORMAT_VERSION}" in msg and "upgrade lowbit" in msg
    assert str(saved) in msg


def test_method_config_from_a_newer_lowbit_is_refused(saved) -> None:
    record = _rewrite_record(saved, lambda r: r["method"].update(version=r["method"]["version"] + 1))
    assert record["method"]["method"] == "rtn"
    with pytest.raises(InputError, match="newer") as e:
        load_model(saved)
    assert "rtn config version 2" in str(e.value) and "upgrade lowbit" in str(e.value)


def test_unregistered_method_name_is_not_checked(saved) -> None:
    """A record naming a method this lowbit does not register (nothing to check it against) still loads:
    the layers carry everything needed to rebuild them."""
    _rewrite_record(saved, lambda r: r["method"].update(method="from-a-plugin", version=7))
    assert load_model(saved).quant["method"]["method"] == "from-a-plugin"


def test_converted_qat_record_passes_the_version_check(saved) -> None:
    """A converted QAT model records its grid as "spec" and the spec string as "qat_spec": not a QATConfig
    to rebuild, so only the version is checked."""
    def as_qat(r: dict) -> None:
        r["method"] = {"method": "qat", "version": 1, "qat_spec": "int4-sym-g64", "steps": 10,
                       "spec": r["method"]["spec"]}

    _rewrite_record(saved, as_qat)
    assert load_model(saved).quant["method"]["qat_spec"] == "int4-sym-g64"
    _rewrite_record(saved, lambda r: r["method"].update(version=2))
    with pytest.raises(InputError, match="qat config version 2 was written by a newer lowbit"):
        load_model(saved)
