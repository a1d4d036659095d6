"""Structured pruning of decoder LMs: Llama, Qwen2, Qwen3 and Mistral, each at GQA ratios 1, 2 and 4
with tied and untied embeddings (Mistral with a sliding window shorter than the inputs).

masked == compacted (logits within 1e-5) for every kind alone and all together; the saved config
divides (``num_attention_heads % num_key_value_heads == 0``, head size kept); the compacted model
saved with ``save_pruned`` reloads in ONE fresh process with stock ``AutoModelForCausalLM`` (no
pakd_hf) and gives the same logits and the same greedy generation through the KV cache.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pakd_hf.prune import (
    CheckpointMismatchError,
    ImportanceAccumulator,
    MaskState,
    Structure,
    compact,
    get_adapter,
    save_pruned,
    select_structure,
    verify_against_config,
)
from pakd_hf.prune.rotate import rotate_hidden
from toy import stock_result

TOL = 1e-5
VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, max_position_embeddings=64,
              rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# family: (model class, config) -- GQA ratio 1 / 2 / 4 / 4, tied and untied embeddings
FAMILIES = {
    "llama": (LlamaForCausalLM, lambda: LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=4,
                                                    tie_word_embeddings=False)),
    "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                                                    tie_word_embeddings=True)),
    "qwen3": (Qwen3ForCausalLM, lambda: Qwen3Config(**COMMON, num_attention_heads=8, num_key_value_heads=2,
                                                    head_dim=8, tie_word_embeddings=True)),
    "mistral": (MistralForCausalLM, lambda: MistralConfig(**COMMON, num_attention_heads=8, num_key_value_heads=2,
                                                          tie_word_embeddings=False)),
}
KINDS = {
    "heads": dict(heads=1),
    "ffn": dict(ffn=24),
    "layers": dict(layers=2),
    "hidden": dict(hidden=16),
    "all": dict(heads=1, ffn=24, layers=3, hidden=24),
}


def tiny_lm(family: str, seed: int = 0, cls=None, config=None):
    model_cls, default = FAMILIES[family]
    torch.manual_seed(seed)
    model = (cls or model_cls)(config or default()).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # RMSNorm gains away from 1 (and biases away from 0) so they matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tokens(n=3, length=12, seed=5):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _select(model, **counts):
    scores = ImportanceAccumulator(model, criterion="magnitude", kinds=tuple(counts)).scores()
    return select_structure(scores, Structure.from_model(model), adapter=get_adapter(model), **counts)


def _masked_and_compacted(model, counts, ids):
    m = copy.deepcopy(model)
    state = MaskState(m)
    state.set_structure(_select(m, **counts))
    state.apply()
    masked = logits(m, ids)
    assert (logits(model, ids) - masked).abs().max().item() > 1e-3, "pruning changed nothing: vacuous comparison"
    result = compact(m, state)
    return m, result, (masked - logits(m, ids)).abs().max().item()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_masked_equals_compacted(family, kind):
    model = tiny_lm(family)
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    m, result, diff = _masked_and_compacted(model, KINDS[kind], tokens())
    assert diff <= TOL, f"{family}/{kind}: masked vs compacted differ by {diff}"
    cfg, c = m.config, KINDS[kind]
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    assert cfg.num_attention_heads // cfg.num_key_value_heads == g  # whole KV groups: the ratio is kept
    assert cfg.num_key_value_heads == c.get("heads", model.config.num_key_value_heads)
    head_dim = lambda c: getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)  # noqa: E731 (Qwen2: no field)
    assert head_dim(cfg) == head_dim(model.config)
    assert cfg.intermediate_size == c.get("ffn", 48) and cfg.num_hidden_layers == c.get("layers", 4)
    assert cfg.hidden_size == c.get("hidden", 32)
    assert len(getattr(cfg, "layer_types", None) or [0] * cfg.num_hidden_layers) == cfg.num_hidden_layers
    tied = model.config.tie_word_embeddings
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    assert m.lm_head.weight.shape == (VOCAB, cfg.hidden_size)
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == list(range(cfg.num_hidden_layers))
    assert result.params_after < result.params_before


CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 4])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_at_every_gqa_ratio_tied_or_not(family, ratio, tied):
    """Every kind at once on 2 KV groups of ``ratio`` query heads; Mistral with a sliding window
    shorter than the inputs. Masked == compacted, greedy generation through the KV cache too."""
    extra = {"head_dim": 8} if family == "qwen3" else {}
    if family == "mistral":
        extra["sliding_window"] = 4  # the 12-token inputs reach past it
    config = CONFIGS[family](**COMMON, num_attention_heads=2 * ratio, num_key_value_heads=2, tie_word_embeddings=tied,
                             **extra)
    model, ids = tiny_lm(family, config=config), tokens()
    m = copy.deepcopy(model)
    state = MaskState(m)
    state.set_structure(_select(m, **KINDS["all"]))
    state.apply()
    masked = logits(m, ids)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        masked_gen = m.generate(ids[:1], **kw)
    assert (logits(model, ids) - masked).abs().max().item() > 1e-3, "pruning changed nothing: vacuous comparison"
    compact(m, state)
    assert (masked - logits(m, ids)).abs().max().item() <= TOL
    with torch.no_grad():
        assert torch.equal(m.generate(ids[:1], **kw), masked_gen)
    cfg = m.config
    assert (cfg.num_key_value_heads, cfg.num_attention_heads) == (1, ratio)  # one whole KV group kept
    assert cfg.hidden_size == 24 and cfg.num_hidden_layers == 3 and cfg.intermediate_size == 24
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied and cfg.tie_word_embeddings == tied
    if family == "mistral":
        assert cfg.sliding_window == 4


def test_heads_are_kv_groups_and_counts_in_the_record():
    model = tiny_lm("qwen3")  # 8 query heads in 2 groups of 4
    a = get_adapter(model)
    assert a.family == "llama" and a.group_size() == 4 and a.num_heads(0) == 2
    s = Structure.from_model(model)
    assert (s.num_heads, s.head_dim, s.hidden_size) == (2, 8, 32)  # hidden != heads * head_dim: head_dim is explicit
    q, k, v, o = a.head_cuts(0)
    assert (q.group, k.group, v.group, o.group) == (32, 8, 8, 32)
    # the embeddings (and an untied LM head) are the vocabulary tables
    assert len(a.embedding_parameters()) == 1 and len(get_adapter(tiny_lm("llama")).embedding_parameters()) == 2


def test_sequence_classification_head_is_cut():
    model = tiny_lm("llama", cls=LlamaForSequenceClassification)
    model.config.num_labels = 2
    ids = tokens()
    m, _, diff = _masked_and_compacted(model, dict(hidden=16, layers=2), ids)
    assert diff <= TOL and m.score.in_features == 16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every family compacted at every kind, saved with save_pruned; expected logits and greedy tokens."""
    root = tmp_path_factory.mktemp("llama-family")
    jobs, ids = [], tokens(2, 8)
    for family in FAMILIES:
        for kind in ("all", "hidden"):
            m, _, _ = _masked_and_compacted(tiny_lm(family), KINDS[kind], ids)
            folder = root / f"{family}-{kind}"
            save_pruned(m, folder)
            with torch.no_grad():
                gen = m.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0)
            torch.save(logits(m, ids), root / f"{family}-{kind}.logits.pt")  # argv is too short for them
            jobs.append({"folder": str(folder), "ids": ids.tolist(), "logits": str(root / f"{family}-{kind}.logits.pt"),
                         "generated": gen.tolist()})
        m = tiny_lm(family)  # the stream rotated and cut (pakd_hf.prune.rotate)
        rotate_hidden(m, [{"input_ids": tokens(4, 12, seed=9)}], 16)
        folder = root / f"{family}-rotated"
        save_pruned(m, folder)
        with torch.no_grad():
            gen = m.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0)
        torch.save(logits(m, ids), root / f"{family}-rotated.logits.pt")
        jobs.append({"folder": str(folder), "ids": ids.tolist(), "logits": str(root / f"{family}-rotated.logits.pt"),
                     "generated": gen.tolist()})
    return jobs


RELOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out = []
for job in json.loads(sys.argv[1]):
    m = AutoModelForCausalLM.from_pretrained(job["folder"]).eval()
    ids = torch.tensor(job["ids"])
    with torch.no_grad():
        diff = (m(input_ids=ids).logits - torch.load(job["logits"], weights_only=True)).abs().max().item()
        gen = m.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0)
    c = m.config
    out.append({"diff": diff, "generated": gen.tolist(), "divides": c.num_attention_heads % c.num_key_value_heads == 0,
                "tied": m.lm_head.weight is m.model.embed_tokens.weight})
print("RESULT" + json.dumps(out))
"""


def test_stock_reload_logits_and_greedy_generation(saved):
    got = stock_result(RELOAD, saved)
    for job, r in zip(saved, got):
        assert r["diff"] <= TOL, f"{job['folder']}: reloaded logits differ by {r['diff']}"
        assert r["generated"] == job["generated"], f"{job['folder']}: greedy generation differs after reload"
        assert r["divides"]
    tied = {j["folder"].rsplit("/", 1)[1].split("-")[0]: r["tied"] for j, r in zip(saved, got)}
    assert tied == {"llama": False, "qwen2": True, "qwen3": True, "mistral": False}


def test_verify_catches_a_config_that_does_not_match(saved, tmp_path):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(saved[0]["folder"], folder)
    verify_against_config(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_key_value_heads"] += 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="num_key_value_heads|k_proj"):
        verify_against_config(folder)


# ------------------------------------------------------------- distillation in PaKDTrainer
def _lm_blocks(n=48, length=16, seed=0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    # a learnable pattern (each token predicts the next), so the teacher is not just noise
    start = torch.randint(3, VOCAB - length, (n, 1), generator=g)
    ids = (start + torch.arange(length)) % VOCAB
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist(),
                              "attention_mask": [[1] * length] * n}).with_format("numpy")


@pytest.mark.parametrize("loss", ["kl", "jsd"])
def test_token_distillation_lowers_kd_loss_while_pruning(tmp_path, loss):
    """A few PaKD steps on a causal LM, distillation only (alpha 1) from a student that starts
    from another initialisation: the logged KD loss falls while the student is pruned, the
    chunked path is the one used (the student is asked for one position's logits), and the
    student compacts to a stock config."""
    from pakd_hf import PaKDTrainer, PaKDTrainingArguments

    teacher = tiny_lm("qwen2", seed=3)
    student = tiny_lm("qwen2", seed=11)
    recipe = {"name": "lm", "task": "text-generation", "stages": [
        {"name": "prune", "steps": 8, "learning_rate": 5e-3,
         "distillation": {"temperature": 1.0, "alpha": 1.0, "loss": loss, "chunk_size": 7, "hidden": {}},
         "pruning": {"layers": {"keep": 2}, "ffn": {"keep": 24}, "heads": {"keep": 1}, "frequency": 2}},
        {"name": "recover", "steps": 16, "learning_rate": 5e-3,
         "distillation": {"temperature": 1.0, "alpha": 1.0, "loss": loss, "chunk_size": 7}},
    ]}
    args = PaKDTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=4,
                                 max_grad_norm=0.0)
    kept = []
    student.register_forward_pre_hook(lambda m, a, kw: kept.append(kw.get("logits_to_keep")), with_kwargs=True)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_lm_blocks(), recipe=recipe)
    trainer.train()
    kd = [h["kd_logits"] for h in trainer.state.log_history if "kd_logits" in h]
    assert len(kd) == 6 and kd[-1] < 0.7 * kd[0], kd
    assert kept and set(kept) == {1}
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.num_attention_heads, cfg.intermediate_size) == (2, 1, 2, 24)
    assert student.lm_head.weight is student.model.embed_tokens.weight


def test_hub_recipe_fits_qwen2_5_0_5b_and_keeps_about_a_third():
    """The Hub recipe (validated, not run): its targets applied to Qwen2.5-0.5B's published shape,
    built on the meta device, give a stock config that divides and about a third of the parameters."""
    from pathlib import Path

    from pakd_hf.prune.budget import model_cost
    from pakd_hf.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "llm" / "qwen2.5-0.5b-wikitext.yaml")
    counts = {}
    for stage in recipe.stages:
        for kind in ("layers", "ffn", "heads", "hidden"):
            keep = getattr(stage.pruning, kind, None) if stage.pruning else None
            if keep is not None:
                counts[kind] = keep.keep
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    a = get_adapter(model)
    full = Structure.from_model(model)
    target = Structure(*full.original_sizes(), layers=list(range(counts["layers"])),
                       heads=[list(range(counts["heads"])) if i < counts["layers"] else [] for i in range(24)],
                       ffn=[list(range(counts["ffn"])) if i < counts["layers"] else [] for i in range(24)],
                       hidden=list(range(counts["hidden"])))
    a.check_structure(target)
    before, after = model_cost(model, a, full, "params", None), model_cost(model, a, target, "params", None)
    assert 480e6 < before < 500e6 and 0.3 < after / before < 0.4, (before, after)
    small = copy.deepcopy(model.config)
    a.update_config(small, target)
    assert small.num_attention_heads % small.num_key_value_heads == 0 and small.num_attention_heads == 7
    assert small.head_dim == 64 and len(small.layer_types) == 16


def test_layer_types_follow_the_kept_layers_with_sliding_window():
    """Qwen2 with sliding-window attention in its upper layers: removing a non-prefix set of
    layers keeps each survivor's own attention type (and the window matters at this length)."""
    cfg = Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                      sliding_window=4, max_window_layers=2, tie_word_embeddings=False)
    assert cfg.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    ids = tokens(2, 12)
    base = Structure.from_model(model)
    keep = [1, 3]
    s = Structure(*base.original_sizes(), layers=keep, heads=[h if i in keep else [] for i, h in enumerate(base.heads)],
                  ffn=[f if i in keep else [] for i, f in enumerate(base.ffn)], hidden=base.hidden)
    m = copy.deepcopy(model)
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    masked = logits(m, ids)
    compact(m, state)
    assert m.config.layer_types == ["full_attention", "sliding_attention"]
    assert (masked - logits(m, ids)).abs().max().item() <= TOL
    fresh = Qwen2ForCausalLM(m.config).eval()
    fresh.load_state_dict(m.state_dict())
    assert (logits(fresh, ids) - masked).abs().max().item() <= TOL  # a model built from the saved config agrees


