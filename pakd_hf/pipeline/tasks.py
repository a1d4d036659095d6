"""What differs between modalities in `pakd compress`: one small adapter per task.

Each adapter knows the stock Auto class of its task, how to load (or build) the teacher and
its preprocessor, how to turn a data set into model inputs for training, and how to encode a
batch of raw examples for evaluation and benchmarking. Everything else in the pipeline
(teacher stage, PaKD stages, saving, evaluation of the saved student, benchmark, card) is
shared. The preprocessor is always a transformers one (tokenizer, image processor, feature
extractor) saved beside the weights, so the student works with a stock ``pipeline``.

Each adapter imports its modality's classes (tokenizers, image processors, feature extractors,
model classes) inside its methods: preflight and the CLI use the adapters' light parts, and
a text recipe should not load the audio stack.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import describe, one_line
from ..recipe import AudioAugment, Data, ImageAugment, Recipe, RecipeError

__all__ = ["TaskAdapter", "adapter_for", "ADAPTERS", "folder_task", "sample_examples", "default_data", "perplexity"]


class TaskAdapter:
    task: str = ""
    auto_class: str = ""
    preprocessor_class: str = ""
    column_field: str = ""  # the recipe's data field that names the input column
    #: what :meth:`score` measures, and whether higher is better (report keys are ``<metric>_*``)
    metric: str = "accuracy"
    higher_is_better: bool = True
    #: whether the data has a label column (classification) or not (language modelling)
    labelled: bool = True

    # ---- models ------------------------------------------------------------------------
    def model_class(self):
        """The stock Auto class of this task (e.g. AutoModelForSequenceClassification)."""
        import transformers

        return getattr(transformers, self.auto_class)

    def load_preprocessor(self, source):
        import transformers

        return getattr(transformers, self.preprocessor_class).from_pretrained(source)

    def load_teacher(self, recipe: Recipe, labels: list[str], data=None):
        """(model, preprocessor) of the recipe's teacher, with a head for ``labels``. ``data``
        (train and validation) is there for tasks whose preprocessor is made from it."""
        from .data import resolve_model

        id2label = dict(enumerate(labels))
        label_kw = dict(num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()})
        teacher = recipe.teacher
        if teacher.config is not None:
            return self.build_teacher(recipe, label_kw)
        source = resolve_model(teacher.model)
        if teacher.fine_tune is None:
            self._check_head(source, labels)
            return self.model_class().from_pretrained(source), self.load_preprocessor(source)
        # A head for other labels (or none) is replaced by a new one that the teacher stage trains.
        # Only the label-sized head may differ: any other shape mismatch is an error, not a
        # silent re-initialisation.
        model, info = self.model_class().from_pretrained(
            source, ignore_mismatched_sizes=True, output_loading_info=True, **label_kw
        )
        for entry in info.get("mismatched_keys") or ():
            key = entry[0] if isinstance(entry, (tuple, list)) else entry
            if model.get_parameter(key).shape[0] != len(labels):
                raise RecipeError(
                    "teacher.model",
                    f"'{teacher.model}' does not match its own config at '{key}' (not the label head): the checkpoint is broken",
                )
        return model, self.load_preprocessor(source)

    @staticmethod
    def _check_head(source, labels: list[str]) -> None:
        """Without a teacher stage, the teacher's own head must already predict the data's labels."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
        theirs = [str(config.id2label[i]) for i in sorted(config.id2label)] if config.id2label else []
        if theirs != [str(x) for x in labels]:
            raise RecipeError(
                "teacher.fine_tune",
                f"the teacher predicts {theirs or 'no labels'} but the data has {labels}: "
                "add a fine_tune block to train a head for these labels",
            )

    def check(self, recipe: Recipe, labels: list[str]) -> None:
        """Fail early (before any output is written) on a teacher this task cannot use."""
        if recipe.teacher.config is not None:
            self.build_teacher(recipe, {})
        elif recipe.teacher.fine_tune is None:
            from .data import resolve_model

            self._check_head(resolve_model(recipe.teacher.model), labels)

    def build_teacher(self, recipe: Recipe, label_kw: dict[str, Any]):
        raise RecipeError("teacher.config", f"a teacher built from a config is not supported for {self.task}; name a pretrained 'model'")

    def check_built_teacher(self, recipe: Recipe) -> int:
        """Check a ``teacher.config`` teacher before any work (preflight): its config and
        preprocessor as :meth:`build_teacher` makes them, and the model itself built on the meta
        device (shapes only, no memory). Returns its parameter count."""
        raise RecipeError("teacher.config", f"a teacher built from a config is not supported for {self.task}; name a pretrained 'model'")

    # ---- data --------------------------------------------------------------------------
    # The data methods read the recipe's data block (``recipe.data``: columns, max_length,
    # max_seconds, packing, augment) and nothing else, so a command that feeds a saved model
    # without a recipe passes the block's defaults (:func:`default_data`).
    def column(self, spec: Data) -> str:
        return getattr(spec, self.column_field)

    def encode_batch(self, preprocessor, examples: list, spec: Data) -> dict[str, Any]:
        """Model inputs (torch tensors) for a list of raw examples (texts, images, clips)."""
        raise NotImplementedError

    def encode_dataset(self, data, preprocessor, spec: Data):
        """The data set as model inputs + labels, for Trainer."""
        column, label = self.column(spec), spec.label_column

        def encode(batch):
            out = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in self.encode_batch(preprocessor, batch[column], spec).items()}
            out["labels"] = batch[label]
            return out

        encoded = data.map(encode, batched=True, batch_size=256, remove_columns=data["train"].column_names, desc="encode")
        # Fixed-size arrays: hand them to the collator as numpy, not as nested Python lists.
        return encoded.with_format("numpy")

    def predict(self, model, preprocessor, examples: list, spec: Data, batch_size: int) -> list[int]:
        """Predicted class ids of raw examples, in batches."""
        import torch

        model.eval()
        device = getattr(model, "device", None)  # a model trained on a GPU stays there
        predictions: list[int] = []
        with torch.inference_mode():
            for i in range(0, len(examples), batch_size):
                batch = self.encode_batch(preprocessor, examples[i : i + batch_size], spec)
                if isinstance(device, torch.device) and device.type != "cpu":
                    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                predictions += model(**batch).logits.argmax(-1).tolist()
        return predictions

    def accuracy(self, model, preprocessor, examples: list, labels: list[int], spec: Data, batch_size: int) -> float:
        """Accuracy (:class:`pakd_hf.metrics.Accuracy`) of ``model`` on raw examples."""
        from ..metrics import accuracy

        return accuracy(self.predict(model, preprocessor, examples, spec, batch_size), labels)

    def score(self, model, preprocessor, split, spec: Data, batch_size: int) -> float:
        """:attr:`metric` of ``model`` on a split (a Dataset of raw examples, with labels)."""
        return self.accuracy(model, preprocessor, list(split[self.column(spec)]), list(split[spec.label_column]),
                             spec, batch_size)

    def data_collator(self, preprocessor, spec: Data):
        """The collator of the PaKD stages (``None``: Trainer's default)."""
        return None

    def training_split(self, split, spec: Data):
        """The encoded training split as the training stages read it (teacher fine-tune, PaKD
        stages, ablation arms); here as it is, for images and clips randomly changed (``data.augment``)."""
        return split

    def eval_size(self, split, preprocessor, spec: Data) -> int:
        """How many items :meth:`score` scores on ``split`` (examples; tokens for text-generation)."""
        return len(split)

    def benchmark_examples(self, examples: list, spec: Data) -> list:
        """The raw examples the latency benchmark feeds (default: the test examples as they are)."""
        return examples


