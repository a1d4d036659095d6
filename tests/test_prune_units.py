"""Unit tests of the pruning engine's pieces: schedules, selection, importance, structure, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pakd_hf.arch import UnsupportedArchitectureError, get_adapter
from pakd_hf.prune import (
    ImportanceAccumulator,
    MaskState,
    Structure,
    compact,
    is_update_step,
    keep_count,
    keep_count_at,
    select_global,
    select_structure,
    sparsity_at,
)
from pakd_hf.measure import count_params
from toy import tiny_bert


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(vocab_size=100, max_positions=16, initializer_range=0.2, num_labels=3).eval()


def _batch():
    g = torch.Generator().manual_seed(5)
    return {"input_ids": torch.randint(1, 100, (2, 8), generator=g), "labels": torch.tensor([0, 2])}


# ---------------------------------------------------------------- schedules
def test_cubic_schedule_matches_zhu_gupta_by_hand():
    kw = dict(start=0, end=10, initial=0.0, final=0.8, kind="cubic")
    assert sparsity_at(0, **kw) == 0.0
    assert sparsity_at(5, **kw) == pytest.approx(0.8 - 0.8 * 0.5**3)  # 0.7
    assert sparsity_at(2, **kw) == pytest.approx(0.8 * (1 - 0.8**3))  # 0.3904
    assert sparsity_at(10, **kw) == sparsity_at(99, **kw) == 0.8
    assert sparsity_at(-3, **kw) == 0.0
    shifted = dict(start=100, end=200, initial=0.2, final=0.6, kind="cubic")
    assert sparsity_at(150, **shifted) == pytest.approx(0.6 + (0.2 - 0.6) * 0.125)
    values = [sparsity_at(t, **kw) for t in range(-2, 14)]
    assert values == sorted(values)


def test_linear_and_one_shot_schedules():
    assert sparsity_at(5, start=0, end=10, final=0.5, kind="linear") == pytest.approx(0.25)
    assert sparsity_at(9, start=10, end=20, initial=0.1, final=0.5, kind="one-shot") == 0.1
    assert sparsity_at(10, start=10, end=20, initial=0.1, final=0.5, kind="one-shot") == 0.5
    with pytest.raises(ValueError):
        sparsity_at(1, start=0, end=10, final=0.5, kind="exponential")
    with pytest.raises(ValueError):
        sparsity_at(1, start=0, end=10, final=1.5)


def test_keep_counts_only_go_down_and_never_below_one():
    counts = [keep_count_at(4, t, start=0, end=100, final=0.99, kind="cubic") for t in range(0, 120, 5)]
    assert counts[0] == 4 and counts[-1] == 1
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert keep_count(4, 0.5) == 2 and keep_count(4, 0.49) == 3 and keep_count(4, 1.0) == 1
    assert keep_count(64, 0.5) == 32 and keep_count(3072, 1 - 1 / 3) == 1024  # no float drift upward
    assert keep_count(32, 0.6, multiple_of=8) == 16  # ceil(12.8)=13 -> 16
    assert keep_count(10, 1.0, minimum=3) == 3


def test_is_update_step():
    steps = [t for t in range(0, 30) if is_update_step(t, 5, 22, 5)]
    assert steps == [5, 10, 15, 20, 22]


# ---------------------------------------------------------------- selection
def _base():
    return Structure.full(3, 4, 8, 6, 32)


def test_selection_keeps_top_k_per_layer_uniform():
    heads = torch.tensor([[1.0, 4.0, 3.0, 2.0], [9.0, 0.0, 8.0, 7.0], [0.1, 0.2, 0.3, 0.4]])
    s = select_structure({"heads": heads}, _base(), heads=2)
    assert s.heads == [[1, 2], [0, 2], [2, 3]] and s.is_uniform()
    # fraction of the original count, rounded up
    assert select_structure({"heads": heads}, _base(), heads=0.3).heads_per_layer() == [2, 2, 2]
    # non-uniform: 2 per layer x 3 layers = 6 heads overall, at least one per layer
    nu = select_structure({"heads": heads}, _base(), heads=2, uniform=False)
    assert nu.heads == [[1, 2], [0, 2, 3], [3]] and not nu.is_uniform()


def test_selection_layers_hidden_and_within():
    base = _base()
    layers = torch.tensor([3.0, 1.0, 2.0])
    hidden = torch.arange(32, dtype=torch.float).flip(0)
    s = select_structure({"layers": layers, "hidden": hidden}, base, layers=2, hidden=8)
    assert s.layers == [0, 2] and s.hidden == list(range(8)) and s.heads[1] == []
    # `within` restricts the choice to units still kept: repeated selection only removes
    s2 = select_structure({"layers": torch.tensor([0.0, 9.0, 5.0])}, base, within=s, layers=1)
    assert s2.layers == [2]
    with pytest.raises(ValueError, match="only 2 are left"):
        select_structure({"layers": layers}, base, within=s, layers=3)


def test_global_budget_prunes_low_density_units(bert):
    base = Structure.from_model(bert)
    scores = ImportanceAccumulator(bert, criterion="magnitude", kinds=("heads", "ffn")).scores()
    total = count_params(bert)
    s = select_global(scores, base, total=total, keep=0.8)
    m = copy.deepcopy(bert)
    compact(m, s, check_export=False)  # non-uniform in memory
    assert count_params(m) <= 0.8 * total
    assert count_params(m) > 0.8 * total - 4 * 32 * 8 - 24  # stops right after the budget
    assert min(s.heads_per_layer()) >= 1 and min(s.ffn_per_layer()) >= 1
    with pytest.raises(ValueError, match="cannot reach"):
        select_global(scores, base, total=total, keep=0.05)
    # MACs budget: per-token MACs from the counter, the same sequence length for the unit costs
    from pakd_hf.measure import count_macs

    x = {"input_ids": _batch()["input_ids"]}  # 2 x 8 tokens
    macs = count_macs(bert, x)
    s = select_global(scores, base, total=macs / 16, keep=0.7, metric="macs", seq_len=8)
    m = copy.deepcopy(bert)
    compact(m, s, check_export=False)
    assert 0.7 * macs - 16 * (4 * 32 * 8 + 2 * 8 * 8) < count_macs(m, x) <= 0.7 * macs


# ---------------------------------------------------------------- importance
def test_importance_shapes_and_zero_head_properties(bert):
    m = copy.deepcopy(bert)
    adapter = get_adapter(m)
    a = adapter.layer_parts(adapter.layer_list()[1]).attn
    with torch.no_grad():  # zero head 2 of layer 1 entirely
        for lin in (a.q, a.k, a.v):
            lin.weight[16:24] = 0
            lin.bias[16:24] = 0
        a.o.weight[:, 16:24] = 0
    for crit in ("magnitude", "taylor", "movement"):
        acc = ImportanceAccumulator(m, criterion=crit, kinds=("heads", "ffn", "layers", "hidden", "weights"))
        m.zero_grad()
        m(**_batch()).loss.backward()
        acc.update()
        sc = acc.scores()
        assert sc["heads"].shape == (4, 4) and sc["ffn"].shape == (4, 64)
        assert sc["layers"].shape == (4,) and sc["hidden"].shape == (32,)
        assert sc["weights"]["0.q"].shape == (32, 32)
        assert sc["heads"][1, 2] == 0.0, crit
        assert sc["heads"].abs().sum() > 0 and sc["hidden"].abs().sum() > 0
        torch.testing.assert_close(sc["layers"], sc["heads"].sum(1) + sc["ffn"].sum(1))
        if crit == "magnitude":
            assert torch.all(sc["heads"][1, [0, 1, 3]] > 0)


def test_taylor_accumulates_and_resets(bert):
    m = copy.deepcopy(bert)
    acc = ImportanceAccumulator(m, criterion="taylor", kinds=("heads", "ffn"))
    m.zero_grad()
    m(**_batch()).loss.backward()
    acc.update()
    one = acc.scores()
    acc.update()  # same grads again: exactly twice the score
    torch.testing.assert_close(acc.scores()["heads"], 2 * one["heads"])
    assert acc.num_updates == 2
    acc.reset()
    assert acc.num_updates == 0 and acc.scores()["ffn"].abs().sum() == 0
    # movement: -w * g summed over the group; its sign follows the gradient
    mv = ImportanceAccumulator(m, criterion="movement", kinds=("ffn",))
    mv.update()
    fc1 = get_adapter(m).layers()[0].fc1
    fc2 = get_adapter(m).layers()[0].fc2
    want = -(fc1.weight * fc1.weight.grad).sum(1) - fc1.bias * fc1.bias.grad - (fc2.weight * fc2.weight.grad).sum(0)
    torch.testing.assert_close(mv.scores()["ffn"][0], want.detach())


def test_accumulated_importance_round_trips_through_safetensors(bert, tmp_path):
    from safetensors.torch import load_file, save_file

    m = copy.deepcopy(bert)
    acc = ImportanceAccumulator(m, criterion="movement", kinds=("heads", "hidden", "weights"))
    m.zero_grad()
    m(**_batch()).loss.backward()
    acc.update()
    acc.update()
    save_file(acc.state_dict(), tmp_path / "importance.safetensors")
    again = ImportanceAccumulator(m, criterion="movement", kinds=("heads", "hidden", "weights"))
    again.load_state_dict(load_file(tmp_path / "importance.safetensors"))
    assert again.num_updates == 2
    want, got = acc.scores(), again.scores()
    assert got["heads"].abs().sum() > 0
    for kind in ("heads", "hidden"):
        torch.testing.assert_close(got[kind], want[kind], rtol=0, atol=0)
    assert set(got["weights"]) == set(want["weights"])
    for key in want["weights"]:
        torch.testing.assert_close(got["weights"][key], want["weights"][key], rtol=0, atol=0)
    # another model's shapes: refused with the key and the fix, not a broadcasting error later
    small = copy.deepcopy(bert)
    compact(small, select_structure({"heads": want["heads"]}, Structure.from_model(bert), heads=2), check_export=False)
    with pytest.raises(ValueError, match=r"saved importance 'heads' \(4, 4\) does not fit this model \(\(4, 2\)\)"):
        ImportanceAccumulator(small, criterion="movement", kinds=("heads",)).load_state_dict(
            {"num_updates": torch.tensor(2), "heads": want["heads"]})


# ---------------------------------------------------------------- structure / errors
def test_structure_json_round_trip_and_uniformity():
    s = Structure(2, 4, 8, 6, 16, layers=[1], heads=[[0, 1], [3, 1]], ffn=[[0], [5, 2]], hidden=list(range(8)))
    d = json.loads(json.dumps(s.to_dict()))
    back = Structure.from_dict(d)
    assert back == s.normalized() and back.heads == [[], [1, 3]] and back.is_uniform()
    assert d["uniform"] is True and d["original"]["head_dim"] == 8
    nu = Structure(2, 4, 8, 6, 16, layers=[0, 1], heads=[[0], [1, 2]], ffn=[[0], [1]], hidden=[0])
    assert not nu.is_uniform()
    with pytest.raises(ValueError, match="outside"):
        Structure(2, 4, 8, 6, 16, layers=[0, 1], heads=[[7], [1]], ffn=[[0], [1]], hidden=[0])
    with pytest.raises(ValueError, match="no heads"):
        Structure(2, 4, 8, 6, 16, layers=[0, 1], heads=[[], [1]], ffn=[[0], [1]], hidden=[0])


def test_mask_state_round_trip_and_detach(bert):
    m = copy.deepcopy(bert)
    scores = ImportanceAccumulator(m, criterion="magnitude").scores()
    s = select_structure(scores, Structure.from_model(m), layers=3, hidden=24, heads=3,
                         adapter=get_adapter(m))
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    assert sum(bool(mod._forward_hooks) for mod in m.modules()) == 9  # 4 layers x 2 + embeddings
    sd = state.state_dict()
    other = MaskState(copy.deepcopy(bert))
    other.load_state_dict(json.loads(json.dumps({k: v for k, v in sd.items() if k != "weight_masks"})))
    assert other.structure() == s
    state.detach()
    assert not any(mod._forward_hooks for mod in m.modules())
    assert all("forward" not in layer.__dict__ for layer in get_adapter(m).layer_list())
    assert state.sparsity()["layers"] == 0.25 and state.sparsity()["hidden"] == 0.25


def test_unsupported_architecture_message():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_adapter(model)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert "GPT2LMHeadModel" in msg and "BERT" in msg and "ViT" in msg


def test_hidden_pruning_rejects_unknown_task_head():
    m = tiny_bert(hidden=16, layers=1, heads=2, ffn=8, vocab_size=50, cls="BertForMaskedLM")
    adapter = get_adapter(m)  # heads / ffn / layers are fine for every BERT head
    assert len(adapter.head_cuts(0)) == 4
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM"):
        adapter.hidden_cuts()


def test_compaction_keeps_dtype_and_module_identity(bert):
    m = copy.deepcopy(bert).to(torch.bfloat16)
    adapter = get_adapter(m)
    q = adapter.layer_parts(adapter.layer_list()[0]).attn.q
    scores = ImportanceAccumulator(m, criterion="magnitude").scores()
    s = select_structure(scores, Structure.from_model(m), heads=2, hidden=16, adapter=adapter)
    state = MaskState(m)
    state.set_structure(s)
    state.apply(m)
    res = compact(m, state)
    assert adapter.layer_parts(adapter.layer_list()[0]).attn.q is q and q.weight.shape == (16, 16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert all(p.requires_grad for p in m.parameters())
    assert m.config.hidden_size == 16 and m.config.num_attention_heads == 2
    assert res.removed == {"layers": 0, "heads": 8, "ffn": 0, "hidden": 16}


def test_stale_states_after_compaction(bert):
    m = copy.deepcopy(bert)
    acc = ImportanceAccumulator(m, criterion="taylor", kinds=("heads", "ffn"))
    m(**_batch()).loss.backward()
    acc.update()
    old = MaskState(m)
    old.apply()
    s = select_structure(acc.scores(), Structure.from_model(m), ffn=32)
    compact(m, s)  # through a Structure: the attached state no longer fits the model
    with pytest.raises(RuntimeError, match="before compaction"):
        old.apply()
    assert acc.scores()["ffn"].shape == (4, 32) and acc.num_updates == 0  # reset itself
