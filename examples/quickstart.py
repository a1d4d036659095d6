"""Prune and distil a tiny BERT with a two-stage recipe, offline, in about a minute on CPU.

It builds a toy text task, trains a 4-layer teacher with the plain `Trainer`, then swaps in
`PaKDTrainer` with `recipes/examples/tiny-bert-prune.yaml`: a copy of the teacher loses half
its heads, FFN neurons, layers and hidden dims while distilling from the teacher, then
recovers. The saved student is reloaded with stock `AutoModelForSequenceClassification`.

    python examples/quickstart.py [--output-dir runs/quickstart]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from pakd_hf import PaKDTrainer, PaKDTrainingArguments
from pakd_hf.measure import count_macs, safetensors_bytes

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "examples" / "tiny-bert-prune.yaml"
VOCAB, SEQ = 40, 12


def toy_task(n: int, seed: int) -> Dataset:
    """Label 1 iff token 5 occurs more often than token 6 in a padded random sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, SEQ), generator=g)
    ids[:, 0] = 2
    ids[torch.rand(n, generator=g) < 0.4, 3] = 5
    lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = ((ids == 5).sum(1) > (ids == 6).sum(1)).long()
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def bert(hidden: int, layers: int, heads: int, ffn: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=2,
    )
    return BertForSequenceClassification(config)


def accuracy(model, data: Dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits
    return (logits.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/quickstart")
    out = Path(parser.parse_args().output_dir)
    train, test = toy_task(1024, seed=0), toy_task(512, seed=1)
    common = dict(per_device_train_batch_size=16, report_to=[], save_strategy="no", use_cpu=True, seed=0, logging_steps=16)

    teacher = bert(hidden=32, layers=4, heads=4, ffn=64, seed=0)
    Trainer(
        model=teacher,
        args=TrainingArguments(output_dir=str(out / "teacher-run"), num_train_epochs=8, learning_rate=3e-3, **common),
        train_dataset=train,
    ).train()

    teacher.save_pretrained(out / "teacher")
    student = copy.deepcopy(teacher)  # the student starts as the teacher and is pruned
    trainer = PaKDTrainer(
        model=student,
        teacher_model=teacher,
        args=PaKDTrainingArguments(output_dir=str(out / "student"), recipe=str(RECIPE), **common),
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model()

    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "student")
    sample = {"input_ids": torch.tensor(test["input_ids"][:1]), "attention_mask": torch.tensor(test["attention_mask"][:1])}
    rows = []
    for name, model, folder in (("teacher", teacher, out / "teacher"), ("student", reloaded, out / "student")):
        c = model.config
        shape = f"{c.num_hidden_layers}L x {c.num_attention_heads}H, hidden {c.hidden_size}, ffn {c.intermediate_size}"
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, shape, params, safetensors_bytes(folder), count_macs(model, sample), accuracy(model, test)))
    print(f"\n{'model':<8} {'shape':<34} {'params':>8} {'bytes':>8} {'MACs':>8} {'test acc':>9}")
    for name, shape, params, size, macs, acc in rows:
        print(f"{name:<8} {shape:<34} {params:>8,} {size:>8,} {macs:>8,} {acc:>9.3f}")
    t, s = rows
    print(f"{t[2] / s[2]:.1f}x fewer parameters, {t[4] / s[4]:.1f}x fewer MACs, accuracy kept {s[5] / t[5]:.3f}")
    print(f"student saved in {out / 'student'} (with pakd.json and pakd_recipe.yaml)")


if __name__ == "__main__":
    main()
