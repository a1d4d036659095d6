"""Cut the hidden dimension along the stream's principal directions instead of its coordinates.

    result = rotate_hidden(model, batches, keep=128, projections=trainer_projections)

Coordinate pruning keeps ``keep`` of the residual stream's axes; but a trained transformer
spreads its stream over all of them (MiniLM-L6: the best 128 of 384 coordinates carry 58% of
the stream's energy, its top 128 principal directions 79%). Rotating the stream onto its
principal directions first and then cutting keeps far more of the model: the fine-tuned
MiniLM cut to 128 keeps 78% validation accuracy without any training, against 65% for the
best 128 coordinates. SliceGPT (Ashkboos et al., 2024) does this for pre-norm decoders, where
RMSNorm commutes with the rotation.

Pre-RMSNorm decoders (Llama, Qwen, Mistral; the adapter's ``rotation_pre_norms``): the stream is
the residual sum and each block reads it through an RMSNorm. Each in-block norm first hands its
gain to the Linears that read it (``W diag(gamma)``, exact), so its gain is one number, which
commutes with Q. Q's columns are the top ``keep`` principal directions of the norms' inputs, each
token scaled to unit RMS (what the readers see, before the gain). The kept norms get the uniform
gain ``sqrt(d / keep)`` times the measured mean share of the input's norm that Q keeps (the
student normalises by the norm of what it kept). The final norm keeps the diagonal rule below
(its output is the last hidden state, and a tied LM head cannot take its gain). One Q for the
whole stream: the rotated model is a stock config (SliceGPT's per-layer rotations are not).

Pre-LayerNorm encoders (Whisper): as for pre-RMSNorm decoders, and a LayerNorm also subtracts
the mean, so the basis keeps the mean direction as for BERT below (the student's norm then removes
exactly what the original removed). The moments are the norms' inputs centred, then at unit RMS.
The norms' biases move into their readers' biases (exact); the keys have none, and a constant
added to every key changes no softmax, so theirs is dropped (the adapter's ``rotation_shift_free``).
Whisper's stream starts as ``gelu(conv2(gelu(conv1(mel)))) + positions``: no Linear follows the
last GELU, so no stock weight can take the rotation there. Its front end (the adapter's
``rotation_front``) is handled apart: conv1's outputs are SELECTED like a square head's, conv2's
outputs are rotated before the GELU (a start only), and after the cut conv1, conv2 and the
positions are fitted (Adam, :data:`FRONT_REFIT_STEPS`) to the rotated first value of the stream
measured before the cut. At full width everything after the first layer's input is exact up to the
final norm's diagonal gain rule (as for decoders; tested with a uniform final gain);
the speech recipe's teacher cut 384 -> 128 without training keeps 0.265 validation accuracy
rotated against 0.083 with the best coordinates (uncut 0.935; results/speech-rotation).

ViT is pre-LayerNorm like Whisper and every write to its stream is linear: the patch projection
(a convolution: its output channels are stream coordinates, ``Q^T W`` as for a Linear writer),
the class token, the positions and the mask token (raw parameters, rotated like embedding rows).
Nothing to refit; exact at full width up to the final norm's diagonal rule.

BERT is post-LN, and a LayerNorm's per-dimension gain does not commute with a rotation, so this
module rotates approximately, with these choices:

- Q's kept columns span the stream's mean direction ``1/sqrt(d)`` and its top ``keep - 1``
  principal directions of the centred stream (second moments of every stream LayerNorm's
  output over the calibration tokens, pooled); within that span the basis is chosen (one
  Householder reflection) so that its columns sum to the mean direction. The student's
  LayerNorm, which subtracts the mean of its ``keep`` coordinates, then removes exactly the
  component the original LayerNorm removed: centring is exact.
- Every Linear reading the stream gets ``W Q``, every Linear or Embedding writing it ``Q^T W``
  (bias ``Q^T b``). LayerNorm bias: ``Q^T beta``, exact. LayerNorm gain: the diagonal of
  ``Q^T diag(gamma) Q`` (the least-squares choice when the rotated coordinates are
  uncorrelated, which principal directions are), times ``sqrt(d / keep)`` and the measured
  mean share of the input's norm that the kept directions hold (the student normalises by the
  norm of what it kept).
- A same-width Linear followed by a non-linearity (BERT's pooler, RoBERTa's head dense) is not
  part of the stream: its input is rotated, its outputs are SELECTED (mean square activation
  x squared weight of the readers) and the readers' bias absorbs the mean of the dropped ones.

The model is then compacted to its first ``keep`` (rotated) coordinates; its structure record
keeps the first ``keep`` hidden labels (they no longer name original coordinates: pakd.json
records the rotation). Learned hidden-state projections of a distillation get ``W Q`` too, so
the distillation target is unchanged. Rebuild the optimizer afterwards (new parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, UnsupportedArchitectureError, get_adapter
from ..arch.base import is_rms_norm
from ..arch.structure import Structure
from .compact import CompactResult, compact


# The front end's refit (see rotate_hidden): Adam on the front end's own parameters, its relative
# squared error to the rotated first value of the stream. On the speech recipe's Whisper teacher cut
# 384 -> 128 (512 clips), 2,000 steps at 3e-3 bring the error from 0.348 to 0.024 in under a
# minute (results/speech-rotation).
FRONT_REFIT_STEPS = 2000
FRONT_REFIT_LR = 3e-3


@dataclass
class RotationResult:
    """What :func:`rotate_hidden` did: the compaction, the kept share of the stream's energy
    (principal directions vs the best coordinates of the same count), and the rotation."""

    compact: CompactResult
    width_before: int
    width_after: int
    energy_kept: float
    energy_kept_coordinates: float
    tokens: int
    rotation: torch.Tensor  # [width_before, width_after], float32
    #: a non-linear front end's refit: its relative squared error (before, after) on the calibration
    front_error: tuple[float, float] | None = None

    def record(self) -> dict[str, Any]:
        return {
            **({"front_refit_error": [float(f"{e:.3g}") for e in self.front_error]} if self.front_error else {}),
            "method": "rotate",
            "width_before": self.width_before,
            "width_after": self.width_after,
            "energy_kept": round(self.energy_kept, 4),
            "energy_kept_best_coordinates": round(self.energy_kept_coordinates, 4),
            "calibration_tokens": self.tokens,
        }


def _plan(adapter: ArchAdapter):
    """Sort the adapter's hidden-width cuts into stream embeddings, norms, readers, writers and
    the non-linear square heads (with their readers)."""
    heads = adapter.rotation_heads()
    front = adapter.rotation_front()
    front_ids = {id(front.inner[0]), id(front.inner[1]), id(front.writer)} if front is not None else set()
    square_ids = {id(lin) for lin, _ in heads}
    head_reader_ids = {id(r) for _, readers in heads for r in readers}
    embeddings, norms, readers, writers, tensors = [], [], [], [], []
    for cut in adapter.hidden_cuts():
        m = cut.module
        if id(m) in front_ids:
            continue  # the front end's own rule (rotate_hidden)
        if cut.conv_groups > 1:
            raise UnsupportedArchitectureError(
                f"hidden rotation cannot rotate grouped convolution {type(m).__name__}.{cut.name or 'weight'}"
            )
        if cut.name is not None:  # a parameter added to the stream as it is (ViT's class token, positions)
            tensors.append((getattr(m, cut.name), cut.axis))
            continue
        if id(m) in square_ids:
            if cut.axis == 1:
                readers.append(m)
            continue
        if id(m) in head_reader_ids:
            continue
        if isinstance(m, nn.Embedding):
            embeddings.append(m)
        elif isinstance(m, nn.LayerNorm) or is_rms_norm(m):
            norms.append(m)
        elif isinstance(m, nn.Linear):
            (readers if cut.axis == 1 else writers).append(m)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)) and cut.axis == 0:  # ViT's patch embedding writes the stream
            writers.append(m)
        else:
            raise UnsupportedArchitectureError(f"hidden rotation has no rule for {type(m).__name__}")
    return embeddings, norms, readers, writers, tensors, heads, front


def _token_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if t.dim() == 3 and mask is not None and mask.shape == t.shape[:2]:
        return t[mask.bool()]
    return t.reshape(-1, t.shape[-1])


@torch.no_grad()
def _run(model: nn.Module, batches: list[dict], hooks: list[tuple[nn.Module, Any, bool]]) -> None:
    """Forward every batch with ``(module, fn(inputs_or_output, mask), pre)`` hooks attached."""
    mask_box: dict[str, torch.Tensor | None] = {}
    handles = []
    for module, fn, pre in hooks:
        if pre:
            handles.append(module.register_forward_pre_hook(lambda m, args, fn=fn: fn(args[0], mask_box.get("m"))))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out, fn=fn: fn((args[0], out), mask_box.get("m"))))
    device = next(model.parameters()).device
    try:
        for batch in batches:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            mask_box["m"] = batch.get("attention_mask")
            model(**batch)
    finally:
        for h in handles:
            h.remove()


def _householder_basis(u0: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of span(u0, directions) whose columns sum to sqrt(k) * u0."""
    basis = torch.cat([u0[:, None], directions], 1)
    k = basis.shape[1]
    e0 = torch.zeros(k, dtype=basis.dtype, device=basis.device)
    e0[0] = 1.0
    w = e0 - torch.full_like(e0, k ** -0.5)
    if w.norm() < 1e-12:  # k == 1
        return basis
    reflect = torch.eye(k, dtype=basis.dtype, device=basis.device) - 2.0 * torch.outer(w, w) / (w @ w)
    return basis @ reflect


