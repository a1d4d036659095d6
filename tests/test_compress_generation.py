"""`pakd compress --quick` for a causal LM (task text-generation): a tiny Qwen2-shaped teacher
(GQA, tied embeddings) trained from scratch with a BPE tokenizer trained on the offline corpus,
pruned by KV groups, FFN, layers and hidden width while distilling token by token. The saved
student is checked in a fresh stock process: perplexity recomputed by transformers' own loss
equals the report's, ``generate()`` and ``pipeline("text-generation")`` agree."""

import json

import pytest
import yaml

from pakd_hf.cli import main
from pakd_hf.recipe import RecipeError, load_recipe
from toy import stock_result

RECIPE = {
    "name": "tiny-lm", "task": "text-generation",
    "data": {"dataset": "rotten-tomatoes-text", "max_length": 32},
    "teacher": {
        "config": {"model_type": "qwen2", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
                   "max_position_embeddings": 64, "tie_word_embeddings": True},
        "fine_tune": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16},
        "license": "mit",
    },
    "training": {"batch_size": 16, "eval_batch_size": 32, "logging_steps": 4},
    "stages": [
        {"name": "prune", "epochs": 1, "learning_rate": 2e-3,
         "distillation": {"temperature": 1.0, "alpha": 0.5, "hidden": {}, "chunk_size": 100},
         "pruning": {"layers": {"keep": 2}, "ffn": {"keep": 32}, "heads": {"keep": 1}, "hidden": {"keep": 16}}},
        {"name": "recover", "epochs": 1, "learning_rate": 2e-3,
         "distillation": {"temperature": 1.0, "alpha": 0.5, "loss": "jsd", "beta": 0.3}},
    ],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-lm")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    out = root / "out"
    assert main(["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1"]) == 0
    return root, path, out


