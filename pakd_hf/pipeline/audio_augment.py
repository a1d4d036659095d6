"""Random changes to training clips (recipe ``data.augment`` for audio-classification), batch by batch.

A keyword spotter trained on a few thousand clips learns its voices and recording conditions
rather than the words. The usual remedies act on the features the model reads: a random move
of the clip in time inside its window (the words of Speech Commands start anywhere in the
second), and SpecAugment's time and frequency masking (Park et al., 2019, "SpecAugment: A
Simple Data Augmentation Method for Automatic Speech Recognition"): a few bands of frames or
of mel bins replaced by the clip's mean (by 0, silence, for raw samples). A voice that no
training clip has differs most in its spectral envelope (formants set by the vocal tract's
length); vocal tract length perturbation (Jaitly and Hinton, 2013, "Vocal Tract Length
Perturbation (VTLP) improves speech recognition") warps each clip's frequency axis by a
random factor, here on the spectrogram's bins. They matter more for distillation than for plain
training: the teacher reads the very batch the student reads, so its outputs on these new
views are targets no label gives (Beyer et al., 2022, "Knowledge distillation: A good teacher
is patient and consistent").

The changes work on the feature extractor's output, so the clips are synthesised and encoded
once and the per-batch cost is a few tensor operations: ``input_features`` ``[B, bins, frames]``
(Whisper's log-mel spectrogram and other spectrogram extractors) or ``input_values``
``[B, samples]`` (wav2vec2-style raw samples: time shift and time masks only). transformers'
own SpecAugment (``mask_time_prob`` in Whisper and wav2vec2 configs) is drawn inside each model,
so teacher and student would see different masks; here one draw serves both. torchaudio has
masking transforms but is not a dependency (a wheel tied to one torch build), and the four
operations are a few tensor lines. The randomness is torch's, which Trainer seeds (``seed``): a run is repeatable.
"""

from __future__ import annotations

import functools

import torch

from ..recipe import AudioAugment
from .augmented import AugmentedSplit

__all__ = ["AugmentedClips", "augment_clips"]


def _bands(b: int, k: int, length: int, widest: int, generator) -> torch.Tensor:
    """``[b, length]``: True inside ``k`` random bands per row, each 0..``widest`` wide."""
    width = (torch.rand(b, k, generator=generator) * (widest + 1)).long()
    start = (torch.rand(b, k, generator=generator) * (length - width + 1)).long()
    pos = torch.arange(length).view(1, 1, length)
    return ((pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))).any(1)


def _warp_bins(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each clip's frequency axis warped by its ``factor``, piecewise linearly as VTLP warps
    frequencies: output bin ``i`` reads the input at ``i * factor`` (interpolating linearly between
    bins; above 1 the content moves to lower bins, below 1 to higher ones) up to a knee at 80% of
    the axis (divided by ``factor`` above 1), and from there along a straight line to the last
    bin, so the axis keeps both ends and reads nothing outside itself."""
    b, bins = x.shape[0], x.shape[1]
    if bins < 2:
        return x
    top = bins - 1
    i = torch.arange(bins, dtype=torch.float32).expand(b, bins)
    f = factor.to(torch.float32).unsqueeze(1)
    knee = 0.8 * top / f.clamp(min=1.0)
    low = i * f
    high = top - (top - i) * (top - knee * f) / (top - knee)  # exactly the last bin at i = top
    pos = torch.where(i <= knee, low, high).clamp(0, top)
    lo = pos.floor().long().clamp(max=top - 1)
    frac = (pos - lo).to(x.dtype).unsqueeze(-1)
    gather = lambda idx: torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(lo + 1) * frac


def augment_clips(features: torch.Tensor, spec: AudioAugment, generator: torch.Generator | None = None) -> torch.Tensor:
    """A randomly changed copy of a batch of encoded clips (each clip drawn on its own):
    ``[B, bins, frames]`` spectrogram features or ``[B, samples]`` raw samples.

    - ``time_shift``: moved by up to that fraction of the window, earlier or later; the part
      uncovered is silence (the clip's lowest feature value for a spectrogram, 0 for samples);
    - ``time_mask`` / ``time_masks``: that many bands of up to that fraction of the frames set
      to the clip's mean (0 for raw samples);
    - ``freq_warp``: the frequency bins warped by a factor drawn from
      [1 - freq_warp, 1 + freq_warp] (spectrograms only; :func:`_warp_bins`), before the masks;
    - ``freq_mask`` / ``freq_masks``: the same over the frequency bins (spectrograms only).

    The warp draws from ``generator`` only when it is on, so a recipe without it draws exactly
    what it drew before the warp existed; with it on, the masks that follow draw other bands.
    """
    if features.dim() not in (2, 3):
        raise ValueError(f"expected [batch, bins, frames] or [batch, samples] features, got shape {tuple(features.shape)}")
    x = features.clone()
    b, length = x.shape[0], x.shape[-1]
    spectrogram = x.dim() == 3
    if spec.time_shift > 0 and (most := round(spec.time_shift * length)) > 0:
        moves = ((torch.rand(b, generator=generator) * (2 * most + 1)).long() - most).tolist()
        silence = x.flatten(1).amin(1) if spectrogram else torch.zeros(b, dtype=x.dtype)
        for i, move in enumerate(moves):
            if move:
                x[i] = torch.roll(x[i], move, dims=-1)
                gap = slice(0, move) if move > 0 else slice(length + move, length)
                x[i, ..., gap] = silence[i]
    if spectrogram and spec.freq_warp:
        x = _warp_bins(x, 1.0 + (2 * torch.rand(b, generator=generator) - 1) * spec.freq_warp)
    mean = x.flatten(1).mean(1) if spectrogram else torch.zeros(b, dtype=x.dtype)
    fill = mean.view(b, *([1] * (x.dim() - 1))).expand_as(x)
    if spec.time_mask > 0 and spec.time_masks > 0 and (widest := round(spec.time_mask * length)) > 0:
        band = _bands(b, spec.time_masks, length, widest, generator)
        band = band.unsqueeze(1).expand_as(x) if spectrogram else band
        x = torch.where(band, fill, x)
    if spectrogram and spec.freq_mask > 0 and spec.freq_masks > 0 and (widest := round(spec.freq_mask * x.shape[1])) > 0:
        band = _bands(b, spec.freq_masks, x.shape[1], widest, generator).unsqueeze(-1).expand_as(x)
        x = torch.where(band, fill, x)
    return x


class AugmentedClips(AugmentedSplit):
    """A training split of encoded clips whose batches come back randomly changed
    (:func:`augment_clips`); every other column as it is."""

    def __init__(self, split, spec: AudioAugment, column: str):
        super().__init__(split, functools.partial(augment_clips, spec=spec), column)  # picklable: spawned workers
        self.spec = spec
