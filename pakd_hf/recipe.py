"""Recipes: the YAML that says what a PaKD run does, stage by stage.

A recipe is data, not code. This module defines its schema as dataclasses and validates
a raw mapping against it strictly: an unknown key (with a did-you-mean), a wrong type or
a value out of range raises one :class:`RecipeError` whose message names the field, e.g.
``recipe field 'stages[1].distillation.temperature': must be > 0, got -1.0``.

The validator is written here rather than taken from pydantic or jsonschema because the
schema is small, the messages must name recipe fields the way users write them, and the
core package should not pull another dependency for it. It reads the dataclass type hints,
so adding a field to the schema is adding one annotated attribute.

The whole schema lives here, the blocks only `pakd compress` acts on (``data``, ``teacher``,
``export``, ``training``) beside the ``stages`` that `PaKDTrainer` runs: one YAML file is read by
both, and one strict pass over it is what lets a misspelt key anywhere get its did-you-mean.
The trainer validates and saves those blocks with the recipe but never acts on them, and this
module imports nothing from the pipeline (`pakd_hf.pipeline`).

This module imports only the standard library and PyYAML, so ``pakd validate`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Union

import yaml

from .errors import RecipeError, describe, one_line

__all__ = [
    "RecipeError",
    "Recipe",
    "Stage",
    "Distillation",
    "HiddenDistillation",
    "AttentionDistillation",
    "Pruning",
    "Keep",
    "Budget",
    "Vocabulary",
    "Augment",
    "ImageAugment",
    "AudioAugment",
    "Export",
    "Data",
    "Teacher",
    "FineTune",
    "Training",
    "Unstructured",
    "NMSparsity",
    "load_recipe",
    "check_layer_maps",
    "stage_layer_counts",
    "RECIPE_FILENAME",
]

RECIPE_FILENAME = "pakd_recipe.yaml"

TASKS = (
    "text-classification",
    "token-classification",
    "image-classification",
    "audio-classification",
)
MODALITIES = ("text", "vision", "audio")
TASK_MODALITY = {
    "text-classification": "text",
    "text-generation": "text",
    "token-classification": "text",
    "image-classification": "vision",
    "audio-classification": "audio",
}


# Bounds of what a recipe file may be: recipes are a few kilobytes; these stop a hostile or
# broken file (a 10 MB dump, 10,000 nested lists) before it costs time or memory.
MAX_RECIPE_BYTES = 64 << 10  # the shipped recipes are 1-4 KB; PyYAML reads ~100 KB per second here
MAX_RECIPE_DEPTH = 32




class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: no aliases (a few hundred bytes of nested aliases expand
    to billions of nodes), no duplicate keys (YAML keeps the last one silently), bounded
    nesting."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"aliases (*name) are not allowed in recipes (line {mark.line + 1}); write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_RECIPE_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nested deeper than {MAX_RECIPE_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, TokenClass):
        # The scanner reads ahead of compose_node: on a line of '[' it keeps one possible key per
        # open bracket and revisits them all at every token, so 1,000 brackets cost seconds before
        # the depth check above sees the first node. Refuse the bracket past the bound here.
        if self.flow_level >= MAX_RECIPE_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_RECIPE_DEPTH} levels (line {self.get_mark().line + 1})")
        super().fetch_flow_collection_start(TokenClass)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.YAMLError(f"merge keys (<<) are not allowed in recipes (line {key_node.start_mark.line + 1}); "
                                     "write the keys out")
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the mapping constructor reports it
                continue
            if duplicate:
                raise yaml.YAMLError(f"the key '{one_line(key, 60)}' appears twice in one mapping "
                                     f"(line {key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    """The parsed YAML of a recipe file, or one RecipeError line (size, encoding, syntax)."""
    try:
        with path.open("rb") as handle:  # read at most the cap (+1 to tell), whatever the file claims to be
            data = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError("", f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError("", f"{path} is over {MAX_RECIPE_BYTES:,} bytes, the most a recipe may be (is it the right file?)")
    if b"\x00" in data:
        raise RecipeError("", f"{path} is not text (it holds NUL bytes: binary, or UTF-16); save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError("", f"{path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        what = "valid YAML" if mark else "a valid recipe file"  # a syntax error, or what _RecipeLoader refuses
        raise RecipeError("", f"{path} is not {what}{where}: {problem}") from None
    except RecursionError:
        raise RecipeError("", f"{path} is nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise RecipeError("", f"{path} holds a value YAML cannot read: {one_line(str(exc), 80)}") from None


# A layer map is either "auto" (uniform spacing) or explicit [student, teacher] index pairs.
LayerMap = Union[Literal["auto"], list[list[int]]]


def _repr_set(obj: Any, keep: Callable[[str, Any], bool]) -> str:
    """A dataclass's repr with only the fields ``keep`` accepts: a field added later stays out while
    unset, so repr-based cache keys (the teacher's) of earlier recipes do not change."""
    fields = (f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj) if keep(f.name, getattr(obj, f.name)))
    return f"{type(obj).__name__}({', '.join(fields)})"


def _check(cond: bool, path: str, problem: str, keys: tuple[str, ...] = ()) -> None:
    """Refuse ``path`` with ``problem`` unless ``cond``. ``keys``: for a check across a mapping's
    keys that fails when they are absent (exactly one of, at least one of), the keys it asks
    for; one of them written as null is then named instead of the mapping (see ``_build``)."""
    if not cond:
        error = RecipeError(path, problem)
        error.keys = keys
        raise error


# Upper bounds. A value past one is no training anyone means, and would hang a run (epochs,
# copies, clips), fill memory (batch sizes, lengths) or overflow a library (numpy takes seeds
# below 2**32) long after the recipe was accepted: refused here, in one line, instead.
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000
MAX_BATCH = 65_536
MAX_LEARNING_RATE = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_TEMPERATURE = 1_000.0
MAX_MIXUP = 100.0  # Beta(a, a): past a few tens every weight is about 0.5
MAX_LOSS_WEIGHT = 1_000_000.0
MAX_SEED = 2**32 - 1
MAX_COPIES = 1_000
MAX_LENGTH = 1_048_576  # tokens
MAX_SECONDS = 600.0  # audio clip length


