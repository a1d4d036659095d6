"""Cut a trained model's hidden stream without training: rotation vs the best coordinates.

    python benchmarks/hidden_cut.py runs/minilm-rt/teacher --keep 128
    python benchmarks/hidden_cut.py runs/llm-best/teacher --recipe recipes/llm/llama-rotten-tomatoes.yaml --keep 128
    python benchmarks/hidden_cut.py runs/speech/teacher --recipe recipes/speech/commands-whisper-tiny.yaml --keep 128

Measures the claims in docs/pruning.md: a trained model cut to a narrower hidden width keeps
far more of its validation score when its stream is rotated onto its principal directions
first (`pakd_hf.prune.rotate`) than when its best coordinates are kept (largest second moment
over the same calibration examples: the stream norms' outputs for a post-LN BERT, their inputs
at unit RMS per token for a pre-norm decoder, centred first for pre-LayerNorm Whisper: the
statistic the rotation itself reads). Both
cuts see the first `--calibration` training examples of the recipe's split; the score is the
recipe's metric (accuracy, or perplexity for a causal LM) on its validation split. The
coordinate cut is compacted as the engine compacts (the norms then normalise over the kept
coordinates, with no gain correction); the rotation scales its norms by what it kept. A
non-linear front end (Whisper) is refitted after either cut (both are also scored without it).
"""

import argparse
import copy

import torch

from pakd_hf import load_recipe
from pakd_hf.prune import Structure, compact, get_adapter
from pakd_hf.prune.rotate import FRONT_REFIT_STEPS, refit_front, rotate_hidden
from pakd_hf.pipeline.compress import load_data
from pakd_hf.pipeline.tasks import ADAPTERS


@torch.no_grad()
def first_values(model, calib):
    """The stream's first value (the first layer's input) on each calibration batch."""
    seen = []
    handle = get_adapter(model).layer_list()[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].float()))
    model.eval()
    for batch in calib:
        model(**batch)
    handle.remove()
    return seen


@torch.no_grad()
def best_coordinates(model, calib, keep, refit=True):
    adapter = get_adapter(model)
    pre_norm = adapter.rotation_pre_norms() is not None
    moment = torch.zeros(model.config.hidden_size, dtype=torch.float64)

    def add(x):
        x = x.detach().double()
        x = x[mask["m"].bool()] if mask["m"] is not None and mask["m"].shape == x.shape[:2] else x.reshape(-1, x.shape[-1])
        if pre_norm:
            if centre:  # a pre-LayerNorm (Whisper) normalises the centred stream
                x = x - x.mean(1, keepdim=True)
            x = x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        moment.add_((x ** 2).sum(0))

    norms = adapter.hidden_norms()
    centre = all(isinstance(n, torch.nn.LayerNorm) for n in norms)
    mask = {"m": None}  # padded positions do not count (nor do they for the rotation)
    if pre_norm:
        hooks = [n.register_forward_pre_hook(lambda m, args: add(args[0])) for n in norms]
    else:
        hooks = [n.register_forward_hook(lambda m, args, out: add(out)) for n in norms]
    model.eval()
    for batch in calib:
        mask["m"] = batch.get("attention_mask")
        model(**batch)
    for h in hooks:
        h.remove()
    cut = copy.deepcopy(model)
    base = Structure.from_model(cut)
    kept = sorted(moment.argsort(descending=True)[:keep].tolist())
    firsts = first_values(model, calib) if adapter.rotation_front() is not None else None
    compact(cut, Structure.from_dict({**base.to_dict(), "hidden": kept}), check_export=False)
    if firsts is not None:
        # A non-linear front end (Whisper's conv1 feeds conv2 at the stream's width, so cutting
        # its channels changes conv2's output) is refitted to the kept coordinates, as the
        # rotation's is refitted to the rotated stream: both cuts get the same help.
        refit_front(get_adapter(cut), cut, calib, [x[..., kept] for x in firsts],
                    steps=FRONT_REFIT_STEPS if refit else 0)
    return cut


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained model folder of the recipe's task (the recipe's teacher)")
    p.add_argument("--recipe", default="recipes/nlp/minilm-rotten-tomatoes.yaml")
    p.add_argument("--keep", type=int, default=128)
    p.add_argument("--calibration", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe)
    spec = recipe.data
    task = ADAPTERS[recipe.task]
    data = load_data(recipe, False)
    pre = task.load_preprocessor(a.model)
    model = task.model_class().from_pretrained(a.model).eval()
    texts = list(data["train"][task.column(spec)][: a.calibration])
    calib = [task.encode_batch(pre, texts[i : i + 32], spec) for i in range(0, len(texts), 32)]

    def score(m):
        return task.score(m, pre, data["validation"], spec, 64)

    rotated = copy.deepcopy(model)
    result = rotate_hidden(rotated, calib, a.keep)
    print(f"validation {task.metric}, hidden {model.config.hidden_size} -> {a.keep}, no training "
          f"({len(texts)} calibration examples)")
    print(f"{'uncut':<18} {score(model):.4f}")
    print(f"{'rotated':<18} {score(rotated):.4f}")
    print(f"{'best coordinates':<18} {score(best_coordinates(model, calib, a.keep)):.4f}")
    if result.front_error:  # both cuts again without the front end's refit
        bare = copy.deepcopy(model)
        rotate_hidden(bare, calib, a.keep, front_steps=0)
        print(f"{'rotated, front end not refitted':<18} {score(bare):.4f}")
        print(f"{'best coordinates, front end not refitted':<18} {score(best_coordinates(model, calib, a.keep, refit=False)):.4f}")
    print(f"stream energy kept: rotated {result.energy_kept:.1%}, best coordinates {result.energy_kept_coordinates:.1%}")
    if result.front_error:
        print(f"front end refitted: relative squared error {result.front_error[0]:.3f} -> {result.front_error[1]:.3f}")


if __name__ == "__main__":
    main()
