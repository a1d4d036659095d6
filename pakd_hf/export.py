"""Saving pruned models that a STOCK config cannot describe, with generated modeling code.

A pruned model is stock-expressible when every layer keeps the same number of heads and FFN
neurons and (BERT family) ``hidden_size == heads * head_dim``; :func:`save_compact` then writes an
ordinary checkpoint (``save_pretrained`` + ``pakd.json``). Otherwise (``uniform: false`` recipes,
heads pruned without the hidden width or the reverse) it writes, next to the weights:

- ``configuration_pakd_<family>.py``: ``PaKD<Family>Config(<Family>Config)``, ``model_type
  "pakd_<family>"``, with the per-layer shapes in ``pakd_heads_per_layer`` /
  ``pakd_ffn_per_layer`` / ``pakd_head_dim``;
- ``modeling_pakd_<family>.py``: ``PaKD<Family>Model``, ``PaKD<Family>For...``: the stock
  transformers classes, each layer resized from those keys before ``post_init()``; its docstring
  lists this checkpoint's per-layer shapes;
- ``config.json`` with ``auto_map``, and ``pakd.json`` with ``"custom_code": true``.

Both files import only torch and transformers (they are the templates in ``pakd_hf/templates``
with a generated header), so the folder loads anywhere with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.

Without ``trust_remote_code``: importing this module registers the same classes with
``AutoConfig`` / ``AutoModel*`` (model types ``pakd_bert``, ``pakd_roberta``, ``pakd_vit``), so
where pakd-hf is installed a plain ``from_pretrained(folder)`` works. Importing this module is
cheap (standard library only): when transformers' Auto modules are not imported yet, the
registration waits for them through a post-import hook (configs when
``transformers.models.auto.configuration_auto`` is imported, models when
``transformers.models.auto.modeling_auto`` is).

Families: BERT and RoBERTa (``*Model``, ``*ForSequenceClassification``, ``*ForTokenClassification``,
``*ForQuestionAnswering``, ``*ForMultipleChoice``, ``*ForMaskedLM``) and ViT (``ViTModel``,
``ViTForImageClassification``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import json
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing from torch, transformers, arch or prune at module level: `import pakd_hf` imports this
# module for the registration above, and those take ~5 s to import against ~0.1 s for pakd_hf
# (see README, "Why some things are written here"); the functions import what they use.

__all__ = [
    "CUSTOM_MODEL_TYPES",
    "enable_auto_registration",
    "load_compact",
    "needs_custom_code",
    "register_auto_classes",
    "save_compact",
    "verify_compact",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"
_TEMPLATE_PACKAGE = f"{__package__ or 'pakd_hf'}.templates"


@dataclass(frozen=True)
class _Family:
    """One stock model type and its PaKD template pair."""

    model_type: str  # stock config.model_type
    adapter_family: str  # pakd.json "family" (the arch adapter's)
    name: str  # "Bert" -> PaKDBertConfig, PaKDBertModel, ...
    title: str  # for prose

    @property
    def custom_model_type(self) -> str:
        return f"pakd_{self.model_type}"

    @property
    def config_module(self) -> str:
        return f"configuration_pakd_{self.model_type}"

    @property
    def modeling_module(self) -> str:
        return f"modeling_pakd_{self.model_type}"

    @property
    def config_class(self) -> str:
        return f"PaKD{self.name}Config"


_FAMILIES = {
    f.model_type: f
    for f in (
        _Family("bert", "bert", "Bert", "BERT"),
        _Family("roberta", "bert", "Roberta", "RoBERTa"),
        _Family("vit", "vit", "ViT", "ViT"),
    )
}
CUSTOM_MODEL_TYPES = tuple(f.custom_model_type for f in _FAMILIES.values())


# =====================================================================================
# Registration with transformers' Auto classes (in-process; no trust_remote_code needed)
# =====================================================================================
_registered = {"configs": False, "models": False}
_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _template_module(family: _Family, kind: str):
    name = family.config_module if kind == "config" else family.modeling_module
    return importlib.import_module(f"{_TEMPLATE_PACKAGE}.{name}")


def _register_configs() -> None:
    if _registered["configs"]:
        return
    from transformers.models.auto.configuration_auto import AutoConfig

    for fam in _FAMILIES.values():
        cls = getattr(_template_module(fam, "config"), fam.config_class)
        AutoConfig.register(fam.custom_model_type, cls, exist_ok=True)
        # a plain save_pretrained of a loaded model then copies the code files and keeps auto_map
        cls.register_for_auto_class("AutoConfig")
    _registered["configs"] = True


def _register_models() -> None:
    if _registered["models"]:
        return
    _register_configs()
    from transformers.models.auto import modeling_auto

    for fam in _FAMILIES.values():
        config_cls = getattr(_template_module(fam, "config"), fam.config_class)
        mod = _template_module(fam, "modeling")
        for auto_name, cls_name in mod.AUTO_MAP.items():
            if auto_name == "AutoConfig":
                continue
            model_cls = getattr(mod, cls_name)
            getattr(modeling_auto, auto_name).register(config_cls, model_cls, exist_ok=True)
            model_cls.register_for_auto_class(auto_name)
    _registered["models"] = True


def register_auto_classes() -> None:
    """Register the PaKD config and model classes with ``AutoConfig`` / ``AutoModel*`` now
    (imports transformers' modeling code). Idempotent; :func:`load_compact` calls it."""
    if _registered["configs"] and _registered["models"]:
        return
    busy, _state["busy"] = _state["busy"], True
    try:
        _register_models()
    finally:
        _state["busy"] = busy
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _module_ready(name: str, attr: str, just_imported: str | None = None) -> bool:
    mod = sys.modules.get(name)
    return mod is not None and hasattr(mod, attr) and (name == just_imported or not _initializing(mod))


def _initializing(mod) -> bool:
    return bool(getattr(getattr(mod, "__spec__", None), "_initializing", False))


def _transformers_importing(except_name: str | None = None) -> bool:
    """Is some transformers module half-executed (are we inside its import)?"""
    for name, mod in list(sys.modules.items()):
        if (name == "transformers" or name.startswith("transformers.")) and name != except_name \
                and _initializing(mod):
            return True
    return False


_state = {"busy": False, "depth": 0, "failed": False}


def _maybe_register(just_imported: str | None = None) -> None:
    """Register what transformers' loaded Auto modules allow, unless a transformers import is
    still running (configuration classes themselves import the Auto modules half-way through
    their own import, e.g. ``BertConfig``'s docstring decorator; importing our templates then
    would see half-initialised modules). From the hook: called when the OUTERMOST transformers
    module import finishes (``just_imported``, which still counts as initialising)."""
    if _state["busy"] or _state["failed"] or (_registered["configs"] and _registered["models"]):
        return
    if _transformers_importing(except_name=just_imported):
        return
    _state["busy"] = True
    try:
        if not _registered["configs"] and _module_ready(_CONFIG_AUTO, "AutoConfig", just_imported):
            _register_configs()
        if not _registered["models"] and _module_ready(_MODELING_AUTO, "AutoModel", just_imported):
            _register_models()
    except Exception as e:  # never break the user's `import transformers...`
        _state["failed"] = True  # do not retry on every import (register_auto_classes() still can)
        warnings.warn(f"pakd_hf: could not register the PaKD classes with transformers' Auto classes "
                      f"({type(e).__name__}: {e}); load custom-code checkpoints with trust_remote_code=True "
                      "or call pakd_hf.export.register_auto_classes()", RuntimeWarning, stacklevel=2)
    finally:
        _state["busy"] = False
    if (_state["failed"] or (_registered["configs"] and _registered["models"])) and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _CallbackLoader(importlib.abc.Loader):
    """Wraps a transformers module's real loader: executes the module, then tries to register."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _state["depth"] += 1
        try:
            self._loader.exec_module(module)
        finally:
            _state["depth"] -= 1
        if _state["depth"] == 0:  # the outermost transformers import is done
            _maybe_register(just_imported=self._name)

    def __getattr__(self, attr):  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, attr)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that, until the registration is done, wraps the loader of every
    ``transformers`` module imported (a post-import hook); it finds nothing itself."""

    def find_spec(self, fullname, path, target=None):
        if _state["busy"] or not (fullname == "transformers" or fullname.startswith("transformers.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CallbackLoader(spec.loader, fullname)
        return spec


_FINDER = _AfterImportFinder()


def enable_auto_registration() -> None:
    """Register the PaKD classes with transformers' Auto classes as soon as those exist: now when
    they are imported already, else right after the import that loads them (a post-import hook on
    transformers modules, removed once done). Runs when this module is imported; it costs nothing
    until transformers' Auto modules are loaded, then registering configs is ~10 ms and models
    imports ``transformers.modeling_utils`` and the BERT/RoBERTa/ViT modeling modules."""
    _maybe_register()
    if not (_registered["configs"] and _registered["models"]) and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


# =====================================================================================
# Deciding, saving, verifying, loading
# =====================================================================================
def _unwrap(model):
    return model if hasattr(model, "config") else getattr(model, "module", model)


def _stock_model_type(model_type: str) -> str:
    return model_type[len("pakd_"):] if model_type.startswith("pakd_") else model_type


def _stock_class_name(model) -> str:
    name = type(model).__name__
    return name[len("PaKD"):] if name.startswith("PaKD") else name


def _family_of(model_type: str) -> _Family:
    from .arch import UnsupportedArchitectureError

    fam = _FAMILIES.get(_stock_model_type(model_type))
    if fam is None:
        raise UnsupportedArchitectureError(
            f"custom-code export supports model types {sorted(_FAMILIES)}; got {model_type!r}")
    return fam


def _shapes(adapter) -> tuple[list[int], list[int], int, int]:
    """``(heads per layer, ffn per layer, head_dim, hidden)`` read from the model's modules."""
    L = adapter.num_layers
    return ([adapter.num_heads(i) for i in range(L)], [adapter.intermediate_size(i) for i in range(L)],
            adapter.head_dim(), adapter.hidden_size())


def needs_custom_code(model) -> bool:
    """True when the model's shapes cannot be written into its family's stock config: layers of
    different head counts / FFN widths, or (BERT family) ``hidden_size != heads * head_dim``.

    Read from the modules themselves (the adapter's ``check_structure`` on what they hold), so it
    works with or without a pakd structure record."""
    from .arch import HeadDimError, NonUniformStructureError, get_adapter
    from .arch.structure import Structure

    adapter = get_adapter(_unwrap(model))
    fits = adapter.stock_config_fits()  # families whose stock config is not one shape per layer (ResNet)
    if fits is not None:
        return not fits
    heads, ffn, head_dim, hidden = _shapes(adapter)
    if len(set(heads)) > 1 or len(set(ffn)) > 1:
        return True
    try:
        adapter.check_structure(Structure.full(len(heads), heads[0], head_dim, ffn[0], hidden))
    except (HeadDimError, NonUniformStructureError):
        return True
    return False


def _check_no_structural_masks(model) -> None:
    from .carried import active_masks

    state = active_masks(model)
    if state is not None and state.target != state.base:
        raise ValueError("the model still has structural masks: compact(model, mask_state) before saving "
                         "(unstructured / N:M masks are fine: they are saved as dense zeros)")


def _clean_config_dict(config) -> dict[str, Any]:
    d = config.to_dict()
    for k in ("model_type", "architectures", "auto_map", "transformers_version",
              "pakd_heads_per_layer", "pakd_ffn_per_layer", "pakd_head_dim"):
        d.pop(k, None)
    return d


def _rebuild(model, cls, config):
    """A ``cls(config)`` holding ``model``'s weights (strict: every tensor must fit)."""
    import torch

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights

    param = next(model.parameters())
    with no_init_weights():
        new = cls(config)
    try:
        new.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise RuntimeError(f"{cls.__name__} built from the exported config does not fit the model's tensors: "
                           f"{msg}") from e
    return new.to(device=torch.device("cpu"), dtype=param.dtype)


def save_compact(model, folder, *, extra_pakd: dict[str, Any] | None = None) -> Path:
    """Save a compacted model to ``folder`` so that ``from_pretrained`` reloads it exactly.

    Stock-expressible (see :func:`needs_custom_code`): ``save_pretrained`` + ``pakd.json``
    (``"custom_code": false``) through :func:`pakd_hf.prune.structure.save_pruned`, no code files.
    Otherwise: config.json of ``model_type "pakd_<family>"`` with the per-layer keys and
    ``auto_map``, the generated ``configuration_pakd_<family>.py`` / ``modeling_pakd_<family>.py``,
    the weights, ``pakd.json`` (``"custom_code": true``), then :func:`verify_compact`.

    ``extra_pakd``: more top-level keys for pakd.json (e.g. the recipe's stage log). The model
    must carry its structure record (as :func:`~pakd_hf.prune.compact` leaves it, or
    ``set_structure(model, load_structure(folder))`` after a reload; :func:`load_compact` attaches
    it). The model itself is not modified.
    """
    from .arch import UnsupportedArchitectureError, get_adapter
    from .arch.structure import Structure
    from .prune.structure import save_pruned, set_structure, write_pakd_json

    model = _unwrap(model)
    adapter = get_adapter(model)
    _check_no_structural_masks(model)
    extra = dict(extra_pakd or {})
    reserved = sorted({"custom_code", "model_type", "code_files"} & set(extra))
    if reserved:
        raise ValueError(f"pakd.json keys {reserved} are reserved")
    structure = Structure.from_model(model, adapter)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stock_name = _stock_class_name(model)

    if not needs_custom_code(model):
        if type(model).__name__.startswith("PaKD"):  # a loaded custom model pruned back to stock shapes
            import transformers

            stock_cls = getattr(transformers, stock_name)
            model = _rebuild(model, stock_cls, stock_cls.config_class.from_dict(_clean_config_dict(model.config)))
            set_structure(model, structure)
        save_pruned(model, folder, extra={"custom_code": False, **extra})
        for fam in _FAMILIES.values():  # code files of an earlier custom-code export of this folder
            for stale in (folder / f"{fam.config_module}.py", folder / f"{fam.modeling_module}.py"):
                stale.unlink(missing_ok=True)
        return folder

    fam = _family_of(model.config.model_type)
    register_auto_classes()
    config_mod = _template_module(fam, "config")
    modeling_mod = _template_module(fam, "modeling")
    cls = getattr(modeling_mod, f"PaKD{stock_name}", None)
    if cls is None:
        supported = sorted(n[len("PaKD"):] for n in modeling_mod.AUTO_MAP.values() if not n.endswith("Config"))
        raise UnsupportedArchitectureError(
            f"custom-code export does not cover {stock_name}; supported {fam.title} classes: {', '.join(supported)}")
    heads, ffn, head_dim, hidden = _shapes(adapter)
    d = _clean_config_dict(model.config)
    d.update(num_hidden_layers=len(heads), num_attention_heads=max(heads), intermediate_size=max(ffn),
             hidden_size=hidden, pakd_heads_per_layer=heads, pakd_ffn_per_layer=ffn, pakd_head_dim=head_dim)
    config = getattr(config_mod, fam.config_class).from_dict(d)
    config.auto_map = _auto_map(fam, modeling_mod)
    new = _rebuild(model, cls, config)
    new.save_pretrained(folder)
    # after save_pretrained, which may have copied the bare templates: the generated files win
    for path, text in render_files(fam, stock_name, structure, heads, ffn, head_dim, hidden,
                                   modeling_mod.AUTO_MAP).items():
        (folder / path).write_text(text)
    write_pakd_json(folder, structure, architecture=stock_name, family=adapter.family,
                    extra={"custom_code": True, "model_type": fam.custom_model_type,
                           "code_files": [f"{fam.config_module}.py", f"{fam.modeling_module}.py"], **extra})
    verify_compact(folder)
    return folder


def _auto_map(fam: _Family, modeling_mod) -> dict[str, str]:
    out = {}
    for auto_name, cls_name in modeling_mod.AUTO_MAP.items():
        module = fam.config_module if auto_name == "AutoConfig" else fam.modeling_module
        out[auto_name] = f"{module}.{cls_name}"
    return out


# ------------------------------------------------------------------ generated files
def _template_body(path: Path) -> str:
    """The template's source without its module docstring."""
    src = path.read_text()
    first = ast.parse(src).body[0]
    if not (isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)):
        return src
    return "\n".join(src.splitlines()[first.end_lineno:]).lstrip("\n")


def render_files(fam: _Family, stock_name: str, structure, heads: list[int], ffn: list[int], head_dim: int,
                 hidden: int, auto_map: dict[str, str]) -> dict[str, str]:
    """``{file name: text}`` of the two code files for one checkpoint: the templates with a header
    naming the source architecture and listing the per-layer shapes."""

    from . import __version__

    def para(text: str) -> str:
        return textwrap.fill(" ".join(text.split()), width=96)

    why = []
    if len(set(heads)) > 1 or len(set(ffn)) > 1:
        why.append("its layers differ in head count or FFN width")
    if fam.adapter_family == "bert" and len(set(heads)) == 1 and heads[0] * head_dim != hidden:
        why.append(f"its hidden_size {hidden} is not heads x head_dim ({heads[0]} x {head_dim})")
    reason = " and ".join(why) or "its shapes differ from what the stock config derives"
    task_auto = {v: k for k, v in auto_map.items()}.get(f"PaKD{stock_name}", "AutoModel")
    o = structure
    rows = ["    layer  original layer  heads  q/k/v width   ffn"]
    for i, (h, f) in enumerate(zip(heads, ffn)):
        orig = o.layers[i] if i < len(o.layers) else "?"
        rows.append(f"    {i:>5}  {orig!s:>14}  {h:>5}  {h * head_dim:>11}  {f:>4}")
    modeling_doc = "\n\n".join([
        f"PaKD-pruned {stock_name}: generated by pakd-hf {__version__} (pakd_hf.export.save_compact).",
        para(f"""Do not edit: re-export the model instead. The checkpoint next to this file was pruned from a
             transformers {stock_name} (model_type "{fam.model_type}"), and {reason}, which a stock
             {fam.name}Config cannot describe. The classes below are the stock transformers {fam.title}
             classes; before post_init() every layer is resized to the shapes that config.json lists in
             pakd_heads_per_layer / pakd_ffn_per_layer / pakd_head_dim (configuration_pakd_{fam.model_type}.py)."""),
        para(f"""This checkpoint: hidden_size {hidden}, head_dim {head_dim}, {len(heads)} layers. Original model:
             {o.num_layers} layers of {o.num_heads} heads x {o.head_dim}, FFN {o.intermediate_size}, hidden
             {o.hidden_size} (pakd.json lists the kept original heads, neurons and hidden dims)."""),
        "\n".join(rows),
        "Load it with\n\n"
        f"    {task_auto}.from_pretrained(folder, trust_remote_code=True)\n\n"
        + para("""or, where pakd-hf is installed, `import pakd_hf.export` first and leave trust_remote_code
               out. Imports only torch and transformers."""),
    ])
    config_doc = "\n\n".join([
        f"PaKD {fam.title} configuration: generated by pakd-hf {__version__} (pakd_hf.export.save_compact).",
        para(f"""Do not edit. {fam.name}Config plus the per-layer shapes of the pruned {stock_name} next to
             this file: heads per layer {heads}, FFN per layer {ffn}, head_dim {head_dim}, hidden_size
             {hidden}. Imports only transformers."""),
    ])
    out = {}
    for module, doc in ((fam.config_module, config_doc), (fam.modeling_module, modeling_doc)):
        out[f"{module}.py"] = f'"""{doc}\n"""\n\n' + _template_body(TEMPLATES / f"{module}.py")
    return out


# ------------------------------------------------------------------ verification
_PATTERNS = {
    "bert": {
        "q": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self\.query\.weight$",
        "o": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.output\.dense\.weight$",
        "fc1": r"(?:^|\.)encoder\.layer\.(\d+)\.intermediate\.dense\.weight$",
        "fc2": r"(?:^|\.)encoder\.layer\.(\d+)\.output\.dense\.weight$",
    },
    "vit_legacy": {
        "q": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.attention\.query\.weight$",
        "o": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.output\.dense\.weight$",
        "fc1": r"(?:^|\.)encoder\.layer\.(\d+)\.intermediate\.dense\.weight$",
        "fc2": r"(?:^|\.)encoder\.layer\.(\d+)\.output\.dense\.weight$",
    },
    "vit": {
        "q": r"(?:^|\.)layers\.(\d+)\.attention\.q_proj\.weight$",
        "o": r"(?:^|\.)layers\.(\d+)\.attention\.o_proj\.weight$",
        "fc1": r"(?:^|\.)layers\.(\d+)\.mlp\.fc1\.weight$",
        "fc2": r"(?:^|\.)layers\.(\d+)\.mlp\.fc2\.weight$",
    },
}


def _config_layer_shapes(config: dict[str, Any]) -> tuple[list[int], list[int], int, int, list[str]]:
    """``(heads, ffn, head_dim, hidden, problems)`` from a PaKD config.json dict (no classes built)."""
    problems: list[str] = []
    n = config.get("num_hidden_layers")
    hidden = config.get("hidden_size")
    heads = config.get("pakd_heads_per_layer")
    ffn = config.get("pakd_ffn_per_layer")
    nh = config.get("num_attention_heads") or 1
    head_dim = config.get("pakd_head_dim") or config.get("head_dim") or (hidden // nh if hidden else 0)
    if heads is None:
        heads = [nh] * (n or 0)
    if ffn is None:
        ffn = [config.get("intermediate_size")] * (n or 0)
    if len(heads) != n or len(ffn) != n:
        problems.append(f"config.json has {len(heads)} pakd_heads_per_layer and {len(ffn)} pakd_ffn_per_layer "
                        f"entries for num_hidden_layers={n}")
    if heads and config.get("num_attention_heads") != max(heads):
        problems.append(f"num_attention_heads={config.get('num_attention_heads')} but "
                        f"max(pakd_heads_per_layer)={max(heads)}")
    if ffn and config.get("intermediate_size") != max(ffn):
        problems.append(f"intermediate_size={config.get('intermediate_size')} but max(pakd_ffn_per_layer)={max(ffn)}")
    return list(heads), list(ffn), int(head_dim), hidden, problems


def _custom_problems(folder: Path, config: dict[str, Any]) -> list[str]:
    from .arch.base import layer_shapes
    from .arch.structure import Structure
    from .prune.structure import PAKD_JSON, read_pakd_json, tensor_shapes

    fam = _family_of(config.get("model_type", "?"))
    heads, ffn, head_dim, hidden, problems = _config_layer_shapes(config)
    problems = [f"config.json: {p}" for p in problems]
    shapes = tensor_shapes(folder)
    key = fam.adapter_family
    if key == "vit":
        key = "vit_legacy" if any(".encoder.layer." in k or k.startswith("encoder.layer.") for k in shapes) else "vit"
    n = len(heads)
    for role, pattern in _PATTERNS[key].items():
        found = layer_shapes(shapes, pattern)
        if sorted(found) != list(range(n)):
            problems.append(f"{role}: tensors for layers {sorted(found)} but config.json describes {n} layers")
        for i, s in sorted(found.items()):
            if i >= n:
                continue
            width = heads[i] * head_dim
            want = {"q": [width, hidden], "o": [hidden, width], "fc1": [ffn[i], hidden], "fc2": [hidden, ffn[i]]}[role]
            if s != want:
                problems.append(f"layer {i} {role}: shape {s}, config.json implies {want}")
    for k, s in shapes.items():
        if (k.endswith("embeddings.word_embeddings.weight") or k.endswith("embeddings.cls_token")) and s[-1] != hidden:
            problems.append(f"{k}: shape {s}, config.json hidden_size {hidden}")
    auto_map = config.get("auto_map") or {}
    if "AutoConfig" not in auto_map:
        problems.append("config.json has no auto_map.AutoConfig (trust_remote_code loading would fail)")
    for ref in auto_map.values():
        fname = ref.split("--")[-1].split(".")[0] + ".py"
        if not (folder / fname).exists():
            problems.append(f"auto_map names {ref} but {fname} is missing")
    if (folder / PAKD_JSON).exists():
        rec = read_pakd_json(folder)
        s = Structure.from_dict(rec["structure"])
        if rec.get("family") not in (None, fam.adapter_family):
            problems.append(f"pakd.json family {rec.get('family')!r} but config model_type "
                            f"{config.get('model_type')!r}")
        if rec.get("custom_code") is not True:
            problems.append("pakd.json does not mark the folder custom_code: true")
        want = {"layers": len(s.layers), "heads per layer": s.heads_per_layer(), "ffn per layer": s.ffn_per_layer(),
                "hidden_size": len(s.hidden), "head_dim": s.head_dim}
        have = {"layers": n, "heads per layer": heads, "ffn per layer": ffn, "hidden_size": hidden,
                "head_dim": head_dim}
        for k, v in want.items():
            if have[k] != v:
                problems.append(f"pakd.json structure implies {k} {v}, config.json has {have[k]}")
    return problems


def verify_compact(folder) -> None:
    """Raise :class:`~pakd_hf.prune.structure.CheckpointMismatchError` (one line) when a saved
    folder's tensors contradict its config.json or pakd.json. Stock folders go through
    :func:`~pakd_hf.prune.structure.verify_against_config`; custom-code folders are checked per
    layer against ``pakd_heads_per_layer`` / ``pakd_ffn_per_layer`` / ``pakd_head_dim``, plus
    their ``auto_map`` files. Reads shapes only; no model is built."""
    from .prune.structure import CheckpointMismatchError, verify_against_config

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointMismatchError(f"{folder}: cannot read config.json ({e})") from None
    if not str(config.get("model_type", "")).startswith("pakd_"):
        verify_against_config(folder)
        return
    try:
        problems = _custom_problems(folder, config)
    except CheckpointMismatchError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        problems = [f"unreadable pakd metadata ({type(e).__name__}: {e})"]
    if problems:
        raise CheckpointMismatchError(" ".join(f"{folder}: {'; '.join(problems)}".split()))


def load_compact(folder, auto_class=None, **kwargs):
    """Verify ``folder`` (:func:`verify_compact`), then load it without ``trust_remote_code``.

    ``auto_class``: an ``AutoModel*`` class (or its name); by default the class that saved it
    (``config.architectures[0]``: a transformers class, or the registered PaKD class for
    custom-code folders). ``kwargs`` go to ``from_pretrained``. The pakd.json structure record is
    attached to the model, so it can be pruned further and saved again."""
    from .prune.structure import PAKD_JSON, load_structure, set_structure

    folder = Path(folder)
    verify_compact(folder)
    config = json.loads((folder / "config.json").read_text())
    model_type = str(config.get("model_type", ""))
    custom = model_type.startswith("pakd_")
    if custom:
        register_auto_classes()
    if isinstance(auto_class, str):
        import transformers

        auto_class = getattr(transformers, auto_class)
    if auto_class is None:
        arch = (config.get("architectures") or [None])[0]
        if arch is None:
            raise ValueError(f"{folder}: config.json names no architecture; pass auto_class")
        if custom:
            auto_class = getattr(_template_module(_family_of(model_type), "modeling"), arch, None)
        else:
            import transformers

            auto_class = getattr(transformers, arch, None)
        if auto_class is None:
            raise ValueError(f"{folder}: unknown architecture {arch!r}; pass auto_class")
    model = auto_class.from_pretrained(folder, **kwargs)
    if (folder / PAKD_JSON).exists():
        set_structure(model, load_structure(folder))
    return model


enable_auto_registration()
