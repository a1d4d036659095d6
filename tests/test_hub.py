"""Model cards from measured numbers, and pushes of compressed students to the loopback Hub."""

import copy
import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from hub_server import patch_hub_endpoint
from pakd_hf import PaKDTrainer, PaKDTrainingArguments, load_recipe
from pakd_hf.benchmark import REPORT_KEYS, compare_models
import pakd_hf.hub as hub
from pakd_hf.hub import CARD_FIGURE, INTERNAL_FILES, PushError, push_folder, write_card
from toy import toy_dataset

TOKEN, OTHER = "hf_pakd_writer", "hf_someone_else"
EXPECTED_FILES = {"config.json", "model.safetensors", "pakd.json", "pakd_recipe.yaml", "README.md", CARD_FIGURE}


@pytest.fixture(autouse=True)
def _clear_injected_failures(hub_server):
    yield
    hub_server._fail.clear()  # a failure a test injected must not leak into the next one


def accuracy(model, data):
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits
    return (logits.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, trained_teacher):
    """A tiny BERT pruned + distilled by PaKDTrainer, saved, measured against its teacher."""
    from transformers import BertForSequenceClassification

    out = tmp_path_factory.mktemp("compressed")
    teacher = BertForSequenceClassification.from_pretrained(trained_teacher)
    data, test = toy_dataset(256, seed=0), toy_dataset(128, seed=7)
    recipe = {
        "name": "tiny-prune", "task": "text-classification",
        "stages": [
            {"name": "prune", "steps": 24, "learning_rate": 3e-3, "distillation": {"alpha": 0.5},
             "pruning": {"heads": {"keep": 2}, "ffn": {"keep": 32}, "layers": {"keep": 2}, "hidden": {"keep": 16}, "frequency": 4}},
            {"name": "recover", "steps": 24, "learning_rate": 3e-3, "distillation": {"alpha": 0.5}},
        ],
    }
    args = PaKDTrainingArguments(output_dir=str(out / "run"), per_device_train_batch_size=16, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                                 hub_token=TOKEN)  # a token in the args must never be uploaded
    student = copy.deepcopy(teacher)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, recipe=recipe)
    trainer.train()
    trainer.save_model(str(out / "student"))
    torch.save(args, out / "student" / "training_args.bin")  # what Trainer leaves around: must not be pushed

    def make_inputs(indices):
        rows = test[indices]
        return {"input_ids": torch.tensor(rows["input_ids"]), "attention_mask": torch.tensor(rows["attention_mask"])}

    report = compare_models(
        teacher, student, make_inputs, teacher_dir=trained_teacher, student_dir=out / "student", threads=1,
        repeats=5, accuracy=(accuracy(teacher, test), accuracy(student, test)), split="test", n_eval=len(test),
    )
    return dict(out=out, student=student, report=report, trainer=trainer, teacher=teacher, folder=out / "student")


def test_report_has_every_key_with_measured_values(compressed):
    r = compressed["report"]
    assert set(REPORT_KEYS) <= set(r)
    assert r["params_student"] < r["params_teacher"] and r["bytes_student"] < r["bytes_teacher"]
    assert r["size_ratio"] == pytest.approx(r["bytes_teacher"] / r["bytes_student"], rel=1e-3)
    assert r["macs_student"] < r["macs_teacher"]
    assert r["latency_ms_b1_teacher"] > 0 and r["latency_ms_b32_student"] > 0
    assert r["threads"] == 1 and "logical cores" in r["hardware"]


