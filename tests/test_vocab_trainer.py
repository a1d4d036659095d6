"""Vocabulary pruning as a recipe block: the trained student keeps only the training set's
tokens, its saved tokenizer maps text to the new ids, and nothing else changes."""

import json
import random

import pytest
import torch
from datasets import Dataset
from transformers import BertTokenizer

from pakd_hf import PaKDTrainer, PaKDTrainingArguments, RecipeError
from toy import run_stock, tiny_bert

WORDS = "the a cat dog sat on mat big small red blue fox ran walked park in quick brown jumped over lazy".split()
UNUSED = "zebra yak quilt violin xylophone".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    chars = sorted(set("".join(WORDS + UNUSED)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + UNUSED + chars + [f"##{c}" for c in chars]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))})
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.vocab_size == len(dict.fromkeys(vocab)) and tok.is_fast
    return tok


def corpus(tok, n, seed):
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]
    labels = [int("cat" in t.split()) for t in texts]
    enc = tok(texts, padding="max_length", max_length=12, truncation=True)
    return texts, Dataset.from_dict({**enc, "labels": labels})


def run(tok, data, out, vocabulary, **trainer_kw):
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, vocab_size=tok.vocab_size, max_positions=16)
    recipe = {"name": "v", "task": "text-classification", "stages": [{"name": "train", "steps": 12}]}
    if vocabulary:
        recipe["vocabulary"] = {"dropped": "unk"}
    args = PaKDTrainingArguments(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = PaKDTrainer(model=student, args=args, train_dataset=data, processing_class=tok, recipe=recipe, **trainer_kw)
    trainer.train()
    return trainer, student


def assert_stock_logits(folder, texts, expected, tmp_path, one_id_per_row=False):
    """In a fresh process without pakd_hf, stock Auto classes load `folder` and give `expected`."""
    torch.save({"texts": texts, "logits": expected}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoTokenizer, AutoModelForSequenceClassification\n"
        f"tok = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        f"model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}).eval()\n"
        "assert 'pakd_hf' not in sys.modules\n"
        + ("assert len(tok) == model.config.vocab_size, (len(tok), model.config.vocab_size)\n" if one_id_per_row else "")
        + f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(**tok(exp['texts'], padding=True, return_tensors='pt')).logits\n"
        "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max().item()\n"
    )
    run_stock(script)