def test_token_cross_entropy_equals_transformers_loss():
    """The chunked path's task term is transformers' own causal-LM loss (shift, -100 ignored)."""
    from pakd_hf.distill import token_kd_per_sample

    model = tiny_lm("llama")
    ids = tokens(2, 10)
    labels = ids.clone()
    labels[1, 6:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, output_hidden_states=True)
        _, ce = token_kd_per_sample(out.hidden_states[-1], model.lm_head, out.hidden_states[-1], model.lm_head, labels,
                                    chunk_size=3)
    counts = labels[:, 1:].ne(-100).sum(1).float()
    assert ((ce * counts).sum() / counts.sum()).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_a_budget_counts_a_causal_lms_macs_as_its_prefill():
    """MACs for `budget: macs` and the logged `pakd/macs_kept` are the prefill's, as the report's
    (pakd_hf.pipeline.compare): the LM head runs on the last position only."""
    from pakd_hf.measure import count_macs
    from pakd_hf.prune.budget import model_cost

    model, ids = tiny_lm("llama"), tokens(2, 12)
    cost = model_cost(model, get_adapter(model), Structure.from_model(model), "macs", {"input_ids": ids})
    prefill = count_macs(model, {"input_ids": ids, "logits_to_keep": 1})
    assert cost == prefill < count_macs(model, {"input_ids": ids})