def test_card_renders_measured_numbers_metadata_and_figure(compressed):
    folder, r = compressed["folder"], compressed["report"]
    write_card(folder, r, repo_id="pakd/tiny-bert-pruned", teacher="pakd/tiny-bert-teacher", license="apache-2.0",
               dataset={"id": "toy-count", "name": "Toy counting task"},
               reproduce="pakd compress recipes/examples/tiny-bert-prune.yaml --output-dir out")
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "pakd/tiny-bert-teacher" and meta["license"] == "apache-2.0"
    assert {"pakd", "pruned", "knowledge-distillation", "nlp", "head-pruning", "layer-pruning", "hidden-pruning"} <= set(meta["tags"])
    # The model-index holds the student's own result (the teacher's stays in the body's table).
    results = meta["model-index"][0]["results"]
    assert [(res["dataset"]["split"], m["value"]) for res in results for m in res["metrics"]] == [("test", r["accuracy_student"])]
    assert f"{r['accuracy_teacher']:.4f}" in text
    how_to = text.split("## How to use")[1].split("## How it was made")[0]
    assert "'pakd/tiny-bert-pruned'" in how_to and str(folder) not in text  # the repo id, never the local folder
    # The numbers in the body are the report's, formatted.
    assert f"{r['params_teacher']:,}" in text and f"{r['params_student']:,}" in text
    assert f"{r['latency_ms_b1_student']:.2f}" in text and r["hardware"] in text
    assert "trust_remote_code" not in text.split("## How to use")[1].split("## How it was made")[0].split("```")[1]
    assert "name: tiny-prune" in text  # the recipe block
    assert f"![accuracy vs latency of the teacher and the student]({CARD_FIGURE})" in text
    png = (folder / CARD_FIGURE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_card_lists_validation_and_test_results_and_names_a_placeholder_without_a_repo(compressed, tmp_path):
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(compressed["folder"], folder)
    r = {**compressed["report"], "accuracy_teacher_validation": 0.91, "accuracy_student_validation": 0.9,
         "accuracy_kept_validation": 0.9 / 0.91, "n_validation": 64}
    write_card(folder, r, dataset={"id": "rotten-tomatoes", "name": "Rotten Tomatoes snippets",
                                   "note": "Split by pakd-hf: not comparable with published figures."})
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    found = {res["dataset"]["split"]: m["value"] for res in meta["model-index"][0]["results"] for m in res["metrics"]}
    assert found == {"validation": 0.9, "test": r["accuracy_student"]}
    assert "accuracy (validation, n=64)" in text and "not comparable with published figures" in text
    assert "from_pretrained('<namespace>/" in text and str(tmp_path) not in text
    # A run that drew its training examples by a column says how, with the counts it corrected.
    write_card(folder, {**r, "balance_by": {"column": "engine", "examples": {"espeak-ng": 8064, "festival": 1152}}},
               dataset={"id": "speech-commands-synth", "note": "Synthesised."})
    text = (folder / "README.md").read_text()
    assert ("Synthesised. The pruning and distillation stages drew every value of `engine` equally often "
            "(training examples per value: espeak-ng 8,064, festival 1,152).") in text
    # A smoke run says so, and puts no results in the model-index.
    write_card(folder, {**r, "quick": True}, dataset={"id": "rotten-tomatoes"})
    text = (folder / "README.md").read_text()
    assert "Smoke run" in text and "mean nothing" in text
    assert "model-index" not in text.split("---")[1]


def test_card_publishes_no_local_folder(compressed, tmp_path):
    """Commands, a teacher or data set loaded from a folder and the recipe's paths are typed with
    this machine's folders; the card (a public Hub page) shows their last parts, and its metadata
    names Hub ids only."""
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(compressed["folder"], folder)
    private = tmp_path / "private space"
    (private / "my-teacher").mkdir(parents=True)
    (private / "my-data").mkdir()
    recipe = folder / "pakd_recipe.yaml"
    recipe.write_text(recipe.read_text() + f"# the teacher was\nnote: '{private}/my-teacher'  # kept\n")
    r = {**compressed["report"], "accuracy_student_validation": 0.9,
         "reproduce": f"pakd compress {shlex.quote(str(private / 'r.yaml'))} --output-dir={shlex.quote(str(private / 'out'))} --seed 1"}
    stats = {"mean": 0.9, "sd": 0.0, "worst": 0.9, "n": 1}
    summary = {"command": f"pakd ablate r.yaml --output-dir {shlex.quote(str(private / 'abl'))} --seeds 0,",
               "arms": {"pakd": {"validation": stats, "test": stats}}}
    write_card(folder, r, teacher=str(private / "my-teacher"), dataset={"id": str(private / "my-data")}, ablation=summary)
    text = (folder / "README.md").read_text()
    assert "private" not in text and str(tmp_path) not in text
    assert "pakd compress r.yaml --output-dir=out --seed 1" in text and "a local model (my-teacher)" in text
    assert "--output-dir abl --seeds 0," in text and "note: my-teacher\n" in text
    meta = yaml.safe_load(text.split("---")[1])
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "my-data"
    # A Hub id stays the base model, linked, and so does a folder of the Hub's cache;
    # relative paths in the command stay as typed.
    cached = private / "hub" / "models--pakd--tiny-bert-teacher" / "snapshots" / "0123abc"
    cached.mkdir(parents=True)
    for teacher in ("pakd/tiny-bert-teacher", str(cached)):
        write_card(folder, {**r, "reproduce": "pakd compress recipes/x.yaml --output-dir runs/x"}, teacher=teacher)
        text = (folder / "README.md").read_text()
        assert yaml.safe_load(text.split("---")[1])["base_model"] == "pakd/tiny-bert-teacher"
        assert "pakd compress recipes/x.yaml --output-dir runs/x" in text and "private" not in text
        assert "[pakd/tiny-bert-teacher](https://huggingface.co/pakd/tiny-bert-teacher)" in text


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mode", ["lfs", "regular"])
def test_push_and_pull_round_trip(compressed, hub_server, monkeypatch, mode):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=(mode == "lfs"))
    monkeypatch.setattr(hub_server, "regular_only", mode == "regular")
    folder = compressed["folder"]
    if not (folder / "README.md").is_file():
        write_card(folder, compressed["report"], repo_id="pakd/x", dataset={"id": "toy"})
    repo = f"pakd/tiny-{mode}"
    push_folder(folder, repo, token=TOKEN)
    stored = set(hub_server.files(repo, "main"))
    assert stored - {".gitattributes"} == EXPECTED_FILES
    if mode == "lfs":
        assert "model.safetensors" in hub_server.lfs_paths(repo)
    reloaded = AutoModelForSequenceClassification.from_pretrained(repo, token=TOKEN).eval()
    ids = torch.tensor(toy_dataset(4, seed=3)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, compressed["student"].eval()(input_ids=ids).logits)
    card = ModelCard.load(repo, token=TOKEN)
    assert card.data.pipeline_tag == "text-classification" and card.data.eval_results
    assert {e.metric_value for e in card.data.eval_results} == {compressed["report"]["accuracy_student"]}
    card.validate()


