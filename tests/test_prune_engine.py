"""The pruning engine end to end on tiny BERT and ViT models.

masked == compacted for every structure kind (and all combined), compacted -> save_pretrained ->
stock reload in a fresh process without pakd_hf, masks surviving real AdamW steps, parameter and
MAC reductions.
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch

from pakd_hf.arch import HeadDimError
from pakd_hf.measure import count_macs, count_params, format_summary, param_counts, safetensors_bytes
from pakd_hf.prune import (
    CheckpointMismatchError,
    ImportanceAccumulator,
    MaskState,
    Structure,
    compact,
    get_adapter,
    load_structure,
    nm_masks,
    save_pruned,
    select_structure,
    unstructured_masks,
    verify_against_config,
    weight_scores,
)
import toy
from toy import stock_result

TOL = 1e-5
KINDS = {
    "heads": dict(heads=2),
    "ffn": dict(ffn=32),
    "layers": dict(layers=2),
    "hidden": dict(hidden=16),
    "all": dict(heads=2, ffn=32, layers=2, hidden=16),
}
# stock BERT derives head_dim = hidden // heads: heads and hidden only export together (2 * 8 = 16)
BERT_EXPORTABLE = {"ffn", "layers", "all", "heads+hidden"}
KINDS["heads+hidden"] = dict(heads=2, hidden=16)


def _perturb_norms(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name.lower():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def tiny_bert(seed=0, cls=None):
    model = toy.tiny_bert(seed=seed, vocab_size=100, max_positions=16, num_labels=3, initializer_range=0.2, cls=cls)
    return _perturb_norms(model.eval())


def tiny_vit(seed=0):
    return _perturb_norms(toy.tiny_vit(seed=seed, initializer_range=0.2).eval())


def bert_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def vit_inputs():
    return {"pixel_values": torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))}


ARCHS = {"bert": (tiny_bert, bert_inputs), "vit": (tiny_vit, vit_inputs)}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="session")
def models():
    return {name: (make(), inputs()) for name, (make, inputs) in ARCHS.items()}


def _masked_and_compacted(model, inputs, kind, criterion="magnitude"):
    """Select by magnitude, mask, compare; then compact the masked copy. Returns both logits."""
    m = copy.deepcopy(model)
    adapter = get_adapter(m)
    scores = ImportanceAccumulator(m, criterion=criterion).scores()
    s = select_structure(scores, Structure.from_model(m), **KINDS[kind], adapter=adapter, check_export=False)
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    masked = logits(m, inputs)
    result = compact(m, state, check_export=False)
    return m, result, masked, logits(m, inputs)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_equals_compacted(models, arch, kind):
    model, inputs = models[arch]
    m, result, masked, compacted = _masked_and_compacted(model, inputs, kind)
    diff = (masked - compacted).abs().max().item()
    moved = (logits(model, inputs) - masked).abs().max().item()
    assert moved > 1e-3, "the pruning did not change the output: the comparison would be vacuous"
    assert diff <= TOL, f"{arch}/{kind}: masked vs compacted differ by {diff}"
    assert "_pakd_mask_state" not in m.__dict__ and all("forward" not in l.__dict__ for l in get_adapter(m).layer_list())
    assert not any(mod._forward_hooks for mod in m.modules()), "mask hooks left after compaction"
    counts = result.structure.counts()
    want = KINDS[kind]
    assert counts["layers"] == want.get("layers", 4)
    assert set(counts["heads"]) == {want.get("heads", 4)}
    assert set(counts["ffn"]) == {want.get("ffn", 64)}
    assert counts["hidden"] == want.get("hidden", 32)
    assert result.params_after < result.params_before == count_params(model)
    assert Structure.from_model(m) == result.structure


def test_bert_heads_or_hidden_alone_raise_head_dim_error(models):
    model, _ = models["bert"]
    scores = ImportanceAccumulator(model, criterion="magnitude").scores()
    base, adapter = Structure.from_model(model), get_adapter(model)
    for kw in (dict(heads=2), dict(hidden=16), dict(heads=2, hidden=24)):
        with pytest.raises(HeadDimError, match="head_dim not dividing"):
            select_structure(scores, base, **kw, adapter=adapter)
    ok = select_structure(scores, base, heads=3, hidden=24, adapter=adapter)
    assert ok.counts()["hidden"] == 24
    s = select_structure(scores, base, heads=2, adapter=adapter, check_export=False)
    with pytest.raises(HeadDimError):
        compact(copy.deepcopy(model), s)  # check_export defaults to True


def test_vit_writes_head_dim_only_when_needed(models):
    model, inputs = models["vit"]
    m, _, _, _ = _masked_and_compacted(model, inputs, "heads")
    assert m.config.num_attention_heads == 2 and m.config.head_dim == 8 and m.config.hidden_size == 32
    m, _, _, _ = _masked_and_compacted(model, inputs, "all")
    assert m.config.hidden_size == 16 and m.config.num_attention_heads == 2 and not hasattr(m.config, "head_dim")


def test_multi_stage_compaction_composes(models):
    model, inputs = models["bert"]
    m = copy.deepcopy(model)
    scores = ImportanceAccumulator(m, criterion="magnitude").scores()
    s1 = select_structure(scores, Structure.from_model(m), ffn=48, layers=3)
    compact(m, s1)
    # stage 2: scores of the compacted model, selection within the record
    base = Structure.from_model(m)
    assert base == s1
    scores2 = ImportanceAccumulator(m, criterion="magnitude").scores()
    assert scores2["ffn"].shape == (3, 48)
    s2 = select_structure(scores2, base, ffn=16, layers=2, heads=2, hidden=16, adapter=get_adapter(m))
    state = MaskState(m)
    state.set_structure(s2)
    state.apply()
    masked = logits(m, inputs)
    res = compact(m, state)
    assert (masked - logits(m, inputs)).abs().max().item() <= TOL
    assert res.structure.is_subset_of(s1) and set(res.structure.layers) <= set(s1.layers)
    assert res.structure.num_layers == 4 and res.structure.intermediate_size == 64  # original coordinates
    assert all(set(res.structure.ffn[l]) <= set(s1.ffn[l]) for l in res.structure.layers)


# ------------------------------------------------------------------ export
_RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
    jobs = json.loads(sys.argv[1])
    out = {}
    for job in jobs:
        auto = AutoModelForSequenceClassification if job["arch"] == "bert" else AutoModelForImageClassification
        model = auto.from_pretrained(job["dir"]).eval()
        saved = torch.load(job["io"], weights_only=True)
        with torch.no_grad():
            y = model(**saved["inputs"]).logits
        out[job["dir"]] = float((y - saved["logits"]).abs().max())
    assert not any(m.startswith("pakd_hf") for m in sys.modules)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="session")
def exported(models, tmp_path_factory):
    """Compact + save every exportable kind of both archs, then ONE fresh stock process reloads all."""
    root = tmp_path_factory.mktemp("pruned")
    jobs, folders = [], {}
    for arch, (model, inputs) in models.items():
        for kind in KINDS:
            if arch == "bert" and kind not in BERT_EXPORTABLE:
                continue
            m = copy.deepcopy(model)
            scores = ImportanceAccumulator(m, criterion="magnitude").scores()
            s = select_structure(scores, Structure.from_model(m), **KINDS[kind], adapter=get_adapter(m))
            compact(m, s)
            d = root / f"{arch}-{kind}"
            save_pruned(m, d, extra={"note": "test"})
            io = d.parent / f"{arch}-{kind}.pt"
            torch.save({"inputs": inputs, "logits": logits(m, inputs)}, io)
            jobs.append({"arch": arch, "dir": str(d), "io": str(io)})
            folders[(arch, kind)] = (d, m)
    return folders, stock_result(_RELOAD, jobs, cwd=root, timeout=300)


@pytest.mark.parametrize("arch,kind", [("bert", k) for k in sorted(BERT_EXPORTABLE)] + [("vit", k) for k in KINDS])
def test_stock_reload_in_fresh_process(exported, arch, kind):
    folders, diffs = exported
    d, m = folders[(arch, kind)]
    assert diffs[str(d)] <= TOL, f"{arch}/{kind}: stock reload differs by {diffs[str(d)]}"
    verify_against_config(d)
    assert load_structure(d) == Structure.from_model(m)
    rec = json.loads((d / "pakd.json").read_text())
    assert rec["format"] == 1 and rec["architecture"] == type(m).__name__ and rec["note"] == "test"


def test_verify_against_config_catches_contradictions(exported, tmp_path):
    import shutil

    folders, _ = exported
    src, _ = folders[("vit", "all")]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="intermediate"):
        verify_against_config(bad)
    cfg["intermediate_size"] = 32
    cfg["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="layers"):
        verify_against_config(bad)
    # config consistent with the tensors, pakd.json not
    shutil.copy(src / "config.json", bad / "config.json")
    verify_against_config(bad)
    rec = json.loads((bad / "pakd.json").read_text())
    rec["structure"]["hidden"] = list(range(20))
    (bad / "pakd.json").write_text(json.dumps(rec))
    with pytest.raises(CheckpointMismatchError, match="hidden_size"):
        verify_against_config(bad)


def test_measure_goes_down_after_uniform_prune(exported, models, capsys):
    folders, _ = exported
    for arch in ("bert", "vit"):
        model, inputs = models[arch]
        d, m = folders[(arch, "all")]
        before, after = param_counts(model), param_counts(m)
        macs_before, macs_after = count_macs(model, inputs), count_macs(m, inputs)
        dense = model.__class__(model.config)
        tmp = d.parent / f"{arch}-dense"
        dense.save_pretrained(tmp)
        bytes_before, bytes_after = safetensors_bytes(tmp), safetensors_bytes(d)
        with capsys.disabled():
            print(f"\n[{arch}] heads 4->2, ffn 64->32, layers 4->2, hidden 32->16 (batch {len(next(iter(inputs.values())))})"
                  f"\n  params {before['total']} -> {after['total']} (non-embedding {before['non_embedding']} -> "
                  f"{after['non_embedding']}), MACs {macs_before} -> {macs_after}, safetensors bytes "
                  f"{bytes_before} -> {bytes_after}\n" + format_summary(m))
        assert after["total"] < before["total"] / 3
        assert after["non_embedding"] < before["non_embedding"] / 6
        assert macs_after < macs_before / 4
        assert bytes_after < bytes_before
        assert model.config._attn_implementation == m.config._attn_implementation == "sdpa"  # restored


# ---------------------------------------------------- masks under training
def _train_steps(model, inputs, state, steps=4, prestep=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1, 2])
    model.train()
    for i in range(steps):
        opt.zero_grad()
        out = model(**inputs, labels=labels)
        out.loss.backward()
        if state is not None and not (prestep and i == 0):
            state.mask_gradients()
        opt.step()
        if state is not None and not (prestep and i == 0):
            state.apply()
    model.eval()
    return opt


@pytest.mark.parametrize("arch", list(ARCHS))
def test_unstructured_and_2_4_masks_stay_zero_under_adamw(models, arch):
    model, inputs = models[arch]
    for kind in ("unstructured", "2:4"):
        m = copy.deepcopy(model)
        adapter = get_adapter(m)
        before = {k: lin.weight.detach().clone() for k, lin in adapter.prunable_linears().items()}
        # a first unmasked step gives AdamW momentum in every entry
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
        m.train()
        m(**inputs, labels=torch.tensor([0, 1, 2])).loss.backward()
        opt.step()
        scores = weight_scores(adapter)
        masks = unstructured_masks(scores, 0.6) if kind == "unstructured" else nm_masks(scores, 2, 4)
        state = MaskState(m)
        state.set_weight_masks(masks)
        state.apply()
        labels = torch.tensor([0, 1, 2])
        for _ in range(3):
            opt.zero_grad()
            m(**inputs, labels=labels).loss.backward()
            state.mask_gradients()
            opt.step()
            state.apply()
        lin = adapter.prunable_linears()
        for k, mask in masks.items():
            w = lin[k].weight.detach()
            assert torch.all(w[~mask] == 0), f"{kind}: masked entries of {k} moved"
            assert not torch.equal(w[mask], before[k][mask]), f"{kind}: {k} did not train"
            if kind == "2:4":
                groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
                assert int(groups.max()) <= 2
        frac = state.sparsity()["weights"]
        assert abs(frac - (0.6 if kind == "unstructured" else 0.5)) < 0.01


def test_structured_and_weight_masks_survive_training_and_compaction(models):
    """Masks applied during real AdamW steps, then compaction keeps the output and the weight masks."""
    model, inputs = models["bert"]
    m = copy.deepcopy(model)
    adapter = get_adapter(m)
    acc = ImportanceAccumulator(m, criterion="taylor")
    m.train()
    m(**inputs, labels=torch.tensor([0, 1, 2])).loss.backward()
    acc.update()
    m.zero_grad()
    s = select_structure(acc.scores(), Structure.from_model(m), heads=2, hidden=16, ffn=48, layers=3, adapter=adapter)
    state = MaskState(m)
    state.set_structure(s)
    state.set_weight_masks(nm_masks(weight_scores(adapter)))
    state.apply()
    _train_steps(m, inputs, state, steps=3)
    masked = logits(m, inputs)
    res = compact(m, state)
    assert (masked - logits(m, inputs)).abs().max().item() <= TOL
    assert res.mask_state is state and set(state.weight_masks) == set(adapter.prunable_linears())
    for k, lin in adapter.prunable_linears().items():
        assert state.weight_masks[k].shape == lin.weight.shape
        assert torch.all(lin.weight[~state.weight_masks[k]] == 0)
    # the rebased state keeps masking after compaction (with a REBUILT optimizer)
    _train_steps(m, inputs, state, steps=2)
    for k, lin in adapter.prunable_linears().items():
        assert torch.all(lin.weight[~state.weight_masks[k]] == 0)


def test_structured_masks_exact_after_adamw_vit(models):
    model, inputs = models["vit"]
    m = copy.deepcopy(model)
    scores = ImportanceAccumulator(m, criterion="magnitude").scores()
    s = select_structure(scores, Structure.from_model(m), **KINDS["all"], adapter=get_adapter(m))
    state = MaskState(m)
    _train_steps(m, inputs, None, steps=1)  # momentum everywhere first
    state.set_structure(s)
    state.apply()
    _train_steps(m, inputs, state, steps=3)
    masked = logits(m, inputs)
    compact(m, state)
    assert (masked - logits(m, inputs)).abs().max().item() <= TOL


def test_roberta_hidden_and_heads(tmp_path):
    model = _perturb_norms(toy.tiny_roberta(layers=2, max_positions=20, initializer_range=0.2).eval())
    inputs = bert_inputs()
    m, result, masked, compacted = _masked_and_compacted(model, inputs, "heads+hidden")
    assert (masked - compacted).abs().max().item() <= TOL
    assert m.classifier.dense.weight.shape == (16, 16) and m.classifier.out_proj.weight.shape == (2, 16)
    save_pruned(m, tmp_path / "r")
    verify_against_config(tmp_path / "r")
