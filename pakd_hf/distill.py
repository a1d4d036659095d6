"""Distillation losses on plain tensors (no trainer code here).

Every loss returns one value PER SAMPLE (shape ``[batch]``). The trainer sums them and divides
by the number of samples in the whole gradient-accumulation window, which makes gradient
accumulation give exactly the gradients of one big batch. The ``*_loss`` means are there for
users who want a scalar.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TOKEN_LOSSES",
    "check_plain_head",
    "last_hidden_state",
    "token_divergence",
    "token_kd_per_sample",
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


#: token-level distillation losses for causal LMs (``distillation.loss`` in a recipe)
TOKEN_LOSSES = ("kl", "reverse_kl", "jsd")


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float, loss: str = "kl",
                     beta: float = 0.5) -> Tensor:
    """Per-position divergence ``[N]`` between ``[N, V]`` logits, times ``T^2``, as TRL's GKD
    (Agarwal et al., 2024, "On-policy distillation of language models") defines them:

    - ``kl``: forward KL(teacher || student), mass-covering (the classic KD loss);
    - ``reverse_kl``: KL(student || teacher), mode-seeking;
    - ``jsd``: generalised Jensen-Shannon with mixture ``m = beta * teacher + (1 - beta) *
      student``: ``beta * KL(teacher || m) + (1 - beta) * KL(student || m)`` (``beta`` -> 0 tends
      to a scaled forward KL, -> 1 to a scaled reverse KL; 0.5 is the symmetric JSD).
    """
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if loss == "kl":
        d = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif loss == "reverse_kl":
        d = (log_s.exp() * (log_s - log_t)).sum(-1)
    elif loss == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta} (beta 0 / 1: use kl / reverse_kl)")
        log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
        d = beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1.0 - beta) * (log_s.exp() * (log_s - log_m)).sum(-1)
    else:
        raise ValueError(f"unknown token-level loss {loss!r}: use one of {', '.join(TOKEN_LOSSES)}")
    return d * (t * t)


def token_kd_per_sample(
    student_hidden: Tensor,
    student_head: nn.Module,
    teacher_hidden: Tensor,
    teacher_head: nn.Module,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    loss: str = "kl",
    beta: float = 0.5,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Token-level distillation and next-token cross-entropy of a causal LM, per sample, from the
    last hidden states (after the final norm), without ever holding ``[batch, tokens, vocab]``.

    ``student_hidden`` / ``teacher_hidden``: ``[B, S, D_s]`` / ``[B, S, D_t]``; ``labels``:
    ``[B, S]`` in transformers' convention (unshifted: position ``i`` predicts ``labels[i + 1]``;
    ``-100`` for padding and positions that do not count). Only positions with a label to predict
    are used: they are gathered, then the LM heads run on ``chunk_size`` of them at a time. Each
    student chunk is checkpointed (``torch.utils.checkpoint``, non-reentrant), so its logits are
    freed after the forward and recomputed in the backward: peak memory holds one chunk's
    logits, not all of them. Teacher logits are made per chunk under ``no_grad``.

    Returns ``(kd, ce)``, each ``[B]``: the mean over the sample's counted positions of
    :func:`token_divergence` and of the student's cross-entropy (0 for a sample with none).
    """
    from torch.utils.checkpoint import checkpoint

    if student_hidden.shape[:2] != teacher_hidden.shape[:2] or labels.shape != student_hidden.shape[:2]:
        raise ValueError(f"student hidden {tuple(student_hidden.shape)}, teacher hidden {tuple(teacher_hidden.shape)} "
                         f"and labels {tuple(labels.shape)} must share [batch, tokens]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B = labels.shape[0]
    targets = labels[:, 1:]
    valid = targets.ne(-100)
    sample = torch.arange(B, device=labels.device)[:, None].expand_as(targets)[valid]
    tgt = targets[valid]
    hs = student_hidden[:, :-1][valid]
    ht = teacher_hidden[:, :-1][valid]

    def student_chunk(h, th, y):
        logits = student_head(h)
        with torch.no_grad():
            t_logits = teacher_head(th)
        kd = token_divergence(logits, t_logits, temperature, loss, beta)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return kd, ce

    kd_parts, ce_parts = [], []
    for i in range(0, tgt.numel(), chunk_size):
        sl = slice(i, i + chunk_size)
        if torch.is_grad_enabled() and hs.requires_grad:
            kd, ce = checkpoint(student_chunk, hs[sl], ht[sl], tgt[sl], use_reentrant=False)
        else:
            kd, ce = student_chunk(hs[sl], ht[sl], tgt[sl])
        kd_parts.append(kd)
        ce_parts.append(ce)
    zeros = student_hidden.new_zeros(B, dtype=torch.float32)
    if not kd_parts:
        return zeros + 0.0 * student_hidden.sum(), zeros.clone()
    count = torch.zeros(B, device=labels.device).index_add_(0, sample, torch.ones_like(tgt, dtype=torch.float32))
    count = count.clamp_min(1.0).to(zeros.device)
    kd = zeros.index_add(0, sample.to(zeros.device), torch.cat(kd_parts)) / count
    ce = zeros.index_add(0, sample.to(zeros.device), torch.cat(ce_parts)) / count
    return kd, ce


class last_hidden_state:
    """``with last_hidden_state(model) as h: model(...)`` leaves in ``h[0]`` the output of a
    causal LM's decoder (``model.get_decoder()``: the last hidden state, after the final norm),
    caught by a forward hook, which also works through DDP wrappers. ``model=None``: a no-op."""

    def __init__(self, model):
        self.module = model.get_decoder() if model is not None else None
        self.value: list[Tensor] = []
        self.handle = None

    def __enter__(self) -> list[Tensor]:
        if self.module is not None:
            def hook(module, args, output):
                self.value[:] = [output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]]

            self.handle = self.module.register_forward_hook(hook)
        return self.value

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


def check_plain_head(model: nn.Module, head: nn.Module, hidden: Tensor, logits: Tensor) -> None:
    """Raise ``ValueError`` unless ``head(hidden[:, -1:])`` gives the model's own last-position
    ``logits``: chunked token losses and perplexity read ``head(last hidden state)`` as the
    logits, which is wrong for a model that transforms them after its head (softcapping, scaling)."""
    with torch.no_grad():
        mine = head(hidden[:, -1:]).float()
    if mine.shape != logits.shape or not torch.allclose(mine, logits.detach().float(), rtol=1e-3, atol=1e-4):
        raise ValueError(
            f"{type(model).__name__} transforms its logits after the LM head (e.g. softcapping or scaling): token-level "
            "losses and perplexity read them from its hidden states and would be wrong (distillation.loss: mse compares "
            "the model's own logits)"
        )


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