def test_trainer_push_to_hub_uploads_only_the_student(compressed, hub_server, monkeypatch):
    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    trainer = compressed["trainer"]
    monkeypatch.setattr(trainer.args, "hub_model_id", "pakd/from-trainer")
    trainer.push_to_hub(report=compressed["report"])
    stored = set(hub_server.files("pakd/from-trainer", "main")) - {".gitattributes"}
    assert {"model.safetensors", "config.json", "pakd.json", "pakd_recipe.yaml", "README.md"} <= stored
    assert not any(n.endswith((".bin", ".pt")) or "projection" in n or "checkpoint" in n or "state" in n for n in stored)
    for content in hub_server.files("pakd/from-trainer", "main").values():
        assert TOKEN.encode() not in content


@pytest.mark.parametrize(
    "case, fragment",
    [("no-token", "no Hugging Face token"), ("401", "rejected the token (401)"), ("403", "no write access"),
     ("500", "failed (500)"), ("500-preupload", "failed (500)"), ("stall", "did not answer within 1 s"),
     ("unreachable", "cannot reach the Hub")],
)
def test_push_errors_are_clear_and_lose_nothing(compressed, hub_server, monkeypatch, case, fragment):
    hub_server.add_user("pakd", TOKEN)
    hub_server.add_user("someone", OTHER)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(compressed["out"] / "no-token-here"))
    folder = compressed["folder"]
    before = _tree_digest(folder)
    token, repo = TOKEN, f"pakd/failing-{case}"
    if case == "no-token":
        token = None
    elif case == "401":
        hub_server.fail_next("401")
    elif case == "403":
        token = OTHER  # someone else's namespace
    elif case in ("500", "500-preupload"):  # the Hub fails the commit, or the upload before it
        hub_server.fail_next("500-commit" if case == "500" else "500-preupload", times=1000)
        import huggingface_hub.utils._http as http

        # The client retries 5xx with 1-8 s back-off, and the push its commit: skip the waiting, keep the retries.
        monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
        monkeypatch.setattr(hub, "_wait", lambda seconds: None)
    elif case == "stall":  # the commit request is read and never answered
        hub_server.fail_next("stall-commit", times=10)
        monkeypatch.setattr(hub, "PUSH_TIMEOUT", 1.0)
        import huggingface_hub.utils._http as http

        monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    elif case == "unreachable":
        import socket

        with socket.socket() as s:  # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        patch_hub_endpoint(monkeypatch, dead, disable_xet=True)
    def uploads():  # commits that carry files (creating a repo makes an empty initial commit)
        return [c for c in hub_server.commits(repo) if c.files] if repo in hub_server.repos else []

    from huggingface_hub import get_session

    hooks = list(get_session().event_hooks["request"])
    commits = len(uploads())
    with pytest.raises(PushError) as info:
        push_folder(folder, repo, token=token)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert _tree_digest(folder) == before
    assert len(uploads()) == commits == 0
    if case in ("500", "500-preupload"):  # the injected failures were met (the client retried into them)
        assert hub_server._fail.get("500-commit" if case == "500" else "500-preupload", 0) < 1000
    if case == "500":  # the commit was tried COMMIT_TRIES times, then given up
        assert hub_server._fail["500-commit"] == 1000 - hub.COMMIT_TRIES
        assert f"after {hub.COMMIT_TRIES} tries" in str(info.value)
    if case in ("500", "500-preupload", "stall"):  # the repository was created by this push, then the upload failed
        assert "it created was deleted again" in str(info.value) and repo not in hub_server.repos
    assert get_session().event_hooks["request"] == hooks  # the push's timeout left the user's client as it was