# A teacher built from ``teacher.config`` is trained from scratch on this machine. Configs take
# any value for a size, and the model is built only after the data: a negative width, or a
# layer count of 10**30, would end in a traceback or never end at all. Sizes are checked first.
MAX_CONFIG_SIZE = 1 << 20
MAX_IMAGE_SIDE = 2048
MAX_LAYERS = 1024  # layers (or blocks per stage): the check builds each one, without memory
MAX_SCRATCH_PARAMS = 2_000_000_000


def _is_size(key: str) -> bool:
    return (key.startswith("num_") or key.endswith(("_size", "_sizes", "_dim", "_layers"))
            or key in ("depths", "d_model", "max_position_embeddings"))


def _check_config_values(raw: dict[str, Any]) -> None:
    """Sizes (``num_*``, ``*_size(s)``, ``*_dim``, ``*_layers``, ``depths`` ...) are whole numbers
    in [1, 2**20] (image sides at most MAX_IMAGE_SIDE, layer counts MAX_LAYERS); dropouts and
    probabilities are in [0, 1]."""
    for key, value in raw.items():
        field = f"teacher.config.{key}"
        if value is None:  # transformers' own "unset" (classifier_dropout, head_dim): its default applies
            continue
        if _is_size(key):
            high = (MAX_IMAGE_SIDE if key in ("image_size", "patch_size") else
                    MAX_LAYERS if key.endswith("_layers") or key == "depths" else MAX_CONFIG_SIZE)
            values = value if isinstance(value, list) and value else [value]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high for v in values):
                raise RecipeError(field, f"is a size: must be a whole number in [1, {high:,}] (or a list of them), "
                                  f"got {describe(value)}")
        elif "dropout" in key or key.endswith("_prob"):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
                raise RecipeError(field, f"is a probability: must be in [0, 1], got {describe(value)}")


