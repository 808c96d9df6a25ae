"""Mixed precision to a size budget (lowbit/budget): the budget parser, the exact solver against brute
force, the Fisher proxy against measured single-tensor KL on a tiny Llama, the allocation's file (size
predicted to the byte, types as allocated, reproduced from its tensor-type file) and the errors."""

from __future__ import annotations

import copy
import itertools

import gguf
import numpy as np
import pytest
import torch
from tests.conftest import TINY_VOCAB, make_tiny_llama
from typer.testing import CliRunner

from lowbit.budget.allocate import allocate, check_bounds, export_allocation, sensitivity, size_only
from lowbit.budget.fisher import collect_fisher
from lowbit.budget.solve import Budget, frontier, parse_budget, solve
from lowbit.budget.validate import Perturber, proxy_check
from lowbit.cli import app
from lowbit.errors import InputError
from lowbit.metrics.lm import ReferenceLM
from lowbit.writers.gguf import export_gguf

TYPES = ("F16", "Q8_0", "Q6_K", "Q5_0", "Q4_K", "Q4_0", "IQ4_NL", "Q3_K", "Q2_K")  # fast types; no lattice search


@pytest.fixture(scope="module")
def tiny():
    """A 4-layer, 256-wide Llama (every k-quant applies) with weights scaled up, so its predictions are
    not uniform and quantization moves them; 4 x 64 random token windows."""
    h = make_tiny_llama(hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=TINY_VOCAB)
    with torch.no_grad():
        for p in h.model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    ids = torch.randint(0, TINY_VOCAB, (4, 64), generator=torch.Generator().manual_seed(0))
    return h, ids, sensitivity(h, ids, None, TYPES)


@pytest.mark.parametrize(("text", "want"), [("4.5", Budget(bpw=4.5)), ("90MB", Budget(nbytes=90_000_000)),
                                            ("1.5GiB", Budget(nbytes=int(1.5 * 2**30))), (" 3 ", Budget(bpw=3.0)),
                                            ("100kb", Budget(nbytes=100_000))])
def test_parse_budget(text: str, want: Budget) -> None:
    assert parse_budget(text) == want