def test_push_tries_the_commit_again_when_the_hub_fails_for_a_moment(compressed, hub_server, monkeypatch):
    """create_commit posts once; two 500s on the commit cost two waits (1 s, 2 s), not the push.
    A commit the Hub stored behind a 500 leaves the next try nothing to commit: one commit."""
    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    waits = []
    monkeypatch.setattr(hub, "_wait", waits.append)

    def uploads(repo):
        return [c for c in hub_server.commits(repo) if c.files]

    hub_server.fail_next("500-commit", times=2)
    push_folder(compressed["folder"], "pakd/flaky", token=TOKEN)
    assert waits == [1, 2] and "500-commit" not in hub_server._fail
    assert len(uploads("pakd/flaky")) == 1 and "config.json" in uploads("pakd/flaky")[0].files
    waits.clear()
    hub_server.fail_next("500-after-commit", times=1)
    url = push_folder(compressed["folder"], "pakd/stored-then-failed", token=TOKEN)
    assert waits == [1] and "500-after-commit" not in hub_server._fail
    (stored,) = uploads("pakd/stored-then-failed")  # not a second commit of the same files
    assert stored.oid in url
    assert hub_server.files("pakd/stored-then-failed") == hub_server.files("pakd/flaky")


def test_a_file_gone_before_the_push_reads_it_creates_no_repository(compressed, hub_server, monkeypatch):
    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    listed = hub._files_to_push(compressed["folder"])
    monkeypatch.setattr(hub, "_files_to_push", lambda folder: listed + ["gone.json"])
    with pytest.raises(PushError, match=r"cannot read .*nothing was pushed") as info:
        push_folder(compressed["folder"], "pakd/never", token=TOKEN)
    assert "\n" not in str(info.value) and "pakd/never" not in hub_server.repos


def test_failed_push_keeps_a_repository_it_did_not_create(compressed, hub_server, monkeypatch):
    import huggingface_hub.utils._http as http
    from huggingface_hub import HfApi

    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    repo = "pakd/already-there"
    HfApi().create_repo(repo, token=TOKEN)
    hub_server.fail_next("500-commit", times=10)
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(hub, "_wait", lambda seconds: None)
    with pytest.raises(PushError, match=r"failed \(500\)") as info:
        push_folder(compressed["folder"], repo, token=TOKEN)
    assert "deleted" not in str(info.value) and repo in hub_server.repos


