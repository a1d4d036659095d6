"""`pakd compress --quick` end to end for vision (real Fashion-MNIST, a tiny ViT trained from
scratch) and speech (synthesised keywords, a tiny Whisper encoder), each student checked in a
fresh process with a stock transformers ``pipeline`` against the logged accuracy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pakd_hf.benchmark import REPORT_KEYS
from pakd_hf.cli import main
from pakd_hf.pipeline.data.fashion_mnist import FILES, FOLDER
from toy import needs, run_stock, save_tiny_whisper



def _stock(script: str) -> str:
    """Run a script in a fresh stock interpreter; its last stdout line."""
    return run_stock(script).strip().splitlines()[-1]


def _check_outputs(out: Path, preprocessor: str) -> dict:
    student = out / "student"
    for name in ("config.json", "model.safetensors", preprocessor, "pakd.json", "pakd_recipe.yaml", "README.md"):
        assert (student / name).is_file(), name
    assert (out / "teacher" / "config.json").is_file() and (out / "teacher" / preprocessor).is_file()
    assert not (student / "training_args.bin").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir()), "temporary folders left behind"
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["size_ratio"] > 1 and report["mac_ratio"] > 1 and report["params_student"] < report["params_teacher"]
    assert report["speedup_b1"] > 0 and report["speedup_b32"] > 0
    assert 0 <= report["accuracy_student"] <= 1 and 0 < report["accuracy_teacher"] <= 1
    assert report["threads"] == 1 and report["split"] == "test" and report["quick"] is True
    return report


def _quick_compress(root: Path, recipe: dict):
    """`pakd compress --quick` of `recipe` into root/out; (root, recipe path, out)."""
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "out"
    assert main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1"]) == 0
    return root, path, out


# ---- vision ---------------------------------------------------------------------------
needs_fashion_mnist = needs(
    not all((FOLDER / name).is_file() for pair in FILES.values() for name in pair),
    reason="Fashion-MNIST files missing: apt-get install -y dataset-fashion-mnist",
)

VISION_RECIPE = {
    "name": "tiny-fmnist", "task": "image-classification",
    "data": {"dataset": "fashion-mnist"},
    "teacher": {
        "config": {"model_type": "vit", "image_size": 28, "patch_size": 7, "hidden_size": 32, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "intermediate_size": 64},
        "fine_tune": {"epochs": 1, "learning_rate": 2e-3, "batch_size": 32},
        "license": "mit",
    },
    "training": {"batch_size": 32, "eval_batch_size": 64, "logging_steps": 4},
    "stages": [
        {"name": "prune", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5, "hidden": {}},
         "pruning": {"ffn": {"keep": 32}, "layers": {"keep": 2}, "heads": {"keep": 2}, "hidden": {"keep": 16}}},
        {"name": "recover", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}},
    ],
}


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    return _quick_compress(tmp_path_factory.mktemp("compress-vision"), VISION_RECIPE)


@needs_fashion_mnist
def test_vision_outputs_report_and_shapes(vision_run):
    _, _, out = vision_run
    report = _check_outputs(out, "preprocessor_config.json")
    assert report["n_eval"] == 128 and report["task"] == "image-classification"
    assert report["teacher"] is None and "vit" in report["teacher_description"]  # trained here: no base model
    config = json.loads((out / "student" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (2, 16, 2, 32)
    assert config["num_channels"] == 3 and config["id2label"]["0"] == "T-shirt/top"
    processor = json.loads((out / "student" / "preprocessor_config.json").read_text())
    assert processor["do_convert_rgb"] is True and processor["size"] == {"height": 28, "width": 28}
    card = (out / "student" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "AutoImageProcessor" in card


@needs_fashion_mnist
def test_vision_student_in_a_stock_pipeline_gives_the_logged_accuracy(vision_run):
    """pipeline("image-classification") on the gray PIL test images (it converts them to RGB)."""
    root, path, out = vision_run
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import _quick_recipe, load_data

    test = load_data(_quick_recipe(load_recipe(path)), quick=True)["test"]
    images = root / "images"
    images.mkdir()
    names = test.features["label"].names
    gold = []
    for i, row in enumerate(test):
        assert row["image"].mode == "L"
        row["image"].save(images / f"{i:04d}.png")
        gold.append(names[row["label"]])
    (root / "gold.json").write_text(json.dumps(gold))
    accuracy = _stock(
        "import json, glob\n"
        "from PIL import Image\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('image-classification', model={str(out / 'student')!r}, device=-1)\n"
        f"paths = sorted(glob.glob({str(images / '*.png')!r}))\n"
        f"gold = json.load(open({str(root / 'gold.json')!r}))\n"
        "preds = clf([Image.open(p) for p in paths], top_k=1)\n"
        "print(sum(p[0]['label'] == g for p, g in zip(preds, gold)) / len(gold))\n"
    )
    report = json.loads((out / "report.json").read_text())
    assert float(accuracy) == pytest.approx(report["accuracy_student"], abs=1e-5)


@needs_fashion_mnist
def test_vision_benchmark_without_data_uses_noise_images(vision_run, tmp_path):
    _, _, out = vision_run
    target = tmp_path / "bench.json"
    assert main(["benchmark", str(out / "teacher"), str(out / "student"), "--json", str(target), "--threads", "1", "--repeats", "3",
                 "--min-seconds", "0"]) == 0
    bench = json.loads(target.read_text())
    assert bench["size_ratio"] > 1 and bench["speedup_b1"] > 0 and "accuracy_student" not in bench
    # no minimum time: exactly --repeats rounds, and at batch 1 one per noise image (4)
    assert bench["latency_repeats_b32"] == 3 and bench["latency_repeats_b1"] == 4 == bench["latency_examples"]


RESNET_RECIPE = {
    "name": "tiny-fmnist-resnet", "task": "image-classification",
    "data": {"dataset": "fashion-mnist", "augment": {"shift": 0.1, "flip": 0.5, "erase": 0.25}},
    "teacher": {
        "config": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 2],
                   "layer_type": "basic"},
        "processor": {"size": {"height": 32, "width": 32}},
        "fine_tune": {"epochs": 1, "learning_rate": 2e-3, "batch_size": 32},
        "license": "mit",
    },
    "training": {"batch_size": 32, "eval_batch_size": 64, "logging_steps": 4},
    "stages": [
        {"name": "prune", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5},
         "pruning": {"layers": {"keep": 2}, "hidden": {"keep": 12}, "frequency": 2}},
        {"name": "recover", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.8}},
    ],
}


@needs_fashion_mnist
def test_resnet_with_augmented_training_images_compresses_to_a_stock_model(tmp_path):
    """A CNN teacher trained from a config on randomly changed images: the student is a stock
    ResNet (one block per stage, half of each stream), its card has the structure figure (no
    heads to draw), and a stock pipeline on the plain test images gives the logged accuracy."""
    from pakd_hf.hub import CARD_FIGURE

    root, path, out = _quick_compress(tmp_path, RESNET_RECIPE)
    report = _check_outputs(out, "preprocessor_config.json")
    config = json.loads((out / "student" / "config.json").read_text())
    assert (config["depths"], config["hidden_sizes"], config["embedding_size"]) == ([1, 1], [4, 8], 4)
    card = (out / "student" / "README.md").read_text()
    assert (out / "student" / CARD_FIGURE).is_file() and CARD_FIGURE in card
    # a CNN's card speaks of blocks and channels, not of attention heads and FFN widths
    assert "2 of 4 residual blocks; 12 of 24 channels" in card and "| block (original index) | inner channels kept |" in card
    assert "attention heads" not in card and "channel-pruning" in card
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import _quick_recipe, load_data

    test = load_data(_quick_recipe(load_recipe(path)), quick=True)["test"]
    np.save(root / "pixels.npy", np.stack([np.asarray(row["image"]) for row in test]))
    accuracy = _stock(
        "import numpy as np\n"
        "from PIL import Image\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('image-classification', model={str(out / 'student')!r}, device=-1)\n"
        f"images = [Image.fromarray(a) for a in np.load({str(root / 'pixels.npy')!r})]\n"
        "ids = {v: int(k) for k, v in clf.model.config.id2label.items()}\n"
        f"gold = {list(test['label'])!r}\n"
        "preds = clf(images, top_k=1)\n"
        "print(sum(ids[p[0]['label']] == g for p, g in zip(preds, gold)) / len(gold))\n"
    )
    assert float(accuracy) == pytest.approx(report["accuracy_student"], abs=1e-5)


def test_config_teacher_errors_come_before_any_output(tmp_path):
    """A misspelt config field or a 1-channel ViT: one line naming the field, no output folder."""
    for mutate, field in (({"hiden_size": 32}, "teacher.config.hiden_size"), ({"num_channels": 1}, "teacher.config.num_channels")):
        recipe = json.loads(json.dumps(VISION_RECIPE))
        recipe["teacher"]["config"].update(mutate)
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        proc = subprocess.run([sys.executable, "-m", "pakd_hf.cli", "compress", str(path), "--output-dir", str(tmp_path / "out")],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert field in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()


# ---- speech ---------------------------------------------------------------------------
needs_espeak = needs(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox synthesise the keyword clips: apt-get install -y espeak-ng sox",
)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A randomly initialised 4-layer Whisper encoder (d_model 32) for 1 s clips, saved with
    the same 1 s WhisperFeatureExtractor the offline tiny.en teacher uses."""
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def speech_run(tiny_whisper, tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-speech")
    recipe = {
        "name": "tiny-kws", "task": "audio-classification",
        # the clips of every training batch moved and masked (teacher stage and PaKD stages);
        # the stock pipeline test below shows that scoring reads them as they are
        "data": {"dataset": "speech-keywords", "augment": {"time_shift": 0.1, "time_mask": 0.1, "freq_mask": 0.1}},
        # keep_best: a smoke run scores validation every half of its teacher steps and keeps the best
        "teacher": {"model": str(tiny_whisper), "fine_tune": {"epochs": 1, "learning_rate": 2e-3, "batch_size": 16,
                                                              "keep_best": True}},
        # the PaKD stages draw every training voice equally often (its rows are the encoded set's)
        "training": {"batch_size": 16, "eval_batch_size": 32, "logging_steps": 4, "balance_by": "voice"},
        "stages": [
            {"name": "prune", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5, "hidden": {}},
             "pruning": {"ffn": {"keep": 32}, "layers": {"keep": 2}, "heads": {"keep": 2}, "hidden": {"keep": 16}}},
            {"name": "recover", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}},
        ],
    }
    return _quick_compress(root, recipe)


