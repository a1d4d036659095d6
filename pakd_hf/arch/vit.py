"""ViT family: ``ViTModel`` and ``ViTForImageClassification`` (pre-LN).

What transformers 5.24's modeling code reads (``models/vit/modeling_vit.py``):

- ``ViTAttention``: ``head_dim = getattr(config, "head_dim", hidden_size // num_attention_heads)``;
  q/k/v are ``Linear(hidden, heads * head_dim)``, o is ``Linear(heads * head_dim, hidden)``,
  reshapes use ``-1`` heads. So any (heads, hidden) pair reloads stock when ``config.head_dim``
  is written: :meth:`ViTAdapter.update_config` adds the extra key ``head_dim`` only when
  ``hidden_size // num_attention_heads`` no longer gives the kept head dim.
- Layers: ``vit.layers`` (``nn.ModuleList``, no per-layer index attribute); modules
  ``attention.{q,k,v,o}_proj``, ``mlp.fc1/fc2``, ``layernorm_before/after``. Saved keys use the
  legacy names (``vit.encoder.layer.N.attention.attention.query``) and are mapped back on load.
- Hidden width: patch-embedding conv out channels, ``cls_token``, ``position_embeddings`` (and
  ``mask_token`` when present), every block's LayerNorms, q/k/v inputs, o/fc2 outputs, fc1
  inputs, the final ``layernorm``, the pooler input (its output width is
  ``config.pooler_output_size``, saved explicitly, so it is not pruned) and the classifier input.
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
    write_shape_fields,
)


def _vit_model_class():
    from transformers import ViTModel

    return ViTModel


@register
class ViTAdapter(ArchAdapter):
    family = "vit"
    description = "ViT (ViTModel, ViTForImageClassification)"
    model_types = ("vit",)
    custom_code = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            vit_model = _vit_model_class()
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, vit_model) or isinstance(getattr(model, "base_model", None), vit_model)

    def backbone(self) -> nn.Module:
        return self.model if isinstance(self.model, _vit_model_class()) else self.model.base_model

    def layer_list(self) -> nn.ModuleList:
        return self.backbone().layers

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        self.backbone().layers = layers

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        a = layer.attention
        return LayerParts(
            layer=layer,
            attn=AttentionParts(module=a, q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj),
            fc1=layer.mlp.fc1,
            fc2=layer.mlp.fc2,
            norms=[layer.layernorm_before, layer.layernorm_after],
        )

    def head_dim(self) -> int:
        return self.layer_list()[0].attention.head_dim

    def head_cuts_outside_layers(self) -> list[Cut]:
        bb = self.backbone()
        emb = bb.embeddings
        cuts = [
            Cut(emb.patch_embeddings.projection, 0),
            Cut(emb, 2, name="cls_token"),
            Cut(emb, 2, name="position_embeddings"),
        ]
        if getattr(emb, "mask_token", None) is not None:
            cuts.append(Cut(emb, 2, name="mask_token"))
        cuts.append(Cut(bb.layernorm, 0))
        if getattr(bb, "pooler", None) is not None:
            cuts.append(Cut(bb.pooler.dense, 1))
        if self.model is bb:
            return cuts
        head = getattr(self.model, "classifier", None)
        if isinstance(head, nn.Linear):
            return cuts + [Cut(head, 1)]
        if isinstance(head, nn.Identity):
            return cuts
        raise UnsupportedArchitectureError(
            f"hidden-size pruning does not know the task head of {type(self.model).__name__} (supported: "
            "ViTModel, ViTForImageClassification); heads, FFN and layer pruning work for every ViT model"
        )

    def embedding_parameters(self) -> list[nn.Parameter]:
        emb = self.backbone().embeddings
        return [p for p in (emb.cls_token, emb.position_embeddings, getattr(emb, "mask_token", None)) if p is not None]

    # ---------------------------------------------------------- hidden rotation
    # Pre-LayerNorm like Whisper, and every write to the stream is linear: the patch embedding
    # (a convolution), the class token and the positions are rotated exactly, no front end to refit.
    def rotation_heads(self) -> list[tuple[nn.Linear, list[nn.Linear]]]:
        return []  # the pooler's width is its own (pooler_output_size): only its input is rotated

    def rotation_pre_norms(self) -> list[tuple[nn.Module, list[nn.Linear]]]:
        # The final layernorm is left out, as for Whisper: its output is the last hidden state
        # (a distillation target). It keeps the diagonal rule. The in-block norms' biases move into
        # q/k/v and fc1's biases: a ViT without them (qkv_bias: false) is refused in one line.
        out = []
        for layer in self.layer_list():
            a = layer.attention
            out.append((layer.layernorm_before, [a.q_proj, a.k_proj, a.v_proj]))
            out.append((layer.layernorm_after, [layer.mlp.fc1]))
        return out

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:
        attn.module.num_attention_heads = num_heads

    # ----------------------------------------------------------------- config
    def check_structure(self, structure) -> None:
        if not structure.is_uniform():
            raise NonUniformStructureError(
                "layers keep different numbers of heads or FFN neurons: a stock ViT config holds one "
                f"num_attention_heads and one intermediate_size (per layer: {structure.describe()})"
            )
        # any head count / hidden size pair is expressible through config.head_dim

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        if strict:
            self.check_structure(structure)
        hidden = len(structure.hidden)
        write_shape_fields(config, structure, "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "hidden_size")
        if getattr(config, "pooler_output_size", None) is None:
            config.pooler_output_size = structure.hidden_size  # keep the original pooler width
        if hidden // config.num_attention_heads != structure.head_dim or hasattr(config, "head_dim"):
            config.head_dim = structure.head_dim

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        d, h, inter, n = (config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers"))
        hd = config.get("head_dim") or d // h
        legacy = any(".encoder.layer." in k or k.startswith("encoder.layer.") for k in shapes)
        if legacy:
            lay = r"(?:^|\.)encoder\.layer\.(\d+)\."
            patterns = {
                "query": lay + r"attention\.attention\.query\.weight$",
                "attention.output": lay + r"attention\.output\.dense\.weight$",
                "fc1": lay + r"intermediate\.dense\.weight$",
                "fc2": lay + r"output\.dense\.weight$",
            }
        else:
            lay = r"(?:^|\.)layers\.(\d+)\."
            patterns = {
                "query": lay + r"attention\.q_proj\.weight$",
                "attention.output": lay + r"attention\.o_proj\.weight$",
                "fc1": lay + r"mlp\.fc1\.weight$",
                "fc2": lay + r"mlp\.fc2\.weight$",
            }
        expected = {"query": [h * hd, d], "attention.output": [d, h * hd], "fc1": [inter, d], "fc2": [d, inter]}
        problems = check_layer_tensors(shapes, patterns, expected, n)
        for k, s in shapes.items():
            if k.endswith("embeddings.cls_token") and s[-1] != d:
                problems.append(f"{k}: shape {s}, config hidden_size {d}")
        return problems
