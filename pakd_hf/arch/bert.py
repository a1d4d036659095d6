"""BERT family: ``BertModel`` / ``BertFor*`` and ``RobertaModel`` / ``RobertaFor*`` (post-LN).

What transformers 5.24's modeling code reads (``models/bert/modeling_bert.py``):

- ``BertSelfAttention``: ``attention_head_size = int(hidden_size / num_attention_heads)``,
  q/k/v are ``Linear(hidden_size, num_heads * head_size)``, the forward reshapes with ``-1``
  heads. So a stock config can only describe ``hidden_size == kept_heads * head_dim``: pruning
  heads without pruning the hidden size by the same ratio (or the reverse) is NOT reloadable
  by stock code. :meth:`BertAdapter.check_structure` raises :class:`HeadDimError` for it (in
  memory the compacted model still runs: the reshape uses ``-1``).
- Layers: ``encoder.layer`` (``nn.ModuleList``); ``layer_idx`` lives on ``attention.self``
  (cache only). Post-LN blocks: ``LN(x + dense(attn))``, ``LN(x + fc2(act(fc1(x))))``.
- Hidden width: word/position/token_type embeddings, embeddings LayerNorm, q/k/v inputs,
  attention.output.dense, both block LayerNorms, fc1 input, fc2 output, pooler.dense (input AND
  output: stock config ties its width to hidden_size), then the task head input.
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
    UnsupportedArchitectureError,
    check_layer_tensors,
    check_stock_attention_shape,
    write_shape_fields,
)


# Looked up on first use, not imported at the top: the first model class imported pulls in
# transformers' modeling stack (about 3 s here), which `import pakd_hf`, `pakd --help` and
# `pakd validate` do not need.
def _base_classes():
    from transformers import BertModel, RobertaModel

    return (BertModel, RobertaModel)


@register
class BertAdapter(ArchAdapter):
    family = "bert"
    description = "BERT/RoBERTa (BertModel, BertFor*, RobertaModel, RobertaFor*)"
    model_types = ("bert", "roberta")
    custom_code = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            bases = _base_classes()
        except ImportError:  # pragma: no cover
            return False
        base = getattr(model, "base_model", model)
        return isinstance(model, bases) or isinstance(base, bases)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} with add_cross_attention=True: cross-attention pruning is not supported"
            )

    # ---------------------------------------------------------------- anatomy
    def backbone(self) -> nn.Module:
        bases = _base_classes()
        return self.model if isinstance(self.model, bases) else self.model.base_model

    def layer_list(self) -> nn.ModuleList:
        return self.backbone().encoder.layer

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        self.backbone().encoder.layer = layers

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        sa = layer.attention.self
        return LayerParts(
            layer=layer,
            attn=AttentionParts(module=sa, q=sa.query, k=sa.key, v=sa.value, o=layer.attention.output.dense),
            fc1=layer.intermediate.dense,
            fc2=layer.output.dense,
            norms=[layer.attention.output.LayerNorm, layer.output.LayerNorm],
        )

    def head_dim(self) -> int:
        return self.layer_list()[0].attention.self.attention_head_size

    def head_cuts_outside_layers(self) -> list[Cut]:
        bb = self.backbone()
        emb = bb.embeddings
        cuts = [Cut(emb.word_embeddings, 1), Cut(emb.position_embeddings, 1)]
        if getattr(emb, "token_type_embeddings", None) is not None:
            cuts.append(Cut(emb.token_type_embeddings, 1))
        cuts.append(Cut(emb.LayerNorm, 0))
        if getattr(bb, "pooler", None) is not None:
            cuts += [Cut(bb.pooler.dense, 1), Cut(bb.pooler.dense, 0)]
        if self.model is bb:
            return cuts
        return cuts + self._task_head_cuts()

    def _task_head_cuts(self) -> list[Cut]:
        m = self.model
        for attr in ("classifier", "qa_outputs"):
            head = getattr(m, attr, None)
            if isinstance(head, nn.Linear):
                return [Cut(head, 1)]
            # RobertaClassificationHead: dense (hidden -> hidden, tanh) then out_proj
            if head is not None and isinstance(getattr(head, "dense", None), nn.Linear) and isinstance(
                getattr(head, "out_proj", None), nn.Linear
            ):
                return [Cut(head.dense, 1), Cut(head.dense, 0), Cut(head.out_proj, 1)]
        raise UnsupportedArchitectureError(
            f"hidden-size pruning does not know the task head of {type(m).__name__}; supported heads: "
            "a Linear `classifier` / `qa_outputs` or RoBERTa's classification head (heads, FFN and layer "
            "pruning work for every BERT/RoBERTa model)"
        )

    def rotation_heads(self) -> list[tuple[nn.Linear, list[nn.Linear]]]:
        bb = self.backbone()
        m = self.model
        heads = []
        if getattr(bb, "pooler", None) is not None:
            classifier = getattr(m, "classifier", None) if m is not bb else None
            heads.append((bb.pooler.dense, [classifier] if isinstance(classifier, nn.Linear) else []))
        head = getattr(m, "classifier", None) if m is not bb else None
        if head is not None and isinstance(getattr(head, "dense", None), nn.Linear):
            heads.append((head.dense, [head.out_proj]))  # RobertaClassificationHead
        return heads

    def embedding_parameters(self) -> list[nn.Parameter]:
        emb = self.backbone().embeddings
        mods = [emb.word_embeddings, emb.position_embeddings, getattr(emb, "token_type_embeddings", None)]
        return [m.weight for m in mods if m is not None]

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:
        attn.module.num_attention_heads = num_heads
        attn.module.all_head_size = num_heads * attn.module.attention_head_size

    def set_layer_index(self, layer: nn.Module, index: int) -> None:
        layer.attention.self.layer_idx = index

    # ----------------------------------------------------------------- config
    def check_structure(self, structure) -> None:
        check_stock_attention_shape(structure, "BERT", "num_attention_heads", "intermediate_size", "hidden_size")

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        if strict:
            self.check_structure(structure)
        write_shape_fields(config, structure, "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "hidden_size")

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        d, h, inter, n = (config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers"))
        problems = []
        if h <= 0 or d % h:
            problems.append(f"hidden_size {d} is not a multiple of num_attention_heads {h}")
            return problems
        all_head = h * (d // h)
        lay = r"(?:^|\.)encoder\.layer\.(\d+)\."
        patterns = {
            "query": lay + r"attention\.self\.query\.weight$",
            "attention.output": lay + r"attention\.output\.dense\.weight$",
            "intermediate": lay + r"intermediate\.dense\.weight$",
            "output": lay + r"output\.dense\.weight$",  # the FFN output (attention.output differs)
        }
        expected = {
            "query": [all_head, d],
            "attention.output": [d, all_head],
            "intermediate": [inter, d],
            "output": [d, inter],
        }
        problems += check_layer_tensors(shapes, patterns, expected, n)
        for k, s in shapes.items():
            if k.endswith("embeddings.word_embeddings.weight") and s[1] != d:
                problems.append(f"{k}: shape {s}, config hidden_size {d}")
        return problems