def _at_most(value: float, limit: float, path: str) -> None:
    _check(value <= limit, path, f"must be <= {limit:,g}, got {value:,g}" if isinstance(value, float)
           else f"must be <= {limit:,}, got {value:,}")


def _seed(value: int | None, path: str) -> None:
    if value is not None:
        _check(0 <= value <= MAX_SEED, path, f"must be in [0, 2**32 - 1] (numpy's seed range), got {value}")


@dataclass
class HiddenDistillation:
    """Match student hidden states to the teacher's (through learned projections when widths differ).

    ``layer_map`` indexes ``outputs.hidden_states``: 0 is the embedding output, i is the output of
    layer i. ``auto`` pairs the embeddings and then spaces the student layers uniformly over the
    teacher's (student i -> teacher round(i * L_t / L_s)).
    """

    weight: float = 1.0
    loss: Literal["mse", "cosine"] = "mse"
    layer_map: LayerMap = "auto"

    def _validate(self, path: str) -> None:
        _check(self.weight >= 0, f"{path}.weight", f"must be >= 0, got {self.weight}")
        _at_most(self.weight, MAX_LOSS_WEIGHT, f"{path}.weight")
        _validate_layer_map(self.layer_map, f"{path}.layer_map")


@dataclass
class AttentionDistillation:
    """Match attention distributions (KL(teacher || student) per query row) on mapped layers.

    ``layer_map`` indexes ``outputs.attentions`` (0 is the first layer). ``auto`` maps student
    layer j to teacher layer round((j + 1) * L_t / L_s) - 1, so the last layers always pair.
    When head counts differ, the maps are averaged over heads before comparing.
    Attention maps are only returned by the eager attention implementation; the trainer
    switches student and teacher to it while this loss is active.
    """

    weight: float = 1.0
    layer_map: LayerMap = "auto"

    def _validate(self, path: str) -> None:
        _check(self.weight >= 0, f"{path}.weight", f"must be >= 0, got {self.weight}")
        _at_most(self.weight, MAX_LOSS_WEIGHT, f"{path}.weight")
        _validate_layer_map(self.layer_map, f"{path}.layer_map")


@dataclass
class Distillation:
    """How a stage distils the teacher into the student.

    loss = alpha * kd_logits + (1 - alpha) * task + hidden.weight * kd_hidden
           + attention.weight * kd_attn
    where kd_logits = T^2 * KL(softmax(t/T) || softmax(s/T)) (``loss: kl``) or the mean squared
    difference of the raw logits (``loss: mse``; no temperature). Without labels in a batch the
    task term is absent and kd_logits gets weight 1 (pure distillation). With ``mixup`` (images
    and clips) both models read blends of two examples and the task term weighs both labels.
    """

    temperature: float = 2.0
    alpha: float = 0.5
    logits: bool = True
    loss: Literal["kl", "mse", "reverse_kl", "jsd"] = "kl"
    # causal LMs (task text-generation): the JSD's mixture weight, and how many token positions
    # the LM heads see at a time (see pakd_hf.distill.token_kd_per_sample)
    beta: float = 0.5
    chunk_size: int = 1024
    hidden: HiddenDistillation | None = None
    attention: AttentionDistillation | None = None
    # mixup for images and clips: each training example blended with another of its batch,
    # its weight drawn from Beta(mixup, mixup); teacher and student read the blend and the task
    # term weighs both labels (pakd_hf.distill.mix_batch). None: off (out of to_dict, so the
    # fingerprints and run keys of recipes without it stand).
    mixup: float | None = None

    def _validate(self, path: str) -> None:
        _check(self.temperature > 0, f"{path}.temperature", f"must be > 0, got {self.temperature}")
        _check(self.mixup is None or 0.0 < self.mixup <= MAX_MIXUP, f"{path}.mixup",
               f"must be in (0, {MAX_MIXUP:g}] (leave it out for none), got {self.mixup}")
        _at_most(self.temperature, MAX_TEMPERATURE, f"{path}.temperature")
        _check(0.0 <= self.alpha <= 1.0, f"{path}.alpha", f"must be in [0, 1], got {self.alpha}")
        _check(0.0 < self.beta < 1.0, f"{path}.beta", f"must be in (0, 1), got {self.beta}")
        _check(self.chunk_size >= 1, f"{path}.chunk_size", f"must be >= 1, got {self.chunk_size}")
        _at_most(self.chunk_size, MAX_LENGTH, f"{path}.chunk_size")
        _check(
            self.logits or self.hidden is not None or self.attention is not None,
            path,
            "enables no loss: set logits: true or add a hidden or attention block",
            keys=("hidden", "attention"),
        )


@dataclass
class Keep:
    """How much of one structure kind to keep: an absolute ``keep`` count (heads per layer, FFN
    neurons per layer, layers, hidden dims) or a ``keep_fraction`` of the ORIGINAL model's size."""

    keep: int | None = None
    keep_fraction: float | None = None

    def _validate(self, path: str) -> None:
        _check(
            (self.keep is None) != (self.keep_fraction is None),
            path,
            "needs exactly one of 'keep' (a count) and 'keep_fraction' (a share of the original size)",
            keys=("keep", "keep_fraction"),
        )
        if self.keep is not None:
            _check(self.keep >= 1, f"{path}.keep", f"must keep at least 1, got {self.keep}")
        if self.keep_fraction is not None:
            _check(
                0.0 < self.keep_fraction <= 1.0,
                f"{path}.keep_fraction",
                f"must be in (0, 1], got {self.keep_fraction}",
            )


