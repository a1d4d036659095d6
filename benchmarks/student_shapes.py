"""Time candidate student shapes against the teacher before training any of them.

    python benchmarks/student_shapes.py runs/minilm-rt/teacher \
        --data recipes/nlp/minilm-rotten-tomatoes.yaml \
        --shape 3x3x96x384 --shape 3x3x96x256 --shape 3x2x64x384 --shape 2x3x96x384

A shape is LAYERSxHEADSxHIDDENxFFN (BERT family; a pruned stock BERT keeps the teacher's head
size, so hidden = heads x 32 for MiniLM). Each student is the teacher's config with those
sizes and a pruned vocabulary (`--vocab`, default 9,725: what `min_count: 2` keeps on Rotten
Tomatoes), randomly initialised: latency does not depend on the weights. The teacher and ALL
students run in the same interleaved rounds (`pakd_hf.benchmark.interleaved_latency`) on the
test split's first 32 snippets (batch 1: one snippet per round, as `pakd compress` times a
trained student), so a change of machine load hits every shape alike and the shapes can be
ranked against each other; compare the ratios within one run, not across runs. The students
read the teacher's token ids folded into their vocabulary: a pruned vocabulary that
re-segments rare words makes real inputs a few percent longer, so a trained student is a
little slower than its shape here.
"""

import argparse

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pakd_hf import load_recipe
from pakd_hf.benchmark import hardware_description, interleaved_latency
from pakd_hf.pipeline.compress import LATENCY_EXAMPLES, LATENCY_MIN_SECONDS, load_data
from pakd_hf.measure import count_params


def shape(text: str) -> tuple[int, int, int, int]:
    try:
        layers, heads, hidden, ffn = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected LAYERSxHEADSxHIDDENxFFN, e.g. 3x3x96x384") from None
    return layers, heads, hidden, ffn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="a saved BERT-family classifier folder (e.g. runs/minilm-rt/teacher)")
    parser.add_argument("--data", required=True, help="the recipe whose test split gives the snippets")
    parser.add_argument("--shape", type=shape, action="append", required=True, help="LAYERSxHEADSxHIDDENxFFN (repeat)")
    parser.add_argument("--vocab", type=int, default=9725, help="student vocabulary size (default 9,725)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-seconds", type=float, default=4 * LATENCY_MIN_SECONDS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_recipe(args.data)
    texts = list(load_data(recipe, quick=False)["test"][recipe.data.text_column])[:LATENCY_EXAMPLES]
    tok = AutoTokenizer.from_pretrained(args.teacher)
    models = {"teacher": AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()}
    for layers, heads, hidden, ffn in args.shape:
        config = AutoConfig.from_pretrained(args.teacher)
        config.update({"num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": hidden,
                       "intermediate_size": ffn, "vocab_size": args.vocab})
        torch.manual_seed(0)
        models[f"{layers} x {heads} x {hidden} x {ffn}"] = AutoModelForSequenceClassification.from_config(config).eval()

    def batches(bs, vocab=None):
        out = []
        for start in range(0, len(texts), bs):
            x = dict(tok([texts[(start + i) % len(texts)] for i in range(bs)], truncation=True,
                         max_length=recipe.data.max_length, padding=True, return_tensors="pt"))
            out.append({**x, "input_ids": x["input_ids"] % vocab} if vocab else x)
        return out

    medians = {}
    for bs in (1, 32):
        runs = {name: (m, batches(bs, None if name == "teacher" else args.vocab)) for name, m in models.items()}
        medians[bs], rounds = interleaved_latency(runs, warmup=3, repeats=20, min_seconds=args.min_seconds)
        medians[bs]["rounds"] = rounds
    print(f"{'shape (layers x heads x hidden x FFN)':<40}{'params':>12}{'b1 ms':>8}{'b1 x':>7}{'b32 ms':>9}{'b32 x':>7}")
    for name, m in models.items():
        b1, b32 = medians[1][name], medians[32][name]
        print(f"{name:<40}{count_params(m):>12,}{b1:>8.2f}{medians[1]['teacher'] / b1:>7.2f}"
              f"{b32:>9.1f}{medians[32]['teacher'] / b32:>7.2f}")
    print(f"\n{hardware_description()}, {args.threads} threads; medians of {medians[1]['rounds']} (batch 1) and "
          f"{medians[32]['rounds']} (batch 32) rounds, every model in every round, {len(texts)} test snippets")


if __name__ == "__main__":
    main()