@torch.no_grad()
def rotate_hidden(
    model: nn.Module,
    batches: Iterable[dict],
    keep: int,
    *,
    adapter: ArchAdapter | None = None,
    projections: Any = None,
    front_steps: int = FRONT_REFIT_STEPS,
) -> RotationResult:
    """Rotate ``model``'s hidden stream onto its principal directions (measured on ``batches``,
    dicts of model inputs) and cut it to ``keep``; returns a :class:`RotationResult`.

    ``projections``: a :class:`~pakd_hf.distill.HiddenProjections` whose inputs are this
    model's hidden states; their weights are rotated so they keep mapping to the teacher.
    ``front_steps``: the Adam steps of a non-linear front end's refit (:func:`refit_front`;
    0: the rotated start only).
    Raises :class:`UnsupportedArchitectureError` for a family without a rule (the families with
    one: BERT/RoBERTa, post-LN; Llama/Qwen/Mistral, pre-RMSNorm; Whisper, pre-LayerNorm with a
    refitted front end; ViT, pre-LayerNorm) or a reader that cannot take a norm's bias, and
    ``ValueError`` for a ``keep`` outside ``[2, width]``.
    REBUILD THE OPTIMIZER AFTERWARDS.
    """
    # Every module's own mode comes back afterwards, also when a check refuses the model or the
    # refit fails; a module the cut made new takes its parent's (named_modules: parents first).
    modes = {m: m.training for m in model.modules()}
    try:
        return _rotate_hidden(model, batches, keep, adapter=adapter, projections=projections, front_steps=front_steps)
    finally:
        restored: dict[str, bool] = {}
        for name, m in model.named_modules():
            parent = restored.get(name.rpartition(".")[0], modes[model])
            m.training = restored[name] = modes.get(m, parent)


