"""Distil a tiny BERT teacher into a smaller BERT student with a two-stage recipe.

Runs offline in about a minute on a laptop CPU: it builds a toy text task, trains a
4-layer teacher with the plain `Trainer`, then swaps in `PaKDTrainer` with
`recipes/examples/tiny-bert-two-stage.yaml` to distil a 2-layer, 4x narrower student, and
reloads the saved student with stock `AutoModelForSequenceClassification`.

    python examples/quickstart.py [--output-dir runs/quickstart]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from pakd_hf import PaKDTrainer, PaKDTrainingArguments

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "examples" / "tiny-bert-two-stage.yaml"
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

    student = bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    trainer = PaKDTrainer(
        model=student,
        teacher_model=teacher,
        args=PaKDTrainingArguments(output_dir=str(out / "student"), recipe=str(RECIPE), **common),
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model()

    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "student")
    rows = [
        ("teacher", sum(p.numel() for p in teacher.parameters()), accuracy(teacher, test)),
        ("student", sum(p.numel() for p in reloaded.parameters()), accuracy(reloaded, test)),
    ]
    print(f"\n{'model':<8} {'params':>8} {'test acc':>9}")
    for name, params, acc in rows:
        print(f"{name:<8} {params:>8,} {acc:>9.3f}")
    print(f"accuracy kept: {rows[1][2] / rows[0][2]:.3f}; student saved in {out / 'student'} (with pakd_recipe.yaml)")


if __name__ == "__main__":
    main()