def test_vocabulary_dataset_decides_which_tokens_stay(tokenizer, tmp_path):
    """Training on a transfer set with extra words, the vocabulary still follows the real data."""
    _, real = corpus(tokenizer, 48, seed=0)
    extra = tokenizer([" ".join(UNUSED[:3])] * 16, padding="max_length", max_length=12, truncation=True)
    transfer = Dataset.from_dict({k: list(real[k]) + extra[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
                                 | {"labels": list(real["labels"]) + [0] * 16})
    trainer, student = run(tokenizer, transfer, tmp_path / "v", vocabulary=True, vocabulary_dataset=real)
    used = {int(i) for row in real["input_ids"] for i in row}
    assert student.config.vocab_size == len(used | set(tokenizer.all_special_ids))
    assert trainer.processing_class("zebra yak")["input_ids"][1:-1] == [trainer.processing_class.unk_token_id] * 2
    # Without it, the transfer set's extra words would have been kept.
    _, student_all = run(tokenizer, transfer, tmp_path / "all", vocabulary=True)
    assert student_all.config.vocab_size == student.config.vocab_size + 3
    with pytest.raises(RecipeError, match="vocabulary_dataset"):
        run(tokenizer, transfer, tmp_path / "bad", vocabulary=True, vocabulary_dataset=Dataset.from_dict({"x": [1]}))


def test_vocabulary_block_prunes_rows_and_keeps_outputs(tokenizer, tmp_path):
    texts, data = corpus(tokenizer, 64, seed=0)
    _, full = run(tokenizer, data, tmp_path / "full", vocabulary=False)
    trainer, pruned = run(tokenizer, data, tmp_path / "vocab", vocabulary=True)
    used = {int(i) for row in data["input_ids"] for i in row}
    assert pruned.config.vocab_size == len(used | set(tokenizer.all_special_ids)) < tokenizer.vocab_size

    # Same training, so the full-vocabulary student on the original ids equals the pruned one
    # on the new tokenizer's ids (for text made of training-set tokens).
    probe = ["the quick brown fox", "a cat sat on the mat", "red dog walked in park"]
    old = tokenizer(probe, padding=True, return_tensors="pt")
    new = trainer.processing_class(probe, padding=True, return_tensors="pt")
    full.eval(), pruned.eval()
    with torch.no_grad():
        expected = full(**old).logits
        torch.testing.assert_close(pruned(**new).logits, expected, rtol=0, atol=1e-5)
    # A token that was dropped maps to [UNK].
    unseen = trainer.processing_class("zebra")["input_ids"]
    assert trainer.processing_class.unk_token_id in unseen

    # evaluate() still takes data tokenized with the original tokenizer (ids are remapped).
    _, eval_data = corpus(tokenizer, 32, seed=1)
    metrics_full = PaKDTrainer(model=full, args=trainer.args, processing_class=tokenizer).evaluate(eval_data)
    metrics = trainer.evaluate(eval_data)
    assert metrics["eval_loss"] == pytest.approx(metrics_full["eval_loss"], abs=1e-5)

    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    record = json.loads((folder / "pakd.json").read_text())["vocabulary"]
    assert record["vocab_size"] == pruned.config.vocab_size and record["vocab_size_original"] == tokenizer.vocab_size
    assert_stock_logits(folder, probe, expected, tmp_path)


def test_vocabulary_block_needs_a_wordpiece_tokenizer(tokenizer, tmp_path):
    _, data = corpus(tokenizer, 8, seed=0)
    recipe = {"name": "v", "task": "text-classification", "stages": [{"name": "t", "steps": 1}], "vocabulary": {}}
    args = PaKDTrainingArguments(output_dir=str(tmp_path / "never"), report_to=[], use_cpu=True)
    with pytest.raises(RecipeError, match="'vocabulary'.*processing_class"):
        PaKDTrainer(model=tiny_bert(hidden=16, layers=1, heads=2, ffn=32, vocab_size=tokenizer.vocab_size), args=args,
                    train_dataset=data, recipe=recipe)
    assert not (tmp_path / "never").exists()
    with pytest.raises(RecipeError, match="for text models"):
        from pakd_hf import load_recipe

        load_recipe({"name": "v", "task": "image-classification", "stages": [{"name": "t", "steps": 1}], "vocabulary": {}})


def test_vocabulary_at_start_student_trains_with_its_tokenizer(tokenizer, tmp_path):
    """`vocabulary.at: start`: the student is pruned before training and reads its own ids; the
    teacher gets the same tokens at the same positions in its original ids."""
    import copy

    from pakd_hf.trainer import TEACHER_LOGITS, add_teacher_logits, prune_student_vocabulary

    texts, real = corpus(tokenizer, 48, seed=0)
    teacher = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, vocab_size=tokenizer.vocab_size, max_positions=16).eval()
    recipe = {
        "name": "v", "task": "text-classification",
        "vocabulary": {"at": "start", "dropped": "resegment"},
        "stages": [
            {"name": "hidden", "steps": 4, "distillation": {"hidden": {"weight": 1.0}}},
            {"name": "logits", "steps": 4, "distillation": {}},
        ],
    }
    args = PaKDTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, learning_rate=3e-3,
                                 report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)

    # Not pruned first: a one-line recipe error that says what to call.
    with pytest.raises(RecipeError, match=r"vocabulary\.at.*prune_student_vocabulary"):
        PaKDTrainer(model=copy.deepcopy(teacher), teacher_model=teacher, args=args, train_dataset=real,
                    processing_class=tokenizer, recipe=recipe)

    student = copy.deepcopy(teacher)
    new_tok = prune_student_vocabulary(student, tokenizer, real, recipe)
    used = {int(i) for row in real["input_ids"] for i in row}
    assert student.config.vocab_size == len(used | set(tokenizer.all_special_ids)) == len(new_tok)
    enc = new_tok(texts, padding="max_length", max_length=12, truncation=True)
    data = Dataset.from_dict({**enc, "labels": list(real["labels"])})
    assert max(max(r) for r in data["input_ids"]) < student.config.vocab_size

    # The teacher's cached logits from the student's ids equal its logits on its own tokenization.
    kept = student._pakd_vocabulary.teacher_ids()
    cached = add_teacher_logits(data, teacher, new_tok, batch_size=16, teacher_token_ids=kept)[TEACHER_LOGITS]
    with torch.no_grad():
        direct = teacher(**tokenizer(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(list(cached)), direct, rtol=0, atol=1e-5)

    seen: list[torch.Tensor] = []
    hook = teacher.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                          processing_class=new_tok, recipe=recipe)
    trainer.train()
    hook.remove()
    assert len(seen) == 8  # one teacher pass per step: both stages (the data carries no cached logits)
    original_rows = {tuple(r) for r in tokenizer(texts, padding="max_length", max_length=12, truncation=True)["input_ids"]}
    for batch in seen:
        assert {tuple(r) for r in batch.tolist()} <= original_rows
    assert student.config.vocab_size == len(new_tok)  # nothing pruned again at the end

    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    record = json.loads((folder / "pakd.json").read_text())["vocabulary"]
    assert record["dropped_tokens"] == "resegment" and record["vocab_size"] == student.config.vocab_size
    probe = ["the quick brown fox", "a zebra sat on the mat"]
    student.eval()
    with torch.no_grad():
        expected = student(**new_tok(probe, padding=True, return_tensors="pt")).logits
    assert_stock_logits(folder, probe, expected, tmp_path, one_id_per_row=True)

    # A teacher with some other vocabulary cannot be mapped to: refused up front.
    other = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, vocab_size=tokenizer.vocab_size + 7, max_positions=16)
    with pytest.raises(ValueError, match="pruned from .* tokens, but the teacher has"):
        PaKDTrainer(model=student, teacher_model=other, args=args, train_dataset=data, processing_class=new_tok, recipe=recipe)
