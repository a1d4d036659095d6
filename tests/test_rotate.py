"""Hidden rotation (`pruning.hidden.method: rotate`): exact at full width, closer to the
original than cutting the best coordinates, inside PaKDTrainer (a stage rotates the stream,
prunes heads on its schedule, saves a stock BERT, resumes mid-stage), refused where no rule
exists."""

import copy
import json

import pytest
import torch
from torch import nn
from transformers import BatchEncoding, BertForSequenceClassification, TrainerCallback, default_data_collator

from pakd_hf import PaKDTrainer, PaKDTrainingArguments, RecipeError
from pakd_hf.prune import Structure, compact
from pakd_hf.prune.rotate import rotate_hidden
from toy import run_stock, tiny_bert, tiny_vit, toy_dataset, toy_images


def model_batches(data, n=64, size=16):
    return [{k: torch.tensor(v) for k, v in data[i : i + size].items() if k != "labels"} for i in range(0, n, size)]


@torch.no_grad()
def logits(model, batches):
    model.eval()
    return torch.cat([model(**b).logits for b in batches])


def test_full_width_rotation_changes_no_output():
    """With equal LayerNorm gains the only approximation is gone: outputs must not move."""
    data = toy_dataset(64, seed=1)
    model = tiny_bert(seed=0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(0.7)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    batches = model_batches(data)
    before = logits(model, batches)
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    result = rotate_hidden(model, batches, 32)
    torch.testing.assert_close(logits(model, batches), before, rtol=0, atol=1e-5)
    assert (model.bert.embeddings.word_embeddings.weight - table).abs().max() > 0.1  # really rotated
    assert result.width_after == 32 and result.energy_kept == pytest.approx(1.0)


def test_cut_keeps_more_of_a_trained_model_than_the_best_coordinates(teacher, toy_data):
    batches = model_batches(toy_data, n=128)
    reference = logits(teacher, batches)
    rotated = copy.deepcopy(teacher)
    result = rotate_hidden(rotated, batches, 16)
    assert rotated.config.hidden_size == 16 and rotated.bert.pooler.dense.weight.shape == (16, 16)

    # the coordinate cut: the 16 coordinates with the largest second moment in the stream
    moment = torch.zeros(32)
    norms = [m for m in teacher.modules() if isinstance(m, nn.LayerNorm)]

    def add(module, args, out):
        moment.add_((out.detach() ** 2).sum((0, 1)))

    hooks = [n.register_forward_hook(add) for n in norms]
    logits(teacher, batches)
    for h in hooks:
        h.remove()
    best = sorted(moment.argsort(descending=True)[:16].tolist())
    coords = copy.deepcopy(teacher)
    structure = Structure.from_model(coords)
    compact(coords, Structure.from_dict({**structure.to_dict(), "hidden": best}), check_export=False)

    error = {name: (logits(m, batches) - reference).pow(2).mean().item() for name, m in (("rotate", rotated), ("coords", coords))}
    agree = {name: (logits(m, batches).argmax(1) == reference.argmax(1)).float().mean().item()
             for name, m in (("rotate", rotated), ("coords", coords))}
    assert error["rotate"] < 0.5 * error["coords"], error
    assert agree["rotate"] >= agree["coords"], agree
    assert result.energy_kept > result.energy_kept_coordinates


def test_rotation_rejects_bad_widths(teacher, toy_data):
    with pytest.raises(ValueError, match="between 2 and the current width 32"):
        rotate_hidden(teacher, model_batches(toy_data), 33)


ROTATE = {"heads": {"keep": 2}, "hidden": {"keep": 16, "method": "rotate", "calibration": 48}, "frequency": 2,
          "importance": "taylor"}


def recipe(pruning=ROTATE, task="text-classification"):
    """Like the main recipe: layers and FFN first (compacted), then rotate + heads, then recover."""
    dist = {"alpha": 0.5, "hidden": {"weight": 1.0}}
    first = {"layers": {"keep": 2}, "ffn": {"keep": 32}, "frequency": 2, "importance": "magnitude"}
    return {"name": "rot", "task": task, "stages": [
        {"name": "prune-layers", "steps": 4, "distillation": dist, "pruning": first},
        {"name": "prune", "steps": 6, "distillation": dist, "pruning": pruning},
        {"name": "recover", "steps": 4, "distillation": {"alpha": 0.5}},
    ]}


def targs(out, **kw):
    return PaKDTrainingArguments(**{**dict(
        output_dir=str(out), per_device_train_batch_size=8, learning_rate=2e-3, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, logging_steps=2), **kw})


class ImportanceAt(TrainerCallback):
    """Keeps the pruner's accumulated importance after optimizer step `step`."""

    def __init__(self, step):
        self.step, self.trainer, self.saved = step, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.saved = self.trainer.pruning.pruner.accumulator.state_dict()


@pytest.fixture(scope="module")
def rotated_run(tmp_path_factory, trained_teacher):
    out = tmp_path_factory.mktemp("rotate")
    data = toy_dataset(128)
    student = BertForSequenceClassification.from_pretrained(trained_teacher)
    teacher = BertForSequenceClassification.from_pretrained(trained_teacher)
    # like a tokenizer's collator, batches are BatchEncodings (a UserDict, not a dict)
    collate = lambda features: BatchEncoding(default_data_collator(features))  # noqa: E731
    importance = ImportanceAt(9)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, train_dataset=data, recipe=recipe(),
                          data_collator=collate, args=targs(out / "run", save_strategy="steps", save_steps=7),
                          callbacks=[importance])
    importance.trainer = trainer
    trainer.train()
    trainer.save_model(str(out / "student"))
    return dict(trainer=trainer, student=student, data=data, out=out, teacher=trained_teacher, importance=importance.saved)


