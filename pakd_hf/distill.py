"""Distillation losses on plain tensors (no trainer code here).

Every loss returns one value PER SAMPLE (shape ``[batch]``). The trainer sums them and divides
by the number of samples in the whole gradient-accumulation window, which makes gradient
accumulation give exactly the gradients of one big batch. The ``*_loss`` means are there for
users who want a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "logit_kd_per_sample",
    "hidden_per_sample",
    "attention_kl_per_sample",
    "logit_kd_loss",
    "logit_mse_per_sample",
    "resolve_layer_map",
    "HiddenProjections",
]


def _masked_mean_over_positions(values: Tensor, mask: Tensor | None) -> Tensor:
    """``values`` is [B, S]; average over positions where ``mask`` is true (all when None)."""
    if mask is None:
        return values.mean(dim=1)
    mask = mask.to(values.dtype)
    # A sample with no valid position contributes 0 rather than NaN.
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def logit_kd_per_sample(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per sample.

    Logits are ``[B, C]`` (sequence, image, audio classification) or ``[B, S, C]`` (token
    level); for token level the KL is averaged over the positions where ``mask`` ([B, S]) is
    true, e.g. ``labels != -100`` or the attention mask, so padding never counts.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: distillation needs the same label space"
        )
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * (t * t)
    if kl.dim() == 1:
        return kl
    return _masked_mean_over_positions(kl.flatten(1), None if mask is None else mask.flatten(1))


def logit_mse_per_sample(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared difference of the raw logits per sample (Tang et al., 2019, "Distilling
    task-specific knowledge from BERT into simple neural networks"): unlike the KL of softened
    probabilities it keeps pulling when the student already ranks the classes like the teacher.
    Token-level logits are averaged over the positions where ``mask`` is true."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: distillation needs the same label space"
        )
    se = (student_logits.float() - teacher_logits.float()).pow(2).mean(dim=-1)
    if se.dim() == 1:
        return se
    return _masked_mean_over_positions(se.flatten(1), None if mask is None else mask.flatten(1))


def logit_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """Batch mean of :func:`logit_kd_per_sample`."""
    return logit_kd_per_sample(student_logits, teacher_logits, temperature, mask).mean()


def hidden_per_sample(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None, kind: str = "mse"
) -> Tensor:
    """Distance between (already projected) student and teacher hidden states, per sample.

    Inputs are ``[B, S, D]`` (or ``[B, D]``). ``mse``: mean squared error over the hidden
    dimension, averaged over valid positions. ``cosine``: 1 - cosine similarity per position,
    averaged over valid positions.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: student {tuple(student_hidden.shape)} vs teacher "
            f"{tuple(teacher_hidden.shape)}"
        )
    s = student_hidden.float()
    t = teacher_hidden.float()
    if s.dim() == 2:
        s, t = s.unsqueeze(1), t.unsqueeze(1)
    if kind == "mse":
        per_pos = (s - t).pow(2).mean(dim=-1)
    elif kind == "cosine":
        per_pos = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"unknown hidden-state loss {kind!r}: use 'mse' or 'cosine'")
    return _masked_mean_over_positions(per_pos, mask)


def attention_kl_per_sample(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(teacher || student) between attention distributions, per sample.

    Inputs are attention probabilities ``[B, H, S, S]`` (rows sum to 1). When the head counts
    differ (the student lost heads to pruning) both are averaged over heads first. The KL of
    each query row is summed over keys, averaged over heads, then over the valid query
    positions given by ``mask`` ([B, S]).
    """
    if student_attn.shape[-2:] != teacher_attn.shape[-2:] or student_attn.shape[0] != teacher_attn.shape[0]:
        raise ValueError(
            f"attention maps differ in shape: student {tuple(student_attn.shape)} vs teacher "
            f"{tuple(teacher_attn.shape)}"
        )
    s = student_attn.float()
    t = teacher_attn.float()
    if s.shape[1] != t.shape[1]:
        s = s.mean(dim=1, keepdim=True)
        t = t.mean(dim=1, keepdim=True)
    eps = 1e-12
    # Masked keys carry ~0 probability in both; the clamp keeps 0 * log 0 at 0.
    kl = (t * (torch.log(t.clamp_min(eps)) - torch.log(s.clamp_min(eps)))).sum(dim=-1)  # [B, H, S]
    return _masked_mean_over_positions(kl.mean(dim=1), mask)


def resolve_layer_map(spec, n_student: int, n_teacher: int, kind: str) -> list[tuple[int, int]]:
    """Turn a recipe layer map into explicit (student, teacher) index pairs.

    ``kind="hidden"`` indexes ``hidden_states`` (0 = embeddings, i = output of layer i; the
    models have ``n_student`` / ``n_teacher`` layers, so indices go up to n). ``auto`` pairs
    the embeddings and spaces student layers uniformly over the teacher's.
    ``kind="attention"`` indexes ``attentions`` (0 = first layer); ``auto`` maps student layer
    j to teacher layer round((j + 1) * n_teacher / n_student) - 1.
    """
    if spec != "auto":
        return [(int(s), int(t)) for s, t in spec]
    if kind == "hidden":
        return [(0, 0)] + [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    if kind == "attention":
        return [(j, round((j + 1) * n_teacher / n_student) - 1) for j in range(n_student)]
    raise ValueError(f"unknown layer-map kind {kind!r}")


class HiddenProjections(nn.Module):
    """Learned linear maps from student to teacher hidden width, one per mapped student index.

    They train with the student but belong to the distillation, not to the student: they are
    never part of the exported model. When widths are equal no projection is created and the
    hidden state is compared as is.
    """

    def __init__(self, student_indices: list[int], student_dim: int, teacher_dim: int, always: bool = False):
        """``always``: create projections even when widths are equal (initialised to the
        identity), because pruning the student's hidden dimension will make them differ."""
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        # Which of the student's original hidden dims the projection inputs are (hidden pruning).
        self.inputs = list(range(student_dim))
        self.maps = nn.ModuleDict()
        if student_dim != teacher_dim or always:
            for idx in sorted(set(student_indices)):
                proj = nn.Linear(student_dim, teacher_dim)
                if student_dim == teacher_dim:
                    with torch.no_grad():
                        proj.weight.copy_(torch.eye(student_dim))
                        proj.bias.zero_()
                self.maps[str(idx)] = proj

    def keep_inputs(self, kept: list[int]) -> None:
        """The student's hidden stream now holds only the original dims `kept`: drop the
        projection input columns of the others (new parameters: rebuild the optimizer)."""
        if list(kept) == self.inputs:
            return
        position = {dim: i for i, dim in enumerate(self.inputs)}
        index = torch.tensor([position[d] for d in kept], dtype=torch.long)
        for proj in self.maps.values():
            weight = proj.weight.detach().index_select(1, index.to(proj.weight.device))
            proj.weight = nn.Parameter(weight, requires_grad=proj.weight.requires_grad)
            proj.in_features = len(kept)
        self.inputs = list(kept)
        self.student_dim = len(kept)

    def forward(self, index: int, hidden: Tensor) -> Tensor:
        key = str(index)
        if key in self.maps:
            proj = self.maps[key]
            return proj(hidden.to(proj.weight.dtype))
        return hidden
