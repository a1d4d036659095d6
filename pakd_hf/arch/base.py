"""The architecture adapter contract: where a model family keeps what pruning touches.

An adapter answers anatomy questions about ONE model instance (which modules are the layers,
the q/k/v/o projections, the FFN, the LayerNorms, the embeddings and the task head) and knows
which config fields describe the shapes. Everything else (importance, masks, compaction,
measurement) is generic code in :mod:`pakd_hf.prune` driven by these answers.

The common currency is the :class:`Cut`: "this module's tensors, along this axis, are indexed by
the units of one structure kind". Masking zeroes entries along the axis, importance reduces
over everything except the axis, compaction ``index_select``\\ s along it. A family only lists
its cuts; it never slices tensors itself.

Adding a family: one new file in ``pakd_hf/arch/`` defining a subclass decorated with
:func:`pakd_hf.arch.register` (modules in that folder are discovered automatically).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .structure import Structure


class UnsupportedArchitectureError(ValueError):
    """The model (or one part of it) has no pruning adapter."""


class HeadDimError(ValueError):
    """A structure whose attention head dim cannot be written into the family's config.

    Raised at selection / compaction time, before any tensor is touched: e.g. stock BERT
    derives ``attention_head_size = hidden_size // num_attention_heads``, so a kept
    hidden size that is not ``kept_heads * head_dim`` cannot be reloaded by stock code.
    """


class NonUniformStructureError(ValueError):
    """A structure whose layers differ in shape cannot be described by a stock config."""


@dataclass(frozen=True, eq=False)
class Cut:
    """Tensors of ``module`` whose ``axis`` is indexed by the units of one structure kind.

    - ``nn.Linear``: axis 0 = output features (weight rows and bias), axis 1 = input features
      (weight columns).
    - ``nn.Embedding``: axis 1 = embedding dim.   ``nn.LayerNorm``: axis 0 (weight and bias).
    - an RMSNorm (``nn.RMSNorm`` or a family's own ``*RMSNorm`` with one weight vector, e.g.
      ``LlamaRMSNorm``; see :func:`is_rms_norm`): axis 0 (weight).
    - ``nn.Conv2d``: axis 0 = out channels (weight and bias).
    - ``nn.Conv1d`` (``groups=1``): axis 0 = out channels (weight and bias), axis 1 = in channels
      (weight only).
    - ``name`` set: the raw parameter ``module.<name>`` (e.g. ViT's ``cls_token``), along ``axis``.
    - ``conv_groups > 1`` (with ``axis=1``): the in channels of a GROUPED convolution weight
      ``[C_out, C_in / G, *kernel]`` (``module.<name>``, default ``weight``). In-channel unit ``d``
      is column ``d % (C_in / G)`` of the rows of group ``d // (C_in / G)`` only, so it is not a
      plain index along axis 1: masks, importance and compaction have their own rule for it, and
      compaction needs every group to keep the same number of channels.

    - ``nn.Conv2d`` (``groups=1``): axis 1 = in channels (weight only).
    - ``nn.BatchNorm*``: axis 0 (weight and bias; compaction also slices ``running_mean`` /
      ``running_var``). Masking zeroes weight AND bias, so a masked channel outputs exactly 0 whatever
      its running statistics (train or eval mode).

    ``group`` consecutive entries form one unit (``head_dim`` for attention heads, 1 otherwise).

    ``offset`` / ``size`` (families whose units of one kind live in several separate tensors, e.g. a
    CNN's per-stage channels concatenated into one hidden vector): the cut holds only units
    ``offset .. offset + size - 1`` of the kind, as its entries ``0 .. size - 1``; other units do not
    touch it. Default (``size=None``): every unit, unshifted.
    """

    module: nn.Module
    axis: int
    name: str | None = None
    group: int = 1
    conv_groups: int = 1
    offset: int = 0
    size: int | None = None

    def local(self, units: list[int]) -> list[int]:
        """The units (of the kind) this cut holds, as its own indices (see ``offset`` / ``size``)."""
        if self.size is None and not self.offset:
            return list(units)
        hi = self.offset + self.size if self.size is not None else float("inf")
        return [u - self.offset for u in units if self.offset <= u < hi]

    def params(self) -> list[tuple[str, nn.Parameter, int]]:
        """``[(param_name, parameter, axis)]`` touched by this cut (bias only where it follows)."""
        m = self.module
        if self.conv_groups > 1:
            if self.axis != 1:
                raise ValueError("a grouped-convolution cut is along the in channels (axis 1)")
            name = self.name or "weight"
            return [(name, getattr(m, name), 1)]
        if self.name is not None:
            return [(self.name, getattr(m, self.name), self.axis)]
        if isinstance(m, nn.Linear):
            out = [("weight", m.weight, self.axis)]
            if self.axis == 0 and m.bias is not None:
                out.append(("bias", m.bias, 0))
            return out
        if isinstance(m, nn.Embedding):
            if self.axis != 1:
                raise ValueError("an Embedding cut is along its embedding dim (axis 1)")
            return [("weight", m.weight, 1)]
        if isinstance(m, nn.LayerNorm):
            return [(n, p, 0) for n, p in (("weight", m.weight), ("bias", m.bias)) if p is not None]
        if is_rms_norm(m):
            if self.axis != 0:
                raise ValueError("an RMSNorm cut is along its features (axis 0)")
            return [("weight", m.weight, 0)]
        if isinstance(m, nn.Conv2d):
            if self.axis == 0:
                return [(n, p, 0) for n, p in (("weight", m.weight), ("bias", m.bias)) if p is not None]
            if self.axis == 1 and m.groups == 1:
                return [("weight", m.weight, 1)]
            raise ValueError("a Conv2d cut is along its out channels (axis 0) or, groups=1, its in channels (axis 1)")
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if self.axis != 0:
                raise ValueError("a BatchNorm cut is along its channels (axis 0)")
            return [(n, p, 0) for n, p in (("weight", m.weight), ("bias", m.bias)) if p is not None]
        if isinstance(m, nn.Conv1d):
            _check_plain_conv1d(m)
            if self.axis == 0:
                return [(n, p, 0) for n, p in (("weight", m.weight), ("bias", m.bias)) if p is not None]
            if self.axis == 1:
                return [("weight", m.weight, 1)]
            raise ValueError("a Conv1d cut is along its out (axis 0) or in (axis 1) channels")
        raise TypeError(f"no cut rule for {type(m).__name__}")


def is_rms_norm(m: nn.Module) -> bool:
    """An RMSNorm over the last axis: ``weight * x / sqrt(mean(x**2) + eps)``.

    ``nn.RMSNorm``, or a family's own class named ``*RMSNorm`` holding one 1-D ``weight`` and no
    bias (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``: transformers writes one per
    family rather than using torch's). Its epsilon is ``eps`` or ``variance_epsilon``. Families
    whose RMSNorm scales by ``1 + weight`` (Gemma) are not this: zeroing their weight does not
    zero the output."""
    if isinstance(m, nn.RMSNorm):
        return m.weight is not None
    w = getattr(m, "weight", None)
    return (type(m).__name__.endswith("RMSNorm") and isinstance(w, nn.Parameter) and w.dim() == 1
            and getattr(m, "bias", None) is None and rms_norm_eps(m) is not None)


def rms_norm_eps(m: nn.Module) -> float | None:
    """The epsilon of an RMSNorm module (``eps`` or ``variance_epsilon``; torch's ``None`` means
    the dtype's machine epsilon, as ``nn.RMSNorm`` does)."""
    if isinstance(m, nn.RMSNorm):
        return m.eps
    for name in ("variance_epsilon", "eps"):
        v = getattr(m, name, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _check_plain_conv1d(m: nn.Conv1d) -> None:
    if m.groups != 1:
        raise TypeError("a grouped Conv1d is cut through Cut(..., axis=1, conv_groups=G) on its weight")
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(m, "weight") or not isinstance(m.weight, nn.Parameter):
        raise TypeError(f"{type(m).__name__}.weight is not a plain parameter (weight norm / parametrized): "
                        "cut its raw parameters by name instead")


def weighted_layer_sum_keep(kept: list[int], num_layers: int) -> list[int]:
    """Entries of a ``use_weighted_layer_sum`` weight vector (``num_layers + 1`` long: the layers'
    input, then one per layer) that survive when only layers ``kept`` (sorted) remain.

    The model's hidden-state tuple is (input of layer 0, output of each layer) with the LAST
    entry replaced by the encoder output (after its final LayerNorm, if any). A removed layer is
    masked as the identity, so its entry duplicates the previous one, and the last entry is
    always the (post-processed) output of the last KEPT layer. So the compacted model, whose
    hidden states are (input, each kept layer's output, last one post-processed), matches the
    masked one exactly when it keeps entry 0, the entries of all kept layers but the last, and
    the last entry ``num_layers`` (which carries the last kept layer's weight from now on).
    """
    kept = sorted(kept)
    if not kept:
        return [0]
    return [0] + [1 + k for k in kept[:-1]] + [num_layers]


@dataclass
class RotationFront:
    """For hidden rotation of a stream that starts with a non-linear front end (Whisper:
    ``gelu(conv2(gelu(conv1(mel)))) + positions``): no Linear follows the last non-linearity,
    so no weight can take the rotation exactly.

    ``inner``: ``(module, reader)``: a same-width module before a non-linearity whose outputs
    are SELECTED (mean square activation x squared weight of the reader; Whisper's conv1, read
    by conv2). ``writer``: the module whose outputs, after the non-linearity, ARE the stream's
    first value; its outputs are rotated before the non-linearity, which is only a start.
    ``refit``: the parameters then fitted so that the front end's output matches the rotated
    first value of the stream measured before the cut (conv1, conv2 and the positions)."""

    inner: tuple[nn.Module, nn.Module]
    writer: nn.Module
    refit: list[nn.Parameter]


@dataclass
class AttentionParts:
    """One self-attention block: ``module`` carries the per-module head attributes."""

    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


@dataclass
class LayerParts:
    """One transformer block: attention, FFN in/out and the LayerNorms over the residual width.

    A family without attention (a CNN) gives ``attn=None`` and overrides every method that reads
    the parts (``head_cuts``, ``ffn_cuts``, ``layer_hidden_cuts``, ``prunable_linears``, ...)."""

    layer: nn.Module
    attn: AttentionParts
    fc1: nn.Linear
    fc2: nn.Linear
    norms: list[nn.LayerNorm]


ROLES = ("q", "k", "v", "o", "fc1", "fc2")


class ArchAdapter:
    """Anatomy of one model instance of a supported family (subclass per family).

    Subclasses implement the methods marked *family*; the rest is generic. The adapter is
    bound to the (unwrapped) model; it re-reads modules on every call, so it stays valid after
    in-place compaction.
    """

    #: short family name written into pakd.json ("bert", "vit", ...)
    family: ClassVar[str] = ""
    #: one line for error messages, e.g. "BERT/RoBERTa (BertFor*, RobertaFor*, BertModel)"
    description: ClassVar[str] = ""
    #: ``config.model_type`` values this adapter can verify saved checkpoints for
    model_types: ClassVar[tuple[str, ...]] = ()
    #: whether pakd_hf.export has generated modeling code for this family's model types (per-layer
    #: shapes, ``uniform: false``); the engine reads this flag instead of importing export
    custom_code: ClassVar[bool] = False
    #: config.json key of each generic shape field, for families whose config spells them
    #: differently (Whisper: ``{"num_hidden_layers": "encoder_layers", ...}``)
    config_fields: ClassVar[dict[str, str]] = {}

    @classmethod
    def config_field(cls, generic: str) -> str:
        """The config.json key holding ``generic`` (``num_hidden_layers``, ``num_attention_heads``,
        ``intermediate_size`` or ``hidden_size``) for this family."""
        return cls.config_fields.get(generic, generic)

    def __init__(self, model: nn.Module):
        self.model = model

    # ------------------------------------------------------------------ family
    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # family
        raise NotImplementedError

    def backbone(self) -> nn.Module:  # family
        """The base model (``model.bert``, ``model.vit``, or the model itself)."""
        raise NotImplementedError

    def layer_list(self) -> nn.ModuleList:  # family
        raise NotImplementedError

    def set_layer_list(self, layers: nn.ModuleList) -> None:  # family
        raise NotImplementedError

    def layer_parts(self, layer: nn.Module) -> LayerParts:  # family
        raise NotImplementedError

    def head_cuts_outside_layers(self) -> list[Cut]:  # family
        """Hidden-dim cuts outside the blocks: embeddings, final norms, pooler, task head.

        Must raise :class:`UnsupportedArchitectureError` for a task head it does not know, so
        that hidden pruning never silently leaves a module at the old width.
        """
        raise NotImplementedError

    def embedding_parameters(self) -> list[nn.Parameter]:  # family
        """Token / position lookup tables (excluded from the non-embedding parameter count)."""
        raise NotImplementedError

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:  # family
        """Update the per-module head attributes after heads were removed."""
        raise NotImplementedError

    def set_layer_index(self, layer: nn.Module, index: int) -> None:  # family
        """Fix per-layer index attributes (e.g. BERT's ``layer_idx``) after layers were removed."""

    def update_config(self, config: Any, structure: Structure, *, strict: bool = True) -> None:  # family
        """Write the shape fields of ``structure`` into ``config`` (in place)."""
        raise NotImplementedError

    def check_structure(self, structure: Structure) -> None:  # family
        """Raise :class:`HeadDimError` / :class:`NonUniformStructureError` when ``structure``
        cannot be expressed by this family's stock config (so a stock reload would fail)."""
        raise NotImplementedError

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:  # family
        """Compare a saved folder's tensor shapes (by key) with its config.json; list problems."""
        raise NotImplementedError

    def layer_sum_weights(self) -> tuple[nn.Module, str] | None:
        """``(module, parameter_name)`` of a softmax-weighted sum over the hidden states (one
        entry for the layers' input, then one per layer: transformers' ``use_weighted_layer_sum``
        ``layer_weights``), or ``None``. While layers are masked the entries that compaction
        drops (:func:`weighted_layer_sum_keep`) are held at ``-inf``; compaction slices it.
        Default: the model's ``layer_weights`` when its config sets ``use_weighted_layer_sum``."""
        m = self.model
        cfg = getattr(m, "config", None)
        weights = getattr(m, "layer_weights", None)
        if getattr(cfg, "use_weighted_layer_sum", False) and isinstance(weights, nn.Parameter):
            return (m, "layer_weights")
        return None

    def hidden_groups(self) -> int:
        """Hidden dims form this many contiguous groups that must each keep the same number of
        dims (a grouped convolution over the residual width); selection keeps the top dims per
        group. 1 (default): no constraint."""
        return 1

    def check_compactable(self, structure: Structure) -> None:
        """Raise when ``structure`` cannot be compacted physically at all (even with
        ``check_export=False``), before anything is touched. Default: always possible."""

    # ---------------------------------------- optional hooks (defaults: transformer families)
    #: True when the family's config derives the FFN width from the hidden width (a CNN's block
    #: inner channels): selecting ``hidden`` then also selects ``ffn`` through
    #: :meth:`ffn_keep_for_hidden`, and importance accumulates ``ffn`` scores with ``hidden``.
    ffn_follows_hidden: ClassVar[bool] = False

    def rotation_heads(self) -> list[tuple[nn.Linear, list[nn.Linear]]]:  # family (optional)
        """For hidden rotation (``pruning.hidden.method: rotate``, :mod:`pakd_hf.prune.rotate`):
        the Linears that map the stream to a same-width output followed by a non-linearity (so
        not part of the stream: BERT's pooler), each with the Linears reading that output.

        Families with a rotation rule define it (BERT/RoBERTa: the pooler; pre-RMSNorm decoders:
        none, ``[]``); the default raises :class:`UnsupportedArchitectureError`."""
        raise UnsupportedArchitectureError(
            f"hidden rotation (pruning.hidden.method: rotate) supports post-LayerNorm BERT/RoBERTa models, "
            f"pre-RMSNorm Llama/Qwen/Mistral models and the pre-LayerNorm Whisper encoder and ViT, not "
            f"{self.description or type(self.model).__name__}: "
            "use method: select"
        )

    def rotation_pre_norms(self) -> list[tuple[nn.Module, list[nn.Linear]]] | None:  # family (optional)
        """For hidden rotation of a PRE-norm family (the stream is the residual sum, each block
        reads it through an RMSNorm): the norms inside the blocks, each with every Linear that
        reads its output. Their gains are folded into those Linears' input weights (exact), so the
        norms left in the rotated model have one uniform gain, which commutes with a rotation.
        ``None`` (default): a post-LN family (the stream is its LayerNorms' outputs).

        Pre-LayerNorm families (Whisper) list LayerNorms: their biases move into the readers'
        biases too; a reader without a bias must be in :meth:`rotation_shift_free`."""
        return None

    def rotation_shift_free(self) -> list[nn.Linear]:  # family (optional)
        """Linears reading a pre-norm whose output may drop a constant shift: attention KEYS
        (a vector added to every key adds the same number to every score of a query, which the
        softmax ignores). A pre-LayerNorm's bias then needs no bias on them. Default: none."""
        return []

    def rotation_front(self) -> RotationFront | None:  # family (optional)
        """The stream's non-linear front end, for hidden rotation (see :class:`RotationFront`);
        ``None`` (default): every write to the stream is linear (embeddings, Linears)."""
        return None

    def check_kinds(self, kinds: list[str]) -> None:
        """Raise :class:`UnsupportedArchitectureError` (one line naming the family and what it
        supports) when one of ``kinds`` (``heads``, ``ffn``, ``layers``, ``hidden``, ``budget``,
        ``unstructured``, ``n_m``) cannot be pruned in this family. Default: all can."""

    def full_structure(self) -> Structure | None:
        """The "everything kept" record of a never-compacted model whose layers differ in shape
        by design (a CNN's stages), or ``None`` (default): the generic uniform record."""
        return None

    def required_layers(self) -> list[int]:
        """Current layer indices that layer pruning must keep (e.g. a CNN stage's first block,
        which changes width and resolution). Default: none."""
        return []

    def hidden_segments(self) -> list[tuple[int, int, int]] | None:
        """``[(start, stop, minimum)]``: contiguous ranges of the current hidden dims that are
        separate residual streams (a CNN's stages). A hidden count is then split over them in
        proportion to their sizes (rounded up, at least ``minimum`` each). ``None`` (default): one
        stream."""
        return None

    def ffn_keep_for_hidden(self, hidden_keep: list[bool]) -> list[list[tuple[int, int, int]]]:
        """With :attr:`ffn_follows_hidden`: per current layer, ``[(start, stop, keep)]`` ranges of
        its FFN units and how many of each range the config implies when the current hidden dims
        flagged in ``hidden_keep`` stay."""
        raise NotImplementedError

    def stock_config_fits(self) -> bool | None:
        """Whether the model's current module shapes can be written into the family's stock
        config, read from the modules; ``None`` (default): decided by the generic per-layer check
        (one head count, one FFN width)."""
        return None

    @classmethod
    def structure_problems(cls, config: dict, structure: Structure) -> list[str]:
        """Contradictions between a saved ``config.json`` and the ``pakd.json`` structure record.
        Default: a uniform record whose counts are the config's layer / head / FFN / hidden fields."""
        s = structure
        if not s.is_uniform():
            return [f"pakd.json structure is not uniform ({s.describe()}); a stock config cannot hold it"]
        want = {
            "num_hidden_layers": len(s.layers),
            "num_attention_heads": s.heads_per_layer()[0],
            "intermediate_size": s.ffn_per_layer()[0],
            "hidden_size": len(s.hidden),
        }
        problems = []
        for k, v in want.items():
            key = cls.config_field(k)  # e.g. Whisper: encoder_layers, d_model
            if config.get(key) != v:
                problems.append(f"pakd.json structure implies {key}={v}, config.json has {config.get(key)}")
        return problems

    def after_compact(self) -> None:
        """Fix module attributes that only mirror tensor shapes, after :func:`compact` sliced them
        (e.g. a layer's ``embed_dim``). Default: nothing."""

    # ----------------------------------------------------------------- generic
    def identity_forward(self) -> Callable[..., Any]:
        """The forward a masked (skipped) layer gets: return the hidden states unchanged."""

        def identity(hidden_states, *args, **kwargs):
            return hidden_states

        return identity

    def layers(self) -> list[LayerParts]:
        return [self.layer_parts(layer) for layer in self.layer_list()]

    @property
    def num_layers(self) -> int:
        return len(self.layer_list())

    def head_dim(self) -> int:
        raise NotImplementedError  # family

    def num_heads(self, i: int) -> int:
        return self.layer_parts(self.layer_list()[i]).attn.q.out_features // self.head_dim()

    def intermediate_size(self, i: int) -> int:
        return self.layer_parts(self.layer_list()[i]).fc1.out_features

    def hidden_size(self) -> int:
        return self.layer_parts(self.layer_list()[0]).attn.q.in_features if self.num_layers else (
            self.model.config.hidden_size
        )

    def head_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        """q/k/v output rows (+bias) and o input columns of layer ``i``, ``group=head_dim``."""
        a = (parts or self.layer_parts(self.layer_list()[i])).attn
        hd = self.head_dim()
        return [Cut(a.q, 0, group=hd), Cut(a.k, 0, group=hd), Cut(a.v, 0, group=hd), Cut(a.o, 1, group=hd)]

    def ffn_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        """fc1 output rows (+bias) and fc2 input columns of layer ``i``."""
        p = parts or self.layer_parts(self.layer_list()[i])
        return [Cut(p.fc1, 0), Cut(p.fc2, 1)]

    def layer_hidden_cuts(self, parts: LayerParts) -> list[Cut]:
        a = parts.attn
        cuts = [Cut(a.q, 1), Cut(a.k, 1), Cut(a.v, 1), Cut(a.o, 0), Cut(parts.fc1, 1), Cut(parts.fc2, 0)]
        return cuts + [Cut(n, 0) for n in parts.norms]

    def hidden_cuts(self) -> list[Cut]:
        """Every tensor axis that has the residual-stream width (one unit per hidden dim)."""
        cuts = list(self.head_cuts_outside_layers())
        for parts in self.layers():
            cuts += self.layer_hidden_cuts(parts)
        return cuts

    def hidden_norms(self) -> list[nn.Module]:
        """LayerNorms and RMSNorms normalising over the residual width (they get the
        masked-statistics hook)."""
        return [c.module for c in self.hidden_cuts()
                if c.name is None and (isinstance(c.module, nn.LayerNorm) or is_rms_norm(c.module))]

    def prunable_linears(self) -> dict[str, nn.Linear]:
        """Linears eligible for unstructured / N:M masks, keyed ``"<layer>.<role>"``."""
        out = {}
        for i, p in enumerate(self.layers()):
            for role, lin in zip(ROLES, (p.attn.q, p.attn.k, p.attn.v, p.attn.o, p.fc1, p.fc2)):
                out[f"{i}.{role}"] = lin
        return out


# ------------------------------------------------------------- stock-config checks
def check_stock_attention_shape(structure: Structure, family: str, heads_field: str, ffn_field: str,
                                hidden_field: str) -> None:
    """The check of families whose stock config holds one head count and one FFN width and
    derives the head size as ``hidden // heads`` (BERT, Whisper, wav2vec2/HuBERT): raise
    :class:`NonUniformStructureError` or :class:`HeadDimError` ("head_dim not dividing")."""
    if not structure.is_uniform():
        raise NonUniformStructureError(
            f"layers keep different numbers of heads or FFN neurons: a stock {family} config holds one "
            f"{heads_field} and one {ffn_field} (per layer: {structure.describe()})"
        )
    heads = structure.heads_per_layer()
    h = heads[0] if heads else structure.num_heads
    hidden = len(structure.hidden)
    if h * structure.head_dim != hidden:
        raise HeadDimError(
            f"head_dim not dividing: stock {family} derives the head size as {hidden_field} // {heads_field} "
            f"= {hidden} // {h} = {hidden // max(h, 1)}, but the kept heads have head_dim {structure.head_dim}; "
            f"keep {hidden_field} = heads * head_dim (e.g. {h} heads -> hidden {h * structure.head_dim}, or hidden "
            f"{hidden} -> {hidden // structure.head_dim} heads when it divides)"
        )


def write_shape_fields(config: Any, structure: Structure, layers_field: str, heads_field: str, ffn_field: str,
                       hidden_field: str) -> None:
    """Write a structure's shapes into a transformer config's four fields (per-layer maxima,
    so a non-uniform structure still builds modules large enough for every layer)."""
    heads = structure.heads_per_layer() or [structure.num_heads]
    ffn = structure.ffn_per_layer() or [structure.intermediate_size]
    setattr(config, layers_field, len(structure.layers))
    setattr(config, heads_field, max(heads))
    setattr(config, ffn_field, max(ffn))
    setattr(config, hidden_field, len(structure.hidden))


# ------------------------------------------------------------- checkpoint checks
def layer_shapes(shapes: dict[str, list[int]], pattern: str) -> dict[int, list[int]]:
    """``{layer_index: shape}`` for keys matching ``pattern`` (a regex with one int group)."""
    rx = re.compile(pattern)
    out: dict[int, list[int]] = {}
    for k, s in shapes.items():
        m = rx.search(k)
        if m:
            out[int(m.group(1))] = list(s)
    return out


def check_layer_tensors(
    shapes: dict[str, list[int]], patterns: dict[str, str], expected: dict[str, list[int]], num_layers: int
) -> list[str]:
    """Generic per-layer check used by adapters: every role present in layers 0..L-1 with its
    expected shape (``patterns`` role -> regex, ``expected`` role -> shape)."""
    problems: list[str] = []
    for role, pattern in patterns.items():
        found = layer_shapes(shapes, pattern)
        if sorted(found) != list(range(num_layers)):
            problems.append(
                f"{role}: tensors for layers {sorted(found)} but config.num_hidden_layers={num_layers}"
            )
        for i, s in sorted(found.items()):
            if s != expected[role]:
                problems.append(f"layer {i} {role}: shape {s}, config implies {expected[role]}")
    return problems
