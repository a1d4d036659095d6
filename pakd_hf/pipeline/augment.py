"""A transfer set for distillation: perturbed copies of the training texts (recipe `augment`).

Distillation needs no labels: the teacher's outputs are the targets. A small student trained on
a few thousand labelled texts sees too little of the teacher's function to copy it; the same
texts, perturbed, show it much more (Tang et al., 2019, "Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks"; TinyBERT's task-specific augmentation). Each copy of a
text gets, per word, with probability ``mask`` the tokenizer's unknown token (which is also
what the pruned vocabulary turns rare words into) or with probability ``replace`` one of the
word's nearest neighbours in the teacher's input embeddings; with probability ``span`` only a
random contiguous span of at least half its words is kept.

Neighbours come from the teacher itself, so nothing is downloaded: candidate words are the
whole words the training texts use at least twice that the tokenizer keeps as one token, and
each one's neighbours are the candidates closest to it by cosine similarity of their input
embeddings (for MiniLM: good -> excellent, great, bad, ...; the teacher relabels whatever a
swap does to the meaning, which is the point). This is written here rather than taken from
nlpaug / TextAttack because those fetch word vectors or language models from the network.
"""

from __future__ import annotations

import random
from collections import Counter

import torch
from torch import nn

from ..recipe import Augment

__all__ = ["TextAugmenter", "transfer_texts"]


class TextAugmenter:
    """Perturbs texts word by word (see the module docs); ``neighbours`` maps a word to similar words."""

    def __init__(self, neighbours: dict[str, list[str]], unknown: str, spec: Augment):
        self.neighbours = neighbours
        self.unknown = unknown
        self.spec = spec

    @classmethod
    def from_teacher(cls, model: nn.Module, tokenizer, texts: list[str], spec: Augment) -> "TextAugmenter":
        counts = Counter(word.lower() for text in texts for word in text.split() if word.isalpha())
        words = sorted(w for w, c in counts.items() if c >= 2 and len(w) > 1)
        ids = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
        pairs = [(w, i[0]) for w, i in zip(words, ids) if len(i) == 1 and i[0] != tokenizer.unk_token_id]
        neighbours: dict[str, list[str]] = {}
        k = min(spec.neighbours, len(pairs) - 1)
        if k >= 1:
            table = model.get_input_embeddings().weight.detach().float()
            vectors = nn.functional.normalize(table[torch.tensor([i for _, i in pairs])], dim=-1)
            for start in range(0, len(pairs), 1024):
                sim = vectors[start : start + 1024] @ vectors.T
                rows = torch.arange(sim.shape[0])
                sim[rows, rows + start] = -2.0  # never the word itself
                for row, top in enumerate(sim.topk(k, dim=-1).indices.tolist()):
                    neighbours[pairs[start + row][0]] = [pairs[j][0] for j in top]
        return cls(neighbours, tokenizer.unk_token or "", spec)

    def __call__(self, text: str, rng: random.Random) -> str:
        spec = self.spec
        words = text.split()
        if len(words) > 3 and rng.random() < spec.span:
            n = rng.randint(max(2, len(words) // 2), len(words))
            start = rng.randint(0, len(words) - n)
            words = words[start : start + n]
        out = []
        for word in words:
            u = rng.random()
            if u < spec.mask and self.unknown:
                out.append(self.unknown)
            elif u < spec.mask + spec.replace and word.lower() in self.neighbours:
                out.append(rng.choice(self.neighbours[word.lower()]))
            else:
                out.append(word)
        return " ".join(out)


def transfer_texts(model: nn.Module, tokenizer, texts: list[str], spec: Augment) -> list[str]:
    """The training texts followed by ``spec.copies`` perturbed copies of each (seeded)."""
    augmenter = TextAugmenter.from_teacher(model, tokenizer, texts, spec)
    rng = random.Random(spec.seed)
    return list(texts) + [augmenter(text, rng) for _ in range(spec.copies) for text in texts]
