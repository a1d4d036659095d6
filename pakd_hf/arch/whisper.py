"""Whisper encoder: ``WhisperForAudioClassification`` and a bare ``WhisperEncoder`` (pre-LN).

What transformers 5.24's modeling code reads (``models/whisper/modeling_whisper.py``):

- ``WhisperAttention``: ``head_dim = embed_dim // num_heads`` (``embed_dim = d_model``),
  ``scaling = head_dim ** -0.5``, q/k/v/out_proj are ``Linear(d_model, d_model)`` (k has NO bias).
  The query reshapes with ``-1`` heads but keys and values reshape with ``self.num_heads``, so
  after removing heads :meth:`WhisperAdapter.set_num_heads` MUST patch ``num_heads`` (and
  ``embed_dim`` = projection width); ``head_dim`` and ``scaling`` do not change. A stock config
  can only describe ``d_model == kept_heads * head_dim`` (like BERT):
  :meth:`WhisperAdapter.check_structure` raises :class:`HeadDimError` otherwise (in memory the
  compacted model still runs).
- Layers: ``encoder.layers`` (``nn.ModuleList``; encoder attention has ``layer_idx=None``).
  Pre-LN blocks: ``x + out_proj(attn(LN(x)))``, ``x + fc2(act(fc1(LN(x))))``; the encoder ends
  with ``layer_norm``. ``embed_positions`` (an ``nn.Embedding``, ``requires_grad=False``) is added
  to ``gelu(conv2(gelu(conv1(mel))))``.
- Hidden width: ``conv1`` out channels, ``conv2`` in and out channels, ``embed_positions``' embedding
  dim, every block's two LayerNorms, q/k/v and fc1 inputs, out_proj and fc2 outputs, the final
  ``layer_norm``, and the classifier's ``projector`` input (its output, ``classifier_proj_size``, is
  saved in the config and stays). The mel front end (``num_mel_bins``) and the positions stay.
- ``use_weighted_layer_sum``: ``layer_weights`` (``encoder_layers + 1`` entries) is handled by the
  generic engine (``ArchAdapter.layer_sum_weights``): masked layers' entries are held at ``-inf``,
  compaction slices it.
- Config: :meth:`WhisperAdapter.update_config` writes ``encoder_layers``,
  ``encoder_attention_heads``, ``encoder_ffn_dim`` and ``d_model`` (``num_hidden_layers``,
  ``num_attention_heads``, ``num_key_value_heads`` and ``hidden_size`` are aliases of those in
  ``WhisperConfig.attribute_map``). ``d_model`` is shared with the decoder; the decoder fields are
  left as they are, since the classifier never builds a decoder. The seq2seq models
  (``WhisperModel``, ``WhisperForConditionalGeneration``) are refused: their decoder's
  cross-attention reads the encoder output at ``d_model`` and is not pruned here.
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
    RotationFront,
    UnsupportedArchitectureError,
    check_layer_tensors,
    check_stock_attention_shape,
    write_shape_fields,
)


def _classes():
    from transformers import WhisperForAudioClassification
    from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperModel

    return WhisperForAudioClassification, WhisperEncoder, WhisperModel


@register
class WhisperAdapter(ArchAdapter):
    family = "whisper"
    description = "Whisper encoder (WhisperForAudioClassification, WhisperEncoder)"
    model_types = ("whisper",)
    config_fields = {
        "num_hidden_layers": "encoder_layers",
        "num_attention_heads": "encoder_attention_heads",
        "intermediate_size": "encoder_ffn_dim",
        "hidden_size": "d_model",
    }

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            clf, enc, seq2seq = _classes()
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, (clf, enc, seq2seq)) or isinstance(getattr(model, "model", None), seq2seq)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        clf, enc, _ = _classes()
        if not isinstance(model, (clf, enc)):
            raise UnsupportedArchitectureError(
                f"pruning does not support the Whisper seq2seq model {type(model).__name__}: its decoder's "
                "cross-attention reads the encoder at d_model and is not pruned; prune a "
                "WhisperForAudioClassification (or a bare WhisperEncoder) instead"
            )

    # ---------------------------------------------------------------- anatomy
    def backbone(self) -> nn.Module:
        _, enc, _ = _classes()
        return self.model if isinstance(self.model, enc) else self.model.encoder

    def layer_list(self) -> nn.ModuleList:
        return self.backbone().layers

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        self.backbone().layers = layers

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        a = layer.self_attn
        return LayerParts(
            layer=layer,
            attn=AttentionParts(module=a, q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.out_proj),
            fc1=layer.fc1,
            fc2=layer.fc2,
            norms=[layer.self_attn_layer_norm, layer.final_layer_norm],
        )

    def head_dim(self) -> int:
        return self.layer_list()[0].self_attn.head_dim

    def head_cuts_outside_layers(self) -> list[Cut]:
        enc = self.backbone()
        cuts = [
            Cut(enc.conv1, 0),
            Cut(enc.conv2, 1),
            Cut(enc.conv2, 0),
            Cut(enc.embed_positions, 1),
            Cut(enc.layer_norm, 0),
        ]
        if self.model is enc:
            return cuts
        head = getattr(self.model, "projector", None)
        if isinstance(head, nn.Linear):
            return cuts + [Cut(head, 1)]
        raise UnsupportedArchitectureError(  # pragma: no cover - the classifier always has one
            f"hidden-size pruning does not know the task head of {type(self.model).__name__}"
        )

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.backbone().embed_positions.weight]

    # ---------------------------------------------------------- hidden rotation
    def rotation_heads(self) -> list[tuple[nn.Linear, list[nn.Linear]]]:
        return []  # the classifier's projector reads the stream (after the final norm) directly

    def rotation_pre_norms(self) -> list[tuple[nn.Module, list[nn.Linear]]]:
        # The final layer_norm is left out, as for decoders: its output is the last hidden state
        # (a distillation target). It keeps the diagonal rule.
        out = []
        for layer in self.layer_list():
            a = layer.self_attn
            out.append((layer.self_attn_layer_norm, [a.q_proj, a.k_proj, a.v_proj]))
            out.append((layer.final_layer_norm, [layer.fc1]))
        return out

    def rotation_shift_free(self) -> list[nn.Linear]:
        return [layer.self_attn.k_proj for layer in self.layer_list()]  # k_proj has no bias

    def rotation_front(self) -> RotationFront:
        enc = self.backbone()
        return RotationFront(inner=(enc.conv1, enc.conv2), writer=enc.conv2,
                             refit=[enc.conv1.weight, enc.conv1.bias, enc.conv2.weight, enc.conv2.bias,
                                    enc.embed_positions.weight])

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:
        # keys/values reshape with self.num_heads: forward fails (or mixes heads) without this
        attn.module.num_heads = num_heads
        attn.module.embed_dim = num_heads * attn.module.head_dim

    def after_compact(self) -> None:
        enc = self.backbone()
        for layer in enc.layers:
            layer.embed_dim = layer.self_attn_layer_norm.normalized_shape[0]

    # ----------------------------------------------------------------- config
    def check_structure(self, structure) -> None:
        check_stock_attention_shape(structure, "Whisper", "encoder_attention_heads", "encoder_ffn_dim", "d_model")

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        if strict:
            self.check_structure(structure)
        write_shape_fields(config, structure, "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "d_model")

    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        d, h, inter, n = (config[k] for k in ("d_model", "encoder_attention_heads", "encoder_ffn_dim",
                                              "encoder_layers"))
        problems = []
        if h <= 0 or d % h:
            return [f"d_model {d} is not a multiple of encoder_attention_heads {h}"]
        lay = r"(?:^|\.)encoder\.layers\.(\d+)\."
        patterns = {
            "q_proj": lay + r"self_attn\.q_proj\.weight$",
            "out_proj": lay + r"self_attn\.out_proj\.weight$",
            "fc1": lay + r"fc1\.weight$",
            "fc2": lay + r"fc2\.weight$",
        }
        expected = {"q_proj": [d, d], "out_proj": [d, d], "fc1": [inter, d], "fc2": [d, inter]}
        problems += check_layer_tensors(shapes, patterns, expected, n)
        for k, s in shapes.items():
            if k.endswith("encoder.conv1.weight") and s[0] != d:
                problems.append(f"{k}: shape {s}, config d_model {d}")
            if k.endswith("encoder.embed_positions.weight") and s != [config.get("max_source_positions", s[0]), d]:
                problems.append(f"{k}: shape {s}, config implies [{config.get('max_source_positions')}, {d}]")
            if k == "layer_weights" and s != [n + 1]:
                problems.append(f"{k}: shape {s}, config encoder_layers {n} implies [{n + 1}]")
        return problems