@dataclass
class HiddenKeep(Keep):
    """The hidden (residual stream) width to keep, and how.

    ``method: select`` (default) masks and then removes coordinates of the stream, ranked by
    ``importance`` on the stage's schedule, like the other kinds. ``method: rotate`` (BERT /
    RoBERTa, Llama / Qwen2 / Qwen3 / Mistral, the Whisper encoder, ViT) rotates the stream onto its principal directions, measured on ``calibration``
    training examples when the stage starts, and cuts it to ``keep`` there in one step
    (:mod:`pakd_hf.prune.rotate`); the rest of the stage then trains (and prunes the other
    kinds) at the new width."""

    method: Literal["select", "rotate"] = "select"
    calibration: int = 512

    def _validate(self, path: str) -> None:
        super()._validate(path)
        _check(self.calibration >= 1, f"{path}.calibration", f"must be >= 1 example, got {self.calibration}")
        _at_most(self.calibration, 100_000, f"{path}.calibration")
        if self.method == "rotate" and self.keep is not None:
            _check(self.keep >= 2, f"{path}.keep", f"a rotated stream keeps at least 2 directions, got {self.keep}")


@dataclass
class Unstructured:
    """Per-weight sparsity of the Linear layers, as masks (saved dense, never a CPU speedup)."""

    sparsity: float
    method: Literal["magnitude", "movement"] = "magnitude"
    scope: Literal["layer", "global"] = "layer"

    def _validate(self, path: str) -> None:
        _check(0.0 <= self.sparsity < 1.0, f"{path}.sparsity", f"must be in [0, 1), got {self.sparsity}")


@dataclass
class NMSparsity:
    """N:M semi-structured sparsity (keep N of every M consecutive weights), as masks."""

    n: int = 2
    m: int = 4

    def _validate(self, path: str) -> None:
        _check(1 <= self.n < self.m, path, f"needs 1 <= n < m, got n={self.n}, m={self.m}")


@dataclass
class Budget:
    """A global budget: keep at most this share of the ORIGINAL model's parameters (or MACs),
    by pruning the listed kinds uniformly (the largest uniform shapes that fit are chosen)."""

    params: float | None = None
    macs: float | None = None
    kinds: list[Literal["heads", "ffn", "layers", "hidden"]] = field(default_factory=lambda: ["heads", "ffn"])

    @property
    def metric(self) -> str:
        return "params" if self.params is not None else "macs"

    @property
    def keep(self) -> float:
        return self.params if self.params is not None else self.macs

    def _validate(self, path: str) -> None:
        _check(
            (self.params is None) != (self.macs is None),
            path,
            "needs exactly one of 'params' and 'macs' (the share of the original to keep)",
            keys=("params", "macs"),
        )
        _check(0.0 < self.keep <= 1.0, f"{path}.{self.metric}", f"must be in (0, 1], got {self.keep}")
        _check(bool(self.kinds), f"{path}.kinds", "must list at least one of heads, ffn, layers, hidden")
        _check(len(set(self.kinds)) == len(self.kinds), f"{path}.kinds", f"lists a kind twice: {self.kinds}")


@dataclass
class Pruning:
    """What a stage prunes, how much and when.

    Structured kinds (``heads``, ``ffn``, ``layers``, ``hidden``) are masks during the stage,
    grown on the ``schedule`` from ``start_step`` to ``end_step`` (relative to the stage's
    start; default: the stage's last step) every ``frequency`` optimizer steps, ranked by
    ``importance``; at the end of the stage they are physically removed (``compact``).
    """

    importance: Literal["taylor", "magnitude", "movement"] = "taylor"
    schedule: Literal["one-shot", "linear", "cubic"] = "cubic"
    start_step: int = 0
    end_step: int | None = None
    frequency: int = 10
    # true: every layer keeps the same shape, so the result is a stock architecture.
    # false: per-layer head counts / FFN widths (ranked across layers); the saved folder then
    # carries generated modeling code (BERT, RoBERTa, ViT).
    uniform: bool = True
    compact: bool = True
    heads: Keep | None = None
    ffn: Keep | None = None
    layers: Keep | None = None
    hidden: HiddenKeep | None = None
    budget: Budget | None = None
    unstructured: Unstructured | None = None
    n_m: NMSparsity | None = None

    STRUCTURED = ("heads", "ffn", "layers", "hidden")

    def structured_targets(self) -> dict[str, Keep]:
        return {k: getattr(self, k) for k in self.STRUCTURED if getattr(self, k) is not None}

    def _validate(self, path: str) -> None:
        _check(
            bool(self.structured_targets()) or self.budget is not None or self.unstructured is not None
            or self.n_m is not None,
            path,
            "prunes nothing: add heads, ffn, layers, hidden, budget, unstructured or n_m",
            keys=(*self.STRUCTURED, "budget", "unstructured", "n_m"),
        )
        if self.budget is not None:
            both = [k for k in self.budget.kinds if getattr(self, k) is not None]
            _check(
                not both,
                f"{path}.budget.kinds",
                f"{', '.join(both)} also has an explicit target; a kind is set by the budget or by a target, not both",
            )
        _check(self.start_step >= 0, f"{path}.start_step", f"must be >= 0, got {self.start_step}")
        _at_most(self.start_step, MAX_STEPS, f"{path}.start_step")
        if self.end_step is not None:
            _check(
                self.end_step >= self.start_step,
                f"{path}.end_step",
                f"must be >= start_step ({self.start_step}), got {self.end_step}",
            )
            _at_most(self.end_step, MAX_STEPS, f"{path}.end_step")
        _check(self.frequency >= 1, f"{path}.frequency", f"must be >= 1, got {self.frequency}")
        _at_most(self.frequency, MAX_STEPS, f"{path}.frequency")
        _check(
            self.unstructured is None or self.n_m is None,
            path,
            "set at most one of 'unstructured' and 'n_m'",
        )


