"""PaKD RoBERTa: stock transformers RoBERTa classes whose layers take per-layer shapes from the config.

This is pakd-hf's template (``pakd_hf/templates``); ``pakd_hf.export.save_compact`` writes it, with a
header describing the checkpoint, next to a pruned RoBERTa whose shapes a stock ``RobertaConfig`` cannot
describe (layers with different head counts / FFN widths, or ``hidden_size != heads * head_dim``).
Imports only torch and transformers.
"""

from torch import nn
from transformers.models.roberta.modeling_roberta import (
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

from .configuration_pakd_roberta import PaKDRobertaConfig


def _linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """``old`` when it already has this shape, else a new Linear on its device and dtype (the
    checkpoint's weights are loaded into it afterwards)."""
    if (old.in_features, old.out_features) == (in_features, out_features):
        return old
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def resize_layers(layers: nn.ModuleList, config: PaKDRobertaConfig) -> None:
    """Give layer ``i`` ``heads_i`` attention heads of ``head_dim`` and an FFN of width ``ffn_i``.

    Per layer: query/key/value ``hidden -> heads_i * head_dim``, attention output
    ``heads_i * head_dim -> hidden``, intermediate ``hidden -> ffn_i``, output ``ffn_i -> hidden``, and
    the attention module's ``num_attention_heads`` / ``attention_head_size`` / ``all_head_size`` /
    ``scaling``. Idempotent: layers already of the right shape are left alone.
    """
    if getattr(config, "add_cross_attention", False):
        raise ValueError("PaKD RoBERTa models do not support add_cross_attention=True")
    shapes = config.pakd_layer_shapes()
    if len(layers) != len(shapes):
        raise ValueError(f"the model has {len(layers)} layers but the config describes {len(shapes)}")
    hidden = config.hidden_size
    for layer, (heads, head_dim, ffn) in zip(layers, shapes):
        attn = layer.attention.self
        width = heads * head_dim
        attn.query = _linear(attn.query, hidden, width)
        attn.key = _linear(attn.key, hidden, width)
        attn.value = _linear(attn.value, hidden, width)
        attn.num_attention_heads = heads
        attn.attention_head_size = head_dim
        attn.all_head_size = width
        attn.scaling = head_dim**-0.5
        layer.attention.output.dense = _linear(layer.attention.output.dense, width, hidden)
        layer.intermediate.dense = _linear(layer.intermediate.dense, hidden, ffn)
        layer.output.dense = _linear(layer.output.dense, ffn, hidden)


def _build_heads(config: PaKDRobertaConfig) -> int:
    """The head count to build the stock modules with. Stock ``RobertaSelfAttention`` refuses
    ``hidden_size % num_attention_heads != 0``, which a pruned hidden width need not satisfy: then
    build with one head (every layer is resized right after)."""
    heads = config.num_attention_heads
    if config.pakd_heads_per_layer is None or not config.pakd_head_dim or config.hidden_size % heads == 0:
        return heads
    return 1


class PaKDRobertaMixin:
    """Shared by every PaKD RoBERTa class: build the stock modules, then resize each layer to the
    config's per-layer shapes BEFORE ``post_init()`` (so weights load without any size mismatch)."""

    config_class = PaKDRobertaConfig

    def __init__(self, config, *args, **kwargs):
        heads = config.num_attention_heads
        config.num_attention_heads = _build_heads(config)
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            config.num_attention_heads = heads

    def post_init(self):
        base = getattr(self, self.base_model_prefix, self)
        resize_layers(base.encoder.layer, self.config)
        super().post_init()


class PaKDRobertaModel(PaKDRobertaMixin, RobertaModel):
    pass


class PaKDRobertaForSequenceClassification(PaKDRobertaMixin, RobertaForSequenceClassification):
    pass


class PaKDRobertaForTokenClassification(PaKDRobertaMixin, RobertaForTokenClassification):
    pass


class PaKDRobertaForQuestionAnswering(PaKDRobertaMixin, RobertaForQuestionAnswering):
    pass


class PaKDRobertaForMultipleChoice(PaKDRobertaMixin, RobertaForMultipleChoice):
    pass


class PaKDRobertaForMaskedLM(PaKDRobertaMixin, RobertaForMaskedLM):
    pass


#: Auto class -> class of this file (config.json's ``auto_map`` and ``AutoModel*.register``).
AUTO_MAP = {
    "AutoConfig": "PaKDRobertaConfig",
    "AutoModel": "PaKDRobertaModel",
    "AutoModelForSequenceClassification": "PaKDRobertaForSequenceClassification",
    "AutoModelForTokenClassification": "PaKDRobertaForTokenClassification",
    "AutoModelForQuestionAnswering": "PaKDRobertaForQuestionAnswering",
    "AutoModelForMultipleChoice": "PaKDRobertaForMultipleChoice",
    "AutoModelForMaskedLM": "PaKDRobertaForMaskedLM",
}

__all__ = [
    "PaKDRobertaModel",
    "PaKDRobertaForSequenceClassification",
    "PaKDRobertaForTokenClassification",
    "PaKDRobertaForQuestionAnswering",
    "PaKDRobertaForMultipleChoice",
    "PaKDRobertaForMaskedLM",
]