def test_cli_card_and_push(compressed, hub_server, monkeypatch, tmp_path, capsys):
    import shutil

    from pakd_hf.cli import main

    out = tmp_path / "out"
    shutil.copytree(compressed["folder"], out / "student")
    (out / "student" / "README.md").unlink(missing_ok=True)
    report = dict(compressed["report"], teacher="pakd/tiny-teacher", license="mit", dataset={"id": "toy", "name": "Toy"})
    (out / "report.json").write_text(json.dumps(report))
    assert main(["card", str(out)]) == 0
    text = (out / "student" / "README.md").read_text()
    assert "license: mit" in text and f"{report['params_student']:,}" in text

    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the CLI takes the token from the environment or the login cache only
    assert main(["push", str(out), "--repo-id", "pakd/cli-push", "--private"]) == 0
    assert set(hub_server.files("pakd/cli-push", "main")) - {".gitattributes"} == EXPECTED_FILES
    assert hub_server.repos["pakd/cli-push"].private
    assert main(["push", str(out), "--repo-id", "someone/else"]) == 1
    # No token on the command line (the process list shows it): refused with a pointer, before any upload.
    assert main(["push", str(out), "--repo-id", "pakd/x", "--token", TOKEN]) == 2
    assert main(["push", str(out), "--repo-id", "a/b/c"]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN" in err and "NAMESPACE/NAME" in err and "pakd/x" not in hub_server.repos
    assert main(["card", str(tmp_path / "nothing")]) == 2


def test_pakd_internal_files_are_never_pushed(compressed, hub_server, monkeypatch, tmp_path):
    """A checkpoint folder holds pakd's training state beside the weights: the allowlist skips it."""
    import shutil

    from pakd_hf import checkpoints
    from pakd_hf.prune import session

    assert {checkpoints.STATE_FILENAME, session.MASKS_FILENAME, session.IMPORTANCE_FILENAME,
            checkpoints.PROJECTIONS_FILENAME} <= INTERNAL_FILES
    folder = tmp_path / "checkpoint-like"
    shutil.copytree(compressed["folder"], folder)
    for name in INTERNAL_FILES:
        (folder / name).write_bytes(b"internal")
    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    push_folder(folder, "pakd/checkpoint-like", token=TOKEN)
    stored = set(hub_server.files("pakd/checkpoint-like", "main"))
    assert not stored & INTERNAL_FILES and "model.safetensors" in stored


def test_push_publishes_no_local_folder(compressed, hub_server, monkeypatch, tmp_path):
    """The pushed pakd_recipe.yaml and pakd.json name a local teacher and data set by their last
    part, as the card does; the files on disk keep the run's paths; files without a path go up
    byte for byte."""
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(compressed["folder"], folder)
    private = tmp_path / "private space"
    deep = private / "a folder name long enough" / "that Recipe.save wraps it" / "onto the next line"
    (deep / "my-teacher").mkdir(parents=True)
    raw = yaml.safe_load((folder / "pakd_recipe.yaml").read_text())
    raw["teacher"] = {"model": str(deep / "my-teacher")}
    raw["data"] = {"dataset": str(private / "my-data")}
    load_recipe(raw).save(folder)
    assert str(deep) not in (folder / "pakd_recipe.yaml").read_text()  # wrapped: a line-by-line rewrite misses it
    info = json.loads((folder / "pakd.json").read_text())
    info["teacher"]["name_or_path"] = str(deep / "my-teacher")
    (folder / "pakd.json").write_text(json.dumps(info, indent=2) + "\n")
    write_card(folder, compressed["report"], repo_id="pakd/private-paths", dataset={"id": "toy"})
    before = _tree_digest(folder)
    hub_server.add_user("pakd", TOKEN)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    push_folder(folder, "pakd/private-paths", token=TOKEN)
    assert _tree_digest(folder) == before
    stored = hub_server.files("pakd/private-paths", "main")
    assert set(stored) - {".gitattributes"} == EXPECTED_FILES
    for name in ("pakd_recipe.yaml", "pakd.json"):
        assert b"private" not in stored[name] and str(tmp_path).encode() not in stored[name]
    assert yaml.safe_load((folder / "pakd_recipe.yaml").read_text())["teacher"]["model"] == str(deep / "my-teacher")
    pushed = yaml.safe_load(stored["pakd_recipe.yaml"])
    assert pushed["teacher"]["model"] == "my-teacher" and pushed["data"]["dataset"] == "my-data"
    assert {k: v for k, v in pushed.items() if k not in ("teacher", "data")} == \
        {k: v for k, v in raw.items() if k not in ("teacher", "data")}
    assert json.loads(stored["pakd.json"])["teacher"]["name_or_path"] == "my-teacher"
    assert {k: v for k, v in json.loads(stored["pakd.json"]).items() if k != "teacher"} == \
        {k: v for k, v in info.items() if k != "teacher"}
    for name in ("config.json", "README.md"):
        assert stored[name] == (folder / name).read_bytes()