@pytest.mark.parametrize("text", ["abc", "0", "100", "4.5 bits", "-3", "5 furlongs"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(InputError, match="--budget"):
        parse_budget(text)


def test_frontier_drops_dominated_options() -> None:
    costs, dkls = np.array([10, 8, 8, 5, 12]), np.array([1.0, 2.0, 3.0, 4.0, 1.0])
    assert sorted(frontier(costs, dkls)) == [0, 1, 3]


@pytest.mark.parametrize("seed", range(5))
def test_solver_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    costs = [sorted(1000 * rng.integers(1, 50, size=4)) for _ in range(5)]  # no total within solve's 64 of slack
    dkls = [list(rng.random(4)) for _ in range(5)]
    budget = float(sum(min(c) for c in costs) + 1000 * rng.integers(0, 60) + 500)
    best = min(sum(d[k] for d, k in zip(dkls, ks)) for ks in itertools.product(range(4), repeat=5)
               if sum(c[k] for c, k in zip(costs, ks)) <= budget)
    picks = solve(costs, dkls, budget)
    assert sum(c[k] for c, k in zip(costs, picks)) <= budget
    assert sum(d[k] for d, k in zip(dkls, picks)) == pytest.approx(best, rel=1e-9)


def test_fisher_covers_every_weight_and_the_tied_head(tiny) -> None:
    h, ids, _ = tiny
    f = collect_fisher(h.model, ids)
    assert f.tokens == 4 * 63
    emb = f.tensors["model.embed_tokens.weight"]
    assert emb.g is not None and emb.cov is not None and emb.emb is not None  # tied: head and lookups
    assert emb.emb[ids.unique()].sum() > 0 and emb.emb.sum(1)[np.setdiff1d(np.arange(TINY_VOCAB), ids.unique())].max() == 0
    layer0 = {n for n in f.tensors if n.startswith("model.layers.0.")}
    assert layer0 == {f"model.layers.0.{k}.weight" for k in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert "lm_head.weight" not in f.tensors  # tied: its statistics are the embedding's
    shared = sorted(sorted(g) for g in f.shared if g[0].startswith("model.layers.0."))  # what runtimes fuse
    assert shared == [["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"],
                      ["model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                       "model.layers.0.self_attn.v_proj.weight"]]
    assert all(p.requires_grad for p in h.model.parameters())  # restored


def test_proxy_ranks_and_sizes_measured_kl(tiny) -> None:
    """Predicted dKL of one tensor in one type against the KL measured with that tensor quantized."""
    h, ids, sens = tiny
    pc = proxy_check(Perturber(copy.deepcopy(h), ReferenceLM(h.model, ids), ids), sens, n=16)
    assert len(pc.pairs) == 16 and abs(pc.base_kl) < 1e-6
    assert pc.spearman >= 0.95
    ratios = [p / m for _, _, p, m in pc.pairs if m > 1e-6]
    assert 0.5 < np.median(ratios) < 2.0


def test_allocation_file(tiny, tmp_path) -> None:
    h, _ids, sens = tiny
    alloc = allocate(sens, Budget(bpw=4.0))
    assert alloc.bpw <= 4.0 and alloc.bpw > 3.9
    out, tt = tmp_path / "b.gguf", tmp_path / "tt.txt"
    export_allocation(h, str(out), alloc, tensor_type_file=str(tt))
    assert out.stat().st_size == alloc.file_bytes  # the header and padding predicted to the byte
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert all(types[n] == t for n, t, _, _ in alloc.table())
    assert len(set(types.values())) >= 3  # a mix, not one type
    lines = tt.read_text().split()
    assert len(lines) == len(alloc.table()) and lines[0].startswith("^") and "$=" in lines[0]
    # the overrides alone, read back as --tensor-type patterns, rebuild the same file byte for byte
    export_gguf(h, tmp_path / "again.gguf", alloc.file_type(), tensor_types=lines)
    assert (tmp_path / "again.gguf").read_bytes() == out.read_bytes()


def test_bigger_budget_predicts_less_kl_and_measures_less(tiny) -> None:
    h, ids, sens = tiny
    allocs = [allocate(sens, Budget(bpw=b)) for b in (3.0, 4.0, 5.5)]
    pred = [a.predicted_dkl for a in allocs]
    assert pred[0] > pred[1] > pred[2]
    p = Perturber(copy.deepcopy(h), ReferenceLM(h.model, ids), ids)
    meas = [p.measure({n: t for n, t, _, _ in a.table()}) for a in allocs]
    assert meas[0] > meas[1] > meas[2]
    assert 0.5 < pred[1] / meas[1] < 2.0  # additivity holds roughly on this model


def test_a_byte_budget_is_met(tiny) -> None:
    _, _, sens = tiny
    size = allocate(sens, Budget(bpw=4.5)).file_bytes
    alloc = allocate(sens, Budget(nbytes=size - 1000))
    assert alloc.file_bytes <= size - 1000


def test_budgets_out_of_range_are_refused(tiny) -> None:
    h, _, sens = tiny
    with pytest.raises(InputError, match="below the smallest file"):
        allocate(sens, Budget(bpw=1.0))
    with pytest.raises(InputError, match="above the float16 file"):
        allocate(sens, Budget(bpw=20.0))
    with pytest.raises(InputError, match="an --imatrix unlocks"):  # checked from the shapes alone
        check_bounds(size_only(h, False, TYPES), Budget(bpw=1.0))


def test_types_needing_an_imatrix_only_with_one() -> None:
    h = make_tiny_llama(hidden_size=256, intermediate_size=256, num_hidden_layers=1, vocab_size=TINY_VOCAB)
    ids = torch.randint(0, TINY_VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    types = ("Q4_0", "Q2_K", "IQ2_XXS")
    bare = sensitivity(h, ids, None, types)
    assert not any(o.type == "IQ2_XXS" for r in bare.rows for o in r.options)
    im = {r.name: np.ones(r.shape[-1], np.float32) for r in bare.rows if r.name.startswith("blk.")}
    withim = sensitivity(h, ids, im, types)
    blk = next(r for r in withim.rows if r.name == "blk.0.ffn_down.weight")
    assert {o.type for o in blk.options} == set(types)
    emb = next(r for r in withim.rows if r.name == "token_embd.weight")  # no imatrix data for it: not offered
    assert "IQ2_XXS" not in {o.type for o in emb.options}


def test_cli_budget_errors_exit_2_and_write_nothing(tmp_path, monkeypatch) -> None:
    runner = CliRunner()
    out = tmp_path / "x.gguf"
    r = runner.invoke(app, ["export", "tiny-missing", "--format", "gguf", "--budget", "abc", "--out", str(out)])
    assert r.exit_code == 2 and "--budget 'abc'" in r.output
    r = runner.invoke(app, ["export", "tiny-missing", "--format", "compressed-tensors", "--budget", "4", "--out", str(out)])
    assert r.exit_code == 2 and "apply to --format gguf" in r.output
    r = runner.invoke(app, ["export", "tiny-missing", "--format", "gguf", "--tensor-type-file", "t.txt", "--out", str(out)])
    assert r.exit_code == 2 and "give --budget" in r.output
    assert not out.exists()


def test_grid_budget_mixes_specs_shares_fused_layers_and_reloads_in_transformers(tiny, tmp_path) -> None:
    """`lowbit quantize --budget`: one integer grid per Linear (q/k/v and gate/up sharing one), within
    the budget; the compressed-tensors export reloads in transformers with lowbit's logits, bit for bit."""
    from transformers import AutoModelForCausalLM

    from lowbit.api import save
    from lowbit.budget.grids import allocate_grids, quantize_grids
    from lowbit.modules.kernel_mode import kernel_mode
    from lowbit.writers.compressed_tensors import export_compressed_tensors

    h, ids, _ = tiny
    fisher = collect_fisher(h.model, ids)
    lo, hi = allocate_grids(h, fisher, Budget(bpw=3.5)), allocate_grids(h, fisher, Budget(bpw=5.0))
    assert lo.bpw <= 3.5 and hi.bpw <= 5.0 and lo.predicted_dkl > hi.predicted_dkl
    specs = lo.specs()
    assert len(set(specs.values())) >= 2  # a mix
    for i in range(4):
        p = f"model.layers.{i}."
        assert specs[p + "self_attn.q_proj"] == specs[p + "self_attn.k_proj"] == specs[p + "self_attn.v_proj"]
        assert specs[p + "mlp.gate_proj"] == specs[p + "mlp.up_proj"]
    q = quantize_grids(h, lo)
    assert q.quant["budget"]["grids"] == specs
    qbits = sum(m.quantized_tensor().nbytes for m in q.model.modules() if hasattr(m, "quantized_tensor")) * 8
    kept = sum(m.weight.numel() * 32 for n, m in q.model.named_modules() if specs.get(n) == "keep")
    numel = sum(m.weight.numel() for n, m in h.model.named_modules() if n in specs)
    assert (qbits + kept) / numel == pytest.approx(lo.bpw)  # the allocation's bytes are the layers' bytes
    save(q, tmp_path / "ckpt")
    ct = export_compressed_tensors(q, tmp_path / "ct")
    m = AutoModelForCausalLM.from_pretrained(ct).eval()  # one scheme per grid, each module its own
    x = ids[:, :24]
    with torch.no_grad(), kernel_mode(q.model, "dequant"):
        assert torch.equal(q.model(input_ids=x).logits, m(input_ids=x).logits)
    p = Perturber(copy.deepcopy(h), ReferenceLM(h.model, ids), ids)
    from lowbit.metrics.lm import score_lm

    measured = float(score_lm(q.model, ids, p.ref).kl.mean())
    assert 0.3 < lo.predicted_dkl / measured < 3.0


def test_nf4_joins_the_grids_when_asked_and_stays_out_of_compressed_tensors(tiny, tmp_path) -> None:
    """NF4 (double quant, block 64) as a budget grid: its bytes are bnb4's, its predicted cost sits between
    3 and 8 bits, the checkpoint reloads with the same logits, and compressed-tensors refuses it."""
    from lowbit.api import load_model, save
    from lowbit.budget.grids import NF4, allocate_grids, check_grids, layer_options, nf4_bytes, quantize_grids
    from lowbit.errors import ExportError
    from lowbit.formats.bnb4 import quantize_4bit
    from lowbit.modules.bnb4_linear import Linear4bit
    from lowbit.writers.compressed_tensors import export_compressed_tensors

    h, ids, _ = tiny
    assert nf4_bytes((512, 256)) == quantize_4bit(torch.randn(512, 256), "nf4", 64, double_quant=True).nbytes
    assert NF4 not in check_grids(None)  # integer grids only unless asked
    with pytest.raises(InputError, match="--grids w4g64,nf5"):
        check_grids(["w4g64", "nf5"])
    fisher = collect_fisher(h.model, ids)
    down = h.model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    cost = {o.type: o.dkl for o in layer_options(down, fisher.tensors["model.layers.1.mlp.down_proj.weight"],
                                                 fisher.tokens, 4, grids=["w3g64", "nf4", "w8g64"])}
    assert cost["w3g64"] > cost["nf4"] > cost["w8g64"] > 0
    grids = ["w8g64", "w4g64", "w3g64", NF4]
    alloc = allocate_grids(h, fisher, Budget(bpw=4.2), grids)
    chosen = set(alloc.specs().values())
    assert NF4 in chosen and chosen <= {*grids, "keep"} and alloc.bpw <= 4.2
    q = quantize_grids(h, alloc)
    nf4 = [n for n, g in alloc.specs().items() if g == NF4]
    assert all(isinstance(q.model.get_submodule(n), Linear4bit) for n in nf4)
    save(q, tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"))
    with torch.no_grad():
        assert torch.equal(q.model(input_ids=ids).logits, again.model(input_ids=ids).logits)
    with pytest.raises(ExportError, match=f"'{nf4[0]}' is stored as bnb4"):
        export_compressed_tensors(q, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_cli_quantize_budget_then_export(tiny_llama_dir, text_file, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "q"
    args = ["quantize", str(tiny_llama_dir), "--budget", "5", "--out", str(out), "--calib", str(text_file),
            "--n-samples", "2", "--seq-len", "32"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "budget 5 bpw" in r.output and "predicted KL" in r.output and "layers by grid" in r.output
    bpw = float(r.output.split(":")[1].split("bits/weight")[0])
    assert 4.5 < bpw <= 5.0
    r = runner.invoke(app, ["export", str(out), "--format", "compressed-tensors", "--out", str(tmp_path / "ct")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args[:4], "--bits", "4", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "drop --bits" in r.output
    r = runner.invoke(app, [*args[:2], "--grids", "nf4", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "--grids narrows what --budget chooses from" in r.output and not (tmp_path / "g").exists()
    r = runner.invoke(app, [*args[:4], "--grids", "w4g64,nf5", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "expected names among" in r.output and not (tmp_path / "g").exists()
    r = runner.invoke(app, [*args[:2], "--budget", "10GB", "--out", str(tmp_path / "y"), "--calib", str(text_file),
                            "--n-samples", "2", "--seq-len", "32"])
    assert r.exit_code == 2 and "above the model as stored" in r.output and not (tmp_path / "y").exists()


def test_a_model_read_from_a_quantized_gguf_is_flagged(bpe_llama, tmp_path) -> None:
    """Its weights lie on the file's grid: a budget would prefer types that reproduce it (see bench/budget.py)."""
    from lowbit.budget.allocate import grid_warning
    from lowbit.loaders import load_model

    h = bpe_llama
    export_gguf(h, tmp_path / "q8.gguf", "Q8_0")
    export_gguf(h, tmp_path / "f32.gguf", "F32")
    assert "stored in Q8_0" in grid_warning(load_model(str(tmp_path / "q8.gguf")))
    assert grid_warning(load_model(str(tmp_path / "f32.gguf"))) is None
    assert grid_warning(h) is None


@pytest.mark.parametrize("t", ["Q4_0", "Q5_1", "Q4_K", "Q2_K", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ2_XXS", "IQ1_M"])
def test_per_row_importance_equals_one_call_per_tensor(t) -> None:
    """The sensitivity pass quantizes the rows of several tensors in one call, each row with its own
    tensor's importance vector: the bytes equal those of one call per tensor."""
    from lowbit.formats.ggml import GGML_TYPES

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 512), dtype=np.float32), rng.standard_normal((2, 512), dtype=np.float32)
    ia, ib = rng.random(512, dtype=np.float32) + 0.1, rng.random(512, dtype=np.float32) ** 4
    gt = GGML_TYPES.get(t)
    per_row = np.concatenate([np.broadcast_to(ia, a.shape), np.broadcast_to(ib, b.shape)])
    got = gt.quantize(np.concatenate([a, b]), per_row)
    assert np.array_equal(got, np.concatenate([gt.quantize(a, ia), gt.quantize(b, ib)]))
    assert not np.array_equal(got[3:], gt.quantize(b, ia))  # the importance does change the bytes


def test_fisher_labels_follow_the_model() -> None:
    """The Fisher's labels are drawn from the model's own distribution (inverse running sum)."""
    from lowbit.budget.fisher import _sample

    p = torch.tensor([0.087, 0.0, 0.237, 0.644, 0.032])
    logp = p.log().expand(100_000, -1)
    y = _sample(logp, torch.Generator().manual_seed(0))
    freq = torch.bincount(y, minlength=5).double() / len(y)
    assert freq[1] == 0 and torch.allclose(freq, p.double() / p.sum(), atol=0.005)