@torch.no_grad()
def _rotate_hidden(model: nn.Module, batches: Iterable[dict], keep: int, *, adapter: ArchAdapter | None,
                   projections: Any, front_steps: int) -> RotationResult:
    adapter = adapter or get_adapter(model)
    model = adapter.model
    embeddings, norms, readers, writers, tensors, heads, front = _plan(adapter)
    pre_norms = adapter.rotation_pre_norms()  # None: post-LN, the stream is the norms' outputs
    layer_norms = all(isinstance(n, nn.LayerNorm) for n in norms)
    if pre_norms is not None and not (layer_norms or all(is_rms_norm(n) for n in norms)):
        raise UnsupportedArchitectureError("hidden rotation of a pre-norm stream needs RMSNorms or LayerNorms, not both")
    if pre_norms is None and not layer_norms:
        raise UnsupportedArchitectureError("hidden rotation of a post-LN stream needs LayerNorms")
    centring = layer_norms  # a LayerNorm subtracts the mean: the basis keeps the mean direction
    _check_pre_norms(pre_norms or [], readers, adapter.rotation_shift_free())
    structure = Structure.from_model(model, adapter)
    d = len(structure.hidden)
    if not 2 <= keep <= d:
        raise ValueError(f"hidden rotation keeps between 2 and the current width {d}, got {keep}")
    if not norms:
        raise UnsupportedArchitectureError("hidden rotation needs the stream's LayerNorms; the adapter lists none")
    batches = list(batches)
    if not batches:
        raise ValueError("hidden rotation needs calibration batches")
    model.eval()
    f64 = torch.float64
    # The statistics add up where the model runs (a decoder has 2 norms a layer, each d x d per
    # token: on the host they would take hours for a GPU-sized model); MPS has no float64.
    device = next(model.parameters()).device
    acc = torch.float32 if device.type == "mps" else f64

    # pass 1: second moments of the stream: post-LN, every stream LayerNorm's output; pre-norm,
    # every RMSNorm's input with each token at unit RMS
    moment = torch.zeros(d, d, dtype=acc, device=device)
    count = [0]

    def add_moment(x, mask):
        x = _token_rows(x, mask).to(device, acc)
        if pre_norms is not None:
            if centring:
                x = x - x.mean(1, keepdim=True)  # what a pre-LayerNorm normalises
            x = x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        moment.add_(x.T @ x)
        count[0] += x.shape[0]

    # on the host: a 30 s Whisper window's 1,500 frames x 512 clips would crowd a GPU
    first_values = [_first_value(adapter, model, b).cpu() for b in batches] if front is not None else None
    if pre_norms is None:
        _run(model, batches, [(n, lambda io, mask: add_moment(io[1], mask), False) for n in norms])
    else:
        _run(model, batches, [(n, add_moment, True) for n in norms])
    moment = moment.to("cpu", f64)
    u0 = torch.full((d,), d ** -0.5, dtype=f64)
    if centring:
        center = torch.eye(d, dtype=f64) - torch.outer(u0, u0)
        centred = center @ moment @ center
    else:
        centred = moment
    values, vectors = torch.linalg.eigh(centred)
    order = values.argsort(descending=True)
    if centring:
        q = _householder_basis(u0, vectors[:, order[: keep - 1]])  # [d, keep]
        kept_values = values[order[: keep - 1]]
    else:
        q = vectors[:, order[:keep]]
        kept_values = values[order[:keep]]
    total = torch.trace(centred).clamp_min(1e-30)
    energy = (kept_values.sum() / total).item()
    energy_coords = (torch.diagonal(centred).sort(descending=True).values[:keep].sum() / total).item()
    full = torch.cat([q, _complement(q)], 1)  # [d, d] orthogonal; the first `keep` columns are q

    # pass 2: the norm share each LayerNorm's centred input keeps; the square heads' outputs
    share = {id(n): [0.0, 0] for n in norms}
    q_here = q.to(device, acc)

    def add_share(n):
        def fn(z, mask):
            z = _token_rows(z, mask).to(device, acc)
            if centring:
                z = z - z.mean(1, keepdim=True)  # z @ center
            kept = (z @ q_here).norm(dim=1) / z.norm(dim=1).clamp_min(1e-12)
            share[id(n)][0] += kept.sum().item()
            share[id(n)][1] += kept.numel()
        return fn

    head_stats = []
    hooks = [(n, add_share(n), True) for n in norms]
    for square, head_readers in heads:
        stats = {"sum": torch.zeros(square.out_features, dtype=f64), "sq": torch.zeros(square.out_features, dtype=f64), "n": 0}
        head_stats.append(stats)

        def fn(a, mask, stats=stats):
            a = a.reshape(-1, a.shape[-1]).to("cpu", f64)
            stats["sum"] += a.sum(0)
            stats["sq"] += (a * a).sum(0)
            stats["n"] += a.shape[0]

        if head_readers:
            hooks.append((head_readers[0], fn, True))  # what the readers see: after the non-linearity
        else:
            hooks.append((square, lambda io, mask, fn=fn: fn(io[1], mask), False))
    inner_stats = {"sum": None, "sq": None, "n": 0}
    if front is not None:
        def add_inner(a, mask):  # the inner module's activations as its reader sees them: [B, C, T]
            a = a.transpose(1, -1).reshape(-1, a.shape[1]).to("cpu", f64)
            inner_stats["sum"] = a.sum(0) + (0 if inner_stats["sum"] is None else inner_stats["sum"])
            inner_stats["sq"] = (a * a).sum(0) + (0 if inner_stats["sq"] is None else inner_stats["sq"])
            inner_stats["n"] += a.shape[0]
        hooks.append((front.inner[1], add_inner, True))
    _run(model, batches, hooks)

    # The pre-norms' gains move into their readers (exact), multiplied in with the rotation below
    # so that a bf16 weight is rounded once.
    # A pre-LayerNorm's bias moves into their biases (exact); a reader without one must be free to
    # drop a constant (attention keys: the adapter's rotation_shift_free).
    folded: dict[int, torch.Tensor] = {}
    for norm, norm_readers in pre_norms or []:
        beta = getattr(norm, "bias", None)
        for r in norm_readers:  # checked by _check_pre_norms before anything changed
            folded[id(r)] = norm.weight.detach().to(f64, copy=True)  # the gain is reset below
            if beta is not None and r.bias is not None:
                r.bias.add_((r.weight.to(f64) @ beta.to(r.weight.device, f64)).to(r.bias.dtype))
        norm.weight.fill_(1.0)
        if beta is not None:
            beta.zero_()

    def rotate_in(lin: nn.Linear) -> None:
        w = lin.weight.to(f64)
        if id(lin) in folded:
            w = w * folded[id(lin)].to(w.device)[None, :]
        lin.weight.copy_((w @ full.to(lin.weight.device)).to(lin.weight.dtype))

    for emb in embeddings:
        emb.weight.copy_((emb.weight.to(f64) @ full.to(emb.weight.device)).to(emb.weight.dtype))
    for lin in readers:
        rotate_in(lin)
    for param, axis in tensors:  # its entries along `axis` are a stream vector, as an embedding row
        rotated = param.to(f64).movedim(axis, -1) @ full.to(param.device)
        param.copy_(rotated.movedim(-1, axis).to(param.dtype))
    for lin in writers:  # a Linear or a convolution: output channels are stream coordinates
        r = full.T.to(lin.weight.device)
        w = lin.weight.to(f64)
        lin.weight.copy_((r @ w.reshape(w.shape[0], -1)).reshape(w.shape).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_((r @ lin.bias.to(f64)).to(lin.bias.dtype))
    for n in norms:
        kept_share = share[id(n)][0] / max(share[id(n)][1], 1)
        dev = n.weight.device if n.weight is not None else "cpu"
        gamma = n.weight.to("cpu", f64) if n.weight is not None else torch.ones(d, dtype=f64)
        new_gamma = torch.ones(d, dtype=f64)
        new_gamma[:keep] = (q * (gamma[:, None] * q)).sum(0) * (d / keep) ** 0.5 * kept_share
        if n.weight is not None:
            n.weight.copy_(new_gamma.to(dev, n.weight.dtype))
        elif not torch.allclose(new_gamma[:keep], torch.ones(keep, dtype=f64)):
            raise UnsupportedArchitectureError("hidden rotation needs LayerNorms with a learnable gain")
        if getattr(n, "bias", None) is not None:
            n.bias.copy_((full.T @ n.bias.to("cpu", f64)).to(dev, n.bias.dtype))
    for (square, head_readers), stats in zip(heads, head_stats):  # inputs already rotated (readers)
        n_rows = max(stats["n"], 1)
        mean_sq = stats["sq"] / n_rows
        weight = torch.ones(square.out_features, dtype=f64)
        if head_readers:
            weight = sum((r.weight.to("cpu", f64) ** 2).sum(0) for r in head_readers)
        score = mean_sq * weight
        order_out = score.argsort(descending=True)
        kept_out, dropped = order_out[:keep].sort().values, order_out[keep:]
        perm = torch.cat([kept_out, dropped]).to(square.weight.device)
        for r in head_readers:
            if r.bias is not None and len(dropped):
                shift = r.weight.to("cpu", f64)[:, dropped] @ (stats["sum"][dropped] / n_rows)
                r.bias.add_(shift.to(r.bias.device, r.bias.dtype))
            r.weight.copy_(r.weight[:, perm.to(r.weight.device)])
        square.weight.copy_(square.weight[perm])
        if square.bias is not None:
            square.bias.copy_(square.bias[perm.to(square.bias.device)])
    if projections is not None:
        for proj in getattr(projections, "maps", {}).values():
            if proj.weight.shape[1] == d:
                proj.weight.copy_((proj.weight.to(f64) @ full.to(proj.weight.device)).to(proj.weight.dtype))

    if front is not None:
        _rotate_front(front, full, keep, inner_stats)

    target = Structure.from_dict({**structure.to_dict(), "hidden": list(structure.hidden[:keep])})
    result = compact(model, target, adapter=adapter, check_export=False)
    front_error = None
    if front is not None:  # compaction made new parameters: the adapter names them again
        front_error = refit_front(adapter, model, batches, [v @ q.to(v.dtype) for v in first_values], steps=front_steps)
    return RotationResult(
        compact=result,
        width_before=d,
        width_after=keep,
        energy_kept=energy,
        energy_kept_coordinates=energy_coords,
        tokens=count[0] // max(len(norms), 1),
        rotation=q.float(),
        front_error=front_error,
    )


def check_rotatable(adapter: ArchAdapter) -> None:
    """Raise :class:`UnsupportedArchitectureError` when ``adapter``'s model cannot be rotated
    whatever its weights will be (a family or a cut without a rule; a Linear without a bias
    reading a pre-norm that has one, e.g. a ViT with ``qkv_bias: false``). Changes nothing: a
    recipe check runs it before any stage trains."""
    readers = _plan(adapter)[2]
    _check_pre_norms(adapter.rotation_pre_norms() or [], readers, adapter.rotation_shift_free(), any_bias=True)


def _check_pre_norms(pre_norms, readers: list[nn.Linear], shift_free: list[nn.Linear], any_bias: bool = False) -> None:
    """Before anything changes: every Linear reading a pre-norm is a stream reader, and one without
    a bias reads a norm without one, or may drop a constant (``rotation_shift_free``).
    ``any_bias``: a norm's bias counts even while it is zero (training will move it)."""
    reader_ids, free = {id(r) for r in readers}, {id(r) for r in shift_free}
    for norm, norm_readers in pre_norms:
        beta = getattr(norm, "bias", None)
        for r in norm_readers:
            if id(r) not in reader_ids:
                raise UnsupportedArchitectureError(f"hidden rotation: a {type(r).__name__} reading a norm is not a stream reader")
            if (r.bias is None and beta is not None and id(r) not in free
                    and (any_bias or beta.abs().max().item() > 0)):
                raise UnsupportedArchitectureError(
                    f"hidden rotation: a {type(r).__name__} without a bias reads a norm with a bias, and its output "
                    "cannot drop a constant")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the first layer's input is seen."""


def _first_value(adapter: ArchAdapter, model: nn.Module, batch: dict) -> torch.Tensor:
    """The stream's first value (the first layer's input) for ``batch``; the layers do not run."""
    seen: list[torch.Tensor] = []

    def grab(module, args):
        seen.append(args[0])
        raise _Stop

    handle = adapter.layer_list()[0].register_forward_pre_hook(grab)
    device = next(model.parameters()).device
    try:
        model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise UnsupportedArchitectureError("hidden rotation: the model's forward never reached its first layer")
    return seen[0].float()


def _rotate_front(front, full: torch.Tensor, keep: int, stats: dict[str, Any]) -> None:
    """Before the cut: the inner module's outputs SELECTED (mean square activation x squared
    weight of its reader; the reader's bias takes the mean of the dropped ones), the writer's
    outputs rotated BEFORE its non-linearity (a start for :func:`refit_front`)."""
    f64 = torch.float64
    inner, reader = front.inner
    n = max(stats["n"], 1)
    w = reader.weight.to("cpu", f64)  # [out, in, *kernel]
    taps = w.reshape(w.shape[0], w.shape[1], -1)
    score = stats["sq"] / n * (taps ** 2).sum((0, 2))
    order = score.argsort(descending=True)
    kept, dropped = order[:keep].sort().values, order[keep:]
    perm = torch.cat([kept, dropped])
    if reader.bias is not None and len(dropped):  # every tap sees the channel's mean (away from the edges)
        shift = taps.sum(2)[:, dropped] @ (stats["sum"][dropped] / n)
        reader.bias.add_(shift.to(reader.bias.device, reader.bias.dtype))
    reader.weight.copy_(reader.weight[:, perm.to(reader.weight.device)])
    inner.weight.copy_(inner.weight[perm.to(inner.weight.device)])
    if inner.bias is not None:
        inner.bias.copy_(inner.bias[perm.to(inner.bias.device)])
    writer = front.writer
    r = full.T.to(writer.weight.device)
    shape = writer.weight.shape
    writer.weight.copy_((r @ writer.weight.to(f64).reshape(shape[0], -1)).reshape(shape).to(writer.weight.dtype))
    if writer.bias is not None:
        writer.bias.copy_((r @ writer.bias.to(f64)).to(writer.bias.dtype))


def refit_front(adapter: ArchAdapter, model: nn.Module, batches: list[dict],
                targets: list[torch.Tensor], steps: int = FRONT_REFIT_STEPS) -> tuple[float, float]:
    """Fit a cut model's front end (the adapter's ``rotation_front().refit``) so that the
    stream's first value on each of ``batches`` matches ``targets`` (the uncut model's, rotated
    and cut, or its kept coordinates: ``benchmarks/hidden_cut.py`` refits both cuts); returns
    the mean relative squared error before and after. Keeps the start if the fit made it worse."""
    params = adapter.rotation_front().refit
    device = params[0].device
    targets = [t.to(device) for t in targets]
    start = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]

    def error(i: int) -> torch.Tensor:
        t = targets[i]
        return (_first_value(adapter, model, batches[i]) - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)

    def mean_error() -> float:
        return sum(error(i).item() for i in range(len(batches))) / len(batches)

    with torch.no_grad():
        before = mean_error()
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=FRONT_REFIT_LR)
        try:
            for step in range(steps):
                loss = error(step % len(batches))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
                p.grad = None
    with torch.no_grad():
        after = mean_error()
        if not after < before:
            for p, value in zip(params, start):
                p.copy_(value)
            after = before
    return before, after


def _complement(q: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the orthogonal complement of q's columns ([d, d - k])."""
    d, k = q.shape
    if k == d:
        return q.new_zeros(d, 0)
    full, _ = torch.linalg.qr(torch.cat([q, torch.eye(d, dtype=q.dtype)], 1))
    comp = full[:, k:d]
    comp = comp - q @ (q.T @ comp)
    comp, _ = torch.linalg.qr(comp)
    return comp