def _meta_check(auto_class, config, what: str, inputs) -> int:
    """Build ``auto_class`` from ``config`` on the meta device (shapes only: nothing is computed or
    stored) and run it in eval mode on ``inputs()`` (meta tensors); one RecipeError naming
    ``teacher.config`` for any failure, or for more than MAX_SCRATCH_PARAMS parameters. Returns
    the parameter count."""
    import torch

    with torch.device("meta"):
        try:
            model = auto_class.from_config(config)
        except ValueError as exc:  # Auto* has no class for this config
            raise RecipeError("teacher.config.model_type", f"'{config.model_type}' has no {what}: "
                              f"{one_line(str(exc), 200)}") from None
        except Exception as exc:  # noqa: BLE001 - any failure to build is the config's: one line
            raise RecipeError("teacher.config", f"transformers cannot build a '{config.model_type}' {what} from it: "
                              f"{type(exc).__name__}: {one_line(str(exc), 200)}") from None
        model.eval()  # training-mode batch norm refuses a batch of one 1x1 map: eval is the honest check
        params = sum(t.numel() for t in model.parameters())
        try:
            if params <= MAX_SCRATCH_PARAMS:
                model(**inputs())
        except Exception as exc:  # noqa: BLE001 - any failure to run is the config's: one line
            raise RecipeError("teacher.config", f"a '{config.model_type}' {what} built from it cannot run: "
                              f"{type(exc).__name__}: {one_line(str(exc), 200)}") from None
    if params > MAX_SCRATCH_PARAMS:
        raise RecipeError("teacher.config", f"describes a model of {params:,} parameters, more than the "
                          f"{MAX_SCRATCH_PARAMS:,} a teacher trained from scratch here may have: make it smaller, "
                          "or name a pretrained 'model'")
    return params


def config_from_recipe(recipe: Recipe, extra: dict[str, Any]):
    """The transformers config that ``teacher.config`` describes (plus ``extra`` fields), with
    one-line errors naming the recipe field: configs accept any keyword as an extra attribute, so
    a misspelt field would be silently ignored; it is compared with the fields the class defines."""
    from transformers import AutoConfig

    raw = dict(recipe.teacher.config)
    _check_config_values(raw)
    model_type = raw.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **raw, **extra)
    except (ValueError, TypeError, KeyError) as exc:
        raise RecipeError("teacher.config", f"transformers cannot build a '{model_type}' config from it: {exc}") from None
    known = set(type(config)().to_dict())
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise RecipeError(f"teacher.config.{unknown[0]}", f"'{model_type}' configs have no such field; check the spelling")
    return config


class TextClassification(TaskAdapter):
    task = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    preprocessor_class = "AutoTokenizer"
    column_field = "text_column"

    def encode_batch(self, tokenizer, texts, spec):
        return dict(tokenizer(list(texts), truncation=True, max_length=spec.max_length, padding=True, return_tensors="pt"))

    def encode_dataset(self, data, tokenizer, spec):
        def encode(batch):  # unpadded: Trainer's collator pads each batch to its longest text
            out = tokenizer(batch[spec.text_column], truncation=True, max_length=spec.max_length)
            if spec.label_column in batch:
                out["labels"] = batch[spec.label_column]
            return out

        return data.map(encode, batched=True, remove_columns=next(iter(data.values())).column_names, desc="tokenize")

    def encode_texts(self, tokenizer, texts: list[str], spec):
        """Unlabelled texts (a transfer set) as a tokenized, unpadded Dataset."""
        from datasets import Dataset, DatasetDict

        data = DatasetDict({"texts": Dataset.from_dict({spec.text_column: list(texts)})})
        return self.encode_dataset(data, tokenizer, spec)["texts"]