@needs_espeak
def test_speech_outputs_report_and_shapes(speech_run):
    _, _, out = speech_run
    # the teacher kept its best scoring on validation: the saved teacher's own score is the curve's best
    teacher = json.loads((out / "teacher" / "pakd_teacher.json").read_text())
    curve = teacher["validation_curve"]
    assert len(curve) == 2 and [e for e, _ in curve] == sorted(e for e, _ in curve)
    # Trainer's record of the step it loaded back names the curve's best point, and the saved
    # teacher scores what the curve says for that point
    assert teacher["best_epoch"] == max(curve, key=lambda point: point[1])[0]
    assert teacher["accuracy_validation"] == pytest.approx(dict(map(tuple, curve))[teacher["best_epoch"]], abs=1e-6)
    assert not (out / ".teacher-run").exists()  # its checkpoints go with the run folder
    report = _check_outputs(out, "preprocessor_config.json")
    assert report["task"] == "audio-classification" and report["n_eval"] > 0
    balance = report["balance_by"]
    assert balance["column"] == "voice" and len(balance["examples"]) > 1
    assert sum(balance["examples"].values()) == report["train_examples"]
    assert yaml.safe_load((out / "student" / "pakd_recipe.yaml").read_text())["training"]["balance_by"] == "voice"
    assert "drew every value of `voice` equally often" in (out / "student" / "README.md").read_text()
    config = json.loads((out / "student" / "config.json").read_text())
    assert (config["encoder_layers"], config["d_model"], config["encoder_attention_heads"], config["encoder_ffn_dim"]) == (2, 16, 2, 32)
    assert config["id2label"]["0"] == "yes" and config["max_source_positions"] == 50
    assert "pipeline_tag: audio-classification" in (out / "student" / "README.md").read_text()


