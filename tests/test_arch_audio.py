"""Structured pruning of audio models: Whisper's encoder classifier, wav2vec2 and HuBERT (post-LN
"base" and pre-LN "stable layer norm" layouts, with and without ``use_weighted_layer_sum``).

masked == compacted for every structure kind and all combined; compacted -> save_pretrained ->
stock ``AutoModelForAudioClassification`` reload in ONE fresh process without pakd_hf; pruning
inside PaKDTrainer (compaction at the end of a stage, training continues in the next one).
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from pakd_hf import PaKDTrainer, PaKDTrainingArguments
from pakd_hf.arch import HeadDimError, NonUniformStructureError, UnsupportedArchitectureError
from pakd_hf.prune import (
    CheckpointMismatchError,
    ImportanceAccumulator,
    MaskState,
    Structure,
    compact,
    get_adapter,
    load_structure,
    save_pruned,
    select_structure,
    verify_against_config,
)
import toy
from toy import stock_result

TOL = 1e-5
KINDS = {
    "heads": dict(heads=2),
    "ffn": dict(ffn=32),
    "layers": dict(layers=2),
    "hidden": dict(hidden=16),
    "heads+hidden": dict(heads=2, hidden=16),
    "all": dict(heads=2, ffn=32, layers=2, hidden=16),
}
# stock Whisper / wav2vec2 / HuBERT derive head_dim = hidden // heads with square q/k/v: heads and
# hidden only export together (2 heads * 8 = 16)
EXPORTABLE = ("ffn", "layers", "heads+hidden", "all")
MEL, FRAMES, SAMPLES = 16, 40, 400


def _perturb(model):
    """LayerNorms and layer weights away from their init, so that every parameter matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("layer_weights"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def tiny_whisper(seed=0, weighted=False):
    model = toy.tiny_whisper(
        seed, num_mel_bins=MEL, max_source_positions=FRAMES // 2, decoder_attention_heads=2, decoder_ffn_dim=16,
        vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, num_labels=3,
        use_weighted_layer_sum=weighted, classifier_proj_size=24, init_std=0.2,
    )
    return _perturb(model.eval())


def tiny_wav2vec2(seed=0, stable=False, weighted=False, hubert=False, **extra):
    return _perturb(toy.tiny_wav2vec2(seed, stable=stable, weighted=weighted, hubert=hubert, **extra).eval())


def whisper_inputs():
    return {"input_features": torch.randn(3, MEL, FRAMES, generator=torch.Generator().manual_seed(3))}


def wav_inputs(mask=False):
    x = {"input_values": torch.randn(3, SAMPLES, generator=torch.Generator().manual_seed(3))}
    if mask:  # layer-norm feature encoders take an attention mask: one padded row
        m = torch.ones(3, SAMPLES, dtype=torch.long)
        m[1, 300:] = 0
        x["attention_mask"] = m
    return x


ARCHS = {
    "whisper": (lambda: tiny_whisper(), whisper_inputs),
    "whisper-weighted": (lambda: tiny_whisper(weighted=True), whisper_inputs),
    "wav2vec2": (lambda: tiny_wav2vec2(), wav_inputs),
    "wav2vec2-stable-weighted": (lambda: tiny_wav2vec2(stable=True, weighted=True), lambda: wav_inputs(mask=True)),
    "hubert-weighted": (lambda: tiny_wav2vec2(hubert=True, weighted=True), wav_inputs),
    "hubert-stable": (lambda: tiny_wav2vec2(hubert=True, stable=True), lambda: wav_inputs(mask=True)),
}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def models():
    return {name: (make(), inputs()) for name, (make, inputs) in ARCHS.items()}


def _select(model, kind, check_export=False, criterion="magnitude"):
    scores = ImportanceAccumulator(model, criterion=criterion).scores()
    return select_structure(scores, Structure.from_model(model), **KINDS[kind], adapter=get_adapter(model),
                            check_export=check_export)


# ------------------------------------------------------------- masked == compacted
@pytest.mark.parametrize("kind", list(KINDS) + ["last-layers"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_equals_compacted(models, arch, kind):
    model, inputs = models[arch]
    m = copy.deepcopy(model)
    if kind == "last-layers":  # the last layer goes: the weighted sum's last entry changes owner
        base = Structure.from_model(m)
        s = Structure(*base.original_sizes(), layers=[0, 2], heads=base.heads, ffn=base.ffn, hidden=base.hidden)
    else:
        s = _select(m, kind)
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    masked = logits(m, inputs)
    result = compact(m, state, check_export=False)
    compacted = logits(m, inputs)
    moved = (logits(model, inputs) - masked).abs().max().item()
    diff = (masked - compacted).abs().max().item()
    assert moved > 1e-3, "the pruning did not change the output: the comparison would be vacuous"
    assert diff <= TOL, f"{arch}/{kind}: masked vs compacted differ by {diff}"
    hooks = [h for mod in m.modules() for h in mod._forward_hooks.values()]  # transformers' own capture hooks stay
    assert not any("_masked_layer_norm_hook" in h.__qualname__ for h in hooks), "mask hooks left after compaction"
    assert all("forward" not in layer.__dict__ for layer in get_adapter(m).layer_list())
    want = {**KINDS.get(kind, {"layers": 2})}
    counts = result.structure.counts()
    assert counts["layers"] == want.get("layers", 4) and counts["hidden"] == want.get("hidden", 32)
    assert set(counts["heads"]) == {want.get("heads", 4)} and set(counts["ffn"]) == {want.get("ffn", 64)}
    assert result.params_after < result.params_before
    if getattr(m.config, "use_weighted_layer_sum", False):
        assert m.layer_weights.shape == (counts["layers"] + 1,) and torch.isfinite(m.layer_weights).all()
    adapter = get_adapter(m)
    for parts in adapter.layers():  # the attention's own head attributes follow (Whisper reshapes k/v with them)
        assert parts.attn.module.num_heads == want.get("heads", 4)
        assert parts.attn.module.head_dim == 8


def test_whisper_heads_only_runs_and_is_not_exportable(models):
    """Whisper reshapes keys/values with self.num_heads: after removing heads it must be patched."""
    model, inputs = models["whisper"]
    m = copy.deepcopy(model)
    s = _select(m, "heads")
    with pytest.raises(HeadDimError, match="head_dim not dividing"):
        compact(copy.deepcopy(model), s)  # check_export: stock Whisper ties d_model = heads * head_dim
    compact(m, s, check_export=False)
    attn = m.encoder.layers[0].self_attn
    assert (attn.num_heads, attn.head_dim, attn.embed_dim, attn.q_proj.out_features) == (2, 8, 16, 16)
    assert attn.scaling == 8 ** -0.5
    m.set_attn_implementation("eager")
    out = logits(m, inputs)  # eager and sdpa agree
    m.set_attn_implementation("sdpa")
    assert (out - logits(m, inputs)).abs().max().item() <= TOL


def test_wav2vec2_hidden_is_kept_per_conv_group(models):
    model, _ = models["wav2vec2"]
    m = copy.deepcopy(model)
    adapter = get_adapter(m)
    assert adapter.hidden_groups() == 4
    s = _select(m, "hidden")
    assert [sum(1 for d in s.hidden if d // 8 == g) for g in range(4)] == [4, 4, 4, 4]
    # 13 dims round up to a multiple of the 4 groups
    assert len(select_structure(ImportanceAccumulator(m, criterion="magnitude").scores(), Structure.from_model(m),
                                hidden=13, adapter=adapter, check_export=False).hidden) == 16
    base = Structure.from_model(m)
    lopsided = Structure(*base.original_sizes(), layers=base.layers, heads=base.heads, ffn=base.ffn,
                         hidden=list(range(16)))  # groups 0 and 1 only
    state = MaskState(m)
    state.set_structure(lopsided)
    state.apply()  # masking works in memory
    with pytest.raises(NonUniformStructureError, match="per group"):
        compact(m, state, check_export=False)
    compact(m, s, check_export=False)
    conv = m.wav2vec2.encoder.pos_conv_embed.conv
    assert conv.parametrizations.weight.original1.shape == (16, 4, 8) and conv.in_channels == conv.out_channels == 16
    assert conv.parametrizations.weight.original0.shape == (1, 1, 8) and conv.bias.shape == (16,)


def test_hidden_refused_where_unsupported_and_seq2seq_refused():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    m = tiny_wav2vec2(hubert=True, conv_pos_batch_norm=True)
    adapter = get_adapter(m)
    assert len(adapter.head_cuts(0)) == 4 and len(adapter.ffn_cuts(0)) == 2  # heads / FFN / layers are fine
    with pytest.raises(UnsupportedArchitectureError, match="conv_pos_batch_norm"):
        adapter.hidden_cuts()
    seq2seq = WhisperForConditionalGeneration(WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=8, decoder_ffn_dim=8, num_mel_bins=8, max_source_positions=4, max_target_positions=8,
        vocab_size=20, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    with pytest.raises(UnsupportedArchitectureError, match="seq2seq"):
        get_adapter(seq2seq)


# ------------------------------------------------------------------ trainer
def _audio_dataset(kind: str, n: int = 48) -> Dataset:
    """Label = which third of the input carries a bump (learnable, not the point here)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    if kind == "whisper":
        x = torch.randn(n, MEL, FRAMES, generator=g) * 0.5
        for i, y in enumerate(labels.tolist()):
            x[i, :, y * 13:(y + 1) * 13] += 1.0
        data = {"input_features": x.tolist(), "labels": labels.tolist()}
    else:
        x = torch.randn(n, SAMPLES, generator=g) * 0.5
        for i, y in enumerate(labels.tolist()):
            x[i, y * 133:(y + 1) * 133] += 1.0
        data = {"input_values": x.tolist(), "labels": labels.tolist()}
    return Dataset.from_dict(data).with_format("torch")


class _Snapshot(TrainerCallback):
    """The model's parameters right after compaction (end of the pruning stage)."""

    def __init__(self, trainer, step):
        self.trainer, self.step, self.params = trainer, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.params = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}


TRAINED = {
    # family: (student, teacher or None, dataset kind)
    "whisper-weighted": (lambda: tiny_whisper(weighted=True), lambda: tiny_whisper(seed=5), "whisper"),
    "wav2vec2-stable-weighted": (lambda: tiny_wav2vec2(stable=True, weighted=True), None, "wav"),
    "hubert": (lambda: tiny_wav2vec2(hubert=True), None, "wav"),
}
PRUNE_STEPS, RECOVER_STEPS = 6, 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = {}
    for name, (make_student, make_teacher, data_kind) in TRAINED.items():
        out = tmp_path_factory.mktemp(name)
        student = make_student().train()
        teacher = make_teacher() if make_teacher else None
        dist = {"alpha": 0.5, "hidden": {"weight": 1.0}} if teacher is not None else None
        pruning = {"heads": {"keep": 2}, "ffn": {"keep_fraction": 0.5}, "layers": {"keep": 2}, "hidden": {"keep": 16},
                   "frequency": 2, "importance": "taylor"}
        first = {"name": "prune", "steps": PRUNE_STEPS, "pruning": pruning}
        second = {"name": "recover", "steps": RECOVER_STEPS}
        if dist:
            first["distillation"] = second["distillation"] = dist
        recipe = {"name": "audio", "task": "audio-classification", "stages": [first, second]}
        args = PaKDTrainingArguments(
            output_dir=str(out / "run"), per_device_train_batch_size=8, learning_rate=2e-3, report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=100,
        )
        trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_audio_dataset(data_kind),
                              recipe=recipe)
        snap = _Snapshot(trainer, PRUNE_STEPS)
        trainer.add_callback(snap)
        trainer.train()
        trainer.save_model(str(out / "student"))
        runs[name] = dict(trainer=trainer, student=student, snap=snap, folder=out / "student",
                          inputs=whisper_inputs() if data_kind == "whisper" else wav_inputs())
    return runs


@pytest.mark.parametrize("name", list(TRAINED))
def test_pruning_stage_compacts_and_training_continues(trained, name):
    run = trained[name]
    trainer, student = run["trainer"], run["student"]
    adapter = get_adapter(student)
    s = Structure.from_model(student)
    assert s.counts() == {"layers": 2, "heads": [2, 2], "ffn": [32, 32], "hidden": 16}
    assert adapter.num_layers == 2 and adapter.hidden_size() == 16
    cfg_fields = {k: getattr(student.config, type(adapter).config_field(k)) for k in
                  ("num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_size")}
    assert cfg_fields == {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "hidden_size": 16}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert trainable <= optimised, "the optimizer does not hold the compacted parameters"
    assert all(p.shape[0] <= 64 for g in trainer.optimizer.param_groups for p in g["params"] if p.dim())
    after = dict(student.named_parameters())
    snap = run["snap"].params
    assert snap is not None
    assert {n: tuple(p.shape) for n, p in snap.items()} == {n: tuple(p.shape) for n, p in after.items()}
    moved = [n for n, p in snap.items() if after[n].requires_grad and not torch.equal(p, after[n].detach())]
    assert len(moved) > len(trainable) // 2, "parameters did not train after compaction"
    if getattr(student.config, "use_weighted_layer_sum", False):
        assert student.layer_weights.shape == (3,) and torch.isfinite(student.layer_weights).all()
    if trainer.distill_projections is not None:
        assert all(m.in_features == 16 for m in trainer.distill_projections.maps.values())
    assert json.loads((run["folder"] / "pakd.json").read_text())["family"] == adapter.family


# ------------------------------------------------------------------- export
_RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForAudioClassification
    out = {}
    for job in json.loads(sys.argv[1]):
        model = AutoModelForAudioClassification.from_pretrained(job["dir"]).eval()
        saved = torch.load(job["io"], weights_only=True)
        with torch.no_grad():
            y = model(**saved["inputs"]).logits
        out[job["dir"]] = [type(model).__name__, float((y - saved["logits"]).abs().max())]
    assert not any(m.startswith("pakd_hf") for m in sys.modules)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def exported(models, trained, tmp_path_factory):
    """Compact + save every exportable kind of every arch (and the trainer's students); ONE fresh
    stock process reloads them all."""
    root = tmp_path_factory.mktemp("audio-pruned")
    jobs, folders = [], {}

    def job(key, folder, model, inputs):
        io = folder.parent / f"{folder.name}.pt"
        torch.save({"inputs": inputs, "logits": logits(model.eval(), inputs)}, io)
        jobs.append({"dir": str(folder), "io": str(io)})
        folders[key] = (folder, model)

    for arch, (model, inputs) in models.items():
        for kind in EXPORTABLE:
            m = copy.deepcopy(model)
            compact(m, _select(m, kind, check_export=True))
            d = root / f"{arch}-{kind}"
            save_pruned(m, d)
            job((arch, kind), d, m, inputs)
    for name, run in trained.items():
        job((name, "trainer"), run["folder"], run["student"], run["inputs"])
    return folders, stock_result(_RELOAD, jobs, cwd=root, timeout=300)


@pytest.mark.parametrize("arch,kind", [(a, k) for a in ARCHS for k in EXPORTABLE] + [(n, "trainer") for n in TRAINED])
def test_stock_reload_in_fresh_process(exported, arch, kind):
    folders, results = exported
    d, m = folders[(arch, kind)]
    cls_name, diff = results[str(d)]
    assert cls_name == type(m).__name__
    assert diff <= TOL, f"{arch}/{kind}: stock reload differs by {diff}"
    verify_against_config(d)
    assert load_structure(d) == Structure.from_model(m)


def test_verify_against_config_reads_whisper_field_names(exported, tmp_path):
    import shutil

    folders, _ = exported
    src, _ = folders[("whisper-weighted", "all")]
    cfg = json.loads((src / "config.json").read_text())
    fields = ("encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "d_model")
    assert [cfg[k] for k in fields] == [2, 2, 32, 16]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg["encoder_ffn_dim"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="fc1"):
        verify_against_config(bad)
    cfg["encoder_ffn_dim"] = 32
    cfg["encoder_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="layer"):
        verify_against_config(bad)
