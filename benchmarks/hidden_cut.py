"""Cut a fine-tuned BERT's hidden stream without training: rotation vs the best coordinates.

    python benchmarks/hidden_cut.py runs/minilm-rt/teacher --keep 128

Measures the claim in README's results: the fine-tuned MiniLM cut to hidden 128 keeps far
more of its validation accuracy when its stream is rotated onto its principal directions
first (`pakd_hf.prune.rotate`) than when its best 128 coordinates (largest second moment over
the same calibration tokens) are kept. Both cuts see the first `--calibration` training
snippets of the recipe's seeded split; accuracy is on its validation split.
"""

import argparse
import copy

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pakd_hf import load_recipe
from pakd_hf.pipeline.compress import load_data
from pakd_hf.prune import Structure, compact
from pakd_hf.prune.rotate import rotate_hidden


def batches(tok, texts, max_length, size):
    return [dict(tok(texts[i : i + size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
            for i in range(0, len(texts), size)]


@torch.no_grad()
def predict(model, inputs):
    model.eval()
    return torch.cat([model(**b).logits for b in inputs]).argmax(1)


@torch.no_grad()
def best_coordinates(model, calib, keep):
    moment = torch.zeros(model.config.hidden_size, dtype=torch.float64)

    def add(module, args, out):
        moment.add_((out.detach().double() ** 2).sum((0, 1)))

    hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    predict(model, calib)
    for h in hooks:
        h.remove()
    cut = copy.deepcopy(model)
    base = Structure.from_model(cut)
    kept = sorted(moment.argsort(descending=True)[:keep].tolist())
    compact(cut, Structure.from_dict({**base.to_dict(), "hidden": kept}), check_export=False)
    return cut


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a fine-tuned BERT-family sequence classifier folder")
    p.add_argument("--recipe", default="recipes/nlp/minilm-rotten-tomatoes.yaml")
    p.add_argument("--keep", type=int, default=128)
    p.add_argument("--calibration", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe)
    data = load_data(recipe, False)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model)
    calib = batches(tok, list(data["train"]["text"][: a.calibration]), recipe.data.max_length, 32)
    val = batches(tok, list(data["validation"]["text"]), recipe.data.max_length, 128)
    gold = torch.tensor(data["validation"]["label"])
    full = predict(model, val)
    rotated = copy.deepcopy(model)
    result = rotate_hidden(rotated, calib, a.keep)
    print(f"validation accuracy, n={len(gold)}, hidden {model.config.hidden_size} -> {a.keep}, no training")
    print(f"{'uncut':<18} {(full == gold).float().mean():.4f}")
    for name, cut in (("rotated", rotated), ("best coordinates", best_coordinates(model, calib, a.keep))):
        pred = predict(cut, val)
        print(f"{name:<18} {(pred == gold).float().mean():.4f}  (agrees with uncut: {(pred == full).float().mean():.3f})")
    print(f"stream energy kept: rotated {result.energy_kept:.1%}, best coordinates {result.energy_kept_coordinates:.1%}")


if __name__ == "__main__":
    main()
