"""wav2vec 2.0 and HuBERT: ``Wav2Vec2ForSequenceClassification``, ``HubertForSequenceClassification``
(and any model whose base is a ``Wav2Vec2Model`` / ``HubertModel``), both layouts: post-LN
("base", ``do_stable_layer_norm=False``) and pre-LN ("stable layer norm", large models).

What transformers 5.24's modeling code reads (``models/wav2vec2/modeling_wav2vec2.py``,
``models/hubert/modeling_hubert.py``):

- Attention (``Wav2Vec2Attention`` / ``HubertAttention``): ``head_dim = hidden_size //
  num_attention_heads``, ``scaling = head_dim ** -0.5``, square q/k/v/out_proj with biases; q, k
  and v reshape with ``-1`` heads, so a compacted model runs; ``num_heads`` / ``embed_dim`` are
  patched anyway. A stock config only describes ``hidden_size == kept_heads * head_dim``
  (:class:`HeadDimError` otherwise, as for BERT).
- Layers: ``encoder.layers``; ``attention.{q,k,v,out}_proj``, ``feed_forward.intermediate_dense``
  / ``output_dense``, ``layer_norm`` and ``final_layer_norm``. Post-LN:
  ``LN(x + attn(x))`` then ``LN(x + ffn(x))``; pre-LN: ``x + attn(LN(x))``, ``x + ffn(LN(x))``
  and a final ``encoder.layer_norm``. (Post-LN applies ``encoder.layer_norm`` BEFORE the layers.)
- Hidden width: ``feature_projection.projection`` output, ``masked_spec_embed`` (when present),
  the positional convolution ``encoder.pos_conv_embed.conv`` (in AND out channels), the
  encoder ``layer_norm``, every block's LayerNorms / projections, and the task head input
  (``projector`` of the sequence classifiers, ``lm_head`` of CTC). The convolutional feature
  encoder (``conv_dim``) and the feature projection's LayerNorm (over ``conv_dim[-1]``) stay whole.
- The positional conv is GROUPED (``num_conv_pos_embedding_groups`` G, 16 in the released
  models) and weight-normed over dim 2 (``parametrizations.weight.original0`` = g,
  ``[1, 1, K]``; ``original1`` = v, ``[H, H / G, K]``). Hidden dim ``d`` is out row ``d`` of v
  and its bias, and in column ``d % (H/G)`` of the rows of group ``d // (H/G)`` only
  (``Cut.conv_groups``). A stock config keeps G, so every group must keep the same number of
  dims: :meth:`Wav2Vec2Adapter.hidden_groups` makes ``select_structure`` pick the top dims per
  group, :meth:`check_compactable` refuses anything else. g needs no change: masked entries of
  v are zero, so ``||v||`` per kernel tap is the same before and after they are removed, and
  the compacted conv equals the masked one exactly. (Masking itself changes ``||v||``, so the
  kept channels' effective weights are rescaled while masks are on: fine-tuning absorbs it.)
- Hidden pruning is refused (:class:`UnsupportedArchitectureError`, heads / FFN / layers still
  work) for HuBERT's ``conv_pos_batch_norm`` (a BatchNorm over the width with running stats),
  wav2vec2's attention adapters (``adapter_attn_dim``) and ``add_adapter`` models.
- ``use_weighted_layer_sum``: ``layer_weights`` is handled generically
  (``ArchAdapter.layer_sum_weights``).
- Config: :meth:`Wav2Vec2Adapter.update_config` writes ``num_hidden_layers``,
  ``num_attention_heads``, ``intermediate_size``, ``hidden_size`` (and ``output_hidden_size``
  when it equalled ``hidden_size``, as it does unless an adapter is configured).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import (
    ArchAdapter,
    AttentionParts,
    Cut,
    LayerParts,
    NonUniformStructureError,
    UnsupportedArchitectureError,
    check_layer_tensors,
    check_stock_attention_shape,
    write_shape_fields,
)


# Looked up on first use, not imported at the top: the first model class imported pulls in
# transformers' modeling stack (about 3 s here), which `import pakd_hf`, `pakd --help` and
# `pakd validate` do not need.
def _base_classes():
    from transformers import HubertModel, Wav2Vec2Model

    return (Wav2Vec2Model, HubertModel)


@register
class Wav2Vec2Adapter(ArchAdapter):
    family = "wav2vec2"
    description = (
        "wav2vec2/HuBERT (Wav2Vec2ForSequenceClassification, HubertForSequenceClassification, Wav2Vec2Model, "
        "HubertModel; hidden pruning for the bare models, sequence classifiers and CTC)"
    )
    model_types = ("wav2vec2", "hubert")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            bases = _base_classes()
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, bases) or isinstance(getattr(model, "base_model", None), bases)

    # ---------------------------------------------------------------- anatomy
    def backbone(self) -> nn.Module:
        return self.model if isinstance(self.model, _base_classes()) else self.model.base_model

    def layer_list(self) -> nn.ModuleList:
        return self.backbone().encoder.layers

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        self.backbone().encoder.layers = layers

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        a = layer.attention
        return LayerParts(
            layer=layer,
            attn=AttentionParts(module=a, q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.out_proj),
            fc1=layer.feed_forward.intermediate_dense,
            fc2=layer.feed_forward.output_dense,
            norms=[layer.layer_norm, layer.final_layer_norm],
        )

    def head_dim(self) -> int:
        return self.layer_list()[0].attention.head_dim

    def _pos_conv(self) -> nn.Conv1d:
        return self.backbone().encoder.pos_conv_embed.conv

    def _hidden_unsupported(self) -> str | None:
        """Why hidden pruning is refused for this model (None: supported)."""
        cfg = self.model.config
        bb = self.backbone()
        if getattr(cfg, "add_adapter", False):
            return "add_adapter=True (the output adapter's convolutions read the hidden width)"
        if getattr(cfg, "adapter_attn_dim", None) is not None:
            return "adapter_attn_dim is set (the per-layer attention adapters read the hidden width)"
        if getattr(bb.encoder.pos_conv_embed, "batch_norm", None) is not None:
            return ("conv_pos_batch_norm=True (a BatchNorm over the hidden width with running statistics after the "
                    "positional conv)")
        conv = self._pos_conv()
        g = self._weight_norm_names(conv)
        if g is None:
            return "the positional conv is not weight-normed the way transformers builds it (weight_g / weight_v)"
        return None

    @staticmethod
    def _weight_norm_names(conv: nn.Conv1d) -> tuple[nn.Module, str, str] | None:
        """``(module, g_name, v_name)`` of the positional conv's weight norm (parametrization or the
        legacy ``weight_g`` / ``weight_v`` hook), when g has no channel dims (``dim=2``)."""
        plist = getattr(getattr(conv, "parametrizations", None), "weight", None)
        if plist is not None and hasattr(plist, "original0") and hasattr(plist, "original1"):
            mod, g_name, v_name = plist, "original0", "original1"
        elif isinstance(getattr(conv, "weight_v", None), nn.Parameter):
            mod, g_name, v_name = conv, "weight_g", "weight_v"
        else:
            return None
        g = getattr(mod, g_name)
        if g.dim() != 3 or g.shape[0] != 1 or g.shape[1] != 1:
            return None
        return mod, g_name, v_name

    def hidden_groups(self) -> int:
        return int(self._pos_conv().groups)

    def head_cuts_outside_layers(self) -> list[Cut]:
        why = self._hidden_unsupported()
        if why is not None:
            raise UnsupportedArchitectureError(
                f"hidden-size pruning of {type(self.model).__name__} is not supported: {why}; heads, FFN and "
                "layer pruning work"
            )
        bb = self.backbone()
        enc = bb.encoder
        conv = self._pos_conv()
        mod, _, v_name = self._weight_norm_names(conv)
        cuts = [Cut(bb.feature_projection.projection, 0)]
        if isinstance(getattr(bb, "masked_spec_embed", None), nn.Parameter):
            cuts.append(Cut(bb, 0, name="masked_spec_embed"))
        cuts += [
            Cut(mod, 0, name=v_name),
            Cut(mod, 1, name=v_name, conv_groups=conv.groups),
            Cut(conv, 0, name="bias"),
            Cut(enc.layer_norm, 0),
        ]
        if self.model is bb:
            return cuts
        for attr in ("projector", "lm_head"):
            head = getattr(self.model, attr, None)
            if isinstance(head, nn.Linear):
                return cuts + [Cut(head, 1)]
        raise UnsupportedArchitectureError(
            f"hidden-size pruning does not know the task head of {type(self.model).__name__} (supported: the "
            "sequence classifiers' projector, CTC's lm_head, the bare models); heads, FFN and layer pruning work "
            "for every wav2vec2/HuBERT model"
        )

    def embedding_parameters(self) -> list[nn.Parameter]:
        return []  # no lookup tables: the positional conv and the feature encoder are compute

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:
        attn.module.num_heads = num_heads
        attn.module.embed_dim = num_heads * attn.module.head_dim

    def after_compact(self) -> None:
        conv = self._pos_conv()
        names = self._weight_norm_names(conv)
        if names is not None:
            mod, _, v_name = names
            width = getattr(mod, v_name).shape[0]
            conv.in_channels = conv.out_channels = width

    # ----------------------------------------------------------------- config
    def _group_counts(self, structure) -> list[int]:
        G = self.hidden_groups()
        size = structure.hidden_size // G
        counts = [0] * G
        for d in structure.hidden:
            counts[d // size] += 1
        return counts

    def check_compactable(self, structure) -> None:
        if len(structure.hidden) == structure.hidden_size or self.hidden_groups() == 1:
            return
        counts = self._group_counts(structure)
        if len(set(counts)) != 1:
            raise NonUniformStructureError(
                f"the positional conv has {len(counts)} groups and the structure keeps {counts} hidden dims per group: "
                "a grouped conv needs the same number in every group (select_structure(..., adapter=adapter) "
                "picks them per group)"
            )

    def check_structure(self, structure) -> None:
        check_stock_attention_shape(structure, "wav2vec2/HuBERT", "num_attention_heads", "intermediate_size", "hidden_size")
        hidden = len(structure.hidden)
        G = self.hidden_groups()
        if hidden % G:
            raise NonUniformStructureError(
                f"hidden size {hidden} is not a multiple of num_conv_pos_embedding_groups {G} (the positional conv)"
            )

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        if strict:
            self.check_structure(structure)
        if getattr(config, "output_hidden_size", None) == config.hidden_size:
            config.output_hidden_size = len(structure.hidden)
        write_shape_fields(config, structure, "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "hidden_size")

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        d, h, inter, n = (config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers"))
        if h <= 0 or d % h:
            return [f"hidden_size {d} is not a multiple of num_attention_heads {h}"]
        lay = r"(?:^|\.)encoder\.layers\.(\d+)\."
        patterns = {
            "q_proj": lay + r"attention\.q_proj\.weight$",
            "out_proj": lay + r"attention\.out_proj\.weight$",
            "intermediate_dense": lay + r"feed_forward\.intermediate_dense\.weight$",
            "output_dense": lay + r"feed_forward\.output_dense\.weight$",
        }
        expected = {"q_proj": [d, d], "out_proj": [d, d], "intermediate_dense": [inter, d], "output_dense": [d, inter]}
        problems = check_layer_tensors(shapes, patterns, expected, n)
        groups = config.get("num_conv_pos_embedding_groups", 1) or 1
        for k, s in shapes.items():
            if k.endswith("feature_projection.projection.weight") and s[0] != d:
                problems.append(f"{k}: shape {s}, config hidden_size {d}")
            if "pos_conv_embed.conv" in k and (k.endswith("weight_v") or k.endswith("original1")):
                if s[:2] != [d, d // groups]:
                    problems.append(f"{k}: shape {s}, config implies [{d}, {d // groups}, ...]")
            if k == "layer_weights" and s != [n + 1]:
                problems.append(f"{k}: shape {s}, config num_hidden_layers {n} implies [{n + 1}]")
        return problems
