"""Accuracy of saved models on a recipe's validation (or test) split, per value of a column.

    python benchmarks/accuracy_by_group.py recipes/speech/commands-whisper-tiny.yaml --by engine \\
        runs/speech/teacher runs/speech/pakd/seed-0/student runs/speech/pakd/seed-1/student

Where a split mixes groups (synthesisers, voices, sources), one accuracy hides where a student
loses against its teacher. This prints, for each model folder (loaded with stock classes and
its own preprocessor, as users load it), the accuracy on the whole split and on each value of
``--by`` (a column of the recipe's data), with the number of examples per value, and with
``--out`` writes the same as JSON. It reads the validation split unless ``--split test`` is
given: choices are made on validation.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from pakd_hf import load_recipe
from pakd_hf.pipeline.compress import load_data
from pakd_hf.pipeline.tasks import adapter_for


def by_group(folder: str, adapter, spec, examples: list, labels: list[str], groups: list, batch_size: int) -> dict:
    model = adapter.model_class().from_pretrained(folder).eval()
    pre = adapter.load_preprocessor(folder)
    with torch.inference_mode():
        predicted = adapter.predict(model, pre, examples, spec, batch_size)
    # by class name where the data names its classes (a ClassLabel), else by id
    names = [model.config.id2label[int(i)] if isinstance(labels[0], str) else int(i) for i in predicted]
    hits, counts = defaultdict(int), defaultdict(int)
    for name, label, group in zip(names, labels, groups):
        counts[group] += 1
        hits[group] += name == label
    total = sum(hits.values()) / len(labels)
    return {"model": folder, "accuracy": round(total, 5),
            "by": {str(g): {"accuracy": round(hits[g] / counts[g], 5), "examples": counts[g]}
                   for g in sorted(counts, key=str)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("models", nargs="+", help="saved model folders (teacher, students)")
    parser.add_argument("--by", required=True, help="a column of the recipe's data (e.g. engine, voice)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    adapter = adapter_for(recipe)
    if not adapter.labelled:
        parser.error("accuracy by group needs a labelled task (classification)")
    data = load_data(recipe, quick=False)[args.split]
    if args.by not in data.column_names:
        parser.error(f"--by: the {args.split} split has no column '{args.by}' (it has {', '.join(data.column_names)})")
    spec = recipe.data
    feature = data.features[spec.label_column]
    labels = [feature.int2str(i) if hasattr(feature, "int2str") else i for i in data[spec.label_column]]
    examples = list(data[adapter.column(spec)])
    results = []
    for folder in args.models:
        r = by_group(folder, adapter, spec, examples, labels, data[args.by], args.batch_size)
        results.append(r)
        parts = ", ".join(f"{g} {v['accuracy']:.4f} (n={v['examples']})" for g, v in r["by"].items())
        print(f"{folder}: {args.split} {r['accuracy']:.4f}; by {args.by}: {parts}", flush=True)
    if args.out is not None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"recipe": args.recipe, "split": args.split, "by": args.by, "results": results},
                                  indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
