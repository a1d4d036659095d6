"""Distillation losses on plain tensors (no trainer code here), and the teacher-logits cache.

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
    "TEACHER_LOGITS",
    "add_teacher_logits",
    "MIX_COLUMNS",
    "mix_batch",
    "mixed_task_per_sample",
    "distillation_loss",
]

# The column of a training set that carries the teacher's logits (:func:`add_teacher_logits`).
TEACHER_LOGITS = "teacher_logits"


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


def add_teacher_logits(dataset, teacher: nn.Module, tokenizer, batch_size: int = 128, teacher_token_ids=None):
    """``dataset`` (tokenized, unpadded) with the teacher's logits as a ``teacher_logits`` column.

    ``teacher_token_ids``: for data tokenized with a student's pruned vocabulary, the map from
    its ids to the teacher's (``VocabPruneResult.teacher_ids()``; what the trainer applies).

    One inference pass over the data (batches of similar length, so little padding), run once
    instead of once per epoch: worth it when a stage trains on the same data for several
    epochs with logit distillation only. The teacher must be the one the trainer gets, in
    eval mode, on the same inputs (no augmentation applied later).
    """
    from transformers import DataCollatorWithPadding, default_data_collator

    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in dataset.column_names]
    rows = dataset.select_columns(keys)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    # Without a tokenizer the rows must already have one length (nothing to pad with).
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt") if tokenizer is not None else default_data_collator
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    out: list = [None] * len(rows)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="teacher logits", unit="batch"):
            idx = order[start : start + batch_size]
            columns = rows[idx]  # one read per batch, not per row
            features = [dict(zip(columns, values)) for values in zip(*columns.values())]
            batch = {k: v.to(device) for k, v in collate(features).items()}
            if teacher_token_ids is not None:
                batch["input_ids"] = teacher_token_ids.to(device)[batch["input_ids"]]
            logits = teacher(**batch).logits.float().cpu().tolist()
            for i, row in zip(idx, logits):
                out[i] = row
    teacher.train(was_training)
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    return dataset.add_column(TEACHER_LOGITS, out)


#: the continuous inputs mixup can blend, in the order they are looked for: images, spectrogram
#: features (Whisper and other speech encoders), raw samples (wav2vec2-style)
MIX_COLUMNS = ("pixel_values", "input_features", "input_values")


def mix_batch(inputs: dict, alpha: float, seed: int | None = None) -> tuple[dict, Tensor, Tensor]:
    """mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization") of one batch:
    every example blended with another of the same batch, ``lam * x + (1 - lam) * x[perm]``,
    ``lam`` drawn per example from Beta(``alpha``, ``alpha``). Returns the new inputs (the
    labels untouched), ``perm`` and ``lam`` (``[batch]``), so the task term can weigh both
    labels.

    Why it serves distillation: the teacher reads the blended batch too, so its outputs are
    targets between the classes that no label gives, and the student matches the teacher's
    function over a wider set of inputs than the training examples (Beyer et al., 2022,
    "Knowledge distillation: A good teacher is patient and consistent"). The blend is linear in
    the features the models read (log-mel for Whisper, as the mixup paper's speech-command
    experiment); an ``attention_mask`` becomes the union of both examples'. ``seed``: the draw
    comes from it alone and torch's global random state is left as it was, so a run's
    augmentation and dropout are those of the same run without mixup (the trainer derives one
    per micro-batch from its seed, step and process); None: torch's global state. Written here rather than taken from a library: timm's
    ``Mixup`` (not a dependency) returns blended one-hot targets rather than the partners the
    task term and its logged value need, and a few tensor lines do the blend."""
    key = next((k for k in MIX_COLUMNS if torch.is_tensor(inputs.get(k)) and inputs[k].is_floating_point()), None)
    if key is None:
        present = ", ".join(sorted(k for k in inputs if torch.is_tensor(inputs[k]))) or "none"
        raise ValueError(f"distillation.mixup blends {' / '.join(MIX_COLUMNS)}, which this batch lacks "
                         f"(its tensors: {present}): remove mixup for this model")
    x = inputs[key]
    b = x.shape[0]
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((b,)).to(x.device)
        perm = torch.randperm(b).to(x.device)
    w = lam.to(x.dtype).view(b, *([1] * (x.dim() - 1)))
    mixed = {**inputs, key: w * x + (1 - w) * x[perm]}
    mask = inputs.get("attention_mask")
    if torch.is_tensor(mask) and mask.shape[0] == b:
        mixed["attention_mask"] = torch.maximum(mask, mask[perm])
    return mixed, perm, lam


def mixed_task_per_sample(logits: Tensor, labels: Tensor, perm: Tensor, lam: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """The task term of a mixed batch, per sample: ``lam * CE(y) + (1 - lam) * CE(y[perm])``
    (single-label classification: logits ``[B, C]``, integer labels ``[B]``)."""
    if logits.dim() != 2 or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(
            f"distillation.mixup weighs two labels per example, which needs single-label classification "
            f"(logits [batch, classes], integer labels [batch]); got logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)} {labels.dtype}: remove mixup"
        )
    labels, perm, lam = labels.to(logits.device), perm.to(logits.device), lam.to(logits.device, torch.float32)
    ce = lambda y: F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=label_smoothing)  # noqa: E731
    return lam * ce(labels) + (1 - lam) * ce(labels[perm])


def distillation_loss(
    model: nn.Module,
    teacher: nn.Module,
    inputs: dict,
    dist,
    *,
    label_names: list[str],
    cached_logits: Tensor | None = None,
    teacher_token_ids: Tensor | None = None,
    label_smoother=None,
    compute_loss_func=None,
    project: "HiddenProjections | None" = None,
    unwrapped: nn.Module | None = None,
    checked_heads: set | None = None,
    mix_seed: int | None = None,
):
    """A stage's distillation loss on one micro-batch: ``alpha * kd_logits + (1 - alpha) * task
    + w_h * kd_hidden + w_a * kd_attn`` (``dist``: the stage's ``distillation`` block), each term
    SUMMED over the micro-batch's samples; returns ``(total, outputs, sums, n)``: the student's
    outputs, each term's sum by name (``task``, ``kd_logits``, ``kd_hidden``, ``kd_attn``) and
    the number of samples. The trainer divides by the samples of the whole accumulation window.

    ``model`` is what runs (a DDP wrapper, say) and ``unwrapped`` the model inside it;
    ``cached_logits``: the teacher's logits carried by the data (:func:`add_teacher_logits`),
    used instead of a teacher pass when only logits are distilled; ``teacher_token_ids``: a
    student's pruned vocabulary mapped to the teacher's ids; ``label_smoother`` /
    ``compute_loss_func``: Trainer's, for the task term; ``project``: hidden-state projections
    (student width -> teacher width); ``checked_heads``: ids of models whose LM head was already
    checked (:func:`check_plain_head`); ``mix_seed``: the seed of this micro-batch's blend
    when the stage has ``mixup`` (:func:`mix_batch`).

    Causal LMs with a token-level loss (kl / reverse_kl / jsd): the LM heads run on chunks of
    the last hidden states (:func:`token_kd_per_sample`), so the models compute the logits of
    one position only and the decoders' last hidden states are caught by a hook (no tuple of
    every layer's states unless hidden distillation asks for it). ``loss: mse`` keeps the
    full-logit path.
    """
    has_labels = bool(label_names) and all(inputs.get(n) is not None for n in label_names)
    mix = None
    if dist.mixup:  # both models read the blended batch; the task term weighs both labels
        if has_labels and (compute_loss_func is not None or len(label_names) != 1):
            raise ValueError("distillation.mixup weighs the two labels of each blended example itself, which a "
                             "custom compute_loss_func or several label columns would not see: remove one of them")
        inputs, *mix = mix_batch(inputs, dist.mixup, mix_seed)
    flags = {}
    if dist.hidden is not None:
        flags["output_hidden_states"] = True
    if dist.attention is not None:
        flags["output_attentions"] = True

    unwrapped = model if unwrapped is None else unwrapped
    # Causal LMs with a token-level loss: the LM heads run on chunks of the last hidden states
    # (distill.token_kd_per_sample), so the models compute the logits of one position only and
    # the decoders' last hidden states are caught by a hook (no tuple of every layer's states
    # unless hidden distillation asks for it). `loss: mse` keeps the full-logit path.
    causal = dist.loss in TOKEN_LOSSES and _is_causal_lm(unwrapped)
    lm_labels = None
    if causal:
        flags = {**flags, "logits_to_keep": 1}
        lm_labels = inputs.get("labels")
        if lm_labels is None:  # no labels: every attended token is one
            mask = inputs.get("attention_mask")
            lm_labels = inputs["input_ids"] if mask is None else inputs["input_ids"].masked_fill(mask.eq(0), -100)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
    student_inputs = {**inputs, **flags}
    labels = None
    if has_labels and mix is not None:
        labels = student_inputs.pop(label_names[0])
    elif has_labels and not causal and (label_smoother is not None or compute_loss_func is not None):
        labels = student_inputs.pop("labels")
    with last_hidden_state(unwrapped if causal else None) as s_last:
        outputs = model(**student_inputs)
    s_logits = outputs["logits"]
    if cached_logits is not None and not flags and mix is None:
        # Logits only, and the data carries them (add_teacher_logits): no teacher pass.
        t_logits = cached_logits.to(s_logits.device)
    else:
        teacher_inputs = {k: v for k, v in inputs.items() if k not in label_names}
        if teacher_token_ids is not None and torch.is_tensor(teacher_inputs.get("input_ids")):
            ids = teacher_inputs["input_ids"]
            teacher_inputs["input_ids"] = teacher_token_ids.to(ids.device)[ids]
        # no_grad rather than inference_mode: teacher outputs are loss targets, and autograd
        # must be able to save them for the student's backward pass.
        with torch.no_grad(), last_hidden_state(teacher if causal else None) as t_last:
            teacher_outputs = teacher(**teacher_inputs, **flags)
        t_logits = teacher_outputs["logits"]
    token_kd = None
    if causal:
        s_head, t_head = unwrapped.get_output_embeddings(), teacher.get_output_embeddings()
        for m, head, last, logits in ((unwrapped, s_head, s_last[0], s_logits), (teacher, t_head, t_last[0], t_logits)):
            if checked_heads is None or id(m) not in checked_heads:  # once per model
                check_plain_head(m, head, last, logits)
                if checked_heads is not None:
                    checked_heads.add(id(m))
        token_kd = token_kd_per_sample(
            s_last[0], s_head, t_last[0], t_head, lm_labels,
            temperature=dist.temperature, loss=dist.loss, beta=dist.beta, chunk_size=dist.chunk_size,
        )
    n = s_logits.shape[0]
    sums: dict[str, torch.Tensor] = {}

    task = None
    if causal:
        sums["task"] = token_kd[1].sum()  # next-token cross-entropy, per sample
        has_labels = True
    elif has_labels and mix is not None:
        smoothing = float(getattr(label_smoother, "epsilon", 0.0)) if label_smoother is not None else 0.0
        sums["task"] = mixed_task_per_sample(s_logits, labels, *mix, label_smoothing=smoothing).sum()
    elif has_labels:
        if labels is not None and compute_loss_func is not None:
            task = compute_loss_func(outputs, labels, num_items_in_batch=None)
        elif labels is not None:
            task = label_smoother(outputs, labels)
        else:
            task = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        sums["task"] = task * n

    if dist.logits and causal:
        sums["kd_logits"] = token_kd[0].sum()
    elif dist.logits:
        mask = _position_mask(inputs, s_logits)
        if dist.loss == "mse":
            sums["kd_logits"] = logit_mse_per_sample(s_logits, t_logits, mask).sum()
        else:
            sums["kd_logits"] = logit_kd_per_sample(s_logits, t_logits, dist.temperature, mask).sum()

    if dist.hidden is not None:
        s_h, t_h = outputs["hidden_states"], teacher_outputs["hidden_states"]
        pairs = resolve_layer_map(dist.hidden.layer_map, len(s_h) - 1, len(t_h) - 1, "hidden")
        mask = _sequence_mask(inputs, s_h[0])
        per_sample = sum(
            hidden_per_sample(s_h[si] if project is None else project(si, s_h[si]), t_h[ti], mask, dist.hidden.loss) for si, ti in pairs
        ) / len(pairs)
        sums["kd_hidden"] = per_sample.sum()

    if dist.attention is not None:
        s_a, t_a = outputs["attentions"], teacher_outputs["attentions"]
        if not s_a or not t_a:
            raise ValueError(
                "attention distillation needs attention maps, but the model returned none: use a model "
                "whose attention implementation returns them (eager)"
            )
        pairs = resolve_layer_map(dist.attention.layer_map, len(s_a), len(t_a), "attention")
        mask = _sequence_mask(inputs, s_a[0][:, 0, :, 0])
        per_sample = sum(attention_kl_per_sample(s_a[si], t_a[ti], mask) for si, ti in pairs) / len(pairs)
        sums["kd_attn"] = per_sample.sum()

    kd_weight = dist.alpha if (has_labels and dist.logits) else 1.0
    task_weight = (1.0 - dist.alpha) if dist.logits else 1.0
    total = s_logits.new_zeros((), dtype=torch.float32)
    if "task" in sums:
        total = total + task_weight * sums["task"]
    if "kd_logits" in sums:
        total = total + kd_weight * sums["kd_logits"]
    if "kd_hidden" in sums:
        total = total + dist.hidden.weight * sums["kd_hidden"]
    if "kd_attn" in sums:
        total = total + dist.attention.weight * sums["kd_attn"]
    return total, outputs, sums, n


def _sequence_mask(inputs: dict, reference: torch.Tensor) -> torch.Tensor | None:
    """The attention mask when it lines up with `reference`'s positions ([B, S, ...]), else None."""
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and reference.dim() >= 2 and mask.shape[1] == reference.shape[1]:
        return mask.bool()
    return None


def _is_causal_lm(model) -> bool:
    """Whether ``model`` is one of transformers' causal-LM classes (``*ForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _position_mask(inputs: dict, logits: torch.Tensor) -> torch.Tensor | None:
    """For token-level logits: positions with a label (labels != -100), else the attention mask."""
    if logits.dim() < 3:
        return None
    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.shape == logits.shape[:2]:
        return labels.ne(-100)
    return _sequence_mask(inputs, logits)