class ImageClassification(TaskAdapter):
    task = "image-classification"
    auto_class = "AutoModelForImageClassification"
    preprocessor_class = "AutoImageProcessor"
    column_field = "image_column"

    def _config(self, recipe, label_kw):
        config = config_from_recipe(recipe, label_kw)
        channels = getattr(config, "num_channels", 3)
        if channels != 3:
            raise RecipeError(
                "teacher.config.num_channels",
                f"must be 3 (got {channels}): image pipelines convert every image to RGB before the processor runs",
            )
        return config

    def _processor(self, recipe, config):
        from transformers import ViTImageProcessor

        size = getattr(config, "image_size", 224)
        kwargs = dict(do_convert_rgb=True, do_resize=True, size={"height": size, "width": size},
                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
        known = set(ViTImageProcessor().to_dict()) | set(kwargs)
        unknown = sorted(set(recipe.teacher.processor or {}) - known)
        if unknown:
            raise RecipeError(f"teacher.processor.{unknown[0]}", "is not a ViTImageProcessor setting; check the spelling")
        kwargs.update(recipe.teacher.processor or {})
        for key in ("size", "crop_size"):
            value = kwargs.get(key)
            sides = value.items() if isinstance(value, dict) else [(None, value)] if value is not None else []
            for name, side in sides:
                if not (isinstance(side, int) and not isinstance(side, bool) and 1 <= side <= MAX_IMAGE_SIDE):
                    raise RecipeError(f"teacher.processor.{key}" + (f".{name}" if name is not None else ""),
                                      f"sides are whole numbers of pixels in [1, {MAX_IMAGE_SIDE:,}], got {describe(side)}")
        try:
            return ViTImageProcessor(**kwargs)
        except (TypeError, ValueError) as exc:
            raise RecipeError("teacher.processor", f"ViTImageProcessor refuses it: {exc}") from None

    def check_built_teacher(self, recipe):
        import torch
        from PIL import Image

        config = self._config(recipe, {"num_labels": 2})
        processor = self._processor(recipe, config)
        try:  # the processor as training calls it, on one small image
            pixels = processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
        except Exception as exc:  # noqa: BLE001 - whatever the processor raises is the recipe's fault: one line
            raise RecipeError("teacher.processor", f"ViTImageProcessor cannot process an image with it: "
                              f"{type(exc).__name__}: {exc}") from None
        return _meta_check(self.model_class(), config, "image-classification model",
                           lambda: {"pixel_values": torch.empty(pixels.shape, device="meta")})

    def check(self, recipe, labels):
        if recipe.teacher.config is None:
            return super().check(recipe, labels)
        self._processor(recipe, self._config(recipe, {"num_labels": len(labels)}))

    def build_teacher(self, recipe, label_kw):
        """A randomly initialised model from ``teacher.config`` and a ``ViTImageProcessor``.

        The processor converts every image to RGB (``pipeline("image-classification")`` does
        so anyway, and gray images then give three equal channels), resizes to the config's
        ``image_size`` and normalises with mean / std 0.5 unless ``teacher.processor`` says
        otherwise. It suits any model that takes ``pixel_values`` (ViT, ResNet, ...).
        """
        from transformers import AutoModelForImageClassification

        config = self._config(recipe, label_kw)
        try:
            model = AutoModelForImageClassification.from_config(config)
        except ValueError as exc:
            raise RecipeError("teacher.config.model_type", f"'{config.model_type}' has no image-classification model: {exc}") from None
        return model, self._processor(recipe, config)

    def encode_batch(self, processor, images, spec):
        return {"pixel_values": processor(images=list(images), return_tensors="pt")["pixel_values"]}

    def training_split(self, split, spec):
        if not isinstance(spec.augment, ImageAugment):
            return split
        from .image_augment import AugmentedImages

        return AugmentedImages(split, spec.augment)


class AudioClassification(TaskAdapter):
    task = "audio-classification"
    auto_class = "AutoModelForAudioClassification"
    preprocessor_class = "AutoFeatureExtractor"
    column_field = "audio_column"

    @staticmethod
    def _arrays(clips, default_rate: int) -> tuple[list[np.ndarray], int]:
        """Raw clips as float32 arrays: a list of samples, or a datasets Audio dict."""
        arrays, rates = [], set()
        for clip in clips:
            if isinstance(clip, dict):
                arrays.append(np.asarray(clip["array"], dtype=np.float32))
                rates.add(int(clip.get("sampling_rate", default_rate)))
            else:
                arrays.append(np.asarray(clip, dtype=np.float32))
                rates.add(default_rate)
        if len(rates) > 1 or (rates and rates != {default_rate}):
            raise ValueError(
                f"clips are sampled at {sorted(rates)} Hz but the feature extractor expects {default_rate} Hz: "
                "resample the data set (datasets: cast_column('audio', Audio(sampling_rate=...)))"
            )
        return arrays, default_rate

    def encode_batch(self, extractor, clips, spec):
        rate = int(extractor.sampling_rate)
        arrays, rate = self._arrays(clips, rate)
        if hasattr(extractor, "chunk_length") and hasattr(extractor, "n_samples"):
            # Whisper: the extractor pads / cuts to its own window (chunk_length seconds), which
            # must match the encoder's positions; max_seconds does not apply.
            out = extractor(arrays, sampling_rate=rate, return_tensors="pt")
            return {"input_features": out["input_features"]}
        samples = int(round(spec.max_seconds * rate))
        out = extractor(arrays, sampling_rate=rate, max_length=samples, truncation=True, padding="max_length", return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_values", "input_features", "attention_mask")}

    def training_split(self, split, spec):
        augment = spec.augment
        if not isinstance(augment, AudioAugment):
            return split
        from .audio_augment import AugmentedClips

        column = "input_features" if "input_features" in split.column_names else "input_values"
        if column == "input_values":
            augment.check_raw_samples("this model (input_values)")
        return AugmentedClips(split, augment, column)


class TextGeneration(TaskAdapter):
    """Causal language modelling (decoders such as Llama, Qwen2/3, Mistral), scored by perplexity.

    Data is plain text (``data.text_column``). With ``data.packing`` (default) every text is
    tokenized with EOS appended, the token stream of a split is concatenated and cut into
    blocks of ``data.max_length`` (the tail shorter than a block is dropped), and every token
    of a block is a label: the usual pretraining layout, with no padding. Without packing each
    text is one example, truncated to ``max_length`` and padded per batch (padding is not a
    label). Perplexity is ``exp`` of the mean next-token negative log-likelihood over every
    labelled token of the split, computed from the last hidden states in chunks (a
    ``[batch, tokens, vocab]`` logits tensor is never built).

    A teacher built from ``teacher.config`` (a Llama-family config, trained from scratch by the
    teacher stage) gets a byte-level BPE tokenizer trained on the training split with the
    config's ``vocab_size`` (Hugging Face ``tokenizers``; specials ``<pad>``, ``<s>``,
    ``</s>``), so nothing is downloaded and no byte is out of vocabulary.
    """

    task = "text-generation"
    auto_class = "AutoModelForCausalLM"
    preprocessor_class = "AutoTokenizer"
    column_field = "text_column"
    metric = "perplexity"
    higher_is_better = False
    labelled = False

    def _config(self, recipe):
        config = config_from_recipe(recipe, {})
        raw = recipe.teacher.config
        if "vocab_size" not in raw:
            raise RecipeError("teacher.config.vocab_size", "is required: the tokenizer trained on the data gets that many tokens")
        if raw["vocab_size"] < 300:
            raise RecipeError("teacher.config.vocab_size", f"must be >= 300 (256 bytes, 3 specials and merges), got {raw['vocab_size']}")
        return config

    def check(self, recipe, labels):
        if recipe.teacher.config is not None:
            self.check_built_teacher(recipe)

    def check_built_teacher(self, recipe):
        import torch
        from transformers import AutoModelForCausalLM

        if recipe.teacher.processor:
            raise RecipeError("teacher.processor", "a causal LM's tokenizer is trained on the data; remove the block")
        config = self._config(recipe)
        return _meta_check(AutoModelForCausalLM, config, "causal-LM model",
                           lambda: {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta")})

    @staticmethod
    def train_tokenizer(texts: list[str], vocab_size: int):
        """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same texts)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], min_frequency=2,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       model_max_length=1_000_000)

    def load_teacher(self, recipe, labels, data=None):
        if recipe.teacher.config is None:
            from .data import resolve_model

            source = resolve_model(recipe.teacher.model)
            tokenizer = self.load_preprocessor(source)
            if tokenizer.pad_token is None:  # Llama's tokenizers have none: pad with EOS (padding is never a label)
                tokenizer.pad_token = tokenizer.eos_token
            return self.model_class().from_pretrained(source), tokenizer
        if data is None:
            raise ValueError("a causal-LM teacher built from a config needs the training texts for its tokenizer")
        from transformers import AutoModelForCausalLM

        config = self._config(recipe)
        tokenizer = self.train_tokenizer(list(data["train"][self.column(recipe.data)]), config.vocab_size)
        config.vocab_size = len(tokenizer)
        config.pad_token_id, config.bos_token_id, config.eos_token_id = (
            tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        return AutoModelForCausalLM.from_config(config), tokenizer

    def encode_batch(self, tokenizer, texts, spec):
        return dict(tokenizer(list(texts), truncation=True, max_length=spec.max_length, padding=True,
                              return_tensors="pt"))

    def encode_dataset(self, data, tokenizer, spec):
        column = spec.text_column
        eos = tokenizer.eos_token or ""
        def tokenize(batch):  # blank texts (WikiText has many) add nothing
            texts = [t + eos for t in batch[column] if t and t.strip()]
            out = tokenizer(texts, truncation=not spec.packing, max_length=spec.max_length if not spec.packing else None)
            return {"input_ids": out["input_ids"]}

        columns = next(iter(data.values())).column_names
        tokenized = data.map(tokenize, batched=True, remove_columns=columns, desc="tokenize")
        if not spec.packing:  # labels are the tokens (EOS too); the collator pads labels with -100
            return tokenized.map(lambda b: {"attention_mask": [[1] * len(r) for r in b["input_ids"]],
                                            "labels": b["input_ids"]}, batched=True, desc="labels")
        from datasets import Dataset, DatasetDict

        size = spec.max_length
        packed = {}
        for name, split in tokenized.items():
            # one stream per split in a numpy array (not a Python int per token); the tail that does not
            # fill a block is dropped once
            rows = split.with_format("numpy")["input_ids"]
            stream = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]) if len(rows) else np.zeros(0, np.int32)
            blocks = stream[: len(stream) // size * size].reshape(-1, size).astype(np.int64)  # losses index with int64
            packed[name] = Dataset.from_dict({"input_ids": blocks, "attention_mask": np.ones_like(blocks),
                                              "labels": blocks})
        return DatasetDict(packed).with_format("numpy")

    def benchmark_examples(self, texts, spec):
        """Prefill inputs of one length: consecutive test texts joined until each is long enough
        to fill ``data.max_length`` tokens (the encoding then cuts it there)."""
        out, current = [], ""
        for text in texts:
            current = f"{current} {text}".strip()
            if len(current) >= 8 * spec.max_length:  # bytes per BPE token stay under 8 in prose
                out.append(current)
                current = ""
        return out or [current]

    def data_collator(self, tokenizer, spec):
        if spec.packing:
            return None  # equal blocks with their labels: Trainer's default collator stacks them
        from transformers import DataCollatorForSeq2Seq

        # pads input_ids with the pad token and labels with -100, so an EOS that doubles as the pad
        # token (Llama / Qwen tokenizers) is still a label where it is real
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def eval_size(self, split, tokenizer, spec) -> int:
        """How many tokens :meth:`score` scores on ``split`` (the labelled positions after the first
        of each block or text)."""
        from datasets import DatasetDict

        encoded = self.encode_dataset(DatasetDict({"split": split}), tokenizer, spec)["split"]
        return int(sum(max(0, int((np.asarray(r) != -100).sum()) - 1) for r in encoded["labels"]))

    def score(self, model, tokenizer, split, spec, batch_size):
        from datasets import DatasetDict

        encoded = self.encode_dataset(DatasetDict({"split": split}), tokenizer, spec)["split"]
        return perplexity(model, encoded, batch_size, pad_token_id=tokenizer.pad_token_id)


def perplexity(model, encoded, batch_size: int, *, pad_token_id: int | None = None, chunk_size: int = 1024) -> float:
    """``exp`` of the mean next-token NLL of a causal LM over every labelled token of
    ``encoded`` (rows of ``input_ids`` and, when present, ``labels`` with -100 for tokens that do
    not count; padded per batch with ``pad_token_id``). The LM head runs on ``chunk_size``
    positions at a time."""

    import torch
    import torch.nn.functional as F

    from ..distill import check_plain_head, last_hidden_state

    model.eval()
    device = getattr(model, "device", torch.device("cpu"))
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    rows = [{k: list(map(int, encoded[i][k])) for k in ("input_ids", "labels") if k in encoded.column_names}
            for i in range(len(encoded))]
    pad = 0 if pad_token_id is None else int(pad_token_id)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):
                n = len(r["input_ids"])
                ids[j, :n] = torch.tensor(r["input_ids"])
                labels[j, :n] = torch.tensor(r.get("labels", r["input_ids"]))
                mask[j, :n] = 1
            # one position's logits (to check that the head alone makes them), the decoder's last
            # hidden state from a hook: no [batch, tokens, vocab] tensor, no tuple of every layer's states
            with last_hidden_state(model) as caught:
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits
            hidden = caught[0]
            if start == 0:
                check_plain_head(model, head, hidden, logits)
            targets = labels[:, 1:].to(device)
            valid = targets.ne(-100)
            h, y = hidden[:, :-1][valid], targets[valid]
            for i in range(0, y.numel(), chunk_size):
                total += float(F.cross_entropy(head(h[i:i + chunk_size]).float(), y[i:i + chunk_size], reduction="sum"))
            count += int(y.numel())
    if not count:
        raise ValueError("no token to score: the split is empty or shorter than one block (data.max_length)")
    return math.exp(total / count)


SAMPLE_TEXTS = [
    "A warm, funny and surprisingly moving film that earns every one of its laughs.",
    "The plot is thin, the jokes are stale, and the whole thing drags on far too long.",
    "An uneven but ambitious drama with two terrific performances at its centre.",
    "Neither scary nor clever, this sequel has nothing new to say.",
]


def folder_task(folder: Path) -> str:
    """The task of a saved model folder, from its preprocessor files (and, for text, whether its
    config names a causal-LM class)."""
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        try:
            architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            architectures = []
        if set(architectures) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            return "text-generation"
        return "text-classification"
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        kind = json.loads(pre.read_text())
        if "image_processor_type" in kind:
            return "image-classification"
        if "feature_extractor_type" in kind:
            return "audio-classification"
    raise FileNotFoundError(
        f"{folder} has no tokenizer or preprocessor_config.json, so there is no way to feed it inputs: save the "
        "tokenizer or processor beside the model (tokenizer.save_pretrained(folder), or "
        "PaKDTrainer(processing_class=...) which saves it with the model)"
    )


def sample_examples(task: str, preprocessor) -> list:
    """Inputs for a benchmark without data: fixed sentences, or seeded noise images / clips."""
    rng = np.random.default_rng(0)
    if task == "text-generation":  # long enough to fill data.max_length tokens (the prefill)
        return [" ".join(SAMPLE_TEXTS * 12)] * 4
    if task == "text-classification":
        return SAMPLE_TEXTS
    if task == "image-classification":
        from PIL import Image

        return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    rate = int(getattr(preprocessor, "sampling_rate", 16000))
    return [(0.1 * rng.standard_normal(rate)).astype(np.float32) for _ in range(4)]


def default_data() -> Data:
    """A data block with every encoding setting at its default (``max_length``, ``max_seconds``,
    ``packing``, the column names), for commands that feed a saved model without a recipe
    (`pakd benchmark`, `pakd export`): the task adapters' data methods read nothing else."""
    return Data(dataset="")


ADAPTERS = {cls.task: cls() for cls in (TextClassification, ImageClassification, AudioClassification, TextGeneration)}


def adapter_for(recipe: Recipe) -> TaskAdapter:
    if recipe.task not in ADAPTERS:
        supported = ", ".join(ADAPTERS)
        raise RecipeError("task", f"`pakd compress` runs {supported} recipes; '{recipe.task}' is not wired yet")
    return ADAPTERS[recipe.task]