def test_stage_rotates_prunes_heads_and_saves_a_stock_bert(rotated_run):
    trainer, student, out = rotated_run["trainer"], rotated_run["student"], rotated_run["out"]
    cfg = student.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size) == (16, 2, 2, 32)
    record = json.loads((out / "student" / "pakd.json").read_text())
    assert record["hidden_rotation"]["width_before"] == 32 and record["hidden_rotation"]["width_after"] == 16
    assert record["hidden_rotation"]["energy_kept"] > record["hidden_rotation"]["energy_kept_best_coordinates"]
    # measured on `calibration: 48` examples (6 batches of 8, at most 12 tokens each), not the whole set
    assert 0 < record["hidden_rotation"]["calibration_tokens"] <= 48 * 12
    assert all(m.in_features == 16 for m in trainer.distill_projections.maps.values())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in student.parameters()} <= optimised

    batch = rotated_run["data"][:6]
    inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
    expected = logits(student, [inputs])
    torch.save({"inputs": inputs, "logits": expected}, out / "expected.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"model = AutoModelForSequenceClassification.from_pretrained({str(out / 'student')!r}).eval()\n"
        "assert 'pakd_hf' not in sys.modules and type(model).__name__ == 'BertForSequenceClassification'\n"
        f"exp = torch.load({str(out / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**exp['inputs']).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )
    run_stock(script)


def test_resume_in_the_middle_of_a_rotating_stage(rotated_run):
    """Resuming after the rotation must not rotate again, and must end where the run ended."""
    checkpoint = rotated_run["out"] / "run" / "checkpoint-7"
    state = json.loads((checkpoint / "pakd_state.json").read_text())
    assert state["stage_name"] == "prune" and state["hidden_rotation"]["width_after"] == 16
    assert (checkpoint / "pakd_importance.safetensors").is_file()  # the Taylor sums of steps 5-7
    student = BertForSequenceClassification.from_pretrained(rotated_run["teacher"])  # full width again
    importance = ImportanceAt(9)
    trainer = PaKDTrainer(model=student, teacher_model=BertForSequenceClassification.from_pretrained(rotated_run["teacher"]),
                          train_dataset=rotated_run["data"], recipe=recipe(), args=targs(rotated_run["out"] / "run"),
                          callbacks=[importance])
    importance.trainer = trainer
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.pruning.rotation_record == state["hidden_rotation"]
    # The resumed stage's Taylor scores at step 9 include the steps before the checkpoint: same
    # number of updates and the same sums (a lost accumulator would miss 3 of 5 steps' worth).
    expected = rotated_run["importance"]
    assert int(importance.saved["num_updates"]) == int(expected["num_updates"]) == 5
    assert set(importance.saved) == set(expected) == {"num_updates", "heads"}
    torch.testing.assert_close(importance.saved["heads"], expected["heads"], rtol=0.02, atol=1e-6)
    # Seven AdamW steps (lr 2e-3) after the checkpoint: Adam turns float noise in near-zero
    # gradients (key biases) into steps of up to ~lr, so ~5e-4 is noise; rotating twice or a
    # lost projection moves weights by 0.1-1.
    for name, value in rotated_run["student"].state_dict().items():
        torch.testing.assert_close(student.state_dict()[name], value, rtol=0, atol=2e-3, msg=name)


def test_rotate_is_refused_for_a_family_without_a_rule_before_training(tmp_path):
    """wav2vec2: its feature encoder reaches the stream through a GELU, its positions through a
    grouped convolution: one line naming the field and `method: select`, nothing written."""
    from datasets import Dataset

    from toy import tiny_wav2vec2

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_values": torch.randn(16, 1600, generator=g).tolist(),
                              "labels": torch.randint(0, 3, (16,), generator=g).tolist()}).with_format("torch")
    with pytest.raises(RecipeError, match=r"stages\[1\]\.pruning\.hidden\.method.*BERT/RoBERTa.*ViT.*method: select"):
        PaKDTrainer(model=tiny_wav2vec2(seed=0), teacher_model=tiny_wav2vec2(seed=5), train_dataset=data,
                    recipe=recipe(task="audio-classification"), args=targs(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _off_init(model, also: tuple[str, ...] = ()):
    """Moves norms' gains and biases, every bias and the parameters named ``also`` off their init
    (seeded), so that every fold of a rotation matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias") or name.endswith(also):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _vit(seed=0, **kw):
    """A 2-layer ViT classifier (hidden 32, 4 heads of 8, 4 patches + the class token), weights at
    std 0.2, norms' gains and biases and all biases moved off their init, so that every fold matters."""
    model = tiny_vit(seed=seed, layers=2, initializer_range=0.2, **kw).eval()
    return _off_init(model)


def _vit_batches(n=4, size=8):
    g = torch.Generator().manual_seed(3)
    return [{"pixel_values": torch.randn(size, 3, 8, 8, generator=g)} for _ in range(n)]


def _vit_stream(model, batches):
    """Each layer's output (the stream), the tokens of all batches stacked."""
    seen = []
    handles = [layer.register_forward_hook(lambda m, args, out: seen.append((m, out[0] if isinstance(out, tuple) else out)))
               for layer in model.vit.layers]
    try:
        logits(model, batches)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat([out for m, out in seen if m is layer]) for layer in model.vit.layers]


def test_vit_rotation_is_exact_at_full_width():
    """Pre-LayerNorm ViT: the in-block norms' gains and biases fold into their readers, and the
    patch projection (a convolution), the class token and the positions are rotated: nothing to
    refit. The full-width model's stream is the original's rotated, layer by layer, and its logits
    are the same (with a uniform final gain, whose diagonal rule is then exact)."""
    model = _vit()
    with torch.no_grad():
        model.vit.layernorm.weight.fill_(0.7)
    batches = _vit_batches()
    layers_before, before = _vit_stream(model, batches), logits(model, batches)
    result = rotate_hidden(model, batches, 32)
    assert result.width_after == 32 and result.energy_kept == pytest.approx(1.0) and result.front_error is None
    q = result.rotation
    assert not torch.allclose(q, torch.eye(32), atol=0.1)  # really rotated
    for was, now in zip(layers_before, _vit_stream(model, batches)):
        assert (now - was @ q).norm() <= 1e-5 * was.norm()
    after = logits(model, batches)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    assert before.abs().max() > 0.5  # logits that a wrong fold would move


def test_vit_without_qkv_biases_is_refused_before_anything_changes():
    from pakd_hf.arch import UnsupportedArchitectureError

    model = _vit(qkv_bias=False)  # queries and values cannot take the norm's bias
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedArchitectureError, match="without a bias reads a norm with a bias"):
        rotate_hidden(model, _vit_batches(), 16)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_vit_without_qkv_biases_is_refused_when_the_recipe_is_checked(tmp_path):
    """Its norms' biases are zero at init and move in the first stage: the refusal comes before
    any stage trains, not when the rotating stage starts."""
    with pytest.raises(RecipeError, match=r"stages\[1\]\.pruning\.hidden\.method.*without a bias reads a norm"):
        PaKDTrainer(model=tiny_vit(seed=0, qkv_bias=False), teacher_model=tiny_vit(seed=5), train_dataset=toy_images(16),
                    recipe=recipe(task="image-classification"), args=targs(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_vit_model_rotation_keeps_its_pooler_mask_token_and_interpolated_positions():
    """A bare ViTModel (pooler: a reader of the final norm with its own width) with a mask token:
    at full width, the last hidden state is the original's rotated and the pooled output is the
    same, also with masked patches and with positions interpolated to a larger image."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, initializer_range=0.2,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), use_mask_token=True).eval()
    _off_init(model, also=("mask_token",))
    with torch.no_grad():
        model.layernorm.weight.fill_(0.7)
    g = torch.Generator().manual_seed(2)
    batches = _vit_batches()
    masked = {"pixel_values": batches[0]["pixel_values"], "bool_masked_pos": torch.rand(8, 4, generator=g) < 0.5}
    larger = {"pixel_values": torch.randn(8, 3, 12, 12, generator=g), "interpolate_pos_encoding": True}

    @torch.no_grad()
    def outputs():
        return [model(**b) for b in (*batches, masked, larger)]

    before = outputs()
    q = rotate_hidden(model, batches, 32).rotation
    for was, now in zip(before, outputs()):
        torch.testing.assert_close(now.last_hidden_state, was.last_hidden_state @ q, rtol=0, atol=1e-4)
        torch.testing.assert_close(now.pooler_output, was.pooler_output, rtol=0, atol=1e-4)
    assert before[-2].last_hidden_state.abs().max() > 0.5
    assert (before[-2].last_hidden_state - before[0].last_hidden_state).abs().max() > 0.1  # the mask token is read


def test_vit_rotated_and_cut_is_a_stock_model(tmp_path):
    """Heads 4 -> 2 and the stream 32 -> 16 (2 x 8): saved, reloaded in a fresh process without
    pakd_hf, same logits; the rotation keeps more of the stream than the best 16 coordinates."""
    model = _vit()
    current = Structure.from_model(model)
    compact(model, Structure.from_dict({**current.to_dict(), "heads": [[0, 1], [1, 3]]}), check_export=False)
    batches = _vit_batches()
    result = rotate_hidden(model, batches, 16)
    assert result.energy_kept > result.energy_kept_coordinates
    assert (model.config.hidden_size, model.config.num_attention_heads) == (16, 2)
    assert model.vit.embeddings.cls_token.shape[-1] == model.vit.embeddings.position_embeddings.shape[-1] == 16
    model.save_pretrained(tmp_path / "student")
    torch.save({"inputs": batches[0], "logits": logits(model, batches[:1])}, tmp_path / "expected.pt")
    run_stock(
        "import torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'student')!r}).eval()\n"
        "assert type(model).__name__ == 'ViTForImageClassification'\n"
        f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**exp['inputs']).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )


def test_a_stage_rotates_a_vit_students_stream_while_distilling(tmp_path):
    """`hidden: {method: rotate}` on a ViT inside PaKDTrainer, as the recipe's stage 2: the stream
    is rotated and cut when the stage starts, heads pruned on its schedule, the hidden-state
    projections follow, and the saved student reloads as a stock ViT."""
    data = toy_images(32)
    trainer = PaKDTrainer(model=tiny_vit(seed=0), teacher_model=tiny_vit(seed=5), train_dataset=data,
                          recipe=recipe(task="image-classification"), args=targs(tmp_path / "run"))
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    student = trainer.model
    assert (student.config.hidden_size, student.config.num_attention_heads, student.config.num_hidden_layers) == (16, 2, 2)
    assert all(m.in_features == 16 for m in trainer.distill_projections.maps.values())
    rotation = json.loads((tmp_path / "student" / "pakd.json").read_text())["hidden_rotation"]
    assert rotation["width_after"] == 16 and rotation["energy_kept"] > rotation["energy_kept_best_coordinates"]
    inputs = {"pixel_values": data[:3]["pixel_values"]}
    torch.save({"inputs": inputs, "logits": logits(student, [inputs])}, tmp_path / "expected.pt")
    run_stock(
        "import torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'student')!r}).eval()\n"
        f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**exp['inputs']).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )


def _whisper(seed=0):
    """A 2-layer Whisper classifier (d_model 32, 4 heads of 8), weights at std 0.2 so that every
    block writes into the stream, norms' gains and biases and all biases away from their init, so
    that every fold matters."""
    from toy import tiny_whisper

    model = tiny_whisper(seed=seed, layers=2, init_std=0.2).eval()
    return _off_init(model)


def _whisper_batches(n=4, size=8):
    g = torch.Generator().manual_seed(3)
    return [{"input_features": torch.randn(size, 80, 100, generator=g)} for _ in range(n)]


def _stream(model, batches, first=None):
    """Each layer's output (the stream) and the logits; ``first``: a first value per batch to
    feed the first layer instead of the model's own front end's."""
    outs, logit = [], []
    for i, batch in enumerate(batches):
        seen = []
        handles = [layer.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
                   for layer in model.encoder.layers]
        if first is not None:
            handles.append(model.encoder.layers[0].register_forward_pre_hook(
                lambda m, args, kw, x=first[i]: ((x,) + args[1:], kw), with_kwargs=True))
        logit.append(logits(model, [batch]))
        for h in handles:
            h.remove()
        outs.append(seen)
    return [torch.cat(layer) for layer in zip(*outs)], torch.cat(logit)


def test_whisper_rotation_is_exact_behind_its_front_end():
    """Pre-LayerNorm Whisper: gains and biases fold into the readers (k_proj has no bias: a key
    shift the softmax ignores), the stream is rotated with the mean direction kept. Fed the
    original first value of the stream, rotated, the full-width model's stream is the original's
    rotated, layer by layer, and so are its logits (with a uniform final gain, whose diagonal rule
    is then exact); its own non-linear front end cannot take the rotation and is refitted."""
    model = _whisper()
    with torch.no_grad():
        model.encoder.layer_norm.weight.fill_(0.7)
    batches = _whisper_batches()
    firsts = []
    handle = model.encoder.layers[0].register_forward_pre_hook(lambda m, args: firsts.append(args[0].detach().clone()))
    layers_before, before = _stream(model, batches)
    handle.remove()
    attn = model.encoder.layers[0].self_attn
    assert (attn.k_proj.weight @ model.encoder.layers[0].self_attn_layer_norm.bias).abs().max() > 0.1  # a real key shift
    result = rotate_hidden(model, batches, 32)
    assert result.width_after == 32 and result.energy_kept == pytest.approx(1.0)
    q = result.rotation
    assert not torch.allclose(q, torch.eye(32), atol=0.1)  # really rotated
    layers_after, after = _stream(model, batches, first=[x @ q for x in firsts])
    for was, now in zip(layers_before, layers_after):
        assert (now - was @ q).norm() <= 1e-5 * was.norm()
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    assert before.abs().max() > 0.5  # logits that a wrong fold would move
    error_before, error_after = result.front_error
    assert error_after < 0.5 * error_before
    assert result.record()["front_refit_error"] == [float(f"{error_before:.3g}"), float(f"{error_after:.3g}")]
    assert not model.encoder.embed_positions.weight.requires_grad  # left as it was


def test_whisper_front_refit_keeps_its_start_when_it_gets_worse(monkeypatch):
    import pakd_hf.prune.rotate as rotate

    monkeypatch.setattr(rotate, "FRONT_REFIT_LR", 1e4)  # diverges
    model = _whisper()
    result = rotate_hidden(model, _whisper_batches(), 16, front_steps=20)
    assert result.front_error[1] == result.front_error[0]
    start = _whisper()
    rotate_hidden(start, _whisper_batches(), 16, front_steps=0)
    for (name, p), (_, p0) in zip(model.named_parameters(), start.named_parameters()):
        torch.testing.assert_close(p, p0, rtol=0, atol=0, msg=name)


def test_rotation_gives_back_the_callers_mode_also_when_it_fails(monkeypatch):
    """The statistics are measured in eval mode; a model handed over in train mode is in train
    mode afterwards, also when the front end's refit raises half way."""
    import pakd_hf.prune.rotate as rotate

    model = _whisper().train()
    model.encoder.layers[0].eval()  # a part the caller froze on purpose stays so
    rotate_hidden(model, _whisper_batches(), 16, front_steps=2)
    frozen = set(model.encoder.layers[0].modules())  # those the cut made new included
    assert all(m.training == (m not in frozen) for m in model.modules())
    model = _whisper().eval()
    rotate_hidden(model, _whisper_batches(), 16, front_steps=0)
    assert not any(m.training for m in model.modules())

    def broken(*args, **kwargs):
        raise RuntimeError("refit failed")

    monkeypatch.setattr(rotate, "refit_front", broken)
    model = _whisper().train()
    with pytest.raises(RuntimeError, match="refit failed"):
        rotate_hidden(model, _whisper_batches(), 16)
    assert all(m.training for m in model.modules())


def test_whisper_reader_without_bias_is_refused_before_anything_changes():
    from pakd_hf.arch import UnsupportedArchitectureError

    model = _whisper()
    model.encoder.layers[1].self_attn.q_proj.bias = None  # a query without a bias cannot take the norm's bias
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedArchitectureError, match="without a bias reads a norm with a bias"):
        rotate_hidden(model, _whisper_batches(), 16)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_whisper_rotated_and_cut_is_a_stock_model(tmp_path):
    """Heads 4 -> 2 and the stream 32 -> 16 (2 x 8, a stock shape): saved, reloaded in a fresh
    process without pakd_hf, same logits; the cut keeps more energy than the best coordinates."""
    model = _whisper()
    current = Structure.from_model(model)
    compact(model, Structure.from_dict({**current.to_dict(), "heads": [[0, 1], [1, 3]]}), check_export=False)
    batches = _whisper_batches()
    result = rotate_hidden(model, batches, 16)
    assert result.energy_kept > result.energy_kept_coordinates
    assert result.front_error[1] < result.front_error[0]
    assert (model.config.d_model, model.config.encoder_attention_heads) == (16, 2)
    model.save_pretrained(tmp_path / "student")
    torch.save({"inputs": batches[0], "logits": logits(model, batches[:1])}, tmp_path / "expected.pt")
    run_stock(
        "import sys, torch\n"
        "from transformers import AutoModelForAudioClassification\n"
        f"model = AutoModelForAudioClassification.from_pretrained({str(tmp_path / 'student')!r}).eval()\n"
        "assert type(model).__name__ == 'WhisperForAudioClassification'\n"
        f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**exp['inputs']).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )


