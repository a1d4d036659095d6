"""PaKD RoBERTa configuration: ``RobertaConfig`` plus the per-layer shapes of a pruned RoBERTa.

This is pakd-hf's template (``pakd_hf/templates``); ``pakd_hf.export.save_compact`` writes it next to
a pruned checkpoint whose shapes a stock ``RobertaConfig`` cannot describe. Imports only transformers.
"""

from transformers import RobertaConfig


class PaKDRobertaConfig(RobertaConfig):
    r"""``RobertaConfig`` for a pruned RoBERTa whose layers may differ in shape.

    The stock fields keep their meaning where they can: ``hidden_size`` is the (pruned) residual width,
    ``num_hidden_layers`` the number of kept layers, ``num_attention_heads`` / ``intermediate_size`` the
    LARGEST per-layer values. The exact shapes are in three extra fields:

    pakd_heads_per_layer (`list[int]`): attention heads of each layer.
    pakd_ffn_per_layer (`list[int]`): FFN (intermediate) width of each layer.
    pakd_head_dim (`int`): width of one attention head, which need not be
        ``hidden_size // num_attention_heads`` (heads and hidden width are pruned independently).

    Left unset, they default to the stock values: the model is then a plain RoBERTa.
    """

    model_type = "pakd_roberta"

    pakd_heads_per_layer: list[int] | None = None
    pakd_ffn_per_layer: list[int] | None = None
    pakd_head_dim: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.pakd_layer_shapes()  # fail here, not deep inside the model, on inconsistent fields

    def pakd_layer_shapes(self) -> list[tuple[int, int, int]]:
        """``(heads, head_dim, ffn)`` of every layer, in order."""
        n = self.num_hidden_layers
        heads = self.pakd_heads_per_layer if self.pakd_heads_per_layer is not None else [self.num_attention_heads] * n
        ffn = self.pakd_ffn_per_layer if self.pakd_ffn_per_layer is not None else [self.intermediate_size] * n
        head_dim = self.pakd_head_dim or self.hidden_size // self.num_attention_heads
        if len(heads) != n or len(ffn) != n:
            raise ValueError(
                f"{type(self).__name__}: pakd_heads_per_layer has {len(heads)} entries and pakd_ffn_per_layer "
                f"{len(ffn)}, but num_hidden_layers is {n}"
            )
        if min(list(heads) + list(ffn) + [head_dim], default=1) < 1:
            raise ValueError(f"{type(self).__name__}: every layer needs at least one head and one FFN neuron")
        return [(int(h), int(head_dim), int(f)) for h, f in zip(heads, ffn)]


__all__ = ["PaKDRobertaConfig"]
