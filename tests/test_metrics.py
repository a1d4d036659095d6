"""The offline accuracy metric: an `evaluate.Metric` that reports and Trainer share."""

import numpy as np
import pytest
import torch

from pakd_hf.metrics import Accuracy, accuracy, compute_accuracy


def test_accuracy_matches_a_direct_count_in_batches_and_at_once():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    expected = float((predictions == references).mean())
    assert accuracy(predictions.tolist(), references.tolist()) == pytest.approx(expected)
    metric = Accuracy(keep_in_memory=True)
    for i in range(0, 500, 128):
        metric.add_batch(predictions=predictions[i:i + 128].tolist(), references=references[i:i + 128].tolist())
    assert metric.compute()["accuracy"] == pytest.approx(expected)
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])  # lengths must agree


def test_compute_accuracy_works_as_trainers_compute_metrics(teacher, toy_data, tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=64, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    metrics = Trainer(model=teacher, args=args, compute_metrics=compute_accuracy).evaluate(toy_data)
    with torch.no_grad():
        logits = teacher.eval()(input_ids=torch.tensor(toy_data["input_ids"]),
                                attention_mask=torch.tensor(toy_data["attention_mask"])).logits
    expected = float((logits.argmax(-1).numpy() == np.array(toy_data["labels"])).mean())
    assert metrics["eval_accuracy"] == pytest.approx(expected)
    assert 0.5 < metrics["eval_accuracy"] <= 1.0  # the trained toy teacher is better than chance