@dataclass
class Stage:
    """One stage of a recipe: a duration, optional optimiser overrides, what to distil."""

    name: str
    epochs: float | None = None
    steps: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    distillation: Distillation | None = None
    pruning: Pruning | None = None

    def _validate(self, path: str) -> None:
        _check(bool(self.name.strip()), f"{path}.name", "must not be empty")
        _check(self.name.isprintable(), f"{path}.name", "must be printable text (no control characters or line breaks)")
        _check(
            (self.epochs is None) != (self.steps is None),
            path,
            "needs exactly one duration: set either 'epochs' or 'steps'",
            keys=("epochs", "steps"),
        )
        if self.epochs is not None:
            _check(self.epochs > 0, f"{path}.epochs", f"must be > 0, got {self.epochs}")
            _at_most(self.epochs, MAX_EPOCHS, f"{path}.epochs")
        if self.steps is not None:
            _check(self.steps > 0, f"{path}.steps", f"must be > 0, got {self.steps}")
            _at_most(self.steps, MAX_STEPS, f"{path}.steps")
        if self.learning_rate is not None:
            _check(self.learning_rate > 0, f"{path}.learning_rate", f"must be > 0, got {self.learning_rate}")
            _at_most(self.learning_rate, MAX_LEARNING_RATE, f"{path}.learning_rate")
        _check(
            self.warmup_steps is None or self.warmup_ratio is None,
            path,
            "set at most one of 'warmup_steps' and 'warmup_ratio'",
        )
        if self.warmup_steps is not None:
            _check(self.warmup_steps >= 0, f"{path}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
            _at_most(self.warmup_steps, MAX_STEPS, f"{path}.warmup_steps")
        if self.warmup_ratio is not None:
            _check(
                0.0 <= self.warmup_ratio < 1.0,
                f"{path}.warmup_ratio",
                f"must be in [0, 1), got {self.warmup_ratio}",
            )
        if self.weight_decay is not None:
            _check(self.weight_decay >= 0, f"{path}.weight_decay", f"must be >= 0, got {self.weight_decay}")
            _at_most(self.weight_decay, MAX_WEIGHT_DECAY, f"{path}.weight_decay")
        if self.pruning is not None and self.steps is not None:
            end = self.pruning.end_step if self.pruning.end_step is not None else self.pruning.start_step
            _check(
                end <= self.steps,
                f"{path}.pruning.{'end_step' if self.pruning.end_step is not None else 'start_step'}",
                f"is past the stage's last step ({self.steps})",
            )


@dataclass
class Vocabulary:
    """Vocabulary pruning (text): drop the embedding rows of tokens that occur fewer than
    ``min_count`` times in the training set, and save a tokenizer that maps text to the new
    ids. ``dropped: unk`` keeps the original segmentation and maps dropped tokens to [UNK];
    ``resegment`` keeps a plain subset vocabulary (robust to stock re-saving; a word with
    dropped pieces is split into kept pieces instead of becoming [UNK]).

    ``at: end`` prunes when training ends (the trainer counts ``train_dataset``). ``at: start``
    prunes before the data is tokenized (``pakd_hf.trainer.prune_student_vocabulary``): the
    student trains with its final tokenizer, every step is cheaper (no gradient for rows that
    go), and the teacher gets the same tokens mapped back to its own ids."""

    dropped: Literal["unk", "resegment"] = "unk"
    min_count: int = 1
    at: Literal["start", "end"] = "end"

    def _validate(self, path: str) -> None:
        _check(self.min_count >= 1, f"{path}.min_count", f"must be >= 1, got {self.min_count}")


@dataclass
class Augment:
    """A transfer set for the PaKD stages (text): the training texts plus ``copies`` perturbed
    copies of each, all labelled by the teacher alone (pure distillation, so every stage needs
    a ``distillation`` block). Per word, with probability ``mask`` the unknown token, with
    probability ``replace`` one of its ``neighbours`` nearest words in the teacher's input
    embeddings; per copy, with probability ``span`` only a random span of at least half the
    words. Vocabulary pruning still counts the real training texts only."""

    copies: int = 4
    mask: float = 0.1
    replace: float = 0.15
    span: float = 0.25
    neighbours: int = 8
    seed: int = 0

    def _validate(self, path: str) -> None:
        _check(self.copies >= 1, f"{path}.copies", f"must be >= 1, got {self.copies}")
        _at_most(self.copies, MAX_COPIES, f"{path}.copies")
        _seed(self.seed, f"{path}.seed")
        for name in ("mask", "replace", "span"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{path}.{name}", f"is a probability: must be in [0, 1], got {value}")
        _check(self.mask + self.replace <= 1.0, f"{path}.replace", "mask + replace must be <= 1")
        _check(self.neighbours >= 1, f"{path}.neighbours", f"must be >= 1, got {self.neighbours}")
        _at_most(self.neighbours, 1_000, f"{path}.neighbours")


@dataclass
class Export:
    """The last stage of `pakd compress`: the saved student exported to ONNX in
    ``student/onnx/`` (and the teacher in ``teacher/onnx/``, for the runtime benchmark), with
    ``int8`` a quantized copy beside it; report.json gains the ONNX Runtime figures. ``int8``:
    ``true`` or ``dynamic`` (int8 weights, activations quantized at run time: transformers), or
    ``static`` (activation ranges calibrated on ``calibration`` training examples: CNNs, whose
    dynamic int8 convolutions run slower than fp32). See :mod:`pakd_hf.pipeline.deploy`."""

    onnx: bool = True
    int8: Union[bool, Literal["dynamic", "static"]] = False
    opset: int = 17
    calibration: int = 256

    def _validate(self, path: str) -> None:
        _check(self.onnx or not self.int8, f"{path}.int8", "needs onnx: true (the int8 model is quantized from the ONNX export)")
        _check(7 <= self.opset <= 23, f"{path}.opset", f"must be between 7 and 23, got {self.opset}")
        _check(1 <= self.calibration <= 100_000, f"{path}.calibration", f"must be between 1 and 100000, got {self.calibration}")


@dataclass
class ImageAugment:
    """Random changes to the training images (image-classification), drawn anew for every
    batch of every training stage, the teacher's fine-tune included; validation and test are
    never changed. ``shift``: the largest translation, as a fraction of the side; ``flip``: the
    probability of a left-right mirror; ``erase``: the probability of one random rectangle of
    noise. See :mod:`pakd_hf.pipeline.image_augment`."""

    shift: float = 0.0
    flip: float = 0.0
    erase: float = 0.0

    def _validate(self, path: str) -> None:
        _check(0.0 <= self.shift <= 0.5, f"{path}.shift",
               f"is a fraction of the image side: must be in [0, 0.5], got {self.shift}")
        for name in ("flip", "erase"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{path}.{name}", f"is a probability: must be in [0, 1], got {value}")
        _check(self.shift > 0 or self.flip > 0 or self.erase > 0, path,
               "changes nothing: set shift, flip or erase above 0, or remove the block")


@dataclass
class AudioAugment:
    """Random changes to the training clips (audio-classification), on the feature extractor's
    output, drawn anew for every batch of every training stage, the teacher's fine-tune
    included; validation and test are never changed. ``time_shift``: the largest move in time, as
    a fraction of the window (the uncovered part is silence); ``time_mask`` / ``freq_mask``: the
    widest masked band, as a fraction of the frames / frequency bins, ``time_masks`` /
    ``freq_masks`` of them per clip (SpecAugment's time and frequency masking); ``freq_warp``:
    each clip's frequency bins warped by a factor drawn from [1 - freq_warp, 1 + freq_warp]
    (vocal tract length perturbation). Frequency masks and warps need spectrogram
    features such as Whisper's, not raw samples. See
    :mod:`pakd_hf.pipeline.audio_augment`."""

    time_shift: float = 0.0
    time_mask: float = 0.0
    time_masks: int = 2
    freq_mask: float = 0.0
    freq_masks: int = 2
    freq_warp: float | None = None  # None: off (out of to_dict and the repr: earlier recipes keep their keys)

    def __repr__(self) -> str:  # the teacher's cache key reads it: an unset field leaves it as it was
        return _repr_set(self, lambda name, value: not (name == "freq_warp" and not value))

    def frequency_changes(self) -> list[str]:
        """The fields that change the frequency axis, which raw samples do not have."""
        return [name for name, on in (("freq_mask", self.freq_mask > 0 and self.freq_masks > 0),
                                      ("freq_warp", bool(self.freq_warp))) if on]

    def check_raw_samples(self, reader: str) -> None:
        """One line naming every frequency field when ``reader`` (a model) reads raw samples."""
        if names := self.frequency_changes():
            raise RecipeError(f"data.augment.{names[0]}", f"{reader} reads raw samples, which have no frequency "
                                                          f"bins to mask or warp: remove {' and '.join(names)}")

    def _validate(self, path: str) -> None:
        for name in ("time_shift", "time_mask", "freq_mask"):
            value = getattr(self, name)
            _check(0.0 <= value <= 0.5, f"{path}.{name}",
                   f"is a fraction of the window: must be in [0, 0.5], got {value}")
        for name in ("time_masks", "freq_masks"):
            value = getattr(self, name)
            _check(0 <= value <= 10, f"{path}.{name}", f"is a count of masks per clip: must be in [0, 10], got {value}")
        _check(self.freq_warp is None or 0.0 <= self.freq_warp <= 0.3, f"{path}.freq_warp",
               f"is the largest warp of the frequency axis, as a fraction: must be in [0, 0.3], got {self.freq_warp}")
        _check(self.time_shift > 0 or (self.time_mask > 0 and self.time_masks > 0) or bool(self.frequency_changes()),
               path, "changes nothing: set time_shift, time_mask, freq_mask or freq_warp above 0, or remove the block")


@dataclass
class Data:
    """Where the examples come from. ``dataset`` names an offline data set that ships in a
    package (see ``pakd_hf.pipeline.data.DATASETS``: e.g. ``rotten-tomatoes``) or, for users with a
    network, a Hub data set id (with ``config``, column and split names)."""

    dataset: str
    config: str | None = None
    text_column: str = "text"
    image_column: str = "image"
    audio_column: str = "audio"
    label_column: str = "label"
    train_split: str = "train"
    validation_split: str | None = "validation"
    test_split: str | None = "test"
    max_length: int = 128  # text: tokens
    max_seconds: float = 1.0  # audio: clips are cut / padded to this length
    # text-generation: concatenate the texts (each ended by EOS) and cut the stream into blocks of
    # max_length tokens (true), or one example per text, truncated and padded (false)
    packing: bool = True
    seed: int = 0
    options: dict[str, Any] | None = None  # keyword arguments of an offline loader
    # random changes to the training images (image-classification) or clips (audio-classification)
    augment: ImageAugment | AudioAugment | None = None

    def _validate(self, path: str) -> None:
        _check(bool(self.dataset.strip()), f"{path}.dataset", "must not be empty")
        _check(self.max_length >= 4, f"{path}.max_length", f"must be >= 4, got {self.max_length}")
        _at_most(self.max_length, MAX_LENGTH, f"{path}.max_length")
        _check(self.max_seconds > 0, f"{path}.max_seconds", f"must be > 0, got {self.max_seconds}")
        _at_most(self.max_seconds, MAX_SECONDS, f"{path}.max_seconds")
        _seed(self.seed, f"{path}.seed")
        _check(self.test_split is not None, f"{path}.test_split",
               "is required: the test split is held out for the final evaluation (with validation_split: null, "
               "validation is held out of train instead)")
        _check(self.test_split != self.validation_split, f"{path}.test_split",
               f"'{self.test_split}' is also the validation split: choices are made on validation, so the test split "
               "must be another one (set validation_split: null to hold validation out of train)")


@dataclass
class FineTune:
    """The teacher stage: fine-tune the teacher on the task (plain Trainer) before compressing.
    ``keep_best``: score the validation split after every epoch (accuracy, or the loss whose
    exponential is perplexity) and keep the best epoch's weights (Trainer's
    ``load_best_model_at_end``), so the teacher's length is chosen on validation in one run;
    the per-epoch curve is kept in ``OUT/teacher/pakd_teacher.json``."""

    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    keep_best: bool | None = None  # None: off (and out of the repr, so the teachers cached before it keep their key)
    #: TrainingArguments' names for the same fields (either spelling is accepted; one is stored)
    ALIASES: ClassVar[dict[str, str]] = {"num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size"}

    def __repr__(self) -> str:  # the teacher's cache key reads it: an unset field leaves it as it was
        return _repr_set(self, lambda name, value: value is not None and not (name == "keep_best" and not value))

    def _validate(self, path: str) -> None:
        _check(self.epochs > 0, f"{path}.epochs", f"must be > 0, got {self.epochs}")
        _at_most(self.epochs, MAX_EPOCHS, f"{path}.epochs")
        _check(self.learning_rate > 0, f"{path}.learning_rate", f"must be > 0, got {self.learning_rate}")
        _at_most(self.learning_rate, MAX_LEARNING_RATE, f"{path}.learning_rate")
        _check(self.batch_size >= 1, f"{path}.batch_size", f"must be >= 1, got {self.batch_size}")
        _at_most(self.batch_size, MAX_BATCH, f"{path}.batch_size")
        _check(0.0 <= self.warmup_ratio < 1.0, f"{path}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _at_most(self.weight_decay, MAX_WEIGHT_DECAY, f"{path}.weight_decay")


@dataclass
class Teacher:
    """The teacher: ``model`` is an offline model that ships in a package (see
    ``pakd_hf.pipeline.data.MODELS``: e.g. ``all-minilm-l6-v2``), a local folder or a Hub id; or
    ``config`` (a transformers config as a mapping, with ``model_type``) builds a randomly
    initialised model that the teacher stage (``fine_tune``) trains from scratch, with an
    image processor built from ``processor`` (``ViTImageProcessor`` keyword arguments)."""

    model: str | None = None
    config: dict[str, Any] | None = None
    processor: dict[str, Any] | None = None
    fine_tune: FineTune | None = None
    license: str | None = None

    def _validate(self, path: str) -> None:
        _check(
            (self.model is None) != (self.config is None),
            f"{path}.model",
            "give exactly one of 'model' (pretrained weights) and 'config' (a model trained from scratch)",
        )
        if self.model is not None:
            _check(bool(self.model.strip()), f"{path}.model", "must not be empty")
            _check(self.processor is None, f"{path}.processor", "is for a teacher built from 'config'; remove it")
        else:
            _check(
                isinstance(self.config.get("model_type"), str),
                f"{path}.config.model_type",
                "is required: the transformers model type to build (e.g. 'vit')",
            )
            _check(
                self.fine_tune is not None,
                f"{path}.fine_tune",
                "is required with 'config': a teacher built from a config starts random and must be trained",
            )

    @property
    def name(self) -> str:
        """How reports and cards name the teacher."""
        if self.model is not None:
            return self.model
        return f"a {self.config['model_type']} teacher trained from scratch"


@dataclass
class Training:
    """Run settings of `pakd compress` (the Python API takes TrainingArguments instead)."""

    batch_size: int = 32
    eval_batch_size: int = 128
    seed: int = 0
    logging_steps: int = 50
    # The PaKD stages draw batches of similar length (Trainer's group_by_length sampling), so
    # little of each step is padding. Student stages only: not part of the teacher's cache key.
    group_by_length: bool = field(default=False, repr=False)
    # The PaKD stages draw each value of this column of the training split equally often (with
    # replacement; an epoch keeps its length): e.g. `engine`, when most clips come from one
    # synthesiser. Student stages only: not part of the teacher's cache key (out of the repr),
    # nor, when unset, of the recipe's fingerprint.
    balance_by: str | None = field(default=None, repr=False)
    #: TrainingArguments' names for the same fields (either spelling is accepted; one is stored)
    ALIASES: ClassVar[dict[str, str]] = {"per_device_train_batch_size": "batch_size",
                                         "per_device_eval_batch_size": "eval_batch_size"}

    def _validate(self, path: str) -> None:
        for name in ("batch_size", "eval_batch_size", "logging_steps"):
            value = getattr(self, name)
            _check(value >= 1, f"{path}.{name}", f"must be >= 1, got {value}")
            _at_most(value, MAX_STEPS if name == "logging_steps" else MAX_BATCH, f"{path}.{name}")
        _seed(self.seed, f"{path}.seed")
        _check(self.balance_by is None or (isinstance(self.balance_by, str) and bool(self.balance_by.strip())),
               f"{path}.balance_by", f"must name a column of the training split, got {self.balance_by!r}")
        _check(not (self.balance_by and self.group_by_length), f"{path}.balance_by",
               "draws the examples itself, and so does group_by_length: set one of them")


@dataclass
class Recipe:
    """A validated recipe. Build one with :func:`load_recipe`."""

    name: str
    task: Literal[
        "text-classification", "token-classification", "image-classification", "audio-classification",
        "text-generation",
    ]
    stages: list[Stage]
    modality: Literal["text", "vision", "audio"] | None = None
    description: str | None = None
    vocabulary: Vocabulary | None = None
    augment: Augment | None = None
    data: Data | None = None
    teacher: Teacher | None = None
    training: Training | None = None
    export: Export | None = None
    # The student's seed (`pakd compress --seed`): its initialisation where it has one, data
    # order, dropout. The teacher stage keeps `training.seed`, so every student seed of a recipe
    # shares one cached teacher and one transfer set. Unset: `training.seed`.
    seed: int | None = None

    def _validate(self, path: str) -> None:
        _check(bool(self.name.strip()), "name", "must not be empty")
        _check(self.name.isprintable(), "name", "must be printable text (no control characters or line breaks)")
        _seed(self.seed, "seed")
        _check(len(self.stages) > 0, "stages", "must list at least one stage")
        expected = TASK_MODALITY[self.task]
        if self.modality is None:
            self.modality = expected
        _check(
            self.modality == expected,
            "modality",
            f"task '{self.task}' is {expected}, got '{self.modality}' (remove it or set '{expected}')",
        )
        _check(
            self.vocabulary is None or self.modality == "text",
            "vocabulary",
            f"vocabulary pruning is for text models, but the task is {self.task}; remove the block",
        )
        generation = self.task == "text-generation"
        _check(
            self.vocabulary is None or not generation,
            "vocabulary",
            "vocabulary pruning is not offered for causal LMs: the LM head would predict only the kept tokens, which "
            "changes what generate() can produce; remove the block",
        )
        _check(
            self.export is None or not generation,
            "export",
            "the ONNX export stage covers the classification tasks; a causal LM is saved for transformers (remove the block)",
        )
        for i, stage in enumerate(self.stages):
            d = stage.distillation
            if d is None:
                continue
            token_losses = ("kl", "reverse_kl", "jsd")
            _check(
                (d.loss in token_losses) if generation else (d.loss in ("kl", "mse")),
                f"stages[{i}].distillation.loss",
                f"'{d.loss}' is not offered for {self.task}: use "
                + (" / ".join(token_losses) if generation else "kl / mse (reverse_kl and jsd are token-level losses for "
                                                                   "text-generation)"),
            )
            _check(
                d.mixup is None or self.task in ("image-classification", "audio-classification"),
                f"stages[{i}].distillation.mixup",
                f"blends images or clips (image-/audio-classification), but the task is {self.task}: remove it"
                + (" (for texts, 'augment' makes a transfer set)" if self.task == "text-classification" else ""),
            )
            _check(
                d.attention is None or not generation,
                f"stages[{i}].distillation.attention",
                "attention-map distillation is not offered for causal LMs (their attention kernels return no maps); "
                "use logits and hidden",
            )
        augment = None if self.data is None else self.data.augment
        _check(
            not isinstance(augment, ImageAugment) or self.task == "image-classification",
            "data.augment",
            f"changes training images (image-classification), but the task is {self.task}; remove the block",
        )
        _check(
            not isinstance(augment, AudioAugment) or self.task == "audio-classification",
            "data.augment",
            f"changes training clips (audio-classification), but the task is {self.task}; remove the block",
        )
        _check(
            self.augment is None or self.task == "text-classification",
            "augment",
            f"augmentation perturbs whole texts (text-classification), but the task is {self.task}; remove the block",
        )
        balance_by = None if self.training is None else self.training.balance_by
        _check(
            balance_by is None or (self.augment is None and not generation),
            "training.balance_by",
            "weighs the rows of the training split, but the student trains on "
            + ("a transfer set made by 'augment' (other rows): remove one of them" if self.augment is not None
               else "blocks of tokens (text-generation: packed, or without the texts that tokenize empty), "
                    "not its rows: remove it"),
        )
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            _check(
                self.augment is None or stage.distillation is not None,
                f"stages[{i}].distillation",
                "is required with 'augment': the transfer set has no labels, only the teacher's outputs",
            )
            _check(
                stage.name not in seen,
                f"stages[{i}].name",
                f"'{stage.name}' is already the name of stages[{seen.get(stage.name)}]; stage names must be unique",
            )
            seen[stage.name] = i

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, without unset optional fields; load_recipe(to_dict()) == self."""
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the recipe as YAML. A directory gets ``pakd_recipe.yaml`` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILENAME
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def fingerprint(self) -> str:
        """A short stable hash of the recipe's content, used to match checkpoints to recipes."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @property
    def student_seed(self) -> int:
        """The seed of the student's making: ``seed``, else ``training.seed``, else 0."""
        if self.seed is not None:
            return self.seed
        return self.training.seed if self.training is not None else 0

    @property
    def needs_teacher(self) -> bool:
        return any(stage.distillation is not None for stage in self.stages)


# ---- loading ----------------------------------------------------------------------------

def load_recipe(source: "str | os.PathLike | dict | Recipe") -> Recipe:
    """Load and validate a recipe from a YAML path, a mapping, or return a Recipe as is.

    Raises :class:`RecipeError` (a ``ValueError``) naming the offending field.
    """
    if isinstance(source, Recipe):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise RecipeError("", f"{path} is a folder, not a recipe file")
        if not path.exists():
            raise RecipeError("", f"file not found: {path}")
        if not path.is_file():  # a FIFO or a device would block or never end
            raise RecipeError("", f"{path} is not a regular file")
        raw = _read_yaml(path)
        if raw is None:
            raise RecipeError("", f"{path} is empty")
    elif isinstance(source, dict):
        raw = source
    else:
        raise TypeError(f"recipe must be a path, a dict or a Recipe, got {type(source).__name__}")
    return _build(Recipe, raw, "")


_NONE = type(None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in typing.get_args(tp) if a is not _NONE))
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` and return it (nested dataclasses built)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if _NONE in args:
                return None
            raise RecipeError(path, f"must be {_type_name(tp)}, got null")
        options = [a for a in args if a is not _NONE]
        if len(options) == 1:
            return _coerce(options[0], value, path)
        if isinstance(value, dict) and all(dataclasses.is_dataclass(a) for a in options):
            # Mappings of several shapes whose keys differ (image or audio augmentation): the
            # shape is the one whose keys the value uses; an unknown key is named against the
            # keys of every shape.
            fitting = [a for a in options if all(k in _keys(a) for k in value)]
            if len(fitting) == 1:
                return _build(fitting[0], value, path)
            if not value:
                raise RecipeError(path, "is empty: give at least one of its keys "
                                        f"({'; '.join(', '.join(sorted(_keys(a))) for a in options)}), or remove it")
            used = [a for a in options if any(k in _keys(a) for k in value)]
            if len(used) > 1:
                kinds = "; ".join(f"{', '.join(sorted(k for k in value if k in _keys(a)))} of {a.__name__}" for a in used)
                raise RecipeError(path, f"mixes the keys of several kinds ({kinds}): keep one kind's keys")
            if used:
                return _build(used[0], value, path)  # names the key that does not belong to it
            known = sorted(set().union(*(_keys(a) for a in options)))
            key = next(iter(value))
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            raise RecipeError(f"{path}.{key}", f"unknown key ({f'did you mean {close[0]!r}?' if close else 'known keys: ' + ', '.join(known)})")
        for arg in options:
            try:
                return _coerce(arg, value, path)
            except RecipeError as exc:
                if exc.field != path:
                    raise  # the value had this alternative's shape; the problem is inside it
        raise RecipeError(path, f"must be {_type_name(tp)}, got {describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        choices = ", ".join(repr(a) for a in allowed)
        raise RecipeError(path, f"must be one of {choices}, got {describe(value)}{hint}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecipeError(path, f"must be a list, got {describe(value)}")
        return [_coerce(item_tp, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 1 << 62:
                raise RecipeError(path, f"is out of range, got {describe(value)}")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str) and len(value) < 64:
            # YAML 1.1 reads "5e-5" (no dot) as a string; accept it as the number users meant.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise RecipeError(path, f"must be a finite number, got {describe(value)}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        # Free-form keyword arguments (a model config, loader options): string keys, plain
        # YAML values; the library that receives them checks them.
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise RecipeError(path, f"must be a mapping of names to values, got {describe(value)}")
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    raise RecipeError(path, f"must be {_type_name(tp)}, got {describe(value)}")


def _keys(cls: type) -> set[str]:
    """The keys a recipe may give for dataclass ``cls`` (its fields and their aliases)."""
    return {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "ALIASES", {}))


def _build(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``, strictly."""
    if not isinstance(raw, dict):
        raise RecipeError(path, f"must be a mapping of keys to values, got {describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    aliases, given = getattr(cls, "ALIASES", {}), {}
    if any(key in aliases for key in raw):  # TrainingArguments' spelling of a field: the same field
        renamed = {}
        for key, value in raw.items():
            name = aliases.get(key, key)
            if name in renamed:
                key_path = f"{path}.{key}" if path else str(key)
                raise RecipeError(key_path, f"'{given[name]}' and '{key}' are the same field: give one of them")
            renamed[name], given[name] = value, key
        raw = renamed
    for key in raw:
        if key not in fields:
            key_path = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), [*fields, *aliases], n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            raise RecipeError(key_path, f"unknown key ({hint})")
    try:
        kwargs = {}
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in raw:
                kwargs[name] = _coerce(hints[name], raw[name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(sub, "is required")
        obj = cls(**kwargs)
        validate = getattr(obj, "_validate", None)
        if validate is not None:
            validate(path)
    except RecipeError as exc:  # a field given by its alias is named as the recipe wrote it
        written = {f"{path}.{name}" if path else name: f"{path}.{key}" if path else key
                   for name, key in (given.items() if aliases and given else ())}
        if exc.field in written:
            raise RecipeError(written[exc.field], exc.problem) from None
        # A check across the mapping's keys (``needs exactly one of keep and keep_fraction``)
        # failed where the recipe wrote one of the keys it asks for as null: that key is what to
        # fix, so it is named (a null elsewhere in the mapping is not the check's business).
        nulls = [key for key in getattr(exc, "keys", ()) if key in raw and raw[key] is None]
        if exc.field == path and nulls:
            key = given.get(nulls[0], nulls[0])
            raise RecipeError(f"{path}.{key}" if path else key, f"is null, and the mapping {exc.problem}") from None
        raise
    return obj


def _validate_layer_map(layer_map: Any, path: str) -> None:
    if layer_map == "auto":
        return
    _check(len(layer_map) > 0, path, "must be 'auto' or a non-empty list of [student, teacher] pairs")
    for i, pair in enumerate(layer_map):
        _check(
            len(pair) == 2,
            f"{path}[{i}]",
            f"must be a [student_layer, teacher_layer] pair, got {describe(pair)}",
        )
        _check(min(pair) >= 0, f"{path}[{i}]", f"layer indices must be >= 0, got {pair}")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[f.name] = to_plain(value)
        return out
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


def check_layer_map(
    layer_map: LayerMap, n_student: int, n_teacher: int, path: str
) -> None:
    """Check explicit layer-map indices against the models' sizes (index spaces as in the docs)."""
    if layer_map == "auto":
        return
    for i, (s, t) in enumerate(layer_map):
        _check(
            s < n_student,
            f"{path}[{i}]",
            f"student index {s} is out of range: the student has indices 0..{n_student - 1}",
        )
        _check(
            t < n_teacher,
            f"{path}[{i}]",
            f"teacher index {t} is out of range: the teacher has indices 0..{n_teacher - 1}",
        )


def stage_layer_counts(recipe: Recipe, n_layers: int) -> list[int | None]:
    """The student's layer count when each stage starts (None where it cannot be known from the
    recipe: after a budget that may prune layers). Layer masks stay until a stage compacts, and
    a compacting stage removes every pending mask, an earlier stage's included; ``keep_fraction``
    is a share of ``n_layers``."""
    counts: list[int | None] = []
    n: int | None = n_layers
    pending: int | None = None
    for stage in recipe.stages:
        counts.append(n)
        spec = stage.pruning
        if spec is None or n is None:
            continue
        if spec.budget is not None and "layers" in spec.budget.kinds:
            n = None
            continue
        if spec.layers is not None:
            keep = spec.layers.keep if spec.layers.keep is not None else max(1, round(spec.layers.keep_fraction * n_layers))
            pending = min(keep, pending if pending is not None else n)
        if spec.compact and pending is not None:
            n, pending = min(n, pending), None
    return counts


def check_layer_maps(recipe: Recipe, n_student: int, n_teacher: int) -> None:
    """Every stage's explicit layer maps against the layer counts the student and the teacher
    will have when that stage runs (a later stage's map must fit the layers earlier stages left)."""
    counts = stage_layer_counts(recipe, n_student)
    for i, stage in enumerate(recipe.stages):
        dist = stage.distillation
        if dist is None or counts[i] is None:
            continue
        for block, kind, offset in ((dist.hidden, "hidden", 1), (dist.attention, "attention", 0)):
            if block is not None:
                check_layer_map(block.layer_map, counts[i] + offset, n_teacher + offset,
                                f"stages[{i}].distillation.{kind}.layer_map")