def test_outputs_report_and_config(run):
    _, _, out = run
    student = out / "student"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pakd.json", "README.md"):
        assert (student / name).is_file(), name
    r = json.loads((out / "report.json").read_text())
    for key in ("perplexity_teacher", "perplexity_student", "perplexity_ratio", "perplexity_student_validation",
                "generate_tokens_per_s_teacher", "generate_tokens_per_s_student", "speedup_b32", "size_ratio"):
        assert key in r, key
    assert r["perplexity_student"] > 1 and r["perplexity_teacher"] > 1 and "accuracy_student" not in r
    assert r["generate_new_tokens"] == 64 and r["params_student"] < r["params_teacher"] / 2
    cfg = json.loads((student / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["num_attention_heads"]) == (2, 1, 2)
    assert (cfg["intermediate_size"], cfg["hidden_size"]) == (32, 16)
    assert cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]) == 8  # the head size is kept
    assert len(cfg["layer_types"]) == 2 and cfg["tie_word_embeddings"] is True
    card = (student / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "perplexity (test" in card and "new tokens/s" in card


STOCK = """
import json, math, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
job = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(job["folder"])
model = AutoModelForCausalLM.from_pretrained(job["folder"]).eval()
ids = [i for t in job["texts"] for i in tok(t + tok.eos_token)["input_ids"]]
L = job["block"]
blocks = torch.tensor([ids[i:i + L] for i in range(0, len(ids) - L + 1, L)])
with torch.no_grad():
    loss = model(input_ids=blocks, labels=blocks).loss.item()  # transformers' own shifted mean NLL
prompt = "The film is"
enc = tok(prompt, return_tensors="pt")
with torch.no_grad():
    greedy = model.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
gen = pipeline("text-generation", model=model, tokenizer=tok)
text = gen(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)[0]["generated_text"]
print("RESULT" + json.dumps({"perplexity": math.exp(loss), "greedy": tok.decode(greedy[0], skip_special_tokens=True),
                             "pipeline": text}))
"""


def test_stock_perplexity_generate_and_pipeline(run):
    from pakd_hf.pipeline.compress import load_data

    _, path, out = run
    recipe = load_recipe(path)
    texts = list(load_data(recipe, quick=True)["test"]["text"])  # the split the report's test figures are on
    r = json.loads((out / "report.json").read_text())
    got = stock_result(STOCK, {"folder": str(out / "student"), "texts": texts, "block": 32})
    assert got["perplexity"] == pytest.approx(r["perplexity_student"], rel=1e-4)
    assert got["pipeline"] == got["greedy"] and got["greedy"].startswith("The film is")


def test_benchmark_of_two_lm_folders(run, capsys):
    _, _, out = run
    assert main(["benchmark", str(out / "teacher"), str(out / "student"), "--threads", "1", "--repeats", "2",
                 "--min-seconds", "0", "--json", str(out.parent / "bench.json")]) == 0
    r = json.loads((out.parent / "bench.json").read_text())
    assert r["generate_tokens_per_s_student"] > 0 and "perplexity_student" not in r  # no data: no score
    assert "generate (tok/s, b1)" in capsys.readouterr().out
    # The prefill is timed and counted as generate() runs it: next-token logits of the last position only.
    from transformers import AutoModelForCausalLM

    from pakd_hf.measure import count_macs
    from pakd_hf.pipeline.tasks import ADAPTERS, default_data, sample_examples

    adapter, spec = ADAPTERS["text-generation"], default_data()
    student = AutoModelForCausalLM.from_pretrained(out / "student").eval()
    tok = adapter.load_preprocessor(out / "student")
    example = adapter.benchmark_examples(sample_examples("text-generation", tok), spec)[0]
    encoded = adapter.encode_batch(tok, [example], spec)
    every_position = count_macs(student, encoded)
    assert r["macs_student"] == count_macs(student, {**encoded, "logits_to_keep": 1}) < every_position


def test_tokenizer_is_deterministic_and_splits_are_disjoint():
    from pakd_hf.pipeline.data.rotten_tomatoes import load_rotten_tomatoes_text
    from pakd_hf.pipeline.tasks import TextGeneration

    data = load_rotten_tomatoes_text()
    sets = {k: set(v["text"]) for k, v in data.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"])
    assert not (sets["validation"] & sets["test"]) and len(sets["train"]) == len(data["train"])
    texts = list(data["train"]["text"][:2000])
    a, b = TextGeneration.train_tokenizer(texts, 600), TextGeneration.train_tokenizer(texts, 600)
    assert a.get_vocab() == b.get_vocab() and len(a) == 600
    assert a.decode(a("Ünïcode — tokens")["input_ids"]) == "Ünïcode — tokens"  # byte level: nothing unknown


@pytest.mark.parametrize("change,field", [
    ({"vocabulary": {"at": "start"}}, "vocabulary"),
    ({"export": {"onnx": True}}, "export"),
    ({"stages": [{"name": "s", "steps": 2, "distillation": {"loss": "mse"}}]}, "stages[0].distillation.loss"),
    ({"stages": [{"name": "s", "steps": 2, "distillation": {"attention": {}}}]}, "stages[0].distillation.attention"),
    ({"stages": [{"name": "s", "steps": 2, "distillation": {"loss": "jsd", "beta": 1.0}}]}, "stages[0].distillation.beta"),
])
def test_recipe_refuses_what_causal_lms_do_not_support(change, field):
    with pytest.raises(RecipeError) as err:
        load_recipe({**RECIPE, **change})
    assert err.value.field == field, str(err.value)


def test_token_losses_are_refused_for_classifiers():
    recipe = {"name": "c", "task": "text-classification",
              "stages": [{"name": "s", "steps": 2, "distillation": {"loss": "reverse_kl"}}]}
    with pytest.raises(RecipeError, match="token-level"):
        load_recipe(recipe)


def test_export_of_a_causal_lm_is_one_clear_line(run, capsys):
    _, _, out = run
    assert main(["export", str(out / "student"), "--output-dir", str(out.parent / "onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "causal LM" in err[0] and not (out.parent / "onnx").exists()


def test_per_example_encoding_keeps_eos_labels_when_pad_is_eos():
    """packing: false with a tokenizer whose pad token is its EOS (as Llama / Qwen tokenizers are
    set up): the collator pads labels with -100, so each real EOS stays a label; packing gives
    equal blocks whose every token is a label, and eval_size counts what perplexity scores."""
    from datasets import Dataset, DatasetDict

    from pakd_hf.pipeline.tasks import TextGeneration

    task = TextGeneration()
    texts = ["a short one", "", "a somewhat longer text than the first one is", "   "]
    tok = task.train_tokenizer(texts * 20, 300)
    tok.pad_token = tok.eos_token
    recipe = load_recipe({**RECIPE, "data": {**RECIPE["data"], "packing": False, "max_length": 64}})
    data = DatasetDict({"train": Dataset.from_dict({"text": texts})})
    enc = task.encode_dataset(data, tok, recipe.data)["train"]
    assert len(enc) == 2  # blank texts add nothing
    batch = task.data_collator(tok, recipe.data)([enc[i] for i in range(2)])
    eos = tok.eos_token_id
    short = batch["labels"][0]
    n = int(batch["attention_mask"][0].sum())
    assert short[n - 1].item() == eos and (short[n:] == -100).all() and n < batch["labels"].shape[1]
    assert task.eval_size(Dataset.from_dict({"text": texts}), tok, recipe.data) == sum(len(r) - 1 for r in enc["input_ids"])
    packed = task.encode_dataset(data, tok, load_recipe({**RECIPE, "data": {**RECIPE["data"], "max_length": 4}}).data)["train"]
    blocks, labels = packed[:]["input_ids"], packed[:]["labels"]
    assert blocks.shape[1] == 4 and (labels == blocks).all() and len(packed) == sum(len(r) for r in enc["input_ids"]) // 4