def test_prefill_is_the_last_positions_logits_for_causal_lms_only():
    """One rule for the benchmark, the report's MACs and the budget (pakd_hf.measure.prefill_kwargs):
    a causal LM's forward gets logits_to_keep=1; a decoder classifier and an encoder get nothing."""
    from pakd_hf.measure import prefill_kwargs
    from toy import tiny_bert

    assert all(prefill_kwargs(tiny_lm(family)) == {"logits_to_keep": 1} for family in ("llama", "qwen2", "qwen3", "mistral"))
    assert prefill_kwargs(tiny_lm("llama", cls=LlamaForSequenceClassification)) == {}
    assert prefill_kwargs(tiny_bert()) == {}


def test_counting_macs_builds_no_autograd_graph():
    """count_macs runs once per example in every benchmark: without no_grad each count would
    keep a large teacher's activations for backward."""
    from pakd_hf.measure import count_macs

    model, grad_seen = tiny_lm("llama").train(), []
    model.register_forward_hook(lambda m, args, out: grad_seen.append(torch.is_grad_enabled()))
    assert count_macs(model, {"input_ids": tokens(2, 12), "logits_to_keep": 1}) > 0
    assert grad_seen == [False]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_width_rotation_of_every_decoder_changes_no_output(family, tied):
    """SliceGPT's rule: the in-block RMSNorm gains (random here) move into q/k/v and gate/up, so
    at full width the rotated decoder computes what it did. The final norm keeps the diagonal of
    its rotated gain, exact only for a uniform gain: it gets one here."""
    model = tiny_lm(family)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.model.norm.weight.fill_(0.8)
    ids = tokens(4, 12)
    before, table = logits(model, ids), model.model.embed_tokens.weight.detach().clone()
    result = rotate_hidden(model, [{"input_ids": tokens(4, 12, seed=9)}], 32)
    assert (logits(model, ids) - before).abs().max().item() <= TOL
    assert (model.model.embed_tokens.weight - table).abs().max().item() > 0.05  # really rotated
    assert result.energy_kept == pytest.approx(1.0)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    gains = [model.model.layers[0].input_layernorm.weight, model.model.layers[0].post_attention_layernorm.weight]
    assert all(torch.allclose(g, g[0].expand_as(g)) for g in gains)  # one gain per norm: it commutes with Q