def test_a_stage_rotates_a_whisper_students_stream_while_distilling(tmp_path):
    """`hidden: {method: rotate}` on a Whisper classifier inside PaKDTrainer: the stream is
    rotated (front end refitted) and cut when the stage starts, heads are pruned on the stage's
    schedule, the hidden-state projections follow, and the saved student is a stock Whisper."""
    from datasets import Dataset

    from toy import tiny_whisper

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_features": (torch.randn(32, 80, 100, generator=g) * 0.5).tolist(),
                              "labels": torch.randint(0, 2, (32,), generator=g).tolist()}).with_format("torch")
    dist = {"alpha": 0.5, "hidden": {"weight": 1.0}}
    pruning = {"heads": {"keep": 2}, "hidden": {"keep": 16, "method": "rotate", "calibration": 16}, "frequency": 2,
               "importance": "taylor"}
    recipe = {"name": "rot-audio", "task": "audio-classification", "stages": [
        {"name": "prune", "steps": 6, "distillation": dist, "pruning": pruning},
        {"name": "recover", "steps": 2, "distillation": dist},
    ]}
    # init_std 0.2: the front end's convolutions reach gelu's curve (at 0.02 it is nearly linear)
    student = tiny_whisper(seed=0, layers=2, num_labels=2, init_std=0.2)
    trainer = PaKDTrainer(model=student, teacher_model=tiny_whisper(seed=5, layers=2, num_labels=2, init_std=0.2), train_dataset=data,
                          recipe=recipe, args=targs(tmp_path / "run"))
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    assert (student.config.d_model, student.config.encoder_attention_heads) == (16, 2)
    assert all(m.in_features == 16 for m in trainer.distill_projections.maps.values())
    rotation = json.loads((tmp_path / "student" / "pakd.json").read_text())["hidden_rotation"]
    assert rotation["width_after"] == 16 and rotation["energy_kept"] > rotation["energy_kept_best_coordinates"]
    assert rotation["front_refit_error"][1] < rotation["front_refit_error"][0]
    inputs = {"input_features": data[:3]["input_features"]}
    torch.save({"inputs": inputs, "logits": logits(student, [inputs])}, tmp_path / "expected.pt")
    run_stock(
        "import torch\n"
        "from transformers import AutoModelForAudioClassification\n"
        f"model = AutoModelForAudioClassification.from_pretrained({str(tmp_path / 'student')!r}).eval()\n"
        f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**exp['inputs']).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )
