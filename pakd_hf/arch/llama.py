"""Llama family: Llama, Mistral, Qwen2 and Qwen3 decoders (``*Model``, ``*ForCausalLM``,
``*ForSequenceClassification``), pre-norm with RMSNorm and grouped-query attention.

What transformers 5.24's modeling code reads (``models/{llama,mistral,qwen2,qwen3}/modeling_*.py``),
and where the four differ:

- Attention: ``head_dim = config.head_dim`` (Llama, Mistral and Qwen3 always write it; Qwen2's
  config has no such field and falls back to ``hidden_size // num_attention_heads``: this
  adapter writes ``head_dim`` into the config as an extra key whenever the fallback would be
  wrong, and stock Qwen2 reads it through ``getattr``). q is ``Linear(hidden, heads * head_dim)``,
  k and v ``Linear(hidden, kv_heads * head_dim)``, o ``Linear(heads * head_dim, hidden)``; the
  forward reshapes with ``-1`` heads and repeats each K/V head for ``num_key_value_groups =
  heads // kv_heads`` consecutive query heads. Bias: Qwen2 on q/k/v (not o), Llama/Qwen3 per
  ``attention_bias``, Mistral none. Qwen3 adds ``q_norm`` / ``k_norm``: RMSNorms over
  ``head_dim`` with one weight shared by all heads, so no pruning kind touches them.
- Heads are pruned as whole KV GROUPS: a unit of the ``heads`` kind is one K/V head together
  with its ``num_key_value_groups`` query heads (q rows and o columns ``g * head_dim`` wide,
  k/v rows ``head_dim`` wide). ``heads: {keep: N}`` in a recipe therefore keeps N KV groups,
  and the saved config has ``num_key_value_heads = N``, ``num_attention_heads = N * g``: the
  ratio, the head size and the divisibility every attention kernel relies on are unchanged.
  (The other option, dropping the same number of query heads in every group while keeping all
  K/V heads, is not offered: it saves only the q/o share of attention and keeps the KV cache
  whole.) With ``kv_heads == heads`` (plain multi-head attention) a unit is one head.
- FFN (SwiGLU): ``down(act(gate(x)) * up(x))``; a neuron is a gate row, an up row (with their
  biases when ``mlp_bias``) and a down column, removed together.
- Layers: ``model.layers`` (``nn.ModuleList``); ``self_attn.layer_idx`` indexes the KV cache and
  is renumbered after layers are removed. Qwen2/Qwen3 keep a per-layer ``layer_types`` list in
  the config (full or sliding-window attention); it is cut to the kept layers.
- Hidden width (pre-norm: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, final ``norm``): the
  token embeddings, every RMSNorm weight over the stream, q/k/v and gate/up inputs, o and down
  outputs, and the task head's input (``lm_head``, or ``score`` for sequence classification).
  With tied embeddings (``lm_head.weight is embed_tokens.weight``) the one tensor is cut once
  and the LM head re-tied after compaction. While hidden dims are only masked, each stream
  RMSNorm takes its mean square over the kept dims (the masks' norm hook), so the masked model
  equals the compacted one exactly.
- Hidden rotation (``hidden: {method: rotate}``, :mod:`pakd_hf.prune.rotate`): SliceGPT's rule,
  exact up to what the dropped directions held. The norms inside the blocks hand their gains to
  the Linears that read them (q/k/v, gate/up), so an RMSNorm with one uniform gain commutes with
  the rotation; the final norm keeps the diagonal of its rotated gain (its output is the last
  hidden state, and a tied LM head cannot take the gain). One rotation for the whole stream, so
  the rotated model is a stock config (SliceGPT's per-layer rotations need extra matrices).
- Vocabulary pruning is not offered for decoders: the LM head would then predict only kept
  tokens, which changes what ``generate()`` can produce.
"""

from __future__ import annotations

import copy
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
)


# Looked up on first use, not imported at the top: the first model class imported pulls in
# transformers' modeling stack (about 3 s here), which `import pakd_hf`, `pakd --help` and
# `pakd validate` do not need.
def _base_classes():
    from transformers import LlamaModel, MistralModel, Qwen2Model, Qwen3Model

    return (LlamaModel, MistralModel, Qwen2Model, Qwen3Model)


#: config.model_type values whose config class has a ``head_dim`` field
_HEAD_DIM_FIELD = ("llama", "mistral", "qwen3")


@register
class LlamaAdapter(ArchAdapter):
    family = "llama"
    description = "Llama/Mistral/Qwen2/Qwen3 decoders (*Model, *ForCausalLM, *ForSequenceClassification)"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    # the heads kind counts KV groups (see the module docs)
    config_fields = {"num_attention_heads": "num_key_value_heads"}

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            bases = _base_classes()
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, bases) or isinstance(getattr(model, "base_model", None), bases)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = model.config
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
        if nh % nkv:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}"
            )

    # ---------------------------------------------------------------- anatomy
    def backbone(self) -> nn.Module:
        return self.model if isinstance(self.model, _base_classes()) else self.model.base_model

    def layer_list(self) -> nn.ModuleList:
        return self.backbone().layers

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        self.backbone().layers = layers

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        a, m = layer.self_attn, layer.mlp
        return LayerParts(
            layer=layer,
            attn=AttentionParts(module=a, q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj),
            fc1=m.up_proj,
            fc2=m.down_proj,
            norms=[layer.input_layernorm, layer.post_attention_layernorm],
        )

    def head_dim(self) -> int:
        if self.num_layers:
            return self.layer_list()[0].self_attn.head_dim
        cfg = self.model.config  # Qwen2 configs have no head_dim, Mistral's may hold None
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def group_size(self) -> int:
        """Query heads per K/V head (``num_key_value_groups``), which pruning never changes."""
        cfg = self.model.config
        return cfg.num_attention_heads // (cfg.num_key_value_heads or cfg.num_attention_heads)

    def num_heads(self, i: int) -> int:
        """KV groups of layer ``i`` (the unit of the heads kind)."""
        return self.layer_parts(self.layer_list()[i]).attn.k.out_features // self.head_dim()

    def head_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        a = (parts or self.layer_parts(self.layer_list()[i])).attn
        hd, g = self.head_dim(), self.group_size()
        return [Cut(a.q, 0, group=g * hd), Cut(a.k, 0, group=hd), Cut(a.v, 0, group=hd), Cut(a.o, 1, group=g * hd)]

    def ffn_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        layer = (parts or self.layer_parts(self.layer_list()[i])).layer
        m = layer.mlp
        return [Cut(m.gate_proj, 0), Cut(m.up_proj, 0), Cut(m.down_proj, 1)]

    def layer_hidden_cuts(self, parts: LayerParts) -> list[Cut]:
        return super().layer_hidden_cuts(parts) + [Cut(parts.layer.mlp.gate_proj, 1)]

    def _tied(self) -> bool:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return head is not None and head.weight is self.backbone().embed_tokens.weight

    def head_cuts_outside_layers(self) -> list[Cut]:
        bb = self.backbone()
        cuts = [Cut(bb.embed_tokens, 1), Cut(bb.norm, 0)]
        if self.model is bb:
            return cuts
        lm_head = getattr(self.model, "lm_head", None)
        if isinstance(lm_head, nn.Linear):
            # what compaction re-ties afterwards: the tensors as they are now, not the config's flag
            self._tied_when_cut = self._tied()
            return cuts if self._tied_when_cut else cuts + [Cut(lm_head, 1)]
        score = getattr(self.model, "score", None)
        if isinstance(score, nn.Linear):
            return cuts + [Cut(score, 1)]
        raise UnsupportedArchitectureError(
            f"hidden-size pruning does not know the task head of {type(self.model).__name__}; supported heads: "
            "a Linear `lm_head` (causal LM) or `score` (sequence classification)"
        )

    def rotation_heads(self) -> list[tuple[nn.Linear, list[nn.Linear]]]:
        return []  # every Linear of the stream reads or writes it directly

    def rotation_pre_norms(self) -> list[tuple[nn.Module, list[nn.Linear]]]:
        # The final norm is left out: its output is the last hidden state (a distillation target)
        # and, with tied embeddings, the LM head cannot take its gain. It keeps the diagonal rule.
        out = []
        for layer in self.layer_list():
            a, m = layer.self_attn, layer.mlp
            out.append((layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj]))
            out.append((layer.post_attention_layernorm, [m.gate_proj, m.up_proj]))
        return out

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The token embeddings and, when not tied to them, the LM head (both vocabulary tables)."""
        out = [self.backbone().embed_tokens.weight]
        lm_head = getattr(self.model, "lm_head", None)
        if isinstance(lm_head, nn.Linear) and not self._tied():
            out.append(lm_head.weight)
        return out

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:
        # the forward reshapes with -1 and repeats K/V by num_key_value_groups, which whole-group
        # pruning keeps: nothing on the module mirrors the head count
        return None

    def set_layer_index(self, layer: nn.Module, index: int) -> None:
        layer.self_attn.layer_idx = index

    def after_compact(self) -> None:
        bb = self.backbone()
        d = bb.embed_tokens.embedding_dim
        lm_head = getattr(self.model, "lm_head", None)
        tied = getattr(self, "_tied_when_cut", self._tied())
        if isinstance(lm_head, nn.Linear) and tied:
            lm_head.weight = bb.embed_tokens.weight  # compaction made a new tensor: tie it again
            lm_head.in_features = d
        for layer in self.layer_list():
            layer.hidden_size = d
            layer.mlp.hidden_size = d
            layer.mlp.intermediate_size = layer.mlp.up_proj.out_features

    # ----------------------------------------------------------------- config
    def check_structure(self, structure) -> None:
        if not structure.is_uniform():
            raise NonUniformStructureError(
                "layers keep different numbers of KV groups or FFN neurons: a stock Llama/Qwen/Mistral config "
                f"holds one num_key_value_heads and one intermediate_size (per layer: {structure.describe()})"
            )

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        if strict:
            self.check_structure(structure)
        g = config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
        groups = max(structure.heads_per_layer() or [structure.num_heads])
        ffn = max(structure.ffn_per_layer() or [structure.intermediate_size])
        hidden = len(structure.hidden)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None:
            config.layer_types = self._kept_layer_types(list(layer_types), structure)
        config.num_hidden_layers = len(structure.layers)
        config.num_key_value_heads = groups
        config.num_attention_heads = groups * g
        config.intermediate_size = ffn
        config.hidden_size = hidden
        if config.model_type in _HEAD_DIM_FIELD or hidden != config.num_attention_heads * structure.head_dim:
            config.head_dim = structure.head_dim  # Qwen2: an extra key its attention reads by getattr

    def _kept_layer_types(self, layer_types: list[str], structure) -> list[str]:
        """The per-layer attention types of the layers ``structure`` keeps. :func:`compact`
        writes the config after it removed the layers, so each kept layer's attention still
        knows its own type (``self_attn.layer_type``, set from the config when it was built);
        otherwise (a budget candidate costed on a copy of the config) the first ones."""
        layers = self.layer_list()
        types = [getattr(layer.self_attn, "layer_type", None) for layer in layers]
        if len(layers) == len(structure.layers) and None not in types:
            return types
        return copy.copy(layer_types[: len(structure.layers)])

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        d, nh, inter, n = (config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers"))
        nkv = config.get("num_key_value_heads") or nh
        hd = config.get("head_dim") or (d // nh if nh else 0)
        problems = []
        if nkv <= 0 or nh % nkv:
            return [f"num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}"]
        lt = config.get("layer_types")
        if lt is not None and len(lt) != n:
            problems.append(f"layer_types has {len(lt)} entries, num_hidden_layers is {n}")
        lay = r"(?:^|\.)layers\.(\d+)\."
        patterns = {
            "q_proj": lay + r"self_attn\.q_proj\.weight$",
            "k_proj": lay + r"self_attn\.k_proj\.weight$",
            "o_proj": lay + r"self_attn\.o_proj\.weight$",
            "gate_proj": lay + r"mlp\.gate_proj\.weight$",
            "down_proj": lay + r"mlp\.down_proj\.weight$",
        }
        expected = {
            "q_proj": [nh * hd, d],
            "k_proj": [nkv * hd, d],
            "o_proj": [d, nh * hd],
            "gate_proj": [inter, d],
            "down_proj": [d, inter],
        }
        problems += check_layer_tensors(shapes, patterns, expected, n)
        for k, s in shapes.items():
            if k.endswith("embed_tokens.weight") and s[1] != d:
                problems.append(f"{k}: shape {s}, config hidden_size {d}")
        return problems

    @classmethod
    def structure_problems(cls, config: dict, structure) -> list[str]:
        problems = super().structure_problems(config, structure)  # num_key_value_heads = kept groups
        nh, nkv = config.get("num_attention_heads"), config.get("num_key_value_heads")
        if isinstance(nh, int) and isinstance(nkv, int) and nkv and nh % nkv:
            problems.append(f"num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}")
        hd = config.get("head_dim") or (config.get("hidden_size", 0) // nh if nh else 0)
        if hd != structure.head_dim:
            problems.append(f"pakd.json structure has head_dim {structure.head_dim}, config.json implies {hd}")
        return problems