def test_a_stage_rotates_a_decoders_stream_while_distilling(tmp_path):
    """`hidden: {method: rotate}` on a causal LM inside PaKDTrainer: the stream is rotated and cut
    when the stage starts, the hidden-state projections follow it, the student trains on and
    ends as a stock config with tied embeddings; the rotation is recorded."""
    from pakd_hf import PaKDTrainer, PaKDTrainingArguments

    teacher = tiny_lm("qwen2", seed=3)
    student = copy.deepcopy(teacher)
    recipe = {"name": "lm-rotate", "task": "text-generation", "stages": [
        {"name": "rotate", "steps": 6, "learning_rate": 2e-3,
         "distillation": {"temperature": 1.0, "alpha": 1.0, "chunk_size": 7, "hidden": {"weight": 1.0}},
         "pruning": {"hidden": {"keep": 16, "method": "rotate", "calibration": 16}, "heads": {"keep": 1},
                     "frequency": 2}},
    ]}
    args = PaKDTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=2)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_lm_blocks(), recipe=recipe)
    trainer.train()
    cfg = student.config
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.num_attention_heads) == (16, 1, 2)
    assert student.lm_head.weight is student.model.embed_tokens.weight
    record = trainer.pruning.rotation_record
    assert (record["width_before"], record["width_after"]) == (32, 16) and record["energy_kept"] > 0.5
    proj = trainer.distill_projections
    assert all(m.weight.shape[1] == 16 for m in proj.maps.values())
    trainer.save_model(str(tmp_path / "student"))
    assert json.loads((tmp_path / "student" / "pakd.json").read_text())["hidden_rotation"]["width_after"] == 16


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_stream_inside_k_directions_is_cut_to_k_without_changing_outputs(family):
    """Every writer of the stream (embeddings, o_proj, down_proj) made to write inside one
    12-dimensional subspace: the rotation must find it and cut 32 -> 12 with the outputs
    unchanged, which holds only with the right gain on the kept norms (sqrt(32 / 12) times the
    norm share kept, here 1)."""
    model = tiny_lm(family)
    g = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(32, 12, generator=g))[0]
    inside = basis @ basis.T
    with torch.no_grad():
        table = model.model.embed_tokens.weight
        table.copy_(table @ inside)
        for layer in model.model.layers:
            for writer in (layer.self_attn.o_proj, layer.mlp.down_proj):
                writer.weight.copy_(inside @ writer.weight)
                if writer.bias is not None:
                    writer.bias.copy_(inside @ writer.bias)
        model.model.norm.weight.fill_(0.8)
    for m in model.modules():  # the one difference left: epsilon added to a mean over 12 dims, not 32
        if hasattr(m, "variance_epsilon") and m.weight.numel() == 32:
            m.variance_epsilon = 1e-12
    ids = tokens(4, 12)
    before = logits(model, ids)
    result = rotate_hidden(model, [{"input_ids": tokens(4, 12, seed=9)}], 12)
    assert model.config.hidden_size == 12 and result.energy_kept == pytest.approx(1.0)
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=1e-4)
    gain = model.model.layers[0].input_layernorm.weight
    assert torch.allclose(gain, torch.full_like(gain, (32 / 12) ** 0.5), atol=1e-4)


def test_full_width_rotation_of_a_float64_decoder_changes_no_output():
    """In float64 the folded gains are the norms' own tensors unless copied: they must be read
    before the norms are reset to one."""
    model = tiny_lm("llama").double()
    with torch.no_grad():
        model.model.norm.weight.fill_(0.8)
    ids = tokens(4, 12)
    before = logits(model, ids)
    rotate_hidden(model, [{"input_ids": tokens(4, 12, seed=9)}], 32)
    assert (logits(model, ids) - before).abs().max().item() <= TOL
