"""PaKD ViT: stock transformers ViT classes whose layers take per-layer shapes from the config.

This is pakd-hf's template (``pakd_hf/templates``); ``pakd_hf.export.save_compact`` writes it, with a
header describing the checkpoint, next to a pruned ViT whose layers differ in head count or MLP width
(which a stock ``ViTConfig`` cannot describe). Imports only torch and transformers.
"""

from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.vit.modeling_vit import ViTForImageClassification, ViTModel

from .configuration_pakd_vit import PaKDViTConfig


def _linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """``old`` when it already has this shape, else a new Linear on its device and dtype (the
    checkpoint's weights are loaded into it afterwards)."""
    if (old.in_features, old.out_features) == (in_features, out_features):
        return old
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def resize_layers(layers: nn.ModuleList, config: PaKDViTConfig) -> None:
    """Give layer ``i`` ``heads_i`` attention heads of ``head_dim`` and an MLP of width ``ffn_i``.

    Per layer: q/k/v_proj ``hidden -> heads_i * head_dim``, o_proj ``heads_i * head_dim -> hidden``,
    mlp.fc1 ``hidden -> ffn_i``, mlp.fc2 ``ffn_i -> hidden``, and the attention module's
    ``num_attention_heads`` / ``head_dim`` / ``scaling``. Idempotent: layers already of the right
    shape are left alone.
    """
    shapes = config.pakd_layer_shapes()
    if len(layers) != len(shapes):
        raise ValueError(f"the model has {len(layers)} layers but the config describes {len(shapes)}")
    hidden = config.hidden_size
    for layer, (heads, head_dim, ffn) in zip(layers, shapes):
        attn = layer.attention
        width = heads * head_dim
        attn.q_proj = _linear(attn.q_proj, hidden, width)
        attn.k_proj = _linear(attn.k_proj, hidden, width)
        attn.v_proj = _linear(attn.v_proj, hidden, width)
        attn.o_proj = _linear(attn.o_proj, width, hidden)
        attn.num_attention_heads = heads
        attn.head_dim = head_dim
        attn.scaling = head_dim**-0.5
        layer.mlp.fc1 = _linear(layer.mlp.fc1, hidden, ffn)
        layer.mlp.fc2 = _linear(layer.mlp.fc2, ffn, hidden)


class PaKDViTMixin:
    """Shared by every PaKD ViT class: build the stock modules, then resize each layer to the
    config's per-layer shapes BEFORE ``post_init()`` (so weights load without any size mismatch)."""

    config_class = PaKDViTConfig

    def post_init(self):
        base = getattr(self, self.base_model_prefix, self)
        resize_layers(base.layers, self.config)
        super().post_init()


class PaKDViTModel(PaKDViTMixin, ViTModel):
    pass


class PaKDViTForImageClassification(PaKDViTMixin, ViTForImageClassification):
    pass


# transformers saves ViT weights under their legacy names (``encoder.layer.N.attention.attention.query``)
# through a renaming registered for the class name "ViTModel"; custom classes only get it when registered.
# (PaKDViTForImageClassification holds a stock ViTModel, which gets it anyway.)
if get_checkpoint_conversion_mapping("PaKDViTModel") is None:
    register_checkpoint_conversion_mapping("PaKDViTModel", get_checkpoint_conversion_mapping("ViTModel"))

#: Auto class -> class of this file (config.json's ``auto_map`` and ``AutoModel*.register``).
AUTO_MAP = {
    "AutoConfig": "PaKDViTConfig",
    "AutoModel": "PaKDViTModel",
    "AutoModelForImageClassification": "PaKDViTForImageClassification",
}

__all__ = ["PaKDViTModel", "PaKDViTForImageClassification"]
