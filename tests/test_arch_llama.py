"""Structured pruning of decoder LMs: Llama, Qwen2, Qwen3 and Mistral (GQA ratios 1, 2 and 4,
tied and untied embeddings).

masked == compacted (logits within 1e-5) for every kind alone and all together; the saved config
divides (``num_attention_heads % num_key_value_heads == 0``, head size kept); the compacted model
saved with ``save_pruned`` reloads in ONE fresh process with stock ``AutoModelForCausalLM`` (no
pakd_hf) and gives the same logits and the same greedy generation through the KV cache.
"""

from __future__ import annotations

import copy

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


def tiny_lm(family: str, seed: int = 0, cls=None):
    model_cls, config = FAMILIES[family]
    torch.manual_seed(seed)
    model = (cls or model_cls)(config()).eval()
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
    return jobs


RELOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out = []
for job in json.loads(sys.argv[1]):
    m = AutoModelForCausalLM.from_pretrained(job["folder"]).eval()
    ids = torch.tensor(job["ids"])
    with torch.no_grad():
        diff = (m(input_ids=ids).logits - torch.load(job["logits"])).abs().max().item()
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
    import json
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(saved[0]["folder"], folder)
    verify_against_config(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_key_value_heads"] += 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="num_key_value_heads|k_proj"):
        verify_against_config(folder)
