"""Structured pruning of transformers' ResNet (basic and bottleneck blocks).

``hidden`` = the channels of each residual stream (stage), with every block's inner channels
following as the stock config derives them; ``layers`` = residual blocks (never a stage's first);
``heads`` / ``ffn`` are refused. masked == compacted (eval mode, BatchNorm running statistics
perturbed so they matter; also train mode), compacted -> save_pretrained -> stock
``AutoModelForImageClassification`` in ONE fresh process without pakd_hf, and pruning inside
PaKDTrainer (compaction at the end of a stage, training continues in the next one).
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
from datasets import Dataset
from transformers import ResNetConfig, ResNetForImageClassification, TrainerCallback

from pakd_hf import PaKDTrainer, PaKDTrainingArguments, RecipeError
from pakd_hf.arch import NonUniformStructureError, UnsupportedArchitectureError
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
from toy import stock_result, tiny_resnet

TOL = 1e-5
TYPES = ("basic", "bottleneck")
KINDS = {"hidden": dict(hidden=24), "layers": dict(layers=3), "hidden+layers": dict(hidden=24, layers=2)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: one thread is faster, and far faster on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def images(n=4, seed=3):
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def out(model, inputs):
    with torch.no_grad():
        o = model(**inputs)
    return o.logits if hasattr(o, "logits") else o.pooler_output


def _select(model, check_export=True, criterion="magnitude", **counts):
    scores = ImportanceAccumulator(model, criterion=criterion, kinds=tuple(counts)).scores()
    return select_structure(scores, Structure.from_model(model), adapter=get_adapter(model),
                            check_export=check_export, **counts)


def _masked_vs_compacted(model, structure, inputs, check_export=True):
    m = copy.deepcopy(model)
    state = MaskState(m)
    state.set_structure(structure)
    state.apply()
    masked = out(m, inputs)
    result = compact(m, state, check_export=check_export)
    compacted = out(m, inputs)
    moved = (out(model, inputs) - masked).abs().max().item()
    assert moved > 1e-3, "the pruning did not change the output: the comparison would be vacuous"
    diff = (masked - compacted).abs().max().item()
    return m, result, diff


# ------------------------------------------------------------------ anatomy
def test_streams_and_records_of_resnet18_and_tiny_models():
    with torch.device("meta"):
        r18 = ResNetForImageClassification(ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                                        depths=[2, 2, 2, 2], layer_type="basic"))
    a = get_adapter(r18)
    assert a.family == "resnet" and a.required_layers() == [0, 2, 4, 6]
    # the stem (64) is tied to stage 0 by an identity shortcut: 4 streams
    assert a.hidden_segments() == [(0, 64, 1), (64, 192, 1), (192, 448, 1), (448, 960, 1)]
    s = Structure.from_model(r18)
    assert (s.num_layers, s.num_heads, s.hidden_size) == (8, 0, 960)
    assert s.ffn_per_layer() == [64, 64, 128, 128, 256, 256, 512, 512] and a.stock_config_fits()
    sep = get_adapter(tiny_resnet("bottleneck", embedding=8))
    assert sep.hidden_segments() == [(0, 8, 1), (8, 24, 4), (24, 56, 4)]  # stem separate; bottleneck >= 4
    assert Structure.from_model(sep.model).ffn_per_layer() == [8, 8, 16, 16]  # 2 x (width // 4) per block


# ------------------------------------------------------------ masked == compacted
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("layer_type", TYPES)
def test_masked_equals_compacted(layer_type, kind):
    model, inputs = tiny_resnet(layer_type), images()
    s = _select(model, **KINDS[kind])
    m, result, diff = _masked_vs_compacted(model, s, inputs)
    assert diff <= TOL, f"{layer_type}/{kind}: masked vs compacted differ by {diff}"
    cfg = m.config
    want_hidden = [8, 16] if "hidden" in kind else [16, 32]
    assert cfg.hidden_sizes == want_hidden and cfg.embedding_size == want_hidden[0]
    assert sum(cfg.depths) == KINDS[kind].get("layers", 4) and min(cfg.depths) >= 1
    inner = [w // 4 if layer_type == "bottleneck" else w for w in want_hidden]
    for stage, w in zip(m.resnet.encoder.stages, inner):
        for block in stage.layers:
            assert [c.convolution.out_channels for c in list(block.layer)[:-1]] == [w] * (len(block.layer) - 1)
    assert m.classifier[1].in_features == want_hidden[-1]
    assert result.params_after < result.params_before and get_adapter(m).stock_config_fits()
    bn = m.resnet.encoder.stages[1].layers[0].shortcut.normalization
    assert bn.running_mean.shape == bn.running_var.shape == (want_hidden[1],) and bn.num_features == want_hidden[1]
    assert not any("forward" in layer.__dict__ for layer in get_adapter(m).layer_list())


@pytest.mark.parametrize("layer_type", TYPES)
def test_separate_stem_stream_and_bare_model(layer_type):
    model, inputs = tiny_resnet(layer_type, embedding=8), images()
    s = _select(model, hidden=0.5)  # a fraction of the ORIGINAL 56 dims: each stream keeps half
    m, _, diff = _masked_vs_compacted(model, s, inputs)
    assert diff <= TOL
    assert (m.config.embedding_size, m.config.hidden_sizes) == (4, [8, 16])
    # the bare model returns the last stage's features: the kept channels match, the others are 0
    bare = tiny_resnet(layer_type, bare=True)
    s = _select(bare, hidden=24, layers=3)
    m = copy.deepcopy(bare)
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    masked = out(m, inputs).flatten(1)
    compact(m, state)
    kept = torch.tensor([d - 16 for d in s.hidden if d >= 16])
    dropped = torch.tensor([c for c in range(32) if c not in set(kept.tolist())])
    assert masked[:, dropped].abs().max().item() == 0.0
    assert (masked[:, kept] - out(m, inputs).flatten(1)).abs().max().item() <= TOL
    assert m.config.hidden_sizes == [8, 16] and sum(m.config.depths) == 3


def test_masks_exact_in_train_mode():
    """Batch statistics: a masked channel is all zeros, its BatchNorm weight and bias are zero."""
    model, inputs = tiny_resnet("bottleneck"), images(8)
    s = _select(model, hidden=24, layers=3)
    m = copy.deepcopy(model)
    state = MaskState(m)
    state.set_structure(s)
    state.apply()
    masked = out(m.train(), inputs)
    compact(m, state)
    assert (masked - out(m, inputs)).abs().max().item() <= TOL


def test_inner_channels_alone_compact_in_memory_but_do_not_export():
    """A stock config cannot describe inner channels pruned apart from the stage width."""
    model, inputs = tiny_resnet("bottleneck"), images()
    base = Structure.from_model(model)
    ffn = [f[:2] + f[n:n + 2] for f, n in zip(base.ffn, (4, 4, 8, 8))]  # 2 of each inner conv's channels
    s = Structure(*base.original_sizes(), layers=base.layers, heads=base.heads, ffn=ffn, hidden=base.hidden)
    with pytest.raises(NonUniformStructureError, match="not configurable"):
        compact(copy.deepcopy(model), s)
    m, _, diff = _masked_vs_compacted(model, s, inputs, check_export=False)
    assert diff <= TOL and m.resnet.encoder.stages[1].layers[0].layer[1].convolution.weight.shape[:2] == (2, 2)
    assert not get_adapter(m).stock_config_fits()
    with pytest.raises(UnsupportedArchitectureError, match=r"ResNet.*cannot prune ffn.*supported kinds: hidden"):
        _select(model, ffn=2)


def test_first_blocks_and_shortcut_shapes_are_guarded():
    model = tiny_resnet("basic")
    with pytest.raises(ValueError, match="cannot keep 1 layers"):
        _select(model, layers=1)  # each of the 2 stages keeps its first block
    base = Structure.from_model(model)
    no_first = Structure(*base.original_sizes(), layers=[0, 1, 3], heads=base.heads, ffn=base.ffn, hidden=base.hidden)
    with pytest.raises(NonUniformStructureError, match="first block"):
        compact(copy.deepcopy(model), no_first, check_export=False)
    # a separate stem keeping as many channels as stage 0 (stride 1): stock code would build an
    # identity shortcut where the model has a conv
    sep = tiny_resnet("basic", embedding=8)
    b = Structure.from_model(sep)
    hidden = list(range(4)) + list(range(8, 12)) + list(range(24, 56))
    ffn = [f[:4] if i < 2 else f for i, f in enumerate(b.ffn)]
    s = Structure(*b.original_sizes(), layers=b.layers, heads=b.heads, ffn=ffn, hidden=hidden)
    with pytest.raises(NonUniformStructureError, match="identity shortcut"):
        get_adapter(sep).check_structure(s)


# ------------------------------------------------------------------ trainer
def _image_dataset(n=48):
    """Label = the brightest colour channel (learnable; not the point here)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    pixels = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    pixels[torch.arange(n), labels] += 1.0
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")


