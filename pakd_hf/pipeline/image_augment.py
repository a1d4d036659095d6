"""Random changes to training images (recipe ``data.augment``), batch by batch.

A small image model trained from scratch on tens of thousands of images overfits them long
before it has learnt the task; the standard remedy is to show it a slightly different copy of
each image every epoch: a random shift (He et al., 2016, on CIFAR: pad and crop), a horizontal
flip, a random erased rectangle (Zhong et al., 2020, "Random Erasing Data Augmentation"). The
same changes help distillation: in a PaKD step the teacher reads the very batch the student
reads, so they are compared on images neither has seen exactly before ("consistent teaching",
Beyer et al., 2022, "Knowledge distillation: A good teacher is patient and consistent").

Only the training split is changed (:class:`AugmentedImages` wraps it); validation, test and
every score stay on the images as they are. The changes work on the processor's output
(``pixel_values``, normalised, channels first), so they suit any image model the project
supports. Written here rather than taken from torchvision because torchvision is not a
dependency (a large wheel tied to one torch build) and the three operations are a few tensor
lines; the randomness is torch's, which Trainer seeds (``seed``), so a run is repeatable.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..recipe import ImageAugment
from .augmented import AugmentedSplit

__all__ = ["AugmentedImages", "augment_images"]


def augment_images(pixels: torch.Tensor, spec: ImageAugment, generator: torch.Generator | None = None) -> torch.Tensor:
    """A randomly changed copy of a batch ``[B, C, H, W]`` (each image drawn on its own).

    - ``shift``: translated by up to ``shift`` of its height / width in each direction, the
      uncovered border filled by repeating the edge pixels (the background of most images);
    - ``flip``: mirrored left-right with probability ``flip``;
    - ``erase``: with probability ``erase``, one rectangle of 2-33% of the area (aspect ratio
      0.3-3.3) filled with normal noise of the batch's scale (Zhong et al.'s setting).
    """
    x = pixels.clone()
    b, _, h, w = x.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if spec.shift > 0:
        py, px = round(spec.shift * h), round(spec.shift * w)
        if py or px:
            padded = F.pad(x, (px, px, py, py), mode="replicate")
            dy = (rand(b) * (2 * py + 1)).long().tolist()
            dx = (rand(b) * (2 * px + 1)).long().tolist()
            x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if spec.flip > 0:
        flip = rand(b) < spec.flip
        x[flip] = x[flip].flip(-1)
    if spec.erase > 0:
        scale = float(x.std()) or 1.0
        for i in (rand(b) < spec.erase).nonzero().flatten().tolist():
            for _ in range(10):  # Zhong et al.: redraw a rectangle that does not fit
                area = h * w * (0.02 + 0.31 * float(rand(1)))
                ratio = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * float(rand(1)))
                eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if 0 < eh < h and 0 < ew < w:
                    top, left = int(rand(1) * (h - eh + 1)), int(rand(1) * (w - ew + 1))
                    noise = torch.randn(x.shape[1], eh, ew, generator=generator) * scale
                    x[i, :, top : top + eh, left : left + ew] = noise.to(x.dtype)
                    break
    return x


class AugmentedImages(AugmentedSplit):
    """A training split of encoded images whose batches come back randomly changed
    (:func:`augment_images`); every other column as it is."""

    def __init__(self, split, spec: ImageAugment, column: str = "pixel_values"):
        super().__init__(split, functools.partial(augment_images, spec=spec), column)  # picklable: spawned workers
        self.spec = spec