@needs_espeak
def test_speech_student_in_a_stock_pipeline_gives_the_logged_accuracy(speech_run):
    """pipeline("audio-classification") on the 16 kHz test clips as plain float arrays."""
    root, path, out = speech_run
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import _quick_recipe, load_data

    test = load_data(_quick_recipe(load_recipe(path)), quick=True)["test"]
    np.save(root / "clips.npy", np.asarray(test["audio"], dtype=np.float32))
    names = test.features["label"].names
    (root / "gold.json").write_text(json.dumps([names[i] for i in test["label"]]))
    accuracy = _stock(
        "import json\nimport numpy as np\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('audio-classification', model={str(out / 'student')!r}, device=-1)\n"
        f"clips = np.load({str(root / 'clips.npy')!r})\n"
        f"gold = json.load(open({str(root / 'gold.json')!r}))\n"
        "preds = [clf({'raw': clip, 'sampling_rate': 16000}, top_k=1)[0]['label'] for clip in clips]\n"
        "print(sum(p == g for p, g in zip(preds, gold)) / len(gold))\n"
    )
    report = json.loads((out / "report.json").read_text())
    assert float(accuracy) == pytest.approx(report["accuracy_student"], abs=1e-5)


@needs_espeak
def test_teacher_with_other_labels_and_no_teacher_stage_is_refused_before_any_output(tiny_whisper, tmp_path, capsys):
    """The tiny Whisper's head predicts 2 labels; the keywords are 10: without a fine_tune
    block that is a one-line error naming teacher.fine_tune, and no output folder."""
    recipe = {
        "name": "no-head", "task": "audio-classification", "data": {"dataset": "speech-keywords"},
        "teacher": {"model": str(tiny_whisper)},
        "stages": [{"name": "s", "steps": 1, "distillation": {"alpha": 0.5}}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["compress", str(path), "--output-dir", str(tmp_path / "out"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "teacher.fine_tune" in err and "add a fine_tune block" in err
    assert not (tmp_path / "out").exists()