class _Snapshot(TrainerCallback):
    def __init__(self, trainer, step):
        self.trainer, self.step, self.params = trainer, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.params = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}


PRUNE_STEPS, RECOVER_STEPS = 6, 3


def _args(out_dir):
    return PaKDTrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=8, learning_rate=2e-3, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=100,
    )


def _recipe(pruning, distil):
    dist = {"alpha": 0.5} if distil else None
    first = {"name": "prune", "steps": PRUNE_STEPS, "pruning": pruning}
    second = {"name": "recover", "steps": RECOVER_STEPS}
    if dist:
        first["distillation"] = second["distillation"] = dist
    return {"name": "resnet", "task": "image-classification", "stages": [first, second]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = {}
    data = _image_dataset()
    for layer_type in TYPES:
        out_dir = tmp_path_factory.mktemp(f"resnet-{layer_type}")
        student = tiny_resnet(layer_type).train()
        teacher = tiny_resnet(layer_type, seed=5) if layer_type == "bottleneck" else None  # logits KD
        pruning = {"hidden": {"keep_fraction": 0.5}, "layers": {"keep": 3}, "frequency": 2, "importance": "taylor"}
        trainer = PaKDTrainer(model=student, teacher_model=teacher, args=_args(out_dir / "run"), train_dataset=data,
                              recipe=_recipe(pruning, teacher is not None))
        snap = _Snapshot(trainer, PRUNE_STEPS)
        trainer.add_callback(snap)
        history = []
        trainer.add_callback(type("H", (TrainerCallback,), {
            "on_step_end": lambda self, args, state, control, **k: history.append(
                trainer.pruning.mask_state.structure().counts() if trainer.pruning.mask_state is not None else None)
        })())
        trainer.train()
        runs[layer_type] = dict(trainer=trainer, student=student, snap=snap, history=history)
    return runs


@pytest.mark.parametrize("layer_type", TYPES)
def test_pruning_stage_compacts_and_training_continues(trained, layer_type):
    run = trained[layer_type]
    trainer, student = run["trainer"], run["student"]
    assert (student.config.embedding_size, student.config.hidden_sizes, sum(student.config.depths)) == (8, [8, 16], 3)
    assert Structure.from_model(student).counts()["hidden"] == 24
    hidden = [h["hidden"] for h in run["history"][:PRUNE_STEPS]]
    assert hidden[0] == 48 and hidden == sorted(hidden, reverse=True) and hidden[-1] == 24  # masks grew, then compacted
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert trainable <= optimised, "the optimizer does not hold the compacted parameters"
    assert all(p.shape[0] <= 16 for g in trainer.optimizer.param_groups for p in g["params"] if p.dim() > 1)
    after = dict(student.named_parameters())
    snap = run["snap"].params
    assert {n: tuple(p.shape) for n, p in snap.items()} == {n: tuple(p.shape) for n, p in after.items()}
    moved = [n for n, p in snap.items() if not torch.equal(p, after[n].detach())]
    assert len(moved) > len(after) // 2, "parameters did not train after compaction"


@pytest.mark.parametrize(
    "pruning, fragment",
    [
        ({"heads": {"keep": 1}}, "cannot prune heads (a CNN has no attention heads)"),
        ({"ffn": {"keep_fraction": 0.5}}, "hidden_sizes[s] // 4"),
        ({"budget": {"params": 0.5, "kinds": ["hidden"]}}, "cannot prune budget"),
    ],
)
def test_unsupported_kinds_fail_before_training(pruning, fragment, tmp_path):
    out_dir = tmp_path / "never"
    with pytest.raises(RecipeError) as info:
        PaKDTrainer(model=tiny_resnet(), args=_args(out_dir), train_dataset=_image_dataset(8),
                    recipe=_recipe(pruning, False))
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert "ResNet" in message and "supported kinds: hidden" in message and "layers" in message
    assert not out_dir.exists()


def test_per_layer_shapes_need_a_family_with_generated_code(tmp_path):
    with pytest.raises(RecipeError, match="generated modeling code, which exists for bert, roberta, vit but not 'resnet'"):
        PaKDTrainer(model=tiny_resnet(), args=_args(tmp_path / "never"), train_dataset=_image_dataset(8),
                    recipe=_recipe({"layers": {"keep": 3}, "uniform": False}, False))
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------- export
_RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from transformers import AutoModelForImageClassification
    out = {}
    for job in json.loads(sys.argv[1]):
        model = AutoModelForImageClassification.from_pretrained(job["dir"]).eval()
        saved = torch.load(job["io"], weights_only=True)
        with torch.no_grad():
            y = model(**saved["inputs"]).logits
        out[job["dir"]] = [type(model).__name__, float((y - saved["logits"]).abs().max())]
    assert not any(m.startswith("pakd_hf") for m in sys.modules)
    print("RESULT" + json.dumps(out))
    """
)
EXPORTS = [(t, k) for t in TYPES for k in KINDS] + [(t, "stem") for t in TYPES] + [(t, "trainer") for t in TYPES]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """Compact + save every kind of both block types (and the trainer's students); ONE fresh stock
    process reloads them all."""
    root = tmp_path_factory.mktemp("resnet-pruned")
    jobs, folders = [], {}
    inputs = images()
    for layer_type, kind in EXPORTS:
        if kind == "trainer":
            m = trained[layer_type]["student"].eval()
        elif kind == "stem":
            m = tiny_resnet(layer_type, embedding=8)
            compact(m, _select(m, hidden=0.5, layers=3))
        else:
            m = tiny_resnet(layer_type)
            compact(m, _select(m, **KINDS[kind]))
        d = root / f"{layer_type}-{kind}"
        save_pruned(m, d)
        io = root / f"{layer_type}-{kind}.pt"
        torch.save({"inputs": inputs, "logits": out(m, inputs)}, io)
        jobs.append({"dir": str(d), "io": str(io)})
        folders[(layer_type, kind)] = (d, m)
    return folders, stock_result(_RELOAD, jobs, cwd=root, timeout=300)


@pytest.mark.parametrize("layer_type,kind", EXPORTS)
def test_stock_reload_in_fresh_process(exported, layer_type, kind):
    folders, results = exported
    d, m = folders[(layer_type, kind)]
    cls_name, diff = results[str(d)]
    assert cls_name == "ResNetForImageClassification"
    assert diff <= TOL, f"{layer_type}/{kind}: stock reload differs by {diff}"
    verify_against_config(d)
    assert load_structure(d) == Structure.from_model(m)
    assert json.loads((d / "pakd.json").read_text())["family"] == "resnet"


def test_verify_against_config_catches_contradictions(exported, tmp_path):
    import shutil

    folders, _ = exported
    src, _ = folders[("bottleneck", "hidden+layers")]
    cfg = json.loads((src / "config.json").read_text())
    assert (cfg["hidden_sizes"], cfg["depths"]) == ([8, 16], [1, 1])
    for key, value, match in (("hidden_sizes", [16, 16], "shape"), ("depths", [2, 1], "depths")):
        bad = tmp_path / key
        shutil.copytree(src, bad)
        (bad / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointMismatchError, match=match):
            verify_against_config(bad)


def test_trainer_saves_a_pruned_resnet_as_a_stock_checkpoint(tmp_path):
    """PaKDTrainer.save_model goes through export: a stock-expressible ResNet needs no custom code."""
    import torch
    from transformers import AutoModelForImageClassification

    from pakd_hf import PaKDTrainer, PaKDTrainingArguments
    from toy import toy_images

    model = tiny_resnet("basic", perturb_norms=False).train()
    recipe = {"name": "r", "task": "image-classification", "stages": [
        {"name": "prune", "steps": 4, "pruning": {"hidden": {"keep_fraction": 0.5}, "layers": {"keep": 3}, "frequency": 2}},
        {"name": "recover", "steps": 2}]}
    args = PaKDTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = PaKDTrainer(model=model, args=args, train_dataset=toy_images(32), recipe=recipe)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    assert not (tmp_path / "student" / "modeling_pakd_resnet.py").exists()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "student").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model.eval()(pixel_values=x).logits, rtol=0, atol=1e-5)
